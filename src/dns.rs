//! DNS for gateway routes: hickory-resolver behind [`Lookup`], and a [`Cache`]
//! (`dns/cache.rs`) that owns the TTLs — a floor and a ceiling on each answer, and the
//! last good answer kept for a bounded time while the DNS server is down — with every
//! lookup counted.
//!
//! The gateway's template routes resolve through the cache at each connect; its
//! discovery routes ask afresh on their own schedule ([`Cache::fresh`], [`Cache::srv`]),
//! keeping their own last good table.

mod cache;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};

pub use cache::{Cache, Resolved, Ttls};

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
pub struct Hickory {
    resolver: TokioResolver,
    /// The longest one lookup may take, whatever the resolver does inside it (A and
    /// AAAA, UDP then TCP, search suffixes): three quarters of `[dns] timeout`.
    budget: Duration,
}

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
        Ok(Hickory::new(resolver, timeout))
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
        Ok(Hickory::new(resolver, timeout))
    }

    /// Three quarters of `timeout` for each lookup: the lookup gives up (and the cache
    /// remembers the failure for `min_ttl`) before the caller's own `timeout`, which
    /// started earlier, cancels it; a lookup cancelled each time would be asked again
    /// by every caller.
    fn new(resolver: TokioResolver, timeout: Duration) -> Hickory {
        Hickory {
            resolver,
            budget: timeout * 3 / 4,
        }
    }

    /// `lookup` within the budget; past it, a failure for `host`.
    async fn within<T>(
        &self,
        host: &str,
        lookup: impl Future<Output = Result<T, DnsError>>,
    ) -> Result<T, DnsError> {
        tokio::time::timeout(self.budget, lookup)
            .await
            .unwrap_or_else(|_| {
                Err(DnsError::Failed {
                    host: host.into(),
                    reason: format!("no answer within {:?}", self.budget),
                })
            })
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
        self.within(host, self.ip(host)).await
    }

    async fn lookup_srv(&self, name: &str) -> Result<SrvAnswer, DnsError> {
        self.within(name, self.srv(name)).await
    }
}

impl Hickory {
    async fn ip(&self, host: &str) -> Result<Answer, DnsError> {
        let lookup = self
            .resolver
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

    async fn srv(&self, name: &str) -> Result<SrvAnswer, DnsError> {
        let lookup = self
            .resolver
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
