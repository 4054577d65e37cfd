//! READ CAPACITY (10/16), REPORT LUNS and REPORT SUPPORTED OPERATION CODES data.

use super::datain::DataIn;
use super::lun::{LunInfo, TargetPort, encode_lun};
use super::opcodes::{self, OPCODES, OpcodeInfo};
use super::sense::{FieldPointer, SenseReason};

/// Nominal command timeout reported with RCTD (seconds; 0: not specified).
pub const NOMINAL_TIMEOUT_S: u32 = 0;
/// Recommended command timeout reported with RCTD (seconds).
pub const RECOMMENDED_TIMEOUT_S: u32 = 30;

/// READ CAPACITY (10) parameter data (SBC-3 5.16.2): last LBA, FFFFFFFFh when it does not fit.
pub fn read_capacity10(lun: &LunInfo, w: &mut DataIn<'_>) {
    let last = lun.num_blocks.saturating_sub(1);
    w.u32(u32::try_from(last).unwrap_or(u32::MAX));
    w.u32(lun.block_size);
}

/// READ CAPACITY (16) parameter data (SBC-3 5.16.3), 32 bytes.
pub fn read_capacity16(lun: &LunInfo, w: &mut DataIn<'_>) {
    w.u64(lun.num_blocks.saturating_sub(1));
    w.u32(lun.block_size);
    w.u8(0); // P_TYPE, PROT_EN
    w.u8(lun.physical_exp & 0x0f); // P_I_EXPONENT, LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT
    let [aligned_hi, aligned_lo] = (lun.lowest_aligned & 0x3fff).to_be_bytes();
    let mut b14 = aligned_hi;
    if lun.provisioning.lbpme {
        b14 |= 0x80;
    }
    if lun.provisioning.lbprz {
        b14 |= 0x40;
    }
    w.u8(b14); // LBPME, LBPRZ, LOWEST ALIGNED LBA (high bits)
    w.u8(aligned_lo);
    w.zeros(16);
}

/// REPORT LUNS parameter data (SPC-4 6.33): SELECT REPORT 0 and 2 list every LUN, 1 lists the
/// (absent) well-known logical units.
pub fn report_luns<'a>(select: u8, ids: impl Iterator<Item = u16>, w: &mut DataIn<'a>) {
    w.u32(0);
    w.u32(0);
    if select != 1 {
        for id in ids {
            w.put(&encode_lun(id));
        }
    }
    let len = w.len_since_u32(8);
    w.patch_u32(0, len);
}

/// Writes one command descriptor's timeouts descriptor (SPC-4 6.35.4).
fn timeouts_descriptor(w: &mut DataIn<'_>) {
    w.u16(0x000A);
    w.u8(0);
    w.u8(0);
    w.u32(NOMINAL_TIMEOUT_S);
    w.u32(RECOMMENDED_TIMEOUT_S);
}

/// One descriptor of the all-commands format (SPC-4 6.35.3).
fn command_descriptor(row: &OpcodeInfo, rctd: bool, w: &mut DataIn<'_>) {
    w.u8(row.opcode);
    w.u8(0);
    w.u16(row.service_action.map_or(0, u16::from));
    w.u8(0);
    let mut flags = 0u8;
    if rctd {
        flags |= 0x02;
    }
    if row.service_action.is_some() {
        flags |= 0x01;
    }
    w.u8(flags);
    w.u16(u16::from(row.cdb_len));
    if rctd {
        timeouts_descriptor(w);
    }
}

/// The one-command format (SPC-4 6.35.4): SUPPORT 011b with usage data, or 001b without.
fn one_command(row: Option<&OpcodeInfo>, rctd: bool, w: &mut DataIn<'_>) {
    w.u8(0);
    let support = if row.is_some() { 0x03 } else { 0x01 };
    w.u8(if rctd && row.is_some() { 0x80 } else { 0 } | support);
    match row {
        Some(row) => {
            w.u16(u16::from(row.cdb_len));
            w.put(row.usage_data());
            if rctd {
                timeouts_descriptor(w);
            }
        }
        None => w.u16(0),
    }
}

/// Whether `lun` carries out the command of `row`: every row of the table, but UNMAP only
/// where the LUN supports it (LBPU, else it is INVALID COMMAND OPERATION CODE there).
fn supported_on(lun: &LunInfo, row: &OpcodeInfo) -> bool {
    row.opcode != opcodes::op::UNMAP || lun.provisioning.lbpu
}

/// REPORT SUPPORTED OPERATION CODES (SPC-4 6.35) from the opcode table, for `lun`.
pub fn report_supported_opcodes(
    lun: &LunInfo,
    rctd: bool,
    options: u8,
    opcode: u8,
    service_action: u16,
    w: &mut DataIn<'_>,
) -> Result<(), SenseReason> {
    let has_sa = opcodes::has_service_actions(opcode);
    let sa = u8::try_from(service_action).ok();
    let options_field = SenseReason::InvalidFieldInCdb(FieldPointer::bit(2, 2));
    let lookup = |sa| opcodes::lookup(opcode, sa).filter(|row| supported_on(lun, row));
    match options {
        0 => {
            w.u32(0);
            for row in OPCODES.iter().filter(|row| supported_on(lun, row)) {
                command_descriptor(row, rctd, w);
            }
            let len = w.len_since_u32(4);
            w.patch_u32(0, len);
        }
        1 => {
            if has_sa {
                return Err(options_field);
            }
            one_command(lookup(None), rctd, w);
        }
        2 => {
            if !has_sa {
                return Err(options_field);
            }
            one_command(sa.and_then(|sa| lookup(Some(sa))), rctd, w);
        }
        _ => {
            let row = if has_sa {
                sa.and_then(|sa| lookup(Some(sa)))
            } else if service_action == 0 {
                lookup(None)
            } else {
                None
            };
            one_command(row, rctd, w);
        }
    }
    Ok(())
}

/// The one target port group every port belongs to.
pub const TARGET_PORT_GROUP: u16 = 1;

/// REPORT TARGET PORT GROUPS parameter data (SPC-4 6.37): one group, active/optimized,
/// holding every target port of the target; `extended` selects the extended header.
pub fn report_target_port_groups(port: &TargetPort, extended: bool, w: &mut DataIn<'_>) {
    w.u32(0); // RETURN DATA LENGTH, back-filled
    if extended {
        w.u8(0x10); // FORMAT TYPE 001b
        w.u8(0); // IMPLICIT TRANSITION TIME
        w.u16(0);
    }
    w.u8(0x80); // PREF, ASYMMETRIC ACCESS STATE 0h: active/optimized
    w.u8(0x01); // AO_SUP
    w.u16(TARGET_PORT_GROUP);
    w.u8(0);
    w.u8(0); // STATUS CODE
    w.u8(0);
    let ports = port.target_ports.max(port.relative_port_id).max(1);
    w.u8(ports.min(255) as u8); // TARGET PORT COUNT
    for id in 1..=ports.min(255) {
        w.u16(0);
        w.u16(id);
    }
    let len = w.len_since_u32(4);
    w.patch_u32(0, len);
}

/// READ DEFECT DATA (10)/(12) (SBC-3 5.12, 5.13): the requested lists, both empty, in the
/// requested format.
pub fn read_defect_data(twelve: bool, plist: bool, glist: bool, format: u8, w: &mut DataIn<'_>) {
    let flags = (u8::from(plist) << 4) | (u8::from(glist) << 3) | (format & 0x07);
    w.u8(0);
    w.u8(flags);
    if twelve {
        w.u16(0); // GENERATION CODE
        w.u32(0); // DEFECT LIST LENGTH
    } else {
        w.u16(0);
    }
}
