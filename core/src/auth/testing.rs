//! TEST SUPPORT: mint tokens for tests (this crate's and the gateway's integration tests).
//!
//! Signing goes through `jsonwebtoken::encode`, the same library that verifies, so no crypto is
//! hand-rolled. Nothing in the gateway calls these; they are public only so that other crates'
//! tests can use them. The matching test keys live in `core/src/auth/fixtures/` (public, never
//! for real use).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// The claims of a typical valid token: `sub`, `email`, `tenant_id`, `role` and `exp`
/// (seconds since the epoch). Add or remove fields on the returned object as needed.
pub fn claims(sub: &str, tenant_id: &str, role: &str, exp_secs: u64) -> Value {
    json!({
        "sub": sub,
        "email": format!("{sub}@example.com"),
        "tenant_id": tenant_id,
        "role": role,
        "exp": exp_secs,
    })
}

/// An HS256 token over `claims` with `secret`.
pub fn sign_hs256(secret: &str, claims: &Value) -> Result<String, String> {
    let key = EncodingKey::from_secret(secret.as_bytes());
    encode(&Header::new(Algorithm::HS256), claims, &key).map_err(|e| e.to_string())
}

/// An RS256 token signed with a PEM (PKCS#1 or PKCS#8) RSA private key, with header `kid` if given.
pub fn sign_rs256(private_pem: &str, kid: Option<&str>, claims: &Value) -> Result<String, String> {
    let key = EncodingKey::from_rsa_pem(private_pem.as_bytes()).map_err(|e| e.to_string())?;
    sign_with(Algorithm::RS256, &key, kid, claims)
}

/// An ES256 token signed with a PKCS#8 PEM P-256 private key, with header `kid` if given.
pub fn sign_es256(private_pem: &str, kid: Option<&str>, claims: &Value) -> Result<String, String> {
    let key = EncodingKey::from_ec_pem(private_pem.as_bytes()).map_err(|e| e.to_string())?;
    sign_with(Algorithm::ES256, &key, kid, claims)
}

/// An HS256 token whose header carries `kid`: for algorithm-confusion tests.
pub fn sign_hs256_with_kid(secret: &[u8], kid: &str, claims: &Value) -> Result<String, String> {
    sign_with(
        Algorithm::HS256,
        &EncodingKey::from_secret(secret),
        Some(kid),
        claims,
    )
}

/// An unsigned token (`{"alg":"none"}` header, empty signature), which must always be refused.
pub fn unsigned(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

fn sign_with(
    alg: Algorithm,
    key: &EncodingKey,
    kid: Option<&str>,
    claims: &Value,
) -> Result<String, String> {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    encode(&header, claims, key).map_err(|e| e.to_string())
}
