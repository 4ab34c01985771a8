//! Who may open a dist connection, by source: at most `[dist] max_per_source`
//! connections at once from one source, and none from a source banned for failed
//! handshakes or withdrawals (`[dist.ban]`). A source is an IPv4 address or an IPv6
//! prefix (`[dist] ipv6_prefix`, [`Prefix`]). Trusted sources (loopback and the pod's
//! own address by default) are exempt from both: they are the pod's nodes and its
//! mesh sidecar.
//!
//! Every table here is bounded: the per-source counts by the connections open (each
//! entry is held by at least one), the ban table by [`MAX_TRACKED`] sources, which
//! stays useful when full (the least recently failing unbanned sources go first, then
//! bans fold into wider prefixes, IPv4 /24 and IPv6 /48), and the failure, ban and
//! lift lines by a [`LogBudget`] each.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tracing::{info, warn};

use crate::api::{BanView, unix_seconds, wall_clock};
use crate::config::{BanConfig, Peers};
use crate::live::Live;
use crate::log_budget::LogBudget;
use crate::metrics as m;
use crate::prefix::Prefix;

/// Most sources whose failures are counted at once.
pub(crate) const MAX_TRACKED: usize = 16_384;

/// Why a source is closed at accept (the `reason` label of the refusal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Banned for failed handshakes or withdrawals.
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

/// Why a ban ended (the `reason` label of `distgate_dist_bans_lifted_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lifted {
    /// It ran its `[dist.ban] duration`.
    Expired,
    /// An operator lifted it (`DELETE /bans`, `distgate unban`).
    Operator,
    /// A reload made the source `[dist] trusted`.
    Trusted,
    /// The table was full of bans that could not fold: the ones closest to their
    /// end went early.
    Evicted,
}

impl Lifted {
    const ALL: [Lifted; 4] = [
        Lifted::Expired,
        Lifted::Operator,
        Lifted::Trusted,
        Lifted::Evicted,
    ];

    fn label(self) -> &'static str {
        match self {
            Lifted::Expired => "expired",
            Lifted::Operator => "operator",
            Lifted::Trusted => "trusted",
            Lifted::Evicted => "evicted",
        }
    }
}

/// What one source has done within its window, and its ban.
#[derive(Debug)]
struct Failures {
    /// The start of the window the counts are for.
    since: Instant,
    /// The last strike (the least recent go first from a full table).
    last: Instant,
    count: u32,
    /// Hang-ups after the node's challenge, in the same window.
    withdrawals: u32,
    ban: Option<Ban>,
}

#[derive(Debug, Clone, Copy)]
struct Ban {
    at: Instant,
    until: Instant,
    /// Sources folded into this one (1 for a ban of its own).
    sources: u32,
}

impl Failures {
    fn banned_at(&self, now: Instant) -> bool {
        self.ban.is_some_and(|ban| ban.until > now)
    }
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
    open: HashMap<Prefix, usize>,
    failures: HashMap<Prefix, Failures>,
    /// Strikes of sources a full table forgot, by wide prefix (bounded by a quarter
    /// of [`MAX_TRACKED`]).
    wide: HashMap<Prefix, Wide>,
    banned: usize,
    /// Failed handshakes' lines.
    log: LogBudget,
    /// Ban and lift lines.
    bans_log: LogBudget,
}

/// The limits a reload may change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Limits {
    /// `[dist] max_per_source`.
    pub(crate) max_per_source: usize,
    /// `[dist] ipv6_prefix` (restart-only: bans and counts are keyed by it).
    pub(crate) ipv6_prefix: u8,
    /// `[dist.ban]`.
    pub(crate) ban: BanConfig,
}

/// The per-source limit, the ban table and the failure log of the dist listeners.
#[derive(Debug)]
pub(crate) struct Guard {
    /// The limits in force (a reload may change them).
    limits: Live<Limits>,
    tables: Mutex<Tables>,
}

/// A connection's place under `max_per_source`; given back when dropped.
#[derive(Debug)]
pub(crate) struct SourceSlot {
    guard: Arc<Guard>,
    source: Prefix,
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
    pub(crate) fn new(limits: Limits) -> Guard {
        ::metrics::gauge!(m::DIST_BANNED_SOURCES).set(0.0);
        for reason in [Refusal::Banned, Refusal::PerSource] {
            ::metrics::counter!(m::CONNECTIONS_REFUSED, "listener" => "dist", "reason" => reason.reason())
                .increment(0);
        }
        for lifted in Lifted::ALL {
            ::metrics::counter!(m::DIST_BANS_LIFTED, "reason" => lifted.label()).increment(0);
        }
        Guard {
            limits: Live::new(limits),
            tables: Mutex::new(Tables {
                open: HashMap::new(),
                failures: HashMap::new(),
                wide: HashMap::new(),
                banned: 0,
                log: LogBudget::new(
                    "more dist handshakes failed than logged (see distgate_dist_handshakes_total)",
                ),
                bans_log: LogBudget::new(
                    "more sources banned or lifted than logged (see distgate_dist_banned_sources and GET /bans)",
                ),
            }),
        }
    }

    /// Puts new limits in force for the connections and failures that come next;
    /// bans already given run their course.
    pub(crate) fn set_limits(&self, limits: Limits) {
        self.limits.set(limits);
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        // A panic while holding this lock leaves plain counters; go on with them.
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The source `ip` counts as under the limits in force.
    pub(crate) fn source(&self, ip: IpAddr) -> Prefix {
        Prefix::of(ip, self.limits.get().ipv6_prefix)
    }

    /// A place for a connection from `source` (which is not exempt), or why not.
    pub(crate) fn admit(
        self: &Arc<Self>,
        source: Prefix,
        now: Instant,
    ) -> Result<SourceSlot, Refusal> {
        let mut tables = self.lock();
        if banned(&tables, source, now) {
            return Err(Refusal::Banned);
        }
        let open = tables.open.entry(source).or_default();
        if *open >= self.limits.get().max_per_source {
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
    pub(crate) fn failed(&self, source: Prefix, now: Instant) -> bool {
        self.strike(source, now, Strike::Failure)
    }

    /// Counts a hang-up after the node's challenge from `source` (not exempt); bans
    /// it when that makes `withdrawals` within `within`. True when this banned it.
    pub(crate) fn withdrew(&self, source: Prefix, now: Instant) -> bool {
        self.strike(source, now, Strike::Withdrawal)
    }

    fn strike(&self, source: Prefix, now: Instant, strike: Strike) -> bool {
        let limits = self.limits.get();
        let ban = &limits.ban;
        let budget = match strike {
            Strike::Failure => ban.failures,
            Strike::Withdrawal => ban.withdrawals,
        };
        if budget == 0 {
            return false;
        }
        let mut tables = self.lock();
        if banned(&tables, source, now) {
            return false;
        }
        if tables
            .failures
            .get(&source)
            .is_some_and(|e| e.ban.is_some())
        {
            // Its ban ran out and is not yet swept: lifted now, a new window begins.
            tables.failures.remove(&source);
            lifted(&mut tables, &[source], Lifted::Expired, now);
        }
        if !tables.failures.contains_key(&source) && tables.failures.len() >= MAX_TRACKED {
            make_room(&mut tables, now, ban);
        }
        let entry = tables.failures.entry(source).or_insert(Failures {
            since: now,
            last: now,
            count: 0,
            withdrawals: 0,
            ban: None,
        });
        entry.last = now;
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
        entry.ban = Some(Ban {
            at: now,
            until: now + ban.duration,
            sources: 1,
        });
        recount(&mut tables);
        if tables.bans_log.allow(now) {
            match strike {
                Strike::Failure => warn!(
                    %source,
                    failures = ban.failures,
                    within_s = ban.within.as_secs(),
                    for_s = ban.duration.as_secs(),
                    "source banned for failed handshakes; its dist connections are closed at accept (lift: distgate unban {source})"
                ),
                Strike::Withdrawal => warn!(
                    %source,
                    withdrawals = ban.withdrawals,
                    within_s = ban.within.as_secs(),
                    for_s = ban.duration.as_secs(),
                    "source banned for hanging up on the node's challenge; its dist connections are closed at accept (lift: distgate unban {source})"
                ),
            }
        }
        true
    }

    /// Lifts the bans that ran out and forgets failure windows that closed.
    pub(crate) fn sweep(&self, now: Instant) {
        let within = self.limits.get().ban.within;
        let mut tables = self.lock();
        let mut expired = Vec::new();
        tables.failures.retain(|source, entry| match entry.ban {
            Some(ban) if ban.until <= now => {
                expired.push(*source);
                false
            }
            Some(_) => true,
            None => now.duration_since(entry.since) <= within,
        });
        (tables.wide).retain(|_, wide| now.duration_since(wide.since) <= within);
        lifted(&mut tables, &expired, Lifted::Expired, now);
    }

    /// Lifts the bans of `which` (every ban when `None`): a ban on a prefix that
    /// holds it, or on any address or prefix within it. The sources lifted.
    pub(crate) fn lift(&self, which: Option<Prefix>, now: Instant) -> Vec<Prefix> {
        self.lift_where(now, Lifted::Operator, |source| {
            which.is_none_or(|which| which.covers(source) || source.covers(which))
        })
    }

    /// Lifts the bans of sources `trusted` now allows whole (after a reload): its
    /// first and last address. A trusted address within a banned /64 or folded /24
    /// gets in (trusted sources are not checked), the others stay banned.
    pub(crate) fn lift_trusted(&self, trusted: &Peers, now: Instant) -> Vec<Prefix> {
        self.lift_where(now, Lifted::Trusted, |source| {
            trusted.allows(source.addr(), false) && trusted.allows(source.last(), false)
        })
    }

    fn lift_where(
        &self,
        now: Instant,
        why: Lifted,
        matches: impl Fn(Prefix) -> bool,
    ) -> Vec<Prefix> {
        let mut tables = self.lock();
        let mut gone = Vec::new();
        tables.failures.retain(|source, entry| {
            let lift = entry.ban.is_some() && matches(*source);
            if lift {
                gone.push(*source);
            }
            !lift
        });
        lifted(&mut tables, &gone, why, now);
        gone
    }

    /// The bans in force, newest first.
    pub(crate) fn bans(&self, now: Instant) -> Vec<BanView> {
        // Copied under the lock, formatted after: admission waits on this lock.
        let mut bans: Vec<(Prefix, u32, u32, Ban)> = {
            let tables = self.lock();
            (tables.failures.iter())
                .filter_map(|(source, e)| {
                    let ban = e.ban.filter(|ban| ban.until > now)?;
                    Some((*source, e.count, e.withdrawals, ban))
                })
                .collect()
        };
        bans.sort_by_key(|(_, _, _, ban)| std::cmp::Reverse(ban.at));
        let unix = |at: Instant| unix_seconds(wall_clock(at));
        (bans.into_iter())
            .map(|(source, failures, withdrawals, ban)| BanView {
                source: source.to_string(),
                failures,
                withdrawals,
                sources: ban.sources,
                since: unix(ban.at),
                until: unix(ban.until),
            })
            .collect()
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

/// Whether `source` is banned now, by itself or by the wider prefix its ban folded
/// into.
fn banned(tables: &Tables, source: Prefix, now: Instant) -> bool {
    let by = |key: Prefix| tables.failures.get(&key).is_some_and(|e| e.banned_at(now));
    by(source) || (source.wider() != source && by(source.wider()))
}

/// Sets the gauge to the sources banned in the table.
fn recount(tables: &mut Tables) {
    // A ban folded from many sources counts each of them.
    let sources = (tables.failures.values()).filter_map(|e| Some(e.ban?.sources as usize));
    tables.banned = sources.sum();
    ::metrics::gauge!(m::DIST_BANNED_SOURCES).set(tables.banned as f64);
}

/// Counts, logs (within the budget) and recounts the bans of `gone`, taken out.
fn lifted(tables: &mut Tables, gone: &[Prefix], why: Lifted, now: Instant) {
    if gone.is_empty() {
        return;
    }
    ::metrics::counter!(m::DIST_BANS_LIFTED, "reason" => why.label()).increment(gone.len() as u64);
    // An operator's lift is logged once, whole, by the admin server; the others here,
    // each, within the budget.
    for source in gone.iter().filter(|_| why != Lifted::Operator) {
        if tables.bans_log.allow(now) {
            info!(%source, reason = why.label(), "ban lifted");
        }
    }
    recount(tables);
}

/// How many times `[dist.ban] failures` (or `withdrawals`) the sources of one wide
/// prefix (IPv4 /24, IPv6 /48) may strike, once the table had to forget them, before
/// the wide prefix is banned: a guesser cycling through more sources than the table
/// holds (the 65,536 /64s of one /48) is still banned, a neighbour now and then is not.
const WIDE_FACTOR: u32 = 4;

/// Strikes of sources the full table forgot, by wide prefix.
#[derive(Debug)]
struct Wide {
    since: Instant,
    last: Instant,
    count: u32,
    withdrawals: u32,
    sources: u32,
}

/// Makes room in a full failure table, at least an eighth of it in one pass (for the
/// many insertions to come), so that a new guesser is still banned after its
/// `failures` whatever filled it: windows that closed go; then the least recently
/// failing unbanned sources, their strikes kept by wide prefix (a wide prefix past
/// [`WIDE_FACTOR`] times a budget is banned whole); then, if bans fill it, they fold
/// into wide prefixes (IPv4 /24, IPv6 /48); and if even that is not room enough, the
/// bans closest to their end are lifted early.
fn make_room(tables: &mut Tables, now: Instant, ban: &BanConfig) {
    let target = MAX_TRACKED - MAX_TRACKED / 8;
    // Room enough: the wide prefixes banned on the way take a few places back.
    let roomy = MAX_TRACKED - MAX_TRACKED / 16;
    let within = ban.within;
    tables
        .failures
        .retain(|_, e| e.ban.is_some() || now.duration_since(e.since) <= within);
    if tables.failures.len() <= target {
        return;
    }
    let mut unbanned: Vec<(Instant, Prefix)> = (tables.failures.iter())
        .filter(|(_, e)| e.ban.is_none())
        .map(|(source, e)| (e.last, *source))
        .collect();
    let doomed = (tables.failures.len() - target).min(unbanned.len());
    if doomed < unbanned.len() {
        unbanned.select_nth_unstable(doomed);
    }
    for (_, source) in &unbanned[..doomed] {
        if let Some(forgotten) = tables.failures.remove(source) {
            remember_wide(tables, *source, &forgotten, now, ban);
        }
    }
    if tables.failures.len() <= roomy {
        recount(tables);
        return;
    }
    let before = tables.failures.len();
    let mut folded: HashMap<Prefix, Failures> = HashMap::new();
    for (source, entry) in tables.failures.drain() {
        let Some(ban) = entry.ban else {
            folded.insert(source, entry);
            continue;
        };
        let into = folded.entry(source.wider()).or_insert(Failures {
            since: entry.since,
            last: entry.last,
            count: 0,
            withdrawals: 0,
            ban: Some(Ban { sources: 0, ..ban }),
        });
        into.count = into.count.saturating_add(entry.count);
        into.withdrawals = into.withdrawals.saturating_add(entry.withdrawals);
        into.last = into.last.max(entry.last);
        let wide = into.ban.get_or_insert(Ban { sources: 0, ..ban });
        wide.at = wide.at.min(ban.at);
        wide.until = wide.until.max(ban.until);
        wide.sources = wide.sources.saturating_add(ban.sources);
    }
    tables.failures = folded;
    let mut evicted = Vec::new();
    if tables.failures.len() > roomy {
        let mut bans: Vec<(Instant, Prefix)> = (tables.failures.iter())
            .filter_map(|(source, e)| Some((e.ban?.until, *source)))
            .collect();
        let doomed = (tables.failures.len() - target).min(bans.len());
        if doomed < bans.len() {
            bans.select_nth_unstable(doomed);
        }
        for (_, source) in &bans[..doomed] {
            tables.failures.remove(source);
            evicted.push(*source);
        }
    }
    if tables.bans_log.allow(now) {
        warn!(
            bans = before,
            now = tables.failures.len(),
            lifted_early = evicted.len(),
            "the ban table is full of bans: they were folded into IPv4 /24 and IPv6 /48 prefixes"
        );
    }
    lifted(tables, &evicted, Lifted::Evicted, now);
    recount(tables);
}

/// Keeps the strikes of `source`, forgotten by a full table, under its wide prefix,
/// and bans the wide prefix when they pass [`WIDE_FACTOR`] times a budget.
fn remember_wide(
    tables: &mut Tables,
    source: Prefix,
    forgotten: &Failures,
    now: Instant,
    ban: &BanConfig,
) {
    let key = source.wider();
    if !tables.wide.contains_key(&key) && tables.wide.len() >= MAX_TRACKED / 4 {
        let within = ban.within;
        tables
            .wide
            .retain(|_, w| now.duration_since(w.since) <= within);
        if tables.wide.len() >= MAX_TRACKED / 4 {
            let mut oldest: Vec<(Instant, Prefix)> =
                tables.wide.iter().map(|(k, w)| (w.last, *k)).collect();
            let doomed = MAX_TRACKED / 32;
            oldest.select_nth_unstable(doomed);
            for (_, k) in &oldest[..doomed] {
                tables.wide.remove(k);
            }
        }
    }
    let wide = tables.wide.entry(key).or_insert(Wide {
        since: now,
        last: now,
        count: 0,
        withdrawals: 0,
        sources: 0,
    });
    if now.duration_since(wide.since) > ban.within {
        (wide.since, wide.count, wide.withdrawals, wide.sources) = (now, 0, 0, 0);
    }
    wide.last = now;
    wide.count = wide.count.saturating_add(forgotten.count);
    wide.withdrawals = wide.withdrawals.saturating_add(forgotten.withdrawals);
    wide.sources = wide.sources.saturating_add(1);
    let over = |count: u32, budget: u32| budget > 0 && count >= budget.saturating_mul(WIDE_FACTOR);
    if !over(wide.count, ban.failures) && !over(wide.withdrawals, ban.withdrawals) {
        return;
    }
    let (count, withdrawals, sources) = (wide.count, wide.withdrawals, wide.sources);
    tables.wide.remove(&key);
    tables.failures.insert(
        key,
        Failures {
            since: now,
            last: now,
            count,
            withdrawals,
            ban: Some(Ban {
                at: now,
                until: now + ban.duration,
                sources,
            }),
        },
    );
    if tables.bans_log.allow(now) {
        warn!(
            source = %key,
            failures = count,
            withdrawals,
            sources,
            for_s = ban.duration.as_secs(),
            "prefix banned: more sources in it failed than the ban table holds; its dist connections are closed at accept"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(n: u32) -> Prefix {
        Prefix::of(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n)), 64)
    }

    fn limits(failures: u32) -> Limits {
        Limits {
            max_per_source: 2,
            ipv6_prefix: 64,
            ban: BanConfig {
                failures,
                withdrawals: 5,
                within: Duration::from_secs(60),
                duration: Duration::from_secs(600),
            },
        }
    }

    fn guard(failures: u32) -> Arc<Guard> {
        Arc::new(Guard::new(limits(failures)))
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
        let mut off = limits(10);
        off.ban.withdrawals = 0;
        let off = Arc::new(Guard::new(off));
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
    fn an_ipv6_prefix_is_one_source() {
        let guard = guard(3);
        let now = Instant::now();
        let addr = |s: &str| guard.source(s.parse().unwrap());
        let _a = guard.admit(addr("2001:db8:1:2::1"), now).unwrap();
        let _b = guard.admit(addr("2001:db8:1:2::2"), now).unwrap();
        assert_eq!(
            guard.admit(addr("2001:db8:1:2:ffff::9"), now).unwrap_err(),
            Refusal::PerSource,
            "the third address of one /64 is over max_per_source"
        );
        assert!(guard.admit(addr("2001:db8:1:3::1"), now).is_ok());
        for n in 0..3 {
            guard.failed(addr(&format!("2001:db8:9:9::{n}")), now);
        }
        assert_eq!(
            guard.admit(addr("2001:db8:9:9::abcd"), now).unwrap_err(),
            Refusal::Banned,
            "failures from three addresses of a /64 ban the /64"
        );
        assert_eq!(guard.bans(now)[0].source, "2001:db8:9:9::/64");
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
    fn a_ban_that_ran_out_unswept_is_lifted_by_the_next_failure() {
        let guard = guard(2);
        let now = Instant::now();
        guard.failed(ip(1), now);
        assert!(guard.failed(ip(1), now));
        assert_eq!(guard.banned(), 1);
        let after = now + Duration::from_secs(601);
        assert!(guard.admit(ip(1), after).is_ok(), "the ban ran out");
        assert!(
            !guard.failed(ip(1), after),
            "a new window: one failure of two"
        );
        assert_eq!(guard.banned(), 0, "the gauge follows");
        assert!(guard.failed(ip(1), after));
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
    fn a_table_full_of_one_failure_each_still_bans_a_guesser() {
        let guard = guard(3);
        let now = Instant::now();
        let at = |n: u32| now + Duration::from_micros(u64::from(n));
        for n in 0..(MAX_TRACKED as u32 + 16) {
            guard.failed(ip(n), at(n));
        }
        let guesser = ip(1 << 20);
        let t = at(MAX_TRACKED as u32 + 100);
        for k in 0..2 {
            assert!(!guard.failed(guesser, t + Duration::from_micros(k)));
            // More of the fill in between.
            for n in 0..1000 {
                guard.failed(ip(100_000 + k as u32 * 1000 + n), t);
            }
        }
        assert!(guard.failed(guesser, t + Duration::from_micros(3)));
        assert!(guard.lock().failures.len() <= MAX_TRACKED);
    }

    #[test]
    fn a_table_full_of_bans_folds_them_and_still_bans_a_guesser() {
        let guard = guard(1);
        let now = Instant::now();
        guard.failed(ip(0), now);
        // 16,400 sources, one failure each, each banned at once.
        for n in 1..=16_400 {
            guard.failed(ip(n), now + Duration::from_micros(u64::from(n)));
        }
        assert!(guard.lock().failures.len() <= MAX_TRACKED);
        assert_eq!(guard.admit(ip(0), now).unwrap_err(), Refusal::Banned);
        assert_eq!(guard.admit(ip(9_999), now).unwrap_err(), Refusal::Banned);
        let guesser = Prefix::of("192.0.2.7".parse().unwrap(), 64);
        assert!(guard.failed(guesser, now + Duration::from_secs(1)));
        assert_eq!(guard.admit(guesser, now).unwrap_err(), Refusal::Banned);
        let bans = guard.bans(now);
        assert!(
            bans.iter()
                .any(|b| b.source == "10.0.0.0/24" && b.sources > 1)
        );
        let sources: u32 = bans.iter().map(|b| b.sources).sum();
        assert_eq!(guard.banned(), sources as usize, "the gauge counts sources");
    }

    #[test]
    fn a_guesser_cycling_through_more_sources_than_the_table_holds_is_banned() {
        let guard = guard(3);
        let now = Instant::now();
        // The /64s of one /48, one failure each, round and round: each is forgotten
        // before it comes back, so no /64 reaches its three failures.
        let net = |n: u32| {
            let ip = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x77, n as u16, 0, 0, 0, 1);
            guard.source(ip.into())
        };
        let mut at = now;
        let mut banned_after = None;
        for attempt in 0..40_000u32 {
            at += Duration::from_micros(10);
            let source = net(attempt % 20_000);
            if guard.admit(source, at).is_err() {
                banned_after = Some(attempt);
                break;
            }
            guard.failed(source, at);
        }
        let after = banned_after.expect("the /48 was never banned");
        assert!(after < 20_000, "banned only after {after} attempts");
        assert_eq!(guard.bans(at)[0].source, "2001:db8:77::/48");
        assert!(guard.lock().wide.len() <= MAX_TRACKED / 4);
    }

    #[test]
    fn two_sources_alternating_in_a_table_of_bans_are_banned() {
        let guard = guard(2);
        let now = Instant::now();
        let mut at = now;
        // Bans in distinct /24s fill the table but one entry.
        for n in 0..(MAX_TRACKED as u32 - 1) {
            at += Duration::from_micros(1);
            guard.failed(ip(n << 8), at);
            guard.failed(ip(n << 8), at);
        }
        let (a, b) = (
            Prefix::of("192.0.2.1".parse().unwrap(), 64),
            Prefix::of("198.51.100.1".parse().unwrap(), 64),
        );
        // The first of `a` is forgotten to make room (its /24 keeps it); then each
        // is banned after its two failures.
        for _ in 0..3 {
            at += Duration::from_micros(1);
            guard.failed(a, at);
            guard.failed(b, at);
        }
        assert!(matches!(guard.admit(a, at), Err(Refusal::Banned)));
        assert!(matches!(guard.admit(b, at), Err(Refusal::Banned)));
    }

    #[test]
    fn bans_of_distinct_wide_prefixes_that_cannot_fold_give_way_to_a_guesser() {
        let guard = guard(1);
        let now = Instant::now();
        // Every ban in its own /24: folding frees nothing.
        for n in 0..MAX_TRACKED as u32 {
            guard.failed(ip(n << 8), now + Duration::from_micros(u64::from(n)));
        }
        let guesser = Prefix::of("192.0.2.7".parse().unwrap(), 64);
        assert!(guard.failed(guesser, now + Duration::from_secs(1)));
        assert_eq!(guard.admit(guesser, now).unwrap_err(), Refusal::Banned);
        assert!(guard.lock().failures.len() <= MAX_TRACKED);
        assert_eq!(
            guard
                .admit(ip((MAX_TRACKED as u32 - 1) << 8), now)
                .unwrap_err(),
            Refusal::Banned,
            "the newest bans stay"
        );
    }

    #[test]
    fn bans_are_listed_and_lifted_by_address_prefix_or_all() {
        let guard = guard(1);
        let now = Instant::now();
        for n in [1, 2, 3] {
            guard.failed(ip(n), now + Duration::from_secs(u64::from(n)));
        }
        let later = now + Duration::from_secs(4);
        let listed: Vec<String> = guard.bans(later).into_iter().map(|b| b.source).collect();
        assert_eq!(listed, ["10.0.0.3", "10.0.0.2", "10.0.0.1"], "newest first");
        assert_eq!(guard.lift(Some(ip(2)), later), [ip(2)]);
        assert!(guard.admit(ip(2), later).is_ok());
        assert_eq!(guard.banned(), 2);
        assert!(
            guard.lift(Some(ip(2)), later).is_empty(),
            "nothing left to lift"
        );
        let all: Prefix = "10.0.0.0/24".parse().unwrap();
        assert_eq!(guard.lift(Some(all), later).len(), 1 + 1);
        assert_eq!(guard.banned(), 0);
        guard.failed(ip(7), later);
        assert_eq!(guard.lift(None, later), [ip(7)]);
        assert!(guard.bans(later).is_empty());
    }

    #[test]
    fn a_source_made_trusted_is_lifted() {
        let guard = guard(1);
        let now = Instant::now();
        guard.failed(ip(1), now);
        guard.failed(ip(2), now);
        let trusted: Peers = serde_json::from_str(r#"["10.0.0.1"]"#).unwrap();
        assert_eq!(guard.lift_trusted(&trusted, now), [ip(1)]);
        assert_eq!(guard.banned(), 1);
    }
}
