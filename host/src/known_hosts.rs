//! The keys of hosts a person's client has talked to, as ssh keeps them: the first connection
//! to an address remembers the key the host proved (trust on first use), and every later one
//! must prove the same key. One line per address: `HOST:PORT KEY`, the key in hex; `#` starts
//! a comment.

use std::io::Write;
use std::path::{Path, PathBuf};

use roam_keys::PublicKey;

/// Why the file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KnownHostsError {
    /// Reading or writing it failed.
    #[error("cannot use the known hosts file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A line is not `HOST:PORT KEY`.
    #[error("{path}, line {line}: expected `HOST:PORT KEY` with the key in hex; fix or delete that line")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
    },
}

/// A known hosts file.
#[derive(Clone, Debug)]
pub struct KnownHosts {
    path: PathBuf,
}

impl KnownHosts {
    /// The file at `path` (it need not exist yet).
    pub fn at(path: PathBuf) -> Self {
        Self { path }
    }

    /// `$ROAM_KNOWN_HOSTS`, else `~/.config/roam/known_hosts`.
    pub fn default_path() -> PathBuf {
        if let Some(path) = std::env::var_os("ROAM_KNOWN_HOSTS") {
            return PathBuf::from(path);
        }
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
        home.join(".config/roam/known_hosts")
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key remembered for `addr`, if any.
    ///
    /// # Errors
    /// If the file cannot be read or has a malformed line.
    pub fn lookup(&self, addr: &str) -> Result<Option<PublicKey>, KnownHostsError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(KnownHostsError::Io { path: self.path.clone(), source }),
        };
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let malformed = || KnownHostsError::Malformed { path: self.path.clone(), line: n + 1 };
            let (host, key) = line.split_once(char::is_whitespace).ok_or_else(malformed)?;
            if host == addr {
                return PublicKey::from_hex(key.trim()).map(Some).map_err(|_| malformed());
            }
        }
        Ok(None)
    }

    /// Remembers `key` for `addr`.
    ///
    /// # Errors
    /// If the file cannot be written.
    pub fn remember(&self, addr: &str, key: &PublicKey) -> Result<(), KnownHostsError> {
        let io = |source| KnownHostsError::Io { path: self.path.clone(), source };
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&self.path).map_err(io)?;
        writeln!(file, "{addr} {}", key.to_hex()).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_key_is_found_by_its_address_only() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let hosts = KnownHosts::at(dir.path().join("sub/known_hosts"));
        let (a, b) =
            (roam_keys::SecretKey::from_seed([1; 32]).public(), roam_keys::SecretKey::from_seed([2; 32]).public());
        assert_eq!(hosts.lookup("127.0.0.1:7700")?, None);
        hosts.remember("127.0.0.1:7700", &a)?;
        hosts.remember("127.0.0.1:7701", &b)?;
        assert_eq!(hosts.lookup("127.0.0.1:7700")?, Some(a));
        assert_eq!(hosts.lookup("127.0.0.1:7701")?, Some(b));
        assert_eq!(hosts.lookup("127.0.0.1:770")?, None);
        std::fs::write(hosts.path(), "# a comment\n\n127.0.0.1:7702 nothex\n")?;
        assert!(matches!(hosts.lookup("127.0.0.1:7702"), Err(KnownHostsError::Malformed { line: 3, .. })));
        Ok(())
    }
}
