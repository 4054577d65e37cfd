//! What `vitctl` prints: one view struct per object, serialized to JSON with stable field names
//! (documented in the README) or rendered as a table.

use crate::config::{Config, InitiatorGroup, LunRef, Target, TargetLun};
use crate::datastore::{Datastore, lun_body};
use serde::Serialize;

/// `vitctl homeobject get`.
#[derive(Debug, Serialize)]
pub struct HomeObjectView {
    pub datastore: String,
    pub config: String,
    pub generation: u64,
    pub targets: usize,
    pub luns: usize,
    pub initiator_groups: usize,
}

impl HomeObjectView {
    pub fn new(ds: &Datastore, cfg: &Config) -> Self {
        HomeObjectView {
            datastore: ds.root().display().to_string(),
            config: ds.config_path().display().to_string(),
            generation: cfg.generation.unwrap_or(0),
            targets: cfg.targets.len(),
            luns: cfg.targets.iter().map(|t| t.luns.len()).sum(),
            initiator_groups: cfg.initiator_groups.len(),
        }
    }
}

/// A target. Secrets are never shown.
#[derive(Debug, Serialize)]
pub struct TargetView {
    pub alias: Option<String>,
    pub iqn: String,
    pub uuid: Option<String>,
    pub owner_id: Option<String>,
    pub portal_groups: Vec<String>,
    pub listen: Vec<String>,
    pub auth_group: Option<String>,
    pub auth_type: String,
    pub chap_user: Option<String>,
    pub mutual_chap_user: Option<String>,
    pub initiator_groups: Vec<String>,
    pub luns: Vec<u64>,
}

impl TargetView {
    pub fn new(cfg: &Config, t: &Target) -> Self {
        let auth = &crate::ctl::effective_auth(cfg, t);
        let portal_groups: Vec<String> = t
            .portal_groups
            .iter()
            .map(|p| p.portal_group.name.clone())
            .collect();
        let listen = portal_groups
            .iter()
            .flat_map(|name| {
                let pg = cfg.portal_groups.iter().find(|p| &p.name == name);
                match pg {
                    Some(pg) => pg.listen.iter().map(|l| l.name.clone()).collect::<Vec<_>>(),
                    None if name == "default" => vec!["0.0.0.0:3260".into(), "[::]:3260".into()],
                    None => vec![],
                }
            })
            .collect();
        let auth_type = crate::ctl::effective_auth_type(cfg, auth)
            .as_str()
            .to_string();
        TargetView {
            alias: t.alias.as_ref().map(|a| a.name.clone()),
            iqn: t.name.clone(),
            uuid: t.uuid().map(str::to_string),
            owner_id: t.owner_id().map(str::to_string),
            portal_groups,
            listen,
            auth_group: t.auth_group.as_ref().map(|g| g.name.clone()),
            auth_type,
            chap_user: auth
                .chap
                .first()
                .map(|c| c.user.clone())
                .or(auth.chap_mutual.first().map(|c| c.user.clone())),
            mutual_chap_user: auth.chap_mutual.first().map(|c| c.mutual_user.clone()),
            initiator_groups: auth
                .initiator_groups
                .iter()
                .map(|g| g.name.clone())
                .collect(),
            luns: t.luns.iter().map(|l| l.id).collect(),
        }
    }
}

/// A LUN of a target.
#[derive(Debug, Serialize)]
pub struct LunView {
    pub target: String,
    pub target_alias: Option<String>,
    pub id: u64,
    pub alias: Option<String>,
    pub backend: Option<String>,
    pub path: Option<String>,
    pub descriptor: Option<String>,
    pub size_bytes: Option<u64>,
    pub read_only: bool,
}

impl LunView {
    pub fn new(cfg: &Config, t: &Target, l: &TargetLun, ds: &Datastore) -> Self {
        let body = lun_body(cfg, &l.lun);
        let path = body.and_then(|b| b.path.as_ref()).map(|p| p.name.clone());
        LunView {
            target: t.name.clone(),
            target_alias: t.alias.as_ref().map(|a| a.name.clone()),
            id: l.id,
            alias: body
                .and_then(|b| b.lun_alias())
                .map(str::to_string)
                .or(match &l.lun {
                    LunRef::Named(n) => Some(n.name.clone()),
                    LunRef::Inline(_) => None,
                }),
            backend: body
                .and_then(|b| b.backend)
                .map(|(b, _)| b.as_str().to_string()),
            descriptor: path
                .as_ref()
                .and_then(|p| ds.resolve_lun_path(p).ok())
                .map(|p| p.display().to_string()),
            path,
            size_bytes: body.and_then(|b| b.size).map(|(s, _)| s),
            read_only: body
                .and_then(|b| b.option("readonly"))
                .is_some_and(|v| v.eq_ignore_ascii_case("on")),
        }
    }
}

/// An initiator group.
#[derive(Debug, Serialize)]
pub struct InitiatorGroupView {
    pub name: String,
    pub initiators: Vec<String>,
}

impl InitiatorGroupView {
    pub fn new(g: &InitiatorGroup) -> Self {
        InitiatorGroupView {
            name: g.name.clone(),
            initiators: g.initiators.iter().map(|i| i.name.clone()).collect(),
        }
    }
}

/// Rows for the table format: a header and one line of cells per object.
pub trait Tabular {
    const HEADER: &'static [&'static str];
    fn cells(&self) -> Vec<String>;
}

fn opt(s: &Option<String>) -> String {
    s.clone().unwrap_or_else(|| "-".into())
}

fn list<T: ToString>(v: &[T]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Tabular for HomeObjectView {
    const HEADER: &'static [&'static str] = &[
        "DATASTORE",
        "GENERATION",
        "TARGETS",
        "LUNS",
        "INITIATOR-GROUPS",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.datastore.clone(),
            self.generation.to_string(),
            self.targets.to_string(),
            self.luns.to_string(),
            self.initiator_groups.to_string(),
        ]
    }
}

impl Tabular for TargetView {
    const HEADER: &'static [&'static str] =
        &["ALIAS", "IQN", "LISTEN", "AUTH", "INITIATOR-GROUPS", "LUNS"];
    fn cells(&self) -> Vec<String> {
        vec![
            opt(&self.alias),
            self.iqn.clone(),
            list(&self.listen),
            self.auth_type.clone(),
            list(&self.initiator_groups),
            list(&self.luns),
        ]
    }
}

impl Tabular for LunView {
    const HEADER: &'static [&'static str] = &["TARGET", "ID", "ALIAS", "SIZE", "PATH"];
    fn cells(&self) -> Vec<String> {
        vec![
            self.target_alias
                .clone()
                .unwrap_or_else(|| self.target.clone()),
            self.id.to_string(),
            opt(&self.alias),
            self.size_bytes.map_or_else(|| "-".into(), human_size),
            opt(&self.path),
        ]
    }
}

impl Tabular for InitiatorGroupView {
    const HEADER: &'static [&'static str] = &["NAME", "INITIATORS"];
    fn cells(&self) -> Vec<String> {
        vec![self.name.clone(), list(&self.initiators)]
    }
}

/// Renders rows under a header, columns padded to their widest cell.
pub fn table<T: Tabular>(rows: &[T]) -> String {
    let cells: Vec<Vec<String>> = rows.iter().map(Tabular::cells).collect();
    let mut widths: Vec<usize> = T::HEADER.iter().map(|h| h.len()).collect();
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = T::HEADER.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(&cells) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `6442450944` -> `6G`: the largest binary unit that divides the size exactly.
pub fn human_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}
