//! Shared harness for end-to-end tests: a temporary datastore built with `vitctl`, a `vitd`
//! serving it on a loopback port, and the real clients (libiscsi's tools, qemu-img).
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Whether a client program is on PATH (the test command installs them; a bare `cargo test`
/// on a machine without them skips with a note instead of failing).
pub fn have(program: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("note: {program} is not installed; skipping (./scripts/test installs it)");
    }
    found
}

/// The fio with the libiscsi engine that perf/build-fio.sh builds, if it is there.
pub fn fio() -> Option<PathBuf> {
    let path = match std::env::var_os("FIO") {
        Some(p) => PathBuf::from(p),
        None => {
            let cache = std::env::var_os("VIT_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/vit")
                });
            cache.join("fio/fio")
        }
    };
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "note: no fio with libiscsi at {}; skipping (./scripts/test builds it)",
            path.display()
        );
        None
    }
}

/// Runs fio with `args` under a time limit of `secs`: whether it exited 0, and all it printed.
pub fn run_fio(fio: &Path, secs: u32, args: &[&str]) -> (bool, String) {
    let out = Command::new("timeout")
        .arg(secs.to_string())
        .arg(fio)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Threads of process `pid` (the kernel's io_uring workers, which come and go with the
/// kernel's load, left out) and its open descriptors.
pub fn resources(pid: u32) -> (usize, usize) {
    let threads = names(pid).iter().filter(|n| !n.starts_with("iou-")).count();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |r| r.count());
    (threads, fds)
}

/// [`resources`] once they have held still for half a second (at most 10 s of looking): a
/// baseline taken while a connection just closed is still open would be one too high.
pub fn settled_resources(pid: u32) -> (usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = resources(pid);
    let mut still = 0;
    while still < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now = resources(pid);
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
    last
}

/// The names of process `pid`'s threads.
pub fn names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|r| {
            r.flatten()
                .map(|t| std::fs::read_to_string(t.path().join("comm")).unwrap_or_default())
                .map(|n| n.trim_end().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Raises this process's open-files limit to its hard limit; false (with a note) when that is
/// under `need` (a test holding many connections then skips).
pub fn raise_open_files(need: u64) -> bool {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on this process with a valid rlimit.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_max < need {
            eprintln!("note: open files limit {} too low; skipped", lim.rlim_max);
            return false;
        }
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    true
}

/// A connection to 127.0.0.1:`port` from the loopback address `from` (another peer, as the
/// target sees it).
pub fn connect_from(from: std::net::Ipv4Addr, port: u16) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from((from, 0)).into()).unwrap();
    s.connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    s.into()
}

/// Copies `from` to `to` until `from` ends (or is silent for 2 minutes), keeping the bytes;
/// then shuts both down. A recording relay's one direction.
pub fn relay(mut from: TcpStream, mut to: TcpStream) -> std::thread::JoinHandle<Vec<u8>> {
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        from.set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
            kept.extend_from_slice(&buf[..n]);
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
        let _ = from.shutdown(std::net::Shutdown::Both);
        kept
    })
}

/// Whether the peer has closed `s` (reads EOF or a reset within its read timeout).
pub fn peer_closed(s: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match std::io::Read::read(s, &mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Polls `ok` every 50 ms until it holds (true) or `secs` pass (false). For conditions that
/// a loaded machine may delay: the deadline is generous, the wait ends as soon as they hold.
pub fn wait_until(secs: u64, mut ok: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if ok() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Datastore {
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Datastore {
    /// A datastore whose default portal group listens on 127.0.0.1:<free port>.
    pub fn new() -> Self {
        let ds = Datastore {
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
        };
        ds.vitctl(&[
            "homeobject",
            "create",
            "--listen",
            &format!("127.0.0.1:{}", ds.port),
        ]);
        ds
    }
    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    pub fn conf(&self) -> PathBuf {
        self.root().join(".iSCSI-Config/etc/vit.conf")
    }
    pub fn vitctl_out(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_vitctl"))
            .arg("--datastore")
            .arg(self.root())
            .args(args)
            .env_remove("VIT_DATASTORE")
            .output()
            .unwrap()
    }
    /// Runs vitctl, which must succeed; returns stdout.
    pub fn vitctl(&self, args: &[&str]) -> String {
        let out = self.vitctl_out(args);
        assert!(
            out.status.success(),
            "vitctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--format", "json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.vitctl(&a)).unwrap()
    }
    /// Adds a target (named `iqn.2026-11.io.vit:<alias>`) and returns its uuid.
    pub fn target(&self, alias: &str, extra: &[&str]) -> String {
        let iqn = iqn(alias);
        let mut args = vec!["target", "add", "--alias", alias, "--iqn", &iqn];
        args.extend_from_slice(extra);
        self.json(&args)["uuid"].as_str().unwrap().to_string()
    }
    /// Adds a LUN; returns its descriptor path.
    pub fn lun(&self, alias: &str, id: u32, size: &str) -> PathBuf {
        let id = id.to_string();
        let v = self.json(&[
            "target", "lun", "add", "--target", alias, "--id", &id, "--size", size,
        ]);
        PathBuf::from(v["descriptor"].as_str().unwrap())
    }
    /// Edits vit.conf through the library's model (for what vitctl does not manage).
    pub fn edit(&self, change: impl FnOnce(&mut vit::config::Config)) {
        let ds = vit::datastore::Datastore::open(self.root()).unwrap();
        let lock = ds.lock().unwrap();
        let mut cfg = ds.load_config().unwrap();
        change(&mut cfg);
        ds.commit(&lock, &mut cfg).unwrap();
    }
    /// Adds LUN `id` with this body to target `alias` (for LUNs vitctl does not make: other
    /// VMDK formats, memory LUNs).
    pub fn add_lun_body(&self, alias: &str, id: u64, body: vit::config::LunBody) {
        let iqn = iqn(alias);
        self.edit(|cfg| {
            let t = cfg.targets.iter_mut().find(|t| t.name == iqn).unwrap();
            t.luns.push(vit::config::TargetLun {
                id,
                pos: Default::default(),
                lun: vit::config::LunRef::Inline(body),
            });
        });
    }
    /// Targets `c` (CHAP: user alice, secret alicesecret12) and `m` (mutual CHAP: user bob,
    /// secret bobsecret1234; the target's user tgt, secret tgtsecret1234), each with an 8 MiB
    /// LUN 0.
    pub fn chap_targets(&self) {
        self.target(
            "c",
            &[
                "--auth-type",
                "chap",
                "--chap-user",
                "alice",
                "--chap-secret",
                "alicesecret12",
            ],
        );
        self.lun("c", 0, "8M");
        self.target("m", &MUTUAL_CHAP);
        self.lun("m", 0, "8M");
    }
    pub fn url(&self, alias: &str, lun: u32) -> String {
        format!("iscsi://127.0.0.1:{}/{}/{lun}", self.port, iqn(alias))
    }
    pub fn portal(&self) -> String {
        format!("iscsi://127.0.0.1:{}/", self.port)
    }
    /// Starts vitd on this datastore and waits until it accepts connections.
    pub fn start(&self) -> Vitd {
        Vitd::start(self.root(), self.port, &[])
    }
}

/// A datastore with one target `alias` (IQN `iqn(alias)`) and LUN 0 of `size`, served by vitd.
pub fn serve_one(alias: &str, size: &str) -> (Datastore, Vitd) {
    let ds = Datastore::new();
    ds.target(alias, &[]);
    ds.lun(alias, 0, size);
    let vitd = ds.start();
    (ds, vitd)
}

pub fn iqn(alias: &str) -> String {
    format!("iqn.2026-11.io.vit:{alias}")
}

/// vitctl's flags for a target with mutual CHAP: user bob (secret bobsecret1234) answered by
/// tgt (secret tgtsecret1234).
pub const MUTUAL_CHAP: [&str; 10] = [
    "--auth-type",
    "chap-mutual",
    "--chap-user",
    "bob",
    "--chap-secret",
    "bobsecret1234",
    "--mutual-user",
    "tgt",
    "--mutual-secret",
    "tgtsecret1234",
];

/// A running vitd, stopped (SIGTERM) on drop.
pub struct Vitd {
    pub child: Option<Child>,
    pub log: PathBuf,
    _logdir: tempfile::TempDir,
}

impl Vitd {
    pub fn start(root: &Path, port: u16, extra: &[&str]) -> Vitd {
        Vitd::spawn(Vitd::command(root, extra), port)
    }

    /// The command [`Vitd::start`] runs: vitd on `root` with 2 data threads and `extra`.
    pub fn command(root: &Path, extra: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vitd"));
        cmd.arg("--datastore")
            .arg(root)
            .arg("--cores")
            .arg("2")
            .args(extra);
        cmd
    }

    /// Runs `cmd` (which ends up exec'ing vitd) and waits until it accepts connections on `port`.
    /// vitd logs at info unless `cmd` sets RUST_LOG.
    pub fn spawn(mut cmd: Command, port: u16) -> Vitd {
        let logdir = tempfile::tempdir().unwrap();
        let log = logdir.path().join("vitd.log");
        if !cmd.get_envs().any(|(k, _)| k == "RUST_LOG") {
            cmd.env("RUST_LOG", "info");
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut v = Vitd {
            child: Some(child),
            log,
            _logdir: logdir,
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = v.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("vitd exited with {status}: {}", v.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "vitd did not listen: {}",
                v.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        v
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait (bounded); returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        sigterm(&child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("vitd did not stop on SIGTERM: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Vitd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sends SIGTERM to a child process.
pub fn sigterm(child: &Child) {
    signal(child, libc::SIGTERM);
}

/// Sends `sig` to a child process.
pub fn signal(child: &Child, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
    unsafe { libc::kill(pid, sig) };
}

/// Runs a client with a time limit of 60 s; returns (success, stdout + stderr).
pub fn client(program: &str, args: &[&str]) -> (bool, String) {
    client_within(60, program, args)
}

/// [`client`] with a time limit of `secs` seconds (a guard against a hang, not a measurement).
pub fn client_within(secs: u32, program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("timeout")
        .arg(secs.to_string())
        .arg(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// A LUN body for an existing descriptor `path` (relative to `.iSCSI-Config/targets/`).
pub fn vmdk_lun(path: String, size: u64) -> vit::config::LunBody {
    vit::config::LunBody {
        backend: Some((vit::config::Backend::Vmdk, Default::default())),
        path: Some(vit::config::Named::new(path)),
        size: Some((size, Default::default())),
        ..Default::default()
    }
}

/// A `backend ramdisk` LUN body of `size` bytes, with `option capacity` when given.
pub fn memory_lun(size: u64, capacity: Option<&str>) -> vit::config::LunBody {
    vit::config::LunBody {
        backend: Some((vit::config::Backend::Ramdisk, Default::default())),
        size: Some((size, Default::default())),
        options: capacity
            .map(|c| vit::config::Opt {
                name: "capacity".into(),
                value: c.into(),
                pos: Default::default(),
            })
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

/// `qemu-img create -f vmdk -o subformat=SUBFORMAT PATH SIZE` (sparse extents), asserted.
#[allow(dead_code)]
pub fn qemu_vmdk(path: &Path, subformat: &str, size: &str) {
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "vmdk", "-o"])
        .arg(format!("subformat={subformat}"))
        .arg(path)
        .arg(size)
        .status()
        .unwrap();
    assert!(st.success(), "qemu-img create {subformat} {size}");
}

/// A 16-byte CDB of the READ(16)/WRITE(16) family (`op`), at `lba` for `blocks` blocks
/// (COMPARE AND WRITE, 0x89, takes its count in one byte).
pub fn cdb16(op: u8, lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    if op == 0x89 {
        c[13] = blocks as u8;
    } else {
        c[10..14].copy_from_slice(&blocks.to_be_bytes());
    }
    c
}

/// The designator of `lun`'s Device Identification VPD page (INQUIRY 83h) that `wanted` picks
/// (given each descriptor whole: its 4-byte header, then the designator).
pub fn vpd83_designator(
    s: &mut vit::iscsi::initiator::Session,
    lun: u8,
    wanted: impl Fn(&[u8]) -> bool,
) -> Vec<u8> {
    let r = s
        .command(lun, &[0x12, 0x01, 0x83, 0, 0xff, 0], &[], 255)
        .unwrap();
    assert_eq!(r.status, 0, "{r:?}");
    let mut at = 4;
    while at + 4 <= r.data_in.len() {
        let end = (at + 4 + usize::from(r.data_in[at + 3])).min(r.data_in.len());
        let d = &r.data_in[at..end];
        if wanted(d) {
            return d[4..].to_vec();
        }
        at = end;
    }
    panic!("no such designator: {:?}", r.data_in)
}

/// The parameter list of an EXTENDED COPY (LID1, list identifier 0): `segments` times `blocks`
/// blocks from LBA 0 of `src` (NAA designator) to LBA `dst_lba` of `dst`.
pub fn xcopy_list(
    src: [u8; 16],
    dst: [u8; 16],
    blocks: u16,
    segments: u32,
    dst_lba: u64,
) -> Vec<u8> {
    let mut list = vec![0u8; 16];
    list[3] = 64; // two CSCD descriptors
    list[8..12].copy_from_slice(&(28 * segments).to_be_bytes());
    for naa in [src, dst] {
        let mut d = [0u8; 32];
        d[0] = 0xe4; // identification descriptor, block device
        d[4] = 0x01; // binary
        d[5] = 0x03; // logical unit, NAA
        d[7] = 16;
        d[8..24].copy_from_slice(&naa);
        d[29..32].copy_from_slice(&[0, 2, 0]); // 512-byte blocks
        list.extend_from_slice(&d);
    }
    let mut seg = [0u8; 28];
    seg[0] = 0x02; // block to block
    seg[3] = 24;
    seg[6..8].copy_from_slice(&1u16.to_be_bytes()); // source CSCD 0, destination CSCD 1
    seg[10..12].copy_from_slice(&blocks.to_be_bytes());
    seg[20..28].copy_from_slice(&dst_lba.to_be_bytes());
    for _ in 0..segments {
        list.extend_from_slice(&seg);
    }
    list
}

/// [`xcopy_list`] with segment i copied to LBA i times `blocks` of `dst`, so each segment writes
/// blocks none before it did.
pub fn xcopy_list_spread(src: [u8; 16], dst: [u8; 16], blocks: u16, segments: u32) -> Vec<u8> {
    let mut list = xcopy_list(src, dst, blocks, segments, 0);
    // Header (16 bytes), two CSCD descriptors (32 each), then 28-byte segments whose
    // destination LBA is at bytes 20..28.
    for i in 0..segments as usize {
        let at = 16 + 64 + 28 * i + 20;
        let lba = i as u64 * u64::from(blocks);
        list[at..at + 8].copy_from_slice(&lba.to_be_bytes());
    }
    list
}

/// The EXTENDED COPY CDB for a parameter list of `len` bytes.
pub fn xcopy_cdb(len: usize) -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x83;
    cdb[10..14].copy_from_slice(&(len as u32).to_be_bytes());
    cdb
}

/// The NAA designator of `lun` (INQUIRY, Device Identification VPD page).
pub fn naa(s: &mut vit::iscsi::initiator::Session, lun: u8) -> [u8; 16] {
    let d = vpd83_designator(s, lun, |d| {
        d[0] & 0x0f == 1 && d[1] & 0x3f == 0x03 && d[3] == 16
    });
    d.try_into().unwrap()
}
