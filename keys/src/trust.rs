//! The local trust store: which signers a host accepts, and what each may ask for.
//!
//! A trust store is a directory of `NAME.pub` files plus an optional `policy.toml`:
//!
//! ```toml
//! revoked = ["<64-hex public key>"]      # refused even if its .pub file is present
//! [keys.alice]                            # by key name (the .pub file's stem)
//! capabilities = ["table:sales", "log:*"] # exact, or a prefix ending in '*'; "*" = all
//! kinds = ["query", "code"]               # optional; default: all kinds
//! ```
//!
//! Without `policy.toml`, every trusted key may use every capability and kind. With it, a key
//! that has no `[keys.NAME]` table may use no capability (it can still sign modules that request
//! none) and every kind.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use crate::claims::Kind;
use crate::key::{KeyError, PUBLIC_EXT, PublicKey};

/// The policy file's name inside a trust store directory.
pub const POLICY_FILE: &str = "policy.toml";

/// Why a trust store or policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The trust store directory does not exist.
    #[error(
        "trust store directory {path} does not exist; create it and copy the .pub files of the \
         signers you trust into it"
    )]
    MissingDir {
        /// The directory.
        path: PathBuf,
    },
    /// Reading the directory or one of its files failed.
    #[error("could not read {path} in the trust store: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What the operating system reported.
        #[source]
        source: io::Error,
    },
    /// A `.pub` file is malformed; the inner error names it.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A `.pub` file's name is not valid UTF-8, so it cannot be a key name.
    #[error("{path}: the file name is not valid UTF-8; rename it, the stem is the key's name")]
    BadFileName {
        /// The file.
        path: PathBuf,
    },
    /// The same public key is in two `.pub` files, so it is unclear which policy applies.
    #[error(
        "key {key} is in both {first} and {second}; keep one file per key, since the policy \
         applies by file name"
    )]
    DuplicateKey {
        /// The key.
        key: PublicKey,
        /// The file loaded first.
        first: PathBuf,
        /// The file loaded second.
        second: PathBuf,
    },
    /// The policy file is malformed.
    #[error("{path}:{line}: {message}; fix the policy file")]
    BadPolicy {
        /// The policy file.
        path: PathBuf,
        /// The 1-based line the problem is on.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// A key the host trusts, under the name it was installed as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedKey {
    /// The `.pub` file's stem; what the policy and error messages call the key.
    pub name: String,
    /// The key itself.
    pub key: PublicKey,
}

/// A host's policy: revoked keys and what each named key may ask for.
///
/// `Policy::default()` is a policy file with nothing in it: no revocations, and no key may use
/// any capability.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Keys refused even if their `.pub` file is present, so that revoking a key does not
    /// depend on every host deleting a file.
    #[serde(default, deserialize_with = "hex_keys")]
    pub revoked: BTreeSet<PublicKey>,
    /// What each key (by name) may use; a key missing here may use no capability.
    #[serde(default)]
    pub keys: BTreeMap<String, KeyPolicy>,
}

/// What one key may use.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPolicy {
    /// Capability patterns: an exact capability, a prefix ending in `*`, or `*` for all.
    #[serde(default, deserialize_with = "capability_patterns")]
    pub capabilities: Vec<String>,
    /// The kinds of module the key may sign; `None` means all kinds.
    #[serde(default)]
    pub kinds: Option<Vec<Kind>>,
}

impl Policy {
    /// Parses the text of a `policy.toml`.
    ///
    /// # Errors
    /// [`TrustError::BadPolicy`] with the line of the problem; the path reported is
    /// `policy.toml`, since the text has no file of its own.
    pub fn parse(text: &str) -> Result<Policy, TrustError> {
        Self::parse_file(text, Path::new(POLICY_FILE))
    }

    fn parse_file(text: &str, path: &Path) -> Result<Policy, TrustError> {
        toml::from_str(text).map_err(|e| {
            let line =
                e.span().and_then(|span| text.get(..span.start)).map_or(1, |before| before.matches('\n').count() + 1);
            TrustError::BadPolicy { path: path.to_owned(), line, message: e.message().trim_end().to_owned() }
        })
    }

    /// Whether `pattern` grants `capability`: an exact match, or a pattern ending in `*` that
    /// is a prefix of it (`"*"` grants everything). Hosts use the same rule to match a module's
    /// requested capabilities against what it asks for at run time.
    pub fn pattern_allows(pattern: &str, capability: &str) -> bool {
        match pattern.strip_suffix('*') {
            Some(prefix) => capability.starts_with(prefix),
            None => pattern == capability,
        }
    }
}

/// Revoked keys are written as hex strings, each parsed on its own so that an error points at
/// the bad entry's line.
fn hex_keys<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeSet<PublicKey>, D::Error> {
    let keys: Vec<Checked<PublicKey>> = Vec::deserialize(d)?;
    Ok(keys.into_iter().map(|k| k.0).collect())
}

/// Capability patterns must be non-empty, without whitespace, with `*` only at the end: a `*`
/// elsewhere would silently be matched literally, which is never what the author meant.
fn capability_patterns<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let patterns: Vec<Checked<String>> = Vec::deserialize(d)?;
    Ok(patterns.into_iter().map(|p| p.0).collect())
}

/// A string checked while it is deserialized. The check runs inside the visitor, not after
/// deserialization, because only then does the TOML parser attach the string's own position
/// (rather than the enclosing array's) to the error.
struct Checked<T>(T);

/// How a [`Checked`] string is turned into its value.
trait CheckStr: Sized {
    /// What the visitor reports it expected.
    const EXPECTING: &'static str;
    fn check(s: &str) -> Result<Self, String>;
}

impl CheckStr for PublicKey {
    const EXPECTING: &'static str = "a public key as 64 hex characters";
    fn check(s: &str) -> Result<Self, String> {
        PublicKey::from_hex(s).map_err(|e| e.to_string())
    }
}

impl CheckStr for String {
    const EXPECTING: &'static str = "a capability pattern";
    fn check(s: &str) -> Result<Self, String> {
        let head = s.strip_suffix('*').unwrap_or(s);
        if s.is_empty() || s.chars().any(char::is_whitespace) || head.contains('*') {
            return Err(format!(
                "invalid capability pattern {s:?}: use an exact capability such as \
                 \"table:sales\", a prefix ending in '*' such as \"log:*\", or \"*\""
            ));
        }
        Ok(s.to_owned())
    }
}

impl<'de, T: CheckStr> Deserialize<'de> for Checked<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<T>(std::marker::PhantomData<T>);
        impl<T: CheckStr> serde::de::Visitor<'_> for Visitor<T> {
            type Value = Checked<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(T::EXPECTING)
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
                T::check(s).map(Checked).map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor(std::marker::PhantomData))
    }
}

/// The keys a host trusts, and its policy for them.
#[derive(Clone, Debug, Default)]
pub struct TrustStore {
    /// Looked up by key: a module names its signer by key, never by name.
    keys: BTreeMap<PublicKey, TrustedKey>,
    /// `None` when there is no policy file, which means "trusted keys may do anything".
    policy: Option<Policy>,
}

impl TrustStore {
    /// Loads every `*.pub` file in `dir` (the file stem is the key's name) and `dir/policy.toml`
    /// if present. Hidden files (starting with `.`) and other files are ignored.
    ///
    /// # Errors
    /// [`TrustError::MissingDir`] if `dir` does not exist; [`TrustError::Key`] naming a
    /// malformed `.pub` file; [`TrustError::DuplicateKey`]; [`TrustError::BadPolicy`];
    /// [`TrustError::Io`].
    pub fn load(dir: &Path) -> Result<Self, TrustError> {
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| TrustError::Io { path, source }
        };
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(TrustError::MissingDir { path: dir.to_owned() });
            }
            Err(e) => return Err(io_err(dir)(e)),
        };

        // Sorted, so that which of two duplicate files is "first" does not depend on the
        // order the file system happens to list them in.
        let mut paths = Vec::new();
        for entry in entries {
            let path = entry.map_err(io_err(dir))?.path();
            let is_pub = path.extension().is_some_and(|e| e == PUBLIC_EXT);
            let hidden = path.file_name().is_some_and(|n| n.as_encoded_bytes().starts_with(b"."));
            if is_pub && !hidden {
                paths.push(path);
            }
        }
        paths.sort();

        let mut store = TrustStore::empty();
        let mut origin: BTreeMap<PublicKey, PathBuf> = BTreeMap::new();
        for path in paths {
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                return Err(TrustError::BadFileName { path });
            };
            let key = PublicKey::load(&path)?;
            if let Some(first) = origin.get(&key) {
                return Err(TrustError::DuplicateKey { key, first: first.clone(), second: path });
            }
            store = store.with_key(name, key);
            origin.insert(key, path);
        }

        let policy_path = dir.join(POLICY_FILE);
        match fs::read_to_string(&policy_path) {
            Ok(text) => Ok(store.with_policy(Policy::parse_file(&text, &policy_path)?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(store),
            Err(e) => Err(io_err(&policy_path)(e)),
        }
    }

    /// A store that trusts no key and has no policy.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Adds `key` under `name`, replacing any key previously stored under that name and any
    /// name previously given to that key, as replacing the `.pub` file would.
    pub fn with_key(mut self, name: &str, key: PublicKey) -> Self {
        self.keys.retain(|_, k| k.name != name);
        self.keys.insert(key, TrustedKey { name: name.to_owned(), key });
        self
    }

    /// Sets the policy, as a `policy.toml` in the directory would.
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// The policy, if there is one.
    pub fn policy(&self) -> Option<&Policy> {
        self.policy.as_ref()
    }

    /// What in the policy is likely a mistake, though it loads: an entry for a key name the
    /// store holds no `.pub` for (a typo leaves the real key without capabilities), and
    /// capabilities that name no kind of resource (`tables:sales`).
    pub fn warnings(&self) -> Vec<String> {
        let Some(policy) = &self.policy else { return Vec::new() };
        let mut warnings = Vec::new();
        for (name, entry) in &policy.keys {
            if !self.keys.values().any(|k| &k.name == name) {
                warnings.push(format!(
                    "{POLICY_FILE} has [keys.{name}], but the trust store holds no {name}.{PUBLIC_EXT}: the entry \
                     grants nothing (a typo of a key's name?)"
                ));
            }
            for capability in &entry.capabilities {
                if let Some(problem) = crate::capability_problem(capability) {
                    warnings.push(format!(
                        "{POLICY_FILE} grants {name} the capability {capability:?}, which matches nothing: {problem}"
                    ));
                }
            }
        }
        warnings
    }

    /// The trusted key, if `key` is in the store. Revoked keys are still returned; check
    /// [`TrustStore::is_revoked`].
    pub fn get(&self, key: &PublicKey) -> Option<&TrustedKey> {
        self.keys.get(key)
    }

    /// Whether the policy revokes `key`.
    pub fn is_revoked(&self, key: &PublicKey) -> bool {
        self.policy.as_ref().is_some_and(|p| p.revoked.contains(key))
    }

    /// Whether `key` is trusted, not revoked, and may use `capability`.
    pub fn allows(&self, key: &PublicKey, capability: &str) -> bool {
        match self.usable(key) {
            None => false,
            Some((_, None)) => true,
            Some((trusted, Some(policy))) => policy
                .keys
                .get(&trusted.name)
                .is_some_and(|k| k.capabilities.iter().any(|pattern| Policy::pattern_allows(pattern, capability))),
        }
    }

    /// Whether `key` is trusted, not revoked, and may sign modules of `kind`.
    pub fn allows_kind(&self, key: &PublicKey, kind: Kind) -> bool {
        match self.usable(key) {
            None => false,
            Some((_, None)) => true,
            Some((trusted, Some(policy))) => {
                policy.keys.get(&trusted.name).and_then(|k| k.kinds.as_ref()).is_none_or(|kinds| kinds.contains(&kind))
            }
        }
    }

    /// Every key in the store, revoked ones included, ordered by key.
    pub fn keys(&self) -> impl Iterator<Item = &TrustedKey> {
        self.keys.values()
    }

    /// The trusted entry and the policy, if `key` is trusted and not revoked.
    fn usable(&self, key: &PublicKey) -> Option<(&TrustedKey, Option<&Policy>)> {
        if self.is_revoked(key) {
            return None;
        }
        self.keys.get(key).map(|k| (k, self.policy.as_ref()))
    }
}
