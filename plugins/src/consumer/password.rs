//! Password hashes of basic-auth credentials: which formats are accepted, how one is made
//! (`tollgate hash-password`) and how a presented password is checked against one.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// Checked against when the user is unknown, so the answer takes as long as for a known
/// user with a wrong password (no user enumeration by timing). An argon2id hash with the
/// parameters [`hash_password`] uses, of a random password nobody knows.
pub const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$zeFMK8hjPvUPQrrU98zPgA$OYE9Pa52Jcs/p4j9o6SmPSTSqOnl0WgU3AQSVg5z7gY";

/// Length of every bcrypt hash (`$2b$` + cost + salt + digest).
const BCRYPT_LEN: usize = 60;

/// Does tollgate know how to verify this hash?
pub fn is_supported_hash(hash: &str) -> bool {
    if hash.starts_with("$argon2") {
        PasswordHash::new(hash).is_ok()
    } else {
        ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) && hash.len() == BCRYPT_LEN
    }
}

/// Hash a password for `[[consumers]] basic_auth.password_hash` (argon2id, random salt).
pub fn hash_password(password: &str) -> Result<String, String> {
    // The salt must be unpredictable: take it from the operating system.
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).map_err(|e| e.to_string())?;
    let salt = SaltString::encode_b64(&raw).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Does `password` match `hash`? Costs what the hash's parameters say (milliseconds, on
/// purpose): call it off the async workers.
pub fn verify(password: &str, hash: &str) -> bool {
    if hash.starts_with("$argon2") {
        PasswordHash::new(hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false)
    } else {
        bcrypt::verify(password, hash).unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify() {
        let h = hash_password("pw").unwrap();
        assert!(is_supported_hash(&h));
        assert!(verify("pw", &h));
        assert!(!verify("px", &h));
        let b = bcrypt::hash("pw", 4).unwrap();
        assert!(is_supported_hash(&b));
        assert!(verify("pw", &b));
        assert!(!is_supported_hash("plaintext"));
    }

    #[test]
    fn dummy_hash_costs_what_a_real_one_does() {
        assert!(is_supported_hash(DUMMY_HASH));
        let real = PasswordHash::new(&hash_password("x").unwrap())
            .unwrap()
            .params
            .to_string();
        let dummy = PasswordHash::new(DUMMY_HASH).unwrap().params.to_string();
        assert_eq!(real, dummy);
        assert!(!verify("tollgate-dummy", DUMMY_HASH));
    }
}
