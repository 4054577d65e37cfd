//! MODE SENSE and MODE SELECT (SPC-4 6.11-6.14, 7.5; SBC-3 6.4): caching (08h), control (0Ah)
//! and informational exceptions control (1Ch) pages. Nothing is changeable and nothing can be
//! saved: MODE SELECT accepts only a parameter list that changes nothing.

use super::cdb::PageControl;
use super::datain::DataIn;
use super::lun::LunInfo;
use super::sense::{FieldPointer, SenseReason};

/// Caching mode page code.
pub const PAGE_CACHING: u8 = 0x08;
/// Control mode page code.
pub const PAGE_CONTROL: u8 = 0x0A;
/// Informational exceptions control mode page code.
pub const PAGE_INFO_EXCEPTIONS: u8 = 0x1C;
/// "Return all pages" page code.
pub const PAGE_ALL: u8 = 0x3F;

/// Supported pages in the order MODE SENSE returns them for page code 3Fh.
pub const PAGES: [u8; 3] = [PAGE_CACHING, PAGE_CONTROL, PAGE_INFO_EXCEPTIONS];

/// Largest page this module encodes.
const MAX_PAGE_LEN: usize = 20;

/// One encoded mode page.
struct Page {
    bytes: [u8; MAX_PAGE_LEN],
    len: usize,
}

impl Page {
    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Encodes page `code` for `pc` (saved is rejected before this), or `None` if unsupported.
fn page(lun: &LunInfo, code: u8, pc: PageControl) -> Option<Page> {
    let mut bytes = [0u8; MAX_PAGE_LEN];
    let changeable = pc == PageControl::Changeable;
    let len = match code {
        PAGE_CACHING => {
            // WCE reports what the backing store honestly does; RCD = 0.
            if !changeable && lun.write_cache_enabled {
                bytes[2] = 0x04;
            }
            20
        }
        PAGE_CONTROL => {
            if !changeable {
                bytes[2] = 0x02; // GLTSD; D_SENSE = 0: fixed format sense
                bytes[3] = 0x10; // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering
                bytes[8] = 0xFF; // BUSY TIMEOUT PERIOD: unlimited
                bytes[9] = 0xFF;
            }
            12
        }
        PAGE_INFO_EXCEPTIONS => {
            if !changeable {
                bytes[2] = 0x08; // DEXCPT: no informational exceptions
            }
            12
        }
        _ => return None,
    };
    bytes[0] = code; // PS = 0: not savable
    bytes[1] = (len - 2) as u8;
    Some(Page { bytes, len })
}

/// The MODE SENSE request fields.
#[derive(Clone, Copy, Debug)]
pub struct ModeSenseRequest {
    /// MODE SENSE (10).
    pub ten: bool,
    /// DBD.
    pub dbd: bool,
    /// LLBAA.
    pub llbaa: bool,
    /// Page control.
    pub pc: PageControl,
    /// Page code.
    pub page_code: u8,
    /// Subpage code.
    pub subpage: u8,
}

/// Writes MODE SENSE (6)/(10) parameter data.
pub fn mode_sense(
    lun: &LunInfo,
    req: ModeSenseRequest,
    w: &mut DataIn<'_>,
) -> Result<(), SenseReason> {
    if req.pc == PageControl::Saved {
        return Err(SenseReason::SavingParametersNotSupported);
    }
    let all = req.page_code == PAGE_ALL;
    // Subpage FFh asks for a page with all its subpages (SPC-4 table 467), for one page code as
    // for 3Fh: every page here is subpage 00h only, so it returns what subpage 00h does.
    if !matches!(req.subpage, 0x00 | 0xFF) {
        return Err(SenseReason::InvalidFieldInCdb(FieldPointer::byte(3)));
    }
    if !all && !PAGES.contains(&req.page_code) {
        return Err(SenseReason::InvalidFieldInCdb(FieldPointer::bit(2, 5)));
    }
    let mut dsp = 0x10; // DPOFUA
    if lun.read_only {
        dsp |= 0x80; // WP
    }
    let long = req.ten && req.llbaa;
    let bd_len: u16 = match (req.dbd, long) {
        (true, _) => 0,
        (false, true) => 16,
        (false, false) => 8,
    };
    if req.ten {
        w.u16(0);
        w.u8(0); // medium type
        w.u8(dsp);
        w.u8(u8::from(long)); // LONGLBA
        w.u8(0);
        w.u16(bd_len);
    } else {
        w.u8(0);
        w.u8(0);
        w.u8(dsp);
        w.u8(bd_len as u8);
    }
    let changeable = req.pc == PageControl::Changeable;
    if bd_len != 0 {
        block_descriptor(lun, long, changeable, w);
    }
    for code in PAGES {
        if (all || code == req.page_code)
            && let Some(p) = page(lun, code, req.pc)
        {
            w.put(p.as_bytes());
        }
    }
    // MODE DATA LENGTH excludes itself.
    if req.ten {
        let len = w.len_since_u16(2);
        w.patch_u16(0, len);
    } else {
        let len = u8::try_from(w.pos().saturating_sub(1)).unwrap_or(u8::MAX);
        w.patch(0, &[len]);
    }
    Ok(())
}

/// A short (8-byte) or long LBA (16-byte) block descriptor.
fn block_descriptor(lun: &LunInfo, long: bool, changeable: bool, w: &mut DataIn<'_>) {
    let (blocks, size) = if changeable {
        (0, 0)
    } else {
        (lun.num_blocks, lun.block_size)
    };
    if long {
        w.u64(blocks);
        w.u32(0);
        w.u32(size);
    } else {
        w.u32(u32::try_from(blocks).unwrap_or(u32::MAX));
        w.u8(0);
        let [_, a, b, c] = size.to_be_bytes();
        w.put(&[a, b, c]);
    }
}

fn param_error(byte: usize) -> SenseReason {
    SenseReason::InvalidFieldInParameterList(FieldPointer::byte(
        u16::try_from(byte).unwrap_or(u16::MAX),
    ))
}

fn param_bit_error(byte: usize, diff: u8) -> SenseReason {
    let bit = 7 - diff.leading_zeros().min(7) as u8;
    SenseReason::InvalidFieldInParameterList(FieldPointer::bit(
        u16::try_from(byte).unwrap_or(u16::MAX),
        bit,
    ))
}

fn be_at<const N: usize>(data: &[u8], at: usize) -> [u8; N] {
    data.get(at..at.saturating_add(N))
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .unwrap_or([0; N])
}

/// Validates a MODE SELECT (6)/(10) parameter list: accepted only if it changes nothing.
pub fn mode_select(
    lun: &LunInfo,
    ten: bool,
    param_len: u16,
    data_out: &[u8],
) -> Result<(), SenseReason> {
    let len = usize::from(param_len);
    if len == 0 {
        return Ok(());
    }
    let data = data_out
        .get(..len)
        .ok_or(SenseReason::ParameterListLengthError)?;
    let header_len = if ten { 8 } else { 4 };
    if len < header_len {
        return Err(SenseReason::ParameterListLengthError);
    }
    let (medium_at, bd_len, long) = if ten {
        let long = data.get(4).is_some_and(|b| b & 0x01 != 0);
        (2, usize::from(u16::from_be_bytes(be_at(data, 6))), long)
    } else {
        (1, usize::from(data.get(3).copied().unwrap_or(0)), false)
    };
    if data.get(medium_at).is_some_and(|&m| m != 0) {
        return Err(param_error(medium_at));
    }
    let bd_field = if ten { 6 } else { 3 };
    let expected_bd = if long { 16 } else { 8 };
    if bd_len != 0 && bd_len != expected_bd {
        return Err(param_error(bd_field));
    }
    let pages_at = header_len + bd_len;
    if pages_at > len {
        return Err(SenseReason::ParameterListLengthError);
    }
    if bd_len != 0 {
        check_block_descriptor(lun, data, header_len, long)?;
    }
    check_pages(lun, data, pages_at)
}

/// A block descriptor may only restate the current capacity (or 0) and block length.
fn check_block_descriptor(
    lun: &LunInfo,
    data: &[u8],
    at: usize,
    long: bool,
) -> Result<(), SenseReason> {
    let (blocks, size_at, size) = if long {
        let blocks = u64::from_be_bytes(be_at(data, at));
        (blocks, at + 12, u32::from_be_bytes(be_at(data, at + 12)))
    } else {
        let blocks = u64::from(u32::from_be_bytes(be_at(data, at)));
        let [a, b, c] = be_at::<3>(data, at + 5);
        (blocks, at + 5, u32::from_be_bytes([0, a, b, c]))
    };
    let short_max = u64::from(u32::MAX);
    let current = if long {
        lun.num_blocks
    } else {
        lun.num_blocks.min(short_max)
    };
    if blocks != 0 && blocks != current {
        return Err(param_error(at));
    }
    if size != lun.block_size {
        return Err(param_error(size_at));
    }
    Ok(())
}

/// Every page must be supported, of the right length and identical to the current values.
fn check_pages(lun: &LunInfo, data: &[u8], mut at: usize) -> Result<(), SenseReason> {
    while at < data.len() {
        let &b0 = data.get(at).ok_or(SenseReason::ParameterListLengthError)?;
        let &plen = data
            .get(at + 1)
            .ok_or(SenseReason::ParameterListLengthError)?;
        if b0 & 0x40 != 0 {
            return Err(param_bit_error(at, 0x40)); // SPF: no subpages supported
        }
        let current =
            page(lun, b0 & 0x3F, PageControl::Current).ok_or(param_bit_error(at, 0x20))?;
        let end = at + 2 + usize::from(plen);
        let given = data
            .get(at..end)
            .ok_or(SenseReason::ParameterListLengthError)?;
        if given.len() != current.len {
            return Err(param_error(at + 1));
        }
        let diff = given
            .iter()
            .zip(current.as_bytes())
            .enumerate()
            .skip(2)
            .find(|(_, (g, c))| g != c);
        if let Some((i, (g, c))) = diff {
            return Err(param_bit_error(at + i, g ^ c));
        }
        at = end;
    }
    Ok(())
}
