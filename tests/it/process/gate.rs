//! The gate's operator side through the binary: `distgate probe` under a narrowed
//! `allow_peers` (20 probes ban nobody and each names the refusal) and against a
//! banned source; `distgate bans`, `unban` and `refusals` with their exit codes; a
//! reload that makes a banned source trusted lifts its ban. Loopback is not trusted in
//! these configurations, to stand for another pod.

use std::process::Command;

use crate::support::binary::Running;
use crate::support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The `[dist]` keys that make loopback another pod's address.
const UNTRUSTED: &str = "trusted = [\"192.0.2.1\"]\n";

/// Runs the binary with `args`: (exit code, stdout and stderr).
fn distgate(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_distgate"))
        .args(args)
        .env_remove("ERL_EPMD_PORT")
        .env_remove("DISTGATE_ADMIN")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap(), text)
}

fn metric(dg: &Running, name: &str, labels: &[(&str, &str)]) -> f64 {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_, text) = rt.block_on(http_get(dg.admin, "/metrics"));
    sample(&text, name, labels).unwrap_or(0.0)
}

/// A fake node `name` registered with `dg`; its listener and registration.
fn node(
    rt: &tokio::runtime::Runtime,
    dg: &Running,
    name: &str,
) -> (tokio::net::TcpListener, TcpStream) {
    rt.block_on(fake_node(dg.epmd, name))
}

/// Junk on the public port, read to the close.
fn junk(rt: &tokio::runtime::Runtime, dg: &Running) {
    rt.block_on(async {
        let mut stream = TcpStream::connect(dg.public).await.unwrap();
        let _ = stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await;
        read_to_close(&mut stream).await;
    });
}

/// Before: each probe refused by `allow_peers` counted towards a ban, and 10 in a
/// minute banned the prober's pod; the probe blamed the node.
#[test]
fn twenty_probes_under_a_narrowed_allow_peers_ban_nobody_and_name_the_refusal() {
    let dist = format!("{UNTRUSTED}allow_peers = [\"app-*@*\"]\n[dist.ban]\nfailures = 3\n");
    let dg = Running::start_with(&dist, "");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _node = node(&rt, &dg, "app");
    let epmd = dg.epmd.port().to_string();
    for _ in 0..20 {
        let (code, text) = distgate(&["probe", "app@127.0.0.1", "--epmd-port", &epmd]);
        assert_eq!(code, 1, "{text}");
        assert!(
            text.contains("status `not_allowed`")
                && text
                    .contains("the target's distgate refused our name by its `dist.allow_peers`"),
            "{text}"
        );
    }
    assert_eq!(metric(&dg, "distgate_dist_banned_sources", &[]), 0.0);
    let (code, text) = distgate(&["refusals", "--admin", &dg.admin.to_string()]);
    assert_eq!(code, 0, "{text}");
    // One caller refused again and again is one entry, with its count.
    let rows: Vec<&str> = (text.lines())
        .filter(|l| l.contains("distgate-probe@probe.distgate.invalid"))
        .collect();
    assert_eq!(rows.len(), 1, "{text}");
    let cells: Vec<&str> = rows[0].split_whitespace().collect();
    let probe = "distgate-probe@probe.distgate.invalid";
    assert_eq!(
        cells[1..],
        ["20", "127.0.0.1", "app", probe, "not_allowed"],
        "{text}"
    );
}

/// A banned source is closed at accept: the probe says distgate may have closed it,
/// and how to see and lift the ban; `distgate bans` lists it, `distgate unban` lifts it
/// (exit 0), a second unban finds nothing (exit 1); the probe then gets through.
#[test]
fn a_banned_prober_is_told_so_and_unban_lets_it_in() {
    let dg = Running::start_with(&format!("{UNTRUSTED}[dist.ban]\nfailures = 2\n"), "");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _node = node(&rt, &dg, "app");
    junk(&rt, &dg);
    junk(&rt, &dg);
    assert_eq!(metric(&dg, "distgate_dist_banned_sources", &[]), 1.0);
    let epmd = dg.epmd.port().to_string();
    let (code, text) = distgate(&["probe", "app@127.0.0.1", "--epmd-port", &epmd]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("closed before any answer to our handshake")
            && text.contains("`distgate bans` lists bans"),
        "{text}"
    );
    let admin = dg.admin.to_string();
    let (code, text) = distgate(&["bans", "--admin", &admin]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("127.0.0.1  2 ")),
        "{text}"
    );
    // An empty or stray argument (`unban "$IP"` with IP unset) lifts nothing.
    for stray in ["", "?", "127.0.0.1/"] {
        let (code, text) = distgate(&["unban", stray, "--admin", &admin]);
        assert_eq!(code, 1, "{stray:?}: {text}");
        assert!(text.contains("neither an address nor a prefix"), "{text}");
    }
    assert_eq!(metric(&dg, "distgate_dist_banned_sources", &[]), 1.0);
    let (code, text) = distgate(&["unban", "127.0.0.1", "--admin", &admin]);
    assert_eq!((code, text.trim()), (0, "lifted: 127.0.0.1"));
    let (code, text) = distgate(&["unban", "127.0.0.1", "--admin", &admin]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("no ban holds 127.0.0.1"), "{text}");
    assert_eq!(metric(&dg, "distgate_dist_banned_sources", &[]), 0.0);
    // Past the ban, the probe reaches the (fake) node, which never answers.
    let (_, text) = distgate(&[
        "probe",
        "app@127.0.0.1",
        "--epmd-port",
        &epmd,
        "--timeout",
        "300ms",
    ]);
    assert!(!text.contains("closed before any answer"), "{text}");
}

/// Before: trusting a banned address by a reload let it in but left the gauge (and
/// the ban alert) up. Now the reload lifts the ban.
#[test]
fn a_reload_that_trusts_a_banned_source_lifts_its_ban() {
    let ban = "[dist.ban]\nfailures = 2\n";
    let dg = Running::start_with(&format!("{UNTRUSTED}{ban}"), "");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _node = node(&rt, &dg, "app");
    junk(&rt, &dg);
    junk(&rt, &dg);
    assert_eq!(metric(&dg, "distgate_dist_banned_sources", &[]), 1.0);
    dg.rewrite(
        "",
        &dg.public.port().to_string(),
        &format!("trusted = [\"127.0.0.1\"]\n{ban}"),
        "",
    );
    dg.signal("HUP");
    let trusted = [("reason", "trusted")];
    eventually_blocking(DEADLINE, "the ban lifted by the reload", || {
        (metric(&dg, "distgate_dist_bans_lifted_total", &trusted) == 1.0).then_some(())
    });
    assert_eq!(metric(&dg, "distgate_dist_banned_sources", &[]), 0.0);
    // The line is written by the log thread, after the counter moved.
    eventually_blocking(DEADLINE, "the lift logged", || {
        (dg.said("ban lifted") >= 1).then_some(())
    });
    assert_eq!(dg.said("ban lifted"), 1);
}
