//! A routed name and its lease: where the name lives upstream, the public port it
//! holds, and how the lease is used (open links, last use), which decides whether the
//! pool may take the port back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::epmd::NodeInfo;
use crate::epmd::message::Port2Resp;

/// A routed name and where it lives, as its upstream confirmed it (or discovery
/// found it): what a lease is taken for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// The routed name part.
    pub name: String,
    /// The upstream host (resolved at each connect).
    pub host: String,
    /// The upstream's dist port.
    pub dist_port: u16,
    /// What the node registered upstream, echoed in PORT2_RESP.
    pub info: NodeInfo,
}

/// A routed name holding a public port while it lives upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The name and its upstream.
    pub routed: Routed,
    /// The public port it holds.
    pub public_port: u16,
}

impl Lease {
    /// The routed name part.
    pub fn name(&self) -> &str {
        &self.routed.name
    }

    /// PORT2_RESP for the lease: its public port and the upstream's fields.
    pub fn port2_resp(&self) -> Port2Resp {
        Port2Resp {
            port: self.public_port,
            name: self.routed.name.clone(),
            info: self.routed.info.clone(),
        }
    }
}

/// How a lease is used: open links, and when it was last looked up or left by a link.
#[derive(Debug)]
pub(super) struct Usage {
    pub(super) links: AtomicUsize,
    last_used: Mutex<Instant>,
}

impl Usage {
    pub(super) fn new(now: Instant) -> Arc<Usage> {
        Arc::new(Usage {
            links: AtomicUsize::new(0),
            last_used: Mutex::new(now),
        })
    }

    pub(super) fn touch(&self, now: Instant) {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) = now;
    }

    pub(super) fn last_used(&self) -> Instant {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn links(&self) -> usize {
        self.links.load(Ordering::Relaxed)
    }
}

/// One open connection to a leased name; the lease counts it until it is dropped.
#[derive(Debug)]
pub(super) struct LeaseHold(pub(super) Arc<Usage>);

impl Drop for LeaseHold {
    fn drop(&mut self) {
        self.0.links.fetch_sub(1, Ordering::Relaxed);
        self.0.touch(Instant::now());
    }
}
