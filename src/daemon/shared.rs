//! The little state a LUN shares between data threads: its persistent reservations (with the
//! unit attentions and aborts they cause for sessions on any thread) and the block ranges held
//! by COMPARE AND WRITE, ORWRITE and WRITE ATOMIC. Everything else on the data path is owned by
//! one thread. The READ/WRITE fast path touches only two atomics (`pr_active`, `ranges_held`).

use crate::datastore::write_atomic;
use crate::scsi::SenseReason;
use crate::scsi::pr::{ItNexusId, PrEffects, PrState};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// How many reservation effects the mailbox keeps for sessions that have not looked yet.
const MAILBOX: usize = 256;

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
}

/// Shared state of one LUN.
#[derive(Debug, Default)]
pub struct LunShared {
    pr: Mutex<PrState>,
    /// Mirrors `PrState::is_active`: when false, commands skip the lock.
    pr_active: AtomicBool,
    /// Where the reservation state is kept when APTPL is set (beside the descriptor).
    pr_file: Option<PathBuf>,
    mail: Mutex<VecDeque<(u64, Arc<Mail>)>>,
    mail_seq: AtomicU64,
    ranges: Mutex<Vec<(u64, u64)>>,
    ranges_held: AtomicUsize,
}

impl LunShared {
    /// State for a LUN whose saved reservations (if any) live in `pr_file`; a file that
    /// cannot be read back is reported and ignored (the LUN starts without reservations).
    pub fn new(pr_file: Option<PathBuf>) -> Self {
        let mut pr = PrState::new();
        if let Some(path) = &pr_file
            && let Ok(bytes) = std::fs::read(path)
        {
            match PrState::decode(&bytes) {
                Ok(saved) => pr = saved,
                Err(e) => tracing::error!("{}: saved reservations ignored: {e:?}", path.display()),
            }
        }
        let active = pr.is_active();
        LunShared {
            pr: Mutex::new(pr),
            pr_active: AtomicBool::new(active),
            pr_file,
            ..Default::default()
        }
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
        let effects = pr.take_effects();
        self.pr_active.store(pr.is_active(), Ordering::Release);
        if effects.changed
            && let Some(path) = &self.pr_file
        {
            let result = if pr.aptpl() {
                write_atomic(path, &pr.encode()).map_err(|e| e.to_string())
            } else {
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
                    _ => Ok(()),
                }
            };
            if let Err(e) = result {
                tracing::error!("{}: saving reservations failed: {e}", path.display());
            }
        }
        if effects.unit_attentions.is_empty() && effects.abort.is_empty() {
            return;
        }
        self.post(Mail::Reservation(effects));
    }

    /// Posts mail for every session of the LUN (on any thread) to pick up.
    pub fn post(&self, m: Mail) {
        let mut mail = self.mail.lock().unwrap_or_else(|p| p.into_inner());
        let seq = self.mail_seq.load(Ordering::Relaxed) + 1;
        mail.push_back((seq, Arc::new(m)));
        while mail.len() > MAILBOX {
            mail.pop_front();
        }
        self.mail_seq.store(seq, Ordering::Release);
    }

    /// The sequence number of the latest posted effects (one atomic load).
    pub fn mail_seq(&self) -> u64 {
        self.mail_seq.load(Ordering::Acquire)
    }

    /// Mail posted after `seen`, oldest first.
    pub fn mail_since(&self, seen: u64) -> Vec<Arc<Mail>> {
        let mail = self.mail.lock().unwrap_or_else(|p| p.into_inner());
        mail.iter()
            .filter(|(s, _)| *s > seen)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Takes byte range [start, end) for an atomic operation; false when it overlaps one held.
    pub fn try_hold(&self, start: u64, end: u64) -> bool {
        let mut r = self.ranges.lock().unwrap_or_else(|p| p.into_inner());
        if r.iter().any(|&(s, e)| s < end && start < e) {
            return false;
        }
        r.push((start, end));
        self.ranges_held.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// Gives a range back.
    pub fn release(&self, start: u64, end: u64) {
        let mut r = self.ranges.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = r.iter().position(|&x| x == (start, end)) {
            r.swap_remove(i);
            self.ranges_held.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Whether a plain write to [start, end) must wait for an atomic operation on its blocks.
    pub fn write_blocked(&self, start: u64, end: u64) -> bool {
        if self.ranges_held.load(Ordering::Acquire) == 0 {
            return false;
        }
        let r = self.ranges.lock().unwrap_or_else(|p| p.into_inner());
        r.iter().any(|&(s, e)| s < end && start < e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_exclude_overlaps_only() {
        let s = LunShared::new(None);
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
}
