//! vitd: the target daemon. A control thread accepts connections and runs login and discovery;
//! data threads, one per core, each own an io_uring ring, registered buffers and the connections
//! handed to them (see ARCHITECTURE.md).

pub mod conn;
pub mod control;
pub mod data;
pub mod discovery;
pub mod logbudget;
pub mod login;
pub mod portal;
pub mod ramdisk;
pub mod runtime;
pub mod shared;
pub mod uring;

use crate::config::AuthType;
use crate::ctl::{self, Ctl, LunSpec, TargetSpec};
use crate::datastore::{self, Datastore};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;

/// How vitd was asked to run.
#[derive(Clone, Debug, Default)]
pub struct DaemonOptions {
    /// `None`: the embedded default datastore ([`datastore::default_root`]).
    pub datastore: Option<PathBuf>,
    /// Data threads; `None`: one per available core.
    pub cores: Option<usize>,
    /// Open extents with O_DIRECT.
    pub direct: bool,
    /// Busy-poll budget of a data thread before it sleeps, in µs (0: never poll).
    pub poll_us: u32,
    /// Normal sessions served at once.
    pub max_sessions: usize,
    /// How long an initiator may leave a write waiting for its Data-Out, or vitd's answers
    /// unread, before its connection is dropped (zero: [`DEFAULT_STALL_TIMEOUT`]).
    pub stall_timeout: std::time::Duration,
}

/// The default of [`DaemonOptions::stall_timeout`]: longer than the 15 s after which an
/// initiator that answers nothing is dropped (a NOP-In ping after 5 s idle, 10 s to answer).
pub const DEFAULT_STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Why vitd could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Datastore(#[from] datastore::DatastoreError),
    #[error("{0}")]
    Ctl(#[from] ctl::CtlError),
    #[error("{0}")]
    Runtime(#[from] runtime::RuntimeError),
    #[error(
        "portal group {group}: cannot listen on {addr}: {source}{}",
        bind_hint(source, addr)
    )]
    Bind {
        group: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What an operator can do about a portal that cannot be listened on.
fn bind_hint(e: &std::io::Error, addr: &SocketAddr) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::AddrInUse => format!(
            " (another process listens there, another vitd or iSCSI target perhaps: \
             `ss -ltnp 'sport = :{}'` names it; stop it, or change this portal group's `listen` \
             in vit.conf)",
            addr.port()
        ),
        ErrorKind::PermissionDenied if addr.port() < 1024 => {
            " (a port below 1024 needs root or CAP_NET_BIND_SERVICE)".to_string()
        }
        _ if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
            " (the LUNs' extent files, each held open, took the open-files limit: raise it, \
             `ulimit -n` before starting vitd, systemd's LimitNOFILE=)"
                .to_string()
        }
        ErrorKind::AddrNotAvailable => {
            " (no interface of this host has that address: change the portal group's `listen` \
             in vit.conf)"
                .to_string()
        }
        _ => String::new(),
    }
}

/// The IQN of the embedded default target.
pub const DEFAULT_IQN: &str = "iqn.2026-11.io.vit:default";
/// Where the embedded default datastore listens.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3260";

/// Opens the datastore to serve: the one named, or the embedded default, created on first start
/// with one target and one 1 GiB sparse LUN listening on 127.0.0.1:3260.
pub fn open_datastore(opts: &DaemonOptions) -> Result<Datastore, DaemonError> {
    if let Some(root) = &opts.datastore {
        let ds = Datastore::open(root)?;
        ds.check_home_object()?;
        return Ok(ds);
    }
    let root = datastore::default_root();
    if !Datastore::open(&root).is_ok_and(|ds| ds.home_object_exists()) {
        create_default(&root)?;
    }
    Ok(Datastore::open(&root)?)
}

/// Builds the embedded default datastore whole (home object, target, LUN) in a directory of its
/// own beside `root`, then renames it into place: a crash leaves no half-made datastore there,
/// and of two vitd starting at once one builds it and both serve it (the loser's rename finds
/// `root` taken and its copy is removed). Every path inside a datastore is relative to it.
fn create_default(root: &std::path::Path) -> Result<(), DaemonError> {
    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| datastore::DatastoreError::Io { path, source }
    };
    let parent = crate::fsutil::parent_dir(root);
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let name = root.file_name().and_then(|n| n.to_str()).unwrap_or("vit");
    static BUILDS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let build = parent.join(format!(".{name}.creating-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&build);
    std::fs::create_dir_all(&build).map_err(io(&build))?;
    let made = (|| -> Result<(), DaemonError> {
        let ds = Datastore::open(&build)?;
        ds.create_home_object(&ctl::initial_config(DEFAULT_LISTEN))?;
        let mut c = Ctl::new(ds);
        let spec = TargetSpec {
            alias: "default".into(),
            iqn: Some(DEFAULT_IQN.into()),
            auth: ctl::AuthSpec {
                auth_type: Some(AuthType::None),
                ..Default::default()
            },
            ..Default::default()
        };
        c.target_add(&spec)?;
        c.lun_add(
            "default",
            &LunSpec {
                id: 0,
                size_bytes: 1 << 30,
                alias: Some("default".into()),
                preallocate: false,
            },
        )?;
        Ok(())
    })();
    if let Err(e) = made {
        let _ = std::fs::remove_dir_all(&build);
        return Err(e);
    }
    // An empty directory at `root` (made by hand, or by an older vitd) is replaced; one that
    // holds a datastore (another vitd was quicker) is kept.
    let _ = std::fs::remove_dir(root);
    match std::fs::rename(&build, root) {
        Ok(()) => {
            // The rename itself lasts once the directory holding it is synced.
            if let Err(e) = crate::fsutil::sync_dir(parent) {
                tracing::warn!("{}: {}: {}", e.path.display(), e.op, e.source);
            }
            tracing::info!("created the default datastore at {}", root.display());
            Ok(())
        }
        Err(_) if Datastore::open(root).is_ok_and(|ds| ds.home_object_exists()) => {
            let _ = std::fs::remove_dir_all(&build);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&build);
            Err(datastore::DatastoreError::Io {
                path: root.to_path_buf(),
                source: e,
            }
            .into())
        }
    }
}

/// Binds every address of every portal group a target uses, with a clear error naming the group.
pub fn bind_portals(running: &runtime::Running) -> Result<Vec<(TcpListener, usize)>, DaemonError> {
    let mut out = Vec::new();
    for (addr, pg) in running.listen_addrs() {
        let group = running.portal_groups[pg].name.clone();
        let listener = bind(addr).map_err(|source| DaemonError::Bind {
            group,
            addr,
            source,
        })?;
        out.push((listener, pg));
    }
    Ok(out)
}

/// A listening socket with SO_REUSEADDR (restarts must not wait for TIME_WAIT) and, for IPv6,
/// IPV6_V6ONLY so that `0.0.0.0` and `[::]` can both be bound.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use std::os::fd::FromRawFd;
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket(2) has no memory preconditions; the result is checked.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket nobody else owns; the listener closes it on drop.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    let set = |level, name| {
        // SAFETY: passes a pointer to a live c_int of the size given.
        unsafe { libc::setsockopt(fd, level, name, (&one as *const libc::c_int).cast(), 4) }
    };
    set(libc::SOL_SOCKET, libc::SO_REUSEADDR);
    if addr.is_ipv6() {
        set(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY);
    }
    let (storage, len) = sockaddr(addr);
    // SAFETY: storage holds a valid sockaddr of `len` bytes for this address family.
    if unsafe { libc::bind(fd, (&storage as *const libc::sockaddr_storage).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: listen(2) on our own socket.
    if unsafe { libc::listen(fd, 1024) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(listener)
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data for which all-zero bytes are valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            (
                storage,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in6 and suitably aligned.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            (
                storage,
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}

/// Registered buffers per data thread, as (slot size, count): 256 x 64 KiB for small I/O and
/// 32 x 1 MiB ([`runtime::MAX_IO_BYTES`]) for large, 48 MiB a thread. Memory is bounded by this,
/// not by load: when a thread's buffers are all in use, commands wait for one
/// ([`conn::Conn::grant_buffer`]).
pub const BUFFERS_PER_THREAD: &[(usize, usize)] = &[(64 << 10, 256), (runtime::MAX_IO_BYTES, 32)];

/// This process's RLIMIT_NOFILE (soft and hard), if the kernel tells.
pub(crate) fn open_files_limit() -> Option<libc::rlimit> {
    // SAFETY: an all-zero rlimit is a valid value of this plain C struct.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `lim` is a valid, writable rlimit for the kernel to fill.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim)
}

/// Raises the soft limit on open files to the hard one, as servers do: every session is a
/// socket, every extent an open file, and a service manager's default soft limit (1024) would
/// cap the sessions well below what the machine can serve. Returns the limit in force.
fn raise_open_files_limit() -> u64 {
    let Some(mut lim) = open_files_limit() else {
        return 1024;
    };
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; lowering nothing, raising only to the hard limit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    lim.rlim_cur
}

/// Says how many connections the open-files limit leaves room for once the extents, listeners
/// and rings are open (each connection is a socket), warning when that is fewer than
/// `max_sessions`: the limit, not `--max-sessions`, would then refuse logins (accept fails).
fn report_open_files(max_sessions: usize) {
    let (Some(lim), Ok(dir)) = (open_files_limit(), std::fs::read_dir("/proc/self/fd")) else {
        return;
    };
    // Less the descriptor reading the directory.
    let in_use = dir.count().saturating_sub(1) as u64;
    let room = lim.rlim_cur.saturating_sub(in_use);
    let text = format!(
        "{in_use} files open (extents, listeners, rings): the open-files limit ({}) leaves room \
         for about {room} connections",
        lim.rlim_cur
    );
    if room < max_sessions as u64 {
        tracing::warn!(
            "{text}, fewer than --max-sessions ({max_sessions}): raise it (`ulimit -n` before \
             starting vitd, systemd's LimitNOFILE=)"
        );
    } else {
        tracing::info!("{text}");
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(opts: DaemonOptions) -> Result<(), DaemonError> {
    // Block the stop signals before any thread starts, so that only the control thread sees them.
    let signals = control::signal_fd()?;
    tracing::info!(
        "vitd {} starting (pid {})",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    );
    let open_files = raise_open_files_limit();
    tracing::info!("open files limit {open_files}");
    let ds = open_datastore(&opts)?;
    // Held until vitd stops, so that vitctl can say a change waits for a restart.
    let _served = ds
        .mark_served()
        .inspect_err(|e| {
            tracing::warn!("cannot mark the datastore as served ({e}): vitctl will not know")
        })
        .ok();
    let cfg = ds.load_config()?;
    for w in crate::config::warnings(&cfg, &ds.config_path().display().to_string()) {
        tracing::warn!("{w}");
    }
    let interfaces = portal::interface_addrs()?;
    let running = runtime::build(
        &cfg,
        &ds,
        &interfaces,
        runtime::OpenOptions {
            direct: opts.direct,
        },
    )?;
    tracing::info!(
        "datastore {}: {}",
        ds.root().display(),
        runtime::describe(&running)
    );
    let listeners = bind_portals(&running)?;
    if listeners.is_empty() {
        tracing::warn!(
            "no target to serve, so no portal is listened on: add one with `vitctl target add` \
             and restart vitd (vit.conf is read at start)"
        );
    }
    for (l, pg) in &listeners {
        tracing::info!(
            "listening on {} (portal group {})",
            l.local_addr()?,
            running.portal_groups[*pg].name
        );
    }
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    // One data thread per core it may use: the affinity mask, within the CPU quota (a
    // container limited to fewer CPUs than it sees) that available_parallelism reports.
    let quota = std::thread::available_parallelism().map_or(usize::MAX, |n| n.get());
    let n = opts.cores.unwrap_or_else(|| cores.len().min(quota).max(1));
    let mut threads = Vec::with_capacity(n);
    // Data threads say here which sessions ended, so the control thread forgets them.
    let (ended_tx, ended_rx) = crossbeam_channel::unbounded();
    for i in 0..n {
        let core = if cores.is_empty() {
            None
        } else {
            Some(cores[i % cores.len()])
        };
        threads.push(data::DataThread::spawn(
            i,
            core,
            BUFFERS_PER_THREAD,
            data::Timing {
                poll: std::time::Duration::from_micros(opts.poll_us.into()),
                stall: if opts.stall_timeout.is_zero() {
                    DEFAULT_STALL_TIMEOUT
                } else {
                    opts.stall_timeout
                },
            },
            ended_tx.clone(),
        )?);
    }
    let stall = if opts.stall_timeout.is_zero() {
        DEFAULT_STALL_TIMEOUT
    } else {
        opts.stall_timeout
    };
    let poll = if opts.poll_us > 0 {
        format!(
            ", the ring polled {} µs before sleeping (--poll-us)",
            opts.poll_us
        )
    } else {
        String::new()
    };
    tracing::info!(
        "{n} data threads ready; at most {} sessions (--max-sessions), a connection stalled \
         {} s dropped (--stall-timeout){poll}",
        opts.max_sessions,
        stall.as_secs()
    );
    report_open_files(opts.max_sessions);
    let running = std::sync::Arc::new(running);
    let control = control::Control::new(
        running.clone(),
        listeners,
        threads,
        signals,
        ended_rx,
        opts.max_sessions,
    )?;
    control.run();
    runtime::sync_all(&running);
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_portal_that_cannot_be_listened_on_says_what_to_do() {
        let bind = |kind: std::io::ErrorKind, addr: &str| {
            DaemonError::Bind {
                group: "default".into(),
                addr: addr.parse().unwrap(),
                source: kind.into(),
            }
            .to_string()
        };
        use std::io::ErrorKind::*;
        let busy = bind(AddrInUse, "127.0.0.1:3260");
        assert!(busy.contains("`ss -ltnp 'sport = :3260'`"), "{busy}");
        let low = bind(PermissionDenied, "0.0.0.0:860");
        assert!(low.contains("CAP_NET_BIND_SERVICE"), "{low}");
        let gone = bind(AddrNotAvailable, "192.0.2.1:3260");
        assert!(gone.contains("no interface of this host"), "{gone}");
        let spent = DaemonError::Bind {
            group: "default".into(),
            addr: "127.0.0.1:3260".parse().unwrap(),
            source: std::io::Error::from_raw_os_error(libc::EMFILE),
        }
        .to_string();
        assert!(spent.contains("LimitNOFILE"), "{spent}");
    }

    #[test]
    fn the_default_datastore_is_made_whole_even_by_two_at_once() {
        let home = tempfile::tempdir().unwrap();
        let root = home.path().join("vit");
        let makers: Vec<_> = (0..2)
            .map(|_| {
                let root = root.clone();
                std::thread::spawn(move || create_default(&root).map_err(|e| e.to_string()))
            })
            .collect();
        for m in makers {
            m.join().unwrap().unwrap();
        }
        let ds = Datastore::open(&root).unwrap();
        let cfg = ds.load_config().unwrap();
        assert!(ds.validate().is_empty(), "{:?}", ds.validate());
        assert_eq!(cfg.targets.len(), 1);
        assert_eq!(cfg.targets[0].luns.len(), 1);
        let left: Vec<_> = std::fs::read_dir(home.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            left,
            vec![std::ffi::OsString::from("vit")],
            "nothing half-made is left"
        );
    }
}
