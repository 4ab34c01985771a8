//! DNS against a real server: dnsmasq on a loopback port started by the test, serving
//! a made-up cluster domain. Names resolve with the server's TTL, a missing name is
//! "not found", and when the server goes away the last good answer is kept. What
//! callers can make DNS do is bounded: a missing name asked through the gateway 600
//! times reaches dnsmasq at most twice per `min_ttl`, and a name server that never
//! answers (a UDP socket of the test's) is asked once per name per `min_ttl`, its
//! failures logged within the log budget.
//!
//! Needs `dnsmasq` (Debian's dnsmasq-base); with `CI=true` a missing one fails.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::dnsmasq::{all_logged, dnsmasq, dnsmasq_logging, queries};
use crate::support::*;
use distgate::dns::{Cache, DnsError, Hickory, Lookup, Ttls};
use distgate::route::{Glob, Route, Template, Upstream};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn names_resolve_with_the_servers_ttl_and_missing_ones_are_not_found() {
    if !require(&["dnsmasq"]) {
        return;
    }
    let server = dnsmasq(
        &[("app-0.app-headless.prod.svc.cluster.test", "198.18.7.1")],
        2,
    )
    .await;
    let resolver =
        Hickory::with_nameservers(&[server.addr], Duration::from_millis(500), 1).unwrap();
    let answer = resolver
        .lookup_ip("app-0.app-headless.prod.svc.cluster.test")
        .await
        .unwrap();
    assert_eq!(answer.addrs, [ip("198.18.7.1")]);
    assert!(answer.ttl <= Duration::from_secs(2), "{:?}", answer.ttl);
    let missing = resolver
        .lookup_ip("app-9.app-headless.prod.svc.cluster.test")
        .await;
    assert!(
        matches!(missing, Err(DnsError::NotFound { .. })),
        "{missing:?}"
    );
}

#[tokio::test]
async fn the_last_good_answer_is_kept_while_dns_is_down() {
    if !require(&["dnsmasq"]) {
        return;
    }
    let mut server = dnsmasq(&[("app-1.cluster.test", "198.18.7.2")], 0).await;
    let resolver =
        Hickory::with_nameservers(&[server.addr], Duration::from_millis(200), 1).unwrap();
    let ttls = Ttls {
        floor: Duration::ZERO,
        ceiling: Duration::from_secs(60),
        stale_for: Duration::from_secs(3600),
    };
    let cache = Cache::new(resolver, ttls);
    let fresh = cache.resolve("app-1.cluster.test").await.unwrap();
    assert_eq!(
        (fresh.addrs.as_slice(), fresh.stale),
        (&[ip("198.18.7.2")][..], false)
    );
    // The DNS server goes away.
    let _ = server.process.child.kill();
    let _ = server.process.child.wait();
    let stale = cache.resolve("app-1.cluster.test").await.unwrap();
    assert_eq!(
        (stale.addrs.as_slice(), stale.stale),
        (&[ip("198.18.7.2")][..], true)
    );
    assert!(
        cache.resolve("app-2.cluster.test").await.is_err(),
        "nothing to fall back on"
    );
}

/// A gateway routing `app-*` to `{name}.cluster.test`, resolved by `dns` with the
/// given `min_ttl`.
fn gateway_over(dns: SocketAddr, min_ttl: Duration) -> Options {
    let mut options = Options::default();
    options.config.routes = vec![Route::new(
        Glob::new("app-*").unwrap(),
        Upstream::Host(Template::new("{name}.cluster.test").unwrap()),
    )];
    options.config.dns.nameservers = vec![dns];
    options.config.dns.min_ttl = min_ttl;
    options
}

/// How many `min_ttl` windows `elapsed` touches: the most lookups one name may cost.
fn windows(elapsed: Duration, min_ttl: Duration) -> usize {
    (elapsed.as_secs_f64() / min_ttl.as_secs_f64())
        .ceil()
        .max(1.0) as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_of_a_missing_name_make_at_most_two_queries_per_min_ttl() {
    if !require(&["dnsmasq"]) {
        return;
    }
    let dir = TempDir::new("dnsq");
    let log = dir.join("queries.log");
    let server = dnsmasq_logging(&[("app-0.cluster.test", "127.0.0.1")], 60, &log).await;
    let min_ttl = Duration::from_secs(5);
    let gateway = InProcess::start(gateway_over(server.addr, min_ttl)).await;

    // 300 peers ask the gateway's EPMD at once for a name whose host does not exist.
    let started = Instant::now();
    let mut asks = tokio::task::JoinSet::new();
    for _ in 0..300 {
        let epmd = gateway.epmd;
        asks.spawn(async move { port_please(epmd, "app-9").await });
    }
    while let Some(answer) = asks.join_next().await {
        assert_eq!(answer.unwrap(), None, "a missing name was given a port");
    }
    let at_once = started.elapsed();
    all_logged(server.addr, &log, "sentinel-1.cluster.test").await;
    let asked_at_once = queries(&log, "app-9.cluster.test");
    // And 300 more, one after another.
    for _ in 0..300 {
        assert_eq!(port_please(gateway.epmd, "app-9").await, None);
    }
    let elapsed = started.elapsed();
    all_logged(server.addr, &log, "sentinel-2.cluster.test").await;
    let asked = queries(&log, "app-9.cluster.test");

    // One lookup is two queries (A and AAAA), at most one lookup per `min_ttl`.
    eprintln!(
        "a missing name: 300 lookups at once in {at_once:?}: {asked_at_once} queries; \
         300 more one after another, {elapsed:?} in all: {asked} queries"
    );
    assert!(asked_at_once >= 1, "the name was never asked");
    assert!(
        asked_at_once <= 2 * windows(at_once, min_ttl),
        "{asked_at_once} queries for 300 lookups at once in {at_once:?}"
    );
    assert!(
        asked <= 2 * windows(elapsed, min_ttl),
        "{asked} queries for 600 lookups in {elapsed:?} (min_ttl {min_ttl:?})"
    );
}

/// A name server that reads every query and never answers, counting the queries by
/// name on a thread of its own until dropped.
struct Silent {
    addr: SocketAddr,
    asked: Arc<Mutex<HashMap<String, usize>>>,
    marks: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Datagrams the test sends itself, to know the queries before them are counted.
const MARK: &[u8] = b"mark";

impl Silent {
    fn start() -> Silent {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .unwrap();
        // Room for bursts while the thread reads (the kernel caps it at rmem_max).
        let _ = socket.set_recv_buffer_size(4 << 20);
        socket.bind(&loopback(0).into()).unwrap();
        let socket = std::net::UdpSocket::from(socket);
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let asked = Arc::new(Mutex::new(HashMap::new()));
        let marks = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (asked, marks, stop) = (Arc::clone(&asked), Arc::clone(&marks), Arc::clone(&stop));
            move || {
                let mut buf = [0; 1500];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((len, _)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    if &buf[..len] == MARK {
                        marks.fetch_add(1, Ordering::SeqCst);
                    } else if let Some(name) = question(&buf[..len]) {
                        *asked.lock().unwrap().entry(name).or_insert(0) += 1;
                    }
                }
            }
        });
        Silent {
            addr,
            asked,
            marks,
            stop,
            thread: Some(thread),
        }
    }

    /// Queries for `name` so far, once every query sent before this call is counted.
    async fn queries(&self, name: &str) -> usize {
        self.settle().await;
        self.asked.lock().unwrap().get(name).copied().unwrap_or(0)
    }

    /// Every query sent before this call counted: a datagram sent after them is read.
    async fn settle(&self) {
        let seen = self.marks.load(Ordering::SeqCst);
        let sender = std::net::UdpSocket::bind(loopback(0)).unwrap();
        sender.send_to(MARK, self.addr).unwrap();
        eventually("the silent server to read its mark", || async {
            (self.marks.load(Ordering::SeqCst) > seen).then_some(())
        })
        .await;
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The name a DNS query asks for (its first question), lower case, without the dot at
/// the end.
fn question(packet: &[u8]) -> Option<String> {
    let mut labels = vec![];
    let mut at = 12;
    loop {
        let len = usize::from(*packet.get(at)?);
        if len == 0 {
            return Some(labels.join(".").to_ascii_lowercase());
        }
        let label = packet.get(at + 1..at + 1 + len)?;
        labels.push(String::from_utf8_lossy(label).into_owned());
        at += 1 + len;
    }
}

/// Log lines written while it is the default subscriber of this thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines_with(&self, text: &str) -> usize {
        let bytes = self.0.lock().unwrap();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|line| line.contains(text))
            .count()
    }
}

/// The log budget of `src/log_budget.rs`: lines per window, plus one summary line.
const LOG_BURST: usize = 20;

// On this thread only (the default runtime of `tokio::test`), so the log capture sees
// every task.
#[tokio::test]
async fn a_name_server_that_never_answers_is_asked_once_per_min_ttl_and_logged_within_budget() {
    let log = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let log = log.clone();
            move || log.clone()
        })
        .with_ansi(false)
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);
    let silent = Silent::start();
    let timeout = Duration::from_millis(300);
    let resolver = || Hickory::with_nameservers(&[silent.addr], timeout, 1).unwrap();

    // What one lookup costs the name server, asked directly.
    let direct = resolver().lookup_ip("calibrate.cluster.test").await;
    assert!(matches!(direct, Err(DnsError::Failed { .. })), "{direct:?}");
    let per_lookup = silent.queries("calibrate.cluster.test").await;
    assert!(per_lookup >= 1, "the silent server saw no query");

    let min_ttl = Duration::from_secs(5);
    let ttls = Ttls {
        floor: min_ttl,
        ceiling: Duration::from_secs(60),
        stale_for: Duration::from_secs(60),
    };
    let cache = Arc::new(Cache::new(resolver(), ttls));

    // One name, 300 lookups at once and 300 more one after another.
    let started = Instant::now();
    let mut asks = tokio::task::JoinSet::new();
    for _ in 0..300 {
        let cache = Arc::clone(&cache);
        asks.spawn(async move { cache.resolve("app-0.cluster.test").await });
    }
    while let Some(answer) = asks.join_next().await {
        let answer = answer.unwrap();
        assert!(matches!(answer, Err(DnsError::Failed { .. })), "{answer:?}");
    }
    for _ in 0..300 {
        let answer = cache.resolve("app-0.cluster.test").await;
        assert!(matches!(answer, Err(DnsError::Failed { .. })), "{answer:?}");
    }
    let elapsed = started.elapsed();
    let asked = silent.queries("app-0.cluster.test").await;
    let bound = per_lookup * windows(elapsed, min_ttl);
    eprintln!(
        "600 lookups of one name, name server silent, in {elapsed:?}: {asked} queries \
         (one lookup: {per_lookup}; bound {bound})"
    );
    assert!(asked <= bound, "{asked} queries in {elapsed:?}");

    // Callers that give up at `[dns] timeout`, as the gateway's do: the resolver ends
    // first (its budget is three quarters of it), so its failure is remembered and
    // the next callers do not ask again.
    let started = Instant::now();
    for _ in 0..20 {
        let answer = tokio::time::timeout(timeout, cache.resolve("late.cluster.test")).await;
        assert!(
            matches!(answer, Ok(Err(DnsError::Failed { .. }))),
            "{answer:?}"
        );
    }
    let asked = silent.queries("late.cluster.test").await;
    let bound = per_lookup * windows(started.elapsed(), min_ttl);
    assert!(
        asked <= bound,
        "{asked} queries for 20 callers giving up at the timeout"
    );

    // 300 names at once: each asked once, the failures logged within the budget.
    let mut asks = tokio::task::JoinSet::new();
    for i in 0..300 {
        let cache = Arc::clone(&cache);
        asks.spawn(async move { cache.resolve(&format!("app-{i}.other.test")).await });
    }
    while let Some(answer) = asks.join_next().await {
        assert!(answer.unwrap().is_err());
    }
    silent.settle().await;
    let most = (silent.asked.lock().unwrap().iter())
        .filter(|(name, _)| name.ends_with(".other.test"))
        .map(|(_, &n)| n)
        .max()
        .unwrap_or(0);
    assert!(most <= per_lookup, "a name asked {most} times");
    let warned = log.lines_with("DNS lookup failed");
    let summed = log.lines_with("more DNS lookups failed than logged");
    eprintln!("301 names failing: {warned} warning lines, {summed} summary lines");
    assert!(
        warned + summed <= LOG_BURST + 1,
        "{warned} warning lines and {summed} summaries"
    );
    assert!(warned >= 1, "no failure logged at all");
}
