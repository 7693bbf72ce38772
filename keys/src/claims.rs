//! What a signature asserts about a module.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::key::PublicKey;

/// Why a [`Kind`] or a [`ModuleHash`] could not be parsed from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The text is not one of the module kinds.
    #[error("unknown module kind {input:?}; use one of \"query\", \"code\" or \"agent\"")]
    UnknownKind {
        /// The text as given.
        input: String,
    },
    /// The text is not a SHA-256 hash in hex.
    #[error("{input:?} is not a module hash: {reason}; give the SHA-256 as 64 hex characters")]
    InvalidHash {
        /// The text as given, shortened if long.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// What a module is for; a host launches a module only in the role it was signed for.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A query shipped to the host that holds the data.
    Query,
    /// Client-side code fetched on demand and run locally.
    Code,
    /// A mobile agent that moves between hosts.
    Agent,
}

impl Kind {
    /// Every kind, in declaration order.
    pub const ALL: [Kind; 3] = [Kind::Query, Kind::Code, Kind::Agent];

    /// The lowercase name used in claims, policies and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Query => "query",
            Kind::Code => "code",
            Kind::Agent => "agent",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| ParseError::UnknownKind { input: s.to_owned() })
    }
}

/// The SHA-256 of a module with its signature section removed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct ModuleHash(
    // A 32-byte CBOR byte string, not an array of 32 integers.
    #[serde(with = "serde_bytes")] [u8; 32],
);

impl ModuleHash {
    /// Wraps a raw 32-byte digest.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    /// The raw 32-byte digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for ModuleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl FromStr for ModuleHash {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| ParseError::InvalidHash { input: s.chars().take(80).collect(), reason };
        if s.len() != 64 {
            return Err(invalid("it is not 64 characters long"));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| invalid("it is not hexadecimal"))?;
        Ok(Self(out))
    }
}

/// SHA-256 of a module's bytes; pass the module *without* its signature section.
pub fn hash_module(bytes_without_signature: &[u8]) -> ModuleHash {
    ModuleHash(Sha256::digest(bytes_without_signature).into())
}

/// What a signature asserts. Serialized as a CBOR map with these field names.
///
/// Unknown fields are refused when decoding: a verifier that skipped a field it did not
/// understand could accept a module under weaker terms than the signer meant.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// Binds the signature to these exact module bytes: the SHA-256 of the module with the
    /// signature section removed.
    pub module_hash: ModuleHash,
    /// The role the module may be launched in, so a query is never run as an agent.
    pub kind: Kind,
    /// The name versions are tracked under, for rollback protection.
    pub name: String,
    /// Compared with the highest version accepted under `name` to refuse rollbacks.
    /// Serialized as its string form.
    pub version: semver::Version,
    /// Who signed; only a hint for finding the key in the local trust store, never trusted
    /// by itself.
    pub signer: PublicKey,
    /// When the signature was made (unix seconds), for diagnostics.
    pub issued_at: u64,
    /// The module is refused before this time (unix seconds).
    pub not_before: u64,
    /// The module is refused from this time on (unix seconds), so a captured module cannot be
    /// replayed forever.
    pub expires: u64,
    /// The resources and host functions the module asks for, e.g. `table:sales`, `log:audit`;
    /// the host's policy decides whether the signer may grant them.
    pub capabilities: Vec<String>,
}
