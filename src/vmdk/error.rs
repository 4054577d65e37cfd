//! The one error type of the VMDK layer: what went wrong, and where (file, line, extent).

use std::io;
use std::path::{Path, PathBuf};

/// Why a descriptor line was refused. Carried by [`VmdkError::Parse`] with the line number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    /// The first line is not `# Disk DescriptorFile`.
    #[error("not a VMDK descriptor: expected \"# Disk DescriptorFile\" as the first line")]
    MissingHeader,
    /// The text is not UTF-8.
    #[error("descriptor is not valid UTF-8 text")]
    NotUtf8,
    /// A control character (other than tab) in the text.
    #[error("control character 0x{0:02x} in descriptor text")]
    ControlCharacter(u8),
    /// A line that is neither a comment, a `key=value`, a DDB entry nor an extent.
    #[error("unrecognised line {0:?}")]
    UnrecognisedLine(String),
    /// A header or DDB key is set twice.
    #[error("duplicate key {0:?}")]
    DuplicateKey(String),
    /// A key has characters outside `[A-Za-z0-9._]`.
    #[error("invalid key {0:?}")]
    InvalidKey(String),
    /// A value is badly quoted (missing closing quote, a quote inside, text after it).
    #[error("badly quoted value {0:?}")]
    BadQuoting(String),
    /// A number field does not parse.
    #[error("invalid {field}: {value:?}")]
    BadNumber {
        /// Which field (`version`, `CID`, `sector count`, `offset`...).
        field: &'static str,
        /// The text found.
        value: String,
    },
    /// A required header key is missing (reported at the last line).
    #[error("missing {0}")]
    MissingKey(&'static str),
    /// The `createType` names a sparse, thin, delta or raw-device format.
    #[error(
        "unsupported createType \"{0}\": only flat VMDKs (monolithicFlat, twoGbMaxExtentFlat, vmfs) are served"
    )]
    UnsupportedCreateType(String),
    /// An extent of a sparse, thin or raw-device type.
    #[error("unsupported extent type {0}: only FLAT, VMFS and ZERO extents are served")]
    UnsupportedExtentType(String),
    /// An extent type nobody knows.
    #[error("unknown extent type {0:?}")]
    UnknownExtentType(String),
    /// An access word other than RW, RDONLY, NOACCESS.
    #[error("unknown extent access {0:?} (expected RW, RDONLY or NOACCESS)")]
    UnknownAccess(String),
    /// `parentCID` is not `ffffffff`, or a `parentFileNameHint` is present: a delta (child) disk.
    #[error("delta disk (parentCID={0:08x}): only base disks are served")]
    DeltaDisk(u32),
    /// `parentFileNameHint` names a parent disk.
    #[error("delta disk (parentFileNameHint={0:?}): only base disks are served")]
    ParentHint(String),
    /// An extent line is missing fields or has extra ones.
    #[error("malformed extent line: {0}")]
    MalformedExtent(&'static str),
    /// An extent file name that is not a plain name in the descriptor's directory.
    #[error("extent file name {name:?} refused: {reason}")]
    BadFileName {
        /// The name as written.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// An extent of zero sectors.
    #[error("extent has 0 sectors")]
    EmptyExtent,
    /// More than [`crate::vmdk::MAX_EXTENTS`] extents.
    #[error("more than {0} extents")]
    TooManyExtents(usize),
    /// No extent lines at all.
    #[error("descriptor has no extents")]
    NoExtents,
    /// Sector counts or offsets whose byte sizes do not fit in 64 bits.
    #[error("sizes overflow 64 bits")]
    Overflow,
}

/// A data-path operation, for [`VmdkError::Denied`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Reading bytes.
    Read,
    /// Writing bytes.
    Write,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Op::Read => "read",
            Op::Write => "write",
        })
    }
}

/// Every failure of the VMDK layer.
#[derive(Debug, thiserror::Error)]
pub enum VmdkError {
    /// An I/O call failed on `path`.
    #[error("{}: {op}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done (`open`, `read`, `fsync`...).
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The descriptor file is larger than [`crate::vmdk::MAX_DESCRIPTOR_BYTES`].
    #[error("{}: descriptor larger than {limit} bytes", origin(path))]
    DescriptorTooLarge {
        /// The descriptor.
        path: PathBuf,
        /// The limit in bytes.
        limit: usize,
    },
    /// The file is a binary sparse VMDK (or its embedded descriptor), not a text descriptor.
    #[error("{}: {what}: only flat VMDKs are served", path.display())]
    BinarySparse {
        /// The file.
        path: PathBuf,
        /// What its magic says it is.
        what: &'static str,
    },
    /// A descriptor line was refused. `path` is empty when the text did not come from a file.
    #[error("{}:{line}: {kind}", origin(path))]
    Parse {
        /// The descriptor file, or empty.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        kind: ParseErrorKind,
    },
    /// A byte range beyond the end of the disk.
    #[error("range {offset}+{len} is beyond the disk capacity of {capacity} bytes")]
    OutOfRange {
        /// First byte.
        offset: u64,
        /// Length in bytes.
        len: u64,
        /// Disk capacity in bytes.
        capacity: u64,
    },
    /// A range touches an extent whose access forbids the operation.
    #[error("{op} denied by extent {extent} ({why})")]
    Denied {
        /// The operation.
        op: Op,
        /// 0-based extent index.
        extent: usize,
        /// `NOACCESS`, `RDONLY` or `ZERO`.
        why: &'static str,
    },
    /// A LUN size that is zero, not a multiple of 512, or too large for the layout.
    #[error("invalid LUN size {size} bytes: {reason}")]
    InvalidSize {
        /// The requested size.
        size: u64,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A file name (a LUN stem, an extent name) that is not a plain name in its directory.
    #[error("invalid file name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A file that `create` or `grow` would write already exists.
    #[error("{}: already exists", path.display())]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// `grow` was asked to shrink.
    #[error("{}: cannot shrink a LUN from {current} to {requested} bytes", path.display())]
    Shrink {
        /// The descriptor.
        path: PathBuf,
        /// The current capacity in bytes.
        current: u64,
        /// The requested capacity in bytes.
        requested: u64,
    },
    /// `grow` cannot extend this layout.
    #[error("{}: cannot grow: {reason}", path.display())]
    NotGrowable {
        /// The descriptor.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// An extent file is a symlink, directory, device...
    #[error("{}: not a regular file ({found})", path.display())]
    NotRegularFile {
        /// The extent file.
        path: PathBuf,
        /// What was found.
        found: &'static str,
    },
    /// An extent's file is one the LUN keeps something else in (its own descriptor, its saved
    /// reservations), or bytes of one file belong to two extents.
    #[error("{}: {why}", path.display())]
    ExtentConflict {
        /// The descriptor.
        path: PathBuf,
        /// What the extents share, with the file name.
        why: String,
    },
    /// An extent file is shorter than its extent line says.
    #[error("{}: {actual} bytes, but the descriptor needs at least {required}", path.display())]
    ExtentTooSmall {
        /// The extent file.
        path: PathBuf,
        /// Its length.
        actual: u64,
        /// `(offset + sectors) * 512`.
        required: u64,
    },
}

fn origin(path: &Path) -> std::path::Display<'_> {
    if path.as_os_str().is_empty() {
        Path::new("<descriptor>").display()
    } else {
        path.display()
    }
}

impl From<crate::fsutil::FsError> for VmdkError {
    fn from(e: crate::fsutil::FsError) -> Self {
        if e.op == "link" && e.source.kind() == io::ErrorKind::AlreadyExists {
            VmdkError::AlreadyExists { path: e.path }
        } else {
            VmdkError::io(&e.path, e.op, e.source)
        }
    }
}

impl VmdkError {
    /// An I/O error with its path and operation.
    pub(crate) fn io(path: &Path, op: &'static str, source: io::Error) -> Self {
        VmdkError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }

    /// Attaches the descriptor path to a parse or size error; other errors are returned unchanged.
    pub(crate) fn with_path(self, file: &Path) -> Self {
        match self {
            VmdkError::Parse { line, kind, .. } => VmdkError::Parse {
                path: file.to_path_buf(),
                line,
                kind,
            },
            VmdkError::DescriptorTooLarge { limit, .. } => VmdkError::DescriptorTooLarge {
                path: file.to_path_buf(),
                limit,
            },
            other => other,
        }
    }

    /// The parse error kind, if this is a parse error.
    pub fn parse_kind(&self) -> Option<&ParseErrorKind> {
        match self {
            VmdkError::Parse { kind, .. } => Some(kind),
            _ => None,
        }
    }

    /// True when the VMDK exists but is a sparse, thin, delta or raw-device format we do not serve.
    pub fn is_unsupported_format(&self) -> bool {
        matches!(
            self,
            VmdkError::BinarySparse { .. }
                | VmdkError::Parse {
                    kind: ParseErrorKind::UnsupportedCreateType(_)
                        | ParseErrorKind::UnsupportedExtentType(_)
                        | ParseErrorKind::DeltaDisk(_)
                        | ParseErrorKind::ParentHint(_),
                    ..
                }
        )
    }
}
