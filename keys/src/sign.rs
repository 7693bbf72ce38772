//! Signing a module: embedding a signature section that carries signed [`Claims`].

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::claims::{Claims, Kind, ModuleHash};
use crate::key::SecretKey;
use crate::wasm::{self, CUSTOM_SECTION_ID, HEADER_LEN, WasmError};
use crate::{DOMAIN, SIGNATURE_SECTION};

/// Why a module could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The input is not a core Wasm module.
    #[error("cannot sign: the input is not a valid WebAssembly module: {0}")]
    NotWasm(#[from] WasmError),
    /// The module name is empty.
    #[error("cannot sign: the module name is empty; give the name versions are tracked under")]
    EmptyName,
    /// The validity window is empty: it ends before or when it starts.
    #[error(
        "cannot sign: the module would expire (at {expires}) no later than it becomes valid \
         (at {not_before}); choose an expiry after the not-before time"
    )]
    EmptyValidity {
        /// Requested start of validity, unix seconds.
        not_before: u64,
        /// Requested expiry, unix seconds.
        expires: u64,
    },
    /// A requested capability is not `KIND:NAME`.
    #[error("cannot sign: invalid capability {capability:?}: {problem}")]
    BadCapability {
        /// The capability as given.
        capability: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The claims could not be encoded as CBOR.
    #[error("cannot sign: encoding the claims failed: {0}")]
    Encode(String),
    /// The signature section would exceed the 4 GiB a Wasm section can hold.
    #[error(
        "cannot sign: the signature section would be {size} bytes, more than a Wasm section can \
         hold; request fewer capabilities"
    )]
    SectionTooLarge {
        /// The size the section would have had.
        size: usize,
    },
}

/// The terms to sign a module under; the signer key and module hash are added by
/// [`sign_module`].
#[derive(Clone, Debug, PartialEq)]
pub struct SignRequest {
    /// The role the module may be launched in.
    pub kind: Kind,
    /// The name versions are tracked under; must not be empty.
    pub name: String,
    /// The version; a host refuses versions below the highest it has accepted under `name`.
    pub version: semver::Version,
    /// When the signature is made, unix seconds.
    pub issued_at: u64,
    /// Start of validity, unix seconds.
    pub not_before: u64,
    /// End of validity (exclusive), unix seconds; must be after `not_before`.
    pub expires: u64,
    /// What the module asks for, e.g. `table:sales`; each non-empty, without whitespace.
    pub capabilities: Vec<String>,
}

/// The CBOR map stored in the signature section.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Envelope {
    /// [`DOMAIN`] followed by the CBOR of the [`Claims`]; the prefix keeps a roam signature from
    /// being valid as a signature over anything else the same key signs.
    #[serde(with = "serde_bytes")]
    pub(crate) payload: Vec<u8>,
    /// Ed25519 over the whole `payload`, prefix included.
    #[serde(with = "serde_bytes")]
    pub(crate) signature: [u8; 64],
}

/// Signs a module and returns the signed module.
///
/// The output is the 8-byte header, then one custom section named [`SIGNATURE_SECTION`] as the
/// first section, then every other section of the input in order. A `roam.signature` section
/// already in the input is dropped first, so signing a signed module re-signs it. The claimed
/// hash covers the header and all other sections, i.e. the output minus the signature section.
///
/// # Errors
/// [`SignError::NotWasm`], [`SignError::EmptyName`], [`SignError::EmptyValidity`],
/// [`SignError::BadCapability`], and (in practice unreachable) [`SignError::Encode`] and
/// [`SignError::SectionTooLarge`].
pub fn sign_module(wasm: &[u8], key: &SecretKey, req: SignRequest) -> Result<Vec<u8>, SignError> {
    let sections = wasm::sections(wasm)?;
    check_request(&req)?;

    // `sections` succeeded, so the header is present.
    let header = wasm.get(..HEADER_LEN).unwrap_or_default();
    let kept: Vec<&[u8]> = sections
        .iter()
        .filter(|s| !(s.id == CUSTOM_SECTION_ID && s.name == Some(SIGNATURE_SECTION)))
        .filter_map(|s| wasm.get(s.range.clone()))
        .collect();

    let mut hasher = Sha256::new();
    hasher.update(header);
    for section in &kept {
        hasher.update(section);
    }
    let claims = Claims {
        module_hash: ModuleHash::from_bytes(hasher.finalize().into()),
        kind: req.kind,
        name: req.name,
        version: req.version,
        signer: key.public(),
        issued_at: req.issued_at,
        not_before: req.not_before,
        expires: req.expires,
        capabilities: req.capabilities,
    };

    let mut payload = DOMAIN.to_vec();
    ciborium::into_writer(&claims, &mut payload).map_err(|e| SignError::Encode(e.to_string()))?;
    let signature = key.sign(&payload);
    let mut envelope = Vec::new();
    ciborium::into_writer(&Envelope { payload, signature }, &mut envelope)
        .map_err(|e| SignError::Encode(e.to_string()))?;

    let section = custom_section(SIGNATURE_SECTION, &envelope)?;
    let body_len: usize = kept.iter().map(|s| s.len()).sum();
    let mut out = Vec::with_capacity(HEADER_LEN + section.len() + body_len);
    out.extend_from_slice(header);
    out.extend_from_slice(&section);
    for s in kept {
        out.extend_from_slice(s);
    }
    Ok(out)
}

fn check_request(req: &SignRequest) -> Result<(), SignError> {
    if req.name.is_empty() {
        return Err(SignError::EmptyName);
    }
    if req.expires <= req.not_before {
        return Err(SignError::EmptyValidity { not_before: req.not_before, expires: req.expires });
    }
    for capability in &req.capabilities {
        if let Some(problem) = crate::capability_problem(capability) {
            return Err(SignError::BadCapability { capability: capability.clone(), problem });
        }
    }
    Ok(())
}

/// Encodes a whole custom section: id 0, size, name length, name, contents.
pub(crate) fn custom_section(name: &str, contents: &[u8]) -> Result<Vec<u8>, SignError> {
    let mut name_len = Vec::new();
    wasm::write_u32(&mut name_len, leb_len(name.len())?);
    let size = name_len.len() + name.len() + contents.len();
    let mut out = Vec::with_capacity(size + 6);
    out.push(CUSTOM_SECTION_ID);
    wasm::write_u32(&mut out, leb_len(size)?);
    out.extend_from_slice(&name_len);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(contents);
    Ok(out)
}

fn leb_len(size: usize) -> Result<u32, SignError> {
    u32::try_from(size).map_err(|_| SignError::SectionTooLarge { size })
}
