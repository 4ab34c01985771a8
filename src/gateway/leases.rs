//! The gateway's leases: which routed names hold a public port (taken from the shared
//! [`Ports`]) and which port each holds.
//!
//! The ports are a function of the names leased, so that gateway replicas that know
//! the same names give them the same ports without talking to each other. Every name
//! has a home in the pool ([`crate::route::LeaseRule`]); the names are placed in
//! order, ordinal homes before hash homes and each group by name, and each takes the
//! first free port from its home on, wrapping around ([`Ports::place_routed`]). A name
//! keeps its port while it is leased; a name coming or going moves another only when
//! they want the same port and the newcomer comes first in that order (or the one
//! that left did). A link already forwarded never moves: only new connections go by
//! the port.
//!
//! When the pool runs short, the lease least recently used that has no open link and
//! no lookup for its route's `lease_idle` is given back to make room. A name with an
//! open link, or looked up a moment ago (the peer is about to connect), keeps its
//! lease whatever the others ask for.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::info;

pub use super::lease::{Lease, Routed};
use super::lease::{LeaseHold, Usage};
use crate::api::LeaseView;
use crate::directory::InUse;
use crate::metrics as m;
use crate::ports::Ports;
use crate::route::Home;

/// Which route a lease belongs to and where its name would like to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Terms {
    /// The index of the route.
    pub(super) route: usize,
    /// The name's home in the pool.
    pub(super) home: Home,
    /// How long the lease must go unused before the pool may take it back.
    pub(super) idle: Duration,
}

#[derive(Debug)]
struct Held {
    routed: Routed,
    /// The public port placed for it; `None` only while it is being placed.
    public_port: Option<u16>,
    terms: Terms,
    usage: Arc<Usage>,
    /// When it was leased, as a sequence number: NAMES lists the oldest first.
    since: u64,
}

impl Held {
    /// The lease, once placed.
    fn lease(&self) -> Option<Lease> {
        Some(Lease {
            routed: self.routed.clone(),
            public_port: self.public_port?,
        })
    }
}

#[derive(Debug, Default)]
struct Table {
    held: BTreeMap<String, Held>,
    next: u64,
    /// Handed over to the leases of a reloaded gateway: from then on this table
    /// neither takes nor places a port (a lookup still under way on the old gateway
    /// must not undo the new placement).
    retired: bool,
}

/// No public port for a name: every port is leased to a name in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PoolExhausted;

/// Routed names holding public ports.
#[derive(Debug)]
pub(super) struct Leases {
    ports: Arc<Ports>,
    /// Each route's label (its `nodes`), by index, for the metrics.
    routes: Vec<String>,
    table: Mutex<Table>,
}

impl Leases {
    /// Leases over `ports` for the routes labelled `routes`.
    pub(super) fn new(ports: Arc<Ports>, routes: Vec<String>) -> Leases {
        let leases = Leases {
            ports,
            routes,
            table: Mutex::new(Table::default()),
        };
        leases.count(&leases.lock());
        leases.start();
        leases
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The size of the pool the homes index.
    pub(super) fn pool_size(&self) -> usize {
        self.ports.pool_len()
    }

    /// Leases `routed.name` a public port under `terms`, or refreshes the lease it
    /// holds, and counts it as used now. Makes room by giving back an unused lease
    /// when the pool is short.
    pub(super) fn take(
        &self,
        routed: Routed,
        terms: Terms,
        now: Instant,
    ) -> Result<Lease, PoolExhausted> {
        let mut table = self.lock();
        if table.retired {
            return Err(PoolExhausted);
        }
        let name = routed.name.clone();
        if let Some(held) = table.held.get_mut(&name) {
            held.usage.touch(now);
            held.routed = routed;
        } else {
            self.add(&mut table, vec![(routed, terms)], now)?;
            self.count(&table);
        }
        table
            .held
            .get(&name)
            .and_then(Held::lease)
            .ok_or(PoolExhausted)
    }

    /// Refreshes the upstream details of `name`'s lease, if it holds one, without
    /// counting it as used.
    pub(super) fn refresh(&self, name: &str, routed: Routed) {
        if let Some(held) = self.lock().held.get_mut(name) {
            held.routed = routed;
        }
    }

    /// Makes the leases of route `route` exactly `leases` at once (a discovery
    /// refresh): names gone are given back, names new are leased (ports permitting,
    /// in name order), names kept keep their use and get the new details. The others'
    /// ports change at most once, to where the new set places them.
    pub(super) fn replace_route(&self, route: usize, leases: Vec<(Routed, Terms)>, now: Instant) {
        let mut table = self.lock();
        if table.retired {
            return;
        }
        let mut wanted: BTreeMap<String, (Routed, Terms)> = leases
            .into_iter()
            .map(|(routed, terms)| (routed.name.clone(), (routed, terms)))
            .collect();
        table.held.retain(|name, held| {
            held.terms.route != route || wanted.contains_key(name) || held.usage.links() > 0
        });
        let mut new = vec![];
        for (name, (routed, terms)) in std::mem::take(&mut wanted) {
            match table.held.get_mut(&name) {
                Some(held) => {
                    held.routed = routed;
                    held.terms = terms;
                }
                None => new.push((routed, terms)),
            }
        }
        // Gone names first: what they leave is room for the new ones.
        self.place(&mut table);
        let _ = self.add(&mut table, new, now);
        self.count(&table);
    }

    /// Gives back the public port of `name`; whether it held one.
    pub(super) fn give_back(&self, name: &str) -> bool {
        let mut table = self.lock();
        if table.retired || table.held.remove(name).is_none() {
            return false;
        }
        self.place(&mut table);
        self.count(&table);
        true
    }

    /// Takes over the leases of `old` (a reload), which is retired: each lease whose
    /// name `retarget` still routes keeps its use and its age, gets the terms and
    /// upstream `retarget` gives, and every name is placed again under the pool in
    /// force. Where the pool is now too small, the least recently used leases go,
    /// those without open links first (links already forwarded go on regardless).
    pub(super) fn adopt(
        &self,
        old: &Leases,
        retarget: impl Fn(&Routed) -> Option<(Routed, Terms)>,
    ) {
        let taken = {
            let mut table = old.lock();
            table.retired = true;
            let taken = std::mem::take(&mut table.held);
            // The old routes' gauges at 0; the routes kept are counted again below.
            old.count(&table);
            taken
        };
        let mut table = self.lock();
        for (name, held) in taken {
            let Some((routed, terms)) = retarget(&held.routed) else {
                info!(node = %name, "lease given back: no route takes the name after the reload");
                continue;
            };
            table.next = table.next.max(held.since + 1);
            let held = Held {
                routed,
                terms,
                ..held
            };
            table.held.insert(name, held);
        }
        while !self.place(&mut table) {
            let victim = (table.held.iter())
                .min_by_key(|(_, held)| (held.usage.links() > 0, held.usage.last_used()))
                .map(|(name, _)| name.clone());
            let Some(victim) = victim else { break };
            info!(node = %victim, "lease given back: the reloaded pool `dist.ports` is too small for every lease");
            table.held.remove(&victim);
        }
        self.count(&table);
    }

    /// Gives every lease back and takes no more (a reload that left no route).
    pub(super) fn retire(&self) {
        let mut table = self.lock();
        table.retired = true;
        table.held.clear();
        self.count(&table);
        let _ = self.ports.place_routed(&[]);
    }

    /// The lease of `name`.
    pub(super) fn get(&self, name: &str) -> Option<Lease> {
        self.lock().held.get(name).and_then(Held::lease)
    }

    /// A hold on `name`'s lease for one connection: while it lives, the lease is in use.
    pub(super) fn hold(&self, name: &str) -> Option<InUse> {
        let table = self.lock();
        let usage = &table.held.get(name)?.usage;
        usage.links.fetch_add(1, Ordering::Relaxed);
        usage.touch(Instant::now());
        Some(InUse::new(Box::new(LeaseHold(Arc::clone(usage)))))
    }

    /// Every lease with how it is used, oldest first.
    pub(super) fn views(&self) -> Vec<LeaseView> {
        let table = self.lock();
        let mut held: Vec<&Held> = table.held.values().collect();
        held.sort_by_key(|h| h.since);
        let now = Instant::now();
        (held.into_iter())
            .filter_map(|h| {
                Some(LeaseView {
                    name: h.routed.name.clone(),
                    public_port: h.public_port?,
                    upstream: format!("{}:{}", h.routed.host, h.routed.dist_port),
                    route: self.label(h.terms.route),
                    links: h.usage.links(),
                    last_used_s: now
                        .saturating_duration_since(h.usage.last_used())
                        .as_secs_f64(),
                })
            })
            .collect()
    }

    /// Every lease, oldest first.
    pub(super) fn all(&self) -> Vec<Lease> {
        let table = self.lock();
        let mut held: Vec<&Held> = table.held.values().collect();
        held.sort_by_key(|h| h.since);
        held.into_iter().filter_map(Held::lease).collect()
    }

    /// Adds `new` (in name order) to the table and places every name, giving back
    /// unused leases where the pool is short. The new names that still do not fit are
    /// left out, counted, and make the result an error.
    fn add(
        &self,
        table: &mut Table,
        mut new: Vec<(Routed, Terms)>,
        now: Instant,
    ) -> Result<(), PoolExhausted> {
        new.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        let mut result = Ok(());
        for (routed, terms) in new {
            let name = routed.name.clone();
            let since = table.next;
            table.next += 1;
            let usage = Usage::new(now);
            table.held.insert(
                name.clone(),
                Held {
                    routed,
                    public_port: None,
                    terms,
                    usage,
                    since,
                },
            );
            loop {
                if self.place(table) {
                    break;
                }
                match self.unused(table, &name, now) {
                    Some(victim) => {
                        info!(
                            node = %victim,
                            "lease given back: unused, and the pool `dist.ports` is short"
                        );
                        table.held.remove(&victim);
                    }
                    None => {
                        table.held.remove(&name);
                        self.place(table);
                        ::metrics::counter!(m::GATEWAY_POOL_EXHAUSTED, "route" => self.label(terms.route))
                            .increment(1);
                        result = Err(PoolExhausted);
                        break;
                    }
                }
            }
        }
        result
    }

    /// The lease least recently used among those unused (no open link, idle past its
    /// route's `lease_idle`), other than `keep`.
    fn unused(&self, table: &Table, keep: &str, now: Instant) -> Option<String> {
        (table.held.iter())
            .filter(|(name, held)| {
                name.as_str() != keep
                    && held.usage.links() == 0
                    && now.saturating_duration_since(held.usage.last_used()) >= held.terms.idle
            })
            .min_by_key(|(_, held)| held.usage.last_used())
            .map(|(name, _)| name.clone())
    }

    /// Places every leased name by the rule (see the module); whether they all fit.
    /// When they do not, nothing changes.
    fn place(&self, table: &mut Table) -> bool {
        let mut order: Vec<(&Home, &str)> = (table.held.iter())
            .map(|(name, held)| (&held.terms.home, name.as_str()))
            .collect();
        order.sort_by_key(|&(home, name)| (home.hashed, name));
        let wants: Vec<(&str, usize)> = order.iter().map(|&(h, n)| (n, h.index)).collect();
        let Some(ports) = self.ports.place_routed(&wants) else {
            return false;
        };
        let placed: Vec<(String, u16)> = (wants.iter().map(|&(n, _)| n.to_owned()))
            .zip(ports)
            .collect();
        for (name, port) in placed {
            if let Some(held) = table.held.get_mut(&name) {
                if let Some(was) = held.public_port
                    && was != port
                {
                    info!(node = %name, from = was, to = port, "lease moved: a name placed before it wants its port");
                }
                held.public_port = Some(port);
            }
        }
        true
    }

    fn label(&self, route: usize) -> String {
        self.routes.get(route).cloned().unwrap_or_default()
    }

    /// Sets `distgate_gateway_leases` for every route.
    fn count(&self, table: &Table) {
        let mut counts = vec![0usize; self.routes.len()];
        for held in table.held.values() {
            if let Some(count) = counts.get_mut(held.terms.route) {
                *count += 1;
            }
        }
        for (route, count) in counts.into_iter().enumerate() {
            ::metrics::gauge!(m::GATEWAY_LEASES, "route" => self.label(route)).set(count as f64);
        }
    }

    /// Every route's exhaustion counter at 0, so alerts see zeros, not gaps.
    fn start(&self) {
        for route in &self.routes {
            ::metrics::counter!(m::GATEWAY_POOL_EXHAUSTED, "route" => route.clone()).increment(0);
        }
    }
}

#[cfg(test)]
mod tests;
