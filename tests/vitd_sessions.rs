//! Session behaviours libiscsi's tools cannot trigger: reinstatement, dead peers, silence,
//! malformed PDUs in full feature phase. Driven by a minimal initiator (`vit::iscsi::initiator`).

mod common;
use common::*;
use std::time::Duration;
use vit::iscsi::initiator::{self, Session, login};
use vit::iscsi::pdu::TargetPdu;

const INITIATOR: &str = "iqn.2026-11.io.vit:test-initiator";

fn setup() -> (Datastore, Vitd) {
    serve_one("s", "8M")
}

/// The header of a write command on `s` with ITT `itt`: `lengths` is (expected data transfer
/// length, immediate data in this PDU).
fn write_bhs(s: &Session, itt: u32, cdb: [u8; 16], lengths: (u32, u32)) -> [u8; 48] {
    let mut bhs = [0u8; 48];
    vit::iscsi::pdu::ScsiCommand {
        final_bit: true,
        write: true,
        attr: 1,
        itt,
        expected_data_length: lengths.0,
        cmd_sn: s.cmd_sn,
        exp_stat_sn: s.exp_stat_sn,
        cdb,
        data_segment_length: lengths.1,
        ..Default::default()
    }
    .encode(&mut bhs);
    bhs
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

/// A session is named by its initiator, ISID and target: the same initiator and ISID on another
/// target is another session (Microsoft's initiator uses one ISID for every target), and neither
/// replaces the other.
#[test]
fn the_same_isid_on_two_targets_is_two_sessions() {
    let ds = Datastore::new();
    ds.target("s", &[]);
    ds.lun("s", 0, "8M");
    ds.target("t", &[]);
    ds.lun("t", 0, "8M");
    let vitd = ds.start();
    let isid = [0x40, 0, 0x01, 0x37, 0, 0];
    let mut on_s = login(ds.port, INITIATOR, &iqn("s"), isid);
    good(&mut on_s);
    let mut on_t = login(ds.port, INITIATOR, &iqn("t"), isid);
    good(&mut on_t);
    assert!(
        on_s.closed_within(Duration::from_secs(2)).is_err(),
        "the session on s was closed: {}",
        vitd.log_text()
    );
    good(&mut on_s);
    good(&mut on_t);
}

/// The same initiator and ISID through two portal groups of one target are two sessions (RFC
/// 7143 §4.4.3: a session is named by ISID and TPGT), as a host with one ISID per adapter makes
/// them: neither replaces the other.
#[test]
fn the_same_isid_through_two_portal_groups_is_two_sessions() {
    let ds = Datastore::new();
    let second = free_port();
    ds.target("m", &["--listen", &format!("127.0.0.1:{second}")]);
    ds.lun("m", 0, "8M");
    // The target is in the default portal group too.
    let conf = std::fs::read_to_string(ds.conf()).unwrap();
    let pg = format!("\tportal-group pg-127.0.0.1-{second}\n");
    assert!(conf.contains(&pg), "{conf}");
    let conf = conf.replace(&pg, &format!("{pg}\tportal-group default\n"));
    std::fs::write(ds.conf(), conf).unwrap();
    let vitd = ds.start();
    let isid = [0x80, 0, 0, 0, 0x61, 1];
    let mut first = login(ds.port, INITIATOR, &iqn("m"), isid);
    good(&mut first);
    let mut other = login(second, INITIATOR, &iqn("m"), isid);
    good(&mut other);
    assert!(
        first.closed_within(Duration::from_secs(2)).is_err(),
        "the session through the first portal group was closed: {}",
        vitd.log_text()
    );
    good(&mut first);
    good(&mut other);
    // Each portal group is a target port of its own (SPC-4 7.8.6.5), numbered as the target
    // lists them: its own group first (port 1), then the default one (port 2).
    assert_eq!(relative_port(&mut other), 1);
    assert_eq!(relative_port(&mut first), 2);
    // REPORT TARGET PORT GROUPS lists both ports, whichever of them asks.
    let rtpg = [0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
    for s in [&mut other, &mut first] {
        let r = s.command(0, &rtpg, &[], 256).unwrap();
        assert_eq!(r.status, 0, "{r:?}");
        // TARGET PORT COUNT, then each port's RELATIVE TARGET PORT IDENTIFIER.
        assert_eq!(
            r.data_in.get(11..20),
            Some(&[2, 0, 0, 0, 1, 0, 0, 0, 2][..]),
            "{:?}",
            r.data_in
        );
    }
}

/// The relative target port identifier of the session's nexus (INQUIRY, VPD page 83h).
fn relative_port(s: &mut Session) -> u16 {
    let d = vpd83_designator(s, 0, |d| d[1] & 0x0f == 4 && d[3] == 4);
    u16::from_be_bytes([d[2], d[3]])
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
    // Logged as a fault (WARN), not as a session's ordinary end.
    assert!(
        vitd.log_text()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("session ended: no answer to NOP-In")),
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
    // After the README's login timeout of 15 s, not before.
    let started = std::time::Instant::now();
    s.closed_within(Duration::from_secs(25)).unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(14), "closed after {took:?}");
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
    let bhs = write_bhs(
        &s,
        0x77,
        [0x2a, 0, 0, 0, 0, 32, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
        (512, 512),
    );
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
    // The session goes on after a data digest error; a header digest error leaves nothing to
    // trust about where the next PDU starts: that connection, and only it, is closed.
    good(&mut s);
    let mut other =
        initiator::try_login_with(ds.port, INITIATOR, &iqn("s"), [0x80, 0, 0, 0, 0, 15], true)
            .unwrap();
    other.test_unit_ready().unwrap();
    let mut bhs = [0u8; 48];
    bhs[0] = 0x00; // NOP-Out
    bhs[1] = 0x80;
    bhs[16..20].copy_from_slice(&[0, 0, 0, 0x99]);
    let mut wire = bhs.to_vec();
    let mut bad = vit::iscsi::digest::header_digest(&bhs, &[]);
    bad[0] ^= 0xff;
    wire.extend_from_slice(&bad);
    s.raw(&wire).unwrap();
    s.closed_within(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}: {}", vitd.log_text()));
    good(&mut other);
}

#[test]
fn a_long_sendtargets_answer_comes_in_continued_pieces() {
    use std::io::Write;
    use vit::iscsi::pdu::TextRequest;
    let ds = Datastore::new();
    let names: Vec<String> = (0..60)
        .map(|i| format!("t{i:02}-{}", "long-alias-".repeat(4)))
        .collect();
    for n in &names {
        ds.target(n, &[]);
    }
    let vitd = ds.start();
    // libiscsi takes the whole answer in one PDU: every target listed.
    if have("iscsi-ls") {
        let (ok, out) = client("iscsi-ls", &[&ds.portal()]);
        assert!(ok, "{out}");
        for n in &names {
            assert!(out.contains(&iqn(n)), "{n} missing: {out}");
        }
    }
    // An initiator taking at most 512 bytes a PDU gets the answer in pieces (C bit), asking for
    // each next one with the TTT it was given (RFC 7143 §11.11.2); key=value pairs may straddle
    // pieces, and joined they make the whole list.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", ds.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut exp_stat_sn = initiator::discovery_login(
        &mut stream,
        INITIATOR,
        "MaxRecvDataSegmentLength=512\0",
        [0x80, 0, 0, 0, 0, 7],
    )
    .unwrap();
    let mut bhs = [0u8; 48];
    let (mut answer, mut ttt, mut pieces) = (Vec::new(), 0xffff_ffff, 0);
    loop {
        let ask: &[u8] = if pieces == 0 {
            b"SendTargets=All\0"
        } else {
            b""
        };
        let req = TextRequest {
            immediate: true,
            final_bit: true,
            itt: 2,
            ttt,
            cmd_sn: 1,
            exp_stat_sn,
            data_segment_length: ask.len() as u32,
            ..Default::default()
        };
        req.encode(&mut bhs);
        stream
            .write_all(&initiator::frame(&bhs, ask, false))
            .unwrap();
        let (pdu, data) = initiator::read_pdu(&mut stream)
            .unwrap_or_else(|e| panic!("piece {pieces}: {e}: {}", vitd.log_text()));
        let TargetPdu::Text(t) = pdu else {
            panic!("piece {pieces}: {pdu:?}")
        };
        assert!(data.len() <= 512, "a piece of {} bytes", data.len());
        assert_eq!(t.itt, 2);
        answer.extend_from_slice(&data);
        exp_stat_sn = t.stat_sn.wrapping_add(1);
        pieces += 1;
        if !t.cont {
            assert!(t.final_bit, "the last piece has the F bit");
            break;
        }
        assert!(!t.final_bit, "a piece with C has no F");
        ttt = t.ttt;
        assert!(pieces < 1000, "no end to the answer");
    }
    assert!(
        pieces > 3,
        "{pieces} pieces: the answer did not need continuing"
    );
    let text = String::from_utf8(answer).unwrap();
    let listed: Vec<&str> = text
        .split('\0')
        .filter_map(|p| p.strip_prefix("TargetName="))
        .collect();
    let mut want: Vec<String> = names.iter().map(|n| iqn(n)).collect();
    want.sort();
    let mut got: Vec<String> = listed.iter().map(|s| s.to_string()).collect();
    got.sort();
    assert_eq!(got, want, "{text}");
}

#[test]
fn a_small_open_files_limit_costs_neither_io_nor_the_control_thread() {
    use std::process::Command;
    if !have("qemu-img") || !have("prlimit") {
        return;
    }
    // A LUN of 100 extents (qemu-img's twoGbMaxExtentFlat, sparse), served by a vitd whose
    // open-files limit is 64, hard 200: it raises it to 200, so its fixed-file table holds 50
    // of them and the other 50 are used through their descriptors.
    let ds = Datastore::new();
    let uuid = ds.target("f", &[]);
    let dir = ds.root().join(&uuid);
    qemu_vmdk(&dir.join("big.vmdk"), "twoGbMaxExtentFlat", "200G");
    ds.add_lun_body("f", 0, vmdk_lun(format!("{uuid}/big.vmdk"), 200 << 30));
    let mut cmd = Command::new("prlimit");
    cmd.arg("--nofile=64:200")
        .arg(env!("CARGO_BIN_EXE_vitd"))
        .arg("--datastore")
        .arg(ds.root())
        .args(["--cores", "1"]);
    let mut vitd = Vitd::spawn(cmd, ds.port);
    assert!(
        vitd.log_text().contains("open files limit 200"),
        "{}",
        vitd.log_text()
    );
    let mut s = login(ds.port, INITIATOR, &iqn("f"), [0x80, 0, 0, 0, 0, 8]);
    s.test_unit_ready().unwrap(); // the power-on unit attention
    let block = |k: u32| -> Vec<u8> { (0..4096u32).map(|i| (i * 31 + k * 7) as u8).collect() };
    let extent_blocks = (2u64 << 30) / 512;
    for k in 0..100u32 {
        let lba = (u64::from(k) * extent_blocks) as u32;
        let mut write10 = [0x2a, 0, 0, 0, 0, 0, 0, 0, 8, 0];
        write10[2..6].copy_from_slice(&lba.to_be_bytes());
        let r = s.command(0, &write10, &block(k), 0).unwrap();
        assert_eq!(r.status, 0, "write to extent {k}: {r:?}");
    }
    for k in 0..100u32 {
        let lba = (u64::from(k) * extent_blocks) as u32;
        let mut read10 = [0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0];
        read10[2..6].copy_from_slice(&lba.to_be_bytes());
        let r = s.command(0, &read10, &[], 4096).unwrap();
        assert_eq!(r.status, 0, "read of extent {k}: {r:?}");
        assert!(r.data_in == block(k), "extent {k} read back different");
    }
    let r = s
        .command(0, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0)
        .unwrap();
    assert_eq!(r.status, 0, "SYNCHRONIZE CACHE: {r:?}");
    // A flood of connections past the limit: accepting rests instead of spinning, the log says
    // so a few times, not thousands, and sessions already in full feature phase carry on.
    let flood: Vec<std::net::TcpStream> = (0..300)
        .filter_map(|_| {
            // A bounded connect: once vitd's listen queue is full, more would wait on SYN retries.
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], ds.port));
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()
        })
        .collect();
    // The first failure may be logged late on a loaded machine; the cap below is what is tested.
    wait_until(20, || vitd.log_text().contains("accept failed"));
    std::thread::sleep(Duration::from_secs(1));
    good(&mut s);
    let failures = vitd.log_text().matches("accept failed").count();
    assert!(
        (1..=40).contains(&failures),
        "{failures} accept failures logged ({} connections)",
        flood.len()
    );
    drop(flood);
    std::thread::sleep(Duration::from_millis(500));
    let mut later = login(ds.port, INITIATOR, &iqn("f"), [0x80, 0, 0, 0, 0, 9]);
    good(&mut later);
    drop((s, later));
    assert!(vitd.stop().success());
    // Every block is in its extent file (qemu-img names them big-f001.vmdk ... big-f100.vmdk).
    for k in 0..100u32 {
        let path = dir.join(format!("big-f{:03}.vmdk", k + 1));
        let mut f = std::fs::File::open(&path).unwrap();
        let mut got = vec![0u8; 4096];
        std::io::Read::read_exact(&mut f, &mut got).unwrap();
        assert!(
            got == block(k),
            "{} does not hold what was written",
            path.display()
        );
    }
}

#[test]
fn a_peer_that_never_reads_cannot_grow_vitd_without_bound() {
    use std::io::Write;
    use vit::iscsi::pdu::NopOut;
    let (ds, mut vitd) = setup();
    let pid = vitd.child.as_ref().unwrap().id();
    let rss = || -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    };
    // NOP-Outs with 8 KiB of ping data each, answered by NOP-Ins carrying it back, which the
    // peer never reads: 160 MiB of answers vitd cannot send. Once it has a little queued it
    // stops reading, and the peer's writes stall.
    let flood = |stream: &mut std::net::TcpStream, exp_stat_sn: u32| -> u32 {
        stream
            .set_write_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let data = vec![0x5au8; 8192];
        let mut sent = 0;
        for i in 0..20_000u32 {
            let nop = NopOut {
                immediate: true,
                itt: 0x1000 + i,
                ttt: 0xffff_ffff,
                cmd_sn: 2,
                exp_stat_sn,
                data_segment_length: data.len() as u32,
                ..Default::default()
            };
            let mut bhs = [0u8; 48];
            nop.encode(&mut bhs);
            if stream
                .write_all(&initiator::frame(&bhs, &data, false))
                .is_err()
            {
                break;
            }
            sent += 1;
        }
        sent
    };
    // A normal session (a data thread).
    let mut s = login(ds.port, INITIATOR, &iqn("s"), [0x80, 0, 0, 0, 0, 11]);
    good(&mut s);
    let before = rss();
    let sent = flood(&mut s.stream, s.exp_stat_sn);
    let after = rss();
    assert!(
        after < before + 32 * 1024,
        "VmRSS {before} KiB -> {after} KiB after {sent} unread pings in a normal session"
    );
    // A discovery session (the control thread).
    let mut d = std::net::TcpStream::connect(("127.0.0.1", ds.port)).unwrap();
    d.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let exp_stat_sn =
        initiator::discovery_login(&mut d, INITIATOR, "", [0x80, 0, 0, 0, 0, 12]).unwrap();
    let sent = flood(&mut d, exp_stat_sn);
    let end = rss();
    assert!(
        end < before + 32 * 1024,
        "VmRSS {before} KiB -> {end} KiB after {sent} unread pings in a discovery session"
    );
    // Others are served meanwhile.
    let mut other = login(ds.port, INITIATOR, &iqn("s"), [0x80, 0, 0, 0, 0, 13]);
    good(&mut other);
    // And vitd still stops on SIGTERM with those peers stuck (within the helper's 20 s).
    assert!(vitd.stop().success(), "{}", vitd.log_text());
    drop((s, d));
}

#[test]
fn sessions_past_the_limit_are_refused_and_ended_ones_make_room() {
    let ds = Datastore::new();
    ds.target("s", &[]);
    ds.lun("s", 0, "8M");
    ds.target("t", &[]);
    ds.lun("t", 0, "8M");
    let _vitd = Vitd::start(ds.root(), ds.port, &["--max-sessions", "3"]);
    let isid = |n: u8| [0x80, 0, 0, 0, 0x40, n];
    let mut a = login(ds.port, INITIATOR, &iqn("s"), isid(1));
    let mut b = login(ds.port, INITIATOR, &iqn("s"), isid(2));
    let mut c = login(ds.port, INITIATOR, &iqn("s"), isid(3));
    for s in [&mut a, &mut b, &mut c] {
        good(s);
    }
    // A fourth is refused: Out of resources (0x0302).
    let e = initiator::try_login(ds.port, INITIATOR, &iqn("s"), isid(4)).err();
    assert!(
        e.as_ref().is_some_and(|e| e.to_string().contains("0x0302")),
        "{e:?}"
    );
    // Nor does the same initiator and ISID get a session on another target: that is a new
    // session, not its own one reinstated.
    let e = initiator::try_login(ds.port, INITIATOR, &iqn("t"), isid(1)).err();
    assert!(
        e.as_ref().is_some_and(|e| e.to_string().contains("0x0302")),
        "{e:?}"
    );
    // Reinstating one's own session is not a new one: let in, the old one closed.
    let mut a2 = login(ds.port, INITIATOR, &iqn("s"), isid(1));
    good(&mut a2);
    a.closed_within(Duration::from_secs(10)).unwrap();
    // Sessions that end make room, again and again (their records must go, not pile up).
    let retry = |n: u8| -> Session {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match initiator::try_login(ds.port, INITIATOR, &iqn("s"), isid(n)) {
                Ok(s) => return s,
                Err(e) if std::time::Instant::now() < deadline => {
                    assert!(e.to_string().contains("0x0302"), "{e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("session {n}: still refused: {e}"),
            }
        }
    };
    drop(c);
    for n in 10..30u8 {
        let mut s = retry(n);
        good(&mut s);
    }
    good(&mut b);
    good(&mut a2);
}

/// A login in one request (straight from the operational stage to full feature phase, as
/// open-iscsi logs in without CHAP): the status of its one response.
fn one_step_login(port: u16, target: &str, isid: [u8; 6]) -> (u8, u8) {
    use std::io::Write;
    use vit::iscsi::pdu::Stage;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let text = format!(
        "InitiatorName={INITIATOR}\0TargetName={target}\0SessionType=Normal\0\
         HeaderDigest=None\0DataDigest=None\0"
    );
    let bhs = initiator::login_bhs_at(
        (Stage::Operational, Stage::FullFeature),
        isid,
        0,
        text.len(),
        1,
    );
    stream
        .write_all(&initiator::frame(&bhs, text.as_bytes(), false))
        .unwrap();
    match initiator::read_pdu(&mut stream).unwrap() {
        (TargetPdu::Login(r), _) => (r.status_class, r.status_detail),
        other => panic!("{other:?}"),
    }
}

#[test]
fn at_the_limit_a_one_step_login_is_judged_by_its_own_isid() {
    let ds = Datastore::new();
    ds.target("s", &[]);
    ds.lun("s", 0, "8M");
    let _vitd = Vitd::start(ds.root(), ds.port, &["--max-sessions", "2"]);
    let isid = |n: u8| [0x80, 0, 0, 0, 0x41, n];
    // One session with an ISID of zeroes, one with another ISID: the limit is reached.
    let mut a = login(ds.port, INITIATOR, &iqn("s"), [0; 6]);
    let mut b = login(ds.port, INITIATOR, &iqn("s"), isid(1));
    good(&mut a);
    good(&mut b);
    // A new session (an ISID no session has) is refused, even in one request.
    assert_eq!(one_step_login(ds.port, &iqn("s"), isid(2)), (3, 2));
    // Reinstating b in one request is let in.
    assert_eq!(one_step_login(ds.port, &iqn("s"), isid(1)), (0, 0));
}

#[test]
fn command_numbers_wrap_around() {
    // CmdSN is serial arithmetic (RFC 7143 §4.2.2.1, RFC 1982): a session whose numbers start
    // just below 2^32 goes on past the wrap, and its window moves with it.
    let (ds, _vitd) = setup();
    let mut s = initiator::try_login_from(
        ds.port,
        INITIATOR,
        &iqn("s"),
        [0x80, 0, 0, 0, 0, 14],
        false,
        u32::MAX - 20,
    )
    .unwrap();
    s.test_unit_ready().unwrap(); // the power-on unit attention
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 5 + 1) as u8).collect();
    for k in 0..50u32 {
        let mut write10 = [0x2a, 0, 0, 0, 0, 0, 0, 0, 8, 0];
        write10[2..6].copy_from_slice(&(k * 8).to_be_bytes());
        let r = s.command(0, &write10, &data, 0).unwrap();
        assert_eq!(
            r.status,
            0,
            "write {k} at CmdSN {:#x}",
            s.cmd_sn.wrapping_sub(1)
        );
        let mut read10 = [0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0];
        read10[2..6].copy_from_slice(&(k * 8).to_be_bytes());
        let r = s.command(0, &read10, &[], 4096).unwrap();
        assert_eq!(r.status, 0, "read {k}");
        assert_eq!(r.data_in, data);
    }
    assert!(s.cmd_sn < 100, "the numbers wrapped: {:#x}", s.cmd_sn);
}

#[test]
fn garbage_from_the_first_byte_costs_only_that_connection() {
    use rand::{Rng, SeedableRng};
    use std::io::{Read, Write};
    let (ds, vitd) = setup();
    let seed: u64 = std::env::var("VIT_GARBAGE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut s = login(ds.port, INITIATOR, &iqn("s"), [0x80, 0, 0, 0, 0, 16]);
    good(&mut s);
    for k in 0..60 {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", ds.port)).unwrap();
        // Junk that reads as the start of a longer PDU leaves vitd waiting for the rest (until
        // the login timeout): a short wait here, the session above kept busy meanwhile.
        c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let n = rng.random_range(48..3000);
        let mut junk = vec![0u8; n];
        rng.fill(&mut junk[..]);
        if k % 3 == 0 {
            // A Login Request opcode in front, so the junk gets as far as the header checks.
            junk[0] = 0x43;
        }
        let _ = c.write_all(&junk);
        good(&mut s);
        if k % 2 == 0 {
            // Wait for vitd to answer (a Login Response or Reject) or to close; never a hang.
            let mut buf = [0u8; 512];
            loop {
                match c.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => continue,
                    // Closed with junk still unread: the kernel resets instead of closing.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut =>
                    {
                        break;
                    }
                    Err(e) => panic!("connection {k}: {e} (seed {seed})"),
                }
            }
        }
    }
    good(&mut s);
    let mut later = login(ds.port, INITIATOR, &iqn("s"), [0x80, 0, 0, 0, 0, 17]);
    good(&mut later);
    assert!(!vitd.log_text().contains("panicked"), "{}", vitd.log_text());
}

/// Immediate data is unsolicited: at most the negotiated FirstBurstLength of it (64 KiB, vitd's
/// value, whatever the initiator offers above it; less if it offers less) and none after
/// ImmediateData=No. More is a protocol error answered with Reject, and the session goes on; a
/// write longer than the first burst is asked for the rest with an R2T.
#[test]
fn immediate_data_past_the_first_burst_is_rejected() {
    let (ds, _vitd) = setup();
    let data: Vec<u8> = (0..131_072u32).map(|i| (i ^ (i >> 9)) as u8).collect();
    let cdb = |op: u8, bytes: usize| {
        let [hi, lo] = ((bytes / 512) as u16).to_be_bytes();
        [op, 0, 0, 0, 0, 16, 0, hi, lo, 0]
    };
    let offering = |isid: u8, keys: &str| {
        let mut s = initiator::try_login_offering(
            ds.port,
            INITIATOR,
            &iqn("s"),
            [0x80, 0, 0, 0, 0, isid],
            keys,
        )
        .unwrap();
        good(&mut s); // takes the power-on unit attention
        s
    };
    let rejected = |s: &mut Session, len: usize| {
        let e = s.command(0, &cdb(0x2a, len), &data[..len], 0).unwrap_err();
        assert!(e.to_string().contains("Reject"), "{len} bytes: {e}");
        let pdu = s.test_unit_ready().unwrap();
        assert!(matches!(pdu, TargetPdu::ScsiResponse(_)), "{pdu:?}");
    };

    let mut s = offering(0x42, "FirstBurstLength=262144\0MaxBurstLength=262144\0");
    let r = s
        .command(0, &cdb(0x2a, 65_536), &data[..65_536], 0)
        .unwrap();
    assert_eq!(
        r.status, 0,
        "64 KiB of immediate data, within the first burst"
    );
    rejected(&mut s, 131_072);
    // 128 KiB with the first 64 KiB immediate: an R2T for the rest, then the whole write lands.
    let bhs = write_bhs(
        &s,
        99,
        [0x2a, 0, 0, 0, 0, 16, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
        (131_072, 65_536),
    );
    s.cmd_sn += 1;
    s.raw(&initiator::frame(&bhs, &data[..65_536], false))
        .unwrap();
    let r2t = match initiator::read_pdu_with(&mut s.stream, false).unwrap().0 {
        TargetPdu::R2t(r) => r,
        other => panic!("expected an R2T for the rest past 64 KiB, got {other:?}"),
    };
    assert_eq!((r2t.buffer_offset, r2t.desired_length), (65_536, 65_536));
    let mut bhs = [0u8; 48];
    vit::iscsi::pdu::DataOut {
        final_bit: true,
        itt: 99,
        ttt: r2t.ttt,
        exp_stat_sn: s.exp_stat_sn,
        buffer_offset: 65_536,
        data_segment_length: 65_536,
        ..Default::default()
    }
    .encode(&mut bhs);
    s.raw(&initiator::frame(&bhs, &data[65_536..], false))
        .unwrap();
    match initiator::read_pdu_with(&mut s.stream, false).unwrap().0 {
        TargetPdu::ScsiResponse(r) => {
            assert_eq!(r.status, 0);
            s.exp_stat_sn = r.stat_sn.wrapping_add(1);
        }
        other => panic!("expected the write's response, got {other:?}"),
    }
    let r = s
        .command(0, &cdb(0x28, data.len()), &[], data.len() as u32)
        .unwrap();
    assert_eq!(r.status, 0);
    assert!(
        r.data_in == data,
        "128 KiB written in two bursts read back different"
    );

    // An initiator offering less gets less.
    let mut s = offering(0x43, "FirstBurstLength=16384\0");
    let r = s
        .command(0, &cdb(0x2a, 16_384), &data[..16_384], 0)
        .unwrap();
    assert_eq!(r.status, 0);
    rejected(&mut s, 32_768);
    // ImmediateData=No: none at all.
    let mut s = offering(0x44, "ImmediateData=No\0");
    rejected(&mut s, 4096);
}

/// RFC 7143 §13.12: MaxRecvDataSegmentLength (Use: ALL) may be declared again in full feature
/// phase, and the target's Data-In must keep to the new value from then on; keys that cannot
/// change after login (MaxBurstLength is LO) are answered Reject, and the session goes on.
#[test]
fn a_max_recv_data_segment_length_declared_in_full_feature_phase_cuts_data_in() {
    let (ds, vitd) = setup();
    let mut s = initiator::try_login_offering(
        ds.port,
        INITIATOR,
        &iqn("s"),
        [0x80, 0, 0, 0, 0, 0x51],
        "MaxRecvDataSegmentLength=262144\0",
    )
    .unwrap();
    good(&mut s);
    let data: Vec<u8> = (0..65_536u32).map(|i| ((i * 7) ^ (i >> 8)) as u8).collect();
    let rw = |op: u8| [op, 0, 0, 0, 0, 64, 0, 0, 128, 0]; // 128 blocks at LBA 64
    let r = s.command(0, &rw(0x2a), &data, 0).unwrap();
    assert_eq!(r.status, 0, "write: {r:?}");
    // Under the login's 256 KiB the 64 KiB read comes in one Data-In.
    let r = s.command(0, &rw(0x28), &[], 65_536).unwrap();
    assert_eq!((r.status, r.data_in == data), (0, true));
    assert_eq!(r.data_in_segments, [65_536]);

    // The declaration gets no answer: an empty final Text Response.
    let (t, answer) = s.text(b"MaxRecvDataSegmentLength=4096\0").unwrap();
    assert!(t.final_bit && !t.cont, "{t:?}");
    assert!(
        answer.is_empty(),
        "answered {:?}",
        String::from_utf8_lossy(&answer)
    );
    let r = s.command(0, &rw(0x28), &[], 65_536).unwrap();
    assert_eq!(r.status, 0);
    assert!(r.data_in == data, "the data read back differs");
    assert!(
        r.data_in_segments.iter().all(|&n| n <= 4096),
        "Data-In segments past 4096 bytes: {:?}",
        r.data_in_segments
    );
    assert_eq!(r.data_in_segments.len(), 16);

    // MaxBurstLength is leading-only: it cannot change now.
    let (t, answer) = s.text(b"MaxBurstLength=512\0").unwrap();
    assert!(t.final_bit);
    assert_eq!(String::from_utf8_lossy(&answer), "MaxBurstLength=Reject\0");
    // An unknown private key is still not understood; a declaration out of range is refused
    // and the 4096 stays.
    let (_, answer) = s
        .text(b"X-io.vit.test=1\0MaxRecvDataSegmentLength=100\0")
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&answer),
        "X-io.vit.test=NotUnderstood\0MaxRecvDataSegmentLength=Reject\0"
    );
    // A text repeating a key, or offering a value reserved for answers, is a protocol error
    // (RFC 7143 §6.1, §6.2): a Reject PDU, where an empty Text Response had answered it.
    for bad in [
        &b"MaxRecvDataSegmentLength=512\0MaxRecvDataSegmentLength=512\0"[..],
        b"MaxRecvDataSegmentLength=512\0MaxBurstLength=Irrelevant\0",
    ] {
        let err = s.text(bad).unwrap_err().to_string();
        assert!(
            err.contains("Reject(") && err.contains("reason: 4"),
            "{err}"
        );
    }
    // The session keeps working, its Data-In still cut to 4096 bytes.
    let r = s.command(0, &rw(0x28), &[], 65_536).unwrap();
    assert_eq!((r.status, r.data_in == data), (0, true));
    assert_eq!(r.data_in_segments, [4096; 16]);
    good(&mut s);
    assert!(!vitd.log_text().contains("panicked"), "{}", vitd.log_text());
}

#[test]
fn reads_of_a_memory_lun_without_store_are_zeroes_whatever_the_buffers_held() {
    // A LUN without backing store answers reads from memory nothing writes, not from the task's
    // buffer: what another LUN's writes and reads left in the session's buffers must never show
    // through, at any buffer size, and the data digests must cover the zeroes actually sent.
    let ds = Datastore::new();
    ds.target("z", &[]);
    ds.add_lun_body("z", 0, memory_lun(8 << 20, Some("8M")));
    ds.add_lun_body("z", 1, memory_lun(8 << 20, None));
    let vitd = ds.start();
    let isid = [0x80, 0, 0, 0, 0x2e, 0x01];
    let mut s = initiator::try_login_with(ds.port, INITIATOR, &iqn("z"), isid, true)
        .unwrap_or_else(|e| panic!("{e}: {}", vitd.log_text()));
    for lun in [0, 1] {
        // The power-on unit attention, once per LUN.
        s.command(lun, &[0u8; 6], &[], 0).unwrap();
    }
    let fill = vec![0xa5u8; 64 << 10];
    for i in 0..16 {
        let r = s.command(0, &cdb16(0x8a, i * 128, 128), &fill, 0).unwrap();
        assert_eq!(r.status, 0, "write {i}: {:?}", r.sense);
    }
    for len in [4096u32, 64 << 10, 1 << 20] {
        // LUN 0 first: its data fills a buffer of this size, free again once sent.
        let r = s.command(0, &cdb16(0x88, 0, len / 512), &[], len).unwrap();
        assert_eq!((r.status, r.data_in.len()), (0, len as usize));
        assert!(r.data_in.iter().all(|&b| b == 0xa5), "LUN 0, {len} bytes");
        let r = s.command(1, &cdb16(0x88, 0, len / 512), &[], len).unwrap();
        assert_eq!((r.status, r.data_in.len()), (0, len as usize));
        let stale = r.data_in.iter().filter(|&&b| b != 0).count();
        assert_eq!(stale, 0, "LUN 1, {len} bytes: {stale} bytes not zero");
    }
}

/// A vitd with one data thread (so every session shares its 32 buffers of 1 MiB) that drops a
/// stalled connection after 3 s, serving one 40 MiB LUN; and a session on it.
/// A session on the test target, past its first command's unit attention.
fn session(port: u16, isid: u8) -> Session {
    let mut s = login(port, INITIATOR, &iqn("s"), [0x80, 0, 0, 0, 0, isid]);
    s.test_unit_ready().unwrap();
    s
}

fn one_thread_stalling_after_3_s() -> (Datastore, Vitd, Session) {
    let ds = Datastore::new();
    ds.target("s", &[]);
    ds.lun("s", 0, "40M");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_vitd"));
    cmd.arg("--datastore").arg(ds.root());
    cmd.args(["--cores", "1", "--stall-timeout", "3"]);
    let vitd = Vitd::spawn(cmd, ds.port);
    let other = session(ds.port, 2);
    (ds, vitd, other)
}

/// Keeps `s` looking alive (an unsolicited NOP-Out every half second, so vitd never pings it)
/// until vitd's log says `why`; false if it does not within 15 s.
fn dropped_for(s: &mut Session, vitd: &Vitd, why: &str) -> bool {
    let end = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < end {
        if vitd.log_text().contains(why) {
            return true;
        }
        let _ = s.answer_ping(0xffff_ffff);
        std::thread::sleep(Duration::from_millis(500));
    }
    false
}

/// The header of command `cdb` (16 bytes) on `s` with the next ITT and CmdSN, reading
/// `read_len` bytes (none: no data either way).
fn command_bhs(s: &mut Session, cdb: Vec<u8>, read_len: u32) -> [u8; 48] {
    s.itt += 1;
    let mut bhs = [0u8; 48];
    vit::iscsi::pdu::ScsiCommand {
        final_bit: true,
        read: read_len > 0,
        attr: 1,
        itt: s.itt,
        expected_data_length: read_len,
        cmd_sn: s.cmd_sn,
        exp_stat_sn: s.exp_stat_sn,
        cdb: cdb.try_into().unwrap(),
        ..Default::default()
    }
    .encode(&mut bhs);
    s.cmd_sn = s.cmd_sn.wrapping_add(1);
    bhs
}

/// The header of a READ(16) of 1 MiB at `lba` on `s`.
fn large_read_bhs(s: &mut Session, lba: u64) -> [u8; 48] {
    command_bhs(s, cdb16(0x88, lba, 2048), 1 << 20)
}

/// SYNCHRONIZE CACHEs of many sessions at once on a buffered LUN with data to write back: those
/// that arrive while a flush round of the LUN runs wait for the next (vitd runs one at a time).
/// Connections that end while theirs wait, and a SIGTERM while some wait, leave nothing behind:
/// the others are answered GOOD, so is a new session's, and vitd stops.
#[test]
fn flushes_waiting_for_a_round_go_with_their_connections() {
    let ds = Datastore::new();
    ds.target("s", &[]);
    ds.lun("s", 0, "64M");
    let mut vitd = Vitd::start(ds.root(), ds.port, &["--buffered"]);
    let chunk = 128u64; // blocks of 512 bytes: 64 KiB, within the first burst
    let burst = |round: u8, keep: fn(usize) -> bool| {
        let mut sessions: Vec<Session> =
            (0..8u8).map(|i| session(ds.port, round * 8 + i)).collect();
        for (i, s) in sessions.iter_mut().enumerate() {
            for c in 0..16 {
                let lba = (i as u64 * 16 + c) * chunk;
                let data = vec![round ^ i as u8; chunk as usize * 512];
                let r = s.command(0, &cdb16(0x8a, lba, chunk as u32), &data, 0);
                assert_eq!(r.unwrap().status, 0);
            }
        }
        for s in &mut sessions {
            let bhs = command_bhs(s, cdb16(0x91, 0, 0), 0);
            s.raw(&bhs).unwrap();
        }
        for (i, mut s) in sessions.into_iter().enumerate() {
            if !keep(i) {
                let _ = s.stream.shutdown(std::net::Shutdown::Both);
                continue;
            }
            s.stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            loop {
                match initiator::read_pdu(&mut s.stream).unwrap() {
                    (TargetPdu::NopIn(_), _) => {}
                    (TargetPdu::ScsiResponse(r), _) => {
                        assert_eq!(r.status, 0, "session {i}'s flush");
                        break;
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
    };
    for round in 0..4 {
        burst(round, |i| i % 2 == 0);
    }
    let mut s = session(ds.port, 100);
    let r = s.command(0, &cdb16(0x91, 0, 0), &[], 0).unwrap();
    assert_eq!(r.status, 0, "{r:?}");
    // The last burst's flushes are not waited for: vitd stops with them in flight or waiting.
    burst(5, |_| false);
    assert!(vitd.stop().success(), "{}", vitd.log_text());
}

/// Sends a read of 1 MiB on `s` and checks it is not answered within a second: it waits for
/// one of the thread's large buffers, which another session holds.
fn large_read_waits(s: &mut Session) {
    let bhs = large_read_bhs(s, 0);
    s.raw(&bhs).unwrap();
    s.stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    match initiator::read_pdu(&mut s.stream) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("answered while the buffers are held: {other:?}"),
    }
}

/// The answer of the read [`large_read_waits`] sent: good, and the LUN's zeroes.
fn large_read_answered(s: &mut Session) {
    s.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut data = Vec::new();
    loop {
        match initiator::read_pdu(&mut s.stream).unwrap() {
            (TargetPdu::DataIn(d), bytes) => {
                data.extend_from_slice(&bytes);
                if d.status_present {
                    assert_eq!(d.status, 0);
                    s.exp_stat_sn = d.stat_sn.wrapping_add(1);
                    break;
                }
            }
            (TargetPdu::NopIn(_), _) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(data.len() == 1 << 20 && data.iter().all(|&b| b == 0));
}

/// Sends `n` writes of 1 MiB on `s` and reads the R2Ts vitd answers them with until `r2ts`
/// came (each such write holds one of the thread's large buffers); returns them.
fn writes_taken(s: &mut Session, vitd: &Vitd, n: u32, r2ts: u32) -> Vec<vit::iscsi::pdu::R2t> {
    for k in 0..n {
        s.itt += 1;
        let cdb: [u8; 16] = cdb16(0x8a, u64::from(k % 20) * 2048, 2048)
            .try_into()
            .unwrap();
        let bhs = write_bhs(s, s.itt, cdb, (1 << 20, 0));
        s.cmd_sn = s.cmd_sn.wrapping_add(1);
        s.raw(&bhs).unwrap();
    }
    s.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    while got.len() < r2ts as usize {
        match initiator::read_pdu(&mut s.stream) {
            Ok((TargetPdu::R2t(r), _)) => got.push(r),
            Ok(_) => {}
            Err(e) => panic!("{e} after {} R2Ts: {}", got.len(), vitd.log_text()),
        }
    }
    got
}

/// Writes that ask for data and get none hold a buffer each: an initiator that stalls them
/// (while it answers, so pings do not drop it) loses its connection after `--stall-timeout`,
/// and the buffers serve the other sessions again. One session takes at most three quarters
/// of the thread's 32 large buffers (24), so another session's large read is answered while
/// it stalls; a second stalling session takes the other 8, and then a read waits.
#[test]
fn writes_whose_data_out_never_comes_cost_their_connection() {
    let (ds, vitd, mut other) = one_thread_stalling_after_3_s();
    let mut stall = session(ds.port, 1);
    writes_taken(&mut stall, &vitd, 32, 24);
    // Its share is taken: the other session's read is served from the rest.
    let bhs = large_read_bhs(&mut other, 0);
    other.raw(&bhs).unwrap();
    large_read_answered(&mut other);
    let mut second = session(ds.port, 3);
    writes_taken(&mut second, &vitd, 32, 8);
    large_read_waits(&mut other);
    assert!(
        dropped_for(&mut stall, &vitd, "waited 3 s for Data-Out"),
        "still served: {}",
        vitd.log_text()
    );
    stall
        .closed_within(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}: {}", vitd.log_text()));
    second
        .closed_within(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}: {}", vitd.log_text()));
    large_read_answered(&mut other);
}

/// Writes whose data comes a trickle at a time (512 bytes of each a second, in order) hold their
/// buffers as long as writes whose data never comes, and cost their connection the same way:
/// a Data-Out that moves a write on by less than vitd asks for in `--stall-timeout` does not
/// count as progress. (Each such Data-Out restarted the write's clock, so two trickling
/// sessions kept all 32 large buffers, and another session's large read waited, for ever.)
#[test]
fn writes_whose_data_out_trickles_cost_their_connection() {
    use vit::iscsi::pdu::DataOut;
    let (ds, vitd, mut other) = one_thread_stalling_after_3_s();
    let mut first = session(ds.port, 1);
    let first_r2ts = writes_taken(&mut first, &vitd, 24, 24);
    let mut second = session(ds.port, 3);
    let second_r2ts = writes_taken(&mut second, &vitd, 8, 8);
    large_read_waits(&mut other);
    let mut sent = 0u32;
    let end = std::time::Instant::now() + Duration::from_secs(15);
    while !vitd.log_text().contains("waited 3 s for Data-Out") && std::time::Instant::now() < end {
        for (s, r2ts) in [(&mut first, &first_r2ts), (&mut second, &second_r2ts)] {
            let mut wire = Vec::new();
            for r in r2ts {
                let mut bhs = [0u8; 48];
                DataOut {
                    itt: r.itt,
                    ttt: r.ttt,
                    exp_stat_sn: s.exp_stat_sn,
                    data_sn: sent,
                    buffer_offset: r.buffer_offset + sent * 512,
                    data_segment_length: 512,
                    ..Default::default()
                }
                .encode(&mut bhs);
                wire.extend_from_slice(&initiator::frame(&bhs, &[0x33; 512], false));
            }
            // A connection vitd dropped refuses it: the check above ends the loop.
            let _ = s.raw(&wire);
        }
        sent += 1;
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        vitd.log_text().contains("waited 3 s for Data-Out"),
        "still served after {sent} trickles: {}",
        vitd.log_text()
    );
    for s in [&mut first, &mut second] {
        s.closed_within(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e}: {}", vitd.log_text()));
    }
    large_read_answered(&mut other);
}

/// A session whose socket takes little: vitd's sends to it stop after a few MiB.
fn deaf_session(port: u16, isid: u8) -> Session {
    let deaf = session(port, isid);
    let small: libc::c_int = 64 << 10;
    // SAFETY: setsockopt on a socket this test owns, with a c_int option value of its size.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&deaf.stream),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&small as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    deaf
}

/// Sends `n` reads of 1 MiB on `s` (of the LUN's first 32 MiB).
fn large_reads(s: &mut Session, n: u64) {
    for k in 0..n {
        let bhs = large_read_bhs(s, k % 32 * 2048);
        s.raw(&bhs).unwrap();
    }
}

/// Two sessions whose sockets take little ([`deaf_session`]), each with 64 reads of 1 MiB sent,
/// more than the thread's 32 large buffers: those past them wait for one, and take those the
/// first few reads' sends give back. With `half_close`, each then half-closes (once the sockets
/// are full: the reads still waiting for a buffer then end).
fn deaf_sessions_reading(port: u16, half_close: bool) -> [Session; 2] {
    let mut sessions = [deaf_session(port, 1), deaf_session(port, 3)];
    for s in &mut sessions {
        large_reads(s, 64);
    }
    std::thread::sleep(Duration::from_millis(300));
    if half_close {
        for s in &mut sessions {
            s.stream.shutdown(std::net::Shutdown::Write).unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    sessions
}

/// Answers an initiator never reads hold their buffers while vitd's sends wait: past
/// `--stall-timeout` without a byte taken, the connection goes and the buffers serve others.
/// (It sends, so vitd keeps reading it and never pings it.) Two such initiators, since one
/// holds at most three quarters of the thread's large buffers.
#[test]
fn an_initiator_that_reads_nothing_costs_its_connection() {
    let (ds, vitd, mut other) = one_thread_stalling_after_3_s();
    let [mut deaf, _second] = deaf_sessions_reading(ds.port, false);
    large_read_waits(&mut other);
    assert!(
        dropped_for(&mut deaf, &vitd, "of what vitd sent in 3 s"),
        "still served: {}",
        vitd.log_text()
    );
    large_read_answered(&mut other);
}

/// A session on a socket that offers vitd a small window (a 16 KiB receive buffer) and small
/// segments (an MSS of 536 bytes) from before it connects, so that vitd's send buffer for it
/// stays small (the kernel sizes it by the segments): a few KiB the initiator reads free room
/// there, and complete vitd's waiting send. (On loopback's 64 KiB segments it grows to
/// megabytes, and only a read of a third of it wakes the send.)
fn narrow_session(port: u16, isid: u8) -> Session {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(16 << 10).unwrap();
    let mss: libc::c_int = 536;
    // SAFETY: setsockopt on a socket this test owns, with a c_int option value of its size.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            (&mss as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    sock.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    let isid = [0x80, 0, 0, 0, 0, isid];
    let mut s = initiator::try_login_on(sock.into(), INITIATOR, &iqn("s"), isid).unwrap();
    s.test_unit_ready().unwrap();
    s
}

/// Answers an initiator takes a little of now and then (1 KiB every 100 ms, 30 KiB in the
/// 3 s of `--stall-timeout`) hold their buffers as long as answers it never takes: the
/// connection goes once it has taken less than 64 KiB in that time, and the buffers serve the
/// other sessions. A reader slow but steady (128 KiB every half second) keeps its connection
/// and gets every answer. (Any progress of a send restarted the clock, so a trickle kept the
/// buffers of its reads, and another session's read waited, for ever.)
#[test]
fn an_initiator_that_reads_a_trickle_costs_its_connection() {
    use std::io::Read;
    let (ds, vitd, mut other) = one_thread_stalling_after_3_s();
    let mut steady = narrow_session(ds.port, 1);
    let mut trickle = narrow_session(ds.port, 3);
    // The steady reader's 8 reads take 8 of the thread's 32 large buffers; the trickle's 64
    // take the other 24 (the rest of its reads wait for those), and a read of a third session
    // waits.
    large_reads(&mut steady, 8);
    std::thread::sleep(Duration::from_millis(300));
    large_reads(&mut trickle, 64);
    std::thread::sleep(Duration::from_millis(300));
    large_read_waits(&mut other);
    let why = "of what vitd sent in 3 s";
    // The steady reader's answers: (reads answered, bytes of data).
    let mut got = (0u32, 0usize);
    let steady_pdu =
        |s: &mut Session, got: &mut (u32, usize)| match initiator::read_pdu(&mut s.stream) {
            Ok((TargetPdu::DataIn(d), bytes)) => {
                got.1 += bytes.len();
                if d.status_present {
                    assert_eq!(d.status, 0);
                    got.0 += 1;
                }
            }
            Ok((TargetPdu::NopIn(_), _)) => {}
            other => panic!("{other:?}: {}", vitd.log_text()),
        };
    steady
        .stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    trickle
        .stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let start = std::time::Instant::now();
    let mut ticks = 0u32;
    // At least 8 s of steady reading (more than twice the stall limit, with most of its 8 MiB
    // still to come), and until the trickle's connection is dropped; at most 20 s.
    while (start.elapsed() < Duration::from_secs(8) || !vitd.log_text().contains(why))
        && start.elapsed() < Duration::from_secs(20)
    {
        let _ = trickle.stream.read(&mut [0u8; 1024]);
        if ticks.is_multiple_of(5) {
            for _ in 0..2 {
                steady_pdu(&mut steady, &mut got);
            }
            // Each session sends now and then, so vitd never pings it.
            for s in [&mut steady, &mut trickle, &mut other] {
                let _ = s.answer_ping(0xffff_ffff);
            }
        }
        ticks += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = vitd.log_text();
    assert_eq!(log.matches(why).count(), 1, "after {ticks} ticks: {log}");
    // The trickle's connection is closed: what is left in its socket, then the end.
    trickle
        .stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut rest = vec![0u8; 64 << 10];
    let closed = (0..1000).find_map(|_| match trickle.stream.read(&mut rest) {
        Ok(0) => Some(true),
        Ok(_) => None,
        Err(e) => Some(!matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )),
    });
    assert_eq!(closed, Some(true), "{log}");
    while got.0 < 8 {
        steady_pdu(&mut steady, &mut got);
    }
    assert_eq!(got.1, 8 << 20);
    large_read_answered(&mut other);
}

/// Discovery sessions may last while they keep asking, so a peer could hold every one of the
/// control thread's 1024 login slots with them. With all taken, a new connection takes the
/// place of the discovery session idle the longest: initiators can still log in.
#[test]
fn discovery_sessions_cannot_keep_initiators_from_logging_in() {
    // This process needs more than 1024 descriptors.
    if !raise_open_files(2048) {
        return;
    }
    let (ds, vitd) = setup();
    let mut held = Vec::new();
    for k in 0..1024u32 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", ds.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let isid = [0x80, 0, 0, (k >> 16) as u8, (k >> 8) as u8, k as u8];
        initiator::discovery_login(&mut s, INITIATOR, "", isid)
            .unwrap_or_else(|e| panic!("discovery session {k}: {e}\n{}", vitd.log_text()));
        held.push(s);
    }
    // Every slot is a discovery session now; a normal login still gets in.
    let mut s = login(ds.port, INITIATOR, &iqn("s"), [0x80, 0, 0, 0, 0, 1]);
    good(&mut s);
    // The discovery session idle the longest (the first) made room.
    assert!(
        peer_closed(&mut held[0]),
        "the oldest discovery session is still open"
    );
    assert!(
        vitd.log_text()
            .contains("discovery session idle the longest"),
        "{}",
        vitd.log_text()
    );
}

/// A peer holding every login slot with connections that never log in (one opening about 70 a
/// second keeps them full, each held up to the 15 s login timeout) keeps no other initiator out:
/// a newcomer displaces a connection of the address holding the most, and that peer's own new
/// connections displace only its own.
#[test]
fn a_peer_holding_every_login_slot_keeps_no_other_initiator_out() {
    if !raise_open_files(2048) || !have("iscsi-inq") {
        return;
    }
    let (ds, vitd) = setup();
    // A whole login first: by its end vitd has closed the connection its start-up check opened,
    // so the flooder's connections below take every slot.
    good(&mut login(
        ds.port,
        INITIATOR,
        &iqn("s"),
        [0x80, 0, 0, 0, 0, 1],
    ));
    let flooder = std::net::Ipv4Addr::new(127, 0, 0, 2);
    let held: Vec<_> = (0..1024)
        .map(|_| {
            let s = connect_from(flooder, ds.port);
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        })
        .collect();
    // Accepted in order, so all 1024 hold their slots before this one comes.
    let (ok, out) = client("iscsi-inq", &[&ds.url("s", 0)]);
    assert!(ok, "{out}\n{}", vitd.log_text());
    assert!(out.contains("Vendor:VIT"), "{out}");
    // Whether vitd has logged (within 10 s) that one of the flooder's logins made room for
    // `newcomer`.
    let displaced = |newcomer: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let log = vitd.log_text();
            let found = log.lines().any(|l| {
                l.contains("of them from 127.0.0.2: its login begun the earliest (127.0.0.2:")
                    && l.contains(&format!("closed for a new connection from {newcomer}"))
            });
            if found || std::time::Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert!(displaced("127.0.0.1:"), "{}", vitd.log_text());
    // A login in progress from elsewhere is left alone when the flooder connects again.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", ds.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let more = connect_from(flooder, ds.port);
    let more_addr = more.local_addr().unwrap().to_string();
    assert!(displaced(&more_addr), "{}", vitd.log_text());
    initiator::discovery_login(&mut s, INITIATOR, "", [0x80, 0, 0, 0, 0, 7])
        .unwrap_or_else(|e| panic!("discovery login: {e}\n{}", vitd.log_text()));
    drop((more, held));
}

/// RFC 7143 §7.8 at ErrorRecoveryLevel 0, end to end with CRC32C digests: a Data-Out whose data
/// digest fails is rejected (reason 0x02), the rest of the burst is taken, and the write ends
/// with CHECK CONDITION, ABORTED COMMAND, PROTOCOL SERVICE CRC ERROR without writing anything;
/// a command discarded for its immediate data's digest is never resent by an ERL 0 initiator,
/// so the next command, past the gap it left, ends the connection (session recovery) instead
/// of being ignored with every one after it.
#[test]
fn data_digest_errors_end_the_write_or_the_connection() {
    use vit::iscsi::pdu::DataOut;
    let (ds, vitd) = setup();
    let mut s = initiator::try_login_with(
        ds.port,
        INITIATOR,
        &iqn("s"),
        [0x80, 0, 0, 0, 0, 0x21],
        true,
    )
    .unwrap();
    s.stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    s.test_unit_ready().unwrap(); // the power-on unit attention
    let before = vec![0x11u8; 4096];
    let cdb = [0x2a, 0, 0, 0, 0, 40, 0, 0, 8, 0];
    assert_eq!(s.command(0, &cdb, &before, 0).unwrap().status, 0);
    // The same write, its data asked for by R2T.
    let mut cdb16 = [0u8; 16];
    cdb16[..10].copy_from_slice(&cdb);
    let bhs = write_bhs(&s, 0x500, cdb16, (4096, 0));
    s.cmd_sn += 1;
    s.raw(&initiator::frame(&bhs, &[], true)).unwrap();
    let (pdu, _) = initiator::read_pdu_with(&mut s.stream, true).unwrap();
    let TargetPdu::R2t(r2t) = pdu else {
        panic!("{pdu:?}: {}", vitd.log_text())
    };
    let data_out = |data_sn: u32, offset: u32, len: u32, final_bit: bool| {
        let mut b = [0u8; 48];
        DataOut {
            final_bit,
            itt: 0x500,
            ttt: r2t.ttt,
            exp_stat_sn: s.exp_stat_sn,
            data_sn,
            buffer_offset: offset,
            data_segment_length: len,
            ..Default::default()
        }
        .encode(&mut b);
        b
    };
    let mut wire = initiator::frame(&data_out(0, 0, 512, false), &[0x22; 512], true);
    let n = wire.len();
    wire[n - 4..].copy_from_slice(&[0, 0, 0, 0]); // not the CRC32C of the data
    wire.extend(initiator::frame(
        &data_out(1, 512, 3584, true),
        &[0x22; 3584],
        true,
    ));
    s.raw(&wire).unwrap();
    let (pdu, _) = initiator::read_pdu_with(&mut s.stream, true).unwrap();
    assert!(
        matches!(pdu, TargetPdu::Reject(ref r) if r.reason == 0x02),
        "{pdu:?}"
    );
    let (pdu, data) = initiator::read_pdu_with(&mut s.stream, true)
        .unwrap_or_else(|e| panic!("no answer to the write: {e}: {}", vitd.log_text()));
    let TargetPdu::ScsiResponse(r) = pdu else {
        panic!("{pdu:?}")
    };
    s.exp_stat_sn = r.stat_sn.wrapping_add(1);
    let sense = &data[2..];
    assert_eq!(
        (r.status, sense[2] & 0xf, sense[12], sense[13]),
        (2, 0xB, 0x47, 0x05),
        "{sense:?}"
    );
    let read10 = [0x28, 0, 0, 0, 0, 40, 0, 0, 8, 0];
    let r = s.command(0, &read10, &[], 4096).unwrap();
    assert!(r.data_in == before, "nothing of the failed write landed");
    // A write whose immediate data fails its digest: rejected, its CmdSN left unused.
    let bhs = write_bhs(&s, 0x501, cdb16, (512, 512));
    let mut wire = initiator::frame(&bhs, &[0x33; 512], true);
    let n = wire.len();
    wire[n - 4..].copy_from_slice(&[0, 0, 0, 0]);
    s.cmd_sn += 1;
    s.raw(&wire).unwrap();
    let (pdu, _) = initiator::read_pdu_with(&mut s.stream, true).unwrap();
    assert!(
        matches!(pdu, TargetPdu::Reject(ref r) if r.reason == 0x02),
        "{pdu:?}"
    );
    // The initiator goes on with the next CmdSN.
    let mut tur = [0u8; 48];
    vit::iscsi::pdu::ScsiCommand {
        final_bit: true,
        attr: 1,
        itt: 0x502,
        cmd_sn: s.cmd_sn,
        exp_stat_sn: s.exp_stat_sn,
        ..Default::default()
    }
    .encode(&mut tur);
    s.raw(&initiator::frame(&tur, &[], true)).unwrap();
    let seen = s
        .closed_within(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}: {}", vitd.log_text()));
    assert!(seen.is_empty(), "the command past the gap got {seen:?}");
}

/// vitd's resident size in KiB (VmRSS).
fn resident_kib(vitd: &Vitd) -> u64 {
    let pid = vitd.child.as_ref().expect("running").id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Waves of sessions that log in and go away leave vitd's resident size where it was: the
/// memory they took, all freed, stayed with the allocator (glibc gives back only the top of a
/// heap), so that each wave left vitd larger (five waves of 400 sessions: from 107 to 225 MB,
/// 0.3 MB of it in use). Once the sessions have ended, their memory goes back to the system.
#[test]
fn waves_of_sessions_leave_no_memory_behind() {
    const WAVES: u16 = 5;
    const SESSIONS: u16 = 400;
    if !raise_open_files(4 * u64::from(SESSIONS) + 256) {
        return;
    }
    let (ds, vitd) = setup();
    // The data threads are up (their buffers resident) once a session has run a command.
    let mut first = login(ds.port, INITIATOR, &iqn("s"), [0x80, 0, 0, 0x41, 0, 0]);
    good(&mut first);
    let before = resident_kib(&vitd);
    drop(first);
    for wave in 0..WAVES {
        let sessions: Vec<Session> = (0..SESSIONS)
            .map(|i| {
                let [hi, lo] = (wave * SESSIONS + i).to_be_bytes();
                login(ds.port, INITIATOR, &iqn("s"), [0x80, 0, 0, 0x40, hi, lo])
            })
            .collect();
        drop(sessions);
    }
    // The data threads see the connections close and report the sessions ended; the control
    // thread then gives their memory back.
    let limit = before + (40 << 10);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut now = resident_kib(&vitd);
    while now > limit && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        now = resident_kib(&vitd);
    }
    assert!(
        now <= limit,
        "{WAVES} waves of {SESSIONS} sessions, all ended, left vitd at {now} KiB from {before} KiB"
    );
    // vitd still serves.
    let mut s = login(ds.port, INITIATOR, &iqn("s"), [0x80, 0, 0, 0x41, 0, 1]);
    good(&mut s);
}

/// Sends `cdb` (16 bytes) on `s` with the next ITT and CmdSN as a write of `len` bytes carrying
/// `immediate` as its immediate data; returns its ITT and the PDU on the wire.
fn write_wire(s: &mut Session, cdb: Vec<u8>, len: u32, immediate: &[u8]) -> (u32, Vec<u8>) {
    s.itt += 1;
    let bhs = write_bhs(
        s,
        s.itt,
        cdb.try_into().unwrap(),
        (len, immediate.len() as u32),
    );
    s.cmd_sn = s.cmd_sn.wrapping_add(1);
    (s.itt, initiator::frame(&bhs, immediate, false))
}

/// Commands sent back to back, then a TCP half-close (the initiator sends nothing more and
/// reads on): vitd runs every command it received whole and answers it, and then closes the
/// connection; what they wrote reads back in a new session. A write whose data was not all in
/// at the half-close (it waited for Data-Out after its R2T) ends unanswered and writes nothing,
/// and does not keep the connection open. With a Logout sent after the commands, the Logout
/// Response comes, nothing after it, and then the close: the Logout terminates the commands
/// received before it (RFC 7143 §11.14), so those not done when it was taken go unanswered;
/// whichever were answered are answered GOOD, ahead of it, and a read with all its data.
/// (vitd ended the connection at the half-close, its answers and the Logout Response unsent.)
#[test]
fn commands_before_a_half_close_are_answered_and_a_logout_is_answered_last() {
    let (ds, vitd) = setup();
    let mut s = session(ds.port, 1);
    // 1 MiB of known data (from 4 MiB on) for the reads.
    let pattern: Vec<u8> = (0..1u32 << 20).map(|i| (i / 512 % 251) as u8).collect();
    for (k, chunk) in pattern.chunks(64 << 10).enumerate() {
        let lba = 8192 + k as u64 * 128;
        let r = s.command(0, &cdb16(0x8a, lba, 128), chunk, 0).unwrap();
        assert_eq!(r.status, 0);
    }
    drop(s);
    for (round, logout) in [(0u8, false), (1, true)] {
        let mut s = session(ds.port, 2 + round);
        let mut wire = Vec::new();
        let mut writes = Vec::new();
        let mut reads = Vec::new();
        // Eight writes of 64 KiB, each all immediate data, at 0, 128 KiB, ... (a 1 MiB stretch
        // per round).
        for k in 0..8u64 {
            let lba = u64::from(round) * 2048 + k * 256;
            let data = vec![0x40 + round * 16 + k as u8; 64 << 10];
            let (itt, pdu) = write_wire(&mut s, cdb16(0x8a, lba, 128), 64 << 10, &data);
            wire.extend_from_slice(&pdu);
            writes.push((itt, lba, data));
        }
        // Eight reads of 1 MiB of the known data: more than the socket buffers take at once,
        // so answers are still queued in vitd when the half-close comes.
        for _ in 0..8 {
            let bhs = command_bhs(&mut s, cdb16(0x88, 8192, 2048), 1 << 20);
            wire.extend_from_slice(&bhs);
            reads.push(s.itt);
        }
        // TEST UNIT READY, answered in place.
        let tur = command_bhs(&mut s, cdb16(0, 0, 0), 0);
        wire.extend_from_slice(&tur);
        let tur_itt = s.itt;
        // A write of 128 KiB with 64 KiB of immediate data: the rest is asked for by R2T and
        // never sent.
        let cut_lba = 6144 + u64::from(round) * 256;
        let (cut_itt, pdu) = write_wire(
            &mut s,
            cdb16(0x8a, cut_lba, 256),
            128 << 10,
            &[0xee; 64 << 10],
        );
        wire.extend_from_slice(&pdu);
        if logout {
            let mut bhs = [0u8; 48];
            vit::iscsi::pdu::LogoutRequest {
                immediate: true,
                itt: 0x7777,
                cmd_sn: s.cmd_sn,
                exp_stat_sn: s.exp_stat_sn,
                ..Default::default()
            }
            .encode(&mut bhs);
            wire.extend_from_slice(&bhs);
        }
        s.raw(&wire).unwrap();
        s.stream.shutdown(std::net::Shutdown::Write).unwrap();
        s.stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut status = std::collections::HashMap::new();
        let mut data: std::collections::HashMap<u32, Vec<u8>> = Default::default();
        let mut seen = Vec::new();
        let end = loop {
            match initiator::read_pdu(&mut s.stream) {
                Ok((pdu, bytes)) => {
                    match &pdu {
                        TargetPdu::DataIn(d) => {
                            assert!(!status.contains_key(&d.itt), "Data-In after status: {d:?}");
                            data.entry(d.itt).or_default().extend_from_slice(&bytes);
                            if d.status_present {
                                assert!(!d.overflow && !d.underflow, "{d:?}");
                                status.insert(d.itt, d.status);
                            }
                        }
                        TargetPdu::ScsiResponse(r) => {
                            assert!(r.response == 0 && !r.overflow && !r.underflow, "{r:?}");
                            assert!(status.insert(r.itt, r.status).is_none(), "{r:?}");
                        }
                        _ => {}
                    }
                    seen.push(pdu);
                }
                Err(e) => break e,
            }
        };
        let log = vitd.log_text();
        assert_eq!(
            end.kind(),
            std::io::ErrorKind::UnexpectedEof,
            "round {round}: {end} after {} answers: {log}",
            status.len()
        );
        // Every answer is GOOD, and to a command sent whole: not to the cut write.
        let whole: Vec<u32> = writes
            .iter()
            .map(|w| w.0)
            .chain(reads.iter().copied())
            .chain([tur_itt])
            .collect();
        for (itt, st) in &status {
            assert!(
                *st == 0 && whole.contains(itt),
                "round {round}: {itt} answered {st}: {log}"
            );
        }
        // Without a Logout every one is answered; with one, those it terminated are not.
        if !logout {
            for itt in &whole {
                assert!(status.contains_key(itt), "round {round}: {itt}: {log}");
            }
        }
        // A read answered has all its data; one not answered, none.
        for itt in &reads {
            assert!(
                if status.contains_key(itt) {
                    data.get(itt) == Some(&pattern)
                } else {
                    !data.contains_key(itt)
                },
                "round {round}: read {itt}'s data"
            );
        }
        let others: Vec<&TargetPdu> = seen
            .iter()
            .filter(|p| {
                !matches!(
                    p,
                    TargetPdu::DataIn(_) | TargetPdu::ScsiResponse(_) | TargetPdu::NopIn(_)
                )
            })
            .collect();
        // The cut write's R2T (with a Logout, it may have ended waiting for its buffer), and the
        // Logout Response last of all.
        let (r2t, logout_response) = match others.as_slice() {
            [r2t @ .., TargetPdu::Logout(l)] if logout => (r2t, Some(l)),
            r2t => (r2t, None),
        };
        assert!(
            match r2t {
                [TargetPdu::R2t(r)] => r.itt == cut_itt,
                [] => logout,
                _ => false,
            },
            "round {round}: {others:?}"
        );
        if logout {
            let l = logout_response.expect("no Logout Response");
            assert_eq!((l.itt, l.response), (0x7777, 0));
            assert!(
                matches!(seen.last(), Some(TargetPdu::Logout(_))),
                "round {round}: after the Logout Response: {:?}",
                seen.last()
            );
        }
        // What the writes answered wrote is there; the cut write wrote nothing.
        let mut check = session(ds.port, 10 + round);
        for (itt, lba, want) in writes.iter().filter(|w| status.contains_key(&w.0)) {
            let r = check
                .command(0, &cdb16(0x88, *lba, 128), &[], 64 << 10)
                .unwrap();
            assert!(
                r.status == 0 && &r.data_in == want,
                "round {round}: write {itt}"
            );
        }
        let r = check
            .command(0, &cdb16(0x88, cut_lba, 256), &[], 128 << 10)
            .unwrap();
        assert!(r.status == 0 && r.data_in.iter().all(|&b| b == 0));
    }
}

/// A peer that asks for much, half-closes and then reads nothing holds the buffers of its
/// answers no longer than one that reads nothing and keeps sending: past `--stall-timeout`
/// with nothing taken, its connection goes and the buffers serve the other sessions.
#[test]
fn a_half_closed_peer_that_reads_nothing_costs_its_connection() {
    let (ds, vitd, mut other) = one_thread_stalling_after_3_s();
    let _deaf = deaf_sessions_reading(ds.port, true);
    large_read_waits(&mut other);
    let why = "of what vitd sent in 3 s";
    assert!(
        wait_until(15, || {
            // Keeps the waiting session looking alive (vitd never pings it).
            let _ = other.answer_ping(0xffff_ffff);
            vitd.log_text().matches(why).count() == 2
        }),
        "still served: {}",
        vitd.log_text()
    );
    large_read_answered(&mut other);
}
