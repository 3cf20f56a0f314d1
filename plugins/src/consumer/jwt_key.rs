//! JWT verification keys: a consumer's own (`[[consumers]] jwt = [...]`) or one from a JWKS.

use crate::config_error::ConfigError;
use crate::consumer::identity::Consumer;
use http::HeaderValue;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use std::sync::Arc;

/// Shortest HMAC secret accepted (RFC 7518 §3.2: at least the hash output size of HS256).
const MIN_HMAC_SECRET: usize = 32;

/// A JWT credential as written in `[[consumers]] jwt = [...]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKeySpec {
    /// Matched against the token's `kid`, or the `key_claim` claim when there is no `kid`.
    pub key: String,
    /// `HS256`, `HS384`, `HS512`, `RS256`, `RS384`, `RS512`, `PS256`, `PS384`, `PS512`,
    /// `ES256`, `ES384` or `EdDSA`.
    pub algorithm: String,
    /// HMAC secret (HS*), at least 32 bytes.
    #[serde(default)]
    pub secret: Option<String>,
    /// The secret is base64 (standard alphabet).
    #[serde(default)]
    pub secret_base64: bool,
    /// PEM public key (RS*, PS*, ES*, EdDSA).
    #[serde(default)]
    pub public_key: Option<String>,
    /// File with the PEM public key.
    #[serde(default)]
    pub public_key_file: Option<String>,
}

/// A key ready to verify with, and whose it is.
pub struct JwtKey {
    /// The only algorithm this key accepts.
    pub algorithm: Algorithm,
    key: DecodingKey,
    /// The consumer a token signed with this key authenticates (none for JWKS keys).
    pub consumer: Option<Arc<Consumer>>,
    credential: HeaderValue,
}

impl JwtKey {
    /// A key from its parts (JWKS keys: no consumer, the `kid` as credential).
    pub fn new(
        algorithm: Algorithm,
        key: DecodingKey,
        consumer: Option<Arc<Consumer>>,
        credential: HeaderValue,
    ) -> Self {
        JwtKey {
            algorithm,
            key,
            consumer,
            credential,
        }
    }

    /// The key material.
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }

    /// `X-Credential-Identifier` of tokens verified with this key.
    pub fn credential(&self) -> &HeaderValue {
        &self.credential
    }

    /// Compile a consumer's credential; errors relative to the spec.
    pub fn build(spec: &JwtKeySpec, consumer: Arc<Consumer>) -> Result<Self, Vec<ConfigError>> {
        let algorithm: Algorithm = spec.algorithm.parse().map_err(|_| {
            vec![ConfigError::new(
                "algorithm",
                format!("unsupported algorithm {:?}", spec.algorithm),
            )]
        })?;
        let credential = HeaderValue::from_str(&spec.key)
            .map_err(|_| vec![ConfigError::new("key", "must be printable text")])?;
        let key = match algorithm {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let Some(secret) = &spec.secret else {
                    return Err(vec![ConfigError::new("secret", "HS* keys need `secret`")]);
                };
                let key = if spec.secret_base64 {
                    DecodingKey::from_base64_secret(secret)
                        .map_err(|_| vec![ConfigError::new("secret", "not valid base64")])?
                } else {
                    DecodingKey::from_secret(secret.as_bytes())
                };
                let len = key.try_get_as_bytes().map_or(0, |b| b.len());
                if len < MIN_HMAC_SECRET {
                    return Err(vec![ConfigError::new(
                        "secret",
                        "HMAC secrets must be at least 32 bytes",
                    )]);
                }
                key
            }
            _ => {
                let pem = match (&spec.public_key, &spec.public_key_file) {
                    (Some(p), None) => p.clone(),
                    (None, Some(f)) => std::fs::read_to_string(f)
                        .map_err(|e| vec![ConfigError::new("public_key_file", format!("cannot read {f:?}: {e}"))])?,
                    _ => {
                        return Err(vec![ConfigError::new(
                            "public_key",
                            "asymmetric keys need exactly one of `public_key` (PEM) or `public_key_file`",
                        )])
                    }
                };
                let parsed = match algorithm {
                    Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem.as_bytes()),
                    Algorithm::EdDSA => DecodingKey::from_ed_pem(pem.as_bytes()),
                    _ => DecodingKey::from_rsa_pem(pem.as_bytes()),
                };
                parsed.map_err(|e| {
                    vec![ConfigError::new(
                        "public_key",
                        format!("not a PEM public key for {}: {e}", spec.algorithm),
                    )]
                })?
            }
        };
        Ok(JwtKey::new(algorithm, key, Some(consumer), credential))
    }
}
