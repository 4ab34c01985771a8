//! Logging never stops distgate: with its log pipe closed (a log shipper that died,
//! `distgate 2>&1 | head -c 10`), registrations, links, `/readyz` and the drain behave
//! as with a working log, and the lost lines are counted; with a reader that stops
//! reading (a stalled shipper, a pager) distgate answers throughout and the lines flow
//! again when it reads. Colour codes only at a terminal, and never with `NO_COLOR`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A configuration on loopback ports the OS picks, one public port: the directory
/// that holds it and its path.
fn config() -> (TempDir, std::path::PathBuf) {
    let dir = TempDir::new("distgate-logging-");
    let path = dir.join("distgate.toml");
    std::fs::write(
        &path,
        format!(
            "[epmd]\nlisten = [\"127.0.0.1:0\"]\n[dist]\nlisten = [\"127.0.0.1\"]\nports = [{}]\n\
             [admin]\nlisten = [\"127.0.0.1:0\"]\n[shutdown]\ngrace = \"5s\"\n",
            free_port()
        ),
    )
    .unwrap();
    (dir, path)
}

fn addr_of(line: &str) -> SocketAddr {
    let value: serde_json::Value = serde_json::from_str(line).unwrap();
    value["addr"].as_str().unwrap().parse().unwrap()
}

/// The binary with `args` and a configuration from [`config`], its standard error
/// piped: the process (killed by PID should the test fail), the log's lines not read
/// yet, and the EPMD, admin and public dist addresses its first lines name.
fn spawn(
    args: &[&str],
    config: &std::path::Path,
) -> (
    Process,
    std::io::Lines<BufReader<std::process::ChildStderr>>,
    [SocketAddr; 3],
) {
    let child = Command::new(env!("CARGO_BIN_EXE_distgate"))
        .args(args)
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut process = Process {
        child,
        label: "distgate".into(),
    };
    let mut lines = BufReader::new(process.child.stderr.take().unwrap()).lines();
    let (mut epmd, mut admin, mut public) = (None, None, None);
    while public.is_none() {
        let line = lines.next().expect("distgate ended").unwrap();
        if line.contains("\"EPMD listening\"") {
            epmd = Some(addr_of(&line));
        } else if line.contains("\"admin HTTP listening") {
            admin = Some(addr_of(&line));
        } else if line.contains("\"public dist port listening\"") {
            public = Some(addr_of(&line));
        }
    }
    (
        process,
        lines,
        [epmd.unwrap(), admin.unwrap(), public.unwrap()],
    )
}

/// SIGTERM: the drain, then exit 0.
fn drains_and_exits(process: &mut Process) {
    let status = Command::new("kill")
        .args(["-TERM", &process.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exited = eventually_blocking(DEADLINE, "distgate to exit", || {
        process.child.try_wait().unwrap()
    });
    assert_eq!(exited.code(), Some(0), "{exited}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_log_pipe_changes_nothing_but_the_lost_lines_count() {
    let (_dir, config) = config();
    let (mut process, lines, [epmd, admin, public]) = spawn(&["--log-format", "json"], &config);
    // Close the pipe: every later line fails.
    drop(lines);

    // Work that logs: registrations, a link that opens, carries bytes and closes.
    let (node, _registration) = fake_node(epmd, "app").await;
    let (mut client, mut upstream) = dist::link(public, &node, "peer@127.0.0.1").await;
    client.write_all(b"through").await.unwrap();
    let mut got = [0u8; 7];
    upstream.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"through");
    drop((client, upstream));
    let (_other, reply) = register(epmd, &alive2("second", 1)).await;
    assert_eq!(&reply[..2], &[b'v', 0]);
    let (_, listed) = names(epmd).await;
    assert!(listed.iter().any(|l| l.contains("second")), "{listed:?}");
    assert_eq!(http_get(admin, "/readyz").await.0, 200);
    let text = eventually("the lost lines counted", || async move {
        let (_, text) = http_get(admin, "/metrics").await;
        let dropped = sample(&text, "distgate_log_lines_dropped_total", &[])?;
        (dropped >= 3.0).then_some(text)
    })
    .await;
    assert_eq!(sample(&text, "distgate_registered_nodes", &[]), Some(2.0));

    // The drain and the exit are as with a working log.
    drains_and_exits(&mut process);
}

/// How long the reader stops reading.
const STALL: Duration = Duration::from_secs(30);
/// How long each probe may take while it does.
const PROMPT: Duration = Duration::from_millis(100);

/// Within [`PROMPT`], or the test fails naming `what`.
async fn promptly<T>(what: &str, work: impl std::future::Future<Output = T>) -> T {
    let started = Instant::now();
    match tokio::time::timeout(PROMPT, work).await {
        Ok(done) => done,
        Err(_) => panic!(
            "{what} took over {PROMPT:?} ({:?}) with the log reader stalled",
            started.elapsed()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_reader_that_stops_reading_stops_nothing() {
    let (_dir, config) = config();
    let args = ["--log-format", "json", "--log-level", "debug"];
    // From here on nothing reads the log, and the pipe stays open.
    let (mut process, lines, [epmd, admin, public]) = spawn(&args, &config);
    let stalled = Instant::now();

    // An open link whose node echoes what the peer sends.
    let (node, _registration) = fake_node(epmd, "app").await;
    let (mut peer, mut node_end) = dist::link(public, &node, "peer@127.0.0.1").await;
    tokio::spawn(async move {
        let mut buffer = [0u8; 64];
        while let Ok(n @ 1..) = node_end.read(&mut buffer).await {
            if node_end.write_all(&buffer[..n]).await.is_err() {
                break;
            }
        }
    });
    // The flood: lookups, each a debug line, until the test ends.
    let flood = tokio::spawn(async move {
        loop {
            port_please(epmd, "app").await;
        }
    });
    eventually_within(
        STALL,
        "lines dropped behind the stalled reader",
        || async move {
            let (_, text) = http_get(admin, "/metrics").await;
            (sample(&text, "distgate_log_lines_dropped_total", &[])? > 0.0).then_some(())
        },
    )
    .await;

    // Until the reader has stalled for STALL: each probe answers within PROMPT.
    let mut rounds = 0;
    while stalled.elapsed() < STALL {
        let (status, _) = promptly("/livez", http_get(admin, "/livez")).await;
        assert_eq!(status, 200);
        let port = promptly("an EPMD lookup", port_please(epmd, "app")).await;
        assert_eq!(port, Some(public.port()));
        promptly("the link's echo", async {
            peer.write_all(b"ping").await.unwrap();
            let mut echo = [0u8; 4];
            peer.read_exact(&mut echo).await.unwrap();
            assert_eq!(&echo, b"ping");
        })
        .await;
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    flood.abort();
    let (_, text) = http_get(admin, "/metrics").await;
    let dropped = sample(&text, "distgate_log_lines_dropped_total", &[]).unwrap();
    eprintln!("{rounds} rounds of probes, {dropped} lines dropped");

    // The reader reads again: the lines flow, the newest among them.
    let (reading, read) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if reading.send(line).is_err() {
                break;
            }
        }
    });
    // What waited goes first, and a line that came while the queue was full was
    // dropped: a fresh lookup each time, until one is read.
    let mut asked = 0;
    eventually("the log to flow again", || {
        asked += 1;
        let name = format!("fresh-{asked}");
        let read = &read;
        async move {
            port_please(epmd, &name).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            read.try_iter().find(|line| line.contains("fresh-"))
        }
    })
    .await;

    drains_and_exits(&mut process);
}

/// The text log of a distgate that starts and is stopped at once, run as `command`.
fn text_log(command: &mut Command) -> String {
    let out = command.output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn colour_only_at_a_terminal_and_never_with_no_color() {
    if !require(&["script", "timeout"]) {
        return;
    }
    let (_dir, config) = config();
    let run = format!(
        "timeout -s TERM 1 {} --config {}",
        env!("CARGO_BIN_EXE_distgate"),
        config.display()
    );
    // A pipe: no escape codes.
    let piped = text_log(Command::new("sh").args(["-c", &run]).env_remove("NO_COLOR"));
    assert!(piped.contains("EPMD listening"), "{piped}");
    assert!(
        !piped.contains('\u{1b}'),
        "escape codes in a pipe: {piped:?}"
    );
    // A terminal (script gives it one): colour, unless NO_COLOR says not.
    let at_terminal = |no_color: Option<&str>| {
        let mut command = Command::new("script");
        command
            .args(["-qec", &run, "/dev/null"])
            .env_remove("NO_COLOR");
        if let Some(v) = no_color {
            command.env("NO_COLOR", v);
        }
        text_log(&mut command)
    };
    let coloured = at_terminal(None);
    assert!(coloured.contains("EPMD listening"), "{coloured}");
    assert!(
        coloured.contains('\u{1b}'),
        "no colour at a terminal: {coloured:?}"
    );
    let plain = at_terminal(Some("1"));
    assert!(plain.contains("EPMD listening"), "{plain}");
    assert!(
        !plain.contains('\u{1b}'),
        "colour despite NO_COLOR: {plain:?}"
    );
}
