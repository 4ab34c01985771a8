//! Logging: the tracing subscriber (text or JSON, colour only at a terminal), a
//! filter a reload may change, and an output that never blocks distgate on its reader.
//!
//! A line is handed to a thread of its own (tracing-appender's non-blocking writer,
//! lossy) that writes it to standard error. A reader that stops reading (a stalled
//! log shipper, a pager) blocks that thread only: once [`LINES`] lines wait, later
//! ones are dropped and counted in `distgate_log_lines_dropped_total`, and the lines
//! flow again when the reader does. A reader that is gone (a closed pipe, a full
//! disk) costs the lines it does not take, counted the same way.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tracing::{error, info, warn};
use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, WorkerGuard};

use crate::cli::LogFormat;

/// Lines that may wait for the log thread (about 1 MiB of JSON lines).
const LINES: usize = 4096;

/// How long the exit waits for the log thread to write what waits.
const FLUSH_FOR: Duration = Duration::from_secs(1);

/// The log thread's guard: dropped, it writes what waits and ends the thread.
static LOG_THREAD: Mutex<Option<WorkerGuard>> = Mutex::new(None);

/// Writes the lines still waiting, for at most [`FLUSH_FOR`]: called before distgate
/// exits. (A reader that stopped reading cannot hold the exit longer.)
pub(crate) fn finish() {
    let guard = LOG_THREAD.lock().unwrap_or_else(|p| p.into_inner()).take();
    let Some(guard) = guard else { return };
    let (done, finished) = std::sync::mpsc::channel();
    let flushing = std::thread::Builder::new()
        .name("distgate-log-exit".into())
        .spawn(move || {
            drop(guard);
            let _ = done.send(());
        });
    if flushing.is_ok() {
        let _ = finished.recv_timeout(FLUSH_FOR);
    }
}

pub(crate) type FilterHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// The log filter, and whether the command line fixed it (then `[log] level` of a
/// reloaded file is not used).
pub(crate) struct LogControl {
    pub(crate) filter: FilterHandle,
    pub(crate) fixed: bool,
}

impl LogControl {
    /// What a reload does with `[log] level`.
    pub(crate) fn hook(self) -> distgate::reload::LogLevelHook {
        Box::new(move |level: Option<&str>| {
            if self.fixed {
                warn!("`log.level` changed but is not used: --log-level (or DISTGATE_LOG) wins");
                return;
            }
            let level = level.unwrap_or("info");
            let applied = tracing_subscriber::EnvFilter::try_new(level)
                .map_err(|e| e.to_string())
                .and_then(|filter| self.filter.reload(filter).map_err(|e| e.to_string()));
            match applied {
                Ok(()) => info!(level, "log level changed"),
                Err(e) => error!(level, "log level not changed: {e}"),
            }
        })
    }
}

/// Where tracing writes a line: handed to the log thread, or, when [`LINES`] lines
/// wait already, dropped and counted.
#[derive(Clone)]
struct Lines {
    thread: NonBlocking,
    dropped: ErrorCounter,
    /// Of the lines dropped, how many the metric counts already.
    counted: Arc<AtomicUsize>,
}

impl io::Write for Lines {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let written = self.thread.write(line)?;
        let dropped = self.dropped.dropped_lines();
        let counted = self.counted.fetch_max(dropped, Ordering::AcqRel);
        if dropped > counted {
            ::metrics::counter!(distgate::metrics::LOG_LINES_DROPPED)
                .increment((dropped - counted) as u64);
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Lines {
    type Writer = Lines;

    fn make_writer(&'a self) -> Lines {
        self.clone()
    }
}

/// Standard error for log lines (on the log thread), never failing: a line it cannot write (the reader of
/// a pipe gone, a full disk) is dropped and counted, and nothing else changes. (A
/// failed write must not reach tracing, which reports it on standard error itself.)
struct LogOutput;

impl io::Write for LogOutput {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        if io::stderr().write_all(line).is_err() {
            ::metrics::counter!(distgate::metrics::LOG_LINES_DROPPED).increment(1);
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

pub(crate) fn init_logging(level: &str, format: LogFormat) -> anyhow::Result<FilterHandle> {
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .with_context(|| format!("invalid log level `{level}`"))?;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    // Colour only for a person at a terminal, and never with NO_COLOR (no-color.org).
    let colour =
        io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let (thread, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LINES)
        .thread_name("distgate-log")
        .finish(LogOutput);
    let lines = Lines {
        dropped: thread.error_counter(),
        thread,
        counted: Arc::new(AtomicUsize::new(0)),
    };
    let output = tracing_subscriber::fmt::layer()
        .with_ansi(colour)
        .with_writer(lines);
    let output = match format {
        LogFormat::Text => output.boxed(),
        LogFormat::Json => output.json().flatten_event(true).boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init()
        .context("cannot set up logging")?;
    *LOG_THREAD.lock().unwrap_or_else(|p| p.into_inner()) = Some(guard);
    Ok(handle)
}
