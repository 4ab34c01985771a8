//! The client side of EPMD, for the probe and the gateway: one request on a new
//! connection, the whole reply up to the server's close, within a time limit.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::message::{self, Port2Resp, ReplyError};

/// The longest reply read: a NAMES list of some ten thousand nodes. A server that
/// sends more is not an EPMD.
pub const MAX_REPLY: u64 = 1 << 20;

/// Why an EPMD server gave no usable reply. Every variant names the address.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting, writing or reading failed.
    #[error("{addr}: {source}")]
    Io {
        /// The server asked.
        addr: SocketAddr,
        /// What the socket said.
        #[source]
        source: std::io::Error,
    },
    /// The whole exchange did not end within the limit.
    #[error("{addr}: no answer in {limit:?}")]
    Timeout {
        /// The server asked.
        addr: SocketAddr,
        /// The limit.
        limit: Duration,
    },
    /// More than [`MAX_REPLY`] bytes.
    #[error("{addr}: reply longer than {MAX_REPLY} bytes")]
    TooLong {
        /// The server asked.
        addr: SocketAddr,
    },
    /// The server closed without a byte (epmd does so for a request it refuses).
    #[error("{addr} closed without a reply")]
    NoReply {
        /// The server asked.
        addr: SocketAddr,
    },
    /// The bytes are not the reply asked for.
    #[error("{addr}: {source}")]
    Reply {
        /// The server asked.
        addr: SocketAddr,
        /// What is wrong with the reply.
        #[source]
        source: ReplyError,
    },
}

impl ClientError {
    /// A bounded label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ClientError::Io { .. } => "io_error",
            ClientError::Timeout { .. } => "timeout",
            ClientError::TooLong { .. } => "too_long",
            ClientError::NoReply { .. } => "no_reply",
            ClientError::Reply { .. } => "malformed",
        }
    }
}

/// Sends `wire` (a whole request frame) to the EPMD at `addr` and reads the reply until
/// the server closes.
pub async fn request(
    addr: SocketAddr,
    wire: &[u8],
    limit: Duration,
) -> Result<Vec<u8>, ClientError> {
    let exchange = async {
        let stream = TcpStream::connect(addr).await?;
        let mut stream = stream.take(MAX_REPLY + 1);
        stream.get_mut().write_all(wire).await?;
        let mut reply = vec![];
        stream.read_to_end(&mut reply).await?;
        Ok::<_, std::io::Error>(reply)
    };
    match timeout(limit, exchange).await {
        Ok(Ok(reply)) if reply.len() as u64 > MAX_REPLY => Err(ClientError::TooLong { addr }),
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(source)) => Err(ClientError::Io { addr, source }),
        Err(_) => Err(ClientError::Timeout { addr, limit }),
    }
}

/// [`request`] whose reply must have at least one byte.
async fn nonempty(addr: SocketAddr, wire: &[u8], limit: Duration) -> Result<Vec<u8>, ClientError> {
    let reply = request(addr, wire, limit).await?;
    if reply.is_empty() {
        return Err(ClientError::NoReply { addr });
    }
    Ok(reply)
}

/// NAMES: the names registered at the EPMD at `addr` and the port each is given. A
/// server that does not list its names to us closes without a reply (`NoReply`).
pub async fn names(addr: SocketAddr, limit: Duration) -> Result<Vec<(String, u16)>, ClientError> {
    let reply = nonempty(addr, &message::frame(&[message::NAMES_REQ]), limit).await?;
    message::decode_names_resp(&reply).map_err(|source| ClientError::Reply { addr, source })
}

/// PORT_PLEASE2 for `name`: `Ok(None)` when the EPMD does not know it.
pub async fn port_please(
    addr: SocketAddr,
    name: &str,
    limit: Duration,
) -> Result<Option<Port2Resp>, ClientError> {
    let mut payload = vec![message::PORT_PLEASE2_REQ];
    payload.extend_from_slice(name.as_bytes());
    let reply = nonempty(addr, &message::frame(&payload), limit).await?;
    message::decode_port2_resp(&reply).map_err(|source| ClientError::Reply { addr, source })
}
