//! Reloading the configuration (SIGHUP, `POST /reload`) without touching a link.
//!
//! The file is read and validated again. If it is unusable, or changes what cannot
//! change while distgate runs ([`Key::restart_only`]: the listener addresses, the
//! admin server's and the engine's settings, the metric series), nothing changes and
//! the error says why. Otherwise what it needs is prepared first (public ports added
//! to the pool are bound, a gateway for new routes is built) into a
//! [`crate::system::Change`], which the running system puts in force in one step
//! under the reload lock ([`crate::system::System::apply`]). A link already forwarded
//! needs nothing of the configuration and goes on as it was.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use hyper::StatusCode;
use tracing::{error, info, warn};

use crate::config::{self, Config, ConfigError, Key};
use crate::dns::DnsSetupError;
use crate::gateway::Gateway;
use crate::listen::{self, BindError};
use crate::metrics as m;
use crate::system::{Change, System};

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
    #[error("{} cannot change without a restart: restart distgate to apply it", quoted(.0))]
    RestartNeeded(Vec<Key>),
    /// A public port added to the pool cannot be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The DNS resolver of the new routes cannot be set up.
    #[error(transparent)]
    Dns(#[from] DnsSetupError),
    /// The `[federation]` certificate, key or trust anchors do not load.
    #[error("`[federation]` material: {0}")]
    Federation(#[from] crate::federation::MaterialError),
}

fn quoted(keys: &[Key]) -> String {
    let keys: Vec<String> = keys.iter().map(|k| format!("`{k}`")).collect();
    keys.join(", ")
}

impl crate::admin::Control for Reloader {
    fn reload<'a>(
        &'a self,
        by: &'a str,
    ) -> Pin<Box<dyn Future<Output = (StatusCode, serde_json::Value)> + Send + 'a>> {
        Box::pin(async move {
            match Reloader::reload(self, by).await {
                Ok(done) => (
                    StatusCode::OK,
                    serde_json::json!({"result": "ok", "hash": done.hash, "changed": done.changed}),
                ),
                Err(e) => (
                    e.http_status(),
                    serde_json::json!({"result": e.result(), "key": e.key(), "error": e.to_string()}),
                ),
            }
        })
    }

    fn leases(&self) -> Vec<crate::api::LeaseView> {
        (self.gateway()).map_or_else(Vec::new, |g| g.lease_views())
    }
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
            ReloadError::Bind(_) | ReloadError::Dns(_) | ReloadError::Federation(_) => "failed",
        }
    }

    /// The status `POST /reload` answers with: `422` for an invalid file, `409` when
    /// it needs a restart (or there is no file yet), `500` when a port could not be
    /// bound or DNS set up.
    pub fn http_status(&self) -> StatusCode {
        match self {
            ReloadError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ReloadError::NoFile | ReloadError::Starting | ReloadError::RestartNeeded(_) => {
                StatusCode::CONFLICT
            }
            ReloadError::Bind(_) | ReloadError::Dns(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ReloadError::Federation(_) => StatusCode::UNPROCESSABLE_ENTITY,
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

/// What the last reload (or the start) put in force.
#[derive(Debug)]
struct State {
    config: Config,
    hash: String,
}

/// Applies `log.level`: given the level (`None`: unset) by the binary, which owns the
/// log subscriber.
pub type LogLevelHook = Box<dyn Fn(Option<&str>) + Send + Sync>;

/// Reloads the configuration of one running distgate; one reload at a time.
pub struct Reloader {
    system: Arc<System>,
    file: OnceLock<PathBuf>,
    log_level: OnceLock<LogLevelHook>,
    state: tokio::sync::Mutex<State>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl Reloader {
    /// Reloads of `system`, which runs `config` now.
    pub(crate) fn new(system: Arc<System>, config: Config) -> Reloader {
        Reloader {
            system,
            file: OnceLock::new(),
            log_level: OnceLock::new(),
            state: tokio::sync::Mutex::new(State {
                config,
                hash: config::DEFAULTS_HASH.to_owned(),
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
        self.system.gateway()
    }

    /// Runs `start` (the system starting to serve) under the reload lock, then
    /// publishes the configuration in force and starts the reload counters at 0:
    /// called once, when distgate serves.
    pub(crate) async fn start(&self, start: impl FnOnce()) {
        let state = self.state.lock().await;
        start();
        ::metrics::gauge!(m::CONFIG_INFO, "hash" => state.hash.clone()).set(1.0);
        let file = if self.file.get().is_some() { 1.0 } else { 0.0 };
        ::metrics::gauge!(m::CONFIG_FILE).set(file);
        for result in ["ok", "invalid", "refused", "failed"] {
            ::metrics::counter!(m::CONFIG_RELOADS, "result" => result).increment(0);
        }
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
            // Nothing to read again: no configuration went wrong, nothing to fix but
            // how distgate is started.
            Err(e @ ReloadError::NoFile) => warn!(by, result = e.result(), "{e}"),
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
        if self.system.public.ports().is_none() {
            return Err(ReloadError::Starting);
        }
        let path = file.clone();
        let loaded = tokio::task::spawn_blocking(move || config::load_hashed(&path)).await;
        let (new, hash) = loaded.map_err(|_| ReloadError::Starting)??;
        let changed = config::changed(&state.config, &new);
        let refused: Vec<Key> = (changed.iter())
            .filter(|key| key.restart_only())
            .copied()
            .collect();
        if !refused.is_empty() {
            return Err(ReloadError::RestartNeeded(refused));
        }
        let change = self.prepare(new, &changed)?;
        // The new level first, so that what the change logs is filtered by it.
        if changed.contains(&Key::LogLevel)
            && let Some(hook) = self.log_level.get()
        {
            hook(change.config.log.level.as_deref());
        }
        state.config = self.system.apply(change);
        ::metrics::gauge!(m::CONFIG_INFO, "hash" => state.hash.clone()).set(0.0);
        ::metrics::gauge!(m::CONFIG_INFO, "hash" => hash.clone()).set(1.0);
        state.hash = hash.clone();
        Ok(Reloaded { hash, changed })
    }

    /// What putting `new` in force takes, done first: if any of it fails, nothing
    /// has changed.
    fn prepare(&self, new: Config, changed: &[Key]) -> Result<Change, ReloadError> {
        let served = self.system.public.ports().ok_or(ReloadError::Starting)?;
        let mut added = vec![];
        for &port in &new.dist.ports {
            if !served.contains(&port) {
                added.push((port, listen::bind_public_port(&new.dist.listen, port)?));
            }
        }
        let removed: Vec<u16> = (served.into_iter())
            .filter(|port| !new.dist.ports.contains(port))
            .collect();
        let plan_changed = [Key::DistPorts, Key::DistPins, Key::DistClientNames]
            .iter()
            .any(|key| changed.contains(key));
        let routes_changed =
            plan_changed || changed.contains(&Key::Route) || changed.contains(&Key::Dns);
        let federation = self.system.federation();
        // New material must load before anything changes (a path mistyped is refused,
        // not a warning while the old material stays).
        if let (Some(_), Some(paths)) = (&federation, crate::federation::Paths::of(&new.federation))
        {
            crate::federation::Material::load(&paths)?;
        }
        if federation.is_none() && new.federation.wanted(&new.routes) {
            // Federation turned on where it was off: its material and listener come with a restart.
            return Err(ReloadError::RestartNeeded(vec![Key::FederationCert]));
        }
        let gateway = match routes_changed {
            true => Some(
                Gateway::from_config(&new, Arc::clone(self.system.directory.ports()))?
                    .map(|g| g.with_federation(federation, new.dist.connect_timeout)),
            ),
            false => None,
        };
        Ok(Change {
            config: new,
            added,
            removed,
            plan_changed,
            gateway,
        })
    }
}
