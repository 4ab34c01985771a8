//! Discovery routes: the members of a headless Service (its A/AAAA addresses, or its
//! SRV targets with their ports) are asked for their NAMES, and the names the route
//! takes make a name → member table. Refreshed when the DNS answer's TTL (clamped to
//! `[dns] min_ttl`/`max_ttl`) runs out. Each known name holds a lease, so the gateway's
//! NAMES lists it; a name that leaves gives its lease back at the next refresh.
//!
//! While DNS fails the last table is kept for `[dns] stale_for`; a member whose EPMD
//! does not answer contributes no names (its nodes cannot be reached either).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::{Gateway, Routed};
use crate::dns::DnsError;
use crate::epmd::NodeInfo;
use crate::epmd::client;
use crate::metrics as m;
use crate::route::{Records, UpstreamPort};

#[derive(Debug)]
pub(super) struct Discovery {
    /// The index of the route this discovers for.
    pub(super) route: usize,
    service: String,
    records: Records,
    epmd_port: u16,
    table: Mutex<Table>,
    /// Whether its first listing is still awaited in the gateway's `discovering`
    /// (not so for a table taken over at a reload).
    pub(super) awaited: bool,
}

#[derive(Debug, Default, Clone)]
struct Table {
    /// Name → where it was found.
    names: BTreeMap<String, Member>,
    /// Until when the table may stand in for DNS answers that fail.
    usable_until: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Member {
    /// The member's EPMD.
    epmd: SocketAddr,
    /// The port its EPMD gives the name (a sidecar's public port).
    port: u16,
}

impl Discovery {
    pub(super) fn new(
        route: usize,
        service: String,
        records: Records,
        epmd_port: u16,
    ) -> Discovery {
        Discovery {
            route,
            service,
            records,
            epmd_port,
            table: Mutex::new(Table::default()),
            awaited: true,
        }
    }

    /// Takes over the table of `old` (the gateway before a reload) when both list the
    /// same Service the same way, so the names stay known while it lists them again.
    /// Whether it did, with a table already listed.
    pub(super) fn adopt(&mut self, old: &Discovery) -> bool {
        let same = (self.service == old.service)
            && (self.records == old.records)
            && (self.epmd_port == old.epmd_port);
        if !same {
            return false;
        }
        let table = old.table().clone();
        if table.usable_until.is_none() {
            return false;
        }
        *self.table() = table;
        self.awaited = false;
        true
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The EPMD of the member where `name` was last found.
    pub(super) fn find(&self, name: &str) -> Option<SocketAddr> {
        self.table().names.get(name).map(|m| m.epmd)
    }

    /// Asks DNS and every member, updates the table and the leases; returns how long
    /// until the next refresh.
    pub(super) async fn refresh(&self, gateway: &Gateway) -> Duration {
        let ttls = gateway.dns().ttls();
        let (members, ttl) = match self.members(gateway).await {
            Ok(found) => found,
            Err(e @ DnsError::NotFound { .. }) => {
                info!(service = %self.service, "discovery: the service has no members ({e})");
                (vec![], ttls.floor)
            }
            Err(e) => {
                let keep = self
                    .table()
                    .usable_until
                    .is_some_and(|t| Instant::now() < t);
                warn!(service = %self.service, kept = keep, "discovery: DNS lookup failed: {e}");
                if keep {
                    return ttls.floor;
                }
                (vec![], ttls.floor)
            }
        };
        let found = self.ask_members(gateway, members).await;
        self.update(gateway, found);
        self.table().usable_until = Some(Instant::now() + ttl + ttls.stale_for);
        ttl
    }

    /// The members' EPMD addresses, and the TTL of the answer that listed them.
    async fn members(&self, gateway: &Gateway) -> Result<(Vec<SocketAddr>, Duration), DnsError> {
        match self.records {
            Records::A => {
                let answer = gateway.dns().fresh(&self.service).await?;
                let members = answer
                    .addrs
                    .iter()
                    .map(|&ip| SocketAddr::new(ip, self.epmd_port))
                    .collect();
                Ok((members, answer.ttl))
            }
            Records::Srv => {
                let answer = gateway.dns().srv(&self.service).await?;
                let mut members = vec![];
                for (host, port) in &answer.targets {
                    match gateway.dns().resolve(host).await {
                        Ok(resolved) => members
                            .extend(resolved.addrs.iter().map(|&ip| SocketAddr::new(ip, *port))),
                        Err(e) => {
                            warn!(service = %self.service, target = %host, "discovery: SRV target does not resolve: {e}");
                        }
                    }
                }
                Ok((members, answer.ttl))
            }
        }
    }

    /// NAMES of every member at once; members that fail are logged and left out.
    async fn ask_members(
        &self,
        gateway: &Gateway,
        mut members: Vec<SocketAddr>,
    ) -> Vec<(SocketAddr, Vec<(String, u16)>)> {
        members.sort();
        members.dedup();
        let mut asks = JoinSet::new();
        for (order, epmd) in members.into_iter().enumerate() {
            let limit = gateway.ask_timeout();
            asks.spawn(async move { (order, epmd, client::names(epmd, limit).await) });
        }
        let mut answers = vec![];
        while let Some(joined) = asks.join_next().await {
            let Ok((order, epmd, result)) = joined else {
                continue;
            };
            match result {
                Ok(names) => answers.push((order, epmd, names)),
                Err(e) => {
                    warn!(service = %self.service, %epmd, "discovery: member's EPMD did not list its names: {e}");
                    ::metrics::counter!(m::DISCOVERY_FAILURES, "service" => self.service.clone())
                        .increment(1);
                }
            }
        }
        answers.sort_by_key(|(order, ..)| *order);
        answers
            .into_iter()
            .map(|(_, epmd, names)| (epmd, names))
            .collect()
    }

    /// Replaces the table with the names found that this route takes, at once, and
    /// brings the leases along in one step: new names leased, moved names re-pointed,
    /// gone names given back. A name found before and after is never missing between.
    fn update(&self, gateway: &Gateway, found: Vec<(SocketAddr, Vec<(String, u16)>)>) {
        let mut names = BTreeMap::new();
        for (epmd, listed) in found {
            for (name, port) in listed {
                let ours = gateway.route_match(&name).map(|m| m.route) == Some(self.route);
                if !ours {
                    continue;
                }
                let member = Member { epmd, port };
                if let Some(Member { epmd: first, .. }) = names.get(&name) {
                    warn!(service = %self.service, node = %name, %first, also = %epmd, "discovery: name registered at two members; using the first");
                    continue;
                }
                names.insert(name, member);
            }
        }
        let count = names.len();
        let old = std::mem::replace(&mut self.table().names, names.clone());
        for name in old.keys().filter(|n| !names.contains_key(*n)) {
            info!(service = %self.service, node = %name, "discovered name gone; lease given back");
        }
        let route_port = gateway.route_port(self.route);
        let mut leases = vec![];
        for (name, member) in names {
            let dist_port = match route_port {
                UpstreamPort::Fixed(port) => port,
                UpstreamPort::Epmd => member.port,
            };
            let host = member.epmd.ip().to_string();
            match old.get(&name) {
                None => {
                    info!(service = %self.service, node = %name, epmd = %member.epmd, "discovered name")
                }
                Some(was) if *was != member => {
                    info!(service = %self.service, node = %name, from = %was.epmd, to = %member.epmd, "discovered name moved")
                }
                Some(_) => debug!(node = %name, "discovered name unchanged"),
            }
            let known = (gateway.leases.get(&name)).filter(|l| l.routed.host == host);
            let routed = match known {
                // What a lookup confirmed upstream stays while the node stays.
                Some(known) => Routed {
                    dist_port,
                    ..known.routed
                },
                // Until a PORT_PLEASE2 confirms it upstream and fills in what the node
                // registered (NAMES does not tell it), what an OTP 23+ node sends.
                None => Routed {
                    name: name.clone(),
                    host,
                    dist_port,
                    info: NodeInfo::OTP23,
                },
            };
            let terms = gateway.terms(self.route, &name);
            leases.push((routed, terms));
        }
        gateway
            .leases
            .replace_route(self.route, leases, Instant::now());
        ::metrics::gauge!(m::DISCOVERED_NAMES, "service" => self.service.clone()).set(count as f64);
    }
}
