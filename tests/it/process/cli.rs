//! The `distgate` binary: version and help, `check-config` exit codes and messages,
//! bind failures that name the address, and a clean exit on SIGTERM.

use std::process::{Command, Stdio};

use crate::support::beam::Output;
use crate::support::*;

fn distgate() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_distgate"));
    command
        .env_remove("DISTGATE_CONFIG")
        .env_remove("DISTGATE_LOG")
        .env_remove("DISTGATE_LOG_FORMAT");
    command
}

fn temp_config(text: &str) -> (TempDir, std::path::PathBuf) {
    let dir = TempDir::new("distgate-cli-");
    let path = dir.join("distgate.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn version_and_help() {
    let out = distgate().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("distgate {}", env!("CARGO_PKG_VERSION"))
    );
    let out = distgate().arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in ["check-config", "--config", "--log-format", "4369", "43691"] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}

#[test]
fn check_config_accepts_the_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
    let out = distgate().args(["check-config", example]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8(out.stdout).unwrap().ends_with(": ok\n"));
}

/// Runs `check-config` on `text`: (exit code, stderr, the file's path).
fn check(text: &str) -> (Option<i32>, String, String) {
    let (_dir, path) = temp_config(text);
    let out = distgate()
        .args(["check-config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    (out.status.code(), err, path.display().to_string())
}

#[test]
fn check_config_names_the_key_and_line() {
    let (code, err, path) =
        check("[epmd]\nnames_from = \"any\"\n\n[dist]\nports = [43691, 99999]\n");
    assert_eq!(code, Some(64));
    assert_eq!(
        err.trim(),
        format!("{path}:5: `dist.ports[1]`: port 99999 is out of range 1-65535")
    );
    let (code, err, _) = check("[epmd]\nlisten_port = 4369\n");
    assert_eq!(code, Some(64));
    assert!(
        err.contains(":2: `epmd.listen_port`: unknown field"),
        "{err}"
    );
}

#[test]
fn an_invalid_config_stops_startup_with_64() {
    let (_dir, path) = temp_config("[dist]\nports = [\"x-y\"]\n");
    let out = distgate()
        .args(["--config", path.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`dist.ports[0]`"));
}

#[test]
fn a_stray_epmd_is_named_with_its_fix() {
    if !require(&["epmd"]) {
        return;
    }
    // The epmd a node starts for itself when it lacks `-start_epmd false`, here in the
    // foreground so that this test knows its PID; retried if the port is taken meanwhile.
    let (mut epmd, port) = eventually_blocking(DEADLINE, "a stray epmd to listen", || {
        let port = free_port();
        let mut epmd = Process::spawn(
            "stray epmd",
            Command::new("epmd")
                .args(["-port", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let listening = eventually_blocking(DEADLINE, "epmd to start or exit", || {
            if epmd.exited().is_some() {
                return Some(false);
            }
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| true)
        });
        listening.then_some((epmd, port))
    });
    let addr = format!("127.0.0.1:{port}");
    let (_dir, path) = temp_config(&format!(
        "[epmd]\nlisten = [\"{addr}\"]\n[dist]\nlisten = [\"127.0.0.1\"]\nports = [{}]\n[admin]\nlisten = []\n",
        free_port()
    ));
    let out = distgate()
        .args(["--config", path.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let expected = format!("cannot listen on {addr} (`epmd.listen`): the address is in use");
    assert!(err.contains(&expected), "{err}");
    assert!(
        err.contains("`-start_epmd false`") && err.contains("`epmd -kill`"),
        "{err}"
    );

    // The fix the message gives: `epmd -kill` stops it, and distgate starts.
    let kill = Command::new("epmd")
        .args(["-port", &port.to_string(), "-kill"])
        .output()
        .unwrap();
    assert!(kill.status.success(), "{kill:?}");
    eventually_blocking(DEADLINE, "the stray epmd to exit", || epmd.exited());
    let mut run = Output::spawn(
        "distgate after epmd -kill",
        distgate().args(["--config", path.to_str().unwrap()]),
    );
    run.wait_line("distgate listening on the freed port", DEADLINE, |l| {
        l.contains("EPMD listening") && l.contains(&addr)
    });
}

#[test]
fn sigterm_stops_distgate_cleanly() {
    let (_dir, path) = temp_config(&format!(
        "[epmd]\nlisten = [\"127.0.0.1:0\"]\n[dist]\nlisten = [\"127.0.0.1\"]\nports = [{}]\n[admin]\nlisten = [\"127.0.0.1:0\"]\n",
        free_port()
    ));
    let mut run = Output::spawn(
        "distgate",
        distgate().args(["--config", path.to_str().unwrap(), "--log-format", "json"]),
    );
    run.wait_line("listening", DEADLINE, |l| {
        l.contains("public dist port listening")
    });
    let status = Command::new("kill")
        .args(["-TERM", &run.process.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(run.wait_exit(DEADLINE).success());
    assert!(run.text().contains("\"signal\":\"SIGTERM\""));
    assert!(run.text().contains("drain complete"));
    // The first line says which distgate runs.
    let first = run.text().lines().next().unwrap_or_default().to_owned();
    let version = format!("\"version\":\"{}\"", env!("CARGO_PKG_VERSION"));
    assert!(
        first.contains("distgate starting") && first.contains(&version),
        "{first}"
    );
}

#[test]
fn subcommands_list_only_the_flags_they_honour() {
    let help = |args: &[&str]| {
        let out = distgate().args(args).arg("--help").output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    for sub in ["check-config", "probe", "links", "nodes", "reload"] {
        let text = help(&[sub]);
        for flag in ["--config", "--log-level", "--log-format"] {
            assert!(!text.contains(flag), "`{sub} --help` lists {flag}:\n{text}");
        }
    }
    for run in [&[][..], &["run"][..]] {
        let text = help(run);
        for flag in ["--config", "--log-level", "--log-format"] {
            assert!(
                text.contains(flag),
                "`{run:?} --help` lacks {flag}:\n{text}"
            );
        }
    }
    // `distgate run` reads its file as `distgate` does: an unreadable one is exit 64.
    let out = distgate()
        .args(["run", "--config", "/nonexistent/distgate.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}
