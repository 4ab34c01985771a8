//! Who is calling on a dist connection: the first frame, looked at with MSG_PEEK so
//! that it stays in the socket and is forwarded like every other byte. Readiness is
//! never cleared while bytes wait, so the forwarding that follows sees them at once.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::handshake::{self, Caller, Peek};

const MIN_PAUSE: Duration = Duration::from_millis(1);
const MAX_PAUSE: Duration = Duration::from_millis(100);

/// Waits for the first frame on `stream` (at most `limit`) and classifies it. Nothing
/// is consumed. A peer that closes, errs, or sends too little in time is `Unknown`.
pub(super) async fn identify(stream: &TcpStream, limit: Duration) -> Caller {
    tokio::time::timeout(limit, first_frame(stream))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(Caller::Unknown)
}

async fn first_frame(stream: &TcpStream) -> io::Result<Caller> {
    let mut buf = vec![0u8; 256];
    let mut seen = 0;
    let mut pause = MIN_PAUSE;
    loop {
        // Waits for the first byte; later calls return at once while bytes are there.
        let n = stream.peek(&mut buf).await?;
        match handshake::classify(&buf[..n]) {
            Peek::Done(caller) => return Ok(caller),
            // The peer closed before a whole frame.
            Peek::NeedMore(_) if n == 0 => return Ok(Caller::Unknown),
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
