//! The EPMD wire format (docs/protocol.md §1–§8): request framing and decoding, reply
//! encoding. Pure functions over bytes: no sockets, no clock, no registry.
//!
//! Decoding mirrors what OTP's `epmd` accepts. Input that makes `epmd` close the
//! connection without a reply is a [`FrameError`]; input that `epmd` answers with an
//! error reply (a bad node name in ALIVE2_REQ, say) decodes successfully and is judged
//! by [`Alive2Req::validate`].

use std::fmt;

pub use super::node_info::{NodeInfo, NodeType};

/// Largest request payload `epmd` accepts (its 3060-byte buffer minus the length and
/// one spare byte).
pub const MAX_REQUEST_LEN: usize = 3057;
/// Largest node name or extra field in bytes (`MAXSYMLEN` in `epmd_int.h`).
pub const MAX_SYMLEN: usize = 1020;
/// Most code points in a node name.
pub const MAX_NAME_CHARS: usize = 255;
/// Most code points in a PORT_PLEASE2_REQ name: `epmd` counts one too many, so a
/// 255-character name registers but cannot be looked up (docs/protocol.md §5).
pub const MAX_LOOKUP_CHARS: usize = MAX_NAME_CHARS - 1;

/// A node registers.
pub const ALIVE2_REQ: u8 = b'x';
/// The registration reply with a 16-bit creation (nodes before version 6).
pub const ALIVE2_RESP: u8 = b'y';
/// The registration reply with a 32-bit creation.
pub const ALIVE2_X_RESP: u8 = b'v';
/// A peer asks for a node's port.
pub const PORT_PLEASE2_REQ: u8 = b'z';
/// The reply to PORT_PLEASE2_REQ.
pub const PORT2_RESP: u8 = b'w';
/// List the registered names.
pub const NAMES_REQ: u8 = b'n';
/// List registered and remembered names with descriptors (local only).
pub const DUMP_REQ: u8 = b'd';
/// Stop the EPMD server (local only).
pub const KILL_REQ: u8 = b'k';
/// End a node's registration (local only, relaxed command check).
pub const STOP_REQ: u8 = b's';

/// Fixed part of an ALIVE2_REQ payload: command, port, type, protocol, versions, Nlen
/// and Elen.
const ALIVE2_FIXED_LEN: usize = 13;
/// The creation `epmd` puts into an error reply; cosmetic.
const ERROR_CREATION: u32 = 99;

/// A decoded EPMD request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// ALIVE2_REQ: a registration.
    Alive2(Alive2Req),
    /// PORT_PLEASE2_REQ for a name part.
    PortPlease2 {
        /// The name asked for, a trailing NUL removed.
        name: String,
    },
    /// NAMES_REQ.
    Names,
    /// DUMP_REQ.
    Dump,
    /// KILL_REQ.
    Kill,
    /// STOP_REQ; the name is compared as `epmd` does, as a C string.
    Stop {
        /// The name, up to its first NUL.
        name: Vec<u8>,
    },
}

impl Request {
    /// The request's kind, for logs and metric labels.
    pub fn kind(&self) -> RequestKind {
        match self {
            Request::Alive2(_) => RequestKind::Alive2,
            Request::PortPlease2 { .. } => RequestKind::PortPlease2,
            Request::Names => RequestKind::Names,
            Request::Dump => RequestKind::Dump,
            Request::Kill => RequestKind::Kill,
            Request::Stop { .. } => RequestKind::Stop,
        }
    }
}

/// The kind of a request, a bounded label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// ALIVE2_REQ.
    Alive2,
    /// PORT_PLEASE2_REQ.
    PortPlease2,
    /// NAMES_REQ.
    Names,
    /// DUMP_REQ.
    Dump,
    /// KILL_REQ.
    Kill,
    /// STOP_REQ.
    Stop,
}

impl RequestKind {
    /// The `type` label.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Alive2 => "alive2",
            RequestKind::PortPlease2 => "port_please2",
            RequestKind::Names => "names",
            RequestKind::Dump => "dump",
            RequestKind::Kill => "kill",
            RequestKind::Stop => "stop",
        }
    }
}

/// ALIVE2_REQ: a node registering its distribution port (docs/protocol.md §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alive2Req {
    /// The node's real dist port.
    pub port: u16,
    /// The name part before `@`, as sent; see [`Alive2Req::validate`].
    pub name: Vec<u8>,
    /// Its type, protocol, versions and extra field, echoed in PORT2_RESP.
    pub info: NodeInfo,
}

/// Why an ALIVE2_REQ is refused with an error reply (the socket stays open).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// More than [`MAX_SYMLEN`] bytes.
    #[error("node name longer than {MAX_SYMLEN} bytes")]
    TooLong,
    /// Not UTF-8.
    #[error("node name is not valid UTF-8")]
    NotUtf8,
    /// More than [`MAX_NAME_CHARS`] code points.
    #[error("node name longer than {MAX_NAME_CHARS} characters")]
    TooManyChars,
    /// An extra field of more than [`MAX_SYMLEN`] bytes.
    #[error("extra field longer than {MAX_SYMLEN} bytes")]
    ExtraTooLong,
}

impl Alive2Req {
    /// The request an OTP 23+ node sends: a normal node (`M`) over TCP, versions 5–6,
    /// no extra.
    pub fn otp23(name: &str, port: u16) -> Alive2Req {
        Alive2Req {
            port,
            name: name.as_bytes().to_vec(),
            info: NodeInfo::OTP23,
        }
    }

    /// The checks `epmd` makes before registering (`node_reg2`): the valid name, or why
    /// the registration is refused.
    pub fn validate(&self) -> Result<&str, NameError> {
        if self.name.len() > MAX_SYMLEN {
            return Err(NameError::TooLong);
        }
        if self.info.extra.len() > MAX_SYMLEN {
            return Err(NameError::ExtraTooLong);
        }
        let name = std::str::from_utf8(&self.name).map_err(|_| NameError::NotUtf8)?;
        if name.chars().count() > MAX_NAME_CHARS {
            return Err(NameError::TooManyChars);
        }
        Ok(name)
    }

    /// Whether the node understands the 32-bit creation of ALIVE2_X_RESP.
    pub fn wants_x_resp(&self) -> bool {
        self.info.highest_version >= 6
    }
}

/// Input that `epmd` answers by closing the connection without a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A length of 0.
    #[error("zero-length request")]
    Empty,
    /// A length over [`MAX_REQUEST_LEN`].
    #[error("request length {0} exceeds {MAX_REQUEST_LEN}")]
    TooLong(usize),
    /// Bytes after the one request.
    #[error("{0} bytes after the request")]
    TrailingBytes(usize),
    /// A command byte epmd does not serve.
    #[error("unknown command byte {0:#04x}")]
    UnknownCommand(u8),
    /// A known request whose fields do not hold together.
    #[error("malformed {kind}: {reason}")]
    Malformed {
        /// Which request.
        kind: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

impl FrameError {
    /// A bounded label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::Empty => "empty",
            FrameError::TooLong(_) => "too_long",
            FrameError::TrailingBytes(_) => "trailing_bytes",
            FrameError::UnknownCommand(_) => "unknown_command",
            FrameError::Malformed { .. } => "malformed",
        }
    }
}

fn malformed(kind: &'static str, reason: &'static str) -> FrameError {
    FrameError::Malformed { kind, reason }
}

/// How many bytes the request at the start of `buf` occupies, `None` while the
/// length header is incomplete. Errors as soon as the header shows a bad length.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(header) = buf.get(..2) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([header[0], header[1]]));
    match len {
        0 => Err(FrameError::Empty),
        n if n > MAX_REQUEST_LEN => Err(FrameError::TooLong(n)),
        n => Ok(Some(n + 2)),
    }
}

/// Decodes the one request a connection may carry. `Ok(None)` until the whole frame is
/// buffered; bytes beyond the frame are an error, as in `epmd`.
pub fn decode_request(buf: &[u8]) -> Result<Option<Request>, FrameError> {
    let Some(total) = frame_len(buf)? else {
        return Ok(None);
    };
    if buf.len() < total {
        return Ok(None);
    }
    if buf.len() > total {
        return Err(FrameError::TrailingBytes(buf.len() - total));
    }
    decode_payload(&buf[2..]).map(Some)
}

fn decode_payload(payload: &[u8]) -> Result<Request, FrameError> {
    let (&command, body) = payload.split_first().ok_or(FrameError::Empty)?;
    match command {
        ALIVE2_REQ => decode_alive2(payload).map(Request::Alive2),
        PORT_PLEASE2_REQ => decode_port_please2(body),
        NAMES_REQ => Ok(Request::Names),
        DUMP_REQ => Ok(Request::Dump),
        KILL_REQ => Ok(Request::Kill),
        STOP_REQ => decode_stop(body),
        other => Err(FrameError::UnknownCommand(other)),
    }
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

fn decode_alive2(payload: &[u8]) -> Result<Alive2Req, FrameError> {
    const KIND: &str = "ALIVE2_REQ";
    let size = payload.len();
    if size <= ALIVE2_FIXED_LEN {
        return Err(malformed(KIND, "too short"));
    }
    let name_len = usize::from(u16_at(payload, 9));
    if name_len + ALIVE2_FIXED_LEN > size {
        return Err(malformed(KIND, "name length overflows the frame"));
    }
    let name = &payload[11..11 + name_len];
    let extra_len = usize::from(u16_at(payload, 11 + name_len));
    if extra_len + name_len + ALIVE2_FIXED_LEN > size {
        return Err(malformed(KIND, "extra length overflows the frame"));
    }
    if name.contains(&0) {
        return Err(malformed(KIND, "NUL in node name"));
    }
    let extra_at = 13 + name_len;
    Ok(Alive2Req {
        port: u16_at(payload, 1),
        name: name.to_vec(),
        info: NodeInfo {
            node_type: payload[3].into(),
            protocol: payload[4],
            highest_version: u16_at(payload, 5),
            lowest_version: u16_at(payload, 7),
            extra: payload[extra_at..extra_at + extra_len].to_vec(),
        },
    })
}

fn decode_port_please2(name: &[u8]) -> Result<Request, FrameError> {
    const KIND: &str = "PORT_PLEASE2_REQ";
    let name = name.strip_suffix(&[0]).unwrap_or(name);
    if name.contains(&0) {
        return Err(malformed(KIND, "NUL in node name"));
    }
    let name = std::str::from_utf8(name).map_err(|_| malformed(KIND, "name not UTF-8"))?;
    let chars = name.chars().count();
    if chars == 0 {
        return Err(malformed(KIND, "empty name"));
    }
    if chars > MAX_LOOKUP_CHARS {
        return Err(malformed(KIND, "name too long"));
    }
    Ok(Request::PortPlease2 {
        name: name.to_owned(),
    })
}

fn decode_stop(name: &[u8]) -> Result<Request, FrameError> {
    let name = name.split(|&b| b == 0).next().unwrap_or_default();
    if name.is_empty() {
        return Err(malformed("STOP_REQ", "empty name"));
    }
    Ok(Request::Stop {
        name: name.to_vec(),
    })
}

/// ALIVE2_X_RESP (`v`, 32-bit creation) or ALIVE2_RESP (`y`, creation folded to 1..3),
/// chosen by the node's highest version. `None` is the error reply.
pub fn encode_alive2_resp(x_resp: bool, creation: Option<u32>) -> Vec<u8> {
    let (result, creation) = match creation {
        Some(c) => (0, c),
        None => (1, ERROR_CREATION),
    };
    if x_resp {
        let mut out = vec![ALIVE2_X_RESP, result];
        out.extend_from_slice(&creation.to_be_bytes());
        out
    } else {
        let short = if result == 0 {
            (creation % 3 + 1) as u16
        } else {
            ERROR_CREATION as u16
        };
        let mut out = vec![ALIVE2_RESP, result];
        out.extend_from_slice(&short.to_be_bytes());
        out
    }
}

/// PORT2_RESP for a found node: what peers are told about it (docs/protocol.md §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port2Resp {
    /// The port to dial.
    pub port: u16,
    /// The name part, as registered.
    pub name: String,
    /// What the node registered about itself.
    pub info: NodeInfo,
}

/// PORT2_RESP: the node's fields, or exactly `77 01` when it is unknown.
pub fn encode_port2_resp(info: Option<&Port2Resp>) -> Vec<u8> {
    let Some(info) = info else {
        return vec![PORT2_RESP, 1];
    };
    let Port2Resp { port, name, info } = info;
    let mut out = Vec::with_capacity(14 + name.len() + info.extra.len());
    out.extend_from_slice(&[PORT2_RESP, 0]);
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(&[info.node_type.byte(), info.protocol]);
    out.extend_from_slice(&info.highest_version.to_be_bytes());
    out.extend_from_slice(&info.lowest_version.to_be_bytes());
    push_u16_len(&mut out, name.as_bytes());
    push_u16_len(&mut out, &info.extra);
    out
}

fn push_u16_len(out: &mut Vec<u8>, bytes: &[u8]) {
    // Both fields were limited to MAX_SYMLEN bytes when the node registered.
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&bytes[..usize::from(len)]);
}

/// The 4-byte header of NAMES and DUMP replies: the port the client dialled.
pub fn encode_port_header(port: u16) -> [u8; 4] {
    u32::from(port).to_be_bytes()
}

/// One line of a NAMES reply.
pub fn encode_names_line(name: &str, port: u16) -> String {
    format!("name {name} at port {port}\n")
}

/// One DUMP line for a registered node; `epmd` ends each with a NUL.
pub fn encode_dump_active(name: &str, port: u16, fd: i32) -> String {
    format!("active name     <{name}> at port {port}, fd = {fd}\n\0")
}

/// One DUMP line for a remembered, unregistered name.
pub fn encode_dump_unused(name: &str, port: u16, fd: i32) -> String {
    format!("old/unused name <{name}>, port = {port}, fd = {fd} \n\0")
}

/// KILL_REQ accepted.
pub const KILL_OK: &[u8] = b"OK";
/// KILL_REQ refused.
pub const KILL_NO: &[u8] = b"NO";
/// STOP_REQ ended the registration.
pub const STOP_OK: &[u8] = b"STOPPED";
/// OTP 25's epmd sends both words when the name is unknown (docs/protocol.md §8).
pub const STOP_NOEXIST: &[u8] = b"NOEXISTSTOPPED";

impl fmt::Display for RequestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

mod client_side;
pub use client_side::{ReplyError, decode_names_resp, decode_port2_resp, encode_alive2_req, frame};

#[cfg(test)]
mod tests;
