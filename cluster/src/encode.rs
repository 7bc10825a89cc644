//! How identifiers become NATS subject tokens and KV key parts.
//!
//! A tenant or session id may hold characters that NATS reads as syntax: `.` separates subject
//! tokens, `*` and `>` are wildcards, whitespace ends a subject, and KV keys allow only
//! `[-/_=.A-Za-z0-9]`. Every identifier is therefore encoded into one token of
//! `[A-Za-z0-9_-]`:
//!
//! - ASCII letters, digits and `-` stand for themselves;
//! - every other byte of the UTF-8 text (including `_` and `.`) becomes `_` and two uppercase
//!   hex digits (`acme.corp` → `acme_2Ecorp`, `a_b` → `a_5Fb`);
//! - the empty identifier becomes a lone `_` (never produced otherwise: a `_` is always followed
//!   by two hex digits).
//!
//! The encoding is injective (two different ids never share a token) and reversible
//! ([`decode`]), and the result is never empty, never holds `.`, `*`, `>` or whitespace, so it is
//! always exactly one subject token and a valid KV key part.

/// Encodes an identifier into one subject token / KV key part (see the module documentation).
pub fn encode(id: &str) -> String {
    if id.is_empty() {
        return "_".to_string();
    }
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(b as char);
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('_');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
    out
}

/// Decodes a token made by [`encode`]; `None` for anything [`encode`] cannot have produced.
pub fn decode(token: &str) -> Option<String> {
    if token == "_" {
        return Some(String::new());
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'_' {
            let hex = token.get(i + 1..i + 3)?;
            if !hex
                .bytes()
                .all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(&h))
            {
                return None;
            }
            let v = u8::from_str_radix(hex, 16).ok()?;
            if v.is_ascii_alphanumeric() || v == b'-' {
                return None; // encode never escapes these
            }
            out.push(v);
            i += 3;
        } else if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(b);
            i += 1;
        } else {
            return None;
        }
    }
    if out.is_empty() {
        return None;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_stays_one_token() {
        for id in [
            "",
            "acme",
            "acme.corp",
            "a_b",
            "_",
            "_2E",
            "*",
            ">",
            "a b\tc",
            "ünï.código",
            "0f8c2b1e-9d3a-4c55-b1e2-000000000001",
            "$KV.x",
        ] {
            let token = encode(id);
            assert!(!token.is_empty());
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{token:?}"
            );
            assert_eq!(decode(&token).as_deref(), Some(id), "{id:?} -> {token:?}");
        }
        assert_eq!(encode("acme.corp"), "acme_2Ecorp");
        assert_eq!(encode("a_b"), "a_5Fb");
    }

    #[test]
    fn distinct_ids_distinct_tokens() {
        let ids = ["a.b", "a_2Eb", "a_b", "a-b", "ab", "a..b", "", "_"];
        let tokens: std::collections::HashSet<String> = ids.iter().map(|i| encode(i)).collect();
        assert_eq!(tokens.len(), ids.len());
    }

    #[test]
    fn rejects_what_encode_never_makes() {
        for bad in ["", "a.b", "a_", "a_4", "a_41", "a_zz", "a_2e", "a*", "__"] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }
}
