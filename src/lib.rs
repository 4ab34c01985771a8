//! distgate: an EPMD server and dist-port gateway for Erlang/Elixir (BEAM) nodes.
//!
//! A node beside distgate registers with it as with OTP's epmd. distgate tells peers a
//! fixed *public* port for the node and forwards connections there to the node's real,
//! random port. The crate's map:
//!
//! - [`config`]: TOML → validated [`Config`]; every error names its key and line.
//! - [`epmd`]: the EPMD wire format (pure) and the server that answers it.
//! - [`registry`]: the local nodes, their creations and public ports.
//! - [`forward`]: public-port listeners and the stream forwarding.
//! - [`limit`]: how many connections of each kind are held at once.
//! - [`handshake`]: the first frame of a dist connection (who is calling), pure.
//! - [`metrics`]: every metric name, described once.
//! - [`admin`]: the HTTP server for `/metrics`, `/livez` and `/readyz`.
//! - [`probe`]: `distgate probe NODE@HOST`, which finds where a node's path breaks.
//! - [`dns`]: hickory behind a trait, and a cache that owns TTLs (for the gateway).
//! - [`route`]: gateway routes (node-name glob → upstream host template), pure.
//! - [`gateway`]: routed names: confirmed upstream, leased a public port, forwarded.
//!
//! The library binds nothing and installs no signal handler: the binary binds the
//! listeners and hands them to [`Sidecar::run`] with a shutdown token, and tests do the
//! same with listeners on `127.0.0.1:0`.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod config;
pub mod dns;
pub mod epmd;
pub mod forward;
pub mod gateway;
pub mod handshake;
pub mod limit;
pub mod metrics;
pub mod probe;
pub mod registry;
pub mod route;

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use config::Config;
use forward::public::Forwarder;
use registry::{PortPlan, Registry};

/// Listeners bound by the caller.
#[derive(Debug, Default)]
pub struct Listeners {
    /// EPMD listeners (port 4369 on each address).
    pub epmd: Vec<TcpListener>,
    /// Public dist listeners with the public port each serves; one port may have a
    /// listener per address.
    pub dist: Vec<(u16, TcpListener)>,
    /// Admin HTTP listeners (metrics and probes).
    pub admin: Vec<TcpListener>,
}

/// How the drain at shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Every connection ended within the grace period.
    Complete,
    /// The grace period passed with connections still open; they are dropped.
    TimedOut { open: usize },
}

/// A distgate sidecar: the EPMD server and the public dist ports of one pod.
pub struct Sidecar {
    registry: Arc<Registry>,
    health: Arc<admin::Health>,
    metrics: Option<PrometheusHandle>,
    epmd: Arc<epmd::Server>,
    forwarder: Arc<Forwarder>,
    gateway: Option<Arc<gateway::Gateway>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Sidecar {
    /// A sidecar for `config` whose public ports are `plan` (the binary uses
    /// `config.dist.port_plan()`; tests pass the ports they bound). Cancelling
    /// `shutdown` stops it; so does an allowed KILL_REQ.
    pub fn new(config: &Config, plan: PortPlan, shutdown: CancellationToken) -> Self {
        Self::with_gateway(config, plan, None, shutdown)
    }

    /// [`Sidecar::new`] that also answers and forwards the names `gateway` routes.
    pub fn with_gateway(
        config: &Config,
        plan: PortPlan,
        gateway: Option<gateway::Gateway>,
        shutdown: CancellationToken,
    ) -> Self {
        let gateway = gateway.map(Arc::new);
        let registry = Arc::new(Registry::new(plan));
        let tracker = TaskTracker::new();
        let epmd = Arc::new(epmd::Server::new(
            config.epmd.clone(),
            Arc::clone(&registry),
            gateway.clone(),
            shutdown.clone(),
            tracker.clone(),
        ));
        let engine = Arc::new(forward::Engine::new(
            config.forward.mode,
            config.forward.pipe_size,
        ));
        let forwarder = Arc::new(Forwarder::new(
            Arc::clone(&registry),
            gateway.clone(),
            engine,
            &config.dist,
            shutdown.clone(),
            tracker.clone(),
        ));
        let health = Arc::new(admin::Health::new(
            config.admin.ready_when.clone(),
            Arc::clone(&registry),
            shutdown.clone(),
        ));
        Sidecar {
            registry,
            health,
            metrics: None,
            epmd,
            forwarder,
            gateway,
            shutdown,
            tracker,
        }
    }

    /// The registry of local nodes.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// What `/readyz` reports.
    pub fn health(&self) -> &Arc<admin::Health> {
        &self.health
    }

    /// Serves `/metrics` from this Prometheus recorder (see [`metrics::install`]).
    pub fn set_metrics(&mut self, handle: PrometheusHandle) {
        self.metrics = Some(handle);
    }

    /// Serves on `listeners` until shutdown, then waits up to `grace` for open
    /// connections to end. The admin endpoints serve until the drain is over, with
    /// `/readyz` failing from the moment shutdown begins.
    pub async fn run(self, listeners: Listeners, grace: Duration) -> Drain {
        let accept_loops = TaskTracker::new();
        for listener in listeners.epmd {
            accept_loops.spawn(Arc::clone(&self.epmd).serve(listener));
        }
        for (port, listener) in listeners.dist {
            accept_loops.spawn(Arc::clone(&self.forwarder).serve(listener, port));
        }
        if let Some(gateway) = &self.gateway {
            accept_loops.spawn(
                Arc::clone(gateway).maintain(Arc::clone(&self.registry), self.shutdown.clone()),
            );
        }
        accept_loops.close();
        let admin_stop = CancellationToken::new();
        let admin_loops = TaskTracker::new();
        if !listeners.admin.is_empty() {
            let handle = self.metrics.clone().unwrap_or_else(|| {
                metrics_exporter_prometheus::PrometheusBuilder::new()
                    .build_recorder()
                    .handle()
            });
            for listener in listeners.admin {
                admin_loops.spawn(admin::serve(
                    listener,
                    handle.clone(),
                    Arc::clone(&self.health),
                    admin_stop.clone(),
                ));
            }
        }
        admin_loops.close();
        self.health.set_listening();
        self.shutdown.cancelled().await;
        accept_loops.wait().await;
        self.tracker.close();
        info!(
            open = self.tracker.len(),
            "stopped accepting; draining connections"
        );
        let drain = if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
        {
            info!("drain complete");
            Drain::Complete
        } else {
            let open = self.tracker.len();
            warn!(open, "grace period over; dropping open connections");
            Drain::TimedOut { open }
        };
        admin_stop.cancel();
        admin_loops.wait().await;
        drain
    }
}

/// Logs and counts an accept error, then waits a little before accepting again (the
/// usual cause, running out of descriptors, does not clear at once).
pub(crate) async fn accept_backoff(error: &std::io::Error, shutdown: &CancellationToken) {
    warn!("accept failed: {error}");
    ::metrics::counter!(metrics::ACCEPT_ERRORS).increment(1);
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
    }
}
