use super::*;
use crate::log_budget::LOG_BURST;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Semaphore;

/// Answers from a table that the test changes; `None` is a failing server. With a
/// `gate`, each lookup waits for a permit after it is counted.
struct Table {
    answer: Mutex<Option<Result<Answer, DnsError>>>,
    asked: AtomicUsize,
    gate: Option<Semaphore>,
}

impl Lookup for &Table {
    async fn lookup_ip(&self, host: &str) -> Result<Answer, DnsError> {
        self.asked.fetch_add(1, Ordering::Relaxed);
        if let Some(gate) = &self.gate {
            gate.acquire().await.unwrap().forget();
        }
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
        gate: None,
    }
}

/// A [`table`] whose lookups wait for the test to let them through, for tasks.
fn gated(answer: Option<Result<Answer, DnsError>>) -> &'static Table {
    Box::leak(Box::new(Table {
        gate: Some(Semaphore::new(0)),
        ..table(answer)
    }))
}

fn not_found(host: &str) -> Option<Result<Answer, DnsError>> {
    Some(Err(DnsError::NotFound { host: host.into() }))
}

/// Polls `done` every millisecond until it holds (the other tasks run meanwhile),
/// failing after 10 s.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
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

#[tokio::test]
async fn a_missing_name_is_asked_again_only_after_the_floor() {
    let t = table(not_found("gone"));
    let floor = Duration::from_millis(200);
    let cache = Cache::new(&t, Ttls { floor, ..TTLS });
    let first = Instant::now();
    for _ in 0..300 {
        let missing = cache.resolve("gone").await;
        assert!(
            matches!(missing, Err(DnsError::NotFound { .. })),
            "{missing:?}"
        );
    }
    assert_eq!(t.asked.load(Ordering::Relaxed), 1, "300 lookups asked DNS");
    // Asked every millisecond, DNS hears of the name again once the floor has passed.
    let deadline = first + Duration::from_secs(10);
    while t.asked.load(Ordering::Relaxed) == 1 {
        assert!(Instant::now() < deadline, "never asked again");
        let missing = cache.resolve("gone").await;
        assert!(
            matches!(missing, Err(DnsError::NotFound { .. })),
            "{missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let after = first.elapsed();
    assert!(after >= floor, "asked again after {after:?}");
    assert_eq!(t.asked.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_failing_server_is_asked_once_per_floor_and_the_last_answer_served() {
    let floor = Duration::from_millis(100);
    let ttls = Ttls { floor, ..TTLS };
    // No answer to fall back on: the failure itself is repeated.
    let t = table(None);
    let cache = Cache::new(&t, ttls);
    for _ in 0..300 {
        let failed = cache.resolve("a").await;
        assert!(matches!(failed, Err(DnsError::Failed { .. })), "{failed:?}");
    }
    assert_eq!(t.asked.load(Ordering::Relaxed), 1, "300 lookups asked DNS");

    // A last good answer: served stale, DNS asked once per floor all the same.
    let t = table(answer("10.0.0.1", Duration::ZERO));
    let cache = Cache::new(&t, ttls);
    cache.resolve("a").await.unwrap();
    *t.answer.lock().unwrap() = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.asked.load(Ordering::Relaxed) == 1 {
        assert!(Instant::now() < deadline, "never asked again");
        cache.resolve("a").await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for _ in 0..300 {
        let stale = cache.resolve("a").await.unwrap();
        assert_eq!(
            (stale.addrs.as_slice(), stale.stale),
            (&[ip("10.0.0.1")][..], true)
        );
    }
    assert_eq!(
        t.asked.load(Ordering::Relaxed),
        2,
        "300 stale lookups asked DNS"
    );
}

#[tokio::test]
async fn concurrent_lookups_of_one_name_share_one_query() {
    let t = gated(answer("10.0.0.1", Duration::from_secs(30)));
    let cache = Arc::new(Cache::new(t, TTLS));
    let entered = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (cache, entered) = (Arc::clone(&cache), Arc::clone(&entered));
        tasks.spawn(async move {
            entered.fetch_add(1, Ordering::SeqCst);
            cache.resolve("a").await
        });
    }
    // One thread: a task that has counted itself in has run into its wait.
    until("every task to wait on the lookup", || {
        entered.load(Ordering::SeqCst) == 50
    })
    .await;
    assert_eq!(lock(&cache.state).flights.len(), 1);
    t.gate.as_ref().unwrap().add_permits(50);
    while let Some(resolved) = tasks.join_next().await {
        assert_eq!(resolved.unwrap().unwrap().addrs, [ip("10.0.0.1")]);
    }
    assert_eq!(t.asked.load(Ordering::Relaxed), 1, "50 callers asked DNS");
    assert!(
        lock(&cache.state).flights.is_empty(),
        "a flight left behind"
    );
}

#[tokio::test]
async fn a_caller_that_gives_up_leaves_no_lookup_behind() {
    let t = gated(not_found("a"));
    let cache = Arc::new(Cache::new(t, TTLS));
    let lone = tokio::spawn({
        let cache = Arc::clone(&cache);
        async move { cache.resolve("a").await }
    });
    until("the lookup", || t.asked.load(Ordering::Relaxed) == 1).await;
    lone.abort();
    assert!(lone.await.unwrap_err().is_cancelled());
    assert!(
        lock(&cache.state).flights.is_empty(),
        "an abandoned flight kept"
    );

    // The first of two callers gives up: the other asks in its place.
    let first = tokio::spawn({
        let cache = Arc::clone(&cache);
        async move { cache.resolve("a").await }
    });
    until("the second lookup", || t.asked.load(Ordering::Relaxed) == 2).await;
    let second = tokio::spawn({
        let cache = Arc::clone(&cache);
        async move { cache.resolve("a").await }
    });
    until("the second caller to wait", || {
        lock(&cache.state).flights.get("a").map(|f| f.waiting) == Some(2)
    })
    .await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    until("the second caller to ask", || {
        t.asked.load(Ordering::Relaxed) == 3
    })
    .await;
    t.gate.as_ref().unwrap().add_permits(1);
    let missing = second.await.unwrap();
    assert!(
        matches!(missing, Err(DnsError::NotFound { .. })),
        "{missing:?}"
    );
    assert!(
        lock(&cache.state).flights.is_empty(),
        "a flight left behind"
    );
}

#[tokio::test]
async fn a_flood_of_made_up_names_stays_bounded_and_keeps_the_live_answers() {
    let t = table(answer("10.0.0.1", Duration::from_secs(3600)));
    let cache = Cache::new(&t, TTLS);
    cache.resolve("live").await.unwrap();
    *t.answer.lock().unwrap() = not_found("made-up");
    for i in 0..MAX_HOSTS + 100 {
        assert!(cache.resolve(&format!("made-up-{i}")).await.is_err());
    }
    assert!(lock(&cache.state).entries.len() <= MAX_HOSTS);
    *t.answer.lock().unwrap() = None;
    let live = cache.resolve("live").await.unwrap();
    assert_eq!(
        (live.addrs.as_slice(), live.stale),
        (&[ip("10.0.0.1")][..], false)
    );
    assert_eq!(
        t.asked.load(Ordering::Relaxed),
        1 + MAX_HOSTS + 100,
        "the live answer was pushed out"
    );

    // Good answers only: the one whose use ends first makes room.
    let t = table(answer("10.0.0.1", Duration::from_secs(3600)));
    let cache = Cache::new(&t, TTLS);
    for i in 0..=MAX_HOSTS {
        cache.resolve(&format!("host-{i}")).await.unwrap();
    }
    assert_eq!(lock(&cache.state).entries.len(), MAX_HOSTS);
    let asked = t.asked.load(Ordering::Relaxed);
    cache.resolve(&format!("host-{MAX_HOSTS}")).await.unwrap();
    assert_eq!(
        t.asked.load(Ordering::Relaxed),
        asked,
        "the newest pushed out"
    );
    cache.resolve("host-0").await.unwrap();
    assert_eq!(
        t.asked.load(Ordering::Relaxed),
        asked + 1,
        "the oldest kept"
    );
}

/// Log lines written while it is the thread's default subscriber.
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

#[tokio::test]
async fn failed_lookups_are_logged_within_the_budget() {
    let log = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let log = log.clone();
            move || log.clone()
        })
        .with_ansi(false)
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);
    let t = table(None);
    let cache = Cache::new(&t, TTLS);
    for i in 0..300 {
        assert!(cache.resolve(&format!("host-{i}")).await.is_err());
    }
    assert_eq!(t.asked.load(Ordering::Relaxed), 300);
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let warned = text
        .lines()
        .filter(|l| l.contains("DNS lookup failed"))
        .count();
    assert_eq!(warned, LOG_BURST as usize, "{text}");
}
