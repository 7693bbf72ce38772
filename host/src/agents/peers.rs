//! The hosts an agent moves between: who counts as a peer, the check on who sent a
//! host-to-host message, and the connections kept to peers between exchanges.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use roam_keys::{PublicKey, TrustStore};

use super::Agents;
use crate::client::{Client, ClientError};
use crate::protocol::{ErrorKind, RemoteError};
use crate::sync::lock;

/// How long a connection to a peer is kept for reuse: well inside the peer's idle timeout.
const KEEP_CONNECTION: Duration = Duration::from_secs(30);
/// How many idle connections are kept per peer address.
const KEPT_PER_PEER: usize = 4;

/// Where this host's peers are: `addresses.toml` in the peers directory, one `NAME =
/// "HOST:PORT"` line for each `NAME.pub` there. With it, this host dials only those addresses
/// (an agent may name a peer by name or by address), and checks there the key of that name;
/// without it, it dials whatever an agent names and checks the key it proves against all its
/// peers once connected.
#[derive(Clone, Debug, Default)]
pub(crate) struct PeerBook {
    /// Name → (address, key).
    by_name: BTreeMap<String, (String, PublicKey)>,
}

/// The address book's file name, in the peers directory.
pub(crate) const ADDRESSES_FILE: &str = "addresses.toml";

impl PeerBook {
    /// Reads `dir/addresses.toml`, if there is one: each name must be a peer of `peers`.
    pub(crate) fn load(dir: &Path, peers: &TrustStore) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let path = dir.join(ADDRESSES_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let entries: BTreeMap<String, String> = toml::from_str(&text)
            .with_context(|| format!("{}: expected lines NAME = \"HOST:PORT\"", path.display()))?;
        let mut by_name = BTreeMap::new();
        for (name, addr) in entries {
            let key =
                peers.keys().find(|k| k.name == name).map(|k| k.key).with_context(|| {
                    format!("{}: {name} has an address but no {name}.pub beside it", path.display())
                })?;
            by_name.insert(name, (addr, key));
        }
        Ok(Self { by_name })
    }

    /// Whether the book lists any peer (then only they are dialed).
    pub(crate) fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The address and key of the peer `dest` names, by name or by address.
    fn find(&self, dest: &str) -> Option<&(String, PublicKey)> {
        self.by_name.get(dest).or_else(|| self.by_name.values().find(|(addr, _)| addr == dest))
    }
}

impl Agents {
    /// Where to dial for `dest` (a peer's name or address) and the key that must answer there:
    /// refused, without any connection, if the address book does not list it.
    fn locate<'a>(&'a self, dest: &'a str) -> Result<(&'a str, Option<PublicKey>), ClientError> {
        if self.book.is_empty() {
            return Ok((dest, None));
        }
        match self.book.find(dest) {
            Some((addr, key)) => Ok((addr, Some(*key))),
            None => Err(ClientError::Target {
                target: dest.to_owned(),
                reason: format!("not one of this host's peers (their addresses are in {ADDRESSES_FILE}); not dialed"),
            }),
        }
    }

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

    /// A new connection to another host (a peer's name or address), proving this host's key;
    /// a peer in the address book must prove its own key there.
    pub(crate) async fn dial(&self, dest: &str) -> Result<Client, ClientError> {
        let (addr, expected) = self.locate(dest)?;
        let client = Client::connect_with(addr, self.tls.clone()).await?;
        if let Some(expected) = expected {
            client.expect_key(addr, expected, &format!("update {ADDRESSES_FILE} or the peer's .pub file"))?;
        }
        Ok(client)
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
