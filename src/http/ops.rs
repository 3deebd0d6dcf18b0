//! Operations endpoints at the server root: `/health` and `/metrics`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use axum::routing::get;

use crate::state::Shared;

/// `/health`, and `/metrics` unless `metrics` is false (`--metrics-public false` on the
/// public port: it then answers 404 like any unknown path).
pub fn routes(metrics: bool) -> Router<Arc<Shared>> {
    let router = Router::new().route("/health", get(health));
    if metrics {
        router.route("/metrics", get(self::metrics))
    } else {
        router
    }
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `{"status":"ok"|"draining","timestamp":<ms>,"version":…}`; 503 while draining. With
/// `--cluster` also `"cluster":"ok"|"degraded"` (still 200 when degraded: the node serves
/// its own peers), `"node"` and `"nodes"` (the other nodes alive).
pub async fn health(State(shared): State<Arc<Shared>>) -> Response<Body> {
    let draining = shared.draining.load(Ordering::Acquire);
    let (status, text) = if draining {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else {
        (StatusCode::OK, "ok")
    };
    let cluster = match &shared.cluster {
        None => String::new(),
        Some(cluster) => format!(
            r#","cluster":"{}","node":"{}","nodes":{}"#,
            if cluster.is_connected() {
                "ok"
            } else {
                "degraded"
            },
            cluster.node(),
            cluster.live_nodes()
        ),
    };
    let body = format!(
        r#"{{"status":"{text}","timestamp":{},"version":"{}"{cluster}}}"#,
        now_ms(),
        env!("CARGO_PKG_VERSION")
    );
    json(status, body)
}

/// Prometheus text when the scraper asks for it (Accept names `text/plain` or
/// `application/openmetrics-text`), else the JSON summary. Either costs the same however
/// many sockets are open: the `process_*` figures come from a cache refreshed at most once a
/// second off the runtime's workers.
pub async fn metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response<Body> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains("application/openmetrics-text") || accept.contains("text/plain") {
        let content_type = if accept.contains("application/openmetrics-text") {
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        } else {
            "text/plain; version=0.0.4; charset=utf-8"
        };
        shared.metrics.refresh_process().await;
        let mut response = Response::new(Body::from(shared.metrics.encode_text()));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        return response;
    }
    #[derive(serde::Serialize)]
    struct MetricsJson {
        status: &'static str,
        timestamp: u64,
        metrics: crate::metrics::Summary,
    }
    let draining = shared.draining.load(Ordering::Acquire);
    let body = MetricsJson {
        status: if draining { "draining" } else { "ok" },
        timestamp: now_ms() as u64,
        metrics: shared.metrics.summary(),
    };
    json(
        StatusCode::OK,
        serde_json::to_string(&body).unwrap_or_default(),
    )
}
