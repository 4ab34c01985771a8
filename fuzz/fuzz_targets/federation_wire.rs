//! The federation request and reply decoders: any bytes, whole or cut anywhere.
#![no_main]

use distgate::federation::wire::{MAX_REPLY, MAX_REQUEST, Reply, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((request, used))) = Request::decode(data) {
        // A request is whole within MAX_REQUEST bytes and re-encodes to those bytes.
        assert!(used <= MAX_REQUEST);
        assert_eq!(request.encode(), &data[..used]);
    }
    for carries_info in [false, true] {
        if let Ok(Some((reply, used))) = Reply::decode(data, carries_info) {
            assert!(used <= MAX_REPLY);
            assert_eq!(Reply::decode(&reply.encode(), carries_info), Ok(Some((reply, used))));
        }
    }
});
