//! Tests of the first-frame classifier: the trace docs/protocol.md records from OTP 25, the
//! old `n` form, every truncation point, TLS ClientHellos with and without SNI, and
//! garbage.

use super::*;

/// `send_name` as OTP 25 sent it (docs/protocol.md §13).
fn otp25_send_name() -> Vec<u8> {
    let mut frame = vec![0x00, 0x1a, b'N'];
    frame.extend_from_slice(&0x0000_000d_07df_7fbd_u64.to_be_bytes());
    frame.extend_from_slice(&0x1234_5678_u32.to_be_bytes());
    frame.extend_from_slice(&11u16.to_be_bytes());
    frame.extend_from_slice(b"a@127.0.0.1");
    frame
}

/// A minimal TLS 1.2-style ClientHello record, with SNI `host` when given.
fn client_hello(host: Option<&str>) -> Vec<u8> {
    let mut extensions = vec![];
    // An unrelated extension first (supported_groups).
    extensions.extend_from_slice(&[0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x17]);
    if let Some(host) = host {
        let name = host.as_bytes();
        let mut list = vec![0u8];
        list.extend_from_slice(&(name.len() as u16).to_be_bytes());
        list.extend_from_slice(name);
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend(list);
        extensions.extend_from_slice(&[0x00, 0x00]);
        extensions.extend_from_slice(&(data.len() as u16).to_be_bytes());
        extensions.extend(data);
    }
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7u8; 32]);
    body.extend_from_slice(&[0]); // no session id
    body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // one cipher suite
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend(extensions);
    let mut handshake = vec![0x01];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

#[test]
fn otp25_send_name_names_the_caller() {
    assert_eq!(
        classify(&otp25_send_name()),
        Peek::Done(Caller::Node {
            name: "a@127.0.0.1".into(),
            flags: 0x0000_000d_07df_7fbd,
            creation: Some(0x1234_5678),
        })
    );
}

#[test]
fn every_truncation_of_send_name_needs_more() {
    let frame = otp25_send_name();
    for cut in 0..frame.len() {
        assert!(
            matches!(classify(&frame[..cut]), Peek::NeedMore(n) if n > cut),
            "cut at {cut}"
        );
    }
}

#[test]
fn bytes_after_the_first_frame_are_ignored() {
    let mut frame = otp25_send_name();
    frame.extend_from_slice(b"\x00\x15r more handshake");
    assert_eq!(classify(&frame).clone(), classify(&otp25_send_name()));
}

#[test]
fn old_send_name_is_understood() {
    let mut frame = vec![0x00, 0x0f, b'n', 0x00, 0x05];
    frame.extend_from_slice(&0x0007_7fbd_u32.to_be_bytes());
    frame.extend_from_slice(b"old@host");
    assert_eq!(
        classify(&frame),
        Peek::Done(Caller::Node {
            name: "old@host".into(),
            flags: 0x0007_7fbd,
            creation: None,
        })
    );
}

#[test]
fn garbage_is_unknown_without_waiting() {
    // "GE" as a length is 18245 bytes: clearly not a send_name.
    assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Peek::Done(Caller::Unknown));
    assert_eq!(classify(&[0, 0]), Peek::Done(Caller::Unknown));
    assert_eq!(classify(b"\x00\x03xyz"), Peek::Done(Caller::Unknown));
    // A name length pointing past the frame.
    let mut short = otp25_send_name();
    short[16] = 0x40;
    assert_eq!(classify(&short), Peek::Done(Caller::Unknown));
    // Control characters in the name.
    let mut control = otp25_send_name();
    control[18] = b'\n';
    assert_eq!(classify(&control), Peek::Done(Caller::Unknown));
}

#[test]
fn tls_client_hello_gives_the_sni_host() {
    let hello = client_hello(Some("b.app-headless.prod.svc"));
    assert_eq!(
        classify(&hello),
        Peek::Done(Caller::Tls {
            sni: Some("b.app-headless.prod.svc".into())
        })
    );
    assert_eq!(
        classify(&client_hello(None)),
        Peek::Done(Caller::Tls { sni: None })
    );
    for cut in 0..hello.len() {
        assert!(
            matches!(classify(&hello[..cut]), Peek::NeedMore(_)),
            "cut at {cut}"
        );
    }
}

#[test]
fn a_client_hello_with_broken_extensions_is_tls_without_a_name() {
    let mut hello = client_hello(Some("host"));
    let last = hello.len() - 1;
    // Claim a longer extension block than the record holds.
    hello[last - 12] = 0xff;
    assert!(matches!(classify(&hello), Peek::Done(Caller::Tls { .. })));
}

#[test]
fn only_a_whole_client_hello_record_is_tls() {
    let hello = client_hello(Some("host"));
    let mut server_hello = hello.clone();
    server_hello[5] = 2;
    let mut version_05 = hello.clone();
    version_05[2] = 5;
    let mut short_body = hello.clone();
    short_body[8] -= 1; // the handshake claims one byte less than the record holds
    let mut long_record = hello.clone();
    long_record.push(0); // the record claims one byte more than the handshake
    let record_len = (long_record.len() - 5) as u16;
    long_record[3..5].copy_from_slice(&record_len.to_be_bytes());
    let empty = vec![0x16, 0x03, 0x01, 0x00, 0x00];
    let oversized = vec![0x16, 0x03, 0x03, 0x40, 0x01];
    for (what, bytes) in [
        ("a ServerHello", server_hello),
        ("version 03 05", version_05),
        ("a handshake shorter than its record", short_body),
        ("a record longer than its handshake", long_record),
        ("an empty record", empty),
        ("a record over 16,384 bytes", oversized),
    ] {
        assert_eq!(classify(&bytes), Peek::Done(Caller::Unknown), "{what}");
    }
}

/// The disguise: `16 03` as a `send_name`'s length (5,635 bytes, which OTP reads as
/// one frame), the `N` form after it. Never forwarded unexamined as TLS; too long for
/// a `send_name` distgate reads, so junk.
#[test]
fn a_send_name_that_starts_like_tls_is_not_tls() {
    let name = b"evil@host";
    let mut frame = vec![0x16, 0x03, b'N'];
    frame.extend_from_slice(&OTP25_FLAGS.to_be_bytes());
    frame.extend_from_slice(&1u32.to_be_bytes());
    frame.extend_from_slice(&(name.len() as u16).to_be_bytes());
    frame.extend_from_slice(name);
    frame.resize(2 + 0x1603, 0);
    assert_eq!(classify(&frame), Peek::Done(Caller::Unknown));
    assert!(parse_send_name(&frame[2..]).is_some(), "OTP would read it");
    assert_eq!(classify(&[0x16, 0x03]), Peek::NeedMore(3));
}

#[test]
fn send_name_round_trips() {
    let frame = encode_send_name("probe@h", OTP25_FLAGS, 7);
    assert_eq!(
        classify(&frame),
        Peek::Done(Caller::Node {
            name: "probe@h".into(),
            flags: OTP25_FLAGS,
            creation: Some(7),
        })
    );
}

#[test]
fn challenge_from_the_otp25_trace_parses() {
    // B→A challenge of docs/protocol.md §13, after its u16 length.
    let mut payload = vec![b'N'];
    payload.extend_from_slice(&OTP25_FLAGS.to_be_bytes());
    payload.extend_from_slice(&0xc9e0_8fc7_u32.to_be_bytes());
    payload.extend_from_slice(&0x1234_5678_u32.to_be_bytes());
    payload.extend_from_slice(&11u16.to_be_bytes());
    payload.extend_from_slice(b"b@127.0.0.1");
    assert_eq!(
        parse_challenge(&payload),
        Some(Challenge {
            name: "b@127.0.0.1".into(),
            flags: OTP25_FLAGS,
            creation: Some(0x1234_5678),
        })
    );
    for cut in 0..payload.len() {
        assert_eq!(parse_challenge(&payload[..cut]), None, "cut at {cut}");
    }
    let mut old = vec![b'n', 0, 5];
    old.extend_from_slice(&0x7fbd_u32.to_be_bytes());
    old.extend_from_slice(&1u32.to_be_bytes());
    old.extend_from_slice(b"old@host");
    assert_eq!(parse_challenge(&old).unwrap().name, "old@host");
}

#[test]
fn status_text_is_read() {
    assert_eq!(parse_status(b"sok").as_deref(), Some("ok"));
    assert_eq!(
        parse_status(b"snot_allowed").as_deref(),
        Some("not_allowed")
    );
    assert_eq!(parse_status(b"xok"), None);
}
