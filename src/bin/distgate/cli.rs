//! The command line: `distgate [run]` and its subcommands, as clap reads them.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// EPMD server and dist-port gateway for Erlang/Elixir nodes.
///
/// With no arguments distgate runs as a sidecar on its built-in defaults: EPMD on
/// port 4369 and the public dist port 43691, on all IPv4 and IPv6 addresses.
#[derive(Debug, Parser)]
#[command(version, about)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) run: RunArgs,

    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

/// What running distgate reads; only `distgate` and `distgate run` take them.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RunArgs {
    /// Configuration file (TOML); without it the built-in defaults apply.
    #[arg(long, short, env = "DISTGATE_CONFIG")]
    pub(crate) config: Option<PathBuf>,

    /// Log filter: a level (error, warn, info, debug, trace) or tracing directives.
    /// When given, it wins over `[log] level` of the file (also at a reload); when
    /// neither is, `info`.
    #[arg(long, env = "DISTGATE_LOG")]
    pub(crate) log_level: Option<String>,

    /// Log format.
    #[arg(long, env = "DISTGATE_LOG_FORMAT", default_value = "text")]
    pub(crate) log_format: LogFormat,
}

impl RunArgs {
    /// `distgate run`'s own arguments, or else those given before `run`.
    pub(crate) fn or(self, before: RunArgs) -> RunArgs {
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
pub(crate) enum Command {
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
    /// The sources a running distgate bans now (its admin port's /bans) as a table:
    /// the address or IPv6 prefix, its failures and withdrawals, since and until when.
    Bans(AdminArgs),
    /// Lift bans of a running distgate (its admin port's DELETE /bans, served to
    /// loopback only): an address, a prefix (2001:db8::/64) or `all`. Exits 0 when a
    /// ban was lifted (or `all` found none), 1 otherwise.
    Unban {
        /// An address, a prefix, or `all`.
        which: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The last 256 refused or failed dist connections of a running distgate (its
    /// admin port's /refusals), newest first: source, node, claimed name and why.
    /// The first step when a node does not connect.
    Refusals(AdminArgs),
    /// Make a running distgate read its configuration file again (its admin port's
    /// POST /reload, served to loopback only; the same as SIGHUP). Exits 0 when the
    /// new configuration is in force, 1 when it is not (the running one stays).
    Reload(AdminArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct AdminArgs {
    /// The admin address of the distgate to ask.
    #[arg(long, env = "DISTGATE_ADMIN", default_value = "127.0.0.1:9369")]
    pub(crate) admin: SocketAddr,
    /// Limit for the answer, e.g. "5s".
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) timeout: std::time::Duration,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}
