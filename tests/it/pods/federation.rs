//! Federation (issue 28): two "clusters" of network namespaces, each a switch, a DNS
//! server (dnsmasq), a gateway and two pods with a distgate sidecar and a real OTP
//! node, joined only by one veth pair between the two gateways, on which nftables in
//! each gateway lets through nothing but the federation port (43690). Each gateway
//! serves its own pods (cluster A by a template route, B by a discovery route) and
//! the other cluster's names by a `federate` route over mutual TLS; in each cluster
//! both gateway names resolve to the local gateway, so `a-1@gw.a.test` and
//! `b-1@gw.b.test` are dialled as they are everywhere.
//!
//! The nodes ping, call and move 16 MiB each way across in both directions (MD5
//! checked) while tcpdump records the joining link: the capture holds only TCP on
//! 43690 and none of the node names, the cookie or a marker sent in the payload. B's
//! certificate files are replaced while a link streams: the link goes on, the next
//! connection (`openssl s_client`) gets the new serial. Gateways presenting a
//! certificate of another CA, or an identity not in `peers`, are refused and counted; a
//! silent peer and a header that never ends are closed at `handshake_timeout`.
//!
//! Needs root, `ip`, `nft`, `erl`, `dnsmasq`, `tcpdump`, `openssl` and `getent`; with
//! `CI=true` a missing one fails.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use distgate::epmd::message;

use crate::support::beam::{Output, node_deadline};
use crate::support::capture::{self, Capture};
use crate::support::clusters::{self, Certs, Cluster, FEDERATION_PORT, JOIN, JOIN_DEV, total};
use crate::support::netns::{Shell, admin_in, in_netns};
use crate::support::pki::{Ca, Leaf, gateway_id};
use crate::support::*;

/// `[federation] handshake_timeout` of both gateways.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long past `handshake_timeout` a close may come and still pass.
const CLOSE_SLACK: Duration = Duration::from_secs(4);
/// Bytes moved each way in each direction.
const BULK: usize = 16 << 20;

#[test]
fn nodes_in_two_clusters_meet_through_federated_gateways_only() {
    if !required() {
        return;
    }
    let mut world = World::start(true);
    world.nodes_meet_across_in_both_directions();
    world.the_joining_link_carried_only_ciphertext_on_the_federation_port();
    world.certificates_rotate_under_a_streaming_link();
    world.the_links_table_names_the_peer_gateway();
}

#[test]
fn federation_refuses_strangers_and_closes_silent_peers_at_the_deadline() {
    if !required() {
        return;
    }
    let mut world = World::start(false);
    world.strangers_are_refused_and_counted();
    world.silent_peers_and_endless_headers_close_at_the_deadline();
    world.strangers_are_listed_in_refusals();
}

fn required() -> bool {
    let programs = [
        "erl", "ip", "nft", "dnsmasq", "tcpdump", "openssl", "getent",
    ];
    require(&programs) && require_root()
}

/// Both clusters, the joining link, the certificates and the nodes' shells.
struct World {
    capture: Option<Capture>,
    a: Cluster,
    b: Cluster,
    /// Shells of a-1 and b-2 (a-2 and b-1 idle), with the nodes.
    shells: Option<[Shell; 2]>,
    ca: Ca,
    certs: Certs,
    /// B's certificate's serial, as openssl prints it.
    b_serial: String,
    /// 32 random bytes sent inside every bulk payload.
    marker: [u8; 32],
    dir: TempDir,
}

impl World {
    /// Namespaces, the joining link and its firewall (each side's input shown to drop
    /// before the other side's is loaded), DNS, certificates, gateways and, `with_nodes`,
    /// the pods.
    fn start(with_nodes: bool) -> World {
        let dir = TempDir::new("distgate-federation-");
        let [mut a, mut b] = clusters::two(&unique("dgf"));
        b.gateway_firewall();
        assert_blocked(&a.gw_ns(), &b.gw_ns(), JOIN[1].0, 4369);
        a.gateway_firewall();
        assert_blocked(&b.gw_ns(), &a.gw_ns(), JOIN[0].0, 4369);
        a.start_dns(&b);
        b.start_dns(&a);

        let ca = Ca::new("distgate federation test CA");
        let ca_file = dir.join("ca.crt");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let b_leaf = ca.issue(&gateway_id("b.test"), 2);
        let certs = Certs {
            ca: ca_file,
            a: ca.issue(&gateway_id("a.test"), 1).write(&dir.join(""), "a"),
            b: b_leaf.write(&dir.join(""), "b"),
        };
        let federation = format!(
            "handshake_timeout = \"{}ms\"\nwatch_every = \"500ms\"",
            HANDSHAKE_TIMEOUT.as_millis()
        );
        a.start_gateway(&b, &certs, &dir.join(""), &federation);
        b.start_gateway(&a, &certs, &dir.join(""), &federation);
        let shells = with_nodes.then(|| {
            [
                a.start_pods(&dir.join(""), 1),
                b.start_pods(&dir.join(""), 2),
            ]
        });
        let mut marker = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .unwrap()
            .read_exact(&mut marker)
            .unwrap();
        World {
            capture: None,
            a,
            b,
            shells,
            ca,
            certs,
            b_serial: b_leaf.serial,
            marker,
            dir,
        }
    }

    /// What node a-1 answers to `expr`.
    fn ask_a1(&mut self, expr: &str) -> String {
        let shells = self.shells.as_mut().expect("the nodes run");
        self.a.ask(&mut shells[0], expr)
    }

    /// What node b-2 answers to `expr`.
    fn ask_b2(&mut self, expr: &str) -> String {
        let shells = self.shells.as_mut().expect("the nodes run");
        self.b.ask(&mut shells[1], expr)
    }

    /// Asks a-1 (`b` false) or b-2 (`b` true) `expr` until the answer is `want`.
    fn until(&mut self, b: bool, expr: &str, want: &str) {
        let shells = self.shells.as_mut().expect("the nodes run");
        let (cluster, shell) = if b {
            (&mut self.b, &mut shells[1])
        } else {
            (&mut self.a, &mut shells[0])
        };
        cluster.pods.ask_until(shell, expr, |r| r == want);
    }

    /// The marker as an Erlang binary literal.
    fn marker_literal(&self) -> String {
        let bytes: Vec<String> = self.marker.iter().map(u8::to_string).collect();
        format!("<<{}>>", bytes.join(","))
    }

    /// Each gateway serves its own cluster's names; then, with the joining link
    /// recorded: a-1 pings, calls and moves 16 MiB each way with b-1 (A to B), and b-2
    /// the same with a-2 (B to A).
    fn nodes_meet_across_in_both_directions(&mut self) {
        let (a2, b1) = (self.a.node(2), self.b.node(1));
        self.until(false, &format!("net_adm:ping('{a2}')"), "pong");
        self.until(true, &format!("net_adm:ping('{b1}')"), "pong");
        let before = [self.a.handshakes("ok"), self.b.handshakes("ok")];

        let pcap = self.dir.join("joining-link.pcap");
        self.capture = Some(Capture::start(&self.a.gw_ns(), JOIN_DEV, &pcap));
        for b_side in [false, true] {
            let (from, to) = if b_side {
                (self.b.node(2), self.a.node(2))
            } else {
                (self.a.node(1), self.b.node(1))
            };
            let started = Instant::now();
            self.until(b_side, &format!("net_adm:ping('{to}')"), "pong");
            let ask = |w: &mut World, expr: &str| {
                if b_side {
                    w.ask_b2(expr)
                } else {
                    w.ask_a1(expr)
                }
            };
            let rpc = format!("rpc:call('{to}', erlang, node, [])");
            assert_eq!(ask(self, &rpc), format!("'{to}'"));
            let m = self.marker_literal();
            let payload = format!(
                "iolist_to_binary([[M, rand:bytes({})] || _ <- lists:seq(1, {})])",
                (BULK >> 8) - 32,
                1 << 8
            );
            let up = format!(
                "M = {m}, Up = {payload}, {{byte_size(Up), rpc:call('{to}', erlang, md5, [Up]) =:= erlang:md5(Up)}}"
            );
            assert_eq!(ask(self, &up), format!("{{{BULK},true}}"), "{from} to {to}");
            let down = format!(
                "M = {m}, {{Down, Sum}} = rpc:call('{to}', erlang, apply, [fun() -> X = {payload}, {{X, erlang:md5(X)}} end, []]), \
                 {{byte_size(Down), erlang:md5(Down) =:= Sum, binary:match(Down, M) =/= nomatch}}"
            );
            assert_eq!(
                ask(self, &down),
                format!("{{{BULK},true,true}}"),
                "{to} to {from}"
            );
            eprintln!(
                "{from} -> {to}: ping, rpc and {} MiB each way in {:?}",
                BULK >> 20,
                started.elapsed()
            );
        }
        // Each gateway served the other's connection as a federation server.
        assert!(self.a.handshakes("ok") > before[0], "A served no link");
        assert!(self.b.handshakes("ok") > before[1], "B served no link");
        // Each gateway counts both links, the one it dialled and the one it served,
        // under the other's identity, and the 32 MiB each way they carried.
        for (me, other) in [(&self.a, &self.b), (&self.b, &self.a)] {
            let metrics = me.metrics();
            let id = gateway_id(&other.domain());
            let peer = [("peer", id.as_str())];
            let at = |name: &str| total(&metrics, name, &peer);
            let what = format!("gateway {} on {id}", me.letter);
            assert_eq!(at("distgate_federation_links_open"), 2.0, "{what}");
            assert_eq!(at("distgate_federation_peer_up"), 1.0, "{what}");
            for way in ["sent", "received"] {
                let bytes = at(&format!("distgate_federation_{way}_bytes_total"));
                assert!(bytes >= (2 * BULK) as f64, "{what}: {way} {bytes} bytes");
            }
            let links = admin_in(&me.gw_ns(), "/links");
            let named = format!("\"peer_gateway\":\"{id}\"");
            assert_eq!(links.matches(&named).count(), 2, "{what}: /links\n{links}");
        }
    }

    /// `distgate links` on each gateway shows the peer gateway of every federated
    /// link (a GATEWAY column): checked last, so the steps before it run whatever it
    /// finds.
    fn the_links_table_names_the_peer_gateway(&mut self) {
        for (me, other) in [(&self.a, &self.b), (&self.b, &self.a)] {
            let id = gateway_id(&other.domain());
            let mut cli = me.pods.command(me.gw, env!("CARGO_BIN_EXE_distgate"));
            let out = cli.arg("links").output().unwrap();
            let table = String::from_utf8_lossy(&out.stdout);
            let federated: Vec<&str> = table
                .lines()
                .filter(|l| l.contains("federation_"))
                .collect();
            assert!(
                table.contains("GATEWAY")
                    && !federated.is_empty()
                    && federated.iter().all(|l| l.contains(&id)),
                "gateway {}: `distgate links` does not name {id}:\n{table}",
                me.letter
            );
        }
    }

    /// The capture on the joining link: only TCP on the federation port, at least the
    /// 64 MiB moved, and none of the node names, the cookie or the payload's marker.
    fn the_joining_link_carried_only_ciphertext_on_the_federation_port(&mut self) {
        let capture = self.capture.take().expect("the capture runs");
        let file = capture.file.clone();
        let said = capture.stop();
        eprintln!("tcpdump: {}", said.replace('\n', "; "));
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            bytes.len() > 4 * BULK,
            "the capture holds {} bytes, less than the {} MiB moved",
            bytes.len(),
            (4 * BULK) >> 20
        );
        let other = capture::packets(&file, &format!("not (tcp port {FEDERATION_PORT})"));
        assert_eq!(other, 0, "packets other than TCP on {FEDERATION_PORT}");
        let federation = capture::packets(&file, &format!("tcp port {FEDERATION_PORT}"));
        assert!(federation > 0);
        let names: Vec<String> = (1..=2)
            .flat_map(|n| [self.a.node(n), self.b.node(n)])
            .collect();
        for name in &names {
            assert!(
                !capture::contains(&bytes, name.as_bytes()),
                "{name} crossed in plaintext"
            );
        }
        let cookie = crate::support::beam::COOKIE.as_bytes();
        assert!(!capture::contains(&bytes, cookie), "the cookie crossed");
        assert!(
            !capture::contains(&bytes, &self.marker),
            "the payload crossed in plaintext"
        );
        eprintln!(
            "joining link: {federation} packets, {} MiB, all TCP {FEDERATION_PORT}, no name, cookie or marker",
            bytes.len() >> 20
        );
    }

    /// a-1 streams to a sink on b-1 over their federated link while B's certificate
    /// and key are replaced: new connections get the new serial, the link stays the
    /// same connection (no nodedown) and every message arrives.
    fn certificates_rotate_under_a_streaming_link(&mut self) {
        let b1 = self.b.node(1);
        assert_eq!(
            self.ask_a1(&format!("erlang:monitor_node('{b1}', true)")),
            "true"
        );
        let controller = format!("lists:keyfind('{b1}', 1, erlang:system_info(dist_ctrl))");
        let link_before = self.ask_a1(&controller);
        assert!(
            link_before.starts_with('{'),
            "no link to {b1}: {link_before}"
        );
        let start = format!(
            "Sink = spawn('{b1}', fun() -> register(fed_sink, self()), \
             Loop = fun Go(N, Bytes) -> receive {{chunk, X}} -> Go(N + 1, Bytes + byte_size(X)); \
             {{count, From}} -> From ! {{sink, N, Bytes}}, Go(N, Bytes) end end, Loop(0, 0) end), \
             Chunk = rand:bytes(65536), \
             Streamer = spawn(fun() -> Send = fun Go(N) -> receive {{stop, From}} -> Sink ! {{count, self()}}, \
             receive {{sink, M, Bytes}} -> From ! {{streamed, N, M, Bytes}} end \
             after 2 -> Sink ! {{chunk, Chunk}}, Go(N + 1) end end, Send(0) end), \
             register(fed_streamer, Streamer)"
        );
        assert_eq!(self.ask_a1(&start), "true");
        let received = format!(
            "{{fed_sink, '{b1}'}} ! {{count, self()}}, receive {{sink, N, _}} -> N after 10000 -> timeout end"
        );
        let count = |w: &mut World| -> u64 {
            let answer = w.ask_a1(&received);
            answer
                .parse()
                .unwrap_or_else(|_| panic!("the sink's count: {answer}"))
        };
        eventually_blocking(node_deadline(), "the stream to flow", || {
            (count(self) > 0).then_some(())
        });
        assert_eq!(self.served_serial(), self.b_serial);

        let rotated = Instant::now();
        let at_rotation = count(self);
        let new = self.ca.issue(&gateway_id("b.test"), 3);
        assert_ne!(new.serial, self.b_serial);
        new.replace(&self.certs.b);
        eventually_blocking(node_deadline(), "B to serve its new certificate", || {
            (self.served_serial() == new.serial).then_some(())
        });
        eprintln!(
            "B served the new certificate {:?} after its files were replaced",
            rotated.elapsed()
        );
        self.b_serial = new.serial.clone();
        let after = count(self);
        assert!(
            after > at_rotation,
            "the stream stalled: {at_rotation} then {after}"
        );
        let stopped = self.ask_a1(
            "fed_streamer ! {stop, self()}, receive {streamed, N, M, Bytes} -> {N, M, Bytes} after 60000 -> timeout end",
        );
        let fields: Vec<u64> = stopped
            .trim_matches(|c| c == '{' || c == '}')
            .split(',')
            .map(|f| {
                f.parse()
                    .unwrap_or_else(|_| panic!("the stream's end: {stopped}"))
            })
            .collect();
        assert_eq!(fields[0], fields[1], "sent and received differ: {stopped}");
        assert_eq!(fields[2], fields[1] * 65536, "{stopped}");
        assert_eq!(
            self.ask_a1("receive {nodedown, Node} -> {down, Node} after 0 -> up end"),
            "up"
        );
        assert_eq!(
            self.ask_a1(&controller),
            link_before,
            "the link to {b1} is a new connection"
        );
        eprintln!(
            "{} chunks of 64 KiB streamed across the rotation on one link",
            fields[0]
        );
        // A new link from A to B, served with the new certificate.
        let b2 = self.b.node(2);
        self.until(false, &format!("net_adm:ping('{b2}')"), "pong");
        let reloads = total(
            &self.b.metrics(),
            "distgate_federation_certificate_reloads_total",
            &[("result", "ok")],
        );
        assert!(reloads >= 1.0, "no certificate reload counted");
        let log = self.b.gateway_log();
        let material = log.lines().filter(|l| l.contains("certificate"));
        eprintln!(
            "B on its material:\n{}",
            material.collect::<Vec<_>>().join("\n")
        );
    }

    /// The serial of the certificate B's federation port serves now, seen by
    /// `openssl s_client` from A's gateway (as gateway A).
    fn served_serial(&self) -> String {
        let mut out = Output::spawn("openssl s_client", &mut self.s_client());
        out.wait_exit(DEADLINE);
        let text = out.text();
        let Some(begin) = text.find("-----BEGIN CERTIFICATE-----") else {
            return format!("no certificate served: {text}");
        };
        let end = text.find("-----END CERTIFICATE-----").unwrap() + 25;
        let mut x509 = Command::new("openssl")
            .args(["x509", "-noout", "-serial"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        x509.stdin
            .take()
            .unwrap()
            .write_all(&text.as_bytes()[begin..end])
            .unwrap();
        let serial = x509.wait_with_output().unwrap();
        String::from_utf8_lossy(&serial.stdout)
            .trim()
            .trim_start_matches("serial=")
            .to_owned()
    }

    /// `openssl s_client` in A's gateway namespace to B's federation port, TLS 1.3,
    /// ALPN `distgate/1`, presenting gateway A's certificate.
    fn s_client(&self) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.a.gw_ns(), "openssl", "s_client"])
            .args(["-connect", &format!("{}:{FEDERATION_PORT}", JOIN[1].0)])
            .args(["-tls1_3", "-alpn", "distgate/1", "-servername", "b.test"])
            .args(["-nocommands", "-cert"])
            .arg(&self.certs.a.cert)
            .arg("-key")
            .arg(&self.certs.a.key)
            .arg("-CAfile")
            .arg(&self.certs.ca);
        command
    }

    /// Two more gateways in A's namespace ask B for `b-1`: one whose certificate
    /// comes from another CA, one of B's CA whose identity B's `peers` lacks. Both get
    /// "not found", B counts them `untrusted` and `not_allowed`.
    fn strangers_are_refused_and_counted(&mut self) {
        let stranger_ca = Ca::new("another CA");
        let strangers = [
            ("untrusted", stranger_ca.issue(&gateway_id("a.test"), 7)),
            ("not_allowed", self.ca.issue(&gateway_id("c.test"), 8)),
        ];
        for (result, leaf) in strangers {
            let before = self.b.handshakes(result);
            let index = self.stranger(result, &leaf);
            let epmd: SocketAddr = "127.0.0.1:14369".parse().unwrap();
            assert_eq!(
                port_please_in(&self.a.gw_ns(), epmd, "b-1"),
                None,
                "a stranger ({result}) was given a port for b-1"
            );
            let now = self.b.handshakes_above(result, before);
            eprintln!(
                "B counted the stranger `{result}`: {} -> {}",
                before as u64, now as u64
            );
            self.a.pods.stop(index);
        }
    }

    /// B's `/refusals` lists the strangers (docs/federation.md): checked last, so the
    /// steps before it run whatever it finds.
    fn strangers_are_listed_in_refusals(&mut self) {
        let refusals = admin_in(&self.b.gw_ns(), "/refusals");
        for reason in ["federation_untrusted", "federation_not_allowed"] {
            assert!(
                refusals.contains(reason),
                "B's /refusals lacks {reason}:\n{refusals}"
            );
        }
    }

    /// A gateway in A's namespace (EPMD on 127.0.0.1:14369) with `leaf` as its
    /// certificate, trusting the real CA, federating `b-*` to B; its process index.
    fn stranger(&mut self, label: &str, leaf: &Leaf) -> usize {
        let files = leaf.write(&self.dir.join(""), &format!("stranger-{label}"));
        let config = self.dir.join(&format!("stranger-{label}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"
[epmd]
listen = ["127.0.0.1:14369"]
[dist]
listen = ["127.0.0.1"]
ports = [44001]
[admin]
listen = []
[[route]]
nodes = "b-*"
federate = "gw-b.fed.test:{FEDERATION_PORT}"
identity = "{b_id}"
[federation]
cert = "{cert}"
key = "{key}"
ca = "{ca}"
"#,
                b_id = gateway_id("b.test"),
                cert = files.cert.display(),
                key = files.key.display(),
                ca = self.certs.ca.display(),
            ),
        )
        .unwrap();
        let gw = self.a.gw;
        self.a
            .pods
            .distgate(gw, &format!("stranger gateway ({label})"), Some(&config))
    }

    /// A TCP peer that sends no ClientHello, a TLS peer (gateway A's certificate)
    /// that sends nothing, and one whose header stops after the name's length: B
    /// closes each at `handshake_timeout` and counts it `timeout`.
    fn silent_peers_and_endless_headers_close_at_the_deadline(&mut self) {
        let before = self.b.handshakes("timeout");
        let addr: SocketAddr = format!("{}:{FEDERATION_PORT}", JOIN[1].0).parse().unwrap();
        let (elapsed, ending) = in_netns(&self.a.gw_ns(), move || silent_tcp(addr));
        eprintln!("silent TCP peer: closed after {elapsed:?} ({ending})");
        assert_closed_in_time("a TCP peer sending nothing", elapsed);
        let before = self.b.handshakes_above("timeout", before);

        let elapsed = self.silent_tls(None);
        eprintln!("silent TLS peer: closed after {elapsed:?}");
        assert_closed_in_time("a TLS peer sending nothing", elapsed);
        let before = self.b.handshakes_above("timeout", before);

        // "DGF", version 1, connect, a name of 3 bytes… that never come.
        let elapsed = self.silent_tls(Some(b"DGF\x01\x02\x03"));
        eprintln!("endless header: closed after {elapsed:?}");
        assert_closed_in_time("a header that never ends", elapsed);
        self.b.handshakes_above("timeout", before);
        let log = self.b.gateway_log();
        assert!(
            !log.contains("\"level\":\"ERROR\""),
            "gateway B logged an error:\n{log}"
        );
    }

    /// Runs `openssl s_client` to B until its handshake is done, sends `header` (if
    /// any) and keeps its input open; how long from its start until B closed it.
    fn silent_tls(&self, header: Option<&[u8]>) -> Duration {
        let started = Instant::now();
        let (mut out, mut stdin) =
            Output::spawn_interactive("openssl s_client", &mut self.s_client());
        out.wait_line("the TLS handshake", DEADLINE, |l| {
            l.contains("SSL handshake has read")
        });
        if let Some(header) = header {
            stdin.write_all(header).unwrap();
            stdin.flush().unwrap();
        }
        out.wait_exit(HANDSHAKE_TIMEOUT + CLOSE_SLACK + DEADLINE);
        let elapsed = started.elapsed();
        drop(stdin);
        elapsed
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Print what the gateways said when a step failed: the first place to look.
        if std::thread::panicking() {
            for cluster in [&mut self.a, &mut self.b] {
                if cluster.gateway.is_some() {
                    let log = cluster.gateway_log();
                    let tail: Vec<&str> = log.lines().rev().take(60).collect();
                    eprintln!(
                        "--- gateway {} (last lines) ---\n{}",
                        cluster.letter,
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
            }
        }
    }
}

/// From namespace `from`, a TCP connection to `ip:port` on the joining link gets no
/// answer: `to`'s firewall dropped it (a negative, shown by waiting).
fn assert_blocked(from: &str, to: &str, ip: &str, port: u16) {
    // Something listens there, so only the firewall can keep the connection out.
    let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
    let listener = in_netns(to, move || std::net::TcpListener::bind(addr).unwrap());
    let result = in_netns(from, move || {
        TcpStream::connect_timeout(&addr, SETTLE * 2).map(|_| ())
    });
    drop(listener);
    let error = result.expect_err("the joining link let in a port other than 43690");
    assert_eq!(error.kind(), std::io::ErrorKind::TimedOut, "{error}");
}

/// A connection to the federation port that sends nothing: how long until it was
/// closed, and how.
fn silent_tcp(addr: SocketAddr) -> (Duration, String) {
    let mut stream = TcpStream::connect_timeout(&addr, DEADLINE).unwrap();
    let started = Instant::now();
    stream
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT + CLOSE_SLACK + DEADLINE))
        .unwrap();
    let mut buf = [0u8; 1024];
    let mut got = 0;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (started.elapsed(), format!("EOF after {got} bytes")),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (started.elapsed(), "reset".to_owned());
            }
            Err(e) => panic!("a silent TCP peer was not closed: {e}"),
        }
    }
}

fn assert_closed_in_time(what: &str, elapsed: Duration) {
    assert!(
        elapsed >= HANDSHAKE_TIMEOUT && elapsed < HANDSHAKE_TIMEOUT + CLOSE_SLACK,
        "{what} closed after {elapsed:?}, not at handshake_timeout ({HANDSHAKE_TIMEOUT:?})"
    );
}

/// PORT_PLEASE2 for `name` at the EPMD `epmd` in namespace `ns`: the port, or `None`
/// for "not found".
fn port_please_in(ns: &str, epmd: SocketAddr, name: &str) -> Option<u16> {
    let mut request = vec![b'z'];
    request.extend_from_slice(name.as_bytes());
    let reply = in_netns(ns, move || {
        let mut stream = TcpStream::connect(epmd).unwrap();
        stream.set_read_timeout(Some(node_deadline())).unwrap();
        stream.write_all(&message::frame(&request)).unwrap();
        let mut reply = vec![];
        stream.read_to_end(&mut reply).unwrap();
        reply
    });
    match reply.as_slice() {
        [b'w', 1] => None,
        [b'w', 0, hi, lo, ..] => Some(u16::from_be_bytes([*hi, *lo])),
        other => panic!("bad PORT2_RESP {other:?}"),
    }
}
