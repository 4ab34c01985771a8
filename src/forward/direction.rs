//! One direction of a link, as a state machine the link's task polls by hand.
//!
//! A link lives for days and is idle most of that time, so what a direction holds
//! between two messages is paid once per idle link: here that is its two socket halves,
//! its meter and a state of a few words. It holds no buffer and no pipe while idle,
//! and registers no waiter of its own: it waits through the sockets' own reader and
//! writer slots (`poll_read_ready`, `poll_write_ready`), which each socket has anyway
//! and which this direction alone uses (it is the only reader of its source and the
//! only writer of its destination).
//!
//! A small message costs one read and one write, and nothing else: it is read onto the
//! stack (uninitialised, so nothing is zeroed), written on at once, and only the part
//! the destination did not take is copied into a pooled buffer. A read shorter than
//! asked shows the source drained (tokio clears the readiness then), so no read is
//! spent learning that it would block. A read that fills the whole buffer is bulk: in
//! `auto` mode the direction splices from then on until the source is drained, and
//! where no pipe can be had it moves that burst through a bulk buffer.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{ReadHalf, WriteHalf};

use super::copy::BUFFER_SIZE;
use super::splice::{self, Pipe};
use super::{Engine, Meter, Mode};

/// One direction: everything read from its source is written to its destination. It
/// holds neither socket (the link's [`super::Bridge`] holds both and lends them to each
/// poll), so a link's state is a plain struct with nothing borrowed.
pub(super) struct Direction {
    ends: Ends,
    state: State,
}

struct Ends {
    meter: Meter,
    via: Via,
}

impl std::fmt::Debug for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direction")
            .field("via", &self.ends.via)
            .field("bytes", &self.ends.meter.total())
            .finish_non_exhaustive()
    }
}

/// The two sockets' halves one poll of a direction uses.
struct Io<'s, 'r, 'w> {
    src: &'s mut ReadHalf<'r>,
    dst: &'s mut WriteHalf<'w>,
}

/// How the next burst moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// Read onto the stack and written on (in `auto` mode, until a read fills the
    /// buffer).
    Copy,
    /// Through a pipe (in `auto` mode, until the source is drained).
    Splice,
    /// Through a bulk buffer until the source is drained (`auto` mode, no pipe).
    Bulk,
}

enum State {
    /// Holds nothing: waits for the source.
    Idle,
    /// Bytes read and not yet all written.
    Copying(Held),
    /// A pipe, holding bytes or about to.
    Splicing(Spliced),
    /// EOF passed on as a half-close, or failed.
    Done,
}

/// A pooled buffer whose `from..to` is still to be written.
struct Held {
    buffer: Box<[u8]>,
    from: usize,
    to: usize,
    /// From the bulk pool: read on into it until the source is drained.
    bulk: bool,
}

struct Spliced {
    pipe: Pipe,
    /// Bytes in the pipe: with any there, EAGAIN from the source may mean a full pipe.
    in_pipe: usize,
    eof: bool,
}

/// What a state's step led to.
enum Step {
    /// On to this state now.
    Go(State),
    /// In this state until woken.
    Wait(State),
    /// Over: EOF passed on, or the error.
    End(io::Result<()>),
}

/// `Step::End` on an error, the value otherwise.
macro_rules! tried {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return Step::End(Err(e)),
        }
    };
}

impl Direction {
    /// A direction counting into `meter`, starting as `mode` says.
    pub(super) fn new(meter: Meter, mode: Mode) -> Self {
        let via = match mode {
            Mode::Splice => Via::Splice,
            Mode::Copy | Mode::Auto => Via::Copy,
        };
        Direction {
            ends: Ends { meter, via },
            state: State::Idle,
        }
    }

    /// Bytes written so far.
    pub(super) fn meter(&self) -> &Meter {
        &self.ends.meter
    }

    /// Moves bytes from `src` to `dst` until `src` reached EOF and it was passed on as
    /// a half-close of `dst` (`Ready(Ok)`), or an error. Always the same two halves.
    pub(super) fn poll(
        &mut self,
        src: &mut ReadHalf<'_>,
        dst: &mut WriteHalf<'_>,
        engine: &Engine,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let mut io = Io { src, dst };
        loop {
            let state = std::mem::replace(&mut self.state, State::Done);
            let ends = &mut self.ends;
            let step = match state {
                State::Done => return Poll::Ready(Ok(())),
                State::Idle => ends.idle(&mut io, engine, cx),
                State::Copying(held) => ends.copying(&mut io, held, engine, cx),
                State::Splicing(spliced) => ends.splicing(&mut io, spliced, engine, cx),
            };
            match step {
                Step::Go(next) => self.state = next,
                Step::Wait(next) => {
                    self.state = next;
                    return Poll::Pending;
                }
                Step::End(result) => return Poll::Ready(result),
            }
        }
    }
}

impl Ends {
    fn idle(&mut self, io: &mut Io<'_, '_, '_>, engine: &Engine, cx: &mut Context<'_>) -> Step {
        match self.via {
            Via::Copy => self.copy_small(io, engine, cx),
            Via::Bulk => Step::Go(State::Copying(Held {
                buffer: engine.bulk_buffers.take(),
                from: 0,
                to: 0,
                bulk: true,
            })),
            Via::Splice => {
                // The pipe is taken only once there is something to put in it.
                match io.src.as_ref().poll_read_ready(cx) {
                    Poll::Pending => return Step::Wait(State::Idle),
                    Poll::Ready(ready) => tried!(ready),
                }
                match engine.pipes.take() {
                    Ok(pipe) => Step::Go(State::Splicing(Spliced {
                        pipe,
                        in_pipe: 0,
                        eof: false,
                    })),
                    Err(e) => {
                        super::no_pipe(&e);
                        // This burst goes by copy; in `auto` mode the next asks for a
                        // pipe again, in `splice` mode copy it is from now on.
                        self.via = match engine.mode {
                            Mode::Auto => Via::Bulk,
                            Mode::Copy | Mode::Splice => Via::Copy,
                        };
                        Step::Go(State::Idle)
                    }
                }
            }
        }
    }

    /// One read onto the stack, written on at once; what `dst` does not take now waits
    /// in a pooled buffer.
    fn copy_small(
        &mut self,
        io: &mut Io<'_, '_, '_>,
        engine: &Engine,
        cx: &mut Context<'_>,
    ) -> Step {
        let mut stack = [MaybeUninit::<u8>::uninit(); BUFFER_SIZE];
        let mut read = ReadBuf::uninit(&mut stack);
        match Pin::new(&mut *io.src).poll_read(cx, &mut read) {
            Poll::Pending => return Step::Wait(State::Idle),
            Poll::Ready(ready) => tried!(ready),
        }
        let bytes = read.filled();
        if bytes.is_empty() {
            return eof(io);
        }
        if bytes.len() == BUFFER_SIZE && engine.mode == Mode::Auto {
            self.via = Via::Splice;
        }
        let mut from = 0;
        while from < bytes.len() {
            match self.write(io, cx, &bytes[from..]) {
                Poll::Ready(written) => from += tried!(written),
                Poll::Pending => {
                    let rest = &bytes[from..];
                    let mut buffer = engine.buffers.take();
                    buffer[..rest.len()].copy_from_slice(rest);
                    return Step::Wait(State::Copying(Held {
                        buffer,
                        from: 0,
                        to: rest.len(),
                        bulk: false,
                    }));
                }
            }
        }
        Step::Go(State::Idle)
    }

    fn copying(
        &mut self,
        io: &mut Io<'_, '_, '_>,
        mut held: Held,
        engine: &Engine,
        cx: &mut Context<'_>,
    ) -> Step {
        while held.from < held.to {
            match self.write(io, cx, &held.buffer[held.from..held.to]) {
                Poll::Ready(written) => held.from += tried!(written),
                Poll::Pending => return Step::Wait(State::Copying(held)),
            }
        }
        if !held.bulk {
            engine.buffers.put(held.buffer);
            return Step::Go(State::Idle);
        }
        // A bulk burst reads on until the source would block, as the pipe would.
        match io.src.as_ref().try_read(&mut held.buffer) {
            Ok(0) => {
                engine.bulk_buffers.put(held.buffer);
                eof(io)
            }
            Ok(n) => {
                held.from = 0;
                held.to = n;
                Step::Go(State::Copying(held))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                engine.bulk_buffers.put(held.buffer);
                self.via = Via::Copy;
                Step::Go(State::Idle)
            }
            Err(e) => Step::End(Err(e)),
        }
    }

    fn splicing(
        &mut self,
        io: &mut Io<'_, '_, '_>,
        mut s: Spliced,
        engine: &Engine,
        cx: &mut Context<'_>,
    ) -> Step {
        loop {
            // Splicing never waits while both sides keep up: give the other tasks
            // their turn now and then.
            match tokio::task::coop::poll_proceed(cx) {
                Poll::Pending => return Step::Wait(State::Splicing(s)),
                Poll::Ready(coop) => coop.made_progress(),
            }
            let dst = io.dst.as_ref();
            let dst_blocked = match s.in_pipe {
                0 => false,
                _ => tried!(splice::drain(&s.pipe, dst, &mut s.in_pipe, &mut self.meter)),
            };
            if s.eof {
                if s.in_pipe == 0 {
                    engine.pipes.put(s.pipe);
                    return eof(io);
                }
            } else if s.in_pipe == 0 {
                // Empty pipe: EAGAIN can only mean the source is drained.
                match splice::fill(io.src.as_ref(), &s.pipe) {
                    Ok(0) => s.eof = true,
                    Ok(n) => s.in_pipe = n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // Idle: the pipe goes back until data arrives.
                        engine.pipes.put(s.pipe);
                        if engine.mode == Mode::Auto {
                            self.via = Via::Copy;
                        }
                        return Step::Go(State::Idle);
                    }
                    Err(e) => return Step::End(Err(e)),
                }
                continue;
            } else if s.in_pipe < s.pipe.capacity()
                && tried!(splice::top_up(
                    io.src.as_ref(),
                    &s.pipe,
                    &mut s.in_pipe,
                    &mut s.eof
                ))
            {
                continue;
            }
            if dst_blocked {
                match dst.poll_write_ready(cx) {
                    Poll::Pending => return Step::Wait(State::Splicing(s)),
                    Poll::Ready(ready) => tried!(ready),
                }
            }
        }
    }

    /// One write, counted.
    fn write(
        &mut self,
        io: &mut Io<'_, '_, '_>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut *io.dst).poll_write(cx, bytes) {
            Poll::Ready(Ok(0)) => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => {
                self.meter.add(n);
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }
}

/// EOF from the source: passed on as a half-close.
fn eof(io: &mut Io<'_, '_, '_>) -> Step {
    Step::End(super::half_close(io.dst.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both directions of every open link live in its task for the link's whole life:
    /// a meter and a few words of state, no socket, buffer, pipe or waiter.
    #[test]
    fn a_direction_stays_a_few_words() {
        let size = std::mem::size_of::<Direction>();
        eprintln!("a direction: {size} bytes");
        assert!(size <= 72, "a direction is {size} bytes");
    }
}
