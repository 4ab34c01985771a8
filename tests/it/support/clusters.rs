//! Two "clusters" of network namespaces for federation (issue 28): each a switch, a
//! DNS server (dnsmasq, authoritative for `*.test`), a gateway and two pods, in
//! 198.18.1.0/24 and 198.18.2.0/24; the two gateways joined by one veth pair (the
//! joining link, 198.18.9.0/24) on which each gateway's nftables let through only TCP
//! to the federation port. In each cluster both gateway names (`gw.a.test`,
//! `gw.b.test`) resolve to the local gateway and `gw-<other>.fed.test` to the other
//! gateway's end of the joining link, so node `a-1@gw.a.test` is dialled by that name
//! in both clusters. Gateway A finds its pods by a template route
//! (`<name>.pods.a.test`), gateway B by a discovery route (`pods.b.test`).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::beam::{IDLE, node_deadline};
use super::netns::{End, Pods, Shell, metrics_in, service_rules, veth_link};
use super::pki::{LeafFiles, gateway_id};
use super::{DEADLINE, dnsmasq, eventually_blocking};

/// The federation port, on the gateways' ends of the joining link.
pub const FEDERATION_PORT: u16 = 43690;
/// The joining link's interface, in both gateway namespaces.
pub const JOIN_DEV: &str = "fed0";
/// The joining link's ends: cluster A's gateway, cluster B's (address, MAC).
pub const JOIN: [(&str, &str); 2] = [
    ("198.18.9.1", "02:00:00:00:09:01"),
    ("198.18.9.2", "02:00:00:00:09:02"),
];
const LOCAL_HOSTS: &str = "127.0.0.1 localhost\n::1 localhost\n";

/// Clusters `a` and `b` (namespaces `<id>a-*`, `<id>b-*`) and the joining link between
/// their gateways, with no firewall yet.
pub fn two(id: &str) -> [Cluster; 2] {
    let a = Cluster::namespaces(id, "a", 1);
    let b = Cluster::namespaces(id, "b", 2);
    let ns = [a.gw_ns(), b.gw_ns()];
    veth_link(
        JOIN_DEV,
        [0, 1].map(|i| End {
            ns: &ns[i],
            ip: JOIN[i].0,
            mac: JOIN[i].1,
        }),
    );
    [a, b]
}

/// One cluster's namespaces and the processes in them.
pub struct Cluster {
    /// `a` or `b`: its trust domain is `<letter>.test`, its nodes `<letter>-N`.
    pub letter: &'static str,
    /// Its network is 198.18.`net`.0/24.
    pub net: u8,
    pub pods: Pods,
    /// Namespace indices: the gateway, the DNS server, the two pods.
    pub gw: usize,
    pub dns: usize,
    pub pod: [usize; 2],
    /// Process index of the gateway's distgate, once started.
    pub gateway: Option<usize>,
}

impl Cluster {
    /// The switch and the namespaces of cluster `letter`: the gateway at .1, DNS at .53,
    /// pods at .11 and .12 (taking EPMD and dist from the gateway alone), every one
    /// but DNS resolving through the cluster's DNS.
    pub fn namespaces(id: &str, letter: &'static str, net: u8) -> Cluster {
        let mut pods = Pods::switched(&format!("{id}{letter}"));
        let ip = |host: u8| format!("198.18.{net}.{host}");
        let gw = pods.join("gw", &ip(1), LOCAL_HOSTS);
        let dns = pods.join("dns", &ip(53), LOCAL_HOSTS);
        let pod = [11, 12].map(|host| {
            let index = pods.join(&format!("p{}", host - 10), &ip(host), LOCAL_HOSTS);
            pods.firewall(index, &service_rules("43691", Some(&ip(1))));
            index
        });
        let resolv = format!("nameserver {}\noptions timeout:1 attempts:2\n", ip(53));
        for index in [gw, pod[0], pod[1]] {
            pods.set_etc(index, "resolv.conf", &resolv);
        }
        Cluster {
            letter,
            net,
            pods,
            gw,
            dns,
            pod,
            gateway: None,
        }
    }

    pub fn ip(&self, host: u8) -> String {
        format!("198.18.{}.{host}", self.net)
    }

    pub fn gw_ns(&self) -> String {
        self.pods.pods[self.gw].ns.clone()
    }

    /// This gateway's end of the joining link.
    pub fn join_ip(&self) -> &'static str {
        JOIN[usize::from(self.letter == "b")].0
    }

    pub fn domain(&self) -> String {
        format!("{}.test", self.letter)
    }

    /// The gateway's firewall: from the cluster, EPMD and the pool; on the joining
    /// link, in and out, nothing but TCP to the federation port and its replies.
    pub fn gateway_firewall(&self) {
        let rules = format!(
            r#"
table inet distgate_federation {{
  chain input {{
    type filter hook input priority 0; policy accept;
    iif "lo" accept
    ct state established,related accept
    iifname "{JOIN_DEV}" tcp dport {FEDERATION_PORT} accept
    iifname "{JOIN_DEV}" drop
    tcp dport {{ 4369, 43691-43699 }} accept
    meta l4proto tcp drop
  }}
  chain output {{
    type filter hook output priority 0; policy accept;
    oifname != "{JOIN_DEV}" accept
    ct state established,related accept
    tcp dport {FEDERATION_PORT} accept
    drop
  }}
}}
"#
        );
        self.pods.firewall(self.gw, &rules);
    }

    /// dnsmasq for the cluster: both gateway names at the local gateway, the pods'
    /// names (`<node>.pods.a.test` for A's template, `pods.b.test` for B's discovery),
    /// and `gw-<other>.fed.test` at the other gateway's end of the joining link.
    pub fn start_dns(&mut self, other: &Cluster) {
        let gateway = self.ip(1);
        let mut records = vec![
            ("gw.a.test".to_owned(), gateway.clone()),
            ("gw.b.test".to_owned(), gateway),
            (
                format!("gw-{}.fed.test", other.letter),
                other.join_ip().to_owned(),
            ),
        ];
        for (i, host) in [11, 12].iter().enumerate() {
            let name = match self.letter {
                "a" => format!("a-{}.pods.a.test", i + 1),
                _ => format!("pods.{}", self.domain()),
            };
            records.push((name, self.ip(*host)));
        }
        let records: Vec<(&str, &str)> = records
            .iter()
            .map(|(n, a)| (n.as_str(), a.as_str()))
            .collect();
        let mut dnsmasq = self.pods.command(self.dns, "dnsmasq");
        dnsmasq
            .args(dnsmasq::network_server_args(&self.ip(53), 2, "test"))
            .args(dnsmasq::args(&records, &[]));
        self.pods
            .spawn(&format!("dnsmasq {}", self.letter), &mut dnsmasq);
        let ns = self.gw_ns();
        let peer = format!("gw-{}.fed.test", other.letter);
        eventually_blocking(DEADLINE, &format!("{peer} to resolve in {ns}"), || {
            let out = Command::new("ip")
                .args(["netns", "exec", &ns, "getent", "ahostsv4", &peer])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .contains(other.join_ip())
                .then_some(())
        });
    }

    /// The gateway: its own pods by its route, the other cluster's names federated,
    /// with `federation` (more keys of `[federation]`).
    pub fn start_gateway(&mut self, other: &Cluster, certs: &Certs, dir: &Path, federation: &str) {
        let own = match self.letter {
            "a" => "upstream = \"{name}.pods.a.test\"".to_owned(),
            _ => format!("discover = \"pods.{}\"\nrecords = \"a\"", self.domain()),
        };
        let mine = certs.gateway(self.letter);
        let config = dir.join(format!("gateway-{}.toml", self.letter));
        std::fs::write(
            &config,
            format!(
                r#"
[epmd]
names_from = "any"
[dist]
ports = ["43691-43699"]
[dns]
min_ttl = "1s"
[[route]]
nodes = "{letter}-*"
{own}
[[route]]
nodes = "{other}-*"
federate = "gw-{other}.fed.test:{FEDERATION_PORT}"
identity = "{other_id}"
[federation]
listen = ["{join}:{FEDERATION_PORT}"]
cert = "{cert}"
key = "{key}"
ca = "{ca}"
peers = ["{other_id}"]
{federation}
"#,
                letter = self.letter,
                other = other.letter,
                other_id = gateway_id(&other.domain()),
                join = self.join_ip(),
                cert = mine.cert.display(),
                key = mine.key.display(),
                ca = certs.ca.display(),
            ),
        )
        .unwrap();
        let label = format!("gateway {}", self.letter);
        self.gateway = Some(self.pods.distgate(self.gw, &label, Some(&config)));
    }

    /// The sidecars (NAMES allowed to the gateway) and nodes `<letter>-1` and
    /// `<letter>-2`; the one given by `shell` (1 or 2) with a shell, the other idle.
    pub fn start_pods(&mut self, dir: &Path, shell: usize) -> Shell {
        let config = dir.join(format!("sidecar-{}.toml", self.letter));
        let names_from = format!("[epmd]\nnames_from = [\"local\", \"{}/32\"]\n", self.ip(1));
        std::fs::write(&config, names_from).unwrap();
        let mut found = None;
        for (i, pod) in self.pod.into_iter().enumerate() {
            let name = self.node(i + 1);
            self.pods
                .distgate(pod, &format!("sidecar of {name}"), Some(&config));
            if i + 1 == shell {
                found = Some(self.pods.shell(pod, &name));
            } else {
                let mut erl = self.pods.erl(pod, &name, IDLE);
                erl.args(["-connect_all", "false"]);
                let node = self.pods.spawn(&format!("node {name}"), &mut erl);
                self.pods.output(node).wait_for("READY", node_deadline());
            }
        }
        found.unwrap()
    }

    /// The full name of node `<letter>-<n>`.
    pub fn node(&self, n: usize) -> String {
        format!("{0}-{n}@gw.{0}.test", self.letter)
    }

    /// What `shell` (a node of this cluster) answers to `expr`.
    pub fn ask(&mut self, shell: &mut Shell, expr: &str) -> String {
        self.pods.ask(shell, expr)
    }

    /// The gateway's `/metrics`.
    pub fn metrics(&self) -> String {
        metrics_in(&self.gw_ns())
    }

    /// The sum of the server side's federation handshakes with `result`, any peer.
    pub fn handshakes(&self, result: &str) -> f64 {
        total(
            &self.metrics(),
            "distgate_federation_handshakes_total",
            &[("side", "server"), ("result", result)],
        )
    }

    /// Waits until that sum is above `before`; the new sum.
    pub fn handshakes_above(&self, result: &str, before: f64) -> f64 {
        let what = format!(
            "gateway {}: a server-side handshake counted {result}",
            self.letter
        );
        eventually_blocking(DEADLINE, &what, || {
            let now = self.handshakes(result);
            (now > before).then_some(now)
        })
    }

    pub fn gateway_log(&mut self) -> String {
        let index = self.gateway.expect("the gateway runs");
        self.pods.output(index).text()
    }
}

/// The PEM files: the CA, each gateway's leaf.
pub struct Certs {
    pub ca: PathBuf,
    pub a: LeafFiles,
    pub b: LeafFiles,
}

impl Certs {
    pub fn gateway(&self, letter: &str) -> &LeafFiles {
        if letter == "a" { &self.a } else { &self.b }
    }
}

/// The sum of every sample of `name` in Prometheus text whose labels include `labels`.
pub fn total(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            let matches = metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}
