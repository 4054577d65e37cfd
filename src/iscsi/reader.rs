//! A resumable PDU reader: a state machine that says what it needs next, so that io_uring
//! completions (or any byte source) can drive it without copies of the data segment.
//!
//! A PDU on the wire is: BHS (48) | AHS (TotalAHSLength * 4) | header digest (4, if enabled) |
//! data segment (DataSegmentLength) | padding (0..3) | data digest (4, if enabled and the data
//! segment is not empty).
//!
//! Two ways to drive the reader:
//! - exact receives: ask [`PduReader::want`]; for [`Want::Scratch`] receive into
//!   [`PduReader::scratch`] and call [`PduReader::scratch_filled`]; for [`Want::Data`] receive into
//!   a buffer of your choosing and call [`PduReader::data_received`] with the bytes received;
//! - a byte stream: call [`PduReader::feed`]; data-segment bytes are not copied but reported as a
//!   range of the input.
//!
//! After [`Event::Header`] the BHS and AHS stay readable until the next PDU's bytes arrive.

use std::ops::Range;

use thiserror::Error;

use super::digest::{self, Crc32c, DIGEST_LEN};
use super::pdu::{BHS_LEN, CommonHeader};

/// Largest AHS the reader accepts (TotalAHSLength is one byte of 4-byte words).
pub const MAX_AHS_LEN: usize = 255 * 4;

/// MaxRecvDataSegmentLength in force during login (RFC 7143 13.12: 8192 until negotiated).
pub const LOGIN_MAX_RECV_DATA_SEGMENT_LENGTH: u32 = 8192;

/// Largest value MaxRecvDataSegmentLength may take (2^24 - 1).
pub const MAX_DATA_SEGMENT_LENGTH: u32 = (1 << 24) - 1;

/// What the reader enforces and verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReaderLimits {
    /// The MaxRecvDataSegmentLength we declared.
    pub max_recv_data_segment_length: u32,
    /// Largest AHS accepted, in bytes (at most [`MAX_AHS_LEN`]).
    pub max_ahs_len: usize,
    /// Whether a CRC32C header digest follows the header.
    pub header_digest: bool,
    /// Whether a CRC32C data digest follows a non-empty data segment.
    pub data_digest: bool,
}

impl ReaderLimits {
    /// The limits during login: 8192-byte data segments, no digests.
    pub fn login() -> Self {
        Self {
            max_recv_data_segment_length: LOGIN_MAX_RECV_DATA_SEGMENT_LENGTH,
            max_ahs_len: MAX_AHS_LEN,
            header_digest: false,
            data_digest: false,
        }
    }
}

/// Errors reported by the reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ReadError {
    /// DataSegmentLength exceeds our MaxRecvDataSegmentLength. Fatal for the connection.
    #[error("BHS field DataSegmentLength: {len} bytes exceeds the limit of {max} bytes")]
    DataSegmentTooLong {
        /// The length received.
        len: u32,
        /// The limit in force.
        max: u32,
    },
    /// TotalAHSLength exceeds the AHS limit. Fatal for the connection.
    #[error("BHS field TotalAHSLength: {len} bytes exceeds the limit of {max} bytes")]
    AhsTooLong {
        /// The AHS length in bytes.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The header digest did not match. Fatal: the connection must be dropped (ERL 0).
    #[error("header digest mismatch: received {received:#010x}, computed {computed:#010x}")]
    HeaderDigest {
        /// The CRC32C carried by the PDU.
        received: u32,
        /// The CRC32C we computed.
        computed: u32,
    },
    /// The data digest did not match. Not fatal: at ERL 0 the target answers Reject (reason
    /// "data digest error") and aborts the task; the reader is ready for the next PDU and the
    /// header of the damaged PDU is still readable.
    #[error("data digest mismatch: received {received:#010x}, computed {computed:#010x}")]
    DataDigest {
        /// The CRC32C carried by the PDU.
        received: u32,
        /// The CRC32C we computed.
        computed: u32,
    },
    /// The caller claimed more bytes than were asked for (a caller bug, not a peer error).
    #[error("caller reported {got} bytes where at most {wanted} were wanted")]
    Overrun {
        /// Bytes reported.
        got: usize,
        /// Bytes wanted.
        wanted: usize,
    },
    /// The caller reported data while the reader wanted something else, or the reverse.
    #[error("caller supplied {supplied} while the reader wants {wanted}")]
    WrongPart {
        /// What the reader wanted.
        wanted: &'static str,
        /// What the caller supplied.
        supplied: &'static str,
    },
    /// A fatal error happened earlier; the connection must be closed.
    #[error("reader failed earlier; the connection must be closed")]
    Failed,
}

impl ReadError {
    /// Whether the connection must be dropped.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, Self::DataDigest { .. })
    }
}

/// What the reader needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// `n` more bytes into [`PduReader::scratch`] (header, AHS, digests, padding).
    Scratch(usize),
    /// `remaining` more bytes of the data segment (of `total` bytes) into the caller's buffer, at
    /// offset `total - remaining`.
    Data {
        /// Bytes still to come.
        remaining: u32,
        /// The whole DataSegmentLength.
        total: u32,
    },
    /// Nothing: the reader failed.
    Nothing,
}

/// Milestones reported by the reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// BHS and AHS were read (and the header digest verified); a data segment of `data_len > 0`
    /// bytes follows. Inspect [`PduReader::bhs`] and choose where the data goes.
    Header {
        /// DataSegmentLength.
        data_len: u32,
    },
    /// The whole PDU was read and verified. For a PDU without data this is the first event.
    Complete,
}

/// Result of [`PduReader::feed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fed {
    /// Bytes of the input consumed.
    pub consumed: usize,
    /// The part of the input that is data-segment bytes (the caller copies them), if any.
    pub data: Option<Range<usize>>,
    /// The milestone reached, if any, or the error met.
    pub result: Result<Option<Event>, ReadError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Header,
    Ahs,
    HeaderDigest,
    Data,
    Padding,
    DataDigest,
    Failed,
}

/// The resumable reader for one connection. About 1.1 KiB, no heap.
#[derive(Debug, Clone)]
pub struct PduReader {
    limits: ReaderLimits,
    /// Limits that take effect at the next header.
    next_limits: Option<ReaderLimits>,
    part: Part,
    /// Bytes of the current part received so far.
    filled: usize,
    bhs: [u8; BHS_LEN],
    ahs: [u8; MAX_AHS_LEN],
    ahs_len: usize,
    data_len: u32,
    small: [u8; DIGEST_LEN],
    crc: Crc32c,
}

impl PduReader {
    /// A reader waiting for the first header.
    pub fn new(limits: ReaderLimits) -> Self {
        Self {
            limits,
            next_limits: None,
            part: Part::Header,
            filled: 0,
            bhs: [0; BHS_LEN],
            ahs: [0; MAX_AHS_LEN],
            ahs_len: 0,
            data_len: 0,
            small: [0; DIGEST_LEN],
            crc: Crc32c::new(),
        }
    }

    /// Replaces the limits (e.g. after the final login response, to switch on digests and the
    /// negotiated MaxRecvDataSegmentLength). They take effect from the next PDU's header, so a
    /// call in the middle of a PDU cannot desynchronise the stream.
    pub fn set_limits(&mut self, limits: ReaderLimits) {
        if self.at_boundary() {
            self.limits = limits;
        } else {
            self.next_limits = Some(limits);
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &ReaderLimits {
        &self.limits
    }

    /// The BHS of the current (or last completed) PDU.
    pub fn bhs(&self) -> &[u8; BHS_LEN] {
        &self.bhs
    }

    /// The AHS of the current (or last completed) PDU.
    pub fn ahs(&self) -> &[u8] {
        self.ahs.get(..self.ahs_len).unwrap_or(&[])
    }

    /// Whether the reader sits at a PDU boundary (nothing of the next PDU received yet).
    pub fn at_boundary(&self) -> bool {
        self.part == Part::Header && self.filled == 0
    }

    /// What the reader needs next.
    pub fn want(&self) -> Want {
        match self.part {
            Part::Data => Want::Data {
                remaining: self.data_len.saturating_sub(self.filled_u32()),
                total: self.data_len,
            },
            Part::Failed => Want::Nothing,
            _ => Want::Scratch(self.part_len().saturating_sub(self.filled)),
        }
    }

    /// The unfilled part of the internal buffer to receive into when [`Want::Scratch`].
    /// Empty while data-segment bytes are wanted.
    pub fn scratch(&mut self) -> &mut [u8] {
        let (start, end) = (self.filled, self.part_len());
        let buf: &mut [u8] = match self.part {
            Part::Header => &mut self.bhs,
            Part::Ahs => &mut self.ahs,
            Part::HeaderDigest | Part::Padding | Part::DataDigest => &mut self.small,
            Part::Data | Part::Failed => return &mut [],
        };
        buf.get_mut(start..end).unwrap_or(&mut [])
    }

    /// Records that `n` bytes were received into [`PduReader::scratch`].
    pub fn scratch_filled(&mut self, n: usize) -> Result<Option<Event>, ReadError> {
        match self.part {
            Part::Failed => return Err(ReadError::Failed),
            Part::Data => {
                return Err(ReadError::WrongPart {
                    wanted: "data segment",
                    supplied: "scratch",
                });
            }
            _ => {}
        }
        let wanted = self.part_len().saturating_sub(self.filled);
        if n > wanted {
            return Err(ReadError::Overrun { got: n, wanted });
        }
        if self.part == Part::Padding {
            let start = self.filled;
            self.crc
                .update(self.small.get(start..start + n).unwrap_or(&[]));
        }
        self.filled += n;
        if self.filled < self.part_len() {
            return Ok(None);
        }
        self.finish_part()
    }

    /// Records data-segment bytes the caller received into its own buffer (they are needed
    /// for the data digest).
    pub fn data_received(&mut self, data: &[u8]) -> Result<Option<Event>, ReadError> {
        match self.part {
            Part::Data => {}
            Part::Failed => return Err(ReadError::Failed),
            _ => {
                return Err(ReadError::WrongPart {
                    wanted: "scratch",
                    supplied: "data segment",
                });
            }
        }
        let wanted =
            usize::try_from(self.data_len.saturating_sub(self.filled_u32())).unwrap_or(usize::MAX);
        if data.len() > wanted {
            return Err(ReadError::Overrun {
                got: data.len(),
                wanted,
            });
        }
        if self.limits.data_digest {
            self.crc.update(data);
        }
        self.filled += data.len();
        if self.filled_u32() < self.data_len {
            return Ok(None);
        }
        self.finish_part()
    }

    /// Consumes bytes from a stream. Stops after an event, an error or a run of data-segment bytes
    /// (reported as a range of `input`, not copied), so call it in a loop. `consumed` is exact
    /// even when `result` is an error (a data digest error consumes the digest).
    pub fn feed(&mut self, input: &[u8]) -> Fed {
        let mut consumed = 0;
        loop {
            let rest = input.get(consumed..).unwrap_or(&[]);
            let fed = |consumed, data, result| Fed {
                consumed,
                data,
                result,
            };
            match self.want() {
                Want::Nothing => return fed(consumed, None, Err(ReadError::Failed)),
                Want::Data { remaining, .. } => {
                    let n = rest
                        .len()
                        .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    if n == 0 {
                        return fed(consumed, None, Ok(None));
                    }
                    let result = self.data_received(rest.get(..n).unwrap_or(&[]));
                    return fed(consumed + n, Some(consumed..consumed + n), result);
                }
                Want::Scratch(_) => {
                    let dst = self.scratch();
                    let n = dst.len().min(rest.len());
                    if n == 0 {
                        return fed(consumed, None, Ok(None));
                    }
                    dst.get_mut(..n)
                        .unwrap_or(&mut [])
                        .copy_from_slice(rest.get(..n).unwrap_or(&[]));
                    consumed += n;
                    match self.scratch_filled(n) {
                        Ok(None) => {}
                        result => return fed(consumed, None, result),
                    }
                }
            }
        }
    }

    fn filled_u32(&self) -> u32 {
        u32::try_from(self.filled).unwrap_or(u32::MAX)
    }

    /// Length of the current scratch part.
    fn part_len(&self) -> usize {
        match self.part {
            Part::Header => BHS_LEN,
            Part::Ahs => self.ahs_len,
            Part::HeaderDigest | Part::DataDigest => DIGEST_LEN,
            Part::Padding => digest::pad_len(self.data_len),
            Part::Data | Part::Failed => 0,
        }
    }

    /// Moves to `part`; skips empty parts and reports events.
    fn enter(&mut self, part: Part) -> Result<Option<Event>, ReadError> {
        self.part = part;
        self.filled = 0;
        match part {
            Part::Ahs if self.ahs_len == 0 => self.enter(self.after_ahs()),
            Part::Data if self.data_len == 0 => {
                self.part = Part::Header;
                Ok(Some(Event::Complete))
            }
            Part::Data => {
                self.crc = Crc32c::new();
                Ok(Some(Event::Header {
                    data_len: self.data_len,
                }))
            }
            Part::Padding if digest::pad_len(self.data_len) == 0 => {
                self.enter(self.after_padding())
            }
            _ => Ok(None),
        }
    }

    fn after_ahs(&self) -> Part {
        if self.limits.header_digest {
            Part::HeaderDigest
        } else {
            Part::Data
        }
    }

    fn after_padding(&self) -> Part {
        if self.limits.data_digest {
            Part::DataDigest
        } else {
            Part::Header
        }
    }

    /// Handles a completed part.
    fn finish_part(&mut self) -> Result<Option<Event>, ReadError> {
        match self.part {
            Part::Header => self.on_header(),
            Part::Ahs => self.enter(self.after_ahs()),
            Part::HeaderDigest => {
                let computed =
                    digest::digest_from_wire(digest::header_digest(&self.bhs, self.ahs()));
                let received = digest::digest_from_wire(self.small);
                if computed != received {
                    return self.fail(ReadError::HeaderDigest { received, computed });
                }
                self.enter(Part::Data)
            }
            Part::Data => self
                .enter(Part::Padding)
                .map(|e| e.or_else(|| self.complete_if_done())),
            Part::Padding => {
                let next = self.after_padding();
                self.enter(next)
                    .map(|e| e.or_else(|| self.complete_if_done()))
            }
            Part::DataDigest => {
                self.part = Part::Header;
                self.filled = 0;
                let computed = self.crc.value();
                let received = digest::digest_from_wire(self.small);
                if computed != received {
                    return Err(ReadError::DataDigest { received, computed });
                }
                Ok(Some(Event::Complete))
            }
            Part::Failed => Err(ReadError::Failed),
        }
    }

    /// After data or padding: if the reader went back to `Header`, the PDU is complete.
    fn complete_if_done(&self) -> Option<Event> {
        (self.part == Part::Header).then_some(Event::Complete)
    }

    fn on_header(&mut self) -> Result<Option<Event>, ReadError> {
        if let Some(limits) = self.next_limits.take() {
            self.limits = limits;
        }
        let common = CommonHeader::parse(&self.bhs);
        let ahs_len = common.ahs_bytes();
        let max_ahs = self.limits.max_ahs_len.min(MAX_AHS_LEN);
        if ahs_len > max_ahs {
            return self.fail(ReadError::AhsTooLong {
                len: ahs_len,
                max: max_ahs,
            });
        }
        let max_data = self
            .limits
            .max_recv_data_segment_length
            .min(MAX_DATA_SEGMENT_LENGTH);
        if common.data_segment_length > max_data {
            return self.fail(ReadError::DataSegmentTooLong {
                len: common.data_segment_length,
                max: max_data,
            });
        }
        self.ahs_len = ahs_len;
        self.data_len = common.data_segment_length;
        self.enter(Part::Ahs)
    }

    fn fail(&mut self, err: ReadError) -> Result<Option<Event>, ReadError> {
        self.part = Part::Failed;
        self.filled = 0;
        Err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::pdu::{InitiatorPdu, NopOut, set_data_segment_length};
    use proptest::prelude::*;

    fn limits(hd: bool, dd: bool) -> ReaderLimits {
        ReaderLimits {
            header_digest: hd,
            data_digest: dd,
            ..ReaderLimits::login()
        }
    }

    /// Builds a NOP-Out PDU on the wire with `data`, optional AHS and digests.
    fn wire_pdu(data: &[u8], ahs_words: u8, hd: bool, dd: bool) -> Vec<u8> {
        let mut bhs = [0u8; BHS_LEN];
        NopOut {
            itt: 9,
            ttt: 0xffff_ffff,
            total_ahs_length: ahs_words,
            ..NopOut::default()
        }
        .encode(&mut bhs);
        set_data_segment_length(&mut bhs, data.len() as u32);
        let ahs = vec![0x5au8; usize::from(ahs_words) * 4];
        let mut out = bhs.to_vec();
        out.extend_from_slice(&ahs);
        if hd {
            out.extend_from_slice(&digest::header_digest(&bhs, &ahs));
        }
        out.extend_from_slice(data);
        out.extend_from_slice(digest::padding_for(data.len() as u32));
        if dd && !data.is_empty() {
            out.extend_from_slice(&digest::data_digest(&[data]));
        }
        out
    }

    /// Feeds `wire` in chunks of `chunk` bytes; returns the events, the data collected and the
    /// first error.
    fn run(
        r: &mut PduReader,
        wire: &[u8],
        chunk: usize,
    ) -> (Vec<Event>, Vec<u8>, Option<ReadError>) {
        let (mut events, mut data) = (Vec::new(), Vec::new());
        for piece in wire.chunks(chunk.max(1)) {
            let mut off = 0;
            while off < piece.len() {
                let fed = r.feed(&piece[off..]);
                if let Some(range) = fed.data.clone() {
                    data.extend_from_slice(&piece[off..][range]);
                }
                off += fed.consumed;
                match fed.result {
                    Ok(event) => events.extend(event),
                    Err(e) => return (events, data, Some(e)),
                }
            }
        }
        (events, data, None)
    }

    #[test]
    fn reads_pdus_with_and_without_data_and_digests() {
        for (hd, dd) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut r = PduReader::new(limits(hd, dd));
            let mut wire = wire_pdu(b"hello", 1, hd, dd);
            wire.extend(wire_pdu(b"", 0, hd, dd));
            wire.extend(wire_pdu(b"abcdefgh", 0, hd, dd));
            for chunk in [1, 3, 7, 1000] {
                let (events, data, err) = run(&mut r, &wire, chunk);
                assert_eq!(err, None, "hd={hd} dd={dd} chunk={chunk}");
                assert_eq!(
                    events,
                    vec![
                        Event::Header { data_len: 5 },
                        Event::Complete,
                        Event::Complete,
                        Event::Header { data_len: 8 },
                        Event::Complete
                    ]
                );
                assert_eq!(data, b"helloabcdefgh");
                assert!(r.at_boundary());
            }
            assert!(matches!(
                InitiatorPdu::decode(r.bhs()),
                Ok(InitiatorPdu::NopOut(_))
            ));
        }
    }

    #[test]
    fn exact_receive_api() {
        let wire = wire_pdu(b"0123456789", 2, true, true);
        let mut r = PduReader::new(limits(true, true));
        assert_eq!(r.want(), Want::Scratch(48));
        r.scratch().copy_from_slice(&wire[..48]);
        assert_eq!(r.scratch_filled(48), Ok(None));
        assert_eq!(r.want(), Want::Scratch(8));
        r.scratch().copy_from_slice(&wire[48..56]);
        assert_eq!(r.scratch_filled(8), Ok(None));
        r.scratch().copy_from_slice(&wire[56..60]);
        assert_eq!(
            r.scratch_filled(4),
            Ok(Some(Event::Header { data_len: 10 }))
        );
        assert_eq!(r.ahs(), &[0x5a; 8]);
        assert_eq!(
            r.want(),
            Want::Data {
                remaining: 10,
                total: 10
            }
        );
        assert_eq!(
            r.scratch_filled(1),
            Err(ReadError::WrongPart {
                wanted: "data segment",
                supplied: "scratch"
            })
        );
        let mut buf = [0u8; 10];
        buf.copy_from_slice(&wire[60..70]);
        assert_eq!(r.data_received(&buf[..4]), Ok(None));
        assert_eq!(r.data_received(&buf[4..]), Ok(None));
        assert_eq!(r.want(), Want::Scratch(2));
        r.scratch().copy_from_slice(&wire[70..72]);
        assert_eq!(r.scratch_filled(2), Ok(None));
        r.scratch().copy_from_slice(&wire[72..76]);
        assert_eq!(r.scratch_filled(4), Ok(Some(Event::Complete)));
        assert_eq!(
            r.scratch_filled(49),
            Err(ReadError::Overrun {
                got: 49,
                wanted: 48
            })
        );
    }

    #[test]
    fn data_segment_over_limit_names_field_and_is_fatal() {
        let mut r = PduReader::new(ReaderLimits::login());
        let mut bhs = [0u8; BHS_LEN];
        set_data_segment_length(&mut bhs, 8193);
        let err = r.feed(&bhs).result.unwrap_err();
        assert_eq!(
            err,
            ReadError::DataSegmentTooLong {
                len: 8193,
                max: 8192
            }
        );
        assert!(err.to_string().contains("DataSegmentLength"));
        assert!(err.is_fatal());
        assert_eq!(r.want(), Want::Nothing);
        assert_eq!(r.feed(&[0]).result, Err(ReadError::Failed));
    }

    #[test]
    fn new_limits_apply_from_the_next_header() {
        let mut r = PduReader::new(limits(false, false));
        let first = wire_pdu(b"abcd", 0, false, false);
        let (events, data, _) = run(&mut r, &first[..50], 100);
        assert_eq!(
            (events, data),
            (vec![Event::Header { data_len: 4 }], b"ab".to_vec())
        );
        r.set_limits(limits(true, true));
        let (events, data, err) = run(&mut r, &first[50..], 100);
        assert_eq!(
            (events, data, err),
            (vec![Event::Complete], b"cd".to_vec(), None)
        );
        let second = wire_pdu(b"xyz", 0, true, true);
        let (events, _, err) = run(&mut r, &second, 100);
        assert_eq!(err, None);
        assert_eq!(events, vec![Event::Header { data_len: 3 }, Event::Complete]);
        assert!(r.limits().data_digest);
    }

    #[test]
    fn ahs_over_limit() {
        let mut r = PduReader::new(ReaderLimits {
            max_ahs_len: 16,
            ..ReaderLimits::login()
        });
        let mut bhs = [0u8; BHS_LEN];
        bhs[4] = 5;
        let err = r.feed(&bhs).result.unwrap_err();
        assert_eq!(err, ReadError::AhsTooLong { len: 20, max: 16 });
        assert!(err.to_string().contains("TotalAHSLength"));
    }

    #[test]
    fn header_digest_error_is_fatal() {
        let mut wire = wire_pdu(b"x", 0, true, false);
        wire[20] ^= 1;
        let mut r = PduReader::new(limits(true, false));
        let (_, _, err) = run(&mut r, &wire, 100);
        let err = err.expect("digest error");
        assert!(matches!(err, ReadError::HeaderDigest { .. }));
        assert!(err.is_fatal());
    }

    #[test]
    fn data_digest_error_is_recoverable() {
        let mut wire = wire_pdu(b"payload", 0, false, true);
        wire[50] ^= 0x10;
        wire.extend(wire_pdu(b"ok", 0, false, true));
        let mut r = PduReader::new(limits(false, true));
        let (events, _, err) = run(&mut r, &wire, 5);
        assert_eq!(events, vec![Event::Header { data_len: 7 }]);
        let err = err.expect("digest error");
        assert!(matches!(err, ReadError::DataDigest { .. }) && !err.is_fatal());
        assert_eq!(CommonHeader::parse(r.bhs()).itt, 9);
        // The reader resumes with the next PDU.
        let start = wire.len() - wire_pdu(b"ok", 0, false, true).len();
        let (events, data, err) = run(&mut r, &wire[start..], 3);
        assert_eq!(
            (events, data, err),
            (
                vec![Event::Header { data_len: 2 }, Event::Complete],
                b"ok".to_vec(),
                None
            )
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_nor_exceed_limits(
            bytes in proptest::collection::vec(any::<u8>(), 0..4096),
            chunk in 1usize..100,
            hd in any::<bool>(),
            dd in any::<bool>(),
            max in 0u32..2048,
        ) {
            let lim = ReaderLimits { max_recv_data_segment_length: max, max_ahs_len: 64, header_digest: hd, data_digest: dd };
            let mut r = PduReader::new(lim);
            for piece in bytes.chunks(chunk) {
                let mut off = 0;
                while off < piece.len() {
                    match r.want() {
                        Want::Scratch(n) => prop_assert!(n <= MAX_AHS_LEN.max(BHS_LEN) && (r.part != Part::Ahs || n <= 64)),
                        Want::Data { remaining, total } => prop_assert!(remaining <= total && total <= max),
                        Want::Nothing => {}
                    }
                    let fed = r.feed(&piece[off..]);
                    match fed.result {
                        Err(e) if e.is_fatal() => break,
                        _ => prop_assert!(fed.consumed > 0),
                    }
                    off += fed.consumed;
                }
            }
        }
    }
}
