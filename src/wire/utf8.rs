//! Incremental UTF-8 validation of a text message whose frames are relayed
//! as they arrive (RFC 6455 §8.1: invalid UTF-8 fails the connection, 1007).

/// Carries at most 3 bytes of a character split across frames.
#[derive(Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

fn char_len(first: u8) -> usize {
    match first {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 1,
    }
}

impl Utf8Stream {
    /// Validates the next piece of a message; `fin` marks its last piece.
    pub fn feed(&mut self, mut data: &[u8], fin: bool) -> bool {
        if !self.pending.is_empty() {
            let need = char_len(self.pending[0]);
            let take = (need - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() < need {
                return !fin
                    && std::str::from_utf8(&self.pending)
                        .err()
                        .is_some_and(|e| e.error_len().is_none());
            }
            if std::str::from_utf8(&self.pending).is_err() {
                return false;
            }
            self.pending.clear();
        }
        match std::str::from_utf8(data) {
            Ok(_) => true,
            Err(e) if e.error_len().is_none() && !fin => {
                self.pending.extend_from_slice(&data[e.valid_up_to()..]);
                true
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_anywhere_still_valid() {
        let text = "añ€😀z".as_bytes();
        for cut in 0..=text.len() {
            let mut s = Utf8Stream::default();
            assert!(s.feed(&text[..cut], false), "cut {cut}");
            assert!(s.feed(&text[cut..], true), "cut {cut}");
        }
        for cut1 in 0..=text.len() {
            for cut2 in cut1..=text.len() {
                let mut s = Utf8Stream::default();
                assert!(s.feed(&text[..cut1], false));
                assert!(s.feed(&text[cut1..cut2], false));
                assert!(s.feed(&text[cut2..], true));
            }
        }
    }

    #[test]
    fn invalid_is_refused() {
        assert!(!Utf8Stream::default().feed(&[0xff], false));
        assert!(!Utf8Stream::default().feed(&[0xe2, 0x82], true));
        let mut s = Utf8Stream::default();
        assert!(s.feed(&[0xe2], false));
        assert!(!s.feed(&[0x41], true));
    }
}
