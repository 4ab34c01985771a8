//! Admission at the handshake, on loopback with scripted nodes: what never reaches a
//! node (garbage, a `send_name` disguised as TLS, TLS where `dist.tls` denies it,
//! silence, names outside `allow_peers`), the deadlines that free a
//! slot (`first_frame_timeout`, `handshake_timeout`, `linger`), resets passed on as
//! resets, and metrics that stay bounded whatever callers claim to be. Bans and the
//! per-source limit need a source that is not loopback: `tests/it/pods/admission_pods.rs`.

use crate::support;
use std::time::Duration;

use crate::support::dist::client_hello;
use crate::support::*;
use distgate::handshake::frames::{challenge, status_ok};
use distgate::handshake::{OTP25_FLAGS, encode_send_name};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A distgate with admin and `tune` applied, and a fake node `app` registered.
async fn start(tune: impl FnOnce(&mut Options)) -> (InProcess, TcpListener, TcpStream) {
    let mut options = Options {
        admin: true,
        ..Options::default()
    };
    tune(&mut options);
    let dg = InProcess::start(options).await;
    let (node, registration) = fake_node(dg.epmd, "app").await;
    (dg, node, registration)
}

async fn metric(dg: &InProcess, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let (_, text) = http_get(dg.admin.unwrap(), "/metrics").await;
    sample(&text, name, labels)
}

/// Waits until `distgate_dist_handshakes_total{node="app",result}` is `want`.
async fn handshakes(dg: &InProcess, result: &str, want: f64) {
    let labels = [("node", "app"), ("result", result)];
    eventually(&format!("{want} handshakes counted {result}"), || async {
        let got = metric(dg, "distgate_dist_handshakes_total", &labels).await;
        (got == Some(want)).then_some(())
    })
    .await;
}

/// Nothing was forwarded to `node` (checked after the caller saw its close).
async fn nothing_reached(node: &TcpListener) {
    let accepted = tokio::time::timeout(Duration::ZERO, node.accept()).await;
    assert!(accepted.is_err(), "a connection reached the node");
}

#[tokio::test]
async fn garbage_is_closed_and_never_reaches_the_node() {
    let (dg, node, _registration) = start(|_| {}).await;
    for junk in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0, 0, 1, 2],
        &[0xff; 3000],
    ] {
        let mut client = TcpStream::connect(dg.public_addr(0)).await.unwrap();
        client.write_all(junk).await.unwrap();
        read_to_close(&mut client).await;
    }
    nothing_reached(&node).await;
    handshakes(&dg, "failed", 3.0).await;
}

#[tokio::test]
async fn a_silent_caller_frees_its_slot_at_first_frame_timeout() {
    let (dg, node, _registration) = start(|o| {
        o.config.dist.max_connections = 1.try_into().unwrap();
        o.config.dist.first_frame_timeout = Duration::from_millis(300);
        o.config.dist.handshake_timeout = Duration::from_millis(300);
    })
    .await;
    let mut silent = TcpStream::connect(dg.public_addr(0)).await.unwrap();
    let closed = tokio::time::timeout(DEADLINE, read_to_close(&mut silent)).await;
    assert!(closed.is_ok(), "the silent caller was never closed");
    nothing_reached(&node).await;
    handshakes(&dg, "timeout", 1.0).await;
    // Its slot (the only one) is free again: a real caller gets in.
    let (mut client, mut upstream) = support::dist::link(dg.public_addr(0), &node, "ok@h").await;
    client.write_all(b"in").await.unwrap();
    let mut got = [0u8; 2];
    upstream.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"in");
}

#[tokio::test]
async fn a_handshake_that_stalls_is_closed_at_handshake_timeout() {
    let (dg, node, _registration) = start(|o| {
        o.config.dist.first_frame_timeout = Duration::from_millis(300);
        o.config.dist.handshake_timeout = Duration::from_millis(600);
    })
    .await;
    let mut client = TcpStream::connect(dg.public_addr(0)).await.unwrap();
    client
        .write_all(&encode_send_name("slow@h", OTP25_FLAGS, 1))
        .await
        .unwrap();
    let (mut upstream, _) = node.accept().await.unwrap();
    // The node answers, and the caller never replies to the challenge.
    let mut answer = status_ok();
    answer.extend(challenge("app@127.0.0.1"));
    upstream.write_all(&answer).await.unwrap();
    let seen = read_to_close(&mut client).await;
    assert_eq!(
        seen, answer,
        "the caller saw the node's answer, then the close"
    );
    let at_node = tokio::time::timeout(DEADLINE, read_to_close(&mut upstream)).await;
    assert!(at_node.is_ok(), "the node's side stayed open");
    handshakes(&dg, "timeout", 1.0).await;
    assert_eq!(
        metric(&dg, "distgate_connections_open", &[("listener", "dist")]).await,
        Some(0.0)
    );
}

#[tokio::test]
async fn a_node_that_refuses_the_reply_ends_a_failed_handshake() {
    let (dg, node, _registration) = start(|_| {}).await;
    let mut client = TcpStream::connect(dg.public_addr(0)).await.unwrap();
    let send_name = encode_send_name("guess@h", OTP25_FLAGS, 1);
    client.write_all(&send_name).await.unwrap();
    let (mut upstream, _) = node.accept().await.unwrap();
    upstream
        .read_exact(&mut vec![0u8; send_name.len()])
        .await
        .unwrap();
    let mut answer = status_ok();
    answer.extend(challenge("app@127.0.0.1"));
    upstream.write_all(&answer).await.unwrap();
    let mut seen = vec![0u8; answer.len()];
    client.read_exact(&mut seen).await.unwrap();
    client
        .write_all(&distgate::handshake::frames::reply())
        .await
        .unwrap();
    // A wrong digest: an OTP node closes without an ack.
    let mut reply = vec![0u8; distgate::handshake::frames::reply().len()];
    upstream.read_exact(&mut reply).await.unwrap();
    drop(upstream);
    read_to_close(&mut client).await;
    handshakes(&dg, "failed", 1.0).await;
    // No link was ever counted: the caller never authenticated.
    let (_, text) = http_get(dg.admin.unwrap(), "/metrics").await;
    assert!(
        !text.contains("guess@h"),
        "an unauthenticated name in /metrics"
    );
}

/// The disguise: a `send_name` whose length is `16 03` (5,635 bytes, one frame to
/// OTP). It is no TLS record, so it is read as a handshake, closed as junk, counted
/// `failed` (towards a ban), and never reaches the node.
#[tokio::test]
async fn a_send_name_disguised_as_tls_never_reaches_the_node() {
    let (dg, node, _registration) = start(|_| {}).await;
    for _ in 0..3 {
        let mut frame = vec![0x16, 0x03];
        frame.extend_from_slice(&encode_send_name("evil@host", OTP25_FLAGS, 1)[2..]);
        frame.resize(2 + 0x1603, 0);
        let mut client = TcpStream::connect(dg.public_addr(0)).await.unwrap();
        client.write_all(&frame).await.unwrap();
        read_to_close(&mut client).await;
    }
    nothing_reached(&node).await;
    handshakes(&dg, "failed", 3.0).await;
}

/// `[dist] tls = "deny"`: a real ClientHello is closed and counted `tls_denied`; with
/// the default, `"passthrough"`, it reaches the node untouched.
#[tokio::test]
async fn tls_is_denied_or_passed_through_as_configured() {
    let (dg, node, _registration) =
        start(|o| o.config.dist.tls = distgate::config::Tls::Deny).await;
    let mut client = TcpStream::connect(dg.public_addr(0)).await.unwrap();
    client.write_all(&client_hello()).await.unwrap();
    read_to_close(&mut client).await;
    nothing_reached(&node).await;
    handshakes(&dg, "tls_denied", 1.0).await;

    let (dg, node, _registration) = start(|_| {}).await;
    let mut client = TcpStream::connect(dg.public_addr(0)).await.unwrap();
    let hello = client_hello();
    client.write_all(&hello).await.unwrap();
    let (mut upstream, _) = tokio::time::timeout(DEADLINE, node.accept())
        .await
        .expect("the ClientHello did not reach the node")
        .unwrap();
    let mut got = vec![0u8; hello.len()];
    upstream.read_exact(&mut got).await.unwrap();
    assert_eq!(got, hello);
}

/// Hanging up on the node's challenge has a budget: the node made an atom of the
/// claimed name each time. Past `[dist.ban] withdrawals` within `within` the source is
/// banned (loopback is not trusted here, to stand for another pod).
#[tokio::test]
async fn hang_ups_on_the_challenge_ban_at_their_budget() {
    let (dg, node, _registration) = start(|o| {
        o.config.dist.trusted = distgate::config::Peers::Only {
            local: false,
            nets: vec![],
        };
        o.config.dist.ban.withdrawals = 3;
    })
    .await;
    for attempt in 0..3 {
        let mut caller = TcpStream::connect(dg.public_addr(0)).await.unwrap();
        let name = format!("guess-{attempt}@host");
        caller
            .write_all(&encode_send_name(&name, OTP25_FLAGS, 1))
            .await
            .unwrap();
        let (mut upstream, _) = tokio::time::timeout(DEADLINE, node.accept())
            .await
            .expect("the send_name did not reach the node")
            .unwrap();
        let mut length = [0u8; 2];
        upstream.read_exact(&mut length).await.unwrap();
        let mut send_name = vec![0u8; usize::from(u16::from_be_bytes(length))];
        upstream.read_exact(&mut send_name).await.unwrap();
        let mut status_and_challenge = status_ok();
        status_and_challenge.extend(challenge("node@127.0.0.1"));
        upstream.write_all(&status_and_challenge).await.unwrap();
        let mut seen = vec![0u8; status_and_challenge.len()];
        caller.read_exact(&mut seen).await.unwrap();
        // The challenge is in: hang up.
        drop(caller);
        read_to_close(&mut upstream).await;
    }
    handshakes(&dg, "withdrawn", 3.0).await;
    let mut banned = TcpStream::connect(dg.public_addr(0)).await.unwrap();
    banned
        .write_all(&encode_send_name("guess-4@host", OTP25_FLAGS, 1))
        .await
        .unwrap();
    read_to_close(&mut banned).await;
    nothing_reached(&node).await;
    let refused = metric(
        &dg,
        "distgate_connections_refused_total",
        &[("listener", "dist"), ("reason", "banned")],
    )
    .await;
    assert_eq!(refused, Some(1.0));
    assert_eq!(
        metric(&dg, "distgate_dist_banned_sources", &[]).await,
        Some(1.0)
    );
}

#[tokio::test]
async fn callers_outside_allow_peers_never_reach_the_node() {
    let (dg, node, _registration) = start(|o| {
        let text = "[dist]\nallow_peers = [\"good-*@*.prod\"]";
        o.config.dist.allow_peers = distgate::config::parse(text).unwrap().dist.allow_peers;
    })
    .await;
    let mut evil = TcpStream::connect(dg.public_addr(0)).await.unwrap();
    evil.write_all(&encode_send_name("evil@h.prod", OTP25_FLAGS, 1))
        .await
        .unwrap();
    // Told as OTP tells it: the status `not_allowed`, then the close.
    assert_eq!(read_to_close(&mut evil).await, b"\x00\x0csnot_allowed");
    nothing_reached(&node).await;
    handshakes(&dg, "not_allowed", 1.0).await;
    let (mut good, mut upstream) =
        support::dist::link(dg.public_addr(0), &node, "good-1@a.prod").await;
    good.write_all(b"hi").await.unwrap();
    let mut got = [0u8; 2];
    upstream.read_exact(&mut got).await.unwrap();
    handshakes(&dg, "ok", 1.0).await;
}

/// A name `allow_peers` refuses is not held against its source (no node saw the name,
/// no cookie was checked): many refusals ban nobody. A release client (`rpc-*`)
/// calling from the pod itself gets in whatever `allow_peers` says.
#[tokio::test]
async fn refusals_by_allow_peers_ban_nobody_and_local_release_clients_get_in() {
    let (dg, node, _registration) = start(|o| {
        let text = "[dist]\nallow_peers = [\"good-*@*.prod\"]";
        o.config.dist.allow_peers = distgate::config::parse(text).unwrap().dist.allow_peers;
        o.config.dist.ban.failures = 2;
        // Not trusted: loopback stands for another pod's address, which bans apply to.
        o.config.dist.trusted = distgate::config::Peers::Only {
            local: false,
            nets: vec![],
        };
    })
    .await;
    for attempt in 0..5 {
        let mut evil = TcpStream::connect(dg.public_addr(0)).await.unwrap();
        let name = format!("evil-{attempt}@h.prod");
        evil.write_all(&encode_send_name(&name, OTP25_FLAGS, 1))
            .await
            .unwrap();
        assert_eq!(read_to_close(&mut evil).await, b"\x00\x0csnot_allowed");
    }
    handshakes(&dg, "not_allowed", 5.0).await;
    assert_eq!(
        metric(&dg, "distgate_dist_banned_sources", &[]).await,
        Some(0.0)
    );
    // Loopback is the pod itself: a release client of the app's is let in.
    let (mut rpc, mut upstream) =
        support::dist::link(dg.public_addr(0), &node, "rpc-1f2e-app@h.prod").await;
    rpc.write_all(b"hi").await.unwrap();
    let mut got = [0u8; 2];
    upstream.read_exact(&mut got).await.unwrap();
    handshakes(&dg, "ok", 1.0).await;
}

#[tokio::test]
async fn a_half_closed_link_is_closed_after_linger() {
    let (dg, node, _registration) =
        start(|o| o.config.dist.linger = Duration::from_millis(300)).await;
    let (mut client, mut upstream) = support::dist::link(dg.public_addr(0), &node, "peer@h").await;
    // The caller closes its side; the node never closes its own.
    client.shutdown().await.unwrap();
    assert_eq!(read_to_close(&mut upstream).await, b"");
    // Within linger distgate closes the node's side too (a write there fails) and the
    // caller's (its read ends).
    tokio::time::timeout(DEADLINE, read_to_close(&mut client))
        .await
        .expect("the caller's side stayed open");
    closed_by_peer(&upstream, "the node's side to be closed").await;
    let closed = [
        ("node", "app"),
        ("peer", "peer@h"),
        ("direction", "inbound"),
        ("reason", "linger"),
        ("closed_by", "distgate"),
    ];
    eventually("the close counted as linger", || async {
        let got = metric(&dg, "distgate_dist_connections_closed_total", &closed).await;
        (got == Some(1.0)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_reset_by_the_node_reaches_the_caller_as_a_reset() {
    let (dg, node, _registration) = start(|_| {}).await;
    let (mut client, upstream) = support::dist::link(dg.public_addr(0), &node, "peer@h").await;
    upstream.set_zero_linger().unwrap();
    drop(upstream);
    let mut sink = vec![];
    let read = tokio::time::timeout(DEADLINE, client.read_to_end(&mut sink))
        .await
        .expect("the caller's side stayed open");
    let error = read.expect_err("a clean close, not a reset");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn peer_labels_are_bounded_and_unauthenticated_names_never_appear() {
    let (dg, node, _registration) = start(|o| o.config.metrics.max_peers = 2).await;
    let mut links = vec![];
    for i in 0..4 {
        links.push(support::dist::link(dg.public_addr(0), &node, &format!("p{i}@h")).await);
    }
    // Many callers that never authenticate, each with a name of its own.
    for i in 0..200 {
        let mut client = TcpStream::connect(dg.public_addr(0)).await.unwrap();
        client
            .write_all(&encode_send_name(&format!("junk{i}@h"), OTP25_FLAGS, 1))
            .await
            .unwrap();
        let (upstream, _) = node.accept().await.unwrap();
        drop(upstream);
        read_to_close(&mut client).await;
    }
    handshakes(&dg, "failed", 200.0).await;
    let (_, text) = http_get(dg.admin.unwrap(), "/metrics").await;
    let active = |peer| {
        let labels = [("node", "app"), ("peer", peer), ("direction", "inbound")];
        sample(&text, "distgate_dist_connections_active", &labels)
    };
    assert_eq!(active("p0@h"), Some(1.0));
    assert_eq!(active("p1@h"), Some(1.0));
    assert_eq!(active("other"), Some(2.0), "{text}");
    assert!(!text.contains("p2@h") && !text.contains("junk"), "{text}");
}

/// A node makes an atom of a caller's name before it checks the cookie; callers
/// outside `allow_peers` are closed before the node sees a byte, so however many
/// names they claim, the node's atom table stays as it was.
#[test]
fn ten_thousand_names_outside_allow_peers_make_no_atom_on_the_node() {
    use crate::support::beam::{Output, REPL, Repl, erl, registered};
    if !require(&["erl"]) {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut options = Options::default();
    options.config.dist.allow_peers =
        distgate::config::parse("[dist]\nallow_peers = [\"friend@*\"]")
            .unwrap()
            .dist
            .allow_peers;
    let dg = rt.block_on(InProcess::start(options));
    let short = unique("atoms");
    let (mut node, stdin) = Output::spawn_interactive(
        "node",
        &mut erl(&format!("{short}@127.0.0.1"), dg.epmd.port(), REPL),
    );
    let mut repl = Repl::new(stdin);
    registered(&dg, &short);
    let mut atoms = || -> u64 {
        repl.ask(&mut node, "erlang:system_info(atom_count)")
            .parse()
            .unwrap()
    };
    // The shell's first answer loads the modules that print it: ask once first.
    atoms();
    let before = atoms();
    let public = dg.public_addr(0);
    rt.block_on(async {
        for i in 0..10_000 {
            let mut caller = TcpStream::connect(public).await.unwrap();
            let name = format!("junk-{i}-{}@127.0.0.1", unique("n"));
            caller
                .write_all(&encode_send_name(&name, OTP25_FLAGS, 1))
                .await
                .unwrap();
            read_to_close(&mut caller).await;
        }
    });
    let after = atoms();
    assert_eq!(
        after,
        before,
        "10,000 refused names made {} atoms",
        after - before
    );
}

/// 20,000 callers, each claiming a name of its own, none authenticating (the node
/// closes on each): distgate's memory and `/metrics` stay where they were. (Before
/// the handshake was followed, 8,000 such names grew RSS by 67 MB and `/metrics` to
/// 72.7 MB.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_claimed_names_leaves_memory_and_metrics_flat() {
    const CALLERS: usize = 20_000;
    const AT_ONCE: usize = 200;
    let running = support::binary::Running::start("");
    let pid = running.out.process.pid();
    // The node: takes each forwarded connection and closes it, as on a bad cookie.
    let (node, _registration) = fake_node(running.epmd, "app").await;
    tokio::spawn(async move {
        while let Ok((stream, _)) = node.accept().await {
            drop(stream);
        }
    });
    let wave = |first: usize| {
        let public = running.public;
        async move {
            let callers = (first..first + AT_ONCE).map(|i| {
                tokio::spawn(async move {
                    let mut caller = TcpStream::connect(public).await.unwrap();
                    let name = format!("flood-{i:05}-{}@10.0.{}.{}", i * 7919, i % 250, i % 199);
                    caller
                        .write_all(&encode_send_name(&name, OTP25_FLAGS, 1))
                        .await
                        .unwrap();
                    read_to_close(&mut caller).await;
                })
            });
            for caller in callers.collect::<Vec<_>>() {
                caller.await.unwrap();
            }
        }
    };
    // A first wave warms the allocator and the tables up.
    wave(0).await;
    let (_, rss_before) = usage(pid);
    let started = std::time::Instant::now();
    for first in (AT_ONCE..CALLERS).step_by(AT_ONCE) {
        wave(first).await;
    }
    let flood_took = started.elapsed();
    let (fds_after, rss_after) = usage(pid);
    let asked = std::time::Instant::now();
    let (status, text) = http_get(running.admin, "/metrics").await;
    let render = asked.elapsed();
    assert_eq!(status, 200);
    let failed = sample(
        &text,
        "distgate_dist_handshakes_total",
        &[("node", "app"), ("result", "failed")],
    );
    assert_eq!(failed, Some(CALLERS as f64));
    eprintln!(
        "{CALLERS} claimed names in {flood_took:?}: RSS {rss_before} -> {rss_after} KiB, \
         {fds_after} descriptors; /metrics {} bytes, fetched in {render:?}",
        text.len()
    );
    assert!(!text.contains("flood-"), "a claimed name reached /metrics");
    assert!(text.len() < 256 * 1024, "/metrics is {} bytes", text.len());
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
}

/// Series of a peer whose links closed leave `/metrics` after `[metrics]
/// idle_timeout`; those of a peer with an open link stay, however long it is idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_links_series_age_out_and_open_ones_stay() {
    let running = support::binary::Running::start("[metrics]\nidle_timeout = \"1s\"\n");
    let (node, _registration) = fake_node(running.epmd, "app").await;
    let (_stays, _stays_at_node) = support::dist::link(running.public, &node, "stays@h").await;
    let (goes, goes_at_node) = support::dist::link(running.public, &node, "goes@h").await;
    let active = |text: &str, peer| {
        let labels = [("node", "app"), ("peer", peer), ("direction", "inbound")];
        sample(text, "distgate_dist_connections_active", &labels)
    };
    let (_, text) = http_get(running.admin, "/metrics").await;
    assert_eq!(active(&text, "goes@h"), Some(1.0));
    drop((goes, goes_at_node));
    let started = std::time::Instant::now();
    let text = eventually("the closed link's series to age out", || async {
        let (_, text) = http_get(running.admin, "/metrics").await;
        (!text.contains("goes@h")).then_some(text)
    })
    .await;
    eprintln!("gone {:?} after the close", started.elapsed());
    // The open link has carried nothing for as long, and is still there.
    assert_eq!(active(&text, "stays@h"), Some(1.0), "{text}");
    let opened = [
        ("node", "app"),
        ("peer", "stays@h"),
        ("direction", "inbound"),
    ];
    assert_eq!(
        sample(&text, "distgate_dist_connections_opened_total", &opened),
        Some(1.0)
    );
}
