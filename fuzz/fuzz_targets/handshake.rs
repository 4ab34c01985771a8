//! The first frame of a dist connection (who is calling), and the probe's parsers of
//! an acceptor's replies.
#![no_main]

use distgate::handshake::{self, Peek};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match handshake::classify(data) {
        // More is asked for only when more could change the answer.
        Peek::NeedMore(n) => assert!(n > data.len()),
        Peek::Done(caller) => {
            let _ = caller.label();
        }
    }
    let _ = handshake::parse_send_name(data);
    let _ = handshake::parse_challenge(data);
    let _ = handshake::parse_status(data);
});
