//! Unit attention conditions, queued per I_T nexus and logical unit (SAM-5 5.14).

use super::sense::SenseReason;

/// How many unit attentions one queue holds; more are coalesced (see [`UaQueue::push`]).
pub const UA_QUEUE_CAPACITY: usize = 8;

/// A bounded FIFO of unit attention conditions for one I_T_L nexus.
///
/// Rules: a condition already queued is not queued twice; a reset-class condition (ASC 29h)
/// supersedes everything queued before it, as a reset clears older conditions; when the queue
/// is full the newest entry replaces the last one.
#[derive(Clone, Debug, Default)]
pub struct UaQueue {
    items: [Option<SenseReason>; UA_QUEUE_CAPACITY],
    len: usize,
}

impl UaQueue {
    /// An empty queue.
    pub const fn new() -> Self {
        Self {
            items: [None; UA_QUEUE_CAPACITY],
            len: 0,
        }
    }

    /// Establishes a unit attention condition.
    pub fn push(&mut self, reason: SenseReason) {
        if reason.is_reset() {
            self.clear();
        }
        if self.iter().any(|r| r == reason) {
            return;
        }
        if self.len == UA_QUEUE_CAPACITY {
            self.items[UA_QUEUE_CAPACITY - 1] = Some(reason);
        } else {
            self.items[self.len] = Some(reason);
            self.len += 1;
        }
    }

    /// The condition that the next command would report.
    pub fn peek(&self) -> Option<SenseReason> {
        self.items.first().copied().flatten()
    }

    /// Removes and returns the oldest condition.
    pub fn pop(&mut self) -> Option<SenseReason> {
        let first = self.peek()?;
        self.items.rotate_left(1);
        self.items[UA_QUEUE_CAPACITY - 1] = None;
        self.len -= 1;
        Some(first)
    }

    /// Removes one specific condition if queued (REPORT LUNS clears REPORTED LUNS DATA HAS
    /// CHANGED).
    pub fn remove(&mut self, reason: SenseReason) {
        let found = self.iter().position(|r| r == reason);
        if let Some(i) = found {
            self.items[i..].rotate_left(1);
            self.items[UA_QUEUE_CAPACITY - 1] = None;
            self.len -= 1;
        }
    }

    /// Drops every condition.
    pub fn clear(&mut self) {
        *self = Self::new();
    }

    /// Number of queued conditions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn iter(&self) -> impl Iterator<Item = SenseReason> + '_ {
        self.items.iter().take(self.len).filter_map(|r| *r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SenseReason as R;

    #[test]
    fn fifo_without_duplicates() {
        let mut q = UaQueue::new();
        q.push(R::CapacityDataChanged);
        q.push(R::ReportedLunsDataChanged);
        q.push(R::CapacityDataChanged);
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop(), Some(R::CapacityDataChanged));
        assert_eq!(q.pop(), Some(R::ReportedLunsDataChanged));
        assert_eq!(q.pop(), None);
        assert!(q.is_empty());
    }

    #[test]
    fn reset_supersedes_older_conditions() {
        let mut q = UaQueue::new();
        q.push(R::CapacityDataChanged);
        q.push(R::PowerOnReset);
        q.push(R::ModeParametersChanged);
        assert_eq!(q.pop(), Some(R::PowerOnReset));
        assert_eq!(q.pop(), Some(R::ModeParametersChanged));
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn full_queue_replaces_last_and_remove_works() {
        let mut q = UaQueue::new();
        let many = [
            R::CapacityDataChanged,
            R::ReportedLunsDataChanged,
            R::ModeParametersChanged,
            R::NoSense,
            R::NotReady,
            R::WriteError,
            R::WriteProtected,
            R::InvalidOpcode,
            R::LbaOutOfRange,
        ];
        for r in many {
            q.push(r);
        }
        assert_eq!(q.len(), UA_QUEUE_CAPACITY);
        q.remove(R::ReportedLunsDataChanged);
        assert_eq!(q.len(), UA_QUEUE_CAPACITY - 1);
        assert_eq!(q.pop(), Some(R::CapacityDataChanged));
        assert_eq!(q.pop(), Some(R::ModeParametersChanged));
        let rest: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(rest.last(), Some(&R::LbaOutOfRange));
    }
}
