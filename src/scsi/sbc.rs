//! Block commands that need help from the backing store: the limits the Block Limits VPD
//! page reports, and the pure halves of UNMAP, WRITE SAME, GET LBA STATUS, COMPARE AND WRITE
//! and ORWRITE (SBC-3 5.x) that the transport calls around its own I/O.

use super::cdb::Lba;
use super::datain::DataIn;
use super::lun::{Completion, IoKind, IoRequest, LunInfo};
use super::sense::{FieldPointer, SenseReason};

/// MAXIMUM COMPARE AND WRITE LENGTH, in blocks (the data-out is twice this).
pub const MAX_COMPARE_AND_WRITE_BLOCKS: u8 = 32;
/// MAXIMUM UNMAP LBA COUNT: most blocks one UNMAP descriptor (and one command) may name.
pub const MAX_UNMAP_LBA_COUNT: u32 = 1 << 20;
/// MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT.
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;
/// MAXIMUM WRITE SAME LENGTH, in blocks.
pub const MAX_WRITE_SAME_BLOCKS: u32 = 1 << 15;
/// MAXIMUM ATOMIC TRANSFER LENGTH, in blocks (further capped by the LUN's maximum transfer).
pub const MAX_ATOMIC_TRANSFER_BLOCKS: u32 = 256;
/// ATOMIC ALIGNMENT, in blocks (1: any LBA).
pub const ATOMIC_ALIGNMENT: u32 = 1;
/// ATOMIC TRANSFER LENGTH GRANULARITY, in blocks (1: any length).
pub const ATOMIC_GRANULARITY: u32 = 1;
/// Most descriptors one GET LBA STATUS returns.
pub const MAX_LBA_STATUS_DESCRIPTORS: usize = 1024;

/// Length of the UNMAP parameter list header.
const UNMAP_HEADER_LEN: usize = 8;
/// Length of one UNMAP block descriptor.
const UNMAP_DESCRIPTOR_LEN: usize = 16;

/// A run of blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LbaRange {
    /// First block.
    pub lba: u64,
    /// Number of blocks (never zero).
    pub blocks: u64,
}

impl LbaRange {
    /// Byte offset and length of the range on a LUN with `block_size`-byte blocks.
    pub fn bytes(&self, block_size: u32) -> Option<(u64, u64)> {
        let bs = u64::from(block_size);
        Some((self.lba.checked_mul(bs)?, self.blocks.checked_mul(bs)?))
    }
}

/// The maximum atomic transfer length of `lun`, in blocks.
pub fn max_atomic_blocks(lun: &LunInfo) -> u32 {
    MAX_ATOMIC_TRANSFER_BLOCKS.min(lun.max_transfer_blocks)
}

fn param_field(byte: usize) -> SenseReason {
    SenseReason::InvalidFieldInParameterList(FieldPointer::byte(
        u16::try_from(byte).unwrap_or(u16::MAX),
    ))
}

fn be_at<const N: usize>(data: &[u8], at: usize) -> Option<[u8; N]> {
    data.get(at..at.checked_add(N)?)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
}

/// Parses and validates an UNMAP parameter list (SBC-3 5.28.2) for `lun`: the ranges to
/// deallocate, zero-length descriptors dropped. A list shorter than its header is PARAMETER
/// LIST LENGTH ERROR; more than [`MAX_UNMAP_DESCRIPTORS`] descriptors or a descriptor over
/// [`MAX_UNMAP_LBA_COUNT`] blocks (one or all together, as the Block Limits page's MAXIMUM UNMAP
/// LBA COUNT promises) is INVALID FIELD IN PARAMETER LIST; a range past the end of
/// the LUN is LOGICAL BLOCK ADDRESS OUT OF RANGE. A trailing partial descriptor is ignored.
pub fn unmap_ranges(lun: &LunInfo, data: &[u8]) -> Result<Vec<LbaRange>, SenseReason> {
    if data.is_empty() {
        return Ok(Vec::new());
    }
    let header = be_at::<8>(data, 0).ok_or(SenseReason::ParameterListLengthError)?;
    let data_len = usize::from(u16::from_be_bytes([header[0], header[1]]));
    let bd_len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    // UNMAP DATA LENGTH counts from byte 2, the descriptor length from byte 8.
    if data_len != 0 && data_len + 2 < UNMAP_HEADER_LEN {
        return Err(param_field(0));
    }
    let available = data.len() - UNMAP_HEADER_LEN;
    let count = bd_len.min(available) / UNMAP_DESCRIPTOR_LEN;
    if count > MAX_UNMAP_DESCRIPTORS as usize {
        return Err(param_field(2));
    }
    let mut out = Vec::with_capacity(count);
    let mut total = 0u64;
    for i in 0..count {
        let at = UNMAP_HEADER_LEN + i * UNMAP_DESCRIPTOR_LEN;
        let lba = be_at::<8>(data, at).map_or(0, u64::from_be_bytes);
        let blocks = be_at::<4>(data, at + 8).map_or(0, u32::from_be_bytes);
        total += u64::from(blocks);
        if total > u64::from(MAX_UNMAP_LBA_COUNT) {
            return Err(param_field(at + 8));
        }
        match lba.checked_add(u64::from(blocks)) {
            Some(end) if end <= lun.num_blocks => {}
            _ => return Err(SenseReason::LbaOutOfRange),
        }
        if blocks != 0 {
            out.push(LbaRange {
                lba,
                blocks: u64::from(blocks),
            });
        }
    }
    Ok(out)
}

/// Whether a WRITE SAME may deallocate its range instead of writing it: UNMAP is set, the
/// LUN supports unmapping through WRITE SAME, deallocated blocks read as zeros and the
/// pattern is zeros (or NDOB: there is no pattern, the blocks become zeros).
pub fn write_same_deallocates(lun: &LunInfo, req: &IoRequest, pattern: &[u8]) -> bool {
    let IoKind::WriteSame { unmap, ndob } = req.kind else {
        return false;
    };
    let p = &lun.provisioning;
    unmap && p.lbprz && (p.lbpws || p.lbpws10) && (ndob || pattern.iter().all(|&b| b == 0))
}

/// The provisioning status of a run of blocks, as the backing store reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbaState {
    /// The blocks are mapped (allocated).
    Mapped,
    /// The blocks are deallocated (a hole).
    Deallocated,
}

/// Writes GET LBA STATUS parameter data (SBC-3 5.6) for the request `execute` returned.
/// `probe(lba, max_blocks)` reports the status of the run starting at `lba` and its length in
/// blocks (at most `max_blocks`; 0 is taken as 1); an `Err` from the probe is returned as is.
pub fn get_lba_status<E>(
    lun: &LunInfo,
    lba: Lba,
    alloc_len: u32,
    data_in: &mut [u8],
    probe: &mut dyn FnMut(u64, u64) -> Result<(LbaState, u64), E>,
) -> Result<Completion, E> {
    let alloc = usize::try_from(alloc_len).unwrap_or(usize::MAX);
    let mut w = DataIn::new(data_in, alloc);
    w.u32(0);
    w.u32(0);
    let wanted = (alloc.saturating_sub(8) / 16).clamp(1, MAX_LBA_STATUS_DESCRIPTORS);
    let mut at = lba.0;
    for _ in 0..wanted {
        if at >= lun.num_blocks {
            break;
        }
        let max = (lun.num_blocks - at).min(u64::from(u32::MAX));
        let (state, run) = probe(at, max)?;
        let run = run.clamp(1, max);
        w.u64(at);
        w.u32(u32::try_from(run).unwrap_or(u32::MAX));
        w.u8(match state {
            LbaState::Mapped => 0,
            LbaState::Deallocated => 1,
        });
        w.zeros(3);
        at += run;
    }
    let len = w.len_since_u32(4);
    w.patch_u32(0, len);
    Ok(Completion::good(w.stored()))
}

/// The verify half and the write half of a COMPARE AND WRITE data-out buffer.
pub fn compare_and_write_halves<'a>(
    req: &IoRequest,
    data_out: &'a [u8],
) -> Option<(&'a [u8], &'a [u8])> {
    if !matches!(req.kind, IoKind::CompareAndWrite) {
        return None;
    }
    let verify = data_out.get(..req.byte_len)?;
    let write = data_out.get(req.byte_len..req.byte_len.checked_mul(2)?)?;
    Some((verify, write))
}

/// ORWRITE: ORs `data` into `media` byte by byte (the shorter length wins).
pub fn or_into(media: &mut [u8], data: &[u8]) {
    for (m, d) in media.iter_mut().zip(data) {
        *m |= d;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lun() -> LunInfo {
        LunInfo::new(0, 512, 1000, 1, "S")
    }

    fn list(descs: &[(u64, u32)]) -> Vec<u8> {
        let bd = descs.len() * 16;
        let mut v = Vec::new();
        v.extend_from_slice(&u16::try_from(bd + 6).unwrap().to_be_bytes());
        v.extend_from_slice(&u16::try_from(bd).unwrap().to_be_bytes());
        v.extend_from_slice(&[0; 4]);
        for &(lba, n) in descs {
            v.extend_from_slice(&lba.to_be_bytes());
            v.extend_from_slice(&n.to_be_bytes());
            v.extend_from_slice(&[0; 4]);
        }
        v
    }

    #[test]
    fn unmap_list_parses_and_drops_empty() {
        let r = unmap_ranges(&lun(), &list(&[(0, 8), (10, 0), (990, 10)])).unwrap();
        assert_eq!(
            r,
            vec![
                LbaRange { lba: 0, blocks: 8 },
                LbaRange {
                    lba: 990,
                    blocks: 10
                }
            ]
        );
        assert_eq!(unmap_ranges(&lun(), &[]), Ok(vec![]));
    }

    #[test]
    fn unmap_list_errors() {
        assert_eq!(
            unmap_ranges(&lun(), &[0, 6, 0]),
            Err(SenseReason::ParameterListLengthError)
        );
        assert_eq!(
            unmap_ranges(&lun(), &list(&[(995, 10)])),
            Err(SenseReason::LbaOutOfRange)
        );
        assert_eq!(
            unmap_ranges(&lun(), &list(&[(u64::MAX, 2)])),
            Err(SenseReason::LbaOutOfRange)
        );
        let mut big = LunInfo::new(0, 512, 1 << 40, 1, "S");
        big.num_blocks = 1 << 40;
        assert_eq!(
            unmap_ranges(&big, &list(&[(0, MAX_UNMAP_LBA_COUNT + 1)])),
            Err(SenseReason::InvalidFieldInParameterList(
                FieldPointer::byte(16)
            ))
        );
        let many: Vec<_> = (0..=u64::from(MAX_UNMAP_DESCRIPTORS))
            .map(|i| (i, 1))
            .collect();
        assert_eq!(
            unmap_ranges(&lun(), &list(&many)),
            Err(SenseReason::InvalidFieldInParameterList(
                FieldPointer::byte(2)
            ))
        );
    }

    #[test]
    fn lba_status_runs() {
        let mut l = lun();
        l.num_blocks = 100;
        let mut buf = [0u8; 64];
        let mut probe = |lba: u64, max: u64| -> Result<(LbaState, u64), ()> {
            Ok(if lba < 40 {
                (LbaState::Mapped, 40 - lba)
            } else {
                (LbaState::Deallocated, max)
            })
        };
        let c = get_lba_status(&l, Lba(10), 64, &mut buf, &mut probe).unwrap();
        assert_eq!(c.data_len, 40);
        assert_eq!(&buf[0..4], &36u32.to_be_bytes());
        assert_eq!(&buf[8..16], &10u64.to_be_bytes());
        assert_eq!(&buf[16..20], &30u32.to_be_bytes());
        assert_eq!(buf[20], 0);
        assert_eq!(&buf[24..32], &40u64.to_be_bytes());
        assert_eq!(&buf[32..36], &60u32.to_be_bytes());
        assert_eq!(buf[36], 1);
    }

    #[test]
    fn or_and_halves() {
        let mut m = [0x0F, 0xF0];
        or_into(&mut m, &[0x10, 0x01, 0xFF]);
        assert_eq!(m, [0x1F, 0xF1]);
    }

    #[test]
    fn unmap_refuses_more_blocks_in_all_than_the_block_limits_promise() {
        let mut big = LunInfo::new(0, 512, 1 << 40, 1, "S");
        big.num_blocks = 1 << 40;
        let max = MAX_UNMAP_LBA_COUNT;
        assert!(unmap_ranges(&big, &list(&[(0, max)])).is_ok());
        assert!(unmap_ranges(&big, &list(&[(0, max / 2), (1 << 30, max / 2)])).is_ok());
        // Two descriptors each within the limit, together past it: the second is pointed at.
        assert_eq!(
            unmap_ranges(&big, &list(&[(0, max), (1 << 30, 1)])),
            Err(param_field(UNMAP_HEADER_LEN + UNMAP_DESCRIPTOR_LEN + 8))
        );
    }

    proptest! {
        #[test]
        fn unmap_parser_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(r) = unmap_ranges(&lun(), &data) {
                for x in r {
                    prop_assert!(x.blocks > 0 && x.lba + x.blocks <= 1000);
                }
            }
        }

        #[test]
        fn unmap_valid_lists_round_trip(descs in proptest::collection::vec((0u64..1000, 1u32..50), 0..20)) {
            let descs: Vec<_> = descs.into_iter().map(|(l, n)| (l.min(999), n.min(u32::try_from(1000 - l.min(999)).unwrap()))).collect();
            let r = unmap_ranges(&lun(), &list(&descs)).unwrap();
            prop_assert_eq!(r.len(), descs.len());
        }
    }
}
