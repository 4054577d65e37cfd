//! Semantic checks of a [`Config`]: references, duplicates, ranges, names and consistency.
//! Every error names the position of the offending item; all are reported, in file order.

use std::collections::HashMap;

use super::ConfigError;
use super::model::*;
use crate::names::validate_iscsi_name;

/// Auth groups that exist without being defined (and may be redefined once).
pub(crate) const PREDEFINED_AUTH_GROUPS: [&str; 3] = ["default", "no-authentication", "no-access"];
/// Portal groups that exist without being defined (and may be redefined once).
pub(crate) const PREDEFINED_PORTAL_GROUPS: [&str; 1] = ["default"];
/// The largest LUN id.
pub(crate) const MAX_LUN_ID: u64 = 255;

/// See [`super::verify`].
pub(crate) fn verify(cfg: &Config, file: &str) -> Vec<ConfigError> {
    let mut c = Checker {
        file,
        errors: Vec::new(),
    };
    let igs = c.defined(
        "initiator-group",
        cfg.initiator_groups
            .iter()
            .map(|g| (g.name.as_str(), g.pos)),
        &[],
    );
    let ags = c.defined(
        "auth-group",
        cfg.auth_groups.iter().map(|g| (g.name.as_str(), g.pos)),
        &PREDEFINED_AUTH_GROUPS,
    );
    let pgs = c.defined(
        "portal-group",
        cfg.portal_groups.iter().map(|g| (g.name.as_str(), g.pos)),
        &PREDEFINED_PORTAL_GROUPS,
    );
    let luns = c.defined(
        "lun",
        cfg.luns.iter().map(|l| (l.name.as_str(), l.pos)),
        &[],
    );
    let refs = Defined {
        igs,
        ags,
        pgs,
        luns,
    };

    for g in &cfg.initiator_groups {
        c.initiator_list("initiator", &g.initiators);
    }
    for g in &cfg.auth_groups {
        c.auth(&g.auth, &refs);
    }
    for g in &cfg.portal_groups {
        c.portal_group(g, &refs);
    }
    for l in &cfg.luns {
        c.lun_body(&l.body);
    }
    c.targets(&cfg.targets, &refs);

    let mut errors = c.errors;
    errors.sort_by_key(|e| (e.line, e.col));
    errors
}

/// The names each kind of section defines.
struct Defined<'a> {
    igs: HashMap<&'a str, Pos>,
    ags: HashMap<&'a str, Pos>,
    pgs: HashMap<&'a str, Pos>,
    luns: HashMap<&'a str, Pos>,
}

struct Checker<'f> {
    file: &'f str,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn report(&mut self, pos: Pos, msg: impl Into<String>) {
        self.errors.push(ConfigError::at(self.file, pos, msg));
    }

    /// Collects section names of one kind, reporting the second definition of a name.
    fn defined<'a>(
        &mut self,
        kind: &str,
        sections: impl Iterator<Item = (&'a str, Pos)>,
        predefined: &[&'a str],
    ) -> HashMap<&'a str, Pos> {
        let mut seen: HashMap<&'a str, Pos> = HashMap::new();
        for (name, pos) in sections {
            if let Some(first) = seen.get(name) {
                self.report(
                    pos,
                    format!(
                        "{kind} \"{name}\" is defined twice (first at {}:{})",
                        first.line, first.col
                    ),
                );
            } else {
                seen.insert(name, pos);
            }
        }
        for name in predefined {
            seen.entry(name).or_default();
        }
        seen
    }

    fn reference(&mut self, kind: &str, defined: &HashMap<&str, Pos>, r: &Named) {
        if !defined.contains_key(r.name.as_str()) {
            self.report(r.pos, format!("{kind} \"{}\" is not defined", r.name));
        }
    }

    fn iscsi_name(&mut self, what: &str, name: &str, pos: Pos) {
        if let Err(e) = validate_iscsi_name(name) {
            self.report(pos, format!("{what} \"{name}\": {e}"));
        }
    }

    /// Validates iSCSI names and reports repeats (names compare case-insensitively).
    fn initiator_list(&mut self, what: &str, names: &[Named]) {
        let mut seen: HashMap<String, Pos> = HashMap::new();
        for n in names {
            self.iscsi_name(what, &n.name, n.pos);
            let key = n.name.to_ascii_lowercase();
            if let Some(first) = seen.get(&key) {
                self.report(
                    n.pos,
                    format!(
                        "{what} \"{}\" is listed twice (first at {}:{})",
                        n.name, first.line, first.col
                    ),
                );
            } else {
                seen.insert(key, n.pos);
            }
        }
    }

    fn auth(&mut self, a: &AuthSettings, refs: &Defined<'_>) {
        if let (Some(_), Some(m)) = (a.chap.first(), a.chap_mutual.first()) {
            self.report(
                m.pos,
                "chap and chap-mutual cannot be mixed in one auth group",
            );
        }
        if let Some((ty, pos)) = a.auth_type {
            let has_chap = !a.chap.is_empty();
            let has_mutual = !a.chap_mutual.is_empty();
            let problem = match ty {
                AuthType::None | AuthType::Deny if has_chap || has_mutual => {
                    Some("conflicts with chap credentials")
                }
                AuthType::Chap if !has_chap => Some("needs a `chap USER SECRET` statement"),
                AuthType::ChapMutual if !has_mutual => Some("needs a `chap-mutual` statement"),
                _ => None,
            };
            if let Some(p) = problem {
                self.report(pos, format!("auth-type {} {p}", ty.as_str()));
            }
        }
        self.initiator_list("initiator-name", &a.initiator_names);
        for g in &a.initiator_groups {
            self.reference("initiator-group", &refs.igs, g);
        }
    }

    fn portal_group(&mut self, g: &PortalGroup, refs: &Defined<'_>) {
        if let Some(ag) = &g.discovery_auth_group {
            self.reference("discovery-auth-group", &refs.ags, ag);
        }
        for l in g.listen.iter().chain(&g.listen_iser) {
            if let Err(e) = ListenAddr::parse(&l.name) {
                self.report(l.pos, format!("listen address: {e}"));
            }
        }
    }

    fn lun_body(&mut self, b: &LunBody) {
        if let Some((bs, pos)) = b.blocksize
            && bs != 512
            && bs != 4096
        {
            self.report(pos, format!("blocksize {bs} is not 512 or 4096"));
        }
        if let Some((Backend::Vmdk, pos)) = b.backend
            && b.path.is_none()
        {
            self.report(pos, "backend vmdk needs a `path`");
        }
        if let Some(p) = &b.path {
            if p.name.starts_with('/') {
                self.report(
                    p.pos,
                    format!(
                        "path \"{}\" must be relative to .iSCSI-Config/targets/",
                        p.name
                    ),
                );
            } else if p.name.split('/').any(|c| c == "..") {
                self.report(
                    p.pos,
                    format!("path \"{}\" must not contain a `..` component", p.name),
                );
            }
        }
    }

    fn targets(&mut self, targets: &[Target], refs: &Defined<'_>) {
        let mut names: HashMap<String, Pos> = HashMap::new();
        let mut uuids: HashMap<String, Pos> = HashMap::new();
        for t in targets {
            self.iscsi_name("target name", &t.name, t.pos);
            match names.get(&t.name.to_ascii_lowercase()) {
                Some(first) => self.report(
                    t.pos,
                    format!(
                        "target \"{}\" is defined twice (first at {}:{})",
                        t.name, first.line, first.col
                    ),
                ),
                None => {
                    names.insert(t.name.to_ascii_lowercase(), t.pos);
                }
            }
            if let Some(u) = t.options.iter().rev().find(|o| o.name == "uuid") {
                match uuids.get(&u.value.to_ascii_lowercase()) {
                    Some(first) => self.report(
                        u.pos,
                        format!(
                            "option uuid {} is already used by the target at {}:{}",
                            u.value, first.line, first.col
                        ),
                    ),
                    None => {
                        uuids.insert(u.value.to_ascii_lowercase(), u.pos);
                    }
                }
            }
            self.target(t, refs);
        }
    }

    fn target(&mut self, t: &Target, refs: &Defined<'_>) {
        if let Some(ag) = &t.auth_group {
            self.reference("auth-group", &refs.ags, ag);
            if !t.auth.is_empty() {
                self.report(
                    ag.pos,
                    "a target cannot have both `auth-group` and inline authentication statements",
                );
            }
        }
        self.auth(&t.auth, refs);
        for pg in &t.portal_groups {
            self.reference("portal-group", &refs.pgs, &pg.portal_group);
            if let Some(ag) = &pg.auth_group {
                self.reference("auth-group", &refs.ags, ag);
            }
        }
        let mut ids: HashMap<u64, Pos> = HashMap::new();
        for l in &t.luns {
            if l.id > MAX_LUN_ID {
                self.report(
                    l.pos,
                    format!("LUN id {} is out of range 0..={MAX_LUN_ID}", l.id),
                );
            }
            if let Some(first) = ids.get(&l.id) {
                self.report(
                    l.pos,
                    format!(
                        "LUN {} is defined twice in this target (first at {}:{})",
                        l.id, first.line, first.col
                    ),
                );
            } else {
                ids.insert(l.id, l.pos);
            }
            match &l.lun {
                LunRef::Named(n) => self.reference("lun", &refs.luns, n),
                LunRef::Inline(b) => self.lun_body(b),
            }
        }
    }
}
