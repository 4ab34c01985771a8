//! The client's half of the EPMD wire format: the request frames a client sends and
//! the replies it reads back (PORT2_RESP, NAMES). Pure, like the server's half.

use super::{ALIVE2_REQ, Alive2Req, NodeInfo, PORT2_RESP, Port2Resp};

/// Bytes from an EPMD server that are not the reply asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {kind}: {reason}")]
pub struct ReplyError {
    /// Which reply.
    pub kind: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Builds a request frame: the u16 length then the payload. For clients and tests.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 2);
    let len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Encodes an ALIVE2_REQ frame. For clients and tests.
pub fn encode_alive2_req(req: &Alive2Req) -> Vec<u8> {
    let mut payload = vec![ALIVE2_REQ];
    payload.extend_from_slice(&req.port.to_be_bytes());
    payload.extend_from_slice(&[req.info.node_type.byte(), req.info.protocol]);
    payload.extend_from_slice(&req.info.highest_version.to_be_bytes());
    payload.extend_from_slice(&req.info.lowest_version.to_be_bytes());
    payload.extend_from_slice(&(req.name.len() as u16).to_be_bytes());
    payload.extend_from_slice(&req.name);
    payload.extend_from_slice(&(req.info.extra.len() as u16).to_be_bytes());
    payload.extend_from_slice(&req.info.extra);
    frame(&payload)
}

/// Decodes a whole PORT2_RESP: `Ok(Some)` found, `Ok(None)` for `77 01` (or any
/// other error result), `Err` for bytes that are no PORT2_RESP.
pub fn decode_port2_resp(reply: &[u8]) -> Result<Option<Port2Resp>, ReplyError> {
    let bad = |reason| ReplyError {
        kind: "PORT2_RESP",
        reason,
    };
    match reply {
        [PORT2_RESP, 0, rest @ ..] => {
            let fixed = rest.get(..10).ok_or_else(|| bad("too short"))?;
            let name_len = usize::from(be_u16(fixed, 8));
            let name = rest
                .get(10..10 + name_len)
                .ok_or_else(|| bad("name cut short"))?;
            let elen_at = 10 + name_len;
            let extra_len = usize::from(be_u16(
                rest.get(elen_at..elen_at + 2)
                    .ok_or_else(|| bad("no Elen"))?,
                0,
            ));
            let extra = rest
                .get(elen_at + 2..elen_at + 2 + extra_len)
                .ok_or_else(|| bad("extra cut short"))?;
            Ok(Some(Port2Resp {
                port: be_u16(fixed, 0),
                name: String::from_utf8_lossy(name).into_owned(),
                info: NodeInfo {
                    node_type: fixed[2].into(),
                    protocol: fixed[3],
                    highest_version: be_u16(fixed, 4),
                    lowest_version: be_u16(fixed, 6),
                    extra: extra.to_vec(),
                },
            }))
        }
        [PORT2_RESP, _, ..] => Ok(None),
        _ => Err(bad("not a PORT2_RESP")),
    }
}

/// Decodes a whole NAMES reply: the 4-byte port header, then `name N at port P` lines.
/// Lines of another shape are skipped, as `net_adm:names/1` skips them.
pub fn decode_names_resp(reply: &[u8]) -> Result<Vec<(String, u16)>, ReplyError> {
    let bad = |reason| ReplyError {
        kind: "NAMES reply",
        reason,
    };
    let body = reply.get(4..).ok_or_else(|| bad("no port header"))?;
    let text = std::str::from_utf8(body).map_err(|_| bad("not UTF-8"))?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let (name, port) = line.strip_prefix("name ")?.rsplit_once(" at port ")?;
            Some((name.to_owned(), port.parse().ok()?))
        })
        .collect())
}

fn be_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}
