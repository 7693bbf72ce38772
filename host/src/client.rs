//! A client of roam hosts: connect with the handshake (TLS, then roam's hello), check the
//! host's key, then send requests.

use std::sync::Arc;
use std::time::Duration;

use roam_keys::{HostCertificate, ModuleHash, PublicKey, SecretKey};
use tokio::net::TcpStream;

use crate::handshake::{self, Hello};
use crate::protocol::wire::AgentInfo;
use crate::protocol::{self, FrameError, ModuleInfo, ModuleRef, RemoteError, Request, Response};
use crate::transport::{self, ClientStream};

/// How long connecting and the handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request to a host failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The host could not be reached.
    #[error("cannot connect to {addr}: {source}; is a roam host listening there?")]
    Connect {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The connection or a frame failed.
    #[error("talking to the host failed: {0}")]
    Frame(#[from] FrameError),
    /// TLS failed: the host proved no key, or the channel broke or was tampered with.
    #[error("cannot open a secure connection to {addr}: {reason}")]
    Tls {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The host proved a key other than the one the client expected.
    #[error(
        "the host at {addr} proved key {found}, not the key {expected} this client expects: it is another host, or \
         this host's key changed. If you know why it changed, {remedy}; otherwise do not trust it"
    )]
    WrongKey {
        /// The address.
        addr: String,
        /// The key the client expected.
        expected: PublicKey,
        /// The key the host proved.
        found: PublicKey,
        /// What to do about it, for people.
        remedy: String,
    },
    /// The host refused the connection.
    #[error("the host refused the connection: {0}")]
    Refused(RemoteError),
    /// The target is not `HOST:PORT` or `KEY@HOST:PORT`.
    #[error("{target:?} is not a host to connect to: {reason}")]
    Target {
        /// The target as given.
        target: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The host answered the request with an error.
    #[error("{0}")]
    Remote(RemoteError),
    /// The host answered with something that does not fit the request.
    #[error("unexpected answer from the host: {0}")]
    Unexpected(String),
}

/// An open connection to a host.
#[derive(Debug)]
pub struct Client {
    stream: ClientStream,
    host: String,
    host_key: PublicKey,
    max_frame: usize,
}

impl Client {
    /// Connects to `target` as an anonymous client. A target is `HOST:PORT`, or `KEY@HOST:PORT`
    /// where KEY is the host's public key in hex: then the host must prove exactly that key.
    /// Without one, any key is accepted; see [`Client::host_key`].
    pub async fn connect(target: &str) -> Result<Self, ClientError> {
        let (_, addr) = split_target(target)?;
        let config = transport::anonymous().map_err(|e| tls_error(addr, &e))?;
        Self::connect_target(target, config).await
    }

    /// Connects to `target` (as [`Client::connect`] reads it) with a client configuration made
    /// by [`transport::client_config`]: one that proves a person's identity, say.
    pub async fn connect_target(target: &str, config: Arc<rustls::ClientConfig>) -> Result<Self, ClientError> {
        let (expected, addr) = split_target(target)?;
        let client = Self::connect_with(addr, config).await?;
        if let Some(expected) = expected {
            client.expect_key(addr, expected, "put the new key in the address (KEY@HOST:PORT)")?;
        }
        Ok(client)
    }

    /// Connects to `addr` proving `key`, as a host does when it connects to a peer. A caller
    /// that connects often keeps a configuration and uses [`Client::connect_with`] instead, so
    /// that sessions are resumed.
    pub async fn connect_as(addr: &str, key: &SecretKey) -> Result<Self, ClientError> {
        let config = transport::client_config(Some(Arc::new(key.clone()))).map_err(|e| tls_error(addr, &e))?;
        Self::connect_with(addr, config).await
    }

    /// Connects to `addr` with a client configuration made by [`transport::client_config`]
    /// (which a caller keeps, so that sessions are resumed from one connection to the next).
    pub async fn connect_with(addr: &str, config: Arc<rustls::ClientConfig>) -> Result<Self, ClientError> {
        Self::connect_peer(addr, config, None).await
    }

    /// Connects to `addr` as [`Client::connect_with`] does, presenting `certificate` (a host's
    /// own, from its cluster) to a host that may know this one only through its cluster key.
    pub async fn connect_peer(
        addr: &str,
        config: Arc<rustls::ClientConfig>,
        certificate: Option<HostCertificate>,
    ) -> Result<Self, ClientError> {
        let connect_err = |source| ClientError::Connect { addr: addr.to_owned(), source };
        let timeout = || std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| connect_err(timeout()))?
            .map_err(connect_err)?;
        stream.set_nodelay(true).map_err(connect_err)?;
        let hello = Hello { certificate, ..Hello::new(concat!("roam/", env!("CARGO_PKG_VERSION"))) };
        let opened = handshake::connect(stream, addr, config, &hello, CONNECT_TIMEOUT).await.map_err(|e| match e {
            handshake::Failed::Frame(e) => ClientError::Frame(e),
            handshake::Failed::Tls(e) if speaks_no_tls(&e) => ClientError::Tls {
                addr: addr.to_owned(),
                reason: "the server there does not answer in TLS, so it is not a roam host (or roam before \
                         version 0.3); check the address and port"
                    .to_owned(),
            },
            handshake::Failed::Tls(e) => tls_error(addr, &e),
            handshake::Failed::Refused(e) => ClientError::Refused(e),
        })?;
        Ok(Self {
            stream: opened.stream,
            host: opened.host,
            host_key: opened.host_key,
            max_frame: protocol::DEFAULT_MAX_FRAME,
        })
    }

    /// Checks that the host proved `expected`; `remedy` says what to do if its key changed.
    ///
    /// # Errors
    /// [`ClientError::WrongKey`] if it proved another.
    pub fn expect_key(&self, addr: &str, expected: PublicKey, remedy: &str) -> Result<(), ClientError> {
        if self.host_key == expected {
            return Ok(());
        }
        Err(ClientError::WrongKey { addr: addr.to_owned(), expected, found: self.host_key, remedy: remedy.to_owned() })
    }

    /// The host's name, from the handshake.
    pub fn host_name(&self) -> &str {
        &self.host
    }

    /// The host's public key, from the handshake.
    pub fn host_key(&self) -> PublicKey {
        self.host_key
    }

    /// Sends one request and reads its response.
    pub async fn request(&mut self, request: &Request) -> Result<Response, ClientError> {
        protocol::write_message(&mut self.stream, request).await?;
        Ok(protocol::read_message(&mut self.stream, self.max_frame, protocol::FRAME_TIMEOUT).await?)
    }

    /// Evaluates a signed query module with a CBOR input and returns its CBOR result. The module
    /// is named by hash first; its bytes cross the network only if the host lacks it.
    pub async fn eval(&mut self, module: &[u8], input: Vec<u8>) -> Result<Vec<u8>, ClientError> {
        let hash = roam_keys::hash_module(module);
        let by_hash = Request::Eval { module: ModuleRef::Hash(hash), input };
        let input = match self.request(&by_hash).await? {
            Response::NeedModule(h) if h == hash => match by_hash {
                Request::Eval { input, .. } => input,
                _ => return Err(ClientError::Unexpected("request changed".into())),
            },
            other => return result(other),
        };
        let with_bytes = Request::Eval { module: ModuleRef::Bytes(module.to_vec()), input };
        let response = self.request(&with_bytes).await?;
        result(response)
    }
}

impl Client {
    /// Publishes a signed code or agent module to the host's code repository.
    pub async fn publish(&mut self, module: Vec<u8>) -> Result<ModuleInfo, ClientError> {
        match self.request(&Request::Publish { module }).await? {
            Response::Published(info) => Ok(info),
            other => Err(unexpected(other)),
        }
    }

    /// Lists the modules the host holds.
    pub async fn list(&mut self) -> Result<Vec<ModuleInfo>, ClientError> {
        match self.request(&Request::List).await? {
            Response::Modules(list) => Ok(list),
            other => Err(unexpected(other)),
        }
    }

    /// Resolves a name (and optionally an exact version) to the module the host holds.
    pub async fn resolve(&mut self, name: &str, version: Option<semver::Version>) -> Result<ModuleInfo, ClientError> {
        match self.request(&Request::Resolve { name: name.to_owned(), version }).await? {
            Response::Resolved(info) => Ok(info),
            other => Err(unexpected(other)),
        }
    }

    /// Reads part of a module's signed file: `(total size, bytes from offset)`.
    pub async fn fetch_chunk(
        &mut self,
        hash: ModuleHash,
        offset: u64,
        max: u32,
    ) -> Result<(u64, Vec<u8>), ClientError> {
        match self.request(&Request::Fetch { hash, offset, max }).await? {
            Response::Chunk { total, bytes } => Ok((total, bytes)),
            other => Err(unexpected(other)),
        }
    }
}

impl Client {
    /// Launches an agent with this host as its home; returns its id once the host persisted it.
    pub async fn launch(&mut self, module: Vec<u8>, input: Vec<u8>) -> Result<String, ClientError> {
        match self.request(&Request::Launch { module, input }).await? {
            Response::Launched { id } => Ok(id),
            other => Err(unexpected(other)),
        }
    }

    /// The agents this host knows: those it is home to, then those that are (or were) here.
    pub async fn agents(&mut self) -> Result<Vec<AgentInfo>, ClientError> {
        match self.request(&Request::Agents { id: None }).await? {
            Response::Agents(list) => Ok(list),
            other => Err(unexpected(other)),
        }
    }

    /// One agent this host knows.
    pub async fn agent(&mut self, id: &str) -> Result<AgentInfo, ClientError> {
        match self.request(&Request::Agents { id: Some(id.to_owned()) }).await? {
            Response::Agents(list) => list
                .into_iter()
                .next()
                .ok_or_else(|| ClientError::Unexpected(format!("the host answered with no agent {id}"))),
            other => Err(unexpected(other)),
        }
    }

    /// Asks the agent's home to bring it back. The home answers once the order is persisted,
    /// with what it knows of the agent: `recall_ordered` is set, or the agent had already ended.
    pub async fn recall(&mut self, id: &str) -> Result<AgentInfo, ClientError> {
        match self.request(&Request::Recall { id: id.to_owned() }).await? {
            Response::Agents(list) => list
                .into_iter()
                .next()
                .ok_or_else(|| ClientError::Unexpected(format!("the host answered with no agent {id}"))),
            other => Err(unexpected(other)),
        }
    }
}

/// A target's pinned key, if it names one (`KEY@HOST:PORT`), and its address.
///
/// # Errors
/// If the part before `@` is not a key.
pub fn split_target(target: &str) -> Result<(Option<PublicKey>, &str), ClientError> {
    let (key, addr) = match target.split_once('@') {
        None => (None, target),
        Some((key, addr)) => {
            let key = PublicKey::from_hex(key).map_err(|e| ClientError::Target {
                target: target.to_owned(),
                reason: format!("before the @ goes the host's public key, 64 hex digits: {e}"),
            })?;
            (Some(key), addr)
        }
    };
    // HOST:PORT, or [V6]:PORT: a bare address or name lacks the port.
    let has_port = addr.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && port.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']'))
    });
    if !has_port {
        return Err(ClientError::Target {
            target: target.to_owned(),
            reason: "give the host as HOST:PORT (roam hosts listen on 7700 unless told otherwise, e.g. \
                     127.0.0.1:7700)"
                .to_owned(),
        });
    }
    Ok((key, addr))
}

/// Whether a failed TLS handshake got bytes that are not TLS at all: another kind of server.
fn speaks_no_tls(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| matches!(e, rustls::Error::InvalidMessage(_)))
}

fn tls_error(addr: &str, e: &dyn std::fmt::Display) -> ClientError {
    ClientError::Tls { addr: addr.to_owned(), reason: e.to_string() }
}

fn unexpected(response: Response) -> ClientError {
    match response {
        Response::Error(e) => ClientError::Remote(e),
        other => ClientError::Unexpected(format!("{other:?}")),
    }
}

fn result(response: Response) -> Result<Vec<u8>, ClientError> {
    match response {
        Response::Result(bytes) => Ok(bytes),
        Response::Error(e) => Err(ClientError::Remote(e)),
        other => Err(ClientError::Unexpected(format!("{other:?}"))),
    }
}

/// Encodes a JSON value as CBOR (a module's input).
pub fn json_to_cbor(value: &serde_json::Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Serializing a JSON value into a Vec cannot fail: every JSON value has a CBOR form.
    if ciborium::into_writer(value, &mut out).is_err() {
        out.clear();
    }
    out
}

/// Decodes a CBOR value (a module's result) as JSON. Byte strings become arrays of numbers,
/// and map keys that are not text are written as text (see [`key_text`]).
pub fn cbor_to_json(bytes: &[u8]) -> Result<serde_json::Value, String> {
    let value: ciborium::Value = ciborium::from_reader(bytes)
        .map_err(|e| format!("the result is not valid CBOR: {}", roam_keys::cbor_error(&e)))?;
    Ok(to_json(value))
}

fn to_json(v: ciborium::Value) -> serde_json::Value {
    use ciborium::Value as C;
    use serde_json::Value as J;
    match v {
        C::Null => J::Null,
        C::Bool(b) => J::Bool(b),
        C::Integer(i) => {
            let i = i128::from(i);
            i64::try_from(i)
                .map(J::from)
                .or_else(|_| u64::try_from(i).map(J::from))
                .unwrap_or_else(|_| J::String(i.to_string()))
        }
        C::Float(f) => serde_json::Number::from_f64(f).map_or(J::Null, J::Number),
        C::Text(s) => J::String(s),
        C::Bytes(b) => J::Array(b.into_iter().map(J::from).collect()),
        C::Array(a) => J::Array(a.into_iter().map(to_json).collect()),
        C::Map(m) => J::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let mut key = String::new();
                    key_text(&k, &mut key);
                    (key, to_json(v))
                })
                .collect(),
        ),
        C::Tag(_, inner) => to_json(*inner),
        _ => J::Null,
    }
}

/// Writes a map key as text, in JSON-like notation but with nothing escaped: escaping a key that
/// holds a key that holds a key... doubles it at every level, so a result of a few hundred bytes
/// would take exabytes. Unescaped, the text grows linearly with the key.
fn key_text(v: &ciborium::Value, out: &mut String) {
    use ciborium::Value as C;
    match v {
        C::Text(s) => out.push_str(s),
        C::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                key_text(item, out);
            }
            out.push(']');
        }
        C::Map(entries) => {
            out.push('{');
            for (i, (k, item)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                key_text(k, out);
                out.push(':');
                key_text(item, out);
            }
            out.push('}');
        }
        C::Tag(_, inner) => key_text(inner, out),
        // Scalars and byte strings: their JSON text, which holds no string to escape.
        other => out.push_str(&to_json(other.clone()).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_nested_in_keys_grow_linearly() -> Result<(), String> {
        // {{{...{"a": 1}: 1}...: 1}: 1}, 60 levels deep: escaped at each level, the outer key
        // would be about 2^60 bytes long.
        let mut value = ciborium::Value::Map(vec![(ciborium::Value::Text("a\"b".into()), 1.into())]);
        for _ in 0..60 {
            value = ciborium::Value::Map(vec![(value, 1.into())]);
        }
        let mut bytes = Vec::new();
        ciborium::into_writer(&value, &mut bytes).map_err(|e| e.to_string())?;
        let json = cbor_to_json(&bytes)?.to_string();
        assert!(json.len() < 10 * bytes.len(), "{} bytes of JSON from {} of CBOR", json.len(), bytes.len());
        assert!(json.contains(r#"a\"b:1}"#), "{json}");
        Ok(())
    }

    #[test]
    fn keys_that_are_not_text_are_written_as_text() -> Result<(), String> {
        let value = ciborium::Value::Map(vec![
            (1.into(), "one".into()),
            (ciborium::Value::Array(vec![true.into(), ciborium::Value::Bytes(vec![7])]), 2.into()),
        ]);
        let mut bytes = Vec::new();
        ciborium::into_writer(&value, &mut bytes).map_err(|e| e.to_string())?;
        assert_eq!(cbor_to_json(&bytes)?, serde_json::json!({"1": "one", "[true,[7]]": 2}));
        Ok(())
    }
}
