//! Property tests of the two parsers that see raw network bytes: the
//! WebSocket frame header parser and the HTTP upgrade parser. Over arbitrary
//! input they never panic, and they accept exactly what RFC 6455 allows.

use proptest::prelude::*;
use sluice::wire::frame::{self, encode_client_frame, parse_header, MaskRule, Opcode};
use sluice::wire::http::{parse_request, validate_upgrade};

/// An independent, spelled-out reading of RFC 6455 §5.2 for one header.
fn rfc_verdict(buf: &[u8], rule: MaskRule, max: u64) -> Option<Result<(u64, usize), ()>> {
    if buf.len() < 2 {
        return None;
    }
    let (fin, rsv, op) = (buf[0] >> 7, (buf[0] >> 4) & 7, buf[0] & 0xF);
    let (masked, len7) = (buf[1] >> 7 == 1, (buf[1] & 0x7F) as u64);
    if rsv != 0 || ![0u8, 1, 2, 8, 9, 10].contains(&op) {
        return Some(Err(()));
    }
    if masked != (rule == MaskRule::Required) {
        return Some(Err(()));
    }
    let control = op >= 8;
    if control && (fin == 0 || len7 > 125) {
        return Some(Err(()));
    }
    let (len, at) = match len7 {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            let n = u16::from_be_bytes([buf[2], buf[3]]) as u64;
            if n < 126 {
                return Some(Err(()));
            }
            (n, 4)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            let n = u64::from_be_bytes(buf[2..10].try_into().unwrap());
            if n >> 63 == 1 || n <= 0xFFFF {
                return Some(Err(()));
            }
            (n, 10)
        }
        n => (n, 2),
    };
    if len > max {
        return Some(Err(()));
    }
    let at = if masked { at + 4 } else { at };
    if buf.len() < at {
        return None;
    }
    Some(Ok((len, at)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn frame_header_matches_the_rfc(bytes in proptest::collection::vec(any::<u8>(), 0..16), required in any::<bool>(), max in 0u64..200_000) {
        let rule = if required { MaskRule::Required } else { MaskRule::Forbidden };
        let ours = parse_header(&bytes, rule, max);
        match (rfc_verdict(&bytes, rule, max), ours) {
            (None, Ok(None)) => {}
            (Some(Err(())), Err(_)) => {}
            (Some(Ok((len, at))), Ok(Some(h))) => {
                prop_assert_eq!(h.payload_len, len);
                prop_assert_eq!(h.header_len, at);
            }
            (want, got) => prop_assert!(false, "rfc says {:?}, parser says {:?} for {:?}", want, got, bytes),
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn encoded_frames_roundtrip(payload in proptest::collection::vec(any::<u8>(), 0..70_000), key in any::<[u8; 4]>(), op in prop_oneof![Just(Opcode::Text), Just(Opcode::Binary), Just(Opcode::Continuation)], fin in any::<bool>()) {
        let f = encode_client_frame(op, fin, &payload, key);
        let h = parse_header(&f, MaskRule::Required, u64::MAX >> 1).unwrap().unwrap();
        prop_assert_eq!(h.fin, fin);
        prop_assert_eq!(h.opcode, op);
        prop_assert_eq!(h.frame_len() as usize, f.len());
        let mut p = f[h.header_len..].to_vec();
        frame::apply_mask(&mut p, h.mask.unwrap(), 0);
        prop_assert_eq!(p, payload);
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn http_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(Some(req)) = parse_request(&bytes, 1024, 16) {
            let _ = validate_upgrade(&req);
            prop_assert!(req.head_len <= bytes.len());
        }
    }

    #[test]
    fn upgrade_accepted_only_when_complete(drop_header in 0usize..6, host in "[a-z]{1,10}", key in proptest::collection::vec(any::<u8>(), 16)) {
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD.encode(key);
        let headers = [
            format!("Host: {host}"),
            "Upgrade: websocket".to_string(),
            "Connection: Upgrade".to_string(),
            format!("Sec-WebSocket-Key: {key}"),
            "Sec-WebSocket-Version: 13".to_string(),
            "X-Other: 1".to_string(),
        ];
        let mut text = String::from("GET /stream/s HTTP/1.1\r\n");
        for (i, h) in headers.iter().enumerate() {
            if i != drop_header {
                text.push_str(h);
                text.push_str("\r\n");
            }
        }
        text.push_str("\r\n");
        let req = parse_request(text.as_bytes(), 8192, 32).unwrap().unwrap();
        let ok = validate_upgrade(&req).is_ok();
        // Every header but the last (X-Other) is required.
        prop_assert_eq!(ok, drop_header == 5);
    }
}
