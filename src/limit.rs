//! Connection limits: how many connections of one kind (EPMD, dist) distgate holds at
//! once. Past the limit a new connection is closed as soon as it is accepted, counted,
//! and logged once per episode, so a flood costs a descriptor for an instant and the
//! connections already held keep theirs. Episodes are budgeted too: a client that
//! toggles the limit (one connection in, one out) would start one per connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use tracing::{info, warn};

use crate::log_budget::SharedBudget;
use crate::metrics as m;

/// [`Limit::state`]: new connections are admitted.
const BELOW: u8 = 0;
/// [`Limit::state`]: new connections are refused, and the episode's start was not logged.
const REFUSING: u8 = 1;
/// [`Limit::state`]: new connections are refused, and the episode's start was logged
/// (so its end is logged too).
const REFUSING_LOGGED: u8 = 2;

/// The limit for one kind of connection.
#[derive(Debug)]
pub(crate) struct Limit {
    listener: &'static str,
    /// The limit in force; a reload may change it (held places stay held).
    max: AtomicUsize,
    /// Places taken now.
    open: Arc<AtomicUsize>,
    /// Whether the last connection was refused, and whether that episode was logged
    /// ([`BELOW`], [`REFUSING`], [`REFUSING_LOGGED`]).
    state: AtomicU8,
    /// The episodes logged: a peer can start one per connection.
    log: SharedBudget,
}

/// A held place under a [`Limit`]; given back when dropped.
#[derive(Debug)]
pub(crate) struct Admission {
    open: Arc<AtomicUsize>,
    listener: &'static str,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        ::metrics::gauge!(m::CONNECTIONS_OPEN, "listener" => self.listener).decrement(1.0);
    }
}

impl Limit {
    /// At most `max` connections at once for `listener` (`"epmd"` or `"dist"`, the
    /// metric label).
    pub(crate) fn new(listener: &'static str, max: usize) -> Limit {
        ::metrics::counter!(m::CONNECTIONS_REFUSED, "listener" => listener, "reason" => "max_connections").increment(0);
        // Adds nothing: the series exists from the start, at the count it has.
        ::metrics::gauge!(m::CONNECTIONS_OPEN, "listener" => listener).increment(0.0);
        Limit {
            listener,
            max: AtomicUsize::new(max),
            open: Arc::new(AtomicUsize::new(0)),
            state: AtomicU8::new(BELOW),
            log: SharedBudget::with_summary(format!(
                "the {listener} connection limit was reached more often than logged \
                 (see distgate_connections_refused_total)"
            )),
        }
    }

    /// Makes `max` the limit for new connections. Connections held stay, also when they
    /// are more than `max`: new ones are refused until they are fewer.
    pub(crate) fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// A place for a new connection, or `None` (counted, logged once per episode,
    /// episodes within a budget) when all are taken.
    pub(crate) fn admit(&self) -> Option<Admission> {
        let max = self.max.load(Ordering::Relaxed);
        let taken = (self.open).fetch_update(Ordering::Relaxed, Ordering::Relaxed, |open| {
            (open < max).then_some(open + 1)
        });
        match taken {
            Ok(_) => {
                // An episode's end is logged when its start was.
                if self.state.load(Ordering::Relaxed) != BELOW
                    && self.state.swap(BELOW, Ordering::Relaxed) == REFUSING_LOGGED
                {
                    info!(
                        listener = self.listener,
                        max, "below the connection limit again"
                    );
                }
                ::metrics::gauge!(m::CONNECTIONS_OPEN, "listener" => self.listener).increment(1.0);
                Some(Admission {
                    open: Arc::clone(&self.open),
                    listener: self.listener,
                })
            }
            Err(_) => {
                ::metrics::counter!(m::CONNECTIONS_REFUSED, "listener" => self.listener, "reason" => "max_connections")
                    .increment(1);
                let started = (self.state)
                    .compare_exchange(BELOW, REFUSING, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok();
                // Marked logged only if no admission has ended the episode meanwhile.
                if started
                    && self.log.allow()
                    && (self.state)
                        .compare_exchange(
                            REFUSING,
                            REFUSING_LOGGED,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        )
                        .is_ok()
                {
                    warn!(
                        listener = self.listener,
                        max, "connection limit reached; closing new connections until some end"
                    );
                }
                None
            }
        }
    }

    /// Places taken now.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_taken_refused_and_given_back() {
        let limit = Limit::new("epmd", 2);
        let a = limit.admit().unwrap();
        let _b = limit.admit().unwrap();
        assert!(limit.admit().is_none());
        assert_eq!(limit.state.load(Ordering::Relaxed), REFUSING_LOGGED);
        assert_eq!(limit.open(), 2);
        drop(a);
        assert_eq!(limit.open(), 1);
        assert!(limit.admit().is_some());
        assert_eq!(limit.state.load(Ordering::Relaxed), BELOW);
    }

    /// Past the budget an episode is neither logged at its start nor at its end.
    #[test]
    fn episodes_past_the_budget_are_not_logged_at_either_end() {
        let limit = Limit::new("epmd", 1);
        let mut logged = 0;
        for _ in 0..100 {
            let held = limit.admit().unwrap();
            assert!(limit.admit().is_none());
            logged += usize::from(limit.state.load(Ordering::Relaxed) == REFUSING_LOGGED);
            drop(held);
        }
        assert_eq!(logged, crate::log_budget::LOG_BURST as usize);
        assert!(limit.admit().is_some());
        assert_eq!(limit.state.load(Ordering::Relaxed), BELOW);
    }

    #[test]
    fn a_lower_limit_keeps_the_places_held_and_refuses_until_below_it() {
        let limit = Limit::new("dist", 3);
        let held: Vec<_> = (0..3).map(|_| limit.admit().unwrap()).collect();
        limit.set_max(1);
        assert_eq!(limit.open(), 3);
        assert!(limit.admit().is_none());
        drop(held);
        let _a = limit.admit().expect("below the lower limit again");
        limit.set_max(2);
        let _b = limit.admit().unwrap();
        assert!(limit.admit().is_none(), "two held: at the raised limit");
    }
}
