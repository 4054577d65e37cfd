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
    s.itt += 1;
    let mut cdb = [0u8; 16];
    cdb[0] = if read { 0x28 } else { 0x2a };
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
    let cmd = ScsiCommand {
        final_bit: true,
        read,
        write: !read,
        attr: 1,
        itt: s.itt,
        expected_data_length: u32::from(blocks) * 512,
        cmd_sn: s.cmd_sn,
        exp_stat_sn: s.exp_stat_sn,
        cdb,
        ..Default::default()
    };
    s.cmd_sn = s.cmd_sn.wrapping_add(1);
    let mut bhs = [0u8; BHS_LEN];
    cmd.encode(&mut bhs);
    s.stream.write_all(&frame(&bhs, &[], false)).unwrap();
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

/// A session whose queue of 64 KiB writes always has commands waiting for a buffer (each write
/// that ends is followed by a new one), and a quiet session's single 4 KiB read, on one data
/// thread whose every buffer is held: the buffers the busy session frees one at a time must not
/// all go back to it. (They did: the thread shared freed buffers out beginning with the first
/// connection in line every time, and a connection that never stops waiting stays first; the
/// quiet read was answered only once other sessions were dropped.)
#[test]
fn a_session_always_waiting_for_buffers_does_not_take_every_one_freed() {
    let (ds, vitd) = one_thread("fair");
    let log = || vitd.log_text();
    // Two sessions hold the 256 small buffers with writes whose data never comes.
    let mut holders: Vec<Session> = (0..2).map(|k| session(ds.port, "fair", 1 + k)).collect();
    for h in &mut holders {
        hold_buffers(h, 128, &log);
    }
    // The busy session holds the 32 large ones (a 64 KiB command takes one when no small one is
    // left) and has four more writes waiting: it is first in line.
    let mut busy = session(ds.port, "fair", 3);
    let mut open = hold_buffers(&mut busy, 32, &log);
    let mut next_lba = 32 * u32::from(HOLD_BLOCKS);
    for _ in 0..4 {
        send_rw(&mut busy, false, next_lba, HOLD_BLOCKS);
        next_lba += u32::from(HOLD_BLOCKS);
    }
    // The quiet session's 4 KiB read waits behind it.
    let mut quiet = session(ds.port, "fair", 4);
    let quiet_itt = send_rw(&mut quiet, true, 120_000, 8);
    // The busy session completes writes one at a time, each followed by a new one: one buffer
    // freed at a time, and it always has commands waiting.
    let data = vec![0x5au8; HOLD_BYTES];
    let rounds = 16;
    for round in 0..rounds {
        let (itt, ttt) = open.pop_front().expect("an open R2T");
        let d = DataOut {
            final_bit: true,
            itt,
            ttt,
            exp_stat_sn: busy.exp_stat_sn,
            data_segment_length: HOLD_BYTES as u32,
            ..Default::default()
        };
        let mut bhs = [0u8; BHS_LEN];
        d.encode(&mut bhs);
        busy.stream.write_all(&frame(&bhs, &data, false)).unwrap();
        loop {
            match read_pdu(&mut busy.stream) {
                Ok((TargetPdu::R2t(r), _)) => open.push_back((r.itt, r.ttt)),
                Ok((TargetPdu::ScsiResponse(r), _)) if r.itt == itt => {
                    assert_eq!(r.status, 0, "round {round}\n{}", log());
                    busy.exp_stat_sn = r.stat_sn.wrapping_add(1);
                    break;
                }
                Ok((TargetPdu::NopIn(_), _)) => {}
                other => panic!("round {round}: {other:?}\n{}", log()),
            }
        }
        send_rw(&mut busy, false, next_lba, HOLD_BLOCKS);
        next_lba += u32::from(HOLD_BLOCKS);
    }
    // The quiet read got one of the buffers freed meanwhile. (Nothing frees another now: the
    // holders' writes wait for the stall timeout, and they are pinged only after 5 s idle.)
    quiet
        .stream
        .set_read_timeout(Some(Duration::from_secs(4)))
        .unwrap();
    let answer = loop {
        match read_pdu(&mut quiet.stream) {
            Ok((TargetPdu::NopIn(_), _)) => {}
            Ok(a) => break a,
            Err(e) => panic!(
                "the quiet 4 KiB read is unanswered after the busy session completed {rounds} \
                 writes one at a time ({e})\n{}",
                log()
            ),
        }
    };
    match answer {
        (TargetPdu::DataIn(d), bytes) => {
            assert!(
                d.itt == quiet_itt && d.status_present && d.status == 0,
                "{d:?}"
            );
            assert!(bytes == [0u8; 4096], "the quiet read returned other bytes");
        }
        other => panic!("quiet read: {other:?}"),
    }
    assert!(!log().contains("panicked"), "{}", log());
}
