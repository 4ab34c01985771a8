//! The binary serving federation: its listener's address logged, `[federation] peers`
//! put in force by a reload (SIGHUP) for the next peer gateway, and a reload naming
//! certificate files that do not load refused, the old material serving on.

use std::time::Duration;

use crate::support::binary::{Running, listening};
use crate::support::pki::Ca;
use crate::support::*;
use distgate::federation::wire::Reply;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const A_ID: &str = "spiffe://a.test/ns/distgate/sa/gateway";
const B_ID: &str = "spiffe://b.test/ns/distgate/sa/gateway";

fn federation(dir: &TempDir, peers: &str, cert: &str) -> String {
    format!(
        "[federation]\nlisten = [\"127.0.0.1:0\"]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\npeers = [\"{peers}\"]\n",
        dir.join(cert).display(),
        dir.join("b.key").display(),
        dir.join("b-ca.crt").display(),
    )
}

/// A ping to `at` as gateway A: the status byte B answers.
async fn ping(dir: &TempDir, at: std::net::SocketAddr) -> u8 {
    let material = distgate::federation::Material::load(&distgate::federation::Paths {
        cert: dir.join("a.crt"),
        key: dir.join("a.key"),
        ca: dir.join("a-ca.crt"),
    })
    .unwrap();
    let connector = tokio_rustls::TlsConnector::from(material.client(B_ID).unwrap());
    let tcp = TcpStream::connect(at).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("b.test").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    // B's verdict on A's certificate (03) may come before the request is read.
    let _ = tls.write_all(b"DGF\x01\x03").await;
    let _ = tls.flush().await;
    let mut status = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut status))
        .await
        .unwrap()
        .unwrap();
    status[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_reload_for_the_next_gateway_and_broken_files_are_refused() {
    let dir = TempDir::new("distgate-federation-reload-");
    let ca = Ca::new("reload CA");
    let root = dir.join("");
    ca.write(&root, "a", A_ID, 1);
    ca.write(&root, "b", B_ID, 2);
    let mut running = Running::start(&federation(&dir, "spiffe://c.test/*", "b.crt"));
    let at = listening(&mut running.out, "\"federation listening");
    let not_allowed = Reply::NotAllowed.encode()[0];
    assert_eq!(ping(&dir, at).await, not_allowed, "A is not in peers yet");

    let more = federation(&dir, "spiffe://a.test/*", "b.crt");
    running.rewrite("", &running.public.port().to_string(), "", &more);
    running.signal("HUP");
    eventually("A admitted after the reload", || async {
        (ping(&dir, at).await == 0).then_some(())
    })
    .await;

    // A reload naming a certificate that is not there changes nothing.
    let more = federation(&dir, "spiffe://c.test/*", "missing.crt");
    running.rewrite("", &running.public.port().to_string(), "", &more);
    running.signal("HUP");
    let refused = "configuration not reloaded, the running one stays";
    eventually_blocking(DEADLINE, "the reload to be refused", || {
        running.out.text().contains(refused).then_some(())
    });
    let text = running.out.text();
    let line = text.lines().find(|l| l.contains(refused)).unwrap();
    assert!(line.contains("missing.crt"), "the path is named: {line}");
    assert_eq!(
        ping(&dir, at).await,
        0,
        "peers as before the refused reload"
    );
}
