//! The one accept loop every listener (EPMD, dist, admin) runs: the connection limit,
//! a back-off on accept errors that grows (capped) and resets once an accept works,
//! one tracked task and one tracing span per connection. What a connection is for is
//! the caller's `handle`; this module only accepts. [`is_local`] tells a connection
//! from the pod itself from one from elsewhere.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Span, debug, warn};

use crate::limit::{Admission, Limit};
use crate::log_budget::SharedBudget;
use crate::metrics as m;

/// First wait after an accept error (running out of descriptors, usually).
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// Longest wait between accept errors.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Accept errors of every listener: a peer that holds the descriptors and lets one go
/// at a time makes one per connection (the back-off resets at each accept that works).
static ACCEPT_FAILED: SharedBudget =
    SharedBudget::new("more accepts failed than logged (see distgate_accept_errors_total)");

/// Whether a connection counts against a listener's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// It takes a place under the limit (and is refused when none is left).
    Limited,
    /// It is never refused (the pod's own nodes registering).
    Exempt,
}

/// What an accept loop serves with: its limit, the shutdown that ends it, and the
/// tracker its connection tasks join.
#[derive(Debug, Clone)]
pub(crate) struct Acceptor {
    /// The `listener` label of the limit and the logs.
    pub(crate) listener: &'static str,
    /// `None`: no limit.
    pub(crate) limit: Option<Arc<Limit>>,
    /// Ends the loop; connections already accepted go on.
    pub(crate) shutdown: CancellationToken,
    /// Every connection's task, so that shutdown can wait for them.
    pub(crate) tracker: TaskTracker,
    /// Told of each connection the limit closed (the dist ports note it for
    /// `GET /refusals`).
    pub(crate) on_full: Option<OnFull>,
}

/// What is told the source of a connection closed at the limit.
#[derive(Clone)]
pub(crate) struct OnFull(pub(crate) Arc<dyn Fn(SocketAddr) + Send + Sync>);

impl std::fmt::Debug for OnFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnFull")
    }
}

impl Acceptor {
    /// Accepts on `listener` until shutdown. Each connection that `admit` lets in (and
    /// the limit has room for) runs `handle` in a task of its own, inside `span`.
    pub(crate) async fn run<A, S, H, F>(&self, listener: TcpListener, admit: A, span: S, handle: H)
    where
        A: Fn(&TcpStream, SocketAddr) -> Admit,
        S: Fn(SocketAddr) -> Span,
        H: Fn(TcpStream, SocketAddr) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let accepted = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if ACCEPT_FAILED.allow() {
                        warn!(listener = self.listener, "accept failed: {e}");
                    }
                    ::metrics::counter!(m::ACCEPT_ERRORS).increment(1);
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = next_backoff(backoff);
                    continue;
                }
            };
            backoff = FIRST_BACKOFF;
            let admission = match (&self.limit, admit(&stream, peer)) {
                (Some(limit), Admit::Limited) => match limit.admit() {
                    Some(admission) => Some(admission),
                    None => {
                        debug!(%peer, listener = self.listener, "connection closed: max_connections reached");
                        if let Some(OnFull(note)) = &self.on_full {
                            note(peer);
                        }
                        continue;
                    }
                },
                _ => None,
            };
            self.tracker
                .spawn(hold(handle(stream, peer), admission, span(peer)));
        }
    }
}

/// What a connection's task is: `task` inside `span`, holding `admission` until it ends.
pub(crate) fn hold<F>(task: F, admission: Option<Admission>, span: Span) -> impl Future<Output = ()>
where
    F: Future<Output = ()>,
{
    Holding {
        task,
        _admission: admission,
    }
    .instrument(span)
}

pin_project_lite::pin_project! {
    /// A connection's task and its place under the limit, given back when the task
    /// ends. A struct rather than an `async` block: a block that awaits a future it
    /// captured keeps room for it twice, and this future lives as long as the link.
    struct Holding<F> {
        #[pin]
        task: F,
        _admission: Option<Admission>,
    }
}

impl<F: Future<Output = ()>> Future for Holding<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.project().task.poll(cx)
    }
}

/// The wait after another accept error: doubled, capped.
fn next_backoff(backoff: Duration) -> Duration {
    (backoff * 2).min(MAX_BACKOFF)
}

/// epmd's rule (docs/protocol.md §9): loopback, or the socket's own local address (a
/// sibling container dialling the pod IP).
pub(crate) fn is_local(peer: IpAddr, local: IpAddr) -> bool {
    let peer = peer.to_canonical();
    peer.is_loopback() || peer == local.to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn locality_follows_epmd() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(is_local(ip("127.0.0.1"), ip("127.0.0.1")));
        assert!(is_local(ip("127.9.8.7"), ip("10.0.0.5")));
        assert!(is_local(ip("::1"), ip("::1")));
        assert!(is_local(ip("::ffff:127.0.0.1"), ip("::1")));
        assert!(is_local(ip("10.0.0.5"), ip("10.0.0.5")), "pod IP to itself");
        assert!(is_local(ip("::ffff:10.0.0.5"), ip("10.0.0.5")));
        assert!(!is_local(ip("10.0.0.6"), ip("10.0.0.5")));
        assert!(!is_local(ip("fe80::1"), ip("fe80::2")));
    }

    #[test]
    fn the_backoff_doubles_up_to_its_cap() {
        let mut waits = vec![FIRST_BACKOFF];
        for _ in 0..8 {
            waits.push(next_backoff(*waits.last().unwrap()));
        }
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
    }

    /// A connection past the limit is closed at once; the one admitted runs in a
    /// tracked task that outlives the loop and that shutdown can wait for.
    #[tokio::test]
    async fn the_limit_refuses_and_the_tracker_counts() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = Acceptor {
            listener: "test",
            limit: Some(Arc::new(Limit::new("test", 1))),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            on_full: None,
        };
        let release = CancellationToken::new();
        let serving = {
            let (acceptor, release) = (acceptor.clone(), release.clone());
            tokio::spawn(async move {
                let handle = move |stream: TcpStream, _| {
                    let release = release.clone();
                    async move {
                        release.cancelled().await;
                        drop(stream);
                    }
                };
                acceptor
                    .run(listener, |_, _| Admit::Limited, |_| Span::none(), handle)
                    .await;
            })
        };
        let _held = TcpStream::connect(addr).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while acceptor.tracker.is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "never admitted");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut refused = TcpStream::connect(addr).await.unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(10), refused.read(&mut byte));
        assert_eq!(read.await.unwrap().unwrap(), 0, "not closed at accept");
        assert_eq!(acceptor.tracker.len(), 1);
        acceptor.shutdown.cancel();
        serving.await.unwrap();
        release.cancel();
        acceptor.tracker.close();
        tokio::time::timeout(Duration::from_secs(10), acceptor.tracker.wait())
            .await
            .unwrap();
    }
}
