//! The admin port under slow clients: half-sent requests neither hold it shut (at the
//! connection limit a new connection evicts the oldest one still sending its request)
//! nor outlive `[admin] header_timeout`, so the kubelet's `/livez` is always answered.

use crate::support;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use crate::support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_neither_hold_the_admin_port_nor_outlive_the_header_timeout() {
    let header_timeout = Duration::from_millis(1500);
    let mut options = Options {
        admin: true,
        ..Options::default()
    };
    options.config.admin.header_timeout = header_timeout;
    options.config.admin.max_connections = NonZeroUsize::new(32).unwrap();
    let dg = InProcess::start(options).await;
    let admin = dg.admin.unwrap();

    // 500 clients (ADMIN_SLOW_CLIENTS by hand) send half a request head each and wait.
    let clients: usize = std::env::var("ADMIN_SLOW_CLIENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(500);
    support::netns::raise_descriptor_limit();
    let mut slow = vec![];
    for _ in 0..clients {
        let mut stream = TcpStream::connect(admin).await.unwrap();
        stream
            .write_all(b"GET /livez HTTP/1.1\r\nHost: distgate\r\n")
            .await
            .unwrap();
        slow.push(stream);
    }
    let opened = Instant::now();

    // Meanwhile /livez, asked as a probe asks it, answers at once every time.
    for _ in 0..20 {
        let asked = Instant::now();
        let (status, body) =
            tokio::time::timeout(Duration::from_secs(1), http_get(admin, "/livez"))
                .await
                .expect("/livez took over 1 s with slow clients holding the port");
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        assert!(asked.elapsed() < Duration::from_secs(1));
    }

    // Every slow client is closed: evicted, or cut at the header timeout.
    for stream in &mut slow {
        let bytes = read_to_close(stream).await;
        assert!(
            bytes.is_empty() || String::from_utf8_lossy(&bytes).starts_with("HTTP/1.1 408"),
            "a slow client was answered {:?}",
            String::from_utf8_lossy(&bytes)
        );
    }
    let all_closed = opened.elapsed();
    assert!(
        all_closed < header_timeout + Duration::from_secs(1),
        "slow clients still open {all_closed:?} after the last connected (header timeout {header_timeout:?})"
    );
    eprintln!("{clients} slow clients all closed {all_closed:?} after the last connected");
}
