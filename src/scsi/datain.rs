//! The one writer for data-in buffers: it writes into a caller-provided buffer, silently
//! drops bytes past the allocation length (or the buffer end), and keeps counting so that
//! length fields can report the full, untruncated size.

/// A data-in writer truncating at `min(allocation length, buffer length)`.
#[derive(Debug)]
pub struct DataIn<'a> {
    buf: &'a mut [u8],
    limit: usize,
    pos: usize,
}

impl<'a> DataIn<'a> {
    /// A writer over `buf` that keeps at most `alloc_len` bytes.
    pub fn new(buf: &'a mut [u8], alloc_len: usize) -> Self {
        let limit = alloc_len.min(buf.len());
        Self { buf, limit, pos: 0 }
    }

    /// The logical position: bytes written so far, counting the truncated ones.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes actually stored in the buffer (the data-in length to transfer).
    pub fn stored(&self) -> usize {
        self.pos.min(self.limit)
    }

    /// Appends bytes, storing only the part under the limit.
    pub fn put(&mut self, bytes: &[u8]) {
        if self.pos < self.limit {
            let room = self.limit - self.pos;
            let n = room.min(bytes.len());
            if let (Some(dst), Some(src)) =
                (self.buf.get_mut(self.pos..self.pos + n), bytes.get(..n))
            {
                dst.copy_from_slice(src);
            }
        }
        self.pos = self.pos.saturating_add(bytes.len());
    }

    /// Appends one byte.
    pub fn u8(&mut self, v: u8) {
        self.put(&[v]);
    }

    /// Appends a big-endian u16.
    pub fn u16(&mut self, v: u16) {
        self.put(&v.to_be_bytes());
    }

    /// Appends a big-endian u32.
    pub fn u32(&mut self, v: u32) {
        self.put(&v.to_be_bytes());
    }

    /// Appends a big-endian u64.
    pub fn u64(&mut self, v: u64) {
        self.put(&v.to_be_bytes());
    }

    /// Appends `n` zero bytes.
    pub fn zeros(&mut self, n: usize) {
        const Z: [u8; 64] = [0; 64];
        let mut left = n;
        while left > 0 {
            let k = left.min(Z.len());
            self.put(&Z[..k]);
            left -= k;
        }
    }

    /// Appends `s` as an ASCII field of exactly `width` bytes: non-printable characters become
    /// `_`, longer input is cut, shorter input is padded with spaces (SPC-4 4.4.1).
    pub fn ascii_field(&mut self, s: &str, width: usize) {
        let mut n = 0;
        for b in s.bytes().take(width) {
            self.u8(printable(b));
            n += 1;
        }
        for _ in n..width {
            self.u8(b' ');
        }
    }

    /// Overwrites already written bytes at `at` (used to back-fill length fields); bytes past
    /// the limit are dropped.
    pub fn patch(&mut self, at: usize, bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate() {
            let Some(idx) = at.checked_add(i) else { return };
            if idx < self.limit
                && let Some(slot) = self.buf.get_mut(idx)
            {
                *slot = b;
            }
        }
    }

    /// Back-fills a big-endian u16 at `at`.
    pub fn patch_u16(&mut self, at: usize, v: u16) {
        self.patch(at, &v.to_be_bytes());
    }

    /// Back-fills a big-endian u32 at `at`.
    pub fn patch_u32(&mut self, at: usize, v: u32) {
        self.patch(at, &v.to_be_bytes());
    }

    /// Bytes written since `start`, saturated to `u16` (for length fields).
    pub fn len_since_u16(&self, start: usize) -> u16 {
        u16::try_from(self.pos.saturating_sub(start)).unwrap_or(u16::MAX)
    }

    /// Bytes written since `start`, saturated to `u32`.
    pub fn len_since_u32(&self, start: usize) -> u32 {
        u32::try_from(self.pos.saturating_sub(start)).unwrap_or(u32::MAX)
    }
}

/// Maps a byte to a printable ASCII character (20h..7Eh), `_` otherwise.
pub fn printable(b: u8) -> u8 {
    if (0x20..=0x7E).contains(&b) { b } else { b'_' }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_at_allocation_length_but_counts() {
        let mut buf = [0xAAu8; 8];
        let mut w = DataIn::new(&mut buf, 3);
        w.u32(0x0102_0304);
        w.u8(5);
        assert_eq!(w.pos(), 5);
        assert_eq!(w.stored(), 3);
        w.patch_u16(2, 0xFFEE);
        assert_eq!(buf, [1, 2, 0xFF, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA]);
    }

    #[test]
    fn truncates_at_buffer_length() {
        let mut buf = [0u8; 2];
        let mut w = DataIn::new(&mut buf, 100);
        w.zeros(70);
        assert_eq!((w.pos(), w.stored()), (70, 2));
    }

    #[test]
    fn ascii_field_pads_and_sanitizes() {
        let mut buf = [0u8; 6];
        let mut w = DataIn::new(&mut buf, 6);
        w.ascii_field("a\u{1}", 4);
        w.ascii_field("xyz", 2);
        assert_eq!(&buf, b"a_  xy");
    }
}
