//! EXTENDED COPY (LID1) parameter list parsing, RECEIVE COPY RESULTS operating parameters and
//! the Third-party Copy VPD page (SPC-4 6.4, 6.18, 7.8.17). Only identification descriptor
//! CSCDs (E4h, NAA designator of a logical unit) and block-to-block segments (02h) are
//! supported; copies run to completion before status, so no copy results are held.

use super::datain::DataIn;
use super::inquiry::naa_designator;
use super::lun::{DeviceServer, LunInfo};
use super::sense::{FieldPointer, SenseReason};

/// MAXIMUM CSCD DESCRIPTOR COUNT.
pub const MAX_CSCD_DESCRIPTORS: u16 = 16;
/// MAXIMUM SEGMENT DESCRIPTOR COUNT.
pub const MAX_SEGMENT_DESCRIPTORS: u16 = 64;
/// Length of a CSCD descriptor.
pub const CSCD_LEN: usize = 32;
/// Length of a block-to-block segment descriptor.
pub const SEGMENT_LEN: usize = 28;
/// Length of the parameter list header.
pub const HEADER_LEN: usize = 16;
/// MAXIMUM DESCRIPTOR LIST LENGTH in bytes.
pub const MAX_DESCRIPTOR_LIST_LEN: u32 = (MAX_CSCD_DESCRIPTORS as u32) * (CSCD_LEN as u32)
    + (MAX_SEGMENT_DESCRIPTORS as u32) * (SEGMENT_LEN as u32);
/// Largest parameter list accepted (bounds the data-out buffer; descriptor counts are
/// checked against their own limits by [`parse`]).
pub const MAX_PARAM_LEN: u32 = 64 << 10;
/// MAXIMUM SEGMENT LENGTH in bytes.
pub const MAX_SEGMENT_BYTES: u32 = 64 << 20;
/// Identification descriptor CSCD type code.
const CSCD_IDENTIFICATION: u8 = 0xE4;
/// Block device to block device segment type code.
const SEGMENT_BLOCK_TO_BLOCK: u8 = 0x02;

/// A block-to-block copy between two logical units named by their NAA designators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopySegment {
    /// NAA designator (16 bytes, from the Device Identification VPD page) of the source.
    pub src: [u8; 16],
    /// First source block.
    pub src_lba: u64,
    /// NAA designator of the destination.
    pub dst: [u8; 16],
    /// First destination block.
    pub dst_lba: u64,
    /// Number of blocks (of the source when DC = 0, of the destination when DC = 1; this
    /// device server only copies between LUNs of equal block size).
    pub blocks: u32,
    /// Byte offset of the segment descriptor in the parameter list (for field pointers).
    pub at: usize,
}

/// A parsed EXTENDED COPY (LID1) parameter list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyPlan {
    /// LIST IDENTIFIER (the key of RECEIVE COPY RESULTS, COPY STATUS).
    pub list_id: u8,
    /// The segments, in order.
    pub segments: Vec<CopySegment>,
}

/// How a finished EXTENDED COPY ended, held per I_T nexus and logical unit for RECEIVE COPY
/// RESULTS, COPY STATUS ([`super::lun::Nexus::record_copy`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyResult {
    /// LIST IDENTIFIER of the copy.
    pub list_id: u8,
    /// Whether every segment was copied.
    pub ok: bool,
    /// Segments fully processed.
    pub segments_processed: u16,
    /// Bytes written to copy destinations.
    pub bytes: u64,
}

/// RECEIVE COPY RESULTS, COPY STATUS (SPC-4 6.18.3) for a held result.
pub fn copy_status(r: &CopyResult, w: &mut DataIn<'_>) {
    w.u32(8); // AVAILABLE DATA
    w.u8(if r.ok { 0x01 } else { 0x02 }); // HDD = 0, COPY MANAGER STATUS
    w.u16(r.segments_processed);
    w.u8(0x00); // TRANSFER COUNT UNITS: bytes
    w.u32(u32::try_from(r.bytes).unwrap_or(u32::MAX));
}

fn field(at: usize) -> FieldPointer {
    FieldPointer::byte(u16::try_from(at).unwrap_or(u16::MAX))
}

fn invalid(at: usize) -> SenseReason {
    SenseReason::InvalidFieldInParameterList(field(at))
}

fn get<const N: usize>(data: &[u8], at: usize) -> Result<[u8; N], SenseReason> {
    data.get(at..at.saturating_add(N))
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or(SenseReason::ParameterListLengthError)
}

/// Parses an EXTENDED COPY (LID1) parameter list (the data-out, cut to the parameter list
/// length) into its list identifier and segments.
pub fn parse(data: &[u8]) -> Result<CopyPlan, SenseReason> {
    let h = get::<HEADER_LEN>(data, 0)?;
    let cscd_len = usize::from(u16::from_be_bytes([h[2], h[3]]));
    let seg_len =
        usize::try_from(u32::from_be_bytes([h[8], h[9], h[10], h[11]])).unwrap_or(usize::MAX);
    let inline_len = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
    // Descriptor lists longer than MAXIMUM DESCRIPTOR LIST LENGTH, or running past the
    // parameter list, are a PARAMETER LIST LENGTH ERROR, checked before the descriptor counts.
    let lists = cscd_len.saturating_add(seg_len);
    if lists > MAX_DESCRIPTOR_LIST_LEN as usize || HEADER_LEN.saturating_add(lists) > data.len() {
        return Err(SenseReason::ParameterListLengthError);
    }
    if cscd_len / CSCD_LEN > usize::from(MAX_CSCD_DESCRIPTORS) {
        return Err(SenseReason::TooManyTargetDescriptors);
    }
    if seg_len / SEGMENT_LEN > usize::from(MAX_SEGMENT_DESCRIPTORS) {
        return Err(SenseReason::TooManySegmentDescriptors);
    }
    if inline_len != 0 {
        return Err(invalid(12));
    }
    let end = HEADER_LEN
        .checked_add(cscd_len)
        .and_then(|n| n.checked_add(seg_len))
        .ok_or(SenseReason::ParameterListLengthError)?;
    if end > data.len() {
        return Err(SenseReason::ParameterListLengthError);
    }
    if cscd_len % CSCD_LEN != 0 {
        return Err(invalid(2));
    }
    let cscds = parse_cscds(data, cscd_len)?;
    Ok(CopyPlan {
        list_id: h[0],
        segments: parse_segments(data, HEADER_LEN + cscd_len, end, &cscds)?,
    })
}

/// The CSCD descriptors: each one's NAA designator (`None`: not a designator we can resolve).
fn parse_cscds(data: &[u8], len: usize) -> Result<Vec<Option<[u8; 16]>>, SenseReason> {
    let mut out = Vec::with_capacity(len / CSCD_LEN);
    let mut at = HEADER_LEN;
    while at < HEADER_LEN + len {
        let d = get::<CSCD_LEN>(data, at)?;
        if d[0] != CSCD_IDENTIFICATION {
            return Err(SenseReason::UnsupportedTargetDescriptorType(field(at)));
        }
        // The LU ID TYPE is not used: the designation descriptor names the LUN (LIO does the
        // same, and libiscsi 1.19 expects a copy with a reserved LU ID TYPE to succeed).
        // Block devices only.
        if d[1] & 0x1F != 0 {
            return Err(SenseReason::UnsupportedTargetDescriptorType(field(at + 1)));
        }
        // Designation descriptor at byte 4: binary code set, LU association, NAA, 16 bytes.
        // NUL (a null device) cannot be copied to or from: such a CSCD resolves to nothing,
        // and a segment naming it ends in COPY ABORTED.
        let nul = d[1] & 0x20 != 0;
        let naa = (!nul && d[4] & 0x0F == 1 && d[5] & 0x3F == 0x03 && d[7] == 16)
            .then(|| <[u8; 16]>::try_from(&d[8..24]).ok())
            .flatten();
        out.push(naa);
        at += CSCD_LEN;
    }
    Ok(out)
}

fn parse_segments(
    data: &[u8],
    start: usize,
    end: usize,
    cscds: &[Option<[u8; 16]>],
) -> Result<Vec<CopySegment>, SenseReason> {
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        let hdr = get::<4>(data, at)?;
        if hdr[0] != SEGMENT_BLOCK_TO_BLOCK {
            return Err(SenseReason::UnsupportedSegmentDescriptorType(field(at)));
        }
        if usize::from(u16::from_be_bytes([hdr[2], hdr[3]])) != SEGMENT_LEN - 4 {
            return Err(invalid(at + 2));
        }
        if at + SEGMENT_LEN > end {
            return Err(SenseReason::ParameterListLengthError);
        }
        let d = get::<SEGMENT_LEN>(data, at)?;
        let cscd = |off: usize| -> Result<[u8; 16], SenseReason> {
            let id = usize::from(u16::from_be_bytes([d[off], d[off + 1]]));
            // An unknown CSCD index or an unresolvable CSCD: the copy target is unreachable.
            cscds
                .get(id)
                .copied()
                .flatten()
                .ok_or(SenseReason::CopyTargetDeviceNotReachable)
        };
        let (src, dst) = (cscd(4)?, cscd(6)?);
        let word = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&d[o..o + 8]);
            u64::from_be_bytes(b)
        };
        out.push(CopySegment {
            src,
            src_lba: word(12),
            dst,
            dst_lba: word(20),
            blocks: u32::from(u16::from_be_bytes([d[10], d[11]])),
            at,
        });
        at += SEGMENT_LEN;
    }
    Ok(out)
}

/// The logical unit of `server` whose NAA designator is `naa`.
pub fn resolve<'a>(server: &'a DeviceServer, naa: &[u8; 16]) -> Option<&'a LunInfo> {
    server.luns().iter().find(|l| &naa_designator(l) == naa)
}

/// Checks one resolved segment: neither LUN offline, equal block sizes (else COPY TARGET DEVICE
/// NOT REACHABLE), both ranges inside their LUNs (else COPY ABORTED), the destination writable, the length within [`MAX_SEGMENT_BYTES`]. A segment
/// whose medium I/O fails also ends the command with [`SenseReason::CopyAborted`].
pub fn check_segment(src: &LunInfo, dst: &LunInfo, seg: &CopySegment) -> Result<(), SenseReason> {
    // A LUN served offline (its files could not be opened) cannot be read or written.
    if src.offline || dst.offline || src.block_size != dst.block_size {
        return Err(SenseReason::CopyTargetDeviceNotReachable);
    }
    if dst.read_only {
        return Err(SenseReason::WriteProtected);
    }
    let n = u64::from(seg.blocks);
    let inside = |lun: &LunInfo, lba: u64| lba.checked_add(n).is_some_and(|e| e <= lun.num_blocks);
    if !inside(src, seg.src_lba) || !inside(dst, seg.dst_lba) {
        return Err(SenseReason::CopyAborted);
    }
    // Too long: the field pointer names the segment's BLOCK DEVICE NUMBER OF BLOCKS.
    if n * u64::from(src.block_size) > u64::from(MAX_SEGMENT_BYTES) {
        return Err(invalid(seg.at.saturating_add(10)));
    }
    Ok(())
}

/// Descriptor type codes reported as implemented.
const IMPLEMENTED_DESCRIPTORS: [u8; 2] = [SEGMENT_BLOCK_TO_BLOCK, CSCD_IDENTIFICATION];

/// RECEIVE COPY RESULTS, OPERATING PARAMETERS (SPC-4 6.18.4).
pub fn operating_parameters(w: &mut DataIn<'_>) {
    w.u32(0); // AVAILABLE DATA, back-filled
    w.u8(0x01); // SNLID: no list identifier is held
    w.zeros(3);
    w.u16(MAX_CSCD_DESCRIPTORS);
    w.u16(MAX_SEGMENT_DESCRIPTORS);
    w.u32(MAX_DESCRIPTOR_LIST_LEN);
    w.u32(MAX_SEGMENT_BYTES);
    w.u32(0); // MAXIMUM INLINE DATA LENGTH
    w.u32(0); // HELD DATA LIMIT
    w.u32(0); // MAXIMUM STREAM DEVICE TRANSFER SIZE
    w.zeros(2);
    w.u16(1); // TOTAL CONCURRENT COPIES
    w.u8(1); // MAXIMUM CONCURRENT COPIES
    w.u8(0); // DATA SEGMENT GRANULARITY (log2)
    w.u8(0); // INLINE DATA GRANULARITY
    w.u8(0); // HELD DATA GRANULARITY
    w.zeros(3);
    w.u8(IMPLEMENTED_DESCRIPTORS.len() as u8);
    w.put(&IMPLEMENTED_DESCRIPTORS);
    let len = w.len_since_u32(4);
    w.patch_u32(0, len);
}

/// Third-party Copy VPD page (8Fh) body: supported commands, parameter data, supported
/// descriptors and general copy operations descriptors, consistent with
/// [`operating_parameters`].
pub fn third_party_copy_vpd(w: &mut DataIn<'_>) {
    // Supported Commands (0001h): EXTENDED COPY LID1, RECEIVE COPY RESULTS 00h and 03h.
    let cmds: [u8; 7] = [0x83, 1, 0x00, 0x84, 2, 0x00, 0x03];
    let body = 1 + cmds.len();
    let padded = body.next_multiple_of(4);
    w.u16(0x0001);
    w.u16(padded as u16);
    w.u8(cmds.len() as u8);
    w.put(&cmds);
    w.zeros(padded - body);
    // Parameter Data (0004h).
    w.u16(0x0004);
    w.u16(0x1C);
    w.zeros(4);
    w.u16(MAX_CSCD_DESCRIPTORS);
    w.u16(MAX_SEGMENT_DESCRIPTORS);
    w.u32(MAX_DESCRIPTOR_LIST_LEN);
    w.u32(0); // MAXIMUM INLINE DATA LENGTH
    w.zeros(12);
    // Supported Descriptors (0008h).
    let body = 1 + IMPLEMENTED_DESCRIPTORS.len();
    let padded = body.next_multiple_of(4);
    w.u16(0x0008);
    w.u16(padded as u16);
    w.u8(IMPLEMENTED_DESCRIPTORS.len() as u8);
    w.put(&IMPLEMENTED_DESCRIPTORS);
    w.zeros(padded - body);
    // General Copy Operations (8001h).
    w.u16(0x8001);
    w.u16(0x1C);
    w.u32(1); // TOTAL CONCURRENT COPIES
    w.u32(1); // MAXIMUM IDENTIFIED CONCURRENT COPIES
    w.u32(MAX_SEGMENT_BYTES);
    w.u8(0); // DATA SEGMENT GRANULARITY
    w.u8(0); // INLINE DATA GRANULARITY
    w.zeros(18);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NAA_A: [u8; 16] = [0x60, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

    fn cscd(naa: &[u8; 16]) -> Vec<u8> {
        let mut d = vec![0u8; CSCD_LEN];
        d[0] = 0xE4;
        d[4] = 0x01;
        d[5] = 0x03;
        d[7] = 16;
        d[8..24].copy_from_slice(naa);
        d[29..32].copy_from_slice(&[0, 2, 0]);
        d
    }

    fn segment(src: u16, dst: u16, blocks: u16, s: u64, t: u64) -> Vec<u8> {
        let mut d = vec![0u8; SEGMENT_LEN];
        d[0] = 0x02;
        d[3] = 0x18;
        d[4..6].copy_from_slice(&src.to_be_bytes());
        d[6..8].copy_from_slice(&dst.to_be_bytes());
        d[10..12].copy_from_slice(&blocks.to_be_bytes());
        d[12..20].copy_from_slice(&s.to_be_bytes());
        d[20..28].copy_from_slice(&t.to_be_bytes());
        d
    }

    fn list(cscds: &[Vec<u8>], segs: &[Vec<u8>]) -> Vec<u8> {
        let c: Vec<u8> = cscds.concat();
        let s: Vec<u8> = segs.concat();
        let mut v = vec![0u8; HEADER_LEN];
        v[2..4].copy_from_slice(&(c.len() as u16).to_be_bytes());
        v[8..12].copy_from_slice(&(s.len() as u32).to_be_bytes());
        v.extend(c);
        v.extend(s);
        v
    }

    #[test]
    fn parses_block_to_block() {
        let mut b = NAA_A;
        b[15] = 0xFF;
        let data = list(&[cscd(&NAA_A), cscd(&b)], &[segment(0, 1, 8, 100, 200)]);
        assert_eq!(
            parse(&data).map(|p| p.segments),
            Ok(vec![CopySegment {
                src: NAA_A,
                src_lba: 100,
                dst: b,
                dst_lba: 200,
                blocks: 8,
                at: HEADER_LEN + 2 * CSCD_LEN,
            }])
        );
    }

    #[test]
    fn descriptor_errors() {
        let mut bad = cscd(&NAA_A);
        bad[0] = 0xE5;
        assert_eq!(
            parse(&list(&[bad], &[])),
            Err(SenseReason::UnsupportedTargetDescriptorType(
                FieldPointer::byte(16)
            ))
        );
        let mut seg = segment(0, 0, 1, 0, 0);
        seg[0] = 0x01;
        assert_eq!(
            parse(&list(&[cscd(&NAA_A)], &[seg])),
            Err(SenseReason::UnsupportedSegmentDescriptorType(
                FieldPointer::byte(48)
            ))
        );
        assert_eq!(
            parse(&list(&[cscd(&NAA_A)], &[segment(0, 3, 1, 0, 0)])),
            Err(SenseReason::CopyTargetDeviceNotReachable)
        );
        // NUL: the CSCD parses but cannot be copied to.
        let mut nul = cscd(&NAA_A);
        nul[1] = 0x20;
        assert_eq!(
            parse(&list(&[nul], &[segment(0, 0, 1, 0, 0)])),
            Err(SenseReason::CopyTargetDeviceNotReachable)
        );
        // A reserved LU ID TYPE is ignored: the designator names the LUN.
        let mut luid = cscd(&NAA_A);
        luid[1] = 0xC0;
        assert!(parse(&list(&[luid], &[])).is_ok());
        let many: Vec<_> = (0..=MAX_CSCD_DESCRIPTORS).map(|_| cscd(&NAA_A)).collect();
        assert_eq!(
            parse(&list(&many, &[])),
            Err(SenseReason::TooManyTargetDescriptors)
        );
        let segs: Vec<_> = (0..=MAX_SEGMENT_DESCRIPTORS)
            .map(|_| segment(0, 0, 1, 0, 0))
            .collect();
        assert_eq!(
            parse(&list(&[cscd(&NAA_A)], &segs)),
            Err(SenseReason::TooManySegmentDescriptors)
        );
        let mut short = list(&[cscd(&NAA_A)], &[segment(0, 0, 1, 0, 0)]);
        short.truncate(short.len() - 1);
        assert_eq!(parse(&short), Err(SenseReason::ParameterListLengthError));
    }

    #[test]
    fn resolves_and_checks_against_luns() {
        let a = LunInfo::new(0, 512, 100, 7, "A");
        let server = DeviceServer::new(vec![a.clone()]).unwrap();
        let naa = naa_designator(&a);
        assert_eq!(resolve(&server, &naa).map(|l| l.id), Some(0));
        assert!(resolve(&server, &NAA_A).is_none());
        let seg = CopySegment {
            src: naa,
            src_lba: 90,
            dst: naa,
            dst_lba: 0,
            blocks: 11,
            at: 48,
        };
        assert_eq!(check_segment(&a, &a, &seg), Err(SenseReason::CopyAborted));
        assert_eq!(
            check_segment(&a, &a, &CopySegment { blocks: 10, ..seg }),
            Ok(())
        );
    }

    /// A LUN served offline (its files could not be opened) is a copy target the copy manager
    /// cannot reach, as source or destination: the copy is refused before it moves anything.
    /// It was started and ended by the failed I/O with COPY ABORTED and no reason, or, past the
    /// one block an offline LUN without a configured size has, as a range error.
    #[test]
    fn an_offline_lun_is_a_copy_target_not_reachable() {
        let a = LunInfo::new(0, 512, 100, 7, "A");
        let off = LunInfo {
            offline: true,
            ..LunInfo::new(1, 512, 100, 8, "OFF")
        };
        let seg = CopySegment {
            src: naa_designator(&a),
            src_lba: 0,
            dst: naa_designator(&off),
            dst_lba: 0,
            blocks: 1,
            at: 48,
        };
        for (src, dst) in [(&a, &off), (&off, &a)] {
            assert_eq!(
                check_segment(src, dst, &seg),
                Err(SenseReason::CopyTargetDeviceNotReachable)
            );
            assert_eq!(
                check_segment(
                    src,
                    dst,
                    &CopySegment {
                        dst_lba: 500,
                        ..seg
                    }
                ),
                Err(SenseReason::CopyTargetDeviceNotReachable)
            );
        }
    }

    #[test]
    fn a_segment_over_the_maximum_length_is_pointed_at() {
        // 4 KiB blocks: 16385 of them pass MAXIMUM SEGMENT LENGTH (64 MiB).
        let big = LunInfo::new(0, 4096, 1 << 20, 7, "B");
        let naa = naa_designator(&big);
        let data = list(
            &[cscd(&naa)],
            &[segment(0, 0, 1, 0, 8), segment(0, 0, 16385, 0, 100_000)],
        );
        let plan = parse(&data).unwrap();
        assert!(check_segment(&big, &big, &plan.segments[0]).is_ok());
        // The second segment starts at 16 + 32 + 28 = 76; its NUMBER OF BLOCKS at 86.
        assert_eq!(
            check_segment(&big, &big, &plan.segments[1]),
            Err(SenseReason::InvalidFieldInParameterList(
                FieldPointer::byte(86)
            ))
        );
    }

    #[test]
    fn operating_parameters_length() {
        let mut buf = [0u8; 64];
        let mut w = DataIn::new(&mut buf, 64);
        operating_parameters(&mut w);
        assert_eq!(w.stored(), 46);
        assert_eq!(&buf[0..4], &42u32.to_be_bytes());
        assert_eq!(&buf[8..10], &MAX_CSCD_DESCRIPTORS.to_be_bytes());
        assert_eq!(buf[43], 2);
    }

    proptest! {
        #[test]
        fn parser_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse(&data);
        }

        #[test]
        fn valid_lists_parse(segs in proptest::collection::vec((0u16..2, 0u16..2, any::<u16>(), any::<u64>(), any::<u64>()), 0..10)) {
            let data = list(
                &[cscd(&NAA_A), cscd(&NAA_A)],
                &segs.iter().map(|&(a, b, n, s, t)| segment(a, b, n, s, t)).collect::<Vec<_>>(),
            );
            let parsed = parse(&data).unwrap().segments;
            prop_assert_eq!(parsed.len(), segs.len());
            for (p, s) in parsed.iter().zip(&segs) {
                prop_assert_eq!((p.blocks, p.src_lba, p.dst_lba), (u32::from(s.2), s.3, s.4));
            }
        }
    }
}
