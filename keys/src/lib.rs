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

/// A CBOR decoding error in words: ciborium's own `Display` is its `Debug`
/// (`Semantic(None, "invalid type: …")`), which must not reach a person.
pub fn cbor_error<E: std::fmt::Display>(e: &ciborium::de::Error<E>) -> String {
    use ciborium::de::Error;
    match e {
        Error::Io(e) => format!("cannot read it: {e}"),
        Error::Syntax(at) => format!("it is not well-formed CBOR (at byte {at})"),
        Error::Semantic(Some(at), what) => format!("{what} (at byte {at})"),
        Error::Semantic(None, what) => what.clone(),
        Error::RecursionLimitExceeded => "it is nested too deeply".to_owned(),
    }
}

/// A time in unix seconds as people read it in messages: UTC, RFC 3339.
pub fn date(secs: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.min(253_402_300_799));
    humantime::format_rfc3339_seconds(at).to_string()
}

/// The kinds of resource a capability names: `table:NAME`, `log:NAME`.
pub const CAPABILITY_KINDS: [&str; 2] = ["table", "log"];

/// What is wrong with a capability (or a policy's capability pattern), if anything: it must be
/// `KIND:NAME` with KIND one of [`CAPABILITY_KINDS`] and a NAME (which may end in `*`), or `*`.
pub fn capability_problem(capability: &str) -> Option<String> {
    if capability == "*" {
        return None;
    }
    let kinds = CAPABILITY_KINDS.join(", ");
    let Some((kind, name)) = capability.split_once(':') else {
        return Some(format!("a capability is KIND:NAME with KIND one of {kinds} (e.g. table:sales, log:audit)"));
    };
    if !CAPABILITY_KINDS.contains(&kind) && kind != "*" {
        return Some(format!("{kind:?} is no kind of resource; KIND is one of {kinds} (e.g. table:sales)"));
    }
    if name.is_empty() || name.chars().any(char::is_whitespace) {
        return Some("the NAME after KIND: is non-empty and has no whitespace (e.g. table:sales)".to_owned());
    }
    None
}

#[cfg(test)]
mod tests {
    /// ciborium's errors print as their Debug form; people get words.
    #[test]
    fn cbor_errors_read_as_words() {
        let decoded: Result<Vec<u8>, _> = ciborium::from_reader(&[0xff][..]);
        let message = decoded.err().map(|e| super::cbor_error(&e)).unwrap_or_default();
        assert!(!message.is_empty() && !message.contains("Semantic(") && !message.contains("Syntax("), "{message}");
    }

    #[test]
    fn capabilities_are_kind_and_name() {
        for good in ["table:sales", "log:audit", "log:*", "*", "table:sal*"] {
            assert_eq!(super::capability_problem(good), None, "{good}");
        }
        for bad in ["sales", "tables:sales", "table:", "table: x"] {
            assert!(super::capability_problem(bad).is_some(), "{bad}");
        }
    }
}
