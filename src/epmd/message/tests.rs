//! Codec tests: every request, every truncation point, every malformed field, and the
//! reply bytes docs/protocol.md records from the real epmd.

use super::*;

fn alive2(name: &[u8], extra: &[u8], highest: u16) -> Alive2Req {
    Alive2Req {
        name: name.to_vec(),
        info: NodeInfo {
            highest_version: highest,
            extra: extra.to_vec(),
            ..NodeInfo::OTP23
        },
        ..Alive2Req::otp23("", 43783)
    }
}

fn malformed_kind(result: Result<Option<Request>, FrameError>) -> &'static str {
    match result {
        Err(FrameError::Malformed { kind, .. }) => kind,
        other => panic!("expected a malformed request, got {other:?}"),
    }
}

#[test]
fn alive2_req_from_a_real_otp25_node_decodes() {
    // docs/protocol.md §3: node b@127.0.0.1, port 43783, high 6, low 5.
    let wire = [
        0x00, 0x0e, 0x78, 0xab, 0x07, 0x4d, 0x00, 0x00, 0x06, 0x00, 0x05, 0x00, 0x01, 0x62, 0x00,
        0x00,
    ];
    let expected = Alive2Req {
        port: 43783,
        name: b"b".to_vec(),
        info: NodeInfo {
            node_type: NodeType::Normal,
            protocol: 0,
            highest_version: 6,
            lowest_version: 5,
            extra: vec![],
        },
    };
    assert_eq!(
        decode_request(&wire),
        Ok(Some(Request::Alive2(expected.clone())))
    );
    assert_eq!(encode_alive2_req(&expected), wire);
}

#[test]
fn every_truncation_of_every_request_is_incomplete() {
    let requests = [
        encode_alive2_req(&alive2(b"node", b"EXT\0\x01", 6)),
        frame(b"zalpha"),
        frame(b"n"),
        frame(b"d"),
        frame(b"k"),
        frame(b"salpha"),
    ];
    for wire in requests {
        for cut in 0..wire.len() {
            assert_eq!(
                decode_request(&wire[..cut]),
                Ok(None),
                "{wire:?} cut at {cut}"
            );
        }
        assert!(matches!(decode_request(&wire), Ok(Some(_))), "{wire:?}");
    }
}

#[test]
fn simple_requests_decode() {
    assert_eq!(decode_request(&frame(b"n")), Ok(Some(Request::Names)));
    assert_eq!(decode_request(&frame(b"d")), Ok(Some(Request::Dump)));
    assert_eq!(decode_request(&frame(b"k")), Ok(Some(Request::Kill)));
    assert_eq!(
        decode_request(&frame(b"salpha")),
        Ok(Some(Request::Stop {
            name: b"alpha".to_vec()
        }))
    );
}

#[test]
fn zero_length_is_refused_at_once() {
    assert_eq!(decode_request(&[0, 0]), Err(FrameError::Empty));
}

#[test]
fn length_limit_is_3057() {
    let mut at_limit = vec![0x0b, 0xf1, b'z'];
    at_limit.extend(std::iter::repeat_n(b'a', 3056));
    assert_eq!(frame_len(&at_limit), Ok(Some(3059)));
    assert!(decode_request(&at_limit).is_err(), "3056-char name");
    assert_eq!(
        decode_request(&[0x0b, 0xf2]),
        Err(FrameError::TooLong(3058))
    );
    assert_eq!(
        decode_request(&[0xff, 0xff, b'n']),
        Err(FrameError::TooLong(65535))
    );
}

#[test]
fn bytes_after_the_frame_are_refused() {
    let mut wire = frame(b"n");
    wire.push(b'x');
    assert_eq!(decode_request(&wire), Err(FrameError::TrailingBytes(1)));
    let mut pipelined = frame(b"zalpha");
    pipelined.extend(frame(b"n"));
    assert_eq!(
        decode_request(&pipelined),
        Err(FrameError::TrailingBytes(3))
    );
}

#[test]
fn unknown_commands_are_refused() {
    for command in [b'a', b'y', b'v', b'w', 0, 0xff, b'G'] {
        assert_eq!(
            decode_request(&frame(&[command])),
            Err(FrameError::UnknownCommand(command))
        );
    }
}

#[test]
fn alive2_shorter_than_its_fixed_part_is_malformed() {
    let full = encode_alive2_req(&alive2(b"a", b"", 6));
    // Payload sizes 1..=13 (Nlen=0 and no extra is 13 bytes) are all too short.
    for size in 1..=13 {
        let wire = frame(&full[2..2 + size]);
        assert_eq!(
            malformed_kind(decode_request(&wire)),
            "ALIVE2_REQ",
            "{size}"
        );
    }
    let empty_name = encode_alive2_req(&alive2(b"", b"", 6));
    assert_eq!(malformed_kind(decode_request(&empty_name)), "ALIVE2_REQ");
}

#[test]
fn alive2_lengths_that_overflow_the_frame_are_malformed() {
    let mut wire = encode_alive2_req(&alive2(b"node", b"xy", 6));
    // Nlen at payload offset 9 → frame offset 11.
    wire[12] = 200;
    assert_eq!(malformed_kind(decode_request(&wire)), "ALIVE2_REQ");
    let mut wire = encode_alive2_req(&alive2(b"node", b"xy", 6));
    // Elen follows the 4-byte name.
    wire[17] = 3;
    assert_eq!(malformed_kind(decode_request(&wire)), "ALIVE2_REQ");
}

#[test]
fn alive2_with_nul_in_name_is_malformed() {
    for name in [&b"a\0b"[..], b"ab\0", b"\0"] {
        let wire = encode_alive2_req(&alive2(name, b"", 6));
        assert_eq!(malformed_kind(decode_request(&wire)), "ALIVE2_REQ");
    }
}

#[test]
fn alive2_extra_may_hold_nuls_and_trailing_payload_is_ignored() {
    let req = alive2(b"node", b"EXT\0\x01", 6);
    let mut wire = encode_alive2_req(&req);
    assert_eq!(
        decode_request(&wire),
        Ok(Some(Request::Alive2(req.clone())))
    );
    // Bytes inside Len but after Extra are tolerated by epmd's size checks.
    wire.push(0xaa);
    let len = u16::from_be_bytes([wire[0], wire[1]]) + 1;
    wire[..2].copy_from_slice(&len.to_be_bytes());
    assert_eq!(decode_request(&wire), Ok(Some(Request::Alive2(req))));
}

#[test]
fn alive2_name_checks_match_node_reg2() {
    assert_eq!(alive2(b"ok", b"", 6).validate(), Ok("ok"));
    assert_eq!(
        alive2(b"\xff\xfe", b"", 6).validate(),
        Err(NameError::NotUtf8)
    );
    assert_eq!(
        alive2(&[b'a'; 255], b"", 6).validate().map(str::len),
        Ok(255)
    );
    assert_eq!(
        alive2(&[b'a'; 256], b"", 6).validate(),
        Err(NameError::TooManyChars)
    );
    let emoji = "😀".repeat(255);
    assert_eq!(emoji.len(), 1020);
    assert!(alive2(emoji.as_bytes(), b"", 6).validate().is_ok());
    assert_eq!(
        alive2(&[b'a'; 1021], b"", 6).validate(),
        Err(NameError::TooLong)
    );
    assert_eq!(
        alive2(b"a", &[0; 1021], 6).validate(),
        Err(NameError::ExtraTooLong)
    );
}

#[test]
fn port_please2_names() {
    let found = |wire: &[u8]| match decode_request(&frame(wire)) {
        Ok(Some(Request::PortPlease2 { name })) => name,
        other => panic!("{wire:?}: {other:?}"),
    };
    assert_eq!(found(b"zalpha"), "alpha");
    assert_eq!(found(b"zalpha\0"), "alpha", "one trailing NUL is stripped");
    assert_eq!(found("zé".as_bytes()), "é");
    let mut longest = vec![b'z'];
    longest.extend([b'a'; 254]);
    assert_eq!(found(&longest).len(), 254);
}

#[test]
fn port_please2_malformed_names_are_refused() {
    let mut too_long = vec![b'z'];
    too_long.extend([b'a'; 255]);
    for wire in [
        &b"zal\0pha"[..],
        b"zalpha\0\0",
        b"z\xff\xfe",
        b"z",
        b"z\0",
        &too_long,
    ] {
        assert_eq!(
            malformed_kind(decode_request(&frame(wire))),
            "PORT_PLEASE2_REQ",
            "{wire:?}"
        );
    }
}

#[test]
fn stop_needs_a_name() {
    assert_eq!(malformed_kind(decode_request(&frame(b"s"))), "STOP_REQ");
    assert_eq!(
        malformed_kind(decode_request(&frame(b"s\0abc"))),
        "STOP_REQ"
    );
    assert_eq!(
        decode_request(&frame(b"sab\0cd")),
        Ok(Some(Request::Stop {
            name: b"ab".to_vec()
        }))
    );
}

#[test]
fn alive2_replies_match_epmd() {
    assert_eq!(
        encode_alive2_resp(true, Some(0x6b08_4fda)),
        [0x76, 0, 0x6b, 0x08, 0x4f, 0xda]
    );
    assert_eq!(encode_alive2_resp(true, None), [0x76, 1, 0, 0, 0, 0x63]);
    assert_eq!(encode_alive2_resp(false, None), [0x79, 1, 0, 0x63]);
    // `y` carries creation % 3 + 1.
    assert_eq!(encode_alive2_resp(false, Some(3)), [0x79, 0, 0, 1]);
    assert_eq!(encode_alive2_resp(false, Some(4)), [0x79, 0, 0, 2]);
    assert_eq!(encode_alive2_resp(false, Some(5)), [0x79, 0, 0, 3]);
    assert!(alive2(b"a", b"", 6).wants_x_resp());
    assert!(!alive2(b"a", b"", 5).wants_x_resp());
}

#[test]
fn port2_replies_match_epmd() {
    // docs/protocol.md §5: "alpha", port 50001, hv6/lv6, no extra.
    let info = Port2Resp {
        port: 50001,
        name: "alpha".into(),
        info: NodeInfo {
            node_type: NodeType::Normal,
            protocol: 0,
            highest_version: 6,
            lowest_version: 6,
            extra: vec![],
        },
    };
    assert_eq!(
        encode_port2_resp(Some(&info)),
        [
            0x77, 0x00, 0xc3, 0x51, 0x4d, 0x00, 0x00, 0x06, 0x00, 0x06, 0x00, 0x05, 0x61, 0x6c,
            0x70, 0x68, 0x61, 0x00, 0x00
        ]
    );
    let with_extra = Port2Resp {
        info: NodeInfo {
            extra: b"EXT\0\x01".to_vec(),
            ..info.info.clone()
        },
        ..info
    };
    assert!(encode_port2_resp(Some(&with_extra)).ends_with(&[0, 5, b'E', b'X', b'T', 0, 1]));
    assert_eq!(encode_port2_resp(None), [0x77, 0x01]);
}

#[test]
fn names_and_dump_lines_match_epmd() {
    assert_eq!(encode_port_header(4369), [0, 0, 0x11, 0x11]);
    assert_eq!(encode_port_header(14369), [0, 0, 0x38, 0x21]);
    assert_eq!(encode_names_line("b", 43783), "name b at port 43783\n");
    assert_eq!(
        encode_dump_active("b", 43783, 7),
        "active name     <b> at port 43783, fd = 7\n\0"
    );
    assert_eq!(
        encode_dump_unused("b", 43783, 7),
        "old/unused name <b>, port = 43783, fd = 7 \n\0"
    );
}

#[test]
fn frame_errors_have_bounded_reasons() {
    let reasons = [
        FrameError::Empty.reason(),
        FrameError::TooLong(9999).reason(),
        FrameError::TrailingBytes(1).reason(),
        FrameError::UnknownCommand(1).reason(),
        malformed("x", "y").reason(),
    ];
    assert_eq!(
        reasons,
        [
            "empty",
            "too_long",
            "trailing_bytes",
            "unknown_command",
            "malformed"
        ]
    );
}

#[test]
fn port2_replies_decode_back() {
    let info = Port2Resp {
        port: 50001,
        name: "alpha".into(),
        info: NodeInfo {
            extra: b"EXT\0\x01".to_vec(),
            ..NodeInfo::OTP23
        },
    };
    let wire = encode_port2_resp(Some(&info));
    let back = decode_port2_resp(&wire).unwrap().unwrap();
    assert_eq!(
        (back.port, back.name.as_str(), back.info.extra.as_slice()),
        (50001, "alpha", &b"EXT\0\x01"[..])
    );
    assert_eq!(decode_port2_resp(&[0x77, 0x01]), Ok(None));
    for cut in 2..wire.len() {
        assert!(decode_port2_resp(&wire[..cut]).is_err(), "cut at {cut}");
    }
    assert!(decode_port2_resp(b"HTTP").is_err());
}

#[test]
fn names_replies_decode_and_skip_odd_lines() {
    let mut reply = encode_port_header(4369).to_vec();
    reply.extend_from_slice(encode_names_line("app-0", 43691).as_bytes());
    reply.extend_from_slice(b"garbage line\nname x at port 99999\n");
    reply.extend_from_slice(encode_names_line("with at port in it", 7).as_bytes());
    assert_eq!(
        decode_names_resp(&reply).unwrap(),
        [
            ("app-0".to_owned(), 43691),
            ("with at port in it".to_owned(), 7)
        ]
    );
    assert_eq!(decode_names_resp(&reply[..4]).unwrap(), []);
    assert!(decode_names_resp(&reply[..3]).is_err());
    assert!(decode_names_resp(b"\0\0\x11\x11\xff").is_err());
}
