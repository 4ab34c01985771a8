//! Real BEAM interop on one host: OTP nodes (and an Elixir node) with `ERL_EPMD_PORT`
//! pointing at distgate and `-start_epmd false` register, find each other through
//! PORT_PLEASE2, and talk over the public ports.
//!
//! Needs `erl` (and `elixir`/`iex` for the Elixir test); `scripts/test` installs them.
//! With `CI=true` a missing runtime fails the test instead of skipping it.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::support::beam::{
    COOKIE, IDLE, Output, WithB, erl, node_deadline, registered, runtime, with_node_b,
};
use crate::support::*;

/// The Erlang script run by the initiating node: ping, rpc, the public port it reached
/// the peer on, and 64 MiB each way checked by MD5.
fn talk_to(peer: &str) -> String {
    format!(
        r#"
P = '{peer}',
io:format("PING ~p~n", [net_adm:ping(P)]),
io:format("RPC ~p~n", [rpc:call(P, erlang, node, [])]),
{{P, Ctrl}} = lists:keyfind(P, 1, erlang:system_info(dist_ctrl)),
{{ok, {{_, PeerPort}}}} = inet:peername(Ctrl),
io:format("PEERPORT ~p~n", [PeerPort]),
Up = rand:bytes(64 bsl 20),
io:format("UP ~p~n", [rpc:call(P, erlang, md5, [Up]) =:= erlang:md5(Up)]),
{{Down, Sum}} = rpc:call(P, erlang, apply,
    [fun() -> X = rand:bytes(64 bsl 20), {{X, erlang:md5(X)}} end, []]),
io:format("DOWN ~p ~p~n", [byte_size(Down), erlang:md5(Down) =:= Sum]),
halt().
"#
    )
}

fn check_talk(a: &mut Output, public_port: u16, peer: &str) {
    let deadline = node_deadline();
    assert_eq!(a.wait_for("PING ", deadline), "pong");
    assert_eq!(a.wait_for("RPC ", deadline), format!("'{peer}'"));
    assert_eq!(
        a.wait_for("PEERPORT ", deadline),
        public_port.to_string(),
        "the link did not go through the public port"
    );
    assert_eq!(a.wait_for("UP ", deadline), "true");
    assert_eq!(a.wait_for("DOWN ", deadline), format!("{} true", 64 << 20));
    assert!(a.wait_exit(deadline).success());
}

#[test]
fn two_otp_nodes_talk_through_distgate() {
    if !require(&["erl"]) {
        return;
    }
    let b = with_node_b(Options::default(), "b", "127.0.0.1", &[]);
    let real = b.dg.registry.get(&b.short).unwrap();
    assert_ne!(real.real_port, b.public);

    let a_name = format!("{}@127.0.0.1", unique("a"));
    let mut a = Output::spawn(
        "node a",
        &mut erl(&a_name, b.dg.epmd.port(), &talk_to(&b.name)),
    );
    check_talk(&mut a, b.public, &b.name);
}

#[test]
fn ipv6_nodes_talk_through_distgate() {
    if !require(&["erl"]) {
        return;
    }
    let inet6 = ["-proto_dist", "inet6_tcp"];
    let options = Options {
        ipv6: true,
        ..Options::default()
    };
    let b = with_node_b(options, "b6", "::1", &inet6);
    let node = b.dg.registry.get(&b.short).unwrap();
    assert!(
        node.upstream_ip.is_ipv6(),
        "inet6_tcp node registered over IPv4"
    );

    let mut a_cmd = erl(
        &format!("{}@::1", unique("a6")),
        b.dg.epmd.port(),
        &talk_to(&b.name),
    );
    a_cmd.args(inet6);
    let mut a = Output::spawn("node a6", &mut a_cmd);
    check_talk(&mut a, b.public, &b.name);
}

#[test]
fn a_restarted_node_gets_a_higher_creation() {
    if !require(&["erl"]) {
        return;
    }
    let rt = runtime();
    let dg = rt.block_on(InProcess::start(Options::default()));
    let short = unique("r");
    let name = format!("{short}@127.0.0.1");
    let mut first = Output::spawn("first run", &mut erl(&name, dg.epmd.port(), IDLE));
    let c1: u64 = first.wait_for("READY ", node_deadline()).parse().unwrap();
    drop(first);
    eventually_blocking(
        node_deadline(),
        "the registration to end with the node",
        || dg.registry.get(&short).is_none().then_some(()),
    );
    let mut second = Output::spawn("second run", &mut erl(&name, dg.epmd.port(), IDLE));
    let c2: u64 = second.wait_for("READY ", node_deadline()).parse().unwrap();
    assert!(c2 > c1, "creation {c2} after {c1}");
}

/// Starts the same node name twice against `epmd_port`; returns the second's exit
/// code and the line that explains it, and the first node, still running.
fn duplicate_outcome(epmd_port: u16, short: &str) -> ((Option<i32>, String), Output) {
    let name = format!("{short}@127.0.0.1");
    let mut owner = Output::spawn("owner", &mut erl(&name, epmd_port, IDLE));
    owner.wait_for("READY", node_deadline());
    let mut dup = Output::spawn("duplicate", &mut erl(&name, epmd_port, IDLE));
    let status = dup.wait_exit(node_deadline());
    let text = dup.text();
    let line = text
        .lines()
        .find(|l| l.contains("seems to be in use"))
        .unwrap_or_else(|| panic!("no duplicate-name message:\n{text}"))
        .replace(epmd_port.to_string().as_str(), "<port>");
    // The owner is untouched.
    assert!(owner.process.exited().is_none(), "the owner died");
    ((status.code(), line), owner)
}

#[test]
fn a_duplicate_name_fails_as_with_the_real_epmd() {
    if !require(&["erl", "epmd"]) {
        return;
    }
    let rt = runtime();
    let dg = rt.block_on(InProcess::start(Options::default()));
    let short = unique("dup");
    let (ours, _owner) = duplicate_outcome(dg.epmd.port(), &short);
    assert!(
        dg.registry.get(&short).is_some(),
        "the owner lost its registration"
    );

    let epmd_port = free_port();
    let _epmd = Process::spawn(
        "epmd",
        Command::new("epmd")
            .args(["-port", &epmd_port.to_string(), "-address", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    rt.block_on(eventually("epmd to listen", || async move {
        tokio::net::TcpStream::connect(loopback(epmd_port))
            .await
            .ok()
    }));
    let (theirs, _) = duplicate_outcome(epmd_port, &short);
    assert_eq!(ours, theirs);
    assert_eq!(ours.0, Some(1));
}

#[test]
fn an_elixir_node_answers_ping_and_a_remote_shell() {
    if !require(&["erl", "elixir", "iex", "script"]) {
        return;
    }
    let rt = runtime();
    let dg = rt.block_on(InProcess::start(Options {
        pool: 2,
        ..Options::default()
    }));
    let port = dg.epmd.port().to_string();
    let short = unique("ex");
    let name = format!("{short}@127.0.0.1");
    let mut elixir = Output::spawn(
        "elixir node",
        Command::new("elixir")
            .env("ERL_EPMD_PORT", &port)
            .args([
                "--name",
                &name,
                "--cookie",
                COOKIE,
                "--erl",
                "-start_epmd false",
            ])
            .args(["-e", "IO.puts(\"READY\"); Process.sleep(:infinity)"]),
    );
    elixir.wait_for("READY", node_deadline());
    let public = registered(&dg, &short);

    // An Erlang node pings it and asks it something in Elixir terms.
    let eval = format!(
        "io:format(\"PING ~p~n\", [net_adm:ping('{name}')]),\
         io:format(\"VERSION ~s~n\", [rpc:call('{name}', 'Elixir.System', version, [])]),\
         halt()."
    );
    let mut erl_node = Output::spawn(
        "erl node",
        &mut erl(&format!("{}@127.0.0.1", unique("e")), dg.epmd.port(), &eval),
    );
    assert_eq!(erl_node.wait_for("PING ", node_deadline()), "pong");
    assert!(!erl_node.wait_for("VERSION ", node_deadline()).is_empty());

    // `iex --remsh` needs a terminal: `script` gives it one.
    let iex = format!(
        "iex --name {}@127.0.0.1 --cookie {COOKIE} --erl '-start_epmd false -dist_listen false' --remsh {name}",
        unique("sh")
    );
    let (mut shell, mut keys) = Output::spawn_interactive(
        "iex --remsh",
        Command::new("script")
            .env("ERL_EPMD_PORT", &port)
            .args(["-qec", &iex, "/dev/null"]),
    );
    shell.wait_for(&format!("iex({name})1>"), node_deadline());
    keys.write_all(b"IO.puts(\"REMOTE #{node()}\")\r").unwrap();
    assert_eq!(shell.wait_for("REMOTE ", node_deadline()), name);
    // Ctrl-C, then (a)bort: the shell node leaves, the remote node stays.
    keys.write_all(b"\x03").unwrap();
    shell.wait_for("BREAK:", node_deadline());
    keys.write_all(b"a\r").unwrap();
    shell.wait_exit(node_deadline());
    assert!(elixir.process.exited().is_none(), "the remote node died");
    assert_eq!(dg.registry.get(&short).unwrap().public_port, Some(public));
}

/// `/metrics` text from an in-process distgate.
fn scrape(rt: &tokio::runtime::Runtime, dg: &InProcess) -> String {
    let (status, body) = rt.block_on(http_get(dg.admin.unwrap(), "/metrics"));
    assert_eq!(status, 200);
    body
}

#[test]
fn metrics_match_the_nodes_own_socket_counts() {
    if !require(&["erl"]) {
        return;
    }
    let admin = Options {
        admin: true,
        ..Options::default()
    };
    let WithB {
        b: _b,
        dg,
        rt,
        short: b_short,
        name: b_name,
        ..
    } = with_node_b(admin, "mb", "127.0.0.1", &[]);
    let port = dg.epmd.port();
    // Talk, let global settle, read the socket's own counters until they stand still,
    // then hang up.
    let script = format!(
        r#"
P = '{b_name}',
pong = net_adm:ping(P),
global:sync(),
P = rpc:call(P, erlang, node, []),
{{P, Ctrl}} = lists:keyfind(P, 1, erlang:system_info(dist_ctrl)),
Stat = fun() -> {{ok, S}} = inet:getstat(Ctrl, [send_oct, recv_oct]), S end,
Still = fun Still(Last) -> timer:sleep(50), case Stat() of Last -> Last; New -> Still(New) end end,
[{{send_oct, Sent}}, {{recv_oct, Received}}] = Still(Stat()),
erlang:disconnect_node(P),
io:format("OCTETS ~p ~p~n", [Sent, Received]),
halt().
"#
    );
    let a_name = format!("{}@127.0.0.1", unique("ma"));
    let mut a = Output::spawn("node a", &mut erl(&a_name, port, &script));
    let octets = a.wait_for("OCTETS ", node_deadline());
    let (sent, received) = octets.split_once(' ').unwrap();
    let labels = [
        ("node", b_short.as_str()),
        ("peer", a_name.as_str()),
        ("direction", "inbound"),
    ];
    // Node a disconnects: the peer closed the link.
    let closed = [
        labels.as_slice(),
        &[("reason", "closed"), ("closed_by", "peer")],
    ]
    .concat();
    let text = eventually_blocking(node_deadline(), "the link to be counted closed", || {
        let text = scrape(&rt, &dg);
        sample(&text, "distgate_dist_connections_closed_total", &closed).map(|_| text)
    });
    // What a sent is what distgate received from the peer, and the other way round.
    assert_eq!(
        sample(&text, "distgate_dist_received_bytes_total", &labels),
        Some(sent.parse().unwrap())
    );
    assert_eq!(
        sample(&text, "distgate_dist_sent_bytes_total", &labels),
        Some(received.parse().unwrap())
    );
    assert_eq!(
        sample(&text, "distgate_dist_connections_active", &labels),
        Some(0.0)
    );
}

/// Writes a self-signed certificate and an `-ssl_dist_optfile` for TLS distribution.
fn tls_files(dir: &std::path::Path) -> std::path::PathBuf {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "openssl failed");
    let optfile = dir.join("ssl_dist.conf");
    std::fs::write(
        &optfile,
        format!(
            "[{{server, [{{certfile, \"{}\"}}, {{keyfile, \"{}\"}}, {{verify, verify_none}}]}},\n \
             {{client, [{{verify, verify_none}}]}}].\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    optfile
}

#[test]
fn tls_distribution_passes_through_and_is_labelled_tls() {
    if !require(&["erl", "openssl"]) {
        return;
    }
    let dir = std::env::temp_dir().join(unique("distgate-tls-"));
    std::fs::create_dir_all(&dir).unwrap();
    let optfile = tls_files(&dir);
    let optfile = optfile.to_str().unwrap();
    let tls = ["-proto_dist", "inet_tls", "-ssl_dist_optfile", optfile];
    let admin = Options {
        admin: true,
        ..Options::default()
    };
    let WithB {
        b: _b,
        dg,
        rt,
        short: b_short,
        name: b_name,
        public: b_public,
    } = with_node_b(admin, "tb", "127.0.0.1", &tls);
    let port = dg.epmd.port();

    let eval = format!(
        "io:format(\"PING ~p~n\", [net_adm:ping('{b_name}')]),\
         io:format(\"RPC ~p~n\", [rpc:call('{b_name}', erlang, node, [])]),\
         halt()."
    );
    let mut a_cmd = erl(&format!("{}@127.0.0.1", unique("ta")), port, &eval);
    a_cmd.args(tls);
    let mut a = Output::spawn("tls node a", &mut a_cmd);
    assert_eq!(a.wait_for("PING ", node_deadline()), "pong");
    assert_eq!(a.wait_for("RPC ", node_deadline()), format!("'{b_name}'"));
    a.wait_exit(node_deadline());
    let text = scrape(&rt, &dg);
    let labels = [
        ("node", b_short.as_str()),
        ("peer", "tls"),
        ("direction", "inbound"),
    ];
    assert!(
        sample(&text, "distgate_dist_connections_opened_total", &labels).unwrap_or(0.0) >= 1.0,
        "no TLS link to {b_public} in:\n{text}"
    );
    assert!(sample(&text, "distgate_dist_received_bytes_total", &labels).unwrap_or(0.0) > 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}
