//! The handshake phase of a plain-TCP dist link: the bytes go through a buffered copy
//! while [`Handshake`] follows them, so that nothing is forwarded past a frame no OTP
//! node sends. Once the node has sent its challenge ack the link is authenticated and
//! the caller moves it to the engine (splice); this phase never holds a pipe.
//!
//! Memory: one buffer of [`BUFFER`] bytes, freed when the phase ends, and the
//! follower's one frame per side. Time: the caller bounds the phase with
//! `[dist] handshake_timeout`.

use std::io;

use tokio::net::TcpStream;

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
/// that breaks the handshake is not passed on.
pub(super) async fn follow(
    peer: &TcpStream,
    node: &TcpStream,
    handshake: &mut Handshake,
    passed: &mut ByteCounts,
) -> Followed {
    let mut buffer = vec![0u8; BUFFER];
    // The node's refusal, when it sent one: `nok` is a race, `not_allowed` is not.
    let mut refused: Option<bool> = None;
    loop {
        let (side, ready) = tokio::select! {
            ready = peer.readable() => (Side::Caller, ready),
            ready = node.readable() => (Side::Node, ready),
        };
        if ready.is_err() {
            return failed("io_error", false);
        }
        let (src, dst) = match side {
            Side::Caller => (peer, node),
            Side::Node => (node, peer),
        };
        let n = match src.try_read(&mut buffer) {
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
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            // A node that resets is a node that refused; a caller that resets called off.
            Err(_) if side == Side::Node => return failed("node_reset", true),
            Err(_) => return failed("caller_reset", false),
        };
        let bytes = &buffer[..n];
        let progress = match handshake.feed(side, bytes) {
            Ok(progress) => progress,
            Err(violation) => {
                // The node is the pod's own: what it says still reaches the caller
                // (so that `distgate probe` can tell what listens there). A caller's
                // bytes that break the handshake never reach the node.
                if side == Side::Node {
                    let _ = super::copy::write_all(dst, bytes).await;
                }
                return failed(violation.reason(), side == Side::Caller);
            }
        };
        if super::copy::write_all(dst, bytes).await.is_err() {
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
