//! Multi-step backing-store work: everything but plain READ/WRITE/VERIFY/SYNCHRONIZE CACHE.
//! A job is a short sequence of range operations (read, write or punch a byte range of a LUN,
//! split over its extents like any I/O) with a decision between steps: COMPARE AND WRITE
//! (read, compare, write), ORWRITE (read, OR, write), WRITE ATOMIC, WRITE SAME (a pattern
//! written chunk by chunk, or the range deallocated), UNMAP (holes punched), EXTENDED COPY
//! (chunks read from one LUN and written to another) and GET LBA STATUS (holes probed with
//! SEEK_DATA/SEEK_HOLE). COMPARE AND WRITE, ORWRITE and WRITE ATOMIC hold their range in the
//! LUN's shared range lock and first wait for the plain writes already in flight, so no other
//! atomic operation and no plain write touches those blocks between their read and their write.
//! WRITE SAME, UNMAP and EXTENDED COPY hold the span of blocks they write (on each LUN they
//! write) for as long as they run, so none of their writes lands inside an atomic operation
//! either.

use super::{Backing, BufId, Drain, FileRef, Kind, LunRt, Worker, user_data};
use crate::daemon::conn::IoWork;
use crate::scsi::opcodes::op;
use crate::scsi::pr;
use crate::scsi::sbc::{self, LbaState};
use crate::scsi::xcopy::{self, CopyResult};
use crate::scsi::{self, Completion, IoKind, IoResult, SenseReason};
use crate::vmdk::{Op, SegmentKind};
use io_uring::{opcode, types};
use std::os::fd::AsRawFd;
use std::sync::Arc;

/// Bytes moved per step of WRITE SAME and EXTENDED COPY.
const CHUNK: usize = 1 << 20;

/// What a range operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RangeOp {
    Read,
    Write,
    /// Deallocate (punch a hole; it reads back as zeros).
    Punch,
}

/// One EXTENDED COPY segment, resolved to LUNs and bytes.
struct CopyStep {
    src: Arc<LunRt>,
    src_off: u64,
    dst: Arc<LunRt>,
    dst_off: u64,
    len: u64,
}

/// The buffer a job moves its data through: the task's own (`own`: its data-out taken
/// already), or a buffer of the job's.
#[derive(Clone, Copy)]
struct Scratch {
    buf: BufId,
    own: bool,
}

impl Scratch {
    /// A buffer the job took from the pool (given back when it ends).
    fn pooled(buf: BufId) -> Self {
        Scratch { buf, own: false }
    }

    /// The task's own buffer (the task gives it back).
    fn own(buf: BufId) -> Self {
        Scratch { buf, own: true }
    }
}

enum JobKind {
    /// The medium is read into the task's buffer over the first half of its data-out, kept
    /// here (`verify`) to compare with; the second half is written.
    CompareAndWrite {
        verify: Vec<u8>,
    },
    /// The medium is read into the task's buffer over its data-out, kept here (`data`) to OR
    /// into it; the result is written from there.
    OrWrite {
        data: Vec<u8>,
    },
    Atomic,
    WriteSame {
        /// The pattern repeated, `chunk_len` bytes of it; none when the range is deallocated
        /// (`punch`), which needs no data (a WRITE SAME with NDOB that deallocates is given no
        /// buffer of its own).
        chunk: Option<Scratch>,
        chunk_len: usize,
        next: u64,
        end: u64,
        punch: bool,
    },
    Unmap {
        ranges: Vec<(u64, u64)>,
        next: usize,
    },
    Copy {
        steps: Vec<CopyStep>,
        next: usize,
        done_in_step: u64,
        buf: Scratch,
        wrote: bool,
        list_id: u8,
        bytes: u64,
    },
}

/// A job in flight, kept in the task's file-op slot between steps.
pub(super) struct Job {
    lun: Arc<LunRt>,
    work: IoWork,
    kind: JobKind,
    phase: u8,
    /// Byte ranges held in LUNs' range locks until the job ends.
    held: Vec<(Arc<LunRt>, u64, u64)>,
    /// Its writes must be on stable storage before it completes (FUA, or the LUN's write cache
    /// off): written with RWF_DSYNC, and its deallocations followed by an fdatasync.
    durable: bool,
    /// That fdatasync was issued.
    synced: bool,
    /// The step in flight reads (a failure is a read error, else a write error).
    reading: bool,
}

/// How a job ended.
enum Next {
    /// Done with this result (or this completion of its own).
    Finish(Result<IoResult, Completion>),
}

impl Worker {
    /// For an atomic operation: takes its range, then waits (the caller retries) until the plain
    /// writes already in flight on any thread are done, so none of them lands between its read
    /// and its write. True when it may go on, holding its range.
    fn hold_and_drain(
        &mut self,
        idx: usize,
        task: u16,
        lun: &Arc<LunRt>,
        range: (u64, u64),
    ) -> bool {
        if let Some(i) = self.drain_of(idx, task) {
            if !lun.shared.drained() {
                return false;
            }
            self.draining.swap_remove(i);
            return true;
        }
        if !lun.shared.try_hold(range.0, range.1) {
            return false;
        }
        if lun.shared.begin_drain() {
            return true;
        }
        self.draining.push(Drain {
            idx,
            task,
            lun: lun.clone(),
            range,
        });
        false
    }

    /// Where request `task` of connection `idx` is in the list of those waiting for a drain.
    fn drain_of(&self, idx: usize, task: u16) -> Option<usize> {
        self.draining
            .iter()
            .position(|d| d.idx == idx && d.task == task)
    }

    /// A request that waited for a drain will not run: its range and its drain are given back.
    pub(super) fn abandon_drain(&mut self, idx: usize, task: u16) {
        if let Some(i) = self.drain_of(idx, task) {
            let d = self.draining.swap_remove(i);
            d.lun.shared.abandon_drain();
            d.lun.shared.release(d.range.0, d.range.1);
        }
    }

    /// Starts the job for a request that is not plain I/O. Returns false when the request must
    /// wait (its range is held by another atomic operation): the caller retries it later.
    pub(super) fn start_job(&mut self, idx: usize, lun: &Arc<LunRt>, work: IoWork) -> bool {
        let req = work.req;
        let range = (req.byte_offset, req.byte_offset + req.byte_len as u64);
        let atomic = matches!(
            req.kind,
            IoKind::CompareAndWrite | IoKind::OrWrite | IoKind::WriteAtomic
        );
        if atomic && !self.hold_and_drain(idx, work.task, lun, range) {
            return false;
        }
        // Holding its range, it looks at the mail again (`Conn::may_write`): a reset that
        // began after the mail was last looked at either waits for the range, or has ended
        // and its mail is seen now.
        let aborted = |w: &mut Worker| w.task_aborted(idx, work.task);
        // What the job holds in the LUNs' range locks: an atomic command its range (taken
        // above); WRITE SAME, UNMAP and EXTENDED COPY what they write, taken below before any
        // buffer is (a job that must wait is retried, and should cost nothing meanwhile).
        let mut held = if atomic {
            vec![(lun.clone(), range.0, range.1)]
        } else {
            Vec::new()
        };
        let fail = |w: &mut Worker, held: &[(Arc<LunRt>, u64, u64)], c: Completion| {
            release_all(held);
            w.job_finish_completion(idx, work, c);
            true
        };
        // An aborted task's job ends here, unanswered (`finish_with`), giving back what it holds.
        let gone = Completion::check(SenseReason::InternalTargetFailure);
        if atomic && aborted(self) {
            return fail(self, &held, gone);
        }
        let data_out = |w: &mut Worker| w.task_bytes(work.buf, req.data_out_len);
        // A buffer the pool cannot give now (large reads may hold them all) is TASK SET FULL:
        // the initiator retries, as for a command that finds no task slot.
        let kind = match req.kind {
            IoKind::CompareAndWrite | IoKind::OrWrite => {
                // The medium is read into the task's own buffer over the data-out it is
                // compared with or ORed into, which is kept on the heap meanwhile (no more
                // than the buffer): no second buffer, which would rarely be free while other
                // sessions' commands wait for every one freed (the command ended in TASK SET
                // FULL each time it came), and no length past which it would need one.
                let kept = self.task_bytes(work.buf, req.byte_len);
                if kept.len() != req.byte_len {
                    return fail(
                        self,
                        &held,
                        Completion::check(SenseReason::InternalTargetFailure),
                    );
                }
                if req.kind == IoKind::OrWrite {
                    JobKind::OrWrite { data: kept }
                } else {
                    JobKind::CompareAndWrite { verify: kept }
                }
            }
            IoKind::WriteAtomic => JobKind::Atomic,
            IoKind::WriteSame { ndob, .. } => {
                held = vec![(lun.clone(), range.0, range.1)];
                if !hold_all(&held) {
                    return false;
                }
                if aborted(self) {
                    return fail(self, &held, gone);
                }
                let bs = lun.block_size as usize;
                let pattern = if ndob { vec![0u8; bs] } else { data_out(self) };
                let info = self.lun_info(idx, lun);
                let punch = info
                    .as_ref()
                    .is_some_and(|i| sbc::write_same_deallocates(i, &req, &pattern));
                let mut len = bs;
                let chunk = if punch {
                    None
                } else {
                    let want = CHUNK.min(req.byte_len.max(bs));
                    let Some(chunk) = self.job_buffer(want, work.buf) else {
                        return fail(self, &held, Completion::task_set_full());
                    };
                    len = self.pool.len_of(chunk.buf).min(req.byte_len.max(bs)) / bs * bs;
                    if pattern.len() >= bs {
                        for blk in self.pool.slice(chunk.buf)[..len].chunks_mut(bs) {
                            blk.copy_from_slice(&pattern[..bs]);
                        }
                    }
                    Some(chunk)
                };
                JobKind::WriteSame {
                    chunk,
                    chunk_len: len.max(bs),
                    next: range.0,
                    end: range.1,
                    punch,
                }
            }
            IoKind::Unmap => {
                let data = data_out(self);
                let Some(info) = self.lun_info(idx, lun) else {
                    return fail(
                        self,
                        &held,
                        Completion::check(SenseReason::InternalTargetFailure),
                    );
                };
                match sbc::unmap_ranges(&info, &data) {
                    Ok(r) => {
                        let ranges: Vec<(u64, u64)> =
                            r.iter().filter_map(|x| x.bytes(lun.block_size)).collect();
                        held = spans(ranges.iter().map(|&(at, n)| (lun, at, n)));
                        if !hold_all(&held) {
                            return false;
                        }
                        if aborted(self) {
                            return fail(self, &held, gone);
                        }
                        JobKind::Unmap { ranges, next: 0 }
                    }
                    Err(reason) => return fail(self, &held, Completion::check(reason)),
                }
            }
            IoKind::ExtendedCopy => match self.copy_steps_from_data_out(idx, &work) {
                Ok((steps, list_id)) => {
                    held = spans(steps.iter().map(|s| (&s.dst, s.dst_off, s.len)));
                    // On its own LUN, when it writes only others, an empty span: it overlaps
                    // nothing, but a reset (or PREEMPT AND ABORT) of that LUN, which aborts the
                    // copy, waits for it to stop, so no write of it lands after the answer.
                    if !held.iter().any(|(l, ..)| Arc::ptr_eq(l, lun)) {
                        held.push((lun.clone(), 0, 0));
                    }
                    if !hold_all(&held) {
                        return false;
                    }
                    if aborted(self) {
                        return fail(self, &held, gone);
                    }
                    let Some(buf) = self.job_buffer(CHUNK, work.buf) else {
                        return fail(self, &held, Completion::task_set_full());
                    };
                    JobKind::Copy {
                        steps,
                        next: 0,
                        done_in_step: 0,
                        buf,
                        wrote: false,
                        list_id,
                        bytes: 0,
                    }
                }
                Err(reason) => return fail(self, &held, Completion::check(reason)),
            },
            IoKind::GetLbaStatus { alloc_len } => {
                let c = self.get_lba_status(idx, lun, &work, alloc_len);
                return fail(self, &held, c);
            }
            _ => {
                return fail(
                    self,
                    &held,
                    Completion::check(SenseReason::InternalTargetFailure),
                );
            }
        };
        let durable = req.fua || self.write_cache_off(idx, lun);
        let job = Box::new(Job {
            lun: lun.clone(),
            work,
            kind,
            phase: 0,
            held,
            durable,
            synced: false,
            reading: false,
        });
        self.advance(idx, job, IoResult::Ok);
        true
    }

    /// Whether `lun`'s write cache is off (SBC's WCE=0): every write it completes must be on
    /// stable storage.
    fn write_cache_off(&self, idx: usize, lun: &LunRt) -> bool {
        self.lun_info(idx, lun)
            .is_none_or(|i| !i.write_cache_enabled)
    }

    /// The SCSI view of a LUN (for the pure helpers' limits).
    fn lun_info(&self, idx: usize, lun: &LunRt) -> Option<scsi::LunInfo> {
        let s = self.slots.get(idx)?.as_ref()?;
        let t = s.conn.target.as_ref()?;
        t.server.lun(u16::try_from(lun.id).ok()?).cloned()
    }

    fn copy_steps_from_data_out(
        &mut self,
        idx: usize,
        work: &IoWork,
    ) -> Result<(Vec<CopyStep>, u8), SenseReason> {
        let data = self.task_bytes(work.buf, work.req.data_out_len);
        self.copy_steps(idx, &data)
    }

    /// Resolves an EXTENDED COPY parameter list to byte ranges of this target's LUNs.
    fn copy_steps(&self, idx: usize, data: &[u8]) -> Result<(Vec<CopyStep>, u8), SenseReason> {
        let plan = xcopy::parse(data)?;
        let target = self
            .slots
            .get(idx)
            .and_then(|s| s.as_ref())
            .and_then(|s| s.conn.target.clone());
        let Some(target) = target else {
            return Err(SenseReason::CopyTargetDeviceNotReachable);
        };
        let it = self
            .slots
            .get(idx)
            .and_then(|s| s.as_ref())
            .map(|s| s.conn.nexus.id().clone())
            .unwrap_or_default();
        // The copy reads its sources and writes its destinations for the initiator: a
        // persistent reservation that would refuse this I_T nexus a READ of a source or a WRITE
        // of a destination refuses the copy (SPC-4 §5.13.1: reservations restrict access by
        // any command), as a copy target it cannot reach.
        let refused = |l: &LunRt, opcode: u8| {
            let mut cdb = [0u8; 16];
            cdb[0] = opcode;
            l.shared.pr_active() && pr::conflicts(&l.shared.lock_pr(), &it, &cdb)
        };
        let mut steps = Vec::with_capacity(plan.segments.len());
        for seg in &plan.segments {
            let (Some(src), Some(dst)) = (
                xcopy::resolve(&target.server, &seg.src),
                xcopy::resolve(&target.server, &seg.dst),
            ) else {
                return Err(SenseReason::CopyTargetDeviceNotReachable);
            };
            xcopy::check_segment(src, dst, seg)?;
            let find = |id: u16| target.luns.iter().find(|l| l.id == u64::from(id)).cloned();
            let (Some(s), Some(d)) = (find(src.id), find(dst.id)) else {
                return Err(SenseReason::CopyTargetDeviceNotReachable);
            };
            if refused(&s, op::READ_16) || refused(&d, op::WRITE_16) {
                return Err(SenseReason::CopyTargetDeviceNotReachable);
            }
            let bs = u64::from(s.block_size);
            steps.push(CopyStep {
                src_off: seg.src_lba * bs,
                dst_off: seg.dst_lba * u64::from(d.block_size),
                len: u64::from(seg.blocks) * bs,
                src: s,
                dst: d,
            });
        }
        Ok((steps, plan.list_id))
    }

    /// GET LBA STATUS: runs of data and holes of the extent files (SEEK_DATA / SEEK_HOLE), or of
    /// the chunks a memory LUN holds.
    fn get_lba_status(
        &mut self,
        idx: usize,
        lun: &Arc<LunRt>,
        work: &IoWork,
        alloc_len: u32,
    ) -> Completion {
        let Some(info) = self.lun_info(idx, lun) else {
            return Completion::check(SenseReason::InternalTargetFailure);
        };
        let Some(buf) = work.buf else {
            // No Data-In buffer: the initiator takes no data (EDTL 0), which is not an error
            // (SPC-4 §4.2.5.6), as on a thick LUN.
            return Completion::good(0);
        };
        let bs = u64::from(lun.block_size);
        let mut probe = |lba: u64, max: u64| -> Result<(LbaState, u64), ()> {
            let (map, files) = match &lun.backing {
                Backing::Vmdk { map, files, .. } => (map, files),
                Backing::Offline { .. } => return Err(()),
                Backing::Ramdisk { mem } => {
                    let (held, bytes) = mem.allocation(lba * bs, max * bs);
                    let state = if held {
                        LbaState::Mapped
                    } else {
                        LbaState::Deallocated
                    };
                    return Ok((state, (bytes / bs).clamp(1, max)));
                }
            };
            extent_run(map, files, lba * bs, bs, max)
        };
        let len = self.pool.len_of(buf);
        let data_in = &mut self.pool.slice(buf)[..len];
        sbc::get_lba_status(&info, work.req.lba, alloc_len, data_in, &mut probe)
            .unwrap_or_else(|()| Completion::check(SenseReason::UnrecoveredReadError))
    }

    /// Whether `task` of connection `idx` has been aborted: by its own session (ABORT TASK and
    /// the like), by the mail of its LUN (another session's reset or PREEMPT AND ABORT), or by
    /// the end of its connection (dropped, logged out, or its session reinstated: at
    /// ErrorRecoveryLevel 0 its tasks end with it, and a reinstating login waits for them).
    fn task_aborted(&mut self, idx: usize, task: u16) -> bool {
        self.slots
            .get_mut(idx)
            .and_then(Option::as_mut)
            .is_some_and(|s| {
                s.conn.check_task_mail(task);
                s.closing || s.conn.aborted(task)
            })
    }

    /// A step of `job` completed (`result`: how its operations ended): run the next one.
    /// An abort stops a job between its steps (a WRITE SAME, UNMAP or EXTENDED COPY may take
    /// seconds): it ends there unanswered, giving back its ranges, so the abort or reset that
    /// waits for it is answered then.
    pub(super) fn advance(&mut self, idx: usize, mut job: Box<Job>, result: IoResult) {
        loop {
            if matches!(result, IoResult::Ok) && self.task_aborted(idx, job.work.task) {
                let gone = Completion::check(SenseReason::InternalTargetFailure);
                return self.end_job(idx, *job, Err(gone));
            }
            // A reset of another LUN the job writes (an EXTENDED COPY's destination) aborts no
            // task of this LUN but waits for the ranges the job holds there: the copy ends here
            // (COPY ABORTED, and RECEIVE COPY RESULTS says how far it got) rather than make the
            // reset wait for all of it. A reset of its own LUN reaches it as mail, above.
            if matches!(result, IoResult::Ok)
                && job
                    .held
                    .iter()
                    .any(|(l, ..)| !Arc::ptr_eq(l, &job.lun) && l.shared.resetting())
            {
                return self.end_job(idx, *job, Ok(IoResult::Failed));
            }
            match result {
                IoResult::Ok => {}
                IoResult::NoSpace | IoResult::WriteProtected => {
                    return self.end_job(idx, *job, Ok(result));
                }
                _ => {
                    let r = if job.reading {
                        IoResult::ReadError(Some(job.work.req.lba))
                    } else {
                        IoResult::WriteError(Some(job.work.req.lba))
                    };
                    return self.end_job(idx, *job, Ok(r));
                }
            }
            // The step's operations count their bytes afresh (`submit_range` adds to `expect`).
            if let Some(op) = self
                .slots
                .get_mut(idx)
                .and_then(Option::as_mut)
                .and_then(|s| s.file_ops.get_mut(usize::from(job.work.task)))
            {
                op.new_step();
            }
            match self.step(idx, &mut job) {
                Ok(0) => continue,
                Ok(n) => {
                    if let Some(s) = self.slots.get_mut(idx).and_then(Option::as_mut) {
                        let op = &mut s.file_ops[usize::from(job.work.task)];
                        op.pending = n;
                        op.job = Some(job);
                    }
                    return;
                }
                Err(Next::Finish(r)) => return self.end_job(idx, *job, r),
            }
        }
    }

    /// Issues the job's next step: `Ok(n)` with n SQEs submitted (0: the step completed at once),
    /// or `Err` when the job is over.
    fn step(&mut self, idx: usize, job: &mut Job) -> Result<u16, Next> {
        let req = job.work.req;
        let (off, len) = (req.byte_offset, req.byte_len);
        let data = job.work.buf;
        let lun = job.lun.clone();
        let phase = job.phase;
        job.phase = phase.saturating_add(1);
        job.reading = match &job.kind {
            JobKind::CompareAndWrite { .. } | JobKind::OrWrite { .. } => phase == 0,
            JobKind::Copy { wrote, .. } => !*wrote,
            _ => false,
        };
        let task = job.work.task;
        // RWF_DSYNC does not cover deallocation: once a durable job's last hole is punched, its
        // extents are synced before it completes.
        let punched_all = match &job.kind {
            JobKind::Unmap { ranges, next } => !ranges.is_empty() && *next >= ranges.len(),
            JobKind::WriteSame {
                punch, next, end, ..
            } => *punch && next >= end,
            _ => false,
        };
        if job.durable && punched_all && !job.synced {
            job.synced = true;
            let n = self.submit_datasync(idx, task, &lun);
            if n > 0 {
                self.count_other_flush(idx, task, &lun);
            }
            return Ok(n);
        }
        let durable = job.durable;
        let run = move |w: &mut Worker,
                        op: RangeOp,
                        at: u64,
                        n: usize,
                        buf: Option<BufId>,
                        buf_at: usize,
                        lun: &Arc<LunRt>| {
            w.submit_range(idx, task, lun, op, at, n, buf, buf_at, durable)
                .map_err(|r| Next::Finish(Ok(r)))
        };
        match &mut job.kind {
            JobKind::CompareAndWrite { verify } => match phase {
                0 => run(self, RangeOp::Read, off, len, data, 0, &lun),
                1 => {
                    let d = data.ok_or(Next::Finish(Ok(IoResult::Failed)))?;
                    let media = &self.pool.slice(d)[..len];
                    if let Some(at) = scsi::first_mismatch(media, verify) {
                        return Err(Next::Finish(Ok(IoResult::Miscompare(at as u64))));
                    }
                    run(self, RangeOp::Write, off, len, Some(d), len, &lun)
                }
                _ => Err(Next::Finish(Ok(IoResult::Ok))),
            },
            JobKind::OrWrite { data: src } => match phase {
                0 => run(self, RangeOp::Read, off, len, data, 0, &lun),
                1 => {
                    let d = data.ok_or(Next::Finish(Ok(IoResult::Failed)))?;
                    sbc::or_into(&mut self.pool.slice(d)[..len], src);
                    run(self, RangeOp::Write, off, len, Some(d), 0, &lun)
                }
                _ => Err(Next::Finish(Ok(IoResult::Ok))),
            },
            JobKind::Atomic => match phase {
                0 => run(self, RangeOp::Write, off, len, data, 0, &lun),
                _ => Err(Next::Finish(Ok(IoResult::Ok))),
            },
            JobKind::WriteSame {
                chunk,
                chunk_len,
                next,
                end,
                punch,
            } => {
                if *next >= *end {
                    return Err(Next::Finish(Ok(IoResult::Ok)));
                }
                if *punch {
                    let n = (*end - *next) as usize;
                    *next = *end;
                    return run(self, RangeOp::Punch, off, n, None, 0, &lun);
                }
                let Some(c) = chunk.map(|c| c.buf) else {
                    return Err(Next::Finish(Ok(IoResult::Failed)));
                };
                let n = ((*end - *next) as usize).min(*chunk_len);
                let at = *next;
                *next += n as u64;
                run(self, RangeOp::Write, at, n, Some(c), 0, &lun)
            }
            JobKind::Unmap { ranges, next } => {
                let Some(&(at, n)) = ranges.get(*next) else {
                    return Err(Next::Finish(Ok(IoResult::Ok)));
                };
                *next += 1;
                run(self, RangeOp::Punch, at, n as usize, None, 0, &lun)
            }
            JobKind::Copy {
                steps,
                next,
                done_in_step,
                buf,
                wrote,
                list_id,
                bytes,
            } => {
                let Some(s) = steps.get(*next) else {
                    let result = CopyResult {
                        list_id: *list_id,
                        ok: true,
                        segments_processed: *next as u16,
                        bytes: *bytes,
                    };
                    self.record_copy(idx, task, result);
                    return Err(Next::Finish(Ok(IoResult::Ok)));
                };
                // Steps as large as the job's buffer allows (its own may be the smaller).
                let n =
                    ((s.len - *done_in_step) as usize).min(self.pool.len_of(buf.buf).min(CHUNK));
                if n == 0 {
                    *next += 1;
                    *done_in_step = 0;
                    return Ok(0);
                }
                let (src, dst, so, dof, b) =
                    (s.src.clone(), s.dst.clone(), s.src_off, s.dst_off, buf.buf);
                if !*wrote {
                    *wrote = true;
                    run(self, RangeOp::Read, so + *done_in_step, n, Some(b), 0, &src)
                } else {
                    *wrote = false;
                    let at = dof + *done_in_step;
                    *done_in_step += n as u64;
                    *bytes += n as u64;
                    // The copy's writes are durable as the destination LUN's own would be.
                    let dsync = self.write_cache_off(idx, &dst);
                    self.submit_range(idx, task, &dst, RangeOp::Write, at, n, Some(b), 0, dsync)
                        .map_err(|r| Next::Finish(Ok(r)))
                }
            }
        }
    }

    /// Keeps a finished copy's outcome for RECEIVE COPY RESULTS (per nexus and LUN).
    fn record_copy(&mut self, idx: usize, task: u16, result: CopyResult) {
        if let Some(s) = self.slots.get_mut(idx).and_then(Option::as_mut)
            && let Some(lun) = scsi::decode_lun(s.conn.task_lun(task).to_be_bytes())
        {
            s.conn.nexus.record_copy(lun, result);
        }
    }

    /// A buffer of up to `want` bytes for a job that has taken its data-out (a WRITE SAME's
    /// pattern, an EXTENDED COPY's parameter list) to move its data through: the task's own
    /// buffer `own` when it is that long (a WRITE SAME with NDOB that writes zeroes is given
    /// one, `Conn::buffer_len`), else one of the pool's, or, none being free, `own` all the
    /// same (smaller steps, but the job runs: while other sessions' commands wait for every
    /// buffer freed, a second one is rarely free, and the command would end in TASK SET FULL
    /// each time it came). `None` without either.
    fn job_buffer(&mut self, want: usize, own: Option<BufId>) -> Option<Scratch> {
        if let Some(b) = own.filter(|&b| self.pool.len_of(b) >= want) {
            return Some(Scratch::own(b));
        }
        (self.pool.alloc(want).map(Scratch::pooled)).or_else(|| own.map(Scratch::own))
    }

    /// Ends a job: releases its buffers and range, then lets the connection respond.
    /// Gives back the pool buffers a job's kind took.
    fn release_buffers(&mut self, kind: &JobKind) {
        match kind {
            JobKind::WriteSame { chunk: Some(b), .. } | JobKind::Copy { buf: b, .. } => {
                if !b.own {
                    self.pool.release(b.buf);
                }
            }
            JobKind::CompareAndWrite { .. }
            | JobKind::OrWrite { .. }
            | JobKind::Atomic
            | JobKind::Unmap { .. }
            | JobKind::WriteSame { chunk: None, .. } => {}
        }
    }

    fn end_job(&mut self, idx: usize, job: Job, result: Result<IoResult, Completion>) {
        release_all(&job.held);
        self.release_buffers(&job.kind);
        let mut result = result;
        if let JobKind::Copy {
            next,
            list_id,
            bytes,
            ..
        } = job.kind
            && !matches!(result, Ok(IoResult::Ok))
        {
            let r = CopyResult {
                list_id,
                ok: false,
                segments_processed: next as u16,
                bytes,
            };
            self.record_copy(idx, job.work.task, r);
            result = Err(Completion::check(SenseReason::CopyAborted));
        }
        match result {
            Ok(r) => {
                if let Some(s) = self.slots.get_mut(idx).and_then(Option::as_mut) {
                    s.conn.io_done(job.work.task, r, &mut self.pool);
                }
            }
            Err(c) => self.job_finish_completion(idx, job.work, c),
        }
    }

    fn job_finish_completion(&mut self, idx: usize, work: IoWork, c: Completion) {
        if let Some(s) = self.slots.get_mut(idx).and_then(Option::as_mut) {
            s.conn.finish_with(work.task, &c, &mut self.pool);
        }
    }

    /// Reads, writes or punches `len` bytes at `offset` of `lun`, split over its extents;
    /// `buf`/`buf_at` is the registered buffer the data comes from or goes to; `dsync`: writes
    /// reach stable storage before they complete (RWF_DSYNC). Returns the SQEs
    /// submitted (0 when it completed at once: memory LUNs, zero extents), or how it failed at once.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn submit_range(
        &mut self,
        idx: usize,
        task: u16,
        lun: &Arc<LunRt>,
        op: RangeOp,
        offset: u64,
        len: usize,
        buf: Option<BufId>,
        buf_at: usize,
        dsync: bool,
    ) -> Result<u16, IoResult> {
        if let Some(b) = buf
            && buf_at + len > self.pool.len_of(b)
        {
            return Err(IoResult::Failed);
        }
        let map = match &lun.backing {
            Backing::Ramdisk { .. } => {
                let r = match (op, buf) {
                    (RangeOp::Punch, _) => crate::daemon::ramdisk::zero(lun, offset, len),
                    (RangeOp::Read, Some(b)) => crate::daemon::ramdisk::transfer(
                        lun,
                        offset,
                        &mut self.pool.slice(b)[buf_at..],
                        len,
                        Op::Read,
                    ),
                    (RangeOp::Write, Some(b)) => crate::daemon::ramdisk::transfer(
                        lun,
                        offset,
                        &mut self.pool.slice(b)[buf_at..],
                        len,
                        Op::Write,
                    ),
                    _ => IoResult::Failed,
                };
                return if r == IoResult::Ok { Ok(0) } else { Err(r) };
            }
            Backing::Vmdk { map, .. } => map,
            Backing::Offline { .. } => return Err(IoResult::Failed),
        };
        let mode = if op == RangeOp::Read {
            Op::Read
        } else {
            Op::Write
        };
        let segments = map
            .map(offset, len as u64, mode)
            .map_err(|_| IoResult::Failed)?;
        let mut sqes = std::mem::take(&mut self.sqe_scratch);
        sqes.clear();
        let mut at = buf_at;
        let mut failed = false;
        let mut expect = 0u64;
        for seg in segments {
            let n = seg.len as usize;
            if seg.kind == SegmentKind::Zero {
                if op == RangeOp::Read
                    && let Some(b) = buf
                {
                    self.pool.slice(b)[at..at + n].fill(0);
                }
                at += n;
                continue;
            }
            let Some(file) = self.file(lun, seg.extent) else {
                failed = true;
                break;
            };
            let sqe = match (op, buf) {
                (RangeOp::Punch, _) => on_file!(file, |f| opcode::Fallocate::new(f, seg.len)
                    .offset(seg.file_offset)
                    .mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
                    .build()),
                (_, Some(b)) => {
                    // SAFETY: at + n <= buf_at + len <= the slot's length (checked above).
                    let ptr = unsafe { self.pool.ptr(b).add(at) };
                    if op == RangeOp::Read {
                        on_file!(file, |f| opcode::ReadFixed::new(f, ptr, n as u32, b.0)
                            .offset(seg.file_offset)
                            .build())
                    } else {
                        on_file!(file, |f| opcode::WriteFixed::new(f, ptr, n as u32, b.0)
                            .offset(seg.file_offset)
                            .rw_flags(if dsync { libc::RWF_DSYNC } else { 0 })
                            .build())
                    }
                }
                _ => {
                    failed = true;
                    break;
                }
            };
            if op != RangeOp::Punch {
                expect += n as u64;
            }
            sqes.push(sqe.user_data(user_data(idx, Kind::File, task)));
            at += n;
        }
        if failed {
            self.sqe_scratch = sqes;
            return Err(IoResult::Failed);
        }
        let count = sqes.len() as u16;
        if let Some(s) = self.slots.get_mut(idx).and_then(Option::as_mut) {
            s.inflight += u32::from(count);
            if let Some(f) = s.file_ops.get_mut(usize::from(task)) {
                f.expect += expect;
                f.writes |= op == RangeOp::Write;
                if dsync && op == RangeOp::Write && !lun.direct_io() {
                    f.flushes = Some(lun.clone());
                }
            }
        }
        if count > 0 && dsync && op == RangeOp::Write && !lun.direct_io() {
            self.count_other_flush(idx, task, lun);
        }
        for sqe in sqes.drain(..) {
            self.push(sqe);
        }
        self.sqe_scratch = sqes;
        Ok(count)
    }
}

/// GET LBA STATUS of a VMDK LUN from byte `off`: the state of the block there and for how many
/// blocks of `bs` bytes (at least one, at most `max`) it stays so, within its extent. A block
/// that straddles two extents (extents are counted in sectors, not blocks) is mapped: its state
/// would otherwise be read from the first extent alone, and data in the second would be
/// reported deallocated.
fn extent_run(
    map: &crate::vmdk::ExtentMap,
    files: &[Option<std::fs::File>],
    off: u64,
    bs: u64,
    max: u64,
) -> Result<(LbaState, u64), ()> {
    let Some(seg) = map.map(off, bs, Op::Read).ok().and_then(|mut s| s.next()) else {
        return Err(());
    };
    let Some((ext_start, ext_len)) = map.extent_range(seg.extent) else {
        return Err(());
    };
    if seg.len < bs {
        return Ok((LbaState::Mapped, 1));
    }
    // Whole blocks left in this extent from `off`, at most `max`.
    let left = ((ext_start + ext_len - off) / bs).clamp(1, max.max(1));
    let Some(Some(file)) = files.get(seg.extent) else {
        return Ok((LbaState::Deallocated, left));
    };
    Ok(file_run(file, seg.file_offset, bs, left))
}

/// GET LBA STATUS of an extent file from byte `at`: whether the block there holds data, and
/// for how many blocks of `bs` bytes (at least one, at most `left`) that stays so. A block that
/// holds data in any of its bytes is mapped: a hole that ends inside it (the file system's
/// blocks smaller than the LUN's, or an extent at an offset that is not a multiple of them)
/// does not make it deallocated, or an initiator that skips deallocated blocks (reading them
/// as zeroes) would lose that data.
fn file_run(file: &std::fs::File, at: u64, bs: u64, left: u64) -> (LbaState, u64) {
    let fd = file.as_raw_fd();
    let Ok(at) = i64::try_from(at) else {
        return (LbaState::Mapped, left.max(1));
    };
    let bs_i = i64::try_from(bs).unwrap_or(i64::MAX);
    let run_end = |to: i64| (((to - at).max(0) as u64) / bs).clamp(1, left.max(1));
    // SAFETY: lseek on an extent file we hold open.
    let data = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
    // Only ENXIO says "no data from here on"; another error (EIO, a file that cannot seek)
    // says nothing, and blocks of unknown state are mapped.
    if data < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::ENXIO) {
        return (LbaState::Mapped, left.max(1));
    }
    if data < 0 || data >= at.saturating_add(bs_i) {
        // A hole from `at` up to the next data (or the end of the extent): whole blocks of it.
        let next = if data < 0 {
            at.saturating_add(i64::try_from(left.saturating_mul(bs)).unwrap_or(i64::MAX))
        } else {
            data
        };
        return (LbaState::Deallocated, run_end(next));
    }
    // Data from `at` or inside its block: mapped up to the next hole after it.
    // SAFETY: as above.
    let hole = unsafe { libc::lseek(fd, data.max(at), libc::SEEK_HOLE) };
    (
        LbaState::Mapped,
        if hole < 0 { left.max(1) } else { run_end(hole) },
    )
}

/// The byte ranges `(lun, offset, length)` as spans to hold: per LUN, overlapping or touching
/// ranges merged (a command's own ranges must not keep it from holding them), the others kept
/// apart so that plain writes between them need not wait.
fn spans<'a>(
    ranges: impl Iterator<Item = (&'a Arc<LunRt>, u64, u64)>,
) -> Vec<(Arc<LunRt>, u64, u64)> {
    let mut all: Vec<(&Arc<LunRt>, u64, u64)> = ranges
        .filter(|r| r.2 > 0)
        .map(|(l, at, n)| (l, at, at.saturating_add(n)))
        .collect();
    all.sort_by_key(|&(l, s, _)| (Arc::as_ptr(l), s));
    let mut out: Vec<(Arc<LunRt>, u64, u64)> = Vec::new();
    for (l, s, e) in all {
        match out.last_mut() {
            Some((ol, _, oe)) if Arc::ptr_eq(ol, l) && s <= *oe => *oe = (*oe).max(e),
            _ => out.push((l.clone(), s, e)),
        }
    }
    out
}

fn release_all(held: &[(Arc<LunRt>, u64, u64)]) {
    for (lun, s, e) in held {
        lun.shared.release(*s, *e);
    }
}

/// Takes every span in its LUN's range lock, or none (false: one is held by another
/// operation; the caller retries later).
fn hold_all(spans: &[(Arc<LunRt>, u64, u64)]) -> bool {
    for (i, (lun, s, e)) in spans.iter().enumerate() {
        if !lun.shared.try_hold(*s, *e) {
            release_all(&spans[..i]);
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn a_file_whose_holes_cannot_be_found_is_mapped() {
        // SEEK_DATA fails with ESPIPE on a pipe: nothing is known, so nothing is deallocated.
        let mut fds = [0; 2];
        // SAFETY: pipe() fills the two descriptors, which are owned from here on.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both descriptors were just opened and are owned by nothing else.
        let (r, _w) = unsafe {
            use std::os::fd::FromRawFd;
            (
                std::fs::File::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        };
        assert_eq!(file_run(&r, 0, 512, 8), (LbaState::Mapped, 8));
    }

    #[test]
    fn a_block_across_two_extents_is_mapped() {
        // Extents of 9 and 7 sectors: the second 4 KiB block is one sector of `a` (a hole)
        // and seven of `b` (data). Its state is not `a`'s alone.
        let dir = std::env::temp_dir().join(format!("vit-extent-run-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let open = |name: &str| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(dir.join(name))
                .unwrap()
        };
        let (a, b) = (open("a"), open("b"));
        a.set_len(9 * 512).unwrap();
        b.write_all_at(&[0xa5u8; 7 * 512], 0).unwrap();
        let desc = crate::vmdk::Descriptor::parse(
            "# Disk DescriptorFile\ncreateType=\"twoGbMaxExtentFlat\"\n\
             RW 9 FLAT \"a\" 0\nRW 7 FLAT \"b\" 0\n",
        )
        .unwrap();
        let map = crate::vmdk::ExtentMap::new(&desc);
        let files = vec![Some(a), Some(b)];
        assert_eq!(
            extent_run(&map, &files, 4096, 4096, 1),
            Ok((LbaState::Mapped, 1))
        );
        // The first block lies in `a` alone, a hole.
        assert_eq!(
            extent_run(&map, &files, 0, 4096, 2),
            Ok((LbaState::Deallocated, 1))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_block_with_data_after_a_hole_inside_it_is_mapped() {
        // A file with a hole at [0, 64 KiB) and data at [64 KiB, 128 KiB), probed in blocks of
        // 4 KiB from byte 2 KiB (an extent at an offset of 4 sectors): the block at 62 KiB holds
        // data in its second half, so the hole is 15 blocks long and that block is mapped.
        let dir = std::env::temp_dir().join(format!("vit-file-run-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("extent");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.set_len(256 << 10).unwrap();
        f.write_all_at(&[0xa5u8; 64 << 10], 64 << 10).unwrap();
        let bs = 4096;
        let (state, run) = file_run(&f, 2048, bs, 63);
        // A file system without holes reports all of it as data.
        if state == LbaState::Deallocated {
            assert_eq!(run, 15, "the hole's whole blocks only");
            let (state, run) = file_run(&f, 2048 + 15 * bs, bs, 48);
            assert_eq!(state, LbaState::Mapped, "the block the data begins in");
            assert_eq!(run, 16, "up to the block the hole after the data begins in");
        }
        // Aligned: the hole is exactly 16 blocks, the data 16.
        assert_eq!(file_run(&f, 0, bs, 64).1, 16);
        assert_eq!(file_run(&f, 64 << 10, bs, 48), (LbaState::Mapped, 16));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
