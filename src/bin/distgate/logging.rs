//! Logging: the tracing subscriber (text or JSON, colour only at a terminal), a
//! filter a reload may change, and an output that never blocks distgate on its reader.

use std::io;

use anyhow::Context;
use tracing::{error, info, warn};

use crate::cli::LogFormat;

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

/// Standard error for log lines, never failing: a line it cannot write (the reader of
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
    let output = tracing_subscriber::fmt::layer()
        .with_ansi(colour)
        .with_writer(|| LogOutput);
    let output = match format {
        LogFormat::Text => output.boxed(),
        LogFormat::Json => output.json().flatten_event(true).boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init()
        .context("cannot set up logging")?;
    Ok(handle)
}
