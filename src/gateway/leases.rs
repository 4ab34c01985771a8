//! The gateway's leases: a routed name holds a public port (taken from the shared
//! [`Ports`]) while it lives upstream, sticky to the name, given back when it is gone.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::epmd::message::Port2Resp;
use crate::ports::{Holder, Ports};

/// A name routed to an upstream, holding a public port while it lives upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The routed name part.
    pub name: String,
    /// The public port it holds.
    pub public_port: u16,
    /// The upstream host (resolved at each connect).
    pub host: String,
    /// The upstream's dist port.
    pub dist_port: u16,
    /// The fields the upstream registered, echoed in PORT2_RESP.
    pub node_type: u8,
    /// As registered upstream.
    pub protocol: u8,
    /// As registered upstream.
    pub highest_version: u16,
    /// As registered upstream.
    pub lowest_version: u16,
    /// As registered upstream.
    pub extra: Vec<u8>,
}

impl Lease {
    /// PORT2_RESP for the lease: its public port and the upstream's fields.
    pub fn port2_resp(&self) -> Port2Resp {
        Port2Resp {
            port: self.public_port,
            node_type: self.node_type,
            protocol: self.protocol,
            highest_version: self.highest_version,
            lowest_version: self.lowest_version,
            name: self.name.clone(),
            extra: self.extra.clone(),
        }
    }
}

/// Routed names holding public ports, oldest first.
#[derive(Debug)]
pub(super) struct Leases {
    ports: Arc<Ports>,
    held: Mutex<Vec<Lease>>,
}

impl Leases {
    pub(super) fn new(ports: Arc<Ports>) -> Leases {
        Leases {
            ports,
            held: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Lease>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leases a public port to `lease.name` (the port in `lease` is ignored): the one it
    /// holds already (details refreshed), else a free one. `None` when none is left.
    pub(super) fn take(&self, mut lease: Lease) -> Option<Lease> {
        let mut held = self.lock();
        if let Some(current) = held.iter_mut().find(|l| l.name == lease.name) {
            lease.public_port = current.public_port;
            *current = lease.clone();
            return Some(lease);
        }
        let holder = Holder::Routed(lease.name.clone());
        lease.public_port = self.ports.claim(&lease.name, holder)?;
        held.push(lease.clone());
        Some(lease)
    }

    /// Gives back the public port of `name`; whether it held one.
    pub(super) fn give_back(&self, name: &str) -> bool {
        let mut held = self.lock();
        let Some(at) = held.iter().position(|l| l.name == name) else {
            return false;
        };
        let lease = held.remove(at);
        self.ports
            .release(lease.public_port, &Holder::Routed(lease.name));
        true
    }

    /// The lease of `name`.
    pub(super) fn get(&self, name: &str) -> Option<Lease> {
        self.lock().iter().find(|l| l.name == name).cloned()
    }

    /// Every lease, oldest first.
    pub(super) fn all(&self) -> Vec<Lease> {
        self.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::PortPlan;

    fn lease(name: &str) -> Lease {
        Lease {
            name: name.into(),
            public_port: 0,
            host: format!("{name}.svc"),
            dist_port: 43691,
            node_type: 77,
            protocol: 0,
            highest_version: 6,
            lowest_version: 5,
            extra: vec![],
        }
    }

    fn port(taken: Option<Lease>) -> Option<u16> {
        taken.map(|l| l.public_port)
    }

    #[test]
    fn leases_share_the_pool_with_local_nodes_and_stick_to_their_name() {
        let ports = Arc::new(Ports::new(PortPlan {
            pool: vec![100, 101, 102],
            pins: Default::default(),
        }));
        assert_eq!(
            ports.claim("local", Holder::Local("local".into())),
            Some(100)
        );
        let leases = Leases::new(Arc::clone(&ports));
        assert_eq!(port(leases.take(lease("app-0"))), Some(101));
        assert_eq!(port(leases.take(lease("app-1"))), Some(102));
        assert_eq!(port(leases.take(lease("app-0"))), Some(101), "not sticky");
        assert_eq!(port(leases.take(lease("app-2"))), None, "pool used up");
        assert_eq!(ports.holder(102), Some(Holder::Routed("app-1".into())));
        assert!(leases.give_back("app-1"));
        assert!(!leases.give_back("app-1"));
        assert_eq!(ports.holder(102), None);
        assert_eq!(port(leases.take(lease("app-2"))), Some(102));
        // A local node registering now finds no free port: leases hold theirs.
        assert_eq!(ports.claim("late", Holder::Local("late".into())), None);
        let names: Vec<_> = leases.all().into_iter().map(|l| l.name).collect();
        assert_eq!(names, ["app-0", "app-2"]);
    }
}
