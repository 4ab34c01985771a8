//! Public dist ports: a connection to one is forwarded to the real port of the node
//! that holds it, over loopback. A port no node holds closes the connection at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::metrics as m;
use crate::registry::Registry;

/// Accepts on the public dist ports and forwards to the nodes holding them.
pub struct Forwarder {
    registry: Arc<Registry>,
    engine: Arc<super::Engine>,
    connect_timeout: Duration,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Forwarder {
    pub fn new(
        registry: Arc<Registry>,
        engine: Arc<super::Engine>,
        connect_timeout: Duration,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Self {
        Forwarder {
            registry,
            engine,
            connect_timeout,
            shutdown,
            tracker,
        }
    }

    /// Accepts connections on `listener`, which is bound to public port `public_port`,
    /// until shutdown. Connections already forwarded keep going.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, public_port: u16) {
        loop {
            let accepted = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((client, peer)) => {
                    let forwarder = Arc::clone(&self);
                    let span = info_span!("dist", %peer, public_port);
                    self.tracker.spawn(
                        async move { forwarder.handle(client, public_port).await }.instrument(span),
                    );
                }
                Err(e) => crate::accept_backoff(&e, &self.shutdown).await,
            }
        }
    }

    async fn handle(&self, client: TcpStream, public_port: u16) {
        let Some((node, target)) = self.registry.target_of(public_port) else {
            debug!("no node holds this public port; connection closed");
            metrics::counter!(m::DIST_NO_NODE).increment(1);
            return;
        };
        let upstream = match self.connect(target).await {
            Ok(upstream) => upstream,
            Err(e) => {
                warn!(%node, real_port = target.port(), "node's real port did not accept: {e}");
                metrics::counter!(m::DIST_UPSTREAM_FAILURES).increment(1);
                return;
            }
        };
        // Dist traffic is small frames and ticks; OTP sets nodelay on its own sockets.
        if let Err(e) = client.set_nodelay(true) {
            debug!("TCP_NODELAY on the client socket: {e}");
        }
        let started = Instant::now();
        info!(%node, real_port = target.port(), "dist connection opened");
        metrics::counter!(m::DIST_CONNECTIONS).increment(1);
        metrics::gauge!(m::DIST_ACTIVE).increment(1);
        let outcome = self.engine.proxy(client, upstream).await;
        metrics::gauge!(m::DIST_ACTIVE).decrement(1);
        let reason = match &outcome.result {
            Ok(()) => "closed".to_string(),
            Err(e) => e.to_string(),
        };
        info!(
            %node,
            bytes_to_node = outcome.to_upstream,
            bytes_from_node = outcome.to_client,
            duration_ms = started.elapsed().as_millis() as u64,
            %reason,
            "dist connection closed"
        );
    }

    async fn connect(&self, target: SocketAddr) -> std::io::Result<TcpStream> {
        let stream = timeout(self.connect_timeout, TcpStream::connect(target))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}
