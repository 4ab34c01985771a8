//! The first frame of a dist connection (who is calling), the probe's parsers of an
//! acceptor's replies, and the whole handshake followed from both sides: the input is
//! split into chunks, each given to one side, as a hostile caller or node could.
#![no_main]

use distgate::handshake::follow::{Handshake, Progress, Side};
use distgate::handshake::{self, Caller, Peek};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match handshake::classify(data) {
        // More is asked for only when more could change the answer.
        Peek::NeedMore(n) => assert!(n > data.len()),
        // What is forwarded unexamined as TLS is never a send_name OTP would read.
        Peek::Done(Caller::Tls { .. }) => {
            let len = usize::from(u16::from_be_bytes([data[0], data[1]]));
            let payload = data.get(2..2 + len).unwrap_or(&data[2..]);
            assert!(handshake::parse_send_name(payload).is_none());
        }
        Peek::Done(caller) => {
            let _ = caller.name();
        }
    }
    let _ = handshake::parse_send_name(data);
    let _ = handshake::parse_challenge(data);
    let _ = handshake::parse_status(data);
    follow(data);
});

/// Each chunk starts with a control byte: its high bit picks the side, the rest its
/// length.
fn follow(mut data: &[u8]) {
    let mut h = Handshake::new();
    while let Some((&control, rest)) = data.split_first() {
        let side = if control & 0x80 == 0 { Side::Caller } else { Side::Node };
        let len = usize::from(control & 0x7f).min(rest.len());
        let (chunk, tail) = rest.split_at(len);
        data = tail;
        match h.feed(side, chunk) {
            Err(e) => {
                assert!(!e.to_string().is_empty());
                return;
            }
            Ok(Progress::Authenticated) => assert!(h.is_authenticated()),
            Ok(_) => assert!(!h.is_authenticated()),
        }
    }
}
