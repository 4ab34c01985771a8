//! Buffers of the copy path (`mode = "copy"`, small messages in `auto`, the fallback
//! where no pipe can be had), shared by every link: a direction holds one only while
//! bytes wait for a slow destination, or through a bulk burst moved without a pipe.

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

    pub(super) fn take(&self) -> Box<[u8]> {
        self.idle
            .take()
            .unwrap_or_else(|| vec![0u8; self.size].into_boxed_slice())
    }

    pub(super) fn put(&self, buffer: Box<[u8]>) {
        self.idle.put(buffer);
    }

    /// Frees every idle buffer.
    pub(super) fn clear(&self) {
        self.idle.retain(|_| false);
    }
}
