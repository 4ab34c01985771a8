//! The Grafana dashboard under deploy/ queries only metrics distgate exports: every
//! name is one of `distgate::metrics::ALL`, and shows up on a live `/metrics`. The
//! Federation row's series need a peer gateway to appear (docs/federation.md).

use crate::support;
use std::collections::BTreeSet;

use crate::support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// Every `distgate_*` series name in the dashboard's queries.
fn queried() -> BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/distgate.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut names = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        // Rows have no targets.
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            for (at, _) in expr.match_indices("distgate_") {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                names.insert(name);
            }
        }
    }
    names
}

fn base(series: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| series.strip_suffix(suffix))
        .filter(|b| *b == distgate::metrics::DIST_DURATION)
        .unwrap_or(series)
}

/// The federation metrics as docs/federation.md ("Metrics") names them, which the
/// dashboard's Federation row queries. Until the federation code defines them, they
/// stand in for `distgate::metrics::ALL`; once it defines any, ALL must hold them all.
const FEDERATION: &[&str] = &[
    "distgate_federation_links_open",
    "distgate_federation_handshakes_total",
    "distgate_federation_lookups_total",
    "distgate_federation_received_bytes_total",
    "distgate_federation_sent_bytes_total",
    "distgate_federation_peer_up",
    "distgate_federation_certificate_reloads_total",
    "distgate_federation_certificate_expiry_seconds",
];

fn is_federation(name: &str) -> bool {
    name.starts_with("distgate_federation_")
}

#[test]
fn every_queried_metric_is_defined() {
    let names = queried();
    assert!(names.len() >= 10, "{names:?}");
    let landed = distgate::metrics::ALL.iter().any(|n| is_federation(n));
    for name in &names {
        let defined = distgate::metrics::ALL.contains(&base(name))
            || (!landed && FEDERATION.contains(&name.as_str()));
        assert!(
            defined,
            "the dashboard queries {name}, which distgate does not define"
        );
    }
    // The Federation row shows every federation metric.
    for name in FEDERATION {
        assert!(names.contains(*name), "the dashboard does not show {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_queried_metric_is_exported() {
    // A route to an EPMD nobody answers, for the gateway panels.
    let route = format!(
        "[[route]]\nnodes = \"far*\"\nupstream = \"127.0.0.1\"\nepmd_port = {}\n",
        free_port()
    );
    let dg = InProcess::start(Options {
        admin: true,
        pool: 2,
        config: distgate::config::parse(&route).unwrap(),
        ..Options::default()
    })
    .await;
    // Traffic that touches every metric: a link that opens and closes, a duplicate
    // registration, a node whose port is gone, a routed lookup.
    assert_eq!(port_please(dg.epmd, "far1").await, None);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = unique("dash");
    let (_registration, _) = register(
        dg.epmd,
        &alive2(&node, listener.local_addr().unwrap().port()),
    )
    .await;
    let (_dup, _) = register(dg.epmd, &alive2(&node, 1)).await;
    let (mut client, mut upstream) =
        support::dist::link(dg.public_addr(0), &listener, "peer@127.0.0.1").await;
    client.shutdown().await.unwrap();
    read_to_close(&mut upstream).await;
    drop(upstream);
    read_to_close(&mut client).await;
    let (_gone, _) = register(dg.epmd, &alive2(&unique("gone"), free_port())).await;
    let mut failed = TcpStream::connect(dg.public_addr(1)).await.unwrap();
    let send_name = distgate::handshake::encode_send_name("peer@127.0.0.1", 0, 0);
    failed.write_all(&send_name).await.unwrap();
    read_to_close(&mut failed).await;

    // The federation series appear only once a peer gateway is configured.
    let names: BTreeSet<String> = queried()
        .into_iter()
        .filter(|n| !is_federation(n))
        .collect();
    let text = eventually("every queried metric on /metrics", || {
        let (dg, names) = (&dg, &names);
        async move {
            let (_, text) = http_get(dg.admin.unwrap(), "/metrics").await;
            let exported = |name: &String| {
                text.lines().any(|l| {
                    l.starts_with(name.as_str()) && l[name.len()..].starts_with(['{', ' '])
                })
            };
            names.iter().all(exported).then_some(text)
        }
    })
    .await;
    assert!(text.contains("distgate_dist_connections_closed_total"));
}
