//! The host's durable state: one SQLite database under the data directory.
//!
//! It indexes the modules the host holds (their bytes live next to it, content-addressed), the
//! highest version accepted under each module name (rollback protection survives restarts), and
//! the lines modules append to log resources. WAL with `synchronous = FULL`: a committed write
//! survives a crash.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use roam_keys::{Claims, Kind, ModuleHash, PublicKey, VersionHistory};
use serde::{Deserialize, Serialize};

use rusqlite::{Connection, OptionalExtension, params};

use crate::sync::lock;

/// A module a host holds, as listed and resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleInfo {
    /// SHA-256 of the signed file: what it is fetched by.
    pub hash: ModuleHash,
    /// Its signed kind.
    pub kind: Kind,
    /// Its signed name.
    pub name: String,
    /// Its signed version.
    pub version: semver::Version,
    /// Who signed it.
    pub signer: PublicKey,
    /// Size of the signed file.
    pub size: u64,
    /// How many times a client started downloading it.
    pub downloads: u64,
}

/// A failure of the host's state database or module store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The disk under the data directory is full: nothing was written, and whatever asked for
    /// the write was refused, so it can be retried once there is space.
    #[error("{path}: the disk is full; nothing was written (free space under the data directory, then retry)")]
    Full {
        /// The file that could not be written.
        path: PathBuf,
    },
    /// The state database is damaged or is not a database at all. roam does not repair it:
    /// silently starting afresh would lose the modules, agents and versions it records.
    #[error(
        "host state database {path} is corrupt ({detail}); restore it from a backup, or move it \
         aside to start with an empty state (its agents, modules and accepted versions are then lost)"
    )]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// SQLite's description.
        detail: String,
    },
    /// SQLite failed.
    #[error("host state database {path}: {source}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// A module file could not be read or written.
    #[error("module store {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl StateError {
    /// A SQLite failure on `path`, told apart: a full disk and a damaged file each say so.
    fn db(path: &Path, source: rusqlite::Error) -> Self {
        let path = path.to_path_buf();
        match source.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => Self::Full { path },
            Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => {
                Self::Corrupt { path, detail: source.to_string() }
            }
            _ => Self::Db { path, source },
        }
    }

    /// An I/O failure on `path`; a full disk says so.
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        let path = path.to_path_buf();
        if source.kind() == std::io::ErrorKind::StorageFull { Self::Full { path } } else { Self::Io { path, source } }
    }
}

/// The host's state database and module store.
#[derive(Debug)]
pub struct State {
    path: PathBuf,
    modules_dir: PathBuf,
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS modules (
    hash      TEXT PRIMARY KEY,
    kind      TEXT NOT NULL,
    name      TEXT NOT NULL,
    version   TEXT NOT NULL,
    signer    TEXT NOT NULL,
    size      INTEGER NOT NULL,
    stored_at INTEGER NOT NULL,
    downloads INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS modules_by_name ON modules (name);
CREATE TABLE IF NOT EXISTS accepted_versions (
    name    TEXT PRIMARY KEY,
    version TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS resolutions (
    source TEXT NOT NULL,
    spec   TEXT NOT NULL,
    hash   TEXT NOT NULL,
    PRIMARY KEY (source, spec)
);
CREATE TABLE IF NOT EXISTS log_entries (
    id       INTEGER PRIMARY KEY,
    resource TEXT NOT NULL,
    at       INTEGER NOT NULL,
    module   TEXT NOT NULL,
    line     TEXT NOT NULL
);
";

impl State {
    /// Opens (creating if needed) the state under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StateError> {
        let path = data_dir.join("state.db");
        let modules_dir = data_dir.join("modules");
        std::fs::create_dir_all(&modules_dir).map_err(|e| StateError::io(&modules_dir, e))?;
        let db = |e| StateError::db(&path, e);
        let conn = Connection::open(&path).map_err(db)?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;")
            .map_err(db)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        // A damaged database stops the host here, before it acts on half of what it recorded.
        // The check reads every page once: about a second per gigabyte.
        let verdict: String = conn.query_row("PRAGMA quick_check(1)", [], |r| r.get(0)).map_err(db)?;
        if verdict != "ok" {
            return Err(StateError::Corrupt { path, detail: verdict });
        }
        conn.set_prepared_statement_cache_capacity(64);
        Ok(Self { path, modules_dir, conn: Mutex::new(conn) })
    }

    /// Turns fsync off (`synchronous = OFF`): a commit then survives a crash of the process
    /// but not of the machine. For measurements and throwaway hosts; hosts are durable by default.
    pub fn set_durable(&self, durable: bool) -> Result<(), StateError> {
        let mode = if durable { "FULL" } else { "OFF" };
        lock(&self.conn).execute_batch(&format!("PRAGMA synchronous = {mode};")).map_err(|e| self.db(e))
    }

    fn db(&self, source: rusqlite::Error) -> StateError {
        StateError::db(&self.path, source)
    }

    fn module_path(&self, hash: &ModuleHash) -> PathBuf {
        self.modules_dir.join(format!("{hash}.wasm"))
    }

    /// Stores a verified module's signed bytes and indexes it. The file is written and synced
    /// before the index row is committed, so the index never names a missing file.
    pub fn store_module(&self, hash: ModuleHash, bytes: &[u8], claims: &Claims) -> Result<(), StateError> {
        let path = self.module_path(&hash);
        if !path.exists() {
            write_file(&path, &[bytes], true).map_err(|e| StateError::io(&path, e))?;
        }
        let conn = lock(&self.conn);
        conn.execute(
            "INSERT OR IGNORE INTO modules (hash, kind, name, version, signer, size, stored_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                hash.to_string(),
                claims.kind.as_str(),
                claims.name,
                claims.version.to_string(),
                claims.signer.to_hex(),
                bytes.len() as i64,
                now_secs() as i64
            ],
        )
        .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// The signed bytes of a stored module, if the host holds it.
    pub fn load_module(&self, hash: &ModuleHash) -> Result<Option<Vec<u8>>, StateError> {
        let path = self.module_path(hash);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StateError::io(&path, e)),
        }
    }

    /// Every module the host holds, by name then version.
    pub fn modules(&self) -> Result<Vec<ModuleInfo>, StateError> {
        let mut all = self.select("", &[])?;
        all.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.version.cmp(&b.version)));
        Ok(all)
    }

    /// The module stored under `hash`, if any.
    pub fn module(&self, hash: &ModuleHash) -> Result<Option<ModuleInfo>, StateError> {
        Ok(self.select("WHERE hash = ?1", &[&hash.to_string()])?.pop())
    }

    /// The module of `name` with `version`, or with the highest version if `None`.
    pub fn resolve(&self, name: &str, version: Option<&semver::Version>) -> Result<Option<ModuleInfo>, StateError> {
        let all = self.select("WHERE name = ?1", &[&name])?;
        Ok(all.into_iter().filter(|m| version.is_none_or(|v| &m.version == v)).max_by(|a, b| a.version.cmp(&b.version)))
    }

    /// Forgets a stored module (its file and its index row), e.g. after it was found corrupt.
    pub fn remove_module(&self, hash: &ModuleHash) -> Result<(), StateError> {
        let path = self.module_path(hash);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StateError::io(&path, e)),
        }
        lock(&self.conn).execute("DELETE FROM modules WHERE hash = ?1", [hash.to_string()]).map_err(|e| self.db(e))?;
        Ok(())
    }

    /// What `spec` (a name, or name@version) resolved to at `source` when last asked.
    pub fn resolution(&self, source: &str, spec: &str) -> Result<Option<ModuleHash>, StateError> {
        let hash: Option<String> = lock(&self.conn)
            .query_row("SELECT hash FROM resolutions WHERE source = ?1 AND spec = ?2", [source, spec], |r| r.get(0))
            .optional()
            .map_err(|e| self.db(e))?;
        Ok(hash.and_then(|h| h.parse().ok()))
    }

    /// Remembers what `spec` resolved to at `source`.
    pub fn set_resolution(&self, source: &str, spec: &str, hash: &ModuleHash) -> Result<(), StateError> {
        lock(&self.conn)
            .execute(
                "INSERT INTO resolutions (source, spec, hash) VALUES (?1, ?2, ?3)
                 ON CONFLICT(source, spec) DO UPDATE SET hash = excluded.hash",
                params![source, spec, hash.to_string()],
            )
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// Counts one download of `hash`.
    pub fn count_download(&self, hash: &ModuleHash) -> Result<(), StateError> {
        lock(&self.conn)
            .execute("UPDATE modules SET downloads = downloads + 1 WHERE hash = ?1", [hash.to_string()])
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    fn select(&self, filter: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<ModuleInfo>, StateError> {
        let conn = lock(&self.conn);
        let sql = format!("SELECT hash, kind, name, version, signer, size, downloads FROM modules {filter}");
        let mut stmt = conn.prepare_cached(&sql).map_err(|e| self.db(e))?;
        let rows = stmt
            .query_map(args, |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, i64>(6)?,
                ))
            })
            .map_err(|e| self.db(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (hash, kind, name, version, signer, size, downloads) = row.map_err(|e| self.db(e))?;
            // Rows are written only from verified claims; one that does not parse back was
            // not written by this host, and is skipped rather than trusted.
            let (Ok(hash), Ok(kind), Ok(version), Ok(signer)) =
                (hash.parse(), kind.parse(), semver::Version::parse(&version), roam_keys::PublicKey::from_hex(&signer))
            else {
                continue;
            };
            out.push(ModuleInfo {
                hash,
                kind,
                name,
                version,
                signer,
                size: size.max(0) as u64,
                downloads: downloads.max(0) as u64,
            });
        }
        Ok(out)
    }

    /// Reads up to `max` bytes of a stored module from `offset`, with the file's total size.
    pub fn read_module_chunk(
        &self,
        hash: &ModuleHash,
        offset: u64,
        max: usize,
    ) -> Result<Option<(u64, Vec<u8>)>, StateError> {
        use std::io::{Read, Seek, SeekFrom};
        let path = self.module_path(hash);
        let io = |e| StateError::io(&path, e);
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let total = file.metadata().map_err(io)?.len();
        let start = offset.min(total);
        file.seek(SeekFrom::Start(start)).map_err(io)?;
        let mut bytes = Vec::with_capacity(max.min((total - start) as usize));
        file.take(max as u64).read_to_end(&mut bytes).map_err(io)?;
        Ok(Some((total, bytes)))
    }

    /// Records that `version` of `name` was accepted, if it is the highest so far.
    pub fn accept_version(&self, name: &str, version: &semver::Version) -> Result<(), StateError> {
        let conn = lock(&self.conn);
        let current: Option<String> = conn
            .query_row("SELECT version FROM accepted_versions WHERE name = ?1", [name], |r| r.get(0))
            .optional()
            .map_err(|e| self.db(e))?;
        let newer = current.and_then(|v| semver::Version::parse(&v).ok()).is_none_or(|v| *version > v);
        if newer {
            conn.execute(
                "INSERT INTO accepted_versions (name, version) VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET version = excluded.version",
                params![name, version.to_string()],
            )
            .map_err(|e| self.db(e))?;
        }
        Ok(())
    }

    /// Runs `f` in one transaction on the state database: it commits (and, with
    /// `synchronous = FULL`, is on disk) when `f` returns `Ok`, and rolls back otherwise.
    pub fn transaction<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StateError> {
        let mut conn = lock(&self.conn);
        let tx = conn.transaction().map_err(|e| self.db(e))?;
        let out = f(&tx).map_err(|e| self.db(e))?;
        tx.commit().map_err(|e| self.db(e))?;
        Ok(out)
    }

    /// Appends a line to a log resource.
    pub fn append_log(&self, resource: &str, module: &str, line: &str) -> Result<(), StateError> {
        lock(&self.conn)
            .execute(
                "INSERT INTO log_entries (resource, at, module, line) VALUES (?1, ?2, ?3, ?4)",
                params![resource, now_secs() as i64, module, line],
            )
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// The lines of a log resource, oldest first.
    pub fn log_lines(&self, resource: &str) -> Result<Vec<String>, StateError> {
        let conn = lock(&self.conn);
        let mut stmt =
            conn.prepare("SELECT line FROM log_entries WHERE resource = ?1 ORDER BY id").map_err(|e| self.db(e))?;
        let lines = stmt
            .query_map([resource], |r| r.get(0))
            .and_then(|rows| rows.collect::<Result<Vec<String>, _>>())
            .map_err(|e| self.db(e))?;
        Ok(lines)
    }
}

impl VersionHistory for State {
    fn highest_accepted(&self, name: &str) -> Option<semver::Version> {
        let conn = lock(&self.conn);
        let v: Option<String> = conn
            .query_row("SELECT version FROM accepted_versions WHERE name = ?1", [name], |r| r.get(0))
            .optional()
            .ok()
            .flatten();
        v.and_then(|v| semver::Version::parse(&v).ok())
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Now, in unix milliseconds.
pub fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Writes `parts` to `path` through a temporary file and a rename, so that a crash leaves either
/// the old file or the whole new one, and a failed write (a full disk, say) leaves nothing
/// behind. With `sync`, the data is on disk before the new name appears.
pub(crate) fn write_file(path: &Path, parts: &[&[u8]], sync: bool) -> std::io::Result<()> {
    use std::io::Write;
    // A name of its own per writer: two processes sharing a cache, or two first loads of one
    // module, may write the same file at once.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("{}.{n}.tmp", std::process::id()));
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        for part in parts {
            file.write_all(part)?;
        }
        if sync {
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        // The new name is durable only once its directory is.
        match path.parent() {
            Some(dir) if sync => std::fs::File::open(dir)?.sync_all(),
            _ => Ok(()),
        }
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
