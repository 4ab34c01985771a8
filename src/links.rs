//! The open dist links, as operators ask about them: who talks to whom, since when,
//! how many bytes each way, and how long each way has been silent.
//!
//! A link enters the table when its handshake is done (or when a TLS link is handed to
//! the engine) and leaves it when it closes. The engine counts each direction's bytes
//! into the link's [`Flow`]s (one atomic add, no lock, no clock). A sweep every second
//! notes which counts moved, so idle times are known to the second, adds what moved
//! to the link's byte metrics (the close adds the rest), and marks a
//! direction *silent* once it has carried nothing for
//! `[dist] silent_after`: an idle dist link still carries a tick each way every
//! `net_ticktime/4` (15 s by default), so silence that long means a peer, a node or
//! the network between them is gone, minutes before `net_ticktime` ends the link.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::api::{self, LinkView};
use crate::metrics as m;

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds since the process's first look at the clock: what [`Flow`] stores.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    start.elapsed().as_millis() as u64
}

/// Bytes a link carried each way: from the peer (the side that connected) to the
/// node, and from the node to the peer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ByteCounts {
    /// From the peer to the node.
    pub from_peer: u64,
    /// From the node to the peer.
    pub to_peer: u64,
}

impl std::ops::Add for ByteCounts {
    type Output = ByteCounts;
    fn add(self, other: ByteCounts) -> ByteCounts {
        ByteCounts {
            from_peer: self.from_peer + other.from_peer,
            to_peer: self.to_peer + other.to_peer,
        }
    }
}

/// One direction of a link: bytes carried, and when the sweep last saw them change.
/// The engine only adds to `bytes` (one relaxed atomic add per chunk, no clock); the
/// sweep, once a second, notes when the count moved, so idle times are to the second.
#[derive(Debug)]
pub struct Flow {
    bytes: AtomicU64,
    /// `bytes` as the last sweep saw it.
    seen: AtomicU64,
    /// When the sweep last saw `bytes` move (or the link opened), in [`now_ms`].
    changed_ms: AtomicU64,
    silent: AtomicBool,
}

impl Flow {
    /// Bytes gone this way so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn new(bytes: u64) -> Flow {
        Flow {
            bytes: AtomicU64::new(bytes),
            seen: AtomicU64::new(bytes),
            changed_ms: AtomicU64::new(now_ms()),
            silent: AtomicBool::new(false),
        }
    }

    /// `n` more bytes went this way.
    pub fn add(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// How long no byte has gone this way, as of the last sweep: zero when bytes went
    /// since.
    fn idle(&self, now: u64) -> Duration {
        if self.bytes.load(Ordering::Relaxed) != self.seen.load(Ordering::Relaxed) {
            return Duration::ZERO;
        }
        Duration::from_millis(now.saturating_sub(self.changed_ms.load(Ordering::Relaxed)))
    }

    /// Notes whether bytes went since the last sweep, adding them to `counter`; the
    /// idle time after that.
    fn sweep(&self, now: u64, counter: &::metrics::Counter) -> Duration {
        if self.settle(counter) {
            self.changed_ms.store(now, Ordering::Relaxed);
        }
        self.idle(now)
    }

    /// Adds the bytes gone since the last look to `counter`; whether there were any.
    /// Each byte is added once, whichever of the sweep and the close looks.
    fn settle(&self, counter: &::metrics::Counter) -> bool {
        self.settle_to(self.bytes.load(Ordering::Relaxed), counter)
    }

    /// [`Flow::settle`] with `bytes` as read (possibly a while ago, by a sweep).
    fn settle_to(&self, bytes: u64, counter: &::metrics::Counter) -> bool {
        // `seen` only grows: a sweep that read `bytes` before the close settled a
        // larger count adds nothing and never moves the counter back.
        let seen = self.seen.fetch_max(bytes, Ordering::Relaxed);
        if bytes <= seen {
            return false;
        }
        counter.increment(bytes - seen);
        true
    }
}

/// One open link: its metrics (which hold its node, peer label and direction), the
/// peer's name where the label is not it, its source, and its two flows.
#[derive(Debug)]
pub struct Link {
    id: u64,
    metrics: m::LinkMeters,
    /// The peer's name where its `peer` label is not it (past `max_peers`).
    /// The peer's name where its label is not it, and the peer gateway: rare, so
    /// boxed together (an idle link's entry stays small).
    names: Option<Box<Names>>,
    source: SocketAddr,
    /// The public dist port the peer dialled.
    public_port: u16,
    tls: bool,
    /// From the peer towards the node.
    pub from_peer: Flow,
    /// From the node towards the peer.
    pub to_peer: Flow,
}

/// A link's rare names.
#[derive(Debug)]
struct Names {
    /// The peer's name where its `peer` label is not it (past `max_peers`).
    unlabelled: Option<String>,
    /// The peer gateway, for a link across gateways.
    gateway: Option<String>,
}

/// The table of open links.
#[derive(Debug)]
pub struct Links {
    /// `[dist] silent_after` in force, in milliseconds (a reload may change it).
    silent_after_ms: AtomicU64,
    table: Mutex<(u64, BTreeMap<u64, Arc<Link>>)>,
}

/// A link's place in the table; dropping it takes the link out.
#[derive(Debug)]
pub struct Listed {
    links: Arc<Links>,
    /// The link's state, shared with the engine's meters.
    pub link: Arc<Link>,
}

impl Listed {
    /// The peer's address.
    pub fn source(&self) -> SocketAddr {
        self.link.source
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.links.lock().1.remove(&self.link.id);
        for (flow, way, _) in self.link.flows() {
            if flow.silent.load(Ordering::Relaxed) {
                ::metrics::gauge!(m::DIST_SILENT_LINKS, "way" => way).decrement(1.0);
            }
        }
    }
}

/// What a new link is.
#[derive(Debug)]
pub(crate) struct NewLink {
    /// Its metrics, opened.
    pub(crate) metrics: m::LinkMeters,
    /// The peer's name where its `peer` label is not it.
    pub(crate) unlabelled: Option<String>,
    /// The peer's address.
    pub(crate) source: SocketAddr,
    /// The public dist port the peer dialled.
    pub(crate) public_port: u16,
    /// A TLS link (its handshake not followed).
    pub(crate) tls: bool,
    /// The peer gateway, for a link across gateways.
    pub(crate) gateway: Option<String>,
    /// Bytes already passed on during the handshake.
    pub(crate) bytes: ByteCounts,
}

impl Links {
    /// An empty table; a direction is silent after `silent_after` without a byte.
    pub fn new(silent_after: Duration) -> Arc<Links> {
        for way in WAYS {
            ::metrics::gauge!(m::DIST_SILENT_LINKS, "way" => way).set(0.0);
        }
        Arc::new(Links {
            silent_after_ms: AtomicU64::new(millis(silent_after)),
            table: Mutex::new((0, BTreeMap::new())),
        })
    }

    /// Makes `silent_after` the time without a byte after which a direction is silent,
    /// from the next sweep on.
    pub fn set_silent_after(&self, silent_after: Duration) {
        (self.silent_after_ms).store(millis(silent_after), Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, (u64, BTreeMap<u64, Arc<Link>>)> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lists a new link until the returned [`Listed`] is dropped.
    pub(crate) fn open(self: &Arc<Self>, new: NewLink) -> Listed {
        let mut table = self.lock();
        let id = table.0;
        table.0 += 1;
        let link = Arc::new(Link {
            id,
            metrics: new.metrics,
            names: (new.unlabelled.is_some() || new.gateway.is_some()).then(|| {
                Box::new(Names {
                    unlabelled: new.unlabelled,
                    gateway: new.gateway,
                })
            }),
            source: new.source,
            public_port: new.public_port,
            tls: new.tls,
            from_peer: Flow::new(new.bytes.from_peer),
            to_peer: Flow::new(new.bytes.to_peer),
        });
        table.1.insert(id, Arc::clone(&link));
        Listed {
            links: Arc::clone(self),
            link,
        }
    }

    /// Every open link, oldest first.
    pub fn views(&self) -> Vec<LinkView> {
        let now = now_ms();
        let links: Vec<Arc<Link>> = self.lock().1.values().cloned().collect();
        links.iter().map(|link| link.view(now)).collect()
    }

    /// How many links are open.
    pub fn len(&self) -> usize {
        self.lock().1.len()
    }

    /// Whether no link is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks directions silent past `silent_after` and speaking again after it, with a
    /// log line and the gauge for each change.
    pub fn sweep(&self) {
        let now = now_ms();
        let silent_after = Duration::from_millis(self.silent_after_ms.load(Ordering::Relaxed));
        let links: Vec<Arc<Link>> = self.lock().1.values().cloned().collect();
        for link in links {
            for (flow, way, counter) in link.flows() {
                let idle = flow.sweep(now, counter);
                let silent = idle >= silent_after;
                if flow.silent.swap(silent, Ordering::Relaxed) == silent {
                    continue;
                }
                let gauge = ::metrics::gauge!(m::DIST_SILENT_LINKS, "way" => way);
                if silent {
                    gauge.increment(1.0);
                    warn!(
                        node = link.metrics.node(), peer = link.peer(), source = %link.source, way,
                        silent_s = idle.as_secs(),
                        "dist link silent: no byte this way for `dist.silent_after` (a live link ticks every net_ticktime/4)"
                    );
                } else {
                    gauge.decrement(1.0);
                    info!(node = link.metrics.node(), peer = link.peer(), source = %link.source, way, "dist link speaks again");
                }
            }
        }
    }

    /// Sweeps every second until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => self.sweep(),
            }
        }
    }
}

/// The `way` labels of `distgate_dist_silent_links`.
const WAYS: [&str; 2] = ["from_peer", "to_peer"];

impl Link {
    /// Each way's flow, `way` label and byte counter.
    fn flows(&self) -> [(&Flow, &'static str, &::metrics::Counter); 2] {
        [
            (&self.from_peer, WAYS[0], &self.metrics.from_peer),
            (&self.to_peer, WAYS[1], &self.metrics.to_peer),
        ]
    }

    /// The link's metrics.
    pub(crate) fn metrics(&self) -> &m::LinkMeters {
        &self.metrics
    }

    /// The peer's node name (`tls` for TLS links).
    pub fn peer(&self) -> &str {
        let unlabelled = self.names.as_ref().and_then(|n| n.unlabelled.as_deref());
        unlabelled.unwrap_or(self.metrics.peer())
    }

    /// `n` bytes went `way`: one relaxed add to its flow. The byte counters of the
    /// link's metrics follow each second (the sweep) and at close ([`Link::settle`]).
    pub(crate) fn carried(&self, way: Way, n: u64) {
        match way {
            Way::FromPeer => self.from_peer.add(n),
            Way::ToPeer => self.to_peer.add(n),
        }
    }

    /// Brings the link's byte counters up to date (before its close is counted).
    pub(crate) fn settle(&self) {
        for (flow, _, counter) in self.flows() {
            flow.settle(counter);
        }
    }

    fn view(&self, now: u64) -> LinkView {
        let opened_at = api::unix_seconds(api::wall_clock(self.metrics.started()));
        LinkView {
            node: self.metrics.node().to_owned(),
            peer: self.peer().to_owned(),
            direction: self.metrics.direction().to_owned(),
            source: self.source.to_string(),
            public_port: self.public_port,
            handshake: if self.tls { "tls" } else { "ok" }.to_owned(),
            opened_at,
            bytes_from_peer: self.from_peer.bytes.load(Ordering::Relaxed),
            bytes_to_peer: self.to_peer.bytes.load(Ordering::Relaxed),
            idle_from_peer: self.from_peer.idle(now).as_secs_f64(),
            idle_to_peer: self.to_peer.idle(now).as_secs_f64(),
            peer_gateway: self.names.as_ref().and_then(|n| n.gateway.clone()),
        }
    }
}

/// Which flow of a link bytes went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Way {
    /// From the peer towards the node.
    FromPeer,
    /// From the node towards the peer.
    ToPeer,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::PeerLabels;

    fn new_link() -> NewLink {
        let peer = PeerLabels::fixed(crate::metrics::PEER_TLS);
        NewLink {
            metrics: m::LinkMeters::open("app".into(), peer, "inbound"),
            unlabelled: Some("peer@host".into()),
            source: "127.0.0.1:5000".parse().unwrap(),
            public_port: 43691,
            tls: false,
            gateway: None,
            bytes: ByteCounts {
                from_peer: 10,
                to_peer: 20,
            },
        }
    }

    /// Every open link holds one (in an `Arc`, shared with its two meters) for its
    /// whole life: its metrics' handles, its names and two flows of four words.
    #[test]
    fn a_link_stays_small() {
        let size = std::mem::size_of::<Link>();
        eprintln!("a link: {size} bytes");
        assert!(size <= 256, "a link is {size} bytes");
    }

    /// The sweep and the close both add what a flow carried to its counter: a sweep
    /// that read the bytes before the close settled more adds nothing, and the
    /// counter never goes back (it did with a swap: the stale sweep wrapped it).
    #[test]
    fn a_stale_sweep_never_moves_a_counter_back() {
        let total = Arc::new(AtomicU64::new(0));
        let counter = ::metrics::Counter::from_arc(Arc::clone(&total));
        let flow = Flow::new(0);
        flow.add(20);
        assert!(flow.settle(&counter)); // the close: 20
        assert!(!flow.settle_to(10, &counter)); // the sweep, with the 10 it read before
        assert_eq!(total.load(Ordering::Relaxed), 20);
        flow.add(5);
        assert!(flow.settle(&counter));
        assert_eq!(total.load(Ordering::Relaxed), 25);
    }

    #[test]
    fn links_are_listed_while_open_with_their_bytes() {
        let links = Links::new(Duration::from_secs(30));
        let listed = links.open(new_link());
        listed.link.carried(Way::FromPeer, 5);
        let views = links.views();
        assert_eq!(views.len(), 1);
        assert_eq!((views[0].bytes_from_peer, views[0].bytes_to_peer), (15, 20));
        assert_eq!(views[0].peer, "peer@host");
        drop(listed);
        assert!(links.is_empty());
    }

    #[test]
    fn a_direction_without_bytes_turns_silent_and_back() {
        let links = Links::new(Duration::ZERO);
        let listed = links.open(new_link());
        links.sweep();
        assert!(listed.link.from_peer.silent.load(Ordering::Relaxed));
        // With a long threshold, a byte makes a silent direction speak again.
        let slow = Links::new(Duration::from_secs(3600));
        let other = slow.open(new_link());
        other.link.to_peer.silent.store(true, Ordering::Relaxed);
        other.link.carried(Way::ToPeer, 1);
        slow.sweep();
        assert!(!other.link.to_peer.silent.load(Ordering::Relaxed));
    }
}
