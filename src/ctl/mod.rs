//! Management operations behind `vitctl` (and the daemon's embedded default datastore).
//!
//! Each operation validates all of its input before it changes anything, then holds the datastore's
//! config lock across the whole change (files and vit.conf) so concurrent `vitctl` runs serialize.
//! Order of effects: files that a new config entry needs are created before the config names them
//! (and removed again if the commit fails); files that a removed entry used are deleted after the
//! config stops naming them.

pub mod view;

use crate::config::{
    self, AuthGroup, AuthSettings, AuthType, Backend, Chap, ChapMutual, Config, InitiatorGroup,
    LunBody, LunRef, Named, Opt, PortalGroup, Pos, Target, TargetLun, TargetPortalGroup,
};
use crate::datastore::{Datastore, DatastoreError};
use crate::names;
use crate::vmdk;
pub use view::{HomeObjectView, InitiatorGroupView, LunView, TargetView};

/// The largest LUN id vitctl adds: vSAN's (its LUN ids are 0..=255, as esxcli's). vit.conf, in
/// ctl.conf's syntax, takes ctld's range (`config::MAX_LUN_ID`, 1023), so a hand-written LUN above
/// 255 is served and listed, but vitctl, modelling vSAN's management, makes none.
pub const MAX_LUN_ID: u64 = 255;
/// CHAP secret lengths that every common initiator (Windows's included) accepts.
pub const CHAP_SECRET_RECOMMENDED: std::ops::RangeInclusive<usize> = 12..=16;

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{0}")]
    Datastore(#[from] DatastoreError),
    #[error("{0}")]
    Vmdk(#[from] vmdk::VmdkError),
    #[error("{0}")]
    Input(String),
}

pub type Result<T, E = CtlError> = std::result::Result<T, E>;

fn input<T>(msg: impl Into<String>) -> Result<T> {
    Err(CtlError::Input(msg.into()))
}

/// How a target authenticates initiators.
#[derive(Clone, Debug, Default)]
pub struct AuthSpec {
    pub auth_type: Option<AuthType>,
    pub chap_user: Option<String>,
    pub chap_secret: Option<String>,
    pub mutual_user: Option<String>,
    pub mutual_secret: Option<String>,
}

impl AuthSpec {
    /// The credential flags given (`--chap-user` and the rest), by name.
    pub fn flags_given(&self) -> Vec<&'static str> {
        [
            ("--chap-user", &self.chap_user),
            ("--chap-secret", &self.chap_secret),
            ("--mutual-user", &self.mutual_user),
            ("--mutual-secret", &self.mutual_secret),
        ]
        .into_iter()
        .filter_map(|(flag, v)| v.as_ref().map(|_| flag))
        .collect()
    }

    /// These settings with `change` applied (`vitctl target set`): each value it gives replaces
    /// the current one. A new auth type drops the current credentials it has no use for (`none`
    /// and `deny` use none, `chap` not the mutual pair); one given with it is kept, and refused
    /// by the auth type's check.
    fn updated(&self, change: &AuthSpec) -> AuthSpec {
        let mut spec = self.clone();
        if let Some(t) = change.auth_type {
            spec.auth_type = Some(t);
            if matches!(t, AuthType::None | AuthType::Deny) {
                spec.chap_user = None;
                spec.chap_secret = None;
            }
            if t != AuthType::ChapMutual {
                spec.mutual_user = None;
                spec.mutual_secret = None;
            }
        }
        let fields = [
            (&mut spec.chap_user, &change.chap_user),
            (&mut spec.chap_secret, &change.chap_secret),
            (&mut spec.mutual_user, &change.mutual_user),
            (&mut spec.mutual_secret, &change.mutual_secret),
        ];
        for (to, from) in fields {
            if from.is_some() {
                to.clone_from(from);
            }
        }
        spec
    }
}

/// `vitctl target add`.
#[derive(Clone, Debug, Default)]
pub struct TargetSpec {
    pub alias: String,
    pub iqn: Option<String>,
    pub listen: Option<String>,
    pub auth: AuthSpec,
    pub initiator_group: Option<String>,
}

/// `vitctl target set`: every field left `None` stays as it is.
#[derive(Clone, Debug, Default)]
pub struct TargetChange {
    pub new_alias: Option<String>,
    pub iqn: Option<String>,
    pub listen: Option<String>,
    pub auth: AuthSpec,
    /// `Some(None)` removes the initiator group restriction.
    pub initiator_group: Option<Option<String>>,
}

/// `vitctl target lun set`: every field left `None` stays as it is.
#[derive(Clone, Debug, Default)]
pub struct LunChange {
    /// Grow to this size (a shrink is refused).
    pub size_bytes: Option<u64>,
    pub alias: Option<String>,
    /// Serve the LUN read-only (`option readonly on`).
    pub read_only: Option<bool>,
}

/// `vitctl target lun add`.
#[derive(Clone, Debug, Default)]
pub struct LunSpec {
    pub id: u64,
    pub size_bytes: u64,
    pub alias: Option<String>,
    pub preallocate: bool,
}

/// A handle on one datastore for management operations; collects warnings for the caller to show.
pub struct Ctl {
    pub ds: Datastore,
    pub warnings: Vec<String>,
}

/// Parses a size given on the command line: a number with a unit, K/M/G/T (powers of 1024, also
/// written KiB...) or B for bytes. The unit is required so that nobody has to guess.
pub fn parse_size_arg(s: &str) -> Result<u64> {
    let t = s.trim();
    if t.starts_with('-') {
        return input(format!("size {s:?} is negative"));
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_uppercase();
    let mult: u64 = match unit.as_str() {
        "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        "" => return input(format!("size {s:?} needs a unit, e.g. 512M or 10G")),
        _ => {
            return input(format!(
                "size {s:?} has an unknown unit (use B, K, M, G or T)"
            ));
        }
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| CtlError::Input(format!("size {s:?} is not a number")))?;
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| CtlError::Input(format!("size {s:?} is too large")))?;
    if bytes == 0 {
        return input(format!("size {s:?} is zero"));
    }
    if bytes % 512 != 0 {
        return input(format!("size {s:?} is not a multiple of 512 bytes"));
    }
    Ok(bytes)
}

/// The portal group name vSAN gives a `listen` value: `vmk0:3260` -> `pg-vmk0-3260`.
pub fn portal_group_name(listen: &str) -> String {
    match listen.rsplit_once(':') {
        Some((host, port)) => format!("pg-{host}-{port}"),
        None => format!("pg-{listen}-3260"),
    }
}

/// Checks a `--listen` value: `ADDR:PORT`, `[V6]:PORT` or `IFNAME:PORT`, port 1..=65535.
pub fn check_listen(listen: &str) -> Result<()> {
    let bad = |why: &str| {
        input(format!(
            "--listen {listen:?}: {why} (expected ADDR:PORT, [V6]:PORT or IFNAME:PORT)"
        ))
    };
    let Some((host, port)) = listen.rsplit_once(':') else {
        return bad("no port");
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return bad("port must be 1..65535"),
    }
    if host.is_empty() {
        return bad("no address or interface");
    }
    if let Some(inner) = host.strip_prefix('[') {
        let Some(v6) = inner.strip_suffix(']') else {
            return bad("unclosed [");
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return bad("not an IPv6 address");
        }
    } else if host.contains(':') {
        return bad("IPv6 addresses go in brackets");
    } else if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
    {
        return bad("not an address or interface name");
    }
    // What vit.conf's verifier will say of it (e.g. `1.2.3`, `999.1.1.1`: neither an IPv4
    // address nor a name), said of the flag rather than of a line of a file never written.
    if let Err(why) = config::ListenAddr::parse(listen) {
        return bad(&why);
    }
    Ok(())
}

fn check_word(what: &str, s: &str) -> Result<()> {
    if s.is_empty()
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_@:".contains(c))
    {
        return input(format!(
            "{what} {s:?} may use only letters, digits and . - _ @ :"
        ));
    }
    Ok(())
}

fn check_value(what: &str, s: &str) -> Result<()> {
    if !config::is_printable_value(s) {
        return input(format!(
            "{what} {s:?} cannot be stored (empty, or has a quote or control character)"
        ));
    }
    Ok(())
}

/// A target alias: storable, and short enough to be sent as TargetAlias.
fn check_alias(what: &str, s: &str) -> Result<()> {
    check_value(what, s)?;
    if s.len() > config::MAX_ALIAS_BYTES {
        return input(format!(
            "{what} has {} bytes; at most {} (it is sent to initiators as TargetAlias)",
            s.len(),
            config::MAX_ALIAS_BYTES
        ));
    }
    Ok(())
}

fn check_iqn(s: &str) -> Result<()> {
    names::validate_iscsi_name(s).map_err(|why| {
        // Some reasons already say that the name is none (and quote it).
        CtlError::Input(if why.contains("is not an iSCSI name") {
            why
        } else {
            format!("{s:?} is not an iSCSI name: {why}")
        })
    })
}

/// The initial configuration of a new home object.
pub fn initial_config(listen: &str) -> Config {
    Config {
        generation: Some(1),
        auth_groups: vec![AuthGroup {
            name: "default".into(),
            pos: Pos::default(),
            auth: AuthSettings {
                auth_type: Some((AuthType::None, Pos::default())),
                ..Default::default()
            },
        }],
        portal_groups: vec![PortalGroup {
            name: "default".into(),
            discovery_auth_group: Some(Named::new("no-authentication")),
            listen: vec![Named::new(listen)],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn find_target<'a>(cfg: &'a Config, name: &str) -> Result<&'a Target> {
    Ok(&cfg.targets[target_index(cfg, name)?])
}

/// The one target `name` names (alias or IQN); a name that more than one answers to is an error.
fn target_index(cfg: &Config, name: &str) -> Result<usize> {
    let mut found = cfg
        .targets
        .iter()
        .enumerate()
        .filter(|(_, t)| t.answers_to(name));
    match (found.next(), found.next()) {
        (Some((i, _)), None) => Ok(i),
        (None, _) => input(format!("no target with alias or IQN {name:?}")),
        (Some((_, a)), Some((_, b))) => input(format!(
            "{name:?} names more than one target ({} and {}): fix vit.conf",
            a.name, b.name
        )),
    }
}

/// Refuses `name` as the alias (`as_name` false) or IQN of target `me` (`None`: a new one) when
/// another target answers to it.
fn check_name_free(cfg: &Config, me: Option<usize>, name: &str, as_name: bool) -> Result<()> {
    let other = cfg
        .targets
        .iter()
        .enumerate()
        .filter(|(j, _)| Some(*j) != me);
    for (_, t) in other {
        if let Some(taken) = t.name_clash(name, as_name) {
            let what = if as_name { "IQN" } else { "alias" };
            let whose = if taken == t.name { "IQN" } else { "alias" };
            return input(format!(
                "a target with the {whose} {taken:?} exists ({}): the {what} {name:?} would name both",
                t.name
            ));
        }
    }
    Ok(())
}

/// The authentication target `t` is served with, as vitd resolves it: its auth-group (one
/// defined, else ctld's predefined `no-authentication`, or `default` and `no-access`, which
/// deny), else its inline statements, else the `default` group. The auth type is always set:
/// the one written, else the one vitd takes from the rest (see [`effective_auth_type`]).
pub fn effective_auth(cfg: &Config, t: &Target) -> AuthSettings {
    let name = match &t.auth_group {
        Some(g) => g.name.as_str(),
        None if !t.auth.is_empty() => return with_effective_type(cfg, t.auth.clone()),
        None => "default",
    };
    if let Some(g) = cfg.auth_groups.iter().find(|g| g.name == name) {
        return with_effective_type(cfg, g.auth.clone());
    }
    let ty = match name {
        "no-authentication" => AuthType::None,
        _ => AuthType::Deny,
    };
    AuthSettings {
        auth_type: Some((ty, Pos::default())),
        ..Default::default()
    }
}

fn with_effective_type(cfg: &Config, mut auth: AuthSettings) -> AuthSettings {
    auth.auth_type = Some((effective_auth_type(cfg, &auth), Pos::default()));
    auth
}

/// The auth type vitd serves settings with: the one written, else chap-mutual or chap when
/// there are such credentials, else none when initiators (by name, through a group, or by
/// address) are restricted, else deny (as ctld).
pub fn effective_auth_type(cfg: &Config, auth: &AuthSettings) -> AuthType {
    let group_members = auth.initiator_groups.iter().any(|g| {
        cfg.initiator_groups
            .iter()
            .any(|x| x.name == g.name && !x.initiators.is_empty())
    });
    match auth.auth_type {
        Some((t, _)) => t,
        None if !auth.chap_mutual.is_empty() => AuthType::ChapMutual,
        None if !auth.chap.is_empty() => AuthType::Chap,
        None if !auth.initiator_names.is_empty()
            || !auth.initiator_portals.is_empty()
            || group_members =>
        {
            AuthType::None
        }
        None => AuthType::Deny,
    }
}

fn target_uuid(t: &Target) -> Result<String> {
    t.uuid().map(str::to_string).ok_or_else(|| {
        CtlError::Input(format!(
            "target {} has no `option uuid`: not managed by vitctl",
            t.name
        ))
    })
}

impl Ctl {
    pub fn new(ds: Datastore) -> Self {
        Ctl {
            ds,
            warnings: Vec::new(),
        }
    }

    /// Runs `change` on the current config under the lock, then commits it. When `change` or the
    /// commit fails, nothing is written and the files `change` made (listed in `undo`) are removed.
    fn update<T>(
        &mut self,
        change: impl FnOnce(&mut Self, &mut Config, &mut Vec<Undo>) -> Result<T>,
    ) -> Result<T> {
        let lock = self.ds.lock()?;
        let mut cfg = self.ds.load_config()?;
        let mut undo = Vec::new();
        let result = change(self, &mut cfg, &mut undo).and_then(|out| {
            self.ds
                .commit(&lock, &mut cfg)
                .map(|_| out)
                .map_err(CtlError::from)
        });
        if result.is_ok() && self.ds.served() {
            self.warnings.push(
                "vitd is serving this datastore and reads vit.conf only when it starts: \
                 restart vitd for this change to take effect (until then initiators see the \
                 targets and LUNs it started with, a LUN removed here served from its deleted \
                 files)"
                    .to_string(),
            );
        }
        if result.is_err() {
            for u in undo.into_iter().rev() {
                if let Err(e) = u.run(&self.ds) {
                    self.warnings
                        .push(format!("could not take back a change to the files: {e}"));
                }
            }
        }
        result
    }

    pub fn load(&self) -> Result<Config> {
        Ok(self.ds.load_config()?)
    }

    fn auth_settings(
        &mut self,
        spec: &AuthSpec,
        initiator_group: Option<&str>,
        cfg: &Config,
    ) -> Result<AuthSettings> {
        let auth_type = spec.auth_type.unwrap_or(AuthType::None);
        let mut auth = AuthSettings {
            auth_type: Some((auth_type, Pos::default())),
            ..Default::default()
        };
        let has_mutual = spec.mutual_user.is_some() || spec.mutual_secret.is_some();
        match auth_type {
            AuthType::None | AuthType::Deny => {
                let flags = spec.flags_given();
                if !flags.is_empty() {
                    return input(format!(
                        "{} need --auth-type chap or chap-mutual; the auth type is {}",
                        flags.join(", "),
                        auth_type.as_str()
                    ));
                }
            }
            AuthType::Chap | AuthType::ChapMutual => {
                let (Some(user), Some(secret)) = (&spec.chap_user, &spec.chap_secret) else {
                    return input(format!(
                        "--auth-type {} needs --chap-user and --chap-secret",
                        auth_type.as_str()
                    ));
                };
                self.check_secret("--chap-user", user, "--chap-secret", secret)?;
                if auth_type == AuthType::Chap {
                    if has_mutual {
                        return input(
                            "--mutual-user/--mutual-secret need --auth-type chap-mutual; the auth type is chap",
                        );
                    }
                    auth.chap.push(Chap {
                        user: user.clone(),
                        secret: secret.clone(),
                        pos: Pos::default(),
                    });
                } else {
                    let (Some(muser), Some(msecret)) = (&spec.mutual_user, &spec.mutual_secret)
                    else {
                        return input(
                            "--auth-type chap-mutual needs --mutual-user and --mutual-secret",
                        );
                    };
                    self.check_secret("--mutual-user", muser, "--mutual-secret", msecret)?;
                    if msecret == secret {
                        return input("the mutual CHAP secret must differ from the CHAP secret");
                    }
                    auth.chap_mutual.push(ChapMutual {
                        user: user.clone(),
                        secret: secret.clone(),
                        mutual_user: muser.clone(),
                        mutual_secret: msecret.clone(),
                        pos: Pos::default(),
                    });
                }
            }
        }
        if let Some(group) = initiator_group {
            if !cfg.initiator_groups.iter().any(|g| g.name == group) {
                return input(format!("no initiator group {group:?}"));
            }
            auth.initiator_groups.push(Named::new(group));
        }
        Ok(auth)
    }

    fn check_secret(
        &mut self,
        user_flag: &str,
        user: &str,
        secret_flag: &str,
        secret: &str,
    ) -> Result<()> {
        if user.is_empty() {
            return input(format!("{user_flag} is empty"));
        }
        check_value(user_flag, user)?;
        if secret.is_empty() {
            return input(format!("{secret_flag} is empty"));
        }
        if !config::is_printable_value(secret) {
            return input(format!(
                "{secret_flag} cannot be stored (it has a quote or control character)"
            ));
        }
        // In bytes, as the secret goes on the wire and as vitd (and ctld) count it at start.
        if !CHAP_SECRET_RECOMMENDED.contains(&secret.len()) {
            self.warnings.push(format!(
                "{secret_flag} is {} bytes; many initiators (Windows among them) accept only 12 to 16",
                secret.len()
            ));
        }
        Ok(())
    }

    /// The portal group for `listen`: the one that already listens there (a second group on
    /// one address would not be served), else `pg-HOST-PORT`, made when missing.
    fn portal_group_for(cfg: &mut Config, listen: Option<&str>) -> Result<String> {
        let Some(listen) = listen else {
            return Ok("default".into());
        };
        check_listen(listen)?;
        if let Ok(addr) = config::ListenAddr::parse(listen)
            && let Some(pg) = cfg.portal_groups.iter().find(|p| {
                !p.foreign
                    && p.listen
                        .iter()
                        .any(|l| config::ListenAddr::parse(&l.name).is_ok_and(|a| a == addr))
            })
        {
            return Ok(pg.name.clone());
        }
        let name = portal_group_name(listen);
        if let Some(pg) = cfg.portal_groups.iter().find(|p| p.name == name) {
            if !pg.listen.iter().any(|l| l.name == listen) {
                return input(format!(
                    "portal group {name} exists and does not listen on {listen}"
                ));
            }
        } else {
            cfg.portal_groups.push(PortalGroup {
                name: name.clone(),
                discovery_auth_group: Some(Named::new("no-authentication")),
                listen: vec![Named::new(listen)],
                ..Default::default()
            });
        }
        Ok(name)
    }

    /// `vitctl target add`: a target with its own auth-group (named by its uuid, as vSAN does) and
    /// its directory and link on the datastore.
    pub fn target_add(&mut self, spec: &TargetSpec) -> Result<TargetView> {
        check_alias("--alias", &spec.alias)?;
        if let Some(iqn) = &spec.iqn {
            check_iqn(iqn)?;
        }
        self.update(|me, cfg, undo| {
            check_name_free(cfg, None, &spec.alias, false)?;
            let uuid = uuid::Uuid::new_v4().to_string();
            let iqn = spec
                .iqn
                .clone()
                .unwrap_or_else(|| names::generate_iqn(&uuid));
            check_name_free(cfg, None, &iqn, true)?;
            let auth = me.auth_settings(&spec.auth, spec.initiator_group.as_deref(), cfg)?;
            let pg = Self::portal_group_for(cfg, spec.listen.as_deref())?;
            cfg.auth_groups.push(AuthGroup {
                name: uuid.clone(),
                pos: Pos::default(),
                auth,
            });
            cfg.targets.push(Target {
                name: iqn,
                pos: Pos::default(),
                alias: Some(Named::new(spec.alias.clone())),
                auth_group: Some(Named::new(uuid.clone())),
                auth: AuthSettings::default(),
                portal_groups: vec![TargetPortalGroup {
                    portal_group: Named::new(pg),
                    auth_group: None,
                }],
                ports: vec![],
                redirect: None,
                options: vec![opt("uuid", &uuid)],
                luns: vec![],
            });
            me.ds.create_target_dir(&uuid)?;
            undo.push(Undo::TargetDir(uuid.clone()));
            Ok(uuid)
        })
        .and_then(|_| {
            let cfg = self.load()?;
            Ok(TargetView::new(&cfg, find_target(&cfg, &spec.alias)?))
        })
    }

    /// `vitctl target set`.
    pub fn target_set(&mut self, name: &str, change: &TargetChange) -> Result<TargetView> {
        if let Some(a) = &change.new_alias {
            check_alias("--new-alias", a)?;
        }
        if let Some(iqn) = &change.iqn {
            check_iqn(iqn)?;
        }
        let new_name = self.update(|me, cfg, _undo| {
            let i = target_index(cfg, name)?;
            if let Some(a) = &change.new_alias {
                check_name_free(cfg, Some(i), a, false)?;
                cfg.targets[i].alias = Some(Named::new(a.clone()));
            }
            if let Some(iqn) = &change.iqn {
                check_name_free(cfg, Some(i), iqn, true)?;
                cfg.targets[i].name = iqn.clone();
            }
            if change.listen.is_some() {
                let pg = Self::portal_group_for(cfg, change.listen.as_deref())?;
                // A portal group's own auth-group (hand-written: `portal-group NAME AUTH-GROUP`)
                // governs logins through it: kept where the target stays in that group, and
                // never dropped silently with a group it leaves (its logins would fall back to
                // the target's own auth-group, perhaps a weaker one).
                let old = &cfg.targets[i].portal_groups;
                if let Some(p) = old
                    .iter()
                    .find(|p| p.portal_group.name != pg && p.auth_group.is_some())
                {
                    return input(format!(
                        "target {name} is in portal group {} with its own auth-group {}, which \
                         --listen would drop; edit vit.conf, or remove that auth-group first",
                        p.portal_group.name,
                        p.auth_group.as_ref().map_or("", |g| g.name.as_str()),
                    ));
                }
                let auth_group = old
                    .iter()
                    .find(|p| p.portal_group.name == pg)
                    .and_then(|p| p.auth_group.clone());
                cfg.targets[i].portal_groups = vec![TargetPortalGroup {
                    portal_group: Named::new(pg),
                    auth_group,
                }];
            }
            let auth_changed = change.auth.auth_type.is_some()
                || !change.auth.flags_given().is_empty()
                || change.initiator_group.is_some();
            if auth_changed {
                let uuid = target_uuid(&cfg.targets[i])?;
                // What the target is served with now (its own group, another, a predefined one
                // or inline statements): what the change does not name is kept.
                let current = effective_auth(cfg, &cfg.targets[i]);
                let group = change.initiator_group.clone().flatten();
                let spec = spec_of(&current).updated(&change.auth);
                let mut auth = me.auth_settings(&spec, group.as_deref(), cfg)?;
                if change.initiator_group.is_none() {
                    auth.initiator_groups = current.initiator_groups.clone();
                }
                auth.initiator_names = current.initiator_names.clone();
                auth.initiator_portals = current.initiator_portals.clone();
                match cfg.auth_groups.iter_mut().find(|g| g.name == uuid) {
                    Some(g) => g.auth = auth,
                    None => cfg.auth_groups.push(AuthGroup {
                        name: uuid.clone(),
                        pos: Pos::default(),
                        auth,
                    }),
                }
                cfg.targets[i].auth_group = Some(Named::new(uuid));
                cfg.targets[i].auth = AuthSettings::default();
            }
            Ok(cfg.targets[i].name.clone())
        })?;
        let cfg = self.load()?;
        Ok(TargetView::new(&cfg, find_target(&cfg, &new_name)?))
    }

    /// `vitctl target remove`: the target, its auth-group, its LUNs' files and its directory
    /// (files and the directory that LUNs left in vit.conf still use are kept, with a warning).
    pub fn target_remove(&mut self, name: &str) -> Result<TargetView> {
        let (view, uuid, luns, rules) = self.update(|me, cfg, _undo| {
            let i = target_index(cfg, name)?;
            let view = TargetView::new(cfg, &cfg.targets[i]);
            let target = cfg.targets.remove(i);
            let uuid = target.uuid().map(str::to_string);
            let luns: Vec<String> = target
                .luns
                .iter()
                .filter_map(|l| match &l.lun {
                    LunRef::Inline(b) => b.path.as_ref().map(|p| p.name.clone()),
                    LunRef::Named(_) => None,
                })
                .collect();
            if let Some(u) = &uuid {
                let still_used = cfg
                    .targets
                    .iter()
                    .any(|t| t.auth_group.as_ref().is_some_and(|g| &g.name == u));
                if !still_used {
                    cfg.auth_groups.retain(|g| &g.name != u);
                }
            }
            drop_unused_portal_groups(cfg);
            let rules = Deletable::new(&me.ds, cfg, uuid.as_deref());
            Ok((view, uuid, luns, rules))
        })?;
        // The config no longer names these files: delete them, reporting (not failing on) leftovers.
        for path in luns {
            self.remove_lun_files(&path, &rules);
        }
        if let Some(u) = uuid {
            if let Some(user) = &rules.dir_user {
                self.warnings.push(format!(
                    "kept target directory {}: {user} uses files in it",
                    self.ds.target_dir(&u).display()
                ));
            } else if let Err(e) = self.ds.remove_target_dir(&u) {
                self.warnings
                    .push(format!("left behind target directory: {e}"));
            }
        }
        Ok(view)
    }

    /// Deletes the files of the LUN at `path` that `rules` allow, warning of each one kept.
    fn remove_lun_files(&mut self, path: &str, rules: &Deletable) {
        let removed = self.ds.resolve_lun_path(path).and_then(|descriptor| {
            if !descriptor.exists() {
                // Its saved reservations may outlive it: they go too.
                let pr = vmdk::reservations_path(&descriptor);
                return match std::fs::remove_file(&pr) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(vmdk::VmdkError::io(&pr, "remove", e).into())
                    }
                    _ => Ok(Vec::new()),
                };
            }
            Ok(vmdk::remove_except(&descriptor, &|f| {
                rules.why_keep(f).is_some()
            })?)
        });
        match removed {
            Ok(kept) => {
                for f in kept {
                    let why = rules.why_keep(&f).unwrap_or_default();
                    self.warnings.push(format!("kept {}: {why}", f.display()));
                }
            }
            Err(e) => self.warnings.push(format!("left behind LUN {path}: {e}")),
        }
    }

    /// `vitctl target lun add`: creates the descriptor and flat extent, then names them in vit.conf.
    pub fn lun_add(&mut self, target: &str, spec: &LunSpec) -> Result<LunView> {
        if spec.id > MAX_LUN_ID {
            return input(format!("LUN id {} is outside 0..={MAX_LUN_ID}", spec.id));
        }
        if let Some(a) = &spec.alias {
            check_value("--alias", a)?;
        }
        let name = self.update(|me, cfg, undo| {
            let i = target_index(cfg, target)?;
            let t = &cfg.targets[i];
            if t.luns.iter().any(|l| l.id == spec.id) {
                return input(format!(
                    "target {} already has LUN {}",
                    display_name(t),
                    spec.id
                ));
            }
            let uuid = target_uuid(t)?;
            let lun_uuid = uuid::Uuid::new_v4().to_string();
            let path = format!("{uuid}/{lun_uuid}.vmdk");
            let dir = me.ds.target_dir(&uuid);
            me.ds.resolve_lun_path(&path)?;
            let opts = vmdk::CreateOptions {
                preallocate: spec.preallocate,
                split_2gb: false,
            };
            let descriptor = vmdk::create(&dir, &lun_uuid, spec.size_bytes, &opts)?;
            undo.push(Undo::Lun(descriptor));
            let mut options = Vec::new();
            if let Some(a) = &spec.alias {
                options.push(opt("lun-alias", a));
            }
            cfg.targets[i].luns.push(TargetLun {
                id: spec.id,
                pos: Pos::default(),
                lun: LunRef::Inline(LunBody {
                    backend: Some((Backend::Vmdk, Pos::default())),
                    path: Some(Named::new(path)),
                    size: Some((spec.size_bytes, Pos::default())),
                    options,
                    ..Default::default()
                }),
            });
            cfg.targets[i].luns.sort_by_key(|l| l.id);
            Ok(cfg.targets[i].name.clone())
        })?;
        self.lun_get(&name, spec.id)
    }

    pub fn lun_get(&self, target: &str, id: u64) -> Result<LunView> {
        let cfg = self.load()?;
        let t = find_target(&cfg, target)?;
        let l = t.luns.iter().find(|l| l.id == id).ok_or_else(|| {
            CtlError::Input(format!("target {} has no LUN {id}", display_name(t)))
        })?;
        Ok(LunView::new(&cfg, t, l, &self.ds))
    }

    pub fn lun_list(&self, target: &str) -> Result<Vec<LunView>> {
        let cfg = self.load()?;
        let t = find_target(&cfg, target)?;
        Ok(t.luns
            .iter()
            .map(|l| LunView::new(&cfg, t, l, &self.ds))
            .collect())
    }

    /// `vitctl target lun set`: grows (never shrinks) and renames.
    pub fn lun_set(&mut self, target: &str, id: u64, change: &LunChange) -> Result<LunView> {
        let (size, alias) = (change.size_bytes, change.alias.as_deref());
        if let Some(a) = alias {
            check_value("--alias", a)?;
        }
        let name = self.update(|me, cfg, undo| {
            let i = target_index(cfg, target)?;
            let tname = display_name(&cfg.targets[i]);
            let Some(l) = cfg.targets[i].luns.iter_mut().find(|l| l.id == id) else {
                return input(format!("target {tname} has no LUN {id}"));
            };
            let LunRef::Inline(body) = &mut l.lun else {
                return input(format!("LUN {id} of target {tname} is a shared `lun` section: edit vit.conf"));
            };
            if let Some(new_size) = size {
                let path = body.path.as_ref().ok_or_else(|| CtlError::Input(format!("LUN {id} has no path")))?;
                let descriptor = me.ds.resolve_lun_path(&path.name)?;
                let current = vmdk::load(&descriptor)?.capacity_bytes();
                if new_size < current {
                    return input(format!(
                        "LUN {id} is {current} bytes; shrinking to {new_size} bytes is not supported"
                    ));
                }
                // Grown before the commit (vit.conf never names a size the files lack); taken
                // back if the commit fails.
                undo.push(Undo::Files(vmdk::Snapshot::take(&descriptor)?));
                vmdk::grow(&descriptor, new_size, false)?;
                body.size = Some((new_size, Pos::default()));
            }
            if let Some(a) = alias {
                body.options.retain(|o| o.name != "lun-alias");
                body.options.push(opt("lun-alias", a));
            }
            if let Some(ro) = change.read_only {
                // ctl.conf's LUN option: `option readonly on`.
                body.options.retain(|o| o.name != "readonly");
                if ro {
                    body.options.push(opt("readonly", "on"));
                }
            }
            Ok(cfg.targets[i].name.clone())
        })?;
        self.lun_get(&name, id)
    }

    /// `vitctl target lun remove`: drops the LUN from vit.conf, then deletes its files.
    pub fn lun_remove(&mut self, target: &str, id: u64) -> Result<LunView> {
        let (view, path, rules) = self.update(|me, cfg, _undo| {
            let i = target_index(cfg, target)?;
            let t = &cfg.targets[i];
            let Some(j) = t.luns.iter().position(|l| l.id == id) else {
                return input(format!("target {} has no LUN {id}", display_name(t)));
            };
            let view = LunView::new(cfg, t, &t.luns[j], &me.ds);
            let uuid = t.uuid().map(str::to_string);
            let removed = cfg.targets[i].luns.remove(j);
            let path = match removed.lun {
                LunRef::Inline(b) => b.path.map(|p| p.name),
                LunRef::Named(_) => None,
            };
            let rules = Deletable::new(&me.ds, cfg, uuid.as_deref());
            Ok((view, path, rules))
        })?;
        if let Some(p) = path {
            self.remove_lun_files(&p, &rules);
        }
        Ok(view)
    }

    pub fn group_add(&mut self, name: &str, initiators: &[String]) -> Result<InitiatorGroupView> {
        check_word("initiator group name", name)?;
        for i in initiators {
            check_iqn(i)?;
        }
        self.update(|_me, cfg, _undo| {
            if cfg.initiator_groups.iter().any(|g| g.name == name) {
                return input(format!("initiator group {name:?} exists"));
            }
            let mut group = InitiatorGroup {
                name: name.into(),
                pos: Pos::default(),
                initiators: vec![],
            };
            add_initiators(&mut group, initiators)?;
            cfg.initiator_groups.push(group);
            Ok(())
        })?;
        self.group_get(name)
    }

    pub fn group_get(&self, name: &str) -> Result<InitiatorGroupView> {
        let cfg = self.load()?;
        let g = find_group(&cfg, name)?;
        Ok(InitiatorGroupView::new(g))
    }

    pub fn group_list(&self) -> Result<Vec<InitiatorGroupView>> {
        Ok(self
            .load()?
            .initiator_groups
            .iter()
            .map(InitiatorGroupView::new)
            .collect())
    }

    /// Removes an initiator group no auth-group names.
    pub fn group_remove(&mut self, name: &str) -> Result<InitiatorGroupView> {
        self.update(|_me, cfg, _undo| {
            let view = InitiatorGroupView::new(find_group(cfg, name)?);
            let users: Vec<String> = cfg
                .auth_groups
                .iter()
                .filter(|a| a.auth.initiator_groups.iter().any(|g| g.name == name))
                .map(|a| users_of_auth_group(cfg, &a.name))
                .chain(
                    cfg.targets
                        .iter()
                        .filter(|t| t.auth.initiator_groups.iter().any(|g| g.name == name))
                        .map(display_name),
                )
                .collect();
            if !users.is_empty() {
                return input(format!(
                    "initiator group {name:?} is in use by {}",
                    users.join(", ")
                ));
            }
            cfg.initiator_groups.retain(|g| g.name != name);
            Ok(view)
        })
    }

    /// Adds (`add = true`) or removes initiators of a group.
    pub fn group_initiators(
        &mut self,
        name: &str,
        initiators: &[String],
        add: bool,
    ) -> Result<InitiatorGroupView> {
        if initiators.is_empty() {
            return input("name at least one initiator");
        }
        for i in initiators {
            check_iqn(i)?;
        }
        self.update(|_me, cfg, _undo| {
            let g = cfg
                .initiator_groups
                .iter_mut()
                .find(|g| g.name == name)
                .ok_or_else(|| CtlError::Input(format!("no initiator group {name:?}")))?;
            if add {
                add_initiators(g, initiators)
            } else {
                for i in initiators {
                    // iSCSI names compare in any case (as vit.conf's verifier and vitd do).
                    let found = g
                        .initiators
                        .iter()
                        .position(|x| x.name.eq_ignore_ascii_case(i));
                    let Some(k) = found else {
                        return input(format!("{i} is not in initiator group {name:?}"));
                    };
                    g.initiators.remove(k);
                }
                Ok(())
            }
        })?;
        self.group_get(name)
    }

    pub fn target_list(&self) -> Result<Vec<TargetView>> {
        let cfg = self.load()?;
        Ok(cfg
            .targets
            .iter()
            .map(|t| TargetView::new(&cfg, t))
            .collect())
    }

    pub fn target_get(&self, name: &str) -> Result<TargetView> {
        let cfg = self.load()?;
        Ok(TargetView::new(&cfg, find_target(&cfg, name)?))
    }

    pub fn home_object(&self) -> Result<HomeObjectView> {
        let cfg = self.load()?;
        Ok(HomeObjectView::new(&self.ds, &cfg))
    }
}

/// Which files of a removed LUN may be deleted: only those under the removed LUN's target's own
/// directory (`<datastore>/<uuid>/`) that no LUN left in vit.conf is made of.
struct Deletable {
    own_dir: Option<std::path::PathBuf>,
    /// The files LUNs left in vit.conf are made of, with whose they are.
    in_use: std::collections::HashMap<std::path::PathBuf, String>,
    /// Directories holding a descriptor that could not be read (its extents, which lie beside
    /// it, are unknown), with whose it is.
    unknown: std::collections::HashMap<std::path::PathBuf, String>,
    /// A LUN left in vit.conf with files in `own_dir`.
    dir_user: Option<String>,
}

impl Deletable {
    /// The rules for a removal that leaves `cfg`, from a target with `uuid`.
    fn new(ds: &Datastore, cfg: &Config, uuid: Option<&str>) -> Self {
        let mut rules = Deletable {
            own_dir: uuid.map(|u| ds.target_dir(u)),
            in_use: Default::default(),
            unknown: Default::default(),
            dir_user: None,
        };
        let target_luns = cfg.targets.iter().flat_map(|t| {
            t.luns.iter().filter_map(move |l| {
                let body = crate::datastore::lun_body(cfg, &l.lun)?;
                Some((format!("target {} LUN {}", t.name, l.id), body))
            })
        });
        let global_luns = cfg
            .luns
            .iter()
            .map(|l| (format!("lun {} of vit.conf", l.name), &l.body));
        for (owner, body) in target_luns.chain(global_luns) {
            let Some(path) = &body.path else { continue };
            let lexical = ds.root().join(&path.name);
            if rules
                .own_dir
                .as_ref()
                .is_some_and(|d| lexical.starts_with(d))
            {
                rules.dir_user.get_or_insert_with(|| owner.clone());
            }
            match ds.lun_files(&path.name) {
                Ok(files) => {
                    for f in files {
                        rules.in_use.entry(f).or_insert_with(|| owner.clone());
                    }
                }
                Err(_) => {
                    let dir = crate::fsutil::parent_dir(&lexical).to_path_buf();
                    rules.unknown.entry(dir).or_insert(owner);
                }
            }
        }
        rules
    }

    /// Why `file` must be kept, or `None` when it may be deleted.
    fn why_keep(&self, file: &std::path::Path) -> Option<String> {
        if !self.own_dir.as_ref().is_some_and(|d| file.starts_with(d)) {
            return Some(match &self.own_dir {
                Some(d) => format!("it is outside the target's directory {}", d.display()),
                None => "the target has no `option uuid`, so no directory of its own".into(),
            });
        }
        if let Some(owner) = self.in_use.get(file) {
            return Some(format!("{owner} uses it"));
        }
        let dir = crate::fsutil::parent_dir(file);
        self.unknown.get(dir).map(|owner| {
            format!(
                "the descriptor of {owner} beside it could not be read, so what it uses is unknown"
            )
        })
    }
}

/// A file-system effect to take back when a change does not commit.
enum Undo {
    Lun(std::path::PathBuf),
    TargetDir(String),
    /// A LUN's files as they were before a change to them.
    Files(vmdk::Snapshot),
}

impl Undo {
    fn run(self, ds: &Datastore) -> Result<()> {
        match self {
            Undo::Lun(descriptor) => Ok(vmdk::remove(&descriptor)?),
            Undo::TargetDir(uuid) => Ok(ds.remove_target_dir(&uuid)?),
            Undo::Files(snapshot) => Ok(snapshot.restore()?),
        }
    }
}

fn opt(name: &str, value: &str) -> Opt {
    Opt {
        name: name.into(),
        value: value.into(),
        pos: Pos::default(),
    }
}

fn display_name(t: &Target) -> String {
    t.alias
        .as_ref()
        .map_or_else(|| t.name.clone(), |a| a.name.clone())
}

fn users_of_auth_group(cfg: &Config, group: &str) -> String {
    let targets: Vec<String> = cfg
        .targets
        .iter()
        .filter(|t| t.auth_group.as_ref().is_some_and(|g| g.name == group))
        .map(display_name)
        .collect();
    if targets.is_empty() {
        format!("auth-group {group}")
    } else {
        format!("target {}", targets.join(", target "))
    }
}

fn find_group<'a>(cfg: &'a Config, name: &str) -> Result<&'a InitiatorGroup> {
    cfg.initiator_groups
        .iter()
        .find(|g| g.name == name)
        .ok_or_else(|| CtlError::Input(format!("no initiator group {name:?}")))
}

fn add_initiators(group: &mut InitiatorGroup, initiators: &[String]) -> Result<()> {
    for i in initiators {
        if group
            .initiators
            .iter()
            .any(|x| x.name.eq_ignore_ascii_case(i))
        {
            return input(format!(
                "{i} is already in initiator group {:?}",
                group.name
            ));
        }
        group.initiators.push(Named::new(i.clone()));
    }
    Ok(())
}

/// The CHAP settings an auth-group holds, as a spec (for `target set` changing only the group).
fn spec_of(auth: &AuthSettings) -> AuthSpec {
    let mut spec = AuthSpec {
        auth_type: auth.auth_type.map(|(t, _)| t),
        ..Default::default()
    };
    if let Some(c) = auth.chap.first() {
        spec.chap_user = Some(c.user.clone());
        spec.chap_secret = Some(c.secret.clone());
    }
    if let Some(c) = auth.chap_mutual.first() {
        spec.chap_user = Some(c.user.clone());
        spec.chap_secret = Some(c.secret.clone());
        spec.mutual_user = Some(c.mutual_user.clone());
        spec.mutual_secret = Some(c.mutual_secret.clone());
    }
    spec
}

/// Removes `pg-*` portal groups (the ones vitctl makes) that no target uses any more.
fn drop_unused_portal_groups(cfg: &mut Config) {
    let used: Vec<String> = cfg
        .targets
        .iter()
        .flat_map(|t| t.portal_groups.iter().map(|p| p.portal_group.name.clone()))
        .collect();
    cfg.portal_groups
        .retain(|p| !p.name.starts_with("pg-") || used.contains(&p.name));
}
