//! Server-issued ids (`--issued-ids-only`, README: Who may join): ids that carry proof that this server,
//! or a node sharing its secret, minted them.
//!
//! An issued id is `<nonce>-<tag>`: 24 hex digits of random nonce (96 bits), a `-`, and 32 hex
//! digits (128 bits) of HMAC-SHA256 over a fixed label and the nonce. It stays inside the
//! PeerJS client's id grammar (lower-case alphanumerics around one `-`, 57 characters), so a
//! stock client that calls `new Peer()` takes it from `GET {path}{key}/id` and connects with
//! it unchanged. Checking one is a MAC over 12 bytes, compared in constant time; nobody
//! without the secret can produce an id the server accepts, so nobody can squat a chosen id.
//!
//! The key is `--id-secret` (or, without it, the `--auth-secret`s; or, with neither, random
//! per process). The label keeps these MACs apart from the join tokens' signatures made with
//! the same secret: a token's signed text is base64url and dots, never this label.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::auth::Secret;

/// What the MAC covers before the nonce.
const LABEL: &[u8] = b"peerjsd issued id v1\0";
/// Random bytes per id.
const NONCE_LEN: usize = 12;
/// MAC bytes kept per id.
const TAG_LEN: usize = 16;
/// Length of an issued id: hex nonce, `-`, hex tag.
pub const ISSUED_ID_LEN: usize = 2 * NONCE_LEN + 1 + 2 * TAG_LEN;

/// Mints and recognises issued ids.
#[derive(Clone)]
pub struct IdIssuer {
    /// One MAC per secret; the first mints, all verify (so a secret can be rotated).
    keys: Vec<Hmac<Sha256>>,
}

impl std::fmt::Debug for IdIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdIssuer({} keys)", self.keys.len())
    }
}

/// The system's random source failed.
#[derive(Debug, thiserror::Error)]
#[error("no randomness available: {0}")]
pub struct NoRandomness(getrandom::Error);

impl IdIssuer {
    /// An issuer keyed with `secrets` (the first one mints).
    pub fn new(secrets: &[Secret]) -> Self {
        // HMAC takes keys of any length: this cannot fail.
        let keys = secrets
            .iter()
            .filter_map(|s| Hmac::<Sha256>::new_from_slice(s.bytes()).ok())
            .collect();
        IdIssuer { keys }
    }

    /// An issuer with a random key of its own: its ids are valid until the process ends,
    /// and only on this node.
    pub fn random() -> Result<Self, NoRandomness> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(NoRandomness)?;
        Ok(Self::new(&[Secret::new(key.to_vec())]))
    }

    /// A fresh id.
    pub fn mint(&self) -> Result<String, NoRandomness> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(NoRandomness)?;
        let mut id = String::with_capacity(ISSUED_ID_LEN);
        push_hex(&mut id, &nonce);
        id.push('-');
        if let Some(key) = self.keys.first() {
            let tag = tag(key, &nonce);
            push_hex(&mut id, &tag.finalize().as_bytes()[..TAG_LEN]);
        }
        Ok(id)
    }

    /// Whether `id` was minted with one of this issuer's secrets.
    pub fn is_issued(&self, id: &str) -> bool {
        let Some((nonce, claimed)) = id.split_once('-') else {
            return false;
        };
        let (Some(nonce), Some(claimed)) =
            (from_hex::<NONCE_LEN>(nonce), from_hex::<TAG_LEN>(claimed))
        else {
            return false;
        };
        self.keys
            .iter()
            .any(|key| tag(key, &nonce).verify_truncated_left(&claimed).is_ok())
    }
}

fn tag(key: &Hmac<Sha256>, nonce: &[u8; NONCE_LEN]) -> Hmac<Sha256> {
    let mut mac = key.clone();
    mac.update(LABEL);
    mac.update(nonce);
    mac
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn push_hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
}

/// Exactly `2 * N` lower-case hex digits (the only form [`IdIssuer::mint`] writes).
fn from_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let value = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = value(pair[0])? << 4 | value(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::is_valid_id;

    fn issuer(s: &str) -> IdIssuer {
        IdIssuer::new(&[Secret::new(s.as_bytes())])
    }

    #[test]
    fn minted_ids_are_valid_client_ids_and_recognised() {
        let ids = issuer("one");
        let a = ids.mint().unwrap();
        let b = ids.mint().unwrap();
        assert_ne!(a, b);
        for id in [&a, &b] {
            assert_eq!(id.len(), ISSUED_ID_LEN);
            assert!(is_valid_id(id), "{id}");
            assert!(ids.is_issued(id), "{id}");
        }
    }

    #[test]
    fn chosen_tampered_and_foreign_ids_are_not() {
        let ids = issuer("one");
        let id = ids.mint().unwrap();
        let flip = |i: usize| {
            let mut bytes = id.clone().into_bytes();
            bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
            String::from_utf8(bytes).unwrap()
        };
        for bad in [
            flip(0),                 // nonce changed
            flip(ISSUED_ID_LEN - 1), // tag changed
            id.to_uppercase(),       // same bits, another spelling
            id[..ISSUED_ID_LEN - 2].to_owned(),
            format!("{id}0"),
            "alice".to_owned(),
            "0f8fad5b-d9cb-469f-a165-70867728950e".to_owned(),
            String::new(),
            "-".to_owned(),
            issuer("two").mint().unwrap(),
        ] {
            assert!(!ids.is_issued(&bad), "{bad}");
        }
    }

    #[test]
    fn a_second_secret_still_verifies() {
        let old = issuer("old").mint().unwrap();
        let both = IdIssuer::new(&[Secret::new(&b"new"[..]), Secret::new(&b"old"[..])]);
        assert!(both.is_issued(&old));
        assert!(issuer("new").is_issued(&both.mint().unwrap()));
        let random = IdIssuer::random().unwrap();
        assert!(random.is_issued(&random.mint().unwrap()));
        assert!(!random.is_issued(&old));
    }
}
