//! Graceful lifecycle of the binary: on SIGTERM or SIGINT distgate fails `/readyz`,
//! stops accepting, keeps established streams flowing until they close (no byte in
//! flight lost) or `[shutdown] grace` passes, then exits 0 and says which. A second
//! signal during the drain exits at once; SIGHUP reloads and ends nothing.

use crate::support;
use crate::support::binary::Running;
use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn start(grace: &str) -> Running {
    Running::start(&format!("[shutdown]\ngrace = \"{grace}\"\n"))
}

fn signal(running: &Running, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &running.out.process.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A fake node behind the public port, and a stream opened through it.
async fn stream_through(running: &Running) -> (TcpStream, TcpStream, TcpStream) {
    let (node, registration) = fake_node(running.epmd, "app").await;
    let (client, upstream) = support::dist::link(running.public, &node, "peer@127.0.0.1").await;
    (registration, client, upstream)
}

async fn drains_on(name: &str) {
    let mut running = start("30s");
    let (_registration, client, upstream) = stream_through(&running).await;
    let (mut client_r, mut client_w) = client.into_split();
    let (mut upstream_r, mut upstream_w) = upstream.into_split();
    // Bytes keep flowing both ways across the signal.
    let sender = tokio::spawn(async move {
        let chunk = vec![5u8; 64 * 1024];
        let mut sent = 0usize;
        for _ in 0..256 {
            client_w.write_all(&chunk).await.unwrap();
            sent += chunk.len();
        }
        client_w.shutdown().await.unwrap();
        sent
    });
    let mut first = vec![0u8; 1 << 20];
    upstream_r.read_exact(&mut first).await.unwrap();
    signal(&running, name);
    let admin = running.admin;
    eventually("/readyz to fail", || async move {
        (http_get(admin, "/readyz").await.0 == 503).then_some(())
    })
    .await;
    // New connections are refused while the old stream drains.
    eventually("the public port to stop accepting", || {
        let public = running.public;
        async move {
            let refused = match TcpStream::connect(public).await {
                Err(_) => true,
                Ok(mut s) => s.read(&mut [0u8; 1]).await.map_or(true, |n| n == 0),
            };
            refused.then_some(())
        }
    })
    .await;
    let mut rest = vec![];
    upstream_r.read_to_end(&mut rest).await.unwrap();
    let sent = sender.await.unwrap();
    assert_eq!(first.len() + rest.len(), sent, "bytes lost in the drain");
    upstream_w.write_all(b"last reply").await.unwrap();
    upstream_w.shutdown().await.unwrap();
    let mut reply = vec![];
    client_r.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, b"last reply");
    let status = running.out.wait_exit(DEADLINE);
    assert!(status.success(), "{status}");
    let text = running.out.text();
    assert!(text.contains(&format!("\"signal\":\"{name}\"")), "{text}");
    assert!(text.contains("\"drain complete\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_live_streams_without_losing_a_byte() {
    drains_on("SIGTERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_drains_the_same_way() {
    drains_on("SIGINT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_outlives_the_grace_is_cut_and_said_so() {
    let mut running = start("300ms");
    let (_registration, mut client, _upstream) = stream_through(&running).await;
    signal(&running, "SIGTERM");
    // The stream is cut when the grace period ends; distgate still exits 0.
    let status = running.out.wait_exit(DEADLINE);
    assert!(status.success(), "{status}");
    read_to_close(&mut client).await;
    let text = running.out.text();
    assert!(
        text.contains("grace period over; dropping open connections"),
        "{text}"
    );
    assert!(
        text.contains("distgate stopped with connections cut"),
        "{text}"
    );
    // The cut link still has its access-log line.
    let closed = text
        .lines()
        .find(|l| l.contains("\"dist connection closed\""))
        .unwrap_or_else(|| panic!("no access-log line for the cut link:\n{text}"));
    for needle in ["\"reason\":\"shutdown\"", "\"closed_by\":\"distgate\""] {
        assert!(closed.contains(needle), "{closed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_during_the_drain_exits_at_once_and_says_what_it_cut() {
    let mut running = start("60s");
    let (_registration, mut client, mut upstream) = stream_through(&running).await;
    signal(&running, "SIGTERM");
    running.out.wait_line("the drain", DEADLINE, |l| {
        l.contains("\"stopped accepting; draining connections\"")
    });
    // The link still flows while the drain waits for it.
    client.write_all(b"draining").await.unwrap();
    let mut got = [0u8; 8];
    upstream.read_exact(&mut got).await.unwrap();
    signal(&running, "SIGTERM");
    let second = std::time::Instant::now();
    let status = running.out.wait_exit(DEADLINE);
    let took = second.elapsed();
    assert_eq!(status.code(), Some(128 + 15), "{status}");
    assert!(
        took < std::time::Duration::from_secs(1),
        "exited {took:?} after the second signal"
    );
    let text = running.out.text();
    let line = text
        .lines()
        .find(|l| l.contains("second signal during the drain"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("\"links_cut\":1"), "{line}");
    read_to_close(&mut client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_sighups_in_a_second_under_load_drop_nothing() {
    let mut running = start("30s");
    let (_registration, mut client, mut upstream) = stream_through(&running).await;
    // Ten in a second, while bytes flow both ways.
    let started = std::time::Instant::now();
    for i in 0..10u8 {
        signal(&running, "SIGHUP");
        let chunk = vec![i; 64 * 1024];
        client.write_all(&chunk).await.unwrap();
        let mut got = vec![0u8; chunk.len()];
        upstream.read_exact(&mut got).await.unwrap();
        assert_eq!(got, chunk);
        upstream.write_all(&chunk[..1000]).await.unwrap();
        client.read_exact(&mut got[..1000]).await.unwrap();
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    let reloaded = |text: &str| {
        text.lines()
            .filter(|l| {
                l.contains("\"SIGHUP\"") && l.contains("configuration reloaded: nothing changed")
            })
            .count()
    };
    // Signals of one kind may coalesce on delivery: at least one reload, at most ten.
    eventually_blocking(DEADLINE, "the SIGHUP reload logged", || {
        (reloaded(&running.out.text()) >= 1).then_some(())
    });
    let text = running.out.text();
    assert!(reloaded(&text) <= 10);
    assert!(!text.contains("configuration not reloaded"), "{text}");
    assert!(
        running.out.process.exited().is_none(),
        "distgate ended on SIGHUP"
    );
    assert_eq!(http_get(running.admin, "/readyz").await.0, 200);
    let (_, metrics) = http_get(running.admin, "/metrics").await;
    let ok = sample(
        &metrics,
        "distgate_config_reloads_total",
        &[("result", "ok")],
    );
    assert!(ok.is_some_and(|n| (1.0..=10.0).contains(&n)), "{metrics}");
    // Started with --config: a refused reload would be worth an alert.
    assert_eq!(sample(&metrics, "distgate_config_file", &[]), Some(1.0));
    upstream.write_all(b"still linked").await.unwrap();
    let mut back = [0u8; 12];
    client.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"still linked");
}
