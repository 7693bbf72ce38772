//! The hosts an agent moves between: who counts as a peer, the check on who sent a
//! host-to-host message, and the connections kept to peers between exchanges.

use std::time::{Duration, Instant};

use roam_keys::PublicKey;

use super::Agents;
use crate::client::{Client, ClientError};
use crate::protocol::{ErrorKind, RemoteError};
use crate::sync::lock;

/// How long a connection to a peer is kept for reuse: well inside the peer's idle timeout.
const KEEP_CONNECTION: Duration = Duration::from_secs(30);
/// How many idle connections are kept per peer address.
const KEPT_PER_PEER: usize = 4;

impl Agents {
    pub(super) fn is_peer(&self, key: &PublicKey) -> bool {
        *key == self.key.public() || self.peers.get(key).is_some() && !self.peers.is_revoked(key)
    }

    /// Checks who sends a host-to-host message signed by `signer` on a connection whose client
    /// proved `peer`: a host sends only its own messages, on a connection where it proved its
    /// key, and that key must be one of this host's peers. A recall order is the exception: the
    /// home signs it, and it comes either from the home (which need not be a peer) or from a
    /// peer passing it on along the agent's trail; `receive_recall` checks that its signer is
    /// the agent's home.
    pub(crate) fn check_sender(
        &self,
        signer: &PublicKey,
        peer: Option<PublicKey>,
        recall: bool,
    ) -> Result<(), RemoteError> {
        let refuse = |m: String| Err(RemoteError::new(ErrorKind::Unauthenticated, m));
        let Some(peer) = peer else {
            return refuse(
                "host-to-host messages are accepted only on a connection where the sending host proved its key in the \
                 handshake; this connection is anonymous"
                    .into(),
            );
        };
        let passed_on = recall && self.is_peer(&peer);
        if *signer != peer && !passed_on {
            return refuse(format!(
                "the message is signed by key {signer}, but the connection proved key {peer}; a host sends only its own \
                 messages"
            ));
        }
        if !recall && !self.is_peer(&peer) {
            return refuse(format!("the connection proved key {peer}, which is not among this host's trusted peers"));
        }
        Ok(())
    }

    /// A connection to another host, proving this host's key: one kept from an earlier
    /// exchange if there is one (then `true`), else a new one. A handshake costs each side a
    /// signature and a verification, more than a small agent's whole transfer.
    pub(crate) async fn connect(&self, addr: &str) -> Result<(Client, bool), ClientError> {
        let kept = {
            let mut pool = lock(&self.peer_pool);
            // Connections past their time are dropped for every address, so none lingers.
            pool.retain(|_, conns| {
                conns.retain(|(_, since)| since.elapsed() < KEEP_CONNECTION);
                !conns.is_empty()
            });
            pool.get_mut(addr).and_then(Vec::pop)
        };
        match kept {
            Some((client, _)) => Ok((client, true)),
            None => self.dial(addr).await.map(|c| (c, false)),
        }
    }

    /// A new connection to another host, proving this host's key.
    pub(crate) async fn dial(&self, addr: &str) -> Result<Client, ClientError> {
        Client::connect_with(addr, self.tls.clone()).await
    }

    /// Keeps a connection whose last exchange succeeded, for the next one to `addr`.
    pub(super) fn keep(&self, addr: &str, client: Client) {
        let mut pool = lock(&self.peer_pool);
        let conns = pool.entry(addr.to_owned()).or_default();
        if conns.len() < KEPT_PER_PEER {
            conns.push((client, Instant::now()));
        }
    }
}
