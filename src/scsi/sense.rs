//! Sense data: one [`SenseReason`] per condition, mapped to SPC-4 sense key / ASC / ASCQ, and
//! one encoder for fixed (70h) and descriptor (72h) format sense data.

/// SPC-4 sense keys (table 27).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SenseKey {
    /// NO SENSE.
    NoSense = 0x0,
    /// RECOVERED ERROR.
    RecoveredError = 0x1,
    /// NOT READY.
    NotReady = 0x2,
    /// MEDIUM ERROR.
    MediumError = 0x3,
    /// HARDWARE ERROR.
    HardwareError = 0x4,
    /// ILLEGAL REQUEST.
    IllegalRequest = 0x5,
    /// UNIT ATTENTION.
    UnitAttention = 0x6,
    /// DATA PROTECT.
    DataProtect = 0x7,
    /// COPY ABORTED.
    CopyAborted = 0xA,
    /// ABORTED COMMAND.
    AbortedCommand = 0xB,
    /// MISCOMPARE.
    Miscompare = 0xE,
}

/// Where an invalid field lies: byte offset and, when known, the bit (0..=7) of its most
/// significant bit. Encoded in the sense-key-specific field (SKSV, BPV, bit and field pointers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldPointer {
    /// Byte offset within the CDB or parameter list.
    pub byte: u16,
    /// Bit within that byte, `None` when the whole byte(s) is in error.
    pub bit: Option<u8>,
}

impl FieldPointer {
    /// A pointer to a whole byte (BPV = 0).
    pub const fn byte(byte: u16) -> Self {
        Self { byte, bit: None }
    }

    /// A pointer to one bit of a byte (BPV = 1).
    pub const fn bit(byte: u16, bit: u8) -> Self {
        Self {
            byte,
            bit: Some(bit & 7),
        }
    }
}

/// Every condition this device server reports, one variant each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SenseReason {
    /// NO SENSE, no additional sense information (00h/00h/00h).
    NoSense,
    /// NOT READY, LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE (2h/04h/00h).
    NotReady,
    /// NOT READY, LOGICAL UNIT NOT READY, INITIALIZING COMMAND REQUIRED (2h/04h/02h).
    NotReadyInitializingCommandRequired,
    /// NOT READY, LOGICAL UNIT NOT READY, MANUAL INTERVENTION REQUIRED (2h/04h/03h).
    NotReadyManualIntervention,
    /// NOT READY, MEDIUM NOT PRESENT (2h/3Ah/00h).
    MediumNotPresent,
    /// MEDIUM ERROR, UNRECOVERED READ ERROR (3h/11h/00h).
    UnrecoveredReadError,
    /// MEDIUM ERROR, WRITE ERROR (3h/0Ch/00h).
    WriteError,
    /// HARDWARE ERROR, INTERNAL TARGET FAILURE (4h/44h/00h).
    InternalTargetFailure,
    /// ILLEGAL REQUEST, PARAMETER LIST LENGTH ERROR (5h/1Ah/00h).
    ParameterListLengthError,
    /// ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE (5h/20h/00h).
    InvalidOpcode,
    /// ILLEGAL REQUEST, LOGICAL BLOCK ADDRESS OUT OF RANGE (5h/21h/00h).
    LbaOutOfRange,
    /// ILLEGAL REQUEST, INVALID FIELD IN CDB (5h/24h/00h), with the CDB field pointer.
    InvalidFieldInCdb(FieldPointer),
    /// ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED (5h/25h/00h).
    LunNotSupported,
    /// ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST (5h/26h/00h), with the field pointer.
    InvalidFieldInParameterList(FieldPointer),
    /// ILLEGAL REQUEST, SAVING PARAMETERS NOT SUPPORTED (5h/39h/00h).
    SavingParametersNotSupported,
    /// ILLEGAL REQUEST, INVALID RELEASE OF PERSISTENT RESERVATION (5h/26h/04h).
    InvalidReleaseOfPersistentReservation,
    /// ILLEGAL REQUEST, TOO MANY TARGET DESCRIPTORS (5h/26h/06h).
    TooManyTargetDescriptors,
    /// ILLEGAL REQUEST, UNSUPPORTED TARGET DESCRIPTOR TYPE CODE (5h/26h/07h), with pointer.
    UnsupportedTargetDescriptorType(FieldPointer),
    /// ILLEGAL REQUEST, TOO MANY SEGMENT DESCRIPTORS (5h/26h/08h).
    TooManySegmentDescriptors,
    /// ILLEGAL REQUEST, UNSUPPORTED SEGMENT DESCRIPTOR TYPE CODE (5h/26h/09h), with pointer.
    UnsupportedSegmentDescriptorType(FieldPointer),
    /// ILLEGAL REQUEST, INSUFFICIENT REGISTRATION RESOURCES (5h/55h/04h).
    InsufficientRegistrationResources,
    /// COPY ABORTED, COPY TARGET DEVICE NOT REACHABLE (Ah/0Dh/02h).
    CopyTargetDeviceNotReachable,
    /// COPY ABORTED, no additional sense information (Ah/00h/00h): a segment that cannot be
    /// copied (past the end of a copy target, a medium error on one).
    CopyAborted,
    /// UNIT ATTENTION, POWER ON, RESET, OR BUS DEVICE RESET OCCURRED (6h/29h/00h).
    PowerOnReset,
    /// UNIT ATTENTION, POWER ON OCCURRED (6h/29h/01h).
    PowerOnOccurred,
    /// UNIT ATTENTION, SCSI BUS RESET OCCURRED (6h/29h/02h).
    BusReset,
    /// UNIT ATTENTION, BUS DEVICE RESET FUNCTION OCCURRED (6h/29h/03h).
    BusDeviceResetFunction,
    /// UNIT ATTENTION, DEVICE INTERNAL RESET (6h/29h/04h).
    DeviceInternalReset,
    /// UNIT ATTENTION, I_T NEXUS LOSS OCCURRED (6h/29h/07h).
    ItNexusLoss,
    /// UNIT ATTENTION, COMMANDS CLEARED BY ANOTHER INITIATOR (6h/2Fh/00h): another I_T nexus's
    /// CLEAR TASK SET aborted this nexus's commands (SAM-5 5.6, TAS = 0).
    CommandsClearedByAnotherInitiator,
    /// UNIT ATTENTION, MODE PARAMETERS CHANGED (6h/2Ah/01h).
    ModeParametersChanged,
    /// UNIT ATTENTION, RESERVATIONS PREEMPTED (6h/2Ah/03h).
    ReservationsPreempted,
    /// UNIT ATTENTION, RESERVATIONS RELEASED (6h/2Ah/04h).
    ReservationsReleased,
    /// UNIT ATTENTION, REGISTRATIONS PREEMPTED (6h/2Ah/05h).
    RegistrationsPreempted,
    /// UNIT ATTENTION, CAPACITY DATA HAS CHANGED (6h/2Ah/09h).
    CapacityDataChanged,
    /// UNIT ATTENTION, REPORTED LUNS DATA HAS CHANGED (6h/3Fh/0Eh).
    ReportedLunsDataChanged,
    /// DATA PROTECT, WRITE PROTECTED (7h/27h/00h).
    WriteProtected,
    /// DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT (7h/27h/07h): a thin-provisioned LUN
    /// could not get the space a write needs (SBC-3 4.7.3.6).
    SpaceAllocationFailed,
    /// MISCOMPARE, MISCOMPARE DURING VERIFY OPERATION (Eh/1Dh/00h).
    MiscompareDuringVerify,
    /// ABORTED COMMAND, PROTOCOL SERVICE CRC ERROR (Bh/47h/05h): data-out that failed its
    /// iSCSI data digest (RFC 7143 §7.8, §11.4.7.2).
    ProtocolServiceCrcError,
}

impl SenseReason {
    /// The sense key, ASC and ASCQ of this condition (SPC-4 tables 27 and 28).
    pub const fn code(self) -> (SenseKey, u8, u8) {
        use SenseKey as K;
        match self {
            Self::NoSense => (K::NoSense, 0x00, 0x00),
            Self::NotReady => (K::NotReady, 0x04, 0x00),
            Self::NotReadyInitializingCommandRequired => (K::NotReady, 0x04, 0x02),
            Self::NotReadyManualIntervention => (K::NotReady, 0x04, 0x03),
            Self::MediumNotPresent => (K::NotReady, 0x3A, 0x00),
            Self::UnrecoveredReadError => (K::MediumError, 0x11, 0x00),
            Self::WriteError => (K::MediumError, 0x0C, 0x00),
            Self::InternalTargetFailure => (K::HardwareError, 0x44, 0x00),
            Self::ParameterListLengthError => (K::IllegalRequest, 0x1A, 0x00),
            Self::InvalidOpcode => (K::IllegalRequest, 0x20, 0x00),
            Self::LbaOutOfRange => (K::IllegalRequest, 0x21, 0x00),
            Self::InvalidFieldInCdb(_) => (K::IllegalRequest, 0x24, 0x00),
            Self::LunNotSupported => (K::IllegalRequest, 0x25, 0x00),
            Self::InvalidFieldInParameterList(_) => (K::IllegalRequest, 0x26, 0x00),
            Self::SavingParametersNotSupported => (K::IllegalRequest, 0x39, 0x00),
            Self::InvalidReleaseOfPersistentReservation => (K::IllegalRequest, 0x26, 0x04),
            Self::TooManyTargetDescriptors => (K::IllegalRequest, 0x26, 0x06),
            Self::UnsupportedTargetDescriptorType(_) => (K::IllegalRequest, 0x26, 0x07),
            Self::TooManySegmentDescriptors => (K::IllegalRequest, 0x26, 0x08),
            Self::UnsupportedSegmentDescriptorType(_) => (K::IllegalRequest, 0x26, 0x09),
            Self::InsufficientRegistrationResources => (K::IllegalRequest, 0x55, 0x04),
            Self::CopyTargetDeviceNotReachable => (K::CopyAborted, 0x0D, 0x02),
            Self::CopyAborted => (K::CopyAborted, 0x00, 0x00),
            Self::PowerOnReset => (K::UnitAttention, 0x29, 0x00),
            Self::PowerOnOccurred => (K::UnitAttention, 0x29, 0x01),
            Self::BusReset => (K::UnitAttention, 0x29, 0x02),
            Self::BusDeviceResetFunction => (K::UnitAttention, 0x29, 0x03),
            Self::DeviceInternalReset => (K::UnitAttention, 0x29, 0x04),
            Self::ItNexusLoss => (K::UnitAttention, 0x29, 0x07),
            Self::CommandsClearedByAnotherInitiator => (K::UnitAttention, 0x2F, 0x00),
            Self::ModeParametersChanged => (K::UnitAttention, 0x2A, 0x01),
            Self::ReservationsPreempted => (K::UnitAttention, 0x2A, 0x03),
            Self::ReservationsReleased => (K::UnitAttention, 0x2A, 0x04),
            Self::RegistrationsPreempted => (K::UnitAttention, 0x2A, 0x05),
            Self::CapacityDataChanged => (K::UnitAttention, 0x2A, 0x09),
            Self::ProtocolServiceCrcError => (K::AbortedCommand, 0x47, 0x05),
            Self::ReportedLunsDataChanged => (K::UnitAttention, 0x3F, 0x0E),
            Self::WriteProtected => (K::DataProtect, 0x27, 0x00),
            Self::SpaceAllocationFailed => (K::DataProtect, 0x27, 0x07),
            Self::MiscompareDuringVerify => (K::Miscompare, 0x1D, 0x00),
        }
    }

    /// The sense key of this condition.
    pub const fn key(self) -> SenseKey {
        self.code().0
    }

    /// Whether this is a reset-class unit attention (ASC 29h).
    pub const fn is_reset(self) -> bool {
        let (key, asc, _) = self.code();
        matches!(key, SenseKey::UnitAttention) && asc == 0x29
    }

    /// The sense-key-specific field pointer and its C/D bit (true: CDB), if any.
    const fn field_pointer(self) -> Option<(bool, FieldPointer)> {
        match self {
            Self::InvalidFieldInCdb(p) => Some((true, p)),
            Self::InvalidFieldInParameterList(p)
            | Self::UnsupportedTargetDescriptorType(p)
            | Self::UnsupportedSegmentDescriptorType(p) => Some((false, p)),
            _ => None,
        }
    }
}

/// Which sense data format to produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SenseFormat {
    /// Fixed format, response code 70h (current error).
    Fixed,
    /// Descriptor format, response code 72h (current error).
    Descriptor,
}

/// A condition plus the optional INFORMATION field (for example the miscompare offset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    /// The condition.
    pub reason: SenseReason,
    /// The INFORMATION field, when the condition defines one.
    pub information: Option<u64>,
}

impl From<SenseReason> for Sense {
    fn from(reason: SenseReason) -> Self {
        Self {
            reason,
            information: None,
        }
    }
}

/// The most sense bytes this encoder produces (descriptor format with information and
/// sense-key-specific descriptors is 8 + 12 + 8).
pub const MAX_SENSE_LEN: usize = 28;

/// Length of fixed format sense data (additional sense length 0Ah).
pub const FIXED_SENSE_LEN: usize = 18;

/// Encoded sense data, stored inline (no allocation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SenseData {
    bytes: [u8; MAX_SENSE_LEN],
    len: u8,
}

impl core::fmt::Debug for SenseData {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "SenseData({:02x?})", self.as_bytes())
    }
}

impl SenseData {
    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Encodes the sense-key-specific bytes of a field pointer (SKSV, C/D, BPV, bit, field pointer).
fn sense_key_specific(cd: bool, p: FieldPointer) -> [u8; 3] {
    let mut b0 = 0x80u8;
    if cd {
        b0 |= 0x40;
    }
    if let Some(bit) = p.bit {
        b0 |= 0x08 | (bit & 0x07);
    }
    let [hi, lo] = p.byte.to_be_bytes();
    [b0, hi, lo]
}

impl Sense {
    /// A sense with an INFORMATION field.
    pub const fn with_information(reason: SenseReason, information: u64) -> Self {
        Self {
            reason,
            information: Some(information),
        }
    }

    /// Encodes this sense in the requested format.
    pub fn encode(&self, format: SenseFormat) -> SenseData {
        match format {
            SenseFormat::Fixed => self.encode_fixed(),
            SenseFormat::Descriptor => self.encode_descriptor(),
        }
    }

    fn encode_fixed(&self) -> SenseData {
        let (key, asc, ascq) = self.reason.code();
        let mut b = [0u8; MAX_SENSE_LEN];
        b[0] = 0x70;
        if let Some(info) = self.information.and_then(|i| u32::try_from(i).ok()) {
            b[0] |= 0x80;
            b[3..7].copy_from_slice(&info.to_be_bytes());
        }
        b[2] = key as u8;
        b[7] = (FIXED_SENSE_LEN - 8) as u8;
        b[12] = asc;
        b[13] = ascq;
        if let Some((cd, p)) = self.reason.field_pointer() {
            b[15..18].copy_from_slice(&sense_key_specific(cd, p));
        }
        SenseData {
            bytes: b,
            len: FIXED_SENSE_LEN as u8,
        }
    }

    fn encode_descriptor(&self) -> SenseData {
        let (key, asc, ascq) = self.reason.code();
        let mut b = [0u8; MAX_SENSE_LEN];
        b[0] = 0x72;
        b[1] = key as u8;
        b[2] = asc;
        b[3] = ascq;
        let mut len = 8usize;
        if let Some(info) = self.information {
            // Information descriptor: type 00h, additional length 0Ah, VALID.
            b[len..len + 4].copy_from_slice(&[0x00, 0x0A, 0x80, 0x00]);
            b[len + 4..len + 12].copy_from_slice(&info.to_be_bytes());
            len += 12;
        }
        if let Some((cd, p)) = self.reason.field_pointer() {
            // Sense key specific descriptor: type 02h, additional length 06h.
            b[len..len + 4].copy_from_slice(&[0x02, 0x06, 0x00, 0x00]);
            b[len + 4..len + 7].copy_from_slice(&sense_key_specific(cd, p));
            len += 8;
        }
        b[7] = (len - 8) as u8;
        SenseData {
            bytes: b,
            len: len as u8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every reason against the SPC-4 (tables 27 and 28) values, written out here.
    #[test]
    fn codes_match_spc4() {
        let p = FieldPointer::byte(1);
        let cases: &[(SenseReason, u8, u8, u8)] = &[
            (SenseReason::NoSense, 0x0, 0x00, 0x00),
            (SenseReason::NotReady, 0x2, 0x04, 0x00),
            (
                SenseReason::NotReadyInitializingCommandRequired,
                0x2,
                0x04,
                0x02,
            ),
            (SenseReason::NotReadyManualIntervention, 0x2, 0x04, 0x03),
            (SenseReason::MediumNotPresent, 0x2, 0x3A, 0x00),
            (SenseReason::UnrecoveredReadError, 0x3, 0x11, 0x00),
            (SenseReason::WriteError, 0x3, 0x0C, 0x00),
            (SenseReason::InternalTargetFailure, 0x4, 0x44, 0x00),
            (SenseReason::ParameterListLengthError, 0x5, 0x1A, 0x00),
            (SenseReason::InvalidOpcode, 0x5, 0x20, 0x00),
            (SenseReason::LbaOutOfRange, 0x5, 0x21, 0x00),
            (SenseReason::InvalidFieldInCdb(p), 0x5, 0x24, 0x00),
            (SenseReason::LunNotSupported, 0x5, 0x25, 0x00),
            (SenseReason::InvalidFieldInParameterList(p), 0x5, 0x26, 0x00),
            (SenseReason::SavingParametersNotSupported, 0x5, 0x39, 0x00),
            (
                SenseReason::InvalidReleaseOfPersistentReservation,
                0x5,
                0x26,
                0x04,
            ),
            (SenseReason::TooManyTargetDescriptors, 0x5, 0x26, 0x06),
            (
                SenseReason::UnsupportedTargetDescriptorType(p),
                0x5,
                0x26,
                0x07,
            ),
            (SenseReason::TooManySegmentDescriptors, 0x5, 0x26, 0x08),
            (
                SenseReason::UnsupportedSegmentDescriptorType(p),
                0x5,
                0x26,
                0x09,
            ),
            (
                SenseReason::InsufficientRegistrationResources,
                0x5,
                0x55,
                0x04,
            ),
            (SenseReason::CopyTargetDeviceNotReachable, 0xA, 0x0D, 0x02),
            (SenseReason::CopyAborted, 0xA, 0x00, 0x00),
            (SenseReason::ReservationsPreempted, 0x6, 0x2A, 0x03),
            (SenseReason::ReservationsReleased, 0x6, 0x2A, 0x04),
            (SenseReason::RegistrationsPreempted, 0x6, 0x2A, 0x05),
            (SenseReason::PowerOnReset, 0x6, 0x29, 0x00),
            (SenseReason::PowerOnOccurred, 0x6, 0x29, 0x01),
            (SenseReason::BusReset, 0x6, 0x29, 0x02),
            (SenseReason::BusDeviceResetFunction, 0x6, 0x29, 0x03),
            (SenseReason::DeviceInternalReset, 0x6, 0x29, 0x04),
            (SenseReason::ItNexusLoss, 0x6, 0x29, 0x07),
            (SenseReason::ModeParametersChanged, 0x6, 0x2A, 0x01),
            (
                SenseReason::CommandsClearedByAnotherInitiator,
                0x6,
                0x2F,
                0x00,
            ),
            (SenseReason::CapacityDataChanged, 0x6, 0x2A, 0x09),
            (SenseReason::ProtocolServiceCrcError, 0xB, 0x47, 0x05),
            (SenseReason::ReportedLunsDataChanged, 0x6, 0x3F, 0x0E),
            (SenseReason::WriteProtected, 0x7, 0x27, 0x00),
            (SenseReason::SpaceAllocationFailed, 0x7, 0x27, 0x07),
            (SenseReason::MiscompareDuringVerify, 0xE, 0x1D, 0x00),
        ];
        for &(reason, key, asc, ascq) in cases {
            let (k, a, q) = reason.code();
            assert_eq!((k as u8, a, q), (key, asc, ascq), "{reason:?}");
            let fixed = Sense::from(reason).encode(SenseFormat::Fixed);
            let f = fixed.as_bytes();
            assert_eq!((f[2], f[12], f[13]), (key, asc, ascq), "{reason:?} fixed");
            let desc = Sense::from(reason).encode(SenseFormat::Descriptor);
            let d = desc.as_bytes();
            assert_eq!(
                (d[1], d[2], d[3]),
                (key, asc, ascq),
                "{reason:?} descriptor"
            );
        }
    }

    #[test]
    fn fixed_invalid_field_in_cdb_pointer() {
        let s = Sense::from(SenseReason::InvalidFieldInCdb(FieldPointer::bit(1, 5)));
        let b = s.encode(SenseFormat::Fixed);
        assert_eq!(
            b.as_bytes(),
            &[
                0x70, 0, 0x05, 0, 0, 0, 0, 0x0A, 0, 0, 0, 0, 0x24, 0x00, 0, 0xCD, 0x00, 0x01
            ]
        );
    }

    #[test]
    fn fixed_parameter_list_pointer_has_cd_clear_and_no_bit() {
        let s = Sense::from(SenseReason::InvalidFieldInParameterList(
            FieldPointer::byte(0x0102),
        ));
        let b = s.encode(SenseFormat::Fixed);
        assert_eq!(&b.as_bytes()[15..18], &[0x80, 0x01, 0x02]);
    }

    #[test]
    fn fixed_information_sets_valid() {
        let s = Sense::with_information(SenseReason::MiscompareDuringVerify, 0x1234);
        let b = s.encode(SenseFormat::Fixed);
        let b = b.as_bytes();
        assert_eq!(b[0], 0xF0);
        assert_eq!(&b[3..7], &[0, 0, 0x12, 0x34]);
        // Too large for four bytes: VALID stays clear.
        let s = Sense::with_information(SenseReason::MiscompareDuringVerify, 1 << 40);
        assert_eq!(s.encode(SenseFormat::Fixed).as_bytes()[0], 0x70);
    }

    #[test]
    fn descriptor_with_information_and_pointer() {
        let s = Sense {
            reason: SenseReason::InvalidFieldInCdb(FieldPointer::byte(2)),
            information: Some(7),
        };
        let b = s.encode(SenseFormat::Descriptor);
        assert_eq!(
            b.as_bytes(),
            &[
                0x72, 0x05, 0x24, 0x00, 0, 0, 0, 20, // header, additional length 20
                0x00, 0x0A, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 7, // information
                0x02, 0x06, 0, 0, 0xC0, 0x00, 0x02, 0, // sense key specific
            ]
        );
    }

    #[test]
    fn descriptor_plain_is_eight_bytes() {
        let b = Sense::from(SenseReason::PowerOnReset).encode(SenseFormat::Descriptor);
        assert_eq!(b.as_bytes(), &[0x72, 0x06, 0x29, 0x00, 0, 0, 0, 0]);
    }
}
