//! Zero-copy forwarding of one direction with splice(2): socket → pipe → socket, so the
//! bytes never enter user space.
//!
//! Driven by tokio readiness: reads from the source go through `try_io` only while the
//! pipe is empty, because only then does EAGAIN mean "the socket is drained" (with bytes
//! in the pipe it may mean "the pipe is full", and clearing the socket's readiness on
//! that would stall the stream). The pump counts the bytes sitting in the pipe for that
//! reason. An idle direction holds no pipe: pipes come from a [`PipePool`] when data
//! arrives and go back once empty. A pipe that still holds data is dropped, never
//! reused.
//!
//! The system calls go through `nix`'s safe wrappers; this module holds no `unsafe`.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use nix::unistd::pipe2;
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::pool::Pool;

/// The kernel's own pipe size, used when a larger one cannot be had.
pub(super) const DEFAULT_PIPE_SIZE: usize = 64 * 1024;
/// Most idle pipes a pool keeps; more are closed.
/// Kept small: every pipe counts against the user's pipe quota (pipe-user-pages-soft).
pub const MAX_IDLE_PIPES: usize = 16;

/// A pipe used as the in-kernel buffer of one direction.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    /// A non-blocking pipe, grown to `size` where the system allows.
    pub fn new(size: usize) -> io::Result<Pipe> {
        let (read, write) = pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        let wanted = i32::try_from(size).unwrap_or(i32::MAX);
        // A refused size (beyond pipe-max-size, or the user's pipe quota) keeps the
        // kernel's default; the pipe works either way.
        let _ = fcntl(&write, FcntlArg::F_SETPIPE_SZ(wanted));
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

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Idle, empty pipes shared by every connection.
#[derive(Debug)]
pub struct PipePool {
    size: usize,
    idle: Pool<Pipe>,
    created: AtomicUsize,
}

impl PipePool {
    /// A pool of pipes of `size` bytes (capped by the system's pipe-max-size).
    pub fn new(size: usize) -> PipePool {
        PipePool {
            size: size.min(max_pipe_size()),
            idle: Pool::new(MAX_IDLE_PIPES),
            created: AtomicUsize::new(0),
        }
    }

    /// The pipe size this pool asks for.
    pub fn pipe_size(&self) -> usize {
        self.size
    }

    /// An idle pipe, or a new one.
    pub fn take(&self) -> io::Result<Pipe> {
        if let Some(pipe) = self.idle.take() {
            return Ok(pipe);
        }
        let pipe = Pipe::new(self.size)?;
        self.created.fetch_add(1, Ordering::Relaxed);
        Ok(pipe)
    }

    /// Returns an empty pipe for reuse.
    fn put(&self, pipe: Pipe) {
        self.idle.put(pipe);
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

/// How a splice pump ended without an I/O error.
#[derive(Debug)]
pub(super) enum End {
    /// The source reached EOF and every byte was passed on.
    Eof,
    /// The source was drained and the pipe is empty (only with `until_idle`).
    Idle,
    /// No pipe could be made (descriptors or pipe quota exhausted); the pipe was empty,
    /// so the caller may carry on with a buffered copy.
    NoPipe(io::Error),
}

fn flags() -> SpliceFFlags {
    // No SPLICE_F_MORE: it may hold back the small frames dist links live on.
    SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Passes what the pipe holds on to `dst`; whether `dst` would block.
fn drain(
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
fn top_up(src: &TcpStream, p: &Pipe, in_pipe: &mut usize, eof: &mut bool) -> io::Result<bool> {
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

/// Moves bytes from `src` to `dst` until EOF on `src` with the pipe drained (or, with
/// `until_idle`, until `src` has nothing more for now), adding each byte passed to
/// `dst` to `count`. Does not shut `dst` down.
pub(super) async fn pump(
    pool: &PipePool,
    src: &TcpStream,
    dst: &TcpStream,
    count: &mut super::Meter,
    until_idle: bool,
) -> io::Result<End> {
    let mut pipe: Option<Pipe> = None;
    let mut in_pipe = 0usize;
    let mut eof = false;
    loop {
        tokio::task::consume_budget().await;
        let dst_blocked = match pipe.as_ref().filter(|_| in_pipe > 0) {
            Some(p) => drain(p, dst, &mut in_pipe, count)?,
            None => false,
        };
        if eof {
            if in_pipe == 0 {
                if let Some(p) = pipe {
                    pool.put(p);
                }
                return Ok(End::Eof);
            }
            if dst_blocked {
                dst.writable().await?;
            }
            continue;
        }
        if in_pipe == 0 {
            // Empty pipe: EAGAIN can only mean the socket is drained.
            let p = match pipe.take() {
                Some(p) => p,
                None => {
                    src.readable().await?;
                    match pool.take() {
                        Ok(p) => p,
                        Err(e) => return Ok(End::NoPipe(e)),
                    }
                }
            };
            let fill =
                || splice(src, None, &p.write, None, p.capacity, flags()).map_err(io::Error::from);
            match src.try_io(Interest::READABLE, fill) {
                Ok(0) => eof = true,
                Ok(n) => in_pipe = n,
                // Idle: the pipe goes back until data arrives.
                Err(e) if would_block(&e) => {
                    pool.put(p);
                    if until_idle {
                        return Ok(End::Idle);
                    }
                    continue;
                }
                Err(e) => return Err(e),
            }
            pipe = Some(p);
            continue;
        }
        let Some(p) = pipe.as_ref() else {
            continue;
        };
        if in_pipe < p.capacity && top_up(src, p, &mut in_pipe, &mut eof)? {
            continue;
        }
        if dst_blocked {
            dst.writable().await?;
        }
    }
}
