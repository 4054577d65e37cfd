//! A data thread: one io_uring ring, one pool of registered buffers, the fixed files of the
//! extents it serves, and the connections handed to it. Nothing here is shared with other threads
//! except the handoff channel (and its eventfd), the channel of ended sessions and each LUN's
//! `shared.rs` state, which a plain READ or WRITE reads with atomics alone while no reservation,
//! mail or held range is there, so the data path takes no locks.
//!
//! Per connection, at most one receive and one send are in flight. Receives land in a staging
//! buffer, except a large data segment whose destination is a task's registered buffer: that is
//! received straight into the buffer the file write will use. Sends gather (sendmsg) the header,
//! the data from the registered buffer the file read filled, and the padding/digest trailer.
//! Commands that take several steps (COMPARE AND WRITE, WRITE SAME, UNMAP, EXTENDED COPY, ...)
//! run as jobs (`jobs.rs`).

/// An extent as the ring names it: a registered (fixed) file, or, once the thread's table is
/// full, its plain descriptor (a little slower per I/O, never a failed one).
#[derive(Clone, Copy, Debug)]
enum FileRef {
    Fixed(u32),
    Raw(RawFd),
}

/// Builds an SQE on an extent whichever way the ring names it: io-uring's file-target type is
/// sealed, so the opcode is written once and built for each kind.
macro_rules! on_file {
    ($file:expr, |$t:ident| $build:expr) => {
        match $file {
            FileRef::Fixed(i) => {
                let $t = types::Fixed(i);
                $build
            }
            FileRef::Raw(fd) => {
                let $t = types::Fd(fd);
                $build
            }
        }
    };
}

mod jobs;

use super::conn::{Conn, DataDest, IoWork, OutData, OutPdu, STALL_PROGRESS};
use super::runtime::{Backing, LunRt};
use super::shared::FlushTurn;
use super::uring::{self, BufId, BufferPool, Waker};
use crate::iscsi::pdu::BHS_LEN;
use crate::iscsi::reader::{Event, PduReader, ReadError, Want};
use crate::scsi::{self, IoKind, IoResult};
use crate::vmdk::{Op, SegmentKind};
use crossbeam_channel::{Receiver, Sender};
use io_uring::{IoUring, opcode, squeue, types};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Staging receive buffer per connection.
const RX_BYTES: usize = 64 << 10;
/// A data segment this large makes what the staging buffer takes next a header alone
/// ([`Slot::header_only`]): another receive costs less than copying up to `RX_BYTES` of data out
/// of the staging buffer (measured: lowering this to 8 KiB added receives and saved no CPU).
const LARGE_SEGMENT: usize = 32 << 10;
/// PDUs gathered into one sendmsg.
const SEND_BATCH: usize = 32;
/// Why a connection ended when the initiator closed it (its end of stream, then its reset after a
/// half-close): logged at INFO.
const PEER_CLOSED: &str = "connection closed by the initiator";
/// A data segment at least this long, with nothing of it staged yet, is received straight into
/// its registered buffer.
const DIRECT_RECV_MIN: u32 = 4096;
/// Idle time before a NOP-In ping, and how long the peer has to answer.
const PING_IDLE: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest fixed-file table (see [`fixed_table_size`]).
const FIXED_FILES: u32 = 1024;
/// The fixed-file table's size: [`FIXED_FILES`], or a quarter of the open-files limit when
/// that is lower (the kernel refuses a table larger than the limit); extents past the table are
/// used through their descriptors.
fn fixed_table_size() -> u32 {
    let Some(lim) = super::open_files_limit() else {
        return 16;
    };
    u32::try_from(lim.rlim_cur / 4)
        .unwrap_or(u32::MAX)
        .clamp(16, FIXED_FILES)
}

/// Answers a connection may have queued (heap memory, see `Conn::out_bytes`) before vitd stops
/// receiving from it: one receive's worth of small requests can add a few hundred KiB more.
const OUT_QUEUE_BYTES: usize = 1 << 20;
/// How long initiators have to log out when vitd stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How a session ended, which sets the level its "session ended: WHY" line is logged at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// As sessions end (logged out, closed by the initiator, reinstated by a new login, vitd
    /// stopping): INFO.
    Normal,
    /// Something went wrong (a protocol or header digest error, a NOP-In unanswered, a stalled
    /// write or send, a reset or failed connection): WARN, so that an operator filtering for
    /// warnings sees the initiators that misbehaved and not every logout.
    Fault,
}

/// Messages to a data thread.
pub enum Msg {
    /// A connection that completed login (a normal session in full feature phase), with any
    /// bytes the control thread already received after the login and the initiator's address
    /// (taken at accept: a socket the peer has reset no longer says it).
    Conn(Box<(TcpStream, Conn, Vec<u8>, std::net::SocketAddr)>),
    /// Close the session with this id (it was reinstated by a new login).
    Drop(u64),
    /// Close every connection and exit.
    Shutdown,
}

/// A data thread as the control thread sees it.
pub struct DataThread {
    pub tx: Sender<Msg>,
    pub waker: Arc<Waker>,
    /// Connections currently owned (for least-loaded placement).
    pub load: Arc<AtomicUsize>,
    pub handle: Option<std::thread::JoinHandle<()>>,
}

/// A data thread's clocks.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Busy-poll budget before sleeping (zero: never), while connections run shallow queues.
    pub poll: Duration,
    /// How long an initiator may leave a write waiting for its Data-Out, or what vitd sends it
    /// waiting, without taking [`STALL_PROGRESS`] bytes of it, before its connection is dropped
    /// (checked once a second).
    pub stall: Duration,
}

impl DataThread {
    /// Starts data thread `index`, pinned to `core` when given.
    pub fn spawn(
        index: usize,
        core: Option<core_affinity::CoreId>,
        buffers: &'static [(usize, usize)],
        timing: Timing,
        ended: Sender<u64>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let waker = Arc::new(Waker::new()?);
        let load = Arc::new(AtomicUsize::new(0));
        let (w, l) = (waker.clone(), load.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(format!("vit-data-{index}"))
            .spawn(move || {
                if let Some(c) = core
                    && !core_affinity::set_for_current(c)
                {
                    tracing::warn!("data thread {index}: could not pin to core {}", c.id);
                }
                match Worker::new(rx, w, l, buffers, timing, index, ended) {
                    Ok(mut worker) => {
                        let _ = ready_tx.send(Ok(()));
                        worker.run();
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })?;
        ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("data thread died at start"))??;
        Ok(DataThread {
            tx,
            waker,
            load,
            handle: Some(handle),
        })
    }

    /// Hands a connection from `peer` over.
    pub fn give(&self, stream: TcpStream, conn: Conn, prefix: Vec<u8>, peer: std::net::SocketAddr) {
        self.load.fetch_add(1, Ordering::Relaxed);
        if self
            .tx
            .send(Msg::Conn(Box::new((stream, conn, prefix, peer))))
            .is_ok()
        {
            self.waker.wake();
        }
    }

    /// Asks the thread to stop: its initiators are asked to log out (see `Msg::Shutdown`).
    pub fn stop(&self) {
        let _ = self.tx.send(Msg::Shutdown);
        self.waker.wake();
    }

    /// Waits for the thread to end (after [`Self::stop`]).
    pub fn join(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    Recv = 1,
    Send = 2,
    File = 3,
    Wake = 4,
}

/// The LUN a task addresses: its index in the session's target and the LUN itself.
fn task_lun(s: &Slot, task: u16) -> Option<(usize, Arc<LunRt>)> {
    let target = s.conn.target.as_ref()?;
    let at = target.lun_index(lun_of(&s.conn, task))?;
    Some((at, target.luns[at].clone()))
}

/// "target NAME LUN N" of the LUN a task addresses, for log lines: which LUN failed, so that
/// the log leads to its datastore and files.
fn lun_label(s: &Slot, task: u16) -> String {
    let target = s.conn.target.as_ref().map_or("-", |t| t.name.as_str());
    match task_lun(s, task) {
        Some((_, l)) => format!("target {target} LUN {}", l.id),
        None => format!("target {target}"),
    }
}

/// How long a deeper queue than one command per connection turns polling off.
const DEEP_QUEUE_HOLDOFF: Duration = Duration::from_millis(20);

fn user_data(conn: usize, kind: Kind, task: u16) -> u64 {
    ((conn as u64) << 32) | (u64::from(kind as u8) << 24) | u64::from(task)
}

fn split_user_data(ud: u64) -> (usize, u8, u16) {
    (
        (ud >> 32) as usize,
        ((ud >> 24) & 0xff) as u8,
        (ud & 0xffff) as u16,
    )
}

/// A task's backing-store work in flight.
#[derive(Default)]
struct FileOp {
    pending: u16,
    failed: bool,
    /// Some operation failed for want of space (ENOSPC, EDQUOT: a thin LUN on a full file
    /// system), which the initiator is told as SPACE ALLOCATION FAILED.
    no_space: bool,
    /// Some operation was refused as the file system is read-only (EROFS: it turned
    /// read-only under the LUN), which the initiator is told as WRITE PROTECTED.
    read_only: bool,
    /// Bytes the read and write operations in flight asked for, and the bytes they moved: a
    /// short transfer is a failure, never a success with bytes missing.
    expect: u64,
    done: u64,
    /// Some of them write (a short write is the file system running out of space).
    writes: bool,
    /// The LUN whose page cache these operations flush (an fdatasync, or an RWF_DSYNC write to
    /// an extent without O_DIRECT): Linux reports a failed writeback to one such flush only,
    /// so a failure is latched on the LUN ([`super::shared::LunShared::note_flush_failed`]).
    flushes: Option<Arc<LunRt>>,
    /// Some of them are fdatasyncs, which fail while that latch is set: a flush after a failed
    /// one cannot vouch for the writes whose writeback failed.
    syncs: bool,
    /// They are flush round `n` of that LUN ([`super::shared::LunShared::flush_join`]): a
    /// SYNCHRONIZE CACHE, whose end serves the requests that waited for that round.
    round: Option<u64>,
    /// They are a flush of that LUN other than a round, counted in its epoch
    /// ([`super::shared::LunShared::other_flush_start`]) until they are all done.
    other_flush: Option<usize>,
    /// For VERIFY with BYTCHK: its data-out, kept here while the medium is read over it into
    /// its buffer.
    verify_data: Option<Vec<u8>>,
    work: Option<IoWork>,
    /// A multi-step command between two of its steps.
    job: Option<Box<jobs::Job>>,
}

impl FileOp {
    /// Starts counting a new step of a multi-step command: nothing asked, moved or failed yet.
    fn new_step(&mut self) {
        (self.expect, self.done, self.writes) = (0, 0, false);
        (self.failed, self.no_space, self.read_only) = (false, false, false);
        (self.flushes, self.syncs, self.round) = (None, false, None);
        self.other_flush = None;
    }
}

struct Slot {
    stream: TcpStream,
    fd: RawFd,
    /// The initiator's address, for log lines (the control thread's, from accept: once the
    /// peer has reset the connection, which may be before the handoff, the socket no longer
    /// says it).
    peer: std::net::SocketAddr,
    conn: Conn,
    reader: PduReader,
    rx: Box<[u8]>,
    rx_pos: usize,
    rx_len: usize,
    /// Bytes of the current PDU's data segment delivered so far.
    data_off: usize,
    saw_header: bool,
    /// The last PDU carried a large data segment: the staging buffer takes only a header next
    /// (after a direct receive: its staging part is `BHS_LEN` long), so that the data segment
    /// after it lands straight in its registered buffer instead of being copied there.
    header_only: bool,
    recv_inflight: bool,
    /// A receive straight into a registered buffer: (buffer, offset, length). The same receive
    /// goes on into the staging buffer for what follows the data segment.
    recv_direct: Option<(BufId, usize, usize)>,
    /// The two parts of a direct receive: the data segment's rest, then the staging buffer.
    rx_iov: [libc::iovec; 2],
    rx_msg: libc::msghdr,
    sending: Vec<OutPdu>,
    iov: Vec<libc::iovec>,
    msg: libc::msghdr,
    send_inflight: bool,
    send_done: usize,
    send_total: usize,
    /// Backing-store work in flight, by task slot.
    file_ops: Vec<FileOp>,
    /// Per task: the index (in the target's LUN list) of the LUN a plain write in flight is
    /// counted on ([`LunShared::write_start`](super::shared::LunShared::write_start)), so that its end is counted out.
    counted_write: Vec<Option<usize>>,
    inflight: u32,
    closing: bool,
    /// The initiator half-closed its side (a receive of 0 bytes): nothing more is received,
    /// what it sent whole is run and answered, and then the connection closes
    /// ([`Worker::end_input`]).
    input_ended: bool,
    /// Closed because a new login with its name, ISID and target replaced it.
    replaced: bool,
    close_after_send: bool,
    last_rx: Instant,
    ping_at: Option<Instant>,
    /// Since when the sends have waited on the initiator: restarted when a send begins with
    /// nothing queued before it, and each time the initiator has taken [`STALL_PROGRESS`]
    /// bytes more, so a peer taking a few bytes now and then does not keep the buffers its
    /// answers hold (`tick`). `send_mark`: the bytes it had taken then (TCP's count of bytes
    /// acknowledged, [`bytes_acked`]), read at the next tick after a restart by a send.
    send_stalled_at: Instant,
    send_mark: Option<u64>,
    /// The last send ended with nothing more queued: the next one starts the clock afresh.
    send_drained: bool,
}

struct Worker {
    ring: IoUring,
    rx: Receiver<Msg>,
    waker: Arc<Waker>,
    load: Arc<AtomicUsize>,
    pool: BufferPool,
    slots: Vec<Option<Box<Slot>>>,
    /// By (LUN, extent): looked up for every I/O, so hashed with FxHash, not SipHash (the keys
    /// are our own pointers, nothing a peer chooses).
    files: rustc_hash::FxHashMap<(usize, usize), FileRef>,
    next_file: u32,
    /// Size of the fixed-file table.
    fixed_files: u32,
    /// Where the ids of sessions that ended go (the control thread's records).
    ended: Sender<u64>,
    wake_buf: Box<u64>,
    dirty: Vec<usize>,
    shutting_down: bool,
    shutdown_deadline: Option<Instant>,
    /// When the last ring wait returned: one clock read per wakeup serves all its completions.
    now: Instant,
    /// Completions of one wait, reused (no allocation per wakeup).
    cqes: Vec<(u64, i32)>,
    /// The SQEs of one request's segments, reused (no allocation per I/O).
    sqe_scratch: Vec<squeue::Entry>,
    /// Requests waiting for a range held by an atomic operation.
    deferred: Vec<(usize, IoWork)>,
    /// SYNCHRONIZE CACHEs waiting for their LUN's next flush round (one round of a LUN in
    /// flight at a time, on any thread): asked again on every pass of the loop.
    flush_waiting: Vec<FlushWait>,
    /// Connections with a reset whose answer waits for other sessions' writes to end.
    resetting: Vec<usize>,
    /// Connections with commands waiting for a buffer, served in turn.
    buffer_waiters: Vec<usize>,
    /// How long to busy-poll the ring before sleeping (zero: never), see [`Worker::should_poll`].
    poll: Duration,
    /// See [`Timing::stall`].
    stall: Duration,
    /// No polling before this (a deeper queue was seen lately).
    no_poll_until: Instant,
    /// Backing-store failures can come at the rate of the traffic: a few log lines a second.
    log_budget: super::logbudget::LogBudget,
    /// This thread's counter of plain writes in flight in each LUN's shared state.
    shard: usize,
    /// Atomic operations (connection, task) holding their range while the plain writes in
    /// flight finish, with what they hold.
    draining: Vec<Drain>,
}

/// A SYNCHRONIZE CACHE (request `work` of connection `idx`) waiting for flush round `round` of
/// `lun` ([`super::shared::FlushTurn::Wait`]). It holds nothing: no buffer, nothing in flight.
struct FlushWait {
    idx: usize,
    work: IoWork,
    lun: Arc<LunRt>,
    round: u64,
}

/// An atomic operation waiting for the plain writes in flight ([`LunShared::begin_drain`](super::shared::LunShared::begin_drain)).
struct Drain {
    idx: usize,
    task: u16,
    lun: Arc<LunRt>,
    range: (u64, u64),
}

impl Worker {
    fn new(
        rx: Receiver<Msg>,
        waker: Arc<Waker>,
        load: Arc<AtomicUsize>,
        buffers: &[(usize, usize)],
        timing: Timing,
        shard: usize,
        ended: Sender<u64>,
    ) -> std::io::Result<Self> {
        let (ring, features) = uring::build_ring(256)?;
        tracing::debug!(
            single_issuer = features.single_issuer,
            defer_taskrun = features.defer_taskrun,
            "data ring ready"
        );
        let pool = BufferPool::new(buffers)?;
        pool.register(&ring)?;
        let fixed_files = fixed_table_size();
        ring.submitter().register_files_sparse(fixed_files)?;
        let mut w = Worker {
            ring,
            rx,
            waker,
            load,
            pool,
            slots: Vec::new(),
            files: rustc_hash::FxHashMap::default(),
            next_file: 0,
            fixed_files,
            ended,
            wake_buf: Box::new(0),
            dirty: Vec::new(),
            shutting_down: false,
            shutdown_deadline: None,
            cqes: Vec::with_capacity(1024),
            sqe_scratch: Vec::with_capacity(16),
            deferred: Vec::new(),
            flush_waiting: Vec::new(),
            resetting: Vec::new(),
            buffer_waiters: Vec::new(),
            poll: timing.poll,
            stall: timing.stall,
            no_poll_until: Instant::now(),
            now: Instant::now(),
            log_budget: super::logbudget::LogBudget::new(super::logbudget::LINES_PER_SECOND),
            shard,
            draining: Vec::new(),
        };
        w.arm_wake();
        Ok(w)
    }

    fn push(&mut self, sqe: squeue::Entry) {
        // SAFETY (for every caller): each entry's buffers are owned by a Slot (boxed, stable) or
        // the pool, and stay alive until the completion is reaped: slots are freed only when their
        // in-flight count is zero, and the pool outlives the ring.
        loop {
            // SAFETY: see above.
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                return;
            }
            let _ = self.ring.submit();
        }
    }

    fn arm_wake(&mut self) {
        let ptr: *mut u64 = &mut *self.wake_buf;
        let sqe = opcode::Read::new(types::Fd(self.waker.raw()), ptr.cast(), 8)
            .build()
            .user_data(user_data(0, Kind::Wake, 0));
        self.push(sqe);
    }

    fn run(&mut self) {
        let ts = types::Timespec::new().sec(1);
        // While requests wait for another thread's atomic operation or flush round, or a reset
        // for other threads' writes, look again soon.
        let short = types::Timespec::new().nsec(200_000);
        let mut last_tick = Instant::now();
        loop {
            if !self.deferred.is_empty() {
                self.retry_deferred();
            }
            if !self.resetting.is_empty() {
                self.poll_resets();
            }
            if !self.flush_waiting.is_empty() {
                self.retry_flushes();
            }
            if !self.buffer_waiters.is_empty() {
                self.grant_buffers();
            }
            self.flush_dirty();
            // Connections freed and aborted tasks dropped there give buffers back too.
            if !self.buffer_waiters.is_empty() && self.pool.available() > 0 {
                self.grant_buffers();
                self.flush_dirty();
            }
            if self.shutting_down && self.slots.iter().all(Option::is_none) {
                break;
            }
            if self.should_poll() {
                self.spin();
            }
            let args = types::SubmitArgs::new().timespec(
                if self.deferred.is_empty()
                    && self.resetting.is_empty()
                    && self.flush_waiting.is_empty()
                {
                    &ts
                } else {
                    &short
                },
            );
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e)
                    if e.raw_os_error() == Some(libc::ETIME)
                        || e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => {
                    tracing::error!("io_uring wait failed: {e}");
                    break;
                }
            }
            // After sleeping, the kernel posts only the one deferred completion this wait asked
            // for; the rest of a burst come with the next entry, so a burst's first answer goes
            // out alone. Taking the rest first (one send per burst) was measured and dropped:
            // perf/HISTORY.md, round "19:50-20:45 UTC".
            self.now = Instant::now();
            let mut cqes = std::mem::take(&mut self.cqes);
            cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
            for &(ud, res) in &cqes {
                self.complete(ud, res);
            }
            cqes.clear();
            self.cqes = cqes;
            if self.now.duration_since(last_tick) >= Duration::from_secs(1) {
                last_tick = self.now;
                self.tick();
            }
        }
    }

    /// Polling pays (a wakeup costs a virtual machine about 20 µs of latency each way) when the
    /// thread's connections run shallow queues: at most one command in flight each, as a QD 1
    /// initiator does. Deeper queues keep the thread busy anyway, and polling in the moments
    /// they drain would only burn CPU: after a deeper queue is seen, no polling for a while.
    fn should_poll(&mut self) -> bool {
        if self.poll.is_zero() || self.shutting_down {
            return false;
        }
        let (mut conns, mut tasks) = (0u32, 0u32);
        for s in self.slots.iter().flatten() {
            conns += 1;
            tasks += s.conn.tasks_in_flight();
        }
        let now = Instant::now();
        if tasks > conns {
            self.no_poll_until = now + DEEP_QUEUE_HOLDOFF;
            return false;
        }
        conns > 0 && now >= self.no_poll_until
    }

    /// Submits what is queued, then watches the ring for up to `poll` without sleeping: a
    /// completion, or deferred task work the kernel flags (IORING_SQ_TASKRUN), ends the watch and
    /// the wait that follows returns at once.
    fn spin(&mut self) {
        let _ = self.ring.submit();
        let start = Instant::now();
        loop {
            let ready = self.ring.submission().taskrun() || !self.ring.completion().is_empty();
            if ready || start.elapsed() >= self.poll {
                return;
            }
            std::hint::spin_loop();
        }
    }

    fn complete(&mut self, ud: u64, res: i32) {
        let (idx, kind, task) = split_user_data(ud);
        if kind == Kind::Wake as u8 {
            self.take_messages();
            if !self.shutting_down {
                self.arm_wake();
            }
            return;
        }
        let Some(slot) = self.slots.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        slot.inflight = slot.inflight.saturating_sub(1);
        match kind {
            k if k == Kind::Recv as u8 => self.on_recv(idx, res),
            k if k == Kind::Send as u8 => self.on_send(idx, res),
            k if k == Kind::File as u8 => self.on_file(idx, task, res),
            _ => {}
        }
        self.dirty.push(idx);
    }

    fn take_messages(&mut self) {
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                Msg::Conn(b) => {
                    let (stream, conn, prefix, peer) = *b;
                    self.add(stream, conn, &prefix, peer);
                }
                Msg::Drop(id) => {
                    let found = self
                        .slots
                        .iter()
                        .position(|s| s.as_ref().is_some_and(|s| s.conn.session_id == id));
                    if let Some(i) = found {
                        // Its I_T nexus ended at the new login (`Control::reinstate`).
                        if let Some(s) = self.slots[i].as_mut() {
                            s.replaced = true;
                        }
                        self.close(i, Ending::Normal, "reinstated by a new login");
                    }
                }
                Msg::Shutdown => {
                    // Ask every initiator to log out (Async Message, event 1); whoever has not
                    // logged out when the grace period ends is disconnected.
                    self.shutting_down = true;
                    self.shutdown_deadline = Some(Instant::now() + SHUTDOWN_GRACE);
                    for i in 0..self.slots.len() {
                        if let Some(s) = self.slots[i].as_mut() {
                            s.conn.request_logout(SHUTDOWN_GRACE.as_secs() as u16);
                            self.dirty.push(i);
                        }
                    }
                }
            }
        }
    }

    fn add(&mut self, stream: TcpStream, conn: Conn, prefix: &[u8], peer: std::net::SocketAddr) {
        let _ = stream.set_nodelay(true);
        let fd = stream.as_raw_fd();
        let reader = PduReader::new(conn.params.reader_limits());
        let mut slot = Box::new(Slot {
            stream,
            fd,
            peer,
            conn,
            reader,
            rx: vec![0u8; RX_BYTES].into_boxed_slice(),
            rx_pos: 0,
            rx_len: 0,
            data_off: 0,
            saw_header: false,
            header_only: false,
            recv_inflight: false,
            recv_direct: None,
            rx_iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; 2],
            // SAFETY: msghdr is plain data for which all-zero bytes are valid.
            rx_msg: unsafe { std::mem::zeroed() },
            sending: Vec::with_capacity(SEND_BATCH),
            iov: Vec::with_capacity(SEND_BATCH * 3),
            // SAFETY: msghdr is plain data for which all-zero bytes are valid.
            msg: unsafe { std::mem::zeroed() },
            send_inflight: false,
            send_done: 0,
            send_total: 0,
            file_ops: (0..usize::from(super::login::QUEUE_DEPTH))
                .map(|_| FileOp::default())
                .collect(),
            counted_write: vec![None; usize::from(super::login::QUEUE_DEPTH)],
            inflight: 0,
            closing: false,
            input_ended: false,
            replaced: false,
            close_after_send: false,
            last_rx: Instant::now(),
            ping_at: None,
            send_stalled_at: Instant::now(),
            send_mark: None,
            send_drained: true,
        });
        slot.conn.local_addr = slot.stream.local_addr().ok();
        // What the control thread read past the last login PDU (at most its 16 KiB buffer).
        let n = prefix.len().min(RX_BYTES);
        slot.rx[..n].copy_from_slice(&prefix[..n]);
        slot.rx_len = n;
        let idx = match self.slots.iter().position(Option::is_none) {
            Some(i) => {
                self.slots[i] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        self.dirty.push(idx);
        // Those bytes are acted on now: no receive may ever complete if the initiator, having
        // sent a command early, waits for its answer.
        if n > 0
            && let Err(e) = self.process_rx(idx)
        {
            self.close(idx, Ending::Fault, &e);
        }
    }

    /// Starts whatever each touched connection can start: receive, file I/O, send; frees closed ones.
    fn flush_dirty(&mut self) {
        while let Some(idx) = self.dirty.pop() {
            let Some(slot) = self.slots.get_mut(idx).and_then(Option::as_mut) else {
                continue;
            };
            if slot.closing {
                self.try_free(idx);
                continue;
            }
            self.start_file_io(idx);
            self.start_send(idx);
            self.start_recv(idx);
            // After the initiator's half-close, the connection closes once all it sent is
            // answered and sent.
            if let Some(s) = self.slots.get(idx).and_then(Option::as_ref)
                && s.input_ended
                && !s.send_inflight
                && s.sending.is_empty()
                && s.conn.finished()
            {
                self.close(idx, Ending::Normal, PEER_CLOSED);
            }
        }
    }

    /// The file operation of request `task` of connection `idx`, while the connection is there.
    fn file_op(&mut self, idx: usize, task: u16) -> Option<&mut FileOp> {
        self.slots
            .get_mut(idx)
            .and_then(Option::as_mut)
            .and_then(|s| s.file_ops.get_mut(usize::from(task)))
    }

    fn slot(&mut self, idx: usize) -> Option<&mut Slot> {
        self.slots
            .get_mut(idx)
            .and_then(Option::as_mut)
            .map(|b| &mut **b)
    }

    // ------------------------------------------------------------------ receive

    fn start_recv(&mut self, idx: usize) {
        let Some(s) = self.slots.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        // A peer that sends and does not read would have its answers pile up without end:
        // stop taking its input until they drain (TCP then holds it back).
        if s.recv_inflight || s.closing || s.input_ended || s.conn.out_bytes() > OUT_QUEUE_BYTES {
            return;
        }
        let sqe = if let (Want::Data { remaining, total }, DataDest::Slot { buf, offset, .. }) =
            (s.reader.want(), s.conn.dest)
            && s.rx_pos == s.rx_len
            && remaining >= DIRECT_RECV_MIN
        {
            let at = offset + (total - remaining) as usize;
            let len = (remaining as usize).min(self.pool.len_of(buf).saturating_sub(at));
            if len == 0 {
                return self.close(idx, Ending::Fault, "data segment beyond its buffer");
            }
            s.recv_direct = Some((buf, at, len));
            // SAFETY: `at + len` stays inside the slot (checked above); the task owning the buffer
            // is not freed while a receive into it is in flight (the slot's in-flight count).
            let ptr = unsafe { self.pool.ptr(buf).add(at) };
            // What follows the data segment (its digest, the next header, more PDUs) arrives in
            // the same receive, into the emptied staging buffer: one receive per data segment
            // instead of one for the data and another for the next header.
            s.rx_pos = 0;
            s.rx_len = 0;
            let tail = if s.header_only { BHS_LEN } else { s.rx.len() };
            s.rx_iov = [
                libc::iovec {
                    iov_base: ptr.cast(),
                    iov_len: len,
                },
                libc::iovec {
                    iov_base: s.rx.as_mut_ptr().cast(),
                    iov_len: tail,
                },
            ];
            s.rx_msg.msg_iov = s.rx_iov.as_mut_ptr();
            s.rx_msg.msg_iovlen = s.rx_iov.len();
            // The slot is boxed: the msghdr and its iovecs stay put until the receive completes.
            opcode::RecvMsg::new(types::Fd(s.fd), &mut s.rx_msg).build()
        } else {
            if s.rx_pos == s.rx_len {
                s.rx_pos = 0;
                s.rx_len = 0;
            } else if s.rx_len == s.rx.len() {
                s.rx.copy_within(s.rx_pos..s.rx_len, 0);
                s.rx_len -= s.rx_pos;
                s.rx_pos = 0;
            }
            let end = if s.header_only {
                (s.rx_len + BHS_LEN).min(s.rx.len())
            } else {
                s.rx.len()
            };
            let free = &mut s.rx[s.rx_len..end];
            opcode::Recv::new(types::Fd(s.fd), free.as_mut_ptr(), free.len() as u32).build()
        };
        s.recv_inflight = true;
        s.inflight += 1;
        self.push(sqe.user_data(user_data(idx, Kind::Recv, 0)));
    }

    fn on_recv(&mut self, idx: usize, res: i32) {
        let now = self.now;
        let Some(s) = self.slot(idx) else { return };
        s.recv_inflight = false;
        if res <= 0 {
            if res == 0 {
                return self.end_input(idx);
            }
            let why = std::io::Error::from_raw_os_error(-res).to_string();
            return self.close(idx, Ending::Fault, &why);
        }
        s.last_rx = now;
        s.ping_at = None;
        let n = res as usize;
        if let Some((buf, at, len)) = s.recv_direct.take() {
            let direct = n.min(len);
            s.data_off += direct;
            // The rest went to the staging buffer, emptied when the receive was started.
            s.rx_len = n - direct;
            // SAFETY: the kernel wrote `direct` bytes at `at` of this buffer, which the task owns.
            let data = unsafe { std::slice::from_raw_parts(self.pool.ptr(buf).add(at), direct) };
            let r = self.slots[idx]
                .as_mut()
                .map(|s| s.reader.data_received(data));
            if let Some(r) = r
                && let Err(e) = self.on_event(idx, r)
            {
                return self.close(idx, Ending::Fault, &e);
            }
        } else {
            s.rx_len += n;
        }
        if let Err(e) = self.process_rx(idx) {
            self.close(idx, Ending::Fault, &e);
        }
    }

    /// The initiator half-closed its side (TCP allows it to read on: a way to say it sends
    /// nothing more): no more receives, and no NOP-In pings it could not answer; the commands it
    /// sent whole run and are answered, those still waiting for its Data-Out or for a buffer
    /// end ([`Conn::end_input`]), and the connection closes once nothing is left to send
    /// (`flush_dirty`). A peer that then reads nothing is dropped by the send clock (`tick`).
    fn end_input(&mut self, idx: usize) {
        let Some(s) = self.slots.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        s.input_ended = true;
        s.ping_at = None;
        s.recv_direct = None;
        s.conn.end_input(&mut self.pool);
        self.dirty.push(idx);
    }

    /// Runs the reader over the staged bytes, delivering data segments to their destinations.
    fn process_rx(&mut self, idx: usize) -> Result<(), String> {
        loop {
            let Some(s) = self.slots.get_mut(idx).and_then(Option::as_mut) else {
                return Ok(());
            };
            if s.closing {
                return Ok(());
            }
            if s.rx_pos == s.rx_len {
                return Ok(());
            }
            let fed = s.reader.feed(&s.rx[s.rx_pos..s.rx_len]);
            if let Some(range) = fed.data.clone() {
                let (a, b) = (s.rx_pos + range.start, s.rx_pos + range.end);
                match s.conn.dest {
                    DataDest::Slot {
                        buf,
                        offset,
                        device,
                    } => {
                        let at = offset + s.data_off;
                        let dst = self.pool.slice(buf);
                        if let Some(d) = dst.get_mut(at..at + (b - a)) {
                            if device {
                                uring::copy_for_device(d, &s.rx[a..b]);
                            } else {
                                d.copy_from_slice(&s.rx[a..b]);
                            }
                        }
                    }
                    DataDest::Inline => {
                        let room = s.conn.inline.capacity() - s.conn.inline.len();
                        let take = (b - a).min(room);
                        s.conn.inline.extend_from_slice(&s.rx[a..a + take]);
                    }
                    DataDest::Discard => {}
                }
                s.data_off += b - a;
            }
            s.rx_pos += fed.consumed;
            let progressed = fed.consumed > 0;
            self.on_event(idx, fed.result)?;
            if !progressed {
                return Ok(());
            }
        }
    }

    /// Acts on a reader milestone.
    fn on_event(&mut self, idx: usize, r: Result<Option<Event>, ReadError>) -> Result<(), String> {
        let Some(s) = self.slots.get_mut(idx).and_then(Option::as_mut) else {
            return Ok(());
        };
        match r {
            Ok(None) => Ok(()),
            Ok(Some(Event::Header { data_len })) => {
                let bhs = *s.reader.bhs();
                s.data_off = 0;
                s.saw_header = true;
                s.conn.on_header(&bhs, data_len, &mut self.pool);
                s.header_only = data_len as usize >= LARGE_SEGMENT
                    && matches!(s.conn.dest, DataDest::Slot { .. });
                Ok(())
            }
            Ok(Some(Event::Complete)) => {
                let bhs = *s.reader.bhs();
                if !s.saw_header {
                    s.conn.on_header(&bhs, 0, &mut self.pool);
                    s.header_only = false;
                }
                s.saw_header = false;
                s.data_off = 0;
                s.conn
                    .on_pdu(&bhs, &mut self.pool)
                    .map_err(|e| e.to_string())?;
                if s.conn.resets_pending() && !self.resetting.contains(&idx) {
                    self.resetting.push(idx);
                }
                if s.conn.waiting_for_buffer() && !self.buffer_waiters.contains(&idx) {
                    self.buffer_waiters.push(idx);
                }
                Ok(())
            }
            Err(ReadError::DataDigest { .. }) => {
                let bhs = *s.reader.bhs();
                s.saw_header = false;
                s.conn.data_digest_error(&bhs, &mut self.pool);
                Ok(())
            }
            Err(e) => Err(format!("protocol error: {e}")),
        }
    }

    // ------------------------------------------------------------------ send

    fn start_send(&mut self, idx: usize) {
        let Some(s) = self.slots.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        if s.send_inflight || s.closing {
            return;
        }
        if s.sending.is_empty() {
            while s.sending.len() < SEND_BATCH {
                let Some(mut pdu) = s.conn.pop_out() else {
                    break;
                };
                s.conn.seal(&mut pdu, &mut self.pool);
                s.sending.push(pdu);
            }
            if s.sending.is_empty() {
                return;
            }
            if s.send_drained {
                (s.send_stalled_at, s.send_mark) = (self.now, None);
            }
            s.send_done = 0;
            s.send_total = s
                .sending
                .iter()
                .map(|p| p.header_len + data_len(&p.data) + p.trailer_len)
                .sum();
        }
        // Build the iovec list for what is not sent yet.
        s.iov.clear();
        let mut skip = s.send_done;
        for p in &s.sending {
            let parts: [(*const u8, usize); 3] = [
                (p.header.as_ptr(), p.header_len),
                data_ptr(&p.data, &self.pool),
                (p.trailer.as_ptr(), p.trailer_len),
            ];
            for (ptr, len) in parts {
                if len == 0 {
                    continue;
                }
                if skip >= len {
                    skip -= len;
                    continue;
                }
                // SAFETY: skip < len, so the pointer stays inside the part.
                let base = unsafe { ptr.add(skip) };
                s.iov.push(libc::iovec {
                    iov_base: base as *mut libc::c_void,
                    iov_len: len - skip,
                });
                skip = 0;
            }
        }
        s.msg.msg_iov = s.iov.as_mut_ptr();
        s.msg.msg_iovlen = s.iov.len();
        let msg: *const libc::msghdr = &s.msg;
        s.send_inflight = true;
        s.inflight += 1;
        let sqe = opcode::SendMsg::new(types::Fd(s.fd), msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build();
        self.push(sqe.user_data(user_data(idx, Kind::Send, 0)));
    }

    fn on_send(&mut self, idx: usize, res: i32) {
        let Some(s) = self.slots.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        s.send_inflight = false;
        if res < 0 {
            // After its half-close, the initiator's reset is its close showing: it had closed
            // its socket, not just its side.
            if s.input_ended && (-res == libc::ECONNRESET || -res == libc::EPIPE) {
                return self.close(idx, Ending::Normal, PEER_CLOSED);
            }
            let e = std::io::Error::from_raw_os_error(-res);
            return self.close(idx, Ending::Fault, &format!("send failed: {e}"));
        }
        s.send_done += res as usize;
        if s.send_done < s.send_total {
            return; // the rest goes out from flush_dirty
        }
        let mut close = false;
        for p in s.sending.drain(..) {
            s.conn.sent(&p, &mut self.pool);
            close |= p.close_after;
        }
        s.send_drained = s.conn.out.is_empty();
        if close {
            s.close_after_send = true;
            self.close(idx, Ending::Normal, "logged out");
        }
    }

    // ------------------------------------------------------------------ file I/O

    /// The fixed-file index of extent `extent` of a LUN, registering it on first use.
    fn file(&mut self, lun: &Arc<LunRt>, extent: usize) -> Option<FileRef> {
        let key = (Arc::as_ptr(lun) as usize, extent);
        if let Some(&i) = self.files.get(&key) {
            return Some(i);
        }
        let Backing::Vmdk { files, .. } = &lun.backing else {
            return None;
        };
        let fd = files.get(extent)?.as_ref()?.as_raw_fd();
        let i = self.next_file;
        let f = if i < self.fixed_files
            && self
                .ring
                .submitter()
                .register_files_update(i, &[fd])
                .is_ok()
        {
            self.next_file += 1;
            FileRef::Fixed(i)
        } else {
            FileRef::Raw(fd)
        };
        // LUNs (their descriptors open) live as long as the running configuration, which is
        // never replaced while vitd runs: a key never outlives its LUN.
        self.files.insert(key, f);
        Some(f)
    }

    fn start_file_io(&mut self, idx: usize) {
        loop {
            let Some(s) = self.slots.get_mut(idx).and_then(Option::as_mut) else {
                return;
            };
            let Some(work) = s.conn.io.pop_front() else {
                return;
            };
            // A task aborted before its I/O started does not start it.
            if s.conn.aborted(work.task) {
                s.conn.io_done(work.task, IoResult::Failed, &mut self.pool);
                continue;
            }
            let Some((at, lun)) = task_lun(s, work.task) else {
                s.conn.io_done(work.task, IoResult::Failed, &mut self.pool);
                continue;
            };
            if !self.submit_io(idx, at, &lun, work) {
                self.deferred.push((idx, work));
            }
        }
    }

    /// Shares the free buffers out among the connections with commands waiting for one, one
    /// command per connection in turn, the turn going on where the last sharing left it (a
    /// session that asks for many cannot take them all while another waits,
    /// [`grant_in_turn`](super::conn::grant_in_turn)).
    fn grant_buffers(&mut self) {
        let (dirty, resetting) = (&mut self.dirty, &mut self.resetting);
        super::conn::grant_in_turn(
            &mut self.buffer_waiters,
            &mut self.slots,
            |s| s.as_mut().filter(|s| !s.closing).map(|s| &mut s.conn),
            &mut self.pool,
            |idx, c| {
                dirty.push(idx);
                // A command run now may wait as a reset does (PREEMPT AND ABORT).
                if c.resets_pending() && !resetting.contains(&idx) {
                    resetting.push(idx);
                }
            },
        );
        let slots = &self.slots;
        self.buffer_waiters.retain(|&idx| {
            slots
                .get(idx)
                .and_then(Option::as_ref)
                .is_some_and(|s| !s.closing && s.conn.waiting_for_buffer())
        });
        // What is still waiting keeps the slots it could use from newcomers.
        let waiting = self
            .buffer_waiters
            .iter()
            .filter_map(|&idx| slots.get(idx)?.as_ref()?.conn.wait_len(&self.pool))
            .min();
        self.pool.set_waiting(waiting);
    }

    /// Answers the resets whose wait for other sessions' writes is over.
    fn poll_resets(&mut self) {
        for idx in std::mem::take(&mut self.resetting) {
            let Some(s) = self.slots.get_mut(idx).and_then(Option::as_mut) else {
                continue;
            };
            // A closing connection gives its waits up when it is freed.
            if s.closing {
                continue;
            }
            if s.conn.poll_resets(&mut self.pool) {
                self.dirty.push(idx);
            }
            if s.conn.resets_pending() {
                self.resetting.push(idx);
            }
        }
    }

    /// Retries requests that waited for an atomic operation's range.
    fn retry_deferred(&mut self) {
        for (idx, work) in std::mem::take(&mut self.deferred) {
            // A reset by another session may have aborted it while it waited.
            if let Some(s) = self.slots.get_mut(idx).and_then(Option::as_mut) {
                s.conn.check_task_mail(work.task);
            }
            // Not for a closing connection, nor for a task aborted while it waited.
            let lun = self
                .slots
                .get(idx)
                .and_then(Option::as_ref)
                .filter(|s| !s.closing && !s.conn.aborted(work.task))
                .and_then(|s| task_lun(s, work.task));
            match lun {
                Some((at, lun)) => {
                    if !self.submit_io(idx, at, &lun, work) {
                        self.deferred.push((idx, work));
                        continue;
                    }
                }
                None => {
                    self.abandon_drain(idx, work.task);
                    if let Some(s) = self.slots.get_mut(idx).and_then(Option::as_mut) {
                        s.conn.io_done(work.task, IoResult::Failed, &mut self.pool);
                    }
                }
            }
            // It may have been answered at once (a memory LUN, a refusal): send that now.
            self.dirty.push(idx);
        }
    }

    /// Starts a request's backing-store work on `lun` (at index `at` in the target's list);
    /// false when it must wait for an atomic operation (the caller keeps it and retries).
    fn submit_io(&mut self, idx: usize, at: usize, lun: &Arc<LunRt>, work: IoWork) -> bool {
        let req = work.req;
        let plain = matches!(
            req.kind,
            IoKind::Read
                | IoKind::Write
                | IoKind::WriteVerify { .. }
                | IoKind::Verify { .. }
                | IoKind::Sync { .. }
        );
        if !plain {
            return self.start_job(idx, lun, work);
        }
        if req.kind.writes() {
            let end = req.byte_offset + req.byte_len as u64;
            if !lun.shared.write_start(self.shard, req.byte_offset, end) {
                return false;
            }
            let Some(s) = self.slots.get_mut(idx).and_then(Option::as_mut) else {
                lun.shared.write_done(self.shard);
                return false;
            };
            // Counted in: a reset that began after the mail was last looked at either waits
            // for this write or has posted mail that is seen now.
            if !s.conn.may_write(work.task, at) {
                lun.shared.write_done(self.shard);
                s.conn.io_done(work.task, IoResult::Failed, &mut self.pool);
                return true;
            }
            match s.counted_write.get_mut(usize::from(work.task)) {
                Some(c) => *c = Some(at),
                None => {
                    lun.shared.write_done(self.shard);
                    s.conn.io_done(work.task, IoResult::Failed, &mut self.pool);
                    return true;
                }
            }
        }
        self.submit_plain(idx, lun, work);
        true
    }

    fn submit_plain(&mut self, idx: usize, lun: &Arc<LunRt>, work: IoWork) {
        let req = work.req;
        let mut op = FileOp {
            work: Some(work),
            ..Default::default()
        };
        let (target_buf, op_kind) = match (req.kind, work.buf) {
            (IoKind::Sync { .. }, _) => return self.submit_sync(idx, lun, work, op),
            // VERIFY reads the medium into its own buffer, which is as long (`Conn::buffer_len`):
            // no second buffer, which would rarely be free while other sessions' commands wait
            // for every one freed. With BYTCHK its data-out, there first, is kept aside to
            // compare (`finish_io`).
            (IoKind::Verify { bytchk }, Some(b)) => {
                if bytchk {
                    op.verify_data = Some(self.task_bytes(Some(b), req.data_out_len));
                }
                (b, Op::Read)
            }
            (IoKind::Read, Some(b)) => (b, Op::Read),
            (IoKind::Write | IoKind::WriteVerify { .. }, Some(b)) => (b, Op::Write),
            _ => return self.finish_io(idx, work.task, IoResult::Failed),
        };
        match &lun.backing {
            Backing::Ramdisk { .. } => {
                // A LUN without backing store reads as zeroes: its Data-In is sent from the
                // pool's zero mapping, and the buffer is left as it is.
                let zeroes = matches!(req.kind, IoKind::Read)
                    && super::ramdisk::reads_as_zeroes(lun, req.byte_offset, req.byte_len);
                let r = if zeroes {
                    IoResult::Ok
                } else {
                    super::ramdisk::transfer(
                        lun,
                        req.byte_offset,
                        self.pool.slice(target_buf),
                        req.byte_len,
                        op_kind,
                    )
                };
                if let Some(s) = self.slots[idx].as_mut() {
                    s.file_ops[usize::from(work.task)] = op;
                    if zeroes {
                        s.conn.zero_data(work.task);
                    }
                }
                self.finish_io(idx, work.task, r);
            }
            // The device server answers NOT READY for an offline LUN before any I/O.
            Backing::Offline { .. } => self.finish_io(idx, work.task, IoResult::Failed),
            Backing::Vmdk { map, .. } => {
                let segments = match map.map(req.byte_offset, req.byte_len as u64, op_kind) {
                    Ok(s) => s,
                    Err(_) => return self.finish_io(idx, work.task, IoResult::Failed),
                };
                // FUA: the write reaches stable storage before it completes (with O_DIRECT too:
                // RWF_DSYNC makes the device flush its cache for it).
                let flags = if req.fua && op_kind == Op::Write {
                    libc::RWF_DSYNC
                } else {
                    0
                };
                let mut sqes = std::mem::take(&mut self.sqe_scratch);
                sqes.clear();
                let mut at = 0usize;
                for seg in segments {
                    let len = seg.len as usize;
                    if seg.kind == SegmentKind::Zero {
                        if let Some(d) = self.pool.slice(target_buf).get_mut(at..at + len) {
                            d.fill(0);
                        }
                    } else {
                        let Some(file) = self.file(lun, seg.extent) else {
                            self.sqe_scratch = sqes;
                            return self.finish_io(idx, work.task, IoResult::Failed);
                        };
                        // SAFETY: at + len <= byte_len <= slot size (checked by the connection).
                        let ptr = unsafe { self.pool.ptr(target_buf).add(at) };
                        let sqe = if op_kind == Op::Read {
                            on_file!(file, |f| opcode::ReadFixed::new(
                                f,
                                ptr,
                                len as u32,
                                target_buf.0
                            )
                            .offset(seg.file_offset)
                            .build())
                        } else {
                            on_file!(file, |f| opcode::WriteFixed::new(
                                f,
                                ptr,
                                len as u32,
                                target_buf.0
                            )
                            .offset(seg.file_offset)
                            .rw_flags(flags)
                            .build())
                        };
                        sqes.push(sqe.user_data(user_data(idx, Kind::File, work.task)));
                        op.expect += len as u64;
                        op.writes |= op_kind == Op::Write;
                    }
                    at += len;
                }
                op.pending = sqes.len() as u16;
                if flags != 0 && !lun.direct_io() && !sqes.is_empty() {
                    op.flushes = Some(lun.clone());
                    op.other_flush = Some(lun.shared.other_flush_start());
                }
                if let Some(s) = self.slots[idx].as_mut() {
                    s.inflight += sqes.len() as u32;
                    s.file_ops[usize::from(work.task)] = op;
                }
                let empty = sqes.is_empty();
                for sqe in sqes.drain(..) {
                    self.push(sqe);
                }
                self.sqe_scratch = sqes;
                if empty {
                    self.finish_io(idx, work.task, IoResult::Ok);
                }
            }
        }
    }

    /// A copy of the first `n` bytes of a task's buffer (its data-out; empty without one).
    fn task_bytes(&mut self, buf: Option<BufId>, n: usize) -> Vec<u8> {
        buf.and_then(|b| self.pool.slice(b).get(..n).map(<[u8]>::to_vec))
            .unwrap_or_default()
    }

    /// SYNCHRONIZE CACHE: flush round of its LUN run now, or waited for (see
    /// [`super::shared::LunShared::flush_join`]: one round of a LUN in flight at a time).
    fn submit_sync(&mut self, idx: usize, lun: &Arc<LunRt>, work: IoWork, op: FileOp) {
        if let Some(s) = self.slots[idx].as_mut() {
            s.file_ops[usize::from(work.task)] = op;
        }
        if !matches!(lun.backing, Backing::Vmdk { .. }) {
            return self.finish_io(idx, work.task, IoResult::Ok);
        }
        match lun.shared.flush_join() {
            FlushTurn::Issue(n) => self.run_flush_round(idx, lun, work.task, n),
            FlushTurn::Wait(round) => self.flush_waiting.push(FlushWait {
                idx,
                work,
                lun: lun.clone(),
                round,
            }),
            FlushTurn::Done(good) => self.finish_io(idx, work.task, flush_result(good)),
        }
    }

    /// Issues flush round `n` of `lun` for request `task` of connection `idx` (its file op
    /// already in place); the round ends when its last fdatasync completes (`on_file`).
    fn run_flush_round(&mut self, idx: usize, lun: &Arc<LunRt>, task: u16, n: u64) {
        let pending = self.submit_datasync(idx, task, lun);
        if let Some(op) = self.file_op(idx, task) {
            op.pending = pending;
            op.round = Some(n);
        }
        if pending == 0 {
            self.end_flush_round(idx, lun, task, n);
        }
    }

    /// Round `n` of `lun`, run by request `task` of connection `idx`, ended without any
    /// fdatasync (no extent file to flush): the request is answered by the round's verdict,
    /// or waits for it like the others the round serves (other flushes of the LUN still in
    /// flight).
    fn end_flush_round(&mut self, idx: usize, lun: &Arc<LunRt>, task: u16, n: u64) {
        match lun.shared.flush_finish(n, false) {
            Some(good) => self.finish_io(idx, task, flush_result(good)),
            None => {
                let work = self.file_op(idx, task).and_then(|op| op.work);
                match work {
                    Some(work) => self.flush_waiting.push(FlushWait {
                        idx,
                        work,
                        lun: lun.clone(),
                        round: n,
                    }),
                    None => self.finish_io(idx, task, IoResult::Failed),
                }
            }
        }
    }

    /// Counts a flush of `lun` other than a round (an RWF_DSYNC write through the page cache,
    /// a job's fdatasync) for request `task` of connection `idx`, until its operations end.
    fn count_other_flush(&mut self, idx: usize, task: u16, lun: &Arc<LunRt>) {
        if let Some(op) = self.file_op(idx, task)
            && op.other_flush.is_none()
        {
            op.other_flush = Some(lun.shared.other_flush_start());
            op.flushes = Some(lun.clone());
        }
    }

    /// Asks again for each SYNCHRONIZE CACHE waiting for a flush round: answered once its round
    /// has ended, started when its round is due and no other waiter started it; one aborted
    /// while it waited (or whose connection is closing) ends here, leaving nothing behind.
    fn retry_flushes(&mut self) {
        for w in std::mem::take(&mut self.flush_waiting) {
            let (idx, task) = (w.idx, w.work.task);
            let Some(s) = self.slots.get_mut(idx).and_then(Option::as_mut) else {
                continue;
            };
            // A reset by another session may have aborted it while it waited.
            s.conn.check_task_mail(task);
            self.dirty.push(idx);
            if s.closing || s.conn.aborted(task) {
                self.finish_io(idx, task, IoResult::Failed);
                continue;
            }
            let turn = w.lun.shared.flush_poll(w.round);
            if matches!(turn, FlushTurn::Wait(_)) {
                self.flush_waiting.push(w);
                continue;
            }
            // The request takes its file op back: to run the round, or to be answered.
            s.file_ops[usize::from(task)] = FileOp {
                work: Some(w.work),
                ..Default::default()
            };
            match turn {
                FlushTurn::Issue(n) => self.run_flush_round(idx, &w.lun, task, n),
                FlushTurn::Done(good) => self.finish_io(idx, task, flush_result(good)),
                FlushTurn::Wait(_) => {}
            }
        }
    }

    /// Queues an fdatasync of every extent file of `lun` for request `task` of connection
    /// `idx`; returns how many (0 for a LUN without files).
    fn submit_datasync(&mut self, idx: usize, task: u16, lun: &Arc<LunRt>) -> u16 {
        let n = match &lun.backing {
            Backing::Vmdk { files, .. } => files.len(),
            Backing::Ramdisk { .. } | Backing::Offline { .. } => 0,
        };
        let mut count = 0u16;
        for e in 0..n {
            if let Some(file) = self.file(lun, e) {
                let sqe = on_file!(file, |f| opcode::Fsync::new(f)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build());
                self.push(sqe.user_data(user_data(idx, Kind::File, task)));
                count += 1;
            }
        }
        if let Some(s) = self.slots[idx].as_mut() {
            s.inflight += u32::from(count);
            if count > 0
                && let Some(op) = s.file_ops.get_mut(usize::from(task))
            {
                op.flushes = Some(lun.clone());
                op.syncs = true;
            }
        }
        count
    }

    fn on_file(&mut self, idx: usize, task: u16, res: i32) {
        let Some(s) = self.slots.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        if res < 0 && self.log_budget.allow() {
            tracing::warn!(
                "backing-store I/O failed ({}): {}",
                lun_label(s, task),
                std::io::Error::from_raw_os_error(-res)
            );
        }
        let Some(op) = s.file_ops.get_mut(usize::from(task)) else {
            return;
        };
        if res < 0 {
            let no_space = -res == libc::ENOSPC || -res == libc::EDQUOT;
            op.failed = true;
            op.no_space |= no_space;
            op.read_only |= -res == libc::EROFS;
            // A failed fdatasync, or any failure of a write through the page cache with
            // RWF_DSYNC, may have lost writes acknowledged before. Such a write's ENOSPC too:
            // the kernel flushes its range once it is in the page cache and answers a
            // writeback failure there (of acknowledged writes sharing its pages, or any of
            // the file's it had not told yet) with that errno, and tells no later fsync; an
            // ENOSPC found at once cannot be told apart from it.
            if let Some(lun) = &op.flushes
                && lun.shared.note_flush_failed()
            {
                tracing::error!(
                    "target {} LUN {}: flushing its writes to the backing store failed ({}): \
                     data acknowledged before may be lost; every later SYNCHRONIZE CACHE of it \
                     fails until vitd restarts",
                    s.conn.target.as_ref().map_or("-", |t| t.name.as_str()),
                    lun.id,
                    std::io::Error::from_raw_os_error(-res)
                );
            }
        } else {
            op.done += res as u64;
        }
        op.pending = op.pending.saturating_sub(1);
        if op.pending != 0 {
            return;
        }
        // Counted out once its failure, if any, is latched (above).
        if let (Some(slot), Some(lun)) = (op.other_flush.take(), &op.flushes) {
            lun.shared.other_flush_done(slot);
        }
        // A flush round's end serves the requests that waited for it (its own request among
        // them once the other flushes in flight are done).
        if let (Some(n), Some(lun)) = (op.round.take(), op.flushes.clone()) {
            match lun.shared.flush_finish(n, op.failed) {
                Some(good) => op.failed |= !good,
                None => {
                    if let Some(work) = op.work {
                        self.flush_waiting.push(FlushWait {
                            idx,
                            work,
                            lun,
                            round: n,
                        });
                        return;
                    }
                    op.failed = true;
                }
            }
        }
        if op.syncs
            && let Some(lun) = &op.flushes
            && lun.shared.flush_failed()
        {
            op.failed = true;
        }
        if !op.failed && op.done != op.expect {
            let (done, expect) = (op.done, op.expect);
            if self.log_budget.allow() {
                tracing::warn!(
                    "backing-store I/O moved {done} of {expect} bytes ({})",
                    lun_label(s, task)
                );
            }
            let Some(op) = s.file_ops.get_mut(usize::from(task)) else {
                return;
            };
            op.failed = true;
            op.no_space |= op.writes;
        }
        let Some(op) = s.file_ops.get_mut(usize::from(task)) else {
            return;
        };
        let result = match (op.failed, op.no_space, op.read_only) {
            (false, ..) => IoResult::Ok,
            (true, true, _) => IoResult::NoSpace,
            (true, false, true) => IoResult::WriteProtected,
            (true, false, false) => IoResult::Failed,
        };
        if let Some(job) = op.job.take() {
            return self.advance(idx, job, result);
        }
        self.finish_io(idx, task, result);
    }

    /// A task's backing-store work is over: compare for VERIFY, then let the connection respond.
    fn finish_io(&mut self, idx: usize, task: u16, mut result: IoResult) {
        let Some(s) = self.slots.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        if let Some(at) = s
            .counted_write
            .get_mut(usize::from(task))
            .and_then(Option::take)
            && let Some(lun) = s.conn.target.as_ref().and_then(|t| t.luns.get(at))
        {
            lun.shared.write_done(self.shard);
        }
        let op = s
            .file_ops
            .get_mut(usize::from(task))
            .map(std::mem::take)
            .unwrap_or_default();
        if let (Some(out), Some(work)) = (&op.verify_data, op.work)
            && result == IoResult::Ok
            && let Some(b) = work.buf
        {
            let media = self.pool.slice(b).get(..work.req.byte_len).unwrap_or(&[]);
            if let Some(off) = scsi::first_mismatch(media, out) {
                result = IoResult::Miscompare(off as u64);
            }
        }
        if let IoResult::Failed = result
            && let Some(work) = op.work
        {
            result = match work.req.kind {
                IoKind::Read | IoKind::Verify { .. } => IoResult::ReadError(Some(work.req.lba)),
                _ => IoResult::WriteError(Some(work.req.lba)),
            };
        }
        s.conn.io_done(task, result, &mut self.pool);
    }

    // ------------------------------------------------------------------ lifecycle

    /// Marks a connection closing: no new work starts; it is freed when nothing is in flight.
    /// Its end is logged once, saying why, at the level `ending` gives it.
    fn close(&mut self, idx: usize, ending: Ending, why: &str) {
        let Some(s) = self.slots.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        if !s.closing {
            let peer = s.peer;
            let initiator = &s.conn.params.initiator_name;
            let target = s.conn.target.as_ref().map_or("-", |t| t.name.as_str());
            match ending {
                Ending::Normal => tracing::info!(
                    initiator = %initiator,
                    target = %target,
                    peer = %peer,
                    "session ended: {why}"
                ),
                Ending::Fault => tracing::warn!(
                    initiator = %initiator,
                    target = %target,
                    peer = %peer,
                    "session ended: {why}"
                ),
            }
            s.closing = true;
            // SAFETY: shutdown(2) on a socket we own; pending receives then complete.
            unsafe { libc::shutdown(s.fd, libc::SHUT_RDWR) };
        }
        self.dirty.push(idx);
    }

    fn try_free(&mut self, idx: usize) {
        let Some(s) = self.slots.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        if s.inflight > 0 {
            return;
        }
        // Requests of it still waiting for a range, a reset or a flush round go with it: its
        // slot may be given to a new connection before they would be looked at again.
        self.flush_waiting.retain(|w| w.idx != idx);
        if self.deferred.iter().any(|&(i, _)| i == idx) {
            for (i, work) in std::mem::take(&mut self.deferred) {
                if i == idx {
                    self.abandon_drain(idx, work.task);
                } else {
                    self.deferred.push((i, work));
                }
            }
        }
        let Some(mut s) = self.slots[idx].take() else {
            return;
        };
        if !s.replaced {
            s.conn.nexus_lost();
        }
        s.conn.release_all(&mut self.pool);
        let _ = self.ended.send(s.conn.session_id);
        for p in s.sending.drain(..) {
            s.conn.sent(&p, &mut self.pool);
        }
        self.load.fetch_sub(1, Ordering::Relaxed);
    }

    /// Once a second: ping idle connections and drop those that stopped answering, and those
    /// that hold this thread's buffers without making progress: a write whose Data-Out does
    /// not come, or answers the initiator does not read (each holds a registered buffer, which
    /// other sessions on the thread need; at ErrorRecoveryLevel 0 dropping the connection is
    /// the recovery RFC 7143 §7.1.4.2 leaves to the target).
    fn tick(&mut self) {
        let now = Instant::now();
        self.log_budget.settle();
        if self.shutdown_deadline.is_some_and(|d| now >= d) {
            for i in 0..self.slots.len() {
                self.close(i, Ending::Normal, "vitd is stopping");
            }
        }
        for idx in 0..self.slots.len() {
            let Some(s) = self.slots.get_mut(idx).and_then(Option::as_mut) else {
                continue;
            };
            if s.closing {
                continue;
            }
            if u64::from(s.conn.data_out_stall()) > self.stall.as_secs() {
                let why = format!(
                    "a write waited {} s for Data-Out that did not come",
                    self.stall.as_secs()
                );
                self.close(idx, Ending::Fault, &why);
                continue;
            }
            // What the initiator has taken: the bytes TCP had acknowledged. (What a send's
            // completion counts, the bytes the kernel took in, says little: a send that waits
            // is woken only once a third of the socket's send buffer, megabytes, is free.)
            let taken = if s.send_inflight {
                bytes_acked(s.fd)
            } else {
                None
            };
            match (taken, s.send_mark) {
                (Some(t), None) => s.send_mark = Some(t),
                (Some(t), Some(m)) if t.saturating_sub(m) >= u64::from(STALL_PROGRESS) => {
                    (s.send_stalled_at, s.send_mark) = (now, Some(t));
                }
                _ => {}
            }
            if s.send_inflight && now.duration_since(s.send_stalled_at) > self.stall {
                let why = format!(
                    "the initiator took less than {} KiB of what vitd sent in {} s",
                    STALL_PROGRESS >> 10,
                    self.stall.as_secs()
                );
                self.close(idx, Ending::Fault, &why);
                continue;
            }
            match s.ping_at {
                Some(t) if now.duration_since(t) > PING_TIMEOUT => {
                    self.close(idx, Ending::Fault, "no answer to NOP-In")
                }
                None if !s.input_ended && now.duration_since(s.last_rx) > PING_IDLE => {
                    s.conn.ping();
                    s.ping_at = Some(now);
                    self.dirty.push(idx);
                }
                _ => {}
            }
        }
    }
}

/// The bytes TCP has sent on socket `fd` and had acknowledged (`tcpi_bytes_acked`, Linux 4.2
/// and later): what the initiator has taken of what vitd sent. `None` if the kernel does not
/// say (then no progress is seen).
fn bytes_acked(fd: RawFd) -> Option<u64> {
    // SAFETY: tcp_info is plain data for which all-zero bytes are valid.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which is that large, and
    // stores the length it wrote in `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    let end = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_acked) + 8;
    (rc == 0 && len as usize >= end).then_some(info.tcpi_bytes_acked)
}

/// A SYNCHRONIZE CACHE's result from its flush round's verdict.
fn flush_result(good: bool) -> IoResult {
    if good { IoResult::Ok } else { IoResult::Failed }
}

fn lun_of(conn: &Conn, task: u16) -> [u8; 8] {
    conn.task_lun(task).to_be_bytes()
}

fn data_len(d: &OutData) -> usize {
    match d {
        OutData::None => 0,
        OutData::Slot { len, .. } | OutData::Zeroes { len } => *len,
        OutData::Sense { len, .. } => *len,
        OutData::Bytes(v) => v.len(),
    }
}

fn data_ptr(d: &OutData, pool: &BufferPool) -> (*const u8, usize) {
    match d {
        OutData::None => (std::ptr::null(), 0),
        // SAFETY: offset + len lies inside the slot (the connection built it from a completed read).
        OutData::Slot { buf, offset, len } => (unsafe { pool.ptr(*buf).add(*offset) }, *len),
        OutData::Zeroes { len } => {
            let z = pool.zeroes(*len);
            (z.as_ptr(), z.len())
        }
        OutData::Sense { bytes, len } => (bytes.as_ptr(), *len),
        OutData::Bytes(v) => (v.as_ptr(), v.len()),
    }
}
