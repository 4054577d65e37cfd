//! Command-level tests of the device server through [`execute`].

use super::lun::*;
use super::opcodes::OPCODES;
use super::sense::SenseReason;
use super::test_support::{Run, cdb10, cdb16, done, exec_on, good, io};
use proptest::prelude::*;

const NAME: &str = "iqn.2026-01.com.example:t1";

fn server() -> DeviceServer {
    let mut ro = LunInfo::new(1, 4096, 1 << 33, 0x0123_4567_89AB_CDEF, "RO1");
    ro.read_only = true;
    ro.write_cache_enabled = false;
    let mut l0 = LunInfo::new(0, 512, 1000, 0x1122_3344_5566_7788, "SER0");
    l0.max_transfer_blocks = 128;
    l0.optimal_transfer_blocks = 64;
    let big = LunInfo::new(300, 512, 10, 3, "S300");
    DeviceServer::new(vec![big, ro, l0]).expect("valid LUNs")
}

fn port() -> TargetPort {
    TargetPort {
        target_name: NAME.to_owned(),
        portal_group_tag: 1,
        relative_port_id: 1,
        target_ports: 1,
    }
}

/// A nexus with no unit attention pending.
fn quiet() -> Nexus {
    Nexus::without_attention(port())
}

/// A nexus just logged in.
fn fresh(s: &DeviceServer) -> Nexus {
    Nexus::new(port(), s)
}

fn run_with(s: &DeviceServer, n: &mut Nexus, lun: u16, cdb: &[u8], data_out: &[u8]) -> Run {
    exec_on(s, n, None, lun, cdb, data_out)
}

fn run(lun: u16, cdb: &[u8]) -> Run {
    run_with(&server(), &mut quiet(), lun, cdb, &[])
}

use super::test_support::sense_of as sense;

const TUR: [u8; 6] = [0; 6];

#[test]
fn lun_definitions_are_validated() {
    let ok = LunInfo::new(0, 512, 10, 1, "A");
    let mut bad = ok.clone();
    bad.block_size = 1000;
    assert_eq!(
        DeviceServer::new(vec![bad]).err(),
        Some(LunConfigError::BlockSize { id: 0, size: 1000 })
    );
    assert_eq!(
        DeviceServer::new(vec![ok.clone(), ok.clone()]).err(),
        Some(LunConfigError::Duplicate { id: 0 })
    );
    let mut bad = ok.clone();
    bad.num_blocks = u64::MAX;
    assert!(matches!(
        DeviceServer::new(vec![bad]),
        Err(LunConfigError::Capacity { .. })
    ));
    let mut bad = ok.clone();
    bad.id = MAX_LUN_ID + 1;
    let err = DeviceServer::new(vec![bad]).expect_err("id too large");
    assert_eq!(err.to_string(), "LUN 16384: id is above 16383");
    let mut bad = ok;
    bad.max_transfer_blocks = 0;
    assert!(matches!(
        DeviceServer::new(vec![bad]),
        Err(LunConfigError::TransferLimits { .. })
    ));
}

// ---- unit attentions ----

#[test]
fn new_nexus_reports_power_on_reset_once() {
    let s = server();
    let mut n = fresh(&s);
    let r = run_with(&s, &mut n, 0, &TUR, &[]);
    assert_eq!(sense(done(&r)), (0x06, 0x29, 0x00, [0, 0, 0]));
    good(&run_with(&s, &mut n, 0, &TUR, &[]));
    // Each LUN has its own condition.
    let r = run_with(&s, &mut n, 1, &TUR, &[]);
    assert_eq!(sense(done(&r)).1, 0x29);
}

#[test]
fn inquiry_report_luns_request_sense_do_not_consume_ua_except_request_sense() {
    let s = server();
    let mut n = fresh(&s);
    good(&run_with(&s, &mut n, 0, &[0x12, 0, 0, 0, 36, 0], &[]));
    good(&run_with(
        &s,
        &mut n,
        0,
        &[0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
        &[],
    ));
    let r = run_with(&s, &mut n, 0, &[0x03, 0, 0, 0, 18, 0], &[]);
    good(&r);
    assert_eq!(
        (r.data[0], r.data[2], r.data[12], r.data[13]),
        (0x70, 0x06, 0x29, 0x00)
    );
    // The condition was reported: nothing left.
    good(&run_with(&s, &mut n, 0, &TUR, &[]));
    let r = run_with(&s, &mut n, 0, &[0x03, 0, 0, 0, 18, 0], &[]);
    assert_eq!((r.data[2], r.data[12], r.data[13]), (0, 0, 0));
}

#[test]
fn ua_ordering_and_report_luns_clears_luns_changed() {
    let s = server();
    let mut n = quiet();
    n.post(0, SenseReason::CapacityDataChanged);
    n.post(0, SenseReason::ModeParametersChanged);
    assert_eq!(sense(done(&run_with(&s, &mut n, 0, &TUR, &[]))).1, 0x2A);
    let r = run_with(&s, &mut n, 0, &TUR, &[]);
    assert_eq!(sense(done(&r)), (0x06, 0x2A, 0x01, [0, 0, 0]));
    good(&run_with(&s, &mut n, 0, &TUR, &[]));

    n.post(0, SenseReason::ReportedLunsDataChanged);
    good(&run_with(
        &s,
        &mut n,
        0,
        &[0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
        &[],
    ));
    good(&run_with(&s, &mut n, 0, &TUR, &[]));

    n.post(0, SenseReason::ReportedLunsDataChanged);
    let r = run_with(&s, &mut n, 0, &TUR, &[]);
    assert_eq!(sense(done(&r)), (0x06, 0x3F, 0x0E, [0, 0, 0]));
}

#[test]
fn configuration_change_posts_unit_attentions() {
    let old = server();
    let mut luns = old.luns().to_vec();
    luns.retain(|l| l.id != 300);
    luns[0].num_blocks = 2000; // LUN 0 grows
    luns[1].write_cache_enabled = true; // LUN 1 turns its cache on
    let new = DeviceServer::new(luns).expect("valid");
    let mut n = quiet();
    n.post(300, SenseReason::CapacityDataChanged);
    n.apply_change(&old, &new);
    let mut tur = |lun| done(&run_with(&new, &mut n, lun, &TUR, &[]));
    assert_eq!(sense(tur(0)), (0x06, 0x3F, 0x0E, [0, 0, 0]));
    assert_eq!(sense(tur(0)), (0x06, 0x2A, 0x09, [0, 0, 0]));
    assert_eq!(tur(0).status, Status::Good);
    assert_eq!(sense(tur(1)), (0x06, 0x3F, 0x0E, [0, 0, 0]));
    assert_eq!(sense(tur(1)), (0x06, 0x2A, 0x01, [0, 0, 0]));
    assert_eq!(tur(1).status, Status::Good);
    assert_eq!(sense(tur(300)), (0x05, 0x25, 0x00, [0, 0, 0]));
    assert!(
        n.queue_mut(300).is_none(),
        "queue of a removed LUN is dropped"
    );
}

#[test]
fn request_sense_desc_format() {
    let s = server();
    let mut n = fresh(&s);
    let r = run_with(&s, &mut n, 0, &[0x03, 1, 0, 0, 252, 0], &[]);
    good(&r);
    assert_eq!(r.data, vec![0x72, 0x06, 0x29, 0x00, 0, 0, 0, 0]);
}

// ---- unknown LUN ----

#[test]
fn unknown_lun() {
    let r = run(7, &[0x12, 0, 0, 0, 96, 0]);
    good(&r);
    assert_eq!(r.data[0], 0x7F);
    assert_eq!(r.data.len(), 96);
    assert_eq!(sense(done(&run(7, &TUR))), (0x05, 0x25, 0x00, [0, 0, 0]));
    assert_eq!(sense(done(&run(7, &[0x12, 1, 0x80, 0, 96, 0]))).1, 0x25);
    let r = run(7, &[0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
    good(&r);
    assert_eq!(r.data[3], 24);
    let r = run(7, &[0x03, 0, 0, 0, 18, 0]);
    good(&r);
    assert_eq!((r.data[2], r.data[12], r.data[13]), (0x05, 0x25, 0x00));
    // A LUN field in another addressing method addresses nothing.
    let s = server();
    let mut buf = [0u8; 64];
    let out = execute(
        &s,
        &mut quiet(),
        &Request {
            lun: [0xC1, 0, 0, 0, 0, 0, 0, 0],
            cdb: &TUR,
            data_out: &[],
        },
        &mut buf,
    );
    let Outcome::Done(c) = out else { panic!() };
    assert_eq!(sense(c).1, 0x25);
}

#[test]
fn lun_addressing_round_trip() {
    assert_eq!(encode_lun(5), [0, 5, 0, 0, 0, 0, 0, 0]);
    assert_eq!(encode_lun(300), [0x41, 0x2C, 0, 0, 0, 0, 0, 0]);
    for id in [0u16, 1, 255, 256, 300, MAX_LUN_ID] {
        assert_eq!(decode_lun(encode_lun(id)), Some(id));
    }
    assert_eq!(decode_lun([0, 1, 0, 0, 0, 0, 0, 1]), None);
    assert_eq!(decode_lun([0x01, 1, 0, 0, 0, 0, 0, 0]), None); // bus 1
}

// ---- INQUIRY ----

#[test]
fn standard_inquiry_layout() {
    let r = run(0, &[0x12, 0, 0, 0x01, 0x04, 0]);
    good(&r);
    let d = &r.data;
    assert_eq!(d.len(), 96);
    // TPGS 01b (implicit ALUA) and 3PC in byte 5.
    assert_eq!(&d[..8], &[0x00, 0x00, 0x06, 0x12, 91, 0x18, 0x00, 0x02]);
    assert_eq!(&d[8..16], b"VIT     ");
    assert_eq!(&d[16..32], b"VIRTUAL DISK    ");
    assert_eq!(&d[32..36], b"0001");
    assert!(d[36..58].iter().all(|&b| b == 0));
    assert_eq!(
        &d[58..66],
        &[0x00, 0xA0, 0x04, 0x60, 0x04, 0xC0, 0x09, 0x60]
    );
    assert!(d[66..].iter().all(|&b| b == 0));
}

#[test]
fn inquiry_truncated_to_allocation_length() {
    let r = run(0, &[0x12, 0, 0, 0, 5, 0]);
    good(&r);
    assert_eq!(r.data, vec![0x00, 0x00, 0x06, 0x12, 91]);
    let r = run(0, &[0x12, 0, 0, 0, 0, 0]);
    good(&r);
    assert!(r.data.is_empty());
}

#[test]
fn vpd_supported_pages_and_serial() {
    let r = run(0, &[0x12, 1, 0x00, 0, 255, 0]);
    good(&r);
    assert_eq!(
        r.data,
        vec![0, 0, 0, 8, 0x00, 0x80, 0x83, 0x86, 0x8F, 0xB0, 0xB1, 0xB2]
    );
    let r = run(0, &[0x12, 1, 0x80, 0, 255, 0]);
    good(&r);
    assert_eq!(r.data, b"\x00\x80\x00\x04SER0".to_vec());
}

#[test]
fn vpd_device_identification_layout() {
    let r = run(0, &[0x12, 1, 0x83, 0x01, 0x00, 0]);
    good(&r);
    let d = &r.data;
    let mut want = vec![0x00, 0x83, 0, 0];
    // NAA 6 designator.
    want.extend([0x01, 0x03, 0, 16]);
    let naa = 0x1122_3344_5566_7788u64;
    want.extend(((6u64 << 60) | (naa >> 28)).to_be_bytes());
    want.extend(naa.to_be_bytes());
    // T10 vendor id.
    want.extend([0x02, 0x01, 0, 12]);
    want.extend(b"VIT     SER0");
    // Relative target port.
    want.extend([0x51, 0x94, 0, 4, 0, 0, 0, 1]);
    // Target port group 1.
    want.extend([0x01, 0x15, 0, 4, 0, 0, 0, 1]);
    // Target port name, null terminated and padded to 4.
    let port = format!("{NAME},t,0x0001");
    let plen = (port.len() + 1).next_multiple_of(4);
    want.extend([0x53, 0x98, 0, plen as u8]);
    want.extend(port.as_bytes());
    want.resize(want.len() + plen - port.len(), 0);
    // Target device name.
    let tlen = (NAME.len() + 1).next_multiple_of(4);
    want.extend([0x53, 0xA8, 0, tlen as u8]);
    want.extend(NAME.as_bytes());
    want.resize(want.len() + tlen - NAME.len(), 0);
    let page_len = (want.len() - 4) as u16;
    want[2..4].copy_from_slice(&page_len.to_be_bytes());
    assert_eq!(d, &want);
}

#[test]
fn vpd_block_pages() {
    let r = run(0, &[0x12, 1, 0xB0, 0, 255, 0]);
    good(&r);
    assert_eq!(r.data.len(), 64);
    assert_eq!(&r.data[..4], &[0, 0xB0, 0, 0x3C]);
    assert_eq!(&r.data[8..12], &128u32.to_be_bytes());
    assert_eq!(&r.data[12..16], &64u32.to_be_bytes());
    let r = run(0, &[0x12, 1, 0xB1, 0, 255, 0]);
    assert_eq!(
        (r.data.len(), &r.data[..6]),
        (64, &[0, 0xB1, 0, 0x3C, 0, 1][..])
    );
    let r = run(0, &[0x12, 1, 0xB2, 0, 255, 0]);
    assert_eq!(r.data, vec![0, 0xB2, 0, 4, 0, 0, 0, 0]);
    let r = run(0, &[0x12, 1, 0x86, 0, 255, 0]);
    assert_eq!(
        (r.data.len(), &r.data[..8]),
        (64, &[0, 0x86, 0, 0x3C, 0, 1, 1, 1][..])
    );
    let r = run(0, &[0x12, 1, 0x99, 0, 255, 0]);
    assert_eq!(sense(done(&r)), (0x05, 0x24, 0x00, [0xC0, 0, 2]));
}

/// A physical block larger than the MAXIMUM TRANSFER LENGTH (an 8 MiB `pblocksize`, 1 MiB
/// transfers) gives no OPTIMAL TRANSFER LENGTH GRANULARITY above it: no command could meet it,
/// and Linux then drops the OPTIMAL TRANSFER LENGTH as not its multiple (QEMU caps it alike).
#[test]
fn optimal_transfer_granularity_stays_within_the_maximum_transfer() {
    let mut l = LunInfo::new(0, 512, 1 << 20, 1, "G");
    l.max_transfer_blocks = 2048;
    l.optimal_transfer_blocks = 2048;
    l.physical_exp = 14;
    let s = DeviceServer::new(vec![l]).unwrap();
    let r = run_with(&s, &mut quiet(), 0, &[0x12, 1, 0xB0, 0, 255, 0], &[]);
    good(&r);
    let granularity = u16::from_be_bytes([r.data[6], r.data[7]]);
    let max = u32::from_be_bytes(r.data[8..12].try_into().unwrap());
    let optimal = u32::from_be_bytes(r.data[12..16].try_into().unwrap());
    assert_eq!((granularity, max, optimal), (2048, 2048, 2048));
    // READ CAPACITY (16) still gives the physical block.
    let r = run_with(&s, &mut quiet(), 0, &cdb16(0x9E, 0x10, 0, 32), &[]);
    assert_eq!(r.data[13] & 0x0f, 14);
}

// ---- READ CAPACITY ----

#[test]
fn read_capacity_values() {
    let r = run(0, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(r.data, vec![0, 0, 0x03, 0xE7, 0, 0, 0x02, 0x00]);
    // 2^33 blocks: too large for READ CAPACITY (10).
    let r = run(1, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(r.data, vec![0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x10, 0x00]);
    let r = run(1, &cdb16(0x9E, 0x10, 0, 32));
    let mut want = vec![0, 0, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x10, 0];
    want.resize(32, 0);
    assert_eq!(r.data, want);
    let r = run(1, &cdb16(0x9E, 0x10, 0, 12));
    assert_eq!(r.data.len(), 12);
}

// ---- media commands ----

#[test]
fn read_and_write_become_io_requests() {
    let r = run(0, &cdb16(0x88, 0x08, 10, 4));
    assert_eq!(
        io(&r),
        IoRequest {
            kind: IoKind::Read,
            lba: super::cdb::Lba(10),
            blocks: super::cdb::Blocks(4),
            byte_offset: 5120,
            byte_len: 2048,
            data_out_len: 0,
            fua: true,
            dpo: false,
        }
    );
    let w = io(&run(0, &cdb10(0x2A, 0, 999, 1)));
    assert_eq!((w.kind, w.data_out_len, w.fua), (IoKind::Write, 512, false));
    let w6 = io(&run(1, &[0x08, 0, 0, 0, 0, 0]));
    assert_eq!(w6.blocks.0, 256);
    let w12 = io(&run(300, &[0xAA, 0, 0, 0, 0, 2, 0, 0, 0, 8, 0, 0]));
    assert_eq!((w12.lba.0, w12.blocks.0), (2, 8));
}

#[test]
fn out_of_range_and_zero_length() {
    assert_eq!(
        sense(done(&run(0, &cdb10(0x28, 0, 999, 2)))),
        (0x05, 0x21, 0x00, [0, 0, 0])
    );
    assert_eq!(sense(done(&run(0, &cdb16(0x88, 0, u64::MAX, 1)))).1, 0x21);
    good(&run(0, &cdb10(0x28, 0, 0, 0)));
    good(&run(0, &cdb10(0x28, 0, 1000, 0)));
    assert_eq!(sense(done(&run(0, &cdb10(0x28, 0, 1001, 0)))).1, 0x21);
    assert_eq!(sense(done(&run(0, &[0x08, 0, 0x03, 0xE8, 1, 0]))).1, 0x21);
}

#[test]
fn transfer_length_over_block_limits_is_invalid_field() {
    let r = run(0, &cdb10(0x28, 0, 0, 129));
    assert_eq!(sense(done(&r)), (0x05, 0x24, 0x00, [0xC0, 0, 7]));
    let r = run(0, &cdb16(0x8A, 0, 0, 129));
    assert_eq!(sense(done(&r)).3, [0xC0, 0, 10]);
}

#[test]
fn write_protected_and_write_through() {
    assert_eq!(
        sense(done(&run(1, &cdb10(0x2A, 0, 0, 1)))),
        (0x07, 0x27, 0x00, [0, 0, 0])
    );
    assert_eq!(sense(done(&run(1, &cdb10(0x2E, 0, 0, 1)))).0, 0x07);
    // Reads on the read-only LUN still work; its cache is off.
    assert_eq!(io(&run(1, &cdb10(0x28, 0, 0, 1))).byte_len, 4096);
    let mut rw = server().luns()[1].clone();
    rw.read_only = false;
    let s = DeviceServer::new(vec![rw]).expect("valid");
    let r = run_with(&s, &mut quiet(), 1, &cdb10(0x2A, 0, 0, 1), &[]);
    assert!(io(&r).fua, "writes are write-through without a write cache");
}

#[test]
fn write_and_verify_goes_through_the_write_cache() {
    // LUN 0 has its write cache on: a plain write may stay in it, WRITE AND VERIFY may not.
    assert!(!io(&run(0, &cdb10(0x2A, 0, 0, 1))).fua);
    for op in [0x2E, 0xAE, 0x8E] {
        let cdb = match op {
            0x2E => cdb10(op, 0, 0, 1).to_vec(),
            0xAE => vec![op, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0],
            _ => cdb16(op, 0, 0, 1).to_vec(),
        };
        let w = io(&run(0, &cdb));
        assert!(
            matches!(w.kind, IoKind::WriteVerify { .. }) && w.fua,
            "{op:#x}: {w:?}"
        );
    }
}

#[test]
fn rdprotect_and_reserved_bits_point_at_field() {
    // RDPROTECT = 011b: the three-bit field is pointed at its left-most bit, byte 1 bit 7.
    let r = run(0, &cdb10(0x28, 0x60, 0, 1));
    assert_eq!(sense(done(&r)), (0x05, 0x24, 0x00, [0xCF, 0, 1]));
}

#[test]
fn verify_and_miscompare() {
    let v = io(&run(0, &cdb10(0x2F, 0x02, 0, 2)));
    assert_eq!(
        (v.kind, v.data_out_len),
        (IoKind::Verify { bytchk: true }, 1024)
    );
    let v = io(&run(0, &cdb10(0x2F, 0, 0, 2)));
    assert_eq!(
        (v.kind, v.data_out_len),
        (IoKind::Verify { bytchk: false }, 0)
    );
    let media = [1u8; 1024];
    let mut out = media;
    out[700] = 2;
    let off = first_mismatch(&media, &out).expect("differs");
    assert_eq!(off, 700);
    assert_eq!(first_mismatch(&media, &media), None);
    assert_eq!(first_mismatch(&media[..10], &media[..11]), Some(10));
    let c = complete_io(&v, IoResult::Miscompare(off as u64));
    assert_eq!(sense(c), (0x0E, 0x1D, 0x00, [0, 0, 0]));
    let b = c.sense.expect("sense");
    assert_eq!(&b.as_bytes()[..7], &[0xF0, 0, 0x0E, 0, 0, 0x02, 0xBC]);
}

#[test]
fn complete_io_statuses() {
    let rd = io(&run(0, &cdb10(0x28, 0, 0, 1)));
    assert_eq!(complete_io(&rd, IoResult::Ok), Completion::good(512));
    let c = complete_io(&rd, IoResult::ReadError(Some(super::cdb::Lba(5))));
    assert_eq!(sense(c), (0x03, 0x11, 0x00, [0, 0, 0]));
    assert_eq!(c.sense.expect("sense").as_bytes()[6], 5);
    assert_eq!(sense(complete_io(&rd, IoResult::WriteError(None))).1, 0x0C);
    assert_eq!(
        sense(complete_io(&rd, IoResult::Failed)),
        (0x04, 0x44, 0x00, [0, 0, 0])
    );
}

#[test]
fn synchronize_cache() {
    let s = io(&run(0, &cdb10(0x35, 0x02, 10, 0)));
    assert_eq!(s.kind, IoKind::Sync { immed: true });
    assert_eq!(sense(done(&run(0, &cdb16(0x91, 0, 990, 11)))).1, 0x21);
}

// ---- MODE SENSE / MODE SELECT ----

#[test]
fn mode_sense6_all_pages() {
    let r = run(0, &[0x1A, 0, 0x3F, 0, 255, 0]);
    good(&r);
    let d = &r.data;
    assert_eq!(d.len(), 4 + 8 + 20 + 12 + 12);
    assert_eq!(&d[..4], &[55, 0, 0x10, 8]);
    assert_eq!(&d[4..12], &[0, 0, 0x03, 0xE8, 0, 0, 0x02, 0]);
    assert_eq!(&d[12..15], &[0x08, 0x12, 0x04]); // WCE set
    assert_eq!(&d[32..34], &[0x0A, 0x0A]);
    assert_eq!(&d[44..47], &[0x1C, 0x0A, 0x08]);
    // DBD drops the block descriptor; allocation length truncates.
    let r = run(0, &[0x1A, 0x08, 0x3F, 0, 255, 0]);
    assert_eq!(&r.data[..4], &[47, 0, 0x10, 0]);
    let r = run(0, &[0x1A, 0, 0x3F, 0, 4, 0]);
    assert_eq!(r.data, vec![55, 0, 0x10, 8]);
}

#[test]
fn mode_sense10_long_lba_and_write_protect() {
    let r = run(1, &[0x5A, 0x10, 0x08, 0, 0, 0, 0, 0, 255, 0]);
    good(&r);
    let d = &r.data;
    assert_eq!(d.len(), 8 + 16 + 20);
    assert_eq!(&d[..8], &[0, 42, 0, 0x90, 1, 0, 0, 16]);
    assert_eq!(&d[8..16], &(1u64 << 33).to_be_bytes());
    assert_eq!(&d[20..24], &4096u32.to_be_bytes());
    assert_eq!(d[26], 0, "WCE clear on the read-only LUN");
}

#[test]
fn mode_sense_errors_and_changeable() {
    assert_eq!(
        sense(done(&run(0, &[0x1A, 0, 0xC8, 0, 255, 0]))),
        (0x05, 0x39, 0x00, [0, 0, 0])
    );
    assert_eq!(
        sense(done(&run(0, &[0x1A, 0, 0x19, 0, 255, 0]))).3,
        [0xCD, 0, 2]
    );
    assert_eq!(
        sense(done(&run(0, &[0x1A, 0, 0x08, 1, 255, 0]))).3,
        [0xC0, 0, 3]
    );
    let r = run(0, &[0x1A, 0x08, 0x48, 0, 255, 0]);
    assert_eq!(
        r.data,
        [&[23u8, 0, 0x10, 0, 0x08, 0x12][..], &[0; 18]].concat()
    );
}

#[test]
fn mode_sense_subpage_ff_of_one_page_returns_that_page() {
    // Page 08h with subpage FFh: the page and all its subpages, here the caching page alone.
    let one = run(0, &[0x1A, 0x08, 0x08, 0, 255, 0]);
    let all_sub = run(0, &[0x1A, 0x08, 0x08, 0xFF, 255, 0]);
    good(&all_sub);
    assert_eq!(all_sub.data, one.data);
    assert_eq!(&all_sub.data[4..6], &[0x08, 0x12]);
    let ten = run(0, &[0x5A, 0x08, 0x0A, 0xFF, 0, 0, 0, 0, 255, 0]);
    good(&ten);
    assert_eq!(&ten.data[8..10], &[0x0A, 0x0A]);
    // An unsupported page stays refused at its page code, another subpage at the subpage.
    assert_eq!(
        sense(done(&run(0, &[0x1A, 0, 0x19, 0xFF, 255, 0]))).3,
        [0xCD, 0, 2]
    );
    assert_eq!(
        sense(done(&run(0, &[0x1A, 0, 0x08, 0xFE, 255, 0]))).3,
        [0xC0, 0, 3]
    );
}

#[test]
fn mode_select_accepts_no_change_and_rejects_change() {
    let s = server();
    let mut n = quiet();
    let cur = run_with(&s, &mut n, 0, &[0x1A, 0, 0x3F, 0, 255, 0], &[]).data;
    let mut list = cur.clone();
    list[0] = 0;
    list[2] = 0;
    let len = list.len() as u8;
    good(&run_with(&s, &mut n, 0, &[0x15, 0x10, 0, 0, len, 0], &list));
    // Clearing WCE (byte 2 of the caching page, at offset 12 + 2) is a change.
    let mut changed = list.clone();
    changed[14] = 0;
    let r = run_with(&s, &mut n, 0, &[0x15, 0x10, 0, 0, len, 0], &changed);
    assert_eq!(sense(done(&r)), (0x05, 0x26, 0x00, [0x8A, 0, 14]));
    // A list shorter than the header.
    let r = run_with(&s, &mut n, 0, &[0x15, 0x10, 0, 0, 2, 0], &list);
    assert_eq!(sense(done(&r)).1, 0x1A);
    // Data-out shorter than the parameter list length.
    let r = run_with(&s, &mut n, 0, &[0x15, 0x10, 0, 0, 200, 0], &list);
    assert_eq!(sense(done(&r)).1, 0x1A);
    // SP = 1: saving is not supported.
    let r = run_with(&s, &mut n, 0, &[0x15, 0x11, 0, 0, len, 0], &list);
    assert_eq!(sense(done(&r)).3, [0xC8, 0, 1]);
    // MODE SELECT (10) with an empty list.
    good(&run_with(
        &s,
        &mut n,
        0,
        &[0x55, 0x10, 0, 0, 0, 0, 0, 0, 0, 0],
        &[],
    ));
    // A different block length.
    let mut bl = list.clone();
    bl[10] = 0x10;
    let r = run_with(&s, &mut n, 0, &[0x15, 0x10, 0, 0, len, 0], &bl);
    assert_eq!(sense(done(&r)).3, [0x80, 0, 9]);
}

// ---- REPORT LUNS / RSOC / misc ----

#[test]
fn report_luns_layout() {
    let r = run(0, &[0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
    let mut want = vec![0, 0, 0, 24, 0, 0, 0, 0];
    want.extend([0, 0, 0, 0, 0, 0, 0, 0]);
    want.extend([0, 1, 0, 0, 0, 0, 0, 0]);
    want.extend([0x41, 0x2C, 0, 0, 0, 0, 0, 0]);
    assert_eq!(r.data, want);
    let r = run(0, &[0xA0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
    assert_eq!(r.data, vec![0; 8]);
    let r = run(0, &[0xA0, 0, 2, 0, 0, 0, 0, 0, 0, 12, 0, 0]);
    assert_eq!(r.data, vec![0, 0, 0, 24, 0, 0, 0, 0, 0, 0, 0, 0]);
}

fn rsoc(options: u8, op: u8, sa: u16) -> [u8; 12] {
    let mut c = [0xA3, 0x0C, options, op, 0, 0, 0, 0, 0x10, 0, 0, 0];
    c[4..6].copy_from_slice(&sa.to_be_bytes());
    c
}

#[test]
fn rsoc_all_commands() {
    let r = run(0, &rsoc(0, 0, 0));
    good(&r);
    // Every row of the table but UNMAP, which this thick LUN does not carry out.
    let rows: Vec<_> = OPCODES.iter().filter(|o| o.opcode != 0x42).collect();
    let n = rows.len();
    assert_eq!(r.data.len(), 4 + 8 * n);
    assert_eq!(&r.data[..4], &((8 * n) as u32).to_be_bytes());
    // The READ CAPACITY (16) descriptor has SERVACTV.
    let i = rows.iter().position(|o| o.opcode == 0x9E).expect("row");
    let d = &r.data[4 + 8 * i..12 + 8 * i];
    assert_eq!(d, &[0x9E, 0, 0, 0x10, 0, 0x01, 0, 16]);
    let r = run(0, &rsoc(0x80, 0, 0));
    assert_eq!(r.data.len(), 4 + 20 * n);
    assert_eq!(
        &r.data[4 + 5..4 + 20],
        &[0x02, 0, 6, 0, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 30]
    );
}

#[test]
fn rsoc_one_command() {
    let r = run(0, &rsoc(1, 0x28, 0));
    good(&r);
    assert_eq!(
        r.data,
        vec![
            0, 0x03, 0, 10, 0x28, 0x1A, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0
        ]
    );
    let r = run(0, &rsoc(1, 0x9E, 0x10));
    assert_eq!(sense(done(&r)), (0x05, 0x24, 0x00, [0xCA, 0, 2]));
    let r = run(0, &rsoc(2, 0x9E, 0x10));
    good(&r);
    assert_eq!(&r.data[..6], &[0, 0x03, 0, 16, 0x9E, 0x10]);
    assert_eq!(sense(done(&run(0, &rsoc(2, 0x28, 0)))).1, 0x24);
    let r = run(0, &rsoc(1, 0x04, 0));
    assert_eq!(r.data, vec![0, 0x01, 0, 0]);
    let r = run(0, &rsoc(0x83, 0x28, 0));
    assert_eq!(r.data.len(), 4 + 10 + 12);
    assert_eq!(r.data[1], 0x83);
}

#[test]
fn misc_commands() {
    assert_eq!(
        sense(done(&run(0, &[0x04, 0, 0, 0, 0, 0]))),
        (0x05, 0x20, 0x00, [0, 0, 0])
    );
    good(&run(0, &[0x1B, 1, 0, 0, 0x01, 0]));
    assert_eq!(
        sense(done(&run(0, &[0x1B, 0, 0, 0, 0x02, 0]))).3,
        [0xC9, 0, 4]
    );
    good(&run(0, &[0x1E, 0, 0, 0, 1, 0]));
    assert_eq!(
        sense(done(&run(0, &[0x00, 0, 0, 0, 0, 0x04]))).3,
        [0xCA, 0, 5]
    );
    good(&run(0, &[0x00, 0, 0, 0, 0, 0x80]));
    assert_eq!(sense(done(&run(0, &[]))).1, 0x20);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Arbitrary CDBs, optionally steered onto a table row and its allowed bits so that the
    /// execution paths (not only the rejections) are reached.
    #[test]
    fn execute_never_panics(
        raw in proptest::collection::vec(any::<u8>(), 0..20),
        lun in any::<[u8; 8]>(),
        data_out in proptest::collection::vec(any::<u8>(), 0..300),
        buf_len in 0usize..600,
        row in 0..OPCODES.len(),
        steer in any::<bool>(),
        mask in any::<bool>(),
    ) {
        let s = server();
        let mut cdb = raw;
        let info = &OPCODES[row];
        if steer && !cdb.is_empty() {
            cdb[0] = info.opcode;
            if let (Some(sa), Some(b1)) = (info.service_action, cdb.get_mut(1)) {
                *b1 = (*b1 & 0xE0) | sa;
            }
            if mask {
                for (b, m) in cdb.iter_mut().zip(info.usage.iter()).skip(2) {
                    *b &= m;
                }
            }
        }
        let mut buf = vec![0u8; buf_len];
        let mut fresh = fresh(&s);
        let mut settled = quiet();
        for (lun, nexus) in [
            (lun, &mut fresh),
            (encode_lun(0), &mut settled),
            (encode_lun(1), &mut quiet()),
            (encode_lun(300), &mut quiet()),
        ] {
            let req = Request { lun, cdb: &cdb, data_out: &data_out };
            match execute(&s, nexus, &req, &mut buf) {
                Outcome::Done(c) => {
                    prop_assert!(c.data_len <= buf_len);
                    prop_assert_eq!(c.status == Status::CheckCondition, c.sense.is_some());
                }
                Outcome::Io(io) => {
                    let end = io.lba.0 + u64::from(io.blocks.0);
                    let lun_info = s.lun(decode_lun(lun).unwrap_or(0)).map(|l| l.num_blocks);
                    prop_assert!(lun_info.is_some_and(|n| end <= n));
                    let _ = complete_io(&io, IoResult::Ok);
                }
            }
        }
    }
}

#[test]
fn an_offline_lun_is_not_ready_but_still_answers_inquiry_and_request_sense() {
    let mut lun = LunInfo::new(4, 512, 100, 0x44, "OFF");
    lun.offline = true;
    let s = DeviceServer::new(vec![lun, LunInfo::new(0, 512, 100, 0x45, "ON")]).expect("valid");
    let not_ready = (0x02, 0x04, 0x03, [0, 0, 0]);
    for cdb in [
        TUR.to_vec(),
        cdb10(0x28, 0, 0, 1).to_vec(),
        cdb10(0x2A, 0, 0, 1).to_vec(),
        cdb16(0x9E, 0x10, 0, 32).to_vec(),
        vec![0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        vec![0x1A, 0, 0x3F, 0, 255, 0],
    ] {
        let r = run_with(&s, &mut quiet(), 4, &cdb, &[]);
        assert_eq!(sense(done(&r)), not_ready, "{cdb:02x?}");
    }
    // The other LUN of the target is served.
    good(&run_with(&s, &mut quiet(), 0, &TUR, &[]));
    // INQUIRY: a LUN that is there (peripheral qualifier 0), its VPD too.
    let r = run_with(&s, &mut quiet(), 4, &[0x12, 0, 0, 0, 96, 0], &[]);
    good(&r);
    assert_eq!(r.data[0], 0x00);
    good(&run_with(
        &s,
        &mut quiet(),
        4,
        &[0x12, 1, 0x83, 0, 255, 0],
        &[],
    ));
    // REPORT LUNS lists it; REQUEST SENSE tells why it is not ready.
    let r = run_with(
        &s,
        &mut quiet(),
        4,
        &[0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
        &[],
    );
    good(&r);
    assert_eq!(r.data[3], 16, "two LUNs listed");
    let r = run_with(&s, &mut quiet(), 4, &[0x03, 0, 0, 0, 18, 0], &[]);
    good(&r);
    assert_eq!(
        (r.data[2] & 0x0F, r.data[12], r.data[13]),
        (0x02, 0x04, 0x03)
    );
    // A unit attention pending on it is reported first.
    let mut n = fresh(&s);
    let r = run_with(&s, &mut n, 4, &TUR, &[]);
    assert_eq!(sense(done(&r)).0, 0x06);
    let r = run_with(&s, &mut n, 4, &TUR, &[]);
    assert_eq!(sense(done(&r)), not_ready);
}
