//! The handshake follower against the OTP 25 trace docs/protocol.md records, cut at
//! every point, and against every way a side can break it.

use super::*;
use crate::handshake::frames::{ack, challenge, frame, reply};
use crate::handshake::{OTP25_FLAGS, encode_send_name};

/// The OTP 25 ↔ OTP 25 handshake, as (side, bytes) in the order they flow.
fn otp25() -> Vec<(Side, Vec<u8>)> {
    let mut status_and_challenge = frame(b"sok");
    status_and_challenge.extend(challenge("b@127.0.0.1"));
    vec![
        (
            Side::Caller,
            encode_send_name("a@127.0.0.1", OTP25_FLAGS, 0x1234_5678),
        ),
        (Side::Node, status_and_challenge),
        (Side::Caller, reply()),
        (Side::Node, ack()),
    ]
}

/// Feeds every message in pieces of `piece` bytes; the progress after each piece.
fn run(h: &mut Handshake, messages: &[(Side, Vec<u8>)], piece: usize) -> Vec<Progress> {
    let mut seen = vec![];
    for (side, bytes) in messages {
        for chunk in bytes.chunks(piece.max(1)) {
            seen.push(h.feed(*side, chunk).unwrap());
        }
    }
    seen
}

#[test]
fn the_otp25_trace_authenticates_cut_anywhere() {
    for piece in 1..=40 {
        let mut h = Handshake::new();
        let seen = run(&mut h, &otp25(), piece);
        assert_eq!(
            seen.last(),
            Some(&Progress::Authenticated),
            "pieces of {piece}"
        );
        let authenticated = seen.iter().filter(|p| **p == Progress::Authenticated);
        assert_eq!(authenticated.count(), 1, "pieces of {piece}");
        assert!(h.is_authenticated());
        assert_eq!(h.caller().and_then(Caller::name), Some("a@127.0.0.1"));
    }
}

#[test]
fn the_caller_is_named_as_soon_as_its_send_name_is_whole() {
    let send_name = encode_send_name("a@h", OTP25_FLAGS, 1);
    let mut h = Handshake::new();
    let (head, tail) = send_name.split_at(send_name.len() - 1);
    h.feed(Side::Caller, head).unwrap();
    assert_eq!(h.caller(), None);
    h.feed(Side::Caller, tail).unwrap();
    assert_eq!(h.caller().and_then(Caller::name), Some("a@h"));
    assert!(!h.is_authenticated());
}

#[test]
fn link_traffic_after_the_ack_is_not_looked_at() {
    let mut messages = otp25();
    let mut ack_and_traffic = ack();
    ack_and_traffic.extend_from_slice(&[0, 0, 0, 0, 0xff, 0xff, 0xff]);
    messages[3].1 = ack_and_traffic;
    let mut h = Handshake::new();
    assert_eq!(
        run(&mut h, &messages, 64).last(),
        Some(&Progress::Authenticated)
    );
    // Anything at all, either way, once up.
    assert_eq!(
        h.feed(Side::Caller, &[0xff; 5000]),
        Ok(Progress::Authenticated)
    );
    assert_eq!(h.feed(Side::Node, b"GET /"), Ok(Progress::Authenticated));
}

#[test]
fn a_wrong_cookie_never_authenticates() {
    // The node closes after the reply instead of acking: nothing more to feed.
    let mut h = Handshake::new();
    let seen = run(&mut h, &otp25()[..3], 7);
    assert!(seen.iter().all(|p| *p == Progress::Pending));
    assert!(!h.is_authenticated());
}

#[test]
fn refusals_are_reported() {
    for status in ["nok", "not_allowed"] {
        let mut h = Handshake::new();
        h.feed(Side::Caller, &encode_send_name("a@h", OTP25_FLAGS, 1))
            .unwrap();
        let mut payload = b"s".to_vec();
        payload.extend_from_slice(status.as_bytes());
        assert_eq!(
            h.feed(Side::Node, &frame(&payload)),
            Ok(Progress::Refused(status.into()))
        );
        assert!(!h.is_authenticated());
    }
}

#[test]
fn alive_waits_for_the_callers_answer() {
    let mut h = Handshake::new();
    h.feed(Side::Caller, &encode_send_name("a@h", OTP25_FLAGS, 1))
        .unwrap();
    h.feed(Side::Node, &frame(b"salive")).unwrap();
    assert_eq!(
        h.feed(Side::Node, &challenge("b@h")),
        Err(Violation::OutOfTurn(Side::Node))
    );
    let mut h = Handshake::new();
    let messages = [
        (Side::Caller, encode_send_name("a@h", OTP25_FLAGS, 1)),
        (Side::Node, frame(b"salive")),
        (Side::Caller, frame(b"strue")),
        (Side::Node, challenge("b@h")),
        (Side::Caller, reply()),
        (Side::Node, ack()),
    ];
    assert_eq!(
        run(&mut h, &messages, 3).last(),
        Some(&Progress::Authenticated)
    );
}

#[test]
fn an_old_caller_may_send_its_complement() {
    let mut old = vec![b'n', 0x00, 0x05];
    old.extend_from_slice(&0x0007_7fbd_u32.to_be_bytes());
    old.extend_from_slice(b"old@h");
    let mut complement = vec![b'c'];
    complement.extend_from_slice(&[0, 0, 0, 0xd, 0, 0, 0, 1]);
    let messages = [
        (Side::Caller, frame(&old)),
        (Side::Node, frame(b"sok")),
        (Side::Node, challenge("b@h")),
        (Side::Caller, frame(&complement)),
        (Side::Caller, reply()),
        (Side::Node, ack()),
    ];
    let mut h = Handshake::new();
    assert_eq!(
        run(&mut h, &messages, 2).last(),
        Some(&Progress::Authenticated)
    );
    // A new caller has no complement to send.
    let mut h = Handshake::new();
    let new = &[(Side::Caller, encode_send_name("a@h", OTP25_FLAGS, 1))];
    run(&mut h, new, 100);
    run(
        &mut h,
        &[(Side::Node, frame(b"sok")), (Side::Node, challenge("b@h"))],
        100,
    );
    assert!(matches!(
        h.feed(Side::Caller, &frame(&complement)),
        Err(Violation::Unexpected {
            expected: "challenge reply",
            ..
        })
    ));
}

#[test]
fn name_me_takes_the_name_the_node_gives() {
    let mut h = Handshake::new();
    h.feed(Side::Caller, &encode_send_name("host", OTP25_FLAGS, 1))
        .unwrap();
    let mut named = b"snamed:".to_vec();
    named.extend_from_slice(&8u16.to_be_bytes());
    named.extend_from_slice(b"abc@host");
    named.extend_from_slice(&7u32.to_be_bytes());
    h.feed(Side::Node, &frame(&named)).unwrap();
    assert_eq!(h.caller().and_then(Caller::name), Some("abc@host"));
}

#[test]
fn out_of_turn_bytes_are_violations() {
    // The node speaking first.
    assert_eq!(
        Handshake::new().feed(Side::Node, b"\x00"),
        Err(Violation::OutOfTurn(Side::Node))
    );
    // The caller sending link traffic before the ack.
    let mut h = Handshake::new();
    run(&mut h, &otp25()[..3], 100);
    assert_eq!(
        h.feed(Side::Caller, &[0, 0, 0, 0]),
        Err(Violation::OutOfTurn(Side::Caller))
    );
    // The caller sending its reply before the challenge.
    let mut h = Handshake::new();
    let mut pipelined = encode_send_name("a@h", OTP25_FLAGS, 1);
    pipelined.extend(reply());
    assert_eq!(
        h.feed(Side::Caller, &pipelined),
        Err(Violation::OutOfTurn(Side::Caller))
    );
}

#[test]
fn malformed_frames_are_violations() {
    let cases: &[(&[u8], &str)] = &[
        (b"GET / HTTP/1.1\r\n", "too_long"),
        (b"\x00\x00", "unexpected_frame"),
        (b"\x00\x03xyz", "unexpected_frame"),
        (b"\x00\x02N\x00", "unexpected_frame"),
    ];
    for (bytes, reason) in cases {
        let got = Handshake::new().feed(Side::Caller, bytes);
        assert_eq!(got.map_err(|e| e.reason()), Err(*reason), "{bytes:?}");
    }
    // A node answering with a status nobody sends, or a short ack.
    let mut h = Handshake::new();
    h.feed(Side::Caller, &encode_send_name("a@h", OTP25_FLAGS, 1))
        .unwrap();
    assert!(h.feed(Side::Node, &frame(b"swhat")).is_err());
    let mut h = Handshake::new();
    run(&mut h, &otp25()[..3], 100);
    assert!(h.feed(Side::Node, &frame(b"a123")).is_err());
}

#[test]
fn violations_read_as_sentences() {
    let e = Violation::TooLong {
        side: Side::Caller,
        length: 18245,
    };
    assert_eq!(
        e.to_string(),
        "a 18245-byte frame from the caller, longer than any handshake frame"
    );
}

#[test]
fn the_nodes_name_is_known_while_the_caller_owes_its_reply() {
    let trace = otp25();
    let mut h = Handshake::new();
    run(&mut h, &trace[..1], 7);
    assert_eq!(h.awaiting_reply_from(), None, "no challenge yet");
    run(&mut h, &trace[1..2], 7);
    assert_eq!(h.awaiting_reply_from(), Some("b@127.0.0.1"));
    run(&mut h, &trace[2..], 7);
    assert_eq!(h.awaiting_reply_from(), None, "answered");
    // A name no node has (control characters, too long) is not kept.
    for name in ["b@host\n".to_owned(), format!("b@{}", "h".repeat(300))] {
        let mut h = Handshake::new();
        run(&mut h, &trace[..1], 64);
        let mut challenge_frame = frame(b"sok");
        challenge_frame.extend(challenge(&name));
        h.feed(Side::Node, &challenge_frame).unwrap();
        assert_eq!(h.awaiting_reply_from(), None, "{name:?}");
    }
}
