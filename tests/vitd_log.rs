//! What vitd writes to its log, read from an operator's seat: the start (version, what is
//! served, where, with what limits), one line per session at its login and one at its end
//! saying why, none per command, failed logins naming who, from where, to what and why, the
//! stop; and never a CHAP secret or response, whatever the level.

mod common;
use common::*;
use std::time::Duration;
use vit::iscsi::initiator::login;

const RC16: &str = "iscsi-readcapacity16";

/// The lines of `log` holding every one of `parts`.
fn lines_with<'a>(log: &'a str, parts: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .collect()
}

/// Waits (up to 20 s) for a line holding every one of `parts`.
fn wait_for_line(vitd: &Vitd, parts: &[&str]) -> bool {
    wait_until(20, || !lines_with(&vitd.log_text(), parts).is_empty())
}

/// The longest run of hexadecimal digits in `s` (a CHAP challenge or response is 32 or more).
fn longest_hex_run(s: &str) -> usize {
    let (mut best, mut run) = (0, 0);
    for c in s.chars() {
        run = if c.is_ascii_hexdigit() { run + 1 } else { 0 };
        best = best.max(run);
    }
    best
}

/// CHAP and mutual CHAP logins, good and bad, with vitd at RUST_LOG=trace: no secret, and no
/// CHAP challenge or response (material for an offline attack on the secret), reaches the log
/// at any level; the failures are logged naming the initiator, its address, the target and
/// the reason, a mutual secret the initiator refuses included (the initiator just closes the
/// connection: vitd said nothing of it before).
#[test]
fn chap_logins_log_who_and_why_but_never_a_secret_even_at_trace() {
    if !have(RC16) {
        return;
    }
    let ds = Datastore::new();
    ds.chap_targets();
    let mut cmd = Vitd::command(ds.root(), &[]);
    cmd.env("RUST_LOG", "trace");
    let mut vitd = Vitd::spawn(cmd, ds.port);
    let url = |user: &str, secret: &str, alias: &str, extra: &str| {
        format!(
            "iscsi://{user}%{secret}@127.0.0.1:{}/{}/0{extra}",
            ds.port,
            iqn(alias)
        )
    };
    let mutual = |expect: &str| format!("?target_user=tgt&target_password={expect}");
    let runs = [
        (url("alice", "alicesecret12", "c", ""), true),
        (url("alice", "wrongsecret1", "c", ""), false),
        (
            url("bob", "bobsecret1234", "m", &mutual("tgtsecret1234")),
            true,
        ),
        (
            url("bob", "bobsecret1234", "m", &mutual("notthesecret")),
            false,
        ),
    ];
    for (u, good) in &runs {
        let (ok, out) = client(RC16, &[u]);
        assert_eq!(ok, *good, "{u}: {out}");
    }
    assert!(
        wait_for_line(&vitd, &["mutual CHAP", &iqn("m")]),
        "the refused mutual CHAP response is logged: {}",
        vitd.log_text()
    );
    assert!(vitd.stop().success());
    let log = vitd.log_text();
    // The level took: debug lines are there.
    assert!(log.contains("DEBUG"), "{log}");
    for secret in [
        "alicesecret12",
        "wrongsecret1",
        "bobsecret1234",
        "tgtsecret1234",
        "notthesecret",
    ] {
        assert!(!log.contains(secret), "{secret} in the log: {log}");
    }
    for key in ["CHAP_R=", "CHAP_C=", "CHAP_I="] {
        assert!(!log.contains(key), "{key} in the log: {log}");
    }
    assert!(
        longest_hex_run(&log) < 32,
        "a CHAP challenge or response in the log: {log}"
    );
    // Who, from where, to what, why.
    let refused = lines_with(
        &log,
        &[
            "WARN",
            "refused",
            "libiscsi",
            "from 127.0.0.1:",
            &iqn("c"),
            "authentication failure",
            "alice",
        ],
    );
    assert_eq!(refused.len(), 1, "{log}");
    let abandoned = lines_with(&log, &["WARN", "libiscsi", "from 127.0.0.1:", &iqn("m")]);
    assert!(
        abandoned.len() == 1 && abandoned[0].contains("mutual CHAP user and secret"),
        "{log}"
    );
}

/// At info a session is one line at its login and one at its end, saying why it ended (logged
/// out, closed by the initiator, reinstated by a new login) and naming its initiator, target
/// and address, at INFO (those are how sessions end); the commands between add nothing. The start says the version, what is served,
/// where and with what limits; the stop says why and that it is done.
#[test]
fn sessions_log_their_login_and_why_they_ended_never_their_commands() {
    let (ds, mut vitd) = serve_one("s", "8M");
    let initiator = "iqn.2026-11.io.vit:log-initiator";
    let isid = [0x80, 0, 0, 0, 0x10, 0x01];
    let mut s = login(ds.port, initiator, &iqn("s"), isid);
    let addr = s.stream.local_addr().unwrap().to_string();
    s.test_unit_ready().unwrap();
    let before = vitd.log_text().lines().count();
    for _ in 0..300 {
        s.test_unit_ready().unwrap();
        s.command(0, &cdb16(0x88, 0, 8), &[], 4096).unwrap();
    }
    let log = vitd.log_text();
    assert_eq!(log.lines().count(), before, "lines per command: {log}");
    let logged_in = lines_with(
        &log,
        &["INFO", "session logged in", initiator, &iqn("s"), &addr],
    );
    assert_eq!(logged_in.len(), 1, "{log}");
    // Reinstated: the same initiator and ISID log in again.
    let mut again = login(ds.port, initiator, &iqn("s"), isid);
    let again_addr = again.stream.local_addr().unwrap().to_string();
    again.test_unit_ready().unwrap();
    assert!(
        wait_for_line(
            &vitd,
            &[
                "INFO",
                "session ended: reinstated by a new login",
                initiator,
                &addr
            ]
        ),
        "{}",
        vitd.log_text()
    );
    // Closed by the initiator, without a logout.
    drop(again);
    assert!(
        wait_for_line(
            &vitd,
            &[
                "INFO",
                "session ended: connection closed by the initiator",
                &again_addr
            ]
        ),
        "{}",
        vitd.log_text()
    );
    // Logged out.
    if have(RC16) {
        let (ok, out) = client(RC16, &[&ds.url("s", 0)]);
        assert!(ok, "{out}");
        assert!(
            wait_for_line(
                &vitd,
                &["INFO", "session ended: logged out", "libiscsi", &iqn("s")]
            ),
            "{}",
            vitd.log_text()
        );
    }
    assert!(vitd.stop().success());
    let log = vitd.log_text();
    let port = format!("listening on 127.0.0.1:{}", ds.port);
    let version = format!("vitd {} starting", env!("CARGO_PKG_VERSION"));
    for start in [
        version.as_str(),
        "1 target, 1 LUN, 1 portal group",
        &port,
        "2 data threads ready",
        "--max-sessions",
        "SIGTERM received: stopping",
    ] {
        assert!(log.contains(start), "{start}: {log}");
    }
    assert!(log.trim_end().ends_with("stopped"), "{log}");
}

/// A session that ends because something went wrong is logged at WARN, so that an operator who
/// filters for warnings sees the initiators that misbehaved and not every logout: here a PDU
/// longer than vitd takes (a protocol error) and a connection reset by the peer. They were
/// logged at INFO, as a logout is.
#[test]
fn sessions_that_end_in_a_fault_are_logged_at_warn() {
    use std::io::Write;
    let (ds, mut vitd) = serve_one("w", "8M");
    let initiator = "iqn.2026-11.io.vit:log-faults";
    let mut s = login(ds.port, initiator, &iqn("w"), [0x80, 0, 0, 0, 0x20, 0x01]);
    let addr = s.stream.local_addr().unwrap().to_string();
    s.test_unit_ready().unwrap();
    // An immediate NOP-Out whose DataSegmentLength (16 MiB - 1) is past any
    // MaxRecvDataSegmentLength: fatal to the connection.
    let mut bhs = [0u8; 48];
    bhs[0] = 0x40;
    bhs[1] = 0x80;
    bhs[5..8].copy_from_slice(&[0xff; 3]);
    bhs[16..20].copy_from_slice(&[0xff; 4]);
    s.stream.write_all(&bhs).unwrap();
    assert!(
        wait_for_line(
            &vitd,
            &["WARN", "session ended: protocol error", initiator, &addr]
        ),
        "{}",
        vitd.log_text()
    );
    // Reset: SO_LINGER 0, then close, sends an RST instead of a FIN.
    let r = login(ds.port, initiator, &iqn("w"), [0x80, 0, 0, 0, 0x20, 0x02]);
    // Reset at once, most often before the data thread has taken the connection, where the
    // socket no longer says its peer: the line names it all the same.
    let reset_addr = r.stream.local_addr().unwrap().to_string();
    socket2::SockRef::from(&r.stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(r);
    assert!(
        wait_for_line(
            &vitd,
            &[
                "WARN",
                "session ended: ",
                "reset by peer",
                initiator,
                &reset_addr
            ]
        ),
        "{}",
        vitd.log_text()
    );
    assert!(vitd.stop().success());
    let log = vitd.log_text();
    let ended = lines_with(&log, &["session ended"]);
    assert_eq!(ended.len(), 2, "{log}");
    assert!(
        lines_with(&log, &["INFO", "session ended"]).is_empty(),
        "{log}"
    );
}

/// An initiator that half-closes with answers still to come and then closes its socket (here
/// with a reset, so that the end comes while they go out) ended its session as initiators do:
/// the end is logged at INFO as its close, as it was when vitd ended a connection at the
/// half-close, not at WARN as a failed send.
#[test]
fn a_close_after_a_half_close_is_logged_as_the_initiators_close() {
    let (ds, vitd) = serve_one("h", "8M");
    let initiator = "iqn.2026-11.io.vit:log-half-close";
    let mut s = login(ds.port, initiator, &iqn("h"), [0x80, 0, 0, 0, 0x40, 0x01]);
    let addr = s.stream.local_addr().unwrap().to_string();
    s.test_unit_ready().unwrap();
    // Eight reads of 1 MiB: more than the sockets' buffers take.
    let mut wire = Vec::new();
    for k in 0..8u32 {
        let mut bhs = [0u8; 48];
        vit::iscsi::pdu::ScsiCommand {
            final_bit: true,
            read: true,
            attr: 1,
            itt: 100 + k,
            expected_data_length: 1 << 20,
            cmd_sn: s.cmd_sn.wrapping_add(k),
            exp_stat_sn: s.exp_stat_sn,
            cdb: cdb16(0x88, 0, 2048).try_into().unwrap(),
            ..Default::default()
        }
        .encode(&mut bhs);
        wire.extend_from_slice(&bhs);
    }
    s.raw(&wire).unwrap();
    s.stream.shutdown(std::net::Shutdown::Write).unwrap();
    // The answers are coming.
    vit::iscsi::initiator::read_pdu(&mut s.stream).unwrap();
    socket2::SockRef::from(&s.stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
    assert!(
        wait_for_line(
            &vitd,
            &[
                "INFO",
                "session ended: connection closed by the initiator",
                &addr
            ]
        ),
        "{}",
        vitd.log_text()
    );
    let log = vitd.log_text();
    assert!(lines_with(&log, &["WARN", &addr]).is_empty(), "{log}");
}

/// The stop line counts the sessions it asks to log out, in words that agree: one session held
/// open across SIGTERM is "1 session" (it read "1 sessions"); one that ended before is not
/// counted.
#[test]
fn the_stop_line_counts_the_sessions_asked_to_log_out() {
    let (ds, mut vitd) = serve_one("q", "8M");
    let initiator = "iqn.2026-11.io.vit:log-stop";
    let mut held = login(ds.port, initiator, &iqn("q"), [0x80, 0, 0, 0, 0x30, 0x01]);
    held.test_unit_ready().unwrap();
    let mut gone = login(ds.port, initiator, &iqn("q"), [0x80, 0, 0, 0, 0x30, 0x02]);
    gone.test_unit_ready().unwrap();
    let gone_addr = gone.stream.local_addr().unwrap().to_string();
    drop(gone);
    assert!(
        wait_for_line(&vitd, &["session ended", &gone_addr]),
        "{}",
        vitd.log_text()
    );
    // Its data thread reports the end to the control thread just after that line (a second
    // leaves room on a loaded machine).
    std::thread::sleep(Duration::from_millis(1000));
    assert!(vitd.stop().success());
    let log = vitd.log_text();
    let stop = lines_with(&log, &["SIGTERM received: stopping"]);
    assert!(
        stop.len() == 1 && stop[0].ends_with("stopping; 1 session asked to log out"),
        "{log}"
    );
}

/// Connections that never make a session, opened as fast as four peers can (junk from the first
/// byte, a login text without `=`, an unknown target, no CHAP to a CHAP target, a header
/// announcing 16 MiB of data, a SCSI command before any login, nothing at all), cost the log at
/// most its budget for failures: `LINES_PER_SECOND` a second and one line a second counting
/// those left out, however many connections come.
#[test]
fn garbage_connections_at_a_high_rate_stay_within_the_log_budget() {
    use rand::{Rng, SeedableRng};
    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;
    use vit::iscsi::initiator::login_bhs;
    use vit::iscsi::pdu::Stage;
    let ds = Datastore::new();
    ds.chap_targets();
    let vitd = ds.start();
    let port = ds.port;
    // The start lines are written by the time vitd listens; let them settle.
    std::thread::sleep(Duration::from_millis(300));
    let before = vitd.log_text().lines().count();
    let made = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let secs = 3;
    let peers: Vec<_> = (0..4u64)
        .map(|p| {
            let made = made.clone();
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(p);
                let mut k = 0usize;
                while t0.elapsed() < Duration::from_secs(secs) {
                    let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                        continue;
                    };
                    let login = |text: &str| {
                        let isid = [0x80, 0, 0, 0, 0x40, p as u8];
                        let stages = (Stage::Security, Stage::Operational);
                        let mut w = login_bhs(stages, isid, 0, text.len()).to_vec();
                        w.extend_from_slice(text.as_bytes());
                        w.resize(w.len().next_multiple_of(4), 0);
                        w
                    };
                    let wire = match k % 7 {
                        0 => {
                            let mut junk = vec![0u8; rng.random_range(48..600)];
                            rng.fill(&mut junk[..]);
                            junk
                        }
                        1 => login("InitiatorName\0"),
                        2 => login(
                            "InitiatorName=iqn.2026-11.io.vit:flood\0\
                             TargetName=iqn.2026-11.io.vit:nosuch\0AuthMethod=None\0",
                        ),
                        3 => login(&format!(
                            "InitiatorName=iqn.2026-11.io.vit:flood\0TargetName={}\0\
                             AuthMethod=None\0",
                            iqn("c")
                        )),
                        4 => {
                            let mut w = login("");
                            w[5..8].copy_from_slice(&[0xff; 3]);
                            w
                        }
                        5 => {
                            let mut w = vec![0u8; 48];
                            w[0] = 0x01;
                            w
                        }
                        _ => Vec::new(),
                    };
                    let _ = c.write_all(&wire);
                    if k.is_multiple_of(2) {
                        // Wait for vitd's answer or close (bounded), or drop at once.
                        let _ = c.shutdown(std::net::Shutdown::Write);
                        c.set_read_timeout(Some(Duration::from_millis(500)))
                            .unwrap();
                        let mut buf = [0u8; 512];
                        while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
                    }
                    made.fetch_add(1, Ordering::Relaxed);
                    k += 1;
                }
            })
        })
        .collect();
    for p in peers {
        p.join().unwrap();
    }
    // Lines of the flood still to come (a budget's count of those left out is told at the next
    // second) have come by then.
    std::thread::sleep(Duration::from_millis(2500));
    let elapsed = t0.elapsed().as_secs() + 1;
    let log = vitd.log_text();
    let lines = log.lines().count() - before;
    let made = made.load(Ordering::Relaxed);
    eprintln!("{made} connections in {secs} s: {lines} log lines");
    let budget = (vit::daemon::logbudget::LINES_PER_SECOND as usize + 1) * (elapsed as usize + 1);
    assert!(made > 4 * budget, "too few connections to tell: {made}");
    assert!(
        lines <= budget,
        "{lines} lines for {made} connections: {log}"
    );
    assert!(log.contains("similar log lines left out"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}
