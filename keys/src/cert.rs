//! Host certificates: a cluster key's statement that a host key, under a name and at an
//! address, is one of the cluster's hosts until a given time.
//!
//! With them, hosts need not list each other's keys: each trusts the cluster key, holds its
//! own certificate (presented when it connects to a peer) and the certificates of the hosts
//! it dials (a directory entry that carries the address, so nothing is dialed on an agent's
//! word alone). A certificate file, `NAME.cert`:
//!
//! ```toml
//! name = "data-1"
//! key = "<64-hex host public key>"
//! address = "10.0.0.7:7700"
//! issued = 1796083200     # unix seconds
//! expires = 1803859200
//! cluster = "<64-hex cluster public key>"
//! signature = "<128-hex ed25519 signature>"
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::key::{KeyError, PublicKey, SecretKey};

/// Extension of certificate files.
pub const CERT_EXT: &str = "cert";

/// How far ahead of a checking host's clock the clock of the machine that issued a certificate
/// may be: a certificate issued a moment ago elsewhere is valid here.
const ISSUE_SKEW: u64 = 300;

/// Prefix of every certified statement, so that a certificate's signature can never pass as a
/// signature over anything else made with the cluster key.
const CERT_DOMAIN: &[u8] = b"roam-host-certificate-v1\0";

/// Why a certificate could not be made, read or accepted.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Reading the file failed.
    #[error("cannot read certificate {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system reported.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a certificate.
    #[error("{path} is not a host certificate ({reason}); make one with `roam keys certify`")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A field is unusable.
    #[error("invalid certificate: {0}")]
    Invalid(String),
    /// The signature does not verify with the cluster key it names.
    #[error("the certificate of host {name} is not signed by cluster key {cluster}: it was altered or forged")]
    BadSignature {
        /// The certified name.
        name: String,
        /// The cluster key it names.
        cluster: PublicKey,
    },
    /// The certificate is past its expiry (or not yet issued).
    #[error(
        "the certificate of host {name} is valid from {} to {}, not now ({}); certify the host again with `roam keys certify`",
        crate::date(*issued),
        crate::date(*expires),
        crate::date(*now)
    )]
    Expired {
        /// The certified name.
        name: String,
        /// When it was issued.
        issued: u64,
        /// When it expires.
        expires: u64,
        /// The time of the check.
        now: u64,
    },
}

/// What a cluster key signs.
#[derive(Serialize)]
struct Statement<'a> {
    name: &'a str,
    key: &'a PublicKey,
    address: &'a str,
    issued: u64,
    expires: u64,
}

/// A host key certified by a cluster key: its name, its address, and until when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCertificate {
    /// The host's name.
    pub name: String,
    /// The host's key.
    pub key: PublicKey,
    /// Where the host listens, `HOST:PORT`.
    pub address: String,
    /// When it was issued, unix seconds.
    pub issued: u64,
    /// When it expires, unix seconds.
    pub expires: u64,
    /// The cluster key that signs it.
    pub cluster: PublicKey,
    /// The cluster key's signature of the statement.
    #[serde(with = "serde_bytes")]
    signature: Vec<u8>,
}

/// The file form: keys and signature as hex.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CertFile {
    name: String,
    key: String,
    address: String,
    issued: u64,
    expires: u64,
    cluster: String,
    signature: String,
}

impl HostCertificate {
    /// Certifies `key` as host `name` at `address`, valid from `issued` to `expires`.
    ///
    /// # Errors
    /// [`CertError::Invalid`] if the name or address is unusable or `expires` is not after
    /// `issued`.
    pub fn issue(
        cluster: &SecretKey,
        name: &str,
        key: PublicKey,
        address: &str,
        issued: u64,
        expires: u64,
    ) -> Result<Self, CertError> {
        let mut cert = Self {
            name: name.to_owned(),
            key,
            address: address.to_owned(),
            issued,
            expires,
            cluster: cluster.public(),
            signature: Vec::new(),
        };
        cert.check_fields()?;
        cert.signature = cluster.sign(&cert.statement()).to_vec();
        Ok(cert)
    }

    /// Checks the signature with the cluster key the certificate names, and that `now` is
    /// within its validity. Whether that cluster key is trusted is for the caller to decide.
    ///
    /// # Errors
    /// [`CertError::BadSignature`], [`CertError::Expired`] or [`CertError::Invalid`].
    pub fn verify(&self, now: u64) -> Result<(), CertError> {
        self.check_signature()?;
        if now.saturating_add(ISSUE_SKEW) < self.issued || now >= self.expires {
            let (issued, expires) = (self.issued, self.expires);
            return Err(CertError::Expired { name: self.name.clone(), issued, expires, now });
        }
        Ok(())
    }

    /// Checks the fields and the signature with the cluster key the certificate names, at any
    /// time.
    ///
    /// # Errors
    /// [`CertError::BadSignature`] or [`CertError::Invalid`].
    pub fn check_signature(&self) -> Result<(), CertError> {
        self.check_fields()?;
        let signature: Option<[u8; 64]> = self.signature.as_slice().try_into().ok();
        if !signature.is_some_and(|s| self.cluster.verify_strict(&self.statement(), &s)) {
            return Err(CertError::BadSignature { name: self.name.clone(), cluster: self.cluster });
        }
        Ok(())
    }

    /// The certificate as the text of a `.cert` file.
    pub fn to_file_text(&self) -> String {
        let file = CertFile {
            name: self.name.clone(),
            key: self.key.to_hex(),
            address: self.address.clone(),
            issued: self.issued,
            expires: self.expires,
            cluster: self.cluster.to_hex(),
            signature: hex::encode(&self.signature),
        };
        // A struct of strings and integers always serializes.
        toml::to_string(&file).unwrap_or_default()
    }

    /// Reads a `.cert` file. The signature is not checked: see [`HostCertificate::verify`].
    ///
    /// # Errors
    /// [`CertError::Io`] or [`CertError::Malformed`].
    pub fn load(path: &Path) -> Result<Self, CertError> {
        let text = std::fs::read_to_string(path).map_err(|source| CertError::Io { path: path.to_owned(), source })?;
        let malformed = |reason: String| CertError::Malformed { path: path.to_owned(), reason };
        let file: CertFile = toml::from_str(&text).map_err(|e| malformed(e.message().to_owned()))?;
        let key_of = |hex: &str| PublicKey::from_hex(hex).map_err(|e: KeyError| malformed(e.to_string()));
        let signature =
            hex::decode(&file.signature).map_err(|_| malformed("the signature is not hexadecimal".into()))?;
        Ok(Self {
            key: key_of(&file.key)?,
            cluster: key_of(&file.cluster)?,
            name: file.name,
            address: file.address,
            issued: file.issued,
            expires: file.expires,
            signature,
        })
    }

    fn statement(&self) -> Vec<u8> {
        let statement = Statement {
            name: &self.name,
            key: &self.key,
            address: &self.address,
            issued: self.issued,
            expires: self.expires,
        };
        let mut out = CERT_DOMAIN.to_vec();
        // Encoding a struct of strings, bytes and integers into a Vec cannot fail.
        let _ = ciborium::into_writer(&statement, &mut out);
        out
    }

    fn check_fields(&self) -> Result<(), CertError> {
        let invalid = |m: String| Err(CertError::Invalid(m));
        if self.name.is_empty() || self.name.len() > 64 || !self.name.bytes().all(|b| b.is_ascii_graphic()) {
            return invalid(format!("host name {:?} must be 1 to 64 visible ASCII characters", self.name));
        }
        let port = self.address.rsplit_once(':').map(|(host, port)| (host, port.parse::<u16>()));
        if !matches!(port, Some((host, Ok(p))) if !host.is_empty() && p != 0) || self.address.len() > 255 {
            return invalid(format!("address {:?} must be HOST:PORT, with a port other than 0", self.address));
        }
        if self.expires <= self.issued {
            return invalid(format!("it expires ({}) before it is issued ({})", self.expires, self.issued));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Result = std::result::Result<(), Box<dyn std::error::Error>>;

    fn cert(cluster: &SecretKey) -> std::result::Result<HostCertificate, CertError> {
        let host = SecretKey::from_seed([7; 32]).public();
        HostCertificate::issue(cluster, "data-1", host, "127.0.0.1:7701", 1_000, 2_000)
    }

    #[test]
    fn a_certificate_survives_its_file_and_verifies_only_while_valid() -> Result {
        let cluster = SecretKey::from_seed([1; 32]);
        let cert = cert(&cluster)?;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("data-1.cert");
        std::fs::write(&path, cert.to_file_text())?;
        let read = HostCertificate::load(&path)?;
        assert_eq!(read, cert);
        read.verify(1_500)?;
        assert!(matches!(read.verify(2_000), Err(CertError::Expired { .. })));
        // Issued by a machine whose clock is a little ahead: valid; far ahead: not yet.
        read.verify(1_000 - 300)?;
        assert!(matches!(read.verify(1_000 - 301), Err(CertError::Expired { .. })));
        Ok(())
    }

    #[test]
    fn every_certified_field_is_covered_by_the_signature() -> Result {
        let cluster = SecretKey::from_seed([1; 32]);
        let good = cert(&cluster)?;
        let other = SecretKey::from_seed([2; 32]).public();
        let altered = [
            HostCertificate { name: "data-2".into(), ..good.clone() },
            HostCertificate { key: other, ..good.clone() },
            HostCertificate { address: "127.0.0.1:7702".into(), ..good.clone() },
            HostCertificate { expires: 3_000, ..good.clone() },
            HostCertificate { issued: 900, ..good.clone() },
            HostCertificate { cluster: other, ..good.clone() },
        ];
        for cert in altered {
            assert!(matches!(cert.verify(1_500), Err(CertError::BadSignature { .. })), "{cert:?}");
        }
        Ok(())
    }

    #[test]
    fn unusable_fields_are_refused_when_issuing() {
        let cluster = SecretKey::from_seed([1; 32]);
        let key = cluster.public();
        for (name, addr, expires) in
            [("", "h:1", 2), ("a b", "h:1", 2), ("a", "h", 2), ("a", "h:0", 2), ("a", ":7", 2), ("a", "h:1", 1)]
        {
            assert!(HostCertificate::issue(&cluster, name, key, addr, 1, expires).is_err(), "{name} {addr}");
        }
    }
}
