//! The handshake phase of a plain-TCP dist link: the bytes go through a buffered copy
//! while [`Handshake`] follows them, so that nothing is forwarded past a frame no OTP
//! node sends. Once the node has sent its challenge ack the link is authenticated and
//! the caller moves it to the engine (splice); this phase never holds a pipe.
//!
//! Memory: one buffer of [`BUFFER`] bytes, freed when the phase ends, and the
//! follower's one frame per side. Time: the caller bounds the phase with
//! `[dist] handshake_timeout`.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::ByteCounts;
use crate::handshake::follow::{Handshake, Progress, Side};

/// Read size while following; handshake frames are at most 1,102 bytes.
const BUFFER: usize = 4096;

/// How the handshake phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Followed {
    /// The node sent its challenge ack; every byte so far was passed on.
    Authenticated,
    /// The handshake ended without an ack, for this bounded reason.
    Failed {
        /// What ended it.
        reason: &'static str,
        /// Whether it says something against the caller (a wrong cookie, bytes no
        /// node sends, a name the node refuses) and counts towards a ban. A caller
        /// calling off its own attempt, and the races of two nodes connecting to each
        /// other at once, happen between healthy nodes and do not.
        against_caller: bool,
    },
}

fn failed(reason: &'static str, against_caller: bool) -> Followed {
    Followed::Failed {
        reason,
        against_caller,
    }
}

/// Copies between `peer` and `node` while following the handshake, until it is
/// authenticated or fails, counting the bytes passed on into `passed`. A peer's frame
/// that breaks the handshake is not passed on. `early` holds caller bytes already
/// taken off its stream (behind a federation request), followed first.
///
/// Either side may be a TCP socket or a TLS stream (a link across gateways).
pub(super) async fn follow<P, N>(
    peer: &mut P,
    node: &mut N,
    early: &[u8],
    handshake: &mut Handshake,
    passed: &mut ByteCounts,
) -> Followed
where
    P: AsyncRead + AsyncWrite + Unpin,
    N: AsyncRead + AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; 2 * BUFFER];
    // The node's refusal, when it sent one: `nok` is a race, `not_allowed` is not.
    let mut refused: Option<bool> = None;
    let mut early = Some(early).filter(|e| !e.is_empty());
    loop {
        let (from_peer, from_node) = buffer.split_at_mut(BUFFER);
        let (side, read) = match early.take() {
            Some(bytes) => {
                let (now, later) = bytes.split_at(bytes.len().min(BUFFER));
                from_peer[..now.len()].copy_from_slice(now);
                early = Some(later).filter(|l| !l.is_empty());
                (Side::Caller, Ok(now.len()))
            }
            None => tokio::select! {
                read = peer.read(from_peer) => (Side::Caller, read),
                read = node.read(from_node) => (Side::Node, read),
            },
        };
        let n = match read {
            Ok(0) => {
                return match (refused, side) {
                    (Some(true), _) => failed("simultaneous", false),
                    (Some(false), _) => failed("refused_by_node", true),
                    (None, _) if handshake.is_refused() => failed("caller_withdrew", false),
                    (None, Side::Caller) => failed("caller_closed", false),
                    (None, Side::Node) => failed("node_closed", true),
                };
            }
            Ok(n) => n,
            // A node that resets is a node that refused; a caller that resets called off.
            Err(_) if side == Side::Node => return failed("node_reset", true),
            Err(_) => return failed("caller_reset", false),
        };
        let bytes = match side {
            Side::Caller => &from_peer[..n],
            Side::Node => &from_node[..n],
        };
        let progress = match handshake.feed(side, bytes) {
            Ok(progress) => progress,
            Err(violation) => {
                // The node is the pod's own: what it says still reaches the caller
                // (so that `distgate probe` can tell what listens there). A caller's
                // bytes that break the handshake never reach the node.
                if side == Side::Node {
                    let _ = write_all(peer, bytes).await;
                }
                return failed(violation.reason(), side == Side::Caller);
            }
        };
        let written = match side {
            Side::Caller => write_all(node, bytes).await,
            Side::Node => write_all(peer, bytes).await,
        };
        if written.is_err() {
            // The side written to is gone: judged as if it had reset.
            return match side {
                Side::Caller => failed("node_reset", true),
                Side::Node => failed("caller_reset", false),
            };
        }
        match side {
            Side::Caller => passed.from_peer += n as u64,
            Side::Node => passed.to_peer += n as u64,
        }
        match progress {
            Progress::Authenticated => return Followed::Authenticated,
            Progress::Refused(status) => refused = Some(status == "nok"),
            Progress::Pending => {}
        }
    }
}

/// Writes all of `bytes` and flushes them (a TLS stream holds them until then).
async fn write_all<W: AsyncWrite + Unpin>(dst: &mut W, bytes: &[u8]) -> io::Result<()> {
    dst.write_all(bytes).await?;
    dst.flush().await
}
