//! Gateway mode: names that match a `[[route]]` are answered for nodes that live
//! elsewhere. PORT_PLEASE2 for such a name asks the upstream's EPMD whether the name
//! exists there (an unknown or vanished name gets `77 01`, never a dead port), leases it
//! a public port from the pool (sticky while the name lives, given back when the
//! upstream no longer has it) and answers that port. A connection to the leased port
//! goes to the upstream, resolved at connect time, on its dist port.
//!
//! A route finds the upstream one of two ways: a host template (`{name}.app-headless`)
//! or discovery ([`discovery`]), which lists a headless Service's addresses and asks
//! each address's EPMD for its NAMES, on the DNS TTL.

mod discovery;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::dns::{Cache, DnsError, Hickory};
use crate::epmd::{client, message};
use crate::registry::{Lease, Registry};
use crate::route::{self, Route, Upstream, UpstreamPort};
use discovery::Discovery;

/// Routes, the DNS cache they resolve through, and the limit for asking upstreams.
pub struct Gateway {
    routes: Vec<Route>,
    dns: Cache<Hickory>,
    timeout: Duration,
    /// One per discovery route, with the index of its route.
    discoveries: Vec<Discovery>,
}

impl Gateway {
    /// The gateway `config` asks for: `None` without routes.
    pub fn from_config(config: &crate::Config) -> Result<Option<Gateway>, String> {
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
        )))
    }

    pub fn new(routes: Vec<Route>, dns: Cache<Hickory>, timeout: Duration) -> Gateway {
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
            discoveries,
        }
    }

    /// Whether a route takes `name`.
    pub fn takes(&self, name: &str) -> bool {
        route::route(&self.routes, name).is_some()
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
    pub async fn maintain(self: Arc<Self>, registry: Arc<Registry>, shutdown: CancellationToken) {
        let tasks = TaskTracker::new();
        {
            let (gateway, registry, shutdown) =
                (Arc::clone(&self), Arc::clone(&registry), shutdown.clone());
            tasks.spawn(async move {
                let every = gateway.dns.ttls().ceiling.max(Duration::from_millis(100));
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(every) => {}
                    }
                    gateway.recheck(&registry).await;
                }
            });
        }
        for index in 0..self.discoveries.len() {
            let (gateway, registry, shutdown) =
                (Arc::clone(&self), Arc::clone(&registry), shutdown.clone());
            tasks.spawn(async move {
                let discovery = &gateway.discoveries[index];
                loop {
                    let next = discovery.refresh(&gateway, &registry).await;
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(next) => {}
                    }
                }
            });
        }
        tasks.close();
        tasks.wait().await;
    }

    /// Confirms every template route's lease upstream; those gone are given back.
    async fn recheck(&self, registry: &Registry) {
        for lease in registry.leases() {
            let templated =
                route::route(&self.routes, &lease.name).is_some_and(|t| t.host.is_some());
            if templated {
                self.port_please(registry, &lease.name).await;
            }
        }
    }

    /// The discovery of route `index`, if that route discovers.
    fn discovery(&self, route: usize) -> Option<&Discovery> {
        self.discoveries.iter().find(|d| d.route == route)
    }

    /// PORT_PLEASE2 for a routed name: the lease (with its public port) when the
    /// upstream has the name, `None` when it does not, cannot be asked, or the pool is
    /// used up.
    pub async fn port_please(&self, registry: &Registry, name: &str) -> Option<Lease> {
        let target = route::route(&self.routes, name)?;
        let (host, epmd) = match &target.host {
            Some(host) => match self.resolve(host).await {
                Ok(ip) => (host.clone(), SocketAddr::new(ip, target.epmd_port)),
                Err(e) => {
                    warn!(node = name, %host, "routed name's upstream does not resolve: {e}");
                    if matches!(e, DnsError::NotFound { .. }) && registry.release(name) {
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
                if registry.release(name) {
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
        self.lease(
            registry,
            Lease {
                name: name.to_owned(),
                public_port: 0,
                host,
                dist_port,
                node_type: found.node_type,
                protocol: found.protocol,
                highest_version: found.highest_version,
                lowest_version: found.lowest_version,
                extra: found.extra,
            },
        )
    }

    /// Leases `lease.name` a public port; logs when the pool is used up.
    fn lease(&self, registry: &Registry, mut lease: Lease) -> Option<Lease> {
        match registry.lease(lease.clone()) {
            Some(port) => {
                lease.public_port = port;
                Some(lease)
            }
            None => {
                warn!(
                    node = lease.name,
                    "no public port left to lease: the pool `dist.ports` is used up"
                );
                None
            }
        }
    }

    /// PORT_PLEASE2 to the EPMD at `epmd`.
    async fn ask(&self, epmd: SocketAddr, name: &str) -> Result<Option<message::Port2>, String> {
        client::port_please(epmd, name, self.timeout).await
    }
}
