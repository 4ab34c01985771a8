//! Real Erlang nodes, direct versus through distgate versus through haproxy: the
//! round trip of small messages and the rate of 1 MiB binaries from node a to node b.
//!
//! EPMD for the direct and haproxy paths is distgate's library in this process: with
//! no public ports it answers the node's real port (direct); with haproxy's port as its
//! one public port it sends peers to haproxy, which forwards to the node.

use std::process::Command;
use std::sync::Arc;

use distgate::config::Config;
use distgate::ports::PortPlan;
use distgate::registry::Registry;
use distgate::{Distgate, Listeners};
use tokio_util::sync::CancellationToken;

use crate::measure::{self, Proc};
use crate::paths::{BASELINE, Paths};
use crate::variants::{TempDir, distgate, distgate_binary, free_ports, haproxy};
use crate::{Plan, Results, record};

const COOKIE: &str = "distgate-bench";

/// Node b: an echo process and a sink that counts binaries.
const NODE_B: &str = r#"
register(echo, spawn(fun Loop() -> receive {From, M} -> From ! M, Loop() end end)),
Sink = fun S(N) -> receive {From, done} -> From ! {count, N}, S(0); _ -> S(N + 1) end end,
register(sink, spawn(fun() -> Sink(0) end)),
io:format("READY~n"),
receive after infinity -> ok end.
"#;

fn node_a(b: &str, trips: usize, binaries: usize) -> String {
    format!(
        r#"
B = '{b}',
pong = net_adm:ping(B),
{{echo, B}} ! {{self(), warm}}, receive warm -> ok end,
N = {trips},
Ts = [begin
        T0 = erlang:monotonic_time(nanosecond),
        {{echo, B}} ! {{self(), small}},
        receive small -> ok end,
        erlang:monotonic_time(nanosecond) - T0
      end || _ <- lists:seq(1, N)],
Sorted = lists:sort(Ts),
P50 = lists:nth(max(1, N div 2), Sorted),
P99 = lists:nth(max(1, N * 99 div 100), Sorted),
Bin = rand:bytes(1 bsl 20),
M = {binaries},
T1 = erlang:monotonic_time(nanosecond),
[{{sink, B}} ! Bin || _ <- lists:seq(1, M)],
{{sink, B}} ! {{self(), done}},
receive {{count, M}} -> ok end,
T2 = erlang:monotonic_time(nanosecond),
io:format("ERL ~p ~p ~p~n", [P50, P99, T2 - T1]),
halt().
"#
    )
}

fn erl(name: &str, epmd: u16, eval: &str) -> Proc {
    Proc::spawn(
        Command::new("erl")
            .env("ERL_EPMD_PORT", epmd.to_string())
            .args([
                "-noshell",
                "-name",
                &format!("{name}@127.0.0.1"),
                "-setcookie",
                COOKIE,
            ])
            .args(["-start_epmd", "false", "-eval", eval]),
    )
}

/// An EPMD in this process answering `pool` as the public ports (none: real ports).
fn library_epmd(
    rt: &tokio::runtime::Runtime,
    pool: Vec<u16>,
) -> (u16, Arc<Registry>, CancellationToken) {
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shutdown = CancellationToken::new();
        let plan = PortPlan {
            pool,
            pins: Default::default(),
            clients: Default::default(),
        };
        let mut config = Config::default();
        config.shutdown.grace = std::time::Duration::from_secs(1);
        let sidecar = Distgate::new(&config, plan, shutdown.clone()).unwrap();
        let registry = Arc::clone(sidecar.registry());
        let listeners = Listeners {
            epmd: vec![listener],
            ..Listeners::default()
        };
        tokio::spawn(sidecar.run(listeners));
        (port, registry, shutdown)
    })
}

/// One measurement on path `kind`: (p50 µs, p99 µs, MiB/s).
fn once(
    kind: &str,
    round: usize,
    plan: &Plan,
    paths: &Paths,
    rt: &tokio::runtime::Runtime,
) -> (f64, f64, f64) {
    let dir = TempDir::new(&format!("erl-{kind}-{round}"));
    let b = format!("b{round}{}", kind.replace('-', ""));
    let a = format!("a{round}{}", kind.replace('-', ""));
    let mut keep: Vec<Proc> = vec![];
    let mut token = None;
    let epmd = match kind {
        "direct" => {
            let (port, _, stop) = library_epmd(rt, vec![]);
            token = Some(stop);
            port
        }
        "distgate-auto" | "distgate-splice" | BASELINE => {
            let [epmd, public, public_a] = free_ports();
            let config = format!(
                "[epmd]\nlisten = [\"127.0.0.1:{epmd}\"]\n[dist]\nlisten = [\"127.0.0.1\"]\nports = [{public}, {public_a}]\n[forward]\nmode = \"{mode}\"\n",
                mode = if kind == "distgate-splice" {
                    "splice"
                } else {
                    "auto"
                }
            );
            let mut proc = if kind == BASELINE {
                distgate_binary(paths.baseline(), &dir, "distgate", &config, None)
            } else {
                distgate(&dir, &config)
            };
            proc.wait_listening(epmd);
            keep.push(proc);
            epmd
        }
        _ => {
            let [listen] = free_ports();
            let (port, registry, stop) = library_epmd(rt, vec![listen]);
            token = Some(stop);
            let node_b = erl(&b, port, NODE_B);
            node_b.expect("READY");
            let real = registry.get(&b).expect("b not registered").real_port;
            keep.push(haproxy(&dir, &[(listen, real)]));
            keep.push(node_b);
            port
        }
    };
    if kind != "haproxy-splice" {
        let node_b = erl(&b, epmd, NODE_B);
        node_b.expect("READY");
        keep.push(node_b);
    }
    let node_a = erl(
        &a,
        epmd,
        &node_a(
            &format!("{b}@127.0.0.1"),
            plan.erl_round_trips,
            plan.erl_binaries,
        ),
    );
    let line = node_a.expect("ERL ");
    node_a.finish();
    drop(keep);
    if let Some(token) = token {
        token.cancel();
    }
    let v: Vec<f64> = line
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    let mib_s = plan.erl_binaries as f64 / (v[2] / 1e9);
    (v[0] / 1e3, v[1] / 1e3, mib_s)
}

pub fn run(plan: &Plan, paths: &Paths, results: &mut Results) {
    let kinds: Vec<&str> = [
        "direct",
        "distgate-auto",
        BASELINE,
        "distgate-splice",
        "haproxy-splice",
    ]
    .into_iter()
    .filter(|kind| paths.wants(kind))
    .filter(|&kind| kind != "haproxy-splice" || measure::have("haproxy"))
    .collect();
    if kinds.len() < 2 {
        return; // direct alone: no proxy of this part was asked for
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    for round in 0..plan.rounds {
        eprintln!("erlang round {} of {}", round + 1, plan.rounds);
        for &kind in &kinds {
            let (p50, p99, rate) = once(kind, round, plan, paths, &rt);
            record(results, "o_erl_rt_p50", kind, p50);
            record(results, "p_erl_rt_p99", kind, p99);
            record(results, "q_erl_mib_per_s", kind, rate);
        }
    }
}
