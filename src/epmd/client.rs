//! The client side of EPMD, for the probe and the gateway: one request on a new
//! connection, the whole reply up to the server's close, within a time limit.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::message::{self, Port2};

/// The longest reply read: a NAMES list of some ten thousand nodes. A server that
/// sends more is not an EPMD.
pub const MAX_REPLY: u64 = 1 << 20;

/// Sends `wire` (a whole request frame) to the EPMD at `addr` and reads the reply until
/// the server closes. Errors name the address.
pub async fn request(addr: SocketAddr, wire: &[u8], limit: Duration) -> Result<Vec<u8>, String> {
    let exchange = async {
        let stream = TcpStream::connect(addr).await?;
        let mut stream = stream.take(MAX_REPLY + 1);
        stream.get_mut().write_all(wire).await?;
        let mut reply = vec![];
        stream.read_to_end(&mut reply).await?;
        Ok::<_, std::io::Error>(reply)
    };
    match timeout(limit, exchange).await {
        Ok(Ok(reply)) if reply.len() as u64 > MAX_REPLY => {
            Err(format!("{addr}: reply longer than {MAX_REPLY} bytes"))
        }
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(e)) => Err(format!("{addr}: {e}")),
        Err(_) => Err(format!("{addr}: no answer in {limit:?}")),
    }
}

/// NAMES: the names registered at the EPMD at `addr` and the port each is given.
pub async fn names(addr: SocketAddr, limit: Duration) -> Result<Vec<(String, u16)>, String> {
    let reply = request(addr, &message::frame(&[message::NAMES_REQ]), limit).await?;
    if reply.is_empty() {
        return Err(format!(
            "{addr} closed without a reply (NAMES not allowed?)"
        ));
    }
    message::decode_names_resp(&reply).map_err(|e| format!("{addr}: {e}"))
}

/// PORT_PLEASE2 for `name`: `Ok(None)` when the EPMD does not know it.
pub async fn port_please(
    addr: SocketAddr,
    name: &str,
    limit: Duration,
) -> Result<Option<Port2>, String> {
    let mut payload = vec![message::PORT_PLEASE2_REQ];
    payload.extend_from_slice(name.as_bytes());
    let reply = request(addr, &message::frame(&payload), limit).await?;
    if reply.is_empty() {
        return Err(format!("{addr} closed without a reply"));
    }
    message::decode_port2_resp(&reply).map_err(|e| format!("{addr}: {e}"))
}
