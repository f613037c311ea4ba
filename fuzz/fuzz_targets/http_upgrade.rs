//! Arbitrary bytes into the request-head parser and the upgrade validator:
//! never a panic, and a parsed head never claims more bytes than it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::wire::http::{parse_request, validate_upgrade};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(req)) = parse_request(data, 8192, 64) {
        assert!(req.head_len <= data.len());
        let _ = validate_upgrade(&req);
        let _ = req.query_param("token");
    }
});
