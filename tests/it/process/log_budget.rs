//! Every log line a peer can cause at will has a budget (`src/log_budget.rs`): a flood
//! of one kind logs 20 lines in a window of 10 s, then nothing until the next window,
//! whose first such event logs one line saying how many were left out; the metrics
//! count every event. One test per kind, against the binary, its JSON log read back:
//! non-local ALIVE2, non-local DUMP, NAMES, KILL and STOP, a client toggling
//! `[epmd] max_connections`, accept errors behind a full descriptor table,
//! a node's real port that refuses, a routed upstream that no longer resolves. The
//! admin port's changes from another host need one: `tests/it/pods/hostile.rs`.
//!
//! "Non-local" on loopback: `[epmd] register_from = ["127.0.0.1"]` makes 127.0.0.6
//! another host (as behind a mesh sidecar).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::support::beam::Output;
use crate::support::dnsmasq::server_args;
use crate::support::*;
use distgate::dns::{DnsError, Hickory, Lookup};
use distgate::epmd::message::{encode_alive2_req, frame};
use distgate::handshake::{OTP25_FLAGS, encode_send_name};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// Lines of one kind logged per window (`log_budget::LOG_BURST`).
const BURST: usize = 20;
/// The window (`log_budget::LOG_WINDOW`).
const WINDOW: Duration = Duration::from_secs(10);
/// Events of each flood: a peer at will.
const FLOOD: usize = 300;

/// The binary on ports the OS picks, its log collected.
struct Gate {
    out: Output,
    epmd: SocketAddr,
    admin: SocketAddr,
    public: SocketAddr,
    _dir: TempDir,
}

/// The value of `key` in a JSON log line.
fn field(line: &str, key: &str) -> Option<serde_json::Value> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    value.get(key).cloned()
}

impl Gate {
    /// Starts the binary with `epmd` and `dist` keys in those tables, the admin port on
    /// `admin_ip`, and `more` tables.
    fn start(epmd: &str, dist: &str, admin_ip: IpAddr, more: &str) -> Gate {
        Self::start_with_descriptors(None, epmd, dist, admin_ip, more)
    }

    /// [`Gate::start`] with at most `descriptors` open files (soft and hard), if given.
    fn start_with_descriptors(
        descriptors: Option<u32>,
        epmd: &str,
        dist: &str,
        admin_ip: IpAddr,
        more: &str,
    ) -> Gate {
        let dir = TempDir::new("distgate-log-budget-");
        let config = dir.join("distgate.toml");
        let admin = SocketAddr::new(admin_ip, 0);
        for _ in 0..3 {
            std::fs::write(
                &config,
                format!(
                    "[epmd]\nlisten = [\"127.0.0.1:0\"]\n{epmd}\n[dist]\nlisten = [\"127.0.0.1\"]\n\
                     ports = [{}]\n{dist}\n[admin]\nlisten = [\"{admin}\"]\n{more}",
                    free_port()
                ),
            )
            .unwrap();
            let binary = env!("CARGO_BIN_EXE_distgate");
            let mut command = match descriptors {
                None => std::process::Command::new(binary),
                Some(n) => {
                    let mut sh = std::process::Command::new("sh");
                    let script = format!("ulimit -n {n} && exec \"$0\" \"$@\"");
                    sh.args(["-c", &script, binary]);
                    sh
                }
            };
            command
                .args(["--log-format", "json", "--config"])
                .arg(&config);
            let mut out = Output::spawn("distgate", &mut command);
            let bound = eventually_blocking(DEADLINE, "distgate to bind or exit", || {
                if out.text().contains("\"public dist port listening\"") {
                    return Some(true);
                }
                out.process.exited().map(|_| false)
            });
            // The public port was free a moment ago; should it be taken since, again.
            if !bound && out.text().contains("in use") {
                continue;
            }
            assert!(bound, "distgate did not start:\n{}", out.text());
            let mut addr = |message: &str| {
                let line = out.wait_line(message, DEADLINE, |l| l.contains(message));
                field(&line, "addr")
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            let (epmd, admin, public) = (
                addr("\"EPMD listening\""),
                addr("\"admin HTTP listening"),
                addr("\"public dist port listening\""),
            );
            return Gate {
                out,
                epmd,
                admin,
                public,
                _dir: dir,
            };
        }
        panic!("no free public port in three tries");
    }

    /// The lines logged whose message starts with `message`, as JSON.
    fn lines(&self, message: &str) -> Vec<serde_json::Value> {
        (self.out.text().lines())
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| {
                v["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(message))
            })
            .collect()
    }

    fn count(&self, message: &str) -> usize {
        self.lines(message).len()
    }

    /// Returns once every line logged before the call has been read: a release client
    /// of the pod registers (a line no budget holds back; no public port taken) and its
    /// line is waited for.
    async fn flush(&self) {
        let mark = unique("rpc-mark");
        let node = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = node.local_addr().unwrap().port();
        let (_registration, _) = register(self.epmd, &alive2(&mark, port)).await;
        eventually("the mark's registration to be logged", || async {
            let lines = self.lines("release client registered");
            lines
                .iter()
                .any(|l| l["node"] == mark.as_str())
                .then_some(())
        })
        .await;
    }

    /// The value of `name{labels}` on `/metrics`.
    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (status, text) = http_get(self.admin, "/metrics").await;
        assert_eq!(status, 200);
        sample(&text, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?}:\n{text}"))
    }
}

/// Floods `lines` with `cause` (event `i` handled by distgate when its future ends):
/// `events` events within one window log exactly [`BURST`] of each of `lines` and no
/// summary; once the window is over, one more event logs its line and, first, one
/// summary line. Returns how many events the summary says were left out.
async fn flood<F, Fut>(
    gate: &Gate,
    lines: &[&str],
    summary: &str,
    events: usize,
    mut cause: F,
) -> u64
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    let start = Instant::now();
    cause(0).await;
    // The window opened at the first event, before it ended.
    let window_over = Instant::now() + WINDOW;
    for i in 1..events {
        cause(i).await;
    }
    let took = start.elapsed();
    gate.flush().await;
    for line in lines {
        eprintln!(
            "{events} events in {took:.2?}: {} lines {line:?}",
            gate.count(line)
        );
    }
    assert!(
        took < WINDOW,
        "the flood took {took:?}: more than one window"
    );
    for line in lines {
        assert_eq!(gate.count(line), BURST, "{line:?} in one window");
    }
    assert_eq!(gate.count(summary), 0, "a summary within the window");

    // The budget's window is time on distgate's clock: waiting it out is the test.
    tokio::time::sleep_until(window_over.into()).await;
    cause(events).await;
    gate.flush().await;
    for line in lines {
        assert_eq!(gate.count(line), BURST + 1, "{line:?} in the next window");
    }
    let summaries = gate.lines(summary);
    assert_eq!(summaries.len(), 1, "{summaries:?}");
    eprintln!("then: {}", summaries[0]);
    summaries[0]["not_logged"].as_u64().unwrap()
}

/// A connection to `addr` from the address `from`.
async fn connect_from(from: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = match from {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

/// 127.0.0.6: another host, with [`NARROW`].
fn elsewhere() -> IpAddr {
    [127, 0, 0, 6].into()
}

/// `[epmd]` keys making only 127.0.0.1 the pod's own.
const NARROW: &str = "register_from = [\"127.0.0.1\"]";

/// Sends `wire` from [`elsewhere`] to EPMD and returns what came back before the close.
async fn from_elsewhere(epmd: SocketAddr, wire: &[u8]) -> Vec<u8> {
    let mut stream = connect_from(elsewhere(), epmd).await;
    stream.write_all(wire).await.unwrap();
    read_to_close(&mut stream).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_budget_non_local_registrations() {
    let gate = Gate::start(NARROW, "", [127, 0, 0, 1].into(), "");
    let not_logged = flood(
        &gate,
        &["registration from a non-local address refused"],
        "more registrations from non-local addresses refused than logged \
         (see distgate_registrations_rejected_total)",
        FLOOD,
        |i| {
            let wire = encode_alive2_req(&alive2(&format!("intruder{i}"), 40001));
            async move { assert_eq!(from_elsewhere(gate.epmd, &wire).await, b"") }
        },
    )
    .await;
    assert_eq!(not_logged, (FLOOD - BURST) as u64);
    let counted = gate
        .metric(
            "distgate_registrations_rejected_total",
            &[("reason", "not_local")],
        )
        .await;
    assert_eq!(counted, (FLOOD + 1) as f64, "every refusal counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_budget_non_local_dump_names_kill_and_stop() {
    // STOP is served only with relaxed_command_check; refused from elsewhere all the same.
    let gate = Gate::start(
        &format!("{NARROW}\nrelaxed_command_check = true\nallow_kill = true"),
        "",
        [127, 0, 0, 1].into(),
        "",
    );
    let requests: [&[u8]; 4] = [b"d", b"n", b"k", b"sapp"];
    let not_logged = flood(
        &gate,
        &["local-only request from a non-local address refused"],
        "more local-only requests from non-local addresses refused than logged \
         (see distgate_epmd_requests_total)",
        FLOOD,
        |i| {
            let wire = frame(requests[i % requests.len()]);
            async move { assert_eq!(from_elsewhere(gate.epmd, &wire).await, b"") }
        },
    )
    .await;
    assert_eq!(not_logged, (FLOOD - BURST) as u64);
    let mut counted = 0.0;
    for kind in ["dump", "names", "kill", "stop"] {
        let labels = [("type", kind), ("result", "not_local")];
        counted += gate.metric("distgate_epmd_requests_total", &labels).await;
    }
    assert_eq!(counted, (FLOOD + 1) as f64, "every refusal counted");
}

/// One episode at `[epmd] max_connections = 1`: once the place is free, a silent
/// connection from elsewhere takes it and the next is refused; once it goes, a lookup
/// is answered again (refused meanwhile, it is the same episode).
async fn toggle(gate: &Gate) {
    let open = [("listener", "epmd")];
    eventually("the last connection to give its place back", || async {
        (gate.metric("distgate_connections_open", &open).await == 0.0).then_some(())
    })
    .await;
    let lookup = frame(b"zapp");
    let held = connect_from(elsewhere(), gate.epmd).await;
    let refused = from_elsewhere(gate.epmd, &lookup).await;
    assert_eq!(refused, b"", "a lookup answered past the limit");
    drop(held);
    eventually("a lookup to be answered again", || async {
        (!from_elsewhere(gate.epmd, &lookup).await.is_empty()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_budget_a_client_toggling_max_connections() {
    let gate = Gate::start(
        &format!("{NARROW}\nmax_connections = 1"),
        "",
        [127, 0, 0, 1].into(),
        "",
    );
    let episodes = 100;
    let not_logged = flood(
        &gate,
        &[
            "connection limit reached; closing new connections until some end",
            "below the connection limit again",
        ],
        "the epmd connection limit was reached more often than logged \
         (see distgate_connections_refused_total)",
        episodes,
        |_| toggle(&gate),
    )
    .await;
    assert_eq!(not_logged, (episodes - BURST) as u64);
    let refused = gate
        .metric(
            "distgate_connections_refused_total",
            &[("listener", "epmd"), ("reason", "max_connections")],
        )
        .await;
    assert!(
        refused >= (episodes + 1) as f64,
        "{refused} refusals counted"
    );
}

/// Floods `gate` with callers to `node` whose upstream fails with `line`: within the
/// budget, the summary names the counter, and the counter has every failure.
async fn upstream_failures_flooded(gate: &Gate, node: &str, line: &str, summary: &str) {
    let summary = format!("{summary} (see distgate_dist_upstream_connect_failures_total)");
    let not_logged = flood(gate, &[line], &summary, FLOOD, |_| call(gate.public)).await;
    assert_eq!(not_logged, (FLOOD - BURST) as u64);
    let failures = "distgate_dist_upstream_connect_failures_total";
    let counted = gate.metric(failures, &[("node", node)]).await;
    assert_eq!(counted, (FLOOD + 1) as f64, "every failure counted");
}

/// A caller's `send_name` on a new connection to `public`, and the close that follows.
async fn call(public: SocketAddr) {
    let mut caller = TcpStream::connect(public).await.unwrap();
    let send_name = encode_send_name("peer@127.0.0.1", OTP25_FLAGS, 1);
    caller.write_all(&send_name).await.unwrap();
    assert_eq!(read_to_close(&mut caller).await, b"", "forwarded somewhere");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_budget_a_real_port_that_refuses() {
    let gate = Gate::start("", "", [127, 0, 0, 1].into(), "");
    // A node registered on a port nobody listens on any more.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let (_registration, _) = register(gate.epmd, &alive2("app", port)).await;
    upstream_failures_flooded(
        &gate,
        "app",
        "node's real port did not accept",
        "more nodes' real ports did not accept than logged",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_budget_an_upstream_that_does_not_resolve() {
    if !require(&["dnsmasq"]) {
        return;
    }
    // The upstream: a distgate in this process with app-0 registered.
    let upstream = InProcess::start(Options::default()).await;
    let _node = fake_node(upstream.epmd, "app-0").await;
    // DNS for it: dnsmasq answering from a hosts file it reads again on SIGHUP, TTL 0.
    let dir = TempDir::new("distgate-log-budget-dns-");
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, "127.0.0.1 app-0.cluster.test\n").unwrap();
    let dns_port = free_port();
    let mut command = std::process::Command::new("dnsmasq");
    command
        .args(server_args(dns_port, 0))
        .arg(format!("--addn-hosts={}", hosts.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let dnsmasq = Process::spawn("dnsmasq", &mut command);
    let resolver =
        Hickory::with_nameservers(&[loopback(dns_port)], Duration::from_millis(200), 1).unwrap();
    eventually("dnsmasq to answer", || async {
        resolver.lookup_ip("app-0.cluster.test").await.ok()
    })
    .await;

    let gate = Gate::start(
        "",
        "",
        [127, 0, 0, 1].into(),
        &format!(
            "[dns]\nnameservers = [\"127.0.0.1:{dns_port}\"]\nmin_ttl = \"0s\"\n\n\
             [[route]]\nnodes = \"app-*\"\nupstream = \"{{name}}.cluster.test\"\nepmd_port = {}\n",
            upstream.epmd.port()
        ),
    );
    let leased = port_please(gate.epmd, "app-0").await;
    assert_eq!(leased, Some(gate.public.port()), "app-0 leased");
    // The name leaves DNS; its lease stays until the next confirmation (`max_ttl`).
    std::fs::write(&hosts, "").unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &dnsmasq.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    eventually("app-0 to leave DNS", || async {
        let answer = resolver.lookup_ip("app-0.cluster.test").await;
        matches!(answer, Err(DnsError::NotFound { .. })).then_some(())
    })
    .await;

    upstream_failures_flooded(
        &gate,
        "app-0",
        "upstream does not resolve",
        "more upstreams did not resolve than logged",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_budget_accept_failures_when_descriptors_run_out() {
    // 64 descriptors: connection limits far above what the process may open (distgate
    // warns at start), so accepts fail once the connections held take them all.
    let gate = Gate::start_with_descriptors(Some(64), "", "", [127, 0, 0, 1].into(), "");
    let failed = "accept failed";
    // Registrations hold their descriptors: one after the other until an accept fails.
    let mut held = vec![];
    let first_failure = loop {
        let mut stream = TcpStream::connect(gate.epmd).await.unwrap();
        let name = format!("rpc-hold{}", held.len());
        let wire = encode_alive2_req(&alive2(&name, 40001));
        stream.write_all(&wire).await.unwrap();
        let accepted = eventually("a registration answered or an accept failed", || {
            let mut reply = [0u8; 6];
            let read = stream.try_read(&mut reply);
            let failed = gate.count(failed) > 0;
            async move {
                match read {
                    Ok(n) if n > 0 => Some(true),
                    _ if failed => Some(false),
                    _ => None,
                }
            }
        })
        .await;
        if !accepted {
            // Still waiting to be accepted; accepted later, it finds itself closed.
            break Instant::now();
        }
        held.push(stream);
        assert!(held.len() < 64, "64 connections held and no accept failed");
    };
    let window_over = first_failure + WINDOW;
    eprintln!("{} registrations held the descriptors", held.len());

    // A flood of lookups waits behind them; one registration goes: each lookup then
    // takes the one descriptor free and the next accept fails until it is answered.
    let start = Instant::now();
    let lookups = 200;
    let mut waiting = vec![];
    for _ in 0..lookups {
        let mut stream = TcpStream::connect(gate.epmd).await.unwrap();
        stream.write_all(&frame(b"zapp")).await.unwrap();
        waiting.push(stream);
    }
    drop(held.remove(0));
    for mut stream in waiting {
        assert_eq!(read_to_close(&mut stream).await, b"w\x01", "a lookup");
    }
    let took = start.elapsed();
    gate.flush().await;
    eprintln!(
        "{lookups} lookups in {took:.2?} past a full descriptor table: {} lines {failed:?}",
        gate.count(failed)
    );
    assert!(
        first_failure.elapsed() < WINDOW,
        "the flood took more than one window"
    );
    assert_eq!(gate.count(failed), BURST, "in one window");
    let summary = "more accepts failed than logged (see distgate_accept_errors_total)";
    assert_eq!(gate.count(summary), 0, "a summary within the window");

    // The next window: one connection takes the descriptor free and holds it, the next
    // cannot be accepted: its line, after the summary.
    tokio::time::sleep_until(window_over.into()).await;
    let holder = TcpStream::connect(gate.epmd).await.unwrap();
    let mut lookup = TcpStream::connect(gate.epmd).await.unwrap();
    lookup.write_all(&frame(b"zapp")).await.unwrap();
    eventually("an accept to fail in the next window", || async {
        (gate.count(failed) > BURST).then_some(())
    })
    .await;
    drop(holder);
    assert_eq!(read_to_close(&mut lookup).await, b"w\x01");
    gate.flush().await;
    // The lookup's accept is tried again (10 ms, 20 ms, ...) until the holder goes:
    // each failure of the new window is logged, up to its budget.
    let logged = gate.count(failed);
    assert!(
        (BURST + 1..=2 * BURST).contains(&logged),
        "{logged} lines in two windows"
    );
    let summaries = gate.lines(summary);
    assert_eq!(summaries.len(), 1, "{summaries:?}");
    eprintln!("then: {}", summaries[0]);
    let not_logged = summaries[0]["not_logged"].as_u64().unwrap();
    let counted = gate.metric("distgate_accept_errors_total", &[]).await;
    assert!(not_logged >= 1, "{not_logged}");
    assert!(
        counted >= (not_logged as usize + logged) as f64,
        "{counted} accept errors counted, {logged} logged, {not_logged} not logged"
    );
}

/// A TLS link is forwarded unauthenticated (`dist.tls = "passthrough"`): anyone can
/// open and close one at will, so its "opened" and "closed" lines are budgeted (an
/// authenticated link's are not: only a peer that proved the cookie makes one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_budget_tls_links_opened_and_closed() {
    let gate = Gate::start("", "", [127, 0, 0, 1].into(), "");
    // A node that takes each link and closes it at once.
    let node = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = node.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = node.accept().await {
            drop(stream);
        }
    });
    let (_registration, _) = register(gate.epmd, &alive2("app", port)).await;
    let public = gate.public;
    let not_logged = flood(
        &gate,
        // The close of the last link may be logged after the flush: counted below.
        &["dist connection opened"],
        "more TLS links opened than logged",
        FLOOD,
        |_| async move {
            let mut caller = TcpStream::connect(public).await.unwrap();
            let hello = crate::support::dist::client_hello();
            caller.write_all(&hello).await.unwrap();
            read_to_close(&mut caller).await;
        },
    )
    .await;
    assert_eq!(not_logged, (FLOOD - BURST) as u64);
    let closed = gate.count("dist connection closed");
    assert!(
        (BURST..=BURST + 1).contains(&closed),
        "{closed} closed lines"
    );
}
