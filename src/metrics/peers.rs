//! Bounded `peer` labels: at most `[metrics] max_peers` authenticated names have a
//! label of their own; the rest share `other`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The `peer` label of links whose peer did not authenticate by name (TLS).
pub const PEER_TLS: &str = "tls";
/// The `peer` label of release clients (`[dist] client_names`): `bin/app rpc` and
/// `bin/app remote` name each call anew.
pub const PEER_CLIENT: &str = "client";
/// The `peer` label of authenticated peers past `[metrics] max_peers`.
pub const PEER_OTHER: &str = "other";

/// The authenticated peer names that have a `peer` label of their own: at most
/// `max_peers`. A name holds its place while it has open links and for `idle` after
/// its last one closed; past that it may give its place to a new name.
#[derive(Debug)]
pub(crate) struct PeerLabels {
    max: usize,
    idle: Duration,
    names: Mutex<HashMap<Arc<str>, PeerUse>>,
}

#[derive(Debug)]
struct PeerUse {
    open: usize,
    last_closed: Instant,
}

/// A link's `peer` label; gives its use of the name back when dropped.
#[derive(Debug)]
pub(crate) struct PeerLabel {
    /// Shared with the table: a link holds no copy of the name of its own.
    label: Arc<str>,
    table: Option<Arc<PeerLabels>>,
}

impl PeerLabel {
    /// The label value.
    pub(crate) fn as_str(&self) -> &str {
        &self.label
    }
}

impl Drop for PeerLabel {
    fn drop(&mut self) {
        if let Some(table) = &self.table {
            let mut names = table.lock();
            if let Some(entry) = names.get_mut(&self.label) {
                entry.open = entry.open.saturating_sub(1);
                entry.last_closed = Instant::now();
            }
        }
    }
}

impl PeerLabels {
    /// At most `max` names, each kept `idle` after its last link.
    pub(crate) fn new(max: usize, idle: Duration) -> PeerLabels {
        PeerLabels {
            max,
            idle,
            names: Default::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, PeerUse>> {
        self.names.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The label for a link of the authenticated peer `name`.
    pub(crate) fn label(self: &Arc<Self>, name: &str) -> PeerLabel {
        let now = Instant::now();
        let mut names = self.lock();
        if !names.contains_key(name) && names.len() >= self.max {
            let idle = self.idle;
            let free = names
                .iter()
                .find(|(_, u)| u.open == 0 && now.duration_since(u.last_closed) >= idle)
                .map(|(n, _)| n.clone());
            match free {
                Some(free) => {
                    names.remove(&free);
                }
                None => return PeerLabels::fixed(PEER_OTHER),
            }
        }
        let label = match names.get_key_value(name) {
            Some((label, _)) => Arc::clone(label),
            None => Arc::from(name),
        };
        let entry = names.entry(Arc::clone(&label)).or_insert(PeerUse {
            open: 0,
            last_closed: now,
        });
        entry.open += 1;
        PeerLabel {
            label,
            table: Some(Arc::clone(self)),
        }
    }

    /// A label that is not a peer's name (`tls`), outside the table.
    pub(crate) fn fixed(label: &'static str) -> PeerLabel {
        PeerLabel {
            label: Arc::from(label),
            table: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_peers_names_are_labelled() {
        let peers = Arc::new(PeerLabels::new(2, Duration::from_secs(600)));
        let a = peers.label("a@h");
        let _b = peers.label("b@h");
        assert_eq!(peers.label("c@h").as_str(), PEER_OTHER);
        assert_eq!(
            peers.label("a@h").as_str(),
            "a@h",
            "a known name keeps its label"
        );
        drop(a);
        assert_eq!(
            peers.label("d@h").as_str(),
            PEER_OTHER,
            "a's place is kept while recent"
        );
    }

    #[test]
    fn a_name_idle_long_enough_gives_its_place_up() {
        let peers = Arc::new(PeerLabels::new(1, Duration::ZERO));
        drop(peers.label("a@h"));
        assert_eq!(peers.label("b@h").as_str(), "b@h");
        assert_eq!(peers.lock().len(), 1);
    }
}
