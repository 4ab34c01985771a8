//! The short commands: `check-config`, `probe`, `links`, `nodes`, `bans`,
//! `refusals`, `unban` and `reload`. Each
//! prints its answer and returns the exit code.

use std::path::Path;
use std::process::ExitCode;

use distgate::config;

use crate::EXIT_CONFIG;
use crate::cli::AdminArgs;

pub(crate) fn check_config(file: &Path) -> ExitCode {
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

pub(crate) fn probe(
    node: &str,
    epmd_port: u16,
    ipv6: bool,
    timeout: std::time::Duration,
) -> ExitCode {
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
pub(crate) fn on_this_thread<F: std::future::Future>(task: F) -> Result<F::Output, ExitCode> {
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

/// `distgate unban ADDRESS|all`: exit 0 when a ban was lifted (or `all` found none),
/// 1 otherwise.
pub(crate) fn unban(which: &str, args: &AdminArgs) -> ExitCode {
    said(on_this_thread(distgate::api::client::unban(
        args.admin,
        which,
        args.timeout,
    )))
}

/// `distgate reload`: exit 0 when the new configuration is in force, 1 otherwise.
pub(crate) fn reload(args: &AdminArgs) -> ExitCode {
    said(on_this_thread(distgate::api::client::reload(
        args.admin,
        args.timeout,
    )))
}

/// A change asked of the admin port: its line printed, exit 0 when it was made.
fn said(answer: Result<Result<(bool, String), distgate::api::ApiError>, ExitCode>) -> ExitCode {
    match answer {
        Err(code) => code,
        Ok(Ok((true, line))) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Ok(Ok((false, line))) => {
            eprintln!("distgate: {line}");
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            eprintln!("distgate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The tables of the admin port.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Table {
    Links,
    Nodes,
    Bans,
    Refusals,
}

/// `distgate links`, `nodes`, `bans` or `refusals`: exit 0 with the table, 1 when the
/// admin port cannot be read.
pub(crate) fn status(args: &AdminArgs, table: Table) -> ExitCode {
    use distgate::api::client;
    let (admin, timeout) = (args.admin, args.timeout);
    let answer = on_this_thread(async {
        match table {
            Table::Links => client::links(admin, timeout).await,
            Table::Nodes => client::nodes(admin, timeout).await,
            Table::Bans => client::bans(admin, timeout).await,
            Table::Refusals => client::refusals(admin, timeout).await,
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
