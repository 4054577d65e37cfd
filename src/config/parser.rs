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
    let unit = size_unit(suffix).ok_or_else(|| {
        format!("size \"{s}\": expected a number with optional suffix K, M, G, T or B")
    })?;
    let n = decimal(digits).map_err(|_| {
        format!("size \"{s}\": expected a number with optional suffix K, M, G, T or B")
    })?;
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
