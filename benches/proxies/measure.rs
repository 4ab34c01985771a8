//! Measuring helpers: child processes with line output, CPU time and memory of a set
//! of processes from /proc, statistics and formatting.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

/// How long any step may take before the run is abandoned.
pub const STEP: Duration = Duration::from_secs(120);

/// A child process whose output lines arrive on a channel; killed when dropped (see
/// [`Proc::stopped_by_term`] for a master of worker processes).
pub struct Proc {
    pub child: Child,
    lines: Receiver<String>,
    pub stdin: Option<ChildStdin>,
    /// Whether drop sends SIGTERM and waits, rather than SIGKILL.
    term: bool,
}

impl Proc {
    pub fn spawn(command: &mut Command) -> Proc {
        Proc::spawn_to(command, Stdio::inherit())
    }

    /// [`Proc::spawn`] with its standard error going to `stderr`.
    pub fn spawn_to(command: &mut Command, stderr: Stdio) -> Proc {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("{command:?}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Proc {
            child,
            lines,
            stdin,
            term: false,
        }
    }

    /// This process is a master whose workers would outlive a SIGKILL to it (nginx):
    /// when dropped it gets SIGTERM and is waited for, as it stops its workers before
    /// it exits; if it has not within [`STEP`], it and they are killed.
    pub fn stopped_by_term(mut self) -> Proc {
        self.term = true;
        self
    }

    /// A role of this benchmark binary, pinned to `cpus` when given.
    pub fn role(args: &[&str], cpus: Option<&str>) -> Proc {
        let me = std::env::current_exe().unwrap();
        let mut command = match cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus]).arg(me);
                c
            }
            None => Command::new(me),
        };
        command.arg("--role").args(args);
        Proc::spawn(&mut command)
    }

    /// Waits for a line starting with `prefix`; returns the rest.
    pub fn expect(&self, prefix: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(STEP)
                .unwrap_or_else(|_| panic!("no {prefix:?} line"));
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.trim().to_owned();
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn send_line(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("stdin taken");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits until something accepts on loopback `port`; fails if this process exits.
    pub fn wait_listening(&mut self, port: u16) {
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{:?} exited ({status}) before listening on {port}",
                    self.child
                );
            }
            assert!(start.elapsed() < STEP, "nothing listens on {port}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the process to exit.
    pub fn finish(mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.term && matches!(self.child.try_wait(), Ok(None)) {
            use nix::sys::signal::{Signal, kill};
            use nix::unistd::Pid;
            let workers = all_processes(&[self.pid()]);
            let pid = Pid::from_raw(i32::try_from(self.pid()).unwrap());
            let _ = kill(pid, Signal::SIGTERM);
            let start = std::time::Instant::now();
            while matches!(self.child.try_wait(), Ok(None)) {
                if start.elapsed() > STEP {
                    for &worker in &workers[1..] {
                        let worker = Pid::from_raw(i32::try_from(worker).unwrap());
                        let _ = kill(worker, Signal::SIGKILL);
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where `program` is: on PATH, else in the sbin directories a user's PATH may lack
/// (Debian installs haproxy and nginx in /usr/sbin).
pub fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Whether `program` is installed (see [`find`]).
pub fn have(program: &str) -> bool {
    find(program).is_some()
}

/// Raises the open-file limit (for 10,000 connections through one proxy).
pub fn raise_fd_limit(want: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if setrlimit(Resource::RLIMIT_NOFILE, want, want).is_err()
        && let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// CPU time in nanoseconds of `pids` and their child processes: each process's CPU
/// clock, the sum over all its threads, those that have ended included (a thread per
/// connection ends with its connection, and its time leaves `/proc/PID/task` with it).
pub fn cpu_ns(pids: &[u32]) -> u64 {
    use nix::time::{clock_getcpuclockid, clock_gettime};
    use nix::unistd::Pid;
    all_processes(pids)
        .iter()
        .filter_map(|&pid| {
            let clock = clock_getcpuclockid(Pid::from_raw(i32::try_from(pid).ok()?)).ok()?;
            let time = clock_gettime(clock).ok()?;
            Some(
                u64::try_from(time.tv_sec()).ok()? * 1_000_000_000
                    + u64::try_from(time.tv_nsec()).ok()?,
            )
        })
        .sum()
}

/// The child processes of `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    parents()
        .into_iter()
        .filter(|&(_, parent)| parent == pid)
        .map(|(child, _)| child)
        .collect()
}

/// `pids` and all their descendants.
fn all_processes(pids: &[u32]) -> Vec<u32> {
    let mut all: Vec<u32> = pids.to_vec();
    let parents = parents();
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        all.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    all
}

/// (pid, parent pid) of every process.
fn parents() -> Vec<(u32, u32)> {
    let mut parents: Vec<(u32, u32)> = vec![];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Field 4 (ppid) follows the parenthesised command name.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        if let Some(ppid) = after.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            parents.push((pid, ppid));
        }
    }
    parents
}

/// Resident and proportional set sizes in KiB of `pids` and their descendants.
pub fn memory_kib(pids: &[u32]) -> (f64, f64) {
    let mut rss = 0.0;
    let mut pss = 0.0;
    for pid in all_processes(pids) {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
            continue;
        };
        for line in text.lines() {
            let value = || -> f64 {
                line.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.0)
            };
            if line.starts_with("Rss:") {
                rss += value();
            } else if line.starts_with("Pss:") {
                pss += value();
            }
        }
    }
    (rss, pss)
}

/// The kernel's slab memory in KiB (sockets live there).
pub fn slab_kib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Slab:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0.0)
}

/// Sets the CPU affinity of every thread of `pids` (and descendants).
pub fn pin(pids: &[u32], cpus: &str) {
    for pid in all_processes(pids) {
        let _ = Command::new("taskset")
            .args(["-a", "-p", "-c", cpus, &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Median, minimum and maximum.
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    pub fn of(values: &[f64]) -> Stats {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let median = if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        Stats {
            median,
            min: v[0],
            max: v[v.len() - 1],
        }
    }
}

pub fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Title of a metric and whether higher is better.
pub fn describe(metric: &str) -> (String, bool) {
    let (title, higher) = match metric {
        "a_bulk_1_stream" => ("Bulk throughput, 1 stream (GB/s)", true),
        "b_bulk_8_streams" => ("Bulk throughput, 8 streams (GB/s)", true),
        "c_cpu_per_gb" => ("Proxy CPU seconds per GB forwarded (bulk runs)", false),
        "d_rtt_p50" => ("64 B round trip p50, unpinned (µs)", false),
        "e_rtt_p99" => ("64 B round trip p99, unpinned (µs)", false),
        "ea_rtt_p999" => ("64 B round trip p99.9, unpinned (µs)", false),
        "eb_rtt_max" => ("64 B round trip max, unpinned (µs)", false),
        "f_rtt_p50_pinned" => ("64 B round trip p50, all processes on CPU 0 (µs)", false),
        "g_rtt_p99_pinned" => ("64 B round trip p99, all processes on CPU 0 (µs)", false),
        "h_cpu_per_rt" => ("Proxy CPU microseconds per round trip (unpinned)", false),
        "ha_setup_p50" => ("Dist handshake setup p50, connect to ack (µs)", false),
        "hb_setup_p99" => ("Dist handshake setup p99, connect to ack (µs)", false),
        "hc_cpu_per_setup" => (
            "Proxy CPU microseconds per dist handshake setup (connect, handshake, close)",
            false,
        ),
        "i_rss_per_conn_1000" => ("Proxy RSS per idle connection, 1,000 open (KiB)", false),
        "ia_fresh_rss" => ("Proxy RSS, fresh, before the 1,000 idle links (KiB)", false),
        "j_pss_per_conn_1000" => ("Proxy PSS per idle connection, 1,000 open (KiB)", false),
        "k_slab_per_conn_1000" => (
            "Kernel slab per idle connection, whole path, 1,000 open (KiB)",
            false,
        ),
        "l_rss_per_conn_9000" => ("Proxy RSS per idle connection, 9,000 open (KiB)", false),
        "m_pss_per_conn_9000" => ("Proxy PSS per idle connection, 9,000 open (KiB)", false),
        "n_slab_per_conn_9000" => (
            "Kernel slab per idle connection, whole path, 9,000 open (KiB)",
            false,
        ),
        "o_erl_rt_p50" => ("Erlang small-message round trip p50 (µs)", false),
        "p_erl_rt_p99" => ("Erlang small-message round trip p99 (µs)", false),
        "q_erl_mib_per_s" => ("Erlang 1 MiB binaries, node to node (MiB/s)", true),
        "o_uid_bulk_1_stream" => (
            "Bulk throughput, 1 stream, proxy as UID 65532, pipe quota free or held by another process of the UID (GB/s)",
            true,
        ),
        "o_uid_cpu_per_gb" => (
            "Proxy CPU seconds per GB, 1 stream, as UID 65532, quota free or held",
            false,
        ),
        "p_bulk_8x8_streams" => (
            "Bulk throughput, eight distgates × eight streams at once, as root or all as UID 65532 (GB/s, aggregate)",
            true,
        ),
        other => (other, false),
    };
    (title.to_owned(), higher)
}

/// Current UTC time, from `date`.
pub fn now() -> String {
    command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
}

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

/// A description of the machine and the tools measured.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let kernel = command_line("uname", &["-r"]);
    let haproxy = find("haproxy").map_or_else(
        || "haproxy not installed".into(),
        |path| command_line(&path.to_string_lossy(), &["-v"]),
    );
    // nginx -v answers on standard error.
    let nginx = find("nginx")
        .and_then(|path| Command::new(path).arg("-v").output().ok())
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stderr);
            let line = text.lines().next()?.trim();
            Some(
                line.strip_prefix("nginx version: ")
                    .unwrap_or(line)
                    .to_owned(),
            )
        })
        .unwrap_or_else(|| "nginx not installed".into());
    let erl = command_line(
        "erl",
        &[
            "-noshell",
            "-eval",
            "io:format(\"OTP ~s~n\", [erlang:system_info(otp_release)]), halt().",
        ],
    );
    let socat = Command::new("socat")
        .arg("-V")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find(|l| l.starts_with("socat version"))
                .map(|l| l.split(" on ").next().unwrap_or(l).to_owned())
        })
        .unwrap_or_else(|| "socat not installed".into());
    format!(
        "Machine: {cpu}, {cores} cores, {mem:.0} GiB, Linux {kernel}. {haproxy}. {nginx}. \
         {socat}. {erl}."
    )
}
