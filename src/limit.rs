//! Connection limits: how many connections of one kind (EPMD, dist) distgate holds at
//! once. Past the limit a new connection is closed as soon as it is accepted, counted,
//! and logged once per episode, so a flood costs a descriptor for an instant and the
//! connections already held keep theirs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

use crate::metrics as m;

/// The limit for one kind of connection.
#[derive(Debug)]
pub(crate) struct Limit {
    listener: &'static str,
    max: usize,
    permits: Arc<Semaphore>,
    /// Whether the last connection was refused (for one log line per episode).
    saturated: AtomicBool,
}

/// A held place under a [`Limit`]; given back when dropped.
#[derive(Debug)]
pub(crate) struct Admission {
    _permit: OwnedSemaphorePermit,
    listener: &'static str,
}

impl Drop for Admission {
    fn drop(&mut self) {
        ::metrics::gauge!(m::CONNECTIONS_OPEN, "listener" => self.listener).decrement(1.0);
    }
}

impl Limit {
    /// At most `max` connections at once for `listener` (`"epmd"` or `"dist"`, the
    /// metric label).
    pub(crate) fn new(listener: &'static str, max: usize) -> Limit {
        ::metrics::counter!(m::CONNECTIONS_REFUSED, "listener" => listener, "reason" => "max_connections").increment(0);
        Limit {
            listener,
            max,
            permits: Arc::new(Semaphore::new(max)),
            saturated: AtomicBool::new(false),
        }
    }

    /// A place for a new connection, or `None` (counted, logged once per episode)
    /// when all are taken.
    pub(crate) fn admit(&self) -> Option<Admission> {
        match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => {
                if self.saturated.swap(false, Ordering::Relaxed) {
                    info!(
                        listener = self.listener,
                        max = self.max,
                        "below the connection limit again"
                    );
                }
                ::metrics::gauge!(m::CONNECTIONS_OPEN, "listener" => self.listener).increment(1.0);
                Some(Admission {
                    _permit: permit,
                    listener: self.listener,
                })
            }
            Err(_) => {
                ::metrics::counter!(m::CONNECTIONS_REFUSED, "listener" => self.listener, "reason" => "max_connections")
                    .increment(1);
                if !self.saturated.swap(true, Ordering::Relaxed) {
                    warn!(
                        listener = self.listener,
                        max = self.max,
                        "connection limit reached; closing new connections until some end"
                    );
                }
                None
            }
        }
    }

    /// Places taken now.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.max - self.permits.available_permits()
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
}
