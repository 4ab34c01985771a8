//! Links you can see: the admin port's `/links` and `/nodes`, `distgate links` and
//! `distgate nodes` reading them, seconds since the last byte that grow on a paused
//! link and reset on traffic, silence reported after `[dist] silent_after` (here on
//! loopback, and in `two_pods.rs`-style namespaces for a real partition), and the
//! access log line saying who closed a link.

use crate::support;
use std::process::Command;
use std::time::Duration;

use crate::support::binary::Running;
use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `/links` as JSON.
async fn links(running: &Running) -> Vec<serde_json::Value> {
    let (status, body) = http_get(running.admin, "/links").await;
    assert_eq!(status, 200, "{body}");
    let value: serde_json::Value = serde_json::from_str(&body).unwrap();
    value["links"].as_array().unwrap().clone()
}

/// The access log line of the (one) link that closed.
fn closed_line(running: &mut Running) -> String {
    running.out.wait_line("the access log line", DEADLINE, |l| {
        l.contains("\"dist connection closed\"")
    })
}

/// What `distgate <command> --admin` prints.
fn cli(command: &str, running: &Running) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_distgate"))
        .args([command, "--admin", &running.admin.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_show_who_talks_and_how_long_each_way_has_been_quiet() {
    let mut running = Running::start_with("silent_after = \"1s\"", "");
    let (node, _registration) = fake_node(running.epmd, "app").await;
    let (mut client, mut at_node) =
        support::dist::link(running.public, &node, "peer@127.0.0.1").await;

    let listed = links(&running).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let link = &listed[0];
    assert_eq!(link["node"], "app");
    assert_eq!(link["peer"], "peer@127.0.0.1");
    assert_eq!(link["handshake"], "ok");
    assert_eq!(link["source"], client.local_addr().unwrap().to_string());
    assert_eq!(link["public_port"], running.public.port());
    let handshake_bytes = link["bytes_from_peer"].as_u64().unwrap();

    // Paused: the seconds since the last byte grow; past silent_after it is silent.
    let idle = eventually("the link to sit idle for 1.5 s", || async {
        let link = &links(&running).await[0];
        let idle = link["idle_from_peer"].as_f64().unwrap();
        (idle >= 1.5).then_some(idle)
    })
    .await;
    running.out.wait_line("the silence logged", DEADLINE, |l| {
        l.contains("\"dist link silent") && l.contains("\"way\":\"from_peer\"")
    });
    let metrics = http_get(running.admin, "/metrics").await.1;
    assert_eq!(
        sample(
            &metrics,
            "distgate_dist_silent_links",
            &[("way", "from_peer")]
        ),
        Some(1.0),
        "{metrics}"
    );

    // Traffic: the count resets, the bytes grow, the link speaks again.
    client.write_all(b"tick").await.unwrap();
    let mut got = [0u8; 4];
    at_node.read_exact(&mut got).await.unwrap();
    let link = &links(&running).await[0];
    assert!(
        link["idle_from_peer"].as_f64().unwrap() < idle,
        "{link} after {idle} s idle"
    );
    assert_eq!(
        link["bytes_from_peer"].as_u64().unwrap(),
        handshake_bytes + 4
    );
    running
        .out
        .wait_line("the link speaking again", DEADLINE, |l| {
            l.contains("\"dist link speaks again\"") && l.contains("\"way\":\"from_peer\"")
        });

    // The same as tables, for people.
    let table = cli("links", &running);
    assert!(table.starts_with("NODE"), "{table}");
    assert!(table.lines().next().unwrap().contains(" PORT "), "{table}");
    assert!(
        table.contains(&format!(" {} ", running.public.port())),
        "{table}"
    );
    assert!(
        table.contains("app") && table.contains("peer@127.0.0.1"),
        "{table}"
    );
    let table = cli("nodes", &running);
    assert!(table.contains("app") && table.contains("normal"), "{table}");

    // The peer closes: the access log says so, the link leaves the table.
    drop(client);
    let mut rest = vec![];
    at_node.read_to_end(&mut rest).await.unwrap();
    drop(at_node);
    let closed = closed_line(&mut running);
    assert!(closed.contains("\"closed_by\":\"peer\""), "{closed}");
    assert!(closed.contains("\"reason\":\"closed\""), "{closed}");
    assert!(closed.contains("\"source\":\"127.0.0.1:"), "{closed}");
    eventually("the link to leave /links", || async {
        links(&running).await.is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_the_node_ends_is_logged_as_closed_by_the_node() {
    let mut running = Running::start("");
    let (node, _registration) = fake_node(running.epmd, "app").await;
    let (mut client, at_node) = support::dist::link(running.public, &node, "peer@127.0.0.1").await;
    drop(at_node);
    let mut rest = vec![];
    client.read_to_end(&mut rest).await.unwrap();
    drop(client);
    let closed = closed_line(&mut running);
    assert!(closed.contains("\"closed_by\":\"node\""), "{closed}");
    let metrics = http_get(running.admin, "/metrics").await.1;
    let labels = [
        ("node", "app"),
        ("peer", "peer@127.0.0.1"),
        ("direction", "inbound"),
        ("reason", "closed"),
        ("closed_by", "node"),
    ];
    assert_eq!(
        sample(&metrics, "distgate_dist_connections_closed_total", &labels),
        Some(1.0),
        "{metrics}"
    );
}

#[test]
fn the_cli_says_when_the_admin_port_cannot_be_read() {
    let port = free_port();
    let out = Command::new(env!("CARGO_BIN_EXE_distgate"))
        .args([
            "links",
            "--admin",
            &format!("127.0.0.1:{port}"),
            "--timeout",
            "2s",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the admin port"), "{err}");
}

#[test]
fn a_peer_cut_off_by_the_network_is_reported_silent_before_its_node_gives_up() {
    use crate::support::beam::{IDLE, node_deadline};
    use crate::support::netns::{Pods, admin_in};
    if !require(&["erl", "ip", "nft"]) || !require_root() {
        return;
    }
    let mut pods = Pods::two(&unique("dgl"));
    let dir = std::env::temp_dir().join(unique("distgate-silent-"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("a.toml");
    std::fs::write(&config, "[dist]\nsilent_after = \"4s\"\n").unwrap();
    // Ticks every 2 s (net_ticktime 8): a live link is never 4 s quiet, and a node
    // gives a silent peer up only after 8 to 10 s.
    let ticktime = ["-kernel", "net_ticktime", "8"];
    let dg = pods.distgate(0, "distgate a", Some(&config));
    let a = format!("a@{}", pods.pods[0].host);
    let mut erl = pods.erl(0, &a, IDLE);
    erl.args(ticktime);
    let node = pods.spawn("node a", &mut erl);
    pods.output(node).wait_for("READY", node_deadline());
    pods.distgate(1, "distgate b", None);
    let mut shell = pods.shell_with(1, &format!("b@{}", pods.pods[1].host), &ticktime);
    assert_eq!(
        pods.ask(&mut shell, &format!("net_adm:ping('{a}')")),
        "pong"
    );
    let ns = pods.pods[0].ns.clone();
    let links = admin_in(&ns, "/links");
    assert!(links.contains("\"peer\":\"b@"), "{links}");

    // Pod b is cut off from pod a: every packet between them dropped, in pod b.
    let a_ip = pods.pods[0].ip.clone();
    let cut = format!(
        "table inet cut {{\n  chain in {{\n    type filter hook input priority -10;\n    \
         ip saddr {a_ip} drop\n  }}\n  chain out {{\n    type filter hook output priority -10;\n    \
         ip daddr {a_ip} drop\n  }}\n}}\n"
    );
    pods.firewall(1, &cut);
    let cut_at = std::time::Instant::now();
    let line = pods
        .output(dg)
        .wait_line("the silence logged", node_deadline(), |l| {
            l.contains("dist link silent")
        });
    let after = cut_at.elapsed();
    assert!(line.contains("b@") && line.contains("from_peer"), "{line}");
    // The last tick came up to 2 s before the cut, and the sweep runs every second.
    assert!(
        after >= Duration::from_secs(1) && after < Duration::from_secs(6),
        "silent {after:?} after the cut"
    );
    let metrics = admin_in(&ns, "/metrics");
    assert!(
        metrics.contains("distgate_dist_silent_links{way=\"from_peer\"} 1"),
        "{metrics}"
    );
    eprintln!(
        "a link cut off was reported silent {after:?} after the cut (silent_after 4 s, net_ticktime 8 s)"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
