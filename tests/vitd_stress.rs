//! Many sessions on both data threads at once, through the paths data threads share: flush
//! rounds of SYNCHRONIZE CACHE (with FUA writes through the page cache, `--buffered`), each
//! session's inbox of reservation and reset mail, LOGICAL UNIT RESET and ABORT TASK, and
//! connections dropped mid-command or replaced by a new login. Every command of a live session
//! must be answered once (or have been aborted, which the session is told), vitd must give back
//! its threads and descriptors, answer a fresh session at once, and stop on SIGTERM in time.
//! The seed is fixed; `VIT_STRESS_SEED=N` runs another.

mod common;
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashSet;
use std::io::Write;
use std::time::{Duration, Instant};
use vit::iscsi::initiator::{Session, frame, login, read_pdu};
use vit::iscsi::pdu::{BHS_LEN, ScsiCommand, TargetPdu, TaskMgmtRequest};

const SESSIONS: usize = 8;
const BS: usize = 512;

fn seed() -> u64 {
    let s = std::env::var("VIT_STRESS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_0001);
    eprintln!("VIT_STRESS_SEED={s}");
    s
}

/// One command of a batch: its ITT, CmdSN, and what it was (for messages).
struct Sent {
    itt: u32,
    cmd_sn: u32,
    what: &'static str,
}

fn command(s: &mut Session, cdb: [u8; 16], data: &[u8]) -> (Vec<u8>, u32, u32) {
    s.itt += 1;
    let cmd = ScsiCommand {
        final_bit: true,
        write: !data.is_empty(),
        attr: 1,
        itt: s.itt,
        expected_data_length: data.len() as u32,
        cmd_sn: s.cmd_sn,
        exp_stat_sn: s.exp_stat_sn,
        cdb,
        data_segment_length: data.len() as u32,
        ..Default::default()
    };
    let sn = s.cmd_sn;
    s.cmd_sn = s.cmd_sn.wrapping_add(1);
    let mut bhs = [0u8; BHS_LEN];
    cmd.encode(&mut bhs);
    (frame(&bhs, data, false), s.itt, sn)
}

fn tmf(s: &mut Session, function: u8, referenced: u32, ref_cmd_sn: u32) -> (Vec<u8>, u32) {
    s.itt += 1;
    let t = TaskMgmtRequest {
        immediate: true,
        function,
        itt: s.itt,
        referenced_task_tag: referenced,
        ref_cmd_sn,
        cmd_sn: s.cmd_sn,
        exp_stat_sn: s.exp_stat_sn,
        ..Default::default()
    };
    let mut bhs = [0u8; BHS_LEN];
    t.encode(&mut bhs);
    (frame(&bhs, &[], false), s.itt)
}

fn prout_cdb(sa: u8, rtype: u8) -> ([u8; 16], Vec<u8>) {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x5f;
    cdb[1] = sa;
    cdb[2] = rtype;
    cdb[8] = 24;
    (cdb, vec![0u8; 24])
}

/// A PERSISTENT RESERVE OUT of session `me` (key me + 1): REGISTER AND IGNORE EXISTING KEY,
/// RESERVE (Write Exclusive, Registrants Only), PREEMPT AND ABORT of session `other`, CLEAR.
fn prout(me: usize, other: usize, kind: u32) -> ([u8; 16], Vec<u8>, &'static str) {
    let key = (me as u64 + 1).to_be_bytes();
    let (sa, what) = match kind {
        0 => (6, "REGISTER"),
        1 => (1, "RESERVE"),
        2 => (5, "PREEMPT AND ABORT"),
        _ => (3, "CLEAR"),
    };
    let (cdb, mut p) = prout_cdb(sa, 5);
    if sa == 6 {
        p[8..16].copy_from_slice(&key);
    } else {
        p[..8].copy_from_slice(&key);
        p[8..16].copy_from_slice(&(other as u64 + 1).to_be_bytes());
    }
    (cdb, p, what)
}

/// A 16-byte CDB ([`cdb16`]), with FUA set when `fua`.
fn cdb(op: u8, lba: u64, blocks: u32, fua: bool) -> [u8; 16] {
    let mut c: [u8; 16] = cdb16(op, lba, blocks).try_into().unwrap();
    c[1] |= if fua { 0x08 } else { 0 };
    c
}

/// What one worker saw: commands answered and their count, and failures.
#[derive(Default)]
struct Tally {
    answered: usize,
    unanswered_explained: usize,
    dropped: usize,
    failures: Vec<String>,
}

fn new_session(port: u16, me: usize, isid: u8) -> Session {
    let s = login(
        port,
        &format!("iqn.2026-11.io.vit:stress-{me}"),
        &iqn("stress"),
        [0x80, 0, 0, 0, me as u8, isid],
    );
    s.stream
        .set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    s
}

/// Reads answers until every command in `want` is answered or the stream is quiet for a
/// while: (ITTs answered, in order, TMF responses by ITT, whether a unit attention came).
/// Fails on an answer to an ITT answered before (`seen`, the session's whole history).
fn collect(
    s: &mut Session,
    want: &HashSet<u32>,
    seen: &mut HashSet<u32>,
    failures: &mut Vec<String>,
    tag: &str,
) -> (Vec<u32>, Vec<(u32, u8)>, bool) {
    let (mut got, mut tmfs, mut ua) = (Vec::new(), Vec::new(), false);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !want.iter().all(|w| got.contains(w)) && Instant::now() < deadline {
        let (itt, stat_sn) = match read_pdu(&mut s.stream) {
            Ok((TargetPdu::ScsiResponse(r), data)) => {
                // Sense key UNIT ATTENTION: a reset or preemption told.
                if r.status == 2 && data.get(4).is_some_and(|k| k & 0xf == 6) {
                    ua = true;
                }
                (r.itt, r.stat_sn)
            }
            Ok((TargetPdu::DataIn(d), _)) if d.status_present => (d.itt, d.stat_sn),
            Ok((TargetPdu::TaskMgmt(t), _)) => {
                tmfs.push((t.itt, t.response));
                (t.itt, t.stat_sn)
            }
            Ok((TargetPdu::NopIn(n), _)) => {
                if n.ttt != 0xffff_ffff {
                    let _ = s.answer_ping(n.ttt);
                }
                continue;
            }
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                break;
            }
            Err(e) => {
                failures.push(format!("{tag}: connection failed: {e}"));
                break;
            }
        };
        s.exp_stat_sn = stat_sn.wrapping_add(1);
        if !seen.insert(itt) {
            failures.push(format!("{tag}: ITT {itt:#x} answered twice"));
        }
        got.push(itt);
    }
    (got, tmfs, ua)
}

/// One session's life for `until`: batches of pipelined commands with now and then a TMF,
/// sometimes cut off by a dropped connection (then a new login, now and then with the same
/// ISID: the old session is reinstated), every answer checked.
fn worker(port: u16, me: usize, seed: u64, until: Instant) -> Tally {
    let mut rng = StdRng::seed_from_u64(seed ^ (me as u64).wrapping_mul(0x9e37_79b9));
    let mut t = Tally::default();
    let mut isid = 1u8;
    let mut s = new_session(port, me, isid);
    let mut seen = HashSet::new();
    for batch in 0..200 {
        if Instant::now() >= until {
            break;
        }
        let tag = format!("session {me} batch {batch}");
        let mut wire = Vec::new();
        let mut sent: Vec<Sent> = Vec::new();
        let mut tmfs: Vec<(u32, u8, Option<u32>)> = Vec::new();
        for _ in 0..rng.random_range(1..=8) {
            let (cdb, data, what): ([u8; 16], Vec<u8>, &'static str) = match rng.random_range(0..20)
            {
                k @ 0..=9 => {
                    let (blocks, fua) = (rng.random_range(1..=32u32), k >= 6);
                    let lba = rng.random_range(0..16_000u64);
                    let what = if fua { "FUA WRITE" } else { "WRITE" };
                    let data = vec![me as u8; blocks as usize * BS];
                    (cdb(0x8a, lba, blocks, fua), data, what)
                }
                10..=14 => (cdb(0x91, 0, 0, false), Vec::new(), "SYNCHRONIZE CACHE"),
                15..=17 => {
                    let other = rng.random_range(0..SESSIONS);
                    prout(me, other, rng.random_range(0..4))
                }
                _ => ([0u8; 16], Vec::new(), "TEST UNIT READY"),
            };
            let (bytes, itt, cmd_sn) = command(&mut s, cdb, &data);
            wire.extend_from_slice(&bytes);
            sent.push(Sent { itt, cmd_sn, what });
            if rng.random_bool(0.15) {
                let (function, referenced) = if rng.random_bool(0.7) {
                    let x = &sent[rng.random_range(0..sent.len())];
                    (1, Some((x.itt, x.cmd_sn)))
                } else {
                    (5, None)
                };
                let (r, c) = referenced.unwrap_or((0xffff_ffff, 0));
                let (bytes, itt) = tmf(&mut s, function, r, c);
                wire.extend_from_slice(&bytes);
                tmfs.push((itt, function, referenced.map(|x| x.0)));
            }
        }
        if rng.random_bool(0.12) {
            // Dropped mid-command: part of the batch sent, perhaps part of a PDU.
            let cut = rng.random_range(0..=wire.len());
            let _ = s.stream.write_all(&wire[..cut]);
            if rng.random_bool(0.5) {
                std::thread::sleep(Duration::from_millis(rng.random_range(0..5)));
            }
            let _ = s.stream.shutdown(std::net::Shutdown::Both);
            t.dropped += 1;
            if rng.random_bool(0.5) {
                isid = isid.wrapping_add(1);
            }
            s = new_session(port, me, isid);
            seen.clear();
            continue;
        }
        if let Err(e) = s.stream.write_all(&wire) {
            t.failures.push(format!("{tag}: sending: {e}"));
            break;
        }
        let mut want: HashSet<u32> = sent.iter().map(|x| x.itt).collect();
        want.extend(tmfs.iter().map(|x| x.0));
        let (got, tmf_answers, mut ua) = collect(&mut s, &want, &mut seen, &mut t.failures, &tag);
        for &(itt, function, _) in &tmfs {
            if !got.contains(&itt) {
                t.failures
                    .push(format!("{tag}: TMF {function} ({itt:#x}) not answered"));
            }
        }
        let reset = tmfs.iter().any(|x| x.1 == 5);
        let aborted: HashSet<u32> = tmfs
            .iter()
            .filter(|x| tmf_answers.contains(&(x.0, 0)))
            .filter_map(|x| x.2)
            .collect();
        // No task is answered after a TMF that reported it aborted (ABORT TASK), or, for a
        // LOGICAL UNIT RESET, after the reset's answer when it was sent before the reset.
        let at = |itt: u32| got.iter().position(|&x| x == itt);
        for &(itt, function, referenced) in &tmfs {
            let Some(answer) = at(itt).filter(|_| tmf_answers.contains(&(itt, 0))) else {
                continue;
            };
            let before: Vec<u32> = match referenced {
                Some(r) => vec![r],
                None => sent.iter().map(|x| x.itt).filter(|&x| x < itt).collect(),
            };
            for x in before {
                if at(x).is_some_and(|i| i > answer) {
                    t.failures.push(format!(
                        "{tag}: {x:#x} answered after TMF {function} ({itt:#x}) said it was aborted"
                    ));
                }
            }
        }
        let missing: Vec<&Sent> = sent.iter().filter(|x| !got.contains(&x.itt)).collect();
        let unexplained: Vec<&&Sent> = missing
            .iter()
            .filter(|x| !reset && !aborted.contains(&x.itt))
            .collect();
        if !unexplained.is_empty() && !ua {
            // Aborted by another session (its reset, PREEMPT AND ABORT): this one is told so
            // by a unit attention on its next command.
            let (bytes, itt, _) = command(&mut s, [0u8; 16], &[]);
            let _ = s.stream.write_all(&bytes);
            let one = HashSet::from([itt]);
            let (got, _, told) = collect(&mut s, &one, &mut seen, &mut t.failures, &tag);
            if !got.contains(&itt) {
                t.failures.push(format!(
                    "{tag}: TEST UNIT READY after the batch not answered"
                ));
            }
            ua = told;
        }
        if !unexplained.is_empty() && !ua {
            let list: Vec<String> = unexplained
                .iter()
                .map(|x| format!("{} ({:#x})", x.what, x.itt))
                .collect();
            t.failures.push(format!(
                "{tag}: never answered, nothing aborted them: {list:?}"
            ));
        }
        t.answered += sent.len() - missing.len();
        t.unanswered_explained += missing.len() - unexplained.len();
        if !t.failures.is_empty() {
            break;
        }
    }
    t
}

#[test]
fn many_sessions_flushing_resetting_and_dropping_keep_every_promise() {
    let ds = Datastore::new();
    ds.target("stress", &[]);
    ds.lun("stress", 0, "8M");
    let mut vitd = Vitd::start(ds.root(), ds.port, &["--buffered"]);
    let pid = vitd.child.as_ref().unwrap().id();
    // A first session's life, so that what vitd sets up once for a LUN is counted.
    {
        let mut s = new_session(ds.port, 99, 1);
        s.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = s.test_unit_ready();
        let _ = s.command(0, &cdb(0x8a, 0, 1, true), &[0; BS], 0);
        let _ = s.command(0, &cdb(0x91, 0, 0, false), &[], 0);
    }
    let before = settled_resources(pid);
    let seed = seed();
    let until = Instant::now() + Duration::from_secs(4);
    let tallies: Vec<Tally> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..SESSIONS)
            .map(|me| scope.spawn(move || worker(ds.port, me, seed, until)))
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let failures: Vec<&String> = tallies.iter().flat_map(|t| &t.failures).collect();
    assert!(
        failures.is_empty(),
        "{failures:#?}\n{}",
        tail(&vitd.log_text())
    );
    let answered: usize = tallies.iter().map(|t| t.answered).sum();
    let dropped: usize = tallies.iter().map(|t| t.dropped).sum();
    let aborted: usize = tallies.iter().map(|t| t.unanswered_explained).sum();
    eprintln!("{answered} commands answered, {aborted} aborted, {dropped} connections dropped");
    assert!(answered > 100 && dropped > 0, "too little ran");
    // The sessions are gone (their sockets closed when the workers ended): vitd's threads and
    // descriptors are back where they were.
    wait_until(20, || resources(pid) == before);
    assert_eq!(
        resources(pid),
        before,
        "(threads, descriptors) of vitd: {:?}",
        names(pid)
    );
    // A fresh session is served at once: no flush round, reset or range left waiting.
    let mut s = new_session(ds.port, 98, 1);
    s.stream
        .set_read_timeout(Some(Duration::from_secs(6)))
        .unwrap();
    let _ = s.test_unit_ready().unwrap(); // its unit attention, if any
    // The reservation the workers may have left (Write Exclusive, Registrants Only) goes.
    for kind in [0, 3] {
        let (cdb, p, what) = prout(98, 98, kind);
        let r = s.command(0, &cdb, &p, 0).unwrap();
        assert_eq!(r.status, 0, "{what}: {r:?}");
    }
    for (what, cdb) in [
        ("SYNCHRONIZE CACHE", cdb(0x91, 0, 0, false)),
        ("TEST UNIT READY", [0u8; 16]),
        ("SYNCHRONIZE CACHE", cdb(0x91, 0, 0, false)),
    ] {
        let t0 = Instant::now();
        let r = s.command(0, &cdb, &[], 0);
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{what} took {:?}: {r:?}\n{}",
            t0.elapsed(),
            tail(&vitd.log_text())
        );
        let r = r.unwrap_or_else(|e| panic!("{what}: {e}\n{}", tail(&vitd.log_text())));
        assert_eq!(r.status, 0, "{what}: {r:?}");
    }
    // Quiet SYNCHRONIZE CACHEs of three sessions at once, nothing else running: those that
    // wait for a round are served by the next without anything new arriving to start it.
    let mut trio = vec![s];
    for me in [96, 97] {
        let mut x = new_session(ds.port, me, 1);
        x.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = x.test_unit_ready().unwrap();
        trio.push(x);
    }
    for x in &mut trio {
        x.stream
            .set_read_timeout(Some(Duration::from_secs(6)))
            .unwrap();
    }
    let start = std::sync::Barrier::new(trio.len());
    let slow: Vec<String> = std::thread::scope(|scope| {
        let runs: Vec<_> = trio
            .iter_mut()
            .map(|x| {
                let start = &start;
                scope.spawn(move || {
                    let mut slow = Vec::new();
                    for round in 0..25 {
                        // Every thread meets every round (a failed one stops sending).
                        start.wait();
                        if !slow.is_empty() {
                            continue;
                        }
                        let t0 = Instant::now();
                        let r = x.command(0, &cdb(0x91, 0, 0, false), &[], 0);
                        let took = t0.elapsed();
                        if took > Duration::from_secs(5) || !matches!(&r, Ok(r) if r.status == 0) {
                            slow.push(format!("round {round}: {took:?} {r:?}"));
                        }
                    }
                    slow
                })
            })
            .collect();
        runs.into_iter().flat_map(|r| r.join().unwrap()).collect()
    });
    assert!(slow.is_empty(), "{slow:?}\n{}", tail(&vitd.log_text()));
    let s = trio.swap_remove(0);
    drop(trio);
    let log = vitd.log_text();
    assert!(!log.contains("panicked"), "{}", tail(&log));
    // SIGTERM while sessions keep flushing and writing through the page cache (and one sits
    // idle): vitd asks them to log out and ends them after its 2 s grace.
    let until = Instant::now() + Duration::from_secs(10);
    let busy: Vec<_> = (0..4)
        .map(|me| {
            let mut b = new_session(ds.port, 90 + me, 1);
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(seed ^ me as u64);
                for _ in 0..2000 {
                    let (cdb, data) = if rng.random_bool(0.5) {
                        (cdb(0x91, 0, 0, false), Vec::new())
                    } else {
                        let lba = rng.random_range(0..16_000u64);
                        (cdb(0x8a, lba, 8, true), vec![7u8; 8 * BS])
                    };
                    let (bytes, _, _) = command(&mut b, cdb, &data);
                    if Instant::now() > until || b.stream.write_all(&bytes).is_err() {
                        return;
                    }
                    // Answers are read as they come; a closed connection ends the loop.
                    match read_pdu(&mut b.stream) {
                        Ok((TargetPdu::ScsiResponse(r), _)) => {
                            b.exp_stat_sn = r.stat_sn.wrapping_add(1)
                        }
                        Ok(_) => {}
                        Err(e)
                            if e.kind() == std::io::ErrorKind::WouldBlock
                                || e.kind() == std::io::ErrorKind::TimedOut => {}
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let status = vitd.stop();
    let took = t0.elapsed();
    eprintln!("vitd stopped {took:?} after SIGTERM");
    for b in busy {
        b.join().unwrap();
    }
    assert!(status.success(), "{status}\n{}", tail(&vitd.log_text()));
    assert!(took < Duration::from_secs(5), "vitd took {took:?} to stop");
    drop(s);
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
