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

/// A LUN of the target: its number and block size.
#[derive(Clone, Copy, Debug)]
struct Lun {
    id: u8,
    bs: usize,
}
/// LUN 0: 64 MiB of 512-byte blocks.
const LUN0: Lun = Lun { id: 0, bs: 512 };
/// LUN 1: 64 MiB of 4 KiB blocks.
const LUN1: Lun = Lun { id: 1, bs: 4096 };

/// vitd on one data thread, so every session shares its buffers, with a stall timeout far past
/// the test (writes left waiting for Data-Out hold their buffers throughout); LUNs 0 and 1.
fn one_thread(alias: &str) -> (Datastore, Vitd) {
    let ds = Datastore::new();
    ds.target(alias, &[]);
    ds.lun(alias, 0, "64M");
    ds.lun(alias, 1, "64M");
    let iqn = iqn(alias);
    ds.edit(|cfg| {
        let t = cfg.targets.iter_mut().find(|t| t.name == iqn).unwrap();
        let l = t.luns.iter_mut().find(|l| l.id == 1).unwrap();
        let vit::config::LunRef::Inline(body) = &mut l.lun else {
            panic!("LUN 1 is not inline")
        };
        body.blocksize = Some((LUN1.bs as u64, Default::default()));
    });
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
/// R2T) of `blocks` at `lba` of `lun`; returns its ITT. The answer is not read.
fn send_rw(s: &mut Session, lun: Lun, read: bool, lba: u32, blocks: u16) -> u32 {
    let mut cdb = [0u8; 16];
    cdb[0] = if read { 0x28 } else { 0x2a };
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
    let len = (usize::from(blocks) * lun.bs) as u32;
    send_command(s, lun, cdb, if read { (0, len) } else { (len, 0) }, &[])
}

/// Sends command `cdb` to `lun` expecting `lengths` (data-out, data-in) bytes, with `immediate`
/// data; returns its ITT. The answer is not read.
fn send_command(
    s: &mut Session,
    lun: Lun,
    cdb: [u8; 16],
    lengths: (u32, u32),
    immediate: &[u8],
) -> u32 {
    s.itt += 1;
    let cmd = ScsiCommand {
        final_bit: true,
        read: lengths.1 > 0,
        write: lengths.0 > 0,
        attr: 1,
        lun: u64::from(lun.id) << 48,
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

/// Reads PDUs until `n` R2Ts for the whole of writes of `len` bytes have come, each kept as
/// (ITT, TTT).
fn r2ts(s: &mut Session, n: usize, len: usize, log: &dyn Fn() -> String) -> VecDeque<(u32, u32)> {
    let mut got = VecDeque::new();
    while got.len() < n {
        match read_pdu(&mut s.stream) {
            Ok((TargetPdu::R2t(r), _)) => {
                assert_eq!((r.buffer_offset, r.desired_length), (0, len as u32));
                got.push_back((r.itt, r.ttt));
            }
            Ok((TargetPdu::NopIn(_), _)) => {}
            other => panic!("{} R2Ts of {n}, then {other:?}\n{}", got.len(), log()),
        }
    }
    got
}

/// `n` writes of `blocks` blocks (of 512 bytes) whose data is never sent: each holds a buffer
/// (R2T received).
fn hold_buffers(
    s: &mut Session,
    n: usize,
    blocks: u16,
    log: &dyn Fn() -> String,
) -> VecDeque<(u32, u32)> {
    for k in 0..n {
        send_rw(s, LUN0, false, k as u32 * u32::from(blocks), blocks);
    }
    r2ts(s, n, usize::from(blocks) * 512, log)
}

/// Writes of the busy session kept waiting for a buffer.
const BUSY_WAITING: usize = 4;

/// Which of the thread's buffers the busy session's writes hold and free, one at a time, while
/// other sessions hold all the rest.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Freed {
    /// The 1 MiB buffers (32).
    Large,
    /// 32 of the 64 KiB buffers (256), the 1 MiB ones held by writes of 128 KiB.
    Small,
}

/// A session whose queue of 64 KiB writes always has commands waiting for a buffer, beside
/// sessions that hold every other buffer of the thread (writes whose data never comes).
struct Busy {
    s: Session,
    /// R2Ts answered by no Data-Out yet: (ITT, TTT).
    open: VecDeque<(u32, u32)>,
    /// Writes sent and not answered yet.
    outstanding: usize,
    next_lba: u32,
    /// The sessions holding the other buffers.
    _holders: Vec<Session>,
}

impl Busy {
    /// [`Freed::Large`]: two sessions hold the 256 small buffers; the busy one holds the 32
    /// large ones (a 64 KiB command takes one when no small one is left). [`Freed::Small`]: two
    /// sessions hold the 32 large buffers (24 at most each), two more 224 small ones; the busy
    /// one holds the other 32. Either way it has [`BUSY_WAITING`] more writes waiting: it is
    /// first in line for a buffer.
    fn start(port: u16, alias: &str, freed: Freed, log: &dyn Fn() -> String) -> Busy {
        let mut holders: Vec<Session> = (0..4).map(|k| session(port, alias, 1 + k)).collect();
        let held: [(usize, u16); 4] = match freed {
            Freed::Large => [(128, HOLD_BLOCKS), (128, HOLD_BLOCKS), (0, 0), (0, 0)],
            Freed::Small => [(16, 256), (16, 256), (128, HOLD_BLOCKS), (96, HOLD_BLOCKS)],
        };
        for (h, (n, blocks)) in holders.iter_mut().zip(held) {
            hold_buffers(h, n, blocks, log);
        }
        let mut s = session(port, alias, 5);
        let open = hold_buffers(&mut s, 32, HOLD_BLOCKS, log);
        let mut busy = Busy {
            s,
            open,
            outstanding: 32,
            next_lba: 32 * u32::from(HOLD_BLOCKS),
            _holders: holders,
        };
        busy.top_up();
        busy
    }

    /// Sends writes until [`BUSY_WAITING`] of them wait for a buffer, as far as the R2Ts read
    /// so far tell (one on its way makes one fewer): each buffer a quiet session's command
    /// gives back goes to one of them, and the session takes it on (it stays in line for as
    /// long as the test goes on, within its command window of 128).
    fn top_up(&mut self) {
        while self.outstanding - self.open.len() < BUSY_WAITING {
            assert!(
                self.outstanding < 128,
                "the busy session's command window is full"
            );
            send_rw(&mut self.s, LUN0, false, self.next_lba, HOLD_BLOCKS);
            self.next_lba += u32::from(HOLD_BLOCKS);
            self.outstanding += 1;
        }
    }

    /// Completes one write (its Data-Out sent, its answer read) and sends more: one buffer
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
                    self.outstanding -= 1;
                    break;
                }
                Ok((TargetPdu::NopIn(_), _)) => {}
                other => panic!("{other:?}\n{}", log()),
            }
        }
        self.top_up();
    }
}

/// vitd on one thread whose every buffer is held ([`Busy::start`]), and a quiet session on it
/// with the NAA designator of LUN 0 (asked before the buffers were taken, as the unit attention
/// of LUN 1 is taken).
fn crowded(alias: &str, freed: Freed) -> (Datastore, Vitd, Busy, Session, [u8; 16]) {
    let (ds, vitd) = one_thread(alias);
    let mut quiet = session(ds.port, alias, 6);
    let naa = naa(&mut quiet, 0);
    let r = quiet.command(1, &[0u8; 6], &[], 0).unwrap();
    assert_eq!(r.status, 2, "LUN 1's power-on unit attention: {r:?}");
    let busy = Busy::start(ds.port, alias, freed, &|| vitd.log_text());
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
    let (_ds, vitd, mut busy, mut quiet, _) = crowded("fair", Freed::Large);
    let log = || vitd.log_text();
    // The quiet session's 4 KiB read waits behind the busy one.
    let quiet_itt = send_rw(&mut quiet, LUN0, true, 120_000, 8);
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

/// Data-out up to this long goes as immediate data, more in answer to R2Ts.
const IMMEDIATE_MAX: usize = 4096;

/// Sends `cdb` to `lun` on the quiet session (data-out `data`: immediate, or when longer than
/// [`IMMEDIATE_MAX`] as each R2T asks) while the busy session completes writes one at a time,
/// sending it again each time it ends in TASK SET FULL, as an initiator does, during 16 of the
/// busy session's writes (and 16 more for the last one sent to be answered); its answer:
/// (status, TASK SET FULLs before it, sense data).
fn run_in_turn(
    busy: &mut Busy,
    quiet: &mut Session,
    lun: Lun,
    cdb: [u8; 16],
    data: &[u8],
    log: &dyn Fn() -> String,
) -> (u8, u32, Vec<u8>) {
    let lengths = (data.len() as u32, 0);
    let immediate = if data.len() <= IMMEDIATE_MAX {
        data
    } else {
        &[]
    };
    let mut itt = send_command(quiet, lun, cdb, lengths, immediate);
    let (mut full, mut rounds) = (0, 0);
    loop {
        if rounds < 32 {
            rounds += 1;
            busy.round(log);
            quiet.stream.set_nonblocking(true).unwrap();
            let ready = quiet.stream.peek(&mut [0u8; 1]).is_ok();
            quiet.stream.set_nonblocking(false).unwrap();
            if !ready {
                continue;
            }
        }
        match answer_within(quiet, 4) {
            Some((TargetPdu::R2t(r), _)) if r.itt == itt => {
                // What it asks for, in Data-Outs of 64 KiB (vitd takes up to 256 KiB).
                let (at, end) = (r.buffer_offset, r.buffer_offset + r.desired_length);
                for (sn, from) in (at..end).step_by(64 << 10).enumerate() {
                    let to = (from + (64 << 10)).min(end);
                    let d = DataOut {
                        final_bit: to == end,
                        itt,
                        ttt: r.ttt,
                        exp_stat_sn: quiet.exp_stat_sn,
                        data_sn: sn as u32,
                        buffer_offset: from,
                        data_segment_length: to - from,
                        ..Default::default()
                    };
                    let mut bhs = [0u8; BHS_LEN];
                    d.encode(&mut bhs);
                    let part = &data[from as usize..to as usize];
                    quiet.stream.write_all(&frame(&bhs, part, false)).unwrap();
                }
            }
            Some((TargetPdu::ScsiResponse(r), _)) if r.status == 0x28 && rounds < 16 => {
                quiet.exp_stat_sn = r.stat_sn.wrapping_add(1);
                full += 1;
                itt = send_command(quiet, lun, cdb, lengths, immediate);
            }
            Some((TargetPdu::ScsiResponse(r), sense)) => {
                quiet.exp_stat_sn = r.stat_sn.wrapping_add(1);
                return (r.status, full, sense.get(2..).unwrap_or(&[]).to_vec());
            }
            other => panic!(
                "command {:#04x} after {full} TASK SET FULL: {other:?}\n{}",
                cdb[0],
                log()
            ),
        }
    }
}

/// Reads `blocks` at `lba` of `lun` on the quiet session while the busy session completes
/// writes.
fn read_in_turn(
    busy: &mut Busy,
    quiet: &mut Session,
    lun: Lun,
    lba: u32,
    blocks: u16,
    log: &dyn Fn() -> String,
) -> Vec<u8> {
    send_rw(quiet, lun, true, lba, blocks);
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

/// A 16-byte CDB of the READ(16) family: `op` with `flags` in byte 1, `blocks` at `lba`.
fn cdb(op: u8, flags: u8, lba: u32, blocks: u32) -> [u8; 16] {
    let mut c: [u8; 16] = cdb16(op, u64::from(lba), blocks).try_into().unwrap();
    c[1] = flags;
    c
}

/// The commands that run as jobs, of a quiet session while other sessions' commands wait for
/// every buffer the thread frees: once its turn gives one its buffer, it runs, rather than
/// ending in TASK SET FULL for want of a second buffer, which it did each time it was sent
/// again for as long as the others kept waiting. COMPARE AND WRITE (VMware's ATS, its heartbeat
/// among them) reads the medium into its own buffer; WRITE SAME and EXTENDED COPY move their
/// data through it when the pool has none. Also on a LUN of 4 KiB blocks.
#[test]
fn jobs_run_while_other_sessions_wait_for_buffers() {
    let (_ds, vitd, mut busy, mut quiet, naa) = crowded("jobs", Freed::Large);
    let log = || vitd.log_text();
    // COMPARE AND WRITE of one block at LBA 120000: compare with zeroes (the LUN's), write
    // 0x77s.
    let mut data = vec![0u8; 1024];
    data[512..].fill(0x77);
    let c = cdb(0x89, 0, 120_000, 1);
    let (status, full, _) = run_in_turn(&mut busy, &mut quiet, LUN0, c, &data, &log);
    assert_eq!(status, 0, "COMPARE AND WRITE, after {full} TASK SET FULL");
    let back = read_in_turn(&mut busy, &mut quiet, LUN0, 120_000, 1, &log);
    assert!(back == [0x77u8; 512], "COMPARE AND WRITE did not write");
    // WRITE SAME(16) of 0x66s over 2100 blocks at LBA 110000: a step of 1 MiB (its buffer's
    // or a job buffer's) and a part of one; the blocks after it stay as they were.
    let write_same = |lba: u32, blocks: u32, flags: u8| cdb(0x93, flags, lba, blocks);
    // The 2100 blocks at `lba` and the 56 after them, read in two (1 MiB at most each).
    let read_2156 = |busy: &mut Busy, quiet: &mut Session, lba: u32| {
        let mut all = read_in_turn(busy, quiet, LUN0, lba, 2048, &log);
        all.extend(read_in_turn(busy, quiet, LUN0, lba + 2048, 108, &log));
        all
    };
    let c = write_same(110_000, 2100, 0);
    let (status, full, _) = run_in_turn(&mut busy, &mut quiet, LUN0, c, &[0x66; 512], &log);
    assert_eq!(status, 0, "WRITE SAME, after {full} TASK SET FULL");
    let back = read_2156(&mut busy, &mut quiet, 110_000);
    written(&back, 2100 * 512, 0x66, "WRITE SAME");
    // WRITE SAME(16) with NDOB and UNMAP over the same blocks: no data-out, and a hole punched
    // needs no buffer.
    let c = write_same(110_000, 2100, 0x09);
    let (status, full, _) = run_in_turn(&mut busy, &mut quiet, LUN0, c, &[], &log);
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
    let c = write_same(LAST_200, 200, 0);
    let (status, full, _) = run_in_turn(&mut busy, &mut quiet, LUN0, c, &[0x44; 512], &log);
    assert_eq!(
        status, 0,
        "WRITE SAME at the end, after {full} TASK SET FULL"
    );
    let back = read_in_turn(&mut busy, &mut quiet, LUN0, LAST_200, 200, &log);
    assert!(
        back == [0x44u8; 200 * 512],
        "WRITE SAME at the end did not write"
    );
    // EXTENDED COPY of 2100 blocks from LBA 0 (the busy session's first writes) to LBA 100000:
    // a step of 1 MiB and a part of one; the blocks after it stay as they were.
    let list = xcopy_list(naa, naa, 2100, 1, 100_000);
    let c = xcopy_cdb(list.len());
    let (status, full, _) = run_in_turn(&mut busy, &mut quiet, LUN0, c, &list, &log);
    assert_eq!(status, 0, "EXTENDED COPY, after {full} TASK SET FULL");
    let copied = read_2156(&mut busy, &mut quiet, 100_000);
    written(
        &copied,
        2100 * 512,
        0x5a,
        "EXTENDED COPY (of the busy session's writes)",
    );
    // On LUN 1, of 4 KiB blocks: COMPARE AND WRITE of 8 blocks (64 KiB of data-out), and WRITE
    // SAME of 300 blocks (a step of 1 MiB and a part of one), the 20 blocks after it untouched.
    let mut data = vec![0u8; 16 * 4096];
    data[8 * 4096..].fill(0x78);
    let c = cdb(0x89, 0, 1000, 8);
    let (status, full, _) = run_in_turn(&mut busy, &mut quiet, LUN1, c, &data, &log);
    assert_eq!(
        status, 0,
        "COMPARE AND WRITE (4 KiB), after {full} TASK SET FULL"
    );
    let back = read_in_turn(&mut busy, &mut quiet, LUN1, 1000, 8, &log);
    assert!(
        back == data[8 * 4096..],
        "COMPARE AND WRITE (4 KiB) did not write"
    );
    let c = write_same(2000, 300, 0);
    let (status, full, _) = run_in_turn(&mut busy, &mut quiet, LUN1, c, &[0x67; 4096], &log);
    assert_eq!(status, 0, "WRITE SAME (4 KiB), after {full} TASK SET FULL");
    let mut back = read_in_turn(&mut busy, &mut quiet, LUN1, 2000, 256, &log);
    back.extend(read_in_turn(&mut busy, &mut quiet, LUN1, 2256, 64, &log));
    written(&back, 300 * 4096, 0x67, "WRITE SAME (4 KiB)");
}

/// Asserts that `what` wrote `byte` over the first `n` bytes read back, and nothing past them
/// (zeroes).
fn written(back: &[u8], n: usize, byte: u8, what: &str) {
    assert!(back[..n].iter().all(|&b| b == byte), "{what} did not write");
    assert!(
        back[n..].iter().all(|&b| b == 0),
        "{what} wrote past its range"
    );
}

/// Runs `cdb` on `lun` as [`run_in_turn`] does; an answer other than `status` is added to
/// `wrong`, named `what`. Returns the sense data.
fn expect_in_turn(
    busy: &mut Busy,
    quiet: &mut Session,
    lun: Lun,
    (what, cdb, data): (&str, [u8; 16], &[u8]),
    status: u8,
    wrong: &mut Vec<String>,
    log: &dyn Fn() -> String,
) -> Vec<u8> {
    let (got, full, sense) = run_in_turn(busy, quiet, lun, cdb, data, log);
    if got != status {
        wrong.push(format!(
            "{what}: status {got:#04x} after {full} TASK SET FULL"
        ));
    }
    sense
}

/// On `len` bytes (one buffer's worth) at block 90000 of LUN 0 and at block 3000 of LUN 1
/// (4 KiB blocks), filled with 0x0f by WRITE SAME, then, each sent as a quiet session's command
/// while the busy session completes writes one at a time: VERIFY with BYTCHK of the same bytes
/// (GOOD), VERIFY without BYTCHK (GOOD), ORWRITE of 0x30s (0x3f read back), VERIFY with BYTCHK
/// of bytes differing in one (MISCOMPARE, its offset told), WRITE SAME with NDOB and no UNMAP
/// (zeroes written, read back). Returns what went wrong, each named, so that one run shows
/// every command that failed.
fn verify_orwrite_and_zeroes(
    busy: &mut Busy,
    quiet: &mut Session,
    len: usize,
    log: &dyn Fn() -> String,
) -> Vec<String> {
    let mut wrong = Vec::new();
    for (lun, lba) in [(LUN0, 90_000), (LUN1, 3000)] {
        let blocks = (len / lun.bs) as u16;
        for w in verify_orwrite_and_zeroes_on(busy, quiet, (lun, lba, blocks), log) {
            wrong.push(format!("LUN {}: {w}", lun.id));
        }
    }
    wrong
}

/// [`verify_orwrite_and_zeroes`] on `blocks` blocks at `lba` of `lun`.
fn verify_orwrite_and_zeroes_on(
    busy: &mut Busy,
    quiet: &mut Session,
    (lun, lba, blocks): (Lun, u32, u16),
    log: &dyn Fn() -> String,
) -> Vec<String> {
    let len = usize::from(blocks) * lun.bs;
    let n = u32::from(blocks);
    let mut wrong = Vec::new();
    let good: [(&str, [u8; 16], Vec<u8>); 4] = [
        ("WRITE SAME", cdb(0x93, 0, lba, n), vec![0x0f; lun.bs]),
        ("VERIFY (BYTCHK)", cdb(0x8f, 2, lba, n), vec![0x0f; len]),
        ("VERIFY", cdb(0x8f, 0, lba, n), Vec::new()),
        ("ORWRITE", cdb(0x8b, 0, lba, n), vec![0x30; len]),
    ];
    for (what, c, data) in &good {
        expect_in_turn(busy, quiet, lun, (what, *c, data), 0, &mut wrong, log);
    }
    let mut other = vec![0x3f; len];
    let off = len * 2 / 3 + 5;
    other[off] = 0x3e;
    let c = (
        "VERIFY (BYTCHK) of other bytes",
        cdb(0x8f, 2, lba, n),
        &other[..],
    );
    let sense = expect_in_turn(busy, quiet, lun, c, 0x02, &mut wrong, log);
    // MISCOMPARE DURING VERIFY OPERATION, INFORMATION (valid): the offset of the byte.
    let told = sense.get(..13).map(|s| {
        let info = u32::from_be_bytes([s[3], s[4], s[5], s[6]]);
        (s[0] & 0x80, s[2] & 0x0f, info, s[12])
    });
    if told != Some((0x80, 0x0e, off as u32, 0x1d)) {
        wrong.push(format!(
            "VERIFY (BYTCHK) of other bytes: sense {sense:02x?}"
        ));
    }
    let back = read_in_turn(busy, quiet, lun, lba, blocks, log);
    if back.iter().any(|&b| b != 0x3f) {
        wrong.push("ORWRITE: not 0x0f | 0x30 read back".into());
    }
    let c = ("WRITE SAME (NDOB)", cdb(0x93, 0x01, lba, n), &[][..]);
    expect_in_turn(busy, quiet, lun, c, 0, &mut wrong, log);
    let back = read_in_turn(busy, quiet, lun, lba, blocks, log);
    if back.iter().any(|&b| b != 0) {
        wrong.push("WRITE SAME (NDOB): not zeroes read back".into());
    }
    wrong
}

/// VERIFY (with BYTCHK and without), ORWRITE and a WRITE SAME with NDOB that writes zeroes
/// (no UNMAP), of 1 MiB each, of a quiet session while other sessions' commands wait for every
/// buffer the thread frees (1 MiB ones): each runs once its turn gives it its buffer. They
/// needed a second buffer (VERIFY for the medium, ORWRITE for the medium as its data-out filled
/// its own, WRITE SAME for the zeroes: it had none of its own), so each ended in TASK SET FULL
/// every time it was sent again for as long as the others kept waiting (but for an ORWRITE on
/// LUN 0, where the busy session writes: having waited for its writes in flight, it took the
/// buffer one of them freed, ahead of the commands waiting for one). On a LUN of 512-byte
/// blocks and one of 4 KiB blocks.
#[test]
fn verify_orwrite_and_zero_writing_write_same_run_while_other_sessions_wait_for_buffers() {
    let (_ds, vitd, mut busy, mut quiet, _) = crowded("verify", Freed::Large);
    let wrong = verify_orwrite_and_zeroes(&mut busy, &mut quiet, 1 << 20, &|| vitd.log_text());
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// The same while the buffers freed are 64 KiB ones, with commands that fit one: VERIFY,
/// ORWRITE and WRITE SAME with NDOB of 64 KiB, and COMPARE AND WRITE of 8 blocks of 4 KiB (64
/// KiB of data-out), whose medium did not fit past its data-out in its buffer: they needed a
/// second one, and ended in TASK SET FULL each time.
#[test]
fn commands_given_a_small_buffer_need_no_second_one() {
    let (_ds, vitd, mut busy, mut quiet, _) = crowded("small", Freed::Small);
    let log = || vitd.log_text();
    let mut wrong = verify_orwrite_and_zeroes(&mut busy, &mut quiet, 64 << 10, &log);
    let mut data = vec![0u8; 16 * 4096];
    data[8 * 4096..].fill(0x79);
    let c = cdb(0x89, 0, 4000, 8);
    let (status, full, _) = run_in_turn(&mut busy, &mut quiet, LUN1, c, &data, &log);
    if status != 0 {
        wrong.push(format!(
            "COMPARE AND WRITE (4 KiB): status {status:#04x} after {full} TASK SET FULL"
        ));
    } else if read_in_turn(&mut busy, &mut quiet, LUN1, 4000, 8, &log) != data[8 * 4096..] {
        wrong.push("COMPARE AND WRITE (4 KiB) did not write".into());
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
