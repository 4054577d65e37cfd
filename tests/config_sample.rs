//! The reference vit.conf (copied byte for byte, NBSP tail included) loads and its content is reachable.

use vit::config::{self, Backend, Config, LunRef, Target};

const SAMPLE: &str = include_str!("data/vit.conf.sample");
const TARGET: &str = "iqn.1998-01.com.vmware:a985217e-de62-a4e7-671a-5f5c5b9b2e35";
const UUID: &str = "89fb055d-dc24-d742-9a22-0050568e1413";

fn sample() -> Config {
    match config::load(SAMPLE, "vit.conf.sample") {
        Ok(c) => c,
        Err(errors) => panic!("sample does not load: {errors:?}"),
    }
}

fn the_target(cfg: &Config) -> &Target {
    assert_eq!(cfg.targets.len(), 1);
    &cfg.targets[0]
}

#[test]
fn sample_keeps_its_nbsp_tail() {
    assert!(
        SAMPLE.ends_with("}\u{a0}\u{a0}\n"),
        "the fixture must be the verbatim sample"
    );
}

#[test]
fn sample_globals_and_groups() {
    let cfg = sample();
    assert_eq!(cfg.generation, Some(17));
    let ig = &cfg.initiator_groups[0];
    assert_eq!(ig.name, "Win-iSCSI-GRP");
    assert_eq!(
        ig.initiators[0].name,
        "iqn.1991-05.com.microsoft:win-53ggkq348ci"
    );
    let names: Vec<&str> = cfg.auth_groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["default", UUID]);
    assert_eq!(
        cfg.auth_groups[1].auth.initiator_groups[0].name,
        "Win-iSCSI-GRP"
    );
    let pg = cfg
        .portal_groups
        .iter()
        .find(|g| g.name == "pg-vmk0-3260")
        .expect("portal group");
    assert_eq!(pg.listen[0].name, "vmk0:3260");
    assert_eq!(
        pg.discovery_auth_group.as_ref().map(|n| n.name.as_str()),
        Some("no-authentication")
    );
}

#[test]
fn sample_target_and_luns() {
    let cfg = sample();
    let t = the_target(&cfg);
    assert_eq!(t.name, TARGET);
    assert_eq!(
        t.alias.as_ref().map(|a| a.name.as_str()),
        Some("vsantarget")
    );
    assert_eq!(t.auth_group.as_ref().map(|a| a.name.as_str()), Some(UUID));
    assert_eq!(t.portal_groups[0].portal_group.name, "pg-vmk0-3260");
    assert_eq!((t.uuid(), t.owner_id()), (Some(UUID), Some(UUID)));
    let expected = [
        (
            0,
            "89fb055d-dc24-d742-9a22-0050568e1413/90fb055d-ba4d-0420-d59d-0050568e042f.vmdk",
            6u64 << 30,
            "vsanluns",
        ),
        (
            1,
            "89fb055d-dc24-d742-9a22-0050568e1413/391c095d-06a3-2cac-27b2-0050568e042f.vmdk",
            2u64 << 30,
            "vsanluns2",
        ),
    ];
    assert_eq!(t.luns.len(), expected.len());
    for (lun, (id, path, bytes, alias)) in t.luns.iter().zip(expected) {
        let LunRef::Inline(body) = &lun.lun else {
            panic!("LUN {id} should be inline")
        };
        assert_eq!(lun.id, id);
        assert_eq!(body.backend.map(|(b, _)| b), Some(Backend::Vmdk));
        assert_eq!(body.path.as_ref().map(|p| p.name.as_str()), Some(path));
        assert_eq!(body.size.map(|(s, _)| s), Some(bytes));
        assert_eq!(body.lun_alias(), Some(alias));
    }
}

#[test]
fn sample_positions_point_into_the_file() {
    let cfg = sample();
    let t = the_target(&cfg);
    assert_eq!((t.pos.line, t.pos.col), (20, 8));
    assert_eq!((t.luns[1].pos.line, t.luns[1].pos.col), (32, 5));
}

#[test]
fn sample_prints_and_reloads_equal() {
    let cfg = sample();
    let text = config::print(&cfg);
    let again = config::load(&text, "printed").expect("printed sample loads");
    assert_eq!(again, cfg);
    assert!(text.contains("\tsize 6291456\n"), "{text}");
    assert!(text.contains("\talias \"vsantarget\"\n"), "{text}");
    assert!(
        text.contains("\t\toption lun-alias \"vsanluns\"\n"),
        "{text}"
    );
}
