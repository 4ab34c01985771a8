//! The `distgate` binary, as a map: parse the command line ([`cli`]); a short command
//! runs and exits ([`commands`]); otherwise load the configuration, start logging
//! ([`logging`]), build the runtime and serve until drained ([`serve`]); the log
//! lines still waiting are written before the exit. Exit codes: 0 after a drain, 64
//! for an unusable configuration or log filter, 1 for anything else that stops it.
//! Everything else is the library's.

mod cli;
mod commands;
mod logging;
mod serve;

use std::process::ExitCode;

use clap::Parser;
use tracing::{error, info, warn};

use cli::{Cli, Command};
use distgate::config::{self, Config};
use logging::{LogControl, init_logging};

/// EX_USAGE from sysexits.h: the configuration is unusable.
pub(crate) const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let code = run(Cli::parse());
    logging::finish();
    code
}

fn run(cli: Cli) -> ExitCode {
    match &cli.command {
        Some(Command::CheckConfig { file }) => return commands::check_config(file),
        Some(Command::Probe {
            node,
            epmd_port,
            ipv6,
            timeout,
        }) => return commands::probe(node, *epmd_port, *ipv6, *timeout),
        Some(Command::Links(args)) => return commands::status(args, commands::Table::Links),
        Some(Command::Nodes(args)) => return commands::status(args, commands::Table::Nodes),
        Some(Command::Bans(args)) => return commands::status(args, commands::Table::Bans),
        Some(Command::Refusals(args)) => {
            return commands::status(args, commands::Table::Refusals);
        }
        Some(Command::Reload(args)) => return commands::reload(args),
        Some(Command::Unban { which, admin }) => return commands::unban(which, admin),
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
    info!(version = env!("CARGO_PKG_VERSION"), "distgate starting");
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
        None => {
            info!("no configuration file: the built-in defaults (--config FILE to give one)");
            (Config::default(), None)
        }
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
    match runtime.block_on(serve::run(config, file, log)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
