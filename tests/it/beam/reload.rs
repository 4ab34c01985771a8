//! Reloading the configuration of the running binary (SIGHUP, `POST /reload` through
//! `distgate reload`): new settings for what comes next, every open link untouched; an
//! invalid file or one that needs a restart changes nothing and names the key.

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use crate::support::beam::{IDLE, Output, REPL, Repl, erl, node_deadline, runtime};
use crate::support::binary::Running;
use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes go both ways over a link opened before a reload.
async fn still_linked(client: &mut TcpStream, upstream: &mut TcpStream, what: &[u8]) {
    client.write_all(what).await.unwrap();
    let mut got = vec![0u8; what.len()];
    upstream.read_exact(&mut got).await.unwrap();
    assert_eq!(got, what);
    upstream.write_all(what).await.unwrap();
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(got, what);
}

/// `sha256sum FILE | cut -c1-16`, as the docs tell operators to compare.
fn sha256_prefix(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..16].to_owned()
}

async fn metrics(admin: SocketAddr) -> String {
    let (status, text) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    text
}

fn reloads(text: &str, result: &str) -> f64 {
    sample(text, "distgate_config_reloads_total", &[("result", result)]).unwrap_or(0.0)
}

/// `distgate reload` against `running`: exit code, stdout, stderr.
fn reload_command(running: &Running) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_distgate"))
        .args(["reload", "--admin", &running.admin.to_string()])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_added_serve_and_ports_removed_stop_while_their_links_go_on() {
    let running = Running::start("");
    let first = running.public;
    let (node, _registration) = fake_node(running.epmd, "app").await;
    assert_eq!(port_please(running.epmd, "app").await, Some(first.port()));
    let (mut client, mut upstream) = dist::link(first, &node, "peer@127.0.0.1").await;
    let hash_before = sha256_prefix(&running.config);

    let second = free_port();
    running.rewrite("", &second.to_string(), "", "");
    running.signal("HUP");
    eventually_blocking(DEADLINE, "the reload", || {
        (running.said("configuration reloaded; open links go on as they are") == 1).then_some(())
    });

    // The node moved to the new port; the old one stopped accepting.
    assert_eq!(port_please(running.epmd, "app").await, Some(second));
    assert_eq!(running.said("node's public port changed by the reload"), 1);
    eventually("the removed port to stop accepting", || async move {
        TcpStream::connect(first).await.is_err().then_some(())
    })
    .await;
    // The link through the removed port goes on; a new one comes through the new port.
    still_linked(&mut client, &mut upstream, b"opened before the reload").await;
    let (mut client2, mut upstream2) = dist::link(loopback(second), &node, "peer2@127.0.0.1").await;
    still_linked(&mut client2, &mut upstream2, b"opened after").await;

    let text = metrics(running.admin).await;
    assert_eq!(reloads(&text, "ok"), 1.0);
    let hash = sha256_prefix(&running.config);
    assert_ne!(hash, hash_before);
    let info = |h: &str| sample(&text, "distgate_config_info", &[("hash", h)]);
    assert_eq!(info(&hash), Some(1.0), "{text}");
    assert_eq!(info(&hash_before), Some(0.0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_or_one_that_needs_a_restart_changes_nothing_and_names_the_key() {
    let mut running = Running::start("");
    let port = running.public.port().to_string();
    let (node, _registration) = fake_node(running.epmd, "app").await;
    let (mut client, mut upstream) = dist::link(running.public, &node, "peer@127.0.0.1").await;
    let hash = sha256_prefix(&running.config);

    // Invalid: the key, the file and its line, through `distgate reload`.
    running.rewrite("", &port, "max_connections = 0", "");
    let (code, stdout, stderr) = reload_command(&running);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("not reloaded (invalid)"), "{stderr}");
    assert!(stderr.contains("`dist.max_connections`"), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:7", running.config.display())),
        "{stderr}"
    );
    let line = running.out.wait_line("the error logged", DEADLINE, |l| {
        l.contains("configuration not reloaded, the running one stays")
    });
    assert!(line.contains("\"key\":\"dist.max_connections\""), "{line}");

    // A key only a restart changes: refused by SIGHUP, the key named.
    running.rewrite("", &port, "", "[metrics]\nmax_peers = 5\n");
    running.signal("HUP");
    let line = running.out.wait_line("the refusal logged", DEADLINE, |l| {
        l.contains("cannot change without a restart")
    });
    assert!(line.contains("`metrics`"), "{line}");
    assert!(line.contains("\"result\":\"refused\""), "{line}");

    // Nothing changed: the same port, the link, the configuration in force.
    assert_eq!(
        port_please(running.epmd, "app").await,
        Some(running.public.port())
    );
    still_linked(&mut client, &mut upstream, b"nothing changed").await;
    let text = metrics(running.admin).await;
    assert_eq!(reloads(&text, "invalid"), 1.0);
    assert_eq!(reloads(&text, "refused"), 1.0);
    assert_eq!(reloads(&text, "ok"), 0.0);
    assert_eq!(
        sample(&text, "distgate_config_info", &[("hash", hash.as_str())]),
        Some(1.0),
        "{text}"
    );

    // And a valid file again goes through the same command.
    running.rewrite("", &port, "silent_after = \"1m\"", "");
    let (code, stdout, stderr) = reload_command(&running);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("changed: dist.silent_after"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_is_taken_from_loopback_only_and_by_post() {
    let running = Running::start("");
    // GET is not a reload.
    let (status, _) = http_get(running.admin, "/reload").await;
    assert_eq!(status, 405);
    assert_eq!(running.said("configuration reloaded: nothing changed"), 0);
    // POST from loopback with the file unchanged: ok, nothing changed.
    let (code, stdout, stderr) = reload_command(&running);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("nothing changed"), "{stdout}");
}

/// Node `short@127.0.0.1` registered with `running`, idling.
fn idle_node(running: &Running, short: &str) -> Output {
    let mut command = erl(&format!("{short}@127.0.0.1"), running.epmd.port(), IDLE);
    // Only the links the test makes: no full mesh through `global`.
    command.args(["-connect_all", "false"]);
    let mut node = Output::spawn(short, &mut command);
    node.wait_for("READY", node_deadline());
    node
}

/// Node `short@127.0.0.1` registered with `running`, evaluating what it is asked.
fn repl_node(running: &Running, short: &str) -> (Output, Repl) {
    let mut command = erl(&format!("{short}@127.0.0.1"), running.epmd.port(), REPL);
    command.args(["-connect_all", "false"]);
    let (node, stdin) = Output::spawn_interactive(short, &mut command);
    (node, Repl::new(stdin))
}

/// The open link of peer `peer` (a name part) as `/links` shows it.
async fn link_of(admin: SocketAddr, peer: &str) -> Option<serde_json::Value> {
    let (status, body) = http_get(admin, "/links").await;
    assert_eq!(status, 200);
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let prefix = format!("{peer}@");
    answer["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["peer"].as_str().is_some_and(|p| p.starts_with(&prefix)))
        .cloned()
}

/// 64 MiB from the node it runs on to `to`'s new process, 1 MiB every 40 ms; the
/// receiver checks the MD5 of what arrived against the sender's and the result is
/// kept in `persistent_term` `transfer` as `{Same, Bytes}`.
fn transfer(to: &str) -> String {
    format!(
        "spawn(fun() -> Me = self(), \
         Recv = spawn('{to}', fun() -> L = fun L(Ctx, N) -> receive {{chunk, B}} -> L(erlang:md5_update(Ctx, B), N + byte_size(B)); {{done, From}} -> From ! {{sum, erlang:md5_final(Ctx), N}} end end, L(erlang:md5_init(), 0) end), \
         S = fun S(0, Ctx) -> Ctx; S(K, Ctx) -> B = rand:bytes(1048576), Recv ! {{chunk, B}}, timer:sleep(40), S(K - 1, erlang:md5_update(Ctx, B)) end, \
         Mine = erlang:md5_final(S(64, erlang:md5_init())), \
         Recv ! {{done, Me}}, \
         receive {{sum, Theirs, N}} -> persistent_term:put(transfer, {{Mine =:= Theirs, N}}) end \
         end)"
    )
}

#[test]
fn real_nodes_keep_their_links_across_a_reload_that_changes_pins_routes_names_from_and_limits() {
    if !require(&["erl", "epmd", "sha256sum"]) {
        return;
    }
    let rt = runtime();
    let mut running = Running::start("");
    let public = running.public.port();
    let a = unique("a");
    let (b, x, c) = (unique("b"), unique("x"), unique("c"));
    let a_full = format!("{a}@127.0.0.1");
    let _a = idle_node(&running, &a);
    let (mut b_node, mut b_repl) = repl_node(&running, &b);
    let (mut x_node, mut x_repl) = repl_node(&running, &x);

    // x holds an idle link to a and watches it; b starts the transfer to a.
    let connected = x_repl.ask(&mut x_node, &format!("net_kernel:connect_node('{a_full}')"));
    assert!(connected.ends_with("true"), "{connected}");
    x_repl.ask(
        &mut x_node,
        &format!("erlang:monitor_node('{a_full}', true)"),
    );
    let held = rt
        .block_on(link_of(running.admin, &x))
        .expect("x's link listed");

    // An upstream for the new route: a real epmd with a name registered.
    let upstream_port = free_port();
    let _epmd = Process::spawn(
        "epmd",
        Command::new("epmd")
            .args(["-port", &upstream_port.to_string(), "-address", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let far = unique("far");
    let _far = rt.block_on(async {
        eventually("epmd to listen", || async move {
            TcpStream::connect(loopback(upstream_port)).await.ok()
        })
        .await;
        register(loopback(upstream_port), &alive2(&far, 45_999)).await
    });
    rt.block_on(async {
        assert_eq!(
            port_please(running.epmd, &far).await,
            None,
            "routed before the reload"
        );
        let (_, listed) = names(running.epmd).await;
        assert!(listed.iter().any(|l| l.contains(&a)), "{listed:?}");
    });

    // Mid-transfer: a new port pinned to c, a route, names_from, a limit.
    b_repl.ask(&mut b_node, &transfer(&a_full));
    rt.block_on(eventually("8 MiB of the transfer through", || async {
        let link = link_of(running.admin, &b).await?;
        (link["bytes_from_peer"].as_u64()? >= 8 << 20).then_some(())
    }));
    // Beside c's pinned port, two for b and x (which had none: a held the one port)
    // and one for the routed name.
    let pinned = free_port();
    let more: Vec<String> = (0..3).map(|_| free_port().to_string()).collect();
    running.rewrite(
        "names_from = [\"10.255.0.0/16\"]",
        &format!("{public}, {pinned}, {}", more.join(", ")),
        &format!("max_connections = 3\npins = {{ \"{c}\" = {pinned} }}"),
        &format!(
            "[[route]]\nnodes = \"far*\"\nupstream = \"127.0.0.1\"\nepmd_port = {upstream_port}\n"
        ),
    );
    running.signal("HUP");
    let line = running.out.wait_line("the reload", DEADLINE, |l| {
        l.contains("configuration reloaded; open links go on as they are")
    });
    for key in [
        "dist.ports",
        "dist.pins",
        "dist.max_connections",
        "epmd.names_from",
        "route",
    ] {
        assert!(line.contains(key), "{key} not among the changes: {line}");
    }
    let done = b_repl.ask(&mut b_node, "persistent_term:get(transfer, pending)");
    assert!(
        done.ends_with("pending"),
        "the transfer ended before the reload: {done}"
    );

    // The transfer completes intact and the held link is the same connection.
    b_repl.until(
        &mut b_node,
        "persistent_term:get(transfer, pending)",
        node_deadline(),
        |r| r.ends_with("{true,67108864}"),
    );
    let after = rt
        .block_on(link_of(running.admin, &x))
        .expect("x's link gone");
    assert_eq!(after["source"], held["source"]);
    assert_eq!(after["opened_at"], held["opened_at"]);
    let down = x_repl.ask(
        &mut x_node,
        "receive {nodedown, N} -> {down, N} after 0 -> up end",
    );
    assert!(down.ends_with("up"), "x saw a nodedown: {down}");

    // The new settings hold for what comes next.
    let _c = idle_node(&running, &c);
    let c_full = format!("{c}@127.0.0.1");
    rt.block_on(async {
        assert_eq!(port_please(running.epmd, &c).await, Some(pinned), "c's pin");
        assert!(port_please(running.epmd, &far).await.is_some(), "the route");
        assert_eq!(
            request(running.epmd, &[0, 1, b'n']).await,
            b"",
            "names_from"
        );
    });
    let reached = b_repl.ask(
        &mut b_node,
        &format!("rpc:call('{c_full}', erlang, node, [])"),
    );
    assert!(reached.ends_with(&format!("'{c_full}'")), "{reached}");
    // Three links open (b–a, x–a, b–c): the next one is over dist.max_connections.
    rt.block_on(async {
        let over = TcpStream::connect(loopback(public)).await.unwrap();
        closed_by_peer(&over, "a connection over the new limit").await;
        let text = metrics(running.admin).await;
        let refused = sample(
            &text,
            "distgate_connections_refused_total",
            &[("listener", "dist"), ("reason", "max_connections")],
        );
        assert_eq!(refused, Some(1.0), "{text}");
        assert_eq!(reloads(&text, "ok"), 1.0);
    });
    let still = rt
        .block_on(link_of(running.admin, &x))
        .expect("x's link gone");
    assert_eq!(still["opened_at"], held["opened_at"]);

    // The same with an invalid file (the pin's port out of the pool): nothing changes.
    running.rewrite(
        "",
        &public.to_string(),
        &format!("pins = {{ \"{c}\" = {pinned} }}"),
        "",
    );
    running.signal("HUP");
    let line = running.out.wait_line("the error", DEADLINE, |l| {
        l.contains("configuration not reloaded, the running one stays")
    });
    assert!(
        line.contains(&format!("\"key\":\"dist.pins.{c}\"")),
        "{line}"
    );
    rt.block_on(async {
        assert_eq!(port_please(running.epmd, &c).await, Some(pinned), "c's pin");
        assert_eq!(
            request(running.epmd, &[0, 1, b'n']).await,
            b"",
            "names_from"
        );
        let text = metrics(running.admin).await;
        assert_eq!(reloads(&text, "invalid"), 1.0);
    });
    let again = b_repl.ask(
        &mut b_node,
        &format!("rpc:call('{a_full}', erlang, node, [])"),
    );
    assert!(again.ends_with(&format!("'{a_full}'")), "{again}");
    let still = rt
        .block_on(link_of(running.admin, &x))
        .expect("x's link gone");
    assert_eq!(still["opened_at"], held["opened_at"]);
    let down = x_repl.ask(
        &mut x_node,
        "receive {nodedown, N} -> {down, N} after 0 -> up end",
    );
    assert!(down.ends_with("up"), "x saw a nodedown: {down}");
}
