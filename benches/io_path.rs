//! The in-process path of one 4 KiB READ(16): the SCSI Command PDU in, the backing-store request
//! out, the memory backend's copy, the Data-In (with status) out, sealed and marked sent: what a
//! data thread does per read apart from the socket and ring system calls.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vit::config;
use vit::daemon::conn::{Conn, SeqNums};
use vit::daemon::ramdisk;
use vit::daemon::runtime::{self, LunRt, OpenOptions, TargetRt};
use vit::daemon::uring::BufferPool;
use vit::datastore::Datastore;
use vit::iscsi::params::{AuthMethod, SessionParams, SessionType};
use vit::iscsi::pdu::{BHS_LEN, ScsiCommand};
use vit::scsi::{IoResult, Nexus, TargetPort};
use vit::vmdk::Op;

const IQN: &str = "iqn.2026-11.io.vit:bench";
const LUN_BYTES: u64 = 64 << 20;
const IO_BYTES: u32 = 4096;
const BLOCK: u32 = 512;
/// Byte offsets of the ITT and CmdSN in a BHS (RFC 7143 11.3).
const ITT_AT: usize = 16;
const CMD_SN_AT: usize = 24;

/// A target with one in-memory LUN, built the way vitd builds it from vit.conf.
fn ramdisk_target() -> Arc<TargetRt> {
    let text = format!(
        "portal-group pg {{\n\tlisten 127.0.0.1:3260\n}}\n\
         target {IQN} {{\n\tportal-group pg\n\tauth-group no-authentication\n\
         \tlun 0 {{\n\t\tbackend ramdisk\n\t\tsize {LUN_BYTES}\n\t}}\n}}\n"
    );
    let cfg = config::parse(&text, "bench.conf").expect("bench config parses");
    let dir = tempfile::tempdir().expect("temporary directory");
    let ds = Datastore::open(dir.path()).expect("datastore opens");
    let running =
        runtime::build(&cfg, &ds, &[], OpenOptions { direct: false }).expect("target builds");
    running.targets.first().expect("one target").clone()
}

fn session_params() -> SessionParams {
    SessionParams {
        session_type: SessionType::Normal,
        initiator_name: "iqn.2026-11.io.vit:initiator".into(),
        initiator_alias: None,
        target_name: Some(IQN.into()),
        auth_method: AuthMethod::None,
        header_digest: false,
        data_digest: false,
        max_connections: 1,
        initial_r2t: true,
        immediate_data: true,
        target_max_recv_data_segment_length: 262_144,
        initiator_max_recv_data_segment_length: 262_144,
        max_burst_length: 1 << 20,
        first_burst_length: 65_536,
        default_time2wait: 2,
        default_time2retain: 20,
        max_outstanding_r2t: 1,
        data_pdu_in_order: true,
        data_sequence_in_order: true,
        error_recovery_level: 0,
    }
}

/// The BHS of a READ(16) of `IO_BYTES` at block 8 (ITT and CmdSN are patched per command).
fn read16_bhs() -> [u8; BHS_LEN] {
    let blocks = IO_BYTES / BLOCK;
    let mut cdb = [0u8; 16];
    cdb[0] = 0x88;
    cdb[9] = 8; // LBA 8
    cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
    let cmd = ScsiCommand {
        final_bit: true,
        read: true,
        attr: 1,
        lun: 0,
        itt: 1,
        expected_data_length: IO_BYTES,
        cmd_sn: 1,
        exp_stat_sn: 1,
        cdb,
        ..ScsiCommand::default()
    };
    let mut bhs = [0u8; BHS_LEN];
    cmd.encode(&mut bhs);
    bhs
}

/// Makes `bhs` the next command of the session: the next CmdSN, and a fresh ITT.
fn next_command(bhs: &mut [u8; BHS_LEN], cmd_sn: &mut u32) {
    *cmd_sn = cmd_sn.wrapping_add(1);
    bhs[ITT_AT..ITT_AT + 4].copy_from_slice(&cmd_sn.to_be_bytes());
    bhs[CMD_SN_AT..CMD_SN_AT + 4].copy_from_slice(&cmd_sn.to_be_bytes());
}

/// Runs one command through the connection: header, PDU, backing I/O, then every queued PDU
/// sealed and sent. Returns the bytes of data the Data-In PDUs carried.
fn one_read(conn: &mut Conn, lun: &LunRt, pool: &mut BufferPool, bhs: &[u8; BHS_LEN]) -> usize {
    conn.on_header(bhs, 0, pool);
    conn.on_pdu(bhs, pool).expect("READ(16) is accepted");
    while let Some(work) = conn.io.pop_front() {
        let result = match work.buf {
            Some(buf) => ramdisk::transfer(
                lun,
                work.req.byte_offset,
                pool.slice(buf),
                work.req.byte_len,
                Op::Read,
            ),
            None => IoResult::Failed,
        };
        conn.io_done(work.task, result, pool);
    }
    let mut bytes = 0;
    while let Some(mut pdu) = conn.out.pop_front() {
        conn.seal(&mut pdu, pool);
        if let vit::daemon::conn::OutData::Slot { len, .. } = pdu.data {
            bytes += len;
        }
        conn.sent(black_box(&pdu), pool);
    }
    bytes
}

fn read_4k(c: &mut Criterion) {
    let target = ramdisk_target();
    let lun = target.luns.first().expect("LUN 0").clone();
    let port = TargetPort {
        target_name: IQN.into(),
        portal_group_tag: 1,
        relative_port_id: 1,
        target_ports: 1,
    };
    let seq = SeqNums {
        stat_sn: 1,
        exp_cmd_sn: 1,
    };
    let mut conn = Conn::new(
        session_params(),
        Some(target.clone()),
        Nexus::without_attention(port),
        seq,
        32,
    );
    let mut pool = BufferPool::new(&[(65_536, 64), (1 << 20, 4)]).expect("buffer pool");
    let mut bhs = read16_bhs();
    let mut cmd_sn = 1u32;
    // The path must really move the data, or the figure means nothing.
    assert_eq!(
        one_read(&mut conn, &lun, &mut pool, &bhs),
        IO_BYTES as usize
    );

    let mut group = c.benchmark_group("io_path");
    group.throughput(Throughput::Elements(1));
    group.bench_function("read16_4k_ramdisk", |b| {
        b.iter(|| {
            next_command(&mut bhs, &mut cmd_sn);
            one_read(&mut conn, &lun, &mut pool, black_box(&bhs))
        })
    });
    group.finish();
    // Still moving the data after every iteration (no command was dropped or rejected).
    next_command(&mut bhs, &mut cmd_sn);
    assert_eq!(
        one_read(&mut conn, &lun, &mut pool, &bhs),
        IO_BYTES as usize
    );
}

criterion_group!(benches, read_4k);
criterion_main!(benches);
