//! Public dist ports: forwarding to the registered node's real port, half-close in
//! each direction, resets, integrity of large transfers, and ports no node holds.
//! The "node" here is a plain TCP listener registered over EPMD.

use crate::support;
use std::net::SocketAddr;

use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A registered fake node: its listener and its registration connection.
struct FakeNode {
    listener: TcpListener,
    _registration: TcpStream,
}

async fn fake_node(dg: &InProcess, name: &str) -> FakeNode {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (registration, reply) = register(dg.epmd, &alive2(name, port)).await;
    creation_of(&reply);
    FakeNode {
        listener,
        _registration: registration,
    }
}

/// An authenticated link through a public port to the node: (client, node's end).
async fn connect_through(public: SocketAddr, node: &FakeNode) -> (TcpStream, TcpStream) {
    support::dist::link(public, &node.listener, "peer@127.0.0.1").await
}

#[tokio::test]
async fn a_first_frame_cut_short_is_forwarded_once_complete() {
    let dg = InProcess::start(Options::default()).await;
    let node = fake_node(&dg, "app").await;
    let mut client = TcpStream::connect(dg.public_addr(0)).await.unwrap();
    // A send_name split in two writes: nothing is lost or reordered.
    let frame = distgate::handshake::encode_send_name("a@h", 0, 0);
    client.write_all(&frame[..7]).await.unwrap();
    tokio::task::yield_now().await;
    client.write_all(&frame[7..]).await.unwrap();
    let (mut upstream, _) = tokio::time::timeout(DEADLINE, node.listener.accept())
        .await
        .expect("nothing forwarded to the node")
        .unwrap();
    let mut got = vec![0u8; frame.len()];
    upstream.read_exact(&mut got).await.unwrap();
    assert_eq!(got, frame);
}

#[tokio::test]
async fn a_port_no_node_holds_closes_at_once() {
    let dg = InProcess::start(Options::default()).await;
    let mut client = TcpStream::connect(dg.public_addr(0)).await.unwrap();
    client.write_all(b"\x00\x1aN").await.ok();
    assert_eq!(read_to_close(&mut client).await, b"");
}

#[tokio::test]
async fn bytes_flow_both_ways_to_the_real_port() {
    let dg = InProcess::start(Options::default()).await;
    let node = fake_node(&dg, "app").await;
    let (mut client, mut upstream) = connect_through(dg.public_addr(0), &node).await;
    client.write_all(b"send_name").await.unwrap();
    let mut buf = [0u8; 9];
    upstream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"send_name");
    upstream.write_all(b"challenge").await.unwrap();
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"challenge");
}

#[tokio::test]
async fn client_half_close_reaches_the_node_and_replies_still_flow() {
    let dg = InProcess::start(Options::default()).await;
    let node = fake_node(&dg, "app").await;
    let (mut client, mut upstream) = connect_through(dg.public_addr(0), &node).await;
    client.write_all(b"last words").await.unwrap();
    client.shutdown().await.unwrap();
    assert_eq!(read_to_close(&mut upstream).await, b"last words");
    upstream.write_all(b"still talking").await.unwrap();
    upstream.shutdown().await.unwrap();
    assert_eq!(read_to_close(&mut client).await, b"still talking");
}

#[tokio::test]
async fn node_half_close_reaches_the_client_and_requests_still_flow() {
    let dg = InProcess::start(Options::default()).await;
    let node = fake_node(&dg, "app").await;
    let (mut client, mut upstream) = connect_through(dg.public_addr(0), &node).await;
    upstream.write_all(b"bye").await.unwrap();
    upstream.shutdown().await.unwrap();
    assert_eq!(read_to_close(&mut client).await, b"bye");
    client.write_all(b"but wait").await.unwrap();
    client.shutdown().await.unwrap();
    assert_eq!(read_to_close(&mut upstream).await, b"but wait");
}

#[tokio::test]
async fn a_reset_by_the_node_closes_the_client() {
    let dg = InProcess::start(Options::default()).await;
    let node = fake_node(&dg, "app").await;
    let (mut client, upstream) = connect_through(dg.public_addr(0), &node).await;
    upstream.set_zero_linger().unwrap();
    drop(upstream);
    read_to_close(&mut client).await;
}

#[tokio::test]
async fn a_vanished_client_closes_the_node_side() {
    let dg = InProcess::start(Options::default()).await;
    let node = fake_node(&dg, "app").await;
    let (client, mut upstream) = connect_through(dg.public_addr(0), &node).await;
    client.set_zero_linger().unwrap();
    drop(client);
    read_to_close(&mut upstream).await;
}

#[tokio::test]
async fn a_node_that_stopped_listening_closes_the_client() {
    let dg = InProcess::start(Options::default()).await;
    let node = fake_node(&dg, "app").await;
    let FakeNode {
        listener,
        _registration,
    } = node;
    drop(listener);
    let mut client = TcpStream::connect(dg.public_addr(0)).await.unwrap();
    let send_name = distgate::handshake::encode_send_name("a@h", 0, 0);
    client.write_all(&send_name).await.unwrap();
    assert_eq!(read_to_close(&mut client).await, b"");
}

/// A deterministic byte stream (xorshift) so the receiver can check every byte.
struct Pattern(u64);

impl Pattern {
    fn fill(&mut self, buf: &mut [u8]) {
        for byte in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *byte = self.0 as u8;
        }
    }
}

async fn send_pattern(mut w: impl AsyncWriteExt + Unpin, seed: u64, total: usize) {
    let mut pattern = Pattern(seed);
    let mut buf = vec![0u8; 61_441];
    let mut sent = 0;
    while sent < total {
        let n = buf.len().min(total - sent);
        pattern.fill(&mut buf[..n]);
        w.write_all(&buf[..n]).await.unwrap();
        sent += n;
    }
    w.shutdown().await.unwrap();
}

async fn check_pattern(mut r: impl AsyncReadExt + Unpin, seed: u64) -> usize {
    let mut pattern = Pattern(seed);
    let mut buf = vec![0u8; 65_536];
    let mut want = vec![0u8; 65_536];
    let mut got = 0;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            return got;
        }
        pattern.fill(&mut want[..n]);
        assert!(buf[..n] == want[..n], "corrupted bytes after offset {got}");
        got += n;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_each_way_arrive_intact() {
    const SIZE: usize = 64 << 20;
    let dg = InProcess::start(Options::default()).await;
    let node = fake_node(&dg, "bulk").await;
    let (client, upstream) = connect_through(dg.public_addr(0), &node).await;
    let (client_r, client_w) = client.into_split();
    let (upstream_r, upstream_w) = upstream.into_split();
    let up = tokio::spawn(send_pattern(client_w, 1, SIZE));
    let down = tokio::spawn(send_pattern(upstream_w, 2, SIZE));
    let at_node = tokio::spawn(check_pattern(upstream_r, 1));
    let at_client = tokio::spawn(check_pattern(client_r, 2));
    up.await.unwrap();
    down.await.unwrap();
    assert_eq!(at_node.await.unwrap(), SIZE);
    assert_eq!(at_client.await.unwrap(), SIZE);
}

#[tokio::test]
async fn a_node_back_on_a_new_port_gets_new_connections_while_old_ones_drain() {
    let dg = InProcess::start(Options::default()).await;
    let old = fake_node(&dg, "app").await;
    let (mut old_client, mut old_upstream) = connect_through(dg.public_addr(0), &old).await;
    let FakeNode {
        listener: old_listener,
        _registration,
    } = old;
    drop(_registration);
    eventually("app to leave", || async {
        port_please(dg.epmd, "app").await.is_none().then_some(())
    })
    .await;
    let new = fake_node(&dg, "app").await;
    let (mut new_client, mut new_upstream) = connect_through(dg.public_addr(0), &new).await;
    new_client.write_all(b"new").await.unwrap();
    let mut buf = [0u8; 3];
    new_upstream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"new");
    // The stream opened before the move still flows.
    old_client.write_all(b"old").await.unwrap();
    old_upstream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"old");
    drop(old_listener);
}

#[tokio::test]
async fn each_public_port_reaches_its_own_node() {
    let dg = InProcess::start(Options {
        pool: 3,
        ..Options::default()
    })
    .await;
    let mut nodes = vec![];
    for name in ["one", "two", "three"] {
        nodes.push(fake_node(&dg, name).await);
    }
    for (i, node) in nodes.iter().enumerate() {
        let (mut client, mut upstream) = connect_through(dg.public_addr(i), node).await;
        // Not a dist frame (its length field is 0): forwarded at once.
        client.write_all(&[0, 0, i as u8]).await.unwrap();
        let mut bytes = [0u8; 3];
        upstream.read_exact(&mut bytes).await.unwrap();
        assert_eq!(bytes, [0, 0, i as u8]);
    }
}
