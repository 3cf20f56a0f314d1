//! Keys of a JWKS document (RFC 7517), loaded from a file with the config or fetched from a
//! URL ([`super::jwks`]).

use crate::consumer::jwt_key::JwtKey;
use http::HeaderValue;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::collections::HashMap;

/// Keys of a JWKS document by `kid`.
pub(super) type KeyMap = HashMap<String, JwtKey>;

/// Parse a JWKS document (RFC 7517) into its usable asymmetric keys. Keys without a `kid`,
/// symmetric keys and keys of unknown types are skipped; a set with no usable key is an error.
pub(super) fn parse_jwks(text: &str) -> Result<KeyMap, String> {
    let set: JwkSet =
        serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut out = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = &jwk.common.key_id else {
            continue;
        };
        let alg = match jwk
            .common
            .key_algorithm
            .map(|a| a.to_string().parse::<Algorithm>())
        {
            Some(Ok(a)) => a,
            // No `alg`: the one algorithm the key type allows without ambiguity.
            _ => match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => {
                    Algorithm::ES384
                }
                AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                _ => continue,
            },
        };
        if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            // Symmetric keys do not belong in a published key set.
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        let Ok(credential) = HeaderValue::from_str(kid) else {
            continue;
        };
        out.insert(kid.clone(), JwtKey::new(alg, key, None, credential));
    }
    if out.is_empty() {
        return Err("the JWKS has no usable key with a `kid`".to_string());
    }
    Ok(out)
}
