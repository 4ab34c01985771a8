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
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The ports and pins in force (a reload may replace them).
    plan: PortPlan,
    held: BTreeMap<u16, Holder>,
}

impl Ports {
    /// Every port of `plan` free.
    pub fn new(plan: PortPlan) -> Ports {
        Ports {
            state: Mutex::new(State {
                plan,
                held: BTreeMap::new(),
            }),
        }
    }

    /// The ports and pins in force.
    pub fn plan(&self) -> PortPlan {
        self.lock().plan.clone()
    }

    /// How many ports the pool has.
    pub fn pool_len(&self) -> usize {
        self.lock().plan.pool.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain data: a panic elsewhere while holding the lock leaves nothing broken.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts `plan` in force (a reload). A holder loses its port when the port left the
    /// pool, is now pinned to another name, or its name is now pinned to another port;
    /// every other holder keeps its port. Returns the local nodes that lost theirs
    /// (routed names are placed again by the gateway).
    pub fn replan(&self, plan: PortPlan) -> Vec<String> {
        let mut state = self.lock();
        let mut lost = vec![];
        let State { plan: old, held } = &mut *state;
        *old = plan;
        held.retain(|&port, holder| {
            let name = match holder {
                Holder::Local(name) | Holder::Routed(name) => name,
            };
            let keeps = old.pool.contains(&port)
                && old.pins.get(name).is_none_or(|&pin| pin == port)
                && !old
                    .pins
                    .iter()
                    .any(|(owner, &p)| p == port && owner != name);
            if !keeps && let Holder::Local(name) = holder {
                lost.push(name.clone());
            }
            keeps
        });
        lost
    }

    /// Gives `holder`, for node `name`, its pinned port, or the first pool port that is
    /// neither held nor pinned to another name. `None` when there is none.
    pub fn claim(&self, name: &str, holder: Holder) -> Option<u16> {
        let mut state = self.lock();
        let State { plan, held } = &mut *state;
        let port = match plan.pins.get(name) {
            Some(&pinned) => (!held.contains_key(&pinned)).then_some(pinned)?,
            None => {
                let pinned = |port: u16| plan.pins.values().any(|&p| p == port);
                plan.pool
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
        let held = &mut self.lock().held;
        if held.get(&port) == Some(holder) {
            held.remove(&port);
            true
        } else {
            false
        }
    }

    /// Who holds `port` now.
    pub fn holder(&self, port: u16) -> Option<Holder> {
        self.lock().held.get(&port).cloned()
    }

    /// Places every routed name at once, replacing the ports routed names held: a
    /// name with a pin takes its pinned port; the others, in the order given, each take
    /// the first pool port from pool index `home` on (wrapping around) that no local
    /// node holds, no pin keeps for another name and no name before it took. The same
    /// names in the same order give the same ports. Returns each name's port in the
    /// order given, or `None`, changing nothing, when they do not all fit.
    pub fn place_routed(&self, wants: &[(&str, usize)]) -> Option<Vec<u16>> {
        let mut state = self.lock();
        let State { plan, held } = &mut *state;
        let mut taken: BTreeMap<u16, Holder> = (held.iter())
            .filter(|(_, holder)| matches!(holder, Holder::Local(_)))
            .map(|(&port, holder)| (port, holder.clone()))
            .collect();
        let pool = &plan.pool;
        let owners: HashMap<u16, &str> = (plan.pins.iter())
            .map(|(owner, &p)| (p, owner.as_str()))
            .collect();
        let pinned_to_other =
            |port: u16, name: &str| owners.get(&port).is_some_and(|&owner| owner != name);
        let mut placed = vec![None; wants.len()];
        for (i, &(name, _)) in wants.iter().enumerate() {
            if let Some(&pin) = plan.pins.get(name) {
                if taken.contains_key(&pin) {
                    return None;
                }
                taken.insert(pin, Holder::Routed(name.to_owned()));
                placed[i] = Some(pin);
            }
        }
        for (i, &(name, home)) in wants.iter().enumerate() {
            if placed[i].is_some() {
                continue;
            }
            let from = home % pool.len().max(1);
            let port = (pool[from..].iter().chain(&pool[..from]))
                .copied()
                .find(|&port| !taken.contains_key(&port) && !pinned_to_other(port, name))?;
            taken.insert(port, Holder::Routed(name.to_owned()));
            placed[i] = Some(port);
        }
        *held = taken;
        placed.into_iter().collect()
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
    fn routed_names_are_placed_from_their_homes_around_local_nodes() {
        let p = ports(&[100, 101, 102, 103], &[("pinned", 103)]);
        assert_eq!(p.claim("local", Holder::Local("local".into())), Some(100));
        // a's home is the local node's: the next; b then finds its home taken by a.
        let placed = p.place_routed(&[("a", 0), ("b", 1), ("pinned", 0)]);
        assert_eq!(placed, Some(vec![101, 102, 103]));
        // c does not fit (103 waits for its pinned name): nothing changes.
        assert_eq!(p.place_routed(&[("a", 0), ("b", 1), ("c", 1)]), None);
        assert_eq!(p.holder(102), Some(routed("b")));
        assert_eq!(p.holder(100), Some(Holder::Local("local".into())));
        // Placing again replaces what routed names held.
        assert_eq!(p.place_routed(&[("c", 3)]), Some(vec![101]));
        assert_eq!(p.holder(102), None);
        assert_eq!(p.holder(101), Some(routed("c")));
    }

    #[test]
    fn a_new_plan_takes_ports_only_from_holders_it_no_longer_fits() {
        let p = ports(&[100, 101, 102], &[]);
        let local = |n: &str| Holder::Local(n.into());
        assert_eq!(p.claim("a", local("a")), Some(100));
        assert_eq!(p.claim("b", local("b")), Some(101));
        assert_eq!(p.claim("c", local("c")), Some(102));
        // 102 leaves the pool, 100 is pinned to b: a and c lose theirs, b keeps 101
        // until it is placed again (its pin is another port, so it loses it too).
        let plan = PortPlan {
            pool: vec![100, 101, 103],
            pins: [("b".to_owned(), 100)].into(),
        };
        let mut lost = p.replan(plan.clone());
        lost.sort();
        assert_eq!(lost, ["a", "b", "c"]);
        assert_eq!(p.plan(), plan);
        assert_eq!(p.claim("b", local("b")), Some(100));
        assert_eq!(p.claim("a", local("a")), Some(101));
        assert_eq!(p.claim("c", local("c")), Some(103));
        // The same plan again moves nobody.
        assert!(p.replan(plan).is_empty());
        assert_eq!(p.holder(103), Some(local("c")));
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
