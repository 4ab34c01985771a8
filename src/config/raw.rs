//! The configuration as written: the raw TOML shapes, deserialized with serde, and
//! their validation into a [`Config`] (cross-key rules: ports that collide, pins
//! outside the pool, durations of zero). Each error names its key and, where the file
//! says, its span.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer};
use toml::Spanned;

use super::{
    AdminConfig, AllowPeers, BanConfig, Config, DistConfig, DnsConfig, EpmdConfig,
    FederationConfig, ForwardConfig, LogConfig, MAX_POOL_PORTS, MIN_PIPE_SIZE, MetricsConfig,
    Peers, ShutdownConfig, Tls, check_node_name,
};
use crate::ports::ClientNames;
use crate::route::Route;

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawConfig {
    epmd: EpmdConfig,
    dist: RawDist,
    forward: ForwardConfig,
    admin: AdminConfig,
    shutdown: ShutdownConfig,
    route: Vec<Route>,
    dns: DnsConfig,
    metrics: MetricsConfig,
    log: LogConfig,
    federation: FederationConfig,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawDist {
    listen: Vec<IpAddr>,
    ports: Spanned<PortPool>,
    pins: BTreeMap<String, Spanned<u16>>,
    client_names: ClientNames,
    #[serde(with = "humantime_serde")]
    connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    first_frame_timeout: Duration,
    #[serde(with = "humantime_serde")]
    handshake_timeout: Duration,
    #[serde(with = "humantime_serde")]
    linger: Duration,
    #[serde(with = "humantime_serde")]
    silent_after: Duration,
    max_connections: NonZeroUsize,
    max_per_source: NonZeroUsize,
    ipv6_prefix: u8,
    allow_peers: AllowPeers,
    tls: Tls,
    trusted: Peers,
    ban: BanConfig,
}

impl Default for RawDist {
    fn default() -> Self {
        let d = DistConfig::default();
        RawDist {
            listen: d.listen,
            ports: Spanned::new(0..0, PortPool(d.ports)),
            pins: BTreeMap::new(),
            client_names: d.client_names,
            connect_timeout: d.connect_timeout,
            first_frame_timeout: d.first_frame_timeout,
            handshake_timeout: d.handshake_timeout,
            linger: d.linger,
            silent_after: d.silent_after,
            max_connections: d.max_connections,
            max_per_source: d.max_per_source,
            ipv6_prefix: d.ipv6_prefix,
            allow_peers: d.allow_peers,
            tls: d.tls,
            trusted: d.trusted,
            ban: d.ban,
        }
    }
}

type Invalid = (String, Option<Range<usize>>, String);

/// Whether listeners on `a` and `b` at one port would clash: the same address, or
/// one of them every address of the other's family (IPv6 listeners are IPv6-only).
fn overlap(a: IpAddr, b: IpAddr) -> bool {
    a == b || (a.is_ipv4() == b.is_ipv4() && (a.is_unspecified() || b.is_unspecified()))
}

/// One listening socket the configuration asks for: the key it comes from, for errors.
struct Socket {
    key: String,
    /// How the address is named in a message.
    shown: String,
    ip: IpAddr,
    port: u16,
}

/// Every pair of listeners that would be bound on one port of overlapping addresses:
/// EPMD, each public port on each `dist.listen` address, admin. Port 0 (the system
/// picks) never clashes. The error names the later key and what it clashes with.
fn check_clashes(
    epmd: &[SocketAddr],
    dist_listen: &[IpAddr],
    pool: &[u16],
    admin: &[SocketAddr],
) -> Result<(), (String, String)> {
    let mut by_port: BTreeMap<u16, Vec<Socket>> = BTreeMap::new();
    let mut add = |key: String, shown: String, ip: IpAddr, port: u16| {
        if port != 0 {
            let socket = Socket {
                key,
                shown,
                ip,
                port,
            };
            by_port.entry(port).or_default().push(socket);
        }
    };
    for (i, a) in epmd.iter().enumerate() {
        add(
            format!("epmd.listen[{i}]"),
            format!("`epmd.listen` {a}"),
            a.ip(),
            a.port(),
        );
    }
    for &ip in dist_listen {
        for &port in pool {
            let shown = format!("public port {port} on `dist.listen` {ip}");
            add("dist.ports".to_owned(), shown, ip, port);
        }
    }
    for (i, a) in admin.iter().enumerate() {
        add(
            format!("admin.listen[{i}]"),
            format!("`admin.listen` {a}"),
            a.ip(),
            a.port(),
        );
    }
    for sockets in by_port.values() {
        for (later, b) in sockets.iter().enumerate() {
            if let Some(a) = sockets[..later].iter().find(|a| overlap(a.ip, b.ip)) {
                // Two public sockets clash only through their addresses.
                let key = if a.key == "dist.ports" && b.key == "dist.ports" {
                    "dist.listen".to_owned()
                } else {
                    b.key.clone()
                };
                let message = format!(
                    "{} clashes with {}: both would listen on port {}",
                    b.shown, a.shown, b.port
                );
                return Err((key, message));
            }
        }
    }
    Ok(())
}

impl RawConfig {
    /// The rules of single keys and pairs of keys, before anything is moved out.
    fn check_keys(&self) -> Result<(), Invalid> {
        let no_span = |key: &str, message: String| (key.to_owned(), None, message);
        let (epmd, dist) = (&self.epmd, &self.dist);
        if epmd.listen.is_empty() {
            return Err(no_span("epmd.listen", "needs at least one address".into()));
        }
        if epmd.register_from == Peers::Any {
            let message = "\"any\" would let every host register names and stop distgate; \
                           list \"local\", addresses or CIDRs"
                .into();
            return Err(no_span("epmd.register_from", message));
        }
        if dist.listen.is_empty() {
            return Err(no_span("dist.listen", "needs at least one address".into()));
        }
        if !(1..=128).contains(&dist.ipv6_prefix) {
            let message = "must be a prefix length from 1 to 128 (64: one IPv6 subnet, as one \
                           host is given)"
                .into();
            return Err(no_span("dist.ipv6_prefix", message));
        }
        if self.dns.min_ttl > self.dns.max_ttl {
            return Err(no_span(
                "dns.min_ttl",
                "is longer than `dns.max_ttl`".into(),
            ));
        }
        if self.dns.attempts == 0 {
            return Err(no_span("dns.attempts", "must be at least 1".into()));
        }
        for (key, value) in [
            ("dns.timeout", self.dns.timeout),
            ("admin.header_timeout", self.admin.header_timeout),
            ("epmd.packet_timeout", epmd.packet_timeout),
            ("dist.connect_timeout", dist.connect_timeout),
            ("dist.first_frame_timeout", dist.first_frame_timeout),
            ("dist.handshake_timeout", dist.handshake_timeout),
            ("dist.linger", dist.linger),
            ("dist.silent_after", dist.silent_after),
            ("dist.ban.within", dist.ban.within),
            ("dist.ban.duration", dist.ban.duration),
            ("metrics.idle_timeout", self.metrics.idle_timeout),
        ] {
            if value.is_zero() {
                return Err(no_span(key, "must be more than 0".into()));
            }
        }
        if dist.first_frame_timeout > dist.handshake_timeout {
            let message = "is longer than `dist.handshake_timeout`, which bounds it".into();
            return Err(no_span("dist.first_frame_timeout", message));
        }
        if self.forward.pipe_size < MIN_PIPE_SIZE {
            let message = format!("must be at least {MIN_PIPE_SIZE} bytes");
            return Err(no_span("forward.pipe_size", message));
        }
        Ok(())
    }

    pub(super) fn validate(self) -> Result<Config, Invalid> {
        self.check_keys()?;
        let (epmd, dist) = (self.epmd, self.dist);
        let pool_span = dist.ports.span();
        let pool = dist.ports.into_inner().0;
        if pool.is_empty() {
            let message = "is empty: no node would get a public port, and peers would be told \
                           real ports that Services and NetworkPolicies do not forward; list at \
                           least one, e.g. [43691]"
                .into();
            return Err(("dist.ports".into(), Some(pool_span), message));
        }
        check_clashes(&epmd.listen, &dist.listen, &pool, &self.admin.listen).map_err(
            |(key, message)| {
                let span = (key == "dist.ports").then(|| pool_span.clone());
                (key, span, message)
            },
        )?;
        let federation = check_federation(self.federation, &self.route)?;
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
            if let Some(pattern) = dist.client_names.matching(&name) {
                let message = format!(
                    "`{name}` is a release client by `dist.client_names` (\"{pattern}\"), which \
                     never takes a public port: remove the pin or the pattern"
                );
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
                client_names: dist.client_names,
                connect_timeout: dist.connect_timeout,
                first_frame_timeout: dist.first_frame_timeout,
                handshake_timeout: dist.handshake_timeout,
                linger: dist.linger,
                silent_after: dist.silent_after,
                max_connections: dist.max_connections,
                max_per_source: dist.max_per_source,
                ipv6_prefix: dist.ipv6_prefix,
                allow_peers: dist.allow_peers,
                tls: dist.tls,
                trusted: dist.trusted,
                ban: dist.ban,
            },
            forward: self.forward,
            admin: self.admin,
            shutdown: self.shutdown,
            routes: self.route,
            dns: self.dns,
            metrics: self.metrics,
            log: self.log,
            federation,
        })
    }
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

/// `[federation]`: material wherever federation is used, timings above zero, peers
/// that can match.
fn check_federation(
    federation: FederationConfig,
    routes: &[Route],
) -> Result<FederationConfig, Invalid> {
    if federation.wanted(routes) {
        let why = match federation.listen.is_empty() {
            false => "`federation.listen` is set",
            true => "a route has `federate`",
        };
        for (key, path) in [
            ("federation.cert", &federation.cert),
            ("federation.key", &federation.key),
            ("federation.ca", &federation.ca),
        ] {
            if path.is_none() {
                let message = format!(
                    "is missing: {why}, and peer gateways are reached and served only over mutual TLS"
                );
                return Err((key.into(), None, message));
            }
        }
    }
    if !federation.listen.is_empty() && federation.peers.is_empty() {
        let message = "is empty: with `federation.listen` set, no peer gateway could connect; \
                       list the SPIFFE IDs or DNS names (globs) of the peer gateways"
            .into();
        return Err(("federation.peers".into(), None, message));
    }
    for (i, peer) in federation.peers.iter().enumerate() {
        if peer.is_empty() {
            return Err((format!("federation.peers[{i}]"), None, "is empty".into()));
        }
    }
    for (key, d) in [
        ("federation.handshake_timeout", federation.handshake_timeout),
        ("federation.watch_every", federation.watch_every),
    ] {
        if d.is_zero() {
            return Err((key.into(), None, "must be more than 0".into()));
        }
    }
    Ok(federation)
}
