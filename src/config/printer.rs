//! The canonical text of a [`Config`]: globals, initiator groups, auth groups, portal groups,
//! named LUNs, targets; one statement per line, tabs inside blocks, no `;`.

use std::borrow::Cow;

use super::lexer::is_word;
use super::model::*;

/// Whether `s` can be written in a vit.conf: non-empty, no `"`, no control characters
/// (newlines included). Values that are not plain words are written quoted.
pub fn is_printable_value(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| c == '"' || c.is_control())
}

/// Prints `cfg` as canonical vit.conf text. For every model that [`super::verify()`] accepts and
/// whose strings are printable, the text parses back to an equal model.
pub fn print(cfg: &Config) -> String {
    let mut p = Printer {
        out: String::new(),
        depth: 0,
    };
    p.globals(cfg);
    for g in &cfg.initiator_groups {
        p.open(&["initiator-group", &word(&g.name)]);
        for i in &g.initiators {
            p.stmt(&["initiator", &word(&i.name)]);
        }
        p.close();
    }
    for g in &cfg.auth_groups {
        p.open(&["auth-group", &word(&g.name)]);
        p.auth(&g.auth);
        p.close();
    }
    for g in &cfg.portal_groups {
        p.portal_group(g);
    }
    for l in &cfg.luns {
        p.open(&["lun", &word(&l.name)]);
        p.lun_body(&l.body);
        p.close();
    }
    for t in &cfg.targets {
        p.target(t);
    }
    p.out
}

/// `s` as a word if it lexes as one, else quoted.
fn word(s: &str) -> Cow<'_, str> {
    if is_word(s) {
        Cow::Borrowed(s)
    } else {
        quoted(s)
    }
}

fn quoted(s: &str) -> Cow<'_, str> {
    Cow::Owned(format!("\"{s}\""))
}

struct Printer {
    out: String,
    depth: usize,
}

impl Printer {
    fn stmt(&mut self, words: &[&str]) {
        for _ in 0..self.depth {
            self.out.push('\t');
        }
        self.out.push_str(&words.join(" "));
        self.out.push('\n');
    }

    fn open(&mut self, words: &[&str]) {
        let mut w = words.to_vec();
        w.push("{");
        self.stmt(&w);
        self.depth += 1;
    }

    fn close(&mut self) {
        self.depth = self.depth.saturating_sub(1);
        self.stmt(&["}"]);
    }

    fn num(&mut self, kw: &str, n: Option<u64>) {
        if let Some(n) = n {
            self.stmt(&[kw, &n.to_string()]);
        }
    }

    fn named(&mut self, kw: &str, v: &Option<Named>) {
        if let Some(v) = v {
            self.stmt(&[kw, &word(&v.name)]);
        }
    }

    fn each(&mut self, kw: &str, vs: &[Named]) {
        for v in vs {
            self.stmt(&[kw, &word(&v.name)]);
        }
    }

    fn options(&mut self, opts: &[Opt]) {
        for o in opts {
            // VMware writes lun-alias quoted, like a target alias.
            let value = if o.name == "lun-alias" {
                quoted(&o.value)
            } else {
                word(&o.value)
            };
            self.stmt(&["option", &word(&o.name), &value]);
        }
    }

    fn globals(&mut self, cfg: &Config) {
        self.num("generation", cfg.generation);
        self.num("debug", cfg.debug);
        self.num("timeout", cfg.timeout);
        self.num("maxproc", cfg.maxproc);
        if let Some(p) = &cfg.pidfile {
            self.stmt(&["pidfile", &word(p)]);
        }
        for s in &cfg.isns_servers {
            self.stmt(&["isns-server", &word(s)]);
        }
        self.num("isns-period", cfg.isns_period);
        self.num("isns-timeout", cfg.isns_timeout);
    }

    fn auth(&mut self, a: &AuthSettings) {
        if let Some((t, _)) = a.auth_type {
            self.stmt(&["auth-type", t.as_str()]);
        }
        for c in &a.chap {
            self.stmt(&["chap", &word(&c.user), &word(&c.secret)]);
        }
        for c in &a.chap_mutual {
            self.stmt(&[
                "chap-mutual",
                &word(&c.user),
                &word(&c.secret),
                &word(&c.mutual_user),
                &word(&c.mutual_secret),
            ]);
        }
        self.each("initiator-name", &a.initiator_names);
        self.each("initiator-portal", &a.initiator_portals);
        self.each("initiator-group", &a.initiator_groups);
    }

    fn portal_group(&mut self, g: &PortalGroup) {
        self.open(&["portal-group", &word(&g.name)]);
        self.named("discovery-auth-group", &g.discovery_auth_group);
        if let Some((f, _)) = g.discovery_filter {
            self.stmt(&["discovery-filter", f.as_str()]);
        }
        self.each("listen", &g.listen);
        self.each("listen-iser", &g.listen_iser);
        self.named("offload", &g.offload);
        self.options(&g.options);
        self.named("redirect", &g.redirect);
        self.num("tag", g.tag.map(|(t, _)| u64::from(t)));
        if g.foreign {
            self.stmt(&["foreign"]);
        }
        self.named("dscp", &g.dscp);
        self.num("pcp", g.pcp.map(|(p, _)| u64::from(p)));
        self.close();
    }

    fn target(&mut self, t: &Target) {
        self.open(&["target", &word(&t.name)]);
        if let Some(a) = &t.alias {
            self.stmt(&["alias", &quoted(&a.name)]);
        }
        for pg in &t.portal_groups {
            let name = word(&pg.portal_group.name);
            match &pg.auth_group {
                Some(ag) => self.stmt(&["portal-group", &name, &word(&ag.name)]),
                None => self.stmt(&["portal-group", &name]),
            }
        }
        self.each("port", &t.ports);
        self.named("auth-group", &t.auth_group);
        self.auth(&t.auth);
        self.named("redirect", &t.redirect);
        self.options(&t.options);
        for l in &t.luns {
            let id = l.id.to_string();
            match &l.lun {
                LunRef::Named(n) => self.stmt(&["lun", &id, &word(&n.name)]),
                LunRef::Inline(body) => {
                    self.open(&["lun", &id]);
                    self.lun_body(body);
                    self.close();
                }
            }
        }
        self.close();
    }

    fn lun_body(&mut self, b: &LunBody) {
        if let Some((be, _)) = b.backend {
            self.stmt(&["backend", be.as_str()]);
        }
        self.num("blocksize", b.blocksize.map(|(n, _)| n));
        self.num("ctl-lun", b.ctl_lun.map(|(n, _)| n));
        self.named("device-id", &b.device_id);
        self.named("device-type", &b.device_type);
        self.named("path", &b.path);
        self.named("serial", &b.serial);
        if let Some((bytes, _)) = b.size {
            self.stmt(&["size", &size_text(bytes)]);
        }
        self.options(&b.options);
    }
}

/// A byte count as a `size` value: bare KiB when whole, else bytes with `B`.
fn size_text(bytes: u64) -> String {
    if bytes.is_multiple_of(1024) {
        (bytes / 1024).to_string()
    } else {
        format!("{bytes}B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_values() {
        assert!(is_printable_value("a b\u{a0}é#{}"));
        assert!(!is_printable_value(""));
        assert!(!is_printable_value("a\"b"));
        assert!(!is_printable_value("a\nb"));
        assert!(!is_printable_value("a\tb"));
        assert!(!is_printable_value("\u{85}"));
    }

    #[test]
    fn words_stay_bare_and_others_are_quoted() {
        assert_eq!(word("vmk0:3260"), "vmk0:3260");
        assert_eq!(word("a b"), "\"a b\"");
        assert_eq!(word("#x"), "\"#x\"");
    }

    #[test]
    fn sizes_print_as_kib_or_bytes() {
        assert_eq!(size_text(6 << 30), "6291456");
        assert_eq!(size_text(0), "0");
        assert_eq!(size_text(1025), "1025B");
        assert_eq!(size_text(u64::MAX), format!("{}B", u64::MAX));
    }

    #[test]
    fn canonical_layout() {
        let mut cfg = Config {
            generation: Some(3),
            ..Config::default()
        };
        let mut body = LunBody {
            backend: Some((Backend::Vmdk, Pos::default())),
            ..LunBody::default()
        };
        body.path = Some(Named::new("t/l.vmdk"));
        body.size = Some((2 << 30, Pos::default()));
        body.options.push(Opt {
            name: "lun-alias".into(),
            value: "x".into(),
            pos: Pos::default(),
        });
        cfg.targets.push(Target {
            name: "iqn.2026-11.io.vit:t".into(),
            pos: Pos::default(),
            alias: Some(Named::new("al")),
            auth_group: Some(Named::new("no-authentication")),
            auth: AuthSettings::default(),
            portal_groups: vec![TargetPortalGroup {
                portal_group: Named::new("default"),
                auth_group: Some(Named::new("ag x")),
            }],
            ports: Vec::new(),
            redirect: None,
            options: vec![Opt {
                name: "uuid".into(),
                value: "u-1".into(),
                pos: Pos::default(),
            }],
            luns: vec![TargetLun {
                id: 0,
                pos: Pos::default(),
                lun: LunRef::Inline(body),
            }],
        });
        let expected = "generation 3\n\
            target iqn.2026-11.io.vit:t {\n\
            \talias \"al\"\n\
            \tportal-group default \"ag x\"\n\
            \tauth-group no-authentication\n\
            \toption uuid u-1\n\
            \tlun 0 {\n\
            \t\tbackend vmdk\n\
            \t\tpath t/l.vmdk\n\
            \t\tsize 2097152\n\
            \t\toption lun-alias \"x\"\n\
            \t}\n\
            }\n";
        assert_eq!(print(&cfg), expected);
    }
}
