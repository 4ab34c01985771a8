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

/// Counts the bytes of one direction: a total for the outcome, and either a live
/// counter or a listed link (its metrics and its flow in the table of open links).
#[derive(Debug)]
pub struct Meter {
    total: u64,
    into: Into,
}

#[derive(Debug)]
enum Into {
    Counter(metrics::Counter),
    Link(Arc<crate::links::Link>, crate::links::Way),
}

impl Meter {
    /// A meter at 0 that also counts into `live`.
    pub fn new(live: metrics::Counter) -> Meter {
        Meter {
            total: 0,
            into: Into::Counter(live),
        }
    }

    /// A meter at 0 that also counts into `way` of `link`.
    pub(crate) fn listed(link: Arc<crate::links::Link>, way: crate::links::Way) -> Meter {
        Meter {
            total: 0,
            into: Into::Link(link, way),
        }
    }

    /// Records `n` bytes passed on.
    pub fn add(&mut self, n: usize) {
        self.total += n as u64;
        match &self.into {
            Into::Counter(live) => live.increment(n as u64),
            Into::Link(link, way) => link.carried(*way, n as u64),
        }
    }

    /// Bytes counted so far.
    pub fn total(&self) -> u64 {
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
        let noop = || Meter::new(metrics::Counter::noop());
        self.proxy_metered(peer, node, noop(), noop()).await
    }

    /// [`Engine::proxy`], counting each direction's bytes live as they pass.
    pub async fn proxy_metered(
        &self,
        peer: TcpStream,
        node: TcpStream,
        from_peer: Meter,
        to_peer: Meter,
    ) -> Outcome {
        self.proxy_link(peer, node, from_peer, to_peer, None).await
    }

    /// [`Engine::proxy_metered`] for a dist link: once one side has closed, the other
    /// has `linger` (when given) to finish, then both are closed (OTP never keeps a
    /// half-closed link). An error on either side, or a linger that ran out, closes
    /// both with a reset, so a reset on one side reaches the other as a reset.
    pub async fn proxy_link(
        &self,
        peer: TcpStream,
        node: TcpStream,
        mut from_peer: Meter,
        mut to_peer: Meter,
        linger: Option<Duration>,
    ) -> Outcome {
        let mut first: Option<ClosedBy> = None;
        let result = {
            let a = self.direction(&peer, &node, &mut from_peer);
            let b = self.direction(&node, &peer, &mut to_peer);
            tokio::pin!(a, b);
            // Polled by hand, in this one future: it lives as long as the link, and the
            // states of `select!`, `try_join!` or another `async fn` around it would add
            // to every idle link's memory.
            let (mut a_done, mut b_done) = (false, false);
            let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
            std::future::poll_fn(|cx| {
                if !a_done && let Poll::Ready(result) = a.as_mut().poll(cx) {
                    if first.is_none() {
                        first = Some(ClosedBy::from_end(ClosedBy::Peer, &result));
                    }
                    result?;
                    a_done = true;
                }
                if !b_done && let Poll::Ready(result) = b.as_mut().poll(cx) {
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
            .await
        };
        if result.is_err() {
            for stream in [&peer, &node] {
                // Best effort: the socket may be gone already.
                let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
            }
        }
        Outcome {
            bytes: ByteCounts {
                from_peer: from_peer.total(),
                to_peer: to_peer.total(),
            },
            result,
            closed_by: first.unwrap_or(ClosedBy::Distgate),
        }
    }

    /// One direction: all of `src` into `dst`, then a half-close of `dst`.
    async fn direction(
        &self,
        src: &TcpStream,
        dst: &TcpStream,
        count: &mut Meter,
    ) -> io::Result<()> {
        use copy::Until;
        let (buffers, pipes) = (&self.buffers, &self.pipes);
        match self.mode {
            Mode::Copy => {
                copy::pump(buffers, src, dst, count, Until::Eof).await?;
            }
            Mode::Splice => {
                if let splice::End::NoPipe(e) = splice::pump(pipes, src, dst, count, false).await? {
                    no_pipe(&e);
                    copy::pump(buffers, src, dst, count, Until::Eof).await?;
                }
            }
            Mode::Auto => loop {
                if copy::pump(buffers, src, dst, count, Until::Bulk).await? == copy::End::Eof {
                    break;
                }
                match splice::pump(pipes, src, dst, count, true).await? {
                    splice::End::Eof => break,
                    splice::End::Idle => {}
                    // This burst goes by copy; the next one asks for a pipe again.
                    splice::End::NoPipe(e) => {
                        no_pipe(&e);
                        let bulk = &self.bulk_buffers;
                        let end = copy::pump(bulk, src, dst, count, Until::Idle).await?;
                        if end == copy::End::Eof {
                            break;
                        }
                    }
                }
            },
        }
        half_close(dst)
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
fn no_pipe(e: &splice::NoPipe) {
    ::metrics::counter!(crate::metrics::SPLICE_COPY_FALLBACKS).increment(1);
    tracing::debug!("no pipe for splice ({e}); this burst moves by copy");
}

fn half_close(stream: &TcpStream) -> io::Result<()> {
    match socket2::SockRef::from(stream).shutdown(Shutdown::Write) {
        // The peer may already be gone; the other direction reports that.
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        other => other,
    }
}
