//! Public dist ports: a connection to one is forwarded to where the directory says the
//! port goes (a local node's real port over loopback, or a routed name's upstream). A
//! port nobody holds closes the connection at once.
//!
//! Nothing unauthenticated reaches a node unchecked: [`super::admission`] admits the
//! peer and follows its handshake; only then is the link labelled with the peer's
//! name, listed, and moved to the engine (splice). TLS links pass untouched after
//! their ClientHello.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tracing::{Instrument, info, info_span, warn};

use super::guard::{Guard, Limits, SourceSlot};
use super::refusals::{Reason, Refusals};
use super::{Bridge, ByteCounts, Meter};
use crate::accept::{Acceptor, Admit, OnFull};
use crate::config::{DistConfig, MetricsConfig};
use crate::directory::{Destination, Directory, InUse};
use crate::links::{Links, Listed, NewLink, Way};
use crate::live::Live;
use crate::log_budget::SharedBudget;
use crate::metrics::{self as m, PeerLabels};

/// The `direction` label of connections that come in on a public port for a local node.
pub(crate) const DIRECTION: &str = "inbound";
/// The `direction` label of connections forwarded to a routed name's upstream.
pub(crate) const GATEWAY_DIRECTION: &str = "gateway";

/// A bounded label for how a forwarded stream ended.
pub(crate) fn close_reason(result: &std::io::Result<()>) -> &'static str {
    use std::io::ErrorKind::*;
    match result {
        Ok(()) => "closed",
        Err(e)
            if e.get_ref()
                .is_some_and(|inner| inner.is::<super::LingerOver>()) =>
        {
            "linger"
        }
        Err(e)
            if e.get_ref()
                .is_some_and(|inner| inner.is::<super::ShutdownCut>()) =>
        {
            "shutdown"
        }
        Err(e) => match e.kind() {
            ConnectionReset | ConnectionAborted | BrokenPipe => "reset",
            TimedOut => "timeout",
            _ => "error",
        },
    }
}

/// The guard's share of `[dist]`.
fn limits(config: &DistConfig) -> Limits {
    Limits {
        max_per_source: config.max_per_source.get(),
        ipv6_prefix: config.ipv6_prefix,
        ban: config.ban.clone(),
    }
}

/// Accepts on the public dist ports and forwards to where each port goes.
#[derive(Debug)]
pub(crate) struct Forwarder {
    pub(super) directory: Arc<Directory>,
    pub(super) engine: Arc<super::Engine>,
    pub(super) links: Arc<Links>,
    /// `[dist]` as in force now (a reload replaces it; `listen`, `ports` and `pins`
    /// are not read here).
    pub(super) config: Live<DistConfig>,
    pub(super) guard: Arc<Guard>,
    /// The last refusals (`GET /refusals`).
    pub(super) refusals: Arc<Refusals>,
    pub(super) peers: Arc<PeerLabels>,
    pub(super) acceptor: Acceptor,
    /// A peer that passes admission makes distgate dial the node at will: when the
    /// upstream does not resolve, or the node's port does not accept, the lines
    /// logged are budgeted.
    log_unresolved: SharedBudget,
    log_unreachable: SharedBudget,
    /// Peer gateways are dialled with it (`None`: no `[federation]` material).
    federation: Live<Option<Arc<crate::federation::Federation>>>,
}

/// A link whose peer has proved itself (or speaks TLS), ready for the engine.
#[derive(Debug)]
pub(super) struct Opened {
    pub(super) node: String,
    /// The peer's address.
    pub(super) source: SocketAddr,
    /// The public port it dialled.
    pub(super) public_port: u16,
    /// The authenticated peer's node name; `None` for TLS.
    pub(super) peer_name: Option<String>,
    pub(super) tls_sni: Option<String>,
    pub(super) direction: &'static str,
    /// Bytes passed on during the handshake.
    pub(super) handshake_bytes: ByteCounts,
    /// The peer gateway's identity, for a link across gateways.
    pub(super) gateway: Option<String>,
    pub(super) _slot: Option<SourceSlot>,
}

/// A TLS link is forwarded unauthenticated (its handshake cannot be read): anyone can
/// open and close one at will, so its access-log lines are budgeted. Authenticated
/// links are logged whole: only a peer that proved the cookie makes them.
static TLS_OPENED: SharedBudget = SharedBudget::new(
    "more TLS links opened than logged (see distgate_dist_connections_active{peer=\"tls\"})",
);
static TLS_CLOSED: SharedBudget = SharedBudget::new(
    "more TLS links closed than logged (see distgate_dist_connections_closed_total{peer=\"tls\"})",
);

/// The link is down: its close counted and logged. The log line is the access log:
/// node, peer, source, bytes each way, duration, who closed it and why.
pub(super) fn link_down(carried: Carried, outcome: &super::Outcome) {
    let Carried {
        handshake_bytes,
        _slot,
        _in_use,
        listed,
    } = carried;
    listed.link.settle();
    let link = listed.link.metrics();
    let reason = close_reason(&outcome.result);
    let closed_by = outcome.closed_by.as_str();
    let bytes = handshake_bytes + outcome.bytes;
    if listed.link.peer() == m::PEER_TLS && !TLS_CLOSED.allow() {
        link.close(reason, closed_by);
        return;
    }
    info!(
        node = link.node(),
        peer = listed.link.peer(),
        source = %listed.source(),
        bytes_from_peer = bytes.from_peer,
        bytes_to_peer = bytes.to_peer,
        duration_ms = link.age().as_millis() as u64,
        closed_by,
        reason,
        error = outcome.result.as_ref().err().map(ToString::to_string),
        "dist connection closed"
    );
    link.close(reason, closed_by);
}

/// The task of one connection to a public port, written by hand rather than as an
/// `async fn`: an open link's task holds it for the link's whole life, and an
/// `async fn` keeps room for its arguments beside the locals they were moved into, at
/// every level. Admission is boxed (it is over once the link is up); an open link
/// holds its forwarder, its [`Bridge`] and its [`Carried`] box, nothing else.
// Carrying is the large variant and the one a task is in for days: boxing it would add
// an allocation per link to save room only while a link is being admitted.
#[allow(clippy::large_enum_variant)]
enum Connection<F> {
    Admitting {
        forwarder: Arc<Forwarder>,
        open: Pin<Box<F>>,
    },
    Carrying {
        forwarder: Arc<Forwarder>,
        open: Open,
    },
    Done,
}

impl<F> Future for Connection<F>
where
    F: Future<Output = Option<(TcpStream, TcpStream, Box<Opened>)>>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match this {
                Connection::Admitting { forwarder, open } => {
                    let Some((peer, node, opened)) = ready!(open.as_mut().poll(cx)) else {
                        *this = Connection::Done;
                        return Poll::Ready(());
                    };
                    let carried = forwarder.link_up(*opened);
                    let link = &carried.listed.link;
                    let bridge = Bridge::new(
                        peer,
                        node,
                        Meter::listed(Arc::clone(link), Way::FromPeer),
                        Meter::listed(Arc::clone(link), Way::ToPeer),
                        Some(forwarder.config.get().linger),
                        &forwarder.engine,
                    );
                    *this = Connection::Carrying {
                        forwarder: Arc::clone(forwarder),
                        open: Open {
                            bridge,
                            carried: Some(carried),
                        },
                    };
                }
                Connection::Carrying { forwarder, open } => {
                    let outcome = ready!(open.bridge.poll(&forwarder.engine, cx));
                    let carried = open.carried.take();
                    // The sockets close before the close is told.
                    *this = Connection::Done;
                    if let Some(carried) = carried {
                        link_down(*carried, &outcome);
                    }
                    return Poll::Ready(());
                }
                Connection::Done => return Poll::Ready(()),
            }
        }
    }
}

/// An open link: its bridge, and what it keeps until its close is told.
struct Open {
    bridge: Bridge,
    /// Taken when the close is told.
    carried: Option<Box<Carried>>,
}

/// A link dropped while open (distgate shutting down past `[shutdown] grace`) still
/// tells its close: the access-log line and the close metrics, `reason` `shutdown`,
/// closed by distgate.
impl Drop for Open {
    fn drop(&mut self) {
        if let Some(carried) = self.carried.take() {
            // Dropped by a panic of its own task rather than by shutdown: an error.
            let why = match std::thread::panicking() {
                true => std::io::Error::other("the link's task failed"),
                false => std::io::Error::other(super::ShutdownCut),
            };
            let outcome = self.bridge.cut(why);
            link_down(*carried, &outcome);
        }
    }
}

/// What a link's task keeps while the link runs, in one box.
#[derive(Debug)]
pub(super) struct Carried {
    /// Bytes passed on during the handshake.
    handshake_bytes: ByteCounts,
    _slot: Option<SourceSlot>,
    /// A routed name's lease, in use while the link is open.
    _in_use: Option<InUse>,
    /// The link's place in the table of open links.
    pub(super) listed: Listed,
}

impl Forwarder {
    /// A forwarder to the destinations of `directory`, moving bytes with `engine`,
    /// listing its links in `links`.
    pub(crate) fn new(
        directory: Arc<Directory>,
        engine: Arc<super::Engine>,
        links: Arc<Links>,
        config: &DistConfig,
        metrics: &MetricsConfig,
        acceptor: Acceptor,
    ) -> Self {
        Forwarder {
            directory,
            engine,
            links,
            config: Live::new(config.clone()),
            guard: Arc::new(Guard::new(limits(config))),
            refusals: Arc::new(Refusals::default()),
            peers: Arc::new(PeerLabels::new(metrics.max_peers, metrics.idle_timeout)),
            acceptor,
            log_unresolved: SharedBudget::new(
                "more upstreams did not resolve than logged \
                 (see distgate_dist_upstream_connect_failures_total)",
            ),
            log_unreachable: SharedBudget::new(
                "more nodes' real ports did not accept than logged \
                 (see distgate_dist_upstream_connect_failures_total)",
            ),
            federation: Live::new(None),
        }
    }

    /// Dials peer gateways with `federation` from now on.
    pub(crate) fn set_federation(&self, federation: Option<Arc<crate::federation::Federation>>) {
        self.federation.set(federation);
    }

    /// What peer gateways are dialled with, if anything.
    pub(super) fn federation(&self) -> Option<Arc<crate::federation::Federation>> {
        (*self.federation.get()).clone()
    }

    /// Puts `config` in force for the connections that come next (a reload); links
    /// already open keep what they started with.
    pub(crate) fn set_config(&self, config: &DistConfig) {
        self.guard.set_limits(limits(config));
        self.config.set(config.clone());
        self.guard.lift_trusted(&config.trusted, Instant::now());
    }

    /// The bans and refusals, for the admin server.
    pub(crate) fn gate(&self) -> super::Gate {
        super::Gate {
            guard: Arc::clone(&self.guard),
            refusals: Arc::clone(&self.refusals),
        }
    }

    /// Closes idle pipes unused for a while, every second until `shutdown`: an idle
    /// pipe holds part of the UID's pipe quota that other sidecars may need.
    pub(crate) async fn trim_pipes(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut every = tokio::time::interval(super::PIPE_IDLE_FOR);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => self.engine.trim(),
            }
        }
    }

    /// Lifts bans that ran out, every few seconds until `shutdown`.
    pub(crate) async fn sweep_bans(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => self.guard.sweep(Instant::now()),
            }
        }
    }

    /// Accepts connections on `listener`, which is bound to public port `public_port`,
    /// until `stop` (shutdown, or a reload that took the port out of the pool).
    /// Connections already forwarded keep going.
    pub(crate) async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        public_port: u16,
        stop: tokio_util::sync::CancellationToken,
    ) {
        // No span for the connection's life: `connection` gives admission one. An open
        // link's lines name their node, peer and source themselves, and a span kept for
        // a link's life is a registry record (about 0.5 KiB) per idle link.
        let span = |_| tracing::Span::none();
        let handle = |client, source| self.connection(client, source, public_port);
        let refusals = Arc::clone(&self.refusals);
        let directory = Arc::clone(&self.directory);
        let on_full = OnFull(Arc::new(move |source: SocketAddr| {
            let node = match directory.destination(public_port) {
                Some(Destination::Local { name, .. } | Destination::Routed { name, .. }) => name,
                None => String::new(),
            };
            refusals.note(source.ip(), &node, None, Reason::MaxConnections);
        }));
        let acceptor = Acceptor {
            shutdown: stop,
            on_full: Some(on_full),
            ..self.acceptor.clone()
        };
        (acceptor)
            .run(listener, |_, _| Admit::Limited, span, handle)
            .await;
    }

    /// The task of one connection to `public_port`: its admission, then its link.
    fn connection(
        self: &Arc<Self>,
        peer: TcpStream,
        source: SocketAddr,
        public_port: u16,
    ) -> impl Future<Output = ()> + Send + 'static {
        let forwarder = Arc::clone(self);
        let admission = info_span!("dist", peer = %source, public_port);
        let open = async move { forwarder.open(peer, source, public_port).await };
        Connection::Admitting {
            forwarder: Arc::clone(self),
            open: Box::pin(open.instrument(admission)),
        }
    }

    /// Where the link goes (to node `name`), connected.
    pub(super) async fn connect_to(
        &self,
        name: &str,
        destination: Destination,
    ) -> Option<(TcpStream, &'static str)> {
        let (target, direction) = match destination {
            Destination::Local { addr, .. } => (addr, DIRECTION),
            Destination::Routed { host, port, .. } => {
                // Boxed: the resolver's future is large.
                match Box::pin(self.directory.resolve(&host)).await {
                    Ok(ip) => (SocketAddr::new(ip, port), GATEWAY_DIRECTION),
                    Err(e) => {
                        if self.log_unresolved.allow() {
                            warn!(node = %name, %host, "upstream does not resolve: {e}");
                        }
                        metrics::counter!(m::DIST_UPSTREAM_FAILURES, "node" => name.to_owned())
                            .increment(1);
                        return None;
                    }
                }
            }
        };
        match self.connect(target).await {
            Ok(node) => Some((node, direction)),
            Err(e) => {
                if self.log_unreachable.allow() {
                    warn!(node = %name, real_port = target.port(), "node's real port did not accept: {e}");
                }
                metrics::counter!(m::DIST_UPSTREAM_FAILURES, "node" => name.to_owned())
                    .increment(1);
                None
            }
        }
    }

    /// The link is up: its metrics open, the opening logged.
    pub(super) fn link_up(&self, opened: Opened) -> Box<Carried> {
        let Opened {
            node,
            source,
            public_port,
            peer_name,
            tls_sni,
            direction,
            handshake_bytes,
            gateway,
            _slot,
        } = opened;
        let peer = match &peer_name {
            // Release clients come and go under new random names: one label for all.
            Some(name) if self.config.get().client_names.matches(name) => {
                PeerLabels::fixed(m::PEER_CLIENT)
            }
            Some(name) => self.peers.label(name),
            None => PeerLabels::fixed(m::PEER_TLS),
        };
        let logged = peer_name.as_deref().unwrap_or(m::PEER_TLS);
        if peer_name.is_some() || TLS_OPENED.allow() {
            info!(%node, peer = logged, %source, public_port, direction, tls_sni, gateway, "dist connection opened");
        }
        let link = m::LinkMeters::open(node, peer, direction);
        link.from_peer.increment(handshake_bytes.from_peer);
        link.to_peer.increment(handshake_bytes.to_peer);
        let _in_use = self.directory.hold(link.node());
        let tls = peer_name.is_none();
        // The peer's name, kept only where its label is not it (past max_peers).
        let unlabelled = peer_name.filter(|name| name != link.peer());
        let listed = self.links.open(NewLink {
            metrics: link,
            unlabelled,
            source,
            public_port,
            tls,
            gateway,
            bytes: handshake_bytes,
        });
        Box::new(Carried {
            handshake_bytes,
            _slot,
            _in_use,
            listed,
        })
    }

    async fn connect(&self, target: SocketAddr) -> std::io::Result<TcpStream> {
        let stream = timeout(
            self.config.get().connect_timeout,
            TcpStream::connect(target),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ports::PortPlan;

    /// Every open connection's task holds this future for the connection's whole life;
    /// it is most of distgate's memory per idle link (BENCHMARKS.md). A large future
    /// on a rare path (the resolver's, once) grew it by 1.1 KiB unnoticed, and so did
    /// an `async` wrapper around it in the accept loop (the whole task counted twice).
    /// As `async fn`s the link's phases held 1,872 bytes (their arguments kept beside
    /// the locals they were moved into, and two directions' waiters); written by hand
    /// (`Connection`, `Bridge`, `Direction`), 336.
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let plan = PortPlan {
            pool: vec![1],
            pins: Default::default(),
            clients: Default::default(),
        };
        let acceptor = Acceptor {
            listener: "dist",
            limit: None,
            shutdown: Default::default(),
            tracker: Default::default(),
            on_full: None,
        };
        let forwarder = Arc::new(Forwarder::new(
            Arc::new(Directory::local(plan)),
            Arc::new(super::super::Engine::new(super::super::Mode::Auto, 1 << 20)),
            Links::new(Duration::from_secs(30)),
            &DistConfig::default(),
            &MetricsConfig::default(),
            acceptor,
        ));
        let admission = crate::limit::Limit::new("dist", 1).admit();
        let span = info_span!("dist", public_port = 1);
        let source = client.local_addr().unwrap();
        let task = crate::accept::hold(forwarder.connection(client, source, 1), admission, span);
        let size = std::mem::size_of_val(&task);
        eprintln!("a connection task: {size} bytes");
        assert!(size <= 384, "a connection's task is {size} bytes");
    }
}
