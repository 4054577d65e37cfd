//! VMDK descriptors and flat extents.
//!
//! - [`descriptor`]: the text descriptor, a pure parser and printer ([`Descriptor`]).
//! - [`map`]: the extent map, virtual byte ranges to extent file ranges ([`ExtentMap`]).
//! - [`lun`]: LUN files: [`create`], [`grow`], [`remove`], [`load`], [`check`], [`open_extent`].
//! - [`error`]: [`VmdkError`], which names the file, line or extent at fault.
//!
//! Only flat VMDKs are served (FLAT, VMFS and ZERO extents, no parent); sparse, thin, delta and
//! raw-device formats are refused with an error that names what was found.

pub mod descriptor;
pub mod error;
pub mod lun;
pub mod map;

pub use descriptor::{Access, CreateType, Descriptor, Extent, ExtentType, Geometry};
pub use error::{Op, ParseErrorKind, VmdkError};
pub use lun::{
    CreateOptions, Snapshot, TWO_GB_EXTENT_BYTES, check, create, extent_paths, grow, load,
    open_extent, remove, remove_except, reservations_path,
};
pub use map::{ExtentMap, Segment, SegmentKind, Segments};

/// Bytes per VMDK sector (extent sizes and offsets are in sectors).
pub const SECTOR_SIZE: u64 = 512;
/// The largest descriptor accepted, in bytes.
pub const MAX_DESCRIPTOR_BYTES: usize = 64 * 1024;
/// The most extents a descriptor may have.
pub const MAX_EXTENTS: usize = 4096;
