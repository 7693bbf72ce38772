//! Keys, signed WebAssembly modules, and their verification for roam.
//!
//! Every module a roam host runs is signed with ed25519 and verified before it is compiled.
//!
//! Core concepts:
//! - [`SecretKey`] / [`PublicKey`]: an ed25519 key pair, stored as one-line text files
//!   ([`write_keypair`]).
//! - [`Claims`]: what a signature asserts: module hash, [`Kind`], name, version, signer,
//!   validity window and requested capabilities.
//! - [`sign_module`]: embeds a `roam.signature` custom section, first in the module, holding the
//!   domain-separated ([`DOMAIN`]) CBOR claims and their signature.
//! - [`sections`]: a minimal, panic-free walker over a core Wasm module's sections.
//! - [`TrustStore`]: the local directory of trusted `.pub` keys plus a [`Policy`] of revocations
//!   and per-key capabilities and kinds.
//! - [`HostCertificate`]: a cluster key's statement that a host key, under a name and at an
//!   address, belongs to the cluster until a given time.
//! - [`verify`]: runs every check in a fixed order and is the only way to get a
//!   [`VerifiedModule`], the type the engine compiles.
//! - [`VersionHistory`]: the versions already accepted per name, to refuse rollbacks.
//!
//! Signing a module and verifying it against a trust store:
//!
//! ```
//! use roam_keys::{Kind, SecretKey, SignRequest, TrustStore, VerifyContext, sign_module, verify};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let key = SecretKey::generate()?;
//! let module = b"\0asm\x01\0\0\0"; // the smallest core module: a header, no sections
//! let signed = sign_module(module, &key, SignRequest {
//!     kind: Kind::Query,
//!     name: "sales-total".into(),
//!     version: semver::Version::new(1, 0, 0),
//!     issued_at: 1_700_000_000,
//!     not_before: 1_700_000_000,
//!     expires: 1_700_086_400,
//!     capabilities: vec!["table:sales".into()],
//! })?;
//!
//! // Trust comes from the host's own store, never from the module.
//! let trust = TrustStore::empty().with_key("alice", key.public());
//! let verified = verify(signed, &VerifyContext::new(&trust, 1_700_000_100))?;
//! assert_eq!(verified.signer_name(), "alice");
//! assert_eq!(verified.claims().capabilities, ["table:sales"]);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod cert;
mod claims;
mod key;
mod sign;
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod testing;
mod trust;
mod verify;
mod wasm;

pub use cert::{CERT_EXT, CertError, HostCertificate};
pub use claims::{Claims, Kind, ModuleHash, ParseError, hash_module};
pub use key::{KeyError, PublicKey, SecretKey, write_keypair};
pub use sign::{SignError, SignRequest, sign_module};
pub use trust::{KeyPolicy, POLICY_FILE, Policy, TrustError, TrustStore, TrustedKey};
pub use verify::{
    NoHistory, VerifiedModule, VerifyContext, VerifyError, VersionHistory, read_claims_unverified, verify,
};
pub use wasm::{Section, WasmError, sections, write_u32 as write_leb_u32};

/// Prefix of every signed payload, so that a roam module signature can never be mistaken for
/// a signature over anything else made with the same key.
pub const DOMAIN: &[u8] = b"roam-module-v1\0";

/// Name of the custom section that holds a module's signature.
pub const SIGNATURE_SECTION: &str = "roam.signature";

/// The default cap on a module's size, checked before anything is parsed.
pub const DEFAULT_MAX_MODULE_SIZE: usize = 16 * 1024 * 1024;
