//! Real BEAM nodes for tests: `erl`, `elixir` and `iex` processes started by the
//! test, their output collected line by line, waited on with deadlines.

use std::io::Read;
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{DEADLINE, InProcess, Options, Process, unique};

/// The cookie every test node uses.
pub const COOKIE: &str = "distgate-test";

/// A process whose output (stdout and stderr) is collected as it comes.
pub struct Output {
    pub process: Process,
    lines: Arc<Mutex<Vec<String>>>,
    /// How many of the two readers (stdout, stderr) have seen their stream end.
    ended: Arc<AtomicUsize>,
}

impl Output {
    pub fn spawn(label: &str, command: &mut Command) -> Output {
        Self::start(label, command.stdin(Stdio::null()))
    }

    /// Like [`Output::spawn`], with the process's standard input to type into.
    pub fn spawn_interactive(label: &str, command: &mut Command) -> (Output, ChildStdin) {
        let mut output = Self::start(label, command.stdin(Stdio::piped()));
        let stdin = output.process.child.stdin.take().unwrap();
        (output, stdin)
    }

    fn start(label: &str, command: &mut Command) -> Output {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut process = Process::spawn(label, command);
        let lines = Arc::new(Mutex::new(vec![]));
        let ended = Arc::new(AtomicUsize::new(0));
        let stdout = process.child.stdout.take().unwrap();
        let stderr = process.child.stderr.take().unwrap();
        collect(stdout, &lines, &ended);
        collect(stderr, &lines, &ended);
        Output {
            process,
            lines,
            ended,
        }
    }

    /// Once the process has exited: waits until both readers have read its output to
    /// the end (bounded, as a child of it could still hold the pipes).
    fn drained(&self) {
        let start = Instant::now();
        while self.ended.load(Ordering::SeqCst) < 2 && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Everything printed so far.
    pub fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits for a line starting with `prefix` and returns the rest of it.
    pub fn wait_for(&mut self, prefix: &str, within: Duration) -> String {
        let line = self.wait_line(&format!("a line starting {prefix:?}"), within, |l| {
            l.starts_with(prefix)
        });
        line[prefix.len()..].trim().to_owned()
    }

    /// Waits for a line that `matches` and returns it.
    pub fn wait_line(
        &mut self,
        what: &str,
        within: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> String {
        let start = Instant::now();
        loop {
            let found = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| matches(l))
                .cloned();
            if let Some(line) = found {
                return line;
            }
            if let Some(status) = self.process.exited() {
                // The reader threads take the last lines; then look once more.
                self.drained();
                let text = self.text();
                if let Some(line) = text.lines().find(|l| matches(l)) {
                    return line.to_owned();
                }
                panic!(
                    "{} exited ({status}) without printing {what}:\n{text}",
                    self.process.label
                );
            }
            assert!(
                start.elapsed() < within,
                "{} did not print {what} in {within:?}:\n{}",
                self.process.label,
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.process.exited() {
                self.drained();
                return status;
            }
            assert!(
                start.elapsed() < within,
                "{} still running after {within:?}:\n{}",
                self.process.label,
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Collects output as lines; an unfinished last line (a prompt) is visible too.
fn collect(
    mut stream: impl Read + Send + 'static,
    lines: &Arc<Mutex<Vec<String>>>,
    ended: &Arc<AtomicUsize>,
) {
    let lines = Arc::clone(lines);
    let ended = Arc::clone(ended);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut partial = false;
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&buf[..n]).replace('\r', "");
            let mut lines = lines.lock().unwrap();
            for (i, piece) in text.split('\n').enumerate() {
                if i == 0 && partial {
                    if let Some(last) = lines.last_mut() {
                        last.push_str(piece);
                    }
                } else {
                    lines.push(piece.to_owned());
                }
            }
            partial = !text.ends_with('\n');
            if !partial {
                lines.pop();
            }
        }
        ended.fetch_add(1, Ordering::SeqCst);
    });
}

/// An `erl` command for node `name` (a full `name@host`) that registers with the EPMD
/// at `epmd_port`, never starts its own epmd, and runs `eval`.
pub fn erl(name: &str, epmd_port: u16, eval: &str) -> Command {
    let mut command = Command::new("erl");
    command
        .env("ERL_EPMD_PORT", epmd_port.to_string())
        .args(["-noshell", "-name", name, "-setcookie", COOKIE])
        .args(["-start_epmd", "false", "-kernel", "net_setuptime", "20"])
        .args(["-eval", eval]);
    command
}

/// A node that prints `READY <creation>` once distributed and then idles.
pub const IDLE: &str =
    "io:format(\"READY ~p~n\", [erlang:system_info(creation)]), receive after infinity -> ok end.";

/// How long a node gets to boot, connect and do its work.
pub fn node_deadline() -> Duration {
    DEADLINE * 6
}

/// An `-eval` loop that reads lines `TAG EXPR.` from standard input, evaluates each
/// and prints `TAG RESULT` on one line (errors as `TAG error {Class,Reason}`).
pub const REPL: &str = r#"Loop = fun Loop() ->
    case io:get_line("") of
        eof -> halt();
        Line ->
            [Tag, Expr] = string:split(string:trim(Line), " "),
            Result = try
                {ok, Tokens, _} = erl_scan:string(Expr),
                {ok, Exprs} = erl_parse:parse_exprs(Tokens),
                {value, Value, _} = erl_eval:exprs(Exprs, []),
                Value
            catch Class:Reason -> {error, {Class, Reason}}
            end,
            io:format("~s ~s~n", [Tag, io_lib:print(Result, 1, 1000000, -1)]),
            Loop()
    end
end, Loop()."#;

/// Types expressions into a node running [`REPL`].
pub struct Repl {
    stdin: ChildStdin,
    asked: u32,
}

impl Repl {
    pub fn new(stdin: ChildStdin) -> Repl {
        Repl { stdin, asked: 0 }
    }

    /// Evaluates `expr` (without the final dot) on the node; its printed result.
    pub fn ask(&mut self, node: &mut Output, expr: &str) -> String {
        use std::io::Write;
        self.asked += 1;
        let tag = format!("q{}", self.asked);
        writeln!(self.stdin, "{tag} {expr}.").expect("the node's stdin");
        node.wait_for(&format!("{tag} "), node_deadline())
    }

    /// Asks `expr` until its result satisfies `done`, for at most `within`; the last
    /// result.
    pub fn until(
        &mut self,
        node: &mut Output,
        expr: &str,
        within: Duration,
        done: impl Fn(&str) -> bool,
    ) -> String {
        let what = format!("`{expr}` to give the wanted result");
        super::eventually_blocking(within, &what, || {
            let result = self.ask(node, expr);
            if done(&result) {
                return Some(result);
            }
            eprintln!("`{expr}` gives {result}");
            None
        })
    }
}

/// A runtime on its own threads for distgate, so the test thread may block on nodes.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Waits until `name` is registered with `dg` and returns its public port.
pub fn registered(dg: &InProcess, name: &str) -> u16 {
    let node = super::eventually_blocking(node_deadline(), &format!("{name} to register"), || {
        dg.registry.get(name)
    });
    node.public_port.expect("node has no public port")
}

/// distgate (two public ports, in-process) with node b registered: b idles.
pub struct WithB {
    pub b: Output,
    pub dg: InProcess,
    pub rt: tokio::runtime::Runtime,
    /// b's name part and full name.
    pub short: String,
    pub name: String,
    pub public: u16,
}

/// Starts distgate with `options` and node `<prefix…>@host` (with `args`) behind it.
pub fn with_node_b(options: Options, prefix: &str, host: &str, args: &[&str]) -> WithB {
    let rt = runtime();
    let dg = rt.block_on(InProcess::start(Options { pool: 2, ..options }));
    let short = unique(prefix);
    let name = format!("{short}@{host}");
    let mut command = erl(&name, dg.epmd.port(), IDLE);
    command.args(args);
    let mut b = Output::spawn("node b", &mut command);
    b.wait_for("READY", node_deadline());
    let public = registered(&dg, &short);
    WithB {
        b,
        dg,
        rt,
        short,
        name,
        public,
    }
}
