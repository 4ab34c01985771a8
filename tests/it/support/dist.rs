//! Playing both ends of a dist handshake through distgate: the caller connects to a
//! public port, the fake node accepts, and the frames an OTP node sends pass until the
//! node's challenge ack, after which distgate forwards anything.

use std::net::SocketAddr;

use distgate::handshake::frames::{ack, challenge, reply, status_ok};
use distgate::handshake::{OTP25_FLAGS, encode_send_name};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::DEADLINE;

/// Reads exactly `expected.len()` bytes and checks they are `expected`.
async fn expect(stream: &mut TcpStream, expected: &[u8], what: &str) {
    let mut got = vec![0u8; expected.len()];
    tokio::time::timeout(DEADLINE, stream.read_exact(&mut got))
        .await
        .unwrap_or_else(|_| panic!("{what} did not arrive"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(got, expected, "{what}");
}

/// The caller's half of a handshake on `caller`, connected to a public port.
pub async fn as_caller(caller: &mut TcpStream, name: &str) {
    caller
        .write_all(&encode_send_name(name, OTP25_FLAGS, 1))
        .await
        .unwrap();
    let mut status_and_challenge = status_ok();
    status_and_challenge.extend(challenge("node@127.0.0.1"));
    expect(caller, &status_and_challenge, "status and challenge").await;
    caller.write_all(&reply()).await.unwrap();
    expect(caller, &ack(), "challenge ack").await;
}

/// The node's half of a handshake on `upstream`, a connection distgate forwarded.
pub async fn as_node(upstream: &mut TcpStream) {
    let mut length = [0u8; 2];
    tokio::time::timeout(DEADLINE, upstream.read_exact(&mut length))
        .await
        .expect("no send_name")
        .unwrap();
    let mut send_name = vec![0u8; usize::from(u16::from_be_bytes(length))];
    upstream.read_exact(&mut send_name).await.unwrap();
    let mut status_and_challenge = status_ok();
    status_and_challenge.extend(challenge("node@127.0.0.1"));
    upstream.write_all(&status_and_challenge).await.unwrap();
    expect(upstream, &reply(), "challenge reply").await;
    upstream.write_all(&ack()).await.unwrap();
}

/// An authenticated link from caller `name` through `public` to `node`:
/// (the caller's end, the node's end).
pub async fn link(public: SocketAddr, node: &TcpListener, name: &str) -> (TcpStream, TcpStream) {
    let mut caller = TcpStream::connect(public).await.unwrap();
    let name = name.to_owned();
    let calling = tokio::spawn(async move {
        as_caller(&mut caller, &name).await;
        caller
    });
    let (mut upstream, _) = tokio::time::timeout(DEADLINE, node.accept())
        .await
        .expect("nothing forwarded to the node")
        .unwrap();
    as_node(&mut upstream).await;
    (calling.await.unwrap(), upstream)
}

/// A whole TLS 1.2+ ClientHello record with no extensions.
pub fn client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7u8; 32]);
    body.extend_from_slice(&[0, 0x00, 0x02, 0x13, 0x01, 0x01, 0x00, 0x00, 0x00]);
    let mut handshake = vec![0x01];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}
