//! Ed25519 key pairs and the one-line text files that hold them.
//!
//! Secret key file: `roam-secret-key ed25519 <64 hex chars>\n`, created with mode 0600.
//! Public key file: `roam-public-key ed25519 <64 hex chars>\n`.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// The header of a secret key file, before the hex-encoded seed.
const SECRET_HEADER: &str = "roam-secret-key ed25519";
/// The header of a public key file, before the hex-encoded key.
const PUBLIC_HEADER: &str = "roam-public-key ed25519";
/// Extension of secret key files written by [`write_keypair`].
pub(crate) const SECRET_EXT: &str = "key";
/// Extension of public key files, both written by [`write_keypair`] and read by the trust store.
pub(crate) const PUBLIC_EXT: &str = "pub";
/// Ed25519 keys and seeds are 32 bytes, written as 64 hex characters.
const KEY_HEX_LEN: usize = 64;

/// Why a key could not be created, read, parsed or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing a key file failed.
    #[error("could not access {path}: {source}; check the path and its permissions")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What the operating system reported.
        #[source]
        source: io::Error,
    },
    /// A key file already exists where a new one was to be written.
    #[error(
        "refusing to overwrite existing key file {path}; choose another name, or delete the \
         old key first if you really mean to replace it"
    )]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// A key name is empty, contains `/`, `\`, or NUL, or starts with `.`.
    #[error(
        "invalid key name {name:?}: {reason}; use a plain file name such as \"alice\" or \
         \"host-1\""
    )]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A key file does not start with the expected header.
    #[error("{path} is not a {what} file: it should start with \"{expected}\"{hint}")]
    WrongHeader {
        /// The file.
        path: PathBuf,
        /// "secret key" or "public key".
        what: &'static str,
        /// The header the file should start with.
        expected: &'static str,
        /// A hint when the file is the other kind of key file.
        hint: &'static str,
    },
    /// The key in a key file is not hexadecimal.
    #[error(
        "{path}: the key is not hexadecimal; the file is corrupt, restore it or generate a new \
         key"
    )]
    BadHex {
        /// The file.
        path: PathBuf,
    },
    /// The key in a key file has the wrong length.
    #[error(
        "{path}: the key has {len} hex characters, expected 64; the file is corrupt or was cut \
         short, restore it or generate a new key"
    )]
    WrongLength {
        /// The file.
        path: PathBuf,
        /// How many characters the key has.
        len: usize,
    },
    /// A hex string given directly (not from a file) is not a 32-byte key.
    #[error("{input:?} is not a public key: {reason}; give the key as 64 hex characters")]
    InvalidHex {
        /// The input, shortened if long.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The operating system's random number generator failed.
    #[error("could not get randomness from the operating system to generate a key: {0}")]
    Random(String),
}

/// An ed25519 signing key.
///
/// Its `Debug` output shows only the public half, so a secret never ends up in a log. The
/// underlying key is zeroed when dropped (each copy of it).
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// Generates a new key from the operating system's random number generator.
    ///
    /// # Errors
    /// [`KeyError::Random`] if the operating system cannot provide randomness.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        let key = Self::from_seed(seed);
        wipe(&mut seed);
        Ok(key)
    }

    /// Builds the key from its 32-byte seed (the RFC 8032 "secret key").
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SigningKey::from_bytes(&seed))
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// Signs `msg` (pure Ed25519, RFC 8032) and returns the 64-byte signature.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.0.sign(msg).to_bytes()
    }

    /// Reads a secret key file (`roam-secret-key ed25519 <hex>`).
    ///
    /// # Errors
    /// [`KeyError::Io`] if the file cannot be read; [`KeyError::WrongHeader`],
    /// [`KeyError::BadHex`] or [`KeyError::WrongLength`] if its contents are malformed.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let mut text = fs::read(path).map_err(|source| KeyError::Io { path: path.to_owned(), source })?;
        let parsed = parse_key_file(&text, path, KeyFile::Secret);
        // The file's copy of the secret would otherwise linger in freed memory.
        wipe(&mut text);
        let mut seed = parsed?;
        let key = Self::from_seed(seed);
        wipe(&mut seed);
        Ok(key)
    }

    /// The file contents for this key, built in one exactly-sized buffer so that no stray copy
    /// of the secret is left behind by a reallocation. Callers wipe the result when done.
    fn to_file_bytes(&self) -> Vec<u8> {
        let mut seed = self.0.to_bytes();
        let mut hex_seed = [0u8; KEY_HEX_LEN];
        // Cannot fail: the output is exactly twice the input's length.
        let _ = hex::encode_to_slice(seed, &mut hex_seed);
        let mut out = Vec::with_capacity(SECRET_HEADER.len() + 1 + KEY_HEX_LEN + 1);
        out.extend_from_slice(SECRET_HEADER.as_bytes());
        out.push(b' ');
        out.extend_from_slice(&hex_seed);
        out.push(b'\n');
        wipe(&mut seed);
        wipe(&mut hex_seed);
        out
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey").field("public", &self.public().to_hex()).finish_non_exhaustive()
    }
}

/// An ed25519 public key: 32 bytes, shown as 64 hex characters.
///
/// Any 32 bytes make a `PublicKey`; whether they are a usable key is decided when verifying, by
/// [`PublicKey::verify_strict`], which refuses invalid and weak keys.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct PublicKey(
    // serde_bytes keeps this a 32-byte CBOR byte string rather than an array of 32 integers.
    #[serde(with = "serde_bytes")] [u8; 32],
);

impl PublicKey {
    /// Wraps 32 raw bytes.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key as 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters (either case).
    ///
    /// # Errors
    /// [`KeyError::InvalidHex`] if `s` is not exactly 64 hex characters.
    pub fn from_hex(s: &str) -> Result<Self, KeyError> {
        let invalid = |reason| KeyError::InvalidHex { input: s.chars().take(80).collect(), reason };
        if s.len() != KEY_HEX_LEN {
            return Err(invalid("it is not 64 characters long"));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| invalid("it is not hexadecimal"))?;
        Ok(Self(out))
    }

    /// Reads a public key file (`roam-public-key ed25519 <hex>`).
    ///
    /// # Errors
    /// [`KeyError::Io`] if the file cannot be read; [`KeyError::WrongHeader`],
    /// [`KeyError::BadHex`] or [`KeyError::WrongLength`] if its contents are malformed.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = fs::read(path).map_err(|source| KeyError::Io { path: path.to_owned(), source })?;
        parse_key_file(&text, path, KeyFile::Public).map(Self)
    }

    /// Checks an ed25519 signature of `msg` with ed25519-dalek's `verify_strict`.
    ///
    /// Returns `false` if the signature does not match, is malleable (non-canonical), or if
    /// these bytes are not a valid or are a weak (small-order) key.
    pub fn verify_strict(&self, msg: &[u8], sig: &[u8; 64]) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        key.verify_strict(msg, &Signature::from_bytes(sig)).is_ok()
    }

    fn to_file_text(self) -> String {
        format!("{PUBLIC_HEADER} {}\n", self.to_hex())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Which of the two key file formats is expected.
#[derive(Clone, Copy)]
enum KeyFile {
    Secret,
    Public,
}

impl KeyFile {
    fn header(self) -> &'static str {
        match self {
            Self::Secret => SECRET_HEADER,
            Self::Public => PUBLIC_HEADER,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Self::Secret => "secret key",
            Self::Public => "public key",
        }
    }

    /// The other format's header, to recognise a file given in the wrong place.
    fn other(self) -> Self {
        match self {
            Self::Secret => Self::Public,
            Self::Public => Self::Secret,
        }
    }
}

/// Parses `<header> <64 hex>` with an optional trailing newline (LF or CRLF).
fn parse_key_file(text: &[u8], path: &Path, kind: KeyFile) -> Result<[u8; 32], KeyError> {
    let line = text.strip_suffix(b"\n").map(|l| l.strip_suffix(b"\r").unwrap_or(l)).unwrap_or(text);
    let header = kind.header().as_bytes();
    let Some(hex_part) = line.strip_prefix(header).and_then(|rest| rest.strip_prefix(b" ")) else {
        let hint = if line.starts_with(kind.other().header().as_bytes()) {
            match kind {
                KeyFile::Secret => "; this is a public key file (.pub), give the .key file",
                KeyFile::Public => "; this is a SECRET key file, give the .pub file and keep this one private",
            }
        } else {
            ""
        };
        return Err(KeyError::WrongHeader { path: path.to_owned(), what: kind.what(), expected: kind.header(), hint });
    };
    if !hex_part.iter().all(u8::is_ascii_hexdigit) {
        return Err(KeyError::BadHex { path: path.to_owned() });
    }
    if hex_part.len() != KEY_HEX_LEN {
        return Err(KeyError::WrongLength { path: path.to_owned(), len: hex_part.len() });
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).map_err(|_| KeyError::BadHex { path: path.to_owned() })?;
    Ok(out)
}

/// Overwrites secret material before it is freed.
fn wipe(buf: &mut [u8]) {
    buf.fill(0);
    // Keeps the compiler from removing the fill as a dead store before the drop.
    std::hint::black_box(buf);
}

/// Checks that `name` can be used as a key file stem.
pub(crate) fn check_name(name: &str) -> Result<(), KeyError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.contains('/') || name.contains('\\') {
        "it contains a path separator"
    } else if name.contains('\0') {
        "it contains a NUL byte"
    } else if name.starts_with('.') {
        "it starts with '.'"
    } else {
        return Ok(());
    };
    Err(KeyError::InvalidName { name: name.to_owned(), reason })
}

/// Generates a key pair and writes `DIR/NAME.key` and `DIR/NAME.pub`.
///
/// `DIR` is created if missing (mode 0700 on Unix). The secret key file is created with mode 0600
/// from the start, so it is never readable by others, not even briefly. Neither file is ever
/// overwritten: if either exists, nothing is written and [`KeyError::Exists`] names it.
///
/// Returns the secret key path, the public key path, and the public key.
///
/// # Errors
/// [`KeyError::InvalidName`] for a name that is empty, contains `/`, `\` or NUL, or starts with
/// `.`; [`KeyError::Exists`]; [`KeyError::Io`]; [`KeyError::Random`].
pub fn write_keypair(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf, PublicKey), KeyError> {
    check_name(name)?;
    create_dir(dir)?;
    let key_path = dir.join(format!("{name}.{SECRET_EXT}"));
    let pub_path = dir.join(format!("{name}.{PUBLIC_EXT}"));

    let secret = SecretKey::generate()?;
    let public = secret.public();

    // Both files are claimed with create_new before anything is written, so an existing file is
    // never touched and a half-written pair is never left behind.
    let mut key_file = create_new(&key_path, 0o600)?;
    let mut pub_file = match create_new(&pub_path, 0o644) {
        Ok(f) => f,
        Err(e) => {
            drop(key_file);
            let _ = fs::remove_file(&key_path);
            return Err(e);
        }
    };

    let mut secret_text = secret.to_file_bytes();
    let written = write_synced(&mut key_file, &key_path, &secret_text)
        .and_then(|()| write_synced(&mut pub_file, &pub_path, public.to_file_text().as_bytes()));
    wipe(&mut secret_text);
    if let Err(e) = written {
        drop((key_file, pub_file));
        let _ = fs::remove_file(&key_path);
        let _ = fs::remove_file(&pub_path);
        return Err(e);
    }
    Ok((key_path, pub_path, public))
}

fn create_dir(dir: &Path) -> Result<(), KeyError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| KeyError::Io { path: dir.to_owned(), source })
}

fn create_new(path: &Path, #[cfg_attr(not(unix), allow(unused))] mode: u32) -> Result<File, KeyError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    options.open(path).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            KeyError::Exists { path: path.to_owned() }
        } else {
            KeyError::Io { path: path.to_owned(), source }
        }
    })
}

/// Writes and flushes to disk: a key that vanishes in a crash after being handed out is worse
/// than a slow key generation.
fn write_synced(file: &mut File, path: &Path, data: &[u8]) -> Result<(), KeyError> {
    file.write_all(data).and_then(|()| file.sync_all()).map_err(|source| KeyError::Io { path: path.to_owned(), source })
}
