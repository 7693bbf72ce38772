//! Verifying a signed module: the only way to obtain a [`VerifiedModule`].

use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::claims::{Claims, Kind, ModuleHash};
use crate::key::PublicKey;
use crate::sign::Envelope;
use crate::trust::TrustStore;
use crate::wasm::{self, CUSTOM_SECTION_ID, Section, WasmError};
use crate::{DEFAULT_MAX_MODULE_SIZE, DOMAIN, SIGNATURE_SECTION};

/// The versions a host has already accepted, for rollback protection.
pub trait VersionHistory {
    /// The highest version accepted so far under `name`, if any.
    fn highest_accepted(&self, name: &str) -> Option<semver::Version>;
}

/// A history that has accepted nothing, for one-off checks such as the `roam verify` command.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHistory;

impl VersionHistory for NoHistory {
    fn highest_accepted(&self, _name: &str) -> Option<semver::Version> {
        None
    }
}

/// Everything a verification depends on besides the module itself.
pub struct VerifyContext<'a> {
    /// The only source of trust: the key inside a module is looked up here, never believed.
    pub trust: &'a TrustStore,
    /// One clock reading (unix seconds) for the whole check, so that not-before and expiry are
    /// judged against the same instant.
    pub now: u64,
    /// Modules larger than this are refused before any parsing, to bound the work an attacker
    /// can cause.
    pub max_size: usize,
    /// The role the module is about to be used in; `None` accepts any kind.
    pub expected_kind: Option<Kind>,
    /// Versions accepted before, to refuse rollbacks.
    pub history: &'a dyn VersionHistory,
}

impl<'a> VerifyContext<'a> {
    /// A context with the default size cap, any kind, and no version history.
    pub fn new(trust: &'a TrustStore, now: u64) -> Self {
        Self { trust, now, max_size: DEFAULT_MAX_MODULE_SIZE, expected_kind: None, history: &NoHistory }
    }
}

impl fmt::Debug for VerifyContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyContext")
            .field("trust", self.trust)
            .field("now", &self.now)
            .field("max_size", &self.max_size)
            .field("expected_kind", &self.expected_kind)
            .finish_non_exhaustive()
    }
}

/// Why a module was refused. The variants are listed in the order the checks run.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The module is larger than the configured cap.
    #[error(
        "the module is {size} bytes, over the limit of {max} bytes; it was refused unread (a \
         host's limit is `module_kib` in its configuration: raise it only if you expect modules \
         this large)"
    )]
    TooLarge {
        /// The module's size.
        size: usize,
        /// The cap.
        max: usize,
    },
    /// The module's sections could not be walked.
    #[error("module is malformed: {0}")]
    Malformed(#[from] WasmError),
    /// There is no signature section.
    #[error(
        "module is not signed: it has no \"roam.signature\" section; sign it with `roam sign` \
         before shipping it"
    )]
    MissingSignature,
    /// There is more than one signature section.
    #[error(
        "module has more than one \"roam.signature\" section; it was tampered with or signed \
         incorrectly, re-sign the original module"
    )]
    DuplicateSignature,
    /// The signature section is not the first section.
    #[error(
        "the \"roam.signature\" section is not the module's first section; the module was \
         modified after signing (for example by a tool that reorders sections), re-sign it"
    )]
    MisplacedSignature,
    /// The signature section's contents are not the expected CBOR map.
    #[error("the signature section cannot be decoded ({0}); the module is corrupt, re-sign it")]
    BadEnvelope(String),
    /// The signed payload does not start with the roam domain prefix.
    #[error(
        "the signed payload does not start with the roam-module-v1 prefix; it was not made by a \
         roam signer (or by an incompatible version), sign the module with `roam sign`"
    )]
    MissingDomainPrefix,
    /// The claims in the signed payload cannot be decoded.
    #[error("the signed claims cannot be decoded ({0}); re-sign the module with `roam sign`")]
    BadPayload(String),
    /// The signer's key is revoked by the host's policy.
    #[error(
        "the module is signed by key {key}, which the trust store's policy revokes; ask for a \
         module signed with a current key"
    )]
    Revoked {
        /// The signer's key.
        key: PublicKey,
    },
    /// The signer's key is not in the host's trust store.
    #[error(
        "the module is signed by key {key}, which is not in the trust store it was checked against; \
         if you trust the signer, add their .pub file to that trust store"
    )]
    UntrustedSigner {
        /// The signer's key.
        key: PublicKey,
    },
    /// The signature does not match the payload and the trusted key.
    #[error(
        "the signature is invalid: the signed claims were altered or the signature is forged; \
         do not run this module, get a freshly signed copy"
    )]
    BadSignature,
    /// The module is not valid yet.
    #[error(
        "the module is not valid until {} and it is now {}; wait, or check the clock of the \
         machine that checked it",
        crate::date(*not_before),
        crate::date(*now)
    )]
    NotYetValid {
        /// Start of validity.
        not_before: u64,
        /// The time of the check.
        now: u64,
    },
    /// The module has expired.
    #[error(
        "the module expired at {} and it is now {}; ask the signer for a freshly signed copy, or \
         check the clock of the machine that checked it",
        crate::date(*expires),
        crate::date(*now)
    )]
    Expired {
        /// End of validity.
        expires: u64,
        /// The time of the check.
        now: u64,
    },
    /// The version is lower than one already accepted under the same name.
    #[error(
        "module {name} version {version} is older than version {accepted} already accepted \
         here; this looks like a rollback, use version {accepted} or newer"
    )]
    Rollback {
        /// The module's name.
        name: String,
        /// The module's version.
        version: semver::Version,
        /// The highest version accepted before.
        accepted: semver::Version,
    },
    /// The module's bytes do not match the signed hash.
    #[error(
        "the module's code does not match the signed hash: it was altered after signing; do \
         not run it, get a freshly signed copy"
    )]
    HashMismatch,
    /// The module was signed for another role than the one requested.
    #[error(
        "the module is {} {found} module, but {} {expected} module is needed here",
        article(*.found),
        article(*.expected)
    )]
    WrongKind {
        /// The kind the caller needs.
        expected: Kind,
        /// The kind the module was signed as.
        found: Kind,
    },
    /// The policy does not let the signer sign this kind of module.
    #[error(
        "the policy does not let signer {signer} sign {kind} modules; add \"{kind}\" to the \
         kinds of [keys.{signer}] in policy.toml if that is intended"
    )]
    KindDenied {
        /// The module's kind.
        kind: Kind,
        /// The signer's name in the trust store.
        signer: String,
    },
    /// The policy does not let the signer grant a requested capability.
    #[error(
        "the module asks for capability {capability:?}, which the policy does not allow signer \
         {signer} to grant; add it to [keys.{signer}] in policy.toml if that is intended"
    )]
    CapabilityDenied {
        /// The first capability refused.
        capability: String,
        /// The signer's name in the trust store.
        signer: String,
    },
}

/// A module whose signature and claims have been checked.
///
/// The only way to obtain one is [`verify`]: there is no public constructor, no `Deserialize`
/// and no `Default`, so the type system enforces "verify before compile" wherever compilation
/// takes a `&VerifiedModule`.
#[derive(Clone, Debug)]
pub struct VerifiedModule {
    /// The whole module as verified, signature section included; shared because the same
    /// module is compiled, cached and sent on.
    bytes: Arc<[u8]>,
    /// The checked claims, for the host to act on (capabilities, kind, name and version).
    claims: Claims,
    /// The hash the claims were checked against, the module's identity for caching.
    hash: ModuleHash,
    /// The signer's name in the local trust store, for logs and policy messages.
    signer_name: String,
}

impl VerifiedModule {
    /// The module's bytes, signature section included.
    pub fn bytes(&self) -> &Arc<[u8]> {
        &self.bytes
    }

    /// The verified claims.
    pub fn claims(&self) -> &Claims {
        &self.claims
    }

    /// The SHA-256 of the module without its signature section.
    pub fn hash(&self) -> ModuleHash {
        self.hash
    }

    /// The signer's name in the trust store.
    pub fn signer_name(&self) -> &str {
        &self.signer_name
    }
}

/// Checks a signed module against the trust store and returns it as a [`VerifiedModule`].
///
/// The checks run in this order, and the first failure is returned:
/// 1. size cap ([`VerifyError::TooLarge`]), before anything is parsed;
/// 2. exactly one signature section, the first ([`VerifyError::Malformed`],
///    [`VerifyError::MissingSignature`], [`VerifyError::DuplicateSignature`],
///    [`VerifyError::MisplacedSignature`]);
/// 3. the envelope and payload decode, with the domain prefix ([`VerifyError::BadEnvelope`],
///    [`VerifyError::MissingDomainPrefix`], [`VerifyError::BadPayload`]);
/// 4. the signer is trusted and not revoked ([`VerifyError::Revoked`],
///    [`VerifyError::UntrustedSigner`]);
/// 5. the signature ([`VerifyError::BadSignature`]);
/// 6. the validity window ([`VerifyError::NotYetValid`], [`VerifyError::Expired`]);
/// 7. no rollback ([`VerifyError::Rollback`]);
/// 8. the module hash ([`VerifyError::HashMismatch`]);
/// 9. kind and capabilities against the caller and the policy ([`VerifyError::WrongKind`],
///    [`VerifyError::KindDenied`], [`VerifyError::CapabilityDenied`]).
///
/// # Errors
/// The [`VerifyError`] of the first check that fails.
pub fn verify(bytes: impl Into<Arc<[u8]>>, ctx: &VerifyContext<'_>) -> Result<VerifiedModule, VerifyError> {
    let bytes: Arc<[u8]> = bytes.into();

    // 1. Size, before parsing anything.
    if bytes.len() > ctx.max_size {
        return Err(VerifyError::TooLarge { size: bytes.len(), max: ctx.max_size });
    }

    // 2. Exactly one signature section, first.
    let sections = wasm::sections(&bytes)?;
    let mut signatures = sections.iter().enumerate().filter(|(_, s)| is_signature(s));
    let Some((position, sig_section)) = signatures.next() else {
        return Err(VerifyError::MissingSignature);
    };
    if signatures.next().is_some() {
        return Err(VerifyError::DuplicateSignature);
    }
    if position != 0 {
        return Err(VerifyError::MisplacedSignature);
    }

    // 3. Envelope, domain prefix, claims.
    let envelope = decode_envelope(sig_section.payload)?;
    let claims = decode_claims(&envelope.payload)?;

    // 4. The signer must be in the local store; the key in the payload proves nothing alone.
    let signer = claims.signer;
    if ctx.trust.is_revoked(&signer) {
        return Err(VerifyError::Revoked { key: signer });
    }
    let Some(trusted) = ctx.trust.get(&signer) else {
        return Err(VerifyError::UntrustedSigner { key: signer });
    };

    // 5. The signature, checked with the trusted copy of the key.
    if !trusted.key.verify_strict(&envelope.payload, &envelope.signature) {
        return Err(VerifyError::BadSignature);
    }

    // 6. Validity window, against the single clock reading in the context.
    if ctx.now < claims.not_before {
        return Err(VerifyError::NotYetValid { not_before: claims.not_before, now: ctx.now });
    }
    if ctx.now >= claims.expires {
        return Err(VerifyError::Expired { expires: claims.expires, now: ctx.now });
    }

    // 7. Rollback.
    if let Some(accepted) = ctx.history.highest_accepted(&claims.name)
        && claims.version < accepted
    {
        return Err(VerifyError::Rollback { name: claims.name, version: claims.version, accepted });
    }

    // 8. The hash of everything but the signature section, without copying the module.
    let (before, after) = (
        bytes.get(..sig_section.range.start).unwrap_or_default(),
        bytes.get(sig_section.range.end..).unwrap_or_default(),
    );
    let mut hasher = Sha256::new();
    hasher.update(before);
    hasher.update(after);
    let hash = ModuleHash::from_bytes(hasher.finalize().into());
    if hash != claims.module_hash {
        return Err(VerifyError::HashMismatch);
    }

    // 9. Kind and capabilities.
    if let Some(expected) = ctx.expected_kind
        && expected != claims.kind
    {
        return Err(VerifyError::WrongKind { expected, found: claims.kind });
    }
    if !ctx.trust.allows_kind(&signer, claims.kind) {
        return Err(VerifyError::KindDenied { kind: claims.kind, signer: trusted.name.clone() });
    }
    if let Some(denied) = claims.capabilities.iter().find(|c| !ctx.trust.allows(&signer, c)) {
        return Err(VerifyError::CapabilityDenied { capability: denied.clone(), signer: trusted.name.clone() });
    }

    let signer_name = trusted.name.clone();
    Ok(VerifiedModule { bytes, claims, hash, signer_name })
}

/// Reads the claims of a signed module without checking anything: not the signer, the
/// signature, the validity window nor the hash. For display and diagnostics only; never act on
/// the result.
///
/// The first `roam.signature` section is read wherever it is.
///
/// # Errors
/// [`VerifyError::Malformed`], [`VerifyError::MissingSignature`],
/// [`VerifyError::BadEnvelope`], [`VerifyError::MissingDomainPrefix`],
/// [`VerifyError::BadPayload`].
pub fn read_claims_unverified(bytes: &[u8]) -> Result<Claims, VerifyError> {
    let sections = wasm::sections(bytes)?;
    let section = sections.iter().find(|s| is_signature(s)).ok_or(VerifyError::MissingSignature)?;
    let envelope = decode_envelope(section.payload)?;
    decode_claims(&envelope.payload)
}

/// "an agent", "a query".
fn article(kind: Kind) -> &'static str {
    if kind == Kind::Agent { "an" } else { "a" }
}

fn is_signature(section: &Section<'_>) -> bool {
    section.id == CUSTOM_SECTION_ID && section.name == Some(SIGNATURE_SECTION)
}

fn decode_envelope(bytes: &[u8]) -> Result<Envelope, VerifyError> {
    decode_exact(bytes).map_err(VerifyError::BadEnvelope)
}

fn decode_claims(payload: &[u8]) -> Result<Claims, VerifyError> {
    let cbor = payload.strip_prefix(DOMAIN).ok_or(VerifyError::MissingDomainPrefix)?;
    decode_exact(cbor).map_err(VerifyError::BadPayload)
}

/// Decodes one CBOR item that must take up all of `bytes`: trailing bytes would let the same
/// signed module exist in many byte-different forms.
fn decode_exact<T: serde::de::DeserializeOwned>(mut bytes: &[u8]) -> Result<T, String> {
    let value = ciborium::from_reader(&mut bytes).map_err(|e| crate::cbor_error(&e))?;
    if !bytes.is_empty() {
        return Err(format!("{} unexpected bytes after the CBOR value", bytes.len()));
    }
    Ok(value)
}
