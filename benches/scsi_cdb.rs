//! Decode + dispatch of a READ(16) through the SCSI device server.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use vit::scsi::cdb::Command;
use vit::scsi::lun::{
    DeviceServer, LunInfo, Nexus, Outcome, Request, TargetPort, encode_lun, execute,
    execute_with_pr,
};
use vit::scsi::pr::PrState;

fn read16() -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x88;
    c[2..10].copy_from_slice(&4096u64.to_be_bytes());
    c[10..14].copy_from_slice(&8u32.to_be_bytes());
    c
}

fn bench(c: &mut Criterion) {
    let server =
        DeviceServer::new(vec![LunInfo::new(0, 512, 1 << 30, 1, "BENCH")]).expect("valid LUN");
    let mut nexus = Nexus::without_attention(TargetPort {
        target_name: "iqn.2026-01.com.example:bench".to_owned(),
        portal_group_tag: 1,
        relative_port_id: 1,
        target_ports: 1,
    });
    let cdb = read16();
    let lun = encode_lun(0);
    let mut buf = [0u8; 64];
    c.bench_function("scsi_decode_read16", |b| {
        b.iter(|| Command::parse(black_box(&cdb)))
    });
    c.bench_function("scsi_execute_read16", |b| {
        b.iter(|| {
            let req = Request {
                lun: black_box(lun),
                cdb: black_box(&cdb),
                data_out: &[],
            };
            let out = execute(&server, &mut nexus, &req, &mut buf);
            assert!(matches!(out, Outcome::Io(_)));
            out
        })
    }); // The same through the reservation-aware entry point, with the LUN's (idle) state.
    let mut pr = PrState::new();
    c.bench_function("scsi_execute_read16_pr_idle", |b| {
        b.iter(|| {
            let req = Request {
                lun: black_box(lun),
                cdb: black_box(&cdb),
                data_out: &[],
            };
            let out = execute_with_pr(&server, &mut nexus, &req, &mut buf, Some(&mut pr));
            assert!(matches!(out, Outcome::Io(_)));
            out
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
