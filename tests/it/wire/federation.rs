//! Federation on loopback, in this process: gateway A routes `b-*` to gateway B over
//! mutual TLS; B has node b-1 registered. Lookups cross, links cross with their bytes,
//! both gateways list and count them; gateways with a certificate of another CA, or
//! with an identity B's `peers` does not admit, are refused and counted; a peer that
//! stays silent, or whose request never ends, is closed at `handshake_timeout`.

use std::time::{Duration, Instant};

use crate::support::pki::{Ca, Files};
use crate::support::*;
use distgate::route::{Federate, Glob, Route, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const A_ID: &str = "spiffe://a.test/ns/distgate/sa/gateway";
const B_ID: &str = "spiffe://b.test/ns/distgate/sa/gateway";
/// B's `peers` glob that admits A: B's label for A.
const A_PEERS: &str = "spiffe://a.test/*";

/// Gateway B (serving federation, node b-1 behind it) and gateway A (routing `b-*` to
/// B), sharing one CA.
struct Pair {
    dir: TempDir,
    ca: Ca,
    a: InProcess,
    b: InProcess,
    node: TcpListener,
    _registration: TcpStream,
}

async fn pair(handshake_timeout: Duration) -> Pair {
    let dir = TempDir::new("distgate-federation-");
    let ca = Ca::new("federation test CA");
    let a_files = ca.write(dir.join("").as_path(), "a", A_ID, 1);
    let b_files = ca.write(dir.join("").as_path(), "b", B_ID, 2);
    let mut b = Options {
        admin: true,
        ..Options::default()
    };
    b.config.federation = b_files.federation();
    b.config.federation.listen = vec!["127.0.0.1:0".parse().unwrap()];
    b.config.federation.peers = vec![A_PEERS.into()];
    b.config.federation.handshake_timeout = handshake_timeout;
    b.config.federation.watch_every = Duration::from_millis(100);
    let b = InProcess::start(b).await;
    let node = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (registration, _) =
        register(b.epmd, &alive2("b-1", node.local_addr().unwrap().port())).await;
    let mut a = Options {
        admin: true,
        pool: 2,
        ..Options::default()
    };
    a.config.federation = a_files.federation();
    let federate = Federate::new(&b.federation.unwrap().to_string(), Some(B_ID.into())).unwrap();
    a.config.routes = vec![Route::new(
        Glob::new("b-*").unwrap(),
        Upstream::Federate(federate),
    )];
    let a = InProcess::start(a).await;
    Pair {
        dir,
        ca,
        a,
        b,
        node,
        _registration: registration,
    }
}

async fn metrics(of: &InProcess) -> String {
    http_get(of.admin.unwrap(), "/metrics").await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_and_links_cross_between_gateways() {
    let p = pair(Duration::from_secs(5)).await;
    // A asks B: b-1 lives there, b-9 does not.
    let port = port_please(p.a.epmd, "b-1").await.expect("b-1 leased at A");
    assert!(p.a.public_ports.contains(&port));
    assert_eq!(port_please(p.a.epmd, "b-9").await, None);

    // A link through A's public port reaches the node behind B, both ways.
    let public = std::net::SocketAddr::new([127, 0, 0, 1].into(), port);
    let (mut caller, mut at_node) =
        crate::support::dist::link(public, &p.node, "peer@a.test").await;
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        caller.write_all(&sent).await.unwrap();
        caller
    });
    let mut got = vec![0u8; payload.len()];
    at_node.read_exact(&mut got).await.unwrap();
    assert!(got == payload, "the bytes arrived as sent");
    let mut caller = writer.await.unwrap();
    at_node.write_all(b"back across").await.unwrap();
    let mut back = [0u8; 11];
    caller.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"back across");

    // Both gateways list the link with its peer gateway, and count it.
    let (_, links_a) = http_get(p.a.admin.unwrap(), "/links").await;
    assert!(
        links_a.contains(B_ID) && links_a.contains("federation_out"),
        "{links_a}"
    );
    let (_, links_b) = http_get(p.b.admin.unwrap(), "/links").await;
    assert!(
        links_b.contains(A_ID)
            && links_b.contains("federation_in")
            && links_b.contains(&format!(
                "\"public_port\":{}",
                p.b.federation.unwrap().port()
            )),
        "{links_b}"
    );
    let m = metrics(&p.b).await;
    let open = sample(&m, "distgate_federation_links_open", &[("peer", A_PEERS)]);
    assert_eq!(open, Some(1.0), "{m}");
    let ok = [("peer", A_PEERS), ("side", "server"), ("result", "ok")];
    assert!(sample(&m, "distgate_federation_handshakes_total", &ok) >= Some(2.0));
    let looked = [("peer", A_PEERS), ("side", "server"), ("result", "ok")];
    assert!(sample(&m, "distgate_federation_lookups_total", &looked) >= Some(1.0));

    // A half-close crosses: the caller stops sending, the node sees the end and can
    // still answer; then the link closes on both gateways.
    caller.shutdown().await.unwrap();
    let mut rest = vec![];
    at_node.read_to_end(&mut rest).await.unwrap();
    at_node.write_all(b"last").await.unwrap();
    drop(at_node);
    let mut last = vec![];
    caller.read_to_end(&mut last).await.unwrap();
    assert_eq!(last, b"last");
    eventually("the link to close at B", || async {
        let m = metrics(&p.b).await;
        let open = sample(&m, "distgate_federation_links_open", &[("peer", A_PEERS)]);
        (open == Some(0.0)).then_some(())
    })
    .await;
    let m = metrics(&p.b).await;
    let received = sample(
        &m,
        "distgate_federation_received_bytes_total",
        &[("peer", A_PEERS)],
    );
    assert!(received >= Some(1_000_000.0), "{received:?}");
}

/// Gateway C dials B with `files`; how B counts it.
async fn dial_as(p: &Pair, files: &Files, expect: &str) {
    let mut c = Options::default();
    c.config.federation = files.federation();
    let federate = Federate::new(&p.b.federation.unwrap().to_string(), Some(B_ID.into())).unwrap();
    c.config.routes = vec![Route::new(
        Glob::new("b-*").unwrap(),
        Upstream::Federate(federate),
    )];
    let c = InProcess::start(c).await;
    assert_eq!(
        port_please(c.epmd, "b-1").await,
        None,
        "{expect}: nothing found"
    );
    eventually(&format!("B to count a {expect} handshake"), || async {
        let m = metrics(&p.b).await;
        let labels = [("peer", "unknown"), ("side", "server"), ("result", expect)];
        (sample(&m, "distgate_federation_handshakes_total", &labels) >= Some(1.0)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_of_another_ca_or_not_in_peers_are_refused_and_counted() {
    let p = pair(Duration::from_secs(5)).await;
    let other = Ca::new("another CA");
    // C's own CA file trusts B's CA (so only B's verdict counts): append it.
    let untrusted = other.write(p.dir.join("").as_path(), "c", A_ID, 3);
    std::fs::write(&untrusted.ca, p.ca.pem()).unwrap();
    dial_as(&p, &untrusted, "untrusted").await;
    let stranger = p.ca.write(
        p.dir.join("").as_path(),
        "d",
        "spiffe://c.test/ns/x/sa/gw",
        4,
    );
    dial_as(&p, &stranger, "not_allowed").await;
    // A itself still gets through.
    assert!(port_please(p.a.epmd, "b-1").await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_and_an_endless_request_are_closed_at_the_deadline() {
    let limit = Duration::from_millis(800);
    let p = pair(limit).await;
    let b = p.b.federation.unwrap();
    // Silent: TCP and nothing more.
    let started = Instant::now();
    let mut silent = TcpStream::connect(b).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf)).await;
    let waited = started.elapsed();
    assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "closed by B: {n:?}");
    assert!(
        waited >= limit && waited < limit * 5,
        "closed after {waited:?}"
    );

    // Endless: TLS done with A's certificate, then a request that never ends.
    let files = Files {
        cert: p.dir.join("a.crt"),
        key: p.dir.join("a.key"),
        ca: p.dir.join("a-ca.crt"),
    };
    let material = distgate::federation::Material::load(&distgate::federation::Paths {
        cert: files.cert.clone(),
        key: files.key.clone(),
        ca: files.ca.clone(),
    })
    .unwrap();
    let connector = tokio_rustls::TlsConnector::from(material.client(B_ID).unwrap());
    let started = Instant::now();
    let tcp = TcpStream::connect(b).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("b.test").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"DGF\x01\x02\x05b-").await.unwrap();
    tls.flush().await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await;
    let waited = started.elapsed();
    assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "closed by B: {n:?}");
    assert!(
        waited >= limit && waited < limit * 5,
        "closed after {waited:?}"
    );
    eventually("B to count both as timeouts", || async {
        let m = metrics(&p.b).await;
        let unknown = [
            ("peer", "unknown"),
            ("side", "server"),
            ("result", "timeout"),
        ];
        let known = [("peer", A_PEERS), ("side", "server"), ("result", "timeout")];
        let both = sample(&m, "distgate_federation_handshakes_total", &unknown) >= Some(1.0)
            && sample(&m, "distgate_federation_handshakes_total", &known) >= Some(1.0);
        both.then_some(())
    })
    .await;
}

/// The serial of the certificate B serves now, as a peer gateway sees it.
async fn served_serial(p: &Pair) -> String {
    let material = distgate::federation::Material::load(&distgate::federation::Paths {
        cert: p.dir.join("a.crt"),
        key: p.dir.join("a.key"),
        ca: p.dir.join("a-ca.crt"),
    })
    .unwrap();
    let connector = tokio_rustls::TlsConnector::from(material.client(B_ID).unwrap());
    let tcp = TcpStream::connect(p.b.federation.unwrap()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("b.test").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let leaf = &tls.get_ref().1.peer_certificates().unwrap()[0];
    distgate::federation::identity::names(leaf).unwrap().serial
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_an_open_link_and_a_broken_file_keeps_the_old() {
    let p = pair(Duration::from_secs(5)).await;
    let port = port_please(p.a.epmd, "b-1").await.unwrap();
    let public = std::net::SocketAddr::new([127, 0, 0, 1].into(), port);
    let (mut caller, mut at_node) =
        crate::support::dist::link(public, &p.node, "peer@a.test").await;
    assert_eq!(served_serial(&p).await, "02");

    // A new certificate (serial 22) and key, swapped in as Kubernetes does: the files
    // replaced whole by a rename.
    let (cert, key) = p.ca.leaf(B_ID, 0x22);
    std::fs::write(p.dir.join("b.crt.new"), cert).unwrap();
    std::fs::write(p.dir.join("b.key.new"), key).unwrap();
    std::fs::rename(p.dir.join("b.key.new"), p.dir.join("b.key")).unwrap();
    std::fs::rename(p.dir.join("b.crt.new"), p.dir.join("b.crt")).unwrap();
    eventually("B to serve the new certificate", || async {
        (served_serial(&p).await == "22").then_some(())
    })
    .await;
    // The link opened before goes on, both ways.
    caller.write_all(b"still here").await.unwrap();
    let mut got = [0u8; 10];
    at_node.read_exact(&mut got).await.unwrap();
    at_node.write_all(b"yes").await.unwrap();
    let mut back = [0u8; 3];
    caller.read_exact(&mut back).await.unwrap();
    assert_eq!((&got, &back), (b"still here", b"yes"));

    // A certificate file that does not parse: the old material stays, counted once
    // (a poll that caught the key renamed before the certificate counted one before).
    let errors = |m: &str| {
        sample(
            m,
            "distgate_federation_certificate_reloads_total",
            &[("result", "error")],
        )
        .unwrap_or(0.0)
    };
    let before = errors(&metrics(&p.b).await);
    std::fs::write(p.dir.join("b.crt"), "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    eventually("B to count the broken file", || async {
        (errors(&metrics(&p.b).await) == before + 1.0).then_some(())
    })
    .await;
    assert_eq!(served_serial(&p).await, "22");
    assert!(port_please(p.a.epmd, "b-1").await.is_some());
    assert_eq!(
        errors(&metrics(&p.b).await),
        before + 1.0,
        "logged and counted once"
    );
    assert!(
        port_please(p.a.epmd, "b-1").await.is_some(),
        "A still gets through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_cannot_hold_every_federation_slot_before_its_handshake() {
    let p = pair(Duration::from_secs(30)).await;
    let b = p.b.federation.unwrap();
    // 64 connections from 127.0.0.1 that never start TLS hold their places...
    let mut held = vec![];
    for _ in 0..64 {
        held.push(TcpStream::connect(b).await.unwrap());
    }
    eventually("B to hold 64 federation connections", || async {
        let m = metrics(&p.b).await;
        let open = sample(
            &m,
            "distgate_connections_open",
            &[("listener", "federation")],
        );
        (open == Some(64.0)).then_some(())
    })
    .await;
    // ...and the 65th is closed at once, long before `handshake_timeout`.
    let mut extra = TcpStream::connect(b).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(10), extra.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed: {read:?}");
    let m = metrics(&p.b).await;
    let refused = [("listener", "federation"), ("reason", "per_source")];
    assert_eq!(
        sample(&m, "distgate_connections_refused_total", &refused),
        Some(1.0)
    );
    // A itself, from the same address, waits for a place: one frees when a holder goes.
    held.truncate(10);
    assert!(port_please(p.a.epmd, "b-1").await.is_some());
}
