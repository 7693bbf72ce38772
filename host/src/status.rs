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
/// How many connections the listener holds at once; past that, new ones wait to be accepted.
const CONNECTIONS: usize = 64;

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
    let listener = Capped { listener: TcpListener::bind(addr).await?, permits: Arc::new(Semaphore::new(CONNECTIONS)) };
    let bound = listener.listener.local_addr()?;
    let shared = Shared { host, streams: Arc::new(Semaphore::new(STREAMS)) };
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/metrics", get(metrics))
        .route("/overview", get(overview))
        .route("/events", get(events))
        .with_state(shared);
    tokio::spawn(async move {
        let app = app.into_make_service_with_connect_info::<Viewer>();
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
    // `::ffff:127.0.0.1` on a dual-stack listener is loopback too.
    let operator = viewer.ip().to_canonical().is_loopback();
    let overview = tokio::task::spawn_blocking(move || host.overview(operator)).await.map_err(|e| e.to_string())?;
    let overview = overview.map_err(|e| e.message)?;
    serde_json::to_string(&overview).map_err(|e| e.to_string())
}

async fn overview(State(shared): State<Shared>, ConnectInfo(Viewer(viewer)): ConnectInfo<Viewer>) -> Response {
    match read(shared.host, viewer).await {
        Ok(json) => ([(CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => unavailable(&e),
    }
}

/// A stream of the overview: sent at once, then whenever it changes.
async fn events(State(shared): State<Shared>, ConnectInfo(Viewer(viewer)): ConnectInfo<Viewer>) -> Response {
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

/// The listener, holding at most [`CONNECTIONS`] connections: a page left open, or a client
/// that never closes, cannot make the host take more.
struct Capped {
    listener: TcpListener,
    permits: Arc<Semaphore>,
}

impl axum::serve::Listener for Capped {
    type Io = Held;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Held, SocketAddr) {
        // The semaphore is never closed.
        let permit = loop {
            if let Ok(permit) = self.permits.clone().acquire_owned().await {
                break permit;
            }
        };
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => return (Held { stream, _permit: permit }, peer),
                // Out of file descriptors, say: wait rather than spin.
                Err(e) => {
                    tracing::debug!("the status listener cannot accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Who is reading: the address of the connection's other end.
#[derive(Clone, Copy, Debug)]
struct Viewer(SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Capped>> for Viewer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Capped>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// A connection of the status listener, with its place among [`CONNECTIONS`].
struct Held {
    stream: tokio::net::TcpStream,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl tokio::io::AsyncRead for Held {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Held {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
