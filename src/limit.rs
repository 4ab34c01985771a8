//! Connection limits: how many connections of one kind (EPMD, dist) distgate holds at
//! once. Past the limit a new connection is closed as soon as it is accepted, counted,
//! and logged once per episode, so a flood costs a descriptor for an instant and the
//! connections already held keep theirs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tracing::{info, warn};

use crate::metrics as m;

/// The limit for one kind of connection.
#[derive(Debug)]
pub(crate) struct Limit {
    listener: &'static str,
    /// The limit in force; a reload may change it (held places stay held).
    max: AtomicUsize,
    /// Places taken now.
    open: Arc<AtomicUsize>,
    /// Whether the last connection was refused (for one log line per episode).
    saturated: AtomicBool,
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
            saturated: AtomicBool::new(false),
        }
    }

    /// Makes `max` the limit for new connections. Connections held stay, also when they
    /// are more than `max`: new ones are refused until they are fewer.
    pub(crate) fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// A place for a new connection, or `None` (counted, logged once per episode)
    /// when all are taken.
    pub(crate) fn admit(&self) -> Option<Admission> {
        let max = self.max.load(Ordering::Relaxed);
        let taken = (self.open).fetch_update(Ordering::Relaxed, Ordering::Relaxed, |open| {
            (open < max).then_some(open + 1)
        });
        match taken {
            Ok(_) => {
                if self.saturated.swap(false, Ordering::Relaxed) {
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
                if !self.saturated.swap(true, Ordering::Relaxed) {
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
        assert!(limit.saturated.load(Ordering::Relaxed));
        assert_eq!(limit.open(), 2);
        drop(a);
        assert_eq!(limit.open(), 1);
        assert!(limit.admit().is_some());
        assert!(!limit.saturated.load(Ordering::Relaxed));
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
