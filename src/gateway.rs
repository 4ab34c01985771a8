//! Gateway mode: names that match a `[[route]]` are answered for nodes that live
//! elsewhere. PORT_PLEASE2 for such a name asks the upstream's EPMD whether the name
//! exists there (an unknown or vanished name gets `77 01`, never a dead port), leases it
//! a public port from the pool (sticky while the name lives, given back when the
//! upstream no longer has it) and answers that port. A connection to the leased port
//! goes to the upstream host, resolved at connect time, on its dist port.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::dns::{Cache, DnsError, Hickory};
use crate::epmd::{client, message};
use crate::registry::{Lease, Registry};
use crate::route::{self, Route, UpstreamPort};

/// Routes, the DNS cache they resolve through, and the limit for asking upstreams.
pub struct Gateway {
    routes: Vec<Route>,
    dns: Cache<Hickory>,
    timeout: Duration,
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
        Gateway {
            routes,
            dns,
            timeout,
        }
    }

    /// Whether a route takes `name`.
    pub fn takes(&self, name: &str) -> bool {
        route::route(&self.routes, name).is_some()
    }

    /// The address to dial for `host`: the first the DNS gives.
    pub async fn resolve(&self, host: &str) -> Result<IpAddr, DnsError> {
        let resolved = self.dns.resolve(host).await?;
        resolved
            .addrs
            .first()
            .copied()
            .ok_or_else(|| DnsError::NotFound {
                host: host.to_owned(),
            })
    }

    /// PORT_PLEASE2 for a routed name: the lease (with its public port) when the
    /// upstream has the name, `None` when it does not, cannot be asked, or the pool is
    /// used up.
    pub async fn port_please(&self, registry: &Registry, name: &str) -> Option<Lease> {
        let target = route::route(&self.routes, name)?;
        let ip = match self.resolve(&target.host).await {
            Ok(ip) => ip,
            Err(e) => {
                warn!(node = name, host = %target.host, "routed name's upstream does not resolve: {e}");
                if matches!(e, DnsError::NotFound { .. }) && registry.release(name) {
                    info!(node = name, "lease given back: the upstream host is gone");
                }
                return None;
            }
        };
        let epmd = SocketAddr::new(ip, target.epmd_port);
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
        let mut lease = Lease {
            name: name.to_owned(),
            public_port: 0,
            host: target.host,
            dist_port,
            node_type: found.node_type,
            protocol: found.protocol,
            highest_version: found.highest_version,
            lowest_version: found.lowest_version,
            extra: found.extra,
        };
        match registry.lease(lease.clone()) {
            Some(port) => {
                lease.public_port = port;
                Some(lease)
            }
            None => {
                warn!(
                    node = name,
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
