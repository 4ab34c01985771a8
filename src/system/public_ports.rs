//! The public dist ports served, as one unit: each port's accept loops (one per
//! address of `[dist] listen`) and the token that stops them. The start serves the
//! ports the binary bound; a reload adds the ports it bound and removes the ports it
//! took out of the pool. Links accepted on a removed port go on.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::forward::public::Forwarder;

/// The public dist ports served, and how to stop each.
#[derive(Debug)]
pub(crate) struct PublicPorts {
    forwarder: Arc<Forwarder>,
    /// The accept loops the drain waits for.
    loops: TaskTracker,
    shutdown: CancellationToken,
    /// Each port served with the token that stops its accept loops; `None` until
    /// [`PublicPorts::start`].
    served: Mutex<Option<BTreeMap<u16, CancellationToken>>>,
}

impl PublicPorts {
    /// Ports accepted on by `forwarder`, their loops tracked by `loops`, all stopped at
    /// `shutdown`.
    pub(crate) fn new(
        forwarder: Arc<Forwarder>,
        loops: TaskTracker,
        shutdown: CancellationToken,
    ) -> PublicPorts {
        PublicPorts {
            forwarder,
            loops,
            shutdown,
            served: Mutex::new(None),
        }
    }

    fn served(&self) -> MutexGuard<'_, Option<BTreeMap<u16, CancellationToken>>> {
        self.served.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves `listeners` (public port, listener; one port may have a listener per
    /// address), bound and logged by the binary: called once, at the start.
    pub(crate) fn start(&self, listeners: Vec<(u16, TcpListener)>) {
        let mut served = BTreeMap::new();
        for (port, listener) in listeners {
            let stop = served
                .entry(port)
                .or_insert_with(|| self.shutdown.child_token())
                .clone();
            self.serve(port, listener, stop);
        }
        *self.served() = Some(served);
    }

    /// The ports served, or `None` before the start.
    pub(crate) fn ports(&self) -> Option<Vec<u16>> {
        self.served().as_ref().map(|s| s.keys().copied().collect())
    }

    /// Serves public port `port` on `listeners` (a reload bound them), logging each.
    pub(crate) fn add(&self, port: u16, listeners: Vec<TcpListener>) {
        let stop = self.shutdown.child_token();
        for listener in listeners {
            let addr = listener
                .local_addr()
                .map_or_else(|_| "?".into(), |a| a.to_string());
            info!(addr, "public dist port listening");
            self.serve(port, listener, stop.clone());
        }
        self.served().get_or_insert_default().insert(port, stop);
    }

    /// Stops accepting on public port `port`; its open links go on.
    pub(crate) fn remove(&self, port: u16) {
        let stop = self.served().as_mut().and_then(|s| s.remove(&port));
        if let Some(stop) = stop {
            stop.cancel();
            info!(
                port,
                "public dist port closed by the reload; its open links go on"
            );
        }
    }

    fn serve(&self, port: u16, listener: TcpListener, stop: CancellationToken) {
        let forwarder = Arc::clone(&self.forwarder);
        self.loops.spawn(forwarder.serve(listener, port, stop));
    }
}
