//! A bound on how fast one kind of warning is logged: at most a burst of lines per
//! window, and one line at the next window's start telling how many were left out.
//! Whatever a peer can trigger at will (a failed handshake, a lookup that fails) logs
//! through one, so a flood cannot fill the logs; the metrics still count every event.
//! [`SharedBudget`] is one shared by tasks, so that a call site is one line.

use std::borrow::Cow;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::warn;

/// Lines logged per window; the rest are summed up in one line.
pub(crate) const LOG_BURST: u32 = 20;
/// The window of [`LOG_BURST`].
pub(crate) const LOG_WINDOW: Duration = Duration::from_secs(10);

/// One kind of warning's budget; `summary` is the line that sums up what was left out.
#[derive(Debug)]
pub(crate) struct LogBudget {
    summary: Cow<'static, str>,
    since: Option<Instant>,
    logged: u32,
    unlogged: u64,
}

impl LogBudget {
    pub(crate) const fn new(summary: &'static str) -> LogBudget {
        LogBudget {
            summary: Cow::Borrowed(summary),
            since: None,
            logged: 0,
            unlogged: 0,
        }
    }

    /// Whether one more line may be logged now; at the start of a new window, logs how
    /// many the last one left out.
    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        let fresh = self
            .since
            .is_none_or(|since| now.saturating_duration_since(since) >= LOG_WINDOW);
        if fresh {
            if self.unlogged > 0 {
                warn!(not_logged = self.unlogged, "{}", self.summary);
            }
            (self.since, self.logged, self.unlogged) = (Some(now), 0, 0);
        }
        if self.logged < LOG_BURST {
            self.logged += 1;
            true
        } else {
            self.unlogged += 1;
            false
        }
    }
}

/// A [`LogBudget`] that tasks share (behind a lock taken only to ask it): where a
/// peer can cause a line, `if BUDGET.allow() { warn!(..) }`. A `static` serves where
/// nothing owns the line's place in the code.
#[derive(Debug)]
pub(crate) struct SharedBudget(Mutex<LogBudget>);

impl SharedBudget {
    /// A budget whose summary line is `summary` (which should name the metric that
    /// counts every event).
    pub(crate) const fn new(summary: &'static str) -> SharedBudget {
        SharedBudget(Mutex::new(LogBudget::new(summary)))
    }

    /// [`SharedBudget::new`] with a summary made at run time.
    pub(crate) fn with_summary(summary: String) -> SharedBudget {
        let mut budget = LogBudget::new("");
        budget.summary = Cow::Owned(summary);
        SharedBudget(Mutex::new(budget))
    }

    /// Whether one more line may be logged now (see [`LogBudget::allow`]).
    pub(crate) fn allow(&self) -> bool {
        // A panic while holding the lock leaves plain counters; go on with them.
        (self.0.lock())
            .unwrap_or_else(PoisonError::into_inner)
            .allow(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_window_then_silence() {
        let mut budget = LogBudget::new("more than logged");
        let now = Instant::now();
        let logged = (0..1000).filter(|_| budget.allow(now)).count();
        assert_eq!(logged, LOG_BURST as usize);
        assert!(budget.allow(now + LOG_WINDOW), "a new window");
    }

    #[test]
    fn a_shared_budget_is_one_budget() {
        static BUDGET: SharedBudget = SharedBudget::new("more than logged");
        let logged: usize = std::thread::scope(|s| {
            let counts: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..100).filter(|_| BUDGET.allow()).count()))
                .collect();
            counts.into_iter().map(|c| c.join().unwrap()).sum()
        });
        assert_eq!(logged, LOG_BURST as usize);
    }
}
