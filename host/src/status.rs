//! The status listener: read-only HTTP beside the roam port, off unless `status_listen` is set
//! (bind it to loopback unless it must be reached from elsewhere). `/metrics` answers in
//! Prometheus' text format.

use std::net::SocketAddr;

use axum::Router;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::host::Host;

/// The Prometheus text format's content type.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds `addr` and serves the status routes of `host` until the process ends; returns the
/// address bound (port 0 picks one).
///
/// # Errors
/// If `addr` cannot be bound.
pub async fn start(host: Host, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let host = host.clone();
            async move {
                match tokio::task::spawn_blocking(move || host.render_metrics()).await {
                    Ok(Ok(text)) => ([(CONTENT_TYPE, PROMETHEUS_TEXT)], text).into_response(),
                    Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("cannot read the state database: {e}\n"))
                        .into_response(),
                    Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                }
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("the status listener stopped: {e}");
        }
    });
    Ok(bound)
}
