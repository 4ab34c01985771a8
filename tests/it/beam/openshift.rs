//! As OpenShift runs it (SCC restricted-v2): an arbitrary high UID from the
//! namespace's range, GID 0, no capabilities, no home directory, a working directory it
//! cannot write. distgate needs none of them: a real node registers and a peer reaches
//! it through the public port.

use crate::support;
use crate::support::beam::{IDLE, Output, REPL, Repl, erl, node_deadline};
use crate::support::binary::Running;
use crate::support::*;

/// The `Uid:`, `Gid:` and `CapEff:` lines of a process's status.
fn ids(pid: u32) -> (String, String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap()
    };
    (field("Uid:"), field("Gid:"), field("CapEff:"))
}

#[test]
fn an_arbitrary_uid_with_gid_0_serves_a_real_node_and_its_peer() {
    if !require(&["erl", "setpriv"]) || !require_root() {
        return;
    }
    // OpenShift gives each namespace a range like 1000680000/10000.
    let uid = 1_000_680_000 + std::process::id() % 10_000;
    let running = Running::start_as_ids(Some((uid, 0)), "", "");
    let (u, g, caps) = ids(running.out.process.pid());
    assert_eq!(u, format!("{uid} {uid} {uid} {uid}"));
    assert_eq!(g, "0 0 0 0");
    assert_eq!(caps, "0000000000000000");

    let a = unique("a");
    let a_full = format!("{a}@127.0.0.1");
    let mut a_node = Output::spawn(&a, &mut erl(&a_full, running.epmd.port(), IDLE));
    a_node.wait_for("READY", node_deadline());
    let b = unique("b");
    let (mut b_node, stdin) = Output::spawn_interactive(
        &b,
        &mut erl(&format!("{b}@127.0.0.1"), running.epmd.port(), REPL),
    );
    let mut repl = Repl::new(stdin);
    let pong = repl.ask(&mut b_node, &format!("net_adm:ping('{a_full}')"));
    assert!(pong.ends_with("pong"), "{pong}");
    let rt = support::beam::runtime();
    rt.block_on(async {
        let (status, body) = http_get(running.admin, "/links").await;
        assert_eq!(status, 200);
        assert!(
            body.contains(&format!("\"node\":\"{a}\"")) && body.contains(&format!("{b}@127.0.0.1")),
            "{body}"
        );
        assert_eq!(
            port_please(running.epmd, &a).await,
            Some(running.public.port())
        );
    });
    assert!(
        !running.out.text().contains("\"level\":\"ERROR\""),
        "{}",
        running.out.text()
    );
}
