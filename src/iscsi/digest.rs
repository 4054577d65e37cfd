//! CRC32C header and data digests (RFC 7143 section 13.1, Appendix A) and 4-byte padding.
//!
//! The digest is the standard CRC32C (Castagnoli) value; on the wire it is sent least significant
//! byte first (RFC 3720 B.4 lists 32 zero bytes as digest bytes `aa 36 91 8a`).

/// Length of a header or data digest on the wire.
pub const DIGEST_LEN: usize = 4;

/// Zero bytes used to pad a data segment to a 4-byte boundary.
static PADDING: [u8; 3] = [0; 3];

/// The data segment length rounded up to a multiple of 4, or `None` on overflow.
pub fn padded_len(len: u32) -> Option<u32> {
    len.checked_add(3).map(|l| l & !3)
}

/// Number of pad bytes that follow a data segment of `len` bytes (0..=3).
pub fn pad_len(len: u32) -> usize {
    // The value is < 4, so the cast cannot truncate.
    ((4 - (len % 4)) % 4) as usize
}

/// The pad bytes to send after a data segment of `len` bytes.
pub fn padding_for(len: u32) -> &'static [u8] {
    PADDING.get(..pad_len(len)).unwrap_or(&[])
}

/// An incremental CRC32C computation over several slices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Crc32c(u32);

impl Crc32c {
    /// A fresh computation.
    pub fn new() -> Self {
        Self(0)
    }

    /// Feeds more bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.0 = crc32c::crc32c_append(self.0, data);
    }

    /// The CRC32C value of everything fed so far.
    pub fn value(&self) -> u32 {
        self.0
    }

    /// The digest bytes as they appear on the wire.
    pub fn to_wire(&self) -> [u8; DIGEST_LEN] {
        self.0.to_le_bytes()
    }
}

/// Reads a digest received from the wire.
pub fn digest_from_wire(bytes: [u8; DIGEST_LEN]) -> u32 {
    u32::from_le_bytes(bytes)
}

/// The header digest of a BHS plus its AHS, in wire order.
pub fn header_digest(bhs: &[u8], ahs: &[u8]) -> [u8; DIGEST_LEN] {
    let mut crc = Crc32c::new();
    crc.update(bhs);
    crc.update(ahs);
    crc.to_wire()
}

/// The data digest of a data segment given as consecutive pieces (e.g. an iovec), including the
/// padding that follows it, in wire order.
pub fn data_digest(pieces: &[&[u8]]) -> [u8; DIGEST_LEN] {
    let mut crc = Crc32c::new();
    let mut total: u64 = 0;
    for piece in pieces {
        crc.update(piece);
        total = total.wrapping_add(piece.len() as u64);
    }
    crc.update(PADDING.get(..pad_len((total % 4) as u32)).unwrap_or(&[]));
    crc.to_wire()
}

/// A BHS (plus AHS) followed by its header digest, ready to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderWithDigest {
    /// The header digest bytes to send right after the header.
    pub digest: [u8; DIGEST_LEN],
}

impl HeaderWithDigest {
    /// Computes the digest of a BHS and its AHS.
    pub fn new(bhs: &[u8], ahs: &[u8]) -> Self {
        Self {
            digest: header_digest(bhs, ahs),
        }
    }
}

/// The bytes sent after a data segment: padding, then the data digest when enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataTrailer {
    bytes: [u8; 3 + DIGEST_LEN],
    len: usize,
}

impl DataTrailer {
    /// The trailer of a data segment given as consecutive pieces (e.g. an iovec). An empty
    /// segment has no trailer (and no digest).
    pub fn new(pieces: &[&[u8]], with_digest: bool) -> Self {
        let total: u64 = pieces.iter().map(|p| p.len() as u64).sum();
        let pad = pad_len((total % 4) as u32);
        let mut bytes = [0u8; 3 + DIGEST_LEN];
        let mut len = pad;
        if with_digest && total > 0 {
            let digest = data_digest(pieces);
            bytes[pad..pad + DIGEST_LEN].copy_from_slice(&digest);
            len += DIGEST_LEN;
        }
        Self { bytes, len }
    }

    /// The bytes to send.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3720_b4_vectors() {
        // RFC 3720 Appendix B.4: 32 bytes of zeros, of 0xff, incrementing, decrementing.
        assert_eq!(header_digest(&[0u8; 32], &[]), [0xaa, 0x36, 0x91, 0x8a]);
        assert_eq!(header_digest(&[0xffu8; 32], &[]), [0x43, 0xab, 0xa8, 0x62]);
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(header_digest(&inc, &[]), [0x4e, 0x79, 0xdd, 0x46]);
        let dec: Vec<u8> = (0u8..32).rev().collect();
        assert_eq!(header_digest(&dec, &[]), [0x5c, 0xdb, 0x3f, 0x11]);
    }

    #[test]
    fn incremental_equals_one_shot() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let mut crc = Crc32c::new();
        for chunk in data.chunks(13) {
            crc.update(chunk);
        }
        assert_eq!(crc.value(), crc32c::crc32c(&data));
        assert_eq!(digest_from_wire(crc.to_wire()), crc.value());
    }

    #[test]
    fn padding_helpers() {
        assert_eq!(padded_len(0), Some(0));
        assert_eq!(padded_len(5), Some(8));
        assert_eq!(padded_len(8), Some(8));
        assert_eq!(padded_len(u32::MAX), None);
        assert_eq!(pad_len(5), 3);
        assert_eq!(padding_for(6), &[0, 0]);
        assert_eq!(padding_for(12), &[] as &[u8]);
    }

    #[test]
    fn trailers() {
        assert_eq!(DataTrailer::new(&[b"abcd"], false).as_bytes(), &[] as &[u8]);
        assert_eq!(DataTrailer::new(&[b"ab", b"c"], false).as_bytes(), &[0]);
        assert_eq!(DataTrailer::new(&[], true).as_bytes(), &[] as &[u8]);
        let t = DataTrailer::new(&[b"abcde"], true);
        assert_eq!(&t.as_bytes()[..3], &[0, 0, 0]);
        assert_eq!(&t.as_bytes()[3..], &data_digest(&[b"abcde"]));
        assert_eq!(
            HeaderWithDigest::new(&[0u8; 32], &[]).digest,
            [0xaa, 0x36, 0x91, 0x8a]
        );
    }

    #[test]
    fn data_digest_covers_padding() {
        let split = data_digest(&[b"abc", b"de"]);
        let whole = header_digest(b"abcde\0\0\0", &[]);
        assert_eq!(split, whole);
    }
}
