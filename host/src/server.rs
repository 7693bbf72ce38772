//! The TCP front of a host: listener → connection → TLS → frame → request → [`Host::handle`].
//!
//! The accept loop only accepts; each connection runs in its own task, and the Wasm itself runs
//! on the host's bounded worker pool, so a slow module never stalls accepting or other
//! connections. Connections are shared fairly ([`Gate`]): one IP address holds at most
//! `per_source` of them (more are closed at once, before TLS), and clients the host does not
//! know (anonymous, or with a key that is neither a peer's nor named by the access policy) never
//! take the slots reserved for the others; a connection over the cap is told so and closed.
//! Large frames take their size from a host-wide budget of bytes in flight, half of it for
//! known callers, before they are read or written ([`Budget`]). Shutdown stops accepting, lets each connection finish
//! the request in hand, and waits for them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::Instrument as _;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;

use crate::config::ConnectionLimits;
use crate::handshake::{self, Hello, Welcome};
use crate::host::Host;
use crate::metrics::Gauge;
use crate::protocol::{self, ErrorKind, FrameError, RemoteError, Request, Response};
use crate::transport;

/// How long a refused connection is drained before it is closed (see [`linger`]).
const LINGER: Duration = Duration::from_millis(500);
/// Frames at least this large take their size from the [`Budget`]; smaller ones, bounded by
/// the number of connections, do not.
const BUDGETED: usize = 64 << 10;
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

/// Who holds the host's connections: how many in all, how many of clients it does not know, how
/// many from each IP address.
#[derive(Debug)]
struct Gate {
    limits: ConnectionLimits,
    held: Mutex<Held>,
    /// The second (since the Unix epoch) a closed connection was last logged: a flood of
    /// connections must not become a flood of log lines.
    warned: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct Held {
    all: usize,
    unknown: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// One connection's place at the [`Gate`], given back when it is dropped.
#[derive(Debug)]
struct Place {
    gate: Arc<Gate>,
    source: IpAddr,
    /// Whether it counts among the whole host's connections (else it is only told so).
    admitted: bool,
    /// Whether it counts among the connections of clients the host does not know.
    unknown: bool,
}

impl Gate {
    fn new(limits: ConnectionLimits) -> Self {
        Self { limits, held: Mutex::default(), warned: std::sync::atomic::AtomicU64::new(0) }
    }

    /// Whether a connection refused before its first request may be logged now: once a second
    /// at most (the metrics count them all).
    fn warn_now(&self) -> bool {
        let now = crate::state::now_secs();
        self.warned.swap(now, std::sync::atomic::Ordering::Relaxed) != now
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A place for a new connection from `source`; `None` if that address holds its share
    /// already (the connection is closed at once). Over the host's cap, the place is not
    /// admitted: the client is told why.
    fn enter(self: &Arc<Self>, source: IpAddr) -> Option<Place> {
        // An IPv6 client may take any address of its /64: the prefix is the source.
        let source = match source {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
                IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1)))
            }
            other => other,
        };
        let mut held = self.held();
        let from_source = held.by_source.entry(source).or_default();
        if *from_source >= self.limits.per_source {
            return None;
        }
        *from_source += 1;
        let admitted = held.all < self.limits.max;
        held.all += usize::from(admitted);
        Some(Place { gate: self.clone(), source, admitted, unknown: false })
    }
}

impl Place {
    /// Counts the connection as one of a client the host does not know, if the slots such
    /// clients may take are not all taken; `false` if they are (the reserve is for peers and
    /// the clients the access policy names).
    fn as_unknown(&mut self) -> bool {
        let limits = self.gate.limits;
        let mut held = self.gate.held();
        if held.unknown >= limits.max - limits.reserved {
            return false;
        }
        held.unknown += 1;
        self.unknown = true;
        true
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut held = self.gate.held();
        held.all -= usize::from(self.admitted);
        held.unknown -= usize::from(self.unknown);
        if let Some(n) = held.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                held.by_source.remove(&self.source);
            }
        }
    }
}

/// The host-wide budget of bytes in large frames being read or written, in KiB: one half for
/// peers and known clients, one for everyone else, so that strangers announcing large frames
/// they never send cannot hold up peers' transfers.
#[derive(Clone, Debug)]
struct Budget {
    known: Arc<Semaphore>,
    others: Arc<Semaphore>,
    /// Each half's size, for messages.
    half: usize,
    /// The bytes held, for `/metrics`.
    gauge: Gauge,
}

/// Room a frame holds in the [`Budget`] until it is dropped.
#[derive(Debug)]
struct Room {
    _permit: OwnedSemaphorePermit,
    bytes: i64,
    gauge: Gauge,
}

impl Drop for Room {
    fn drop(&mut self) {
        self.gauge.dec_by(self.bytes);
    }
}

impl Budget {
    fn new(bytes: usize, gauge: Gauge) -> Self {
        let half = bytes / 2;
        Self { known: Arc::new(Semaphore::new(half >> 10)), others: Arc::new(Semaphore::new(half >> 10)), half, gauge }
    }

    /// Room for a frame of `size` bytes in `known`'s half, waiting at most `within` for it if
    /// given (else as long as it takes); `None` for a small frame, which takes no room.
    async fn room(&self, size: usize, known: bool, within: Option<Duration>) -> Result<Option<Room>, FrameError> {
        if size < BUDGETED {
            return Ok(None);
        }
        // The configuration makes each half hold at least one frame of the largest size.
        let kib = u32::try_from(size.div_ceil(1024)).unwrap_or(u32::MAX);
        let pool = if known { &self.known } else { &self.others };
        let acquire = pool.clone().acquire_many_owned(kib);
        let busy = || {
            FrameError::Busy(format!(
                "frames of {} MiB in all are being read or written for clients like this one, the most it holds at \
                 once; retry shortly",
                self.half >> 20
            ))
        };
        let permit = match within {
            Some(within) => tokio::time::timeout(within, acquire).await.map_err(|_| busy())?,
            None => acquire.await,
        };
        let permit = permit.map_err(|_| busy())?;
        let bytes = i64::try_from(size).unwrap_or(i64::MAX);
        self.gauge.inc_by(bytes);
        Ok(Some(Room { _permit: permit, bytes, gauge: self.gauge.clone() }))
    }
}

async fn serve(host: Host, listener: TcpListener, tls: TlsAcceptor, lane: Lane, mut stopped: watch::Receiver<bool>) {
    let limits = host.connection_limits();
    let gate = Arc::new(Gate::new(limits));
    let budget = Budget::new(limits.inflight_bytes, host.metrics().bytes_in_flight().clone());
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // One address over its share is closed at once: it gets no TLS handshake.
                    let Some(place) = gate.enter(peer.ip()) else {
                        host.metrics().connection_refused("per_source");
                        if gate.warn_now() {
                            tracing::warn!(%peer, "refused a connection: its address holds {} already \
                                (connections_per_source)", limits.per_source);
                        }
                        continue;
                    };
                    let (host, lane, tls, budget) = (host.clone(), lane.handle.clone(), tls.clone(), budget.clone());
                    let stopped = stopped.clone();
                    connections.spawn(async move {
                        if let Err(e) = connection(host, stream, peer, tls, lane, place, budget, stopped).await {
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

#[allow(clippy::too_many_arguments)]
async fn connection(
    host: Host,
    stream: TcpStream,
    source: SocketAddr,
    tls: TlsAcceptor,
    lane: tokio::runtime::Handle,
    mut place: Place,
    budget: Budget,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), FrameError> {
    let _open = Open::new(&host);
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
        host.metrics().connection_refused("no_tls");
        if place.gate.warn_now() {
            tracing::warn!(%source, "refused a connection: it does not speak TLS (an older roam client, or not roam)");
        }
        let _ = send(&mut stream, &handshake::not_tls(), within).await;
        linger(&mut stream).await;
        return Err(FrameError::Malformed("a client that does not speak TLS".into()));
    }
    let (mut stream, peer) = tokio::select! {
        _ = stopped.changed() => return Ok(()),
        accepted = handshake::accept(&tls, stream, within) => accepted?,
    };
    let limits = host.connection_limits();
    // Anonymous, or with a key that is neither a peer's nor a client's the policy names.
    let known = peer.is_some_and(|k| host.is_known(&k));
    // Over the cap, or over the share of clients it does not know: say so, without waiting for
    // the client's hello.
    let busy = if !place.admitted {
        Some(format!("the host is at its limit of {} connections; retry shortly", limits.max))
    } else if !known && !place.as_unknown() {
        Some(format!(
            "the host's {} connections for clients it does not know are taken; retry shortly, or connect with an \
             identity its access policy names",
            limits.max - limits.reserved
        ))
    } else {
        None
    };
    if let Some(busy) = busy {
        host.metrics().connection_refused("busy");
        if place.gate.warn_now() {
            tracing::warn!(%source, caller = %host.describe_caller(peer.as_ref()), "refused a connection: {busy}");
        }
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
        host.metrics().connection_refused("certificate");
        if place.gate.warn_now() {
            tracing::warn!(%source, "refused a host's certificate: {}", loggable(&e));
        }
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
            let room = |size| budget.room(size, known, Some(within));
            let (body, room) = protocol::read_frame_after(&mut stream, max, within, Some(limits.idle), room).await?;
            let request = bulk(&lane, body.len(), move || protocol::decode::<Request>(&body)).await?;
            Ok::<_, FrameError>((request, room))
        };
        let (request, read_room) = tokio::select! {
            _ = stopped.changed() => return Ok(()),
            read = read => match read {
                Ok(r) => r,
                Err(FrameError::Closed) => return Ok(()),
                Err(e) => {
                    if says_why(&e) {
                        // The frame boundary may be lost, so no further request on this
                        // connection can be trusted: say why, then close.
                        let kind = if matches!(e, FrameError::Busy(_)) { ErrorKind::Busy } else { ErrorKind::Protocol };
                        let reply = Response::Error(RemoteError::new(kind, e.to_string()));
                        let _ = send(&mut stream, &reply, within).await;
                        linger(&mut stream).await;
                    }
                    return Err(e);
                }
            },
        };
        let (operation, subject, started) = (request.operation(), request.subject(), std::time::Instant::now());
        let span = tracing::info_span!(target: crate::trace::TARGET, "request", operation, host = %host.name());
        let response = host.handle(request, peer).instrument(span).await;
        let caller = host.describe_caller(peer.as_ref());
        let took = started.elapsed();
        let (outcome, refused) = match &response {
            Response::Error(e) => (e.kind.name(), e.kind.is_refusal()),
            Response::NeedModule(_) => ("need_module", false),
            _ => ("ok", false),
        };
        host.metrics().request(operation, outcome, refused, took.as_secs_f64());
        if let Response::Error(e) = &response
            && refused
        {
            host.metrics().note_refusal(crate::metrics::Refusal {
                at: crate::state::now_millis(),
                operation,
                reason: outcome,
                caller: caller.clone(),
                why: loggable(&e.message),
            });
        }
        log_request(source, &caller, operation, subject.as_deref(), took, &response);
        drop(read_room);
        // A large answer waits for its room before it is encoded (the work is done: it is not
        // thrown away); the room comes back as other answers are written or time out.
        let _write_room = budget.room(response.bulk_bytes(), known, None).await?;
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

/// Counts a connection as open for as long as it lives.
struct Open<'a>(&'a Host);

impl<'a> Open<'a> {
    fn new(host: &'a Host) -> Self {
        host.metrics().connection(1);
        Self(host)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.metrics().connection(-1);
    }
}

/// Logs a request once it is answered: served at info, refused at warn with the reason, failed
/// in the host at error; a module's own failure (a trap, its time) is the caller's news, at info.
fn log_request(
    source: SocketAddr,
    caller: &str,
    operation: &str,
    subject: Option<&str>,
    took: Duration,
    response: &Response,
) {
    // Names and messages can carry what a client sent: bounded and escaped, so that a request
    // can neither flood the log nor forge lines in it.
    let subject = match response {
        Response::Published(info) => format!("{}@{} ({})", loggable(&info.name), info.version, info.hash),
        _ => subject.map_or_else(|| "-".to_owned(), loggable),
    };
    let ms = took.as_secs_f64() * 1000.0;
    match response {
        Response::Error(e) if e.kind == ErrorKind::Internal => {
            let why = loggable(&e.message);
            tracing::error!(%source, %caller, %operation, %subject, ms, "request failed in the host: {why}");
        }
        Response::Error(e) if e.kind.is_refusal() => {
            let why = loggable(&e.message);
            tracing::warn!(%source, %caller, %operation, %subject, ms, kind = ?e.kind, "request refused: {why}");
        }
        Response::Error(e) => {
            let why = loggable(&e.message);
            tracing::info!(%source, %caller, %operation, %subject, ms, kind = ?e.kind, "request failed: {why}");
        }
        // Polls and the chunks of a download come many a second: shown with -v.
        Response::Pong | Response::Agents(_) | Response::Chunk { .. } => {
            tracing::debug!(%source, %caller, %operation, %subject, ms, "request served");
        }
        _ => tracing::info!(%source, %caller, %operation, %subject, ms, "request served"),
    }
}

/// Text from a request as the log may hold it: at most 200 characters, control characters
/// escaped.
fn loggable(text: &str) -> String {
    const MAX: usize = 200;
    let mut out: String = text.chars().take(MAX).flat_map(char::escape_debug).collect();
    if text.chars().nth(MAX).is_some() {
        out.push('…');
    }
    out
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
    matches!(
        e,
        FrameError::Malformed(_)
            | FrameError::TooLarge { .. }
            | FrameError::Empty
            | FrameError::Slow(_)
            | FrameError::Busy(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a client sends reaches the log bounded, and cannot start a line of its own.
    #[test]
    fn request_text_is_bounded_and_escaped_in_the_log() {
        let forged = loggable("nosuch\n2026-12-02T00:00:00Z  INFO roam_host: all is well");
        assert!(!forged.contains('\n') && forged.contains("\\n"), "{forged}");
        let long = loggable(&"x".repeat(10_000));
        assert!(long.chars().count() <= 201 && long.ends_with('…'), "{}", long.len());
    }

    /// An IPv6 client holds the addresses of its whole /64, so its share is counted by prefix;
    /// a place given back is free again.
    #[test]
    fn an_ipv6_prefix_is_one_source() -> Result<(), Box<dyn std::error::Error>> {
        let limits = ConnectionLimits {
            max: 16,
            per_source: 2,
            reserved: 0,
            idle: Duration::from_secs(60),
            inflight_bytes: 1 << 20,
        };
        let gate = Arc::new(Gate::new(limits));
        let ip = |s: &str| s.parse::<IpAddr>();
        let first = gate.enter(ip("2001:db8::1")?).ok_or("no place")?;
        let _second = gate.enter(ip("2001:db8::ffff:2")?).ok_or("no place")?;
        assert!(gate.enter(ip("2001:db8::3")?).is_none(), "a third address of the same /64 got a place");
        assert!(gate.enter(ip("2001:db8:0:1::1")?).is_some(), "the next /64 is another source");
        // IPv4 addresses each are their own source.
        let _a = gate.enter(ip("192.0.2.1")?).ok_or("no place")?;
        let _b = gate.enter(ip("192.0.2.1")?).ok_or("no place")?;
        assert!(gate.enter(ip("192.0.2.2")?).is_some());
        drop(first);
        assert!(gate.enter(ip("2001:db8::4")?).is_some(), "a place given back was not free again");
        Ok(())
    }
}
