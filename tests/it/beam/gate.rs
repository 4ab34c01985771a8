//! The gate's record with real OTP nodes: `/refusals` names a wrong-cookie attempt
//! (`failed`) and a name outside `allow_peers` (`not_allowed`) with the names they
//! claimed; a probe of a real node through the binary leaves no name-mismatch warning
//! and no refusal behind (it hangs up on the challenge by design).

use crate::support::beam::{COOKIE, IDLE, Output, erl, node_deadline, registered, runtime};
use crate::support::binary::Running;
use crate::support::*;

/// A node `name` with `cookie` that pings `target` and prints `PING pong|pang`.
fn pinger(name: &str, cookie: &str, epmd_port: u16, target: &str) -> Output {
    let eval = format!("io:format(\"PING ~p~n\", [net_adm:ping('{target}')]), halt().");
    let mut command = std::process::Command::new("erl");
    command
        .env("ERL_EPMD_PORT", epmd_port.to_string())
        .args(["-noshell", "-name", name, "-setcookie", cookie])
        .args(["-start_epmd", "false", "-eval", &eval]);
    Output::spawn(name, &mut command)
}

#[test]
fn refusals_list_a_wrong_cookie_and_a_name_outside_allow_peers() {
    if !require(&["erl"]) {
        return;
    }
    let rt = runtime();
    let mut options = Options {
        admin: true,
        ..Options::default()
    };
    let text = "[dist]\nallow_peers = [\"t-*@*\", \"good-*@*\"]";
    options.config.dist.allow_peers = distgate::config::parse(text).unwrap().dist.allow_peers;
    let dg = rt.block_on(InProcess::start(options));
    let short = unique("t");
    let target = format!("{short}@127.0.0.1");
    let mut node = Output::spawn("target", &mut erl(&target, dg.epmd.port(), IDLE));
    node.wait_for("READY", node_deadline());
    registered(&dg, &short);

    let guesser = format!("good-{}@127.0.0.1", unique("g"));
    let mut guessing = pinger(&guesser, "wrong", dg.epmd.port(), &target);
    assert_eq!(guessing.wait_for("PING ", node_deadline()), "pang");
    let stranger = format!("{}@127.0.0.1", unique("bad"));
    let mut stranging = pinger(&stranger, COOKIE, dg.epmd.port(), &target);
    assert_eq!(stranging.wait_for("PING ", node_deadline()), "pang");

    let refusals = rt.block_on(async {
        let (status, body) = http_get(dg.admin.unwrap(), "/refusals").await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    });
    let reason_of = |claimed: &str| -> Vec<String> {
        (refusals["refusals"].as_array().unwrap().iter())
            .filter(|r| r["claimed"] == claimed && r["node"] == short.as_str())
            .map(|r| r["reason"].as_str().unwrap().to_owned())
            .collect()
    };
    // A node retries once after a refused handshake on some versions: one or more.
    let failed = reason_of(&guesser);
    assert!(
        !failed.is_empty() && failed.iter().all(|r| r == "failed"),
        "{refusals}"
    );
    let not_allowed = reason_of(&stranger);
    assert!(
        !not_allowed.is_empty() && not_allowed.iter().all(|r| r == "not_allowed"),
        "{refusals}"
    );
}

/// Before: every successful probe left "the caller hung up on the node's challenge"
/// on the target, the very warning the docs say marks a name mismatch.
#[test]
fn a_probe_of_a_real_node_leaves_no_warning_and_no_refusal() {
    if !require(&["erl"]) {
        return;
    }
    let dg = Running::start("");
    let short = unique("p");
    let name = format!("{short}@127.0.0.1");
    let mut node = Output::spawn("node", &mut erl(&name, dg.epmd.port(), IDLE));
    node.wait_for("READY", node_deadline());
    for _ in 0..3 {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_distgate"))
            .args(["probe", &name, "--epmd-port", &dg.epmd.port().to_string()])
            .env_remove("ERL_EPMD_PORT")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_, body) = rt.block_on(http_get(dg.admin, "/refusals"));
    assert_eq!(body.trim(), r#"{"refusals":[]}"#);
    let (_, metrics) = rt.block_on(http_get(dg.admin, "/metrics"));
    let withdrawn = [("node", short.as_str()), ("result", "withdrawn")];
    assert_eq!(
        sample(&metrics, "distgate_dist_handshakes_total", &withdrawn),
        Some(3.0),
        "the probes hung up on the challenge"
    );
    let log = dg.out.text();
    assert!(!log.contains("hung up on the node's challenge"), "{log}");
}
