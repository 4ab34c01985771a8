//! Admission by source address, from other network namespaces (loopback and the pod's
//! own address are exempt, so these need real topology): a real OTP node guessing
//! with the wrong cookie is banned after `[dist.ban] failures` while a node with the
//! right cookie from another address reconnects 1,000 times untouched, and one
//! address holds at most `[dist] max_per_source` connections.
//!
//! Needs root, `ip` and `erl`; with `CI=true` a missing one fails the test.

use std::io::Read;
use std::net::TcpStream as StdStream;
use std::time::{Duration, Instant};

use crate::support::beam::{COOKIE, IDLE, node_deadline};
use crate::support::netns::{Pods, in_netns, metrics_in};
use crate::support::*;

const NODE_IP: &str = "198.18.0.1";
const GUESSER_IP: &str = "198.18.0.2";
const FRIEND_IP: &str = "198.18.0.3";
const FAILURES: u32 = 5;

fn hosts(id: &str) -> String {
    format!(
        "127.0.0.1 localhost\n{NODE_IP} node.{id}.test\n{GUESSER_IP} guesser.{id}.test\n\
         {FRIEND_IP} friend.{id}.test\n"
    )
}

/// Three pods on one switch: the node's (0), the guesser's (1), the friend's (2); and
/// a folder for their configurations.
fn world(prefix: &str) -> (String, std::path::PathBuf, Pods) {
    let id = unique(prefix);
    let dir = std::env::temp_dir().join(&id);
    std::fs::create_dir_all(&dir).unwrap();
    let mut pods = Pods::switched(&id);
    for (name, ip) in [
        ("node", NODE_IP),
        ("guesser", GUESSER_IP),
        ("friend", FRIEND_IP),
    ] {
        pods.join(name, ip, &hosts(&id));
    }
    (id, dir, pods)
}

fn config(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let path = dir.join(unique("distgate-") + ".toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// An `erl` in `pod` named `name` with `cookie`, running `eval`.
fn erl(pods: &Pods, pod: usize, name: &str, cookie: &str, eval: &str) -> std::process::Command {
    let mut command = pods.command(pod, "erl");
    command
        .args(["-noshell", "-name", name, "-setcookie", cookie])
        .args(["-start_epmd", "false", "-eval", eval]);
    command
}

#[test]
fn a_cookie_guesser_is_banned_and_a_rightful_peer_never_refused() {
    if !require(&["erl", "ip"]) || !require_root() {
        return;
    }
    let (id, dir, mut pods) = world("dgb");
    let (node_pod, guesser, friend) = (0, 1, 2);
    let ban = format!("[dist.ban]\nfailures = {FAILURES}\nwithin = \"1m\"\nduration = \"10m\"\n");
    let dg = pods.distgate(node_pod, "distgate of the node", Some(&config(&dir, &ban)));
    let pid = pods.output(dg).process.pid();
    let target = format!("n@node.{id}.test");
    pods.idle_node(node_pod, &target);
    pods.distgate(guesser, "distgate of the guesser", None);
    pods.distgate(friend, "distgate of the friend", None);

    // The guesser: the wrong cookie, again and again.
    let guess = format!(
        "[net_adm:ping('{target}') || _ <- lists:seq(1, 30)], io:format(\"GUESSED~n\"), halt()."
    );
    let mut guessing = erl(
        &pods,
        guesser,
        &format!("g@guesser.{id}.test"),
        "wrong",
        &guess,
    );
    let guessing = pods.spawn("guesser", &mut guessing);
    // The friend, meanwhile: the right cookie, 1,000 links made and dropped.
    let reconnect = format!(
        "N = '{target}', \
         Pongs = length([x || _ <- lists:seq(1, 1000), \
           begin R = net_adm:ping(N), erlang:disconnect_node(N), R =:= pong end]), \
         io:format(\"PONGS ~p~n\", [Pongs]), halt()."
    );
    let mut reconnecting = erl(
        &pods,
        friend,
        &format!("f@friend.{id}.test"),
        COOKIE,
        &reconnect,
    );
    let reconnecting = pods.spawn("friend", &mut reconnecting);

    let started = Instant::now();
    let banned = pods
        .output(dg)
        .wait_line("the guesser banned", node_deadline(), |l| {
            l.contains("source banned") && l.contains(GUESSER_IP)
        });
    eprintln!(
        "guesser banned {:?} after it started: {banned}",
        started.elapsed()
    );
    pods.output(guessing)
        .wait_for("GUESSED", node_deadline() * 3);
    let pongs = pods
        .output(reconnecting)
        .wait_for("PONGS", node_deadline() * 6);
    let text = metrics_in(&pods.pods[node_pod].ns);
    if pongs.trim() != "1000" {
        let log = pods.output(dg).text();
        let failures: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("handshake failed"))
            .collect();
        panic!(
            "{pongs} pongs of 1000; failures:\n{}\n{text}",
            failures.join("\n")
        );
    }
    let count = |labels: &[(&str, &str)], name| sample(&text, name, labels).unwrap_or(0.0);
    let failed = count(
        &[("node", "n"), ("result", "failed")],
        "distgate_dist_handshakes_total",
    );
    let refused = count(
        &[("listener", "dist"), ("reason", "banned")],
        "distgate_connections_refused_total",
    );
    let ok = count(
        &[("node", "n"), ("result", "ok")],
        "distgate_dist_handshakes_total",
    );
    let withdrawn = count(
        &[("node", "n"), ("result", "withdrawn")],
        "distgate_dist_handshakes_total",
    );
    eprintln!(
        "handshakes: {ok} ok, {withdrawn} withdrawn, {failed} failed; {refused} refused as banned; banned sources {:?}",
        sample(&text, "distgate_dist_banned_sources", &[])
    );
    assert_eq!(
        failed,
        f64::from(FAILURES),
        "failures past the ban reached the node"
    );
    assert!(refused >= 1.0, "the guesser was never refused at accept");
    // Most pings dial anew; under load some find the link they just dropped still
    // closing on the node's side and are called off or reuse it (864 of 1,000 were
    // new links on a loaded 2-core machine).
    assert!(ok >= 500.0, "{ok} handshakes ok, {withdrawn} withdrawn");
    let log = pods.output(dg).text();
    assert!(
        !log.lines()
            .any(|l| l.contains("source banned") && l.contains(FRIEND_IP)),
        "the friend was banned"
    );
    assert_eq!(
        sample(&text, "distgate_dist_banned_sources", &[]),
        Some(1.0)
    );
    let per_source = [("listener", "dist"), ("reason", "per_source")];
    assert_eq!(
        sample(&text, "distgate_connections_refused_total", &per_source),
        Some(0.0)
    );
    let (fds, rss) = usage(pid);
    eprintln!("distgate after the run: {fds} descriptors, RSS {rss} KiB");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn one_address_holds_at_most_max_per_source_connections() {
    if !require(&["ip"]) || !require_root() {
        return;
    }
    let (id, dir, mut pods) = world("dgs");
    let (node_pod, other) = (0, 1);
    let text =
        "[dist]\nmax_per_source = 5\nfirst_frame_timeout = \"60s\"\nhandshake_timeout = \"60s\"\n";
    pods.distgate(node_pod, "distgate", Some(&config(&dir, text)));
    // A node must hold the port, or connections close at once for want of one.
    let mut node = erl(&pods, node_pod, &format!("n@node.{id}.test"), COOKIE, IDLE);
    let node = pods.spawn("node", &mut node);
    pods.output(node).wait_for("READY", node_deadline());

    let other_ns = pods.pods[other].ns.clone();
    let held: Vec<StdStream> = in_netns(&other_ns, || {
        (0..5)
            .map(|_| StdStream::connect((NODE_IP, 43691)).unwrap())
            .collect()
    });
    let node_ns = pods.pods[node_pod].ns.clone();
    eventually_blocking(DEADLINE, "five connections held", || {
        let open = [("listener", "dist")];
        (sample(&metrics_in(&node_ns), "distgate_connections_open", &open) == Some(5.0))
            .then_some(())
    });
    let closed_at_once = in_netns(&other_ns, || {
        let mut sixth = StdStream::connect((NODE_IP, 43691)).unwrap();
        sixth
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let started = Instant::now();
        matches!(sixth.read(&mut [0u8; 1]), Ok(0)).then(|| started.elapsed())
    });
    drop(held);
    // Closed at accept, not at a deadline (both are a minute here).
    let waited = closed_at_once.expect("the sixth connection was not closed at accept");
    eprintln!("the sixth connection was closed after {waited:?}");
    let metrics = metrics_in(&pods.pods[node_pod].ns);
    let per_source = [("listener", "dist"), ("reason", "per_source")];
    assert_eq!(
        sample(&metrics, "distgate_connections_refused_total", &per_source),
        Some(1.0)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The guesser of a whole IPv6 /64 (one host is given one): before, each of its
/// addresses was a source of its own, so `max_per_source = 4` let one /64 hold 40 of
/// 40 connections, and stepping to the next address after each ban got 40 of 60 bad
/// handshakes through. Now the /64 is one source: 4 held, 3 failures, then banned.
/// The guesser's 40 addresses live on the pod's loopback (they are not the address it
/// dials, so not "local").
#[test]
fn an_ipv6_64_is_one_source() {
    if !require(&["ip"]) || !require_root() {
        return;
    }
    let (id, dir, mut pods) = world("dg6");
    let node_pod = 0;
    let ns = pods.pods[node_pod].ns.clone();
    let mut batch = String::from("addr add fd00:64::1/128 dev lo nodad\n");
    for n in 1..=40 {
        batch.push_str(&format!("addr add fd00:65::{n:x}/128 dev lo nodad\n"));
    }
    crate::support::netns::exec(&ns, &["ip", "-batch", "-"], Some(&batch));
    let text = "[dist]\nmax_per_source = 4\nfirst_frame_timeout = \"60s\"\n\
                handshake_timeout = \"60s\"\n[dist.ban]\nfailures = 3\n";
    pods.distgate(node_pod, "distgate", Some(&config(&dir, text)));
    // A node must hold the port, or connections close at once for want of one.
    let node = in_netns(&ns, || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut registration = StdStream::connect("127.0.0.1:4369").unwrap();
        let alive2 = distgate::epmd::message::encode_alive2_req(&alive2("app", port));
        std::io::Write::write_all(&mut registration, &alive2).unwrap();
        let mut reply = [0u8; 6];
        registration.read_exact(&mut reply).unwrap();
        assert_eq!(reply[1], 0, "registration refused");
        (listener, registration)
    });
    let dialled: std::net::SocketAddr = "[fd00:64::1]:43691".parse().unwrap();
    let from = |n: u32| -> std::net::SocketAddr {
        format!("[fd00:65::{:x}]:0", n % 40 + 1).parse().unwrap()
    };
    let connect = move |n: u32| -> StdStream {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).unwrap();
        socket.bind(&from(n).into()).unwrap();
        socket.connect(&dialled.into()).unwrap();
        socket.into()
    };
    let held: Vec<StdStream> = in_netns(&ns, move || (0..40).map(connect).collect());
    let per_source = [("listener", "dist"), ("reason", "per_source")];
    let refused = |reason: &str, want: f64| {
        let labels = [("listener", "dist"), ("reason", reason)];
        eventually_blocking(DEADLINE, &format!("{want} refused {reason}"), || {
            let got = sample(
                &metrics_in(&ns),
                "distgate_connections_refused_total",
                &labels,
            );
            (got == Some(want)).then_some(())
        });
    };
    refused("per_source", 36.0);
    let open = [("listener", "dist")];
    assert_eq!(
        sample(&metrics_in(&ns), "distgate_connections_open", &open),
        Some(4.0),
        "the /64 held more than max_per_source"
    );
    drop(held);
    eventually_blocking(DEADLINE, "the held connections closed", || {
        (sample(&metrics_in(&ns), "distgate_connections_open", &open) == Some(0.0)).then_some(())
    });
    // 60 bad handshakes, each from the next address of the /64.
    in_netns(&ns, move || {
        for n in 0..60 {
            let mut stream = connect(n);
            stream.set_read_timeout(Some(DEADLINE)).unwrap();
            let _ = std::io::Write::write_all(&mut stream, b"GET / HTTP/1.1\r\n\r\n");
            let _ = stream.read_to_end(&mut Vec::new());
        }
    });
    refused("banned", 57.0);
    let metrics = metrics_in(&ns);
    let failed = [("node", "app"), ("result", "failed")];
    assert_eq!(
        sample(&metrics, "distgate_dist_handshakes_total", &failed),
        Some(3.0),
        "bad handshakes past the ban of the /64"
    );
    assert_eq!(
        sample(&metrics, "distgate_connections_refused_total", &per_source),
        Some(36.0)
    );
    let bans = crate::support::netns::admin_in(&ns, "/bans");
    assert!(bans.contains(r#""source":"fd00:65::/64""#), "{bans}");
    let log = pods.output(0).text();
    assert!(
        log.lines()
            .any(|l| l.contains("source banned") && l.contains("fd00:65::/64")),
        "{log}"
    );
    drop(node);
    let _ = (id, std::fs::remove_dir_all(&dir));
}
