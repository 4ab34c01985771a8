//! The EPMD server's request decoder: any bytes, whole or cut anywhere.
#![no_main]

use distgate::epmd::message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The server asks for the frame length first, then decodes the buffered bytes.
    if let Ok(Some(len)) = message::frame_len(data) {
        assert!(len >= 3, "a frame has a length and a command byte");
    }
    if let Ok(Some(message::Request::Alive2(req))) = message::decode_request(data) {
        // What decodes re-encodes to a frame that decodes the same: bytes after
        // `extra` are accepted and dropped, as epmd does. (Without them, an empty name
        // with no extra is "too short" for epmd, so that one does not come back.)
        if !(req.name.is_empty() && req.info.extra.is_empty()) {
            let again = message::decode_request(&message::encode_alive2_req(&req));
            assert_eq!(again, Ok(Some(message::Request::Alive2(req.clone()))));
        }
        let _ = req.validate();
    }
});
