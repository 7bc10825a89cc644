//! Static assets the gateway serves from memory: the web console (`/` and `/assets/*`). The
//! table is built by the caller (the adapters embed `console/dist/` with `include_bytes!`), so the
//! core never reads a file; each asset's `ETag` is a SHA-256 of its bytes, computed once here.

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::http::Response;

/// The console's Content-Security-Policy: nothing inline, nothing from elsewhere, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; font-src 'self'; \
     object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// One asset: where it is served, what it is, its bytes and its entity tag.
#[derive(Clone)]
pub struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: Bytes,
    etag: String,
}

impl Asset {
    /// An asset served at `path` (exactly, e.g. `/` or `/assets/app.js`) with `content_type`.
    pub fn new(path: &'static str, content_type: &'static str, body: &'static [u8]) -> Asset {
        let digest = Sha256::digest(body);
        let hex: String = digest[..16]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        Asset {
            path,
            content_type,
            body: Bytes::from_static(body),
            etag: format!("\"{hex}\""),
        }
    }

    /// The request path it answers.
    pub fn path(&self) -> &'static str {
        self.path
    }

    /// Its strong entity tag, quoted (`"<32 hex digits>"`).
    pub fn etag(&self) -> &str {
        &self.etag
    }
}

/// A table of assets, looked up by exact path.
#[derive(Clone, Default)]
pub struct Assets {
    assets: Vec<Asset>,
}

impl std::fmt::Debug for Assets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.assets
                    .iter()
                    .map(|asset| (asset.path, asset.body.len())),
            )
            .finish()
    }
}

impl Assets {
    /// A table of `assets`; a later asset with a path already present is ignored.
    pub fn new(assets: Vec<Asset>) -> Assets {
        let mut table: Vec<Asset> = Vec::with_capacity(assets.len());
        for asset in assets {
            if table.iter().all(|known| known.path != asset.path) {
                table.push(asset);
            }
        }
        Assets { assets: table }
    }

    /// The asset served at `path`, if any.
    pub fn get(&self, path: &str) -> Option<&Asset> {
        self.assets.iter().find(|asset| asset.path == path)
    }

    /// Every asset, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = &Asset> {
        self.assets.iter()
    }

    /// The response to a `GET`/`HEAD` of `path`: `200` with the asset, `304` when `if_none_match`
    /// names its tag; `None` when no asset has that path. Every answer revalidates
    /// (`Cache-Control: no-cache`) and carries the console's security headers.
    pub fn respond(&self, path: &str, if_none_match: Option<&str>) -> Option<Response> {
        let asset = self.get(path)?;
        let fresh = if_none_match.is_some_and(|header| etag_matches(header, &asset.etag));
        let response = if fresh {
            Response::new(304)
        } else {
            Response::new(200).body(asset.content_type, asset.body.clone())
        };
        Some(
            response
                .cache_control("no-cache")
                .header("ETag", asset.etag.clone())
                .header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
                .header("X-Frame-Options", "DENY")
                .header("Referrer-Policy", "no-referrer"),
        )
    }
}

/// Whether an `If-None-Match` value matches `etag` (RFC 9110 section 13.1.2: `*`, or a list of
/// entity tags compared weakly, so `W/"x"` matches `"x"`).
pub fn etag_matches(header: &str, etag: &str) -> bool {
    header.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Assets {
        Assets::new(vec![
            Asset::new("/", "text/html; charset=utf-8", b"<!doctype html>"),
            Asset::new("/assets/app.js", "text/javascript; charset=utf-8", b"1;"),
            Asset::new("/", "text/plain", b"ignored"),
        ])
    }

    #[test]
    fn etags_are_content_hashes() {
        let assets = table();
        let index = assets.get("/").map(Asset::etag).unwrap_or_default();
        assert_eq!(index.len(), 34);
        assert!(index.starts_with('"') && index.ends_with('"'));
        assert_ne!(Some(index), assets.get("/assets/app.js").map(Asset::etag));
        // The same bytes, the same tag.
        assert_eq!(
            Asset::new("/x", "text/plain", b"<!doctype html>").etag(),
            index
        );
        assert_eq!(assets.iter().count(), 2, "a repeated path is ignored");
    }

    #[test]
    fn if_none_match_is_a_weak_list_comparison() {
        let tag = "\"abc\"";
        assert!(etag_matches("\"abc\"", tag));
        assert!(etag_matches("W/\"abc\"", tag));
        assert!(etag_matches("\"x\", \"abc\"", tag));
        assert!(etag_matches("*", tag));
        assert!(!etag_matches("\"abcd\"", tag));
        assert!(!etag_matches("abc", tag));
        assert!(!etag_matches("", tag));
    }
}
