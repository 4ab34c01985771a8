//! Handshake frames as an OTP node writes them, each with its `u16` length: for the
//! tests, the benchmark and anything else that must play one side of a handshake
//! through distgate. The digests are fixed bytes: distgate never checks them (only
//! the node that knows the cookie can), so any value plays the part.

use super::OTP25_FLAGS;

/// A frame: the `u16` length, then `payload`.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

/// The node's `ok` status.
pub fn status_ok() -> Vec<u8> {
    frame(b"sok")
}

/// The node's challenge (the `N` form), naming it `name`.
pub fn challenge(name: &str) -> Vec<u8> {
    let mut p = vec![b'N'];
    p.extend_from_slice(&OTP25_FLAGS.to_be_bytes());
    p.extend_from_slice(&0xc9e0_8fc7_u32.to_be_bytes());
    p.extend_from_slice(&0x1234_5678_u32.to_be_bytes());
    p.extend_from_slice(&(name.len() as u16).to_be_bytes());
    p.extend_from_slice(name.as_bytes());
    frame(&p)
}

/// The caller's challenge reply.
pub fn reply() -> Vec<u8> {
    let mut p = vec![b'r'];
    p.extend_from_slice(&[0x2a, 0x5c, 0x9d, 0xc3]);
    p.extend_from_slice(&[7; 16]);
    frame(&p)
}

/// The node's challenge ack: the link is authenticated once it is sent.
pub fn ack() -> Vec<u8> {
    let mut p = vec![b'a'];
    p.extend_from_slice(&[9; 16]);
    frame(&p)
}
