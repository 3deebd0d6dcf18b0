//! Join tokens for a peerjsd started with `--auth-secret`: HS256 JWTs signed the way an app's
//! backend signs them, so the load generator can measure what verifying one costs the server.

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The secret `peerjsd-bench` starts `peerjsd --auth-secret` with (a benchmark, not a secret).
pub const BENCH_SECRET: &str = "peerjsd-bench signing secret, 32+ bytes";

/// Signs join tokens with one secret.
pub struct Signer {
    mac: Hmac<Sha256>,
    /// `base64url({"alg":"HS256","typ":"JWT"})`, the same for every token.
    header: String,
}

impl Signer {
    /// A signer for `secret`.
    pub fn new(secret: &str) -> Self {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        Signer {
            // HMAC takes keys of any length.
            mac: Hmac::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length"),
            header: b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
        }
    }

    /// A token for `sub` (and `room`), expiring at `exp` (seconds since the epoch).
    pub fn token(&self, sub: &str, room: Option<&str>, exp: u64) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims = match room {
            Some(room) => serde_json::json!({"sub": sub, "room": room, "exp": exp}),
            None => serde_json::json!({"sub": sub, "exp": exp}),
        };
        let signed = format!("{}.{}", self.header, b64.encode(claims.to_string()));
        let mut mac = self.mac.clone();
        mac.update(signed.as_bytes());
        let signature = b64.encode(mac.finalize().into_bytes());
        format!("{signed}.{signature}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_has_three_parts_and_its_claims() {
        let t = Signer::new(BENCH_SECRET).token("c0n1", Some("r1"), 7);
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[1])
            .unwrap();
        assert_eq!(claims, br#"{"exp":7,"room":"r1","sub":"c0n1"}"#);
        assert_eq!(parts[2].len(), 43);
    }
}
