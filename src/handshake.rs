//! The first bytes of a dist connection (docs/protocol.md §13): who is calling. Pure
//! functions over bytes: no sockets.
//!
//! The initiator speaks first. A plain TCP dist connection starts with its `send_name`
//! (`u16` length, then `N` or `n`), which names the calling node; a TLS dist connection
//! starts with a TLS record whose ClientHello may carry the target host as SNI. distgate
//! only looks: the bytes are forwarded untouched.
//!
//! A first frame is TLS only when it is a whole, well-formed ClientHello record:
//! content type 22, version `03 01`..`03 04`, a record length of 1..=16,384 and a
//! handshake of type 1 whose length fills the record exactly. Anything else is read as
//! a `send_name` (or junk). No TLS record is also a `send_name` OTP would accept: its
//! third byte, the version's minor, is where a `send_name` has its `N` or `n`.

/// Largest `send_name` payload looked at: a 1020-byte name plus the fixed fields.
pub const MAX_SEND_NAME: usize = 1100;
/// Largest TLS record looked at (a ClientHello fits in one): its header and the most
/// plaintext a record may carry.
pub const MAX_TLS_RECORD: usize = 5 + 16_384;

/// Who is calling, as far as the first frame tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A plain dist `send_name`.
    Node {
        /// The full node name (`name@host`), or the host only with DFLAG_NAME_ME.
        name: String,
        /// The capability flags it sends.
        flags: u64,
        /// Absent in the pre-OTP-23 `n` form.
        creation: Option<u32>,
    },
    /// TLS distribution; the SNI host name when the ClientHello has one.
    Tls {
        /// The SNI host name.
        sni: Option<String>,
    },
    /// Anything else.
    Unknown,
}

impl Caller {
    /// The name a node caller claims (with DFLAG_NAME_ME, the host only); none for TLS
    /// and anything else.
    pub fn name(&self) -> Option<&str> {
        match self {
            Caller::Node { name, .. } => Some(name),
            Caller::Tls { .. } | Caller::Unknown => None,
        }
    }
}

/// What the bytes so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peek {
    /// More bytes are needed: at least this many in all.
    NeedMore(usize),
    /// The caller, from a complete first frame (or `Unknown` as soon as it is clear).
    Done(Caller),
}

/// Classifies the first bytes of a dist connection.
pub fn classify(buf: &[u8]) -> Peek {
    match buf {
        [] | [_] => Peek::NeedMore(2),
        [0x16, 0x03] => Peek::NeedMore(3),
        [0x16, 0x03, 0x01..=0x04, ..] => classify_tls(buf),
        [hi, lo, ..] => {
            let len = usize::from(u16::from_be_bytes([*hi, *lo]));
            if len == 0 || len > MAX_SEND_NAME {
                return Peek::Done(Caller::Unknown);
            }
            match buf.get(2..2 + len) {
                None => Peek::NeedMore(2 + len),
                Some(payload) => Peek::Done(parse_send_name(payload).unwrap_or(Caller::Unknown)),
            }
        }
    }
}

/// Parses a `send_name` payload (after the `u16` length).
pub fn parse_send_name(payload: &[u8]) -> Option<Caller> {
    let (&tag, rest) = payload.split_first()?;
    let (name, flags, creation) = match tag {
        b'N' => {
            let flags = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
            let creation = u32::from_be_bytes(rest.get(8..12)?.try_into().ok()?);
            let nlen = usize::from(u16::from_be_bytes(rest.get(12..14)?.try_into().ok()?));
            (rest.get(14..14 + nlen)?, flags, Some(creation))
        }
        b'n' => {
            let flags = u32::from_be_bytes(rest.get(2..6)?.try_into().ok()?);
            (rest.get(6..)?, u64::from(flags), None)
        }
        _ => return None,
    };
    let name = std::str::from_utf8(name).ok()?;
    if name.is_empty() || name.chars().any(char::is_control) {
        return None;
    }
    Some(Caller::Node {
        name: name.to_owned(),
        flags,
        creation,
    })
}

/// A record that starts like TLS: TLS when it is a whole ClientHello, else `Unknown`.
fn classify_tls(buf: &[u8]) -> Peek {
    let Some(header) = buf.get(..5) else {
        return Peek::NeedMore(5);
    };
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if len == 0 || 5 + len > MAX_TLS_RECORD {
        return Peek::Done(Caller::Unknown);
    }
    let Some(record) = buf.get(5..5 + len) else {
        return Peek::NeedMore(5 + len);
    };
    let mut r = Reader(record);
    let whole_client_hello = r.u8() == Some(1) && r.u24().map(|body| body + 4) == Some(len);
    match whole_client_hello {
        true => Peek::Done(Caller::Tls {
            sni: client_hello_sni(record),
        }),
        false => Peek::Done(Caller::Unknown),
    }
}

/// A cursor over bytes that fails instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<usize> {
        Some(usize::from(self.take(1)?[0]))
    }

    fn u16(&mut self) -> Option<usize> {
        let b = self.take(2)?;
        Some(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn u24(&mut self) -> Option<usize> {
        let b = self.take(3)?;
        Some((usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }
}

/// The host name in a ClientHello's server_name extension (RFC 6066).
fn client_hello_sni(record: &[u8]) -> Option<String> {
    let mut r = Reader(record);
    // Handshake type 1 (ClientHello) and its length.
    if r.u8()? != 1 {
        return None;
    }
    let body = r.u24()?;
    let mut r = Reader(r.take(body).or(Some(r.0))?);
    r.take(2 + 32)?; // client_version, random
    let session = r.u8()?;
    r.take(session)?;
    let suites = r.u16()?;
    r.take(suites)?;
    let compression = r.u8()?;
    r.take(compression)?;
    let extensions = r.u16()?;
    let mut r = Reader(r.take(extensions).or(Some(r.0))?);
    while let (Some(kind), Some(len)) = (r.u16(), r.u16()) {
        let data = r.take(len)?;
        if kind != 0 {
            continue;
        }
        let mut list = Reader(data);
        let list_len = list.u16()?;
        let mut names = Reader(list.take(list_len)?);
        while let Some(name_type) = names.u8() {
            let name_len = names.u16()?;
            let name = names.take(name_len)?;
            if name_type == 0 {
                return std::str::from_utf8(name).ok().map(str::to_owned);
            }
        }
        return None;
    }
    None
}

/// Capability flags an OTP 25 node sends (docs/protocol.md §13); what a probe claims.
pub const OTP25_FLAGS: u64 = 0x0000_000d_07df_7fbd;

/// A `send_name` frame (the v6 `N` form), with its `u16` length.
pub fn encode_send_name(name: &str, flags: u64, creation: u32) -> Vec<u8> {
    let mut payload = vec![b'N'];
    payload.extend_from_slice(&flags.to_be_bytes());
    payload.extend_from_slice(&creation.to_be_bytes());
    payload.extend_from_slice(&(name.len() as u16).to_be_bytes());
    payload.extend_from_slice(name.as_bytes());
    let mut frame = (payload.len() as u16).to_be_bytes().to_vec();
    frame.extend(payload);
    frame
}

/// The status text of a `recv_status` payload (`s` then e.g. `ok`, `not_allowed`).
pub fn parse_status(payload: &[u8]) -> Option<String> {
    let text = payload.strip_prefix(b"s")?;
    Some(String::from_utf8_lossy(text).into_owned())
}

/// The acceptor's challenge: its real node name, creation and flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The acceptor's own node name.
    pub name: String,
    /// Its capability flags.
    pub flags: u64,
    /// Absent from a pre-OTP-23 acceptor's `n` form.
    pub creation: Option<u32>,
}

/// Parses a challenge payload (`N` since OTP 23, `n` before).
pub fn parse_challenge(payload: &[u8]) -> Option<Challenge> {
    let (&tag, rest) = payload.split_first()?;
    let (name, flags, creation) = match tag {
        b'N' => {
            let flags = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
            let creation = u32::from_be_bytes(rest.get(12..16)?.try_into().ok()?);
            let nlen = usize::from(u16::from_be_bytes(rest.get(16..18)?.try_into().ok()?));
            (rest.get(18..18 + nlen)?, flags, Some(creation))
        }
        b'n' => {
            let flags = u32::from_be_bytes(rest.get(2..6)?.try_into().ok()?);
            (rest.get(10..)?, u64::from(flags), None)
        }
        _ => return None,
    };
    Some(Challenge {
        name: std::str::from_utf8(name).ok()?.to_owned(),
        flags,
        creation,
    })
}

#[cfg(test)]
mod tests;

pub mod follow;
pub mod frames;
