//! The TOML configuration: parsed, then validated into typed values before anything
//! binds. Every error names the key and, when it came from the file, the line.
//!
//! The defaults are a sidecar: EPMD on 4369 and the public dist port 43691, on every
//! IPv4 and IPv6 address. `config.example.toml` documents every key.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use serde::de::{self, Deserializer};

use crate::route::Route;
pub use dist::{AllowPeers, BanConfig, DistConfig, Tls};
pub use key::{Key, changed};
pub use load::{ConfigError, DEFAULTS_HASH, hash, load, load_hashed, parse};

mod dist;
mod key;
mod load;
mod raw;

/// Pipe size of the splice path; the benchmark chose it (BENCHMARKS.md).
pub const DEFAULT_PIPE_SIZE: usize = 1024 * 1024;
/// Smallest pipe size accepted: one page.
pub const MIN_PIPE_SIZE: usize = 4096;

/// The public dist port distgate publishes nodes on.
pub const DEFAULT_DIST_PORT: u16 = 43691;
/// Most ports a public dist pool may hold.
pub const MAX_POOL_PORTS: usize = 1024;

/// A validated configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// `[epmd]`.
    pub epmd: EpmdConfig,
    /// `[dist]`.
    pub dist: DistConfig,
    /// `[forward]`.
    pub forward: ForwardConfig,
    /// `[admin]`.
    pub admin: AdminConfig,
    /// `[shutdown]`.
    pub shutdown: ShutdownConfig,
    /// `[[route]]`: names answered and forwarded for nodes elsewhere (gateway mode).
    pub routes: Vec<Route>,
    /// `[dns]`.
    pub dns: DnsConfig,
    /// `[metrics]`.
    pub metrics: MetricsConfig,
    /// `[log]`.
    pub log: LogConfig,
    /// `[federation]`: links to and from peer gateways over mutual TLS.
    pub federation: FederationConfig,
}

/// `[federation]`: where peer gateways connect, this gateway's certificate, and whom
/// it trusts. Routes with `federate` dial peer gateways with the same material.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FederationConfig {
    /// Where peer gateways connect; empty (the default) turns the listener off.
    pub listen: Vec<SocketAddr>,
    /// This gateway's certificate chain (PEM), leaf first.
    pub cert: Option<std::path::PathBuf>,
    /// Its private key (PEM).
    pub key: Option<std::path::PathBuf>,
    /// Trust anchors for peer gateways' certificates (a PEM bundle).
    pub ca: Option<std::path::PathBuf>,
    /// Globs over the URI and DNS SANs of the peer gateways allowed to connect.
    pub peers: Vec<String>,
    /// The TLS handshake and the request header, each way, must end within this.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Federation connections (lookups and links) served at once.
    pub max_connections: NonZeroUsize,
    /// How often the certificate, key and trust anchors are read again for a change.
    #[serde(with = "humantime_serde")]
    pub watch_every: Duration,
}

impl Default for FederationConfig {
    fn default() -> Self {
        FederationConfig {
            listen: Vec::new(),
            cert: None,
            key: None,
            ca: None,
            peers: Vec::new(),
            handshake_timeout: Duration::from_secs(5),
            max_connections: NonZeroUsize::new(1024).unwrap_or(NonZeroUsize::MIN),
            watch_every: Duration::from_secs(2),
        }
    }
}

impl FederationConfig {
    /// Whether any part of federation is configured: a listener, or material.
    pub fn wanted(&self, routes: &[Route]) -> bool {
        !self.listen.is_empty() || routes.iter().any(Route::federates)
    }
}

/// `[log]`: what is logged. The format is chosen on the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A level (`error`, `warn`, `info`, `debug`, `trace`) or tracing directives
    /// (`info,distgate::gateway=debug`); `--log-level` / `DISTGATE_LOG`, when given,
    /// win over it. Unset: `info`.
    #[serde(deserialize_with = "log_filter")]
    pub level: Option<String>,
}

fn log_filter<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let level = String::deserialize(deserializer)?;
    tracing_subscriber::EnvFilter::try_new(&level).map_err(|e| {
        de::Error::custom(format!(
            "`{}` is not a level (error, warn, info, debug, trace) or tracing directives: {e}",
            level.escape_debug()
        ))
    })?;
    Ok(Some(level))
}

/// `[dns]`: how route upstreams are resolved.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// Name servers (`"10.96.0.10:53"`); empty: the system's resolv.conf, with its
    /// search domains and ndots as Kubernetes writes them.
    pub nameservers: Vec<SocketAddr>,
    /// Answers are kept at least this long, whatever their TTL; a name found missing,
    /// or a lookup that failed, is answered from memory this long before DNS is asked
    /// again.
    #[serde(with = "humantime_serde")]
    pub min_ttl: Duration,
    /// And at most this long.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// While DNS fails, the last good answer is used this long past its expiry.
    #[serde(with = "humantime_serde")]
    pub stale_for: Duration,
    /// The whole answer to a routed lookup (DNS and the upstream's EPMD) comes within
    /// this, or the lookup is answered "no port"; DNS queries share it.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// DNS queries per name server within `timeout` (resolv.conf's `attempts` and
    /// `timeout` options are overridden).
    pub attempts: u32,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            nameservers: vec![],
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(300),
            stale_for: Duration::from_secs(300),
            timeout: Duration::from_secs(2),
            attempts: 2,
        }
    }
}

/// The admin HTTP port distgate serves metrics and probes on.
pub const DEFAULT_ADMIN_PORT: u16 = 9369;

/// `[admin]`: the HTTP server for `/metrics`, `/livez` and `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Addresses to serve on; empty turns the admin server off.
    pub listen: Vec<SocketAddr>,
    /// When `/readyz` says ready, beyond every listener serving.
    pub ready_when: ReadyWhen,
    /// A connection must send its whole request head within this long, or it is
    /// closed. Each connection serves one request.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Admin connections open at once. At the limit a new connection closes the oldest
    /// one still sending its request, so a client that sends its request at once (a
    /// probe, a scrape) is always served.
    pub max_connections: NonZeroUsize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: vec![
                SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), DEFAULT_ADMIN_PORT),
                SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), DEFAULT_ADMIN_PORT),
            ],
            ready_when: ReadyWhen::Always,
            header_timeout: Duration::from_secs(10),
            max_connections: NonZeroUsize::new(64).unwrap_or(NonZeroUsize::MIN),
        }
    }
}

/// A key that takes a keyword or a list of strings (`ready_when`, `names_from`).
#[derive(Deserialize)]
#[serde(untagged)]
enum WordOrList {
    Word(String),
    List(Vec<String>),
}

/// `[admin] ready_when`: `"always"`, `"any-node"`, or a list of node names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyWhen {
    /// Ready as soon as every listener serves.
    Always,
    /// Ready once any node has registered.
    AnyNode,
    /// Ready once each of these names (the part before `@`) has registered.
    Nodes(Vec<String>),
}

impl<'de> Deserialize<'de> for ReadyWhen {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match WordOrList::deserialize(deserializer)? {
            WordOrList::Word(word) if word == "always" => Ok(ReadyWhen::Always),
            WordOrList::Word(word) if word == "any-node" => Ok(ReadyWhen::AnyNode),
            WordOrList::Word(word) => Err(de::Error::custom(format!(
                "`{word}` is not \"always\", \"any-node\" or a list of node names"
            ))),
            WordOrList::List(names) if names.is_empty() => {
                Err(de::Error::custom("an empty list; use \"always\""))
            }
            WordOrList::List(names) => {
                for name in &names {
                    check_node_name(name).map_err(de::Error::custom)?;
                }
                Ok(ReadyWhen::Nodes(names))
            }
        }
    }
}

/// How stream bytes are moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Per direction: small messages by copy (lower latency, no pipe held), bulk by
    /// splice from the first read that fills a whole copy buffer until the source is
    /// drained again. The benchmark chose this (BENCHMARKS.md).
    Auto,
    /// splice(2) for everything; a direction that cannot get a pipe falls back to copy.
    Splice,
    /// A buffered copy through user space.
    Copy,
}

/// `[forward]`: how dist stream bytes are moved.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForwardConfig {
    /// splice(2) (`auto`, `splice`) or a buffered copy (`copy`).
    pub mode: Mode,
    /// Size of each direction's pipe in bytes, capped by /proc/sys/fs/pipe-max-size.
    pub pipe_size: usize,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            mode: Mode::Auto,
            pipe_size: DEFAULT_PIPE_SIZE,
        }
    }
}

/// `[shutdown]`: what happens on SIGTERM or SIGINT.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long open dist connections may keep flowing after distgate stops accepting.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            // Below Kubernetes' default terminationGracePeriodSeconds of 30.
            grace: Duration::from_secs(25),
        }
    }
}

/// `[epmd]`: the EPMD server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EpmdConfig {
    /// Addresses to answer EPMD on.
    pub listen: Vec<SocketAddr>,
    /// Who counts as the pod's own: may register (ALIVE2_REQ), DUMP, KILL and STOP, is
    /// never refused at `max_connections`, and is what `"local"` means in
    /// `names_from`. `"local"` (the default) is epmd's rule: loopback and the socket's
    /// own address. `"any"` is refused.
    pub register_from: Peers,
    /// Who may list the registered nodes (NAMES_REQ).
    pub names_from: Peers,
    /// An unregistered connection that sends nothing for this long is closed; also
    /// the limit for writing a reply.
    #[serde(with = "humantime_serde")]
    pub packet_timeout: Duration,
    /// Whether KILL_REQ may stop distgate (otherwise it is answered `NO`).
    pub allow_kill: bool,
    /// `epmd -relaxed_command_check`: STOP_REQ is served and KILL_REQ (when allowed)
    /// works with nodes registered.
    pub relaxed_command_check: bool,
    /// EPMD connections from other hosts open at once; more are closed at accept.
    /// Connections from the pod itself (its nodes registering) are never refused.
    pub max_connections: NonZeroUsize,
}

impl Default for EpmdConfig {
    fn default() -> Self {
        EpmdConfig {
            listen: vec![
                SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), crate::epmd::PORT),
                SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), crate::epmd::PORT),
            ],
            register_from: Peers::LOCAL,
            names_from: Peers::LOCAL,
            packet_timeout: Duration::from_secs(60),
            allow_kill: false,
            relaxed_command_check: false,
            max_connections: NonZeroUsize::new(1024).unwrap_or(NonZeroUsize::MIN),
        }
    }
}

/// A set of peers (`[epmd] names_from`, `register_from`): `"local"`, `"any"`, or a list
/// of `"local"`, addresses and CIDRs (a gateway's pod network, say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peers {
    /// Everyone, as OTP's epmd does.
    Any,
    /// Local peers (loopback and the pod's own address, as for ALIVE2_REQ) when
    /// `local`, and peers in `nets`.
    Only {
        /// Whether local peers may.
        local: bool,
        /// Networks whose peers may.
        nets: Vec<IpNet>,
    },
}

impl Peers {
    /// Loopback and the pod's own address only: the default.
    pub const LOCAL: Peers = Peers::Only {
        local: true,
        nets: Vec::new(),
    };

    /// Whether `peer` (local or not, by the registration rule) is in the set.
    pub fn allows(&self, peer: IpAddr, local: bool) -> bool {
        match self {
            Peers::Any => true,
            Peers::Only { local: l, nets } => {
                (*l && local) || nets.iter().any(|n| n.contains(&peer.to_canonical()))
            }
        }
    }
}

impl<'de> Deserialize<'de> for Peers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let words = match WordOrList::deserialize(deserializer)? {
            WordOrList::Word(word) if word == "any" => return Ok(Peers::Any),
            WordOrList::Word(word) => vec![word],
            WordOrList::List(list) if list.is_empty() => {
                return Err(de::Error::custom("an empty list; use \"local\""));
            }
            WordOrList::List(list) => list,
        };
        let (mut local, mut nets) = (false, vec![]);
        for word in words {
            match word.as_str() {
                "local" => local = true,
                "any" => return Err(de::Error::custom("\"any\" stands alone, not in a list")),
                cidr => nets.push(
                    cidr.parse::<IpNet>()
                        .or_else(|_| cidr.parse::<IpAddr>().map(IpNet::from))
                        .map_err(|_| {
                            de::Error::custom(format!(
                                "`{cidr}` is not \"local\", \"any\", an address or a CIDR like \"10.42.0.0/16\""
                            ))
                        })?,
                ),
            }
        }
        Ok(Peers::Only { local, nets })
    }
}

/// `[metrics]`: how many series per-link metrics may make.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Distinct authenticated peer names given a `peer` label of their own; links of
    /// further peers are labelled `other`.
    pub max_peers: usize,
    /// Series of a node/peer pair with no open link are dropped from `/metrics` after
    /// this long without change.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            max_peers: 256,
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// The name part of a node name as epmd stores it: no `@`, 1..=255 characters.
pub(crate) fn check_node_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > 255 {
        return Err("a node name has 1 to 255 characters".into());
    }
    if name.contains('@') {
        return Err("pin the name part only, without `@host`".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
