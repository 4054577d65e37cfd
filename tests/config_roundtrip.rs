//! Property: for arbitrary valid models, `verify` finds nothing and `parse(print(m)) == m`.
//!
//! Models are generated in two steps: raw random parts, then `build`, which makes names unique
//! and points every reference at a section that exists (so the model is valid by construction).

use proptest::prelude::*;
use proptest::sample::Index;
use vit::config::{self, *};

/// Any printable value: words, and strings that need quotes (spaces, `#`, braces, NBSP, non-ASCII).
fn value() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 ._#{};:@/\\[\\]\u{a0}é-]{1,12}"
}

/// A plain word.
fn word() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9][a-zA-Z0-9._:-]{0,10}"
}

fn iqn_base() -> impl Strategy<Value = String> {
    "iqn\\.(19|20)[0-9]{2}-(0[1-9]|1[0-2])\\.[a-z][a-z0-9-]{0,6}(\\.[a-z0-9-]{1,6}){0,2}(:[a-zA-Z0-9.:-]{0,12})?"
}

fn listen() -> impl Strategy<Value = String> {
    prop_oneof![
        (any::<[u8; 4]>(), 1u16..)
            .prop_map(|(a, p)| format!("{}.{}.{}.{}:{p}", a[0], a[1], a[2], a[3])),
        (any::<[u16; 8]>(), 1u16..)
            .prop_map(|(a, p)| format!("[{}]:{p}", std::net::Ipv6Addr::from(a))),
        (0u8..8, 1u16..).prop_map(|(n, p)| format!("vmk{n}:{p}")),
        any::<[u8; 4]>().prop_map(|a| format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3])),
    ]
}

fn initiator_portal() -> impl Strategy<Value = Named> {
    prop_oneof![
        (any::<[u8; 4]>(), prop::option::of(0u8..=32)).prop_map(|(a, l)| {
            let len = l.map(|l| format!("/{l}")).unwrap_or_default();
            format!("{}.{}.{}.{}{len}", a[0], a[1], a[2], a[3])
        }),
        (any::<[u16; 8]>(), 0u8..=128)
            .prop_map(|(a, l)| format!("[{}]/{l}", std::net::Ipv6Addr::from(a))),
    ]
    .prop_map(Named::new)
}

fn options(max: usize) -> impl Strategy<Value = Vec<Opt>> {
    prop::collection::vec(("o[a-z0-9-]{0,8}", value()), 0..max).prop_map(|v| {
        v.into_iter()
            .map(|(name, value)| Opt {
                name,
                value,
                pos: Pos::default(),
            })
            .collect()
    })
}

fn named_vec(s: impl Strategy<Value = String>, max: usize) -> impl Strategy<Value = Vec<Named>> {
    prop::collection::vec(s.prop_map(Named::new), 0..max)
}

/// A `dscp` value vitd takes: a codepoint as a number, in hexadecimal or by name.
fn dscp() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u8..=63).prop_map(|n| n.to_string()),
        (0u8..=63).prop_map(|n| format!("0x{n:02x}")),
        prop::sample::select(vec!["be", "ef", "cs0", "cs7", "af11", "af23", "af43"])
            .prop_map(str::to_string),
    ]
}

fn opt_named(s: impl Strategy<Value = String>) -> impl Strategy<Value = Option<Named>> {
    prop::option::of(s.prop_map(Named::new))
}

#[derive(Clone, Debug)]
struct RawAuth {
    kind: u8,
    chap: Vec<(String, String)>,
    mutual: Vec<[String; 4]>,
    initiators: Vec<String>,
    portals: Vec<Named>,
    groups: Vec<Index>,
}

fn raw_auth() -> impl Strategy<Value = RawAuth> {
    (
        0u8..7,
        prop::collection::vec((value(), value()), 0..3),
        prop::collection::vec([value(), value(), value(), value()], 0..3),
        prop::collection::vec(iqn_base(), 0..3),
        prop::collection::vec(initiator_portal(), 0..3),
        prop::collection::vec(any::<Index>(), 0..3),
    )
        .prop_map(
            |(kind, chap, mutual, initiators, portals, groups)| RawAuth {
                kind,
                chap,
                mutual,
                initiators,
                portals,
                groups,
            },
        )
}

fn lun_body() -> impl Strategy<Value = LunBody> {
    let p = Pos::default;
    (
        prop::option::of(prop_oneof![
            Just(Backend::Block),
            Just(Backend::Ramdisk),
            Just(Backend::Vmdk)
        ]),
        prop::option::of(prop_oneof![Just(512u64), Just(4096u64)]),
        prop::option::of(any::<u64>()),
        (opt_named(value()), opt_named(word())),
        prop::option::of(value()),
        options(3),
        prop::option::of("[a-z0-9-]{1,8}/[a-z0-9-]{1,8}\\.vmdk"),
        opt_named(value()),
        prop::option::of(any::<u64>()),
    )
        .prop_map(
            move |(
                backend,
                bs,
                ctl,
                (device_id, device_type),
                alias,
                mut options,
                path,
                serial,
                size,
            )| {
                if let Some(a) = alias {
                    options.push(Opt {
                        name: "lun-alias".into(),
                        value: a,
                        pos: p(),
                    });
                }
                let path = match (backend, path) {
                    (Some(Backend::Vmdk | Backend::Block), None) => Some(Named::new("t/l.vmdk")),
                    (_, path) => path.map(Named::new),
                };
                // A ramdisk LUN needs a size.
                let size = match (backend, size) {
                    (Some(Backend::Ramdisk), None) => Some(1 << 30),
                    (_, size) => size,
                };
                let mut body = LunBody {
                    pos: p(),
                    backend: backend.map(|b| (b, p())),
                    blocksize: bs.map(|b| (b, p())),
                    ctl_lun: ctl.map(|c| (c, p())),
                    device_id,
                    device_type,
                    options,
                    path,
                    serial,
                    size: size.map(|s| (s, p())),
                };
                // A memory LUN is at most MAX_RAMDISK_BYTES.
                if body.effective_backend() == Backend::Ramdisk
                    && let Some((s, _)) = &mut body.size
                {
                    *s %= MAX_RAMDISK_BYTES + 1;
                }
                body
            },
        )
}

fn portal_group() -> impl Strategy<Value = (PortalGroup, Option<Index>)> {
    (
        value(),
        prop::option::of(any::<Index>()),
        prop::option::of(prop_oneof![
            Just(DiscoveryFilter::None),
            Just(DiscoveryFilter::Portal),
            Just(DiscoveryFilter::PortalName),
            Just(DiscoveryFilter::PortalNameAuth)
        ]),
        (
            prop::collection::vec(listen(), 0..3),
            prop::collection::vec(listen(), 0..2),
        ),
        (opt_named(word()), opt_named(value()), opt_named(dscp())),
        options(3),
        (
            prop::option::of(any::<u16>()),
            any::<bool>(),
            prop::option::of(0u8..=7),
        ),
    )
        .prop_map(
            |(
                name,
                dag,
                filter,
                (l, li),
                (offload, redirect, dscp),
                options,
                (tag, foreign, pcp),
            )| {
                let p = Pos::default();
                let g = PortalGroup {
                    name,
                    pos: p,
                    discovery_auth_group: None,
                    discovery_filter: filter.map(|f| (f, p)),
                    listen: l.into_iter().map(Named::new).collect(),
                    listen_iser: li.into_iter().map(Named::new).collect(),
                    offload,
                    options,
                    redirect,
                    tag: tag.map(|t| (t, p)),
                    foreign,
                    dscp,
                    pcp: pcp.map(|c| (c, p)),
                };
                (g, dag)
            },
        )
}

#[derive(Clone, Debug)]
struct RawTarget {
    kind: u8,
    iqn: String,
    hex: u128,
    alias: Option<Named>,
    auth_group: Option<Index>,
    inline_auth: Option<RawAuth>,
    portal_groups: Vec<(Index, Option<Index>)>,
    ports: Vec<Named>,
    redirect: Option<Named>,
    options: Vec<Opt>,
    uuid: Option<String>,
    luns: Vec<(u64, Option<Index>, LunBody)>,
}

fn raw_target() -> impl Strategy<Value = RawTarget> {
    (
        (0u8..3, iqn_base(), any::<u128>()),
        opt_named(value()),
        (
            prop::option::of(any::<Index>()),
            prop::option::of(raw_auth()),
        ),
        prop::collection::vec((any::<Index>(), prop::option::of(any::<Index>())), 0..3),
        (named_vec(word(), 2), opt_named(word())),
        options(3),
        prop::option::of("[0-9a-f]{8}-[0-9a-f]{4}"),
        prop::collection::btree_map(
            0u64..=255,
            (prop::option::of(any::<Index>()), lun_body()),
            0..4,
        ),
    )
        .prop_map(
            |(
                (kind, iqn, hex),
                alias,
                (auth_group, inline_auth),
                portal_groups,
                (ports, redirect),
                options,
                uuid,
                luns,
            )| {
                RawTarget {
                    kind,
                    iqn,
                    hex,
                    alias,
                    auth_group,
                    inline_auth,
                    portal_groups,
                    ports,
                    redirect,
                    options,
                    uuid,
                    luns: luns.into_iter().map(|(id, (r, b))| (id, r, b)).collect(),
                }
            },
        )
}

/// generation, debug, timeout, maxproc, pidfile, isns servers, isns period, isns timeout.
type Globals = (
    Option<u64>,
    Option<u64>,
    Option<u64>,
    Option<u64>,
    Option<String>,
    Vec<String>,
    Option<u64>,
    Option<u64>,
);

#[derive(Clone, Debug)]
struct Raw {
    globals: Globals,
    igs: Vec<(String, Vec<String>)>,
    ags: Vec<(String, RawAuth)>,
    pgs: Vec<(PortalGroup, Option<Index>)>,
    luns: Vec<(String, LunBody)>,
    targets: Vec<RawTarget>,
}

fn raw() -> impl Strategy<Value = Raw> {
    (
        (
            any::<Option<u64>>(),
            any::<Option<u64>>(),
            any::<Option<u64>>(),
            any::<Option<u64>>(),
            prop::option::of(value()),
            prop::collection::vec(word(), 0..3),
            any::<Option<u64>>(),
            any::<Option<u64>>(),
        ),
        prop::collection::vec((value(), prop::collection::vec(iqn_base(), 0..3)), 0..3),
        prop::collection::vec((value(), raw_auth()), 0..3),
        prop::collection::vec(portal_group(), 0..3),
        prop::collection::vec((value(), lun_body()), 0..3),
        prop::collection::vec(raw_target(), 0..4),
    )
        .prop_map(|(globals, igs, ags, pgs, luns, targets)| Raw {
            globals,
            igs,
            ags,
            pgs,
            luns,
            targets,
        })
}

/// `base` made unique within its list by its index (names then end in distinct digits).
fn unique(base: &str, i: usize) -> String {
    format!("{base}{i}")
}

/// Picks one of `names` (plus `extra` predefined ones) by `idx`.
fn pick(names: &[String], extra: &[&str], idx: &Index) -> Named {
    let all: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .chain(extra.iter().copied())
        .collect();
    Named::new(*idx.get(&all))
}

fn build_auth(raw: &RawAuth, ig_names: &[String]) -> AuthSettings {
    let p = Pos::default();
    let chap: Vec<Chap> = raw
        .chap
        .iter()
        .map(|(u, s)| Chap {
            user: u.clone(),
            secret: s.clone(),
            pos: p,
        })
        .collect();
    let mutual: Vec<ChapMutual> = raw
        .mutual
        .iter()
        .map(|[u, s, mu, ms]| ChapMutual {
            user: u.clone(),
            secret: s.clone(),
            mutual_user: mu.clone(),
            mutual_secret: ms.clone(),
            pos: p,
        })
        .collect();
    let one_chap = || {
        vec![Chap {
            user: "u".into(),
            secret: "s".into(),
            pos: p,
        }]
    };
    let one_mutual = || {
        vec![ChapMutual {
            user: "u".into(),
            secret: "s".into(),
            mutual_user: "m".into(),
            mutual_secret: "t".into(),
            pos: p,
        }]
    };
    let (auth_type, chap, chap_mutual) = match raw.kind {
        0 => (None, chap, Vec::new()),
        1 => (None, Vec::new(), mutual),
        2 => (Some(AuthType::None), Vec::new(), Vec::new()),
        3 => (Some(AuthType::Deny), Vec::new(), Vec::new()),
        4 => (
            Some(AuthType::Chap),
            if chap.is_empty() { one_chap() } else { chap },
            Vec::new(),
        ),
        5 => (
            Some(AuthType::ChapMutual),
            Vec::new(),
            if mutual.is_empty() {
                one_mutual()
            } else {
                mutual
            },
        ),
        _ => (None, Vec::new(), Vec::new()),
    };
    let initiator_groups = if ig_names.is_empty() {
        Vec::new()
    } else {
        raw.groups.iter().map(|i| pick(ig_names, &[], i)).collect()
    };
    AuthSettings {
        auth_type: auth_type.map(|t| (t, p)),
        chap,
        chap_mutual,
        initiator_names: raw
            .initiators
            .iter()
            .enumerate()
            .map(|(i, n)| Named::new(format!("{n}:{i}")))
            .collect(),
        initiator_portals: raw.portals.clone(),
        initiator_groups,
    }
}

fn build(raw: Raw) -> Config {
    let p = Pos::default();
    let (generation, debug, timeout, maxproc, pidfile, isns_servers, isns_period, isns_timeout) =
        raw.globals;
    let ig_names: Vec<String> = raw
        .igs
        .iter()
        .enumerate()
        .map(|(i, (n, _))| unique(n, i))
        .collect();
    let ag_names: Vec<String> = raw
        .ags
        .iter()
        .enumerate()
        .map(|(i, (n, _))| unique(n, i))
        .collect();
    let pg_names: Vec<String> = raw
        .pgs
        .iter()
        .enumerate()
        .map(|(i, (g, _))| unique(&g.name, i))
        .collect();
    let lun_names: Vec<String> = raw
        .luns
        .iter()
        .enumerate()
        .map(|(i, (n, _))| unique(n, i))
        .collect();
    let predefined_ags = ["default", "no-authentication", "no-access"];

    let initiator_groups = raw
        .igs
        .iter()
        .zip(&ig_names)
        .map(|((_, members), name)| InitiatorGroup {
            name: name.clone(),
            pos: p,
            initiators: members
                .iter()
                .enumerate()
                .map(|(i, m)| Named::new(format!("{m}:{i}")))
                .collect(),
        })
        .collect();
    let auth_groups = raw
        .ags
        .iter()
        .zip(&ag_names)
        .map(|((_, a), name)| AuthGroup {
            name: name.clone(),
            pos: p,
            auth: build_auth(a, &ig_names),
        })
        .collect();
    let mut tags = std::collections::HashSet::new();
    // The implied `default` portal group's addresses are taken from the start.
    let mut addrs: std::collections::HashSet<ListenAddr> = config::DEFAULT_PORTAL_GROUP_LISTEN
        .iter()
        .filter_map(|l| ListenAddr::parse(l).ok())
        .collect();
    // A wildcard and an address of its family on one port are refused too (Linux listens on
    // one of them alone).
    let clash = |a: &ListenAddr, b: &ListenAddr| {
        let covers = |w: &ListenAddr, x: &ListenAddr| match (&w.host, &x.host) {
            (config::ListenHost::Ip(w_ip), config::ListenHost::Ip(x_ip)) => {
                w_ip.is_unspecified() && w_ip.is_ipv4() == x_ip.is_ipv4() && w.port == x.port
            }
            _ => false,
        };
        a == b || covers(a, b) || covers(b, a)
    };
    let portal_groups = raw
        .pgs
        .into_iter()
        .zip(&pg_names)
        .map(|((mut g, dag), name)| {
            g.name = name.clone();
            // Tags are unique, and so are addresses (two groups on one address are refused).
            g.tag = g.tag.filter(|(t, _)| tags.insert(*t));
            g.listen.retain(|l| {
                ListenAddr::parse(&l.name)
                    .is_ok_and(|a| !addrs.iter().any(|b| clash(&a, b)) && addrs.insert(a))
            });
            g.discovery_auth_group = dag.map(|i| pick(&ag_names, &predefined_ags, &i));
            g
        })
        .collect();
    // A descriptor serves one LUN: paths are made unique, and a global LUN with one is named
    // by one target LUN at most (later references become inline LUNs).
    let unique_path = |body: &mut LunBody, prefix: String| {
        if let Some(path) = &mut body.path {
            path.name = format!("{prefix}{}", path.name);
        }
    };
    let luns: Vec<Lun> = raw
        .luns
        .into_iter()
        .zip(&lun_names)
        .enumerate()
        .map(|(k, ((_, mut body), name))| {
            unique_path(&mut body, format!("g{k}-"));
            Lun {
                name: name.clone(),
                pos: p,
                body,
            }
        })
        .collect();
    let serves_a_file = |name: &str| {
        luns.iter().any(|l| {
            l.name == name
                && l.body.path.is_some()
                && l.body.effective_backend() != Backend::Ramdisk
        })
    };
    let mut named_once = std::collections::HashSet::new();
    let targets = raw
        .targets
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let name = match t.kind {
                0 => format!("{}:{i}", t.iqn),
                1 => format!("eui.{:015x}{i:x}", t.hex >> 68),
                _ => format!("naa.{:031x}{i:x}", t.hex >> 4),
            };
            let (auth_group, auth) = match (t.auth_group, &t.inline_auth) {
                (Some(ix), _) => (
                    Some(pick(&ag_names, &predefined_ags, &ix)),
                    AuthSettings::default(),
                ),
                (None, Some(a)) => (None, build_auth(a, &ig_names)),
                (None, None) => (None, AuthSettings::default()),
            };
            // A portal group is listed once in a target (one target port each).
            let mut listed = std::collections::HashSet::new();
            let portal_groups = t
                .portal_groups
                .iter()
                .map(|(pg, ag)| TargetPortalGroup {
                    portal_group: pick(&pg_names, &["default"], pg),
                    auth_group: ag.as_ref().map(|ix| pick(&ag_names, &predefined_ags, ix)),
                })
                .filter(|p| listed.insert(p.portal_group.name.clone()))
                .collect();
            let mut options = t.options;
            if let Some(u) = t.uuid {
                options.push(Opt {
                    name: "uuid".into(),
                    value: format!("{u}-{i}"),
                    pos: p,
                });
            }
            let luns = t
                .luns
                .into_iter()
                .map(|(id, r, mut body)| {
                    unique_path(&mut body, format!("t{i}-{id}-"));
                    let named = match r {
                        Some(ix) if !lun_names.is_empty() => Some(pick(&lun_names, &[], &ix)),
                        _ => None,
                    }
                    .filter(|n| !serves_a_file(&n.name) || named_once.insert(n.name.clone()));
                    TargetLun {
                        id,
                        pos: p,
                        lun: match named {
                            Some(n) => LunRef::Named(n),
                            None => LunRef::Inline(body),
                        },
                    }
                })
                .collect();
            // An alias names one target: made unique, and unlike any name (it holds a space).
            let alias = t.alias.map(|a| Named::new(format!("{} {i}", a.name)));
            Target {
                name,
                pos: p,
                alias,
                auth_group,
                auth,
                portal_groups,
                ports: t.ports,
                redirect: t.redirect,
                options,
                luns,
            }
        })
        .collect();
    Config {
        generation,
        debug,
        timeout,
        maxproc,
        pidfile,
        isns_servers,
        isns_period,
        isns_timeout,
        initiator_groups,
        auth_groups,
        portal_groups,
        luns,
        targets,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn print_then_parse_is_identity(raw in raw()) {
        let model = build(raw);
        let errors = config::verify(&model, "model");
        prop_assert!(errors.is_empty(), "generated model is invalid: {errors:?}");
        let text = config::print(&model);
        let parsed = config::load(&text, "printed");
        prop_assert!(parsed.is_ok(), "printed text does not load: {parsed:?}\n{text}");
        let parsed = parsed.unwrap_or_default();
        prop_assert_eq!(&parsed, &model, "text:\n{}", text);
        prop_assert_eq!(config::print(&parsed), text);
    }
}
