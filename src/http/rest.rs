//! peerjs-server's REST API (docs/PROTOCOL.md §6): info, a fresh id, and the peer list (with
//! `--issued-ids-only` the fresh id carries a MAC, with `--auth-secret` the list needs a
//! token); and what Express and the `cors` package answer around it (CORS headers, 204
//! preflights, the 404 page for any other path or method). With `--turn-secret`, also TURN
//! credentials ([`super::ice`]), under the same CORS handling.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::routing::get;

use crate::config::{Config, RoomMode};
use crate::state::Shared;

/// The body of `GET {path}`, byte-for-byte the reference's `app.json`.
pub const INFO: &str = r#"{"name":"PeerJS Server","description":"A server side element to broker connections between PeerJS clients.","website":"https://peerjs.com/"}"#;

/// The REST routes under `config.path` (CORS is added around the whole router: [`express`]).
pub fn routes(config: &Config) -> Router<Arc<Shared>> {
    let base = config.path.as_str();
    let mut router = Router::new().route(base, get(info));
    if base != "/" {
        router = router.route(base.trim_end_matches('/'), get(info));
    }
    for suffix in ["", "/"] {
        router = router
            .route(&format!("{base}{{key}}/id{suffix}"), get(id))
            .route(&format!("{base}{{key}}/peers{suffix}"), get(peers));
    }
    if let Some(ice) = super::ice::routes(config) {
        router = router.merge(ice);
    }
    router
}

/// The methods a preflight is told are allowed: the `cors` package's default.
const ALLOWED_METHODS: HeaderValue = HeaderValue::from_static("GET,HEAD,PUT,PATCH,POST,DELETE");

/// `routes` answered as Express answers: any other path, or another method on a known path,
/// gets Express's 404 page (never a 405, never an `Allow` header); with `cors`, the `cors`
/// package runs in front of everything under its `--path`.
pub fn express(routes: Router, cors: Option<Arc<Config>>) -> Router {
    let routes = routes
        .fallback(not_found)
        .method_not_allowed_fallback(not_found);
    // Outside the router, so that what it adds to its answers can be taken off.
    Router::new()
        .fallback_service(routes)
        .layer(axum::middleware::from_fn(move |request, next| {
            let config = cors.clone();
            async move {
                let mut response = match config {
                    Some(config) => self::cors(&config, request, next).await,
                    None => next.run(request).await,
                };
                response.headers_mut().remove(header::ALLOW);
                response
            }
        }))
}

/// The `cors` package as peerjs-server mounts it, in front of everything under `--path`
/// (unknown paths included): the request's Origin is reflected when any origin is allowed
/// or it is in the `--cors` list (a request from another origin is still served, without
/// the header); every `OPTIONS` request is a preflight, answered here with 204, the allowed
/// methods and the requested headers reflected.
async fn cors(config: &Config, request: Request<Body>, next: Next) -> Response<Body> {
    if !is_under(&config.path, request.uri().path()) {
        return next.run(request).await;
    }
    let allowed = &config.cors;
    let allow_origin = request
        .headers()
        .get(header::ORIGIN)
        .filter(|origin| {
            allowed.is_empty() || allowed.iter().any(|a| a.as_bytes() == origin.as_bytes())
        })
        .cloned();
    if request.method() == Method::OPTIONS {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let headers = response.headers_mut();
        if let Some(origin) = allow_origin {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        }
        headers.insert(
            header::VARY,
            HeaderValue::from_static("Origin, Access-Control-Request-Headers"),
        );
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, ALLOWED_METHODS);
        if let Some(requested) = request
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        {
            headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
        }
        return response;
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if let Some(origin) = allow_origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    response
}

/// Whether `path` is under the mount path `base` (which ends with `/`) as Express matches a
/// mount: `/app` and `/app/...` are under `/app/`, `/apple` is not.
fn is_under(base: &str, path: &str) -> bool {
    path.starts_with(base) || path == base.trim_end_matches('/')
}

fn with_type(body: impl Into<Body>, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(body.into());
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn info() -> Response<Body> {
    with_type(INFO, "application/json; charset=utf-8")
}

/// A fresh id: a v4 UUID (122 random bits, so it cannot collide with a connected id in
/// practice), or with `--issued-ids-only` an id carrying this server's MAC (96 random bits).
async fn id(State(shared): State<Arc<Shared>>) -> Response<Body> {
    let id = match &shared.ids {
        None => uuid::Uuid::new_v4().to_string(),
        Some(ids) => match ids.mint() {
            Ok(id) => id,
            Err(error) => {
                tracing::error!(%error, "cannot mint an id");
                return with_status(StatusCode::SERVICE_UNAVAILABLE, "Cannot mint an id");
            }
        },
    };
    with_type(id, "text/html; charset=utf-8")
}

fn with_status(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = with_type(text, "text/plain; charset=utf-8");
    *response.status_mut() = status;
    response
}

#[derive(serde::Deserialize)]
struct PeersQuery {
    token: Option<String>,
}

/// The ids of a room (global mode: of the server), with `--allow-discovery`. With
/// `--auth-secret` the request must carry a valid join token (`?token=` or `Authorization:
/// Bearer`), and in room mode the token's `room` claim is the room listed.
async fn peers(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<PeersQuery>,
    headers: HeaderMap,
) -> Response<Body> {
    if !shared.config.allow_discovery {
        return with_status(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let room_mode = shared.config.rooms == RoomMode::Token;
    let signed_room;
    let key = match (&shared.auth, query.token.as_deref()) {
        (Some(auth), token) => {
            let token = request_token(token, &headers).unwrap_or_default();
            let claims = match auth.check_request(token, auth.now()) {
                Ok(claims) => claims,
                Err(why) => return with_status(StatusCode::UNAUTHORIZED, why.message()),
            };
            if !room_mode {
                ""
            } else {
                match claims.room() {
                    Ok(room) => {
                        signed_room = room.to_owned();
                        signed_room.as_str()
                    }
                    Err(why) => return with_status(StatusCode::UNAUTHORIZED, why.message()),
                }
            }
        }
        (None, _) if !room_mode => "",
        (None, Some(token)) if !token.is_empty() => token,
        (None, _) => {
            return with_status(
                StatusCode::BAD_REQUEST,
                "In room mode, list a room with ?token=ROOM",
            );
        }
    };
    let mut ids = match shared.rooms.get(key) {
        Some(room) => room.list_peers().await,
        None => Vec::new(),
    };
    // In a cluster, the room's members on the other nodes too.
    if let Some(remote) = &shared.rooms.remote {
        let here = ids.len();
        for id in remote.members(key) {
            if !ids[..here].contains(&id) {
                ids.push(id);
            }
        }
    }
    let ids: Vec<&str> = ids.iter().map(|id| &**id).collect();
    let body = serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into());
    with_type(body, "application/json; charset=utf-8")
}

/// The join token a REST request carries: a non-empty `?token=`, else an
/// `Authorization: Bearer` header.
pub(super) fn request_token<'a>(query: Option<&'a str>, headers: &'a HeaderMap) -> Option<&'a str> {
    query.filter(|t| !t.is_empty()).or_else(|| bearer(headers))
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Anything else, any other method on a known path included: 404 with Express's page
/// (finalhandler's), byte for byte.
pub async fn not_found(method: Method, uri: Uri) -> Response<Body> {
    let message = escape_html(&format!("Cannot {method} {}", encode_url(uri.path())));
    let body = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>Error</title>\n</head>\n<body>\n<pre>{message}</pre>\n</body>\n</html>\n"
    );
    let mut response = with_type(body, "text/html; charset=utf-8");
    *response.status_mut() = StatusCode::NOT_FOUND;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// The `encodeurl` package: percent-encodes what is not a URL character, and a `%` that
/// does not start an escape; leaves valid escapes alone.
fn encode_url(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    for (i, &b) in bytes.iter().enumerate() {
        let escape = b == b'%'
            && bytes.len() > i + 2
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit();
        let plain =
            matches!(b, 0x21 | 0x23..=0x3B | 0x3D | 0x3F..=0x5F | 0x61..=0x7A | 0x7C | 0x7E);
        if (plain && b != b'%') || escape {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `escape-html` package.
fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("&quot;"),
            '&' => out.push_str("&amp;"),
            '\'' => out.push_str("&#39;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_encoded_as_encodeurl_does() {
        assert_eq!(encode_url("/peerjs/id"), "/peerjs/id");
        assert_eq!(encode_url("/a%20b/%zz/%4"), "/a%20b/%25zz/%254");
        assert_eq!(encode_url("/x\"y<z>{}`^|"), "/x%22y%3Cz%3E%7B%7D%60^|");
        assert_eq!(encode_url("/é"), "/%C3%A9");
        assert_eq!(
            escape_html("Cannot GET /a&b'c"),
            "Cannot GET /a&amp;b&#39;c"
        );
    }

    #[test]
    fn mount_paths_match_as_express_mounts() {
        assert!(is_under("/", "/anything"));
        assert!(is_under("/app/", "/app"));
        assert!(is_under("/app/", "/app/x/id"));
        assert!(!is_under("/app/", "/apple"));
        assert!(!is_under("/app/", "/"));
    }
}
