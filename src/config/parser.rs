//! Recursive-descent parser from tokens to the [`Config`] model.
//!
//! Newlines carry no meaning except in one place: the optional second argument of a target's
//! `portal-group NAME [AUTH-GROUP]` is taken only when it is on the same line as `NAME`.
//! Every statement may end with one `;`. Scalar statements may be given once per block;
//! unknown statements are errors.

use super::lexer::{Lexer, Tok, Token};
use super::model::*;
use super::{ConfigError, MAX_CONFIG_BYTES};

type PResult<T> = Result<T, ConfigError>;

/// Parses a whole file (see [`super::parse`]).
pub(crate) fn parse(text: &str, file: &str) -> PResult<Config> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::at(
            file,
            Pos { line: 1, col: 1 },
            format!(
                "file is {} bytes, more than the limit of {MAX_CONFIG_BYTES}",
                text.len()
            ),
        ));
    }
    let mut p = Parser {
        lex: Lexer::new(text),
        peeked: None,
        file,
    };
    p.config()
}

struct Parser<'a> {
    lex: Lexer<'a>,
    peeked: Option<Token>,
    file: &'a str,
}

/// Stores `value` in a scalar slot, refusing a second occurrence of the statement.
fn set_once<T>(p: &Parser<'_>, slot: &mut Option<T>, value: T, kw: &str, pos: Pos) -> PResult<()> {
    if slot.is_some() {
        return Err(p.err(pos, format!("`{kw}` is given twice in one block")));
    }
    *slot = Some(value);
    Ok(())
}

/// Multiplier of a `size` suffix (a bare number is KiB).
fn size_unit(suffix: &str) -> Option<u64> {
    Some(match suffix {
        "" | "k" | "K" => 1 << 10,
        "b" | "B" => 1,
        "m" | "M" => 1 << 20,
        "g" | "G" => 1 << 30,
        "t" | "T" => 1 << 40,
        _ => return None,
    })
}

/// Parses a plain decimal number (no sign, no suffix).
fn decimal(s: &str) -> Result<u64, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("\"{s}\" is not a decimal number"));
    }
    s.parse::<u64>()
        .map_err(|_| format!("number {s} is too large"))
}

/// Parses a `size` value into bytes.
pub(crate) fn size_bytes(s: &str) -> Result<u64, String> {
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, suffix) = s.split_at(digits_end);
    let malformed =
        || format!("size \"{s}\": expected a number with optional suffix K, M, G, T or B");
    let unit = size_unit(suffix).ok_or_else(malformed)?;
    let n = decimal(digits).map_err(|_| malformed())?;
    n.checked_mul(unit)
        .ok_or_else(|| format!("size \"{s}\" is too large (more than 2^64 bytes)"))
}

impl<'a> Parser<'a> {
    fn err(&self, pos: Pos, msg: impl Into<String>) -> ConfigError {
        ConfigError::at(self.file, pos, msg)
    }

    fn next(&mut self) -> PResult<Token> {
        if let Some(t) = self.peeked.take() {
            return Ok(t);
        }
        self.lex
            .next_token()
            .map_err(|e| ConfigError::at(self.file, e.pos, e.msg))
    }

    fn peek(&mut self) -> PResult<&Token> {
        let t = match self.peeked.take() {
            Some(t) => t,
            None => self.next()?,
        };
        Ok(self.peeked.insert(t))
    }

    /// Consumes one optional `;` ending a statement.
    fn end_statement(&mut self) -> PResult<()> {
        if self.peek()?.kind == Tok::Semi {
            self.next()?;
        }
        Ok(())
    }

    /// A word or non-empty quoted string: the argument `what` of statement `kw`.
    fn value(&mut self, kw: &str, what: &str) -> PResult<(String, Pos)> {
        let t = self.next()?;
        match t.kind {
            Tok::Word(w) => Ok((w, t.pos)),
            Tok::Str(s) if !s.is_empty() => Ok((s, t.pos)),
            Tok::Str(_) => Err(self.err(t.pos, format!("`{kw}`: {what} must not be empty"))),
            other => Err(self.err(
                t.pos,
                format!("`{kw}`: expected {what}, found {}", other.describe()),
            )),
        }
    }

    fn named(&mut self, kw: &str, what: &str) -> PResult<Named> {
        let (name, pos) = self.value(kw, what)?;
        Ok(Named { name, pos })
    }

    /// A plain decimal number.
    fn number(&mut self, kw: &str) -> PResult<(u64, Pos)> {
        let t = self.next()?;
        match t.kind {
            Tok::Word(w) => decimal(&w)
                .map(|n| (n, t.pos))
                .map_err(|m| self.err(t.pos, format!("`{kw}`: {m}"))),
            other => Err(self.err(
                t.pos,
                format!("`{kw}`: expected a number, found {}", other.describe()),
            )),
        }
    }

    /// A number no larger than `max`.
    fn bounded(&mut self, kw: &str, max: u64) -> PResult<(u64, Pos)> {
        let (n, pos) = self.number(kw)?;
        if n > max {
            return Err(self.err(pos, format!("`{kw}`: {n} is out of range 0..={max}")));
        }
        Ok((n, pos))
    }

    fn open_brace(&mut self, kw: &str) -> PResult<Pos> {
        let t = self.next()?;
        match t.kind {
            Tok::LBrace => Ok(t.pos),
            other => Err(self.err(
                t.pos,
                format!("`{kw}`: expected `{{`, found {}", other.describe()),
            )),
        }
    }

    /// Parses statements up to the closing `}` of a block opened at `open`, handing each
    /// statement keyword to `stmt`.
    fn block(
        &mut self,
        what: &str,
        open: Pos,
        mut stmt: impl FnMut(&mut Self, &str, Pos) -> PResult<()>,
    ) -> PResult<()> {
        loop {
            let t = self.next()?;
            match t.kind {
                Tok::RBrace => return self.end_statement(),
                Tok::Word(kw) => {
                    stmt(self, &kw, t.pos)?;
                    self.end_statement()?;
                }
                Tok::Eof => {
                    return Err(self.err(
                        t.pos,
                        format!("unexpected end of file: the {what} block opened at {}:{} is not closed", open.line, open.col),
                    ));
                }
                other => {
                    return Err(self.err(
                        t.pos,
                        format!(
                            "expected a statement or `}}` in {what} block, found {}",
                            other.describe()
                        ),
                    ));
                }
            }
        }
    }

    fn unknown(&self, kw: &str, pos: Pos, what: &str) -> ConfigError {
        self.err(pos, format!("unknown statement \"{kw}\" in {what}"))
    }

    fn config(&mut self) -> PResult<Config> {
        let mut cfg = Config::default();
        loop {
            let t = self.next()?;
            match t.kind {
                Tok::Eof => return Ok(cfg),
                Tok::Word(kw) => {
                    self.global_statement(&mut cfg, &kw, t.pos)?;
                    self.end_statement()?;
                }
                other => {
                    return Err(self.err(
                        t.pos,
                        format!("expected a statement, found {}", other.describe()),
                    ));
                }
            }
        }
    }

    fn global_statement(&mut self, cfg: &mut Config, kw: &str, pos: Pos) -> PResult<()> {
        match kw {
            "generation" => {
                let (n, _) = self.number(kw)?;
                set_once(self, &mut cfg.generation, n, kw, pos)
            }
            "debug" => {
                let (n, _) = self.number(kw)?;
                set_once(self, &mut cfg.debug, n, kw, pos)
            }
            "timeout" => {
                let (n, _) = self.number(kw)?;
                set_once(self, &mut cfg.timeout, n, kw, pos)
            }
            "maxproc" => {
                let (n, _) = self.number(kw)?;
                set_once(self, &mut cfg.maxproc, n, kw, pos)
            }
            "pidfile" => {
                let (v, _) = self.value(kw, "a path")?;
                set_once(self, &mut cfg.pidfile, v, kw, pos)
            }
            "isns-server" => {
                let (v, _) = self.value(kw, "an address")?;
                cfg.isns_servers.push(v);
                Ok(())
            }
            "isns-period" => {
                let (n, _) = self.number(kw)?;
                set_once(self, &mut cfg.isns_period, n, kw, pos)
            }
            "isns-timeout" => {
                let (n, _) = self.number(kw)?;
                set_once(self, &mut cfg.isns_timeout, n, kw, pos)
            }
            "initiator-group" => {
                let g = self.initiator_group(kw)?;
                cfg.initiator_groups.push(g);
                Ok(())
            }
            "auth-group" => {
                let g = self.auth_group(kw)?;
                cfg.auth_groups.push(g);
                Ok(())
            }
            "portal-group" => {
                let g = self.portal_group(kw)?;
                cfg.portal_groups.push(g);
                Ok(())
            }
            "lun" => {
                let (name, npos) = self.value(kw, "a LUN name")?;
                let open = self.open_brace(kw)?;
                let body = self.lun_body(open)?;
                cfg.luns.push(Lun {
                    name,
                    pos: npos,
                    body,
                });
                Ok(())
            }
            "target" => {
                let t = self.target(kw)?;
                cfg.targets.push(t);
                Ok(())
            }
            _ => Err(self.unknown(kw, pos, "the global section")),
        }
    }

    fn initiator_group(&mut self, kw: &str) -> PResult<InitiatorGroup> {
        let (name, pos) = self.value(kw, "a group name")?;
        let open = self.open_brace(kw)?;
        let mut g = InitiatorGroup {
            name,
            pos,
            initiators: Vec::new(),
        };
        self.block("initiator-group", open, |p, kw, pos| match kw {
            "initiator" => {
                g.initiators.push(p.named(kw, "an initiator name")?);
                Ok(())
            }
            _ => Err(p.unknown(kw, pos, "an initiator-group block")),
        })?;
        Ok(g)
    }

    fn auth_group(&mut self, kw: &str) -> PResult<AuthGroup> {
        let (name, pos) = self.value(kw, "a group name")?;
        let open = self.open_brace(kw)?;
        let mut auth = AuthSettings::default();
        self.block("auth-group", open, |p, kw, pos| {
            if p.auth_statement(&mut auth, kw, pos)? {
                Ok(())
            } else {
                Err(p.unknown(kw, pos, "an auth-group block"))
            }
        })?;
        Ok(AuthGroup { name, pos, auth })
    }

    /// Parses one authentication statement into `auth`; `false` if `kw` is not one.
    fn auth_statement(&mut self, auth: &mut AuthSettings, kw: &str, pos: Pos) -> PResult<bool> {
        match kw {
            "auth-type" => {
                let (v, vpos) = self.value(kw, "an auth type")?;
                let ty = AuthType::parse(&v).ok_or_else(|| {
                    self.err(
                        vpos,
                        format!("`auth-type`: \"{v}\" is not one of none, deny, chap, chap-mutual"),
                    )
                })?;
                set_once(self, &mut auth.auth_type, (ty, vpos), kw, pos)?;
            }
            "chap" => {
                let (user, _) = self.value(kw, "a user name")?;
                let (secret, _) = self.value(kw, "a secret")?;
                auth.chap.push(Chap { user, secret, pos });
            }
            "chap-mutual" => {
                let (user, _) = self.value(kw, "a user name")?;
                let (secret, _) = self.value(kw, "a secret")?;
                let (mutual_user, _) = self.value(kw, "a mutual user name")?;
                let (mutual_secret, _) = self.value(kw, "a mutual secret")?;
                auth.chap_mutual.push(ChapMutual {
                    user,
                    secret,
                    mutual_user,
                    mutual_secret,
                    pos,
                });
            }
            "initiator-name" => auth
                .initiator_names
                .push(self.named(kw, "an initiator name")?),
            "initiator-portal" => auth.initiator_portals.push(self.named(kw, "an address")?),
            "initiator-group" => auth
                .initiator_groups
                .push(self.named(kw, "an initiator-group name")?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn portal_group(&mut self, kw: &str) -> PResult<PortalGroup> {
        let (name, pos) = self.value(kw, "a group name")?;
        let open = self.open_brace(kw)?;
        let mut g = PortalGroup {
            name,
            pos,
            ..PortalGroup::default()
        };
        self.block("portal-group", open, |p, kw, pos| {
            p.portal_group_statement(&mut g, kw, pos)
        })?;
        Ok(g)
    }

    fn portal_group_statement(&mut self, g: &mut PortalGroup, kw: &str, pos: Pos) -> PResult<()> {
        match kw {
            "discovery-auth-group" => {
                let v = self.named(kw, "an auth-group name")?;
                set_once(self, &mut g.discovery_auth_group, v, kw, pos)
            }
            "discovery-filter" => {
                let (v, vpos) = self.value(kw, "a filter")?;
                let f = DiscoveryFilter::parse(&v).ok_or_else(|| {
                    self.err(vpos, format!("`discovery-filter`: \"{v}\" is not one of none, portal, portal-name, portal-name-auth"))
                })?;
                set_once(self, &mut g.discovery_filter, (f, vpos), kw, pos)
            }
            "listen" => {
                g.listen.push(self.named(kw, "an address")?);
                Ok(())
            }
            "listen-iser" => {
                g.listen_iser.push(self.named(kw, "an address")?);
                Ok(())
            }
            "offload" => {
                let v = self.named(kw, "a driver name")?;
                set_once(self, &mut g.offload, v, kw, pos)
            }
            "option" => {
                let o = self.option(kw, pos)?;
                g.options.push(o);
                Ok(())
            }
            "redirect" => {
                let v = self.named(kw, "an address")?;
                set_once(self, &mut g.redirect, v, kw, pos)
            }
            "tag" => {
                let (n, npos) = self.bounded(kw, u64::from(u16::MAX))?;
                let n = u16::try_from(n).map_err(|_| self.err(npos, "`tag`: out of range"))?;
                set_once(self, &mut g.tag, (n, npos), kw, pos)
            }
            "foreign" => {
                if g.foreign {
                    return Err(self.err(pos, "`foreign` is given twice in one block"));
                }
                g.foreign = true;
                Ok(())
            }
            "dscp" => {
                let v = self.named(kw, "a DSCP value")?;
                set_once(self, &mut g.dscp, v, kw, pos)
            }
            "pcp" => {
                let (n, npos) = self.bounded(kw, 7)?;
                let n = u8::try_from(n).map_err(|_| self.err(npos, "`pcp`: out of range"))?;
                set_once(self, &mut g.pcp, (n, npos), kw, pos)
            }
            _ => Err(self.unknown(kw, pos, "a portal-group block")),
        }
    }

    fn option(&mut self, kw: &str, pos: Pos) -> PResult<Opt> {
        let (name, _) = self.value(kw, "an option name")?;
        let (value, _) = self.value(kw, "an option value")?;
        Ok(Opt { name, value, pos })
    }

    fn target(&mut self, kw: &str) -> PResult<Target> {
        let (name, pos) = self.value(kw, "a target name")?;
        let open = self.open_brace(kw)?;
        let mut t = Target {
            name,
            pos,
            alias: None,
            auth_group: None,
            auth: AuthSettings::default(),
            portal_groups: Vec::new(),
            ports: Vec::new(),
            redirect: None,
            options: Vec::new(),
            luns: Vec::new(),
        };
        self.block("target", open, |p, kw, pos| {
            p.target_statement(&mut t, kw, pos)
        })?;
        Ok(t)
    }

    fn target_statement(&mut self, t: &mut Target, kw: &str, pos: Pos) -> PResult<()> {
        if self.auth_statement(&mut t.auth, kw, pos)? {
            return Ok(());
        }
        match kw {
            "alias" => {
                let v = self.named(kw, "an alias")?;
                set_once(self, &mut t.alias, v, kw, pos)
            }
            "auth-group" => {
                let v = self.named(kw, "an auth-group name")?;
                set_once(self, &mut t.auth_group, v, kw, pos)
            }
            "portal-group" => {
                let portal_group = self.named(kw, "a portal-group name")?;
                let auth_group = self.same_line_value(portal_group.pos.line)?;
                t.portal_groups.push(TargetPortalGroup {
                    portal_group,
                    auth_group,
                });
                Ok(())
            }
            "port" => {
                t.ports.push(self.named(kw, "a port name")?);
                Ok(())
            }
            "redirect" => {
                let v = self.named(kw, "an address")?;
                set_once(self, &mut t.redirect, v, kw, pos)
            }
            "option" => {
                let o = self.option(kw, pos)?;
                t.options.push(o);
                Ok(())
            }
            "lun" => {
                let (id, id_pos) = self.number(kw)?;
                let lun = if self.peek()?.kind == Tok::LBrace {
                    let open = self.open_brace(kw)?;
                    LunRef::Inline(self.lun_body(open)?)
                } else {
                    LunRef::Named(self.named(kw, "a LUN name or `{`")?)
                };
                t.luns.push(TargetLun {
                    id,
                    pos: id_pos,
                    lun,
                });
                Ok(())
            }
            _ => Err(self.unknown(kw, pos, "a target block")),
        }
    }

    /// An optional extra argument: a word or string that starts on `line`.
    fn same_line_value(&mut self, line: u32) -> PResult<Option<Named>> {
        let t = self.peek()?;
        let on_line = t.pos.line == line;
        match &t.kind {
            Tok::Word(_) | Tok::Str(_) if on_line => {
                Ok(Some(self.named("portal-group", "an auth-group name")?))
            }
            _ => Ok(None),
        }
    }

    fn lun_body(&mut self, open: Pos) -> PResult<LunBody> {
        let mut b = LunBody {
            pos: open,
            ..LunBody::default()
        };
        self.block("lun", open, |p, kw, pos| p.lun_statement(&mut b, kw, pos))?;
        Ok(b)
    }

    fn lun_statement(&mut self, b: &mut LunBody, kw: &str, pos: Pos) -> PResult<()> {
        match kw {
            "backend" => {
                let (v, vpos) = self.value(kw, "a backend")?;
                let be = Backend::parse(&v).ok_or_else(|| {
                    self.err(
                        vpos,
                        format!("`backend`: \"{v}\" is not one of block, ramdisk, vmdk"),
                    )
                })?;
                set_once(self, &mut b.backend, (be, vpos), kw, pos)
            }
            "blocksize" => {
                let (n, npos) = self.number(kw)?;
                set_once(self, &mut b.blocksize, (n, npos), kw, pos)
            }
            "ctl-lun" => {
                let (n, npos) = self.number(kw)?;
                set_once(self, &mut b.ctl_lun, (n, npos), kw, pos)
            }
            "device-id" => {
                let v = self.named(kw, "a device id")?;
                set_once(self, &mut b.device_id, v, kw, pos)
            }
            "device-type" => {
                let v = self.named(kw, "a device type")?;
                set_once(self, &mut b.device_type, v, kw, pos)
            }
            "option" => {
                let o = self.option(kw, pos)?;
                b.options.push(o);
                Ok(())
            }
            "path" => {
                let v = self.named(kw, "a path")?;
                set_once(self, &mut b.path, v, kw, pos)
            }
            "serial" => {
                let v = self.named(kw, "a serial number")?;
                set_once(self, &mut b.serial, v, kw, pos)
            }
            "size" => {
                let (v, vpos) = self.value(kw, "a size")?;
                let bytes = size_bytes(&v).map_err(|m| self.err(vpos, format!("`size`: {m}")))?;
                set_once(self, &mut b.size, (bytes, vpos), kw, pos)
            }
            _ => Err(self.unknown(kw, pos, "a lun block")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Config {
        match parse(text, "t.conf") {
            Ok(c) => c,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    /// The error's `line:col: msg`.
    fn err(text: &str) -> String {
        let e = parse(text, "t.conf").unwrap_err();
        assert_eq!(e.file, "t.conf");
        format!("{}:{}: {}", e.line, e.col, e.msg)
    }

    fn target(cfg: &Config) -> &Target {
        cfg.targets.first().expect("one target")
    }

    #[test]
    fn error_display_is_file_line_col_msg() {
        let e = parse("bogus", "/etc/vit.conf").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/vit.conf:1:1: unknown statement \"bogus\" in the global section"
        );
    }

    #[test]
    fn global_statements() {
        let c = ok(
            "generation 17\ndebug 2\ntimeout 30\nmaxproc 8\npidfile /run/vitd.pid\n\
                    isns-server 10.0.0.1\nisns-server 10.0.0.2:3205\nisns-period 60\nisns-timeout 5\n",
        );
        assert_eq!(c.generation, Some(17));
        assert_eq!(c.debug, Some(2));
        assert_eq!(c.timeout, Some(30));
        assert_eq!(c.maxproc, Some(8));
        assert_eq!(c.pidfile.as_deref(), Some("/run/vitd.pid"));
        assert_eq!(
            c.isns_servers,
            vec!["10.0.0.1".to_string(), "10.0.0.2:3205".to_string()]
        );
        assert_eq!(c.isns_period, Some(60));
        assert_eq!(c.isns_timeout, Some(5));
    }

    #[test]
    fn initiator_group_statements() {
        let c = ok(
            "initiator-group g {\n initiator iqn.2000-01.com.a:x\n initiator \"iqn.2000-01.com.a:y\"\n}",
        );
        let g = &c.initiator_groups[0];
        assert_eq!(g.name, "g");
        assert_eq!((g.pos.line, g.pos.col), (1, 17));
        let names: Vec<&str> = g.initiators.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["iqn.2000-01.com.a:x", "iqn.2000-01.com.a:y"]);
        assert_eq!((g.initiators[1].pos.line, g.initiators[1].pos.col), (3, 12));
    }

    #[test]
    fn auth_group_statements() {
        let c = ok(
            "auth-group ag {\n auth-type chap\n chap u1 \"s e c r e t\"\n chap-mutual a b c d\n\
                    initiator-name iqn.2000-01.com.a:x\n initiator-portal 10.0.0.0/8\n initiator-group g\n}",
        );
        let a = &c.auth_groups[0].auth;
        assert_eq!(a.auth_type.map(|(t, _)| t), Some(AuthType::Chap));
        assert_eq!(
            (a.chap[0].user.as_str(), a.chap[0].secret.as_str()),
            ("u1", "s e c r e t")
        );
        let m = &a.chap_mutual[0];
        assert_eq!(
            [&m.user, &m.secret, &m.mutual_user, &m.mutual_secret],
            ["a", "b", "c", "d"]
        );
        assert_eq!(a.initiator_names[0].name, "iqn.2000-01.com.a:x");
        assert_eq!(a.initiator_portals[0].name, "10.0.0.0/8");
        assert_eq!(a.initiator_groups[0].name, "g");
        for t in ["none", "deny", "chap", "chap-mutual"] {
            let c = ok(&format!("auth-group a {{ auth-type {t} }}"));
            assert_eq!(
                c.auth_groups[0].auth.auth_type.map(|(t, _)| t.as_str()),
                Some(t)
            );
        }
    }

    #[test]
    fn portal_group_statements() {
        let c = ok(
            "portal-group pg {\n discovery-auth-group no-authentication\n discovery-filter portal-name\n\
                    listen 0.0.0.0:3260\n listen [::]:3260\n listen vmk0:3260\n listen-iser 10.0.0.1\n\
                    offload cxgbei\n option foo \"bar baz\"\n redirect 10.9.9.9\n tag 65535\n foreign\n\
                    dscp af11\n pcp 7\n}",
        );
        let g = &c.portal_groups[0];
        assert_eq!(
            g.discovery_auth_group.as_ref().map(|n| n.name.as_str()),
            Some("no-authentication")
        );
        assert_eq!(
            g.discovery_filter.map(|(f, _)| f),
            Some(DiscoveryFilter::PortalName)
        );
        let l: Vec<&str> = g.listen.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(l, ["0.0.0.0:3260", "[::]:3260", "vmk0:3260"]);
        assert_eq!(g.listen_iser[0].name, "10.0.0.1");
        assert_eq!(g.offload.as_ref().map(|n| n.name.as_str()), Some("cxgbei"));
        assert_eq!(
            (g.options[0].name.as_str(), g.options[0].value.as_str()),
            ("foo", "bar baz")
        );
        assert_eq!(
            g.redirect.as_ref().map(|n| n.name.as_str()),
            Some("10.9.9.9")
        );
        assert_eq!(g.tag.map(|(t, _)| t), Some(65535));
        assert!(g.foreign);
        assert_eq!(g.dscp.as_ref().map(|n| n.name.as_str()), Some("af11"));
        assert_eq!(g.pcp.map(|(p, _)| p), Some(7));
    }

    #[test]
    fn target_statements() {
        let c = ok(
            "target iqn.2000-01.com.a:t {\n alias \"my target\"\n auth-group ag\n\
                    portal-group pg1\n portal-group pg2 ag2\n port isp0\n redirect 10.1.1.1\n\
                    option uuid U1\n option owner-id O1\n lun 0 shared\n lun 1 { path p/l.vmdk }\n}",
        );
        let t = target(&c);
        assert_eq!(t.alias.as_ref().map(|n| n.name.as_str()), Some("my target"));
        assert_eq!(t.auth_group.as_ref().map(|n| n.name.as_str()), Some("ag"));
        assert_eq!(t.portal_groups.len(), 2);
        assert_eq!(t.portal_groups[0].auth_group, None);
        assert_eq!(
            t.portal_groups[1]
                .auth_group
                .as_ref()
                .map(|n| n.name.as_str()),
            Some("ag2")
        );
        assert_eq!(t.ports[0].name, "isp0");
        assert_eq!(
            t.redirect.as_ref().map(|n| n.name.as_str()),
            Some("10.1.1.1")
        );
        assert_eq!((t.uuid(), t.owner_id()), (Some("U1"), Some("O1")));
        assert_eq!(t.luns[0].lun, LunRef::Named(Named::new("shared")));
        assert_eq!(
            (t.luns[1].id, t.luns[1].pos.line, t.luns[1].pos.col),
            (1, 11, 6)
        );
        match &t.luns[1].lun {
            LunRef::Inline(b) => {
                assert_eq!(b.path.as_ref().map(|p| p.name.as_str()), Some("p/l.vmdk"))
            }
            other => panic!("expected inline LUN, got {other:?}"),
        }
    }

    #[test]
    fn target_inline_auth() {
        let c = ok(
            "target iqn.2000-01.com.a:t {\n auth-type chap\n chap u s\n initiator-name iqn.2000-01.com.b:i\n\
                    initiator-portal 10.0.0.1\n initiator-group g\n chap-mutual a b c d\n}",
        );
        let a = &target(&c).auth;
        assert_eq!(a.auth_type.map(|(t, _)| t), Some(AuthType::Chap));
        assert_eq!((a.chap.len(), a.chap_mutual.len()), (1, 1));
        assert_eq!(
            a.initiator_names.len() + a.initiator_portals.len() + a.initiator_groups.len(),
            3
        );
    }

    #[test]
    fn portal_group_auth_group_must_be_on_the_same_line() {
        let c = ok("target t {\n portal-group pg\n auth-group ag\n}");
        let t = target(&c);
        assert_eq!(t.portal_groups[0].auth_group, None);
        assert_eq!(t.auth_group.as_ref().map(|n| n.name.as_str()), Some("ag"));
        let c = ok("target t { portal-group pg; alias x }");
        assert_eq!(target(&c).portal_groups[0].auth_group, None);
        assert!(target(&c).alias.is_some());
    }

    #[test]
    fn lun_statements_global_and_inline() {
        let body = "backend block\n blocksize 4096\n ctl-lun 7\n device-id \"dev 1\"\n device-type 0\n\
                    option lun-alias \"alias one\"\n path a/b.vmdk\n serial S123\n size 10G\n";
        let c = ok(&format!(
            "lun shared {{\n {body}}}\ntarget t {{ lun 3 {{ {body} }} }}"
        ));
        let inline = match &target(&c).luns[0].lun {
            LunRef::Inline(b) => b.clone(),
            other => panic!("expected inline, got {other:?}"),
        };
        for b in [&c.luns[0].body, &inline] {
            assert_eq!(b.backend.map(|(b, _)| b), Some(Backend::Block));
            assert_eq!(b.blocksize.map(|(n, _)| n), Some(4096));
            assert_eq!(b.ctl_lun.map(|(n, _)| n), Some(7));
            assert_eq!(b.device_id.as_ref().map(|n| n.name.as_str()), Some("dev 1"));
            assert_eq!(b.device_type.as_ref().map(|n| n.name.as_str()), Some("0"));
            assert_eq!(b.lun_alias(), Some("alias one"));
            assert_eq!(b.path.as_ref().map(|n| n.name.as_str()), Some("a/b.vmdk"));
            assert_eq!(b.serial.as_ref().map(|n| n.name.as_str()), Some("S123"));
            assert_eq!(b.size.map(|(n, _)| n), Some(10 << 30));
        }
        for be in ["block", "ramdisk", "vmdk"] {
            let c = ok(&format!("lun l {{ backend {be} }}"));
            assert_eq!(c.luns[0].body.backend.map(|(b, _)| b.as_str()), Some(be));
        }
    }

    #[test]
    fn size_suffixes() {
        let cases = [
            ("0", 0),
            ("1", 1024),
            ("6291456", 6 << 30),
            ("1k", 1024),
            ("1K", 1024),
            ("2m", 2 << 20),
            ("2M", 2 << 20),
            ("3g", 3 << 30),
            ("3G", 3 << 30),
            ("4t", 4 << 40),
            ("4T", 4 << 40),
            ("512B", 512),
            ("513b", 513),
            ("18446744073709551615B", u64::MAX),
        ];
        for (text, bytes) in cases {
            assert_eq!(size_bytes(text), Ok(bytes), "{text}");
        }
        for bad in ["", "K", "1X", "1KB", "-1", "1.5G", "0x10", "١"] {
            assert!(size_bytes(bad).is_err(), "{bad}");
        }
        assert!(size_bytes("16777216T").unwrap_err().contains("too large"));
        assert!(
            size_bytes("18014398509481984")
                .unwrap_err()
                .contains("too large")
        );
        assert!(
            size_bytes("99999999999999999999B")
                .unwrap_err()
                .contains("size")
        );
        assert_eq!(
            err("lun l {\n\tsize 16777216T\n}"),
            "2:7: `size`: size \"16777216T\" is too large (more than 2^64 bytes)"
        );
    }

    #[test]
    fn semicolons_are_optional() {
        let with = ok(
            "debug 1; auth-group a { auth-type none; chap-mutual a b c d; };\ntarget t { lun 0 { size 1; }; alias x; };",
        );
        let without = ok(
            "debug 1\nauth-group a {\nauth-type none\nchap-mutual a b c d\n}\ntarget t {\nlun 0 {\nsize 1\n}\nalias x\n}",
        );
        assert_eq!(with, without);
        assert_eq!(err("debug 1;;"), "1:9: expected a statement, found `;`");
    }

    #[test]
    fn comments_are_ignored() {
        let c = ok(
            "# header\ndebug 1 # trailing { \"\ntarget t { # open\n alias \"a # not a comment\"\n} # end",
        );
        assert_eq!(c.debug, Some(1));
        assert_eq!(
            target(&c).alias.as_ref().map(|n| n.name.as_str()),
            Some("a # not a comment")
        );
    }

    #[test]
    fn nbsp_and_unicode_whitespace_are_blank() {
        let c = ok("target t {\u{a0}alias\u{2003}x\n}\u{a0}\u{a0}");
        assert_eq!(
            target(&c).alias.as_ref().map(|n| n.name.as_str()),
            Some("x")
        );
    }

    #[test]
    fn empty_input_is_an_empty_config() {
        assert_eq!(ok(""), Config::default());
        assert_eq!(ok("  # nothing\n"), Config::default());
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let cases = [
            (
                "debug 1\nfrobnicate 2",
                "2:1: unknown statement \"frobnicate\" in the global section",
            ),
            (
                "target t {\n  lun 0 {\n    sizes 1\n  }\n}",
                "3:5: unknown statement \"sizes\" in a lun block",
            ),
            (
                "auth-group a {\n\tlisten x\n}",
                "2:2: unknown statement \"listen\" in an auth-group block",
            ),
            (
                "portal-group p {\n\tchap a b\n}",
                "2:2: unknown statement \"chap\" in a portal-group block",
            ),
            (
                "initiator-group g { iqn }",
                "1:21: unknown statement \"iqn\" in an initiator-group block",
            ),
            (
                "target t { alias a\n alias b }",
                "2:2: `alias` is given twice in one block",
            ),
            (
                "debug 1\ndebug 2",
                "2:1: `debug` is given twice in one block",
            ),
            (
                "portal-group p { foreign foreign }",
                "1:26: `foreign` is given twice in one block",
            ),
            (
                "lun l { size 1 size 2 }",
                "1:16: `size` is given twice in one block",
            ),
            (
                "target t {\n alias a\n",
                "3:1: unexpected end of file: the target block opened at 1:10 is not closed",
            ),
            (
                "target t\n alias a",
                "2:2: `target`: expected `{`, found \"alias\"",
            ),
            ("debug x1", "1:7: `debug`: \"x1\" is not a decimal number"),
            (
                "debug 18446744073709551616",
                "1:7: `debug`: number 18446744073709551616 is too large",
            ),
            (
                "debug",
                "1:6: `debug`: expected a number, found end of file",
            ),
            (
                "portal-group p { tag 65536 }",
                "1:22: `tag`: 65536 is out of range 0..=65535",
            ),
            (
                "portal-group p { pcp 8 }",
                "1:22: `pcp`: 8 is out of range 0..=7",
            ),
            (
                "auth-group a { auth-type maybe }",
                "1:26: `auth-type`: \"maybe\" is not one of none, deny, chap, chap-mutual",
            ),
            (
                "portal-group p { discovery-filter x }",
                "1:35: `discovery-filter`: \"x\" is not one of none, portal, portal-name, portal-name-auth",
            ),
            (
                "lun l { backend file }",
                "1:17: `backend`: \"file\" is not one of block, ramdisk, vmdk",
            ),
            (
                "target t { alias \"\" }",
                "1:18: `alias`: an alias must not be empty",
            ),
            (
                "target t { alias }",
                "1:18: `alias`: expected an alias, found `}`",
            ),
            (
                "target t { lun x { } }",
                "1:16: `lun`: \"x\" is not a decimal number",
            ),
            (
                "target t { lun 0 ; }",
                "1:18: `lun`: expected a LUN name or `{`, found `;`",
            ),
            (
                "target t { chap u }",
                "1:19: `chap`: expected a secret, found `}`",
            ),
            ("}", "1:1: expected a statement, found `}`"),
            (
                "target t { { } }",
                "1:12: expected a statement or `}` in target block, found `{`",
            ),
            (
                "target t {\n alias \"x\n}",
                "2:8: unterminated quoted string (a string ends with `\"` on the same line)",
            ),
            (
                "debug 1\n\tmaxproc\u{a0}=",
                "2:10: unexpected character '='",
            ),
            ("target \"t\" {\u{a0}é }", "1:14: unexpected character 'é'"),
        ];
        for (text, want) in cases {
            assert_eq!(err(text), want, "{text:?}");
        }
    }

    #[test]
    fn oversized_input_is_refused() {
        let text = " ".repeat(MAX_CONFIG_BYTES + 1);
        assert!(err(&text).starts_with("1:1: file is"));
    }
}
