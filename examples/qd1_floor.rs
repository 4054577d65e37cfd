//! The floor under any iSCSI target's QD 1 figures on this machine: a minimal server that does
//! only what a target cannot avoid for one 4 KiB I/O over loopback TCP (block in a receive of the
//! command, optionally read or write 4 KiB of a file with O_DIRECT, send the answer), driven by a
//! minimal client one request at a time. The byte counts are those of iSCSI: a read is a 48-byte
//! command answered by a 48-byte header and 4 KiB of data; a write is a 48-byte command with 4 KiB
//! of immediate data answered by a 48-byte response. No iSCSI parsing, no SCSI, no bookkeeping:
//! what is left is the kernel's work (TCP, wakeups, block I/O), which no target can skip.
//! perf/bench.sh runs it in its "floor" matrix and puts it beside vit and tgt.
//!
//! Usage: qd1_floor read|write SECONDS CLIENT-CPU SERVER-CPU [FILE]
//!
//! Prints one JSON object: round trips, round trips per second, the client's latency p50 and
//! p99.9 (µs), and the server thread's own CPU time (user+system, getrusage) per round trip.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::{Duration, Instant};

const BHS: usize = 48;
const BLOCK: usize = 4096;
/// At most this many latencies are kept (about 100 s at this VM's QD 1 rate): bounded memory.
const MAX_SAMPLES: usize = 2_000_000;

fn usage() -> ! {
    eprintln!("usage: qd1_floor read|write SECONDS(1-3600) CLIENT-CPU SERVER-CPU [FILE]");
    std::process::exit(2)
}

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("qd1_floor: {what}: {e}");
    std::process::exit(1)
}

/// Pins this thread to `cpu`, which `main` checked is one this process may run on (core_affinity
/// takes any other number for an index into a fixed-size CPU set).
fn pin(cpu: usize) {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
        fail("pinning", format!("cannot pin to CPU {cpu}"));
    }
}

/// This thread's user+system CPU time.
fn thread_cpu() -> Duration {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage for the kernel to fill.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
        fail("getrusage", std::io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// A 4 KiB block aligned for O_DIRECT, inside an ordinary (safe) allocation.
struct Aligned(Vec<u8>, usize);

impl Aligned {
    fn new() -> Self {
        let v = vec![0x5au8; 2 * BLOCK];
        let off = v.as_ptr().align_offset(BLOCK);
        Aligned(v, off)
    }
    fn block(&mut self) -> &mut [u8] {
        &mut self.0[self.1..self.1 + BLOCK]
    }
}

/// The bytes of a request and of its answer: (command, response).
fn sizes(write: bool) -> (usize, usize) {
    if write {
        (BHS + BLOCK, BHS)
    } else {
        (BHS, BHS + BLOCK)
    }
}

/// Answers requests until the client hangs up; returns (round trips, CPU time spent).
fn serve(mut s: TcpStream, write: bool, file: Option<File>) -> (u64, Duration) {
    let (req, resp) = sizes(write);
    let mut rx = vec![0u8; req];
    let tx = vec![0u8; resp];
    let mut blk = Aligned::new();
    let blocks = file
        .as_ref()
        .map(|f| f.metadata().map_or(0, |m| m.len() / BLOCK as u64))
        .unwrap_or(0);
    let mut n = 0u64;
    let cpu0 = thread_cpu();
    while s.read_exact(&mut rx).is_ok() {
        if let Some(f) = &file {
            let at = rand::random_range(0..blocks.max(1)) * BLOCK as u64;
            let r = if write {
                blk.block().copy_from_slice(&rx[BHS..]);
                f.write_all_at(blk.block(), at)
            } else {
                f.read_exact_at(blk.block(), at)
            };
            if let Err(e) = r {
                fail("file I/O", e);
            }
        }
        if s.write_all(&tx).is_err() {
            break;
        }
        n += 1;
    }
    (n, thread_cpu() - cpu0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !(5..=6).contains(&args.len()) {
        usage();
    }
    let write = match args[1].as_str() {
        "read" => false,
        "write" => true,
        _ => usage(),
    };
    let secs: u64 = args[2]
        .parse()
        .ok()
        .filter(|s| (1..=3600).contains(s))
        .unwrap_or_else(|| usage());
    let client_cpu: usize = args[3].parse().unwrap_or_else(|_| usage());
    let server_cpu: usize = args[4].parse().unwrap_or_else(|_| usage());
    let allowed: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .iter()
        .map(|c| c.id)
        .collect();
    for cpu in [client_cpu, server_cpu] {
        if !allowed.contains(&cpu) {
            fail(
                "CPU",
                format!("{cpu} is not one this process may use: {allowed:?}"),
            );
        }
    }
    let file = args.get(5).map(|p| {
        OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_DIRECT)
            .open(p)
            .unwrap_or_else(|e| fail(p, e))
    });
    if file
        .as_ref()
        .is_some_and(|f| f.metadata().map_or(0, |m| m.len()) < BLOCK as u64)
    {
        fail("file", "smaller than one 4 KiB block");
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| fail("bind", e));
    let addr = listener.local_addr().unwrap_or_else(|e| fail("bind", e));
    let server = std::thread::spawn(move || {
        pin(server_cpu);
        let (s, _) = listener.accept().unwrap_or_else(|e| fail("accept", e));
        s.set_nodelay(true).unwrap_or_else(|e| fail("nodelay", e));
        serve(s, write, file)
    });

    pin(client_cpu);
    let mut c = TcpStream::connect(addr).unwrap_or_else(|e| fail("connect", e));
    c.set_nodelay(true).unwrap_or_else(|e| fail("nodelay", e));
    let (req, resp) = sizes(write);
    let tx = vec![0u8; req];
    let mut rx = vec![0u8; resp];
    let mut lat: Vec<u32> = Vec::with_capacity(MAX_SAMPLES.min(secs as usize * 50_000));
    // One second of ramp, not counted, then the measured run.
    let ramp_end = Instant::now() + Duration::from_secs(1);
    let mut end = ramp_end;
    let mut measuring = false;
    let mut started = Instant::now();
    loop {
        let t = Instant::now();
        if t >= end {
            if measuring {
                break;
            }
            measuring = true;
            started = t;
            end = t + Duration::from_secs(secs);
        }
        c.write_all(&tx).unwrap_or_else(|e| fail("send", e));
        c.read_exact(&mut rx).unwrap_or_else(|e| fail("receive", e));
        if measuring && lat.len() < MAX_SAMPLES {
            lat.push(t.elapsed().as_nanos().min(u32::MAX as u128) as u32);
        }
    }
    let elapsed = started.elapsed();
    drop(c);
    let (total, cpu) = server.join().unwrap_or_else(|_| fail("server", "panicked"));
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |&ns| ns as f64 / 1000.0)
    };
    // The server's CPU covers the ramp too: divide by all the round trips it answered.
    let out = serde_json::json!({
        "rw": args[1],
        "file": args.get(5),
        "round_trips": lat.len(),
        "per_s": lat.len() as f64 / elapsed.as_secs_f64(),
        "p50_us": pct(0.5),
        "p999_us": pct(0.999),
        "server_cpu_us_per_rt": cpu.as_secs_f64() * 1e6 / total.max(1) as f64,
    });
    println!("{out}");
}
