//! Routes for gateway mode: which node names (the part before `@`) go to which
//! upstream. Pure: a glob on the name and a host template, nothing resolved here.
//!
//! ```text
//! nodes = "app-*"
//! upstream = "{name}.app-headless.prod.svc.cluster.local"
//! port = 43691            # or "epmd": ask the upstream's EPMD
//! ```
//!
//! The gateway ([`crate::gateway`]) resolves the host, leases a public port and
//! forwards; this module only decides where a name would go.

use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer};

pub use crate::glob::{Glob, GlobError};

/// A route that cannot be used; the message is what the configuration error says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// A `nodes` glob that cannot be used.
    #[error(transparent)]
    Glob(#[from] GlobError),
    /// A placeholder other than `{name}`.
    #[error("`{0}`: the only placeholder is {{name}}")]
    Placeholder(String),
    /// An `upstream` that cannot be a host name.
    #[error("`{0}` is not a host name")]
    NotAHost(String),
    /// A `discover` that cannot be a host name.
    #[error("`discover`: `{0}` is not a host name")]
    NotAService(String),
    /// `records` with `upstream`.
    #[error("`records` belongs to `discover`, not `upstream`")]
    RecordsWithoutDiscover,
    /// More than one of `upstream`, `discover` and `federate`.
    #[error("give one of `upstream`, `discover` and `federate`")]
    Both,
    /// Neither `upstream` nor `discover` nor `federate`.
    #[error(
        "missing `upstream` (a host template), `discover` (a service name) or `federate` (a peer gateway)"
    )]
    Neither,
    /// A `federate` that is no `host:port`.
    #[error("`federate`: `{0}` is not host:port (the peer gateway's `federation.listen`)")]
    NotAGateway(String),
    /// `port` or `epmd_port` with `federate` (the peer gateway finds the node).
    #[error(
        "`port` and `epmd_port` are the peer gateway's to know: a `federate` route takes neither"
    )]
    PortWithFederate,
    /// `identity` without `federate`.
    #[error("`identity` belongs to `federate`")]
    IdentityWithoutFederate,
    /// An `identity` that is neither a SPIFFE ID nor a DNS name.
    #[error("`identity`: `{0}` is neither a SPIFFE ID (spiffe://trust-domain/path) nor a DNS name")]
    NotAnIdentity(String),
    /// `lease_idle = "0s"`.
    #[error("`lease_idle` must be more than 0: a peer looks a name up, then connects")]
    ZeroLeaseIdle,
}

impl RouteError {
    /// A bounded label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            RouteError::Glob(e) => e.reason(),
            RouteError::Placeholder(_) => "placeholder",
            RouteError::NotAHost(_) => "not_a_host",
            RouteError::NotAService(_) => "not_a_service",
            RouteError::RecordsWithoutDiscover => "records_without_discover",
            RouteError::Both => "upstream_and_discover",
            RouteError::Neither => "no_upstream",
            RouteError::NotAGateway(_) => "not_a_gateway",
            RouteError::IdentityWithoutFederate => "identity_without_federate",
            RouteError::PortWithFederate => "port_with_federate",
            RouteError::NotAnIdentity(_) => "not_an_identity",
            RouteError::ZeroLeaseIdle => "zero_lease_idle",
        }
    }
}

/// A host template: `{name}` stands for the node's name part.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Template(String);

impl TryFrom<String> for Template {
    type Error = RouteError;
    fn try_from(s: String) -> Result<Template, RouteError> {
        Template::new(&s)
    }
}

impl Template {
    /// A host template; `{name}` is its only placeholder.
    pub fn new(template: &str) -> Result<Template, RouteError> {
        let rest = template.replace("{name}", "");
        if rest.contains('{') || rest.contains('}') {
            return Err(RouteError::Placeholder(template.to_owned()));
        }
        if template.trim().is_empty() || template.contains(char::is_whitespace) {
            return Err(RouteError::NotAHost(template.to_owned()));
        }
        Ok(Template(template.to_owned()))
    }

    /// The host for node `name`. Names that cannot be a DNS label give `None`.
    pub fn expand(&self, name: &str) -> Option<String> {
        if self.0.contains("{name}") && !is_dns_label(name) {
            return None;
        }
        Some(self.0.replace("{name}", name))
    }
}

/// Whether `s` can stand in a DNS name as one label (RFC 1123: letters, digits,
/// hyphens, not at either end, at most 63).
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Where an upstream's dist port comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamPort {
    /// A fixed port (43691 where a distgate sidecar sits).
    Fixed(u16),
    /// Ask the upstream's EPMD (PORT_PLEASE2) for the name's port.
    Epmd,
}

impl<'de> Deserialize<'de> for UpstreamPort {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Word(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => u16::try_from(n)
                .ok()
                .filter(|&p| p != 0)
                .map(UpstreamPort::Fixed)
                .ok_or_else(|| de::Error::custom(format!("port {n} is out of range 1-65535"))),
            Raw::Word(w) if w == "epmd" => Ok(UpstreamPort::Epmd),
            Raw::Word(w) => Err(de::Error::custom(format!(
                "`{w}` is not a port number or \"epmd\""
            ))),
        }
    }
}

/// How a route's names find their home port in the pool (`lease = "hash"` or
/// `"ordinal"`). Where two names want one port, the gateway's placement decides
/// ([`crate::gateway`]); this only says where each would like to be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseRule {
    /// The pool's `FNV-1a-64(name) mod pool size`-th port.
    #[default]
    Hash,
    /// StatefulSet-style names: `app-N` → the pool's N-th port (from 0); a name
    /// without such an ordinal, or with one past the pool's end, falls back to its
    /// hash home.
    Ordinal,
}

/// Where a name would like its public port: an index into the pool, and whether it
/// is the name's own ordinal (placed before the hash homes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Home {
    /// Ordinal homes come first (`false` sorts before `true`).
    pub hashed: bool,
    /// The index into the pool.
    pub index: usize,
}

impl LeaseRule {
    /// The home of `name` in a pool of `pool` ports (`pool` > 0).
    pub fn home(self, name: &str, pool: usize) -> Home {
        let pool = pool.max(1);
        let own = (self == LeaseRule::Ordinal)
            .then(|| ordinal(name))
            .flatten()
            .filter(|&n| n < pool);
        if let Some(n) = own {
            return Home {
                hashed: false,
                index: n,
            };
        }
        let index = (fnv1a(name.as_bytes()) % pool as u64) as usize;
        Home {
            hashed: true,
            index,
        }
    }
}

/// The ordinal a StatefulSet gives its pods: the digits after the last `-`, without a
/// leading zero (`app-0`, `app-12`), if they make a number that fits.
pub fn ordinal(name: &str) -> Option<usize> {
    let (set, digits) = name.rsplit_once('-')?;
    let canonical = !set.is_empty()
        && !set.ends_with('-')
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    canonical.then(|| digits.parse().ok()).flatten()
}

/// FNV-1a, 64 bits: the same on every machine and every release, so that replicas (and
/// an operator with a calculator) agree on a name's home port.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// One `[[route]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawRoute")]
pub struct Route {
    /// Which names (the part before `@`) this route takes.
    pub nodes: Glob,
    /// Where a name's node lives.
    pub upstream: Upstream,
    /// The upstream's dist port: `"epmd"` (the port the upstream's EPMD gives: a
    /// distgate sidecar's public port, or a bare node's real one) or a number.
    pub port: UpstreamPort,
    /// Where the upstream answers EPMD (SRV discovery takes it from each record).
    pub epmd_port: u16,
    /// How names find their home port in the pool.
    pub lease: LeaseRule,
    /// A lease with no open link and no lookup this long may be given back when the
    /// pool runs short.
    pub lease_idle: Duration,
}

impl Route {
    /// A route taking `nodes` to `upstream`, with every other key at its default.
    pub fn new(nodes: Glob, upstream: Upstream) -> Route {
        Route {
            nodes,
            upstream,
            port: default_dist_port(),
            epmd_port: crate::epmd::PORT,
            lease: LeaseRule::default(),
            lease_idle: DEFAULT_LEASE_IDLE,
        }
    }

    /// How the route shows in logs and metrics: its `nodes` pattern.
    pub fn label(&self) -> String {
        self.nodes.to_string()
    }

    /// Whether the route sends its names to a peer gateway.
    pub fn federates(&self) -> bool {
        matches!(self.upstream, Upstream::Federate { .. })
    }
}

/// How long a lease must go unused before the pool may take it back.
pub const DEFAULT_LEASE_IDLE: Duration = Duration::from_secs(60);

/// How a route finds a name's node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// `upstream = "{name}.app-headless"`: one host per name, from the template.
    Host(Template),
    /// `discover = "app-headless"`: the names registered at each address of a
    /// (headless) Service, by asking each address's EPMD for its NAMES.
    Discover {
        /// The Service's DNS name.
        service: String,
        /// Which records list its members.
        records: Records,
    },
    /// `federate = "gw-b.example:43690"`: a peer gateway, over mutual TLS, which
    /// answers for the name from its own routes and nodes.
    Federate(Federate),
}

/// A peer gateway a route federates with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Federate {
    /// Its federation listener's host (resolved at each connect).
    pub host: String,
    /// Its federation port.
    pub port: u16,
    /// What its certificate must carry: a SPIFFE ID (its one URI SAN) or a DNS name.
    pub identity: String,
}

impl Federate {
    /// `federate = "host:port"` with `identity` (default: the host).
    pub fn new(federate: &str, identity: Option<String>) -> Result<Federate, RouteError> {
        let bad = || RouteError::NotAGateway(federate.to_owned());
        let (host, port) = federate.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().ok().filter(|&p| p != 0).ok_or_else(bad)?;
        if host.is_empty() || host.contains(char::is_whitespace) || host.contains('/') {
            return Err(bad());
        }
        let defaulted = identity.is_none();
        let identity = identity.unwrap_or_else(|| host.to_owned());
        if defaulted && host.parse::<std::net::IpAddr>().is_ok() {
            // A certificate's DNS SANs never hold an address: say whom to expect.
            return Err(RouteError::NotAnIdentity(format!(
                "{identity} (an address: give `identity`, the peer's SPIFFE ID or DNS name)"
            )));
        }
        if !is_identity(&identity) {
            return Err(RouteError::NotAnIdentity(identity));
        }
        Ok(Federate {
            host: host.to_owned(),
            port,
            identity,
        })
    }

    /// The host of its identity: the SPIFFE trust domain, or the DNS name (what TLS
    /// sends as SNI).
    pub fn identity_host(&self) -> &str {
        identity_host(&self.identity)
    }
}

/// The host part of an identity: a SPIFFE ID's trust domain, else the name itself.
pub fn identity_host(identity: &str) -> &str {
    match identity.strip_prefix("spiffe://") {
        Some(rest) => rest.split('/').next().unwrap_or(rest),
        None => identity,
    }
}

/// Whether `s` is a SPIFFE ID (`spiffe://` + a trust domain + an optional path) or a
/// DNS name or address.
fn is_identity(s: &str) -> bool {
    let host = identity_host(s);
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && (host.bytes()).all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b));
    match s.strip_prefix("spiffe://") {
        Some(rest) => host_ok && (rest.len() == host.len() || rest[host.len()..].starts_with('/')),
        None => host_ok,
    }
}

/// Which DNS records list a discovery route's members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Records {
    /// A and AAAA records of the service name; each address's EPMD on `epmd_port`.
    A,
    /// SRV records of the service name (`_tcp-epmd._tcp.app-headless…`): each target
    /// host's addresses, with the record's port as its EPMD port.
    Srv,
}

/// A `[[route]]` as written: exactly one of `upstream` and `discover`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    nodes: Glob,
    upstream: Option<Template>,
    discover: Option<String>,
    records: Option<Records>,
    federate: Option<String>,
    identity: Option<String>,
    port: Option<UpstreamPort>,
    epmd_port: Option<u16>,
    #[serde(default)]
    lease: LeaseRule,
    #[serde(default = "default_lease_idle", with = "humantime_serde")]
    lease_idle: Duration,
}

impl TryFrom<RawRoute> for Route {
    type Error = RouteError;
    fn try_from(raw: RawRoute) -> Result<Route, RouteError> {
        if raw.lease_idle.is_zero() {
            return Err(RouteError::ZeroLeaseIdle);
        }
        if raw.identity.is_some() && raw.federate.is_none() {
            return Err(RouteError::IdentityWithoutFederate);
        }
        let upstream = match (raw.upstream, raw.discover, raw.federate) {
            (None, None, Some(federate)) => {
                if raw.records.is_some() {
                    return Err(RouteError::RecordsWithoutDiscover);
                }
                if raw.port.is_some() || raw.epmd_port.is_some() {
                    return Err(RouteError::PortWithFederate);
                }
                Upstream::Federate(Federate::new(&federate, raw.identity)?)
            }
            (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => return Err(RouteError::Both),
            (Some(template), None, None) => {
                if raw.records.is_some() {
                    return Err(RouteError::RecordsWithoutDiscover);
                }
                Upstream::Host(template)
            }
            (None, Some(service), None) => {
                if service.is_empty() || service.contains(char::is_whitespace) {
                    return Err(RouteError::NotAService(service));
                }
                Upstream::Discover {
                    service,
                    records: raw.records.unwrap_or(Records::A),
                }
            }
            (Some(_), Some(_), None) => return Err(RouteError::Both),
            (None, None, None) => return Err(RouteError::Neither),
        };
        Ok(Route {
            nodes: raw.nodes,
            upstream,
            port: raw.port.unwrap_or_else(default_dist_port),
            epmd_port: raw.epmd_port.unwrap_or_else(default_epmd_port),
            lease: raw.lease,
            lease_idle: raw.lease_idle,
        })
    }
}

fn default_lease_idle() -> Duration {
    DEFAULT_LEASE_IDLE
}

fn default_dist_port() -> UpstreamPort {
    UpstreamPort::Epmd
}

fn default_epmd_port() -> u16 {
    crate::epmd::PORT
}

/// The route that takes a name, and where it sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    /// The index of the route that takes the name.
    pub route: usize,
    /// The name's upstream host (template routes); `None` for discovery routes, whose
    /// table knows the address.
    pub host: Option<String>,
    /// Where the upstream's dist port comes from.
    pub port: UpstreamPort,
    /// Where the upstream answers EPMD.
    pub epmd_port: u16,
    /// The peer gateway, for a federating route.
    pub federate: Option<Federate>,
}

/// The first route whose glob matches `name`; `None` when no route takes it (the name
/// is then served as a local one). A template route cannot take a name that is no DNS
/// label.
pub fn first_match(routes: &[Route], name: &str) -> Option<Match> {
    let (index, route) = routes
        .iter()
        .enumerate()
        .find(|(_, r)| r.nodes.matches(name))?;
    let (host, federate) = match &route.upstream {
        Upstream::Host(template) => (Some(template.expand(name)?), None),
        Upstream::Discover { .. } => (None, None),
        // A peer gateway checks the name itself (its own routes and nodes).
        Upstream::Federate(f) => (Some(f.host.clone()), Some(f.clone())),
    };
    Some(Match {
        route: index,
        host,
        port: route.port,
        epmd_port: route.epmd_port,
        federate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(p: &str) -> Glob {
        Glob::new(p).unwrap()
    }

    #[test]
    fn templates_expand_the_name() {
        let t = Template::new("{name}.app-headless.prod.svc.cluster.local").unwrap();
        assert_eq!(
            t.expand("app-0").as_deref(),
            Some("app-0.app-headless.prod.svc.cluster.local")
        );
        // A name that is no DNS label cannot be put in a host.
        assert_eq!(t.expand("App_0"), None);
        assert_eq!(t.expand("-x"), None);
        // A template without {name} sends every matching name to one host.
        assert_eq!(
            Template::new("gateway.other")
                .unwrap()
                .expand("App_0")
                .as_deref(),
            Some("gateway.other")
        );
    }

    #[test]
    fn templates_refuse_other_placeholders() {
        assert!(Template::new("{host}.svc").is_err());
        assert!(Template::new("{name").is_err());
        assert!(Template::new("a b").is_err());
        assert!(Template::new("").is_err());
    }

    fn host_route(nodes: &str, template: &str, port: UpstreamPort) -> Route {
        let upstream = Upstream::Host(Template::new(template).unwrap());
        Route {
            port,
            ..Route::new(glob(nodes), upstream)
        }
    }

    #[test]
    fn the_first_matching_route_wins() {
        let routes = [
            host_route("app-db*", "{name}.db.svc", UpstreamPort::Epmd),
            host_route("app-*", "{name}.app.svc", UpstreamPort::Fixed(43691)),
            Route::new(
                glob("*"),
                Upstream::Discover {
                    service: "all.svc".into(),
                    records: Records::Srv,
                },
            ),
        ];
        assert_eq!(
            first_match(&routes, "app-db1"),
            Some(Match {
                route: 0,
                host: Some("app-db1.db.svc".into()),
                port: UpstreamPort::Epmd,
                epmd_port: 4369,
                federate: None,
            })
        );
        assert_eq!(
            first_match(&routes, "app-3").unwrap().port,
            UpstreamPort::Fixed(43691)
        );
        // Discovery routes take any name; their table knows where it lives.
        let web = first_match(&routes, "Web_1").unwrap();
        assert_eq!((web.route, web.host), (2, None));
        // A template route cannot put a non-label name in a host; nor can it pass it on.
        assert_eq!(first_match(&routes[..2], "app-X_1"), None);
        assert_eq!(first_match(&routes[..2], "web-1"), None);
    }

    #[test]
    fn federate_routes_name_a_gateway_and_its_identity() {
        let f = Federate::new("gw-b.example:43690", None).unwrap();
        assert_eq!((f.host.as_str(), f.port), ("gw-b.example", 43690));
        assert_eq!(
            (f.identity.as_str(), f.identity_host()),
            ("gw-b.example", "gw-b.example")
        );
        let spiffe = Some("spiffe://b.example/ns/distgate/sa/gateway".to_owned());
        let f = Federate::new("[::1]:43690", spiffe).unwrap();
        assert!(
            Federate::new("10.0.0.1:43690", None).is_err(),
            "an address is no identity"
        );
        assert_eq!((f.host.as_str(), f.identity_host()), ("::1", "b.example"));
        for bad in ["gw-b", "gw-b:0", "gw-b:x", ":43690", "a b:1"] {
            assert_eq!(
                Federate::new(bad, None),
                Err(RouteError::NotAGateway(bad.into())),
                "{bad}"
            );
        }
        for bad in ["spiffe://", "spiffe://b x/y", "spiffe://b.example?x", ""] {
            let bad = Some(bad.to_owned());
            assert!(matches!(
                Federate::new("gw:1", bad),
                Err(RouteError::NotAnIdentity(_))
            ));
        }
        let route = Route::new(
            glob("b-*"),
            Upstream::Federate(Federate::new("gw:1", None).unwrap()),
        );
        let m = first_match(std::slice::from_ref(&route), "b-X_1").unwrap();
        assert_eq!(m.host.as_deref(), Some("gw"));
        assert_eq!(m.federate.unwrap().port, 1);
    }

    #[test]
    fn ordinals_are_what_a_statefulset_gives() {
        assert_eq!(ordinal("app-0"), Some(0));
        assert_eq!(ordinal("my-app-12"), Some(12));
        for name in [
            "app", "app-", "app-01", "app-1a", "app--1", "app-+1", "0", "-1",
        ] {
            assert_eq!(ordinal(name), None, "{name}");
        }
        assert_eq!(
            ordinal("app-99999999999999999999999"),
            None,
            "too big to fit"
        );
    }

    #[test]
    fn homes_follow_the_rule() {
        // FNV-1a 64 of the empty input and of "a" (the published test vectors).
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let ordinal = LeaseRule::Ordinal;
        assert_eq!(
            ordinal.home("app-3", 9),
            Home {
                hashed: false,
                index: 3
            }
        );
        // Past the pool's end, or no ordinal at all: the hash home.
        for name in ["app-9", "web"] {
            let home = ordinal.home(name, 9);
            assert_eq!(home, LeaseRule::Hash.home(name, 9), "{name}");
            assert!(home.hashed && home.index < 9);
        }
        assert_eq!(
            LeaseRule::Hash.home("a", 10).index,
            (0xaf63_dc4c_8601_ec8c_u64 % 10) as usize
        );
    }
}
