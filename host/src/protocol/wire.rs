//! What hosts say to each other about agents: signed envelopes, reports, recalls and forwarded
//! resource calls. Every message is signed by the sending host's key over a domain-separated
//! CBOR body, and checked against the receiver's trusted peers before it is acted on.

use roam_abi::{Bound, Value};
use roam_keys::{ModuleHash, PublicKey, SecretKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::resources::{Attachment, ResourceType, TableCopy};

/// Domain prefixes, one per message type, so a signature over one can never pass as another.
pub mod domain {
    /// An agent transfer.
    pub const ENVELOPE: &[u8] = b"roam-envelope-v1\0";
    /// A report to an agent's home.
    pub const REPORT: &[u8] = b"roam-report-v1\0";
    /// A home recalling its agent.
    pub const RECALL: &[u8] = b"roam-recall-v1\0";
    /// A call forwarded to a resource's owner.
    pub const CALL: &[u8] = b"roam-call-v1\0";
    /// A receiver's receipt for an agent it holds.
    pub const RECEIPT: &[u8] = b"roam-receipt-v1\0";
}

/// A message signed by a host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    /// Who signed.
    pub signer: PublicKey,
    /// Domain prefix, then the CBOR message.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// ed25519 over `body`.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// Why a signed message was refused.
#[derive(Debug, thiserror::Error)]
pub enum SignedError {
    /// The signer is not a host this one trusts.
    #[error("the sending host's key {0} is not among this host's trusted peers")]
    UntrustedPeer(PublicKey),
    /// The signature does not verify.
    #[error("the message's signature is invalid: it was altered or forged")]
    BadSignature,
    /// The body is not the expected message.
    #[error("the message is malformed: {0}")]
    Malformed(String),
}

impl Signed {
    /// Signs `message` under `domain`.
    pub fn sign<T: Serialize>(domain: &[u8], message: &T, key: &SecretKey) -> Result<Self, SignedError> {
        let mut body = domain.to_vec();
        ciborium::into_writer(message, &mut body).map_err(|e| SignedError::Malformed(e.to_string()))?;
        let signature = key.sign(&body).to_vec();
        Ok(Self { signer: key.public(), body, signature })
    }

    /// Checks the signer with `trusted`, the signature, and the domain, then decodes.
    pub fn open<T: DeserializeOwned>(
        &self,
        domain: &[u8],
        trusted: impl Fn(&PublicKey) -> bool,
    ) -> Result<T, SignedError> {
        if !trusted(&self.signer) {
            return Err(SignedError::UntrustedPeer(self.signer));
        }
        let signature: [u8; 64] = self.signature.as_slice().try_into().map_err(|_| SignedError::BadSignature)?;
        if !self.signer.verify_strict(&self.body, &signature) {
            return Err(SignedError::BadSignature);
        }
        let payload =
            self.body.strip_prefix(domain).ok_or_else(|| SignedError::Malformed("wrong message type".into()))?;
        ciborium::from_reader(payload).map_err(|e| SignedError::Malformed(roam_keys::cbor_error(&e)))
    }
}

/// Limits that travel with an agent and hold on every host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentLimits {
    /// Most hops.
    pub max_hops: u32,
    /// Largest snapshot on the wire, bytes.
    pub max_snapshot_bytes: u64,
    /// Total lifetime from launch, seconds.
    pub lifetime_secs: u64,
}

impl Default for AgentLimits {
    fn default() -> Self {
        Self { max_hops: 256, max_snapshot_bytes: 16 << 20, lifetime_secs: 24 * 3600 }
    }
}

/// Where a resource the agent refers to by identifier or value lives, and how it is tied there.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Anchor {
    /// The declared name.
    pub name: String,
    /// Its type.
    pub kind: ResourceType,
    /// How it is tied to its owner.
    pub attachment: Attachment,
    /// The owner's address.
    pub owner: String,
    /// A copy of its content, when its binding travels with the agent (copy or move).
    pub copy: Option<TableCopy>,
}

/// Everything about an agent that travels with it, except its memory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// The agent's id (32 hex digits).
    pub id: String,
    /// Its code: the hash of the signed module file.
    pub code: ModuleHash,
    /// `name@version`, for people.
    pub label: String,
    /// Its home host's address.
    pub home: String,
    /// Its home host's key.
    pub home_key: PublicKey,
    /// When it was launched (unix seconds).
    pub launched_at: u64,
    /// Its limits.
    pub limits: AgentLimits,
    /// Where its by-identifier and by-value resources live.
    pub anchors: Vec<Anchor>,
    /// The client that launched it, if it proved a key: it alone (with the home's
    /// administrators) may see and recall the agent.
    #[serde(default)]
    pub owner: Option<PublicKey>,
    /// The W3C `traceparent` of its launch, when its home exports traces: every visit and
    /// transfer of the journey is its child, so the journey is one trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

/// How an agent's journey ends when it reaches home.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ending {
    /// It came home with a result (CBOR).
    Finished(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Its home recalled it.
    Recalled,
}

/// An agent in transit: what the sending host signs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The agent.
    pub record: AgentRecord,
    /// The hop this transfer makes (1 for the first move from home).
    pub hop: u32,
    /// SHA-256 of the snapshot sent with the envelope.
    pub snapshot_digest: ModuleHash,
    /// The sender's address (where to fetch the code from).
    pub sender_addr: String,
    /// The key of the host this envelope is for.
    pub destination: PublicKey,
    /// When it was signed (unix seconds).
    pub sent_at: u64,
    /// Makes every attempt's envelope unique, so a replay is told from a retry.
    pub nonce: u64,
    /// Set when the agent is going home to end its journey.
    pub ending: Option<Ending>,
    /// Destinations the sender could not reach on the way here.
    pub unreachable: Vec<String>,
    /// The home's recall order, when the sender knows of one: the receiver learns of it before
    /// the agent can run there.
    #[serde(default)]
    pub recall: Option<Signed>,
    /// The W3C `traceparent` of the transfer that sent it, when the sender exports traces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

/// A receiver's signed statement that it holds an agent: its answer to a transfer, given only
/// once the agent is durably stored. The sender releases its copy only on a receipt that
/// verifies; the receipts of a route are its audit trail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The agent.
    pub agent: String,
    /// The hop the receiver holds.
    pub hop: u32,
    /// SHA-256 of the snapshot it holds.
    pub snapshot_digest: ModuleHash,
    /// The receiver's key (the signer).
    pub receiver: PublicKey,
    /// When it was signed (unix seconds).
    pub at: u64,
}

impl Receipt {
    /// Whether `signed` is `receiver`'s receipt for this hop of this agent with this snapshot.
    pub fn proves(signed: &Signed, agent: &str, hop: u32, digest: &ModuleHash, receiver: &PublicKey) -> bool {
        signed
            .open::<Receipt>(domain::RECEIPT, |k| k == receiver)
            .is_ok_and(|r| r.agent == agent && r.hop == hop && r.snapshot_digest == *digest && r.receiver == *receiver)
    }
}

/// What happened to an agent, told to its home.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// It arrived and its resources were bound.
    Arrived {
        /// The host's name.
        host: String,
        /// The host's address.
        address: String,
        /// How each resource was bound.
        bindings: Vec<Bound>,
        /// When its visit there started (unix milliseconds, the host's clock).
        #[serde(default)]
        at: u64,
        /// The receipt this host gave for the agent when it arrived.
        #[serde(default)]
        receipt: Option<Signed>,
    },
    /// It is leaving for `to`.
    Departed {
        /// The destination.
        to: String,
    },
    /// No destination could be reached; it waits.
    Parked {
        /// Why.
        reason: String,
    },
    /// It finished with a result.
    Finished {
        /// Where it finished.
        host: String,
        /// Its result, CBOR.
        #[serde(with = "serde_bytes")]
        result: Vec<u8>,
    },
    /// It failed.
    Failed {
        /// Why.
        reason: String,
    },
    /// Its home recalled it, and it is home.
    Recalled {
        /// What its recall entry handed over (CBOR), if anything.
        #[serde(with = "serde_bytes")]
        result: Vec<u8>,
        /// How the recall went, for people.
        detail: String,
    },
}

/// A report to an agent's home: what happened at one hop, in order (a visit's arrival and
/// departure go as one message, one signature).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The agent.
    pub agent: String,
    /// The hop it is at.
    pub hop: u32,
    /// What happened, in order.
    pub events: Vec<Event>,
}

/// A home's order to send its agent back. It is signed by the home and passed on unchanged
/// along the hosts the agent went through, until it reaches the one that holds the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recall {
    /// The agent.
    pub agent: String,
    /// When the home issued it (unix seconds).
    pub at: u64,
}

/// A call on a resource, forwarded to the host that owns it (a global reference).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Call {
    /// The agent making it.
    pub agent: String,
    /// The resource's name at the owner.
    pub resource: String,
    /// What to do.
    pub op: CallOp,
    /// When it was signed.
    pub at: u64,
}

/// A forwarded operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CallOp {
    /// A read-only statement.
    Query {
        /// The SQL.
        sql: String,
        /// Its parameters.
        params: Vec<Value>,
    },
    /// A line for a log.
    Append {
        /// The line.
        line: String,
    },
}

/// One visit on an agent's route, as its home records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Visit {
    /// The hop.
    pub hop: u32,
    /// The host's name.
    pub host: String,
    /// The host's address.
    pub address: String,
    /// How each resource was bound there.
    pub bindings: Vec<Bound>,
    /// When the visit started (unix milliseconds, that host's clock).
    #[serde(default)]
    pub at: u64,
    /// The receipt the host gave for the agent when it arrived (none at home, where it was
    /// launched), checked by the home against the host that reported it.
    #[serde(default)]
    pub receipt: Option<Signed>,
}

/// An agent as `roam agents` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// The agent's id.
    pub id: String,
    /// `name@version`.
    pub label: String,
    /// running, in transit, parked, finished, failed, recalled (or, away from home, left).
    pub state: String,
    /// Where it is (its last known host).
    pub location: String,
    /// Hops made.
    pub hops: u32,
    /// Its result, CBOR, once finished; once recalled, what its recall entry handed over.
    #[serde(with = "serde_bytes")]
    pub result: Vec<u8>,
    /// Why it failed or is parked, or how its recall went.
    pub detail: Option<String>,
    /// Its route with the bindings at each hop (at its home).
    pub route: Vec<Visit>,
    /// Whether this host is the agent's home (and so knows its whole route).
    pub home: bool,
    /// When this host last heard of the agent (unix seconds): how fresh `location` is.
    #[serde(default)]
    pub heard_at: u64,
    /// When its home ordered it back (unix milliseconds), if it did.
    #[serde(default)]
    pub recall_ordered: Option<u64>,
    /// The client that launched it, if it proved a key.
    #[serde(default)]
    pub owner: Option<PublicKey>,
    /// When it was launched (unix seconds; 0 where this host does not know).
    #[serde(default)]
    pub launched_at: u64,
    /// When its journey ended (unix seconds), at its home, once it has.
    #[serde(default)]
    pub ended_at: Option<u64>,
}

/// Encodes a value as CBOR (infallible for the types here).
pub fn to_cbor<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    if ciborium::into_writer(value, &mut out).is_err() {
        out.clear();
    }
    out
}

/// Decodes CBOR, with a message naming what was expected.
pub fn from_cbor<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, String> {
    ciborium::from_reader(bytes).map_err(|e| format!("{what} does not decode: {}", roam_keys::cbor_error(&e)))
}
