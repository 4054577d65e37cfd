//! Command-level tests of the issue-5 commands through [`execute_with_pr`]: thin
//! provisioning, COMPARE AND WRITE, ORWRITE, WRITE ATOMIC, EXTENDED COPY, PRE-FETCH, READ
//! DEFECT DATA, REPORT TARGET PORT GROUPS, reservations and the read-only mode.

use super::inquiry::naa_designator;
use super::lun::*;
use super::pr::PrState;
use super::sbc;
use super::sense::SenseReason;
use super::test_support::{Run, cdb10, cdb16, done, exec_on, good, io, sense_of};
use super::xcopy;

const NAME: &str = "iqn.2026-01.com.example:t1";

fn thin() -> LunInfo {
    let mut l = LunInfo::new(0, 512, 1000, 0x1122_3344_5566_7788, "THIN");
    l.provisioning = Provisioning::thin();
    l
}

fn thick() -> LunInfo {
    LunInfo::new(1, 512, 1000, 0x99, "THICK")
}

fn read_only() -> LunInfo {
    let mut l = LunInfo::new(2, 512, 1000, 0x77, "RO");
    l.read_only = true;
    l.provisioning = Provisioning::thin();
    l
}

fn server() -> DeviceServer {
    let big = LunInfo::new(3, 512, 1 << 30, 0x55, "BIG");
    DeviceServer::new(vec![thin(), thick(), read_only(), big]).expect("valid LUNs")
}

fn nexus(initiator: &str) -> Nexus {
    Nexus::without_attention(TargetPort {
        target_name: NAME.to_owned(),
        portal_group_tag: 1,
        relative_port_id: 3,
        target_ports: 3,
    })
    .with_initiator(initiator, [0x40, 0, 0, 0, 0, 1])
}

fn exec(n: &mut Nexus, pr: Option<&mut PrState>, lun: u16, cdb: &[u8], data_out: &[u8]) -> Run {
    exec_on(&server(), n, pr, lun, cdb, data_out)
}

fn run(lun: u16, cdb: &[u8]) -> Run {
    exec(&mut nexus("iqn.i"), None, lun, cdb, &[])
}

fn sense(r: &Run) -> (u8, u8, u8, [u8; 3]) {
    sense_of(done(r))
}

const INVALID_CDB: (u8, u8) = (0x05, 0x24);
const WRITE_PROTECTED: (u8, u8, u8) = (0x07, 0x27, 0x00);

fn key_asc(r: &Run) -> (u8, u8) {
    let (k, a, _, _) = sense(r);
    (k, a)
}

// ---- thin provisioning ----

#[test]
fn provisioning_pages_follow_lun_info() {
    let r = run(0, &[0x12, 1, 0xB2, 0, 255, 0]);
    assert_eq!(r.data, vec![0, 0xB2, 0, 4, 0, 0xE4, 0x02, 0]);
    let r = run(1, &[0x12, 1, 0xB2, 0, 255, 0]);
    assert_eq!(r.data, vec![0, 0xB2, 0, 4, 0, 0, 0, 0]);
    let r = run(0, &cdb16(0x9E, 0x10, 0, 32));
    assert_eq!(r.data[14], 0xC0, "LBPME and LBPRZ");
    let r = run(1, &cdb16(0x9E, 0x10, 0, 32));
    assert_eq!(r.data[14], 0);
    // Block limits: WSNZ, CAW, unmap limits only when UNMAP is supported, atomic fields.
    let b0 = run(0, &[0x12, 1, 0xB0, 0, 255, 0]).data;
    assert_eq!(b0[4], 1);
    assert_eq!(b0[5], sbc::MAX_COMPARE_AND_WRITE_BLOCKS);
    assert_eq!(&b0[20..24], &sbc::MAX_UNMAP_LBA_COUNT.to_be_bytes());
    assert_eq!(&b0[24..28], &sbc::MAX_UNMAP_DESCRIPTORS.to_be_bytes());
    assert_eq!(
        &b0[36..44],
        &u64::from(sbc::MAX_WRITE_SAME_BLOCKS).to_be_bytes()
    );
    assert_eq!(&b0[44..48], &sbc::max_atomic_blocks(&thin()).to_be_bytes());
    assert_eq!(&b0[48..52], &1u32.to_be_bytes());
    let b0 = run(1, &[0x12, 1, 0xB0, 0, 255, 0]).data;
    assert_eq!(&b0[20..28], &[0; 8]);
}

#[test]
fn unmap_decode_and_checks() {
    let r = run(0, &cdb10(0x42, 0, 0, 24));
    let req = io(&r);
    assert_eq!((req.kind, req.data_out_len), (IoKind::Unmap, 24));
    assert!(req.kind.writes());
    good(&run(0, &cdb10(0x42, 0, 0, 0)));
    assert_eq!(sense(&run(0, &cdb10(0x42, 0, 0, 7))).1, 0x1A);
    assert_eq!(
        sense(&run(0, &cdb10(0x42, 1, 0, 24))),
        (0x05, 0x24, 0x00, [0xC8, 0, 1])
    );
    // Thick LUN: UNMAP is not supported.
    assert_eq!(key_asc(&run(1, &cdb10(0x42, 0, 0, 24))), (0x05, 0x20));
    let (k, a, q, _) = sense(&run(2, &cdb10(0x42, 0, 0, 24)));
    assert_eq!((k, a, q), WRITE_PROTECTED);
}

#[test]
fn write_same_decode_and_checks() {
    let r = run(0, &cdb16(0x93, 0x08, 10, 20));
    let req = io(&r);
    assert_eq!(
        req.kind,
        IoKind::WriteSame {
            unmap: true,
            ndob: false
        }
    );
    assert_eq!(
        (req.byte_offset, req.byte_len, req.data_out_len),
        (5120, 20 * 512, 512)
    );
    let req = io(&run(0, &cdb16(0x93, 0x09, 10, 20)));
    assert_eq!(req.data_out_len, 0);
    assert!(sbc::write_same_deallocates(&thin(), &req, &[]));
    let req = io(&run(0, &cdb10(0x41, 0x08, 10, 20)));
    assert!(sbc::write_same_deallocates(&thin(), &req, &[0; 512]));
    assert!(!sbc::write_same_deallocates(&thin(), &req, &[1; 512]));
    // ANCHOR refused; UNMAP on a thick LUN refused; zero blocks refused (WSNZ).
    assert_eq!(sense(&run(0, &cdb16(0x93, 0x10, 0, 1))).3, [0xCC, 0, 1]);
    assert_eq!(sense(&run(1, &cdb16(0x93, 0x08, 0, 1))).3, [0xCB, 0, 1]);
    assert_eq!(sense(&run(1, &cdb10(0x41, 0x08, 0, 1))).3, [0xCB, 0, 1]);
    assert_eq!(sense(&run(0, &cdb16(0x93, 0, 0, 0))).3, [0xC0, 0, 10]);
    assert_eq!(sense(&run(0, &cdb10(0x41, 0, 0, 0))).3, [0xC0, 0, 7]);
    assert_eq!(key_asc(&run(0, &cdb16(0x93, 0, 999, 2))), (0x05, 0x21));
    let big = sbc::MAX_WRITE_SAME_BLOCKS + 1;
    assert_eq!(key_asc(&run(3, &cdb16(0x93, 0, 0, big))), INVALID_CDB);
    // A zero length past the end is out of range, not an invalid length.
    assert_eq!(key_asc(&run(0, &cdb10(0x41, 0, 1001, 0))), (0x05, 0x21));
    // Plain WRITE SAME works on a thick LUN.
    assert!(matches!(
        io(&run(1, &cdb16(0x93, 0, 0, 8))).kind,
        IoKind::WriteSame { unmap: false, .. }
    ));
}

#[test]
fn get_lba_status_thick_and_thin() {
    let r = run(1, &cdb16(0x9E, 0x12, 100, 24));
    good(&r);
    assert_eq!(r.data.len(), 24);
    assert_eq!(&r.data[0..4], &20u32.to_be_bytes());
    assert_eq!(&r.data[8..16], &100u64.to_be_bytes());
    assert_eq!(&r.data[16..20], &900u32.to_be_bytes());
    assert_eq!(r.data[20], 0);
    let req = io(&run(0, &cdb16(0x9E, 0x12, 100, 64)));
    assert_eq!(req.kind, IoKind::GetLbaStatus { alloc_len: 64 });
    assert_eq!((req.lba, req.byte_len), (super::cdb::Lba(100), 64));
    assert_eq!(key_asc(&run(0, &cdb16(0x9E, 0x12, 1000, 24))), (0x05, 0x21));
}

// ---- COMPARE AND WRITE, ORWRITE, WRITE ATOMIC ----

fn caw(lba: u64, blocks: u8) -> [u8; 16] {
    let mut c = cdb16(0x89, 0, lba, 0);
    c[13] = blocks;
    c
}

#[test]
fn compare_and_write() {
    let req = io(&run(0, &caw(5, 2)));
    assert_eq!(req.kind, IoKind::CompareAndWrite);
    assert_eq!((req.byte_len, req.data_out_len), (1024, 2048));
    let data: Vec<u8> = (0..2048).map(|i| (i / 1024) as u8).collect();
    let (verify, write) = sbc::compare_and_write_halves(&req, &data).unwrap();
    assert!(verify.iter().all(|&b| b == 0) && write.iter().all(|&b| b == 1));
    assert!(sbc::compare_and_write_halves(&req, &data[..2047]).is_none());
    let mut media = vec![0u8; 1024];
    media[700] = 9;
    let off = first_mismatch(&media, verify).unwrap();
    let c = complete_io(&req, IoResult::Miscompare(off as u64));
    let s = c.sense.unwrap();
    assert_eq!((s.as_bytes()[2], s.as_bytes()[12]), (0x0E, 0x1D));
    assert_eq!(&s.as_bytes()[3..7], &700u32.to_be_bytes());
    // The data-out must be exactly both halves.
    assert_eq!(req.data_out_mismatch(2048), None);
    assert!(req.data_out_mismatch(3 * 512).is_some());
    assert!(req.data_out_mismatch(1024).is_some());
    assert_eq!(
        io(&run(0, &cdb10(0x2A, 0, 0, 2))).data_out_mismatch(512),
        None
    );
    // WRITE SAME's data-out is its one pattern block, no more and no less (more was written
    // with the excess taken as overflow; iscsi-test-cu's WriteSame*.InvalidDataOutSize wants
    // ILLEGAL REQUEST).
    let ws = io(&run(0, &cdb10(0x41, 0, 0, 4)));
    assert_eq!(ws.data_out_mismatch(512), None);
    assert!(ws.data_out_mismatch(256).is_some());
    assert!(ws.data_out_mismatch(1024).is_some());
    good(&run(0, &caw(5, 0)));
    let too_many = sbc::MAX_COMPARE_AND_WRITE_BLOCKS + 1;
    assert_eq!(sense(&run(0, &caw(0, too_many))).3, [0xC0, 0, 13]);
    assert_eq!(key_asc(&run(0, &caw(999, 2))), (0x05, 0x21));
    let (k, a, q, _) = sense(&run(2, &caw(0, 1)));
    assert_eq!((k, a, q), WRITE_PROTECTED);
}

#[test]
fn orwrite_and_write_atomic() {
    let req = io(&run(0, &cdb16(0x8B, 0, 1, 4)));
    assert_eq!((req.kind, req.data_out_len), (IoKind::OrWrite, 2048));
    let mut atomic = cdb16(0x9C, 0x08, 3, 0);
    atomic[12..14].copy_from_slice(&4u16.to_be_bytes());
    let req = io(&run(0, &atomic));
    assert_eq!(
        (req.kind, req.blocks.0, req.fua),
        (IoKind::WriteAtomic, 4, true)
    );
    let over = u16::try_from(sbc::max_atomic_blocks(&thin()) + 1).unwrap();
    atomic[12..14].copy_from_slice(&over.to_be_bytes());
    assert_eq!(sense(&run(0, &atomic)).3, [0xC0, 0, 12]);
    // ATOMIC BOUNDARY (bytes 10-11) must be 0: refused, pointed at its first bit.
    let mut bad = cdb16(0x9C, 0, 0, 0);
    bad[10] = 1;
    assert_eq!(sense(&run(0, &bad)).3, [0xCF, 0, 10]);
    for cdb in [cdb16(0x8B, 0, 0, 1), cdb16(0x9C, 0, 0, 0)] {
        let (k, a, q, _) = sense(&run(2, &cdb));
        assert_eq!((k, a, q), WRITE_PROTECTED);
    }
}

// ---- read-only mode ----

#[test]
fn read_only_refuses_every_write_class_command() {
    let mut atomic = cdb16(0x9C, 0, 0, 0);
    atomic[13] = 1;
    let writes: Vec<Vec<u8>> = vec![
        vec![0x0A, 0, 0, 0, 1, 0],
        cdb10(0x2A, 0, 0, 1).to_vec(),
        cdb10(0x2E, 0, 0, 1).to_vec(),
        cdb16(0x8A, 0, 0, 1).to_vec(),
        cdb16(0x8E, 0, 0, 1).to_vec(),
        cdb10(0x41, 0, 0, 1).to_vec(),
        cdb16(0x93, 0, 0, 1).to_vec(),
        cdb16(0x93, 0x08, 0, 1).to_vec(),
        cdb10(0x42, 0, 0, 24).to_vec(),
        caw(0, 1).to_vec(),
        cdb16(0x8B, 0, 0, 1).to_vec(),
        atomic.to_vec(),
    ];
    for cdb in writes {
        let (k, a, q, _) = sense(&run(2, &cdb));
        assert_eq!((k, a, q), WRITE_PROTECTED, "{cdb:02x?}");
    }
    // Reads still work; MODE SENSE reports WP.
    assert_eq!(io(&run(2, &cdb10(0x28, 0, 0, 1))).kind, IoKind::Read);
    assert_eq!(run(2, &[0x1A, 0, 0x3F, 0, 255, 0]).data[2] & 0x80, 0x80);
}

// ---- EXTENDED COPY, RECEIVE COPY RESULTS, VPD 8Fh ----

fn xcopy_cdb(len: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x83;
    c[10..14].copy_from_slice(&len.to_be_bytes());
    c
}

#[test]
fn extended_copy_request_and_resolution() {
    let req = io(&run(0, &xcopy_cdb(16 + 32 + 28)));
    assert_eq!((req.kind, req.data_out_len), (IoKind::ExtendedCopy, 76));
    good(&run(0, &xcopy_cdb(0)));
    assert_eq!(key_asc(&run(0, &xcopy_cdb(15))), (0x05, 0x1A));
    // LID4 (service action 01h) is not supported.
    let mut lid4 = xcopy_cdb(100);
    lid4[1] = 1;
    assert_eq!(key_asc(&run(0, &lid4)), INVALID_CDB);
    // A list naming LUN 0 (thin) to LUN 1 (thick) resolves through the designators.
    let s = server();
    let (src, dst) = (naa_designator(&thin()), naa_designator(&thick()));
    assert_eq!(xcopy::resolve(&s, &src).map(|l| l.id), Some(0));
    assert_eq!(xcopy::resolve(&s, &dst).map(|l| l.id), Some(1));
}

#[test]
fn receive_copy_results_and_vpd_8f() {
    let mut c = [0u8; 16];
    c[0] = 0x84;
    c[1] = 0x03;
    c[10..14].copy_from_slice(&1024u32.to_be_bytes());
    let r = run(0, &c);
    good(&r);
    assert_eq!(&r.data[8..10], &xcopy::MAX_CSCD_DESCRIPTORS.to_be_bytes());
    assert_eq!(
        &r.data[10..12],
        &xcopy::MAX_SEGMENT_DESCRIPTORS.to_be_bytes()
    );
    // COPY STATUS: nothing held, then the result the transport recorded.
    c[1] = 0x00;
    c[2] = 7;
    assert_eq!(key_asc(&run(0, &c)), INVALID_CDB);
    let mut n = nexus("iqn.i");
    n.record_copy(
        0,
        xcopy::CopyResult {
            list_id: 7,
            ok: true,
            segments_processed: 1,
            bytes: 4096,
        },
    );
    let r = exec(&mut n, None, 0, &c, &[]);
    assert_eq!(r.data, vec![0, 0, 0, 8, 0x01, 0, 1, 0, 0, 0, 0x10, 0]);
    // Held per logical unit and list identifier.
    assert_eq!(key_asc(&exec(&mut n, None, 1, &c, &[])), INVALID_CDB);
    let r = run(0, &[0x12, 1, 0x8F, 0, 255, 0]);
    good(&r);
    assert_eq!(&r.data[..2], &[0, 0x8F]);
    let len = usize::from(u16::from_be_bytes([r.data[2], r.data[3]]));
    assert_eq!(len + 4, r.data.len());
    // First descriptor: Supported Commands, listing 83h and 84h.
    assert_eq!(&r.data[4..6], &[0, 1]);
    assert_eq!(r.data[9], 0x83);
}

// ---- PRE-FETCH, READ DEFECT DATA, REPORT TARGET PORT GROUPS, RSOC ----

#[test]
fn prefetch_checks_range_only() {
    good(&run(0, &cdb10(0x34, 0x02, 10, 10)));
    good(&run(0, &cdb16(0x90, 0, 0, 0)));
    assert_eq!(key_asc(&run(0, &cdb10(0x34, 0, 999, 2))), (0x05, 0x21));
    assert_eq!(key_asc(&run(0, &cdb16(0x90, 0, u64::MAX, 1))), (0x05, 0x21));
}

#[test]
fn read_defect_data_is_empty() {
    let r = run(0, &[0x37, 0, 0x18 | 0x05, 0, 0, 0, 0, 0, 255, 0]);
    good(&r);
    assert_eq!(r.data, vec![0, 0x1D, 0, 0]);
    let mut c = [0u8; 12];
    c[0] = 0xB7;
    c[1] = 0x08 | 0x04;
    c[9] = 255;
    let r = run(0, &c);
    assert_eq!(r.data, vec![0, 0x0C, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn report_target_port_groups() {
    let mut c = [0u8; 12];
    c[0] = 0xA3;
    c[1] = 0x0A;
    c[9] = 255;
    let r = run(0, &c);
    good(&r);
    // The target's three ports, this nexus's (3) among them.
    assert_eq!(
        r.data,
        vec![
            0, 0, 0, 20, 0x80, 0x01, 0, 1, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3
        ]
    );
    c[1] = 0x2A;
    let r = run(0, &c);
    assert_eq!(&r.data[..8], &[0, 0, 0, 24, 0x10, 0, 0, 0]);
    c[1] = 0x4A;
    assert_eq!(sense(&run(0, &c)).3, [0xCF, 0, 1]);
}

#[test]
fn rsoc_lists_new_commands() {
    let mut c = [0u8; 12];
    c[0] = 0xA3;
    c[1] = 0x0C;
    c[6..10].copy_from_slice(&8192u32.to_be_bytes());
    let mut n = nexus("iqn.i");
    let mut buf = vec![0u8; 8192];
    let req = Request {
        lun: encode_lun(0),
        cdb: &c,
        data_out: &[],
    };
    let Outcome::Done(done) = execute(&server(), &mut n, &req, &mut buf) else {
        panic!("RSOC is not I/O");
    };
    let data = &buf[..done.data_len];
    let listed: Vec<(u8, u16)> = data[4..]
        .chunks(8)
        .map(|d| (d[0], u16::from_be_bytes([d[2], d[3]])))
        .collect();
    for want in [
        (0x42, 0),
        (0x41, 0),
        (0x93, 0),
        (0x89, 0),
        (0x83, 0),
        (0x84, 3),
        (0x5E, 3),
        (0x5F, 7),
        (0x16, 0),
        (0x57, 0),
        (0xA3, 0x0A),
        (0x9E, 0x12),
        (0x9C, 0),
        (0xB7, 0),
    ] {
        assert!(listed.contains(&want), "{want:02x?} missing");
    }
}

#[test]
fn rsoc_reports_unmap_only_where_it_is_carried_out() {
    let rsoc = |options: u8, opcode: u8| {
        let mut c = [0u8; 12];
        c[0] = 0xA3;
        c[1] = 0x0C;
        c[2] = options;
        c[3] = opcode;
        c[6..10].copy_from_slice(&4096u32.to_be_bytes());
        c
    };
    let listed = |lun: u16| -> Vec<u8> {
        let r = run(lun, &rsoc(0, 0));
        good(&r);
        r.data[4..].chunks(8).map(|d| d[0]).collect()
    };
    // The thin LUN carries UNMAP out and says so.
    assert_eq!(&run(0, &rsoc(1, 0x42)).data[..2], &[0, 0x03]);
    assert!(listed(0).contains(&0x42));
    // The thick one answers UNMAP with INVALID COMMAND OPERATION CODE: not supported
    // (SUPPORT 001b), and not in the list of all commands.
    assert_eq!(key_asc(&run(1, &cdb10(0x42, 0, 0, 24))), (0x05, 0x20));
    assert_eq!(run(1, &rsoc(1, 0x42)).data, vec![0, 0x01, 0, 0]);
    assert_eq!(run(1, &rsoc(3, 0x42)).data, vec![0, 0x01, 0, 0]);
    let thick = listed(1);
    assert!(!thick.contains(&0x42));
    assert!(thick.contains(&0x41) && thick.contains(&0x93));
}

// ---- reservations through execute ----

fn prout(sa: u8, rtype: u8, key: u64, sa_key: u64) -> ([u8; 10], Vec<u8>) {
    let mut cdb = [0u8; 10];
    cdb[0] = 0x5F;
    cdb[1] = sa;
    cdb[2] = rtype;
    cdb[8] = 24;
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    (cdb, p)
}

#[test]
fn reservations_through_execute() {
    let mut pr = PrState::new();
    let (mut a, mut b) = (nexus("iqn.a"), nexus("iqn.b"));
    let (cdb, p) = prout(0, 0, 0, 0xA);
    good(&exec(&mut a, Some(&mut pr), 0, &cdb, &p));
    let (cdb, p) = prout(1, 3, 0xA, 0);
    good(&exec(&mut a, Some(&mut pr), 0, &cdb, &p));
    // B: reads conflict under Exclusive Access; INQUIRY does not.
    let r = exec(&mut b, Some(&mut pr), 0, &cdb10(0x28, 0, 0, 1), &[]);
    assert_eq!(done(&r).status, Status::ReservationConflict);
    good(&exec(
        &mut b,
        Some(&mut pr),
        0,
        &[0x12, 0, 0, 0, 36, 0],
        &[],
    ));
    // A's reads are I/O as usual.
    let r = exec(&mut a, Some(&mut pr), 0, &cdb10(0x28, 0, 0, 1), &[]);
    assert_eq!(io(&r).kind, IoKind::Read);
    // READ RESERVATION from B.
    let r = exec(
        &mut b,
        Some(&mut pr),
        0,
        &[0x5E, 0x01, 0, 0, 0, 0, 0, 0, 255, 0],
        &[],
    );
    good(&r);
    assert_eq!(&r.data[8..16], &0xAu64.to_be_bytes());
    // B cannot reserve: not registered.
    let (cdb, p) = prout(1, 3, 0, 0);
    let r = exec(&mut b, Some(&mut pr), 0, &cdb, &p);
    assert_eq!(done(&r).status, Status::ReservationConflict);
    // Without the state, reservation commands are not available.
    let r = exec(&mut b, None, 0, &cdb, &p);
    assert_eq!(key_asc(&r), (0x05, 0x20));
    // A's CLEAR posts nothing for A; the effects name no one else.
    let (cdb, p) = prout(3, 0, 0xA, 0);
    good(&exec(&mut a, Some(&mut pr), 0, &cdb, &p));
    let fx = pr.take_effects();
    assert!(fx.changed && fx.unit_attentions.is_empty());
    assert!(!pr.is_active());
}

#[test]
fn spc2_reserve_through_execute() {
    let mut pr = PrState::new();
    let (mut a, mut b) = (nexus("iqn.a"), nexus("iqn.b"));
    good(&exec(&mut a, Some(&mut pr), 0, &[0x16, 0, 0, 0, 0, 0], &[]));
    let r = exec(&mut b, Some(&mut pr), 0, &[0; 6], &[]);
    assert_eq!(done(&r).status, Status::ReservationConflict);
    let r = exec(&mut b, Some(&mut pr), 0, &[0x16, 0, 0, 0, 0, 0], &[]);
    assert_eq!(done(&r).status, Status::ReservationConflict);
    good(&exec(&mut b, Some(&mut pr), 0, &[0x17, 0, 0, 0, 0, 0], &[]));
    good(&exec(&mut a, Some(&mut pr), 0, &cdb10(0x57, 0, 0, 0), &[]));
    good(&exec(&mut b, Some(&mut pr), 0, &[0; 6], &[]));
}

#[test]
fn pr_unit_attentions_reach_the_nexus() {
    let mut pr = PrState::new();
    let (mut a, mut b) = (nexus("iqn.a"), nexus("iqn.b"));
    for (n, key) in [(&mut a, 0xA), (&mut b, 0xB)] {
        let (cdb, p) = prout(0, 0, 0, key);
        good(&exec(n, Some(&mut pr), 0, &cdb, &p));
    }
    let (cdb, p) = prout(4, 1, 0xA, 0xB);
    good(&exec(&mut a, Some(&mut pr), 0, &cdb, &p));
    let fx = pr.take_effects();
    let id = b.id().clone();
    for reason in fx.unit_attentions_for(&id) {
        b.post(0, reason);
    }
    assert_eq!(fx.unit_attentions_for(a.id()).count(), 0);
    let r = exec(&mut b, Some(&mut pr), 0, &[0; 6], &[]);
    let (k, asc, q, _) = sense(&r);
    assert_eq!((k, asc, q), (0x06, 0x2A, 0x05));
    assert_eq!(
        SenseReason::RegistrationsPreempted.code().2,
        0x05,
        "REGISTRATIONS PREEMPTED"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// Any sequence of table-steered commands from two nexuses against one reservation
    /// state: no panic, data-in within the buffer, sense exactly with CHECK CONDITION, and
    /// the state always survives an APTPL round trip.
    #[test]
    fn execute_with_pr_never_panics(
        cmds in proptest::collection::vec(
            (0..super::opcodes::OPCODES.len(),
             proptest::collection::vec(proptest::prelude::any::<u8>(), 16),
             proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
             proptest::prelude::any::<bool>(),
             0u16..4),
            1..12),
    ) {
        let s = server();
        let mut pr = PrState::new();
        let mut nexuses = [nexus("iqn.a"), nexus("iqn.b")];
        for (row, mut cdb, data_out, who, lun) in cmds {
            let info = &super::opcodes::OPCODES[row];
            cdb[0] = info.opcode;
            if let Some(sa) = info.service_action {
                cdb[1] = (cdb[1] & 0xE0) | sa;
            }
            for (b, m) in cdb.iter_mut().zip(info.usage.iter()).skip(2) {
                *b &= m;
            }
            cdb.truncate(usize::from(info.cdb_len));
            let mut buf = vec![0u8; 256];
            let req = Request { lun: encode_lun(lun), cdb: &cdb, data_out: &data_out };
            let n = &mut nexuses[usize::from(who)];
            if let Outcome::Done(c) = execute_with_pr(&s, n, &req, &mut buf, Some(&mut pr)) {
                proptest::prop_assert!(c.data_len <= buf.len());
                proptest::prop_assert_eq!(c.status == Status::CheckCondition, c.sense.is_some());
            }
            let _ = pr.take_effects();
            let back = PrState::decode(&pr.encode());
            proptest::prop_assert!(back.is_ok());
        }
    }
}

/// REPORT CAPABILITIES sets CRH, so RESERVE and RELEASE follow SPC-3 5.6.3 ("Exceptions to
/// SPC-2 RESERVE and RELEASE behavior", also SPC-4 5.13.3; LIO's
/// target_check_scsi2_reservation_conflict does the same): from the persistent reservation
/// holder, or from any registrant of a registrants-only or all-registrants reservation, they
/// complete GOOD and change nothing; from anyone else they conflict as SPC-2 says.
#[test]
fn compatible_reservation_handling_as_report_capabilities_claims() {
    let (mut a, mut b, mut c) = (nexus("iqn.a"), nexus("iqn.b"), nexus("iqn.c"));
    // CRH is what REPORT CAPABILITIES reports.
    let mut pr = PrState::new();
    let r = exec(&mut a, Some(&mut pr), 0, &cdb10(0x5E, 2, 0, 8), &[]);
    good(&r);
    assert_eq!(r.data[2] & 0x10, 0x10, "CRH");
    for (rtype, registrant_exempt) in [(1u8, false), (3, false), (5, true), (8, true)] {
        let mut pr = PrState::new();
        for (n, key) in [(&mut a, 0xA), (&mut b, 0xB)] {
            let (cdb, p) = prout(0, 0, 0, key);
            good(&exec(n, Some(&mut pr), 0, &cdb, &p));
        }
        let (cdb, p) = prout(1, rtype, 0xA, 0);
        good(&exec(&mut a, Some(&mut pr), 0, &cdb, &p));
        let before = pr.clone();
        for op in [0x16u8, 0x17] {
            good(&exec(&mut a, Some(&mut pr), 0, &[op, 0, 0, 0, 0, 0], &[]));
            let r = exec(&mut b, Some(&mut pr), 0, &[op, 0, 0, 0, 0, 0], &[]);
            if registrant_exempt {
                good(&r);
            } else {
                assert_eq!(done(&r).status, Status::ReservationConflict, "type {rtype}");
            }
            let r = exec(&mut c, Some(&mut pr), 0, &[op, 0, 0, 0, 0, 0], &[]);
            assert_eq!(done(&r).status, Status::ReservationConflict, "type {rtype}");
        }
        // Nothing changed: no SPC-2 reservation, the persistent one as it was.
        assert!(pr.spc2_holder().is_none());
        assert_eq!(pr.reservation(), before.reservation());
        assert_eq!(pr.registrations(), before.registrations());
    }
}

#[test]
fn block_io_is_the_request_execute_makes_without_touching_state() {
    // VERIFY (10) without BYTCHK, VERIFY (16) with it, WRITE SAME (16) with NDOB, ORWRITE,
    // READ (16): what `execute` would ask for, worked out without it.
    let cdbs: [&[u8]; 5] = [
        &cdb10(0x2F, 0, 8, 16),
        &cdb16(0x8F, 0x02, 8, 16),
        &cdb16(0x93, 0x01, 100, 300),
        &cdb16(0x8B, 0, 0, 4),
        &cdb16(0x88, 0, 999, 1),
    ];
    for cdb in cdbs {
        assert_eq!(block_io(&thin(), cdb), Some(io(&run(0, cdb))), "{cdb:02x?}");
    }
    // A unit attention pending is left for `execute` to report (`block_io` sees no nexus).
    let mut n = nexus("iqn.i");
    n.post(0, SenseReason::PowerOnReset);
    let verify = cdb10(0x2F, 0, 8, 16);
    assert_eq!(
        block_io(&thin(), &verify).map(|r| r.byte_len),
        Some(16 * 512)
    );
    assert_eq!(sense(&exec(&mut n, None, 0, &verify, &[])).0, 0x06);
    // No request: another command, one past the end, zero blocks, an offline LUN.
    assert_eq!(block_io(&thin(), &[0u8; 6]), None);
    assert_eq!(block_io(&thin(), &cdb16(0x8F, 0, 999, 2)), None);
    assert_eq!(block_io(&thin(), &cdb10(0x2F, 0, 8, 0)), None);
    let mut offline = thin();
    offline.offline = true;
    assert_eq!(block_io(&offline, &cdb10(0x2F, 0, 8, 16)), None);
}
