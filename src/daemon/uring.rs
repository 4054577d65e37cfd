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
        // The TASKRUN flag lets a polling thread see pending completions without a syscall.
        b.setup_taskrun_flag();
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

/// One size class of the pool: `count` slots of `size` bytes, ids `first..first+count`.
struct Class {
    size: usize,
    first: u16,
    count: u16,
    offset: usize,
    free: Vec<BufId>,
}

/// Page-aligned memory cut into slots of a few size classes, registered with a ring as fixed
/// buffers so file reads and writes (READ_FIXED/WRITE_FIXED) skip per-I/O page pinning, and
/// suitable for O_DIRECT. Small I/O takes small slots; large I/O the large ones.
pub struct BufferPool {
    base: *mut u8,
    len: usize,
    classes: Vec<Class>,
    /// A read-only mapping of the largest slot's size that is never written, so it reads as
    /// zeroes (the kernel's zero page): Data-In of a LUN without backing store is sent from it
    /// instead of clearing the task's buffer, a memset per read that was 1.9 µs of user time per
    /// 128 KiB read (about 7% of vitd's CPU there). Being read-only, no stale data can ever be
    /// sent from it.
    zeroes: *const u8,
    /// The whole zero mapping (`zeroes` is its first 2 MiB boundary), for munmap.
    zeroes_map: (*mut libc::c_void, usize),
    /// While commands wait for a slot: the smallest one of them needs. Slots that could serve
    /// it are theirs (handed out in turn by the data thread) before any new command's:
    /// [`BufferPool::alloc_new`].
    waiting_for: Option<usize>,
    /// Bytes of immediate data kept on the heap ([`BufferPool::reserve_spill`]).
    spilled: usize,
    spill_limit: usize,
}

/// Most immediate data a data thread keeps on the heap for commands waiting for a buffer once
/// no slot can keep it ([`BufferPool::reserve_spill`]): 1024 writes' first bursts of 64 KiB,
/// beyond the 288 commands the slots serve or keep. Past it a write gets TASK SET FULL.
pub const SPILL_LIMIT: usize = 64 << 20;

/// A transparent huge page.
const HUGE_PAGE: usize = 2 << 20;

impl BufferPool {
    /// Maps the classes `(slot size, count)` (sizes rounded up to whole pages), smallest first.
    /// At most 16383 slots in all.
    pub fn new(classes: &[(usize, usize)]) -> io::Result<Self> {
        let invalid = |m: &str| io::Error::new(io::ErrorKind::InvalidInput, m.to_string());
        let page = 4096;
        let mut sorted: Vec<(usize, usize)> = classes
            .iter()
            .map(|&(size, count)| (size.max(page).div_ceil(page) * page, count))
            .collect();
        sorted.sort();
        let total: usize = sorted.iter().map(|c| c.1).sum();
        if total == 0 || total > usize::from(u16::MAX) / 4 || sorted.iter().any(|c| c.1 == 0) {
            return Err(invalid("buffer counts must be 1..16383 in all"));
        }
        let mut out = Vec::new();
        let (mut first, mut offset) = (0u16, 0usize);
        for (size, count) in sorted {
            let bytes = size
                .checked_mul(count)
                .ok_or_else(|| invalid("buffer pool too large"))?;
            let free = (0..count as u16).rev().map(|i| BufId(first + i)).collect();
            out.push(Class {
                size,
                first,
                count: count as u16,
                offset,
                free,
            });
            first += count as u16;
            offset = offset
                .checked_add(bytes)
                .ok_or_else(|| invalid("buffer pool too large"))?;
        }
        // SAFETY: an anonymous private mapping with no address hint; the result is checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                offset,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // Transparent huge pages for the pool (where THP is `madvise`, Debian's default, a mapping
        // must ask): a 16 KiB Data-In send copies out of a buffer the device just filled, and with
        // 4 KiB pages that copy spent most of its time in TLB misses (nested page walks in a VM);
        // with 2 MiB pages it took 8% of vitd's CPU instead of 19% in a 16 KiB mix, and the device
        // gets one segment per I/O instead of one per page (10-16% more IOPS there, and 128 KiB
        // reads 47% more, in eight alternating pairs). Advice only: a kernel without THP leaves the
        // pool as it was.
        // SAFETY: advice on the mapping made just above, which nothing else uses yet.
        unsafe { libc::madvise(base, offset, libc::MADV_HUGEPAGE) };
        // The zero mapping: whole huge pages from a huge-page boundary, like the pool, so the
        // send's copy out of it needs few TLB entries (nested page walks are dear in a VM); one
        // more huge page for the alignment. Read faults map the kernel's (huge) zero page: it
        // costs no memory.
        let zeroes_len = out.last().map_or(0, |c| c.size).div_ceil(HUGE_PAGE) * HUGE_PAGE;
        let map_len = zeroes_len + HUGE_PAGE;
        // SAFETY: an anonymous private read-only mapping with no address hint; checked below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            // SAFETY: exactly the pool mapping made above, which nothing uses yet.
            unsafe { libc::munmap(base, offset) };
            return Err(e);
        }
        let skip = (map as usize).next_multiple_of(HUGE_PAGE) - map as usize;
        // SAFETY: skip < HUGE_PAGE, so the aligned start and zeroes_len bytes after it lie inside
        // the map_len bytes just mapped.
        let zeroes = unsafe { map.cast::<u8>().add(skip) };
        // SAFETY: advice on part of the mapping made just above; advice only.
        unsafe { libc::madvise(zeroes.cast(), zeroes_len, libc::MADV_HUGEPAGE) };
        Ok(BufferPool {
            base: base.cast(),
            len: offset,
            classes: out,
            zeroes: zeroes.cast_const(),
            zeroes_map: (map, map_len),
            waiting_for: None,
            spilled: 0,
            spill_limit: SPILL_LIMIT,
        })
    }

    fn class(&self, id: BufId) -> &Class {
        let i = self
            .classes
            .iter()
            .position(|c| id.0 < c.first + c.count)
            .unwrap_or(self.classes.len() - 1);
        &self.classes[i]
    }

    /// The size of a slot.
    pub fn len_of(&self, id: BufId) -> usize {
        self.class(id).size
    }

    /// The largest slot size.
    pub fn max_len(&self) -> usize {
        self.classes.last().map_or(0, |c| c.size)
    }

    /// Whether a slot for `len` bytes can only come from the largest class.
    pub fn needs_largest(&self, len: usize) -> bool {
        let n = self.classes.len().saturating_sub(1);
        self.classes[..n].iter().all(|c| c.size < len)
    }

    /// Whether `id` is a slot of the largest class.
    pub fn is_largest(&self, id: BufId) -> bool {
        self.classes
            .last()
            .is_some_and(|c| id.0 >= c.first && id.0 < c.first + c.count)
    }

    /// How many slots of the largest class one connection may hold: three quarters of them (at
    /// least one), so that some are always left to the thread's other sessions.
    pub fn largest_share(&self) -> usize {
        self.classes
            .last()
            .map_or(1, |c| (usize::from(c.count) * 3 / 4).max(1))
    }

    /// Free slots in all classes.
    pub fn available(&self) -> usize {
        self.classes.iter().map(|c| c.free.len()).sum()
    }

    /// Registers every slot with `ring` as fixed buffer `BufId.0`.
    pub fn register(&self, ring: &IoUring) -> io::Result<()> {
        let iovecs: Vec<libc::iovec> = self
            .classes
            .iter()
            .flat_map(|c| (0..c.count).map(move |i| (BufId(c.first + i), c.size)))
            .map(|(id, size)| libc::iovec {
                iov_base: self.ptr(id).cast(),
                iov_len: size,
            })
            .collect();
        // SAFETY: every iovec points into our mapping, which stays mapped until `self` is dropped;
        // the data thread drops its ring (unregistering the buffers) before the pool.
        unsafe { ring.submitter().register_buffers(&iovecs) }.map_err(|e| {
            // Registered buffers are pinned memory, charged to RLIMIT_MEMLOCK unless the process
            // has CAP_IPC_LOCK (root outside a user namespace has it): say so, with the figure.
            if e.raw_os_error() == Some(libc::ENOMEM) {
                let kib: usize = self
                    .classes
                    .iter()
                    .map(|c| c.size * usize::from(c.count))
                    .sum::<usize>()
                    >> 10;
                io::Error::new(
                    e.kind(),
                    format!(
                        "registering {kib} KiB of I/O buffers per data thread: {e} (pinned memory: \
                         raise the locked-memory limit, `ulimit -l` or systemd's LimitMEMLOCK, to \
                         at least that per data thread, or run with CAP_IPC_LOCK)"
                    ),
                )
            } else {
                e
            }
        })
    }

    /// A free slot of at least `len` bytes: the smallest class that fits and has one.
    pub fn alloc(&mut self, len: usize) -> Option<BufId> {
        self.classes
            .iter_mut()
            .filter(|c| c.size >= len)
            .find_map(|c| c.free.pop())
    }

    /// [`BufferPool::alloc`] for a command just arrived: not a slot that a command already
    /// waiting could take (a newcomer would otherwise take a freed slot ahead of those waiting
    /// for it).
    pub fn alloc_new(&mut self, len: usize) -> Option<BufId> {
        if let Some(waiting) = self.waiting_for {
            let slot = self
                .classes
                .iter()
                .find(|c| c.size >= len && !c.free.is_empty())?;
            if slot.size >= waiting {
                return None;
            }
        }
        self.alloc(len)
    }

    /// A slot of at least `len` bytes to keep a waiting command's immediate data until its own
    /// buffer (`want` bytes) comes: smaller than `want` (a slot that large would be its buffer,
    /// taken past its connection's share or ahead of the commands already waiting), and, as
    /// [`BufferPool::alloc_new`], none a waiting command could take.
    pub fn alloc_to_keep(&mut self, len: usize, want: usize) -> Option<BufId> {
        let limit = self.waiting_for.map_or(want, |w| w.min(want));
        self.classes
            .iter_mut()
            .filter(|c| c.size >= len && c.size < limit)
            .find_map(|c| c.free.pop())
    }

    /// A command now waits for a slot of `len` bytes.
    pub fn note_waiting(&mut self, len: usize) {
        self.waiting_for = Some(self.waiting_for.map_or(len, |w| w.min(len)));
    }

    /// The smallest slot the commands still waiting need (`None`: none waits).
    pub fn set_waiting(&mut self, len: Option<usize>) {
        self.waiting_for = len;
    }

    /// Returns a slot. Only call once no in-flight operation uses it.
    pub fn release(&mut self, id: BufId) {
        let i = self
            .classes
            .iter()
            .position(|c| id.0 >= c.first && id.0 < c.first + c.count);
        if let Some(c) = i.and_then(|i| self.classes.get_mut(i)) {
            debug_assert!(!c.free.contains(&id), "double release of {id:?}");
            c.free.push(id);
        }
    }

    /// The start of a slot, for building SQEs.
    pub fn ptr(&self, id: BufId) -> *mut u8 {
        let c = self.class(id);
        let i = usize::from(id.0.saturating_sub(c.first)).min(usize::from(c.count) - 1);
        // SAFETY: i < count, so the offset stays inside this class's part of the mapping.
        unsafe { self.base.add(c.offset + i * c.size) }
    }

    /// `len` zero bytes (at most [`Self::max_len`]), from memory nothing can write.
    pub fn zeroes(&self, len: usize) -> &[u8] {
        // SAFETY: the zero mapping has at least `max_len()` bytes from `zeroes`, readable and
        // never written, and lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.zeroes, len.min(self.max_len())) }
    }

    /// A slot as bytes. The caller must not hold this across an in-flight operation on the slot.
    pub fn slice(&mut self, id: BufId) -> &mut [u8] {
        let (ptr, len) = (self.ptr(id), self.len_of(id));
        // SAFETY: the slot is `len` bytes inside our mapping and `&mut self` rules out aliases
        // through the pool.
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }
    }

    /// Takes `len` bytes of the heap allowance for immediate data that no slot can keep (a
    /// command waiting for a buffer while every slot is in use: a deep queue of large writes
    /// on several sessions); false when the allowance ([`SPILL_LIMIT`]) is spent. Registered
    /// memory stays fixed; this allowance bounds what load adds beyond it.
    pub fn reserve_spill(&mut self, len: usize) -> bool {
        if len > self.spill_limit - self.spilled {
            return false;
        }
        self.spilled += len;
        true
    }

    /// Gives back what [`BufferPool::reserve_spill`] took.
    pub fn return_spill(&mut self, len: usize) {
        debug_assert!(
            len <= self.spilled,
            "spill of {len} returned, {} taken",
            self.spilled
        );
        self.spilled = self.spilled.saturating_sub(len);
    }

    /// Heap bytes reserved for immediate data (tests).
    #[cfg(test)]
    pub fn spilled(&self) -> usize {
        self.spilled
    }

    /// Sets the heap allowance (tests).
    #[cfg(test)]
    pub fn set_spill_limit(&mut self, limit: usize) {
        self.spill_limit = limit;
    }

    /// Copies `data` to the start of slot `to` (nothing when it does not fit).
    pub fn fill(&mut self, to: BufId, data: &[u8]) {
        if let Some(d) = self.slice(to).get_mut(..data.len()) {
            d.copy_from_slice(data);
        } else {
            debug_assert!(false, "fill {to:?} with {}", data.len());
        }
    }

    /// Whether slot `id` is free (tests: nothing may point into a free slot).
    #[cfg(test)]
    pub fn is_free(&self, id: BufId) -> bool {
        self.classes.iter().any(|c| c.free.contains(&id))
    }

    /// Copies the first `len` bytes of slot `from` to slot `to` (another slot; `len` at most
    /// either's size, else nothing is copied).
    pub fn copy_between(&mut self, from: BufId, to: BufId, len: usize) {
        if from == to || len > self.len_of(from) || len > self.len_of(to) {
            debug_assert!(false, "copy_between {from:?} -> {to:?} of {len}");
            return;
        }
        // SAFETY: two distinct slots of the mapping never overlap, `len` fits both (checked
        // above), and `&mut self` rules out other references into them through the pool.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr(from), self.ptr(to), len) }
    }
}

/// Copies data bound for a device (an O_DIRECT write from a registered buffer that nothing on
/// the CPU reads again) with non-temporal stores: the destination's cache lines are neither
/// fetched before being overwritten nor left to evict hotter ones. The buffer usually comes back
/// cold from the pool (the device last wrote it, for a read), and an ordinary copy into it
/// (`rep movsb`) fetched each line first: on the file-LUN 16 KiB mix this copy was 20-31% of
/// vitd's user time, and 6% with these stores (`perf`, three alternating pairs). Written by
/// hand: the standard library and the usual crates offer no non-temporal copy.
pub fn copy_for_device(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "copy_for_device: lengths differ");
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
        const LINE: usize = 64;
        let n = dst.len();
        let head = dst.as_ptr().align_offset(16).min(n);
        let body = (n - head) / LINE * LINE;
        if body >= 4 * LINE {
            dst[..head].copy_from_slice(&src[..head]);
            // SAFETY: `head + body <= n` for both slices (equal lengths); the destination from
            // `head` is 16-byte aligned, as MOVNTDQ requires; the loads are unaligned (MOVDQU).
            // SSE2 is part of every x86_64 CPU. The fence orders the streamed stores before
            // whatever follows (the submission that hands the buffer to the device).
            unsafe {
                let mut d = dst.as_mut_ptr().add(head).cast::<__m128i>();
                let mut s = src.as_ptr().add(head).cast::<__m128i>();
                for _ in 0..body / LINE {
                    let v = [
                        _mm_loadu_si128(s),
                        _mm_loadu_si128(s.add(1)),
                        _mm_loadu_si128(s.add(2)),
                        _mm_loadu_si128(s.add(3)),
                    ];
                    for (k, v) in v.into_iter().enumerate() {
                        _mm_stream_si128(d.add(k), v);
                    }
                    d = d.add(4);
                    s = s.add(4);
                }
                _mm_sfence();
            }
            let done = head + body;
            dst[done..].copy_from_slice(&src[done..]);
            return;
        }
    }
    dst.copy_from_slice(src);
}

impl Drop for BufferPool {
    fn drop(&mut self) {
        // SAFETY: base/len are exactly the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base.cast(), self.len) };
        // SAFETY: likewise the whole zero mapping.
        unsafe { libc::munmap(self.zeroes_map.0, self.zeroes_map.1) };
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
    fn a_copy_for_a_device_is_exact_at_every_alignment_and_length() {
        // Head, streamed body and tail: destination offsets across a 64-byte line against
        // source offsets that differ, lengths around the streaming threshold and a 16 KiB
        // write's.
        let src: Vec<u8> = (0..20_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut dst = vec![0u8; 20_100];
        for len in [
            0, 1, 15, 63, 255, 256, 257, 320, 1000, 4096, 16_384, 16_433, 19_000,
        ] {
            for d_off in [0, 1, 3, 8, 15, 16, 17, 48, 63] {
                for s_off in [0, 5, 48] {
                    dst.fill(0xEE);
                    copy_for_device(&mut dst[d_off..d_off + len], &src[s_off..s_off + len]);
                    assert_eq!(
                        &dst[d_off..d_off + len],
                        &src[s_off..s_off + len],
                        "len {len} at {d_off} from {s_off}"
                    );
                    assert!(
                        dst[..d_off].iter().all(|&b| b == 0xEE),
                        "wrote before the range"
                    );
                    assert!(
                        dst[d_off + len..].iter().all(|&b| b == 0xEE),
                        "wrote past the range"
                    );
                }
            }
        }
    }

    #[test]
    fn pool_slots_are_aligned_and_reused() {
        let mut pool = BufferPool::new(&[(65536, 1), (5000, 2)]).unwrap();
        assert_eq!(pool.max_len(), 65536);
        let a = pool.alloc(100).unwrap();
        let b = pool.alloc(8192).unwrap();
        assert_ne!(a, b);
        assert_eq!((pool.len_of(a), pool.len_of(b)), (8192, 8192));
        assert_eq!(pool.ptr(a) as usize % 4096, 0);
        assert_eq!(pool.ptr(b) as usize % 4096, 0);
        // The small class is empty: a small request falls back to the large class.
        let c = pool.alloc(1).unwrap();
        assert_eq!(pool.len_of(c), 65536);
        assert!(pool.alloc(1).is_none());
        assert!(pool.alloc(65537).is_none());
        pool.slice(a)[0] = 7;
        pool.slice(c)[65535] = 7;
        pool.release(a);
        assert_eq!(pool.available(), 1);
        // Zeroes up to the largest slot, whatever the slots hold.
        assert_eq!(pool.zeroes(100).len(), 100);
        assert_eq!(pool.zeroes(1 << 20).len(), 65536);
        assert!(pool.zeroes(65536).iter().all(|&b| b == 0));
        assert!(BufferPool::new(&[(4096, 0)]).is_err());
    }

    #[test]
    fn read_fixed_fills_a_registered_slot() {
        let (mut ring, _features) = build_ring(8).unwrap();
        let mut pool = BufferPool::new(&[(4096, 2), (8192, 1)]).unwrap();
        pool.register(&ring).unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"hello, io_uring").unwrap();
        let id = pool.alloc(8192).unwrap();
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
