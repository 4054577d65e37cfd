//! SendTargets (RFC 7143 appendix D): which targets an initiator sees and where.

use super::runtime::{Running, TargetRt};
use crate::config::AuthType;
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

/// Answers a text request: `SendTargets=All` lists every target in `targets`, `SendTargets=NAME`
/// that one, `SendTargets=` (empty) the first (a normal session's own); other keys are answered
/// `NotUnderstood`. A malformed request gets an empty answer.
pub fn answer_text(request: &[u8], targets: &[TargetEntry], local: Option<SocketAddr>) -> Vec<u8> {
    let Ok(list) = TextList::parse(request) else {
        return Vec::new();
    };
    let mut out = String::new();
    for pair in list.iter() {
        if pair.key != "SendTargets" {
            let _ = write!(out, "{}=NotUnderstood\0", pair.key);
            continue;
        }
        let chosen: Vec<&TargetEntry> = match pair.value {
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
    out.into_bytes()
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

    #[test]
    fn send_targets_all_lists_every_target_with_addresses() {
        let local = Some("127.0.0.1:3260".parse().unwrap());
        let text = String::from_utf8(answer_text(b"SendTargets=All\0", &entries(), local)).unwrap();
        assert_eq!(
            text,
            "TargetName=iqn.2026-11.io.vit:a\0TargetAddress=127.0.0.1:3260,1\0\
             TargetName=iqn.2026-11.io.vit:b\0TargetAddress=127.0.0.2:3261,2\0"
        );
    }

    #[test]
    fn send_targets_by_name_and_unknown_keys() {
        let text = String::from_utf8(answer_text(
            b"SendTargets=iqn.2026-11.io.vit:b\0Foo=1\0",
            &entries(),
            None,
        ))
        .unwrap();
        assert_eq!(
            text,
            "TargetName=iqn.2026-11.io.vit:b\0TargetAddress=127.0.0.2:3261,2\0Foo=NotUnderstood\0"
        );
        assert!(answer_text(b"SendTargets=iqn.x:none\0", &entries(), None).is_empty());
        assert!(answer_text(b"no-equals\0", &entries(), None).is_empty());
    }
}
