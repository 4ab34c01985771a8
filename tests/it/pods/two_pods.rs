//! Two pods: two network namespaces joined by a veth pair, each running the distgate
//! binary on its built-in defaults (4369 and 43691) and one real node on a random
//! dist port, with nftables letting in only 4369 and 43691 — a Kubernetes Service in
//! miniature. The nodes find and talk to each other only through distgate.
//!
//! Needs root, `ip`, `nft` and `erl`; with `CI=true` a missing one fails the test.

use std::time::Duration;

use crate::support::beam::node_deadline;
use crate::support::netns::Pods;
use crate::support::*;

/// Waits for distgate in pod `index` to have bound EPMD and the public port.
fn wait_listening(pods: &mut Pods, index: usize) {
    let out = pods.output(index);
    for message in ["\"EPMD listening\"", "\"public dist port listening\""] {
        out.wait_line(message, DEADLINE, |l| l.contains(message));
    }
}

/// The JSON log line for `event` about node `name`.
fn log_event(pods: &mut Pods, index: usize, event: &str, name: &str) -> serde_json::Value {
    let message = format!("\"message\":\"{event}\"");
    let node = format!("\"node\":\"{name}\"");
    let line = pods
        .output(index)
        .wait_line(&message, node_deadline(), |l| {
            l.contains(&message) && l.contains(&node)
        });
    serde_json::from_str(&line).unwrap()
}

fn erl_in(pods: &Pods, pod: usize, args: &[&str]) -> std::process::Command {
    let mut command = pods.command(pod, "erl");
    command.arg("-noshell").args(args);
    command
}

#[test]
fn two_pods_reach_each_other_only_through_distgate() {
    if !require(&["erl", "ip", "nft"]) || !require_root() {
        return;
    }
    let id = unique("dg");
    let mut pods = Pods::two(&id);
    let distgate = env!("CARGO_BIN_EXE_distgate");
    for pod in 0..2 {
        let mut command = pods.command(pod, distgate);
        command.args(["--log-format", "json"]);
        let index = pods.spawn(&format!("distgate in pod {pod}"), &mut command);
        assert_eq!(index, pod);
        wait_listening(&mut pods, pod);
    }
    let (a_host, b_host) = (pods.pods[0].host.clone(), pods.pods[1].host.clone());
    let b_name = format!("b@{b_host}");
    pods.idle_node(1, &b_name);
    let registered = log_event(&mut pods, 1, "node registered", "b");
    let real_port = registered["real_port"].as_u64().unwrap();
    assert_eq!(registered["public_port"].as_u64(), Some(43691));
    assert_ne!(real_port, 43691);

    // Inside pod b: the real port is open, and a sibling container dialling the pod
    // IP may register, as with epmd.
    let b_ip = pods.pods[1].ip.replace('.', ",");
    let sibling = format!(
        r#"
{{ok, S}} = gen_tcp:connect({{{b_ip}}}, 4369, [binary, {{active, false}}]),
ok = gen_tcp:send(S, <<0,14,$x, 1000:16, 77, 0, 6:16, 5:16, 1:16, $s, 0:16>>),
{{ok, <<V, R, _/binary>>}} = gen_tcp:recv(S, 6, 5000),
io:format("POD_IP_ALIVE2 ~c ~p~n", [V, R]),
io:format("LOCAL_REAL ~p~n", [element(1, gen_tcp:connect({{{b_ip}}}, {real_port}, [], 2000))]),
halt().
"#
    );
    let probe = pods.spawn(
        "sibling in pod b",
        &mut erl_in(&pods, 1, &["-eval", &sibling]),
    );
    let out = pods.output(probe);
    assert_eq!(out.wait_for("POD_IP_ALIVE2 ", node_deadline()), "v 0");
    assert_eq!(out.wait_for("LOCAL_REAL ", node_deadline()), "ok");

    // Pod a: ping, rpc and 32 MiB each way through distgate; the real port is out
    // of reach; registration and NAMES from another pod are refused.
    let script = format!(
        r#"
B = '{b_name}',
io:format("PING ~p~n", [net_adm:ping(B)]),
io:format("RPC ~p~n", [rpc:call(B, erlang, node, [])]),
Up = rand:bytes(32 bsl 20),
io:format("UP ~p~n", [rpc:call(B, erlang, md5, [Up]) =:= erlang:md5(Up)]),
{{Down, Sum}} = rpc:call(B, erlang, apply,
    [fun() -> X = rand:bytes(32 bsl 20), {{X, erlang:md5(X)}} end, []]),
io:format("DOWN ~p~n", [erlang:md5(Down) =:= Sum]),
io:format("REAL ~p~n", [gen_tcp:connect("{b_host}", {real_port}, [], 2000)]),
io:format("PUBLIC ~p~n", [element(1, gen_tcp:connect("{b_host}", 43691, [], 2000))]),
{{ok, S1}} = gen_tcp:connect("{b_host}", 4369, [binary, {{active, false}}]),
ok = gen_tcp:send(S1, <<0,14,$x, 1000:16, 77, 0, 6:16, 5:16, 1:16, $q, 0:16>>),
io:format("REMOTE_ALIVE2 ~p~n", [gen_tcp:recv(S1, 0, 5000)]),
{{ok, S2}} = gen_tcp:connect("{b_host}", 4369, [binary, {{active, false}}]),
ok = gen_tcp:send(S2, <<0,1,$n>>),
io:format("REMOTE_NAMES ~p~n", [gen_tcp:recv(S2, 0, 5000)]),
halt().
"#
    );
    let a_name = format!("a@{a_host}");
    let mut a = pods.erl(0, &a_name, &script);
    let a_out = pods.spawn("node a", &mut a);
    let out = pods.output(a_out);
    let deadline = node_deadline();
    assert_eq!(out.wait_for("PING ", deadline), "pong");
    assert_eq!(out.wait_for("RPC ", deadline), format!("'{b_name}'"));
    assert_eq!(out.wait_for("UP ", deadline), "true");
    assert_eq!(out.wait_for("DOWN ", deadline), "true");
    assert_eq!(out.wait_for("REAL ", deadline), "{error,timeout}");
    assert_eq!(out.wait_for("PUBLIC ", deadline), "ok");
    assert_eq!(out.wait_for("REMOTE_ALIVE2 ", deadline), "{error,closed}");
    assert_eq!(out.wait_for("REMOTE_NAMES ", deadline), "{error,closed}");
    assert!(out.wait_exit(deadline).success());

    // The link went through distgate on both sides, and the refusals were logged.
    log_event(&mut pods, 1, "dist connection opened", "b");
    let refused = "registration from a non-local address refused";
    pods.output(1)
        .wait_line(refused, Duration::from_secs(5), |l| l.contains(refused));
    assert!(pods.output(0).text().contains("\"node registered\""));
}
