//! `distgate probe NODE@HOST`: one test per diagnosis. The node that answers is real
//! where it matters (success), a scripted acceptor where a failure must be forced.

use crate::support;
use crate::support::beam::{IDLE, Output, REPL, Repl, erl, node_deadline, registered};
use crate::support::*;
use distgate::handshake::frames::{challenge, frame as framed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Runs `distgate probe` and returns (exit code, output).
async fn probe(node: &str, epmd_port: u16) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_distgate"))
        .args([
            "probe",
            node,
            "--epmd-port",
            &epmd_port.to_string(),
            "--timeout",
            "3s",
        ])
        .env_remove("ERL_EPMD_PORT")
        .output()
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap(), text)
}

/// A node registered as `name` whose dist port answers the handshake with `reply`
/// (raw frames) and then waits.
async fn scripted_node(dg: &InProcess, name: &str, reply: Vec<u8>) -> tokio::net::TcpStream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (registration, _) = register(
        dg.epmd,
        &alive2(name, listener.local_addr().unwrap().port()),
    )
    .await;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut len = [0u8; 2];
            if stream.read_exact(&mut len).await.is_err() {
                continue;
            }
            let mut send_name = vec![0u8; usize::from(u16::from_be_bytes(len))];
            let _ = stream.read_exact(&mut send_name).await;
            let _ = stream.write_all(&reply).await;
            let _ = stream.read(&mut [0u8; 1]).await;
        }
    });
    registration
}

#[test]
fn a_real_node_answers_as_itself() {
    if !require(&["erl"]) {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dg = rt.block_on(InProcess::start(Options::default()));
    let short = unique("p");
    let name = format!("{short}@127.0.0.1");
    let mut node = Output::spawn("node", &mut erl(&name, dg.epmd.port(), IDLE));
    let creation = node.wait_for("READY ", node_deadline());
    let (code, text) = rt.block_on(probe(&name, dg.epmd.port()));
    eprintln!("{text}");
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!("node {name}, creation {creation}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("{short} on port {}", dg.public_ports[0])),
        "{text}"
    );
    assert!(
        text.ends_with(&format!("ok: {name} answers as itself\n")),
        "{text}"
    );
}

/// A node makes an atom of a caller's name before it checks anything: probing again
/// and again must not grow its atom table.
#[test]
fn probing_again_makes_no_new_atoms_on_the_node() {
    if !require(&["erl"]) {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dg = rt.block_on(InProcess::start(Options::default()));
    let short = unique("atoms");
    let name = format!("{short}@127.0.0.1");
    let (mut node, stdin) =
        Output::spawn_interactive("node", &mut erl(&name, dg.epmd.port(), REPL));
    let mut repl = Repl::new(stdin);
    registered(&dg, &short);
    let atoms = |repl: &mut Repl, node: &mut Output| -> u64 {
        repl.ask(node, "erlang:system_info(atom_count)")
            .parse()
            .unwrap()
    };
    // The first probe brings the probe's name (and whatever else a handshake makes).
    let (code, text) = rt.block_on(probe(&name, dg.epmd.port()));
    assert_eq!(code, 0, "{text}");
    // The shell's first answer loads the modules that print it: ask once before counting.
    atoms(&mut repl, &mut node);
    let before = atoms(&mut repl, &mut node);
    for _ in 0..10 {
        let (code, text) = rt.block_on(probe(&name, dg.epmd.port()));
        assert_eq!(code, 0, "{text}");
    }
    let after = atoms(&mut repl, &mut node);
    assert_eq!(after, before, "10 probes made {} atoms", after - before);
}

#[tokio::test]
async fn a_name_the_node_does_not_use_is_a_mismatch() {
    let dg = InProcess::start(Options::default()).await;
    let _node = scripted_node(
        &dg,
        "app",
        [framed(b"sok"), challenge("app@10.1.2.3")].concat(),
    )
    .await;
    let (code, text) = probe("app@127.0.0.1", dg.epmd.port()).await;
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("FAIL: NAME MISMATCH: the node there calls itself `app@10.1.2.3`"),
        "{text}"
    );
    // The diagnosis finishes its sentence with both fixes.
    assert!(
        text.trim_end()
            .ends_with("or have peers dial `app@10.1.2.3`."),
        "{text}"
    );
}

#[tokio::test]
async fn a_refused_handshake_names_the_status() {
    let dg = InProcess::start(Options::default()).await;
    let _node = scripted_node(&dg, "picky", framed(b"snot_allowed")).await;
    let (code, text) = probe("picky@127.0.0.1", dg.epmd.port()).await;
    assert_eq!(code, 1);
    assert!(
        text.contains("refused the handshake with status `not_allowed`: long and short names"),
        "{text}"
    );
}

#[tokio::test]
async fn a_port_that_is_not_dist_is_named() {
    let dg = InProcess::start(Options::default()).await;
    let _node = scripted_node(&dg, "web", framed(b"HTTP/1.1 400")).await;
    let (code, text) = probe("web@127.0.0.1", dg.epmd.port()).await;
    assert_eq!(code, 1);
    assert!(text.contains("FAIL: not a BEAM dist port"), "{text}");
}

#[tokio::test]
async fn an_unregistered_name_lists_what_is_there() {
    let dg = InProcess::start(Options::default()).await;
    let (_other, _) = register(dg.epmd, &alive2("present", 40001)).await;
    let (code, text) = probe("absent@127.0.0.1", dg.epmd.port()).await;
    assert_eq!(code, 1);
    assert!(
        text.contains("FAIL: the name is not registered with that EPMD; registered there: present"),
        "{text}"
    );
}

#[tokio::test]
async fn a_dist_port_that_does_not_accept_is_named() {
    let dg = InProcess::start(Options {
        pool: 0,
        ..Options::default()
    })
    .await;
    // Registered at a port nobody listens on (bound, then let go).
    let gone = free_port();
    let (_registration, _) = register(dg.epmd, &alive2("ghost", gone)).await;
    let (code, text) = probe("ghost@127.0.0.1", dg.epmd.port()).await;
    assert_eq!(code, 1);
    assert!(
        text.contains(&format!(
            "FAIL: the dist port does not accept (127.0.0.1:{gone}"
        )),
        "{text}"
    );
}

#[tokio::test]
async fn no_epmd_is_named() {
    let (code, text) = probe("app@127.0.0.1", free_port()).await;
    assert_eq!(code, 1);
    assert!(text.contains("FAIL: EPMD unreachable"), "{text}");
}

#[test]
fn a_host_that_does_not_resolve_is_named() {
    if !require(&["ip"]) || !require_root() {
        return;
    }
    // In a namespace of its own with no route anywhere, so the lookup fails here and
    // sends nothing out.
    let ns = unique("dgdns");
    let add = std::process::Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .unwrap();
    assert!(add.success());
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            env!("CARGO_BIN_EXE_distgate"),
            "probe",
        ])
        .args(["app@no-such-host.invalid", "--timeout", "3s"])
        .output()
        .unwrap();
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", &ns])
        .status();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL: DNS: the host does not resolve"),
        "{text}"
    );
}

#[tokio::test]
async fn a_malformed_node_name_is_a_usage_error() {
    let (code, text) = probe("no-at-sign", 4369).await;
    assert_eq!(code, 64);
    assert!(text.contains("is not a node name like app@host"), "{text}");
}

/// A peer that dials a node by another host part fails in silence on both nodes; the
/// distgate between them says what happened, and names the node's own name.
#[test]
fn a_peer_dialling_another_host_part_is_named_in_the_log() {
    if !require(&["erl"]) {
        return;
    }
    let mut dg = support::binary::Running::start("");
    let epmd = dg.epmd;
    let dir = std::env::temp_dir().join(unique("distgate-mismatch-"));
    std::fs::create_dir_all(&dir).unwrap();

    let short = unique("app");
    let mut node = Output::spawn(
        "the node",
        &mut erl(&format!("{short}@127.0.0.1"), epmd.port(), IDLE),
    );
    node.wait_for("READY", node_deadline());
    // The peer knows the node as <short>@pod-0.app.test, which its ERL_INETRC maps to
    // this host: its lookup and connection reach the node, whose name differs.
    let inetrc = dir.join("erl_inetrc");
    std::fs::write(
        &inetrc,
        "{host, {127,0,0,1}, [\"pod-0.app.test\"]}.\n{lookup, [file, native]}.\n",
    )
    .unwrap();
    let mut peer_cmd = erl(&format!("{}@127.0.0.1", unique("peer")), epmd.port(), REPL);
    peer_cmd
        .env("ERL_INETRC", &inetrc)
        .args(["-dist_listen", "false"]);
    let (mut peer, stdin) = Output::spawn_interactive("peer", &mut peer_cmd);
    let mut repl = Repl::new(stdin);
    let wrong = format!("net_adm:ping('{short}@pod-0.app.test')");
    assert_eq!(repl.ask(&mut peer, &wrong), "pang");
    let warned = dg.out.wait_line("the mismatch warning", DEADLINE, |l| {
        l.contains("hung up on the node's challenge")
    });
    let value: serde_json::Value = serde_json::from_str(&warned).unwrap();
    assert_eq!(value["node_name"], format!("{short}@127.0.0.1"), "{warned}");
    assert_eq!(value["level"], "WARN", "{warned}");
    // The right name still works, and the node itself logged nothing of it.
    let right = format!("net_adm:ping('{short}@127.0.0.1')");
    assert_eq!(repl.ask(&mut peer, &right), "pong");
    assert!(!node.text().contains("pod-0.app.test"), "{}", node.text());
    let _ = std::fs::remove_dir_all(&dir);
}
