//! The cache of [`Lookup`] answers the gateway resolves through: TTLs raised to a floor
//! and cut to a ceiling, the last good answer kept for `stale_for` while lookups fail,
//! every lookup counted and timed.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::warn;

use super::{Answer, DnsError, Lookup, SrvAnswer};
use crate::metrics as m;

/// How long answers live in a [`Cache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttls {
    /// Answers are kept at least this long (a TTL of 0 would ask on every connect).
    pub floor: Duration,
    /// And at most this long, whatever their TTL.
    pub ceiling: Duration,
    /// While lookups fail, the last good answer is used for this long after it expired.
    pub stale_for: Duration,
}

/// Answers keyed by host, with the TTL rules of [`Ttls`].
#[derive(Debug)]
pub struct Cache<L> {
    lookup: L,
    ttls: Ttls,
    entries: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug, Clone)]
struct Entry {
    addrs: Vec<IpAddr>,
    fresh_until: Instant,
}

/// Addresses from a [`Cache`], and whether they are past their TTL (DNS down).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The addresses.
    pub addrs: Vec<IpAddr>,
    /// Whether they are the last good answer, past its TTL.
    pub stale: bool,
}

impl<L: Lookup> Cache<L> {
    /// An empty cache over `lookup`.
    pub fn new(lookup: L, ttls: Ttls) -> Cache<L> {
        Cache {
            lookup,
            ttls,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn entry(&self, host: &str) -> Option<Entry> {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(host)
            .cloned()
    }

    /// The addresses of `host`: cached while fresh, looked up otherwise; the last good
    /// answer while lookups fail, for `stale_for` past its expiry. A name that no
    /// longer exists is forgotten at once.
    pub async fn resolve(&self, host: &str) -> Result<Resolved, DnsError> {
        let now = Instant::now();
        let cached = self.entry(host);
        if let Some(entry) = cached.as_ref().filter(|e| now < e.fresh_until) {
            return Ok(Resolved {
                addrs: entry.addrs.clone(),
                stale: false,
            });
        }
        let answer = timed(self.lookup.lookup_ip(host)).await;
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match answer {
            Ok(answer) => {
                count("ok");
                let ttl = self.ttls.clamp(answer.ttl);
                entries.insert(
                    host.to_owned(),
                    Entry {
                        addrs: answer.addrs.clone(),
                        fresh_until: Instant::now() + ttl,
                    },
                );
                Ok(Resolved {
                    addrs: answer.addrs,
                    stale: false,
                })
            }
            Err(e @ DnsError::NotFound { .. }) => {
                count(e.result());
                entries.remove(host);
                Err(e)
            }
            Err(e) => {
                let usable = cached.filter(|c| now < c.fresh_until + self.ttls.stale_for);
                let result = if usable.is_some() {
                    "stale"
                } else {
                    e.result()
                };
                count(result);
                warn!(%host, stale = usable.is_some(), "DNS lookup failed: {e}");
                match usable {
                    Some(entry) => Ok(Resolved {
                        addrs: entry.addrs,
                        stale: true,
                    }),
                    None => Err(e),
                }
            }
        }
    }
}

impl<L: Lookup> Cache<L> {
    /// A and AAAA records of `host` asked afresh (not cached), counted, the TTL
    /// clamped to the floor and ceiling.
    pub async fn fresh(&self, host: &str) -> Result<Answer, DnsError> {
        let answer = timed(self.lookup.lookup_ip(host)).await;
        count(answer.as_ref().map_or_else(DnsError::result, |_| "ok"));
        answer.map(|a| Answer {
            ttl: self.ttls.clamp(a.ttl),
            ..a
        })
    }

    /// SRV records of `name` asked afresh, counted, the TTL clamped.
    pub async fn srv(&self, name: &str) -> Result<SrvAnswer, DnsError> {
        let answer = timed(self.lookup.lookup_srv(name)).await;
        count(answer.as_ref().map_or_else(DnsError::result, |_| "ok"));
        answer.map(|a| SrvAnswer {
            ttl: self.ttls.clamp(a.ttl),
            ..a
        })
    }

    /// The TTL rules.
    pub fn ttls(&self) -> Ttls {
        self.ttls
    }
}

impl Ttls {
    /// `ttl` raised to the floor and cut to the ceiling.
    pub fn clamp(&self, ttl: Duration) -> Duration {
        ttl.clamp(self.floor, self.ceiling)
    }
}

/// Runs a lookup, recording how long it took.
async fn timed<T>(lookup: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let result = lookup.await;
    ::metrics::histogram!(m::DNS_DURATION).record(started.elapsed().as_secs_f64());
    result
}

fn count(result: &'static str) {
    ::metrics::counter!(m::DNS_LOOKUPS, "result" => result).increment(1);
}

#[cfg(test)]
mod tests;
