//! Federation: gateways of two clusters carry dist links to each other over mutual
//! TLS 1.3 (ALPN `distgate/1`). A route with `federate` sends its names to a peer
//! gateway: a lookup asks it whether a name lives there, a link asks it to carry a
//! dist connection to the name. The name and the original caller travel inside the
//! encrypted stream ([`wire`]), never in SNI or any cleartext.
//!
//! This module dials and accepts: the TLS handshake, who the other gateway is
//! ([`identity`]: its certificate chains to `ca`, and it is the route's `identity`, or
//! one that `peers` admits), and the one request and reply before dist bytes. What a
//! link does after that is the forwarder's (`forward/federated.rs`).

pub mod identity;
pub mod material;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tracing::{debug, warn};

use crate::config::FederationConfig;
use crate::epmd::NodeInfo;
use crate::live::Live;
use crate::log_budget::SharedBudget;
use crate::metrics as m;
use crate::route::Federate;
pub use material::{Material, MaterialError, Materials, Paths};
use wire::{Reply, Request};

/// A TLS stream to or from a peer gateway.
pub type Stream = tokio_rustls::TlsStream<TcpStream>;

/// How often a gateway pings each peer gateway its routes federate with, so that
/// `distgate_federation_peer_up` is current when no link or lookup crosses.
pub const PING_EVERY: Duration = Duration::from_secs(30);

/// The `peer` label where no trusted identity is known.
pub const UNKNOWN_PEER: &str = "unknown";

/// How a TLS handshake with a peer gateway ended: the `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Authenticated both ways, and allowed.
    Ok,
    /// A certificate that does not chain to `ca` (either side's verdict).
    Untrusted,
    /// A trusted certificate that is not the identity wanted (`peers`, `identity`).
    NotAllowed,
    /// Not done within `handshake_timeout`.
    Timeout,
    /// Not TLS 1.3 with `distgate/1`, or a request no gateway sends.
    Protocol,
}

impl Handshake {
    /// The `result` label.
    pub fn label(self) -> &'static str {
        match self {
            Handshake::Ok => "ok",
            Handshake::Untrusted => "untrusted",
            Handshake::NotAllowed => "not_allowed",
            Handshake::Timeout => "timeout",
            Handshake::Protocol => "protocol",
        }
    }

    /// Counts it for `peer` on `side` (`client`: dialled; `server`: accepted).
    pub fn count(self, peer: &str, side: &'static str) {
        ::metrics::counter!(m::FEDERATION_HANDSHAKES, "peer" => peer.to_owned(), "side" => side, "result" => self.label())
            .increment(1);
    }

    fn of(error: &std::io::Error) -> Handshake {
        use rustls::{AlertDescription as A, CertificateError as C, Error as E};
        let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<E>()) else {
            return Handshake::Protocol;
        };
        match tls {
            E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
                Handshake::NotAllowed
            }
            E::InvalidCertificate(_) | E::NoCertificatesPresented => Handshake::Untrusted,
            E::AlertReceived(
                A::BadCertificate
                | A::UnknownCA
                | A::CertificateUnknown
                | A::CertificateRequired
                | A::CertificateExpired
                | A::DecryptError
                | A::AccessDenied,
            ) => Handshake::Untrusted,
            _ => Handshake::Protocol,
        }
    }
}

/// Why asking a peer gateway failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The TCP connection did not open.
    Unreachable,
    /// The TLS handshake or the request failed this way.
    Handshake(Handshake),
    /// The peer gateway refused the request (or closed before its reply).
    Refused,
}

impl Failure {
    /// The `result` label of a lookup that failed so.
    pub fn lookup_result(self) -> &'static str {
        match self {
            Failure::Unreachable => "unreachable",
            Failure::Handshake(Handshake::Timeout) => "timeout",
            Failure::Handshake(h) => h.label(),
            Failure::Refused => "refused",
        }
    }
}

/// A peer gateway that connected: its identity, and the `peers` glob that admitted
/// it (its `peer` label).
#[derive(Debug, Clone)]
pub struct Peer {
    /// The identity its certificate carries (for logs and `/links`).
    pub identity: String,
    /// The glob of `peers` that admitted it.
    pub label: String,
}

/// Dials and serves peer gateways with the material in force.
#[derive(Debug)]
pub struct Federation {
    materials: Materials,
    config: Live<FederationConfig>,
    /// Peer gateways fail at will (and a hostile one at a rate): warnings are budgeted.
    log: SharedBudget,
}

impl Federation {
    /// Federation as `config` asks, when it asks for any: the material must load.
    pub fn from_config(
        config: &FederationConfig,
        routes: &[crate::route::Route],
    ) -> Result<Option<Federation>, MaterialError> {
        if !config.wanted(routes) {
            return Ok(None);
        }
        let Some(paths) = Paths::of(config) else {
            return Ok(None);
        };
        Ok(Some(Federation {
            materials: Materials::load(paths)?,
            config: Live::new(config.clone()),
            log: SharedBudget::new(
                "more federation handshakes failed than logged (see distgate_federation_handshakes_total)",
            ),
        }))
    }

    /// Puts `config` in force (a reload): peers and timings for what comes next, the
    /// files read again (from new paths, if it names others).
    pub fn set_config(&self, config: &FederationConfig) {
        self.config.set(config.clone());
        self.materials.refresh(Paths::of(config));
    }

    /// Reads the files again every `watch_every` until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            let every = self.config.get().watch_every;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => self.materials.refresh(None),
            }
        }
    }

    /// The material in force.
    pub fn material(&self) -> Arc<Material> {
        self.materials.get()
    }

    /// `[federation]` in force.
    pub fn config(&self) -> Arc<FederationConfig> {
        self.config.get()
    }

    fn may_log(&self) -> bool {
        self.log.allow()
    }

    /// Opens a TLS connection to peer gateway `peer` at `addr` and makes `request`,
    /// within `connect` (TCP) and `handshake_timeout` (TLS, request and reply).
    /// Counted (handshakes, `peer_up`) by the peer's identity.
    async fn ask(
        &self,
        addr: SocketAddr,
        peer: &Federate,
        request: &Request,
        connect: Duration,
    ) -> Result<(Stream, Reply), Failure> {
        let up = ::metrics::gauge!(m::FEDERATION_PEER_UP, "peer" => peer.identity.clone());
        let tcp = match timeout(connect, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => {
                up.set(0.0);
                if self.may_log() {
                    warn!(peer = %peer.identity, %addr, "peer gateway did not accept: {e}");
                }
                return Err(Failure::Unreachable);
            }
            Err(_) => {
                up.set(0.0);
                if self.may_log() {
                    warn!(peer = %peer.identity, %addr, "peer gateway did not accept within `dist.connect_timeout`");
                }
                return Err(Failure::Unreachable);
            }
        };
        let _ = tcp.set_nodelay(true);
        let limit = self.config.get().handshake_timeout;
        let asked = timeout(limit, self.ask_over(tcp, peer, request)).await;
        let result = match asked {
            Ok(result) => result,
            Err(_) => Err(Failure::Handshake(Handshake::Timeout)),
        };
        match &result {
            Ok(_) => {
                Handshake::Ok.count(&peer.identity, "client");
                up.set(1.0);
            }
            Err(Failure::Handshake(h)) => {
                h.count(&peer.identity, "client");
                up.set(0.0);
                if self.may_log() {
                    warn!(peer = %peer.identity, %addr, result = h.label(), "TLS handshake with the peer gateway failed");
                }
            }
            Err(_) => {}
        }
        result
    }

    async fn ask_over(
        &self,
        tcp: TcpStream,
        peer: &Federate,
        request: &Request,
    ) -> Result<(Stream, Reply), Failure> {
        let config = self.material().client(&peer.identity);
        let sni = ServerName::try_from(peer.identity_host().to_owned())
            .map_err(|_| Failure::Handshake(Handshake::Protocol))?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let mut tls = connector
            .connect(sni, tcp)
            .await
            .map_err(|e| Failure::Handshake(Handshake::of(&e)))?;
        let alpn_ok = tls.get_ref().1.alpn_protocol() == Some(material::ALPN);
        if !alpn_ok {
            return Err(Failure::Handshake(Handshake::Protocol));
        }
        // The server's verdict on this gateway's certificate comes with its first
        // bytes in TLS 1.3: a refusal shows on the reply's read.
        let sent = async {
            tls.write_all(&request.encode()).await?;
            tls.flush().await
        };
        sent.await
            .map_err(|e| Failure::Handshake(Handshake::of(&e)))?;
        let carries_info = matches!(request, Request::Lookup(_));
        let mut buf = Vec::with_capacity(16);
        let mut chunk = [0u8; 256];
        loop {
            match Reply::decode(&buf, carries_info) {
                Ok(Some((reply, used))) => {
                    if used != buf.len() {
                        // Nothing may follow a reply before the caller speaks.
                        return Err(Failure::Handshake(Handshake::Protocol));
                    }
                    let reply = match reply {
                        Reply::NotAllowed => return Err(Failure::Handshake(Handshake::NotAllowed)),
                        reply => reply,
                    };
                    return Ok((Stream::Client(tls), reply));
                }
                Ok(None) if buf.len() < wire::MAX_REPLY => {}
                _ => return Err(Failure::Handshake(Handshake::Protocol)),
            }
            let n = match tls.read(&mut chunk).await {
                Ok(0) => return Err(Failure::Refused),
                Ok(n) => n,
                Err(e) => return Err(Failure::Handshake(Handshake::of(&e))),
            };
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Asks peer gateway `peer` at `addr` whether `name` lives there: what its node
    /// registered, `None` when it does not. Counted by peer and result.
    pub async fn lookup(
        &self,
        addr: SocketAddr,
        peer: &Federate,
        name: &str,
        connect: Duration,
    ) -> Result<Option<NodeInfo>, Failure> {
        let request = Request::Lookup(name.to_owned());
        let answer = match self.ask(addr, peer, &request, connect).await {
            Ok((_, Reply::Ok(info))) => Ok(Some(info.unwrap_or(NodeInfo::OTP23))),
            Ok((_, Reply::Unknown)) => Ok(None),
            Ok((_, _)) => Err(Failure::Refused),
            Err(failure) => Err(failure),
        };
        let result = match &answer {
            Ok(Some(_)) => "ok",
            Ok(None) => "unknown",
            Err(failure) => failure.lookup_result(),
        };
        ::metrics::counter!(m::FEDERATION_LOOKUPS, "peer" => peer.identity.clone(), "side" => "client", "result" => result)
            .increment(1);
        answer
    }

    /// Asks peer gateway `peer` at `addr` whether it is there and trusts this gateway
    /// (`distgate_federation_peer_up`).
    pub async fn ping(
        &self,
        addr: SocketAddr,
        peer: &Federate,
        connect: Duration,
    ) -> Result<(), Failure> {
        self.ask(addr, peer, &Request::Ping, connect)
            .await
            .map(|_| ())
    }

    /// Asks peer gateway `peer` at `addr` to carry a dist connection from `caller` to
    /// `name`: the stream, ready for the caller's first frame.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        peer: &Federate,
        name: &str,
        caller: SocketAddr,
        connect: Duration,
    ) -> Result<Stream, Failure> {
        let request = Request::Connect {
            name: name.to_owned(),
            caller,
        };
        match self.ask(addr, peer, &request, connect).await? {
            (tls, Reply::Ok(_)) => Ok(tls),
            (_, _) => Err(Failure::Refused),
        }
    }

    /// Serves a peer gateway's connection: TLS within `handshake_timeout`, a
    /// certificate that chains to `ca` and that `peers` admits, and its request.
    /// `Err`: refused (how), counted and logged. Else the stream, the peer's identity, its
    /// request, and any bytes that came after the request.
    pub async fn accept(
        &self,
        tcp: TcpStream,
        source: SocketAddr,
    ) -> Result<(Stream, Peer, Request, Vec<u8>), Handshake> {
        let started = Instant::now();
        let limit = self.config.get().handshake_timeout;
        let _ = tcp.set_nodelay(true);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&self.material().server));
        let tls = match timeout(limit, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                let result = Handshake::of(&e);
                return self.refuse(source, UNKNOWN_PEER, result, &e.to_string());
            }
            Err(_) => {
                return self.refuse(
                    source,
                    UNKNOWN_PEER,
                    Handshake::Timeout,
                    "TLS not done in time",
                );
            }
        };
        let mut tls = Stream::Server(tls);
        let (_, connection) = tls.get_ref();
        if connection.alpn_protocol() != Some(material::ALPN) {
            return self.refuse(
                source,
                UNKNOWN_PEER,
                Handshake::Protocol,
                "no ALPN distgate/1",
            );
        }
        let names = connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| identity::names(leaf).ok());
        let Some(names) = names else {
            return self.refuse(
                source,
                UNKNOWN_PEER,
                Handshake::Untrusted,
                "no readable certificate",
            );
        };
        let config = self.config.get();
        let Some((identity, label)) = names.admitted_by(&config.peers) else {
            // Told, so that the other gateway counts it as such; a peer not admitted
            // costs this handshake and one (budgeted) line.
            let _ = timeout(limit, async {
                tls.write_all(&Reply::NotAllowed.encode()).await?;
                tls.shutdown().await
            })
            .await;
            let why = format!(
                "its certificate ({}) matches no `federation.peers`",
                names.shown()
            );
            return self.refuse(source, UNKNOWN_PEER, Handshake::NotAllowed, &why);
        };
        // Labelled by the glob that admitted it: certificates are many, globs few.
        let peer = label.to_owned();
        drop(config);
        let left = limit.saturating_sub(started.elapsed());
        let mut buf = Vec::with_capacity(64);
        let mut chunk = [0u8; wire::MAX_REQUEST];
        let read = async {
            loop {
                match Request::decode(&buf) {
                    Ok(Some((request, used))) => return Ok((request, buf[used..].to_vec())),
                    Ok(None) => {}
                    Err(e) => return Err(e.to_string()),
                }
                match tls.read(&mut chunk).await {
                    Ok(0) => return Err("closed before its request ended".to_owned()),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) => return Err(e.to_string()),
                }
            }
        };
        match timeout(left, read).await {
            Ok(Ok((request, rest))) => {
                Handshake::Ok.count(&peer, "server");
                debug!(%source, %peer, ?request, "federation request");
                Ok((
                    tls,
                    Peer {
                        identity,
                        label: peer,
                    },
                    request,
                    rest,
                ))
            }
            Ok(Err(why)) => self.refuse(source, &peer, Handshake::Protocol, &why),
            Err(_) => self.refuse(
                source,
                &peer,
                Handshake::Timeout,
                "no whole request in time",
            ),
        }
    }

    fn refuse<T>(
        &self,
        source: SocketAddr,
        peer: &str,
        result: Handshake,
        why: &str,
    ) -> Result<T, Handshake> {
        result.count(peer, "server");
        if self.may_log() {
            warn!(%source, peer, result = result.label(), "federation connection refused: {why}");
        }
        Err(result)
    }
}
