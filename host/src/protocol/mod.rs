//! The wire protocol between clients and hosts.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of CBOR; a frame over the
//! agreed maximum is refused before it is read, and a frame must arrive whole within a deadline
//! counted from its first byte.
//!
//! A connection opens with the handshake ([`crate::handshake`]); then requests and responses
//! alternate in order. Every byte string goes through `serde_bytes`, never as a sequence of
//! integers.

pub mod wire;

pub use crate::state::ModuleInfo;

use std::time::Duration;

use roam_keys::{ModuleHash, PublicKey};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Names the protocol in the handshake, so a stray client of another protocol is told so.
pub const PROTOCOL: &str = "roam";
/// The protocol version this build speaks. Version 2 added the host's challenge and the
/// client's proof of its key; version 3 moved both proofs into TLS 1.3, which now carries every
/// connection. A host refuses clients that offer only an older version.
pub const VERSION: u32 = 3;
/// Default cap on one frame.
pub const DEFAULT_MAX_FRAME: usize = 32 << 20;
/// Default time a peer may take to send one whole frame once it started, or to answer a handshake.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// The most a frame's buffer holds before its bytes arrive: it grows with what is received, so a
/// peer that declares a large frame and sends little costs little memory.
const FIRST_READ: usize = 64 << 10;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection between frames.
    #[error("the peer closed the connection")]
    Closed,
    /// The declared length is over the cap.
    #[error("frame of {size} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// Declared length.
        size: usize,
        /// The cap.
        max: usize,
    },
    /// A frame of length zero.
    #[error("empty frame")]
    Empty,
    /// The peer closed the connection in the middle of a frame.
    #[error("the peer closed the connection in the middle of a frame ({received} of {size} bytes received)")]
    Truncated {
        /// The bytes expected: the declared length, or 4 while the length itself was read.
        size: usize,
        /// The bytes of them received.
        received: usize,
    },
    /// The frame's body is not the expected message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The peer took too long.
    #[error("timed out waiting for the peer")]
    Timeout,
    /// The host has no room for the frame now (its budget of bytes in flight is taken).
    #[error("the host is busy: {0}")]
    Busy(String),
    /// The peer started a frame but did not finish it in time.
    #[error("the frame did not arrive whole within {0:?} of its first byte")]
    Slow(Duration),
    /// The connection failed.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
}

/// The most bytes one read or write of a frame asks the kernel to move. A kernel built without
/// preemption (`PREEMPT_NONE`, usual on servers) finishes a system call's copy before any other
/// thread gets the core, so one call that moves megabytes holds its core for milliseconds
/// whatever the calling thread's priority; a call of this size returns within tens of
/// microseconds, and a thread woken meanwhile runs then.
const IO_SLICE: usize = 64 << 10;

/// Reads one frame's body. `Closed` if the peer closed cleanly before a new frame.
///
/// The first byte may take as long as the caller waits (an idle connection); from then on the
/// whole frame must arrive `within` that time, so a peer trickling bytes cannot hold a
/// connection, and the body's buffer grows only with the bytes received.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: usize, within: Duration) -> Result<Vec<u8>, FrameError> {
    read_frame_after(r, max, within, None, |_| async { Ok(()) }).await.map(|(body, ())| body)
}

/// [`read_frame`], waiting at most `idle` (if given) for the frame's first byte: `Timeout` if
/// none came. Once the length is known, `admit` decides whether the frame may be read (a
/// budget's room, held with the body): its own wait does not count against `within`, which
/// the header and then the body each have.
pub async fn read_frame_after<R, G, F>(
    r: &mut R,
    max: usize,
    within: Duration,
    idle: Option<Duration>,
    admit: impl FnOnce(usize) -> F,
) -> Result<(Vec<u8>, G), FrameError>
where
    R: AsyncRead + Unpin,
    F: Future<Output = Result<G, FrameError>>,
{
    let mut len = [0u8; 4];
    let first = r.read_exact(&mut len[..1]);
    let first = match idle {
        Some(idle) => tokio::time::timeout(idle, first).await.map_err(|_| FrameError::Timeout)?,
        None => first.await,
    };
    match first {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let header = async {
        let mut received = 1;
        while received < len.len() {
            match r.read(&mut len[received..]).await? {
                0 => return Err(FrameError::Truncated { size: len.len(), received }),
                n => received += n,
            }
        }
        Ok(())
    };
    tokio::time::timeout(within, header).await.map_err(|_| FrameError::Slow(within))??;
    let size = u32::from_be_bytes(len) as usize;
    if size == 0 {
        return Err(FrameError::Empty);
    }
    if size > max {
        return Err(FrameError::TooLarge { size, max });
    }
    let admitted = admit(size).await?;
    let body = async {
        let mut body = Vec::with_capacity(size.min(FIRST_READ));
        while body.len() < size {
            let want = (size - body.len()).min(IO_SLICE);
            body.reserve(want);
            if (&mut *r).take(want as u64).read_buf(&mut body).await? == 0 {
                return Err(FrameError::Truncated { size, received: body.len() });
            }
        }
        Ok(body)
    };
    let body = tokio::time::timeout(within, body).await.map_err(|_| FrameError::Slow(within))??;
    Ok((body, admitted))
}

/// Reads and decodes one message (see [`read_frame`]).
pub async fn read_message<R, T>(r: &mut R, max: usize, within: Duration) -> Result<T, FrameError>
where
    R: AsyncRead + Unpin,
    T: for<'de> Deserialize<'de>,
{
    let body = read_frame(r, max, within).await?;
    decode(&body)
}

/// Decodes a message body (ciborium bounds nesting depth, so hostile input cannot overflow the
/// stack).
pub fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, FrameError> {
    ciborium::from_reader(body).map_err(|e| FrameError::Malformed(roam_keys::cbor_error(&e)))
}

/// Encodes one message as a frame: its length, then its CBOR.
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut buf = GivingWay(vec![0u8; 4]);
    ciborium::into_writer(msg, &mut buf).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let GivingWay(mut buf) = buf;
    let len =
        u32::try_from(buf.len() - 4).map_err(|_| FrameError::TooLarge { size: buf.len(), max: u32::MAX as usize })?;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf)
}

/// A frame being encoded, which copies megabytes of bulk data in a slice at a time (see
/// [`crate::workers::copy_giving_way`]).
struct GivingWay(Vec<u8>);

impl std::io::Write for GivingWay {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        crate::workers::copy_giving_way(&mut self.0, bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Encodes and writes one message as a frame.
pub async fn write_message<W, T>(w: &mut W, msg: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    write_frame(w, &encode_frame(msg)?).await
}

/// Writes a frame made by [`encode_frame`].
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> Result<(), FrameError> {
    for (n, slice) in frame.chunks(IO_SLICE).enumerate() {
        if n > 0 {
            crate::workers::give_way();
        }
        w.write_all(slice).await?;
    }
    w.flush().await?;
    Ok(())
}

/// A module named in a request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ModuleRef {
    /// The host may already hold it: SHA-256 of the signed module file.
    Hash(ModuleHash),
    /// The signed module file itself.
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// A request from a client.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// Run a query module next to the host's data.
    Eval {
        /// The query module.
        module: ModuleRef,
        /// Its input, CBOR.
        #[serde(with = "serde_bytes")]
        input: Vec<u8>,
    },
    /// Store a signed code or agent module in the host's code repository.
    Publish {
        /// The signed module file.
        #[serde(with = "serde_bytes")]
        module: Vec<u8>,
    },
    /// List the modules the host holds.
    List,
    /// Find the module published under a name: that version, or the highest.
    Resolve {
        /// The module's name.
        name: String,
        /// The exact version wanted; `None` for the highest.
        version: Option<semver::Version>,
    },
    /// Read part of a held module's signed file.
    Fetch {
        /// The module.
        hash: ModuleHash,
        /// Where to start.
        offset: u64,
        /// The most bytes to return.
        max: u32,
    },
    /// Launch an agent with this host as its home.
    Launch {
        /// The signed agent module.
        #[serde(with = "serde_bytes")]
        module: Vec<u8>,
        /// The input of its start entry, CBOR.
        #[serde(with = "serde_bytes")]
        input: Vec<u8>,
    },
    /// An agent moving here (host to host).
    Transfer {
        /// The sending host's signed envelope.
        envelope: wire::Signed,
        /// The agent's snapshot, CBOR.
        #[serde(with = "serde_bytes")]
        snapshot: Vec<u8>,
    },
    /// A report about an agent whose home this is (host to host).
    Report(wire::Signed),
    /// The agents this host knows, or one of them.
    Agents {
        /// Only this agent.
        id: Option<String>,
    },
    /// At an agent's home: bring it back. Answered with `Agents` (the one agent) once the order
    /// is persisted, or at once if the agent had already ended.
    Recall {
        /// The agent.
        id: String,
    },
    /// A home's signed order to send its agent back (host to host): from the home, or passed
    /// on by a peer along the agent's trail.
    RecallAgent(wire::Signed),
    /// A call on a resource this host owns, forwarded for an agent elsewhere (host to host).
    Call(wire::Signed),
    /// Check that the host answers.
    Ping,
}

impl Request {
    /// The request's name in the host's log.
    pub fn operation(&self) -> &'static str {
        match self {
            Self::Eval { .. } => "eval",
            Self::Publish { .. } => "publish",
            Self::List => "list",
            Self::Resolve { .. } => "resolve",
            Self::Fetch { .. } => "fetch",
            Self::Launch { .. } => "launch",
            Self::Transfer { .. } => "transfer",
            Self::Report(_) => "report",
            Self::Agents { .. } => "agents",
            Self::Recall { .. } => "recall",
            Self::RecallAgent(_) => "recall-agent",
            Self::Call(_) => "call",
            Self::Ping => "ping",
        }
    }

    /// What the request is about, for the host's log: a module sent whole (its size: it is
    /// not parsed before the caller's rights are checked), a module's hash, a name, or an
    /// agent.
    pub fn subject(&self) -> Option<String> {
        match self {
            Self::Eval { module: ModuleRef::Bytes(bytes), .. }
            | Self::Publish { module: bytes }
            | Self::Launch { module: bytes, .. } => Some(format!("a module of {} bytes", bytes.len())),
            Self::Eval { module: ModuleRef::Hash(hash), .. } | Self::Fetch { hash, .. } => Some(hash.to_string()),
            Self::Resolve { name, version: Some(v) } => Some(format!("{name}@{v}")),
            Self::Resolve { name, version: None } => Some(name.clone()),
            Self::Agents { id: Some(id) } | Self::Recall { id } => Some(id.clone()),
            _ => None,
        }
    }

    /// The key that signed a host-to-host request (a transfer, report, recall order or forwarded
    /// call), which only another host may send; `None` for the requests any client may make.
    pub fn host_signer(&self) -> Option<&PublicKey> {
        match self {
            Self::Transfer { envelope, .. } => Some(&envelope.signer),
            Self::Report(signed) | Self::RecallAgent(signed) | Self::Call(signed) => Some(&signed.signer),
            _ => None,
        }
    }
}

/// A host's answer to one [`Request`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Response {
    /// The query's result, CBOR.
    Result(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The host does not hold the module named by hash: send its bytes.
    NeedModule(ModuleHash),
    /// The request failed.
    Error(RemoteError),
    /// A module was stored (or was already held).
    Published(ModuleInfo),
    /// The modules the host holds.
    Modules(Vec<ModuleInfo>),
    /// The module a name resolves to.
    Resolved(ModuleInfo),
    /// Part of a module's signed file.
    Chunk {
        /// The file's whole size.
        total: u64,
        /// The bytes from the requested offset.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// An agent was launched.
    Launched {
        /// Its id.
        id: String,
    },
    /// The request was carried out (a report applied, a recall order kept).
    Accepted,
    /// A transfer was persisted: the receiver's signed [`wire::Receipt`].
    Received(wire::Signed),
    /// Agents, as `roam agents` shows them.
    Agents(Vec<wire::AgentInfo>),
    /// Rows a forwarded query returned, as cursor batches.
    Rows(Vec<serde_bytes::ByteBuf>),
    /// Answer to [`Request::Ping`].
    Pong,
}

impl Response {
    /// The bytes of bulk data it carries (a result, a chunk, rows): what encoding it costs.
    pub fn bulk_bytes(&self) -> usize {
        match self {
            Self::Result(b) | Self::Chunk { bytes: b, .. } => b.len(),
            Self::Rows(batches) => batches.iter().map(|b| b.len()).sum(),
            _ => 0,
        }
    }
}

/// What kind of failure a [`RemoteError`] reports, so a client can act on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The request did not follow the protocol.
    Protocol,
    /// The host is at a limit (connections, instances); retry later.
    Busy,
    /// The module's signature or claims were refused (see the message for which check).
    Verification,
    /// The module may not use a resource it asked for.
    Capability,
    /// The module does not fit this host (it imports what the host lacks, or does not compile).
    Load,
    /// The module trapped.
    Trap,
    /// The module ran out of time.
    OutOfTime,
    /// The module ran out of memory.
    OutOfMemory,
    /// The module overflowed its stack.
    StackOverflow,
    /// The module itself reported an error.
    Module,
    /// Something failed inside the host.
    Internal,
    /// The host is shutting down.
    ShuttingDown,
    /// No such module (name, version or hash).
    NotFound,
    /// A request was well-formed but not acceptable (a module of the wrong kind, say).
    Refused,
    /// The client did not prove the key this request needs (a host-to-host request on an
    /// anonymous connection, or from a key that is not a peer).
    Unauthenticated,
    /// The caller holds no right to this request: the host's access policy, or the agent is
    /// someone else's.
    Denied,
}

impl ErrorKind {
    /// Its name in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Protocol => "protocol",
            Self::Busy => "busy",
            Self::Verification => "verification",
            Self::Capability => "capability",
            Self::Load => "load",
            Self::Trap => "trap",
            Self::OutOfTime => "out_of_time",
            Self::OutOfMemory => "out_of_memory",
            Self::StackOverflow => "stack_overflow",
            Self::Module => "module",
            Self::Internal => "internal",
            Self::ShuttingDown => "shutting_down",
            Self::NotFound => "not_found",
            Self::Refused => "refused",
            Self::Unauthenticated => "unauthenticated",
            Self::Denied => "denied",
        }
    }

    /// Whether the host declined the request (as opposed to a module failing, or the host).
    pub fn is_refusal(self) -> bool {
        matches!(
            self,
            Self::Protocol
                | Self::Busy
                | Self::Verification
                | Self::Capability
                | Self::Load
                | Self::NotFound
                | Self::Refused
                | Self::Unauthenticated
                | Self::Denied
        )
    }
}

/// An error that crosses the network: a kind to act on and a message for a person.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RemoteError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What happened and what to do.
    pub message: String,
}

impl RemoteError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;

    const WITHIN: Duration = FRAME_TIMEOUT;

    #[tokio::test]
    async fn frames_over_the_cap_are_refused_before_their_body_is_read() {
        let mut input: &[u8] = &[0, 0, 1, 0, 1, 2, 3];
        let err = read_frame(&mut input, 255, WITHIN).await;
        assert!(matches!(err, Err(FrameError::TooLarge { size: 256, max: 255 })), "{err:?}");
        let mut huge: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1];
        let err = read_frame(&mut huge, DEFAULT_MAX_FRAME, WITHIN).await;
        assert!(matches!(err, Err(FrameError::TooLarge { size, .. }) if size == u32::MAX as usize), "{err:?}");
    }

    #[tokio::test]
    async fn a_frame_of_exactly_the_cap_is_read_and_one_byte_more_is_not() -> Result<(), FrameError> {
        let mut at_cap = vec![0, 0, 1, 0];
        at_cap.extend(std::iter::repeat_n(7u8, 256));
        assert_eq!(read_frame(&mut at_cap.as_slice(), 256, WITHIN).await?, vec![7u8; 256]);
        let err = read_frame(&mut at_cap.as_slice(), 255, WITHIN).await;
        assert!(matches!(err, Err(FrameError::TooLarge { size: 256, max: 255 })), "{err:?}");
        Ok(())
    }

    #[tokio::test]
    async fn empty_truncated_and_malformed_frames_are_errors() {
        let mut empty: &[u8] = &[0, 0, 0, 0];
        assert!(matches!(read_frame(&mut empty, 1024, WITHIN).await, Err(FrameError::Empty)));
        let mut truncated: &[u8] = &[0, 0, 0, 9, 1, 2];
        let err = read_frame(&mut truncated, 1024, WITHIN).await;
        assert!(matches!(err, Err(FrameError::Truncated { size: 9, received: 2 })), "{err:?}");
        let mut cut_length: &[u8] = &[0, 0];
        let err = read_frame(&mut cut_length, 1024, WITHIN).await;
        assert!(matches!(err, Err(FrameError::Truncated { size: 4, received: 2 })), "{err:?}");
        let mut closed: &[u8] = &[];
        assert!(matches!(read_frame(&mut closed, 1024, WITHIN).await, Err(FrameError::Closed)));
        let mut garbage: &[u8] = &[0, 0, 0, 5, 0x9a, 0xff, 0xff, 0xff, 0xff];
        let decoded: Result<Request, _> = read_message(&mut garbage, 1024, WITHIN).await;
        assert!(matches!(decoded, Err(FrameError::Malformed(_))));
    }

    #[tokio::test]
    async fn a_frame_that_trickles_in_is_cut_at_its_deadline() {
        // Three bytes of a frame, then nothing: the deadline counts from the first byte. (Real
        // time: pausing Tokio's clock needs its test-util feature, which would give the tests a
        // build of Tokio, and of everything above it, of their own.)
        let (mut peer, mut host) = tokio::io::duplex(64);
        let sent = peer.write_all(&[0, 0, 0]).await;
        assert!(sent.is_ok());
        let deadline = Duration::from_millis(200);
        let err = read_frame(&mut host, 1024, deadline).await;
        assert!(matches!(err, Err(FrameError::Slow(d)) if d == deadline), "{err:?}");
    }

    #[tokio::test]
    async fn deeply_nested_cbor_is_refused_without_overflowing_the_stack() {
        let body = vec![0x81u8; 10_000];
        let decoded: Result<Request, _> = decode(&body);
        assert!(matches!(decoded, Err(FrameError::Malformed(_))));
    }

    #[tokio::test]
    async fn messages_round_trip_and_bytes_stay_byte_strings() -> Result<(), FrameError> {
        let req = Request::Eval { module: ModuleRef::Bytes(vec![7; 1000]), input: vec![0xa0] };
        let mut buf = Vec::new();
        write_message(&mut buf, &req).await?;
        // A byte string of 1000 bytes costs 3 bytes of header; a sequence would cost 1000+.
        assert!(buf.len() < 1100, "frame is {} bytes", buf.len());
        let back: Request = read_message(&mut buf.as_slice(), 4096, WITHIN).await?;
        match back {
            Request::Eval { module: ModuleRef::Bytes(b), input } => {
                assert_eq!(b, vec![7; 1000]);
                assert_eq!(input, vec![0xa0]);
            }
            other => panic!("decoded {other:?}"),
        }
        Ok(())
    }
}
