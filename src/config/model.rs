//! The typed model of a vit.conf (FreeBSD ctl.conf(5) plus VMware's additions).
//!
//! Every item carries the [`Pos`] it was parsed at so the verifier can name file, line and column.
//! `Pos` compares equal to every other `Pos`, so `parse(print(model)) == model` holds for the values
//! while positions (which printing changes) are ignored.

/// A 1-based line and column in the source file. Equality ignores it (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl PartialEq for Pos {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}
impl Eq for Pos {}

/// A name as written, with where it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    pub name: String,
    pub pos: Pos,
}

impl Named {
    pub fn new(name: impl Into<String>) -> Self {
        Named {
            name: name.into(),
            pos: Pos::default(),
        }
    }
}

/// `option NAME VALUE`, in the order written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opt {
    pub name: String,
    pub value: String,
    pub pos: Pos,
}

/// The whole file. Sections keep the order they were written in; the printer writes them grouped:
/// globals, initiator groups, auth groups, portal groups, named LUNs, targets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// VMware: a counter incremented by exactly one on every change.
    pub generation: Option<u64>,
    pub debug: Option<u64>,
    pub timeout: Option<u64>,
    pub maxproc: Option<u64>,
    pub pidfile: Option<String>,
    pub isns_servers: Vec<String>,
    pub isns_period: Option<u64>,
    pub isns_timeout: Option<u64>,
    pub initiator_groups: Vec<InitiatorGroup>,
    pub auth_groups: Vec<AuthGroup>,
    pub portal_groups: Vec<PortalGroup>,
    /// Global `lun NAME { }` sections, referenced by `lun N NAME` in targets.
    pub luns: Vec<Lun>,
    pub targets: Vec<Target>,
}

/// Where vitd listens for the predefined portal group `default` when no
/// `portal-group default { }` section says otherwise.
pub const DEFAULT_PORTAL_GROUP_LISTEN: [&str; 2] = ["0.0.0.0:3260", "[::]:3260"];

impl Config {
    /// The portal groups vitd listens for, in the order it takes them, each with its `listen`
    /// values: the implied `default` (on [`DEFAULT_PORTAL_GROUP_LISTEN`]) first, then each
    /// written group a target uses that is not `foreign` (the first section of a name).
    pub fn listened_portal_groups(&self) -> Vec<(&str, Vec<&str>)> {
        let mut out: Vec<(&str, Vec<&str>)> = Vec::new();
        if self.implied_default_portal_group().is_some() {
            out.push(("default", DEFAULT_PORTAL_GROUP_LISTEN.to_vec()));
        }
        for g in &self.portal_groups {
            if !g.foreign
                && self.portal_group_used(&g.name)
                && out.iter().all(|(n, _)| *n != g.name)
            {
                out.push((&g.name, g.listen.iter().map(|l| l.name.as_str()).collect()));
            }
        }
        out
    }

    /// Whether some target is in portal group `name` (by naming it; `default` also by naming
    /// none).
    pub fn portal_group_used(&self, name: &str) -> bool {
        self.targets.iter().any(|t| {
            (t.portal_groups.is_empty() && name == "default")
                || t.portal_groups.iter().any(|p| p.portal_group.name == name)
        })
    }

    /// The first target that uses the predefined portal group `default` (by naming it, or by
    /// naming no portal group) when no `portal-group default { }` section defines it: vitd then
    /// serves that group on [`DEFAULT_PORTAL_GROUP_LISTEN`], ahead of the groups written.
    pub fn implied_default_portal_group(&self) -> Option<&Target> {
        if self.portal_groups.iter().any(|p| p.name == "default") {
            return None;
        }
        self.targets.iter().find(|t| {
            t.portal_groups.is_empty()
                || t.portal_groups
                    .iter()
                    .any(|p| p.portal_group.name == "default")
        })
    }
}

/// VMware: `initiator-group NAME { initiator IQN ... }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitiatorGroup {
    pub name: String,
    pub pos: Pos,
    pub initiators: Vec<Named>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthType {
    None,
    Deny,
    Chap,
    ChapMutual,
}

impl AuthType {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthType::None => "none",
            AuthType::Deny => "deny",
            AuthType::Chap => "chap",
            AuthType::ChapMutual => "chap-mutual",
        }
    }
    pub fn parse(s: &str) -> Option<AuthType> {
        Some(match s {
            "none" => AuthType::None,
            "deny" => AuthType::Deny,
            "chap" => AuthType::Chap,
            "chap-mutual" => AuthType::ChapMutual,
            _ => return None,
        })
    }
}

/// `chap USER SECRET`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chap {
    pub user: String,
    pub secret: String,
    pub pos: Pos,
}

/// `chap-mutual USER SECRET MUTUAL-USER MUTUAL-SECRET`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChapMutual {
    pub user: String,
    pub secret: String,
    pub mutual_user: String,
    pub mutual_secret: String,
    pub pos: Pos,
}

/// The authentication statements shared by `auth-group { }` and a target's inline form.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthSettings {
    pub auth_type: Option<(AuthType, Pos)>,
    pub chap: Vec<Chap>,
    pub chap_mutual: Vec<ChapMutual>,
    pub initiator_names: Vec<Named>,
    /// `ADDR[/PREFIXLEN]` as written.
    pub initiator_portals: Vec<Named>,
    /// VMware: names of `initiator-group` sections.
    pub initiator_groups: Vec<Named>,
}

impl AuthSettings {
    pub fn is_empty(&self) -> bool {
        self == &AuthSettings::default()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthGroup {
    pub name: String,
    pub pos: Pos,
    pub auth: AuthSettings,
}

/// ctl.conf's `discovery-filter`, declared from the least to the most filtering (each filters
/// what the one before does and more: the order compares them, as ctld's `>=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DiscoveryFilter {
    None,
    Portal,
    PortalName,
    PortalNameAuth,
}

impl DiscoveryFilter {
    pub fn as_str(self) -> &'static str {
        match self {
            DiscoveryFilter::None => "none",
            DiscoveryFilter::Portal => "portal",
            DiscoveryFilter::PortalName => "portal-name",
            DiscoveryFilter::PortalNameAuth => "portal-name-auth",
        }
    }
    pub fn parse(s: &str) -> Option<DiscoveryFilter> {
        Some(match s {
            "none" => DiscoveryFilter::None,
            "portal" => DiscoveryFilter::Portal,
            "portal-name" => DiscoveryFilter::PortalName,
            "portal-name-auth" => DiscoveryFilter::PortalNameAuth,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortalGroup {
    pub name: String,
    pub pos: Pos,
    pub discovery_auth_group: Option<Named>,
    pub discovery_filter: Option<(DiscoveryFilter, Pos)>,
    /// `listen ADDR:PORT`, `listen [V6]:PORT`, or VMware's `IFNAME:PORT`, as written.
    pub listen: Vec<Named>,
    pub listen_iser: Vec<Named>,
    pub offload: Option<Named>,
    pub options: Vec<Opt>,
    pub redirect: Option<Named>,
    pub tag: Option<(u16, Pos)>,
    pub foreign: bool,
    pub dscp: Option<Named>,
    pub pcp: Option<(u8, Pos)>,
}

/// `portal-group NAME [AUTH-GROUP]` inside a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetPortalGroup {
    pub portal_group: Named,
    pub auth_group: Option<Named>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The target name: an IQN, EUI or NAA name.
    pub name: String,
    pub pos: Pos,
    pub alias: Option<Named>,
    pub auth_group: Option<Named>,
    /// Inline authentication statements (mutually exclusive with `auth_group`).
    pub auth: AuthSettings,
    pub portal_groups: Vec<TargetPortalGroup>,
    pub ports: Vec<Named>,
    pub redirect: Option<Named>,
    /// VMware: `option uuid U`, `option owner-id U`, and any other options.
    pub options: Vec<Opt>,
    pub luns: Vec<TargetLun>,
}

impl Target {
    pub fn option(&self, name: &str) -> Option<&str> {
        option(&self.options, name)
    }
    /// VMware: `option uuid U`, the target's directory on the datastore.
    pub fn uuid(&self) -> Option<&str> {
        self.option("uuid")
    }
    /// VMware: `option owner-id U`, the host that owns the target's I/O.
    pub fn owner_id(&self) -> Option<&str> {
        self.option("owner-id")
    }
    /// Whether `name` names this target: its alias exactly, or its name in any case (iSCSI names
    /// compare case-insensitively).
    pub fn answers_to(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name) || self.alias.as_ref().is_some_and(|a| a.name == name)
    }
    /// Which of this target's names `name` would clash with as another target's alias
    /// (`as_name` false) or name (`as_name` true): a name that two targets answer to would
    /// leave a lookup ambiguous. Aliases clash when equal; a name clashes with an alias or a
    /// name equal to it in any case.
    pub fn name_clash(&self, name: &str, as_name: bool) -> Option<&str> {
        if self.name.eq_ignore_ascii_case(name) {
            return Some(&self.name);
        }
        let alias = self.alias.as_ref()?;
        let clash = match as_name {
            true => alias.name.eq_ignore_ascii_case(name),
            false => alias.name == name,
        };
        clash.then_some(alias.name.as_str())
    }
}

/// Looks an option up by name (the last one written wins, as in ctld).
pub fn option<'a>(options: &'a [Opt], name: &str) -> Option<&'a str> {
    options
        .iter()
        .rev()
        .find(|o| o.name == name)
        .map(|o| o.value.as_str())
}

/// `lun N NAME` (a reference to a global `lun NAME { }`) or `lun N { ... }`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "few LUNs per config; keeps `LunRef::Inline(body)` patterns simple"
)]
pub enum LunRef {
    Named(Named),
    Inline(LunBody),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetLun {
    /// The LUN id, 0..=1023 once verified (parsed as written, so the verifier can report it).
    pub id: u64,
    pub pos: Pos,
    pub lun: LunRef,
}

/// A global `lun NAME { }` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lun {
    pub name: String,
    pub pos: Pos,
    pub body: LunBody,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Block,
    Ramdisk,
    /// VMware: the LUN is a VMDK descriptor with flat extents.
    Vmdk,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Block => "block",
            Backend::Ramdisk => "ramdisk",
            Backend::Vmdk => "vmdk",
        }
    }
    pub fn parse(s: &str) -> Option<Backend> {
        Some(match s {
            "block" => Backend::Block,
            "ramdisk" => Backend::Ramdisk,
            "vmdk" => Backend::Vmdk,
            _ => return None,
        })
    }
}

/// The statements of a LUN body, shared by global and inline LUNs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LunBody {
    pub pos: Pos,
    pub backend: Option<(Backend, Pos)>,
    pub blocksize: Option<(u64, Pos)>,
    pub ctl_lun: Option<(u64, Pos)>,
    pub device_id: Option<Named>,
    pub device_type: Option<Named>,
    /// VMware: `option lun-alias "A"`, and any other options.
    pub options: Vec<Opt>,
    /// For `vmdk`: relative to `.iSCSI-Config/targets/`.
    pub path: Option<Named>,
    pub serial: Option<Named>,
    /// Bytes. In the file a bare number is KiB; a suffixed number (K, M, G, T, or B) means its suffix.
    pub size: Option<(u64, Pos)>,
}

/// The largest memory LUN (`backend ramdisk`): 64 TiB. vitd reserves address space for all of
/// it and, for a thin one, a bit per 64 KiB (128 MiB at this size); a larger `size` is refused.
pub const MAX_RAMDISK_BYTES: u64 = 64 << 40;

impl LunBody {
    /// The backend vitd serves the LUN with: the one written, else `vmdk` when a `path` is
    /// given, else `ramdisk`.
    pub fn effective_backend(&self) -> Backend {
        match (self.backend, &self.path) {
            (Some((b, _)), _) => b,
            (None, Some(_)) => Backend::Vmdk,
            (None, None) => Backend::Ramdisk,
        }
    }
    pub fn option(&self, name: &str) -> Option<&str> {
        option(&self.options, name)
    }
    pub fn lun_alias(&self) -> Option<&str> {
        self.option("lun-alias")
    }
    /// ctl.conf's `option capacity SIZE` of a ramdisk LUN: how much memory may back it (same
    /// units as `size`). `None` when not given; absent or 0 means no backing store (as in ctld:
    /// reads return zeroes, writes are discarded).
    pub fn capacity(&self) -> Option<(Result<u64, String>, Pos)> {
        let o = self.options.iter().rev().find(|o| o.name == "capacity")?;
        Some((super::parser::size_bytes(&o.value), o.pos))
    }

    /// ctl.conf's `option pblocksize`/`pblockoffset` (the physical block) or
    /// `ublocksize`/`ublockoffset` (the unmap granule), as written: each in bytes (a bare
    /// number is bytes here, as ctld reads these) with its position.
    pub fn granule_options(&self, kind: GranuleKind) -> [Option<(Result<u64, String>, Pos)>; 2] {
        let (size, offset) = match kind {
            GranuleKind::Physical => ("pblocksize", "pblockoffset"),
            GranuleKind::Unmap => ("ublocksize", "ublockoffset"),
        };
        [size, offset].map(|name| {
            let o = self.options.iter().rev().find(|o| o.name == name)?;
            let bytes = if o.value.bytes().all(|b| b.is_ascii_digit()) {
                super::parser::size_bytes(&format!("{}B", o.value))
            } else {
                super::parser::size_bytes(&o.value)
            };
            Some((bytes.map_err(|e| format!("option {name}: {e}")), o.pos))
        })
    }
}

/// Which granule of a LUN ctl.conf's block geometry options describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GranuleKind {
    /// The physical block (`pblocksize`, `pblockoffset`): READ CAPACITY (16)'s LOGICAL BLOCKS
    /// PER PHYSICAL BLOCK EXPONENT and LOWEST ALIGNED LOGICAL BLOCK ADDRESS.
    Physical,
    /// The unmap granule (`ublocksize`, `ublockoffset`): the Block Limits page's OPTIMAL UNMAP
    /// GRANULARITY and UNMAP GRANULARITY ALIGNMENT.
    Unmap,
}

/// The most logical blocks a physical block may have: READ CAPACITY (16) gives its exponent in
/// four bits and the first aligned LBA in fourteen.
pub const MAX_PHYSICAL_BLOCKS: u64 = 1 << 14;

/// A granule of `size` bytes whose first whole one starts `offset` bytes into the LUN, in
/// blocks of `block` bytes: (blocks per granule, the first LBA at a granule's start), as ctld
/// computes them. The size must be a power-of-two number of blocks, the offset whole blocks and
/// not more than the size.
pub fn granule(size: u64, offset: u64, block: u64) -> Result<(u64, u64), String> {
    let per = size / block.max(1);
    if size == 0 || !size.is_multiple_of(block.max(1)) || !per.is_power_of_two() {
        return Err(format!(
            "{size} bytes is not a power-of-two multiple of the {block}-byte block"
        ));
    }
    let off = offset / block.max(1);
    if !offset.is_multiple_of(block.max(1)) || off > per {
        return Err(format!(
            "offset {offset} bytes is not a whole number of {block}-byte blocks up to the granule's {size}"
        ));
    }
    Ok((per, (per - off) % per))
}

/// Where a `listen` statement asks to listen.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ListenHost {
    /// A literal IPv4 or IPv6 address (`0.0.0.0`, `[::1]`).
    Ip(std::net::IpAddr),
    /// A host or interface name (VMware writes `vmk0`).
    Name(String),
}

/// A parsed `listen` address: host and TCP port (3260 when none is written).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ListenAddr {
    pub host: ListenHost,
    pub port: u16,
}

/// The iSCSI well-known TCP port.
pub const ISCSI_PORT: u16 = 3260;

impl ListenAddr {
    /// Parses `ADDR:PORT`, `[V6]:PORT`, `IFNAME:PORT`, or a bare `ADDR`, `[V6]`, `V6` or name
    /// (port 3260). The error says what is wrong.
    pub fn parse(s: &str) -> Result<ListenAddr, String> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (v6, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("\"{s}\": missing `]`"))?;
            let ip = v6
                .parse::<std::net::Ipv6Addr>()
                .map_err(|_| format!("\"{v6}\" is not an IPv6 address"))?;
            let port = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| format!("\"{s}\": expected `:PORT` after `]`"))?,
                ),
            };
            (ListenHost::Ip(ip.into()), port)
        } else if s.matches(':').count() > 1 {
            let ip = s
                .parse::<std::net::Ipv6Addr>()
                .map_err(|_| format!("\"{s}\" is not an IPv6 address (write [ADDR]:PORT)"))?;
            (ListenHost::Ip(ip.into()), None)
        } else {
            let (h, port) = match s.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            };
            (listen_host(h)?, port)
        };
        let port = match port {
            None => ISCSI_PORT,
            Some(p) => parse_port(p)?,
        };
        Ok(ListenAddr { host, port })
    }
}

/// An IPv4 address or a host/interface name.
fn listen_host(h: &str) -> Result<ListenHost, String> {
    if let Ok(ip) = h.parse::<std::net::Ipv4Addr>() {
        return Ok(ListenHost::Ip(ip.into()));
    }
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    let looks_numeric = h.chars().all(|c| c.is_ascii_digit() || c == '.');
    if h.is_empty() || looks_numeric || !h.chars().all(is_name_char) {
        return Err(format!(
            "\"{h}\" is not an IPv4 address, host name or interface name"
        ));
    }
    Ok(ListenHost::Name(h.to_string()))
}

/// A TCP port 1..=65535.
fn parse_port(p: &str) -> Result<u16, String> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("port \"{p}\" is not a number"));
    }
    match p.parse::<u32>() {
        Ok(n @ 1..=65535) => {
            u16::try_from(n).map_err(|_| format!("port {p} is out of range 1..=65535"))
        }
        _ => Err(format!("port {p} is out of range 1..=65535")),
    }
}

/// A parsed `initiator-portal ADDR[/PREFIXLEN]` (IPv6 may be bracketed): the initiator
/// addresses it admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitiatorPortal {
    pub addr: std::net::IpAddr,
    /// Leading bits that must match; the full width (32 or 128) when none is written.
    pub prefix_len: u8,
}

impl InitiatorPortal {
    /// Parses `ADDR`, `ADDR/LEN`, `[V6]` or `[V6]/LEN`. The error says what is wrong.
    pub fn parse(s: &str) -> Result<InitiatorPortal, String> {
        let (addr_text, len_text) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let bare = addr_text
            .strip_prefix('[')
            .and_then(|a| a.strip_suffix(']'))
            .unwrap_or(addr_text);
        let addr = bare
            .parse::<std::net::IpAddr>()
            .map_err(|_| format!("\"{addr_text}\" is not an IP address"))?;
        let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len_text {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max && l.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => {
                    return Err(format!(
                        "prefix length \"{l}\" is not a number in 0..={max}"
                    ));
                }
            },
        };
        if addr.to_canonical().is_ipv4() && addr.is_ipv6() && prefix_len < 96 {
            return Err(format!(
                "\"{s}\": an IPv4-mapped address takes a prefix length of 96..=128 \
                 (96 + the IPv4 prefix length)"
            ));
        }
        Ok(InitiatorPortal { addr, prefix_len })
    }

    /// Whether `ip` lies in this portal's network. IPv4 networks admit IPv4 initiators (also
    /// written IPv4-mapped, `::ffff:a.b.c.d`), IPv6 networks IPv6 ones. An IPv4-mapped network
    /// is the IPv4 network of its last 32 bits: prefix length 96 + n is the IPv4 prefix n (one
    /// shorter than 96, which `parse` refuses, admits nothing).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let (net, prefix_len) = match self.addr {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => match self.prefix_len.checked_sub(96) {
                    Some(len) => (IpAddr::V4(v4), len),
                    None => return false,
                },
                None => (self.addr, self.prefix_len),
            },
            IpAddr::V4(_) => (self.addr, self.prefix_len),
        };
        match (net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32u32.saturating_sub(u32::from(prefix_len)))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128u32.saturating_sub(u32::from(prefix_len)))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// A portal group's `dscp` value as ctld takes it: a DiffServ codepoint 0..=63 given as a
/// number (decimal, or hexadecimal with `0x`) or by name (`be`, `ef`, `cs0`..`cs7`, `af11`..`af43`).
pub fn dscp_codepoint(value: &str) -> Option<u8> {
    let v = value.to_ascii_lowercase();
    let n = match v.as_str() {
        "be" => 0,
        "ef" => 46,
        _ => {
            if let Some(c) = v.strip_prefix("cs") {
                match c.parse::<u8>() {
                    Ok(n @ 0..=7) => n * 8,
                    _ => return None,
                }
            } else if let Some(af) = v.strip_prefix("af") {
                match af.as_bytes() {
                    [class @ b'1'..=b'4', drop @ b'1'..=b'3'] => {
                        (class - b'0') * 8 + (drop - b'0') * 2
                    }
                    _ => return None,
                }
            } else if let Some(hex) = v.strip_prefix("0x") {
                u8::from_str_radix(hex, 16).ok()?
            } else {
                v.parse::<u8>().ok()?
            }
        }
    };
    (n <= 63).then_some(n)
}

#[cfg(test)]
mod tests {
    /// The groups vitd listens for: the implied `default` first, then the written ones a target
    /// uses, foreign ones left out (announced, not listened on).
    #[test]
    fn listened_portal_groups_are_the_used_served_ones_in_vitds_order() {
        let cfg = crate::config::parse(
            "portal-group a { listen lo:3999 }\nportal-group unused { listen 10.0.0.1 }\n\
             portal-group far { foreign\n listen 10.9.9.9 }\n\
             target iqn.2000-01.com.x:t { portal-group a\n portal-group far }\n\
             target iqn.2000-01.com.x:u { }",
            "t",
        )
        .unwrap();
        assert_eq!(
            cfg.listened_portal_groups(),
            [
                ("default", vec!["0.0.0.0:3260", "[::]:3260"]),
                ("a", vec!["lo:3999"])
            ]
        );
    }
}
