//! The little state a LUN shares between data threads: its persistent reservations (with the
//! unit attentions and aborts they cause for sessions on any thread) and the block ranges held
//! by COMPARE AND WRITE, ORWRITE and WRITE ATOMIC, with the count of plain writes in flight those
//! wait for, and its flush rounds (one round of SYNCHRONIZE CACHE fdatasyncs at a time, on any
//! thread). Everything else on the data path is owned by one thread. The READ fast path touches
//! two atomics (`pr_active`, `mail_seq`); a plain WRITE also reads `ranges_held` and counts
//! itself in and out on its data thread's own cache line.

use crate::datastore::write_atomic;
use crate::scsi::SenseReason;
use crate::scsi::pr::{ItNexusId, PrEffects, PrState};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// How many conditions one session's inbox keeps for a LUN (equal ones are kept once; past
/// that the newest replaces the last, as [`crate::scsi::ua::UaQueue`] does).
const INBOX: usize = crate::scsi::ua::UA_QUEUE_CAPACITY + 1;

/// What one session posts for every other session of a LUN.
#[derive(Debug)]
pub enum Mail {
    /// A reservation command's effects (unit attentions, PREEMPT AND ABORT).
    Reservation(PrEffects),
    /// A LUN or target reset by `from`: every nexus gets `reason` and loses its tasks here.
    Reset {
        reason: SenseReason,
        from: ItNexusId,
    },
    /// CLEAR TASK SET by `from`: every other nexus loses its tasks here, and one that had any
    /// gets COMMANDS CLEARED BY ANOTHER INITIATOR (SAM-5 5.6 and 7.6; TAS = 0).
    Clear { from: ItNexusId },
}

impl Mail {
    /// Whether it aborts the tasks `me` has on the LUN (a reset or CLEAR TASK SET: those of
    /// every other nexus; the session doing it aborted its own already).
    pub fn aborts(&self, me: &ItNexusId) -> bool {
        match self {
            Mail::Reservation(effects) => effects.aborts(me),
            Mail::Reset { from, .. } | Mail::Clear { from } => from != me,
        }
    }
}

/// One condition mail left for a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Note {
    /// A unit attention for its nexus.
    Attention(SenseReason),
    /// Another nexus's CLEAR TASK SET: COMMANDS CLEARED BY ANOTHER INITIATOR if it had tasks.
    Cleared,
}

/// What the mail posted for one session of the LUN since it last took it: bounded whatever
/// was posted (equal conditions once; a reset's supersedes those before it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inbox {
    /// The conditions, oldest first.
    pub notes: Vec<Note>,
    /// Whether its tasks on the LUN are aborted (PREEMPT AND ABORT, another nexus's reset or
    /// CLEAR TASK SET).
    pub aborts: bool,
}

impl Inbox {
    fn deliver(&mut self, m: &Mail, me: &ItNexusId) {
        match m {
            Mail::Reservation(effects) => {
                for r in effects.unit_attentions_for(me) {
                    self.note(Note::Attention(r));
                }
            }
            Mail::Reset { reason, .. } => self.note(Note::Attention(*reason)),
            Mail::Clear { from } if from != me => self.note(Note::Cleared),
            Mail::Clear { .. } => {}
        }
        self.aborts |= m.aborts(me);
    }

    fn note(&mut self, n: Note) {
        if matches!(n, Note::Attention(r) if r.is_reset()) {
            self.notes.clear();
        }
        if self.notes.contains(&n) {
            return;
        }
        if self.notes.len() == INBOX {
            self.notes.pop();
        }
        self.notes.push(n);
    }
}

/// The sessions of a LUN, each with the mail it has not taken yet.
#[derive(Debug, Default)]
struct Readers {
    slots: Vec<Option<(ItNexusId, Inbox)>>,
    free: Vec<usize>,
}

/// Shared state of one LUN.
#[derive(Debug, Default)]
pub struct LunShared {
    pr: Mutex<PrState>,
    /// Mirrors `PrState::is_active`: when false, commands skip the lock.
    pr_active: AtomicBool,
    /// Where the reservation state is kept when APTPL is set (beside the descriptor).
    pr_file: Option<PathBuf>,
    /// Every session of the LUN, on any thread, with what was posted for it and not taken:
    /// mail is delivered to each at once, so none is lost however long a session waits.
    mail: Mutex<Readers>,
    /// Counts the mail posted (changed under the `mail` lock, after the delivery).
    mail_seq: AtomicU64,
    ranges: Mutex<Vec<(u64, u64)>>,
    ranges_held: AtomicUsize,
    /// Atomic operations waiting for the plain writes in flight to finish: while one waits,
    /// every new plain write waits (so the wait ends within one write's time).
    drains: AtomicUsize,
    /// Plain writes in flight, one counter per data thread (modulo [`WRITE_SHARDS`]).
    writes: [Shard; WRITE_SHARDS],
    /// LUN resets waiting for the writes in flight ([`Self::begin_reset`]); changed and read
    /// only under the `ranges` lock, which orders it against the holds.
    resets: AtomicUsize,
    /// A flush of the LUN's writes failed: Linux reports a failed writeback to one fsync of
    /// a file, and the next one succeeds though the data never reached the device, so every
    /// later SYNCHRONIZE CACHE fails too (until vitd restarts).
    flush_failed: AtomicBool,
    /// The LUN's flush rounds ([`Self::flush_join`]): at most one in flight, on any thread.
    flushes: Mutex<FlushRounds>,
    /// The other flushes in flight ([`Self::other_flush_start`]), counted in two alternating
    /// epochs: a round that ends waits for those of the epoch it ends, while new ones count in
    /// the next (so the wait ends within one flush's time however many follow).
    other_flushes: [AtomicUsize; 2],
    /// The epoch other flushes count in now (its low bit picks the counter).
    flush_epoch: AtomicUsize,
}

/// Where a request for a flush of a LUN's writes (SYNCHRONIZE CACHE) stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushTurn {
    /// It runs round `n` now: it issues the fdatasyncs, and reports their end to
    /// [`LunShared::flush_finish`].
    Issue(u64),
    /// It waits for round `n`, which began (or will begin) after it arrived: it asks again
    /// later ([`LunShared::flush_poll`]); nothing is kept for it meanwhile.
    Wait(u64),
    /// Round `n` it waited for is over: GOOD when true, else the flush failed (that round's, or
    /// one before it: the latch).
    Done(bool),
}

/// The flush rounds of a LUN: `started` rounds began, the first `done` of them ended; one is
/// in flight while `started > done` (never more than one).
///
/// Linux reports a failed writeback to one fsync of an open file only (errseq): with two
/// fdatasyncs of the same extent in flight, the kernel may give the error to one and 0 to the
/// other, and the one that got 0 would be answered GOOD before the other's failure is latched.
/// With one round at a time, the round that gets the error latches it before any request it
/// or a later round serves is answered. A request that arrives while a round runs waits for
/// the next one (the running one may have begun before the writes it must cover were
/// acknowledged), and all that waited are served by that one round.
#[derive(Debug, Default)]
struct FlushRounds {
    started: u64,
    done: u64,
    /// The round whose fdatasyncs have ended, waiting for the other flushes of the LUN that were
    /// in flight then (counted in `LunShared::other_flushes[.1]`) before it is done.
    draining: Option<(u64, usize)>,
}

impl FlushRounds {
    /// A request arrives: it starts a round when none runs, else waits for the next.
    fn join(&mut self) -> FlushTurn {
        if self.started == self.done {
            self.started += 1;
            FlushTurn::Issue(self.started)
        } else {
            FlushTurn::Wait(self.started + 1)
        }
    }

    /// A request waiting for round `n` asks again: served (`Done`, the verdict filled in by the
    /// caller), still waiting, or it starts round `n` (the one before has ended, and no other
    /// request waiting for it started it yet).
    fn poll(&mut self, n: u64) -> FlushTurn {
        if self.done >= n {
            FlushTurn::Done(true)
        } else if self.started == self.done {
            self.started += 1;
            debug_assert_eq!(self.started, n);
            FlushTurn::Issue(self.started)
        } else {
            FlushTurn::Wait(n)
        }
    }

    fn finish(&mut self, n: u64) {
        self.done = self.done.max(n);
    }
}

/// Counters of plain writes in flight; a data thread uses shard `index % WRITE_SHARDS`.
pub const WRITE_SHARDS: usize = 16;

/// A counter alone on its cache line, so data threads do not share lines.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard(AtomicUsize);

impl LunShared {
    /// State for a LUN that keeps no reservations across restarts (a memory LUN).
    pub fn new() -> Self {
        Self::with_state(PrState::new(), None)
    }

    /// State for a LUN whose reservations made with APTPL are saved at `pr_file`, starting
    /// from what is saved there (none when there is no file). A file that exists but cannot be
    /// read back is an error, never ignored: serving the LUN without the reservations its
    /// initiators made would drop a cluster's fencing (a node it fenced out could write).
    pub fn open(pr_file: PathBuf) -> std::io::Result<Self> {
        let pr = crate::datastore::load_saved_reservations(&pr_file)?.unwrap_or_else(PrState::new);
        Ok(Self::with_state(pr, Some(pr_file)))
    }

    fn with_state(pr: PrState, pr_file: Option<PathBuf>) -> Self {
        let active = pr.is_active();
        LunShared {
            pr: Mutex::new(pr),
            pr_active: AtomicBool::new(active),
            pr_file,
            ..Default::default()
        }
    }

    /// Whether a flush of this LUN's writes has failed since vitd started.
    pub fn flush_failed(&self) -> bool {
        self.flush_failed.load(Ordering::Acquire)
    }

    /// Records that a flush failed; true the first time (to say so once).
    pub fn note_flush_failed(&self) -> bool {
        !self.flush_failed.swap(true, Ordering::AcqRel)
    }

    fn rounds(&self) -> MutexGuard<'_, FlushRounds> {
        self.flushes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A SYNCHRONIZE CACHE of the LUN: it issues the next flush round now (`Issue`), or waits
    /// for one (`Wait`, then [`Self::flush_poll`] from its own data thread: no thread blocks).
    /// A request that waits and goes away (aborted, its connection ended) leaves nothing here.
    pub fn flush_join(&self) -> FlushTurn {
        self.rounds().join()
    }

    /// A request waiting for round `n` asks again: `Done` with its verdict, `Wait`, or `Issue`
    /// (it runs round `n` itself).
    pub fn flush_poll(&self, n: u64) -> FlushTurn {
        let mut r = self.rounds();
        self.drain_round(&mut r);
        match r.poll(n) {
            FlushTurn::Done(_) => FlushTurn::Done(!self.flush_failed()),
            other => other,
        }
    }

    /// Round `n`'s fdatasyncs have all completed, `failed` when one of them did (latched
    /// before the round ends, so every request it serves sees it). Returns the verdict of the
    /// requests it serves (GOOD when true), or `None` while other flushes that were in flight
    /// then are not done: any of them may have been told the writeback error the round's
    /// fdatasync was not, and latches it when it ends. The round's own request then waits for
    /// round `n` as the others do ([`Self::flush_poll`]).
    pub fn flush_finish(&self, n: u64, failed: bool) -> Option<bool> {
        let mut r = self.rounds();
        if failed {
            self.note_flush_failed();
        }
        // New other flushes count in the next epoch from now: those of this one were in flight
        // before the round's fdatasyncs ended.
        let slot = self.flush_epoch.fetch_add(1, Ordering::SeqCst) & 1;
        r.draining = Some((n, slot));
        self.drain_round(&mut r);
        (r.done >= n).then(|| !self.flush_failed())
    }

    /// Ends the round that waits for other flushes if they are done.
    fn drain_round(&self, r: &mut FlushRounds) {
        if let Some((n, slot)) = r.draining
            && self.other_flushes[slot].load(Ordering::SeqCst) == 0
        {
            r.draining = None;
            r.finish(n);
        }
    }

    /// A flush of the LUN that is not a round begins (an RWF_DSYNC write through the page
    /// cache, a job's fdatasync): Linux may report to it a writeback error that a round in
    /// flight needed, so a round that ends while it is in flight waits for it
    /// ([`Self::flush_finish`]). Returns what [`Self::other_flush_done`] takes. It must be
    /// counted out after any failure of it is latched ([`Self::note_flush_failed`]).
    pub fn other_flush_start(&self) -> usize {
        loop {
            let slot = self.flush_epoch.load(Ordering::SeqCst) & 1;
            self.other_flushes[slot].fetch_add(1, Ordering::SeqCst);
            // Counted in the epoch that is still current: a round that ends later sees it.
            if self.flush_epoch.load(Ordering::SeqCst) & 1 == slot {
                return slot;
            }
            self.other_flushes[slot].fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// A flush counted by [`Self::other_flush_start`] ended.
    pub fn other_flush_done(&self, slot: usize) {
        self.other_flushes[slot & 1].fetch_sub(1, Ordering::SeqCst);
    }

    /// Whether a reservation or registration exists (one atomic load).
    pub fn pr_active(&self) -> bool {
        self.pr_active.load(Ordering::Acquire)
    }

    /// Locks the reservation state.
    pub fn lock_pr(&self) -> MutexGuard<'_, PrState> {
        self.pr.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After a reservation command, under the same lock: refreshes the fast-path flag, persists
    /// the state when it changed (APTPL: written atomically beside the LUN, else removed), and
    /// posts the effects for every session of the LUN to pick up.
    pub fn settle(&self, pr: &mut PrState) {
        let _ = self.settle_or_restore(pr, None);
    }

    /// [`Self::settle`] for a command that may change the persistent state: when that state
    /// cannot be saved, `pr` is put back to `before` (what was saved last), nothing is posted,
    /// and the error is returned for the command to fail.
    pub fn settle_or_restore(
        &self,
        pr: &mut PrState,
        before: Option<PrState>,
    ) -> Result<(), String> {
        let effects = pr.take_effects();
        let saved = self.persist(pr, effects.changed);
        if let (Err(_), Some(before)) = (&saved, before) {
            *pr = before;
            let _ = pr.take_effects();
            self.pr_active.store(pr.is_active(), Ordering::Release);
            return saved;
        }
        self.pr_active.store(pr.is_active(), Ordering::Release);
        if effects.unit_attentions.is_empty() && effects.abort.is_empty() {
            return saved;
        }
        self.post(Mail::Reservation(effects));
        saved
    }

    fn persist(&self, pr: &PrState, changed: bool) -> Result<(), String> {
        if changed && let Some(path) = &self.pr_file {
            let result = if pr.aptpl() {
                write_atomic(path, &pr.encode()).map_err(|e| e.to_string())
            } else {
                // The removal is made durable too: else a crash could bring back the
                // registrations that APTPL=0 promised to drop at the next power loss.
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
                    Err(_) => Ok(()),
                    Ok(()) => crate::fsutil::sync_dir(crate::fsutil::parent_dir(path))
                        .map_err(|e| format!("{}: {}: {}", e.path.display(), e.op, e.source)),
                }
            };
            if let Err(e) = &result {
                tracing::error!("{}: saving reservations failed: {e}", path.display());
            }
            return result;
        }
        Ok(())
    }

    fn readers(&self) -> MutexGuard<'_, Readers> {
        self.mail.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A session of nexus `it` begins: mail posted from now on is kept for it until it takes
    /// it ([`Self::take_mail`]) or ends ([`Self::unregister`]). Returns its key and the
    /// [`Self::mail_seq`] it starts from.
    pub fn register(&self, it: &ItNexusId) -> (usize, u64) {
        let mut r = self.readers();
        let entry = Some((it.clone(), Inbox::default()));
        let key = match r.free.pop() {
            Some(k) => {
                r.slots[k] = entry;
                k
            }
            None => {
                r.slots.push(entry);
                r.slots.len() - 1
            }
        };
        (key, self.mail_seq.load(Ordering::Relaxed))
    }

    /// The session of `key` ended: nothing more is kept for it.
    pub fn unregister(&self, key: usize) {
        let mut r = self.readers();
        if let Some(slot) = r.slots.get_mut(key)
            && slot.take().is_some()
        {
            r.free.push(key);
        }
    }

    /// Posts mail for every session of the LUN (on any thread) to pick up.
    pub fn post(&self, m: Mail) {
        let mut r = self.readers();
        for (it, inbox) in r.slots.iter_mut().flatten() {
            inbox.deliver(&m, it);
        }
        let seq = self.mail_seq.load(Ordering::Relaxed) + 1;
        self.mail_seq.store(seq, Ordering::Release);
    }

    /// The sequence number of the latest posted effects (one atomic load): a session that saw
    /// this number has nothing new in its inbox.
    pub fn mail_seq(&self) -> u64 {
        self.mail_seq.load(Ordering::Acquire)
    }

    /// Takes what was posted for session `key`, and the [`Self::mail_seq`] it is up to date with.
    pub fn take_mail(&self, key: usize) -> (u64, Inbox) {
        let mut r = self.readers();
        let got = r
            .slots
            .get_mut(key)
            .and_then(Option::as_mut)
            .map(|(_, inbox)| std::mem::take(inbox))
            .unwrap_or_default();
        (self.mail_seq.load(Ordering::Relaxed), got)
    }

    /// What was posted for session `key` and not taken yet: whether it aborts its tasks, and
    /// whether another nexus's CLEAR TASK SET is among it.
    pub fn peek_mail(&self, key: usize) -> (bool, bool) {
        let r = self.readers();
        r.slots
            .get(key)
            .and_then(Option::as_ref)
            .map_or((false, false), |(_, inbox)| {
                (inbox.aborts, inbox.notes.contains(&Note::Cleared))
            })
    }

    /// Takes byte range [start, end) for an atomic operation; false when it overlaps one held.
    /// The caller then waits for the plain writes already in flight ([`Self::begin_drain`]).
    /// While a reset waits, no range is given (the job waits, and finds the reset's mail).
    pub fn try_hold(&self, start: u64, end: u64) -> bool {
        let mut r = self.ranges.lock().unwrap_or_else(|p| p.into_inner());
        if self.resets.load(Ordering::Relaxed) > 0 || r.iter().any(|&(s, e)| s < end && start < e) {
            return false;
        }
        r.push((start, end));
        self.ranges_held.fetch_add(1, Ordering::SeqCst);
        true
    }

    /// An atomic operation holding its range starts waiting for the plain writes in flight:
    /// from now on new plain writes wait too. Returns whether it may go on at once (none in
    /// flight; then the drain is already over).
    pub fn begin_drain(&self) -> bool {
        self.drains.fetch_add(1, Ordering::SeqCst);
        self.drained()
    }

    /// For an operation that began a drain: whether the plain writes in flight are done; if so,
    /// its drain ends (only writes to its range still wait, for the range).
    pub fn drained(&self) -> bool {
        if self.writes.iter().any(|c| c.0.load(Ordering::SeqCst) > 0) {
            return false;
        }
        self.drains.fetch_sub(1, Ordering::SeqCst);
        true
    }

    /// Gives up a drain that did not finish (the command is gone).
    pub fn abandon_drain(&self) {
        self.drains.fetch_sub(1, Ordering::SeqCst);
    }

    /// A plain write to [start, end) on data thread `shard` wants to start: true when it may (it
    /// is then counted until [`Self::write_done`]), false when it must wait for an atomic
    /// operation. Counting in before looking (and the atomic operation announcing its drain
    /// before counting) means that of two racing, at least one sees the other.
    pub fn write_start(&self, shard: usize, start: u64, end: u64) -> bool {
        let c = &self.writes[shard % WRITE_SHARDS].0;
        c.fetch_add(1, Ordering::SeqCst);
        if self.write_blocked(start, end) {
            c.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// A plain write counted by [`Self::write_start`] is finished.
    pub fn write_done(&self, shard: usize) {
        self.writes[shard % WRITE_SHARDS]
            .0
            .fetch_sub(1, Ordering::SeqCst);
    }

    /// A LUN reset begins waiting for the writes in flight on it (plain writes, and atomic
    /// operations and other jobs holding ranges), of every session on every thread: from now
    /// on new plain writes wait (so the wait ends within one write's time) until
    /// [`Self::reset_done`] says it is over or [`Self::abandon_reset`] gives it up.
    /// Jobs wait too: no range is given while a reset waits, so a job either holds its range
    /// before the reset begins (and the reset waits for it) or finds the reset.
    pub fn begin_reset(&self) {
        let _r = self.ranges.lock().unwrap_or_else(|p| p.into_inner());
        self.resets.fetch_add(1, Ordering::Relaxed);
        // The drain before the count: a write that sees the count (which `write_blocked` looks
        // at first) sees the drain too.
        self.drains.fetch_add(1, Ordering::SeqCst);
        self.ranges_held.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether a reset waits for the writes on this LUN: a job holding ranges here for a command
    /// of another LUN (an EXTENDED COPY's destination) stops rather than make it wait.
    pub fn resetting(&self) -> bool {
        self.resets.load(Ordering::Relaxed) > 0
    }

    /// For a reset that began waiting: whether no write of the LUN is in flight and no range is
    /// held; if so its wait ends.
    pub fn reset_done(&self) -> bool {
        if self.writes.iter().any(|c| c.0.load(Ordering::SeqCst) > 0) {
            return false;
        }
        let r = self.ranges.lock().unwrap_or_else(|p| p.into_inner());
        if !r.is_empty() {
            return false;
        }
        self.end_reset();
        true
    }

    /// Ends a reset's wait, done or not (its session is gone).
    pub fn abandon_reset(&self) {
        let _r = self.ranges.lock().unwrap_or_else(|p| p.into_inner());
        self.end_reset();
    }

    /// Under the `ranges` lock.
    fn end_reset(&self) {
        self.ranges_held.fetch_sub(1, Ordering::SeqCst);
        self.drains.fetch_sub(1, Ordering::SeqCst);
        self.resets.fetch_sub(1, Ordering::Relaxed);
    }

    /// Gives a range back.
    pub fn release(&self, start: u64, end: u64) {
        let mut r = self.ranges.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = r.iter().position(|&x| x == (start, end)) {
            r.swap_remove(i);
            self.ranges_held.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Whether a plain write to [start, end) must wait for an atomic operation: one holding
    /// its blocks, or one waiting for the writes in flight.
    fn write_blocked(&self, start: u64, end: u64) -> bool {
        if self.ranges_held.load(Ordering::SeqCst) == 0 {
            return false;
        }
        if self.drains.load(Ordering::SeqCst) > 0 {
            return true;
        }
        let r = self.ranges.lock().unwrap_or_else(|p| p.into_inner());
        r.iter().any(|&(s, e)| s < end && start < e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_state_is_read_within_bounds_and_damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lun.pr");
        assert_eq!(
            crate::datastore::load_saved_reservations(&path).unwrap(),
            None,
            "none saved"
        );
        assert!(!LunShared::open(path.clone()).unwrap().pr_active());
        // A huge (sparse) file is refused without reading it into memory.
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(1 << 40).unwrap();
        drop(f);
        let e = crate::datastore::load_saved_reservations(&path).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
        // A LUN whose saved state cannot be read back is not served without it.
        assert!(LunShared::open(path.clone()).is_err());
        // Truncated, and a directory in its place: errors, never a panic.
        std::fs::write(&path, b"VITPR\x01\0").unwrap();
        assert!(crate::datastore::load_saved_reservations(&path).is_err());
        assert!(LunShared::open(path.clone()).is_err());
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(crate::datastore::load_saved_reservations(&path).is_err());
        // What encode wrote comes back.
        std::fs::remove_dir(&path).unwrap();
        std::fs::write(&path, PrState::new().encode()).unwrap();
        assert_eq!(
            crate::datastore::load_saved_reservations(&path).unwrap(),
            Some(PrState::new())
        );
    }

    /// Each session's inbox holds what was posted for it, bounded however much is posted and
    /// however long it does not look; a session that ended leaves nothing behind.
    #[test]
    fn inboxes_are_bounded_and_go_with_their_sessions() {
        let s = LunShared::new();
        let it = |name: &str| ItNexusId {
            initiator: name.into(),
            ..Default::default()
        };
        let (a, seq) = s.register(&it("a"));
        let (b, _) = s.register(&it("b"));
        assert_eq!(seq, 0);
        s.post(Mail::Clear { from: it("b") });
        for _ in 0..1000 {
            s.post(Mail::Reset {
                reason: SenseReason::BusDeviceResetFunction,
                from: it("a"),
            });
            s.post(Mail::Clear { from: it("a") });
        }
        assert_eq!(
            s.peek_mail(a),
            (true, false),
            "b's CLEAR TASK SET, then a's own"
        );
        let (seq, got) = s.take_mail(a);
        assert_eq!(seq, 2001);
        assert!(got.aborts);
        assert_eq!(
            got.notes,
            [Note::Attention(SenseReason::BusDeviceResetFunction)]
        );
        assert_eq!(s.take_mail(a).1, Inbox::default(), "taken once");
        let (_, got) = s.take_mail(b);
        assert!(got.aborts && got.notes.len() <= INBOX, "{got:?}");
        s.unregister(b);
        s.unregister(b);
        let (c, _) = s.register(&it("c"));
        assert_eq!(c, b, "the ended session's place is reused");
        assert_eq!(s.readers().slots.len(), 2);
    }

    /// Two SYNCHRONIZE CACHEs of one LUN from two sessions: the second arrives while the
    /// first one's fdatasync is in flight. The writeback error goes to that fdatasync; the
    /// second must not be answered GOOD, though its own fdatasync (issued after) returns 0.
    #[test]
    fn a_flush_arriving_during_a_failing_round_is_not_good() {
        let s = LunShared::new();
        let FlushTurn::Issue(r1) = s.flush_join() else {
            panic!("the first request runs a round at once");
        };
        // The second waits: no second fdatasync of the LUN while one is in flight.
        let FlushTurn::Wait(r2) = s.flush_join() else {
            panic!("a second fdatasync issued while the first is in flight");
        };
        assert_eq!(s.flush_poll(r2), FlushTurn::Wait(r2));
        // Round 1 fails (the kernel reported the failed writeback to it).
        assert_eq!(s.flush_finish(r1, true), Some(false), "round 1's request");
        // The waiter is not served by round 1 (it began before the waiter arrived): it runs
        // round 2, whose fdatasync returns 0 (errseq was consumed by round 1).
        assert_eq!(s.flush_poll(r2), FlushTurn::Issue(r2));
        assert_eq!(
            s.flush_finish(r2, false),
            Some(false),
            "GOOD over lost writes"
        );
        assert_eq!(s.flush_poll(r2), FlushTurn::Done(false));
    }

    /// Requests that arrive while a round runs are served together by the next; one that
    /// arrives during that one waits for the one after; a waiter that goes away blocks nothing.
    #[test]
    fn flush_rounds_coalesce_waiters_and_never_overlap() {
        let s = LunShared::new();
        assert_eq!(s.flush_join(), FlushTurn::Issue(1));
        let waiters: Vec<FlushTurn> = (0..3).map(|_| s.flush_join()).collect();
        assert!(
            waiters.iter().all(|&t| t == FlushTurn::Wait(2)),
            "{waiters:?}"
        );
        assert_eq!(s.flush_poll(2), FlushTurn::Wait(2), "round 1 still runs");
        assert_eq!(s.flush_finish(1, false), Some(true));
        // The first waiter to ask again runs round 2 for all three.
        assert_eq!(s.flush_poll(2), FlushTurn::Issue(2));
        assert_eq!(s.flush_poll(2), FlushTurn::Wait(2));
        // A newcomer during round 2 waits for round 3.
        assert_eq!(s.flush_join(), FlushTurn::Wait(3));
        assert_eq!(s.flush_finish(2, false), Some(true));
        assert_eq!(s.flush_poll(2), FlushTurn::Done(true));
        assert_eq!(s.flush_poll(2), FlushTurn::Done(true));
        // The newcomer went away (aborted) without asking again: the next request runs
        // round 3 at once.
        assert_eq!(s.flush_join(), FlushTurn::Issue(3));
        assert_eq!(s.flush_finish(3, false), Some(true));
        assert_eq!(s.flush_join(), FlushTurn::Issue(4));
    }

    /// A FUA write through the page cache (RWF_DSYNC) is in flight when a round runs, and the
    /// kernel reports the failed writeback to it: the round's fdatasync returns 0, and its
    /// request must not be answered GOOD before the write's failure is latched. A flush that
    /// begins once the round's fdatasyncs have ended does not hold it up.
    #[test]
    fn a_round_waits_for_the_other_flushes_in_flight_when_it_ends() {
        let s = LunShared::new();
        let fua = s.other_flush_start();
        assert_eq!(s.flush_join(), FlushTurn::Issue(1));
        assert_eq!(s.flush_finish(1, false), None, "the FUA write is in flight");
        let later = s.other_flush_start();
        assert_eq!(s.flush_poll(1), FlushTurn::Wait(1));
        assert_eq!(
            s.flush_join(),
            FlushTurn::Wait(2),
            "still one round at a time"
        );
        // The write failed: latched, then counted out.
        s.note_flush_failed();
        s.other_flush_done(fua);
        assert_eq!(s.flush_poll(1), FlushTurn::Done(false));
        // Round 2 runs while `later` is still in flight: it waits for it in turn.
        assert_eq!(s.flush_poll(2), FlushTurn::Issue(2));
        assert_eq!(s.flush_finish(2, false), None);
        s.other_flush_done(later);
        assert_eq!(s.flush_poll(2), FlushTurn::Done(false));
        // With none in flight, a round ends with its fdatasyncs.
        assert_eq!(s.flush_join(), FlushTurn::Issue(3));
        assert_eq!(s.flush_finish(3, false), Some(false));
        let fresh = LunShared::new();
        assert_eq!(fresh.flush_join(), FlushTurn::Issue(1));
        assert_eq!(fresh.flush_finish(1, false), Some(true));
    }

    #[test]
    fn ranges_exclude_overlaps_only() {
        let s = LunShared::new();
        assert!(!s.write_blocked(0, 4096));
        assert!(s.try_hold(4096, 8192));
        assert!(!s.try_hold(8191, 8200), "overlap");
        assert!(s.try_hold(8192, 9000), "adjacent is fine");
        assert!(s.write_blocked(0, 4097));
        assert!(!s.write_blocked(0, 4096));
        s.release(4096, 8192);
        s.release(8192, 9000);
        assert!(!s.write_blocked(0, 1 << 20));
    }

    #[test]
    fn atomic_operations_wait_for_writes_in_flight() {
        let s = LunShared::new();
        // Two plain writes in flight on two data threads.
        assert!(s.write_start(0, 0, 4096));
        assert!(s.write_start(1, 1 << 20, (1 << 20) + 4096));
        // COMPARE AND WRITE takes its range, then must wait for both.
        assert!(s.try_hold(0, 512));
        assert!(!s.begin_drain());
        // Meanwhile every new plain write waits, even one far from the range.
        assert!(!s.write_start(1, 1 << 30, (1 << 30) + 4096));
        s.write_done(0);
        assert!(!s.drained(), "one write still in flight");
        s.write_done(1);
        assert!(s.drained());
        // Drain over: writes elsewhere go on, writes to the range still wait for it.
        assert!(s.write_start(1, 1 << 30, (1 << 30) + 4096));
        assert!(!s.write_start(0, 0, 4096));
        s.release(0, 512);
        assert!(s.write_start(0, 0, 4096));
        s.write_done(0);
        s.write_done(1);
        // With nothing in flight the drain is over at once.
        assert!(s.try_hold(0, 512));
        assert!(s.begin_drain());
        s.release(0, 512);
        // A drain given up lets writes go again.
        assert!(s.write_start(3, 0, 4096));
        assert!(s.try_hold(8192, 9000));
        assert!(!s.begin_drain());
        s.abandon_drain();
        s.release(8192, 9000);
        s.write_done(3);
        assert!(s.write_start(2, 0, 4096));
    }

    #[test]
    fn a_reset_waits_for_every_write_and_range_in_flight() {
        let s = LunShared::new();
        assert!(s.write_start(0, 0, 4096));
        assert!(s.try_hold(1 << 20, 2 << 20), "a job of another session");
        s.begin_reset();
        // New plain writes and jobs wait while it does, anywhere on the LUN.
        assert!(!s.write_start(1, 1 << 30, (1 << 30) + 4096));
        assert!(!s.try_hold(1 << 30, (1 << 30) + 4096));
        assert!(!s.reset_done(), "a write and a range in flight");
        s.write_done(0);
        assert!(!s.reset_done(), "a range still held");
        s.release(1 << 20, 2 << 20);
        assert!(s.reset_done());
        assert!(
            s.write_start(1, 1 << 30, (1 << 30) + 4096),
            "writes go on after"
        );
        assert!(s.try_hold(1 << 30, (1 << 30) + 4096), "and jobs");
        s.release(1 << 30, (1 << 30) + 4096);
        s.write_done(1);
        // One given up (its session went) lets writes go too.
        s.begin_reset();
        assert!(!s.write_start(1, 0, 4096));
        s.abandon_reset();
        assert!(s.write_start(1, 0, 4096));
    }
}
