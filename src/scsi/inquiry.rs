//! INQUIRY data: the standard page and the vital product data pages (SPC-4 6.6, 7.8; SBC-3 6.6).

use super::datain::DataIn;
use super::lun::{DEFAULT_PRODUCT, DEFAULT_REVISION, LunInfo, TargetPort, VENDOR};
use super::report::TARGET_PORT_GROUP;
use super::sbc;
use super::sense::{FieldPointer, SenseReason};

/// VPD page codes this device server returns, ascending (the Supported VPD Pages list).
pub const SUPPORTED_VPD_PAGES: [u8; 8] = [0x00, 0x80, 0x83, 0x86, 0x8F, 0xB0, 0xB1, 0xB2];

/// Length of the standard INQUIRY data returned (additional length 91).
pub const STANDARD_INQUIRY_LEN: usize = 96;

/// Version descriptors: SAM-5, SPC-4, SBC-3, iSCSI (no version claimed).
const VERSION_DESCRIPTORS: [u16; 4] = [0x00A0, 0x0460, 0x04C0, 0x0960];

/// PERIPHERAL QUALIFIER 011b, PERIPHERAL DEVICE TYPE 1Fh: no logical unit here.
pub const PQ_NO_LUN: u8 = 0x7F;

/// Standard INQUIRY data; `lun` `None` answers for an unsupported LUN (PQ 011b, type 1Fh).
pub fn standard(lun: Option<&LunInfo>, w: &mut DataIn<'_>) {
    w.u8(lun.map_or(PQ_NO_LUN, |_| 0x00)); // direct-access block device
    w.u8(0); // RMB = 0
    w.u8(0x06); // VERSION: SPC-4
    w.u8(0x12); // HISUP, RESPONSE DATA FORMAT 2
    w.u8((STANDARD_INQUIRY_LEN - 5) as u8);
    w.u8(0x10 | 0x08); // TPGS 01b: implicit ALUA; 3PC: EXTENDED COPY
    w.u8(0); // ENCSERV, MULTIP
    w.u8(0x02); // CMDQUE
    w.ascii_field(VENDOR, 8);
    w.ascii_field(lun.map_or(DEFAULT_PRODUCT, |l| l.product.as_str()), 16);
    w.ascii_field(lun.map_or(DEFAULT_REVISION, |l| l.revision.as_str()), 4);
    w.zeros(20); // vendor specific
    w.zeros(2); // clocking, reserved
    for d in VERSION_DESCRIPTORS {
        w.u16(d);
    }
    w.zeros(STANDARD_INQUIRY_LEN - 58 - 2 * VERSION_DESCRIPTORS.len());
}

/// Writes a VPD page, or INVALID FIELD IN CDB (page code, byte 2) for an unsupported page.
pub fn vpd(
    port: &TargetPort,
    lun: &LunInfo,
    page: u8,
    w: &mut DataIn<'_>,
) -> Result<(), SenseReason> {
    w.u8(0x00); // peripheral qualifier/device type
    w.u8(page);
    w.u16(0); // page length, back-filled
    match page {
        0x00 => w.put(&SUPPORTED_VPD_PAGES),
        0x80 => w.ascii_field(&lun.serial, lun.serial.len().min(MAX_SERIAL_LEN)),
        0x83 => device_identification(port, lun, w),
        0x86 => extended_inquiry(lun, w),
        0x8F => super::xcopy::third_party_copy_vpd(w),
        0xB0 => block_limits(lun, w),
        0xB1 => block_device_characteristics(w),
        0xB2 => logical_block_provisioning(lun, w),
        _ => return Err(SenseReason::InvalidFieldInCdb(FieldPointer::byte(2))),
    }
    let len = w.len_since_u16(4);
    w.patch_u16(2, len);
    Ok(())
}

/// Longest unit serial number returned.
pub const MAX_SERIAL_LEN: usize = 64;

/// Longest SCSI name string designator value (SPC-4 7.8.6.11: at most 256 bytes).
const MAX_NAME_LEN: usize = 252;

/// Writes one designation descriptor header.
fn designator_header(w: &mut DataIn<'_>, proto_codeset: u8, piv_assoc_type: u8, len: u8) {
    w.u8(proto_codeset);
    w.u8(piv_assoc_type);
    w.u8(0);
    w.u8(len);
}

/// Writes a SCSI name string designator: UTF-8, null terminated, padded to a multiple of 4.
fn scsi_name_designator(w: &mut DataIn<'_>, piv_assoc_type: u8, parts: &[&str]) {
    let raw: usize = parts.iter().map(|p| p.len()).sum();
    let raw = raw.min(MAX_NAME_LEN - 1);
    let padded = (raw + 1).next_multiple_of(4);
    // iSCSI protocol identifier 5h, code set UTF-8 (3h).
    designator_header(w, 0x53, piv_assoc_type, padded as u8);
    let mut left = raw;
    for p in parts {
        let n = p.len().min(left);
        for &b in p.as_bytes().iter().take(n) {
            w.u8(super::datain::printable(b));
        }
        left -= n;
    }
    w.zeros(padded - raw);
}

/// NAA IEEE Registered Extended (6h) identifier: NAA, IEEE company id, a 36-bit vendor
/// specific identifier and a 64-bit extension, all derived from the LUN identity.
pub fn naa_designator(lun: &LunInfo) -> [u8; 16] {
    let oui = u64::from(lun.ieee_company_id & 0x00FF_FFFF);
    let vsi = lun.naa >> 28; // 36 bits
    let high = (0x6u64 << 60) | (oui << 36) | vsi;
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&high.to_be_bytes());
    out[8..].copy_from_slice(&lun.naa.to_be_bytes());
    out
}

/// Device Identification VPD page (83h) designators.
fn device_identification(port: &TargetPort, lun: &LunInfo, w: &mut DataIn<'_>) {
    // NAA, binary, associated with the logical unit.
    designator_header(w, 0x01, 0x03, 16);
    w.put(&naa_designator(lun));
    // T10 vendor identification, ASCII: vendor (8) + serial.
    let serial_len = lun.serial.len().min(MAX_SERIAL_LEN);
    designator_header(w, 0x02, 0x01, (8 + serial_len) as u8);
    w.ascii_field(VENDOR, 8);
    w.ascii_field(&lun.serial, serial_len);
    // Relative target port identifier: iSCSI, PIV, target port association, type 4h.
    designator_header(w, 0x51, 0x94, 4);
    w.u16(0);
    w.u16(port.relative_port_id);
    // Target port group: binary, target port association, type 5h.
    designator_header(w, 0x01, 0x15, 4);
    w.u16(0);
    w.u16(TARGET_PORT_GROUP);
    // Target port name: "<iqn>,t,0x<tpgt>", PIV, target port association, type 8h.
    let tpgt = TpgtSuffix::new(port.portal_group_tag);
    scsi_name_designator(w, 0x98, &[&port.target_name, tpgt.as_str()]);
    // Target device name: "<iqn>", PIV, target device association, type 8h.
    scsi_name_designator(w, 0xA8, &[&port.target_name]);
}

/// The ",t,0xNNNN" suffix of an iSCSI target port name, formatted without allocation.
struct TpgtSuffix([u8; 9]);

impl TpgtSuffix {
    fn new(tag: u16) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut b = *b",t,0x0000";
        for (i, shift) in [12u16, 8, 4, 0].into_iter().enumerate() {
            b[5 + i] = HEX[usize::from((tag >> shift) & 0xF)];
        }
        Self(b)
    }

    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.0).unwrap_or("")
    }
}

/// Extended INQUIRY Data VPD page (86h), page length 3Ch.
fn extended_inquiry(lun: &LunInfo, w: &mut DataIn<'_>) {
    w.u8(0); // ACTIVATE MICROCODE, SPT, GRD_CHK, APP_CHK, REF_CHK
    w.u8(0x01); // SIMPSUP
    w.u8(if lun.write_cache_enabled { 0x01 } else { 0 }); // V_SUP
    w.u8(0x01); // LUICLR: unit attentions are per I_T nexus
    w.zeros(0x3C - 4);
}

/// Block Limits VPD page (B0h), page length 3Ch.
fn block_limits(lun: &LunInfo, w: &mut DataIn<'_>) {
    w.u8(0x01); // WSNZ: WRITE SAME with zero blocks is refused
    w.u8(sbc::MAX_COMPARE_AND_WRITE_BLOCKS);
    // OPTIMAL TRANSFER LENGTH GRANULARITY: a physical block, but not more than a command may
    // transfer (Linux drops an OPTIMAL TRANSFER LENGTH that is not a multiple of it).
    let physical = 1u32 << lun.physical_exp.min(15);
    w.u16(physical.min(lun.max_transfer_blocks.max(1)).min(1 << 15) as u16);
    w.u32(lun.max_transfer_blocks);
    w.u32(lun.optimal_transfer_blocks);
    w.u32(0); // MAXIMUM PREFETCH LENGTH: no limit
    let unmap = lun.provisioning.lbpu;
    w.u32(if unmap { sbc::MAX_UNMAP_LBA_COUNT } else { 0 });
    w.u32(if unmap { sbc::MAX_UNMAP_DESCRIPTORS } else { 0 });
    // OPTIMAL UNMAP GRANULARITY
    w.u32(if unmap {
        lun.optimal_unmap_blocks.max(1)
    } else {
        0
    });
    // UGAVALID, UNMAP GRANULARITY ALIGNMENT
    w.u32(if unmap && lun.optimal_unmap_blocks > 1 {
        0x8000_0000 | (lun.unmap_alignment & 0x7fff_ffff)
    } else {
        0
    });
    w.u64(u64::from(sbc::MAX_WRITE_SAME_BLOCKS));
    w.u32(sbc::max_atomic_blocks(lun)); // MAXIMUM ATOMIC TRANSFER LENGTH
    w.u32(sbc::ATOMIC_ALIGNMENT);
    w.u32(sbc::ATOMIC_GRANULARITY);
    w.u32(0); // MAXIMUM ATOMIC TRANSFER LENGTH WITH ATOMIC BOUNDARY
    w.u32(0); // MAXIMUM ATOMIC BOUNDARY SIZE
}

/// Block Device Characteristics VPD page (B1h): non-rotating medium.
fn block_device_characteristics(w: &mut DataIn<'_>) {
    w.u16(0x0001); // MEDIUM ROTATION RATE: non-rotating
    w.u8(0); // PRODUCT TYPE
    w.u8(0); // WABEREQ, WACEREQ, NOMINAL FORM FACTOR
    w.zeros(0x3C - 4);
}

/// Logical Block Provisioning VPD page (B2h), page length 4.
fn logical_block_provisioning(lun: &LunInfo, w: &mut DataIn<'_>) {
    let p = &lun.provisioning;
    w.u8(0); // THRESHOLD EXPONENT
    let mut flags = 0u8;
    if p.lbpu {
        flags |= 0x80;
    }
    if p.lbpws {
        flags |= 0x40;
    }
    if p.lbpws10 {
        flags |= 0x20;
    }
    if p.lbprz {
        flags |= 0x04;
    }
    w.u8(flags);
    w.u8(if p.lbpme { 0x02 } else { 0 }); // PROVISIONING TYPE: thin when enabled
    w.u8(0);
}
