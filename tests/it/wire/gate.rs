//! The gate as the operator lives with it and as a hostile filler plays it, in this
//! process on loopback: loopback is not trusted here, and callers bind source
//! addresses of their own in 127.0.0.0/8 to stand for other pods. A guesser is still
//! banned after the ban table was filled by 16,400 sources; bans are listed and lifted
//! (`/bans`, `DELETE /bans`, `distgate unban`); `/refusals` names every refusal with
//! its reason. Real nodes and the binary: `tests/it/beam/gate.rs`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::support::dist::client_hello;
use crate::support::*;
use distgate::handshake::{OTP25_FLAGS, encode_send_name};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// A distgate (admin on) where loopback stands for other pods, `tune` applied, a
/// fake node `app` registered.
async fn start(tune: impl FnOnce(&mut Options)) -> (InProcess, tokio::net::TcpListener, TcpStream) {
    let mut options = Options {
        admin: true,
        ..Options::default()
    };
    options.config.dist.trusted = distgate::config::Peers::Only {
        local: false,
        nets: vec![],
    };
    tune(&mut options);
    let dg = InProcess::start(options).await;
    let (node, registration) = fake_node(dg.epmd, "app").await;
    (dg, node, registration)
}

async fn metric(dg: &InProcess, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, text) = http_get(dg.admin.unwrap(), "/metrics").await;
    sample(&text, name, labels).unwrap_or(0.0)
}

/// A connection to `public` from `source`.
async fn connect_from(source: Ipv4Addr, public: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source.into(), 0)).unwrap();
    socket.connect(public).await.unwrap()
}

/// Bytes that are no dist handshake, from `source`; what came back before the close.
async fn junk_from(source: Ipv4Addr, public: SocketAddr) -> Vec<u8> {
    let mut stream = connect_from(source, public).await;
    // A banned source is closed at accept: the write may meet the reset.
    let _ = stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await;
    read_to_close(&mut stream).await
}

async fn json(dg: &InProcess, path: &str) -> serde_json::Value {
    let (status, body) = http_get(dg.admin.unwrap(), path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// The filler of the ban table: 16,400 sources, one bad handshake each, each banned
/// at once (`failures = 1`). Before, the full table refused every new entry and the
/// guesser that came next was never banned. Now the bans fold into /24s and the
/// guesser is banned after its one failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guesser_is_banned_after_a_16_400_source_fill() {
    const FILL: u32 = 16_400;
    let (dg, _node, _registration) = start(|o| o.config.dist.ban.failures = 1).await;
    let public = dg.public_addr(0);
    let started = std::time::Instant::now();
    let mut fillers = tokio::task::JoinSet::new();
    for lane in 0..32u32 {
        fillers.spawn(async move {
            for n in (lane..FILL).step_by(32) {
                junk_from(Ipv4Addr::from(0x7f01_0000 + n), public).await;
            }
        });
    }
    while let Some(done) = fillers.join_next().await {
        done.unwrap();
    }
    let failed = [("node", "app"), ("result", "failed")];
    let banned = [("listener", "dist"), ("reason", "banned")];
    // Fillers that came after their /24 was folded are closed at accept already.
    let (failures, refusals) = eventually("every filler counted", || async {
        let failures = metric(&dg, "distgate_dist_handshakes_total", &failed).await;
        let refusals = metric(&dg, "distgate_connections_refused_total", &banned).await;
        (failures + refusals == f64::from(FILL)).then_some((failures, refusals))
    })
    .await;
    eprintln!(
        "{FILL} sources filled the table in {:?}: {failures} failed, {refusals} closed at accept",
        started.elapsed()
    );
    assert!(
        failures > 16_384.0,
        "{failures} failures: the table was never full"
    );

    let guesser = Ipv4Addr::new(127, 2, 0, 1);
    assert!(junk_from(guesser, public).await.is_empty());
    assert!(junk_from(guesser, public).await.is_empty());
    assert_eq!(
        metric(&dg, "distgate_dist_handshakes_total", &failed).await,
        failures + 1.0,
        "the guesser's second attempt reached the handshake"
    );
    assert_eq!(
        metric(&dg, "distgate_connections_refused_total", &banned).await,
        refusals + 1.0,
        "the guesser was not banned after its one failure"
    );
    // A filler is still banned: by the /24 its ban folded into.
    junk_from(Ipv4Addr::from(0x7f01_0005), public).await;
    assert_eq!(
        metric(&dg, "distgate_connections_refused_total", &banned).await,
        refusals + 2.0
    );
    let bans = json(&dg, "/bans").await;
    let bans = bans["bans"].as_array().unwrap();
    assert!(bans.len() <= 16_384);
    assert!(bans.iter().any(|b| b["source"] == "127.2.0.1"), "{bans:?}");
    let folded = bans.iter().find(|b| b["source"] == "127.1.0.0/24").unwrap();
    assert!(folded["sources"].as_u64().unwrap() > 1, "{folded}");
    let sources: u64 = bans.iter().map(|b| b["sources"].as_u64().unwrap()).sum();
    assert_eq!(
        metric(&dg, "distgate_dist_banned_sources", &[]).await,
        sources as f64,
        "the gauge counts the sources of the bans listed"
    );
    let evicted = [("reason", "evicted")];
    assert_eq!(
        metric(&dg, "distgate_dist_bans_lifted_total", &evicted).await,
        0.0,
        "every ban folded: none lifted early"
    );
}

/// A ban is listed, lifted by address from loopback (the gauge drops, the source gets
/// in again), and `distgate unban all` lifts what is left.
#[tokio::test]
async fn bans_are_listed_and_lifted() {
    let (dg, _node, _registration) = start(|o| o.config.dist.ban.failures = 2).await;
    let (public, admin) = (dg.public_addr(0), dg.admin.unwrap());
    let source = Ipv4Addr::new(127, 3, 0, 7);
    junk_from(source, public).await;
    junk_from(source, public).await;
    junk_from(source, public).await;
    let banned = [("listener", "dist"), ("reason", "banned")];
    assert_eq!(
        metric(&dg, "distgate_connections_refused_total", &banned).await,
        1.0
    );
    let bans = json(&dg, "/bans").await;
    assert_eq!(bans["bans"][0]["source"], "127.3.0.7", "{bans}");
    assert_eq!(bans["bans"][0]["failures"], 2, "{bans}");
    let table = distgate::api::client::bans(admin, DEADLINE).await.unwrap();
    assert!(table.starts_with("SOURCE  "), "{table}");
    assert!(table.contains("\n127.3.0.7  2 "), "{table}");

    assert_eq!(http(admin, "DELETE", "/bans/127.3.0.9").await.0, 404);
    assert_eq!(http(admin, "DELETE", "/bans/not-an-address").await.0, 400);
    assert_eq!(http(admin, "DELETE", "/links").await.0, 405);
    assert_eq!(metric(&dg, "distgate_dist_banned_sources", &[]).await, 1.0);
    let (status, body) = http(admin, "DELETE", "/bans/127.3.0.7").await;
    assert_eq!((status, body.trim()), (200, r#"{"lifted":["127.3.0.7"]}"#));
    assert_eq!(metric(&dg, "distgate_dist_banned_sources", &[]).await, 0.0);
    let operator = [("reason", "operator")];
    assert_eq!(
        metric(&dg, "distgate_dist_bans_lifted_total", &operator).await,
        1.0
    );
    // In again: its next bad handshake is read, not closed at accept.
    junk_from(source, public).await;
    assert_eq!(
        metric(&dg, "distgate_connections_refused_total", &banned).await,
        1.0
    );

    let other = Ipv4Addr::new(127, 3, 0, 8);
    junk_from(other, public).await;
    junk_from(other, public).await;
    let lifted = distgate::api::client::unban(admin, "all", DEADLINE).await;
    assert_eq!(lifted.unwrap(), (true, "lifted: 127.3.0.8".to_owned()));
    let none = distgate::api::client::unban(admin, "127.3.0.8", DEADLINE).await;
    let (lifted, line) = none.unwrap();
    assert!(!lifted && line.contains("no ban holds 127.3.0.8"), "{line}");
    let table = distgate::api::client::bans(admin, DEADLINE).await.unwrap();
    assert_eq!(table, "no bans\n");
}

/// Every way a caller is turned away lands in `/refusals`, newest first, with its
/// reason, the node it asked for and the name it claimed.
#[tokio::test]
async fn refusals_name_each_refusal_with_its_reason() {
    let (dg, _node, _registration) = start(|o| {
        let text = "[dist]\nallow_peers = [\"good-*@*\"]";
        o.config.dist.allow_peers = distgate::config::parse(text).unwrap().dist.allow_peers;
        o.config.dist.tls = distgate::config::Tls::Deny;
        o.config.dist.first_frame_timeout = Duration::from_millis(500);
        o.config.dist.ban.failures = 0;
        o.pool = 3;
    })
    .await;
    let (_ghost, _) = register(dg.epmd, &alive2("ghost", free_port())).await;
    eventually("ghost registered", || async {
        dg.registry.get("ghost").map(|_| ())
    })
    .await;
    let source = Ipv4Addr::new(127, 4, 0, 1);

    let mut evil = connect_from(source, dg.public_addr(0)).await;
    let long = format!("evil-{}@h", "x".repeat(400));
    evil.write_all(&encode_send_name(&long, OTP25_FLAGS, 1))
        .await
        .unwrap();
    assert_eq!(read_to_close(&mut evil).await, b"\x00\x0csnot_allowed");
    junk_from(source, dg.public_addr(0)).await;
    let mut tls = connect_from(source, dg.public_addr(0)).await;
    tls.write_all(&client_hello()).await.unwrap();
    read_to_close(&mut tls).await;
    let mut silent = connect_from(source, dg.public_addr(0)).await;
    read_to_close(&mut silent).await;
    let mut to_ghost = connect_from(source, dg.public_addr(1)).await;
    let _ = (to_ghost.write_all(&encode_send_name("good-1@h", OTP25_FLAGS, 1))).await;
    read_to_close(&mut to_ghost).await;
    junk_from(source, dg.public_addr(2)).await;

    let answer = json(&dg, "/refusals").await;
    let refusals = answer["refusals"].as_array().unwrap();
    let seen: Vec<(&str, &str, Option<&str>)> = (refusals.iter())
        .map(|r| {
            assert_eq!(r["source"], "127.4.0.1", "{r}");
            (
                r["reason"].as_str().unwrap(),
                r["node"].as_str().unwrap(),
                r["claimed"].as_str(),
            )
        })
        .collect();
    let cut: String = long.chars().take(255).collect();
    assert_eq!(
        seen,
        [
            ("no_node", "", None),
            ("upstream_refused", "ghost", Some("good-1@h")),
            ("timeout", "app", None),
            ("tls_denied", "app", None),
            ("not_a_handshake", "app", None),
            ("not_allowed", "app", Some(cut.as_str())),
        ],
        "{answer}"
    );
    let table = distgate::api::client::refusals(dg.admin.unwrap(), DEADLINE)
        .await
        .unwrap();
    assert!(table.starts_with("AGO  "), "{table}");
    let row = (table.lines())
        .find(|l| l.ends_with("upstream_refused"))
        .unwrap();
    let cells: Vec<&str> = row.split_whitespace().skip(1).collect();
    assert_eq!(
        cells,
        ["1", "127.4.0.1", "ghost", "good-1@h", "upstream_refused"]
    );
    let evil = (table.lines())
        .find(|l| l.ends_with("not_allowed"))
        .unwrap();
    assert!(evil.contains(&format!(" {}… ", &cut[..63])), "{table}");
    assert!(table.contains("reasons: not_allowed = "), "{table}");
}

/// `[dist] max_connections` refusals land in `/refusals` too, with the node of the
/// port that was dialled.
#[tokio::test]
async fn a_full_listener_is_named_in_refusals() {
    let (dg, _node, _registration) = start(|o| {
        o.config.dist.max_connections = 1.try_into().unwrap();
        o.config.dist.first_frame_timeout = Duration::from_secs(30);
    })
    .await;
    let _held = TcpStream::connect(dg.public_addr(0)).await.unwrap();
    eventually("a connection refused at max_connections", || async {
        let mut more = TcpStream::connect(dg.public_addr(0)).await.unwrap();
        read_to_close(&mut more).await;
        let answer = json(&dg, "/refusals").await;
        let first = &answer["refusals"][0];
        (first["reason"] == "max_connections" && first["node"] == "app").then_some(())
    })
    .await;
    let localhost: IpAddr = Ipv4Addr::LOCALHOST.into();
    let answer = json(&dg, "/refusals").await;
    assert_eq!(answer["refusals"][0]["source"], localhost.to_string());
}
