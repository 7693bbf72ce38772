//! Who may ask this host for what: the access policy.
//!
//! A module's signer says what the module may touch; the access policy says who may ask the host
//! to run it, publish, fetch, launch, list, recall or administer. Callers are known by the key
//! their client proves in the TLS handshake (`--identity`); a client that proves none is
//! anonymous. The policy is `access.toml` in the trust store's directory (or the file host.toml's
//! `access` names):
//!
//! ```toml
//! [clients]                 # people's client keys, by name (the hex of their NAME.pub)
//! alice = "<64 hex>"
//! bob = "<64 hex>"
//!
//! [groups]
//! analysts = ["alice", "bob"]
//!
//! [allow]                   # each right: client names, groups, "identified" (any client that
//! eval = ["analysts"]       # proves a key) or "anyone" (anonymous callers too)
//! publish = ["alice"]
//! fetch_code = ["anyone"]   # the default, the only right anyone has without this file
//! fetch_query = ["analysts"]
//! fetch_agent = ["alice"]
//! list = ["analysts"]       # list the modules this host holds
//! launch = ["alice"]        # launch agents, and see one's own
//! recall = ["alice"]        # recall one's own agents
//! admin = ["alice"]         # see and recall every agent
//!
//! [eval_capabilities]       # optional: a client or group evaluates only modules whose
//! bob = ["table:sales"]     # capabilities all match these (exact, or a prefix ending in '*')
//! ```
//!
//! The host's peers (other hosts, proven by their keys) may always fetch agent and code modules:
//! that is how agents' code travels.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use roam_keys::{Kind, PublicKey};
use serde::Deserialize;

use crate::protocol::{ErrorKind, RemoteError};

/// The access policy's file name, in the trust store's directory.
pub const ACCESS_FILE: &str = "access.toml";

/// What a caller may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Right {
    /// Evaluate a query module.
    Eval,
    /// Publish a code or agent module to the host's repository.
    Publish,
    /// Fetch (or resolve) a code module: code on demand.
    FetchCode,
    /// Fetch (or resolve) a query module.
    FetchQuery,
    /// Fetch (or resolve) an agent module.
    FetchAgent,
    /// List the modules the host holds.
    List,
    /// Launch agents (and see one's own).
    Launch,
    /// Recall one's own agents.
    Recall,
    /// See and recall every agent.
    Admin,
}

impl Right {
    /// The right that fetching a module of `kind` needs.
    pub fn fetch(kind: Kind) -> Self {
        match kind {
            Kind::Code => Self::FetchCode,
            Kind::Query => Self::FetchQuery,
            Kind::Agent => Self::FetchAgent,
        }
    }

    /// The right's name in the policy file.
    pub fn name(self) -> &'static str {
        match self {
            Self::Eval => "eval",
            Self::Publish => "publish",
            Self::FetchCode => "fetch_code",
            Self::FetchQuery => "fetch_query",
            Self::FetchAgent => "fetch_agent",
            Self::List => "list",
            Self::Launch => "launch",
            Self::Recall => "recall",
            Self::Admin => "admin",
        }
    }
}

/// Why an access policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The file could not be read.
    #[error("cannot read the access policy {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid policy.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    clients: BTreeMap<String, String>,
    #[serde(default)]
    groups: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    allow: BTreeMap<Right, Vec<String>>,
    #[serde(default)]
    eval_capabilities: BTreeMap<String, Vec<String>>,
}

/// Who is granted a right.
#[derive(Clone, Debug, Default)]
struct Grant {
    anyone: bool,
    identified: bool,
    keys: BTreeSet<PublicKey>,
}

/// A host's access policy.
#[derive(Clone, Debug)]
pub struct Access {
    /// Where it came from (or would): named in every refusal.
    path: PathBuf,
    /// Client keys by name, and names by key.
    names: BTreeMap<PublicKey, String>,
    grants: BTreeMap<Right, Grant>,
    /// The capabilities a client's evaluations may ask for, if it is restricted.
    eval_capabilities: BTreeMap<PublicKey, Vec<String>>,
}

impl Access {
    /// The policy without a file: anyone may fetch code modules, and nobody may do anything
    /// else. `path` is where the operator would write the file.
    pub fn closed(path: PathBuf) -> Self {
        let anyone = Grant { anyone: true, ..Grant::default() };
        Self {
            path,
            names: BTreeMap::new(),
            grants: BTreeMap::from([(Right::FetchCode, anyone)]),
            eval_capabilities: BTreeMap::new(),
        }
    }

    /// Reads the policy at `path`; a missing file is [`Access::closed`].
    ///
    /// # Errors
    /// If the file cannot be read, does not parse, or names a client or group it does not define.
    pub fn load(path: &Path) -> Result<Self, AccessError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::closed(path.to_owned())),
            Err(source) => return Err(AccessError::Read { path: path.to_owned(), source }),
        };
        Self::parse(&text, path)
    }

    /// Parses a policy's text; `path` is named in errors and refusals.
    ///
    /// # Errors
    /// As [`Access::load`].
    pub fn parse(text: &str, path: &Path) -> Result<Self, AccessError> {
        let invalid = |message: String| AccessError::Invalid { path: path.to_owned(), message };
        let file: File = toml::from_str(text).map_err(|e| invalid(e.message().to_owned()))?;
        let mut keys = BTreeMap::new();
        let mut names = BTreeMap::new();
        if let Some(reserved) =
            ["anyone", "identified"].into_iter().find(|r| file.clients.contains_key(*r) || file.groups.contains_key(*r))
        {
            return Err(invalid(format!(
                "{reserved:?} means something in [allow]; a client or group cannot be named so"
            )));
        }
        for (name, hex) in &file.clients {
            let key = PublicKey::from_hex(hex.trim()).map_err(|e| invalid(format!("clients.{name}: {e}")))?;
            if let Some(other) = names.insert(key, name.clone()) {
                return Err(invalid(format!("clients {other} and {name} have the same key")));
            }
            keys.insert(name.as_str(), key);
        }
        for (group, members) in &file.groups {
            if keys.contains_key(group.as_str()) {
                return Err(invalid(format!("{group} is both a client and a group")));
            }
            if let Some(unknown) = members.iter().find(|m| !keys.contains_key(m.as_str())) {
                return Err(invalid(format!("group {group} names {unknown:?}, which is not in [clients]")));
            }
        }
        let mut access = Self::closed(path.to_owned());
        for (right, who) in file.allow {
            let mut grant = Grant::default();
            for entry in who {
                match entry.as_str() {
                    "anyone" => grant.anyone = true,
                    "identified" => grant.identified = true,
                    name => match (keys.get(name), file.groups.get(name)) {
                        (Some(key), _) => {
                            grant.keys.insert(*key);
                        }
                        (None, Some(members)) => grant.keys.extend(members.iter().filter_map(|m| keys.get(m.as_str()))),
                        (None, None) => {
                            return Err(invalid(format!(
                                "allow.{} names {name:?}, which is neither a client, a group, \"identified\" nor \"anyone\"",
                                right.name()
                            )));
                        }
                    },
                }
            }
            access.grants.insert(right, grant);
        }
        for (name, patterns) in file.eval_capabilities {
            let members: Vec<PublicKey> = match (keys.get(name.as_str()), file.groups.get(&name)) {
                (Some(key), _) => vec![*key],
                (None, Some(members)) => members.iter().filter_map(|m| keys.get(m.as_str()).copied()).collect(),
                (None, None) => {
                    return Err(invalid(format!(
                        "eval_capabilities names {name:?}, which is neither a client nor a group"
                    )));
                }
            };
            for key in members {
                access.eval_capabilities.entry(key).or_default().extend(patterns.iter().cloned());
            }
        }
        // A restriction that calling without one's key would escape is no restriction.
        if !access.eval_capabilities.is_empty()
            && access.grants.get(&Right::Eval).is_some_and(|g| g.anyone || g.identified)
        {
            return Err(invalid(
                "[eval_capabilities] restricts some clients, but [allow] eval grants \"anyone\" or \"identified\": \
                 they could evaluate without their key, or with another"
                    .into(),
            ));
        }
        access.names = names;
        Ok(access)
    }

    /// Whether `caller` (a proven client key, or `None` for anonymous) holds `right`.
    pub fn allows(&self, right: Right, caller: Option<&PublicKey>) -> bool {
        self.grants
            .get(&right)
            .is_some_and(|g| g.anyone || caller.is_some_and(|key| g.identified || g.keys.contains(key)))
    }

    /// Checks that `caller` holds `right`.
    ///
    /// # Errors
    /// A refusal that names the caller, the right and the file that grants it.
    pub fn check(&self, right: Right, caller: Option<&PublicKey>) -> Result<(), RemoteError> {
        if self.allows(right, caller) {
            return Ok(());
        }
        let who = self.caller(caller);
        Err(RemoteError::new(
            ErrorKind::Denied,
            format!(
                "this host does not grant {who} the right {}; its operator grants it in {} ([allow] {} = [...])",
                right.name(),
                self.path.display(),
                right.name()
            ),
        ))
    }

    /// What the log says of the policy when it is loaded.
    pub fn describe_policy(&self) -> String {
        let granted: Vec<String> = self
            .grants
            .iter()
            .filter(|(_, g)| g.anyone || g.identified || !g.keys.is_empty())
            .map(|(right, g)| {
                let who = if g.anyone {
                    "anyone".to_owned()
                } else if g.identified {
                    "identified clients".to_owned()
                } else {
                    format!("{} clients", g.keys.len())
                };
                format!("{} to {who}", right.name())
            })
            .collect();
        let from = if self.path.exists() { "" } else { " (no such file: the defaults)" };
        format!(
            "{}{from}: grants {}",
            self.path.display(),
            if granted.is_empty() { "nothing".to_owned() } else { granted.join(", ") }
        )
    }

    /// The file the policy comes from (or would).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks that `caller` may evaluate a module that asks for `capabilities`: a client whose
    /// evaluations are restricted (`[eval_capabilities]`) only if each matches its patterns.
    ///
    /// # Errors
    /// A refusal that names the capability and the file.
    pub fn check_eval(&self, caller: Option<&PublicKey>, capabilities: &[String]) -> Result<(), RemoteError> {
        let Some(patterns) = caller.and_then(|k| self.eval_capabilities.get(k)) else { return Ok(()) };
        let allowed = |cap: &String| patterns.iter().any(|p| roam_keys::Policy::pattern_allows(p, cap));
        match capabilities.iter().find(|cap| !allowed(cap)) {
            None => Ok(()),
            Some(cap) => Err(RemoteError::new(
                ErrorKind::Denied,
                format!(
                    "{} may evaluate only modules whose capabilities match {patterns:?} ([eval_capabilities] in {}); \
                     this one asks for {cap}",
                    self.caller(caller),
                    self.path.display()
                ),
            )),
        }
    }

    /// Whether the policy names `key` among its clients.
    pub fn names(&self, key: &PublicKey) -> bool {
        self.names.contains_key(key)
    }

    /// Who `caller` is, for refusals.
    pub fn caller(&self, caller: Option<&PublicKey>) -> String {
        match caller {
            None => "an anonymous client (give your key with --identity)".to_owned(),
            Some(key) => format!("client {}", self.describe(key)),
        }
    }

    /// A caller as people know it: its name in the policy, else its key.
    pub fn describe(&self, key: &PublicKey) -> String {
        match self.names.get(key) {
            Some(name) => format!("{name} ({}…)", &key.to_hex()[..16]),
            None => key.to_hex(),
        }
    }
}

/// How many launches and publishes each caller has made in the current hour, to hold them to
/// the host's quotas.
#[derive(Debug)]
pub struct Quotas {
    launches: u32,
    publishes: u32,
    used: std::sync::Mutex<crate::cache::Bounded<(Right, Option<PublicKey>), Window>>,
}

/// When a caller's hour began, and how many times it used a right since.
type Window = (std::time::Instant, u32);

/// The window a quota counts in.
const QUOTA_WINDOW: std::time::Duration = std::time::Duration::from_secs(3600);
/// How many callers' counts are kept: more than a host has clients in an hour.
const QUOTA_CALLERS: usize = 65_536;

impl Quotas {
    /// Quotas of `launches` and `publishes` per caller and hour.
    pub fn new(launches: u32, publishes: u32) -> Self {
        Self { launches, publishes, used: std::sync::Mutex::new(crate::cache::Bounded::new(QUOTA_CALLERS)) }
    }

    /// Counts one use of `right` (launch or publish) by `caller`, if its quota allows it.
    ///
    /// # Errors
    /// A `busy` refusal that says when the caller may go on.
    pub fn take(&self, right: Right, caller: Option<&PublicKey>, who: &str) -> Result<(), RemoteError> {
        let (limit, what, setting) = match right {
            Right::Launch => (self.launches, "launched agents", "launches_per_hour"),
            Right::Publish => (self.publishes, "published modules", "publishes_per_hour"),
            _ => return Ok(()),
        };
        let mut used = crate::sync::lock(&self.used);
        let key = (right, caller.copied());
        let now = std::time::Instant::now();
        let (since, count) = match used.get(&key) {
            Some(&(since, count)) if now.duration_since(since) < QUOTA_WINDOW => (since, count),
            _ => (now, 0),
        };
        if count >= limit {
            let wait = QUOTA_WINDOW.saturating_sub(now.duration_since(since)).as_secs() + 1;
            return Err(RemoteError::new(
                ErrorKind::Busy,
                format!(
                    "{who} has {what} {count} times this hour, the most this host allows (limits.{setting}); retry in \
                     {wait} s"
                ),
            ));
        }
        used.insert(key, (since, count + 1));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const BOB: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    fn key(hex: &str) -> Result<PublicKey, roam_keys::KeyError> {
        PublicKey::from_hex(hex)
    }

    #[test]
    fn without_a_file_anyone_fetches_code_and_nobody_does_anything_else() -> Result<(), Box<dyn std::error::Error>> {
        let access = Access::closed(PathBuf::from("trust/access.toml"));
        assert!(access.allows(Right::FetchCode, None));
        let alice = key(ALICE)?;
        for right in [Right::Eval, Right::Publish, Right::FetchQuery, Right::Launch, Right::List, Right::Admin] {
            assert!(!access.allows(right, None) && !access.allows(right, Some(&alice)), "{right:?}");
        }
        let refusal = access.check(Right::FetchQuery, None).err().ok_or("allowed")?;
        assert_eq!(refusal.kind, ErrorKind::Denied);
        assert!(refusal.message.contains("fetch_query") && refusal.message.contains("trust/access.toml"), "{refusal}");
        Ok(())
    }

    #[test]
    fn rights_go_to_clients_groups_the_identified_and_anyone() -> Result<(), Box<dyn std::error::Error>> {
        let text = format!(
            "[clients]\nalice = \"{ALICE}\"\nbob = \"{BOB}\"\n[groups]\nanalysts = [\"alice\", \"bob\"]\n\
             [allow]\neval = [\"analysts\"]\nlaunch = [\"alice\"]\nlist = [\"identified\"]\nfetch_query = [\"anyone\"]\n"
        );
        let access = Access::parse(&text, Path::new("access.toml"))?;
        let (alice, bob, stranger) = (key(ALICE)?, key(BOB)?, key(&"3".repeat(64))?);
        assert!(access.allows(Right::Eval, Some(&bob)) && !access.allows(Right::Eval, Some(&stranger)));
        assert!(access.allows(Right::Launch, Some(&alice)) && !access.allows(Right::Launch, Some(&bob)));
        assert!(access.allows(Right::List, Some(&stranger)) && !access.allows(Right::List, None));
        assert!(access.allows(Right::FetchQuery, None));
        // A file that grants fetch_code to nobody takes even that away.
        let access = Access::parse("[allow]\nfetch_code = []\n", Path::new("access.toml"))?;
        assert!(!access.allows(Right::FetchCode, None));
        Ok(())
    }

    #[test]
    fn a_client_may_be_held_to_queries_asking_for_some_capabilities() -> Result<(), Box<dyn std::error::Error>> {
        let text = format!(
            "[clients]\nalice = \"{ALICE}\"\nbob = \"{BOB}\"\n[groups]\nsales = [\"bob\"]\n\
             [allow]\neval = [\"alice\", \"sales\"]\n[eval_capabilities]\nsales = [\"table:sales\", \"log:*\"]\n"
        );
        let access = Access::parse(&text, Path::new("access.toml"))?;
        let (alice, bob) = (key(ALICE)?, key(BOB)?);
        let caps = |c: &[&str]| c.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        access.check_eval(Some(&bob), &caps(&["table:sales", "log:audit"]))?;
        access.check_eval(Some(&bob), &[])?;
        let refusal = access.check_eval(Some(&bob), &caps(&["table:sales", "table:stock"])).err().ok_or("allowed")?;
        assert!(refusal.message.contains("table:stock") && refusal.message.contains("eval_capabilities"), "{refusal}");
        access.check_eval(Some(&alice), &caps(&["table:stock"]))?;
        Ok(())
    }

    #[test]
    fn a_policy_that_names_what_it_does_not_define_is_refused() {
        for text in [
            "[allow]\neval = [\"alcie\"]\n".to_owned(),
            "[allow]\nevaluate = [\"anyone\"]\n".to_owned(),
            format!("[clients]\nalice = \"{ALICE}\"\n[groups]\nops = [\"alice\", \"bob\"]\n"),
            "[clients]\nalice = \"not hex\"\n".to_owned(),
            format!("[clients]\nalice = \"{ALICE}\"\nbob = \"{ALICE}\"\n"),
            "[eval_capabilities]\nnobody = [\"table:sales\"]\n".to_owned(),
            "[clients]\nanyone = \"1111111111111111111111111111111111111111111111111111111111111111\"\n".to_owned(),
            format!(
                "[clients]\nbob = \"{BOB}\"\n[allow]\neval = [\"identified\"]\n[eval_capabilities]\nbob = [\"log:*\"]\n"
            ),
        ] {
            assert!(Access::parse(&text, Path::new("access.toml")).is_err(), "{text}");
        }
    }
}
