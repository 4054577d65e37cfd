//! Data integrity with fio's libiscsi engine (fio built by perf/build-fio.sh): what is written
//! through iSCSI is in the flat extents byte for byte (checked by fio reading the extent file,
//! or qemu-img's raw conversion of a split LUN, directly), survives a restart of vitd, and I/O
//! across the boundary of two extents works.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

/// One fio pass over [offset, offset+size): random writes of mixed sizes stamped with crc32c,
/// or (`verify_only`) the read-back check of exactly those blocks.
fn fio_pass(
    fio: &Path,
    engine: &str,
    filename: &str,
    offset: u64,
    size: u64,
    depth: u32,
    verify_only: bool,
) -> (bool, String) {
    let (offset, size, depth) = (
        format!("--offset={offset}"),
        format!("--size={size}"),
        format!("--iodepth={depth}"),
    );
    let (engine, filename) = (
        format!("--ioengine={engine}"),
        format!("--filename={filename}"),
    );
    let args = [
        "--name=vit-data",
        &engine,
        &filename,
        &offset,
        &size,
        "--rw=randwrite",
        "--bssplit=4k/40:16k/30:64k/20:256k/10",
        &depth,
        "--randrepeat=1",
        "--randseed=20261125",
        "--verify=crc32c",
        "--do_verify=1",
        // No verify state file left in the working directory.
        "--verify_state_save=0",
        if verify_only {
            "--verify_only"
        } else {
            "--do_verify=0"
        },
    ];
    let (ok, text) = run_fio(fio, 300, &args);
    let failed = ["verify failed", "bad magic", "bad header"]
        .iter()
        .any(|m| text.contains(m))
        || text
            .lines()
            .any(|l| l.contains("err=") && !l.contains("err= 0"));
    let did_io = text.contains("issued rwts");
    (ok && did_io && !failed, text)
}

fn escaped(url: &str) -> String {
    url.replace(':', "\\:")
}

#[test]
fn written_data_is_in_the_flat_extent_and_survives_a_restart() {
    let Some(fio) = fio() else { return };
    let ds = Datastore::new();
    ds.target("d", &[]);
    let descriptor = ds.lun("d", 0, "64M");
    let flat = descriptor.with_file_name(format!(
        "{}-flat.vmdk",
        descriptor.file_stem().unwrap().to_string_lossy()
    ));
    assert!(flat.is_file(), "{flat:?}");
    let url = escaped(&ds.url("d", 0));
    let (offset, size) = (4 << 20, 32 << 20);
    let mut vitd = ds.start();
    let (ok, out) = fio_pass(&fio, "libiscsi", &url, offset, size, 8, false);
    assert!(ok, "write pass: {out}");
    assert!(vitd.stop().success(), "{}", vitd.log_text());
    // The extent file holds exactly what the initiator wrote.
    let (ok, out) = fio_pass(&fio, "psync", flat.to_str().unwrap(), offset, size, 8, true);
    assert!(ok, "verify of the flat extent file: {out}");
    // And after a restart the target serves it back.
    let _vitd = ds.start();
    let (ok, out) = fio_pass(&fio, "libiscsi", &url, offset, size, 8, true);
    assert!(ok, "verify through iSCSI after restart: {out}");
}

#[test]
fn polling_data_threads_keep_data_intact() {
    // `--poll-us`: at queue depth 1 the data thread busy-polls its ring between commands instead
    // of sleeping; what is written must still land and read back exactly.
    let Some(fio) = fio() else { return };
    let ds = Datastore::new();
    ds.target("p", &[]);
    ds.lun("p", 0, "16M");
    let url = escaped(&ds.url("p", 0));
    let mut vitd = Vitd::start(ds.root(), ds.port, &["--poll-us", "200"]);
    let (ok, out) = fio_pass(&fio, "libiscsi", &url, 0, 8 << 20, 1, false);
    assert!(ok, "write pass at QD 1: {out}");
    let (ok, out) = fio_pass(&fio, "libiscsi", &url, 0, 8 << 20, 1, true);
    assert!(ok, "verify pass at QD 1: {out}");
    let (ok, out) = fio_pass(&fio, "libiscsi", &url, 8 << 20, 8 << 20, 8, false);
    assert!(ok, "write pass at QD 8: {out}");
    assert!(vitd.stop().success(), "{}", vitd.log_text());
}

#[test]
fn corruption_is_detected() {
    // The check above can fail: flip bytes in the extent and the same verify pass reports it.
    let Some(fio) = fio() else { return };
    let ds = Datastore::new();
    ds.target("c", &[]);
    let descriptor = ds.lun("c", 0, "16M");
    let flat = descriptor.with_file_name(format!(
        "{}-flat.vmdk",
        descriptor.file_stem().unwrap().to_string_lossy()
    ));
    let url = escaped(&ds.url("c", 0));
    let mut vitd = ds.start();
    let (ok, out) = fio_pass(&fio, "libiscsi", &url, 0, 8 << 20, 8, false);
    assert!(ok, "{out}");
    assert!(vitd.stop().success());
    let mut bytes = std::fs::read(&flat).unwrap();
    for b in bytes[..8 << 20].iter_mut().step_by(4096) {
        *b ^= 0xff;
    }
    std::fs::write(&flat, bytes).unwrap();
    let _vitd = ds.start();
    let (ok, _) = fio_pass(&fio, "libiscsi", &url, 0, 8 << 20, 8, true);
    assert!(!ok, "a corrupted extent must fail verification");
}

#[test]
fn io_across_two_extents_of_a_split_lun() {
    let Some(fio) = fio() else { return };
    if !have("qemu-img") {
        return;
    }
    let ds = Datastore::new();
    let uuid = ds.target("s", &[]);
    let vmdk = ds.root().join(&uuid).join("split.vmdk");
    qemu_vmdk(&vmdk, "twoGbMaxExtentFlat", "3G");
    ds.add_lun_body("s", 0, vmdk_lun(format!("{uuid}/split.vmdk"), 3 << 30));
    // 16 MiB straddling the 2 GiB extent boundary.
    let (offset, size) = ((2u64 << 30) - (8 << 20), 16 << 20);
    let url = escaped(&ds.url("s", 0));
    let mut vitd = ds.start();
    let (ok, out) = fio_pass(&fio, "libiscsi", &url, offset, size, 8, false);
    assert!(ok, "{out}");
    let (ok, out) = fio_pass(&fio, "libiscsi", &url, offset, size, 8, true);
    assert!(ok, "{out}");
    assert!(vitd.stop().success());
    // qemu-img reads the two extents as one disk: the blocks are where the initiator put them.
    let raw = ds.root().join("split.raw");
    let st = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&vmdk)
        .arg(&raw)
        .status()
        .unwrap();
    assert!(st.success());
    let (ok, out) = fio_pass(&fio, "psync", raw.to_str().unwrap(), offset, size, 8, true);
    assert!(ok, "verify of qemu-img's raw image: {out}");
}

#[test]
fn memory_luns_keep_data_only_with_a_capacity() {
    // ctl.conf's `backend ramdisk`: with `option capacity` (at least the size) the data is kept
    // in memory; without one there is no backing store (as in ctld): writes succeed and are
    // discarded, reads return zeroes, so the read-back check finds no data.
    let Some(fio) = fio() else { return };
    let ds = Datastore::new();
    ds.target("m", &[]);
    ds.add_lun_body("m", 0, memory_lun(64 << 20, Some("64M")));
    ds.add_lun_body("m", 1, memory_lun(64 << 20, None));
    ds.vitctl(&["config", "validate"]);
    let mut vitd = ds.start();
    let kept = escaped(&ds.url("m", 0));
    let (ok, out) = fio_pass(&fio, "libiscsi", &kept, 0, 32 << 20, 8, false);
    assert!(ok, "write pass: {out}");
    let (ok, out) = fio_pass(&fio, "libiscsi", &kept, 0, 32 << 20, 8, true);
    assert!(ok, "verify pass: {out}");
    let discarded = escaped(&ds.url("m", 1));
    let (ok, out) = fio_pass(&fio, "libiscsi", &discarded, 0, 8 << 20, 8, false);
    assert!(ok, "write pass: {out}");
    let (ok, out) = fio_pass(&fio, "libiscsi", &discarded, 0, 8 << 20, 8, true);
    assert!(!ok && out.contains("bad magic"), "zeroes read back: {out}");
    assert!(
        vitd.log_text().contains("no backing store"),
        "{}",
        vitd.log_text()
    );
    assert!(vitd.stop().success(), "{}", vitd.log_text());
}

#[test]
fn a_full_file_system_gives_space_allocation_failed() {
    // A sparse LUN on a file system that fills up: the write that finds no space (or only part
    // of what it needs) fails with DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT (the
    // thin-provisioning condition VMware and Linux act on), never as a success, and the writes
    // acknowledged before are intact. The small file system is a tmpfs mounted over the target's
    // directory in a mount namespace of vitd's own (root only).
    let Some(fio) = fio() else { return };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !have("unshare") {
        eprintln!("note: needs root and unshare(1) to mount a small tmpfs; skipping");
        return;
    }
    // A container may refuse mount namespaces or mounts even to root.
    let probe_dir = tempfile::tempdir().unwrap();
    let probe = Command::new("unshare")
        .args([
            "-m",
            "--propagation",
            "private",
            "mount",
            "-t",
            "tmpfs",
            "tmpfs",
        ])
        .arg(probe_dir.path())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("note: cannot mount a tmpfs in a mount namespace here; skipping");
        return;
    }
    let ds = Datastore::new();
    let uuid = ds.target("full", &[]);
    ds.lun("full", 0, "64M");
    let dir = ds.root().join(&uuid);
    let save = ds.root().join("saved-lun");
    let script = format!(
        "set -e; cp -a '{d}' '{s}'; mount -t tmpfs -o size=8m tmpfs '{d}'; cp -a '{s}'/. '{d}'/; \
         exec '{vitd}' --datastore '{root}' --cores 1",
        d = dir.display(),
        s = save.display(),
        vitd = env!("CARGO_BIN_EXE_vitd"),
        root = ds.root().display(),
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", &script]);
    let mut vitd = Vitd::spawn(cmd, ds.port);
    let url = escaped(&ds.url("full", 0));
    let (ok, out) = fio_pass(&fio, "libiscsi", &url, 0, 4 << 20, 4, false);
    assert!(ok, "write pass within the space: {out}");
    runs_out_of_space(&fio, &url, "8M", "32M");
    let (ok, out) = fio_pass(&fio, "libiscsi", &url, 0, 4 << 20, 4, true);
    assert!(ok, "what was acknowledged before is intact: {out}");
    assert!(vitd.stop().success(), "{}", vitd.log_text());
}

/// Writes `size` sequentially from `offset` (fio sizes) where there is less space than that: fio
/// must fail, and every write that failed must have failed with SPACE ALLOCATION FAILED WRITE
/// PROTECT (libiscsi prints the ASC/ASCQ as 0x2707).
fn runs_out_of_space(fio: &Path, url: &str, offset: &str, size: &str) {
    let (ok, text) = run_fio(
        fio,
        120,
        &[
            "--name=fill",
            "--ioengine=libiscsi",
            &format!("--filename={url}"),
            &format!("--offset={offset}"),
            &format!("--size={size}"),
            "--rw=write",
            "--bs=64k",
            "--iodepth=4",
        ],
    );
    assert!(!ok, "{size} fit? {text}");
    let failures: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("request failed"))
        .collect();
    assert!(
        !failures.is_empty() && failures.iter().all(|l| l.contains("(0x2707)")),
        "every failed write is SPACE ALLOCATION FAILED WRITE PROTECT: {text}"
    );
}

#[test]
fn a_thin_memory_lun_takes_memory_up_to_its_capacity() {
    // ctld's thin ramdisk: `option capacity` below the size. Writes take memory up to the
    // capacity; past it they fail with SPACE ALLOCATION FAILED; what was written stays.
    let Some(fio) = fio() else { return };
    let ds = Datastore::new();
    ds.target("thin", &[]);
    ds.add_lun_body("thin", 0, memory_lun(64 << 20, Some("8M")));
    let mut vitd = ds.start();
    let url = escaped(&ds.url("thin", 0));
    let (ok, out) = fio_pass(&fio, "libiscsi", &url, 0, 4 << 20, 4, false);
    assert!(ok, "write pass within the capacity: {out}");
    runs_out_of_space(&fio, &url, "8M", "32M");
    let (ok, out) = fio_pass(&fio, "libiscsi", &url, 0, 4 << 20, 4, true);
    assert!(ok, "what was acknowledged is intact: {out}");
    assert!(vitd.stop().success(), "{}", vitd.log_text());
}

/// Three sessions on one data thread, each with 128 reads or writes of 1 MiB in flight: twelve
/// times the thread's 32 large buffers, and more commands than its registered buffers can serve
/// or keep the first bursts of (288). Commands that find none wait for one, the immediate data
/// of those past 288 kept on the heap (fio's libiscsi engine takes TASK SET FULL as an I/O
/// error, and did get it here before: first with two sessions at depth 64, then past 288),
/// and every byte written reads back.
#[test]
fn deep_queues_of_large_io_wait_for_buffers_and_lose_nothing() {
    let Some(fio) = fio() else { return };
    let ds = Datastore::new();
    ds.target("q", &[]);
    ds.lun("q", 0, "480M");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vitd"));
    cmd.arg("--datastore").arg(ds.root()).args(["--cores", "1"]);
    let vitd = Vitd::spawn(cmd, ds.port);
    let url = escaped(&ds.url("q", 0));
    let (ok, text) = run_fio(
        &fio,
        300,
        &[
            "--name=deep",
            "--ioengine=libiscsi",
            &format!("--filename={url}"),
            "--rw=randwrite",
            "--bs=1m",
            "--iodepth=128",
            "--iodepth_batch_submit=128",
            "--numjobs=3",
            "--size=160m",
            "--offset_increment=160m",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_state_save=0",
        ],
    );
    assert!(ok, "{text}\n{}", vitd.log_text());
    assert_eq!(
        text.matches("err= 0").count(),
        3,
        "every job without error: {text}"
    );
    assert!(
        !text.contains("TASK_SET_FULL") && !text.contains("verify failed"),
        "{text}"
    );
}
