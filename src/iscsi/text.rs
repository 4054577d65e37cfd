//! Login and Text data segments: `key=value\0` pairs (RFC 7143 section 6.1).
//!
//! [`TextList::parse`] validates a whole segment once (lengths, key characters, UTF-8 values,
//! pair count, repeated keys) without allocating, then iterates over it. [`TextAccumulator`]
//! joins segments split by the C (continue) bit under a hard cap. [`OutgoingText`] collects our
//! response pairs and hands them out in chunks of at most the peer's MaxRecvDataSegmentLength.

use std::fmt;

use thiserror::Error;

/// Longest key name (RFC 7143 6.1: at most 63 bytes).
pub const MAX_KEY_LEN: usize = 63;
/// Longest value accepted (RFC 7143 6.1: 8192 bytes for the longest values).
pub const MAX_VALUE_LEN: usize = 8192;
/// Most pairs accepted in one text.
pub const MAX_PAIRS: usize = 256;
/// Default hard cap on a text joined across PDUs with the C bit.
pub const DEFAULT_TEXT_CAP: usize = 64 * 1024;

/// A key name copied out of a text for error reports (no allocation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyName {
    bytes: [u8; MAX_KEY_LEN],
    len: u8,
}

impl KeyName {
    /// Copies (at most [`MAX_KEY_LEN`] bytes of) `key`.
    pub fn new(key: &str) -> Self {
        let mut bytes = [0u8; MAX_KEY_LEN];
        let len = key.len().min(MAX_KEY_LEN);
        bytes[..len].copy_from_slice(&key.as_bytes()[..len]);
        Self {
            bytes,
            len: len as u8,
        }
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        let raw = self.bytes.get(..usize::from(self.len)).unwrap_or(&[]);
        std::str::from_utf8(raw).unwrap_or("?")
    }
}

impl fmt::Debug for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors in a text segment; `offset` is the byte offset of the offending pair in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TextError {
    /// A pair has no `=`.
    #[error("text offset {offset}: pair without '='")]
    MissingEquals {
        /// Offset of the pair.
        offset: usize,
    },
    /// A key is empty.
    #[error("text offset {offset}: empty key")]
    EmptyKey {
        /// Offset of the pair.
        offset: usize,
    },
    /// A key is longer than 63 bytes.
    #[error("text offset {offset}: key of {len} bytes exceeds {MAX_KEY_LEN}")]
    KeyTooLong {
        /// Offset of the pair.
        offset: usize,
        /// The key length.
        len: usize,
    },
    /// A key holds a character outside RFC 7143 6.1 (`a-zA-Z0-9.-+@_`).
    #[error("text offset {offset}: invalid byte {byte:#04x} in key")]
    InvalidKeyChar {
        /// Offset of the byte.
        offset: usize,
        /// The byte.
        byte: u8,
    },
    /// A value is longer than 8192 bytes.
    #[error("text offset {offset}: value of key {key} has {len} bytes, more than {MAX_VALUE_LEN}")]
    ValueTooLong {
        /// Offset of the pair.
        offset: usize,
        /// The key.
        key: KeyName,
        /// The value length.
        len: usize,
    },
    /// A value is not UTF-8.
    #[error("text offset {offset}: value of key {key} is not UTF-8")]
    ValueNotUtf8 {
        /// Offset of the pair.
        offset: usize,
        /// The key.
        key: KeyName,
    },
    /// The last pair is not followed by a NUL.
    #[error("text offset {offset}: last pair not terminated by NUL")]
    Unterminated {
        /// Offset of the pair.
        offset: usize,
    },
    /// More than 256 pairs.
    #[error("text holds more than {MAX_PAIRS} pairs")]
    TooManyPairs,
    /// A key appears twice (a protocol error, RFC 7143 6.1).
    #[error("text offset {offset}: key {key} repeated")]
    DuplicateKey {
        /// Offset of the second occurrence.
        offset: usize,
        /// The key.
        key: KeyName,
    },
    /// The joined text would exceed the cap.
    #[error("text of {len} bytes exceeds the cap of {cap}")]
    TextTooLong {
        /// Length reached.
        len: usize,
        /// The cap.
        cap: usize,
    },
    /// Our response does not fit the output buffer.
    #[error("response buffer full: need {needed} bytes, {available} available")]
    BufferFull {
        /// Bytes needed for the pair.
        needed: usize,
        /// Bytes left.
        available: usize,
    },
}

/// Whether `b` may appear in a key name (RFC 7143 6.1: letters, digits, `.`, `-`, `+`, `@`, `_`).
pub fn is_key_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+' | b'@' | b'_')
}

/// Checks a key name, reporting offsets relative to `base`.
fn check_key(key: &[u8], base: usize) -> Result<(), TextError> {
    if key.is_empty() {
        return Err(TextError::EmptyKey { offset: base });
    }
    if key.len() > MAX_KEY_LEN {
        return Err(TextError::KeyTooLong {
            offset: base,
            len: key.len(),
        });
    }
    // Public extension keys start with "X#" (RFC 7143 13.5.2); '#' is valid only there.
    let skip = if key.starts_with(b"X#") { 2 } else { 0 };
    let bad = key
        .iter()
        .enumerate()
        .skip(skip)
        .find(|(_, b)| !is_key_char(**b));
    match bad {
        Some((i, byte)) => Err(TextError::InvalidKeyChar {
            offset: base + i,
            byte: *byte,
        }),
        None => Ok(()),
    }
}

/// One `key=value` pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair<'a> {
    /// The key.
    pub key: &'a str,
    /// The value (may be empty).
    pub value: &'a str,
    /// Byte offset of the pair in the text.
    pub offset: usize,
}

/// Splits a text into raw pairs without validation; the terminator check is done by the caller.
fn raw_pairs(text: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let body = trim_trailing_nuls(text);
    let mut offset = 0usize;
    body.split(|b| *b == 0).map(move |piece| {
        let at = offset;
        offset += piece.len() + 1;
        (at, piece)
    })
}

/// The text without the NULs that end it (the terminator of the last pair and any excess).
fn trim_trailing_nuls(text: &[u8]) -> &[u8] {
    let end = text.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    text.get(..end).unwrap_or(&[])
}

/// Validates and splits one pair.
fn parse_pair(offset: usize, raw: &[u8]) -> Result<Pair<'_>, TextError> {
    let eq = raw
        .iter()
        .position(|b| *b == b'=')
        .ok_or(TextError::MissingEquals { offset })?;
    let (key, value) = (
        raw.get(..eq).unwrap_or(&[]),
        raw.get(eq + 1..).unwrap_or(&[]),
    );
    check_key(key, offset)?;
    // check_key admitted only ASCII.
    let key = std::str::from_utf8(key).map_err(|_| TextError::EmptyKey { offset })?;
    if value.len() > MAX_VALUE_LEN {
        return Err(TextError::ValueTooLong {
            offset,
            key: KeyName::new(key),
            len: value.len(),
        });
    }
    let value = std::str::from_utf8(value).map_err(|_| TextError::ValueNotUtf8 {
        offset,
        key: KeyName::new(key),
    })?;
    Ok(Pair { key, value, offset })
}

/// A validated text segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextList<'a> {
    text: &'a [u8],
    count: usize,
}

impl<'a> TextList<'a> {
    /// Validates `text` (a whole data segment, without padding). The repeated-key check
    /// compares each key with the earlier keys (at most [`MAX_PAIRS`] of at most 63 bytes,
    /// held on the stack), never rescanning the values.
    pub fn parse(text: &'a [u8]) -> Result<Self, TextError> {
        let body = trim_trailing_nuls(text);
        if body.len() == text.len() && !text.is_empty() {
            let offset = text.iter().rposition(|b| *b == 0).map_or(0, |i| i + 1);
            return Err(TextError::Unterminated { offset });
        }
        let mut count = 0;
        if body.is_empty() {
            return Ok(Self { text, count });
        }
        let mut keys: [&[u8]; MAX_PAIRS] = [&[]; MAX_PAIRS];
        for (offset, raw) in raw_pairs(text) {
            let pair = parse_pair(offset, raw)?;
            let key = pair.key.as_bytes();
            if count >= MAX_PAIRS {
                return Err(TextError::TooManyPairs);
            }
            if keys.get(..count).unwrap_or(&[]).contains(&key) {
                return Err(TextError::DuplicateKey {
                    offset,
                    key: KeyName::new(pair.key),
                });
            }
            if let Some(slot) = keys.get_mut(count) {
                *slot = key;
            }
            count += 1;
        }
        Ok(Self { text, count })
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the text holds no pair.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = Pair<'a>> + 'a {
        raw_pairs(self.text)
            .take(self.count)
            .filter_map(|(o, r)| parse_pair(o, r).ok())
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.iter().find(|p| p.key == key).map(|p| p.value)
    }
}

/// Appends `key=value\0` at `*len` in `buf`.
fn write_pair(
    buf: &mut [u8],
    len: &mut usize,
    key: &str,
    value: fmt::Arguments<'_>,
) -> Result<(), TextError> {
    check_key(key.as_bytes(), *len)?;
    let mut w = SliceWriter {
        buf,
        pos: *len,
        overflow: false,
    };
    let ok = fmt::write(&mut w, format_args!("{key}={value}\0")).is_ok() && !w.overflow;
    if !ok {
        let available = w.buf.len().saturating_sub(*len);
        return Err(TextError::BufferFull {
            needed: w.pos - *len,
            available,
        });
    }
    *len = w.pos;
    Ok(())
}

/// A `fmt::Write` into a fixed slice that records overflow (and counts the bytes needed).
struct SliceWriter<'a> {
    buf: &'a mut [u8],
    pos: usize,
    overflow: bool,
}

impl fmt::Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.pos + s.len();
        match self.buf.get_mut(self.pos..end) {
            Some(dst) if !self.overflow => dst.copy_from_slice(s.as_bytes()),
            _ => self.overflow = true,
        }
        // Keep counting past the end so that the error reports the bytes needed.
        self.pos = end;
        Ok(())
    }
}

/// Somewhere response pairs can be written: [`TextWriter`] or [`OutgoingText`].
pub trait TextSink {
    /// Appends `key=<formatted value>\0`; on error nothing is written.
    fn push_fmt(&mut self, key: &str, value: fmt::Arguments<'_>) -> Result<(), TextError>;

    /// Appends `key=value\0`; on error nothing is written.
    fn push(&mut self, key: &str, value: &str) -> Result<(), TextError> {
        self.push_fmt(key, format_args!("{value}"))
    }
}

impl TextSink for TextWriter<'_> {
    fn push_fmt(&mut self, key: &str, value: fmt::Arguments<'_>) -> Result<(), TextError> {
        write_pair(self.buf, &mut self.len, key, value)
    }
}

impl TextSink for OutgoingText {
    fn push_fmt(&mut self, key: &str, value: fmt::Arguments<'_>) -> Result<(), TextError> {
        write_pair(&mut self.buf, &mut self.len, key, value)
    }
}

/// Serializes response pairs into a caller buffer.
#[derive(Debug)]
pub struct TextWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> TextWriter<'a> {
    /// A writer filling `buf` from its start.
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, len: 0 }
    }

    /// The text written so far.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Joins an initiator's text split across PDUs with the C bit, under a hard cap.
#[derive(Debug)]
pub struct TextAccumulator {
    buf: Vec<u8>,
    cap: usize,
    complete: bool,
}

impl TextAccumulator {
    /// An accumulator holding at most `cap` bytes (allocated once, up front).
    pub fn new(cap: usize) -> Self {
        Self {
            buf: Vec::with_capacity(cap),
            cap,
            complete: false,
        }
    }

    /// Adds the data segment of one PDU. Returns the whole text once a PDU arrives with the C
    /// bit clear; a later call starts a new text.
    pub fn append(&mut self, segment: &[u8], cont: bool) -> Result<Option<&[u8]>, TextError> {
        if self.complete {
            self.reset();
        }
        let len = self.buf.len().saturating_add(segment.len());
        if len > self.cap {
            self.reset();
            return Err(TextError::TextTooLong { len, cap: self.cap });
        }
        self.buf.extend_from_slice(segment);
        if cont {
            return Ok(None);
        }
        self.complete = true;
        Ok(Some(&self.buf))
    }

    /// Drops any partial text.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.complete = false;
    }
}

/// One chunk of an outgoing text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk<'a> {
    /// The bytes to send as the data segment.
    pub bytes: &'a [u8],
    /// Whether to set the C bit (more text follows in later PDUs).
    pub cont: bool,
}

/// Our response text, built once and sent in chunks of at most the peer's
/// MaxRecvDataSegmentLength (the initiator asks for each further chunk with an empty request).
#[derive(Debug)]
pub struct OutgoingText {
    buf: Box<[u8]>,
    len: usize,
    sent: usize,
    finished: bool,
}

impl OutgoingText {
    /// An empty response with room for `cap` bytes (allocated once, up front).
    pub fn new(cap: usize) -> Self {
        Self {
            buf: vec![0u8; cap].into_boxed_slice(),
            len: 0,
            sent: 0,
            finished: false,
        }
    }

    /// The whole response text.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }

    /// Whether every chunk was handed out.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The next chunk to send, at most `max` bytes; `None` once the last chunk was handed out.
    /// An empty response yields one empty final chunk.
    pub fn next_chunk(&mut self, max: u32) -> Option<Chunk<'_>> {
        if self.finished {
            return None;
        }
        let max = usize::try_from(max).unwrap_or(usize::MAX).max(1);
        let start = self.sent;
        let end = self.len.min(start.saturating_add(max));
        self.sent = end;
        let cont = end < self.len;
        self.finished = !cont;
        Some(Chunk {
            bytes: self.buf.get(start..end).unwrap_or(&[]),
            cont,
        })
    }

    /// Empties the response for reuse.
    pub fn clear(&mut self) {
        self.len = 0;
        self.sent = 0;
        self.finished = false;
    }
}

/// A text of `pairs` pairs (at least 30): 30 with values of the longest length first, then
/// short ones. The worst case for a repeated-key check that rescans the text (a test and a
/// benchmark use it).
#[doc(hidden)]
pub fn long_values_first(pairs: usize) -> Vec<u8> {
    let mut text = Vec::new();
    for i in 0..pairs {
        if i < 30 {
            text.extend_from_slice(format!("K{i}=").as_bytes());
            text.extend(std::iter::repeat_n(b'a', MAX_VALUE_LEN));
        } else {
            text.extend_from_slice(format!("Y{i}=").as_bytes());
        }
        text.push(0);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Long values first, then many short pairs: every pair is checked against the keys before
    /// it (a repeat after the long values is still found). The check compares keys instead of
    /// splitting the text again for each pair: with 8 KiB values first that was 10 ms per
    /// 64 KiB login text; `benches/iscsi_pdu.rs` (`login_text/parse_256_keys_long_values_first`)
    /// measures it.
    #[test]
    fn repeated_keys_are_found_after_long_values() {
        let text = long_values_first(MAX_PAIRS);
        assert_eq!(TextList::parse(&text).map(|l| l.len()), Ok(MAX_PAIRS));
        let mut repeated = long_values_first(MAX_PAIRS - 1);
        repeated.extend_from_slice(b"K3=x\0");
        assert!(matches!(
            TextList::parse(&repeated),
            Err(TextError::DuplicateKey { .. })
        ));
    }

    #[test]
    fn parses_login_keys() {
        let text = b"InitiatorName=iqn.2005-03.org.open-iscsi:abc\0SessionType=Normal\0TargetName=iqn.2026-01.com.example:t1\0AuthMethod=CHAP,None\0";
        let list = TextList::parse(text).unwrap();
        assert_eq!(list.len(), 4);
        assert_eq!(list.get("AuthMethod"), Some("CHAP,None"));
        assert_eq!(list.get("SessionType"), Some("Normal"));
        assert_eq!(list.get("Missing"), None);
        let offsets: Vec<usize> = list.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, vec![0, 45, 64, 102]);
    }

    #[test]
    fn empty_and_trailing_nuls() {
        assert!(TextList::parse(b"").unwrap().is_empty());
        assert_eq!(TextList::parse(b"A=1\0\0\0").unwrap().len(), 1);
        assert_eq!(TextList::parse(b"A=\0").unwrap().get("A"), Some(""));
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(
            TextList::parse(b"A=1\0B=2"),
            Err(TextError::Unterminated { offset: 4 })
        );
        assert_eq!(
            TextList::parse(b"A=1\0B\0"),
            Err(TextError::MissingEquals { offset: 4 })
        );
        assert_eq!(
            TextList::parse(b"=1\0"),
            Err(TextError::EmptyKey { offset: 0 })
        );
        assert_eq!(
            TextList::parse(b"A=1\0\0B=2\0"),
            Err(TextError::MissingEquals { offset: 4 })
        );
        assert_eq!(
            TextList::parse(b"A=1\0K y=2\0"),
            Err(TextError::InvalidKeyChar {
                offset: 5,
                byte: b' '
            })
        );
        let err = TextList::parse(b"A=1\0B=2\0A=3\0").unwrap_err();
        assert_eq!(
            err,
            TextError::DuplicateKey {
                offset: 8,
                key: KeyName::new("A")
            }
        );
        assert_eq!(err.to_string(), "text offset 8: key A repeated");
        assert!(matches!(
            TextList::parse(b"A=\xff\0"),
            Err(TextError::ValueNotUtf8 { .. })
        ));
        assert_eq!(TextList::parse(b"X#NodeArchitecture=x\0").unwrap().len(), 1);
        assert_eq!(
            TextList::parse(b"A#B=1\0"),
            Err(TextError::InvalidKeyChar {
                offset: 1,
                byte: b'#'
            })
        );
    }

    #[test]
    fn enforces_limits() {
        let long_key = format!("{}=1\0", "K".repeat(64));
        assert_eq!(
            TextList::parse(long_key.as_bytes()),
            Err(TextError::KeyTooLong { offset: 0, len: 64 })
        );
        let ok_key = format!("{}=1\0", "K".repeat(63));
        assert!(TextList::parse(ok_key.as_bytes()).is_ok());
        let long_value = format!("A={}\0", "v".repeat(8193));
        assert!(matches!(
            TextList::parse(long_value.as_bytes()),
            Err(TextError::ValueTooLong { len: 8193, .. })
        ));
        let many: String = (0..257).map(|i| format!("K{i}=1\0")).collect();
        assert_eq!(
            TextList::parse(many.as_bytes()),
            Err(TextError::TooManyPairs)
        );
        let max: String = (0..256).map(|i| format!("K{i}=1\0")).collect();
        assert_eq!(TextList::parse(max.as_bytes()).unwrap().len(), 256);
    }

    #[test]
    fn writer_serializes_and_reports_full() {
        let mut buf = [0u8; 30];
        let mut w = TextWriter::new(&mut buf);
        w.push("HeaderDigest", "None").unwrap();
        w.push_fmt("MaxR", format_args!("{}", 512)).unwrap();
        assert_eq!(w.as_bytes(), b"HeaderDigest=None\0MaxR=512\0");
        let before = w.len();
        assert_eq!(
            w.push("DataDigest", "None"),
            Err(TextError::BufferFull {
                needed: 16,
                available: 3
            })
        );
        assert_eq!(w.len(), before);
        assert!(matches!(
            w.push("bad key", "x"),
            Err(TextError::InvalidKeyChar { .. })
        ));
    }

    #[test]
    fn accumulator_joins_and_caps() {
        let mut acc = TextAccumulator::new(16);
        assert_eq!(acc.append(b"Key=va", true), Ok(None));
        assert_eq!(acc.append(b"lue\0", false), Ok(Some(&b"Key=value\0"[..])));
        assert_eq!(acc.append(b"B=1\0", false), Ok(Some(&b"B=1\0"[..])));
        assert_eq!(acc.append(&[b'x'; 10], true), Ok(None));
        assert_eq!(
            acc.append(&[b'x'; 7], true),
            Err(TextError::TextTooLong { len: 17, cap: 16 })
        );
        assert_eq!(acc.append(b"C=2\0", false), Ok(Some(&b"C=2\0"[..])));
    }

    #[test]
    fn outgoing_text_chunks() {
        let mut out = OutgoingText::new(64);
        out.push("TargetName", "iqn.x:y").unwrap();
        out.push("TargetAddress", "10.0.0.1:3260,1").unwrap();
        let total = out.as_bytes().to_vec();
        let mut joined = Vec::new();
        let mut conts = Vec::new();
        while let Some(chunk) = out.next_chunk(10) {
            assert!(chunk.bytes.len() <= 10);
            joined.extend_from_slice(chunk.bytes);
            conts.push(chunk.cont);
        }
        assert_eq!(joined, total);
        assert_eq!(conts.last(), Some(&false));
        assert!(conts[..conts.len() - 1].iter().all(|c| *c));
        out.clear();
        assert_eq!(
            out.next_chunk(10),
            Some(Chunk {
                bytes: &[],
                cont: false
            })
        );
        assert_eq!(out.next_chunk(10), None);
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            if let Ok(list) = TextList::parse(&bytes) {
                prop_assert!(list.len() <= MAX_PAIRS);
                prop_assert_eq!(list.iter().count(), list.len());
            }
        }

        #[test]
        fn writer_output_parses_back(
            pairs in proptest::collection::btree_map("[A-Za-z][A-Za-z0-9._@+-]{0,20}", "[ -~]{0,40}", 0..20)
        ) {
            let mut buf = vec![0u8; 4096];
            let mut w = TextWriter::new(&mut buf);
            for (k, v) in &pairs {
                w.push(k, v).unwrap();
            }
            let list = TextList::parse(w.as_bytes()).unwrap();
            prop_assert_eq!(list.len(), pairs.len());
            for (k, v) in &pairs {
                prop_assert_eq!(list.get(k), Some(v.as_str()));
            }
        }
    }
}
