//! The HTTP side of the WebSocket: checks made before answering 101, then the hand-off to a
//! session task.
//!
//! The handshake checks and their answers mirror the `ws` library under peerjs-server
//! (reference §1.2): 405 for a non-GET, 400 for a bad upgrade, key or version, and 400
//! "Bad Request" for any path but the exact `{path}peerjs`. peerjsd adds: 503 while draining,
//! 403 for an Origin outside `--cors`, 429 past `--max-connections-per-ip`. Everything else
//! (missing parameters, wrong key, taken id…) is answered after the upgrade, in-band, as the
//! PeerJS client expects.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::read_ahead::ReadAhead;
use super::session::{self, Origin};
use crate::logging::LogIp;
use crate::metrics::Rejection;
use crate::protocol::ConnectParams;
use crate::state::Shared;

/// Whether the request asks for a protocol upgrade (Node hands such requests to `ws`).
pub fn is_upgrade<B>(request: &Request<B>) -> bool {
    let connection_upgrade = request
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade && request.headers().contains_key(header::UPGRADE)
}

/// Answers an upgrade request: 101 and a spawned session, or an HTTP error.
pub fn handle<B>(
    mut request: Request<B>,
    shared: &Arc<Shared>,
    peer: SocketAddr,
) -> Response<Body> {
    let headers = request.headers();
    if request.method() != Method::GET {
        return refuse(
            shared,
            StatusCode::METHOD_NOT_ALLOWED,
            "Invalid HTTP method",
            Rejection::BadRequest,
        );
    }
    let upgrade = headers.get(header::UPGRADE).and_then(|v| v.to_str().ok());
    if !upgrade.is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
        return refuse(
            shared,
            StatusCode::BAD_REQUEST,
            "Invalid Upgrade header",
            Rejection::BadRequest,
        );
    }
    let Some(key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|k| is_valid_key(k.as_bytes()))
    else {
        return refuse(
            shared,
            StatusCode::BAD_REQUEST,
            "Missing or invalid Sec-WebSocket-Key header",
            Rejection::BadRequest,
        );
    };
    let version = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes);
    if !matches!(version, Some(b"13") | Some(b"8")) {
        let mut response = refuse(
            shared,
            StatusCode::BAD_REQUEST,
            "Missing or invalid Sec-WebSocket-Version header",
            Rejection::BadRequest,
        );
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13, 8"),
        );
        return response;
    }
    if request.uri().path() != shared.config.ws_path() {
        return refuse(
            shared,
            StatusCode::BAD_REQUEST,
            "Bad Request",
            Rejection::BadRequest,
        );
    }
    if shared.shutdown.token.is_cancelled() {
        return refuse(
            shared,
            StatusCode::SERVICE_UNAVAILABLE,
            "Server is shutting down",
            Rejection::BadRequest,
        );
    }
    if !origin_allowed(&shared.config.cors, headers) {
        tracing::info!(ip = %LogIp(peer.ip()), origin = ?headers.get(header::ORIGIN), "websocket refused: origin not allowed");
        return refuse(
            shared,
            StatusCode::FORBIDDEN,
            "Origin not allowed",
            Rejection::Origin,
        );
    }
    let ip = client_ip(headers, peer, shared.config.proxied);
    let Some(guard) = shared.admit_ip(ip) else {
        tracing::info!(ip = %LogIp(ip), "websocket refused: too many connections from this address");
        return refuse(
            shared,
            StatusCode::TOO_MANY_REQUESTS,
            "Too many connections from this address",
            Rejection::PerIp,
        );
    };

    let accept = derive_accept_key(key.as_bytes());
    let params = ConnectParams::from_query(request.uri().query().unwrap_or(""));
    let on_upgrade = hyper::upgrade::on(&mut request);
    let task_shared = Arc::clone(shared);
    shared.shutdown.tracker.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(ip = %LogIp(ip), %error, "upgrade failed");
                return;
            }
        };
        let origin = Origin { ip, guard };
        // A plain TCP socket is unwrapped from hyper's upgrade layers (a boxed stream behind
        // two adapters), so the hot path reads and writes the socket directly. TLS keeps them.
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let io = ReadAhead::with_buffered(parts.io.into_inner(), &parts.read_buf);
                // Copied out: the buffer is a view of hyper's 8 KiB read buffer, which it
                // would otherwise keep alive for the socket's life (+4.7 kB per idle peer).
                drop(parts.read_buf);
                session::run(io, params, task_shared, origin).await;
            }
            Err(upgraded) => {
                let io = ReadAhead::new(TokioIo::new(upgraded));
                session::run(io, params, task_shared, origin).await;
            }
        }
    });

    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(value) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    response
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
fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    origin.is_some_and(|o| allowed.iter().any(|a| a == o))
}

/// The client's address: the socket peer, or with `--proxied` the last `X-Forwarded-For`
/// entry (the one the nearest proxy appended; earlier entries are the client's to forge).
pub fn client_ip(headers: &HeaderMap, peer: SocketAddr, proxied: bool) -> IpAddr {
    let forwarded = proxied
        .then(|| headers.get_all("x-forwarded-for").iter().next_back())
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|last| parse_forwarded_ip(last.trim()));
    canonical(forwarded.unwrap_or_else(|| peer.ip()))
}

fn parse_forwarded_ip(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// IPv4 clients of a dual-stack socket appear as `::ffff:a.b.c.d`; count them as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An HTTP error before the upgrade, shaped like `ws`'s `abortHandshake`.
fn refuse(
    shared: &Shared,
    status: StatusCode,
    message: &'static str,
    why: Rejection,
) -> Response<Body> {
    shared.metrics.reject(why);
    let mut response = Response::new(Body::from(message));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
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
