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
/// Size of a buffer for bulk moved by copy because no pipe could be had: fewer, larger
/// reads and writes. Measured as UID 65532 with the pipe quota held (BENCHMARKS.md,
/// run I): with 1 MiB one stream ran at 1.27× its spliced rate with the quota free,
/// with 256 KiB at 0.89–1.01×, with the 64 KiB copy buffer at 0.72×.
pub(super) const BULK_BUFFER_SIZE: usize = 1024 * 1024;
/// Most idle bulk buffers kept (and only until the next trim, within a second).
const MAX_IDLE_BULK_BUFFERS: usize = 4;

/// Idle copy buffers of one size shared by every connection.
#[derive(Debug)]
pub(super) struct BufferPool {
    idle: Pool<Box<[u8]>>,
    size: usize,
}

impl Default for BufferPool {
    fn default() -> Self {
        BufferPool {
            idle: Pool::new(MAX_IDLE_BUFFERS),
            size: BUFFER_SIZE,
        }
    }
}

impl BufferPool {
    /// The pool of bulk buffers.
    pub(super) fn bulk() -> BufferPool {
        BufferPool {
            idle: Pool::new(MAX_IDLE_BULK_BUFFERS),
            size: BULK_BUFFER_SIZE,
        }
    }

    fn take(&self) -> Box<[u8]> {
        self.idle
            .take()
            .unwrap_or_else(|| vec![0u8; self.size].into_boxed_slice())
    }

    fn put(&self, buffer: Box<[u8]>) {
        self.idle.put(buffer);
    }

    /// Frees every idle buffer.
    pub(super) fn clear(&self) {
        self.idle.retain(|_| false);
    }
}

/// How a copy pump ended without an I/O error.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum End {
    /// The source reached EOF and every byte was passed on.
    Eof,
    /// A read filled a whole buffer: bulk data is queued (only with [`Until::Bulk`]).
    Bulk,
    /// The source was drained (only with [`Until::Idle`]).
    Idle,
}

/// When a copy pump hands back before EOF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Until {
    /// Never: it runs to EOF.
    Eof,
    /// Once a read fills a whole buffer (bulk: splice may take over).
    Bulk,
    /// Once the source is drained (a burst moved by copy is over).
    Idle,
}

/// Moves bytes from `src` to `dst` until EOF on `src` (or as `until` says), adding each
/// byte written to `count`. Does not shut `dst` down.
pub(super) async fn pump(
    pool: &BufferPool,
    src: &TcpStream,
    dst: &TcpStream,
    count: &mut super::Meter,
    until: Until,
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
                    if until == Until::Bulk && n == buffer.len() {
                        break Ok(Some(End::Bulk));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && until == Until::Idle => {
                    break Ok(Some(End::Idle));
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
