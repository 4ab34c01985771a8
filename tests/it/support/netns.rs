//! Test "pods": network namespaces created for one test run, joined by a veth pair
//! ([`Pods::two`]) or through a bridge in a "switch" namespace of their own
//! ([`Pods::switched`]), with their own /etc/hosts and nftables rules, torn down on
//! drop. Addresses come from 198.18.0.0/15 (set aside for test networks) and exist only
//! inside these namespaces.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::Process;
use super::beam::{Output, REPL, Repl, node_deadline};

/// A node's shell in a pod, typed into from the test: a node running [`REPL`].
pub struct Shell {
    index: usize,
    repl: Repl,
}

/// One pod: a namespace name and its address.
pub struct Pod {
    pub ns: String,
    pub ip: String,
    pub host: String,
}

/// Pods joined by one veth pair or a switch, and every process started in them.
pub struct Pods {
    pub pods: Vec<Pod>,
    /// The namespace holding the bridge, for switched pods.
    switch: Option<String>,
    processes: Vec<Process>,
    outputs: Vec<Option<Output>>,
}

fn run(args: &[&str], stdin: Option<&str>) {
    let mut command = Command::new(args[0]);
    command
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if stdin.is_some() {
        command.stdin(Stdio::piped());
    }
    let mut child = command.spawn().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    if let Some(text) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `args` inside namespace `ns` (with `stdin` fed), and asserts it succeeds.
pub fn exec(ns: &str, args: &[&str], stdin: Option<&str>) {
    let mut all = vec!["ip", "netns", "exec", ns];
    all.extend_from_slice(args);
    run(&all, stdin);
}

/// Inbound TCP only to EPMD and the public dist ports `ports` (nftables syntax, e.g.
/// `43691-43693`), from anyone or only from address `from`: a Kubernetes Service (or
/// NetworkPolicy) in miniature. Loopback (containers of the same pod) is not filtered.
pub fn service_rules(ports: &str, from: Option<&str>) -> String {
    let source = from.map(|ip| format!("ip saddr {ip} ")).unwrap_or_default();
    format!(
        r#"
table inet distgate_test {{
  chain input {{
    type filter hook input priority 0; policy accept;
    iif "lo" accept
    ct state established,related accept
    {source}tcp dport {{ 4369, {ports} }} accept
    meta l4proto tcp drop
  }}
}}
"#
    )
}

/// Loopback up, `ip`/24 on eth0, eth0 up, in namespace `ns`.
fn bring_up(ns: &str, ip: &str) {
    run(&["ip", "-n", ns, "link", "set", "lo", "up"], None);
    run(
        &[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ],
        None,
    );
    run(&["ip", "-n", ns, "link", "set", "eth0", "up"], None);
}

impl Pods {
    /// Two pods `a` and `b` (hosts `pod-a.<id>.test`, `pod-b.<id>.test`), each with
    /// the Service rules for 4369 and 43691.
    pub fn two(id: &str) -> Pods {
        Self::two_with_ports(id, "43691")
    }

    /// [`Pods::two`] with the Service declaring `ports` (nftables syntax, e.g.
    /// `43691-43693`) next to 4369.
    pub fn two_with_ports(id: &str, ports: &str) -> Pods {
        let mut pods = Pods {
            pods: vec![],
            switch: None,
            processes: vec![],
            outputs: vec![],
        };
        for (i, letter) in ["a", "b"].iter().enumerate() {
            pods.pods.push(Pod {
                ns: format!("{id}-{letter}"),
                ip: format!("198.18.0.{}", i + 1),
                host: format!("pod-{letter}.{id}.test"),
            });
        }
        let hosts: String = std::iter::once("127.0.0.1 localhost\n::1 localhost\n".to_owned())
            .chain(pods.pods.iter().map(|p| format!("{} {}\n", p.ip, p.host)))
            .collect();
        for pod in &pods.pods {
            run(&["ip", "netns", "add", &pod.ns], None);
            std::fs::create_dir_all(pods_etc(&pod.ns)).unwrap();
            std::fs::write(pods_etc(&pod.ns).join("hosts"), &hosts).unwrap();
        }
        let (a, b) = (&pods.pods[0].ns, &pods.pods[1].ns);
        run(
            &[
                "ip", "link", "add", "eth0", "netns", a, "type", "veth", "peer", "name", "eth0",
                "netns", b,
            ],
            None,
        );
        for pod in &pods.pods {
            bring_up(&pod.ns, &pod.ip);
            run(
                &["ip", "netns", "exec", &pod.ns, "nft", "-f", "-"],
                Some(&service_rules(ports, None)),
            );
        }
        pods
    }

    /// No pods yet, only a "switch" namespace `<id>-sw` with a bridge; pods join it
    /// with [`Pods::join`].
    pub fn switched(id: &str) -> Pods {
        let switch = format!("{id}-sw");
        run(&["ip", "netns", "add", &switch], None);
        let pods = Pods {
            pods: vec![],
            switch: Some(switch.clone()),
            processes: vec![],
            outputs: vec![],
        };
        run(
            &["ip", "-n", &switch, "link", "add", "br0", "type", "bridge"],
            None,
        );
        run(&["ip", "-n", &switch, "link", "set", "br0", "up"], None);
        pods
    }

    /// The switch's namespace, for [`Pods::switched`] pods.
    pub fn switch(&self) -> &str {
        self.switch.as_deref().expect("a switched topology")
    }

    /// A new pod namespace `<id>-<name>` at `ip`/24, wired to the switch, with
    /// `hosts` as its /etc/hosts and no firewall. Returns its index.
    pub fn join(&mut self, name: &str, ip: &str, hosts: &str) -> usize {
        let switch = self.switch.clone().expect("join needs Pods::switched");
        let id = switch.trim_end_matches("-sw");
        let index = self.pods.len();
        let pod = Pod {
            ns: format!("{id}-{name}"),
            ip: ip.to_owned(),
            host: format!("{name}.{id}.test"),
        };
        run(&["ip", "netns", "add", &pod.ns], None);
        self.pods.push(pod);
        let pod = &self.pods[index];
        self.set_hosts(index, hosts);
        let port = format!("p{index}");
        run(
            &[
                "ip", "link", "add", "eth0", "netns", &pod.ns, "type", "veth", "peer", "name",
                &port, "netns", &switch,
            ],
            None,
        );
        run(
            &[
                "ip", "-n", &switch, "link", "set", &port, "master", "br0", "up",
            ],
            None,
        );
        bring_up(&pod.ns, ip);
        index
    }

    /// Starts the distgate binary in `pod` (JSON logs, `config` or the defaults) and
    /// waits until its public dist ports listen. Returns its index for
    /// [`Pods::output`].
    pub fn distgate(&mut self, pod: usize, label: &str, config: Option<&std::path::Path>) -> usize {
        let mut command = self.command(pod, env!("CARGO_BIN_EXE_distgate"));
        command.args(["--log-format", "json"]);
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let index = self.spawn(label, &mut command);
        let listening = "\"public dist port listening\"";
        self.output(index)
            .wait_line(listening, super::DEADLINE, |l| l.contains(listening));
        index
    }

    /// An `erl` command in `pod` for node `name` (a full `name@host`) with the test
    /// cookie, registering with the pod's distgate (never starting its own epmd), and
    /// running `eval`.
    pub fn erl(&self, pod: usize, name: &str, eval: &str) -> Command {
        let mut command = self.command(pod, "erl");
        command
            .args(["-noshell", "-name", name, "-setcookie", super::beam::COOKIE])
            .args(["-start_epmd", "false", "-eval", eval]);
        command
    }

    /// Starts node `name` (a full `name@host`) in `pod` with a shell the test types
    /// into. Without a full mesh (`-connect_all false`): global does not cut links the
    /// node cannot complete.
    pub fn shell(&mut self, pod: usize, name: &str) -> Shell {
        self.shell_with(pod, name, &[])
    }

    /// [`Pods::shell`] with more `erl` arguments.
    pub fn shell_with(&mut self, pod: usize, name: &str, args: &[&str]) -> Shell {
        let mut command = self.erl(pod, name, REPL);
        command.args(["-connect_all", "false"]).args(args);
        let (node, stdin) = Output::spawn_interactive(&format!("{name} shell"), &mut command);
        Shell {
            index: self.adopt(node),
            repl: Repl::new(stdin),
        }
    }

    /// What `shell` answers to `expr`.
    pub fn ask(&mut self, shell: &mut Shell, expr: &str) -> String {
        shell.repl.ask(self.output(shell.index), expr)
    }

    /// Asks `shell` `expr` until the answer satisfies `done`; the answer.
    pub fn ask_until(
        &mut self,
        shell: &mut Shell,
        expr: &str,
        done: impl Fn(&str) -> bool,
    ) -> String {
        (shell.repl).until(self.output(shell.index), expr, node_deadline(), done)
    }

    /// Starts an idle node `name` in `pod` and waits until it is distributed; its
    /// index for [`Pods::output`].
    pub fn idle_node(&mut self, pod: usize, name: &str) -> usize {
        let mut command = self.erl(pod, name, super::beam::IDLE);
        let index = self.spawn(&format!("node {name}"), &mut command);
        self.output(index)
            .wait_for("READY", super::beam::node_deadline());
        index
    }

    /// Replaces `pod`'s /etc/hosts.
    pub fn set_hosts(&self, pod: usize, hosts: &str) {
        self.set_etc(pod, "hosts", hosts);
    }

    /// Replaces `pod`'s /etc/`file` (`ip netns exec` mounts it over the real one).
    pub fn set_etc(&self, pod: usize, file: &str, text: &str) {
        let etc = pods_etc(&self.pods[pod].ns);
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join(file), text).unwrap();
    }

    /// Loads nftables `rules` in `pod`'s namespace.
    pub fn firewall(&self, pod: usize, rules: &str) {
        run(
            &["ip", "netns", "exec", &self.pods[pod].ns, "nft", "-f", "-"],
            Some(rules),
        );
    }

    /// A command run inside `pod`'s namespace (with its /etc/hosts).
    pub fn command(&self, pod: usize, program: &str) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.pods[pod].ns, program])
            .env_remove("ERL_EPMD_PORT");
        command
    }

    /// Starts a collected-output process in `pod`; it is ended at teardown. Returns
    /// its index for [`Pods::output`].
    pub fn spawn(&mut self, label: &str, command: &mut Command) -> usize {
        self.adopt(Output::spawn(label, command))
    }

    /// Takes `output` (a process started in a pod) to be ended at teardown.
    pub fn adopt(&mut self, output: Output) -> usize {
        self.outputs.push(Some(output));
        self.outputs.len() - 1
    }

    pub fn output(&mut self, index: usize) -> &mut Output {
        self.outputs[index]
            .as_mut()
            .expect("that process was stopped")
    }

    /// Ends the process `index` now (by its PID) and returns what it printed.
    pub fn stop(&mut self, index: usize) -> String {
        let output = self.outputs[index].take().expect("stopped twice");
        let text = output.text();
        drop(output);
        text
    }
}

fn pods_etc(ns: &str) -> PathBuf {
    PathBuf::from("/etc/netns").join(ns)
}

impl Drop for Pods {
    fn drop(&mut self) {
        // Processes first (by PID, through their handles), then the namespaces.
        self.outputs.clear();
        self.processes.clear();
        for pod in &self.pods {
            let _ = Command::new("ip")
                .args(["netns", "del", &pod.ns])
                .stderr(Stdio::null())
                .status();
            let _ = std::fs::remove_dir_all(pods_etc(&pod.ns));
        }
        if let Some(switch) = &self.switch {
            let _ = Command::new("ip")
                .args(["netns", "del", switch])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// One end of a [`veth_link`]: the namespace, its address (a /24) and its MAC address.
pub struct End<'a> {
    pub ns: &'a str,
    pub ip: &'a str,
    pub mac: &'a str,
}

/// Joins two existing namespaces by a veth pair named `dev` at both ends, quiet unless
/// used: no IPv6 (no router solicitations, DAD or MLD) and each end's neighbour entered
/// by hand for good (no ARP), so a capture on it holds only the traffic sent over it.
/// The pair goes with the first namespace deleted.
pub fn veth_link(dev: &str, ends: [End<'_>; 2]) {
    let [a, b] = &ends;
    run(
        &[
            "ip", "link", "add", dev, "netns", a.ns, "address", a.mac, "type", "veth", "peer",
            "name", dev, "netns", b.ns, "address", b.mac,
        ],
        None,
    );
    for end in [a, b] {
        let sysctl = format!("net.ipv6.conf.{dev}.disable_ipv6=1");
        exec(end.ns, &["sysctl", "-q", "-w", &sysctl], None);
        let ip = format!("{}/24", end.ip);
        run(&["ip", "-n", end.ns, "addr", "add", &ip, "dev", dev], None);
        run(&["ip", "-n", end.ns, "link", "set", dev, "up"], None);
    }
    // Once both ends are up: a link going down flushes its neighbours.
    for (end, other) in [(a, b), (b, a)] {
        run(
            &[
                "ip",
                "-n",
                end.ns,
                "neigh",
                "replace",
                other.ip,
                "lladdr",
                other.mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ],
            None,
        );
    }
}

/// Runs `work` on a thread of its own inside namespace `ns` and returns its result.
/// Sockets it makes stay in `ns` and can be used from any thread afterwards.
pub fn in_netns<T: Send + 'static>(ns: &str, work: impl FnOnce() -> T + Send + 'static) -> T {
    let path = PathBuf::from("/var/run/netns").join(ns);
    std::thread::spawn(move || {
        let handle = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        nix::sched::setns(&handle, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        work()
    })
    .join()
    .expect("the thread in the namespace panicked")
}

/// Raises this process's soft descriptor limit to the hard one (tests that open
/// thousands of sockets).
pub fn raise_descriptor_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    hard
}

/// `/metrics` of the distgate in namespace `ns`, asked over its loopback on 9369.
pub fn metrics_in(ns: &str) -> String {
    admin_in(ns, "/metrics")
}

/// GET `path` from the admin port (9369) of the distgate in namespace `ns`: the whole
/// response, head and body.
pub fn admin_in(ns: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let request = format!("GET {path} HTTP/1.1\r\nHost: distgate\r\nConnection: close\r\n\r\n");
    in_netns(ns, move || {
        let mut stream = std::net::TcpStream::connect("127.0.0.1:9369").unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    })
}
