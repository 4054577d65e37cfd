//! Memory-backed LUNs (ctl.conf `backend ramdisk`): the protocol path without a disk, for
//! benchmarks. The memory is a private anonymous mapping of the process (its data threads share
//! it); like a disk, concurrent writes to the same blocks from different initiators are the
//! initiators' business.

use super::runtime::{Backing, LunRt};
use crate::scsi::IoResult;
use crate::vmdk::Op;

/// A mapping of `size` bytes, reserved lazily (pages appear on first write).
#[derive(Debug)]
pub struct RamDisk {
    base: *mut u8,
    size: usize,
}

// SAFETY: the mapping is plain memory owned by this value; access goes through `transfer`, which
// copies whole ranges (data races between initiators are as on a real disk, never UB in Rust
// terms because the bytes are only ever touched through raw pointer copies).
unsafe impl Send for RamDisk {}
// SAFETY: as above.
unsafe impl Sync for RamDisk {}

impl RamDisk {
    /// Private rather than shared anonymous memory: reading a range never written maps the
    /// kernel's zero page instead of allocating and clearing a shmem page, which was a fifth of
    /// the CPU time of a 4 KiB random read at QD 1. (Transparent huge pages were tried too: fewer
    /// faults for reads, but a first write then compacts memory for a 2 MiB page, and random
    /// writes lost a fifth of their IOPS.)
    pub fn new(size: u64) -> std::io::Result<Self> {
        let size = usize::try_from(size).map_err(|_| std::io::Error::other("ramdisk too large"))?;
        if size == 0 {
            return Err(std::io::Error::other("ramdisk of size 0"));
        }
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
            base: base.cast(),
            size,
        })
    }

    pub fn size(&self) -> u64 {
        self.size as u64
    }
}

impl Drop for RamDisk {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base.cast(), self.size) };
    }
}

/// Copies `len` bytes between the LUN's memory at `offset` and `buf`.
pub fn transfer(lun: &LunRt, offset: u64, buf: &mut [u8], len: usize, op: Op) -> IoResult {
    let Backing::Ramdisk { mem } = &lun.backing else {
        return IoResult::Failed;
    };
    let Ok(off) = usize::try_from(offset) else {
        return IoResult::Failed;
    };
    if len > buf.len() || off.checked_add(len).is_none_or(|end| end > mem.size) {
        return IoResult::Failed;
    }
    // SAFETY: off + len <= size (checked), so the range lies inside the mapping; `buf` holds at
    // least len bytes (checked); the two never overlap (the mapping is ours alone).
    unsafe {
        let p = mem.base.add(off);
        match op {
            Op::Read => std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), len),
            Op::Write => std::ptr::copy_nonoverlapping(buf.as_ptr(), p, len),
        }
    }
    IoResult::Ok
}

/// Zeroes `len` bytes of the LUN's memory at `offset` (UNMAP and WRITE SAME with UNMAP).
pub fn zero(lun: &LunRt, offset: u64, len: usize) -> IoResult {
    let Backing::Ramdisk { mem } = &lun.backing else {
        return IoResult::Failed;
    };
    let Ok(off) = usize::try_from(offset) else {
        return IoResult::Failed;
    };
    if off.checked_add(len).is_none_or(|end| end > mem.size) {
        return IoResult::Failed;
    }
    // SAFETY: off + len <= size (checked), inside the mapping.
    unsafe { std::ptr::write_bytes(mem.base.add(off), 0, len) };
    IoResult::Ok
}
