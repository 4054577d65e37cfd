//! vitd: the vit iSCSI target daemon.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use vit::daemon::{self, DaemonOptions};

#[derive(Parser)]
#[command(
    name = "vitd",
    version,
    about = "Serve the targets and LUNs of a vit datastore over iSCSI",
    after_help = "vit.conf is read at start: restart vitd for a change (vitctl's) to take effect. \
                  Each data thread pins 48 MiB of locked memory: run as root, with CAP_IPC_LOCK, \
                  or with `ulimit -l` at least that per thread. RUST_LOG sets the log level \
                  (info by default, e.g. RUST_LOG=debug); SIGTERM or SIGINT stops vitd cleanly; SIGHUP \
                  does not reload vit.conf (a change takes effect at the next start): vitd logs \
                  so and serves on."
)]
struct Cli {
    /// The datastore directory [default: an embedded one under the user's data directory,
    /// created on first start with one target and one 1 GiB sparse LUN on 127.0.0.1:3260]
    #[arg(long, env = "VIT_DATASTORE")]
    datastore: Option<PathBuf>,
    /// Data threads (one per core by default, at most 4 per CPU; each pins 48 MiB of I/O buffers)
    #[arg(long)]
    cores: Option<usize>,
    /// Open extents without O_DIRECT (buffered, write-back made honest by flushes)
    #[arg(long)]
    buffered: bool,
    /// Busy-poll for up to this many microseconds before a data thread sleeps, while its
    /// connections have at most one command in flight each: lower latency at queue depth 1
    /// for more CPU (0: never poll)
    #[arg(long, default_value_t = 0, value_name = "US",
          value_parser = clap::value_parser!(u32).range(0..=10_000))]
    poll_us: u32,
    /// Normal sessions served at once; a login past it is refused with "out of resources"
    /// (a session reinstating its own old one is always let in)
    #[arg(long, default_value_t = 4096, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_sessions: u32,
    /// Drop a connection whose initiator leaves a write waiting this long for its Data-Out (or
    /// sends less than 64 KiB of it in that time), or leaves vitd's answers waiting this long
    /// (takes less than 64 KiB of them in that time) (each holds one of the data thread's I/O
    /// buffers, which its other sessions need)
    #[arg(long, default_value_t = daemon::DEFAULT_STALL_TIMEOUT.as_secs(), value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    stall_timeout: u64,
}

/// `--cores` may ask for at most this many data threads per CPU the process may use.
const CORES_PER_CPU: usize = 4;

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours for a terminal only: a log file or the journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if cli.cores == Some(0) {
        eprintln!("vitd: error: --cores must be at least 1");
        return ExitCode::from(2);
    }
    // Each data thread pins its own registered buffers at start: a mistyped count must not take
    // the host's memory. More threads than a few per CPU buys nothing.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let max = CORES_PER_CPU * cpus;
    if let Some(n) = cli.cores
        && n > max
    {
        let pinned: usize = daemon::BUFFERS_PER_THREAD.iter().map(|(s, c)| s * c).sum();
        eprintln!(
            "vitd: error: --cores {n} is more than {CORES_PER_CPU} data threads per CPU this \
             process may use ({cpus} CPUs: at most {max}); each pins {} MiB of I/O buffers",
            pinned >> 20
        );
        return ExitCode::from(2);
    }
    let opts = DaemonOptions {
        datastore: cli.datastore,
        cores: cli.cores,
        direct: !cli.buffered,
        poll_us: cli.poll_us,
        max_sessions: cli.max_sessions as usize,
        stall_timeout: std::time::Duration::from_secs(cli.stall_timeout),
    };
    match daemon::run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            for line in e.to_string().lines() {
                eprintln!("vitd: error: {line}");
            }
            ExitCode::FAILURE
        }
    }
}
