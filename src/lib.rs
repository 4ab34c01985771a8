//! distgate: an EPMD server and dist-port gateway for Erlang/Elixir (BEAM) nodes.
//!
//! A node beside distgate registers with it as with OTP's epmd. distgate tells peers a
//! fixed *public* port for the node and forwards connections there to the node's real,
//! random port. `ARCHITECTURE.md` walks a dist connection and a PORT_PLEASE2 through
//! these modules and names who owns which task. The crate's map:
//!
//! - [`config`]: TOML → validated [`Config`]; every error names its key and line;
//!   [`config::Key`] names every key and knows which only a restart applies.
//! - [`epmd`]: the EPMD wire format (pure; [`epmd::NodeInfo`] is what a node
//!   registers), the server that answers it, the client.
//! - [`directory`]: which port peers dial for a name, and where a public port goes;
//!   the EPMD server and the forwarder ask it and nothing else.
//! - [`registry`]: the local nodes and their creations.
//! - [`ports`]: the public dist ports and who holds each.
//! - [`forward`]: the public ports' connections: admission, the handshake followed,
//!   the bytes moved (splice or copy).
//! - [`handshake`]: the dist handshake frames and their follower (who is calling), pure.
//! - [`links`]: the table of open links, their bytes each way and silences.
//! - [`prefix`]: a source as limits and bans count it (an IPv4 address, an IPv6 /64).
//! - `accept`: the one accept loop of every listener; `limit`: how many connections
//!   of each kind are held at once; `log_budget`: how fast a warning peers can
//!   trigger is logged.
//! - [`metrics`]: every metric name, described once, and the Prometheus recorders.
//! - [`admin`]: the HTTP server: `/metrics`, `/livez`, `/readyz`, `/links`, `/nodes`
//!   and `POST /reload`; [`ready`]: what `/readyz` answers; [`api`]: the JSON shapes of
//!   `/links` and `/nodes` and the client of `distgate links`, `nodes` and `reload`.
//! - [`probe`]: `distgate probe NODE@HOST`, which finds where a node's path breaks.
//! - [`dns`]: hickory behind a trait, and a cache that owns TTLs (for the gateway):
//!   one lookup per name at a time, missing names remembered, at most 4,096 names.
//! - [`route`]: gateway routes (node-name glob → upstream host template), pure;
//!   [`glob`]: the globs over node names that routes, pins and allow-lists use.
//! - [`gateway`]: routed names: confirmed upstream, leased a public port (the same on
//!   every replica that knows the same names), forwarded; it serves the directory
//!   through [`directory::Routes`].
//! - `system`: the running system, owned in one place: built once from a
//!   configuration, served until drained, changed by a reload's typed `Change`.
//! - [`reload`]: the configuration read again (SIGHUP, `POST /reload`), checked and
//!   prepared, then put in force by the system without touching a link; `live`: a
//!   setting a reload replaces while connections read it; [`listen`]: binding
//!   listeners.
//!
//! Dependencies run one way, with no cycle: `epmd::server` and `forward` know the
//! directory, the directory knows the registry, the ports and the `Routes` trait, and
//! the gateway implements that trait; the admin server asks an `admin::Control` that
//! the reloader implements; `system` composes them and this file hands out [`Distgate`].
//!
//! The library installs no signal handler and binds only the public ports a reload
//! adds: the binary (`src/bin/distgate`) binds the listeners and hands them to
//! [`Distgate::run`] with a shutdown token, and tests do the same with listeners on
//! `127.0.0.1:0`. The wire reference is `docs/protocol.md`.

mod accept;
pub mod admin;
pub mod api;
pub mod config;
pub mod directory;
pub mod dns;
pub mod epmd;
pub mod federation;
pub mod forward;
pub mod gateway;
pub mod glob;
pub mod handshake;
mod limit;
pub mod links;
pub mod listen;
mod live;
mod log_budget;
pub mod metrics;
pub mod ports;
pub mod prefix;
pub mod probe;
pub mod ready;
pub mod registry;
pub mod reload;
pub mod route;
mod system;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
use directory::Directory;
use gateway::Gateway;
use ports::PortPlan;
use registry::Registry;
use reload::Reloader;
use system::System;

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
    /// Federation listeners (`[federation] listen`): peer gateways connect there.
    pub federation: Vec<TcpListener>,
}

/// How the drain at shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Every connection ended within the grace period.
    Complete,
    /// The grace period passed with connections still open; they are dropped.
    TimedOut {
        /// Connections still open then.
        open: usize,
    },
}

/// Why a distgate could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The DNS resolver for the routes.
    #[error(transparent)]
    Dns(#[from] dns::DnsSetupError),
    /// The federation certificate, key or trust anchors.
    #[error("`[federation]` material: {0}")]
    Federation(#[from] federation::MaterialError),
}

impl SetupError {
    /// A bounded label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SetupError::Dns(e) => e.reason(),
            SetupError::Federation(_) => "federation_material",
        }
    }
}

/// A running distgate: the EPMD server and the public dist ports of a pod (a
/// sidecar), and, when the configuration has routes, the gateway that answers and
/// forwards names living elsewhere. A handle on the running system
/// ([`system::System`], which owns every part) and its reloader.
#[derive(Debug)]
pub struct Distgate {
    system: Arc<System>,
    reloader: Arc<Reloader>,
    metrics: Option<metrics::Exporter>,
}

impl Distgate {
    /// A distgate for `config` whose public ports are `plan` (the binary uses
    /// `config.dist.port_plan()`; tests pass the ports they bound). Cancelling
    /// `shutdown` stops it; so does an allowed KILL_REQ.
    pub fn new(
        config: &Config,
        plan: PortPlan,
        shutdown: CancellationToken,
    ) -> Result<Distgate, SetupError> {
        let system = Arc::new(System::build(config, plan, shutdown)?);
        let reloader = Arc::new(Reloader::new(Arc::clone(&system), config.clone()));
        Ok(Distgate {
            system,
            reloader,
            metrics: None,
        })
    }

    /// Which port each name has and where each public port goes.
    pub fn directory(&self) -> &Arc<Directory> {
        &self.system.directory
    }

    /// The registry of local nodes.
    pub fn registry(&self) -> &Arc<Registry> {
        self.system.directory.registry()
    }

    /// The open links.
    pub fn links(&self) -> &Arc<links::Links> {
        &self.system.links
    }

    /// The gateway in force, when the configuration has routes.
    pub fn gateway(&self) -> Option<Arc<Gateway>> {
        self.system.gateway()
    }

    /// What reloads the configuration: SIGHUP and `POST /reload` go through it.
    pub fn reloader(&self) -> &Arc<Reloader> {
        &self.reloader
    }

    /// Reloads read `file` (whose bytes now in force hash to `hash`, see
    /// [`config::load_hashed`]); without it a reload is refused.
    pub fn set_config_file(&self, file: std::path::PathBuf, hash: String) {
        self.reloader.set_file(file, hash);
    }

    /// Reloads apply `[log] level` through `hook` (the binary owns the subscriber).
    pub fn set_log_level_hook(&self, hook: reload::LogLevelHook) {
        self.reloader.set_log_level(hook);
    }

    /// What `/readyz` reports.
    pub fn health(&self) -> &Arc<ready::Health> {
        &self.system.health
    }

    /// Serves `/metrics` from this Prometheus recorder (see [`metrics::install`]).
    pub fn set_metrics(&mut self, handle: metrics::Exporter) {
        self.metrics = Some(handle);
    }

    /// Serves on `listeners` until shutdown, then waits up to `[shutdown] grace` (as
    /// in force then) for open connections to end. The admin endpoints serve until
    /// the drain is over, with `/readyz` failing from the moment shutdown begins.
    pub async fn run(self, listeners: Listeners) -> Drain {
        let Listeners {
            epmd,
            dist,
            admin,
            federation,
        } = listeners;
        let system = Arc::clone(&self.system);
        self.reloader
            .start(|| system.start(epmd, dist, federation))
            .await;
        let control = self.reloader as Arc<dyn admin::Control>;
        self.system.serve(admin, self.metrics, control).await
    }
}
