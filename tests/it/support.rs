//! Shared test helpers: an in-process distgate on ephemeral loopback ports, raw EPMD
//! clients, real `epmd` and `erl` processes owned by the test (ended by PID on drop),
//! and polling with deadlines instead of sleeps.

pub mod as_user;
pub mod beam;
pub mod binary;
pub mod bytes;
pub mod capture;
pub mod clusters;
pub mod dist;
pub mod dnsmasq;
pub mod netns;
pub mod pki;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use distgate::config::{Config, Peers};
use distgate::epmd::message::{self, Alive2Req};
use distgate::gateway::Gateway;
use distgate::ports::PortPlan;
use distgate::registry::Registry;
use distgate::{Distgate, Listeners};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long any single expected event may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// How long a connection must stay quiet to count as "kept open" (a negative can only
/// be shown by waiting; local closes arrive in well under a millisecond).
pub const SETTLE: Duration = Duration::from_millis(250);

/// The clock of one wait: how long it may last and how long to pause between looks.
struct Poll<'a> {
    what: &'a str,
    start: Instant,
    deadline: Duration,
}

impl Poll<'_> {
    /// Fails the test once the deadline has passed; else the pause before the next look.
    fn pause(&self) -> Duration {
        assert!(
            self.start.elapsed() < self.deadline,
            "timed out after {:?} waiting for {}",
            self.deadline,
            self.what
        );
        Duration::from_millis(10)
    }
}

/// Polls `check` until it returns `Some`, failing the test once `deadline` has passed.
pub async fn eventually_within<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let poll = Poll {
        what,
        start: Instant::now(),
        deadline,
    };
    loop {
        if let Some(value) = check().await {
            return value;
        }
        tokio::time::sleep(poll.pause()).await;
    }
}

/// [`eventually_within`] with the usual [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(DEADLINE, what, check).await
}

/// [`eventually_within`] for a test that runs on threads rather than a runtime.
pub fn eventually_blocking<T>(
    deadline: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let poll = Poll {
        what,
        start: Instant::now(),
        deadline,
    };
    loop {
        if let Some(value) = check() {
            return value;
        }
        std::thread::sleep(poll.pause());
    }
}

/// A distgate (sidecar, or gateway with `Options::routes`) running in this process on
/// loopback ports chosen by the OS; the binary as a process is [`binary::Running`].
pub struct InProcess {
    pub epmd: SocketAddr,
    /// The admin HTTP address, with `Options::admin`.
    pub admin: Option<SocketAddr>,
    /// The public dist ports, in pool order.
    pub public_ports: Vec<u16>,
    pub registry: Arc<Registry>,
    /// The gateway, when the options have routes.
    pub gateway: Option<Arc<Gateway>>,
    /// The federation listener (on 127.0.0.1, an ephemeral port), when the config
    /// has `[federation] listen`.
    pub federation: Option<SocketAddr>,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<distgate::Drain>,
}

/// Options for [`InProcess::start`].
pub struct Options {
    pub config: Config,
    /// How many public dist ports to bind.
    pub pool: usize,
    /// Pins by pool index.
    pub pins: Vec<(&'static str, usize)>,
    /// Also listen on ::1 (same port numbers).
    pub ipv6: bool,
    /// Serve the admin endpoints on an ephemeral port, with this process's recorder.
    pub admin: bool,
}

impl Default for Options {
    fn default() -> Self {
        let mut config = Config::default();
        config.epmd.names_from = Peers::Any;
        Options {
            config,
            pool: 1,
            pins: vec![],
            ipv6: false,
            admin: false,
        }
    }
}

/// Binds `127.0.0.1:0` and, with `ipv6`, `[::1]` on the same port (retrying until the
/// OS gives a port free on both).
fn bind_pair(ipv6: bool) -> Vec<TcpListener> {
    for _ in 0..50 {
        let v4 = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        if !ipv6 {
            return vec![to_tokio(v4)];
        }
        let port = v4.local_addr().unwrap().port();
        if let Ok(v6) = std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, port)) {
            return vec![to_tokio(v4), to_tokio(v6)];
        }
    }
    panic!("no port free on both 127.0.0.1 and ::1");
}

fn to_tokio(listener: std::net::TcpListener) -> TcpListener {
    listener.set_nonblocking(true).unwrap();
    TcpListener::from_std(listener).unwrap()
}

impl InProcess {
    pub async fn start(options: Options) -> InProcess {
        let epmd = bind_pair(options.ipv6);
        let epmd_addr = epmd[0].local_addr().unwrap();
        let mut listeners = Listeners {
            epmd,
            ..Listeners::default()
        };
        let mut public_ports = vec![];
        for _ in 0..options.pool {
            let pair = bind_pair(options.ipv6);
            let port = pair[0].local_addr().unwrap().port();
            public_ports.push(port);
            listeners.dist.extend(pair.into_iter().map(|l| (port, l)));
        }
        let plan = PortPlan {
            pool: public_ports.clone(),
            pins: options
                .pins
                .iter()
                .map(|&(name, at)| (name.to_owned(), public_ports[at]))
                .collect(),
            clients: options.config.dist.client_names.clone(),
        };
        let mut admin = None;
        if options.admin {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            admin = Some(listener.local_addr().unwrap());
            listeners.admin.push(listener);
        }
        let mut federation = None;
        if !options.config.federation.listen.is_empty() {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            federation = Some(listener.local_addr().unwrap());
            listeners.federation.push(listener);
        }
        let shutdown = CancellationToken::new();
        // The recorder first, so metrics set up with the sidecar are recorded too.
        let metrics = options.admin.then(recorder);
        let mut sidecar = Distgate::new(&options.config, plan, shutdown.clone()).unwrap();
        if let Some(handle) = metrics {
            sidecar.set_metrics(handle);
        }
        let registry = Arc::clone(sidecar.registry());
        let gateway = sidecar.gateway();
        let task = tokio::spawn(sidecar.run(listeners));
        InProcess {
            epmd: epmd_addr,
            admin,
            public_ports,
            registry,
            gateway,
            federation,
            shutdown,
            task,
        }
    }

    /// The gateway's leases (none without routes).
    pub fn leases(&self) -> Vec<distgate::gateway::Lease> {
        self.gateway.as_ref().map_or_else(Vec::new, |g| g.leases())
    }

    pub fn public_addr(&self, index: usize) -> SocketAddr {
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), self.public_ports[index])
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// This test process's Prometheus recorder, installed on first use.
pub fn recorder() -> distgate::metrics::Exporter {
    static HANDLE: std::sync::OnceLock<distgate::metrics::Exporter> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let idle = distgate::config::MetricsConfig::default().idle_timeout;
            distgate::metrics::install(idle).expect("recorder")
        })
        .clone()
}

/// A plain HTTP/1.1 GET: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path).await
}

/// A plain HTTP/1.1 request without a body: (status, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: distgate\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let reply = String::from_utf8(read_to_close(&mut stream).await).unwrap();
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad HTTP reply {reply:?}"));
    let body = reply
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// The value of the sample `name{labels}` in Prometheus text, where `labels` are the
/// sample's exact labels in any order (`None` when absent).
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            if metric != name {
                return None;
            }
            let mut found: Vec<(String, String)> = rest
                .trim_end_matches('}')
                .split("\",")
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    let (k, v) = p.split_once("=\"")?;
                    Some((
                        k.trim_start_matches(',').to_owned(),
                        v.trim_end_matches('"').to_owned(),
                    ))
                })
                .collect();
            let mut want: Vec<(String, String)> = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            found.sort();
            want.sort();
            (found == want).then(|| value.parse().ok())?
        })
}

/// An ALIVE2_REQ for `name` at `port` from an OTP 23+ node.
pub fn alive2(name: &str, port: u16) -> Alive2Req {
    Alive2Req::otp23(name, port)
}

/// What a connection saw after its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub bytes: Vec<u8>,
    /// Closed (EOF or reset) rather than still open after `SETTLE`.
    pub closed: bool,
}

/// Reads whatever arrives until the peer closes, or until `SETTLE` passes with nothing
/// new (the connection is then open).
pub async fn read_reply(stream: &mut TcpStream) -> Reply {
    let mut bytes = vec![];
    let mut buf = vec![0u8; 65536];
    loop {
        match tokio::time::timeout(SETTLE, stream.read(&mut buf)).await {
            Err(_) => {
                return Reply {
                    bytes,
                    closed: false,
                };
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Reply {
                    bytes,
                    closed: true,
                };
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads until the peer closes, failing after `DEADLINE`.
pub async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut bytes = vec![];
    let read = tokio::time::timeout(DEADLINE, async {
        let mut buf = vec![0u8; 65536];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
    });
    read.await.expect("connection was not closed");
    bytes
}

/// Sends one request on a new connection and returns the reply up to the close.
pub async fn request(addr: SocketAddr, wire: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(wire).await.unwrap();
    read_to_close(&mut stream).await
}

/// Registers over a new connection; returns the connection (the registration lives as
/// long as it) and the reply.
pub async fn register(addr: SocketAddr, req: &Alive2Req) -> (TcpStream, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&message::encode_alive2_req(req))
        .await
        .unwrap();
    let want = if req.info.highest_version >= 6 { 6 } else { 4 };
    let mut reply = vec![0u8; want];
    tokio::time::timeout(DEADLINE, stream.read_exact(&mut reply))
        .await
        .expect("no ALIVE2 reply")
        .expect("ALIVE2 reply cut short");
    (stream, reply)
}

/// The creation in a successful ALIVE2_X_RESP.
pub fn creation_of(reply: &[u8]) -> u32 {
    assert_eq!(&reply[..2], &[b'v', 0], "not a successful ALIVE2_X_RESP");
    u32::from_be_bytes(reply[2..6].try_into().unwrap())
}

/// The NAMES reply as (header port, lines).
pub async fn names(addr: SocketAddr) -> (u16, Vec<String>) {
    let reply = request(addr, &message::frame(b"n")).await;
    assert!(reply.len() >= 4, "short NAMES reply {reply:?}");
    let port = u32::from_be_bytes(reply[..4].try_into().unwrap());
    let text = String::from_utf8(reply[4..].to_vec()).unwrap();
    (port as u16, text.lines().map(str::to_owned).collect())
}

/// The port PORT_PLEASE2 gives for `name`, `None` for `77 01`.
pub async fn port_please(addr: SocketAddr, name: &str) -> Option<u16> {
    let mut wire = vec![b'z'];
    wire.extend_from_slice(name.as_bytes());
    let reply = request(addr, &message::frame(&wire)).await;
    match reply.as_slice() {
        [b'w', 1] => None,
        [b'w', 0, hi, lo, ..] => Some(u16::from_be_bytes([*hi, *lo])),
        other => panic!("bad PORT2_RESP {other:?}"),
    }
}

/// A child process this test started; killed by PID when dropped.
pub struct Process {
    pub child: Child,
    pub label: String,
}

impl Process {
    pub fn spawn(label: &str, command: &mut Command) -> Process {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {label}: {e}"));
        Process {
            child,
            label: label.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited, with its status.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether an executable is on PATH.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Whether tests needing `programs` can run. In CI (`CI=true`) a missing program fails
/// the test; elsewhere the test is skipped with a note.
pub fn require(programs: &[&str]) -> bool {
    let missing: Vec<_> = programs.iter().filter(|p| !have(p)).collect();
    if missing.is_empty() {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    assert!(!ci, "CI=true but {missing:?} not installed");
    eprintln!("skipped: {missing:?} not installed (`scripts/test` installs them)");
    false
}

/// Whether the process may create network namespaces (root). Fails in CI when not.
pub fn require_root() -> bool {
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if root {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    assert!(!ci, "CI=true but not running as root");
    eprintln!("skipped: needs root for network namespaces");
    false
}

/// A short name unique to this test run, for node names and namespaces.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh directory under the system's temporary directory, removed with everything in
/// it on drop: configuration files, inetrc files, a release's build.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    /// Creates `<tmp>/<prefix><unique>`.
    pub fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    /// A path inside it.
    pub fn join(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free loopback port at the time of the call (for programs that cannot take a bound
/// socket, like `epmd`; callers must retry if it is taken meanwhile).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.local_addr().unwrap().port()
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// A process's open descriptors and resident memory (KiB), from /proc.
pub fn usage(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    (fds, rss)
}

/// Waits until `stream` has been closed by its other end: a write to it fails.
pub async fn closed_by_peer(stream: &tokio::net::TcpStream, what: &str) {
    eventually(what, || {
        let written = stream.try_write(b"x");
        async move {
            written
                .is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock)
                .then_some(())
        }
    })
    .await;
}

/// A fake node `name`: a listener on loopback registered with the EPMD at `epmd`, and
/// the registration connection that keeps it registered.
pub async fn fake_node(epmd: SocketAddr, name: &str) -> (TcpListener, TcpStream) {
    let node = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (registration, _) = register(epmd, &alive2(name, node.local_addr().unwrap().port())).await;
    (node, registration)
}
