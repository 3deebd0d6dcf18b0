//! The HTTP side of the WebSocket: checks made before answering 101, then the hand-off to a
//! session.
//!
//! The handshake checks and their answers mirror the `ws` library under peerjs-server
//! (docs/PROTOCOL.md §1.2): 405 for a non-GET, 400 for a bad upgrade, key or version, and 400
//! "Bad Request" for any path but the exact `{path}peerjs`. peerjsd adds: 503 while draining,
//! 403 for an Origin outside `--cors`, 429 past `--max-connections-per-ip`. Everything else
//! (missing parameters, wrong key, taken id…) is answered after the upgrade, in-band, as the
//! PeerJS client expects.
//!
//! A connection's first request head is read here ([`read_head`]) before hyper sees it, to
//! the end (the connection is in its handshake until then; see [`crate::gate`]). An upgrade
//! that passes every check is answered here and its session runs in the connection's own
//! task; anything else (REST, a refusal, an unusual request) goes to hyper with the bytes
//! read so far, and an upgrade hyper serves comes back through `check`. Both paths run
//! the same checks (`verdict`). The short path saves a connection hyper's machinery, a
//! second task, and a TCP segment: its 101 goes out with the session's first frame.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use tokio::io::AsyncRead;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::read_ahead::ReadAhead;
use super::session::Origin;
use crate::logging::LogIp;
use crate::protocol::ConnectParams;
use crate::protocol::Rejection;
use crate::state::Shared;

/// Longest request head the short path parses; a longer one is left to hyper.
const HEAD_LIMIT: usize = 8 * 1024;
/// Longest request head read at all (hyper's read buffer limit): a head still not whole at
/// this size is handed to hyper, which answers 431.
pub const MAX_HEAD: usize = 64 * 1024;
/// Headers the short path parses; a request with more is left to hyper.
const MAX_HEADERS: usize = 32;

/// Header lookup over hyper's parsed headers or httparse's, so both paths check alike.
pub(crate) trait Headers {
    /// The values of the `name` headers, in order (`name` in lower case).
    fn values<'a>(&'a self, name: &'static str) -> impl DoubleEndedIterator<Item = &'a [u8]>;

    /// The first `name` header's value.
    fn value(&self, name: &'static str) -> Option<&[u8]> {
        self.values(name).next()
    }
}

impl Headers for HeaderMap {
    fn values<'a>(&'a self, name: &'static str) -> impl DoubleEndedIterator<Item = &'a [u8]> {
        self.get_all(name).iter().map(HeaderValue::as_bytes)
    }
}

impl Headers for [httparse::Header<'_>] {
    fn values<'a>(&'a self, name: &'static str) -> impl DoubleEndedIterator<Item = &'a [u8]> {
        self.iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

/// A header value as text when it is visible ASCII, as `HeaderValue::to_str` has it.
fn text(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// Whether the request asks for a protocol upgrade (Node hands such requests to `ws`).
pub(crate) fn is_upgrade(headers: &(impl Headers + ?Sized)) -> bool {
    let connection_upgrade = headers
        .values("connection")
        .filter_map(text)
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade && headers.value("upgrade").is_some()
}

/// An upgrade that passed every check.
pub(crate) struct Accepted {
    /// The `Sec-WebSocket-Accept` value.
    accept: String,
    origin: Origin,
}

/// Why an upgrade is refused before the 101, in the order the checks run.
pub(crate) enum UpgradeRefusal {
    Method,
    Upgrade,
    Key,
    Version,
    Path,
    Draining,
    Origin {
        /// The Origin header, for the log line.
        origin: Option<String>,
        ip: IpAddr,
    },
    PerIp(IpAddr),
}

/// The checks before a 101, in `ws`'s order and then peerjsd's. On success the client's IP
/// has its place in the per-IP count.
pub(crate) fn verdict(
    is_get: bool,
    path: &str,
    headers: &(impl Headers + ?Sized),
    shared: &Arc<Shared>,
    peer: SocketAddr,
) -> Result<Accepted, UpgradeRefusal> {
    if !is_get {
        return Err(UpgradeRefusal::Method);
    }
    let upgrade = headers.value("upgrade").and_then(text);
    if !upgrade.is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
        return Err(UpgradeRefusal::Upgrade);
    }
    let Some(key) = headers
        .value("sec-websocket-key")
        .filter(|k| is_valid_key(k))
    else {
        return Err(UpgradeRefusal::Key);
    };
    if !matches!(
        headers.value("sec-websocket-version"),
        Some(b"13") | Some(b"8")
    ) {
        return Err(UpgradeRefusal::Version);
    }
    if path != shared.config.ws_path() {
        return Err(UpgradeRefusal::Path);
    }
    if shared.shutdown.token.is_cancelled() {
        return Err(UpgradeRefusal::Draining);
    }
    if !origin_allowed(&shared.config.cors, headers) {
        let origin = headers.value("origin");
        return Err(UpgradeRefusal::Origin {
            origin: origin.map(|o| String::from_utf8_lossy(o).into_owned()),
            ip: peer.ip(),
        });
    }
    let ip = client_ip(headers, peer, shared.config.proxied);
    let Some(guard) = shared.admit_ip(ip) else {
        return Err(UpgradeRefusal::PerIp(ip));
    };
    Ok(Accepted {
        accept: derive_accept_key(key),
        origin: Origin { ip, guard },
    })
}

impl UpgradeRefusal {
    /// The HTTP answer, shaped like `ws`'s `abortHandshake`; counted and, where it helps an
    /// operator, logged.
    pub(crate) fn respond(self, shared: &Shared) -> Response<Body> {
        let (status, message, why) = match &self {
            UpgradeRefusal::Method => (
                StatusCode::METHOD_NOT_ALLOWED,
                "Invalid HTTP method",
                Rejection::BadRequest,
            ),
            UpgradeRefusal::Upgrade => (
                StatusCode::BAD_REQUEST,
                "Invalid Upgrade header",
                Rejection::BadRequest,
            ),
            UpgradeRefusal::Key => (
                StatusCode::BAD_REQUEST,
                "Missing or invalid Sec-WebSocket-Key header",
                Rejection::BadRequest,
            ),
            UpgradeRefusal::Version => (
                StatusCode::BAD_REQUEST,
                "Missing or invalid Sec-WebSocket-Version header",
                Rejection::BadRequest,
            ),
            UpgradeRefusal::Path => (
                StatusCode::BAD_REQUEST,
                "Bad Request",
                Rejection::BadRequest,
            ),
            UpgradeRefusal::Draining => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Server is shutting down",
                Rejection::BadRequest,
            ),
            UpgradeRefusal::Origin { origin, ip } => {
                tracing::info!(ip = %LogIp(*ip), origin = ?origin, "websocket refused: origin not allowed");
                (
                    StatusCode::FORBIDDEN,
                    "Origin not allowed",
                    Rejection::Origin,
                )
            }
            UpgradeRefusal::PerIp(ip) => {
                tracing::info!(ip = %LogIp(*ip), "websocket refused: too many connections from this address");
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many connections from this address",
                    Rejection::PerIp,
                )
            }
        };
        shared.metrics.reject(why);
        let mut response = Response::new(Body::from(message));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        if let UpgradeRefusal::Version = self {
            headers.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13, 8"),
            );
        }
        response
    }
}

/// An upgrade request read and accepted on the short path.
pub struct Upgrade {
    /// The 101 answer, to go out with the session's first frame.
    pub response: Box<[u8]>,
    /// The query's `id`, `token` and `key`.
    pub params: ConnectParams,
    /// The client's address, counted in the per-IP limit.
    pub origin: Origin,
}

/// Reads a connection's first request head into `io`, to its end. Returns the upgrade when
/// `signaling` and it is a WebSocket upgrade that passes every check (the head is then
/// consumed), `None` when hyper should serve it (the bytes stay in `io` for hyper to read:
/// a whole head, a head past [`MAX_HEAD`], or bytes that are not HTTP), or the read error;
/// the end of the stream before a whole head is `UnexpectedEof`.
pub async fn read_head<S>(
    io: &mut ReadAhead<S>,
    shared: &Arc<Shared>,
    peer: SocketAddr,
    signaling: bool,
) -> std::io::Result<Option<Upgrade>>
where
    S: AsyncRead + Unpin,
{
    // Past `HEAD_LIMIT` the head is only searched for its end, from where the last search
    // stopped, so a dribbled head costs no more than reading it.
    let mut searched = None;
    loop {
        match searched {
            None => match parse_head(io.buffered(), shared, peer, signaling) {
                Head::Partial => {}
                Head::Upgrade(upgrade, len) => {
                    io.consume(len);
                    return Ok(Some(upgrade));
                }
                Head::ForHyper => return Ok(None),
                Head::Long => searched = Some(0),
            },
            Some(from) => {
                let buf = io.buffered();
                if buf.len() >= MAX_HEAD || head_ends(&buf[from..]) {
                    return Ok(None);
                }
                // The end may straddle two reads.
                searched = Some(buf.len().saturating_sub(2));
            }
        }
        if io.fill().await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Whether `buf` holds the empty line that ends a request head (`\n\n` or `\n\r\n`).
fn head_ends(buf: &[u8]) -> bool {
    buf.iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && matches!(&buf[i + 1..], [b'\n', ..] | [b'\r', b'\n', ..]))
}

enum Head {
    Partial,
    /// An accepted upgrade, and the length of its head.
    Upgrade(Upgrade, usize),
    /// A whole head (or not HTTP) for hyper.
    ForHyper,
    /// Not whole, and too long or with too many headers for the short path: read on until
    /// it is, then hyper judges it.
    Long,
}

/// Parses `buf` as a request head (kept out of `read_head` so the header slots are not part
/// of the connection's future).
fn parse_head(buf: &[u8], shared: &Arc<Shared>, peer: SocketAddr, signaling: bool) -> Head {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut slots);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) if signaling => len,
        Ok(httparse::Status::Complete(_)) => return Head::ForHyper,
        Ok(httparse::Status::Partial) if buf.len() < HEAD_LIMIT => return Head::Partial,
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            return if head_ends(buf) {
                Head::ForHyper
            } else {
                Head::Long
            };
        }
        // Not HTTP: hyper answers it (400) at once.
        Err(_) => return Head::ForHyper,
    };
    let headers: &[httparse::Header<'_>] = request.headers;
    let (Some(method), Some(target), Some(1)) = (request.method, request.path, request.version)
    else {
        return Head::ForHyper;
    };
    // Only plain upgrades; a body or an unusual target is hyper's to judge.
    if !is_upgrade(headers)
        || !is_plain_target(target)
        || headers.value("content-length").is_some()
        || headers.value("transfer-encoding").is_some()
    {
        return Head::ForHyper;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    // A refusal is answered by hyper, which runs the same checks again.
    let Ok(accepted) = verdict(method == "GET", path, headers, shared, peer) else {
        return Head::ForHyper;
    };
    let mut response = Vec::with_capacity(SWITCHING.len() + accepted.accept.len() + 4);
    response.extend_from_slice(SWITCHING.as_bytes());
    response.extend_from_slice(accepted.accept.as_bytes());
    response.extend_from_slice(b"\r\n\r\n");
    let upgrade = Upgrade {
        response: response.into_boxed_slice(),
        params: ConnectParams::from_query(query),
        origin: accepted.origin,
    };
    Head::Upgrade(upgrade, len)
}

/// The 101 as `ws` writes it, up to the accept key.
const SWITCHING: &str = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                         Connection: Upgrade\r\nSec-WebSocket-Accept: ";

/// An origin-form target (`/path?query`) of URI characters hyper would accept as they are.
fn is_plain_target(target: &str) -> bool {
    target.starts_with('/')
        && target
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b))
}

/// Checks an upgrade request hyper read: its parameters, its place in the per-IP count and
/// the 101 to answer with, or the refusal (answer with [`UpgradeRefusal::respond`]).
pub(crate) fn check<B>(
    request: &Request<B>,
    shared: &Arc<Shared>,
    peer: SocketAddr,
) -> Result<(ConnectParams, Origin, Response<Body>), UpgradeRefusal> {
    let is_get = request.method() == Method::GET;
    let accepted = verdict(
        is_get,
        request.uri().path(),
        request.headers(),
        shared,
        peer,
    )?;
    let params = ConnectParams::from_query(request.uri().query().unwrap_or(""));
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(value) = HeaderValue::from_str(&accepted.accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    Ok((params, accepted.origin, response))
}

/// `ws`'s check: 16 bytes of base64, i.e. 22 base64 characters and `==`.
fn is_valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

/// With an allow-list, the Origin header must be in it (browsers always send one).
fn origin_allowed(allowed: &[String], headers: &(impl Headers + ?Sized)) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let origin = headers.value("origin").and_then(text);
    origin.is_some_and(|o| allowed.iter().any(|a| a == o))
}

/// The client's address: the socket peer, or with `--proxied` the last `X-Forwarded-For`
/// entry (the one the nearest proxy appended; earlier entries are the client's to forge).
pub(crate) fn client_ip(
    headers: &(impl Headers + ?Sized),
    peer: SocketAddr,
    proxied: bool,
) -> IpAddr {
    let forwarded = proxied
        .then(|| headers.values("x-forwarded-for").next_back())
        .flatten()
        .and_then(text)
        .and_then(|v| v.rsplit(',').next())
        .and_then(|last| parse_forwarded_ip(last.trim()));
    crate::gate::canonical(forwarded.unwrap_or_else(|| peer.ip()))
}

fn parse_forwarded_ip(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_keys() {
        assert!(is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ="));
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25jZ!=="));
    }

    #[test]
    fn forwarded_for_takes_the_last_hop_only_when_proxied() {
        let peer: SocketAddr = "[::ffff:10.0.0.1]:5000".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 203.0.113.7"),
        );
        assert_eq!(
            client_ip(&headers, peer, false),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(&headers, peer, true),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        headers.insert("x-forwarded-for", HeaderValue::from_static("garbage"));
        assert_eq!(
            client_ip(&headers, peer, true),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("[2001:db8::1]:443"),
        );
        assert_eq!(
            client_ip(&headers, peer, true),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
    }
}
