//! A gateway in front of three pods, in network namespaces joined by a bridge in a
//! "switch" namespace: each pod runs a distgate sidecar and a real node, the gateway a
//! distgate with a discovery route over a real DNS server (dnsmasq, A and SRV records
//! for the made-up domain `cluster.test`), and a node in an "outside" namespace reaches
//! the pods' nodes through the gateway only (the pods' firewalls let in nothing else).
//! A pod that goes away leaves the gateway's NAMES and answers "not found"; a node
//! that moves to a new pod is reached there; with DNS down, established streams and
//! the last good answers stay.
//!
//! Needs root, `ip`, `nft`, `erl` and `dnsmasq`; with `CI=true` a missing one fails.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic on what it did not expect

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::beam::{IDLE, Output, REPL, Repl, node_deadline};
use common::netns::{Pods, service_rules};
use common::*;

const GATEWAY_IP: &str = "198.18.0.1";
const OUTSIDE_IP: &str = "198.18.0.2";
/// The TTL dnsmasq gives its records, in seconds.
const TTL: u64 = 2;

fn node_name(app: &str) -> String {
    format!("{app}@{app}.app.cluster.test")
}

/// The headless Service's records: the pods' addresses, as a hosts file for dnsmasq.
fn service_hosts(pods: &[&str]) -> String {
    pods.iter()
        .map(|ip| format!("{ip} app.cluster.test\n"))
        .collect()
}

/// Starts a pod: its sidecar (NAMES allowed to the gateway) and node `app`, with the
/// environment variable POD telling where it runs.
fn start_pod(pods: &mut Pods, pod: usize, app: &str, config: &std::path::Path) -> [usize; 2] {
    let dg = pods.distgate(pod, &format!("distgate in pod {pod}"), Some(config));
    let mut erl = pods.erl(pod, &node_name(app), IDLE);
    erl.env("POD", pods.pods[pod].ns.clone())
        .args(["-connect_all", "false"]);
    let node = pods.spawn(&format!("{app} in pod {pod}"), &mut erl);
    pods.output(node).wait_for("READY", node_deadline());
    [dg, node]
}

#[test]
fn pods_discovered_by_a_records_are_reached_through_the_gateway_only() {
    scenario("discover = \"app.cluster.test\"\nrecords = \"a\"");
}

#[test]
fn pods_discovered_by_srv_records_are_reached_through_the_gateway_only() {
    scenario("discover = \"_tcp-epmd._tcp.app.cluster.test\"\nrecords = \"srv\"");
}

/// The whole story, with the gateway's route finding the pods by `discover`.
fn scenario(discover: &str) {
    if !require(&["erl", "ip", "nft", "dnsmasq"]) || !require_root() {
        return;
    }
    let id = unique("dgw");
    let dir = std::env::temp_dir().join(unique("distgate-gateway-pods-"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut pods = Pods::switched(&id);
    let local = "127.0.0.1 localhost\n::1 localhost\n";
    let gateway = pods.join("gw", GATEWAY_IP, local);
    let apps = ["app-0", "app-1", "app-2"];
    let outside_hosts: String = apps
        .iter()
        .map(|app| format!("{GATEWAY_IP} {app}.app.cluster.test\n"))
        .chain([format!("{OUTSIDE_IP} out.cluster.test\n")])
        .collect();
    let outside = pods.join("out", OUTSIDE_IP, &format!("{local}{outside_hosts}"));
    let pod_ips = ["198.18.0.11", "198.18.0.12", "198.18.0.13", "198.18.0.14"];
    let mut pod = vec![];
    for (i, ip) in pod_ips.iter().enumerate() {
        // The fourth pod is where app-1 moves later.
        let app = if i == 3 { "app-1" } else { apps[i] };
        let hosts = format!("{local}{ip} {app}.app.cluster.test\n");
        let index = pods.join(&format!("p{i}"), ip, &hosts);
        pods.firewall(index, &service_rules("43691", Some(GATEWAY_IP)));
        pod.push(index);
    }
    // The gateway's Service: EPMD and its pool of public ports; a pod takes EPMD and
    // dist connections from the gateway alone.
    pods.firewall(gateway, &service_rules("43691-43699", None));

    // DNS in the gateway's namespace: the Service's A records from a hosts file that
    // the test rewrites (dnsmasq rereads it on SIGHUP), and an SRV record whose target
    // is the Service name, so it follows the same file.
    let service = dir.join("service.hosts");
    std::fs::write(&service, service_hosts(&pod_ips[..3])).unwrap();
    let mut dnsmasq = pods.command(gateway, "dnsmasq");
    dnsmasq
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--port=53",
            "--pid-file=",
            "--user=root",
            "--local=/cluster.test/",
            &format!("--local-ttl={TTL}"),
        ])
        .arg(format!("--addn-hosts={}", service.display()))
        .args(common::dnsmasq::args(
            &[],
            &[("_tcp-epmd._tcp.app.cluster.test", "app.cluster.test", 4369)],
        ));
    let dns = pods.spawn("dnsmasq", &mut dnsmasq);

    let gateway_config = dir.join("gateway.toml");
    std::fs::write(
        &gateway_config,
        format!(
            r#"
[epmd]
names_from = "any"
[dist]
ports = ["43691-43699"]
[admin]
listen = []
[[route]]
nodes = "app-*"
{discover}
[dns]
nameservers = ["127.0.0.1:53"]
min_ttl = "1s"
timeout = "500ms"
"#
        ),
    )
    .unwrap();
    let mut gw = pods.command(gateway, env!("CARGO_BIN_EXE_distgate"));
    gw.args(["--log-format", "json", "--config"])
        .arg(&gateway_config);
    let gw = pods.spawn("gateway", &mut gw);

    let sidecar_config = dir.join("sidecar.toml");
    std::fs::write(
        &sidecar_config,
        format!("[epmd]\nnames_from = [\"local\", \"{GATEWAY_IP}/32\"]\n"),
    )
    .unwrap();
    let mut running = vec![];
    for (i, app) in apps.iter().enumerate() {
        running.push(start_pod(&mut pods, pod[i], app, &sidecar_config));
    }

    // The outside: a node registered with a distgate of its own, driven from here.
    pods.distgate(outside, "distgate outside", None);
    let mut out = pods.erl(outside, "out@out.cluster.test", REPL);
    // The pods' nodes cannot reach each other (only the gateway may dial them): no
    // full mesh, so global does not cut links it cannot complete.
    out.args(["-connect_all", "false"]);
    let (node, stdin) = Output::spawn_interactive("outside node", &mut out);
    let out = pods.adopt(node);
    let mut repl = Repl::new(stdin);
    let names = format!(
        "case net_adm:names(\"{GATEWAY_IP}\") of {{ok, L}} -> lists:sort([N || {{N, _}} <- L]); E -> E end"
    );
    let listed = |apps: &[&str]| {
        let quoted: Vec<String> = apps.iter().map(|a| format!("\"{a}\"")).collect();
        format!("[{}]", quoted.join(","))
    };

    // Every pod's node is discovered and reached from outside through the gateway.
    let all = listed(&apps);
    repl.until(pods.output(out), &names, node_deadline(), |r| r == all);
    for app in apps {
        let node = node_name(app);
        assert_eq!(
            repl.ask(pods.output(out), &format!("net_adm:ping('{node}')")),
            "pong",
            "{app}"
        );
        assert_eq!(
            repl.ask(
                pods.output(out),
                &format!("rpc:call('{node}', erlang, node, [])")
            ),
            format!("'{node}'")
        );
    }
    // ...and through the gateway only: the pods' own ports are closed to the outside.
    for port in [4369, 43691] {
        assert_eq!(
            repl.ask(
                pods.output(out),
                &format!("gen_tcp:connect({{198,18,0,11}}, {port}, [], 1000)")
            ),
            "{error,timeout}",
            "pod port {port} reachable from outside"
        );
    }

    // Pod 2 goes away: its processes end and it leaves the Service's records.
    let [dg2, node2] = running[2];
    pods.stop(node2);
    pods.stop(dg2);
    std::fs::write(&service, service_hosts(&pod_ips[..2])).unwrap();
    hangup(pods.output(dns).process.pid());
    let gone = Instant::now();
    repl.until(pods.output(out), &names, node_deadline(), |r| {
        r == listed(&apps[..2])
    });
    let dropped_after = gone.elapsed();
    assert_eq!(
        repl.ask(
            pods.output(out),
            "erl_epmd:port_please(\"app-2\", {198,18,0,1})"
        ),
        "noport"
    );
    assert_eq!(
        repl.ask(
            pods.output(out),
            &format!("net_adm:ping('{}')", node_name("app-2"))
        ),
        "pang"
    );
    assert!(
        dropped_after < Duration::from_secs(TTL + 3),
        "app-2 left NAMES only after {dropped_after:?} (TTL {TTL} s)"
    );
    eprintln!("app-2 left the gateway's NAMES {dropped_after:?} after its pod left DNS");

    // app-1 moves: pod 1 goes away, pod 3 starts app-1 and takes pod 1's place in DNS.
    let [dg1, node1] = running[1];
    pods.stop(node1);
    pods.stop(dg1);
    std::fs::write(&service, service_hosts(&[pod_ips[0], pod_ips[3]])).unwrap();
    hangup(pods.output(dns).process.pid());
    let _moved = start_pod(&mut pods, pod[3], "app-1", &sidecar_config);
    let where_app1 = format!("rpc:call('{}', os, getenv, [\"POD\"])", node_name("app-1"));
    let new_home = format!("\"{}\"", pods.pods[pod[3]].ns);
    repl.until(pods.output(out), &where_app1, node_deadline(), |r| {
        r == new_home
    });
    let moved_line = pods.output(gw).wait_line("the move logged", DEADLINE, |l| {
        l.contains("\"discovered name\"") && l.contains("198.18.0.14")
            || l.contains("\"discovered name moved\"")
    });
    assert!(moved_line.contains("app-1"), "{moved_line}");

    // DNS goes away. The established link to app-0 stays, and the last good table
    // still answers: NAMES, and a new connection after the old one is dropped.
    let app0 = node_name("app-0");
    assert_eq!(
        repl.ask(
            pods.output(out),
            &format!("lists:member('{app0}', nodes())")
        ),
        "true"
    );
    pods.stop(dns);
    // Two refreshes fail and keep the table.
    let failed = |text: &str| {
        text.lines()
            .filter(|l| l.contains("discovery: DNS lookup failed") && l.contains("\"kept\":true"))
            .count()
    };
    let start = Instant::now();
    while failed(&pods.output(gw).text()) < 2 {
        assert!(
            start.elapsed() < node_deadline(),
            "no two failed lookups:\n{}",
            pods.output(gw).text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        repl.ask(
            pods.output(out),
            &format!("lists:member('{app0}', nodes())")
        ),
        "true",
        "the established link was dropped with DNS down"
    );
    assert_eq!(
        repl.ask(
            pods.output(out),
            &format!("rpc:call('{app0}', erlang, node, [])")
        ),
        format!("'{app0}'")
    );
    assert_eq!(
        repl.ask(pods.output(out), &names),
        listed(&["app-0", "app-1"])
    );
    assert_eq!(
        repl.ask(
            pods.output(out),
            &format!("erlang:disconnect_node('{app0}')")
        ),
        "true"
    );
    assert_eq!(
        repl.ask(pods.output(out), &format!("net_adm:ping('{app0}')")),
        "pong"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGHUP to a process this test started (dnsmasq rereads its hosts files).
fn hangup(pid: u32) {
    let status = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
