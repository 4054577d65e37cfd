//! QEMU's own iSCSI block driver (qemu-img and qemu-io with `iscsi://` URLs, Debian's
//! qemu-block-extra) as the initiator. It uses the target differently from libiscsi's tools:
//! READ CAPACITY (16), the Block Limits and Logical Block Provisioning VPD pages, GET LBA STATUS
//! for block status, UNMAP for discards, WRITE SAME (16) for write-zeroes, and splits large
//! requests by the Block Limits page.
//!
//! Each test runs qemu through [`Tap`], a recording TCP relay between qemu and vitd that parses
//! the iSCSI PDUs of both directions after the fact, so each test checks that qemu reached the
//! SCSI command it is meant to exercise (and what vitd answered); the trace is printed.

mod common;

use common::*;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Whether qemu-img/qemu-io are there and qemu can open iSCSI URLs (qemu-block-extra's
/// block-iscsi module); says why not otherwise.
fn have_qemu_iscsi() -> bool {
    if !have("qemu-img") || !have("qemu-io") {
        return false;
    }
    // `qemu-img --help` lists iscsi with or without the module; opening it tells.
    let (_, out) = client_within(20, "qemu-img", &["info", "--image-opts", "driver=iscsi"]);
    let ok = !out.contains("Unknown driver") && !out.contains("Unable to load module");
    if !ok {
        eprintln!(
            "note: qemu has no iSCSI block driver (Debian's qemu-block-extra); skipping \
             (./scripts/test installs it)"
        );
    }
    ok
}

/// One SCSI command qemu sent: its CDB and what vitd answered (status, sense key/ASC/ASCQ).
#[derive(Debug, Clone)]
struct Cmd {
    cdb: [u8; 16],
    status: Option<u8>,
    sense: Option<(u8, u8, u8)>,
}

impl Cmd {
    fn op(&self) -> u8 {
        self.cdb[0]
    }
    /// SERVICE ACTION IN (16)'s service action (READ CAPACITY 16: 0x10, GET LBA STATUS: 0x12).
    fn sa(&self) -> u8 {
        self.cdb[1] & 0x1f
    }
    fn lba(&self) -> u64 {
        match self.op() {
            0x28 | 0x2a | 0x41 | 0x35 => {
                u64::from(u32::from_be_bytes(self.cdb[2..6].try_into().unwrap()))
            }
            _ => u64::from_be_bytes(self.cdb[2..10].try_into().unwrap()),
        }
    }
    /// Blocks of a READ/WRITE/WRITE SAME (10 or 16).
    fn blocks(&self) -> u32 {
        match self.op() {
            0x28 | 0x2a | 0x41 => u32::from(u16::from_be_bytes([self.cdb[7], self.cdb[8]])),
            _ => u32::from_be_bytes(self.cdb[10..14].try_into().unwrap()),
        }
    }
    fn is(&self, name: &str) -> bool {
        self.name() == name
    }
    /// READ (10) or (16): qemu takes the 16-byte form only past 2^32 blocks.
    fn is_read(&self) -> bool {
        matches!(self.op(), 0x28 | 0x88)
    }
    fn is_write(&self) -> bool {
        matches!(self.op(), 0x2a | 0x8a)
    }
    fn is_write_same(&self) -> bool {
        matches!(self.op(), 0x41 | 0x93)
    }
    fn unmap_bit(&self) -> bool {
        self.cdb[1] & 0x08 != 0
    }
    fn good(&self) -> bool {
        self.status == Some(0)
    }
    fn name(&self) -> String {
        let c = &self.cdb;
        match (c[0], self.sa()) {
            (0x00, _) => "TEST UNIT READY".into(),
            (0x12, _) if c[1] & 1 == 1 => format!("INQUIRY VPD {:#04x}", c[2]),
            (0x12, _) => "INQUIRY".into(),
            (0x1a, _) | (0x5a, _) => format!("MODE SENSE page {:#04x}", c[2] & 0x3f),
            (0x25, _) => "READ CAPACITY (10)".into(),
            (0x9e, 0x10) => "READ CAPACITY (16)".into(),
            (0x9e, 0x12) => "GET LBA STATUS".into(),
            (0x28, _) => "READ (10)".into(),
            (0x88, _) => "READ (16)".into(),
            (0x2a, _) => "WRITE (10)".into(),
            (0x8a, _) => "WRITE (16)".into(),
            (0x41, _) if c[1] & 0x08 != 0 => "WRITE SAME (10) UNMAP".into(),
            (0x41, _) => "WRITE SAME (10)".into(),
            (0x93, _) if c[1] & 0x08 != 0 => "WRITE SAME (16) UNMAP".into(),
            (0x93, _) => "WRITE SAME (16)".into(),
            (0x42, _) => "UNMAP".into(),
            (0x35, _) => "SYNCHRONIZE CACHE (10)".into(),
            (0x91, _) => "SYNCHRONIZE CACHE (16)".into(),
            (0xa0, _) => "REPORT LUNS".into(),
            (0xa3, sa) => format!("MAINTENANCE IN sa {sa:#04x}"),
            (op, _) => format!("opcode {op:#04x}"),
        }
    }
}

impl std::fmt::Display for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name())?;
        if matches!(self.op(), 0x28 | 0x88 | 0x2a | 0x8a | 0x41 | 0x93) || self.is("GET LBA STATUS")
        {
            write!(f, " lba {}", self.lba())?;
            if !self.is("GET LBA STATUS") {
                write!(f, " blocks {}", self.blocks())?;
            }
        }
        match (self.status, self.sense) {
            (Some(0), _) => write!(f, ": GOOD"),
            (Some(s), Some((k, a, q))) => {
                write!(f, ": status {s:#04x} sense {k:#x}/{a:#04x}/{q:#04x}")
            }
            (Some(s), None) => write!(f, ": status {s:#04x}"),
            (None, _) => write!(f, ": unanswered"),
        }
    }
}

/// The bytes the initiator sent on one connection, and those the target sent.
type Streams = (Vec<u8>, Vec<u8>);

/// A relay on 127.0.0.1 in front of vitd's portal that keeps every byte of both directions of
/// each connection, to be parsed into [`Cmd`]s once the client is done.
struct Tap {
    port: u16,
    target_port: u16,
    stop: Arc<AtomicBool>,
    /// Connections accepted, and those whose both directions have ended.
    opened: Arc<AtomicUsize>,
    streams: Arc<Mutex<Vec<Streams>>>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Tap {
    fn new(target_port: u16) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicUsize::new(0));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let (stop, opened, streams) = (stop.clone(), opened.clone(), streams.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((client, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    client.set_nonblocking(false).unwrap();
                    opened.fetch_add(1, Ordering::SeqCst);
                    let server = TcpStream::connect(("127.0.0.1", target_port)).unwrap();
                    let up = relay(client.try_clone().unwrap(), server.try_clone().unwrap());
                    let down = relay(server, client);
                    let streams = streams.clone();
                    std::thread::spawn(move || {
                        let pair = (up.join().unwrap(), down.join().unwrap());
                        streams.lock().unwrap().push(pair);
                    });
                }
            })
        };
        Tap {
            port,
            target_port,
            stop,
            opened,
            streams,
            accept: Some(accept),
        }
    }

    /// `url` (of vitd's portal) pointed at this relay.
    fn url(&self, url: &str) -> String {
        let from = format!("127.0.0.1:{}/", self.target_port);
        assert!(url.contains(&from), "{url}");
        url.replace(&from, &format!("127.0.0.1:{}/", self.port))
    }

    /// The commands of every connection so far (waiting, bounded, for those still closing),
    /// printed; the streams are taken, so the next call sees only later connections.
    fn commands(&self, what: &str) -> Vec<Cmd> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.streams.lock().unwrap().len() < self.opened.load(Ordering::SeqCst) {
            assert!(
                Instant::now() < deadline,
                "a relayed connection did not end"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let streams = std::mem::take(&mut *self.streams.lock().unwrap());
        self.opened.fetch_sub(streams.len(), Ordering::SeqCst);
        let cmds: Vec<Cmd> = streams.iter().flat_map(|(u, d)| parse(u, d)).collect();
        eprintln!("== what qemu sent for {what}:");
        // A run of the same command with the same answer on one line.
        let mut i = 0;
        while i < cmds.len() {
            let same = |c: &Cmd| c.name() == cmds[i].name() && c.status == cmds[i].status;
            let n = cmds[i..].iter().take_while(|c| same(c)).count();
            match n {
                1 => eprintln!("   {}", cmds[i]),
                _ => eprintln!("   {} x{n}, the last: {}", cmds[i], cmds[i + n - 1]),
            }
            i += n;
        }
        cmds
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// The PDUs of one direction of an iSCSI connection: (BHS, data segment). Login PDUs carry no
/// digests; every later one carries those the login settled.
fn pdus(mut s: &[u8], header_digest: bool, data_digest: bool) -> Vec<(&[u8], &[u8])> {
    let mut out = Vec::new();
    while s.len() >= 48 {
        let bhs = &s[..48];
        let login = matches!(bhs[0] & 0x3f, 0x03 | 0x23);
        let ahs = usize::from(bhs[4]) * 4;
        let dsl = usize::from(bhs[5]) << 16 | usize::from(bhs[6]) << 8 | usize::from(bhs[7]);
        let hd = if header_digest && !login { 4 } else { 0 };
        let dd = if data_digest && !login && dsl > 0 {
            4
        } else {
            0
        };
        let data_at = 48 + ahs + hd;
        let len = data_at + dsl.div_ceil(4) * 4 + dd;
        if s.len() < len {
            break;
        }
        out.push((bhs, &s[data_at..data_at + dsl]));
        s = &s[len..];
    }
    out
}

/// The SCSI commands of one connection (initiator's bytes `up`, target's `down`), each with
/// the status vitd answered it with.
fn parse(up: &[u8], down: &[u8]) -> Vec<Cmd> {
    // The digests the target's final login response settled.
    let mut text = String::new();
    for (bhs, data) in pdus(down, false, false) {
        if bhs[0] & 0x3f != 0x23 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(data));
        text.push('\0');
    }
    let hd = text.split('\0').any(|k| k == "HeaderDigest=CRC32C");
    let dd = text.split('\0').any(|k| k == "DataDigest=CRC32C");
    let mut cmds: Vec<(u32, Cmd)> = Vec::new();
    for (bhs, _) in pdus(up, hd, dd) {
        if bhs[0] & 0x3f == 0x01 {
            let itt = u32::from_be_bytes(bhs[16..20].try_into().unwrap());
            let cmd = Cmd {
                cdb: bhs[32..48].try_into().unwrap(),
                status: None,
                sense: None,
            };
            cmds.push((itt, cmd));
        }
    }
    for (bhs, data) in pdus(down, hd, dd) {
        let op = bhs[0] & 0x3f;
        // SCSI Response, or Data-In with the S bit.
        if op != 0x21 && !(op == 0x25 && bhs[1] & 0x01 != 0) {
            continue;
        }
        let itt = u32::from_be_bytes(bhs[16..20].try_into().unwrap());
        if let Some((_, c)) = cmds
            .iter_mut()
            .find(|(i, c)| *i == itt && c.status.is_none())
        {
            c.status = Some(bhs[3]);
            // Fixed-format sense after its two-byte length.
            if op == 0x21 && data.len() >= 2 + 14 {
                let s = &data[2..];
                c.sense = Some((s[2] & 0x0f, s[12], s[13]));
            }
        }
    }
    cmds.into_iter().map(|(_, c)| c).collect()
}

/// A LUN's flat extent beside its descriptor (`<name>.vmdk` -> `<name>-flat.vmdk`).
fn flat(descriptor: &Path) -> PathBuf {
    let stem = descriptor.file_stem().unwrap().to_str().unwrap();
    descriptor.with_file_name(format!("{stem}-flat.vmdk"))
}

/// Whether the `len` bytes of `path` at `off` are all `byte`.
fn holds(path: &Path, off: u64, len: u64, byte: u8) -> bool {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; usize::try_from(len).unwrap()];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, off)
        .unwrap();
    buf.iter().all(|&b| b == byte)
}

/// Writes `len` bytes of `byte` into `path` at `off` (behind vitd's back, with no client on it).
fn fill(path: &Path, off: u64, len: u64, byte: u8) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&vec![byte; usize::try_from(len).unwrap()], off)
        .unwrap();
}

/// The ranges `[start, end)` of `path` holding data, as SEEK_DATA/SEEK_HOLE tell them.
fn data_ranges(path: &Path) -> Vec<(u64, u64)> {
    let f = std::fs::File::open(path).unwrap();
    let size = f.metadata().unwrap().len();
    let seek = |off: u64, whence: libc::c_int| -> Option<u64> {
        let off = libc::off_t::try_from(off).unwrap();
        // SAFETY: lseek(2) on a descriptor this function owns; no memory is passed.
        let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
        u64::try_from(r).ok()
    };
    let mut out = Vec::new();
    let mut at = 0;
    while at < size {
        let Some(start) = seek(at, libc::SEEK_DATA) else {
            break; // ENXIO: no data past `at`
        };
        let end = seek(start, libc::SEEK_HOLE).unwrap();
        out.push((start, end));
        at = end;
    }
    out
}

/// Runs qemu-io on `url` (raw) with `cmds` (each one `-c`), bounded; asserts success and
/// returns its output.
fn qemu_io(url: &str, cmds: &[&str]) -> String {
    let (ok, out) = qemu_io_result(url, cmds, &[]);
    assert!(ok, "qemu-io {cmds:?}: {out}");
    out
}

fn qemu_io_result(url: &str, cmds: &[&str], extra: &[&str]) -> (bool, String) {
    let mut args = vec!["-f", "raw"];
    args.extend_from_slice(extra);
    for c in cmds {
        args.extend_from_slice(&["-c", c]);
    }
    args.push(url);
    let (ok, out) = client_within(60, "qemu-io", &args);
    // qemu-io reports a failed command on its output and may still exit 0.
    let failed = out.contains("failed") || out.contains("Pattern verification failed");
    (ok && !failed, out)
}

/// A thin LUN 0 of `size` on target `alias`, served; its flat extent's path.
fn thin_lun(alias: &str, size: &str) -> (Datastore, Vitd, PathBuf) {
    let ds = Datastore::new();
    ds.target(alias, &[]);
    let extent = flat(&ds.lun(alias, 0, size));
    let vitd = ds.start();
    (ds, vitd, extent)
}

/// `qemu-img convert -n` of a qemu-made VMDK with known data onto a LUN, then
/// `qemu-img compare` of the LUN against it, and the flat extent read directly. Exercises
/// READ CAPACITY (16) and the VPD pages at open, WRITE (10) of the data, and for the source's
/// zero ranges (the LUN has no zero init) write-zeroes as WRITE SAME (10) with UNMAP; the
/// compare reads through GET LBA STATUS and READ (10).
#[test]
fn qemu_img_convert_onto_a_lun_then_compare() {
    if !have_qemu_iscsi() {
        return;
    }
    let (ds, _vitd, extent) = thin_lun("qconv", "16M");
    let src = ds.root().join("src.vmdk");
    let src = src.to_str().unwrap();
    qemu_vmdk(Path::new(src), "monolithicSparse", "16M");
    let (ok, out) = client_within(
        60,
        "qemu-io",
        &[
            "-f",
            "vmdk",
            "-c",
            "write -P 0xab 0 1M",
            "-c",
            "write -P 0xcd 5M 512k",
            "-c",
            "write -P 0xef 15M 1M",
            src,
        ],
    );
    assert!(ok, "{out}");
    // Old data where the source has none: convert must overwrite it with zeroes.
    fill(&extent, 8 * MIB, MIB, 0x99);
    let tap = Tap::new(ds.port);
    let url = tap.url(&ds.url("qconv", 0));
    let (ok, out) = client_within(
        120,
        "qemu-img",
        &["convert", "-n", "-f", "vmdk", "-O", "raw", src, &url],
    );
    assert!(ok, "qemu-img convert: {out}");
    let cmds = tap.commands("qemu-img convert -n");
    // Only the first TEST UNIT READY, with the unit attention of a new nexus, is not GOOD.
    assert!(
        cmds.iter()
            .all(|c| c.good() || c.is("TEST UNIT READY") && c.sense.is_some_and(|s| s.0 == 6)),
        "a command failed"
    );
    for want in ["READ CAPACITY (16)", "INQUIRY VPD 0xb0", "INQUIRY VPD 0xb2"] {
        assert!(cmds.iter().any(|c| c.is(want)), "no {want}");
    }
    assert!(cmds.iter().any(Cmd::is_write), "no WRITE");
    assert!(
        cmds.iter().any(|c| c.is_write_same() && c.unmap_bit()),
        "no WRITE SAME with UNMAP for the zeroes"
    );
    let (ok, out) = client_within(
        120,
        "qemu-img",
        &["compare", "-f", "vmdk", "-F", "raw", src, &url],
    );
    assert!(ok, "qemu-img compare: {out}");
    assert!(out.contains("Images are identical"), "{out}");
    tap.commands("qemu-img compare");
    let expect = |off: u64, len: u64, byte: u8| {
        assert!(
            holds(&extent, off, len, byte),
            "extent at {off}: not {byte:#x}"
        );
    };
    expect(0, MIB, 0xab);
    expect(MIB, 4 * MIB, 0);
    expect(5 * MIB, 512 * KIB, 0xcd);
    expect(5 * MIB + 512 * KIB, 10 * MIB - 512 * KIB, 0);
    expect(15 * MIB, MIB, 0xef);
}

/// The merged ranges `[start, end)` that `qemu-img map --output=json` reports as data, after
/// checking every other range is reported as reading zeroes.
fn mapped_data(url: &str) -> Vec<(u64, u64)> {
    let (ok, out) = client_within(60, "qemu-img", &["map", "--output=json", "-f", "raw", url]);
    assert!(ok, "qemu-img map: {out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut data: Vec<(u64, u64)> = Vec::new();
    for e in v.as_array().unwrap() {
        let start = e["start"].as_u64().unwrap();
        let end = start + e["length"].as_u64().unwrap();
        if e["data"] == true {
            match data.last_mut() {
                Some(last) if last.1 == start => last.1 = end,
                _ => data.push((start, end)),
            }
        } else {
            assert_eq!(e["zero"], true, "neither data nor zero: {e}");
        }
    }
    data
}

/// `qemu-img map` of a thin LUN: what was never written is reported as zero and not data, what
/// was written as data, each range as the extent file's holes and data say. Exercises GET LBA
/// STATUS (qemu's block status), answered from SEEK_DATA/SEEK_HOLE on the extent; on a 3 TiB
/// LUN too, whose hole between its first and last blocks is longer than a descriptor's 32-bit
/// count.
#[test]
fn qemu_img_map_of_a_thin_lun_follows_the_extents_holes() {
    if !have_qemu_iscsi() {
        return;
    }
    let tib3 = 3u64 << 40;
    for (size, written) in [
        (
            "16M",
            vec![
                (MIB, 2 * MIB),
                (6 * MIB, 6 * MIB + 64 * KIB),
                (15 * MIB, 15 * MIB + 4 * KIB),
            ],
        ),
        ("3T", vec![(0, 4 * KIB), (tib3 - 64 * KIB, tib3)]),
    ] {
        let (ds, _vitd, extent) = thin_lun("qmap", size);
        let url = ds.url("qmap", 0);
        let writes: Vec<String> = written
            .iter()
            .map(|(a, b)| format!("write -P 0x11 {a} {}", b - a))
            .collect();
        let writes: Vec<&str> = writes.iter().map(String::as_str).collect();
        qemu_io(&url, &writes);
        assert_eq!(data_ranges(&extent), written, "the extent's data");
        let tap = Tap::new(ds.port);
        assert_eq!(mapped_data(&tap.url(&url)), written, "qemu-img map's data");
        let cmds = tap.commands(&format!("qemu-img map ({size})"));
        let status: Vec<&Cmd> = cmds.iter().filter(|c| c.is("GET LBA STATUS")).collect();
        assert!(status.len() >= 2, "qemu asked no GET LBA STATUS");
        assert!(status.iter().all(|c| c.good()));
    }
}

/// `qemu-img map` and `qemu-io discard` on a thin memory LUN (`backend ramdisk` with a
/// capacity below its size, a bit per 64 KiB chunk): GET LBA STATUS answered from the chunk
/// bitmap, UNMAP of whole chunks giving them back; data and zeroes read back.
#[test]
fn qemu_on_a_thin_memory_lun() {
    if !have_qemu_iscsi() {
        return;
    }
    let ds = Datastore::new();
    ds.target("qmem", &[]);
    ds.add_lun_body("qmem", 0, memory_lun(64 * MIB, Some("32M")));
    let _vitd = ds.start();
    let tap = Tap::new(ds.port);
    let url = tap.url(&ds.url("qmem", 0));
    qemu_io(&url, &["write -P 0x66 1M 2M", "write -P 0x67 40M 64k"]);
    tap.commands("writes to a memory LUN");
    assert_eq!(
        mapped_data(&url),
        vec![(MIB, 3 * MIB), (40 * MIB, 40 * MIB + 64 * KIB)]
    );
    let cmds = tap.commands("qemu-img map (memory LUN)");
    assert!(cmds.iter().any(|c| c.is("GET LBA STATUS") && c.good()));
    qemu_io(&url, &["discard 2M 1M"]);
    let cmds = tap.commands("discard 2M 1M (memory LUN)");
    assert!(cmds.iter().any(|c| c.is("UNMAP") && c.good()));
    assert_eq!(
        mapped_data(&url),
        vec![(MIB, 2 * MIB), (40 * MIB, 40 * MIB + 64 * KIB)]
    );
    qemu_io(
        &url,
        &[
            "read -P 0x66 1M 1M",
            "read -P 0 2M 1M",
            "read -P 0x67 40M 64k",
        ],
    );
    tap.commands("map and reads after it (memory LUN)");
}

/// `qemu-io -c 'discard OFF LEN'`: UNMAP; the range reads back zeroes (qemu and the extent
/// file) and the extent has a hole there, the data around it kept.
#[test]
fn qemu_io_discard_unmaps_and_punches_a_hole() {
    if !have_qemu_iscsi() {
        return;
    }
    let (ds, _vitd, extent) = thin_lun("qdisc", "16M");
    let url = ds.url("qdisc", 0);
    qemu_io(&url, &["write -P 0x44 0 4M"]);
    assert_eq!(data_ranges(&extent), vec![(0, 4 * MIB)]);
    let tap = Tap::new(ds.port);
    qemu_io(&tap.url(&url), &["discard 1M 1M"]);
    let cmds = tap.commands("discard 1M 1M");
    let unmaps: Vec<&Cmd> = cmds.iter().filter(|c| c.is("UNMAP")).collect();
    assert_eq!(unmaps.len(), 1, "one UNMAP");
    assert!(unmaps[0].good());
    assert_eq!(
        data_ranges(&extent),
        vec![(0, MIB), (2 * MIB, 4 * MIB)],
        "a hole where discarded"
    );
    assert!(holds(&extent, MIB, MIB, 0));
    qemu_io(
        &tap.url(&url),
        &["read -P 0x44 0 1M", "read -P 0 1M 1M", "read -P 0x44 2M 2M"],
    );
    tap.commands("the reads after it");
}

/// A discard and a write-zeroes longer than the Block Limits page allows one command: qemu
/// splits the discard into UNMAPs within MAXIMUM UNMAP LBA COUNT (2^20 blocks), the
/// write-zeroes into WRITE SAMEs within the smaller of MAXIMUM WRITE SAME LENGTH (2^15) and
/// MAXIMUM TRANSFER LENGTH (2048 blocks); vitd takes every one, and the extent is left with no
/// data in the ranges.
#[test]
fn qemu_discards_and_write_zeroes_past_the_block_limits_are_split() {
    if !have_qemu_iscsi() {
        return;
    }
    let (ds, _vitd, extent) = thin_lun("qlim", "2G");
    let url = ds.url("qlim", 0);
    let data = [
        "write -P 0x44 0 1M",
        "write -P 0x44 700M 1M",
        "write -P 0x44 1500M 1M",
    ];
    qemu_io(&url, &data);
    let tap = Tap::new(ds.port);
    qemu_io(&tap.url(&url), &["discard 0 1600M"]);
    let cmds = tap.commands("discard 0 1600M");
    let unmaps: Vec<&Cmd> = cmds.iter().filter(|c| c.is("UNMAP")).collect();
    assert!(
        unmaps.len() >= 4,
        "1600M is over three times the UNMAP limit"
    );
    assert!(unmaps.iter().all(|c| c.good()));
    assert_eq!(data_ranges(&extent), vec![], "all discarded");

    qemu_io(&url, &data);
    qemu_io(
        &tap.url(&url),
        &["write -z -u 0 64M", "write -z -u 700M 64M"],
    );
    let cmds = tap.commands("write -z -u 0 64M, write -z -u 700M 64M");
    let ws: Vec<&Cmd> = cmds.iter().filter(|c| c.is_write_same()).collect();
    assert!(ws.len() >= 8, "64M is over the WRITE SAME limit");
    assert!(
        ws.iter()
            .all(|c| c.good() && c.unmap_bit() && c.blocks() <= 2048)
    );
    assert_eq!(
        data_ranges(&extent),
        vec![(1500 * MIB, 1501 * MIB)],
        "only the data past both"
    );
    qemu_io(
        &tap.url(&url),
        &[
            "read -P 0 0 1M",
            "read -P 0 700M 1M",
            "read -P 0x44 1500M 1M",
        ],
    );
    tap.commands("the reads after them");
}

/// `qemu-io -c 'write -z OFF LEN'` and `write -z -u`: WRITE SAME of a zero block, without and
/// with the UNMAP bit: the 10-byte form on a small LUN, the 16-byte one on a LUN past 2^32
/// blocks (3 TiB, thin). Zeroes read back either way; with UNMAP the range is deallocated (a
/// hole in the extent), without it the blocks stay allocated.
#[test]
fn qemu_io_write_zeroes_is_write_same() {
    if !have_qemu_iscsi() {
        return;
    }
    for (size, op) in [("16M", 0x41), ("3T", 0x93)] {
        let (ds, _vitd, extent) = thin_lun("qwz", size);
        let url = ds.url("qwz", 0);
        qemu_io(&url, &["write -P 0x55 0 4M"]);
        let tap = Tap::new(ds.port);
        qemu_io(&tap.url(&url), &["write -z 1M 1M"]);
        let cmds = tap.commands(&format!("write -z 1M 1M ({size})"));
        let ws: Vec<&Cmd> = cmds.iter().filter(|c| c.is_write_same()).collect();
        assert_eq!(ws.len(), 1, "one WRITE SAME");
        assert_eq!(ws[0].op(), op);
        assert!(!ws[0].unmap_bit() && ws[0].good());
        assert_eq!((ws[0].lba(), u64::from(ws[0].blocks())), (2048, 2048));
        assert!(holds(&extent, MIB, MIB, 0));
        assert_eq!(data_ranges(&extent), vec![(0, 4 * MIB)], "still allocated");

        qemu_io(&tap.url(&url), &["write -z -u 2M 1M"]);
        let cmds = tap.commands(&format!("write -z -u 2M 1M ({size})"));
        let ws: Vec<&Cmd> = cmds.iter().filter(|c| c.is_write_same()).collect();
        assert_eq!(ws.len(), 1, "one WRITE SAME");
        assert_eq!(ws[0].op(), op);
        assert!(ws[0].unmap_bit() && ws[0].good());
        assert_eq!((ws[0].lba(), u64::from(ws[0].blocks())), (4096, 2048));
        assert!(holds(&extent, 2 * MIB, MIB, 0));
        assert_eq!(
            data_ranges(&extent),
            vec![(0, 2 * MIB), (3 * MIB, 4 * MIB)],
            "deallocated with -u"
        );
        qemu_io(
            &tap.url(&url),
            &["read -P 0x55 0 1M", "read -P 0 1M 2M", "read -P 0x55 3M 1M"],
        );
        tap.commands(&format!("the reads after them ({size})"));
    }
}

/// A read-only LUN (`option readonly on`): qemu sees it write protected (the WP bit of MODE
/// SENSE), refuses to open it for writing, cleanly and without a write reaching the LUN; opened
/// read-only it reads the data.
#[test]
fn qemu_io_on_a_read_only_lun_reads_and_does_not_write() {
    if !have_qemu_iscsi() {
        return;
    }
    let ds = Datastore::new();
    ds.target("qro", &[]);
    let extent = flat(&ds.lun("qro", 0, "8M"));
    fill(&extent, 0, MIB, 0x77);
    ds.vitctl(&[
        "target",
        "lun",
        "set",
        "--target",
        "qro",
        "--id",
        "0",
        "--read-only",
        "on",
    ]);
    let _vitd = ds.start();
    let tap = Tap::new(ds.port);
    let url = tap.url(&ds.url("qro", 0));
    let (ok, out) = qemu_io_result(&url, &["write -P 0x01 0 64k"], &[]);
    assert!(!ok, "a write to a read-only LUN: {out}");
    assert!(out.contains("write protected"), "{out}");
    let cmds = tap.commands("write to a read-only LUN");
    assert!(cmds.iter().any(|c| c.name().starts_with("MODE SENSE")));
    assert!(
        !cmds
            .iter()
            .any(|c| matches!(c.op(), 0x2a | 0x8a | 0x93 | 0x42)),
        "a write was sent"
    );
    qemu_io_result(&url, &["read -P 0x77 0 1M"], &["-r"])
        .0
        .then_some(())
        .expect("read-only open reads");
    tap.commands("read-only reads");
    assert!(holds(&extent, 0, MIB, 0x77));
}

/// One 8 MiB write and one 8 MiB read from qemu-io: qemu splits each by the Block Limits
/// page's MAXIMUM TRANSFER LENGTH (1 MiB), so READ/WRITE of at most that many blocks, together
/// the 8 MiB, and every byte lands in the extent. On a small LUN (the 10-byte CDBs) and on a
/// thin 3 TiB one past 2^32 blocks (WRITE (16)/READ (16)), at its end.
#[test]
fn qemu_io_large_transfers_are_split_by_the_block_limits() {
    if !have_qemu_iscsi() {
        return;
    }
    for (size, end, ops) in [("32M", 0, (0x2a, 0x28)), ("3T", 3u64 << 40, (0x8a, 0x88))] {
        let (ds, _vitd, extent) = thin_lun("qbig", size);
        let tap = Tap::new(ds.port);
        let off = end.saturating_sub(8 * MIB);
        qemu_io(
            &tap.url(&ds.url("qbig", 0)),
            &[
                &format!("write -P 0x5a {off} 8M"),
                &format!("read -P 0x5a {off} 8M"),
            ],
        );
        let cmds = tap.commands(&format!("write/read -P 0x5a {off} 8M ({size})"));
        let max_blocks = 1024 * 1024 / 512;
        for (is, op) in [
            (Cmd::is_write as fn(&Cmd) -> bool, ops.0),
            (Cmd::is_read, ops.1),
        ] {
            let io: Vec<&Cmd> = cmds.iter().filter(|c| is(c)).collect();
            assert!(
                io.iter()
                    .all(|c| c.op() == op && c.good() && c.blocks() <= max_blocks),
                "{op:#x}"
            );
            let total: u64 = io.iter().map(|c| u64::from(c.blocks())).sum();
            assert_eq!(total * 512, 8 * MIB, "{op:#x}s add up to 8 MiB");
            assert_eq!(io.iter().map(|c| c.lba()).min(), Some(off / 512));
        }
        assert!(holds(&extent, off, 8 * MIB, 0x5a));
    }
}
