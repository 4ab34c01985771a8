//! The cache of [`Lookup`] answers the gateway resolves through: TTLs raised to a floor
//! and cut to a ceiling, the last good answer kept for `stale_for` while lookups fail,
//! every lookup counted and timed.
//!
//! Peers choose the names (a PORT_PLEASE2 for a routed name is a lookup of its host),
//! so what they can make DNS do is bounded: one lookup in flight per name, the callers
//! that ask meanwhile sharing its answer; a name found missing, or a lookup that failed,
//! answered from memory for `floor` before DNS is asked again; at most [`MAX_HOSTS`]
//! names remembered; failures logged through a [`LogBudget`].

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;
use tracing::warn;

use super::{Answer, DnsError, Lookup, SrvAnswer};
use crate::log_budget::LogBudget;
use crate::metrics as m;

/// The most names a [`Cache`] remembers. Past it a new name first clears what is of no
/// more use, then takes the place of the name whose use ends soonest: a missing name's
/// (kept `floor`) before a good answer's (kept its TTL and `stale_for` after), so a
/// flood of made-up names does not push out the answers routes live on.
pub(crate) const MAX_HOSTS: usize = 4096;

/// How long answers live in a [`Cache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttls {
    /// Answers are kept at least this long (a TTL of 0 would ask on every connect); a
    /// name found missing, or a lookup that failed, is answered from memory this long.
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
    state: Mutex<State>,
    /// Peers choose the names: the warnings of failed lookups are bounded.
    log: Mutex<LogBudget>,
}

/// What a [`Cache`] knows, and what it is asking.
#[derive(Debug, Default)]
struct State {
    /// At most [`MAX_HOSTS`].
    entries: HashMap<String, Entry>,
    /// The names being looked up; a name leaves when its lookup ends, or when its last
    /// caller gives up waiting.
    flights: HashMap<String, Flying>,
}

/// One lookup of a name, shared by every caller that asks while it is under way.
type Flight = OnceCell<Result<Resolved, DnsError>>;

/// A lookup under way and how many callers wait for it.
#[derive(Debug)]
struct Flying {
    flight: Arc<Flight>,
    waiting: usize,
}

/// What the last lookups of a name said.
#[derive(Debug, Clone)]
struct Entry {
    /// The last good answer, until a lookup finds the name missing.
    good: Option<Good>,
    /// The last lookup's error, when it had one, repeated without asking until `until`.
    miss: Option<Miss>,
}

#[derive(Debug, Clone)]
struct Good {
    addrs: Vec<IpAddr>,
    fresh_until: Instant,
}

#[derive(Debug, Clone)]
struct Miss {
    error: DnsError,
    until: Instant,
}

impl Entry {
    /// The answer for a caller at `now` without asking DNS, if there is one.
    fn answer(&self, now: Instant, stale_for: Duration) -> Option<Result<Resolved, DnsError>> {
        if let Some(good) = self.good.as_ref().filter(|g| now < g.fresh_until) {
            return Some(Ok(good.resolved(false)));
        }
        let miss = self.miss.as_ref().filter(|m| now < m.until)?;
        Some(match self.stale(now, stale_for) {
            Some(good) => Ok(good.resolved(true)),
            None => Err(miss.error.clone()),
        })
    }

    /// The last good answer while it may stand in for a failed lookup.
    fn stale(&self, now: Instant, stale_for: Duration) -> Option<&Good> {
        (self.good.as_ref()).filter(|g| now < g.fresh_until + stale_for)
    }

    /// When the entry is of no more use.
    fn useless_after(&self, stale_for: Duration) -> Option<Instant> {
        let good = self.good.as_ref().map(|g| g.fresh_until + stale_for);
        let miss = self.miss.as_ref().map(|m| m.until);
        good.max(miss)
    }
}

impl Good {
    fn resolved(&self, stale: bool) -> Resolved {
        Resolved {
            addrs: self.addrs.clone(),
            stale,
        }
    }
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
            state: Mutex::new(State::default()),
            log: Mutex::new(LogBudget::new(
                "more DNS lookups failed than logged (see distgate_dns_lookups_total)",
            )),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The addresses of `host`: cached while fresh, looked up otherwise; the last good
    /// answer while lookups fail, for `stale_for` past its expiry. A name that no
    /// longer exists is forgotten at once, and found missing again without asking for
    /// `floor`; a failed lookup (with no last good answer to use) is repeated without
    /// asking for `floor` as well. Callers asking for a name while it is looked up
    /// wait for that lookup's answer.
    pub async fn resolve(&self, host: &str) -> Result<Resolved, DnsError> {
        let flight = {
            let mut state = self.state();
            let known = (state.entries.get(host))
                .and_then(|entry| entry.answer(Instant::now(), self.ttls.stale_for));
            if let Some(known) = known {
                return known;
            }
            let flying = (state.flights.entry(host.to_owned())).or_insert_with(|| Flying {
                flight: Arc::default(),
                waiting: 0,
            });
            flying.waiting += 1;
            Arc::clone(&flying.flight)
        };
        let waiting = Waiting {
            cache: self,
            host,
            flight,
        };
        let flight = &waiting.flight;
        // The first caller looks up; should it give up, the next one waiting does.
        let answer = flight.get_or_init(|| self.look_up(host, flight)).await;
        answer.clone()
    }

    /// Asks DNS for `host` on behalf of `flight`, remembers the answer, counts the
    /// lookup and logs its failure (within the budget).
    async fn look_up(&self, host: &str, flight: &Arc<Flight>) -> Result<Resolved, DnsError> {
        let answer = timed(self.lookup.lookup_ip(host)).await;
        let now = Instant::now();
        let stale_for = self.ttls.stale_for;
        let mut state = self.state();
        let entry = match &answer {
            Ok(answer) => Entry {
                good: Some(Good {
                    addrs: answer.addrs.clone(),
                    fresh_until: now + self.ttls.clamp(answer.ttl),
                }),
                miss: None,
            },
            // The name is gone, and its last answer with it.
            Err(e @ DnsError::NotFound { .. }) => Entry {
                good: None,
                miss: Some(self.miss(e, now)),
            },
            Err(e) => Entry {
                good: (state.entries.get(host))
                    .and_then(|last| last.stale(now, stale_for))
                    .cloned(),
                miss: Some(self.miss(e, now)),
            },
        };
        let resolved = match &answer {
            Ok(answer) => Ok(Resolved {
                addrs: answer.addrs.clone(),
                stale: false,
            }),
            Err(e) => (entry.stale(now, stale_for))
                .map(|good| good.resolved(true))
                .ok_or_else(|| e.clone()),
        };
        state.keep(host, entry, now, stale_for);
        if (state.flights.get(host)).is_some_and(|f| Arc::ptr_eq(&f.flight, flight)) {
            state.flights.remove(host);
        }
        drop(state);
        match &answer {
            Ok(_) => count("ok"),
            Err(e @ DnsError::NotFound { .. }) => count(e.result()),
            Err(e) => {
                let stale = resolved.is_ok();
                count(if stale { "stale" } else { e.result() });
                if self.may_log() {
                    warn!(%host, stale, "DNS lookup failed: {e}");
                }
            }
        }
        resolved
    }

    fn miss(&self, error: &DnsError, now: Instant) -> Miss {
        Miss {
            error: error.clone(),
            until: now + self.ttls.floor,
        }
    }

    /// Whether a failed lookup's warning may be logged now.
    fn may_log(&self) -> bool {
        (self.log.lock())
            .unwrap_or_else(|p| p.into_inner())
            .allow(Instant::now())
    }
}

impl State {
    /// Remembers `entry` for `host`, within [`MAX_HOSTS`].
    fn keep(&mut self, host: &str, entry: Entry, now: Instant, stale_for: Duration) {
        if let Some(kept) = self.entries.get_mut(host) {
            *kept = entry;
            return;
        }
        if self.entries.len() >= MAX_HOSTS {
            self.entries
                .retain(|_, e| e.useless_after(stale_for).is_some_and(|t| now < t));
        }
        if self.entries.len() >= MAX_HOSTS {
            let first_useless = (self.entries.iter())
                .min_by_key(|(_, e)| e.useless_after(stale_for))
                .map(|(host, _)| host.clone());
            if let Some(host) = first_useless {
                self.entries.remove(&host);
            }
        }
        self.entries.insert(host.to_owned(), entry);
    }
}

/// A caller waiting on a [`Flight`]. When the last caller gives up before the lookup
/// ends (its future dropped: the peer's deadline passed), the flight leaves the table,
/// so it holds only names being looked up.
struct Waiting<'a, L> {
    cache: &'a Cache<L>,
    host: &'a str,
    flight: Arc<Flight>,
}

impl<L> Drop for Waiting<'_, L> {
    fn drop(&mut self) {
        let mut state = lock(&self.cache.state);
        // Still in the table: its lookup has not ended.
        if let Some(flying) = state.flights.get_mut(self.host)
            && Arc::ptr_eq(&flying.flight, &self.flight)
        {
            flying.waiting -= 1;
            if flying.waiting == 0 {
                state.flights.remove(self.host);
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

/// The state, even after a panic elsewhere left the lock poisoned.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
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
