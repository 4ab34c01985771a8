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

use crate::support;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::beam::{IDLE, node_deadline};
use crate::support::netns::{Pods, Shell, service_rules};
use crate::support::*;

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
    let mut world = World::start(discover);
    world.every_pod_is_reached_through_the_gateway_only();
    world.a_pod_that_leaves_dns_is_gone();
    world.a_node_that_moves_is_reached_at_its_new_pod();
    world.with_dns_down_links_and_last_answers_stay();
}

/// The namespaces, the processes in them, and the outside node's shell.
struct World {
    pods: Pods,
    dir: std::path::PathBuf,
    /// The hosts file dnsmasq serves the Service's A records from.
    service: std::path::PathBuf,
    /// Namespace indices of the four pods.
    pod: Vec<usize>,
    /// Process indices of dnsmasq and the gateway.
    dns: usize,
    gw: usize,
    /// Process indices of each running pod's sidecar and node.
    running: Vec<[usize; 2]>,
    sidecar_config: std::path::PathBuf,
    /// The outside node's shell.
    shell: Shell,
}

const APPS: [&str; 3] = ["app-0", "app-1", "app-2"];
const POD_IPS: [&str; 4] = ["198.18.0.11", "198.18.0.12", "198.18.0.13", "198.18.0.14"];
const LOCAL_HOSTS: &str = "127.0.0.1 localhost\n::1 localhost\n";

impl World {
    /// The switch and every namespace, DNS, the gateway, three pods and the outside node.
    fn start(discover: &str) -> World {
        let id = unique("dgw");
        let dir = std::env::temp_dir().join(unique("distgate-gateway-pods-"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut pods = Pods::switched(&id);
        let gateway = pods.join("gw", GATEWAY_IP, LOCAL_HOSTS);
        let outside_hosts: String = APPS
            .iter()
            .map(|app| format!("{GATEWAY_IP} {app}.app.cluster.test\n"))
            .chain([format!("{OUTSIDE_IP} out.cluster.test\n")])
            .collect();
        let outside = pods.join("out", OUTSIDE_IP, &format!("{LOCAL_HOSTS}{outside_hosts}"));
        let mut pod = vec![];
        for (i, ip) in POD_IPS.iter().enumerate() {
            // The fourth pod is where app-1 moves later.
            let app = if i == 3 { "app-1" } else { APPS[i] };
            let hosts = format!("{LOCAL_HOSTS}{ip} {app}.app.cluster.test\n");
            let index = pods.join(&format!("p{i}"), ip, &hosts);
            pods.firewall(index, &service_rules("43691", Some(GATEWAY_IP)));
            pod.push(index);
        }
        // The gateway's Service: EPMD and its pool of public ports; a pod takes EPMD and
        // dist connections from the gateway alone.
        pods.firewall(gateway, &service_rules("43691-43699", None));
        let service = dir.join("service.hosts");
        std::fs::write(&service, service_hosts(&POD_IPS[..3])).unwrap();
        let dns = start_dns(&mut pods, gateway, &service);
        let gw = start_gateway(&mut pods, gateway, &dir, discover);
        let sidecar_config = dir.join("sidecar.toml");
        std::fs::write(
            &sidecar_config,
            format!("[epmd]\nnames_from = [\"local\", \"{GATEWAY_IP}/32\"]\n"),
        )
        .unwrap();
        let running = (APPS.iter().enumerate())
            .map(|(i, app)| start_pod(&mut pods, pod[i], app, &sidecar_config))
            .collect();
        // The outside: a node registered with a distgate of its own, driven from here.
        // The pods' nodes cannot reach each other (only the gateway may dial them).
        pods.distgate(outside, "distgate outside", None);
        let shell = pods.shell(outside, "out@out.cluster.test");
        World {
            pods,
            dir,
            service,
            pod,
            dns,
            gw,
            running,
            sidecar_config,
            shell,
        }
    }

    /// What the outside node's shell answers to `expr`.
    fn ask(&mut self, expr: &str) -> String {
        self.pods.ask(&mut self.shell, expr)
    }

    /// Asks `expr` until the answer is `want`.
    fn until(&mut self, expr: &str, want: &str) {
        self.pods.ask_until(&mut self.shell, expr, |r| r == want);
    }

    /// The names the gateway's NAMES lists, sorted, as the shell prints them.
    fn names_expr() -> String {
        format!(
            "case net_adm:names(\"{GATEWAY_IP}\") of {{ok, L}} -> lists:sort([N || {{N, _}} <- L]); E -> E end"
        )
    }

    /// New A records for the Service, reread by dnsmasq.
    fn serve_pods(&mut self, ips: &[&str]) {
        std::fs::write(&self.service, service_hosts(ips)).unwrap();
        hangup(self.pods.output(self.dns).process.pid());
    }

    fn stop_pod(&mut self, index: usize) {
        let [dg, node] = self.running[index];
        self.pods.stop(node);
        self.pods.stop(dg);
    }

    fn every_pod_is_reached_through_the_gateway_only(&mut self) {
        self.until(&Self::names_expr(), &listed(&APPS));
        for app in APPS {
            let node = node_name(app);
            assert_eq!(
                self.ask(&format!("net_adm:ping('{node}')")),
                "pong",
                "{app}"
            );
            let rpc = format!("rpc:call('{node}', erlang, node, [])");
            assert_eq!(self.ask(&rpc), format!("'{node}'"));
        }
        // The pods' own ports are closed to the outside.
        for port in [4369, 43691] {
            let connect = format!("gen_tcp:connect({{198,18,0,11}}, {port}, [], 1000)");
            assert_eq!(
                self.ask(&connect),
                "{error,timeout}",
                "pod port {port} reachable from outside"
            );
        }
    }

    /// Pod 2 goes away: its processes end and it leaves the Service's records.
    fn a_pod_that_leaves_dns_is_gone(&mut self) {
        self.stop_pod(2);
        self.serve_pods(&POD_IPS[..2]);
        let gone = Instant::now();
        self.until(&Self::names_expr(), &listed(&APPS[..2]));
        let dropped_after = gone.elapsed();
        let lookup = "erl_epmd:port_please(\"app-2\", {198,18,0,1})";
        assert_eq!(self.ask(lookup), "noport");
        let ping = format!("net_adm:ping('{}')", node_name("app-2"));
        assert_eq!(self.ask(&ping), "pang");
        assert!(
            dropped_after < Duration::from_secs(TTL + 3),
            "app-2 left NAMES only after {dropped_after:?} (TTL {TTL} s)"
        );
        eprintln!("app-2 left the gateway's NAMES {dropped_after:?} after its pod left DNS");
    }

    /// Pod 1 goes away, pod 3 starts app-1 and takes pod 1's place in DNS.
    fn a_node_that_moves_is_reached_at_its_new_pod(&mut self) {
        self.stop_pod(1);
        self.serve_pods(&[POD_IPS[0], POD_IPS[3]]);
        let (pod, config) = (self.pod[3], self.sidecar_config.clone());
        self.running
            .push(start_pod(&mut self.pods, pod, "app-1", &config));
        let where_app1 = format!("rpc:call('{}', os, getenv, [\"POD\"])", node_name("app-1"));
        let new_home = format!("\"{}\"", self.pods.pods[pod].ns);
        self.until(&where_app1, &new_home);
        let moved_line = self
            .pods
            .output(self.gw)
            .wait_line("the move logged", DEADLINE, |l| {
                l.contains("\"discovered name\"") && l.contains("198.18.0.14")
                    || l.contains("\"discovered name moved\"")
            });
        assert!(moved_line.contains("app-1"), "{moved_line}");
    }

    /// DNS goes away. The established link to app-0 stays, and the last good table
    /// still answers: NAMES, and a new connection after the old one is dropped.
    fn with_dns_down_links_and_last_answers_stay(&mut self) {
        let app0 = node_name("app-0");
        let linked = format!("lists:member('{app0}', nodes())");
        assert_eq!(self.ask(&linked), "true");
        self.pods.stop(self.dns);
        // Two refreshes fail and keep the table.
        let failed = |text: &str| {
            text.lines()
                .filter(|l| {
                    l.contains("discovery: DNS lookup failed") && l.contains("\"kept\":true")
                })
                .count()
        };
        let gw = self.pods.output(self.gw);
        eventually_blocking(
            node_deadline(),
            "two failed lookups that keep the table",
            || (failed(&gw.text()) >= 2).then_some(()),
        );
        assert_eq!(
            self.ask(&linked),
            "true",
            "the established link was dropped with DNS down"
        );
        let rpc = format!("rpc:call('{app0}', erlang, node, [])");
        assert_eq!(self.ask(&rpc), format!("'{app0}'"));
        assert_eq!(self.ask(&Self::names_expr()), listed(&["app-0", "app-1"]));
        let disconnect = format!("erlang:disconnect_node('{app0}')");
        assert_eq!(self.ask(&disconnect), "true");
        assert_eq!(self.ask(&format!("net_adm:ping('{app0}')")), "pong");
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `apps` as the shell prints a list of strings.
fn listed(apps: &[&str]) -> String {
    let quoted: Vec<String> = apps.iter().map(|a| format!("\"{a}\"")).collect();
    format!("[{}]", quoted.join(","))
}

/// DNS in the gateway's namespace: the Service's A records from the hosts file
/// `service` (dnsmasq rereads it on SIGHUP), and an SRV record whose target is the
/// Service name, so it follows the same file.
fn start_dns(pods: &mut Pods, gateway: usize, service: &std::path::Path) -> usize {
    let mut dnsmasq = pods.command(gateway, "dnsmasq");
    dnsmasq
        .args(support::dnsmasq::server_args(53, TTL as u32))
        .arg(format!("--addn-hosts={}", service.display()))
        .args(support::dnsmasq::args(
            &[],
            &[("_tcp-epmd._tcp.app.cluster.test", "app.cluster.test", 4369)],
        ));
    pods.spawn("dnsmasq", &mut dnsmasq)
}

/// The gateway: a discovery route for `app-*`, its pool 43691-43699, DNS on loopback.
fn start_gateway(pods: &mut Pods, gateway: usize, dir: &std::path::Path, discover: &str) -> usize {
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
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
    gw.args(["--log-format", "json", "--config"]).arg(&config);
    pods.spawn("gateway", &mut gw)
}

/// SIGHUP to a process this test started (dnsmasq rereads its hosts files).
fn hangup(pid: u32) {
    let status = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
