//! Semantic checks of a [`Config`]: references, duplicates, ranges, names and consistency.
//! Every error names the position of the offending item; all are reported, in file order.

use std::collections::HashMap;

use super::model::*;
use super::{ConfigError, is_printable_value};
use crate::names::validate_iscsi_name;

/// Auth groups that exist without being defined (and may be redefined once).
pub(crate) const PREDEFINED_AUTH_GROUPS: [&str; 3] = ["default", "no-authentication", "no-access"];
/// Portal groups that exist without being defined (and may be redefined once).
pub(crate) const PREDEFINED_PORTAL_GROUPS: [&str; 1] = ["default"];
/// The largest 802.1Q priority code point.
pub(crate) const MAX_PCP: u8 = 7;
/// The largest LUN id: ctl.conf's (ctld refuses an id of MAX_LUNS, 1024, or more). Ids from 256
/// on are reported in flat space addressing (`scsi::encode_lun`).
pub const MAX_LUN_ID: u64 = 1023;

/// See [`super::verify()`].
/// Longest target alias: a login text value (RFC 7143 §6.1).
pub const MAX_ALIAS_BYTES: usize = 255;
/// The most portal groups one target may be in: one target port each, numbered by the
/// relative target port identifier, 1..=65535 (SPC-4 7.8.6.5).
pub const MAX_TARGET_PORTS: u16 = u16::MAX;

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
    c.portal_group_tags(cfg);
    c.shared_listen_addresses(cfg);
    for l in &cfg.luns {
        c.lun_body(&l.body);
    }
    c.targets(&cfg.targets, &refs);
    c.shared_descriptors(cfg);
    for_each_value(cfg, &mut |what, value, pos| {
        if !is_printable_value(value) {
            c.report(pos, format!("{what} {value:?} cannot be written in vit.conf (empty, or holds `\"` or a control character)"));
        }
    });

    let mut errors = c.errors;
    errors.sort_by_key(|e| (e.line, e.col));
    errors
}

/// Calls `f(what, value, pos)` for every string in the model that the printer writes.
/// Global `pidfile` and `isns-server` carry no position and are reported at 0:0.
fn for_each_value<'a>(cfg: &'a Config, f: &mut impl FnMut(&str, &'a str, Pos)) {
    let nowhere = Pos::default();
    cfg.pidfile.iter().for_each(|p| f("pidfile", p, nowhere));
    cfg.isns_servers
        .iter()
        .for_each(|s| f("isns-server", s, nowhere));
    let named = |f: &mut dyn FnMut(&str, &'a str, Pos),
                 what: &str,
                 ns: &mut dyn Iterator<Item = &'a Named>| {
        ns.for_each(|n| f(what, &n.name, n.pos));
    };
    for g in &cfg.initiator_groups {
        f("initiator-group name", &g.name, g.pos);
        named(f, "initiator", &mut g.initiators.iter());
    }
    for g in &cfg.auth_groups {
        f("auth-group name", &g.name, g.pos);
        auth_values(&g.auth, f);
    }
    for g in &cfg.portal_groups {
        f("portal-group name", &g.name, g.pos);
        named(
            f,
            "discovery-auth-group",
            &mut g.discovery_auth_group.iter(),
        );
        named(f, "listen", &mut g.listen.iter().chain(&g.listen_iser));
        named(
            f,
            "value",
            &mut g.offload.iter().chain(&g.redirect).chain(&g.dscp),
        );
        option_values(&g.options, f);
    }
    for l in &cfg.luns {
        f("lun name", &l.name, l.pos);
        lun_values(&l.body, f);
    }
    for t in &cfg.targets {
        f("target name", &t.name, t.pos);
        named(
            f,
            "value",
            &mut t
                .alias
                .iter()
                .chain(&t.auth_group)
                .chain(&t.ports)
                .chain(&t.redirect),
        );
        for pg in &t.portal_groups {
            named(
                f,
                "portal-group",
                &mut std::iter::once(&pg.portal_group).chain(&pg.auth_group),
            );
        }
        auth_values(&t.auth, f);
        option_values(&t.options, f);
        for l in &t.luns {
            match &l.lun {
                LunRef::Named(n) => f("lun name", &n.name, n.pos),
                LunRef::Inline(b) => lun_values(b, f),
            }
        }
    }
}

fn auth_values<'a>(a: &'a AuthSettings, f: &mut impl FnMut(&str, &'a str, Pos)) {
    for c in &a.chap {
        [&c.user, &c.secret]
            .into_iter()
            .for_each(|v| f("chap", v, c.pos));
    }
    for c in &a.chap_mutual {
        [&c.user, &c.secret, &c.mutual_user, &c.mutual_secret]
            .into_iter()
            .for_each(|v| f("chap-mutual", v, c.pos));
    }
    let names = a
        .initiator_names
        .iter()
        .chain(&a.initiator_portals)
        .chain(&a.initiator_groups);
    names.for_each(|n| f("value", &n.name, n.pos));
}

fn option_values<'a>(opts: &'a [Opt], f: &mut impl FnMut(&str, &'a str, Pos)) {
    for o in opts {
        f("option name", &o.name, o.pos);
        f("option value", &o.value, o.pos);
    }
}

fn lun_values<'a>(b: &'a LunBody, f: &mut impl FnMut(&str, &'a str, Pos)) {
    let named = b
        .device_id
        .iter()
        .chain(&b.device_type)
        .chain(&b.path)
        .chain(&b.serial);
    named.for_each(|n| f("value", &n.name, n.pos));
    option_values(&b.options, f);
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
        for portal in &a.initiator_portals {
            if let Err(e) = InitiatorPortal::parse(&portal.name) {
                self.report(portal.pos, format!("initiator-portal: {e}"));
            }
        }
        for g in &a.initiator_groups {
            self.reference("initiator-group", &refs.igs, g);
        }
    }

    fn portal_group(&mut self, g: &PortalGroup, refs: &Defined<'_>) {
        if let Some(ag) = &g.discovery_auth_group {
            self.reference("discovery-auth-group", &refs.ags, ag);
        }
        if let Some((pcp, pos)) = g.pcp
            && pcp > MAX_PCP
        {
            self.report(pos, format!("pcp {pcp} is out of range 0..={MAX_PCP}"));
        }
        if let Some(d) = &g.dscp
            && crate::config::dscp_codepoint(&d.name).is_none()
        {
            self.report(
                d.pos,
                format!(
                    "dscp {:?} is no DiffServ codepoint (0..63, 0x00..0x3f, be, ef, cs0..cs7, af11..af43)",
                    d.name
                ),
            );
        }
        for l in g.listen.iter().chain(&g.listen_iser) {
            if let Err(e) = ListenAddr::parse(&l.name) {
                self.report(l.pos, format!("listen address: {e}"));
            }
        }
    }

    /// Tags are unique, and every group without one can be given one of 1..=65535 that no
    /// group is written with (the predefined `default`, when implied, first, as vitd assigns).
    fn portal_group_tags(&mut self, cfg: &Config) {
        let mut tags: HashMap<u16, (&str, Pos)> = HashMap::new();
        for g in &cfg.portal_groups {
            let Some((tag, pos)) = g.tag else { continue };
            if let Some((name, first)) = tags.get(&tag) {
                self.report(
                    pos,
                    format!(
                        "tag {tag} is already the tag of portal group \"{name}\" (at {}:{})",
                        first.line, first.col
                    ),
                );
            } else {
                tags.insert(tag, (&g.name, pos));
            }
        }
        let mut free = usize::from(u16::MAX) - tags.keys().filter(|&&t| t != 0).count();
        let untagged = cfg
            .implied_default_portal_group()
            .map(|t| ("default", t.pos))
            .into_iter()
            .chain(
                cfg.portal_groups
                    .iter()
                    .filter(|g| g.tag.is_none())
                    .map(|g| (g.name.as_str(), g.pos)),
            );
        for (name, pos) in untagged {
            if free == 0 {
                self.report(
                    pos,
                    format!(
                        "portal group \"{name}\" has no tag and none is left to give it: \
                         other portal groups hold every tag of 1..=65535"
                    ),
                );
            } else {
                free -= 1;
            }
        }
    }

    /// No two portal groups that targets use listen on one address: vitd would listen there for
    /// the first alone, and the other's targets could not be reached through it.
    fn shared_listen_addresses(&mut self, cfg: &Config) {
        let mut seen: HashMap<ListenAddr, (&str, Pos)> = HashMap::new();
        if let Some(t) = cfg.implied_default_portal_group() {
            for l in DEFAULT_PORTAL_GROUP_LISTEN {
                if let Ok(addr) = ListenAddr::parse(l) {
                    seen.insert(addr, ("default", t.pos));
                }
            }
        }
        let served = cfg
            .portal_groups
            .iter()
            .filter(|g| !g.foreign && cfg.portal_group_used(&g.name));
        for g in served {
            for l in &g.listen {
                let Ok(addr) = ListenAddr::parse(&l.name) else {
                    continue;
                };
                match seen.get(&addr) {
                    Some((other, _)) if *other == g.name => continue,
                    Some((other, first)) => {
                        self.report(
                            l.pos,
                            format!(
                                "listen {}: portal group \"{other}\" listens there too (at \
                                 {}:{}); vitd would serve only one group on an address",
                                l.name, first.line, first.col
                            ),
                        );
                        continue;
                    }
                    None => {}
                }
                // The first such listen, so that the message does not depend on hash order.
                let wildcard_clash = seen
                    .iter()
                    .filter(|(a, (other, _))| {
                        *other != g.name && (wildcard_covers(a, &addr) || wildcard_covers(&addr, a))
                    })
                    .min_by_key(|(_, (_, p))| (p.line, p.col));
                if let Some((a, (other, first))) = wildcard_clash {
                    self.report(
                        l.pos,
                        format!(
                            "listen {}: portal group \"{other}\" listens on {} (at {}:{}); a \
                             wildcard and an address of its family cannot both be listened on \
                             with one port",
                            l.name,
                            listen_text(a),
                            first.line,
                            first.col
                        ),
                    );
                }
                seen.insert(addr, (&g.name, l.pos));
            }
        }
    }

    /// ctl.conf's physical block and unmap granule options of a LUN: sizes, offsets and their
    /// fit with the block size (ctld ignores ones that do not fit; vit says so).
    fn granules(&mut self, b: &LunBody) {
        let block = b.blocksize.map_or(512, |(bs, _)| bs);
        if block != 512 && block != 4096 {
            return; // refused in `lun_body`: nothing to measure the granules in
        }
        for kind in [GranuleKind::Physical, GranuleKind::Unmap] {
            let [size, offset] = b.granule_options(kind);
            let mut values = [None, None];
            for (slot, opt) in values.iter_mut().zip([&size, &offset]) {
                match opt {
                    Some((Err(e), pos)) => self.report(*pos, e.clone()),
                    Some((Ok(v), pos)) => *slot = Some((*v, *pos)),
                    None => {}
                }
            }
            let (name, offset_name) = match kind {
                GranuleKind::Physical => ("pblocksize", "pblockoffset"),
                GranuleKind::Unmap => ("ublocksize", "ublockoffset"),
            };
            match values {
                [Some((size, pos)), offset] => {
                    let off = offset.map_or(0, |(o, _)| o);
                    match granule(size, off, block) {
                        Err(e) => self.report(pos, format!("option {name}: {e}")),
                        Ok((per, _))
                            if kind == GranuleKind::Physical && per > MAX_PHYSICAL_BLOCKS =>
                        {
                            self.report(
                                pos,
                                format!(
                                    "option {name}: {per} blocks is more than a physical block may have ({MAX_PHYSICAL_BLOCKS})"
                                ),
                            );
                        }
                        Ok(_) => {}
                    }
                }
                [None, Some((off, pos))] if off % block != 0 => self.report(
                    pos,
                    format!("option {offset_name}: {off} bytes is not a whole number of {block}-byte blocks"),
                ),
                _ => {}
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
        if let Some((backend @ (Backend::Vmdk | Backend::Block), pos)) = b.backend
            && b.path.is_none()
        {
            self.report(pos, format!("backend {} needs a `path`", backend.as_str()));
        }
        if let Some((Backend::Ramdisk, pos)) = b.backend
            && b.size.is_none()
        {
            self.report(pos, "backend ramdisk needs a `size`");
        }
        // vitd cannot serve a LUN of no blocks (READ CAPACITY has no last block to give).
        if let Some((0, pos)) = b.size
            && b.effective_backend() == Backend::Ramdisk
        {
            self.report(pos, "size 0: a ramdisk LUN needs at least one block");
        }
        if let Some((size, pos)) = b.size
            && b.effective_backend() == Backend::Ramdisk
            && size > MAX_RAMDISK_BYTES
        {
            self.report(
                pos,
                format!(
                    "size {size} bytes is more than a ramdisk LUN may have ({MAX_RAMDISK_BYTES} bytes, 64 TiB)"
                ),
            );
        }
        if let Some((Err(e), pos)) = b.capacity() {
            self.report(pos, format!("option capacity: {e}"));
        }
        self.granules(b);
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
        // A name or alias must name one target (as `Target::name_clash` says): names and their
        // lowercase forms, aliases as written and lowercased, each with the target's index.
        let mut by_name: HashMap<String, (usize, Pos)> = HashMap::new();
        let mut by_alias: HashMap<&str, Pos> = HashMap::new();
        let mut by_alias_lower: HashMap<String, (usize, Pos)> = HashMap::new();
        for (i, t) in targets.iter().enumerate() {
            let lower = t.name.to_ascii_lowercase();
            if let Some((_, first)) = by_alias_lower.get(&lower) {
                self.report(
                    t.pos,
                    format!(
                        "target \"{}\" is named like the alias of the target at {}:{}",
                        t.name, first.line, first.col
                    ),
                );
            }
            by_name.entry(lower).or_insert((i, t.pos));
            if let Some(a) = &t.alias {
                let lower = a.name.to_ascii_lowercase();
                if let Some(first) = by_alias.get(a.name.as_str()) {
                    self.report(
                        a.pos,
                        format!(
                            "alias \"{}\" is already the alias of the target at {}:{}",
                            a.name, first.line, first.col
                        ),
                    );
                } else if let Some((_, first)) = by_name.get(&lower).filter(|(j, _)| *j != i) {
                    self.report(
                        a.pos,
                        format!(
                            "alias \"{}\" is the name of the target at {}:{}",
                            a.name, first.line, first.col
                        ),
                    );
                }
                by_alias.entry(&a.name).or_insert(a.pos);
                by_alias_lower.entry(lower).or_insert((i, a.pos));
            }
        }
        for t in targets {
            self.iscsi_name("target name", &t.name, t.pos);
            // Sent as TargetAlias at login, where a value may have 255 bytes (RFC 7143 §6.1).
            if let Some(a) = t.alias.as_ref().filter(|a| a.name.len() > MAX_ALIAS_BYTES) {
                self.report(
                    a.pos,
                    format!(
                        "alias has {} bytes; at most {MAX_ALIAS_BYTES} (it is sent as TargetAlias)",
                        a.name.len()
                    ),
                );
            }
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

    /// No two LUNs of the targets (one global `lun` named twice included) serve one descriptor:
    /// vitd would serve one disk as two LUNs, each with its own reservations and COMPARE AND
    /// WRITE ordering. Paths compare by their components (`a//b` is `a/b`).
    fn shared_descriptors(&mut self, cfg: &Config) {
        let mut globals: HashMap<&str, &LunBody> = HashMap::new();
        for l in &cfg.luns {
            globals.entry(&l.name).or_insert(&l.body);
        }
        let mut seen: HashMap<Vec<&str>, (&str, u64, Pos)> = HashMap::new();
        for t in &cfg.targets {
            for l in &t.luns {
                let (body, pos) = match &l.lun {
                    LunRef::Inline(b) => (b, b.path.as_ref().map(|p| p.pos)),
                    LunRef::Named(n) => match globals.get(n.name.as_str()) {
                        Some(b) => (*b, Some(n.pos)),
                        None => continue,
                    },
                };
                let (Some(path), Some(pos)) = (&body.path, pos) else {
                    continue;
                };
                if body.effective_backend() == Backend::Ramdisk {
                    continue;
                }
                let key: Vec<&str> = path
                    .name
                    .split('/')
                    .filter(|c| !c.is_empty() && *c != ".")
                    .collect();
                match seen.get(&key) {
                    Some((target, id, first)) => self.report(
                        pos,
                        format!(
                            "LUN {}: descriptor \"{}\" is already LUN {id} of target {target} (at {}:{}); \
                             one disk as two LUNs would keep two sets of reservations",
                            l.id, path.name, first.line, first.col
                        ),
                    ),
                    None => {
                        seen.insert(key, (&t.name, l.id, pos));
                    }
                }
            }
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
        // One target port per portal group (ctld refuses a duplicate port): a group listed
        // twice would count as two ports in REPORT TARGET PORT GROUPS.
        let mut groups: HashMap<&str, Pos> = HashMap::new();
        for (at, pg) in t.portal_groups.iter().enumerate() {
            // Its target port is numbered by its place: relative target port identifiers are
            // 1..=65535 (SPC-4 7.8.6.5, 0 reserved), while tags 0..=65535 allow one group more.
            if at == usize::from(MAX_TARGET_PORTS) {
                self.report(
                    pg.portal_group.pos,
                    format!(
                        "portal-group \"{}\" is the {}th of this target: a target is in at most \
                         {MAX_TARGET_PORTS} portal groups (one relative target port identifier \
                         each, 1..={MAX_TARGET_PORTS})",
                        pg.portal_group.name,
                        at + 1
                    ),
                );
            }
            self.reference("portal-group", &refs.pgs, &pg.portal_group);
            if let Some(ag) = &pg.auth_group {
                self.reference("auth-group", &refs.ags, ag);
            }
            let name = pg.portal_group.name.as_str();
            if let Some(first) = groups.get(name) {
                self.report(
                    pg.portal_group.pos,
                    format!(
                        "portal-group \"{name}\" is listed twice in this target (first at {}:{})",
                        first.line, first.col
                    ),
                );
            } else {
                groups.insert(name, pg.portal_group.pos);
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

/// What vit.conf may say but should not, as positioned messages in file order: ctld accepts
/// these, so vit loads them too and vitd logs each once at start.
///
/// - a `chap-mutual` whose initiator secret is also its target secret: RFC 7143 section 12.1.3
///   forbids using one secret for both directions (an initiator's answers could then be replayed
///   as the target's, or the other way round);
/// - a CHAP secret shorter than 12 bytes or longer than 16, as ctld warns: RFC 7143 section
///   9.2.1 wants at least 96 random bits where the connection is not encrypted (CHAP answers
///   seen on the wire open shorter ones to an offline dictionary attack), and many initiators
///   (Windows's among them) accept at most 16.
pub(crate) fn warnings(cfg: &Config, file: &str) -> Vec<ConfigError> {
    let mut out = Vec::new();
    let mut check = |auth: &AuthSettings, owner: &str| {
        let secrets = auth
            .chap
            .iter()
            .map(|c| ("chap", "secret", &c.user, &c.secret, c.pos))
            .chain(auth.chap_mutual.iter().flat_map(|m| {
                [
                    ("chap-mutual", "secret", &m.user, &m.secret, m.pos),
                    (
                        "chap-mutual",
                        "mutual secret",
                        &m.user,
                        &m.mutual_secret,
                        m.pos,
                    ),
                ]
            }));
        for (what, which, user, secret, pos) in secrets {
            let hint = match secret.len() {
                n if n < 12 => "at least 12 bytes (96 bits) are recommended",
                n if n > 16 => "many initiators accept at most 16",
                _ => continue,
            };
            out.push(ConfigError::at(
                file,
                pos,
                format!(
                    "{owner}: the {which} of `{what}` for user \"{user}\" is {} bytes long; {hint}",
                    secret.len()
                ),
            ));
        }
        for m in auth
            .chap_mutual
            .iter()
            .filter(|m| m.secret == m.mutual_secret)
        {
            out.push(ConfigError::at(
                file,
                m.pos,
                format!(
                    "{owner}: `chap-mutual` for user \"{}\" authenticates the target with the \
                     initiator's secret; RFC 7143 section 12.1.3 wants a different secret for \
                     each direction",
                    m.user
                ),
            ));
        }
    };
    for g in &cfg.auth_groups {
        check(&g.auth, &format!("auth-group \"{}\"", g.name));
    }
    for t in &cfg.targets {
        check(&t.auth, &format!("target \"{}\"", t.name));
    }
    out.sort_by_key(|e| (e.line, e.col));
    out
}

/// Whether `wildcard` is the unspecified address of `addr`'s family on its port (vitd listens
/// on `[::]` with IPV6_V6ONLY, and Linux lets only one of the two listen).
fn wildcard_covers(wildcard: &ListenAddr, addr: &ListenAddr) -> bool {
    match (&wildcard.host, &addr.host) {
        (ListenHost::Ip(w), ListenHost::Ip(a)) => {
            w.is_unspecified() && w != a && w.is_ipv4() == a.is_ipv4() && wildcard.port == addr.port
        }
        _ => false,
    }
}

/// A listen address as vit.conf would write it.
fn listen_text(a: &ListenAddr) -> String {
    match &a.host {
        ListenHost::Ip(std::net::IpAddr::V6(v6)) => format!("[{v6}]:{}", a.port),
        ListenHost::Ip(ip) => format!("{ip}:{}", a.port),
        ListenHost::Name(n) => format!("{n}:{}", a.port),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{load, parse};
    use super::*;

    /// The verifier's errors for `text` as `line:col: msg`.
    fn errs(text: &str) -> Vec<String> {
        let cfg = parse(text, "v.conf").unwrap_or_else(|e| panic!("syntax error: {e}"));
        verify(&cfg, "v.conf")
            .iter()
            .map(|e| format!("{}:{}: {}", e.line, e.col, e.msg))
            .collect()
    }

    const T: &str = "iqn.2000-01.com.example:t";

    #[test]
    fn valid_config_has_no_errors() {
        let text = format!(
            "initiator-group ig {{ initiator iqn.2000-01.com.example:i }}\n\
             auth-group ag {{ auth-type chap\n chap u s\n initiator-group ig }}\n\
             auth-group default {{ auth-type deny }}\n\
             portal-group pg {{ discovery-auth-group no-authentication\n listen 0.0.0.0:3261\n listen [::1]:3262\n listen vmk0:3260\n listen 10.0.0.1:3263 }}\n\
             lun shared {{ backend vmdk\n path a/b.vmdk\n blocksize 512 }}\n\
             target {T} {{ auth-group ag\n portal-group pg no-access\n portal-group default\n lun 0 shared\n lun 255 {{ blocksize 4096 }} }}\n\
             target eui.0123456789abcdef {{ auth-type none\n option uuid u2 }}\n\
             target naa.0123456789abcdef0123456789ABCDEF {{ option uuid u3 }}"
        );
        assert_eq!(errs(&text), Vec::<String>::new());
        assert!(load(&text, "v.conf").is_ok());
    }

    #[test]
    fn an_alias_too_long_to_send_is_refused_where_it_stands() {
        let ok = format!("target {T} {{\n alias \"{}\"\n}}", "a".repeat(255));
        assert!(errs(&ok).is_empty(), "{:?}", errs(&ok));
        let long = format!("target {T} {{\n alias \"{}\"\n}}", "a".repeat(256));
        assert_eq!(
            errs(&long),
            ["2:8: alias has 256 bytes; at most 255 (it is sent as TargetAlias)"]
        );
    }

    #[test]
    fn undefined_references() {
        let text = format!(
            "auth-group a {{ initiator-group nope }}\n\
             portal-group p {{ discovery-auth-group nope-ag }}\n\
             target {T} {{\n auth-group missing\n portal-group missing-pg missing-ag\n lun 0 missing-lun\n}}"
        );
        assert_eq!(
            errs(&text),
            [
                "1:32: initiator-group \"nope\" is not defined",
                "2:39: discovery-auth-group \"nope-ag\" is not defined",
                "4:13: auth-group \"missing\" is not defined",
                "5:15: portal-group \"missing-pg\" is not defined",
                "5:26: auth-group \"missing-ag\" is not defined",
                "6:8: lun \"missing-lun\" is not defined",
            ]
        );
    }

    #[test]
    fn duplicates() {
        let text = format!(
            "auth-group a {{ }}\nauth-group a {{ }}\nportal-group default {{ }}\nportal-group default {{ }}\n\
             initiator-group g {{ initiator iqn.2000-01.com.x:i\n initiator IQN.2000-01.com.x:I }}\n\
             lun l {{ }}\nlun l {{ }}\ninitiator-group g {{ }}\n\
             target {T} {{ lun 1 l\n lun 1 l }}\ntarget {T} {{ }}"
        );
        assert_eq!(
            errs(&text),
            [
                "2:12: auth-group \"a\" is defined twice (first at 1:12)",
                "4:14: portal-group \"default\" is defined twice (first at 3:14)",
                "6:12: initiator \"IQN.2000-01.com.x:I\" is listed twice (first at 5:31)",
                "8:5: lun \"l\" is defined twice (first at 7:5)",
                "9:17: initiator-group \"g\" is defined twice (first at 5:17)",
                "11:6: LUN 1 is defined twice in this target (first at 10:40)",
                "12:8: target \"iqn.2000-01.com.example:t\" is defined twice (first at 10:8)",
            ]
        );
    }

    #[test]
    fn predefined_groups_exist_and_may_be_redefined_once() {
        let text = format!(
            "auth-group default {{ auth-type none }}\nportal-group pg {{ listen 127.0.0.1:3261 }}\n\
             target {T} {{ auth-group no-access\n portal-group default default\n portal-group pg no-authentication }}"
        );
        assert_eq!(errs(&text), Vec::<String>::new());
    }

    #[test]
    fn lun_checks() {
        let text = format!(
            "lun a {{ blocksize 1024 }}\nlun b {{ backend vmdk }}\nlun c {{ path /etc/passwd }}\n\
             lun d {{ path x/../../y }}\nlun e {{ path ..foo/x..y }}\n\
             target {T} {{ lun 1024 {{ path .. }} }}\n\
             lun f {{ backend ramdisk }}\nlun g {{ backend ramdisk\n size 1G\n option capacity 512M }}\n\
             lun h {{ backend ramdisk\n size 1G\n option capacity lots }}\n\
             lun i {{ backend ramdisk\n size 1G\n option capacity 0 }}\n\
             lun j {{ backend ramdisk\n size 1G\n option capacity 2G }}\nlun k {{ backend block }}"
        );
        assert_eq!(
            errs(&text),
            [
                "1:19: blocksize 1024 is not 512 or 4096",
                "2:17: backend vmdk needs a `path`",
                "3:14: path \"/etc/passwd\" must be relative to .iSCSI-Config/targets/",
                "4:14: path \"x/../../y\" must not contain a `..` component",
                "6:40: LUN id 1024 is out of range 0..=1023",
                "6:52: path \"..\" must not contain a `..` component",
                "7:17: backend ramdisk needs a `size`",
                "13:2: option capacity: size \"lots\": expected a number with optional suffix K, M, G, T or B",
                "20:17: backend block needs a `path`",
            ]
        );
    }

    /// A block size of 0 (refused) must not panic the granule checks that follow it.
    #[test]
    fn block_geometry_options_with_a_zero_block_size_are_checked_without_panicking() {
        let text = "lun a { backend ramdisk\n size 1G\n blocksize 0\n option ublockoffset 512\n \
                    option pblockoffset 1024 }";
        assert_eq!(errs(text), ["3:12: blocksize 0 is not 512 or 4096"]);
    }

    #[test]
    fn block_geometry_options_must_fit_the_block_size() {
        let text = "lun a { backend ramdisk\n size 1G\n option pblocksize 4K\n option pblockoffset 1024\n \
                    option ublocksize 1M\n option ublockoffset 64K }\n\
                    lun b { backend ramdisk\n size 1G\n option pblocksize 3K\n option ublocksize 1000 }\n\
                    lun c { backend ramdisk\n size 1G\n blocksize 4096\n option pblocksize 2048\n \
                    option ublockoffset 512 }\n\
                    lun d { backend ramdisk\n size 1G\n option pblocksize 4K\n option pblockoffset 8K }\n\
                    lun e { backend ramdisk\n size 1G\n option pblocksize 16M\n option ublocksize lots }";
        assert_eq!(
            errs(text),
            [
                "9:2: option pblocksize: 3072 bytes is not a power-of-two multiple of the 512-byte block",
                "10:2: option ublocksize: 1000 bytes is not a power-of-two multiple of the 512-byte block",
                "14:2: option pblocksize: 2048 bytes is not a power-of-two multiple of the 4096-byte block",
                "15:2: option ublockoffset: 512 bytes is not a whole number of 4096-byte blocks",
                "18:2: option pblocksize: offset 8192 bytes is not a whole number of 512-byte blocks up to the granule's 4096",
                "22:2: option pblocksize: 32768 blocks is more than a physical block may have (16384)",
                "23:2: option ublocksize: size \"lots\": expected a number with optional suffix K, M, G, T or B",
            ]
        );
    }

    #[test]
    fn a_ramdisk_larger_than_vitd_serves_is_refused_where_its_size_stands() {
        let text = format!(
            "target {T} {{\n lun 0 {{ backend ramdisk\n  size 64T\n  option capacity 1 }}\n\
             lun 1 {{ backend ramdisk\n  size 16000T\n  option capacity 1 }}\n\
             lun 2 {{ size 70368744177665B }}\n\
             lun 3 {{ backend vmdk\n  path u/a.vmdk\n  size 16000T }}\n}}"
        );
        assert_eq!(
            errs(&text),
            [
                "6:8: size 17592186044416000 bytes is more than a ramdisk LUN may have (70368744177664 bytes, 64 TiB)",
                "8:14: size 70368744177665 bytes is more than a ramdisk LUN may have (70368744177664 bytes, 64 TiB)",
            ]
        );
    }

    #[test]
    fn a_target_in_more_portal_groups_than_relative_port_ids_is_refused() {
        // Tags 0..=65535 make 65536 portal groups; a target port's relative identifier is
        // 1..=65535 (SPC-4 7.8.6.5; 0 is reserved), so a target can be in 65535 of them only.
        // The 65536th was numbered 65535 + 1, which wrapped to 0 in a release build.
        let groups: String = (0..=65535u32)
            .map(|t| format!("portal-group p{t} {{ tag {t} }}\n"))
            .collect();
        let listed = |n: u32| -> String {
            let pgs: String = (0..n).map(|t| format!(" portal-group p{t}\n")).collect();
            format!("{groups}target {T} {{\n{pgs}}}\n")
        };
        assert!(errs(&listed(65535)).is_empty());
        assert_eq!(
            errs(&listed(65536)),
            [
                "131073:15: portal-group \"p65535\" is the 65536th of this target: a target is in at most 65535 portal groups (one relative target port identifier each, 1..=65535)"
            ]
        );
    }

    #[test]
    fn portal_group_tags_are_unique_and_enough() {
        let text = "portal-group a { tag 7 }\nportal-group b {\n tag 7 }\nportal-group c { tag 0 }\nportal-group d { tag 0 }";
        assert_eq!(
            errs(text),
            [
                "3:6: tag 7 is already the tag of portal group \"a\" (at 1:22)",
                "5:22: tag 0 is already the tag of portal group \"c\" (at 4:22)",
            ]
        );
        // Tags 1..=65534 written, then two groups without one: only the first gets 65535;
        // an implied `default` (used by the target) is served first and gets it instead.
        let mut text: String = (1..=65534u32)
            .map(|t| format!("portal-group p{t} {{ tag {t} }}\n"))
            .collect();
        text.push_str("portal-group x { }\nportal-group y { }\n");
        assert_eq!(
            errs(&text),
            [
                "65536:14: portal group \"y\" has no tag and none is left to give it: other portal groups hold every tag of 1..=65535"
            ]
        );
        text.push_str(&format!("target {T} {{ }}\n"));
        assert_eq!(
            errs(&text),
            [
                "65535:14: portal group \"x\" has no tag and none is left to give it: other portal groups hold every tag of 1..=65535",
                "65536:14: portal group \"y\" has no tag and none is left to give it: other portal groups hold every tag of 1..=65535",
            ]
        );
        // Tag 0 takes nothing from the tags given out.
        let ok: String = (0..=65534u32)
            .map(|t| format!("portal-group p{t} {{ tag {t} }}\n"))
            .chain(["portal-group x { }\n".to_string()])
            .collect();
        assert!(errs(&ok).is_empty());
    }

    #[test]
    fn two_served_portal_groups_on_one_address_are_refused() {
        let text = format!(
            "portal-group a {{ listen 10.0.0.1:3260\n listen 10.0.0.1 }}\n\
             portal-group b {{ listen 10.0.0.2\n listen 10.0.0.1 }}\n\
             portal-group unused {{ listen 10.0.0.1:3260 }}\n\
             portal-group far {{ foreign\n listen 10.0.0.1:3260 }}\n\
             portal-group c {{ listen 0.0.0.0:3260 }}\n\
             target {T} {{ portal-group a\n portal-group b\n portal-group far }}\n\
             target iqn.2000-01.com.example:u {{ portal-group c }}\n\
             target iqn.2000-01.com.example:v {{ }}"
        );
        assert_eq!(
            errs(&text),
            [
                "1:25: listen 10.0.0.1:3260: portal group \"default\" listens on 0.0.0.0:3260 (at 13:8); a wildcard and an address of its family cannot both be listened on with one port",
                "3:25: listen 10.0.0.2: portal group \"default\" listens on 0.0.0.0:3260 (at 13:8); a wildcard and an address of its family cannot both be listened on with one port",
                "4:9: listen 10.0.0.1: portal group \"a\" listens there too (at 1:25); vitd would serve only one group on an address",
                "8:25: listen 0.0.0.0:3260: portal group \"default\" listens there too (at 13:8); vitd would serve only one group on an address",
            ]
        );
        // A wildcard and an address of its family on one port, in two served groups.
        let text = format!(
            "portal-group a {{ listen 0.0.0.0:3261\n listen [::1]:3262 }}\n\
             portal-group b {{ listen 127.0.0.1:3261\n listen [::]:3261\n listen [::]:3262 }}\n\
             portal-group c {{ listen 10.0.0.1:3261\n listen 0.0.0.0:3261 }}\n\
             target {T} {{ portal-group a\n portal-group b }}\n\
             target iqn.2000-01.com.example:v {{ }}\n\
             target iqn.2000-01.com.example:w {{ portal-group c }}"
        );
        assert_eq!(
            errs(&text),
            [
                "3:25: listen 127.0.0.1:3261: portal group \"a\" listens on 0.0.0.0:3261 (at 1:25); a wildcard and an address of its family cannot both be listened on with one port",
                "5:9: listen [::]:3262: portal group \"a\" listens on [::1]:3262 (at 2:9); a wildcard and an address of its family cannot both be listened on with one port",
                "6:25: listen 10.0.0.1:3261: portal group \"a\" listens on 0.0.0.0:3261 (at 1:25); a wildcard and an address of its family cannot both be listened on with one port",
                "7:9: listen 0.0.0.0:3261: portal group \"a\" listens there too (at 1:25); vitd would serve only one group on an address",
            ]
        );
    }

    #[test]
    fn a_portal_group_is_listed_once_in_a_target() {
        let text = format!(
            "portal-group a {{ listen 127.0.0.1:3261 }}\n\
             target {T} {{ portal-group a\n portal-group a no-access }}"
        );
        assert_eq!(
            errs(&text),
            ["3:15: portal-group \"a\" is listed twice in this target (first at 2:49)"]
        );
    }

    #[test]
    fn a_name_or_alias_names_one_target() {
        let text = "target iqn.2000-01.com.x:a {\n alias iqn.2000-01.com.x:a }\n\
                    target iqn.2000-01.com.x:b {\n alias IQN.2000-01.COM.X:A }\n\
                    target iqn.2000-01.com.x:c {\n alias web }\n\
                    target iqn.2000-01.com.x:d {\n alias web }\n\
                    target iqn.2000-01.com.x:e {\n alias Web }\n\
                    target iqn.2000-01.com.x:f {\n alias IQN.2000-01.com.x:G }\n\
                    target iqn.2000-01.com.x:g { }";
        assert_eq!(
            errs(text),
            [
                "4:8: alias \"IQN.2000-01.COM.X:A\" is the name of the target at 1:8",
                "8:8: alias \"web\" is already the alias of the target at 6:8",
                "13:8: target \"iqn.2000-01.com.x:g\" is named like the alias of the target at 12:8",
            ]
        );
    }

    #[test]
    fn two_luns_on_one_descriptor_are_refused() {
        let text = format!(
            "lun g {{ path u/g.vmdk }}\nlun m {{ backend ramdisk\n size 1M\n path u/m.vmdk }}\n\
             target {T} {{\n lun 0 {{ path u/a.vmdk }}\n lun 1 {{ path u//./a.vmdk }}\n lun 2 g\n lun 3 m }}\n\
             target iqn.2000-01.com.example:u {{\n lun 0 g\n lun 1 m\n lun 2 {{ path u/m.vmdk }} }}"
        );
        assert_eq!(
            errs(&text),
            [
                "7:15: LUN 1: descriptor \"u//./a.vmdk\" is already LUN 0 of target iqn.2000-01.com.example:t (at 6:15); one disk as two LUNs would keep two sets of reservations",
                "11:8: LUN 0: descriptor \"u/g.vmdk\" is already LUN 2 of target iqn.2000-01.com.example:t (at 8:8); one disk as two LUNs would keep two sets of reservations",
            ]
        );
    }

    #[test]
    fn auth_consistency() {
        let text = "auth-group a { chap u s\n chap-mutual a b c d }\n\
                    auth-group b { auth-type none\n chap u s }\n\
                    auth-group c { auth-type chap }\n\
                    auth-group d { auth-type chap-mutual\n chap u s }\n\
                    auth-group e { auth-type deny\n chap-mutual a b c d }\n\
                    auth-group f { auth-type chap-mutual\n chap-mutual a b c d }";
        assert_eq!(
            errs(text),
            [
                "2:2: chap and chap-mutual cannot be mixed in one auth group",
                "3:26: auth-type none conflicts with chap credentials",
                "5:26: auth-type chap needs a `chap USER SECRET` statement",
                "6:26: auth-type chap-mutual needs a `chap-mutual` statement",
                "8:26: auth-type deny conflicts with chap credentials",
            ]
        );
    }

    #[test]
    fn target_auth_group_and_inline_auth_conflict() {
        let text = format!("target {T} {{\n auth-group default\n chap u s\n}}");
        assert_eq!(
            errs(&text),
            ["2:13: a target cannot have both `auth-group` and inline authentication statements"]
        );
        let inline = format!("target {T} {{ auth-type chap\n chap u s\n initiator-group nope }}");
        assert_eq!(
            errs(&inline),
            ["3:18: initiator-group \"nope\" is not defined"]
        );
    }

    #[test]
    fn bad_iscsi_names() {
        let text = "initiator-group g { initiator iqn.2000-13.com.x:i }\n\
                    auth-group a { initiator-name win-host }\n\
                    target eui.123 { }";
        assert_eq!(
            errs(text),
            [
                "1:31: initiator \"iqn.2000-13.com.x:i\": IQN date has month 13, expected 01..12",
                "2:31: initiator-name \"win-host\": \"win-host\" is not an iSCSI name: expected iqn., eui. or naa.",
                "3:8: target name \"eui.123\": eui. name has 3 hex digits, expected 16",
            ]
        );
    }

    #[test]
    fn listen_addresses() {
        let text = "portal-group p {\n listen 0.0.0.0:0\n listen 1.2.3.4:65536\n listen [::1\n listen 300.1.1.1\n\
                    listen vmk0:\n listen-iser 1:2:3:x\n listen [::1]x\n listen eth0:3260\n listen ::\n}";
        assert_eq!(
            errs(text),
            [
                "2:9: listen address: port 0 is out of range 1..=65535",
                "3:9: listen address: port 65536 is out of range 1..=65535",
                "4:9: listen address: \"[::1\": missing `]`",
                "5:9: listen address: \"300.1.1.1\" is not an IPv4 address, host name or interface name",
                "6:8: listen address: port \"\" is not a number",
                "7:14: listen address: \"1:2:3:x\" is not an IPv6 address (write [ADDR]:PORT)",
                "8:9: listen address: \"[::1]x\": expected `:PORT` after `]`",
            ]
        );
    }

    #[test]
    fn initiator_portals() {
        let text = "auth-group a {\n initiator-portal 10.0.0.0/8\n initiator-portal [fe80::]/10\n initiator-portal ::1\n\
                    initiator-portal 10.0.0.0/33\n initiator-portal host/24\n initiator-portal 1.2.3.4/-1\n}";
        assert_eq!(
            errs(text),
            [
                "5:18: initiator-portal: prefix length \"33\" is not a number in 0..=32",
                "6:19: initiator-portal: \"host\" is not an IP address",
                "7:19: initiator-portal: prefix length \"-1\" is not a number in 0..=32",
            ]
        );
    }

    #[test]
    fn initiator_portal_matching() {
        let p = |s: &str| InitiatorPortal::parse(s).unwrap();
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert!(p("10.0.0.0/8").contains(ip("10.200.1.1")));
        assert!(!p("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(p("0.0.0.0/0").contains(ip("1.2.3.4")));
        assert!(p("1.2.3.4").contains(ip("1.2.3.4")) && !p("1.2.3.4").contains(ip("1.2.3.5")));
        assert!(p("10.0.0.0/8").contains(ip("::ffff:10.1.2.3")));
        assert!(
            p("[fe80::]/10").contains(ip("fe80::1")) && !p("[fe80::]/10").contains(ip("fec0::1"))
        );
        assert!(p("::/0").contains(ip("2001:db8::1")) && !p("::/0").contains(ip("1.2.3.4")));
    }

    #[test]
    fn ipv4_mapped_initiator_portals_are_ipv4_networks() {
        let p = |s: &str| InitiatorPortal::parse(s).unwrap();
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let host = p("::ffff:10.0.0.1");
        assert!(host.contains(ip("10.0.0.1")) && host.contains(ip("::ffff:10.0.0.1")));
        assert!(!host.contains(ip("10.0.0.2")) && !host.contains(ip("192.168.1.1")));
        assert!(!host.contains(ip("2001:db8::1")));
        let net = p("[::ffff:10.0.0.0]/104");
        assert!(net.contains(ip("10.200.1.1")) && !net.contains(ip("11.0.0.1")));
        let all = p("::ffff:0.0.0.0/96");
        assert!(all.contains(ip("1.2.3.4")) && !all.contains(ip("2001:db8::1")));
        // A model built without `parse`: a mapped prefix shorter than 96 admits nothing.
        let short = InitiatorPortal {
            addr: ip("::ffff:10.0.0.0"),
            prefix_len: 64,
        };
        assert!(!short.contains(ip("10.0.0.1")) && !short.contains(ip("1.2.3.4")));
        let text = "auth-group a {\n initiator-portal ::ffff:10.0.0.1\n initiator-portal [::ffff:10.0.0.0]/104\n\
                    initiator-portal ::ffff:10.0.0.0/64\n}";
        assert_eq!(
            errs(text),
            [
                "4:18: initiator-portal: \"::ffff:10.0.0.0/64\": an IPv4-mapped address takes a prefix length of 96..=128 (96 + the IPv4 prefix length)"
            ]
        );
    }

    #[test]
    fn listen_addr_parsing() {
        use std::net::IpAddr;
        let p = |s: &str| ListenAddr::parse(s).unwrap();
        assert_eq!(
            p("vmk0:3260"),
            ListenAddr {
                host: ListenHost::Name("vmk0".into()),
                port: 3260
            }
        );
        assert_eq!(
            p("0.0.0.0"),
            ListenAddr {
                host: ListenHost::Ip("0.0.0.0".parse::<IpAddr>().unwrap()),
                port: 3260
            }
        );
        assert_eq!(
            p("[::]:3261"),
            ListenAddr {
                host: ListenHost::Ip("::".parse::<IpAddr>().unwrap()),
                port: 3261
            }
        );
        assert_eq!(p("fe80::1").port, 3260);
    }

    #[test]
    fn built_models_with_unwritable_values_are_refused() {
        let mut cfg = parse("target iqn.2000-01.com.x:a {\n alias x\n lun 0 { serial s }\n}\nportal-group p { pcp 1 }", "b")
            .unwrap();
        cfg.targets[0].alias.as_mut().unwrap().name = "a\"b".into();
        let LunRef::Inline(body) = &mut cfg.targets[0].luns[0].lun else {
            panic!("inline")
        };
        body.serial.as_mut().unwrap().name = String::new();
        cfg.portal_groups[0].pcp.as_mut().unwrap().0 = 8;
        cfg.pidfile = Some("a\nb".into());
        let e: Vec<String> = verify(&cfg, "b")
            .iter()
            .map(|e| format!("{}:{}: {}", e.line, e.col, e.msg))
            .collect();
        assert_eq!(
            e,
            [
                "0:0: pidfile \"a\\nb\" cannot be written in vit.conf (empty, or holds `\"` or a control character)",
                "2:8: value \"a\\\"b\" cannot be written in vit.conf (empty, or holds `\"` or a control character)",
                "3:17: value \"\" cannot be written in vit.conf (empty, or holds `\"` or a control character)",
                "5:22: pcp 8 is out of range 0..=7",
            ]
        );
    }

    /// ctld's `dscp` values: numbers, hexadecimal, and the codepoints' names; anything else is
    /// refused where it is written (it was taken unchecked, and never applied).
    #[test]
    fn dscp_values_are_codepoints() {
        for (v, n) in [
            ("0", 0),
            ("46", 46),
            ("0x2e", 46),
            ("be", 0),
            ("EF", 46),
            ("cs0", 0),
            ("cs7", 56),
            ("af11", 10),
            ("af43", 38),
        ] {
            assert_eq!(crate::config::dscp_codepoint(v), Some(n), "{v}");
            assert!(
                errs(&format!("portal-group p {{ dscp {v} }}")).is_empty(),
                "{v}"
            );
        }
        for v in ["64", "0x40", "cs8", "af44", "af51", "af1", "ef1", "-1", "x"] {
            assert_eq!(crate::config::dscp_codepoint(v), None, "{v}");
        }
        assert_eq!(
            errs("portal-group p {\n dscp af44\n}"),
            [
                "2:7: dscp \"af44\" is no DiffServ codepoint (0..63, 0x00..0x3f, be, ef, cs0..cs7, af11..af43)"
            ]
        );
    }

    #[test]
    fn duplicate_uuid_option() {
        let text = "target iqn.2000-01.com.x:a { option uuid ABC }\ntarget iqn.2000-01.com.x:b { option uuid abc }";
        assert_eq!(
            errs(text),
            ["2:30: option uuid abc is already used by the target at 1:30"]
        );
    }

    /// The warnings of a vit.conf `text` that loads (as ctld's would), as vitd logs them.
    fn warning_texts(text: &str) -> Vec<String> {
        let cfg = load(text, "v.conf").expect("ctld loads it: so does vit");
        warnings(&cfg, "v.conf")
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn chap_mutual_with_one_secret_for_both_directions_is_loaded_with_a_warning() {
        let text = format!(
            "auth-group ag {{\n chap-mutual u samesecret12 tgt samesecret12\n \
             chap-mutual v vsecret12345 tgt tsecret12345\n}}\n\
             target {T} {{\n chap-mutual w wsecret12345 tgt2 wsecret12345\n}}"
        );
        let w = warning_texts(&text);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].starts_with("v.conf:2:2: auth-group \"ag\": `chap-mutual` for user \"u\""),
            "{w:?}"
        );
        assert!(
            w[1].starts_with(&format!(
                "v.conf:6:2: target \"{T}\": `chap-mutual` for user \"w\""
            )),
            "{w:?}"
        );
        assert!(
            w.iter().all(|m| !m.contains("secret12")),
            "no secret in the log: {w:?}"
        );
        let text = "auth-group ag { chap-mutual v vsecret12345 tgt tsecret12345 }";
        assert!(warnings(&load(text, "v.conf").unwrap(), "v.conf").is_empty());
    }

    /// ctld warns of a CHAP secret outside 12..16 bytes; vitd said nothing of one written into
    /// vit.conf by hand (vitctl warns only of the ones it writes).
    #[test]
    fn chap_secrets_outside_12_to_16_bytes_are_loaded_with_a_warning() {
        let text = format!(
            "auth-group ag {{\n chap short shortsecret\n chap ok justright1234\n}}\n\
             target {T} {{\n chap-mutual u usersecret123 tgt muchtoolongsecret\n}}"
        );
        let w = warning_texts(&text);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].starts_with(
                "v.conf:2:2: auth-group \"ag\": the secret of `chap` for user \"short\" is 11 bytes"
            ),
            "{w:?}"
        );
        assert!(
            w[1].starts_with(&format!(
                "v.conf:6:2: target \"{T}\": the mutual secret of `chap-mutual` for user \"u\" is 17 bytes"
            )),
            "{w:?}"
        );
        assert!(
            w.iter().all(|m| !m.contains("secret1")),
            "no secret in the log: {w:?}"
        );
    }

    #[test]
    fn errors_come_in_file_order() {
        // Auth groups are checked before LUNs, so the line-3 error is found first yet sorts last.
        let text = "lun l { blocksize 1 }\ntarget bad { }\nauth-group a { auth-type chap }";
        let e = errs(text);
        assert_eq!(e.len(), 3);
        assert!(
            e[0].starts_with("1:") && e[1].starts_with("2:") && e[2].starts_with("3:"),
            "{e:?}"
        );
    }

    #[test]
    fn load_returns_syntax_error_or_all_semantic_errors() {
        let e = load("debug", "f").unwrap_err();
        assert_eq!(e.len(), 1);
        let e = load("target a { }\ntarget b { }", "f").unwrap_err();
        assert_eq!(e.len(), 2);
        assert_eq!(
            e[1].to_string(),
            "f:2:8: target name \"b\": \"b\" is not an iSCSI name: expected iqn., eui. or naa."
        );
    }
}
