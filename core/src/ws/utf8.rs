//! Incremental UTF-8 validation across chunk and fragment boundaries.
//!
//! A text message may arrive split at any byte, so a code point may straddle two chunks (or two
//! frames). [`Utf8Validator`] keeps the up to 3 bytes of an unfinished code point between calls and
//! fails fast: the first byte that can never be part of valid UTF-8 is reported by the call that
//! sees it, even when the sequence it belongs to is not finished yet (`0xE0 0x80` is an overlong
//! prefix, `0xED 0xA0` a surrogate prefix, `0xF4 0x90` beyond U+10FFFF).
//!
//! The bulk of every chunk goes through `std::str::from_utf8`; only the bytes around a code point
//! cut by a chunk boundary, or around an error, are checked byte by byte.

/// The first byte of a chunk that can never be part of valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8 {
    /// Index, within the chunk given to [`Utf8Validator::feed`], of the offending byte.
    pub at: usize,
}

/// Validates a byte stream chunk by chunk. After an error its state is meaningless until
/// [`Utf8Validator::reset`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Utf8Validator {
    /// The bytes of the unfinished code point (`partial[0]` is its lead byte).
    partial: [u8; 3],
    /// How many bytes of `partial` are in use (0 when between code points).
    len: u8,
}

/// Total length of the sequence introduced by `lead`, or `None` when `lead` cannot start one
/// (continuation bytes, the overlong leads 0xC0 and 0xC1, and 0xF5..=0xFF).
fn sequence_len(lead: u8) -> Option<u8> {
    match lead {
        0x00..=0x7F => Some(1),
        0xC2..=0xDF => Some(2),
        0xE0..=0xEF => Some(3),
        0xF0..=0xF4 => Some(4),
        _ => None,
    }
}

/// Whether `byte` may follow `lead` as the second byte of a sequence: the ranges of RFC 3629
/// section 4, which rule out overlong forms, surrogates and code points past U+10FFFF.
fn valid_second(lead: u8, byte: u8) -> bool {
    match lead {
        0xE0 => matches!(byte, 0xA0..=0xBF),
        0xED => matches!(byte, 0x80..=0x9F),
        0xF0 => matches!(byte, 0x90..=0xBF),
        0xF4 => matches!(byte, 0x80..=0x8F),
        _ => matches!(byte, 0x80..=0xBF),
    }
}

impl Utf8Validator {
    /// A validator between code points, as at the start of a message.
    pub const fn new() -> Self {
        Utf8Validator {
            partial: [0; 3],
            len: 0,
        }
    }

    /// Forgets any unfinished code point (start of a new message, or after an error).
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// True when the bytes fed so far end on a code point boundary.
    pub fn is_complete(&self) -> bool {
        self.len == 0
    }

    /// The end of the stream: an unfinished code point is an error (reported at index 0, the
    /// position right after the last chunk). Resets the validator either way.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let complete = self.is_complete();
        self.reset();
        if complete {
            Ok(())
        } else {
            Err(InvalidUtf8 { at: 0 })
        }
    }

    /// Validates the next `chunk` of the stream. An error names the first byte of `chunk` that
    /// cannot be part of valid UTF-8 given everything fed before it.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), InvalidUtf8> {
        let mut start = 0;
        // Finish the code point the previous chunk left open, byte by byte.
        while self.len != 0 {
            let Some(&byte) = chunk.get(start) else {
                return Ok(());
            };
            if !self.step(byte) {
                return Err(InvalidUtf8 { at: start });
            }
            start += 1;
        }
        let rest = chunk.get(start..).unwrap_or_default();
        match std::str::from_utf8(rest) {
            Ok(_) => Ok(()),
            Err(error) => {
                // Either an invalid sequence or an unfinished one at the end: walk from the first
                // byte std did not accept to find the exact offending byte (std's `error_len`
                // counts the maximal valid prefix, so the culprit may be its lead or a later
                // byte), or to keep the unfinished tail (at most 3 bytes, each checked so that an
                // impossible prefix fails now rather than when the code point would end).
                let from = start + error.valid_up_to();
                for (index, &byte) in chunk.iter().enumerate().skip(from) {
                    if !self.step(byte) {
                        return Err(InvalidUtf8 { at: index });
                    }
                }
                Ok(())
            }
        }
    }

    /// Advances the byte-level state machine by one byte; false when `byte` is invalid here.
    fn step(&mut self, byte: u8) -> bool {
        match self.len {
            0 => match sequence_len(byte) {
                Some(1) => true,
                Some(_) => {
                    self.partial[0] = byte;
                    self.len = 1;
                    true
                }
                None => false,
            },
            len => {
                let lead = self.partial[0];
                let ok = if len == 1 {
                    valid_second(lead, byte)
                } else {
                    matches!(byte, 0x80..=0xBF)
                };
                if !ok {
                    return false;
                }
                let total = sequence_len(lead).unwrap_or(0);
                if len + 1 >= total {
                    self.len = 0;
                } else if let Some(slot) = self.partial.get_mut(usize::from(len)) {
                    *slot = byte;
                    self.len = len + 1;
                } else {
                    // Unreachable: a sequence is at most 4 bytes, so at most 3 are ever pending.
                    return false;
                }
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reference: the index of the first byte after which `bytes` is no longer a prefix of valid
    /// UTF-8, computed from std alone (an `error_len` of `None` means "valid so far, unfinished").
    fn first_invalid(bytes: &[u8]) -> Option<usize> {
        (0..bytes.len()).find(
            |&end| matches!(std::str::from_utf8(&bytes[..=end]), Err(e) if e.error_len().is_some()),
        )
    }

    fn feed_chunks(bytes: &[u8], sizes: &[usize]) -> Result<bool, usize> {
        let mut validator = Utf8Validator::new();
        let mut offset = 0;
        let mut sizes = sizes.iter().cycle();
        while offset < bytes.len() {
            let size = (*sizes.next().unwrap_or(&1)).clamp(1, bytes.len() - offset);
            let chunk = &bytes[offset..offset + size];
            validator.feed(chunk).map_err(|e| {
                assert!(e.at < chunk.len());
                offset + e.at
            })?;
            offset += size;
        }
        Ok(validator.is_complete())
    }

    #[test]
    fn impossible_bytes_fail_at_once() {
        for byte in [0x80, 0xBF, 0xC0, 0xC1, 0xF5, 0xF8, 0xFE, 0xFF] {
            let mut v = Utf8Validator::new();
            assert_eq!(
                v.feed(&[b'a', byte]),
                Err(InvalidUtf8 { at: 1 }),
                "{byte:#x}"
            );
        }
    }

    #[test]
    fn impossible_prefixes_fail_before_the_code_point_ends() {
        for (prefix, bad) in [
            (&[0xE0u8][..], 0x80u8), // overlong 3-byte form
            (&[0xE0], 0x9F),
            (&[0xED], 0xA0), // UTF-16 surrogate
            (&[0xED], 0xBF),
            (&[0xF0], 0x80), // overlong 4-byte form
            (&[0xF0], 0x8F),
            (&[0xF4], 0x90), // past U+10FFFF
            (&[0xC2], 0x41), // continuation expected
            (&[0xE1, 0x80], 0xC0),
            (&[0xF1, 0x80, 0x80], 0x7F),
        ] {
            // The prefix alone, in its own chunk, is fine: it can still become valid.
            let mut v = Utf8Validator::new();
            assert_eq!(v.feed(prefix), Ok(()), "{prefix:x?}");
            assert!(!v.is_complete());
            assert_eq!(
                v.feed(&[bad, b'a']),
                Err(InvalidUtf8 { at: 0 }),
                "{prefix:x?} {bad:#x}"
            );
            // And in one chunk the error names the same byte.
            let mut whole = prefix.to_vec();
            whole.push(bad);
            let mut v = Utf8Validator::new();
            assert_eq!(v.feed(&whole), Err(InvalidUtf8 { at: prefix.len() }));
        }
    }

    #[test]
    fn unfinished_tail_is_kept_across_chunks() {
        let text = "a\u{7FF}\u{FFFF}\u{10FFFF}é€𝄞";
        for split in 0..=text.len() {
            let (a, b) = text.as_bytes().split_at(split);
            let mut v = Utf8Validator::new();
            assert_eq!(v.feed(a), Ok(()));
            assert_eq!(v.feed(b), Ok(()));
            assert_eq!(v.finish(), Ok(()));
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let text = "€𝄞\u{10FFFF}x";
        let mut v = Utf8Validator::new();
        for byte in text.as_bytes() {
            assert_eq!(v.feed(std::slice::from_ref(byte)), Ok(()));
        }
        assert!(v.is_complete());
    }

    #[test]
    fn finish_rejects_an_unfinished_code_point() {
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(&[b'a', 0xF0, 0x9F]), Ok(()));
        assert!(v.finish().is_err());
        assert!(v.is_complete(), "finish resets");
    }

    #[test]
    fn empty_chunks_change_nothing() {
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(&[0xE2]), Ok(()));
        assert_eq!(v.feed(&[]), Ok(()));
        assert_eq!(v.feed(&[0x82, 0xAC]), Ok(()));
        assert!(v.is_complete());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Arbitrary bytes (biased towards UTF-8-looking ones) in arbitrary chunks: the error is
        /// reported at exactly the byte std's own prefix check rejects, and a clean stream ends
        /// complete exactly when std accepts it.
        #[test]
        fn matches_std_for_any_chunking(
            bytes in prop::collection::vec(
                prop_oneof![
                    any::<u8>(),
                    0x80u8..=0xBF,
                    Just(0xE0u8), Just(0xEDu8), Just(0xF0u8), Just(0xF4u8),
                ],
                0..48,
            ),
            sizes in prop::collection::vec(1usize..8, 1..10),
        ) {
            let expected = first_invalid(&bytes);
            match feed_chunks(&bytes, &sizes) {
                Err(at) => prop_assert_eq!(Some(at), expected),
                Ok(complete) => {
                    prop_assert_eq!(expected, None);
                    prop_assert_eq!(complete, std::str::from_utf8(&bytes).is_ok());
                }
            }
        }

        #[test]
        fn valid_text_in_any_chunking(text in "\\PC*", sizes in prop::collection::vec(1usize..8, 1..10)) {
            prop_assert_eq!(feed_chunks(text.as_bytes(), &sizes), Ok(true));
        }
    }
}
