//! The one opcode table: CDB length, allowed bits per CDB byte (also the CDB usage data of
//! REPORT SUPPORTED OPERATION CODES), name and media access of every supported command.

use super::sense::{FieldPointer, SenseReason};

/// Whether a command reads or writes the medium (for reservation checks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaAccess {
    /// The command does not touch the medium.
    None,
    /// The command reads the medium.
    Read,
    /// The command writes the medium.
    Write,
}

/// One supported command.
#[derive(Clone, Copy, Debug)]
pub struct OpcodeInfo {
    /// Operation code.
    pub opcode: u8,
    /// Service action (in byte 1, bits 4..0), for opcodes that have service actions.
    pub service_action: Option<u8>,
    /// The command name.
    pub name: &'static str,
    /// CDB length in bytes.
    pub cdb_len: u8,
    /// Allowed bits per CDB byte: byte 0 is the opcode, byte 1 holds the service action value
    /// where there is one, the last byte is the CONTROL byte. Reported as CDB usage data.
    pub usage: [u8; 16],
    /// Media access class.
    pub media: MediaAccess,
}

impl OpcodeInfo {
    /// The CDB usage data (the first `cdb_len` bytes of `usage`).
    pub fn usage_data(&self) -> &[u8] {
        &self.usage[..usize::from(self.cdb_len)]
    }
}

/// Operation codes of the supported commands.
pub mod op {
    /// TEST UNIT READY.
    pub const TEST_UNIT_READY: u8 = 0x00;
    /// REQUEST SENSE.
    pub const REQUEST_SENSE: u8 = 0x03;
    /// READ (6).
    pub const READ_6: u8 = 0x08;
    /// WRITE (6).
    pub const WRITE_6: u8 = 0x0A;
    /// INQUIRY.
    pub const INQUIRY: u8 = 0x12;
    /// MODE SELECT (6).
    pub const MODE_SELECT_6: u8 = 0x15;
    /// MODE SENSE (6).
    pub const MODE_SENSE_6: u8 = 0x1A;
    /// START STOP UNIT.
    pub const START_STOP_UNIT: u8 = 0x1B;
    /// PREVENT ALLOW MEDIUM REMOVAL.
    pub const PREVENT_ALLOW: u8 = 0x1E;
    /// READ CAPACITY (10).
    pub const READ_CAPACITY_10: u8 = 0x25;
    /// READ (10).
    pub const READ_10: u8 = 0x28;
    /// WRITE (10).
    pub const WRITE_10: u8 = 0x2A;
    /// WRITE AND VERIFY (10).
    pub const WRITE_VERIFY_10: u8 = 0x2E;
    /// VERIFY (10).
    pub const VERIFY_10: u8 = 0x2F;
    /// SYNCHRONIZE CACHE (10).
    pub const SYNC_CACHE_10: u8 = 0x35;
    /// MODE SELECT (10).
    pub const MODE_SELECT_10: u8 = 0x55;
    /// MODE SENSE (10).
    pub const MODE_SENSE_10: u8 = 0x5A;
    /// READ (16).
    pub const READ_16: u8 = 0x88;
    /// WRITE (16).
    pub const WRITE_16: u8 = 0x8A;
    /// WRITE AND VERIFY (16).
    pub const WRITE_VERIFY_16: u8 = 0x8E;
    /// VERIFY (16).
    pub const VERIFY_16: u8 = 0x8F;
    /// SYNCHRONIZE CACHE (16).
    pub const SYNC_CACHE_16: u8 = 0x91;
    /// SERVICE ACTION IN (16).
    pub const SERVICE_ACTION_IN_16: u8 = 0x9E;
    /// REPORT LUNS.
    pub const REPORT_LUNS: u8 = 0xA0;
    /// MAINTENANCE IN.
    pub const MAINTENANCE_IN: u8 = 0xA3;
    /// READ (12).
    pub const READ_12: u8 = 0xA8;
    /// WRITE (12).
    pub const WRITE_12: u8 = 0xAA;
    /// WRITE AND VERIFY (12).
    pub const WRITE_VERIFY_12: u8 = 0xAE;
    /// VERIFY (12).
    pub const VERIFY_12: u8 = 0xAF;
    /// RESERVE (6).
    pub const RESERVE_6: u8 = 0x16;
    /// RELEASE (6).
    pub const RELEASE_6: u8 = 0x17;
    /// PRE-FETCH (10).
    pub const PRE_FETCH_10: u8 = 0x34;
    /// READ DEFECT DATA (10).
    pub const READ_DEFECT_DATA_10: u8 = 0x37;
    /// WRITE SAME (10).
    pub const WRITE_SAME_10: u8 = 0x41;
    /// UNMAP.
    pub const UNMAP: u8 = 0x42;
    /// RESERVE (10).
    pub const RESERVE_10: u8 = 0x56;
    /// RELEASE (10).
    pub const RELEASE_10: u8 = 0x57;
    /// PERSISTENT RESERVE IN.
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5E;
    /// PERSISTENT RESERVE OUT.
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5F;
    /// EXTENDED COPY (service action 00h: LID1).
    pub const EXTENDED_COPY: u8 = 0x83;
    /// RECEIVE COPY RESULTS.
    pub const RECEIVE_COPY_RESULTS: u8 = 0x84;
    /// COMPARE AND WRITE.
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    /// ORWRITE (16).
    pub const ORWRITE_16: u8 = 0x8B;
    /// PRE-FETCH (16).
    pub const PRE_FETCH_16: u8 = 0x90;
    /// WRITE SAME (16).
    pub const WRITE_SAME_16: u8 = 0x93;
    /// WRITE ATOMIC (16).
    pub const WRITE_ATOMIC_16: u8 = 0x9C;
    /// READ DEFECT DATA (12).
    pub const READ_DEFECT_DATA_12: u8 = 0xB7;
    /// SERVICE ACTION IN (16) / READ CAPACITY (16).
    pub const SA_READ_CAPACITY_16: u8 = 0x10;
    /// SERVICE ACTION IN (16) / GET LBA STATUS.
    pub const SA_GET_LBA_STATUS: u8 = 0x12;
    /// MAINTENANCE IN / REPORT TARGET PORT GROUPS.
    pub const SA_REPORT_TARGET_PORT_GROUPS: u8 = 0x0A;
    /// EXTENDED COPY (LID1) service action.
    pub const SA_EXTENDED_COPY_LID1: u8 = 0x00;
    /// RECEIVE COPY RESULTS / COPY STATUS (LID1).
    pub const SA_COPY_STATUS: u8 = 0x00;
    /// RECEIVE COPY RESULTS / OPERATING PARAMETERS.
    pub const SA_OPERATING_PARAMETERS: u8 = 0x03;
    /// MAINTENANCE IN / REPORT SUPPORTED OPERATION CODES.
    pub const SA_REPORT_SUPPORTED_OPCODES: u8 = 0x0C;
}

/// Pads a usage map to 16 bytes (const context).
const fn u<const N: usize>(bytes: [u8; N]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < N {
        out[i] = bytes[i];
        i += 1;
    }
    out
}

const fn row(
    opcode: u8,
    service_action: Option<u8>,
    name: &'static str,
    cdb_len: u8,
    usage: [u8; 16],
    media: MediaAccess,
) -> OpcodeInfo {
    OpcodeInfo {
        opcode,
        service_action,
        name,
        cdb_len,
        usage,
        media,
    }
}

use MediaAccess::{None as NoMedia, Read as MRead, Write as MWrite};

/// Usage map shared by READ/WRITE (10): DPO, FUA, FUA_NV; LBA; group; transfer length.
const RW10: [u8; 9] = [0x1A, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0x00];
/// VERIFY / WRITE AND VERIFY (10): DPO, BYTCHK; LBA; group; length.
const VFY10: [u8; 9] = [0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0x00];
/// READ/WRITE (12).
const RW12: [u8; 11] = [
    0x1A, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0x00,
];
/// VERIFY / WRITE AND VERIFY (12).
const VFY12: [u8; 11] = [
    0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0x00,
];

const fn with_op<const N: usize>(opcode: u8, rest: [u8; N]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[0] = opcode;
    let mut i = 0;
    while i < N && i + 1 < 16 {
        out[i + 1] = rest[i];
        i += 1;
    }
    out
}

const fn rw16(opcode: u8, byte1: u8) -> [u8; 16] {
    let mut out = [0xFFu8; 16];
    out[0] = opcode;
    out[1] = byte1;
    out[14] = 0x1F;
    out[15] = 0x00;
    out
}

/// PERSISTENT RESERVE IN: service action, allocation length.
const fn pr_in(sa: u8, name: &'static str) -> OpcodeInfo {
    row(
        0x5E,
        Some(sa),
        name,
        10,
        u([0x5E, sa, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0]),
        NoMedia,
    )
}

/// PERSISTENT RESERVE OUT: service action, scope and type, parameter list length.
const fn pr_out(sa: u8, name: &'static str) -> OpcodeInfo {
    row(
        0x5F,
        Some(sa),
        name,
        10,
        u([0x5F, sa, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0]),
        NoMedia,
    )
}

/// RECEIVE COPY RESULTS: service action, list identifier, allocation length.
const fn rcr(sa: u8) -> [u8; 16] {
    u([
        0x84, sa, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0,
    ])
}

/// Every supported command, sorted by (opcode, service action).
pub static OPCODES: &[OpcodeInfo] = TABLE;

/// Marks an opcode without a row in [`INDEX`].
const NO_ROW: u8 = u8::MAX;

/// For each opcode, the index of its first row in [`TABLE`] (O(1) lookup on the hot path).
static INDEX: [u8; 256] = build_index();

const fn build_index() -> [u8; 256] {
    assert!(TABLE.len() < NO_ROW as usize);
    let mut idx = [NO_ROW; 256];
    let mut i = TABLE.len();
    while i > 0 {
        i -= 1;
        idx[TABLE[i].opcode as usize] = i as u8;
    }
    idx
}

/// The rows of one opcode (one row, or one per service action).
fn rows(opcode: u8) -> &'static [OpcodeInfo] {
    let start = usize::from(INDEX[usize::from(opcode)]);
    let Some(tail) = OPCODES.get(start..) else {
        return &[];
    };
    let len = tail.iter().take_while(|r| r.opcode == opcode).count();
    &tail[..len]
}

const TABLE: &[OpcodeInfo] = &[
    row(
        0x00,
        None,
        "TEST UNIT READY",
        6,
        u([0x00, 0, 0, 0, 0, 0]),
        NoMedia,
    ),
    row(
        0x03,
        None,
        "REQUEST SENSE",
        6,
        u([0x03, 0x01, 0, 0, 0xFF, 0]),
        NoMedia,
    ),
    row(
        0x08,
        None,
        "READ(6)",
        6,
        u([0x08, 0x1F, 0xFF, 0xFF, 0xFF, 0]),
        MRead,
    ),
    row(
        0x0A,
        None,
        "WRITE(6)",
        6,
        u([0x0A, 0x1F, 0xFF, 0xFF, 0xFF, 0]),
        MWrite,
    ),
    row(
        0x12,
        None,
        "INQUIRY",
        6,
        u([0x12, 0x01, 0xFF, 0xFF, 0xFF, 0]),
        NoMedia,
    ),
    row(
        0x15,
        None,
        "MODE SELECT(6)",
        6,
        u([0x15, 0x10, 0, 0, 0xFF, 0]),
        NoMedia,
    ),
    row(
        0x16,
        None,
        "RESERVE(6)",
        6,
        u([0x16, 0, 0, 0, 0, 0]),
        NoMedia,
    ),
    row(
        0x17,
        None,
        "RELEASE(6)",
        6,
        u([0x17, 0, 0, 0, 0, 0]),
        NoMedia,
    ),
    row(
        0x1A,
        None,
        "MODE SENSE(6)",
        6,
        u([0x1A, 0x08, 0xFF, 0xFF, 0xFF, 0]),
        NoMedia,
    ),
    row(
        0x1B,
        None,
        "START STOP UNIT",
        6,
        u([0x1B, 0x01, 0, 0x0F, 0xF7, 0]),
        NoMedia,
    ),
    row(
        0x1E,
        None,
        "PREVENT ALLOW MEDIUM REMOVAL",
        6,
        u([0x1E, 0, 0, 0, 0x03, 0]),
        NoMedia,
    ),
    row(
        0x25,
        None,
        "READ CAPACITY(10)",
        10,
        u([0x25, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x01, 0]),
        NoMedia,
    ),
    row(0x28, None, "READ(10)", 10, with_op(0x28, RW10), MRead),
    row(0x2A, None, "WRITE(10)", 10, with_op(0x2A, RW10), MWrite),
    row(
        0x2E,
        None,
        "WRITE AND VERIFY(10)",
        10,
        with_op(0x2E, VFY10),
        MWrite,
    ),
    row(0x2F, None, "VERIFY(10)", 10, with_op(0x2F, VFY10), MRead),
    row(
        0x34,
        None,
        "PRE-FETCH(10)",
        10,
        u([0x34, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0]),
        MRead,
    ),
    row(
        0x35,
        None,
        "SYNCHRONIZE CACHE(10)",
        10,
        u([0x35, 0x06, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0]),
        NoMedia,
    ),
    row(
        0x37,
        None,
        "READ DEFECT DATA(10)",
        10,
        u([0x37, 0, 0x1F, 0, 0, 0, 0, 0xFF, 0xFF, 0]),
        NoMedia,
    ),
    row(
        0x41,
        None,
        "WRITE SAME(10)",
        10,
        u([0x41, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0]),
        MWrite,
    ),
    row(
        0x42,
        None,
        "UNMAP",
        10,
        u([0x42, 0x01, 0, 0, 0, 0, 0x1F, 0xFF, 0xFF, 0]),
        MWrite,
    ),
    row(
        0x55,
        None,
        "MODE SELECT(10)",
        10,
        u([0x55, 0x10, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0]),
        NoMedia,
    ),
    row(
        0x56,
        None,
        "RESERVE(10)",
        10,
        u([0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        NoMedia,
    ),
    row(
        0x57,
        None,
        "RELEASE(10)",
        10,
        u([0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        NoMedia,
    ),
    row(
        0x5A,
        None,
        "MODE SENSE(10)",
        10,
        u([0x5A, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0]),
        NoMedia,
    ),
    pr_in(0x00, "PERSISTENT RESERVE IN / READ KEYS"),
    pr_in(0x01, "PERSISTENT RESERVE IN / READ RESERVATION"),
    pr_in(0x02, "PERSISTENT RESERVE IN / REPORT CAPABILITIES"),
    pr_in(0x03, "PERSISTENT RESERVE IN / READ FULL STATUS"),
    pr_out(0x00, "PERSISTENT RESERVE OUT / REGISTER"),
    pr_out(0x01, "PERSISTENT RESERVE OUT / RESERVE"),
    pr_out(0x02, "PERSISTENT RESERVE OUT / RELEASE"),
    pr_out(0x03, "PERSISTENT RESERVE OUT / CLEAR"),
    pr_out(0x04, "PERSISTENT RESERVE OUT / PREEMPT"),
    pr_out(0x05, "PERSISTENT RESERVE OUT / PREEMPT AND ABORT"),
    pr_out(
        0x06,
        "PERSISTENT RESERVE OUT / REGISTER AND IGNORE EXISTING KEY",
    ),
    pr_out(0x07, "PERSISTENT RESERVE OUT / REGISTER AND MOVE"),
    row(
        0x83,
        Some(0x00),
        "EXTENDED COPY(LID1)",
        16,
        u([
            0x83, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0,
        ]),
        MWrite,
    ),
    row(
        0x84,
        Some(0x00),
        "RECEIVE COPY RESULTS / COPY STATUS",
        16,
        rcr(0x00),
        NoMedia,
    ),
    row(
        0x84,
        Some(0x03),
        "RECEIVE COPY RESULTS / OPERATING PARAMETERS",
        16,
        rcr(0x03),
        NoMedia,
    ),
    row(0x88, None, "READ(16)", 16, rw16(0x88, 0x1A), MRead),
    row(
        0x89,
        None,
        "COMPARE AND WRITE",
        16,
        u([
            0x89, 0x1A, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0x1F, 0,
        ]),
        MWrite,
    ),
    row(0x8A, None, "WRITE(16)", 16, rw16(0x8A, 0x1A), MWrite),
    row(0x8B, None, "ORWRITE(16)", 16, rw16(0x8B, 0x1A), MWrite),
    row(
        0x8E,
        None,
        "WRITE AND VERIFY(16)",
        16,
        rw16(0x8E, 0x12),
        MWrite,
    ),
    row(0x8F, None, "VERIFY(16)", 16, rw16(0x8F, 0x12), MRead),
    row(0x90, None, "PRE-FETCH(16)", 16, rw16(0x90, 0x02), MRead),
    row(
        0x91,
        None,
        "SYNCHRONIZE CACHE(16)",
        16,
        rw16(0x91, 0x06),
        NoMedia,
    ),
    row(0x93, None, "WRITE SAME(16)", 16, rw16(0x93, 0x19), MWrite),
    row(
        0x9C,
        None,
        "WRITE ATOMIC(16)",
        16,
        u([
            0x9C, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0xFF, 0xFF, 0x1F, 0,
        ]),
        MWrite,
    ),
    row(
        0x9E,
        Some(0x10),
        "READ CAPACITY(16)",
        16,
        u([
            0x9E, 0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x01, 0,
        ]),
        NoMedia,
    ),
    row(
        0x9E,
        Some(0x12),
        "GET LBA STATUS",
        16,
        u([
            0x9E, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0,
            0,
        ]),
        NoMedia,
    ),
    row(
        0xA0,
        None,
        "REPORT LUNS",
        12,
        u([0xA0, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0]),
        NoMedia,
    ),
    row(
        0xA3,
        Some(0x0A),
        "REPORT TARGET PORT GROUPS",
        12,
        u([0xA3, 0xEA, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0]),
        NoMedia,
    ),
    row(
        0xA3,
        Some(0x0C),
        "REPORT SUPPORTED OPERATION CODES",
        12,
        u([
            0xA3, 0x0C, 0x87, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0,
        ]),
        NoMedia,
    ),
    row(0xA8, None, "READ(12)", 12, with_op(0xA8, RW12), MRead),
    row(0xAA, None, "WRITE(12)", 12, with_op(0xAA, RW12), MWrite),
    row(
        0xAE,
        None,
        "WRITE AND VERIFY(12)",
        12,
        with_op(0xAE, VFY12),
        MWrite,
    ),
    row(0xAF, None, "VERIFY(12)", 12, with_op(0xAF, VFY12), MRead),
    row(
        0xB7,
        None,
        "READ DEFECT DATA(12)",
        12,
        u([
            0xB7, 0x1F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0,
        ]),
        NoMedia,
    ),
];

/// Bits of the CONTROL byte that SPC reserves for the vendor and lets a device server ignore.
const CONTROL_VENDOR_BITS: u8 = 0xC0;

/// The CDB length that the opcode's group code implies (SPC-4 4.2.5.1), if the group is fixed.
pub const fn group_cdb_len(opcode: u8) -> Option<u8> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

/// Whether `opcode` has service actions in this table.
pub fn has_service_actions(opcode: u8) -> bool {
    rows(opcode)
        .first()
        .is_some_and(|r| r.service_action.is_some())
}

/// The row of `opcode` (and `service_action` for opcodes that have them).
pub fn lookup(opcode: u8, service_action: Option<u8>) -> Option<&'static OpcodeInfo> {
    rows(opcode)
        .iter()
        .find(|r| r.service_action == service_action)
}

/// Finds the row for a CDB: unknown opcode -> INVALID COMMAND OPERATION CODE, unknown service
/// action -> INVALID FIELD IN CDB pointing at the service action field.
pub fn find(cdb: &[u8]) -> Result<&'static OpcodeInfo, SenseReason> {
    let &opcode = cdb.first().ok_or(SenseReason::InvalidOpcode)?;
    if has_service_actions(opcode) {
        let sa = cdb
            .get(1)
            .map(|b| b & 0x1F)
            .ok_or(SenseReason::InvalidFieldInCdb(FieldPointer::byte(1)))?;
        lookup(opcode, Some(sa)).ok_or(SenseReason::InvalidFieldInCdb(FieldPointer::bit(1, 4)))
    } else {
        lookup(opcode, None).ok_or(SenseReason::InvalidOpcode)
    }
}

/// Whether byte 1 bits 7-5 of `opcode` are a protection field (RDPROTECT, WRPROTECT,
/// VRPROTECT, ORPROTECT): one field of three bits, not three reserved bits.
const fn has_protect_field(opcode: u8) -> bool {
    matches!(
        opcode,
        op::READ_10
            | op::WRITE_10
            | op::WRITE_VERIFY_10
            | op::VERIFY_10
            | op::WRITE_SAME_10
            | op::READ_16
            | op::COMPARE_AND_WRITE
            | op::WRITE_16
            | op::ORWRITE_16
            | op::WRITE_VERIFY_16
            | op::VERIFY_16
            | op::WRITE_SAME_16
            | op::WRITE_ATOMIC_16
            | op::READ_12
            | op::WRITE_12
            | op::WRITE_VERIFY_12
            | op::VERIFY_12
    )
}

/// Where the field holding offending bit `bit` of CDB byte `byte` starts. SPC-4 (field pointer
/// sense key specific data): for a field of several bits the pointer names its left-most bit,
/// so a refused multiple-bit field is pointed at there, whatever value it holds. Reserved bits
/// are one-bit fields of their own.
fn field_start(opcode: u8, byte: usize, bit: u8) -> (usize, u8) {
    match (opcode, byte) {
        (_, 1) if bit >= 5 && has_protect_field(opcode) => (1, 7),
        // WRITE ATOMIC (16)'s ATOMIC BOUNDARY (bytes 10-11; only 0 is supported).
        (op::WRITE_ATOMIC_16, 10 | 11) => (10, 7),
        _ => (byte, bit),
    }
}

/// Checks a CDB against the row's allowed-bit mask. The first byte with a bit set outside the
/// mask yields INVALID FIELD IN CDB pointing at the field of its most significant offending bit
/// (`field_start`). The CONTROL byte's vendor bits are ignored; NACA, LINK and reserved
/// control bits are rejected.
pub fn check_fields(info: &OpcodeInfo, cdb: &[u8]) -> Result<(), SenseReason> {
    let len = usize::from(info.cdb_len);
    let Some(bytes) = cdb.get(..len) else {
        return Err(SenseReason::InvalidFieldInCdb(FieldPointer::byte(0)));
    };
    for (i, (&b, &allowed)) in bytes.iter().zip(info.usage.iter()).enumerate().skip(1) {
        let allowed = if i + 1 == len {
            allowed | CONTROL_VENDOR_BITS
        } else {
            allowed
        };
        let bad = b & !allowed;
        if bad != 0 {
            let (at, bit) = field_start(info.opcode, i, 7 - bad.leading_zeros() as u8);
            // `at` < 16, so it always fits.
            return Err(SenseReason::InvalidFieldInCdb(FieldPointer::bit(
                at as u16, bit,
            )));
        }
    }
    Ok(())
}

/// Looks a CDB up and checks its fields: the common front end of every command.
pub fn validate(cdb: &[u8]) -> Result<&'static OpcodeInfo, SenseReason> {
    let info = find(cdb)?;
    check_fields(info, cdb)?;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        for w in OPCODES.windows(2) {
            let a = (w[0].opcode, w[0].service_action);
            let b = (w[1].opcode, w[1].service_action);
            assert!(
                a < b,
                "table not sorted or duplicated at {:?} {:?}",
                w[0].name,
                w[1].name
            );
        }
        for r in OPCODES {
            assert_eq!(Some(r.cdb_len), group_cdb_len(r.opcode), "{}", r.name);
            assert_eq!(r.usage[0], r.opcode, "{}: usage[0] is the opcode", r.name);
            assert!(
                r.usage[usize::from(r.cdb_len)..].iter().all(|&b| b == 0),
                "{}: usage beyond the CDB",
                r.name
            );
            assert_eq!(
                r.usage[usize::from(r.cdb_len) - 1],
                0,
                "{}: control",
                r.name
            );
            if let Some(sa) = r.service_action {
                assert_eq!(r.usage[1] & 0x1F, sa, "{}: SA in usage", r.name);
            }
            // Opcodes with service actions never also have a plain row.
            if has_service_actions(r.opcode) {
                assert!(r.service_action.is_some(), "{}", r.name);
            }
        }
    }

    #[test]
    fn index_agrees_with_linear_scan() {
        for opcode in 0..=255u8 {
            let linear: Vec<_> = OPCODES.iter().filter(|r| r.opcode == opcode).collect();
            let indexed = rows(opcode);
            assert_eq!(linear.len(), indexed.len(), "opcode {opcode:#04x}");
            for r in linear {
                assert!(lookup(opcode, r.service_action).is_some_and(|x| x.name == r.name));
            }
        }
    }

    #[test]
    fn unknown_opcode_and_service_action() {
        assert_eq!(
            find(&[0x04, 0, 0, 0, 0, 0]).err(),
            Some(SenseReason::InvalidOpcode)
        );
        assert_eq!(find(&[]).err(), Some(SenseReason::InvalidOpcode));
        let mut cdb = [0u8; 16];
        cdb[0] = 0x9E;
        cdb[1] = 0x11;
        assert_eq!(
            find(&cdb).err(),
            Some(SenseReason::InvalidFieldInCdb(FieldPointer::bit(1, 4)))
        );
        cdb[1] = 0x10;
        assert_eq!(find(&cdb).map(|r| r.name), Ok("READ CAPACITY(16)"));
    }

    #[test]
    fn field_pointer_names_first_offending_bit() {
        // READ(10) with RDPROTECT = 001b: the field starts at byte 1 bit 7.
        let cdb = [0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0];
        assert_eq!(
            validate(&cdb).err(),
            Some(SenseReason::InvalidFieldInCdb(FieldPointer::bit(1, 7)))
        );
        // Reserved byte 9 of READ CAPACITY(10)... is CONTROL; byte 6 is reserved.
        let cdb = [0x25, 0, 0, 0, 0, 0, 0x01, 0, 0, 0];
        assert_eq!(
            validate(&cdb).err(),
            Some(SenseReason::InvalidFieldInCdb(FieldPointer::bit(6, 0)))
        );
    }

    #[test]
    fn a_refused_multiple_bit_field_is_pointed_at_its_left_most_bit() {
        // Every value of every protection field names byte 1 bit 7 (SPC-4: the bit pointer of
        // a field of several bits is its left-most bit).
        for row in OPCODES.iter().filter(|r| has_protect_field(r.opcode)) {
            assert_eq!(row.usage[1] & 0xE0, 0, "{}: protection refused", row.name);
            for value in 1..8u8 {
                let mut cdb = [0u8; 16];
                cdb[0] = row.opcode;
                cdb[1] = value << 5;
                assert_eq!(
                    validate(&cdb[..usize::from(row.cdb_len)]).err(),
                    Some(SenseReason::InvalidFieldInCdb(FieldPointer::bit(1, 7))),
                    "{} xxPROTECT {value:03b}",
                    row.name
                );
            }
        }
        // WRITE ATOMIC (16)'s ATOMIC BOUNDARY (bytes 10-11) from its first bit, in either byte.
        for (at, v) in [(10, 0x01), (11, 0x80), (11, 0x01)] {
            let mut cdb = [0u8; 16];
            cdb[0] = 0x9C;
            cdb[at] = v;
            assert_eq!(
                validate(&cdb).err(),
                Some(SenseReason::InvalidFieldInCdb(FieldPointer::bit(10, 7)))
            );
        }
        // Reserved bits stay one-bit fields of their own; READ(6) has no protection field.
        assert_eq!(
            validate(&[0x08, 0x20, 0, 0, 1, 0]).err(),
            Some(SenseReason::InvalidFieldInCdb(FieldPointer::bit(1, 5)))
        );
        assert_eq!(
            validate(&[0x28, 0x04, 0, 0, 0, 0, 0, 0, 1, 0]).err(),
            Some(SenseReason::InvalidFieldInCdb(FieldPointer::bit(1, 2)))
        );
    }

    #[test]
    fn control_byte_vendor_bits_ignored_naca_link_rejected() {
        assert!(validate(&[0, 0, 0, 0, 0, 0xC0]).is_ok());
        assert_eq!(
            validate(&[0, 0, 0, 0, 0, 0x04]).err(),
            Some(SenseReason::InvalidFieldInCdb(FieldPointer::bit(5, 2)))
        );
        assert_eq!(
            validate(&[0, 0, 0, 0, 0, 0x01]).err(),
            Some(SenseReason::InvalidFieldInCdb(FieldPointer::bit(5, 0)))
        );
    }

    #[test]
    fn short_cdb_rejected() {
        assert_eq!(
            validate(&[0x28, 0, 0]).err(),
            Some(SenseReason::InvalidFieldInCdb(FieldPointer::byte(0)))
        );
    }
}
