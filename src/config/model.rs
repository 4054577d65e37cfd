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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
pub enum LunRef {
    Named(Named),
    Inline(LunBody),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetLun {
    /// The LUN id, 0..=255 once verified (parsed as written, so the verifier can report it).
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

impl LunBody {
    pub fn option(&self, name: &str) -> Option<&str> {
        option(&self.options, name)
    }
    pub fn lun_alias(&self) -> Option<&str> {
        self.option("lun-alias")
    }
}
