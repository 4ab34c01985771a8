//! Two hops with TLS between them, as two clusters' gateways carry a dist link:
//!
//! - `federated`: client → distgate gateway A (a public port; a route federates every
//!   name to B) → mutual TLS 1.3 (ALPN `distgate/1`) → distgate gateway B (`[federation]`
//!   listening; the servers registered at its EPMD as nodes) → server. Both are the
//!   release binary, each with its TOML file, as a cluster runs them; the dist handshake
//!   crosses both, followed by each.
//! - `haproxy-tls`: the same two hops with haproxy: process A in tcp mode, its server
//!   `ssl` with A's certificate (`verify required` against the CA), process B binding
//!   `ssl` with B's certificate and requiring a client certificate of the CA, then plain
//!   to the server. TLS 1.3 only, the cipher suite distgate negotiates, X25519, a full
//!   handshake per connection (`no-ssl-reuse`: distgate's client keeps no sessions).
//!
//! One CA (rcgen) signs both gateways' certificates (ECDSA P-256, a SPIFFE ID each, as
//! `tests/it/support/pki.rs` makes them); both paths use the same files. The TLS each
//! path negotiates is read once per run, and shown in the report.

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use crate::measure::{self, Proc};
use crate::variants::{TempDir, distgate_named, free_ports, proxy_uid, register};

#[path = "../../tests/it/support/pki.rs"]
#[allow(dead_code)] // the tests' certificate maker; the bench uses part of it
mod pki;

/// The gateways' identities (their certificates' one URI SAN).
const A_ID: &str = "spiffe://a.bench.invalid/ns/distgate/sa/gateway";
const B_ID: &str = "spiffe://b.bench.invalid/ns/distgate/sa/gateway";

/// The TLS 1.3 cipher suite haproxy is held to: the one distgate's gateways negotiate
/// (rustls with aws-lc-rs prefers it; the report shows what each path got).
const CIPHER_SUITE: &str = "TLS_AES_256_GCM_SHA384";

/// What each path negotiated, for the report.
static NEGOTIATED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// The lines on the TLS of the two-hop paths measured in this run.
pub fn notes() -> Vec<String> {
    NEGOTIATED.lock().unwrap().iter().cloned().collect()
}

/// A CA and both gateways' certificates in `dir`: `a.crt`, `a.key`, `b.crt`, `b.key`,
/// `ca.crt`, and `a.pem`, `b.pem` (certificate and key, as haproxy reads them).
fn certificates(dir: &Path) {
    let ca = pki::Ca::new("distgate bench CA");
    for (stem, identity, serial) in [("a", A_ID, 1), ("b", B_ID, 2)] {
        let files = ca.write(dir, stem, identity, serial);
        let both = std::fs::read_to_string(&files.cert).unwrap()
            + &std::fs::read_to_string(&files.key).unwrap();
        std::fs::write(dir.join(format!("{stem}.pem")), both).unwrap();
        std::fs::rename(&files.ca, dir.join("ca.crt")).unwrap();
    }
}

/// `federated`: gateways B then A; `servers` (sink, echo, hold) registered at B as the
/// nodes `sink`, `echo`, `hold`. Returns A's public ports for them.
pub fn start_federated(
    dir: &TempDir,
    servers: [u16; 3],
    procs: &mut Vec<Proc>,
    registrations: &mut Vec<TcpStream>,
) -> [u16; 3] {
    certificates(&dir.0);
    let [b_epmd, b0, b1, b2, federation, a_epmd, a0, a1, a2] = free_ports();
    let d = dir.0.display();
    // B: callers come in with the address A reports (loopback here), never trusted on
    // a federation link: the per-source limit must hold the 9,000 idle links.
    let b = format!(
        "[epmd]\nlisten = [\"127.0.0.1:{b_epmd}\"]\n\
         [dist]\nlisten = [\"127.0.0.1\"]\nports = [{b0}, {b1}, {b2}]\nmax_per_source = 10000\n\
         [federation]\nlisten = [\"127.0.0.1:{federation}\"]\n\
         cert = \"{d}/b.crt\"\nkey = \"{d}/b.key\"\nca = \"{d}/ca.crt\"\n\
         peers = [\"{A_ID}\"]\nmax_connections = 10000\n"
    );
    let mut proc = distgate_named(dir, "gateway-b", &b, proxy_uid());
    proc.wait_listening(b_epmd);
    procs.push(proc);
    for (name, port) in ["sink", "echo", "hold"].iter().zip(servers) {
        registrations.push(register(b_epmd, name, port));
    }
    let a = format!(
        "[epmd]\nlisten = [\"127.0.0.1:{a_epmd}\"]\n\
         [dist]\nlisten = [\"127.0.0.1\"]\nports = [{a0}, {a1}, {a2}]\n\
         [federation]\ncert = \"{d}/a.crt\"\nkey = \"{d}/a.key\"\nca = \"{d}/ca.crt\"\n\
         [[route]]\nnodes = \"*\"\nfederate = \"127.0.0.1:{federation}\"\nidentity = \"{B_ID}\"\n"
    );
    let mut proc = distgate_named(dir, "gateway-a", &a, proxy_uid());
    proc.wait_listening(a_epmd);
    procs.push(proc);
    negotiated(
        "federated",
        distgate_tls(&dir.0, federation).unwrap_or_else(|e| panic!("gateway B's TLS: {e}")),
    );
    // Each name is leased a port at A by asking for it (A asks B); ask again once all
    // three are, as in gateway+sidecar.
    let names = ["sink", "echo", "hold"];
    for name in names {
        crate::variants::port_please(a_epmd, name);
    }
    names.map(|name| crate::variants::port_please(a_epmd, name))
}

/// `haproxy-tls`: haproxy B (TLS in, plain to `servers`), then haproxy A (plain in,
/// TLS to B). Returns A's ports.
pub fn start_haproxy_tls(dir: &TempDir, servers: [u16; 3], procs: &mut Vec<Proc>) -> [u16; 3] {
    certificates(&dir.0);
    let [m0, m1, m2, l0, l1, l2] = free_ports();
    let d = dir.0.display();
    let head = |side: &str| {
        format!(
            "global\n    maxconn 9100\n    ssl-default-{side}-ciphersuites {CIPHER_SUITE}\n    \
             ssl-default-{side}-options ssl-min-ver TLSv1.3\n\
             defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1h\n    \
             timeout server 1h\n"
        )
    };
    let mut b = head("bind");
    for (i, (listen, server)) in [m0, m1, m2].into_iter().zip(servers).enumerate() {
        b += &format!(
            "listen b{i}\n    bind 127.0.0.1:{listen} ssl crt {d}/b.pem ca-file {d}/ca.crt \
             verify required curves X25519\n    server s 127.0.0.1:{server}\n"
        );
    }
    let mut a = head("server");
    for (i, (listen, server)) in [l0, l1, l2].into_iter().zip([m0, m1, m2]).enumerate() {
        a += &format!(
            "listen a{i}\n    bind 127.0.0.1:{listen}\n    server s 127.0.0.1:{server} ssl \
             crt {d}/a.pem ca-file {d}/ca.crt verify required no-ssl-reuse\n"
        );
    }
    for (name, config, ports) in [
        ("haproxy-b", b, [m0, m1, m2]),
        ("haproxy-a", a, [l0, l1, l2]),
    ] {
        let path = dir.0.join(format!("{name}.cfg"));
        std::fs::write(&path, config).unwrap();
        let haproxy = measure::find("haproxy").unwrap();
        let check = Command::new(&haproxy)
            .args(["-c", "-q", "-f", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "haproxy -c refused {}:\n{}{}",
            path.display(),
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let mut proc = Proc::spawn(crate::variants::as_user(proxy_uid(), &haproxy).args([
            "-db",
            "-f",
            path.to_str().unwrap(),
        ]));
        for port in ports {
            proc.wait_listening(port);
        }
        procs.push(proc);
    }
    negotiated("haproxy-tls", openssl_tls(&dir.0, m0));
    [l0, l1, l2]
}

fn negotiated(path: &str, what: String) {
    NEGOTIATED.lock().unwrap().insert(format!("{path}: {what}"));
}

/// What distgate's own client (gateway A's TLS configuration, from the same files)
/// negotiates with gateway B at `port`: a ping request over it.
fn distgate_tls(dir: &Path, port: u16) -> Result<String, String> {
    use distgate::config::FederationConfig;
    use distgate::federation::wire::Request;
    use distgate::federation::{Material, Paths};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = FederationConfig {
        cert: Some(dir.join("a.crt")),
        key: Some(dir.join("a.key")),
        ca: Some(dir.join("ca.crt")),
        ..Default::default()
    };
    let material = Material::load(&Paths::of(&config).unwrap()).map_err(|e| e.to_string())?;
    let connector =
        tokio_rustls::TlsConnector::from(material.client(B_ID).expect("a TLS 1.3 client config"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let sni = rustls::pki_types::ServerName::try_from("b.bench.invalid").unwrap();
        let mut tls = connector
            .connect(sni, tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(&Request::Ping.encode())
            .await
            .map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        let mut status = [0u8; 1];
        tls.read_exact(&mut status)
            .await
            .map_err(|e| e.to_string())?;
        if status[0] != 0 {
            return Err(format!("gateway B answered the ping {}", status[0]));
        }
        let (_, c) = tls.get_ref();
        let version = c
            .protocol_version()
            .map_or("?".into(), |v| format!("{v:?}"));
        let suite = c
            .negotiated_cipher_suite()
            .map_or("?".into(), |s| format!("{:?}", s.suite()));
        let group = c
            .negotiated_key_exchange_group()
            .map_or("?".into(), |g| format!("{:?}", g.name()));
        Ok(format!(
            "{version}, {suite}, key exchange {group} (distgate's client to gateway B)"
        ))
    })
}

/// What `openssl s_client` with A's certificate negotiates with haproxy B at `port`
/// (haproxy A is held to the same suite and group).
fn openssl_tls(dir: &Path, port: u16) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-brief", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(dir.join("a.crt"))
        .arg("-key")
        .arg(dir.join("a.key"))
        .arg("-CAfile")
        .arg(dir.join("ca.crt"))
        .stdin(std::process::Stdio::null())
        .output();
    let Ok(out) = out else {
        return "openssl not installed: not checked".into();
    };
    let text = String::from_utf8_lossy(&out.stderr);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map_or("?".to_owned(), |v| v.trim().to_owned())
    };
    format!(
        "{}, {}, key exchange {} (openssl s_client to haproxy B)",
        field("Protocol version:"),
        field("Ciphersuite:"),
        field("Server Temp Key:")
    )
}
