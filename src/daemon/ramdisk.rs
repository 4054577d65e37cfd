//! Memory-backed LUNs (ctl.conf `backend ramdisk`): the protocol path without a disk, for
//! benchmarks. As in ctld, `option capacity` says whether memory backs the LUN: with a capacity
//! of at least `size` the data is kept in a private anonymous mapping of the process (its data
//! threads share it; like a disk, concurrent writes to the same blocks from different initiators
//! are the initiators' business); without one (or 0) there is no backing store: reads return
//! zeroes and writes are discarded, which is what a benchmark of the protocol alone wants (and
//! what tgt's `null` backing store does). A capacity between 0 and the size makes a thin
//! ramdisk, as in ctld: memory is taken as blocks are first written, up to the capacity; a write
//! that needs more fails with SPACE ALLOCATION FAILED, and UNMAP gives memory back.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use super::runtime::{Backing, LunRt};
use crate::config::MAX_RAMDISK_BYTES;
use crate::scsi::IoResult;
use crate::vmdk::Op;

/// `size` bytes, in a mapping reserved lazily (pages appear on first write), or none at all.
#[derive(Debug)]
pub struct RamDisk {
    /// The mapping; `None` for a LUN without backing store.
    base: Option<NonNull<u8>>,
    size: usize,
    /// For a capacity below the size: which chunks hold memory, and how much.
    thin: Option<Thin>,
}

/// The accounting granule of a thin ramdisk (the bitmap of a 1 TiB LUN is 2 MiB), and the unit
/// UNMAP gives back.
pub const CHUNK: usize = 64 << 10;

/// Memory taken by a thin ramdisk: a bit per [`CHUNK`] written since it was last unmapped, and
/// their total, which never exceeds `capacity`.
#[derive(Debug)]
struct Thin {
    capacity: u64,
    used: AtomicU64,
    chunks: Box<[AtomicU64]>,
}

impl Thin {
    fn bit(&self, chunk: usize) -> (&AtomicU64, u64) {
        (&self.chunks[chunk / 64], 1u64 << (chunk % 64))
    }

    fn holds(&self, chunk: usize) -> bool {
        let (word, bit) = self.bit(chunk);
        word.load(Ordering::Acquire) & bit != 0
    }

    /// The first chunk from `chunk` on (before `end`) whose state differs from `held`, skipping
    /// whole words of the bitmap where it can (a 1 TiB LUN has 16 million chunks).
    fn run_end(&self, mut chunk: usize, end: usize, held: bool) -> usize {
        let same = if held { u64::MAX } else { 0 };
        while chunk < end {
            if chunk.is_multiple_of(64)
                && chunk + 64 <= end
                && self.chunks[chunk / 64].load(Ordering::Acquire) == same
            {
                chunk += 64;
            } else if self.holds(chunk) == held {
                chunk += 1;
            } else {
                break;
            }
        }
        chunk.min(end)
    }

    /// Takes memory for every chunk of [off, off+len) that has none, all or nothing: false
    /// (taking nothing) when the capacity cannot cover them all. The grant for the chunks
    /// missing is taken at once, so a write refused for space leaves no chunk held that nothing
    /// was written to (it would count against the capacity until an UNMAP of blocks the
    /// initiator never wrote). Handing chunks back on failure instead is no cure: another
    /// write to other blocks of the same chunk may have landed meanwhile.
    fn take(&self, off: usize, len: usize) -> bool {
        let chunks = off / CHUNK..(off + len).div_ceil(CHUNK);
        let grant = CHUNK as u64;
        let missing = chunks.clone().filter(|&c| !self.holds(c)).count() as u64;
        if missing == 0 {
            return true;
        }
        let reserve = |n: u64| {
            if self.used.fetch_add(n, Ordering::AcqRel) + n > self.capacity {
                self.used.fetch_sub(n, Ordering::AcqRel);
                return false;
            }
            true
        };
        if !reserve(missing * grant) {
            return false;
        }
        let mut reserved = missing;
        for chunk in chunks {
            if self.holds(chunk) {
                continue;
            }
            // A chunk given back since it was counted (an UNMAP racing this write on the same
            // blocks) needs a grant of its own.
            if reserved == 0 {
                if !reserve(grant) {
                    return false;
                }
                reserved = 1;
            }
            // Another thread may have taken the same chunk meanwhile: then its grant stays
            // reserved, and is given back below.
            let (word, bit) = self.bit(chunk);
            if word.fetch_or(bit, Ordering::AcqRel) & bit == 0 {
                reserved -= 1;
            }
        }
        if reserved > 0 {
            self.used.fetch_sub(reserved * grant, Ordering::AcqRel);
        }
        true
    }

    /// Gives the memory of one whole chunk back.
    fn give(&self, chunk: usize) {
        let (word, bit) = self.bit(chunk);
        if word.fetch_and(!bit, Ordering::AcqRel) & bit != 0 {
            self.used.fetch_sub(CHUNK as u64, Ordering::AcqRel);
        }
    }
}

// SAFETY: the mapping is plain memory owned by this value; access goes through `transfer`, which
// copies whole ranges (data races between initiators are as on a real disk, never UB in Rust
// terms because the bytes are only ever touched through raw pointer copies).
unsafe impl Send for RamDisk {}
// SAFETY: as above.
unsafe impl Sync for RamDisk {}

impl RamDisk {
    /// A LUN whose data is kept in memory.
    ///
    /// Private rather than shared anonymous memory: reading a range never written maps the
    /// kernel's zero page instead of allocating and clearing a shmem page, which was a fifth of
    /// the CPU time of a 4 KiB random read at QD 1. (Transparent huge pages were tried too: fewer
    /// faults for reads, but a first write then compacts memory for a 2 MiB page, and random
    /// writes lost a fifth of their IOPS.)
    ///
    /// `capacity` below `size` makes it thin: memory is taken as chunks are first written, up to
    /// the capacity.
    pub fn new(size: u64, capacity: u64) -> std::io::Result<Self> {
        let size = Self::checked_size(size)?;
        let thin = match capacity < size as u64 {
            true => Some(Thin {
                capacity,
                used: AtomicU64::new(0),
                chunks: zeroed_words(size.div_ceil(CHUNK).div_ceil(64))?,
            }),
            false => None,
        };
        // SAFETY: an anonymous mapping with no address hint; the result is checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(RamDisk {
            base: NonNull::new(base.cast()),
            size,
            thin,
        })
    }

    /// A LUN without backing store: reads return zeroes, writes are discarded.
    pub fn discarding(size: u64) -> std::io::Result<Self> {
        Ok(RamDisk {
            base: None,
            size: Self::checked_size(size)?,
            thin: None,
        })
    }

    fn checked_size(size: u64) -> std::io::Result<usize> {
        let too_large = || {
            std::io::Error::other(format!(
                "a ramdisk of {size} bytes is larger than {MAX_RAMDISK_BYTES} bytes (64 TiB)"
            ))
        };
        if size > MAX_RAMDISK_BYTES {
            return Err(too_large());
        }
        match usize::try_from(size) {
            Ok(0) => Err(std::io::Error::other("ramdisk of size 0")),
            Ok(s) => Ok(s),
            Err(_) => Err(too_large()),
        }
    }

    pub fn size(&self) -> u64 {
        self.size as u64
    }

    /// Whether memory backs the LUN (writes are kept).
    pub fn stores(&self) -> bool {
        self.base.is_some()
    }

    /// GET LBA STATUS: whether the bytes at `off` hold data (a LUN without backing store holds
    /// none; a LUN kept whole counts as holding all), and for how many bytes from `off` (at most
    /// `max`, at least one chunk's worth or `max`) that stays so.
    pub fn allocation(&self, off: u64, max: u64) -> (bool, u64) {
        let (Some(_), Some(thin)) = (self.base, &self.thin) else {
            return (self.base.is_some(), max);
        };
        let off = (off as usize).min(self.size);
        let first = off / CHUNK;
        let held = thin.holds(first);
        let end = thin.run_end(first + 1, self.size.div_ceil(CHUNK), held);
        let bytes = (end * CHUNK).min(self.size).saturating_sub(off) as u64;
        (held, bytes.clamp(1, max.max(1)))
    }

    /// Bytes of memory a thin LUN has taken (`None`: not thin).
    pub fn used(&self) -> Option<u64> {
        self.thin.as_ref().map(|t| t.used.load(Ordering::Acquire))
    }

    /// The LUN's memory at [off, off+len), or `Err` when the range is outside the LUN;
    /// `Ok(None)` for a LUN without backing store.
    fn range(&self, offset: u64, len: usize) -> Result<Option<*mut u8>, ()> {
        let off = usize::try_from(offset).map_err(|_| ())?;
        if off.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(());
        }
        // SAFETY: off + len <= size (checked), so the pointer stays inside the mapping.
        Ok(self.base.map(|b| unsafe { b.as_ptr().add(off) }))
    }
}

/// `n` zeroed words, or an error (not an abort) when memory for them cannot be had.
fn zeroed_words(n: usize) -> std::io::Result<Box<[AtomicU64]>> {
    let mut words = Vec::new();
    words.try_reserve_exact(n).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::OutOfMemory,
            format!("the thin ramdisk's bitmap ({n} words): {e}"),
        )
    })?;
    words.resize_with(n, || AtomicU64::new(0));
    Ok(words.into_boxed_slice())
}

impl Drop for RamDisk {
    fn drop(&mut self) {
        if let Some(base) = self.base {
            // SAFETY: exactly the mapping made in `new`, unmapped once.
            unsafe { libc::munmap(base.as_ptr().cast(), self.size) };
        }
    }
}

/// Whether a read of `len` bytes at `offset` is all zeroes without looking: a LUN without
/// backing store, the range inside it. (The data thread then sends zeroes from memory nothing
/// writes instead of clearing the task's buffer: `transfer` would.)
pub fn reads_as_zeroes(lun: &LunRt, offset: u64, len: usize) -> bool {
    matches!(&lun.backing, Backing::Ramdisk { mem } if matches!(mem.range(offset, len), Ok(None)))
}

/// Copies `len` bytes between the LUN's memory at `offset` and `buf`.
pub fn transfer(lun: &LunRt, offset: u64, buf: &mut [u8], len: usize, op: Op) -> IoResult {
    let Backing::Ramdisk { mem } = &lun.backing else {
        return IoResult::Failed;
    };
    let Some(buf) = buf.get_mut(..len) else {
        return IoResult::Failed;
    };
    match (mem.range(offset, len), op) {
        (Err(()), _) => return IoResult::Failed,
        (Ok(None), Op::Read) => buf.fill(0),
        (Ok(None), Op::Write) => {}
        // SAFETY: `range` checked that [p, p+len) lies inside the mapping; `buf` holds len bytes;
        // the two never overlap (the mapping is ours alone).
        (Ok(Some(p)), Op::Read) => unsafe {
            std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), len)
        },
        (Ok(Some(p)), Op::Write) => {
            if let Some(thin) = &mem.thin
                && !thin.take(offset as usize, len)
            {
                return IoResult::NoSpace;
            }
            // SAFETY: as above.
            unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), p, len) }
        }
    }
    IoResult::Ok
}

/// Zeroes `len` bytes of the LUN's memory at `offset` (UNMAP and WRITE SAME with UNMAP).
pub fn zero(lun: &LunRt, offset: u64, len: usize) -> IoResult {
    let Backing::Ramdisk { mem } = &lun.backing else {
        return IoResult::Failed;
    };
    match mem.range(offset, len) {
        Err(()) => IoResult::Failed,
        Ok(None) => IoResult::Ok,
        Ok(Some(p)) => {
            let Some(thin) = &mem.thin else {
                // SAFETY: `range` checked that [p, p+len) lies inside the mapping.
                unsafe { std::ptr::write_bytes(p, 0, len) };
                return IoResult::Ok;
            };
            // A thin LUN gives the memory of whole chunks back and clears the parts of chunks it
            // holds (a chunk it does not hold reads as zeroes already; writing zeroes there would
            // take memory unaccounted). An UNMAP racing a write to the same chunk may leave that
            // chunk's memory uncounted: the initiators' race, as on a disk, costs only accounting.
            let (off, end) = (offset as usize, offset as usize + len);
            let mut at = off;
            while at < end {
                let chunk = at / CHUNK;
                let chunk_end = ((chunk + 1) * CHUNK).min(mem.size);
                let stop = end.min(chunk_end);
                // SAFETY: off <= at < end, and [off, end) lies inside the mapping (`range`).
                let q = unsafe { p.add(at - off) };
                if at == chunk * CHUNK && stop == chunk_end {
                    // SAFETY: a whole chunk of our private anonymous mapping (chunk starts are
                    // page-aligned); MADV_DONTNEED makes it read as zeroes and frees its pages.
                    unsafe { libc::madvise(q.cast(), stop - at, libc::MADV_DONTNEED) };
                    thin.give(chunk);
                } else {
                    if thin.holds(chunk) {
                        // SAFETY: [at, stop) lies inside [off, end), inside the mapping.
                        unsafe { std::ptr::write_bytes(q, 0, stop - at) };
                    }
                }
                at = stop;
            }
            IoResult::Ok
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::runtime::test_memory_lun;

    #[test]
    fn a_stored_ramdisk_keeps_what_is_written() {
        let lun = test_memory_lun(RamDisk::new(1 << 20, 1 << 20).unwrap());
        let mut buf = vec![0xa5u8; 8192];
        assert_eq!(
            transfer(&lun, 4096, &mut buf, 8192, Op::Write),
            IoResult::Ok
        );
        let mut back = vec![0u8; 8192];
        assert_eq!(
            transfer(&lun, 4096, &mut back, 8192, Op::Read),
            IoResult::Ok
        );
        assert_eq!(back, buf);
        assert_eq!(zero(&lun, 4096, 4096), IoResult::Ok);
        assert_eq!(
            transfer(&lun, 4096, &mut back, 8192, Op::Read),
            IoResult::Ok
        );
        assert!(back[..4096].iter().all(|&b| b == 0) && back[4096..].iter().all(|&b| b == 0xa5));
    }

    #[test]
    fn a_ramdisk_past_the_bound_is_an_error_not_an_abort() {
        let huge = 16000u64 << 40;
        let want =
            "a ramdisk of 17592186044416000 bytes is larger than 70368744177664 bytes (64 TiB)";
        assert_eq!(RamDisk::new(huge, 1).unwrap_err().to_string(), want);
        assert_eq!(RamDisk::new(huge, huge).unwrap_err().to_string(), want);
        assert_eq!(RamDisk::discarding(huge).unwrap_err().to_string(), want);
        assert_eq!(
            RamDisk::discarding(MAX_RAMDISK_BYTES).unwrap().size(),
            MAX_RAMDISK_BYTES
        );
        assert_eq!(zeroed_words(3).unwrap().len(), 3);
        let e = zeroed_words(usize::MAX).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::OutOfMemory);
    }

    #[test]
    fn without_backing_store_reads_are_zero_and_writes_are_discarded() {
        let lun = test_memory_lun(RamDisk::discarding(1 << 20).unwrap());
        let mut buf = vec![0xa5u8; 4096];
        assert_eq!(transfer(&lun, 0, &mut buf, 4096, Op::Write), IoResult::Ok);
        assert_eq!(transfer(&lun, 0, &mut buf, 4096, Op::Read), IoResult::Ok);
        assert!(buf.iter().all(|&b| b == 0));
        assert_eq!(zero(&lun, 0, 4096), IoResult::Ok);
        // Reads the data thread may answer from the zero mapping: inside the LUN only, and only
        // on a LUN without backing store.
        assert!(reads_as_zeroes(&lun, 0, 1 << 20));
        assert!(!reads_as_zeroes(&lun, 4096, 1 << 20));
        assert!(!reads_as_zeroes(&lun, u64::MAX, 1));
        let kept = test_memory_lun(RamDisk::new(1 << 20, 1 << 20).unwrap());
        assert!(!reads_as_zeroes(&kept, 0, 4096));
    }

    #[test]
    fn a_thin_ramdisk_takes_memory_up_to_its_capacity_and_unmap_gives_it_back() {
        // 1 MiB LUN, capacity 128 KiB: two chunks of 64 KiB.
        let lun = test_memory_lun(RamDisk::new(1 << 20, 128 << 10).unwrap());
        let Backing::Ramdisk { mem } = &lun.backing else {
            unreachable!()
        };
        let mut buf = vec![0x5au8; 4096];
        assert_eq!(transfer(&lun, 0, &mut buf, 4096, Op::Write), IoResult::Ok);
        // The same chunk again takes nothing more.
        assert_eq!(
            transfer(&lun, 8192, &mut buf, 4096, Op::Write),
            IoResult::Ok
        );
        assert_eq!(mem.used(), Some(64 << 10));
        assert_eq!(
            transfer(&lun, 512 << 10, &mut buf, 4096, Op::Write),
            IoResult::Ok
        );
        assert_eq!(mem.used(), Some(128 << 10));
        // A third chunk: no space, and nothing written.
        assert_eq!(
            transfer(&lun, 256 << 10, &mut buf, 4096, Op::Write),
            IoResult::NoSpace
        );
        let mut back = vec![1u8; 4096];
        assert_eq!(
            transfer(&lun, 256 << 10, &mut back, 4096, Op::Read),
            IoResult::Ok
        );
        assert!(back.iter().all(|&b| b == 0));
        // Unmapping part of a chunk keeps it (and clears that part); the whole chunk gives it back.
        assert_eq!(zero(&lun, 0, 4096), IoResult::Ok);
        assert_eq!(mem.used(), Some(128 << 10));
        assert_eq!(transfer(&lun, 0, &mut back, 4096, Op::Read), IoResult::Ok);
        assert!(back.iter().all(|&b| b == 0));
        assert_eq!(zero(&lun, 0, 64 << 10), IoResult::Ok);
        assert_eq!(mem.used(), Some(64 << 10));
        assert_eq!(
            transfer(&lun, 8192, &mut back, 4096, Op::Read),
            IoResult::Ok
        );
        assert!(back.iter().all(|&b| b == 0), "the data went with the chunk");
        assert_eq!(
            transfer(&lun, 256 << 10, &mut buf, 4096, Op::Write),
            IoResult::Ok
        );
        assert_eq!(
            transfer(&lun, 256 << 10, &mut back, 4096, Op::Read),
            IoResult::Ok
        );
        assert_eq!(back, buf);
        // A write spanning a held and a new chunk when no space is left fails whole.
        assert_eq!(
            transfer(&lun, (512 << 10) + (62 << 10), &mut buf, 4096, Op::Write),
            IoResult::NoSpace
        );
    }

    #[test]
    fn a_write_refused_for_space_takes_no_memory() {
        // 1 MiB LUN, capacity 128 KiB: two chunks. A write over three chunks cannot be had
        // whole: it fails, and must leave the capacity as it found it.
        let lun = test_memory_lun(RamDisk::new(1 << 20, 128 << 10).unwrap());
        let Backing::Ramdisk { mem } = &lun.backing else {
            unreachable!()
        };
        let mut buf = vec![0x5au8; 192 << 10];
        assert_eq!(
            transfer(&lun, 0, &mut buf, 192 << 10, Op::Write),
            IoResult::NoSpace
        );
        assert_eq!(mem.used(), Some(0), "nothing written, nothing taken");
        assert_eq!(mem.allocation(0, 1 << 20), (false, 1 << 20));
        assert_eq!(
            transfer(&lun, 512 << 10, &mut buf, 128 << 10, Op::Write),
            IoResult::Ok
        );
        // With one chunk held, a write over it and two new ones fails the same way.
        assert_eq!(
            transfer(&lun, (512 << 10) + 4096, &mut buf, 192 << 10, Op::Write),
            IoResult::NoSpace
        );
        assert_eq!(mem.used(), Some(128 << 10));
    }

    #[test]
    fn allocation_follows_the_chunks_taken() {
        let mem = RamDisk::new(1 << 20, 512 << 10).unwrap();
        let lun = test_memory_lun(mem);
        let Backing::Ramdisk { mem } = &lun.backing else {
            unreachable!()
        };
        assert_eq!(mem.allocation(0, 1 << 20), (false, 1 << 20));
        let mut buf = vec![1u8; 4096];
        assert_eq!(
            transfer(&lun, 128 << 10, &mut buf, 4096, Op::Write),
            IoResult::Ok
        );
        assert_eq!(mem.allocation(0, 1 << 20), (false, 128 << 10));
        assert_eq!(mem.allocation(130 << 10, 1 << 20), (true, 62 << 10));
        assert_eq!(mem.allocation(192 << 10, 1 << 20), (false, 832 << 10));
        assert_eq!(mem.allocation(192 << 10, 4096), (false, 4096));
        let kept = RamDisk::new(1 << 20, 1 << 20).unwrap();
        assert_eq!(kept.allocation(0, 1 << 20), (true, 1 << 20));
        let none = RamDisk::discarding(1 << 20).unwrap();
        assert_eq!(none.allocation(0, 1 << 20), (false, 1 << 20));
    }

    #[test]
    fn ranges_outside_the_lun_fail() {
        for mem in [
            RamDisk::new(1 << 20, 1 << 20),
            RamDisk::new(1 << 20, 1 << 16),
            RamDisk::discarding(1 << 20),
        ] {
            let lun = test_memory_lun(mem.unwrap());
            let mut buf = vec![0u8; 8192];
            let end = 1u64 << 20;
            assert_eq!(
                transfer(&lun, end - 4096, &mut buf, 8192, Op::Read),
                IoResult::Failed
            );
            assert_eq!(
                transfer(&lun, u64::MAX, &mut buf, 1, Op::Write),
                IoResult::Failed
            );
            assert_eq!(
                transfer(&lun, 0, &mut buf, 8193, Op::Read),
                IoResult::Failed
            );
            assert_eq!(zero(&lun, end, 1), IoResult::Failed);
        }
        assert!(RamDisk::new(0, 0).is_err() && RamDisk::discarding(0).is_err());
    }
}
