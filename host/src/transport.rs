//! TLS 1.3 on every connection, keyed by the ed25519 keys roam already has.
//!
//! Each side presents its key as a raw public key (RFC 7250): no certificate, no authority to
//! run. TLS proves possession of the key over the handshake transcript, so a proof is bound to
//! its connection and cannot be relayed to another. The verifiers here accept any well-formed
//! ed25519 key whose signature over the transcript verifies; *which* key is acceptable is the
//! caller's decision once the handshake is done: a client compares the host's key with the one
//! it pinned, a host compares a connecting host's key with its peers.
//!
//! A host asks every client for a key and accepts none (an anonymous client, such as a person's
//! command line); a host connecting to a peer always presents its own. TLS 1.2 is off.
//!
//! The crypto provider is *ring*: it builds with the C compiler every machine here has (no CMake,
//! Go or NASM, which aws-lc-rs may need), quickly, and it has what this needs (X25519, AES-GCM,
//! ChaCha20-Poly1305); roam does its own ed25519 with the keys' crate.

use std::sync::{Arc, OnceLock};

use roam_keys::{PublicKey, SecretKey};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, Error, ServerConfig, SignatureAlgorithm,
    SignatureScheme,
};
use tokio::net::TcpStream;

/// What the two sides agree to speak inside TLS (ALPN): roam's protocol, at its version.
pub const ALPN: &[u8] = b"roam/3";

/// The first byte of a TLS record carrying a handshake: what a client's first byte is. A roam
/// frame never starts with it (its length would be over 350 MB).
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;

/// An encrypted connection, as a host sees it.
pub type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;
/// An encrypted connection, as a client sees it.
pub type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

/// The DER SubjectPublicKeyInfo of an ed25519 key is this fixed prefix (SEQUENCE, the algorithm
/// identifier 1.3.101.112, a BIT STRING of 33 bytes) followed by the 32 bytes of the key.
const SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// A key as TLS carries it: its SubjectPublicKeyInfo.
fn spki(key: &PublicKey) -> Vec<u8> {
    [&SPKI_PREFIX[..], key.as_bytes()].concat()
}

/// The ed25519 key in a raw public key from the other side, if that is what it is.
pub fn key_of(der: &[u8]) -> Option<PublicKey> {
    let bytes: [u8; 32] = der.strip_prefix(&SPKI_PREFIX)?.try_into().ok()?;
    Some(PublicKey::from_bytes(bytes))
}

/// The key the other side of a finished handshake proved, if it presented one.
pub fn proven_key(certificates: Option<&[CertificateDer<'_>]>) -> Option<PublicKey> {
    certificates?.first().and_then(|c| key_of(c))
}

/// Signs handshakes with a roam key; the secret never leaves [`SecretKey`].
#[derive(Debug)]
struct Ed25519(Arc<SecretKey>);

impl SigningKey for Ed25519 {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered.contains(&SignatureScheme::ED25519).then(|| Box::new(Ed25519(self.0.clone())) as Box<dyn Signer>)
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(spki(&self.0.public())))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ED25519
    }
}

impl Signer for Ed25519 {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        Ok(self.0.sign(message).to_vec())
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

/// A key and its raw public key, as TLS presents them.
fn certified(key: Arc<SecretKey>) -> Arc<CertifiedKey> {
    let public = CertificateDer::from(spki(&key.public()));
    Arc::new(CertifiedKey::new(vec![public], Arc::new(Ed25519(key))))
}

/// Accepts any ed25519 raw public key whose handshake signature verifies: who it belongs to is
/// checked once the handshake is done.
#[derive(Debug)]
struct AnyKey;

impl AnyKey {
    fn check(cert: &CertificateDer<'_>) -> Result<PublicKey, Error> {
        key_of(cert).ok_or(Error::InvalidCertificate(CertificateError::BadEncoding))
    }

    fn verify(message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<(), Error> {
        let key = Self::check(cert)?;
        let signature: [u8; 64] =
            dss.signature().try_into().map_err(|_| Error::InvalidCertificate(CertificateError::BadSignature))?;
        if dss.scheme != SignatureScheme::ED25519 || !key.verify_strict(message, &signature) {
            return Err(Error::InvalidCertificate(CertificateError::BadSignature));
        }
        Ok(())
    }
}

impl ServerCertVerifier for AnyKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Self::check(end_entity).map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::General("roam speaks TLS 1.3 only".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Self::verify(message, cert, dss).map(|()| HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

impl ClientCertVerifier for AnyKey {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        Self::check(end_entity).map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::General("roam speaks TLS 1.3 only".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Self::verify(message, cert, dss).map(|()| HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// The client's key, if it has one. It always says it speaks raw public keys only, even without
/// a key: a host asks every client for one, and refuses a client that does not speak them.
#[derive(Debug)]
struct ClientKey(Option<Arc<CertifiedKey>>);

impl rustls::client::ResolvesClientCert for ClientKey {
    fn resolve(&self, _hints: &[&[u8]], sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.clone().filter(|_| sigschemes.contains(&SignatureScheme::ED25519))
    }

    fn only_raw_public_keys(&self) -> bool {
        true
    }

    fn has_certs(&self) -> bool {
        self.0.is_some()
    }
}

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())).clone()
}

/// A host's TLS configuration: its key, and a request for the client's.
///
/// # Errors
/// If the provider cannot do TLS 1.3 (it can: this is the built-in one).
pub fn server_config(key: Arc<SecretKey>) -> Result<Arc<ServerConfig>, Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(AnyKey))
        .with_cert_resolver(Arc::new(rustls::server::AlwaysResolvesServerRawPublicKeys::new(certified(key))));
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// A client's TLS configuration, proving `key` if it has one. Sessions are resumed from one
/// connection to the next to the same host, which saves the signatures of a full handshake.
///
/// # Errors
/// If the provider cannot do TLS 1.3 (it can: this is the built-in one).
pub fn client_config(key: Option<Arc<SecretKey>>) -> Result<Arc<ClientConfig>, Error> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyKey))
        .with_client_cert_resolver(Arc::new(ClientKey(key.map(certified))));
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// The configuration of anonymous clients, made once.
pub fn anonymous() -> Result<Arc<ClientConfig>, Error> {
    static ANONYMOUS: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    if let Some(config) = ANONYMOUS.get() {
        return Ok(config.clone());
    }
    let config = client_config(None)?;
    Ok(ANONYMOUS.get_or_init(|| config).clone())
}

/// The name TLS is told for `addr` (`host:port`): its host part. Nothing checks it against a
/// certificate; it keys the session cache.
pub fn server_name(addr: &str) -> ServerName<'static> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host).trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned())
        .or_else(|_| ServerName::try_from("roam.invalid"))
        .unwrap_or(ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_round_trips_through_its_raw_public_key_and_nothing_else_reads_as_one() {
        let key = SecretKey::from_seed([3; 32]).public();
        let der = spki(&key);
        assert_eq!(der.len(), 44);
        assert_eq!(key_of(&der), Some(key));
        assert_eq!(key_of(&der[..43]), None);
        assert_eq!(key_of(&[der.as_slice(), &[0]].concat()), None);
        let mut other_algorithm = der.clone();
        other_algorithm[8] = 0x71; // 1.3.101.113, Ed448
        assert_eq!(key_of(&other_algorithm), None);
    }

    #[test]
    fn server_names_come_from_the_host_part() {
        assert_eq!(server_name("127.0.0.1:7700"), ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        assert!(matches!(server_name("example.org:7700"), ServerName::DnsName(_)));
        assert!(matches!(server_name("[::1]:7700"), ServerName::IpAddress(_)));
        assert!(matches!(server_name("not a name:1"), ServerName::DnsName(_)));
    }
}
