//! The remote-shell path from a laptop: `kubectl port-forward pod/X 4369 43691` plus an
//! `ERL_INETRC` host entry mapping the pod's FQDN to 127.0.0.1, then a plain
//! `erl -remsh` with `-dist_listen false`. Here the "pod" is a network namespace with
//! distgate on its defaults and a real node, and the "laptop" another namespace that
//! reaches it only through a forwarder on its own loopback (socat, standing in for
//! port-forward).
//!
//! Needs root, `ip`, `nft`, `erl`, `socat` and `script`; with `CI=true` a missing one
//! fails the test.

use std::io::Write;

use crate::support::beam::{COOKIE, Output, node_deadline};
use crate::support::netns::{Pods, in_netns};
use crate::support::*;

#[test]
fn remsh_through_a_port_forward_reaches_the_pod_node() {
    if !require(&["erl", "ip", "nft", "socat", "script"]) || !require_root() {
        return;
    }
    let id = unique("dgsh");
    let mut pods = Pods::two(&id);
    let (laptop, pod) = (0, 1);
    let pod_ip = pods.pods[pod].ip.clone();
    let pod_host = pods.pods[pod].host.clone();

    pods.distgate(pod, "distgate in the pod", None);
    let node = format!("app@{pod_host}");
    let app = pods.idle_node(pod, &node);

    // The laptop does not know the pod's name at all (its hosts file lacks it), so
    // only the ERL_INETRC entry can resolve it, to the port-forward.
    let laptop_hosts = format!("/etc/netns/{}/hosts", pods.pods[laptop].ns);
    std::fs::write(&laptop_hosts, "127.0.0.1 localhost\n").unwrap();
    // The laptop's port-forward: its own 127.0.0.1:4369 and :43691 lead to the pod.
    for port in [4369, 43691] {
        let mut forward = pods.command(laptop, "socat");
        forward.args([
            format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"),
            format!("TCP:{pod_ip}:{port}"),
        ]);
        pods.spawn(&format!("port-forward {port}"), &mut forward);
        // The shell gives up at once if the forward is not listening yet.
        let ns = pods.pods[laptop].ns.clone();
        eventually_blocking(node_deadline(), "the port-forward to listen", || {
            let ns = ns.clone();
            in_netns(&ns, move || {
                std::net::TcpStream::connect(("127.0.0.1", port)).ok()
            })
            .map(drop)
        });
    }
    // The pod's FQDN resolves to the laptop's loopback for the remote shell only.
    let dir = TempDir::new("distgate-remsh-");
    let inetrc = dir.join("erl_inetrc");
    std::fs::write(
        &inetrc,
        format!("{{host, {{127,0,0,1}}, [\"{pod_host}\"]}}.\n{{lookup, [file, native]}}.\n"),
    )
    .unwrap();

    let shell = format!(
        "erl -name me@laptop.{id}.test -setcookie {COOKIE} -start_epmd false -dist_listen false -remsh {node}"
    );
    let mut script = pods.command(laptop, "script");
    script
        .env("ERL_INETRC", &inetrc)
        .args(["-qec", &shell, "/dev/null"]);
    let (mut session, mut keys) =
        Output::spawn_interactive("erl -remsh on the laptop", &mut script);
    // The prompt names the node the shell runs on: the pod's.
    session.wait_line("the remote prompt", node_deadline(), |l| {
        l.contains(&format!("({node})1>"))
    });
    keys.write_all(b"io:format(\"REMOTE ~s~n\", [node()]).\r")
        .unwrap();
    assert_eq!(session.wait_for("REMOTE ", node_deadline()), node);
    // Ctrl-C, then (a)bort: the laptop's shell leaves, the pod's node stays.
    keys.write_all(b"\x03").unwrap();
    session.wait_for("BREAK:", node_deadline());
    keys.write_all(b"a\r").unwrap();
    session.wait_exit(node_deadline());
    assert!(
        pods.output(app).process.exited().is_none(),
        "the pod's node died"
    );
}
