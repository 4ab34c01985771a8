//! Who is calling on a dist connection: the first frame, looked at with MSG_PEEK so
//! that it stays in the socket and is forwarded like every other byte. Readiness is
//! never cleared while bytes wait, so the forwarding that follows sees them at once.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::handshake::{self, Caller, Peek};

const MIN_PAUSE: Duration = Duration::from_millis(1);
const MAX_PAUSE: Duration = Duration::from_millis(100);

/// What a caller's first bytes were.
#[derive(Debug)]
pub(super) enum FirstFrame {
    /// It closed (or reset) before sending a byte: a port check, not a handshake.
    Silent,
    /// A whole first frame (or bytes that are clearly no dist frame: `Unknown`).
    Caller(Caller),
}

/// Waits for the first frame on `stream` (without a limit: the caller sets one) and
/// classifies it. Nothing is consumed.
pub(super) async fn identify(stream: &TcpStream) -> FirstFrame {
    match first_frame(stream).await {
        Ok(Some(caller)) => FirstFrame::Caller(caller),
        Ok(None) | Err(_) => FirstFrame::Silent,
    }
}

async fn first_frame(stream: &TcpStream) -> io::Result<Option<Caller>> {
    let mut buf = vec![0u8; 256];
    let mut seen = 0;
    let mut pause = MIN_PAUSE;
    loop {
        // Waits for the first byte; later calls return at once while bytes are there.
        let n = stream.peek(&mut buf).await?;
        match handshake::classify(&buf[..n]) {
            Peek::Done(caller) => return Ok(Some(caller)),
            // The peer closed before its first byte.
            Peek::NeedMore(_) if n == 0 => return Ok(None),
            // The buffer was full: grow it to the frame and look again.
            Peek::NeedMore(want) if n == buf.len() => {
                buf.resize(want.max(2 * n).min(handshake::MAX_TLS_RECORD), 0);
            }
            // A frame cut short in flight (nodes send it in one write, so this is rare).
            // The bytes stay in the socket, so its readiness stays set and cannot be
            // waited on: wait by time, backing off while nothing new arrives.
            Peek::NeedMore(_) => {
                pause = if n > seen {
                    MIN_PAUSE
                } else {
                    (pause * 2).min(MAX_PAUSE)
                };
                seen = n;
                tokio::time::sleep(pause).await;
            }
        }
    }
}
