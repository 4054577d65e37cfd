//! The login phase of one connection, sans I/O: Login Requests in, Login Responses out, and at
//! the end either a session in full feature phase or a failure status (RFC 7143 section 6).
//!
//! Who may log in is decided here, from the running configuration: the portal group's
//! discovery-auth-group for discovery sessions, the target's auth-group otherwise (deny, none,
//! CHAP, mutual CHAP; initiator-name, initiator-portal and VMware's initiator-group lists).

use super::runtime::{AuthPolicy, Running, TargetRt};
use crate::config::AuthType;
use crate::iscsi::chap::{ChapAuthenticator, ChapProof, ChapSecrets, ChapStep};
use crate::iscsi::digest::padding_for;
use crate::iscsi::params::{
    Accept, AuthMethod, Negotiator, SessionParams, SessionType, TargetLimits,
};
use crate::iscsi::pdu::{BHS_LEN, LoginRequest, LoginResponse, LoginStatus, Stage};
use crate::iscsi::text::{OutgoingText, TextAccumulator, TextList, TextSink};
use std::net::SocketAddr;
use std::sync::Arc;

/// The largest login text (all C-bit PDUs of one request together).
const MAX_LOGIN_TEXT: usize = 64 * 1024;
/// The window of commands a session may have in flight.
pub const QUEUE_DEPTH: u16 = 128;

/// How a finished login turned out.
#[derive(Debug)]
pub enum LoginOutcome {
    /// Full feature phase: a normal session for `target` or a discovery session.
    Session {
        params: SessionParams,
        target: Option<Arc<TargetRt>>,
        isid: [u8; 6],
        tsih: u16,
        /// StatSN for the first status after login, and the expected CmdSN.
        stat_sn: u32,
        exp_cmd_sn: u32,
        /// The CHAP exchange the login authenticated with, if any (a discovery session's
        /// `discovery-filter portal-name-auth` checks it against each target's secrets).
        chap: Option<ChapProof>,
    },
    /// The login failed; the response with this status was produced; close the connection.
    Failed { status: LoginStatus, reason: String },
}

/// One connection's login.
pub struct Login {
    running: Arc<Running>,
    /// The portal group the connection arrived on.
    pg: usize,
    peer: SocketAddr,
    negotiator: Option<Negotiator>,
    chap: ChapAuthenticator,
    acc: TextAccumulator,
    first: bool,
    isid: [u8; 6],
    tsih: u16,
    stat_sn: u32,
    exp_cmd_sn: u32,
    policy: Option<AuthPolicy>,
    target: Option<Arc<TargetRt>>,
    authenticated: bool,
    /// A response text longer than one PDU, being sent in C-bit chunks.
    pending: Option<(OutgoingText, LoginResponse)>,
    /// The TSIH the session will get.
    next_tsih: u16,
    /// Set when the response to produce next is the last one.
    outcome: Option<LoginOutcome>,
    /// The InitiatorName, once the first request named it.
    initiator: Option<String>,
    /// The stage the login is in (the first request's CSG, then each NSG a response agreed).
    stage: Option<Stage>,
    /// Negotiated parameters waiting for the last chunk of a long final response.
    deferred: Option<SessionParams>,
    /// vitd serves as many normal sessions as it may: this one is refused at the end unless
    /// it reinstates one of these sessions with its ISID (initiator name, target name, portal
    /// group tag).
    full: Option<Vec<(String, String, u16)>>,
    /// What the first request asked for, for log lines: the TargetName of a normal session
    /// (found or not), `None` for a discovery session or before the first request named it.
    asked: Option<String>,
    /// The first request asked for a discovery session.
    discovery: bool,
    /// The last response sent vitd's own mutual CHAP response: an initiator that closes the
    /// connection then most likely refused it (a mutual secret that differs on both sides).
    mutual_answered: bool,
    /// The outcome was taken: the login ended (with a session or a refusal).
    ended: bool,
}

impl Login {
    pub fn new(running: Arc<Running>, pg: usize, peer: SocketAddr, tsih: u16) -> Self {
        Login {
            running,
            pg,
            peer,
            negotiator: None,
            chap: ChapAuthenticator::new(),
            acc: TextAccumulator::new(MAX_LOGIN_TEXT),
            first: true,
            isid: [0; 6],
            tsih: 0,
            stat_sn: 1,
            exp_cmd_sn: 0,
            policy: None,
            target: None,
            authenticated: false,
            pending: None,
            next_tsih: tsih.max(1),
            outcome: None,
            initiator: None,
            stage: None,
            deferred: None,
            full: None,
            asked: None,
            discovery: false,
            mutual_answered: false,
            ended: false,
        }
    }

    /// vitd is at its session limit (`Some`): a normal session's login then fails with "out of
    /// resources" where it would have succeeded, unless it reinstates one of the sessions with
    /// its ISID given (initiator name, target name, portal group tag). (Its initiator name may
    /// come only with the request that ends the login: matched then.)
    pub fn set_full(&mut self, full: Option<Vec<(String, String, u16)>>) {
        self.full = full;
    }

    /// The ISID the first request gave.
    pub fn isid(&self) -> [u8; 6] {
        self.isid
    }

    /// The initiator's name, once known (for log lines).
    pub fn initiator(&self) -> &str {
        self.initiator.as_deref().unwrap_or("(unnamed initiator)")
    }

    /// Takes the outcome once the last response has been produced.
    pub fn take_outcome(&mut self) -> Option<LoginOutcome> {
        let outcome = self.outcome.take();
        self.ended |= outcome.is_some();
        outcome
    }

    /// Who logs in where, for log lines: "login of INITIATOR from ADDR to TARGET", "discovery
    /// login of INITIATOR from ADDR", or "login from ADDR" before the first request named them.
    pub fn who(&self) -> String {
        let peer = self.peer;
        match (&self.initiator, &self.asked) {
            (None, _) => format!("login from {peer}"),
            (Some(i), _) if self.discovery => format!("discovery login of {i} from {peer}"),
            (Some(i), Some(t)) => format!("login of {i} from {peer} to {t}"),
            (Some(i), None) => format!("login of {i} from {peer}"),
        }
    }

    /// The log line for a connection the initiator closed while this login had begun and not
    /// ended (`None` for one that sent no Login Request, or whose login ended: nothing to say).
    pub fn abandoned(&self) -> Option<String> {
        if self.first || self.ended {
            return None;
        }
        let hint = if self.mutual_answered {
            ", after vitd's mutual CHAP response: the initiator most likely refused it; check \
             that the target's mutual CHAP user and secret are those the initiator expects"
        } else {
            ""
        };
        Some(format!(
            "{}: the initiator closed the connection before the login ended{hint}",
            self.who()
        ))
    }

    /// A PDU other than a Login Request arrived (its Initiator Task Tag `itt`). Before any
    /// Login Request the connection is simply closed (`None`); once the login has begun, RFC
    /// 7143 section 6 wants a Login reject, "invalid during login" (0x020b), before the close:
    /// its bytes, and the login fails.
    pub fn on_other_pdu(&mut self, itt: u32) -> Option<Vec<u8>> {
        if self.first {
            return None;
        }
        let status = LoginStatus::InvalidDuringLogin;
        let req = LoginRequest {
            isid: self.isid,
            itt,
            ..Default::default()
        };
        let reason = "a PDU other than a Login Request during login".to_string();
        self.outcome = Some(LoginOutcome::Failed { status, reason });
        Some(self.response(&req, status, false, 0, 0, &[]))
    }

    /// Handles one Login Request with its data segment; returns the response PDU bytes (header,
    /// text, padding: no digests during login).
    pub fn on_request(&mut self, req: &LoginRequest, data: &[u8]) -> Vec<u8> {
        match self.step(req, data) {
            Ok(bytes) => bytes,
            Err((status, reason)) => {
                // A redirection carries where to go; `reason` is the TargetAddress then.
                let text = if status == LoginStatus::TargetMovedTemporarily {
                    format!("TargetAddress={reason}\0").into_bytes()
                } else {
                    Vec::new()
                };
                self.outcome = Some(LoginOutcome::Failed { status, reason });
                self.response(req, status, false, 0, 0, &text)
            }
        }
    }

    fn step(&mut self, req: &LoginRequest, data: &[u8]) -> Result<Vec<u8>, (LoginStatus, String)> {
        let fail = |s: LoginStatus, why: &str| (s, why.to_string());
        if self.first {
            self.first = false;
            if req.version_min > 0 {
                return Err(fail(
                    LoginStatus::UnsupportedVersion,
                    "unsupported iSCSI version",
                ));
            }
            if req.tsih != 0 {
                return Err(fail(
                    LoginStatus::SessionDoesNotExist,
                    "adding a connection to a session (MaxConnections is 1)",
                ));
            }
            self.isid = req.isid;
            self.exp_cmd_sn = req.cmd_sn;
        } else if req.isid != self.isid {
            return Err(fail(
                LoginStatus::InitiatorError,
                "ISID changed during login",
            ));
        }
        let csg =
            Stage::from_u8(req.csg).ok_or_else(|| fail(LoginStatus::InitiatorError, "bad CSG"))?;
        // RFC 7143 11.12.2: a request continued (C) is not ready to transit (T).
        if req.cont && req.transit {
            return Err(fail(LoginStatus::InitiatorError, "C and T bits both set"));
        }
        // The stage moves on only after a response that transits (6.3); the transitions are
        // security to operational or full feature, operational to full feature.
        if *self.stage.get_or_insert(csg) != csg {
            return Err(fail(
                LoginStatus::InitiatorError,
                "CSG changed without a transit",
            ));
        }
        if req.transit && Stage::from_u8(req.nsg).is_none_or(|n| n as u8 <= csg as u8) {
            return Err(fail(
                LoginStatus::InitiatorError,
                "illegal stage transition",
            ));
        }
        // A long response still being sent: the initiator asks for the next chunk.
        if let Some((mut text, template)) = self.pending.take() {
            let bytes = self.chunk(req, &mut text, template);
            if self.pending.is_none()
                && let Some(params) = self.deferred.take()
            {
                self.outcome = Some(self.session(params));
            }
            return Ok(bytes);
        }
        let Some(text) = self
            .acc
            .append(data, req.cont)
            .map_err(|e| fail(LoginStatus::InitiatorError, &e.to_string()))?
        else {
            // More text follows (C bit): answer with an empty response in the same stage.
            return Ok(self.response(req, LoginStatus::Success, false, req.csg, req.csg, &[]));
        };
        let text = text.to_vec();
        let keys = TextList::parse(&text)
            .map_err(|e| fail(LoginStatus::InitiatorError, &e.to_string()))?;
        let mut out = OutgoingText::new(MAX_LOGIN_TEXT);
        if self.negotiator.is_none() {
            self.start(&keys)?;
        }
        let negotiator = self
            .negotiator
            .as_mut()
            .ok_or_else(|| fail(LoginStatus::TargetError, "no negotiator"))?;
        // CHAP keys come only after a response that agreed AuthMethod=CHAP.
        let chap_agreed = negotiator.auth_method() == AuthMethod::Chap;
        negotiator
            .negotiate(csg, &keys, &mut out)
            .map_err(|e| (e.login_status(), e.to_string()))?;
        // A key is negotiated once: an AuthMethod answered with anything but CHAP stays so.
        let no_chap = negotiator.auth_method() != AuthMethod::Chap;
        let chap_refused = no_chap && negotiator.auth_method_offered();
        let policy = self.policy.clone().unwrap_or_else(AuthPolicy::deny);
        let needs_chap = matches!(
            policy.effective_type(),
            AuthType::Chap | AuthType::ChapMutual
        );
        match csg {
            Stage::Security => {
                // CHAP is required and the initiator offered no CHAP, or wants to leave the
                // security stage without having agreed to it: it cannot authenticate (ctld
                // answers 0201 too; answering T=0 instead left it waiting for the timeout).
                if needs_chap && no_chap && (chap_refused || req.transit) {
                    return Err(fail(
                        LoginStatus::AuthenticationFailure,
                        "CHAP is required, and the initiator did not agree to AuthMethod=CHAP",
                    ));
                }
                if chap_agreed && needs_chap && self.authenticated {
                    // CHAP succeeded in a response without a transit (the initiator had not
                    // set T): a later request may ask for it, but not bring CHAP keys again.
                    if keys.iter().any(|p| p.key.starts_with("CHAP_")) {
                        let e = crate::iscsi::chap::ChapFailure::Finished;
                        return Err((e.login_status(), e.to_string()));
                    }
                } else if chap_agreed && needs_chap {
                    let lookup = |user: &str| chap_secrets(&policy, user);
                    match self.chap.step(&keys, lookup, &mut out) {
                        Ok(ChapStep::ChallengeSent) => {}
                        Ok(ChapStep::Authenticated { .. }) => {
                            self.authenticated = true;
                            self.mutual_answered = keys.get("CHAP_C").is_some();
                        }
                        Err(e) => return Err((e.login_status(), e.to_string())),
                    }
                } else if !needs_chap {
                    self.authenticated = true;
                }
            }
            Stage::Operational => {
                if needs_chap && !self.authenticated {
                    return Err(fail(LoginStatus::AuthenticationFailure, "CHAP is required"));
                }
                self.authenticated = true;
            }
            Stage::FullFeature => {
                return Err(fail(
                    LoginStatus::InitiatorError,
                    "login in full feature stage",
                ));
            }
        }
        let nsg = Stage::from_u8(req.nsg);
        // Until CHAP has succeeded the answer is T=0, whichever stage the initiator asks for
        // (RFC 7143 6.3: a target not ready to transit answers T=0).
        let transit = req.transit && self.authenticated && self.chap_settled(csg);
        let nsg_value = if transit {
            nsg.map_or(req.csg, |s| s as u8)
        } else {
            req.csg
        };
        if transit && nsg == Some(Stage::FullFeature) {
            // ctld's `redirect` in a target: sent once authentication succeeded.
            if let Some(to) = self.target.as_ref().and_then(|t| t.redirect.clone()) {
                return Err((LoginStatus::TargetMovedTemporarily, to));
            }
            let tag = self.running.portal_groups.get(self.pg).map(|p| p.tag);
            let initiator = self.initiator.as_deref().unwrap_or("");
            let reinstates = |own: &Vec<(String, String, u16)>, t: &Arc<TargetRt>| {
                own.iter().any(|(i, name, at)| {
                    i.eq_ignore_ascii_case(initiator) && *name == t.name && Some(*at) == tag
                })
            };
            if let (Some(own), Some(t)) = (&self.full, &self.target)
                && !reinstates(own, t)
            {
                return Err(fail(
                    LoginStatus::OutOfResources,
                    "vitd serves as many sessions as --max-sessions allows",
                ));
            }
            if let Some(alias) = self.target.as_ref().and_then(|t| t.alias.clone()) {
                let _ = out.push("TargetAlias", &alias);
            }
            let params = self
                .negotiator
                .as_ref()
                .map(|n| n.finish())
                .transpose()
                .map_err(|e| (e.login_status(), e.to_string()))?;
            let params = params.ok_or_else(|| fail(LoginStatus::TargetError, "no parameters"))?;
            self.tsih = self.next_tsih;
            let template = self.template(req, LoginStatus::Success, true, req.csg, nsg_value);
            let bytes = self.chunk(req, &mut out, template);
            if self.pending.is_none() {
                self.outcome = Some(self.session(params));
            } else {
                // The final response continues over several PDUs: the session starts after the last.
                self.deferred = Some(params);
            }
            return Ok(bytes);
        }
        let template = self.template(req, LoginStatus::Success, transit, req.csg, nsg_value);
        Ok(self.chunk(req, &mut out, template))
    }

    /// The outcome of a successful login (StatSN: the next after the final response).
    fn session(&self, params: SessionParams) -> LoginOutcome {
        LoginOutcome::Session {
            params,
            target: self.target.clone(),
            isid: self.isid,
            tsih: self.tsih,
            stat_sn: self.stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            chap: self.chap.proof().cloned(),
        }
    }

    /// Whether CHAP, when in use, has finished (a transit out of security needs it).
    fn chap_settled(&self, csg: Stage) -> bool {
        csg != Stage::Security || self.authenticated
    }

    /// Reads the first request's keys: session type, names, the target and its policy.
    fn start(&mut self, keys: &TextList<'_>) -> Result<(), (LoginStatus, String)> {
        let fail = |s: LoginStatus, why: String| (s, why);
        let initiator = keys
            .get("InitiatorName")
            .ok_or_else(|| fail(LoginStatus::MissingParameter, "no InitiatorName".into()))?
            .to_string();
        // The names go into log lines: one holding a control character (a line break would
        // forge log lines) is no iSCSI name (RFC 7143 4.2.7) and is refused unlogged.
        let no_name = |key: &str| {
            fail(
                LoginStatus::InitiatorError,
                format!("{key} holds a control character"),
            )
        };
        if initiator.chars().any(char::is_control) {
            return Err(no_name("InitiatorName"));
        }
        self.initiator = Some(initiator.clone());
        let discovery = keys.get("SessionType") == Some("Discovery");
        self.discovery = discovery;
        let pg = self
            .running
            .portal_groups
            .get(self.pg)
            .ok_or_else(|| fail(LoginStatus::TargetError, "no portal group".into()))?;
        // ctld's `redirect` in a portal group: every login there goes elsewhere, before any
        // authentication.
        if let Some(to) = &pg.redirect {
            return Err((LoginStatus::TargetMovedTemporarily, to.clone()));
        }
        let policy = if discovery {
            pg.discovery_auth.clone()
        } else {
            let name = keys
                .get("TargetName")
                .ok_or_else(|| fail(LoginStatus::MissingParameter, "no TargetName".into()))?;
            if name.chars().any(char::is_control) {
                return Err(no_name("TargetName"));
            }
            let target = self
                .running
                .target(name)
                .filter(|t| t.portal_groups.contains(&self.pg))
                .ok_or_else(|| {
                    fail(
                        LoginStatus::NotFound,
                        format!("no target {name} on this portal"),
                    )
                })?
                .clone();
            let policy = target.auth_for(self.pg).clone();
            self.asked = Some(target.name.clone());
            self.target = Some(target);
            policy
        };
        if policy.effective_type() == AuthType::Deny {
            return Err(fail(
                LoginStatus::AuthorizationFailure,
                "access denied by the auth-group".into(),
            ));
        }
        if !policy.allows_initiator(&initiator) {
            return Err(fail(
                LoginStatus::AuthorizationFailure,
                format!("initiator {initiator} is not allowed"),
            ));
        }
        if !policy.allows_portal(self.peer.ip()) {
            return Err(fail(
                LoginStatus::AuthorizationFailure,
                format!("initiator portal {} is not allowed", self.peer.ip()),
            ));
        }
        let chap = matches!(
            policy.effective_type(),
            AuthType::Chap | AuthType::ChapMutual
        );
        let limits = TargetLimits {
            auth: Accept {
                none: !chap,
                other: chap,
            },
            target_portal_group_tag: pg.tag,
            ..TargetLimits::default()
        };
        self.negotiator = Some(
            Negotiator::new_leading(limits)
                .map_err(|e| fail(LoginStatus::TargetError, e.to_string()))?,
        );
        self.policy = Some(policy);
        Ok(())
    }

    fn template(
        &self,
        req: &LoginRequest,
        status: LoginStatus,
        transit: bool,
        csg: u8,
        nsg: u8,
    ) -> LoginResponse {
        let mut r = LoginResponse {
            transit,
            csg,
            nsg: if transit { nsg } else { 0 },
            version_max: 0,
            version_active: 0,
            isid: req.isid,
            tsih: if transit && nsg == Stage::FullFeature as u8 {
                self.tsih
            } else {
                0
            },
            itt: req.itt,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.exp_cmd_sn.wrapping_add(u32::from(QUEUE_DEPTH) - 1),
            ..Default::default()
        };
        r.set_status(status);
        r
    }

    /// The next chunk of `out` in a response built from `template` (C bit when more follows).
    fn chunk(
        &mut self,
        _req: &LoginRequest,
        out: &mut OutgoingText,
        template: LoginResponse,
    ) -> Vec<u8> {
        let (bytes, cont) = match out.next_chunk(8192) {
            Some(c) => (c.bytes.to_vec(), c.cont),
            None => (Vec::new(), false),
        };
        let mut r = template;
        if cont {
            // A response continues: no transit until the initiator has it all.
            r.cont = true;
            r.transit = false;
            r.tsih = 0;
            self.pending = Some((std::mem::replace(out, OutgoingText::new(0)), template));
        }
        if r.transit {
            self.stage = Stage::from_u8(r.nsg);
        }
        r.stat_sn = self.stat_sn;
        self.stat_sn = self.stat_sn.wrapping_add(1);
        r.data_segment_length = bytes.len() as u32;
        encode(&r, &bytes)
    }

    fn response(
        &mut self,
        req: &LoginRequest,
        status: LoginStatus,
        transit: bool,
        csg: u8,
        nsg: u8,
        text: &[u8],
    ) -> Vec<u8> {
        let mut r = self.template(req, status, transit, csg, nsg);
        r.stat_sn = self.stat_sn;
        self.stat_sn = self.stat_sn.wrapping_add(1);
        r.data_segment_length = text.len() as u32;
        encode(&r, text)
    }
}

fn encode(r: &LoginResponse, text: &[u8]) -> Vec<u8> {
    let mut bhs = [0u8; BHS_LEN];
    r.encode(&mut bhs);
    let mut v = Vec::with_capacity(BHS_LEN + text.len() + 3);
    v.extend_from_slice(&bhs);
    v.extend_from_slice(text);
    v.extend_from_slice(padding_for(text.len() as u32));
    v
}

/// The CHAP secrets of a user in a policy.
pub(super) fn chap_secrets<'a>(policy: &'a AuthPolicy, user: &str) -> Option<ChapSecrets<'a>> {
    if let Some((_, secret)) = policy.chap.iter().find(|(u, _)| u == user) {
        return Some(ChapSecrets {
            secret: secret.as_bytes(),
            mutual: None,
        });
    }
    policy
        .chap_mutual
        .iter()
        .find(|(u, ..)| u == user)
        .map(|(_, secret, muser, msecret)| ChapSecrets {
            secret: secret.as_bytes(),
            mutual: Some((muser.as_str(), msecret.as_bytes())),
        })
}

/// Whether a session type is discovery.
pub fn is_discovery(params: &SessionParams) -> bool {
    params.session_type == SessionType::Discovery
}

#[cfg(test)]
mod props;

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::daemon::runtime::{PortalGroupRt, TargetRt};
    use crate::iscsi::pdu::{LoginResponse, TargetPdu};
    use crate::scsi::DeviceServer;

    pub(in crate::daemon) fn running(auth: AuthPolicy) -> Arc<Running> {
        let pg = PortalGroupRt {
            name: "default".into(),
            tag: 7,
            addrs: vec!["127.0.0.1:3260".parse().unwrap()],
            listen: vec![],
            foreign: false,
            discovery_auth: AuthPolicy::none(),
            discovery_filter: None,
            redirect: None,
            dscp: None,
            pcp: None,
        };
        let t = TargetRt {
            name: "iqn.2026-11.io.vit:t".into(),
            alias: Some("tee".into()),
            auth,
            pg_auth: Vec::new(),
            portal_groups: vec![0],
            redirect: None,
            owner_id: None,
            luns: vec![],
            portals: vec![],
            server: DeviceServer::new(vec![]).unwrap(),
        };
        Arc::new(Running {
            generation: 1,
            portal_groups: vec![pg],
            targets: vec![Arc::new(t)],
        })
    }

    fn request(csg: Stage, nsg: Stage, transit: bool, text: &str) -> (LoginRequest, Vec<u8>) {
        let r = LoginRequest {
            immediate: true,
            transit,
            csg: csg as u8,
            nsg: nsg as u8,
            isid: [0x80, 0, 0, 0, 0, 1],
            itt: 1,
            cmd_sn: 5,
            data_segment_length: text.len() as u32,
            ..Default::default()
        };
        (r, text.as_bytes().to_vec())
    }

    fn response(bytes: &[u8]) -> (LoginResponse, String) {
        let TargetPdu::Login(r) = TargetPdu::decode(bytes[..BHS_LEN].try_into().unwrap()).unwrap()
        else {
            panic!("not a login response")
        };
        let text =
            String::from_utf8_lossy(&bytes[BHS_LEN..BHS_LEN + r.data_segment_length as usize])
                .replace('\0', ";");
        (r, text)
    }

    const FIRST: &str = "InitiatorName=iqn.2026-11.io.vit:i\0TargetName=iqn.2026-11.io.vit:t\0SessionType=Normal\0AuthMethod=None\0";

    #[test]
    fn login_without_authentication_reaches_full_feature_phase() {
        let mut l = Login::new(
            running(AuthPolicy::none()),
            0,
            "127.0.0.1:5000".parse().unwrap(),
            3,
        );
        let (req, data) = request(Stage::Security, Stage::Operational, true, FIRST);
        let (r, text) = response(&l.on_request(&req, &data));
        assert_eq!(
            (r.status_class, r.transit, r.nsg),
            (0, true, Stage::Operational as u8)
        );
        assert!(text.contains("TargetPortalGroupTag=7"), "{text}");
        assert!(l.take_outcome().is_none());
        let (req, data) = request(
            Stage::Operational,
            Stage::FullFeature,
            true,
            "MaxRecvDataSegmentLength=65536\0",
        );
        let (r, text) = response(&l.on_request(&req, &data));
        assert_eq!((r.status_class, r.transit, r.tsih), (0, true, 3));
        assert!(text.contains("TargetAlias=tee"), "{text}");
        match l.take_outcome() {
            Some(LoginOutcome::Session {
                params,
                target,
                stat_sn,
                exp_cmd_sn,
                ..
            }) => {
                assert_eq!(params.initiator_max_recv_data_segment_length, 65536);
                assert!(target.is_some());
                assert_eq!((stat_sn, exp_cmd_sn), (3, 5));
            }
            other => panic!("{other:?}"),
        }
    }

    /// The C bit both ways (RFC 7143 §6.1, §11.12.2, §11.13.2): a request split inside a pair
    /// is answered with empty responses until its last PDU, then negotiated whole; a response
    /// longer than 8192 bytes (the login's MaxRecvDataSegmentLength) goes out in chunks with C
    /// set and T clear, each after an empty request, and the last one transits with the TSIH,
    /// the session starting only then.
    #[test]
    fn long_texts_are_continued_both_ways() {
        let mut l = Login::new(
            running(AuthPolicy::none()),
            0,
            "127.0.0.1:5000".parse().unwrap(),
            9,
        );
        // 150 unknown keys of 60 bytes: about 11 KiB of NotUnderstood answers.
        let unknown: String = (0..150).map(|i| format!("X-io.vit.{i:0>51}=1\0")).collect();
        let text = format!("{FIRST}MaxBurstLength=16384\0{unknown}");
        let (a, b) = text.split_at(FIRST.len() + 8);
        let (mut req, data) = request(Stage::Security, Stage::FullFeature, false, a);
        req.cont = true;
        let (r, body) = response(&l.on_request(&req, &data));
        assert_eq!(
            (status_of(&r), r.transit, r.cont, body.as_str()),
            (0, false, false, "")
        );
        let (req, data) = request(Stage::Security, Stage::FullFeature, true, b);
        let mut joined = String::new();
        let mut bytes = l.on_request(&req, &data);
        let mut chunks = 0;
        loop {
            let (r, body) = response(&bytes);
            assert_eq!(status_of(&r), 0);
            assert!(r.data_segment_length <= 8192);
            joined.push_str(&body);
            chunks += 1;
            if !r.cont {
                assert_eq!((r.transit, r.nsg, r.tsih), (true, 3, 9));
                break;
            }
            assert!(!r.transit && r.tsih == 0, "{r:?}");
            assert!(l.take_outcome().is_none());
            let (req, data) = request(Stage::Security, Stage::FullFeature, true, "");
            bytes = l.on_request(&req, &data);
        }
        assert!(chunks >= 2, "{chunks}");
        let pairs: Vec<&str> = joined.split(';').filter(|p| !p.is_empty()).collect();
        assert_eq!(pairs.len(), 150 + 4, "{joined}");
        assert!(pairs.contains(&"MaxBurstLength=16384"));
        assert!(pairs.contains(&"TargetPortalGroupTag=7"));
        assert_eq!(
            pairs
                .iter()
                .filter(|p| p.ends_with("=NotUnderstood"))
                .count(),
            150
        );
        match l.take_outcome() {
            Some(LoginOutcome::Session { params, tsih, .. }) => {
                assert_eq!((params.max_burst_length, tsih), (16384, 9));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refusals_carry_the_right_status() {
        let cases: [(AuthPolicy, &str, LoginStatus); 4] = [
            (AuthPolicy::deny(), FIRST, LoginStatus::AuthorizationFailure),
            (
                AuthPolicy {
                    initiators: vec!["iqn.2026-11.io.vit:other".into()],
                    ..AuthPolicy::none()
                },
                FIRST,
                LoginStatus::AuthorizationFailure,
            ),
            (
                AuthPolicy::none(),
                "InitiatorName=iqn.2026-11.io.vit:i\0TargetName=iqn.2026-11.io.vit:nope\0",
                LoginStatus::NotFound,
            ),
            (
                AuthPolicy::none(),
                "TargetName=iqn.2026-11.io.vit:t\0",
                LoginStatus::MissingParameter,
            ),
        ];
        for (policy, text, want) in cases {
            let mut l = Login::new(running(policy), 0, "127.0.0.1:5000".parse().unwrap(), 1);
            let (req, data) = request(Stage::Security, Stage::Operational, true, text);
            let (r, _) = response(&l.on_request(&req, &data));
            assert_eq!(
                u16::from_be_bytes([r.status_class, r.status_detail]),
                want as u16,
                "{text}"
            );
            assert!(matches!(
                l.take_outcome(),
                Some(LoginOutcome::Failed { .. })
            ));
        }
    }

    /// An InitiatorName or TargetName holding a control character is refused (0200) before it
    /// reaches a log line: a line break in it wrote lines of the peer's choosing into vitd's
    /// log (the name, or "no target NAME", is logged with each refusal), and such an initiator
    /// even logged in.
    #[test]
    fn names_with_control_characters_are_refused_unlogged() {
        for text in [
            "InitiatorName=iqn.2026-11.io.vit:i\nERROR forged line\0TargetName=iqn.2026-11.io.vit:t\0AuthMethod=None\0",
            "InitiatorName=iqn.2026-11.io.vit:i\0TargetName=iqn.2026-11.io.vit:nope\rERROR forged\0AuthMethod=None\0",
        ] {
            let mut l = Login::new(
                running(AuthPolicy::none()),
                0,
                "127.0.0.1:5000".parse().unwrap(),
                1,
            );
            let (req, data) = request(Stage::Security, Stage::FullFeature, true, text);
            let (r, _) = response(&l.on_request(&req, &data));
            assert_eq!(
                status_of(&r),
                LoginStatus::InitiatorError as u16,
                "{text:?}"
            );
            assert!(!l.initiator().contains('\n'), "{}", l.initiator());
            match l.take_outcome() {
                Some(LoginOutcome::Failed { reason, .. }) => {
                    assert!(!reason.contains(['\n', '\r']), "{reason:?}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    fn status_of(r: &LoginResponse) -> u16 {
        u16::from_be_bytes([r.status_class, r.status_detail])
    }

    /// RFC 7143 11.12.2-3 and 6.3: C and T both set, a transit to a reserved or an earlier (or
    /// the same) stage, and a CSG other than the stage the login is in are initiator errors.
    #[test]
    fn illegal_stage_flags_are_initiator_errors() {
        let new_login = || {
            Login::new(
                running(AuthPolicy::none()),
                0,
                "127.0.0.1:5000".parse().unwrap(),
                1,
            )
        };
        // C and T both set.
        let mut l = new_login();
        let (mut req, data) = request(Stage::Security, Stage::Operational, true, FIRST);
        req.cont = true;
        let (r, _) = response(&l.on_request(&req, &data));
        assert_eq!(status_of(&r), LoginStatus::InitiatorError as u16);
        // A transit back to the security stage, or to the stage the login is in.
        for (csg, nsg) in [
            (Stage::Operational, Stage::Security),
            (Stage::Operational, Stage::Operational),
            (Stage::Security, Stage::Security),
        ] {
            let mut l = new_login();
            let (req, data) = request(csg, nsg, true, FIRST);
            let (r, _) = response(&l.on_request(&req, &data));
            assert_eq!(
                status_of(&r),
                LoginStatus::InitiatorError as u16,
                "{csg:?} -> {nsg:?}: T={} NSG={}",
                r.transit,
                r.nsg
            );
        }
        // A transit to the reserved stage 2.
        let mut l = new_login();
        let (mut req, data) = request(Stage::Security, Stage::Operational, true, FIRST);
        req.nsg = 2;
        let (r, _) = response(&l.on_request(&req, &data));
        assert_eq!(status_of(&r), LoginStatus::InitiatorError as u16);
        // The operational stage without the target's leave to go there.
        let mut l = new_login();
        let (req, data) = request(Stage::Security, Stage::Operational, false, FIRST);
        let (r, _) = response(&l.on_request(&req, &data));
        assert_eq!((status_of(&r), r.transit), (0, false));
        let (req, data) = request(Stage::Operational, Stage::FullFeature, true, "");
        let (r, _) = response(&l.on_request(&req, &data));
        assert_eq!(status_of(&r), LoginStatus::InitiatorError as u16);
        assert!(matches!(
            l.take_outcome(),
            Some(LoginOutcome::Failed { .. })
        ));
    }

    #[test]
    fn chap_is_required_when_configured() {
        let policy = AuthPolicy {
            auth_type: Some(AuthType::Chap),
            chap: vec![("alice".into(), "alicesecret12".into())],
            ..Default::default()
        };
        // Skipping security negotiation is an authentication failure.
        let mut l = Login::new(running(policy), 0, "127.0.0.1:5000".parse().unwrap(), 1);
        let text = "InitiatorName=iqn.2026-11.io.vit:i\0TargetName=iqn.2026-11.io.vit:t\0";
        let (req, data) = request(Stage::Operational, Stage::FullFeature, true, text);
        let (r, _) = response(&l.on_request(&req, &data));
        assert_eq!(
            u16::from_be_bytes([r.status_class, r.status_detail]),
            LoginStatus::AuthenticationFailure as u16
        );
    }

    fn chap_policy() -> AuthPolicy {
        AuthPolicy {
            auth_type: Some(AuthType::Chap),
            chap: vec![("alice".into(), "alicesecret12".into())],
            ..Default::default()
        }
    }

    /// A target that requires CHAP refuses at once (0201, as ctld) an initiator that offers
    /// AuthMethod without CHAP, or asks to leave the security stage without agreeing to CHAP:
    /// it was answered AuthMethod=Reject or nothing with T=0 and left to wait for the timeout.
    #[test]
    fn an_initiator_that_does_not_agree_to_chap_is_refused_at_once() {
        let names = "InitiatorName=iqn.2026-11.io.vit:i\0TargetName=iqn.2026-11.io.vit:t\0";
        for (auth, transit, nsg) in [
            ("AuthMethod=None\0", true, Stage::Operational),
            ("AuthMethod=None\0", false, Stage::Operational),
            ("AuthMethod=KRB5,None\0", true, Stage::FullFeature),
            ("", true, Stage::Operational),
        ] {
            let mut l = Login::new(
                running(chap_policy()),
                0,
                "127.0.0.1:5000".parse().unwrap(),
                1,
            );
            let (req, data) = request(Stage::Security, nsg, transit, &format!("{names}{auth}"));
            let (r, text) = response(&l.on_request(&req, &data));
            assert_eq!(
                status_of(&r),
                LoginStatus::AuthenticationFailure as u16,
                "{auth:?} T={transit}: {text}"
            );
            assert!(matches!(
                l.take_outcome(),
                Some(LoginOutcome::Failed { .. })
            ));
        }
        // Offering CHAP, or saying nothing yet without asking to transit, goes on.
        for (auth, transit) in [("AuthMethod=None,CHAP\0", true), ("", false)] {
            let mut l = Login::new(
                running(chap_policy()),
                0,
                "127.0.0.1:5000".parse().unwrap(),
                1,
            );
            let (req, data) = request(
                Stage::Security,
                Stage::Operational,
                transit,
                &format!("{names}{auth}"),
            );
            let (r, text) = response(&l.on_request(&req, &data));
            assert_eq!((status_of(&r), r.transit), (0, false), "{auth:?}: {text}");
            assert!(l.take_outcome().is_none());
        }
    }

    /// The CHAP_I and CHAP_C of a response text (`;` for NUL).
    fn chap_challenge(text: &str) -> (u8, Vec<u8>) {
        let value = |key: &str| {
            text.split(';')
                .find_map(|kv| kv.strip_prefix(key))
                .unwrap_or_else(|| panic!("{key} in {text}"))
                .to_string()
        };
        let id: u8 = value("CHAP_I=").parse().unwrap();
        let hex = value("CHAP_C=0x");
        let challenge = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        (id, challenge)
    }

    /// The CHAP_N and CHAP_R that answer the challenge in a response text (`;` for NUL).
    fn chap_answer(text: &str, user: &str, secret: &[u8]) -> String {
        let (id, challenge) = chap_challenge(text);
        let answer = crate::iscsi::chap::chap_response(id, secret, &challenge);
        format!(
            "CHAP_N={user}\0CHAP_R={}\0",
            crate::iscsi::chap::Hex(&answer)
        )
    }

    /// An initiator may ask to go from the security stage straight to full feature phase (T=1,
    /// NSG=3) in every request: while CHAP is under way the target answers T=0, and transits
    /// once it succeeded. It was refused with 0201 on its first request.
    #[test]
    fn chap_with_a_transit_to_full_feature_phase_asked_from_the_start() {
        let mut l = Login::new(
            running(chap_policy()),
            0,
            "127.0.0.1:5000".parse().unwrap(),
            4,
        );
        let first = "InitiatorName=iqn.2026-11.io.vit:i\0TargetName=iqn.2026-11.io.vit:t\0AuthMethod=CHAP\0";
        let (req, data) = request(Stage::Security, Stage::FullFeature, true, first);
        let (r, text) = response(&l.on_request(&req, &data));
        assert_eq!((status_of(&r), r.transit), (0, false), "{text}");
        let (req, data) = request(Stage::Security, Stage::FullFeature, true, "CHAP_A=5\0");
        let (r, text) = response(&l.on_request(&req, &data));
        assert_eq!((status_of(&r), r.transit), (0, false), "{text}");
        let keys = chap_answer(&text, "alice", b"alicesecret12");
        let (req, data) = request(Stage::Security, Stage::FullFeature, true, &keys);
        let (r, text) = response(&l.on_request(&req, &data));
        assert_eq!(
            (status_of(&r), r.transit, r.nsg, r.tsih),
            (0, true, Stage::FullFeature as u8, 4),
            "{text}"
        );
        assert!(matches!(
            l.take_outcome(),
            Some(LoginOutcome::Session {
                target: Some(_),
                ..
            })
        ));
        // A wrong response still fails.
        let mut l = Login::new(
            running(chap_policy()),
            0,
            "127.0.0.1:5000".parse().unwrap(),
            4,
        );
        let (req, data) = request(Stage::Security, Stage::FullFeature, true, first);
        l.on_request(&req, &data);
        let (req, data) = request(Stage::Security, Stage::FullFeature, true, "CHAP_A=5\0");
        let (_, text) = response(&l.on_request(&req, &data));
        let keys = chap_answer(&text, "alice", b"notthesecret");
        let (req, data) = request(Stage::Security, Stage::FullFeature, true, &keys);
        let (r, _) = response(&l.on_request(&req, &data));
        assert_eq!(status_of(&r), LoginStatus::AuthenticationFailure as u16);
    }

    /// The initiator sets T only once CHAP is done (its CHAP_N/CHAP_R went with T=0, which
    /// RFC 7143 allows): the request that then asks to transit carries no keys. It was refused
    /// with 0200 ("CHAP exchange already finished"); CHAP keys sent again still are.
    #[test]
    fn a_transit_asked_after_chap_succeeded_is_granted() {
        let start = |l: &mut Login| {
            let first = "InitiatorName=iqn.2026-11.io.vit:i\0TargetName=iqn.2026-11.io.vit:t\0AuthMethod=CHAP\0";
            let (req, data) = request(Stage::Security, Stage::Operational, false, first);
            l.on_request(&req, &data);
            let (req, data) = request(Stage::Security, Stage::Operational, false, "CHAP_A=5\0");
            let (_, text) = response(&l.on_request(&req, &data));
            let keys = chap_answer(&text, "alice", b"alicesecret12");
            let (req, data) = request(Stage::Security, Stage::Operational, false, &keys);
            let (r, text) = response(&l.on_request(&req, &data));
            assert_eq!((status_of(&r), r.transit), (0, false), "{text}");
            keys
        };
        let mut l = Login::new(
            running(chap_policy()),
            0,
            "127.0.0.1:5000".parse().unwrap(),
            1,
        );
        start(&mut l);
        let (req, data) = request(Stage::Security, Stage::Operational, true, "");
        let (r, text) = response(&l.on_request(&req, &data));
        assert_eq!(
            (status_of(&r), r.transit, r.nsg),
            (0, true, Stage::Operational as u8),
            "{text}"
        );
        let (req, data) = request(Stage::Operational, Stage::FullFeature, true, "");
        let (r, text) = response(&l.on_request(&req, &data));
        assert_eq!((status_of(&r), r.transit), (0, true), "{text}");
        assert!(matches!(
            l.take_outcome(),
            Some(LoginOutcome::Session { .. })
        ));
        // The same response again is a protocol error.
        let mut l = Login::new(
            running(chap_policy()),
            0,
            "127.0.0.1:5000".parse().unwrap(),
            1,
        );
        let keys = start(&mut l);
        let (req, data) = request(Stage::Security, Stage::Operational, true, &keys);
        let (r, _) = response(&l.on_request(&req, &data));
        assert_eq!(status_of(&r), LoginStatus::InitiatorError as u16);
    }

    #[test]
    fn a_chap_discovery_login_hands_its_exchange_to_the_session() {
        let disc = AuthPolicy {
            chap: vec![("alice".into(), "alicesecret12".into())],
            ..Default::default()
        };
        let mut r = Arc::try_unwrap(running(AuthPolicy::none())).unwrap();
        r.portal_groups[0].discovery_auth = disc;
        let mut l = Login::new(Arc::new(r), 0, "127.0.0.1:5000".parse().unwrap(), 1);
        let first = "InitiatorName=iqn.2026-11.io.vit:i\0SessionType=Discovery\0AuthMethod=CHAP\0";
        let (req, data) = request(Stage::Security, Stage::Operational, false, first);
        let (r, text) = response(&l.on_request(&req, &data));
        assert_eq!(r.status_class, 0, "{text}");
        let (req, data) = request(Stage::Security, Stage::Operational, false, "CHAP_A=5\0");
        let (_, text) = response(&l.on_request(&req, &data));
        let (id, challenge) = chap_challenge(&text);
        let keys = chap_answer(&text, "alice", b"alicesecret12");
        let (req, data) = request(Stage::Security, Stage::Operational, true, &keys);
        let (r, text) = response(&l.on_request(&req, &data));
        assert_eq!((r.status_class, r.transit), (0, true), "{text}");
        let (req, data) = request(Stage::Operational, Stage::FullFeature, true, "");
        let (r, text) = response(&l.on_request(&req, &data));
        assert_eq!((r.status_class, r.transit), (0, true), "{text}");
        match l.take_outcome() {
            Some(LoginOutcome::Session {
                target: None,
                chap: Some(proof),
                ..
            }) => {
                assert_eq!(proof.user, "alice");
                assert_eq!((proof.id, &proof.challenge[..]), (id, &challenge[..]));
                assert!(proof.verifies(b"alicesecret12"));
                assert!(!proof.verifies(b"othersecret1"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn redirects_answer_0101_with_the_target_address() {
        // A portal group redirect comes before authentication.
        let run = running(AuthPolicy::deny());
        let mut r = Arc::try_unwrap(run).unwrap();
        r.portal_groups[0].redirect = Some("10.0.0.9:3260".into());
        let mut l = Login::new(Arc::new(r), 0, "127.0.0.1:5000".parse().unwrap(), 1);
        let (req, data) = request(Stage::Security, Stage::Operational, true, FIRST);
        let (resp, text) = response(&l.on_request(&req, &data));
        assert_eq!(
            u16::from_be_bytes([resp.status_class, resp.status_detail]),
            0x0101
        );
        assert_eq!(text, "TargetAddress=10.0.0.9:3260;");
        // A target redirect comes once the login would have succeeded.
        let run = running(AuthPolicy::none());
        let mut r = Arc::try_unwrap(run).unwrap();
        let mut t = Arc::try_unwrap(r.targets.remove(0)).unwrap();
        t.redirect = Some("owner.example:3261".into());
        r.targets.push(Arc::new(t));
        let mut l = Login::new(Arc::new(r), 0, "127.0.0.1:5000".parse().unwrap(), 1);
        let (req, data) = request(Stage::Security, Stage::Operational, true, FIRST);
        let (resp, _) = response(&l.on_request(&req, &data));
        assert_eq!(resp.status_class, 0);
        let (req, data) = request(Stage::Operational, Stage::FullFeature, true, "");
        let (resp, text) = response(&l.on_request(&req, &data));
        assert_eq!(
            u16::from_be_bytes([resp.status_class, resp.status_detail]),
            0x0101
        );
        assert_eq!(text, "TargetAddress=owner.example:3261;");
    }
}
