//! The directory of names and ports: the one place that answers "which port do peers
//! dial for this name" (PORT_PLEASE2, NAMES) and "where does a connection on this
//! public port go" (the forwarder). The EPMD server and the forwarder depend on it
//! alone.
//!
//! Local nodes come from the [`Registry`]. Names that live elsewhere come from a
//! [`Routes`], which the gateway implements; the directory knows only the trait, so
//! nothing here or in its callers depends on how names are routed.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use crate::dns::DnsError;
use crate::epmd::message::Port2Resp;
use crate::live::Live;
use crate::ports::{Holder, PortPlan, Ports};
use crate::registry::Registry;
use crate::route::Federate;

/// A boxed future, for the async methods of [`Routes`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Names answered and forwarded for nodes that are not registered here.
pub trait Routes: Send + Sync + fmt::Debug {
    /// PORT2_RESP for routed name `name` (its public port), or `None` when no route
    /// takes it, its upstream does not have it or no public port is left.
    fn port_please<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Option<Port2Resp>>;
    /// [`Routes::port_please`] by the routes that do not federate: what a peer gateway
    /// is told (a name is never passed on from one peer gateway to another).
    fn port_please_here<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Option<Port2Resp>>;
    /// Routed names holding public ports, with those ports, oldest first.
    fn names(&self) -> Vec<(String, u16)>;
    /// The upstream host and dist port of routed name `name`, and the peer gateway
    /// when a route federates it.
    fn upstream(&self, name: &str) -> Option<(String, u16, Option<Federate>)>;
    /// The address to dial for an upstream host.
    fn resolve<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<IpAddr, DnsError>>;
    /// A hold on routed name `name` for one connection, kept while it is open.
    fn hold(&self, name: &str) -> Option<InUse>;
}

/// Held by a connection to a routed name while it is open: the name is in use, and
/// the gateway does not give its public port to another meanwhile.
pub struct InUse(#[allow(dead_code)] Box<dyn Send + Sync>);

impl InUse {
    /// A hold that keeps `held` (whose drop ends the use) alive.
    pub fn new(held: Box<dyn Send + Sync>) -> InUse {
        InUse(held)
    }
}

impl fmt::Debug for InUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InUse")
    }
}

/// Where a connection to a public port goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A local node's real port.
    Local {
        /// The node's name part.
        name: String,
        /// Its real dist address, on loopback.
        addr: SocketAddr,
    },
    /// A routed name's upstream host (resolved at each connect) and dist port.
    Routed {
        /// The routed name.
        name: String,
        /// The upstream host.
        host: String,
        /// The upstream's dist port.
        port: u16,
        /// The peer gateway that holds the name (then `host:port` is its federation
        /// listener).
        federate: Option<Federate>,
    },
}

/// Local registrations and routed names, over one pool of public ports.
#[derive(Debug)]
pub struct Directory {
    ports: Arc<Ports>,
    registry: Arc<Registry>,
    /// The routed names in force (a reload may replace the gateway).
    routes: Live<Option<Arc<dyn Routes>>>,
}

impl Directory {
    /// A directory whose local nodes take their public ports from `ports`, and whose
    /// other names come from `routes`.
    pub fn new(ports: Arc<Ports>, routes: Option<Arc<dyn Routes>>) -> Directory {
        Directory {
            registry: Arc::new(Registry::new(Arc::clone(&ports))),
            ports,
            routes: Live::new(routes),
        }
    }

    /// Puts `routes` in force for the lookups and connections that come next (a
    /// reload); connections already forwarded keep going.
    pub fn set_routes(&self, routes: Option<Arc<dyn Routes>>) {
        self.routes.set(routes);
    }

    fn routes(&self) -> Option<Arc<dyn Routes>> {
        (*self.routes.get()).clone()
    }

    /// A directory of local nodes only, over the ports of `plan`.
    pub fn local(plan: PortPlan) -> Directory {
        Directory::new(Arc::new(Ports::new(plan)), None)
    }

    /// The local nodes.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The public ports and who holds them.
    pub fn ports(&self) -> &Arc<Ports> {
        &self.ports
    }

    /// PORT2_RESP for `name`: the local node, else the routed name, else `None`.
    pub async fn port_please(&self, name: &str) -> Option<Port2Resp> {
        if let Some(node) = self.registry.get(name) {
            return Some(node.port2_resp());
        }
        match self.routes() {
            Some(routes) => routes.port_please(name).await,
            None => None,
        }
    }

    /// PORT2_RESP for `name` as a peer gateway is told: the local node, else a name
    /// the routes that do not federate take.
    pub async fn port_please_here(&self, name: &str) -> Option<Port2Resp> {
        if let Some(node) = self.registry.get(name) {
            return Some(node.port2_resp());
        }
        match self.routes() {
            Some(routes) => routes.port_please_here(name).await,
            None => None,
        }
    }

    /// What NAMES lists: local nodes newest first, then routed names oldest first.
    pub fn names(&self) -> Vec<(String, u16)> {
        let mut names: Vec<(String, u16)> = (self.registry.nodes().into_iter())
            .map(|node| {
                let port = node.advertised_port();
                (node.name, port)
            })
            .collect();
        if let Some(routes) = self.routes() {
            names.extend(routes.names());
        }
        names
    }

    /// Where a connection to `public_port` goes, if anyone holds it.
    pub fn destination(&self, public_port: u16) -> Option<Destination> {
        match self.ports.holder(public_port)? {
            Holder::Local(name) => {
                let addr = self.registry.real_addr(&name)?;
                Some(Destination::Local { name, addr })
            }
            Holder::Routed(name) => {
                let (host, port, federate) = self.routes()?.upstream(&name)?;
                Some(Destination::Routed {
                    name,
                    host,
                    port,
                    federate,
                })
            }
        }
    }

    /// A hold on routed name `name` while a connection to it is open.
    pub fn hold(&self, name: &str) -> Option<InUse> {
        self.routes()?.hold(name)
    }

    /// The address to dial for a routed destination's host.
    pub async fn resolve(&self, host: &str) -> Result<IpAddr, DnsError> {
        match self.routes() {
            Some(routes) => routes.resolve(host).await,
            None => Err(DnsError::NotFound {
                host: host.to_owned(),
            }),
        }
    }
}
