//! Several nodes in one pod: three real nodes behind one distgate, each on its own
//! public port from the pool (one pinned by name), each reached from another pod
//! through the Service ports only.
//!
//! Needs root, `ip`, `nft` and `erl`; with `CI=true` a missing one fails the test.

use crate::support::beam::node_deadline;
use crate::support::netns::Pods;
use crate::support::*;

#[test]
fn three_nodes_in_one_pod_each_get_a_port_and_a_peer() {
    if !require(&["erl", "ip", "nft"]) || !require_root() {
        return;
    }
    let id = unique("dgn");
    let mut pods = Pods::two_with_ports(&id, "43691-43693");
    let (outside, pod) = (0, 1);
    let dir = std::env::temp_dir().join(unique("distgate-three-"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("distgate.toml");
    std::fs::write(
        &config,
        "[dist]\nports = [\"43691-43693\"]\n[dist.pins]\nc = 43691\n",
    )
    .unwrap();
    let dg = pods.distgate(pod, "distgate with three ports", Some(&config));

    let host = pods.pods[pod].host.clone();
    let mut public = vec![];
    for name in ["a", "b", "c"] {
        let node = format!("{name}@{host}");
        pods.idle_node(pod, &node);
        let event = format!("\"node\":\"{name}\"");
        let line = pods
            .output(dg)
            .wait_line("node registered", node_deadline(), |l| {
                l.contains("\"node registered\"") && l.contains(&event)
            });
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        public.push(value["public_port"].as_u64().unwrap());
    }
    // c is pinned to 43691; a and b take the rest in registration order.
    assert_eq!(public, [43692, 43693, 43691]);

    let checks: String = ["a", "b", "c"]
        .iter()
        .map(|n| {
            format!(
                "io:format(\"NODE {n} ~p ~p~n\", [net_adm:ping('{n}@{host}'), rpc:call('{n}@{host}', erlang, node, [])]),"
            )
        })
        .collect();
    let script = format!("{checks} halt().");
    let mut caller = pods.erl(outside, &format!("z@{}", pods.pods[outside].host), &script);
    // The outside pod needs its own EPMD to register with: a distgate on defaults.
    pods.distgate(outside, "distgate outside", None);
    let z = pods.spawn("caller", &mut caller);
    for n in ["a", "b", "c"] {
        assert_eq!(
            pods.output(z)
                .wait_for(&format!("NODE {n} "), node_deadline()),
            format!("pong '{n}@{host}'")
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
