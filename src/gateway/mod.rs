//! Gateway mode: names that match a `[[route]]` are answered for nodes that live
//! elsewhere. PORT_PLEASE2 for such a name asks the upstream's EPMD whether the name
//! exists there (an unknown or vanished name gets `77 01`, never a dead port), leases it
//! a public port from the pool (sticky while the name lives, given back when the
//! upstream no longer has it) and answers that port. A connection to the leased port
//! goes to the upstream, resolved at connect time, on its dist port.
//!
//! A route finds the upstream one of two ways: a host template (`{name}.app-headless`)
//! or discovery ([`discovery`]), which lists a headless Service's addresses and asks
//! each address's EPMD for its NAMES, on the DNS TTL. The gateway serves the EPMD
//! server and the forwarder through [`Routes`]; it knows neither.

mod discovery;
mod leases;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::directory::{BoxFuture, Routes};
use crate::dns::{Cache, DnsError, DnsSetupError, Hickory};
use crate::epmd::client::{self, ClientError};
use crate::epmd::message::Port2Resp;
use crate::ports::Ports;
use crate::route::{self, Route, Upstream, UpstreamPort};
use discovery::Discovery;
pub use leases::Lease;
use leases::Leases;

/// Routes, the DNS cache they resolve through, the leases of routed names, and the
/// limit for asking upstreams.
#[derive(Debug)]
pub struct Gateway {
    routes: Vec<Route>,
    dns: Cache<Hickory>,
    timeout: Duration,
    leases: Leases,
    /// One per discovery route, with the index of its route.
    discoveries: Vec<Discovery>,
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
            Hickory::system()?
        } else {
            Hickory::with_nameservers(&dns.nameservers, dns.timeout)?
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

    /// A gateway for `routes`, resolving through `dns`, asking upstreams within
    /// `timeout`, leasing from `ports`.
    pub fn new(
        routes: Vec<Route>,
        dns: Cache<Hickory>,
        timeout: Duration,
        ports: Arc<Ports>,
    ) -> Gateway {
        let discoveries = routes
            .iter()
            .enumerate()
            .filter_map(|(index, route)| match &route.upstream {
                Upstream::Discover { service, records } => Some(Discovery::new(
                    index,
                    service.clone(),
                    *records,
                    route.epmd_port,
                )),
                Upstream::Host(_) => None,
            })
            .collect();
        Gateway {
            routes,
            dns,
            timeout,
            leases: Leases::new(ports),
            discoveries,
        }
    }

    /// Routed names holding public ports, oldest first.
    pub fn leases(&self) -> Vec<Lease> {
        self.leases.all()
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
    /// asks for again still gives its port back once it is gone.
    pub async fn maintain(self: Arc<Self>, shutdown: CancellationToken) {
        let tasks = TaskTracker::new();
        let gateway = Arc::clone(&self);
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let every = gateway.dns.ttls().ceiling.max(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                gateway.recheck().await;
            }
        });
        for index in 0..self.discoveries.len() {
            let (gateway, stop) = (Arc::clone(&self), shutdown.clone());
            tasks.spawn(async move {
                let discovery = &gateway.discoveries[index];
                loop {
                    let next = discovery.refresh(&gateway).await;
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(next) => {}
                    }
                }
            });
        }
        tasks.close();
        tasks.wait().await;
    }

    /// Confirms every template route's lease upstream; those gone are given back.
    async fn recheck(&self) {
        for lease in self.leases.all() {
            let templated = self
                .route_match(&lease.name)
                .is_some_and(|m| m.host.is_some());
            if templated {
                self.port_please(&lease.name).await;
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

    /// The limit for asking an upstream's EPMD.
    fn ask_timeout(&self) -> Duration {
        self.timeout
    }

    /// Where route `index` takes an upstream's dist port from.
    fn route_port(&self, index: usize) -> UpstreamPort {
        self.routes
            .get(index)
            .map_or(UpstreamPort::Epmd, |route| route.port)
    }

    /// The discovery of route `index`, if that route discovers.
    fn discovery(&self, route: usize) -> Option<&Discovery> {
        self.discoveries.iter().find(|d| d.route == route)
    }

    /// PORT_PLEASE2 for a routed name: the lease (with its public port) when the
    /// upstream has the name, `None` when it does not, cannot be asked, or the pool is
    /// used up.
    pub async fn port_please(&self, name: &str) -> Option<Lease> {
        let target = self.route_match(name)?;
        let (host, epmd) = match &target.host {
            Some(host) => match self.resolve(host).await {
                Ok(ip) => (host.clone(), SocketAddr::new(ip, target.epmd_port)),
                Err(e) => {
                    warn!(node = name, %host, "routed name's upstream does not resolve: {e}");
                    if matches!(e, DnsError::NotFound { .. }) && self.leases.give_back(name) {
                        info!(node = name, "lease given back: the upstream host is gone");
                    }
                    return None;
                }
            },
            None => match self.discovery(target.route)?.find(name) {
                Some(epmd) => (epmd.ip().to_string(), epmd),
                None => {
                    debug!(node = name, "not among the discovered names");
                    return None;
                }
            },
        };
        let found = match self.ask(epmd, name).await {
            Ok(Some(found)) => found,
            Ok(None) => {
                debug!(node = name, %epmd, "not registered upstream");
                if self.leases.give_back(name) {
                    info!(node = name, "lease given back: the name left its upstream");
                }
                return None;
            }
            Err(e) => {
                warn!(node = name, %epmd, "upstream EPMD did not answer: {e}");
                return None;
            }
        };
        let dist_port = match target.port {
            UpstreamPort::Fixed(port) => port,
            UpstreamPort::Epmd => found.port,
        };
        self.lease(Lease {
            name: name.to_owned(),
            public_port: 0,
            host,
            dist_port,
            node_type: found.node_type,
            protocol: found.protocol,
            highest_version: found.highest_version,
            lowest_version: found.lowest_version,
            extra: found.extra,
        })
    }

    /// Leases `lease.name` a public port; logs when the pool is used up.
    fn lease(&self, lease: Lease) -> Option<Lease> {
        let name = lease.name.clone();
        let taken = self.leases.take(lease);
        if taken.is_none() {
            warn!(
                node = name,
                "no public port left to lease: the pool `dist.ports` is used up"
            );
        }
        taken
    }

    /// Gives back `name`'s lease; whether it held one.
    fn give_back(&self, name: &str) -> bool {
        self.leases.give_back(name)
    }

    /// PORT_PLEASE2 to the EPMD at `epmd`.
    async fn ask(&self, epmd: SocketAddr, name: &str) -> Result<Option<Port2Resp>, ClientError> {
        client::port_please(epmd, name, self.timeout).await
    }
}

impl Routes for Gateway {
    fn takes(&self, name: &str) -> bool {
        self.route_match(name).is_some()
    }

    fn port_please<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Option<Port2Resp>> {
        Box::pin(async move {
            Gateway::port_please(self, name)
                .await
                .map(|l| l.port2_resp())
        })
    }

    fn names(&self) -> Vec<(String, u16)> {
        let leases = self.leases.all().into_iter();
        leases.map(|l| (l.name, l.public_port)).collect()
    }

    fn upstream(&self, name: &str) -> Option<(String, u16)> {
        self.leases.get(name).map(|l| (l.host, l.dist_port))
    }

    fn resolve<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<IpAddr, DnsError>> {
        Box::pin(Gateway::resolve(self, host))
    }
}
