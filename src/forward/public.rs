//! Public dist ports: a connection to one is forwarded to where the directory says the
//! port goes (a local node's real port over loopback, or a routed name's upstream). A
//! port nobody holds closes the connection at once.
//!
//! Nothing unauthenticated reaches a node unchecked: a caller must not be banned or
//! over `max_per_source`, must send its first frame within `first_frame_timeout`, be
//! allowed by `allow_peers` (before the node is even connected to), and finish the
//! handshake within `handshake_timeout`, the bytes following it by copy. Only then is
//! the link labelled with the caller's name and moved to the engine (splice). TLS
//! links pass untouched after their ClientHello.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tracing::{debug, info, info_span, warn};

use super::follow::{Followed, Moved, follow};
use super::guard::{Guard, Refusal, SourceSlot};
use super::identify::{FirstFrame, identify};
use crate::accept::{Acceptor, Admit, is_local};
use crate::config::{DistConfig, MetricsConfig};
use crate::directory::{Destination, Directory, InUse};
use crate::handshake::Caller;
use crate::handshake::follow::Handshake;
use crate::links::{Links, Listed, NewLink, Way};
use crate::live::Live;
use crate::metrics::{self as m, HandshakeResult, PeerLabels};

/// The `direction` label of connections that come in on a public port for a local node.
pub(crate) const DIRECTION: &str = "inbound";
/// The `direction` label of connections forwarded to a routed name's upstream.
pub(crate) const GATEWAY_DIRECTION: &str = "gateway";
/// Longest claimed name written to a log line.
const MAX_LOGGED_NAME: usize = 255;

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
        Err(e) => match e.kind() {
            ConnectionReset | ConnectionAborted | BrokenPipe => "reset",
            TimedOut => "timeout",
            _ => "error",
        },
    }
}

/// Accepts on the public dist ports and forwards to where each port goes.
#[derive(Debug)]
pub(crate) struct Forwarder {
    directory: Arc<Directory>,
    engine: Arc<super::Engine>,
    links: Arc<Links>,
    /// `[dist]` as in force now (a reload replaces it; `listen`, `ports` and `pins`
    /// are not read here).
    config: Live<DistConfig>,
    guard: Arc<Guard>,
    peers: Arc<PeerLabels>,
    acceptor: Acceptor,
}

/// A link whose caller has proved itself (or speaks TLS), ready for the engine.
#[derive(Debug)]
struct Opened {
    node: String,
    /// The caller's address.
    source: SocketAddr,
    /// The authenticated caller's name; `None` for TLS.
    caller: Option<String>,
    tls_sni: Option<String>,
    direction: &'static str,
    moved: Moved,
    _slot: Option<SourceSlot>,
}

/// The link is down: its close counted and logged. The log line is the access log:
/// node, peer, source, bytes each way, duration, who closed it and why.
fn link_down(carried: Carried, outcome: &super::Outcome) {
    let Carried {
        moved,
        _slot,
        _in_use,
        listed,
    } = carried;
    let link = listed.link.metrics();
    let reason = close_reason(&outcome.result);
    let closed_by = outcome.closed_by.as_str();
    info!(
        node = link.node(),
        peer = listed.link.peer(),
        source = %listed.source(),
        bytes_from_peer = outcome.to_upstream + moved.to_node,
        bytes_to_peer = outcome.to_client + moved.to_caller,
        duration_ms = link.age().as_millis() as u64,
        closed_by,
        reason,
        error = outcome.result.as_ref().err().map(ToString::to_string),
        "dist connection closed"
    );
    link.close(reason, closed_by);
}

/// What a link's task keeps while the link runs, in one box.
#[derive(Debug)]
struct Carried {
    moved: Moved,
    _slot: Option<SourceSlot>,
    /// A routed name's lease, in use while the link is open.
    _in_use: Option<InUse>,
    /// The link's place in the table of open links.
    listed: Listed,
}

/// One connection on its way in: where it goes, where it came from.
#[derive(Debug)]
struct Attempt {
    node: String,
    source: SocketAddr,
    /// A `[dist] trusted` source: never banned nor limited per source.
    trusted: bool,
    started: Instant,
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
            guard: Arc::new(Guard::new(config.max_per_source.get(), config.ban.clone())),
            peers: Arc::new(PeerLabels::new(metrics.max_peers, metrics.idle_timeout)),
            acceptor,
        }
    }

    /// Puts `config` in force for the connections that come next (a reload); links
    /// already open keep what they started with.
    pub(crate) fn set_config(&self, config: &DistConfig) {
        (self.guard).set_limits(config.max_per_source.get(), config.ban.clone());
        self.config.set(config.clone());
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
        let span = |peer: SocketAddr| info_span!("dist", %peer, public_port);
        let handle = |client, source| self.connection(client, source, public_port);
        let acceptor = Acceptor {
            shutdown: stop,
            ..self.acceptor.clone()
        };
        (acceptor)
            .run(listener, |_, _| Admit::Limited, span, handle)
            .await;
    }

    /// The task of one connection to `public_port`.
    fn connection(
        self: &Arc<Self>,
        client: TcpStream,
        source: SocketAddr,
        public_port: u16,
    ) -> impl Future<Output = ()> + Send + 'static {
        let forwarder = Arc::clone(self);
        async move { forwarder.handle(client, source, public_port).await }
    }

    async fn handle(&self, client: TcpStream, source: SocketAddr, public_port: u16) {
        // Boxed: the handshake phase is over once the link is up, and every open
        // link's task would otherwise carry its size for the link's whole life.
        if let Some((client, upstream, opened)) =
            Box::pin(self.open(client, source, public_port)).await
        {
            self.carry(client, upstream, opened).await;
        }
    }

    /// Everything before the link is up: admission, the first frame, the allow-list,
    /// the connection to the node and the handshake. `None`: closed, counted, logged.
    async fn open(
        &self,
        client: TcpStream,
        source: SocketAddr,
        public_port: u16,
    ) -> Option<(TcpStream, TcpStream, Box<Opened>)> {
        let (attempt, destination, slot) = self.admit(&client, source, public_port)?;
        let caller = match timeout(self.config.get().first_frame_timeout, identify(&client)).await {
            Err(_) => {
                return self.failed(
                    &attempt,
                    HandshakeResult::Timeout,
                    "no first frame in time",
                    None,
                );
            }
            Ok(FirstFrame::Silent) => {
                debug!("closed before its first byte");
                return None;
            }
            Ok(FirstFrame::Caller(caller)) => caller,
        };
        match &caller {
            Caller::Unknown => {
                return self.failed(&attempt, HandshakeResult::Failed, "not_a_handshake", None);
            }
            Caller::Node { name, .. } if !self.config.get().allow_peers.allows(name) => {
                return self.failed(
                    &attempt,
                    HandshakeResult::NotAllowed,
                    "not_in_allow_peers",
                    Some(name),
                );
            }
            _ => {}
        }
        let (upstream, direction) = self.connect_to(&attempt.node, destination).await?;
        // Dist traffic is small frames and ticks; OTP sets nodelay on its own sockets.
        if let Err(e) = client.set_nodelay(true) {
            debug!("TCP_NODELAY on the client socket: {e}");
        }
        let mut opened = Box::new(Opened {
            node: attempt.node.clone(),
            source: attempt.source,
            caller: None,
            tls_sni: None,
            direction,
            moved: Moved::default(),
            _slot: slot,
        });
        match caller {
            Caller::Tls { sni } => opened.tls_sni = sni,
            _ => {
                self.authenticate(&attempt, &client, &upstream, &mut opened)
                    .await?
            }
        }
        Some((client, upstream, opened))
    }

    /// Where `public_port` goes, and whether its source may connect now.
    fn admit(
        &self,
        client: &TcpStream,
        source: SocketAddr,
        public_port: u16,
    ) -> Option<(Attempt, Destination, Option<SourceSlot>)> {
        let started = Instant::now();
        let Some(destination) = self.directory.destination(public_port) else {
            debug!("no node holds this public port; connection closed");
            metrics::counter!(m::DIST_NO_NODE).increment(1);
            return None;
        };
        let node = match &destination {
            Destination::Local { name, .. } | Destination::Routed { name, .. } => name.clone(),
        };
        let trusted = client.local_addr().is_ok_and(|local| {
            (self.config.get().trusted).allows(source.ip(), is_local(source.ip(), local.ip()))
        });
        let slot = match trusted {
            true => None,
            false => match self.guard.admit(source.ip(), started) {
                Ok(slot) => Some(slot),
                Err(refusal) => {
                    self.refused(&node, refusal);
                    return None;
                }
            },
        };
        let attempt = Attempt {
            node,
            source,
            trusted,
            started,
        };
        Some((attempt, destination, slot))
    }

    /// Follows the handshake until the node's ack (`Some`, counted `ok`, the caller's
    /// name in `opened`) or its end without one (`None`, counted and judged).
    async fn authenticate(
        &self,
        attempt: &Attempt,
        client: &TcpStream,
        upstream: &TcpStream,
        opened: &mut Opened,
    ) -> Option<()> {
        let mut handshake = Handshake::new();
        let left = (self.config.get().handshake_timeout).saturating_sub(attempt.started.elapsed());
        let followed = timeout(
            left,
            follow(client, upstream, &mut handshake, &mut opened.moved),
        )
        .await;
        let claimed = handshake.caller().and_then(Caller::name);
        let node = attempt.node.clone();
        match followed {
            Err(_) => self.failed(
                attempt,
                HandshakeResult::Timeout,
                "handshake_timeout",
                claimed,
            ),
            Ok(Followed::Failed {
                reason,
                against_caller: false,
            }) => {
                HandshakeResult::Withdrawn.count(node);
                match handshake.awaiting_reply_from() {
                    // The one silent failure of a misnamed node: say it where it shows.
                    Some(node_name) if self.guard.may_log(Instant::now()) => {
                        let claimed = claimed
                            .map(|name| name.chars().take(MAX_LOGGED_NAME).collect::<String>());
                        warn!(
                            node = %attempt.node, source = %attempt.source, claimed, node_name,
                            "the caller hung up on the node's challenge: it most likely dialled \
                             the node by another host part than `node_name`, the node's own \
                             name; peers must use that name exactly (`distgate probe NAME` from \
                             a peer shows the mismatch)"
                        );
                    }
                    _ => debug!(claimed, reason, "dist handshake called off before the ack"),
                }
                None
            }
            Ok(Followed::Failed { reason, .. }) => {
                self.failed(attempt, HandshakeResult::Failed, reason, claimed)
            }
            Ok(Followed::Authenticated) => {
                HandshakeResult::Ok.count(node);
                opened.caller = claimed.map(str::to_owned);
                Some(())
            }
        }
    }

    /// Where the link goes, connected.
    async fn connect_to(
        &self,
        node: &str,
        destination: Destination,
    ) -> Option<(TcpStream, &'static str)> {
        let (target, direction) = match destination {
            Destination::Local { addr, .. } => (addr, DIRECTION),
            Destination::Routed { host, port, .. } => {
                // Boxed: the resolver's future is large.
                match Box::pin(self.directory.resolve(&host)).await {
                    Ok(ip) => (SocketAddr::new(ip, port), GATEWAY_DIRECTION),
                    Err(e) => {
                        warn!(%node, %host, "upstream does not resolve: {e}");
                        metrics::counter!(m::DIST_UPSTREAM_FAILURES, "node" => node.to_owned())
                            .increment(1);
                        return None;
                    }
                }
            }
        };
        match self.connect(target).await {
            Ok(upstream) => Some((upstream, direction)),
            Err(e) => {
                warn!(%node, real_port = target.port(), "node's real port did not accept: {e}");
                metrics::counter!(m::DIST_UPSTREAM_FAILURES, "node" => node.to_owned())
                    .increment(1);
                None
            }
        }
    }

    /// The link, from authentication to close.
    async fn carry(&self, client: TcpStream, upstream: TcpStream, opened: Box<Opened>) {
        // Every byte a link's task keeps for the link's life counts once per idle link
        // (BENCHMARKS.md): what the link needs sits in one box, its names held once,
        // and the logs are written outside the task's state.
        let carried = self.link_up(*opened);
        let outcome = self
            .engine
            .proxy_link(
                client,
                upstream,
                super::Meter::listed(Arc::clone(&carried.listed.link), Way::FromPeer),
                super::Meter::listed(Arc::clone(&carried.listed.link), Way::ToPeer),
                Some(self.config.get().linger),
            )
            .await;
        link_down(*carried, &outcome);
    }

    /// The link is up: its metrics open, the opening logged.
    fn link_up(&self, opened: Opened) -> Box<Carried> {
        let Opened {
            node,
            source,
            caller,
            tls_sni,
            direction,
            moved,
            _slot,
        } = opened;
        let peer = match &caller {
            // Release clients come and go under new random names: one label for all.
            Some(name) if self.config.get().client_names.matches(name) => {
                PeerLabels::fixed(m::PEER_CLIENT)
            }
            Some(name) => self.peers.label(name),
            None => PeerLabels::fixed(m::PEER_TLS),
        };
        let peer_name = caller.as_deref().unwrap_or(m::PEER_TLS);
        info!(%node, peer = peer_name, direction, tls_sni, "dist connection opened");
        let link = m::Link::open(node, peer, direction);
        link.received.increment(moved.to_node);
        link.sent.increment(moved.to_caller);
        let _in_use = self.directory.hold(link.node());
        let tls = caller.is_none();
        // The caller's name, kept only where its label is not it (past max_peers).
        let unlabelled = caller.filter(|name| name != link.peer());
        let listed = self.links.open(NewLink {
            metrics: link,
            unlabelled,
            source,
            tls,
            moved: (moved.to_node, moved.to_caller),
        });
        Box::new(Carried {
            moved,
            _slot,
            _in_use,
            listed,
        })
    }

    /// A connection closed at accept by the source guard.
    fn refused(&self, node: &str, refusal: Refusal) {
        let reason = refusal.reason();
        metrics::counter!(m::CONNECTIONS_REFUSED, "listener" => "dist", "reason" => reason)
            .increment(1);
        if refusal == Refusal::Banned {
            HandshakeResult::Banned.count(node.to_owned());
        }
        debug!(reason, "dist connection closed at accept");
    }

    /// A handshake that did not authenticate, for a reason against the caller:
    /// counted, logged (rate-limited), and counted towards a ban of its source unless
    /// the source is trusted.
    fn failed<T>(
        &self,
        attempt: &Attempt,
        result: HandshakeResult,
        reason: &'static str,
        claimed: Option<&str>,
    ) -> Option<T> {
        let (node, source) = (&attempt.node, attempt.source);
        result.count(node.clone());
        let now = Instant::now();
        if self.guard.may_log(now) {
            let claimed =
                claimed.map(|name| name.chars().take(MAX_LOGGED_NAME).collect::<String>());
            let result = result.label();
            warn!(%node, %source, claimed, result, reason, "dist handshake failed; connection closed");
        }
        if !attempt.trusted {
            self.guard.failed(source.ip(), now);
        }
        None
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
        assert!(size <= 2048, "a connection's task is {size} bytes");
    }
}
