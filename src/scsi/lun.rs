//! Logical units and the command executor.
//!
//! [`execute`] runs one command for one I_T nexus: it finds the logical unit, reports a pending
//! unit attention, decodes and validates the CDB and either completes the command itself
//! ([`Outcome::Done`]) or hands back a range-checked [`IoRequest`] ([`Outcome::Io`]) that the
//! caller performs on the backing store and finishes with [`complete_io`].

use super::cdb::{Blocks, Command, Lba, MediaCommand, MediaOp};
use super::datain::DataIn;
use super::inquiry;
use super::mode::{self, ModeSenseRequest};
use super::opcodes::op;
use super::pr::{self, ItNexusId, PrFailure, PrState, ProutCdb};
use super::report;
use super::sbc;
use super::sense::{FieldPointer, Sense, SenseData, SenseFormat, SenseReason};
use super::ua::UaQueue;
use super::xcopy;

/// T10 vendor identification of every logical unit.
pub const VENDOR: &str = "VIT";
/// Product identification used when none is configured (and for unsupported LUNs).
pub const DEFAULT_PRODUCT: &str = "VIRTUAL DISK";
/// Product revision used when none is configured.
pub const DEFAULT_REVISION: &str = "0001";
/// Default maximum transfer per command, in bytes (Block Limits VPD page).
pub const DEFAULT_MAX_TRANSFER_BYTES: u32 = 8 << 20;
/// Largest LUN id representable with flat space addressing.
pub const MAX_LUN_ID: u16 = 0x3FFF;

/// Logical block provisioning capabilities, set by the transport from what the backing store
/// can do (a thin LUN on a file system that punches holes: all true, since a hole reads as
/// zeros). They drive READ CAPACITY (16), the Block Limits and Logical Block Provisioning VPD
/// pages, UNMAP, WRITE SAME's UNMAP bit and GET LBA STATUS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Provisioning {
    /// LBPME: logical block provisioning management enabled (thin provisioning).
    pub lbpme: bool,
    /// LBPU: UNMAP supported.
    pub lbpu: bool,
    /// LBPWS: WRITE SAME (16) with UNMAP supported.
    pub lbpws: bool,
    /// LBPWS10: WRITE SAME (10) with UNMAP supported.
    pub lbpws10: bool,
    /// LBPRZ: unmapped blocks read as zeros.
    pub lbprz: bool,
}

impl Provisioning {
    /// Everything on: a thin LUN whose deallocated blocks read as zeros.
    pub const fn thin() -> Self {
        Self {
            lbpme: true,
            lbpu: true,
            lbpws: true,
            lbpws10: true,
            lbprz: true,
        }
    }
}

/// Everything the device server knows about one direct-access logical unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LunInfo {
    /// LUN id (0..=16383).
    pub id: u16,
    /// Logical block size in bytes (512 or 4096).
    pub block_size: u32,
    /// Capacity in logical blocks.
    pub num_blocks: u64,
    /// Writes are refused with DATA PROTECT, WRITE PROTECTED.
    pub read_only: bool,
    /// The backing store caches writes (WCE = 1); when false every write is done with FUA.
    pub write_cache_enabled: bool,
    /// Product identification (16 ASCII characters used).
    pub product: String,
    /// Product revision level (4 ASCII characters used).
    pub revision: String,
    /// Unit serial number (ASCII, at most 64 characters used).
    pub serial: String,
    /// 64-bit identity of the logical unit, the source of its NAA designator.
    pub naa: u64,
    /// IEEE company id (24 bits) placed in the NAA designator.
    pub ieee_company_id: u32,
    /// Largest transfer length accepted, in blocks (Block Limits VPD page).
    pub max_transfer_blocks: u32,
    /// Optimal transfer length, in blocks.
    pub optimal_transfer_blocks: u32,
    /// Provisioning capabilities.
    pub provisioning: Provisioning,
    /// The smallest unit UNMAP frees, in blocks (the Block Limits page's OPTIMAL UNMAP
    /// GRANULARITY): the file system's block for a file, the accounting chunk of a memory LUN.
    pub optimal_unmap_blocks: u32,
    /// The first LBA aligned to an unmap granule (UNMAP GRANULARITY ALIGNMENT, reported valid
    /// when the granule is more than one block).
    pub unmap_alignment: u32,
    /// LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT (READ CAPACITY (16)): a physical block is
    /// 2^this logical blocks, the unit written without reading around it.
    pub physical_exp: u8,
    /// LOWEST ALIGNED LOGICAL BLOCK ADDRESS: the first LBA at the start of a physical block.
    pub lowest_aligned: u16,
    /// The logical unit is defined but cannot be served (its backing store could not be opened):
    /// every command but INQUIRY, REPORT LUNS and REQUEST SENSE is answered NOT READY, LOGICAL
    /// UNIT NOT READY, MANUAL INTERVENTION REQUIRED, as a disk that needs its operator.
    pub offline: bool,
}

/// Why a logical unit definition cannot be served.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LunConfigError {
    /// The id cannot be addressed (flat space addressing stops at 16383).
    #[error("LUN {id}: id is above {MAX_LUN_ID}")]
    IdTooLarge {
        /// The LUN id.
        id: u16,
    },
    /// Two logical units share one id.
    #[error("LUN {id}: defined more than once")]
    Duplicate {
        /// The LUN id.
        id: u16,
    },
    /// The block size is not one this device server supports.
    #[error("LUN {id}: block size {size} is not 512 or 4096")]
    BlockSize {
        /// The LUN id.
        id: u16,
        /// The rejected block size.
        size: u32,
    },
    /// The capacity is zero blocks or its byte size overflows 64 bits.
    #[error("LUN {id}: capacity of {blocks} blocks is not usable")]
    Capacity {
        /// The LUN id.
        id: u16,
        /// The rejected capacity in blocks.
        blocks: u64,
    },
    /// The maximum transfer length is zero or below the optimal transfer length.
    #[error("LUN {id}: transfer limits max {max} / optimal {optimal} blocks are inconsistent")]
    TransferLimits {
        /// The LUN id.
        id: u16,
        /// Maximum transfer length in blocks.
        max: u32,
        /// Optimal transfer length in blocks.
        optimal: u32,
    },
}

impl LunInfo {
    /// Checks that the definition can be served.
    pub fn validate(&self) -> Result<(), LunConfigError> {
        let id = self.id;
        if id > MAX_LUN_ID {
            return Err(LunConfigError::IdTooLarge { id });
        }
        if !matches!(self.block_size, 512 | 4096) {
            return Err(LunConfigError::BlockSize {
                id,
                size: self.block_size,
            });
        }
        if self.num_blocks == 0
            || self
                .num_blocks
                .checked_mul(u64::from(self.block_size))
                .is_none()
        {
            return Err(LunConfigError::Capacity {
                id,
                blocks: self.num_blocks,
            });
        }
        if self.max_transfer_blocks == 0 || self.optimal_transfer_blocks > self.max_transfer_blocks
        {
            return Err(LunConfigError::TransferLimits {
                id,
                max: self.max_transfer_blocks,
                optimal: self.optimal_transfer_blocks,
            });
        }
        Ok(())
    }

    /// A read-write LUN with default identification strings and transfer limits.
    pub fn new(id: u16, block_size: u32, num_blocks: u64, naa: u64, serial: &str) -> Self {
        let max = (DEFAULT_MAX_TRANSFER_BYTES / block_size.max(1)).max(1);
        Self {
            id,
            block_size,
            num_blocks,
            read_only: false,
            write_cache_enabled: true,
            product: DEFAULT_PRODUCT.to_owned(),
            revision: DEFAULT_REVISION.to_owned(),
            serial: serial.to_owned(),
            naa,
            ieee_company_id: 0,
            max_transfer_blocks: max,
            optimal_transfer_blocks: max,
            provisioning: Provisioning::default(),
            optimal_unmap_blocks: 1,
            unmap_alignment: 0,
            physical_exp: 0,
            lowest_aligned: 0,
            offline: false,
        }
    }
}

/// The target port of an I_T nexus (supplied by the transport at login).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetPort {
    /// The iSCSI target name.
    pub target_name: String,
    /// The target portal group tag.
    pub portal_group_tag: u16,
    /// The relative target port identifier (1 to `target_ports`).
    pub relative_port_id: u16,
    /// How many target ports the target has, numbered 1 to this (one per portal group it is
    /// in); REPORT TARGET PORT GROUPS lists them all.
    pub target_ports: u16,
}

/// The logical units of one target.
#[derive(Clone, Debug)]
pub struct DeviceServer {
    luns: Vec<LunInfo>,
}

impl DeviceServer {
    /// A device server for `luns` (any order); every definition is validated.
    pub fn new(mut luns: Vec<LunInfo>) -> Result<Self, LunConfigError> {
        for l in &luns {
            l.validate()?;
        }
        luns.sort_by_key(|l| l.id);
        if let Some(w) = luns.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(LunConfigError::Duplicate { id: w[0].id });
        }
        Ok(Self { luns })
    }

    /// The logical unit with id `id`.
    pub fn lun(&self, id: u16) -> Option<&LunInfo> {
        self.luns
            .binary_search_by_key(&id, |l| l.id)
            .ok()
            .and_then(|i| self.luns.get(i))
    }

    /// All logical units, by id.
    pub fn luns(&self) -> &[LunInfo] {
        &self.luns
    }
}

/// Per-I_T-nexus state: the target port it goes through and a unit attention queue per
/// logical unit.
#[derive(Clone, Debug)]
pub struct Nexus {
    port: TargetPort,
    it: ItNexusId,
    ua: Vec<(u16, UaQueue)>,
    copies: Vec<(u16, xcopy::CopyResult)>,
}

/// How many EXTENDED COPY results one I_T nexus holds (the oldest is dropped).
pub const MAX_HELD_COPY_RESULTS: usize = 4;

impl Nexus {
    /// A new I_T nexus: every logical unit starts with POWER ON, RESET, OR BUS DEVICE RESET
    /// OCCURRED pending.
    pub fn new(port: TargetPort, server: &DeviceServer) -> Self {
        let mut n = Self::without_attention(port);
        n.post_all(server, SenseReason::PowerOnReset);
        n
    }

    /// An I_T nexus with no unit attention pending.
    pub fn without_attention(port: TargetPort) -> Self {
        let it = ItNexusId {
            initiator: String::new(),
            isid: [0; 6],
            target: port.target_name.clone(),
            rel_port: port.relative_port_id,
        };
        Self {
            port,
            it,
            ua: Vec::new(),
            copies: Vec::new(),
        }
    }

    /// Holds the result of an EXTENDED COPY this nexus sent to `lun`, for RECEIVE COPY
    /// RESULTS, COPY STATUS (a result with the same list identifier is replaced).
    pub fn record_copy(&mut self, lun: u16, result: xcopy::CopyResult) {
        self.copies
            .retain(|(l, r)| (*l, r.list_id) != (lun, result.list_id));
        if self.copies.len() >= MAX_HELD_COPY_RESULTS {
            self.copies.remove(0);
        }
        self.copies.push((lun, result));
    }

    fn copy_result(&self, lun: u16, list_id: u8) -> Option<&xcopy::CopyResult> {
        self.copies
            .iter()
            .find(|(l, r)| (*l, r.list_id) == (lun, list_id))
            .map(|(_, r)| r)
    }

    /// Names the initiator port of this nexus (iSCSI initiator name and ISID), the key of its
    /// reservations. Set it once at login, before the first command.
    pub fn set_initiator(&mut self, name: &str, isid: [u8; 6]) {
        name.clone_into(&mut self.it.initiator);
        self.it.isid = isid;
    }

    /// [`Nexus::set_initiator`] in builder form.
    pub fn with_initiator(mut self, name: &str, isid: [u8; 6]) -> Self {
        self.set_initiator(name, isid);
        self
    }

    /// The identity of this I_T nexus (initiator port and target port).
    pub fn id(&self) -> &ItNexusId {
        &self.it
    }

    /// The target port of this nexus.
    pub fn port(&self) -> &TargetPort {
        &self.port
    }

    /// Establishes a unit attention for LUN `lun` on this nexus (ids above 16383 ignored).
    pub fn post(&mut self, lun: u16, reason: SenseReason) {
        if lun > MAX_LUN_ID {
            return;
        }
        match self.ua.binary_search_by_key(&lun, |(id, _)| *id) {
            Ok(i) => {
                if let Some((_, q)) = self.ua.get_mut(i) {
                    q.push(reason);
                }
            }
            Err(i) => {
                let mut q = UaQueue::new();
                q.push(reason);
                self.ua.insert(i, (lun, q));
            }
        }
    }

    /// Establishes a unit attention on every logical unit of `server`.
    pub fn post_all(&mut self, server: &DeviceServer, reason: SenseReason) {
        for l in server.luns() {
            self.post(l.id, reason);
        }
    }

    /// The unit attention queue of `lun`, if any condition was ever posted.
    pub fn queue_mut(&mut self, lun: u16) -> Option<&mut UaQueue> {
        self.ua
            .binary_search_by_key(&lun, |(id, _)| *id)
            .ok()
            .and_then(|i| self.ua.get_mut(i))
            .map(|(_, q)| q)
    }

    /// Establishes the unit attentions that a configuration change from `old` to `new` calls
    /// for: REPORTED LUNS DATA HAS CHANGED on every LUN when LUNs were added or removed,
    /// CAPACITY DATA HAS CHANGED on a LUN whose capacity changed, MODE PARAMETERS CHANGED on a
    /// LUN whose write protection or write cache changed. Queues of removed LUNs are dropped.
    pub fn apply_change(&mut self, old: &DeviceServer, new: &DeviceServer) {
        self.ua.retain(|(id, _)| new.lun(*id).is_some());
        let ids = |s: &DeviceServer| s.luns().iter().map(|l| l.id).collect::<Vec<_>>();
        if ids(old) != ids(new) {
            self.post_all(new, SenseReason::ReportedLunsDataChanged);
        }
        for l in new.luns() {
            let Some(o) = old.lun(l.id) else { continue };
            if (o.num_blocks, o.block_size) != (l.num_blocks, l.block_size) {
                self.post(l.id, SenseReason::CapacityDataChanged);
            }
            if (o.read_only, o.write_cache_enabled) != (l.read_only, l.write_cache_enabled) {
                self.post(l.id, SenseReason::ModeParametersChanged);
            }
        }
    }

    /// Clears `reason` on every logical unit of this nexus.
    pub fn clear_everywhere(&mut self, reason: SenseReason) {
        for (_, q) in &mut self.ua {
            q.remove(reason);
        }
    }

    fn pop(&mut self, lun: u16) -> Option<SenseReason> {
        self.queue_mut(lun).and_then(UaQueue::pop)
    }
}

/// Encodes a LUN id as an 8-byte LUN (SAM-5 4.7): peripheral device addressing below 256,
/// flat space addressing above.
pub fn encode_lun(id: u16) -> [u8; 8] {
    let mut out = [0u8; 8];
    let [hi, lo] = id.to_be_bytes();
    if id < 256 {
        out[1] = lo;
    } else {
        out[0] = 0x40 | (hi & 0x3F);
        out[1] = lo;
    }
    out
}

/// Decodes an 8-byte LUN in peripheral (bus 0) or flat space addressing; `None` for any other
/// form (which addresses no logical unit here).
pub fn decode_lun(raw: [u8; 8]) -> Option<u16> {
    if raw[2..].iter().any(|&b| b != 0) {
        return None;
    }
    match raw[0] >> 6 {
        0b00 if raw[0] == 0 => Some(u16::from(raw[1])),
        0b01 => Some(u16::from_be_bytes([raw[0] & 0x3F, raw[1]])),
        _ => None,
    }
}

/// SCSI status codes (SAM-5 5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// GOOD.
    Good = 0x00,
    /// CHECK CONDITION.
    CheckCondition = 0x02,
    /// BUSY.
    Busy = 0x08,
    /// RESERVATION CONFLICT.
    ReservationConflict = 0x18,
    /// TASK SET FULL.
    TaskSetFull = 0x28,
}

/// A finished command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// Status.
    pub status: Status,
    /// Bytes of data-in placed in the caller's buffer (already truncated).
    pub data_len: usize,
    /// Sense data, with CHECK CONDITION.
    pub sense: Option<SenseData>,
}

impl Completion {
    /// GOOD with `data_len` bytes of data-in.
    pub fn good(data_len: usize) -> Self {
        Self {
            status: Status::Good,
            data_len,
            sense: None,
        }
    }

    /// TASK SET FULL: no resources for the command now; the initiator retries it.
    pub fn task_set_full() -> Self {
        Self {
            status: Status::TaskSetFull,
            data_len: 0,
            sense: None,
        }
    }

    /// RESERVATION CONFLICT.
    pub fn conflict() -> Self {
        Self {
            status: Status::ReservationConflict,
            data_len: 0,
            sense: None,
        }
    }

    /// CHECK CONDITION with fixed format sense (the control mode page has D_SENSE = 0).
    pub fn check(sense: impl Into<Sense>) -> Self {
        Self {
            status: Status::CheckCondition,
            data_len: 0,
            sense: Some(sense.into().encode(SenseFormat::Fixed)),
        }
    }
}

/// The kind of backing-store work an [`IoRequest`] asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoKind {
    /// Read `byte_len` bytes into the data-in buffer.
    Read,
    /// Write the data-out bytes.
    Write,
    /// Read the blocks; with `bytchk` compare them with the data-out bytes
    /// ([`first_mismatch`]), else only check that they can be read.
    Verify {
        /// Compare against data-out.
        bytchk: bool,
    },
    /// Write the data-out bytes, then read them back (and compare with `bytchk`).
    WriteVerify {
        /// Compare against data-out.
        bytchk: bool,
    },
    /// Make the range (0 blocks: everything from `lba`) durable.
    Sync {
        /// IMMED: status may be returned before the flush finishes.
        immed: bool,
    },
    /// UNMAP: collect `data_out_len` bytes, parse them with [`sbc::unmap_ranges`] and
    /// deallocate every range (punch holes); `lba`/`blocks` are unused.
    Unmap,
    /// WRITE SAME: collect one block of data-out (none with NDOB: the pattern is zeros) and
    /// write it to every block of the range, or deallocate the range when
    /// [`sbc::write_same_deallocates`] says so. `byte_len` is the size of the whole range.
    WriteSame {
        /// UNMAP bit.
        unmap: bool,
        /// NDOB bit: no data-out.
        ndob: bool,
    },
    /// COMPARE AND WRITE: data-out is 2 x `byte_len` ([`sbc::compare_and_write_halves`]).
    /// Atomically against every other write to these blocks: read them, compare with the
    /// first half ([`first_mismatch`]); on a difference finish with
    /// [`IoResult::Miscompare`] (offset), else write the second half.
    CompareAndWrite,
    /// ORWRITE: read the blocks, OR the data-out into them ([`sbc::or_into`]), write them
    /// back, atomically against other writes to these blocks.
    OrWrite,
    /// WRITE ATOMIC: write the data-out as one unit (no other command sees part of it).
    WriteAtomic,
    /// GET LBA STATUS: fill the data-in (`byte_len` bytes at most) with
    /// [`sbc::get_lba_status`], asking the backing store which runs are mapped.
    GetLbaStatus {
        /// Allocation length.
        alloc_len: u32,
    },
    /// EXTENDED COPY (LID1): collect `data_out_len` bytes, parse them with [`xcopy::parse`],
    /// resolve each designator ([`xcopy::resolve`] for this target's LUNs; none: COPY
    /// ABORTED, COPY TARGET DEVICE NOT REACHABLE), check each segment
    /// ([`xcopy::check_segment`]), copy the blocks in order (a failure: COPY ABORTED), then
    /// [`Nexus::record_copy`] the outcome for RECEIVE COPY RESULTS.
    ExtendedCopy,
}

impl IoKind {
    /// Whether the request writes the medium.
    pub fn writes(self) -> bool {
        matches!(
            self,
            Self::Write
                | Self::WriteVerify { .. }
                | Self::Unmap
                | Self::WriteSame { .. }
                | Self::CompareAndWrite
                | Self::OrWrite
                | Self::WriteAtomic
                | Self::ExtendedCopy
        )
    }
}

/// A validated media request for the backing store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoRequest {
    /// What to do.
    pub kind: IoKind,
    /// First block.
    pub lba: Lba,
    /// Number of blocks.
    pub blocks: Blocks,
    /// Byte offset of `lba` in the backing store.
    pub byte_offset: u64,
    /// Bytes moved to or from the medium.
    pub byte_len: usize,
    /// Bytes of data-out the command carries (what the transport must collect).
    pub data_out_len: usize,
    /// Write through / read from the medium (forced for writes when the cache is disabled).
    pub fua: bool,
    /// DPO: the data need not be kept in cache.
    pub dpo: bool,
}

impl IoRequest {
    /// For requests whose data-out must arrive whole, the CHECK CONDITION to end the command
    /// with when the initiator's Expected Data Transfer Length (`edtl`) differs from
    /// `data_out_len`: COMPARE AND WRITE (both halves or nothing), WRITE ATOMIC (all or
    /// nothing) and WRITE SAME (its one block is the pattern of every block, none with NDOB).
    /// Other writes write what arrived.
    pub fn data_out_mismatch(&self, edtl: usize) -> Option<SenseReason> {
        let whole = matches!(
            self.kind,
            IoKind::CompareAndWrite | IoKind::WriteAtomic | IoKind::WriteSame { .. }
        );
        (whole && edtl != self.data_out_len)
            .then_some(SenseReason::InvalidFieldInCdb(FieldPointer::byte(0)))
    }
}

/// How the backing store finished an [`IoRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoResult {
    /// Done.
    Ok,
    /// The medium could not be read (optionally at this LBA).
    ReadError(Option<Lba>),
    /// The medium could not be written (optionally at this LBA).
    WriteError(Option<Lba>),
    /// VERIFY/WRITE AND VERIFY compare failed at this byte offset of the data-out.
    Miscompare(u64),
    /// The backing store had no space left for a write (a thin LUN on a full file system).
    NoSpace,
    /// The backing store refused a write as read-only (its file system turned read-only
    /// under the LUN).
    WriteProtected,
    /// Anything else went wrong.
    Failed,
}

/// Outcome of [`execute`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The command is complete.
    Done(Completion),
    /// The caller must perform this request, then call [`complete_io`].
    Io(IoRequest),
}

/// One command as the transport hands it over.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The 8-byte LUN field.
    pub lun: [u8; 8],
    /// The CDB (may carry trailing padding bytes).
    pub cdb: &'a [u8],
    /// Data-out bytes received for the command.
    pub data_out: &'a [u8],
}

/// Whether a command is exempt from unit attention reporting (SAM-5 5.14; SPC-4 5.9).
fn ua_exempt(opcode: u8) -> bool {
    matches!(opcode, op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE)
}

/// Executes one command without reservation state: [`execute_with_pr`] with `None`
/// (reservation commands are answered INVALID COMMAND OPERATION CODE).
pub fn execute(
    server: &DeviceServer,
    nexus: &mut Nexus,
    req: &Request<'_>,
    data_in: &mut [u8],
) -> Outcome {
    execute_with_pr(server, nexus, req, data_in, None)
}

/// Whether a CDB needs the LUN's [`PrState`] to run (PERSISTENT RESERVE IN/OUT, RESERVE,
/// RELEASE): the caller must then pass it to [`execute_with_pr`].
pub fn needs_pr_state(cdb: &[u8]) -> bool {
    matches!(
        cdb.first().copied(),
        Some(
            op::PERSISTENT_RESERVE_IN
                | op::PERSISTENT_RESERVE_OUT
                | op::RESERVE_6
                | op::RESERVE_10
                | op::RELEASE_6
                | op::RELEASE_10
        )
    )
}

/// Executes one command. Data-in is written into `data_in`, truncated to the allocation
/// length and to the buffer's size.
///
/// `pr` is the addressed LUN's reservation state, locked by the caller. `None` asserts that
/// no reservation or registration exists on the LUN (the caller's lock-free fast path, for
/// example an atomic copy of [`PrState::is_active`]); it is refused for commands for which
/// [`needs_pr_state`] is true. After a reservation command the caller drains
/// [`PrState::take_effects`] under the same lock.
pub fn execute_with_pr(
    server: &DeviceServer,
    nexus: &mut Nexus,
    req: &Request<'_>,
    data_in: &mut [u8],
    pr: Option<&mut PrState>,
) -> Outcome {
    let opcode = req.cdb.first().copied();
    let lun_id = decode_lun(req.lun);
    let lun = lun_id.and_then(|id| server.lun(id));
    let exempt = opcode.is_some_and(ua_exempt);
    let Some(lun) = lun else {
        if !exempt {
            return Outcome::Done(Completion::check(SenseReason::LunNotSupported));
        }
        return Outcome::Done(run_without_lun(server, nexus, req.cdb, data_in));
    };
    if !exempt && let Some(ua) = nexus.pop(lun.id) {
        return Outcome::Done(Completion::check(ua));
    }
    if lun.offline && !exempt {
        return Outcome::Done(Completion::check(SenseReason::NotReadyManualIntervention));
    }
    let cmd = match Command::parse(req.cdb) {
        Ok(cmd) => cmd,
        Err(reason) => return Outcome::Done(Completion::check(reason)),
    };
    if let Some(pr) = pr.as_deref()
        && pr::conflicts(pr, &nexus.it, req.cdb)
    {
        return Outcome::Done(Completion::conflict());
    }
    if let Some(r) = block_request(lun, cmd) {
        return to_outcome(r);
    }
    match cmd {
        Command::SyncCache { lba, blocks, immed } => sync_cache(lun, lba, blocks, immed),
        Command::Unmap { anchor, param_len } => to_outcome(unmap(lun, anchor, param_len)),
        Command::GetLbaStatus { lba, alloc_len } => get_lba_status(lun, lba, alloc_len, data_in),
        Command::ExtendedCopy { param_len } => to_outcome(extended_copy(param_len)),
        Command::PersistentReserveIn { .. }
        | Command::PersistentReserveOut { .. }
        | Command::Reserve
        | Command::Release => Outcome::Done(match pr {
            Some(pr) => reservation_command(pr, &nexus.it, cmd, req.data_out, data_in),
            None => Completion::check(SenseReason::InvalidOpcode),
        }),
        other => Outcome::Done(
            match run_local(server, nexus, lun, other, req.data_out, data_in) {
                Ok(n) => Completion::good(n),
                Err(reason) => Completion::check(reason),
            },
        ),
    }
}

/// INQUIRY, REPORT LUNS and REQUEST SENSE addressed to a LUN that does not exist.
fn run_without_lun(
    server: &DeviceServer,
    nexus: &mut Nexus,
    cdb: &[u8],
    data_in: &mut [u8],
) -> Completion {
    let result = Command::parse(cdb).and_then(|cmd| match cmd {
        Command::Inquiry {
            evpd: false,
            alloc_len,
            ..
        } => {
            let mut w = DataIn::new(data_in, usize::from(alloc_len));
            inquiry::standard(None, &mut w);
            Ok(w.stored())
        }
        Command::ReportLuns { select, alloc_len } => {
            Ok(report_luns(server, nexus, select, alloc_len, data_in))
        }
        Command::RequestSense { desc, alloc_len } => Ok(request_sense(
            SenseReason::LunNotSupported,
            desc,
            alloc_len,
            data_in,
        )),
        _ => Err(SenseReason::LunNotSupported),
    });
    match result {
        Ok(n) => Completion::good(n),
        Err(reason) => Completion::check(reason),
    }
}

fn alloc(len: u32) -> usize {
    usize::try_from(len).unwrap_or(usize::MAX)
}

/// REPORT LUNS; it also clears REPORTED LUNS DATA HAS CHANGED for every logical unit of the
/// nexus (SPC-4 6.33).
fn report_luns(
    server: &DeviceServer,
    nexus: &mut Nexus,
    select: u8,
    alloc_len: u32,
    data_in: &mut [u8],
) -> usize {
    nexus.clear_everywhere(SenseReason::ReportedLunsDataChanged);
    let mut w = DataIn::new(data_in, alloc(alloc_len));
    report::report_luns(select, server.luns().iter().map(|l| l.id), &mut w);
    w.stored()
}

fn request_sense(reason: SenseReason, desc: bool, alloc_len: u8, data_in: &mut [u8]) -> usize {
    let format = if desc {
        SenseFormat::Descriptor
    } else {
        SenseFormat::Fixed
    };
    let sense = Sense::from(reason).encode(format);
    let mut w = DataIn::new(data_in, usize::from(alloc_len));
    w.put(sense.as_bytes());
    w.stored()
}

/// Commands the device server completes itself; returns the data-in length.
fn run_local(
    server: &DeviceServer,
    nexus: &mut Nexus,
    lun: &LunInfo,
    cmd: Command,
    data_out: &[u8],
    data_in: &mut [u8],
) -> Result<usize, SenseReason> {
    match cmd {
        Command::TestUnitReady | Command::PreventAllow { .. } => Ok(0),
        Command::StartStopUnit { loej, .. } => {
            // The medium is not removable: LOEJ cannot be honoured.
            if loej {
                return Err(SenseReason::InvalidFieldInCdb(FieldPointer::bit(4, 1)));
            }
            Ok(0)
        }
        Command::RequestSense { desc, alloc_len } => {
            let reason = nexus.pop(lun.id).unwrap_or(if lun.offline {
                SenseReason::NotReadyManualIntervention
            } else {
                SenseReason::NoSense
            });
            Ok(request_sense(reason, desc, alloc_len, data_in))
        }
        Command::Inquiry {
            evpd,
            page_code,
            alloc_len,
        } => {
            let mut w = DataIn::new(data_in, usize::from(alloc_len));
            if evpd {
                inquiry::vpd(&nexus.port, lun, page_code, &mut w)?;
            } else {
                inquiry::standard(Some(lun), &mut w);
            }
            Ok(w.stored())
        }
        Command::ReportLuns { select, alloc_len } => {
            Ok(report_luns(server, nexus, select, alloc_len, data_in))
        }
        Command::ReadCapacity10 => {
            let mut w = DataIn::new(data_in, 8);
            report::read_capacity10(lun, &mut w);
            Ok(w.stored())
        }
        Command::ReadCapacity16 { alloc_len } => {
            let mut w = DataIn::new(data_in, alloc(alloc_len));
            report::read_capacity16(lun, &mut w);
            Ok(w.stored())
        }
        Command::ReportSupportedOpcodes {
            rctd,
            options,
            opcode,
            service_action,
            alloc_len,
        } => {
            let mut w = DataIn::new(data_in, alloc(alloc_len));
            report::report_supported_opcodes(lun, rctd, options, opcode, service_action, &mut w)?;
            Ok(w.stored())
        }
        Command::ModeSense {
            ten,
            dbd,
            llbaa,
            pc,
            page_code,
            subpage,
            alloc_len,
        } => {
            let mut w = DataIn::new(data_in, usize::from(alloc_len));
            let req = ModeSenseRequest {
                ten,
                dbd,
                llbaa,
                pc,
                page_code,
                subpage,
            };
            mode::mode_sense(lun, req, &mut w)?;
            Ok(w.stored())
        }
        Command::ModeSelect { ten, param_len, .. } => {
            mode::mode_select(lun, ten, param_len, data_out)?;
            Ok(0)
        }
        Command::PreFetch { lba, blocks, .. } => {
            // No cache to fill: GOOD once the range is checked (SBC-3 5.9).
            check_range(lun, lba, blocks)?;
            Ok(0)
        }
        Command::ReadDefectData {
            twelve,
            plist,
            glist,
            format,
            alloc_len,
        } => {
            let mut w = DataIn::new(data_in, alloc(alloc_len));
            report::read_defect_data(twelve, plist, glist, format, &mut w);
            Ok(w.stored())
        }
        Command::ReceiveCopyResults {
            service_action,
            list_id,
            alloc_len,
        } => {
            let mut w = DataIn::new(data_in, alloc(alloc_len));
            if service_action == op::SA_OPERATING_PARAMETERS {
                xcopy::operating_parameters(&mut w);
            } else {
                // COPY STATUS of a copy this nexus ran; none held: the list id is invalid.
                let held = nexus
                    .copy_result(lun.id, list_id)
                    .ok_or(SenseReason::InvalidFieldInCdb(FieldPointer::byte(2)))?;
                xcopy::copy_status(held, &mut w);
            }
            Ok(w.stored())
        }
        Command::ReportTargetPortGroups {
            extended,
            alloc_len,
        } => {
            let mut w = DataIn::new(data_in, alloc(alloc_len));
            report::report_target_port_groups(&nexus.port, extended, &mut w);
            Ok(w.stored())
        }
        Command::Media(_)
        | Command::SyncCache { .. }
        | Command::WriteSame { .. }
        | Command::Unmap { .. }
        | Command::GetLbaStatus { .. }
        | Command::ExtendedCopy { .. }
        | Command::PersistentReserveIn { .. }
        | Command::PersistentReserveOut { .. }
        | Command::Reserve
        | Command::Release => Err(SenseReason::InternalTargetFailure),
    }
}

fn to_outcome(r: Result<Option<IoRequest>, SenseReason>) -> Outcome {
    match r {
        Ok(Some(io)) => Outcome::Io(io),
        Ok(None) => Outcome::Done(Completion::good(0)),
        Err(reason) => Outcome::Done(Completion::check(reason)),
    }
}

/// A request that moves no blocks itself: only `kind` and `data_out_len` matter.
fn control_request(kind: IoKind, data_out_len: usize) -> IoRequest {
    IoRequest {
        kind,
        lba: Lba(0),
        blocks: Blocks(0),
        byte_offset: 0,
        byte_len: 0,
        data_out_len,
        fua: false,
        dpo: false,
    }
}

/// WRITE SAME (`cmd`, a [`Command::WriteSame`]).
fn write_same(lun: &LunInfo, cmd: Command) -> Result<Option<IoRequest>, SenseReason> {
    let Command::WriteSame {
        lba,
        blocks,
        unmap,
        anchor,
        ndob,
        length_field,
    } = cmd
    else {
        return Err(SenseReason::InternalTargetFailure);
    };
    if anchor {
        return Err(SenseReason::InvalidFieldInCdb(FieldPointer::bit(1, 4)));
    }
    let ten = length_field == 7;
    let p = &lun.provisioning;
    if unmap && !(if ten { p.lbpws10 } else { p.lbpws }) {
        return Err(SenseReason::InvalidFieldInCdb(FieldPointer::bit(1, 3)));
    }
    if lun.read_only {
        return Err(SenseReason::WriteProtected);
    }
    check_range(lun, lba, blocks)?;
    // WSNZ = 1: a zero NUMBER OF LOGICAL BLOCKS is refused (after the range check: a zero
    // length past the end is LBA OUT OF RANGE).
    if blocks.0 == 0 || blocks.0 > sbc::MAX_WRITE_SAME_BLOCKS {
        return Err(SenseReason::InvalidFieldInCdb(FieldPointer::byte(
            length_field,
        )));
    }
    let bs = u64::from(lun.block_size);
    let byte_len = usize::try_from(u64::from(blocks.0) * bs)
        .map_err(|_| SenseReason::InvalidFieldInCdb(FieldPointer::byte(length_field)))?;
    Ok(Some(IoRequest {
        kind: IoKind::WriteSame { unmap, ndob },
        lba,
        blocks,
        byte_offset: lba.0.checked_mul(bs).ok_or(SenseReason::LbaOutOfRange)?,
        byte_len,
        data_out_len: if ndob { 0 } else { lun.block_size as usize },
        fua: !lun.write_cache_enabled,
        dpo: false,
    }))
}

fn unmap(lun: &LunInfo, anchor: bool, param_len: u16) -> Result<Option<IoRequest>, SenseReason> {
    if !lun.provisioning.lbpu {
        return Err(SenseReason::InvalidOpcode);
    }
    if anchor {
        return Err(SenseReason::InvalidFieldInCdb(FieldPointer::bit(1, 0)));
    }
    if lun.read_only {
        return Err(SenseReason::WriteProtected);
    }
    match param_len {
        0 => Ok(None),
        1..8 => Err(SenseReason::ParameterListLengthError),
        n => Ok(Some(control_request(IoKind::Unmap, usize::from(n)))),
    }
}

/// EXTENDED COPY: the parameter list is parsed once it has arrived ([`xcopy::parse`]).
fn extended_copy(param_len: u32) -> Result<Option<IoRequest>, SenseReason> {
    match param_len {
        0 => Ok(None),
        n if n > xcopy::MAX_PARAM_LEN || n < xcopy::HEADER_LEN as u32 => {
            Err(SenseReason::ParameterListLengthError)
        }
        n => Ok(Some(control_request(IoKind::ExtendedCopy, n as usize))),
    }
}

/// GET LBA STATUS: a fully provisioned LUN is answered here (one mapped run to the end);
/// a thin one needs the backing store ([`IoKind::GetLbaStatus`]).
fn get_lba_status(lun: &LunInfo, lba: Lba, alloc_len: u32, data_in: &mut [u8]) -> Outcome {
    if lba.0 >= lun.num_blocks {
        return Outcome::Done(Completion::check(SenseReason::LbaOutOfRange));
    }
    if !lun.provisioning.lbpme {
        let mut probe = |_: u64, max: u64| -> Result<_, ()> { Ok((sbc::LbaState::Mapped, max)) };
        return Outcome::Done(
            sbc::get_lba_status(lun, lba, alloc_len, data_in, &mut probe)
                .unwrap_or_else(|()| Completion::check(SenseReason::InternalTargetFailure)),
        );
    }
    let byte_len = alloc(alloc_len).min(8 + 16 * sbc::MAX_LBA_STATUS_DESCRIPTORS);
    Outcome::Io(IoRequest {
        lba,
        byte_len,
        ..control_request(IoKind::GetLbaStatus { alloc_len }, 0)
    })
}

/// PERSISTENT RESERVE IN/OUT and SPC-2 RESERVE/RELEASE against the LUN's state.
fn reservation_command(
    pr: &mut PrState,
    it: &ItNexusId,
    cmd: Command,
    data_out: &[u8],
    data_in: &mut [u8],
) -> Completion {
    match cmd {
        Command::PersistentReserveIn {
            service_action,
            alloc_len,
        } => {
            let mut w = DataIn::new(data_in, usize::from(alloc_len));
            match pr::persistent_reserve_in(pr, service_action, &mut w) {
                Ok(()) => Completion::good(w.stored()),
                Err(reason) => Completion::check(reason),
            }
        }
        Command::PersistentReserveOut {
            service_action,
            scope,
            rtype,
            param_len,
        } => {
            let cdb = ProutCdb {
                service_action,
                scope,
                rtype,
                param_len,
            };
            match pr::persistent_reserve_out(pr, it, cdb, data_out) {
                Ok(()) => Completion::good(0),
                Err(PrFailure::Conflict) => Completion::conflict(),
                Err(PrFailure::Check(reason)) => Completion::check(reason),
            }
        }
        Command::Reserve => {
            pr::reserve_spc2(pr, it);
            Completion::good(0)
        }
        Command::Release => {
            pr::release_spc2(pr, it);
            Completion::good(0)
        }
        _ => Completion::check(SenseReason::InternalTargetFailure),
    }
}

/// Checks that `blocks` starting at `lba` lie within the LUN.
fn check_range(lun: &LunInfo, lba: Lba, blocks: Blocks) -> Result<(), SenseReason> {
    match lba.0.checked_add(u64::from(blocks.0)) {
        Some(end) if end <= lun.num_blocks => Ok(()),
        _ => Err(SenseReason::LbaOutOfRange),
    }
}

/// The request a media command (READ, WRITE, VERIFY and the like) or WRITE SAME becomes on
/// `lun`, validated; `None` for any other command.
fn block_request(lun: &LunInfo, cmd: Command) -> Option<Result<Option<IoRequest>, SenseReason>> {
    Some(match cmd {
        Command::Media(m) => media_request(lun, m),
        Command::WriteSame { .. } => write_same(lun, cmd),
        _ => return None,
    })
}

/// The request a media command (READ, WRITE, VERIFY and the like) or WRITE SAME `cdb` would
/// become on `lun`, decoded and checked as [`execute`] does but executing nothing: no unit
/// attention, reservation or other state is looked at. For a transport that sizes a command's
/// buffer before running it (a VERIFY, or a WRITE SAME with NDOB, moves more bytes through
/// memory than its data-out). `None` for any other command, one that would fail, and one of an
/// offline LUN.
pub fn block_io(lun: &LunInfo, cdb: &[u8]) -> Option<IoRequest> {
    if lun.offline {
        return None;
    }
    block_request(lun, Command::parse(cdb).ok()?)?
        .ok()
        .flatten()
}

fn media_request(lun: &LunInfo, m: MediaCommand) -> Result<Option<IoRequest>, SenseReason> {
    if m.op.writes() && lun.read_only {
        return Err(SenseReason::WriteProtected);
    }
    check_range(lun, m.lba, m.blocks)?;
    let length_error = SenseReason::InvalidFieldInCdb(FieldPointer::byte(m.length_field));
    let max = match m.op {
        MediaOp::CompareAndWrite => u32::from(sbc::MAX_COMPARE_AND_WRITE_BLOCKS),
        MediaOp::WriteAtomic => sbc::max_atomic_blocks(lun),
        _ => lun.max_transfer_blocks,
    };
    if m.blocks.0 > max {
        return Err(length_error);
    }
    if m.op == MediaOp::WriteAtomic {
        if !m.lba.0.is_multiple_of(u64::from(sbc::ATOMIC_ALIGNMENT)) {
            return Err(SenseReason::InvalidFieldInCdb(FieldPointer::byte(2)));
        }
        if !m.blocks.0.is_multiple_of(sbc::ATOMIC_GRANULARITY) {
            return Err(length_error);
        }
    }
    if m.blocks.0 == 0 {
        return Ok(None);
    }
    let bytes = u64::from(m.blocks.0)
        .checked_mul(u64::from(lun.block_size))
        .and_then(|b| usize::try_from(b).ok())
        .ok_or(SenseReason::InvalidFieldInCdb(FieldPointer::byte(
            m.length_field,
        )))?;
    let byte_offset = m
        .lba
        .0
        .checked_mul(u64::from(lun.block_size))
        .ok_or(SenseReason::LbaOutOfRange)?;
    let (kind, data_out_len) = match m.op {
        MediaOp::Read => (IoKind::Read, 0),
        MediaOp::Write => (IoKind::Write, bytes),
        MediaOp::Verify { bytchk } => (IoKind::Verify { bytchk }, if bytchk { bytes } else { 0 }),
        MediaOp::WriteVerify { bytchk } => (IoKind::WriteVerify { bytchk }, bytes),
        MediaOp::OrWrite => (IoKind::OrWrite, bytes),
        MediaOp::WriteAtomic => (IoKind::WriteAtomic, bytes),
        MediaOp::CompareAndWrite => (IoKind::CompareAndWrite, bytes.saturating_mul(2)),
    };
    Ok(Some(IoRequest {
        kind,
        lba: m.lba,
        blocks: m.blocks,
        byte_offset,
        byte_len: bytes,
        data_out_len,
        // WRITE AND VERIFY verifies what is on the medium, so its write goes through any
        // cache (SBC-4 5.42: written to the medium, then verified), as FreeBSD's CTL does.
        fua: m.fua
            || matches!(m.op, MediaOp::WriteVerify { .. })
            || (m.op.writes() && !lun.write_cache_enabled),
        dpo: m.dpo,
    }))
}

fn sync_cache(lun: &LunInfo, lba: Lba, blocks: Blocks, immed: bool) -> Outcome {
    if let Err(reason) = check_range(lun, lba, blocks) {
        return Outcome::Done(Completion::check(reason));
    }
    Outcome::Io(IoRequest {
        kind: IoKind::Sync { immed },
        lba,
        blocks,
        byte_offset: lba.0.saturating_mul(u64::from(lun.block_size)),
        byte_len: 0,
        data_out_len: 0,
        fua: false,
        dpo: false,
    })
}

/// Final status of an [`IoRequest`] the caller has performed.
pub fn complete_io(req: &IoRequest, result: IoResult) -> Completion {
    match result {
        IoResult::Ok => Completion::good(if req.kind == IoKind::Read {
            req.byte_len
        } else {
            0
        }),
        IoResult::ReadError(lba) => Completion::check(Sense {
            reason: SenseReason::UnrecoveredReadError,
            information: lba.map(|l| l.0),
        }),
        IoResult::WriteError(lba) => Completion::check(Sense {
            reason: SenseReason::WriteError,
            information: lba.map(|l| l.0),
        }),
        IoResult::Miscompare(offset) => Completion::check(Sense::with_information(
            SenseReason::MiscompareDuringVerify,
            offset,
        )),
        IoResult::NoSpace => Completion::check(SenseReason::SpaceAllocationFailed),
        IoResult::WriteProtected => Completion::check(SenseReason::WriteProtected),
        IoResult::Failed => Completion::check(SenseReason::InternalTargetFailure),
    }
}

/// The first byte offset at which `media` and `data_out` differ (a length difference counts
/// as a difference at the end of the shorter one), for the MISCOMPARE INFORMATION field.
pub fn first_mismatch(media: &[u8], data_out: &[u8]) -> Option<usize> {
    const CHUNK: usize = 64;
    let n = media.len().min(data_out.len());
    let (a, b) = (media.get(..n)?, data_out.get(..n)?);
    let mut base = 0;
    for (ca, cb) in a.chunks(CHUNK).zip(b.chunks(CHUNK)) {
        if ca != cb {
            return ca
                .iter()
                .zip(cb)
                .position(|(x, y)| x != y)
                .map(|p| base + p);
        }
        base += ca.len();
    }
    (media.len() != data_out.len()).then_some(n)
}
