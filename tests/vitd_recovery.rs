//! Recovery of a real initiator when vitd restarts (an upgrade: SIGTERM, or a crash: SIGKILL)
//! or its connections are cut, under a write+verify load: fio's libiscsi engine reconnects and
//! re-issues what it had outstanding (ErrorRecoveryLevel 0), and every block it wrote verifies.
//! And a hard kill loses no acknowledged write.
//!
//! libiscsi (1.19) on each event: vitd's SIGTERM sends an Async Message asking for a logout;
//! libiscsi logs out at once (vitd ends the session's tasks, answers the logout once their I/O
//! is done), reconnects and re-issues the commands it had not seen answered. A SIGKILL or a cut
//! connection is a socket error, then the same reconnect. Each reconnect is a new session (a new
//! random ISID, so a new I_T nexus), and vitd reports POWER ON, RESET, OR BUS DEVICE RESET
//! OCCURRED (29/00) once to a new nexus; libiscsi consumes that unit attention with TEST UNIT
//! READY at the first login only, and on a reconnect passes it to the application unless it
//! asked otherwise (`iscsi_set_no_ua_on_reconnect`), which fio's engine neither does nor retries.
//! So one re-issued write per reconnect fails in fio with that unit attention (EPERM); fio is
//! told to go on (`ignore_error`) and leaves that block, which vitd did not write, out of its
//! verify. `assert_recovered` holds each run to exactly that.

mod common;
use common::*;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Blocks of 4 KiB fio writes, each once, at 400 a second (about 8 s), QD 16.
const FIO_WRITES: u64 = 3072;

/// Starts fio's write+verify workload on `url` in the background; its output goes to `out`.
fn spawn_workload(fio: &Path, url: &str, out: &Path) -> Child {
    let file = std::fs::File::create(out).unwrap();
    Command::new("timeout")
        .arg("40")
        .arg(fio)
        .args([
            "--name=vit-recovery",
            "--ioengine=libiscsi",
            &format!("--filename={}", url.replace(':', "\\:")),
            &format!("--size={}", FIO_WRITES * 4096),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            "--rate_iops=,400",
            "--randrepeat=1",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--verify_state_save=0",
            // A write answered CHECK CONDITION (the unit attention after a reconnect) is EPERM
            // to fio: go on past it; it is then not verified (assert_recovered counts them).
            "--continue_on_error=write",
            "--ignore_error=,EPERM",
        ])
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap()
}

/// Waits (bounded) for fio to end; its exit status and output.
fn finish(mut fio: Child, out: &Path) -> (ExitStatus, String) {
    let deadline = Instant::now() + Duration::from_secs(45);
    let status = loop {
        if let Some(s) = fio.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = fio.kill();
            panic!("fio did not end: {}", std::fs::read_to_string(out).unwrap());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (status, std::fs::read_to_string(out).unwrap())
}

/// The numbers after `key` in fio's line holding it (`issued rwts: total=R,W,...`).
fn fio_numbers(out: &str, key: &str) -> Vec<u64> {
    out.lines()
        .find_map(|l| l.split_once(key))
        .map(|(_, rest)| {
            rest.split(|c: char| !c.is_ascii_digit())
                .take_while(|s| !s.is_empty())
                .map(|s| s.parse().unwrap())
                .collect()
        })
        .unwrap_or_default()
}

/// fio ended well after `reconnects` reconnects: every write issued, no verify failure, its
/// only errors the unit attention of a new nexus, at most one a reconnect, and every other
/// block read back and verified.
fn assert_recovered(status: ExitStatus, out: &str, reconnects: usize, log: &str) {
    let ctx = || format!("fio:\n{out}\nvitd:\n{log}");
    assert!(status.success(), "fio failed: {status}\n{}", ctx());
    for bad in ["verify failed", "bad magic", "bad header", "crc32c: wanted"] {
        assert!(!out.contains(bad), "{bad}\n{}", ctx());
    }
    let failed: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("request failed"))
        .collect();
    for l in &failed {
        assert!(
            l.contains("UNIT_ATTENTION(6) ASCQ:BUS_RESET(0x2900)"),
            "an I/O error other than the new nexus's unit attention: {l}\n{}",
            ctx()
        );
    }
    let errors = fio_numbers(out, "errors    : total=")
        .first()
        .copied()
        .unwrap_or(0);
    assert_eq!(errors, failed.len() as u64, "{}", ctx());
    assert!(
        failed.len() <= reconnects,
        "{} failed writes for {reconnects} reconnects\n{}",
        failed.len(),
        ctx()
    );
    let issued = fio_numbers(out, "issued rwts: total=");
    assert_eq!(issued.get(1), Some(&FIO_WRITES), "{}", ctx());
    assert_eq!(
        issued.first(),
        Some(&(FIO_WRITES - errors)),
        "not every written block was read back\n{}",
        ctx()
    );
}

fn logins(log: &str) -> usize {
    log.matches("session logged in").count()
}

/// A LUN of 64 MiB on target `alias`, served; fio's workload started on it.
fn loaded(alias: &str) -> Option<(Datastore, Vitd, Child, tempfile::TempDir)> {
    let fio = fio()?;
    let ds = Datastore::new();
    ds.target(alias, &[]);
    ds.lun(alias, 0, "64M");
    let vitd = ds.start();
    let dir = tempfile::tempdir().unwrap();
    let child = spawn_workload(&fio, &ds.url(alias, 0), &dir.path().join("fio.out"));
    Some((ds, vitd, child, dir))
}

/// vitd stopped with `sig` while fio writes, started again on the same datastore and port.
fn restart_under_load(sig: libc::c_int) {
    let Some((ds, mut vitd, fio, dir)) = loaded("restart") else {
        return;
    };
    // fio logs in, then writes a while before the signal (a slow start is waited for).
    wait_until(30, || logins(&vitd.log_text()) >= 1);
    std::thread::sleep(Duration::from_millis(1500));
    let mut child = vitd.child.take().unwrap();
    assert!(
        logins(&vitd.log_text()) == 1,
        "fio not logged in: {}",
        vitd.log_text()
    );
    signal(&child, sig);
    let status = child.wait().unwrap();
    assert!(
        sig == libc::SIGKILL || status.success(),
        "vitd on SIGTERM: {status}: {}",
        vitd.log_text()
    );
    let first_log = vitd.log_text();
    assert!(
        fio_still_running(&fio),
        "fio ended before the restart: {}",
        std::fs::read_to_string(dir.path().join("fio.out")).unwrap()
    );
    let vitd = ds.start();
    let (status, out) = finish(fio, &dir.path().join("fio.out"));
    let log = format!("{first_log}--- restarted ---\n{}", vitd.log_text());
    assert!(
        logins(&vitd.log_text()) >= 1,
        "fio did not come back\n{log}"
    );
    assert_recovered(status, &out, logins(&vitd.log_text()), &log);
}

fn fio_still_running(fio: &Child) -> bool {
    // Not reaped yet: a zombie once it has ended.
    std::fs::read_to_string(format!("/proc/{}/stat", fio.id())).is_ok_and(|s| !s.contains(") Z "))
}

#[test]
fn fio_rides_through_a_sigterm_restart_and_verifies() {
    restart_under_load(libc::SIGTERM);
}

#[test]
fn fio_rides_through_a_sigkill_restart_and_verifies() {
    restart_under_load(libc::SIGKILL);
}

/// Whether `ss -K` can end a socket here (the kernel needs CONFIG_INET_DIAG_DESTROY).
fn ss_kill_works() -> bool {
    if !have("ss") {
        return false;
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _server_side = l.accept().unwrap();
    c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    cut_connections(port);
    let works = peer_closed(&mut c);
    if !works {
        eprintln!("note: ss -K does not end sockets here (CONFIG_INET_DIAG_DESTROY); skipped");
    }
    works
}

/// Ends every connection to 127.0.0.1:`port` (the initiator's side; the target sees a reset).
fn cut_connections(port: u16) {
    let _ = Command::new("ss")
        .args(["-K", "dst", "127.0.0.1", "dport", "=", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The connection cut under the load three times, vitd running on: fio reconnects each time
/// and verifies; vitd ends each cut session and is back to its descriptors and threads after.
#[test]
fn fio_rides_through_cut_connections_and_vitd_keeps_no_session() {
    if fio().is_none() || !ss_kill_works() {
        return;
    }
    let ds = Datastore::new();
    ds.target("cut", &[]);
    ds.lun("cut", 0, "64M");
    let vitd = ds.start();
    let pid = vitd.child.as_ref().unwrap().id();
    // Vitd::start's probe connection may still be open on the control thread; let it go.
    let before = settled_resources(pid);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fio.out");
    let fio = spawn_workload(&fio().unwrap(), &ds.url("cut", 0), &out);
    for cut in 1..=3 {
        // Each cut ends a session fio has (re)established: the one before it came back.
        let deadline = Instant::now() + Duration::from_secs(30);
        while logins(&vitd.log_text()) < cut {
            assert!(
                Instant::now() < deadline,
                "no login before cut {cut}\n{}",
                vitd.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(1500));
        assert!(fio_still_running(&fio), "fio ended before cut {cut}");
        cut_connections(ds.port);
    }
    let (status, text) = finish(fio, &out);
    let log = vitd.log_text();
    assert!(
        logins(&log) >= 4,
        "fio did not log in again after the cuts\n{log}"
    );
    assert_recovered(status, &text, logins(&log) - 1, &log);
    // Every session vitd had has ended (three reset, the last logged out), nothing kept.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = vitd.log_text();
        let closed = log.matches("session ended: ").count();
        let now = resources(pid);
        if closed == logins(&log) && now == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{closed} sessions closed of {}; (threads, fds) {now:?}, before {before:?}\n{log}",
            logins(&log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The content of one 4 KiB write: `writer`, its sequence number, each word's place.
fn pattern(writer: u64, seq: u64) -> Vec<u8> {
    (0..512u64)
        .flat_map(|w| ((writer << 48) | (seq << 16) | w).to_le_bytes())
        .collect()
}

/// vitd killed (SIGKILL) while four sessions write (QD 1 each, every block once, O_DIRECT
/// extents, the default write-through cache): after a restart every acknowledged write reads
/// back, and the one each session had in flight is there whole or not at all.
#[test]
fn a_hard_kill_loses_no_acknowledged_write() {
    let (ds, mut vitd) = serve_one("kill", "64M");
    let port = ds.port;
    const WRITERS: u64 = 4;
    const SPAN: u64 = 32768; // 512-byte blocks per writer: 16 MiB
    let progress: Arc<Vec<AtomicU64>> = Arc::new((0..WRITERS).map(|_| AtomicU64::new(0)).collect());
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let progress = progress.clone();
            std::thread::spawn(move || {
                let mut s = vit::iscsi::initiator::login(
                    port,
                    &format!("iqn.2026-11.io.vit:writer{w}"),
                    &iqn("kill"),
                    [0x80, 0, 0, 0, 0, w as u8],
                );
                // Clear the new nexus's unit attention.
                let _ = s.command(0, &[0; 6], &[], 0);
                let mut acked = 0u64;
                loop {
                    let lba = w * SPAN + acked * 8;
                    if acked * 8 >= SPAN {
                        return (acked, None);
                    }
                    let data = pattern(w, acked);
                    match s.command(0, &cdb16(0x8a, lba, 8), &data, 0) {
                        Ok(r) if r.status == 0 => {
                            acked += 1;
                            progress[w as usize].store(acked, Ordering::Relaxed);
                        }
                        Ok(r) => panic!("writer {w}: status {:#x} {:?}", r.status, r.sense),
                        Err(_) => return (acked, Some(acked)),
                    }
                }
            })
        })
        .collect();
    // Killed once every writer has had writes acknowledged.
    let deadline = Instant::now() + Duration::from_secs(15);
    while progress.iter().any(|p| p.load(Ordering::Relaxed) < 64) {
        assert!(Instant::now() < deadline, "the writers did not get going");
        std::thread::sleep(Duration::from_millis(20));
    }
    let child = vitd.child.as_mut().unwrap();
    signal(child, libc::SIGKILL);
    child.wait().unwrap();
    let results: Vec<(u64, Option<u64>)> = writers.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        results.iter().all(|r| r.1.is_some()),
        "a writer finished before the kill: {results:?}"
    );
    let vitd = ds.start();
    let mut s = vit::iscsi::initiator::login(
        port,
        "iqn.2026-11.io.vit:check",
        &iqn("kill"),
        [0x80, 0, 0, 0, 1, 0],
    );
    let _ = s.command(0, &[0; 6], &[], 0);
    for (w, (acked, in_flight)) in (0..WRITERS).zip(results) {
        assert!(acked > 0, "writer {w} had nothing acknowledged");
        for seq in 0..acked + 1 {
            let lba = w * SPAN + seq * 8;
            let r = s.command(0, &cdb16(0x88, lba, 8), &[], 4096).unwrap();
            assert_eq!(r.status, 0, "{:?}\n{}", r.sense, vitd.log_text());
            if seq < acked {
                assert!(
                    r.data_in == pattern(w, seq),
                    "writer {w}: acknowledged write {seq} (LBA {lba}) lost"
                );
            } else if Some(seq) == in_flight {
                assert!(
                    r.data_in == pattern(w, seq) || r.data_in == vec![0; 4096],
                    "writer {w}: the write in flight at the kill (LBA {lba}) is torn"
                );
            }
        }
    }
}
