//! A real DNS server for tests: dnsmasq on a free loopback port, authoritative for the
//! made-up domain `cluster.test`, ended by PID on drop; with [`dnsmasq_logging`], every
//! query it receives written to a file and counted by [`queries`].

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use distgate::dns::{Hickory, Lookup};

use super::{Process, eventually, free_port, loopback};

pub struct Dnsmasq {
    pub process: Process,
    pub addr: SocketAddr,
}

/// dnsmasq answering `records` (name, address) with a TTL of `ttl` seconds.
pub async fn dnsmasq(records: &[(&str, &str)], ttl: u32) -> Dnsmasq {
    dnsmasq_srv(records, &[], ttl).await
}

/// [`dnsmasq`] that also answers SRV records (service, target, port).
pub async fn dnsmasq_srv(records: &[(&str, &str)], srv: &[(&str, &str, u16)], ttl: u32) -> Dnsmasq {
    start(records, srv, ttl, None).await
}

/// [`dnsmasq`] that logs every query it receives to `log` (`--log-queries`), for
/// [`queries`] to count.
pub async fn dnsmasq_logging(records: &[(&str, &str)], ttl: u32, log: &Path) -> Dnsmasq {
    start(records, &[], ttl, Some(log)).await
}

async fn start(
    records: &[(&str, &str)],
    srv: &[(&str, &str, u16)],
    ttl: u32,
    log: Option<&Path>,
) -> Dnsmasq {
    for _ in 0..10 {
        let port = free_port();
        let mut command = Command::new("dnsmasq");
        command
            .args(server_args(port, ttl))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command.args(args(records, srv));
        if let Some(log) = log {
            command.args([
                "--log-queries".to_owned(),
                format!("--log-facility={}", log.display()),
            ]);
        }
        let mut process = Process::spawn("dnsmasq", &mut command);
        let addr = loopback(port);
        let resolver = Hickory::with_nameservers(&[addr], Duration::from_millis(200), 1).unwrap();
        let up = eventually("dnsmasq to answer", || {
            let exited = process.exited().is_some();
            let resolver = &resolver;
            async move {
                if exited {
                    return Some(false);
                }
                resolver.lookup_ip(records[0].0).await.ok().map(|_| true)
            }
        })
        .await;
        if up {
            return Dnsmasq { process, addr };
        }
    }
    panic!("dnsmasq would not start");
}

/// dnsmasq in the foreground on 127.0.0.1:`port`, no other configuration, authoritative
/// for the made-up domain `cluster.test` (unknown names are NXDOMAIN), answers given a
/// TTL of `ttl` seconds.
pub fn server_args(port: u16, ttl: u32) -> Vec<String> {
    [
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--pid-file=",
        "--user=root",
        "--local=/cluster.test/",
    ]
    .map(str::to_owned)
    .into_iter()
    .chain([format!("--port={port}"), format!("--local-ttl={ttl}")])
    .collect()
}

/// dnsmasq in the foreground on `listen`:53 (an address of a test namespace, where it
/// is that network's name server), no other configuration, authoritative for the
/// made-up domain `domain` (unknown names are NXDOMAIN), answers given a TTL of `ttl`
/// seconds.
pub fn network_server_args(listen: &str, ttl: u32, domain: &str) -> Vec<String> {
    [
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--pid-file=",
        "--user=root",
        "--port=53",
    ]
    .map(str::to_owned)
    .into_iter()
    .chain([
        format!("--listen-address={listen}"),
        format!("--local=/{domain}/"),
        format!("--local-ttl={ttl}"),
    ])
    .collect()
}

/// dnsmasq arguments for `records` (name, address) and `srv` (service, target, port).
pub fn args(records: &[(&str, &str)], srv: &[(&str, &str, u16)]) -> Vec<String> {
    let hosts = records
        .iter()
        .map(|(name, addr)| format!("--host-record={name},{addr}"));
    let services = srv
        .iter()
        .map(|(service, target, port)| format!("--srv-host={service},{target},{port}"));
    hosts.chain(services).collect()
}

/// How many queries for `name` (any type) dnsmasq has logged to `log` so far.
pub fn queries(log: &Path, name: &str) -> usize {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let asked = format!(" {name} from ");
    text.lines()
        .filter(|line| line.contains(": query[") && line.contains(&asked))
        .count()
}

/// Waits until every query `server` answered before this call is in `log`: asks for
/// `sentinel` and waits for its line (dnsmasq logs the queries it reads in order).
pub async fn all_logged(server: SocketAddr, log: &Path, sentinel: &str) {
    let resolver = Hickory::with_nameservers(&[server], Duration::from_millis(500), 1).unwrap();
    let _ = resolver.lookup_ip(sentinel).await;
    eventually("dnsmasq to log the sentinel query", || async {
        (queries(log, sentinel) > 0).then_some(())
    })
    .await;
}
