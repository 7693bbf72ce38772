//! The hosts an agent moves between: who counts as a peer, the check on who sent a
//! host-to-host message, and the connections kept to peers between exchanges.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use roam_keys::{CERT_EXT, HostCertificate, PublicKey, TrustStore};

use super::Agents;
use crate::cache::Bounded;
use crate::client::{Client, ClientError};
use crate::protocol::wire::AgentRecord;
use crate::protocol::{ErrorKind, RemoteError};
use crate::state::now_secs;
use crate::sync::lock;

/// How long a connection to a peer is kept for reuse: well inside the peer's idle timeout.
const KEEP_CONNECTION: Duration = Duration::from_secs(30);
/// How many idle connections are kept per peer address.
const KEPT_PER_PEER: usize = 4;

/// This host's peers: the hosts it accepts agents, reports and forwarded calls from, and the
/// only hosts it dials. Read from the peers directory:
/// - `NAME.pub`: a peer's key, trusted one by one;
/// - `addresses.toml`: `NAME = "HOST:PORT"` for each `NAME.pub`, where that peer listens;
/// - `clusters/NAME.pub`: cluster keys; a host they certify is a peer;
/// - `NAME.cert`: certificates (`roam keys certify`), each carrying a host's name, key and
///   address: this host's own, presented to the peers it connects to, and those of the
///   certified hosts it dials;
/// - `policy.toml`: `revoked = [...]`, host or cluster keys refused whatever vouches for them.
///
/// A certified host that connects presents its certificate; once checked, it is a peer (and
/// dialable at its certified address) as if its file were here.
#[derive(Debug)]
pub(crate) struct Peers {
    /// This host's key, always its own peer.
    own_key: PublicKey,
    /// `NAME.pub` keys and the policy's revocations.
    keys: TrustStore,
    /// Cluster keys, from `clusters/`.
    clusters: TrustStore,
    /// Name → (address, key), from `addresses.toml`.
    addresses: BTreeMap<String, (String, PublicKey)>,
    /// Certificates whose signature verified, by host key: from the directory and presented by
    /// connecting hosts.
    certified: Mutex<Bounded<PublicKey, HostCertificate>>,
    /// This host's own certificate, if the directory holds one.
    own: Option<HostCertificate>,
}

/// The address book's file name, in the peers directory.
pub(crate) const ADDRESSES_FILE: &str = "addresses.toml";
/// The cluster keys' directory, in the peers directory.
pub(crate) const CLUSTERS_DIR: &str = "clusters";
/// The most certificates kept: more than any cluster this host would join.
const CERTIFICATES_KEPT: usize = 4096;

impl Peers {
    /// A host with no peers: it accepts and dials no other host.
    pub(crate) fn none(own_key: PublicKey) -> Self {
        Self {
            own_key,
            keys: TrustStore::empty(),
            clusters: TrustStore::empty(),
            addresses: BTreeMap::new(),
            certified: Mutex::new(Bounded::new(CERTIFICATES_KEPT)),
            own: None,
        }
    }

    /// Reads the peers directory `dir` (see [`Peers`]). A certificate that does not verify, or
    /// whose cluster key is not trusted, is an error; one that expired is kept (and refused
    /// when used), so that the log says why.
    pub(crate) fn load(dir: &Path, own_key: PublicKey) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let keys = TrustStore::load(dir)?;
        let clusters_dir = dir.join(CLUSTERS_DIR);
        let clusters = if clusters_dir.is_dir() { TrustStore::load(&clusters_dir)? } else { TrustStore::empty() };
        let mut peers = Self { keys, clusters, ..Self::none(own_key) };

        let path = dir.join(ADDRESSES_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let entries: BTreeMap<String, String> = toml::from_str(&text)
                    .with_context(|| format!("{}: expected lines NAME = \"HOST:PORT\"", path.display()))?;
                for (name, addr) in entries {
                    let key = peers.keys.keys().find(|k| k.name == name).map(|k| k.key).with_context(|| {
                        format!("{}: {name} has an address but no {name}.pub beside it", path.display())
                    })?;
                    peers.addresses.insert(name, (addr, key));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }

        let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
        let mut certs: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == CERT_EXT))
            .collect();
        certs.sort();
        for path in certs {
            let cert = HostCertificate::load(&path)?;
            peers.check_issuer(&cert).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            cert.check_signature().with_context(|| path.display().to_string())?;
            if now_secs() >= cert.expires {
                tracing::warn!(
                    "{}: the certificate of host {} has expired; certify it again",
                    path.display(),
                    cert.name
                );
            }
            if let Some(other) = peers.name_taken(&cert.name, &cert.key) {
                anyhow::bail!(
                    "{}: the name {} is also key {other}'s; a peer's name must be its own",
                    path.display(),
                    cert.name
                );
            }
            // Of two certificates of this host, the one valid longest.
            if cert.key == own_key && peers.own.as_ref().is_none_or(|o| o.expires < cert.expires) {
                peers.own = Some(cert.clone());
            }
            lock(&peers.certified).insert(cert.key, cert);
        }
        Ok(peers)
    }

    /// The peers of the address book, by name, with their addresses.
    pub(crate) fn addresses(&self) -> Vec<(String, String)> {
        self.addresses.iter().map(|(name, (address, _))| (name.clone(), address.clone())).collect()
    }

    /// What the log says of these peers at start.
    pub(crate) fn describe(&self) -> String {
        let by_key = self.keys.keys().filter(|k| !self.keys.is_revoked(&k.key)).count();
        let certified = lock(&self.certified).len();
        let own = match &self.own {
            Some(c) => {
                let until = humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(c.expires));
                format!("; this host is certified as {} at {} until {until}", c.name, c.address)
            }
            None => String::new(),
        };
        format!(
            "{by_key} peer keys ({} with addresses), {} cluster keys, {certified} certificates{own}; only these peers \
             are dialed",
            self.addresses.len(),
            self.clusters.keys().count()
        )
    }

    /// This host's own certificate, to present to the peers it connects to, while it is valid.
    pub(crate) fn own_certificate(&self) -> Option<&HostCertificate> {
        self.own.as_ref().filter(|c| now_secs() < c.expires)
    }

    /// Whether `key` is one of this host's peers now: its own, a trusted `.pub`, or certified
    /// by a trusted cluster key until a time not yet past; and revoked by neither.
    pub(crate) fn is_peer(&self, key: &PublicKey) -> bool {
        if *key == self.own_key {
            return true;
        }
        if self.keys.is_revoked(key) {
            return false;
        }
        self.keys.get(key).is_some() || lock(&self.certified).get(key).is_some_and(|c| self.vouches(c))
    }

    /// Checks the certificate a connecting host presented for `proven`, the key it proved in
    /// TLS, and keeps it: that host is then a peer until the certificate expires.
    ///
    /// # Errors
    /// What is wrong with it, for the connecting host to read.
    pub(crate) fn present(&self, cert: HostCertificate, proven: &PublicKey) -> Result<(), String> {
        // A host known here by its .pub needs no certificate: one that does not check out here
        // (from a cluster this host does not trust, say) changes nothing.
        let known = self.keys.get(proven).is_some() && !self.keys.is_revoked(proven);
        match self.check_presented(cert, proven) {
            Err(e) if known => {
                tracing::debug!(key = %proven, "a peer known by its key presented a certificate that does not hold here: {e}");
                Ok(())
            }
            checked => checked,
        }
    }

    fn check_presented(&self, cert: HostCertificate, proven: &PublicKey) -> Result<(), String> {
        if cert.key != *proven {
            return Err(format!(
                "the certificate presented is for key {}, but the connection proved key {proven}",
                cert.key
            ));
        }
        self.check_issuer(&cert)?;
        cert.verify(now_secs()).map_err(|e| e.to_string())?;
        if self.keys.is_revoked(&cert.key) {
            return Err(format!("host key {} is revoked by this host's peers policy", cert.key));
        }
        if let Some(other) = self.name_taken(&cert.name, &cert.key) {
            return Err(format!("the name {} in the certificate is another peer's (key {other}) here", cert.name));
        }
        let mut certified = lock(&self.certified);
        if certified.get(&cert.key) != Some(&cert) {
            tracing::info!(host = %cert.name, address = %cert.address, key = %cert.key, "a certified peer presented its certificate");
            certified.insert(cert.key, cert);
        }
        Ok(())
    }

    /// The name under which the peer with `key` can be dialed, if it can be.
    pub(crate) fn name_of(&self, key: &PublicKey) -> Option<String> {
        if !self.is_peer(key) {
            return None;
        }
        let listed = self.addresses.iter().find(|(_, (_, k))| k == key).map(|(name, _)| name.clone());
        listed.or_else(|| lock(&self.certified).get(key).filter(|c| self.vouches(c)).map(|c| c.name.clone()))
    }

    /// Where to dial for `dest` (a peer's name or address) and the key that must answer there:
    /// refused, without any connection, if it is not a peer's.
    pub(crate) fn locate(&self, dest: &str) -> Result<(String, PublicKey), ClientError> {
        let listed = self.addresses.get(dest).or_else(|| self.addresses.values().find(|(a, _)| a == dest));
        if let Some((addr, key)) = listed
            && self.is_peer(key)
        {
            return Ok((addr.clone(), *key));
        }
        let certified = lock(&self.certified);
        let found = certified.values().find(|c| (c.name == dest || c.address == dest) && self.vouches(c));
        if let Some(cert) = found {
            return Ok((cert.address.clone(), cert.key));
        }
        Err(ClientError::Target {
            target: dest.to_owned(),
            reason: format!(
                "not one of this host's peers (a peer has a .pub file and an address in {ADDRESSES_FILE}, or a \
                 certificate from a trusted cluster key); not dialed"
            ),
        })
    }

    /// The key of another peer that goes by `name` here, if one does: names say where to dial.
    fn name_taken(&self, name: &str, key: &PublicKey) -> Option<PublicKey> {
        let listed = self.addresses.get(name).map(|(_, k)| *k);
        let certified = || lock(&self.certified).values().find(|c| c.name == name && c.key != *key).map(|c| c.key);
        listed.filter(|k| k != key).or_else(certified)
    }

    /// Whether a certificate kept here makes its host a peer now.
    fn vouches(&self, cert: &HostCertificate) -> bool {
        self.check_issuer(cert).is_ok() && !self.keys.is_revoked(&cert.key) && now_secs() < cert.expires
    }

    /// Whether the cluster key that signed `cert` is trusted here and not revoked.
    fn check_issuer(&self, cert: &HostCertificate) -> Result<(), String> {
        if self.clusters.get(&cert.cluster).is_none() {
            return Err(format!(
                "the certificate of host {} is signed by cluster key {}, which this host does not trust (its cluster \
                 keys are in the peers directory's {CLUSTERS_DIR}/)",
                cert.name, cert.cluster
            ));
        }
        if self.keys.is_revoked(&cert.cluster) || self.clusters.is_revoked(&cert.cluster) {
            return Err(format!("cluster key {} is revoked by this host's peers policy", cert.cluster));
        }
        Ok(())
    }
}

impl Agents {
    /// This host's peers, as of now.
    pub(crate) fn peers(&self) -> Arc<Peers> {
        self.peers.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Replaces this host's peers (a reload). Connections kept to peers are dropped, so that
    /// each next exchange dials, and checks, anew.
    pub(crate) fn set_peers(&self, peers: Peers) {
        *self.peers.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(peers);
        lock(&self.peer_pool).clear();
    }

    pub(super) fn is_peer(&self, key: &PublicKey) -> bool {
        self.peers().is_peer(key)
    }

    /// Where to send an agent or a report home: the home's name among this host's peers (found
    /// by its key), else the address the home gave itself. A host's own idea of its address
    /// (`0.0.0.0:7700`, an address behind a proxy) need not be the one its peers dial.
    pub(super) fn home_of(&self, record: &AgentRecord) -> String {
        self.peers().name_of(&record.home_key).unwrap_or_else(|| record.home.clone())
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
    /// refused without a connection if it is not a peer, and the peer must prove its key.
    pub(crate) async fn dial(&self, dest: &str) -> Result<Client, ClientError> {
        dial(&self.peers(), &self.tls, dest).await
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

/// A new connection to the peer `dest` (a name or an address), with `tls` (proving this host's
/// key) and this host's certificate, if it has one; refused without a connection if `dest` is
/// not a peer, and the peer must prove the key this host knows for it.
pub(crate) async fn dial(peers: &Peers, tls: &Arc<rustls::ClientConfig>, dest: &str) -> Result<Client, ClientError> {
    let (addr, expected) = peers.locate(dest)?;
    let client = Client::connect_peer(&addr, tls.clone(), peers.own_certificate().cloned()).await?;
    client.expect_key(&addr, expected, &format!("update {ADDRESSES_FILE}, the peer's .pub file or its certificate"))?;
    Ok(client)
}
