//! The paths measured (direct, distgate with splice, distgate with copy, haproxy
//! without and with splice, nginx, socat, the blocking relay; another commit's
//! distgate when asked) and the measurements taken on each.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::measure::{self, Proc, STEP};
use crate::{Plan, Results, record};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Direct,
    DistgateAuto,
    /// Another commit's distgate binary (`DISTGATE_BENCH_BASELINE`), as `DistgateAuto`.
    DistgateBaseline,
    DistgateSplice,
    DistgateCopy,
    /// haproxy in tcp mode, copying through its buffers.
    Haproxy,
    /// haproxy in tcp mode with `option splice-request` and `option splice-response`.
    HaproxySplice,
    /// nginx's stream module: a master and a worker per CPU.
    Nginx,
    Socat,
    /// The bench's own blocking relay (`--role relay`): two threads per connection,
    /// each a loop of read and write; the floor of one more TCP hop in user space.
    Relay,
    /// A gateway distgate in front of a sidecar distgate (both `auto`): two hops.
    Gateway,
    /// Two distgate gateways federated, mutual TLS between them (see `federated.rs`).
    Federated,
    /// Two haproxy processes, TLS between them, same certificates (see `federated.rs`).
    HaproxyTls,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::DistgateAuto => "distgate-auto",
            Kind::DistgateBaseline => crate::paths::BASELINE,
            Kind::DistgateSplice => "distgate-splice",
            Kind::DistgateCopy => "distgate-copy",
            Kind::Haproxy => "haproxy",
            Kind::HaproxySplice => "haproxy-splice",
            Kind::Nginx => "nginx",
            Kind::Socat => "socat",
            Kind::Relay => "relay",
            Kind::Gateway => "gateway+sidecar",
            Kind::Federated => "federated",
            Kind::HaproxyTls => "haproxy-tls",
        }
    }

    /// Why this path cannot run on this machine (a program not installed), if so.
    pub fn missing(self) -> Option<String> {
        let program = match self {
            Kind::Haproxy | Kind::HaproxySplice | Kind::HaproxyTls => "haproxy",
            Kind::Nginx => return nginx_stream_module().err(),
            Kind::Socat => "socat",
            _ => return None,
        };
        (!measure::have(program)).then(|| format!("{program} not installed"))
    }
}

/// The servers every path leads to.
pub struct Setup {
    pub sink: u16,
    pub echo: u16,
    pub hold: u16,
    /// The binary of `distgate-baseline`, when this run measures it.
    pub baseline: Option<PathBuf>,
    echo_proc: Proc,
    hold_proc: Mutex<Proc>,
    _sink_proc: Proc,
}

impl Setup {
    pub fn start(baseline: Option<PathBuf>) -> Setup {
        let sink_proc = Proc::role(&["sink"], None);
        let echo_proc = Proc::role(&["echo"], None);
        let hold_proc = Proc::role(&["hold"], None);
        let port = |p: &Proc| p.expect("PORT ").parse().unwrap();
        Setup {
            sink: port(&sink_proc),
            echo: port(&echo_proc),
            hold: port(&hold_proc),
            baseline,
            echo_proc,
            hold_proc: Mutex::new(hold_proc),
            _sink_proc: sink_proc,
        }
    }
}

/// `N` distinct loopback ports free at the time of the call.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// The user the one-hop proxies (distgate, haproxy, nginx) run as: `BENCH_PROXY_UID`
/// when set (as Kubernetes runs them, with no capabilities: run the bench as root),
/// this process's user without.
pub fn proxy_uid() -> Option<u32> {
    let uid = std::env::var("BENCH_PROXY_UID").ok()?;
    Some(
        uid.parse()
            .unwrap_or_else(|_| panic!("BENCH_PROXY_UID={uid}: not a UID")),
    )
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("distgate-bench-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        if proxy_uid().is_some() {
            // nginx writes its pid, lock and error log here as the proxies' user.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Registers a fake node `name` at `port` with the EPMD at `epmd`; the registration
/// lasts as long as the returned connection.
pub fn register(epmd: u16, name: &str, port: u16) -> TcpStream {
    use distgate::epmd::message::{Alive2Req, encode_alive2_req};
    let frame = encode_alive2_req(&Alive2Req::otp23(name, port));
    let mut stream = TcpStream::connect(loopback(epmd)).unwrap();
    stream.write_all(&frame).unwrap();
    let mut reply = [0u8; 6];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(&reply[..2], &[b'v', 0], "registration of {name} refused");
    stream
}

/// PORT_PLEASE2 for `name` at the EPMD at `epmd`: the port it answers.
pub fn port_please(epmd: u16, name: &str) -> u16 {
    use distgate::epmd::message::{PORT_PLEASE2_REQ, decode_port2_resp, frame};
    let mut request = vec![PORT_PLEASE2_REQ];
    request.extend_from_slice(name.as_bytes());
    let mut stream = TcpStream::connect(loopback(epmd)).unwrap();
    stream.write_all(&frame(&request)).unwrap();
    let mut reply = vec![];
    stream.read_to_end(&mut reply).unwrap();
    decode_port2_resp(&reply)
        .unwrap()
        .unwrap_or_else(|| panic!("{name} not found at {epmd}"))
        .port
}

/// Starts the distgate binary with `config` (TOML); returns the process.
pub fn distgate(dir: &TempDir, config: &str) -> Proc {
    distgate_named(dir, "distgate", config, proxy_uid())
}

#[path = "../../tests/it/support/as_user.rs"]
mod user;
pub use user::as_user;

/// [`distgate`] with its config file called `name`.toml (several in one directory),
/// as `uid` when given.
pub fn distgate_named(dir: &TempDir, name: &str, config: &str, uid: Option<u32>) -> Proc {
    let binary = Path::new(env!("CARGO_BIN_EXE_distgate"));
    distgate_binary(binary, dir, name, config, uid)
}

/// [`distgate_named`] from `binary`: this build's or, for `distgate-baseline`, another
/// commit's.
pub fn distgate_binary(
    binary: &Path,
    dir: &TempDir,
    name: &str,
    config: &str,
    uid: Option<u32>,
) -> Proc {
    let path = dir.0.join(format!("{name}.toml"));
    // No admin server: several distgates run side by side. The idle-memory step holds
    // 9,000 connections, past the default dist limit of 8,192.
    let config = config.replace("[dist]\n", "[dist]\nmax_connections = 10000\n");
    let mut config = format!("[admin]\nlisten = []\n{config}");
    if let Ok(size) = std::env::var("BENCH_PIPE_SIZE") {
        if config.contains("[forward]") {
            config = config.replace("[forward]\n", &format!("[forward]\npipe_size = {size}\n"));
        } else {
            config += &format!("[forward]\npipe_size = {size}\n");
        }
    }
    std::fs::write(&path, config).unwrap();
    // At the default log level, as it runs: an open link logs its opening and its
    // close. The lines go to a file, as to a log collector that keeps up.
    let log = std::fs::File::create(dir.0.join(format!("{name}.log"))).unwrap();
    Proc::spawn_to(
        as_user(uid, binary).args(["--config", path.to_str().unwrap()]),
        log.into(),
    )
}

/// Starts haproxy in tcp mode with splice both ways, forwarding `listen → server`.
pub fn haproxy(dir: &TempDir, routes: &[(u16, u16)]) -> Proc {
    haproxy_as(dir, routes, None)
}

/// [`haproxy`] as `uid` when given.
pub fn haproxy_as(dir: &TempDir, routes: &[(u16, u16)], uid: Option<u32>) -> Proc {
    haproxy_with(dir, routes, uid, true)
}

/// Starts haproxy in tcp mode forwarding `listen → server`, as `uid` when given; with
/// splice both ways (and pipes for it) when `splice`, else copying through its buffers.
fn haproxy_with(dir: &TempDir, routes: &[(u16, u16)], uid: Option<u32>, splice: bool) -> Proc {
    let mut config = String::from("global\n    maxconn 9100\n");
    if splice {
        config += "    maxpipes 512\n";
    }
    config += "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1h\n    \
               timeout server 1h\n";
    if splice {
        config += "    option splice-request\n    option splice-response\n";
    }
    for (i, (listen, server)) in routes.iter().enumerate() {
        config +=
            &format!("listen p{i}\n    bind 127.0.0.1:{listen}\n    server s 127.0.0.1:{server}\n");
    }
    let path = dir.0.join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let haproxy = which("haproxy");
    let mut proc = Proc::spawn(as_user(uid, &haproxy).args(["-db", "-f", path.to_str().unwrap()]));
    for (listen, _) in routes {
        proc.wait_listening(*listen);
    }
    proc
}

/// How nginx gets its stream module: the module file to load (Debian builds it as a
/// dynamic module, package libnginx-mod-stream), `None` when built in, or why nginx
/// cannot proxy TCP here.
pub fn nginx_stream_module() -> Result<Option<PathBuf>, String> {
    let nginx = measure::find("nginx").ok_or("nginx not installed")?;
    let out = Command::new(&nginx)
        .arg("-V")
        .output()
        .map_err(|e| format!("{}: {e}", nginx.display()))?;
    let built = String::from_utf8_lossy(&out.stderr);
    let mut options = built.split_whitespace();
    if built.contains("--with-stream=dynamic") {
        let dir = options
            .find_map(|o| o.strip_prefix("--modules-path="))
            .unwrap_or("/usr/lib/nginx/modules");
        let module = Path::new(dir).join("ngx_stream_module.so");
        if module.is_file() {
            Ok(Some(module))
        } else {
            Err(format!(
                "nginx's stream module not installed ({}; Debian: libnginx-mod-stream)",
                module.display()
            ))
        }
    } else if options.any(|o| o == "--with-stream") {
        Ok(None)
    } else {
        Err("nginx built without the stream module".into())
    }
}

/// Starts nginx as a TCP proxy (stream module) forwarding `listen → server`: in the
/// foreground, a master and `worker_processes auto` (a worker per CPU, as haproxy runs
/// a thread per CPU), descriptors and connections for the 9,000-connection step, no
/// access log, its error log, pid file and anything else it writes in `dir`. A side's
/// end of writing is passed on (`proxy_half_close`, as haproxy does by default): the
/// bulk client shuts down its sending side and waits for the sink's count. Returns
/// the master once every worker accepts; dropped, it stops its workers (SIGTERM).
pub fn nginx(dir: &TempDir, routes: &[(u16, u16)]) -> Proc {
    let module = nginx_stream_module().unwrap_or_else(|why| panic!("{why}"));
    let d = dir.0.display();
    let mut config = module.map_or(String::new(), |m| format!("load_module {};\n", m.display()));
    // Each proxied connection is two of nginx's connections, one per side.
    config += &format!(
        "daemon off;\nmaster_process on;\nworker_processes auto;\n\
         worker_rlimit_nofile 20000;\nerror_log {d}/nginx-error.log;\n\
         pid {d}/nginx.pid;\nlock_file {d}/nginx.lock;\n\
         events {{\n    worker_connections 18200;\n}}\n\
         stream {{\n    access_log off;\n"
    );
    for (listen, server) in routes {
        config += &format!(
            "    server {{\n        listen 127.0.0.1:{listen};\n        \
             proxy_pass 127.0.0.1:{server};\n        proxy_timeout 1h;\n        \
             proxy_half_close on;\n    }}\n"
        );
    }
    config += "}\n";
    let path = dir.0.join("nginx.conf");
    std::fs::write(&path, config).unwrap();
    let log = dir.0.join("nginx-error.log");
    let nginx = which("nginx");
    // -e: the error log before the configuration is read, not the built-in path.
    let command = || {
        let mut command = as_user(proxy_uid(), &nginx);
        command
            .arg("-p")
            .arg(&dir.0)
            .arg("-c")
            .arg(&path)
            .arg("-e")
            .arg(&log);
        command
    };
    let test = command().arg("-t").output().unwrap();
    assert!(
        test.status.success(),
        "nginx -t refused {} ({}):\n{}",
        path.display(),
        test.status,
        String::from_utf8_lossy(&test.stderr)
    );
    let mut proc = Proc::spawn(&mut command()).stopped_by_term();
    nginx_ready(&mut proc, routes.len(), &log);
    for (listen, _) in routes {
        proc.wait_listening(*listen);
    }
    proc
}

/// Waits until nginx's workers are up: each watches the listening sockets and more
/// (its channel to the master) with epoll, so it has allocated its connections, and
/// the same workers are there 100 ms later. Fails with the error log if nginx exits.
fn nginx_ready(proc: &mut Proc, listeners: usize, log: &Path) {
    let start = Instant::now();
    let mut ready = vec![];
    loop {
        if let Ok(Some(status)) = proc.child.try_wait() {
            panic!(
                "nginx exited ({status}); {}:\n{}",
                log.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        let workers = measure::children(proc.pid());
        if !workers.is_empty() && workers.iter().all(|&w| epoll_watched(w) > listeners) {
            if workers == ready {
                return;
            }
            ready = workers;
        } else {
            ready.clear();
        }
        assert!(start.elapsed() < STEP, "nginx's workers did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How many descriptors the epoll instances of process `pid` watch.
fn epoll_watched(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
        .map(|info| info.lines().filter(|l| l.starts_with("tfd:")).count())
        .sum()
}

/// Where `program` is (see [`measure::find`]), or its bare name.
fn which(program: &str) -> PathBuf {
    measure::find(program).unwrap_or_else(|| PathBuf::from(program))
}

/// One path under test.
pub struct Variant {
    pub kind: Kind,
    sink: SocketAddr,
    echo: SocketAddr,
    hold: SocketAddr,
    /// The proxy's processes (CPU and memory are theirs).
    pids: Vec<u32>,
    _procs: Vec<Proc>,
    _registrations: Vec<TcpStream>,
    _dir: TempDir,
}

impl Variant {
    pub fn start(kind: Kind, setup: &Setup) -> Variant {
        let dir = TempDir::new(kind.name());
        let servers = [setup.sink, setup.echo, setup.hold];
        let mut procs = vec![];
        let mut registrations = vec![];
        let ports: [u16; 3] = match kind {
            Kind::Direct => servers,
            Kind::DistgateAuto
            | Kind::DistgateBaseline
            | Kind::DistgateSplice
            | Kind::DistgateCopy => {
                let [epmd, p0, p1, p2] = free_ports();
                let public = [p0, p1, p2];
                let mode = match kind {
                    Kind::DistgateSplice => "splice",
                    Kind::DistgateCopy => "copy",
                    _ => "auto",
                };
                // The clients count as callers from outside the pod, so every
                // connection goes through per-source admission (loopback is trusted by
                // default); a TEST-NET address stands for the trusted list.
                let config = format!(
                    "[epmd]\nlisten = [\"127.0.0.1:{epmd}\"]\n\
                     [dist]\nlisten = [\"127.0.0.1\"]\nports = [{}, {}, {}]\n\
                     trusted = [\"192.0.2.1\"]\nmax_per_source = 10000\n\
                     [dist.pins]\nsink = {}\necho = {}\nhold = {}\n\
                     [forward]\nmode = \"{mode}\"\n",
                    public[0], public[1], public[2], public[0], public[1], public[2]
                );
                let mut proc = if kind == Kind::DistgateBaseline {
                    let binary = setup.baseline.as_deref().expect("checked in main");
                    distgate_binary(binary, &dir, "distgate", &config, proxy_uid())
                } else {
                    distgate(&dir, &config)
                };
                proc.wait_listening(epmd);
                procs.push(proc);
                for (name, port) in ["sink", "echo", "hold"].iter().zip(servers) {
                    registrations.push(register(epmd, name, port));
                }
                public
            }
            Kind::Gateway => {
                let [epmd, p0, p1, p2, gateway_epmd, g0, g1, g2] = free_ports();
                let sidecar = format!(
                    "[epmd]\nlisten = [\"127.0.0.1:{epmd}\"]\n\
                     [dist]\nlisten = [\"127.0.0.1\"]\nports = [{p0}, {p1}, {p2}]\n"
                );
                let mut proc = distgate_named(&dir, "sidecar", &sidecar, None);
                proc.wait_listening(epmd);
                procs.push(proc);
                for (name, port) in ["sink", "echo", "hold"].iter().zip(servers) {
                    registrations.push(register(epmd, name, port));
                }
                let gateway = format!(
                    "[epmd]\nlisten = [\"127.0.0.1:{gateway_epmd}\"]\n\
                     [dist]\nlisten = [\"127.0.0.1\"]\nports = [{g0}, {g1}, {g2}]\n\
                     [[route]]\nnodes = \"*\"\nupstream = \"127.0.0.1\"\nepmd_port = {epmd}\n"
                );
                let mut proc = distgate_named(&dir, "gateway", &gateway, None);
                proc.wait_listening(gateway_epmd);
                procs.push(proc);
                // Each name is leased a gateway port by asking for it. A name's port is
                // placed among the names leased (docs/gateway.md): ask again once all
                // three are, as a peer asks before each connection.
                let names = ["sink", "echo", "hold"];
                for name in names {
                    port_please(gateway_epmd, name);
                }
                names.map(|name| port_please(gateway_epmd, name))
            }
            Kind::Federated => {
                crate::federated::start_federated(&dir, servers, &mut procs, &mut registrations)
            }
            Kind::HaproxyTls => crate::federated::start_haproxy_tls(&dir, servers, &mut procs),
            Kind::Nginx => {
                let listen: [u16; 3] = free_ports();
                let routes: Vec<_> = listen.iter().copied().zip(servers).collect();
                procs.push(nginx(&dir, &routes));
                listen
            }
            Kind::Haproxy | Kind::HaproxySplice => {
                let listen: [u16; 3] = free_ports();
                let routes: Vec<_> = listen.iter().copied().zip(servers).collect();
                procs.push(haproxy_with(
                    &dir,
                    &routes,
                    proxy_uid(),
                    kind == Kind::HaproxySplice,
                ));
                listen
            }
            Kind::Socat => {
                let listen: [u16; 3] = free_ports();
                for (port, server) in listen.iter().zip(servers) {
                    let mut proc = Proc::spawn(Command::new("socat").args([
                        format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,backlog=4096"),
                        format!("TCP:127.0.0.1:{server},nodelay"),
                    ]));
                    proc.wait_listening(*port);
                    procs.push(proc);
                }
                listen
            }
            Kind::Relay => servers.map(|server| {
                let proc = Proc::role(
                    &[
                        "relay",
                        "--listen-port",
                        "0",
                        "--to",
                        &loopback(server).to_string(),
                    ],
                    None,
                );
                let port = proc.expect("PORT ").parse().unwrap();
                procs.push(proc);
                port
            }),
        };
        Variant {
            kind,
            sink: loopback(ports[0]),
            echo: loopback(ports[1]),
            hold: loopback(ports[2]),
            pids: procs.iter().map(Proc::pid).collect(),
            _procs: procs,
            _registrations: registrations,
            _dir: dir,
        }
    }

    fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// Bulk throughput on 1 and on 8 streams, and the proxy's CPU per GB.
    pub fn bulk(&self, _setup: &Setup, plan: &Plan, results: &mut Results) {
        let cpu_before = measure::cpu_ns(&self.pids);
        for (metric, streams) in [("a_bulk_1_stream", 1), ("b_bulk_8_streams", 8)] {
            let client = Proc::role(
                &[
                    "throughput",
                    "--addr",
                    &self.sink.to_string(),
                    "--streams",
                    &streams.to_string(),
                    "--bytes",
                    &plan.bulk_bytes.to_string(),
                ],
                None,
            );
            let seconds: f64 = client.expect("SECONDS ").parse().unwrap();
            client.finish();
            record(
                results,
                metric,
                self.name(),
                plan.bulk_bytes as f64 / 1e9 / seconds,
            );
        }
        // socat's per-connection children exit, taking their CPU time with them.
        if !self.pids.is_empty() && self.kind != Kind::Socat {
            let cpu = (measure::cpu_ns(&self.pids) - cpu_before) as f64 / 1e9;
            let gb = 2.0 * plan.bulk_bytes as f64 / 1e9;
            record(results, "c_cpu_per_gb", self.name(), cpu / gb);
        }
    }

    /// 64-byte round trips, unpinned or with every process on CPU 0; returns the p50,
    /// p99, p99.9 and maximum (µs). The last two are recorded for the unpinned run.
    pub fn round_trips(
        &self,
        setup: &Setup,
        plan: &Plan,
        pinned: bool,
        results: &mut Results,
    ) -> [f64; 4] {
        let mut pids = self.pids.clone();
        pids.push(setup.echo_proc.pid());
        if pinned {
            measure::pin(&pids, "0");
        }
        let cpu_before = measure::cpu_ns(&self.pids);
        let client = Proc::role(
            &[
                "rr",
                "--addr",
                &self.echo.to_string(),
                "--count",
                &plan.round_trips.to_string(),
            ],
            pinned.then_some("0"),
        );
        let line = client.expect("RTT ");
        client.finish();
        let cpu = measure::cpu_ns(&self.pids) - cpu_before;
        if pinned {
            let all = format!(
                "0-{}",
                std::thread::available_parallelism().map_or(1, |n| n.get()) - 1
            );
            measure::pin(&pids, &all);
        }
        let mut values = line.split_whitespace().map(|v| v.parse::<f64>().unwrap());
        let [p50, p99, p999, max] = std::array::from_fn(|_| values.next().unwrap());
        if pinned {
            record(results, "f_rtt_p50_pinned", self.name(), p50);
            record(results, "g_rtt_p99_pinned", self.name(), p99);
        } else {
            record(results, "d_rtt_p50", self.name(), p50);
            record(results, "e_rtt_p99", self.name(), p99);
            record(results, "ea_rtt_p999", self.name(), p999);
            record(results, "eb_rtt_max", self.name(), max);
        }
        if !pinned && !self.pids.is_empty() && self.kind != Kind::Socat {
            // Warm-up trips are a tenth of the measured ones.
            let trips = plan.round_trips as f64 * 1.1;
            record(
                results,
                "h_cpu_per_rt",
                self.name(),
                cpu as f64 / 1e3 / trips,
            );
        }
        [p50, p99, p999, max]
    }

    /// Dist connections set up one after another through the path (connect, the
    /// handshake, close), timed to the node's ack, and the proxy's CPU per setup.
    pub fn setups(&self, plan: &Plan, results: &mut Results) {
        let cpu_before = measure::cpu_ns(&self.pids);
        let client = Proc::role(
            &[
                "setup",
                "--addr",
                &self.echo.to_string(),
                "--count",
                &plan.setups.to_string(),
            ],
            None,
        );
        let line = client.expect("SETUP ");
        client.finish();
        let cpu = measure::cpu_ns(&self.pids) - cpu_before;
        let mut values = line.split_whitespace().map(|v| v.parse::<f64>().unwrap());
        record(results, "ha_setup_p50", self.name(), values.next().unwrap());
        record(results, "hb_setup_p99", self.name(), values.next().unwrap());
        // socat's per-connection children exit, taking their CPU time with them.
        if !self.pids.is_empty() && self.kind != Kind::Socat {
            // Warm-up setups are a tenth of the measured ones.
            let setups = plan.setups as f64 * 1.1;
            record(
                results,
                "hc_cpu_per_setup",
                self.name(),
                cpu as f64 / 1e3 / setups,
            );
        }
    }

    /// Memory per idle established connection with `count` open.
    pub fn idle_memory(&self, setup: &Setup, count: usize, results: &mut Results) {
        let mut hold = setup.hold_proc.lock().unwrap();
        let (rss0, pss0) = measure::memory_kib(&self.pids);
        let slab0 = measure::slab_kib();
        let client = Proc::role(
            &[
                "idle",
                "--addr",
                &self.hold.to_string(),
                "--count",
                &count.to_string(),
            ],
            None,
        );
        client.expect("READY");
        while hold.expect("HELD ").parse::<usize>().unwrap() < count {}
        let (rss1, pss1) = measure::memory_kib(&self.pids);
        let slab1 = measure::slab_kib();
        client.finish();
        let start = Instant::now();
        loop {
            hold.send_line("sweep");
            if hold.expect("OPEN ") == "0" {
                break;
            }
            assert!(start.elapsed() < STEP, "idle connections did not close");
            std::thread::sleep(Duration::from_millis(50));
        }
        let n = count as f64;
        let suffix = count.to_string();
        if !self.pids.is_empty() && count <= 1000 {
            // Each idle step starts a fresh proxy: what it holds before any link.
            record(results, "ia_fresh_rss", self.name(), rss0);
        }
        if !self.pids.is_empty() {
            record(
                results,
                &format!(
                    "{}_rss_per_conn_{suffix}",
                    if count > 1000 { "l" } else { "i" }
                ),
                self.name(),
                (rss1 - rss0) / n,
            );
            record(
                results,
                &format!(
                    "{}_pss_per_conn_{suffix}",
                    if count > 1000 { "m" } else { "j" }
                ),
                self.name(),
                (pss1 - pss0) / n,
            );
        }
        record(
            results,
            &format!(
                "{}_slab_per_conn_{suffix}",
                if count > 1000 { "n" } else { "k" }
            ),
            self.name(),
            (slab1 - slab0) / n,
        );
    }
}
