//! The status listener: read-only HTTP beside the roam port, off unless `status_listen` is set
//! (bind it to loopback unless it must be reached from elsewhere).
//!
//! - `/` is a live page of the host (its peers, agents, modules and refusals), one file with
//!   no external asset;
//! - `/events` streams what the page shows (server-sent events, a JSON overview whenever it
//!   changes);
//! - `/overview` answers the same JSON once;
//! - `/metrics` answers in Prometheus' text format.
//!
//! Agents, modules and refusals are shown only to viewers on the host's own machine (a
//! loopback address): HTTP carries no roam identity, so the ownership rule of `roam agents`
//! cannot be applied here, and only the operator sees everything. Others get counts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::host::Host;

/// The Prometheus text format's content type.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The page, HTML with its script and style inline.
const PAGE: &str = include_str!("status.html");
/// How often an event stream looks for a change.
const POLL: Duration = Duration::from_millis(250);
/// How many event streams are served at once: each reads the state database as it polls.
const STREAMS: usize = 16;

#[derive(Clone)]
struct Shared {
    host: Host,
    streams: Arc<Semaphore>,
}

/// Binds `addr` and serves the status routes of `host` until the process ends; returns the
/// address bound (port 0 picks one).
///
/// # Errors
/// If `addr` cannot be bound.
pub async fn start(host: Host, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let shared = Shared { host, streams: Arc::new(Semaphore::new(STREAMS)) };
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/metrics", get(metrics))
        .route("/overview", get(overview))
        .route("/events", get(events))
        .with_state(shared);
    tokio::spawn(async move {
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("the status listener stopped: {e}");
        }
    });
    Ok(bound)
}

async fn metrics(State(shared): State<Shared>) -> Response {
    match tokio::task::spawn_blocking(move || shared.host.render_metrics()).await {
        Ok(Ok(text)) => ([(CONTENT_TYPE, PROMETHEUS_TEXT)], text).into_response(),
        Ok(Err(e)) => unavailable(&e.to_string()),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// The overview as JSON, for `viewer`.
async fn read(host: Host, viewer: SocketAddr) -> Result<String, String> {
    let operator = viewer.ip().is_loopback();
    let overview = tokio::task::spawn_blocking(move || host.overview(operator)).await.map_err(|e| e.to_string())?;
    let overview = overview.map_err(|e| e.message)?;
    serde_json::to_string(&overview).map_err(|e| e.to_string())
}

async fn overview(State(shared): State<Shared>, ConnectInfo(viewer): ConnectInfo<SocketAddr>) -> Response {
    match read(shared.host, viewer).await {
        Ok(json) => ([(CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => unavailable(&e),
    }
}

/// A stream of the overview: sent at once, then whenever it changes.
async fn events(State(shared): State<Shared>, ConnectInfo(viewer): ConnectInfo<SocketAddr>) -> Response {
    let Ok(permit) = shared.streams.clone().try_acquire_owned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{STREAMS} pages are open already; retry later\n"))
            .into_response();
    };
    let host = shared.host;
    let stream = futures_util::stream::unfold((String::new(), permit), move |(last, permit)| {
        let host = host.clone();
        async move {
            loop {
                if !last.is_empty() {
                    tokio::time::sleep(POLL).await;
                }
                let now = match read(host.clone(), viewer).await {
                    Ok(now) => now,
                    Err(e) => {
                        tracing::warn!("the status page cannot read the host: {e}");
                        tokio::time::sleep(POLL).await;
                        continue;
                    }
                };
                if now != last {
                    let event = Event::default().data(&now);
                    return Some((Ok::<_, std::convert::Infallible>(event), (now, permit)));
                }
            }
        }
    });
    let mut response = Sse::new(stream).keep_alive(KeepAlive::default()).into_response();
    response.headers_mut().insert(CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    response
}

fn unavailable(why: &str) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, format!("cannot read the host's state: {why}\n")).into_response()
}
