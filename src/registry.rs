//! The local nodes registered over EPMD: name → real port, public port, creation.
//!
//! The registry owns the rules of registration (duplicates, creations) and takes each
//! node's public port from [`Ports`]. It holds no sockets: the EPMD server keeps each
//! registration alive exactly as long as its connection and calls
//! [`Registry::unregister`] when it ends. Routed names are the gateway's, not here. All
//! methods are quick and lock a plain mutex that is never held across an await.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

use crate::epmd::NodeInfo;
use crate::epmd::message::{Alive2Req, NameError, Port2Resp};
use crate::ports::{Holder, PortPlan, Ports};

/// How many unregistered names are remembered for their creation, as in `epmd`.
pub const MAX_UNUSED: usize = 1000;
/// `epmd` never hands out creations 0..=3 in ALIVE2_X_RESP.
const MIN_CREATION: u32 = 4;

/// Identifies one registration; a later registration of the same name gets another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RegistrationId(u64);

/// A registered node.
#[derive(Debug, Clone)]
pub struct Node {
    /// This registration.
    pub id: RegistrationId,
    /// The name part, before `@`.
    pub name: String,
    /// The port the node listens on for distribution.
    pub real_port: u16,
    /// The public port that forwards to `real_port`, if the pool had one free.
    pub public_port: Option<u16>,
    /// A release client (`[dist] client_names`): it never has a public port.
    pub client: bool,
    /// What it registered about itself, echoed in PORT2_RESP.
    pub info: NodeInfo,
    /// The creation it was given.
    pub creation: u32,
    /// The registration socket's descriptor, shown by DUMP as `epmd` does.
    pub fd: i32,
    /// The loopback address dist connections are forwarded to.
    pub upstream_ip: IpAddr,
    /// When it registered.
    pub registered_at: std::time::SystemTime,
    stop: CancellationToken,
}

impl Node {
    /// The port peers are told to dial: the public one, or the real one when the pool
    /// was exhausted.
    pub fn advertised_port(&self) -> u16 {
        self.public_port.unwrap_or(self.real_port)
    }

    /// What PORT2_RESP tells peers about this node.
    pub fn port2_resp(&self) -> Port2Resp {
        Port2Resp {
            port: self.advertised_port(),
            name: self.name.clone(),
            info: self.info.clone(),
        }
    }
}

/// A name that was registered and has left; DUMP lists it, and its next registration
/// continues from its creation.
#[derive(Debug, Clone)]
pub struct Unused {
    /// The name part.
    pub name: String,
    /// The real port it had.
    pub port: u16,
    /// The descriptor its registration had.
    pub fd: i32,
    /// The creation it had.
    pub creation: u32,
}

/// What a successful registration hands back to the connection that made it.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Identifies it for [`Registry::unregister`].
    pub id: RegistrationId,
    /// The creation for the ALIVE2 reply.
    pub creation: u32,
    /// The public port the node got, if the pool had one.
    pub public_port: Option<u16>,
    /// A release client, which takes no public port.
    pub client: bool,
    /// Cancelled when the registration is to be ended from outside (STOP_REQ).
    pub stop: CancellationToken,
}

/// A node whose public port a reload changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMove {
    /// The name part.
    pub name: String,
    /// The public port it had.
    pub from: Option<u16>,
    /// The public port it has.
    pub to: Option<u16>,
    /// It is now a release client (so `to` is `None` by rule, not for want of ports).
    pub client: bool,
}

/// Why a registration is refused with an error reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// The name or extra field breaks epmd's rules.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// A live node holds the name.
    #[error("name already registered by a live node")]
    Duplicate,
}

impl RegisterError {
    /// A bounded label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            RegisterError::InvalidName(_) => "invalid_name",
            RegisterError::Duplicate => "duplicate",
        }
    }
}

/// The registry of local nodes.
#[derive(Debug)]
pub struct Registry {
    ports: Arc<Ports>,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Registered nodes, oldest first.
    nodes: Vec<Node>,
    /// Recently unregistered names, oldest first.
    unused: VecDeque<Unused>,
    next_id: u64,
}

impl Registry {
    /// No node registered; public ports come from `ports`.
    pub fn new(ports: Arc<Ports>) -> Self {
        Registry {
            ports,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a node, as `epmd`'s `node_reg2` does. `now_secs` is the Unix time that
    /// seeds the creation of a name seen for the first time.
    pub fn register(
        &self,
        req: &Alive2Req,
        fd: i32,
        upstream_ip: IpAddr,
        now_secs: u64,
    ) -> Result<Registration, RegisterError> {
        let name = req.validate()?;
        let mut inner = self.lock();
        if inner.nodes.iter().any(|n| n.name == name) {
            return Err(RegisterError::Duplicate);
        }
        let creation = match inner.unused.iter().position(|u| u.name == name) {
            Some(at) => inner.unused.remove(at).map_or(0, |u| u.creation),
            None => u32::try_from(now_secs).unwrap_or(u32::MAX),
        }
        .wrapping_add(1)
        .max(MIN_CREATION);
        let client = self.ports.is_client(name);
        let public_port = self.ports.claim(name, Holder::Local(name.to_owned()));
        let id = RegistrationId(inner.next_id);
        inner.next_id += 1;
        let stop = CancellationToken::new();
        inner.nodes.push(Node {
            id,
            name: name.to_owned(),
            real_port: req.port,
            public_port,
            client,
            info: req.info.clone(),
            creation,
            fd,
            upstream_ip,
            registered_at: std::time::SystemTime::now(),
            stop: stop.clone(),
        });
        Ok(Registration {
            id,
            creation,
            public_port,
            client,
            stop,
        })
    }

    /// Puts a new pool, pins and client names in force (a reload): each node whose
    /// public port no longer fits (out of the pool, pinned to another name, its name
    /// pinned to another port, or now a release client), and each node without one, is
    /// given a port again, oldest registration first. Returns each node whose public
    /// port changed.
    pub fn replan(&self, plan: PortPlan) -> Vec<PortMove> {
        let mut inner = self.lock();
        let lost = self.ports.replan(plan);
        let mut moved = vec![];
        for node in inner.nodes.iter_mut() {
            node.client = self.ports.is_client(&node.name);
            if node.public_port.is_some() && !lost.contains(&node.name) {
                continue;
            }
            let before = node.public_port;
            node.public_port = self
                .ports
                .claim(&node.name, Holder::Local(node.name.clone()));
            if node.public_port != before {
                moved.push(PortMove {
                    name: node.name.clone(),
                    from: before,
                    to: node.public_port,
                    client: node.client,
                });
            }
        }
        moved
    }

    /// Ends a registration; a no-op when it has already ended. Returns the node that left.
    pub fn unregister(&self, id: RegistrationId) -> Option<Node> {
        let mut inner = self.lock();
        let at = inner.nodes.iter().position(|n| n.id == id)?;
        let node = inner.nodes.remove(at);
        if let Some(port) = node.public_port {
            self.ports.release(port, &Holder::Local(node.name.clone()));
        }
        if inner.unused.len() >= MAX_UNUSED {
            inner.unused.pop_front();
        }
        inner.unused.push_back(Unused {
            name: node.name.clone(),
            port: node.real_port,
            fd: node.fd,
            creation: node.creation,
        });
        Some(node)
    }

    /// The registered node called `name`.
    pub fn get(&self, name: &str) -> Option<Node> {
        self.lock().nodes.iter().find(|n| n.name == name).cloned()
    }

    /// Where the node called `name` takes dist connections: its real port on the
    /// loopback address of the family it registered from.
    pub fn real_addr(&self, name: &str) -> Option<SocketAddr> {
        let inner = self.lock();
        let node = inner.nodes.iter().find(|n| n.name == name)?;
        Some(SocketAddr::new(node.upstream_ip, node.real_port))
    }

    /// Registered nodes, newest first (the order of NAMES and DUMP).
    pub fn nodes(&self) -> Vec<Node> {
        self.lock().nodes.iter().rev().cloned().collect()
    }

    /// Remembered unregistered names, newest first.
    pub fn unused(&self) -> Vec<Unused> {
        self.lock().unused.iter().rev().cloned().collect()
    }

    /// How many nodes are registered.
    pub fn len(&self) -> usize {
        self.lock().nodes.len()
    }

    /// Whether a node that is not a release client is registered.
    pub fn has_server(&self) -> bool {
        self.lock().nodes.iter().any(|n| !n.client)
    }

    /// Whether no node is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Asks the connection holding `name`'s registration to end it (STOP_REQ). Returns
    /// whether the name was registered.
    pub fn stop(&self, name: &[u8]) -> bool {
        let inner = self.lock();
        match inner.nodes.iter().find(|n| n.name.as_bytes() == name) {
            Some(node) => {
                node.stop.cancel();
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const NOW: u64 = 1_795_736_025;
    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn req(name: &str, port: u16) -> Alive2Req {
        Alive2Req::otp23(name, port)
    }

    fn registry(pool: &[u16], pins: &[(&str, u16)]) -> Registry {
        Registry::new(Arc::new(Ports::new(crate::ports::PortPlan {
            pool: pool.to_vec(),
            pins: pins.iter().map(|&(n, p)| (n.to_owned(), p)).collect(),
            clients: Default::default(),
        })))
    }

    #[test]
    fn first_creation_is_now_plus_one() {
        let reg = registry(&[], &[]);
        let r = reg.register(&req("a", 1000), 5, LOOPBACK, NOW).unwrap();
        assert_eq!(r.creation, 1_795_736_026);
    }

    #[test]
    fn re_registration_creation_strictly_increases_even_within_a_second() {
        let reg = registry(&[], &[]);
        let mut last = 0;
        for _ in 0..5 {
            let r = reg.register(&req("a", 1000), 5, LOOPBACK, NOW).unwrap();
            assert!(r.creation > last, "{} after {last}", r.creation);
            last = r.creation;
            reg.unregister(r.id).unwrap();
        }
        assert_eq!(last, 1_795_736_030);
    }

    #[test]
    fn creation_is_never_below_four() {
        let reg = registry(&[], &[]);
        assert_eq!(
            reg.register(&req("a", 1), 5, LOOPBACK, 0).unwrap().creation,
            4
        );
    }

    #[test]
    fn duplicate_name_is_refused_and_owner_kept() {
        let reg = registry(&[43691], &[]);
        let first = reg.register(&req("a", 1000), 5, LOOPBACK, NOW).unwrap();
        let dup = reg.register(&req("a", 2000), 6, LOOPBACK, NOW);
        assert_eq!(dup.unwrap_err(), RegisterError::Duplicate);
        let node = reg.get("a").unwrap();
        assert_eq!((node.id, node.real_port), (first.id, 1000));
        assert_eq!(reg.ports.holder(43691), Some(Holder::Local("a".into())));
    }

    #[test]
    fn invalid_names_are_refused() {
        let reg = registry(&[], &[]);
        let err = reg.register(&req("a", 1), 5, LOOPBACK, NOW).map(|_| ());
        assert!(err.is_ok());
        let mut bad = req("x", 1);
        bad.name = vec![0xff, 0xfe];
        let err = reg.register(&bad, 5, LOOPBACK, NOW).unwrap_err();
        assert_eq!(err, RegisterError::InvalidName(NameError::NotUtf8));
        assert_eq!(err.reason(), "invalid_name");
    }

    #[test]
    fn public_ports_follow_registration_order_and_are_reclaimed() {
        let reg = registry(&[100, 101], &[]);
        let a = reg.register(&req("a", 1), 5, LOOPBACK, NOW).unwrap();
        let b = reg.register(&req("b", 2), 5, LOOPBACK, NOW).unwrap();
        let c = reg.register(&req("c", 3), 5, LOOPBACK, NOW).unwrap();
        assert_eq!(
            [a.public_port, b.public_port, c.public_port],
            [Some(100), Some(101), None]
        );
        assert_eq!(reg.get("c").unwrap().advertised_port(), 3);
        reg.unregister(a.id);
        let d = reg.register(&req("d", 4), 5, LOOPBACK, NOW).unwrap();
        assert_eq!(d.public_port, Some(100));
        assert_eq!(reg.ports.holder(100), Some(Holder::Local("d".into())));
    }

    #[test]
    fn pinned_ports_are_kept_for_their_names() {
        let reg = registry(&[100, 101], &[("db", 100)]);
        let a = reg.register(&req("a", 1), 5, LOOPBACK, NOW).unwrap();
        let b = reg.register(&req("b", 2), 5, LOOPBACK, NOW).unwrap();
        let db = reg.register(&req("db", 3), 5, LOOPBACK, NOW).unwrap();
        assert_eq!(
            [a.public_port, b.public_port, db.public_port],
            [Some(101), None, Some(100)]
        );
    }

    #[test]
    fn a_new_plan_moves_only_the_nodes_it_must_and_places_those_without_a_port() {
        let reg = registry(&[100, 101], &[]);
        for (name, port) in [("a", 1), ("b", 2), ("c", 3)] {
            reg.register(&req(name, port), 5, LOOPBACK, NOW).unwrap();
        }
        let port = |name: &str| reg.get(name).unwrap().public_port;
        assert_eq!(
            [port("a"), port("b"), port("c")],
            [Some(100), Some(101), None]
        );
        // 100 leaves, 102 and 103 come, c is pinned to 103.
        let plan = PortPlan {
            pool: vec![101, 102, 103],
            pins: [("c".to_owned(), 103)].into(),
            clients: Default::default(),
        };
        let moved = |name: &str, from, to| PortMove {
            name: name.into(),
            from,
            to,
            client: false,
        };
        assert_eq!(
            reg.replan(plan),
            [
                moved("a", Some(100), Some(102)),
                moved("c", None, Some(103))
            ]
        );
        assert_eq!(
            [port("a"), port("b"), port("c")],
            [Some(102), Some(101), Some(103)]
        );
        assert_eq!(reg.ports.holder(100), None);
    }

    #[test]
    fn release_clients_register_without_a_port_and_leave_it_to_the_app() {
        let reg = registry(&[100], &[]);
        // The app is restarting: a client registers meanwhile and takes nothing.
        let rpc = reg
            .register(&req("rpc-9f3e-app", 1), 5, LOOPBACK, NOW)
            .unwrap();
        assert_eq!((rpc.public_port, rpc.client), (None, true));
        let app = reg.register(&req("app", 2), 6, LOOPBACK, NOW).unwrap();
        assert_eq!((app.public_port, app.client), (Some(100), false));
        assert!(reg.get("rpc-9f3e-app").unwrap().client);
    }

    #[test]
    fn unregister_is_idempotent_and_remembers_the_name() {
        let reg = registry(&[], &[]);
        let a = reg.register(&req("a", 1), 9, LOOPBACK, NOW).unwrap();
        assert!(reg.unregister(a.id).is_some());
        assert!(reg.unregister(a.id).is_none());
        let unused = reg.unused();
        assert_eq!((unused[0].name.as_str(), unused[0].fd), ("a", 9));
        assert!(reg.is_empty());
    }

    #[test]
    fn names_are_listed_newest_first() {
        let reg = registry(&[], &[]);
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            reg.register(&req(name, i as u16), 5, LOOPBACK, NOW)
                .unwrap();
        }
        let names: Vec<_> = reg.nodes().into_iter().map(|n| n.name).collect();
        assert_eq!(names, ["c", "b", "a"]);
    }

    #[test]
    fn unused_list_is_bounded() {
        let reg = registry(&[], &[]);
        for i in 0..MAX_UNUSED + 5 {
            let r = reg
                .register(&req(&format!("n{i}"), 1), 5, LOOPBACK, NOW)
                .unwrap();
            reg.unregister(r.id);
        }
        let unused = reg.unused();
        assert_eq!(unused.len(), MAX_UNUSED);
        assert_eq!(unused[0].name, format!("n{}", MAX_UNUSED + 4));
    }

    #[test]
    fn stop_cancels_only_the_named_registration() {
        let reg = registry(&[], &[]);
        let a = reg.register(&req("a", 1), 5, LOOPBACK, NOW).unwrap();
        let b = reg.register(&req("b", 2), 5, LOOPBACK, NOW).unwrap();
        assert!(reg.stop(b"a"));
        assert!(!reg.stop(b"zz"));
        assert!(a.stop.is_cancelled());
        assert!(!b.stop.is_cancelled());
    }
}
