//! Session behaviours libiscsi's tools cannot trigger: reinstatement, dead peers, silence,
//! malformed PDUs in full feature phase. Driven by a minimal initiator (tests/common/initiator.rs).

mod common;
use common::*;
use std::time::Duration;
use vit::iscsi::initiator::{self, Session, login};
use vit::iscsi::pdu::TargetPdu;

const INITIATOR: &str = "iqn.2026-11.io.vit:test-initiator";

fn setup() -> (Datastore, Vitd) {
    serve_one("s", "8M")
}

fn good(s: &mut Session) {
    match s.test_unit_ready().unwrap() {
        TargetPdu::ScsiResponse(r) => assert_eq!(r.response, 0),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_login_with_the_same_name_and_isid_replaces_the_old_session() {
    let (ds, vitd) = setup();
    let isid = [0x80, 0, 0, 0x12, 0x34, 0x56];
    let mut old = login(ds.port, INITIATOR, &iqn("s"), isid);
    good(&mut old);
    // Another ISID is another session: both live.
    let mut other = login(ds.port, INITIATOR, &iqn("s"), [0x80, 0, 0, 0, 0, 9]);
    good(&mut other);
    let mut new = login(ds.port, INITIATOR, &iqn("s"), isid);
    good(&mut new);
    old.closed_within(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}: {}", vitd.log_text()));
    good(&mut other);
    good(&mut new);
}

#[test]
fn a_silent_peer_is_pinged_then_dropped_and_an_answering_one_kept() {
    let (ds, vitd) = setup();
    let mut silent = login(ds.port, INITIATOR, &iqn("s"), [0x80, 0, 0, 0, 0, 1]);
    let mut alive = login(ds.port, INITIATOR, &iqn("s"), [0x80, 0, 0, 0, 0, 2]);
    good(&mut silent);
    good(&mut alive);
    // The answering peer replies to every ping for as long as the silent one takes to be dropped.
    let answering = std::thread::spawn(move || {
        let mut pings = 0;
        alive
            .stream
            .set_read_timeout(Some(Duration::from_secs(25)))
            .unwrap();
        let end = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < end {
            match initiator::read_pdu(&mut alive.stream) {
                Ok((TargetPdu::NopIn(n), _)) => {
                    pings += 1;
                    alive.answer_ping(n.ttt).unwrap();
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        good(&mut alive);
        pings
    });
    let seen = silent
        .closed_within(Duration::from_secs(25))
        .unwrap_or_else(|e| panic!("{e}: {}", vitd.log_text()));
    assert!(
        seen.iter()
            .any(|p| matches!(p, TargetPdu::NopIn(n) if n.ttt != 0xffff_ffff)),
        "pinged first: {seen:?}"
    );
    let pings = answering.join().unwrap();
    assert!(pings >= 1, "the live peer was pinged too");
    assert!(
        vitd.log_text().contains("no answer to NOP-In"),
        "{}",
        vitd.log_text()
    );
}

#[test]
fn a_connection_that_never_logs_in_is_closed() {
    let (ds, _vitd) = setup();
    let mut s = Session {
        stream: std::net::TcpStream::connect(("127.0.0.1", ds.port)).unwrap(),
        cmd_sn: 0,
        exp_stat_sn: 0,
        itt: 0,
        digests: false,
    };
    s.closed_within(Duration::from_secs(25)).unwrap();
}

#[test]
fn malformed_pdus_in_full_feature_phase() {
    let (ds, _vitd) = setup();
    let mut s = login(ds.port, INITIATOR, &iqn("s"), [0x80, 0, 0, 0, 0, 3]);
    // An opcode no initiator may send: Reject, and the session goes on.
    let mut bhs = [0u8; 48];
    bhs[0] = 0x1d;
    s.raw(&bhs).unwrap();
    let (pdu, data) = initiator::read_pdu(&mut s.stream).unwrap();
    assert!(matches!(pdu, TargetPdu::Reject(_)), "{pdu:?}");
    assert_eq!(data, bhs.to_vec(), "the Reject carries the rejected header");
    good(&mut s);
    // A data segment beyond the negotiated MaxRecvDataSegmentLength closes this connection only.
    let mut other = login(ds.port, INITIATOR, &iqn("s"), [0x80, 0, 0, 0, 0, 4]);
    let mut bhs = [0u8; 48];
    bhs[0] = 0x01;
    bhs[1] = 0x80;
    bhs[5..8].copy_from_slice(&[0x7f, 0xff, 0xff]);
    s.raw(&bhs).unwrap();
    s.closed_within(Duration::from_secs(10)).unwrap();
    good(&mut other);
}

#[test]
fn header_and_data_digests_move_data() {
    // libiscsi has no data digests: this session negotiates CRC32C for both and checks every
    // digest the target sends (a wrong one fails the read).
    let (ds, vitd) = setup();
    let mut s = vit::iscsi::initiator::try_login_with(
        ds.port,
        INITIATOR,
        &iqn("s"),
        [0x80, 0, 0, 0, 0, 5],
        true,
    )
    .unwrap();
    assert!(s.digests);
    s.test_unit_ready().unwrap(); // the power-on unit attention
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    let write10 = [0x2a, 0, 0, 0, 0, 16, 0, 0, 8, 0];
    let r = s.command(0, &write10, &data, 0).unwrap();
    assert_eq!(r.status, 0, "{r:?}");
    let read10 = [0x28, 0, 0, 0, 0, 16, 0, 0, 8, 0];
    let r = s.command(0, &read10, &[], 4096).unwrap();
    assert_eq!(r.status, 0, "{r:?}");
    assert_eq!(r.data_in, data);
    // 64 KiB segments, back to back: each large enough that vitd receives the rest of it
    // straight into a registered buffer, its data digest and the next header in the same
    // receive; every byte must come back.
    let big: Vec<Vec<u8>> = (0..6u32)
        .map(|k| {
            (0..65536u32)
                .map(|i| (i * 13 + k * 101 + i / 4096) as u8)
                .collect()
        })
        .collect();
    for (k, d) in big.iter().enumerate() {
        let lba = 64 + 128 * k as u32;
        let mut write10 = [0x2a, 0, 0, 0, 0, 0, 0, 0, 128, 0];
        write10[2..6].copy_from_slice(&lba.to_be_bytes());
        let r = s.command(0, &write10, d, 0).unwrap();
        assert_eq!(r.status, 0, "{r:?}");
    }
    for (k, d) in big.iter().enumerate() {
        let lba = 64 + 128 * k as u32;
        let mut read10 = [0x28, 0, 0, 0, 0, 0, 0, 0, 128, 0];
        read10[2..6].copy_from_slice(&lba.to_be_bytes());
        let r = s.command(0, &read10, &[], 65536).unwrap();
        assert_eq!(r.status, 0, "{r:?}");
        assert!(r.data_in == *d, "64 KiB segment {k} came back different");
    }
    // A corrupted data digest is caught by the target: Reject, and the command does not complete.
    let mut bhs = [0u8; 48];
    let cmd = vit::iscsi::pdu::ScsiCommand {
        final_bit: true,
        write: true,
        attr: 1,
        itt: 0x77,
        expected_data_length: 512,
        cmd_sn: s.cmd_sn,
        exp_stat_sn: s.exp_stat_sn,
        cdb: [0x2a, 0, 0, 0, 0, 32, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
        data_segment_length: 512,
        ..Default::default()
    };
    cmd.encode(&mut bhs);
    let mut wire = bhs.to_vec();
    wire.extend_from_slice(&vit::iscsi::digest::header_digest(&bhs, &[]));
    wire.extend_from_slice(&[0x5a; 512]);
    wire.extend_from_slice(&[0, 0, 0, 0]); // not the CRC32C of the data
    s.raw(&wire).unwrap();
    let (pdu, _) = initiator::read_pdu_with(&mut s.stream, true).unwrap();
    assert!(
        matches!(pdu, TargetPdu::Reject(ref r) if r.reason == 0x02),
        "{pdu:?}: {}",
        vitd.log_text()
    );
}
