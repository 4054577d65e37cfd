//! Fairness between sessions that share a data thread (`--cores 1`): a session that always has
//! commands waiting for one of the thread's buffers must not take every buffer freed while a
//! quiet session waits for one too. The tests count I/Os, never time them.

mod common;
use common::*;
use std::collections::VecDeque;
use std::io::Write;
use std::time::Duration;
use vit::iscsi::initiator::{Session, frame, login, read_pdu};
use vit::iscsi::pdu::{BHS_LEN, DataOut, ScsiCommand, TargetPdu};

const INITIATOR: &str = "iqn.2026-11.io.vit:fairness";
/// Blocks of 512 bytes in one of the writes that hold the buffers: 64 KiB, the size of a
/// data thread's small buffers (256 of them; 32 more of 1 MiB).
const HOLD_BLOCKS: u16 = 128;
const HOLD_BYTES: usize = HOLD_BLOCKS as usize * 512;
/// The first of the last 200 blocks of the LUN (64 MiB).
const LAST_200: u32 = (64 << 20) / 512 - 200;

/// vitd on one data thread, so every session shares its buffers, with a stall timeout far past
/// the test (writes left waiting for Data-Out hold their buffers throughout).
fn one_thread(alias: &str) -> (Datastore, Vitd) {
    let ds = Datastore::new();
    ds.target(alias, &[]);
    ds.lun(alias, 0, "64M");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_vitd"));
    cmd.arg("--datastore").arg(ds.root());
    cmd.args(["--cores", "1", "--stall-timeout", "600"]);
    let vitd = Vitd::spawn(cmd, ds.port);
    (ds, vitd)
}

/// A session to `alias` whose power-on unit attention is taken.
fn session(port: u16, alias: &str, isid: u8) -> Session {
    let mut s = login(port, INITIATOR, &iqn(alias), [0x80, 0, 0, 0, 0, isid]);
    let first = s.test_unit_ready().unwrap();
    assert!(matches!(first, TargetPdu::ScsiResponse(_)), "{first:?}");
    s
}

/// Sends READ(10) (`read` true) or WRITE(10) without immediate data (its data waits for an
/// R2T) of `blocks` at `lba`; returns its ITT. The answer is not read.
fn send_rw(s: &mut Session, read: bool, lba: u32, blocks: u16) -> u32 {
    let mut cdb = [0u8; 16];
    cdb[0] = if read { 0x28 } else { 0x2a };
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
    let len = u32::from(blocks) * 512;
    send_command(s, cdb, if read { (0, len) } else { (len, 0) }, &[])
}

/// Sends command `cdb` expecting `lengths` (data-out, data-in) bytes, with `immediate` data;
/// returns its ITT. The answer is not read.
fn send_command(s: &mut Session, cdb: [u8; 16], lengths: (u32, u32), immediate: &[u8]) -> u32 {
    s.itt += 1;
    let cmd = ScsiCommand {
        final_bit: true,
        read: lengths.1 > 0,
        write: lengths.0 > 0,
        attr: 1,
        itt: s.itt,
        expected_data_length: lengths.0.max(lengths.1),
        cmd_sn: s.cmd_sn,
        exp_stat_sn: s.exp_stat_sn,
        cdb,
        data_segment_length: immediate.len() as u32,
        ..Default::default()
    };
    s.cmd_sn = s.cmd_sn.wrapping_add(1);
    let mut bhs = [0u8; BHS_LEN];
    cmd.encode(&mut bhs);
    s.stream.write_all(&frame(&bhs, immediate, false)).unwrap();
    s.itt
}

/// Reads PDUs until `n` R2Ts have come, each kept as (ITT, TTT).
fn r2ts(s: &mut Session, n: usize, log: &dyn Fn() -> String) -> VecDeque<(u32, u32)> {
    let mut got = VecDeque::new();
    while got.len() < n {
        match read_pdu(&mut s.stream) {
            Ok((TargetPdu::R2t(r), _)) => {
                assert_eq!((r.buffer_offset, r.desired_length), (0, HOLD_BYTES as u32));
                got.push_back((r.itt, r.ttt));
            }
            Ok((TargetPdu::NopIn(_), _)) => {}
            other => panic!("{} R2Ts of {n}, then {other:?}\n{}", got.len(), log()),
        }
    }
    got
}

/// `n` writes of 64 KiB whose data is never sent: each holds a buffer (R2T received).
fn hold_buffers(s: &mut Session, n: usize, log: &dyn Fn() -> String) -> VecDeque<(u32, u32)> {
    for k in 0..n {
        send_rw(s, false, k as u32 * u32::from(HOLD_BLOCKS), HOLD_BLOCKS);
    }
    r2ts(s, n, log)
}

/// A session whose queue of 64 KiB writes always has commands waiting for a buffer, beside
/// sessions that hold every other buffer of the thread (writes whose data never comes).
struct Busy {
    s: Session,
    /// R2Ts answered by no Data-Out yet: (ITT, TTT).
    open: VecDeque<(u32, u32)>,
    next_lba: u32,
    /// The sessions holding the small buffers.
    _holders: Vec<Session>,
}

impl Busy {
    /// Two sessions hold the 256 small buffers; the busy one holds the 32 large ones (a 64 KiB
    /// command takes one when no small one is left) and has four more writes waiting: it is
    /// first in line for a buffer.
    fn start(port: u16, alias: &str, log: &dyn Fn() -> String) -> Busy {
        let mut holders: Vec<Session> = (0..2).map(|k| session(port, alias, 1 + k)).collect();
        for h in &mut holders {
            hold_buffers(h, 128, log);
        }
        let mut s = session(port, alias, 3);
        let open = hold_buffers(&mut s, 32, log);
        let mut busy = Busy {
            s,
            open,
            next_lba: 32 * u32::from(HOLD_BLOCKS),
            _holders: holders,
        };
        for _ in 0..4 {
            busy.another();
        }
        busy
    }

    fn another(&mut self) {
        send_rw(&mut self.s, false, self.next_lba, HOLD_BLOCKS);
        self.next_lba += u32::from(HOLD_BLOCKS);
    }

    /// Completes one write (its Data-Out sent, its answer read) and sends another: one buffer
    /// freed, and the session still has commands waiting.
    fn round(&mut self, log: &dyn Fn() -> String) {
        let (itt, ttt) = self.open.pop_front().expect("an open R2T");
        let d = DataOut {
            final_bit: true,
            itt,
            ttt,
            exp_stat_sn: self.s.exp_stat_sn,
            data_segment_length: HOLD_BYTES as u32,
            ..Default::default()
        };
        let mut bhs = [0u8; BHS_LEN];
        d.encode(&mut bhs);
        let data = vec![0x5au8; HOLD_BYTES];
        self.s.stream.write_all(&frame(&bhs, &data, false)).unwrap();
        loop {
            match read_pdu(&mut self.s.stream) {
                Ok((TargetPdu::R2t(r), _)) => self.open.push_back((r.itt, r.ttt)),
                Ok((TargetPdu::ScsiResponse(r), _)) if r.itt == itt => {
                    assert_eq!(r.status, 0, "{}", log());
                    self.s.exp_stat_sn = r.stat_sn.wrapping_add(1);
                    break;
                }
                Ok((TargetPdu::NopIn(_), _)) => {}
                other => panic!("{other:?}\n{}", log()),
            }
        }
        self.another();
    }
}

/// vitd on one thread whose every buffer is held ([`Busy::start`]), and a quiet session on it
/// with the NAA designator of LUN 0 (asked before the buffers were taken).
fn crowded(alias: &str) -> (Datastore, Vitd, Busy, Session, [u8; 16]) {
    let (ds, vitd) = one_thread(alias);
    let mut quiet = session(ds.port, alias, 4);
    let naa = naa(&mut quiet, 0);
    let busy = Busy::start(ds.port, alias, &|| vitd.log_text());
    (ds, vitd, busy, quiet, naa)
}

/// The next answer on `s`, waiting up to `secs` (NOP-Ins skipped); `None` if none came.
fn answer_within(s: &mut Session, secs: u64) -> Option<(TargetPdu, Vec<u8>)> {
    s.stream
        .set_read_timeout(Some(Duration::from_secs(secs)))
        .unwrap();
    loop {
        match read_pdu(&mut s.stream) {
            Ok((TargetPdu::NopIn(_), _)) => {}
            Ok(a) => return Some(a),
            Err(_) => return None,
        }
    }
}

/// A session whose queue of 64 KiB writes always has commands waiting for a buffer (each write
/// that ends is followed by a new one), and a quiet session's single 4 KiB read, on one data
/// thread whose every buffer is held: the buffers the busy session frees one at a time must not
/// all go back to it. (They did: the thread shared freed buffers out beginning with the first
/// connection in line every time, and a connection that never stops waiting stays first; the
/// quiet read was answered only once other sessions were dropped.)
#[test]
fn a_session_always_waiting_for_buffers_does_not_take_every_one_freed() {
    let (_ds, vitd, mut busy, mut quiet, _) = crowded("fair");
    let log = || vitd.log_text();
    // The quiet session's 4 KiB read waits behind the busy one.
    let quiet_itt = send_rw(&mut quiet, true, 120_000, 8);
    let rounds = 16;
    for _ in 0..rounds {
        busy.round(&log);
    }
    // The quiet read got one of the buffers freed meanwhile. (Nothing frees another now: the
    // holders' writes wait for the stall timeout, and they are pinged only after 5 s idle.)
    match answer_within(&mut quiet, 4) {
        Some((TargetPdu::DataIn(d), bytes)) => {
            assert!(
                d.itt == quiet_itt && d.status_present && d.status == 0,
                "{d:?}"
            );
            assert!(bytes == [0u8; 4096], "the quiet read returned other bytes");
        }
        None => panic!(
            "the quiet 4 KiB read is unanswered after the busy session completed {rounds} \
             writes one at a time\n{}",
            log()
        ),
        Some(other) => panic!("quiet read: {other:?}"),
    }
    assert!(!log().contains("panicked"), "{}", log());
}

/// Sends `cdb` on the quiet session (data-out `data`, all immediate) while the busy session
/// completes writes one at a time, sending it again each time it ends in TASK SET FULL, as an
/// initiator does; its answer: (status, TASK SET FULLs before it).
fn run_in_turn(
    busy: &mut Busy,
    quiet: &mut Session,
    cdb: [u8; 16],
    data: &[u8],
    log: &dyn Fn() -> String,
) -> (u8, u32) {
    let lengths = (data.len() as u32, 0);
    send_command(quiet, cdb, lengths, data);
    let mut full = 0;
    for _ in 0..16 {
        busy.round(log);
        quiet.stream.set_nonblocking(true).unwrap();
        let ready = quiet.stream.peek(&mut [0u8; 1]).is_ok();
        quiet.stream.set_nonblocking(false).unwrap();
        if !ready {
            continue;
        }
        match answer_within(quiet, 4) {
            Some((TargetPdu::ScsiResponse(r), _)) if r.status == 0x28 => {
                quiet.exp_stat_sn = r.stat_sn.wrapping_add(1);
                full += 1;
                send_command(quiet, cdb, lengths, data);
            }
            Some((TargetPdu::ScsiResponse(r), _)) => {
                quiet.exp_stat_sn = r.stat_sn.wrapping_add(1);
                return (r.status, full);
            }
            other => panic!("{other:?}\n{}", log()),
        }
    }
    match answer_within(quiet, 4) {
        Some((TargetPdu::ScsiResponse(r), _)) => {
            quiet.exp_stat_sn = r.stat_sn.wrapping_add(1);
            (r.status, full)
        }
        other => panic!(
            "command {:#04x} after {full} TASK SET FULL: {other:?}\n{}",
            cdb[0],
            log()
        ),
    }
}

/// Reads `blocks` at `lba` on the quiet session while the busy session completes writes.
fn read_in_turn(
    busy: &mut Busy,
    quiet: &mut Session,
    lba: u32,
    blocks: u16,
    log: &dyn Fn() -> String,
) -> Vec<u8> {
    send_rw(quiet, true, lba, blocks);
    for _ in 0..4 {
        busy.round(log);
    }
    let mut data = Vec::new();
    loop {
        match answer_within(quiet, 4) {
            Some((TargetPdu::DataIn(d), bytes)) => {
                data.extend_from_slice(&bytes);
                if d.status_present {
                    assert_eq!(d.status, 0);
                    quiet.exp_stat_sn = d.stat_sn.wrapping_add(1);
                    return data;
                }
            }
            other => panic!("read: {other:?}\n{}", log()),
        }
    }
}

/// The commands that run as jobs, of a quiet session while other sessions' commands wait for
/// every buffer the thread frees: once its turn gives one its buffer, it runs, rather than
/// ending in TASK SET FULL for want of a second buffer, which it did each time it was sent
/// again for as long as the others kept waiting. COMPARE AND WRITE (VMware's ATS, its heartbeat
/// among them) reads the medium into its own buffer; WRITE SAME and EXTENDED COPY move their
/// data through it when the pool has none.
#[test]
fn jobs_run_while_other_sessions_wait_for_buffers() {
    let (_ds, vitd, mut busy, mut quiet, naa) = crowded("jobs");
    let log = || vitd.log_text();
    // COMPARE AND WRITE of one block at LBA 120000: compare with zeroes (the LUN's), write
    // 0x77s.
    let mut cdb = [0u8; 16];
    cdb[0] = 0x89;
    cdb[2..10].copy_from_slice(&120_000u64.to_be_bytes());
    cdb[13] = 1;
    let mut data = vec![0u8; 1024];
    data[512..].fill(0x77);
    let (status, full) = run_in_turn(&mut busy, &mut quiet, cdb, &data, &log);
    assert_eq!(status, 0, "COMPARE AND WRITE, after {full} TASK SET FULL");
    let back = read_in_turn(&mut busy, &mut quiet, 120_000, 1, &log);
    assert!(back == [0x77u8; 512], "COMPARE AND WRITE did not write");
    // WRITE SAME(16) of 0x66s over 2100 blocks at LBA 110000: a step of 1 MiB (its buffer's
    // or a job buffer's) and a part of one; the blocks after it stay as they were.
    let write_same = |lba: u32, blocks: u32, flags: u8| {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x93;
        cdb[1] = flags;
        cdb[2..10].copy_from_slice(&u64::from(lba).to_be_bytes());
        cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
        cdb
    };
    // The 2100 blocks at `lba` and the 56 after them, read in two (1 MiB at most each).
    let read_2156 = |busy: &mut Busy, quiet: &mut Session, lba: u32| {
        let mut all = read_in_turn(busy, quiet, lba, 2048, &log);
        all.extend(read_in_turn(busy, quiet, lba + 2048, 108, &log));
        all
    };
    let cdb = write_same(110_000, 2100, 0);
    let (status, full) = run_in_turn(&mut busy, &mut quiet, cdb, &[0x66; 512], &log);
    assert_eq!(status, 0, "WRITE SAME, after {full} TASK SET FULL");
    let back = read_2156(&mut busy, &mut quiet, 110_000);
    assert!(
        back[..2100 * 512].iter().all(|&b| b == 0x66),
        "WRITE SAME did not write"
    );
    assert!(
        back[2100 * 512..].iter().all(|&b| b == 0),
        "WRITE SAME wrote past its range"
    );
    // WRITE SAME(16) with NDOB and UNMAP over the same blocks: no data-out, so no buffer of its
    // own, and a hole punched needs none.
    let cdb = write_same(110_000, 2100, 0x09);
    let (status, full) = run_in_turn(&mut busy, &mut quiet, cdb, &[], &log);
    assert_eq!(
        status, 0,
        "WRITE SAME (NDOB, UNMAP), after {full} TASK SET FULL"
    );
    let back = read_2156(&mut busy, &mut quiet, 110_000);
    assert!(
        back.iter().all(|&b| b == 0),
        "WRITE SAME (NDOB, UNMAP) did not deallocate"
    );
    // WRITE SAME over the LUN's last 200 blocks.
    let cdb = write_same(LAST_200, 200, 0);
    let (status, full) = run_in_turn(&mut busy, &mut quiet, cdb, &[0x44; 512], &log);
    assert_eq!(
        status, 0,
        "WRITE SAME at the end, after {full} TASK SET FULL"
    );
    let back = read_in_turn(&mut busy, &mut quiet, LAST_200, 200, &log);
    assert!(
        back == [0x44u8; 200 * 512],
        "WRITE SAME at the end did not write"
    );
    // EXTENDED COPY of 2100 blocks from LBA 0 (the busy session's first writes) to LBA 100000:
    // a step of 1 MiB and a part of one; the blocks after it stay as they were.
    let list = xcopy_list(naa, naa, 2100, 1, 100_000);
    let (status, full) = run_in_turn(&mut busy, &mut quiet, xcopy_cdb(list.len()), &list, &log);
    assert_eq!(status, 0, "EXTENDED COPY, after {full} TASK SET FULL");
    let copied = read_2156(&mut busy, &mut quiet, 100_000);
    assert!(
        copied[..2100 * 512].iter().all(|&b| b == 0x5a),
        "EXTENDED COPY did not copy the busy session's writes"
    );
    assert!(
        copied[2100 * 512..].iter().all(|&b| b == 0),
        "EXTENDED COPY wrote past its range"
    );
}
