//! The handshake that opens every connection, both sides of it.
//!
//! Three messages: the client's [`Hello`] carries a fresh challenge; the host's [`Welcome`] signs
//! it, proving the key the host names, and carries a fresh challenge of the host's own; the
//! client's [`Identity`] answers that challenge with a signature by its key (a host connecting
//! to a peer) or stays anonymous (a person's client). The client sends its first request right
//! after its identity, so the handshake costs one round trip. Each proof has its own domain
//! prefix, and a client's proof names the host it was made for, so neither can be replayed as
//! the other or relayed to another host. Host-to-host requests are served only on a connection
//! whose client proved a peer's key.
//!
//! [`client_side`] is the whole client half; the host's half is [`answer`] (a [`Hello`] into a
//! [`Welcome`]) and [`Identity::check`], which `server` calls between its reads and writes.

use roam_keys::{PublicKey, SecretKey};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::protocol::{self, ErrorKind, FrameError, PROTOCOL, RemoteError, VERSION};

/// The most a handshake message may take: they are a few hundred bytes.
pub const MAX_MESSAGE: usize = 64 << 10;

/// Prefix of what a host signs to prove its key in the handshake.
pub const HANDSHAKE_DOMAIN: &[u8] = b"roam-handshake-v1\0";
/// Prefix of what a client signs to prove its key in the handshake; distinct from
/// [`HANDSHAKE_DOMAIN`], so neither side's proof can be passed off as the other's.
pub const IDENTITY_DOMAIN: &[u8] = b"roam-identity-v1\0";
/// Length of each side's challenge.
pub const NONCE_LEN: usize = 32;

/// A fresh random challenge.
pub fn nonce() -> Result<Vec<u8>, FrameError> {
    let mut nonce = vec![0u8; NONCE_LEN];
    getrandom::getrandom(&mut nonce)
        .map_err(|e| FrameError::Malformed(format!("no randomness for the handshake: {e}")))?;
    Ok(nonce)
}

/// The client's opening message.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hello {
    /// Must be [`PROTOCOL`].
    pub protocol: String,
    /// The versions the client speaks.
    pub versions: Vec<u32>,
    /// Who the client is, for the host's logs.
    pub client: String,
    /// A fresh random challenge the host signs, proving it holds the key it names.
    #[serde(with = "serde_bytes")]
    pub nonce: Vec<u8>,
}

impl Hello {
    /// A hello for this build, with a fresh challenge.
    pub fn new(client: &str) -> Result<Self, FrameError> {
        Ok(Self { protocol: PROTOCOL.into(), versions: vec![VERSION], client: client.into(), nonce: nonce()? })
    }
}

/// What a host signs in the handshake: the domain, the client's challenge, and its own key.
pub fn handshake_message(nonce: &[u8], host_key: &PublicKey) -> Vec<u8> {
    let mut m = Vec::with_capacity(HANDSHAKE_DOMAIN.len() + nonce.len() + 32);
    m.extend_from_slice(HANDSHAKE_DOMAIN);
    m.extend_from_slice(nonce);
    m.extend_from_slice(host_key.as_bytes());
    m
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
        /// The host's public key.
        host_key: PublicKey,
        /// The host's signature over [`handshake_message`] of the client's challenge.
        #[serde(with = "serde_bytes")]
        proof: Vec<u8>,
        /// A fresh challenge the client answers with its [`Identity`].
        #[serde(with = "serde_bytes")]
        challenge: Vec<u8>,
    },
    /// The host will not serve this connection.
    Refused(RemoteError),
}

/// What a client signs to prove its key: the domain, the host's challenge, the client's key,
/// and the key of the host it is talking to, so that a proof made for one host cannot be
/// relayed to another.
pub fn identity_message(challenge: &[u8], client_key: &PublicKey, host_key: &PublicKey) -> Vec<u8> {
    let mut m = Vec::with_capacity(IDENTITY_DOMAIN.len() + challenge.len() + 64);
    m.extend_from_slice(IDENTITY_DOMAIN);
    m.extend_from_slice(challenge);
    m.extend_from_slice(client_key.as_bytes());
    m.extend_from_slice(host_key.as_bytes());
    m
}

/// The client's answer to [`Welcome::Accepted`], sent once, before its first request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Identity {
    /// A client without a key; it may make every request but the host-to-host ones.
    Anonymous,
    /// A client (a host connecting to a peer) proving it holds `key`.
    Key {
        /// The key it proves.
        key: PublicKey,
        /// Its signature over [`identity_message`] of the host's challenge.
        #[serde(with = "serde_bytes")]
        proof: Vec<u8>,
    },
}

impl Identity {
    /// Proves `key` to the host `host_key`, which sent `challenge`.
    pub fn prove(key: &SecretKey, challenge: &[u8], host_key: &PublicKey) -> Self {
        let proof = key.sign(&identity_message(challenge, &key.public(), host_key)).to_vec();
        Self::Key { key: key.public(), proof }
    }

    /// The key this identity proves to the host `host_key`, which sent `challenge`: `None` for
    /// an anonymous client.
    ///
    /// # Errors
    /// If the proof does not verify.
    pub fn check(&self, challenge: &[u8], host_key: &PublicKey) -> Result<Option<PublicKey>, RemoteError> {
        match self {
            Self::Anonymous => Ok(None),
            Self::Key { key, proof } => {
                let proven = <[u8; 64]>::try_from(proof.as_slice())
                    .is_ok_and(|sig| key.verify_strict(&identity_message(challenge, key, host_key), &sig));
                if proven {
                    Ok(Some(*key))
                } else {
                    Err(RemoteError::new(
                        ErrorKind::Unauthenticated,
                        format!("the handshake proof for key {key} is invalid: the client does not hold that key"),
                    ))
                }
            }
        }
    }
}

/// The host's answer to a [`Hello`]: refused if it is not roam's protocol at this version, or
/// its challenge is malformed; else accepted, with the host's proof and its own challenge.
pub fn answer(hello: &Hello, host_name: &str, key: &SecretKey) -> Result<Welcome, FrameError> {
    let refuse = |kind, message: String| Ok(Welcome::Refused(RemoteError::new(kind, message)));
    if hello.protocol != PROTOCOL {
        return refuse(ErrorKind::Protocol, format!("expected protocol {:?}, got {:?}", PROTOCOL, hello.protocol));
    }
    if hello.nonce.len() != NONCE_LEN {
        return refuse(ErrorKind::Protocol, format!("the handshake challenge must be {NONCE_LEN} bytes"));
    }
    if !hello.versions.contains(&VERSION) {
        return refuse(
            ErrorKind::Protocol,
            format!(
                "this host speaks protocol version {VERSION}; the client offered {:?}: upgrade roam on the older side",
                hello.versions
            ),
        );
    }
    Ok(Welcome::Accepted {
        version: VERSION,
        host: host_name.to_owned(),
        host_key: key.public(),
        proof: key.sign(&handshake_message(&hello.nonce, &key.public())).to_vec(),
        challenge: nonce()?,
    })
}

/// A host the client half of the handshake has proven.
#[derive(Debug)]
pub struct Opened {
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
    /// The host named a key it could not prove it holds.
    #[error("the host could not prove it holds the key {0} it named")]
    Unproven(PublicKey),
    /// The host refused the connection.
    #[error("the host refused the connection: {0}")]
    Refused(RemoteError),
}

/// The client's half: sends a [`Hello`] naming `client`, checks the host's proof, and answers
/// its challenge proving `key` (anonymous without one). Within `within` for the host's answer.
pub async fn client_side<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    client: &str,
    key: Option<&SecretKey>,
    within: std::time::Duration,
) -> Result<Opened, Failed> {
    let hello = Hello::new(client)?;
    protocol::write_message(stream, &hello).await?;
    let welcome: Welcome = tokio::time::timeout(within, protocol::read_message(stream, MAX_MESSAGE, within))
        .await
        .map_err(|_| FrameError::Timeout)??;
    match welcome {
        Welcome::Accepted { host, host_key, proof, challenge, .. } => {
            let proven = <[u8; 64]>::try_from(proof.as_slice())
                .is_ok_and(|sig| host_key.verify_strict(&handshake_message(&hello.nonce, &host_key), &sig));
            if !proven {
                return Err(Failed::Unproven(host_key));
            }
            // No answer follows: the first request goes out right behind the identity, and a
            // refused proof is the answer to that request.
            let identity = key.map_or(Identity::Anonymous, |k| Identity::prove(k, &challenge, &host_key));
            protocol::write_message(stream, &identity).await?;
            Ok(Opened { host, host_key })
        }
        Welcome::Refused(e) => Err(Failed::Refused(e)),
    }
}
