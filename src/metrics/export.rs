//! The Prometheus side: two recorders behind one facade. The per-link series (those
//! labelled with a `peer`) live in a recorder that drops a series after
//! `[metrics] idle_timeout` without change, so pod incarnations and departed peers
//! leave `/metrics`; every other series lives in one that keeps them. The series of
//! links still open are touched by [`touch_live_links`], so only closed links' series
//! age out.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{
    BuildError, Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use metrics_util::MetricKindMask;

use super::*;

/// The metrics whose series carry a `peer` label.
pub const PER_LINK: &[&str] = &[
    DIST_OPENED,
    DIST_CLOSED,
    DIST_ACTIVE,
    DIST_RECEIVED,
    DIST_SENT,
    DIST_DURATION,
];

/// Renders what the installed recorders hold, for `/metrics`.
#[derive(Debug, Clone)]
pub struct Exporter {
    rest: PrometheusHandle,
    links: Option<PrometheusHandle>,
}

impl Exporter {
    /// The Prometheus text of every series.
    pub fn render(&self) -> String {
        let mut text = self.rest.render();
        if let Some(links) = &self.links {
            text.push_str(&links.render());
        }
        text
    }

    /// An exporter of a recorder that is not installed: renders nothing recorded.
    pub fn detached() -> Exporter {
        Exporter {
            rest: PrometheusBuilder::new().build_recorder().handle(),
            links: None,
        }
    }
}

/// Sends each metric to the recorder that holds its kind of series.
#[derive(Debug)]
struct Split {
    links: PrometheusRecorder,
    rest: PrometheusRecorder,
}

impl Split {
    fn pick(&self, name: &str) -> &PrometheusRecorder {
        if PER_LINK.contains(&name) {
            &self.links
        } else {
            &self.rest
        }
    }
}

impl Recorder for Split {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.pick(key.as_str())
            .describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.pick(key.as_str())
            .describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.pick(key.as_str())
            .describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.pick(key.name()).register_counter(key, metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.pick(key.name()).register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.pick(key.name()).register_histogram(key, metadata)
    }
}

/// `builder` with the buckets of every histogram (a histogram without buckets would be
/// exported as a summary).
fn buckets(builder: PrometheusBuilder) -> Result<PrometheusBuilder, BuildError> {
    HISTOGRAMS
        .iter()
        .try_fold(builder, |builder, (name, buckets)| {
            builder.set_buckets_for_metric(Matcher::Full((*name).into()), buckets)
        })
}

/// Installs the recorders for this process (per-link series dropped after
/// `idle_timeout` without change) and describes every metric.
pub fn install(idle_timeout: Duration) -> Result<Exporter, InstallError> {
    let links = buckets(PrometheusBuilder::new())?
        .idle_timeout(MetricKindMask::ALL, Some(idle_timeout))
        .build_recorder();
    let rest = buckets(PrometheusBuilder::new())?.build_recorder();
    let exporter = Exporter {
        rest: rest.handle(),
        links: Some(links.handle()),
    };
    metrics::set_global_recorder(Split { links, rest }).map_err(|_| InstallError::Installed)?;
    describe();
    start();
    Ok(exporter)
}

/// The handles of a series set with open links, touched so that it never ages out.
#[derive(Debug)]
pub(super) struct Live {
    pub(super) opened: Counter,
    pub(super) active: Gauge,
    pub(super) received: Counter,
    pub(super) sent: Counter,
}

/// The `node`, `peer` and `direction` labels of a link.
pub(super) type LinkLabels = [(&'static str, String); 3];

/// Series sets with open links, each with how many: one entry per node, peer and
/// direction (bounded by `max_peers`), not one per link.
#[derive(Debug)]
struct Open {
    links: usize,
    live: Live,
}

fn open_series() -> MutexGuard<'static, HashMap<LinkLabels, Open>> {
    static OPEN: OnceLock<Mutex<HashMap<LinkLabels, Open>>> = OnceLock::new();
    OPEN.get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// A link with `labels` opened: its series must not age out while it is open.
pub(super) fn remember(labels: LinkLabels, live: impl FnOnce() -> Live) {
    let mut open = open_series();
    match open.get_mut(&labels) {
        Some(entry) => entry.links += 1,
        None => {
            open.insert(
                labels,
                Open {
                    links: 1,
                    live: live(),
                },
            );
        }
    }
}

/// A link with `labels` closed: once none is open, its series may age out.
pub(super) fn forget(labels: &LinkLabels) {
    let mut open = open_series();
    if let Some(entry) = open.get_mut(labels) {
        entry.links -= 1;
        if entry.links == 0 {
            open.remove(labels);
        }
    }
}

/// Marks the series of every open link as changed (their values stay), so that only
/// the series of closed links reach `[metrics] idle_timeout`. Run it more often than
/// that.
pub fn touch_live_links() {
    for entry in open_series().values() {
        let live = &entry.live;
        live.opened.increment(0);
        live.active.increment(0.0);
        live.received.increment(0);
        live.sent.increment(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A histogram left without buckets is exported as a summary, which cannot be
    /// summed across pods: every one distgate records comes out as a histogram.
    #[test]
    fn every_histogram_is_exported_with_buckets() {
        let recorder = buckets(PrometheusBuilder::new()).unwrap().build_recorder();
        let handle = recorder.handle();
        let metadata = metrics::Metadata::new("test", metrics::Level::INFO, None);
        for (name, _) in HISTOGRAMS {
            let key = Key::from_name(name);
            recorder.register_histogram(&key, &metadata).record(0.003);
        }
        let text = handle.render();
        for (name, _) in HISTOGRAMS {
            assert!(
                text.contains(&format!("# TYPE {name} histogram")),
                "{name} is not a histogram:\n{text}"
            );
            assert!(text.contains(&format!("{name}_bucket{{le=")), "{text}");
        }
    }
}
