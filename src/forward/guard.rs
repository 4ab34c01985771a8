//! Who may open a dist connection, by source address: at most `[dist] max_per_source`
//! connections at once from one address, and none from an address banned for failed
//! handshakes (`[dist.ban]`). Loopback and the pod's own address are exempt from both:
//! they are the pod's nodes and its mesh sidecar.
//!
//! Every table here is bounded: the per-source counts by the connections open (each
//! entry is held by at least one), the ban table by [`MAX_TRACKED`] sources, and the
//! failure log by a [`LogBudget`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::config::BanConfig;
use crate::live::Live;
use crate::log_budget::LogBudget;
use crate::metrics as m;

/// Most source addresses whose failures are counted at once.
pub(crate) const MAX_TRACKED: usize = 16_384;

/// Why a source is closed at accept (the `reason` label of the refusal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Banned for failed handshakes.
    Banned,
    /// `max_per_source` connections are open from it.
    PerSource,
}

impl Refusal {
    /// The bounded `reason` label.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Refusal::Banned => "banned",
            Refusal::PerSource => "per_source",
        }
    }
}

#[derive(Debug)]
struct Failures {
    since: Instant,
    count: u32,
    /// Hang-ups after the node's challenge, in the same window.
    withdrawals: u32,
    banned_until: Option<Instant>,
}

/// What a source did that counts towards its ban.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strike {
    /// A failed handshake (`[dist.ban] failures`).
    Failure,
    /// A hang-up after the node's challenge (`[dist.ban] withdrawals`).
    Withdrawal,
}

#[derive(Debug)]
struct Tables {
    open: HashMap<IpAddr, usize>,
    failures: HashMap<IpAddr, Failures>,
    banned: usize,
    log: LogBudget,
}

/// The per-source limit, the ban table and the failure log of the dist listeners.
#[derive(Debug)]
pub(crate) struct Guard {
    /// `[dist] max_per_source` and `[dist.ban]` in force (a reload may change them).
    limits: Live<(usize, BanConfig)>,
    tables: Mutex<Tables>,
}

/// A connection's place under `max_per_source`; given back when dropped.
#[derive(Debug)]
pub(crate) struct SourceSlot {
    guard: Arc<Guard>,
    source: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut tables = self.guard.lock();
        if let Some(open) = tables.open.get_mut(&self.source) {
            *open -= 1;
            if *open == 0 {
                tables.open.remove(&self.source);
            }
        }
    }
}

impl Guard {
    /// A guard with these limits.
    pub(crate) fn new(max_per_source: usize, ban: BanConfig) -> Guard {
        ::metrics::gauge!(m::DIST_BANNED_SOURCES).set(0.0);
        for reason in [Refusal::Banned, Refusal::PerSource] {
            ::metrics::counter!(m::CONNECTIONS_REFUSED, "listener" => "dist", "reason" => reason.reason())
                .increment(0);
        }
        Guard {
            limits: Live::new((max_per_source, ban)),
            tables: Mutex::new(Tables {
                open: HashMap::new(),
                failures: HashMap::new(),
                banned: 0,
                log: LogBudget::new(
                    "more dist handshakes failed than logged (see distgate_dist_handshakes_total)",
                ),
            }),
        }
    }

    /// Puts new limits in force for the connections and failures that come next;
    /// bans already given run their course.
    pub(crate) fn set_limits(&self, max_per_source: usize, ban: BanConfig) {
        self.limits.set((max_per_source, ban));
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        // A panic while holding this lock leaves plain counters; go on with them.
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a connection from `source` (which is not exempt), or why not.
    pub(crate) fn admit(
        self: &Arc<Self>,
        source: IpAddr,
        now: Instant,
    ) -> Result<SourceSlot, Refusal> {
        let mut tables = self.lock();
        if let Some(entry) = tables.failures.get(&source)
            && entry.banned_until.is_some_and(|until| until > now)
        {
            return Err(Refusal::Banned);
        }
        let open = tables.open.entry(source).or_default();
        if *open >= self.limits.get().0 {
            return Err(Refusal::PerSource);
        }
        *open += 1;
        Ok(SourceSlot {
            guard: Arc::clone(self),
            source,
        })
    }

    /// Counts a failed handshake from `source` (not exempt); bans it when that makes
    /// `failures` within `within`. True when this failure banned it.
    pub(crate) fn failed(&self, source: IpAddr, now: Instant) -> bool {
        self.strike(source, now, Strike::Failure)
    }

    /// Counts a hang-up after the node's challenge from `source` (not exempt); bans
    /// it when that makes `withdrawals` within `within`. True when this banned it.
    pub(crate) fn withdrew(&self, source: IpAddr, now: Instant) -> bool {
        self.strike(source, now, Strike::Withdrawal)
    }

    fn strike(&self, source: IpAddr, now: Instant, strike: Strike) -> bool {
        let limits = self.limits.get();
        let ban = &limits.1;
        let budget = match strike {
            Strike::Failure => ban.failures,
            Strike::Withdrawal => ban.withdrawals,
        };
        if budget == 0 {
            return false;
        }
        let mut tables = self.lock();
        if !tables.failures.contains_key(&source) && tables.failures.len() >= MAX_TRACKED {
            make_room(&mut tables.failures, now, ban.within);
            if tables.failures.len() >= MAX_TRACKED {
                return false;
            }
        }
        let entry = tables.failures.entry(source).or_insert(Failures {
            since: now,
            count: 0,
            withdrawals: 0,
            banned_until: None,
        });
        if entry.banned_until.is_some() {
            return false;
        }
        if now.duration_since(entry.since) > ban.within {
            (entry.since, entry.count, entry.withdrawals) = (now, 0, 0);
        }
        let count = match strike {
            Strike::Failure => &mut entry.count,
            Strike::Withdrawal => &mut entry.withdrawals,
        };
        *count += 1;
        if *count < budget {
            return false;
        }
        entry.banned_until = Some(now + ban.duration);
        tables.banned += 1;
        ::metrics::gauge!(m::DIST_BANNED_SOURCES).set(tables.banned as f64);
        match strike {
            Strike::Failure => warn!(
                %source,
                failures = ban.failures,
                within_s = ban.within.as_secs(),
                for_s = ban.duration.as_secs(),
                "source banned for failed handshakes; its dist connections are closed at accept"
            ),
            Strike::Withdrawal => warn!(
                %source,
                withdrawals = ban.withdrawals,
                within_s = ban.within.as_secs(),
                for_s = ban.duration.as_secs(),
                "source banned for hanging up on the node's challenge; its dist connections are closed at accept"
            ),
        }
        true
    }

    /// Lifts the bans that ran out and forgets failure windows that closed.
    pub(crate) fn sweep(&self, now: Instant) {
        let mut tables = self.lock();
        let within = self.limits.get().1.within;
        let mut lifted = 0;
        tables
            .failures
            .retain(|source, entry| match entry.banned_until {
                Some(until) if until <= now => {
                    info!(%source, "ban lifted");
                    lifted += 1;
                    false
                }
                Some(_) => true,
                None => now.duration_since(entry.since) <= within,
            });
        if lifted > 0 {
            tables.banned -= lifted;
            ::metrics::gauge!(m::DIST_BANNED_SOURCES).set(tables.banned as f64);
        }
    }

    /// Whether a failed handshake may be logged now; at the start of a new window,
    /// logs how many the last one left out.
    pub(crate) fn may_log(&self, now: Instant) -> bool {
        self.lock().log.allow(now)
    }

    /// Sources banned now.
    #[cfg(test)]
    pub(crate) fn banned(&self) -> usize {
        self.lock().banned
    }
}

/// Makes room in a full failure table, in one pass for many insertions to come:
/// windows that closed go, then, if that was not enough, an eighth of the table's
/// unbanned sources (in the map's own order). Bans are never forgotten early.
fn make_room(failures: &mut HashMap<IpAddr, Failures>, now: Instant, within: Duration) {
    failures.retain(|_, e| e.banned_until.is_some() || now.duration_since(e.since) <= within);
    if failures.len() < MAX_TRACKED {
        return;
    }
    let doomed: Vec<IpAddr> = failures
        .iter()
        .filter(|(_, e)| e.banned_until.is_none())
        .map(|(source, _)| *source)
        .take(MAX_TRACKED / 8)
        .collect();
    for source in doomed {
        failures.remove(&source);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n))
    }

    fn guard(failures: u32) -> Arc<Guard> {
        let ban = BanConfig {
            failures,
            withdrawals: 5,
            within: Duration::from_secs(60),
            duration: Duration::from_secs(600),
        };
        Arc::new(Guard::new(2, ban))
    }

    #[test]
    fn withdrawals_ban_at_their_own_budget() {
        let guard = guard(3);
        let now = Instant::now();
        assert!(!guard.failed(ip(1), now));
        for _ in 0..4 {
            assert!(!guard.withdrew(ip(1), now));
        }
        assert!(!guard.failed(ip(1), now), "two failures of three");
        assert!(guard.withdrew(ip(1), now), "the fifth withdrawal bans");
        assert_eq!(guard.admit(ip(1), now).unwrap_err(), Refusal::Banned);
        // A window later the count starts again.
        let later = now + Duration::from_secs(61);
        for _ in 0..4 {
            assert!(!guard.withdrew(ip(2), later));
        }
        assert!(!guard.withdrew(ip(2), later + Duration::from_secs(61)));
        let off = Arc::new(Guard::new(
            2,
            BanConfig {
                withdrawals: 0,
                ..BanConfig::default()
            },
        ));
        for _ in 0..1000 {
            assert!(!off.withdrew(ip(3), now));
        }
    }

    #[test]
    fn a_source_holds_at_most_max_per_source_places() {
        let guard = guard(10);
        let now = Instant::now();
        let a = guard.admit(ip(1), now).unwrap();
        let _b = guard.admit(ip(1), now).unwrap();
        assert_eq!(guard.admit(ip(1), now).unwrap_err(), Refusal::PerSource);
        assert!(
            guard.admit(ip(2), now).is_ok(),
            "another source is not affected"
        );
        drop(a);
        assert!(guard.admit(ip(1), now).is_ok());
    }

    #[test]
    fn failures_within_the_window_ban_until_the_ban_runs_out() {
        let guard = guard(3);
        let now = Instant::now();
        assert!(!guard.failed(ip(1), now));
        assert!(!guard.failed(ip(1), now + Duration::from_secs(1)));
        assert!(guard.failed(ip(1), now + Duration::from_secs(2)));
        assert_eq!(guard.banned(), 1);
        let later = now + Duration::from_secs(3);
        assert_eq!(guard.admit(ip(1), later).unwrap_err(), Refusal::Banned);
        assert!(guard.admit(ip(2), later).is_ok());
        let after = now + Duration::from_secs(603);
        guard.sweep(after);
        assert_eq!(guard.banned(), 0);
        assert!(guard.admit(ip(1), after).is_ok());
    }

    #[test]
    fn failures_spread_wider_than_the_window_do_not_ban() {
        let guard = guard(3);
        let now = Instant::now();
        for minute in 0..10 {
            let at = now + Duration::from_secs(61 * minute);
            assert!(!guard.failed(ip(1), at));
            assert!(!guard.failed(ip(1), at));
        }
        assert_eq!(guard.banned(), 0);
    }

    #[test]
    fn zero_failures_turns_bans_off() {
        let guard = guard(0);
        let now = Instant::now();
        for _ in 0..100 {
            assert!(!guard.failed(ip(1), now));
        }
        assert!(guard.admit(ip(1), now).is_ok());
    }

    #[test]
    fn the_failure_table_is_bounded_and_keeps_its_bans() {
        let guard = guard(2);
        let now = Instant::now();
        guard.failed(ip(0), now);
        assert!(guard.failed(ip(0), now));
        for n in 1..(MAX_TRACKED as u32 * 3) {
            guard.failed(ip(n), now + Duration::from_millis(u64::from(n)));
        }
        let tables = guard.lock();
        assert!(tables.failures.len() <= MAX_TRACKED);
        drop(tables);
        assert_eq!(guard.admit(ip(0), now).unwrap_err(), Refusal::Banned);
    }
}
