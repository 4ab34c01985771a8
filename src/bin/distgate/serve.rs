//! `distgate run`: the listeners bound, the descriptor limit raised, the signals
//! watched, and the library's [`Distgate`] served until it has drained.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use distgate::config::Config;
use distgate::{Distgate, Drain, Listeners};

use crate::logging::LogControl;

pub(crate) async fn run(
    config: Config,
    file: Option<(PathBuf, String)>,
    log: LogControl,
) -> anyhow::Result<()> {
    let metrics = distgate::metrics::install(config.metrics.idle_timeout)?;
    let shutdown = CancellationToken::new();
    let mut distgate = Distgate::new(&config, config.dist.port_plan(), shutdown.clone())
        .context("cannot set up DNS for the routes")?;
    distgate.set_metrics(metrics);
    if let Some((path, hash)) = file {
        distgate.set_config_file(path, hash);
    }
    distgate.set_log_level_hook(log.hook());
    raise_descriptor_limit(&config);
    let listeners = bind_all(&config)?;
    tokio::spawn(watch_signals(
        shutdown,
        Arc::clone(distgate.links()),
        Arc::clone(distgate.reloader()),
    ));
    match distgate.run(listeners).await {
        Drain::Complete => info!("distgate stopped"),
        Drain::TimedOut { open } => warn!(open, "distgate stopped with connections cut"),
    }
    Ok(())
}

/// Raises the soft descriptor limit to the hard one (as servers commonly do) and warns
/// when the connection limits could need more descriptors than that.
fn raise_descriptor_limit(config: &Config) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let limit = match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => hard,
        Err(e) => {
            warn!("cannot raise the descriptor limit from {soft} to {hard}: {e}");
            soft
        }
    };
    // Two per forwarded connection, one per EPMD connection, and headroom for
    // listeners, pipes of idle pools, DNS and the admin server.
    let epmd = config.epmd.max_connections.get() as u64;
    let dist = config.dist.max_connections.get() as u64;
    let needed = epmd + 2 * dist + 256;
    if needed > limit {
        warn!(
            descriptors = limit,
            needed,
            "epmd.max_connections + 2 × dist.max_connections could exceed the descriptor limit; lower them"
        );
    } else {
        info!(descriptors = limit, "descriptor limit");
    }
}

/// SIGTERM or SIGINT starts the drain; a second one during the drain exits at once,
/// saying how many links it cuts. SIGHUP reloads the configuration file (one reload at
/// a time; signals that come meanwhile are folded into the next).
async fn watch_signals(
    shutdown: CancellationToken,
    links: Arc<distgate::links::Links>,
    reloader: Arc<distgate::reload::Reloader>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(term), Ok(int), Ok(hup)) => (term, int, hup),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            error!("cannot watch signals: {e}");
            return;
        }
    };
    loop {
        let (name, code) = tokio::select! {
            _ = term.recv() => ("SIGTERM", 128 + 15),
            _ = int.recv() => ("SIGINT", 128 + 2),
            _ = hup.recv() => {
                let reloader = Arc::clone(&reloader);
                tokio::spawn(async move { reloader.reload("SIGHUP").await });
                continue;
            }
        };
        if !shutdown.is_cancelled() {
            info!(signal = name, "shutting down");
            shutdown.cancel();
            continue;
        }
        warn!(
            signal = name,
            links_cut = links.len(),
            "second signal during the drain: exiting now"
        );
        crate::logging::finish();
        std::process::exit(code);
    }
}

/// Binds every configured listener. An address whose family the host lacks (IPv6
/// disabled in the pod, say) is skipped with a warning while another address serves
/// the same purpose; any other failure stops distgate, naming the address.
fn bind_all(config: &Config) -> anyhow::Result<Listeners> {
    let mut listeners = Listeners::default();
    for &addr in &config.epmd.listen {
        if let Some(listener) = bind(addr, "epmd.listen")? {
            listeners.epmd.push(listener);
        }
    }
    if listeners.epmd.is_empty() {
        bail!("no `epmd.listen` address could be bound");
    }
    for &port in &config.dist.ports {
        for listener in distgate::listen::bind_public_port(&config.dist.listen, port)? {
            listeners.dist.push((port, listener));
        }
    }
    for &addr in &config.admin.listen {
        if let Some(listener) = bind(addr, "admin.listen")? {
            listeners.admin.push(listener);
        }
    }
    for &addr in &config.federation.listen {
        if let Some(listener) = bind(addr, "federation.listen")? {
            listeners.federation.push(listener);
        }
    }
    if !config.federation.listen.is_empty() && listeners.federation.is_empty() {
        bail!("no `federation.listen` address could be bound");
    }
    for listener in listeners.federation.iter() {
        info!(addr = %display_addr(listener), "federation listening (peer gateways, mutual TLS)");
    }
    for listener in listeners.epmd.iter() {
        info!(addr = %display_addr(listener), "EPMD listening");
    }
    for listener in listeners.admin.iter() {
        info!(addr = %display_addr(listener), "admin HTTP listening (/metrics, /livez, /readyz)");
    }
    for (_, listener) in listeners.dist.iter() {
        info!(addr = %display_addr(listener), "public dist port listening");
    }
    Ok(listeners)
}

fn display_addr(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map_or_else(|_| "?".into(), |a| a.to_string())
}

fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<Option<TcpListener>> {
    Ok(distgate::listen::bind(addr, key)?)
}
