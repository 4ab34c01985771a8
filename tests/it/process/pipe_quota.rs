//! As Kubernetes runs it: distgate as an unprivileged UID, whose pipe quota
//! (`fs.pipe-user-pages-soft`) it shares with every other process of that UID. Root is
//! exempt from the quota, so these tests drop to a UID of their own with `setpriv`.
//! With the quota free, bulk goes through pipes of the size asked and idle pipes are
//! given back within a second or two; with another process of the UID holding the
//! quota, pipes come back two pages small, and distgate moves those bursts by copy,
//! counts it, warns once naming the sysctl, and splices again once the quota frees.

use crate::support;
use std::net::SocketAddr;

use crate::support::beam::Output;
use crate::support::binary::Running;
use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A UID of this test's own: the quota is per UID, and other tests may run distgate as
/// 65532 at the same time.
fn test_uid() -> u32 {
    61_000 + std::process::id() % 4_000
}

/// A process of `uid` that takes 1 MiB pipes until the quota refuses one, and holds
/// them until it is ended.
fn hog(uid: u32) -> Output {
    let script = r#"$| = 1; my @p; my $n = 0;
        while (1) { pipe(my $r, my $w) or last; push @p, [$r, $w]; $n++;
                    last unless fcntl($w, 1031, 1 << 20); }
        print "HELD $n\n"; sleep 3600;"#;
    let perl = std::path::Path::new("/usr/bin/perl");
    let mut out = Output::spawn(
        "hog",
        support::as_user::as_user(Some(uid), perl).args(["-e", script]),
    );
    out.wait_for("HELD", DEADLINE);
    out
}

async fn metric(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (status, text) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    sample(&text, name, labels).unwrap_or_else(|| panic!("{name} missing:\n{text}"))
}

/// `len` bytes of a pattern from `client` to `upstream`, checked on arrival.
async fn bulk(client: &mut TcpStream, upstream: &mut TcpStream, len: usize, seed: u64) {
    let data = support::bytes::bytes(seed, len);
    let (reader, writer) = (upstream, client);
    let send = async {
        for chunk in data.chunks(256 << 10) {
            writer.write_all(chunk).await.unwrap();
        }
    };
    let receive = async {
        let mut got = vec![0u8; len];
        reader.read_exact(&mut got).await.unwrap();
        got
    };
    let ((), got) = tokio::join!(send, receive);
    assert!(got == data, "bytes changed on the way");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_pipe_quota_moves_bulk_by_copy_says_so_once_and_splices_again_once_freed() {
    if !require(&["setpriv", "perl"]) || !require_root() {
        return;
    }
    let uid = test_uid();
    let running = Running::start_as(Some(uid), "", "");
    let (node, _registration) = fake_node(running.epmd, "app").await;
    let (mut client, mut upstream) = dist::link(running.public, &node, "peer@127.0.0.1").await;
    let admin = running.admin;
    let short = |result: &'static str| async move {
        metric(
            admin,
            "distgate_splice_pipes_short_total",
            &[("result", result)],
        )
        .await
    };
    let fallbacks =
        || async move { metric(admin, "distgate_splice_copy_fallbacks_total", &[]).await };

    // Quota free: pipes of the size asked, no fallback.
    bulk(&mut client, &mut upstream, 64 << 20, 1).await;
    assert_eq!((short("smaller").await, short("refused").await), (0.0, 0.0));
    assert_eq!(fallbacks().await, 0.0);
    // Idle pipes go back to the quota.
    eventually("idle pipes closed", || async move {
        (metric(admin, "distgate_splice_pipes", &[]).await == 0.0).then_some(())
    })
    .await;

    // Another process of the UID holds the quota.
    let hog = hog(uid);
    bulk(&mut client, &mut upstream, 64 << 20, 2).await;
    assert!(short("refused").await >= 1.0);
    assert!(fallbacks().await >= 1.0);
    let said = running.said(
        "splice pipes come back smaller than asked: the pipe quota of this UID (sysctl fs.pipe-user-pages-soft, shared by every process of the UID on the node) is used up; bulk streams move by copy where a pipe is below the copy buffer (distgate_splice_pipes_short_total). Raise the sysctl on the node or run this workload as a UID of its own",
    );
    assert_eq!(said, 1, "the quota warning once:\n{}", running.out.text());
    // More bulk under the held quota: still intact, still no second warning.
    bulk(&mut client, &mut upstream, 16 << 20, 3).await;
    assert!(running.out.text().matches("pipe-user-pages-soft").count() == 1);

    // The quota frees: bursts splice again (no new fallback).
    drop(hog);
    let deadline = std::time::Instant::now() + DEADLINE;
    for seed in 4.. {
        let before = fallbacks().await;
        bulk(&mut client, &mut upstream, 8 << 20, seed).await;
        if fallbacks().await == before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no burst spliced again"
        );
    }
}
