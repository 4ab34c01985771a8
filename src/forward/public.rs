//! Public dist ports: a connection to one is forwarded to the real port of the node
//! that holds it, over loopback. A port no node holds closes the connection at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::DistConfig;
use crate::gateway::Gateway;
use crate::limit::Limit;
use crate::metrics as m;
use crate::registry::{Registry, Target};

/// The `direction` label of connections that come in on a public port for a local node.
pub const DIRECTION: &str = "inbound";
/// The `direction` label of connections forwarded to a routed name's upstream.
pub const GATEWAY_DIRECTION: &str = "gateway";

/// A bounded label for how a forwarded stream ended.
pub fn close_reason(result: &std::io::Result<()>) -> &'static str {
    use std::io::ErrorKind::*;
    match result {
        Ok(()) => "closed",
        Err(e) => match e.kind() {
            ConnectionReset | ConnectionAborted | BrokenPipe => "reset",
            TimedOut => "timeout",
            _ => "error",
        },
    }
}

/// Accepts on the public dist ports and forwards to the nodes holding them.
pub struct Forwarder {
    registry: Arc<Registry>,
    gateway: Option<Arc<Gateway>>,
    engine: Arc<super::Engine>,
    connect_timeout: Duration,
    first_frame_timeout: Duration,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    limit: Limit,
}

impl Forwarder {
    pub fn new(
        registry: Arc<Registry>,
        gateway: Option<Arc<Gateway>>,
        engine: Arc<super::Engine>,
        config: &DistConfig,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Self {
        Forwarder {
            registry,
            gateway,
            engine,
            connect_timeout: config.connect_timeout,
            first_frame_timeout: config.first_frame_timeout,
            shutdown,
            tracker,
            limit: Limit::new("dist", config.max_connections.get()),
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
                    let Some(admission) = self.limit.admit() else {
                        debug!(%peer, public_port, "dist connection closed: max_connections reached");
                        continue;
                    };
                    let forwarder = Arc::clone(&self);
                    let span = info_span!("dist", %peer, public_port);
                    self.tracker.spawn(
                        async move {
                            forwarder.handle(client, public_port).await;
                            drop(admission);
                        }
                        .instrument(span),
                    );
                }
                Err(e) => crate::accept_backoff(&e, &self.shutdown).await,
            }
        }
    }

    async fn handle(&self, client: TcpStream, public_port: u16) {
        let (node, target, direction) = match self.registry.target_of(public_port) {
            Some(Target::Local { name, addr }) => (name, addr, DIRECTION),
            Some(Target::Routed { name, host, port }) => {
                let Some(gateway) = &self.gateway else {
                    return;
                };
                // Boxed: the resolver's future is large, and every connection's task
                // would carry its size for the connection's whole life otherwise.
                match Box::pin(gateway.resolve(&host)).await {
                    Ok(ip) => (name, SocketAddr::new(ip, port), GATEWAY_DIRECTION),
                    Err(e) => {
                        warn!(node = %name, %host, "upstream does not resolve: {e}");
                        metrics::counter!(m::DIST_UPSTREAM_FAILURES, "node" => name).increment(1);
                        return;
                    }
                }
            }
            None => {
                debug!("no node holds this public port; connection closed");
                metrics::counter!(m::DIST_NO_NODE).increment(1);
                return;
            }
        };
        let upstream = match self.connect(target).await {
            Ok(upstream) => upstream,
            Err(e) => {
                warn!(%node, real_port = target.port(), "node's real port did not accept: {e}");
                metrics::counter!(m::DIST_UPSTREAM_FAILURES, "node" => node).increment(1);
                return;
            }
        };
        // The caller speaks first, and its first frame names it. Should the node speak
        // or close first instead, forwarding starts at once.
        let caller = tokio::select! {
            caller = super::identify::identify(&client, self.first_frame_timeout) => caller,
            _ = upstream.readable() => crate::handshake::Caller::Unknown,
        };
        let peer = caller.label().to_owned();
        // Dist traffic is small frames and ticks; OTP sets nodelay on its own sockets.
        if let Err(e) = client.set_nodelay(true) {
            debug!("TCP_NODELAY on the client socket: {e}");
        }
        let tls_sni = match &caller {
            crate::handshake::Caller::Tls { sni } => sni.clone(),
            _ => None,
        };
        info!(%node, %peer, direction, tls_sni, upstream_port = target.port(), "dist connection opened");
        let link = m::Link::open(&node, &peer, direction);
        let outcome = self
            .engine
            .proxy_metered(
                client,
                upstream,
                super::Meter::new(link.received.clone()),
                super::Meter::new(link.sent.clone()),
            )
            .await;
        let reason = close_reason(&outcome.result);
        let lived = link.close(reason);
        info!(
            %node,
            %peer,
            bytes_from_peer = outcome.to_upstream,
            bytes_to_peer = outcome.to_client,
            duration_ms = lived.as_millis() as u64,
            reason,
            error = outcome.result.as_ref().err().map(ToString::to_string),
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::registry::PortPlan;

    /// Every open connection's task holds this future for the connection's whole life;
    /// it is most of distgate's memory per idle link (BENCHMARKS.md). A large future
    /// on a rare path (the resolver's, once) grew it by 1.1 KiB unnoticed.
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let plan = PortPlan {
            pool: vec![1],
            pins: Default::default(),
        };
        let forwarder = Forwarder::new(
            Arc::new(Registry::new(plan)),
            None,
            Arc::new(super::super::Engine::new(super::super::Mode::Auto, 1 << 20)),
            &DistConfig::default(),
            CancellationToken::new(),
            TaskTracker::new(),
        );
        let task = forwarder.handle(client, 1);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 2048, "a connection's future is {size} bytes");
    }
}
