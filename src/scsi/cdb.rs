//! CDB decoding: a CDB slice becomes a typed [`Command`] after the opcode table has checked
//! its length and allowed bits. Decoding never allocates.

use super::opcodes::{self, op};
use super::sense::{FieldPointer, SenseReason};

/// A logical block address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lba(pub u64);

/// A number of logical blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Blocks(pub u32);

/// MODE SENSE page control (PC field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageControl {
    /// Current values (00b).
    Current,
    /// Changeable values mask (01b).
    Changeable,
    /// Default values (10b).
    Default,
    /// Saved values (11b).
    Saved,
}

/// What a media command does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaOp {
    /// READ (6/10/12/16).
    Read,
    /// WRITE (6/10/12/16).
    Write,
    /// VERIFY (10/12/16); `bytchk`: compare against data-out, else check the medium only.
    Verify {
        /// BYTCHK = 1.
        bytchk: bool,
    },
    /// WRITE AND VERIFY (10/12/16).
    WriteVerify {
        /// BYTCHK = 1.
        bytchk: bool,
    },
    /// ORWRITE (16): OR the data-out into the blocks.
    OrWrite,
    /// WRITE ATOMIC (16).
    WriteAtomic,
    /// COMPARE AND WRITE: the data-out holds the verify blocks, then the write blocks.
    CompareAndWrite,
}

impl MediaOp {
    /// Whether the command writes the medium.
    pub fn writes(self) -> bool {
        matches!(
            self,
            Self::Write
                | Self::WriteVerify { .. }
                | Self::OrWrite
                | Self::WriteAtomic
                | Self::CompareAndWrite
        )
    }
}

/// A decoded media command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MediaCommand {
    /// The operation.
    pub op: MediaOp,
    /// First logical block.
    pub lba: Lba,
    /// Number of blocks (READ/WRITE(6) length 0 already turned into 256).
    pub blocks: Blocks,
    /// FUA bit.
    pub fua: bool,
    /// DPO bit.
    pub dpo: bool,
    /// CDB byte offset of the TRANSFER LENGTH field (for field pointers).
    pub length_field: u16,
}

/// A decoded, field-checked command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// TEST UNIT READY.
    TestUnitReady,
    /// REQUEST SENSE.
    RequestSense {
        /// DESC: descriptor format sense.
        desc: bool,
        /// Allocation length.
        alloc_len: u8,
    },
    /// INQUIRY.
    Inquiry {
        /// EVPD: return a VPD page.
        evpd: bool,
        /// VPD page code.
        page_code: u8,
        /// Allocation length.
        alloc_len: u16,
    },
    /// MODE SELECT (6) or (10).
    ModeSelect {
        /// MODE SELECT (10).
        ten: bool,
        /// PF: pages are in SPC format.
        pf: bool,
        /// Parameter list length.
        param_len: u16,
    },
    /// MODE SENSE (6) or (10).
    ModeSense {
        /// MODE SENSE (10).
        ten: bool,
        /// DBD: no block descriptors.
        dbd: bool,
        /// LLBAA: long LBA block descriptors allowed (MODE SENSE (10) only).
        llbaa: bool,
        /// Page control.
        pc: PageControl,
        /// Page code.
        page_code: u8,
        /// Subpage code.
        subpage: u8,
        /// Allocation length.
        alloc_len: u16,
    },
    /// START STOP UNIT.
    StartStopUnit {
        /// IMMED.
        immed: bool,
        /// POWER CONDITION.
        power_condition: u8,
        /// LOEJ.
        loej: bool,
        /// START.
        start: bool,
    },
    /// PREVENT ALLOW MEDIUM REMOVAL.
    PreventAllow {
        /// PREVENT field.
        prevent: u8,
    },
    /// READ CAPACITY (10).
    ReadCapacity10,
    /// READ CAPACITY (16).
    ReadCapacity16 {
        /// Allocation length.
        alloc_len: u32,
    },
    /// REPORT LUNS.
    ReportLuns {
        /// SELECT REPORT (0, 1 or 2).
        select: u8,
        /// Allocation length.
        alloc_len: u32,
    },
    /// REPORT SUPPORTED OPERATION CODES.
    ReportSupportedOpcodes {
        /// RCTD: include command timeouts descriptors.
        rctd: bool,
        /// REPORTING OPTIONS (0..=3).
        options: u8,
        /// REQUESTED OPERATION CODE.
        opcode: u8,
        /// REQUESTED SERVICE ACTION.
        service_action: u16,
        /// Allocation length.
        alloc_len: u32,
    },
    /// READ, WRITE, VERIFY, WRITE AND VERIFY.
    Media(MediaCommand),
    /// SYNCHRONIZE CACHE (10) or (16).
    SyncCache {
        /// First block.
        lba: Lba,
        /// Number of blocks, 0: to the end of the medium.
        blocks: Blocks,
        /// IMMED.
        immed: bool,
    },
    /// PRE-FETCH (10) or (16).
    PreFetch {
        /// First block.
        lba: Lba,
        /// Number of blocks, 0: to the end of the medium.
        blocks: Blocks,
        /// IMMED.
        immed: bool,
    },
    /// WRITE SAME (10) or (16).
    WriteSame {
        /// First block.
        lba: Lba,
        /// Number of blocks.
        blocks: Blocks,
        /// UNMAP: the blocks may be deallocated.
        unmap: bool,
        /// ANCHOR (refused: anchored state is not supported).
        anchor: bool,
        /// NDOB: no data-out buffer, the blocks become zeros (WRITE SAME (16) only).
        ndob: bool,
        /// CDB byte offset of the NUMBER OF LOGICAL BLOCKS field.
        length_field: u16,
    },
    /// UNMAP.
    Unmap {
        /// ANCHOR (refused).
        anchor: bool,
        /// Parameter list length.
        param_len: u16,
    },
    /// GET LBA STATUS.
    GetLbaStatus {
        /// Starting LBA.
        lba: Lba,
        /// Allocation length.
        alloc_len: u32,
    },
    /// READ DEFECT DATA (10) or (12).
    ReadDefectData {
        /// READ DEFECT DATA (12).
        twelve: bool,
        /// REQ_PLIST.
        plist: bool,
        /// REQ_GLIST.
        glist: bool,
        /// DEFECT LIST FORMAT.
        format: u8,
        /// Allocation length.
        alloc_len: u32,
    },
    /// EXTENDED COPY (LID1).
    ExtendedCopy {
        /// Parameter list length.
        param_len: u32,
    },
    /// RECEIVE COPY RESULTS.
    ReceiveCopyResults {
        /// Service action (00h COPY STATUS, 03h OPERATING PARAMETERS).
        service_action: u8,
        /// LIST IDENTIFIER.
        list_id: u8,
        /// Allocation length.
        alloc_len: u32,
    },
    /// PERSISTENT RESERVE IN.
    PersistentReserveIn {
        /// Service action (0..=3).
        service_action: u8,
        /// Allocation length.
        alloc_len: u16,
    },
    /// PERSISTENT RESERVE OUT.
    PersistentReserveOut {
        /// Service action (0..=7).
        service_action: u8,
        /// SCOPE.
        scope: u8,
        /// TYPE.
        rtype: u8,
        /// Parameter list length.
        param_len: u32,
    },
    /// RESERVE (6) or (10).
    Reserve,
    /// RELEASE (6) or (10).
    Release,
    /// REPORT TARGET PORT GROUPS.
    ReportTargetPortGroups {
        /// PARAMETER DATA FORMAT 001b: extended header.
        extended: bool,
        /// Allocation length.
        alloc_len: u32,
    },
}

/// Reads `N` bytes at `at`, zeros if out of range (callers have checked the length).
fn bytes<const N: usize>(cdb: &[u8], at: usize) -> [u8; N] {
    cdb.get(at..at.saturating_add(N))
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .unwrap_or([0; N])
}

fn b(cdb: &[u8], at: usize) -> u8 {
    cdb.get(at).copied().unwrap_or(0)
}

fn be16(cdb: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(bytes(cdb, at))
}

fn be32(cdb: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes(cdb, at))
}

fn be64(cdb: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(bytes(cdb, at))
}

fn invalid(byte: u16) -> SenseReason {
    SenseReason::InvalidFieldInCdb(FieldPointer::byte(byte))
}

impl Command {
    /// Looks the opcode up, checks the CDB against its allowed bits and decodes it.
    pub fn parse(cdb: &[u8]) -> Result<Self, SenseReason> {
        let info = opcodes::validate(cdb)?;
        decode(info.opcode, cdb)
    }
}

/// Decodes a CDB whose length and allowed bits have been checked.
fn decode(opcode: u8, cdb: &[u8]) -> Result<Command, SenseReason> {
    let flag = |at: usize, mask: u8| b(cdb, at) & mask != 0;
    Ok(match opcode {
        op::TEST_UNIT_READY => Command::TestUnitReady,
        op::REQUEST_SENSE => Command::RequestSense {
            desc: flag(1, 0x01),
            alloc_len: b(cdb, 4),
        },
        op::INQUIRY => {
            let evpd = flag(1, 0x01);
            let page_code = b(cdb, 2);
            if !evpd && page_code != 0 {
                return Err(invalid(2));
            }
            Command::Inquiry {
                evpd,
                page_code,
                alloc_len: be16(cdb, 3),
            }
        }
        op::MODE_SELECT_6 | op::MODE_SELECT_10 => {
            let ten = opcode == op::MODE_SELECT_10;
            Command::ModeSelect {
                ten,
                pf: flag(1, 0x10),
                param_len: if ten {
                    be16(cdb, 7)
                } else {
                    u16::from(b(cdb, 4))
                },
            }
        }
        op::MODE_SENSE_6 | op::MODE_SENSE_10 => {
            let ten = opcode == op::MODE_SENSE_10;
            let pc = match b(cdb, 2) >> 6 {
                0 => PageControl::Current,
                1 => PageControl::Changeable,
                2 => PageControl::Default,
                _ => PageControl::Saved,
            };
            Command::ModeSense {
                ten,
                dbd: flag(1, 0x08),
                llbaa: ten && flag(1, 0x10),
                pc,
                page_code: b(cdb, 2) & 0x3F,
                subpage: b(cdb, 3),
                alloc_len: if ten {
                    be16(cdb, 7)
                } else {
                    u16::from(b(cdb, 4))
                },
            }
        }
        op::START_STOP_UNIT => Command::StartStopUnit {
            immed: flag(1, 0x01),
            power_condition: b(cdb, 4) >> 4,
            loej: flag(4, 0x02),
            start: flag(4, 0x01),
        },
        op::PREVENT_ALLOW => Command::PreventAllow {
            prevent: b(cdb, 4) & 0x03,
        },
        op::READ_CAPACITY_10 => {
            // SBC-3: with PMI clear the LOGICAL BLOCK ADDRESS field must be zero.
            if !flag(8, 0x01) && be32(cdb, 2) != 0 {
                return Err(invalid(2));
            }
            Command::ReadCapacity10
        }
        op::SERVICE_ACTION_IN_16 if b(cdb, 1) & 0x1F == op::SA_GET_LBA_STATUS => {
            Command::GetLbaStatus {
                lba: Lba(be64(cdb, 2)),
                alloc_len: be32(cdb, 10),
            }
        }
        op::SERVICE_ACTION_IN_16 => {
            // SBC-3, as for READ CAPACITY (10): with PMI clear the LBA field must be zero.
            if !flag(14, 0x01) && be64(cdb, 2) != 0 {
                return Err(invalid(2));
            }
            Command::ReadCapacity16 {
                alloc_len: be32(cdb, 10),
            }
        }
        op::MAINTENANCE_IN if b(cdb, 1) & 0x1F == op::SA_REPORT_TARGET_PORT_GROUPS => {
            let format = b(cdb, 1) >> 5;
            if format > 1 {
                return Err(SenseReason::InvalidFieldInCdb(FieldPointer::bit(1, 7)));
            }
            Command::ReportTargetPortGroups {
                extended: format == 1,
                alloc_len: be32(cdb, 6),
            }
        }
        op::REPORT_LUNS => {
            let select = b(cdb, 2);
            if select > 2 {
                return Err(invalid(2));
            }
            Command::ReportLuns {
                select,
                alloc_len: be32(cdb, 6),
            }
        }
        op::MAINTENANCE_IN => {
            let options = b(cdb, 2) & 0x07;
            if options > 3 {
                return Err(SenseReason::InvalidFieldInCdb(FieldPointer::bit(2, 2)));
            }
            Command::ReportSupportedOpcodes {
                rctd: flag(2, 0x80),
                options,
                opcode: b(cdb, 3),
                service_action: be16(cdb, 4),
                alloc_len: be32(cdb, 6),
            }
        }
        op::SYNC_CACHE_10 => Command::SyncCache {
            lba: Lba(u64::from(be32(cdb, 2))),
            blocks: Blocks(u32::from(be16(cdb, 7))),
            immed: flag(1, 0x02),
        },
        op::SYNC_CACHE_16 => Command::SyncCache {
            lba: Lba(be64(cdb, 2)),
            blocks: Blocks(be32(cdb, 10)),
            immed: flag(1, 0x02),
        },
        op::PRE_FETCH_10 => Command::PreFetch {
            lba: Lba(u64::from(be32(cdb, 2))),
            blocks: Blocks(u32::from(be16(cdb, 7))),
            immed: flag(1, 0x02),
        },
        op::PRE_FETCH_16 => Command::PreFetch {
            lba: Lba(be64(cdb, 2)),
            blocks: Blocks(be32(cdb, 10)),
            immed: flag(1, 0x02),
        },
        op::WRITE_SAME_10 => Command::WriteSame {
            lba: Lba(u64::from(be32(cdb, 2))),
            blocks: Blocks(u32::from(be16(cdb, 7))),
            unmap: flag(1, 0x08),
            anchor: flag(1, 0x10),
            ndob: false,
            length_field: 7,
        },
        op::WRITE_SAME_16 => Command::WriteSame {
            lba: Lba(be64(cdb, 2)),
            blocks: Blocks(be32(cdb, 10)),
            unmap: flag(1, 0x08),
            anchor: flag(1, 0x10),
            ndob: flag(1, 0x01),
            length_field: 10,
        },
        op::UNMAP => Command::Unmap {
            anchor: flag(1, 0x01),
            param_len: be16(cdb, 7),
        },
        op::READ_DEFECT_DATA_10 => Command::ReadDefectData {
            twelve: false,
            plist: flag(2, 0x10),
            glist: flag(2, 0x08),
            format: b(cdb, 2) & 0x07,
            alloc_len: u32::from(be16(cdb, 7)),
        },
        op::READ_DEFECT_DATA_12 => Command::ReadDefectData {
            twelve: true,
            plist: flag(1, 0x10),
            glist: flag(1, 0x08),
            format: b(cdb, 1) & 0x07,
            alloc_len: be32(cdb, 6),
        },
        op::EXTENDED_COPY => Command::ExtendedCopy {
            param_len: be32(cdb, 10),
        },
        op::RECEIVE_COPY_RESULTS => Command::ReceiveCopyResults {
            service_action: b(cdb, 1) & 0x1F,
            list_id: b(cdb, 2),
            alloc_len: be32(cdb, 10),
        },
        op::PERSISTENT_RESERVE_IN => Command::PersistentReserveIn {
            service_action: b(cdb, 1) & 0x1F,
            alloc_len: be16(cdb, 7),
        },
        op::PERSISTENT_RESERVE_OUT => Command::PersistentReserveOut {
            service_action: b(cdb, 1) & 0x1F,
            scope: b(cdb, 2) >> 4,
            rtype: b(cdb, 2) & 0x0F,
            param_len: be32(cdb, 5),
        },
        op::RESERVE_6 | op::RESERVE_10 => Command::Reserve,
        op::RELEASE_6 | op::RELEASE_10 => Command::Release,
        _ => Command::Media(decode_media(opcode, cdb)?),
    })
}

/// Decodes READ/WRITE/VERIFY/WRITE AND VERIFY in all their sizes.
fn decode_media(opcode: u8, cdb: &[u8]) -> Result<MediaCommand, SenseReason> {
    let b1 = b(cdb, 1);
    let bytchk = b1 & 0x02 != 0;
    let media_op = match opcode {
        op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16 => MediaOp::Read,
        op::WRITE_6 | op::WRITE_10 | op::WRITE_12 | op::WRITE_16 => MediaOp::Write,
        op::VERIFY_10 | op::VERIFY_12 | op::VERIFY_16 => MediaOp::Verify { bytchk },
        op::WRITE_VERIFY_10 | op::WRITE_VERIFY_12 | op::WRITE_VERIFY_16 => {
            MediaOp::WriteVerify { bytchk }
        }
        op::ORWRITE_16 => MediaOp::OrWrite,
        op::WRITE_ATOMIC_16 => MediaOp::WriteAtomic,
        op::COMPARE_AND_WRITE => MediaOp::CompareAndWrite,
        _ => return Err(SenseReason::InvalidOpcode),
    };
    let (lba, blocks, length_field) = match opcode {
        op::READ_6 | op::WRITE_6 => {
            let lba = u32::from_be_bytes([0, b1 & 0x1F, b(cdb, 2), b(cdb, 3)]);
            let len = match b(cdb, 4) {
                0 => 256,
                n => u32::from(n),
            };
            (u64::from(lba), len, 4)
        }
        op::READ_10 | op::WRITE_10 | op::VERIFY_10 | op::WRITE_VERIFY_10 => {
            (u64::from(be32(cdb, 2)), u32::from(be16(cdb, 7)), 7)
        }
        op::READ_12 | op::WRITE_12 | op::VERIFY_12 | op::WRITE_VERIFY_12 => {
            (u64::from(be32(cdb, 2)), be32(cdb, 6), 6)
        }
        op::WRITE_ATOMIC_16 => (be64(cdb, 2), u32::from(be16(cdb, 12)), 12),
        op::COMPARE_AND_WRITE => (be64(cdb, 2), u32::from(b(cdb, 13)), 13),
        _ => (be64(cdb, 2), be32(cdb, 10), 10),
    };
    let six = matches!(opcode, op::READ_6 | op::WRITE_6);
    Ok(MediaCommand {
        op: media_op,
        lba: Lba(lba),
        blocks: Blocks(blocks),
        fua: !six && b1 & 0x08 != 0,
        dpo: !six && b1 & 0x10 != 0,
        length_field,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read16_fields() {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x88;
        cdb[1] = 0x18;
        cdb[2..10].copy_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
        cdb[10..14].copy_from_slice(&0x20u32.to_be_bytes());
        let Ok(Command::Media(m)) = Command::parse(&cdb) else {
            panic!("not a media command");
        };
        assert_eq!(m.op, MediaOp::Read);
        assert_eq!(m.lba, Lba(0x0102_0304_0506_0708));
        assert_eq!(m.blocks, Blocks(0x20));
        assert!(m.fua && m.dpo);
        assert_eq!(m.length_field, 10);
    }

    #[test]
    fn read6_zero_means_256_and_21_bit_lba() {
        let cdb = [0x08, 0x1F, 0xFF, 0xFE, 0, 0];
        let Ok(Command::Media(m)) = Command::parse(&cdb) else {
            panic!("not a media command");
        };
        assert_eq!((m.lba, m.blocks), (Lba(0x1F_FFFE), Blocks(256)));
        assert!(!m.fua);
    }

    #[test]
    fn write10_and_verify_bytchk() {
        let cdb = [0x2A, 0x08, 0, 0, 0, 9, 0, 0, 2, 0];
        let Ok(Command::Media(m)) = Command::parse(&cdb) else {
            panic!("not a media command");
        };
        assert_eq!(
            (m.op, m.lba, m.blocks, m.fua),
            (MediaOp::Write, Lba(9), Blocks(2), true)
        );
        let cdb = [0xAF, 0x02, 0, 0, 0, 1, 0, 0, 0, 3, 0, 0];
        let Ok(Command::Media(m)) = Command::parse(&cdb) else {
            panic!("not a media command");
        };
        assert_eq!(
            (m.op, m.blocks),
            (MediaOp::Verify { bytchk: true }, Blocks(3))
        );
        // BYTCHK = 10b is not supported: bit 2 of byte 1.
        assert_eq!(
            Command::parse(&[0x2F, 0x04, 0, 0, 0, 0, 0, 0, 1, 0]),
            Err(SenseReason::InvalidFieldInCdb(FieldPointer::bit(1, 2)))
        );
    }

    #[test]
    fn inquiry_page_code_without_evpd_is_invalid() {
        assert_eq!(
            Command::parse(&[0x12, 0, 0x80, 0, 0xFF, 0]),
            Err(SenseReason::InvalidFieldInCdb(FieldPointer::byte(2)))
        );
        assert_eq!(
            Command::parse(&[0x12, 1, 0x80, 0x01, 0x00, 0]),
            Ok(Command::Inquiry {
                evpd: true,
                page_code: 0x80,
                alloc_len: 256
            })
        );
    }

    #[test]
    fn mode_sense10_fields() {
        let cdb = [0x5A, 0x18, 0xC8, 0x00, 0, 0, 0, 0x01, 0x00, 0];
        assert_eq!(
            Command::parse(&cdb),
            Ok(Command::ModeSense {
                ten: true,
                dbd: true,
                llbaa: true,
                pc: PageControl::Saved,
                page_code: 0x08,
                subpage: 0,
                alloc_len: 256
            })
        );
    }

    #[test]
    fn read_capacity10_lba_without_pmi_invalid() {
        assert_eq!(
            Command::parse(&[0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0]),
            Err(SenseReason::InvalidFieldInCdb(FieldPointer::byte(2)))
        );
        assert_eq!(
            Command::parse(&[0x25, 0, 0, 0, 0, 1, 0, 0, 1, 0]),
            Ok(Command::ReadCapacity10)
        );
    }

    #[test]
    fn read_capacity16_lba_without_pmi_invalid() {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x9E;
        cdb[1] = 0x10;
        cdb[9] = 1;
        cdb[13] = 32;
        assert_eq!(
            Command::parse(&cdb),
            Err(SenseReason::InvalidFieldInCdb(FieldPointer::byte(2)))
        );
        cdb[14] = 0x01;
        assert_eq!(
            Command::parse(&cdb),
            Ok(Command::ReadCapacity16 { alloc_len: 32 })
        );
        cdb[9] = 0;
        cdb[14] = 0;
        assert_eq!(
            Command::parse(&cdb),
            Ok(Command::ReadCapacity16 { alloc_len: 32 })
        );
    }

    #[test]
    fn rsoc_and_report_luns_fields() {
        let cdb = [0xA3, 0x0C, 0x82, 0x9E, 0x00, 0x10, 0, 0, 0x10, 0, 0, 0];
        assert_eq!(
            Command::parse(&cdb),
            Ok(Command::ReportSupportedOpcodes {
                rctd: true,
                options: 2,
                opcode: 0x9E,
                service_action: 0x10,
                alloc_len: 0x1000
            })
        );
        assert_eq!(
            Command::parse(&[0xA3, 0x0C, 0x04, 0, 0, 0, 0, 0, 1, 0, 0, 0]),
            Err(SenseReason::InvalidFieldInCdb(FieldPointer::bit(2, 2)))
        );
        assert_eq!(
            Command::parse(&[0xA0, 0, 3, 0, 0, 0, 0, 0, 0, 16, 0, 0]),
            Err(SenseReason::InvalidFieldInCdb(FieldPointer::byte(2)))
        );
    }

    #[test]
    fn every_table_row_decodes() {
        for row in opcodes::OPCODES {
            let mut cdb = [0u8; 16];
            cdb[0] = row.opcode;
            if let Some(sa) = row.service_action {
                cdb[1] = sa;
            }
            // A CDB with only the opcode (and service action) set is valid for every row.
            let parsed = Command::parse(&cdb[..usize::from(row.cdb_len)]);
            assert!(parsed.is_ok(), "{}: {parsed:?}", row.name);
        }
    }
}
