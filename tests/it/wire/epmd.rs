//! Byte-level EPMD conversations with distgate where it differs from or goes beyond
//! OTP's epmd: public ports in PORT2_RESP and NAMES, pins, creations, timeouts, and
//! clients that never read.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::*;
use distgate::epmd::NodeInfo;
use distgate::epmd::message::{Alive2Req, encode_alive2_req, frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32
}

#[tokio::test]
async fn creation_is_time_based_and_grows_with_each_registration() {
    let dg = InProcess::start(Options::default()).await;
    let before = now();
    let (first, reply) = register(dg.epmd, &alive2("app", 40001)).await;
    let c1 = creation_of(&reply);
    assert!(c1 > before && c1 <= now() + 1, "{c1} not now+1 ({before})");
    drop(first);
    let mut last = c1;
    for _ in 0..3 {
        eventually("app to leave", || async {
            port_please(dg.epmd, "app").await.is_none().then_some(())
        })
        .await;
        let (again, reply) = register(dg.epmd, &alive2("app", 40002)).await;
        let creation = creation_of(&reply);
        assert!(creation > last, "restart creation {creation} after {last}");
        last = creation;
        drop(again);
    }
}

#[tokio::test]
async fn old_nodes_get_a_small_creation() {
    let dg = InProcess::start(Options::default()).await;
    let v5 = Alive2Req {
        info: NodeInfo {
            highest_version: 5,
            ..NodeInfo::OTP23
        },
        ..alive2("old", 40001)
    };
    let (_conn, reply) = register(dg.epmd, &v5).await;
    assert_eq!(&reply[..3], &[b'y', 0, 0]);
    assert!((1..=3).contains(&reply[3]), "{reply:?}");
}

#[tokio::test]
async fn port_please_answers_public_ports_in_registration_order() {
    let dg = InProcess::start(Options {
        pool: 2,
        ..Options::default()
    })
    .await;
    let (_a, _) = register(dg.epmd, &alive2("a", 40001)).await;
    let (_b, _) = register(dg.epmd, &alive2("b", 40002)).await;
    let (_c, _) = register(dg.epmd, &alive2("c", 40003)).await;
    assert_eq!(port_please(dg.epmd, "a").await, Some(dg.public_ports[0]));
    assert_eq!(port_please(dg.epmd, "b").await, Some(dg.public_ports[1]));
    // The pool is used up: c is answered with its real port.
    assert_eq!(port_please(dg.epmd, "c").await, Some(40003));
    let (header, lines) = names(dg.epmd).await;
    assert_eq!(header, dg.epmd.port(), "NAMES header is the port dialled");
    assert_eq!(
        lines,
        [
            "name c at port 40003".to_owned(),
            format!("name b at port {}", dg.public_ports[1]),
            format!("name a at port {}", dg.public_ports[0]),
        ]
    );
}

#[tokio::test]
async fn public_port_is_reused_after_its_node_leaves() {
    let dg = InProcess::start(Options::default()).await;
    let (a, _) = register(dg.epmd, &alive2("a", 40001)).await;
    let (_b, _) = register(dg.epmd, &alive2("b", 40002)).await;
    assert_eq!(port_please(dg.epmd, "b").await, Some(40002));
    drop(a);
    eventually("a to leave", || async {
        port_please(dg.epmd, "a").await.is_none().then_some(())
    })
    .await;
    let (_c, _) = register(dg.epmd, &alive2("c", 40003)).await;
    assert_eq!(port_please(dg.epmd, "c").await, Some(dg.public_ports[0]));
}

#[tokio::test]
async fn pinned_names_get_their_port_whatever_the_order() {
    let dg = InProcess::start(Options {
        pool: 2,
        pins: vec![("db", 0)],
        ..Options::default()
    })
    .await;
    let (_a, _) = register(dg.epmd, &alive2("a", 40001)).await;
    let (_b, _) = register(dg.epmd, &alive2("b", 40002)).await;
    let (_db, _) = register(dg.epmd, &alive2("db", 40003)).await;
    assert_eq!(port_please(dg.epmd, "a").await, Some(dg.public_ports[1]));
    assert_eq!(port_please(dg.epmd, "b").await, Some(40002));
    assert_eq!(port_please(dg.epmd, "db").await, Some(dg.public_ports[0]));
}

#[tokio::test]
async fn registrations_outlive_packet_timeout() {
    let mut options = Options::default();
    options.config.epmd.packet_timeout = Duration::from_millis(100);
    let dg = InProcess::start(options).await;
    let (mut conn, _) = register(dg.epmd, &alive2("stays", 40001)).await;
    // The subject is time passing: three idle timeouts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut byte = [0u8; 1];
    assert!(
        matches!(conn.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "registration socket was closed"
    );
    assert_eq!(
        port_please(dg.epmd, "stays").await,
        Some(dg.public_ports[0])
    );
    conn.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_names_client_that_never_reads_blocks_nobody() {
    const NODES: u16 = 400;
    let mut options = Options::default();
    options.config.epmd.packet_timeout = Duration::from_secs(1);
    let dg = InProcess::start(options).await;
    // 400 nodes with the longest names: a NAMES reply of 400 KB, more than the socket
    // buffers hold.
    let mut nodes = vec![];
    for i in 0..NODES {
        let name = format!("{i:04}{}", "😀".repeat(251));
        let (conn, reply) = register(dg.epmd, &alive2(&name, 40000 + i)).await;
        creation_of(&reply);
        nodes.push(conn);
    }
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stuck = socket.connect(dg.epmd).await.unwrap();
    stuck.write_all(&frame(b"n")).await.unwrap();

    // Everyone else is served in full meanwhile.
    let (_, lines) = names(dg.epmd).await;
    assert_eq!(lines.len(), usize::from(NODES));
    let (_late, reply) = register(dg.epmd, &alive2("late", 41000)).await;
    creation_of(&reply);
    assert_eq!(port_please(dg.epmd, "late").await, Some(41000));

    // The stuck reader is cut off once the reply has not been taken for packet_timeout.
    let mut taken = 0;
    let mut buf = vec![0u8; 1024];
    let cut = tokio::time::timeout(DEADLINE, async {
        // Wait for the cut first, then drain what was in flight.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        loop {
            match stuck.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => taken += n,
            }
        }
    })
    .await;
    assert!(cut.is_ok(), "the stuck NAMES connection was never closed");
    assert!(
        taken < 200_000,
        "the whole reply ({taken} bytes) went through"
    );
}

#[tokio::test]
async fn partial_request_split_at_every_byte_is_answered() {
    let dg = InProcess::start(Options::default()).await;
    let (_conn, _) = register(dg.epmd, &alive2("split", 40001)).await;
    let wire = frame(b"zsplit");
    for cut in 1..wire.len() {
        let mut stream = TcpStream::connect(dg.epmd).await.unwrap();
        stream.set_nodelay(true).unwrap();
        stream.write_all(&wire[..cut]).await.unwrap();
        tokio::task::yield_now().await;
        stream.write_all(&wire[cut..]).await.unwrap();
        let reply = read_to_close(&mut stream).await;
        assert_eq!(
            &reply[..4],
            &[
                b'w',
                0,
                (dg.public_ports[0] >> 8) as u8,
                dg.public_ports[0] as u8
            ]
        );
    }
}

#[tokio::test]
async fn garbage_on_one_connection_leaves_registrations_alone() {
    let dg = InProcess::start(Options::default()).await;
    let (_conn, _) = register(dg.epmd, &alive2("steady", 40001)).await;
    for junk in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0, 0],
        &[0xff, 0xff, 0xff],
        &encode_alive2_req(&alive2("steady", 40002)),
    ] {
        let mut stream = TcpStream::connect(dg.epmd).await.unwrap();
        stream.write_all(junk).await.unwrap();
        let _ = read_reply(&mut stream).await;
    }
    assert_eq!(
        port_please(dg.epmd, "steady").await,
        Some(dg.public_ports[0])
    );
    assert_eq!(dg.registry.len(), 1);
}

#[tokio::test]
async fn names_go_only_to_the_listed_networks() {
    use distgate::config::Peers;
    let only = |cidr: &str| Peers::Only {
        local: false,
        nets: vec![cidr.parse().unwrap()],
    };
    let mut options = Options::default();
    options.config.epmd.names_from = only("192.0.2.0/24");
    let elsewhere = InProcess::start(options).await;
    let (_conn, _) = register(elsewhere.epmd, &alive2("listed", 40001)).await;
    // Not in the list (and "local" not listed): closed without a reply.
    assert_eq!(request(elsewhere.epmd, &frame(b"n")).await, b"");
    // PORT_PLEASE2 is for everyone regardless.
    assert_eq!(
        port_please(elsewhere.epmd, "listed").await,
        Some(elsewhere.public_ports[0])
    );

    let mut options = Options::default();
    options.config.epmd.names_from = only("127.0.0.0/8");
    let here = InProcess::start(options).await;
    let (_conn, _) = register(here.epmd, &alive2("listed", 40001)).await;
    assert_eq!(names(here.epmd).await.1.len(), 1);
}

/// A connection to `addr` from the loopback address `from` (a mesh's sidecar
/// connects to the app from 127.0.0.6, for instance).
async fn connect_from(from: &str, addr: std::net::SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// ALIVE2 from `from`: the reply (empty when refused: closed without one) and the
/// connection, which holds the registration.
async fn register_from(from: &str, addr: std::net::SocketAddr, name: &str) -> (Vec<u8>, TcpStream) {
    let mut stream = connect_from(from, addr).await;
    stream
        .write_all(&encode_alive2_req(&alive2(name, 40001)))
        .await
        .unwrap();
    let mut reply = vec![0u8; 6];
    match tokio::time::timeout(DEADLINE, stream.read_exact(&mut reply)).await {
        Ok(Ok(_)) => (reply, stream),
        Ok(Err(_)) => (vec![], stream),
        Err(_) => panic!("neither a reply nor a close"),
    }
}

#[tokio::test]
async fn register_from_narrows_who_counts_as_the_pods_own() {
    // By default any loopback address is local, as in epmd: a mesh's 127.0.0.6 too.
    let open = InProcess::start(Options::default()).await;
    let (reply, _mesh) = register_from("127.0.0.6", open.epmd, "mesh").await;
    assert_eq!(&reply[..2], b"v\0");

    let mut options = Options::default();
    options.config.epmd.register_from = distgate::config::Peers::Only {
        local: false,
        nets: vec!["127.0.0.1/32".parse().unwrap()],
    };
    options.config.epmd.max_connections = std::num::NonZeroUsize::new(1).unwrap();
    let narrow = InProcess::start(options).await;
    let (reply, _) = register_from("127.0.0.6", narrow.epmd, "mesh").await;
    assert_eq!(reply, b"", "a registration from 127.0.0.6 was answered");
    assert!(narrow.registry.get("mesh").is_none());
    let (reply, _app) = register_from("127.0.0.1", narrow.epmd, "app").await;
    assert_eq!(&reply[..2], b"v\0");
    // 127.0.0.6 is another host now: it falls under max_connections (1). One silent
    // connection holds the place; the next from there is closed at accept, while the
    // pod's own (127.0.0.1) still get in.
    let _held = connect_from("127.0.0.6", narrow.epmd).await;
    eventually("the silent connection to take the place", || async {
        let mut probe = connect_from("127.0.0.6", narrow.epmd).await;
        probe.write_all(&frame(b"zapp")).await.unwrap();
        let mut reply = vec![];
        let _ = tokio::time::timeout(DEADLINE, probe.read_to_end(&mut reply)).await;
        reply.is_empty().then_some(())
    })
    .await;
    assert_eq!(
        port_please(narrow.epmd, "app").await,
        Some(narrow.public_ports[0])
    );
}
