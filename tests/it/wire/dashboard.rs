//! The Grafana dashboard under deploy/ queries only metrics distgate exports: every
//! name is one of `distgate::metrics::ALL`, and shows up on a live `/metrics`.

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
        for target in panel["targets"].as_array().unwrap() {
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

#[test]
fn every_queried_metric_is_defined() {
    let names = queried();
    assert!(names.len() >= 10, "{names:?}");
    for name in &names {
        assert!(
            distgate::metrics::ALL.contains(&base(name)),
            "the dashboard queries {name}, which distgate does not define"
        );
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

    let names = queried();
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
