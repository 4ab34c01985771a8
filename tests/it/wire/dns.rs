//! DNS against a real server: dnsmasq on a loopback port started by the test, serving
//! a made-up cluster domain. Names resolve with the server's TTL, a missing name is
//! "not found", and when the server goes away the last good answer is kept.
//!
//! Needs `dnsmasq` (Debian's dnsmasq-base); with `CI=true` a missing one fails.

use std::net::IpAddr;
use std::time::Duration;

use crate::support::dnsmasq::dnsmasq;
use crate::support::*;
use distgate::dns::{Cache, DnsError, Hickory, Lookup, Ttls};

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
