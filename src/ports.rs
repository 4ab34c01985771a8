//! The public dist ports: which exist, which names have one pinned, and who holds
//! each one now. Local registrations ([`crate::registry`]) and the gateway's leases
//! ([`crate::gateway`]) both take their ports here, so one port never goes to two.
//!
//! The lock here is the innermost one: callers may hold their own while they claim or
//! give back a port, and nothing here calls out.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use serde::de::{self, Deserialize, Deserializer};

use crate::glob::wildcard_match;

/// At most this many `client_names` patterns.
pub const MAX_CLIENT_PATTERNS: usize = 64;

/// Which public ports exist and which names have one pinned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortPlan {
    /// Public dist ports in the order they are handed out.
    pub pool: Vec<u16>,
    /// Names whose node always gets this port; every pinned port is in the pool.
    pub pins: HashMap<String, u16>,
    /// Local names that never take a public port (release clients).
    pub clients: ClientNames,
}

impl PortPlan {
    /// Whether a local node called `name` is a release client: its name matches
    /// `clients` and has no pin (a pin wins).
    pub fn is_client(&self, name: &str) -> bool {
        !self.pins.contains_key(name) && self.clients.matches(name)
    }
}

/// `[dist] client_names`: globs over a node's name part (`*` any run of characters,
/// `?` one) for the short-lived nodes a release starts to reach its own node:
/// `bin/app remote` (`rem-<random>-<node>`) and `bin/app rpc` (`rpc-<random>-<node>`).
/// They register like any node but never take a public port, so they cannot hold the
/// port their release's node comes back for, and no caller ever dials them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientNames(Vec<String>);

impl Default for ClientNames {
    fn default() -> Self {
        ClientNames(vec!["rem-*".to_owned(), "rpc-*".to_owned()])
    }
}

impl ClientNames {
    /// These patterns.
    pub fn new(patterns: Vec<String>) -> ClientNames {
        ClientNames(patterns)
    }

    /// No name is a client.
    pub fn none() -> ClientNames {
        ClientNames(vec![])
    }

    /// The first pattern the name part of `name` (a name part or a full `name@host`)
    /// matches.
    pub fn matching(&self, name: &str) -> Option<&str> {
        let part = name.split_once('@').map_or(name, |(part, _)| part);
        (self.0.iter())
            .find(|pattern| wildcard_match(pattern, part))
            .map(String::as_str)
    }

    /// Whether the name part of `name` matches a pattern.
    pub fn matches(&self, name: &str) -> bool {
        self.matching(name).is_some()
    }
}

impl<'de> Deserialize<'de> for ClientNames {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let patterns = Vec::<String>::deserialize(deserializer)?;
        if patterns.len() > MAX_CLIENT_PATTERNS {
            let message = format!("more than {MAX_CLIENT_PATTERNS} patterns");
            return Err(de::Error::custom(message));
        }
        for pattern in &patterns {
            let bad = pattern.is_empty()
                || pattern.len() > 255
                || pattern.contains('@')
                || pattern.chars().any(char::is_control);
            if bad {
                return Err(de::Error::custom(format!(
                    "`{}` is not a glob over a node's name part like \"rpc-*\" \
                     (1 to 255 bytes, no `@host`)",
                    pattern.escape_debug()
                )));
            }
            if pattern.chars().all(|c| c == '*') {
                return Err(de::Error::custom(format!(
                    "`{pattern}` would make every node a client, and none would get a public port"
                )));
            }
        }
        Ok(ClientNames(patterns))
    }
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
    /// pool, is now pinned to another name, its name is now pinned to another port, or
    /// (a local node) it is now a release client; every other holder keeps its port.
    /// Returns the local nodes that lost theirs (routed names are placed again by the
    /// gateway).
    pub fn replan(&self, plan: PortPlan) -> Vec<String> {
        let mut state = self.lock();
        let mut lost = vec![];
        let State { plan: old, held } = &mut *state;
        *old = plan;
        held.retain(|&port, holder| {
            let (name, client) = match &*holder {
                Holder::Local(name) => (name, old.is_client(name)),
                Holder::Routed(name) => (name, false),
            };
            let keeps = !client
                && old.pool.contains(&port)
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

    /// Whether a local node called `name` is a release client (no public port).
    pub fn is_client(&self, name: &str) -> bool {
        self.lock().plan.is_client(name)
    }

    /// Gives `holder`, for node `name`, its pinned port, or the first pool port that is
    /// neither held nor pinned to another name. `None` when there is none, and for a
    /// local node that is a release client.
    pub fn claim(&self, name: &str, holder: Holder) -> Option<u16> {
        let mut state = self.lock();
        let State { plan, held } = &mut *state;
        if matches!(holder, Holder::Local(_)) && plan.is_client(name) {
            return None;
        }
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
            clients: ClientNames::default(),
        })
    }

    fn local(name: &str) -> Holder {
        Holder::Local(name.into())
    }

    #[test]
    fn release_clients_never_take_a_port_and_pinned_ports_wait() {
        let p = ports(&[100, 101], &[("app", 100), ("rpc-pinned", 101)]);
        // The app is down: neither its pinned port nor any other goes to a client.
        assert_eq!(p.claim("rpc-1a2b-app", local("rpc-1a2b-app")), None);
        assert_eq!(p.claim("rem-1a2b-app", local("rem-1a2b-app")), None);
        assert!(p.is_client("rem-1a2b-app"));
        // Another server name cannot take the app's pinned port either.
        assert_eq!(p.claim("other", local("other")), None);
        assert_eq!(p.claim("app", local("app")), Some(100));
        // A pin wins over the client patterns.
        assert!(!p.is_client("rpc-pinned"));
        assert_eq!(p.claim("rpc-pinned", local("rpc-pinned")), Some(101));
        // Routed names are not release clients: a gateway may route `rpc-*` names.
        let q = ports(&[100], &[]);
        assert_eq!(q.claim("rpc-x", routed("rpc-x")), Some(100));
    }

    #[test]
    fn client_names_match_the_name_part() {
        let clients = ClientNames::default();
        assert_eq!(clients.matching("rpc-5d2c-app@pod.svc"), Some("rpc-*"));
        assert_eq!(clients.matching("rem-5d2c-app"), Some("rem-*"));
        assert!(!clients.matches("app@rpc-host"));
        assert!(!clients.matches("remote"));
        assert!(!ClientNames::none().matches("rpc-1-app"));
    }

    #[test]
    fn a_reload_that_makes_a_holder_a_client_takes_its_port() {
        let p = ports(&[100], &[]);
        assert_eq!(p.claim("maint-1", local("maint-1")), Some(100));
        let lost = p.replan(PortPlan {
            pool: vec![100],
            pins: HashMap::new(),
            clients: ClientNames::new(vec!["maint-*".into()]),
        });
        assert_eq!(lost, ["maint-1"]);
        assert_eq!(p.claim("maint-1", local("maint-1")), None);
        assert_eq!(p.claim("app", local("app")), Some(100));
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
        assert_eq!(p.claim("a", local("a")), Some(100));
        assert_eq!(p.claim("b", local("b")), Some(101));
        assert_eq!(p.claim("c", local("c")), Some(102));
        // 102 leaves the pool, 100 is pinned to b: a and c lose theirs, b keeps 101
        // until it is placed again (its pin is another port, so it loses it too).
        let plan = PortPlan {
            pool: vec![100, 101, 103],
            pins: [("b".to_owned(), 100)].into(),
            clients: ClientNames::default(),
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
