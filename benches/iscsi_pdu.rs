//! Hot paths of the iSCSI codec: BHS decode/encode, CRC32C digests, login text parsing.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vit::iscsi::digest::{Crc32c, header_digest};
use vit::iscsi::pdu::{BHS_LEN, DataIn, InitiatorPdu, ScsiCommand};
use vit::iscsi::text::TextList;

fn scsi_read_bhs() -> [u8; BHS_LEN] {
    let cmd = ScsiCommand {
        final_bit: true,
        read: true,
        attr: 1,
        lun: 1 << 48,
        itt: 0x1234,
        expected_data_length: 65536,
        cmd_sn: 10,
        exp_stat_sn: 9,
        cdb: [0x88, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0x80, 0, 0],
        ..ScsiCommand::default()
    };
    let mut bhs = [0u8; BHS_LEN];
    cmd.encode(&mut bhs);
    bhs
}

fn bhs(c: &mut Criterion) {
    let bhs = scsi_read_bhs();
    c.bench_function("bhs_decode_scsi_command", |b| {
        b.iter(|| InitiatorPdu::decode(black_box(&bhs)))
    });
    let data_in = DataIn {
        final_bit: true,
        status_present: true,
        itt: 0x1234,
        stat_sn: 9,
        exp_cmd_sn: 11,
        max_cmd_sn: 74,
        buffer_offset: 0,
        data_segment_length: 65536,
        ..DataIn::default()
    };
    c.bench_function("bhs_encode_data_in", |b| {
        let mut out = [0u8; BHS_LEN];
        b.iter(|| {
            black_box(&data_in).encode(&mut out);
            black_box(out[0])
        })
    });
}

fn crc(c: &mut Criterion) {
    let header = scsi_read_bhs();
    let mut group = c.benchmark_group("crc32c");
    group.throughput(Throughput::Bytes(BHS_LEN as u64));
    group.bench_function("48_bytes", |b| {
        b.iter(|| header_digest(black_box(&header), &[]))
    });
    let data = vec![0xa5u8; 8192];
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("8_KiB", |b| {
        b.iter(|| {
            let mut crc = Crc32c::new();
            crc.update(black_box(&data));
            crc.value()
        })
    });
    group.finish();
}

fn login_text(c: &mut Criterion) {
    let text: &[u8] =
        b"InitiatorName=iqn.2005-03.org.open-iscsi:0123456789ab\0InitiatorAlias=host1\0\
TargetName=iqn.2026-01.com.example:target-0001\0SessionType=Normal\0AuthMethod=CHAP,None\0\
HeaderDigest=None\0DataDigest=None\0InitialR2T=Yes\0ImmediateData=Yes\0MaxBurstLength=262144\0\
FirstBurstLength=65536\0MaxRecvDataSegmentLength=262144\0DataPDUInOrder=Yes\0\
DefaultTime2Wait=2\0DefaultTime2Retain=0\0IFMarker=No\0OFMarker=No\0MaxConnections=1\0\
MaxOutstandingR2T=1\0ErrorRecoveryLevel=0\0DataSequenceInOrder=Yes\0";
    let mut group = c.benchmark_group("login_text");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.bench_function("parse_21_keys", |b| {
        b.iter(|| TextList::parse(black_box(text)).map(|l| l.len()))
    });
    // What a peer can send at most: 256 pairs, 30 of them with 8 KiB values, those first.
    let worst = vit::iscsi::text::long_values_first(vit::iscsi::text::MAX_PAIRS);
    group.throughput(Throughput::Bytes(worst.len() as u64));
    group.bench_function("parse_256_keys_long_values_first", |b| {
        b.iter(|| TextList::parse(black_box(&worst)).map(|l| l.len()))
    });
    group.finish();
}

criterion_group!(benches, bhs, crc, login_text);
criterion_main!(benches);
