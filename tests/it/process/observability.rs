//! What operators see: `/metrics` with exact byte counts by node and peer, gauges that
//! return to zero, EPMD counters, `/livez`, and `/readyz` flipping at registration and
//! at shutdown. Real nodes check the counts against the node's own socket statistics.

use crate::support;
use std::time::Duration;

use crate::support::*;
use distgate::config::ReadyWhen;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes a caller named `name` sends in `support::dist::link`'s handshake.
fn caller_handshake(name: &str) -> usize {
    use distgate::handshake::{OTP25_FLAGS, encode_send_name, frames};
    encode_send_name(name, OTP25_FLAGS, 1).len() + frames::reply().len()
}

/// Bytes the node sends in it: status, challenge (naming `node@127.0.0.1`), ack.
const NODE_HANDSHAKE: usize = 5 + (2 + 19 + 14) + 19;

async fn metrics_text(dg: &InProcess) -> String {
    let (status, body) = http_get(dg.admin.unwrap(), "/metrics").await;
    assert_eq!(status, 200);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_counts_are_exact_by_node_and_peer() {
    let dg = InProcess::start(Options {
        admin: true,
        ..Options::default()
    })
    .await;
    let node = unique("counted");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (_registration, _) = register(
        dg.epmd,
        &alive2(&node, listener.local_addr().unwrap().port()),
    )
    .await;
    let peer = format!("{}@pod-7.example", unique("peer"));

    let (mut client, mut upstream) = support::dist::link(dg.public_addr(0), &listener, &peer).await;
    let up = [1u8; 100_000];
    client.write_all(&up).await.unwrap();
    let mut got = vec![0u8; up.len()];
    upstream.read_exact(&mut got).await.unwrap();
    assert_eq!(got, up);
    upstream.write_all(&[2u8; 77_777]).await.unwrap();
    upstream.shutdown().await.unwrap();
    client.shutdown().await.unwrap();
    assert_eq!(read_to_close(&mut client).await.len(), 77_777);
    read_to_close(&mut upstream).await;

    let labels = [
        ("node", node.as_str()),
        ("peer", peer.as_str()),
        ("direction", "inbound"),
    ];
    let text = eventually("the connection to be closed in /metrics", || {
        let dg = &dg;
        let labels = &labels;
        async move {
            let text = metrics_text(dg).await;
            // Both sides shut at once: either may count as the one that closed.
            ["peer", "node"]
                .into_iter()
                .find_map(|by| {
                    let closed = [
                        labels.as_slice(),
                        &[("reason", "closed"), ("closed_by", by)],
                    ]
                    .concat();
                    sample(&text, "distgate_dist_connections_closed_total", &closed)
                })
                .map(|_| text)
        }
    })
    .await;
    let value = |name: &str| sample(&text, name, &labels);
    // The handshake's bytes count too.
    assert_eq!(
        value("distgate_dist_received_bytes_total"),
        Some((caller_handshake(&peer) + up.len()) as f64)
    );
    assert_eq!(
        value("distgate_dist_sent_bytes_total"),
        Some((NODE_HANDSHAKE + 77_777) as f64)
    );
    assert_eq!(value("distgate_dist_connections_opened_total"), Some(1.0));
    assert_eq!(value("distgate_dist_connections_active"), Some(0.0));
    assert_eq!(
        value("distgate_dist_connection_duration_seconds_count"),
        Some(1.0)
    );
    assert!(text.contains("distgate_build_info{version=\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_are_counted_while_the_link_lives() {
    let dg = InProcess::start(Options {
        admin: true,
        ..Options::default()
    })
    .await;
    let node = unique("live");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (_registration, _) = register(
        dg.epmd,
        &alive2(&node, listener.local_addr().unwrap().port()),
    )
    .await;
    let peer = "live-peer@127.0.0.1";
    let (mut client, mut upstream) = support::dist::link(dg.public_addr(0), &listener, peer).await;
    client.write_all(b"eighteen bytes ...").await.unwrap();
    let mut got = [0u8; 18];
    upstream.read_exact(&mut got).await.unwrap();
    let labels = [
        ("node", node.as_str()),
        ("peer", peer),
        ("direction", "inbound"),
    ];
    let received = (caller_handshake(peer) + 18) as f64;
    eventually("live byte counts", || {
        let dg = &dg;
        let labels = &labels;
        async move {
            let text = metrics_text(dg).await;
            let active = sample(&text, "distgate_dist_connections_active", labels);
            let received_now = sample(&text, "distgate_dist_received_bytes_total", labels);
            (active == Some(1.0) && received_now == Some(received)).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epmd_requests_and_registrations_are_counted() {
    let dg = InProcess::start(Options {
        admin: true,
        ..Options::default()
    })
    .await;
    let name = unique("twice");
    let (_first, _) = register(dg.epmd, &alive2(&name, 40001)).await;
    let (_dup, reply) = register(dg.epmd, &alive2(&name, 40002)).await;
    assert_eq!(reply[..2], [b'v', 1]);
    port_please(dg.epmd, "nobody-here").await;
    let text = metrics_text(&dg).await;
    let count = |labels: &[(&str, &str)]| sample(&text, "distgate_epmd_requests_total", labels);
    assert!(count(&[("type", "alive2"), ("result", "ok")]).unwrap() >= 1.0);
    assert!(count(&[("type", "alive2"), ("result", "duplicate")]).unwrap() >= 1.0);
    assert!(count(&[("type", "port_please2"), ("result", "not_found")]).unwrap() >= 1.0);
    let rejected = sample(
        &text,
        "distgate_registrations_rejected_total",
        &[("reason", "duplicate")],
    );
    assert!(rejected.unwrap() >= 1.0);
    assert!(sample(&text, "distgate_registered_nodes", &[]).unwrap() >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_flips_at_registration_and_at_shutdown() {
    let name = unique("ready");
    let mut options = Options {
        admin: true,
        ..Options::default()
    };
    options.config.admin.ready_when = ReadyWhen::Nodes(vec![name.clone()]);
    options.config.shutdown.grace = Duration::from_secs(30);
    let dg = InProcess::start(options).await;
    let admin = dg.admin.unwrap();
    assert_eq!(http_get(admin, "/livez").await, (200, "ok\n".to_owned()));
    let (status, body) = eventually("/readyz to answer", || async move {
        let reply = http_get(admin, "/readyz").await;
        (!reply.1.contains("listeners not serving")).then_some(reply)
    })
    .await;
    assert_eq!(
        (status, body),
        (503, format!("not ready: not registered: {name}\n"))
    );

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (_registration, _) = register(
        dg.epmd,
        &alive2(&name, listener.local_addr().unwrap().port()),
    )
    .await;
    assert_eq!(http_get(admin, "/readyz").await.0, 200);

    // A dist connection keeps the drain going; meanwhile /readyz fails, /livez holds.
    let (mut client, mut upstream) =
        support::dist::link(dg.public_addr(0), &listener, "peer@127.0.0.1").await;
    dg.shutdown.cancel();
    let (status, body) = eventually("/readyz to fail", || async move {
        let reply = http_get(admin, "/readyz").await;
        (reply.0 == 503).then_some(reply)
    })
    .await;
    assert_eq!((status, body.as_str()), (503, "not ready: shutting down\n"));
    assert_eq!(http_get(admin, "/livez").await.0, 200);
    // The stream still flows during the drain.
    client.write_all(b"still here").await.unwrap();
    let mut got = [0u8; 10];
    upstream.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"still here");
    drop(client);
    drop(upstream);
}

#[tokio::test]
async fn unknown_paths_and_methods_are_refused() {
    let dg = InProcess::start(Options {
        admin: true,
        ..Options::default()
    })
    .await;
    assert_eq!(http_get(dg.admin.unwrap(), "/nope").await.0, 404);
    let mut stream = TcpStream::connect(dg.admin.unwrap()).await.unwrap();
    stream
        .write_all(
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let reply = String::from_utf8(read_to_close(&mut stream).await).unwrap();
    assert!(reply.starts_with("HTTP/1.1 405"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_distgate_shows_its_counters_and_gauges_at_zero() {
    let running = support::binary::Running::start("");
    let (status, text) = http_get(running.admin, "/metrics").await;
    assert_eq!(status, 200);
    for reason in ["not_local", "duplicate", "invalid_name"] {
        let labels = [("reason", reason)];
        let value = sample(&text, "distgate_registrations_rejected_total", &labels);
        assert_eq!(value, Some(0.0), "{reason}:\n{text}");
    }
    for (kind, result) in [
        ("alive2", "ok"),
        ("port_please2", "found"),
        ("port_please2", "not_found"),
        ("names", "ok"),
    ] {
        let labels = [("type", kind), ("result", result)];
        let value = sample(&text, "distgate_epmd_requests_total", &labels);
        assert_eq!(value, Some(0.0), "{kind} {result}:\n{text}");
    }
    for listener in ["epmd", "dist"] {
        let labels = [("listener", listener)];
        assert_eq!(
            sample(&text, "distgate_connections_open", &labels),
            Some(0.0),
            "{listener}:\n{text}"
        );
    }
    for name in [
        "distgate_registered_nodes",
        "distgate_registered_clients",
        "distgate_dist_connections_no_node_total",
        "distgate_accept_errors_total",
        "distgate_dist_banned_sources",
        "distgate_splice_pipes",
        "distgate_log_lines_dropped_total",
    ] {
        assert_eq!(sample(&text, name, &[]), Some(0.0), "{name}:\n{text}");
    }
}
