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
/// read from (each read takes at most 16 KiB of requests, so this bounds what it holds).
const TX_HELD_MAX: usize = 256 << 10;
/// How long the listeners rest after an accept failed for want of descriptors or memory: the
/// pending connection stays in the listen queue, and polling the listener at once would only
/// fail again (a busy loop and a flood of log lines).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

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
    next_session: u64,
    log_budget: super::logbudget::LogBudget,
    /// No accepting until then (see [`ACCEPT_BACKOFF`]).
    accept_paused: Option<Instant>,
    /// Sessions the data threads ended (their records go).
    ended: crossbeam_channel::Receiver<u64>,
    /// Normal sessions served at once.
    max_sessions: usize,
}

/// Blocks SIGINT and SIGTERM in this thread (and the threads it starts later) and returns a
/// signalfd that reports them.
pub fn signal_fd() -> std::io::Result<OwnedFd> {
    // SAFETY: sigset operations on a local, zero-initialised set.
    let fd = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
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
            next_session: 1,
            log_budget: super::logbudget::LogBudget::new(super::logbudget::LINES_PER_SECOND),
            accept_paused: None,
            ended,
            max_sessions,
        })
    }

    /// Serves until SIGINT or SIGTERM, then stops every data thread.
    pub fn run(mut self) {
        loop {
            let gone: Vec<u64> = self.ended.try_iter().collect();
            if !gone.is_empty() {
                self.sessions.retain(|s| !gone.contains(&s.id));
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
            for (i, c) in self.conns.iter().enumerate() {
                if let Some(c) = c {
                    // A peer that does not read its answers is not read from either.
                    let events = if c.tx.is_empty() {
                        libc::POLLIN
                    } else if c.tx.len() > TX_HELD_MAX {
                        libc::POLLOUT
                    } else {
                        libc::POLLIN | libc::POLLOUT
                    };
                    fds.push(pollfd(c.stream.as_raw_fd(), events));
                    owners.push(i);
                }
            }
            let timeout = rest.map_or(1000, |d| d.as_millis().clamp(1, 1000) as libc::c_int);
            // SAFETY: fds is a live array of fds.len() pollfd structures.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!("poll failed: {e}");
                    break;
                }
                continue;
            }
            if fds[0].revents != 0 {
                tracing::info!("signal received: stopping");
                break;
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
        }
        // Every thread starts its grace period at once; then all are waited for.
        for t in &self.threads {
            t.stop();
        }
        for t in &mut self.threads {
            t.join();
        }
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
            let login = Login::new(self.running.clone(), pg, peer, self.next_tsih);
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
            };
            self.next_tsih = self.next_tsih.wrapping_add(1).max(1);
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
        let n = match c.stream.read(&mut c.rx[c.rx_len..]) {
            Ok(0) => return self.drop_conn(idx),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(_) => return self.drop_conn(idx),
        };
        c.rx_len += n;
        if let Err(why) = self.process(idx) {
            if let Some(c) = self.conns[idx].as_ref() {
                let peer = c.peer;
                self.log_failure(&format!("{peer}: {why}"));
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
                        let initiator = login.initiator().to_string();
                        self.login_done(idx, outcome, &initiator);
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
                    let initiator = login.initiator().to_string();
                    self.login_done(idx, outcome, &initiator);
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
                    "login of {who} from {peer} refused ({}): {reason}",
                    status_name(status)
                ));
            }
            LoginOutcome::Session {
                params,
                target,
                isid,
                tsih: _,
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
                // vit.conf lists them (SPC-4 7.8.6.5: unique within the target).
                let (relative_port_id, target_ports) = target.as_ref().map_or((1, 1), |t| {
                    let at = t.portal_groups.iter().position(|&g| g == pg).unwrap_or(0);
                    let n = t.portal_groups.len().clamp(1, usize::from(u16::MAX));
                    (at as u16 + 1, n as u16)
                });
                let port = TargetPort {
                    target_name: target.as_ref().map_or_else(String::new, |t| t.name.clone()),
                    portal_group_tag: self.running.portal_groups.get(pg).map_or(1, |p| p.tag),
                    relative_port_id,
                    target_ports,
                };
                let initiator = params.initiator_name.clone();
                let tag = port.portal_group_tag;
                let phase = match target {
                    Some(t) => {
                        let nexus = Nexus::new(port, &t.server).with_initiator(&initiator, isid);
                        let mut conn =
                            Conn::new(params, Some(t.clone()), nexus, seq, login::QUEUE_DEPTH);
                        conn.session_id = self.next_session;
                        self.next_session += 1;
                        tracing::info!(initiator = %initiator, target = %t.name, peer = %peer, "session logged in");
                        let it = conn.nexus.id().clone();
                        self.reinstate(&initiator, (isid, tag), &t, &it);
                        self.sessions.push(SessionRec {
                            initiator,
                            isid,
                            target: t.name.clone(),
                            tag,
                            thread: usize::MAX,
                            id: conn.session_id,
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
    fn reinstate(
        &mut self,
        initiator: &str,
        (isid, tag): ([u8; 6], u16),
        target: &crate::daemon::runtime::TargetRt,
        it: &crate::scsi::ItNexusId,
    ) {
        let (old, keep): (Vec<SessionRec>, Vec<SessionRec>) = std::mem::take(&mut self.sessions)
            .into_iter()
            .partition(|s| {
                s.isid == isid
                    && s.tag == tag
                    && s.target == target.name
                    && s.initiator.eq_ignore_ascii_case(initiator)
            });
        self.sessions = keep;
        if !old.is_empty() {
            crate::daemon::conn::nexus_lost(target, it);
        }
        for s in old {
            tracing::info!(initiator, "session reinstatement: closing the old session");
            if let Some(t) = self.threads.get(s.thread) {
                let _ = t.tx.send(Msg::Drop(s.id));
                t.waker.wake();
                continue;
            }
            // Not handed off yet (its final login response still being sent): closed here, or
            // it would go to a data thread later and run beside the session replacing it.
            let held = |c: &CtlConn| match &c.phase {
                Phase::Handoff(conn) => conn.session_id == s.id,
                _ => false,
            };
            if let Some(c) = self.conns.iter_mut().find(|c| c.as_ref().is_some_and(held)) {
                *c = None;
            }
        }
    }

    fn flush(&mut self, idx: usize) {
        let Some(c) = self.conns[idx].as_mut() else {
            return;
        };
        while !c.tx.is_empty() {
            match c.stream.write(&c.tx) {
                Ok(0) => return self.drop_conn(idx),
                Ok(n) => {
                    c.tx.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => return self.drop_conn(idx),
            }
        }
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
        self.threads[ti].give(c.stream, *conn, prefix);
    }

    fn expire(&mut self) {
        let now = Instant::now();
        for idx in 0..self.conns.len() {
            if let Some(c) = self.conns[idx].as_ref()
                && now > c.deadline
            {
                let (peer, login) = (c.peer, matches!(c.phase, Phase::Login(_)));
                if login {
                    self.log_failure(&format!("login from {peer} timed out"));
                }
                self.drop_conn(idx);
            }
        }
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

fn status_name(s: LoginStatus) -> String {
    format!("{:?} 0x{:04x}", s, s as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::runtime::{AuthPolicy, PortalGroupRt, TargetRt};
    use crate::iscsi::initiator::{frame, login_bhs};
    use crate::iscsi::pdu::{BHS_LEN, Stage, TargetPdu};
    use crate::scsi::DeviceServer;

    const TARGET: &str = "iqn.2026-11.io.vit:t";

    fn running() -> Arc<Running> {
        let pg = PortalGroupRt {
            name: "default".into(),
            tag: 1,
            addrs: vec!["127.0.0.1:3260".parse().unwrap()],
            listen: vec![],
            foreign: false,
            discovery_auth: AuthPolicy::none(),
            discovery_filter: None,
            redirect: None,
        };
        let t = TargetRt {
            name: TARGET.into(),
            alias: None,
            auth: AuthPolicy::none(),
            pg_auth: Vec::new(),
            portal_groups: vec![0],
            redirect: None,
            owner_id: None,
            luns: vec![],
            portals: vec![],
            server: DeviceServer::new(vec![]).unwrap(),
        };
        Arc::new(Running {
            generation: 1,
            portal_groups: vec![pg],
            targets: vec![Arc::new(t)],
        })
    }

    /// A control thread serving at most `max_sessions` sessions, with one data thread that
    /// never runs (its mailbox is returned).
    fn control(max_sessions: usize) -> (Control, crossbeam_channel::Receiver<Msg>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = DataThread {
            tx,
            waker: Arc::new(super::super::uring::Waker::new().unwrap()),
            load: Arc::default(),
            handle: None,
        };
        let signals = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let (_ended_tx, ended) = crossbeam_channel::unbounded();
        let c = Control::new(
            running(),
            vec![],
            vec![thread],
            signals,
            ended,
            max_sessions,
        );
        (c.unwrap(), rx)
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
        let mut rx = vec![0u8; 16 << 10].into_boxed_slice();
        rx[..wire.len()].copy_from_slice(&wire);
        let conn = CtlConn {
            stream,
            peer,
            reader: PduReader::new(ReaderLimits::login()),
            rx,
            rx_len: wire.len(),
            data: Vec::new(),
            tx: Vec::new(),
            phase: Phase::Login(Box::new(Login::new(c.running.clone(), 0, peer, 1))),
            deadline: Instant::now() + LOGIN_TIMEOUT,
            close_after_flush: false,
            pg: 0,
            saw_header: false,
        };
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

    /// A session whose connection ends while its final login response is still being sent
    /// (the peer went away, or the login timeout struck) never reaches a data thread: its
    /// record went with it. It stayed, counted against --max-sessions until vitd stopped, so
    /// that after as many such logins as the limit every login was refused "out of resources".
    #[test]
    fn a_session_ended_before_its_handoff_leaves_no_record() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (mut c, _mail) = control(1);
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
        let (mut c, _mail) = control(8);
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
        let mut rx = vec![0u8; 16 << 10].into_boxed_slice();
        rx[..wire.len()].copy_from_slice(&wire);
        c.conns.push(Some(CtlConn {
            stream,
            peer,
            reader: PduReader::new(ReaderLimits::login()),
            rx,
            rx_len: wire.len(),
            data: Vec::new(),
            tx: Vec::new(),
            phase: Phase::Login(Box::new(Login::new(c.running.clone(), 0, peer, 1))),
            deadline: Instant::now() + LOGIN_TIMEOUT,
            close_after_flush: false,
            pg: 0,
            saw_header: false,
        }));
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
        let (mut c, mail) = control(8);
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
}
