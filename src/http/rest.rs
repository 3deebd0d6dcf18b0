//! peerjs-server's REST API (reference §6): info, a fresh id, and the peer list; with
//! `--issued-ids-only` the fresh id carries a MAC, with `--auth-secret` the list needs a token.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri, header};
use axum::routing::get;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

use crate::config::{Config, RoomMode};
use crate::state::Shared;

/// The body of `GET {path}`, byte-for-byte the reference's `app.json`.
pub const INFO: &str = r#"{"name":"PeerJS Server","description":"A server side element to broker connections between PeerJS clients.","website":"https://peerjs.com/"}"#;

/// The REST routes under `config.path`, with the reference's CORS behaviour.
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
    router.layer(cors(&config.cors))
}

/// Reflects the request Origin, or with an allow-list only the listed ones. Requests from
/// other origins are still served, without the header (as the `cors` package does).
fn cors(allowed: &[String]) -> CorsLayer {
    let origin = if allowed.is_empty() {
        AllowOrigin::mirror_request()
    } else {
        AllowOrigin::list(allowed.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(origin)
        .allow_methods([
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::PATCH,
            Method::POST,
            Method::DELETE,
        ])
        .allow_headers(AllowHeaders::mirror_request())
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
            let token = token
                .filter(|t| !t.is_empty())
                .or_else(|| bearer(&headers))
                .unwrap_or_default();
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

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Anything else: 404, as Express answers.
pub async fn not_found(method: Method, uri: Uri) -> Response<Body> {
    let mut response = with_type(
        format!("Cannot {method} {}", uri.path()),
        "text/plain; charset=utf-8",
    );
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}
