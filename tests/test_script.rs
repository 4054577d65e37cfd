//! The test command's own pieces: `scripts/qemu-block-extra`, which `scripts/test` runs on a fresh
//! Debian machine (CI) to install qemu's iSCSI block driver. It is best effort: it must never fail
//! the suite, and must leave apt's sources as it found them when the install does not come off (a
//! source left behind that apt cannot read fails every later `apt-get update`, scripts/test's own
//! included). Run against stub `dpkg-query`, `apt-get` and `sudo` and a scratch apt directory.

use std::path::{Path, PathBuf};
use std::process::Command;

const BPO_VERSION: &str = "1:10.0.2+ds-2+deb13u1~bpo12+1";
const DEBIAN_SOURCES: &str = "Types: deb\nURIs: http://deb.example/debian\n\
    Suites: bookworm bookworm-updates\nComponents: main\n\
    Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
    Types: deb\nURIs: http://deb.example/debian-security\nSuites: bookworm-security\n\
    Components: main\n";

fn stub(dir: &Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Runs the script with qemu-utils from bookworm-backports installed, no qemu-block-extra, and
/// `apt-get update` / `apt-get install` exiting with `update_rc` / `install_rc`; returns whether
/// it exited 0 and the apt directory it ran on.
fn run(update_rc: i32, install_rc: i32, prepare: impl Fn(&Path)) -> (bool, tempfile::TempDir) {
    let scratch = tempfile::tempdir().unwrap();
    let (bin, apt) = (scratch.path().join("bin"), scratch.path().join("apt"));
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(apt.join("sources.list.d")).unwrap();
    std::fs::write(apt.join("sources.list.d/debian.sources"), DEBIAN_SOURCES).unwrap();
    prepare(&apt);
    stub(
        &bin,
        "dpkg-query",
        &format!("case \"$*\" in *qemu-utils*) printf '%s' '{BPO_VERSION}';; *) exit 1;; esac"),
    );
    stub(
        &bin,
        "apt-get",
        &format!("case \"$1\" in update) exit {update_rc};; install) exit {install_rc};; esac"),
    );
    stub(&bin, "sudo", "exec \"$@\"");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/qemu-block-extra");
    let out = Command::new(script)
        .env("PATH", path)
        .env("VIT_APT_DIR", &apt)
        .output()
        .expect("run scripts/qemu-block-extra");
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    (out.status.success(), scratch)
}

fn backports_source(scratch: &tempfile::TempDir) -> PathBuf {
    scratch
        .path()
        .join("apt/sources.list.d/vit-bookworm-backports.sources")
}

#[test]
fn a_backports_source_that_does_not_serve_is_not_left_behind() {
    // The mirror has no bookworm-backports (apt: "does not have a Release file", exit 100), or
    // has it without this version: the source the script wrote goes again.
    for (update_rc, install_rc) in [(100, 0), (0, 100)] {
        let (ok, scratch) = run(update_rc, install_rc, |_| {});
        assert!(
            ok,
            "update {update_rc}, install {install_rc}: the script failed"
        );
        assert!(
            !backports_source(&scratch).exists(),
            "update {update_rc}, install {install_rc}: a source apt cannot use was left behind"
        );
    }
    // Installed: the source stays (qemu-block-extra's upgrades come from it).
    let (ok, scratch) = run(0, 0, |_| {});
    assert!(ok);
    let written = std::fs::read_to_string(backports_source(&scratch)).unwrap();
    assert!(
        written.contains("Suites: bookworm-backports\n"),
        "{written}"
    );
    assert!(
        written.contains("URIs: http://deb.example/debian\n"),
        "{written}"
    );
    assert!(
        !written.contains("security"),
        "only the first stanza: {written}"
    );
}

#[test]
fn a_source_that_cannot_be_written_does_not_fail_the_script() {
    // tee cannot write it (here: a directory in its way; elsewhere a sudo that asks for a
    // password): the install is tried without it, the script still succeeds.
    let (ok, _scratch) = run(100, 100, |apt| {
        std::fs::create_dir(apt.join("sources.list.d/vit-bookworm-backports.sources")).unwrap();
    });
    assert!(ok, "a failed write of the source failed the script");
}
