//! SendTargets (RFC 7143 appendix D): which targets an initiator sees and where; and the answer
//! to every full-feature-phase Text Request ([`answer_text`]), SendTargets or other keys.

use super::login::chap_secrets;
use super::runtime::{AuthPolicy, Running, TargetRt};
use crate::config::{AuthType, DiscoveryFilter};
use crate::iscsi::chap::ChapProof;
use crate::iscsi::params::{FullFeatureKey, full_feature_key};
use crate::iscsi::text::{KeyName, TextError, TextList};
use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};

/// The largest text request (all its continuation PDUs together) we accept.
pub const MAX_TEXT_REQUEST: usize = 64 * 1024;

/// A target as discovery presents it.
#[derive(Clone, Debug)]
pub struct TargetEntry {
    pub name: String,
    pub portals: Vec<(SocketAddr, u16)>,
}

impl TargetEntry {
    pub fn of(t: &TargetRt) -> Self {
        TargetEntry {
            name: t.name.clone(),
            portals: t.portals.clone(),
        }
    }
}

/// The targets a discovery session on portal group `pg` shows `initiator` at `peer`, which
/// logged in with the CHAP exchange `chap` (if any). As ctld, only targets with a port in that
/// portal group, and of those what the portal group's `discovery-filter` lets through
/// (ctld's `discovery_target_filtered_out`):
/// - `none`: all of them;
/// - `portal`: not those whose initiator-portal list excludes `peer`;
/// - `portal-name`: nor those whose initiator-name list excludes `initiator`;
/// - `portal-name-auth`: nor those whose auth-type is not none unless the discovery login used
///   CHAP as a user of the target's auth group and the response it gave then verifies with that
///   user's secret there (so auth-type deny targets are never shown).
///
/// With no `discovery-filter` written, vit filters as `portal-name` and also hides auth-type
/// deny targets: a discovery session lists no target the initiator could not log in to for
/// its name, address or a deny (ctld's default is `none`).
pub fn visible_targets(
    running: &Running,
    pg: usize,
    initiator: &str,
    peer: IpAddr,
    chap: Option<&ChapProof>,
) -> Vec<TargetEntry> {
    let filter = running.portal_groups.get(pg).map(|p| p.discovery_filter);
    let Some(filter) = filter else {
        return Vec::new();
    };
    running
        .targets
        .iter()
        .filter(|t| {
            t.portal_groups.contains(&pg) && passes(filter, t.auth_for(pg), initiator, peer, chap)
        })
        .map(|t| TargetEntry::of(t))
        .collect()
}

/// Whether `discovery-filter` `filter` (`None`: not written) lets a discovery session see `t`.
fn passes(
    filter: Option<DiscoveryFilter>,
    auth: &AuthPolicy,
    initiator: &str,
    peer: IpAddr,
    chap: Option<&ChapProof>,
) -> bool {
    let level = filter.unwrap_or(DiscoveryFilter::PortalName);
    let at_least = |f: DiscoveryFilter| level >= f;
    if filter.is_none() && auth.effective_type() == AuthType::Deny {
        return false;
    }
    if at_least(DiscoveryFilter::Portal) && !auth.allows_portal(peer) {
        return false;
    }
    if at_least(DiscoveryFilter::PortalName) && !auth.allows_initiator(initiator) {
        return false;
    }
    if at_least(DiscoveryFilter::PortalNameAuth) {
        return match auth.effective_type() {
            AuthType::None => true,
            AuthType::Deny => false,
            AuthType::Chap | AuthType::ChapMutual => chap.is_some_and(|proof| {
                chap_secrets(auth, &proof.user).is_some_and(|s| proof.verifies(s.secret))
            }),
        };
    }
    true
}

/// `ip:port,tag`, with a wildcard address replaced by the one the initiator reached us on. A
/// wildcard of the other family than that address is left out: `[::]` is listened on with
/// IPV6_V6ONLY, so it takes no IPv4 connection, as `0.0.0.0` takes no IPv6 one.
fn target_address(addr: SocketAddr, tag: u16, local: Option<SocketAddr>) -> Option<String> {
    let ip = if addr.ip().is_unspecified() {
        let l = local?.ip().to_canonical();
        if l.is_ipv4() != addr.is_ipv4() {
            return None;
        }
        l
    } else {
        addr.ip()
    };
    Some(match ip {
        std::net::IpAddr::V4(v4) => format!("{v4}:{},{tag}", addr.port()),
        std::net::IpAddr::V6(v6) => format!("[{v6}]:{},{tag}", addr.port()),
    })
}

/// A Text Request that is a protocol error: the connection answers it with a Reject PDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TextRequestError {
    /// The text breaks RFC 7143 §6.1 (a key repeated, a pair without `=` or its NUL).
    #[error(transparent)]
    Text(#[from] TextError),
    /// A key offered with a value reserved for answers (RFC 7143 §6.2).
    #[error("key {0} offered with a value reserved for answers")]
    ReservedValue(KeyName),
}

/// The answer to a full-feature-phase Text Request, and what it changes on the connection.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TextAnswer {
    /// The response text.
    pub text: Vec<u8>,
    /// The initiator's new MaxRecvDataSegmentLength, when it declared one.
    pub max_recv_data_segment_length: Option<u32>,
    /// The initiator's new alias, when it declared one.
    pub initiator_alias: Option<String>,
    /// Whether the request asked SendTargets (a discovery session takes no other request,
    /// RFC 7143 §4.3).
    pub send_targets: bool,
}

/// Answers a text request: `SendTargets=All` lists every target in `targets`, `SendTargets=NAME`
/// that one, `SendTargets=` (empty) the first (a normal session's own). The other keys are
/// taken as [`full_feature_key`] says: declarations of MaxRecvDataSegmentLength and
/// InitiatorAlias are not answered and come back in the [`TextAnswer`], known keys that may not
/// be negotiated in full feature phase are answered `Reject`, unknown keys `NotUnderstood`.
///
/// A `Reject` fails the negotiation, and RFC 7143 §7.12 keeps the values agreed before: none
/// of the request's declarations are returned then. A request whose text breaks RFC 7143 §6.1
/// (a key repeated, a pair without `=` or its NUL, a key name too long), or that offers a value
/// reserved for answers (§6.2), is the error: a protocol error the connection answers with a
/// Reject, taking nothing of it.
pub fn answer_text(
    request: &[u8],
    targets: &[TargetEntry],
    local: Option<SocketAddr>,
) -> Result<TextAnswer, TextRequestError> {
    let list = TextList::parse(request)?;
    let mut answer = TextAnswer::default();
    let mut failed = false;
    let mut out = String::new();
    for pair in list.iter() {
        let value = match full_feature_key(pair.key, pair.value) {
            FullFeatureKey::SendTargets(value) => value,
            FullFeatureKey::MaxRecvDataSegmentLength(n) => {
                answer.max_recv_data_segment_length = Some(n);
                continue;
            }
            FullFeatureKey::InitiatorAlias(alias) => {
                answer.initiator_alias = Some(alias.to_owned());
                continue;
            }
            FullFeatureKey::Reject => {
                failed = true;
                let _ = write!(out, "{}=Reject\0", pair.key);
                continue;
            }
            FullFeatureKey::NotUnderstood => {
                let _ = write!(out, "{}=NotUnderstood\0", pair.key);
                continue;
            }
            FullFeatureKey::ReservedValue => {
                return Err(TextRequestError::ReservedValue(KeyName::new(pair.key)));
            }
        };
        answer.send_targets = true;
        let chosen: Vec<&TargetEntry> = match value {
            "All" => targets.iter().collect(),
            "" => targets.iter().take(1).collect(),
            name => targets
                .iter()
                .filter(|t| t.name.eq_ignore_ascii_case(name))
                .collect(),
        };
        for t in chosen {
            let _ = write!(out, "TargetName={}\0", t.name);
            let mut seen = Vec::new();
            for &(addr, tag) in &t.portals {
                if let Some(a) = target_address(addr, tag, local)
                    && !seen.contains(&a)
                {
                    let _ = write!(out, "TargetAddress={a}\0");
                    seen.push(a);
                }
            }
        }
    }
    if failed {
        answer.max_recv_data_segment_length = None;
        answer.initiator_alias = None;
    }
    answer.text = out.into_bytes();
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::runtime::{AuthPolicy, PortalGroupRt};
    use crate::scsi::DeviceServer;
    use std::sync::Arc;

    fn entries() -> Vec<TargetEntry> {
        vec![
            TargetEntry {
                name: "iqn.2026-11.io.vit:a".into(),
                portals: vec![("0.0.0.0:3260".parse().unwrap(), 1)],
            },
            TargetEntry {
                name: "iqn.2026-11.io.vit:b".into(),
                portals: vec![("127.0.0.2:3261".parse().unwrap(), 2)],
            },
        ]
    }

    fn target(name: &str, pgs: Vec<usize>, auth: AuthPolicy) -> Arc<TargetRt> {
        Arc::new(TargetRt {
            name: name.into(),
            alias: None,
            auth,
            pg_auth: Vec::new(),
            portals: pgs
                .iter()
                .map(|&i| (format!("10.0.{i}.1:3260").parse().unwrap(), i as u16 + 1))
                .collect(),
            portal_groups: pgs,
            redirect: None,
            owner_id: None,
            luns: vec![],
            server: DeviceServer::new(vec![]).unwrap(),
        })
    }

    fn pg(i: usize) -> PortalGroupRt {
        PortalGroupRt {
            name: format!("pg{i}"),
            tag: i as u16 + 1,
            addrs: vec![format!("10.0.{i}.1:3260").parse().unwrap()],
            listen: vec![],
            foreign: false,
            discovery_auth: AuthPolicy::none(),
            discovery_filter: None,
            redirect: None,
            dscp: None,
            pcp: None,
        }
    }

    /// Portal group 0 filtering with `filter`, portal group 1 as vit does by default; on pg0
    /// one target for each thing a filter may look at.
    fn running_with(filter: Option<DiscoveryFilter>) -> Running {
        let mut pg0 = pg(0);
        pg0.discovery_filter = filter;
        Running {
            generation: 1,
            portal_groups: vec![pg0, pg(1)],
            targets: vec![
                target("iqn.2026-11.io.vit:both", vec![0, 1], AuthPolicy::none()),
                // Only on the other portal group: a login here is refused (not found).
                target("iqn.2026-11.io.vit:other-pg", vec![1], AuthPolicy::none()),
                // Initiators of another network only: a login from here is refused.
                target(
                    "iqn.2026-11.io.vit:other-net",
                    vec![0],
                    AuthPolicy {
                        portals: vec!["192.168.0.0/16".into()],
                        ..AuthPolicy::none()
                    },
                ),
                target(
                    "iqn.2026-11.io.vit:other-initiator",
                    vec![0],
                    AuthPolicy {
                        initiators: vec!["iqn.2026-11.io.vit:someone-else".into()],
                        ..AuthPolicy::none()
                    },
                ),
                target("iqn.2026-11.io.vit:denied", vec![0], AuthPolicy::deny()),
                target(
                    "iqn.2026-11.io.vit:chap",
                    vec![0],
                    AuthPolicy {
                        chap: vec![("alice".into(), "alicesecret12".into())],
                        ..Default::default()
                    },
                ),
                target(
                    "iqn.2026-11.io.vit:mutual",
                    vec![0],
                    AuthPolicy {
                        chap_mutual: vec![(
                            "bob".into(),
                            "bobsecret1234".into(),
                            "tgt".into(),
                            "targetsecret1".into(),
                        )],
                        ..Default::default()
                    },
                ),
            ],
        }
    }

    fn names(running: &Running, pg: usize, peer: &str, chap: Option<&ChapProof>) -> Vec<String> {
        visible_targets(
            running,
            pg,
            "iqn.2026-11.io.vit:i",
            peer.parse().unwrap(),
            chap,
        )
        .into_iter()
        .map(|t| t.name.trim_start_matches("iqn.2026-11.io.vit:").to_string())
        .collect()
    }

    /// What a discovery login as `user` that answered with `secret` leaves.
    fn proof(user: &str, secret: &str) -> ChapProof {
        let challenge = [0x5a; crate::iscsi::chap::CHALLENGE_LEN];
        ChapProof {
            user: user.into(),
            id: 9,
            challenge,
            response: crate::iscsi::chap::chap_response(9, secret.as_bytes(), &challenge),
        }
    }

    #[test]
    fn discovery_shows_only_targets_an_initiator_could_log_in_to_there() {
        // No discovery-filter: portal-name, and auth-type deny targets hidden.
        let running = running_with(None);
        let names = |pg: usize, peer: &str| names(&running, pg, peer, None);
        assert_eq!(names(0, "10.0.0.7"), ["both", "chap", "mutual"]);
        assert_eq!(names(1, "10.0.1.7"), ["both", "other-pg"]);
        assert_eq!(
            names(0, "192.168.3.4"),
            ["both", "other-net", "chap", "mutual"]
        );
    }

    #[test]
    fn discovery_filter_none_portal_and_portal_name_are_ctlds() {
        // As ctld: none shows every target of the portal group, deny included; portal drops
        // those of other networks, portal-name those of other initiators too.
        let running = running_with(Some(DiscoveryFilter::None));
        let all = [
            "both",
            "other-net",
            "other-initiator",
            "denied",
            "chap",
            "mutual",
        ];
        assert_eq!(names(&running, 0, "10.0.0.7", None), all);
        assert_eq!(names(&running, 1, "10.0.1.7", None), ["both", "other-pg"]);

        let running = running_with(Some(DiscoveryFilter::Portal));
        assert_eq!(
            names(&running, 0, "10.0.0.7", None),
            ["both", "other-initiator", "denied", "chap", "mutual"]
        );
        assert_eq!(
            names(&running, 0, "192.168.3.4", None),
            [
                "both",
                "other-net",
                "other-initiator",
                "denied",
                "chap",
                "mutual"
            ]
        );

        let running = running_with(Some(DiscoveryFilter::PortalName));
        assert_eq!(
            names(&running, 0, "10.0.0.7", None),
            ["both", "denied", "chap", "mutual"]
        );
        assert_eq!(
            names(&running, 0, "192.168.3.4", None),
            ["both", "other-net", "denied", "chap", "mutual"]
        );
    }

    #[test]
    fn discovery_filter_portal_name_auth_wants_the_targets_own_chap_credentials() {
        let running = running_with(Some(DiscoveryFilter::PortalNameAuth));
        let at = |chap: Option<&ChapProof>| names(&running, 0, "10.0.0.7", chap);
        // Without CHAP at discovery: only targets that need none (deny never).
        assert_eq!(at(None), ["both"]);
        // The target's user and a response its secret gives.
        assert_eq!(at(Some(&proof("alice", "alicesecret12"))), ["both", "chap"]);
        assert_eq!(at(Some(&proof("bob", "bobsecret1234"))), ["both", "mutual"]);
        // A user the target has with another secret (the discovery auth group's, say), a user
        // it does not have, and mutual CHAP's target-side secret: not shown.
        assert_eq!(at(Some(&proof("alice", "discoverysecret"))), ["both"]);
        assert_eq!(at(Some(&proof("carol", "alicesecret12"))), ["both"]);
        assert_eq!(at(Some(&proof("bob", "targetsecret1"))), ["both"]);
        // The name and portal checks still apply.
        assert_eq!(
            names(
                &running,
                0,
                "192.168.3.4",
                Some(&proof("alice", "alicesecret12"))
            ),
            ["both", "other-net", "chap"]
        );
    }

    fn text_of(request: &[u8], local: Option<SocketAddr>) -> String {
        String::from_utf8(answer_text(request, &entries(), local).unwrap().text).unwrap()
    }

    #[test]
    fn send_targets_all_lists_every_target_with_addresses() {
        let local = Some("127.0.0.1:3260".parse().unwrap());
        let text = text_of(b"SendTargets=All\0", local);
        assert_eq!(
            text,
            "TargetName=iqn.2026-11.io.vit:a\0TargetAddress=127.0.0.1:3260,1\0\
             TargetName=iqn.2026-11.io.vit:b\0TargetAddress=127.0.0.2:3261,2\0"
        );
    }

    #[test]
    fn a_wildcard_is_answered_only_with_an_address_of_its_family() {
        let targets = [TargetEntry {
            name: "iqn.2026-11.io.vit:c".into(),
            portals: vec![
                ("127.0.0.3:3262".parse().unwrap(), 4),
                ("[::]:3260".parse().unwrap(), 3),
                ("0.0.0.0:3263".parse().unwrap(), 5),
            ],
        }];
        let text = |local: &str| {
            let answer =
                answer_text(b"SendTargets=All\0", &targets, Some(local.parse().unwrap())).unwrap();
            String::from_utf8(answer.text).unwrap()
        };
        // Reached over IPv4 (another group's portal): `[::]` listens with IPV6_V6ONLY, so
        // 127.0.0.3:3260 would be an address nothing listens on.
        assert_eq!(
            text("127.0.0.3:3262"),
            "TargetName=iqn.2026-11.io.vit:c\0TargetAddress=127.0.0.3:3262,4\0\
             TargetAddress=127.0.0.3:3263,5\0"
        );
        assert_eq!(
            text("[::1]:3260"),
            "TargetName=iqn.2026-11.io.vit:c\0TargetAddress=127.0.0.3:3262,4\0\
             TargetAddress=[::1]:3260,3\0"
        );
    }

    #[test]
    fn send_targets_by_name_and_unknown_keys() {
        let text = text_of(b"SendTargets=iqn.2026-11.io.vit:b\0Foo=1\0", None);
        assert_eq!(
            text,
            "TargetName=iqn.2026-11.io.vit:b\0TargetAddress=127.0.0.2:3261,2\0Foo=NotUnderstood\0"
        );
        assert!(text_of(b"SendTargets=iqn.x:none\0", None).is_empty());
        assert_eq!(
            answer_text(b"no-equals\0", &entries(), None),
            Err(TextRequestError::Text(TextError::MissingEquals {
                offset: 0
            }))
        );
        assert_eq!(
            text_of(b"X-com.example.Foo=1\0X#Bar=2\0", None),
            "X-com.example.Foo=NotUnderstood\0X#Bar=NotUnderstood\0"
        );
    }

    #[test]
    fn declarations_are_taken_unanswered() {
        let a = answer_text(
            b"MaxRecvDataSegmentLength=4096\0InitiatorAlias=db1\0",
            &entries(),
            None,
        )
        .unwrap();
        assert_eq!(
            a,
            TextAnswer {
                text: Vec::new(),
                max_recv_data_segment_length: Some(4096),
                initiator_alias: Some("db1".into()),
                send_targets: false,
            }
        );
        // Alongside SendTargets, only SendTargets is answered.
        let a = answer_text(
            b"MaxRecvDataSegmentLength=512\0SendTargets=iqn.2026-11.io.vit:b\0",
            &entries(),
            None,
        )
        .unwrap();
        assert_eq!(a.max_recv_data_segment_length, Some(512));
        assert!(a.text.starts_with(b"TargetName=iqn.2026-11.io.vit:b\0"));
        assert!(a.send_targets);
    }

    #[test]
    fn keys_not_negotiable_in_full_feature_phase_are_rejected() {
        for key in [
            "HeaderDigest=None",
            "DataDigest=CRC32C",
            "MaxConnections=1",
            "InitialR2T=Yes",
            "ImmediateData=No",
            "MaxBurstLength=512",
            "FirstBurstLength=512",
            "DefaultTime2Wait=2",
            "DefaultTime2Retain=0",
            "MaxOutstandingR2T=1",
            "DataPDUInOrder=Yes",
            "DataSequenceInOrder=Yes",
            "ErrorRecoveryLevel=0",
            "SessionType=Normal",
            "TargetName=iqn.2026-11.io.vit:a",
            "InitiatorName=iqn.2026-11.io.vit:i",
            "AuthMethod=None",
            "TaskReporting=RFC3720",
            "iSCSIProtocolLevel=1",
            "OFMarker=No",
            "CHAP_A=5",
            "TargetAlias=x",
            "TargetAddress=127.0.0.1:3260,1",
            "TargetPortalGroupTag=1",
        ] {
            let name = key.split('=').next().unwrap();
            let request = format!("{key}\0");
            assert_eq!(
                text_of(request.as_bytes(), None),
                format!("{name}=Reject\0"),
                "{key}"
            );
        }
        // Answers to negotiations the target never opened are a protocol error (RFC 7143 §6.2).
        assert_eq!(
            answer_text(b"MaxBurstLength=NotUnderstood\0", &entries(), None).unwrap_err(),
            TextRequestError::ReservedValue(KeyName::new("MaxBurstLength"))
        );
    }

    #[test]
    fn a_bad_declaration_or_a_reject_keeps_the_values_in_force() {
        for bad in ["511", "16777216", "0x", "4k", ""] {
            let request = format!("MaxRecvDataSegmentLength={bad}\0");
            let a = answer_text(request.as_bytes(), &entries(), None).unwrap();
            assert_eq!(a.text, b"MaxRecvDataSegmentLength=Reject\0", "{bad}");
            assert_eq!(a.max_recv_data_segment_length, None, "{bad}");
        }
        let a = answer_text(b"MaxRecvDataSegmentLength=16777215\0", &entries(), None).unwrap();
        assert_eq!(a.max_recv_data_segment_length, Some(16_777_215));
        // A negotiation that fails leaves no partial result (RFC 7143 §7.12).
        let a = answer_text(
            b"MaxRecvDataSegmentLength=4096\0InitiatorAlias=x\0MaxBurstLength=512\0",
            &entries(),
            None,
        )
        .unwrap();
        assert_eq!(a.text, b"MaxBurstLength=Reject\0");
        assert_eq!(
            (a.max_recv_data_segment_length, a.initiator_alias),
            (None, None)
        );
    }
}
