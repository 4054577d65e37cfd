//! io_uring plumbing for a data thread: ring setup with feature fallback, a pool of registered
//! (fixed) buffers, and an eventfd that lets other threads wake the ring.
//!
//! Ownership rule: a buffer slot handed to an in-flight operation stays allocated until that
//! operation's completion has been reaped; the pool's memory lives until the ring that registered
//! it is dropped (the data thread drops its ring before its pool).

use io_uring::IoUring;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Which optional ring features the kernel accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingFeatures {
    pub single_issuer: bool,
    pub defer_taskrun: bool,
}

/// Builds a ring of `entries` submission entries, asking for SINGLE_ISSUER and DEFER_TASKRUN (one
/// thread submits and reaps; task work runs when we wait) and falling back step by step when the
/// kernel refuses them.
pub fn build_ring(entries: u32) -> io::Result<(IoUring, RingFeatures)> {
    let cq = entries.saturating_mul(4);
    let attempts = [(true, true), (true, false), (false, false)];
    let mut last = None;
    for (single_issuer, defer_taskrun) in attempts {
        let mut b = IoUring::builder();
        b.setup_cqsize(cq).setup_clamp();
        if single_issuer {
            b.setup_single_issuer();
        }
        if defer_taskrun {
            b.setup_defer_taskrun();
        } else {
            b.setup_coop_taskrun();
        }
        match b.build(entries) {
            Ok(ring) => {
                return Ok((
                    ring,
                    RingFeatures {
                        single_issuer,
                        defer_taskrun,
                    },
                ));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("io_uring setup failed")))
}

/// A slot of the buffer pool: its index is also its registered-buffer index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufId(pub u16);

/// Page-aligned memory cut into equal slots, registered with a ring as fixed buffers so file reads
/// and writes (READ_FIXED/WRITE_FIXED) skip the per-I/O page pinning, and suitable for O_DIRECT.
pub struct BufferPool {
    base: *mut u8,
    slot_size: usize,
    count: usize,
    free: Vec<BufId>,
}

impl BufferPool {
    /// Maps `count` slots of `slot_size` bytes (rounded up to whole pages). At most 16384 slots.
    pub fn new(slot_size: usize, count: usize) -> io::Result<Self> {
        let page = 4096;
        let slot_size = slot_size.max(page).div_ceil(page) * page;
        if count == 0 || count > usize::from(u16::MAX) / 4 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer count must be 1..16383",
            ));
        }
        let len = slot_size
            .checked_mul(count)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "buffer pool too large"))?;
        // SAFETY: an anonymous private mapping with no address hint; the result is checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let free = (0..count).rev().map(|i| BufId(i as u16)).collect();
        Ok(BufferPool {
            base: base.cast(),
            slot_size,
            count,
            free,
        })
    }

    pub fn slot_size(&self) -> usize {
        self.slot_size
    }
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Registers every slot with `ring` as fixed buffer `BufId.0`.
    pub fn register(&self, ring: &IoUring) -> io::Result<()> {
        let iovecs: Vec<libc::iovec> = (0..self.count)
            .map(|i| libc::iovec {
                iov_base: self.ptr(BufId(i as u16)).cast(),
                iov_len: self.slot_size,
            })
            .collect();
        // SAFETY: every iovec points into our mapping, which stays mapped until `self` is dropped;
        // the data thread drops its ring (unregistering the buffers) before the pool.
        unsafe { ring.submitter().register_buffers(&iovecs) }
    }

    pub fn alloc(&mut self) -> Option<BufId> {
        self.free.pop()
    }

    /// Returns a slot. Only call once no in-flight operation uses it.
    pub fn release(&mut self, id: BufId) {
        debug_assert!(!self.free.contains(&id), "double release of {id:?}");
        self.free.push(id);
    }

    /// The start of a slot, for building SQEs.
    pub fn ptr(&self, id: BufId) -> *mut u8 {
        let i = usize::from(id.0).min(self.count - 1);
        // SAFETY: i < count, so the offset stays inside the mapping of count * slot_size bytes.
        unsafe { self.base.add(i * self.slot_size) }
    }

    /// A slot as bytes. The caller must not hold this across an in-flight operation on the slot.
    pub fn slice(&mut self, id: BufId) -> &mut [u8] {
        let ptr = self.ptr(id);
        // SAFETY: the slot is slot_size bytes inside our mapping and `&mut self` rules out aliases
        // through the pool.
        unsafe { std::slice::from_raw_parts_mut(ptr, self.slot_size) }
    }
}

impl Drop for BufferPool {
    fn drop(&mut self) {
        // SAFETY: base/len are exactly the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base.cast(), self.slot_size * self.count) };
    }
}

/// An eventfd that other threads write to wake a data thread blocked in its ring.
pub struct Waker {
    fd: OwnedFd,
}

impl Waker {
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd has no memory-safety preconditions; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Waker {
            // SAFETY: fd is a fresh descriptor that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Wakes the ring (callable from any thread).
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd; failure (counter full) still wakes.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::{opcode, types};
    use std::io::Write;

    #[test]
    fn pool_slots_are_aligned_and_reused() {
        let mut pool = BufferPool::new(5000, 3).unwrap();
        assert_eq!(pool.slot_size(), 8192);
        let a = pool.alloc().unwrap();
        let b = pool.alloc().unwrap();
        assert_ne!(a, b);
        assert_eq!(pool.ptr(a) as usize % 4096, 0);
        assert_eq!(pool.ptr(b) as usize % 4096, 0);
        pool.slice(a)[0] = 7;
        pool.release(a);
        assert_eq!(pool.available(), 2);
        assert!(BufferPool::new(4096, 0).is_err());
    }

    #[test]
    fn read_fixed_fills_a_registered_slot() {
        let (mut ring, _features) = build_ring(8).unwrap();
        let mut pool = BufferPool::new(4096, 2).unwrap();
        pool.register(&ring).unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"hello, io_uring").unwrap();
        let id = pool.alloc().unwrap();
        let sqe = opcode::ReadFixed::new(types::Fd(file.as_raw_fd()), pool.ptr(id), 15, id.0)
            .offset(0)
            .build()
            .user_data(42);
        // SAFETY: the slot stays allocated and the file open until the completion is reaped below.
        unsafe { ring.submission().push(&sqe).unwrap() };
        ring.submit_and_wait(1).unwrap();
        let cqe = ring.completion().next().unwrap();
        assert_eq!(cqe.user_data(), 42);
        assert_eq!(cqe.result(), 15);
        assert_eq!(&pool.slice(id)[..15], b"hello, io_uring");
        drop(ring);
    }
}
