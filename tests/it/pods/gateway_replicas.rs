//! Two gateway replicas behind one virtual address that balances every new connection
//! at random between them, as kube-proxy does (nftables `numgen random` DNAT in the
//! switch's namespace), in front of three pods, each a distgate sidecar and a real
//! node, found by a discovery route over a real DNS server (dnsmasq). A node outside
//! reaches the pods' nodes through the virtual address only: its EPMD lookup and the
//! connection that follows land on either replica, so both must give every name the
//! same port. Then one replica is restarted: links through the other keep flowing, a
//! link through the one that went away drops and comes back through the other, and
//! new connections succeed while the virtual address points only at the live one.
//!
//! Needs root, `ip`, `nft`, `erl` and `dnsmasq`; with `CI=true` a missing one fails.

use crate::support;
use std::time::Instant;

use crate::support::beam::{IDLE, node_deadline};
use crate::support::netns::{Pods, Shell, exec, metrics_in, service_rules};
use crate::support::*;

/// The replicas, the switch's own address, the virtual address, the outside node.
const REPLICAS: [&str; 2] = ["198.18.0.1", "198.18.0.2"];
const SWITCH_IP: &str = "198.18.0.254";
const VIP: &str = "198.18.1.1";
const OUTSIDE_IP: &str = "198.18.0.3";
const APPS: [&str; 3] = ["app-0", "app-1", "app-2"];
const POD_IPS: [&str; 3] = ["198.18.0.11", "198.18.0.12", "198.18.0.13"];
const LOCAL_HOSTS: &str = "127.0.0.1 localhost\n::1 localhost\n";
/// Fresh connections (lookup, connect, ping, disconnect) per round.
const FRESH: usize = 300;

fn node_name(app: &str) -> String {
    format!("{app}@{app}.app.cluster.test")
}

#[test]
fn two_replicas_behind_one_random_balancer_agree_and_survive_a_restart() {
    if !require(&["erl", "ip", "nft", "dnsmasq"]) || !require_root() {
        return;
    }
    let mut world = World::start();
    world.both_replicas_give_every_name_the_same_port();
    let (ok, spread) = world.fresh_connections(FRESH);
    assert_eq!(ok, FRESH);
    eprintln!(
        "{FRESH} fresh connections through the virtual address: all succeeded; handshakes per replica {spread:?}"
    );
    assert!(
        spread.iter().all(|&n| n >= FRESH / 4),
        "the balancer did not spread the connections: {spread:?}"
    );
    world.a_restart_keeps_links_through_the_other_replica();
    let (ok, spread) = world.fresh_connections(FRESH);
    assert_eq!(ok, FRESH);
    eprintln!(
        "{FRESH} more after the restart: all succeeded; handshakes per replica since start {spread:?}"
    );
}

struct World {
    pods: Pods,
    _dir: TempDir,
    /// Namespace indices of the replicas, and their processes (`None`: stopped).
    gw: [usize; 2],
    gw_process: [Option<usize>; 2],
    gateway_config: std::path::PathBuf,
    shell: Shell,
}

impl World {
    fn start() -> World {
        let id = unique("dgr");
        let dir = TempDir::new("distgate-replicas-");
        let mut pods = Pods::switched(&id);
        let switch = pods.switch().to_owned();
        // The switch routes the virtual address: it has an address on the bridge, it
        // forwards, and it sends no redirects that would let the outside skip it.
        exec(
            &switch,
            &[
                "ip",
                "addr",
                "add",
                &format!("{SWITCH_IP}/24"),
                "dev",
                "br0",
            ],
            None,
        );
        for setting in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.send_redirects=0",
            "net.ipv4.conf.br0.send_redirects=0",
        ] {
            exec(&switch, &["sysctl", "-q", "-w", setting], None);
        }
        balance(&switch, &REPLICAS);

        let gw = [
            pods.join("gwa", REPLICAS[0], LOCAL_HOSTS),
            pods.join("gwb", REPLICAS[1], LOCAL_HOSTS),
        ];
        let service = dir.join("service.hosts");
        let records: String = POD_IPS
            .iter()
            .map(|ip| format!("{ip} app.cluster.test\n"))
            .collect();
        std::fs::write(&service, records).unwrap();
        let gateway_config = dir.join("gateway.toml");
        std::fs::write(&gateway_config, GATEWAY_CONFIG).unwrap();
        for &ns in &gw {
            // The gateway's Service: EPMD and the pool, from anyone; DNS on loopback.
            pods.firewall(ns, &service_rules("43691-43699", None));
            start_dns(&mut pods, ns, &service);
        }
        let sidecar_config = dir.join("sidecar.toml");
        let replicas = REPLICAS.join(", ");
        std::fs::write(
            &sidecar_config,
            format!(
                "[epmd]\nnames_from = [\"local\", \"{}/32\", \"{}/32\"]\n",
                REPLICAS[0], REPLICAS[1]
            ),
        )
        .unwrap();
        let start_pod = |pods: &mut Pods, i: usize| {
            let app = APPS[i];
            let hosts = format!("{LOCAL_HOSTS}{} {app}.app.cluster.test\n", POD_IPS[i]);
            let pod = pods.join(&format!("p{i}"), POD_IPS[i], &hosts);
            // A pod takes EPMD and dist connections from the replicas alone.
            let from = format!("{{ {replicas} }}");
            pods.firewall(pod, &service_rules("43691", Some(&from)));
            pods.distgate(pod, &format!("distgate in pod {i}"), Some(&sidecar_config));
            let mut erl = pods.erl(pod, &node_name(app), IDLE);
            erl.args(["-connect_all", "false"]);
            let node = pods.spawn(&format!("{app} in pod {i}"), &mut erl);
            pods.output(node).wait_for("READY", node_deadline());
        };
        // The names arrive in a different order at each replica, as in a rollout: A
        // runs while app-2 comes up alone, the others later; B starts once all three
        // are up and discovers them at once.
        let first = pods.distgate(gw[0], "gateway 0", Some(&gateway_config));
        start_pod(&mut pods, 2);
        let app2 = "\"node\":\"app-2\"";
        pods.output(first)
            .wait_line("A discovering app-2", node_deadline(), |l| {
                l.contains("\"discovered name\"") && l.contains(app2)
            });
        start_pod(&mut pods, 0);
        start_pod(&mut pods, 1);
        let second = pods.distgate(gw[1], "gateway 1", Some(&gateway_config));
        let gw_process = [Some(first), Some(second)];

        // Outside: every pod's name is the virtual address, reached through the switch.
        let outside_hosts: String = APPS
            .iter()
            .map(|app| format!("{VIP} {app}.app.cluster.test\n"))
            .chain([format!("{OUTSIDE_IP} out.cluster.test\n")])
            .collect();
        let outside = pods.join("out", OUTSIDE_IP, &format!("{LOCAL_HOSTS}{outside_hosts}"));
        let out_ns = pods.pods[outside].ns.clone();
        exec(
            &out_ns,
            &["ip", "route", "add", &format!("{VIP}/32"), "via", SWITCH_IP],
            None,
        );
        exec(
            &out_ns,
            &["sysctl", "-q", "-w", "net.ipv4.conf.all.accept_redirects=0"],
            None,
        );
        pods.distgate(outside, "distgate outside", None);
        let shell = pods.shell(outside, "out@out.cluster.test");
        World {
            pods,
            _dir: dir,
            gw,
            gw_process,
            gateway_config,
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

    /// What replica `i` answers NAMES, sorted, as the shell prints it.
    fn names_of(&mut self, i: usize) -> String {
        self.ask(&names_expr(i))
    }

    /// Both replicas know the three names, with the same ports.
    fn both_replicas_give_every_name_the_same_port(&mut self) {
        let listed = |answer: &str| {
            APPS.iter()
                .all(|app| answer.contains(&format!("\"{app}\"")))
        };
        let mut maps = vec![];
        for i in 0..2 {
            let expr = names_expr(i);
            let answer = self.pods.ask_until(&mut self.shell, &expr, listed);
            maps.push(answer);
        }
        assert_eq!(maps[0], maps[1], "the replicas lease different ports");
        eprintln!("both replicas: {}", maps[0]);
    }

    /// `count` fresh connections from outside, spread over the three names: how many
    /// succeeded, and how many handshakes each replica has seen so far.
    fn fresh_connections(&mut self, count: usize) -> (usize, Vec<usize>) {
        let expr = format!(
            "lists:foldl(fun(I, Ok) -> App = \"app-\" ++ integer_to_list(I rem 3), \
             N = list_to_atom(App ++ \"@\" ++ App ++ \".app.cluster.test\"), \
             R = net_adm:ping(N), erlang:disconnect_node(N), \
             case R of pong -> Ok + 1; pang -> Ok end end, 0, lists:seq(1, {count}))"
        );
        let started = Instant::now();
        let ok: usize = self.ask(&expr).parse().expect("a count");
        eprintln!("{count} fresh connections in {:?}", started.elapsed());
        let spread = (0..2)
            .map(|i| {
                let ns = self.pods.pods[self.gw[i]].ns.clone();
                let text = metrics_in(&ns);
                APPS.iter()
                    .map(|app| {
                        let labels = [("node", *app), ("result", "ok")];
                        sample(&text, "distgate_dist_handshakes_total", &labels).unwrap_or(0.0)
                    })
                    .sum::<f64>() as usize
            })
            .collect();
        (ok, spread)
    }

    /// Links to app-0 and app-1 go through replica B, one to app-2 through replica A.
    /// A is stopped and started again: app-2's link drops and comes back through B,
    /// the others never go down, and new connections succeed meanwhile.
    fn a_restart_keeps_links_through_the_other_replica(&mut self) {
        let switch = self.pods.switch().to_owned();
        for app in APPS {
            self.ask(&format!("erlang:disconnect_node('{}')", node_name(app)));
        }
        balance(&switch, &REPLICAS[..1]);
        assert_eq!(
            self.ask(&format!("net_adm:ping('{}')", node_name("app-2"))),
            "pong"
        );
        balance(&switch, &REPLICAS[1..]);
        for app in &APPS[..2] {
            assert_eq!(
                self.ask(&format!("net_adm:ping('{}')", node_name(app))),
                "pong"
            );
        }
        for app in APPS {
            let monitor = format!("erlang:monitor_node('{}', true)", node_name(app));
            assert_eq!(self.ask(&monitor), "true");
        }

        // Replica A goes away (the virtual address already points only at B).
        let a = self.gw_process[0].take().unwrap();
        self.pods.stop(a);
        let app2 = node_name("app-2");
        let down = "[N || {nodedown, N} <- element(2, process_info(self(), messages))]";
        self.until(down, &format!("['{app2}']"));
        // Its node reconnects through the live replica; new connections succeed.
        assert_eq!(self.ask(&format!("net_adm:ping('{app2}')")), "pong");
        let rpc = format!("rpc:call('{app2}', erlang, node, [])");
        assert_eq!(self.ask(&rpc), format!("'{app2}'"));

        // A comes back and agrees with B; the balancer takes both again.
        let ns = self.gw[0];
        let config = self.gateway_config.clone();
        self.gw_process[0] = Some(self.pods.distgate(ns, "gateway 0 again", Some(&config)));
        let b = self.names_of(1);
        self.until(&names_expr(0), &b);
        balance(&switch, &REPLICAS);

        // The links through B never went down and still carry calls.
        assert_eq!(self.ask(down), format!("['{app2}']"));
        for app in &APPS[..2] {
            let node = node_name(app);
            let rpc = format!("rpc:call('{node}', erlang, node, [])");
            assert_eq!(self.ask(&rpc), format!("'{node}'"));
        }
        eprintln!("replica A restarted: links through B kept, app-2 back through B");
    }
}

impl Drop for World {
    fn drop(&mut self) {}
}

/// NAMES of replica `i`, sorted, as an expression for the outside node's shell.
fn names_expr(i: usize) -> String {
    format!(
        "case erl_epmd:names({{{}}}) of {{ok, L}} -> lists:sort(L); E -> E end",
        REPLICAS[i].replace('.', ",")
    )
}

/// Both replicas: a discovery route over the headless Service `app.cluster.test`, the
/// pool 43691-43699, DNS on loopback, metrics on 9369.
const GATEWAY_CONFIG: &str = r#"
[epmd]
names_from = "any"
[dist]
ports = ["43691-43699"]
[[route]]
nodes = "app-*"
discover = "app.cluster.test"
[dns]
nameservers = ["127.0.0.1:53"]
min_ttl = "1s"
timeout = "500ms"
"#;

/// The virtual address balances every new connection at random over `replicas`, and
/// the replicas answer through the switch (the source becomes the switch's address).
/// Connections already balanced keep their replica.
fn balance(switch: &str, replicas: &[&str]) {
    let targets: Vec<String> = (replicas.iter().enumerate())
        .map(|(i, ip)| format!("{i} : {ip}"))
        .collect();
    let all = REPLICAS.join(", ");
    let rules = format!(
        r#"
table ip vip
delete table ip vip
table ip vip {{
  chain pre {{
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr {VIP} dnat to numgen random mod {} map {{ {} }}
  }}
  chain post {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {OUTSIDE_IP} ip daddr {{ {all} }} masquerade
  }}
}}
"#,
        replicas.len(),
        targets.join(", ")
    );
    exec(switch, &["nft", "-f", "-"], Some(&rules));
}

/// dnsmasq in a replica's namespace: the Service's A records from `service`.
fn start_dns(pods: &mut Pods, ns: usize, service: &std::path::Path) -> usize {
    let mut dnsmasq = pods.command(ns, "dnsmasq");
    dnsmasq
        .args(support::dnsmasq::server_args(53, 2))
        .arg(format!("--addn-hosts={}", service.display()));
    pods.spawn("dnsmasq", &mut dnsmasq)
}
