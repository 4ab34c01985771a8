//! Hostile clients. A pod (network namespace) runs the distgate binary with small
//! connection limits and a real node; an attacker in another namespace floods EPMD and
//! the public dist port with thousands of connections and sends garbage, while a real
//! node in the attacker's namespace keeps its link. distgate's descriptors and memory
//! are read from /proc while the flood is held. A slowloris client on loopback is cut
//! at `packet_timeout` although it never goes quiet.
//!
//! The namespace test needs root, `ip`, `nft` and `erl`; with `CI=true` a missing one
//! fails it.

use crate::support;
use std::io::{Read, Write};
use std::net::TcpStream as StdStream;
use std::time::{Duration, Instant};

use crate::support::beam::{Output, REPL, Repl, node_deadline};
use crate::support::netns::{Pods, in_netns, metrics_in, raise_descriptor_limit};
use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FLOOD: usize = 5000;
const EPMD_LIMIT: usize = 200;
const DIST_LIMIT: usize = 300;

fn counter(text: &str, name: &str, listener: &str) -> f64 {
    sample(text, name, &[("listener", listener)]).unwrap_or(0.0)
}

#[test]
fn floods_and_garbage_leave_nodes_and_links_working() {
    if !require(&["erl", "ip", "nft"]) || !require_root() {
        return;
    }
    raise_descriptor_limit();
    let id = unique("dgh");
    let mut pods = Pods::two_with_ports(&id, "43691-43692");
    let (attacker, pod) = (0, 1);
    let (pod_ip, pod_host, attacker_ns, pod_ns) = (
        pods.pods[pod].ip.clone(),
        pods.pods[pod].host.clone(),
        pods.pods[attacker].ns.clone(),
        pods.pods[pod].ns.clone(),
    );
    let dir = TempDir::new("distgate-hostile-");
    let config = dir.join("distgate.toml");
    std::fs::write(
        &config,
        format!(
            "[epmd]\nmax_connections = {EPMD_LIMIT}\npacket_timeout = \"30s\"\n\
             [dist]\nports = [\"43691-43692\"]\nmax_connections = {DIST_LIMIT}\n\
             max_per_source = {FLOOD}\n[dist.ban]\nfailures = 0\n"
        ),
    )
    .unwrap();
    let dg = pods.distgate(pod, "distgate in the pod", Some(&config));
    let pid = pods.output(dg).process.pid();
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap()
            .trim(),
        "distgate"
    );
    let node = format!("n@{pod_host}");
    pods.idle_node(pod, &node);

    // A node in the attacker's namespace holds a link to n through distgate.
    pods.distgate(attacker, "distgate of the other pod", None);
    let mut z = pods.erl(attacker, &format!("z@{}", pods.pods[attacker].host), REPL);
    let (z, stdin) = Output::spawn_interactive("node z", &mut z);
    let z = pods.adopt(z);
    let mut repl = Repl::new(stdin);
    assert_eq!(
        repl.ask(pods.output(z), &format!("net_adm:ping('{node}')")),
        "pong"
    );
    let (fds_before, rss_before) = usage(pid);

    // The flood: thousands of connections to both ports, held open, sending nothing.
    let target = pod_ip.clone();
    let started = Instant::now();
    let flood: Vec<StdStream> = in_netns(&attacker_ns, move || {
        let mut held = vec![];
        for port in [4369, 43691] {
            for _ in 0..FLOOD {
                held.push(StdStream::connect((target.as_str(), port)).unwrap());
            }
        }
        held
    });
    let opened_in = started.elapsed();
    // Every connection past the limits is closed at accept and counted.
    let metrics = eventually_blocking(node_deadline(), "the refusals to be counted", || {
        let text = metrics_in(&pod_ns);
        let refused = |l| {
            let labels = [("listener", l), ("reason", "max_connections")];
            sample(&text, "distgate_connections_refused_total", &labels).unwrap_or(0.0)
        };
        (refused("epmd") >= (FLOOD - EPMD_LIMIT) as f64 && refused("dist") >= 1.0).then_some(text)
    });
    let open = |l| counter(&metrics, "distgate_connections_open", l);
    assert_eq!(open("epmd"), EPMD_LIMIT as f64);
    assert!(open("dist") <= DIST_LIMIT as f64, "{}", open("dist"));
    let (fds_flood, rss_flood) = usage(pid);
    // One descriptor per EPMD connection, two per forwarded one, nothing else grows.
    assert!(
        fds_flood <= fds_before + EPMD_LIMIT + 2 * DIST_LIMIT + 8,
        "{fds_flood} descriptors under the flood (before: {fds_before})"
    );
    assert!(
        rss_flood < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_flood} KiB"
    );
    eprintln!(
        "flood of {} connections opened in {opened_in:?}: distgate holds {fds_flood} fds \
         (before {fds_before}), RSS {rss_flood} KiB (before {rss_before} KiB)",
        2 * FLOOD
    );

    // Under the flood: the held link works, and a node of the pod still registers.
    assert_eq!(
        repl.ask(
            pods.output(z),
            &format!("rpc:call('{node}', erlang, node, [])")
        ),
        format!("'{node}'")
    );
    let second = format!("m@{pod_host}");
    pods.idle_node(pod, &second);

    // Garbage on the dist port: closed by distgate, never forwarded to the node.
    let target = pod_ip.clone();
    drop(flood);
    let garbage_closed = in_netns(&attacker_ns, move || {
        let mut stream = StdStream::connect((target.as_str(), 43691)).unwrap();
        // Its first two bytes announce a 65,418-byte frame, longer than any handshake
        // frame: distgate judges it at once.
        let junk = support::bytes::bytes(13, 65_536);
        let _ = stream.write_all(&junk);
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut sink = vec![];
        // Closed means EOF or a reset; a read that times out means it is still open.
        match stream.read_to_end(&mut sink) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    });
    assert!(garbage_closed, "the garbage connection was not closed");

    // After the flood: new links are made again, and the old one never broke.
    repl.until(
        pods.output(z),
        &format!("net_adm:ping('{second}')"),
        node_deadline(),
        |r| r == "pong",
    );
    assert_eq!(
        repl.ask(
            pods.output(z),
            &format!("rpc:call('{node}', erlang, node, [])")
        ),
        format!("'{node}'")
    );
    let text = pods.output(dg).text();
    assert!(
        text.contains("connection limit reached"),
        "no log line for the limit:\n{text}"
    );
}

#[tokio::test]
async fn a_slowloris_is_cut_at_packet_timeout_and_blocks_nobody() {
    let metrics = recorder();
    let mut options = Options::default();
    options.config.epmd.packet_timeout = Duration::from_millis(1500);
    let sidecar = InProcess::start(options).await;
    // One byte every 200 ms of a request that never ends: never idle for long, so a
    // timeout counted from the last byte (epmd's) would hold it for ten minutes.
    let mut slow = tokio::net::TcpStream::connect(sidecar.epmd).await.unwrap();
    let started = Instant::now();
    let header = [0x0b, 0xf1, b'x'];
    let mut closed = false;
    for i in 0..3000usize {
        let byte = header.get(i).copied().unwrap_or(b'a');
        if slow.write_all(&[byte]).await.is_err() {
            closed = true;
            break;
        }
        // Meanwhile other clients are served.
        if i == 2 {
            assert_eq!(names(sidecar.epmd).await.1, Vec::<String>::new());
        }
        let mut probe = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(200), slow.read(&mut probe)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => panic!("a reply to half a request"),
            Err(_) => {}
        }
    }
    let lived = started.elapsed();
    assert!(closed, "the slowloris was never cut");
    assert!(
        lived >= Duration::from_millis(1400) && lived < Duration::from_secs(5),
        "cut after {lived:?}, packet_timeout is 1.5 s"
    );
    // Counted by reason.
    let cut = [("type", "invalid"), ("result", "request_timeout")];
    eventually("the slowloris to be counted", || async {
        (sample(&metrics.render(), "distgate_epmd_requests_total", &cut) >= Some(1.0)).then_some(())
    })
    .await;
}

/// Changes asked of the admin port from another pod (`POST /reload`, `DELETE /bans`)
/// are refused (403), and their log lines are budgeted: 300 refusals log 20 lines in
/// one 10 s window, then one summary line with the next (before: 300 lines).
#[test]
fn admin_changes_from_another_pod_are_refused_within_the_log_budget() {
    if !require(&["ip"]) || !require_root() {
        return;
    }
    const FLOOD: usize = 300;
    const BURST: usize = 20;
    let id = unique("dga");
    let mut pods = Pods::switched(&id);
    let hosts = "127.0.0.1 localhost\n";
    let (pod, caller) = (
        pods.join("pod", "198.18.0.1", hosts),
        pods.join("caller", "198.18.0.2", hosts),
    );
    let dg = pods.distgate(pod, "distgate", None);
    let (pod_ns, caller_ns) = (pods.pods[pod].ns.clone(), pods.pods[caller].ns.clone());
    let ask = move |request: &'static str| {
        in_netns(&caller_ns, move || {
            let mut stream = StdStream::connect(("198.18.0.1", 9369)).unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            let mut reply = String::new();
            stream.read_to_string(&mut reply).unwrap();
            assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
        })
    };
    let post = "POST /reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let delete = "DELETE /bans HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    // Every line logged before is read once a release client's registration (never
    // budgeted) is: lines are written in order.
    let flush = |pods: &mut Pods, mark: &str| {
        let mark = format!("rpc-{mark}");
        let name = mark.clone();
        let held = in_netns(&pod_ns, move || {
            let node = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let alive2 = alive2(&name, node.local_addr().unwrap().port());
            let mut registration = StdStream::connect("127.0.0.1:4369").unwrap();
            let wire = distgate::epmd::message::encode_alive2_req(&alive2);
            registration.write_all(&wire).unwrap();
            (node, registration)
        });
        pods.output(dg).wait_line("the mark", DEADLINE, |l| {
            l.contains("release client registered") && l.contains(&mark)
        });
        held
    };
    let refused = |pods: &mut Pods| {
        let text = pods.output(dg).text();
        let lines = |m: &str| text.lines().filter(|l| l.contains(m)).count();
        (
            lines("refused: not from loopback"),
            lines("from other hosts refused than logged"),
        )
    };
    let started = Instant::now();
    ask(post);
    // distgate's window opened at that first refusal, before its answer came back.
    let window_over = Instant::now() + Duration::from_secs(10);
    for i in 1..FLOOD {
        ask(if i % 2 == 0 { post } else { delete });
    }
    let took = started.elapsed();
    let _first = flush(&mut pods, "one");
    assert!(took < Duration::from_secs(10), "the flood took {took:?}");
    assert_eq!(
        refused(&mut pods),
        (BURST, 0),
        "lines of {FLOOD} refusals in {took:?}"
    );
    // The budget's window is time on distgate's clock: waiting it out is the test.
    std::thread::sleep(window_over.saturating_duration_since(Instant::now()));
    ask(post);
    let _second = flush(&mut pods, "two");
    assert_eq!(refused(&mut pods), (BURST + 1, 1));
    let text = pods.output(dg).text();
    let summary = (text.lines())
        .find(|l| l.contains("from other hosts refused than logged"))
        .unwrap();
    assert!(
        summary.contains(&format!("\"not_logged\":{}", FLOOD - BURST)),
        "{summary}"
    );
}
