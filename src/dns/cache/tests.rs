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
