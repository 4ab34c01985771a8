//! Readiness, as `/readyz` reports it: every listener bound, not shutting down, no
//! discovery route still listing its first names, and, when `[admin] ready_when` asks
//! for it, the expected local nodes registered.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio_util::sync::CancellationToken;

use crate::config::ReadyWhen;
use crate::live::Live;
use crate::registry::Registry;

/// Why `/readyz` says not ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// Shutdown has begun.
    #[error("shutting down")]
    ShuttingDown,
    /// The listeners are not all serving yet.
    #[error("listeners not serving yet")]
    NotListening,
    /// `ready_when = "any-node"` and no node but release clients has registered.
    #[error("no node registered")]
    NoNode,
    /// `ready_when` names nodes that have not registered.
    #[error("not registered: {}", .0.join(", "))]
    Missing(Vec<String>),
    /// A gateway discovery route has not listed its Service's names yet.
    #[error("discovery routes have not listed their names yet")]
    Discovering,
}

impl NotReady {
    /// A bounded label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            NotReady::ShuttingDown => "shutting_down",
            NotReady::NotListening => "not_listening",
            NotReady::NoNode => "no_node",
            NotReady::Missing(_) => "nodes_missing",
            NotReady::Discovering => "discovering",
        }
    }
}

/// What `/readyz` reports.
#[derive(Debug)]
pub struct Health {
    /// `[admin] ready_when` in force (a reload may change it).
    ready_when: Live<ReadyWhen>,
    registry: Arc<Registry>,
    listening: AtomicBool,
    /// Discovery routes whose first refresh has not ended, of the gateway in force.
    discovering: Live<Option<Arc<AtomicUsize>>>,
    /// Cancelled when shutdown begins; from then on never ready.
    shutdown: CancellationToken,
}

impl Health {
    /// Not ready until [`Health::set_listening`]; never once `shutdown` is cancelled.
    pub fn new(
        ready_when: ReadyWhen,
        registry: Arc<Registry>,
        shutdown: CancellationToken,
    ) -> Health {
        Health {
            ready_when: Live::new(ready_when),
            registry,
            listening: AtomicBool::new(false),
            discovering: Live::new(None),
            shutdown,
        }
    }

    /// Not ready while `discovering` (discovery routes yet to list their names) is
    /// above 0: a gateway replica that does not know the names yet would answer
    /// "not found" for them.
    pub fn with_discovery(self, discovering: Arc<AtomicUsize>) -> Health {
        self.set_discovery(Some(discovering));
        self
    }

    /// The discovery count of the gateway now in force (a reload), or none.
    pub fn set_discovery(&self, discovering: Option<Arc<AtomicUsize>>) {
        self.discovering.set(discovering);
    }

    /// Puts `ready_when` in force (a reload).
    pub fn set_ready_when(&self, ready_when: ReadyWhen) {
        self.ready_when.set(ready_when);
    }

    /// Every listener is bound and serving.
    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::Relaxed);
    }

    /// `Ok` when ready, or why not.
    pub fn ready(&self) -> Result<(), NotReady> {
        if self.shutdown.is_cancelled() {
            return Err(NotReady::ShuttingDown);
        }
        if !self.listening.load(Ordering::Relaxed) {
            return Err(NotReady::NotListening);
        }
        if (self.discovering.get().as_deref()).is_some_and(|d| d.load(Ordering::Relaxed) > 0) {
            return Err(NotReady::Discovering);
        }
        match &*self.ready_when.get() {
            ReadyWhen::Always => Ok(()),
            // A release client (`bin/app rpc`) is no sign that the app is up.
            ReadyWhen::AnyNode if !self.registry.has_server() => Err(NotReady::NoNode),
            ReadyWhen::AnyNode => Ok(()),
            ReadyWhen::Nodes(names) => {
                let missing: Vec<String> = names
                    .iter()
                    .filter(|n| self.registry.get(n).is_none())
                    .cloned()
                    .collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(NotReady::Missing(missing))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_node_means_a_node_that_is_not_a_release_client() {
        use crate::ports::{PortPlan, Ports};
        let plan = PortPlan {
            pool: vec![100],
            ..PortPlan::default()
        };
        let registry = Arc::new(Registry::new(Arc::new(Ports::new(plan))));
        let health = Health::new(
            ReadyWhen::AnyNode,
            registry.clone(),
            CancellationToken::new(),
        );
        health.set_listening();
        assert_eq!(health.ready(), Err(NotReady::NoNode));
        let ip = std::net::Ipv4Addr::LOCALHOST.into();
        let rpc = crate::epmd::message::Alive2Req::otp23("rpc-1f2e-app", 1);
        registry.register(&rpc, 5, ip, 0).unwrap();
        assert_eq!(
            health.ready(),
            Err(NotReady::NoNode),
            "a client is not the app"
        );
        let app = crate::epmd::message::Alive2Req::otp23("app", 2);
        registry.register(&app, 6, ip, 0).unwrap();
        assert_eq!(health.ready(), Ok(()));
    }
}
