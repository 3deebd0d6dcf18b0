//! `GET {path}{key}/ice` (README: TURN): short-lived TURN credentials for coturn, so that peers
//! behind symmetric NAT or a firewall can relay through it without the app running a second
//! service.
//!
//! The credentials follow the TURN REST scheme (draft-uberti-behave-turn-rest) that coturn's
//! `use-auth-secret` checks: the username is `"<expiry unix seconds>:<who>"` and the password
//! is `base64(HMAC-SHA1(secret, username))`, with the `--turn-secret` coturn also has as its
//! `static-auth-secret`. coturn recomputes the HMAC and refuses an allocation once the expiry
//! has passed, so peerjsd keeps no state per credential.
//!
//! Who gets credentials:
//! - with `--auth-secret`, only a request with a valid join token (`?token=` or
//!   `Authorization: Bearer`); `who` is the token's `sub`, so coturn's logs and quotas name
//!   the peer;
//! - without it, anyone, at most `--ice-rate-limit` times a minute per client IP (IPv6 per
//!   /64, the block one subscriber gets); `who` is random, so no two requests share a
//!   username.
//!
//! The route exists only with `--turn-secret`: otherwise `/ice` is an unknown path (404). The
//! `{key}` in the path must be `--key` (unlike peerjs-server's `/id` and `/peers`, which ignore
//! it; this route has no history to stay compatible with). Answers are never cached
//! (`Cache-Control: no-store`) and carry the REST routes' CORS headers.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri, header};
use axum::routing::get;
use axum::{Extension, Router};
use base64::Engine as _;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

use super::rest;
use crate::auth::{Secret, TokenError};
use crate::config::{Config, TurnConfig};
use crate::logging::LogIp;
use crate::metrics::IceOutcome;
use crate::protocol::is_valid_id;
use crate::state::Shared;
use crate::ws::upgrade::client_ip;

/// A TURN REST credential: what a client passes to `RTCPeerConnection` as `username` and
/// `credential`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnCredential {
    /// `"<expiry unix seconds>:<who>"`.
    pub username: String,
    /// `base64(HMAC-SHA1(secret, username))`, standard alphabet with padding, as coturn
    /// computes it.
    pub credential: String,
}

/// Signs TURN REST credentials with one secret.
#[derive(Clone)]
pub struct TurnSigner {
    /// HMAC-SHA1 keyed with the secret; cloned for each credential.
    mac: Hmac<Sha1>,
}

impl std::fmt::Debug for TurnSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TurnSigner")
    }
}

impl TurnSigner {
    /// A signer for `secret`, used as its bytes are (coturn uses its `static-auth-secret`
    /// string as the key, with no decoding). `None` only if the MAC refused the key, which
    /// HMAC never does.
    pub fn new(secret: &Secret) -> Option<Self> {
        Hmac::<Sha1>::new_from_slice(secret.bytes())
            .ok()
            .map(|mac| TurnSigner { mac })
    }

    /// The credential for `who`, valid until `expiry` (seconds since the epoch).
    pub fn sign(&self, expiry: u64, who: &str) -> TurnCredential {
        let username = format!("{expiry}:{who}");
        let tag = self
            .mac
            .clone()
            .chain_update(username.as_bytes())
            .finalize();
        let credential = base64::engine::general_purpose::STANDARD.encode(tag.into_bytes());
        TurnCredential {
            username,
            credential,
        }
    }
}

/// Below this many tracked addresses the rate limiter never sweeps.
const SWEEP_MIN: usize = 1024;

/// `--ice-rate-limit`: a GCRA budget per client address, in a map that forgets addresses
/// whose budget is full again.
///
/// Memory: an address stays in the map until its budget has refilled (a second per request
/// at the default 60 a minute). The map is swept whenever it has doubled since the last
/// sweep, so it holds at most about twice the addresses that made a request within their
/// refill time, and a sweep costs O(1) per request amortised. IPv6 clients count per /64, so
/// one subscriber cannot fill the map by hopping through its own block.
pub struct PerIpLimiter<C: Clock = DefaultClock> {
    limiter: RateLimiter<IpAddr, DashMapStateStore<IpAddr>, C, NoOpMiddleware<C::Instant>>,
    /// The map size at which the next sweep runs.
    sweep_at: AtomicUsize,
}

impl<C: Clock> std::fmt::Debug for PerIpLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PerIpLimiter({} addresses)", self.limiter.len())
    }
}

impl PerIpLimiter {
    /// `per_minute` requests a minute per address, the whole minute's worth as a burst.
    pub fn per_minute(per_minute: NonZeroU32) -> Self {
        Self::with_clock(Quota::per_minute(per_minute), DefaultClock::default())
    }
}

impl<C: Clock> PerIpLimiter<C> {
    /// A limiter with `quota` per address, on `clock`.
    pub fn with_clock(quota: Quota, clock: C) -> Self {
        PerIpLimiter {
            limiter: RateLimiter::new(quota, DashMapStateStore::default(), clock),
            sweep_at: AtomicUsize::new(SWEEP_MIN),
        }
    }

    /// Takes one request from `ip`'s budget, or says how long until it has one again.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let verdict = self
            .limiter
            .check_key(&bucket(ip))
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()));
        if self.limiter.len() >= self.sweep_at.load(Ordering::Relaxed) {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
            let next = SWEEP_MIN.max(2 * self.limiter.len());
            self.sweep_at.store(next, Ordering::Relaxed);
        }
        verdict
    }

    /// Addresses tracked right now.
    pub fn tracked(&self) -> usize {
        self.limiter.len()
    }
}

/// The key an address is limited under: IPv4 as it is, IPv6 by its /64.
fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
    }
}

/// What the route needs besides [`Shared`].
struct Ice {
    signer: TurnSigner,
    /// `--stun-uri`s: the first `iceServers` entry (none when empty).
    stun_uris: Vec<String>,
    /// `--turn-uri`s: the entry that carries the credential.
    turn_uris: Vec<String>,
    /// `--turn-ttl`.
    ttl: Duration,
    /// Without `--auth-secret`, when `--ice-rate-limit` is not 0.
    limiter: Option<PerIpLimiter>,
    /// `--ice-rate-limit`, for the 429's text.
    per_minute: u32,
}

/// The `/ice` route (and `/ice/`), or `None` without `--turn-secret`.
pub fn routes(config: &Config) -> Option<Router<Arc<Shared>>> {
    let turn: &TurnConfig = config.turn.as_ref()?;
    let Some(signer) = turn.secrets.first().and_then(TurnSigner::new) else {
        tracing::error!("cannot key HMAC-SHA1 with --turn-secret; GET /ice is off");
        return None;
    };
    let limiter = match (&config.auth, turn.rate_limit) {
        (None, Some(rate)) => Some(PerIpLimiter::per_minute(rate)),
        _ => None,
    };
    let ice = Arc::new(Ice {
        signer,
        stun_uris: turn.stun_uris.clone(),
        turn_uris: turn.turn_uris.clone(),
        ttl: turn.ttl,
        limiter,
        per_minute: turn.rate_limit.map_or(0, NonZeroU32::get),
    });
    let base = config.path.as_str();
    let router = Router::new()
        .route(&format!("{base}{{key}}/ice"), get(serve))
        .route(&format!("{base}{{key}}/ice/"), get(serve))
        .layer(Extension(ice));
    Some(router)
}

#[derive(serde::Deserialize)]
struct IceQuery {
    token: Option<String>,
}

/// The body: the `iceServers` a client passes to `RTCPeerConnection` (or PeerJS `config`),
/// and how long the credential lasts.
#[derive(serde::Serialize)]
struct IceBody<'a> {
    #[serde(rename = "iceServers")]
    ice_servers: Vec<IceServer<'a>>,
    /// Seconds the credential is valid from now.
    ttl: u64,
}

#[derive(serde::Serialize)]
struct IceServer<'a> {
    urls: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credential: Option<&'a str>,
}

/// Why a request gets no credentials. Each maps to one status and one metrics outcome.
enum IceRefusal {
    /// `--auth-secret` and no token at all.
    NoToken,
    /// `--auth-secret` and a token that is not valid (or names no usable `sub`).
    Token(TokenError),
    /// Over `--ice-rate-limit`; retry after this long.
    RateLimited(Duration),
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    State(shared): State<Arc<Shared>>,
    Extension(ice): Extension<Arc<Ice>>,
    Path(key): Path<String>,
    Query(query): Query<IceQuery>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
) -> Response<Body> {
    if key != shared.config.key {
        return rest::not_found(method, uri).await;
    }
    // The server always attaches the peer address; a router driven without it (a unit of
    // the router alone) counts every request as from 0.0.0.0.
    let ip = peer.map_or(
        IpAddr::from([0, 0, 0, 0]),
        |Extension(ConnectInfo(peer))| client_ip(&headers, peer, shared.config.proxied),
    );
    let who = match admit(&shared, &ice, query.token.as_deref(), &headers, ip) {
        Ok(who) => who,
        Err(refusal) => return refuse(&shared, &ice, refusal, ip),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let ttl = ice.ttl.as_secs();
    let credential = ice.signer.sign(now.saturating_add(ttl), &who);
    let mut ice_servers = Vec::with_capacity(2);
    if !ice.stun_uris.is_empty() {
        ice_servers.push(IceServer {
            urls: &ice.stun_uris,
            username: None,
            credential: None,
        });
    }
    ice_servers.push(IceServer {
        urls: &ice.turn_uris,
        username: Some(&credential.username),
        credential: Some(&credential.credential),
    });
    let body = serde_json::to_string(&IceBody { ice_servers, ttl }).unwrap_or_default();
    shared.metrics.ice_request(IceOutcome::Issued);
    answer(StatusCode::OK, body, "application/json")
}

/// Who the credential is for: the token's `sub`, or without auth a random name (after the
/// client's IP passed the rate limit).
fn admit(
    shared: &Shared,
    ice: &Ice,
    token: Option<&str>,
    headers: &HeaderMap,
    ip: IpAddr,
) -> Result<String, IceRefusal> {
    match &shared.auth {
        Some(auth) => {
            let token = rest::request_token(token, headers).ok_or(IceRefusal::NoToken)?;
            let claims = auth
                .check_request(token, auth.now())
                .map_err(IceRefusal::Token)?;
            // The username goes into a STUN attribute: keep it to a PeerJS id.
            match claims.sub {
                Some(sub) if is_valid_id(&sub) => Ok(sub),
                _ => Err(IceRefusal::Token(TokenError::WrongId)),
            }
        }
        None => {
            if let Some(limiter) = &ice.limiter {
                limiter.check(ip).map_err(IceRefusal::RateLimited)?;
            }
            // 122 random bits: nobody can guess (or collide with) another client's username.
            Ok(uuid::Uuid::new_v4().simple().to_string())
        }
    }
}

fn refuse(shared: &Shared, ice: &Ice, refusal: IceRefusal, ip: IpAddr) -> Response<Body> {
    let ip = LogIp(ip);
    match refusal {
        IceRefusal::NoToken | IceRefusal::Token(_) => {
            shared.metrics.ice_request(IceOutcome::Unauthorized);
            let text = match refusal {
                IceRefusal::Token(why) => why.message(),
                _ => "Missing token: send the join token as ?token= or Authorization: Bearer",
            };
            tracing::debug!(ip = %ip, reason = text, "ice refused");
            let mut response = answer(StatusCode::UNAUTHORIZED, text, "text/plain; charset=utf-8");
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
        IceRefusal::RateLimited(wait) => {
            shared.metrics.ice_request(IceOutcome::RateLimited);
            tracing::debug!(ip = %ip, "ice rate limited");
            let text = format!(
                "Too many requests: at most {} a minute from one address",
                ice.per_minute
            );
            let mut response = answer(
                StatusCode::TOO_MANY_REQUESTS,
                text,
                "text/plain; charset=utf-8",
            );
            // Whole seconds, rounded up: a client that waits this long has a request again.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            response
        }
    }
}

/// A response that no cache keeps (it carries a credential, or a refusal of one).
fn answer(status: StatusCode, body: impl Into<Body>, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    const SECRET: &str = "coturn static-auth-secret, 32+ bytes";

    #[test]
    fn the_credential_is_coturn_s_hmac_sha1_of_the_username() {
        // Pinned with: printf '%s' "1700000000:alice" |
        //   openssl dgst -sha1 -hmac "coturn static-auth-secret, 32+ bytes" -binary | base64
        // (Python's hmac.new(secret, username, hashlib.sha1) gives the same).
        let signer = TurnSigner::new(&Secret::new(SECRET.as_bytes())).unwrap();
        assert_eq!(
            signer.sign(1_700_000_000, "alice"),
            TurnCredential {
                username: "1700000000:alice".into(),
                credential: "cikLlyw8FMZB6i4FFgXr1KmtdnE=".into(),
            }
        );
        // Another secret, another credential (same vector tool).
        let other = TurnSigner::new(&Secret::new(
            "another secret for rotation, 32+ bytes".as_bytes(),
        ))
        .unwrap();
        assert_eq!(
            other.sign(1_700_000_000, "alice").credential,
            "MCQm6tDNnKhZ+FE9VbOR8gJe6w8="
        );
        // The signer is reusable: the same input gives the same output.
        assert_eq!(
            signer.sign(1_700_000_000, "alice"),
            signer.sign(1_700_000_000, "alice")
        );
        assert_ne!(
            signer.sign(1_700_000_000, "bob").credential,
            signer.sign(1_700_000_000, "alice").credential
        );
        assert!(!format!("{signer:?}").contains("coturn"));
    }

    #[test]
    fn ipv6_clients_share_a_budget_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(bucket(a), bucket(b));
        assert_eq!(bucket(a), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        assert_ne!(bucket(a), bucket(c));
        let v4: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(bucket(v4), v4);
    }

    #[test]
    fn the_limiter_refills_and_says_when() {
        let clock = FakeRelativeClock::default();
        let quota = Quota::per_minute(NonZeroU32::new(2).unwrap());
        let limiter = PerIpLimiter::with_clock(quota, clock.clone());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(limiter.check(ip), Ok(()));
        assert_eq!(limiter.check(ip), Ok(()));
        assert_eq!(limiter.check(ip), Err(Duration::from_secs(30)));
        assert_eq!(
            limiter.check(other),
            Ok(()),
            "each address has its own budget"
        );
        clock.advance(Duration::from_secs(29));
        assert_eq!(limiter.check(ip), Err(Duration::from_secs(1)));
        clock.advance(Duration::from_secs(1));
        assert_eq!(limiter.check(ip), Ok(()));
    }

    #[test]
    fn addresses_whose_budget_refilled_are_forgotten() {
        let clock = FakeRelativeClock::default();
        let quota = Quota::per_minute(NonZeroU32::new(60).unwrap());
        let limiter = PerIpLimiter::with_clock(quota, clock.clone());
        let v4 = |i: u32| IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        // A flood of distinct addresses within one second: all are tracked (they are live).
        for i in 0..3 * SWEEP_MIN as u32 {
            assert_eq!(limiter.check(v4(i)), Ok(()));
        }
        assert_eq!(limiter.tracked(), 3 * SWEEP_MIN);
        // Two seconds later every one of them has its budget back: the next sweep forgets them.
        clock.advance(Duration::from_secs(2));
        for i in 0..SWEEP_MIN as u32 {
            limiter.check(v4(1_000_000 + i)).unwrap();
        }
        assert!(
            limiter.tracked() < 2 * SWEEP_MIN,
            "{} addresses still tracked",
            limiter.tracked()
        );
    }
}
