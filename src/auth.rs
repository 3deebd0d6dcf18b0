//! Signed join tokens (README: Who may join): who may take an id, and in room mode which room.
//!
//! With `--auth-secret` the PeerJS `token` a client connects with is a JWT that the app's
//! backend signed with HMAC-SHA256. This module verifies one and says what it grants; it
//! does no I/O and keeps no state but the keys (and a clock offset tests can move).
//!
//! What a token must be, checked in this order (the first failure is the reason given):
//! 1. at most [`MAX_TOKEN_LEN`] bytes;
//! 2. three base64url parts whose header names `HS256` (`alg: none`, `HS384`, `RS256`… are
//!    refused: the algorithm is pinned, never taken from the token);
//! 3. signed with one of the configured secrets (the first signs, a second is still
//!    accepted while a secret is rotated);
//! 4. `iss` and `aud` equal to `--auth-issuer`/`--auth-audience` when those are set;
//! 5. an `exp` claim (a NumericDate, seconds since the epoch);
//! 6. `sub` equal to the id the socket asks for;
//! 7. room mode: a `room` claim of 1–64 bytes, which names the room (the raw token no
//!    longer does);
//! 8. `nbf`, when present, not in the future.
//!
//! Time checks allow [`LEEWAY_SECS`] of clock skew either way. `exp` is the one check the
//! verifier does not decide alone: a token past its `exp` is still good for a same-token
//! reconnect of an id that is registered with that very token (a PeerJS `reconnect()` reuses
//! its token), which only the room knows. So [`TokenVerifier::check`] reports it as
//! [`Grant::expired`] and the room refuses everyone else with [`TokenError::Expired`].
//!
//! Signature first, claims after: nothing about a token's claims is revealed (or acted on)
//! unless it carries a valid signature.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use crate::protocol::MAX_NAME_LEN;

/// Longest token accepted with `--auth-secret` (without it tokens are room names or reconnect
/// secrets and stay within [`MAX_NAME_LEN`]). A signed token with a few claims is 150–400
/// bytes; this leaves room for apps that add their own claims, and the request head that
/// carries it stays within what the upgrade reads (8 KiB on the short path, 64 KiB on hyper's).
pub const MAX_TOKEN_LEN: usize = 4096;

/// Clock skew allowed on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 60;

/// Shortest secret accepted, in bytes: HMAC-SHA256's output size (RFC 7518 §3.2).
pub const MIN_SECRET_LEN: usize = 32;

/// A secret key. Its `Debug` never shows it, so configurations can be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<[u8]>);

impl Secret {
    /// The secret's bytes.
    pub fn new(bytes: impl Into<Box<[u8]>>) -> Self {
        Secret(bytes.into())
    }

    /// The key material.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// Why a token was refused. Each variant is one reason a client reads after
/// "Invalid token: " and one `reason` label in `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Longer than [`MAX_TOKEN_LEN`].
    #[error("too long")]
    TooLong,
    /// Not a JWT: not three base64url parts, not JSON, or a claim of the wrong type.
    #[error("malformed")]
    Malformed,
    /// The header names another algorithm than HS256 (or none).
    #[error("unsupported algorithm")]
    Algorithm,
    /// Not signed with any configured secret.
    #[error("bad signature")]
    Signature,
    /// No `exp` claim.
    #[error("missing exp")]
    MissingExp,
    /// Past its `exp` (plus leeway), and not a same-token reconnect.
    #[error("expired")]
    Expired,
    /// Its `nbf` is still in the future (beyond the leeway).
    #[error("not yet valid")]
    NotYetValid,
    /// `sub` is not the id the socket asks for (or is missing).
    #[error("wrong id")]
    WrongId,
    /// Room mode: the `room` claim is not a string of at most 64 bytes.
    #[error("wrong room")]
    WrongRoom,
    /// Room mode: no `room` claim (or an empty one).
    #[error("missing room")]
    MissingRoom,
    /// `iss` missing or not `--auth-issuer`.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` missing or not `--auth-audience`.
    #[error("wrong audience")]
    WrongAudience,
}

impl TokenError {
    /// Every reason, in declaration order.
    pub const ALL: [TokenError; 12] = [
        TokenError::TooLong,
        TokenError::Malformed,
        TokenError::Algorithm,
        TokenError::Signature,
        TokenError::MissingExp,
        TokenError::Expired,
        TokenError::NotYetValid,
        TokenError::WrongId,
        TokenError::WrongRoom,
        TokenError::MissingRoom,
        TokenError::WrongIssuer,
        TokenError::WrongAudience,
    ];

    /// The ERROR text the client shows: `Invalid token: <reason>`.
    pub fn message(self) -> &'static str {
        match self {
            TokenError::TooLong => "Invalid token: too long",
            TokenError::Malformed => "Invalid token: malformed",
            TokenError::Algorithm => "Invalid token: unsupported algorithm",
            TokenError::Signature => "Invalid token: bad signature",
            TokenError::MissingExp => "Invalid token: missing exp",
            TokenError::Expired => "Invalid token: expired",
            TokenError::NotYetValid => "Invalid token: not yet valid",
            TokenError::WrongId => "Invalid token: wrong id",
            TokenError::WrongRoom => "Invalid token: wrong room",
            TokenError::MissingRoom => "Invalid token: missing room",
            TokenError::WrongIssuer => "Invalid token: wrong issuer",
            TokenError::WrongAudience => "Invalid token: wrong audience",
        }
    }
}

/// What a token that passed [`TokenVerifier::check`] grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Room mode: the room named by the `room` claim.
    pub room: Option<Box<str>>,
    /// Past `exp` (plus leeway): good only for a same-token reconnect of a registered id.
    pub expired: bool,
    /// The signature part, which identifies the token: two validly signed tokens with the
    /// same signature are the same token. Kept by the room as the id's reconnect secret
    /// (43 bytes instead of the whole token).
    pub signature: Box<str>,
}

/// The claims of a verified token, as far as the server reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The peer id the token is for.
    pub sub: Option<String>,
    /// Expiry, seconds since the epoch.
    pub exp: Option<u64>,
    /// Not before, seconds since the epoch.
    pub nbf: Option<u64>,
    /// The room claim as it was: `Ok(None)` absent, `Err` not a string.
    room: Result<Option<String>, ()>,
}

/// The claims read from a token: numbers may be integers or decimals (RFC 7519
/// NumericDate); anything else of the wrong type makes the token malformed.
#[derive(serde::Deserialize)]
struct RawClaims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<serde_json::Number>,
    #[serde(default)]
    nbf: Option<serde_json::Number>,
    #[serde(default)]
    room: Option<serde_json::Value>,
}

/// Seconds since the epoch from a NumericDate; `None` for a negative or absurd number.
fn numeric_date(n: &serde_json::Number) -> Option<u64> {
    n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
            .map(|f| f as u64)
    })
}

/// The claims `peerjsd token` (and tests) put in a token they mint.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MintClaims {
    /// The peer id.
    pub sub: String,
    /// Room mode: the room.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// Issued at.
    pub iat: u64,
    /// Expiry.
    pub exp: u64,
    /// `--auth-issuer`, when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// `--auth-audience`, when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// Verifies join tokens against the configured secrets (and signs with the first one).
pub struct TokenVerifier {
    /// One key per configured secret, the signing one first.
    keys: Vec<DecodingKey>,
    signing: Option<EncodingKey>,
    /// HS256 only; `iss`/`aud` when configured. Time claims are checked here, against
    /// [`TokenVerifier::now`], not by the crate (which reads the system clock itself).
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
    /// Seconds added to the system clock; only tests move it.
    clock_offset: AtomicU64,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("keys", &self.keys.len())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl TokenVerifier {
    /// A verifier for tokens signed with any of `secrets` (the first one signs), requiring
    /// `iss`/`aud` when given.
    pub fn new(secrets: &[Secret], issuer: Option<&str>, audience: Option<&str>) -> Self {
        // HS256 is pinned here: a token's header never chooses the algorithm.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims = HashSet::new();
        validation.validate_aud = audience.is_some();
        if let Some(iss) = issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        if let Some(aud) = audience {
            validation.set_audience(&[aud]);
            validation.required_spec_claims.insert("aud".into());
        }
        // An empty secret is the only failure, and configuration refuses those.
        let keys = secrets
            .iter()
            .filter_map(|s| DecodingKey::from_secret(s.bytes()).ok())
            .collect();
        let signing = secrets
            .first()
            .and_then(|s| EncodingKey::from_secret(s.bytes()).ok());
        TokenVerifier {
            keys,
            signing,
            validation,
            issuer: issuer.map(str::to_owned),
            audience: audience.map(str::to_owned),
            clock_offset: AtomicU64::new(0),
        }
    }

    /// Seconds since the epoch, as this verifier sees them.
    pub fn now(&self) -> u64 {
        let system = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        system.saturating_add(self.clock_offset.load(Ordering::Relaxed))
    }

    /// Moves this verifier's clock forward (tests: a token expires without waiting).
    pub fn advance_clock(&self, by: Duration) {
        self.clock_offset.fetch_add(by.as_secs(), Ordering::Relaxed);
    }

    /// Checks `token` for a socket that asks for `id` (module docs list the checks, in
    /// order). An expired token passes with [`Grant::expired`] set.
    pub fn check(
        &self,
        token: &str,
        id: &str,
        room_mode: bool,
        now: u64,
    ) -> Result<Grant, TokenError> {
        let claims = self.verify(token)?;
        let exp = claims.exp.ok_or(TokenError::MissingExp)?;
        if claims.sub.as_deref() != Some(id) {
            return Err(TokenError::WrongId);
        }
        let room = if room_mode {
            Some(Box::from(claims.room()?))
        } else {
            None
        };
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(LEEWAY_SECS))
        {
            return Err(TokenError::NotYetValid);
        }
        Ok(Grant {
            room,
            expired: exp.saturating_add(LEEWAY_SECS) < now,
            signature: Box::from(token.rsplit('.').next().unwrap_or_default()),
        })
    }

    /// Checks `token` for a REST request (no id to match; `exp` always applies).
    pub fn check_request(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let claims = self.verify(token)?;
        let exp = claims.exp.ok_or(TokenError::MissingExp)?;
        if exp.saturating_add(LEEWAY_SECS) < now {
            return Err(TokenError::Expired);
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(LEEWAY_SECS))
        {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }

    /// Length, algorithm, signature, `iss`/`aud`, and the claims' types.
    fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        let mut refusal = TokenError::Signature;
        for key in &self.keys {
            match jsonwebtoken::decode::<RawClaims>(token, key, &self.validation) {
                Ok(data) => return Claims::read(data.claims),
                Err(e) => {
                    refusal = classify(e.kind(), token);
                    if refusal != TokenError::Signature {
                        break;
                    }
                }
            }
        }
        Err(refusal)
    }

    /// A token for `claims`, signed with the first secret. `None` without a secret.
    pub fn mint(&self, claims: &MintClaims) -> Option<String> {
        let key = self.signing.as_ref()?;
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, key).ok()
    }

    /// Claims for a token for `sub` (and `room`) valid from `now` for `ttl`, with this
    /// verifier's `iss`/`aud`.
    pub fn claims_for(&self, sub: &str, room: Option<&str>, now: u64, ttl: Duration) -> MintClaims {
        MintClaims {
            sub: sub.to_owned(),
            room: room.map(str::to_owned),
            iat: now,
            exp: now.saturating_add(ttl.as_secs()),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        }
    }
}

impl Claims {
    fn read(raw: RawClaims) -> Result<Self, TokenError> {
        let date = |n: Option<serde_json::Number>| match n {
            None => Ok(None),
            Some(n) => numeric_date(&n).map(Some).ok_or(TokenError::Malformed),
        };
        Ok(Claims {
            sub: raw.sub,
            exp: date(raw.exp)?,
            nbf: date(raw.nbf)?,
            room: match raw.room {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(room)) => Ok(Some(room)),
                Some(_) => Err(()),
            },
        })
    }

    /// The room the token names (room mode).
    pub fn room(&self) -> Result<&str, TokenError> {
        match &self.room {
            Ok(None) => Err(TokenError::MissingRoom),
            Ok(Some(room)) if room.is_empty() => Err(TokenError::MissingRoom),
            Ok(Some(room)) if room.len() <= MAX_NAME_LEN => Ok(room),
            Ok(Some(_)) | Err(()) => Err(TokenError::WrongRoom),
        }
    }
}

/// Maps the crate's error to a reason. A header the crate cannot read because it names an
/// algorithm the crate does not know (`none`, `HS999`) is an algorithm refusal, not a
/// malformed token.
fn classify(kind: &ErrorKind, token: &str) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature => TokenError::Signature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::MissingAlgorithm => TokenError::Algorithm,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) | ErrorKind::InvalidClaimFormat(claim) => {
            match claim.as_str() {
                "iss" => TokenError::WrongIssuer,
                "aud" => TokenError::WrongAudience,
                _ => TokenError::Malformed,
            }
        }
        ErrorKind::Json(_) if names_other_algorithm(token) => TokenError::Algorithm,
        _ => TokenError::Malformed,
    }
}

/// Whether the token's header is JSON with an `alg` other than `HS256`.
fn names_other_algorithm(token: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct AlgOnly {
        alg: String,
    }
    let Some(header) = token.split('.').next() else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|json| serde_json::from_slice::<AlgOnly>(&json).ok())
        .is_some_and(|h| h.alg != "HS256")
}

/// The reason a refused token is counted by.
impl From<TokenError> for crate::protocol::Rejection {
    fn from(why: TokenError) -> Self {
        match why {
            TokenError::TooLong => crate::protocol::Rejection::TokenTooLong,
            TokenError::Malformed => crate::protocol::Rejection::TokenMalformed,
            TokenError::Algorithm => crate::protocol::Rejection::TokenAlgorithm,
            TokenError::Signature => crate::protocol::Rejection::TokenSignature,
            TokenError::MissingExp => crate::protocol::Rejection::TokenMissingExp,
            TokenError::Expired => crate::protocol::Rejection::TokenExpired,
            TokenError::NotYetValid => crate::protocol::Rejection::TokenNotYetValid,
            TokenError::WrongId => crate::protocol::Rejection::TokenWrongId,
            TokenError::WrongRoom => crate::protocol::Rejection::TokenWrongRoom,
            TokenError::MissingRoom => crate::protocol::Rejection::TokenMissingRoom,
            TokenError::WrongIssuer => crate::protocol::Rejection::TokenWrongIssuer,
            TokenError::WrongAudience => crate::protocol::Rejection::TokenWrongAudience,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_750_000_000;

    fn secret(s: &str) -> Secret {
        Secret::new(s.as_bytes())
    }

    fn verifier() -> TokenVerifier {
        TokenVerifier::new(&[secret(&"a".repeat(32))], None, None)
    }

    fn sign(v: &TokenVerifier, claims: serde_json::Value) -> String {
        let key = v.signing.as_ref().expect("signing key");
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key).unwrap()
    }

    fn b64(json: &serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.to_string())
    }

    #[test]
    fn a_valid_token_grants_its_id_and_room() {
        let v = verifier();
        let t = sign(
            &v,
            serde_json::json!({"sub": "alice", "exp": NOW + 10, "room": "r1"}),
        );
        let grant = v.check(&t, "alice", true, NOW).unwrap();
        assert_eq!(grant.room.as_deref(), Some("r1"));
        assert!(!grant.expired);
        assert_eq!(&*grant.signature, t.rsplit('.').next().unwrap());
        assert_eq!(v.check(&t, "alice", false, NOW).unwrap().room, None);
    }

    #[test]
    fn each_refusal_has_its_reason() {
        let v = verifier();
        let exp = NOW + 100;
        let token = |c: serde_json::Value| sign(&v, c);
        let cases = [
            (
                token(serde_json::json!({"sub": "bob", "exp": exp, "room": "r"})),
                TokenError::WrongId,
            ),
            (
                token(serde_json::json!({"exp": exp, "room": "r"})),
                TokenError::WrongId,
            ),
            (
                token(serde_json::json!({"sub": "alice", "room": "r"})),
                TokenError::MissingExp,
            ),
            (
                token(serde_json::json!({"sub": "alice", "exp": exp})),
                TokenError::MissingRoom,
            ),
            (
                token(serde_json::json!({"sub": "alice", "exp": exp, "room": ""})),
                TokenError::MissingRoom,
            ),
            (
                token(serde_json::json!({"sub": "alice", "exp": exp, "room": 7})),
                TokenError::WrongRoom,
            ),
            (
                token(serde_json::json!({"sub": "alice", "exp": exp, "room": "x".repeat(65)})),
                TokenError::WrongRoom,
            ),
            (
                token(serde_json::json!({"sub": 5, "exp": exp, "room": "r"})),
                TokenError::Malformed,
            ),
            (
                token(serde_json::json!({"sub": "alice", "exp": "soon", "room": "r"})),
                TokenError::Malformed,
            ),
            (
                token(
                    serde_json::json!({"sub": "alice", "exp": exp, "nbf": NOW + 61, "room": "r"}),
                ),
                TokenError::NotYetValid,
            ),
            ("x".repeat(MAX_TOKEN_LEN + 1), TokenError::TooLong),
            ("not a token".into(), TokenError::Malformed),
            ("a.b.c".into(), TokenError::Malformed),
            (String::new(), TokenError::Malformed),
        ];
        for (t, why) in cases {
            assert_eq!(v.check(&t, "alice", true, NOW), Err(why), "{t}");
        }
        // Within the leeway, nbf and exp still pass.
        let t = token(serde_json::json!({"sub": "alice", "exp": NOW - 60, "nbf": NOW + 60}));
        assert!(!v.check(&t, "alice", false, NOW).unwrap().expired);
        let t = token(serde_json::json!({"sub": "alice", "exp": NOW - 61}));
        assert!(v.check(&t, "alice", false, NOW).unwrap().expired);
        assert_eq!(v.check_request(&t, NOW), Err(TokenError::Expired));
        // A decimal NumericDate is a date.
        let t = token(serde_json::json!({"sub": "alice", "exp": (NOW + 5) as f64 + 0.5}));
        assert!(!v.check(&t, "alice", false, NOW).unwrap().expired);
    }

    #[test]
    fn only_hs256_signed_with_our_secret_passes() {
        let v = verifier();
        let claims = serde_json::json!({"sub": "alice", "exp": NOW + 100});
        let good = sign(&v, claims.clone());
        let (head, rest) = good.split_once('.').unwrap();
        let (payload, sig) = rest.split_once('.').unwrap();
        // alg: none, with and without a signature.
        let none = b64(&serde_json::json!({"alg": "none", "typ": "JWT"}));
        for t in [
            format!("{none}.{payload}."),
            format!("{none}.{payload}.{sig}"),
        ] {
            assert_eq!(
                v.check(&t, "alice", false, NOW),
                Err(TokenError::Algorithm),
                "{t}"
            );
        }
        // Algorithms the crate knows but we do not accept, even with a matching HMAC.
        for alg in [
            "HS384", "HS512", "RS256", "ES256", "EdDSA", "PS256", "HS999",
        ] {
            let h = b64(&serde_json::json!({"alg": alg, "typ": "JWT"}));
            let t = format!("{h}.{payload}.{sig}");
            assert_eq!(
                v.check(&t, "alice", false, NOW),
                Err(TokenError::Algorithm),
                "{alg}"
            );
        }
        let other = TokenVerifier::new(&[secret(&"b".repeat(32))], None, None);
        let forged = sign(&other, claims);
        assert_eq!(
            v.check(&forged, "alice", false, NOW),
            Err(TokenError::Signature)
        );
        // A claim changed after signing.
        let changed = b64(&serde_json::json!({"sub": "mallory", "exp": NOW + 100}));
        let t = format!("{head}.{changed}.{sig}");
        assert_eq!(
            v.check(&t, "mallory", false, NOW),
            Err(TokenError::Signature)
        );
    }

    #[test]
    fn the_second_secret_verifies_and_the_first_signs() {
        let old = TokenVerifier::new(&[secret(&"o".repeat(32))], None, None);
        let both = TokenVerifier::new(
            &[secret(&"n".repeat(32)), secret(&"o".repeat(32))],
            None,
            None,
        );
        let new_only = TokenVerifier::new(&[secret(&"n".repeat(32))], None, None);
        let claims = both.claims_for("alice", None, NOW, Duration::from_secs(60));
        let by_old = old.mint(&claims).unwrap();
        let by_both = both.mint(&claims).unwrap();
        assert!(both.check(&by_old, "alice", false, NOW).is_ok());
        assert!(new_only.check(&by_both, "alice", false, NOW).is_ok());
        assert_eq!(
            old.check(&by_both, "alice", false, NOW),
            Err(TokenError::Signature)
        );
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let s = [secret(&"a".repeat(32))];
        let v = TokenVerifier::new(&s, Some("https://app"), Some("peerjsd"));
        let plain = verifier();
        let base = serde_json::json!({"sub": "alice", "exp": NOW + 100});
        let with = |extra: serde_json::Value| {
            let mut c = base.clone();
            for (k, val) in extra.as_object().unwrap() {
                c[k] = val.clone();
            }
            sign(&v, c)
        };
        let ok = with(serde_json::json!({"iss": "https://app", "aud": "peerjsd"}));
        assert!(v.check(&ok, "alice", false, NOW).is_ok());
        for (t, why) in [
            (
                with(serde_json::json!({"aud": "peerjsd"})),
                TokenError::WrongIssuer,
            ),
            (
                with(serde_json::json!({"iss": "https://evil", "aud": "peerjsd"})),
                TokenError::WrongIssuer,
            ),
            (
                with(serde_json::json!({"iss": "https://app"})),
                TokenError::WrongAudience,
            ),
            (
                with(serde_json::json!({"iss": "https://app", "aud": "other"})),
                TokenError::WrongAudience,
            ),
        ] {
            assert_eq!(v.check(&t, "alice", false, NOW), Err(why), "{t}");
        }
        // Not configured: not required, and a token that carries them still passes.
        assert!(plain.check(&ok, "alice", false, NOW).is_ok());
        // Minted claims carry the configured values.
        let minted = v
            .mint(&v.claims_for("alice", None, NOW, Duration::from_secs(9)))
            .unwrap();
        assert!(v.check(&minted, "alice", false, NOW).is_ok());
    }

    #[test]
    fn the_clock_can_be_moved_and_secrets_do_not_print() {
        let v = verifier();
        let before = v.now();
        v.advance_clock(Duration::from_secs(3600));
        assert!(v.now() >= before + 3600);
        let s = secret("hunter2hunter2hunter2hunter2hunter2");
        assert!(!format!("{s:?} {v:?}").contains("hunter2"));
        let messages: HashSet<&str> = TokenError::ALL.iter().map(|e| e.message()).collect();
        assert_eq!(messages.len(), TokenError::ALL.len());
        for e in TokenError::ALL {
            assert_eq!(e.message(), format!("Invalid token: {e}"));
        }
    }
}
