//! Dist forwarding: accepting on public ports ([`public`]) and moving the bytes of a
//! dist connection between the peer and the node ([`proxy`]).
//!
//! [`proxy`] is the one function every caller uses to forward a stream; how the bytes
//! move (a buffered copy today) is its own business.

pub mod public;

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Size of each direction's copy buffer.
const COPY_BUF: usize = 16 * 1024;

/// What a forwarded connection carried and how it ended.
#[derive(Debug)]
pub struct Outcome {
    /// Bytes moved from the client (the peer that connected) to the upstream (the node).
    pub to_upstream: u64,
    /// Bytes moved from the upstream to the client.
    pub to_client: u64,
    /// `Ok` when both directions ended with EOF; the first error otherwise.
    pub result: io::Result<()>,
}

/// Forwards both directions until both have ended. EOF on one side is passed on as a
/// half-close of the other (the other direction keeps flowing); an error on either
/// side ends both, and both sockets close when this returns. No idle timeout: dist
/// links are quiet but for ticks and live for days.
pub async fn proxy(mut client: TcpStream, mut upstream: TcpStream) -> Outcome {
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    let (mut to_upstream, mut to_client) = (0, 0);
    let result = tokio::try_join!(
        copy_half(&mut client_read, &mut upstream_write, &mut to_upstream),
        copy_half(&mut upstream_read, &mut client_write, &mut to_client),
    )
    .map(|_| ());
    Outcome {
        to_upstream,
        to_client,
        result,
    }
}

/// Copies one direction until EOF, then shuts down the writer's sending side.
async fn copy_half<R, W>(reader: &mut R, writer: &mut W, count: &mut u64) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; COPY_BUF];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return writer.shutdown().await;
        }
        writer.write_all(&buf[..n]).await?;
        *count += n as u64;
    }
}
