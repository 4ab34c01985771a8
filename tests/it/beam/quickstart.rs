//! README's "Five minutes on one machine", step by step: distgate with a pool of two
//! public ports, two Elixir nodes started with `-start_epmd false`, a ping from one to
//! the other through distgate, then `distgate nodes`, `links`, `probe` and `/metrics`.
//! On ports the system picks (the walk uses 4369, 43691-43692 and 9369), with
//! `elixir -e` where the walk opens `iex`. Needs `erl` and `elixir`; with `CI=true` a
//! missing one fails.

use std::process::Command;

use crate::support::beam::{Output, node_deadline, runtime};
use crate::support::binary::listening;
use crate::support::*;

/// `distgate <args>` as run from the walk's fourth terminal: (exit code, output).
fn distgate(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_distgate"))
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

/// `elixir --name NAME@127.0.0.1 --cookie walk --erl "-start_epmd false"` running
/// `eval`, registering with the EPMD at `epmd`.
fn elixir(name: &str, epmd: u16, eval: &str) -> Command {
    let mut command = Command::new("elixir");
    command
        .env("ERL_EPMD_PORT", epmd.to_string())
        .env_remove("ERL_AFLAGS")
        .args(["--name", &format!("{name}@127.0.0.1"), "--cookie", "walk"])
        .args(["--erl", "-start_epmd false", "-e", eval]);
    command
}

#[test]
fn the_five_minute_walk() {
    if !require(&["erl", "elixir"]) {
        return;
    }
    // printf '[dist]\nports = ["43691-43692"]\n' > walk.toml; distgate --config walk.toml
    let dir = TempDir::new("distgate-walk-");
    let config = dir.join("walk.toml");
    std::fs::write(
        &config,
        format!(
            "[epmd]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = [\"127.0.0.1:0\"]\n\
             [dist]\nlisten = [\"127.0.0.1\"]\nports = [{}, {}]\n",
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let mut dg = Output::spawn(
        "distgate",
        Command::new(env!("CARGO_BIN_EXE_distgate"))
            .args(["--log-format", "json", "--config"])
            .arg(&config),
    );
    let epmd = listening(&mut dg, "\"EPMD listening\"").port();
    let admin = listening(&mut dg, "\"admin HTTP listening").to_string();

    // iex --name b@127.0.0.1 --cookie walk --erl "-start_epmd false"
    let mut b = Output::spawn(
        "node b",
        &mut elixir("b", epmd, "IO.puts(\"READY\"); Process.sleep(:infinity)"),
    );
    b.wait_for("READY", node_deadline());
    // iex --name a@127.0.0.1 ...; then Node.ping(:"b@127.0.0.1")
    let mut a = Output::spawn(
        "node a",
        &mut elixir(
            "a",
            epmd,
            "IO.puts(\"PING #{Node.ping(:\"b@127.0.0.1\")}\"); Process.sleep(:infinity)",
        ),
    );
    assert_eq!(a.wait_for("PING ", node_deadline()), "pong");

    // distgate nodes: both, each with a public port.
    let (code, nodes) = distgate(&["nodes", "--admin", &admin]);
    assert_eq!(code, Some(0), "{nodes}");
    for name in ["a ", "b "] {
        assert!(nodes.lines().any(|l| l.starts_with(name)), "{nodes}");
    }
    // distgate links: the link a opened to b.
    let (code, links) = distgate(&["links", "--admin", &admin]);
    assert_eq!(code, Some(0), "{links}");
    assert!(
        links
            .lines()
            .any(|l| l.starts_with("b ") && l.contains("a@127.0.0.1")),
        "{links}"
    );
    // distgate probe b@127.0.0.1: reaches b as a peer would.
    let (code, probe) = distgate(&["probe", "b@127.0.0.1", "--epmd-port", &epmd.to_string()]);
    assert_eq!(code, Some(0), "{probe}");
    assert!(probe.contains("node b@127.0.0.1"), "{probe}");
    // curl -s 127.0.0.1:9369/metrics | grep '^distgate_dist_connections_active'
    let rt = runtime();
    let (status, metrics) = rt.block_on(http_get(admin.parse().unwrap(), "/metrics"));
    assert_eq!(status, 200);
    let labels = [
        ("node", "b"),
        ("peer", "a@127.0.0.1"),
        ("direction", "inbound"),
    ];
    assert_eq!(
        sample(&metrics, "distgate_dist_connections_active", &labels),
        Some(1.0),
        "{metrics}"
    );
}
