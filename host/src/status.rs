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
//! loopback address) who name it as localhost or by an address (not a web page that had a name
//! of its own resolved to 127.0.0.1: DNS rebinding): HTTP carries no roam identity, so the
//! ownership rule of `roam agents` cannot be applied here, and only the operator sees
//! everything. Others get counts.
//!
//! Connections and event streams are held in two pools, one for the host's own machine and
//! one for everyone else, so that strangers cannot take the operator's places; a connection
//! that moves no byte for [`IDLE`] is closed.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, HOST};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tokio::io::ReadBuf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::host::Host;

/// The Prometheus text format's content type.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The page, HTML with its script and style inline.
const PAGE: &str = include_str!("status.html");
/// How often an event stream looks for a change.
const POLL: Duration = Duration::from_millis(250);
/// How many event streams are served at once to others than the host's own machine, and
/// to it: each reads the state database as it polls.
const STREAMS: Places = Places::sizes(16, 4);
/// How many connections the listener holds at once from elsewhere, and from the host's own
/// machine; past that, new ones are closed at once.
const CONNECTIONS: Places = Places::sizes(64, 16);
/// How long a connection may move no byte before it is closed: a client that connects and
/// says nothing does not keep its place.
pub const IDLE: Duration = Duration::from_secs(20);
/// How often an open event stream sends a comment, well within [`IDLE`].
const KEEP_ALIVE: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct Shared {
    host: Host,
    streams: Pools,
}

/// Binds `addr` and serves the status routes of `host` until the process ends; returns the
/// address bound (port 0 picks one).
///
/// # Errors
/// If `addr` cannot be bound.
pub async fn start(host: Host, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = Capped { listener: TcpListener::bind(addr).await?, places: CONNECTIONS.pools() };
    let bound = listener.listener.local_addr()?;
    let shared = Shared { host, streams: STREAMS.pools() };
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

/// Whether a connection comes from the host's own machine (`::ffff:127.0.0.1`, as a
/// dual-stack listener sees it, too).
fn local(peer: SocketAddr) -> bool {
    peer.ip().to_canonical().is_loopback()
}

/// Whether the request is the operator's: from the host's own machine, naming it as
/// `localhost` or by an address. A page from elsewhere whose name was made to resolve to
/// 127.0.0.1 (DNS rebinding) runs on the operator's machine too, but sends its own name.
fn operator(peer: SocketAddr, headers: &HeaderMap) -> bool {
    let named_locally = match headers.get(HOST).map(|h| h.to_str().map(str::parse::<axum::http::uri::Authority>)) {
        None => true,
        Some(Ok(Ok(authority))) => {
            let host = authority.host();
            host.eq_ignore_ascii_case("localhost")
                || host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok()
        }
        Some(_) => false,
    };
    local(peer) && named_locally
}

/// The overview as JSON, with the details only for the operator.
async fn read(host: Host, operator: bool) -> Result<String, String> {
    let overview = tokio::task::spawn_blocking(move || host.overview(operator)).await.map_err(|e| e.to_string())?;
    let overview = overview.map_err(|e| e.message)?;
    serde_json::to_string(&overview).map_err(|e| e.to_string())
}

async fn overview(
    State(shared): State<Shared>,
    ConnectInfo(Viewer(viewer)): ConnectInfo<Viewer>,
    headers: HeaderMap,
) -> Response {
    match read(shared.host, operator(viewer, &headers)).await {
        Ok(json) => ([(CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => unavailable(&e),
    }
}

/// A stream of the overview: sent at once, then whenever it changes.
async fn events(
    State(shared): State<Shared>,
    ConnectInfo(Viewer(viewer)): ConnectInfo<Viewer>,
    headers: HeaderMap,
) -> Response {
    let Some(permit) = shared.streams.take(viewer) else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many pages are open already; retry later\n").into_response();
    };
    let operator = operator(viewer, &headers);
    let host = shared.host;
    let stream = futures_util::stream::unfold((String::new(), permit), move |(last, permit)| {
        let host = host.clone();
        async move {
            loop {
                if !last.is_empty() {
                    tokio::time::sleep(POLL).await;
                }
                let now = match read(host.clone(), operator).await {
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
    let mut response = Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response();
    response.headers_mut().insert(CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    response
}

fn unavailable(why: &str) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, format!("cannot read the host's state: {why}\n")).into_response()
}

/// How many places there are for others and for the host's own machine.
#[derive(Clone, Copy)]
struct Places {
    others: usize,
    local: usize,
}

impl Places {
    const fn sizes(others: usize, local: usize) -> Self {
        Self { others, local }
    }

    fn pools(self) -> Pools {
        Pools { others: Arc::new(Semaphore::new(self.others)), local: Arc::new(Semaphore::new(self.local)) }
    }
}

/// Places taken by others and by the host's own machine, apart.
#[derive(Clone)]
struct Pools {
    others: Arc<Semaphore>,
    local: Arc<Semaphore>,
}

impl Pools {
    /// A place for `peer`, if one is free in its pool.
    fn take(&self, peer: SocketAddr) -> Option<OwnedSemaphorePermit> {
        let pool = if local(peer) { &self.local } else { &self.others };
        pool.clone().try_acquire_owned().ok()
    }
}

/// The listener, holding at most [`CONNECTIONS`] connections: pages left open, or clients
/// that never close, cannot make the host take more.
struct Capped {
    listener: TcpListener,
    places: Pools,
}

impl axum::serve::Listener for Capped {
    type Io = Held;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Held, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => match self.places.take(peer) {
                    Some(place) => return (Held::new(stream, place), peer),
                    // Dropped: closed at once, rather than left waiting without an answer.
                    None => tracing::debug!(%peer, "the status listener is full"),
                },
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

/// A connection of the status listener, with its place, closed when it has moved no byte
/// for [`IDLE`].
struct Held {
    stream: TcpStream,
    idle: Pin<Box<Sleep>>,
    _place: OwnedSemaphorePermit,
}

impl Held {
    fn new(stream: TcpStream, place: OwnedSemaphorePermit) -> Self {
        Self { stream, idle: Box::pin(tokio::time::sleep(IDLE)), _place: place }
    }

    /// After `poll` of the stream: a byte moved pushes the deadline back; waiting past it
    /// fails the connection.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<std::io::Result<T>>,
        moved: bool,
    ) -> Poll<std::io::Result<T>> {
        if poll.is_pending() {
            if self.idle.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "idle for too long")));
            }
        } else if moved {
            self.idle.as_mut().reset(Instant::now() + IDLE);
        }
        poll
    }
}

impl tokio::io::AsyncRead for Held {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.stream).poll_read(cx, buf);
        let moved = buf.filled().len() > before;
        this.watch(cx, poll, moved)
    }
}

impl tokio::io::AsyncWrite for Held {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write(cx, buf);
        let moved = matches!(poll, Poll::Ready(Ok(n)) if n > 0);
        this.watch(cx, poll, moved)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_flush(cx);
        this.watch(cx, poll, false)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
