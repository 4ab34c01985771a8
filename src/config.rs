//! The TOML configuration: parsed, then validated into typed values before anything
//! binds. Every error names the key and, when it came from the file, the line.
//!
//! The defaults are a sidecar: EPMD on 4369 and the public dist port 43691, on every
//! IPv4 and IPv6 address. `config.example.toml` documents every key.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use serde::de::{self, Deserializer};
use toml::Spanned;

use crate::forward::Mode;
use crate::registry::PortPlan;
use crate::route::Route;

/// Pipe size of the splice path; the benchmark chose it (BENCHMARKS.md).
pub const DEFAULT_PIPE_SIZE: usize = 1024 * 1024;
/// Smallest pipe size accepted: one page.
pub const MIN_PIPE_SIZE: usize = 4096;

/// The EPMD port every BEAM node in a cluster dials.
pub const DEFAULT_EPMD_PORT: u16 = 4369;
/// The public dist port distgate publishes nodes on.
pub const DEFAULT_DIST_PORT: u16 = 43691;
/// Most ports a public dist pool may hold.
pub const MAX_POOL_PORTS: usize = 1024;

/// A validated configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub epmd: EpmdConfig,
    pub dist: DistConfig,
    pub forward: ForwardConfig,
    pub admin: AdminConfig,
    pub shutdown: ShutdownConfig,
    /// `[[route]]`: names answered and forwarded for nodes elsewhere (gateway mode).
    pub routes: Vec<Route>,
    pub dns: DnsConfig,
}

/// `[dns]`: how route upstreams are resolved.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// Name servers (`"10.96.0.10:53"`); empty: the system's resolv.conf, with its
    /// search domains and ndots as Kubernetes writes them.
    pub nameservers: Vec<SocketAddr>,
    /// Answers are kept at least this long, whatever their TTL.
    #[serde(with = "humantime_serde")]
    pub min_ttl: Duration,
    /// And at most this long.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// While DNS fails, the last good answer is used this long past its expiry.
    #[serde(with = "humantime_serde")]
    pub stale_for: Duration,
    /// Limit of each DNS query, and of asking an upstream's EPMD.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            nameservers: vec![],
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(300),
            stale_for: Duration::from_secs(300),
            timeout: Duration::from_secs(2),
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
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: vec![
                SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), DEFAULT_ADMIN_PORT),
                SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), DEFAULT_ADMIN_PORT),
            ],
            ready_when: ReadyWhen::Always,
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
    /// Who may list the registered nodes (NAMES_REQ).
    pub names_from: NamesFrom,
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
                SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), DEFAULT_EPMD_PORT),
                SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), DEFAULT_EPMD_PORT),
            ],
            names_from: NamesFrom::LOCAL,
            packet_timeout: Duration::from_secs(60),
            allow_kill: false,
            relaxed_command_check: false,
            max_connections: NonZeroUsize::new(1024).unwrap_or(NonZeroUsize::MIN),
        }
    }
}

/// Who is answered NAMES_REQ: `"local"`, `"any"`, or a list of `"local"` and CIDRs
/// (a gateway's pod network, say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamesFrom {
    /// Everyone, as OTP's epmd does.
    Any,
    /// Local peers (loopback and the pod's own address, as for ALIVE2_REQ) when
    /// `local`, and peers in `nets`.
    Only { local: bool, nets: Vec<IpNet> },
}

impl NamesFrom {
    /// Loopback and the pod's own address only: the default.
    pub const LOCAL: NamesFrom = NamesFrom::Only {
        local: true,
        nets: Vec::new(),
    };

    /// Whether `peer` (local or not, by the registration rule) may list names.
    pub fn allows(&self, peer: IpAddr, local: bool) -> bool {
        match self {
            NamesFrom::Any => true,
            NamesFrom::Only { local: l, nets } => {
                (*l && local) || nets.iter().any(|n| n.contains(&peer.to_canonical()))
            }
        }
    }
}

impl<'de> Deserialize<'de> for NamesFrom {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let words = match WordOrList::deserialize(deserializer)? {
            WordOrList::Word(word) if word == "any" => return Ok(NamesFrom::Any),
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
        Ok(NamesFrom::Only { local, nets })
    }
}

/// `[dist]`: the public dist ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistConfig {
    /// Addresses every public port is bound on.
    pub listen: Vec<IpAddr>,
    /// The pool of public ports, in the order they are handed out.
    pub ports: Vec<u16>,
    /// Node names with a fixed public port.
    pub pins: BTreeMap<String, u16>,
    /// How long to wait for a node's real port to accept a forwarded connection.
    pub connect_timeout: Duration,
    /// How long to wait for a dist connection's first frame (which names the peer)
    /// before labelling the peer `unknown` and forwarding anyway.
    pub first_frame_timeout: Duration,
    /// Dist connections forwarded at once (each holds two descriptors); more are
    /// closed at accept.
    pub max_connections: NonZeroUsize,
}

impl Default for DistConfig {
    fn default() -> Self {
        DistConfig {
            listen: vec![Ipv4Addr::UNSPECIFIED.into(), Ipv6Addr::UNSPECIFIED.into()],
            ports: vec![DEFAULT_DIST_PORT],
            pins: BTreeMap::new(),
            connect_timeout: Duration::from_secs(5),
            // OTP's net_setuptime, the longest a node itself waits for a handshake.
            first_frame_timeout: Duration::from_secs(7),
            max_connections: NonZeroUsize::new(8192).unwrap_or(NonZeroUsize::MIN),
        }
    }
}

impl DistConfig {
    /// The pool and pins as the registry uses them.
    pub fn port_plan(&self) -> PortPlan {
        PortPlan {
            pool: self.ports.clone(),
            pins: self.pins.clone().into_iter().collect::<HashMap<_, _>>(),
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", describe(.file.as_deref(), .key, *.line, .message))]
    Invalid {
        /// The file, when the configuration came from one.
        file: Option<String>,
        /// The dotted key, e.g. `dist.ports[1]`; empty for a syntax error.
        key: String,
        /// 1-based line in the file.
        line: Option<usize>,
        message: String,
    },
}

fn describe(file: Option<&str>, key: &str, line: Option<usize>, message: &str) -> String {
    let mut out = file.unwrap_or("config").to_owned();
    if let Some(line) = line {
        out += &format!(":{line}");
    }
    if !key.is_empty() {
        out += &format!(": `{key}`");
    }
    format!("{out}: {message}")
}

impl ConfigError {
    /// The key the error is about (empty for syntax errors and unreadable files).
    pub fn key(&self) -> &str {
        match self {
            ConfigError::Invalid { key, .. } => key,
            ConfigError::Read { .. } => "",
        }
    }

    /// The 1-based line the error is about, when known.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Invalid { line, .. } => *line,
            ConfigError::Read { .. } => None,
        }
    }
}

/// Reads and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text).map_err(|e| match e {
        ConfigError::Invalid {
            key, line, message, ..
        } => ConfigError::Invalid {
            file: Some(path.display().to_string()),
            key,
            line,
            message,
        },
        other => other,
    })
}

/// Parses and validates configuration text.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    let invalid = |key: String, span: Option<Range<usize>>, message: String| ConfigError::Invalid {
        file: None,
        key,
        line: span.map(|s| line_of(text, s.start)),
        message,
    };
    let deserializer = toml::Deserializer::parse(text)
        .map_err(|e| invalid(String::new(), e.span(), e.message().to_owned()))?;
    let raw: RawConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        // `toml::Spanned` shows up in the path as a private field; users never see it.
        let key = e
            .path()
            .to_string()
            .replace(".$__serde_spanned_private_value", "");
        let inner = e.into_inner();
        invalid(key, inner.span(), inner.message().to_owned())
    })?;
    raw.validate()
        .map_err(|(key, span, message)| invalid(key, span, message))
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |before| before.matches('\n').count() + 1)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawConfig {
    epmd: EpmdConfig,
    dist: RawDist,
    forward: ForwardConfig,
    admin: AdminConfig,
    shutdown: ShutdownConfig,
    route: Vec<Route>,
    dns: DnsConfig,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawDist {
    listen: Vec<IpAddr>,
    ports: Spanned<PortPool>,
    pins: BTreeMap<String, Spanned<u16>>,
    #[serde(with = "humantime_serde")]
    connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    first_frame_timeout: Duration,
    max_connections: NonZeroUsize,
}

impl Default for RawDist {
    fn default() -> Self {
        let d = DistConfig::default();
        RawDist {
            listen: d.listen,
            ports: Spanned::new(0..0, PortPool(d.ports)),
            pins: BTreeMap::new(),
            connect_timeout: d.connect_timeout,
            first_frame_timeout: d.first_frame_timeout,
            max_connections: d.max_connections,
        }
    }
}

type Invalid = (String, Option<Range<usize>>, String);

impl RawConfig {
    fn validate(self) -> Result<Config, Invalid> {
        let no_span = |key: &str, message: String| (key.to_owned(), None, message);
        let epmd = self.epmd;
        if epmd.listen.is_empty() {
            return Err(no_span("epmd.listen", "needs at least one address".into()));
        }
        let dist = self.dist;
        if dist.listen.is_empty() {
            return Err(no_span("dist.listen", "needs at least one address".into()));
        }
        if self.dns.min_ttl > self.dns.max_ttl {
            return Err(no_span(
                "dns.min_ttl",
                "is longer than `dns.max_ttl`".into(),
            ));
        }
        for (key, value) in [
            ("dns.timeout", self.dns.timeout),
            ("epmd.packet_timeout", epmd.packet_timeout),
            ("dist.connect_timeout", dist.connect_timeout),
            ("dist.first_frame_timeout", dist.first_frame_timeout),
        ] {
            if value.is_zero() {
                return Err(no_span(key, "must be more than 0".into()));
            }
        }
        if self.forward.pipe_size < MIN_PIPE_SIZE {
            let message = format!("must be at least {MIN_PIPE_SIZE} bytes");
            return Err(no_span("forward.pipe_size", message));
        }
        let pool_span = dist.ports.span();
        let pool = dist.ports.into_inner().0;
        for &port in &pool {
            if epmd.listen.iter().any(|a| a.port() == port) {
                let message = format!("port {port} is also an `epmd.listen` port");
                return Err(("dist.ports".into(), Some(pool_span), message));
            }
        }
        let mut pins = BTreeMap::new();
        let mut pinned_ports: BTreeMap<u16, String> = BTreeMap::new();
        for (name, port) in dist.pins {
            let key = format!("dist.pins.{name}");
            let span = Some(port.span());
            let port = port.into_inner();
            if let Err(reason) = check_node_name(&name) {
                return Err((key, span, reason));
            }
            if !pool.contains(&port) {
                let message = format!("port {port} is not in `dist.ports`");
                return Err((key, span, message));
            }
            if let Some(other) = pinned_ports.insert(port, name.clone()) {
                let message = format!("port {port} is already pinned to `{other}`");
                return Err((key, span, message));
            }
            pins.insert(name, port);
        }
        Ok(Config {
            epmd,
            dist: DistConfig {
                listen: dist.listen,
                ports: pool,
                pins,
                connect_timeout: dist.connect_timeout,
                first_frame_timeout: dist.first_frame_timeout,
                max_connections: dist.max_connections,
            },
            forward: self.forward,
            admin: self.admin,
            shutdown: self.shutdown,
            routes: self.route,
            dns: self.dns,
        })
    }
}

/// The name part of a node name as epmd stores it: no `@`, 1..=255 characters.
fn check_node_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > 255 {
        return Err("a node name has 1 to 255 characters".into());
    }
    if name.contains('@') {
        return Err("pin the name part only, without `@host`".into());
    }
    Ok(())
}

/// The public port pool: a list of ports and `"first-last"` ranges, unique.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PortPool(Vec<u16>);

impl<'de> Deserialize<'de> for PortPool {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let specs = Vec::<PortSpec>::deserialize(deserializer)?;
        let mut ports = Vec::new();
        for spec in specs {
            for port in spec.0 {
                if ports.contains(&port) {
                    return Err(de::Error::custom(format!("port {port} is listed twice")));
                }
                ports.push(port);
                if ports.len() > MAX_POOL_PORTS {
                    let message = format!("more than {MAX_POOL_PORTS} ports");
                    return Err(de::Error::custom(message));
                }
            }
        }
        Ok(PortPool(ports))
    }
}

/// One pool entry: a port number or a `"first-last"` range.
struct PortSpec(std::ops::RangeInclusive<u16>);

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(PortSpecVisitor)
    }
}

struct PortSpecVisitor;

fn port_number<E: de::Error>(value: i64) -> Result<u16, E> {
    u16::try_from(value)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| E::custom(format!("port {value} is out of range 1-65535")))
}

impl de::Visitor<'_> for PortSpecVisitor {
    type Value = PortSpec;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a port number or a \"first-last\" range")
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<PortSpec, E> {
        let port = port_number(value)?;
        Ok(PortSpec(port..=port))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<PortSpec, E> {
        self.visit_i64(i64::try_from(value).unwrap_or(i64::MAX))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<PortSpec, E> {
        let bad = || {
            E::custom(format!(
                "`{value}` is not a port range like \"43691-43699\""
            ))
        };
        let (first, last) = value.split_once('-').ok_or_else(bad)?;
        let parse = |s: &str| s.trim().parse::<i64>().map_err(|_| bad());
        let (first, last) = (port_number(parse(first)?)?, port_number(parse(last)?)?);
        if first > last {
            return Err(E::custom(format!("range `{value}` runs backwards")));
        }
        Ok(PortSpec(first..=last))
    }
}

#[cfg(test)]
mod tests;
