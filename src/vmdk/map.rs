//! The extent map: virtual disk bytes to extent file bytes.
//!
//! This is the data path's lookup. Building the map allocates once; [`ExtentMap::map`] allocates
//! nothing: it checks the whole range, binary-searches the first extent and returns an iterator
//! that yields one [`Segment`] per extent touched. A range that spans extents is split in one
//! place only, [`Segments::next`].

use std::iter::FusedIterator;

use super::SECTOR_SIZE;
use super::descriptor::{Access, Descriptor, ExtentType};
use super::error::{Op, VmdkError};

/// What backs a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentKind {
    /// Bytes of the extent's file, at [`Segment::file_offset`].
    Flat,
    /// A ZERO extent: reads return zeros; there is no file.
    Zero,
}

/// A piece of a mapped range that lies in one extent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Index of the extent in [`Descriptor::extents`].
    pub extent: usize,
    /// Byte offset in the extent's file (0 for [`SegmentKind::Zero`]).
    pub file_offset: u64,
    /// Length in bytes (never 0).
    pub len: u64,
    /// Flat or zero.
    pub kind: SegmentKind,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    /// First virtual byte of the extent.
    start: u64,
    /// Length in bytes (never 0).
    len: u64,
    /// Byte offset of the extent in its file.
    file_offset: u64,
    kind: SegmentKind,
    access: Access,
}

impl Entry {
    /// Why `op` is refused on this extent, if it is.
    fn denies(&self, op: Op) -> Option<&'static str> {
        match (self.access, self.kind, op) {
            (Access::NoAccess, _, _) => Some("NOACCESS"),
            (Access::ReadOnly, _, Op::Write) => Some("RDONLY"),
            (_, SegmentKind::Zero, Op::Write) => Some("ZERO extent"),
            _ => None,
        }
    }
}

/// The lookup table of a descriptor's extents, by cumulative start.
#[derive(Clone, Debug)]
pub struct ExtentMap {
    entries: Vec<Entry>,
    capacity: u64,
}

impl ExtentMap {
    /// Builds the map. A [`Descriptor`] has valid sizes, so this cannot fail.
    pub fn new(descriptor: &Descriptor) -> Self {
        let mut entries = Vec::with_capacity(descriptor.extents().len());
        let mut start = 0u64;
        for extent in descriptor.extents() {
            // The descriptor guarantees these products and sums fit (checked when built).
            let len = extent.sectors.saturating_mul(SECTOR_SIZE);
            let (kind, file_offset) = match extent.kind {
                ExtentType::Flat | ExtentType::Vmfs => (
                    SegmentKind::Flat,
                    extent.offset_sectors.saturating_mul(SECTOR_SIZE),
                ),
                ExtentType::Zero => (SegmentKind::Zero, 0),
            };
            entries.push(Entry {
                start,
                len,
                file_offset,
                kind,
                access: extent.access,
            });
            start = start.saturating_add(len);
        }
        ExtentMap {
            entries,
            capacity: start,
        }
    }

    /// The disk capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The virtual byte range `(start, len)` of extent `index`.
    pub fn extent_range(&self, index: usize) -> Option<(u64, u64)> {
        self.entries.get(index).map(|e| (e.start, e.len))
    }

    /// Maps `len` bytes at virtual `offset` for `op`. The whole range is checked first: beyond
    /// the capacity is [`VmdkError::OutOfRange`]; touching a NOACCESS extent, or writing to a
    /// RDONLY or ZERO extent, is [`VmdkError::Denied`]. A zero-length range inside the disk
    /// yields no segment.
    pub fn map(&self, offset: u64, len: u64, op: Op) -> Result<Segments<'_>, VmdkError> {
        let out_of_range = || VmdkError::OutOfRange {
            offset,
            len,
            capacity: self.capacity,
        };
        let end = offset.checked_add(len).ok_or_else(out_of_range)?;
        if end > self.capacity {
            return Err(out_of_range());
        }
        let first = self.index_of(offset);
        if len > 0 {
            let touched = self.entries.iter().enumerate().skip(first);
            for (index, entry) in touched.take_while(|(_, e)| e.start < end) {
                if let Some(why) = entry.denies(op) {
                    return Err(VmdkError::Denied {
                        op,
                        extent: index,
                        why,
                    });
                }
            }
        }
        Ok(Segments {
            entries: &self.entries,
            index: first,
            pos: offset,
            end,
        })
    }

    /// The extent containing byte `offset` (the last extent when `offset == capacity`).
    fn index_of(&self, offset: u64) -> usize {
        self.entries
            .partition_point(|e| e.start <= offset)
            .saturating_sub(1)
    }
}

/// The segments of one mapped range, in disk order. Allocation-free.
#[derive(Clone, Debug)]
pub struct Segments<'a> {
    entries: &'a [Entry],
    index: usize,
    pos: u64,
    end: u64,
}

impl Iterator for Segments<'_> {
    type Item = Segment;

    fn next(&mut self) -> Option<Segment> {
        if self.pos >= self.end {
            return None;
        }
        let entry = self.entries.get(self.index)?;
        let within = self.pos.checked_sub(entry.start)?;
        let left_in_extent = entry.len.checked_sub(within)?;
        let len = left_in_extent.min(self.end - self.pos);
        let file_offset = match entry.kind {
            SegmentKind::Flat => entry.file_offset.checked_add(within)?,
            SegmentKind::Zero => 0,
        };
        let segment = Segment {
            extent: self.index,
            file_offset,
            len,
            kind: entry.kind,
        };
        self.pos += len;
        self.index += 1;
        Some(segment)
    }
}

impl FusedIterator for Segments<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn descriptor(extents: &str) -> Descriptor {
        Descriptor::parse(&format!(
            "# Disk DescriptorFile\ncreateType=\"twoGbMaxExtentFlat\"\n{extents}\n"
        ))
        .unwrap()
    }

    /// Three 1 MiB extents: a (offset 2 sectors in its file), b, c.
    fn three() -> ExtentMap {
        ExtentMap::new(&descriptor(
            "RW 2048 FLAT \"a\" 2\nRW 2048 FLAT \"b\" 0\nRW 2048 FLAT \"c\" 0",
        ))
    }

    fn segs(map: &ExtentMap, offset: u64, len: u64) -> Vec<Segment> {
        map.map(offset, len, Op::Read).unwrap().collect()
    }

    fn flat(extent: usize, file_offset: u64, len: u64) -> Segment {
        Segment {
            extent,
            file_offset,
            len,
            kind: SegmentKind::Flat,
        }
    }

    #[test]
    fn single_extent_ranges() {
        let m = three();
        assert_eq!(m.capacity(), 3 * MIB);
        assert_eq!(segs(&m, 0, 512), [flat(0, 1024, 512)]);
        assert_eq!(segs(&m, 1, 1), [flat(0, 1025, 1)]);
        assert_eq!(segs(&m, MIB - 512, 512), [flat(0, 1024 + MIB - 512, 512)]);
        assert_eq!(segs(&m, MIB, 512), [flat(1, 0, 512)]);
        assert_eq!(segs(&m, 3 * MIB - 1, 1), [flat(2, MIB - 1, 1)]);
        assert_eq!(segs(&m, 0, MIB), [flat(0, 1024, MIB)]);
    }

    #[test]
    fn ranges_spanning_extents_split_at_boundaries() {
        let m = three();
        assert_eq!(
            segs(&m, MIB - 512, 1024),
            [flat(0, 1024 + MIB - 512, 512), flat(1, 0, 512)]
        );
        assert_eq!(
            segs(&m, MIB - 1, 2),
            [flat(0, 1024 + MIB - 1, 1), flat(1, 0, 1)]
        );
        assert_eq!(
            segs(&m, 0, 3 * MIB),
            [flat(0, 1024, MIB), flat(1, 0, MIB), flat(2, 0, MIB)]
        );
        assert_eq!(
            segs(&m, 100, 3 * MIB - 200),
            [
                flat(0, 1124, MIB - 100),
                flat(1, 0, MIB),
                flat(2, 0, MIB - 100)
            ]
        );
        assert_eq!(segs(&m, MIB, 2 * MIB), [flat(1, 0, MIB), flat(2, 0, MIB)]);
    }

    #[test]
    fn segments_cover_the_range_exactly() {
        let m = three();
        for offset in [0, 1, 511, MIB - 3, MIB, 2 * MIB + 7] {
            for len in [0, 1, 512, MIB, MIB + 1, 2 * MIB] {
                let Ok(iter) = m.map(offset, len, Op::Read) else {
                    assert!(offset + len > m.capacity());
                    continue;
                };
                let mut pos = offset;
                for s in iter {
                    assert!(s.len > 0);
                    let (start, elen) = m.extent_range(s.extent).unwrap();
                    assert!(pos >= start && pos + s.len <= start + elen);
                    pos += s.len;
                }
                assert_eq!(pos, offset + len);
            }
        }
    }

    #[test]
    fn empty_and_out_of_range() {
        let m = three();
        assert!(segs(&m, 0, 0).is_empty());
        assert!(segs(&m, 3 * MIB, 0).is_empty());
        for (offset, len) in [
            (3 * MIB, 1),
            (3 * MIB - 1, 2),
            (0, 3 * MIB + 1),
            (u64::MAX, 1),
            (1, u64::MAX),
            (3 * MIB + 1, 0),
        ] {
            match m.map(offset, len, Op::Read) {
                Err(VmdkError::OutOfRange {
                    offset: o,
                    len: l,
                    capacity,
                }) => assert_eq!((o, l, capacity), (offset, len, 3 * MIB)),
                other => panic!("{offset}+{len}: {other:?}"),
            }
        }
    }

    #[test]
    fn access_rules() {
        let m = ExtentMap::new(&descriptor(
            "RW 8 FLAT \"a\" 0\nRDONLY 8 FLAT \"b\" 0\nNOACCESS 8 FLAT \"c\" 0\nRW 8 ZERO",
        ));
        assert_eq!(segs(&m, 0, 8192).len(), 2);
        assert!(m.map(0, 4096, Op::Write).is_ok());
        let denied = |offset, len, op| match m.map(offset, len, op) {
            Err(VmdkError::Denied { extent, why, .. }) => (extent, why),
            other => panic!("{other:?}"),
        };
        assert_eq!(denied(4000, 200, Op::Write), (1, "RDONLY"));
        assert_eq!(denied(8192, 1, Op::Read), (2, "NOACCESS"));
        assert_eq!(denied(4096, 4097, Op::Read), (2, "NOACCESS"));
        assert_eq!(denied(12288, 512, Op::Write), (3, "ZERO extent"));
        // A range ending exactly where the NOACCESS extent starts does not touch it.
        assert!(m.map(4096, 4096, Op::Read).is_ok());
        // Zero-length ranges touch nothing.
        assert!(m.map(8192, 0, Op::Write).is_ok());
        let zero = segs(&m, 12288 + 10, 100);
        assert_eq!(
            zero,
            [Segment {
                extent: 3,
                file_offset: 0,
                len: 100,
                kind: SegmentKind::Zero
            }]
        );
    }

    #[test]
    fn qemu_twogb_splits_at_two_gib() {
        let d =
            Descriptor::parse(include_str!("../../tests/data/vmdk/qemu-twogb-flat.vmdk")).unwrap();
        let m = ExtentMap::new(&d);
        let two_gib = 2u64 << 30;
        assert_eq!(
            segs(&m, two_gib - 4096, 8192),
            [flat(0, two_gib - 4096, 4096), flat(1, 0, 4096)]
        );
        assert_eq!(segs(&m, 2 * two_gib, 512), [flat(2, 0, 512)]);
    }

    #[test]
    fn many_extents_binary_search() {
        let lines: String = (0..1000)
            .map(|i| format!("RW {} FLAT \"e{i}\" {i}\n", i + 1))
            .collect();
        let m = ExtentMap::new(&descriptor(&lines));
        let mut start = 0u64;
        for i in 0..1000u64 {
            let len = (i + 1) * 512;
            let got = segs(&m, start + len - 1, 1);
            assert_eq!(got, [flat(i as usize, i * 512 + len - 1, 1)]);
            let got = segs(&m, start, 1);
            assert_eq!(got, [flat(i as usize, i * 512, 1)]);
            start += len;
        }
        assert_eq!(m.capacity(), start);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn segments_tile_any_range(
                sizes in prop::collection::vec(1u64..5000, 1..20),
                offset in 0u64..200_000,
                len in 0u64..200_000,
            ) {
                let lines: String = sizes
                    .iter()
                    .enumerate()
                    .map(|(i, s)| format!("RW {s} FLAT \"e{i}\" {i}\n"))
                    .collect();
                let m = ExtentMap::new(&descriptor(&lines));
                let capacity: u64 = sizes.iter().sum::<u64>() * 512;
                prop_assert_eq!(m.capacity(), capacity);
                match m.map(offset, len, Op::Write) {
                    Err(VmdkError::OutOfRange { .. }) => prop_assert!(offset + len > capacity),
                    Err(other) => prop_assert!(false, "{other:?}"),
                    Ok(iter) => {
                        prop_assert!(offset + len <= capacity);
                        let mut pos = offset;
                        for s in iter {
                            let (start, elen) = m.extent_range(s.extent).unwrap();
                            prop_assert!(s.len > 0 && pos >= start && pos + s.len <= start + elen);
                            prop_assert_eq!(s.file_offset, s.extent as u64 * 512 + (pos - start));
                            pos += s.len;
                        }
                        prop_assert_eq!(pos, offset + len);
                    }
                }
            }
        }
    }
}
