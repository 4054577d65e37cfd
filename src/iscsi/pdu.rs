//! The 48-byte Basic Header Segment (RFC 7143 section 11): typed decode and encode of initiator
//! and target PDUs (the target decodes the initiator's and encodes its own; [`super::initiator`]
//! and tests the reverse).
//!
//! Every PDU type is a plain struct whose fields sit at fixed offsets of the BHS. One table per
//! struct (the `bhs_pdu!` invocations below) drives both directions, so encode and decode cannot
//! disagree. Decoding never fails for a known opcode (reserved bits are ignored, RFC 7143 11.2.1);
//! an unknown opcode is reported with [`PduError::UnknownOpcode`] so the caller can answer Reject.
//!
//! No allocation, no I/O: all functions work on `[u8; 48]`.

use thiserror::Error;

/// Length of the Basic Header Segment in bytes.
pub const BHS_LEN: usize = 48;

/// The "reserved" tag value (RFC 7143 11.2.1.8): used as ITT/TTT when no task is referenced.
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// The only iSCSI version defined (RFC 7143 11.12.4): VersionMax/VersionMin/VersionActive 0x00.
pub const ISCSI_VERSION: u8 = 0x00;

/// Bit of byte 0 that marks an immediate PDU (initiator PDUs only).
const IMMEDIATE_BIT: u8 = 0x40;
/// Mask of the opcode in byte 0.
const OPCODE_MASK: u8 = 0x3f;

/// Errors decoding a BHS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PduError {
    /// Byte 0 carries an opcode that is not an initiator opcode we understand. The caller answers
    /// with a Reject (reason [`RejectReason::CommandNotSupported`] or
    /// [`RejectReason::ProtocolError`]).
    #[error("BHS byte 0: unknown or unsupported opcode {0:#04x}")]
    UnknownOpcode(u8),
}

/// iSCSI opcodes (RFC 7143 11.2.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    /// NOP-Out (initiator).
    NopOut = 0x00,
    /// SCSI Command (initiator).
    ScsiCommand = 0x01,
    /// SCSI Task Management Function Request (initiator).
    TaskMgmtRequest = 0x02,
    /// Login Request (initiator).
    LoginRequest = 0x03,
    /// Text Request (initiator).
    TextRequest = 0x04,
    /// SCSI Data-Out (initiator).
    DataOut = 0x05,
    /// Logout Request (initiator).
    LogoutRequest = 0x06,
    /// SNACK Request (initiator).
    SnackRequest = 0x10,
    /// NOP-In (target).
    NopIn = 0x20,
    /// SCSI Response (target).
    ScsiResponse = 0x21,
    /// SCSI Task Management Function Response (target).
    TaskMgmtResponse = 0x22,
    /// Login Response (target).
    LoginResponse = 0x23,
    /// Text Response (target).
    TextResponse = 0x24,
    /// SCSI Data-In (target).
    DataIn = 0x25,
    /// Logout Response (target).
    LogoutResponse = 0x26,
    /// Ready To Transfer (target).
    R2t = 0x31,
    /// Asynchronous Message (target).
    AsyncMessage = 0x32,
    /// Reject (target).
    Reject = 0x3f,
}

impl Opcode {
    /// Maps the low six bits of byte 0 to an opcode.
    pub fn from_u8(value: u8) -> Option<Self> {
        Some(match value & OPCODE_MASK {
            0x00 => Self::NopOut,
            0x01 => Self::ScsiCommand,
            0x02 => Self::TaskMgmtRequest,
            0x03 => Self::LoginRequest,
            0x04 => Self::TextRequest,
            0x05 => Self::DataOut,
            0x06 => Self::LogoutRequest,
            0x10 => Self::SnackRequest,
            0x20 => Self::NopIn,
            0x21 => Self::ScsiResponse,
            0x22 => Self::TaskMgmtResponse,
            0x23 => Self::LoginResponse,
            0x24 => Self::TextResponse,
            0x25 => Self::DataIn,
            0x26 => Self::LogoutResponse,
            0x31 => Self::R2t,
            0x32 => Self::AsyncMessage,
            0x3f => Self::Reject,
            _ => return None,
        })
    }
}

/// The fields every BHS shares (RFC 7143 11.2.1), readable for any opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommonHeader {
    /// The raw opcode (low six bits of byte 0).
    pub opcode: u8,
    /// The I (immediate delivery) bit.
    pub immediate: bool,
    /// The F (final) bit, bit 7 of byte 1 (T bit on Login PDUs).
    pub final_bit: bool,
    /// TotalAHSLength in 4-byte words.
    pub total_ahs_length: u8,
    /// DataSegmentLength in bytes, without padding.
    pub data_segment_length: u32,
    /// The Initiator Task Tag (bytes 16..20).
    pub itt: u32,
}

impl CommonHeader {
    /// Reads the shared fields of a BHS.
    pub fn parse(bhs: &[u8; BHS_LEN]) -> Self {
        Self {
            opcode: bhs[0] & OPCODE_MASK,
            immediate: bhs[0] & IMMEDIATE_BIT != 0,
            final_bit: bhs[1] & 0x80 != 0,
            total_ahs_length: bhs[4],
            data_segment_length: u24_at(bhs, 5),
            itt: u32::get(bhs, Loc::at(16)),
        }
    }

    /// TotalAHSLength in bytes.
    pub fn ahs_bytes(&self) -> usize {
        usize::from(self.total_ahs_length) * 4
    }
}

/// Reads the 24-bit big-endian value at `off`.
fn u24_at(bhs: &[u8; BHS_LEN], off: usize) -> u32 {
    u32::from_be_bytes([0, bhs[off], bhs[off + 1], bhs[off + 2]])
}

/// Writes the 24-bit DataSegmentLength; values above 2^24-1 are truncated to 24 bits, which the
/// reader's limits (at most 2^24-1) make unreachable for valid use.
pub fn set_data_segment_length(bhs: &mut [u8; BHS_LEN], len: u32) {
    let b = len.to_be_bytes();
    bhs[5] = b[1];
    bhs[6] = b[2];
    bhs[7] = b[3];
}

/// Location of a field inside the BHS: byte offset plus a bit mask for sub-byte fields.
#[derive(Clone, Copy)]
struct Loc {
    off: usize,
    mask: u8,
}

impl Loc {
    /// A whole-byte field (or a multi-byte one) starting at `off`.
    const fn at(off: usize) -> Self {
        Self { off, mask: 0xff }
    }
    /// A bit field of byte `off` under `mask`.
    const fn bits(off: usize, mask: u8) -> Self {
        Self { off, mask }
    }
}

/// A value that lives at a fixed location in the BHS.
trait Field: Sized {
    fn get(bhs: &[u8; BHS_LEN], loc: Loc) -> Self;
    fn put(&self, bhs: &mut [u8; BHS_LEN], loc: Loc);
}

impl Field for bool {
    fn get(bhs: &[u8; BHS_LEN], loc: Loc) -> Self {
        bhs[loc.off] & loc.mask != 0
    }
    fn put(&self, bhs: &mut [u8; BHS_LEN], loc: Loc) {
        if *self {
            bhs[loc.off] |= loc.mask;
        } else {
            bhs[loc.off] &= !loc.mask;
        }
    }
}

impl Field for u8 {
    fn get(bhs: &[u8; BHS_LEN], loc: Loc) -> Self {
        (bhs[loc.off] & loc.mask) >> loc.mask.trailing_zeros()
    }
    fn put(&self, bhs: &mut [u8; BHS_LEN], loc: Loc) {
        let shifted = (*self << loc.mask.trailing_zeros()) & loc.mask;
        bhs[loc.off] = (bhs[loc.off] & !loc.mask) | shifted;
    }
}

/// Implements [`Field`] for a byte array or big-endian integer of `N` bytes.
macro_rules! be_field {
    ($ty:ty, $n:expr, $from:expr, $to:expr) => {
        impl Field for $ty {
            fn get(bhs: &[u8; BHS_LEN], loc: Loc) -> Self {
                let mut raw = [0u8; $n];
                for (i, b) in raw.iter_mut().enumerate() {
                    *b = bhs[loc.off + i];
                }
                $from(raw)
            }
            fn put(&self, bhs: &mut [u8; BHS_LEN], loc: Loc) {
                let raw: [u8; $n] = $to(*self);
                for (i, b) in raw.iter().enumerate() {
                    bhs[loc.off + i] = *b;
                }
            }
        }
    };
}

be_field!(u16, 2, u16::from_be_bytes, u16::to_be_bytes);
be_field!(u32, 4, u32::from_be_bytes, u32::to_be_bytes);
be_field!(u64, 8, u64::from_be_bytes, u64::to_be_bytes);
be_field!([u8; 6], 6, |r| r, |v| v);
be_field!([u8; 16], 16, |r| r, |v| v);

/// Defines a PDU struct and its field table. Every struct also carries `total_ahs_length`
/// (4-byte words) and `data_segment_length` (bytes). `fixed` lists bits that are always set on
/// encode (e.g. the reserved-as-one bit 7 of byte 1).
macro_rules! bhs_pdu {
    (
        $(#[$meta:meta])*
        $name:ident = $opcode:expr, fixed [$(($foff:expr, $fmask:expr)),*] {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ty = $loc:expr, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
            /// TotalAHSLength in 4-byte words.
            pub total_ahs_length: u8,
            /// DataSegmentLength in bytes (without padding).
            pub data_segment_length: u32,
        }

        impl $name {
            /// The opcode of this PDU.
            pub const OPCODE: Opcode = $opcode;

            /// Reads the fields from a BHS (the opcode is not checked).
            pub fn decode(bhs: &[u8; BHS_LEN]) -> Self {
                Self {
                    $( $field: <$ty as Field>::get(bhs, $loc), )*
                    total_ahs_length: bhs[4],
                    data_segment_length: u24_at(bhs, 5),
                }
            }

            /// Writes this PDU into `out`, overwriting all 48 bytes.
            pub fn encode(&self, out: &mut [u8; BHS_LEN]) {
                *out = [0; BHS_LEN];
                out[0] = Self::OPCODE as u8;
                $( out[$foff] |= $fmask; )*
                $( Field::put(&self.$field, out, $loc); )*
                out[4] = self.total_ahs_length;
                set_data_segment_length(out, self.data_segment_length);
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Initiator PDUs.
// ---------------------------------------------------------------------------------------------

bhs_pdu! {
    /// NOP-Out (RFC 7143 11.18).
    NopOut = Opcode::NopOut, fixed [(1, 0x80)] {
        /// I bit.
        immediate: bool = Loc::bits(0, IMMEDIATE_BIT),
        /// Logical unit number (raw 8 bytes, big-endian).
        lun: u64 = Loc::at(8),
        /// Initiator Task Tag.
        itt: u32 = Loc::at(16),
        /// Target Transfer Tag (echo of a NOP-In's TTT, or 0xffffffff).
        ttt: u32 = Loc::at(20),
        /// CmdSN.
        cmd_sn: u32 = Loc::at(24),
        /// ExpStatSN.
        exp_stat_sn: u32 = Loc::at(28),
    }
}

bhs_pdu! {
    /// SCSI Command (RFC 7143 11.3).
    ScsiCommand = Opcode::ScsiCommand, fixed [] {
        /// I bit.
        immediate: bool = Loc::bits(0, IMMEDIATE_BIT),
        /// F bit: no unsolicited Data-Out follows.
        final_bit: bool = Loc::bits(1, 0x80),
        /// R bit: data are read from the target.
        read: bool = Loc::bits(1, 0x40),
        /// W bit: data are written to the target.
        write: bool = Loc::bits(1, 0x20),
        /// Task attribute (ATTR, 3 bits): see [`TaskAttribute`].
        attr: u8 = Loc::bits(1, 0x07),
        /// Logical unit number.
        lun: u64 = Loc::at(8),
        /// Initiator Task Tag.
        itt: u32 = Loc::at(16),
        /// Expected Data Transfer Length.
        expected_data_length: u32 = Loc::at(20),
        /// CmdSN.
        cmd_sn: u32 = Loc::at(24),
        /// ExpStatSN.
        exp_stat_sn: u32 = Loc::at(28),
        /// The CDB (first 16 bytes; longer CDBs continue in an extended-CDB AHS).
        cdb: [u8; 16] = Loc::at(32),
    }
}

bhs_pdu! {
    /// SCSI Task Management Function Request (RFC 7143 11.5).
    TaskMgmtRequest = Opcode::TaskMgmtRequest, fixed [(1, 0x80)] {
        /// I bit.
        immediate: bool = Loc::bits(0, IMMEDIATE_BIT),
        /// Function (7 bits): see [`TmfFunction`].
        function: u8 = Loc::bits(1, 0x7f),
        /// Logical unit number.
        lun: u64 = Loc::at(8),
        /// Initiator Task Tag of this request.
        itt: u32 = Loc::at(16),
        /// Referenced Task Tag (ABORT TASK).
        referenced_task_tag: u32 = Loc::at(20),
        /// CmdSN.
        cmd_sn: u32 = Loc::at(24),
        /// ExpStatSN.
        exp_stat_sn: u32 = Loc::at(28),
        /// RefCmdSN.
        ref_cmd_sn: u32 = Loc::at(32),
        /// ExpDataSN.
        exp_data_sn: u32 = Loc::at(36),
    }
}

bhs_pdu! {
    /// Login Request (RFC 7143 11.12).
    LoginRequest = Opcode::LoginRequest, fixed [] {
        /// I bit (always 1 on Login Requests).
        immediate: bool = Loc::bits(0, IMMEDIATE_BIT),
        /// T (transit) bit.
        transit: bool = Loc::bits(1, 0x80),
        /// C (continue) bit.
        cont: bool = Loc::bits(1, 0x40),
        /// CSG: current stage (see [`Stage`]).
        csg: u8 = Loc::bits(1, 0x0c),
        /// NSG: next stage (see [`Stage`]).
        nsg: u8 = Loc::bits(1, 0x03),
        /// Version-max.
        version_max: u8 = Loc::at(2),
        /// Version-min.
        version_min: u8 = Loc::at(3),
        /// ISID.
        isid: [u8; 6] = Loc::at(8),
        /// TSIH (0 for a new session).
        tsih: u16 = Loc::at(14),
        /// Initiator Task Tag.
        itt: u32 = Loc::at(16),
        /// Connection ID.
        cid: u16 = Loc::at(20),
        /// CmdSN.
        cmd_sn: u32 = Loc::at(24),
        /// ExpStatSN.
        exp_stat_sn: u32 = Loc::at(28),
    }
}

bhs_pdu! {
    /// Text Request (RFC 7143 11.10).
    TextRequest = Opcode::TextRequest, fixed [] {
        /// I bit.
        immediate: bool = Loc::bits(0, IMMEDIATE_BIT),
        /// F bit.
        final_bit: bool = Loc::bits(1, 0x80),
        /// C (continue) bit.
        cont: bool = Loc::bits(1, 0x40),
        /// Logical unit number.
        lun: u64 = Loc::at(8),
        /// Initiator Task Tag.
        itt: u32 = Loc::at(16),
        /// Target Transfer Tag.
        ttt: u32 = Loc::at(20),
        /// CmdSN.
        cmd_sn: u32 = Loc::at(24),
        /// ExpStatSN.
        exp_stat_sn: u32 = Loc::at(28),
    }
}

bhs_pdu! {
    /// SCSI Data-Out (RFC 7143 11.7).
    DataOut = Opcode::DataOut, fixed [] {
        /// F bit: last PDU of the sequence.
        final_bit: bool = Loc::bits(1, 0x80),
        /// Logical unit number.
        lun: u64 = Loc::at(8),
        /// Initiator Task Tag.
        itt: u32 = Loc::at(16),
        /// Target Transfer Tag (from the R2T, or 0xffffffff for unsolicited data).
        ttt: u32 = Loc::at(20),
        /// ExpStatSN.
        exp_stat_sn: u32 = Loc::at(28),
        /// DataSN.
        data_sn: u32 = Loc::at(36),
        /// Buffer Offset.
        buffer_offset: u32 = Loc::at(40),
    }
}

bhs_pdu! {
    /// Logout Request (RFC 7143 11.14).
    LogoutRequest = Opcode::LogoutRequest, fixed [(1, 0x80)] {
        /// I bit.
        immediate: bool = Loc::bits(0, IMMEDIATE_BIT),
        /// Reason code (7 bits): see [`LogoutReason`].
        reason: u8 = Loc::bits(1, 0x7f),
        /// Initiator Task Tag.
        itt: u32 = Loc::at(16),
        /// CID of the connection to close (reason 1 and 2).
        cid: u16 = Loc::at(20),
        /// CmdSN.
        cmd_sn: u32 = Loc::at(24),
        /// ExpStatSN.
        exp_stat_sn: u32 = Loc::at(28),
    }
}

bhs_pdu! {
    /// SNACK Request (RFC 7143 11.16). Not supported at ErrorRecoveryLevel 0 beyond decoding.
    SnackRequest = Opcode::SnackRequest, fixed [(1, 0x80)] {
        /// Type (4 bits).
        snack_type: u8 = Loc::bits(1, 0x0f),
        /// Logical unit number.
        lun: u64 = Loc::at(8),
        /// Initiator Task Tag.
        itt: u32 = Loc::at(16),
        /// Target Transfer Tag or SNACK Tag.
        ttt: u32 = Loc::at(20),
        /// ExpStatSN.
        exp_stat_sn: u32 = Loc::at(28),
        /// BegRun.
        beg_run: u32 = Loc::at(40),
        /// RunLength.
        run_length: u32 = Loc::at(44),
    }
}

// ---------------------------------------------------------------------------------------------
// Target PDUs.
// ---------------------------------------------------------------------------------------------

bhs_pdu! {
    /// NOP-In (RFC 7143 11.19).
    NopIn = Opcode::NopIn, fixed [(1, 0x80)] {
        /// Logical unit number.
        lun: u64 = Loc::at(8),
        /// Initiator Task Tag (0xffffffff for a target-initiated ping).
        itt: u32 = Loc::at(16),
        /// Target Transfer Tag (0xffffffff unless a reply is wanted).
        ttt: u32 = Loc::at(20),
        /// StatSN.
        stat_sn: u32 = Loc::at(24),
        /// ExpCmdSN.
        exp_cmd_sn: u32 = Loc::at(28),
        /// MaxCmdSN.
        max_cmd_sn: u32 = Loc::at(32),
    }
}

bhs_pdu! {
    /// SCSI Response (RFC 7143 11.4).
    ScsiResponse = Opcode::ScsiResponse, fixed [(1, 0x80)] {
        /// o bit: bidirectional read residual overflow.
        bidi_overflow: bool = Loc::bits(1, 0x10),
        /// u bit: bidirectional read residual underflow.
        bidi_underflow: bool = Loc::bits(1, 0x08),
        /// O bit: residual overflow.
        overflow: bool = Loc::bits(1, 0x04),
        /// U bit: residual underflow.
        underflow: bool = Loc::bits(1, 0x02),
        /// Response (0x00 command completed at target, 0x01 target failure).
        response: u8 = Loc::at(2),
        /// SCSI status.
        status: u8 = Loc::at(3),
        /// Initiator Task Tag.
        itt: u32 = Loc::at(16),
        /// SNACK Tag.
        snack_tag: u32 = Loc::at(20),
        /// StatSN.
        stat_sn: u32 = Loc::at(24),
        /// ExpCmdSN.
        exp_cmd_sn: u32 = Loc::at(28),
        /// MaxCmdSN.
        max_cmd_sn: u32 = Loc::at(32),
        /// ExpDataSN.
        exp_data_sn: u32 = Loc::at(36),
        /// Bidirectional Read Residual Count.
        bidi_residual_count: u32 = Loc::at(40),
        /// Residual Count.
        residual_count: u32 = Loc::at(44),
    }
}

bhs_pdu! {
    /// SCSI Task Management Function Response (RFC 7143 11.6).
    TaskMgmtResponse = Opcode::TaskMgmtResponse, fixed [(1, 0x80)] {
        /// Response: see [`TmfResponse`].
        response: u8 = Loc::at(2),
        /// Initiator Task Tag of the request.
        itt: u32 = Loc::at(16),
        /// StatSN.
        stat_sn: u32 = Loc::at(24),
        /// ExpCmdSN.
        exp_cmd_sn: u32 = Loc::at(28),
        /// MaxCmdSN.
        max_cmd_sn: u32 = Loc::at(32),
    }
}

bhs_pdu! {
    /// Login Response (RFC 7143 11.13).
    LoginResponse = Opcode::LoginResponse, fixed [] {
        /// T (transit) bit.
        transit: bool = Loc::bits(1, 0x80),
        /// C (continue) bit.
        cont: bool = Loc::bits(1, 0x40),
        /// CSG: current stage.
        csg: u8 = Loc::bits(1, 0x0c),
        /// NSG: next stage.
        nsg: u8 = Loc::bits(1, 0x03),
        /// Version-max.
        version_max: u8 = Loc::at(2),
        /// Version-active.
        version_active: u8 = Loc::at(3),
        /// ISID (echoed).
        isid: [u8; 6] = Loc::at(8),
        /// TSIH.
        tsih: u16 = Loc::at(14),
        /// Initiator Task Tag.
        itt: u32 = Loc::at(16),
        /// StatSN.
        stat_sn: u32 = Loc::at(24),
        /// ExpCmdSN.
        exp_cmd_sn: u32 = Loc::at(28),
        /// MaxCmdSN.
        max_cmd_sn: u32 = Loc::at(32),
        /// Status-Class.
        status_class: u8 = Loc::at(36),
        /// Status-Detail.
        status_detail: u8 = Loc::at(37),
    }
}

impl LoginResponse {
    /// Sets Status-Class and Status-Detail from a [`LoginStatus`].
    pub fn set_status(&mut self, status: LoginStatus) {
        let [class, detail] = (status as u16).to_be_bytes();
        self.status_class = class;
        self.status_detail = detail;
    }
}

bhs_pdu! {
    /// Text Response (RFC 7143 11.11).
    TextResponse = Opcode::TextResponse, fixed [] {
        /// F bit.
        final_bit: bool = Loc::bits(1, 0x80),
        /// C (continue) bit.
        cont: bool = Loc::bits(1, 0x40),
        /// Logical unit number.
        lun: u64 = Loc::at(8),
        /// Initiator Task Tag.
        itt: u32 = Loc::at(16),
        /// Target Transfer Tag.
        ttt: u32 = Loc::at(20),
        /// StatSN.
        stat_sn: u32 = Loc::at(24),
        /// ExpCmdSN.
        exp_cmd_sn: u32 = Loc::at(28),
        /// MaxCmdSN.
        max_cmd_sn: u32 = Loc::at(32),
    }
}

bhs_pdu! {
    /// SCSI Data-In (RFC 7143 11.8).
    DataIn = Opcode::DataIn, fixed [] {
        /// F bit: last PDU of the sequence.
        final_bit: bool = Loc::bits(1, 0x80),
        /// A (acknowledge) bit: only at ErrorRecoveryLevel > 0.
        acknowledge: bool = Loc::bits(1, 0x40),
        /// O bit: residual overflow (only with S).
        overflow: bool = Loc::bits(1, 0x04),
        /// U bit: residual underflow (only with S).
        underflow: bool = Loc::bits(1, 0x02),
        /// S bit: status is carried in this PDU.
        status_present: bool = Loc::bits(1, 0x01),
        /// SCSI status (only with S).
        status: u8 = Loc::at(3),
        /// Logical unit number.
        lun: u64 = Loc::at(8),
        /// Initiator Task Tag.
        itt: u32 = Loc::at(16),
        /// Target Transfer Tag.
        ttt: u32 = Loc::at(20),
        /// StatSN (only with S).
        stat_sn: u32 = Loc::at(24),
        /// ExpCmdSN.
        exp_cmd_sn: u32 = Loc::at(28),
        /// MaxCmdSN.
        max_cmd_sn: u32 = Loc::at(32),
        /// DataSN.
        data_sn: u32 = Loc::at(36),
        /// Buffer Offset.
        buffer_offset: u32 = Loc::at(40),
        /// Residual Count (only with S).
        residual_count: u32 = Loc::at(44),
    }
}

bhs_pdu! {
    /// Logout Response (RFC 7143 11.15).
    LogoutResponse = Opcode::LogoutResponse, fixed [(1, 0x80)] {
        /// Response (0 closed successfully, 1 CID not found, 2 recovery not supported,
        /// 3 cleanup failed).
        response: u8 = Loc::at(2),
        /// Initiator Task Tag.
        itt: u32 = Loc::at(16),
        /// StatSN.
        stat_sn: u32 = Loc::at(24),
        /// ExpCmdSN.
        exp_cmd_sn: u32 = Loc::at(28),
        /// MaxCmdSN.
        max_cmd_sn: u32 = Loc::at(32),
        /// Time2Wait.
        time2wait: u16 = Loc::at(40),
        /// Time2Retain.
        time2retain: u16 = Loc::at(42),
    }
}

bhs_pdu! {
    /// Ready To Transfer (RFC 7143 11.8).
    R2t = Opcode::R2t, fixed [(1, 0x80)] {
        /// Logical unit number.
        lun: u64 = Loc::at(8),
        /// Initiator Task Tag.
        itt: u32 = Loc::at(16),
        /// Target Transfer Tag.
        ttt: u32 = Loc::at(20),
        /// StatSN.
        stat_sn: u32 = Loc::at(24),
        /// ExpCmdSN.
        exp_cmd_sn: u32 = Loc::at(28),
        /// MaxCmdSN.
        max_cmd_sn: u32 = Loc::at(32),
        /// R2TSN.
        r2t_sn: u32 = Loc::at(36),
        /// Buffer Offset.
        buffer_offset: u32 = Loc::at(40),
        /// Desired Data Transfer Length.
        desired_length: u32 = Loc::at(44),
    }
}

bhs_pdu! {
    /// Asynchronous Message (RFC 7143 11.9). ITT must be 0xffffffff.
    AsyncMessage = Opcode::AsyncMessage, fixed [(1, 0x80)] {
        /// Logical unit number.
        lun: u64 = Loc::at(8),
        /// Initiator Task Tag (always 0xffffffff).
        itt: u32 = Loc::at(16),
        /// StatSN.
        stat_sn: u32 = Loc::at(24),
        /// ExpCmdSN.
        exp_cmd_sn: u32 = Loc::at(28),
        /// MaxCmdSN.
        max_cmd_sn: u32 = Loc::at(32),
        /// AsyncEvent.
        async_event: u8 = Loc::at(36),
        /// AsyncVCode.
        async_vcode: u8 = Loc::at(37),
        /// Parameter1.
        parameter1: u16 = Loc::at(38),
        /// Parameter2.
        parameter2: u16 = Loc::at(40),
        /// Parameter3.
        parameter3: u16 = Loc::at(42),
    }
}

bhs_pdu! {
    /// Reject (RFC 7143 11.17). The data segment is the rejected PDU's header
    /// (see [`Reject::for_header`]).
    Reject = Opcode::Reject, fixed [(1, 0x80)] {
        /// Reason: see [`RejectReason`].
        reason: u8 = Loc::at(2),
        /// Initiator Task Tag (always 0xffffffff).
        itt: u32 = Loc::at(16),
        /// StatSN.
        stat_sn: u32 = Loc::at(24),
        /// ExpCmdSN.
        exp_cmd_sn: u32 = Loc::at(28),
        /// MaxCmdSN.
        max_cmd_sn: u32 = Loc::at(32),
        /// DataSN/R2TSN (only for reason "SNACK reject").
        data_sn: u32 = Loc::at(36),
    }
}

impl Reject {
    /// A Reject whose data segment will be the 48-byte header of the rejected PDU.
    pub fn for_header(reason: RejectReason) -> Self {
        Self {
            reason: reason as u8,
            itt: RESERVED_TAG,
            data_segment_length: BHS_LEN as u32,
            ..Self::default()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dispatch.
// ---------------------------------------------------------------------------------------------

/// A decoded initiator PDU header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitiatorPdu {
    /// NOP-Out.
    NopOut(NopOut),
    /// SCSI Command.
    ScsiCommand(ScsiCommand),
    /// Task Management Function Request.
    TaskMgmt(TaskMgmtRequest),
    /// Login Request.
    Login(LoginRequest),
    /// Text Request.
    Text(TextRequest),
    /// SCSI Data-Out.
    DataOut(DataOut),
    /// Logout Request.
    Logout(LogoutRequest),
    /// SNACK Request.
    Snack(SnackRequest),
}

impl InitiatorPdu {
    /// Decodes an initiator BHS. Fails only on a non-initiator or unknown opcode.
    pub fn decode(bhs: &[u8; BHS_LEN]) -> Result<Self, PduError> {
        let raw = bhs[0] & OPCODE_MASK;
        Ok(match Opcode::from_u8(raw) {
            Some(Opcode::NopOut) => Self::NopOut(NopOut::decode(bhs)),
            Some(Opcode::ScsiCommand) => Self::ScsiCommand(ScsiCommand::decode(bhs)),
            Some(Opcode::TaskMgmtRequest) => Self::TaskMgmt(TaskMgmtRequest::decode(bhs)),
            Some(Opcode::LoginRequest) => Self::Login(LoginRequest::decode(bhs)),
            Some(Opcode::TextRequest) => Self::Text(TextRequest::decode(bhs)),
            Some(Opcode::DataOut) => Self::DataOut(DataOut::decode(bhs)),
            Some(Opcode::LogoutRequest) => Self::Logout(LogoutRequest::decode(bhs)),
            Some(Opcode::SnackRequest) => Self::Snack(SnackRequest::decode(bhs)),
            _ => return Err(PduError::UnknownOpcode(raw)),
        })
    }

    /// Encodes this PDU (used by test initiators).
    pub fn encode(&self, out: &mut [u8; BHS_LEN]) {
        match self {
            Self::NopOut(p) => p.encode(out),
            Self::ScsiCommand(p) => p.encode(out),
            Self::TaskMgmt(p) => p.encode(out),
            Self::Login(p) => p.encode(out),
            Self::Text(p) => p.encode(out),
            Self::DataOut(p) => p.encode(out),
            Self::Logout(p) => p.encode(out),
            Self::Snack(p) => p.encode(out),
        }
    }
}

/// A target PDU header (encoded by the target; decoded by test initiators).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetPdu {
    /// NOP-In.
    NopIn(NopIn),
    /// SCSI Response.
    ScsiResponse(ScsiResponse),
    /// Task Management Function Response.
    TaskMgmt(TaskMgmtResponse),
    /// Login Response.
    Login(LoginResponse),
    /// Text Response.
    Text(TextResponse),
    /// SCSI Data-In.
    DataIn(DataIn),
    /// Logout Response.
    Logout(LogoutResponse),
    /// Ready To Transfer.
    R2t(R2t),
    /// Asynchronous Message.
    Async(AsyncMessage),
    /// Reject.
    Reject(Reject),
}

impl TargetPdu {
    /// Decodes a target BHS. Fails only on a non-target or unknown opcode.
    pub fn decode(bhs: &[u8; BHS_LEN]) -> Result<Self, PduError> {
        let raw = bhs[0] & OPCODE_MASK;
        Ok(match Opcode::from_u8(raw) {
            Some(Opcode::NopIn) => Self::NopIn(NopIn::decode(bhs)),
            Some(Opcode::ScsiResponse) => Self::ScsiResponse(ScsiResponse::decode(bhs)),
            Some(Opcode::TaskMgmtResponse) => Self::TaskMgmt(TaskMgmtResponse::decode(bhs)),
            Some(Opcode::LoginResponse) => Self::Login(LoginResponse::decode(bhs)),
            Some(Opcode::TextResponse) => Self::Text(TextResponse::decode(bhs)),
            Some(Opcode::DataIn) => Self::DataIn(DataIn::decode(bhs)),
            Some(Opcode::LogoutResponse) => Self::Logout(LogoutResponse::decode(bhs)),
            Some(Opcode::R2t) => Self::R2t(R2t::decode(bhs)),
            Some(Opcode::AsyncMessage) => Self::Async(AsyncMessage::decode(bhs)),
            Some(Opcode::Reject) => Self::Reject(Reject::decode(bhs)),
            _ => return Err(PduError::UnknownOpcode(raw)),
        })
    }

    /// Encodes this PDU.
    pub fn encode(&self, out: &mut [u8; BHS_LEN]) {
        match self {
            Self::NopIn(p) => p.encode(out),
            Self::ScsiResponse(p) => p.encode(out),
            Self::TaskMgmt(p) => p.encode(out),
            Self::Login(p) => p.encode(out),
            Self::Text(p) => p.encode(out),
            Self::DataIn(p) => p.encode(out),
            Self::Logout(p) => p.encode(out),
            Self::R2t(p) => p.encode(out),
            Self::Async(p) => p.encode(out),
            Self::Reject(p) => p.encode(out),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Field value enums.
// ---------------------------------------------------------------------------------------------

/// Login stages (CSG/NSG, RFC 7143 11.12.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Stage {
    /// SecurityNegotiation.
    Security = 0,
    /// LoginOperationalNegotiation.
    Operational = 1,
    /// FullFeaturePhase.
    FullFeature = 3,
}

impl Stage {
    /// Maps a 2-bit CSG/NSG value; 2 is reserved.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::Security),
            1 => Some(Self::Operational),
            3 => Some(Self::FullFeature),
            _ => None,
        }
    }
}

/// SCSI command task attributes (ATTR, RFC 7143 11.3.1.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TaskAttribute {
    /// Untagged (treated as Simple).
    Untagged = 0,
    /// Simple.
    Simple = 1,
    /// Ordered.
    Ordered = 2,
    /// Head of queue.
    HeadOfQueue = 3,
    /// ACA.
    Aca = 4,
}

impl TaskAttribute {
    /// Maps the 3-bit ATTR field; 5..7 are reserved.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::Untagged),
            1 => Some(Self::Simple),
            2 => Some(Self::Ordered),
            3 => Some(Self::HeadOfQueue),
            4 => Some(Self::Aca),
            _ => None,
        }
    }
}

/// Task management functions (RFC 7143 11.5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TmfFunction {
    /// ABORT TASK.
    AbortTask = 1,
    /// ABORT TASK SET.
    AbortTaskSet = 2,
    /// CLEAR ACA.
    ClearAca = 3,
    /// CLEAR TASK SET.
    ClearTaskSet = 4,
    /// LOGICAL UNIT RESET.
    LogicalUnitReset = 5,
    /// TARGET WARM RESET.
    TargetWarmReset = 6,
    /// TARGET COLD RESET.
    TargetColdReset = 7,
    /// TASK REASSIGN.
    TaskReassign = 8,
}

impl TmfFunction {
    /// Maps the 7-bit function field.
    pub fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::AbortTask,
            2 => Self::AbortTaskSet,
            3 => Self::ClearAca,
            4 => Self::ClearTaskSet,
            5 => Self::LogicalUnitReset,
            6 => Self::TargetWarmReset,
            7 => Self::TargetColdReset,
            8 => Self::TaskReassign,
            _ => return None,
        })
    }
}

/// Task management responses (RFC 7143 11.6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TmfResponse {
    /// Function complete.
    Complete = 0,
    /// Task does not exist.
    TaskDoesNotExist = 1,
    /// LUN does not exist.
    LunDoesNotExist = 2,
    /// Task still allegiant.
    TaskStillAllegiant = 3,
    /// Task allegiance reassignment not supported.
    ReassignNotSupported = 4,
    /// Task management function not supported.
    NotSupported = 5,
    /// Function authorization failed.
    AuthorizationFailed = 6,
    /// Function rejected.
    Rejected = 255,
}

/// Logout reasons (RFC 7143 11.14.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LogoutReason {
    /// Close the session.
    CloseSession = 0,
    /// Close the connection.
    CloseConnection = 1,
    /// Remove the connection for recovery.
    RemoveForRecovery = 2,
}

impl LogoutReason {
    /// Maps the 7-bit reason code.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::CloseSession),
            1 => Some(Self::CloseConnection),
            2 => Some(Self::RemoveForRecovery),
            _ => None,
        }
    }
}

/// Reject reasons (RFC 7143 11.17.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RejectReason {
    /// Data (payload) digest error.
    DataDigestError = 0x02,
    /// SNACK Reject.
    SnackReject = 0x03,
    /// Protocol error (e.g. SNACK Request for a status that was already acknowledged).
    ProtocolError = 0x04,
    /// Command not supported.
    CommandNotSupported = 0x05,
    /// Immediate command reject: too many immediate commands.
    ImmediateCommandReject = 0x06,
    /// Task in progress.
    TaskInProgress = 0x07,
    /// Invalid data ack.
    InvalidDataAck = 0x08,
    /// Invalid PDU field.
    InvalidPduField = 0x09,
    /// Long operation reject: cannot generate a Target Transfer Tag, out of resources.
    LongOperationReject = 0x0a,
    /// Deprecated (was "negotiation reset").
    NegotiationReset = 0x0b,
    /// Waiting for Logout.
    WaitingForLogout = 0x0c,
}

/// Login response status (Status-Class << 8 | Status-Detail, RFC 7143 11.13.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum LoginStatus {
    /// Success.
    Success = 0x0000,
    /// Target moved temporarily (redirect; a TargetAddress key follows).
    TargetMovedTemporarily = 0x0101,
    /// Target moved permanently.
    TargetMovedPermanently = 0x0102,
    /// Initiator error (miscellaneous).
    InitiatorError = 0x0200,
    /// Authentication failure.
    AuthenticationFailure = 0x0201,
    /// Authorization failure.
    AuthorizationFailure = 0x0202,
    /// Target not found.
    NotFound = 0x0203,
    /// Target removed.
    TargetRemoved = 0x0204,
    /// Unsupported version.
    UnsupportedVersion = 0x0205,
    /// Too many connections.
    TooManyConnections = 0x0206,
    /// Missing parameter.
    MissingParameter = 0x0207,
    /// Cannot include in session.
    CantIncludeInSession = 0x0208,
    /// Session type not supported.
    SessionTypeNotSupported = 0x0209,
    /// Session does not exist.
    SessionDoesNotExist = 0x020a,
    /// Invalid request during login.
    InvalidDuringLogin = 0x020b,
    /// Target error (miscellaneous).
    TargetError = 0x0300,
    /// Service unavailable.
    ServiceUnavailable = 0x0301,
    /// Out of resources.
    OutOfResources = 0x0302,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A Login Request as libiscsi sends it first: I=1, T=1, CSG=0 (security), NSG=1,
    /// ISID type 0x80 random qualifier, ITT 0, CID 0, CmdSN 0, 256 bytes of keys. Built by hand
    /// from RFC 7143 11.12.
    const LIBISCSI_LOGIN: [u8; BHS_LEN] = [
        0x43, 0x81, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, // opcode, T|NSG=1, versions, DSL=256
        0x80, 0x00, 0x00, 0x12, 0x34, 0x56, 0x00, 0x00, // ISID, TSIH
        0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, // ITT=1, CID=0
        0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x07, // CmdSN=5, ExpStatSN=7
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    #[test]
    fn decodes_captured_login_request() {
        let InitiatorPdu::Login(login) = InitiatorPdu::decode(&LIBISCSI_LOGIN).unwrap() else {
            panic!("not a login");
        };
        assert!(login.immediate && login.transit && !login.cont);
        assert_eq!(Stage::from_u8(login.csg), Some(Stage::Security));
        assert_eq!(Stage::from_u8(login.nsg), Some(Stage::Operational));
        assert_eq!(login.isid, [0x80, 0, 0, 0x12, 0x34, 0x56]);
        assert_eq!((login.tsih, login.itt, login.cid), (0, 1, 0));
        assert_eq!((login.cmd_sn, login.exp_stat_sn), (5, 7));
        assert_eq!(login.data_segment_length, 256);
        let mut out = [0u8; BHS_LEN];
        login.encode(&mut out);
        assert_eq!(out, LIBISCSI_LOGIN);
    }

    #[test]
    fn decodes_scsi_read10() {
        let mut bhs = [0u8; BHS_LEN];
        bhs[0] = 0x01;
        bhs[1] = 0x80 | 0x40 | 0x01; // F, R, SIMPLE
        bhs[8..16].copy_from_slice(&0x0003_0000_0000_0000u64.to_be_bytes());
        bhs[16..20].copy_from_slice(&0xdead_beefu32.to_be_bytes());
        bhs[20..24].copy_from_slice(&4096u32.to_be_bytes());
        bhs[32] = 0x28;
        let InitiatorPdu::ScsiCommand(cmd) = InitiatorPdu::decode(&bhs).unwrap() else {
            panic!("not a command");
        };
        assert!(cmd.final_bit && cmd.read && !cmd.write && !cmd.immediate);
        assert_eq!(
            TaskAttribute::from_u8(cmd.attr),
            Some(TaskAttribute::Simple)
        );
        assert_eq!(cmd.lun, 0x0003_0000_0000_0000);
        assert_eq!(cmd.itt, 0xdead_beef);
        assert_eq!(cmd.expected_data_length, 4096);
        assert_eq!(cmd.cdb[0], 0x28);
    }

    #[test]
    fn unknown_opcode_is_reported() {
        let mut bhs = [0u8; BHS_LEN];
        bhs[0] = 0x1c;
        assert_eq!(
            InitiatorPdu::decode(&bhs),
            Err(PduError::UnknownOpcode(0x1c))
        );
        bhs[0] = 0x21; // a target opcode sent by an initiator
        assert_eq!(
            InitiatorPdu::decode(&bhs),
            Err(PduError::UnknownOpcode(0x21))
        );
    }

    #[test]
    fn encodes_scsi_response_layout() {
        let rsp = ScsiResponse {
            underflow: true,
            status: 0x02,
            itt: 7,
            stat_sn: 0x0102_0304,
            exp_cmd_sn: 9,
            max_cmd_sn: 40,
            residual_count: 512,
            data_segment_length: 20,
            ..ScsiResponse::default()
        };
        let mut out = [0xaau8; BHS_LEN];
        rsp.encode(&mut out);
        assert_eq!(&out[0..8], &[0x21, 0x82, 0x00, 0x02, 0, 0, 0, 20]);
        assert_eq!(&out[24..28], &[1, 2, 3, 4]);
        assert_eq!(&out[44..48], &[0, 0, 2, 0]);
        assert_eq!(&out[8..16], &[0; 8]);
    }

    #[test]
    fn encodes_login_response_status_and_stages() {
        let mut rsp = LoginResponse {
            transit: true,
            csg: Stage::Operational as u8,
            nsg: Stage::FullFeature as u8,
            isid: [1, 2, 3, 4, 5, 6],
            tsih: 0x0a0b,
            ..LoginResponse::default()
        };
        rsp.set_status(LoginStatus::AuthenticationFailure);
        let mut out = [0u8; BHS_LEN];
        rsp.encode(&mut out);
        assert_eq!(&out[0..2], &[0x23, 0x87]);
        assert_eq!(&out[8..16], &[1, 2, 3, 4, 5, 6, 0x0a, 0x0b]);
        assert_eq!(&out[36..38], &[0x02, 0x01]);
    }

    #[test]
    fn encodes_data_in_and_r2t_and_reject() {
        let d = DataIn {
            final_bit: true,
            status_present: true,
            underflow: true,
            status: 0,
            data_sn: 3,
            buffer_offset: 8192,
            residual_count: 100,
            data_segment_length: 4096,
            ..DataIn::default()
        };
        let mut out = [0u8; BHS_LEN];
        d.encode(&mut out);
        assert_eq!(&out[0..2], &[0x25, 0x83]);
        assert_eq!(&out[36..48], &[0, 0, 0, 3, 0, 0, 0x20, 0, 0, 0, 0, 100]);

        let r = R2t {
            r2t_sn: 1,
            buffer_offset: 512,
            desired_length: 65536,
            ..R2t::default()
        };
        r.encode(&mut out);
        assert_eq!(&out[0..2], &[0x31, 0x80]);
        assert_eq!(&out[44..48], &[0, 1, 0, 0]);

        Reject::for_header(RejectReason::DataDigestError).encode(&mut out);
        assert_eq!(&out[0..8], &[0x3f, 0x80, 0x02, 0, 0, 0, 0, 48]);
        assert_eq!(&out[16..20], &[0xff; 4]);
    }

    fn bhs_strategy() -> impl Strategy<Value = [u8; BHS_LEN]> {
        proptest::collection::vec(any::<u8>(), BHS_LEN).prop_map(|v| {
            let mut a = [0u8; BHS_LEN];
            a.copy_from_slice(&v);
            a
        })
    }

    /// 48 random bytes with byte 0 drawn from the known opcodes (plus a random I bit).
    fn known_opcode_bhs() -> impl Strategy<Value = [u8; BHS_LEN]> {
        const OPS: [u8; 18] = [
            0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x10, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25,
            0x26, 0x31, 0x32, 0x3f,
        ];
        (
            bhs_strategy(),
            proptest::sample::select(&OPS[..]),
            any::<bool>(),
        )
            .prop_map(|(mut bhs, op, imm)| {
                bhs[0] = op | if imm { IMMEDIATE_BIT } else { 0 };
                bhs
            })
    }

    proptest! {
        #[test]
        fn decode_never_panics(bhs in bhs_strategy()) {
            let common = CommonHeader::parse(&bhs);
            prop_assert_eq!(common.ahs_bytes() % 4, 0);
            let _ = InitiatorPdu::decode(&bhs);
            let _ = TargetPdu::decode(&bhs);
        }

        /// decode(encode(decode(x))) == decode(x): the field table is consistent both ways.
        #[test]
        fn initiator_round_trip(bhs in known_opcode_bhs()) {
            if let Ok(pdu) = InitiatorPdu::decode(&bhs) {
                let mut out = [0u8; BHS_LEN];
                pdu.encode(&mut out);
                prop_assert_eq!(InitiatorPdu::decode(&out), Ok(pdu));
            }
        }

        #[test]
        fn target_round_trip(bhs in known_opcode_bhs()) {
            if let Ok(pdu) = TargetPdu::decode(&bhs) {
                let mut out = [0u8; BHS_LEN];
                pdu.encode(&mut out);
                prop_assert_eq!(TargetPdu::decode(&out), Ok(pdu));
            }
        }
    }
}
