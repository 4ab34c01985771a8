//! What two gateways say inside their TLS stream before any dist byte: one request
//! (a lookup, a link, or a ping) and one reply. Pure: bytes in, values out. The
//! format is in docs/protocol.md ("Federation").
//!
//! ```text
//! request:  "DGF" 01 | kind (1 lookup, 2 connect, 3 ping)
//!           | lookup, connect: name length (1-255) | name
//!           | connect: family (4 | 6) | address (4 | 16) | port (u16)   the original caller
//! reply:    status (0 ok, 1 unknown, 2 refused, 3 not allowed: the gateway's identity)
//!           | lookup ok: node type | protocol | highest (u16) | lowest (u16)
//!                        | extra length (u16, at most MAX_EXTRA) | extra
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::epmd::NodeInfo;

/// The request's first four bytes: the magic and version 1.
pub const MAGIC: [u8; 4] = *b"DGF\x01";
/// The longest request: magic, kind, name length, name, family, address, port.
pub const MAX_REQUEST: usize = 4 + 1 + 1 + 255 + 1 + 16 + 2;
/// The longest `extra` a lookup's answer carries (epmd keeps up to 1 KiB or so).
pub const MAX_EXTRA: usize = 1024;
/// The longest reply.
pub const MAX_REPLY: usize = 1 + 1 + 1 + 2 + 2 + 2 + MAX_EXTRA;

/// What a peer gateway asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Does `name` live behind you? (PORT_PLEASE2 across.)
    Lookup(String),
    /// Carry a dist connection to `name`, from `caller` (as the asking gateway saw it).
    Connect {
        /// The node's name part.
        name: String,
        /// The original caller's address.
        caller: SocketAddr,
    },
    /// Are you there (and do you trust me)?
    Ping,
}

/// A request that cannot be one; the `protocol` handshake result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Not `DGF` and version 1.
    #[error("not a distgate federation request (or another version)")]
    Magic,
    /// An unknown kind.
    #[error("unknown request kind {0}")]
    Kind(u8),
    /// A name that is empty or no node name part.
    #[error("not a node name")]
    Name,
    /// An address family other than 4 and 6.
    #[error("unknown address family {0}")]
    Family(u8),
    /// An unknown reply status, or a reply longer than it says.
    #[error("not a reply")]
    Reply,
}

impl Request {
    /// The bytes of the request.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        match self {
            Request::Lookup(name) => {
                out.push(1);
                push_name(&mut out, name);
            }
            Request::Connect { name, caller } => {
                out.push(2);
                push_name(&mut out, name);
                match caller.ip() {
                    IpAddr::V4(ip) => {
                        out.push(4);
                        out.extend_from_slice(&ip.octets());
                    }
                    IpAddr::V6(ip) => {
                        out.push(6);
                        out.extend_from_slice(&ip.octets());
                    }
                }
                out.extend_from_slice(&caller.port().to_be_bytes());
            }
            Request::Ping => out.push(3),
        }
        out
    }

    /// The request at the start of `buf`: `Ok(None)` while it is incomplete (every
    /// complete request is at most [`MAX_REQUEST`] bytes), else the request and its
    /// length. Bytes after it are the caller's (dist bytes).
    pub fn decode(buf: &[u8]) -> Result<Option<(Request, usize)>, WireError> {
        let mut r = Reader { buf, at: 0 };
        let Some(magic) = r.take(4) else {
            // A wrong prefix is known before the whole magic is in.
            return match MAGIC.starts_with(buf) {
                true => Ok(None),
                false => Err(WireError::Magic),
            };
        };
        if magic != MAGIC {
            return Err(WireError::Magic);
        }
        let Some(kind) = r.byte() else {
            return Ok(None);
        };
        let request = match kind {
            3 => Request::Ping,
            1 | 2 => {
                let Some(name) = r.name()? else {
                    return Ok(None);
                };
                if kind == 1 {
                    Request::Lookup(name)
                } else {
                    let Some(family) = r.byte() else {
                        return Ok(None);
                    };
                    let ip = match family {
                        4 => r.take(4).map(|b| {
                            IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(b).unwrap_or_default()))
                        }),
                        6 => r.take(16).map(|b| {
                            IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap_or_default()))
                        }),
                        other => return Err(WireError::Family(other)),
                    };
                    let (Some(ip), Some(port)) = (ip, r.u16()) else {
                        return Ok(None);
                    };
                    let caller = SocketAddr::new(ip, port);
                    Request::Connect { name, caller }
                }
            }
            other => return Err(WireError::Kind(other)),
        };
        Ok(Some((request, r.at)))
    }
}

fn push_name(out: &mut Vec<u8>, name: &str) {
    let name = &name.as_bytes()[..name.len().min(255)];
    out.push(name.len() as u8);
    out.extend_from_slice(name);
}

/// A peer gateway's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Yes: the name lives there (for a lookup, what its node registered).
    Ok(Option<NodeInfo>),
    /// No such name there.
    Unknown,
    /// Not for you (the caller not allowed, no room, or the gateway going away).
    Refused,
    /// Your certificate is trusted, but `peers` does not admit it.
    NotAllowed,
}

impl Reply {
    /// The bytes of the reply.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Reply::Ok(None) => vec![0],
            Reply::Ok(Some(info)) => {
                let extra = &info.extra[..info.extra.len().min(MAX_EXTRA)];
                let mut out = vec![0, info.node_type.byte(), info.protocol];
                out.extend_from_slice(&info.highest_version.to_be_bytes());
                out.extend_from_slice(&info.lowest_version.to_be_bytes());
                out.extend_from_slice(&(extra.len() as u16).to_be_bytes());
                out.extend_from_slice(extra);
                out
            }
            Reply::Unknown => vec![1],
            Reply::Refused => vec![2],
            Reply::NotAllowed => vec![3],
        }
    }

    /// The reply at the start of `buf` to a request that `carries_info` (a lookup) or
    /// not: `Ok(None)` while incomplete, else the reply and its length.
    pub fn decode(buf: &[u8], carries_info: bool) -> Result<Option<(Reply, usize)>, WireError> {
        let mut r = Reader { buf, at: 0 };
        let Some(status) = r.byte() else {
            return Ok(None);
        };
        let reply = match status {
            0 if !carries_info => Reply::Ok(None),
            0 => {
                let (Some(node_type), Some(protocol), Some(highest), Some(lowest), Some(len)) =
                    (r.byte(), r.byte(), r.u16(), r.u16(), r.u16())
                else {
                    return Ok(None);
                };
                if usize::from(len) > MAX_EXTRA {
                    return Err(WireError::Reply);
                }
                let Some(extra) = r.take(len.into()) else {
                    return Ok(None);
                };
                Reply::Ok(Some(NodeInfo {
                    node_type: node_type.into(),
                    protocol,
                    highest_version: highest,
                    lowest_version: lowest,
                    extra: extra.to_vec(),
                }))
            }
            1 => Reply::Unknown,
            2 => Reply::Refused,
            3 => Reply::NotAllowed,
            _ => return Err(WireError::Reply),
        };
        Ok(Some((reply, r.at)))
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let bytes = self.buf.get(self.at..self.at + n)?;
        self.at += n;
        Some(bytes)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    /// A length-prefixed node name part: `Ok(None)` while incomplete.
    fn name(&mut self) -> Result<Option<String>, WireError> {
        let Some(len) = self.byte() else {
            return Ok(None);
        };
        if len == 0 {
            return Err(WireError::Name);
        }
        let Some(bytes) = self.take(len.into()) else {
            return Ok(None);
        };
        let name = std::str::from_utf8(bytes).map_err(|_| WireError::Name)?;
        let unprintable = name.chars().any(|c| c.is_control() || c.is_whitespace());
        if unprintable || crate::config::check_node_name(name).is_err() {
            return Err(WireError::Name);
        }
        Ok(Some(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_every_prefix_is_incomplete() {
        let requests = [
            Request::Lookup("b-1".into()),
            Request::Connect {
                name: "b-2".into(),
                caller: "10.1.2.3:40000".parse().unwrap(),
            },
            Request::Connect {
                name: "x".repeat(255),
                caller: "[fd00::1]:1".parse().unwrap(),
            },
            Request::Ping,
        ];
        for request in requests {
            let bytes = request.encode();
            assert!(bytes.len() <= MAX_REQUEST);
            let mut with_more = bytes.clone();
            with_more.extend_from_slice(b"\x00\x15N");
            assert_eq!(
                Request::decode(&with_more),
                Ok(Some((request.clone(), bytes.len())))
            );
            for cut in 0..bytes.len() {
                assert_eq!(
                    Request::decode(&bytes[..cut]),
                    Ok(None),
                    "{request:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn what_no_gateway_sends_is_refused_at_once() {
        assert_eq!(Request::decode(b"\x16\x03\x01"), Err(WireError::Magic));
        assert_eq!(Request::decode(b"DGF\x02"), Err(WireError::Magic));
        assert_eq!(Request::decode(b"DGX"), Err(WireError::Magic));
        assert_eq!(Request::decode(b"DGF\x01\x09"), Err(WireError::Kind(9)));
        assert_eq!(Request::decode(b"DGF\x01\x01\x00"), Err(WireError::Name));
        assert_eq!(Request::decode(b"DGF\x01\x01\x03a@b"), Err(WireError::Name));
        assert_eq!(
            Request::decode(b"DGF\x01\x01\x02\xff\xfe"),
            Err(WireError::Name)
        );
        assert_eq!(
            Request::decode(b"DGF\x01\x02\x01a\x05"),
            Err(WireError::Family(5))
        );
    }

    #[test]
    fn replies_round_trip() {
        let info = NodeInfo {
            extra: vec![7; 3],
            ..NodeInfo::OTP23
        };
        for (reply, info_carried) in [
            (Reply::Ok(Some(info)), true),
            (Reply::Ok(None), false),
            (Reply::Unknown, true),
            (Reply::Refused, false),
            (Reply::NotAllowed, true),
        ] {
            let bytes = reply.encode();
            assert_eq!(
                Reply::decode(&bytes, info_carried),
                Ok(Some((reply.clone(), bytes.len())))
            );
            for cut in 0..bytes.len() {
                assert_eq!(Reply::decode(&bytes[..cut], info_carried), Ok(None));
            }
        }
        assert_eq!(Reply::decode(b"\x04", false), Err(WireError::Reply));
        assert_eq!(
            Reply::decode(b"\x00\x4d\x00\x00\x06\x00\x05\xff\xff", true),
            Err(WireError::Reply)
        );
    }
}
