//! Random sequences of initiator PDUs and data-thread events driven through one [`Conn`], as
//! the data thread drives it: whatever a peer sends, the connection must not panic, must keep
//! every data segment it accepts inside the buffer it chose, must only emit headers a peer can
//! decode, and must give every registered buffer back once the connection goes away.

use super::tests::{conn, feed_with};
use super::*;
use crate::iscsi::pdu::{
    DataOut, LogoutRequest, NopOut, SnackRequest, TargetPdu, TaskMgmtRequest, TextRequest,
};
use proptest::prelude::*;

/// What the peer or the data thread does next.
#[derive(Debug, Clone)]
enum Op {
    /// The peer sends a PDU.
    Pdu(PduSpec),
    /// A backing-store I/O handed out earlier completes (`pick` chooses which; `result` how).
    IoDone { pick: usize, result: u8 },
    /// The data thread sends the next `n` queued PDUs.
    Send { n: usize },
    /// The idle timer pings.
    Ping,
    /// The target asks the initiator to log out.
    RequestLogout,
}

/// A PDU, mostly well formed (so it reaches deep into the state machine), sometimes mutated.
#[derive(Debug, Clone)]
struct PduSpec {
    kind: u8,
    flags: u8,
    itt: u32,
    tag: u32,
    sn_delta: i8,
    lba: u16,
    blocks: u8,
    edtl_skew: i16,
    data_len: u32,
    cdb: [u8; 16],
    fill: u8,
    /// Byte positions of the header to overwrite, and with what.
    mutations: Vec<(u8, u8)>,
}

/// SCSI operation codes worth reaching: media access, the reservation and copy families, and
/// the inquiry-style commands.
const OPCODES: &[u8] = &[
    0x00, 0x03, 0x12, 0x1a, 0x25, 0x28, 0x2a, 0x2e, 0x2f, 0x35, 0x41, 0x42, 0x5a, 0x5e, 0x5f, 0x83,
    0x84, 0x88, 0x89, 0x8a, 0x8e, 0x8f, 0x91, 0x93, 0x9c, 0x9e, 0xa0, 0xa3,
];

fn pdu_spec() -> impl Strategy<Value = PduSpec> {
    (
        (
            prop_oneof![
                12 => 0u8..3,
                3 => Just(3u8),
                4 => 4u8..9,
                1 => Just(9u8),
                // A Login Request ends the connection: rare, or little else is reached.
                1 => Just(10u8),
            ],
            any::<u8>(),
            0u32..6,
            0u32..8,
            // CmdSN: mostly the expected one; behind or far off is dropped, ahead (a gap that
            // ERL 0 cannot fill) ends the connection: rare, or little else is reached.
            prop_oneof![20 => Just(0i8), 3 => -2i8..1, 1 => 1i8..4],
        ),
        (0u16..2100, 0u8..80, -600i16..600),
        (
            prop_oneof![
                3 => Just(0u32),
                3 => 1u32..5000,
                2 => 5000u32..40_000,
                1 => 40_000u32..70_000,
            ],
            any::<[u8; 16]>(),
            any::<u8>(),
            prop::collection::vec((0u8..48, any::<u8>()), 0..3),
        ),
    )
        .prop_map(
            |(
                (kind, flags, itt, tag, sn_delta),
                (lba, blocks, edtl_skew),
                (data_len, cdb, fill, mutations),
            )| PduSpec {
                kind,
                flags,
                itt,
                tag,
                sn_delta,
                lba,
                blocks,
                edtl_skew,
                data_len,
                cdb,
                fill,
                mutations,
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => pdu_spec().prop_map(Op::Pdu),
        3 => (any::<usize>(), 0u8..9).prop_map(|(pick, result)| Op::IoDone { pick, result }),
        3 => (0usize..6).prop_map(|n| Op::Send { n }),
        1 => Just(Op::Ping),
        1 => Just(Op::RequestLogout),
    ]
}

/// The header and data segment of `s`, numbered against the connection's current window.
fn build(s: &PduSpec, c: &Conn) -> ([u8; BHS_LEN], Vec<u8>) {
    let cmd_sn = c.seq.exp_cmd_sn.wrapping_add_signed(i32::from(s.sn_delta));
    let exp_stat_sn = c.seq.stat_sn;
    let immediate = s.flags & 0x40 != 0;
    let tag = if s.tag == 7 { RESERVED_TAG } else { s.tag };
    let mut data_len = s.data_len;
    let mut data = None;
    let mut bhs = [0u8; BHS_LEN];
    match s.kind {
        // A media read or write with a coherent CDB (READ/WRITE 10 or 16), or any opcode.
        0..=2 => {
            let write = s.kind == 1;
            let mut cdb = s.cdb;
            if s.kind < 2 {
                let blocks = u32::from(s.blocks);
                if s.flags & 1 == 0 {
                    cdb[0] = if write { 0x2a } else { 0x28 };
                    cdb[2..6].copy_from_slice(&u32::from(s.lba).to_be_bytes());
                    cdb[6] = 0;
                    cdb[7..9].copy_from_slice(&(blocks as u16).to_be_bytes());
                    cdb[9] = 0;
                } else {
                    cdb[0] = if write { 0x8a } else { 0x88 };
                    cdb[2..10].copy_from_slice(&u64::from(s.lba).to_be_bytes());
                    cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
                    cdb[14] = 0;
                    cdb[15] = 0;
                }
                cdb[1] &= 0x18; // DPO, FUA
            } else {
                cdb[0] = OPCODES[usize::from(s.cdb[0]) % OPCODES.len()];
            }
            let edtl = (u32::from(s.blocks) * 512).saturating_add_signed(i32::from(s.edtl_skew));
            let write = write || (s.kind == 2 && s.flags & 0x20 != 0);
            if !write {
                data_len = 0;
            } else if s.flags & 2 == 0 {
                data_len = data_len.min(edtl);
            }
            ScsiCommand {
                immediate,
                final_bit: s.flags & 0x80 != 0 || !write,
                read: !write || s.flags & 0x10 != 0,
                write,
                attr: s.flags & 7,
                lun: 0,
                itt: s.itt,
                expected_data_length: edtl,
                cmd_sn,
                exp_stat_sn,
                cdb,
                data_segment_length: data_len,
                ..Default::default()
            }
            .encode(&mut bhs);
        }
        3 => DataOut {
            final_bit: s.flags & 0x80 != 0,
            lun: 0,
            itt: s.itt,
            ttt: tag,
            exp_stat_sn,
            data_sn: u32::from(s.blocks % 4),
            buffer_offset: u32::from(s.lba % 64) * 512,
            data_segment_length: data_len,
            ..Default::default()
        }
        .encode(&mut bhs),
        4 => NopOut {
            immediate,
            lun: 0,
            itt: if s.flags & 4 == 0 {
                s.itt
            } else {
                RESERVED_TAG
            },
            ttt: tag,
            cmd_sn,
            exp_stat_sn,
            data_segment_length: data_len,
            ..Default::default()
        }
        .encode(&mut bhs),
        5 => TaskMgmtRequest {
            immediate,
            function: s.flags & 0x0f,
            lun: 0,
            itt: 0x100 + s.itt,
            referenced_task_tag: tag,
            cmd_sn,
            exp_stat_sn,
            ref_cmd_sn: cmd_sn.wrapping_sub(u32::from(s.blocks % 4)),
            ..Default::default()
        }
        .encode(&mut bhs),
        6 => {
            let text: &[u8] = match s.blocks % 4 {
                0 => b"SendTargets=All\0",
                1 => b"SendTargets=\0",
                2 => b"MaxRecvDataSegmentLength=4096\0X-vendor=1\0",
                _ => b"garbage",
            };
            data_len = text.len() as u32;
            data = Some(text.to_vec());
            TextRequest {
                immediate,
                final_bit: s.flags & 0x80 != 0,
                cont: s.flags & 0x10 != 0,
                lun: 0,
                itt: s.itt,
                ttt: tag,
                cmd_sn,
                exp_stat_sn,
                data_segment_length: data_len,
                ..Default::default()
            }
            .encode(&mut bhs);
        }
        7 => LogoutRequest {
            immediate,
            reason: s.flags & 3,
            itt: s.itt,
            cmd_sn,
            exp_stat_sn,
            data_segment_length: 0,
            ..Default::default()
        }
        .encode(&mut bhs),
        8 => SnackRequest {
            snack_type: s.flags & 0x0f,
            lun: 0,
            itt: s.itt,
            ttt: tag,
            exp_stat_sn,
            beg_run: u32::from(s.blocks),
            run_length: u32::from(s.lba % 4),
            ..Default::default()
        }
        .encode(&mut bhs),
        // A header of random bytes (data length as chosen).
        9 => {
            for (i, b) in bhs.iter_mut().enumerate() {
                *b = s.cdb[i % 16] ^ (i as u8).wrapping_mul(s.fill);
            }
            bhs[4] = 0;
            bhs[5..8].copy_from_slice(&data_len.to_be_bytes()[1..]);
        }
        // A Login Request in full feature phase.
        _ => {
            bhs[0] = 0x43;
            bhs[5..8].copy_from_slice(&data_len.to_be_bytes()[1..]);
        }
    }
    for &(at, v) in &s.mutations {
        // The AHS length and data segment length stay what the data says: the reader (tested
        // on its own) is what holds a peer to them.
        if !(4..8).contains(&at) {
            bhs[usize::from(at)] = v;
        }
    }
    let data = data.unwrap_or_else(|| vec![s.fill; data_len as usize]);
    (bhs, data)
}

fn result_of(r: u8) -> IoResult {
    match r {
        0..=3 => IoResult::Ok,
        4 => IoResult::ReadError(None),
        5 => IoResult::WriteError(Some(crate::scsi::Lba(3))),
        6 => IoResult::NoSpace,
        7 => IoResult::WriteProtected,
        _ => IoResult::Failed,
    }
}

/// Sends (as the data thread does: seal, then `sent`) up to `n` queued PDUs, checking each.
fn send(c: &mut Conn, pool: &mut BufferPool, n: usize) -> Result<(), TestCaseError> {
    for _ in 0..n {
        let Some(mut p) = c.pop_out() else {
            break;
        };
        c.seal(&mut p, pool);
        let hdr: &[u8; BHS_LEN] = p.header[..BHS_LEN].try_into().unwrap();
        prop_assert!(TargetPdu::decode(hdr).is_ok(), "undecodable header {hdr:?}");
        let dsl = u32::from_be_bytes([0, hdr[5], hdr[6], hdr[7]]) as usize;
        let len = match &p.data {
            OutData::None => 0,
            OutData::Slot { buf, offset, len } => {
                prop_assert!(
                    offset + len <= pool.len_of(*buf),
                    "Data-In beyond its buffer"
                );
                *len
            }
            OutData::Zeroes { len } => {
                prop_assert!(*len <= pool.max_len(), "zeroes beyond the zero mapping");
                *len
            }
            OutData::Sense { len, .. } => *len,
            OutData::Bytes(v) => v.len(),
        };
        prop_assert_eq!(dsl, len, "DataSegmentLength and the data sent differ");
        c.sent(&p, pool);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn any_peer_leaves_the_connection_sound(
        initial_r2t in any::<bool>(),
        discovery in prop::bool::weighted(0.2),
        ops in prop::collection::vec(op(), 1..120),
    ) {
        let (mut c, mut pool) = conn(initial_r2t);
        if discovery {
            // A discovery session: the same state machine with no target behind it.
            c.target = None;
        }
        let all = pool.available();
        let mut pending: Vec<IoWork> = Vec::new();
        for op in ops {
            match op {
                Op::Pdu(s) => {
                    let (bhs, data) = build(&s, &c);
                    let accepted = feed_with(&mut c, &mut pool, &bhs, &data);
                    prop_assert!(accepted.is_ok(), "a data segment was placed beyond its buffer");
                    pending.extend(c.io.drain(..));
                    if accepted.unwrap().is_err() {
                        break; // fatal: the data thread closes the connection
                    }
                }
                Op::IoDone { pick, result } => {
                    if !pending.is_empty() {
                        let w = pending.swap_remove(pick % pending.len());
                        c.io_done(w.task, result_of(result), &mut pool);
                        pending.extend(c.io.drain(..));
                    }
                }
                Op::Send { n } => send(&mut c, &mut pool, n)?,
                Op::Ping => c.ping(),
                Op::RequestLogout => c.request_logout(2),
            }
            prop_assert!(c.out.len() <= 1024, "output queue grows without bound");
        }
        // The connection goes away: what is in flight completes, the queue drains, all is freed.
        while let Some(w) = pending.pop() {
            c.io_done(w.task, IoResult::Ok, &mut pool);
            pending.extend(c.io.drain(..));
        }
        send(&mut c, &mut pool, usize::MAX)?;
        prop_assert_eq!(c.out_bytes(), 0, "queued bytes miscounted");
        c.release_all(&mut pool);
        prop_assert_eq!(pool.available(), all, "registered buffers leaked");
    }
}

/// What the data thread does besides feeding PDUs, once buffers can run out and other
/// sessions reset the LUN.
#[derive(Debug, Clone)]
enum Op2 {
    /// A PDU; `between` (when set) runs between its header and its end, as the data thread
    /// can while a receive fills the buffer `on_header` chose; `bad_digest`: its data segment
    /// (if any) fails its data digest.
    Pdu(PduSpec, Option<Between>, bool),
    /// A handed-out I/O starts (the data thread's checks) and completes.
    IoDone {
        pick: usize,
        result: u8,
    },
    Send {
        n: usize,
    },
    /// The data thread shares freed buffers out.
    Grant,
    /// Another session resets the LUN (its mail, and its wait for this session's writes).
    OtherReset,
    /// The once-a-second tick.
    Tick,
    /// The data thread looks whether the resets' waits are over.
    PollResets,
    /// The peer's stream ends (it half-closes), after the header of a PDU cut short there
    /// when given: nothing more is received.
    EndInput(Option<PduSpec>),
}

#[derive(Debug, Clone)]
enum Between {
    Grant,
    OtherReset,
    /// The data thread retries a deferred request: `check_task_mail`, then `may_write`.
    Retry(usize),
}

fn op2() -> impl Strategy<Value = Op2> {
    prop_oneof![
        8 => (pdu_spec(), prop::option::weighted(0.3, prop_oneof![
            Just(Between::Grant),
            Just(Between::OtherReset),
            any::<usize>().prop_map(Between::Retry),
        ]), prop::bool::weighted(0.1)).prop_map(|(s, b, d)| Op2::Pdu(s, b, d)),
        3 => (any::<usize>(), 0u8..9).prop_map(|(pick, result)| Op2::IoDone { pick, result }),
        3 => (0usize..6).prop_map(|n| Op2::Send { n }),
        3 => Just(Op2::Grant),
        1 => Just(Op2::OtherReset),
        1 => Just(Op2::Tick),
        2 => Just(Op2::PollResets),
        1 => prop::option::of(pdu_spec()).prop_map(Op2::EndInput),
    ]
}

fn other_reset(c: &Conn) {
    let other = crate::scsi::pr::ItNexusId {
        initiator: "iqn.2026-11.io.vit:other".into(),
        ..Default::default()
    };
    let shared = &c.target.as_ref().unwrap().luns[0].shared;
    shared.post(crate::daemon::shared::Mail::Reset {
        reason: SenseReason::BusDeviceResetFunction,
        from: other,
    });
}

/// The data thread's checks before a request's I/O starts (`start_file_io`, `submit_io`):
/// false when the task is given up (aborted), as `io_done(Failed)` then.
fn may_start(c: &mut Conn, w: &IoWork) -> bool {
    if c.aborted(w.task) {
        return false;
    }
    if w.req.kind.writes() {
        return c.may_write(w.task, 0);
    }
    true
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn any_peer_with_scarce_buffers_and_resets_leaves_the_connection_sound(
        initial_r2t in any::<bool>(),
        ops in prop::collection::vec(op2(), 1..150),
    ) {
        let (mut c, _) = conn(initial_r2t);
        let mut pool = BufferPool::new(&[(4096, 3), (65536, 2)]).unwrap();
        // Room on the heap for two first bursts: immediate data is kept there, and past it
        // discarded.
        pool.set_spill_limit(16 << 10);
        let all = pool.available();
        let mut pending: Vec<IoWork> = Vec::new();
        let mut tmf_answers: Vec<u32> = Vec::new();
        let mut ended = false;
        let mut take_out = |c: &mut Conn, pool: &mut BufferPool, n: usize| -> Result<(), TestCaseError> {
            for _ in 0..n {
                let Some(mut p) = c.pop_out() else { break };
                c.seal(&mut p, pool);
                let hdr: &[u8; BHS_LEN] = p.header[..BHS_LEN].try_into().unwrap();
                if let Ok(TargetPdu::TaskMgmt(r)) = TargetPdu::decode(hdr) {
                    tmf_answers.push(r.itt);
                }
                if let OutData::Slot { buf, .. } = &p.data {
                    prop_assert!(!pool.is_free(*buf), "Data-In from a free buffer");
                }
                c.sent(&p, pool);
            }
            Ok(())
        };
        for op in ops {
            match op {
                Op2::Pdu(s, between, bad_digest) => {
                    let (bhs, data) = build(&s, &c);
                    let dest = c.on_header(&bhs, data.len() as u32, &mut pool);
                    match between {
                        Some(Between::Grant) => { c.grant_buffer(&mut pool); }
                        Some(Between::OtherReset) => other_reset(&c),
                        Some(Between::Retry(pick)) if !pending.is_empty() => {
                            let i = pick % pending.len();
                            let w = pending[i];
                            c.check_task_mail(w.task);
                            if !may_start(&mut c, &w) {
                                pending.swap_remove(i);
                                c.io_done(w.task, IoResult::Failed, &mut pool);
                            }
                        }
                        _ => {}
                    }
                    match dest {
                        DataDest::Slot { buf, offset, .. } => {
                            prop_assert!(!pool.is_free(buf), "a receive into a buffer given back");
                            let Some(d) = pool.slice(buf).get_mut(offset..offset + data.len()) else {
                                return Err(TestCaseError::fail("data beyond its buffer"));
                            };
                            d.copy_from_slice(&data);
                        }
                        DataDest::Inline => {
                            prop_assert!(data.len() <= c.inline.capacity());
                            c.inline.extend_from_slice(&data);
                        }
                        DataDest::Discard => {}
                    }
                    if bad_digest && !data.is_empty() {
                        c.data_digest_error(&bhs, &mut pool);
                        pending.extend(c.io.drain(..));
                        continue;
                    }
                    let r = c.on_pdu(&bhs, &mut pool);
                    pending.extend(c.io.drain(..));
                    if r.is_err() {
                        break;
                    }
                }
                Op2::IoDone { pick, result } => {
                    if !pending.is_empty() {
                        let w = pending.swap_remove(pick % pending.len());
                        let r = if may_start(&mut c, &w) { result_of(result) } else { IoResult::Failed };
                        if let Some(b) = w.buf {
                            prop_assert!(!pool.is_free(b), "I/O into a free buffer");
                        }
                        c.io_done(w.task, r, &mut pool);
                        pending.extend(c.io.drain(..));
                    }
                }
                Op2::Send { n } => take_out(&mut c, &mut pool, n)?,
                Op2::Grant => {
                    c.grant_buffer(&mut pool);
                    pending.extend(c.io.drain(..));
                }
                Op2::OtherReset => other_reset(&c),
                Op2::Tick => { c.data_out_stall(); }
                Op2::PollResets => { c.poll_resets(&mut pool); }
                Op2::EndInput(cut) => {
                    if let Some(s) = cut {
                        let (bhs, data) = build(&s, &c);
                        c.on_header(&bhs, data.len() as u32, &mut pool);
                    }
                    c.end_input(&mut pool);
                    pending.extend(c.io.drain(..));
                    ended = true;
                    break;
                }
            }
            pending.extend(c.io.drain(..));
        }
        loop {
            while let Some(w) = pending.pop() {
                c.io_done(w.task, IoResult::Ok, &mut pool);
                pending.extend(c.io.drain(..));
            }
            take_out(&mut c, &mut pool, usize::MAX)?;
            if !c.grant_buffer(&mut pool) {
                break;
            }
            pending.extend(c.io.drain(..));
        }
        // After the end of the peer's stream, what it sent whole ends without it: once the I/O
        // has ended, the resets' waits are over and all is sent, nothing is left and every
        // buffer is back (the data thread then closes the connection).
        if ended {
            for _ in 0..3 {
                c.poll_resets(&mut pool);
                take_out(&mut c, &mut pool, usize::MAX)?;
            }
            prop_assert!(c.finished(), "unfinished after the end of the stream: {} tasks", c.busy);
            prop_assert_eq!(pool.available(), all, "a buffer kept after the end of the stream");
            prop_assert_eq!(pool.spilled(), 0, "heap kept after the end of the stream");
        }
        // Once all I/O has ended and all is sent, a command still waiting for a buffer waits
        // only on data the peer owes (a write collecting its Data-Out holds its buffer).
        if c.waiting_for_buffer() && !c.mid_pdu && !c.logging_out {
            let owed = c.tasks.iter().flatten().any(|t| t.state == super::TaskState::Receiving);
            prop_assert!(owed, "a command waits for a buffer nothing will free: {:?} free", pool.available());
        }
        c.release_all(&mut pool);
        prop_assert_eq!(pool.available(), all, "registered buffers leaked");
        prop_assert_eq!(pool.spilled(), 0, "heap allowance leaked");
        let shared = &c.target.as_ref().unwrap().luns[0].shared;
        prop_assert!(shared.write_start(0, 0, 4096), "a reset's wait outlived its session");
        shared.write_done(0);
        prop_assert!(shared.try_hold(0, 4096), "a reset's wait outlived its session");
        shared.release(0, 4096);
    }
}
