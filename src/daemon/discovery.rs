//! SendTargets (RFC 7143 appendix D): which targets an initiator sees and where.

use super::runtime::{Running, TargetRt};
use crate::config::AuthType;
use crate::iscsi::params::{FullFeatureKey, full_feature_key};
use crate::iscsi::text::TextList;
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

/// The targets a discovery session on portal group `pg` shows `initiator` at `peer`: those with
/// a port in that portal group whose access rules (auth-type, initiator names, initiator portals)
/// would let it log in there (as ctld, a target of another portal group is not shown).
pub fn visible_targets(
    running: &Running,
    pg: usize,
    initiator: &str,
    peer: IpAddr,
) -> Vec<TargetEntry> {
    running
        .targets
        .iter()
        .filter(|t| {
            t.portal_groups.contains(&pg)
                && t.auth.effective_type() != AuthType::Deny
                && t.auth.allows_initiator(initiator)
                && t.auth.allows_portal(peer)
        })
        .map(|t| TargetEntry::of(t))
        .collect()
}

/// `ip:port,tag`, with a wildcard address replaced by the one the initiator reached us on.
fn target_address(addr: SocketAddr, tag: u16, local: Option<SocketAddr>) -> Option<String> {
    let ip = if addr.ip().is_unspecified() {
        let l = local?;
        if l.is_ipv4() != addr.is_ipv4() && !addr.is_ipv6() {
            return None;
        }
        l.ip()
    } else {
        addr.ip()
    };
    Some(match ip {
        std::net::IpAddr::V4(v4) => format!("{v4}:{},{tag}", addr.port()),
        std::net::IpAddr::V6(v6) => format!("[{v6}]:{},{tag}", addr.port()),
    })
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
}

/// Answers a text request: `SendTargets=All` lists every target in `targets`, `SendTargets=NAME`
/// that one, `SendTargets=` (empty) the first (a normal session's own). The other keys are
/// taken as [`full_feature_key`] says: declarations of MaxRecvDataSegmentLength and
/// InitiatorAlias are not answered and come back in the [`TextAnswer`], known keys that may not
/// be negotiated in full feature phase are answered `Reject`, unknown keys `NotUnderstood`.
///
/// A `Reject` fails the negotiation, and RFC 7143 §7.12 keeps the values agreed before: none
/// of the request's declarations are returned then. A malformed request gets an empty answer.
pub fn answer_text(
    request: &[u8],
    targets: &[TargetEntry],
    local: Option<SocketAddr>,
) -> TextAnswer {
    let Ok(list) = TextList::parse(request) else {
        return TextAnswer::default();
    };
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
            FullFeatureKey::Ignored => continue,
        };
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
    answer
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
            redirect: None,
        }
    }

    #[test]
    fn discovery_shows_only_targets_an_initiator_could_log_in_to_there() {
        let running = Running {
            generation: 1,
            portal_groups: vec![pg(0), pg(1)],
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
            ],
        };
        let names = |pg: usize, peer: &str| -> Vec<String> {
            visible_targets(&running, pg, "iqn.2026-11.io.vit:i", peer.parse().unwrap())
                .into_iter()
                .map(|t| t.name)
                .collect()
        };
        assert_eq!(names(0, "10.0.0.7"), ["iqn.2026-11.io.vit:both"]);
        assert_eq!(
            names(1, "10.0.1.7"),
            ["iqn.2026-11.io.vit:both", "iqn.2026-11.io.vit:other-pg"]
        );
        assert_eq!(
            names(0, "192.168.3.4"),
            ["iqn.2026-11.io.vit:both", "iqn.2026-11.io.vit:other-net"]
        );
    }

    fn text_of(request: &[u8], local: Option<SocketAddr>) -> String {
        String::from_utf8(answer_text(request, &entries(), local).text).unwrap()
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
    fn send_targets_by_name_and_unknown_keys() {
        let text = text_of(b"SendTargets=iqn.2026-11.io.vit:b\0Foo=1\0", None);
        assert_eq!(
            text,
            "TargetName=iqn.2026-11.io.vit:b\0TargetAddress=127.0.0.2:3261,2\0Foo=NotUnderstood\0"
        );
        assert!(text_of(b"SendTargets=iqn.x:none\0", None).is_empty());
        assert_eq!(
            answer_text(b"no-equals\0", &entries(), None),
            TextAnswer::default()
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
        );
        assert_eq!(
            a,
            TextAnswer {
                text: Vec::new(),
                max_recv_data_segment_length: Some(4096),
                initiator_alias: Some("db1".into()),
            }
        );
        // Alongside SendTargets, only SendTargets is answered.
        let a = answer_text(
            b"MaxRecvDataSegmentLength=512\0SendTargets=iqn.2026-11.io.vit:b\0",
            &entries(),
            None,
        );
        assert_eq!(a.max_recv_data_segment_length, Some(512));
        assert!(a.text.starts_with(b"TargetName=iqn.2026-11.io.vit:b\0"));
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
        // Answers to negotiations the target never opened are ignored.
        assert!(text_of(b"MaxBurstLength=NotUnderstood\0", None).is_empty());
    }

    #[test]
    fn a_bad_declaration_or_a_reject_keeps_the_values_in_force() {
        for bad in ["511", "16777216", "0x", "4k", ""] {
            let request = format!("MaxRecvDataSegmentLength={bad}\0");
            let a = answer_text(request.as_bytes(), &entries(), None);
            assert_eq!(a.text, b"MaxRecvDataSegmentLength=Reject\0", "{bad}");
            assert_eq!(a.max_recv_data_segment_length, None, "{bad}");
        }
        let a = answer_text(b"MaxRecvDataSegmentLength=16777215\0", &entries(), None);
        assert_eq!(a.max_recv_data_segment_length, Some(16_777_215));
        // A negotiation that fails leaves no partial result (RFC 7143 §7.12).
        let a = answer_text(
            b"MaxRecvDataSegmentLength=4096\0InitiatorAlias=x\0MaxBurstLength=512\0",
            &entries(),
            None,
        );
        assert_eq!(a.text, b"MaxBurstLength=Reject\0");
        assert_eq!(
            (a.max_recv_data_segment_length, a.initiator_alias),
            (None, None)
        );
    }
}
