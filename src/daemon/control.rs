//! The control thread: accepts connections on every portal, runs logins and whole discovery
//! sessions (poll(2) over non-blocking sockets, so a slow peer holds nothing but its own
//! connection), and hands each normal session that reaches full feature phase to the least loaded
//! data thread. It owns the running configuration.

use super::conn::{Conn, OutData, SeqNums};
use super::data::{DataThread, Msg};
use super::login::{self, Login, LoginOutcome};
use super::runtime::Running;
use super::uring::BufferPool;
use crate::iscsi::pdu::{InitiatorPdu, LoginStatus};
use crate::iscsi::reader::{Event, PduReader, ReaderLimits};
use crate::scsi::{Nexus, TargetPort};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a connection may take to log in.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a discovery session may stay idle.
pub const DISCOVERY_IDLE: Duration = Duration::from_secs(60);
/// Login and discovery connections held at once (beyond this, a new one takes the place of one
/// held by the address holding the most: [`Control::make_room`]).
const MAX_LOGINS: usize = 1024;
/// Bytes of answers a login or discovery connection may have waiting before it is no longer
/// read from, and before the requests it has sent already are left unanswered until they drain
/// (a SendTargets answer can be thousands of times its request: answering a whole 16 KiB read
/// of them at once could queue megabytes per connection). What it holds is this plus one answer.
const TX_HELD_MAX: usize = 256 << 10;
/// How long the listeners rest after an accept failed for want of descriptors or memory: the
/// pending connection stays in the listen queue, and polling the listener at once would only
/// fail again (a busy loop and a flood of log lines).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Sessions ended between two returns of freed heap memory to the system
/// ([`Control::sessions_ended`]).
const TRIM_AFTER_ENDED: usize = 256;

enum Phase {
    Login(Box<Login>),
    Discovery(Box<Conn>),
    /// Login done, waiting for the final response to drain before the handoff.
    Handoff(Box<Conn>),
}

struct CtlConn {
    stream: TcpStream,
    peer: SocketAddr,
    reader: PduReader,
    rx: Box<[u8]>,
    rx_len: usize,
    data: Vec<u8>,
    tx: Vec<u8>,
    phase: Phase,
    deadline: Instant,
    close_after_flush: bool,
    /// The portal group the connection arrived on.
    pg: usize,
    saw_header: bool,
    /// Sessions this one reinstates that have not ended yet (their data threads have not
    /// reported them): its final Login Response waits in `tx` until they have, so that no
    /// write of theirs still in flight lands after the new session's first command.
    after: Vec<u64>,
    /// Requests received and left in `rx` while more than [`TX_HELD_MAX`] of answers waited:
    /// taken up once the peer has read enough of them ([`Control::flush`]).
    held_back: bool,
    /// The TSIH its session gets (or has, a discovery session's).
    tsih: u16,
}

impl CtlConn {
    /// Whose connection this is, for log lines.
    fn who(&self) -> String {
        let peer = self.peer;
        match &self.phase {
            Phase::Login(login) => login.who(),
            Phase::Discovery(c) => {
                format!(
                    "discovery session of {} from {peer}",
                    c.params.initiator_name
                )
            }
            Phase::Handoff(c) => {
                let target = c.target.as_ref().map_or("-", |t| t.name.as_str());
                format!(
                    "session of {} from {peer} to {target}",
                    c.params.initiator_name
                )
            }
        }
    }
}

/// A session handed to a data thread, for reinstatement (same initiator and ISID).
struct SessionRec {
    initiator: String,
    isid: [u8; 6],
    target: String,
    /// The portal group tag it logged in through (RFC 7143 §4.4.3: a session is named by
    /// ISID and TPGT, for a target).
    tag: u16,
    thread: usize,
    id: u64,
    tsih: u16,
    /// Asked to end (a new login reinstated it); its record goes once its data thread reports
    /// it ended.
    ending: bool,
}

pub struct Control {
    running: Arc<Running>,
    listeners: Vec<(TcpListener, usize)>,
    threads: Vec<DataThread>,
    conns: Vec<Option<CtlConn>>,
    signals: OwnedFd,
    pool: BufferPool,
    sessions: Vec<SessionRec>,
    next_tsih: u16,
    /// Whether `next_tsih` has come round: from then on a TSIH may still be in use.
    tsih_wrapped: bool,
    next_session: u64,
    log_budget: super::logbudget::LogBudget,
    /// No accepting until then (see [`ACCEPT_BACKOFF`]).
    accept_paused: Option<Instant>,
    /// Sessions the data threads ended (their records go).
    ended: crossbeam_channel::Receiver<u64>,
    /// Normal sessions served at once.
    max_sessions: usize,
    /// Sessions ended since freed heap memory was last given back ([`TRIM_AFTER_ENDED`]).
    ended_since_trim: usize,
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread (and the threads it starts later) and
/// returns a signalfd that reports them. SIGHUP is taken so that an operator's habit (ctld and most
/// daemons reload their configuration on it; `kill -HUP`, a reload from a service manager) does not
/// kill vitd and every session with it, the signal's default action: vitd says it does not reload
/// and goes on serving.
pub fn signal_fd() -> std::io::Result<OwnedFd> {
    // SAFETY: sigset operations on a local, zero-initialised set.
    let fd = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK)
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Control {
    pub fn new(
        running: Arc<Running>,
        listeners: Vec<(TcpListener, usize)>,
        threads: Vec<DataThread>,
        signals: OwnedFd,
        ended: crossbeam_channel::Receiver<u64>,
        max_sessions: usize,
    ) -> std::io::Result<Self> {
        for (l, _) in &listeners {
            l.set_nonblocking(true)?;
        }
        Ok(Control {
            running,
            listeners,
            threads,
            conns: Vec::new(),
            signals,
            pool: BufferPool::new(&[(4096, 1)])?,
            sessions: Vec::new(),
            next_tsih: 1,
            tsih_wrapped: false,
            next_session: 1,
            log_budget: super::logbudget::LogBudget::new(super::logbudget::LINES_PER_SECOND),
            accept_paused: None,
            ended,
            max_sessions,
            ended_since_trim: 0,
        })
    }

    /// Serves until SIGINT or SIGTERM, then stops every data thread.
    pub fn run(mut self) {
        while self.turn() {}
        // Every thread starts its grace period at once; then all are waited for.
        for t in &self.threads {
            t.stop();
        }
        for t in &mut self.threads {
            t.join();
        }
    }

    /// One round: waits (at most a second) for something to do and does it; false once a stop
    /// signal came (or polling failed).
    fn turn(&mut self) -> bool {
        let gone: Vec<u64> = self.ended.try_iter().collect();
        if !gone.is_empty() {
            self.sessions.retain(|s| !gone.contains(&s.id));
            self.sessions_ended(gone.len());
            // A login that waited for these sessions to end is answered now.
            for idx in 0..self.conns.len() {
                let Some(c) = self.conns[idx].as_mut() else {
                    continue;
                };
                if c.after.is_empty() {
                    continue;
                }
                c.after.retain(|id| !gone.contains(id));
                if c.after.is_empty() {
                    self.flush(idx);
                }
            }
        }
        let mut fds = Vec::with_capacity(1 + self.listeners.len() + self.conns.len());
        fds.push(pollfd(self.signals.as_raw_fd(), libc::POLLIN));
        let now = Instant::now();
        let rest = self
            .accept_paused
            .filter(|&until| until > now)
            .map(|until| until - now);
        let listen = if rest.is_some() { 0 } else { libc::POLLIN };
        for (l, _) in &self.listeners {
            fds.push(pollfd(l.as_raw_fd(), listen));
        }
        let mut owners = Vec::with_capacity(self.conns.len());
        let mut waiting = false;
        for (i, c) in self.conns.iter().enumerate() {
            if let Some(c) = c {
                waiting |= !c.after.is_empty();
                // A peer that does not read its answers is not read from either; a login
                // waiting for the sessions it reinstates to end has its answer held back.
                let events = if c.tx.is_empty() || !c.after.is_empty() {
                    libc::POLLIN
                } else if c.tx.len() > TX_HELD_MAX {
                    libc::POLLOUT
                } else {
                    libc::POLLIN | libc::POLLOUT
                };
                // A full receive buffer (bytes past a login whose handoff waits) is not read
                // into until the data thread takes the connection; with nothing else to wait
                // for, the descriptor is left out (poll(2) skips a negative one), so a hang-up
                // does not wake the loop over and over.
                let events = if c.rx_len >= c.rx.len() {
                    events & !libc::POLLIN
                } else {
                    events
                };
                let fd = if events == 0 {
                    -1
                } else {
                    c.stream.as_raw_fd()
                };
                fds.push(pollfd(fd, events));
                owners.push(i);
            }
        }
        let timeout = rest.map_or(1000, |d| d.as_millis().clamp(1, 1000) as libc::c_int);
        // The data threads report ended sessions on a channel poll(2) cannot watch: a login
        // waiting for one looks again soon.
        let timeout = if waiting { timeout.min(10) } else { timeout };
        // SAFETY: fds is a live array of fds.len() pollfd structures.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                tracing::error!("poll failed: {e}");
                return false;
            }
            return true;
        }
        if fds[0].revents != 0 && self.take_signals() {
            return false;
        }
        for i in 0..self.listeners.len() {
            if fds[1 + i].revents != 0 {
                self.accept(i);
            }
        }
        let base = 1 + self.listeners.len();
        for (k, &idx) in owners.iter().enumerate() {
            let re = fds[base + k].revents;
            if re & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                self.readable(idx);
            }
            if re & libc::POLLOUT != 0 {
                self.flush(idx);
            }
        }
        self.expire();
        self.log_budget.settle();
        true
    }

    /// Reads the signals that came; true when one of them asks vitd to stop (SIGINT, SIGTERM, or
    /// the signal descriptor failing). SIGHUP is answered with a warning: vit.conf is read at
    /// start only (no live reload yet), so a changed vit.conf waits for the next start.
    fn take_signals(&mut self) -> bool {
        const INFO: usize = std::mem::size_of::<libc::signalfd_siginfo>();
        let mut buf = [0u8; INFO * 8];
        loop {
            // SAFETY: read(2) into a live buffer of buf.len() bytes.
            let n =
                unsafe { libc::read(self.signals.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    std::io::ErrorKind::Interrupted => continue,
                    std::io::ErrorKind::WouldBlock => return false,
                    _ => {
                        tracing::error!("reading signals failed ({e}): stopping");
                        return true;
                    }
                }
            }
            if n == 0 {
                tracing::error!("the signal descriptor closed: stopping");
                return true;
            }
            let n = n as usize;
            for rec in buf[..n - n % INFO].chunks_exact(INFO) {
                // ssi_signo is the record's first field, a u32 in the machine's byte order.
                let signo = u32::from_ne_bytes(rec[..4].try_into().expect("4 bytes"));
                if signo == libc::SIGHUP as u32 {
                    tracing::warn!(
                        "SIGHUP received: vitd does not reload vit.conf while it runs (no live \
                         reload yet); a changed vit.conf takes effect when vitd restarts; serving on"
                    );
                } else {
                    let name = match signo as i32 {
                        libc::SIGTERM => "SIGTERM".to_string(),
                        libc::SIGINT => "SIGINT".to_string(),
                        other => format!("signal {other}"),
                    };
                    tracing::info!("{}", self.stop_line(&name));
                    return true;
                }
            }
            if n < buf.len() {
                return false;
            }
        }
    }

    /// The line logged when signal `name` stops vitd, counting the sessions the data threads
    /// will ask to log out: those handed to one, less those already ending (reinstated, or
    /// reported ended since the last round).
    fn stop_line(&mut self, name: &str) -> String {
        let gone: Vec<u64> = self.ended.try_iter().collect();
        self.sessions.retain(|s| !gone.contains(&s.id));
        let asked = self
            .sessions
            .iter()
            .filter(|s| !s.ending && s.thread != usize::MAX)
            .count();
        let noun = if asked == 1 { "session" } else { "sessions" };
        format!("{name} received: stopping; {asked} {noun} asked to log out")
    }

    fn accept(&mut self, li: usize) {
        loop {
            let (stream, peer) = match self.listeners[li].0.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                // The peer gave up before we took it: take the next one.
                Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => continue,
                Err(e) => {
                    let out_of = matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    );
                    if out_of {
                        self.accept_paused = Some(Instant::now() + ACCEPT_BACKOFF);
                    }
                    self.log_failure(&format!(
                        "accept failed: {e}{}",
                        if out_of {
                            "; new connections wait in the listen queue"
                        } else {
                            ""
                        }
                    ));
                    return;
                }
            };
            if self.conns.iter().flatten().count() >= MAX_LOGINS && !self.make_room(peer) {
                continue; // dropped: every slot is a session being handed off
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let pg = self.listeners[li].1;
            if let Some(g) = self.running.portal_groups.get(pg)
                && let Err(e) = super::portal::mark_traffic(&stream, g.dscp, g.pcp)
            {
                self.log_failure(&format!(
                    "portal group {}: marking a connection's traffic (dscp/pcp) failed: {e}",
                    g.name
                ));
            }
            let Some(tsih) = self.fresh_tsih() else {
                // Every TSIH in use (more sessions and logins than vitd allows): not served.
                continue;
            };
            let login = Login::new(self.running.clone(), pg, peer, tsih);
            let c = CtlConn {
                stream,
                peer,
                reader: PduReader::new(ReaderLimits::login()),
                rx: vec![0u8; 16 << 10].into_boxed_slice(),
                rx_len: 0,
                data: Vec::new(),
                tx: Vec::new(),
                phase: Phase::Login(Box::new(login)),
                deadline: Instant::now() + LOGIN_TIMEOUT,
                close_after_flush: false,
                pg,
                saw_header: false,
                after: Vec::new(),
                held_back: false,
                tsih,
            };
            match self.conns.iter().position(Option::is_none) {
                Some(i) => self.conns[i] = Some(c),
                None => self.conns.push(Some(c)),
            }
        }
    }

    fn readable(&mut self, idx: usize) {
        let Some(c) = self.conns[idx].as_mut() else {
            return;
        };
        if c.close_after_flush {
            return self.drop_conn(idx);
        }
        // No room: a read would return 0, which means the peer closed.
        if c.rx_len >= c.rx.len() {
            return;
        }
        let n = match c.stream.read(&mut c.rx[c.rx_len..]) {
            Ok(0) => return self.peer_closed(idx),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(_) => return self.peer_closed(idx),
        };
        c.rx_len += n;
        if let Err(why) = self.process(idx) {
            if let Some(c) = self.conns[idx].as_ref() {
                let who = c.who();
                self.log_failure(&format!("{who}: {why}: connection closed"));
            }
            return self.drop_conn(idx);
        }
        self.flush(idx);
    }

    /// Runs the reader over received bytes and acts on each complete PDU.
    fn process(&mut self, idx: usize) -> Result<(), String> {
        let mut pos = 0;
        loop {
            let Some(c) = self.conns[idx].as_mut() else {
                return Ok(());
            };
            if pos >= c.rx_len || c.close_after_flush || matches!(c.phase, Phase::Handoff(_)) {
                break;
            }
            // Enough answers wait: the rest of the requests stay in `rx` until they drain.
            if c.tx.len() > TX_HELD_MAX {
                c.held_back = true;
                break;
            }
            let fed = c.reader.feed(&c.rx[pos..c.rx_len]);
            if let Some(r) = fed.data.clone() {
                let chunk = &c.rx[pos + r.start..pos + r.end];
                match &mut c.phase {
                    Phase::Discovery(conn) => {
                        let room = conn.inline.capacity().saturating_sub(conn.inline.len());
                        conn.inline
                            .extend_from_slice(&chunk[..chunk.len().min(room)]);
                    }
                    _ => c.data.extend_from_slice(chunk),
                }
            }
            pos += fed.consumed;
            match fed.result {
                Ok(Some(Event::Header { data_len })) => {
                    c.saw_header = true;
                    if let Phase::Discovery(conn) = &mut c.phase {
                        let bhs = *c.reader.bhs();
                        conn.on_header(&bhs, data_len, &mut self.pool);
                    }
                }
                Ok(Some(Event::Complete)) => self.on_pdu(idx)?,
                Ok(None) if fed.consumed == 0 => break,
                Ok(None) => {}
                Err(e) => return Err(format!("protocol error: {e}")),
            }
        }
        if let Some(c) = self.conns[idx].as_mut() {
            c.rx.copy_within(pos..c.rx_len, 0);
            c.rx_len -= pos.min(c.rx_len);
        }
        Ok(())
    }

    fn on_pdu(&mut self, idx: usize) -> Result<(), String> {
        let Some(c) = self.conns[idx].as_mut() else {
            return Ok(());
        };
        let bhs = *c.reader.bhs();
        match &mut c.phase {
            Phase::Login(login) => {
                let Ok(InitiatorPdu::Login(req)) = InitiatorPdu::decode(&bhs) else {
                    // Once the login has begun, the initiator hears why it ends (0x020b).
                    let itt = u32::from_be_bytes([bhs[16], bhs[17], bhs[18], bhs[19]]);
                    let Some(response) = login.on_other_pdu(itt) else {
                        return Err("a PDU other than Login Request during login".into());
                    };
                    c.tx.extend_from_slice(&response);
                    if let Some(outcome) = login.take_outcome() {
                        let who = login.who();
                        self.login_done(idx, outcome, &who);
                    }
                    return Ok(());
                };
                let data = std::mem::take(&mut c.data);
                // At the session limit, only an initiator reinstating its own session (same
                // ISID, target and portal group) gets in. The ISID is this request's: the
                // login takes it only in `on_request`, and a login may end with its first
                // request (from the operational stage, as open-iscsi logs in without CHAP).
                let full = (self.sessions.len() >= self.max_sessions).then(|| {
                    self.sessions
                        .iter()
                        .filter(|s| s.isid == req.isid)
                        .map(|s| (s.initiator.clone(), s.target.clone(), s.tag))
                        .collect()
                });
                login.set_full(full);
                let response = login.on_request(&req, &data);
                c.tx.extend_from_slice(&response);
                if let Some(outcome) = login.take_outcome() {
                    let who = login.who();
                    self.login_done(idx, outcome, &who);
                }
                return Ok(());
            }
            Phase::Discovery(conn) => {
                if !c.saw_header {
                    conn.on_header(&bhs, 0, &mut self.pool);
                }
                c.saw_header = false;
                conn.on_pdu(&bhs, &mut self.pool)
                    .map_err(|e| e.to_string())?;
                c.deadline = Instant::now() + DISCOVERY_IDLE;
                while let Some(mut pdu) = conn.pop_out() {
                    conn.seal(&mut pdu, &mut self.pool);
                    c.tx.extend_from_slice(&pdu.header[..pdu.header_len]);
                    match &pdu.data {
                        OutData::Bytes(v) => c.tx.extend_from_slice(v),
                        OutData::Sense { bytes, len } => c.tx.extend_from_slice(&bytes[..*len]),
                        OutData::None | OutData::Slot { .. } | OutData::Zeroes { .. } => {}
                    }
                    c.tx.extend_from_slice(&pdu.trailer[..pdu.trailer_len]);
                    c.close_after_flush |= pdu.close_after;
                }
            }
            Phase::Handoff(_) => {}
        }
        Ok(())
    }

    /// The TSIH for a new connection's session: the next one, passing over those of live
    /// sessions and of connections in login or discovery once the counter has come round (RFC
    /// 7143 §11.12.6: a TSIH names one session of the target); `None` when all are taken.
    fn fresh_tsih(&mut self) -> Option<u16> {
        let in_use: std::collections::HashSet<u16> = if self.tsih_wrapped {
            let live = self.sessions.iter().map(|s| s.tsih);
            live.chain(self.conns.iter().flatten().map(|c| c.tsih))
                .collect()
        } else {
            Default::default()
        };
        let (tsih, next, wrapped) = next_free_tsih(self.next_tsih, |t| in_use.contains(&t))?;
        self.next_tsih = next;
        self.tsih_wrapped |= wrapped;
        Some(tsih)
    }

    fn login_done(&mut self, idx: usize, outcome: LoginOutcome, who: &str) {
        let Some(c) = self.conns[idx].as_ref() else {
            return;
        };
        let (peer, pg) = (c.peer, c.pg);
        let local = c.stream.local_addr().ok();
        match outcome {
            LoginOutcome::Failed { status, reason } => {
                if let Some(c) = self.conns[idx].as_mut() {
                    c.close_after_flush = true;
                }
                self.log_failure(&format!(
                    "{who} refused ({}): {reason}",
                    status_name(status)
                ));
            }
            LoginOutcome::Session {
                params,
                target,
                isid,
                tsih,
                stat_sn,
                exp_cmd_sn,
                chap,
            } => {
                let limits = params.reader_limits();
                let seq = SeqNums {
                    stat_sn,
                    exp_cmd_sn,
                };
                // One target port per portal group the target is in, numbered in the order
                // vit.conf lists them (SPC-4 7.8.6.5: unique within the target, 1..=65535;
                // vit.conf holds a target to that many portal groups, `MAX_TARGET_PORTS`).
                let (relative_port_id, target_ports) = target.as_ref().map_or((1, 1), |t| {
                    let at = t.portal_groups.iter().position(|&g| g == pg).unwrap_or(0);
                    let id = u16::try_from(at + 1).unwrap_or(crate::config::MAX_TARGET_PORTS);
                    let n = u16::try_from(t.portal_groups.len())
                        .unwrap_or(crate::config::MAX_TARGET_PORTS)
                        .max(1);
                    (id, n)
                });
                let port = TargetPort {
                    target_name: target.as_ref().map_or_else(String::new, |t| t.name.clone()),
                    portal_group_tag: self.running.portal_groups.get(pg).map_or(1, |p| p.tag),
                    relative_port_id,
                    target_ports,
                };
                let initiator = params.initiator_name.clone();
                let tag = port.portal_group_tag;
                let mut after = Vec::new();
                let phase = match target {
                    Some(t) => {
                        let nexus = Nexus::new(port, &t.server).with_initiator(&initiator, isid);
                        let mut conn =
                            Conn::new(params, Some(t.clone()), nexus, seq, login::QUEUE_DEPTH);
                        conn.session_id = self.next_session;
                        self.next_session += 1;
                        tracing::info!(initiator = %initiator, target = %t.name, peer = %peer, "session logged in");
                        let it = conn.nexus.id().clone();
                        after = self.reinstate(&initiator, (isid, tag), &t, &it);
                        self.sessions.push(SessionRec {
                            initiator,
                            isid,
                            target: t.name.clone(),
                            tag,
                            thread: usize::MAX,
                            id: conn.session_id,
                            tsih,
                            ending: false,
                        });
                        Phase::Handoff(Box::new(conn))
                    }
                    None => {
                        let nexus = Nexus::without_attention(port);
                        let mut conn = Conn::new(params, None, nexus, seq, 1);
                        conn.visible = super::discovery::visible_targets(
                            &self.running,
                            pg,
                            &initiator,
                            peer.ip(),
                            chap.as_ref(),
                        );
                        conn.local_addr = local;
                        Phase::Discovery(Box::new(conn))
                    }
                };
                if let Some(c) = self.conns[idx].as_mut() {
                    c.reader.set_limits(limits);
                    if matches!(phase, Phase::Discovery(_)) {
                        c.deadline = Instant::now() + DISCOVERY_IDLE;
                    }
                    c.phase = phase;
                    c.after = after;
                }
            }
        }
    }

    /// A new session with the same initiator name and ISID on the same target through the same
    /// portal group replaces the old one (RFC 7143 §6.3.5; the same ISID on another target or
    /// portal group is another session). The old
    /// session's I_T nexus ends here, before the new session's first command: its SPC-2
    /// reservations go now, not when the old connection's last I/O is done, which could undo
    /// one the new session has taken meanwhile.
    /// Returns the old sessions still on a data thread: the new session's final Login Response
    /// waits until they have ended, since their tasks are terminated (§6.3.5) and a write of
    /// theirs still in flight must not land after a write the initiator sends through the new
    /// session (its retry of that very write, or a newer one to the same blocks). One still
    /// waiting for its own answer here (never handed to a data thread) is dropped with its
    /// connection.
    fn reinstate(
        &mut self,
        initiator: &str,
        (isid, tag): ([u8; 6], u16),
        target: &crate::daemon::runtime::TargetRt,
        it: &crate::scsi::ItNexusId,
    ) -> Vec<u64> {
        let same = |s: &SessionRec| {
            s.isid == isid
                && s.tag == tag
                && s.target == target.name
                && s.initiator.eq_ignore_ascii_case(initiator)
        };
        let pending: Vec<u64> = self
            .sessions
            .iter()
            .filter(|s| same(s) && s.thread == usize::MAX)
            .map(|s| s.id)
            .collect();
        for id in &pending {
            let at = self.conns.iter().position(|c| {
                c.as_ref()
                    .is_some_and(|c| matches!(&c.phase, Phase::Handoff(h) if h.session_id == *id))
            });
            if let Some(at) = at {
                self.drop_conn(at);
            }
        }
        self.sessions
            .retain(|s| !(same(s) && s.thread == usize::MAX));
        let mut wait = Vec::new();
        let mut drop = Vec::new();
        for s in self.sessions.iter_mut().filter(|s| same(s)) {
            wait.push(s.id);
            if !s.ending {
                s.ending = true;
                drop.push((s.thread, s.id));
            }
        }
        if !wait.is_empty() || !pending.is_empty() {
            crate::daemon::conn::nexus_lost(target, it);
        }
        for (thread, id) in drop {
            if let Some(t) = self.threads.get(thread) {
                tracing::info!(initiator, "session reinstatement: closing the old session");
                let _ = t.tx.send(Msg::Drop(id));
                t.waker.wake();
            }
        }
        wait
    }

    fn flush(&mut self, idx: usize) {
        loop {
            let Some(c) = self.conns[idx].as_mut() else {
                return;
            };
            // The final Login Response of a session reinstating others waits for their end.
            if !c.after.is_empty() {
                return;
            }
            while !c.tx.is_empty() {
                match c.stream.write(&c.tx) {
                    Ok(0) => return self.peer_closed(idx),
                    Ok(n) => {
                        c.tx.drain(..n);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => return self.peer_closed(idx),
                }
            }
            // Requests held back while too many answers waited are answered now, and their
            // answers sent (each round answers at least one request, so this ends).
            if c.held_back && c.tx.len() <= TX_HELD_MAX {
                c.held_back = false;
                let who = c.who();
                if let Err(why) = self.process(idx) {
                    self.log_failure(&format!("{who}: {why}: connection closed"));
                    return self.drop_conn(idx);
                }
                continue;
            }
            if !c.tx.is_empty() {
                return;
            }
            break;
        }
        let Some(c) = self.conns[idx].as_ref() else {
            return;
        };
        if c.close_after_flush {
            return self.drop_conn(idx);
        }
        if matches!(c.phase, Phase::Handoff(_)) {
            self.handoff(idx);
        }
    }

    /// Gives a logged-in connection to the least loaded data thread (or, none being left to
    /// take it, ends it).
    fn handoff(&mut self, idx: usize) {
        let in_handoff = |c: &CtlConn| matches!(c.phase, Phase::Handoff(_));
        if !self.conns[idx].as_ref().is_some_and(in_handoff) {
            return;
        }
        let thread = self
            .threads
            .iter()
            .enumerate()
            .min_by_key(|(_, t)| t.load.load(std::sync::atomic::Ordering::Relaxed))
            .map(|(i, _)| i);
        let blocking = self.conns[idx]
            .as_ref()
            .is_some_and(|c| c.stream.set_nonblocking(false).is_ok());
        let (Some(ti), true) = (thread, blocking) else {
            return self.drop_conn(idx);
        };
        let Some(c) = self.conns[idx].take() else {
            return;
        };
        let Phase::Handoff(conn) = c.phase else {
            return;
        };
        if let Some(rec) = self.sessions.iter_mut().find(|s| s.id == conn.session_id) {
            rec.thread = ti;
        }
        let prefix = c.rx[..c.rx_len].to_vec();
        self.threads[ti].give(c.stream, *conn, prefix, c.peer);
    }

    fn expire(&mut self) {
        let now = Instant::now();
        for idx in 0..self.conns.len() {
            if let Some(c) = self.conns[idx].as_ref()
                && now > c.deadline
            {
                if matches!(c.phase, Phase::Login(_)) {
                    let who = c.who();
                    self.log_failure(&format!(
                        "{who} timed out: not ended within {} s",
                        LOGIN_TIMEOUT.as_secs()
                    ));
                }
                self.drop_conn(idx);
            }
        }
    }

    /// The initiator closed the connection (or it failed): a login it had begun and not ended
    /// is logged (a mutual CHAP secret the initiator refuses shows only so), then it goes.
    fn peer_closed(&mut self, idx: usize) {
        if let Some(CtlConn {
            phase: Phase::Login(login),
            ..
        }) = self.conns.get(idx).and_then(Option::as_ref)
            && let Some(line) = login.abandoned()
        {
            self.log_failure(&line);
        }
        self.drop_conn(idx);
    }

    fn drop_conn(&mut self, idx: usize) {
        let gone = self.conns.get_mut(idx).and_then(Option::take);
        // A session that logged in but never reached a data thread (its final response still
        // being sent when the peer went away or the login timeout struck) ends here: its
        // record goes, or it would count against --max-sessions for as long as vitd runs.
        if let Some(CtlConn {
            phase: Phase::Handoff(conn),
            ..
        }) = gone
        {
            self.sessions.retain(|s| s.id != conn.session_id);
        }
    }

    /// With every login slot taken, a new connection (from `newcomer`) takes the place of one
    /// held by the address holding the most: its discovery session idle the longest, else its
    /// login begun the earliest. A peer opening connections faster than the login timeout ends
    /// them (or holding many discovery sessions, whose idle timer restarts with each request)
    /// then only displaces its own, and cannot keep other initiators from logging in; there is
    /// no fixed cap per address, since one host may log in many sessions at once. False when
    /// every slot is a session being handed off to a data thread.
    fn make_room(&mut self, newcomer: SocketAddr) -> bool {
        let mut held: HashMap<IpAddr, usize> = HashMap::new();
        for c in self.conns.iter().flatten() {
            *held.entry(c.peer.ip()).or_default() += 1;
        }
        let victim = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i, c)))
            .filter_map(|(i, c)| {
                let rank = match c.phase {
                    Phase::Discovery(_) => 0,
                    Phase::Login(_) => 1,
                    Phase::Handoff(_) => return None,
                };
                let n = held.get(&c.peer.ip()).copied().unwrap_or(0);
                Some(((std::cmp::Reverse(n), rank, c.deadline), i, c.peer, rank, n))
            })
            .min_by_key(|v| v.0)
            .map(|(_, i, peer, rank, n)| (i, peer, rank, n));
        let Some((idx, peer, rank, n)) = victim else {
            return false;
        };
        let what = if rank == 0 {
            "discovery session idle the longest"
        } else {
            "login begun the earliest"
        };
        self.log_failure(&format!(
            "{MAX_LOGINS} connections in login or discovery, {n} of them from {}: its {what} \
             ({peer}) closed for a new connection from {newcomer}",
            peer.ip()
        ));
        self.drop_conn(idx);
        true
    }

    /// `n` sessions ended. Their memory (each session's buffers, allocated here and on its
    /// data thread) went back to the allocator, which keeps it: glibc returns only the top of
    /// each heap, so after every wave of sessions the resident size stayed higher (measured:
    /// five waves of 400 sessions took vitd from 107 to 225 MB with 0.3 MB in use). Once the
    /// last session has ended, or every [`TRIM_AFTER_ENDED`] sessions, the free pages are
    /// given back (`malloc_trim`, on this thread; a data thread allocating meanwhile may wait
    /// a moment for its heap's lock).
    fn sessions_ended(&mut self, n: usize) {
        self.ended_since_trim += n;
        if self.sessions.is_empty() || self.ended_since_trim >= TRIM_AFTER_ENDED {
            self.ended_since_trim = 0;
            #[cfg(target_env = "gnu")]
            // SAFETY: malloc_trim only gives free pages of the allocator's heaps back to the
            // system; no memory in use is touched.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }

    /// Logs a failure line, at most a few a second (a flood of bad logins can't flood the log).
    fn log_failure(&mut self, line: &str) {
        if self.log_budget.allow() {
            tracing::warn!("{line}");
        }
    }
}

fn pollfd(fd: RawFd, events: i16) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// A login status for log lines: its words as RFC 7143 §11.13.5 names it, and its code
/// ("authentication failure, 0x0201").
fn status_name(s: LoginStatus) -> String {
    let name = format!("{s:?}");
    let mut words = String::new();
    for ch in name.chars() {
        if ch.is_ascii_uppercase() && !words.is_empty() {
            words.push(' ');
        }
        words.push(ch.to_ascii_lowercase());
    }
    format!("{words}, 0x{:04x}", s as u16)
}

/// The first TSIH from `next` on (1..=65535, 0 being reserved) that is not `in_use`, the
/// counter's next value after it, and whether the counter came round on the way.
fn next_free_tsih(next: u16, in_use: impl Fn(u16) -> bool) -> Option<(u16, u16, bool)> {
    let (mut t, mut wrapped) = (next.max(1), false);
    for _ in 0..u16::MAX {
        let after = match t.checked_add(1) {
            Some(n) => n,
            None => {
                wrapped = true;
                1
            }
        };
        if !in_use(t) {
            return Some((t, after, wrapped));
        }
        t = after;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::runtime::AuthPolicy;
    use crate::daemon::uring::Waker;
    use crate::iscsi::initiator;
    use crate::iscsi::initiator::{frame, login_bhs};
    use crate::iscsi::pdu::{BHS_LEN, Stage, TargetPdu};
    use std::sync::atomic::AtomicUsize;

    const TARGET: &str = "iqn.2026-11.io.vit:t";

    /// A control thread under test, the stand-in data thread's mailbox, the sender of ended
    /// sessions and the write end of the "signals".
    type Serving = (
        Control,
        crossbeam_channel::Receiver<Msg>,
        crossbeam_channel::Sender<u64>,
        OwnedFd,
    );

    fn running() -> Arc<Running> {
        crate::daemon::login::tests::running(AuthPolicy::none())
    }

    /// A control thread serving at most `max_sessions` sessions on `listeners`, with one
    /// stand-in data thread whose messages the test receives; also the sender of ended sessions
    /// and the write end of the "signals" (a pipe nothing writes to: no stop comes).
    fn control_on(listeners: Vec<(TcpListener, usize)>, max_sessions: usize) -> Serving {
        control_serving(running(), listeners, max_sessions)
    }

    /// [`control_on`] serving `running`.
    fn control_serving(
        running: Arc<Running>,
        listeners: Vec<(TcpListener, usize)>,
        max_sessions: usize,
    ) -> Serving {
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = DataThread {
            tx,
            waker: Arc::new(Waker::new().unwrap()),
            load: Arc::new(AtomicUsize::new(0)),
            handle: None,
        };
        let (ended_tx, ended_rx) = crossbeam_channel::unbounded();
        let mut fds = [0; 2];
        // SAFETY: pipe() fills two fresh descriptors, owned from here on.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both were just opened and are owned by nothing else.
        let (signals, writer) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let c = Control::new(
            running,
            listeners,
            vec![thread],
            signals,
            ended_rx,
            max_sessions,
        )
        .unwrap();
        (c, rx, ended_tx, writer)
    }

    /// [`control_on`] without listeners (connections are put in its table by hand).
    fn control(max_sessions: usize) -> (Control, crossbeam_channel::Receiver<Msg>, OwnedFd) {
        let (c, rx, _, signals) = control_on(vec![], max_sessions);
        (c, rx, signals)
    }

    /// The stop line counts the sessions asked to log out: those on a data thread and not
    /// already ending (reinstated), in words that agree with the number.
    #[test]
    fn the_stop_line_counts_live_sessions_only() {
        let (mut c, _mail, _signals) = control(4);
        let rec = |id: u64, thread: usize, ending: bool| SessionRec {
            initiator: "iqn.2026-11.io.vit:i".into(),
            isid: [0x80, 0, 0, 0, 0, id as u8],
            target: "iqn.2026-11.io.vit:t".into(),
            tag: 1,
            thread,
            id,
            tsih: id as u16,
            ending,
        };
        assert_eq!(
            c.stop_line("SIGTERM"),
            "SIGTERM received: stopping; 0 sessions asked to log out"
        );
        c.sessions.push(rec(1, 0, false));
        c.sessions.push(rec(2, 0, true));
        c.sessions.push(rec(3, usize::MAX, false));
        assert_eq!(
            c.stop_line("SIGTERM"),
            "SIGTERM received: stopping; 1 session asked to log out"
        );
        c.sessions.push(rec(4, 0, false));
        assert_eq!(
            c.stop_line("SIGINT"),
            "SIGINT received: stopping; 2 sessions asked to log out"
        );
    }

    /// SIGHUP (sent as a signalfd record) leaves the control thread serving; SIGTERM stops it.
    #[test]
    fn sighup_is_answered_and_serving_goes_on_until_sigterm() {
        let (mut c, _mail, signals) = control(1);
        let send = |signo: libc::c_int| {
            let mut rec = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
            rec[..4].copy_from_slice(&(signo as u32).to_ne_bytes());
            let mut w = std::fs::File::from(signals.try_clone().unwrap());
            std::io::Write::write_all(&mut w, &rec).unwrap();
        };
        send(libc::SIGHUP);
        assert!(c.turn(), "SIGHUP stopped the control thread");
        send(libc::SIGHUP);
        send(libc::SIGHUP);
        assert!(c.turn(), "two SIGHUPs stopped the control thread");
        send(libc::SIGHUP);
        send(libc::SIGTERM);
        assert!(!c.turn(), "SIGTERM after SIGHUP did not stop it");
    }

    /// A connection in login on `stream` from `peer`, with `wire` received.
    fn in_login(c: &mut Control, stream: TcpStream, peer: SocketAddr, wire: &[u8]) -> CtlConn {
        let tsih = c.fresh_tsih().expect("a free TSIH");
        let mut rx = vec![0u8; 16 << 10].into_boxed_slice();
        rx[..wire.len()].copy_from_slice(wire);
        CtlConn {
            stream,
            peer,
            reader: PduReader::new(ReaderLimits::login()),
            rx,
            rx_len: wire.len(),
            data: Vec::new(),
            tx: Vec::new(),
            phase: Phase::Login(Box::new(Login::new(c.running.clone(), 0, peer, tsih))),
            deadline: Instant::now() + LOGIN_TIMEOUT,
            close_after_flush: false,
            pg: 0,
            saw_header: false,
            after: Vec::new(),
            held_back: false,
            tsih,
        }
    }

    /// A connection from 127.0.0.1 whose login request (security straight to full feature
    /// phase, one request) has arrived; returns its slot and the initiator's end.
    fn connect(c: &mut Control, listener: &TcpListener, isid: [u8; 6]) -> (usize, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (stream, peer) = listener.accept().unwrap();
        let text =
            format!("InitiatorName=iqn.2026-11.io.vit:i\0TargetName={TARGET}\0AuthMethod=None\0");
        let bhs = login_bhs((Stage::Security, Stage::FullFeature), isid, 0, text.len());
        let wire = frame(&bhs, text.as_bytes(), false);
        let conn = in_login(c, stream, peer, &wire);
        let idx = c.conns.len();
        c.conns.push(Some(conn));
        c.process(idx).unwrap();
        (idx, client)
    }

    /// The status of the login response waiting to be sent on slot `idx`.
    fn status(c: &Control, idx: usize) -> u16 {
        let tx = &c.conns[idx].as_ref().unwrap().tx;
        let TargetPdu::Login(r) = TargetPdu::decode(tx[..BHS_LEN].try_into().unwrap()).unwrap()
        else {
            panic!("not a login response");
        };
        u16::from_be_bytes([r.status_class, r.status_detail])
    }

    /// The login response waiting to be sent on slot `idx`.
    fn login_response(c: &Control, idx: usize) -> crate::iscsi::pdu::LoginResponse {
        let tx = &c.conns[idx].as_ref().unwrap().tx;
        let TargetPdu::Login(r) = TargetPdu::decode(tx[..BHS_LEN].try_into().unwrap()).unwrap()
        else {
            panic!("not a login response");
        };
        r
    }

    /// TSIHs are 16 bits: after 65,535 logins the counter comes round, and a TSIH still held by
    /// a live session (or a connection still in login) is passed over, never given twice (it
    /// was: a new session could get the TSIH of one logged in 65,535 logins before).
    #[test]
    fn a_tsih_in_use_is_never_given_to_a_new_session() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (mut c, _mail, _signals) = control(16);
        let login = |c: &mut Control, n: u8| {
            let (idx, client) = connect(c, &listener, [0x80, 0, 0, 0, 0, n]);
            let r = login_response(c, idx);
            assert_eq!(u16::from_be_bytes([r.status_class, r.status_detail]), 0);
            (idx, r.tsih, client)
        };
        let (a, tsih_a, _ca) = login(&mut c, 1);
        let (_, tsih_b, _cb) = login(&mut c, 2);
        assert_eq!((tsih_a, tsih_b), (1, 2));
        // 65,532 logins later (their sessions long ended): the last TSIH, then round.
        c.next_tsih = u16::MAX;
        let (_, tsih, _cc) = login(&mut c, 3);
        assert_eq!(tsih, u16::MAX);
        let (_, tsih, _cd) = login(&mut c, 4);
        assert_eq!(tsih, 3, "0 is reserved, 1 and 2 are in use");
        // Once A's session has ended, its TSIH is free again.
        c.conns[a] = None;
        c.sessions.retain(|s| s.tsih != tsih_a);
        c.next_tsih = 1;
        let (_, tsih, _ce) = login(&mut c, 5);
        assert_eq!(tsih, 1);
        let (_, tsih, _cf) = login(&mut c, 6);
        assert_eq!(tsih, 4, "2 and 3 are in use");
    }

    #[test]
    fn the_tsih_counter_skips_0_and_what_is_in_use() {
        assert_eq!(
            next_free_tsih(65534, |_| false),
            Some((65534, 65535, false))
        );
        assert_eq!(next_free_tsih(65535, |_| false), Some((65535, 1, true)));
        assert_eq!(
            next_free_tsih(65534, |t| !(5..65534).contains(&t)),
            Some((5, 6, true))
        );
        assert_eq!(next_free_tsih(0, |_| false), Some((1, 2, false)));
        assert_eq!(next_free_tsih(7, |_| true), None);
    }

    /// A session whose connection ends while its final login response is still being sent
    /// (the peer went away, or the login timeout struck) never reaches a data thread: its
    /// record went with it. It stayed, counted against --max-sessions until vitd stopped, so
    /// that after as many such logins as the limit every login was refused "out of resources".
    #[test]
    fn a_session_ended_before_its_handoff_leaves_no_record() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (mut c, _mail, _signals) = control(1);
        // The peer closes before reading its answer.
        let (a, client) = connect(&mut c, &listener, [0x80, 0, 0, 0, 0, 1]);
        assert_eq!(status(&c, a), 0);
        assert!(matches!(
            c.conns[a].as_ref().unwrap().phase,
            Phase::Handoff(_)
        ));
        assert_eq!(c.sessions.len(), 1);
        drop(client);
        c.readable(a);
        assert!(c.conns[a].is_none());
        assert_eq!(c.sessions.len(), 0, "the session's record outlived it");
        // The login timeout strikes while the answer waits.
        let (b, _client) = connect(&mut c, &listener, [0x80, 0, 0, 0, 0, 2]);
        assert_eq!(status(&c, b), 0);
        c.conns[b].as_mut().unwrap().deadline = Instant::now() - Duration::from_secs(1);
        c.expire();
        assert!(c.conns[b].is_none());
        assert_eq!(c.sessions.len(), 0, "the session's record outlived it");
        // At the limit of one session, another initiator may still log in.
        let (d, _client) = connect(&mut c, &listener, [0x80, 0, 0, 0, 0, 3]);
        assert_eq!(status(&c, d), 0);
    }

    /// A PDU other than a Login Request once the login has begun gets a Login reject, "invalid
    /// during login" (0x020b), before the connection closes (RFC 7143 section 6); the
    /// connection was closed with no answer. Before any Login Request it is closed unanswered.
    #[test]
    fn a_pdu_other_than_a_login_request_during_login_is_answered_0x020b() {
        use crate::iscsi::pdu::NopOut;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (mut c, _mail, _signals) = control(8);
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (stream, peer) = listener.accept().unwrap();
        let text =
            format!("InitiatorName=iqn.2026-11.io.vit:i\0TargetName={TARGET}\0AuthMethod=None\0");
        let isid = [0x80, 0, 0, 0, 0, 9];
        let mut bhs = login_bhs((Stage::Security, Stage::Operational), isid, 0, text.len());
        bhs[1] &= !0x80; // no transit yet: the login goes on
        let mut wire = frame(&bhs, text.as_bytes(), false);
        let nop = NopOut {
            immediate: true,
            itt: 0x1234,
            ttt: 0xffff_ffff,
            ..Default::default()
        };
        let mut nop_bhs = [0u8; BHS_LEN];
        nop.encode(&mut nop_bhs);
        wire.extend_from_slice(&nop_bhs);
        let conn = in_login(&mut c, stream, peer, &wire);
        c.conns.push(Some(conn));
        c.process(0).expect("answered, not dropped");
        let conn = c.conns[0].as_ref().unwrap();
        assert!(conn.close_after_flush);
        let mut at = 0;
        let mut statuses = Vec::new();
        while at < conn.tx.len() {
            let TargetPdu::Login(r) =
                TargetPdu::decode(conn.tx[at..at + BHS_LEN].try_into().unwrap()).unwrap()
            else {
                panic!("not a login response");
            };
            statuses.push((
                u16::from_be_bytes([r.status_class, r.status_detail]),
                r.itt,
                r.isid,
            ));
            at += BHS_LEN + (r.data_segment_length as usize).next_multiple_of(4);
        }
        assert_eq!(statuses, [(0, 1, isid), (0x020b, 0x1234, isid)]);
    }

    /// A login that reinstates a session whose connection has not yet gone to a data thread
    /// closes that connection: it was left to be handed off later, and ran beside the session
    /// that replaced it (same initiator, ISID and target: one I_T nexus, two sessions).
    #[test]
    fn reinstating_a_session_not_yet_handed_off_closes_it() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (mut c, mail, _signals) = control(8);
        let isid = [0x80, 0, 0, 0, 0, 1];
        let (a, _client_a) = connect(&mut c, &listener, isid);
        assert!(matches!(
            c.conns[a].as_ref().unwrap().phase,
            Phase::Handoff(_)
        ));
        let (b, _client_b) = connect(&mut c, &listener, isid);
        assert_eq!(status(&c, b), 0);
        assert!(
            c.conns[a].is_none(),
            "the old session is still held for a handoff"
        );
        assert_eq!(c.sessions.len(), 1);
        assert!(mail.try_recv().is_err());
        // The new one goes to the data thread.
        c.flush(b);
        assert!(matches!(mail.try_recv(), Ok(Msg::Conn(_))));
    }

    /// The next message to the (stand-in) data thread, the control thread turning meanwhile;
    /// `None` if none came in `turns` rounds.
    fn next_msg(c: &mut Control, rx: &crossbeam_channel::Receiver<Msg>, turns: u32) -> Option<Msg> {
        for _ in 0..turns {
            if let Ok(m) = rx.try_recv() {
                return Some(m);
            }
            assert!(c.turn());
        }
        rx.try_recv().ok()
    }

    /// [`control_on`] listening on a loopback port; the port.
    #[allow(clippy::type_complexity)]
    fn serving() -> (
        Control,
        crossbeam_channel::Receiver<Msg>,
        crossbeam_channel::Sender<u64>,
        u16,
        OwnedFd,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (c, rx, ended_tx, signals) = control_on(vec![(listener, 0)], 16);
        (c, rx, ended_tx, port, signals)
    }

    /// A session reinstated while the old one still has I/O in flight: the new session's final
    /// Login Response (and its handoff to a data thread) waits until the old session's data
    /// thread reports it ended, so that no write of the old session lands after one the
    /// initiator sends through the new session. It was answered at once, the old session only
    /// asked to close.
    #[test]
    fn a_reinstating_login_is_answered_once_the_old_session_has_ended() {
        let (mut c, rx, ended_tx, port, _signals) = serving();
        let isid = [0x80, 0, 0, 0, 0, 9];
        let log_in = move || {
            std::thread::spawn(move || {
                initiator::login(port, "iqn.2026-11.io.vit:i", "iqn.2026-11.io.vit:t", isid)
            })
        };
        let first = log_in();
        let old = match next_msg(&mut c, &rx, 100) {
            Some(Msg::Conn(b)) => b,
            _ => panic!("the first session was not handed over"),
        };
        let _first = first.join().unwrap();
        let second = log_in();
        match next_msg(&mut c, &rx, 100) {
            Some(Msg::Drop(id)) => assert_eq!(id, old.1.session_id),
            _ => panic!("the old session was not asked to close"),
        }
        // Its data thread has not reported it ended: the new session waits, however long the
        // control thread runs.
        if let Some(m) = next_msg(&mut c, &rx, 20) {
            let what = match m {
                Msg::Conn(_) => "the new session was handed over",
                Msg::Drop(_) => "another session was dropped",
                Msg::Shutdown => "shutdown",
            };
            panic!("{what} before the old session ended");
        }
        assert!(
            !second.is_finished(),
            "the new session's login was answered"
        );
        ended_tx.send(old.1.session_id).unwrap();
        let new = match next_msg(&mut c, &rx, 100) {
            Some(Msg::Conn(b)) => b,
            _ => panic!("the new session was not handed over once the old one ended"),
        };
        assert_ne!(new.1.session_id, old.1.session_id);
        let _second = second.join().unwrap();
    }

    /// Bytes an initiator sends after its last Login Request, while that login's answer waits
    /// for the session it reinstates to end, fill the control thread's 16 KiB receive buffer:
    /// a read into no room returned 0 and was taken for the peer closing, so the new session
    /// was dropped. It now stops reading until the handoff, and every byte goes with it.
    #[test]
    fn bytes_past_a_waiting_login_that_fill_the_buffer_go_to_the_data_thread() {
        use std::io::Write;
        let (mut c, rx, ended_tx, port, _signals) = serving();
        let isid = [0x80, 0, 0, 0, 0, 9];
        let first = std::thread::spawn(move || {
            initiator::login(port, "iqn.2026-11.io.vit:i", "iqn.2026-11.io.vit:t", isid)
        });
        let old = match next_msg(&mut c, &rx, 100) {
            Some(Msg::Conn(b)) => b,
            _ => panic!("the first session was not handed over"),
        };
        let _first = first.join().unwrap();
        let mut second = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let text = "InitiatorName=iqn.2026-11.io.vit:i\0TargetName=iqn.2026-11.io.vit:t\0AuthMethod=None\0";
        let bhs = login_bhs((Stage::Security, Stage::FullFeature), isid, 0, text.len());
        let early: Vec<u8> = (0..24u32 << 10).map(|i| (i % 251) as u8).collect();
        let mut wire = frame(&bhs, text.as_bytes(), false);
        wire.extend_from_slice(&early);
        second.write_all(&wire).unwrap();
        match next_msg(&mut c, &rx, 100) {
            Some(Msg::Drop(id)) => assert_eq!(id, old.1.session_id),
            _ => panic!("the old session was not asked to close"),
        }
        // The control thread runs on while the old session ends.
        assert!(next_msg(&mut c, &rx, 20).is_none());
        ended_tx.send(old.1.session_id).unwrap();
        let new = match next_msg(&mut c, &rx, 100) {
            Some(Msg::Conn(b)) => b,
            _ => panic!("the new session was not handed over"),
        };
        let mut got = new.2.clone();
        // What did not fit is still in the socket, for the data thread to read.
        let mut stream = new.0;
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = vec![0u8; early.len()];
        while got.len() < early.len() {
            let n = std::io::Read::read(&mut stream, &mut buf).unwrap();
            assert!(n > 0, "the connection ended");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(
            got == early,
            "the bytes after the login came through in order"
        );
    }

    /// A login that reinstates a session whose own reinstating login is still waiting for the
    /// session before it: the waiting one is dropped (it never reached a data thread), the new
    /// one waits for that same old session, and is answered once it ended.
    #[test]
    fn a_login_retried_while_its_reinstatement_waits_waits_for_the_same_session() {
        let (mut c, rx, ended_tx, port, _signals) = serving();
        let isid = [0x80, 0, 0, 0, 0, 9];
        let log_in = move || {
            std::thread::spawn(move || {
                initiator::try_login(port, "iqn.2026-11.io.vit:i", "iqn.2026-11.io.vit:t", isid)
            })
        };
        let first = log_in();
        let old = match next_msg(&mut c, &rx, 100) {
            Some(Msg::Conn(b)) => b,
            _ => panic!("the first session was not handed over"),
        };
        let _first = first.join().unwrap().unwrap();
        let second = log_in();
        assert!(
            matches!(next_msg(&mut c, &rx, 100), Some(Msg::Drop(id)) if id == old.1.session_id)
        );
        let third = log_in();
        // The third login's final request is taken: the second is dropped, its login fails.
        for _ in 0..200 {
            if second.is_finished() {
                break;
            }
            assert!(c.turn());
        }
        assert!(
            second.join().unwrap().is_err(),
            "the second login was answered"
        );
        assert!(
            next_msg(&mut c, &rx, 20).is_none(),
            "something was handed over or dropped"
        );
        assert!(!third.is_finished());
        ended_tx.send(old.1.session_id).unwrap();
        let new = match next_msg(&mut c, &rx, 100) {
            Some(Msg::Conn(b)) => b,
            _ => panic!("the third session was not handed over once the old one ended"),
        };
        assert_ne!(new.1.session_id, old.1.session_id);
        let _third = third.join().unwrap().unwrap();
        assert_eq!(
            c.sessions.len(),
            1,
            "records of the sessions gone are dropped"
        );
    }

    /// A configuration with `n` targets in the default portal group, each with a long name
    /// (the SendTargets answer of a discovery session lists them all).
    fn running_with_targets(n: usize) -> Arc<Running> {
        let one = running();
        let targets = (0..n)
            .map(|i| {
                Arc::new(crate::daemon::runtime::TargetRt {
                    name: format!("iqn.2026-11.io.vit:a-target-with-a-rather-long-name-{i:04}"),
                    alias: None,
                    auth: AuthPolicy::none(),
                    pg_auth: Vec::new(),
                    portal_groups: vec![0],
                    redirect: None,
                    owner_id: None,
                    luns: vec![],
                    portals: vec![("127.0.0.1:3260".parse().unwrap(), 7)],
                    server: crate::scsi::DeviceServer::new(vec![]).unwrap(),
                })
            })
            .collect();
        Arc::new(Running {
            generation: 1,
            portal_groups: one.portal_groups.clone(),
            targets,
        })
    }

    /// The Text Responses in `wire` (whole PDUs from its start): how many, and the bytes they
    /// took.
    fn text_responses(wire: &[u8]) -> (usize, usize) {
        let (mut n, mut at) = (0, 0);
        while wire.len() >= at + BHS_LEN {
            let Ok(TargetPdu::Text(r)) =
                TargetPdu::decode(wire[at..at + BHS_LEN].try_into().unwrap())
            else {
                panic!("not a text response");
            };
            let end = at + BHS_LEN + (r.data_segment_length as usize).next_multiple_of(4);
            if end > wire.len() {
                break;
            }
            (n, at) = (n + 1, end);
        }
        (n, at)
    }

    /// A discovery session sending a read's worth (12 KiB) of immediate SendTargets requests
    /// without reading the answers, on a portal with 300 targets: each answer is some 20 KiB,
    /// and the control thread answered every request of the read at once, queueing about 5 MiB
    /// for that one connection (measured with vitd: 50 such connections took 385 MB; 1024 of
    /// them would take gigabytes). The requests past 256 KiB of answers now wait in the receive
    /// buffer until the peer has read enough, and every one is still answered.
    #[test]
    fn answers_a_discovery_session_has_not_read_stay_bounded() {
        use crate::iscsi::pdu::TextRequest;
        use std::io::Read;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (mut c, _mail, _ended, _signals) =
            control_serving(running_with_targets(300), vec![], 8);
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (stream, peer) = listener.accept().unwrap();
        stream.set_nonblocking(true).unwrap();
        let text = "InitiatorName=iqn.2026-11.io.vit:i\0SessionType=Discovery\0\
                    MaxRecvDataSegmentLength=16777215\0";
        let bhs = login_bhs(
            (Stage::Operational, Stage::FullFeature),
            [0x80, 0, 0, 0, 0, 1],
            0,
            text.len(),
        );
        let mut wire = frame(&bhs, text.as_bytes(), false);
        const REQUESTS: usize = 192;
        let body = b"SendTargets=All\0";
        for i in 0..REQUESTS {
            let t = TextRequest {
                immediate: true,
                final_bit: true,
                itt: 100 + i as u32,
                ttt: 0xffff_ffff,
                data_segment_length: body.len() as u32,
                ..Default::default()
            };
            let mut h = [0u8; BHS_LEN];
            t.encode(&mut h);
            wire.extend_from_slice(&frame(&h, body, false));
        }
        assert!(wire.len() <= 16 << 10, "more than one read");
        let conn = in_login(&mut c, stream, peer, &wire);
        c.conns.push(Some(conn));
        c.process(0).unwrap();
        let conn = c.conns[0].as_ref().unwrap();
        assert!(matches!(conn.phase, Phase::Discovery(_)));
        let login_len = BHS_LEN
            + (u32::from_be_bytes([0, conn.tx[5], conn.tx[6], conn.tx[7]]) as usize)
                .next_multiple_of(4);
        let (first, _) = text_responses(&conn.tx[login_len..]);
        let answer = (conn.tx.len() - login_len) / first.max(1);
        assert!(answer > 16 << 10, "answers of {answer} bytes");
        assert!(
            conn.tx.len() <= TX_HELD_MAX + answer,
            "{} bytes of answers queued for one connection ({first} answers of {REQUESTS})",
            conn.tx.len()
        );
        // The peer reads: every request is answered, none twice.
        client
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            c.flush(0);
            let held = c.conns[0].as_ref().map_or(0, |x| x.tx.len());
            assert!(held <= TX_HELD_MAX + answer, "{held} bytes queued");
            match client.read(&mut buf) {
                Ok(0) => panic!("the connection ended"),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("{e}"),
            }
            if got.len() > login_len && text_responses(&got[login_len..]).0 == REQUESTS {
                break;
            }
            assert!(Instant::now() < deadline, "not every request was answered");
        }
        let (n, used) = text_responses(&got[login_len..]);
        assert_eq!((n, used), (REQUESTS, got.len() - login_len));
    }
}
