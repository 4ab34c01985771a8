//! DNS for gateway routes: hickory-resolver behind [`Lookup`], and a [`Cache`] that
//! owns the TTLs — a floor and a ceiling on each answer, and the last good answer kept
//! for a bounded time while the DNS server is down — with every lookup counted.
//!
//! The gateway's template routes resolve through the cache at each connect; its
//! discovery routes ask afresh on their own schedule ([`Cache::fresh`], [`Cache::srv`]),
//! keeping their own last good table.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};
use tracing::warn;

use crate::metrics as m;

/// Addresses for a host and how long they may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The addresses, in the server's order.
    pub addrs: Vec<IpAddr>,
    /// How long they may be used.
    pub ttl: Duration,
}

/// SRV targets (host, port) of a service and how long they may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvAnswer {
    /// Target hosts and their ports.
    pub targets: Vec<(String, u16)>,
    /// How long they may be used.
    pub ttl: Duration,
}

/// A lookup that gave no addresses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The name does not exist (NXDOMAIN or no records).
    #[error("{host}: no such name")]
    NotFound {
        /// The name asked for.
        host: String,
    },
    /// The lookup failed (time-out, server failure).
    #[error("{host}: {reason}")]
    Failed {
        /// The name asked for.
        host: String,
        /// What the resolver said.
        reason: String,
    },
}

/// The resolver could not be set up (an unreadable resolv.conf, say).
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the DNS resolver: {source}")]
pub struct DnsSetupError {
    #[source]
    source: hickory_resolver::net::NetError,
}

impl DnsSetupError {
    /// A bounded label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        "dns_setup"
    }
}

impl DnsError {
    /// A bounded label for logs and metrics (the `result` of a lookup).
    pub fn reason(&self) -> &'static str {
        self.result()
    }

    fn result(&self) -> &'static str {
        match self {
            DnsError::NotFound { .. } => "not_found",
            DnsError::Failed { .. } => "error",
        }
    }
}

/// Something that resolves host names: hickory, or a table in tests.
pub trait Lookup: Send + Sync {
    /// A and AAAA records of `host`.
    fn lookup_ip(&self, host: &str) -> impl Future<Output = Result<Answer, DnsError>> + Send;
    /// SRV records of `name`.
    fn lookup_srv(&self, name: &str) -> impl Future<Output = Result<SrvAnswer, DnsError>> + Send;
}

/// hickory-resolver, with the system's configuration (search domains and ndots as
/// Kubernetes writes them into resolv.conf) or with given name servers.
pub struct Hickory(TokioResolver);

impl std::fmt::Debug for Hickory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hickory")
    }
}

impl Hickory {
    /// The system resolver configuration (/etc/resolv.conf: name servers, search
    /// domains and ndots as Kubernetes writes them), but with `attempts` queries per
    /// name server sharing `timeout` whatever resolv.conf's `options` say: its
    /// default of 5 s × 2 attempts per search suffix outlasts the peer that asked.
    pub fn system(timeout: Duration, attempts: u32) -> Result<Hickory, DnsSetupError> {
        let mut builder = Resolver::builder_tokio().map_err(|source| DnsSetupError { source })?;
        bound(builder.options_mut(), timeout, attempts);
        let resolver = builder.build().map_err(|source| DnsSetupError { source })?;
        Ok(Hickory(resolver))
    }

    /// These name servers (UDP, then TCP), no search domains, and `attempts` queries
    /// per server sharing `timeout`.
    pub fn with_nameservers(
        servers: &[SocketAddr],
        timeout: Duration,
        attempts: u32,
    ) -> Result<Hickory, DnsSetupError> {
        let servers = servers
            .iter()
            .map(|server| {
                let mut config = NameServerConfig::udp_and_tcp(server.ip());
                for connection in &mut config.connections {
                    connection.port = server.port();
                }
                config
            })
            .collect();
        let config = ResolverConfig::from_parts(None, vec![], servers);
        let mut builder = Resolver::builder_with_config(config, TokioRuntimeProvider::default());
        bound(builder.options_mut(), timeout, attempts);
        let resolver = builder.build().map_err(|source| DnsSetupError { source })?;
        Ok(Hickory(resolver))
    }
}

/// Each query gets its share of `timeout`, `attempts` of them.
fn bound(options: &mut ResolverOpts, timeout: Duration, attempts: u32) {
    let attempts = attempts.max(1);
    options.attempts = attempts as usize;
    options.timeout = timeout / attempts;
}

impl Lookup for Hickory {
    async fn lookup_ip(&self, host: &str) -> Result<Answer, DnsError> {
        let lookup = self
            .0
            .lookup_ip(host)
            .await
            .map_err(|e| failure(host, &e))?;
        let addrs: Vec<IpAddr> = lookup.iter().collect();
        if addrs.is_empty() {
            return Err(DnsError::NotFound { host: host.into() });
        }
        let ttl = lookup
            .valid_until()
            .saturating_duration_since(Instant::now());
        Ok(Answer { addrs, ttl })
    }

    async fn lookup_srv(&self, name: &str) -> Result<SrvAnswer, DnsError> {
        let lookup = self
            .0
            .srv_lookup(name)
            .await
            .map_err(|e| failure(name, &e))?;
        let targets: Vec<(String, u16)> = lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::SRV(srv) if !srv.target.is_root() => Some((srv.target.to_utf8(), srv.port)),
                _ => None,
            })
            .collect();
        if targets.is_empty() {
            return Err(DnsError::NotFound { host: name.into() });
        }
        let ttl = lookup
            .valid_until()
            .saturating_duration_since(Instant::now());
        Ok(SrvAnswer { targets, ttl })
    }
}

fn failure(host: &str, e: &hickory_resolver::net::NetError) -> DnsError {
    if e.is_nx_domain() || e.is_no_records_found() {
        DnsError::NotFound { host: host.into() }
    } else {
        DnsError::Failed {
            host: host.into(),
            reason: e.to_string(),
        }
    }
}

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
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Answers from a table that the test changes; `None` is a failing server.
    struct Table {
        answer: Mutex<Option<Result<Answer, DnsError>>>,
        asked: AtomicUsize,
    }

    impl Lookup for &Table {
        async fn lookup_ip(&self, host: &str) -> Result<Answer, DnsError> {
            self.asked.fetch_add(1, Ordering::Relaxed);
            self.answer
                .lock()
                .unwrap()
                .clone()
                .unwrap_or(Err(DnsError::Failed {
                    host: host.into(),
                    reason: "timed out".into(),
                }))
        }

        async fn lookup_srv(&self, name: &str) -> Result<SrvAnswer, DnsError> {
            Err(DnsError::NotFound { host: name.into() })
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn table(answer: Option<Result<Answer, DnsError>>) -> Table {
        Table {
            answer: Mutex::new(answer),
            asked: AtomicUsize::new(0),
        }
    }

    const TTLS: Ttls = Ttls {
        floor: Duration::from_millis(50),
        ceiling: Duration::from_secs(3600),
        stale_for: Duration::from_secs(3600),
    };

    fn answer(addr: &str, ttl: Duration) -> Option<Result<Answer, DnsError>> {
        Some(Ok(Answer {
            addrs: vec![ip(addr)],
            ttl,
        }))
    }

    #[tokio::test]
    async fn fresh_answers_are_served_from_the_cache() {
        let t = table(answer("10.0.0.1", Duration::from_secs(30)));
        let cache = Cache::new(&t, TTLS);
        for _ in 0..3 {
            assert_eq!(cache.resolve("a").await.unwrap().addrs, [ip("10.0.0.1")]);
        }
        assert_eq!(t.asked.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_ttl_of_zero_is_raised_to_the_floor() {
        let t = table(answer("10.0.0.1", Duration::ZERO));
        let cache = Cache::new(&t, TTLS);
        cache.resolve("a").await.unwrap();
        cache.resolve("a").await.unwrap();
        assert_eq!(
            t.asked.load(Ordering::Relaxed),
            1,
            "TTL 0 asked again at once"
        );
    }

    #[tokio::test]
    async fn a_long_ttl_is_cut_to_the_ceiling() {
        let t = table(answer("10.0.0.1", Duration::from_secs(86400)));
        let ttls = Ttls {
            ceiling: Duration::ZERO,
            floor: Duration::ZERO,
            ..TTLS
        };
        let cache = Cache::new(&t, ttls);
        cache.resolve("a").await.unwrap();
        cache.resolve("a").await.unwrap();
        assert_eq!(t.asked.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn the_last_good_answer_outlives_a_dns_outage_for_a_while() {
        let t = table(answer("10.0.0.1", Duration::ZERO));
        let ttls = Ttls {
            floor: Duration::ZERO,
            ..TTLS
        };
        let cache = Cache::new(&t, ttls);
        cache.resolve("a").await.unwrap();
        *t.answer.lock().unwrap() = None;
        let stale = cache.resolve("a").await.unwrap();
        assert_eq!(
            stale,
            Resolved {
                addrs: vec![ip("10.0.0.1")],
                stale: true
            }
        );
        // A host never seen has nothing to fall back on.
        assert!(matches!(
            cache.resolve("b").await,
            Err(DnsError::Failed { .. })
        ));
        // Past stale_for, the outage shows.
        let short = Cache::new(
            &t,
            Ttls {
                stale_for: Duration::ZERO,
                floor: Duration::ZERO,
                ..TTLS
            },
        );
        *t.answer.lock().unwrap() = answer("10.0.0.1", Duration::ZERO);
        short.resolve("a").await.unwrap();
        *t.answer.lock().unwrap() = None;
        assert!(short.resolve("a").await.is_err());
    }

    #[tokio::test]
    async fn a_name_that_is_gone_is_forgotten_at_once() {
        let t = table(answer("10.0.0.1", Duration::ZERO));
        let cache = Cache::new(
            &t,
            Ttls {
                floor: Duration::ZERO,
                ..TTLS
            },
        );
        cache.resolve("a").await.unwrap();
        *t.answer.lock().unwrap() = Some(Err(DnsError::NotFound { host: "a".into() }));
        assert!(matches!(
            cache.resolve("a").await,
            Err(DnsError::NotFound { .. })
        ));
        *t.answer.lock().unwrap() = None;
        assert!(
            cache.resolve("a").await.is_err(),
            "a vanished name came back stale"
        );
    }
}
