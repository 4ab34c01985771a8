//! The gateway's leases under pressure, on loopback: a lookup flood cannot take the
//! port of a name in use, unused leases go back when the pool is short, a routed lookup
//! is answered within `[dns] timeout` whatever its upstream does (and whatever
//! resolv.conf says), and shutdown does not wait for upstreams that never answer.

use crate::support;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;
use distgate::epmd::NodeInfo;
use distgate::epmd::message::{Port2Resp, encode_port2_resp};
use distgate::route::{Glob, Route, Template, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A gateway routing every `app-*` name to the EPMD at `epmd` on 127.0.0.1, with a
/// pool of `pool` public ports.
fn routed_to(epmd: u16, pool: usize, lease_idle: Duration) -> Options {
    let mut options = Options {
        pool,
        admin: true,
        ..Options::default()
    };
    options.config.routes = vec![Route {
        epmd_port: epmd,
        lease_idle,
        ..Route::new(
            Glob::new("app-*").unwrap(),
            Upstream::Host(Template::new("127.0.0.1").unwrap()),
        )
    }];
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_flood_cannot_take_the_port_of_a_name_in_use() {
    let metrics = recorder();
    let upstream = InProcess::start(Options::default()).await;
    let mut nodes = vec![];
    for i in 0..6 {
        nodes.push(fake_node(upstream.epmd, &format!("app-{i}")).await);
    }
    let idle = Duration::from_millis(500);
    let gateway = InProcess::start(routed_to(upstream.epmd.port(), 2, idle)).await;

    // app-0 is linked through the gateway.
    let port = port_please(gateway.epmd, "app-0")
        .await
        .expect("app-0 leased");
    let public = SocketAddr::from(([127, 0, 0, 1], port));
    let (mut client, mut at_node) =
        support::dist::link(public, &nodes[0].0, "peer@127.0.0.1").await;

    // A flood of lookups for every name, over and over.
    let mut answered = 0;
    for round in 0..50 {
        for i in 1..6 {
            if let Some(got) = port_please(gateway.epmd, &format!("app-{i}")).await {
                assert_ne!(got, port, "round {round}: app-{i} took app-0's port");
                answered += 1;
            }
        }
    }
    // app-0 keeps its port, its link flows, and a new connection to it works.
    assert_eq!(port_please(gateway.epmd, "app-0").await, Some(port));
    client.write_all(b"still here").await.unwrap();
    let mut got = [0u8; 10];
    at_node.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"still here");
    let (_second, _second_at_node) =
        support::dist::link(public, &nodes[0].0, "other@127.0.0.1").await;

    let text = metrics.render();
    let exhausted = sample(
        &text,
        "distgate_gateway_pool_exhausted_total",
        &[("route", "app-*")],
    );
    assert!(exhausted.unwrap_or(0.0) >= 1.0, "{text}");
    let no_port = sample(
        &text,
        "distgate_gateway_lookups_total",
        &[("route", "app-*"), ("result", "no_port")],
    );
    assert!(no_port.unwrap_or(0.0) >= 1.0, "{text}");
    eprintln!("{answered} of 250 flood lookups answered; app-0 kept port {port}");

    // Once the flood's leases sit unused past lease_idle, a name that never had one
    // gets the port it frees, and connects.
    let started = Instant::now();
    let freed = eventually("app-5 to be leased once the others sit idle", || async {
        port_please(gateway.epmd, "app-5").await
    })
    .await;
    assert!(
        started.elapsed() >= idle / 2,
        "leased before anything sat idle"
    );
    assert_ne!(freed, port);
    let freed = SocketAddr::from(([127, 0, 0, 1], freed));
    support::dist::link(freed, &nodes[5].0, "peer@127.0.0.1").await;
    let text = metrics.render();
    assert_eq!(
        sample(&text, "distgate_gateway_leases", &[("route", "app-*")]),
        Some(2.0),
        "{text}"
    );
    // `distgate nodes` shows the leases, app-0's with its link.
    let admin = gateway.admin.unwrap().to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_distgate"))
            .args(["nodes", "--admin", &admin])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} row:\n{table}"))
            .to_owned()
    };
    assert!(table.contains("LEASE"), "{table}");
    let app0: Vec<String> = row("app-0").split_whitespace().map(String::from).collect();
    assert_eq!(app0[1], port.to_string(), "{table}");
    assert_eq!(app0[4], "2", "app-0's two links:\n{table}");
    row("app-5");
}

/// An EPMD on `listener` that answers PORT_PLEASE2 for any name (port 1, the fields of
/// an OTP 26 node) while `answering`, and after that accepts, counts in `held` and
/// never says a word.
fn switchable_epmd(
    listener: std::net::TcpListener,
    answering: Arc<AtomicBool>,
    held: Arc<AtomicUsize>,
) {
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        let mut silent = vec![];
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            if !answering.load(Ordering::SeqCst) {
                silent.push(stream);
                held.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            std::thread::spawn(move || {
                let mut len = [0u8; 2];
                stream.read_exact(&mut len)?;
                let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
                stream.read_exact(&mut body)?;
                let name = String::from_utf8_lossy(body.get(1..).unwrap_or_default()).into_owned();
                let reply = encode_port2_resp(Some(&Port2Resp {
                    port: 1,
                    name,
                    info: NodeInfo::OTP23,
                }));
                stream.write_all(&reply)
            });
        }
    });
}

/// A gateway binary alone in a network namespace of its own (for what root alone can
/// set up: its own resolv.conf, its own port 4369).
struct Lone {
    pods: support::netns::Pods,
    pod: usize,
    ns: String,
    dir: std::path::PathBuf,
}

impl Lone {
    fn new(prefix: &str) -> Lone {
        let mut pods = support::netns::Pods::switched(&unique(prefix));
        let pod = pods.join("gw", "198.18.0.1", "127.0.0.1 localhost\n::1 localhost\n");
        let ns = pods.pods[pod].ns.clone();
        let dir = std::env::temp_dir().join(unique("distgate-lone-"));
        std::fs::create_dir_all(&dir).unwrap();
        Lone { pods, pod, ns, dir }
    }

    /// Starts the gateway with `config`; its index for `pods.output`.
    fn start(&mut self, config: &str) -> usize {
        let file = self.dir.join("gateway.toml");
        std::fs::write(&file, config).unwrap();
        self.pods.distgate(self.pod, "gateway", Some(&file))
    }
}

impl Drop for Lone {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// PORT_PLEASE2 for `name` at the EPMD on 127.0.0.1:4369 of namespace `ns`: the reply's
/// bytes and how long it took.
fn port_please_in(ns: &str, name: &str) -> (Vec<u8>, Duration) {
    use std::io::{Read, Write};
    let name = name.to_owned();
    support::netns::in_netns(ns, move || {
        let mut stream = std::net::TcpStream::connect("127.0.0.1:4369").unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut request = vec![0, name.len() as u8 + 1, 122];
        request.extend_from_slice(name.as_bytes());
        let started = Instant::now();
        stream.write_all(&request).unwrap();
        let mut reply = vec![];
        stream.read_to_end(&mut reply).unwrap();
        (reply, started.elapsed())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_upstreams_that_never_answer() {
    let answering = Arc::new(AtomicBool::new(true));
    let held = Arc::new(AtomicUsize::new(0));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let epmd = listener.local_addr().unwrap();
    switchable_epmd(listener, Arc::clone(&answering), Arc::clone(&held));
    let mut options = routed_to(epmd.port(), 20, Duration::from_secs(60));
    // Template leases are confirmed upstream every max_ttl: every second here.
    options.config.dns.max_ttl = Duration::from_secs(1);
    let mut gateway = InProcess::start(options).await;
    for i in 0..20 {
        let name = format!("app-{i}");
        assert!(port_please(gateway.epmd, &name).await.is_some(), "{name}");
    }
    assert_eq!(gateway.leases().len(), 20);
    // The upstream stops answering; the next confirmation round hangs on it.
    answering.store(false, Ordering::SeqCst);
    eventually(
        "a confirmation round to wait on the silent upstream",
        || async { (held.load(Ordering::SeqCst) > 0).then_some(()) },
    )
    .await;
    let asked = Instant::now();
    gateway.shutdown.cancel();
    let drain = tokio::time::timeout(Duration::from_secs(5), &mut gateway.task)
        .await
        .expect("the drain to end")
        .unwrap();
    let took = asked.elapsed();
    assert_eq!(drain, distgate::Drain::Complete);
    assert!(
        took < Duration::from_secs(1),
        "drain complete after {took:?}"
    );
    eprintln!("drain complete {took:?} after shutdown, 20 leases to a silent upstream");
}

#[test]
fn a_routed_lookup_is_answered_within_the_dns_timeout_whatever_resolv_conf_says() {
    use crate::support::netns::{in_netns, metrics_in};
    if !require(&["ip"]) || !require_root() {
        return;
    }
    let mut lone = Lone::new("dgd");
    // As slow as resolv.conf gets: a name server that never answers, 30 s a query, 5
    // attempts, and three search suffixes to try first (ndots:5, as Kubernetes).
    let resolv = "nameserver 127.0.0.1\nsearch a.test b.test c.test\noptions ndots:5 timeout:30 attempts:5\n";
    lone.pods.set_etc(lone.pod, "resolv.conf", resolv);
    let ns = lone.ns.clone();
    // In the namespace: the silent name server, and an EPMD that never answers.
    let (_dns, _epmd, epmd_port) = in_netns(&ns, || {
        let dns = std::net::UdpSocket::bind("127.0.0.1:53").unwrap();
        let epmd = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = epmd.local_addr().unwrap().port();
        (dns, epmd, port)
    });
    lone.start(&format!(
        "[dist]\nports = [\"43691-43692\"]\n\
         [[route]]\nnodes = \"slow-*\"\nupstream = \"{{name}}.app\"\n\
         [[route]]\nnodes = \"stuck-*\"\nupstream = \"127.0.0.1\"\nepmd_port = {epmd_port}\n"
    ));
    // `[dns] timeout` is 2 s: DNS gives up at three quarters of it (1.5 s, so that its
    // failure is remembered), the upstream's EPMD at the whole; a scheduler's slack on
    // top at most.
    for (name, least) in [("slow-0", 1400), ("stuck-0", 1900)] {
        let (reply, took) = port_please_in(&ns, name);
        assert_eq!(reply, [119, 1], "{name}: not answered \"not found\"");
        assert!(
            took >= Duration::from_millis(least) && took < Duration::from_millis(2500),
            "{name}: answered after {took:?}"
        );
        eprintln!("{name}: 77 01 after {took:?} ([dns] timeout 2 s)");
    }
    let text = metrics_in(&ns);
    for (route, result) in [("slow-*", "dns_error"), ("stuck-*", "timeout")] {
        let labels = [("route", route), ("result", result)];
        assert_eq!(
            sample(&text, "distgate_gateway_lookups_total", &labels),
            Some(1.0),
            "{route}: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_is_ready_only_once_its_discovery_routes_have_asked() {
    // A name server that never answers: the first refresh ends when its lookup gives
    // up, at three quarters of `[dns] timeout`.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut options = Options {
        admin: true,
        ..Options::default()
    };
    options.config.routes = vec![Route::new(
        Glob::new("app-*").unwrap(),
        Upstream::Discover {
            service: "app.cluster.test".into(),
            records: distgate::route::Records::A,
        },
    )];
    options.config.dns.nameservers = vec![silent.local_addr().unwrap()];
    options.config.dns.timeout = Duration::from_secs(1);
    let started = Instant::now();
    let gateway = InProcess::start(options).await;
    let admin = gateway.admin.unwrap();
    let (status, body) = http_get(admin, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("discover"), "{body}");
    eventually("ready once the first refresh has ended", || async {
        (http_get(admin, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    // The first refresh ends when its lookup gives up: three quarters of the timeout.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(700), "ready after {took:?}");
}

#[test]
fn sigterm_drains_at_once_with_twenty_leases_to_an_upstream_that_never_answers() {
    use crate::support::netns::in_netns;
    if !require(&["ip"]) || !require_root() {
        return;
    }
    let mut lone = Lone::new("dgs");
    let ns = lone.ns.clone();
    let listener = in_netns(&ns, || std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let epmd_port = listener.local_addr().unwrap().port();
    let answering = Arc::new(AtomicBool::new(true));
    let held = Arc::new(AtomicUsize::new(0));
    switchable_epmd(listener, Arc::clone(&answering), Arc::clone(&held));
    // Template leases are confirmed upstream every max_ttl: every second here.
    let gateway = lone.start(&format!(
        "[dist]\nports = [\"43691-43710\"]\n[dns]\nmax_ttl = \"1s\"\n\
         [[route]]\nnodes = \"app-*\"\nupstream = \"127.0.0.1\"\nepmd_port = {epmd_port}\n"
    ));
    for i in 0..20 {
        let (reply, _) = port_please_in(&ns, &format!("app-{i}"));
        assert_eq!(reply.get(..2), Some(&[119, 0][..]), "app-{i} not leased");
    }
    // The upstream stops answering; a confirmation round hangs on it.
    answering.store(false, Ordering::SeqCst);
    eventually_blocking(
        DEADLINE,
        "a confirmation round to wait on the upstream",
        || (held.load(Ordering::SeqCst) > 0).then_some(()),
    );
    let pid = lone.pods.output(gateway).process.pid();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let sent = Instant::now();
    (lone.pods.output(gateway)).wait_line("drain complete", DEADLINE, |l| {
        l.contains("\"drain complete\"")
    });
    let took = sent.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "drain complete {took:?} after SIGTERM"
    );
    eprintln!("drain complete {took:?} after SIGTERM, 20 leases to a silent upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_found_at_every_refresh_is_never_missing_between() {
    if !require(&["dnsmasq"]) {
        return;
    }
    let metrics = recorder();
    let upstream = InProcess::start(Options::default()).await;
    let (_node, _registration) = fake_node(upstream.epmd, "app-0").await;
    // TTL 0: the route refreshes every `min_ttl`, 100 ms.
    let dns = support::dnsmasq::dnsmasq(&[("app.cluster.test", "127.0.0.1")], 0).await;
    let mut options = Options {
        pool: 4,
        ..Options::default()
    };
    options.config.routes = vec![Route {
        epmd_port: upstream.epmd.port(),
        ..Route::new(
            Glob::new("app-*").unwrap(),
            Upstream::Discover {
                service: "app.cluster.test".into(),
                records: distgate::route::Records::A,
            },
        )
    }];
    options.config.dns.nameservers = vec![dns.addr];
    options.config.dns.min_ttl = Duration::from_millis(100);
    let gateway = InProcess::start(options).await;
    let port = eventually("app-0 discovered", || async {
        port_please(gateway.epmd, "app-0").await
    })
    .await;
    let refreshes =
        |text: &str| sample(text, "distgate_dns_lookups_total", &[("result", "ok")]).unwrap_or(0.0);
    let before = refreshes(&metrics.render());
    // Two askers for 3 s, across some 30 refreshes: every answer is app-0's port.
    let ask = |epmd| async move {
        let until = Instant::now() + Duration::from_secs(3);
        let mut answers = 0;
        while Instant::now() < until {
            assert_eq!(
                port_please(epmd, "app-0").await,
                Some(port),
                "after {answers}"
            );
            assert_eq!(names(epmd).await.1.len(), 1, "NAMES after {answers}");
            answers += 1;
        }
        answers
    };
    let (a, b) = tokio::join!(ask(gateway.epmd), ask(gateway.epmd));
    let during = refreshes(&metrics.render()) - before;
    assert!(during >= 10.0, "only {during} DNS answers in 3 s");
    eprintln!(
        "{} lookups and NAMES across {during} refreshes: app-0 always there",
        a + b
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_asked_in_opposite_orders_lease_the_same_ports() {
    let upstream = InProcess::start(Options::default()).await;
    // In a pool of 8, FNV-1a puts app-0, app-8 and app-15 at home 1, app-1, app-9 and
    // app-14 at home 6: two three-way collisions.
    let names: Vec<String> = ["app-0", "app-8", "app-15", "app-1", "app-9", "app-14"]
        .map(String::from)
        .into();
    let mut nodes = vec![];
    for name in &names {
        nodes.push(fake_node(upstream.epmd, name).await);
    }
    let idle = Duration::from_secs(60);
    let replicas = [
        InProcess::start(routed_to(upstream.epmd.port(), 8, idle)).await,
        InProcess::start(routed_to(upstream.epmd.port(), 8, idle)).await,
    ];
    // Each replica binds its own ports: compare places in the pool.
    let mut places = vec![];
    for (replica, order) in replicas.iter().zip([false, true]) {
        let mut asked = names.clone();
        if order {
            asked.reverse();
        }
        for name in &asked {
            assert!(port_please(replica.epmd, name).await.is_some(), "{name}");
        }
        let mut place: Vec<(String, usize)> = (replica.leases().into_iter())
            .map(|l| {
                let index = replica
                    .public_ports
                    .iter()
                    .position(|&p| p == l.public_port);
                (l.routed.name, index.unwrap())
            })
            .collect();
        place.sort();
        places.push(place);
    }
    assert_eq!(places[0], places[1]);
    // Placed by name, each on the first free port from its home: app-0 1, app-1 6,
    // app-14 7, app-15 2, app-8 3, app-9 (6 and 7 taken) wraps to 0.
    let expected = [
        ("app-0", 1),
        ("app-1", 6),
        ("app-14", 7),
        ("app-15", 2),
        ("app-8", 3),
        ("app-9", 0),
    ]
    .map(|(n, i)| (n.to_owned(), i));
    assert_eq!(places[0], expected);
}
