//! The VMDK text descriptor: a pure parser and printer, no I/O.
//!
//! A descriptor is `# Disk DescriptorFile`, header keys (`version=`, `CID=`, `parentCID=`,
//! `createType="..."`), extent lines `ACCESS SECTORS TYPE ["FILE" [OFFSET]]`, and the disk database
//! (`ddb.key = "value"`). Only flat layouts are accepted: every extent is FLAT, VMFS or ZERO and
//! the disk has no parent. The text is untrusted: every refusal names the line and what was found.

use std::fmt;

use super::error::{ParseErrorKind, VmdkError};
use super::{MAX_DESCRIPTOR_BYTES, MAX_EXTENTS, SECTOR_SIZE};

/// The first line of every text descriptor.
pub const HEADER_LINE: &str = "# Disk DescriptorFile";
/// `parentCID` of a base disk (no parent).
pub const NO_PARENT_CID: u32 = 0xffff_ffff;
/// The longest extent file name accepted (Linux NAME_MAX).
const MAX_FILE_NAME: usize = 255;

/// The `createType` of a descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CreateType {
    /// One FLAT extent (`<stem>-flat.vmdk`).
    MonolithicFlat,
    /// FLAT extents of at most 2 GiB each (`<stem>-f001.vmdk`, ...).
    TwoGbMaxExtentFlat,
    /// ESXi's flat layout: one VMFS extent.
    Vmfs,
    /// Any other create type whose extents are all flat, kept as written.
    Other(String),
}

impl CreateType {
    /// The name as written in `createType="..."`.
    pub fn as_str(&self) -> &str {
        match self {
            CreateType::MonolithicFlat => "monolithicFlat",
            CreateType::TwoGbMaxExtentFlat => "twoGbMaxExtentFlat",
            CreateType::Vmfs => "vmfs",
            CreateType::Other(s) => s,
        }
    }

    /// Classifies a create type; sparse, thin, delta and raw-device types are refused.
    fn classify(name: &str) -> Result<Self, ParseErrorKind> {
        let lower = name.to_ascii_lowercase();
        let known = match lower.as_str() {
            "monolithicflat" => Some(CreateType::MonolithicFlat),
            "twogbmaxextentflat" => Some(CreateType::TwoGbMaxExtentFlat),
            "vmfs" => Some(CreateType::Vmfs),
            _ => None,
        };
        if let Some(kind) = known {
            return Ok(kind);
        }
        const REFUSED_WORDS: [&str; 6] = ["sparse", "thin", "stream", "rdm", "raw", "device"];
        if REFUSED_WORDS.iter().any(|w| lower.contains(w)) {
            return Err(ParseErrorKind::UnsupportedCreateType(name.to_string()));
        }
        validate_token(name).map_err(|_| ParseErrorKind::BadQuoting(name.to_string()))?;
        Ok(CreateType::Other(name.to_string()))
    }
}

impl fmt::Display for CreateType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The access word of an extent line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `RW`
    ReadWrite,
    /// `RDONLY`
    ReadOnly,
    /// `NOACCESS`
    NoAccess,
}

impl Access {
    fn parse(word: &str) -> Option<Self> {
        match word {
            "RW" => Some(Access::ReadWrite),
            "RDONLY" => Some(Access::ReadOnly),
            "NOACCESS" => Some(Access::NoAccess),
            _ => None,
        }
    }

    /// The word written in the descriptor.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::ReadWrite => "RW",
            Access::ReadOnly => "RDONLY",
            Access::NoAccess => "NOACCESS",
        }
    }
}

/// The type word of an extent line (only flat types exist here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtentType {
    /// `FLAT`: raw bytes in a file, from `offset` sectors.
    Flat,
    /// `VMFS`: ESXi's flat extent, the same on Linux.
    Vmfs,
    /// `ZERO`: reads as zeros, has no file.
    Zero,
}

impl ExtentType {
    /// Classifies a type word; sparse, thin and raw-device types are refused.
    fn classify(word: &str) -> Result<Self, ParseErrorKind> {
        match word {
            "FLAT" => return Ok(ExtentType::Flat),
            "VMFS" => return Ok(ExtentType::Vmfs),
            "ZERO" => return Ok(ExtentType::Zero),
            _ => {}
        }
        let lower = word.to_ascii_lowercase();
        if ["sparse", "thin", "rdm", "raw"]
            .iter()
            .any(|w| lower.contains(w))
        {
            Err(ParseErrorKind::UnsupportedExtentType(word.to_string()))
        } else {
            Err(ParseErrorKind::UnknownExtentType(word.to_string()))
        }
    }

    /// The word written in the descriptor.
    pub fn as_str(self) -> &'static str {
        match self {
            ExtentType::Flat => "FLAT",
            ExtentType::Vmfs => "VMFS",
            ExtentType::Zero => "ZERO",
        }
    }

    /// True for extents backed by a file (FLAT, VMFS).
    pub fn has_file(self) -> bool {
        !matches!(self, ExtentType::Zero)
    }
}

/// One extent line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extent {
    /// RW, RDONLY or NOACCESS.
    pub access: Access,
    /// Length in 512-byte sectors (never 0).
    pub sectors: u64,
    /// FLAT, VMFS or ZERO.
    pub kind: ExtentType,
    /// The file, a plain name in the descriptor's directory; `None` for ZERO.
    pub file: Option<String>,
    /// Where the extent starts in its file, in sectors (0 for ZERO).
    pub offset_sectors: u64,
}

impl Extent {
    /// A read-write FLAT extent at offset 0 of `file`.
    pub fn flat(file: impl Into<String>, sectors: u64) -> Self {
        Extent {
            access: Access::ReadWrite,
            sectors,
            kind: ExtentType::Flat,
            file: Some(file.into()),
            offset_sectors: 0,
        }
    }

    /// The smallest length in bytes the extent's file must have: `(offset + sectors) * 512`.
    /// `None` for ZERO; never overflows for an extent of a valid [`Descriptor`].
    pub fn required_file_len(&self) -> Option<u64> {
        if !self.kind.has_file() {
            return None;
        }
        self.offset_sectors
            .checked_add(self.sectors)?
            .checked_mul(SECTOR_SIZE)
    }

    /// Checks the extent on its own: a sector count, a plain file name when it has a file, and
    /// byte sizes that fit in 64 bits.
    fn validate(&self) -> Result<(), ParseErrorKind> {
        if self.sectors == 0 {
            return Err(ParseErrorKind::EmptyExtent);
        }
        match (&self.file, self.kind.has_file()) {
            (Some(name), true) => {
                validate_file_name(name).map_err(|reason| ParseErrorKind::BadFileName {
                    name: name.clone(),
                    reason,
                })?
            }
            (None, true) => return Err(ParseErrorKind::MalformedExtent("missing file name")),
            (Some(_), false) => {
                return Err(ParseErrorKind::MalformedExtent("a ZERO extent has no file"));
            }
            (None, false) if self.offset_sectors != 0 => {
                return Err(ParseErrorKind::MalformedExtent(
                    "a ZERO extent has no offset",
                ));
            }
            (None, false) => {}
        }
        let end = self
            .offset_sectors
            .checked_add(self.sectors)
            .ok_or(ParseErrorKind::Overflow)?;
        end.checked_mul(SECTOR_SIZE)
            .ok_or(ParseErrorKind::Overflow)?;
        Ok(())
    }
}

impl fmt::Display for Extent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.access.as_str(),
            self.sectors,
            self.kind.as_str()
        )?;
        if let Some(file) = &self.file {
            write!(f, " \"{file}\"")?;
            if self.kind == ExtentType::Flat || self.offset_sectors != 0 {
                write!(f, " {}", self.offset_sectors)?;
            }
        }
        Ok(())
    }
}

/// Refuses extent file names that are not a plain name in the descriptor's own directory.
pub fn validate_file_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name.len() > MAX_FILE_NAME {
        return Err("longer than 255 bytes");
    }
    if name.contains('/') {
        return Err("contains '/': extents must be in the descriptor's directory");
    }
    if name.contains('\\') {
        return Err("contains a backslash");
    }
    if name == "." || name == ".." {
        return Err("is '.' or '..'");
    }
    if name.contains('"') {
        return Err("contains a quote");
    }
    if name.bytes().any(|b| b.is_ascii_control()) {
        return Err("contains a control character");
    }
    Ok(())
}

/// Refuses values that could not be printed back unambiguously (quotes, control characters).
fn validate_token(value: &str) -> Result<(), ()> {
    if value.contains('"') || value.bytes().any(|b| b.is_ascii_control()) {
        Err(())
    } else {
        Ok(())
    }
}

fn is_valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
}

/// Cylinders, heads and sectors per track as written in the DDB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// `ddb.geometry.cylinders`
    pub cylinders: u64,
    /// `ddb.geometry.heads`
    pub heads: u64,
    /// `ddb.geometry.sectors`
    pub sectors: u64,
}

impl Geometry {
    /// The geometry qemu-img writes for a SCSI (non-IDE) adapter: 255 heads, 63 sectors per
    /// track, and as many whole cylinders as fit (not capped).
    pub fn for_scsi(capacity_bytes: u64) -> Self {
        Self::with(capacity_bytes, 255, 63)
    }

    fn with(capacity_bytes: u64, heads: u64, sectors: u64) -> Self {
        let per_cylinder = heads.saturating_mul(sectors).saturating_mul(SECTOR_SIZE);
        Geometry {
            cylinders: capacity_bytes.checked_div(per_cylinder).unwrap_or(0),
            heads,
            sectors,
        }
    }
}

/// A parsed, validated flat VMDK descriptor.
///
/// Invariants (kept by every constructor and mutator): 1 to [`MAX_EXTENTS`] extents, each valid,
/// total capacity in bytes fits in 64 bits, no parent, create type not sparse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    version: Option<u32>,
    cid: Option<u32>,
    create_type: CreateType,
    header_extra: Vec<(String, String)>,
    extents: Vec<Extent>,
    ddb: Vec<(String, String)>,
    capacity_sectors: u64,
}

/// Adds one extent, checking it, the extent count and the running capacity.
fn push_extent(
    extents: &mut Vec<Extent>,
    capacity_sectors: &mut u64,
    extent: Extent,
) -> Result<(), ParseErrorKind> {
    extent.validate()?;
    if extents.len() >= MAX_EXTENTS {
        return Err(ParseErrorKind::TooManyExtents(MAX_EXTENTS));
    }
    let total = capacity_sectors
        .checked_add(extent.sectors)
        .ok_or(ParseErrorKind::Overflow)?;
    total
        .checked_mul(SECTOR_SIZE)
        .ok_or(ParseErrorKind::Overflow)?;
    *capacity_sectors = total;
    extents.push(extent);
    Ok(())
}

/// Checks a whole extent list built outside the parser (errors at line 0); returns it with its
/// capacity in sectors.
fn checked_extents(extents: Vec<Extent>) -> Result<(Vec<Extent>, u64), VmdkError> {
    let mut checked = Vec::with_capacity(extents.len().min(MAX_EXTENTS));
    let mut capacity_sectors = 0;
    for extent in extents {
        push_extent(&mut checked, &mut capacity_sectors, extent).map_err(|k| parse_error(0, k))?;
    }
    if checked.is_empty() {
        return Err(parse_error(0, ParseErrorKind::NoExtents));
    }
    Ok((checked, capacity_sectors))
}

fn parse_error(line: usize, kind: ParseErrorKind) -> VmdkError {
    VmdkError::Parse {
        path: Default::default(),
        line,
        kind,
    }
}

impl Descriptor {
    /// A descriptor for a LUN we create: a random CID, no parent, and the DDB qemu and VMware
    /// write (`virtualHWVersion` 4, SCSI geometry, `lsilogic` adapter).
    /// Errors use line 0 (the descriptor did not come from text).
    pub fn new(create_type: CreateType, extents: Vec<Extent>) -> Result<Self, VmdkError> {
        if let CreateType::Other(name) = &create_type {
            CreateType::classify(name).map_err(|k| parse_error(0, k))?;
        }
        let (extents, capacity_sectors) = checked_extents(extents)?;
        let mut cid = rand::random::<u32>();
        if cid == NO_PARENT_CID {
            cid = 0;
        }
        let mut descriptor = Descriptor {
            version: Some(1),
            cid: Some(cid),
            create_type,
            header_extra: Vec::new(),
            extents,
            ddb: Vec::new(),
            capacity_sectors,
        };
        let geometry = Geometry::for_scsi(descriptor.capacity_bytes());
        descriptor.set_ddb_value("ddb.virtualHWVersion", "4");
        descriptor.set_geometry(geometry);
        descriptor.set_ddb_value("ddb.adapterType", "lsilogic");
        Ok(descriptor)
    }

    /// Parses descriptor bytes: at most [`MAX_DESCRIPTOR_BYTES`], UTF-8.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Self, VmdkError> {
        if bytes.len() > MAX_DESCRIPTOR_BYTES {
            return Err(VmdkError::DescriptorTooLarge {
                path: Default::default(),
                limit: MAX_DESCRIPTOR_BYTES,
            });
        }
        match std::str::from_utf8(bytes) {
            Ok(text) => Self::parse(text),
            Err(e) => {
                let valid = bytes.get(..e.valid_up_to()).unwrap_or_default();
                let line = 1 + valid.iter().filter(|&&b| b == b'\n').count();
                Err(parse_error(line, ParseErrorKind::NotUtf8))
            }
        }
    }

    /// Parses descriptor text (at most [`MAX_DESCRIPTOR_BYTES`]).
    pub fn parse(text: &str) -> Result<Self, VmdkError> {
        if text.len() > MAX_DESCRIPTOR_BYTES {
            return Err(VmdkError::DescriptorTooLarge {
                path: Default::default(),
                limit: MAX_DESCRIPTOR_BYTES,
            });
        }
        let mut parser = Parser::default();
        let mut last_line = 0;
        for (index, raw) in text.split('\n').enumerate() {
            let line_no = index + 1;
            last_line = line_no;
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            parser
                .line(line_no, line)
                .map_err(|kind| parse_error(line_no, kind))?;
        }
        parser.finish().map_err(|kind| parse_error(last_line, kind))
    }

    /// The `version=` value, if written.
    pub fn version(&self) -> Option<u32> {
        self.version
    }

    /// The content id (`CID=`), if written.
    pub fn cid(&self) -> Option<u32> {
        self.cid
    }

    /// The create type.
    pub fn create_type(&self) -> &CreateType {
        &self.create_type
    }

    /// The extents, in disk order.
    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }

    /// The DDB entries in order, values without quotes.
    pub fn ddb(&self) -> &[(String, String)] {
        &self.ddb
    }

    /// One DDB value, e.g. `ddb("ddb.adapterType")`.
    pub fn ddb_value(&self, key: &str) -> Option<&str> {
        self.ddb
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The disk size in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    /// The disk size in bytes (fits: checked when the descriptor was built).
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_sectors.saturating_mul(SECTOR_SIZE)
    }

    /// The geometry in the DDB, when all three keys are present and numeric.
    pub fn geometry(&self) -> Option<Geometry> {
        let get = |key| self.ddb_value(key)?.parse::<u64>().ok();
        Some(Geometry {
            cylinders: get("ddb.geometry.cylinders")?,
            heads: get("ddb.geometry.heads")?,
            sectors: get("ddb.geometry.sectors")?,
        })
    }

    /// Replaces the extents (used by `grow`), keeping the invariants, and recomputes the
    /// DDB cylinder count from the heads and sectors already there.
    pub(crate) fn set_extents(&mut self, extents: Vec<Extent>) -> Result<(), VmdkError> {
        let (checked, capacity_sectors) = checked_extents(extents)?;
        self.extents = checked;
        self.capacity_sectors = capacity_sectors;
        if let Some(old) = self.geometry() {
            self.set_geometry(Geometry::with(
                self.capacity_bytes(),
                old.heads,
                old.sectors,
            ));
        }
        Ok(())
    }

    fn set_geometry(&mut self, g: Geometry) {
        self.set_ddb_value("ddb.geometry.cylinders", &g.cylinders.to_string());
        self.set_ddb_value("ddb.geometry.heads", &g.heads.to_string());
        self.set_ddb_value("ddb.geometry.sectors", &g.sectors.to_string());
    }

    /// Sets a DDB value known to be printable (internal keys and numbers only).
    fn set_ddb_value(&mut self, key: &str, value: &str) {
        debug_assert!(is_valid_key(key) && validate_token(value).is_ok());
        match self.ddb.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value.to_string(),
            None => self.ddb.push((key.to_string(), value.to_string())),
        }
    }
}

impl std::str::FromStr for Descriptor {
    type Err = VmdkError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Descriptor::parse(s)
    }
}

impl fmt::Display for Descriptor {
    /// Prints the descriptor in the layout qemu-img writes; `parse(print(d)) == d` except for
    /// comments and blank lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{HEADER_LINE}")?;
        if let Some(version) = self.version {
            writeln!(f, "version={version}")?;
        }
        if let Some(cid) = self.cid {
            writeln!(f, "CID={cid:08x}")?;
        }
        writeln!(f, "parentCID={NO_PARENT_CID:08x}")?;
        writeln!(f, "createType=\"{}\"", self.create_type)?;
        for (key, raw) in &self.header_extra {
            writeln!(f, "{key}={raw}")?;
        }
        writeln!(f, "\n# Extent description")?;
        for extent in &self.extents {
            writeln!(f, "{extent}")?;
        }
        writeln!(f, "\n# The Disk Data Base\n#DDB\n")?;
        for (key, value) in &self.ddb {
            writeln!(f, "{key} = \"{value}\"")?;
        }
        Ok(())
    }
}

/// Line-by-line parser state.
#[derive(Default)]
struct Parser {
    seen_header: bool,
    version: Option<u32>,
    cid: Option<u32>,
    parent_cid: Option<u32>,
    create_type: Option<CreateType>,
    header_extra: Vec<(String, String)>,
    extents: Vec<Extent>,
    capacity_sectors: u64,
    ddb: Vec<(String, String)>,
}

impl Parser {
    fn line(&mut self, line_no: usize, line: &str) -> Result<(), ParseErrorKind> {
        if let Some(b) = line.bytes().find(|&b| b.is_ascii_control() && b != b'\t') {
            return Err(ParseErrorKind::ControlCharacter(b));
        }
        if !self.seen_header {
            if line_no == 1 && line.trim_end() == HEADER_LINE {
                self.seen_header = true;
                return Ok(());
            }
            return Err(ParseErrorKind::MissingHeader);
        }
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return Ok(());
        }
        let (first, _) = next_word(line);
        if Access::parse(first).is_some() {
            return self.extent(line);
        }
        if let Some((key, value)) = line.split_once('=') {
            let (key, value) = (key.trim(), value.trim());
            if key.starts_with("ddb.") {
                return self.ddb_entry(key, value);
            }
            return self.header_entry(key, value);
        }
        if looks_like_extent(line) {
            return Err(ParseErrorKind::UnknownAccess(first.to_string()));
        }
        Err(ParseErrorKind::UnrecognisedLine(truncate(line)))
    }

    fn header_entry(&mut self, key: &str, value: &str) -> Result<(), ParseErrorKind> {
        if !is_valid_key(key) {
            return Err(ParseErrorKind::InvalidKey(truncate(key)));
        }
        let duplicate = ParseErrorKind::DuplicateKey(key.to_string());
        match key {
            "version" => {
                let v = parse_decimal(unquote_lenient(value)?)
                    .and_then(|v| u32::try_from(v).ok())
                    .ok_or_else(|| bad_number("version", value))?;
                replace_once(&mut self.version, v, duplicate)
            }
            "CID" => {
                let v = parse_hex_u32(unquote_lenient(value)?)
                    .ok_or_else(|| bad_number("CID", value))?;
                replace_once(&mut self.cid, v, duplicate)
            }
            "parentCID" => {
                let v = parse_hex_u32(unquote_lenient(value)?)
                    .ok_or_else(|| bad_number("parentCID", value))?;
                if v != NO_PARENT_CID {
                    return Err(ParseErrorKind::DeltaDisk(v));
                }
                replace_once(&mut self.parent_cid, v, duplicate)
            }
            "createType" => {
                let v = CreateType::classify(unquote_lenient(value)?)?;
                replace_once(&mut self.create_type, v, duplicate)
            }
            "parentFileNameHint" => Err(ParseErrorKind::ParentHint(truncate(unquote_lenient(
                value,
            )?))),
            _ => {
                unquote_lenient(value)?;
                if self.header_extra.iter().any(|(k, _)| k == key) {
                    return Err(duplicate);
                }
                self.header_extra.push((key.to_string(), value.to_string()));
                Ok(())
            }
        }
    }

    fn ddb_entry(&mut self, key: &str, value: &str) -> Result<(), ParseErrorKind> {
        if !is_valid_key(key) {
            return Err(ParseErrorKind::InvalidKey(truncate(key)));
        }
        let value = unquote_strict(value)?;
        if self.ddb.iter().any(|(k, _)| k == key) {
            return Err(ParseErrorKind::DuplicateKey(key.to_string()));
        }
        self.ddb.push((key.to_string(), value.to_string()));
        Ok(())
    }

    /// `ACCESS SECTORS TYPE ["FILE" [OFFSET]]`
    fn extent(&mut self, line: &str) -> Result<(), ParseErrorKind> {
        let (access_word, rest) = next_word(line);
        let access = Access::parse(access_word)
            .ok_or_else(|| ParseErrorKind::UnknownAccess(truncate(access_word)))?;
        let (sectors_word, rest) = next_word(rest);
        if sectors_word.is_empty() {
            return Err(ParseErrorKind::MalformedExtent("missing sector count"));
        }
        let sectors =
            parse_decimal(sectors_word).ok_or_else(|| bad_number("sector count", sectors_word))?;
        let (type_word, rest) = next_word(rest);
        if type_word.is_empty() {
            return Err(ParseErrorKind::MalformedExtent("missing extent type"));
        }
        let kind = ExtentType::classify(type_word)?;
        let (file, offset_sectors) = if kind.has_file() {
            let (name, rest) = quoted_file_name(rest)?;
            let offset_sectors = match next_word(rest) {
                ("", _) => 0,
                (word, "") => parse_decimal(word).ok_or_else(|| bad_number("offset", word))?,
                _ => return Err(ParseErrorKind::MalformedExtent("text after the offset")),
            };
            (Some(name.to_string()), offset_sectors)
        } else {
            if !rest.trim().is_empty() {
                return Err(ParseErrorKind::MalformedExtent("a ZERO extent has no file"));
            }
            (None, 0)
        };
        let extent = Extent {
            access,
            sectors,
            kind,
            file,
            offset_sectors,
        };
        push_extent(&mut self.extents, &mut self.capacity_sectors, extent)
    }

    fn finish(self) -> Result<Descriptor, ParseErrorKind> {
        if !self.seen_header {
            return Err(ParseErrorKind::MissingHeader);
        }
        let create_type = self
            .create_type
            .ok_or(ParseErrorKind::MissingKey("createType"))?;
        if self.extents.is_empty() {
            return Err(ParseErrorKind::NoExtents);
        }
        Ok(Descriptor {
            version: self.version,
            cid: self.cid,
            create_type,
            header_extra: self.header_extra,
            extents: self.extents,
            ddb: self.ddb,
            capacity_sectors: self.capacity_sectors,
        })
    }
}

/// Sets `slot` unless it was already set.
fn replace_once<T>(
    slot: &mut Option<T>,
    value: T,
    duplicate: ParseErrorKind,
) -> Result<(), ParseErrorKind> {
    if slot.is_some() {
        return Err(duplicate);
    }
    *slot = Some(value);
    Ok(())
}

/// Splits off the first whitespace-delimited word; returns ("", "") at the end.
fn next_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(at) => s.split_at(at),
        None => (s, ""),
    }
}

/// `"name" rest` -> (name, rest).
fn quoted_file_name(s: &str) -> Result<(&str, &str), ParseErrorKind> {
    let s = s.trim_start();
    let Some(inner) = s.strip_prefix('"') else {
        return Err(ParseErrorKind::MalformedExtent(
            "expected a quoted file name after the extent type",
        ));
    };
    let Some(close) = inner.find('"') else {
        return Err(ParseErrorKind::BadQuoting(truncate(s)));
    };
    let (name, after) = inner.split_at(close);
    let rest = after.get(1..).unwrap_or_default();
    if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
        return Err(ParseErrorKind::BadQuoting(truncate(s)));
    }
    Ok((name, rest))
}

/// A header value, quoted or bare.
fn unquote_lenient(value: &str) -> Result<&str, ParseErrorKind> {
    if value.starts_with('"') {
        return unquote_strict(value);
    }
    if value.contains('"') {
        return Err(ParseErrorKind::BadQuoting(truncate(value)));
    }
    Ok(value)
}

/// A DDB value: exactly `"..."` with no quote inside.
fn unquote_strict(value: &str) -> Result<&str, ParseErrorKind> {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .filter(|inner| !inner.contains('"'))
        .ok_or_else(|| ParseErrorKind::BadQuoting(truncate(value)))
}

/// Digits only (no sign, no spaces), fitting in u64.
fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// 1 to 8 hex digits.
fn parse_hex_u32(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

fn bad_number(field: &'static str, value: &str) -> ParseErrorKind {
    ParseErrorKind::BadNumber {
        field,
        value: truncate(value),
    }
}

/// `WORD DIGITS WORD ...`: an extent line with an unknown access word.
fn looks_like_extent(line: &str) -> bool {
    let (_, rest) = next_word(line);
    let (second, _) = next_word(rest);
    parse_decimal(second).is_some()
}

/// Quotes in error messages are cut to 80 characters.
fn truncate(s: &str) -> String {
    const MAX: usize = 80;
    match s.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}...", s.get(..at).unwrap_or_default()),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QEMU_MONO: &str = include_str!("../../tests/data/vmdk/qemu-monolithic-flat.vmdk");
    const QEMU_TWOGB: &str = include_str!("../../tests/data/vmdk/qemu-twogb-flat.vmdk");
    const ESXI_VMFS: &str = include_str!("../../tests/data/vmdk/esxi-vmfs.vmdk");
    const WS_SPARSE: &str = include_str!("../../tests/data/vmdk/workstation-sparse.vmdk");
    const ESXI_DELTA: &str = include_str!("../../tests/data/vmdk/esxi-sesparse-delta.vmdk");

    fn kind_of(text: &str) -> (usize, ParseErrorKind) {
        match Descriptor::parse(text) {
            Err(VmdkError::Parse { line, kind, .. }) => (line, kind),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    fn with_extents(lines: &str) -> String {
        format!(
            "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
             createType=\"monolithicFlat\"\n\n{lines}\n#DDB\nddb.adapterType = \"lsilogic\"\n"
        )
    }

    #[test]
    fn parses_qemu_monolithic_flat() {
        let d = Descriptor::parse(QEMU_MONO).unwrap();
        assert_eq!(d.version(), Some(1));
        assert_eq!(d.cid(), Some(0x3833c58c));
        assert_eq!(d.create_type(), &CreateType::MonolithicFlat);
        assert_eq!(d.extents(), &[Extent::flat("x-flat.vmdk", 131072)]);
        assert_eq!(d.capacity_sectors(), 131072);
        assert_eq!(d.capacity_bytes(), 64 << 20);
        assert_eq!(d.ddb_value("ddb.adapterType"), Some("ide"));
        assert_eq!(
            d.geometry(),
            Some(Geometry {
                cylinders: 130,
                heads: 16,
                sectors: 63
            })
        );
    }

    #[test]
    fn parses_qemu_twogb_flat() {
        let d = Descriptor::parse(QEMU_TWOGB).unwrap();
        assert_eq!(d.create_type(), &CreateType::TwoGbMaxExtentFlat);
        let names: Vec<_> = d.extents().iter().map(|e| e.file.as_deref()).collect();
        assert_eq!(
            names,
            [
                Some("y-f001.vmdk"),
                Some("y-f002.vmdk"),
                Some("y-f003.vmdk")
            ]
        );
        assert_eq!(d.capacity_bytes(), 5 << 30);
    }

    #[test]
    fn parses_esxi_vmfs_with_extra_header_keys() {
        let d = Descriptor::parse(ESXI_VMFS).unwrap();
        assert_eq!(d.create_type(), &CreateType::Vmfs);
        assert_eq!(d.extents().len(), 1);
        assert_eq!(d.extents()[0].kind, ExtentType::Vmfs);
        assert_eq!(d.extents()[0].offset_sectors, 0);
        assert_eq!(d.capacity_bytes(), 10 << 30);
        assert_eq!(d.ddb_value("ddb.thinProvisioned"), None);
        assert_eq!(
            d.ddb_value("ddb.uuid"),
            Some("60 00 C2 9b 69 2f c9 76-74 c4 07 9e 10 87 3b f9")
        );
        let printed = d.to_string();
        assert!(printed.contains("encoding=\"UTF-8\"\n"), "{printed}");
        assert!(
            printed.contains("RW 20971520 VMFS \"disk-flat.vmdk\"\n"),
            "{printed}"
        );
    }

    #[test]
    fn print_parse_round_trip() {
        for text in [QEMU_MONO, QEMU_TWOGB, ESXI_VMFS] {
            let d = Descriptor::parse(text).unwrap();
            let again = Descriptor::parse(&d.to_string()).unwrap();
            assert_eq!(again, d);
        }
    }

    #[test]
    fn new_descriptor_has_qemu_ddb() {
        let d = Descriptor::new(
            CreateType::MonolithicFlat,
            vec![Extent::flat("lun-flat.vmdk", 131072)],
        )
        .unwrap();
        let text = d.to_string();
        assert!(text.starts_with("# Disk DescriptorFile\nversion=1\nCID="));
        assert!(text.contains("parentCID=ffffffff\ncreateType=\"monolithicFlat\"\n"));
        assert!(text.contains("\nRW 131072 FLAT \"lun-flat.vmdk\" 0\n"));
        assert!(text.contains("ddb.virtualHWVersion = \"4\"\n"));
        // qemu-img writes 8 cylinders for 64 MiB with the lsilogic adapter.
        assert!(text.contains("ddb.geometry.cylinders = \"8\"\n"));
        assert!(text.contains("ddb.geometry.heads = \"255\"\n"));
        assert!(text.contains("ddb.geometry.sectors = \"63\"\n"));
        assert!(text.contains("ddb.adapterType = \"lsilogic\"\n"));
        assert_ne!(d.cid(), Some(NO_PARENT_CID));
        assert_eq!(Descriptor::parse(&text).unwrap(), d);
    }

    #[test]
    fn geometry_matches_qemu() {
        // Values printed by qemu-img 10.0 with adapter_type=lsilogic.
        assert_eq!(Geometry::for_scsi(64 << 20).cylinders, 8);
        assert_eq!(Geometry::for_scsi(1000 << 30).cylinders, 130541);
        assert_eq!(Geometry::for_scsi(512).cylinders, 0);
    }

    #[test]
    fn set_extents_updates_capacity_and_cylinders() {
        let mut d = Descriptor::new(
            CreateType::MonolithicFlat,
            vec![Extent::flat("a-flat.vmdk", 131072)],
        )
        .unwrap();
        d.set_extents(vec![Extent::flat("a-flat.vmdk", 1000 << 21)])
            .unwrap();
        assert_eq!(d.capacity_bytes(), 1000 << 30);
        assert_eq!(d.geometry().unwrap().cylinders, 130541);
        assert!(d.set_extents(Vec::new()).is_err());
    }

    #[test]
    fn zero_extent_and_offsets() {
        let d = Descriptor::parse(&with_extents(
            "RW 100 FLAT \"a\" 7\nRDONLY 50 ZERO\nNOACCESS 10 VMFS \"b\" 3",
        ))
        .unwrap();
        let e = d.extents();
        assert_eq!(e[0].offset_sectors, 7);
        assert_eq!(e[0].required_file_len(), Some(107 * 512));
        assert_eq!(e[1].kind, ExtentType::Zero);
        assert_eq!(e[1].file, None);
        assert_eq!(e[1].required_file_len(), None);
        assert_eq!(e[2].access, Access::NoAccess);
        assert_eq!(d.capacity_sectors(), 160);
        assert_eq!(Descriptor::parse(&d.to_string()).unwrap(), d);
    }

    #[test]
    fn file_names_with_spaces_and_crlf() {
        let text = with_extents("RW 8 FLAT \"my disk-flat.vmdk\" 0").replace('\n', "\r\n");
        let d = Descriptor::parse(&text).unwrap();
        assert_eq!(d.extents()[0].file.as_deref(), Some("my disk-flat.vmdk"));
    }

    #[test]
    fn refuses_sparse_create_types() {
        for ct in [
            "monolithicSparse",
            "twoGbMaxExtentSparse",
            "streamOptimized",
            "vmfsSparse",
            "vmfsThin",
            "seSparse",
            "vmfsRDM",
            "vmfsRawDeviceMap",
            "vmfsPassthroughRawDeviceMap",
            "fullDevice",
        ] {
            let text = format!(
                "# Disk DescriptorFile\nversion=1\ncreateType=\"{ct}\"\nRW 8 FLAT \"a\" 0\n"
            );
            let (line, kind) = kind_of(&text);
            assert_eq!(line, 3, "{ct}");
            assert_eq!(kind, ParseErrorKind::UnsupportedCreateType(ct.to_string()));
            let err = Descriptor::parse(&text).unwrap_err();
            assert!(err.is_unsupported_format());
            assert!(err.to_string().contains(ct), "{err}");
        }
    }

    #[test]
    fn refuses_sparse_extent_types() {
        for ty in ["SPARSE", "VMFSSPARSE", "SESPARSE", "VMFSRDM", "VMFSRAW"] {
            let (line, kind) = kind_of(&with_extents(&format!("RW 8 {ty} \"a\"")));
            assert_eq!(line, 7);
            assert_eq!(kind, ParseErrorKind::UnsupportedExtentType(ty.to_string()));
        }
        let (_, kind) = kind_of(&with_extents("RW 8 BOGUS \"a\""));
        assert_eq!(kind, ParseErrorKind::UnknownExtentType("BOGUS".into()));
    }

    #[test]
    fn refuses_fixture_sparse_and_delta() {
        let (line, kind) = kind_of(WS_SPARSE);
        assert_eq!(line, 5);
        assert_eq!(
            kind,
            ParseErrorKind::UnsupportedCreateType("monolithicSparse".into())
        );
        let (line, kind) = kind_of(ESXI_DELTA);
        assert_eq!(line, 4);
        assert_eq!(kind, ParseErrorKind::DeltaDisk(0x1a2b3c4d));
        let err = Descriptor::parse(ESXI_DELTA).unwrap_err();
        assert_eq!(
            err.to_string(),
            "<descriptor>:4: delta disk (parentCID=1a2b3c4d): only base disks are served"
        );
    }

    #[test]
    fn refuses_parent_hint() {
        let text = "# Disk DescriptorFile\ncreateType=\"vmfs\"\nparentFileNameHint=\"base.vmdk\"\n";
        let (line, kind) = kind_of(text);
        assert_eq!(line, 3);
        assert_eq!(kind, ParseErrorKind::ParentHint("base.vmdk".into()));
    }

    #[test]
    fn refuses_hostile_file_names() {
        for (name, reason) in [
            ("", "empty name"),
            ("/etc/passwd", "contains '/'"),
            ("../x-flat.vmdk", "contains '/'"),
            ("sub/x-flat.vmdk", "contains '/'"),
            ("..", "is '.' or '..'"),
            (".", "is '.' or '..'"),
            ("a\\b", "backslash"),
        ] {
            let (line, kind) = kind_of(&with_extents(&format!("RW 8 FLAT \"{name}\" 0")));
            assert_eq!(line, 7, "{name:?}");
            match kind {
                ParseErrorKind::BadFileName { name: n, reason: r } => {
                    assert_eq!(n, name);
                    assert!(r.contains(reason), "{r} for {name:?}");
                }
                other => panic!("{name:?}: {other:?}"),
            }
        }
        let long = "a".repeat(256);
        let (_, kind) = kind_of(&with_extents(&format!("RW 8 FLAT \"{long}\" 0")));
        assert!(matches!(kind, ParseErrorKind::BadFileName { .. }));
    }

    #[test]
    fn malformed_extent_lines_name_the_line() {
        let cases: &[(&str, ParseErrorKind)] = &[
            (
                "RW",
                ParseErrorKind::MalformedExtent("missing sector count"),
            ),
            (
                "RW 8",
                ParseErrorKind::MalformedExtent("missing extent type"),
            ),
            (
                "RW 8 FLAT",
                ParseErrorKind::MalformedExtent(
                    "expected a quoted file name after the extent type",
                ),
            ),
            (
                "RW 8 FLAT a-flat.vmdk",
                ParseErrorKind::MalformedExtent(
                    "expected a quoted file name after the extent type",
                ),
            ),
            ("RW 8 FLAT \"a", ParseErrorKind::BadQuoting("\"a".into())),
            (
                "RW 8 FLAT \"a\"x",
                ParseErrorKind::BadQuoting("\"a\"x".into()),
            ),
            (
                "RW 8 FLAT \"a\" 0 9",
                ParseErrorKind::MalformedExtent("text after the offset"),
            ),
            ("RW 8 FLAT \"a\" -1", bad_number("offset", "-1")),
            ("RW +8 FLAT \"a\"", bad_number("sector count", "+8")),
            ("RW 0x8 FLAT \"a\"", bad_number("sector count", "0x8")),
            (
                "RW 99999999999999999999 FLAT \"a\"",
                bad_number("sector count", "99999999999999999999"),
            ),
            ("RW 0 FLAT \"a\"", ParseErrorKind::EmptyExtent),
            (
                "RW 8 ZERO \"a\"",
                ParseErrorKind::MalformedExtent("a ZERO extent has no file"),
            ),
            (
                "WO 8 FLAT \"a\"",
                ParseErrorKind::UnknownAccess("WO".into()),
            ),
            (
                "rw 8 FLAT \"a\"",
                ParseErrorKind::UnknownAccess("rw".into()),
            ),
            (
                "hello world",
                ParseErrorKind::UnrecognisedLine("hello world".into()),
            ),
        ];
        for (line, expected) in cases {
            let (at, kind) = kind_of(&with_extents(line));
            assert_eq!(at, 7, "{line}");
            assert_eq!(&kind, expected, "{line}");
        }
    }

    #[test]
    fn overflowing_sizes_are_refused() {
        let max = u64::MAX / 512;
        let (_, kind) = kind_of(&with_extents(&format!("RW {} FLAT \"a\" 0", max + 1)));
        assert_eq!(kind, ParseErrorKind::Overflow);
        let (_, kind) = kind_of(&with_extents(&format!("RW {max} FLAT \"a\" 1")));
        assert_eq!(kind, ParseErrorKind::Overflow);
        let (line, kind) = kind_of(&with_extents(&format!(
            "RW {max} FLAT \"a\" 0\nRW 1 FLAT \"b\" 0"
        )));
        assert_eq!((line, kind), (8, ParseErrorKind::Overflow));
        let ok = Descriptor::parse(&with_extents(&format!("RW {max} FLAT \"a\" 0"))).unwrap();
        assert_eq!(ok.capacity_bytes(), max * 512);
    }

    #[test]
    fn header_errors() {
        let (line, kind) = kind_of("version=1\n");
        assert_eq!((line, kind), (1, ParseErrorKind::MissingHeader));
        let (line, kind) = kind_of("");
        assert_eq!((line, kind), (1, ParseErrorKind::MissingHeader));
        let (line, kind) = kind_of("# Disk DescriptorFile\nRW 8 FLAT \"a\" 0\n");
        assert_eq!((line, kind), (3, ParseErrorKind::MissingKey("createType")));
        let (line, kind) = kind_of("# Disk DescriptorFile\ncreateType=\"monolithicFlat\"\n");
        assert_eq!((line, kind), (3, ParseErrorKind::NoExtents));
        let base = "# Disk DescriptorFile\ncreateType=\"monolithicFlat\"\n";
        for (extra, expected) in [
            ("CID=xyz", bad_number("CID", "xyz")),
            ("CID=123456789", bad_number("CID", "123456789")),
            ("version=-1", bad_number("version", "-1")),
            ("version=4294967296", bad_number("version", "4294967296")),
            ("parentCID=", bad_number("parentCID", "")),
            (
                "createType=\"vmfs\"",
                ParseErrorKind::DuplicateKey("createType".into()),
            ),
            (
                "createType=\"vmfs",
                ParseErrorKind::BadQuoting("\"vmfs".into()),
            ),
            ("bad key=1", ParseErrorKind::InvalidKey("bad key".into())),
            (
                "ddb.x = unquoted",
                ParseErrorKind::BadQuoting("unquoted".into()),
            ),
            (
                "ddb.x = \"a\"b\"",
                ParseErrorKind::BadQuoting("\"a\"b\"".into()),
            ),
            (
                "ddb.adapterType = \"ide\"\nddb.adapterType = \"ide\"",
                ParseErrorKind::DuplicateKey("ddb.adapterType".into()),
            ),
            ("a\u{1}b=1", ParseErrorKind::ControlCharacter(1)),
        ] {
            let text = format!("{base}{extra}\nRW 8 FLAT \"a\" 0\n");
            let (line, kind) = kind_of(&text);
            assert_eq!(kind, expected, "{extra}");
            assert!(line >= 3, "{extra}");
        }
    }

    #[test]
    fn size_and_encoding_limits() {
        let big = format!(
            "{}{}",
            with_extents("RW 8 FLAT \"a\" 0"),
            "#".repeat(MAX_DESCRIPTOR_BYTES)
        );
        assert!(matches!(
            Descriptor::parse(&big),
            Err(VmdkError::DescriptorTooLarge { .. })
        ));
        let mut bytes = with_extents("RW 8 FLAT \"a\" 0").into_bytes();
        bytes.extend_from_slice(b"\n\xff\n");
        let err = Descriptor::parse_bytes(&bytes).unwrap_err();
        assert!(
            matches!(
                err,
                VmdkError::Parse {
                    line: 11,
                    kind: ParseErrorKind::NotUtf8,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn extent_count_limit() {
        let lines: String = (0..MAX_EXTENTS).map(|_| "RW 1 ZERO\n").collect();
        let d = Descriptor::parse(&with_extents(&lines)).unwrap();
        assert_eq!(d.extents().len(), MAX_EXTENTS);
        let lines = format!("{lines}RW 1 ZERO");
        let (line, kind) = kind_of(&with_extents(&lines));
        assert_eq!(kind, ParseErrorKind::TooManyExtents(MAX_EXTENTS));
        assert_eq!(line, 7 + MAX_EXTENTS);
    }

    #[test]
    fn other_flat_create_type_is_accepted() {
        let text =
            "# Disk DescriptorFile\ncreateType=\"monolithicFlatCustomised\"\nRW 8 FLAT \"a\" 0\n";
        let d = Descriptor::parse(text).unwrap();
        assert_eq!(
            d.create_type(),
            &CreateType::Other("monolithicFlatCustomised".into())
        );
        assert_eq!(d.version(), None);
        assert_eq!(Descriptor::parse(&d.to_string()).unwrap(), d);
    }

    #[test]
    fn error_display_names_path_and_line() {
        let err = Descriptor::parse(&with_extents("RW 8 FLAT \"../x\" 0"))
            .unwrap_err()
            .with_path(std::path::Path::new("/ds/t/lun.vmdk"));
        let msg = err.to_string();
        assert!(
            msg.starts_with("/ds/t/lun.vmdk:7: extent file name \"../x\" refused"),
            "{msg}"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn line() -> impl Strategy<Value = String> {
            prop_oneof![
                8 => "(RW|RDONLY|NOACCESS) [1-9][0-9]{0,6} (FLAT|VMFS) \"[a-z -]{1,6}\"( [0-9]{1,3})?",
                4 => "(RW|RDONLY|NOACCESS) [1-9][0-9]{0,4} ZERO",
                4 => "ddb\\.[a-z]{1,4} = \"[a-zA-Z0-9 .-]{0,8}\"",
                2 => "(encoding|CID|version)=\"?[0-9a-f]{1,8}\"?",
                2 => "(#.{0,10})?",
                1 => "(RW|RDONLY|NOACCESS|rw|WO)? {0,2}[0-9]{0,21} ?(FLAT|ZERO|VMFS|SPARSE|X)? ?\"?[a-z./ ]{0,6}\"? ?[0-9]{0,4} ?[a-z]{0,2}",
                1 => "(createType|CID|parentCID|version|encoding|ddb\\.a|ddb\\.b|bad key) ?= ?\"?(monolithicFlat|vmfs|seSparse|ffffffff|[0-9a-f]{0,9})\"?",
                1 => "\\PC{0,20}",
            ]
        }

        proptest! {
            #[test]
            fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
                let _ = Descriptor::parse(&text);
                let _ = Descriptor::parse_bytes(text.as_bytes());
            }

            #[test]
            fn descriptor_like_text_parses_consistently(
                with_type: bool,
                lines in prop::collection::vec(line(), 0..12),
            ) {
                let create_type = if with_type { "createType=vmfs\n" } else { "" };
                let text = format!("{HEADER_LINE}\n{create_type}{}", lines.join("\n"));
                match Descriptor::parse(&text) {
                    Ok(d) => {
                        let sum: u64 = d.extents().iter().map(|e| e.sectors).sum();
                        prop_assert_eq!(d.capacity_sectors(), sum);
                        prop_assert!(!d.extents().is_empty());
                        prop_assert_eq!(Descriptor::parse(&d.to_string()).unwrap(), d);
                    }
                    Err(VmdkError::Parse { line, .. }) => {
                        prop_assert!(line >= 1 && line <= text.split('\n').count());
                    }
                    Err(other) => prop_assert!(false, "unexpected error {other:?}"),
                }
            }
        }
    }
}
