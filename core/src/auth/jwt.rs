//! JWT verification (PROTOCOL section 4). Signatures are checked by `jsonwebtoken`; this file
//! chooses the key, pins the algorithm to it, and checks the time claims against the caller's
//! clock (the library's own time checks read the system clock, so they are switched off).

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::cache::{token_key, TokenCache};
use crate::protocol::{ErrorCode, Identity};

/// Tokens longer than this are refused before any hashing or parsing. Real JWTs are well under
/// 2 KiB; the bound keeps an attacker from making us hash and base64-decode megabytes.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The shortest accepted HS256 secret: RFC 7518 section 3.2 requires a key of at least the hash
/// size (256 bits). A shorter secret can be brute-forced offline from any one token.
pub const MIN_HS256_SECRET_LEN: usize = 32;

/// The roles PROTOCOL knows; any other `role` claim fails authentication.
pub const ROLES: [&str; 4] = ["owner", "admin", "member", "viewer"];

/// The role of a token without a `role` claim.
pub const DEFAULT_ROLE: &str = "member";

/// How tokens are verified. Pure data: the adapter reads the JWKS file and passes its text.
#[derive(Clone)]
pub struct AuthConfig {
    /// HS256 shared secret, used as raw UTF-8 bytes (at least [`MIN_HS256_SECRET_LEN`] bytes).
    pub hs256_secret: Option<String>,
    /// The text of a JWKS document (`{"keys":[..]}`) holding RS256 (`kty: RSA`) and ES256
    /// (`kty: EC`, `crv: P-256`) public keys.
    pub jwks_json: Option<String>,
    /// When set, the token's `iss` must be present and equal to it.
    pub issuer: Option<String>,
    /// When set, the token's `aud` must be present and equal to (or, for an array, contain) it.
    /// When unset, `aud` is not checked at all.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds. Default 30: enough for NTP-synced
    /// clocks, short enough not to noticeably extend a token's life.
    pub leeway_secs: u64,
    /// Verified tokens remembered (0 disables the cache). Default 10 000.
    pub cache_capacity: usize,
    /// The longest a verified token is remembered (it is never remembered past its `exp`).
    /// Default 5 minutes.
    pub cache_ttl: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            hs256_secret: None,
            jwks_json: None,
            issuer: None,
            audience: None,
            leeway_secs: 30,
            cache_capacity: 10_000,
            cache_ttl: Duration::from_secs(5 * 60),
        }
    }
}

/// Secrets are redacted: configs end up in logs.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("jwks_json", &self.jwks_json.as_ref().map(|s| s.len()))
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .field("cache_capacity", &self.cache_capacity)
            .field("cache_ttl", &self.cache_ttl)
            .finish()
    }
}

/// Why a token was refused. `Display` is a short message safe to send to the client in an
/// `AUTH_FAILED` error: it never contains the token, its claims' values or key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// Not three base64url parts, undecodable JSON, or longer than [`MAX_TOKEN_LEN`].
    Malformed,
    /// `alg` is not HS256, RS256 or ES256 (`none` included), the algorithm is not configured
    /// (e.g. HS256 without a secret), or the header has a `crit` parameter.
    UnsupportedAlgorithm,
    /// The header's `alg` differs from the algorithm of the key its `kid` names.
    AlgorithmMismatch,
    /// The `kid` names no key in the JWKS.
    UnknownKeyId,
    /// An RS256/ES256 token without `kid` while the JWKS holds several keys.
    MissingKeyId,
    /// The signature does not verify with the chosen key.
    InvalidSignature,
    /// `exp` is past (with the configured leeway).
    Expired,
    /// `nbf` is still ahead (with the configured leeway).
    NotYetValid,
    /// `iss` differs from the configured issuer.
    InvalidIssuer,
    /// `aud` does not name the configured audience.
    InvalidAudience,
    /// A required claim is absent, `null` or an empty string: `exp`, `sub`, `tenant_id`, and
    /// `iss`/`aud` when configured. Carries the claim's name.
    MissingClaim(&'static str),
    /// A claim has the wrong type or value (`exp`/`nbf` not a number, `role` not one of
    /// [`ROLES`], ...). Carries the claim's name, never its value.
    InvalidClaim(&'static str),
}

impl AuthError {
    /// Every authentication failure is answered with `AUTH_FAILED`.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::AuthFailed
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Malformed => f.write_str("malformed token"),
            AuthError::UnsupportedAlgorithm => f.write_str("unsupported algorithm"),
            AuthError::AlgorithmMismatch => f.write_str("algorithm does not match the key"),
            AuthError::UnknownKeyId => f.write_str("unknown key id"),
            AuthError::MissingKeyId => f.write_str("missing key id"),
            AuthError::InvalidSignature => f.write_str("invalid signature"),
            AuthError::Expired => f.write_str("token expired"),
            AuthError::NotYetValid => f.write_str("token not yet valid"),
            AuthError::InvalidIssuer => f.write_str("invalid issuer"),
            AuthError::InvalidAudience => f.write_str("invalid audience"),
            AuthError::MissingClaim(name) => write!(f, "missing claim {name}"),
            AuthError::InvalidClaim(name) => write!(f, "invalid claim {name}"),
        }
    }
}

impl std::error::Error for AuthError {}

/// One usable JWKS key, with the only algorithm it may verify.
struct JwksKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Verifies tokens and remembers the verified ones. Single-threaded (`&mut self`), like the rest
/// of the core.
pub struct Authenticator {
    hs256: Option<DecodingKey>,
    jwks: Vec<JwksKey>,
    skipped_keys: Vec<String>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_ms: u64,
    cache_ttl_ms: u64,
    cache: TokenCache,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("hs256", &self.hs256.is_some())
            .field("jwks_keys", &self.jwks.len())
            .field("cached", &self.cache.len())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Parses the JWKS and checks the config. Errors (for the operator, at startup) when there is
    /// no usable key at all, the secret is too short, or the JWKS is not a JWKS document.
    ///
    /// JWKS keys that cannot verify RS256/ES256 signatures (`use: enc`, symmetric `oct` keys,
    /// other curves or algorithms, duplicate kids) are skipped rather than fatal, since identity
    /// providers publish such keys alongside signing keys; [`Authenticator::skipped_keys`] says
    /// which and why, for the adapter to log. A symmetric key is never taken from the JWKS: the
    /// only HMAC key is `hs256_secret`.
    pub fn new(config: AuthConfig) -> Result<Authenticator, String> {
        let hs256 = match &config.hs256_secret {
            None => None,
            Some(secret) if secret.len() < MIN_HS256_SECRET_LEN => {
                return Err(format!(
                    "auth: the HS256 secret must be at least {MIN_HS256_SECRET_LEN} bytes (it has {})",
                    secret.len()
                ));
            }
            Some(secret) => Some(DecodingKey::from_secret(secret.as_bytes())),
        };
        let (jwks, skipped_keys) = match &config.jwks_json {
            None => (Vec::new(), Vec::new()),
            Some(text) => {
                let (keys, skipped) = parse_jwks(text)?;
                if keys.is_empty() {
                    return Err(format!(
                        "auth: the JWKS has no usable RS256/ES256 signing key (skipped: {})",
                        if skipped.is_empty() {
                            "none".to_string()
                        } else {
                            skipped.join("; ")
                        }
                    ));
                }
                (keys, skipped)
            }
        };
        if hs256.is_none() && jwks.is_empty() {
            return Err(
                "auth: no key configured (set an HS256 secret or a JWKS file, or use dev mode)"
                    .to_string(),
            );
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Ok(Authenticator {
            hs256,
            jwks,
            skipped_keys,
            issuer: config.issuer,
            audience: config.audience,
            leeway_ms: config.leeway_secs.saturating_mul(1000),
            cache_ttl_ms: ms(config.cache_ttl),
            cache: TokenCache::new(config.cache_capacity),
        })
    }

    /// JWKS keys that were ignored, as `"<kid or #index>: <reason>"`. Contains no key material.
    pub fn skipped_keys(&self) -> &[String] {
        &self.skipped_keys
    }

    /// How many verified tokens are cached now.
    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    /// Drops cached tokens whose deadline has passed (the cache also does this by itself when it
    /// is full; calling it from a periodic timer just frees memory sooner).
    pub fn purge_expired(&mut self, now_unix_ms: u64) {
        self.cache.purge_expired(now_unix_ms);
    }

    /// Verifies `token` at wall-clock time `now_unix_ms`. A token verified before is answered from
    /// the cache (the same `Arc`) until its `exp` or the cache TTL, whichever comes first; after
    /// that it is verified again, so expiry is reported exactly as for a fresh token.
    pub fn verify(&mut self, token: &str, now_unix_ms: u64) -> Result<Arc<Identity>, AuthError> {
        if let Some(identity) = self.cached(token, now_unix_ms) {
            return Ok(identity);
        }
        self.verify_fresh(token, now_unix_ms)
    }

    /// The identity of `token` if it is in the verified-token cache (and still valid at
    /// `now_unix_ms`): one SHA-256, no signature check. The gateway lets these through before
    /// any limit, since they cost nothing to check.
    pub fn cached(&mut self, token: &str, now_unix_ms: u64) -> Option<Arc<Identity>> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return None;
        }
        self.cache.get(&token_key(token), now_unix_ms)
    }

    /// Verifies `token` without looking in the cache (the signature check: the expensive part),
    /// and caches it when valid.
    pub fn verify_fresh(
        &mut self,
        token: &str,
        now_unix_ms: u64,
    ) -> Result<Arc<Identity>, AuthError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed);
        }
        let key = token_key(token);
        let verified = self.verify_uncached(token, now_unix_ms)?;
        let identity = Arc::new(verified.identity);
        // Never cached past `exp` itself: inside the leeway the token is verified afresh.
        let until = verified
            .exp_ms
            .min(now_unix_ms.saturating_add(self.cache_ttl_ms));
        self.cache.insert(
            key,
            Arc::clone(&identity),
            verified.valid_from_ms,
            until,
            now_unix_ms,
        );
        Ok(identity)
    }

    fn verify_uncached(&self, token: &str, now_ms: u64) -> Result<Verified, AuthError> {
        let header = RawHeader::parse(token)?;
        let (alg, key) = self.select_key(&header)?;

        let mut validation = Validation::new(alg);
        // Time claims are checked below against the caller's clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims = HashSet::new();
        match &self.issuer {
            Some(iss) => {
                validation.set_issuer(&[iss]);
                validation.required_spec_claims.insert("iss".into());
            }
            None => validation.iss = None,
        }
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".into());
            }
            // Unconfigured: ignore `aud` (the library would otherwise refuse any token with one).
            None => validation.validate_aud = false,
        }

        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation)
            .map_err(|e| map_library_error(e.kind()))?;
        let claims = data.claims;

        let exp_ms = match claims.get("exp") {
            None | Some(Value::Null) => return Err(AuthError::MissingClaim("exp")),
            Some(v) => numeric_date_ms(v).ok_or(AuthError::InvalidClaim("exp"))?,
        };
        if now_ms >= exp_ms.saturating_add(self.leeway_ms) {
            return Err(AuthError::Expired);
        }
        let valid_from_ms = match claims.get("nbf") {
            None | Some(Value::Null) => 0,
            Some(v) => {
                let nbf_ms = numeric_date_ms(v).ok_or(AuthError::InvalidClaim("nbf"))?;
                nbf_ms.saturating_sub(self.leeway_ms)
            }
        };
        if now_ms < valid_from_ms {
            return Err(AuthError::NotYetValid);
        }

        let user_id = required_string(&claims, "sub")?;
        let tenant_id = required_string(&claims, "tenant_id")?;
        let email = match claims.get("email") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(AuthError::InvalidClaim("email")),
        };
        let role = match claims.get("role") {
            None | Some(Value::Null) => DEFAULT_ROLE.to_string(),
            Some(Value::String(s)) if ROLES.contains(&s.as_str()) => s.clone(),
            Some(_) => return Err(AuthError::InvalidClaim("role")),
        };
        Ok(Verified {
            identity: Identity {
                user_id,
                email,
                tenant_id,
                role,
            },
            exp_ms,
            valid_from_ms,
        })
    }

    /// The key for this header, and the single algorithm it may be used with. The algorithm comes
    /// from the key, never from the token alone: an HS256 token can only meet the HS256 secret, an
    /// RS256 or ES256 token only a JWKS key published for that algorithm.
    fn select_key(&self, header: &RawHeader) -> Result<(Algorithm, &DecodingKey), AuthError> {
        let alg = match header.alg.as_str() {
            "HS256" => Algorithm::HS256,
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            _ => return Err(AuthError::UnsupportedAlgorithm),
        };
        if alg == Algorithm::HS256 {
            // `kid` is irrelevant: there is one secret, and JWKS keys are never HMAC keys.
            return match &self.hs256 {
                Some(key) => Ok((alg, key)),
                None => Err(AuthError::UnsupportedAlgorithm),
            };
        }
        if self.jwks.is_empty() {
            return Err(AuthError::UnsupportedAlgorithm);
        }
        let entry = match &header.kid {
            Some(kid) => self
                .jwks
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid.as_str()))
                .ok_or(AuthError::UnknownKeyId)?,
            // No kid: unambiguous only when the JWKS has exactly one usable key.
            None => match self.jwks.as_slice() {
                [only] => only,
                _ => return Err(AuthError::MissingKeyId),
            },
        };
        if entry.alg != alg {
            return Err(AuthError::AlgorithmMismatch);
        }
        Ok((entry.alg, &entry.key))
    }
}

struct Verified {
    identity: Identity,
    exp_ms: u64,
    valid_from_ms: u64,
}

/// The header fields we decide on, parsed before the library sees the token so that `alg` is
/// compared as a string against our allowlist (the library cannot even represent `none`).
struct RawHeader {
    alg: String,
    kid: Option<String>,
}

impl RawHeader {
    fn parse(token: &str) -> Result<RawHeader, AuthError> {
        let mut parts = token.split('.');
        let (Some(header), Some(_payload), Some(_signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        let bytes = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| AuthError::Malformed)?;
        let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&bytes) else {
            return Err(AuthError::Malformed);
        };
        // RFC 7515 section 4.1.11: extensions listed in `crit` must be understood; we know none.
        if fields.contains_key("crit") {
            return Err(AuthError::UnsupportedAlgorithm);
        }
        let alg = match fields.get("alg") {
            Some(Value::String(alg)) => alg.clone(),
            _ => return Err(AuthError::Malformed),
        };
        let kid = match fields.get("kid") {
            None | Some(Value::Null) => None,
            Some(Value::String(kid)) => Some(kid.clone()),
            Some(_) => return Err(AuthError::Malformed),
        };
        Ok(RawHeader { alg, kid })
    }
}

fn map_library_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::InvalidSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            AuthError::AlgorithmMismatch
        }
        ErrorKind::InvalidIssuer => AuthError::InvalidIssuer,
        ErrorKind::InvalidAudience => AuthError::InvalidAudience,
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => AuthError::MissingClaim("iss"),
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => AuthError::MissingClaim("aud"),
        // Base64, JSON, UTF-8, structure, key-format errors: nothing more useful to say safely.
        _ => AuthError::Malformed,
    }
}

/// A JWT NumericDate (seconds since the epoch, possibly fractional) in milliseconds.
fn numeric_date_ms(value: &Value) -> Option<u64> {
    let Value::Number(n) = value else {
        return None;
    };
    if let Some(secs) = n.as_u64() {
        return Some(secs.saturating_mul(1000));
    }
    let secs = n.as_f64()?;
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    // `as` saturates for floats too large for u64.
    Some((secs * 1000.0) as u64)
}

fn required_string(claims: &Map<String, Value>, name: &'static str) -> Result<String, AuthError> {
    match claims.get(name) {
        None | Some(Value::Null) => Err(AuthError::MissingClaim(name)),
        Some(Value::String(s)) if s.is_empty() => Err(AuthError::MissingClaim(name)),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(AuthError::InvalidClaim(name)),
    }
}

/// Parses a JWKS document, keeping the keys usable for RS256/ES256 verification.
fn parse_jwks(text: &str) -> Result<(Vec<JwksKey>, Vec<String>), String> {
    #[derive(serde::Deserialize)]
    struct RawSet {
        keys: Vec<Value>,
    }
    let set: RawSet = serde_json::from_str(text)
        .map_err(|e| format!("auth: the JWKS is not a JWKS document ({e})"))?;
    let mut keys: Vec<JwksKey> = Vec::new();
    let mut skipped = Vec::new();
    for (index, raw) in set.keys.into_iter().enumerate() {
        let label = match raw.get("kid").and_then(Value::as_str) {
            Some(kid) => format!("kid {kid:?}"),
            None => format!("key #{index}"),
        };
        let jwk: Jwk = match serde_json::from_value(raw) {
            Ok(jwk) => jwk,
            Err(_) => {
                skipped.push(format!("{label}: not a recognised JWK"));
                continue;
            }
        };
        match usable_key(&jwk) {
            Ok(key) => {
                if key.kid.is_some() && keys.iter().any(|k| k.kid == key.kid) {
                    skipped.push(format!("{label}: duplicate kid (the first one is used)"));
                } else {
                    keys.push(key);
                }
            }
            Err(reason) => skipped.push(format!("{label}: {reason}")),
        }
    }
    Ok((keys, skipped))
}

fn usable_key(jwk: &Jwk) -> Result<JwksKey, &'static str> {
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(_) => return Err("not a signature key (use)"),
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        AlgorithmParameters::EllipticCurve(_) => return Err("unsupported curve (only P-256)"),
        AlgorithmParameters::OctetKey(_) => return Err("symmetric keys are not taken from a JWKS"),
        AlgorithmParameters::OctetKeyPair(_) => return Err("unsupported key type (OKP)"),
    };
    let declared_ok = match jwk.common.key_algorithm {
        None => true,
        Some(KeyAlgorithm::RS256) => alg == Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
        Some(_) => false,
    };
    if !declared_ok {
        return Err("unsupported alg (only RS256 and ES256)");
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|_| "invalid key parameters")?;
    Ok(JwksKey {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    })
}
