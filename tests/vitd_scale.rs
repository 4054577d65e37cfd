//! A big configuration on one host: many targets and LUNs, more extents than a data thread's
//! registered-file table, a login storm, a low open-files limit.

mod common;
use common::*;
use std::time::Instant;

/// Adds `targets` targets named `t0`.. to `ds`, target i with the LUN ids `luns(i)`, each a
/// sparse VMDK of `size` bytes, in one commit (vitctl would commit once per LUN).
fn populate(ds: &Datastore, targets: usize, luns: impl Fn(usize) -> Vec<u64>, size: u64) {
    let store = vit::datastore::Datastore::open(ds.root()).unwrap();
    // Each target made like vitctl's (its portal group and auth-group), without LUNs.
    ds.target("template", &[]);
    ds.edit(|cfg| {
        let template = cfg.targets.pop().unwrap();
        for i in 0..targets {
            let uuid = uuid::Uuid::new_v4().to_string();
            let dir = store.create_target_dir(&uuid).unwrap();
            let mut t = template.clone();
            let alias = format!("t{i}");
            t.name = iqn(&alias);
            t.alias = Some(vit::config::Named::new(alias));
            t.options = vec![vit::config::Opt {
                name: "uuid".into(),
                value: uuid.clone(),
                pos: Default::default(),
            }];
            for id in luns(i) {
                let stem = uuid::Uuid::new_v4().to_string();
                vit::vmdk::create(&dir, &stem, size, &Default::default()).unwrap();
                t.luns.push(vit::config::TargetLun {
                    id,
                    pos: Default::default(),
                    lun: vit::config::LunRef::Inline(vmdk_lun(format!("{uuid}/{stem}.vmdk"), size)),
                });
            }
            cfg.targets.push(t);
        }
    });
}

fn rss_kib(vitd: &Vitd) -> u64 {
    let pid = vitd.child.as_ref().unwrap().id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

const INITIATOR: &str = "iqn.2026-11.io.vit:scale-initiator";

/// The targets and the LUN count of each that `iscsi-ls -s` lists.
fn listed(text: &str) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("Target:") {
            out.push((rest.split_whitespace().next().unwrap().to_string(), 0));
        } else if l.starts_with("Lun:") {
            out.last_mut().expect("a LUN before any target").1 += 1;
        }
    }
    out
}

/// 200 targets (every fortieth with 256 LUNs, 0..=255, the others 4): vitctl lists and
/// validates it, discovery shows every target with all its LUNs (SendTargets answers continued
/// with the C bit), and 100 sessions logging in at once to 100 targets all get in while
/// discovery sessions keep being answered.
#[test]
fn many_targets_and_luns_are_listed_discovered_and_logged_in_at_once() {
    if !have("iscsi-ls") {
        return;
    }
    let ds = Datastore::new();
    let luns = |i: usize| -> Vec<u64> {
        if i.is_multiple_of(40) {
            (0..=255).collect()
        } else {
            (0..4).collect()
        }
    };
    let t0 = Instant::now();
    populate(&ds, 200, luns, 1 << 20);
    eprintln!("made 200 targets, 2060 LUNs in {:?}", t0.elapsed());
    let t0 = Instant::now();
    assert_eq!(ds.json(&["target", "list"]).as_array().unwrap().len(), 200);
    eprintln!("vitctl target list: {:?}", t0.elapsed());
    let t0 = Instant::now();
    ds.vitctl(&["config", "validate"]);
    eprintln!("vitctl config validate: {:?}", t0.elapsed());
    let t0 = Instant::now();
    let vitd = ds.start();
    eprintln!(
        "vitd listening after {:?}, VmRSS {} KiB",
        t0.elapsed(),
        rss_kib(&vitd)
    );

    let t0 = Instant::now();
    let (ok, text) = client_within(20, "iscsi-ls", &["-s", &ds.portal()]);
    assert!(ok, "{text}");
    eprintln!("iscsi-ls -s: {:?}", t0.elapsed());
    let mut found = listed(&text);
    found.sort();
    let mut want: Vec<(String, usize)> = (0..200)
        .map(|i| (iqn(&format!("t{i}")), luns(i).len()))
        .collect();
    want.sort();
    assert_eq!(found, want);

    // The storm, with discovery asked all along.
    let t0 = Instant::now();
    let port = ds.port;
    let logins: Vec<_> = (0..100u8)
        .map(|i| {
            std::thread::spawn(move || {
                let target = iqn(&format!("t{}", 2 * usize::from(i)));
                let mut s = vit::iscsi::initiator::try_login(
                    port,
                    INITIATOR,
                    &target,
                    [0x80, 0, 0, 0, 1, i],
                )
                .map_err(|e| format!("{target}: {e}"))?;
                // The first command meets the power-on unit attention.
                let mut r = s
                    .command(0, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8)
                    .map_err(|e| format!("{target}: {e}"))?;
                if r.status == 2 && r.sense.get(2) == Some(&6) {
                    r = s
                        .command(0, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8)
                        .map_err(|e| format!("{target}: {e}"))?;
                }
                if r.status != 0 {
                    return Err(format!("{target}: READ CAPACITY {r:?}"));
                }
                Ok((t0.elapsed(), s))
            })
        })
        .collect();
    let mut discoveries = 0;
    loop {
        let (ok, text) = client_within(20, "iscsi-ls", &[&ds.portal()]);
        assert!(ok, "discovery during the storm: {text}");
        assert_eq!(
            text.lines().filter(|l| l.starts_with("Target:")).count(),
            200
        );
        discoveries += 1;
        if logins.iter().all(|h| h.is_finished()) {
            break;
        }
    }
    let mut slowest = std::time::Duration::ZERO;
    let mut sessions = Vec::new();
    for h in logins {
        let (took, s) = h
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}: {}", vitd.log_text()));
        slowest = slowest.max(took);
        sessions.push(s);
    }
    eprintln!(
        "100 logins at once: the last in after {slowest:?}; {discoveries} discoveries meanwhile; \
         VmRSS {} KiB with 100 sessions",
        rss_kib(&vitd)
    );
}

fn session(port: u16, alias: &str) -> vit::iscsi::initiator::Session {
    vit::iscsi::initiator::login(port, INITIATOR, &iqn(alias), [0x80, 0, 0, 0, 2, 1])
}

/// A command, sent again once when it meets the LUN's power-on unit attention.
fn command(
    s: &mut vit::iscsi::initiator::Session,
    lun: u8,
    cdb: &[u8],
    out: &[u8],
    read: u32,
) -> vit::iscsi::initiator::CommandResult {
    let r = s.command(lun, cdb, out, read).unwrap();
    if r.status == 2 && r.sense.get(2) == Some(&6) {
        return s.command(lun, cdb, out, read).unwrap();
    }
    r
}

/// 256 LUNs, 0..=255: REPORT LUNS with a short allocation length returns that much of the list
/// and the full LUN LIST LENGTH; the whole list names every LUN; LUN 255 answers INQUIRY and
/// READ CAPACITY (16) through libiscsi's tools.
#[test]
fn report_luns_of_256_luns_and_the_last_lun() {
    let ds = Datastore::new();
    populate(&ds, 1, |_| (0..=255).collect(), 1 << 20);
    let vitd = ds.start();
    let mut s = session(ds.port, "t0");
    let report = |s: &mut vit::iscsi::initiator::Session, alloc: u32| {
        let mut cdb = [0u8; 12];
        cdb[0] = 0xa0;
        cdb[6..10].copy_from_slice(&alloc.to_be_bytes());
        let r = command(s, 0, &cdb, &[], alloc);
        assert_eq!(r.status, 0, "{r:?}");
        r.data_in
    };
    for alloc in [16, 100, 2048] {
        let data = report(&mut s, alloc);
        assert_eq!(data.len(), alloc as usize, "allocation length {alloc}");
        assert_eq!(&data[..4], &(256u32 * 8).to_be_bytes(), "LUN LIST LENGTH");
    }
    let data = report(&mut s, 8 + 256 * 8);
    let ids: Vec<u16> = data[8..]
        .chunks(8)
        .map(|c| u16::from_be_bytes([c[0] & 0x3f, c[1]]))
        .collect();
    assert_eq!(ids, (0..=255).collect::<Vec<u16>>());
    if have("iscsi-inq") && have("iscsi-readcapacity16") {
        let (ok, text) = client_within(20, "iscsi-inq", &[&ds.url("t0", 255)]);
        assert!(ok, "{text}: {}", vitd.log_text());
        assert!(text.contains("DIRECT_ACCESS"), "{text}");
        let (ok, text) = client_within(20, "iscsi-readcapacity16", &[&ds.url("t0", 255)]);
        assert!(ok, "{text}");
        assert!(text.contains("Total size:1048576"), "{text}");
    }
}

/// vitd with RLIMIT_NOFILE `limit` (soft and hard: it cannot raise it).
fn vitd_with_nofile(ds: &Datastore, limit: u64, extra: &[&str]) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_vitd"));
    cmd.arg("--datastore").arg(ds.root()).args(extra);
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// One data thread whose registered-file table (a quarter of an open-files limit of 256: 64)
/// is smaller than the 150 extents its sessions use: every LUN reads back what was written to
/// it, those past the table through their descriptors.
#[test]
fn luns_past_the_registered_file_table_serve_the_right_data() {
    let ds = Datastore::new();
    populate(&ds, 2, |_| (0..75).collect(), 1 << 20);
    let vitd = Vitd::spawn(vitd_with_nofile(&ds, 256, &["--cores", "1"]), ds.port);
    let mut sessions = [session(ds.port, "t0"), session(ds.port, "t1")];
    let block = |t: usize, lun: u8| vec![(t * 100 + usize::from(lun)) as u8 ^ 0x5a; 4096];
    for (t, s) in sessions.iter_mut().enumerate() {
        for lun in 0..75u8 {
            let r = command(s, lun, &cdb16(0x8a, 7, 8), &block(t, lun), 0);
            assert_eq!(
                r.status,
                0,
                "write t{t} LUN {lun}: {r:?} {}",
                vitd.log_text()
            );
        }
    }
    for (t, s) in sessions.iter_mut().enumerate() {
        for lun in 0..75u8 {
            let r = command(s, lun, &cdb16(0x88, 7, 8), &[], 4096);
            assert_eq!(r.status, 0, "read t{t} LUN {lun}: {r:?}");
            assert!(r.data_in == block(t, lun), "t{t} LUN {lun} read other data");
        }
    }
}

/// Runs `cmd` (a vitd that must stop by itself) to its end within 20 s: (exit status, log).
fn run_to_end(mut cmd: std::process::Command) -> (std::process::ExitStatus, String) {
    let logdir = tempfile::tempdir().unwrap();
    let log = logdir.path().join("vitd.log");
    let mut child = cmd
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "vitd did not stop: {}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    (status, std::fs::read_to_string(&log).unwrap())
}

/// More extent files than the open-files limit allows: vitd stops at once, saying the limit ran
/// out and what to raise; it does not call LUNs broken (offline "until repaired") for it.
#[test]
fn extents_beyond_the_open_files_limit_stop_vitd_naming_the_limit() {
    let ds = Datastore::new();
    populate(&ds, 2, |_| (0..100).collect(), 1 << 20);
    let (status, log) = run_to_end(vitd_with_nofile(&ds, 128, &["--cores", "1"]));
    assert!(!status.success(), "{log}");
    assert!(
        !log.contains("offline (NOT READY"),
        "LUNs called broken for want of descriptors: {log}"
    );
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.contains("open-files limit (128)") && last.contains("LimitNOFILE"),
        "{log}"
    );
}

/// Extents that fit within the limit but leave few descriptors for connections: vitd serves,
/// and says at start how many connections the limit leaves room for.
#[test]
fn an_open_files_limit_leaving_few_connections_is_reported() {
    let ds = Datastore::new();
    populate(&ds, 2, |_| (0..50).collect(), 1 << 20);
    let vitd = Vitd::spawn(vitd_with_nofile(&ds, 128, &["--cores", "1"]), ds.port);
    let mut s = session(ds.port, "t1");
    let r = command(&mut s, 49, &cdb16(0x88, 0, 1), &[], 512);
    assert_eq!(r.status, 0, "{r:?}");
    let log = vitd.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("open-files limit (128)")),
        "{log}"
    );
}

/// ctl.conf's LUN ids run to 1023 (ctld: below MAX_LUNS, 1024): a target with LUNs 0, 256 and
/// 1023 in vit.conf loads, REPORT LUNS names the high ones in flat space addressing, libiscsi's
/// tools reach LUN 1023 by that number (16384 + 1023), and vitctl lists them but adds no LUN
/// above 255 (vSAN's range).
#[test]
fn lun_ids_up_to_ctl_confs_largest_are_served() {
    let ds = Datastore::new();
    populate(&ds, 1, |_| vec![0, 256, 1023], 1 << 20);
    ds.vitctl(&["config", "validate"]);
    let vitd = ds.start();
    let mut s = session(ds.port, "t0");
    let r = command(
        &mut s,
        0,
        &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
        &[],
        256,
    );
    assert_eq!(r.status, 0, "{r:?}");
    assert_eq!(&r.data_in[..4], &24u32.to_be_bytes());
    let luns: Vec<&[u8]> = r.data_in[8..32].chunks(8).collect();
    assert_eq!(luns[1], &[0x41, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(luns[2], &[0x43, 0xff, 0, 0, 0, 0, 0, 0]);
    if have("iscsi-ls") && have("iscsi-inq") && have("iscsi-readcapacity16") {
        let (ok, text) = client_within(20, "iscsi-ls", &["-s", &ds.portal()]);
        assert!(ok, "{text}");
        assert_eq!(listed(&text), [(iqn("t0"), 3)], "{text}");
        let url = ds.url("t0", 16384 + 1023);
        let (ok, text) = client_within(20, "iscsi-inq", &[&url]);
        assert!(
            ok && text.contains("DIRECT_ACCESS"),
            "{text}: {}",
            vitd.log_text()
        );
        let (ok, text) = client_within(20, "iscsi-readcapacity16", &[&url]);
        assert!(ok && text.contains("Total size:1048576"), "{text}");
    }
    // vitctl lists them, but adds none above vSAN's 255 (its management's range).
    let listed_ids: Vec<u64> = ds
        .json(&["target", "lun", "list", "--target", "t0"])
        .as_array()
        .expect("lun list is an array")
        .iter()
        .filter_map(|l| l["id"].as_u64())
        .collect();
    assert_eq!(listed_ids, [0, 256, 1023]);
    let out = ds.vitctl_out(&[
        "target", "lun", "add", "--target", "t0", "--id", "256", "--size", "1M",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("0..=255"),
        "{out:?}"
    );
}
