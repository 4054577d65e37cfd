//! SendTargets (RFC 7143 appendix D): which targets an initiator sees and where.

use super::runtime::TargetRt;
use crate::iscsi::text::TextList;
use std::fmt::Write;
use std::net::SocketAddr;

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
