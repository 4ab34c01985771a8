//! Dist forwarding: accepting on public ports (`public`), admitting peers
//! (`admission`: by source with `guard`, by handshake with `identify` for the first
//! frame and `follow` for the rest, by copy), and moving the bytes of an
//! authenticated link between the peer and the node ([`Bridge`], with `linger`;
//! [`Engine::proxy`] without).
//!
//! Each direction (`direction`) moves small messages by one read onto the stack and
//! one write, and bulk by splice(2) (`splice`) or a buffered copy (`copy`) as
//! `[forward] mode` says, falling back to the copy when no pipe can be made.

mod admission;
mod copy;
mod direction;
mod federated;
mod follow;
mod guard;
mod identify;
mod pool;
pub(crate) mod public;
mod refusals;
mod splice;

pub use crate::config::Mode;
pub use crate::links::ByteCounts;
pub use splice::{MAX_IDLE_PIPES, NoPipe, PIPE_IDLE_FOR, PipePool};

use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::api::{BanView, RefusalView};
use crate::prefix::Prefix;
use direction::Direction;

/// What the admin server reads and changes of admission: the bans (`GET /bans`,
/// `DELETE /bans`) and the last refusals (`GET /refusals`).
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    guard: Arc<guard::Guard>,
    refusals: Arc<refusals::Refusals>,
}

impl Gate {
    /// The bans in force, newest first.
    pub(crate) fn bans(&self) -> Vec<BanView> {
        self.guard.bans(std::time::Instant::now())
    }

    /// Lifts the bans of `which` (an address or a prefix: the bans on it, within it
    /// or holding it), or every ban: the sources lifted.
    pub(crate) fn lift(&self, which: Option<Prefix>) -> Vec<Prefix> {
        self.guard.lift(which, std::time::Instant::now())
    }

    /// The last refused or failed dist connections, newest first.
    pub(crate) fn refusals(&self) -> Vec<RefusalView> {
        self.refusals.views()
    }

    /// A gate of no forwarder, with the default limits.
    #[cfg(test)]
    pub(crate) fn detached() -> Gate {
        let config = crate::config::DistConfig::default();
        Gate {
            guard: Arc::new(guard::Guard::new(guard::Limits {
                max_per_source: config.max_per_source.get(),
                ipv6_prefix: config.ipv6_prefix,
                ban: config.ban,
            })),
            refusals: Arc::default(),
        }
    }
}

/// What a forwarded stream carried and how it ended.
#[derive(Debug)]
pub struct Outcome {
    /// Bytes moved each way.
    pub bytes: ByteCounts,
    /// `Ok` when both directions ended with EOF; the first error otherwise.
    pub result: io::Result<()>,
    /// Who ended the link.
    pub closed_by: ClosedBy,
}

/// Who ended a link: the side that closed (or reset) first, or distgate when it cut
/// the link (the other side did not follow a close within `linger`). Read from which
/// direction ended first and how: an EOF or a reset is the sending side's, a broken
/// pipe the receiving side's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosedBy {
    /// The peer that connected.
    Peer,
    /// The node (or, through a gateway, its upstream).
    Node,
    /// distgate.
    Distgate,
}

impl ClosedBy {
    /// The `closed_by` label.
    pub fn as_str(self) -> &'static str {
        match self {
            ClosedBy::Peer => "peer",
            ClosedBy::Node => "node",
            ClosedBy::Distgate => "distgate",
        }
    }

    /// Who ended it when the direction from `sender` ended first with `result`.
    fn from_end(sender: ClosedBy, result: &io::Result<()>) -> ClosedBy {
        let other = match sender {
            ClosedBy::Peer => ClosedBy::Node,
            _ => ClosedBy::Peer,
        };
        match result {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => other,
            _ => sender,
        }
    }
}

/// Counts the bytes of one direction: a total for the outcome and, for a listed link,
/// its flow in the table of open links (one relaxed atomic add; the link's metrics are
/// brought up to date from the flow by the table's sweep and at close).
#[derive(Debug)]
pub(crate) struct Meter {
    total: u64,
    link: Option<Arc<crate::links::Link>>,
    way: crate::links::Way,
}

impl Meter {
    /// A meter at 0 that counts nowhere else.
    fn unlisted() -> Meter {
        Meter {
            total: 0,
            link: None,
            way: crate::links::Way::FromPeer,
        }
    }

    /// A meter at 0 that also counts into `way` of `link`.
    pub(crate) fn listed(link: Arc<crate::links::Link>, way: crate::links::Way) -> Meter {
        Meter {
            total: 0,
            link: Some(link),
            way,
        }
    }

    /// Records `n` bytes passed on.
    pub(crate) fn add(&mut self, n: usize) {
        self.total += n as u64;
        if let Some(link) = &self.link {
            link.carried(self.way, n as u64);
        }
    }

    /// Bytes counted so far.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }
}

/// A link's two directions, moving bytes until both have ended: what an open link's
/// task holds for the link's life. A struct polled by hand rather than an `async fn`:
/// an `async fn` keeps its arguments beside the locals they were moved into, and a
/// `select!` or `join!` around the directions adds its own state, each once per idle
/// link.
#[derive(Debug)]
pub(crate) struct Bridge {
    peer: TcpStream,
    node: TcpStream,
    /// From the peer to the node, and back.
    from_peer: Direction,
    to_peer: Direction,
    from_peer_done: bool,
    to_peer_done: bool,
    /// Whether the node's direction went first in the last poll.
    node_first: bool,
    /// Once one side has closed, how long the other has to follow (`None`: for ever).
    linger: Option<Duration>,
    /// Boxed: the timer exists only while a link closes.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    first: Option<ClosedBy>,
}

impl Bridge {
    /// The bridge between `peer` and `node`, counting each way into its meter, moving
    /// bytes as `engine` does. With `linger`, once one side has closed the other has
    /// that long to finish, then both are closed (OTP never keeps a half-closed link).
    pub(crate) fn new(
        peer: TcpStream,
        node: TcpStream,
        from_peer: Meter,
        to_peer: Meter,
        linger: Option<Duration>,
        engine: &Engine,
    ) -> Bridge {
        Bridge {
            peer,
            node,
            from_peer: Direction::new(from_peer, engine.mode),
            to_peer: Direction::new(to_peer, engine.mode),
            from_peer_done: false,
            to_peer_done: false,
            node_first: true,
            linger,
            timer: None,
            first: None,
        }
    }

    /// Moves bytes with `engine` (always the same one) until both directions have
    /// ended, one failed or the linger ran out. An error, or a linger that ran out,
    /// closes both sockets with a reset when the bridge is dropped, so a reset on one
    /// side reaches the other as a reset. Not to be polled once it returned `Ready`.
    pub(crate) fn poll(&mut self, engine: &Engine, cx: &mut Context<'_>) -> Poll<Outcome> {
        let result = match self.poll_directions(engine, cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(result) => result,
        };
        Poll::Ready(self.outcome(result))
    }

    /// The link cut by distgate while open, for `why` (at shutdown: [`ShutdownCut`]):
    /// both sockets reset when the bridge is dropped; what it carried so far.
    pub(crate) fn cut(&mut self, why: io::Error) -> Outcome {
        self.first = Some(ClosedBy::Distgate);
        self.outcome(Err(why))
    }

    /// How the link ended with `result`; on an error both sockets are set to reset.
    fn outcome(&mut self, result: io::Result<()>) -> Outcome {
        if result.is_err() {
            for stream in [&self.peer, &self.node] {
                // Best effort: the socket may be gone already.
                let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
            }
        }
        Outcome {
            bytes: ByteCounts {
                from_peer: self.from_peer.meter().total(),
                to_peer: self.to_peer.meter().total(),
            },
            result,
            closed_by: self.first.unwrap_or(ClosedBy::Distgate),
        }
    }

    fn poll_directions(&mut self, engine: &Engine, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (mut peer_in, mut peer_out) = self.peer.split();
        let (mut node_in, mut node_out) = self.node.split();
        // The two directions take turns going first: one whose source never runs dry
        // would otherwise spend the task's budget on every poll, and the other, ticks
        // included, would wait.
        self.node_first = !self.node_first;
        for node_side in [self.node_first, !self.node_first] {
            let (done, direction, src, dst, sender) = match node_side {
                false => (
                    &mut self.from_peer_done,
                    &mut self.from_peer,
                    &mut peer_in,
                    &mut node_out,
                    ClosedBy::Peer,
                ),
                true => (
                    &mut self.to_peer_done,
                    &mut self.to_peer,
                    &mut node_in,
                    &mut peer_out,
                    ClosedBy::Node,
                ),
            };
            if !*done && let Poll::Ready(result) = direction.poll(src, dst, engine, cx) {
                if self.first.is_none() {
                    self.first = Some(ClosedBy::from_end(sender, &result));
                }
                result?;
                *done = true;
            }
        }
        if self.from_peer_done && self.to_peer_done {
            return Poll::Ready(Ok(()));
        }
        if let (true, Some(linger)) = (self.from_peer_done || self.to_peer_done, self.linger) {
            let timer = (self.timer).get_or_insert_with(|| Box::pin(tokio::time::sleep(linger)));
            if timer.as_mut().poll(cx).is_ready() {
                self.first = Some(ClosedBy::Distgate);
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, LingerOver)));
            }
        }
        Poll::Pending
    }
}

/// Moves stream bytes; shared by every connection.
#[derive(Debug)]
pub struct Engine {
    mode: Mode,
    pipes: splice::PipePool,
    buffers: copy::BufferPool,
    /// For bulk moved by copy where no pipe could be had.
    bulk_buffers: copy::BufferPool,
}

impl Engine {
    /// An engine moving bytes by `mode`, with pipes of `pipe_size` bytes.
    pub fn new(mode: Mode, pipe_size: usize) -> Engine {
        Engine {
            mode,
            pipes: splice::PipePool::new(pipe_size, copy::BUFFER_SIZE),
            buffers: copy::BufferPool::default(),
            bulk_buffers: copy::BufferPool::bulk(),
        }
    }

    /// How it moves bytes.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The pool of pipes (for tests and metrics).
    pub fn pipes(&self) -> &splice::PipePool {
        &self.pipes
    }

    /// Forwards both directions until both have ended. EOF on one side is passed on as
    /// a half-close of the other (the other direction keeps flowing); an error on either
    /// side ends both, and both sockets close when this returns. No idle timeout: dist
    /// links are quiet but for ticks and live for days.
    pub async fn proxy(&self, peer: TcpStream, node: TcpStream) -> Outcome {
        let mut bridge = Bridge::new(peer, node, Meter::unlisted(), Meter::unlisted(), None, self);
        std::future::poll_fn(|cx| bridge.poll(self, cx)).await
    }

    /// Closes the idle pipes unused for a while and frees the idle bulk buffers
    /// (every second, from the forwarder).
    pub fn trim(&self) {
        self.pipes.trim();
        self.bulk_buffers.clear();
    }
}

/// The error of a link distgate cut at shutdown, `[shutdown] grace` having run out
/// while it was open.
#[derive(Debug, thiserror::Error)]
#[error("distgate shut down with the link open (`shutdown.grace` ran out)")]
pub struct ShutdownCut;

/// The error of a link closed because its other side did not follow a close within
/// `[dist] linger`.
#[derive(Debug, thiserror::Error)]
#[error("the other side was still open `linger` after one side closed")]
pub struct LingerOver;

/// Counted, and logged at debug: the pool warns once when the quota is the cause.
pub(super) fn no_pipe(e: &splice::NoPipe) {
    ::metrics::counter!(crate::metrics::SPLICE_COPY_FALLBACKS).increment(1);
    tracing::debug!("no pipe for splice ({e}); this burst moves by copy");
}

pub(super) fn half_close(stream: &TcpStream) -> io::Result<()> {
    match socket2::SockRef::from(stream).shutdown(Shutdown::Write) {
        // The peer may already be gone; the other direction reports that.
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream as StdStream};

    use super::*;

    /// A connected pair of loopback sockets: (the accepted end, the dialling end).
    fn pair() -> (StdStream, StdStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let dialled = StdStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        for s in [&accepted, &dialled] {
            s.set_nodelay(true).unwrap();
        }
        (accepted, dialled)
    }

    fn nonblocking(stream: StdStream) -> TcpStream {
        stream.set_nonblocking(true).unwrap();
        TcpStream::from_std(stream).unwrap()
    }

    /// Small messages through a link, in every mode, allocate nothing in distgate's
    /// thread once the link is up: no buffer, waker, span, log line, metric or channel
    /// per message.
    #[test]
    fn a_small_message_allocates_nothing() {
        const WARM: u64 = 10;
        const MEASURED: u64 = 1_000;
        for mode in [Mode::Auto, Mode::Copy, Mode::Splice] {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _entered = rt.enter();
            let (peer, mut client) = pair();
            let (mut node, to_node) = pair();
            let engine = Engine::new(mode, 1 << 20);
            let (peer, to_node) = (nonblocking(peer), nonblocking(to_node));
            let mut bridge = Bridge::new(
                peer,
                to_node,
                Meter::unlisted(),
                Meter::unlisted(),
                None,
                &engine,
            );
            // The node echoes 64-byte messages; the peer sends one and waits for it.
            let echo = std::thread::spawn(move || {
                let mut message = [0u8; 64];
                while node.read_exact(&mut message).is_ok() {
                    node.write_all(&message).unwrap();
                }
            });
            let peer_side = std::thread::spawn(move || {
                let mut message = [7u8; 64];
                for _ in 0..WARM + MEASURED {
                    client.write_all(&message).unwrap();
                    client.read_exact(&mut message).unwrap();
                }
                client
            });
            let mut until = |messages: u64| {
                rt.block_on(std::future::poll_fn(|cx| {
                    if let Poll::Ready(outcome) = bridge.poll(&engine, cx) {
                        panic!("the link ended: {outcome:?}");
                    }
                    match bridge.to_peer.meter().total() >= messages * 64 {
                        true => Poll::Ready(()),
                        false => Poll::Pending,
                    }
                }))
            };
            until(WARM);
            // With a subscriber that takes every level and a metrics recorder, so a
            // span, a log line or a metric per message would show as allocations.
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_writer(std::io::sink)
                .finish();
            let allocated = tracing::subscriber::with_default(subscriber, || {
                ::metrics::with_local_recorder(&recorder, || {
                    allocation_counter::measure(|| until(WARM + MEASURED))
                })
            });
            assert_eq!(
                (allocated.count_total, allocated.bytes_total),
                (0, 0),
                "{mode:?}: {MEASURED} round trips allocated"
            );
            drop(peer_side.join().unwrap());
            drop(bridge);
            echo.join().unwrap();
        }
    }
}
