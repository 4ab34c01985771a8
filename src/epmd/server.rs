//! The EPMD server: accepts on already-bound listeners, reads one request per
//! connection, answers it as OTP's epmd does, and holds each registration exactly as
//! long as its connection.
//!
//! Every connection runs in its own task; a slow or hostile client holds only its own
//! task. Byte formats live in [`super::message`], registration rules in
//! [`crate::registry`], and which port a name has in [`crate::directory`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn};

use super::message::{self, Alive2Req, FrameError, Request, RequestKind};
use crate::accept::{Acceptor, Admit, is_local};
use crate::config::EpmdConfig;
use crate::directory::Directory;
use crate::live::Live;
use crate::log_budget::SharedBudget;
use crate::metrics as m;
use crate::registry::{Registration, Registry};

/// Send buffer of EPMD connections: a NAMES reply for 1000 nodes fits.
const SEND_BUFFER: usize = 64 * 1024;

/// What ends the wait for a request.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("closed before a whole request")]
    Closed,
    #[error("no whole request within packet_timeout")]
    Timeout,
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

impl ReadError {
    fn reason(&self) -> &'static str {
        match self {
            ReadError::Closed => "closed",
            ReadError::Timeout => "request_timeout",
            ReadError::Io(_) => "io_error",
            ReadError::Frame(e) => e.reason(),
        }
    }
}

/// The EPMD server shared by every EPMD listener.
#[derive(Debug)]
pub(crate) struct Server {
    /// `[epmd]` as in force now (a reload replaces it; `listen` is not read here).
    config: Live<EpmdConfig>,
    directory: Arc<Directory>,
    /// Cancelled to stop distgate (an allowed KILL_REQ) and observed to end
    /// registrations when distgate stops.
    shutdown: CancellationToken,
    /// Limits connections from other hosts; the pod's own are never refused.
    acceptor: Acceptor,
    /// Refusals of what only the pod's own may ask, which anyone else can send at
    /// will: the lines logged are budgeted (ALIVE2; the others).
    log_alive2_refused: SharedBudget,
    log_local_only_refused: SharedBudget,
}

impl Server {
    /// A server answering from `directory`; its connections join `acceptor`'s
    /// tracker, and `acceptor.shutdown` both stops it and is what KILL_REQ cancels.
    pub(crate) fn new(config: EpmdConfig, directory: Arc<Directory>, acceptor: Acceptor) -> Self {
        Server {
            config: Live::new(config),
            directory,
            shutdown: acceptor.shutdown.clone(),
            acceptor,
            log_alive2_refused: SharedBudget::new(
                "more registrations from non-local addresses refused than logged \
                 (see distgate_registrations_rejected_total)",
            ),
            log_local_only_refused: SharedBudget::new(
                "more local-only requests from non-local addresses refused than logged \
                 (see distgate_epmd_requests_total)",
            ),
        }
    }

    /// Puts `config` in force for the requests that come next (a reload).
    pub(crate) fn set_config(&self, config: EpmdConfig) {
        self.config.set(config);
    }

    /// Whether `peer` is the pod's own by `[epmd] register_from` (epmd's locality rule
    /// unless configured otherwise), for a connection accepted on `local`.
    fn is_own(&self, peer: IpAddr, local: IpAddr) -> bool {
        (self.config.get().register_from).allows(peer, is_local(peer, local))
    }

    fn registry(&self) -> &Registry {
        self.directory.registry()
    }

    /// Accepts EPMD connections until shutdown.
    pub(crate) async fn serve(self: Arc<Self>, listener: TcpListener) {
        let admit = |stream: &TcpStream, peer: SocketAddr| match stream.local_addr() {
            Ok(addr) if self.is_own(peer.ip(), addr.ip()) => Admit::Exempt,
            _ => Admit::Limited,
        };
        let span = |peer: SocketAddr| info_span!("epmd", %peer);
        let handle = |stream, peer| {
            let server = Arc::clone(&self);
            async move { server.handle(stream, peer).await }
        };
        self.acceptor.run(listener, admit, span, handle).await;
    }

    async fn handle(&self, mut stream: TcpStream, peer: SocketAddr) {
        let Ok(local_addr) = stream.local_addr() else {
            return;
        };
        // A fixed send buffer stops the kernel from growing one for a client that never
        // reads; replies wait in distgate, bounded by packet_timeout.
        if let Err(e) = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER) {
            debug!("SO_SNDBUF: {e}");
        }
        let local = self.is_own(peer.ip(), local_addr.ip());
        let request = match self.read_request(&mut stream).await {
            Ok(request) => request,
            Err(e) => {
                debug!(
                    reason = e.reason(),
                    "connection closed without a request: {e}"
                );
                count_request("invalid", e.reason());
                return;
            }
        };
        let kind = request.kind();
        let refused = match request {
            Request::PortPlease2 { .. } => false,
            Request::Names => !self.config.get().names_from.allows(peer.ip(), local),
            _ => !local,
        };
        if refused {
            if kind == RequestKind::Alive2 {
                if self.log_alive2_refused.allow() {
                    warn!("registration from a non-local address refused");
                }
                metrics::counter!(m::REGISTRATIONS_REJECTED, "reason" => "not_local").increment(1);
            } else if self.log_local_only_refused.allow() {
                info!(request = %kind, "local-only request from a non-local address refused");
            }
            count_request(kind.as_str(), "not_local");
            return;
        }
        match request {
            Request::Alive2(req) => self.alive2(stream, peer, req).await,
            Request::PortPlease2 { name } => {
                let found = self.directory.port_please(&name).await;
                let result = if found.is_some() {
                    "found"
                } else {
                    "not_found"
                };
                debug!(%name, result, "PORT_PLEASE2_REQ");
                count_request(kind.as_str(), result);
                self.reply(stream, &message::encode_port2_resp(found.as_ref()))
                    .await;
            }
            Request::Names => {
                let mut reply = message::encode_port_header(local_addr.port()).to_vec();
                for (name, port) in self.directory.names() {
                    let line = message::encode_names_line(&name, port);
                    reply.extend_from_slice(line.as_bytes());
                }
                count_request(kind.as_str(), "ok");
                self.reply(stream, &reply).await;
            }
            Request::Dump => {
                let mut reply = message::encode_port_header(local_addr.port()).to_vec();
                for node in self.registry().nodes() {
                    let line = message::encode_dump_active(&node.name, node.real_port, node.fd);
                    reply.extend_from_slice(line.as_bytes());
                }
                for old in self.registry().unused() {
                    let line = message::encode_dump_unused(&old.name, old.port, old.fd);
                    reply.extend_from_slice(line.as_bytes());
                }
                count_request(kind.as_str(), "ok");
                self.reply(stream, &reply).await;
            }
            Request::Kill => self.kill(stream).await,
            Request::Stop { name } => self.stop(stream, &name).await,
        }
    }

    /// The connection's one request, which must arrive whole within `packet_timeout`
    /// of the accept: a client trickling a byte at a time (slowloris) is cut then too.
    async fn read_request(&self, stream: &mut TcpStream) -> Result<Request, ReadError> {
        let deadline = tokio::time::Instant::now() + self.config.get().packet_timeout;
        let mut buf = Vec::with_capacity(128);
        loop {
            if let Some(request) = message::decode_request(&buf)? {
                return Ok(request);
            }
            // Room for the whole frame and then some, so trailing bytes are seen.
            let want = message::frame_len(&buf)?.unwrap_or(2) + 1;
            buf.reserve(want.saturating_sub(buf.len()).max(64));
            match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
                Err(_) => return Err(ReadError::Timeout),
                Ok(Ok(0)) => return Err(ReadError::Closed),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(ReadError::Io(e)),
            }
        }
    }

    async fn alive2(&self, mut stream: TcpStream, peer: SocketAddr, req: Alive2Req) {
        let x_resp = req.wants_x_resp();
        let upstream_ip = loopback_like(peer.ip());
        let registered =
            self.registry()
                .register(&req, stream.as_raw_fd(), upstream_ip, unix_now());
        let name = String::from_utf8_lossy(&req.name).into_owned();
        let registration = match registered {
            Ok(registration) => registration,
            Err(e) => {
                warn!(%name, reason = e.reason(), "registration refused: {e}");
                metrics::counter!(m::REGISTRATIONS_REJECTED, "reason" => e.reason()).increment(1);
                count_request("alive2", e.reason());
                let reply = message::encode_alive2_resp(x_resp, None);
                // As epmd: the socket is kept until the client closes or sends anything.
                if self.write(&mut stream, &reply).await {
                    self.hold(&mut stream, &CancellationToken::new()).await;
                }
                return;
            }
        };
        let Registration {
            id,
            creation,
            public_port,
            client,
            ref stop,
        } = registration;
        match public_port {
            Some(public_port) => info!(
                node = %name, real_port = req.port, public_port, creation, "node registered"
            ),
            None if client => info!(
                node = %name, real_port = req.port, creation,
                "release client registered: it takes no public port (`dist.client_names`)"
            ),
            None => warn!(
                node = %name, real_port = req.port, creation,
                "node registered without a public port: the pool `dist.ports` is used up, \
                 peers are told its real port"
            ),
        }
        count_request("alive2", "ok");
        // Counted as registered: a reload that changes `client_names` does not move it.
        let gauge = if client {
            m::REGISTERED_CLIENTS
        } else {
            m::REGISTERED_NODES
        };
        metrics::gauge!(gauge).increment(1);
        let reply = message::encode_alive2_resp(x_resp, Some(creation));
        let why = if self.write(&mut stream, &reply).await {
            self.hold(&mut stream, stop).await
        } else {
            "reply not taken"
        };
        if let Some(node) = self.registry().unregister(id) {
            metrics::gauge!(gauge).decrement(1);
            info!(
                node = %node.name, real_port = node.real_port, public_port = node.public_port,
                creation = node.creation, reason = why, "node unregistered"
            );
        }
    }

    /// Waits for what ends a kept connection: EOF, an error, any byte, a STOP_REQ or
    /// shutdown. Returns the reason.
    async fn hold(&self, stream: &mut TcpStream, stop: &CancellationToken) -> &'static str {
        let mut byte = [0u8; 1];
        tokio::select! {
            read = stream.read(&mut byte) => match read {
                Ok(0) => "connection closed",
                Ok(_) => "data on the registration connection",
                Err(_) => "connection error",
            },
            _ = stop.cancelled() => "stopped by STOP_REQ",
            _ = self.shutdown.cancelled() => "distgate shutting down",
        }
    }

    async fn kill(&self, stream: TcpStream) {
        let config = self.config.get();
        let allowed =
            config.allow_kill && (config.relaxed_command_check || self.registry().is_empty());
        if !allowed {
            info!("KILL_REQ refused");
            count_request("kill", "refused");
            self.reply(stream, message::KILL_NO).await;
            return;
        }
        warn!("KILL_REQ accepted: distgate stops");
        count_request("kill", "ok");
        // Stopping first: whoever reads the reply finds distgate already stopping.
        self.shutdown.cancel();
        self.reply(stream, message::KILL_OK).await;
    }

    async fn stop(&self, stream: TcpStream, name: &[u8]) {
        if !self.config.get().relaxed_command_check {
            debug!("STOP_REQ ignored: relaxed_command_check is off");
            count_request("stop", "disabled");
            return;
        }
        let found = self.registry().stop(name);
        let name = String::from_utf8_lossy(name);
        info!(node = %name, found, "STOP_REQ");
        count_request("stop", if found { "ok" } else { "not_found" });
        let reply = if found {
            message::STOP_OK
        } else {
            message::STOP_NOEXIST
        };
        self.reply(stream, reply).await;
    }

    /// Writes a whole reply within packet_timeout. Returns whether it was written.
    async fn write(&self, stream: &mut TcpStream, reply: &[u8]) -> bool {
        match timeout(self.config.get().packet_timeout, stream.write_all(reply)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                debug!("reply not written: {e}");
                false
            }
            Err(_) => {
                debug!("reply not taken within packet_timeout");
                false
            }
        }
    }

    /// Writes a reply and closes the connection, as epmd does after every request but
    /// ALIVE2_REQ.
    async fn reply(&self, mut stream: TcpStream, reply: &[u8]) {
        if self.write(&mut stream, reply).await {
            let _ = timeout(self.config.get().packet_timeout, stream.shutdown()).await;
        }
    }
}

fn count_request(kind: &'static str, result: &'static str) {
    metrics::counter!(m::EPMD_REQUESTS, "type" => kind, "result" => result).increment(1);
}

/// The loopback address of the family a node registered from: its real port is
/// reached there.
fn loopback_like(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
        IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_uses_the_registering_family() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(loopback_like(ip("::1")), ip("::1"));
        assert_eq!(loopback_like(ip("::ffff:127.0.0.1")), ip("127.0.0.1"));
        assert_eq!(loopback_like(ip("10.0.0.5")), ip("127.0.0.1"));
    }
}
