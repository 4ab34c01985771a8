//! Dist forwarding: accepting on public ports (`public`), admitting peers
//! (`admission`: by source with `guard`, by handshake with `identify` for the first
//! frame and `follow` for the rest, by copy), and moving the bytes of an
//! authenticated link between the peer and the node ([`Engine::proxy_link`], with
//! `linger`; [`Engine::proxy`] without).
//!
//! The engine moves each direction with splice(2) (`splice`) or a buffered copy
//! (`copy`) as `[forward] mode` says, falling back to the copy when no pipe can be
//! made.

mod admission;
mod copy;
mod direction;
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
use std::task::Poll;
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
        self.proxy_link(peer, node, Meter::unlisted(), Meter::unlisted(), None)
            .await
    }

    /// [`Engine::proxy`] for a dist link, counting each direction's bytes into its
    /// meter as they pass: once one side has closed, the other has `linger` (when
    /// given) to finish, then both are closed (OTP never keeps a half-closed link). An
    /// error on either side, or a linger that ran out, closes both with a reset, so a
    /// reset on one side reaches the other as a reset.
    pub(crate) async fn proxy_link(
        &self,
        mut peer: TcpStream,
        mut node: TcpStream,
        from_peer: Meter,
        to_peer: Meter,
        linger: Option<Duration>,
    ) -> Outcome {
        let mut first: Option<ClosedBy> = None;
        let (result, bytes) = {
            let (peer_in, peer_out) = peer.split();
            let (node_in, node_out) = node.split();
            let mut a = Direction::new(peer_in, node_out, from_peer, self.mode);
            let mut b = Direction::new(node_in, peer_out, to_peer, self.mode);
            // Polled by hand, in this one future: it lives as long as the link, and the
            // states of `select!`, `try_join!` or another `async fn` around it would add
            // to every idle link's memory.
            let (mut a_done, mut b_done) = (false, false);
            let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
            let result = std::future::poll_fn(|cx| {
                if !a_done && let Poll::Ready(result) = a.poll(self, cx) {
                    if first.is_none() {
                        first = Some(ClosedBy::from_end(ClosedBy::Peer, &result));
                    }
                    result?;
                    a_done = true;
                }
                if !b_done && let Poll::Ready(result) = b.poll(self, cx) {
                    if first.is_none() {
                        first = Some(ClosedBy::from_end(ClosedBy::Node, &result));
                    }
                    result?;
                    b_done = true;
                }
                if a_done && b_done {
                    return Poll::Ready(Ok(()));
                }
                if let (true, Some(linger)) = (a_done || b_done, linger) {
                    // Boxed: the timer exists only while a link closes.
                    let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(linger)));
                    if timer.as_mut().poll(cx).is_ready() {
                        first = Some(ClosedBy::Distgate);
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            LingerOver,
                        )));
                    }
                }
                Poll::Pending
            })
            .await;
            let bytes = ByteCounts {
                from_peer: a.meter().total(),
                to_peer: b.meter().total(),
            };
            (result, bytes)
        };
        if result.is_err() {
            for stream in [&peer, &node] {
                // Best effort: the socket may be gone already.
                let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
            }
        }
        Outcome {
            bytes,
            result,
            closed_by: first.unwrap_or(ClosedBy::Distgate),
        }
    }

    /// Closes the idle pipes unused for a while and frees the idle bulk buffers
    /// (every second, from the forwarder).
    pub fn trim(&self) {
        self.pipes.trim();
        self.bulk_buffers.clear();
    }
}

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
