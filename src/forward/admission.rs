//! Admission on a public dist port: everything before a link is up. A caller must not
//! be banned or over `max_per_source`, must send its first frame within
//! `first_frame_timeout`, be allowed by `allow_peers` (before the node is even
//! connected to), and finish the handshake within `handshake_timeout`, the bytes
//! following it by copy ([`super::follow`]). Every way it can end is counted by
//! [`HandshakeResult`] and, when it says something against the caller, counted
//! towards a ban of its source.

use std::net::SocketAddr;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tracing::{debug, warn};

use super::ByteCounts;
use super::follow::{Followed, follow};
use super::guard::{Refusal, SourceSlot};
use super::identify::{FirstFrame, identify};
use super::public::{Forwarder, Opened};
use super::refusals::Reason;
use crate::accept::is_local;
use crate::config::Tls;
use crate::directory::Destination;
use crate::handshake::Caller;
use crate::handshake::follow::Handshake;
use crate::metrics::{self as m, HandshakeResult};
use crate::prefix::Prefix;
use crate::probe::PROBE_NAMES;

/// Longest claimed name written to a log line.
const MAX_LOGGED_NAME: usize = 255;

/// One connection on its way in: where it goes, where it came from.
#[derive(Debug)]
pub(super) struct Attempt {
    pub(super) node: String,
    pub(super) source: SocketAddr,
    /// The source as limits and bans count it (its IPv6 prefix).
    pub(super) prefix: Prefix,
    /// A `[dist] trusted` source: never banned nor limited per source.
    pub(super) trusted: bool,
    /// From the pod itself (loopback or the pod's own address).
    pub(super) local: bool,
    pub(super) started: Instant,
}

impl Attempt {
    /// The link this attempt opens, before its handshake: to `direction`, through
    /// peer gateway `gateway` if any, holding `slot`.
    pub(super) fn opened(
        &self,
        public_port: u16,
        direction: &'static str,
        gateway: Option<String>,
        slot: Option<SourceSlot>,
    ) -> Box<Opened> {
        Box::new(Opened {
            node: self.node.clone(),
            source: self.source,
            public_port,
            peer_name: None,
            tls_sni: None,
            direction,
            handshake_bytes: ByteCounts::default(),
            gateway,
            _slot: slot,
        })
    }
}

/// The handshake status OTP sends a name it refuses: `u16` length, `s`, the status.
pub(super) const NOT_ALLOWED: &[u8] = b"\x00\x0csnot_allowed";

impl Forwarder {
    /// Everything before the link is up: admission, the first frame, the allow-list,
    /// the connection to the node and the handshake. `None`: closed, counted, logged.
    pub(super) async fn open(
        &self,
        mut peer: TcpStream,
        source: SocketAddr,
        public_port: u16,
    ) -> Option<(TcpStream, TcpStream, Box<Opened>)> {
        let (attempt, destination, slot) = self.admit(&peer, source, public_port)?;
        let caller = match timeout(self.config.get().first_frame_timeout, identify(&peer)).await {
            Err(_) => {
                return self.failed(
                    &attempt,
                    HandshakeResult::Timeout,
                    "no first frame in time",
                    None,
                    Reason::Timeout,
                );
            }
            Ok(FirstFrame::Silent) => {
                debug!("closed before its first byte");
                return None;
            }
            Ok(FirstFrame::Caller(caller)) => caller,
        };
        match &caller {
            Caller::Unknown => {
                return self.failed(
                    &attempt,
                    HandshakeResult::Failed,
                    "not_a_handshake",
                    None,
                    Reason::NotAHandshake,
                );
            }
            Caller::Node { name, .. } if !self.allows(name, attempt.local) => {
                self.not_allowed(&peer, &attempt, name);
                return None;
            }
            _ => {}
        }
        if matches!(caller, Caller::Tls { .. }) && self.config.get().tls == Tls::Deny {
            // Nothing against the peer (its handshake is not readable): not banned.
            HandshakeResult::TlsDenied.count(attempt.node.clone());
            self.note(&attempt, None, Reason::TlsDenied);
            if self.guard.may_log(Instant::now()) {
                warn!(node = %attempt.node, source = %attempt.source, "TLS dist connection closed: `dist.tls` is \"deny\"");
            }
            return None;
        }
        if let Destination::Routed {
            federate: Some(gateway),
            ..
        } = destination
        {
            if matches!(caller, Caller::Tls { .. }) {
                // A TLS dist link is not followed, and no plaintext-only handshake
                // crosses to a peer gateway: refused, not against the caller.
                HandshakeResult::TlsDenied.count(attempt.node.clone());
                self.note(&attempt, None, Reason::TlsDenied);
                debug!(node = %attempt.node, "TLS dist connection to a federated name closed");
                return None;
            }
            // Boxed: a federated link's future is large, and rare.
            return Box::pin(self.carry_out(peer, attempt, slot, public_port, gateway)).await;
        }
        let Some((mut node, direction)) = self.connect_to(&attempt.node, destination).await else {
            self.note(&attempt, caller.name(), Reason::UpstreamRefused);
            return None;
        };
        // Dist traffic is small frames and ticks; OTP sets nodelay on its own sockets.
        if let Err(e) = peer.set_nodelay(true) {
            debug!("TCP_NODELAY on the peer's socket: {e}");
        }
        let mut opened = attempt.opened(public_port, direction, None, slot);
        match caller {
            Caller::Tls { sni } => opened.tls_sni = sni,
            _ => {
                self.authenticate(&attempt, &mut peer, &mut node, &[], &mut opened)
                    .await?
            }
        }
        Some((peer, node, opened))
    }

    /// Where `public_port` goes, and whether its source may connect now.
    fn admit(
        &self,
        peer: &TcpStream,
        source: SocketAddr,
        public_port: u16,
    ) -> Option<(Attempt, Destination, Option<SourceSlot>)> {
        let started = Instant::now();
        let Some(destination) = self.directory.destination(public_port) else {
            debug!("no node holds this public port; connection closed");
            metrics::counter!(m::DIST_NO_NODE).increment(1);
            self.refusals.note(source.ip(), "", None, Reason::NoNode);
            return None;
        };
        let node = match &destination {
            Destination::Local { name, .. } | Destination::Routed { name, .. } => name.clone(),
        };
        let local = (peer.local_addr()).is_ok_and(|local| is_local(source.ip(), local.ip()));
        let trusted = self.config.get().trusted.allows(source.ip(), local);
        let prefix = self.guard.source(source.ip());
        let slot = match trusted {
            true => None,
            false => match self.guard.admit(prefix, started) {
                Ok(slot) => Some(slot),
                Err(refusal) => {
                    self.refused(&node, source, refusal);
                    return None;
                }
            },
        };
        let attempt = Attempt {
            node,
            source,
            prefix,
            trusted,
            local,
            started,
        };
        Some((attempt, destination, slot))
    }

    /// Follows the handshake until the node's ack (`Some`, counted `ok`, the caller's
    /// name in `opened`) or its end without one (`None`, counted and judged).
    pub(super) async fn authenticate<P, N>(
        &self,
        attempt: &Attempt,
        peer: &mut P,
        node: &mut N,
        early: &[u8],
        opened: &mut Opened,
    ) -> Option<()>
    where
        P: AsyncRead + AsyncWrite + Unpin,
        N: AsyncRead + AsyncWrite + Unpin,
    {
        let mut handshake = Handshake::new();
        let left = (self.config.get().handshake_timeout).saturating_sub(attempt.started.elapsed());
        let followed = timeout(
            left,
            follow(
                peer,
                node,
                early,
                &mut handshake,
                &mut opened.handshake_bytes,
            ),
        )
        .await;
        let claimed = handshake.caller().and_then(Caller::name);
        let name = attempt.node.clone();
        match followed {
            Err(_) => self.failed(
                attempt,
                HandshakeResult::Timeout,
                "handshake_timeout",
                claimed,
                Reason::Timeout,
            ),
            Ok(Followed::Failed {
                reason,
                against_caller: false,
            }) => {
                HandshakeResult::Withdrawn.count(name);
                // After the node's challenge, a hang-up has cost the node an atom: a
                // budget of them per source (`[dist.ban] withdrawals`).
                // `distgate probe` hangs up there by design, under one of two names.
                let probe = claimed.is_some_and(|name| PROBE_NAMES.contains(&name));
                if !probe {
                    self.note(attempt, claimed, Reason::Withdrawn);
                }
                if handshake.awaiting_reply_from().is_some() && !attempt.trusted && !probe {
                    self.guard.withdrew(attempt.prefix, Instant::now());
                }
                match handshake.awaiting_reply_from() {
                    Some(_) if probe => debug!(claimed, "distgate probe hung up on the challenge"),
                    // The one silent failure of a misnamed node: say it where it shows.
                    Some(node_name) if self.guard.may_log(Instant::now()) => {
                        let claimed = claimed
                            .map(|name| name.chars().take(MAX_LOGGED_NAME).collect::<String>());
                        warn!(
                            node = %attempt.node, source = %attempt.source, claimed, node_name,
                            "the caller hung up on the node's challenge: it most likely dialled \
                             the node by another host part than `node_name`, the node's own \
                             name; peers must use that name exactly (`distgate probe NAME` from \
                             a peer shows the mismatch)"
                        );
                    }
                    _ => debug!(claimed, reason, "dist handshake called off before the ack"),
                }
                None
            }
            Ok(Followed::Failed { reason, .. }) => self.failed(
                attempt,
                HandshakeResult::Failed,
                reason,
                claimed,
                Reason::Failed,
            ),
            Ok(Followed::Authenticated) => {
                HandshakeResult::Ok.count(name);
                opened.peer_name = claimed.map(str::to_owned);
                Some(())
            }
        }
    }

    /// Whether a peer named `name` may reach a node: `[dist] allow_peers`, or a
    /// release client (`[dist] client_names`: `bin/app rpc`, `remote`) calling from
    /// the pod itself, whatever `allow_peers` says.
    pub(super) fn allows(&self, name: &str, local: bool) -> bool {
        let config = self.config.get();
        config.allow_peers.allows(name) || (local && config.client_names.matches(name))
    }

    /// A peer `allow_peers` refuses, told so as OTP tells it (the status
    /// `not_allowed`), counted and logged; not towards a ban: no node has seen the
    /// name, and no cookie was checked.
    fn not_allowed(&self, peer: &TcpStream, attempt: &Attempt, claimed: &str) {
        HandshakeResult::NotAllowed.count(attempt.node.clone());
        self.note(attempt, Some(claimed), Reason::NotAllowed);
        // The first frame is taken off the socket first: closed with unread bytes,
        // it would reset the connection and the status could be lost.
        let mut first = [0u8; 2 + crate::handshake::MAX_SEND_NAME];
        let _ = peer.try_read(&mut first);
        let _ = peer.try_write(NOT_ALLOWED);
        if self.guard.may_log(Instant::now()) {
            let claimed: String = claimed.chars().take(MAX_LOGGED_NAME).collect();
            warn!(
                node = %attempt.node, source = %attempt.source, claimed,
                "dist connection refused: the peer's name matches no `dist.allow_peers` glob (answered not_allowed)"
            );
        }
    }

    /// Notes a refusal in the ring of `GET /refusals`.
    pub(super) fn note(&self, attempt: &Attempt, claimed: Option<&str>, reason: Reason) {
        (self.refusals).note(attempt.source.ip(), &attempt.node, claimed, reason);
    }

    /// A connection closed at accept by the source guard.
    pub(super) fn refused(&self, node: &str, source: SocketAddr, refusal: Refusal) {
        let reason = refusal.reason();
        let noted = match refusal {
            Refusal::Banned => Reason::Banned,
            Refusal::PerSource => Reason::PerSource,
        };
        self.refusals.note(source.ip(), node, None, noted);
        metrics::counter!(m::CONNECTIONS_REFUSED, "listener" => "dist", "reason" => reason)
            .increment(1);
        if refusal == Refusal::Banned {
            HandshakeResult::Banned.count(node.to_owned());
        }
        debug!(reason, "dist connection closed at accept");
    }

    /// A handshake that did not authenticate, for a reason against the caller:
    /// counted, logged (rate-limited), and counted towards a ban of its source unless
    /// the source is trusted.
    pub(super) fn failed<T>(
        &self,
        attempt: &Attempt,
        result: HandshakeResult,
        reason: &'static str,
        claimed: Option<&str>,
        noted: Reason,
    ) -> Option<T> {
        let (node, source) = (&attempt.node, attempt.source);
        result.count(node.clone());
        self.note(attempt, claimed, noted);
        let now = Instant::now();
        if self.guard.may_log(now) {
            let claimed =
                claimed.map(|name| name.chars().take(MAX_LOGGED_NAME).collect::<String>());
            let result = result.label();
            // An IPv6 caller is counted towards a ban by its prefix: say which.
            let prefix = (!attempt.prefix.is_host()).then(|| attempt.prefix.to_string());
            warn!(%node, %source, prefix, claimed, result, reason, "dist handshake failed; connection closed");
        }
        if !attempt.trusted {
            self.guard.failed(attempt.prefix, now);
        }
        None
    }
}
