//! A small shared pool of idle resources (copy buffers, pipes): taken when a
//! direction has data to move, given back when it goes idle, kept up to a cap.

use std::sync::{Mutex, MutexGuard};

/// Idle items of one kind, at most `cap` of them.
#[derive(Debug)]
pub(super) struct Pool<T> {
    idle: Mutex<Vec<T>>,
    cap: usize,
}

impl<T> Pool<T> {
    pub(super) fn new(cap: usize) -> Pool<T> {
        Pool {
            idle: Mutex::new(Vec::new()),
            cap,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<T>> {
        // Plain data: a panic elsewhere while holding the lock leaves nothing broken.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// An idle item, if any.
    pub(super) fn take(&self) -> Option<T> {
        self.lock().pop()
    }

    /// Keeps `item` for reuse, or drops it when the pool is full.
    pub(super) fn put(&self, item: T) {
        let mut idle = self.lock();
        if idle.len() < self.cap {
            idle.push(item);
        }
    }

    /// Keeps only the idle items `keep` says to.
    pub(super) fn retain(&self, keep: impl FnMut(&T) -> bool) {
        self.lock().retain(keep);
    }

    /// How many idle items the pool holds.
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }
}
