//! The EPMD client's reply decoders (the probe and the gateway read what an upstream
//! EPMD, or anything posing as one, sends back).
#![no_main]

use distgate::epmd::message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(found)) = message::decode_port2_resp(data) {
        assert!(found.info.extra.len() <= data.len());
    }
    if let Ok(names) = message::decode_names_resp(data) {
        assert!(names.len() <= data.len());
    }
});
