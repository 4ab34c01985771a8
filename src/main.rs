//! The `distgate` binary: the command line, logging, binding the listeners, signals
//! and exit codes. Everything else is the library's.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use distgate::config::{self, Config};
use distgate::{Distgate, Drain, Listeners};

/// EX_USAGE from sysexits.h: the configuration is unusable.
const EXIT_CONFIG: u8 = 64;

/// EPMD server and dist-port gateway for Erlang/Elixir nodes.
///
/// With no arguments distgate runs as a sidecar on its built-in defaults: EPMD on
/// port 4369 and the public dist port 43691, on all IPv4 and IPv6 addresses.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,

    #[command(subcommand)]
    command: Option<Command>,
}

/// What running distgate reads; only `distgate` and `distgate run` take them.
#[derive(Debug, Clone, clap::Args)]
struct RunArgs {
    /// Configuration file (TOML); without it the built-in defaults apply.
    #[arg(long, short, env = "DISTGATE_CONFIG")]
    config: Option<PathBuf>,

    /// Log filter: a level (error, warn, info, debug, trace) or tracing directives.
    /// When given, it wins over `[log] level` of the file (also at a reload); when
    /// neither is, `info`.
    #[arg(long, env = "DISTGATE_LOG")]
    log_level: Option<String>,

    /// Log format.
    #[arg(long, env = "DISTGATE_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

impl RunArgs {
    /// `distgate run`'s own arguments, or else those given before `run`.
    fn or(self, before: RunArgs) -> RunArgs {
        RunArgs {
            config: self.config.or(before.config),
            log_level: self.log_level.or(before.log_level),
            log_format: match self.log_format {
                LogFormat::Text => before.log_format,
                json => json,
            },
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run distgate (the default).
    Run(RunArgs),
    /// Check a configuration file: exit 0 if usable, 64 with the key and line if not.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Reach a node as a peer would and report each step, or where and why it fails:
    /// DNS, EPMD, registration, the dist port, the handshake, the node's own name.
    /// Exits 0 when the node answers as itself, 1 otherwise.
    Probe {
        /// The node, as peers name it: name@host.
        node: String,
        /// The EPMD port to ask (as ERL_EPMD_PORT for nodes).
        #[arg(long, env = "ERL_EPMD_PORT", default_value_t = distgate::epmd::PORT)]
        epmd_port: u16,
        /// Resolve and connect over IPv6, like `-proto_dist inet6_tcp`.
        #[arg(long)]
        ipv6: bool,
        /// Limit of each step, e.g. "5s".
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// The open dist links of a running distgate (its admin port's /links) as a
    /// table: node, peer, source, age, bytes and seconds since the last byte each way.
    Links(AdminArgs),
    /// The nodes registered with a running distgate and, in gateway mode, its leases
    /// (its admin port's /nodes) as tables.
    Nodes(AdminArgs),
    /// Make a running distgate read its configuration file again (its admin port's
    /// POST /reload, served to loopback only; the same as SIGHUP). Exits 0 when the
    /// new configuration is in force, 1 when it is not (the running one stays).
    Reload(AdminArgs),
}

#[derive(Debug, clap::Args)]
struct AdminArgs {
    /// The admin address of the distgate to ask.
    #[arg(long, env = "DISTGATE_ADMIN", default_value = "127.0.0.1:9369")]
    admin: SocketAddr,
    /// Limit for the answer, e.g. "5s".
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::CheckConfig { file }) => return check_config(file),
        Some(Command::Probe {
            node,
            epmd_port,
            ipv6,
            timeout,
        }) => return probe(node, *epmd_port, *ipv6, *timeout),
        Some(Command::Links(args)) => return status(args, false),
        Some(Command::Nodes(args)) => return status(args, true),
        Some(Command::Reload(args)) => return reload(args),
        Some(Command::Run(_)) | None => {}
    }
    let cli = match cli.command {
        Some(Command::Run(args)) => args.or(cli.run),
        _ => cli.run,
    };
    let loaded = cli.config.as_ref().map(|path| config::load_hashed(path));
    let level = match (&cli.log_level, &loaded) {
        (Some(level), _) => level.clone(),
        (None, Some(Ok((config, _)))) => config.log.level.clone().unwrap_or_else(|| "info".into()),
        (None, _) => "info".into(),
    };
    let filter = match init_logging(&level, cli.log_format) {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("distgate: {e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let (config, file) = match loaded {
        Some(Ok((config, hash))) => {
            let path = cli.config.clone().unwrap_or_default();
            info!(file = %path.display(), hash, "configuration loaded");
            (config, Some((path, hash)))
        }
        Some(Err(e)) => {
            error!("invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
        None => (Config::default(), None),
    };
    if cli.log_level.is_some() && config.log.level.is_some() {
        warn!("`log.level` of the configuration is not used: --log-level (or DISTGATE_LOG) wins");
    }
    let log = LogControl {
        filter,
        fixed: cli.log_level.is_some(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, file, log)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(file: &Path) -> ExitCode {
    match config::load(file) {
        Ok(config) => {
            println!("{}: ok", file.display());
            for line in distgate::gateway::pool_report(&config) {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn probe(node: &str, epmd_port: u16, ipv6: bool, timeout: std::time::Duration) -> ExitCode {
    let target = match distgate::probe::Probe::parse(node, epmd_port, ipv6, timeout) {
        Ok(target) => target,
        Err(e) => {
            eprintln!("distgate probe: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let report = match on_this_thread(distgate::probe::probe(&target)) {
        Ok(report) => report,
        Err(code) => return code,
    };
    println!("{report}");
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs `task` on a runtime of this thread (the short commands: probe, links, nodes,
/// reload); exit 1 when no runtime can be started.
fn on_this_thread<F: std::future::Future>(task: F) -> Result<F::Output, ExitCode> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => Ok(runtime.block_on(task)),
        Err(e) => {
            eprintln!("distgate: cannot start the runtime: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

/// `distgate reload`: exit 0 when the new configuration is in force, 1 otherwise.
fn reload(args: &AdminArgs) -> ExitCode {
    let answer = match on_this_thread(distgate::api::client::reload(args.admin, args.timeout)) {
        Ok(answer) => answer,
        Err(code) => return code,
    };
    match answer {
        Ok((true, line)) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Ok((false, line)) => {
            eprintln!("distgate: {line}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("distgate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `distgate links` or `distgate nodes`: exit 0 with the table, 1 when the admin port
/// cannot be read.
fn status(args: &AdminArgs, nodes: bool) -> ExitCode {
    let answer = on_this_thread(async {
        match nodes {
            true => distgate::api::client::nodes(args.admin, args.timeout).await,
            false => distgate::api::client::links(args.admin, args.timeout).await,
        }
    });
    let answer = match answer {
        Ok(answer) => answer,
        Err(code) => return code,
    };
    match answer {
        Ok(table) => {
            print!("{table}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("distgate: {e}");
            ExitCode::FAILURE
        }
    }
}

type FilterHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// The log filter, and whether the command line fixed it (then `[log] level` of a
/// reloaded file is not used).
struct LogControl {
    filter: FilterHandle,
    fixed: bool,
}

impl LogControl {
    /// What a reload does with `[log] level`.
    fn hook(self) -> distgate::reload::LogLevelHook {
        Box::new(move |level: Option<&str>| {
            if self.fixed {
                warn!("`log.level` changed but is not used: --log-level (or DISTGATE_LOG) wins");
                return;
            }
            let level = level.unwrap_or("info");
            let applied = tracing_subscriber::EnvFilter::try_new(level)
                .map_err(|e| e.to_string())
                .and_then(|filter| self.filter.reload(filter).map_err(|e| e.to_string()));
            match applied {
                Ok(()) => info!(level, "log level changed"),
                Err(e) => error!(level, "log level not changed: {e}"),
            }
        })
    }
}

/// Standard error for log lines, never failing: a line it cannot write (the reader of
/// a pipe gone, a full disk) is dropped and counted, and nothing else changes. (A
/// failed write must not reach tracing, which reports it on standard error itself.)
struct LogOutput;

impl io::Write for LogOutput {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        if io::stderr().write_all(line).is_err() {
            ::metrics::counter!(distgate::metrics::LOG_LINES_DROPPED).increment(1);
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

fn init_logging(level: &str, format: LogFormat) -> anyhow::Result<FilterHandle> {
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .with_context(|| format!("invalid log level `{level}`"))?;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    // Colour only for a person at a terminal, and never with NO_COLOR (no-color.org).
    let colour =
        io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let output = tracing_subscriber::fmt::layer()
        .with_ansi(colour)
        .with_writer(|| LogOutput);
    let output = match format {
        LogFormat::Text => output.boxed(),
        LogFormat::Json => output.json().flatten_event(true).boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init()
        .context("cannot set up logging")?;
    Ok(handle)
}

async fn run(
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
