//! Faults: a node killed under a live link, a node re-registering on a new port while
//! its old streams drain, distgate itself killed and restarted under live OTP nodes,
//! and a gateway's upstream vanishing mid-stream. (DNS going away is in
//! `tests/it/beam/gateway.rs` and `tests/it/pods/gateway_pods.rs`; SIGTERM with streams in flight in
//! `tests/it/process/lifecycle.rs`.)
//!
//! Needs `erl`; with `CI=true` a missing one fails the tests that use it.

use crate::support;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::beam::{IDLE, Output, REPL, Repl, erl, node_deadline, with_node_b};
use crate::support::*;
use distgate::route::{Glob, Route, Template, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[test]
fn a_killed_node_is_seen_down_by_its_peer_at_once() {
    if !require(&["erl"]) {
        return;
    }
    let mut with_b = with_node_b(Options::default(), "fb", "127.0.0.1", &[]);
    let a_name = format!("{}@127.0.0.1", unique("fa"));
    let mut command = erl(&a_name, with_b.dg.epmd.port(), REPL);
    let (a, stdin) = Output::spawn_interactive("node a", &mut command);
    let mut a = a;
    let mut repl = Repl::new(stdin);
    let b = with_b.name.clone();
    assert_eq!(repl.ask(&mut a, &format!("net_adm:ping('{b}')")), "pong");
    assert_eq!(
        repl.ask(&mut a, &format!("erlang:monitor_node('{b}', true)")),
        "true"
    );
    // SIGKILL: the node's sockets close in the kernel, and distgate passes that on.
    // Without it, a would notice only when ticks go unanswered (up to a minute).
    let killed = Instant::now();
    with_b.b.process.child.kill().unwrap();
    let down = repl.ask(
        &mut a,
        "receive {nodedown, N} -> {down, N} after 30000 -> still_up end",
    );
    let noticed = killed.elapsed();
    assert_eq!(down, format!("{{down,'{b}'}}"));
    assert!(
        noticed < Duration::from_secs(10),
        "nodedown after {noticed:?}"
    );
    eprintln!("peer saw nodedown {noticed:?} after the node was killed");
    // The link's metrics record is closed: nothing active is left behind.
    with_b
        .rt
        .block_on(eventually("b's registration to end", || async {
            with_b
                .dg
                .registry
                .get(&with_b.short)
                .is_none()
                .then_some(())
        }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_re_registering_on_a_new_port_keeps_its_old_streams() {
    let sidecar = InProcess::start(Options::default()).await;
    let first = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (registration, _) = register(
        sidecar.epmd,
        &alive2("app", first.local_addr().unwrap().port()),
    )
    .await;
    let (mut old, mut at_first) =
        support::dist::link(sidecar.public_addr(0), &first, "peer@127.0.0.1").await;

    // The node restarts its listener on a new port and registers again.
    drop(registration);
    let second = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let again = eventually("the name to be free again", || {
        let port = second.local_addr().unwrap().port();
        async move {
            let (stream, reply) = register(sidecar.epmd, &alive2("app", port)).await;
            (reply.get(1) == Some(&0)).then_some(stream)
        }
    })
    .await;

    // The old stream still flows both ways, to the old listener.
    old.write_all(b"old-2").await.unwrap();
    let mut got = [0u8; 5];
    at_first.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"old-2");
    at_first.write_all(b"back").await.unwrap();
    let mut back = [0u8; 4];
    old.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"back");
    // A new connection goes to the new port.
    let (mut new, mut at_second) =
        support::dist::link(sidecar.public_addr(0), &second, "peer@127.0.0.1").await;
    new.write_all(b"new").await.unwrap();
    let mut got = [0u8; 3];
    at_second.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"new");
    drop(again);
}

/// The distgate binary on loopback ports: EPMD at `epmd`, public ports `dist`.
fn distgate_on(epmd: u16, dist: &[u16], dir: &std::path::Path) -> Output {
    let config = dir.join("distgate.toml");
    let ports: Vec<String> = dist.iter().map(u16::to_string).collect();
    std::fs::write(
        &config,
        format!(
            "[epmd]\nlisten = [\"127.0.0.1:{epmd}\"]\n[dist]\nlisten = [\"127.0.0.1\"]\nports = [{}]\n[admin]\nlisten = []\n",
            ports.join(", ")
        ),
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_distgate"));
    command
        .args(["--log-format", "json", "--config"])
        .arg(&config);
    let mut output = Output::spawn("distgate", &mut command);
    let listening = "\"public dist port listening\"";
    output.wait_line(listening, DEADLINE, |l| l.contains(listening));
    output
}

#[test]
fn live_nodes_register_again_when_distgate_restarts() {
    if !require(&["erl"]) {
        return;
    }
    let dir = std::env::temp_dir().join(unique("distgate-restart-"));
    std::fs::create_dir_all(&dir).unwrap();
    // A public port for each node, whichever registers first after the restart.
    let (epmd, dist) = (free_port(), [free_port(), free_port()]);
    let mut distgate = distgate_on(epmd, &dist, &dir);
    let b_short = unique("rb");
    let b = format!("{b_short}@127.0.0.1");
    let mut node_b = Output::spawn("node b", &mut erl(&b, epmd, IDLE));
    node_b.wait_for("READY", node_deadline());
    let a = format!("{}@127.0.0.1", unique("ra"));
    let (mut node_a, stdin) = Output::spawn_interactive("node a", &mut erl(&a, epmd, REPL));
    let mut repl = Repl::new(stdin);
    assert_eq!(
        repl.ask(&mut node_a, &format!("net_adm:ping('{b}')")),
        "pong"
    );

    // distgate dies (SIGKILL, no goodbye) and comes back on the same ports.
    distgate.process.child.kill().unwrap();
    distgate.wait_exit(DEADLINE);
    let restarted = Instant::now();
    let mut distgate = distgate_on(epmd, &dist, &dir);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let epmd_addr = loopback(epmd);
    rt.block_on(eventually("b to register again", || async {
        port_please(epmd_addr, &b_short).await
    }));
    let again_after = restarted.elapsed();
    eprintln!("node b registered again {again_after:?} after distgate restarted");
    assert!(
        distgate.text().contains(&format!("\"node\":\"{b_short}\"")),
        "{}",
        distgate.text()
    );
    // And the nodes reach each other through the new distgate.
    repl.until(
        &mut node_a,
        &format!("net_adm:ping('{b}')"),
        node_deadline(),
        |r| r == "pong",
    );
    assert_eq!(
        repl.ask(&mut node_a, &format!("rpc:call('{b}', erlang, node, [])")),
        format!("'{b}'")
    );
    let _ = distgate.wait_line("b's link", DEADLINE, |l| {
        l.contains("\"dist connection opened\"")
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_stream_ends_when_its_upstream_vanishes() {
    let dir = std::env::temp_dir().join(unique("distgate-vanish-"));
    std::fs::create_dir_all(&dir).unwrap();
    // The upstream: a distgate binary with a node registered behind it.
    let (epmd, dist) = (free_port(), free_port());
    let mut upstream = distgate_on(epmd, &[dist], &dir);
    let node = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (_registration, _) = register(
        loopback(epmd),
        &alive2("app-0", node.local_addr().unwrap().port()),
    )
    .await;
    // The gateway routes every app-* name to that upstream, by address.
    let mut options = Options::default();
    options.config.routes = vec![Route {
        epmd_port: epmd,
        ..Route::new(
            Glob::new("app-*").unwrap(),
            Upstream::Host(Template::new("127.0.0.1").unwrap()),
        )
    }];
    options.config.dist.linger = Duration::from_secs(1);
    options.admin = true;
    let gateway = InProcess::start(options).await;
    let leased = port_please(gateway.epmd, "app-0").await.expect("leased");
    let public = SocketAddr::from(([127, 0, 0, 1], leased));
    let (mut client, _at_node) = support::dist::link(public, &node, "peer@127.0.0.1").await;

    // The upstream distgate vanishes mid-stream: the client's stream ends promptly, and
    // the gateway closes the client's side too within `linger` (a client that only
    // saw EOF would hold the gateway's slot for as long as it kept its socket).
    upstream.process.child.kill().unwrap();
    upstream.wait_exit(DEADLINE);
    let vanished = Instant::now();
    let mut rest = vec![];
    let ended = tokio::time::timeout(DEADLINE, client.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the client's stream outlived its upstream");
    closed_by_peer(&client, "the gateway to close the client's side").await;
    let admin = gateway.admin.unwrap();
    eventually("the gateway's dist slot to be free", || async move {
        let (_, text) = http_get(admin, "/metrics").await;
        (sample(&text, "distgate_connections_open", &[("listener", "dist")]) == Some(0.0))
            .then_some(())
    })
    .await;
    eprintln!(
        "client stream ended and was closed {:?} after the upstream vanished",
        vanished.elapsed()
    );
    // The name is then "not found": its upstream EPMD is gone.
    assert_eq!(port_please(gateway.epmd, "app-0").await, None);
    let _ = std::fs::remove_dir_all(&dir);
}
