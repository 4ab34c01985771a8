//! Gateway mode: names that match a `[[route]]` are answered for nodes that live
//! elsewhere. PORT_PLEASE2 for such a name asks the upstream's EPMD whether the name
//! exists there (an unknown or vanished name gets `77 01`, never a dead port), leases it
//! a public port from the pool and answers that port, all within `[dns] timeout`. A
//! connection to the leased port goes to the upstream, resolved at connect time, on its
//! dist port.
//!
//! The port a name gets is a function of the configuration and of the names leased
//! ([`leases`]), so replicas of a gateway that know the same names agree without
//! talking to each other; unused leases go back when the pool runs short.
//!
//! A route finds the upstream one of two ways: a host template (`{name}.app-headless`)
//! or discovery ([`discovery`]), which lists a headless Service's addresses and asks
//! each address's EPMD for its NAMES, on the DNS TTL. The gateway serves the EPMD
//! server and the forwarder through [`Routes`]; it knows neither.

mod discovery;
mod lease;
mod leases;
mod report;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::api::LeaseView;
use crate::directory::{BoxFuture, InUse, Routes};
use crate::dns::{Cache, DnsError, DnsSetupError, Hickory};
use crate::epmd::client;
use crate::epmd::message::Port2Resp;
use crate::log_budget::SharedBudget;
use crate::metrics as m;
use crate::ports::Ports;
use crate::route::{self, Route, Upstream, UpstreamPort};
use discovery::Discovery;
pub use leases::{Lease, Routed};
use leases::{Leases, Terms};
pub use report::pool_report;

/// Routes, the DNS cache they resolve through, the leases of routed names, and the
/// limit for answering a routed lookup.
#[derive(Debug)]
pub struct Gateway {
    routes: Vec<Route>,
    dns: Cache<Hickory>,
    timeout: Duration,
    leases: Leases,
    /// One per discovery route, with the index of its route.
    discoveries: Vec<Discovery>,
    /// Discovery routes whose first refresh has not ended.
    discovering: Arc<AtomicUsize>,
    /// Peers ask at will: the warnings of failed lookups are bounded.
    log: SharedBudget,
    /// Peer gateways are asked with it (routes with `federate`).
    federation: Option<Arc<crate::federation::Federation>>,
    /// `[dist] connect_timeout`, for dialling peer gateways.
    connect_timeout: Duration,
}

/// Why a routed name has no answer; the `result` of `distgate_gateway_lookups_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Miss {
    /// The upstream does not have the name (or its host does not exist).
    Unknown,
    /// DNS failed.
    Dns,
    /// The upstream's EPMD did not answer.
    Upstream,
    /// No public port left.
    NoPort,
    /// Not answered within `[dns] timeout`.
    Timeout,
}

impl Miss {
    fn result(self) -> &'static str {
        match self {
            Miss::Unknown => "unknown",
            Miss::Dns => "dns_error",
            Miss::Upstream => "upstream_error",
            Miss::NoPort => "no_port",
            Miss::Timeout => "timeout",
        }
    }
}

impl Gateway {
    /// The gateway `config` asks for, leasing from `ports`: `None` without routes.
    pub fn from_config(
        config: &crate::Config,
        ports: Arc<Ports>,
    ) -> Result<Option<Gateway>, DnsSetupError> {
        if config.routes.is_empty() {
            return Ok(None);
        }
        let dns = &config.dns;
        let resolver = if dns.nameservers.is_empty() {
            Hickory::system(dns.timeout, dns.attempts)?
        } else {
            Hickory::with_nameservers(&dns.nameservers, dns.timeout, dns.attempts)?
        };
        let ttls = crate::dns::Ttls {
            floor: dns.min_ttl,
            ceiling: dns.max_ttl,
            stale_for: dns.stale_for,
        };
        Ok(Some(Gateway::new(
            config.routes.clone(),
            Cache::new(resolver, ttls),
            dns.timeout,
            ports,
        )))
    }

    /// A gateway for `routes`, resolving through `dns`, answering a routed lookup
    /// within `timeout`, leasing from `ports`.
    pub fn new(
        routes: Vec<Route>,
        dns: Cache<Hickory>,
        timeout: Duration,
        ports: Arc<Ports>,
    ) -> Gateway {
        let discoveries: Vec<Discovery> = routes
            .iter()
            .enumerate()
            .filter_map(|(index, route)| match &route.upstream {
                Upstream::Discover { service, records } => Some(Discovery::new(
                    index,
                    service.clone(),
                    *records,
                    route.epmd_port,
                )),
                Upstream::Host(_) | Upstream::Federate(_) => None,
            })
            .collect();
        let labels = routes.iter().map(Route::label).collect();
        let discovering = Arc::new(AtomicUsize::new(discoveries.len()));
        Gateway {
            routes,
            dns,
            timeout,
            leases: Leases::new(ports, labels),
            discoveries,
            discovering,
            log: SharedBudget::new(
                "more routed lookups failed than logged (see distgate_gateway_lookups_total)",
            ),
            federation: None,
            connect_timeout: crate::config::DistConfig::default().connect_timeout,
        }
    }

    /// Asks peer gateways with `federation`, dialling within `connect_timeout`.
    pub fn with_federation(
        mut self,
        federation: Option<Arc<crate::federation::Federation>>,
        connect_timeout: Duration,
    ) -> Gateway {
        self.federation = federation;
        self.connect_timeout = connect_timeout;
        self
    }

    /// Takes over from `old`, the gateway a reload replaces, before serving: the
    /// leases of names the new routes still take (with their use and open links;
    /// placed again under the pool in force), and the tables of discovery routes that
    /// list the same Service. `old` is retired: a lookup still under way there leases
    /// nothing.
    pub fn succeed(&mut self, old: &Gateway) {
        for discovery in &mut self.discoveries {
            let adopted = (old.discoveries.iter()).any(|was| discovery.adopt(was));
            if adopted {
                self.discovering.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.leases.adopt(&old.leases, |routed| {
            let target = self.route_match(&routed.name)?;
            let terms = self.terms(target.route, &routed.name);
            let routed = Routed {
                host: target.host.unwrap_or_else(|| routed.host.clone()),
                ..routed.clone()
            };
            Some((routed, terms))
        });
    }

    /// Gives back every lease and leases no more: a reload left no route.
    pub fn retire(&self) {
        self.leases.retire();
    }

    /// Whether a failed lookup's warning may be logged now.
    fn may_log(&self) -> bool {
        self.log.allow()
    }

    /// How many discovery routes have yet to end their first refresh; `/readyz` waits
    /// for 0.
    pub fn discovering(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.discovering)
    }

    /// Routed names holding public ports, oldest first.
    pub fn leases(&self) -> Vec<Lease> {
        self.leases.all()
    }

    /// The leases with how each is used, oldest first (for `/nodes`).
    pub fn lease_views(&self) -> Vec<LeaseView> {
        self.leases.views()
    }

    /// The address to dial for `host`: an IP address as it is, else the first the DNS
    /// gives.
    pub async fn resolve(&self, host: &str) -> Result<IpAddr, DnsError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(ip);
        }
        let resolved = self.dns.resolve(host).await?;
        resolved
            .addrs
            .first()
            .copied()
            .ok_or_else(|| DnsError::NotFound {
                host: host.to_owned(),
            })
    }

    /// Keeps the discovery routes' tables (and the leases they hold) fresh until
    /// `shutdown`: each refreshes when its DNS answer's TTL runs out. Leases of
    /// template routes are confirmed upstream every `[dns] max_ttl`, so a name nobody
    /// asks for again still gives its port back once it is gone. Whatever is under way
    /// stops the moment `shutdown` is cancelled.
    pub async fn maintain(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tasks = tokio::task::JoinSet::new();
        let gateway = Arc::clone(&self);
        tasks.spawn(async move {
            let every = gateway.dns.ttls().ceiling.max(Duration::from_millis(100));
            loop {
                tokio::time::sleep(every).await;
                gateway.recheck().await;
            }
        });
        if let Some(federation) = self.federation.clone() {
            let mut peers: Vec<route::Federate> = (self.routes.iter())
                .filter_map(|r| match &r.upstream {
                    Upstream::Federate(f) => Some(f.clone()),
                    _ => None,
                })
                .collect();
            peers.dedup();
            let gateway = Arc::clone(&self);
            tasks.spawn(async move {
                loop {
                    for peer in &peers {
                        let Ok(ip) = gateway.resolve(&peer.host).await else {
                            let up = ::metrics::gauge!(m::FEDERATION_PEER_UP, "peer" => peer.identity.clone());
                            up.set(0.0);
                            continue;
                        };
                        let addr = SocketAddr::new(ip, peer.port);
                        let _ = federation.ping(addr, peer, gateway.connect_timeout).await;
                    }
                    tokio::time::sleep(crate::federation::PING_EVERY).await;
                }
            });
        }
        for index in 0..self.discoveries.len() {
            let gateway = Arc::clone(&self);
            tasks.spawn(async move {
                let discovery = &gateway.discoveries[index];
                let next = discovery.refresh(&gateway).await;
                if discovery.awaited {
                    gateway.discovering.fetch_sub(1, Ordering::Relaxed);
                }
                tokio::time::sleep(next).await;
                loop {
                    let next = discovery.refresh(&gateway).await;
                    tokio::time::sleep(next).await;
                }
            });
        }
        shutdown.cancelled().await;
        // Dropping the set aborts every task wherever it waits.
        tasks.shutdown().await;
    }

    /// Confirms every template route's lease upstream; those gone are given back.
    async fn recheck(&self) {
        for lease in self.leases.all() {
            let Some(target) = self.route_match(&lease.routed.name) else {
                continue;
            };
            if target.host.is_none() {
                continue;
            }
            let confirmed =
                tokio::time::timeout(self.timeout, self.confirm(&lease.routed.name, &target));
            match confirmed.await {
                Ok(Ok(found)) => self.leases.refresh(lease.name(), found),
                Ok(Err(Miss::Unknown)) => {
                    if self.leases.give_back(&lease.routed.name) {
                        info!(node = %lease.routed.name, "lease given back: the name left its upstream");
                    }
                }
                Ok(Err(_)) | Err(_) => {}
            }
        }
    }

    /// The first route that takes `name`, and where it sends it.
    fn route_match(&self, name: &str) -> Option<route::Match> {
        route::first_match(&self.routes, name)
    }

    /// The DNS cache routes resolve through.
    fn dns(&self) -> &Cache<Hickory> {
        &self.dns
    }

    /// The limit for asking an upstream.
    fn ask_timeout(&self) -> Duration {
        self.timeout
    }

    /// Where route `index` takes an upstream's dist port from.
    fn route_port(&self, index: usize) -> UpstreamPort {
        self.routes
            .get(index)
            .map_or(UpstreamPort::Epmd, |route| route.port)
    }

    /// The lease terms of `name` on route `index`: its home in the pool, its idle time.
    fn terms(&self, index: usize, name: &str) -> Terms {
        let pool = self.leases.pool_size();
        let (rule, idle) = self
            .routes
            .get(index)
            .map_or((route::LeaseRule::Hash, route::DEFAULT_LEASE_IDLE), |r| {
                (r.lease, r.lease_idle)
            });
        Terms {
            route: index,
            home: rule.home(name, pool),
            idle,
        }
    }

    /// The label of route `index` in logs and metrics.
    fn label(&self, index: usize) -> String {
        self.routes.get(index).map(Route::label).unwrap_or_default()
    }

    /// The discovery of route `index`, if that route discovers.
    fn discovery(&self, route: usize) -> Option<&Discovery> {
        self.discoveries.iter().find(|d| d.route == route)
    }

    /// PORT_PLEASE2 for a routed name: the lease (with its public port) when the
    /// upstream has the name, within `[dns] timeout` (resolution and the upstream's
    /// EPMD together); `None` when it does not, cannot be asked in time, or no public
    /// port is left. Counted by route and result.
    pub async fn port_please(&self, name: &str) -> Option<Lease> {
        let target = self.route_match(name)?;
        let answer = match tokio::time::timeout(self.timeout, self.look_up(name, &target)).await {
            Ok(answer) => answer,
            Err(_) => {
                if self.may_log() {
                    warn!(node = name, timeout = ?self.timeout, "routed lookup not answered within `dns.timeout`; answered \"no port\"");
                }
                Err(Miss::Timeout)
            }
        };
        let result = answer.as_ref().err().map_or("ok", |miss| miss.result());
        ::metrics::counter!(m::GATEWAY_LOOKUPS, "route" => self.label(target.route), "result" => result)
            .increment(1);
        answer.ok()
    }

    /// Confirms `name` upstream and leases it a port.
    async fn look_up(&self, name: &str, target: &route::Match) -> Result<Lease, Miss> {
        let found = match self.confirm(name, target).await {
            Ok(found) => found,
            Err(Miss::Unknown) => {
                if self.leases.give_back(name) {
                    info!(node = name, "lease given back: the name left its upstream");
                }
                return Err(Miss::Unknown);
            }
            Err(miss) => return Err(miss),
        };
        let terms = self.terms(target.route, name);
        self.leases.take(found, terms, Instant::now()).map_err(|_| {
            if self.may_log() {
                warn!(
                    node = name,
                    "no public port left to lease: every port of `dist.ports` is leased to a name in use"
                );
            }
            Miss::NoPort
        })
    }

    /// Where `name` lives upstream and what it registered there (the lease's public
    /// port left 0), or why not.
    async fn confirm(&self, name: &str, target: &route::Match) -> Result<Routed, Miss> {
        if let Some(peer) = &target.federate {
            return self.confirm_across(name, peer).await;
        }
        let (host, epmd) = match &target.host {
            Some(host) => match self.resolve(host).await {
                Ok(ip) => (host.clone(), SocketAddr::new(ip, target.epmd_port)),
                Err(e @ DnsError::NotFound { .. }) => {
                    debug!(node = name, %host, "routed name's upstream does not resolve: {e}");
                    return Err(Miss::Unknown);
                }
                Err(e) => {
                    if self.may_log() {
                        warn!(node = name, %host, "routed name's upstream does not resolve: {e}");
                    }
                    return Err(Miss::Dns);
                }
            },
            None => match self.discovery(target.route).and_then(|d| d.find(name)) {
                Some(epmd) => (epmd.ip().to_string(), epmd),
                None => {
                    debug!(node = name, "not among the discovered names");
                    return Err(Miss::Unknown);
                }
            },
        };
        // The caller's deadline bounds the ask; this one only keeps a lone ask bounded.
        let limit = self.timeout + Duration::from_secs(1);
        let found = match client::port_please(epmd, name, limit).await {
            Ok(Some(found)) => found,
            Ok(None) => {
                debug!(node = name, %epmd, "not registered upstream");
                return Err(Miss::Unknown);
            }
            Err(e) => {
                if self.may_log() {
                    warn!(node = name, %epmd, "upstream EPMD did not answer: {e}");
                }
                return Err(Miss::Upstream);
            }
        };
        let dist_port = match target.port {
            UpstreamPort::Fixed(port) => port,
            UpstreamPort::Epmd => found.port,
        };
        Ok(Routed {
            name: name.to_owned(),
            host,
            dist_port,
            info: found.info,
        })
    }
}

impl Gateway {
    /// Asks peer gateway `peer` whether `name` lives behind it.
    async fn confirm_across(&self, name: &str, peer: &route::Federate) -> Result<Routed, Miss> {
        let Some(federation) = &self.federation else {
            return Err(Miss::Upstream);
        };
        // The request carries at most 255 bytes of name: a longer one is never cut
        // into another name, it is not found.
        if name.len() > 255 {
            return Err(Miss::Unknown);
        }
        let ip = match self.resolve(&peer.host).await {
            Ok(ip) => ip,
            Err(e) => {
                if self.may_log() {
                    warn!(node = name, host = %peer.host, "peer gateway does not resolve: {e}");
                }
                return Err(Miss::Dns);
            }
        };
        let addr = SocketAddr::new(ip, peer.port);
        // Within the caller's deadline, so that a lookup cut short is still counted.
        let asked = federation.lookup(addr, peer, name, self.connect_timeout);
        let Ok(answer) = tokio::time::timeout(self.timeout.mul_f32(0.9), asked).await else {
            ::metrics::counter!(m::FEDERATION_LOOKUPS, "peer" => peer.identity.clone(), "side" => "client", "result" => "timeout")
                .increment(1);
            return Err(Miss::Timeout);
        };
        match answer {
            Ok(Some(info)) => Ok(Routed {
                name: name.to_owned(),
                host: peer.host.clone(),
                dist_port: peer.port,
                info,
            }),
            Ok(None) => Err(Miss::Unknown),
            Err(failure) => {
                debug!(node = name, gateway = %peer.identity, ?failure, "peer gateway lookup failed");
                Err(Miss::Upstream)
            }
        }
    }
}

impl Routes for Gateway {
    fn port_please<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Option<Port2Resp>> {
        Box::pin(async move {
            Gateway::port_please(self, name)
                .await
                .map(|l| l.port2_resp())
        })
    }

    fn names(&self) -> Vec<(String, u16)> {
        let leases = self.leases.all().into_iter();
        leases.map(|l| (l.routed.name, l.public_port)).collect()
    }

    fn port_please_here<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Option<Port2Resp>> {
        Box::pin(async move {
            let federates = self.route_match(name)?.federate.is_some();
            if federates {
                return None;
            }
            Gateway::port_please(self, name)
                .await
                .map(|l| l.port2_resp())
        })
    }

    fn upstream(&self, name: &str) -> Option<(String, u16, Option<route::Federate>)> {
        let lease = self.leases.get(name)?;
        let federate = self.route_match(name).and_then(|m| m.federate);
        Some((lease.routed.host, lease.routed.dist_port, federate))
    }

    fn resolve<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<IpAddr, DnsError>> {
        Box::pin(Gateway::resolve(self, host))
    }

    fn hold(&self, name: &str) -> Option<InUse> {
        self.leases.hold(name)
    }
}
