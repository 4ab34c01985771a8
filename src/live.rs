//! A setting that a reload may replace while connections read it: readers take the
//! value in force when they look (an `Arc`, cheap to clone), a reload puts a new one in
//! its place, and what a reader already took stays as it was.

use std::sync::{Arc, RwLock};

/// A value replaced whole by a reload.
#[derive(Debug)]
pub(crate) struct Live<T>(RwLock<Arc<T>>);

impl<T> Live<T> {
    /// Starting with `value`.
    pub(crate) fn new(value: T) -> Live<T> {
        Live(RwLock::new(Arc::new(value)))
    }

    /// The value in force now.
    pub(crate) fn get(&self) -> Arc<T> {
        // A reader or writer that panicked left a whole `Arc` behind: go on with it.
        Arc::clone(&self.0.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Puts `value` in force for every later [`Live::get`].
    pub(crate) fn set(&self, value: T) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_taken_stays_while_later_readers_get_the_new_one() {
        let live = Live::new(1);
        let before = live.get();
        live.set(2);
        assert_eq!((*before, *live.get()), (1, 2));
    }
}
