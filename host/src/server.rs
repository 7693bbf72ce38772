//! The TCP front of a host: listener → connection → TLS → frame → request → [`Host::handle`].
//!
//! The accept loop only accepts; each connection runs in its own task, and the Wasm itself runs
//! on the host's bounded worker pool, so a slow module never stalls accepting or other
//! connections. A connection over the cap is told so and closed. Shutdown stops accepting,
//! lets each connection finish the request in hand, and waits for them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;

use crate::handshake::{self, Hello, Welcome};
use crate::host::Host;
use crate::protocol::{self, ErrorKind, FrameError, RemoteError, Request, Response};
use crate::transport;

/// How long a refused connection is drained before it is closed (see [`linger`]).
const LINGER: Duration = Duration::from_millis(500);
/// How long a connection may sit idle between requests.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Requests and responses with more bulk data than this are decoded, encoded and written on the
/// bulk lane (see [`Lane`]).
const BULKY: usize = 256 << 10;
/// How long shutdown waits for connections to finish their request in hand.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// A host serving on a socket, until [`RunningHost::shutdown`].
#[derive(Debug)]
pub struct RunningHost {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningHost {
    /// Binds `addr` (use port 0 for any free port) and starts serving.
    pub async fn start(host: Host, addr: SocketAddr) -> std::io::Result<Self> {
        Self::serve_on(host, TcpListener::bind(addr).await?)
    }

    /// Starts serving on a socket already bound (say, before the addresses of a group of
    /// hosts were written into their peers' address books).
    pub async fn start_on(host: Host, listener: std::net::TcpListener) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        Self::serve_on(host, TcpListener::from_std(listener)?)
    }

    fn serve_on(host: Host, listener: TcpListener) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        host.set_address(addr.to_string());
        let (stop, stopped) = watch::channel(false);
        let driver = host.clone();
        let driver_stop = stopped.clone();
        let lane = Lane::start()?;
        let tls = transport::server_config(host.key().clone()).map_err(std::io::Error::other)?;
        tokio::spawn(async move { driver.drive_agents(driver_stop).await });
        let task = tokio::spawn(serve(host, listener, TlsAcceptor::from(tls), lane, stopped));
        Ok(Self { addr, stop, task })
    }

    /// The address the host listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, waits for the connections to drain, and returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// A runtime of its own, on threads at the lowest priority, for the bulky part of requests:
/// decoding a large request, encoding a large response and writing it out. That work grows
/// with the bytes a client asks for (8 MiB results, back to back), and on the async runtime, or
/// at normal priority anywhere, it takes the cores that other clients' small requests wait for;
/// here it runs only when they leave a core free.
#[derive(Debug)]
struct Lane {
    /// Taken only when the lane is dropped.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl Lane {
    fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("roam-bulk")
            // Also run by the threads of its blocking pool.
            .on_thread_start(crate::workers::lower_for_good)
            .enable_time()
            .build()?;
        Ok(Self { handle: runtime.handle().clone(), runtime: Some(runtime) })
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        // Dropping a runtime blocks until its threads end, which an async task must not do.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn serve(host: Host, listener: TcpListener, tls: TlsAcceptor, lane: Lane, mut stopped: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(host.max_connections()));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let permit = slots.clone().try_acquire_owned().ok();
                    let (host, lane, tls) = (host.clone(), lane.handle.clone(), tls.clone());
                    let stopped = stopped.clone();
                    connections.spawn(async move {
                        let _permit = permit.as_ref();
                        if let Err(e) = connection(host, stream, tls, lane, permit.is_some(), stopped).await {
                            tracing::debug!(%peer, "connection ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!("shutdown: connections still open after {DRAIN_TIMEOUT:?}; closing them");
        connections.abort_all();
    }
}

async fn connection(
    host: Host,
    stream: TcpStream,
    tls: TlsAcceptor,
    lane: tokio::runtime::Handle,
    admitted: bool,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), FrameError> {
    stream.set_nodelay(true)?;
    let within = host.frame_timeout();
    // A client that does not start with TLS is told, in the clear, what it needs.
    let mut first = [0u8; 1];
    let peeked = tokio::select! {
        _ = stopped.changed() => return Ok(()),
        peeked = tokio::time::timeout(within, stream.peek(&mut first)) => peeked.map_err(|_| FrameError::Timeout)??,
    };
    if peeked == 0 {
        return Ok(());
    }
    if first[0] != transport::TLS_HANDSHAKE_BYTE {
        let mut stream = stream;
        let _ = send(&mut stream, &handshake::not_tls(), within).await;
        linger(&mut stream).await;
        return Err(FrameError::Malformed("a client that does not speak TLS".into()));
    }
    let (mut stream, peer) = tokio::select! {
        _ = stopped.changed() => return Ok(()),
        accepted = handshake::accept(&tls, stream, within) => accepted?,
    };
    if !admitted {
        // Over the cap: say so, without waiting for the client's hello.
        let busy = format!("the host is at its limit of {} connections; retry shortly", host.max_connections());
        send(&mut stream, &Welcome::Refused(RemoteError::new(ErrorKind::Busy, busy)), within).await?;
        linger(&mut stream).await;
        return Ok(());
    }
    let max = host.max_frame();
    let hello = tokio::select! {
        _ = stopped.changed() => return Ok(()),
        read = tokio::time::timeout(within, protocol::read_message::<_, Hello>(&mut stream, handshake::MAX_MESSAGE, within)) => {
            read.unwrap_or(Err(FrameError::Timeout))
        }
    };
    let hello = match hello {
        Ok(hello) => hello,
        Err(e) => {
            if says_why(&e) {
                let refused = Welcome::Refused(RemoteError::new(ErrorKind::Protocol, e.to_string()));
                let _ = send(&mut stream, &refused, within).await;
                linger(&mut stream).await;
            }
            return Err(e);
        }
    };
    let mut welcome = handshake::answer(&hello, host.name());
    // A certified host's certificate, for the key it proved in TLS.
    if let (Welcome::Accepted { .. }, Some(cert), Some(proven)) = (&welcome, hello.certificate, peer)
        && let Err(e) = host.present_certificate(cert, &proven)
    {
        welcome = Welcome::Refused(RemoteError::new(ErrorKind::Unauthenticated, e));
    }
    send(&mut stream, &welcome, within).await?;
    if matches!(welcome, Welcome::Refused(_)) {
        linger(&mut stream).await;
        return Ok(());
    }
    loop {
        let read = async {
            // Between requests the peer may stay silent for the idle timeout; once a frame
            // starts, it must arrive whole within the frame timeout.
            let body = protocol::read_frame_after(&mut stream, max, within, Some(IDLE_TIMEOUT)).await?;
            bulk(&lane, body.len(), move || protocol::decode::<Request>(&body)).await
        };
        let request = tokio::select! {
            _ = stopped.changed() => return Ok(()),
            read = read => match read {
                Ok(r) => r,
                Err(FrameError::Closed) => return Ok(()),
                Err(e) => {
                    if says_why(&e) {
                        // The frame boundary may be lost, so no further request on this
                        // connection can be trusted: say why, then close.
                        let reply = Response::Error(RemoteError::new(ErrorKind::Protocol, e.to_string()));
                        let _ = send(&mut stream, &reply, within).await;
                        linger(&mut stream).await;
                    }
                    return Err(e);
                }
            },
        };
        let response = host.handle(request, peer).await;
        let bulky = response.bulk_bytes() > BULKY;
        // A peer that stops reading must not hold its connection either.
        let respond = async move {
            let frame = protocol::encode_frame(&response)?;
            let written = tokio::time::timeout(within, protocol::write_frame(&mut stream, &frame)).await;
            written.map_err(|_| FrameError::Slow(within))??;
            Ok::<_, FrameError>(stream)
        };
        stream = if bulky {
            lane.spawn(respond).await.map_err(|e| FrameError::Io(std::io::Error::other(e)))??
        } else {
            respond.await?
        };
    }
}

/// Writes one message within `within`: a peer that stops reading, even to be told why it is
/// refused, cannot hold its connection.
async fn send<S, T>(stream: &mut S, msg: &T, within: Duration) -> Result<(), FrameError>
where
    S: AsyncWrite + Unpin,
    T: serde::Serialize,
{
    tokio::time::timeout(within, protocol::write_message(stream, msg)).await.map_err(|_| FrameError::Slow(within))?
}

/// Closes a connection after a refusal so that the peer can read it: a socket closed with
/// unread bytes from the peer (a frame still trickling in, say) sends a reset, which can throw
/// away the refusal before the peer reads it. So: end our side, then read and drop what still
/// comes, for a short while at most.
async fn linger<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = stream.shutdown().await;
    let mut buf = [0u8; 4096];
    let drain = async { while let Ok(1..) = stream.read(&mut buf).await {} };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Runs `work` (decoding a message with `bytes` of bulk data) on the bulk `lane` if it is
/// bulky, else here.
async fn bulk<T: Send + 'static>(
    lane: &tokio::runtime::Handle,
    bytes: usize,
    work: impl FnOnce() -> Result<T, FrameError> + Send + 'static,
) -> Result<T, FrameError> {
    if bytes <= BULKY {
        return work();
    }
    lane.spawn_blocking(work).await.map_err(|e| FrameError::Io(std::io::Error::other(e)))?
}

/// Whether a failed read is the peer's fault and worth telling it about before closing (rather
/// than a connection that is gone or idle).
fn says_why(e: &FrameError) -> bool {
    matches!(e, FrameError::Malformed(_) | FrameError::TooLarge { .. } | FrameError::Empty | FrameError::Slow(_))
}
