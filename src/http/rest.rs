//! peerjs-server's REST API (reference §6): info, a fresh id, and the peer list.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, Method, Response, StatusCode, Uri, header};
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

/// A fresh v4 UUID: 122 random bits, so it cannot collide with a connected id in practice.
async fn id() -> Response<Body> {
    with_type(uuid::Uuid::new_v4().to_string(), "text/html; charset=utf-8")
}

#[derive(serde::Deserialize)]
struct PeersQuery {
    token: Option<String>,
}

async fn peers(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<PeersQuery>,
) -> Response<Body> {
    if !shared.config.allow_discovery {
        let mut response = with_type("Unauthorized", "text/plain; charset=utf-8");
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        return response;
    }
    let key = match (shared.config.rooms, query.token.as_deref()) {
        (RoomMode::Global, _) => "",
        (RoomMode::Token, Some(token)) if !token.is_empty() => token,
        (RoomMode::Token, _) => {
            let mut response = with_type(
                "In room mode, list a room with ?token=ROOM",
                "text/plain; charset=utf-8",
            );
            *response.status_mut() = StatusCode::BAD_REQUEST;
            return response;
        }
    };
    let ids = match shared.rooms.get(key) {
        Some(room) => room.list_peers().await,
        None => Vec::new(),
    };
    let ids: Vec<&str> = ids.iter().map(|id| &**id).collect();
    let body = serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into());
    with_type(body, "application/json; charset=utf-8")
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
