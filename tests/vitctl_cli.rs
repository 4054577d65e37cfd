//! End-to-end tests of the `vitctl` binary on a temporary datastore, checked with qemu-img.

use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Ds {
    dir: tempfile::TempDir,
}

impl Ds {
    fn new() -> Ds {
        Ds::listening("127.0.0.1:3260")
    }
    /// A datastore whose `default` portal group listens on `listen`.
    fn listening(listen: &str) -> Ds {
        let ds = Ds {
            dir: tempfile::tempdir().unwrap(),
        };
        ds.ok(&["homeobject", "create", "--listen", listen]);
        ds
    }
    fn root(&self) -> &Path {
        self.dir.path()
    }
    fn conf(&self) -> PathBuf {
        self.root().join(".iSCSI-Config/etc/vit.conf")
    }
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_vitctl"))
            .arg("--datastore")
            .arg(self.root())
            .args(args)
            .env_remove("VIT_DATASTORE")
            .output()
            .unwrap()
    }
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "vitctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
    fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--format", "json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }
    fn generation(&self) -> u64 {
        self.json(&["homeobject", "get"])["generation"]
            .as_u64()
            .unwrap()
    }
    /// Every path under the datastore with its content (or link target): to prove nothing changed.
    fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut map = BTreeMap::new();
        walk(self.root(), self.root(), &mut map);
        map
    }
    /// Runs a command that must fail with one clear line and change no file.
    fn refused(&self, args: &[&str], expect: &str) {
        let before = self.snapshot();
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "vitctl {args:?} should fail");
        assert!(
            stderr.contains(expect),
            "vitctl {args:?}: stderr {stderr:?} lacks {expect:?}"
        );
        assert_eq!(stderr.lines().count(), 1, "one line expected: {stderr:?}");
        assert!(before == self.snapshot(), "vitctl {args:?} changed files");
    }
}

fn walk(root: &Path, dir: &Path, map: &mut BTreeMap<PathBuf, Vec<u8>>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        let meta = fs::symlink_metadata(&p).unwrap();
        if meta.file_type().is_symlink() {
            map.insert(
                rel,
                fs::read_link(&p)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes(),
            );
        } else if meta.is_dir() {
            map.insert(rel, b"<dir>".to_vec());
            walk(root, &p, map);
        } else if !rel.ends_with("vit.conf.lock") {
            map.insert(rel, fs::read(&p).unwrap());
        }
    }
}

fn qemu_virtual_size(path: &Path) -> Option<u64> {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(path)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "qemu-img info: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["virtual-size"].as_u64()
}

#[test]
fn homeobject_create_is_idempotent() {
    let ds = Ds::new();
    let text = fs::read_to_string(ds.conf()).unwrap();
    assert!(text.contains("generation 1"), "{text}");
    let before = ds.snapshot();
    ds.ok(&["homeobject", "create"]);
    assert!(before == ds.snapshot());
    let v = ds.json(&["homeobject", "get"]);
    assert_eq!(v["generation"], 1);
    assert_eq!(v["targets"], 0);
}

#[test]
fn a_listen_address_vit_conf_cannot_hold_is_refused_as_the_flag() {
    let ds = Ds::new();
    for listen in ["1.2.3:3260", "999.1.1.1:3260", "10.0.0.300:3260"] {
        ds.refused(
            &["target", "add", "--alias", "t", "--listen", listen],
            &format!("--listen {listen:?}"),
        );
    }
    ds.ok(&["target", "add", "--alias", "t"]);
    ds.refused(
        &["target", "set", "t", "--listen", "1.2.3:3260"],
        "--listen",
    );
    // A new datastore is not begun with a listen address it cannot hold.
    let fresh = tempfile::tempdir().unwrap();
    let root = fresh.path().join("ds");
    let out = Command::new(env!("CARGO_BIN_EXE_vitctl"))
        .arg("--datastore")
        .arg(&root)
        .args(["homeobject", "create", "--listen", "1.2.3:3260"])
        .env_remove("VIT_DATASTORE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--listen \"1.2.3:3260\""), "{stderr}");
    assert!(
        !root.exists(),
        "a refused homeobject create made {}",
        root.display()
    );
}

#[test]
fn target_and_lun_lifecycle() {
    let ds = Ds::new();
    let t = ds.json(&["target", "add", "--alias", "web", "--listen", "vmk0:3260"]);
    let iqn = t["iqn"].as_str().unwrap().to_string();
    let uuid = t["uuid"].as_str().unwrap().to_string();
    assert!(iqn.starts_with("iqn."), "{iqn}");
    assert_eq!(t["portal_groups"][0], "pg-vmk0-3260");
    assert_eq!(ds.generation(), 2);
    let link = ds.root().join(".iSCSI-Config/targets").join(&uuid);
    assert_eq!(
        fs::read_link(&link).unwrap(),
        Path::new("../..").join(&uuid)
    );
    assert!(ds.root().join(&uuid).is_dir());

    // A second target on the same listen shares the portal group.
    let t2 = ds.json(&["target", "add", "--alias", "db", "--listen", "vmk0:3260"]);
    assert_eq!(t2["portal_groups"][0], "pg-vmk0-3260");
    let conf = fs::read_to_string(ds.conf()).unwrap();
    assert_eq!(
        conf.matches("portal-group pg-vmk0-3260 {").count(),
        1,
        "{conf}"
    );

    let lun = ds.json(&[
        "target", "lun", "add", "--target", "web", "--id", "0", "--size", "64M", "--alias", "data",
    ]);
    assert_eq!(lun["size_bytes"], 64 << 20);
    assert_eq!(lun["alias"], "data");
    let descriptor = PathBuf::from(lun["descriptor"].as_str().unwrap());
    assert!(
        descriptor.starts_with(ds.root().join(&uuid)),
        "{descriptor:?}"
    );
    if let Some(size) = qemu_virtual_size(&descriptor) {
        assert_eq!(size, 64 << 20);
    }
    ds.ok(&["config", "validate"]);

    // Grow, then refuse a shrink.
    ds.ok(&[
        "target", "lun", "set", "--target", &iqn, "--id", "0", "--size", "128M",
    ]);
    if let Some(size) = qemu_virtual_size(&descriptor) {
        assert_eq!(size, 128 << 20);
    }
    ds.refused(
        &[
            "target", "lun", "set", "--target", "web", "--id", "0", "--size", "64M",
        ],
        "shrink",
    );
    ds.ok(&["config", "validate"]);

    let list = ds.json(&["target", "lun", "list", "--target", "web"]);
    assert_eq!(list.as_array().unwrap().len(), 1);

    ds.ok(&["target", "lun", "remove", "--target", "web", "--id", "0"]);
    assert!(!descriptor.exists());
    assert_eq!(fs::read_dir(ds.root().join(&uuid)).unwrap().count(), 0);

    ds.ok(&["target", "remove", "web"]);
    assert!(!ds.root().join(&uuid).exists());
    assert!(fs::symlink_metadata(&link).is_err());
    let targets = ds.json(&["target", "list"]);
    assert_eq!(targets.as_array().unwrap().len(), 1);
    ds.ok(&["config", "validate"]);
}

#[test]
fn a_listen_address_in_use_reuses_its_portal_group() {
    // The home object's `default` group listens on 127.0.0.1:3260: a second group there would
    // not be served, so the target joins `default`.
    let ds = Ds::new();
    ds.ok(&[
        "target",
        "add",
        "--alias",
        "d",
        "--iqn",
        "iqn.2000-01.com.x:d",
    ]);
    let t = ds.json(&[
        "target",
        "add",
        "--alias",
        "a",
        "--listen",
        "127.0.0.1:3260",
    ]);
    assert_eq!(t["portal_groups"], serde_json::json!(["default"]));
    assert_eq!(t["listen"], serde_json::json!(["127.0.0.1:3260"]));
    let t = ds.json(&[
        "target",
        "add",
        "--alias",
        "b",
        "--listen",
        "127.0.0.1:3261",
    ]);
    assert_eq!(t["portal_groups"][0], "pg-127.0.0.1-3261");
    let t = ds.json(&["target", "set", "a", "--listen", "127.0.0.1:3261"]);
    assert_eq!(t["portal_groups"][0], "pg-127.0.0.1-3261");
    let conf = fs::read_to_string(ds.conf()).unwrap();
    assert!(!conf.contains("pg-127.0.0.1-3260"), "{conf}");
    assert_eq!(conf.matches("listen 127.0.0.1:3261").count(), 1, "{conf}");
    ds.ok(&["config", "validate"]);
}

#[test]
fn a_name_names_one_target() {
    let ds = Ds::new();
    let a = "iqn.2000-01.com.x:a";
    ds.ok(&["target", "add", "--alias", "web", "--iqn", a]);
    let b = ds.json(&["target", "add", "--alias", "db"]);
    let b_iqn = b["iqn"].as_str().unwrap().to_string();
    ds.ok(&[
        "target", "lun", "add", "--target", "db", "--id", "0", "--size", "1M",
    ]);
    let upper = a.to_ascii_uppercase();
    for (args, expect) in [
        (
            vec!["target", "add", "--alias", a],
            "a target with the IQN \"iqn.2000-01.com.x:a\" exists (iqn.2000-01.com.x:a): the alias \"iqn.2000-01.com.x:a\" would name both",
        ),
        (
            vec!["target", "add", "--alias", &upper],
            "the alias \"IQN.2000-01.COM.X:A\" would name both",
        ),
        (
            vec!["target", "add", "--alias", "web"],
            "a target with the alias \"web\" exists (iqn.2000-01.com.x:a)",
        ),
        (
            vec!["target", "set", "db", "--new-alias", a],
            "would name both",
        ),
        (
            vec!["target", "set", "db", "--new-alias", "web"],
            "would name both",
        ),
        (vec!["target", "set", a, "--iqn", &b_iqn], "exists"),
    ] {
        ds.refused(&args, expect);
    }
    // The IQN of one target as the alias of another is refused in vit.conf too: `target remove`
    // cannot take the wrong target (and its LUN files) by it.
    let conf = fs::read_to_string(ds.conf()).unwrap();
    fs::write(
        ds.conf(),
        conf.replace("alias \"db\"", &format!("alias \"{a}\"")),
    )
    .unwrap();
    ds.refused(&["target", "remove", a], "is the name of the target at");
    // A target may be named by its IQN in any case.
    fs::write(ds.conf(), &conf).unwrap();
    let t = ds.json(&["target", "get", &upper]);
    assert_eq!(t["alias"], "web");
}

#[test]
fn removals_delete_only_files_of_their_own_that_nothing_else_uses() {
    let ds = Ds::new();
    let ua = ds.json(&["target", "add", "--alias", "a"])["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let b_iqn = ds.json(&["target", "add", "--alias", "b"])["iqn"]
        .as_str()
        .unwrap()
        .to_string();
    let lun = ds.json(&[
        "target", "lun", "add", "--target", "a", "--id", "0", "--size", "1M",
    ]);
    let desc_a = PathBuf::from(lun["descriptor"].as_str().unwrap());
    let stem = desc_a.file_stem().unwrap().to_str().unwrap().to_string();
    let flat_a = desc_a.with_file_name(format!("{stem}-flat.vmdk"));
    assert!(flat_a.is_file());
    ds.ok(&[
        "target", "lun", "add", "--target", "b", "--id", "0", "--size", "1M",
    ]);

    // By hand: target b's LUN 1 is a second descriptor in a's directory, on a's extent.
    let copy = ds.root().join(&ua).join("copy.vmdk");
    fs::copy(&desc_a, &copy).unwrap();
    let mut cfg = vit::config::load(&fs::read_to_string(ds.conf()).unwrap(), "c").unwrap();
    let lun0 = cfg.targets[1].luns[0].clone();
    let vit::config::LunRef::Inline(mut body) = lun0.lun else {
        panic!("inline")
    };
    body.path = Some(vit::config::Named::new(format!("{ua}/copy.vmdk")));
    cfg.targets[1].luns.push(vit::config::TargetLun {
        id: 1,
        pos: lun0.pos,
        lun: vit::config::LunRef::Inline(body),
    });
    fs::write(ds.conf(), vit::config::print(&cfg)).unwrap();
    let out = ds.run(&["config", "validate"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "target {b_iqn} LUN 1: {} is also a file of target",
            flat_a.display()
        )),
        "{stderr}"
    );

    // Removing a's LUN deletes its descriptor and keeps the extent b's LUN 1 uses.
    let out = ds.run(&["target", "lun", "remove", "--target", "a", "--id", "0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!desc_a.exists() && flat_a.is_file() && copy.is_file());
    assert_eq!(
        stderr.trim(),
        format!(
            "vitctl: warning: kept {}: target {b_iqn} LUN 1 uses it",
            flat_a.display()
        )
    );
    // Removing target a keeps its directory and link, through which b's LUN 1 is reached.
    let out = ds.run(&["target", "remove", "a"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("kept target directory"), "{stderr}");
    assert!(
        ds.root()
            .join(".iSCSI-Config/targets")
            .join(&ua)
            .is_symlink()
    );
    ds.ok(&["target", "lun", "get", "--target", "b", "--id", "1"]);
    // Removing b's LUN 1 deletes nothing outside b's own directory.
    let out = ds.run(&["target", "lun", "remove", "--target", "b", "--id", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(copy.is_file() && flat_a.is_file());
    assert_eq!(
        stderr.matches("is outside the target's directory").count(),
        2,
        "{stderr}"
    );
    ds.ok(&["config", "validate"]);
}

#[test]
fn target_set_applies_each_credential_flag_given() {
    let ds = Ds::new();
    let conf = || fs::read_to_string(ds.conf()).unwrap();
    ds.ok(&[
        "target",
        "add",
        "--alias",
        "c",
        "--auth-type",
        "chap",
        "--chap-user",
        "u",
        "--chap-secret",
        "0123456789ab",
    ]);
    ds.ok(&["target", "add", "--alias", "n"]);
    let g = ds.generation();
    ds.ok(&["target", "set", "c", "--chap-secret", "abcdefabcdef"]);
    assert!(conf().contains("chap u abcdefabcdef\n"), "{}", conf());
    ds.ok(&["target", "set", "c", "--chap-user", "v"]);
    assert!(conf().contains("chap v abcdefabcdef\n"), "{}", conf());
    assert_eq!(ds.generation(), g + 2);
    // A flag the auth type has no use for changes nothing.
    ds.refused(
        &["target", "set", "c", "--mutual-secret", "fedcba987654"],
        "--mutual-user/--mutual-secret need --auth-type chap-mutual; the auth type is chap",
    );
    ds.refused(
        &["target", "set", "n", "--mutual-secret", "fedcba987654"],
        "--mutual-secret need --auth-type chap or chap-mutual; the auth type is none",
    );
    ds.refused(
        &[
            "target",
            "set",
            "n",
            "--chap-user",
            "x",
            "--chap-secret",
            "0123456789ab",
        ],
        "--chap-user, --chap-secret need --auth-type chap or chap-mutual; the auth type is none",
    );
    ds.refused(
        &[
            "target",
            "set",
            "c",
            "--auth-type",
            "none",
            "--chap-user",
            "x",
        ],
        "--chap-user need --auth-type chap or chap-mutual; the auth type is none",
    );
    // Mutual CHAP on top of the CHAP credentials there; then each mutual flag alone.
    ds.ok(&[
        "target",
        "set",
        "c",
        "--auth-type",
        "chap-mutual",
        "--mutual-user",
        "m",
        "--mutual-secret",
        "fedcba987654",
    ]);
    assert!(
        conf().contains("chap-mutual v abcdefabcdef m fedcba987654"),
        "{}",
        conf()
    );
    ds.ok(&["target", "set", "c", "--mutual-secret", "1111222233334444"]);
    ds.ok(&["target", "set", "c", "--mutual-user", "m2"]);
    assert!(
        conf().contains("chap-mutual v abcdefabcdef m2 1111222233334444"),
        "{}",
        conf()
    );
    ds.refused(
        &["target", "set", "c", "--mutual-secret", "abcdefabcdef"],
        "must differ",
    );
    // Back to CHAP drops the mutual pair; back to none drops the rest.
    let v = ds.json(&["target", "set", "c", "--auth-type", "chap"]);
    assert_eq!(v["auth_type"], "chap");
    assert!(conf().contains("chap v abcdefabcdef\n"), "{}", conf());
    let v = ds.json(&["target", "set", "c", "--auth-type", "none"]);
    assert_eq!(v["auth_type"], "none");
    assert!(!conf().contains("abcdefabcdef"), "{}", conf());
    ds.ok(&["config", "validate"]);
}

#[test]
fn a_grow_whose_commit_fails_changes_nothing() {
    let ds = Ds::new();
    ds.ok(&["target", "add", "--alias", "t"]);
    ds.ok(&[
        "target", "lun", "add", "--target", "t", "--id", "0", "--size", "1M",
    ]);
    // The commit refuses to count past the largest generation, after the LUN has grown.
    let conf = fs::read_to_string(ds.conf()).unwrap();
    let g = format!("generation {}\n", ds.generation());
    fs::write(
        ds.conf(),
        conf.replace(&g, &format!("generation {}\n", u64::MAX)),
    )
    .unwrap();
    ds.refused(
        &[
            "target", "lun", "set", "--target", "t", "--id", "0", "--size", "2M",
        ],
        "generation counter overflow",
    );
    fs::write(ds.conf(), conf).unwrap();
    ds.ok(&["config", "validate"]);
}

#[test]
fn bad_input_changes_nothing() {
    let ds = Ds::new();
    ds.ok(&["target", "add", "--alias", "t1"]);
    ds.ok(&[
        "target", "lun", "add", "--target", "t1", "--id", "3", "--size", "1M",
    ]);
    let lun_add = |id: &str, size: &str| -> Vec<String> {
        [
            "target", "lun", "add", "--target", "t1", "--id", id, "--size", size,
        ]
        .map(String::from)
        .to_vec()
    };
    let refused = |args: Vec<String>, expect: &str| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        ds.refused(&a, expect)
    };
    refused(lun_add("3", "1M"), "already has LUN 3");
    refused(lun_add("256", "1M"), "outside 0..=255");
    refused(lun_add("1", "-1M"), "negative");
    refused(lun_add("1", "0M"), "zero");
    refused(lun_add("1", "abc"), "size");
    refused(lun_add("1", "10"), "unit");
    refused(lun_add("1", "1000B"), "512");
    ds.refused(
        &[
            "target", "lun", "add", "--target", "nope", "--id", "1", "--size", "1M",
        ],
        "no target",
    );
    ds.refused(&["target", "get", "nope"], "no target");
    // Refused by the verifier: its place is in the text the change would have written, and
    // the message says so.
    ds.refused(
        &["target", "add", "--alias", "w", "--listen", "0.0.0.0:3260"],
        "a wildcard and an address of its family cannot both be listened on with one port (in the vit.conf this change would write: nothing was written)",
    );
    ds.refused(&["target", "add", "--alias", "t1"], "exists");
    // An alias is sent as TargetAlias: a login text value has at most 255 bytes.
    let long = "a".repeat(256);
    ds.refused(&["target", "add", "--alias", &long], "at most 255");
    ds.refused(
        &["target", "set", "t1", "--new-alias", &long],
        "at most 255",
    );
    ds.refused(
        &["target", "add", "--alias", "t2", "--iqn", "not-an-iqn"],
        "not an iSCSI name",
    );
    ds.refused(
        &[
            "target",
            "add",
            "--alias",
            "t2",
            "--listen",
            "1.2.3.4:99999",
        ],
        "port",
    );
    ds.refused(
        &[
            "target",
            "add",
            "--alias",
            "t2",
            "--auth-type",
            "chap",
            "--chap-user",
            "u",
            "--chap-secret",
            "",
        ],
        "empty",
    );
    ds.refused(
        &[
            "target",
            "add",
            "--alias",
            "t2",
            "--auth-type",
            "chap-mutual",
            "--chap-user",
            "u",
            "--chap-secret",
            "secretsecret12",
            "--mutual-user",
            "m",
            "--mutual-secret",
            "secretsecret12",
        ],
        "differ",
    );
    ds.refused(
        &[
            "target",
            "add",
            "--alias",
            "t2",
            "--initiator-group",
            "nogroup",
        ],
        "no initiator group",
    );
    ds.refused(
        &["target", "add", "--alias", "bad\"quote"],
        "cannot be stored",
    );
    ds.refused(
        &["initiatorgroup", "add", "g1", "iqn.bad name"],
        "not an iSCSI name",
    );
    ds.refused(
        &["target", "lun", "remove", "--target", "t1", "--id", "9"],
        "no LUN 9",
    );
    ds.refused(
        &[
            "target", "lun", "set", "--target", "t1", "--id", "3", "--size", "512K",
        ],
        "shrink",
    );
    // clap's own usage errors exit non-zero too.
    let out = ds.run(&[
        "target", "lun", "add", "--target", "t1", "--id", "-5", "--size", "1M",
    ]);
    assert!(!out.status.success());
}

#[test]
fn chap_targets_and_secret_warning() {
    let ds = Ds::new();
    let out = ds.run(&[
        "--format",
        "json",
        "target",
        "add",
        "--alias",
        "c1",
        "--auth-type",
        "chap",
        "--chap-user",
        "alice",
        "--chap-secret",
        "short",
    ]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning") && stderr.contains("12 to 16"),
        "{stderr}"
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["auth_type"], "chap");
    assert_eq!(v["chap_user"], "alice");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("short"),
        "secrets are never printed"
    );
    let v = ds.json(&[
        "target",
        "add",
        "--alias",
        "c2",
        "--auth-type",
        "chap-mutual",
        "--chap-user",
        "bob",
        "--chap-secret",
        "0123456789ab",
        "--mutual-user",
        "tgt",
        "--mutual-secret",
        "ba9876543210",
    ]);
    assert_eq!(v["auth_type"], "chap-mutual");
    assert_eq!(v["mutual_chap_user"], "tgt");
    let conf = fs::read_to_string(ds.conf()).unwrap();
    assert!(
        conf.contains("chap-mutual bob 0123456789ab tgt ba9876543210"),
        "{conf}"
    );
    // Switch c1 back to no authentication.
    let v = ds.json(&["target", "set", "c1", "--auth-type", "none"]);
    assert_eq!(v["auth_type"], "none");
    ds.ok(&["config", "validate"]);
    // Counted in bytes, as vitd (and ctld) count them at start: a secret of 12 two-byte
    // characters is 24 bytes.
    for (secret, warns) in [
        ("0123456789ab", false),
        ("0123456789abcdef", false),
        ("0123456789abcdefg", true),
        ("éééééééééééé", true),
    ] {
        let out = ds.run(&[
            "target",
            "set",
            "c1",
            "--auth-type",
            "chap",
            "--chap-user",
            "alice",
            "--chap-secret",
            secret,
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert_eq!(stderr.contains("12 to 16"), warns, "{secret}: {stderr}");
    }
}

#[test]
fn initiator_names_compare_in_any_case() {
    let ds = Ds::new();
    let a = "iqn.2000-01.com.a:x";
    let upper = "IQN.2000-01.COM.A:X";
    ds.refused(&["initiatorgroup", "add", "g", a, upper], "already in");
    ds.ok(&["initiatorgroup", "add", "g", a]);
    ds.refused(
        &["initiatorgroup", "initiator", "add", "g", upper],
        "already in",
    );
    ds.ok(&["initiatorgroup", "initiator", "remove", "g", upper]);
    let g = ds.json(&["initiatorgroup", "get", "g"]);
    assert_eq!(g["initiators"].as_array().unwrap().len(), 0, "{g}");
}

#[test]
fn initiator_groups() {
    let ds = Ds::new();
    let win = "iqn.1991-05.com.microsoft:win-53ggkq348ci";
    let lin = "iqn.2004-10.com.ubuntu:01:abcdef";
    let g = ds.json(&["initiatorgroup", "add", "Win-iSCSI-GRP", win]);
    assert_eq!(g["initiators"][0], win);
    ds.ok(&["initiatorgroup", "initiator", "add", "Win-iSCSI-GRP", lin]);
    ds.refused(
        &["initiatorgroup", "initiator", "add", "Win-iSCSI-GRP", lin],
        "already",
    );
    let t = ds.json(&[
        "target",
        "add",
        "--alias",
        "w",
        "--initiator-group",
        "Win-iSCSI-GRP",
    ]);
    assert_eq!(t["initiator_groups"][0], "Win-iSCSI-GRP");
    ds.refused(&["initiatorgroup", "remove", "Win-iSCSI-GRP"], "in use");
    ds.ok(&[
        "initiatorgroup",
        "initiator",
        "remove",
        "Win-iSCSI-GRP",
        win,
    ]);
    let g = ds.json(&["initiatorgroup", "get", "Win-iSCSI-GRP"]);
    assert_eq!(g["initiators"].as_array().unwrap().len(), 1);
    ds.ok(&["target", "set", "w", "--no-initiator-group"]);
    ds.ok(&["initiatorgroup", "remove", "Win-iSCSI-GRP"]);
    assert_eq!(
        ds.json(&["initiatorgroup", "list"])
            .as_array()
            .unwrap()
            .len(),
        0
    );
    ds.ok(&["config", "validate"]);
}

#[test]
fn concurrent_changes_all_land() {
    let ds = Ds::new();
    let n = 8;
    let children: Vec<_> = (0..n)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_vitctl"))
                .arg("--datastore")
                .arg(ds.root())
                .args(["target", "add", "--alias", &format!("t{i}")])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    assert_eq!(ds.json(&["target", "list"]).as_array().unwrap().len(), n);
    assert_eq!(ds.generation(), 1 + n as u64);
    ds.ok(&["config", "validate"]);
}

#[test]
fn validate_reports_disk_problems_with_location() {
    let ds = Ds::new();
    ds.ok(&["target", "add", "--alias", "t"]);
    let lun = ds.json(&[
        "target", "lun", "add", "--target", "t", "--id", "0", "--size", "1M",
    ]);
    ds.ok(&["config", "validate"]);
    let descriptor = PathBuf::from(lun["descriptor"].as_str().unwrap());
    let saved = fs::read(&descriptor).unwrap();
    fs::remove_file(&descriptor).unwrap();
    let out = ds.run(&["config", "validate"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let conf = ds.conf().display().to_string();
    assert!(stderr.starts_with(&format!("{conf}:")), "{stderr}");
    assert!(stderr.contains("LUN 0"), "{stderr}");
    fs::write(&descriptor, saved).unwrap();
    ds.ok(&["config", "validate"]);

    // A size that disagrees with the descriptor.
    let text = fs::read_to_string(ds.conf()).unwrap();
    fs::write(ds.conf(), text.replace("size 1024", "size 2048")).unwrap();
    let out = ds.run(&["config", "validate"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("disagrees"));
    fs::write(ds.conf(), text).unwrap();
    ds.ok(&["config", "validate"]);

    // A target (with no LUN to stumble on it) whose targets/ link is gone.
    let uuid = ds.json(&["target", "add", "--alias", "bare"])["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let link = ds.root().join(".iSCSI-Config/targets").join(&uuid);
    fs::remove_file(&link).unwrap();
    let out = ds.run(&["config", "validate"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.starts_with(&format!("{conf}:"))
            && stderr.contains(&format!("{} does not resolve", link.display())),
        "{stderr}"
    );
}

#[test]
fn sample_config_is_served_read_only_view() {
    let ds = tempfile::tempdir().unwrap();
    let etc = ds.path().join(".iSCSI-Config/etc");
    fs::create_dir_all(&etc).unwrap();
    fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/vit.conf.sample"),
        etc.join("vit.conf"),
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_vitctl"))
            .arg("--datastore")
            .arg(ds.path())
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["--format", "json", "target", "list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["alias"], "vsantarget");
    assert_eq!(v[0]["initiator_groups"][0], "Win-iSCSI-GRP");
    assert_eq!(v[0]["luns"], serde_json::json!([0, 1]));
    // The LUN files are not there: validate says so, with line numbers.
    let out = run(&["config", "validate"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.lines().count() >= 2, "{stderr}");
}

#[test]
fn output_that_cannot_be_written_is_an_error_not_a_panic() {
    let ds = Ds::new();
    ds.ok(&["target", "add", "--alias", "t"]);
    for args in [
        &["target", "list"][..],
        &["--format", "json", "target", "get", "t"],
        &["config", "show"],
        &["config", "validate"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_vitctl"))
            .arg("--datastore")
            .arg(ds.root())
            .args(args)
            .env_remove("VIT_DATASTORE")
            .stdout(fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "vitctl {args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "vitctl {args:?}: {stderr}");
        assert!(
            stderr.starts_with("vitctl: error: standard output:"),
            "vitctl {args:?}: {stderr}"
        );
    }
}

/// A hand-written `portal-group NAME AUTH-GROUP` in a target governs logins through that group:
/// `target set --listen` keeps it where the target stays in the group, and refuses (changing
/// nothing) rather than drop it with a group the target leaves.
#[test]
fn target_set_listen_keeps_a_portal_groups_own_auth_group() {
    let ds = Ds::new();
    let v = ds.json(&[
        "target",
        "add",
        "--alias",
        "t",
        "--listen",
        "127.0.0.1:3260",
    ]);
    let pg = v["portal_groups"][0].as_str().unwrap().to_string();
    let made = fs::read_to_string(ds.conf()).unwrap();
    let line = format!("\tportal-group {pg}\n");
    assert!(made.contains(&line), "{made}");
    let strict = made.replace(&line, &format!("\tportal-group {pg} no-access\n"));
    fs::write(ds.conf(), &strict).unwrap();
    ds.ok(&["config", "validate"]);
    ds.ok(&["target", "set", "t", "--listen", "127.0.0.1:3260"]);
    let conf = fs::read_to_string(ds.conf()).unwrap();
    assert!(
        conf.contains(&format!("\tportal-group {pg} no-access\n")),
        "the portal group's auth-group was dropped: {conf}"
    );
    let out = ds.run(&["target", "set", "t", "--listen", "127.0.0.2:3260"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no-access"), "{err}");
    assert_eq!(fs::read_to_string(ds.conf()).unwrap(), conf, "changed");
}

#[test]
fn target_set_keeps_the_authentication_a_hand_written_target_has() {
    let ds = Ds::new();
    ds.ok(&["initiatorgroup", "add", "g", "iqn.2000-01.com.a:x"]);
    let uuid = ds.json(&["target", "add", "--alias", "t"])["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let made = fs::read_to_string(ds.conf()).unwrap();
    let group = format!("auth-group {uuid} {{\n\tauth-type none\n}}\n");
    let uses = format!("\tauth-group {uuid}\n");
    assert!(made.contains(&group) && made.contains(&uses), "{made}");
    let hand_written = |target_auth: &str| {
        let text = made.replace(&group, "").replace(&uses, target_auth);
        fs::write(ds.conf(), text).unwrap();
        ds.ok(&["config", "validate"]);
    };
    // A target closed to all (ctld's predefined no-access) stays closed.
    hand_written("\tauth-group no-access\n");
    assert_eq!(ds.json(&["target", "get", "t"])["auth_type"], "deny");
    let v = ds.json(&["target", "set", "t", "--initiator-group", "g"]);
    assert_eq!(v["auth_type"], "deny", "{v}");
    assert_eq!(v["initiator_groups"][0], "g", "{v}");
    // Inline CHAP and initiator restrictions are kept when only the group changes.
    hand_written("\tchap u 0123456789ab\n\tinitiator-name iqn.2000-01.com.b:y\n");
    let v = ds.json(&["target", "set", "t", "--initiator-group", "g"]);
    assert_eq!(v["auth_type"], "chap", "{v}");
    assert_eq!(v["chap_user"], "u", "{v}");
    let conf = fs::read_to_string(ds.conf()).unwrap();
    assert!(conf.contains("chap u 0123456789ab\n"), "{conf}");
    assert!(
        conf.contains("initiator-name iqn.2000-01.com.b:y\n"),
        "{conf}"
    );
    ds.ok(&["config", "validate"]);
}

/// A datastore that is not there (a wrong `--datastore`, or vitd never started for the default
/// one) or a directory without a home object: vitctl and vitd both say which command makes it, one
/// that names this datastore (a bare `vitctl homeobject create` would make it elsewhere), and that
/// command works.
#[test]
fn a_missing_datastore_or_home_object_names_the_command_that_makes_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-datastore");
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let run = |bin: &str, root: &Path, args: &[&str]| {
        Command::new(bin)
            .arg("--datastore")
            .arg(root)
            .args(args)
            .env_remove("VIT_DATASTORE")
            .output()
            .unwrap()
    };
    let (vitctl, vitd) = (env!("CARGO_BIN_EXE_vitctl"), env!("CARGO_BIN_EXE_vitd"));
    for root in [&missing, &empty] {
        let hint = format!("`vitctl --datastore {} homeobject create`", root.display());
        let outs = [
            ("vitctl", run(vitctl, root, &["target", "list"])),
            ("vitd", run(vitd, root, &[])),
        ];
        for (who, out) in outs {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{who} on {}: {err}", root.display());
            assert!(err.contains(&hint), "{who} on {}: {err}", root.display());
        }
        let made = run(vitctl, root, &["homeobject", "create"]);
        assert!(made.status.success(), "{made:?}");
        assert!(root.join(".iSCSI-Config/etc/vit.conf").is_file());
    }
    // A home object that is there but cannot be looked into (here `.iSCSI-Config` is a file; a
    // directory the user may not search is the same) is no missing one: `homeobject create`
    // would fail on it, so neither says to run it, and both name what stood in the way.
    let blocked = dir.path().join("blocked");
    fs::create_dir(&blocked).unwrap();
    fs::write(blocked.join(".iSCSI-Config"), "").unwrap();
    let outs = [
        ("vitctl", run(vitctl, &blocked, &["target", "list"])),
        (
            "vitctl",
            run(vitctl, &blocked, &["target", "add", "--alias", "t"]),
        ),
        ("vitd", run(vitd, &blocked, &[])),
    ];
    for (who, out) in outs {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{who}: {err}");
        assert!(!err.contains("homeobject create"), "{who}: {err}");
        assert!(err.contains("Not a directory"), "{who}: {err}");
    }
}

/// A name that is no iSCSI name at all is refused in one line that says so once (it was said
/// twice: "\"x\" is not an iSCSI name: \"x\" is not an iSCSI name: expected ..."), and one with a
/// bad IQN says what is wrong with it.
#[test]
fn a_name_that_is_not_an_iscsi_name_is_refused_saying_so_once() {
    let ds = Ds::new();
    ds.ok(&["target", "add", "--alias", "t"]);
    for (args, why) in [
        (
            &["target", "set", "t", "--iqn", "notaniqn"][..],
            "expected iqn., eui. or naa.",
        ),
        (
            &["initiatorgroup", "add", "g", "bad"][..],
            "expected iqn., eui. or naa.",
        ),
        (
            &["target", "set", "t", "--iqn", "iqn.2000-13.com.x:t"][..],
            "month 13",
        ),
    ] {
        let out = ds.run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert_eq!(
            err.matches("is not an iSCSI name").count(),
            1,
            "{args:?}: {err}"
        );
        assert!(err.contains(why), "{args:?}: {err}");
    }
}

/// The README's "JSON output (stable field names)": each kind of object has exactly the fields
/// it lists, `get`, `add`, `set` and `remove` print one object and `list` an array, and no
/// output holds a secret.
#[test]
fn json_output_has_exactly_the_documented_field_names() {
    let ds = Ds::new();
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().expect("an object").keys().cloned().collect();
        k.sort();
        k
    };
    let want = |names: &[&str]| -> Vec<String> {
        let mut k: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        k.sort();
        k
    };
    let home = want(&[
        "datastore",
        "config",
        "generation",
        "targets",
        "luns",
        "initiator_groups",
    ]);
    let target = want(&[
        "alias",
        "iqn",
        "uuid",
        "owner_id",
        "portal_groups",
        "listen",
        "auth_group",
        "auth_type",
        "chap_user",
        "mutual_chap_user",
        "initiator_groups",
        "luns",
    ]);
    let lun = want(&[
        "target",
        "target_alias",
        "id",
        "alias",
        "backend",
        "path",
        "descriptor",
        "size_bytes",
        "read_only",
    ]);
    let group = want(&["name", "initiators"]);
    let (secret, mutual) = ("s3cret-0123456", "mutual-654321x");
    let mut printed = String::new();
    let mut json = |args: &[&str]| -> Value {
        let mut a = vec!["--format", "json"];
        a.extend_from_slice(args);
        let out = ds.ok(&a);
        printed.push_str(&out);
        serde_json::from_str(&out).unwrap()
    };
    let one = |v: Value, fields: &Vec<String>| assert_eq!(&keys(&v), fields, "{v}");
    let list = |v: Value, fields: &Vec<String>| {
        let items = v.as_array().unwrap_or_else(|| panic!("an array: {v}"));
        assert!(!items.is_empty());
        for i in items {
            assert_eq!(&keys(i), fields, "{i}");
        }
    };
    one(json(&["homeobject", "get"]), &home);
    one(
        json(&["initiatorgroup", "add", "g", "iqn.2000-01.a:b"]),
        &group,
    );
    one(json(&["initiatorgroup", "get", "g"]), &group);
    list(json(&["initiatorgroup", "list"]), &group);
    let add = [
        "target",
        "add",
        "--alias",
        "t",
        "--auth-type",
        "chap-mutual",
        "--chap-user",
        "u",
        "--chap-secret",
        secret,
        "--mutual-user",
        "m",
        "--mutual-secret",
        mutual,
        "--initiator-group",
        "g",
    ];
    one(json(&add), &target);
    one(json(&["target", "get", "t"]), &target);
    one(json(&["target", "set", "t", "--new-alias", "t2"]), &target);
    list(json(&["target", "list"]), &target);
    let lun_args = ["--target", "t2", "--id", "0"];
    let with = |cmd: &[&'static str], extra: &[&'static str]| -> Vec<&'static str> {
        [&["target", "lun"][..], cmd, &lun_args[..], extra].concat()
    };
    one(json(&with(&["add"], &["--size", "1M"])), &lun);
    one(json(&with(&["get"], &[])), &lun);
    one(json(&with(&["set"], &["--read-only", "on"])), &lun);
    list(json(&["target", "lun", "list", "--target", "t2"]), &lun);
    one(json(&with(&["remove"], &[])), &lun);
    one(
        json(&["target", "set", "t2", "--no-initiator-group"]),
        &target,
    );
    one(json(&["initiatorgroup", "remove", "g"]), &group);
    one(json(&["target", "remove", "t2"]), &target);
    one(json(&["config", "validate"]), &want(&["valid", "problems"]));
    assert!(
        !printed.contains(secret) && !printed.contains(mutual),
        "a secret was printed: {printed}"
    );
}

/// What vitctl says on standard error of `args`, which must succeed.
fn warned(ds: &Ds, args: &[&str]) -> String {
    let out = ds.run(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "vitctl {args:?}: {stderr}");
    stderr
}

/// vitctl shares a portal group only with the same literal address, so `--listen lo:PORT` beside
/// the `default` group on 127.0.0.1:PORT makes a second group, and vitd on this host refuses to
/// start with the two (both listen on 127.0.0.1:PORT). vitctl may run on another host than vitd,
/// where `lo` may be something else, so it makes the change, but warns (it said nothing), as this
/// host resolves the two without DNS: naming both groups, saying vitd here would refuse to start,
/// and giving the `--listen` that shares the other group. `config validate` stays
/// host-independent.
#[test]
fn portal_groups_that_would_clash_on_this_host_are_warned_of() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let here = format!("127.0.0.1:{port}");
    let lo = format!("lo:{port}");
    let ds = Ds::listening(&here);
    assert_eq!(warned(&ds, &["target", "add", "--alias", "d"]), "");
    let err = warned(&ds, &["target", "add", "--alias", "a", "--listen", &lo]);
    assert_eq!(err.lines().count(), 1, "{err}");
    for part in [
        "vitctl: warning: ",
        &format!("portal group pg-lo-{port} (--listen {lo})"),
        "portal group default",
        &format!("both listen on {here}"),
        "vitd on this host would refuse to start",
        &format!("--listen {here}"),
    ] {
        assert!(err.contains(part), "{part:?} not in {err:?}");
    }
    // vitd on this host does refuse, naming the same two groups.
    let out = Command::new("timeout")
        .arg("20")
        .arg(env!("CARGO_BIN_EXE_vitd"))
        .arg("--datastore")
        .arg(ds.root())
        .env_remove("VIT_DATASTORE")
        .output()
        .unwrap();
    let vitd = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{vitd}");
    assert!(
        vitd.contains(&format!(
            "portal group pg-lo-{port}: listens on {here}, where portal group default listens too"
        )),
        "{vitd}"
    );
    // Host-independent: vit.conf itself is valid.
    assert_eq!(warned(&ds, &["config", "validate"]), "");
    // Done as the warning says: nothing to warn of.
    let err = warned(&ds, &["target", "set", "a", "--listen", &here]);
    assert_eq!(err, "");
    // An interface this host lacks, or a name only DNS could resolve (vitctl does not ask it):
    // nothing to warn of.
    for (alias, listen) in [
        ("v", format!("vmk9:{port}")),
        ("n", format!("storage-x:{port}")),
    ] {
        let err = warned(
            &ds,
            &["target", "add", "--alias", alias, "--listen", &listen],
        );
        assert_eq!(err, "", "{listen}");
    }
    // A wildcard and an address of its family on one port.
    let wild = format!("0.0.0.0:{port}");
    let ds = Ds::listening(&wild);
    assert_eq!(warned(&ds, &["target", "add", "--alias", "d"]), "");
    let err = warned(&ds, &["target", "add", "--alias", "a", "--listen", &lo]);
    assert_eq!(err.lines().count(), 1, "{err}");
    for part in [
        &format!("portal group pg-lo-{port} (--listen {lo}) listens on {here}"),
        &format!("portal group default (--listen {wild}) on {wild}"),
        "wildcard",
        "vitd on this host would refuse to start",
        &format!("--listen {wild}"),
    ] {
        assert!(err.contains(part), "{part:?} not in {err:?}");
    }
}
