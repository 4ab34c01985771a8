//! Links across gateways. On the caller's side (A), a public port leased to a name
//! that a `federate` route sends to a peer gateway: admission runs as on any public
//! port, then the link goes to the peer gateway over TLS instead of to a node. On the
//! node's side (B), a peer gateway's request to carry a link: the caller it reports is
//! admitted as on a public port (limits and bans keyed on that source, `allow_peers`
//! before the node is dialled, the handshake followed), then forwarded to where the
//! name lives here. Both ways the bytes are copied (one side is TLS), half-closes
//! passed on, and the link listed with its peer gateway.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tracing::{Instrument, debug, info_span, warn};

use super::admission::Attempt;
use super::guard::SourceSlot;
use super::public::{Forwarder, Opened};
use super::refusals::Reason;
use super::{ByteCounts, ClosedBy, LingerOver, Outcome};
use crate::accept::{Acceptor, Admit};
use crate::directory::Destination;
use crate::federation::wire::{Reply, Request};
use crate::federation::{Federation, Handshake, Peer, Stream};
use crate::handshake::{self, Caller, Peek};
use crate::links::{Link, Way};
use crate::metrics::{self as m, HandshakeResult};
use crate::route::Federate;

/// The `direction` label of links sent to a peer gateway.
pub(crate) const FEDERATION_OUT: &str = "federation_out";
/// The `direction` label of links a peer gateway carried in.
pub(crate) const FEDERATION_IN: &str = "federation_in";

/// Federation connections one source may have in their TLS handshake at once.
pub(super) const HANDSHAKES_PER_SOURCE: usize = 64;

/// Read size of a federated link's copy, each way.
const CHUNK: usize = 64 * 1024;

impl Forwarder {
    /// A: the caller passed admission; its link goes to the peer gateway `peer`.
    /// Runs the link to its end; `None` always (the link never reaches the engine).
    pub(super) async fn carry_out(
        &self,
        mut caller: TcpStream,
        attempt: Attempt,
        slot: Option<SourceSlot>,
        public_port: u16,
        peer: Federate,
    ) -> Option<(TcpStream, TcpStream, Box<Opened>)> {
        let Some(federation) = self.federation() else {
            warn!(node = %attempt.node, "a route federates but `[federation]` has no material; connection closed");
            self.note(&attempt, None, Reason::UpstreamRefused);
            return None;
        };
        let config = self.config.get();
        let addr = match Box::pin(self.directory.resolve(&peer.host)).await {
            Ok(ip) => SocketAddr::new(ip, peer.port),
            Err(e) => {
                warn!(node = %attempt.node, gateway = %peer.identity, host = %peer.host, "peer gateway does not resolve: {e}");
                ::metrics::counter!(m::DIST_UPSTREAM_FAILURES, "node" => attempt.node.clone())
                    .increment(1);
                self.note(&attempt, None, Reason::UpstreamRefused);
                return None;
            }
        };
        let connected = (federation.connect(
            addr,
            &peer,
            &attempt.node,
            attempt.source,
            config.connect_timeout,
        ))
        .await;
        let mut tls = match connected {
            Ok(tls) => tls,
            Err(failure) => {
                debug!(node = %attempt.node, gateway = %peer.identity, ?failure, "peer gateway did not take the link");
                ::metrics::counter!(m::DIST_UPSTREAM_FAILURES, "node" => attempt.node.clone())
                    .increment(1);
                self.note(&attempt, None, Reason::UpstreamRefused);
                return None;
            }
        };
        let _ = caller.set_nodelay(true);
        let gateway = Some(peer.identity.clone());
        let mut opened = attempt.opened(public_port, FEDERATION_OUT, gateway, slot);
        self.authenticate(&attempt, &mut caller, &mut tls, &[], &mut opened)
            .await?;
        let label = peer.identity.clone();
        self.carry(caller, tls, *opened, Way::FromPeer, label).await;
        None
    }

    /// B: serves peer gateways on `listener` until `stop`.
    pub(crate) async fn serve_federation(
        self: Arc<Self>,
        listener: TcpListener,
        federation: Arc<Federation>,
        acceptor: Acceptor,
    ) {
        let span = |source| info_span!("federation", peer = %source);
        let handle = |tcp, source| {
            let forwarder = Arc::clone(&self);
            let federation = Arc::clone(&federation);
            async move { forwarder.federated(federation, tcp, source).await }
        };
        acceptor
            .run(listener, |_, _| Admit::Limited, span, handle)
            .await;
    }

    /// B: one peer gateway's connection, from TLS to its request's end.
    async fn federated(&self, federation: Arc<Federation>, tcp: TcpStream, source: SocketAddr) {
        let prefix = self.handshaking.source(source.ip());
        let Ok(handshaking) = self.handshaking.admit(prefix, Instant::now()) else {
            metrics::counter!(m::CONNECTIONS_REFUSED, "listener" => "federation", "reason" => "per_source")
                .increment(1);
            debug!(%source, "federation connection closed at accept: {HANDSHAKES_PER_SOURCE} from this source in their handshake");
            return;
        };
        let accepted = federation.accept(tcp, source).await;
        drop(handshaking);
        let (mut tls, gateway, request, early) = match accepted {
            Ok(accepted) => accepted,
            Err(refused) => {
                let reason = match refused {
                    Handshake::Untrusted => Reason::FederationUntrusted,
                    Handshake::NotAllowed => Reason::FederationNotAllowed,
                    _ => return,
                };
                self.refusals.note(source.ip(), "", None, reason);
                return;
            }
        };
        match request {
            Request::Ping => {
                let _ = send(&mut tls, &Reply::Ok(None)).await;
            }
            Request::Lookup(name) => {
                let found = Box::pin(self.directory.port_please_here(&name)).await;
                let result = if found.is_some() { "ok" } else { "unknown" };
                ::metrics::counter!(m::FEDERATION_LOOKUPS, "peer" => gateway.label.clone(), "side" => "server", "result" => result)
                    .increment(1);
                let reply = match found {
                    Some(resp) => Reply::Ok(Some(resp.info)),
                    None => Reply::Unknown,
                };
                let _ = send(&mut tls, &reply).await;
            }
            Request::Connect { name, caller } => {
                let link = self.carry_in(tls, gateway, name, caller, early);
                link.instrument(info_span!("dist", peer = %caller)).await;
            }
        }
    }

    /// B: a link the peer gateway `gateway` carries from `caller` to `name`.
    async fn carry_in(
        &self,
        mut tls: Stream,
        gateway: Peer,
        name: String,
        caller: SocketAddr,
        early: Vec<u8>,
    ) {
        let started = Instant::now();
        let destination = match Box::pin(self.directory.port_please_here(&name)).await {
            Some(resp) => self.directory.destination(resp.port),
            None => None,
        };
        // Only a name that lives here, under that name, and is not itself sent on to a
        // peer gateway (a reload may have made its route federate meanwhile).
        let destination = destination.filter(|d| match d {
            Destination::Local { name: there, .. } => *there == name,
            Destination::Routed {
                name: there,
                federate,
                ..
            } => *there == name && federate.is_none(),
        });
        let Some(destination) = destination else {
            debug!(node = %name, gateway = %gateway.identity, "federated link to a name not here");
            metrics::counter!(m::DIST_NO_NODE).increment(1);
            self.refusals.note(caller.ip(), &name, None, Reason::NoNode);
            let _ = send(&mut tls, &Reply::Unknown).await;
            return;
        };
        // The caller's source as the peer gateway reports it: never trusted here (its
        // addresses are another cluster's), limited and banned keyed on the peer
        // gateway and that source together, apart from this cluster's own callers.
        let prefix = self
            .guard
            .source(federated_source(&gateway.identity, caller.ip()));
        let slot = match self.guard.admit(prefix, started) {
            Ok(slot) => Some(slot),
            Err(refusal) => {
                self.refused(&name, caller, refusal);
                let _ = send(&mut tls, &Reply::Refused).await;
                return;
            }
        };
        let attempt = Attempt {
            node: name,
            source: caller,
            prefix,
            trusted: false,
            local: false,
            started,
        };
        if send(&mut tls, &Reply::Ok(None)).await.is_err() {
            return;
        }
        let first = timeout(
            self.config.get().first_frame_timeout,
            first_frame(&mut tls, early),
        )
        .await;
        let (caller_id, early) = match first {
            Err(_) => {
                self.failed::<()>(
                    &attempt,
                    HandshakeResult::Timeout,
                    "no first frame in time",
                    None,
                    Reason::Timeout,
                );
                return;
            }
            Ok(None) => return,
            Ok(Some(first)) => first,
        };
        match &caller_id {
            Caller::Node { name, .. } if !self.allows(name, false) => {
                HandshakeResult::NotAllowed.count(attempt.node.clone());
                self.note(&attempt, Some(name), Reason::NotAllowed);
                let _ = async {
                    tls.write_all(super::admission::NOT_ALLOWED).await?;
                    tls.shutdown().await
                }
                .await;
                if self.guard.may_log(Instant::now()) {
                    let claimed: String = name.chars().take(255).collect();
                    warn!(node = %attempt.node, source = %caller, gateway = %gateway.identity, claimed, "federated dist connection refused: the peer's name matches no `dist.allow_peers` glob (answered not_allowed)");
                }
                return;
            }
            Caller::Node { .. } => {}
            Caller::Tls { .. } | Caller::Unknown => {
                self.failed::<()>(
                    &attempt,
                    HandshakeResult::Failed,
                    "not_a_handshake",
                    None,
                    Reason::NotAHandshake,
                );
                return;
            }
        }
        let Some((mut node, _)) = self.connect_to(&attempt.node, destination).await else {
            self.note(&attempt, caller_id.name(), Reason::UpstreamRefused);
            return;
        };
        // The port the peer gateway dialled: this gateway's federation port.
        let port = tls.get_ref().0.local_addr().map_or(0, |a| a.port());
        let mut opened = attempt.opened(port, FEDERATION_IN, Some(gateway.identity), slot);
        if self
            .authenticate(&attempt, &mut tls, &mut node, &early, &mut opened)
            .await
            .is_none()
        {
            return;
        }
        self.carry(tls, node, *opened, Way::ToPeer, gateway.label)
            .await;
    }

    /// The link is up: listed, counted by peer gateway, its bytes copied both ways
    /// until both sides closed (or one closed and the other did not follow within
    /// `linger`), then told. `to_gateway` is the way whose bytes go to the peer gateway.
    async fn carry<P, N>(&self, peer: P, node: N, opened: Opened, to_gateway: Way, label: String)
    where
        P: AsyncRead + AsyncWrite + Unpin + Send,
        N: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let gateway = label;
        let open =
            OpenGauge::up(::metrics::gauge!(m::FEDERATION_LINKS_OPEN, "peer" => gateway.clone()));
        let carried = self.link_up(opened);
        let link = Arc::clone(&carried.listed.link);
        let linger = self.config.get().linger;
        let sent = ::metrics::counter!(m::FEDERATION_SENT, "peer" => gateway.clone());
        let received = ::metrics::counter!(m::FEDERATION_RECEIVED, "peer" => gateway);
        let (from_peer, to_peer) = match to_gateway {
            Way::FromPeer => (sent, received),
            Way::ToPeer => (received, sent),
        };
        let outcome = bridge(peer, node, &link, [from_peer, to_peer], linger).await;
        drop(open);
        super::public::link_down(*carried, &outcome);
    }
}

/// Where bans and limits key a caller a peer gateway reports: an address of its own
/// (in fd00::/8, one /64 per gateway and caller source), so that one gateway's callers
/// never share a ban with another's or with this cluster's own.
fn federated_source(gateway: &str, caller: IpAddr) -> IpAddr {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(gateway.as_bytes());
    match caller {
        IpAddr::V4(ip) => hash.update(ip.octets()),
        // A caller's IPv6 source is its /64, as on a public port.
        IpAddr::V6(ip) => hash.update(&ip.octets()[..8]),
    }
    let digest = hash.finalize();
    let mut octets = [0u8; 16];
    octets[0] = 0xfd;
    octets[1..8].copy_from_slice(&digest[..7]);
    IpAddr::V6(octets.into())
}

/// Sends `reply` to the peer gateway.
async fn send(tls: &mut Stream, reply: &Reply) -> std::io::Result<()> {
    let sending = async {
        tls.write_all(&reply.encode()).await?;
        tls.flush().await
    };
    // A few bytes into an empty socket: a peer that reads nothing still cannot hold
    // the task past this.
    match timeout(REPLY_TIMEOUT, sending).await {
        Ok(sent) => sent,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// How long a reply to a peer gateway may take to be written.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// B: the caller's first frame, read off the TLS stream after `early` (it cannot be
/// peeked at): who it is and every byte read, to be passed on. `None`: closed first.
async fn first_frame(tls: &mut Stream, mut bytes: Vec<u8>) -> Option<(Caller, Vec<u8>)> {
    let mut chunk = [0u8; 1024];
    loop {
        match handshake::classify(&bytes) {
            Peek::Done(caller) => return Some((caller, bytes)),
            Peek::NeedMore(_) if bytes.len() > handshake::MAX_TLS_RECORD => {
                return Some((Caller::Unknown, bytes));
            }
            Peek::NeedMore(_) => {}
        }
        match tls.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Copies both ways between `peer` and `node`, each way's bytes counted into `link`
/// and `gateway` (from the peer, to the peer); a side's close is passed on as a
/// half-close, and the other side gets `linger` to follow.
async fn bridge<P, N>(
    peer: P,
    node: N,
    link: &Arc<Link>,
    gateway: [::metrics::Counter; 2],
    linger: Duration,
) -> Outcome
where
    P: AsyncRead + AsyncWrite + Unpin + Send,
    N: AsyncRead + AsyncWrite + Unpin + Send,
{
    let [from_peer_gw, to_peer_gw] = gateway;
    let (mut peer_read, mut peer_write) = tokio::io::split(peer);
    let (mut node_read, mut node_write) = tokio::io::split(node);
    let before = (link.from_peer.bytes(), link.to_peer.bytes());
    let up = pump(
        &mut peer_read,
        &mut node_write,
        link,
        Way::FromPeer,
        &from_peer_gw,
    );
    let down = pump(
        &mut node_read,
        &mut peer_write,
        link,
        Way::ToPeer,
        &to_peer_gw,
    );
    tokio::pin!(up, down);
    let (first, sender, rest) = tokio::select! {
        r = &mut up => (r, ClosedBy::Peer, Either::Down),
        r = &mut down => (r, ClosedBy::Node, Either::Up),
    };
    let closed_by = match &first {
        Ok(_) => sender,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => match sender {
            ClosedBy::Peer => ClosedBy::Node,
            _ => ClosedBy::Peer,
        },
        Err(_) => sender,
    };
    let second = match first {
        Err(e) => Err(e),
        Ok(_) => {
            let rest = async {
                match rest {
                    Either::Up => (&mut up).await,
                    Either::Down => (&mut down).await,
                }
            };
            match timeout(linger, rest).await {
                Ok(r) => r.map(|_| ()),
                Err(_) => Err(std::io::Error::other(LingerOver)),
            }
        }
    };
    let bytes = ByteCounts {
        from_peer: link.from_peer.bytes() - before.0,
        to_peer: link.to_peer.bytes() - before.1,
    };
    let closed_by = match &second {
        Err(e) if e.get_ref().is_some_and(|inner| inner.is::<LingerOver>()) => ClosedBy::Distgate,
        _ => closed_by,
    };
    Outcome {
        bytes,
        result: second,
        closed_by,
    }
}

/// `distgate_federation_links_open` for one link: up while it lives, down when it
/// ends, however it ends (a task dropped at the end of the drain included).
struct OpenGauge(::metrics::Gauge);

impl OpenGauge {
    fn up(gauge: ::metrics::Gauge) -> OpenGauge {
        gauge.increment(1.0);
        OpenGauge(gauge)
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

enum Either {
    Up,
    Down,
}

/// One way of a federated link: reads, writes on at once, counts; at the source's end,
/// passes the close on.
async fn pump<R, W>(
    src: &mut R,
    dst: &mut W,
    link: &Link,
    way: Way,
    gateway: &::metrics::Counter,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = src.read(&mut buf).await?;
        if n == 0 {
            return dst.shutdown().await;
        }
        dst.write_all(&buf[..n]).await?;
        dst.flush().await?;
        link.carried(way, n as u64);
        gateway.increment(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reported_caller_is_keyed_with_its_gateway_apart_from_local_sources() {
        let caller: IpAddr = "10.0.0.7".parse().unwrap();
        let a = federated_source("spiffe://a.test/gw", caller);
        assert_ne!(a, caller, "never the cluster's own 10.0.0.7");
        assert_ne!(
            a,
            federated_source("spiffe://c.test/gw", caller),
            "per gateway"
        );
        assert_ne!(
            a,
            federated_source("spiffe://a.test/gw", "10.0.0.8".parse().unwrap())
        );
        assert_eq!(a, federated_source("spiffe://a.test/gw", caller));
        // An IPv6 caller is its /64, as on a public port.
        let one = federated_source("g", "fd00:1:2:3::1".parse().unwrap());
        assert_eq!(
            one,
            federated_source("g", "fd00:1:2:3::ffff".parse().unwrap())
        );
        let IpAddr::V6(v6) = one else { panic!() };
        assert_eq!(v6.octets()[0], 0xfd);
        assert_eq!(&v6.octets()[8..], &[0u8; 8], "one /64 per key");
    }
}
