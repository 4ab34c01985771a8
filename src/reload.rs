//! Reloading the configuration (SIGHUP, `POST /reload`) without touching a link.
//!
//! The file is read and validated again. If it is unusable, or changes what cannot
//! change while distgate runs ([`config::Key::restart_only`]: the listener addresses, the
//! admin server's and the engine's settings, the metric series), nothing changes and
//! the error says why. Otherwise what it needs is prepared first (public ports added to
//! the pool are bound, a gateway for new routes is built) and only then put in force,
//! in one step under the reload lock: limits, admission, timeouts and `ready_when` for
//! what comes next; the pool and pins (nodes whose port no longer fits move, ports
//! taken out stop accepting); routes (the new gateway takes over the leases and
//! discovered names of the old one). A link already forwarded needs nothing of the
//! configuration and goes on as it was.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::{self, Config, ConfigError, Key};
use crate::directory::{Directory, Routes};
use crate::dns::DnsSetupError;
use crate::epmd;
use crate::forward::public::Forwarder;
use crate::gateway::Gateway;
use crate::limit::Limit;
use crate::links::Links;
use crate::listen::{self, BindError};
use crate::live::Live;
use crate::metrics as m;
use crate::ready::Health;
use crate::registry::Moved;

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// distgate runs on its built-in defaults: there is no file to read again.
    #[error(
        "no configuration file to reload: distgate runs on its built-in defaults (start it with --config FILE)"
    )]
    NoFile,
    /// Listeners are not serving yet.
    #[error("distgate is still starting; reload once it serves")]
    Starting,
    /// The file cannot be read or is invalid.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// The file changes keys that only a restart applies.
    #[error("{} cannot change without a restart (the running configuration stays; restart distgate to apply it)", quoted(.0))]
    RestartNeeded(Vec<Key>),
    /// A public port added to the pool cannot be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The DNS resolver of the new routes cannot be set up.
    #[error(transparent)]
    Dns(#[from] DnsSetupError),
}

fn quoted(keys: &[Key]) -> String {
    let keys: Vec<String> = keys.iter().map(|k| format!("`{k}`")).collect();
    keys.join(", ")
}

/// Keys as the log line lists them: `dist.ports,log.level`.
fn names(keys: &[Key]) -> String {
    let names: Vec<&str> = keys.iter().map(|k| k.name()).collect();
    names.join(",")
}

impl ReloadError {
    /// The `result` label of `distgate_config_reloads_total`.
    pub fn result(&self) -> &'static str {
        match self {
            ReloadError::Invalid(_) => "invalid",
            ReloadError::NoFile | ReloadError::Starting | ReloadError::RestartNeeded(_) => {
                "refused"
            }
            ReloadError::Bind(_) | ReloadError::Dns(_) => "failed",
        }
    }

    /// The status `POST /reload` answers with: `422` for an invalid file, `409` when
    /// it needs a restart (or there is no file yet), `500` when a port could not be
    /// bound or DNS set up.
    pub fn http_status(&self) -> hyper::StatusCode {
        use hyper::StatusCode;
        match self {
            ReloadError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ReloadError::NoFile | ReloadError::Starting | ReloadError::RestartNeeded(_) => {
                StatusCode::CONFLICT
            }
            ReloadError::Bind(_) | ReloadError::Dns(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The key the error is about, when one is.
    pub fn key(&self) -> Option<String> {
        match self {
            ReloadError::Invalid(e) if !e.key().is_empty() => Some(e.key().to_owned()),
            ReloadError::RestartNeeded(keys) => keys.first().map(|k| k.name().to_owned()),
            ReloadError::Bind(BindError::InUse { key, .. } | BindError::Other { key, .. }) => {
                Some(key.clone())
            }
            _ => None,
        }
    }
}

/// What a reload that worked changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The hash of the configuration now in force ([`config::hash`]).
    pub hash: String,
    /// The keys whose values changed (empty: the same configuration).
    pub changed: Vec<Key>,
}

/// What a reload reaches into: the parts of a running distgate that read settings.
#[derive(Debug)]
pub(crate) struct Parts {
    pub(crate) epmd: Arc<epmd::Server>,
    pub(crate) epmd_limit: Arc<Limit>,
    pub(crate) forwarder: Arc<Forwarder>,
    pub(crate) dist_limit: Arc<Limit>,
    pub(crate) links: Arc<Links>,
    pub(crate) health: Arc<Health>,
    pub(crate) directory: Arc<Directory>,
    /// The gateway in force (the admin's `/nodes` reads it too).
    pub(crate) gateway: Live<Option<Arc<Gateway>>>,
    /// `[shutdown] grace` in force, read when the drain begins.
    pub(crate) grace: Live<Duration>,
    pub(crate) shutdown: CancellationToken,
    /// The accept loops the drain waits for; public ports a reload adds join them.
    pub(crate) accept_loops: TaskTracker,
}

/// What the last reload (or the start) put in force.
#[derive(Debug)]
struct State {
    config: Config,
    hash: String,
    /// Each public port served, with the token that stops its accept loops; `None`
    /// until distgate serves.
    ports: Option<BTreeMap<u16, CancellationToken>>,
    /// Stops the maintenance loops of the gateway in force.
    maintain: Option<CancellationToken>,
}

/// Applies `log.level`: given the level (`None`: unset) by the binary, which owns the
/// log subscriber.
pub type LogLevelHook = Box<dyn Fn(Option<&str>) + Send + Sync>;

/// Reloads the configuration of one running distgate; one reload at a time.
pub struct Reloader {
    file: OnceLock<PathBuf>,
    log_level: OnceLock<LogLevelHook>,
    pub(crate) parts: Parts,
    state: tokio::sync::Mutex<State>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("file", &self.file)
            .field("parts", &self.parts)
            .finish_non_exhaustive()
    }
}

impl Reloader {
    pub(crate) fn new(parts: Parts, config: Config) -> Reloader {
        if let Some(gateway) = parts.gateway.get().as_ref() {
            parts.health.set_discovery(Some(gateway.discovering()));
        }
        Reloader {
            file: OnceLock::new(),
            log_level: OnceLock::new(),
            parts,
            state: tokio::sync::Mutex::new(State {
                config,
                hash: config::DEFAULTS_HASH.to_owned(),
                ports: None,
                maintain: None,
            }),
        }
    }

    /// Reloads read `file`, whose bytes in force hash to `hash`.
    pub(crate) fn set_file(&self, file: PathBuf, hash: String) {
        let _ = self.file.set(file);
        if let Ok(mut state) = self.state.try_lock() {
            state.hash = hash;
        }
    }

    /// Reloads apply `log.level` through `hook`.
    pub(crate) fn set_log_level(&self, hook: LogLevelHook) {
        let _ = self.log_level.set(hook);
    }

    /// The gateway in force.
    pub(crate) fn gateway(&self) -> Option<Arc<Gateway>> {
        (*self.parts.gateway.get()).clone()
    }

    /// Starts serving `ports` (public port, listener) and the gateway's maintenance:
    /// called once, by `Distgate::run`.
    pub(crate) async fn start(&self, ports: Vec<(u16, TcpListener)>) {
        let mut state = self.state.lock().await;
        let mut served = BTreeMap::new();
        for (port, listener) in ports {
            let stop = served
                .entry(port)
                .or_insert_with(|| self.parts.shutdown.child_token())
                .clone();
            self.serve_port(port, listener, stop);
        }
        state.ports = Some(served);
        state.maintain = self.gateway().map(|gateway| self.maintain(gateway));
        ::metrics::gauge!(m::CONFIG_INFO, "hash" => state.hash.clone()).set(1.0);
        for result in ["ok", "invalid", "refused", "failed"] {
            ::metrics::counter!(m::CONFIG_RELOADS, "result" => result).increment(0);
        }
    }

    fn serve_port(&self, port: u16, listener: TcpListener, stop: CancellationToken) {
        let forwarder = Arc::clone(&self.parts.forwarder);
        (self.parts.accept_loops).spawn(forwarder.serve(listener, port, stop));
    }

    /// Runs `gateway`'s maintenance until the returned token (a child of shutdown) is
    /// cancelled. Not among the loops the drain waits for: it stops the moment
    /// shutdown begins, whatever the upstreams do.
    fn maintain(&self, gateway: Arc<Gateway>) -> CancellationToken {
        let stop = self.parts.shutdown.child_token();
        tokio::spawn(gateway.maintain(stop.clone()));
        stop
    }

    /// Reads the configuration file again and puts it in force, or changes nothing;
    /// logged and counted either way. `by` says who asked (`SIGHUP`, `POST /reload`).
    pub async fn reload(&self, by: &str) -> Result<Reloaded, ReloadError> {
        let mut state = self.state.lock().await;
        let result = self.reload_locked(&mut state).await;
        let file = self.file.get().map(|f| f.display().to_string());
        match &result {
            Ok(done) if done.changed.is_empty() => {
                info!(by, file, hash = %done.hash, "configuration reloaded: nothing changed");
            }
            Ok(done) => info!(
                by, file, hash = %done.hash, changed = %names(&done.changed),
                "configuration reloaded; open links go on as they are"
            ),
            Err(e) => error!(
                by,
                file,
                key = e.key(),
                result = e.result(),
                "configuration not reloaded, the running one stays: {e}"
            ),
        }
        let label = result.as_ref().map_or_else(|e| e.result(), |_| "ok");
        ::metrics::counter!(m::CONFIG_RELOADS, "result" => label).increment(1);
        result
    }

    async fn reload_locked(&self, state: &mut State) -> Result<Reloaded, ReloadError> {
        let file = self.file.get().ok_or(ReloadError::NoFile)?;
        if state.ports.is_none() {
            return Err(ReloadError::Starting);
        }
        let path = file.clone();
        let loaded = tokio::task::spawn_blocking(move || config::load_hashed(&path)).await;
        let (new, hash) = loaded.map_err(|_| ReloadError::Starting)??;
        self.apply(state, new, hash)
    }

    /// Puts `new` in force, or changes nothing and says why.
    fn apply(&self, state: &mut State, new: Config, hash: String) -> Result<Reloaded, ReloadError> {
        let changed = config::changed(&state.config, &new);
        let refused: Vec<Key> = (changed.iter())
            .filter(|key| key.restart_only())
            .copied()
            .collect();
        if !refused.is_empty() {
            return Err(ReloadError::RestartNeeded(refused));
        }
        let parts = &self.parts;
        let served = state.ports.as_ref().ok_or(ReloadError::Starting)?;

        // Prepared first: if any of it fails, nothing has changed.
        let mut added = vec![];
        for &port in &new.dist.ports {
            if !served.contains_key(&port) {
                added.push((port, listen::bind_public_port(&new.dist.listen, port)?));
            }
        }
        let removed: Vec<u16> = (served.keys())
            .filter(|port| !new.dist.ports.contains(port))
            .copied()
            .collect();
        let plan_changed = [Key::DistPorts, Key::DistPins, Key::DistClientNames]
            .iter()
            .any(|key| changed.contains(key));
        let routes_changed =
            plan_changed || changed.contains(&Key::Route) || changed.contains(&Key::Dns);
        let gateway = match routes_changed {
            true => Gateway::from_config(&new, Arc::clone(parts.directory.ports()))?,
            false => None,
        };

        // Then in force, in one step.
        parts.epmd.set_config(new.epmd.clone());
        parts.epmd_limit.set_max(new.epmd.max_connections.get());
        parts.forwarder.set_config(&new.dist);
        parts.dist_limit.set_max(new.dist.max_connections.get());
        parts.links.set_silent_after(new.dist.silent_after);
        parts.health.set_ready_when(new.admin.ready_when.clone());
        parts.grace.set(new.shutdown.grace);
        if changed.contains(&Key::LogLevel)
            && let Some(hook) = self.log_level.get()
        {
            hook(new.log.level.as_deref());
        }
        if plan_changed {
            let registry = parts.directory.registry();
            for moved in registry.replan(new.dist.port_plan()) {
                let Moved {
                    name: node,
                    from,
                    to,
                    client,
                } = moved;
                match to {
                    Some(to) => {
                        info!(node, from, to, "node's public port changed by the reload")
                    }
                    None if client => info!(
                        node,
                        from,
                        "node is a release client by `dist.client_names` after the reload: its public port is given back"
                    ),
                    None => warn!(
                        node,
                        from,
                        "node without a public port after the reload: the pool `dist.ports` has none left for it"
                    ),
                }
            }
        }
        if routes_changed {
            self.replace_gateway(state, gateway);
        }
        let served = state.ports.get_or_insert_default();
        for (port, listeners) in added {
            let stop = parts.shutdown.child_token();
            for listener in listeners {
                let addr = listener
                    .local_addr()
                    .map_or_else(|_| "?".into(), |a| a.to_string());
                info!(addr, "public dist port listening");
                self.serve_port(port, listener, stop.clone());
            }
            served.insert(port, stop);
        }
        for port in removed {
            if let Some(stop) = served.remove(&port) {
                stop.cancel();
                info!(
                    port,
                    "public dist port closed by the reload; its open links go on"
                );
            }
        }
        ::metrics::gauge!(m::CONFIG_INFO, "hash" => state.hash.clone()).set(0.0);
        ::metrics::gauge!(m::CONFIG_INFO, "hash" => hash.clone()).set(1.0);
        state.config = new;
        state.hash = hash.clone();
        Ok(Reloaded { hash, changed })
    }

    /// Puts `new` (built from the new routes) in place of the gateway in force: it
    /// takes over the old one's leases and discovered names; the old one's
    /// maintenance stops. Without routes the routed names' ports go back to the pool.
    fn replace_gateway(&self, state: &mut State, new: Option<Gateway>) {
        let parts = &self.parts;
        let old = self.gateway();
        if let Some(stop) = state.maintain.take() {
            stop.cancel();
        }
        let new = new.map(|mut gateway| {
            if let Some(old) = &old {
                gateway.succeed(old);
            }
            Arc::new(gateway)
        });
        if new.is_none()
            && let Some(old) = &old
        {
            old.retire();
        }
        parts
            .health
            .set_discovery(new.as_ref().map(|g| g.discovering()));
        parts
            .directory
            .set_routes(new.clone().map(|g| g as Arc<dyn Routes>));
        parts.gateway.set(new.clone());
        state.maintain = new.map(|gateway| self.maintain(gateway));
    }
}
