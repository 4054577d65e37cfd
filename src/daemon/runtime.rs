//! The running configuration: vit.conf resolved against the datastore and this machine, in the
//! shape the control and data threads use. Built whole from a verified `Config`; replacing it is
//! how a reload will apply (the control thread owns the current value).

use super::portal::{self, InterfaceAddr};
use crate::config::{
    AuthSettings, AuthType, Backend, Config, DEFAULT_PORTAL_GROUP_LISTEN, DiscoveryFilter, LunBody,
    PortalGroup,
};
use crate::datastore::{Datastore, lun_body};
use crate::scsi::{DeviceServer, LunInfo};
use crate::vmdk::{self, ExtentMap};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::net::SocketAddr;
use std::sync::Arc;

/// The largest single I/O (bytes): one registered buffer. Advertised as the Block Limits maximum
/// transfer length.
pub const MAX_IO_BYTES: usize = 1 << 20;

/// Why the running configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("portal group {group}: {msg}")]
    Portal { group: String, msg: String },
    #[error("target {target} LUN {lun}: {msg}")]
    Lun {
        target: String,
        lun: u64,
        msg: String,
    },
    #[error("{0}")]
    Other(String),
}

/// Who may log in, resolved from an auth-group (or a target's inline statements).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthPolicy {
    pub auth_type: Option<AuthType>,
    /// (user, secret)
    pub chap: Vec<(String, String)>,
    /// (user, secret, mutual user, mutual secret)
    pub chap_mutual: Vec<(String, String, String, String)>,
    /// Initiator names allowed (from initiator-name and initiator-group); empty = any.
    pub initiators: Vec<String>,
    /// Initiator portals allowed, `ADDR[/LEN]`; empty = any.
    pub portals: Vec<String>,
}

impl AuthPolicy {
    pub fn deny() -> Self {
        AuthPolicy {
            auth_type: Some(AuthType::Deny),
            ..Default::default()
        }
    }
    pub fn none() -> Self {
        AuthPolicy {
            auth_type: Some(AuthType::None),
            ..Default::default()
        }
    }
    /// The effective type: explicit, else implied by the credentials, else deny (as ctld).
    pub fn effective_type(&self) -> AuthType {
        match self.auth_type {
            Some(t) => t,
            None if !self.chap_mutual.is_empty() => AuthType::ChapMutual,
            None if !self.chap.is_empty() => AuthType::Chap,
            None if !self.initiators.is_empty() || !self.portals.is_empty() => AuthType::None,
            None => AuthType::Deny,
        }
    }
    /// Whether an initiator name passes the name restriction.
    pub fn allows_initiator(&self, name: &str) -> bool {
        self.initiators.is_empty() || self.initiators.iter().any(|i| i.eq_ignore_ascii_case(name))
    }
    /// Whether a peer address passes the initiator-portal restriction (an entry that does not
    /// parse admits nothing).
    pub fn allows_portal(&self, ip: std::net::IpAddr) -> bool {
        self.portals.is_empty()
            || self
                .portals
                .iter()
                .filter_map(|p| crate::config::InitiatorPortal::parse(p).ok())
                .any(|p| p.contains(ip))
    }
}

/// A portal group as served.
#[derive(Clone, Debug)]
pub struct PortalGroupRt {
    pub name: String,
    pub tag: u16,
    pub addrs: Vec<SocketAddr>,
    /// The `listen` values as written (for SendTargets when the address is a wildcard).
    pub listen: Vec<String>,
    pub foreign: bool,
    pub discovery_auth: AuthPolicy,
    /// ctl.conf's `discovery-filter`; `None` when not written (vit then filters as
    /// portal-name and also hides auth-type deny targets: see `discovery::visible_targets`).
    pub discovery_filter: Option<DiscoveryFilter>,
    pub redirect: Option<String>,
    /// ctl.conf's `dscp` (a DiffServ codepoint) and `pcp` (an 802.1Q priority): what the
    /// connections accepted on the group's portals are marked with (`portal::mark_traffic`).
    pub dscp: Option<u8>,
    pub pcp: Option<u8>,
}

/// What holds a LUN's bytes.
#[derive(Debug)]
pub enum Backing {
    /// Flat VMDK extents: the map and one open file per map extent (`None` for ZERO extents).
    Vmdk {
        map: ExtentMap,
        files: Vec<Option<File>>,
        direct: bool,
    },
    /// Memory (ctl.conf `backend ramdisk`), for protocol benchmarks.
    Ramdisk { mem: super::ramdisk::RamDisk },
    /// Nothing: the LUN's descriptor or extents could not be opened at start (`reason` says
    /// why). It is listed and answers INQUIRY, and every other command NOT READY, MANUAL
    /// INTERVENTION REQUIRED, while the target's other LUNs and every other target are served.
    Offline { reason: String },
}

/// A LUN as served.
#[derive(Debug)]
pub struct LunRt {
    pub id: u64,
    pub block_size: u32,
    pub num_blocks: u64,
    pub read_only: bool,
    pub serial: String,
    pub alias: Option<String>,
    /// A stable 64-bit identity for the NAA designator, derived from the LUN's path or name.
    pub identity: u64,
    pub backing: Backing,
    /// State shared by every data thread: reservations, atomic-operation ranges.
    pub shared: super::shared::LunShared,
    /// Thin provisioning: deallocated blocks are holes that read as zeros.
    pub thin: bool,
    /// ctl.conf's `option writecache on|off`, when given.
    pub write_cache: Option<bool>,
    /// ctl.conf's `option pblocksize`/`pblockoffset` (bytes; none: the file system's block).
    pub physical: (Option<u64>, u64),
    /// ctl.conf's `option ublocksize`/`ublockoffset` (bytes; none: what a hole punch frees).
    pub unmap_granule: (Option<u64>, u64),
}

impl LunRt {
    /// Its extents are opened O_DIRECT: reads and writes go between the device and the task's
    /// buffer without passing through the CPU.
    pub fn direct_io(&self) -> bool {
        matches!(self.backing, Backing::Vmdk { direct: true, .. })
    }
}

/// A target as served.
#[derive(Debug)]
pub struct TargetRt {
    pub name: String,
    pub alias: Option<String>,
    /// Its own auth-group or inline auth settings.
    pub auth: AuthPolicy,
    /// Portal groups (indexes into `Running::portal_groups`) named with an auth-group of their
    /// own in the target (`portal-group NAME AUTH-GROUP`), and that group's policy.
    pub pg_auth: Vec<(usize, AuthPolicy)>,
    /// Indexes into `Running::portal_groups`.
    pub portal_groups: Vec<usize>,
    pub redirect: Option<String>,
    pub owner_id: Option<String>,
    pub luns: Vec<Arc<LunRt>>,
    /// Every portal of the target's portal groups: address and portal group tag.
    pub portals: Vec<(SocketAddr, u16)>,
    /// The SCSI device server of the target's LUNs.
    pub server: DeviceServer,
}

impl TargetRt {
    /// The access policy of a connection through portal group `pg`: the auth-group the target
    /// names for that portal group, else its own (ctld).
    pub fn auth_for(&self, pg: usize) -> &AuthPolicy {
        self.pg_auth
            .iter()
            .find(|(i, _)| *i == pg)
            .map_or(&self.auth, |(_, a)| a)
    }

    /// The index in `luns` of the LUN an 8-byte LUN field addresses.
    pub fn lun_index(&self, lun: [u8; 8]) -> Option<usize> {
        self.lun_at(lun).map(|(i, _)| i)
    }

    /// The index in `luns` and the LUN number of the LUN an 8-byte LUN field addresses.
    pub fn lun_at(&self, lun: [u8; 8]) -> Option<(usize, u16)> {
        let id = crate::scsi::decode_lun(lun)?;
        let i = self.luns.iter().position(|l| l.id == u64::from(id))?;
        Some((i, id))
    }
}

/// The whole running configuration.
#[derive(Debug)]
pub struct Running {
    pub generation: u64,
    pub portal_groups: Vec<PortalGroupRt>,
    pub targets: Vec<Arc<TargetRt>>,
}

impl Running {
    pub fn target(&self, name: &str) -> Option<&Arc<TargetRt>> {
        self.targets
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(name))
    }
    /// Every distinct address some non-foreign portal group listens on, with the group index.
    pub fn listen_addrs(&self) -> Vec<(SocketAddr, usize)> {
        let used: HashSet<usize> = self
            .targets
            .iter()
            .flat_map(|t| t.portal_groups.iter().copied())
            .collect();
        let mut seen = HashSet::new();
        let mut out: Vec<(SocketAddr, usize)> = Vec::new();
        for (i, pg) in self.portal_groups.iter().enumerate() {
            if pg.foreign || !used.contains(&i) {
                continue;
            }
            for a in &pg.addrs {
                // The group's own wildcard on that port takes these connections already.
                if pg.addrs.iter().any(|w| portal::covers(w, a)) {
                    continue;
                }
                if seen.insert(*a) {
                    out.push((*a, i));
                }
            }
        }
        out
    }
}

/// Options that change how LUNs are opened.
#[derive(Clone, Copy, Debug)]
pub struct OpenOptions {
    /// Ask for O_DIRECT (falls back to buffered I/O, logged once, where refused).
    pub direct: bool,
}

/// Resolves an auth-group by name, with ctld's predefined groups.
fn auth_group(cfg: &Config, name: &str) -> AuthPolicy {
    if let Some(g) = cfg.auth_groups.iter().find(|g| g.name == name) {
        return policy(cfg, &g.auth);
    }
    match name {
        "no-authentication" => AuthPolicy::none(),
        _ => AuthPolicy::deny(), // "default" and "no-access"; unknown names are refused by verify
    }
}

fn policy(cfg: &Config, a: &AuthSettings) -> AuthPolicy {
    let mut initiators: Vec<String> = a.initiator_names.iter().map(|n| n.name.clone()).collect();
    for g in &a.initiator_groups {
        if let Some(group) = cfg.initiator_groups.iter().find(|x| x.name == g.name) {
            initiators.extend(group.initiators.iter().map(|i| i.name.clone()));
        }
    }
    // An initiator group restricts who may log in; named but empty, it admits nobody (an empty
    // list of names means "any initiator", so it must not come out as one).
    let emptied = !a.initiator_groups.is_empty() && initiators.is_empty();
    if emptied {
        let names: Vec<&str> = a.initiator_groups.iter().map(|g| g.name.as_str()).collect();
        tracing::warn!(
            "initiator group {} has no initiators: the targets that use it admit none",
            names.join(", ")
        );
    }
    AuthPolicy {
        auth_type: if emptied {
            Some(AuthType::Deny)
        } else {
            a.auth_type.map(|(t, _)| t)
        },
        chap: a
            .chap
            .iter()
            .map(|c| (c.user.clone(), c.secret.clone()))
            .collect(),
        chap_mutual: a
            .chap_mutual
            .iter()
            .map(|c| {
                (
                    c.user.clone(),
                    c.secret.clone(),
                    c.mutual_user.clone(),
                    c.mutual_secret.clone(),
                )
            })
            .collect(),
        initiators,
        portals: a.initiator_portals.iter().map(|p| p.name.clone()).collect(),
    }
}

/// A stable FNV-1a hash: LUN identities must not change across restarts or builds.
pub fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Builds the running configuration. Every portal address and every LUN is resolved and opened
/// here, so that a bad value is a clear startup (or reload) error, never a surprise later.
pub fn build(
    cfg: &Config,
    ds: &Datastore,
    interfaces: &[InterfaceAddr],
    open: OpenOptions,
) -> Result<Running, RuntimeError> {
    let mut portal_groups = Vec::new();
    // The predefined `default`, when implied, is served first; then the groups as written (the
    // first of a name, which verify makes the only one).
    let mut sections: HashMap<&str, &PortalGroup> = HashMap::new();
    let mut groups: Vec<(&str, Option<&PortalGroup>)> = Vec::new();
    if cfg.implied_default_portal_group().is_some() {
        groups.push(("default", None));
    }
    for pg in &cfg.portal_groups {
        if let Entry::Vacant(e) = sections.entry(pg.name.as_str()) {
            e.insert(pg);
            groups.push((pg.name.as_str(), Some(pg)));
        }
    }
    // A group without a tag gets the lowest of 1..=65535 that no group is written with.
    let written_tags: HashSet<u16> = cfg
        .portal_groups
        .iter()
        .filter_map(|p| p.tag.map(|(t, _)| t))
        .collect();
    let mut free_tags = (1..=u16::MAX).filter(|t| !written_tags.contains(t));
    for (name, pg) in groups {
        let listen: Vec<String> = match pg {
            Some(pg) => pg.listen.iter().map(|l| l.name.clone()).collect(),
            None => DEFAULT_PORTAL_GROUP_LISTEN.map(String::from).to_vec(),
        };
        let mut addrs = Vec::new();
        let foreign = pg.is_some_and(|p| p.foreign);
        if foreign {
            // ctl.conf's `foreign`: another host listens there, this one announces it in
            // discovery. Only a literal address can be announced (an interface name is one of
            // that host's), and not a wildcard (ctld leaves those out too).
            addrs.extend(listen.iter().flat_map(|l| foreign_addrs(l)));
        } else {
            for l in &listen {
                let resolved =
                    portal::resolve_listen(l, interfaces).map_err(|msg| RuntimeError::Portal {
                        group: name.to_string(),
                        msg,
                    })?;
                addrs.extend(resolved);
            }
        }
        let tag = match pg.and_then(|p| p.tag) {
            Some((t, _)) => t,
            None => free_tags.next().ok_or_else(|| RuntimeError::Portal {
                group: name.to_string(),
                msg: "no tag is left to give it (other groups hold every tag of 1..=65535)".into(),
            })?,
        };
        let discovery_auth = auth_group(
            cfg,
            pg.and_then(|p| p.discovery_auth_group.as_ref())
                .map_or("default", |n| &n.name),
        );
        portal_groups.push(PortalGroupRt {
            name: name.to_string(),
            tag,
            addrs,
            listen,
            foreign,
            discovery_auth,
            discovery_filter: pg.and_then(|p| p.discovery_filter).map(|(f, _)| f),
            redirect: pg
                .and_then(|p| p.redirect.as_ref())
                .map(|r| redirect_address(&r.name)),
            dscp: pg
                .and_then(|p| p.dscp.as_ref())
                .and_then(|d| crate::config::dscp_codepoint(&d.name)),
            pcp: pg.and_then(|p| p.pcp).map(|(p, _)| p),
        });
    }
    let group_index: HashMap<&str, usize> = portal_groups
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.as_str(), i))
        .collect();
    if let Some(p) = ds.shared_lun_files(cfg).into_iter().next() {
        return Err(RuntimeError::Other(p.to_string()));
    }
    let mut targets = Vec::new();
    for t in &cfg.targets {
        let auth = match &t.auth_group {
            Some(g) => auth_group(cfg, &g.name),
            None if !t.auth.is_empty() => policy(cfg, &t.auth),
            None => auth_group(cfg, "default"),
        };
        let pg_names: Vec<&str> = if t.portal_groups.is_empty() {
            vec!["default"]
        } else {
            t.portal_groups
                .iter()
                .map(|p| p.portal_group.name.as_str())
                .collect()
        };
        let pgs: Vec<usize> = pg_names
            .iter()
            .filter_map(|n| group_index.get(n).copied())
            .collect();
        // ctld's `portal-group NAME AUTH-GROUP`: connections through that portal group are
        // checked against AUTH-GROUP instead of the target's own.
        let pg_auth = t
            .portal_groups
            .iter()
            .filter_map(|p| {
                let ag = p.auth_group.as_ref()?;
                let i = group_index.get(p.portal_group.name.as_str())?;
                Some((*i, auth_group(cfg, &ag.name)))
            })
            .collect();
        let mut luns = Vec::new();
        for tl in &t.luns {
            let Some(body) = lun_body(cfg, &tl.lun) else {
                continue;
            };
            let lun = match open_lun(ds, t.name.as_str(), tl.id, body, open) {
                Ok(lun) => lun,
                // A fault of vit.conf itself stops vitd, located there.
                Err(OpenFault::Config(pos, msg)) => {
                    let at = ds.config_path().display().to_string();
                    let msg = format!("target {} LUN {}: {msg}", t.name, tl.id);
                    return Err(RuntimeError::Other(
                        crate::config::ConfigError::at(&at, pos, msg).to_string(),
                    ));
                }
                // A LUN whose files on the datastore cannot be served (a descriptor or extent
                // missing, damaged or unreadable) is brought up offline, as ctld and LIO carry
                // on past a LUN they fail to open: one broken file does not take every target
                // of the datastore down with it.
                Err(OpenFault::Files(msg)) if body.effective_backend() != Backend::Ramdisk => {
                    tracing::error!(
                        "target {} LUN {}: offline (NOT READY to initiators) until vitd is \
                         restarted with it repaired: {msg}",
                        t.name,
                        tl.id
                    );
                    offline_lun(tl.id, body, msg)
                }
                Err(OpenFault::Descriptors(msg)) => {
                    let opened: usize = targets.iter().map(|t: &Arc<TargetRt>| t.luns.len()).sum();
                    let all: usize = cfg.targets.iter().map(|t| t.luns.len()).sum();
                    let limit = super::open_files_limit()
                        .map_or_else(|| "?".to_string(), |l| l.rlim_cur.to_string());
                    return Err(RuntimeError::Lun {
                        target: t.name.clone(),
                        lun: tl.id,
                        msg: format!(
                            "{msg}: vitd holds every extent file open, and the open-files limit \
                             ({limit}) ran out after {} of the {all} LUNs; raise it (`ulimit -n` \
                             before starting vitd, systemd's LimitNOFILE=)",
                            opened + luns.len()
                        ),
                    });
                }
                Err(OpenFault::Files(msg)) => {
                    return Err(RuntimeError::Lun {
                        target: t.name.clone(),
                        lun: tl.id,
                        msg,
                    });
                }
            };
            luns.push(Arc::new(lun));
        }
        let portals = pgs
            .iter()
            .flat_map(|&i: &usize| {
                let pg = &portal_groups[i];
                pg.addrs.iter().map(move |a| (*a, pg.tag))
            })
            .collect();
        let infos = luns
            .iter()
            .map(|l| lun_info(l))
            .collect::<Result<Vec<_>, _>>()?;
        let server = DeviceServer::new(infos)
            .map_err(|e| RuntimeError::Other(format!("target {}: {e}", t.name)))?;
        targets.push(Arc::new(TargetRt {
            portals,
            server,
            name: t.name.clone(),
            alias: t.alias.as_ref().map(|a| a.name.clone()),
            auth,
            pg_auth,
            portal_groups: pgs,
            redirect: t.redirect.as_ref().map(|r| redirect_address(&r.name)),
            owner_id: t.owner_id().map(str::to_string),
            luns,
        }));
    }
    shared_addresses(&portal_groups, &targets)?;
    Ok(Running {
        generation: cfg.generation.unwrap_or(0),
        portal_groups,
        targets,
    })
}

/// The TargetAddress a `redirect` value sends: as written, except that a bare IPv6 address (ctld
/// takes `redirect 2001:db8::5`) goes in brackets, as RFC 7143 §13.8 wants, so that the
/// initiator does not read its last group as a port.
fn redirect_address(value: &str) -> String {
    match value.parse::<std::net::Ipv6Addr>() {
        Ok(v6) => format!("[{v6}]"),
        Err(_) => value.to_string(),
    }
}

/// The addresses a foreign portal group's `listen` value announces: a literal address, unless
/// it is a wildcard; nothing for a name.
fn foreign_addrs(listen: &str) -> Vec<SocketAddr> {
    match crate::config::ListenAddr::parse(listen) {
        Ok(crate::config::ListenAddr {
            host: crate::config::ListenHost::Ip(ip),
            port,
        }) if !ip.is_unspecified() => vec![SocketAddr::new(ip, port)],
        _ => Vec::new(),
    }
}

/// No two portal groups that targets use may resolve to one address (`lo:3260` and
/// `127.0.0.1:3260`, which verify cannot see are the same), nor may one listen on a wildcard
/// and another on an address of its family on the same port: [`portal::first_clash`], which
/// vitctl warns with too.
fn shared_addresses(
    groups: &[PortalGroupRt],
    targets: &[Arc<TargetRt>],
) -> Result<(), RuntimeError> {
    let used: HashSet<usize> = targets
        .iter()
        .flat_map(|t| t.portal_groups.iter().copied())
        .collect();
    let listened: Vec<(SocketAddr, usize)> = groups
        .iter()
        .enumerate()
        .filter(|(i, pg)| !pg.foreign && used.contains(i))
        .flat_map(|(i, pg)| pg.addrs.iter().map(move |a| (*a, i)))
        .collect();
    let Some((at, with)) = portal::first_clash(&listened) else {
        return Ok(());
    };
    let ((a, i), (b, j)) = (listened[at], listened[with]);
    let msg = if b == a {
        format!(
            "listens on {a}, where portal group {} listens too; vitd would serve only one group \
             on an address",
            groups[j].name
        )
    } else {
        format!(
            "listens on {a}, and portal group {} on {b}: a wildcard and an address of its family \
             cannot both be listened on with one port",
            groups[j].name
        )
    };
    Err(RuntimeError::Portal {
        group: groups[i].name.clone(),
        msg,
    })
}

/// Why a LUN could not be opened.
enum OpenFault {
    /// vit.conf itself is wrong, at this place (vitd stops).
    Config(crate::config::Pos, String),
    /// Its files on the datastore fail it (the LUN is served offline).
    Files(String),
    /// This process ran out of open files (EMFILE, ENFILE): a fault of the host's limits, not of
    /// the LUN (vitd stops, naming the limit).
    Descriptors(String),
}

/// A LUN's saved reservations (APTPL) that exist but cannot be read back: the LUN is served
/// offline rather than without them (its initiators' fencing would be gone), unless the process
/// ran out of descriptors (vitd stops, naming the limit).
fn saved_reservations_fault(path: &std::path::Path, e: &std::io::Error) -> OpenFault {
    let msg = crate::datastore::saved_reservations_unreadable(path, e);
    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
        OpenFault::Descriptors(msg)
    } else {
        OpenFault::Files(msg)
    }
}

impl From<vmdk::VmdkError> for OpenFault {
    fn from(e: vmdk::VmdkError) -> Self {
        let errno = match &e {
            vmdk::VmdkError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        };
        if matches!(errno, Some(libc::EMFILE | libc::ENFILE)) {
            OpenFault::Descriptors(e.to_string())
        } else {
            OpenFault::Files(e.to_string())
        }
    }
}

impl From<String> for OpenFault {
    fn from(msg: String) -> Self {
        OpenFault::Files(msg)
    }
}

impl From<&str> for OpenFault {
    fn from(msg: &str) -> Self {
        OpenFault::Files(msg.to_string())
    }
}

fn open_lun(
    ds: &Datastore,
    target: &str,
    id: u64,
    body: &LunBody,
    open: OpenOptions,
) -> Result<LunRt, OpenFault> {
    let block_size = body.blocksize.map_or(512, |(b, _)| b as u32);
    let backend = body.effective_backend();
    let alias = body.lun_alias().map(str::to_string);
    let (backing, bytes, read_only, key, pr_file) = match backend {
        Backend::Ramdisk => {
            let size = body
                .size
                .map(|(s, _)| s)
                .ok_or("a ramdisk LUN needs a size")?;
            let capacity = match body.capacity() {
                None => 0,
                Some((c, _)) => c.map_err(|e| format!("option capacity: {e}"))?,
            };
            let mem = if capacity == 0 {
                tracing::warn!(
                    "target {target} LUN {id}: a ramdisk without `option capacity` has no backing \
                     store: reads return zeroes, writes are discarded"
                );
                super::ramdisk::RamDisk::discarding(size)
            } else {
                super::ramdisk::RamDisk::new(size, capacity)
            }
            .map_err(|e| e.to_string())?;
            (
                Backing::Ramdisk { mem },
                size,
                false,
                format!("{target}/{id}"),
                None,
            )
        }
        Backend::Vmdk | Backend::Block => {
            let Some(path) = body.path.as_ref() else {
                let pos = body.backend.map_or(body.pos, |(_, p)| p);
                return Err(OpenFault::Config(
                    pos,
                    format!("backend {} needs a `path`", backend.as_str()),
                ));
            };
            crate::datastore::lun_path_parts(&path.name)
                .map_err(|e| OpenFault::Config(path.pos, e.to_string()))?;
            let descriptor = ds.resolve_lun_path(&path.name).map_err(|e| e.to_string())?;
            let desc = vmdk::check(&descriptor)?;
            let capacity = desc.capacity_bytes();
            if let Some((size, pos)) = body.size
                && size != capacity
            {
                return Err(OpenFault::Config(
                    pos,
                    format!(
                        "size {size} bytes disagrees with {} ({capacity} bytes)",
                        descriptor.display()
                    ),
                ));
            }
            let dir = descriptor.parent().ok_or("descriptor has no directory")?;
            let read_only = desc
                .extents()
                .iter()
                .all(|e| e.access != vmdk::Access::ReadWrite);
            let mut files = Vec::new();
            let mut direct = open.direct;
            for e in desc.extents() {
                let Some(name) = e.file.as_deref() else {
                    files.push(None);
                    continue;
                };
                let writable = e.access == vmdk::Access::ReadWrite;
                let file = match vmdk::open_extent(dir, name, writable, direct) {
                    Ok(f) if direct && !dio_alignment_fits(&f, block_size) => {
                        tracing::warn!(
                            "{}: the file system's O_DIRECT alignment exceeds the {block_size}-byte block size; using buffered I/O (SYNCHRONIZE CACHE and FUA flush)",
                            descriptor.display()
                        );
                        direct = false;
                        vmdk::open_extent(dir, name, writable, false)?
                    }
                    Ok(f) => f,
                    Err(_) if direct => {
                        // Opened without O_DIRECT, it says that O_DIRECT was what failed; an
                        // extent that cannot be opened at all says why (and nothing of O_DIRECT).
                        let f = vmdk::open_extent(dir, name, writable, false)?;
                        tracing::warn!(
                            "{}: O_DIRECT refused by the file system; using buffered I/O (SYNCHRONIZE CACHE and FUA flush)",
                            descriptor.display()
                        );
                        direct = false;
                        f
                    }
                    Err(e) => return Err(e.into()),
                };
                files.push(Some(file));
            }
            let map = ExtentMap::new(&desc);
            // Reservations with APTPL are kept beside the descriptor.
            let pr_file = crate::vmdk::reservations_path(&descriptor);
            (
                Backing::Vmdk { map, files, direct },
                capacity,
                read_only,
                path.name.clone(),
                Some(pr_file),
            )
        }
    };
    if bytes % u64::from(block_size) != 0 {
        let pos = body.blocksize.map_or(body.pos, |(_, p)| p);
        return Err(OpenFault::Config(
            pos,
            format!("size {bytes} is not a multiple of the block size {block_size}"),
        ));
    }
    let identity = stable_hash(&key);
    let serial = body
        .serial
        .as_ref()
        .map_or_else(|| format!("{identity:016x}"), |s| s.name.clone());
    // ctl.conf's `option readonly on` makes a LUN read-only whatever its extents allow.
    let read_only = read_only
        || body
            .option("readonly")
            .is_some_and(|v| v.eq_ignore_ascii_case("on"));
    // Flat extents are sparse files: holes read as zeros, hole punching deallocates.
    let thin = true;
    Ok(LunRt {
        id,
        block_size,
        num_blocks: bytes / u64::from(block_size),
        read_only,
        serial,
        alias,
        identity,
        backing,
        shared: match pr_file {
            Some(path) => super::shared::LunShared::open(path.clone())
                .map_err(|e| saved_reservations_fault(&path, &e))?,
            None => super::shared::LunShared::new(),
        },
        thin,
        write_cache: body
            .option("writecache")
            .map(|v| v.eq_ignore_ascii_case("on")),
        physical: granule_option(body, crate::config::GranuleKind::Physical),
        unmap_granule: granule_option(body, crate::config::GranuleKind::Unmap),
    })
}

/// A LUN that could not be opened: the block size and size vit.conf gives it (one block when
/// it gives none), no backing store.
fn offline_lun(id: u64, body: &LunBody, reason: String) -> LunRt {
    let block_size = body.blocksize.map_or(512, |(b, _)| b as u32);
    let key = body
        .path
        .as_ref()
        .map_or_else(|| format!("offline/{id}"), |p| p.name.clone());
    let identity = stable_hash(&key);
    let blocks = body
        .size
        .map_or(1, |(bytes, _)| bytes / u64::from(block_size))
        .max(1);
    LunRt {
        id,
        block_size,
        num_blocks: blocks,
        read_only: false,
        serial: body
            .serial
            .as_ref()
            .map_or_else(|| format!("{identity:016x}"), |s| s.name.clone()),
        alias: body.lun_alias().map(str::to_string),
        identity,
        backing: Backing::Offline { reason },
        shared: super::shared::LunShared::new(),
        thin: false,
        write_cache: None,
        physical: (None, 0),
        unmap_granule: (None, 0),
    }
}

/// A granule's size and offset options as given (bytes; an unreadable one as absent: the
/// config was verified before it got here).
fn granule_option(body: &LunBody, kind: crate::config::GranuleKind) -> (Option<u64>, u64) {
    let [size, offset] = body
        .granule_options(kind)
        .map(|o| o.and_then(|(v, _)| v.ok()));
    (size, offset.unwrap_or(0))
}

/// Whether O_DIRECT I/O on `file` works for `block_size`-aligned offsets and lengths from
/// page-aligned buffers (statx STATX_DIOALIGN; kernels that do not report it are trusted).
fn dio_alignment_fits(file: &File, block_size: u32) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: statx is plain data for which all-zero bytes are valid.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx on our own open fd with an empty path (AT_EMPTY_PATH) writes into `stx`.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return true;
    }
    stx.stx_dio_offset_align != 0
        && stx.stx_dio_offset_align <= block_size
        && stx.stx_dio_mem_align <= 4096
}

/// The SCSI view of a LUN.
fn lun_info(l: &LunRt) -> Result<LunInfo, RuntimeError> {
    let id = u16::try_from(l.id)
        .map_err(|_| RuntimeError::Other(format!("LUN id {} too large", l.id)))?;
    let mut info = LunInfo::new(id, l.block_size, l.num_blocks, l.identity, &l.serial);
    info.read_only = l.read_only;
    info.offline = matches!(l.backing, Backing::Offline { .. });
    if l.thin {
        info.provisioning = crate::scsi::lun::Provisioning::thin();
    }
    // Honest write cache reporting. By default O_DIRECT extents are write-through (WCE=0: every
    // write is made durable, RWF_DSYNC, before it is acknowledged) and buffered ones write-back
    // (WCE=1: SYNCHRONIZE CACHE and FUA flush). `option writecache on|off` (ctl.conf's LUN option)
    // chooses explicitly; "off" on a buffered extent makes every write durable too.
    info.write_cache_enabled = l.write_cache.unwrap_or(!l.direct_io());
    info.max_transfer_blocks = (MAX_IO_BYTES as u32 / l.block_size).max(1);
    info.optimal_transfer_blocks = info.max_transfer_blocks;
    // What a hole punch or MADV_DONTNEED frees whole: less is zeroed, not given back. For a
    // file, its file system's preferred I/O size (st_blksize): the block on local file systems
    // (4 KiB on ext4, XFS, tmpfs); larger on NFS, where what the server frees is unknown.
    // ctl.conf's `ublocksize`/`ublockoffset` options say otherwise, and `pblocksize`/
    // `pblockoffset` give a physical block (checked when the config was verified). Unlike ctld,
    // which takes a file's st_blksize for its physical block too, vit reports a physical block
    // of one logical block unless asked: with more, libiscsi 1.19's iscsi-test-cu
    // GetLBAStatus.UnmapSingle wants a GET LBA STATUS at LBA n+1 to answer from LBA n+LBPPB,
    // which no device can (the first descriptor covers the LBA asked for, SBC-3 5.6).
    let unmap_default = match &l.backing {
        Backing::Vmdk { files, .. } => files
            .iter()
            .flatten()
            .find_map(|f| {
                use std::os::unix::fs::MetadataExt;
                f.metadata().ok().map(|m| m.blksize())
            })
            .unwrap_or(4096),
        Backing::Ramdisk { .. } => super::ramdisk::CHUNK as u64,
        Backing::Offline { .. } => 4096,
    };
    let block = u64::from(l.block_size);
    let [p, u] =
        [(l.physical, block), (l.unmap_granule, unmap_default)].map(|((size, offset), default)| {
            let size = size.unwrap_or(default);
            crate::config::granule(size, offset, block)
                .or_else(|_| crate::config::granule(size, 0, block))
                .unwrap_or((1, 0))
        });
    if p.0 <= crate::config::MAX_PHYSICAL_BLOCKS {
        info.physical_exp = p.0.trailing_zeros() as u8;
        info.lowest_aligned = p.1 as u16;
    }
    info.optimal_unmap_blocks = u32::try_from(u.0).unwrap_or(u32::MAX).clamp(1, 1 << 16);
    info.unmap_alignment = u32::try_from(u.1).unwrap_or(0) % info.optimal_unmap_blocks;
    Ok(info)
}

/// Flushes every extent to stable storage (at shutdown, after the data threads stopped).
pub fn sync_all(r: &Running) {
    for t in &r.targets {
        for lun in &t.luns {
            if let Backing::Vmdk { files, .. } = &lun.backing {
                for f in files.iter().flatten() {
                    if let Err(e) = f.sync_data() {
                        tracing::error!(
                            "target {} LUN {}: flushing an extent at stop failed ({e}): writes \
                             acknowledged before may be lost",
                            t.name,
                            lun.id
                        );
                    }
                }
            }
        }
    }
}

/// A summary for the startup log.
pub fn describe(r: &Running) -> String {
    let luns: usize = r.targets.iter().map(|t| t.luns.len()).sum();
    let offline = r
        .targets
        .iter()
        .flat_map(|t| t.luns.iter())
        .filter(|l| matches!(l.backing, Backing::Offline { .. }))
        .count();
    let offline = if offline > 0 {
        format!(" ({offline} offline)")
    } else {
        String::new()
    };
    let count =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    format!(
        "generation {}: {}, {}{offline}, {}",
        r.generation,
        count(r.targets.len(), "target", "targets"),
        count(luns, "LUN", "LUNs"),
        count(r.portal_groups.len(), "portal group", "portal groups")
    )
}

/// A 1 MiB memory LUN 0 (512-byte blocks) for unit tests.
#[cfg(test)]
pub(crate) fn test_memory_lun(mem: super::ramdisk::RamDisk) -> LunRt {
    LunRt {
        id: 0,
        block_size: 512,
        num_blocks: mem.size() / 512,
        read_only: false,
        serial: "s".into(),
        alias: None,
        identity: 1,
        backing: Backing::Ramdisk { mem },
        shared: super::shared::LunShared::new(),
        thin: true,
        write_cache: None,
        physical: (None, 0),
        unmap_granule: (None, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramdisk_lun(write_cache: Option<bool>) -> LunRt {
        LunRt {
            write_cache,
            ..test_memory_lun(super::super::ramdisk::RamDisk::new(1 << 20, 1 << 20).unwrap())
        }
    }

    #[test]
    fn write_cache_follows_the_option_and_the_backing() {
        assert!(
            lun_info(&ramdisk_lun(None)).unwrap().write_cache_enabled,
            "memory is write-back"
        );
        assert!(
            !lun_info(&ramdisk_lun(Some(false)))
                .unwrap()
                .write_cache_enabled
        );
        assert!(
            lun_info(&ramdisk_lun(Some(true)))
                .unwrap()
                .write_cache_enabled
        );
        let info = lun_info(&ramdisk_lun(None)).unwrap();
        assert_eq!(info.max_transfer_blocks, (MAX_IO_BYTES / 512) as u32);
        assert!(info.provisioning.lbpme);
        assert_eq!(
            info.optimal_unmap_blocks, 128,
            "64 KiB chunks of 512-byte blocks"
        );
    }

    #[test]
    fn portal_group_tags_run_out_with_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open(dir.path()).unwrap();
        let build_text = |text: &str| {
            let cfg = crate::config::parse(text, "t").unwrap();
            build(&cfg, &ds, &[], OpenOptions { direct: false })
        };
        // Every tag written, then a group without one: verify refuses this; build must too.
        let mut text: String = (1..=65535u32)
            .map(|t| format!("portal-group p{t} {{ tag {t} }}\n"))
            .collect();
        text.push_str("portal-group x { listen 127.0.0.1:3999 }\n");
        let e = build_text(&text).unwrap_err().to_string();
        assert_eq!(
            e,
            "portal group x: no tag is left to give it (other groups hold every tag of 1..=65535)"
        );
        // Untagged groups take the lowest tags no group is written with, the implied default first.
        let r = build_text(
            "portal-group a { }\nportal-group b { tag 1 }\nportal-group c { }\n\
             target iqn.2000-01.com.x:t { }",
        )
        .unwrap();
        let tags: Vec<(&str, u16)> = r
            .portal_groups
            .iter()
            .map(|p| (p.name.as_str(), p.tag))
            .collect();
        assert_eq!(tags, [("default", 2), ("a", 3), ("b", 1), ("c", 4)]);
    }

    #[test]
    fn two_groups_resolving_to_one_address_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open(dir.path()).unwrap();
        let lo = [portal::InterfaceAddr {
            name: "lo".into(),
            addr: "127.0.0.1".parse().unwrap(),
            scope_id: 0,
        }];
        let build_text = |text: &str| {
            let cfg = crate::config::parse(text, "t").unwrap();
            build(&cfg, &ds, &lo, OpenOptions { direct: false })
        };
        let text = "portal-group a { listen lo:3999 }\nportal-group b { listen 127.0.0.1:3999 }\n\
                    target iqn.2000-01.com.x:t { portal-group a }\n\
                    target iqn.2000-01.com.x:u { portal-group b }";
        let e = build_text(text).unwrap_err().to_string();
        assert_eq!(
            e,
            "portal group b: listens on 127.0.0.1:3999, where portal group a listens too; vitd \
             would serve only one group on an address"
        );
        // A wildcard and an address of its family on one port: Linux listens on one alone.
        let e = build_text(
            "portal-group a { listen 0.0.0.0:3999 }\nportal-group b { listen lo:3999 }\n\
             target iqn.2000-01.com.x:t { portal-group a }\n\
             target iqn.2000-01.com.x:u { portal-group b }",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "portal group b: listens on 127.0.0.1:3999, and portal group a on 0.0.0.0:3999: a \
             wildcard and an address of its family cannot both be listened on with one port"
        );
        // Of other families, or other ports, they may.
        let r = build_text(
            "portal-group a { listen 0.0.0.0:3999\n listen [::]:3998 }\n\
             portal-group b { listen [::1]:3999\n listen 127.0.0.1:3998\n listen lo:3997 }\n\
             target iqn.2000-01.com.x:t { portal-group a }\n\
             target iqn.2000-01.com.x:u { portal-group b }",
        )
        .unwrap();
        assert_eq!(r.listen_addrs().len(), 5);
        // One group with both listens on its wildcard, which takes the other's connections.
        let r = build_text(
            "portal-group a { listen lo:3999\n listen 0.0.0.0:3999 }\n\
             target iqn.2000-01.com.x:t { portal-group a }",
        )
        .unwrap();
        assert_eq!(r.listen_addrs(), [("0.0.0.0:3999".parse().unwrap(), 0)]);
        // A group no target uses, or a foreign one, is not listened on: no conflict.
        let r = build_text(
            "portal-group a { listen lo:3999 }\nportal-group b { listen 127.0.0.1:3999 }\n\
             portal-group c { foreign\n listen 127.0.0.1:3999 }\n\
             target iqn.2000-01.com.x:t { portal-group a\n portal-group c }",
        )
        .unwrap();
        assert_eq!(r.listen_addrs(), [("127.0.0.1:3999".parse().unwrap(), 0)]);
        // One group naming one address twice listens there once.
        let r = build_text(
            "portal-group a { listen lo:3999\n listen 127.0.0.1:3999 }\n\
             target iqn.2000-01.com.x:t { portal-group a }",
        )
        .unwrap();
        assert_eq!(r.listen_addrs().len(), 1);
    }

    #[test]
    fn foreign_portal_groups_are_announced_not_listened_on() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open(dir.path()).unwrap();
        let text = "portal-group a { listen 127.0.0.1:3999 }\n\
                    portal-group far { foreign\n tag 9\n listen 10.9.9.9:3260\n listen [fd00::9]\n \
                    listen vmk7:3260\n listen 0.0.0.0:3261 }\n\
                    target iqn.2000-01.com.x:t { portal-group a\n portal-group far }";
        let cfg = crate::config::parse(text, "t").unwrap();
        let r = build(&cfg, &ds, &[], OpenOptions { direct: false }).unwrap();
        assert_eq!(r.listen_addrs(), [("127.0.0.1:3999".parse().unwrap(), 0)]);
        let entry = super::super::discovery::TargetEntry::of(&r.targets[0]);
        let answer = super::super::discovery::answer_text(
            b"SendTargets=All\0",
            &[entry],
            Some("127.0.0.1:3999".parse().unwrap()),
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(answer.text).unwrap(),
            "TargetName=iqn.2000-01.com.x:t\0TargetAddress=127.0.0.1:3999,1\0\
             TargetAddress=10.9.9.9:3260,9\0TargetAddress=[fd00::9]:3260,9\0"
        );
    }

    #[test]
    fn a_bare_ipv6_redirect_is_sent_in_brackets() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open(dir.path()).unwrap();
        let text = "portal-group a { listen 127.0.0.1:3999\n redirect 2001:db8::5 }\n\
                    portal-group b { listen 127.0.0.2:3999\n redirect [2001:db8::6]:3261 }\n\
                    target iqn.2000-01.com.x:t { portal-group a\n redirect fd00::9 }\n\
                    target iqn.2000-01.com.x:u { portal-group b\n redirect 10.1.1.1:3261 }";
        let cfg = crate::config::parse(text, "t").unwrap();
        let r = build(&cfg, &ds, &[], OpenOptions { direct: false }).unwrap();
        let pgs: Vec<_> = r
            .portal_groups
            .iter()
            .map(|p| p.redirect.as_deref())
            .collect();
        assert_eq!(pgs, [Some("[2001:db8::5]"), Some("[2001:db8::6]:3261")]);
        let ts: Vec<_> = r.targets.iter().map(|t| t.redirect.as_deref()).collect();
        assert_eq!(ts, [Some("[fd00::9]"), Some("10.1.1.1:3261")]);
    }

    #[test]
    fn two_luns_on_one_extent_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open(dir.path()).unwrap();
        ds.create_home_object(&crate::ctl::initial_config("127.0.0.1:3260"))
            .unwrap();
        let tdir = ds.create_target_dir("u").unwrap();
        let opts = vmdk::CreateOptions::default();
        let a = vmdk::create(&tdir, "a", 1 << 20, &opts).unwrap();
        std::fs::copy(&a, tdir.join("b.vmdk")).unwrap();
        let text = "target iqn.2000-01.com.x:t {\n lun 0 { path u/a.vmdk }\n}\n\
                    target iqn.2000-01.com.x:s {\n lun 3 { path u/b.vmdk }\n}";
        let cfg = crate::config::load(text, "v.conf").unwrap();
        let e = build(&cfg, &ds, &[], OpenOptions { direct: false }).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}:5:15: target iqn.2000-01.com.x:s LUN 3: {} is also a file of target \
                 iqn.2000-01.com.x:t LUN 0 (at 2:15); one disk as two LUNs would keep two sets \
                 of reservations",
                ds.config_path().display(),
                tdir.join("a-flat.vmdk").display()
            )
        );
    }

    /// A LUN is served offline only when its files fail it. A fault of vit.conf itself (a path
    /// that is no TARGET-UUID/FILE, a size or block size the
    /// descriptor contradicts) stops vitd with its place in vit.conf, as it did before offline
    /// LUNs: it was served offline, vitd starting as if the configuration were sound.
    #[test]
    fn configuration_faults_stop_vitd_and_only_file_faults_are_offline() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open(dir.path()).unwrap();
        ds.create_home_object(&crate::ctl::initial_config("127.0.0.1:3260"))
            .unwrap();
        let tdir = ds.create_target_dir("u").unwrap();
        vmdk::create(&tdir, "a", 1 << 20, &vmdk::CreateOptions::default()).unwrap();
        vmdk::create(&tdir, "odd", 1536, &vmdk::CreateOptions::default()).unwrap();
        let built = |lun: &str| {
            let text = format!("target iqn.2000-01.com.x:t {{\n lun 0 {lun}\n}}");
            let cfg = crate::config::load(&text, "v.conf").unwrap();
            build(&cfg, &ds, &[], OpenOptions { direct: false })
        };
        let conf = ds.config_path().display().to_string();
        for (lun, want) in [
            (
                "{ path a.vmdk }",
                "2:15: target iqn.2000-01.com.x:t LUN 0: path \"a.vmdk\" is not allowed: it must \
                 be TARGET-UUID/FILE.vmdk",
            ),
            (
                "{ path u/a.vmdk\n size 2M }",
                "3:7: target iqn.2000-01.com.x:t LUN 0: size 2097152 bytes disagrees with",
            ),
            (
                "{ path u/odd.vmdk\n blocksize 4096 }",
                "3:12: target iqn.2000-01.com.x:t LUN 0: size 1536 is not a multiple of the block \
                 size 4096",
            ),
        ] {
            let e = built(lun).map(|_| ()).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{conf}:{want}")), "{lun}: {e}");
        }
        // Files that fail it: offline, with the identity it has when served.
        let online = built("{ path u/a.vmdk }").unwrap();
        std::fs::remove_file(tdir.join("a-flat.vmdk")).unwrap();
        let offline = built("{ path u/a.vmdk }").unwrap();
        let (on, off) = (&online.targets[0].luns[0], &offline.targets[0].luns[0]);
        assert!(matches!(off.backing, Backing::Offline { .. }));
        assert_eq!((off.identity, &off.serial), (on.identity, &on.serial));
        // A descriptor that gives no sectors is a damaged file: offline, saying so.
        std::fs::write(
            tdir.join("z.vmdk"),
            "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
             createType=\"monolithicFlat\"\nRW 0 FLAT \"a-flat.vmdk\" 0\n",
        )
        .unwrap();
        let zero = built("{ path u/z.vmdk }").unwrap();
        match &zero.targets[0].luns[0].backing {
            Backing::Offline { reason } => assert!(reason.contains("0 sectors"), "{reason}"),
            _ => panic!("a descriptor of no sectors was served"),
        }
        let missing = built("{ path v/a.vmdk }").unwrap();
        assert!(matches!(
            missing.targets[0].luns[0].backing,
            Backing::Offline { .. }
        ));
    }

    #[test]
    fn stable_hash_does_not_change() {
        // LUN identities (NAA designators, serials) must survive restarts and rebuilds.
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
