//! Loading (parse + verify) a large vit.conf: 256 targets of 16 LUNs each.

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const TARGETS: usize = 256;
const LUNS_PER_TARGET: usize = 16;

/// A vit.conf in VMware's style with `targets` targets of `luns` VMDK LUNs each.
fn generate(targets: usize, luns: usize) -> String {
    let mut s = String::from(
        "generation 1\ninitiator-group ig {\n\tinitiator iqn.1991-05.com.microsoft:host\n}\n\
         auth-group ag {\n\tauth-type none\n\tinitiator-group ig\n}\n\
         portal-group pg {\n\tdiscovery-auth-group no-authentication\n\tlisten vmk0:3260\n}\n",
    );
    for t in 0..targets {
        let uuid = format!("{t:08x}-dc24-d742-9a22-0050568e1413");
        let _ = write!(
            s,
            "target iqn.1998-01.com.vmware:{uuid} {{\n\talias \"target {t}\"\n\tportal-group pg\n\tauth-group ag\n\
             \toption uuid {uuid}\n\toption owner-id {uuid}\n"
        );
        for l in 0..luns {
            let _ = write!(
                s,
                "\tlun {l} {{\n\t\tbackend vmdk\n\t\tpath {uuid}/{l:08x}-ba4d-0420-d59d-0050568e042f.vmdk\n\
                 \t\tsize 6291456\n\t\toption lun-alias \"lun {t}.{l}\"\n\t}}\n"
            );
        }
        s.push_str("}\n");
    }
    s
}

fn bench_load(c: &mut Criterion) {
    let text = generate(TARGETS, LUNS_PER_TARGET);
    assert!(
        vit::config::load(&text, "bench.conf").is_ok(),
        "generated config must load"
    );
    let mut g = c.benchmark_group("config");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("load_256_targets_x_16_luns", |b| {
        b.iter(|| vit::config::load(black_box(&text), "bench.conf"))
    });
    g.finish();
}

criterion_group!(benches, bench_load);
criterion_main!(benches);
