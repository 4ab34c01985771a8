//! Public dist ports: a connection to one is forwarded to where the directory says the
//! port goes (a local node's real port over loopback, or a routed name's upstream). A
//! port nobody holds closes the connection at once.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tracing::{debug, info, info_span, warn};

use crate::accept::{Acceptor, Admit};
use crate::config::DistConfig;
use crate::directory::{Destination, Directory};
use crate::metrics as m;

/// The `direction` label of connections that come in on a public port for a local node.
pub(crate) const DIRECTION: &str = "inbound";
/// The `direction` label of connections forwarded to a routed name's upstream.
pub(crate) const GATEWAY_DIRECTION: &str = "gateway";

/// A bounded label for how a forwarded stream ended.
pub(crate) fn close_reason(result: &std::io::Result<()>) -> &'static str {
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

/// Accepts on the public dist ports and forwards to where each port goes.
#[derive(Debug)]
pub(crate) struct Forwarder {
    directory: Arc<Directory>,
    engine: Arc<super::Engine>,
    connect_timeout: Duration,
    first_frame_timeout: Duration,
    acceptor: Acceptor,
}

impl Forwarder {
    /// A forwarder to the destinations of `directory`, moving bytes with `engine`.
    pub(crate) fn new(
        directory: Arc<Directory>,
        engine: Arc<super::Engine>,
        config: &DistConfig,
        acceptor: Acceptor,
    ) -> Self {
        Forwarder {
            directory,
            engine,
            connect_timeout: config.connect_timeout,
            first_frame_timeout: config.first_frame_timeout,
            acceptor,
        }
    }

    /// Accepts connections on `listener`, which is bound to public port `public_port`,
    /// until shutdown. Connections already forwarded keep going.
    pub(crate) async fn serve(self: Arc<Self>, listener: TcpListener, public_port: u16) {
        let span = |peer: SocketAddr| info_span!("dist", %peer, public_port);
        let handle = |client, _| self.connection(client, public_port);
        (self.acceptor)
            .run(listener, |_, _| Admit::Limited, span, handle)
            .await;
    }

    /// The task of one connection to `public_port`.
    fn connection(
        self: &Arc<Self>,
        client: TcpStream,
        public_port: u16,
    ) -> impl Future<Output = ()> + Send + 'static {
        let forwarder = Arc::clone(self);
        async move { forwarder.handle(client, public_port).await }
    }

    async fn handle(&self, client: TcpStream, public_port: u16) {
        let (node, target, direction) = match self.directory.destination(public_port) {
            Some(Destination::Local { name, addr }) => (name, addr, DIRECTION),
            Some(Destination::Routed { name, host, port }) => {
                // Boxed: the resolver's future is large, and every connection's task
                // would carry its size for the connection's whole life otherwise.
                match Box::pin(self.directory.resolve(&host)).await {
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
            &DistConfig::default(),
            acceptor,
        ));
        let admission = crate::limit::Limit::new("dist", 1).admit();
        let span = info_span!("dist", public_port = 1);
        let task = crate::accept::hold(forwarder.connection(client, 1), admission, span);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 2048, "a connection's task is {size} bytes");
    }
}
