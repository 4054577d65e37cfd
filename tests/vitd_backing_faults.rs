//! The backing store failing under vitd: a LUN's extents on a small ext4 file system on a loop
//! device (device-mapper is not in every kernel; these tests need only loop and ext4), which is
//! then shut down (every I/O fails with EIO), filled (ENOSPC), or starved below (the loop
//! device's image on a full tmpfs: writeback fails once, and the kernel reports it to one fsync
//! only). Each failing command must get CHECK CONDITION with the sense its failure calls for,
//! never GOOD; other LUNs keep working. They need root, loop devices and mkfs.ext4, and skip
//! with a note where those are missing.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use vit::iscsi::initiator::{CommandResult, Session, login};

const BS: usize = 512;

/// Runs a program that must succeed; returns its stdout.
fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Whether this machine lets a test make and mount loop-device file systems.
fn can_mount_loops() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ok = root
        && Path::new("/dev/loop-control").exists()
        && have("losetup")
        && have("mkfs.ext4")
        && have("mount");
    if !ok {
        eprintln!("skipped: needs root, /dev/loop-control, losetup and mkfs.ext4");
    }
    ok
}

/// An ext4 file system of `mib` MiB (1 KiB blocks) on a loop device, mounted at `at`; its image
/// lives in a directory of its own, optionally a tmpfs of `tmpfs_mib` MiB. Unmounted, detached
/// and removed on drop (after whatever used it: declare it before the vitd serving it).
struct LoopFs {
    at: PathBuf,
    dev: String,
    image_dir: tempfile::TempDir,
    tmpfs: bool,
}

impl LoopFs {
    fn new(at: &Path, mib: u64, tmpfs_mib: Option<u64>) -> LoopFs {
        let image_dir = tempfile::tempdir().unwrap();
        let dir = image_dir.path().to_str().unwrap().to_string();
        if let Some(t) = tmpfs_mib {
            sh(
                "mount",
                &["-t", "tmpfs", "-o", &format!("size={t}M"), "tmpfs", &dir],
            );
        }
        let image = image_dir.path().join("image");
        let image = image.to_str().unwrap();
        sh("truncate", &["-s", &format!("{mib}M"), image]);
        let mut fs = LoopFs {
            at: at.to_path_buf(),
            dev: String::new(),
            image_dir,
            tmpfs: tmpfs_mib.is_some(),
        };
        fs.dev = sh("losetup", &["-f", "--show", image]);
        // Metadata written in full now (nothing left for later in the image's holes): only the
        // data blocks stay unallocated in the image.
        sh(
            "mkfs.ext4",
            &[
                "-q",
                "-b",
                "1024",
                "-E",
                "nodiscard,lazy_itable_init=0,lazy_journal_init=0",
                &fs.dev,
            ],
        );
        sh(
            "mount",
            &["-o", "errors=remount-ro", &fs.dev, at.to_str().unwrap()],
        );
        fs
    }

    /// Reports a file-system error (ext4's `trigger_fs_error`): mounted `errors=remount-ro`,
    /// the file system turns read-only under the files open on it.
    /// False where the kernel has no such knob.
    fn fail_read_only(&self) -> bool {
        let name = Path::new(&self.dev).file_name().unwrap();
        let knob = Path::new("/sys/fs/ext4")
            .join(name)
            .join("trigger_fs_error");
        if !knob.exists() {
            eprintln!("skipped: this kernel has no {}", knob.display());
            return false;
        }
        std::fs::write(knob, "vit test").unwrap();
        true
    }

    /// Shuts the file system down (EXT4_IOC_SHUTDOWN, not flushing the log): from now on every
    /// read, write and fsync on it fails with EIO, as on a dead device.
    fn shut_down(&self) {
        const EXT4_IOC_SHUTDOWN: libc::c_ulong = 0x8004_587d;
        const NOLOGFLUSH: u32 = 2;
        let dir = std::fs::File::open(&self.at).unwrap();
        let flags = NOLOGFLUSH;
        // SAFETY: the ioctl reads a u32 from a valid pointer on a descriptor we own.
        let rc = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&dir),
                EXT4_IOC_SHUTDOWN,
                &flags,
            )
        };
        assert_eq!(rc, 0, "shutdown: {}", std::io::Error::last_os_error());
    }

    /// Unmounts `path`. A process's io_uring lets go of its files a moment after it exits:
    /// retries a while before leaving the mount to a lazy unmount.
    fn unmount(path: &Path) {
        for _ in 0..50 {
            if Command::new("umount")
                .arg(path)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = Command::new("umount").arg("-l").arg(path).status();
    }

    /// Fills the tmpfs under the image: the image's holes can no longer be written.
    fn starve(&self) {
        use std::io::Write;
        assert!(self.tmpfs);
        let mut f = std::fs::File::create(self.image_dir.path().join("fill")).unwrap();
        let chunk = vec![0x55u8; 1 << 20];
        while f.write_all(&chunk).is_ok() {}
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        LoopFs::unmount(&self.at);
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
        if self.tmpfs {
            LoopFs::unmount(self.image_dir.path());
        }
    }
}

/// (status, sense key, ASC, ASCQ) of a command's answer (fixed-format sense).
fn outcome(r: &CommandResult) -> (u8, u8, u8, u8) {
    match r.sense.as_slice() {
        [_, _, key, _, _, _, _, _, _, _, _, _, asc, ascq, ..] => (r.status, key & 0xf, *asc, *ascq),
        _ => (r.status, 0, 0, 0),
    }
}

const GOOD: (u8, u8, u8, u8) = (0, 0, 0, 0);
const READ_ERROR: (u8, u8, u8, u8) = (2, 3, 0x11, 0);
const WRITE_ERROR: (u8, u8, u8, u8) = (2, 3, 0x0c, 0);
const NO_SPACE: (u8, u8, u8, u8) = (2, 7, 0x27, 7);
const WRITE_PROTECTED: (u8, u8, u8, u8) = (2, 7, 0x27, 0);

fn read(s: &mut Session, lba: u64, blocks: u32) -> CommandResult {
    s.command(0, &cdb16(0x88, lba, blocks), &[], blocks * BS as u32)
        .unwrap()
}

fn write(s: &mut Session, lba: u64, data: &[u8]) -> CommandResult {
    s.command(0, &cdb16(0x8a, lba, (data.len() / BS) as u32), data, 0)
        .unwrap()
}

/// A WRITE(16) with FUA.
fn fua_write(s: &mut Session, lba: u64, data: &[u8]) -> CommandResult {
    let mut cdb = cdb16(0x8a, lba, (data.len() / BS) as u32);
    cdb[1] |= 0x08;
    s.command(0, &cdb, data, 0).unwrap()
}

fn sync_cache(s: &mut Session) -> CommandResult {
    s.command(0, &cdb16(0x91, 0, 0), &[], 0).unwrap()
}

/// A SYNCHRONIZE CACHE(16) with IMMED set.
fn sync_cache_immed(s: &mut Session) -> CommandResult {
    let mut cdb = cdb16(0x91, 0, 0);
    cdb[1] |= 0x02;
    s.command(0, &cdb, &[], 0).unwrap()
}

/// A SYNCHRONIZE CACHE of each session: none may be answered GOOD (`why` says what that would be).
fn flushes_fail(sessions: [&mut Session; 2], why: &str) {
    for s in sessions {
        assert_ne!(outcome(&sync_cache(s)), GOOD, "{why}");
    }
}

/// A WRITE SAME(16) of `block` over `blocks` blocks from `lba`.
fn write_same(s: &mut Session, lba: u64, blocks: u32, block: &[u8]) -> CommandResult {
    s.command(0, &cdb16(0x93, lba, blocks), block, 0).unwrap()
}

/// A session to LUN 0 of target `alias`, past its power-on unit attention.
fn session(port: u16, alias: &str, n: u8) -> Session {
    let mut s = login(
        port,
        &format!("iqn.2026-11.io.vit:faults-{n}"),
        &iqn(alias),
        [0x80, 0, 0, 0, 0x4a, n],
    );
    s.test_unit_ready().unwrap();
    s
}

/// A datastore with target `alias` whose directory is a fresh ext4 file system of `mib` MiB
/// (on a tmpfs of `tmpfs_mib` MiB when given), and LUN 0 of `size` on it (thick when
/// `preallocate`).
fn lun_on_loop(
    ds: &Datastore,
    alias: &str,
    mib: u64,
    tmpfs_mib: Option<u64>,
    size: &str,
    preallocate: bool,
) -> LoopFs {
    let uuid = ds.target(alias, &[]);
    let fs = LoopFs::new(&ds.root().join(uuid), mib, tmpfs_mib);
    let mut args = vec![
        "target", "lun", "add", "--target", alias, "--id", "0", "--size", size,
    ];
    if preallocate {
        args.push("--preallocate");
    }
    ds.json(&args);
    fs
}

fn pattern(tag: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| tag ^ (i as u8).wrapping_mul(7)).collect()
}

fn vitd_flags(buffered: bool) -> &'static [&'static str] {
    if buffered { &["--buffered"] } else { &[] }
}

/// A device that fails every I/O: reads get MEDIUM ERROR / UNRECOVERED READ ERROR, writes
/// (plain and WRITE SAME) and SYNCHRONIZE CACHE MEDIUM ERROR / WRITE ERROR, nothing hangs, the
/// failures are logged within the log budget, and a LUN on another file system is untouched.
fn device_errors(buffered: bool) {
    let ds = Datastore::new();
    let fs = lun_on_loop(&ds, "bad", 32, None, "8M", false);
    ds.target("good", &[]);
    ds.lun("good", 0, "8M");
    let vitd = Vitd::start(ds.root(), ds.port, vitd_flags(buffered));
    let mut bad = session(ds.port, "bad", 1);
    let mut good = session(ds.port, "good", 2);
    let data = pattern(1, 8 * BS);
    for s in [&mut bad, &mut good] {
        assert_eq!(outcome(&write(s, 8, &data)), GOOD);
        assert_eq!(outcome(&sync_cache(s)), GOOD);
    }
    fs.shut_down();
    // Past the page cache: a block not read yet.
    assert_eq!(outcome(&read(&mut bad, 1000, 8)), READ_ERROR);
    assert_eq!(outcome(&write(&mut bad, 16, &data)), WRITE_ERROR);
    // In buffered mode the write may land in the page cache: the flush must then fail.
    assert_eq!(outcome(&sync_cache(&mut bad)), WRITE_ERROR);
    assert_eq!(outcome(&sync_cache(&mut bad)), WRITE_ERROR);
    assert_eq!(
        outcome(&write_same(&mut bad, 100, 64, &pattern(3, BS))),
        WRITE_ERROR
    );
    // A flood of failures, each answered.
    for i in 0..300 {
        let r = read(&mut bad, 2000 + i * 8, 8);
        assert_eq!(outcome(&r), READ_ERROR, "read {i}");
    }
    assert_eq!(outcome(&bad.command(0, &[0u8; 6], &[], 0).unwrap()), GOOD);
    // No failed write is still counted in flight: a COMPARE AND WRITE (which waits for the
    // plain writes in flight) is answered, with the read error it meets.
    let mut caw = cdb16(0x89, 8, 0);
    caw[13] = 1;
    let r = bad.command(0, &caw, &pattern(4, 2 * BS), 0).unwrap();
    assert_eq!(outcome(&r), READ_ERROR);
    // The other LUN, and a new session to it, are served as before.
    let mut again = session(ds.port, "good", 3);
    for s in [&mut good, &mut again] {
        let r = read(s, 8, 8);
        assert_eq!(outcome(&r), GOOD);
        assert_eq!(r.data_in, data);
        assert_eq!(outcome(&write(s, 40, &data)), GOOD);
        assert_eq!(outcome(&sync_cache(s)), GOOD);
    }
    // The count of the lines the flood left out is told within a second or two, though no
    // failure follows it.
    assert!(
        wait_until(20, || vitd
            .log_text()
            .contains("similar log lines left out")),
        "the lines left out were never counted: {}",
        vitd.log_text()
    );
    let log = vitd.log_text();
    let lines = log.matches("backing-store I/O failed").count();
    assert!(lines >= 1, "no failure logged: {log}");
    assert!(
        log.lines()
            .filter(|l| l.contains("backing-store I/O failed"))
            .all(|l| l.contains(&format!("(target {} LUN 0)", iqn("bad")))),
        "a failure logged without its target and LUN: {log}"
    );
    assert!(
        lines <= 60,
        "{lines} failure lines: the log budget is not kept"
    );
    drop(vitd);
    drop(fs);
}

#[test]
fn device_errors_fail_commands_with_medium_errors_direct() {
    if can_mount_loops() {
        device_errors(false);
    }
}

#[test]
fn device_errors_fail_commands_with_medium_errors_buffered() {
    if can_mount_loops() {
        device_errors(true);
    }
}

/// A thin LUN on a file system that fills up: the write that finds no space gets DATA PROTECT /
/// SPACE ALLOCATION FAILED (so does a WRITE SAME), every write acknowledged before reads back,
/// and once space is freed the same writes succeed.
fn no_space(buffered: bool) {
    let ds = Datastore::new();
    let fs = lun_on_loop(&ds, "thin", 16, None, "32M", false);
    let ballast = fs.at.join("ballast");
    sh(
        "dd",
        &[
            "if=/dev/zero",
            &format!("of={}", ballast.display()),
            "bs=1M",
            "count=4",
            "conv=fsync",
        ],
    );
    let vitd = Vitd::start(ds.root(), ds.port, vitd_flags(buffered));
    let mut s = session(ds.port, "thin", 1);
    let chunk = 128u64; // blocks: 64 KiB, within the first burst
    let mut failed_at = None;
    for i in 0..(32 * 2048 / chunk) {
        let r = write(&mut s, i * chunk, &pattern(i as u8, chunk as usize * BS));
        match outcome(&r) {
            GOOD => {}
            NO_SPACE => {
                failed_at = Some(i);
                break;
            }
            other => panic!("write {i}: {other:?} {:?}", r.sense),
        }
    }
    let full = failed_at.expect("the file system never filled");
    // Still full: a WRITE SAME of data over new blocks finds no space either.
    let ws = write_same(&mut s, (full + 8) * chunk, 2048, &pattern(9, BS));
    assert_eq!(outcome(&ws), NO_SPACE, "{:?}", ws.sense);
    // Nor does an EXTENDED COPY of written blocks onto new ones: the copy is aborted.
    let me = naa(&mut s, 0);
    let list = xcopy_list(me, me, 2048, 1, (full + 16) * chunk);
    let r = s.command(0, &xcopy_cdb(list.len()), &list, 0).unwrap();
    let (status, key, ..) = outcome(&r);
    assert_eq!((status, key), (2, 0x0a), "COPY ABORTED: {:?}", r.sense);
    assert_eq!(outcome(&sync_cache(&mut s)), GOOD);
    for i in 0..full {
        let r = read(&mut s, i * chunk, chunk as u32);
        assert_eq!(outcome(&r), GOOD);
        assert!(
            r.data_in == pattern(i as u8, chunk as usize * BS),
            "write {i} lost"
        );
    }
    std::fs::remove_file(&ballast).unwrap();
    let r = s.command(0, &xcopy_cdb(list.len()), &list, 0).unwrap();
    assert_eq!(outcome(&r), GOOD, "{:?}", r.sense);
    let r = read(&mut s, (full + 16) * chunk, 2048);
    assert!(r.data_in == read(&mut s, 0, 2048).data_in, "copy");
    let data = pattern(full as u8, chunk as usize * BS);
    assert_eq!(outcome(&write(&mut s, full * chunk, &data)), GOOD);
    let ws = write_same(&mut s, (full + 8) * chunk, 256, &pattern(9, BS));
    assert_eq!(outcome(&ws), GOOD, "{:?}", ws.sense);
    assert_eq!(outcome(&sync_cache(&mut s)), GOOD);
    assert_eq!(read(&mut s, full * chunk, chunk as u32).data_in, data);
    assert_eq!(
        read(&mut s, (full + 8) * chunk + 255, 1).data_in,
        pattern(9, BS)
    );
    drop(vitd);
    drop(fs);
}

#[test]
fn a_full_file_system_fails_writes_with_space_allocation_failed_direct() {
    if can_mount_loops() {
        no_space(false);
    }
}

#[test]
fn a_full_file_system_fails_writes_with_space_allocation_failed_buffered() {
    if can_mount_loops() {
        no_space(true);
    }
}

/// LUN 0 of target `alias`, buffered, on a file system whose loop device's image can be kept
/// from growing (`LoopFs::starve`: then its writeback of new blocks fails with ENOSPC), and `n`
/// sessions to it. The flat extent is thick (its blocks placed, unwritten), the image's data
/// blocks holes.
fn starvable_lun(alias: &str, n: u8) -> (Datastore, LoopFs, Vitd, Vec<Session>) {
    let ds = Datastore::new();
    let fs = lun_on_loop(&ds, alias, 32, Some(40), "8M", true);
    let vitd = Vitd::start(ds.root(), ds.port, &["--buffered"]);
    let sessions = (1..=n).map(|i| session(ds.port, alias, i)).collect();
    (ds, fs, vitd, sessions)
}

/// Linux reports a writeback failure to one fsync of a file only: the next one succeeds though
/// the data never reached the device. A flush that failed must make every later SYNCHRONIZE
/// CACHE of the LUN fail too (from any session), never answer GOOD over lost writes.
#[test]
fn a_failed_flush_is_never_followed_by_good() {
    if !can_mount_loops() {
        return;
    }
    let (_ds, fs, vitd, mut sessions) = starvable_lun("flush", 2);
    let [a, b] = &mut sessions[..] else {
        unreachable!()
    };
    fs.starve();
    let data = pattern(5, 16 * BS);
    // Write-back cache: acknowledged once in the page cache.
    assert_eq!(outcome(&write(a, 64, &data)), GOOD);
    // With IMMED set, too: vitd answers it once its flush is done, with the flush's verdict
    // (SBC-4 would have it answered at once; a GOOD then would tell nothing of this failure).
    let first = outcome(&sync_cache_immed(b));
    assert_ne!(
        first, GOOD,
        "the writeback of the image's holes cannot succeed"
    );
    assert_eq!(first.1, 7, "{first:?}"); // the loop device says ENOSPC
    flushes_fail([a, b], "a flush after a failed one answered GOOD");
    // The operator reads which LUN of which target may have lost writes.
    let log = vitd.log_text();
    let target_lun = format!("target {} LUN 0: flushing its writes", iqn("flush"));
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains(&target_lun)),
        "{log}"
    );
    drop(vitd);
    drop(fs);
}

/// A writeback that failed in the background (here forced by sync(1)) is reported to the next
/// flush of the file, whichever it is: a FUA write through the page cache (RWF_DSYNC) that is
/// told it (ENOSPC from the starved device) must latch it, or the SYNCHRONIZE CACHE after it
/// finds nothing to report and is answered GOOD over the lost write.
#[test]
fn a_fua_write_told_of_a_failed_writeback_latches_it() {
    if !can_mount_loops() {
        return;
    }
    let (_ds, fs, vitd, mut sessions) = starvable_lun("fua", 2);
    let [a, b] = &mut sessions[..] else {
        unreachable!()
    };
    fs.starve();
    assert_eq!(outcome(&write(a, 64, &pattern(6, 16 * BS))), GOOD);
    sh("sync", &[]);
    let r = fua_write(b, 512, &pattern(7, 16 * BS));
    assert_ne!(
        outcome(&r),
        GOOD,
        "the FUA write's own writeback cannot succeed"
    );
    flushes_fail([a, b], "GOOD over a write whose writeback failed");
    drop(vitd);
    drop(fs);
}

/// As `a_failed_flush_is_never_followed_by_good`, with the SYNCHRONIZE CACHEs of many sessions
/// (on both data threads) sent at once after writes the starved device cannot take: the kernel
/// reports the failed writeback to one fdatasync only, and none of them may be answered GOOD
/// (vitd runs one flush round of a LUN at a time, and those that arrive meanwhile are served by
/// the next, after the failure is latched).
/// The race is a matter of timing: several fresh file systems and daemons, one burst each
/// (before the fix about one burst in five had a GOOD answer).
#[test]
fn concurrent_flushes_after_a_failed_writeback_are_never_good() {
    if !can_mount_loops() {
        return;
    }
    for _ in 0..8 {
        flush_burst_after_a_failed_writeback();
    }
}

fn flush_burst_after_a_failed_writeback() {
    let (_ds, fs, vitd, mut sessions) = starvable_lun("flushes", 8);
    // While the device works: FUA writes (RWF_DSYNC through the page cache) and flushes of
    // all sessions at once, every one GOOD (a round waits for the FUA writes in flight when it
    // ends, and nothing is left waiting).
    let healthy = burst(&mut sessions, |i, s| {
        let r = fua_write(s, 1024 + 16 * i as u64, &pattern(i as u8, 16 * BS));
        [outcome(&r), outcome(&sync_cache(s))]
    });
    assert!(healthy.iter().flatten().all(|&o| o == GOOD), "{healthy:?}");
    fs.starve();
    for (i, s) in sessions.iter_mut().enumerate() {
        let data = pattern(i as u8, 16 * BS);
        assert_eq!(outcome(&write(s, 64 + 16 * i as u64, &data)), GOOD);
    }
    let answers = burst(&mut sessions, |_, s| {
        [outcome(&sync_cache(s)), outcome(&sync_cache(s))]
    });
    for (i, a) in answers.iter().enumerate() {
        assert!(
            a.iter().all(|&o| o != GOOD),
            "session {i}: a SYNCHRONIZE CACHE answered GOOD over a failed writeback: {answers:?}"
        );
    }
    drop(vitd);
    drop(fs);
}

/// Runs `each` on every session at once (one thread each, started together); their answers.
fn burst(
    sessions: &mut [Session],
    each: impl Fn(usize, &mut Session) -> [(u8, u8, u8, u8); 2] + Sync,
) -> Vec<[(u8, u8, u8, u8); 2]> {
    let start = std::sync::Barrier::new(sessions.len());
    std::thread::scope(|scope| {
        let (start, each) = (&start, &each);
        let runs: Vec<_> = sessions
            .iter_mut()
            .enumerate()
            .map(|(i, s)| {
                scope.spawn(move || {
                    start.wait();
                    each(i, s)
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    })
}

/// A flat extent truncated under vitd: a read past its new end fails (MEDIUM ERROR) rather than
/// return data that is not there, a read before it is served, and a write past it is stored.
#[test]
fn a_truncated_extent_fails_reads_past_its_end() {
    let (ds, vitd) = serve_one("trunc", "8M");
    let mut s = session(ds.port, "trunc", 1);
    let data = pattern(7, 8 * BS);
    assert_eq!(outcome(&write(&mut s, 16000, &data)), GOOD);
    assert_eq!(outcome(&write(&mut s, 0, &data)), GOOD);
    let flat = std::fs::read_dir(ds.root())
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("-flat.vmdk"))
        .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&flat)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    assert_eq!(outcome(&read(&mut s, 16000, 8)), READ_ERROR);
    // Across the new end.
    assert_eq!(outcome(&read(&mut s, 8190, 4)), READ_ERROR);
    let r = read(&mut s, 0, 8);
    assert_eq!((outcome(&r), r.data_in), (GOOD, data.clone()));
    assert_eq!(outcome(&write(&mut s, 16000, &data)), GOOD);
    let r = read(&mut s, 16000, 8);
    assert_eq!((outcome(&r), r.data_in), (GOOD, data));
    drop(vitd);
}

/// A file system that turns read-only under vitd (an error, `errors=remount-ro`): reads are
/// served, writes fail, and no SYNCHRONIZE CACHE is answered GOOD over the writes still in the
/// page cache.
fn read_only(buffered: bool) {
    let ds = Datastore::new();
    let fs = lun_on_loop(&ds, "ro", 32, None, "8M", false);
    let vitd = Vitd::start(ds.root(), ds.port, vitd_flags(buffered));
    let mut s = session(ds.port, "ro", 1);
    let data = pattern(2, 8 * BS);
    assert_eq!(outcome(&write(&mut s, 8, &data)), GOOD);
    assert_eq!(outcome(&sync_cache(&mut s)), GOOD);
    assert_eq!(outcome(&write(&mut s, 80, &data)), GOOD);
    if !fs.fail_read_only() {
        return;
    }
    let r = read(&mut s, 8, 8);
    assert_eq!((outcome(&r), r.data_in), (GOOD, data.clone()));
    // The medium is write-protected now (EROFS), not failing: DATA PROTECT / WRITE PROTECTED.
    assert_eq!(outcome(&write(&mut s, 16, &data)), WRITE_PROTECTED);
    assert_eq!(
        outcome(&write_same(&mut s, 100, 64, &pattern(3, BS))),
        WRITE_PROTECTED
    );
    for _ in 0..2 {
        let r = sync_cache(&mut s);
        if buffered {
            assert_ne!(
                outcome(&r),
                GOOD,
                "the write at 80 was only in the page cache"
            );
        }
    }
    let r = read(&mut s, 8, 8);
    assert_eq!((outcome(&r), r.data_in), (GOOD, data));
    drop(vitd);
    drop(fs);
}

#[test]
fn a_file_system_turned_read_only_fails_writes_direct() {
    if can_mount_loops() {
        read_only(false);
    }
}

#[test]
fn a_file_system_turned_read_only_fails_writes_buffered() {
    if can_mount_loops() {
        read_only(true);
    }
}

/// A command spanning the two extents of a split LUN where the second one's device fails: it
/// fails as a whole (the part on the first extent done or not), the first extent is still
/// served alone, and the LUN is not left waiting on anything.
#[test]
fn a_command_across_two_extents_fails_when_one_extent_does() {
    if !can_mount_loops() || !have("qemu-img") {
        return;
    }
    let ds = Datastore::new();
    let uuid = ds.target("split", &[]);
    let vmdk = ds.root().join(&uuid).join("split.vmdk");
    qemu_vmdk(&vmdk, "twoGbMaxExtentFlat", "3G");
    ds.add_lun_body("split", 0, vmdk_lun(format!("{uuid}/split.vmdk"), 3 << 30));
    // The second extent's file put on a file system of its own (a bind mount over it).
    let mnt = tempfile::tempdir().unwrap();
    let fs = LoopFs::new(mnt.path(), 32, None);
    let second = ds.root().join(&uuid).join("split-f002.vmdk");
    let other = fs.at.join("f002");
    sh("truncate", &["-s", "1G", other.to_str().unwrap()]);
    let _bind = Bind::new(&other, &second);
    let vitd = ds.start();
    let mut s = session(ds.port, "split", 1);
    let boundary = (2u64 << 30) / BS as u64;
    let data = pattern(4, 16 * BS);
    assert_eq!(outcome(&write(&mut s, boundary - 8, &data)), GOOD);
    let r = read(&mut s, boundary - 8, 16);
    assert_eq!((outcome(&r), r.data_in), (GOOD, data.clone()));
    fs.shut_down();
    for _ in 0..20 {
        assert_eq!(outcome(&read(&mut s, boundary - 8, 16)), READ_ERROR);
        assert_eq!(outcome(&write(&mut s, boundary - 8, &data)), WRITE_ERROR);
    }
    let r = read(&mut s, boundary - 8, 8);
    assert_eq!((outcome(&r), r.data_in), (GOOD, data[..8 * BS].to_vec()));
    assert_eq!(
        outcome(&write(&mut s, boundary - 16, &data[..8 * BS])),
        GOOD
    );
    drop(vitd);
    drop(_bind);
    drop(fs);
}

/// A bind mount of `from` over `to`, undone on drop.
struct Bind(PathBuf);

impl Bind {
    fn new(from: &Path, to: &Path) -> Bind {
        sh(
            "mount",
            &["--bind", from.to_str().unwrap(), to.to_str().unwrap()],
        );
        Bind(to.to_path_buf())
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        LoopFs::unmount(&self.0);
    }
}

/// A FUA write through the page cache (RWF_DSYNC) flushes its range, and a writeback failure
/// it meets is reported to it alone: Linux tells it to no later fsync. Its ENOSPC then says
/// that acknowledged writes sharing its pages never reached the device, not only that it found
/// no space: the next SYNCHRONIZE CACHE must not answer GOOD. It did (only a failure other than
/// ENOSPC of such a write was latched).
#[test]
fn a_fua_write_whose_flush_found_no_space_is_followed_by_no_good_flush() {
    if !can_mount_loops() {
        return;
    }
    let (_ds, fs, vitd, mut sessions) = starvable_lun("fuapage", 2);
    let [a, b] = &mut sessions[..] else {
        unreachable!()
    };
    fs.starve();
    // Block 64 acknowledged from the page cache; block 65, in the same page, written FUA.
    assert_eq!(outcome(&write(a, 64, &pattern(6, BS))), GOOD);
    assert_ne!(
        outcome(&fua_write(a, 65, &pattern(7, BS))),
        GOOD,
        "the writeback of the image's holes cannot succeed"
    );
    flushes_fail(
        [a, b],
        "a flush after a FUA write whose flush failed answered GOOD",
    );
    drop(vitd);
    drop(fs);
}

/// A LUN whose flat extent is gone when vitd starts is brought up offline: listed, answering
/// INQUIRY and NOT READY, MANUAL INTERVENTION REQUIRED to the rest, with an error in the log
/// that names it, while the target's other LUN and every other target are served (vitd refused
/// to start at all, taking every target of the datastore down for one missing file).
#[test]
fn a_lun_whose_extent_is_missing_at_start_is_offline_and_the_rest_are_served() {
    let ds = Datastore::new();
    ds.target("broken", &[]);
    ds.lun("broken", 0, "4M");
    let descriptor = ds.lun("broken", 1, "4M");
    ds.target("fine", &[]);
    ds.lun("fine", 0, "4M");
    let flat = descriptor.with_file_name(format!(
        "{}-flat.vmdk",
        descriptor.file_stem().unwrap().to_str().unwrap()
    ));
    // Initiators match LUNs by their NAA designator: offline, it is the one it had online.
    let online = {
        let _vitd = ds.start();
        naa(&mut session(ds.port, "broken", 1), 1)
    };
    std::fs::remove_file(&flat).unwrap();
    let vitd = ds.start();
    let log = std::fs::read_to_string(&vitd.log).unwrap();
    assert!(
        log.contains("LUN 1: offline") && log.contains(flat.to_str().unwrap()),
        "{log}"
    );
    assert!(!log.contains("O_DIRECT refused"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "terminal colour codes in a log file: {log:?}"
    );

    let mut s = session(ds.port, "broken", 1);
    let data = pattern(3, 8 * BS);
    assert_eq!(outcome(&write(&mut s, 8, &data)), GOOD);
    let r = read(&mut s, 8, 8);
    assert_eq!((outcome(&r), r.data_in), (GOOD, data));
    const NOT_READY: (u8, u8, u8, u8) = (2, 2, 0x04, 0x03);
    let _ = s.command(1, &[0u8; 6], &[], 0); // LUN 1's power-on unit attention
    let mut rc16 = vec![0x9e, 0x10];
    rc16.extend([0u8; 8].iter().chain(&32u32.to_be_bytes()).chain(&[0, 0]));
    for cdb in [vec![0u8; 6], cdb16(0x88, 0, 1), rc16] {
        let want = match cdb[0] {
            0x88 => BS as u32,
            0x9e => 32,
            _ => 0,
        };
        let r = s.command(1, &cdb, &[], want).unwrap();
        assert_eq!(outcome(&r), NOT_READY, "{cdb:02x?}");
    }
    // A write with its data (immediate, for more than the target asks): answered, its data
    // dropped, the session goes on.
    let big = pattern(4, 128 * BS);
    let r = s.command(1, &cdb16(0x8a, 0, 256), &big, 0).unwrap();
    assert_eq!(outcome(&r), NOT_READY);
    assert_eq!(outcome(&read(&mut s, 8, 1)), GOOD);
    let r = s.command(1, &[0x12, 0, 0, 0, 36, 0], &[], 36).unwrap();
    assert_eq!((r.status, r.data_in.first()), (0, Some(&0)), "INQUIRY");
    let offline = naa(&mut s, 1);
    assert_eq!(offline, online);
    // An EXTENDED COPY through LUN 0 naming the offline LUN, as source or destination, cannot
    // reach it: COPY ABORTED, COPY TARGET DEVICE NOT REACHABLE, before anything is moved (it
    // was started, and ended by its failed I/O with COPY ABORTED and no reason).
    let me = naa(&mut s, 0);
    let before = read(&mut s, 0, 1).data_in;
    for (src, dst) in [(me, offline), (offline, me)] {
        let list = xcopy_list(src, dst, 1, 1, 0);
        let r = s.command(0, &xcopy_cdb(list.len()), &list, 0).unwrap();
        assert_eq!(outcome(&r), (2, 0x0A, 0x0D, 0x02));
    }
    assert_eq!(read(&mut s, 0, 1).data_in, before);

    // Real clients: the other target as ever, and the offline LUN's condition as they see it.
    let (ok, out) = client("iscsi-readcapacity16", &[&ds.url("fine", 0)]);
    assert!(ok && out.contains("Total size:4194304"), "{out}");
    // libiscsi's tools send TEST UNIT READY after login, and stop at what it says.
    let (ok, out) = client("iscsi-readcapacity16", &[&ds.url("broken", 1)]);
    assert!(
        !ok && out.contains("NOT READY") && out.contains("0x0403"),
        "{out}"
    );
    drop(vitd);
}
