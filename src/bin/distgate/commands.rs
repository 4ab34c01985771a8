//! The short commands: `check-config`, `probe`, `links`, `nodes` and `reload`. Each
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

/// `distgate reload`: exit 0 when the new configuration is in force, 1 otherwise.
pub(crate) fn reload(args: &AdminArgs) -> ExitCode {
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
pub(crate) fn status(args: &AdminArgs, nodes: bool) -> ExitCode {
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
