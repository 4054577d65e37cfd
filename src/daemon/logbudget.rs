//! A budget of log lines per second for failures that can repeat at the rate of the traffic (bad
//! logins, a full or failing backing store): a flood of them must not flood the log.

use std::time::{Duration, Instant};

/// Lines a second for one kind of failure.
pub const LINES_PER_SECOND: u32 = 10;

#[derive(Debug)]
pub struct LogBudget {
    burst: u32,
    left: u32,
    window: Instant,
    dropped: u64,
}

impl LogBudget {
    /// At most `burst` lines a second.
    pub fn new(burst: u32) -> Self {
        LogBudget {
            burst,
            left: burst,
            window: Instant::now(),
            dropped: 0,
        }
    }

    /// Whether a line may be logged now; when a new second opens after lines were left out, says
    /// how many.
    pub fn allow(&mut self) -> bool {
        self.settle();
        if self.left > 0 {
            self.left -= 1;
            true
        } else {
            self.dropped += 1;
            false
        }
    }

    /// Opens a new second once the last one is over, saying how many lines it left out (also
    /// called on a timer, so that the count of a burst is told when nothing follows it);
    /// returns that count.
    pub fn settle(&mut self) -> u64 {
        if self.window.elapsed() < Duration::from_secs(1) {
            return 0;
        }
        let dropped = std::mem::take(&mut self.dropped);
        if dropped > 0 {
            tracing::warn!("{dropped} similar log lines left out");
        }
        self.window = Instant::now();
        self.left = self.burst;
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_burst_lines_a_second() {
        let mut b = LogBudget::new(3);
        let allowed = (0..100).filter(|_| b.allow()).count();
        assert_eq!(allowed, 3);
        assert_eq!(b.dropped, 97);
        b.window -= Duration::from_secs(2);
        assert!(b.allow());
        assert_eq!(b.dropped, 0);
    }

    #[test]
    fn a_burst_is_counted_once_its_second_is_over_without_a_line_after_it() {
        let mut b = LogBudget::new(2);
        assert_eq!((0..10).filter(|_| b.allow()).count(), 2);
        assert_eq!(b.settle(), 0, "the second is not over");
        b.window -= Duration::from_secs(1);
        assert_eq!(b.settle(), 8);
        assert_eq!(b.settle(), 0);
        assert!(b.allow());
    }
}
