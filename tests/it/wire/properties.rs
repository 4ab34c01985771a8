//! Property tests for the pure codecs: what distgate encodes decodes to the same
//! value, and no input at all makes a decoder panic. (The fuzz targets in `fuzz/`
//! search the same decoders for longer, guided by coverage.)

use distgate::epmd::NodeInfo;
use distgate::epmd::message::{self, Alive2Req, Port2Resp, Request};
use distgate::handshake::{self, Caller, Peek};
use proptest::prelude::*;

fn alive2() -> impl Strategy<Value = Alive2Req> {
    (
        any::<u16>(),
        any::<u8>(),
        any::<u8>(),
        any::<u16>(),
        any::<u16>(),
        proptest::collection::vec(any::<u8>(), 0..=message::MAX_SYMLEN),
        proptest::collection::vec(any::<u8>(), 0..=1024),
    )
        .prop_map(
            |(port, node_type, protocol, highest_version, lowest_version, name, extra)| Alive2Req {
                port,
                name,
                info: NodeInfo {
                    node_type: node_type.into(),
                    protocol,
                    highest_version,
                    lowest_version,
                    extra,
                },
            },
        )
        // Frames longer than epmd's limit are refused by design, not decoded.
        .prop_filter("fits in one request", |req| {
            13 + req.name.len() + req.info.extra.len() <= message::MAX_REQUEST_LEN
        })
}

/// Requests epmd decodes: no NUL in the name (epmd compares names as C strings), and
/// not both name and extra empty (epmd's "too short").
fn decodable(req: &Alive2Req) -> bool {
    let nul_in_name = req.name.contains(&0);
    let nothing = req.name.is_empty() && req.info.extra.is_empty();
    !nul_in_name && !nothing
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn alive2_requests_round_trip(req in alive2().prop_filter("decodable", decodable)) {
        let wire = message::encode_alive2_req(&req);
        prop_assert_eq!(message::decode_request(&wire), Ok(Some(Request::Alive2(req))));
    }

    #[test]
    fn alive2_requests_epmd_refuses_are_refused(req in alive2()) {
        let decoded = message::decode_request(&message::encode_alive2_req(&req));
        prop_assert_eq!(decoded.is_ok(), decodable(&req), "{:?}", decoded);
    }

    #[test]
    fn a_request_cut_short_asks_for_more(req in alive2(), cut in any::<prop::sample::Index>()) {
        let wire = message::encode_alive2_req(&req);
        let at = cut.index(wire.len());
        prop_assert_eq!(message::decode_request(&wire[..at]), Ok(None));
    }

    #[test]
    fn port2_replies_round_trip(
        port in any::<u16>(), node_type in any::<u8>(), protocol in any::<u8>(),
        highest_version in any::<u16>(), lowest_version in any::<u16>(),
        name in "[a-z0-9_-]{1,200}",
        extra in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let info = Port2Resp {
            port,
            name: name.clone(),
            info: NodeInfo { node_type: node_type.into(), protocol, highest_version, lowest_version, extra: extra.clone() },
        };
        let found = message::decode_port2_resp(&message::encode_port2_resp(Some(&info)))
            .unwrap()
            .unwrap();
        prop_assert_eq!(
            (found.port, found.info.node_type.byte(), found.info.protocol, found.info.highest_version, found.info.lowest_version),
            (port, node_type, protocol, highest_version, lowest_version)
        );
        prop_assert_eq!(found.name, name);
        prop_assert_eq!(found.info.extra, extra);
        prop_assert_eq!(message::decode_port2_resp(&message::encode_port2_resp(None)), Ok(None));
    }

    #[test]
    fn names_replies_round_trip(
        entries in proptest::collection::vec(("[a-zA-Z0-9_-]{1,64}", any::<u16>()), 0..50),
        dialled in any::<u16>(),
    ) {
        let mut reply = message::encode_port_header(dialled).to_vec();
        for (name, port) in &entries {
            reply.extend_from_slice(message::encode_names_line(name, *port).as_bytes());
        }
        prop_assert_eq!(message::decode_names_resp(&reply), Ok(entries));
    }

    #[test]
    fn send_name_frames_name_their_caller(
        name in "[a-z0-9_-]{1,40}@[a-z0-9.-]{1,60}",
        flags in any::<u64>(),
        creation in any::<u32>(),
    ) {
        let frame = handshake::encode_send_name(&name, flags, creation);
        prop_assert_eq!(
            handshake::classify(&frame),
            Peek::Done(Caller::Node { name: name.clone(), flags, creation: Some(creation) })
        );
        // Any prefix asks for more, never misnames the caller.
        for at in 0..frame.len() {
            let partial = handshake::classify(&frame[..at]);
            prop_assert!(matches!(partial, Peek::NeedMore(n) if n > at), "{:?} at {}", partial, at);
        }
    }

    #[test]
    fn no_input_makes_a_decoder_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = message::frame_len(&bytes);
        let _ = message::decode_request(&bytes);
        let _ = message::decode_port2_resp(&bytes);
        let _ = message::decode_names_resp(&bytes);
        let _ = handshake::classify(&bytes);
        let _ = handshake::parse_challenge(&bytes);
    }

    #[test]
    fn no_text_makes_the_config_loader_panic(text in "\\PC{0,400}") {
        let _ = distgate::config::parse(&text);
    }
}
