//! A real mix release beside distgate on its default one-port pool: `bin/app start`,
//! then `bin/app rpc` and `bin/app remote` while a peer keeps its link, and the app
//! restarted (by `bin/app stop`, then by a crash) while clients come and go. The
//! release clients (`rpc-*`, `rem-*`) register without a public port, the app always
//! gets the pool's port back, and the clients' links share the `peer="client"` label.
//!
//! The release is built here, offline: `mix new` and `mix release` need no package.
//! Needs `erl`, `elixir`, `mix` and `script`; with `CI=true` a missing one fails.

use crate::support;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::beam::{COOKIE, Output, REPL, Repl, erl, node_deadline, runtime};
use crate::support::*;

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `command` to completion in `dir`; its output when it succeeds.
fn run(what: &str, dir: &Path, command: &mut Command) -> String {
    let output = command
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{what} failed: {text}");
    text
}

/// `mix new app` and `mix release` in `dir`, with Mix's state kept there too; with
/// `remote_vm_args`, `mix release.init` first and those lines added to
/// `rel/remote.vm.args.eex`. The release's `bin/app`.
fn build_release(dir: &Path, remote_vm_args: Option<&str>) -> PathBuf {
    let mix = |args: &[&str]| {
        let mut command = Command::new("mix");
        command
            .args(args)
            .env("MIX_HOME", dir.join("mix-home"))
            .env("HEX_HOME", dir.join("hex-home"))
            .env("HEX_OFFLINE", "1")
            .env("MIX_ENV", "prod");
        command
    };
    run("mix new", dir, &mut mix(&["new", "app"]));
    let project = dir.join("app");
    if let Some(lines) = remote_vm_args {
        run("mix release.init", &project, &mut mix(&["release.init"]));
        let path = project.join("rel/remote.vm.args.eex");
        let mut text = std::fs::read_to_string(&path).expect("release.init writes it");
        text.push_str(lines);
        std::fs::write(&path, text).unwrap();
    }
    run("mix release", &project, &mut mix(&["release", "--quiet"]));
    let bin = dir.join("app/_build/prod/rel/app/bin/app");
    assert!(bin.is_file(), "mix release made no {}", bin.display());
    bin
}

/// `bin/app <args>` for node `app@127.0.0.1`, registering with the EPMD at `epmd`.
fn app(bin: &Path, epmd: u16, args: &[&str]) -> Command {
    let mut command = app_bare(bin, epmd, args);
    command.env("ELIXIR_ERL_OPTIONS", "-start_epmd false");
    command
}

/// [`app`] without `-start_epmd false`: as a release runs where nothing sets it.
fn app_bare(bin: &Path, epmd: u16, args: &[&str]) -> Command {
    let mut command = Command::new(bin);
    command
        .args(args)
        .env("RELEASE_DISTRIBUTION", "name")
        .env("RELEASE_NODE", "app@127.0.0.1")
        .env("RELEASE_COOKIE", COOKIE)
        .env("ERL_EPMD_PORT", epmd.to_string())
        .env_remove("ERL_AFLAGS")
        .env_remove("ELIXIR_ERL_OPTIONS");
    command
}

/// `bin/app start`, once the app has registered with `dg`: the app and its node.
fn start_app(bin: &Path, dg: &InProcess) -> (Output, distgate::registry::Node) {
    let mut started = Output::spawn("bin/app start", &mut app(bin, dg.epmd.port(), &["start"]));
    let node = eventually_blocking(node_deadline(), "the app to register", || {
        if let Some(status) = started.process.exited() {
            panic!("bin/app start exited ({status}):\n{}", started.text());
        }
        dg.registry.get("app")
    });
    (started, node)
}

/// `bin/app remote`, which needs a terminal: `script` gives it one. Its output and
/// keyboard.
fn remote_shell(bin: &Path, epmd: u16) -> (Output, std::process::ChildStdin) {
    let mut command = Command::new("script");
    command.args(["-qec", &format!("{} remote", bin.display()), "/dev/null"]);
    for (key, value) in app(bin, epmd, &[]).get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    Output::spawn_interactive("bin/app remote", &mut command)
}

/// The registry looked at every 2 ms on a thread of its own, each look folded into `S`.
struct Watch<S> {
    state: Arc<Mutex<S>>,
    done: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl<S: Default + Send + 'static> Watch<S> {
    fn start(
        registry: Arc<distgate::registry::Registry>,
        mut look: impl FnMut(&mut S, &[distgate::registry::Node]) + Send + 'static,
    ) -> Watch<S> {
        let state = Arc::new(Mutex::new(S::default()));
        let done = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, done) = (Arc::clone(&state), Arc::clone(&done));
            std::thread::spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    let nodes = registry.nodes();
                    look(&mut state.lock().unwrap(), &nodes);
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        Watch {
            state,
            done,
            thread,
        }
    }

    /// Stops watching; what was seen.
    fn finish(self) -> S {
        self.done.store(true, Ordering::SeqCst);
        self.thread.join().unwrap();
        std::mem::take(&mut *self.state.lock().unwrap())
    }
}

/// What a watcher saw of the registry, polled every few milliseconds.
#[derive(Default)]
struct Seen {
    /// Release clients seen registered (name, public port).
    clients: Vec<(String, Option<u16>)>,
    /// Clients seen registered while the app was not.
    clients_while_app_down: usize,
    /// Public ports the app was seen with.
    app_ports: Vec<Option<u16>>,
}

#[test]
fn a_mix_release_keeps_its_port_while_its_clients_come_and_go() {
    if !require(&["erl", "elixir", "mix", "script"]) {
        return;
    }
    let dir = TempDir(std::env::temp_dir().join(unique("distgate-release-")));
    std::fs::create_dir_all(&dir.0).unwrap();
    let bin = build_release(&dir.0, None);

    let rt = runtime();
    let dg = rt.block_on(InProcess::start(Options {
        admin: true,
        ..Options::default()
    }));
    assert_eq!(dg.public_ports.len(), 1, "the default pool: one port");
    let public = dg.public_ports[0];
    let epmd = dg.epmd.port();

    // The watcher: every registration of a client, and every port the app had.
    let watch = Watch::start(dg.registry.clone(), |seen: &mut Seen, nodes| {
        let app = nodes.iter().find(|n| n.name == "app");
        if let Some(app) = app
            && seen.app_ports.last() != Some(&app.public_port)
        {
            seen.app_ports.push(app.public_port);
        }
        for n in nodes.iter().filter(|n| n.client) {
            let entry = (n.name.clone(), n.public_port);
            if !seen.clients.contains(&entry) {
                seen.clients.push(entry);
                seen.clients_while_app_down += usize::from(app.is_none());
            }
        }
    });

    let start_app = || {
        let (started, node) = start_app(&bin, &dg);
        assert_eq!(
            node.public_port,
            Some(public),
            "the app must have the pool's port"
        );
        started
    };
    let mut started = start_app();

    // The peer, a node elsewhere: it dials the app through distgate and keeps the link.
    let mut peer_cmd = erl(&format!("{}@127.0.0.1", unique("peer")), epmd, REPL);
    peer_cmd.args(["-dist_listen", "false"]);
    let (mut peer, stdin) = Output::spawn_interactive("peer", &mut peer_cmd);
    let mut repl = Repl::new(stdin);
    let linked = "lists:member('app@127.0.0.1', nodes(hidden))";
    assert_eq!(repl.ask(&mut peer, "net_adm:ping('app@127.0.0.1')"), "pong");

    // `bin/app rpc`, a few times: each a new `rpc-<random>-app` name.
    for i in 0..3 {
        let out = run(
            "bin/app rpc",
            &dir.0,
            &mut app(
                &bin,
                epmd,
                &["rpc", &format!("IO.puts(\"RPC-{i}-\" <> \"ok\")")],
            ),
        );
        assert!(out.contains(&format!("RPC-{i}-ok")), "{out}");
    }
    assert_eq!(
        repl.ask(&mut peer, linked),
        "true",
        "the peer lost its link"
    );

    let (mut shell, mut keys) = remote_shell(&bin, epmd);
    shell.wait_line("the remote prompt", node_deadline(), |l| {
        l.contains("iex(app@127.0.0.1)1>")
    });
    keys.write_all(b"IO.puts(\"REMOTE \" <> Atom.to_string(node()))\r")
        .unwrap();
    assert_eq!(shell.wait_for("REMOTE ", node_deadline()), "app@127.0.0.1");
    let rem = eventually_blocking(DEADLINE, "the remote shell's node", || {
        (dg.registry.nodes().into_iter()).find(|n| n.name.starts_with("rem-"))
    });
    assert_eq!((rem.public_port, rem.client), (None, true), "{rem:?}");
    // `/nodes` (and `distgate nodes`) tells the client from the app.
    let (status, body) = rt.block_on(http_get(dg.admin.unwrap(), "/nodes"));
    assert_eq!(status, 200);
    let nodes: serde_json::Value = serde_json::from_str(&body).unwrap();
    let listed = |name: &str| {
        (nodes["nodes"].as_array().unwrap().iter())
            .find(|n| n["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not in /nodes: {body}"))
    };
    assert_eq!(listed(&rem.name)["client"], true, "{body}");
    assert_eq!(listed(&rem.name)["public_port"], serde_json::Value::Null);
    assert_eq!(listed("app")["client"], false, "{body}");
    assert_eq!(listed("app")["public_port"], public, "{body}");
    // The gauge of nodes counts the app only; the client has its own.
    let (_, metrics) = rt.block_on(http_get(dg.admin.unwrap(), "/metrics"));
    assert_eq!(
        sample(&metrics, "distgate_registered_nodes", &[]),
        Some(1.0)
    );
    let clients = sample(&metrics, "distgate_registered_clients", &[]).unwrap_or(0.0);
    assert!(clients >= 1.0, "registered clients: {clients}");
    assert_eq!(
        repl.ask(&mut peer, linked),
        "true",
        "the peer lost its link"
    );
    // Ctrl-C, then (a)bort: the shell's node leaves, the app stays.
    keys.write_all(b"\x03").unwrap();
    shell.wait_for("BREAK:", node_deadline());
    keys.write_all(b"a\r").unwrap();
    shell.wait_exit(node_deadline());
    assert!(
        started.process.exited().is_none(),
        "the app died with its remote shell"
    );

    // Two restarts: `bin/app stop` (itself an rpc client), then a crash (SIGKILL).
    // While the app is down a client registers and stays: it must not take the port.
    for restart in ["stop", "crash"] {
        match restart {
            "stop" => {
                run("bin/app stop", &dir.0, &mut app(&bin, epmd, &["stop"]));
            }
            _ => started.process.child.kill().unwrap(),
        }
        started.wait_exit(node_deadline());
        eventually_blocking(DEADLINE, "the app to unregister", || {
            dg.registry.get("app").is_none().then_some(())
        });
        // A client that lives through the restart, like an exec probe's `rpc` caught
        // mid-call, and a `bin/app rpc` that finds the app down.
        let held = format!("rpc-held{restart}-app@127.0.0.1");
        let mut client = Output::spawn(
            "a client held over the restart",
            &mut erl(&held, epmd, support::beam::IDLE),
        );
        client.wait_for("READY", node_deadline());
        let down = app(&bin, epmd, &["rpc", "IO.puts(:unreachable)"])
            .current_dir(&dir.0)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!down.status.success(), "rpc reached an app that is down");
        let short = held.split('@').next().unwrap().to_owned();
        let node = dg
            .registry
            .get(&short)
            .expect("the held client is registered");
        assert_eq!((node.public_port, node.client), (None, true));

        started = start_app();
        assert_eq!(
            repl.until(
                &mut peer,
                "net_adm:ping('app@127.0.0.1')",
                node_deadline(),
                |r| { r == "pong" }
            ),
            "pong"
        );
        drop(client);
    }
    let out = run(
        "bin/app rpc after the restarts",
        &dir.0,
        &mut app(&bin, epmd, &["rpc", "IO.puts(\"AFTER-\" <> \"ok\")"]),
    );
    assert!(out.contains("AFTER-ok"), "{out}");

    let seen = watch.finish();
    let held: Vec<_> = (seen.clients.iter())
        .filter(|(_, port)| port.is_some())
        .collect();
    assert!(held.is_empty(), "clients took public ports: {held:?}");
    for prefix in ["rpc-", "rem-"] {
        assert!(
            seen.clients
                .iter()
                .any(|(name, _)| name.starts_with(prefix)),
            "no {prefix}* client seen: {:?}",
            seen.clients
        );
    }
    assert!(
        seen.clients_while_app_down >= 2,
        "clients seen while the app was down: {}",
        seen.clients_while_app_down
    );
    assert_eq!(
        seen.app_ports,
        [Some(public)],
        "the app's ports over its life"
    );

    // The clients' links share one label; no random client name became a series.
    let (status, metrics) = rt.block_on(http_get(dg.admin.unwrap(), "/metrics"));
    assert_eq!(status, 200);
    let opened = "distgate_dist_connections_opened_total";
    let by_clients: f64 = (metrics.lines())
        .filter(|l| l.starts_with(&format!("{opened}{{")) && l.contains("peer=\"client\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert!(
        by_clients >= 4.0,
        "links of clients: {by_clients}\n{metrics}"
    );
    let named: Vec<_> = (metrics.lines())
        .filter(|l| l.contains("peer=\"rpc-") || l.contains("peer=\"rem-"))
        .collect();
    assert!(named.is_empty(), "client names as labels: {named:?}");
}

#[test]
fn with_dist_listen_false_release_clients_do_not_register_at_all() {
    if !require(&["erl", "elixir", "mix", "script"]) {
        return;
    }
    let dir = TempDir(std::env::temp_dir().join(unique("distgate-release-")));
    std::fs::create_dir_all(&dir.0).unwrap();
    // What docs/kubernetes.md tells a release to put in rel/remote.vm.args.eex.
    let bin = build_release(&dir.0, Some("\n-start_epmd false\n-dist_listen false\n"));

    let rt = runtime();
    let dg = rt.block_on(InProcess::start(Options::default()));
    let epmd = dg.epmd.port();
    let (mut started, _) = start_app(&bin, &dg);

    // Every name registered while the clients run, polled every few milliseconds.
    let watch = Watch::start(
        dg.registry.clone(),
        |names: &mut BTreeSet<String>, nodes| {
            names.extend(nodes.iter().map(|n| n.name.clone()));
        },
    );
    let out = run(
        "bin/app rpc",
        &dir.0,
        &mut app(&bin, epmd, &["rpc", "IO.puts(\"RPC-\" <> \"ok\")"]),
    );
    assert!(out.contains("RPC-ok"), "{out}");
    let (mut shell, mut keys) = remote_shell(&bin, epmd);
    // Keys typed before the shell is up may be flushed when it sets up the terminal.
    shell.wait_line("the remote prompt", node_deadline(), |l| {
        l.contains("iex(app@127.0.0.1)1>")
    });
    keys.write_all(b"IO.puts(\"REMOTE \" <> Atom.to_string(node()))\r")
        .unwrap();
    assert_eq!(shell.wait_for("REMOTE ", node_deadline()), "app@127.0.0.1");
    keys.write_all(b"\x03").unwrap();
    shell.wait_for("BREAK:", node_deadline());
    keys.write_all(b"a\r").unwrap();
    shell.wait_exit(node_deadline());

    let names = watch.finish();
    assert_eq!(
        names.iter().collect::<Vec<_>>(),
        ["app"],
        "only the app registers"
    );
    assert!(started.process.exited().is_none(), "the app died");
}

/// An epmd this test caused (a release command started it as a daemon), ended by its
/// PID when the test ends, whatever happened.
struct StrayEpmd(u32);

impl Drop for StrayEpmd {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.to_string()).status();
    }
}

/// The PID of the process listening on 127.0.0.1:`port`, if any (`ss`).
fn listener_pid(port: u16) -> Option<u32> {
    let out = Command::new("ss")
        .args(["-ltnpH", &format!("sport = :{port}")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.find("pid=")? + 4;
    text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// The names the EPMD at `port` answers (`epmd -names`, the real client).
fn epmd_names(port: u16) -> String {
    let out = Command::new("epmd")
        .args(["-port", &port.to_string(), "-names"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The stray epmd (README, "Set ERL_AFLAGS"): distgate down, a release command run in
/// the app's container, distgate back. A command run without `-start_epmd false`
/// leaves an epmd on distgate's port, and distgate, started again, cannot listen and
/// says how out; with `ERL_AFLAGS="-start_epmd false"`, as the shipped manifests set
/// it, the command starts none and distgate comes back.
#[test]
fn a_release_command_run_while_distgate_is_down_starts_no_epmd_with_erl_aflags() {
    if !require(&["erl", "elixir", "mix", "epmd", "ss"]) {
        return;
    }
    let dir = TempDir(std::env::temp_dir().join(unique("distgate-stray-")));
    std::fs::create_dir_all(&dir.0).unwrap();
    // The release as `mix release` makes it: nothing in its vm.args files.
    let bin = build_release(&dir.0, None);
    let port = free_port();
    let config = dir.0.join("distgate.toml");
    std::fs::write(
        &config,
        format!(
            "[epmd]\nlisten = [\"127.0.0.1:{port}\"]\n[dist]\nlisten = [\"127.0.0.1\"]\n\
             ports = [{}]\n[admin]\nlisten = []\n",
            free_port()
        ),
    )
    .unwrap();
    let distgate = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_distgate"));
        command
            .args(["--log-format", "json", "--config"])
            .arg(&config);
        Output::spawn("distgate", &mut command)
    };
    let up = |dg: &mut Output| {
        dg.wait_line("EPMD listening", node_deadline(), |l| {
            l.contains("\"EPMD listening\"")
        });
    };
    let mut dg = distgate();
    up(&mut dg);
    // The app as the manifests start it.
    let with_aflags = |mut command: Command| {
        command.env("ERL_AFLAGS", "-start_epmd false");
        command
    };
    let mut started = Output::spawn(
        "bin/app start",
        &mut with_aflags(app_bare(&bin, port, &["start"])),
    );
    eventually_blocking(node_deadline(), "the app to register with distgate", || {
        if let Some(status) = started.process.exited() {
            panic!("bin/app start exited ({status}):\n{}", started.text());
        }
        epmd_names(port).contains("name app ").then_some(())
    });

    // distgate goes down (a sidecar restart, an OOM kill).
    let stop = |dg: &mut Output| {
        let pid = dg.process.pid().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        dg.wait_exit(node_deadline());
    };
    stop(&mut dg);
    assert!(
        !listening(port),
        "distgate's port still held after it exited"
    );

    // A release command without the flag starts an epmd of its own there.
    let _ = app_bare(&bin, port, &["rpc", "IO.puts(:hello)"])
        .output()
        .unwrap();
    let stray = StrayEpmd(listener_pid(port).expect("the release command left an epmd"));
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", stray.0)).unwrap();
    assert_eq!(comm.trim(), "epmd");
    // distgate cannot come back, and says how out.
    let mut refused = distgate();
    let status = refused.wait_exit(node_deadline());
    assert!(!status.success());
    let said = refused.text();
    for needle in [
        "in use",
        "ERL_AFLAGS",
        "by its PID",
        "restart the app container",
    ] {
        assert!(said.contains(needle), "no {needle:?} in:\n{said}");
    }
    drop(stray);
    eventually_blocking(node_deadline(), "the stray epmd to go", || {
        (!listening(port)).then_some(())
    });

    // The same command with ERL_AFLAGS, as the manifests set it: no epmd.
    let out = with_aflags(app_bare(&bin, port, &["rpc", "IO.puts(:hello)"]))
        .output()
        .unwrap();
    assert!(!out.status.success(), "rpc reached a node with no EPMD up");
    assert_eq!(
        listener_pid(port),
        None,
        "a release command started an epmd"
    );
    let mut back = distgate();
    up(&mut back);
    assert_eq!(listener_pid(port), Some(back.process.pid()));
    assert!(started.process.exited().is_none(), "the app died");
}
