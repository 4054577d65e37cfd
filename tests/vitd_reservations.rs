//! Persistent reservations registered with APTPL survive a restart of vitd (the state is kept
//! beside the LUN, written atomically); without APTPL they do not. A state that cannot be saved
//! fails its command, and one that cannot be read back keeps its LUN offline. EXTENDED COPY
//! honours the reservations of both its LUNs and stops between its steps when it is aborted, its
//! connection ends or a LUN it writes is reset.

mod common;
use common::*;
use vit::iscsi::initiator::{Session, login};

fn register(s: &mut Session, key: u64, aptpl: bool) {
    let mut cdb = [0u8; 10];
    cdb[0] = 0x5f; // PERSISTENT RESERVE OUT
    cdb[1] = 0x00; // REGISTER
    cdb[8] = 24; // parameter list length
    let mut params = vec![0u8; 24];
    params[8..16].copy_from_slice(&key.to_be_bytes());
    params[20] = u8::from(aptpl);
    let r = s.command(0, &cdb, &params, 0).unwrap();
    assert_eq!(r.status, 0, "REGISTER: {r:?}");
}

fn read_keys(s: &mut Session) -> Vec<u64> {
    let mut cdb = [0u8; 10];
    cdb[0] = 0x5e; // PERSISTENT RESERVE IN, READ KEYS
    cdb[8] = 255;
    let r = s.command(0, &cdb, &[], 255).unwrap();
    assert_eq!(r.status, 0, "READ KEYS: {r:?}");
    let len = u32::from_be_bytes(r.data_in[4..8].try_into().unwrap()) as usize;
    r.data_in[8..8 + len]
        .chunks(8)
        .map(|k| u64::from_be_bytes(k.try_into().unwrap()))
        .collect()
}

fn session(ds: &Datastore, isid: u8) -> Session {
    let mut s = login(
        ds.port,
        "iqn.2026-11.io.vit:pr-host",
        &iqn("pr"),
        [0x80, 0, 0, 0, 2, isid],
    );
    s.test_unit_ready().unwrap(); // the power-on unit attention
    s
}

#[test]
fn aptpl_registrations_survive_a_restart() {
    let ds = Datastore::new();
    ds.target("pr", &[]);
    let descriptor = ds.lun("pr", 0, "8M");
    let mut vitd = ds.start();
    let mut s = session(&ds, 1);
    register(&mut s, 0x1122_3344_5566_7788, true);
    assert_eq!(read_keys(&mut s), vec![0x1122_3344_5566_7788]);
    assert!(
        descriptor.with_extension("pr").is_file(),
        "APTPL state is saved beside the LUN"
    );
    drop(s);
    assert!(vitd.stop().success());
    let mut vitd = ds.start();
    let mut s = session(&ds, 2);
    assert_eq!(
        read_keys(&mut s),
        vec![0x1122_3344_5566_7788],
        "{}",
        vitd.log_text()
    );
    drop(s);
    assert!(vitd.stop().success());

    // Registered without APTPL: the saved state goes, and so does the key after a restart.
    let mut vitd = ds.start();
    let mut s = session(&ds, 3);
    register(&mut s, 0x99, false);
    drop(s);
    assert!(vitd.stop().success());
    let mut vitd = ds.start();
    let mut s = session(&ds, 4);
    assert!(!read_keys(&mut s).contains(&0x99));

    // Saved again, then the LUN removed: its saved reservations go with it (a LUN made later
    // under the same name must not inherit them), and the target's directory can go too.
    register(&mut s, 0x77, true);
    drop(s);
    assert!(vitd.stop().success());
    let pr = descriptor.with_extension("pr");
    assert!(pr.is_file());
    ds.vitctl(&["target", "lun", "remove", "--target", "pr", "--id", "0"]);
    assert!(!pr.exists(), "{pr:?} left behind");
    let out = ds.vitctl_out(&["target", "remove", "pr"]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !text.contains("kept"), "{text}");
    assert!(!descriptor.parent().unwrap().exists());
}

/// PERSISTENT RESERVE OUT on `lun`: service action `sa`, reservation type `rtype`, the
/// reservation key `key` and service action key `sa_key`.
fn prout(s: &mut Session, lun: u8, sa: u8, rtype: u8, key: u64, sa_key: u64) -> u8 {
    let mut cdb = [0u8; 10];
    cdb[0] = 0x5f;
    cdb[1] = sa;
    cdb[2] = rtype;
    cdb[8] = 24;
    let mut params = vec![0u8; 24];
    params[..8].copy_from_slice(&key.to_be_bytes());
    params[8..16].copy_from_slice(&sa_key.to_be_bytes());
    s.command(lun, &cdb, &params, 0).unwrap().status
}

/// EXTENDED COPY ([`xcopy_list`]) sent to LUN 0. Returns the status and the sense key.
fn xcopy_n(
    s: &mut Session,
    src: [u8; 16],
    dst: [u8; 16],
    blocks: u16,
    segments: u32,
) -> std::io::Result<(u8, Option<u8>)> {
    let list = xcopy_list(src, dst, blocks, segments, 0);
    let r = s.command(0, &xcopy_cdb(list.len()), &list, 0)?;
    Ok((r.status, r.sense.get(2).map(|k| k & 0x0f)))
}

fn xcopy(s: &mut Session, src: [u8; 16], dst: [u8; 16], blocks: u16) -> (u8, Option<u8>) {
    xcopy_n(s, src, dst, blocks, 1).unwrap()
}

/// EXTENDED COPY moves blocks for the initiator that sends it: a persistent reservation that
/// keeps that initiator from writing the destination (or reading the source) keeps the copy
/// from it too, whichever LUN the command was sent to.
#[test]
fn extended_copy_honours_reservations_on_its_source_and_destination() {
    let ds = Datastore::new();
    ds.target("pr", &[]);
    ds.lun("pr", 0, "8M");
    ds.lun("pr", 1, "8M");
    let _vitd = ds.start();
    let mut holder = session(&ds, 1);
    let mut other = session(&ds, 2);
    holder.test_unit_ready().ok();
    let _ = holder.command(1, &[0; 6], &[], 0); // LUN 1's power-on unit attention
    let _ = other.command(1, &[0; 6], &[], 0);
    let (lun0, lun1) = (naa(&mut other, 0), naa(&mut other, 1));
    let marked = vec![0x5a; 4096];
    let w = other
        .command(0, &[0x2a, 0, 0, 0, 0, 0, 0, 0, 8, 0], &marked, 0)
        .unwrap();
    assert_eq!(w.status, 0);
    // The holder takes LUN 1 WRITE EXCLUSIVE.
    assert_eq!(prout(&mut holder, 1, 0x00, 0, 0, 0xab), 0, "REGISTER");
    assert_eq!(prout(&mut holder, 1, 0x01, 1, 0xab, 0), 0, "RESERVE");
    // Another initiator may not copy onto LUN 1: COPY ABORTED, LUN 1 untouched.
    assert_eq!(xcopy(&mut other, lun0, lun1, 8), (2, Some(0x0a)));
    let r = other
        .command(1, &[0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0], &[], 4096)
        .unwrap();
    assert_eq!(r.status, 0);
    assert!(r.data_in.iter().all(|&b| b == 0), "LUN 1 was written");
    // The holder may copy onto it, and reading from it stays open to others (WRITE EXCLUSIVE).
    assert_eq!(xcopy(&mut holder, lun0, lun1, 8), (0, None));
    let r = other
        .command(1, &[0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0], &[], 4096)
        .unwrap();
    assert_eq!(r.data_in, marked, "the holder's copy landed");
    assert_eq!(xcopy(&mut other, lun1, lun0, 8), (0, None));
}

/// A reinstated session (same initiator name and ISID) that takes RESERVE(6) keeps it: the
/// session it replaced, which had work in flight (a long EXTENDED COPY), ending after the new
/// login must not release it. (The new login is now answered only once the old session has
/// ended, its copy stopped between two steps.)
#[test]
fn a_reinstated_session_keeps_the_reserve_it_takes() {
    let ds = Datastore::new();
    ds.target("pr", &[]);
    ds.lun("pr", 0, "64M");
    ds.add_lun_body("pr", 1, memory_lun(64 << 20, None));
    let vitd = ds.start();
    let mut old = session(&ds, 7);
    let _ = old.command(1, &[0; 6], &[], 0);
    let (lun0, lun1) = (naa(&mut old, 0), naa(&mut old, 1));
    let old_addr = old.stream.local_addr().unwrap().to_string();
    // 64 segments of 32 MiB: seconds of copying on the old session (whose connection the
    // reinstatement closes: no answer comes).
    let copying = std::thread::spawn(move || {
        let _ = xcopy_n(&mut old, lun0, lun1, 0xffff, 64);
    });
    std::thread::sleep(std::time::Duration::from_millis(50));
    let mut new = session(&ds, 7);
    assert_eq!(
        new.command(0, &[0x16, 0, 0, 0, 0, 0], &[], 0)
            .unwrap()
            .status,
        0
    );
    let mut other = login(
        ds.port,
        "iqn.2026-11.io.vit:pr-other",
        &iqn("pr"),
        [0x80, 0, 0, 0, 3, 1],
    );
    other.test_unit_ready().unwrap();
    let write = |s: &mut Session| {
        s.command(0, &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[1; 512], 0)
            .unwrap()
            .status
    };
    assert_eq!(write(&mut other), 0x18, "RESERVATION CONFLICT");
    copying.join().unwrap();
    // The old session's end (its copy ended with the connection) is logged before the check.
    assert!(
        wait_until(20, || vitd
            .log_text()
            .lines()
            .any(|l| l.contains("session ended") && l.contains(&old_addr))),
        "the old session never ended: {}",
        vitd.log_text()
    );
    assert_eq!(
        write(&mut other),
        0x18,
        "the old session's end released the new session's RESERVE: {}",
        vitd.log_text()
    );
}

/// A connection that ends (here: its session reinstated by a new login) stops its EXTENDED
/// COPY, WRITE SAME or UNMAP between two steps, as an abort does: at ErrorRecoveryLevel 0 its
/// tasks end with it. The copy went on to its end instead (2 GiB here), writing LUN 1 after
/// the connection was gone, and the new session's login, which waits for the old session's
/// work to end, waited for all of it (an initiator gives up a login after 15 s or so).
/// The copy: 63 segments of 32 MiB onto LUN 1's first half, then one onto its second half.
#[test]
fn a_closed_connections_copy_stops_between_its_steps() {
    let ds = Datastore::new();
    ds.target("pr", &[]);
    ds.lun("pr", 0, "64M");
    ds.lun("pr", 1, "64M");
    let vitd = ds.start();
    let mut old = session(&ds, 7);
    let _ = old.command(1, &[0; 6], &[], 0);
    let (lun0, lun1) = (naa(&mut old, 0), naa(&mut old, 1));
    // What the copy carries: LUN 0's first block marked.
    let marked = vec![0xa5u8; 512];
    let w = old
        .command(0, &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], &marked, 0)
        .unwrap();
    assert_eq!(w.status, 0);
    let mut list = xcopy_list(lun0, lun1, 0xffff, 64, 0);
    // The last segment lands on LUN 1's second half (LBA 65536).
    let last = list.len() - 28;
    list[last + 20..last + 28].copy_from_slice(&65536u64.to_be_bytes());
    let copying = std::thread::spawn(move || {
        let _ = old.command(0, &xcopy_cdb(list.len()), &list, 0);
    });
    let mut watcher = login(
        ds.port,
        "iqn.2026-11.io.vit:pr-watcher",
        &iqn("pr"),
        [0x80, 0, 0, 0, 3, 1],
    );
    watcher.test_unit_ready().unwrap();
    let _ = watcher.command(1, &[0; 6], &[], 0);
    let read = |s: &mut Session, lba: u32| {
        let mut cdb = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        let r = s.command(1, &cdb, &[], 512).unwrap();
        assert_eq!(r.status, 0);
        r.data_in
    };
    // The copy is under way (its first segment has landed).
    let mut started = false;
    for _ in 0..2000 {
        if read(&mut watcher, 0) == marked {
            started = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(started, "the copy did not start: {}", vitd.log_text());
    // The reinstatement closes the old connection.
    let mut new = session(&ds, 7);
    let _ = new.command(1, &[0; 6], &[], 0);
    // A copy onto LUN 1 waits for the range the old copy holds, if it still runs: once it is
    // answered, the old copy has ended, one way or the other.
    let mut one = xcopy_list(lun0, lun1, 1, 1, 0);
    one[16 + 64 + 20..16 + 64 + 28].copy_from_slice(&8u64.to_be_bytes());
    let r = watcher.command(0, &xcopy_cdb(one.len()), &one, 0).unwrap();
    assert_eq!(r.status, 0);
    assert!(
        read(&mut new, 65536).iter().all(|&b| b == 0),
        "the closed connection's copy ran on to its last segment: {}",
        vitd.log_text()
    );
    copying.join().unwrap();
}

/// An ABORT TASK stops an EXTENDED COPY between its steps: 64 segments of 32 MiB (2 GiB, a
/// thousand steps and more), aborted once the first has landed, end with few of them done, as
/// RECEIVE COPY RESULTS tells (the copy ran to its end before, the abort waiting for it).
#[test]
fn an_aborted_extended_copy_stops_between_its_steps() {
    extended_copy_stopped(Stop::AbortTask);
}

/// A Logout ends every task of its connection (RFC 7143 §11.14), an EXTENDED COPY under way
/// too: the copy stops between its steps, unanswered, and the Logout Response comes once it
/// has, nothing of it landing after. (With a Logout letting the commands received before it run,
/// the copy ran on to its end and was answered GOOD ahead of the Logout Response.)
#[test]
fn a_logout_stops_an_extended_copy_between_its_steps() {
    extended_copy_stopped(Stop::Logout);
}

/// A LOGICAL UNIT RESET of an EXTENDED COPY's destination, from another session, aborts no
/// task of the copy's own LUN, but waits for what the copy holds of the destination: the copy
/// stops between its steps with COPY ABORTED, and the reset is answered (the copy ran to its
/// end before and was answered GOOD, the reset waiting for all of it).
#[test]
fn a_reset_of_its_destination_stops_an_extended_copy() {
    extended_copy_stopped(Stop::ResetDestination);
}

/// A LOGICAL UNIT RESET of the LUN an EXTENDED COPY was sent to (its source), from another
/// session, aborts the copy; it is answered only once the copy has stopped, so no step of it
/// lands on the destination after the answer. Before, the reset waited only for what was in
/// flight on its own LUN (nothing: the copy writes another), and was answered while the
/// copy's write in flight still landed.
#[test]
fn a_reset_of_its_own_lun_is_answered_once_an_extended_copy_has_stopped() {
    extended_copy_stopped(Stop::ResetOwnLun);
}

/// How [`extended_copy_stopped`] stops the copy.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// ABORT TASK from the copy's session.
    AbortTask,
    /// A Logout Request (close the session) from the copy's session.
    Logout,
    /// LOGICAL UNIT RESET of LUN 1, the destination, from another session.
    ResetDestination,
    /// LOGICAL UNIT RESET of LUN 0, the copy's own LUN, from another session.
    ResetOwnLun,
}

/// Starts a long EXTENDED COPY from LUN 0 to LUN 1 (64 segments of 32 MiB one after the
/// other on the destination, 2 GiB in synced
/// steps of 1 MiB: seconds, so it is still under way when the test, on a busy machine, stops
/// it), stops it once its first step has landed (`how`), checks that nothing of it lands on the
/// destination after the stop was answered, and that it ended early.
fn extended_copy_stopped(how: Stop) {
    let reset_destination = how == Stop::ResetDestination;
    use vit::iscsi::initiator::frame;
    use vit::iscsi::pdu::{BHS_LEN, LogoutRequest, ScsiCommand, TargetPdu, TaskMgmtRequest};
    let ds = Datastore::new();
    ds.target("pr", &[]);
    let flat = |descriptor: std::path::PathBuf| {
        let name = descriptor.file_name().unwrap().to_str().unwrap();
        descriptor.with_file_name(name.replace(".vmdk", "-flat.vmdk"))
    };
    // The source's first 32 MiB, what every segment copies, is not zeroes.
    let src = flat(ds.lun("pr", 0, "64M"));
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
        f.write_all_at(&vec![0xa5; 32 << 20], 0).unwrap();
    }
    // The destination: a sparse file written through (each 1 MiB step of the copy synced), so
    // the copy takes seconds, and GET LBA STATUS shows it under way.
    let dst = flat(ds.lun("pr", 1, "2G"));
    // The copy's steps that have landed on the destination, read from its file at once: the
    // 1 MiB chunks (written one after the other from its start) that hold the source's bytes.
    // Blocks are allocated as a step's write is issued, so the chunks in the allocated part
    // are read (the last of them may still be zeroes: a write in flight).
    // Returns those and the chunks allocated.
    let landed = || {
        use std::os::unix::fs::{FileExt, MetadataExt};
        let f = std::fs::File::open(&dst).unwrap();
        let chunks = (f.metadata().unwrap().blocks() * 512).div_ceil(1 << 20);
        let mut b = [0u8; 512];
        let landed = (0..chunks + 1)
            .rev()
            .find(|&c| {
                let n = f.read_at(&mut b, c << 20).unwrap();
                n == 512 && b.iter().all(|&x| x == 0xa5)
            })
            .map_or(0, |c| c + 1);
        (landed, chunks)
    };
    let vitd = ds.start();
    let mut s = session(&ds, 9);
    let mut watcher = session(&ds, 10);
    for x in [&mut s, &mut watcher] {
        let _ = x.command(1, &[0; 6], &[], 0); // LUN 1's power-on unit attention
    }
    let (lun0, lun1) = (naa(&mut s, 0), naa(&mut s, 1));
    // Each segment to blocks of its own, so every step allocates more of the destination.
    let list = xcopy_list_spread(lun0, lun1, 0xffff, 64);
    s.itt += 1;
    let copy_itt = s.itt;
    let copy_sn = s.cmd_sn;
    let cmd = ScsiCommand {
        final_bit: true,
        write: true,
        attr: 1,
        itt: copy_itt,
        expected_data_length: list.len() as u32,
        cmd_sn: copy_sn,
        exp_stat_sn: s.exp_stat_sn,
        cdb: xcopy_cdb(list.len()),
        data_segment_length: list.len() as u32,
        ..Default::default()
    };
    s.cmd_sn = s.cmd_sn.wrapping_add(1);
    let mut bhs = [0u8; BHS_LEN];
    cmd.encode(&mut bhs);
    std::io::Write::write_all(&mut s.stream, &frame(&bhs, &list, false)).unwrap();
    // A few steps in, and a write of the copy in flight (its blocks allocated, its bytes not
    // there yet): the copy is under way, reading and writing in turn.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !matches!(landed(), (n, allocated) if n >= 2 && allocated > n) {
        assert!(
            std::time::Instant::now() < deadline,
            "the copy never began\n{}",
            vitd.log_text()
        );
    }
    let (stopper, function, lun, referenced) = match how {
        Stop::ResetDestination => (&mut watcher, 5, 1u64, 0xffff_ffff), // LUN RESET of LUN 1
        Stop::ResetOwnLun => (&mut watcher, 5, 0u64, 0xffff_ffff),      // LUN RESET of LUN 0
        Stop::AbortTask | Stop::Logout => (&mut s, 1, 0, copy_itt),
    };
    stopper.itt += 1;
    if how == Stop::Logout {
        LogoutRequest {
            immediate: true,
            itt: stopper.itt,
            cmd_sn: stopper.cmd_sn,
            exp_stat_sn: stopper.exp_stat_sn,
            ..Default::default()
        }
        .encode(&mut bhs);
    } else {
        TaskMgmtRequest {
            immediate: true,
            function,
            lun: lun << 48,
            itt: stopper.itt,
            referenced_task_tag: referenced,
            ref_cmd_sn: copy_sn,
            cmd_sn: stopper.cmd_sn,
            exp_stat_sn: stopper.exp_stat_sn,
            ..Default::default()
        }
        .encode(&mut bhs);
    }
    std::io::Write::write_all(&mut stopper.stream, &frame(&bhs, &[], false)).unwrap();
    loop {
        match vit::iscsi::initiator::read_pdu_with(&mut stopper.stream, false)
            .unwrap()
            .0
        {
            TargetPdu::TaskMgmt(r) => {
                assert_eq!(r.response, 0, "{r:?}");
                stopper.exp_stat_sn = r.stat_sn.wrapping_add(1);
                break;
            }
            TargetPdu::Logout(r) => {
                assert_eq!(r.response, 0, "{r:?}");
                break;
            }
            TargetPdu::ScsiResponse(r) if r.itt == copy_itt => {
                panic!("the aborted copy was answered: {r:?}")
            }
            _ => {}
        }
    }
    // Nothing of the copy lands after the answer.
    let at_answer = landed().0;
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        landed().0,
        at_answer,
        "the copy wrote its destination after the stop was answered\n{}",
        vitd.log_text()
    );
    if how == Stop::Logout {
        // The session is gone (RECEIVE COPY RESULTS is its own): the copy stopped short of the
        // 64 segments of 32 MiB it had, 2048 steps.
        assert!(
            at_answer < 2048,
            "the copy ran to its end\n{}",
            vitd.log_text()
        );
        return;
    }
    if how == Stop::ResetOwnLun {
        // The reset's unit attention; the copy was aborted unanswered.
        let r = s.command(0, &[0; 6], &[], 0).unwrap();
        assert_eq!((r.status, r.sense.get(12)), (2, Some(&0x29)), "{r:?}");
        return;
    }
    if reset_destination {
        // The copy's own answer: CHECK CONDITION, COPY ABORTED.
        let (r, data) = loop {
            match vit::iscsi::initiator::read_pdu_with(&mut s.stream, false).unwrap() {
                (TargetPdu::ScsiResponse(r), data) if r.itt == copy_itt => break (r, data),
                _ => {}
            }
        };
        s.exp_stat_sn = r.stat_sn.wrapping_add(1);
        assert!(
            r.status == 2 && data.len() > 4 && data[4] & 0x0f == 0x0a,
            "the copy: status {:#x}, sense {data:02x?}\n{}",
            r.status,
            vitd.log_text()
        );
    }
    // RECEIVE COPY RESULTS, COPY STATUS of list 0: completed with errors (02h), few segments in.
    let mut cdb = [0u8; 16];
    cdb[0] = 0x84;
    cdb[10..14].copy_from_slice(&12u32.to_be_bytes());
    let r = s.command(0, &cdb, &[], 12).unwrap();
    assert_eq!(r.status, 0, "{r:?}\n{}", vitd.log_text());
    let segments = u16::from_be_bytes([r.data_in[5], r.data_in[6]]);
    assert!(
        r.data_in[4] & 0x7f == 0x02 && segments < 64,
        "copy status {:#x}, {segments} of 64 segments processed\n{}",
        r.data_in[4],
        vitd.log_text()
    );
    s.test_unit_ready().unwrap();
}

/// A REGISTER with APTPL whose state cannot be saved (here: a directory is in the way of the
/// state file) must fail, not report GOOD while the registration would vanish at the next
/// power loss; the registration is not kept either.
#[test]
fn aptpl_state_that_cannot_be_saved_fails_the_command() {
    let ds = Datastore::new();
    ds.target("pr", &[]);
    let descriptor = ds.lun("pr", 0, "8M");
    let pr = descriptor.with_extension("pr");
    // Put in the way once vitd has started (at start it would keep the LUN offline: saved
    // reservations it cannot read back).
    let vitd = ds.start();
    std::fs::create_dir(&pr).unwrap();
    std::fs::write(pr.join("in-the-way"), b"x").unwrap();
    let mut s = session(&ds, 1);
    let mut cdb = [0u8; 10];
    cdb[0] = 0x5f; // PERSISTENT RESERVE OUT, REGISTER
    cdb[8] = 24;
    let mut params = vec![0u8; 24];
    params[8..16].copy_from_slice(&0x42u64.to_be_bytes());
    params[20] = 1; // APTPL
    let r = s.command(0, &cdb, &params, 0).unwrap();
    assert_eq!(
        r.status,
        2,
        "REGISTER reported success: {}",
        vitd.log_text()
    );
    assert_eq!(
        read_keys(&mut s),
        Vec::<u64>::new(),
        "the registration stays"
    );
    // With the way clear it works.
    std::fs::remove_dir_all(&pr).unwrap();
    register(&mut s, 0x42, true);
    assert_eq!(read_keys(&mut s), vec![0x42]);
    assert!(pr.is_file());
}

/// After a restart the saved reservation is in force again for the nexus that holds it and
/// against the others, and every nexus first gets POWER ON, RESET (SPC-4 5.13.5).
#[test]
fn a_restored_reservation_is_in_force_after_the_power_on_unit_attention() {
    let ds = Datastore::new();
    ds.target("pr", &[]);
    ds.lun("pr", 0, "8M");
    let mut vitd = ds.start();
    let mut s = session(&ds, 1);
    register(&mut s, 0xAB, true);
    assert_eq!(
        prout(&mut s, 0, 0x01, 1, 0xAB, 0),
        0,
        "RESERVE WRITE EXCLUSIVE"
    );
    drop(s);
    assert!(vitd.stop().success());
    let _vitd = ds.start();
    let write = [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    for (isid, want) in [(1, 0), (2, 0x18)] {
        let mut s = login(
            ds.port,
            "iqn.2026-11.io.vit:pr-host",
            &iqn("pr"),
            [0x80, 0, 0, 0, 2, isid],
        );
        let r = s.command(0, &write, &[0; 512], 0).unwrap();
        assert_eq!(r.status, 2, "the power-on unit attention first: {r:?}");
        assert_eq!((r.sense[2] & 0x0f, r.sense[12], r.sense[13]), (6, 0x29, 0));
        let r = s.command(0, &write, &[0; 512], 0).unwrap();
        assert_eq!(r.status, want, "nexus {isid}: {r:?}");
    }
}

/// Reservations saved with APTPL that cannot be read back (the file damaged) keep their LUN
/// offline, NOT READY with MANUAL INTERVENTION REQUIRED, rather than serving it without them: a
/// cluster node they fenced out could write. The target's other LUN is served; the file removed,
/// the LUN comes back at the next start with no reservations.
#[test]
fn a_lun_whose_saved_reservations_are_damaged_is_offline_not_unfenced() {
    let ds = Datastore::new();
    ds.target("pr", &[]);
    let descriptor = ds.lun("pr", 0, "8M");
    ds.lun("pr", 1, "8M");
    {
        let _vitd = ds.start();
        let mut s = session(&ds, 1);
        register(&mut s, 0x42, true);
    }
    let pr = descriptor.with_extension("pr");
    let saved = std::fs::read(&pr).unwrap();
    std::fs::write(&pr, &saved[..saved.len() / 2]).unwrap();
    // `config validate` names the same cause, at the LUN's path in vit.conf, before a restart.
    let out = ds.vitctl_out(&["config", "validate"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "validate passed a damaged {pr:?}");
    let conf = std::fs::read_to_string(ds.conf()).unwrap();
    let rel = descriptor
        .strip_prefix(ds.root())
        .unwrap()
        .to_str()
        .unwrap();
    let line = conf.lines().position(|l| l.contains(rel)).unwrap() + 1;
    let place = format!("{}:{line}:", ds.conf().display());
    let cause = format!(
        "target {} LUN 0: its saved persistent reservations {} cannot be read back",
        iqn("pr"),
        pr.display()
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(&place) && l.contains(&cause)),
        "{place} {cause}:\n{stderr}"
    );
    let mut vitd = ds.start();
    let log = vitd.log_text();
    assert!(
        log.contains("LUN 0: offline")
            && log.contains("saved persistent reservations")
            && log.contains(pr.to_str().unwrap()),
        "{log}"
    );
    let mut s = session(&ds, 2);
    let mut keys = [0u8; 10];
    keys[0] = 0x5e; // PERSISTENT RESERVE IN, READ KEYS
    keys[8] = 255;
    let r = s.command(0, &keys, &[], 255).unwrap();
    assert_eq!(
        (
            r.status,
            r.sense.get(2).map(|k| k & 0x0f),
            r.sense.get(12),
            r.sense.get(13)
        ),
        (2, Some(2), Some(&0x04), Some(&0x03)),
        "LUN 0 with damaged saved reservations: {r:?}"
    );
    let _ = s.command(1, &[0u8; 6], &[], 0); // LUN 1's power-on unit attention
    let r = s.command(1, &keys, &[], 255).unwrap();
    assert_eq!(r.status, 0, "LUN 1: {r:?}");
    drop(s);
    assert!(vitd.stop().success());
    std::fs::remove_file(&pr).unwrap();
    ds.vitctl(&["config", "validate"]);
    let _vitd = ds.start();
    let mut s = session(&ds, 3);
    assert_eq!(read_keys(&mut s), Vec::<u64>::new());
}
