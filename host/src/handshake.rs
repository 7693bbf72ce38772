//! The handshake that opens every connection, both sides of it.
//!
//! First TLS 1.3 ([`transport`](crate::transport)): the host proves its key, and a client that
//! has one (a host connecting to a peer) proves its own, each over the TLS transcript, so a
//! proof is bound to its connection. Then, inside TLS, roam's own two messages: the client's
//! [`Hello`] says which protocol versions it speaks, and the host's [`Welcome`] chooses one and
//! gives its name, or refuses the connection (a version it does not speak, no free connection
//! slot). Host-to-host requests are served only on a connection whose client proved a peer's
//! key.
//!
//! [`connect`] is the whole client half; the host's half is [`accept`] and [`answer`], which
//! `server` calls between its reads and writes.

use std::sync::Arc;
use std::time::Duration;

use roam_keys::{HostCertificate, PublicKey};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::protocol::{self, ErrorKind, FrameError, PROTOCOL, RemoteError, VERSION};
use crate::transport::{self, ClientStream, ServerStream};

/// The most a handshake message may take: they are a few hundred bytes.
pub const MAX_MESSAGE: usize = 64 << 10;

/// The client's opening message, inside TLS.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hello {
    /// Must be [`PROTOCOL`].
    pub protocol: String,
    /// The versions the client speaks.
    pub versions: Vec<u32>,
    /// Who the client is, for the host's logs.
    pub client: String,
    /// A host's certificate from a cluster key, when it connects to a peer that may know it
    /// only through that cluster key. Its key must be the one the client proved in TLS.
    #[serde(default)]
    pub certificate: Option<HostCertificate>,
}

impl Hello {
    /// A hello for this build.
    pub fn new(client: &str) -> Self {
        Self { protocol: PROTOCOL.into(), versions: vec![VERSION], client: client.into(), certificate: None }
    }
}

/// The host's answer to [`Hello`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Welcome {
    /// The connection is open.
    Accepted {
        /// The version chosen.
        version: u32,
        /// The host's name.
        host: String,
    },
    /// The host will not serve this connection.
    Refused(RemoteError),
}

/// What a host says to a client that does not speak TLS: an older roam, most likely. Sent in
/// the clear, as the frame such a client expects.
pub fn not_tls() -> Welcome {
    Welcome::Refused(RemoteError::new(
        ErrorKind::Protocol,
        format!(
            "this host speaks roam protocol version {VERSION}, over TLS; this client speaks an older one in the \
             clear: upgrade roam on the client"
        ),
    ))
}

/// The host's answer to a [`Hello`]: refused if it is not roam's protocol at this version, else
/// accepted.
pub fn answer(hello: &Hello, host_name: &str) -> Welcome {
    let refuse = |message: String| Welcome::Refused(RemoteError::new(ErrorKind::Protocol, message));
    if hello.protocol != PROTOCOL {
        return refuse(format!("expected protocol {:?}, got {:?}", PROTOCOL, hello.protocol));
    }
    if !hello.versions.contains(&VERSION) {
        return refuse(format!(
            "this host speaks protocol version {VERSION}; the client offered {:?}: upgrade roam on the older side",
            hello.versions
        ));
    }
    Welcome::Accepted { version: VERSION, host: host_name.to_owned() }
}

/// The host's half of TLS on an accepted connection, within `within`: the encrypted stream,
/// and the key the client proved, if it presented one.
///
/// # Errors
/// If the handshake fails or takes too long.
pub async fn accept(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    within: Duration,
) -> Result<(ServerStream, Option<PublicKey>), FrameError> {
    let tls = tokio::time::timeout(within, acceptor.accept(stream)).await.map_err(|_| FrameError::Slow(within))??;
    let peer = transport::proven_key(tls.get_ref().1.peer_certificates());
    Ok((tls, peer))
}

/// A host the client half of the handshake has reached.
#[derive(Debug)]
pub struct Opened {
    /// The encrypted stream.
    pub stream: ClientStream,
    /// The host's name.
    pub host: String,
    /// The key it proved it holds.
    pub host_key: PublicKey,
}

/// Why the client half of the handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum Failed {
    /// A message could not be sent or read.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// TLS failed: the host did not prove a key, or the channel broke.
    #[error("the TLS handshake failed: {0}")]
    Tls(std::io::Error),
    /// The host refused the connection.
    #[error("the host refused the connection: {0}")]
    Refused(RemoteError),
}

/// The client's half on a connected `stream` to `addr`: TLS with `config` (which proves the
/// client's key, if it has one), then `hello`; within `within` for each step. Which key the
/// host proved is for the caller to check.
///
/// # Errors
/// If TLS fails, the host refuses, or a message cannot be exchanged in time.
pub async fn connect(
    stream: TcpStream,
    addr: &str,
    config: Arc<rustls::ClientConfig>,
    hello: &Hello,
    within: Duration,
) -> Result<Opened, Failed> {
    let (mut tls, host_key) = self::tls(stream, addr, config, within).await?;
    let welcome = exchange(&mut tls, hello, within).await?;
    match welcome {
        Welcome::Accepted { host, .. } => Ok(Opened { stream: tls, host, host_key }),
        Welcome::Refused(e) => Err(Failed::Refused(e)),
    }
}

/// The client's half of TLS alone, on a connected `stream` to `addr`, within `within`: the
/// encrypted stream and the key the host proved.
///
/// # Errors
/// If the handshake fails, takes too long, or the host presents no key.
pub async fn tls(
    stream: TcpStream,
    addr: &str,
    config: Arc<rustls::ClientConfig>,
    within: Duration,
) -> Result<(ClientStream, PublicKey), Failed> {
    let connector = tokio_rustls::TlsConnector::from(config);
    let connecting = connector.connect(transport::server_name(addr), stream);
    let tls = tokio::time::timeout(within, connecting)
        .await
        .map_err(|_| Failed::Frame(FrameError::Slow(within)))?
        .map_err(Failed::Tls)?;
    let host_key = transport::proven_key(tls.get_ref().1.peer_certificates())
        .ok_or_else(|| Failed::Tls(std::io::Error::other("the host presented no key")))?;
    Ok((tls, host_key))
}

/// Sends `hello` and reads the host's answer within `within`.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    hello: &Hello,
    within: Duration,
) -> Result<Welcome, FrameError> {
    protocol::write_message(stream, hello).await?;
    tokio::time::timeout(within, protocol::read_message(stream, MAX_MESSAGE, within))
        .await
        .map_err(|_| FrameError::Timeout)?
}
