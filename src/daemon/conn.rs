//! One iSCSI connection in full feature phase, sans I/O: PDUs in, PDUs and backing-store
//! requests out. The data thread owns the socket, the ring and the buffer pool and drives this
//! state machine; everything here is plain logic that unit tests can run without sockets.
//!
//! Flow of a command:
//! - READ-like: the CDB is executed at once; a media read becomes an [`IoRequest`] the thread
//!   performs into the task's registered buffer, then Data-In PDUs are queued that point into that
//!   same buffer (the last one carrying the status when there is no sense).
//! - WRITE-like: immediate data, unsolicited Data-Out and R2T-solicited Data-Out land in the
//!   task's buffer; when all of it is in, the write is issued; the SCSI Response follows its
//!   completion.
//!
//! Sequence numbers: CmdSN is checked against the window [ExpCmdSN, MaxCmdSN] (commands outside
//! it are dropped, as RFC 7143 says), StatSN advances on every status-bearing PDU, DataSN per
//! Data-In of a task, R2TSN per R2T of a task.

use super::runtime::TargetRt;
use super::shared::{Mail, Note};
use super::uring::{BufId, BufferPool};
use crate::iscsi::digest::{Crc32c, DIGEST_LEN, padding_for};
use crate::iscsi::params::SessionParams;
use crate::iscsi::pdu::{
    self, AsyncMessage, BHS_LEN, DataIn, InitiatorPdu, LogoutResponse, NopIn, R2t, Reject,
    RejectReason, ScsiCommand, ScsiResponse, TaskMgmtRequest, TaskMgmtResponse, TextResponse,
};
use crate::scsi::opcodes::{self, MediaAccess, op};
use crate::scsi::sense::FieldPointer;
use crate::scsi::{
    self, Completion, IoKind, IoRequest, IoResult, Nexus, Outcome, Request, SenseReason, Status,
    sbc,
};
use std::collections::VecDeque;
use std::sync::Arc;

/// The reserved tag value (RFC 7143 11.2.1.8).
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// Largest sense data carried in a SCSI Response (2-byte length + sense).
const MAX_SENSE_SEGMENT: usize = 2 + 252;

/// Where the data segment of the PDU being received goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataDest {
    /// Into a task's registered buffer at this offset; `device`: the data goes from there to
    /// a device and nothing on the CPU reads it ([`super::uring::copy_for_device`]).
    Slot {
        buf: BufId,
        offset: usize,
        device: bool,
    },
    /// Into the connection's small inline buffer (Text, NOP-Out).
    Inline,
    /// Nowhere (data we must absorb but do not use).
    Discard,
}

/// The data segment of an outgoing PDU.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "sense stays inline: no heap allocation per response"
)]
pub enum OutData {
    None,
    /// Bytes of a task's registered buffer (Data-In sent from the buffer the read filled).
    Slot {
        buf: BufId,
        offset: usize,
        len: usize,
    },
    /// `len` zero bytes, sent from the pool's zero mapping: Data-In of a read that needed no
    /// data (a LUN without backing store), whose buffer was never filled.
    Zeroes {
        len: usize,
    },
    /// Sense data (with its 2-byte length), inline.
    Sense {
        bytes: [u8; MAX_SENSE_SEGMENT],
        len: usize,
    },
    /// Anything else (text responses, NOP-In ping data, a rejected header): rare paths.
    Bytes(Vec<u8>),
}

impl OutPdu {
    /// Memory this PDU holds: itself and any bytes of its own.
    fn held(&self) -> usize {
        std::mem::size_of::<OutPdu>()
            + match &self.data {
                OutData::Bytes(v) => v.capacity(),
                _ => 0,
            }
    }
}

impl OutData {
    /// A data segment of `v`, or none when `v` is empty.
    pub fn bytes(v: Vec<u8>) -> Self {
        if v.is_empty() {
            OutData::None
        } else {
            OutData::Bytes(v)
        }
    }
}

/// An outgoing PDU: the header (with its digest when negotiated), the data and the padding/digest
/// trailer. It stays where it is while the send is in flight.
#[derive(Debug)]
pub struct OutPdu {
    pub header: [u8; BHS_LEN + DIGEST_LEN],
    pub header_len: usize,
    pub data: OutData,
    pub trailer: [u8; 3 + DIGEST_LEN],
    pub trailer_len: usize,
    /// The task whose buffer `data` points into (released when the task's last PDU is sent).
    pub task: Option<u16>,
    /// Close the connection once this PDU is sent (Logout Response).
    pub close_after: bool,
}

/// What the connection asks of the data thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoWork {
    pub task: u16,
    /// The task's buffer (none when the request moves no data through memory: SYNCHRONIZE
    /// CACHE, a WRITE SAME with NDOB that deallocates).
    pub buf: Option<BufId>,
    pub req: IoRequest,
}

/// The Data-Out a write waiting for its data must take within `--stall-timeout` for its
/// connection to keep it ([`Conn::data_out_stall`]), and what the initiator must take of the
/// answers vitd sends it in that time while they wait on it (the data thread's send clock): 64
/// KiB, so that an initiator keeping a buffer pays for it at least that (one small buffer's
/// worth) per stall period, and a write of a small buffer is whole by then.
pub const STALL_PROGRESS: u32 = 64 << 10;

/// Executes a command, taking the LUN's reservation lock when reservations are involved (a
/// reservation command, or a LUN that has registrations): otherwise one atomic load.
fn exec(target: &TargetRt, nexus: &mut Nexus, req: &Request<'_>, data_in: &mut [u8]) -> Outcome {
    match target.lun_index(req.lun).map(|i| &target.luns[i]) {
        Some(rt) if scsi::needs_pr_state(req.cdb) || rt.shared.pr_active() => {
            let mut pr = rt.shared.lock_pr();
            // A command that may change the saved state fails, changing nothing, when the
            // state cannot be saved (APTPL would otherwise be promised and not kept).
            let before = (req.cdb.first() == Some(&op::PERSISTENT_RESERVE_OUT)).then(|| pr.clone());
            let out = scsi::execute_with_pr(&target.server, nexus, req, data_in, Some(&mut pr));
            match rt.shared.settle_or_restore(&mut pr, before) {
                Ok(()) => out,
                Err(_) => Outcome::Done(Completion::check(
                    SenseReason::InsufficientRegistrationResources,
                )),
            }
        }
        _ => scsi::execute_with_pr(&target.server, nexus, req, data_in, None),
    }
}

/// Whether a CDB is a media write (its data-out is collected after the CDB is validated).
fn is_media_write(cdb: &[u8]) -> bool {
    opcodes::find(cdb).is_ok_and(|info| info.media == MediaAccess::Write)
}

/// Whether a CDB is PERSISTENT RESERVE OUT with service action PREEMPT AND ABORT.
fn is_preempt_and_abort(cdb: &[u8]) -> bool {
    matches!(cdb, [op::PERSISTENT_RESERVE_OUT, sa, ..] if sa & 0x1F == 5)
}

/// A fatal protocol error: the connection must be closed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Fatal(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TaskState {
    /// A command with no data yet waiting for a free buffer ([`Conn::grant_buffer`]).
    Waiting,
    /// Collecting Data-Out.
    Receiving,
    /// Backing-store I/O in flight.
    Io,
    /// Response queued; waiting for sends that point into the buffer.
    Sending,
}

#[derive(Debug)]
struct Task {
    lun: u64,
    cdb: [u8; 16],
    edtl: u32,
    buf: Option<BufId>,
    state: TaskState,
    /// A media write already validated (execute returned this request before data arrived).
    io: Option<IoRequest>,
    /// The command's own data-out length (for write residuals).
    transfer: u32,
    /// Data-out bytes wanted in the buffer.
    want: u32,
    received: u32,
    /// Where the next R2T starts, and R2Ts outstanding.
    next_r2t: u32,
    r2t_outstanding: u16,
    r2t_sn: u32,
    ttt: u32,
    /// Expected DataSN of the next Data-Out of the current sequence.
    data_out_sn: u32,
    sends_pending: u16,
    aborted: bool,
    /// Its data is all zeroes ([`Conn::zero_data`]): Data-In comes from the pool's zero
    /// mapping, not from its buffer.
    zeroes: bool,
    /// Its data-out goes from its buffer to a device ([`Conn::data_for_device`]).
    device: bool,
    /// [`Conn::data_out_stall`]'s count when it was made, got its buffer, or last moved on by
    /// [`STALL_PROGRESS`] bytes of Data-Out.
    data_at: u32,
    /// `received` when `data_at` was last set by Data-Out (its immediate data until then).
    data_mark: u32,
    /// `Conn::r2ts_queued` once its last R2T was queued.
    r2t_mark: u64,
    /// A Data-Out of it failed its data digest ([`Conn::data_digest_error`]): its data is not
    /// whole, so it ends with a CRC error once the data asked for is in, never written.
    digest_failed: bool,
    /// Bytes of the heap allowance ([`BufferPool::reserve_spill`]) it holds for its immediate
    /// data while it waits for a buffer and no slot could keep that data; `kept`: the data.
    spill: u32,
    kept: Option<Box<[u8]>>,
}

/// Sequence numbers of the session (one connection per session: MaxConnections=1).
#[derive(Debug, Clone, Copy)]
pub struct SeqNums {
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
}

/// A full-feature-phase connection of a normal session.
pub struct Conn {
    pub params: SessionParams,
    /// The session's target; `None` in a discovery session.
    pub target: Option<Arc<TargetRt>>,
    /// What SendTargets=All answers in a discovery session.
    pub visible: Vec<super::discovery::TargetEntry>,
    pub nexus: Nexus,
    seq: SeqNums,
    /// Commands allowed in flight: MaxCmdSN = ExpCmdSN + depth - 1.
    depth: u32,
    tasks: Vec<Option<Task>>,
    /// Each task slot's ITT, kept apart from its task ([`RESERVED_TAG`] when free; check the
    /// slot, an initiator may use that value too): the searches by ITT read 4 bytes per slot
    /// instead of a whole task.
    itts: Vec<u32>,
    next_ttt: u32,
    /// Whether `next_ttt` has come round: until then the TTTs vitd gave are `1..next_ttt`.
    ttt_wrapped: bool,
    pub out: VecDeque<OutPdu>,
    /// Memory the PDUs in `out` hold (see [`Conn::out_bytes`]).
    out_bytes: usize,
    pub io: VecDeque<IoWork>,
    /// Data segment of the PDU being received when [`DataDest::Inline`].
    pub inline: Vec<u8>,
    /// The destination chosen for the current PDU's data segment.
    pub dest: DataDest,
    /// Text request continuation, bounded.
    text: Vec<u8>,
    /// Set once a Logout Request is taken: accept no more commands.
    logging_out: bool,
    /// The ITT of a Logout Request whose answer waits for the I/O of the tasks it ended
    /// ([`Conn::maybe_answer_logout`]).
    logout_held: Option<u32>,
    /// Task slots in use.
    busy: u32,
    /// Per LUN (index in the target's list): the last reservation effects looked at.
    mail_seen: Vec<u64>,
    /// Per LUN: this session's key among the LUN's readers of mail
    /// ([`super::shared::LunShared::register`]), given back when the connection goes.
    mail_keys: Vec<usize>,
    /// The task a write command's header created (its immediate data is arriving).
    header_task: Option<usize>,
    /// A text response longer than the initiator's MaxRecvDataSegmentLength: what is left, and
    /// the TTT its continuation requests carry.
    text_out: Option<(Vec<u8>, usize, u32)>,
    /// The address the initiator connected to (for SendTargets on wildcard portals).
    pub local_addr: Option<std::net::SocketAddr>,
    /// Identifies the session for reinstatement.
    pub session_id: u64,
    /// Task management responses held until the I/O of the tasks they aborted has ended
    /// (RFC 7143 §11.6.2: no write of an aborted task may land after the answer).
    tmf_held: Vec<HeldTmf>,
    /// Seconds counted by [`Conn::data_out_stall`]: when each write last got data.
    clock: u32,
    /// The Text Request being continued has passed its limit: refused at its last PDU.
    text_overflow: bool,
    /// R2Ts queued, and taken to be sent ([`Conn::pop_out`]), since the connection began: a
    /// write whose last R2T is still queued is not waiting on the initiator yet.
    r2ts_queued: u64,
    r2ts_out: u64,
    /// Commands waiting for a buffer, oldest first: (task slot, the command).
    buffer_wait: VecDeque<(usize, ScsiCommand)>,
    /// Between a PDU's header and its end ([`Conn::on_header`], [`Conn::on_pdu`]): its data
    /// segment may be being received into a task's buffer, so that task must not be freed.
    mid_pdu: bool,
    /// A command came with a CmdSN inside the window but past ExpCmdSN: (its CmdSN, ExpCmdSN).
    /// With one connection a command before it was lost (discarded for its data digest), and
    /// at ErrorRecoveryLevel 0 nothing fills that gap: `on_pdu` ends the connection, so the
    /// initiator recovers the session instead of every later command being ignored.
    cmd_sn_gap: Option<(u32, u32)>,
    /// PREEMPT AND ABORT commands whose GOOD status waits, as a reset's answer does, for the
    /// writes in flight on their LUN (the preempted nexuses' commands are aborted before it
    /// completes: none of their writes lands after it): (task slot, its completion, the LUN).
    pr_held: Vec<(usize, Completion, Arc<super::runtime::LunRt>)>,
    /// CmdSNs ahead of ExpCmdSN that an ABORT TASK declared received (RFC 7143 §11.5.1 b):
    /// ExpCmdSN passes over them when it reaches them. Within the command window, so at most
    /// `depth` of them.
    plugged: Vec<u32>,
}

impl Drop for Conn {
    /// The session's inboxes go with it (mail is no longer kept for it).
    fn drop(&mut self) {
        if let Some(t) = self.target.as_ref() {
            for (l, &key) in t.luns.iter().zip(&self.mail_keys) {
                l.shared.unregister(key);
            }
        }
    }
}

/// A task management response waiting for aborted tasks' I/O, and for a reset, for the writes
/// other sessions have in flight on the LUNs it reset.
struct HeldTmf {
    itt: u32,
    response: u8,
    /// The task slots whose backing-store I/O it waits for (a task aborted by an earlier
    /// request and still in flight included).
    tasks: Vec<u16>,
    /// LUNs whose reset waits ([`super::shared::LunShared::begin_reset`]).
    luns: Vec<Arc<super::runtime::LunRt>>,
}

impl Conn {
    /// A connection that completed login with `seq` (StatSN to use next, ExpCmdSN expected).
    pub fn new(
        params: SessionParams,
        target: Option<Arc<TargetRt>>,
        nexus: Nexus,
        seq: SeqNums,
        depth: u16,
    ) -> Self {
        let depth = depth.max(1);
        let inline_cap = params.target_max_recv_data_segment_length.min(1 << 20) as usize;
        let (mail_keys, mail_seen) = target.as_ref().map_or_else(Default::default, |t| {
            t.luns.iter().map(|l| l.shared.register(nexus.id())).unzip()
        });
        Conn {
            params,
            target,
            visible: Vec::new(),
            nexus,
            seq,
            depth: u32::from(depth),
            tasks: (0..depth).map(|_| None).collect(),
            itts: vec![RESERVED_TAG; usize::from(depth)],
            next_ttt: 1,
            ttt_wrapped: false,
            out: VecDeque::with_capacity(usize::from(depth) * 2),
            out_bytes: 0,
            io: VecDeque::with_capacity(usize::from(depth)),
            inline: Vec::with_capacity(inline_cap),
            dest: DataDest::Discard,
            text: Vec::new(),
            logging_out: false,
            logout_held: None,
            busy: 0,
            mail_seen,
            mail_keys,
            header_task: None,
            text_out: None,
            local_addr: None,
            session_id: 0,
            tmf_held: Vec::new(),
            clock: 0,
            text_overflow: false,
            r2ts_queued: 0,
            r2ts_out: 0,
            buffer_wait: VecDeque::new(),
            mid_pdu: false,
            cmd_sn_gap: None,
            plugged: Vec::new(),
            pr_held: Vec::new(),
        }
    }

    /// The window's upper end: as many new commands as free task slots.
    fn max_cmd_sn(&self) -> u32 {
        self.seq
            .exp_cmd_sn
            .wrapping_add(self.depth.saturating_sub(self.busy))
            .wrapping_sub(1)
    }

    // ---------------------------------------------------------------- receiving

    /// Called when a PDU's header (and AHS) has been read and its data segment follows: chooses
    /// where the data goes. `bhs` is the header.
    pub fn on_header(
        &mut self,
        bhs: &[u8; BHS_LEN],
        data_len: u32,
        pool: &mut BufferPool,
    ) -> DataDest {
        self.inline.clear();
        self.mid_pdu = true;
        // A task made for a command header whose PDU never completed (its data digest failed)
        // is not left holding its slot and buffer.
        if let Some(i) = self.header_task.take() {
            self.free_task(i, pool);
        }
        self.dest = match InitiatorPdu::decode(bhs) {
            Ok(InitiatorPdu::ScsiCommand(cmd)) if cmd.write => {
                self.begin_write(&cmd, data_len, pool)
            }
            Ok(InitiatorPdu::DataOut(d)) => self.data_out_dest(&d, data_len),
            Ok(InitiatorPdu::Text(_))
            | Ok(InitiatorPdu::NopOut(_))
            | Ok(InitiatorPdu::Login(_))
                if data_len as usize <= self.inline.capacity() =>
            {
                DataDest::Inline
            }
            _ => DataDest::Discard,
        };
        self.dest
    }

    /// A write command's header arrived with immediate data: set up its task now so the data can
    /// land in the task's buffer.
    fn begin_write(&mut self, cmd: &ScsiCommand, data_len: u32, pool: &mut BufferPool) -> DataDest {
        // A discovery session has no LUNs: its command is rejected whole, nothing is kept.
        if self.target.is_none()
            || self.find_itt(cmd.itt).is_some()
            || !self.cmd_sn_acceptable(cmd.immediate, cmd.cmd_sn)
        {
            return DataDest::Discard;
        }
        let Some(i) = self.new_task(cmd, pool) else {
            return DataDest::Discard;
        };
        self.header_task = Some(i);
        match self.tasks[i]
            .as_ref()
            .and_then(|t| Some((t.buf?, t.device)))
        {
            Some((buf, device)) if (data_len as usize) <= pool.len_of(buf) => DataDest::Slot {
                buf,
                offset: 0,
                device,
            },
            _ if data_len == 0 => DataDest::Discard,
            // Kept on the heap (`new_task`): received inline, moved to the task in `on_command`.
            _ if self.tasks[i].as_ref().is_some_and(|t| t.spill == data_len) => DataDest::Inline,
            // Its data has nowhere to go: no task keeps it (`on_command` then refuses the
            // command rather than take the buffer's old contents for its data).
            _ => {
                self.header_task = None;
                self.free_task(i, pool);
                DataDest::Discard
            }
        }
    }

    fn data_out_dest(&mut self, d: &pdu::DataOut, data_len: u32) -> DataDest {
        let Some(i) = self.find_data_out_task(d) else {
            return DataDest::Discard;
        };
        let Some(t) = self.tasks[i].as_ref() else {
            return DataDest::Discard;
        };
        match t.buf {
            Some(buf) if d.data_sn == t.data_out_sn && self.data_out_fits(t, d, data_len) => {
                DataDest::Slot {
                    buf,
                    offset: d.buffer_offset as usize,
                    device: t.device,
                }
            }
            _ => DataDest::Discard,
        }
    }

    /// Whether a Data-Out continues its task's data where it stands. vit negotiates
    /// DataPDUInOrder=Yes, DataSequenceInOrder=Yes and MaxOutstandingR2T=1 (RFC 7143 §13.19,
    /// §13.20, §13.17), so a task's data comes contiguous and in order: each PDU starts where the
    /// data so far ends, solicited data stays within what the R2Ts asked for, unsolicited data
    /// (only with InitialR2T=No) within the first burst. Anything else would land over data
    /// already taken, or leave a gap that counting bytes would paper over with whatever the
    /// buffer held before.
    fn data_out_fits(&self, t: &Task, d: &pdu::DataOut, data_len: u32) -> bool {
        let limit = if d.ttt != RESERVED_TAG {
            t.next_r2t
        } else if self.params.initial_r2t {
            0
        } else {
            self.params.first_burst_length.min(t.want)
        };
        t.state == TaskState::Receiving
            && d.buffer_offset == t.received
            && u64::from(d.buffer_offset) + u64::from(data_len) <= u64::from(limit)
    }

    /// The live task with tag `itt`: an aborted one whose I/O has not ended yet no longer
    /// answers to it (the initiator may reuse the tag once the abort is answered).
    fn find_itt(&self, itt: u32) -> Option<usize> {
        self.itts
            .iter()
            .zip(&self.tasks)
            .position(|(&x, t)| x == itt && t.as_ref().is_some_and(|t| !t.aborted))
    }

    fn find_data_out_task(&self, d: &pdu::DataOut) -> Option<usize> {
        if d.ttt == RESERVED_TAG {
            self.find_itt(d.itt)
        } else {
            self.itts.iter().zip(&self.tasks).position(|(&x, t)| {
                x == d.itt && t.as_ref().is_some_and(|t| t.ttt == d.ttt && !t.aborted)
            })
        }
    }

    /// A Data-Out that no live task takes (its data was discarded, `data_out_dest`). Data of a
    /// task that ended is absorbed: an aborted task's R2Ts are still answered (RFC 7143
    /// §11.5.1) and a write answered at its CDB may be followed by the unsolicited data sent
    /// with it. Anything else names a transfer that does not exist, an invalid TTT/ITT, and is
    /// rejected as such (§11.17.1, Note 2) at once, rather than leave a write that waits for the
    /// right data to the stall timeout; with InitialR2T=Yes no Data-Out is unsolicited (§13.10).
    fn on_stray_data_out(&mut self, d: &pdu::DataOut, bhs: &[u8; BHS_LEN]) {
        let reason = if d.ttt == RESERVED_TAG {
            self.params
                .initial_r2t
                .then_some(RejectReason::ProtocolError)
        } else if !self.ttt_given(d.ttt)
            || self.find_itt(d.itt).is_some()
            || self
                .tasks
                .iter()
                .flatten()
                .any(|t| !t.aborted && t.ttt == d.ttt)
        {
            Some(RejectReason::InvalidPduField)
        } else {
            None
        };
        if let Some(reason) = reason {
            tracing::debug!(
                itt = d.itt,
                ttt = d.ttt,
                "Data-Out for no transfer of a live task"
            );
            self.reject(reason, bhs);
        }
    }

    /// Whether a command's CmdSN lies in the window (immediate commands are not counted).
    fn cmd_sn_acceptable(&self, immediate: bool, cmd_sn: u32) -> bool {
        if immediate {
            return true;
        }
        cmd_sn == self.seq.exp_cmd_sn
    }

    /// Called when a whole PDU has been read (data, if any, already at `self.dest`).
    pub fn on_pdu(&mut self, bhs: &[u8; BHS_LEN], pool: &mut BufferPool) -> Result<(), Fatal> {
        self.mid_pdu = false;
        // The task `on_header` made for a write command's data goes to that command; any other
        // end of the PDU (a discovery session, a logout under way) frees it.
        let header_task = self.header_task.take();
        if let Some(i) = header_task
            && (self.target.is_none() || self.logging_out)
        {
            self.free_task(i, pool);
        }
        let pdu = match InitiatorPdu::decode(bhs) {
            Ok(p) => p,
            Err(_) => {
                self.reject(RejectReason::CommandNotSupported, bhs);
                return Ok(());
            }
        };
        match pdu {
            InitiatorPdu::ScsiCommand(_) | InitiatorPdu::TaskMgmt(_) | InitiatorPdu::DataOut(_)
                if self.target.is_none() =>
            {
                self.reject(RejectReason::ProtocolError, bhs)
            }
            InitiatorPdu::ScsiCommand(cmd) => self.on_command(&cmd, bhs, header_task, pool),
            InitiatorPdu::DataOut(d) => self.on_data_out(&d, bhs, pool),
            InitiatorPdu::NopOut(n) => self.on_nop_out(&n),
            InitiatorPdu::TaskMgmt(t) => self.on_tmf(&t, bhs, pool),
            InitiatorPdu::Text(t) => self.on_text(&t, bhs),
            InitiatorPdu::Logout(l) => self.on_logout(&l, pool),
            InitiatorPdu::Login(_) => {
                return Err(Fatal("login request in full feature phase".into()));
            }
            InitiatorPdu::Snack(_) => self.reject(RejectReason::SnackReject, bhs),
        }
        if let Some((cmd_sn, exp)) = self.cmd_sn_gap.take() {
            return Err(Fatal(format!(
                "CmdSN {cmd_sn} came while ExpCmdSN is {exp}: a command was lost, \
                 which ErrorRecoveryLevel 0 cannot recover"
            )));
        }
        Ok(())
    }

    /// Advances ExpCmdSN for a non-immediate command; false when the command must be dropped.
    fn take_cmd_sn(&mut self, immediate: bool, cmd_sn: u32) -> bool {
        if immediate {
            return true;
        }
        if cmd_sn != self.seq.exp_cmd_sn {
            // Serial number arithmetic (RFC 1982): ahead of ExpCmdSN, within the widest window
            // vitd ever offers (MaxCmdSN = ExpCmdSN + depth - 1).
            let ahead = cmd_sn.wrapping_sub(self.seq.exp_cmd_sn);
            if (1..self.depth).contains(&ahead) {
                self.cmd_sn_gap = Some((cmd_sn, self.seq.exp_cmd_sn));
                return false;
            }
            tracing::debug!(
                cmd_sn,
                exp = self.seq.exp_cmd_sn,
                "CmdSN outside the window: dropped"
            );
            return false;
        }
        self.seq.exp_cmd_sn = self.seq.exp_cmd_sn.wrapping_add(1);
        if !self.plugged.is_empty() {
            self.pass_plugged();
        }
        true
    }

    /// Moves ExpCmdSN past the CmdSNs an ABORT TASK declared received.
    fn pass_plugged(&mut self) {
        while let Some(at) = self.plugged.iter().position(|&s| s == self.seq.exp_cmd_sn) {
            self.plugged.swap_remove(at);
            self.seq.exp_cmd_sn = self.seq.exp_cmd_sn.wrapping_add(1);
        }
    }

    /// RFC 7143 §11.5.1 b): an ABORT TASK whose tag names no task, and whose RefCmdSN lies in
    /// the command window and before the request's own CmdSN, names a command that never
    /// arrived (its PDU was discarded, as a data digest error discards it; vit takes commands
    /// in CmdSN order only, and a later one arriving before the gap is filled ends the
    /// connection, `take_cmd_sn`). Its CmdSN is taken as
    /// received: the window moves past the gap. `exp` is ExpCmdSN as the request found it.
    /// Returns whether it did so (the answer is then Function complete).
    fn plug_cmd_sn(&mut self, exp: u32, ref_cmd_sn: u32, tmf_cmd_sn: u32) -> bool {
        let ahead = ref_cmd_sn.wrapping_sub(exp);
        if ahead >= tmf_cmd_sn.wrapping_sub(exp) || ahead >= self.depth {
            return false;
        }
        if ref_cmd_sn == self.seq.exp_cmd_sn {
            self.seq.exp_cmd_sn = ref_cmd_sn.wrapping_add(1);
            self.pass_plugged();
        } else if !self.plugged.contains(&ref_cmd_sn) {
            self.plugged.push(ref_cmd_sn);
        }
        true
    }

    fn new_task(&mut self, cmd: &ScsiCommand, pool: &mut BufferPool) -> Option<usize> {
        let i = self
            .itts
            .iter()
            .zip(&self.tasks)
            .position(|(&x, t)| x == RESERVED_TAG && t.is_none())?;
        let want = self.buffer_len(cmd, pool);
        let needs_buf = want > 0 || cmd.read;
        let mut spill = 0;
        let buf = if needs_buf {
            let free = (!self.over_large_share(want, pool))
                .then(|| pool.alloc_new(want))
                .flatten();
            match free {
                Some(b) => Some(b),
                // No buffer that large free: the command waits for one (on_command queues it),
                // its immediate data, if any, kept meanwhile in a smaller buffer of its own
                // size (not one of `want`: that would be its buffer, taken past its share or
                // ahead of the commands waiting).
                None if self.may_wait_for_buffer(cmd) => match cmd.data_segment_length {
                    0 => None,
                    n => match pool.alloc_to_keep(n as usize, want) {
                        Some(b) => Some(b),
                        // No slot can keep it either (every one in use: deep queues of large
                        // writes): the heap keeps it, within the thread's allowance, rather
                        // than the write failing with TASK SET FULL.
                        None if n as usize <= self.inline.capacity()
                            && pool.reserve_spill(n as usize) =>
                        {
                            spill = n;
                            None
                        }
                        None => return None,
                    },
                },
                None => return None,
            }
        } else {
            None
        };
        let waiting = needs_buf && buf.is_none_or(|b| pool.len_of(b) < want);
        let ttt = self.fresh_ttt();
        let device = self.data_for_device(cmd);
        self.busy += 1;
        self.itts[i] = cmd.itt;
        self.tasks[i] = Some(Task {
            lun: cmd.lun,
            cdb: cmd.cdb,
            edtl: cmd.expected_data_length,
            buf,
            state: if waiting {
                TaskState::Waiting
            } else {
                TaskState::Receiving
            },
            io: None,
            transfer: 0,
            want: 0,
            received: 0,
            next_r2t: 0,
            r2t_outstanding: 0,
            r2t_sn: 0,
            ttt,
            data_out_sn: 0,
            sends_pending: 0,
            aborted: false,
            zeroes: false,
            device,
            data_at: self.clock,
            data_mark: 0,
            r2t_mark: 0,
            digest_failed: false,
            spill,
            kept: None,
        });
        Some(i)
    }

    /// The buffer a command's task takes: its expected data transfer length, at most the
    /// largest slot (a larger command fails when it runs). A VERIFY reads the medium into it,
    /// and a WRITE SAME with NDOB that writes zeroes (one that deallocates needs no buffer)
    /// writes them from it: theirs is as long as what they read or write, like a READ's or a
    /// WRITE's, though they have no data-in and no data-out (or less), so that it comes to them
    /// through the same wait for a buffer as any command's. Other commands pay one test of
    /// the opcode for it.
    fn buffer_len(&self, cmd: &ScsiCommand, pool: &BufferPool) -> usize {
        let edtl = cmd.expected_data_length as usize;
        let len = match cmd.cdb[0] {
            op::VERIFY_10 | op::VERIFY_12 | op::VERIFY_16 | op::WRITE_SAME_16 => {
                edtl.max(self.medium_len(cmd))
            }
            _ => edtl,
        };
        len.min(pool.max_len())
    }

    /// The bytes a VERIFY reads, or a WRITE SAME with NDOB writes without deallocating them,
    /// through its buffer (0 for another command, or one that fails before any I/O).
    fn medium_len(&self, cmd: &ScsiCommand) -> usize {
        let Some(lun) = self.target.as_ref().and_then(|t| {
            let id = scsi::decode_lun(cmd.lun.to_be_bytes())?;
            t.server.lun(id)
        }) else {
            return 0;
        };
        match scsi::block_io(lun, &cmd.cdb) {
            Some(io) => match io.kind {
                IoKind::Verify { .. } => io.byte_len,
                IoKind::WriteSame { ndob: true, .. }
                    if !sbc::write_same_deallocates(lun, &io, &[]) =>
                {
                    io.byte_len
                }
                _ => 0,
            },
            None => 0,
        }
    }

    /// Whether a command may wait for a buffer: no data of it comes before an R2T asks for it
    /// but its immediate data (with InitialR2T=Yes, vitd's offer, no unsolicited Data-Out).
    fn may_wait_for_buffer(&self, cmd: &ScsiCommand) -> bool {
        !cmd.write || self.params.initial_r2t
    }

    /// Whether a command needing `len` bytes must wait because this connection already holds
    /// its share of the thread's largest buffers ([`BufferPool::largest_share`]): one session's
    /// deep queue of large I/O, or an initiator that takes buffers and then sends no data,
    /// leaves some to the thread's other sessions.
    fn over_large_share(&self, len: usize, pool: &BufferPool) -> bool {
        pool.needs_largest(len)
            && self
                .tasks
                .iter()
                .flatten()
                .filter(|t| t.buf.is_some_and(|b| pool.is_largest(b)))
                .count()
                >= pool.largest_share()
    }

    /// Whether commands wait for a buffer ([`Conn::grant_buffer`]).
    pub fn waiting_for_buffer(&self) -> bool {
        !self.buffer_wait.is_empty()
    }

    /// The buffer length the command first in line for one needs, unless its connection's
    /// share of the largest buffers holds it back, or a logout (then it has no claim on a free
    /// one: [`Conn::grant_buffer`] gives it none).
    pub fn wait_len(&self, pool: &BufferPool) -> Option<usize> {
        if self.logging_out {
            return None;
        }
        let (_, cmd) = self.buffer_wait.front()?;
        let len = self.buffer_len(cmd, pool);
        (!self.over_large_share(len, pool)).then_some(len)
    }

    /// Gives the oldest command waiting for a buffer one, if the pool has one free, and runs it
    /// on. True when one was given (the data thread shares its freed buffers out in turn among
    /// its connections with commands waiting).
    /// Not while a PDU is being received: running a command may take the LUN's mail, which
    /// can abort (and free) the task whose buffer the receive fills; the data thread tries
    /// again once the PDU has ended.
    /// Nor once a Logout Response is queued: nothing may follow it (the waiting commands end
    /// with the connection).
    pub fn grant_buffer(&mut self, pool: &mut BufferPool) -> bool {
        if self.mid_pdu || self.logging_out {
            return false;
        }
        while let Some(&(i, cmd)) = self.buffer_wait.front() {
            // A reset, CLEAR TASK SET or PREEMPT AND ABORT of another session posted while it
            // waited aborts it (and frees it, leaving the wait): it came before them. One
            // atomic load when no mail came; no PDU is being received (`mid_pdu`).
            self.check_mail(cmd.lun, None, pool);
            if self.buffer_wait.front().is_none_or(|&(j, _)| j != i) {
                continue;
            }
            // A task freed while it waited leaves the wait (`free_task`): the entry is its own.
            let waiting = self.itts[i] == cmd.itt
                && self.tasks[i]
                    .as_ref()
                    .is_some_and(|t| t.state == TaskState::Waiting);
            if !waiting {
                debug_assert!(false, "a stale wait for slot {i}");
                self.buffer_wait.pop_front();
                continue;
            }
            let len = self.buffer_len(&cmd, pool);
            if self.over_large_share(len, pool) {
                return false;
            }
            let Some(b) = pool.alloc(len) else {
                return false;
            };
            self.buffer_wait.pop_front();
            if let Some(t) = self.tasks[i].as_mut() {
                // Its immediate data moves over from the buffer, or the heap, that kept it.
                if let Some(kept) = t.buf.replace(b) {
                    pool.copy_between(kept, b, cmd.data_segment_length as usize);
                    pool.release(kept);
                } else if let Some(kept) = t.kept.take() {
                    pool.fill(b, &kept);
                    pool.return_spill(std::mem::take(&mut t.spill) as usize);
                }
                t.state = TaskState::Receiving;
                t.data_at = self.clock;
            }
            self.dispatch(i, &cmd, pool);
            return true;
        }
        false
    }

    /// Whether a command's data-out goes from its buffer straight to a device: a plain WRITE to
    /// a LUN whose extents are opened O_DIRECT. Other commands' data is read by the CPU
    /// (compared, parsed, or copied into memory or the page cache).
    fn data_for_device(&self, cmd: &ScsiCommand) -> bool {
        cmd.write
            && matches!(
                cmd.cdb[0],
                op::WRITE_6 | op::WRITE_10 | op::WRITE_12 | op::WRITE_16
            )
            && self.target.as_ref().is_some_and(|t| {
                t.lun_at(cmd.lun.to_be_bytes())
                    .is_some_and(|(i, _)| t.luns[i].direct_io())
            })
    }

    /// A SCSI command; `existing` is the task `on_header` already made for its data, if any.
    fn on_command(
        &mut self,
        cmd: &ScsiCommand,
        bhs: &[u8; BHS_LEN],
        existing: Option<usize>,
        pool: &mut BufferPool,
    ) {
        if self.logging_out {
            return;
        }
        if !self.take_cmd_sn(cmd.immediate, cmd.cmd_sn) {
            if let Some(i) = existing {
                self.free_task(i, pool);
            }
            return;
        }
        // Immediate data is unsolicited: at most FirstBurstLength of it, none when the session
        // negotiated ImmediateData=No (RFC 7143 §13.11, §13.14), and none on a command without
        // the W bit (its data would have nowhere to go).
        let immediate_max = if self.params.immediate_data && cmd.write {
            self.params.first_burst_length
        } else {
            0
        };
        if cmd.data_segment_length > immediate_max {
            if let Some(i) = existing {
                self.free_task(i, pool);
            }
            tracing::debug!(
                itt = cmd.itt,
                len = cmd.data_segment_length,
                max = immediate_max,
                "immediate data past the first burst or without the W bit: rejected"
            );
            self.reject(RejectReason::ProtocolError, bhs);
            return;
        }
        self.check_mail(cmd.lun, existing, pool);
        let i = match existing {
            Some(i) => i,
            None => {
                if self.find_itt(cmd.itt).is_some() {
                    self.reject(RejectReason::TaskInProgress, bhs);
                    return;
                }
                // Immediate data with no task made for it in `on_header` was discarded (no
                // task slot or buffer then): a buffer freed since must not be taken as holding
                // it. TASK SET FULL: the initiator sends the command again.
                let discarded = cmd.data_segment_length > 0;
                match (!discarded).then(|| self.new_task(cmd, pool)).flatten() {
                    Some(i) => i,
                    None => {
                        // No task slot or buffer: TASK SET FULL, the initiator retries.
                        self.task_set_full(cmd);
                        return;
                    }
                }
            }
        };
        if self.tasks[i]
            .as_ref()
            .is_some_and(|t| t.state == TaskState::Waiting)
        {
            if let Some(t) = self.tasks[i].as_mut()
                && t.spill > 0
                && t.kept.is_none()
            {
                if self.inline.len() != t.spill as usize {
                    // Not all of it arrived (it cannot, once the PDU ended): never run a write
                    // on data it was not given.
                    debug_assert!(false, "immediate data kept short");
                    self.free_task(i, pool);
                    self.task_set_full(cmd);
                    return;
                }
                t.kept = Some(self.inline.as_slice().into());
            }
            let len = self.buffer_len(cmd, pool);
            // One held back by its connection's share leaves the free buffers to others.
            if !self.over_large_share(len, pool) {
                pool.note_waiting(len);
            }
            self.buffer_wait.push_back((i, *cmd));
            return;
        }
        self.dispatch(i, cmd, pool);
    }

    /// Runs a command whose task has its buffer (if it needs one).
    fn dispatch(&mut self, i: usize, cmd: &ScsiCommand, pool: &mut BufferPool) {
        if is_media_write(&cmd.cdb) || (cmd.write && cmd.expected_data_length > 0) {
            self.start_write(i, cmd, pool);
        } else {
            self.run_command(i, &[], pool);
        }
    }

    /// Decides how much data-out to collect and asks for the rest with R2Ts.
    fn start_write(&mut self, i: usize, cmd: &ScsiCommand, pool: &mut BufferPool) {
        let Some(t) = self.tasks[i].as_mut() else {
            return;
        };
        let immediate = cmd.data_segment_length.min(cmd.expected_data_length);
        let is_media_write =
            opcodes::find(&t.cdb).is_ok_and(|info| info.media == MediaAccess::Write);
        if is_media_write {
            // Validate first: a bad write fails before any data moves through R2T.
            let req = Request {
                lun: t.lun.to_be_bytes(),
                cdb: &t.cdb,
                data_out: &[],
            };
            let Some(target) = self.target.as_ref() else {
                return;
            };
            match exec(target, &mut self.nexus, &req, &mut []) {
                Outcome::Done(mut c) => {
                    let (itt, edtl) = (self.itts[i], t.edtl);
                    // A zero-length COMPARE AND WRITE or WRITE ATOMIC that still carries data-out:
                    // the data cannot be taken whole, as those commands require.
                    if c.status == Status::Good && edtl > 0 && matches!(t.cdb[0], 0x89 | 0x9C) {
                        c = Completion::check(SenseReason::InvalidFieldInCdb(FieldPointer::byte(
                            0,
                        )));
                    }
                    self.free_task(i, pool);
                    // GOOD here means the CDB moves no data (a transfer length or parameter
                    // list length of 0): any data-out the initiator expected to send is not
                    // taken, an underflow of all of it (RFC 7143 §11.4.5.2).
                    let produced = if c.status == Status::Good {
                        0
                    } else {
                        edtl as usize
                    };
                    self.queue_completion(itt, edtl, &c, None, 0, produced);
                    return;
                }
                Outcome::Io(io) => {
                    t.io = Some(io);
                    t.transfer = io.data_out_len.min(u32::MAX as usize) as u32;
                    // Without the W bit the initiator sends no data-out, whatever the CDB says.
                    t.want = if cmd.write {
                        t.transfer.min(cmd.expected_data_length)
                    } else {
                        0
                    };
                }
            }
        } else {
            t.want = cmd.expected_data_length;
            t.transfer = t.want;
        }
        if t.buf.is_some_and(|b| t.want as usize > pool.len_of(b)) || t.want > 0 && t.buf.is_none()
        {
            let (itt, edtl) = (self.itts[i], t.edtl);
            self.free_task(i, pool);
            let c = Completion::check(SenseReason::InvalidFieldInCdb(FieldPointer::byte(0)));
            self.queue_completion(itt, edtl, &c, None, 0, edtl as usize);
            return;
        }
        t.received = immediate.min(t.want);
        // Immediate data came with the command, before its stall clock started: the first
        // step of Data-Out is counted from there.
        t.data_mark = t.received;
        // Unsolicited data may follow (InitialR2T=No) up to FirstBurstLength.
        let unsolicited_end = if self.params.initial_r2t {
            t.received
        } else {
            self.params.first_burst_length.min(t.want).max(t.received)
        };
        t.next_r2t = unsolicited_end;
        self.send_r2ts(i);
        self.maybe_write_ready(i, pool);
    }

    /// Issues R2Ts up to MaxOutstandingR2T, each at most MaxBurstLength.
    fn send_r2ts(&mut self, i: usize) {
        let (max_burst, max_out) = (
            self.params.max_burst_length.max(512),
            self.params.max_outstanding_r2t.max(1),
        );
        loop {
            let Some(t) = self.tasks[i].as_mut() else {
                return;
            };
            // No more data is asked for once some of it failed its digest: the task ends when
            // the data already asked for is in (`maybe_write_ready`).
            if t.next_r2t >= t.want || t.r2t_outstanding >= max_out || t.digest_failed {
                return;
            }
            let len = (t.want - t.next_r2t).min(max_burst);
            let r2t = R2t {
                lun: t.lun,
                itt: self.itts[i],
                ttt: t.ttt,
                r2t_sn: t.r2t_sn,
                buffer_offset: t.next_r2t,
                desired_length: len,
                ..Default::default()
            };
            t.next_r2t += len;
            t.r2t_sn = t.r2t_sn.wrapping_add(1);
            t.r2t_outstanding += 1;
            let mut bhs = [0u8; BHS_LEN];
            let (stat_sn, exp, max) = (self.seq.stat_sn, self.seq.exp_cmd_sn, self.max_cmd_sn());
            let r2t = R2t {
                stat_sn,
                exp_cmd_sn: exp,
                max_cmd_sn: max,
                ..r2t
            };
            r2t.encode(&mut bhs);
            self.push(bhs, OutData::None, None, false);
            self.r2ts_queued += 1;
            if let Some(t) = self.tasks[i].as_mut() {
                t.r2t_mark = self.r2ts_queued;
            }
        }
    }

    fn on_data_out(&mut self, d: &pdu::DataOut, bhs: &[u8; BHS_LEN], pool: &mut BufferPool) {
        let Some(i) = self.find_data_out_task(d) else {
            return self.on_stray_data_out(d, bhs);
        };
        let Some(t) = self.tasks[i].as_ref() else {
            return;
        };
        if d.data_sn != t.data_out_sn {
            tracing::debug!(
                itt = self.itts[i],
                got = d.data_sn,
                want = t.data_out_sn,
                "Data-Out DataSN out of order"
            );
            self.reject(RejectReason::ProtocolError, bhs);
            return;
        }
        // `on_header` let the data land only where it fits (`data_out_fits`, the same test).
        if !self.data_out_fits(t, d, d.data_segment_length)
            || self.dest == DataDest::Discard && d.data_segment_length > 0
        {
            tracing::debug!(
                itt = self.itts[i],
                offset = d.buffer_offset,
                len = d.data_segment_length,
                "Data-Out outside the data asked for"
            );
            self.reject(RejectReason::ProtocolError, bhs);
            return;
        }
        let Some(t) = self.tasks[i].as_mut() else {
            return;
        };
        t.data_out_sn = t.data_out_sn.wrapping_add(1);
        // In order and within `want` (`data_out_fits`): these bytes are new.
        t.received += d.data_segment_length;
        // Its stall clock restarts once its data has moved on by a good step, not at every
        // Data-Out: a trickle of them (a few bytes of each write now and then) would keep
        // the buffers other sessions wait for as long as the initiator liked.
        if t.received.saturating_sub(t.data_mark) >= STALL_PROGRESS {
            t.data_at = self.clock;
            t.data_mark = t.received;
        }
        if d.final_bit {
            t.data_out_sn = 0;
            if d.ttt != RESERVED_TAG {
                t.r2t_outstanding = t.r2t_outstanding.saturating_sub(1);
            }
        }
        self.send_r2ts(i);
        self.maybe_write_ready(i, pool);
    }

    /// When every wanted byte is in, runs the command (a media write becomes backing-store I/O).
    fn maybe_write_ready(&mut self, i: usize, pool: &mut BufferPool) {
        let Some(t) = self.tasks[i].as_ref() else {
            return;
        };
        if t.state != TaskState::Receiving {
            return;
        }
        if t.digest_failed {
            // RFC 7143 §7.8 (b): once no data it asked for is outstanding (the F bit of each
            // R2T, and all unsolicited data, taken), CHECK CONDITION, PROTOCOL SERVICE CRC ERROR.
            if t.r2t_outstanding == 0 && t.received >= t.next_r2t.min(t.want) {
                let (itt, edtl) = (self.itts[i], t.edtl);
                self.free_task(i, pool);
                let c = Completion::check(SenseReason::ProtocolServiceCrcError);
                self.queue_completion(itt, edtl, &c, None, 0, edtl as usize);
            }
            return;
        }
        if t.received < t.want {
            return;
        }
        // A reset or PREEMPT AND ABORT from another session while the data came in aborts
        // this task too: it must not be written after it.
        let lun = t.lun;
        self.check_mail(lun, None, pool);
        let Some(t) = self.tasks[i].as_ref() else {
            return;
        };
        match t.io {
            Some(mut io) => {
                let plain = matches!(io.kind, IoKind::Write | IoKind::WriteVerify { .. });
                let (itt, edtl, want, buf) = (self.itts[i], t.edtl, t.want as usize, t.buf);
                // COMPARE AND WRITE and WRITE ATOMIC take their data-out whole or not at all.
                if let Some(reason) = io.data_out_mismatch(edtl as usize) {
                    self.free_task(i, pool);
                    return self.queue_completion(
                        itt,
                        edtl,
                        &Completion::check(reason),
                        None,
                        0,
                        edtl as usize,
                    );
                }
                if want < io.data_out_len {
                    if plain {
                        // Write what arrived: when the initiator sends less than the CDB asks
                        // for (EDTL < transfer length), the whole blocks received are written
                        // and the response reports the overflow.
                        let block = io
                            .byte_len
                            .checked_div(io.blocks.0 as usize)
                            .unwrap_or(512)
                            .max(1);
                        io.byte_len = want / block * block;
                    } else {
                        // Parameter lists (UNMAP, EXTENDED COPY) are parsed as far as they came;
                        // a short WRITE SAME or ORWRITE pattern is refused.
                        if !matches!(io.kind, IoKind::Unmap | IoKind::ExtendedCopy) {
                            self.free_task(i, pool);
                            let c = Completion::check(SenseReason::InvalidFieldInCdb(
                                FieldPointer::byte(0),
                            ));
                            return self.queue_completion(itt, edtl, &c, None, 0, edtl as usize);
                        }
                        io.data_out_len = want;
                    }
                }
                if let Some(t) = self.tasks[i].as_mut() {
                    t.state = TaskState::Io;
                }
                if plain && io.byte_len == 0 {
                    return self.io_done(i as u16, IoResult::Ok, pool);
                }
                if let Some(t) = self.tasks[i].as_mut() {
                    t.io = Some(io);
                }
                self.io.push_back(IoWork {
                    task: i as u16,
                    buf,
                    req: io,
                });
            }
            None => {
                let want = t.want as usize;
                let data: Vec<u8> = match t.buf {
                    Some(b) => pool.slice(b).get(..want).unwrap_or(&[]).to_vec(),
                    None => Vec::new(),
                };
                self.run_command(i, &data, pool);
            }
        }
    }

    /// Executes a command whose data-out (if any) is complete.
    fn run_command(&mut self, i: usize, data_out: &[u8], pool: &mut BufferPool) {
        let Some(t) = self.tasks[i].as_mut() else {
            return;
        };
        let Some(target) = self.target.as_ref() else {
            return;
        };
        let req = Request {
            lun: t.lun.to_be_bytes(),
            cdb: &t.cdb,
            data_out,
        };
        let outcome = match t.buf {
            Some(b) => exec(target, &mut self.nexus, &req, pool.slice(b)),
            None => exec(target, &mut self.nexus, &req, &mut []),
        };
        match outcome {
            Outcome::Done(c) if c.status == Status::Good && is_preempt_and_abort(&t.cdb) => {
                match target.lun_index(req.lun).map(|at| target.luns[at].clone()) {
                    Some(l) => {
                        // Its mail is posted: writes not yet started find it; wait for those
                        // in flight.
                        l.shared.begin_reset();
                        t.state = TaskState::Io;
                        self.pr_held.push((i, c, l));
                    }
                    None => self.finish(i, &c, pool),
                }
            }
            Outcome::Done(c) => self.finish(i, &c, pool),
            // VERIFY with BYTCHK compares its data-out whole: a shorter one (EDTL below the
            // transfer length) is refused, as a short WRITE SAME or ORWRITE pattern is, so no
            // block is compared with what the buffer held before.
            Outcome::Io(io)
                if io.kind == (IoKind::Verify { bytchk: true })
                    && data_out.len() < io.data_out_len =>
            {
                let c = Completion::check(SenseReason::InvalidFieldInCdb(FieldPointer::byte(0)));
                self.finish(i, &c, pool)
            }
            Outcome::Io(io) => {
                // VERIFY reads the medium into its buffer (`buffer_len`), with or without BYTCHK.
                let needs_buf = matches!(
                    io.kind,
                    IoKind::Read
                        | IoKind::Write
                        | IoKind::WriteVerify { .. }
                        | IoKind::Verify { .. }
                );
                // A read larger than the buffer the EDTL chose (an overflow): take a bigger one.
                if needs_buf
                    && t.buf.is_none_or(|b| io.byte_len > pool.len_of(b))
                    && io.kind == IoKind::Read
                {
                    if let Some(b) = t.buf.take() {
                        pool.release(b);
                    }
                    t.buf = pool.alloc(io.byte_len);
                }
                if needs_buf && t.buf.is_none_or(|b| io.byte_len > pool.len_of(b)) {
                    // No buffer that large free now: TASK SET FULL, the initiator retries (one
                    // larger than any buffer cannot be retried into one).
                    let c = if io.byte_len <= pool.max_len() {
                        Completion::task_set_full()
                    } else {
                        Completion::check(SenseReason::InternalTargetFailure)
                    };
                    return self.finish(i, &c, pool);
                }
                // VERIFY with BYTCHK takes the data-out it compares: more than that (EDTL above
                // its transfer length) is an underflow the response reports.
                if io.kind == (IoKind::Verify { bytchk: true }) {
                    t.transfer = io.data_out_len.min(u32::MAX as usize) as u32;
                }
                t.state = TaskState::Io;
                t.io = Some(io);
                self.io.push_back(IoWork {
                    task: i as u16,
                    buf: t.buf,
                    req: io,
                });
            }
        }
    }

    /// The data thread finished a task's backing-store I/O.
    pub fn io_done(&mut self, task: u16, result: IoResult, pool: &mut BufferPool) {
        let i = usize::from(task);
        let Some(t) = self.tasks.get_mut(i).and_then(Option::as_mut) else {
            return;
        };
        let Some(io) = t.io else { return };
        if t.aborted {
            self.free_task(i, pool);
            return;
        }
        let c = scsi::complete_io(&io, result);
        self.finish(i, &c, pool);
    }

    /// The data thread says a task's read data is all zeroes without having written its buffer
    /// (a LUN without backing store); [`Self::io_done`] follows.
    pub fn zero_data(&mut self, task: u16) {
        if let Some(t) = self
            .tasks
            .get_mut(usize::from(task))
            .and_then(Option::as_mut)
        {
            t.zeroes = true;
        }
    }

    /// The data thread finished a task with a completion of its own (multi-step commands:
    /// EXTENDED COPY, GET LBA STATUS, ...).
    pub fn finish_with(&mut self, task: u16, c: &Completion, pool: &mut BufferPool) {
        let i = usize::from(task);
        match self.tasks.get(i).and_then(Option::as_ref) {
            Some(t) if t.aborted => self.free_task(i, pool),
            Some(_) => self.finish(i, c, pool),
            None => {}
        }
    }

    /// Queues the response of a finished task: Data-In from its buffer, then status.
    fn finish(&mut self, i: usize, c: &Completion, pool: &mut BufferPool) {
        let Some(t) = self.tasks[i].as_mut() else {
            return;
        };
        t.state = TaskState::Sending;
        let (itt, edtl, buf) = (self.itts[i], t.edtl, t.buf);
        let writes = t.transfer > 0 || is_media_write(&t.cdb);
        let (data_in, transfer) = if writes {
            (0, t.transfer as usize)
        } else {
            (c.data_len, c.data_len)
        };
        // A write whose CDB wants data-out but that took none: sent without the W bit (with
        // it and an EDTL it takes min(EDTL, transfer) > 0), it has no data-out buffer, so all
        // its CDB wanted is an overflow, never a GOOD without residual for blocks not written.
        let edtl = if writes && t.want == 0 && t.transfer > 0 {
            0
        } else {
            edtl
        };
        self.queue_completion(itt, edtl, c, buf.map(|b| (b, i as u16)), data_in, transfer);
        if self.tasks[i].as_ref().is_some_and(|t| t.sends_pending == 0) {
            self.free_task(i, pool);
        }
    }

    /// Queues Data-In (split at the initiator's MaxRecvDataSegmentLength, sequences at
    /// MaxBurstLength) and the status, carried in the last Data-In when there is no sense.
    fn queue_completion(
        &mut self,
        itt: u32,
        edtl: u32,
        c: &Completion,
        buf: Option<(BufId, u16)>,
        data_in: usize,
        produced: usize,
    ) {
        let sent = data_in.min(edtl as usize);
        let (under, over, residual) = match produced.cmp(&(edtl as usize)) {
            std::cmp::Ordering::Less => (true, false, edtl - produced as u32),
            std::cmp::Ordering::Greater => (
                false,
                true,
                (produced - edtl as usize).min(u32::MAX as usize) as u32,
            ),
            std::cmp::Ordering::Equal => (false, false, 0),
        };
        let status_in_data = c.sense.is_none() && sent > 0;
        if let Some((b, task)) = buf.filter(|_| sent > 0) {
            let mrdsl = self.params.initiator_max_recv_data_segment_length.max(512) as usize;
            let burst = self.params.max_burst_length.max(512) as usize;
            let mut offset = 0;
            let mut data_sn = 0u32;
            while offset < sent {
                let burst_end = ((offset / burst) + 1) * burst;
                let len = (sent - offset).min(mrdsl).min(burst_end - offset);
                let last = offset + len == sent;
                let mut d = DataIn {
                    final_bit: last || offset + len == burst_end,
                    itt,
                    ttt: RESERVED_TAG,
                    data_sn,
                    buffer_offset: offset as u32,
                    exp_cmd_sn: self.seq.exp_cmd_sn,
                    max_cmd_sn: self.max_cmd_sn(),
                    ..Default::default()
                };
                if last && status_in_data {
                    d.status_present = true;
                    d.final_bit = true;
                    d.status = c.status as u8;
                    d.underflow = under;
                    d.overflow = over;
                    d.residual_count = residual;
                    d.stat_sn = self.next_stat_sn();
                }
                d.data_segment_length = len as u32;
                let mut bhs = [0u8; BHS_LEN];
                d.encode(&mut bhs);
                let mut zeroes = false;
                if let Some(t) = self
                    .tasks
                    .get_mut(usize::from(task))
                    .and_then(Option::as_mut)
                {
                    t.sends_pending += 1;
                    zeroes = t.zeroes;
                }
                let data = if zeroes {
                    OutData::Zeroes { len }
                } else {
                    OutData::Slot {
                        buf: b,
                        offset,
                        len,
                    }
                };
                self.push(bhs, data, Some(task), false);
                data_sn = data_sn.wrapping_add(1);
                offset += len;
            }
        }
        if !status_in_data {
            self.queue_response(
                itt,
                edtl,
                c.status,
                c.sense.as_ref().map(|s| s.as_bytes()),
                residual,
                if under {
                    1
                } else if over {
                    2
                } else {
                    0
                },
            );
        }
    }

    /// A SCSI Response PDU. `flow`: 0 none, 1 underflow, 2 overflow.
    /// TASK SET FULL: no task slot or buffer for the command; the initiator sends it again.
    fn task_set_full(&mut self, cmd: &ScsiCommand) {
        self.queue_response(
            cmd.itt,
            cmd.expected_data_length,
            Status::TaskSetFull,
            None,
            0,
            0,
        );
    }

    fn queue_response(
        &mut self,
        itt: u32,
        _edtl: u32,
        status: Status,
        sense: Option<&[u8]>,
        residual: u32,
        flow: u8,
    ) {
        let (stat_sn, exp_cmd_sn, max_cmd_sn) = self.status_sns();
        let mut r = ScsiResponse {
            status: status as u8,
            itt,
            underflow: flow == 1,
            overflow: flow == 2,
            residual_count: if flow == 0 { 0 } else { residual },
            stat_sn,
            exp_cmd_sn,
            max_cmd_sn,
            ..Default::default()
        };
        let data = match sense {
            Some(s) => {
                let mut bytes = [0u8; MAX_SENSE_SEGMENT];
                let n = s.len().min(MAX_SENSE_SEGMENT - 2);
                bytes[..2].copy_from_slice(&(n as u16).to_be_bytes());
                bytes[2..2 + n].copy_from_slice(&s[..n]);
                r.data_segment_length = (n + 2) as u32;
                OutData::Sense { bytes, len: n + 2 }
            }
            None => OutData::None,
        };
        let mut bhs = [0u8; BHS_LEN];
        r.encode(&mut bhs);
        self.push(bhs, data, None, false);
    }

    /// StatSN (taken: the next status PDU gets the next one), ExpCmdSN and MaxCmdSN for a
    /// status-bearing PDU.
    fn status_sns(&mut self) -> (u32, u32, u32) {
        let stat_sn = self.next_stat_sn();
        (stat_sn, self.seq.exp_cmd_sn, self.max_cmd_sn())
    }

    fn next_stat_sn(&mut self) -> u32 {
        let s = self.seq.stat_sn;
        self.seq.stat_sn = s.wrapping_add(1);
        s
    }

    /// Releases a task and its buffer (only when nothing in flight points into the buffer).
    fn free_task(&mut self, i: usize, pool: &mut BufferPool) {
        let Some(t) = self.tasks.get_mut(i).and_then(Option::take) else {
            return;
        };
        self.itts[i] = RESERVED_TAG;
        self.busy -= 1;
        // Its place in the wait for a buffer goes with it: the slot (and, once the abort is
        // answered, the tag) may be taken by a new command before a buffer comes.
        if t.state == TaskState::Waiting {
            self.buffer_wait.retain(|&(j, _)| j != i);
        }
        if t.spill > 0 {
            pool.return_spill(t.spill as usize);
        }
        if let Some(b) = t.buf {
            pool.release(b);
            // A command of its own that its share held back may take one now: what it needs is
            // kept from newcomers until the data thread shares the free buffers out.
            if let Some(len) = self.wait_len(pool) {
                pool.note_waiting(len);
            }
        }
        if !self.tmf_held.is_empty() {
            self.tmf_task_ended(i);
        }
        if self.logout_held.is_some() {
            self.maybe_answer_logout();
        }
    }

    /// Task slot `i` was freed: the task management answers waiting for it and nothing else
    /// are queued, in the order the requests came.
    fn tmf_task_ended(&mut self, i: usize) {
        let mut at = 0;
        while at < self.tmf_held.len() {
            let h = &mut self.tmf_held[at];
            h.tasks.retain(|&x| usize::from(x) != i);
            if h.tasks.is_empty() && h.luns.is_empty() {
                let h = self.tmf_held.remove(at);
                self.tmf_response(h.itt, h.response);
            } else {
                at += 1;
            }
        }
    }

    /// Whether task `task` was aborted (its I/O, if not started, is not to be started).
    pub fn aborted(&self, task: u16) -> bool {
        self.tasks
            .get(usize::from(task))
            .and_then(Option::as_ref)
            .is_some_and(|t| t.aborted)
    }

    /// The data thread sent a PDU: a task whose last Data-In went out is released.
    pub fn sent(&mut self, pdu: &OutPdu, pool: &mut BufferPool) {
        let Some(task) = pdu.task else { return };
        let i = usize::from(task);
        let Some(t) = self.tasks.get_mut(i).and_then(Option::as_mut) else {
            return;
        };
        t.sends_pending = t.sends_pending.saturating_sub(1);
        if t.sends_pending == 0 && t.state == TaskState::Sending {
            self.free_task(i, pool);
        }
    }

    /// Picks up reservation effects other sessions posted for this LUN: unit attentions for
    /// this nexus, and PREEMPT AND ABORT of its tasks.
    /// `arriving` is the task of the command being taken now, made for its data before the mail
    /// was read: the command came after the reset or preemption, so it is not aborted by it (it
    /// meets the unit attention instead).
    fn check_mail(&mut self, lun: u64, arriving: Option<usize>, pool: &mut BufferPool) {
        let Some(target) = self.target.as_ref() else {
            return;
        };
        let Some((i, id)) = target.lun_at(lun.to_be_bytes()) else {
            return;
        };
        let (shared, seen, Some(&key)) = (
            &target.luns[i].shared,
            self.mail_seen.get(i).copied().unwrap_or(0),
            self.mail_keys.get(i),
        ) else {
            return;
        };
        if shared.mail_seq() == seen {
            return;
        }
        let (seq, inbox) = shared.take_mail(key);
        if let Some(s) = self.mail_seen.get_mut(i) {
            *s = seq;
        }
        // Whether this nexus has commands on the LUN that came before the mail and are not
        // answered yet (a CLEAR TASK SET of another nexus then reports their loss; one whose
        // status is queued loses nothing).
        let had_tasks = self.tasks.iter().enumerate().any(|(t, x)| {
            Some(t) != arriving
                && x.as_ref()
                    .is_some_and(|x| x.lun == lun && x.state != TaskState::Sending)
        });
        for n in inbox.notes {
            match n {
                Note::Attention(r) => self.nexus.post(id, r),
                Note::Cleared if had_tasks => self
                    .nexus
                    .post(id, SenseReason::CommandsClearedByAnotherInitiator),
                Note::Cleared => {}
            }
        }
        let abort = inbox.aborts;
        if abort {
            for t in 0..self.tasks.len() {
                if Some(t) != arriving && self.tasks[t].as_ref().is_some_and(|x| x.lun == lun) {
                    self.abort(t, pool);
                }
            }
        }
    }

    /// The I_T nexus ends (logout, drop): reservations drop what SPC says.
    pub fn nexus_lost(&mut self) {
        if let Some(target) = self.target.as_ref() {
            nexus_lost(target, self.nexus.id());
        }
    }

    /// SCSI commands received and not yet answered.
    pub fn tasks_in_flight(&self) -> u32 {
        self.busy
    }

    /// The LUN field of a task.
    pub fn task_lun(&self, task: u16) -> u64 {
        self.tasks
            .get(usize::from(task))
            .and_then(Option::as_ref)
            .map_or(0, |t| t.lun)
    }

    /// Frees every task and buffer (the connection is going away; nothing is in flight), and
    /// ends the waits of its resets.
    pub fn release_all(&mut self, pool: &mut BufferPool) {
        for i in 0..self.tasks.len() {
            self.free_task(i, pool);
        }
        self.buffer_wait.clear();
        for (_, _, l) in self.pr_held.drain(..) {
            l.shared.abandon_reset();
        }
        for h in self.tmf_held.drain(..) {
            for l in h.luns {
                l.shared.abandon_reset();
            }
        }
    }

    /// Whether task `task`'s write to LUN `at` (its index in the target's list) may still go
    /// on, once it is counted in flight on the LUN ([`LunShared::write_start`]) or holds its
    /// range there: the LUN's mail is looked at again. A reset whose wait did not see it
    /// counted has ended by then ([`LunShared::reset_done`]), and its mail, posted before,
    /// is seen (`write_start` read what the reset's end wrote): the task it aborted is not
    /// written after the reset was answered. One atomic load when no mail came.
    ///
    /// [`LunShared::write_start`]: super::shared::LunShared::write_start
    /// [`LunShared::reset_done`]: super::shared::LunShared::reset_done
    pub fn may_write(&mut self, task: u16, at: usize) -> bool {
        self.mark_if_mail_aborts(task, at);
        !self.aborted(task)
    }

    /// Before a task's backing-store I/O starts after a wait: whether mail of its LUN this
    /// connection has not taken yet (a reset by another session, PREEMPT AND ABORT) aborts
    /// its tasks there; if so the task is marked aborted ([`Conn::aborted`]).
    /// The data thread calls this between PDUs, while a receive may be filling a task's
    /// buffer: no task is freed here, and the mail is left for the next command or Data-Out
    /// to take whole (`Conn::check_mail`: unit attentions, the other tasks aborted).
    pub fn check_task_mail(&mut self, task: u16) {
        let at = self
            .tasks
            .get(usize::from(task))
            .and_then(Option::as_ref)
            .zip(self.target.as_ref())
            .and_then(|(t, target)| target.lun_at(t.lun.to_be_bytes()))
            .map(|(at, _)| at);
        if let Some(at) = at {
            self.mark_if_mail_aborts(task, at);
        }
    }

    /// Marks task `task` aborted if mail of LUN `at` not taken yet aborts this nexus's tasks
    /// there (one atomic load when none came); takes nothing (see [`Conn::check_task_mail`]).
    fn mark_if_mail_aborts(&mut self, task: u16, at: usize) {
        let Some(shared) = self
            .target
            .as_ref()
            .and_then(|t| t.luns.get(at))
            .map(|l| &l.shared)
        else {
            return;
        };
        let seen = self.mail_seen.get(at).copied().unwrap_or(0);
        let Some(&key) = self.mail_keys.get(at) else {
            return;
        };
        if shared.mail_seq() == seen {
            return;
        }
        let Some(t) = self
            .tasks
            .get_mut(usize::from(task))
            .and_then(Option::as_mut)
            .filter(|t| !t.aborted)
        else {
            return;
        };
        let (aborts, cleared) = shared.peek_mail(key);
        if !aborts {
            return;
        }
        t.aborted = true;
        // The task may be gone before the mail is taken (`check_mail`, which reports a CLEAR
        // TASK SET to a nexus that had tasks then): its loss is reported now.
        let id = self
            .target
            .as_ref()
            .and_then(|t| t.luns.get(at))
            .and_then(|l| u16::try_from(l.id).ok());
        if cleared && let Some(id) = id {
            self.nexus
                .post(id, SenseReason::CommandsClearedByAnotherInitiator);
        }
    }

    // ---------------------------------------------------------------- other PDUs

    fn on_nop_out(&mut self, n: &pdu::NopOut) {
        if !self.take_cmd_sn(n.immediate, n.cmd_sn) {
            return;
        }
        if n.itt == RESERVED_TAG {
            return; // an answer to our ping
        }
        let mut data = std::mem::take(&mut self.inline);
        // The reflected ping data is limited to the initiator's MaxRecvDataSegmentLength
        // (RFC 7143 §11.18.3), which may be below ours.
        data.truncate(self.params.initiator_max_recv_data_segment_length.max(512) as usize);
        let (stat_sn, exp_cmd_sn, max_cmd_sn) = self.status_sns();
        let nop = NopIn {
            lun: n.lun,
            itt: n.itt,
            ttt: RESERVED_TAG,
            stat_sn,
            exp_cmd_sn,
            max_cmd_sn,
            data_segment_length: data.len() as u32,
            ..Default::default()
        };
        let mut bhs = [0u8; BHS_LEN];
        nop.encode(&mut bhs);
        self.push(bhs, OutData::bytes(data), None, false);
        self.inline = Vec::with_capacity(
            self.params.target_max_recv_data_segment_length.min(1 << 20) as usize,
        );
    }

    /// Asks the initiator to log out within `seconds` (Async Message, AsyncEvent 1).
    pub fn request_logout(&mut self, seconds: u16) {
        let (stat_sn, exp_cmd_sn, max_cmd_sn) = self.status_sns();
        let m = AsyncMessage {
            lun: 0,
            itt: RESERVED_TAG,
            stat_sn,
            exp_cmd_sn,
            max_cmd_sn,
            async_event: 1,
            parameter3: seconds,
            ..Default::default()
        };
        let mut bhs = [0u8; BHS_LEN];
        m.encode(&mut bhs);
        self.push(bhs, OutData::None, None, false);
    }

    /// A target-initiated NOP-In ping (the idle timer's probe).
    pub fn ping(&mut self) {
        let nop = NopIn {
            lun: 0,
            itt: RESERVED_TAG,
            ttt: 0x7fff_fffe,
            stat_sn: self.seq.stat_sn,
            exp_cmd_sn: self.seq.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn(),
            ..Default::default()
        };
        let mut bhs = [0u8; BHS_LEN];
        nop.encode(&mut bhs);
        self.push(bhs, OutData::None, None, false);
    }

    fn on_tmf(&mut self, t: &TaskMgmtRequest, bhs: &[u8; BHS_LEN], pool: &mut BufferPool) {
        let exp = self.seq.exp_cmd_sn;
        if !self.take_cmd_sn(t.immediate, t.cmd_sn) {
            return;
        }
        // Its tag must not be one still in use, by a command or by a task management request
        // waiting for its answer: two held requests with one tag would share (and miscount)
        // the tasks each waits for, and neither might ever be answered.
        if self.find_itt(t.itt).is_some() || self.tmf_held.iter().any(|h| h.itt == t.itt) {
            self.reject(RejectReason::TaskInProgress, bhs);
            return;
        }
        use crate::iscsi::pdu::TmfFunction as F;
        let function = F::from_u8(t.function);
        let mut reset = Vec::new();
        // The aborted tasks whose I/O is in flight: the answer waits for them.
        let mut waiting: Vec<u16> = Vec::new();
        let response: u8 = match function {
            Some(F::AbortTask) => match self.find_itt(t.referenced_task_tag) {
                Some(i) => {
                    self.abort_for(i, &mut waiting, pool);
                    0
                }
                // A command not received yet: its CmdSN is taken as received.
                None if self.plug_cmd_sn(exp, t.ref_cmd_sn, t.cmd_sn) => 0,
                None => 1, // task does not exist (also the answer when it already completed)
            },
            // A LUN the target does not have: LUN does not exist (RFC 7143 §11.6.1).
            Some(F::AbortTaskSet) | Some(F::ClearTaskSet) | Some(F::ClearAca)
                if self
                    .target
                    .as_ref()
                    .is_none_or(|target| target.lun_at(t.lun.to_be_bytes()).is_none()) =>
            {
                2
            }
            Some(F::AbortTaskSet) | Some(F::ClearTaskSet) => {
                for i in 0..self.tasks.len() {
                    if self.tasks[i].as_ref().is_some_and(|x| x.lun == t.lun) {
                        self.abort_for(i, &mut waiting, pool);
                    }
                }
                // CLEAR TASK SET clears the commands of every I_T nexus, whatever the TST
                // (SAM-5 7.6); ABORT TASK SET only the issuing nexus's.
                if function == Some(F::ClearTaskSet) {
                    reset = self.clear_task_set(t.lun);
                }
                0
            }
            Some(F::LogicalUnitReset) | Some(F::TargetWarmReset) => {
                let lun_only = function == Some(F::LogicalUnitReset);
                for i in 0..self.tasks.len() {
                    if self.tasks[i]
                        .as_ref()
                        .is_some_and(|x| !lun_only || x.lun == t.lun)
                    {
                        self.abort_for(i, &mut waiting, pool);
                    }
                }
                match (lun_only, scsi::decode_lun(t.lun.to_be_bytes())) {
                    (true, Some(id))
                        if self
                            .target
                            .as_ref()
                            .is_some_and(|t| t.server.lun(id).is_some()) =>
                    {
                        reset = self.reset_lun(Some(id), SenseReason::BusDeviceResetFunction);
                        0
                    }
                    (true, _) => 2, // LUN does not exist
                    (false, _) => {
                        reset = self.reset_lun(None, SenseReason::PowerOnReset);
                        0
                    }
                }
            }
            // Allegiance reassignment needs ErrorRecoveryLevel 2; vit negotiates 0.
            Some(F::TaskReassign) => 4,
            // TARGET COLD RESET, CLEAR ACA (NACA is not supported: no ACA to clear), and the
            // functions of RFC 7144 (QUERY TASK and the rest): Task management function not
            // supported.
            _ => 5,
        };
        if waiting.is_empty() && reset.is_empty() {
            self.tmf_response(t.itt, response);
        } else {
            self.tmf_held.push(HeldTmf {
                itt: t.itt,
                response,
                tasks: waiting,
                luns: reset,
            });
        }
    }

    /// Whether a reset's answer waits for other sessions' writes ([`Conn::poll_resets`]).
    pub fn resets_pending(&self) -> bool {
        self.tmf_held.iter().any(|h| !h.luns.is_empty()) || !self.pr_held.is_empty()
    }

    /// Looks again whether the writes a reset waits for have ended (the data thread calls this
    /// while [`Conn::resets_pending`]); true when an answer was queued.
    pub fn poll_resets(&mut self, pool: &mut BufferPool) -> bool {
        let mut answered = false;
        let mut at = 0;
        while at < self.pr_held.len() {
            if !self.pr_held[at].2.shared.reset_done() {
                at += 1;
                continue;
            }
            let (i, c, _) = self.pr_held.swap_remove(at);
            // An ABORT TASK or a logout may have aborted it meanwhile: then it goes unanswered.
            if self.tasks[i].as_ref().is_some_and(|t| t.aborted) {
                self.free_task(i, pool);
            } else {
                self.finish(i, &c, pool);
            }
            answered = true;
        }
        let mut i = 0;
        while i < self.tmf_held.len() {
            let h = &mut self.tmf_held[i];
            h.luns.retain(|l| !l.shared.reset_done());
            if h.luns.is_empty() && h.tasks.is_empty() {
                let h = self.tmf_held.remove(i);
                self.tmf_response(h.itt, h.response);
                answered = true;
            } else {
                i += 1;
            }
        }
        if answered {
            self.maybe_answer_logout();
        }
        answered
    }

    fn tmf_response(&mut self, itt: u32, response: u8) {
        let (stat_sn, exp_cmd_sn, max_cmd_sn) = self.status_sns();
        let r = TaskMgmtResponse {
            response,
            itt,
            stat_sn,
            exp_cmd_sn,
            max_cmd_sn,
            ..Default::default()
        };
        let mut bhs = [0u8; BHS_LEN];
        r.encode(&mut bhs);
        self.push(bhs, OutData::None, None, false);
    }

    /// A LUN reset (`Some`) or target reset (`None`): RESERVE(6/10) reservations are released
    /// and every session of the LUN(s), on any thread, gets the unit attention and loses its
    /// tasks there. Returns the LUNs reset, each now waiting for the writes in flight on it
    /// (its answer waits for them too: no write a reset aborted lands after it).
    fn reset_lun(
        &mut self,
        lun: Option<u16>,
        reason: SenseReason,
    ) -> Vec<Arc<super::runtime::LunRt>> {
        let Some(target) = self.target.as_ref() else {
            return Vec::new();
        };
        let mut reset = Vec::new();
        for l in target
            .luns
            .iter()
            .filter(|l| lun.is_none_or(|id| l.id == u64::from(id)))
        {
            let mut pr = l.shared.lock_pr();
            pr.reset();
            l.shared.settle(&mut pr);
            drop(pr);
            l.shared.post(Mail::Reset {
                reason,
                from: self.nexus.id().clone(),
            });
            if let Ok(id) = u16::try_from(l.id) {
                self.nexus.post(id, reason);
            }
            // After the mail: a write that does not wait for the reset finds the mail.
            l.shared.begin_reset();
            reset.push(l.clone());
        }
        reset
    }

    /// CLEAR TASK SET: every other session of LUN `lun` loses its tasks there (and, having
    /// had any, gets COMMANDS CLEARED BY ANOTHER INITIATOR) when it next looks at the LUN's
    /// mail; reservations and other unit attentions stay. Returns the LUN, now waiting, as a
    /// reset does, for the writes in flight on it (the answer waits for them).
    fn clear_task_set(&mut self, lun: u64) -> Vec<Arc<super::runtime::LunRt>> {
        let Some((at, _)) = self
            .target
            .as_ref()
            .and_then(|target| target.lun_at(lun.to_be_bytes()))
        else {
            return Vec::new();
        };
        let Some(l) = self.target.as_ref().map(|target| target.luns[at].clone()) else {
            return Vec::new();
        };
        l.shared.post(Mail::Clear {
            from: self.nexus.id().clone(),
        });
        // After the mail: a write that does not wait for the clear finds the mail.
        l.shared.begin_reset();
        vec![l]
    }

    /// Aborts a task: no response will be sent for it.
    fn abort(&mut self, i: usize, pool: &mut BufferPool) {
        self.abort_for(i, &mut Vec::new(), pool);
    }

    /// Aborts task `i`; one whose backing-store I/O is in flight (aborted before or not) is
    /// added to `in_flight`, the tasks a task management answer then waits for.
    fn abort_for(&mut self, i: usize, in_flight: &mut Vec<u16>, pool: &mut BufferPool) {
        let Some(t) = self.tasks[i].as_mut() else {
            return;
        };
        match t.state {
            TaskState::Waiting | TaskState::Receiving => self.free_task(i, pool),
            // I/O or sends in flight point into the buffer: free it when they finish.
            TaskState::Io => {
                t.aborted = true;
                in_flight.push(i as u16);
            }
            // Its status is queued already, ahead of any answer to the abort.
            TaskState::Sending => t.aborted = true,
        }
    }

    fn on_text(&mut self, t: &pdu::TextRequest, bhs: &[u8; BHS_LEN]) {
        if !self.take_cmd_sn(t.immediate, t.cmd_sn) {
            return;
        }
        // RFC 7143 §11.10.2: a request continued (C) is not final (F); the text it would have
        // continued is dropped with it.
        if t.final_bit && t.cont {
            tracing::debug!(itt = t.itt, "Text Request with F and C both set: rejected");
            self.text.clear();
            self.text_overflow = false;
            return self.reject(RejectReason::ProtocolError, bhs);
        }
        let mrdsl = self.params.initiator_max_recv_data_segment_length.max(512) as usize;
        let mut resp = TextResponse {
            final_bit: true,
            itt: t.itt,
            ttt: RESERVED_TAG,
            ..Default::default()
        };
        let body = match self.text_out.take() {
            // The initiator asks for the rest of a long response.
            Some((text, at, ttt)) if t.ttt == ttt && self.inline.is_empty() => {
                let end = (at + mrdsl).min(text.len());
                let chunk = text[at..end].to_vec();
                if end < text.len() {
                    resp.final_bit = false;
                    resp.cont = true;
                    resp.ttt = ttt;
                    self.text_out = Some((text, end, ttt));
                }
                chunk
            }
            _ => {
                // A request continued past the limit is refused whole at its last PDU (taking
                // only its tail would answer a request the initiator never made).
                if self.text_overflow
                    || self.text.len() + self.inline.len() > super::discovery::MAX_TEXT_REQUEST
                {
                    self.text.clear();
                    self.text_overflow = t.cont;
                    if !t.cont {
                        tracing::debug!(itt = t.itt, "Text Request longer than 64 KiB: rejected");
                        return self.reject(RejectReason::ProtocolError, bhs);
                    }
                } else {
                    self.text.extend_from_slice(&self.inline);
                }
                if t.cont {
                    resp.final_bit = false;
                    resp.ttt = self.fresh_ttt();
                    Vec::new()
                } else {
                    let request = std::mem::take(&mut self.text);
                    let answer = match super::discovery::answer_text(
                        &request,
                        &self.target_list(),
                        self.local_addr,
                    ) {
                        Ok(answer) => answer,
                        // A text breaking RFC 7143 §6.1 (a key repeated, a pair without `=`):
                        // a protocol error, nothing of it taken.
                        Err(e) => {
                            tracing::debug!(itt = t.itt, "Text Request: {e}: rejected");
                            return self.reject(RejectReason::ProtocolError, bhs);
                        }
                    };
                    // A discovery session takes only Text Requests with SendTargets (RFC 7143
                    // §4.3: all other requests MUST be rejected).
                    if self.target.is_none() && !answer.send_targets {
                        tracing::debug!(itt = t.itt, "discovery Text Request without SendTargets");
                        return self.reject(RejectReason::ProtocolError, bhs);
                    }
                    // A new MaxRecvDataSegmentLength holds for every PDU queued from here on:
                    // the Data-In of tasks that end later is cut to it. PDUs queued before
                    // (whole Data-In sequences of tasks already answered) go out ahead of this
                    // response, under the value in force when they were cut. This response
                    // keeps within both values.
                    let mut mrdsl = mrdsl;
                    if let Some(n) = answer.max_recv_data_segment_length {
                        mrdsl = mrdsl.min(n as usize);
                        self.params.initiator_max_recv_data_segment_length = n;
                    }
                    if let Some(alias) = answer.initiator_alias {
                        self.params.initiator_alias = Some(alias);
                    }
                    let text = answer.text;
                    if text.len() > mrdsl {
                        let ttt = self.fresh_ttt();
                        resp.final_bit = false;
                        resp.cont = true;
                        resp.ttt = ttt;
                        let chunk = text[..mrdsl].to_vec();
                        self.text_out = Some((text, mrdsl, ttt));
                        chunk
                    } else {
                        text
                    }
                }
            }
        };
        resp.stat_sn = self.next_stat_sn();
        resp.exp_cmd_sn = self.seq.exp_cmd_sn;
        resp.max_cmd_sn = self.max_cmd_sn();
        resp.data_segment_length = body.len() as u32;
        let mut bhs = [0u8; BHS_LEN];
        resp.encode(&mut bhs);
        self.push(bhs, OutData::bytes(body), None, false);
    }

    fn fresh_ttt(&mut self) -> u32 {
        let t = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1).max(1);
        if self.next_ttt == RESERVED_TAG || self.next_ttt == 1 {
            self.next_ttt = 1;
            self.ttt_wrapped = true;
        }
        t
    }

    /// Whether vitd may have given `ttt` on this connection.
    fn ttt_given(&self, ttt: u32) -> bool {
        ttt != RESERVED_TAG && (self.ttt_wrapped || (1..self.next_ttt).contains(&ttt))
    }

    /// The targets visible in a normal session's SendTargets: the session's own.
    fn target_list(&self) -> Vec<super::discovery::TargetEntry> {
        match &self.target {
            Some(t) => vec![super::discovery::TargetEntry::of(t)],
            None => self.visible.clone(),
        }
    }

    /// A Logout Request ends the connection's tasks (ErrorRecoveryLevel 0, one connection per
    /// session: the session closes): RFC 7143 §11.14 and §6.5, every pending command is
    /// terminated, acknowledged or not, and no further response comes for it. Its answer says
    /// the cleanup is done (RFC 7143 §11.15), so it waits until no task's backing-store I/O is
    /// in flight and no task management answer is held ([`Conn::maybe_answer_logout`]): no
    /// write of this connection lands after it.
    fn on_logout(&mut self, l: &pdu::LogoutRequest, pool: &mut BufferPool) {
        if !self.take_cmd_sn(l.immediate, l.cmd_sn) {
            return;
        }
        self.logging_out = true;
        for i in 0..self.tasks.len() {
            self.abort(i, pool);
        }
        self.logout_held = Some(l.itt);
        self.maybe_answer_logout();
    }

    /// The initiator's stream ended (it half-closed its side: it sends nothing more): a PDU cut
    /// short there goes, with the task made for its data, and the tasks waiting for more of its
    /// Data-Out or for a buffer end unanswered as at the connection's end (a write whose data
    /// is not all in cannot run; one waiting for a buffer would take one other sessions need
    /// while its connection goes). The commands it sent whole have all they need: they run on
    /// and are answered, and the data thread closes the connection once [`Conn::finished`].
    pub fn end_input(&mut self, pool: &mut BufferPool) {
        self.mid_pdu = false;
        self.dest = DataDest::Discard;
        if let Some(i) = self.header_task.take() {
            self.free_task(i, pool);
        }
        for i in 0..self.tasks.len() {
            if self.tasks[i]
                .as_ref()
                .is_some_and(|t| matches!(t.state, TaskState::Waiting | TaskState::Receiving))
            {
                self.free_task(i, pool);
            }
        }
    }

    /// Nothing of the connection is left to answer: no task, no held answer, nothing queued
    /// to send.
    pub fn finished(&self) -> bool {
        self.busy == 0
            && self.out.is_empty()
            && self.tmf_held.is_empty()
            && self.pr_held.is_empty()
            && self.logout_held.is_none()
    }

    /// Queues the held Logout Response once nothing of the connection is left to end.
    fn maybe_answer_logout(&mut self) {
        let Some(itt) = self.logout_held else {
            return;
        };
        if !self.tmf_held.is_empty()
            || self
                .tasks
                .iter()
                .flatten()
                .any(|t| t.state == TaskState::Io)
        {
            return;
        }
        self.logout_held = None;
        let (stat_sn, exp_cmd_sn, max_cmd_sn) = self.status_sns();
        let r = LogoutResponse {
            response: 0,
            itt,
            stat_sn,
            exp_cmd_sn,
            max_cmd_sn,
            ..Default::default()
        };
        let mut bhs = [0u8; BHS_LEN];
        r.encode(&mut bhs);
        self.push(bhs, OutData::None, None, true);
    }

    /// A PDU's data segment failed its digest (ERL 0): the PDU is rejected and discarded
    /// (RFC 7143 §7.8); a write command's task made for its data goes with it, and the
    /// initiator's task times out or is aborted. A Data-Out that continued its task in order
    /// still counts for the task's data sequence (its header is sound: the reader took its
    /// length), but the task is marked and ends with a CRC error once the data it asked for is
    /// in (§7.8 (b); a recovery R2T would need ErrorRecoveryLevel 1).
    pub fn data_digest_error(&mut self, bhs: &[u8; BHS_LEN], pool: &mut BufferPool) {
        self.mid_pdu = false;
        if let Some(i) = self.header_task.take() {
            self.free_task(i, pool);
        }
        self.reject(RejectReason::DataDigestError, bhs);
        if let Ok(InitiatorPdu::DataOut(d)) = InitiatorPdu::decode(bhs)
            && matches!(self.dest, DataDest::Slot { .. })
            && let Some(i) = self.find_data_out_task(&d)
            && let Some(t) = self.tasks[i].as_mut()
        {
            t.digest_failed = true;
            self.on_data_out(&d, bhs, pool);
        }
    }

    /// Queues a Reject carrying the offending header.
    pub fn reject(&mut self, reason: RejectReason, bhs: &[u8; BHS_LEN]) {
        let mut r = Reject::for_header(reason);
        r.stat_sn = self.next_stat_sn();
        r.exp_cmd_sn = self.seq.exp_cmd_sn;
        r.max_cmd_sn = self.max_cmd_sn();
        let mut out = [0u8; BHS_LEN];
        r.encode(&mut out);
        self.push(out, OutData::Bytes(bhs.to_vec()), None, false);
    }

    // ---------------------------------------------------------------- sending

    /// Queues a PDU with its header digest and the data's padding and digest.
    fn push(&mut self, bhs: [u8; BHS_LEN], data: OutData, task: Option<u16>, close_after: bool) {
        let mut header = [0u8; BHS_LEN + DIGEST_LEN];
        header[..BHS_LEN].copy_from_slice(&bhs);
        let mut header_len = BHS_LEN;
        if self.params.header_digest {
            let mut crc = Crc32c::new();
            crc.update(&bhs);
            header[BHS_LEN..].copy_from_slice(&crc.to_wire());
            header_len += DIGEST_LEN;
        }
        let pdu = OutPdu {
            header,
            header_len,
            data,
            trailer: [0; 7],
            trailer_len: 0,
            task,
            close_after,
        };
        self.out_bytes += pdu.held();
        self.out.push_back(pdu);
    }

    /// The next PDU to send, taken off the queue.
    pub fn pop_out(&mut self) -> Option<OutPdu> {
        let pdu = self.out.pop_front()?;
        self.out_bytes = self.out_bytes.saturating_sub(pdu.held());
        if pdu.header[0] & 0x3f == crate::iscsi::pdu::Opcode::R2t as u8 {
            self.r2ts_out += 1;
        }
        Some(pdu)
    }

    /// Memory held by PDUs queued and not yet taken to be sent (registered-buffer data is not
    /// counted: the pool bounds it). A peer that sends and never reads makes this grow: the
    /// caller stops receiving from it while it is large.
    pub fn out_bytes(&self) -> usize {
        self.out_bytes
    }

    /// Called once a second: for how many seconds (calls) the write that has waited longest
    /// for the initiator's Data-Out has had none, or less than [`STALL_PROGRESS`] bytes (it
    /// holds a buffer meanwhile); 0 when no write waits. The data thread drops a connection
    /// whose writes wait too long.
    /// A write is counted from when its last R2T was taken to be sent, not while the R2T is
    /// still queued (behind Data-In on a slow link, say): vitd's own backlog is not held
    /// against the initiator (a send that makes no progress is the data thread's to judge).
    pub fn data_out_stall(&mut self) -> u32 {
        self.clock = self.clock.wrapping_add(1);
        let (clock, out) = (self.clock, self.r2ts_out);
        self.tasks
            .iter_mut()
            .flatten()
            .filter(|t| t.state == TaskState::Receiving)
            .map(|t| {
                if t.r2t_mark > out {
                    t.data_at = clock;
                }
                clock.wrapping_sub(t.data_at)
            })
            .max()
            .unwrap_or(0)
    }

    /// Fills in padding and the data digest of a queued PDU (the data thread calls this right
    /// before sending, when the buffer holds the data).
    pub fn seal(&self, pdu: &mut OutPdu, pool: &mut BufferPool) {
        let data: &[u8] = match &pdu.data {
            OutData::None => &[],
            OutData::Slot { buf, offset, len } => {
                pool.slice(*buf).get(*offset..offset + len).unwrap_or(&[])
            }
            OutData::Zeroes { len } => pool.zeroes(*len),
            OutData::Sense { bytes, len } => &bytes[..*len],
            OutData::Bytes(v) => v,
        };
        let pad = padding_for(data.len() as u32);
        let mut n = pad.len();
        pdu.trailer[..n].copy_from_slice(pad);
        if self.params.data_digest && !data.is_empty() {
            let mut crc = Crc32c::new();
            crc.update(data);
            crc.update(pad);
            pdu.trailer[n..n + DIGEST_LEN].copy_from_slice(&crc.to_wire());
            n += DIGEST_LEN;
        }
        pdu.trailer_len = n;
    }
}

/// Shares the pool's free buffers out among the connections with commands waiting for one
/// (`waiters`, indexes into `conns`, each reached through `conn`; `None` for one that takes no
/// part, a closing one), one command per connection in turn ([`Conn::grant_buffer`]), and
/// tells `served` of each one given a buffer. The turn goes on where it stopped: `waiters` is
/// rotated so that the next sharing begins with the connection after the last one served.
/// Buffers are mostly freed one at a time (one completion per wakeup), and a sharing that
/// always began with the first in line gave every one of them to a connection that never stops
/// waiting (a deep queue keeps its wait full), while the others waited as long as it did.
pub fn grant_in_turn<T>(
    waiters: &mut [usize],
    conns: &mut [T],
    conn: fn(&mut T) -> Option<&mut Conn>,
    pool: &mut BufferPool,
    mut served: impl FnMut(usize, &Conn),
) {
    let mut last = None;
    loop {
        let mut any = false;
        for (at, &idx) in waiters.iter().enumerate() {
            let Some(c) = conns.get_mut(idx).and_then(conn) else {
                continue;
            };
            if c.grant_buffer(pool) {
                any = true;
                last = Some(at);
                served(idx, c);
            }
        }
        if !any {
            break;
        }
    }
    if let Some(at) = last {
        waiters.rotate_left(at + 1);
    }
}

#[cfg(test)]
mod props;

/// I_T nexus `it` of `target` ends: on each LUN its reservations drop what SPC says (an
/// SPC-2 RESERVE goes; persistent reservations stay).
pub fn nexus_lost(target: &TargetRt, it: &crate::scsi::ItNexusId) {
    for l in &target.luns {
        if l.shared.pr_active() {
            let mut pr = l.shared.lock_pr();
            pr.nexus_lost(it);
            l.shared.settle(&mut pr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::runtime::{AuthPolicy, LunRt};
    use crate::iscsi::params::{Negotiator, TargetLimits};
    use crate::iscsi::pdu::{DataOut, NopOut, TargetPdu};
    use crate::iscsi::text::{OutgoingText, TextList};
    use crate::scsi::{DeviceServer, LunInfo, TargetPort};

    fn params(initial_r2t: bool) -> SessionParams {
        let mut n = Negotiator::new_leading(TargetLimits::default()).unwrap();
        let keys = format!(
            "InitiatorName=iqn.2026-11.io.vit:test\0TargetName=iqn.2026-11.io.vit:t\0SessionType=Normal\0\
             InitialR2T={}\0ImmediateData=Yes\0MaxRecvDataSegmentLength=8192\0MaxBurstLength=16384\0\
             FirstBurstLength=8192\0",
            if initial_r2t { "Yes" } else { "No" }
        );
        let mut out = OutgoingText::new(8192);
        n.negotiate(
            Stage::Operational,
            &TextList::parse(keys.as_bytes()).unwrap(),
            &mut out,
        )
        .unwrap();
        n.finish().unwrap()
    }
    use crate::iscsi::pdu::Stage;

    pub(super) fn conn(initial_r2t: bool) -> (Conn, BufferPool) {
        let lun = LunRt {
            identity: 7,
            thin: false,
            ..crate::daemon::runtime::test_memory_lun(
                crate::daemon::ramdisk::RamDisk::new(1 << 20, 1 << 20).unwrap(),
            )
        };
        let server = DeviceServer::new(vec![LunInfo::new(0, 512, 2048, 7, "s")]).unwrap();
        let target = Arc::new(TargetRt {
            name: "iqn.2026-11.io.vit:t".into(),
            alias: None,
            auth: AuthPolicy::none(),
            pg_auth: Vec::new(),
            portal_groups: vec![],
            redirect: None,
            owner_id: None,
            luns: vec![Arc::new(lun)],
            portals: vec![],
            server,
        });
        let port = TargetPort {
            target_name: target.name.clone(),
            portal_group_tag: 1,
            relative_port_id: 1,
            target_ports: 1,
        };
        let nexus = Nexus::without_attention(port);
        let c = Conn::new(
            params(initial_r2t),
            Some(target),
            nexus,
            SeqNums {
                stat_sn: 10,
                exp_cmd_sn: 100,
            },
            8,
        );
        (c, BufferPool::new(&[(65536, 8)]).unwrap())
    }

    fn command(
        cdb: &[u8],
        edtl: u32,
        read: bool,
        write: bool,
        cmd_sn: u32,
        immediate: u32,
    ) -> [u8; BHS_LEN] {
        let mut c = [0u8; 16];
        c[..cdb.len()].copy_from_slice(cdb);
        let cmd = ScsiCommand {
            final_bit: true,
            read,
            write,
            attr: 1,
            itt: 0x42,
            expected_data_length: edtl,
            cmd_sn,
            cdb: c,
            data_segment_length: immediate,
            ..Default::default()
        };
        let mut b = [0u8; BHS_LEN];
        cmd.encode(&mut b);
        b
    }

    /// READ(10) of 16 blocks (8 KiB) at LBA 0, ITT 0x42.
    fn read16(cmd_sn: u32) -> [u8; BHS_LEN] {
        command(
            &[0x28, 0, 0, 0, 0, 0, 0, 0, 16, 0],
            8192,
            true,
            false,
            cmd_sn,
            0,
        )
    }

    /// `bhs` with Initiator Task Tag `itt`.
    fn tagged(mut bhs: [u8; BHS_LEN], itt: u32) -> [u8; BHS_LEN] {
        bhs[16..20].copy_from_slice(&itt.to_be_bytes());
        bhs
    }

    /// A connection whose pool has one buffer, taken: its commands must wait for it.
    fn conn_with_its_one_buffer_held() -> (Conn, BufferPool, BufId) {
        let (c, _) = conn(true);
        let mut pool = BufferPool::new(&[(65536, 1)]).unwrap();
        let big = pool.alloc(65536).unwrap();
        (c, pool, big)
    }

    fn sent(c: &mut Conn) -> Vec<TargetPdu> {
        taken(c).1
    }

    /// Takes every queued PDU, as it is and decoded.
    fn taken(c: &mut Conn) -> (Vec<OutPdu>, Vec<TargetPdu>) {
        let out: Vec<OutPdu> = std::iter::from_fn(|| c.pop_out()).collect();
        let pdus = out
            .iter()
            .map(|p| TargetPdu::decode(p.header[..BHS_LEN].try_into().unwrap()).unwrap())
            .collect();
        (out, pdus)
    }

    /// Feeds one PDU as the data thread would (header event, data into its destination, complete).
    fn feed(c: &mut Conn, pool: &mut BufferPool, bhs: &[u8; BHS_LEN], data: &[u8]) {
        feed_with(c, pool, bhs, data).unwrap().unwrap();
    }

    /// [`feed`], returning what `on_pdu` said; `Err(())` when the destination `on_header` chose
    /// cannot hold the data segment.
    pub(super) fn feed_with(
        c: &mut Conn,
        pool: &mut BufferPool,
        bhs: &[u8; BHS_LEN],
        data: &[u8],
    ) -> Result<Result<(), Fatal>, ()> {
        match c.on_header(bhs, data.len() as u32, pool) {
            DataDest::Slot { buf, offset, .. } => pool
                .slice(buf)
                .get_mut(offset..offset + data.len())
                .ok_or(())?
                .copy_from_slice(data),
            DataDest::Inline if data.len() > c.inline.capacity() => return Err(()),
            DataDest::Inline => c.inline.extend_from_slice(data),
            DataDest::Discard => {}
        }
        Ok(c.on_pdu(bhs, pool))
    }

    #[test]
    fn read_becomes_io_then_data_in_with_status() {
        let (mut c, mut pool) = conn(true);
        // READ(10) of 4 blocks, EDTL 2048.
        feed(
            &mut c,
            &mut pool,
            &command(
                &[0x28, 0, 0, 0, 0, 8, 0, 0, 4, 0],
                2048,
                true,
                false,
                100,
                0,
            ),
            &[],
        );
        let work = c.io.pop_front().expect("backing-store read");
        assert_eq!((work.req.byte_offset, work.req.byte_len), (8 * 512, 2048));
        c.io_done(work.task, IoResult::Ok, &mut pool);
        let queued: Vec<OutPdu> = c.out.iter().map(clone_head).collect();
        let pdus = sent(&mut c);
        assert!(!pdus.is_empty());
        let TargetPdu::DataIn(last) = pdus.last().unwrap() else {
            panic!("{pdus:?}")
        };
        assert!(last.status_present && last.final_bit && last.status == 0);
        assert_eq!(last.stat_sn, 10);
        let total: u32 = pdus
            .iter()
            .map(|p| {
                if let TargetPdu::DataIn(d) = p {
                    d.data_segment_length
                } else {
                    0
                }
            })
            .sum();
        assert_eq!(total, 2048);
        // The buffer is released once the Data-In PDUs are sent, not before.
        assert_eq!(pool.available(), 7);
        for p in &queued {
            c.sent(p, &mut pool);
        }
        assert_eq!(pool.available(), 8);
    }

    fn clone_head(p: &OutPdu) -> OutPdu {
        OutPdu {
            header: p.header,
            header_len: p.header_len,
            data: OutData::None,
            trailer: p.trailer,
            trailer_len: p.trailer_len,
            task: p.task,
            close_after: p.close_after,
        }
    }

    #[test]
    fn read_overflow_reports_residual() {
        let (mut c, mut pool) = conn(true);
        // READ(10) of 2 blocks with EDTL of one block: one block is sent, 512 bytes overflow.
        feed(
            &mut c,
            &mut pool,
            &command(&[0x28, 0, 0, 0, 0, 0, 0, 0, 2, 0], 512, true, false, 100, 0),
            &[],
        );
        let work = c.io.pop_front().unwrap();
        c.io_done(work.task, IoResult::Ok, &mut pool);
        let pdus = sent(&mut c);
        let TargetPdu::DataIn(d) = pdus.last().unwrap() else {
            panic!()
        };
        assert!(d.overflow && d.residual_count == 512 && d.data_segment_length == 512);
    }

    /// A VERIFY without BYTCHK and a WRITE SAME with NDOB that writes zeroes have no data-out,
    /// yet read the medium into a buffer or write zeroes from one: each waits for a buffer as
    /// long as that, as a READ does, instead of running with none (and, needing one then,
    /// ending in TASK SET FULL while other commands held every buffer freed).
    #[test]
    fn verify_and_a_zero_writing_write_same_wait_for_a_buffer_of_what_they_move() {
        let verify = command(&[0x2F, 0, 0, 0, 0, 8, 0, 0, 16, 0], 0, false, false, 100, 0);
        let mut ws = [0u8; 16];
        ws[0] = 0x93;
        ws[1] = 0x01; // NDOB
        ws[10..14].copy_from_slice(&100u32.to_be_bytes());
        let write_same = command(&ws, 0, false, false, 101, 0);
        let (mut c, mut pool, big) = conn_with_its_one_buffer_held();
        for (bhs, len) in [(verify, 16 * 512), (write_same, 100 * 512)] {
            feed(&mut c, &mut pool, &bhs, &[]);
            assert!(
                c.io.is_empty() && c.waiting_for_buffer(),
                "ran with no buffer"
            );
            assert_eq!(c.wait_len(&pool), Some(len));
            pool.release(big);
            assert!(c.grant_buffer(&mut pool));
            let work = c.io.pop_front().expect("its I/O");
            assert_eq!(work.buf, Some(big));
            c.io_done(work.task, IoResult::Ok, &mut pool);
            let pdus = sent(&mut c);
            assert!(
                matches!(pdus.as_slice(), [TargetPdu::ScsiResponse(r)] if r.status == 0),
                "{pdus:?}"
            );
            assert_eq!(pool.available(), 1);
            assert_eq!(pool.alloc(65536), Some(big));
        }
    }

    #[test]
    fn write_collects_immediate_and_solicited_data() {
        let (mut c, mut pool) = conn(true);
        let data = vec![0xabu8; 4096];
        // WRITE(10) of 8 blocks with 1024 bytes of immediate data.
        let bhs = write10(8, true, 100, 1024);
        feed(&mut c, &mut pool, &bhs, &data[..1024]);
        let pdus = sent(&mut c);
        let [TargetPdu::R2t(r2t)] = pdus.as_slice() else {
            panic!("{pdus:?}")
        };
        assert_eq!(
            (r2t.buffer_offset, r2t.desired_length, r2t.r2t_sn),
            (1024, 3072, 0)
        );
        assert!(c.io.is_empty());
        let d = DataOut {
            final_bit: true,
            itt: 0x42,
            ttt: r2t.ttt,
            data_sn: 0,
            buffer_offset: 1024,
            data_segment_length: 3072,
            ..Default::default()
        };
        let mut b = [0u8; BHS_LEN];
        d.encode(&mut b);
        feed(&mut c, &mut pool, &b, &data[1024..]);
        let work = c.io.pop_front().expect("backing-store write");
        assert_eq!(work.req.byte_len, 4096);
        assert_eq!(&pool.slice(work.buf.unwrap())[..4096], &data[..]);
        c.io_done(work.task, IoResult::Ok, &mut pool);
        let pdus = sent(&mut c);
        let [TargetPdu::ScsiResponse(r)] = pdus.as_slice() else {
            panic!("{pdus:?}")
        };
        assert_eq!((r.status, r.itt, r.exp_cmd_sn), (0, 0x42, 101));
        assert_eq!(pool.available(), 8, "the buffer came back");
    }

    /// For a write of `data` (8 KiB, ITT 0x42) that got its buffer with `immediate` bytes of
    /// it kept: its R2T asks for the rest, which is sent; the buffer then holds all of `data`,
    /// and the write is answered GOOD.
    fn write_rest_of(c: &mut Conn, pool: &mut BufferPool, data: &[u8], immediate: u32) {
        let rest = 8192 - immediate;
        let ttt = match sent(c).as_slice() {
            [TargetPdu::R2t(r)] if (r.buffer_offset, r.desired_length) == (immediate, rest) => {
                r.ttt
            }
            other => panic!("{other:?}"),
        };
        feed(
            c,
            pool,
            &data_out(ttt, 0, immediate, rest, true),
            &data[immediate as usize..],
        );
        let work = c.io.pop_front().expect("the write's I/O");
        assert!(
            pool.slice(work.buf.unwrap())[..8192] == data[..],
            "immediate data and Data-Out both in the buffer"
        );
        c.io_done(work.task, IoResult::Ok, pool);
        assert!(matches!(sent(c).as_slice(), [TargetPdu::ScsiResponse(r)] if r.status == 0));
    }

    #[test]
    fn commands_wait_for_a_buffer_and_keep_their_immediate_data() {
        let (mut c, _) = conn(true);
        let mut pool = BufferPool::new(&[(4096, 2), (65536, 1)]).unwrap();
        let big = pool.alloc(65536).unwrap();
        // A WRITE of 8 KiB with 1 KiB of immediate data, and a READ of 8 KiB: no buffer that
        // large is free.
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        feed(
            &mut c,
            &mut pool,
            &write10(16, true, 100, 1024),
            &data[..1024],
        );
        let read = tagged(read16(101), 0x43);
        feed(&mut c, &mut pool, &read, &[]);
        assert!(sent(&mut c).is_empty(), "no TASK SET FULL, no R2T yet");
        assert!(c.io.is_empty() && c.waiting_for_buffer());
        assert_eq!(
            pool.available(),
            1,
            "the immediate data kept in a small buffer"
        );
        assert!(!c.grant_buffer(&mut pool));
        // A buffer comes back: the write, first in, takes it and asks for the rest of its data.
        pool.release(big);
        assert!(c.grant_buffer(&mut pool));
        assert!(!c.grant_buffer(&mut pool), "none left for the read");
        write_rest_of(&mut c, &mut pool, &data, 1024);
        // Its buffer is free again: the read goes on.
        assert!(c.grant_buffer(&mut pool) && !c.waiting_for_buffer());
        assert!(c.io.pop_front().is_some_and(|w| w.req.byte_len == 8192));
    }

    #[test]
    fn a_command_arriving_as_a_buffer_is_freed_leaves_it_to_those_waiting() {
        let (mut a, _) = conn(true);
        let (mut b, _) = conn(true);
        let mut pool = BufferPool::new(&[(4096, 2), (65536, 1)]).unwrap();
        let big = pool.alloc(65536).unwrap();
        // a's READ of 8 KiB waits: the one large buffer is held.
        feed(&mut a, &mut pool, &read16(100), &[]);
        assert!(a.waiting_for_buffer());
        // The buffer comes back before the data thread hands it out, and b's READ of 8 KiB
        // arrives: it waits behind a's instead of taking it.
        pool.release(big);
        let read = tagged(read16(100), 0x43);
        feed(&mut b, &mut pool, &read, &[]);
        assert!(
            b.io.is_empty() && b.waiting_for_buffer(),
            "b took a's buffer"
        );
        // A small command is not held back: no waiter could use a 4 KiB buffer.
        let small = tagged(
            command(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], 512, true, false, 101, 0),
            0x44,
        );
        feed(&mut b, &mut pool, &small, &[]);
        assert!(
            b.io.iter().any(|w| w.req.byte_len == 512),
            "a small read waited"
        );
        // In turn: a first.
        assert!(a.grant_buffer(&mut pool) && !b.grant_buffer(&mut pool));
        assert!(a.io.pop_front().is_some_and(|w| w.req.byte_len == 8192));
    }

    /// Feeds `n` reads of 8 KiB to `c` (ITTs 0x50 on, CmdSN 100 on).
    fn feed_reads(c: &mut Conn, pool: &mut BufferPool, n: u32) {
        for k in 0..n {
            let read = tagged(read16(100 + k), 0x50 + k);
            feed(c, pool, &read, &[]);
        }
    }

    /// Ends `c`'s first I/O and sends what it answers (its buffer comes back).
    fn end_first_io(c: &mut Conn, pool: &mut BufferPool) {
        let w = c.io.pop_front().unwrap();
        c.io_done(w.task, IoResult::Ok, pool);
        while let Some(p) = c.pop_out() {
            c.sent(&p, pool);
        }
    }

    #[test]
    fn one_connection_takes_at_most_three_quarters_of_the_largest_buffers() {
        let (mut a, _) = conn(true);
        let (mut b, _) = conn(true);
        let mut pool = BufferPool::new(&[(4096, 8), (65536, 4)]).unwrap();
        // a asks for four reads of 8 KiB: three get a large buffer, the fourth waits though
        // one is free.
        feed_reads(&mut a, &mut pool, 4);
        assert_eq!(a.io.len(), 3);
        assert!(a.waiting_for_buffer() && !a.grant_buffer(&mut pool));
        // b's read takes the one left.
        feed(&mut b, &mut pool, &read16(100), &[]);
        assert_eq!(b.io.len(), 1, "b found no buffer");
        // Once one of a's reads ends, its fourth goes on.
        end_first_io(&mut a, &mut pool);
        assert!(a.grant_buffer(&mut pool) && !a.waiting_for_buffer());
    }

    /// A connection that always has commands waiting for a buffer (a deep queue: each of its
    /// commands that ends is followed by a new one) does not take every buffer freed while
    /// another connection waits too: buffers freed one at a time go to the two in turn.
    #[test]
    fn buffers_freed_one_at_a_time_go_to_the_waiting_connections_in_turn() {
        let (greedy, _) = conn(true);
        let (quiet, _) = conn(true);
        let mut conns = [greedy, quiet];
        // Four buffers that an 8 KiB read can use, none of the largest class only (no share).
        let mut pool = BufferPool::new(&[(8192, 3), (65536, 1)]).unwrap();
        // The greedy connection holds all four and has two more reads waiting, first in line.
        feed_reads(&mut conns[0], &mut pool, 6);
        assert!(conns[0].io.len() == 4 && conns[0].waiting_for_buffer());
        let mut waiters = vec![0, 1];
        let quiet_read = tagged(read16(100), 0x43);
        feed(&mut conns[1], &mut pool, &quiet_read, &[]);
        assert!(conns[1].waiting_for_buffer());
        let (mut itt, mut cmd_sn) = (0x70, 106);
        for round in 0..4 {
            // One of the greedy connection's reads ends and it sends another: one buffer free.
            end_first_io(&mut conns[0], &mut pool);
            let read = tagged(read16(cmd_sn), itt);
            feed(&mut conns[0], &mut pool, &read, &[]);
            (itt, cmd_sn) = (itt + 1, cmd_sn + 1);
            grant_in_turn(&mut waiters, &mut conns, |c| Some(c), &mut pool, |_, _| {});
            if !conns[1].io.is_empty() {
                assert!(
                    round <= 1,
                    "the quiet read got a buffer only in round {round}"
                );
                return;
            }
        }
        panic!("four buffers freed one at a time all went to the greedy connection");
    }

    /// A connection held back by its share comes back under it as one of its tasks ends: the
    /// buffer that task gives back is left to its waiting command, not taken by a command of
    /// another connection arriving before the data thread hands it out.
    #[test]
    fn a_buffer_freed_under_the_share_is_left_to_the_command_it_held_back() {
        let (mut a, _) = conn(true);
        let (mut b, _) = conn(true);
        let mut pool = BufferPool::new(&[(4096, 8), (65536, 4)]).unwrap();
        feed_reads(&mut a, &mut pool, 4);
        feed(&mut b, &mut pool, &read16(100), &[]);
        assert!(a.waiting_for_buffer() && b.io.len() == 1);
        // One of a's reads ends, and before the data thread shares the buffer out, b's second
        // read arrives: it waits behind a's.
        end_first_io(&mut a, &mut pool);
        let read = tagged(read16(101), 0x43);
        feed(&mut b, &mut pool, &read, &[]);
        assert!(
            b.io.len() == 1 && b.waiting_for_buffer(),
            "b took the buffer a's read waits for"
        );
        assert!(a.grant_buffer(&mut pool) && !a.waiting_for_buffer());
    }

    /// A write whose immediate data needs one of the largest buffers to keep it, from a
    /// connection at its share of them: it does not take one past its share as the buffer
    /// that keeps its data (TASK SET FULL, the initiator sends it again).
    #[test]
    fn immediate_data_kept_takes_no_largest_buffer_past_the_share() {
        let (mut a, _) = conn(true);
        let (mut b, _) = conn(true);
        let mut pool = BufferPool::new(&[(4096, 8), (16384, 4)]).unwrap();
        feed_reads(&mut a, &mut pool, 3);
        assert_eq!(a.io.len(), 3);
        // A WRITE of 16 KiB with 8 KiB of immediate data: only a largest buffer holds that.
        let write = tagged(write10(32, true, 103, 8192), 0x60);
        feed(&mut a, &mut pool, &write, &[7u8; 8192]);
        assert!(
            sent(&mut a).iter().all(|p| !matches!(p, TargetPdu::R2t(_))),
            "the write took a fourth large buffer"
        );
        // b's read still finds the one left.
        feed(&mut b, &mut pool, &read16(100), &[]);
        assert_eq!(b.io.len(), 1, "b found no buffer");
    }

    /// The same for a newcomer while another connection waits: the buffer freed for the
    /// waiter is not taken to keep the newcomer's immediate data.
    #[test]
    fn immediate_data_kept_takes_no_buffer_a_waiter_needs() {
        let (mut a, _) = conn(true);
        let (mut b, _) = conn(true);
        let mut pool = BufferPool::new(&[(4096, 2), (65536, 1)]).unwrap();
        let big = pool.alloc(65536).unwrap();
        feed(&mut a, &mut pool, &read16(100), &[]);
        assert!(a.waiting_for_buffer());
        pool.release(big);
        let write = tagged(write10(16, true, 100, 8192), 0x60);
        feed(&mut b, &mut pool, &write, &[7u8; 8192]);
        assert!(
            b.io.is_empty() && sent(&mut b).iter().all(|p| !matches!(p, TargetPdu::R2t(_))),
            "b's write took a's buffer"
        );
        assert!(a.grant_buffer(&mut pool), "a's buffer was taken");
    }

    /// Sends a TEST UNIT READY (CmdSN `cmd_sn`) and returns its one answer: the status and,
    /// with sense data, its key and ASC.
    fn test_unit_ready(c: &mut Conn, pool: &mut BufferPool, cmd_sn: u32) -> (u8, Option<(u8, u8)>) {
        let tur = command(&[0; 6], 0, false, false, cmd_sn, 0);
        feed(c, pool, &tur, &[]);
        let out: Vec<OutPdu> = std::iter::from_fn(|| c.pop_out()).collect();
        let [p] = out.as_slice() else {
            panic!("{} answers", out.len())
        };
        let TargetPdu::ScsiResponse(r) =
            TargetPdu::decode(p.header[..BHS_LEN].try_into().unwrap()).unwrap()
        else {
            panic!("not a SCSI Response")
        };
        let sense = match &p.data {
            OutData::Sense { bytes, .. } => Some((bytes[2 + 2] & 0xf, bytes[2 + 12])),
            _ => None,
        };
        (r.status, sense)
    }

    /// An immediate Logout Request (close the session), ITT 0x77.
    fn logout_bhs(cmd_sn: u32) -> [u8; BHS_LEN] {
        let logout = crate::iscsi::pdu::LogoutRequest {
            immediate: true,
            itt: 0x77,
            cmd_sn,
            ..Default::default()
        };
        let mut b = [0u8; BHS_LEN];
        logout.encode(&mut b);
        b
    }

    #[test]
    fn nothing_waiting_for_a_buffer_runs_after_a_logout() {
        let (mut c, mut pool, big) = conn_with_its_one_buffer_held();
        let read = read16(100);
        feed(&mut c, &mut pool, &read, &[]);
        feed(&mut c, &mut pool, &logout_bhs(101), &[]);
        assert!(matches!(sent(&mut c).as_slice(), [TargetPdu::Logout(_)]));
        pool.release(big);
        assert!(!c.grant_buffer(&mut pool));
        assert!(sent(&mut c).is_empty() && c.io.is_empty());
    }

    /// A Logout Response says the connection's cleanup is done (RFC 7143 §11.15): no task of it
    /// may still write. A logout that comes while a write's backing-store I/O is in flight is
    /// answered once that I/O has ended (the write, terminated, is not answered); it was
    /// answered at once, and the connection closed with the write still to land, after the
    /// initiator could have sent the same blocks again through another session or path.
    #[test]
    fn a_logout_is_answered_once_no_write_of_its_connection_is_in_flight() {
        let (mut c, mut pool) = conn(true);
        let data = vec![0x5au8; 512];
        feed(&mut c, &mut pool, &write10(1, true, 100, 512), &data);
        let work = c.io.pop_front().expect("the write's I/O");
        assert!(sent(&mut c).is_empty());
        feed(&mut c, &mut pool, &logout_bhs(101), &[]);
        assert!(
            sent(&mut c).is_empty(),
            "the logout was answered with the write's I/O in flight"
        );
        c.io_done(work.task, IoResult::Ok, &mut pool);
        let (out, pdus) = taken(&mut c);
        assert!(
            matches!(pdus.as_slice(), [TargetPdu::Logout(r)] if r.itt == 0x77),
            "{pdus:?}"
        );
        assert!(out[0].close_after);
        assert_eq!(c.tasks_in_flight(), 0);
        assert!(c.finished());
        c.release_all(&mut pool);
        assert_eq!(pool.available(), 8);
    }

    /// A WRITE(10) (ITT 0x51, CmdSN 100) waiting for its Data-Out after its R2T (taken), and a
    /// READ (ITT 0x52, CmdSN 101) received whole: the read's I/O, not started yet.
    fn a_write_waiting_and_a_read_received(c: &mut Conn, pool: &mut BufferPool) -> IoWork {
        feed(c, pool, &tagged(write10(8, true, 100, 0), 0x51), &[]);
        assert!(matches!(sent(c).as_slice(), [TargetPdu::R2t(_)]));
        feed(c, pool, &tagged(read16(101), 0x52), &[]);
        c.io.pop_front().expect("the read's I/O")
    }

    /// Whether `pdus` are the answer of that read and nothing else: its Data-In, status in the
    /// last.
    fn the_reads_answer(pdus: &[TargetPdu]) -> bool {
        !pdus.is_empty()
            && pdus
                .iter()
                .all(|p| matches!(p, TargetPdu::DataIn(d) if d.itt == 0x52))
            && matches!(pdus.last(), Some(TargetPdu::DataIn(d)) if d.status_present)
    }

    /// A Logout terminates every command of its connection received before it, acknowledged
    /// or not, and none of them is answered (RFC 7143 §11.14, §6.5): a read received whole whose
    /// I/O had not started is aborted, so the data thread never starts it, and a write waiting
    /// for its Data-Out ends at once, its buffer back in the pool. The Logout Response comes
    /// once no I/O of the connection is in flight, and alone. (With the Logout letting the
    /// commands received whole run, the read was not aborted and was answered ahead of it.)
    #[test]
    fn a_logout_terminates_the_commands_received_before_it() {
        let (mut c, mut pool) = conn(true);
        let work = a_write_waiting_and_a_read_received(&mut c, &mut pool);
        assert!(!c.aborted(work.task));
        feed(&mut c, &mut pool, &logout_bhs(102), &[]);
        assert_eq!(c.tasks_in_flight(), 1, "the write waiting for data ended");
        assert!(c.aborted(work.task), "the read's I/O would start");
        assert!(
            sent(&mut c).is_empty(),
            "answered with the read's task not ended"
        );
        // The data thread, finding the task aborted, ends it without starting its I/O.
        c.io_done(work.task, IoResult::Failed, &mut pool);
        let (out, pdus) = taken(&mut c);
        assert!(
            matches!(pdus.as_slice(), [TargetPdu::Logout(l)] if l.itt == 0x77),
            "{pdus:?}"
        );
        assert!(out[0].close_after);
        assert!(c.finished());
        assert_eq!(pool.available(), 8);
    }

    /// The end of the initiator's stream (a half-close) in the middle of a write's immediate
    /// data: that write, and one waiting for its Data-Out, end unanswered with their buffers
    /// back; a read received whole runs on and is answered, and only then is the connection
    /// finished.
    #[test]
    fn the_end_of_the_stream_ends_what_waits_for_data_and_lets_the_rest_finish() {
        let (mut c, mut pool) = conn(true);
        let work = a_write_waiting_and_a_read_received(&mut c, &mut pool);
        // A write's header, its immediate data cut short by the end of the stream.
        let cut = tagged(write10(8, true, 102, 4096), 0x53);
        assert!(matches!(
            c.on_header(&cut, 4096, &mut pool),
            DataDest::Slot { .. }
        ));
        assert_eq!(c.tasks_in_flight(), 3);
        c.end_input(&mut pool);
        assert_eq!(c.tasks_in_flight(), 1);
        assert!(!c.finished());
        c.io_done(work.task, IoResult::Ok, &mut pool);
        let (out, pdus) = taken(&mut c);
        for p in &out {
            c.sent(p, &mut pool);
        }
        assert!(the_reads_answer(&pdus), "{pdus:?}");
        assert!(c.finished());
        assert_eq!(pool.available(), 8);
    }

    /// A command left waiting by a connection logging out will never take a buffer: it keeps
    /// none from another connection's newcomer.
    #[test]
    fn a_command_waiting_behind_a_logout_keeps_no_buffer_from_others() {
        let (mut c, mut pool, big) = conn_with_its_one_buffer_held();
        let (mut b, _) = conn(true);
        feed(&mut c, &mut pool, &read16(100), &[]);
        feed(&mut c, &mut pool, &logout_bhs(101), &[]);
        pool.release(big);
        // The data thread shares the buffer out: c takes none, and says what still waits.
        assert!(!c.grant_buffer(&mut pool));
        pool.set_waiting(c.wait_len(&pool));
        feed(&mut b, &mut pool, &read16(100), &[]);
        assert!(
            b.io.len() == 1 && !b.waiting_for_buffer(),
            "b's read waited for c's, which will never run"
        );
    }

    #[test]
    fn immediate_data_that_found_no_buffer_is_not_taken_as_received() {
        // Every buffer is in use, and the heap allowance spent, when a WRITE's header comes with
        // its immediate data: the data has nowhere to go and is discarded. A buffer freed while
        // the data segment is still being received (a send or another session's I/O
        // completing) must not let the command go on as if its data were in that buffer.
        for blocks in [1u8, 16] {
            let (mut c, _) = conn(true);
            let mut pool = BufferPool::new(&[(65536, 1)]).unwrap();
            pool.set_spill_limit(0);
            soil(&mut pool, 0xee);
            let held = pool.alloc(1).unwrap();
            let data = vec![0x11u8; 512];
            let bhs = write10(blocks, true, 100, 512);
            assert_eq!(c.on_header(&bhs, 512, &mut pool), DataDest::Discard);
            pool.release(held);
            c.on_pdu(&bhs, &mut pool).unwrap();
            c.grant_buffer(&mut pool);
            let pdus = sent(&mut c);
            if let [TargetPdu::R2t(r)] = pdus.as_slice() {
                assert_eq!(
                    r.buffer_offset, 0,
                    "the discarded immediate data counted as received"
                );
            }
            if let Some(w) = c.io.pop_front() {
                assert!(
                    pool.slice(w.buf.unwrap())[..512] == data[..],
                    "a write of what the buffer held before"
                );
            }
            let pdus = if pdus.is_empty() { sent(&mut c) } else { pdus };
            assert!(
                matches!(pdus.as_slice(), [TargetPdu::ScsiResponse(r)] if r.status == 0x28),
                "TASK SET FULL: {pdus:?}"
            );
            assert_eq!((c.tasks_in_flight(), pool.available()), (0, 1));
        }
    }

    /// Every buffer in use (deep queues of large writes on several sessions): a write's
    /// immediate data that no buffer can keep is kept on the heap, within the thread's
    /// allowance, and the write waits for a buffer instead of failing with TASK SET FULL.
    #[test]
    fn immediate_data_no_buffer_can_keep_waits_on_the_heap() {
        let (mut c, _) = conn(true);
        let mut pool = BufferPool::new(&[(65536, 1)]).unwrap();
        soil(&mut pool, 0xee);
        let held = pool.alloc(1).unwrap();
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        let bhs = write10(16, true, 100, 512);
        assert_eq!(c.on_header(&bhs, 512, &mut pool), DataDest::Inline);
        c.inline.extend_from_slice(&data[..512]);
        c.on_pdu(&bhs, &mut pool).unwrap();
        assert!(sent(&mut c).is_empty(), "TASK SET FULL");
        assert!(c.waiting_for_buffer() && pool.spilled() == 512);
        // The buffer comes back: the write takes it, its immediate data with it, and asks for
        // the rest.
        pool.release(held);
        assert!(c.grant_buffer(&mut pool));
        assert_eq!(pool.spilled(), 0, "the allowance came back");
        write_rest_of(&mut c, &mut pool, &data, 512);
        // A write that ends while it waits (its connection goes) gives the allowance back, and
        // none is taken past the allowance.
        let held = pool.alloc(1).unwrap();
        pool.set_spill_limit(1024);
        let second = tagged(write10(16, true, 101, 512), 0x43);
        feed(&mut c, &mut pool, &second, &data[..512]);
        let third = tagged(write10(16, true, 102, 1024), 0x44);
        feed(&mut c, &mut pool, &third, &data[..1024]);
        assert!(
            matches!(sent(&mut c).as_slice(), [TargetPdu::ScsiResponse(r)] if r.status == 0x28 && r.itt == 0x44),
            "past the allowance: TASK SET FULL"
        );
        assert_eq!(pool.spilled(), 512);
        c.release_all(&mut pool);
        pool.release(held);
        assert_eq!((pool.spilled(), pool.available()), (0, 1));
    }

    #[test]
    fn a_text_request_continued_past_its_limit_is_rejected_whole() {
        let (mut c, mut pool) = conn(true);
        let text = |cont: bool, cmd_sn: u32| {
            let t = crate::iscsi::pdu::TextRequest {
                final_bit: !cont,
                cont,
                itt: 0x55,
                ttt: RESERVED_TAG,
                cmd_sn,
                data_segment_length: 8192,
                ..Default::default()
            };
            let mut b = [0u8; BHS_LEN];
            t.encode(&mut b);
            b
        };
        // Nine pieces of 8 KiB, the last ending in SendTargets=All: 72 KiB, past 64 KiB.
        let mut piece = vec![b'a'; 8192];
        piece[..2].copy_from_slice(b"X=");
        for k in 0..8u32 {
            let mut p = piece.clone();
            p[0] = b'A' + k as u8;
            feed(&mut c, &mut pool, &text(true, 100 + k), &p);
            assert!(
                matches!(sent(&mut c).as_slice(), [TargetPdu::Text(r)] if !r.final_bit),
                "piece {k} acknowledged"
            );
        }
        let mut last = vec![0u8; 8192];
        last[..15].copy_from_slice(b"SendTargets=All");
        feed(&mut c, &mut pool, &text(false, 108), &last);
        let pdus = sent(&mut c);
        assert!(rejected(&pdus, RejectReason::ProtocolError), "{pdus:?}");
        // The next request is taken afresh.
        let t = crate::iscsi::pdu::TextRequest {
            final_bit: true,
            itt: 0x56,
            ttt: RESERVED_TAG,
            cmd_sn: 109,
            data_segment_length: 16,
            ..Default::default()
        };
        let mut b = [0u8; BHS_LEN];
        t.encode(&mut b);
        feed(&mut c, &mut pool, &b, b"SendTargets=All\0");
        assert!(
            matches!(sent(&mut c).as_slice(), [TargetPdu::Text(r)] if r.final_bit && r.data_segment_length > 0)
        );
    }

    /// Feeds a one-PDU Text Request carrying `text` and returns what was queued: (the PDUs in
    /// order, each with its data segment when it is inline bytes).
    fn text_request(
        c: &mut Conn,
        pool: &mut BufferPool,
        cmd_sn: u32,
        text: &[u8],
    ) -> Vec<(TargetPdu, Vec<u8>)> {
        let t = crate::iscsi::pdu::TextRequest {
            final_bit: true,
            itt: 0x77,
            ttt: RESERVED_TAG,
            cmd_sn,
            data_segment_length: text.len() as u32,
            ..Default::default()
        };
        let mut b = [0u8; BHS_LEN];
        t.encode(&mut b);
        feed(c, pool, &b, text);
        drain(c)
    }

    fn drain(c: &mut Conn) -> Vec<(TargetPdu, Vec<u8>)> {
        std::iter::from_fn(|| c.pop_out())
            .map(|p| {
                let pdu = TargetPdu::decode(p.header[..BHS_LEN].try_into().unwrap()).unwrap();
                let data = match p.data {
                    OutData::Bytes(v) => v,
                    _ => Vec::new(),
                };
                (pdu, data)
            })
            .collect()
    }

    fn data_in_lengths(pdus: &[(TargetPdu, Vec<u8>)]) -> Vec<u32> {
        pdus.iter()
            .filter_map(|(p, _)| match p {
                TargetPdu::DataIn(d) => Some(d.data_segment_length),
                _ => None,
            })
            .collect()
    }

    /// RFC 7143 §13.12: MaxRecvDataSegmentLength is declarative and usable in full feature
    /// phase. The declaration gets no answer, and the Data-In of tasks that end afterwards is
    /// cut to it.
    #[test]
    fn a_max_recv_data_segment_length_declared_in_full_feature_phase_cuts_later_data_in() {
        let (mut c, mut pool) = conn(true);
        assert_eq!(c.params.initiator_max_recv_data_segment_length, 8192);
        // A READ of 8 KiB under the login's 8192: one Data-In.
        feed(&mut c, &mut pool, &read16(100), &[]);
        let work = c.io.pop_front().unwrap();
        c.io_done(work.task, IoResult::Ok, &mut pool);
        assert_eq!(data_in_lengths(&drain(&mut c)), [8192]);
        let pdus = text_request(&mut c, &mut pool, 101, b"MaxRecvDataSegmentLength=1024\0");
        let [(TargetPdu::Text(r), data)] = pdus.as_slice() else {
            panic!("{pdus:?}")
        };
        assert!(r.final_bit && !r.cont && r.ttt == RESERVED_TAG && r.itt == 0x77);
        assert!(data.is_empty(), "{:?}", String::from_utf8_lossy(data));
        assert_eq!(c.params.initiator_max_recv_data_segment_length, 1024);
        // The same READ again: eight Data-In of 1024 bytes, the status in the last.
        let read = tagged(read16(102), 0x43);
        feed(&mut c, &mut pool, &read, &[]);
        let work = c.io.pop_front().unwrap();
        c.io_done(work.task, IoResult::Ok, &mut pool);
        let pdus = drain(&mut c);
        assert_eq!(data_in_lengths(&pdus), [1024; 8]);
        assert!(
            matches!(pdus.last(), Some((TargetPdu::DataIn(d), _)) if d.status_present && d.status == 0)
        );
    }

    /// Data-In queued before the Text Request goes out ahead of its response, cut to the value
    /// in force when it was queued; the response itself keeps within the new value.
    #[test]
    fn data_in_queued_before_the_declaration_keeps_its_cut() {
        let (mut c, mut pool) = conn(true);
        feed(&mut c, &mut pool, &read16(100), &[]);
        let work = c.io.pop_front().unwrap();
        c.io_done(work.task, IoResult::Ok, &mut pool);
        let text = b"MaxRecvDataSegmentLength=512\0SendTargets=All\0";
        let pdus = text_request(&mut c, &mut pool, 101, text);
        assert_eq!(data_in_lengths(&pdus), [8192]);
        assert!(matches!(pdus[0].0, TargetPdu::DataIn(_)), "{pdus:?}");
        let Some((TargetPdu::Text(r), data)) = pdus.last() else {
            panic!("{pdus:?}")
        };
        assert!(r.final_bit && data.starts_with(b"TargetName=iqn.2026-11.io.vit:t\0"));
        assert!(data.len() <= 512);
    }

    /// Keys that cannot change after login (LO and IO) are answered Reject and keep their
    /// values; a bad declaration is Reject too, and a failed negotiation changes nothing;
    /// unknown keys stay NotUnderstood.
    #[test]
    fn keys_not_negotiable_in_full_feature_phase_are_rejected_and_change_nothing() {
        let (mut c, mut pool) = conn(true);
        let before = c.params.clone();
        let answers = [
            (
                &b"MaxBurstLength=512\0"[..],
                &b"MaxBurstLength=Reject\0"[..],
            ),
            (b"HeaderDigest=CRC32C\0", b"HeaderDigest=Reject\0"),
            (
                b"MaxRecvDataSegmentLength=100\0",
                b"MaxRecvDataSegmentLength=Reject\0",
            ),
            (
                b"MaxRecvDataSegmentLength=1024\0ImmediateData=No\0",
                b"ImmediateData=Reject\0",
            ),
            (
                b"X-com.example.Foo=1\0",
                b"X-com.example.Foo=NotUnderstood\0",
            ),
        ];
        for (k, (ask, want)) in answers.into_iter().enumerate() {
            let pdus = text_request(&mut c, &mut pool, 100 + k as u32, ask);
            let [(TargetPdu::Text(r), data)] = pdus.as_slice() else {
                panic!("{pdus:?}")
            };
            assert!(r.final_bit);
            assert_eq!(String::from_utf8_lossy(data), String::from_utf8_lossy(want));
        }
        assert_eq!(c.params, before);
    }

    /// A Text Request whose text breaks RFC 7143 §6.1 (a key repeated, a pair without `=`, a
    /// last pair without its NUL, a key name over 63 bytes) or offers a value reserved for
    /// answers (§6.2) is a protocol error: Reject, and nothing in it is taken. It was answered
    /// with an empty Text Response, as if it had asked nothing (a SendTargets=All among them:
    /// "no targets").
    #[test]
    fn a_malformed_text_request_is_rejected_and_changes_nothing() {
        let (mut c, mut pool) = conn(true);
        let before = c.params.clone();
        let long_key = format!("{}=1\0", "K".repeat(64));
        let bad: [&[u8]; 5] = [
            b"MaxRecvDataSegmentLength=1024\0SendTargets=All\0SendTargets=All\0",
            b"MaxRecvDataSegmentLength=1024\0MaxBurstLength=Reject\0",
            b"MaxRecvDataSegmentLength=1024\0SendTargets\0",
            b"MaxRecvDataSegmentLength=1024\0SendTargets=All",
            long_key.as_bytes(),
        ];
        each_rejected(&mut c, &mut pool, 100, &bad);
        assert_eq!(c.params, before);
        // The connection goes on: a well-formed request is answered.
        let pdus = text_request(&mut c, &mut pool, 105, b"SendTargets=All\0");
        assert!(lists_the_target(&pdus), "{pdus:?}");
    }

    /// Feeds each of `asks` as a one-PDU Text Request (CmdSN from `cmd_sn` on): each is
    /// rejected as a protocol error.
    fn each_rejected(c: &mut Conn, pool: &mut BufferPool, cmd_sn: u32, asks: &[&[u8]]) {
        for (k, ask) in asks.iter().enumerate() {
            let pdus: Vec<TargetPdu> = text_request(c, pool, cmd_sn + k as u32, ask)
                .into_iter()
                .map(|(p, _)| p)
                .collect();
            assert!(
                rejected(&pdus, RejectReason::ProtocolError),
                "{:?}: {pdus:?}",
                String::from_utf8_lossy(ask)
            );
        }
    }

    /// Whether `pdus` is one final Text Response listing the session's target.
    fn lists_the_target(pdus: &[(TargetPdu, Vec<u8>)]) -> bool {
        matches!(pdus, [(TargetPdu::Text(r), data)]
            if r.final_bit && data.starts_with(b"TargetName=iqn.2026-11.io.vit:t\0"))
    }

    /// RFC 7143 §11.10.2: a Text Request with the C bit set MUST have the F bit clear. One with
    /// both set was taken as the first piece of a continued text (answered F=0, its text kept to
    /// be joined with the next request's); it is a protocol error, and nothing of it is kept.
    #[test]
    fn a_text_request_with_f_and_c_both_set_is_rejected() {
        let (mut c, mut pool) = conn(true);
        let text = b"SendTargets=All\0";
        let t = crate::iscsi::pdu::TextRequest {
            final_bit: true,
            cont: true,
            itt: 0x66,
            ttt: RESERVED_TAG,
            cmd_sn: 100,
            data_segment_length: text.len() as u32,
            ..Default::default()
        };
        let mut b = [0u8; BHS_LEN];
        t.encode(&mut b);
        feed(&mut c, &mut pool, &b, text);
        let pdus = sent(&mut c);
        assert!(rejected(&pdus, RejectReason::ProtocolError), "{pdus:?}");
        // Nothing of it was kept: the next request is answered on its own.
        let pdus = text_request(&mut c, &mut pool, 101, b"SendTargets=All\0");
        assert!(lists_the_target(&pdus), "{pdus:?}");
    }

    /// RFC 7143 §4.3: a discovery session takes only Text Requests with the SendTargets key
    /// (and Logout); "all other requests MUST be rejected". A Text Request without SendTargets
    /// was answered (a MaxRecvDataSegmentLength declaration taken).
    #[test]
    fn a_discovery_session_rejects_a_text_request_without_send_targets() {
        let (mut c, mut pool) = conn(true);
        c.visible = c.target_list();
        c.target = None;
        let before = c.params.clone();
        let asks: [&[u8]; 3] = [b"MaxRecvDataSegmentLength=1024\0", b"X-io.vit.k=1\0", b""];
        each_rejected(&mut c, &mut pool, 100, &asks);
        assert_eq!(c.params, before);
        // With SendTargets the other keys are taken too.
        let pdus = text_request(
            &mut c,
            &mut pool,
            103,
            b"MaxRecvDataSegmentLength=1024\0SendTargets=All\0",
        );
        assert!(lists_the_target(&pdus), "{pdus:?}");
        assert_eq!(c.params.initiator_max_recv_data_segment_length, 1024);
    }

    /// NOP-In reflects at most the initiator's MaxRecvDataSegmentLength of ping data
    /// (RFC 7143 §11.18.3).
    #[test]
    fn ping_data_is_reflected_within_the_initiators_limit() {
        let (mut c, mut pool) = conn(true);
        text_request(&mut c, &mut pool, 100, b"MaxRecvDataSegmentLength=512\0");
        let nop = NopOut {
            immediate: true,
            itt: 9,
            ttt: RESERVED_TAG,
            cmd_sn: 101,
            data_segment_length: 2048,
            ..Default::default()
        };
        let mut b = [0u8; BHS_LEN];
        nop.encode(&mut b);
        let ping: Vec<u8> = (0..2048).map(|i| i as u8).collect();
        feed(&mut c, &mut pool, &b, &ping);
        let pdus = drain(&mut c);
        let [(TargetPdu::NopIn(n), data)] = pdus.as_slice() else {
            panic!("{pdus:?}")
        };
        assert_eq!(n.data_segment_length, 512);
        assert_eq!(data[..], ping[..512]);
    }

    #[test]
    fn a_waiting_command_aborted_is_dropped_from_the_wait() {
        let (mut c, mut pool, big) = conn_with_its_one_buffer_held();
        let read = read16(100);
        feed(&mut c, &mut pool, &read, &[]);
        feed(&mut c, &mut pool, &abort_task(0x42, 101), &[]);
        assert!(matches!(sent(&mut c).as_slice(), [TargetPdu::TaskMgmt(r)] if r.response == 0));
        pool.release(big);
        assert!(!c.grant_buffer(&mut pool) && !c.waiting_for_buffer());
        assert!(c.io.is_empty() && pool.available() == 1);
    }

    /// A command waiting for a buffer when another session resets the LUN came before the
    /// reset: it is aborted, not run once a buffer frees (before, a READ waiting so was
    /// carried out and answered GOOD after the reset, ahead of the reset's unit attention).
    #[test]
    fn a_command_waiting_for_a_buffer_is_aborted_by_a_reset_meanwhile() {
        let (mut c, mut pool, big) = conn_with_its_one_buffer_held();
        feed(&mut c, &mut pool, &read16(100), &[]);
        assert!(c.waiting_for_buffer());
        reset_by_another_session(&c);
        pool.release(big);
        c.grant_buffer(&mut pool);
        assert!(c.io.is_empty(), "a command the reset aborted is not run");
        assert!(!c.waiting_for_buffer() && c.tasks_in_flight() == 0);
        assert_eq!(pool.available(), 1);
        // The next command meets the reset's unit attention.
        assert_eq!(test_unit_ready(&mut c, &mut pool, 101).0, 2);
    }

    #[test]
    fn a_waiting_commands_slot_and_tag_reused_after_an_abort_run_the_new_command() {
        // Initiators reuse a tag once its abort is answered (open-iscsi's ITT is its task
        // slot), and the freed task slot is the first free one: the new command takes both.
        let (mut c, mut pool, big) = conn_with_its_one_buffer_held();
        let read = read16(100);
        feed(&mut c, &mut pool, &read, &[]);
        feed(&mut c, &mut pool, &abort_task(0x42, 101), &[]);
        assert!(matches!(sent(&mut c).as_slice(), [TargetPdu::TaskMgmt(r)] if r.response == 0));
        // Same tag, same slot: a WRITE of 8 KiB, no immediate data; it waits too.
        feed(&mut c, &mut pool, &write10(16, true, 101, 0), &[]);
        assert!(sent(&mut c).is_empty() && c.waiting_for_buffer());
        pool.release(big);
        assert!(c.grant_buffer(&mut pool));
        // The write asks for its data; it is not run as the aborted READ's command (which
        // would write the buffer's old contents without ever asking for data).
        let queued: Vec<_> = c.io.iter().map(|w| (w.req.kind, w.req.byte_len)).collect();
        assert!(
            queued.is_empty(),
            "written before its data came: {queued:?}"
        );
        let pdus = sent(&mut c);
        assert!(
            matches!(pdus.as_slice(), [TargetPdu::R2t(r)] if r.desired_length == 8192),
            "{pdus:?}"
        );
    }

    #[test]
    fn a_writes_stall_counts_the_seconds_since_its_last_data() {
        let (mut c, mut pool) = conn(true);
        assert_eq!(c.data_out_stall(), 0, "no write waits");
        let data = vec![0x5au8; 4096];
        feed(
            &mut c,
            &mut pool,
            &write10(8, true, 100, 1024),
            &data[..1024],
        );
        let ttt = match sent(&mut c).as_slice() {
            [TargetPdu::R2t(r2t)] => r2t.ttt,
            other => panic!("{other:?}"),
        };
        assert_eq!((c.data_out_stall(), c.data_out_stall()), (1, 2));
        // Data for it, though not all, and less than a step: the count goes on (a trickle of
        // Data-Out would keep the buffer otherwise).
        feed(
            &mut c,
            &mut pool,
            &data_out(ttt, 0, 1024, 1024, false),
            &data[1024..2048],
        );
        assert_eq!(c.data_out_stall(), 3);
        feed(
            &mut c,
            &mut pool,
            &data_out(ttt, 1, 2048, 2048, true),
            &data[2048..],
        );
        assert_eq!(
            c.data_out_stall(),
            0,
            "all in: it waits for the device, not the initiator"
        );
        assert!(c.io.pop_front().is_some());
    }

    /// A write's immediate data came with it, before its stall clock started: it is not a step
    /// of Data-Out, and the first trickle after its R2T does not restart the count.
    #[test]
    fn a_writes_immediate_data_does_not_count_as_data_out_progress() {
        let (mut c, _) = conn(true);
        c.params.first_burst_length = 65536;
        c.params.target_max_recv_data_segment_length = 65536;
        let mut pool = BufferPool::new(&[(1 << 20, 2)]).unwrap();
        let data = vec![0x5au8; 160 * 512];
        feed(
            &mut c,
            &mut pool,
            &write10(160, true, 100, 65536),
            &data[..65536],
        );
        let r2t = match sent(&mut c).as_slice() {
            [TargetPdu::R2t(r)] => *r,
            other => panic!("{other:?}"),
        };
        assert_eq!(r2t.buffer_offset, 65536);
        assert_eq!((c.data_out_stall(), c.data_out_stall()), (1, 2));
        feed(
            &mut c,
            &mut pool,
            &data_out(r2t.ttt, 0, 65536, 512, false),
            &data[65536..65536 + 512],
        );
        assert_eq!(
            c.data_out_stall(),
            3,
            "512 bytes of Data-Out after 64 KiB of immediate data restarted the count"
        );
    }

    /// The count restarts once a write's data has moved on by [`STALL_PROGRESS`] bytes since
    /// it last did, whatever the bursts and PDUs it came in.
    #[test]
    fn a_writes_stall_restarts_once_its_data_moves_on_by_a_step() {
        let (mut c, _) = conn(true);
        let mut pool = BufferPool::new(&[(1 << 20, 2)]).unwrap();
        let data = vec![0x5au8; 160 * 512];
        feed(&mut c, &mut pool, &write10(160, true, 100, 0), &[]);
        // Bursts of 16 KiB (MaxBurstLength) in PDUs of 4 KiB, a second apart.
        let mut counts = Vec::new();
        let mut done = 0;
        while done < STALL_PROGRESS {
            let r2t = match sent(&mut c).as_slice() {
                [TargetPdu::R2t(r)] => *r,
                other => panic!("{other:?}"),
            };
            counts.push(c.data_out_stall());
            let end = r2t.buffer_offset + r2t.desired_length;
            for (sn, at) in (r2t.buffer_offset..end).step_by(4096).enumerate() {
                let n = (end - at).min(4096);
                let bhs = data_out(r2t.ttt, sn as u32, at, n, at + n == end);
                feed(
                    &mut c,
                    &mut pool,
                    &bhs,
                    &data[at as usize..(at + n) as usize],
                );
            }
            done = end;
        }
        assert_eq!(
            counts,
            [1, 2, 3, 4],
            "a burst short of the step restarted it"
        );
        sent(&mut c);
        assert_eq!(c.data_out_stall(), 1, "64 KiB came: it counts from there");
    }

    #[test]
    fn a_write_is_not_counted_stalled_while_vitd_has_not_sent_its_r2t() {
        let (mut c, mut pool) = conn(true);
        feed(&mut c, &mut pool, &write10(8, true, 100, 0), &[]);
        // Its R2T is still queued (behind Data-In on a slow link, say).
        assert_eq!(c.out.len(), 1);
        assert_eq!(
            c.data_out_stall(),
            0,
            "the initiator has not been asked yet"
        );
        assert_eq!(c.data_out_stall(), 0, "nor while the R2T waits its turn");
        sent(&mut c);
        // Sent: from now on the initiator is waited for.
        assert_eq!((c.data_out_stall(), c.data_out_stall()), (1, 2));
        // Other answers queued meanwhile (a NOP-In) do not stop the count: its R2T is out.
        c.ping();
        assert_eq!(c.data_out_stall(), 3);
    }

    fn data_out(ttt: u32, data_sn: u32, offset: u32, len: u32, final_bit: bool) -> [u8; BHS_LEN] {
        let d = DataOut {
            final_bit,
            itt: 0x42,
            ttt,
            data_sn,
            buffer_offset: offset,
            data_segment_length: len,
            ..Default::default()
        };
        let mut b = [0u8; BHS_LEN];
        d.encode(&mut b);
        b
    }

    /// Fills every buffer of the pool with `byte`, as earlier commands would leave them.
    fn soil(pool: &mut BufferPool, byte: u8) {
        let ids: Vec<_> = std::iter::from_fn(|| pool.alloc(1)).collect();
        for &b in &ids {
            pool.slice(b).fill(byte);
        }
        for b in ids {
            pool.release(b);
        }
    }

    /// Another session resets LUN 0 (its mail, as this session will find it).
    fn reset_by_another_session(c: &Conn) {
        let other = crate::scsi::pr::ItNexusId {
            initiator: "iqn.2026-11.io.vit:other".into(),
            ..Default::default()
        };
        c.target.as_ref().unwrap().luns[0]
            .shared
            .post(crate::daemon::shared::Mail::Reset {
                reason: SenseReason::BusDeviceResetFunction,
                from: other,
            });
    }

    /// WRITE(10) of `blocks` blocks at LBA 0 (EDTL the whole transfer), W bit `write`.
    fn write10(blocks: u8, write: bool, cmd_sn: u32, immediate: u32) -> [u8; BHS_LEN] {
        let cdb = [0x2a, 0, 0, 0, 0, 0, 0, 0, blocks, 0];
        command(
            &cdb,
            u32::from(blocks) * 512,
            false,
            write,
            cmd_sn,
            immediate,
        )
    }

    fn rejected(pdus: &[TargetPdu], reason: RejectReason) -> bool {
        matches!(pdus, [TargetPdu::Reject(r)] if r.reason == reason as u8)
    }

    /// A WRITE(10) of 8 blocks (ITT 0x42, CmdSN 100) without immediate data; the TTT of the R2T
    /// it gets for all 4096 bytes.
    fn write_awaiting_r2t(c: &mut Conn, pool: &mut BufferPool) -> u32 {
        feed(c, pool, &write10(8, true, 100, 0), &[]);
        let pdus = sent(c);
        let [TargetPdu::R2t(r2t)] = pdus.as_slice() else {
            panic!("{pdus:?}")
        };
        r2t.ttt
    }

    /// [`data_out`] for task `itt`.
    fn data_out_of(itt: u32, ttt: u32, data_sn: u32, offset: u32, len: u32) -> [u8; BHS_LEN] {
        let mut b = data_out(ttt, data_sn, offset, len, true);
        b[16..20].copy_from_slice(&itt.to_be_bytes());
        b
    }

    #[test]
    fn a_data_out_naming_no_r2t_of_its_task_is_rejected_as_an_invalid_field() {
        let (mut c, mut pool) = conn(true);
        soil(&mut pool, 0xee);
        let ttt = write_awaiting_r2t(&mut c, &mut pool);
        // Its ITT with a TTT vitd never gave; its TTT under another ITT; an ITT and TTT neither
        // of which names anything: each an invalid TTT/ITT (RFC 7143 §11.17.1, Note 2), told at
        // once rather than left to the stall timeout, none of its data taken.
        for (bhs, fill) in [
            (data_out_of(0x42, ttt.wrapping_add(1000), 0, 0, 512), 1),
            (data_out_of(0x43, ttt, 0, 0, 512), 2),
            (data_out_of(0x7777, 0x0bad_0bad, 0, 0, 512), 3),
        ] {
            feed(&mut c, &mut pool, &bhs, &[fill; 512]);
            let pdus = sent(&mut c);
            assert!(rejected(&pdus, RejectReason::InvalidPduField), "{pdus:?}");
            assert!(c.io.is_empty(), "no write before all its data is in");
        }
        // The task still takes its own data.
        feed(
            &mut c,
            &mut pool,
            &data_out_of(0x42, ttt, 0, 0, 4096),
            &[5; 4096],
        );
        let work = c.io.pop_front().expect("backing-store write");
        let data = &pool.slice(work.buf.unwrap())[..work.req.byte_len];
        assert!(data.iter().all(|&b| b == 5));
    }

    /// A LUN RESET answered while a write's R2T was outstanding: the Data-Out already on the
    /// wire for it is absorbed, never rejected, and the TTT counter's wrap leaves TTTs given
    /// before it valid.
    #[test]
    fn data_out_after_a_reset_and_across_the_ttt_wrap_is_absorbed() {
        let (mut c, mut pool) = conn(true);
        let ttt = write_awaiting_r2t(&mut c, &mut pool);
        feed(&mut c, &mut pool, &tmf(5, 101), &[]); // LOGICAL UNIT RESET
        assert!(c.resets_pending() && c.poll_resets(&mut pool));
        assert!(matches!(sent(&mut c).as_slice(), [TargetPdu::TaskMgmt(_)]));
        // The counter comes round while that Data-Out is still on its way.
        c.next_ttt = RESERVED_TAG - 1;
        assert_eq!(c.fresh_ttt(), RESERVED_TAG - 1);
        assert_eq!(c.next_ttt, 1);
        feed(
            &mut c,
            &mut pool,
            &data_out_of(0x42, ttt, 0, 0, 4096),
            &[1; 4096],
        );
        let pdus = sent(&mut c);
        assert!(
            pdus.is_empty(),
            "late data of a task the reset ended: {pdus:?}"
        );
        assert!(c.io.is_empty());
    }

    #[test]
    fn data_out_for_a_task_that_ended_is_absorbed_unanswered() {
        // Aborted with its R2T outstanding: the initiator still answers the TTT (RFC 7143
        // §11.5.1), and its Data-Out may be on the wire when the abort is answered.
        let (mut c, mut pool) = conn(true);
        let ttt = write_awaiting_r2t(&mut c, &mut pool);
        feed(&mut c, &mut pool, &abort_task(0x42, 101), &[]);
        assert!(matches!(sent(&mut c).as_slice(), [TargetPdu::TaskMgmt(_)]));
        feed(
            &mut c,
            &mut pool,
            &data_out_of(0x42, ttt, 0, 0, 512),
            &[1; 512],
        );
        assert!(sent(&mut c).is_empty(), "late data of an aborted task");
        assert!(c.io.is_empty());
        // InitialR2T=No (vitd offers Yes, and the key is an OR: a different offer only): a
        // write answered at its CDB (past the end of the LUN) may still be followed by the
        // unsolicited data the initiator sent with it.
        let (mut c, mut pool) = conn(false);
        c.params.initial_r2t = false;
        let cdb = [0x2a, 0, 0xff, 0xff, 0, 0, 0, 0, 8, 0];
        feed(
            &mut c,
            &mut pool,
            &command(&cdb, 4096, false, true, 100, 0),
            &[],
        );
        let pdus = sent(&mut c);
        assert!(
            matches!(pdus.as_slice(), [TargetPdu::ScsiResponse(r)] if r.status == 2),
            "{pdus:?}"
        );
        feed(
            &mut c,
            &mut pool,
            &data_out_of(0x42, RESERVED_TAG, 0, 0, 4096),
            &[1; 4096],
        );
        let pdus = sent(&mut c);
        assert!(pdus.is_empty(), "late unsolicited data: {pdus:?}");
        // With InitialR2T=Yes no Data-Out is ever unsolicited: one is a protocol error.
        let (mut c, mut pool) = conn(true);
        feed(
            &mut c,
            &mut pool,
            &data_out_of(0x42, RESERVED_TAG, 0, 0, 512),
            &[1; 512],
        );
        let pdus = sent(&mut c);
        assert!(rejected(&pdus, RejectReason::ProtocolError), "{pdus:?}");
    }

    #[test]
    fn data_out_must_continue_where_the_data_stands() {
        let (mut c, mut pool) = conn(true);
        soil(&mut pool, 0xee);
        // WRITE(10) of 8 blocks, no immediate data: one R2T for all 4096 bytes.
        let bhs = write10(8, true, 100, 0);
        feed(&mut c, &mut pool, &bhs, &[]);
        let pdus = sent(&mut c);
        let [TargetPdu::R2t(r2t)] = pdus.as_slice() else {
            panic!("{pdus:?}")
        };
        let ttt = r2t.ttt;
        feed(
            &mut c,
            &mut pool,
            &data_out(ttt, 0, 0, 512, false),
            &[1; 512],
        );
        assert!(sent(&mut c).is_empty());
        // The same 512 bytes again, then a PDU past a gap, then unsolicited data (InitialR2T=Yes):
        // each rejected, none counted, none landing in the task's buffer.
        for (bhs, fill) in [
            (data_out(ttt, 1, 0, 512, false), 2),
            (data_out(ttt, 1, 1024, 512, false), 3),
            (data_out(RESERVED_TAG, 1, 512, 512, false), 4),
        ] {
            feed(&mut c, &mut pool, &bhs, &[fill; 512]);
            assert!(rejected(&sent(&mut c), RejectReason::ProtocolError));
            assert!(c.io.is_empty(), "no write before all its data is in");
        }
        // The rest, in order: the write carries exactly what was sent.
        feed(
            &mut c,
            &mut pool,
            &data_out(ttt, 1, 512, 3584, true),
            &[5; 3584],
        );
        let work = c.io.pop_front().expect("backing-store write");
        let data = &pool.slice(work.buf.unwrap())[..work.req.byte_len];
        assert_eq!(work.req.byte_len, 4096);
        assert!(data[..512].iter().all(|&b| b == 1), "{:?}", &data[..16]);
        assert!(data[512..].iter().all(|&b| b == 5));
    }

    #[test]
    fn immediate_data_without_the_w_bit_is_rejected_and_no_data_is_assumed() {
        let (mut c, mut pool) = conn(true);
        soil(&mut pool, 0xee);
        // WRITE(10) of 8 blocks with its data as immediate data but the W bit clear.
        let bhs = write10(8, false, 100, 4096);
        feed(&mut c, &mut pool, &bhs, &[0x33; 4096]);
        assert!(rejected(&sent(&mut c), RejectReason::ProtocolError));
        assert!(c.io.is_empty(), "nothing written");
        assert_eq!(c.tasks_in_flight(), 0);
        // Without immediate data and without the W bit: no R2T and no data written, whatever
        // the CDB says (the initiator sends none); the response reports the overflow.
        let bhs = write10(8, false, 101, 0);
        feed(&mut c, &mut pool, &bhs, &[]);
        assert!(c.io.is_empty(), "nothing written");
        let pdus = sent(&mut c);
        let [TargetPdu::ScsiResponse(r)] = pdus.as_slice() else {
            panic!("{pdus:?}")
        };
        assert_eq!((r.itt, r.exp_cmd_sn), (0x42, 102));
        // Its EDTL (4096) says all the CDB wants, but none of it came: not a clean GOOD.
        assert_eq!(r.status, 0);
        assert!(r.overflow && !r.underflow, "{r:?}");
        assert_eq!(r.residual_count, 4096);
        assert_eq!(pool.available(), 8, "every buffer came back");
    }

    #[test]
    fn a_data_digest_error_frees_the_commands_task() {
        let (mut c, mut pool) = conn(true);
        let bhs = write10(8, true, 100, 512);
        assert!(matches!(
            c.on_header(&bhs, 512, &mut pool),
            DataDest::Slot { .. }
        ));
        c.data_digest_error(&bhs, &mut pool);
        assert!(rejected(&sent(&mut c), RejectReason::DataDigestError));
        assert_eq!(c.tasks_in_flight(), 0);
        assert_eq!(pool.available(), 8, "its buffer came back");
        // Nothing answers to its tag: an empty Data-Out for it runs nothing (and is unsolicited
        // under InitialR2T=Yes: a protocol error).
        feed(
            &mut c,
            &mut pool,
            &data_out(RESERVED_TAG, 0, 512, 0, true),
            &[],
        );
        assert!(c.io.is_empty());
        assert!(rejected(&sent(&mut c), RejectReason::ProtocolError));
        // The command sent again (its CmdSN was not taken) is served.
        feed(&mut c, &mut pool, &bhs, &[7; 512]);
        let pdus = sent(&mut c);
        assert!(
            matches!(pdus.as_slice(), [TargetPdu::R2t(r)] if r.buffer_offset == 512),
            "{pdus:?}"
        );
    }

    /// RFC 7143 §7.8: a Data-Out whose data digest fails is rejected (reason 0x02) and its
    /// data is missing; the write must not run on it, and once the data asked for is in
    /// (the F bit of the outstanding R2T), the task ends with CHECK CONDITION, ABORTED
    /// COMMAND, PROTOCOL SERVICE CRC ERROR, rather than waiting for data no ERL 0 initiator
    /// sends again.
    #[test]
    fn a_data_out_digest_error_ends_the_write_with_a_crc_error_once_its_data_is_in() {
        let (mut c, mut pool) = conn(true);
        // WRITE(10) of 8 blocks, no immediate data: one R2T for all 4096 bytes.
        let ttt = write_awaiting_r2t(&mut c, &mut pool);
        // Its first 512 bytes arrive with a bad digest.
        let bad = data_out(ttt, 0, 0, 512, false);
        let DataDest::Slot { buf, .. } = c.on_header(&bad, 512, &mut pool) else {
            panic!("in-order data goes to the task's buffer");
        };
        pool.slice(buf)[..512].fill(0xbd);
        c.data_digest_error(&bad, &mut pool);
        assert!(rejected(&sent(&mut c), RejectReason::DataDigestError));
        // The initiator goes on with the rest of the burst: taken in order, no Reject.
        feed(
            &mut c,
            &mut pool,
            &data_out(ttt, 1, 512, 3584, true),
            &[5; 3584],
        );
        assert!(c.io.is_empty(), "no write of data that failed its digest");
        let out: Vec<OutPdu> = std::iter::from_fn(|| c.pop_out()).collect();
        let [p] = out.as_slice() else {
            panic!("one answer: {} PDUs", out.len())
        };
        let TargetPdu::ScsiResponse(r) =
            TargetPdu::decode(p.header[..BHS_LEN].try_into().unwrap()).unwrap()
        else {
            panic!("a SCSI Response")
        };
        assert_eq!((r.itt, r.status), (0x42, Status::CheckCondition as u8));
        let OutData::Sense { bytes, len } = &p.data else {
            panic!("sense data")
        };
        // Fixed format after the 2-byte length: key at 2, ASC/ASCQ at 12/13.
        let sense = &bytes[2..*len];
        assert_eq!(
            (sense[2] & 0xf, sense[12], sense[13]),
            (0xB, 0x47, 0x05),
            "{sense:?}"
        );
        assert_eq!(c.tasks_in_flight(), 0);
        assert_eq!(pool.available(), 8, "its buffer came back");
    }

    /// A command discarded for its data digest leaves its CmdSN unused. An ERL 0 initiator does
    /// not send it again (libiscsi fails it on the Reject, open-iscsi waits for its timeout)
    /// and goes on with the next CmdSN: every later command would be ignored as out of order,
    /// the session hung. vitd ends the connection instead, so the initiator recovers it.
    #[test]
    fn a_command_past_a_cmd_sn_gap_ends_the_connection() {
        let (mut c, mut pool) = conn(true);
        let bhs = write10(8, true, 100, 512);
        c.on_header(&bhs, 512, &mut pool);
        c.data_digest_error(&bhs, &mut pool);
        assert!(rejected(&sent(&mut c), RejectReason::DataDigestError));
        let tur = command(&[0, 0, 0, 0, 0, 0], 0, false, false, 101, 0);
        let r = feed_with(&mut c, &mut pool, &tur, &[]).unwrap();
        assert!(r.is_err(), "a command past the gap ends the connection");
        assert!(c.io.is_empty() && sent(&mut c).is_empty());
    }

    /// An immediate ABORT TASK for tag `referenced`, RefCmdSN `ref_cmd_sn`, CmdSN `cmd_sn`.
    fn abort_unreceived(referenced: u32, ref_cmd_sn: u32, cmd_sn: u32) -> [u8; BHS_LEN] {
        encoded(crate::iscsi::pdu::TaskMgmtRequest {
            ref_cmd_sn,
            ..tmf_request(1, referenced, cmd_sn)
        })
    }

    /// RFC 7143 §11.5.1 b): the ABORT TASK of a command whose PDU was discarded (a data digest
    /// error) takes its CmdSN as received and answers Function complete, so the commands after
    /// the gap run. Before, it answered Task does not exist and ExpCmdSN stayed at the gap:
    /// every later command was dropped and the session served nothing more.
    #[test]
    fn an_abort_of_a_command_never_received_fills_its_cmd_sn_gap() {
        let (mut c, mut pool) = conn(true);
        // CmdSN 100 and 101 lost to data digest errors. (A command sent on past them ends the
        // connection: `a_command_past_a_cmd_sn_gap_ends_the_connection`.)
        for cmd_sn in [100, 101] {
            let bhs = write10(1, true, cmd_sn, 512);
            c.on_header(&bhs, 512, &mut pool);
            c.data_digest_error(&bhs, &mut pool);
        }
        sent(&mut c);
        // The initiator aborts 101 first: kept in mind, ExpCmdSN still at the gap of 100.
        feed(&mut c, &mut pool, &abort_unreceived(0x42, 101, 102), &[]);
        let pdus = sent(&mut c);
        assert!(
            matches!(pdus.as_slice(), [TargetPdu::TaskMgmt(r)]
                if r.response == 0 && r.exp_cmd_sn == 100),
            "{pdus:?}"
        );
        // Then 100: ExpCmdSN passes both, and the next command runs.
        feed(&mut c, &mut pool, &abort_unreceived(0x42, 100, 102), &[]);
        let pdus = sent(&mut c);
        assert!(
            matches!(pdus.as_slice(), [TargetPdu::TaskMgmt(r)]
                if r.response == 0 && r.exp_cmd_sn == 102),
            "{pdus:?}"
        );
        feed(&mut c, &mut pool, &read16(102), &[]);
        assert_eq!(c.io.len(), 1, "the command after the gap runs");
        // A RefCmdSN already passed (a command that completed), or not before the request's
        // own CmdSN: Task does not exist, nothing moves.
        for (ref_cmd_sn, cmd_sn) in [(99, 103), (103, 103), (104, 103)] {
            feed(
                &mut c,
                &mut pool,
                &abort_unreceived(0x77, ref_cmd_sn, cmd_sn),
                &[],
            );
            let pdus = sent(&mut c);
            assert!(
                matches!(pdus.as_slice(), [TargetPdu::TaskMgmt(r)]
                    if r.response == 1 && r.exp_cmd_sn == 103),
                "RefCmdSN {ref_cmd_sn}: {pdus:?}"
            );
        }
    }

    #[test]
    fn a_write_after_another_sessions_reset_meets_the_unit_attention() {
        let (mut c, mut pool) = conn(true);
        reset_by_another_session(&c);
        let bhs = write10(8, true, 100, 512);
        feed(&mut c, &mut pool, &bhs, &[7; 512]);
        let pdus = sent(&mut c);
        let [TargetPdu::ScsiResponse(r)] = pdus.as_slice() else {
            panic!("answered: {pdus:?}")
        };
        assert_eq!((r.status, r.itt, r.exp_cmd_sn), (2, 0x42, 101));
        assert!(c.io.is_empty());
        assert_eq!(pool.available(), 8);
    }

    #[test]
    fn a_verify_with_less_data_out_than_it_compares_is_refused() {
        let (mut c, mut pool) = conn(true);
        soil(&mut pool, 0xee);
        // VERIFY(10) BYTCHK=1 of 4 blocks (2048 bytes to compare), EDTL and immediate data 512.
        let bhs = command(
            &[0x2f, 0x02, 0, 0, 0, 0, 0, 0, 4, 0],
            512,
            false,
            true,
            100,
            512,
        );
        feed(&mut c, &mut pool, &bhs, &[0; 512]);
        assert!(c.io.is_empty(), "nothing compared");
        let pdus = sent(&mut c);
        let [TargetPdu::ScsiResponse(r)] = pdus.as_slice() else {
            panic!("{pdus:?}")
        };
        assert_eq!((r.status, r.itt), (2, 0x42));
        // With all its data it is compared.
        let bhs = command(
            &[0x2f, 0x02, 0, 0, 0, 0, 0, 0, 4, 0],
            2048,
            false,
            true,
            101,
            2048,
        );
        feed(&mut c, &mut pool, &bhs, &[0; 2048]);
        let work = c.io.pop_front().expect("verify");
        assert_eq!(work.req.data_out_len, 2048);
    }

    /// The one SCSI Response PDU of a command that moved no Data-In.
    fn response(c: &mut Conn) -> crate::iscsi::pdu::ScsiResponse {
        let pdus = sent(c);
        let [TargetPdu::ScsiResponse(r)] = pdus.as_slice() else {
            panic!("{pdus:?}")
        };
        *r
    }

    #[test]
    fn a_write_of_no_blocks_that_was_sent_data_reports_it_all_as_underflow() {
        let (mut c, mut pool) = conn(true);
        // WRITE(10) of 0 blocks with EDTL 512 and that block as immediate data: nothing of the
        // 512 bytes expected is taken (RFC 7143 §11.4.5.2: U, residual 512).
        let bhs = command(
            &[0x2a, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            512,
            false,
            true,
            100,
            512,
        );
        feed(&mut c, &mut pool, &bhs, &[0x5a; 512]);
        assert!(c.io.is_empty(), "nothing written");
        let r = response(&mut c);
        assert_eq!(r.status, 0);
        assert!(r.underflow && !r.overflow, "{r:?}");
        assert_eq!(r.residual_count, 512);
        // The same with nothing expected: no residual.
        let bhs = command(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0, false, true, 101, 0);
        feed(&mut c, &mut pool, &bhs, &[]);
        let r = response(&mut c);
        assert!(r.status == 0 && !r.underflow && !r.overflow && r.residual_count == 0);
    }

    #[test]
    fn a_verify_sent_more_data_out_than_it_compares_reports_the_underflow() {
        let (mut c, mut pool) = conn(true);
        // VERIFY(10) BYTCHK=1 of 1 block (512 bytes compared) with EDTL 1024: the last 512
        // bytes are not taken, an underflow of 512.
        let bhs = command(
            &[0x2f, 0x02, 0, 0, 0, 0, 0, 0, 1, 0],
            1024,
            false,
            true,
            100,
            1024,
        );
        feed(&mut c, &mut pool, &bhs, &[0; 1024]);
        let work = c.io.pop_front().expect("verify");
        assert_eq!(work.req.data_out_len, 512);
        c.io_done(work.task, IoResult::Ok, &mut pool);
        let r = response(&mut c);
        assert_eq!(r.status, 0);
        assert!(r.underflow && !r.overflow, "{r:?}");
        assert_eq!(r.residual_count, 512);
        // EDTL equal to what it compares: no residual.
        let bhs = command(
            &[0x2f, 0x02, 0, 0, 0, 0, 0, 0, 1, 0],
            512,
            false,
            true,
            101,
            512,
        );
        feed(&mut c, &mut pool, &bhs, &[0; 512]);
        let work = c.io.pop_front().expect("verify");
        c.io_done(work.task, IoResult::Ok, &mut pool);
        let r = response(&mut c);
        assert!(r.status == 0 && !r.underflow && !r.overflow && r.residual_count == 0);
    }

    fn abort_task(referenced: u32, cmd_sn: u32) -> [u8; BHS_LEN] {
        tmf_for(1, referenced, cmd_sn) // ABORT TASK
    }

    /// A task management function with no referenced task (a reset, ABORT TASK SET).
    fn tmf(function: u8, cmd_sn: u32) -> [u8; BHS_LEN] {
        tmf_for(function, RESERVED_TAG, cmd_sn)
    }

    fn tmf_for(function: u8, referenced: u32, cmd_sn: u32) -> [u8; BHS_LEN] {
        encoded(tmf_request(function, referenced, cmd_sn))
    }

    /// An immediate task management request, ITT 0x99.
    fn tmf_request(
        function: u8,
        referenced: u32,
        cmd_sn: u32,
    ) -> crate::iscsi::pdu::TaskMgmtRequest {
        crate::iscsi::pdu::TaskMgmtRequest {
            immediate: true,
            function,
            itt: 0x99,
            referenced_task_tag: referenced,
            cmd_sn,
            ..Default::default()
        }
    }

    fn encoded(t: crate::iscsi::pdu::TaskMgmtRequest) -> [u8; BHS_LEN] {
        let mut b = [0u8; BHS_LEN];
        t.encode(&mut b);
        b
    }

    /// The response codes of RFC 7143 §11.6.1 where a function is not carried out: a task
    /// set function addressed to a LUN the target lacks answers LUN does not exist (it said
    /// Function complete), TASK REASSIGN at ErrorRecoveryLevel 0 Task allegiance reassignment
    /// not supported and TARGET COLD RESET Task management function not supported (both said
    /// Task still allegiant, which is about a task on another connection).
    #[test]
    fn functions_not_carried_out_answer_the_rfcs_codes() {
        let (mut c, mut pool) = conn(true);
        let on_lun = |function: u8, lun: u64, cmd_sn: u32| {
            encoded(crate::iscsi::pdu::TaskMgmtRequest {
                lun,
                ..tmf_request(function, RESERVED_TAG, cmd_sn)
            })
        };
        let missing = u64::from_be_bytes(crate::scsi::encode_lun(5));
        for (function, lun, want) in [
            (2u8, missing, 2u8), // ABORT TASK SET
            (4, missing, 2),     // CLEAR TASK SET
            (3, missing, 2),     // CLEAR ACA
            (3, 0, 5),           // CLEAR ACA
            (7, 0, 5),           // TARGET COLD RESET
            (8, 0, 4),           // TASK REASSIGN
            (9, 0, 5),           // QUERY TASK (RFC 7144)
            (2, 0, 0),           // ABORT TASK SET of LUN 0
        ] {
            feed(&mut c, &mut pool, &on_lun(function, lun, 100), &[]);
            let pdus = sent(&mut c);
            assert!(
                matches!(pdus.as_slice(), [TargetPdu::TaskMgmt(r)] if r.response == want),
                "function {function}: {pdus:?}"
            );
        }
    }

    /// An ABORT TASK SET covering a write an earlier ABORT TASK already aborted, its I/O still
    /// in flight, waits for that I/O too: before, it was answered at once (the task counted
    /// only for the first function), and the write could land after its answer.
    #[test]
    fn a_second_abort_of_a_task_in_flight_waits_for_its_io_too() {
        let (mut c, mut pool) = conn(true);
        feed(&mut c, &mut pool, &write10(1, true, 100, 512), &[7; 512]);
        let work = c.io.pop_front().expect("the write's I/O");
        feed(&mut c, &mut pool, &abort_task(0x42, 101), &[]);
        assert!(sent(&mut c).is_empty(), "ABORT TASK waits for the write");
        let ats = encoded(crate::iscsi::pdu::TaskMgmtRequest {
            itt: 0x98,
            ..tmf_request(2, RESERVED_TAG, 101) // ABORT TASK SET
        });
        feed(&mut c, &mut pool, &ats, &[]);
        assert!(
            sent(&mut c).is_empty(),
            "ABORT TASK SET answered while the write may land"
        );
        c.io_done(work.task, IoResult::Ok, &mut pool);
        let pdus = sent(&mut c);
        let mut answered: Vec<u32> = pdus
            .iter()
            .map(|p| match p {
                TargetPdu::TaskMgmt(r) if r.response == 0 => r.itt,
                other => panic!("{other:?}"),
            })
            .collect();
        answered.sort_unstable();
        assert_eq!(answered, [0x98, 0x99]);
        assert_eq!(c.tasks_in_flight(), 0);
    }

    #[test]
    fn a_reset_is_answered_once_other_sessions_writes_have_ended() {
        for function in [5u8, 6] {
            // LOGICAL UNIT RESET, TARGET WARM RESET
            let (mut c, mut pool) = conn(true);
            let shared = &c.target.as_ref().unwrap().luns[0].shared;
            // Another data thread has a plain write in flight on the LUN, and another session a
            // job holding a range.
            assert!(shared.write_start(7, 0, 4096));
            assert!(shared.try_hold(8192, 16384));
            feed(&mut c, &mut pool, &tmf(function, 100), &[]);
            assert!(
                sent(&mut c).is_empty(),
                "no answer while their writes may land"
            );
            assert!(c.resets_pending() && !c.poll_resets(&mut pool));
            let shared = &c.target.as_ref().unwrap().luns[0].shared;
            assert!(
                !shared.write_start(3, 1 << 20, 2 << 20),
                "new writes wait meanwhile"
            );
            shared.write_done(7);
            assert!(!c.poll_resets(&mut pool), "the job still holds its range");
            let shared = &c.target.as_ref().unwrap().luns[0].shared;
            shared.release(8192, 16384);
            assert!(c.poll_resets(&mut pool) && !c.resets_pending());
            let pdus = sent(&mut c);
            assert!(
                matches!(pdus.as_slice(), [TargetPdu::TaskMgmt(r)] if r.response == 0),
                "{pdus:?}"
            );
            let shared = &c.target.as_ref().unwrap().luns[0].shared;
            assert!(
                shared.write_start(3, 1 << 20, 2 << 20),
                "writes go on after"
            );
            shared.write_done(3);
        }
    }

    /// A task management request reusing the tag of one still waiting for its answer is
    /// rejected (two held requests with one tag miscounted the tasks they wait for: a debug
    /// build panicked, and the first answer could be lost).
    #[test]
    fn a_task_management_request_reusing_a_held_ones_tag_is_rejected() {
        let (mut c, mut pool) = conn(true);
        let shared = &c.target.as_ref().unwrap().luns[0].shared;
        assert!(shared.write_start(7, 0, 4096));
        // A LOGICAL UNIT RESET (tag 0x99) waits for another session's write.
        feed(&mut c, &mut pool, &tmf(5, 100), &[]);
        assert!(sent(&mut c).is_empty());
        // ABORT TASK SET with the same tag: Reject, and the reset still answered once the
        // write ends.
        feed(&mut c, &mut pool, &tmf(2, 100), &[]);
        let pdus = sent(&mut c);
        assert!(
            matches!(pdus.as_slice(), [TargetPdu::Reject(_)]),
            "{pdus:?}"
        );
        let shared = &c.target.as_ref().unwrap().luns[0].shared;
        shared.write_done(7);
        assert!(c.poll_resets(&mut pool));
        let pdus = sent(&mut c);
        assert!(
            matches!(pdus.as_slice(), [TargetPdu::TaskMgmt(r)] if r.itt == 0x99 && r.response == 0),
            "{pdus:?}"
        );
        assert!(!c.resets_pending());
    }

    /// Another session of `c`'s target, as another initiator.
    fn other_session(c: &Conn) -> Conn {
        other_session_as(c, "iqn.2026-11.io.vit:other")
    }

    /// Another session of `c`'s target, as initiator `name`.
    fn other_session_as(c: &Conn, name: &str) -> Conn {
        let mut nexus = Nexus::without_attention(TargetPort {
            target_name: "iqn.2026-11.io.vit:t".into(),
            portal_group_tag: 1,
            relative_port_id: 1,
            target_ports: 1,
        });
        nexus.set_initiator(name, [0; 6]);
        Conn::new(
            params(true),
            c.target.clone(),
            nexus,
            SeqNums {
                stat_sn: 10,
                exp_cmd_sn: 100,
            },
            8,
        )
    }

    #[test]
    fn a_write_whose_data_came_before_a_reset_does_not_land_after_its_answer() {
        // Session B: a WRITE with all its data immediate. Its data is in, the mail was looked
        // at then (none), and its I/O waits in `io` for the data thread to start it.
        let (mut b, mut pool) = conn(true);
        feed(&mut b, &mut pool, &write10(1, true, 100, 512), &[7; 512]);
        let work = b.io.pop_front().expect("the write's I/O");
        // Session A, on another data thread, resets the LUN before B's thread gets to it: no
        // write is counted in flight, so the reset is answered at once.
        let mut a = other_session(&b);
        feed(&mut a, &mut pool, &tmf(5, 100), &[]);
        assert!(a.resets_pending() && a.poll_resets(&mut pool));
        assert!(matches!(sent(&mut a).as_slice(), [TargetPdu::TaskMgmt(r)] if r.response == 0));
        // B's data thread now starts the write as `start_file_io` does: not aborted (B has not
        // looked at the mail since), and counted in (the reset is over).
        assert!(!b.aborted(work.task));
        let target = b.target.clone().unwrap();
        let shared = &target.luns[0].shared;
        assert!(shared.write_start(1, 0, 512));
        // Counted in, it looks at the mail again: the reset aborted it, it is not written.
        assert!(
            !b.may_write(work.task, 0),
            "a write the reset aborted would land after the reset was answered"
        );
        shared.write_done(1);
        b.io_done(work.task, IoResult::Failed, &mut pool);
        assert!(sent(&mut b).is_empty(), "no answer for the aborted task");
        assert_eq!(b.tasks_in_flight(), 0);
    }

    #[test]
    fn mail_looked_at_between_pdus_frees_no_buffer_a_receive_may_be_filling() {
        let (mut c, mut pool) = conn(true);
        // Task A: a WRITE whose data all came; its I/O waits (deferred by the data thread).
        feed(&mut c, &mut pool, &write10(1, true, 100, 512), &[7; 512]);
        let work = c.io.pop_front().expect("A's I/O");
        // Task B: a WRITE asking for its data; the header of its Data-Out is in and the data
        // thread receives the data segment straight into B's buffer.
        let b = tagged(write10(16, true, 101, 0), 0x43);
        feed(&mut c, &mut pool, &b, &[]);
        let ttt = match sent(&mut c).as_slice() {
            [TargetPdu::R2t(r)] => r.ttt,
            other => panic!("{other:?}"),
        };
        let d = tagged(data_out(ttt, 0, 0, 8192, true), 0x43);
        let DataDest::Slot { buf, .. } = c.on_header(&d, 8192, &mut pool) else {
            panic!("B's data goes to its buffer");
        };
        let free = pool.available();
        // Meanwhile another session resets the LUN, and the data thread retries A.
        reset_by_another_session(&c);
        assert!(!c.may_write(work.task, 0), "A is aborted");
        assert_eq!(
            pool.available(),
            free,
            "B's buffer was given back while a receive into it was in flight"
        );
        // The receive completes; B is aborted then, not written.
        pool.slice(buf)[..8192].fill(9);
        c.on_pdu(&d, &mut pool).unwrap();
        assert!(c.io.is_empty());
        c.io_done(work.task, IoResult::Failed, &mut pool);
        assert_eq!(c.tasks_in_flight(), 0);
        assert_eq!(pool.available(), 8, "every buffer back");
    }

    #[test]
    fn a_buffer_granted_mid_pdu_frees_no_buffer_a_receive_may_be_filling() {
        let (mut c, _) = conn(true);
        let mut pool = BufferPool::new(&[(4096, 4), (65536, 2)]).unwrap();
        let big = pool.alloc(65536).unwrap();
        // Task B: a WRITE of 8 KiB asking for its data (the other large buffer).
        let b = tagged(write10(16, true, 100, 0), 0x43);
        feed(&mut c, &mut pool, &b, &[]);
        let ttt = match sent(&mut c).as_slice() {
            [TargetPdu::R2t(r)] => r.ttt,
            other => panic!("{other:?}"),
        };
        // Task W: a WRITE of one block with an EDTL of 16 KiB and its block as immediate
        // data: no buffer of 16 KiB is free, it waits, its data kept in a small one.
        let w = tagged(
            command(
                &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0],
                16384,
                false,
                true,
                101,
                512,
            ),
            0x44,
        );
        feed(&mut c, &mut pool, &w, &[5; 512]);
        assert!(c.waiting_for_buffer());
        // B's Data-Out header is in; its data segment is being received into B's buffer.
        let d = tagged(data_out(ttt, 0, 0, 8192, true), 0x43);
        assert!(matches!(
            c.on_header(&d, 8192, &mut pool),
            DataDest::Slot { .. }
        ));
        // Another session resets the LUN; a buffer comes back and the data thread grants it.
        reset_by_another_session(&c);
        pool.release(big);
        let free = pool.available();
        c.grant_buffer(&mut pool);
        assert!(
            pool.available() <= free,
            "B's buffer was given back while a receive into it was in flight"
        );
        // The receive completes: both tasks are aborted by the reset, every buffer comes back.
        c.on_pdu(&d, &mut pool).unwrap();
        c.grant_buffer(&mut pool);
        assert!(c.io.is_empty() && !c.waiting_for_buffer());
        assert_eq!(c.tasks_in_flight(), 0);
        assert_eq!(pool.available(), 6);
    }

    #[test]
    fn a_session_gone_mid_reset_lets_writes_go_on() {
        let (mut c, mut pool) = conn(true);
        let shared = &c.target.as_ref().unwrap().luns[0].shared;
        assert!(shared.write_start(7, 0, 4096));
        feed(&mut c, &mut pool, &tmf(5, 100), &[]);
        c.release_all(&mut pool);
        let shared = &c.target.as_ref().unwrap().luns[0].shared;
        assert!(shared.write_start(3, 1 << 20, 2 << 20));
        assert!(shared.try_hold(8192, 16384));
    }

    #[test]
    fn an_abort_is_answered_once_the_aborted_write_has_ended() {
        let (mut c, mut pool) = conn(true);
        // WRITE(10) of 1 block, its data immediate: backing-store work at once.
        let bhs = write10(1, true, 100, 512);
        feed(&mut c, &mut pool, &bhs, &[7; 512]);
        let write = c.io.pop_front().expect("write queued");
        feed(&mut c, &mut pool, &abort_task(0x42, 101), &[]);
        assert!(
            sent(&mut c).is_empty(),
            "no answer while the write may still land"
        );
        assert!(c.aborted(write.task));
        // The tag is free again: a READ reusing it is taken.
        let read = command(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], 512, true, false, 101, 0);
        feed(&mut c, &mut pool, &read, &[]);
        assert!(sent(&mut c).is_empty());
        assert_eq!(c.io.len(), 1, "the READ is under way");
        // The write ends (the data thread does not start an aborted task's I/O): the abort is
        // answered, and the write never is.
        c.io_done(write.task, IoResult::Failed, &mut pool);
        let pdus = sent(&mut c);
        assert!(
            matches!(pdus.as_slice(), [TargetPdu::TaskMgmt(r)] if r.response == 0 && r.itt == 0x99),
            "{pdus:?}"
        );
    }

    #[test]
    fn a_write_collecting_data_is_aborted_by_another_sessions_reset() {
        let (mut c, mut pool) = conn(true);
        let bhs = write10(1, true, 100, 0);
        feed(&mut c, &mut pool, &bhs, &[]);
        let pdus = sent(&mut c);
        let [TargetPdu::R2t(r2t)] = pdus.as_slice() else {
            panic!("{pdus:?}")
        };
        reset_by_another_session(&c);
        feed(
            &mut c,
            &mut pool,
            &data_out(r2t.ttt, 0, 0, 512, true),
            &[9; 512],
        );
        assert!(c.io.is_empty(), "a task the reset aborted is not written");
        assert_eq!(c.tasks_in_flight(), 0);
        // The next command meets the reset's unit attention.
        assert_eq!(test_unit_ready(&mut c, &mut pool, 101).0, 2);
    }

    /// CLEAR TASK SET clears the commands of every I_T nexus on the LUN (SAM-5 7.6, whatever
    /// the task set type), not only the issuing one's as ABORT TASK SET does; with TAS = 0 (the
    /// Control mode page vit reports) a nexus that lost commands to it gets COMMANDS CLEARED
    /// BY ANOTHER INITIATOR. Before, another session's write collecting its data went on and
    /// was written after the answer said the task set was clear, and nothing told it.
    #[test]
    fn a_clear_task_set_clears_other_sessions_commands() {
        let (mut a, mut pool) = conn(true);
        let mut b = other_session(&a);
        let mut idle = other_session_as(&a, "iqn.2026-11.io.vit:idle");
        // Session B: a WRITE waiting for its Data-Out.
        feed(&mut b, &mut pool, &write10(1, true, 100, 0), &[]);
        let pdus = sent(&mut b);
        let [TargetPdu::R2t(r2t)] = pdus.as_slice() else {
            panic!("{pdus:?}")
        };
        // Session A: CLEAR TASK SET of LUN 0, answered once no write is in flight on it
        // (another thread has one).
        let lun = a.target.as_ref().unwrap().luns[0].clone();
        assert!(lun.shared.write_start(7, 0, 4096));
        feed(&mut a, &mut pool, &tmf(4, 100), &[]);
        assert!(!a.poll_resets(&mut pool) && sent(&mut a).is_empty());
        lun.shared.write_done(7);
        assert!(a.poll_resets(&mut pool));
        let pdus = sent(&mut a);
        assert!(
            matches!(pdus.as_slice(), [TargetPdu::TaskMgmt(r)] if r.response == 0),
            "{pdus:?}"
        );
        // B's data comes: the task was cleared, nothing is written.
        feed(
            &mut b,
            &mut pool,
            &data_out(r2t.ttt, 0, 0, 512, true),
            &[9; 512],
        );
        assert!(b.io.is_empty(), "a cleared task is not written");
        assert_eq!(b.tasks_in_flight(), 0);
        // B's next command meets COMMANDS CLEARED BY ANOTHER INITIATOR; A's and that of a
        // session that had no commands there meet nothing.
        assert_eq!(
            test_unit_ready(&mut b, &mut pool, 101),
            (2, Some((6, 0x2F)))
        );
        for (c, cmd_sn) in [(&mut a, 100), (&mut idle, 100)] {
            assert_eq!(test_unit_ready(c, &mut pool, cmd_sn), (0, None));
        }
    }

    /// A session whose only command another session's CLEAR TASK SET aborted as its write was
    /// about to start (the data thread looks at the mail then, `may_write`, and frees the
    /// task before the session takes the mail whole) still gets COMMANDS CLEARED BY ANOTHER
    /// INITIATOR: before, the mail found no task left and the loss went unreported.
    #[test]
    fn a_command_cleared_as_its_write_starts_is_reported() {
        let (mut b, mut pool) = conn(true);
        feed(&mut b, &mut pool, &write10(1, true, 100, 512), &[7; 512]);
        let work = b.io.pop_front().expect("the write's I/O");
        let mut a = other_session(&b);
        feed(&mut a, &mut pool, &tmf(4, 100), &[]);
        assert!(a.poll_resets(&mut pool));
        assert!(matches!(sent(&mut a).as_slice(), [TargetPdu::TaskMgmt(r)] if r.response == 0));
        let target = b.target.clone().unwrap();
        assert!(target.luns[0].shared.write_start(1, 0, 512));
        assert!(!b.may_write(work.task, 0), "cleared: not written");
        target.luns[0].shared.write_done(1);
        b.io_done(work.task, IoResult::Failed, &mut pool);
        assert!(sent(&mut b).is_empty(), "no answer for the cleared task");
        assert_eq!(
            test_unit_ready(&mut b, &mut pool, 101),
            (2, Some((6, 0x2F))),
            "no unit attention"
        );
    }

    /// A command whose status was already queued when another session's CLEAR TASK SET came
    /// lost nothing: its answer goes out and no COMMANDS CLEARED BY ANOTHER INITIATOR follows.
    #[test]
    fn a_clear_task_set_reports_no_loss_of_a_command_already_answered() {
        let (mut b, mut pool) = conn(true);
        feed(&mut b, &mut pool, &read16(100), &[]);
        let work = b.io.pop_front().expect("the read's I/O");
        b.io_done(work.task, IoResult::Ok, &mut pool);
        let mut a = other_session(&b);
        feed(&mut a, &mut pool, &tmf(4, 100), &[]);
        assert!(a.poll_resets(&mut pool));
        sent(&mut a);
        let tur = command(&[0, 0, 0, 0, 0, 0], 0, false, false, 101, 0);
        feed(&mut b, &mut pool, &tur, &[]);
        let pdus = sent(&mut b);
        assert!(
            matches!(pdus.as_slice(), [.., TargetPdu::DataIn(d), TargetPdu::ScsiResponse(r)]
                if d.status_present && r.status == 0),
            "{pdus:?}"
        );
    }

    /// PERSISTENT RESERVE OUT, service action `sa`, with 24 bytes of immediate parameter
    /// data: reservation key `key`, service action reservation key `sa_key`, type Write
    /// Exclusive.
    fn prout(sa: u8, key: u64, sa_key: u64, cmd_sn: u32) -> ([u8; BHS_LEN], [u8; 24]) {
        let cdb = [0x5F, sa, 0x01, 0, 0, 0, 0, 0, 24, 0];
        let mut data = [0u8; 24];
        data[..8].copy_from_slice(&key.to_be_bytes());
        data[8..16].copy_from_slice(&sa_key.to_be_bytes());
        (command(&cdb, 24, false, true, cmd_sn, 24), data)
    }

    /// Two sessions of one target, A and B (another initiator), registered with keys 0xA and
    /// 0xB (CmdSN 100 taken).
    fn registered_pair() -> (Conn, Conn, BufferPool) {
        let (mut a, mut pool) = conn(true);
        let mut b = other_session(&a);
        for (c, key) in [(&mut a, 0xA), (&mut b, 0xB)] {
            let (bhs, data) = prout(0, 0, key, 100); // REGISTER
            feed(c, &mut pool, &bhs, &data);
            let pdus = sent(c);
            assert!(
                matches!(pdus.as_slice(), [TargetPdu::ScsiResponse(r)] if r.status == 0),
                "{pdus:?}"
            );
        }
        (a, b, pool)
    }

    /// PREEMPT AND ABORT aborts the preempted nexuses' commands before it completes (SPC-4,
    /// the fencing of a cluster node): its GOOD waits, as a reset's answer does, until no
    /// write is in flight on the LUN. Before, it was answered at once while the preempted
    /// initiator's write already handed to the backing store could still land after it.
    #[test]
    fn a_preempt_and_abort_is_answered_once_the_writes_in_flight_have_ended() {
        let (mut a, _b, mut pool) = registered_pair();
        // B's write is in flight on the backing store (counted in on its data thread).
        let lun = a.target.as_ref().unwrap().luns[0].clone();
        assert!(lun.shared.write_start(7, 0, 4096));
        // A preempts B and aborts its commands: no status while B's write may land.
        let (bhs, data) = prout(5, 0xA, 0xB, 101);
        feed(&mut a, &mut pool, &bhs, &data);
        assert!(sent(&mut a).is_empty(), "answered while B's write may land");
        assert!(a.resets_pending() && !a.poll_resets(&mut pool));
        assert!(
            !lun.shared.write_start(3, 1 << 20, 2 << 20),
            "new writes wait meanwhile"
        );
        lun.shared.write_done(7);
        assert!(a.poll_resets(&mut pool) && !a.resets_pending());
        let pdus = sent(&mut a);
        assert!(
            matches!(pdus.as_slice(), [TargetPdu::ScsiResponse(r)] if r.status == 0 && r.itt == 0x42),
            "{pdus:?}"
        );
        assert_eq!(a.tasks_in_flight(), 0);
        assert_eq!(pool.available(), 8, "its buffer came back");
        assert!(lun.shared.write_start(3, 1 << 20, 2 << 20), "writes go on");
        lun.shared.write_done(3);
        // A PREEMPT AND ABORT refused (a key nobody holds) is answered at once.
        let (bhs, data) = prout(5, 0xA, 0xC, 102);
        feed(&mut a, &mut pool, &bhs, &data);
        let pdus = sent(&mut a);
        assert!(
            matches!(pdus.as_slice(), [TargetPdu::ScsiResponse(r)] if r.status == 0x18),
            "{pdus:?}"
        );
    }

    /// A session that sends nothing to the LUN while other sessions post more than the
    /// mailbox once kept (256 effects) still finds what was meant for it: the PREEMPT AND ABORT
    /// of its write still waiting for Data-Out, and its REGISTRATIONS PREEMPTED. Before, the
    /// oldest mail was dropped for every session alike: the preempted write landed after the
    /// PREEMPT AND ABORT was answered, and no unit attention told its initiator.
    #[test]
    fn mail_is_not_lost_to_a_session_that_looks_late() {
        let (mut a, mut b, mut pool) = registered_pair();
        // B: a WRITE waiting for its Data-Out.
        feed(&mut b, &mut pool, &write10(1, true, 101, 0), &[]);
        let pdus = sent(&mut b);
        let [TargetPdu::R2t(r2t)] = pdus.as_slice() else {
            panic!("{pdus:?}")
        };
        // A preempts B and aborts its commands; nothing is in flight, so it is answered.
        let (bhs, data) = prout(5, 0xA, 0xB, 101);
        feed(&mut a, &mut pool, &bhs, &data);
        assert!(a.poll_resets(&mut pool));
        assert!(matches!(sent(&mut a).as_slice(), [TargetPdu::ScsiResponse(r)] if r.status == 0));
        // Other sessions' reservation changes, none for B, fill the mailbox many times over.
        let third = crate::scsi::pr::ItNexusId {
            initiator: "iqn.2026-11.io.vit:third".into(),
            ..Default::default()
        };
        let lun = a.target.as_ref().unwrap().luns[0].clone();
        for _ in 0..1000 {
            lun.shared.post(crate::daemon::shared::Mail::Reservation(
                crate::scsi::pr::PrEffects {
                    unit_attentions: vec![crate::scsi::pr::UaTarget {
                        it: third.clone(),
                        all_tg_pt: false,
                        reason: SenseReason::ReservationsReleased,
                    }],
                    ..Default::default()
                },
            ));
        }
        // B's data comes: its task was aborted, nothing is written.
        feed(
            &mut b,
            &mut pool,
            &data_out(r2t.ttt, 0, 0, 512, true),
            &[9; 512],
        );
        assert!(
            b.io.is_empty(),
            "a write PREEMPT AND ABORT aborted lands after its answer"
        );
        assert_eq!(b.tasks_in_flight(), 0);
        assert_eq!(
            test_unit_ready(&mut b, &mut pool, 102),
            (2, Some((6, 0x2A))),
            "REGISTRATIONS PREEMPTED"
        );
    }

    #[test]
    fn out_of_window_commands_are_dropped_and_nops_echoed() {
        let (mut c, mut pool) = conn(true);
        feed(
            &mut c,
            &mut pool,
            &command(&[0, 0, 0, 0, 0, 0], 0, false, false, 250, 0),
            &[],
        );
        assert!(
            c.out.is_empty() && c.io.is_empty(),
            "a CmdSN outside the window is ignored"
        );
        feed(
            &mut c,
            &mut pool,
            &command(&[0, 0, 0, 0, 0, 0], 0, false, false, 100, 0),
            &[],
        );
        let pdus = sent(&mut c);
        let [TargetPdu::ScsiResponse(r)] = pdus.as_slice() else {
            panic!("{pdus:?}")
        };
        assert_eq!((r.status, r.exp_cmd_sn), (0, 101));
        let nop = NopOut {
            immediate: true,
            itt: 9,
            ttt: RESERVED_TAG,
            cmd_sn: 101,
            data_segment_length: 4,
            ..Default::default()
        };
        let mut b = [0u8; BHS_LEN];
        nop.encode(&mut b);
        feed(&mut c, &mut pool, &b, b"ping");
        let out: Vec<OutPdu> = c.out.drain(..).collect();
        assert_eq!(out.len(), 1);
        assert!(matches!(&out[0].data, OutData::Bytes(v) if v == b"ping"));
    }

    #[test]
    fn unknown_opcode_is_rejected_not_fatal() {
        let (mut c, mut pool) = conn(true);
        let mut b = [0u8; BHS_LEN];
        b[0] = 0x1c;
        c.on_header(&b, 0, &mut pool);
        c.on_pdu(&b, &mut pool).unwrap();
        let pdus = sent(&mut c);
        assert!(
            matches!(pdus.as_slice(), [TargetPdu::Reject(_)]),
            "{pdus:?}"
        );
    }
}
