//! The iSCSI transport (RFC 7143): pure codecs and small state machines, no I/O (but
//! [`initiator`]).
//!
//! - [`pdu`]: the 48-byte Basic Header Segment, typed decode of initiator PDUs, encode of
//!   target PDUs.
//! - [`reader`]: a resumable PDU reader driven by receive completions.
//! - [`digest`]: CRC32C header/data digests and padding.
//! - [`text`]: `key=value` text segments, the continue bit, response splitting.
//! - [`params`]: the login/text key table and the target-side negotiator.
//! - [`chap`]: CHAP (MD5) authentication, one-way and mutual.
//! - [`initiator`]: a minimal blocking initiator over TCP, for tests and tools.

pub mod chap;
pub mod digest;
pub mod initiator;
pub mod params;
pub mod pdu;
pub mod reader;
pub mod text;
