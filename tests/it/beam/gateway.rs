//! Gateway mode on loopback: a gateway distgate with a route `app-*` →
//! `{name}.cluster.test`, names resolved by a real DNS server (dnsmasq), and an
//! upstream "pod" (a distgate sidecar with a registered node). Routed names are
//! confirmed upstream, leased a public port, listed, forwarded, and given back when
//! they leave.
//!
//! Needs `dnsmasq`; with `CI=true` a missing one fails the test.

use crate::support;
use crate::support::dnsmasq::{dnsmasq, dnsmasq_srv};
use crate::support::*;
use distgate::route::{Glob, LeaseRule, Records, Route, Template, Upstream};
use std::process::Command;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_names_are_confirmed_leased_forwarded_and_given_back() {
    if !require(&["dnsmasq"]) {
        return;
    }
    // The upstream pod: a sidecar with node app-0 behind its public port.
    let upstream = InProcess::start(Options::default()).await;
    let node = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (registration, _) = register(
        upstream.epmd,
        &alive2("app-0", node.local_addr().unwrap().port()),
    )
    .await;

    let dns = dnsmasq(
        &[
            ("app-0.cluster.test", "127.0.0.1"),
            ("app-1.cluster.test", "127.0.0.1"),
        ],
        5,
    )
    .await;
    let mut options = templated("app-*", upstream.epmd.port(), dns.addr);
    options.config.dns.max_ttl = std::time::Duration::from_secs(1);
    let gateway = InProcess::start(options).await;

    // app-0 exists upstream: leased its home port, the pool's FNV-1a(name) mod 2-th.
    let home = LeaseRule::Hash.home("app-0", 2).index;
    let leased = port_please(gateway.epmd, "app-0").await;
    assert_eq!(leased, Some(gateway.public_ports[home]));
    assert_eq!(
        port_please(gateway.epmd, "app-0").await,
        leased,
        "the lease is sticky"
    );
    let (_, lines) = names(gateway.epmd).await;
    assert_eq!(
        lines,
        [format!("name app-0 at port {}", gateway.public_ports[home])]
    );
    // app-1 resolves but has no node upstream; web matches no route.
    assert_eq!(port_please(gateway.epmd, "app-1").await, None);
    assert_eq!(port_please(gateway.epmd, "web").await, None);

    // A connection to the leased port reaches the node through both distgates.
    let (mut client, mut at_node) =
        support::dist::link(gateway.public_addr(home), &node, "peer@127.0.0.1").await;
    client.write_all(b"through the gateway").await.unwrap();
    let mut got = [0u8; 19];
    at_node.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"through the gateway");
    at_node.write_all(b"back").await.unwrap();
    let mut back = [0u8; 4];
    client.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"back");

    // The node leaves upstream: the next lookup says "not found", the lease is gone.
    drop(registration);
    eventually("app-0 to be gone through the gateway", || async {
        port_please(gateway.epmd, "app-0")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    assert!(names(gateway.epmd).await.1.is_empty());
    assert!(gateway.leases().is_empty());

    // A lease nobody asks for again is reclaimed too: confirmed every `max_ttl`.
    let (again, _) = register(
        upstream.epmd,
        &alive2("app-0", node.local_addr().unwrap().port()),
    )
    .await;
    assert_eq!(port_please(gateway.epmd, "app-0").await, leased);
    drop(again);
    eventually("the unasked lease to be reclaimed", || async {
        gateway.leases().is_empty().then_some(())
    })
    .await;
    assert!(names(gateway.epmd).await.1.is_empty());
}

/// A gateway with two public ports and one route: `nodes` → `{name}.cluster.test`,
/// confirmed at the EPMD on `epmd_port`, resolved by the DNS server at `dns`.
fn templated(nodes: &str, epmd_port: u16, dns: std::net::SocketAddr) -> Options {
    let mut options = Options {
        pool: 2,
        ..Options::default()
    };
    options.config.routes = vec![Route {
        epmd_port,
        ..Route::new(
            Glob::new(nodes).unwrap(),
            Upstream::Host(Template::new("{name}.cluster.test").unwrap()),
        )
    }];
    options.config.dns.nameservers = vec![dns];
    options
}

/// The (sorted) names a NAMES reply lists.
async fn listed(epmd: std::net::SocketAddr) -> Vec<String> {
    let mut lines = names(epmd).await.1;
    lines.sort();
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_srv_discovery_route_lists_follows_and_forgets_names() {
    if !require(&["dnsmasq"]) {
        return;
    }
    let metrics = recorder();
    // Two upstream "pods", each a sidecar; app-0 and web on the first, app-1 on the
    // second. Fake nodes: listeners that take the forwarded connections.
    let pods = [
        InProcess::start(Options::default()).await,
        InProcess::start(Options::default()).await,
    ];
    let nodes = [
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    ];
    let port_of = |i: usize| nodes[i].local_addr().unwrap().port();
    let _app0 = register(pods[0].epmd, &alive2("app-0", port_of(0))).await;
    let _web = register(pods[0].epmd, &alive2("web", port_of(2))).await;
    let app1 = register(pods[1].epmd, &alive2("app-1", port_of(1))).await;

    let service = "_tcp-epmd._tcp.app.cluster.test";
    let dns = dnsmasq_srv(
        &[
            ("pod-0.app.cluster.test", "127.0.0.1"),
            ("pod-1.app.cluster.test", "127.0.0.1"),
        ],
        &[
            (service, "pod-0.app.cluster.test", pods[0].epmd.port()),
            (service, "pod-1.app.cluster.test", pods[1].epmd.port()),
        ],
        1,
    )
    .await;
    let mut options = Options {
        pool: 3,
        ..Options::default()
    };
    options.config.routes = vec![Route::new(
        Glob::new("app-*").unwrap(),
        Upstream::Discover {
            service: service.into(),
            records: Records::Srv,
        },
    )];
    options.config.dns.nameservers = vec![dns.addr];
    options.config.dns.min_ttl = std::time::Duration::from_millis(200);
    options.config.dns.timeout = std::time::Duration::from_millis(300);
    let gateway = InProcess::start(options).await;
    let ports = gateway.public_ports.clone();

    // Both app names are found and listed with leased ports; web matches no route.
    let both = eventually("both app names to be discovered", || async {
        let lines = listed(gateway.epmd).await;
        (lines.len() == 2).then_some(lines)
    })
    .await;
    let lease_of = |name: &str| {
        gateway
            .leases()
            .into_iter()
            .find(|l| l.routed.name == name)
            .map(|l| l.public_port)
    };
    let (p0, p1) = (lease_of("app-0").unwrap(), lease_of("app-1").unwrap());
    assert_eq!(
        both,
        [
            format!("name app-0 at port {p0}"),
            format!("name app-1 at port {p1}")
        ]
    );
    assert!(ports.contains(&p0) && ports.contains(&p1) && p0 != p1);
    assert_eq!(port_please(gateway.epmd, "app-0").await, Some(p0));
    assert_eq!(port_please(gateway.epmd, "app-9").await, None);
    assert_eq!(port_please(gateway.epmd, "web").await, None);

    // A connection to app-1's leased port reaches app-1's node through its pod.
    let reach = |port: u16, node: usize| {
        let nodes = &nodes;
        async move {
            let public = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let (mut client, mut at_node) =
                support::dist::link(public, &nodes[node], "peer@127.0.0.1").await;
            client.write_all(b"hello").await.unwrap();
            let mut got = [0u8; 5];
            at_node.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"hello");
        }
    };
    reach(p1, 1).await;

    // app-1 leaves its pod: dropped from NAMES and "not found" within the TTL.
    drop(app1);
    eventually("app-1 to be forgotten", || async {
        (listed(gateway.epmd).await.len() == 1).then_some(())
    })
    .await;
    assert_eq!(port_please(gateway.epmd, "app-1").await, None);
    assert_eq!(lease_of("app-1"), None);

    // app-1 comes back on the other pod: found there, and reached there.
    let _moved = register(pods[0].epmd, &alive2("app-1", port_of(1))).await;
    let p1 = eventually("app-1 to be found on pod 0", || async { lease_of("app-1") }).await;
    assert_eq!(port_please(gateway.epmd, "app-1").await, Some(p1));
    reach(p1, 1).await;

    // DNS goes away: the last good table stays (for `stale_for`), lookups fail.
    let failed = |text: &str| sample(text, "distgate_dns_lookups_total", &[("result", "error")]);
    let before = failed(&metrics.render()).unwrap_or(0.0);
    drop(dns);
    eventually("discovery lookups to fail twice", || async {
        (failed(&metrics.render()).unwrap_or(0.0) >= before + 2.0).then_some(())
    })
    .await;
    assert_eq!(
        listed(gateway.epmd).await.len(),
        2,
        "names lost with DNS down"
    );
    assert_eq!(port_please(gateway.epmd, "app-0").await, Some(p0));
    reach(p0, 0).await;
}

#[test]
fn a_real_node_reaches_a_routed_node_through_the_gateway() {
    use crate::support::beam::{IDLE, Output, erl, node_deadline};
    if !require(&["dnsmasq", "erl"]) {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let upstream = rt.block_on(InProcess::start(Options::default()));
    let b_short = unique("gb");
    let b_name = format!("{b_short}@127.0.0.1");
    let mut b = Output::spawn(
        "node b upstream",
        &mut erl(&b_name, upstream.epmd.port(), IDLE),
    );
    b.wait_for("READY", node_deadline());

    let dns = rt.block_on(dnsmasq(
        &[(&format!("{b_short}.cluster.test"), "127.0.0.1")],
        5,
    ));
    let options = templated("gb*", upstream.epmd.port(), dns.addr);
    let gateway = rt.block_on(InProcess::start(options));

    // Node a knows only the gateway's EPMD: b is found and reached through it.
    let eval = format!(
        "io:format(\"PING ~p~n\", [net_adm:ping('{b_name}')]),\
         io:format(\"RPC ~p~n\", [rpc:call('{b_name}', erlang, node, [])]),\
         halt()."
    );
    let a_name = format!("{}@127.0.0.1", unique("ga"));
    let mut a = Output::spawn("node a", &mut erl(&a_name, gateway.epmd.port(), &eval));
    assert_eq!(a.wait_for("PING ", node_deadline()), "pong");
    assert_eq!(a.wait_for("RPC ", node_deadline()), format!("'{b_name}'"));
    let leases = gateway.leases();
    assert_eq!(leases.len(), 1);
    // Node a registered with the gateway too: the pool serves both.
    assert_eq!(leases[0].routed.name, b_short);
    assert!(gateway.public_ports.contains(&leases[0].public_port));
    assert_eq!(
        leases[0].routed.dist_port, upstream.public_ports[0],
        "not the upstream's public port"
    );

    // `distgate probe` follows the same path: the gateway's EPMD, its leased port,
    // the upstream sidecar, the node, which answers as itself.
    let probe = Command::new(env!("CARGO_BIN_EXE_distgate"))
        .args([
            "probe",
            &b_name,
            "--epmd-port",
            &gateway.epmd.port().to_string(),
        ])
        .args(["--timeout", "3s"])
        .env_remove("ERL_EPMD_PORT")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&probe.stdout).into_owned()
        + &String::from_utf8_lossy(&probe.stderr);
    assert!(probe.status.success(), "{text}");
    assert!(
        text.contains(&format!("{b_short} on port {}", leases[0].public_port)),
        "{text}"
    );
    assert!(
        text.ends_with(&format!("ok: {b_name} answers as itself\n")),
        "{text}"
    );
}
