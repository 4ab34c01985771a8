//! Zero-copy forwarding of one direction with splice(2): socket → pipe → socket, so the
//! bytes never enter user space.
//!
//! Driven by tokio readiness: reads from the source go through `try_io` only while the
//! pipe is empty, because only then does EAGAIN mean "the socket is drained" (with bytes
//! in the pipe it may mean "the pipe is full", and clearing the socket's readiness on
//! that would stall the stream). A splicing direction (`direction.rs`) counts the bytes
//! sitting in the pipe for that reason. An idle direction holds no pipe: pipes come from a [`PipePool`] when data
//! arrives and go back once empty. A pipe that still holds data is dropped, never
//! reused.
//!
//! The system calls go through `nix`'s safe wrappers; this module holds no `unsafe`.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use nix::unistd::pipe2;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tracing::warn;

use super::pool::Pool;
use crate::metrics as m;

/// The kernel's own pipe size, used when a larger one cannot be had.
pub(super) const DEFAULT_PIPE_SIZE: usize = 64 * 1024;
/// Most idle pipes a pool keeps; more are closed. Every pipe counts against the pipe
/// quota its user shares with every other process of that UID on the node
/// (`fs.pipe-user-pages-soft`): idle ones are kept few and briefly.
pub const MAX_IDLE_PIPES: usize = 4;
/// An idle pipe is closed after this long unused.
pub const PIPE_IDLE_FOR: Duration = Duration::from_secs(1);
/// After a pipe came back too small to use, how long new streams go by copy without
/// trying again (the quota frees up as other pipes close).
const SHORT_BACKOFF: Duration = Duration::from_secs(1);

/// A pipe used as the in-kernel buffer of one direction.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Drop for Pipe {
    fn drop(&mut self) {
        ::metrics::gauge!(m::SPLICE_PIPES).decrement(1.0);
    }
}

impl Pipe {
    /// A non-blocking pipe, grown towards `size`: where the system refuses that size
    /// (beyond pipe-max-size, or past the user's pipe quota) half of it is asked, and
    /// so on down to `floor`. [`Pipe::capacity`] is the size it got, which past the
    /// quota may be two pages whatever was asked.
    pub fn new(size: usize, floor: usize) -> io::Result<Pipe> {
        let (read, write) = pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        ::metrics::gauge!(m::SPLICE_PIPES).increment(1.0);
        let mut wanted = size;
        loop {
            let ask = i32::try_from(wanted).unwrap_or(i32::MAX);
            if fcntl(&write, FcntlArg::F_SETPIPE_SZ(ask)).is_ok() || wanted / 2 < floor {
                break;
            }
            wanted /= 2;
        }
        let capacity = fcntl(&write, FcntlArg::F_GETPIPE_SZ)
            .ok()
            .and_then(|c| usize::try_from(c).ok())
            .unwrap_or(DEFAULT_PIPE_SIZE);
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }

    /// The size the pipe got.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Why no pipe: none could be made, or the one made was too small to beat a copy.
#[derive(Debug, thiserror::Error)]
pub enum NoPipe {
    /// pipe2(2) failed (descriptors exhausted, usually).
    #[error("no pipe: {0}")]
    Failed(#[from] io::Error),
    /// The pipe quota left only pipes smaller than the copy buffer.
    #[error("pipes come back at {got} bytes, below the {floor}-byte copy buffer (pipe quota)")]
    Short {
        /// What the last pipe got.
        got: usize,
        /// The least worth splicing through.
        floor: usize,
    },
}

/// Idle, empty pipes shared by every connection.
#[derive(Debug)]
pub struct PipePool {
    size: usize,
    /// The smallest pipe worth splicing through: a smaller one moves bytes slower than
    /// the copy buffer does.
    floor: usize,
    idle: Pool<(Instant, Pipe)>,
    created: AtomicUsize,
    /// Until when (ms since `epoch`) new pipes are not tried after a short one.
    short_until_ms: AtomicU64,
    epoch: Instant,
    /// The quota warning is logged once.
    warned: AtomicBool,
}

impl PipePool {
    /// A pool of pipes of `size` bytes (capped by the system's pipe-max-size); a pipe
    /// below `floor` bytes (or `size`, if smaller) is not used.
    pub fn new(size: usize, floor: usize) -> PipePool {
        let size = size.min(max_pipe_size());
        for result in ["smaller", "refused"] {
            ::metrics::counter!(m::SPLICE_PIPES_SHORT, "result" => result).increment(0);
        }
        ::metrics::counter!(m::SPLICE_COPY_FALLBACKS).increment(0);
        PipePool {
            size,
            floor: floor.min(size),
            idle: Pool::new(MAX_IDLE_PIPES),
            created: AtomicUsize::new(0),
            short_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            warned: AtomicBool::new(false),
        }
    }

    /// The pipe size this pool asks for.
    pub fn pipe_size(&self) -> usize {
        self.size
    }

    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// An idle pipe, or a new one of at least `floor` bytes.
    pub fn take(&self) -> Result<Pipe, NoPipe> {
        let now = Instant::now();
        while let Some((since, pipe)) = self.idle.take() {
            if now.saturating_duration_since(since) < PIPE_IDLE_FOR {
                return Ok(pipe);
            }
        }
        if self.ms(now) < self.short_until_ms.load(Ordering::Relaxed) {
            return Err(NoPipe::Short {
                got: 0,
                floor: self.floor,
            });
        }
        let pipe = Pipe::new(self.size, self.floor).inspect_err(|_| {
            ::metrics::counter!(m::SPLICE_PIPES_SHORT, "result" => "refused").increment(1);
        })?;
        self.created.fetch_add(1, Ordering::Relaxed);
        if pipe.capacity >= self.size {
            return Ok(pipe);
        }
        let got = pipe.capacity;
        let usable = got >= self.floor;
        let result = if usable { "smaller" } else { "refused" };
        ::metrics::counter!(m::SPLICE_PIPES_SHORT, "result" => result).increment(1);
        if !self.warned.swap(true, Ordering::Relaxed) {
            warn!(
                asked = self.size,
                got,
                "splice pipes come back smaller than asked: the pipe quota of this UID \
                 (sysctl fs.pipe-user-pages-soft, shared by every process of the UID on the \
                 node) is used up; bulk streams move by copy where a pipe is below the copy \
                 buffer (distgate_splice_pipes_short_total). Raise the sysctl on the node or \
                 run this workload as a UID of its own"
            );
        }
        if usable {
            return Ok(pipe);
        }
        let until = self.ms(now + SHORT_BACKOFF);
        self.short_until_ms.store(until, Ordering::Relaxed);
        Err(NoPipe::Short {
            got,
            floor: self.floor,
        })
    }

    /// Returns an empty pipe for reuse.
    pub(super) fn put(&self, pipe: Pipe) {
        self.idle.put((Instant::now(), pipe));
    }

    /// Closes the idle pipes unused for [`PIPE_IDLE_FOR`].
    pub fn trim(&self) {
        let now = Instant::now();
        self.idle
            .retain(|(since, _)| now.saturating_duration_since(*since) < PIPE_IDLE_FOR);
    }

    /// How many pipes the pool has made so far.
    pub fn created(&self) -> usize {
        self.created.load(Ordering::Relaxed)
    }

    /// How many idle pipes the pool holds.
    pub fn idle(&self) -> usize {
        self.idle.len()
    }
}

/// The system's largest pipe size for unprivileged users.
fn max_pipe_size() -> usize {
    std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(DEFAULT_PIPE_SIZE)
}

fn flags() -> SpliceFFlags {
    // No SPLICE_F_MORE: it may hold back the small frames dist links live on.
    SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Passes what the pipe holds on to `dst`; whether `dst` would block.
pub(super) fn drain(
    p: &Pipe,
    dst: &TcpStream,
    in_pipe: &mut usize,
    count: &mut super::Meter,
) -> io::Result<bool> {
    let out = || splice(&p.read, None, dst, None, *in_pipe, flags()).map_err(io::Error::from);
    match dst.try_io(Interest::WRITABLE, out) {
        Ok(n) => {
            *in_pipe -= n;
            count.add(n);
            Ok(false)
        }
        Err(e) if would_block(&e) => Ok(true),
        Err(e) => Err(e),
    }
}

/// Adds to a pipe that holds bytes already; whether anything happened (bytes or EOF).
/// EAGAIN may mean a full pipe here, so the socket's readiness is left alone and the
/// drain decides what to wait for.
pub(super) fn top_up(
    src: &TcpStream,
    p: &Pipe,
    in_pipe: &mut usize,
    eof: &mut bool,
) -> io::Result<bool> {
    match splice(src, None, &p.write, None, p.capacity - *in_pipe, flags()) {
        Ok(0) => {
            *eof = true;
            Ok(true)
        }
        Ok(n) => {
            *in_pipe += n;
            Ok(true)
        }
        Err(nix::errno::Errno::EAGAIN) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Fills an empty pipe from `src`: bytes moved, 0 at EOF, `WouldBlock` when `src` is
/// drained (its readiness cleared, since with the pipe empty nothing else can block).
pub(super) fn fill(src: &TcpStream, p: &Pipe) -> io::Result<usize> {
    let fill = || splice(src, None, &p.write, None, p.capacity, flags()).map_err(io::Error::from);
    src.try_io(Interest::READABLE, fill)
}
