//! `distgate probe NODE@HOST`: walk the path a BEAM node takes to reach another, step
//! by step, and say where and why it breaks.
//!
//! Resolve the host (first IPv4 address, as `inet:getaddr/2`), ask its EPMD for the
//! name's port, connect, send a `send_name` under a probe name, read the status and
//! the challenge, which carries the node's own name, creation and flags, then hang up.
//! No cookie is involved; the node sees a handshake that stops half way.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::epmd::{client, message};
use crate::handshake::{self, Challenge};

/// What to probe and how.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The name part, before `@`.
    pub name: String,
    /// The host part, after `@`.
    pub host: String,
    /// The EPMD port to ask.
    pub epmd_port: u16,
    /// Resolve and connect over IPv6.
    pub ipv6: bool,
    /// Limit of each step.
    pub timeout: Duration,
}

/// A node name the probe cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{node}` is not a node name like app@host")]
pub struct NotANodeName {
    /// What was given.
    pub node: String,
}

impl Probe {
    /// Parses `name@host`.
    pub fn parse(
        node: &str,
        epmd_port: u16,
        ipv6: bool,
        timeout: Duration,
    ) -> Result<Probe, NotANodeName> {
        match node.split_once('@') {
            Some((name, host)) if !name.is_empty() && !host.is_empty() => Ok(Probe {
                name: name.to_owned(),
                host: host.to_owned(),
                epmd_port,
                ipv6,
                timeout,
            }),
            _ => Err(NotANodeName {
                node: node.to_owned(),
            }),
        }
    }

    /// `name@host`.
    pub fn node(&self) -> String {
        format!("{}@{}", self.name, self.host)
    }
}

/// One step that worked, with what it found and how long it took.
#[derive(Debug, Clone)]
pub struct Step {
    /// What was done.
    pub what: String,
    /// What it found.
    pub found: String,
    /// How long it took.
    pub took: Duration,
}

/// Where the path broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The host does not resolve.
    Dns(String),
    /// Its EPMD does not answer.
    EpmdUnreachable(String),
    /// Its EPMD does not know the name; the names it lists, if it lists them to us.
    NotRegistered {
        /// The names registered there, when shown.
        names: Option<Vec<String>>,
    },
    /// The dist port does not accept.
    PortUnreachable(String),
    /// The node refused the handshake, with this status or reason.
    HandshakeRefused(String),
    /// The connection was closed before any answer to our first frame.
    ClosedUnanswered(String),
    /// The node answers under another name.
    NameMismatch {
        /// The name it gives itself.
        actual: String,
    },
    /// The port does not speak the dist protocol.
    Protocol(String),
}

impl Failure {
    /// A bounded label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::Dns(_) => "dns",
            Failure::EpmdUnreachable(_) => "epmd_unreachable",
            Failure::NotRegistered { .. } => "not_registered",
            Failure::PortUnreachable(_) => "port_unreachable",
            Failure::HandshakeRefused(_) => "handshake_refused",
            Failure::ClosedUnanswered(_) => "closed_unanswered",
            Failure::NameMismatch { .. } => "name_mismatch",
            Failure::Protocol(_) => "protocol",
        }
    }
}

/// The probe's findings: the steps that worked, then the failure if any.
#[derive(Debug, Clone)]
pub struct Report {
    /// The node probed, `name@host`.
    pub target: String,
    /// The steps that worked, in order.
    pub steps: Vec<Step>,
    /// The node's challenge, when the handshake got that far.
    pub challenge: Option<Challenge>,
    /// Where the path broke, if it did.
    pub failure: Option<Failure>,
}

impl Report {
    /// Whether the node answered as itself.
    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Dns(e) => write!(
                f,
                "DNS: the host does not resolve ({e}). Peers resolve the part after @ \
                 to reach the node: it must resolve, from every peer, to the node's pod"
            ),
            Failure::EpmdUnreachable(e) => write!(
                f,
                "EPMD unreachable ({e}). Is distgate (or epmd) running there, and is port \
                 4369 open in the Service and the NetworkPolicy?"
            ),
            Failure::NotRegistered { names } => {
                write!(f, "the name is not registered with that EPMD")?;
                match names {
                    Some(names) if names.is_empty() => write!(f, "; no node is registered there"),
                    Some(names) => write!(f, "; registered there: {}", names.join(", ")),
                    None => write!(f, " (its node list is not shown to this address)"),
                }
            }
            Failure::PortUnreachable(e) => write!(
                f,
                "the dist port does not accept ({e}). Is the public port (43691) open in \
                 the Service and the NetworkPolicy?"
            ),
            Failure::HandshakeRefused(status) => write!(
                f,
                "the node refused the handshake with status `{status}`{}",
                match status.as_str() {
                    "not_allowed" =>
                        ": long and short names do not mix, net_kernel:allow/1 excludes us, \
                         or the target's distgate refused our name by its `dist.allow_peers` \
                         (`distgate refusals` on the target's pod lists it as not_allowed)",
                    "alive" => ": a link under our name already exists",
                    "nok" => ": a simultaneous connection attempt won",
                    _ => "",
                }
            ),
            Failure::ClosedUnanswered(e) => write!(
                f,
                "the connection was closed before any answer to our handshake ({e}). The \
                 target's distgate closes at once a source it bans or one over \
                 `dist.max_per_source`, and a caller whose node's real port does not accept: \
                 on the target's pod, `distgate refusals` says which (banned, per_source, \
                 max_connections, upstream_refused, no_node), `distgate bans` lists bans and \
                 `distgate unban ADDRESS` lifts one. Without distgate, the node itself closed it."
            ),
            Failure::NameMismatch { actual } => write!(
                f,
                "NAME MISMATCH: the node there calls itself `{actual}`; peers dialling this \
                 name drop the link at the challenge. Start the node under the name peers \
                 dial (-name, or RELEASE_NODE for a release), or have peers dial `{actual}`."
            ),
            Failure::Protocol(e) => write!(f, "not a BEAM dist port: {e}"),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "probe {}", self.target)?;
        for step in &self.steps {
            let ms = step.took.as_secs_f64() * 1000.0;
            writeln!(f, "  {:<28} {} ({ms:.1} ms)", step.what, step.found)?;
        }
        match &self.failure {
            Some(failure) => write!(f, "FAIL: {failure}"),
            None => write!(f, "ok: {} answers as itself", self.target),
        }
    }
}

/// Runs the probe.
pub async fn probe(target: &Probe) -> Report {
    let mut report = Report {
        target: target.node(),
        steps: vec![],
        challenge: None,
        failure: None,
    };
    if let Err(failure) = walk(target, &mut report).await {
        report.failure = Some(failure);
    }
    report
}

async fn walk(target: &Probe, report: &mut Report) -> Result<(), Failure> {
    let limit = target.timeout;
    let started = Instant::now();
    let ip = resolve(target).await?;
    report.steps.push(Step {
        what: format!("resolve {}", target.host),
        found: ip.to_string(),
        took: started.elapsed(),
    });

    let epmd = SocketAddr::new(ip, target.epmd_port);
    let started = Instant::now();
    let found = client::port_please(epmd, &target.name, limit)
        .await
        .map_err(|e| Failure::EpmdUnreachable(e.to_string()))?;
    let Some(found) = found else {
        let names = client::request(epmd, &message::frame(&[message::NAMES_REQ]), limit)
            .await
            .ok()
            .filter(|r| r.len() >= 4)
            .map(|r| names_of(&r[4..]));
        return Err(Failure::NotRegistered { names });
    };
    let (port, high, low) = (
        found.port,
        found.info.highest_version,
        found.info.lowest_version,
    );
    report.steps.push(Step {
        what: format!("epmd {epmd}"),
        found: format!("{} on port {port}, versions {low}-{high}", target.name),
        took: started.elapsed(),
    });

    let dist = SocketAddr::new(ip, port);
    let started = Instant::now();
    let mut stream = match timeout(limit, TcpStream::connect(dist)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(Failure::PortUnreachable(format!("{dist}: {e}"))),
        Err(_) => {
            return Err(Failure::PortUnreachable(format!(
                "{dist}: no answer in {limit:?}"
            )));
        }
    };
    report.steps.push(Step {
        what: format!("connect {dist}"),
        found: "accepted".into(),
        took: started.elapsed(),
    });

    let started = Instant::now();
    let probe_name = probe_name(&target.host);
    let hello = handshake::encode_send_name(probe_name, handshake::OTP25_FLAGS, std::process::id());
    let io = |e: std::io::Error| Failure::HandshakeRefused(format!("connection lost: {e}"));
    stream.write_all(&hello).await.map_err(io)?;
    let status = read_frame(&mut stream, limit, true).await?;
    let status = handshake::parse_status(&status)
        .ok_or_else(|| Failure::Protocol(format!("expected a status, got {status:02x?}")))?;
    if status != "ok" && status != "ok_simultaneous" {
        return Err(Failure::HandshakeRefused(status));
    }
    let challenge = read_frame(&mut stream, limit, false).await?;
    let challenge = handshake::parse_challenge(&challenge)
        .ok_or_else(|| Failure::Protocol(format!("expected a challenge, got {challenge:02x?}")))?;
    report.steps.push(Step {
        what: format!("handshake as {probe_name}"),
        found: format!(
            "status {status}; node {}, creation {}, flags {:#x}",
            challenge.name,
            challenge.creation.map_or("-".into(), |c| c.to_string()),
            challenge.flags
        ),
        took: started.elapsed(),
    });
    let actual = challenge.name.clone();
    report.challenge = Some(challenge);
    if actual != target.node() {
        return Err(Failure::NameMismatch { actual });
    }
    Ok(())
}

/// The first address of the wanted family, as `inet:getaddr/2` picks it.
async fn resolve(target: &Probe) -> Result<IpAddr, Failure> {
    if let Ok(ip) = target.host.parse::<IpAddr>() {
        return Ok(ip);
    }
    let lookup = tokio::net::lookup_host((target.host.as_str(), target.epmd_port));
    let addrs = match timeout(target.timeout, lookup).await {
        Ok(Ok(addrs)) => addrs,
        Ok(Err(e)) => return Err(Failure::Dns(e.to_string())),
        Err(_) => return Err(Failure::Dns(format!("no answer in {:?}", target.timeout))),
    };
    addrs
        .map(|a| a.ip())
        .find(|ip| ip.is_ipv6() == target.ipv6)
        .ok_or_else(|| {
            Failure::Dns(format!(
                "no {} address",
                if target.ipv6 { "IPv6" } else { "IPv4" }
            ))
        })
}

/// The probe's name, of the target's kind: long names have a dot (or are addresses) in
/// the host, short names have none, and the two do not mix. Always the same two names:
/// a node makes an atom of every caller's name before it checks anything, so a name
/// per run would grow the target's atom table with every probe.
fn probe_name(target_host: &str) -> &'static str {
    if target_host.contains('.') || target_host.contains(':') {
        PROBE_NAMES[0]
    } else {
        PROBE_NAMES[1]
    }
}

/// The names `distgate probe` calls by, long and short. A probe hangs up on the
/// node's challenge by design: distgate neither warns of a name mismatch nor counts a
/// withdrawal for these (the node has made their atom once, not once per probe).
pub const PROBE_NAMES: [&str; 2] = [
    "distgate-probe@probe.distgate.invalid",
    "distgate-probe@distgate-probe",
];

fn names_of(lines: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(lines)
        .lines()
        .filter_map(|l| {
            l.strip_prefix("name ")?
                .split(" at port ")
                .next()
                .map(str::to_owned)
        })
        .collect()
}

/// Reads one `u16`-framed handshake message; `unanswered`: a close before its first
/// byte means nothing answered our first frame.
async fn read_frame(
    stream: &mut TcpStream,
    limit: Duration,
    unanswered: bool,
) -> Result<Vec<u8>, Failure> {
    let mut first = true;
    let read = async {
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await?;
        first = false;
        let mut payload = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut payload).await?;
        Ok::<_, std::io::Error>(payload)
    };
    match timeout(limit, read).await {
        Ok(Ok(payload)) => Ok(payload),
        Ok(Err(e)) if first && unanswered => Err(Failure::ClosedUnanswered(e.to_string())),
        Ok(Err(e)) => Err(Failure::HandshakeRefused(format!(
            "closed by the node ({e})"
        ))),
        Err(_) => Err(Failure::HandshakeRefused(format!("no answer in {limit:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_parse() {
        let t = Probe::parse("app@pod.svc", 4369, false, Duration::from_secs(1)).unwrap();
        assert_eq!((t.name.as_str(), t.host.as_str()), ("app", "pod.svc"));
        assert!(Probe::parse("app", 4369, false, Duration::from_secs(1)).is_err());
        assert!(Probe::parse("@host", 4369, false, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn probe_names_match_the_target_kind() {
        assert_eq!(
            probe_name("pod.svc.cluster.local"),
            "distgate-probe@probe.distgate.invalid"
        );
        assert_eq!(
            probe_name("10.0.0.5"),
            "distgate-probe@probe.distgate.invalid"
        );
        assert_eq!(probe_name("pod-0"), "distgate-probe@distgate-probe");
    }

    #[test]
    fn names_lines_are_read() {
        assert_eq!(
            names_of(b"name a at port 1\nname b at port 2\n"),
            ["a", "b"]
        );
    }
}
