use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use proptest::prelude::*;
use serde_json::{json, Value};

use super::testing::{claims, sign_es256, sign_hs256, sign_hs256_with_kid, sign_rs256, unsigned};
use super::*;
use crate::protocol::{ErrorCode, Identity};

const SECRET: &str = "0123456789abcdef0123456789abcdef-test-secret";
const RSA_PEM: &str = include_str!("fixtures/rsa_private.pem");
const EC_PEM: &str = include_str!("fixtures/ec_private.pem");
const JWKS: &str = include_str!("fixtures/jwks.json");
const RSA_KID: &str = "rsa-test-1";
const EC_KID: &str = "ec-test-1";

/// The wall clock of every test: 2023-11-14T22:13:20Z.
const NOW_S: u64 = 1_700_000_000;
const NOW_MS: u64 = NOW_S * 1000;
const HOUR: u64 = 3600;

fn hs_config() -> AuthConfig {
    AuthConfig {
        hs256_secret: Some(SECRET.into()),
        ..AuthConfig::default()
    }
}

fn jwks_config() -> AuthConfig {
    AuthConfig {
        jwks_json: Some(JWKS.into()),
        ..AuthConfig::default()
    }
}

fn both_config() -> AuthConfig {
    AuthConfig {
        hs256_secret: Some(SECRET.into()),
        jwks_json: Some(JWKS.into()),
        ..AuthConfig::default()
    }
}

fn auth(config: AuthConfig) -> Authenticator {
    Authenticator::new(config).expect("valid test config")
}

fn valid_claims() -> Value {
    claims("user-1", "acme", "admin", NOW_S + HOUR)
}

fn hs(claims: &Value) -> String {
    sign_hs256(SECRET, claims).expect("sign HS256")
}

fn rs(kid: Option<&str>, claims: &Value) -> String {
    sign_rs256(RSA_PEM, kid, claims).expect("sign RS256")
}

fn es(kid: Option<&str>, claims: &Value) -> String {
    sign_es256(EC_PEM, kid, claims).expect("sign ES256")
}

fn without(mut claims: Value, field: &str) -> Value {
    claims
        .as_object_mut()
        .expect("claims are an object")
        .remove(field);
    claims
}

fn with(mut claims: Value, field: &str, value: Value) -> Value {
    claims
        .as_object_mut()
        .expect("claims are an object")
        .insert(field.into(), value);
    claims
}

/// A JWKS holding only the fixture key with `kid`.
fn jwks_only(kid: &str) -> String {
    let mut set: Value = serde_json::from_str(JWKS).expect("fixture JWKS");
    let keys = set["keys"].as_array_mut().expect("keys");
    keys.retain(|k| k["kid"] == kid);
    assert_eq!(keys.len(), 1);
    set.to_string()
}

fn expected_identity() -> Identity {
    Identity {
        user_id: "user-1".into(),
        email: "user-1@example.com".into(),
        tenant_id: "acme".into(),
        role: "admin".into(),
    }
}

// ---------------------------------------------------------------- valid tokens

#[test]
fn hs256_valid_token_yields_identity() {
    let mut a = auth(hs_config());
    let id = a.verify(&hs(&valid_claims()), NOW_MS).expect("valid");
    assert_eq!(*id, expected_identity());
}

#[test]
fn rs256_valid_token_by_kid() {
    let mut a = auth(jwks_config());
    let id = a
        .verify(&rs(Some(RSA_KID), &valid_claims()), NOW_MS)
        .expect("valid");
    assert_eq!(*id, expected_identity());
}

#[test]
fn es256_valid_token_by_kid() {
    let mut a = auth(jwks_config());
    let id = a
        .verify(&es(Some(EC_KID), &valid_claims()), NOW_MS)
        .expect("valid");
    assert_eq!(*id, expected_identity());
}

#[test]
fn every_algorithm_works_when_both_key_sources_are_configured() {
    let mut a = auth(both_config());
    for token in [
        hs(&valid_claims()),
        rs(Some(RSA_KID), &valid_claims()),
        es(Some(EC_KID), &valid_claims()),
    ] {
        assert_eq!(
            *a.verify(&token, NOW_MS).expect("valid"),
            expected_identity()
        );
    }
}

#[test]
fn kidless_token_uses_the_only_jwks_key() {
    let mut a = auth(AuthConfig {
        jwks_json: Some(jwks_only(RSA_KID)),
        ..AuthConfig::default()
    });
    assert!(a.verify(&rs(None, &valid_claims()), NOW_MS).is_ok());
    // ...but only with that key's algorithm.
    assert_eq!(
        a.verify(&es(None, &valid_claims()), NOW_MS),
        Err(AuthError::AlgorithmMismatch)
    );
}

#[test]
fn kidless_token_is_refused_when_the_jwks_has_several_keys() {
    let mut a = auth(jwks_config());
    assert_eq!(
        a.verify(&rs(None, &valid_claims()), NOW_MS),
        Err(AuthError::MissingKeyId)
    );
}

// ---------------------------------------------------------------- time

#[test]
fn expired_token_is_refused_after_the_leeway() {
    let mut a = auth(hs_config()); // leeway 30 s
    let exp = NOW_S - 31;
    assert_eq!(
        a.verify(&hs(&with(valid_claims(), "exp", json!(exp))), NOW_MS),
        Err(AuthError::Expired)
    );
    // Inside the leeway it is still accepted.
    let exp = NOW_S - 10;
    assert!(a
        .verify(&hs(&with(valid_claims(), "exp", json!(exp))), NOW_MS)
        .is_ok());
}

#[test]
fn expiry_boundary_is_exact_to_the_millisecond() {
    let mut a = auth(AuthConfig {
        leeway_secs: 0,
        cache_capacity: 0,
        ..hs_config()
    });
    let token = hs(&with(valid_claims(), "exp", json!(NOW_S)));
    assert!(a.verify(&token, NOW_MS - 1).is_ok());
    assert_eq!(a.verify(&token, NOW_MS), Err(AuthError::Expired));
}

#[test]
fn fractional_exp_is_accepted() {
    let mut a = auth(AuthConfig {
        leeway_secs: 0,
        ..hs_config()
    });
    let token = hs(&with(valid_claims(), "exp", json!(NOW_S as f64 + 0.5)));
    assert!(a.verify(&token, NOW_MS + 499).is_ok());
    assert_eq!(a.verify(&token, NOW_MS + 500), Err(AuthError::Expired));
}

#[test]
fn token_before_nbf_is_refused() {
    let mut a = auth(hs_config());
    let early = with(valid_claims(), "nbf", json!(NOW_S + 60));
    assert_eq!(a.verify(&hs(&early), NOW_MS), Err(AuthError::NotYetValid));
    // Valid once `now` reaches nbf - leeway.
    assert!(a.verify(&hs(&early), (NOW_S + 30) * 1000).is_ok());
    // Inside the leeway it is accepted.
    let skewed = with(valid_claims(), "nbf", json!(NOW_S + 10));
    assert!(a.verify(&hs(&skewed), NOW_MS).is_ok());
}

#[test]
fn missing_or_mistyped_exp_is_refused() {
    let mut a = auth(hs_config());
    assert_eq!(
        a.verify(&hs(&without(valid_claims(), "exp")), NOW_MS),
        Err(AuthError::MissingClaim("exp"))
    );
    for bad in [json!("tomorrow"), json!(-5), json!(true)] {
        assert_eq!(
            a.verify(&hs(&with(valid_claims(), "exp", bad.clone())), NOW_MS),
            Err(AuthError::InvalidClaim("exp")),
            "{bad}"
        );
    }
    // (The library's claim pre-check rejects an array before we see it.)
    assert!(a
        .verify(&hs(&with(valid_claims(), "exp", json!([NOW_S]))), NOW_MS)
        .is_err());
    assert_eq!(
        a.verify(&hs(&with(valid_claims(), "nbf", json!("now"))), NOW_MS),
        Err(AuthError::InvalidClaim("nbf"))
    );
}

// ---------------------------------------------------------------- iss / aud

#[test]
fn issuer_is_checked_when_configured() {
    let mut a = auth(AuthConfig {
        issuer: Some("https://idp.example".into()),
        ..hs_config()
    });
    let good = with(valid_claims(), "iss", json!("https://idp.example"));
    assert!(a.verify(&hs(&good), NOW_MS).is_ok());
    let wrong = with(valid_claims(), "iss", json!("https://evil.example"));
    assert_eq!(a.verify(&hs(&wrong), NOW_MS), Err(AuthError::InvalidIssuer));
    assert_eq!(
        a.verify(&hs(&valid_claims()), NOW_MS),
        Err(AuthError::MissingClaim("iss"))
    );
}

#[test]
fn audience_is_checked_when_configured() {
    let mut a = auth(AuthConfig {
        audience: Some("diminuendo".into()),
        ..jwks_config()
    });
    let good = with(valid_claims(), "aud", json!("diminuendo"));
    assert!(a.verify(&rs(Some(RSA_KID), &good), NOW_MS).is_ok());
    let in_list = with(valid_claims(), "aud", json!(["other", "diminuendo"]));
    assert!(a.verify(&rs(Some(RSA_KID), &in_list), NOW_MS).is_ok());
    let wrong = with(valid_claims(), "aud", json!("other-service"));
    assert_eq!(
        a.verify(&rs(Some(RSA_KID), &wrong), NOW_MS),
        Err(AuthError::InvalidAudience)
    );
    assert_eq!(
        a.verify(&rs(Some(RSA_KID), &valid_claims()), NOW_MS),
        Err(AuthError::MissingClaim("aud"))
    );
}

#[test]
fn iss_and_aud_are_ignored_when_not_configured() {
    let mut a = auth(hs_config());
    let c = with(
        with(valid_claims(), "aud", json!("anything")),
        "iss",
        json!("anyone"),
    );
    assert!(a.verify(&hs(&c), NOW_MS).is_ok());
}

// ---------------------------------------------------------------- algorithm attacks

#[test]
fn alg_none_is_refused_in_every_spelling() {
    let mut a = auth(both_config());
    assert_eq!(
        a.verify(&unsigned(&valid_claims()), NOW_MS),
        Err(AuthError::UnsupportedAlgorithm)
    );
    let payload = URL_SAFE_NO_PAD.encode(valid_claims().to_string());
    for header in [
        r#"{"alg":"none"}"#,
        r#"{"alg":"None"}"#,
        r#"{"alg":"NONE"}"#,
        r#"{"alg":"nOnE","kid":"rsa-test-1"}"#,
        r#"{"alg":"hs256"}"#,
        r#"{"alg":"HS512"}"#,
        r#"{"alg":"PS256","kid":"rsa-test-1"}"#,
        r#"{"alg":""}"#,
    ] {
        let h = URL_SAFE_NO_PAD.encode(header);
        for sig in ["", "AAAA"] {
            let token = format!("{h}.{payload}.{sig}");
            assert_eq!(
                a.verify(&token, NOW_MS),
                Err(AuthError::UnsupportedAlgorithm),
                "{header}"
            );
        }
    }
    // A valid HS256 signature does not rescue a token whose header was rewritten to `none`.
    let real = hs(&valid_claims());
    let mut parts = real.split('.');
    let (_, p, s) = (parts.next(), parts.next(), parts.next());
    let token = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        p.unwrap_or_default(),
        s.unwrap_or_default()
    );
    assert_eq!(
        a.verify(&token, NOW_MS),
        Err(AuthError::UnsupportedAlgorithm)
    );
}

#[test]
fn hs256_token_against_an_rsa_only_config_is_refused() {
    // The classic confusion: HMAC "signed" with the RSA public key the server publishes.
    let public_material: Value = serde_json::from_str(&jwks_only(RSA_KID)).expect("jwks");
    let n = public_material["keys"][0]["n"].as_str().expect("n");
    let mut a = auth(AuthConfig {
        jwks_json: Some(jwks_only(RSA_KID)),
        ..AuthConfig::default()
    });
    for secret in [n.as_bytes(), JWKS.as_bytes(), jwks_only(RSA_KID).as_bytes()] {
        let token = sign_hs256_with_kid(secret, RSA_KID, &valid_claims()).expect("sign");
        assert_eq!(
            a.verify(&token, NOW_MS),
            Err(AuthError::UnsupportedAlgorithm)
        );
    }
}

#[test]
fn hs256_token_naming_an_rsa_kid_is_checked_against_the_secret_only() {
    let mut a = auth(both_config());
    let token = sign_hs256_with_kid(JWKS.as_bytes(), RSA_KID, &valid_claims()).expect("sign");
    assert_eq!(a.verify(&token, NOW_MS), Err(AuthError::InvalidSignature));
}

#[test]
fn header_alg_must_match_the_kid_key_algorithm() {
    let mut a = auth(jwks_config());
    // ES256 signature, header names the RSA key.
    assert_eq!(
        a.verify(&es(Some(RSA_KID), &valid_claims()), NOW_MS),
        Err(AuthError::AlgorithmMismatch)
    );
    // RS256 signature, header names the EC key.
    assert_eq!(
        a.verify(&rs(Some(EC_KID), &valid_claims()), NOW_MS),
        Err(AuthError::AlgorithmMismatch)
    );
}

#[test]
fn rs256_token_without_jwks_is_refused() {
    let mut a = auth(hs_config());
    assert_eq!(
        a.verify(&rs(Some(RSA_KID), &valid_claims()), NOW_MS),
        Err(AuthError::UnsupportedAlgorithm)
    );
}

#[test]
fn crit_header_is_refused() {
    let mut a = auth(hs_config());
    let real = hs(&valid_claims());
    let rest = real.split_once('.').map(|(_, r)| r).unwrap_or_default();
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","crit":["exp"]}"#);
    assert_eq!(
        a.verify(&format!("{header}.{rest}"), NOW_MS),
        Err(AuthError::UnsupportedAlgorithm)
    );
}

// ---------------------------------------------------------------- signatures and keys

fn tamper_payload(token: &str) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let forged = with(valid_claims(), "role", json!("owner"));
    let payload = URL_SAFE_NO_PAD.encode(forged.to_string());
    format!("{}.{}.{}", parts[0], payload, parts[2])
}

#[test]
fn tampered_payload_is_refused_for_every_algorithm() {
    let mut a = auth(both_config());
    for token in [
        hs(&valid_claims()),
        rs(Some(RSA_KID), &valid_claims()),
        es(Some(EC_KID), &valid_claims()),
    ] {
        assert_eq!(
            a.verify(&tamper_payload(&token), NOW_MS),
            Err(AuthError::InvalidSignature)
        );
    }
}

#[test]
fn wrong_secret_is_an_invalid_signature() {
    let mut a = auth(hs_config());
    let token =
        sign_hs256("another-secret-that-is-32-bytes-long!!", &valid_claims()).expect("sign");
    assert_eq!(a.verify(&token, NOW_MS), Err(AuthError::InvalidSignature));
}

#[test]
fn truncated_signature_is_refused() {
    let mut a = auth(jwks_config());
    let token = rs(Some(RSA_KID), &valid_claims());
    let cut = &token[..token.len() - 4];
    assert!(a.verify(cut, NOW_MS).is_err());
    let empty_sig = &token[..=token.rfind('.').expect("dot")];
    assert!(a.verify(empty_sig, NOW_MS).is_err());
}

#[test]
fn unknown_kid_is_refused() {
    let mut a = auth(jwks_config());
    assert_eq!(
        a.verify(&rs(Some("rotated-away"), &valid_claims()), NOW_MS),
        Err(AuthError::UnknownKeyId)
    );
}

#[test]
fn garbage_is_malformed() {
    let mut a = auth(both_config());
    let long = "a".repeat(MAX_TOKEN_LEN + 1);
    let not_json = format!("{}.e30.sig", URL_SAFE_NO_PAD.encode("not json"));
    let array_header = format!("{}.e30.sig", URL_SAFE_NO_PAD.encode("[1,2]"));
    let no_alg = format!("{}.e30.sig", URL_SAFE_NO_PAD.encode("{}"));
    let numeric_alg = format!("{}.e30.sig", URL_SAFE_NO_PAD.encode(r#"{"alg":256}"#));
    let numeric_kid = format!(
        "{}.e30.sig",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":1}"#)
    );
    for token in [
        "",
        "abc",
        "a.b",
        "a.b.c",
        "...",
        "a.b.c.d",
        "Bearer x.y.z",
        "\u{1F600}.\u{1F600}.\u{1F600}",
        long.as_str(),
        not_json.as_str(),
        array_header.as_str(),
        no_alg.as_str(),
        numeric_alg.as_str(),
        numeric_kid.as_str(),
    ] {
        assert_eq!(
            a.verify(token, NOW_MS),
            Err(AuthError::Malformed),
            "{token:.40}"
        );
    }
    // The signature is checked before the payload is decoded.
    let hs_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256"}"#);
    assert_eq!(
        a.verify(&format!("{hs_header}.%%%.sig"), NOW_MS),
        Err(AuthError::InvalidSignature)
    );
    assert_eq!(a.cached_tokens(), 0);
}

#[test]
fn signed_payload_that_is_not_a_json_object_is_malformed() {
    // Signed with the right secret, but the payload is an array: must not panic or pass.
    let mut a = auth(hs_config());
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!([1, 2, 3]),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign");
    assert_eq!(a.verify(&token, NOW_MS), Err(AuthError::Malformed));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_input_is_refused_without_panicking(s in ".{0,300}") {
        let mut a = auth(both_config());
        prop_assert!(a.verify(&s, NOW_MS).is_err());
    }

    #[test]
    fn arbitrary_dotted_base64_is_refused(
        h in "[A-Za-z0-9_-]{0,60}", p in "[A-Za-z0-9_-]{0,60}", s in "[A-Za-z0-9_-]{0,90}",
    ) {
        let mut a = auth(both_config());
        let token = format!("{h}.{p}.{s}");
        prop_assert!(a.verify(&token, NOW_MS).is_err());
    }
}

// ---------------------------------------------------------------- claims

#[test]
fn missing_sub_or_tenant_is_refused() {
    let mut a = auth(hs_config());
    for claim in ["sub", "tenant_id"] {
        assert_eq!(
            a.verify(&hs(&without(valid_claims(), claim)), NOW_MS),
            Err(AuthError::MissingClaim(if claim == "sub" {
                "sub"
            } else {
                "tenant_id"
            }))
        );
    }
    assert_eq!(
        a.verify(&hs(&with(valid_claims(), "tenant_id", json!(""))), NOW_MS),
        Err(AuthError::MissingClaim("tenant_id"))
    );
    assert_eq!(
        a.verify(&hs(&with(valid_claims(), "tenant_id", json!(null))), NOW_MS),
        Err(AuthError::MissingClaim("tenant_id"))
    );
    assert_eq!(
        a.verify(&hs(&with(valid_claims(), "sub", json!(42))), NOW_MS),
        Err(AuthError::InvalidClaim("sub"))
    );
    // `tenantId` (camelCase) is not the claim.
    let camel = with(
        without(valid_claims(), "tenant_id"),
        "tenantId",
        json!("acme"),
    );
    assert_eq!(
        a.verify(&hs(&camel), NOW_MS),
        Err(AuthError::MissingClaim("tenant_id"))
    );
}

#[test]
fn unknown_role_is_refused() {
    let mut a = auth(hs_config());
    for role in [
        json!("superuser"),
        json!("Owner"),
        json!(" admin"),
        json!(""),
        json!(1),
        json!(["owner"]),
    ] {
        assert_eq!(
            a.verify(&hs(&with(valid_claims(), "role", role)), NOW_MS),
            Err(AuthError::InvalidClaim("role"))
        );
    }
}

#[test]
fn every_protocol_role_is_accepted() {
    let mut a = auth(hs_config());
    for role in ROLES {
        let id = a
            .verify(&hs(&claims("u", "t", role, NOW_S + HOUR)), NOW_MS)
            .expect("valid");
        assert_eq!(id.role, role);
    }
}

#[test]
fn missing_role_defaults_to_member_and_missing_email_to_empty() {
    let mut a = auth(hs_config());
    let c = without(without(valid_claims(), "role"), "email");
    let id = a.verify(&hs(&c), NOW_MS).expect("valid");
    assert_eq!(id.role, "member");
    assert_eq!(id.role, DEFAULT_ROLE);
    assert_eq!(id.email, "");
    assert_eq!(
        a.verify(&hs(&with(valid_claims(), "email", json!(7))), NOW_MS),
        Err(AuthError::InvalidClaim("email"))
    );
}

// ---------------------------------------------------------------- cache

#[test]
fn cache_hit_returns_the_same_identity() {
    let mut a = auth(hs_config());
    let token = hs(&valid_claims());
    let first = a.verify(&token, NOW_MS).expect("valid");
    assert_eq!(a.cached_tokens(), 1);
    let second = a.verify(&token, NOW_MS + 1000).expect("cached");
    assert!(Arc::ptr_eq(&first, &second));
}

#[test]
fn cached_token_still_expires_at_exp() {
    let mut a = auth(hs_config()); // leeway 30 s, ttl 5 min
    let exp = NOW_S + 60;
    let token = hs(&with(valid_claims(), "exp", json!(exp)));
    let first = a.verify(&token, NOW_MS).expect("valid");
    let hit = a.verify(&token, NOW_MS + 59_999).expect("cached");
    assert!(Arc::ptr_eq(&first, &hit));
    // Past exp the cache no longer answers; inside the leeway a fresh check still accepts...
    let in_leeway = a.verify(&token, exp * 1000 + 10_000).expect("leeway");
    assert!(!Arc::ptr_eq(&first, &in_leeway));
    // ...and past the leeway it is expired, exactly as for an uncached token.
    assert_eq!(
        a.verify(&token, exp * 1000 + 30_000),
        Err(AuthError::Expired)
    );
    assert_eq!(a.cached_tokens(), 0);
}

#[test]
fn cache_entries_expire_after_the_ttl() {
    let mut a = auth(AuthConfig {
        cache_ttl: Duration::from_secs(60),
        ..hs_config()
    });
    let token = hs(&valid_claims());
    let first = a.verify(&token, NOW_MS).expect("valid");
    let hit = a.verify(&token, NOW_MS + 59_999).expect("cached");
    assert!(Arc::ptr_eq(&first, &hit));
    let fresh = a.verify(&token, NOW_MS + 60_000).expect("re-verified");
    assert!(!Arc::ptr_eq(&first, &fresh));
    assert_eq!(*first, *fresh);
    assert_eq!(a.cached_tokens(), 1);
}

#[test]
fn cache_is_bounded_and_evicts_the_oldest() {
    let mut a = auth(AuthConfig {
        cache_capacity: 3,
        ..hs_config()
    });
    let tokens: Vec<String> = (0..5)
        .map(|i| {
            hs(&claims(
                &format!("user-{i}"),
                "acme",
                "member",
                NOW_S + HOUR,
            ))
        })
        .collect();
    let ids: Vec<Arc<Identity>> = tokens
        .iter()
        .map(|t| a.verify(t, NOW_MS).expect("valid"))
        .collect();
    assert_eq!(a.cached_tokens(), 3);
    // The newest are still cached (same Arc), the oldest were evicted (a fresh Arc).
    assert!(Arc::ptr_eq(
        &ids[4],
        &a.verify(&tokens[4], NOW_MS).expect("ok")
    ));
    assert!(Arc::ptr_eq(
        &ids[3],
        &a.verify(&tokens[3], NOW_MS).expect("ok")
    ));
    assert!(!Arc::ptr_eq(
        &ids[0],
        &a.verify(&tokens[0], NOW_MS).expect("ok")
    ));
    assert_eq!(a.cached_tokens(), 3);
}

#[test]
fn full_cache_evicts_expired_entries_before_the_oldest() {
    let mut a = auth(AuthConfig {
        cache_capacity: 2,
        ..hs_config()
    });
    let long_lived = hs(&claims("old-but-valid", "acme", "member", NOW_S + HOUR));
    let short_lived = hs(&claims("short", "acme", "member", NOW_S + 10));
    let newcomer = hs(&claims("new", "acme", "member", NOW_S + HOUR));
    let old = a.verify(&long_lived, NOW_MS).expect("valid");
    a.verify(&short_lived, NOW_MS + 1).expect("valid");
    let later = NOW_MS + 20_000; // short_lived's cache entry is past its exp
    a.verify(&newcomer, later).expect("valid");
    assert_eq!(a.cached_tokens(), 2);
    assert!(Arc::ptr_eq(
        &old,
        &a.verify(&long_lived, later).expect("cached")
    ));
}

#[test]
fn cache_capacity_zero_disables_caching() {
    let mut a = auth(AuthConfig {
        cache_capacity: 0,
        ..hs_config()
    });
    let token = hs(&valid_claims());
    let first = a.verify(&token, NOW_MS).expect("valid");
    let second = a.verify(&token, NOW_MS).expect("valid");
    assert!(!Arc::ptr_eq(&first, &second));
    assert_eq!(a.cached_tokens(), 0);
}

#[test]
fn failures_are_not_cached_and_purge_drops_expired_entries() {
    let mut a = auth(hs_config());
    let _ = a.verify(&tamper_payload(&hs(&valid_claims())), NOW_MS);
    assert_eq!(a.cached_tokens(), 0);
    a.verify(&hs(&with(valid_claims(), "exp", json!(NOW_S + 5))), NOW_MS)
        .expect("valid");
    a.verify(&hs(&valid_claims()), NOW_MS).expect("valid");
    assert_eq!(a.cached_tokens(), 2);
    a.purge_expired(NOW_MS + 5_000);
    assert_eq!(a.cached_tokens(), 1);
}

// ---------------------------------------------------------------- configuration

#[test]
fn config_without_any_key_is_refused() {
    let err = Authenticator::new(AuthConfig::default()).expect_err("no key");
    assert!(err.contains("no key"), "{err}");
}

#[test]
fn unparseable_jwks_is_refused() {
    for text in ["", "not json", "[]", r#"{"keys": 3}"#, r#"{"kty":"RSA"}"#] {
        let err = Authenticator::new(AuthConfig {
            jwks_json: Some(text.into()),
            ..AuthConfig::default()
        })
        .expect_err("bad JWKS");
        assert!(err.contains("JWKS"), "{err}");
    }
}

#[test]
fn jwks_without_usable_keys_is_refused() {
    let only_oct = r#"{"keys":[{"kty":"oct","kid":"k","k":"c2VjcmV0"}]}"#;
    let err = Authenticator::new(AuthConfig {
        jwks_json: Some(only_oct.into()),
        hs256_secret: Some(SECRET.into()),
        ..AuthConfig::default()
    })
    .expect_err("no usable key");
    assert!(err.contains("no usable"), "{err}");
    let empty = Authenticator::new(AuthConfig {
        jwks_json: Some(r#"{"keys":[]}"#.into()),
        ..AuthConfig::default()
    });
    assert!(empty.is_err());
}

#[test]
fn short_hs256_secret_is_refused() {
    let err = Authenticator::new(AuthConfig {
        hs256_secret: Some("secret".into()),
        ..AuthConfig::default()
    })
    .expect_err("short secret");
    assert!(err.contains("at least 32 bytes"), "{err}");
    assert!(!err.contains("secret\""), "{err}");
}

#[test]
fn unusable_jwks_keys_are_skipped_and_reported() {
    let mut set: Value = serde_json::from_str(JWKS).expect("fixture");
    let keys = set["keys"].as_array_mut().expect("keys");
    let mut enc = keys[0].clone();
    enc["kid"] = json!("enc-key");
    enc["use"] = json!("enc");
    let mut ps = keys[0].clone();
    ps["kid"] = json!("ps-key");
    ps["alg"] = json!("PS256");
    let mut dup = keys[1].clone();
    dup["alg"] = json!("ES256");
    keys.push(enc);
    keys.push(ps);
    keys.push(dup);
    keys.push(json!({"kty":"oct","kid":"hmac","k":"c2VjcmV0"}));
    keys.push(json!({"kty":"weird"}));
    let mut a = auth(AuthConfig {
        jwks_json: Some(set.to_string()),
        ..AuthConfig::default()
    });
    assert_eq!(a.skipped_keys().len(), 5, "{:?}", a.skipped_keys());
    assert!(a
        .verify(&rs(Some(RSA_KID), &valid_claims()), NOW_MS)
        .is_ok());
    // A skipped key is as good as unknown.
    assert_eq!(
        a.verify(&rs(Some("enc-key"), &valid_claims()), NOW_MS),
        Err(AuthError::UnknownKeyId)
    );
    // The JWKS `oct` key never becomes an HMAC key.
    let token = sign_hs256_with_kid(b"secret", "hmac", &valid_claims()).expect("sign");
    assert_eq!(
        a.verify(&token, NOW_MS),
        Err(AuthError::UnsupportedAlgorithm)
    );
}

#[test]
fn debug_output_redacts_the_secret() {
    let dbg = format!("{:?}", hs_config());
    assert!(!dbg.contains(SECRET), "{dbg}");
    let dbg = format!("{:?}", auth(both_config()));
    assert!(!dbg.contains(SECRET), "{dbg}");
}

#[test]
fn error_messages_are_short_and_safe() {
    assert_eq!(AuthError::Expired.to_string(), "token expired");
    assert_eq!(AuthError::InvalidSignature.to_string(), "invalid signature");
    assert_eq!(AuthError::UnknownKeyId.to_string(), "unknown key id");
    assert_eq!(AuthError::Malformed.to_string(), "malformed token");
    assert_eq!(
        AuthError::MissingClaim("tenant_id").to_string(),
        "missing claim tenant_id"
    );
    assert_eq!(AuthError::Expired.code(), ErrorCode::AuthFailed);
    // A failing token's content never shows up in the message.
    let mut a = auth(hs_config());
    let token = hs(&with(valid_claims(), "role", json!("root-of-all-evil")));
    let msg = a.verify(&token, NOW_MS).expect_err("bad role").to_string();
    assert!(!msg.contains("root-of-all-evil") && !msg.contains(&token));
}
