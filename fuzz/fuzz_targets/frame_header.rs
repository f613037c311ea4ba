//! Arbitrary bytes into the frame header parser, under both masking rules:
//! never a panic, and an accepted header always describes a frame whose
//! header fits in the bytes it was parsed from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::wire::frame::{apply_mask, parse_close, parse_header, MaskRule};

fuzz_target!(|data: &[u8]| {
    for rule in [MaskRule::Required, MaskRule::Forbidden] {
        if let Ok(Some(h)) = parse_header(data, rule, 1 << 24) {
            assert!(h.header_len <= data.len());
            assert!(h.header_len <= 14);
            let end = data.len().min(h.frame_len() as usize);
            let mut payload = data[h.header_len..end].to_vec();
            if let Some(k) = h.mask {
                apply_mask(&mut payload, k, 0);
            }
            let _ = parse_close(&payload);
        }
    }
});
