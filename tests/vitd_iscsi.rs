//! vitd end to end with real initiators: libiscsi's iscsi-ls, iscsi-inq, iscsi-readcapacity16
//! and the iscsi-test-cu conformance suite, on LUNs made by vitctl and by qemu-img.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};
use vit::config::{Named, Pos};

const RC16: &str = "iscsi-readcapacity16";

#[test]
fn discovery_inquiry_and_capacity() {
    if !have("iscsi-ls") {
        return;
    }
    let ds = Datastore::new();
    ds.target("alpha", &[]);
    ds.lun("alpha", 0, "64M");
    ds.lun("alpha", 3, "1G");
    ds.target("beta", &[]);
    let _vitd = ds.start();

    let (ok, out) = client("iscsi-ls", &["-s", &ds.portal()]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "Target:{} Portal:127.0.0.1:{},1",
            iqn("alpha"),
            ds.port
        )),
        "{out}"
    );
    assert!(out.contains(&iqn("beta")), "{out}");
    assert!(out.contains("Lun:3"), "{out}");

    let (ok, out) = client("iscsi-inq", &[&ds.url("alpha", 0)]);
    assert!(ok, "{out}");
    assert!(
        out.contains("Vendor:VIT") && out.contains("DIRECT_ACCESS"),
        "{out}"
    );

    // Block Limits: UNMAP frees the file system's blocks whole (the temp directory's file
    // system block, 4 KiB or more: 8 or more blocks of 512 bytes).
    let (ok, out) = client("iscsi-inq", &["-e", "1", "-c", "176", &ds.url("alpha", 0)]);
    let granularity: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("optimal unmap granularity:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        ok && granularity >= 8 && granularity.is_power_of_two(),
        "{out}"
    );

    let (ok, out) = client(RC16, &[&ds.url("alpha", 0)]);
    assert!(ok && out.contains("Total size:67108864"), "{out}");
    let (ok, out) = client(RC16, &[&ds.url("alpha", 3)]);
    assert!(ok && out.contains("Total size:1073741824"), "{out}");
    // A LUN that does not exist.
    let (ok, _) = client(RC16, &[&ds.url("alpha", 7)]);
    assert!(!ok);
}

#[test]
fn luns_made_by_qemu_img() {
    if !have("iscsi-ls") || !have("qemu-img") {
        return;
    }
    let ds = Datastore::new();
    let uuid = ds.target("q", &[]);
    let dir = ds.root().join(&uuid);
    for (file, fmt, size) in [
        ("mono.vmdk", "monolithicFlat", "32M"),
        ("split.vmdk", "twoGbMaxExtentFlat", "5G"),
    ] {
        qemu_vmdk(&dir.join(file), fmt, size);
    }
    ds.add_lun_body("q", 0, vmdk_lun(format!("{uuid}/mono.vmdk"), 32 << 20));
    ds.add_lun_body("q", 1, vmdk_lun(format!("{uuid}/split.vmdk"), 5 << 30));
    ds.vitctl(&["config", "validate"]);
    let _vitd = ds.start();
    let (ok, out) = client(RC16, &[&ds.url("q", 0)]);
    assert!(ok && out.contains("Total size:33554432"), "{out}");
    let (ok, out) = client(RC16, &[&ds.url("q", 1)]);
    assert!(ok && out.contains("Total size:5368709120"), "{out}");
    let (ok, out) = client("iscsi-inq", &[&ds.url("q", 1)]);
    assert!(ok, "{out}");
}

#[test]
fn chap_and_mutual_chap() {
    if !have("iscsi-ls") {
        return;
    }
    let ds = Datastore::new();
    ds.chap_targets();
    let vitd = ds.start();
    let url = |user: &str, secret: &str, alias: &str, extra: &str| {
        format!(
            "iscsi://{user}%{secret}@127.0.0.1:{}/{}/0{extra}",
            ds.port,
            iqn(alias)
        )
    };
    let (ok, out) = client(RC16, &[&url("alice", "alicesecret12", "c", "")]);
    assert!(ok && out.contains("Total size:8388608"), "{out}");
    let (ok, out) = client(RC16, &[&url("alice", "wrongsecret1", "c", "")]);
    assert!(!ok && out.contains("Authentication failure"), "{out}");
    let (ok, out) = client(RC16, &[&ds.url("c", 0)]);
    assert!(!ok && out.contains("Authentication failure"), "{out}");
    let (ok, out) = client(
        RC16,
        &[&url(
            "bob",
            "bobsecret1234",
            "m",
            "?target_user=tgt&target_password=tgtsecret1234",
        )],
    );
    assert!(ok && out.contains("Total size:8388608"), "{out}");
    // The initiator checks the target's answer: a wrong expected target secret fails.
    let (ok, _) = client(
        RC16,
        &[&url(
            "bob",
            "bobsecret1234",
            "m",
            "?target_user=tgt&target_password=notthesecret",
        )],
    );
    assert!(!ok);
    let log = vitd.log_text();
    assert!(
        log.contains("refused") && log.contains("alice"),
        "failures are logged with the initiator: {log}"
    );
}

#[test]
fn initiator_groups_restrict_access_and_discovery() {
    if !have("iscsi-ls") {
        return;
    }
    let ds = Datastore::new();
    let allowed = "iqn.2026-11.io.vit:allowed-host";
    ds.vitctl(&["initiatorgroup", "add", "g1", allowed]);
    ds.target("locked", &["--initiator-group", "g1"]);
    ds.lun("locked", 0, "8M");
    ds.target("open", &[]);
    let _vitd = ds.start();
    let (ok, out) = client(RC16, &[&ds.url("locked", 0)]);
    assert!(!ok && out.contains("Authorization failure"), "{out}");
    let (ok, out) = client(RC16, &["-i", allowed, &ds.url("locked", 0)]);
    assert!(ok && out.contains("Total size:8388608"), "{out}");
    // Discovery shows a restricted target only to the initiators it admits.
    let (_, out) = client("iscsi-ls", &[&ds.portal()]);
    assert!(
        out.contains(&iqn("open")) && !out.contains(&iqn("locked")),
        "{out}"
    );
    let (_, out) = client("iscsi-ls", &["-i", allowed, &ds.portal()]);
    assert!(out.contains(&iqn("locked")), "{out}");
}

#[test]
fn discovery_with_chap() {
    if !have("iscsi-ls") {
        return;
    }
    let ds = Datastore::new();
    ds.target("d", &[]);
    ds.edit(|cfg| {
        cfg.auth_groups.push(vit::config::AuthGroup {
            name: "disc".into(),
            pos: Pos::default(),
            auth: vit::config::AuthSettings {
                auth_type: Some((vit::config::AuthType::Chap, Pos::default())),
                chap: vec![vit::config::Chap {
                    user: "disc".into(),
                    secret: "discsecret123".into(),
                    pos: Pos::default(),
                }],
                ..Default::default()
            },
        });
        let pg = cfg
            .portal_groups
            .iter_mut()
            .find(|p| p.name == "default")
            .unwrap();
        pg.discovery_auth_group = Some(Named::new("disc"));
    });
    let _vitd = ds.start();
    let (ok, out) = client("iscsi-ls", &[&ds.portal()]);
    assert!(
        !ok || !out.contains(&iqn("d")),
        "discovery without CHAP must fail: {out}"
    );
    let with = format!("iscsi://disc%discsecret123@127.0.0.1:{}/", ds.port);
    let (ok, out) = client("iscsi-ls", &[&with]);
    assert!(ok && out.contains(&iqn("d")), "{out}");
}

#[test]
fn header_digest_session_moves_data() {
    if !have("iscsi-ls") {
        return;
    }
    let (ds, _vitd) = serve_one("h", "16M");
    let url = format!("{}?header_digest=crc32c", ds.url("h", 0));
    let (ok, out) = client(RC16, &[&url]);
    assert!(ok && out.contains("Total size:16777216"), "{out}");
    let (ok, out) = client(
        "iscsi-test-cu",
        &["-d", "-s", "-t", "SCSI.Read10,SCSI.Write10", &url],
    );
    assert!(ok, "{out}");
    let (tests, failed) = cu_summary(&out);
    assert!(tests > 0 && failed == 0, "{out}");
}

/// (tests run, tests failed) from iscsi-test-cu's CUnit summary.
fn cu_summary(out: &str) -> (u32, u32) {
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("tests"))
        .unwrap_or_else(|| panic!("no summary: {out}"));
    let n: Vec<u32> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (n[1], n[3])
}

/// (run, failed, skipped) from iscsi-test-cu's verbose output: a test counts as skipped when its
/// own output (from "Test: NAME ..." to its "passed") says "[SKIPPED]".
fn cu_counts(out: &str) -> (u32, u32, u32) {
    let (mut run, mut failed, mut skipped) = (0, 0, 0);
    for block in out.split("\n  Test: ").skip(1) {
        run += 1;
        let end = block.find("\npassed").or_else(|| block.find("\nFAILED"));
        let body = end.map_or(block, |e| &block[..e]);
        if block.contains("\nFAILED") && end == block.find("\nFAILED") {
            failed += 1;
        } else if let Some(at) = body.find("[SKIPPED]") {
            skipped += 1;
            let reason = body[at..].lines().next().unwrap_or_default();
            eprintln!(
                "  skipped {}: {reason}",
                block.split(" ...").next().unwrap_or_default()
            );
        }
    }
    (run, failed, skipped)
}

#[test]
fn conformance_suite_passes() {
    if !have("iscsi-test-cu") {
        return;
    }
    let ds = Datastore::new();
    ds.target("cu", &[]);
    ds.lun("cu", 0, "128M");
    let _vitd = ds.start();
    whole_suite_passes(&ds.url("cu", 0));
}

#[test]
fn conformance_suite_passes_on_a_memory_lun() {
    // A ctl.conf `backend ramdisk` LUN backed by memory, thin (`option capacity` half the size):
    // the data path without a disk, with memory taken as written and given back by UNMAP, passes
    // the same suite.
    if !have("iscsi-test-cu") {
        return;
    }
    let ds = Datastore::new();
    ds.target("mem", &[]);
    ds.add_lun_body("mem", 0, memory_lun(128 << 20, Some("64M")));
    let _vitd = ds.start();
    whole_suite_passes(&ds.url("mem", 0));
}

/// ctl.conf's `pblocksize`/`pblockoffset` and `ublocksize`/`ublockoffset` LUN options reach
/// READ CAPACITY (16) and the Block Limits page, and iscsi-test-cu's tests that need a physical
/// block of several logical ones (skipped on the LUNs above) pass on such a LUN.
#[test]
fn block_geometry_options_are_reported_and_pass_their_conformance_tests() {
    if !have("iscsi-test-cu") {
        return;
    }
    let ds = Datastore::new();
    ds.target("g", &[]);
    let descriptor = ds.lun("g", 0, "8M");
    // LUN 2: a thin memory LUN, its unmap granule the 64 KiB chunk it takes memory in.
    ds.add_lun_body("g", 2, memory_lun(8 << 20, Some("4M")));
    let mut body = memory_lun(8 << 20, Some("8M"));
    for (name, value) in [
        ("pblocksize", "4K"),
        ("pblockoffset", "1024"),
        ("ublocksize", "128K"),
        ("ublockoffset", "64K"),
    ] {
        body.options.push(vit::config::Opt {
            name: name.into(),
            value: value.into(),
            pos: Default::default(),
        });
    }
    ds.add_lun_body("g", 1, body);
    let vitd = ds.start();
    let field = |out: &str, name: &str| -> u64 {
        out.lines()
            .find_map(|l| l.find(name).map(|at| &l[at + name.len()..]))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {out}"))
    };
    // [LBPPB exponent, lowest aligned LBA] from READ CAPACITY (16), then [optimal transfer
    // length granularity, optimal unmap granularity, UGAVALID, unmap granularity alignment]
    // from the Block Limits page.
    let geometry = |lun: u32| -> [u64; 6] {
        let (ok, rc) = client(RC16, &[&ds.url("g", lun)]);
        assert!(ok, "{rc}");
        let (ok, bl) = client("iscsi-inq", &["-e", "1", "-c", "176", &ds.url("g", lun)]);
        assert!(ok, "{bl}");
        [
            field(&rc, "LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT:"),
            field(&rc, "LOWEST ALIGNED LOGICAL BLOCK ADDRESS:"),
            field(&bl, "optimal transfer length granularity:"),
            field(&bl, "optimal unmap granularity:"),
            field(&bl, "ugavalid:"),
            field(&bl, "unmap granularity alignment:"),
        ]
    };
    // LUN 0 (no options): one logical block per physical block, unmap granules of the file
    // system's block (its extent's st_blksize, beside the descriptor) from LBA 0.
    let fs_blocks = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&descriptor).unwrap().blksize() / 512
    };
    assert_eq!(geometry(0), [0, 0, 1, fs_blocks, 1, 0]);
    assert_eq!(geometry(2), [0, 0, 1, 128, 1, 0]);
    // LUN 1: 4 KiB physical blocks offset by 1 KiB, as ctld computes it: LBA (8 - 2) % 8 = 6 is
    // the first aligned one; 128 KiB unmap granules (256 blocks) offset by 64 KiB: LBA 128.
    assert_eq!(geometry(1), [3, 6, 8, 256, 1, 128]);
    // The tests skipped with "LBPPB < 2" on the other LUNs.
    let url = ds.url("g", 1);
    let (_, out) = client_within(
        120,
        "iscsi-test-cu",
        &[
            "-d",
            "-v",
            "-t",
            "SCSI.WriteSame10.UnmapUnaligned,SCSI.WriteSame16.UnmapUnaligned,\
             SCSI.WriteSame10.InvalidDataOutSize,SCSI.WriteSame16.InvalidDataOutSize,\
             SCSI.CompareAndWrite.InvalidDataOutSize",
            &url,
        ],
    );
    let (tests, failed) = cu_summary(&out);
    let (run, _, skipped) = cu_counts(&out);
    assert_eq!(
        (tests, run, failed, skipped),
        (5, 5, 0, 0),
        "{out}\n{}",
        vitd.log_text()
    );
}

/// Runs every test of iscsi-test-cu on `url`; none may fail.
fn whole_suite_passes(url: &str) {
    // The second URL (a second session to the same LUN) enables the multipath suites.
    // The whole suite takes 35-65 s of a debug build's time here, longer when the two suites
    // share the machine's two CPUs: the limit only guards against a hang.
    let (_, out) = client_within(600, "iscsi-test-cu", &["-d", "-v", "-t", "ALL", url, url]);
    let (tests, failed) = cu_summary(&out);
    let (run, _, skipped) = cu_counts(&out);
    eprintln!("iscsi-test-cu ALL: {tests} run, {failed} failed, {skipped} skipped");
    assert_eq!(run, tests, "every test's output was parsed");
    assert!(tests >= 200, "{out}");
    assert_eq!(failed, 0, "iscsi-test-cu failures:\n{out}");
}

#[test]
fn hostile_pdus_close_only_their_connection() {
    if !have("iscsi-ls") {
        return;
    }
    let (ds, _vitd) = serve_one("x", "8M");
    let addr = format!("127.0.0.1:{}", ds.port);
    let hostile: Vec<Vec<u8>> = vec![
        vec![0x3f; 48], // not an initiator opcode
        {
            let mut b = vec![0u8; 48]; // a login request claiming a 16 MiB data segment
            b[0] = 0x43;
            b[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
            b
        },
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(4),
        vec![0u8; 7], // a short header, then silence
    ];
    let mut held = Vec::new();
    for bytes in &hostile {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(bytes).unwrap();
        held.push(s);
    }
    // While the hostile connections are open, a real initiator is served.
    let (ok, out) = client(RC16, &[&ds.url("x", 0)]);
    assert!(ok && out.contains("Total size:8388608"), "{out}");
    // The malformed ones are closed by the target (read returns EOF or an error, not a timeout).
    for mut s in held.drain(..3) {
        let mut buf = [0u8; 512];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue, // a Login Response with an error status may come first
                Err(e) => {
                    assert_ne!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock,
                        "connection left open"
                    );
                    break;
                }
            }
        }
    }
}

#[test]
fn stops_cleanly_on_sigterm() {
    if !have("iscsi-ls") {
        return;
    }
    let (ds, mut vitd) = serve_one("s", "8M");
    let (ok, _) = client(RC16, &[&ds.url("s", 0)]);
    assert!(ok);
    // SIGHUP (an operator's reload habit) is answered in the log and vitd serves on: its default
    // action would end vitd and every session.
    signal(vitd.child.as_ref().unwrap(), libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !vitd.log_text().contains("SIGHUP received") {
        assert!(
            Instant::now() < deadline,
            "no SIGHUP line: {}",
            vitd.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        vitd.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "vitd ended on SIGHUP: {}",
        vitd.log_text()
    );
    let (ok, out) = client(RC16, &[&ds.url("s", 0)]);
    assert!(ok, "after SIGHUP: {out}");
    let status = vitd.stop();
    assert!(
        status.success(),
        "exit status {status}: {}",
        vitd.log_text()
    );
}

#[test]
fn bad_config_is_a_clear_startup_error() {
    let ds = Datastore::new();
    std::fs::write(ds.conf(), "generation 1\ntarget iqn.2026-11.io.vit:x {\n  lun 0 { backend vmdk; path ../../etc/passwd }\n}\n")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vitd"))
        .arg("--datastore")
        .arg(ds.root())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("vit.conf:3:"), "{err}");
    // A portal that cannot be bound names its portal group.
    let ds = Datastore::new();
    ds.target("p", &[]);
    let _blocker = std::net::TcpListener::bind(format!("127.0.0.1:{}", ds.port)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vitd"))
        .arg("--datastore")
        .arg(ds.root())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("portal group default") && err.contains("cannot listen"),
        "{err}"
    );
}

#[test]
fn bad_command_line_is_refused() {
    let ds = Datastore::new();
    for args in [
        &["--cores", "0"][..],
        &["--poll-us", "20000"],
        &["--poll-us", "-1"],
        &["--cores", "two"],
        // Far more data threads than CPUs: refused before any buffer is pinned.
        &["--cores", "100000"],
        &["--max-sessions", "0"],
        &["--max-sessions", "many"],
        &["--no-such-flag"],
    ] {
        let out = Command::new("timeout")
            .arg("20")
            .arg(env!("CARGO_BIN_EXE_vitd"))
            .arg("--datastore")
            .arg(ds.root())
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("error"), "{args:?}: {err}");
    }
}

#[test]
fn too_little_locked_memory_is_explained() {
    // Registered I/O buffers are pinned memory: without CAP_IPC_LOCK (here: in a user namespace)
    // and with a small RLIMIT_MEMLOCK, vitd stops at start with a message that says what to raise.
    let probe = Command::new("unshare").args(["-r", "true"]).status();
    if !have("prlimit") || !probe.is_ok_and(|s| s.success()) {
        eprintln!("note: needs prlimit and user namespaces (unshare -r); skipping");
        return;
    }
    let ds = Datastore::new();
    let out = Command::new("timeout")
        .arg("20")
        .args(["prlimit", "--memlock=65536:65536", "unshare", "-r"])
        .arg(env!("CARGO_BIN_EXE_vitd"))
        .arg("--datastore")
        .arg(ds.root())
        .args(["--cores", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("locked-memory limit") && err.contains("KiB of I/O buffers"),
        "{err}"
    );
}

#[test]
fn embedded_default_datastore_works_with_no_setup() {
    if !have("iscsi-ls") {
        return;
    }
    if std::net::TcpListener::bind("127.0.0.1:3260").is_err() {
        eprintln!("note: 127.0.0.1:3260 is busy; skipping the embedded-default test");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let log = home.path().join("vitd.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vitd"))
        .env_remove("VIT_DATASTORE")
        .env("XDG_DATA_HOME", home.path().join("xdg"))
        .env("HOME", home.path())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut listed = String::new();
    for _ in 0..100 {
        let (ok, out) = client("iscsi-ls", &["-s", "iscsi://127.0.0.1/"]);
        if ok {
            listed = out;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, cap) = client(RC16, &["iscsi://127.0.0.1/iqn.2026-11.io.vit:default/0"]);
    sigterm(&child);
    let status = child.wait().unwrap();
    assert!(
        listed.contains("Target:iqn.2026-11.io.vit:default Portal:127.0.0.1:3260,1"),
        "{listed}"
    );
    assert!(ok && cap.contains("Total size:1073741824"), "{cap}");
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        home.path()
            .join("xdg/vit/.iSCSI-Config/etc/vit.conf")
            .is_file()
    );
}

#[test]
fn read_only_luns_refuse_writes() {
    if !have("iscsi-test-cu") {
        return;
    }
    let ds = Datastore::new();
    ds.target("ro", &[]);
    ds.lun("ro", 0, "16M");
    let v = ds.json(&[
        "target",
        "lun",
        "set",
        "--target",
        "ro",
        "--id",
        "0",
        "--read-only",
        "on",
    ]);
    assert_eq!(v["read_only"], true);
    assert!(
        std::fs::read_to_string(ds.conf())
            .unwrap()
            .contains("option readonly on")
    );
    let _vitd = ds.start();
    let (_, out) = client(
        "iscsi-test-cu",
        &["-d", "-v", "-t", "SCSI.ReadOnly", &ds.url("ro", 0)],
    );
    let (tests, failed) = cu_summary(&out);
    let (_, _, skipped) = cu_counts(&out);
    assert!(tests >= 1 && failed == 0 && skipped == 0, "{out}");
}

/// Sets the default portal group's `discovery-filter` (`None`: not written).
fn set_discovery_filter(ds: &Datastore, filter: Option<vit::config::DiscoveryFilter>) {
    ds.edit(|cfg| {
        let pg = cfg
            .portal_groups
            .iter_mut()
            .find(|p| p.name == "default")
            .unwrap();
        pg.discovery_filter = filter.map(|f| (f, Pos::default()));
    });
}

/// ctld's `portal-group NAME AUTH-GROUP` in a target: connections through that portal group
/// are checked against AUTH-GROUP, those through its other portal groups against the target's
/// own (vit used the target's own for all).
#[test]
fn a_portal_groups_own_auth_group_governs_logins_and_discovery_through_it() {
    if !have("iscsi-inq") || !have("iscsi-ls") {
        return;
    }
    use vit::config::{Named, TargetPortalGroup};
    let ds = Datastore::new();
    let second = free_port();
    ds.target("pa", &["--listen", &format!("127.0.0.1:{second}")]);
    ds.lun("pa", 0, "8M");
    let named = |name: &str| Named {
        name: name.into(),
        pos: Pos::default(),
    };
    ds.edit(|cfg| {
        let t = cfg
            .targets
            .iter_mut()
            .find(|t| t.name == iqn("pa"))
            .unwrap();
        assert_eq!(t.portal_groups.len(), 1);
        t.portal_groups[0].auth_group = Some(named("no-access"));
        t.portal_groups.push(TargetPortalGroup {
            portal_group: named("default"),
            auth_group: None,
        });
    });
    let vitd = ds.start();
    // Through the default portal group, the target's own (open) auth group.
    let (ok, out) = client("iscsi-inq", &[&ds.url("pa", 0)]);
    assert!(ok && out.contains("Vendor:VIT"), "{out}");
    let (ok, out) = client("iscsi-ls", &[&ds.portal()]);
    assert!(ok && out.contains(&iqn("pa")), "{out}");
    // Through the second, no-access: refused, and not listed.
    let url = format!("iscsi://127.0.0.1:{second}/{}/0", iqn("pa"));
    let (ok, out) = client("iscsi-inq", &[&url]);
    assert!(!ok, "{out}\n{}", vitd.log_text());
    let (ok, out) = client("iscsi-ls", &[&format!("iscsi://127.0.0.1:{second}/")]);
    assert!(ok && !out.contains(&iqn("pa")), "{out}");
}

/// A target restricted to an initiator group whose last initiator was removed admits nobody
/// (an empty list of allowed names had meant any initiator: removing the last one opened the
/// target to all).
#[test]
fn an_emptied_initiator_group_admits_no_initiator() {
    if !have("iscsi-inq") || !have("iscsi-ls") {
        return;
    }
    let ds = Datastore::new();
    let libiscsi = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-inq";
    ds.vitctl(&["initiatorgroup", "add", "g1", libiscsi]);
    ds.target("only", &["--initiator-group", "g1"]);
    ds.lun("only", 0, "8M");
    {
        let _vitd = ds.start();
        let (ok, out) = client("iscsi-inq", &[&ds.url("only", 0)]);
        assert!(ok, "a member is let in: {out}");
    }
    ds.vitctl(&["initiatorgroup", "initiator", "remove", "g1", libiscsi]);
    let vitd = ds.start();
    let (ok, out) = client("iscsi-inq", &[&ds.url("only", 0)]);
    assert!(!ok, "the emptied group let iscsi-inq in: {out}");
    let (ok, out) = client("iscsi-ls", &[&ds.portal()]);
    assert!(ok && !out.contains(&iqn("only")), "{out}");
    assert!(
        vitd.log_text()
            .contains("initiator group g1 has no initiators"),
        "{}",
        vitd.log_text()
    );
}

#[test]
fn discovery_filter_none_lists_targets_portal_name_hides() {
    if !have("iscsi-ls") {
        return;
    }
    use vit::config::DiscoveryFilter;
    // A target for another initiator only, listed or not as the filter says.
    let listing = |filter: Option<DiscoveryFilter>| {
        let ds = Datastore::new();
        ds.vitctl(&[
            "initiatorgroup",
            "add",
            "g1",
            "iqn.2026-11.io.vit:someone-else",
        ]);
        ds.target("theirs", &["--initiator-group", "g1"]);
        ds.target("open", &[]);
        set_discovery_filter(&ds, filter);
        let _vitd = ds.start();
        let (ok, out) = client("iscsi-ls", &[&ds.portal()]);
        assert!(ok && out.contains(&iqn("open")), "{out}");
        out.contains(&iqn("theirs"))
    };
    assert!(listing(Some(DiscoveryFilter::None)));
    assert!(listing(Some(DiscoveryFilter::Portal)));
    assert!(!listing(Some(DiscoveryFilter::PortalName)));
    assert!(!listing(None));
}

#[test]
fn discovery_filter_portal_name_auth_lists_chap_targets_for_their_credentials() {
    if !have("iscsi-ls") {
        return;
    }
    use vit::config::{AuthGroup, AuthSettings, AuthType, Chap, DiscoveryFilter};
    let chap = |user: &str, secret: &str| Chap {
        user: user.into(),
        secret: secret.into(),
        pos: Pos::default(),
    };
    let ds = Datastore::new();
    ds.target("open", &[]);
    ds.target(
        "alices",
        &[
            "--auth-type",
            "chap",
            "--chap-user",
            "alice",
            "--chap-secret",
            "alicesecret12",
        ],
    );
    // carol is a user here too, with another secret than discovery's.
    ds.target(
        "carols",
        &[
            "--auth-type",
            "chap",
            "--chap-user",
            "carol",
            "--chap-secret",
            "carolsother12",
        ],
    );
    ds.edit(|cfg| {
        cfg.auth_groups.push(AuthGroup {
            name: "disc".into(),
            pos: Pos::default(),
            auth: AuthSettings {
                auth_type: Some((AuthType::Chap, Pos::default())),
                chap: vec![
                    chap("alice", "alicesecret12"),
                    chap("carol", "caroldisc1234"),
                ],
                ..Default::default()
            },
        });
        let pg = cfg
            .portal_groups
            .iter_mut()
            .find(|p| p.name == "default")
            .unwrap();
        pg.discovery_auth_group = Some(Named::new("disc"));
    });
    let listed = |ds: &Datastore, user: &str, secret: &str| -> Vec<&'static str> {
        let portal = format!("iscsi://{user}%{secret}@127.0.0.1:{}/", ds.port);
        let (ok, out) = client("iscsi-ls", &[&portal]);
        assert!(ok, "{out}");
        ["open", "alices", "carols"]
            .into_iter()
            .filter(|a| out.contains(&iqn(a)))
            .collect()
    };
    // Not written (vit's default, portal-name): CHAP targets are listed whoever discovers.
    {
        let _vitd = ds.start();
        assert_eq!(
            listed(&ds, "carol", "caroldisc1234"),
            ["open", "alices", "carols"]
        );
    }
    set_discovery_filter(&ds, Some(DiscoveryFilter::PortalNameAuth));
    let _vitd = ds.start();
    // alice's discovery credentials are alices's: listed; carol's discovery secret is not
    // carols's: not listed.
    assert_eq!(listed(&ds, "alice", "alicesecret12"), ["open", "alices"]);
    assert_eq!(listed(&ds, "carol", "caroldisc1234"), ["open"]);
}

/// An auth-group's `initiator-portal` list (ctl.conf(5)) admits logins from its networks only:
/// one from elsewhere is refused with AUTHORIZATION FAILURE (0202) and a log line naming its
/// address, and discovery does not list the target to it.
#[test]
fn initiator_portals_restrict_logins_and_discovery() {
    if !have("iscsi-inq") || !have("iscsi-ls") {
        return;
    }
    let ds = Datastore::new();
    for (alias, net) in [("near", "127.0.0.0/8"), ("far", "10.0.0.0/8")] {
        ds.target(alias, &[]);
        ds.lun(alias, 0, "8M");
        ds.edit(|cfg| {
            let t = cfg.targets.iter().find(|t| t.name == iqn(alias)).unwrap();
            let ag = t.auth_group.clone().unwrap().name;
            let g = cfg.auth_groups.iter_mut().find(|g| g.name == ag).unwrap();
            g.auth.initiator_portals.push(Named {
                name: net.into(),
                pos: Pos::default(),
            });
        });
    }
    let vitd = ds.start();
    let (ok, out) = client("iscsi-inq", &[&ds.url("near", 0)]);
    assert!(ok && out.contains("Vendor:VIT"), "{out}");
    let (ok, out) = client("iscsi-inq", &[&ds.url("far", 0)]);
    assert!(!ok, "a login from 127.0.0.1 passed 10.0.0.0/8: {out}");
    let e = vit::iscsi::initiator::try_login(
        ds.port,
        "iqn.2026-11.io.vit:tester",
        &iqn("far"),
        [0x80, 0, 0, 0, 0, 1],
    )
    .map(|_| ())
    .unwrap_err();
    assert!(e.to_string().contains("0x0202"), "{e}");
    let (ok, out) = client("iscsi-ls", &[&ds.portal()]);
    assert!(
        ok && out.contains(&iqn("near")) && !out.contains(&iqn("far")),
        "{out}"
    );
    let log = vitd.log_text();
    assert!(
        log.contains("initiator portal 127.0.0.1 is not allowed"),
        "{log}"
    );
}

/// ctld's predefined auth-groups: a target naming none (and no inline authentication) gets
/// `default`, which denies every login, as `no-access` does; `no-authentication` admits all.
#[test]
fn the_predefined_auth_groups_deny_or_admit_as_ctlds() {
    if !have("iscsi-inq") {
        return;
    }
    let ds = Datastore::new();
    let groups = [
        ("unnamed", None),
        ("default", Some("default")),
        ("noaccess", Some("no-access")),
        ("open", Some("no-authentication")),
    ];
    for (alias, group) in groups {
        ds.target(alias, &[]);
        ds.lun(alias, 0, "8M");
        ds.edit(|cfg| {
            cfg.auth_groups.retain(|g| g.name != "default");
            let t = cfg
                .targets
                .iter_mut()
                .find(|t| t.name == iqn(alias))
                .unwrap();
            t.auth_group = group.map(|g| Named {
                name: g.into(),
                pos: Pos::default(),
            });
            t.auth = Default::default();
        });
    }
    let vitd = ds.start();
    for (alias, group) in groups {
        let (ok, out) = client("iscsi-inq", &[&ds.url(alias, 0)]);
        assert_eq!(
            ok,
            group == Some("no-authentication"),
            "{alias}: {out}\n{}",
            vitd.log_text()
        );
    }
}

#[test]
fn chap_mutual_with_one_secret_both_ways_is_served_with_a_warning() {
    if !have("iscsi-ls") {
        return;
    }
    let ds = Datastore::new();
    ds.target("same", &MUTUAL_CHAP);
    // vitctl refuses one secret for both directions; a hand-written vit.conf may have it.
    ds.edit(|cfg| {
        let t = cfg
            .targets
            .iter_mut()
            .find(|t| t.name == iqn("same"))
            .unwrap();
        for m in &mut t.auth.chap_mutual {
            m.mutual_secret = m.secret.clone();
        }
        for g in &mut cfg.auth_groups {
            for m in &mut g.auth.chap_mutual {
                m.mutual_secret = m.secret.clone();
            }
        }
    });
    ds.lun("same", 0, "8M");
    let vitd = ds.start();
    // ctld loads it, so vitd serves it (refusing would stop existing configs from loading)...
    let url = format!(
        "iscsi://bob%bobsecret1234@127.0.0.1:{}/{}/0?target_user=tgt&target_password=bobsecret1234",
        ds.port,
        iqn("same")
    );
    let (ok, out) = client(RC16, &[&url]);
    assert!(ok && out.contains("Total size:8388608"), "{out}");
    // ...and said once at start where the statement is and whose it is.
    let log = vitd.log_text();
    let conf = ds.conf().display().to_string();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("chap-mutual"))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(
        warned[0].contains(&format!("{conf}:"))
            && warned[0].contains("user \"bob\"")
            && (warned[0].contains(&iqn("same")) || warned[0].contains("auth-group")),
        "{log}"
    );
    assert!(
        !log.contains("bobsecret1234"),
        "no secret in the log: {log}"
    );
}

/// A portal group's `dscp` and `pcp` (ctld's options) mark what vitd sends on the connections
/// it accepts there: `ss --tos` shows the server side's TOS byte (the codepoint past the two
/// ECN bits) and its priority. vitd parsed both and applied neither.
#[test]
fn a_portal_groups_dscp_and_pcp_mark_its_connections() {
    if !have("ss") {
        eprintln!("note: no ss(8); skipping");
        return;
    }
    let ds = Datastore::new();
    ds.target("q", &[]);
    ds.lun("q", 0, "8M");
    ds.edit(|c| {
        assert!(!c.portal_groups.is_empty());
        for g in &mut c.portal_groups {
            g.dscp = Some(Named::new("ef"));
            g.pcp = Some((3, Pos::default()));
        }
    });
    let vitd = ds.start();
    let client = TcpStream::connect(("127.0.0.1", ds.port)).unwrap();
    let mine = format!(":{}", client.local_addr().unwrap().port());
    let filter = format!("( sport = :{} )", ds.port);
    let mut seen = String::new();
    for _ in 0..50 {
        let out = Command::new("ss")
            .args(["-tn", "--tos", "state", "established", &filter])
            .output()
            .unwrap();
        seen = String::from_utf8_lossy(&out.stdout).into_owned();
        // The kernel lists the connection before vitd has accepted (and marked) it.
        if seen
            .lines()
            .any(|l| l.contains(&mine) && !l.contains("tos:0 "))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let line = seen
        .lines()
        .find(|l| l.contains(&mine))
        .unwrap_or_else(|| panic!("no connection in ss: {seen}\n{}", vitd.log_text()));
    assert!(
        line.contains("tos:0xb8") && line.contains("class_id:0x3"),
        "{line}"
    );
}

/// vitd reads vit.conf only when it starts, so a change made by vitctl while it serves the
/// datastore (a LUN added, or removed with its files) is not what initiators see until vitd
/// restarts: vitctl says so then, and only then (not after vitd has stopped, nor for a look).
#[test]
fn vitctl_warns_that_a_change_waits_for_a_restart_while_vitd_serves() {
    const WARNING: &str = "restart vitd";
    let (ds, mut vitd) = serve_one("live", "16M");
    let warned = |args: &[&str]| {
        let out = ds.vitctl_out(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "vitctl {args:?}: {err}");
        err.contains(WARNING)
    };
    let add = |id: &'static str| {
        [
            "target", "lun", "add", "--target", "live", "--id", id, "--size", "1M",
        ]
    };
    assert!(warned(&add("1")), "a LUN added while vitd serves");
    assert!(warned(&[
        "target", "lun", "remove", "--target", "live", "--id", "1"
    ]));
    assert!(!warned(&["target", "list"]), "a look changes nothing");
    assert!(vitd.stop().success());
    assert!(!warned(&add("2")), "no vitd serves the datastore now");
}

/// The mark vitd leaves on a datastore (etc/vitd.lock) is readable by every user, whatever
/// vitd's umask (root's is 027 or 077 on hardened hosts): vitctl, run by the datastore's owner,
/// tests the lock through a read-only open, and a mark it cannot open is a vitd it never warns of.
#[test]
fn the_served_mark_is_readable_whatever_vitds_umask() {
    use std::os::unix::fs::PermissionsExt;
    let ds = Datastore::new();
    ds.target("t", &[]);
    ds.lun("t", 0, "1M");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("umask 077 && exec \"$0\" --datastore \"$1\" --cores 1")
        .arg(env!("CARGO_BIN_EXE_vitd"))
        .arg(ds.root());
    let mut vitd = Vitd::spawn(cmd, ds.port);
    let mark = ds.root().join(".iSCSI-Config/etc/vitd.lock");
    let mode = std::fs::metadata(&mark).unwrap().permissions().mode() & 0o777;
    assert!(vitd.stop().success());
    assert_eq!(mode, 0o644, "{mode:o}");
}

/// `vitd --help` tells an operator what the README tells: vit.conf is read at start, the locked
/// memory each data thread needs, RUST_LOG and the stop signals.
#[test]
fn vitd_help_says_what_an_operator_needs() {
    let out = Command::new(env!("CARGO_BIN_EXE_vitd"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needed in [
        "read at start",
        "48 MiB of locked memory",
        "ulimit -l",
        "RUST_LOG",
        "SIGTERM",
    ] {
        assert!(help.contains(needed), "no {needed:?} in: {help}");
    }
}

/// What Linux does for `echo "write through" > .../scsi_disk/*/cache_type` (sd's
/// cache_type_store): MODE SENSE of the caching page with DBD, WCE flipped in the page as
/// returned, PS cleared, sent back by MODE SELECT with PF = 1 and SP = PS. vitd cannot change
/// its write cache, so the changeable values say WCE is not changeable and the MODE SELECT is
/// refused (ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST pointing at WCE), for (6) and
/// (10) alike: the initiator is never left believing in a cache setting vitd does not apply.
/// Nothing changed, so another session gets no MODE PARAMETERS CHANGED and reads the same page.
#[test]
fn a_write_cache_change_by_mode_select_is_refused_and_changes_nothing() {
    use vit::iscsi::initiator::login;
    // LUN 0 a file (write-through where O_DIRECT works), LUN 1 memory (write-back).
    let ds = Datastore::new();
    ds.target("wc", &[]);
    ds.lun("wc", 0, "8M");
    ds.add_lun_body("wc", 1, memory_lun(8 << 20, None));
    let _vitd = ds.start();
    let open = |n: u8| {
        let mut s = login(
            ds.port,
            &format!("iqn.2026-11.io.vit:wc-{n}"),
            &iqn("wc"),
            [0x80, 0, 0, 0, 2, n],
        );
        // Each LUN reports the power-on unit attention once.
        for lun in [0, 1] {
            s.command(lun, &[0; 6], &[], 0).unwrap();
        }
        s
    };
    let (mut a, mut b) = (open(1), open(2));
    // (MODE SENSE CDB, MODE SELECT opcode, header length)
    let mut seen = Vec::new();
    for (lun, sense_cdb, select_op, hl) in [0, 1].into_iter().flat_map(|lun| {
        [
            (lun, vec![0x1A, 0x08, 0x08, 0, 255, 0], 0x15u8, 4usize),
            (lun, vec![0x5A, 0x08, 0x08, 0, 0, 0, 0, 0, 255, 0], 0x55, 8),
        ]
    }) {
        let cur = a.command(lun, &sense_cdb, &[], 255).unwrap();
        assert_eq!(cur.status, 0, "{cur:?}");
        let page = cur.data_in[hl..].to_vec();
        assert_eq!(&page[..2], &[0x08, 0x12], "{cur:?}");
        let wce = page[2] & 0x04 != 0;
        seen.push(wce);
        let mut ch_cdb = sense_cdb.clone();
        ch_cdb[2] |= 0x40; // PC = 01b: changeable values
        let ch = a.command(lun, &ch_cdb, &[], 255).unwrap();
        assert_eq!(ch.status, 0, "{ch:?}");
        assert_eq!(
            ch.data_in[hl + 2] & 0x04,
            0,
            "WCE is not changeable: {ch:?}"
        );
        // Linux's list: header with medium type and device-specific 0, no block descriptor.
        let mut list = vec![0u8; hl];
        list.extend_from_slice(&page);
        list[hl] &= !0x80;
        list[hl + 2] ^= 0x04;
        let sp = u8::from(page[0] & 0x80 != 0);
        let select_cdb = if select_op == 0x15 {
            vec![0x15, 0x10 | sp, 0, 0, list.len() as u8, 0]
        } else {
            vec![0x55, 0x10 | sp, 0, 0, 0, 0, 0, 0, list.len() as u8, 0]
        };
        let r = a.command(lun, &select_cdb, &list, 0).unwrap();
        assert_eq!(r.status, 2, "MODE SELECT flipping WCE={wce}: {r:?}");
        // Fixed sense: key 5, ASC/ASCQ 26h/00h, SKSV with C/D = 0 and BPV, bit 2 of byte hl+2.
        assert_eq!(
            (r.sense[2] & 0x0f, r.sense[12], r.sense[13]),
            (5, 0x26, 0),
            "{r:?}"
        );
        assert_eq!(&r.sense[15..18], &[0x8A, 0, (hl + 2) as u8], "{r:?}");
        // The same list unflipped is accepted (it changes nothing) and the page is as it was.
        list[hl + 2] ^= 0x04;
        let r = a.command(lun, &select_cdb, &list, 0).unwrap();
        assert_eq!(r.status, 0, "{r:?}");
        for s in [&mut a, &mut b] {
            let again = s.command(lun, &sense_cdb, &[], 255).unwrap();
            assert_eq!(
                (again.status, &again.data_in),
                (0, &cur.data_in),
                "{again:?}"
            );
        }
    }
    assert!(
        seen.contains(&true),
        "the memory LUN has a write cache: {seen:?}"
    );
}
