//! The public dist ports: which exist, which names have one pinned, and who holds
//! each one now. Local registrations ([`crate::registry`]) and the gateway's leases
//! ([`crate::gateway`]) both take their ports here, so one port never goes to two.
//!
//! The lock here is the innermost one: callers may hold their own while they claim or
//! give back a port, and nothing here calls out.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

/// Which public ports exist and which names have one pinned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortPlan {
    /// Public dist ports in the order they are handed out.
    pub pool: Vec<u16>,
    /// Names whose node always gets this port; every pinned port is in the pool.
    pub pins: HashMap<String, u16>,
}

/// Who holds a public port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// A local node, by name (one registration per name at a time).
    Local(String),
    /// A routed name's lease (gateway mode).
    Routed(String),
}

/// The pool of public ports and who holds each.
#[derive(Debug)]
pub struct Ports {
    plan: PortPlan,
    held: Mutex<BTreeMap<u16, Holder>>,
}

impl Ports {
    /// Every port of `plan` free.
    pub fn new(plan: PortPlan) -> Ports {
        Ports {
            plan,
            held: Mutex::new(BTreeMap::new()),
        }
    }

    /// The ports and pins.
    pub fn plan(&self) -> &PortPlan {
        &self.plan
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u16, Holder>> {
        // Plain data: a panic elsewhere while holding the lock leaves nothing broken.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives `holder`, for node `name`, its pinned port, or the first pool port that is
    /// neither held nor pinned to another name. `None` when there is none.
    pub fn claim(&self, name: &str, holder: Holder) -> Option<u16> {
        let mut held = self.lock();
        let port = match self.plan.pins.get(name) {
            Some(&pinned) => (!held.contains_key(&pinned)).then_some(pinned)?,
            None => {
                let pinned = |port: u16| self.plan.pins.values().any(|&p| p == port);
                self.plan
                    .pool
                    .iter()
                    .copied()
                    .find(|port| !held.contains_key(port) && !pinned(*port))?
            }
        };
        held.insert(port, holder);
        Some(port)
    }

    /// Gives `port` back if `holder` holds it; whether it did.
    pub fn release(&self, port: u16, holder: &Holder) -> bool {
        let mut held = self.lock();
        if held.get(&port) == Some(holder) {
            held.remove(&port);
            true
        } else {
            false
        }
    }

    /// Who holds `port` now.
    pub fn holder(&self, port: u16) -> Option<Holder> {
        self.lock().get(&port).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(pool: &[u16], pins: &[(&str, u16)]) -> Ports {
        Ports::new(PortPlan {
            pool: pool.to_vec(),
            pins: pins.iter().map(|&(n, p)| (n.to_owned(), p)).collect(),
        })
    }

    fn routed(name: &str) -> Holder {
        Holder::Routed(name.into())
    }

    #[test]
    fn ports_go_in_pool_order_and_come_back() {
        let p = ports(&[100, 101], &[]);
        assert_eq!(p.claim("a", routed("a")), Some(100));
        assert_eq!(p.claim("b", routed("b")), Some(101));
        assert_eq!(p.claim("c", routed("c")), None);
        assert!(p.release(100, &routed("a")));
        assert_eq!(p.holder(100), None);
        assert_eq!(p.claim("c", routed("c")), Some(100));
    }

    #[test]
    fn only_the_holder_gives_a_port_back() {
        let p = ports(&[100], &[]);
        p.claim("a", routed("a"));
        assert!(!p.release(100, &routed("b")));
        assert!(!p.release(101, &routed("a")));
        assert_eq!(p.holder(100), Some(routed("a")));
    }

    #[test]
    fn pinned_ports_wait_for_their_names() {
        let p = ports(&[100, 101], &[("db", 100)]);
        assert_eq!(p.claim("a", routed("a")), Some(101));
        assert_eq!(p.claim("b", routed("b")), None);
        assert_eq!(p.claim("db", routed("db")), Some(100));
        assert_eq!(p.claim("db", routed("db2")), None, "pin already held");
    }
}
