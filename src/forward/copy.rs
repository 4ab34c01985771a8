//! Buffered forwarding of one direction: read into a user-space buffer, write it out.
//! The fallback where splice(2) is unavailable, and the path `mode = "copy"` selects.
//!
//! An idle direction holds no buffer: buffers come from a [`BufferPool`] when the
//! source turns readable and go back when it is drained.

use std::io;

use tokio::net::TcpStream;

use super::pool::Pool;

/// Size of one copy buffer.
pub(super) const BUFFER_SIZE: usize = 64 * 1024;
/// Most idle buffers a pool keeps.
const MAX_IDLE_BUFFERS: usize = 256;

/// Idle copy buffers shared by every connection.
#[derive(Debug)]
pub(super) struct BufferPool(Pool<Box<[u8]>>);

impl Default for BufferPool {
    fn default() -> Self {
        BufferPool(Pool::new(MAX_IDLE_BUFFERS))
    }
}

impl BufferPool {
    fn take(&self) -> Box<[u8]> {
        self.0
            .take()
            .unwrap_or_else(|| vec![0u8; BUFFER_SIZE].into_boxed_slice())
    }

    fn put(&self, buffer: Box<[u8]>) {
        self.0.put(buffer);
    }
}

/// How a copy pump ended without an I/O error.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum End {
    /// The source reached EOF and every byte was passed on.
    Eof,
    /// A read filled a whole buffer: bulk data is queued (only with `until_bulk`).
    Bulk,
}

/// Moves bytes from `src` to `dst` until EOF on `src` (or, with `until_bulk`, until a
/// read fills a whole buffer), adding each byte written to `count`. Does not shut
/// `dst` down.
pub(super) async fn pump(
    pool: &BufferPool,
    src: &TcpStream,
    dst: &TcpStream,
    count: &mut super::Meter,
    until_bulk: bool,
) -> io::Result<End> {
    loop {
        src.readable().await?;
        let mut buffer = pool.take();
        let end = loop {
            tokio::task::consume_budget().await;
            match src.try_read(&mut buffer) {
                Ok(0) => break Ok(Some(End::Eof)),
                Ok(n) => {
                    if let Err(e) = write_all(dst, &buffer[..n]).await {
                        break Err(e);
                    }
                    count.add(n);
                    if until_bulk && n == buffer.len() {
                        break Ok(Some(End::Bulk));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(None),
                Err(e) => break Err(e),
            }
        };
        pool.put(buffer);
        if let Some(end) = end? {
            return Ok(end);
        }
    }
}

pub(super) async fn write_all(dst: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        dst.writable().await?;
        match dst.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
