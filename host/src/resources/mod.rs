//! The resources a host offers to the modules it runs: read-only SQL tables and append-only logs.
//!
//! A table is a SQLite database opened read-only, with an authorizer that allows reading only
//! that table (no writes, no ATTACH, no PRAGMA) and a progress handler that stops a statement at
//! the call's deadline. Queries stream: a producer thread steps the statement and encodes rows
//! into CBOR batches while the module consumes the previous batch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use roam_abi::{BATCH_MAX_ROWS, Value};
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};

use crate::state::State;
use crate::sync::lock;

#[cfg(feature = "columnar")]
mod columnar;
#[cfg(not(feature = "columnar"))]
#[path = "columnar_off.rs"]
mod columnar;
pub use columnar::Storage;

/// A batch stops growing past this many encoded bytes, so one batch never needs much memory.
pub(crate) const BATCH_TARGET_BYTES: usize = 256 << 10;
/// Largest single value (text or blob) a statement may produce.
const MAX_VALUE_BYTES: i32 = 8 << 20;
/// Longest line a module may append to a log.
pub const MAX_LOG_LINE: usize = 4096;

/// What kind of resource a host offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceType {
    /// A read-only SQL table.
    Table,
    /// An append-only log of text lines.
    Log,
}

impl ResourceType {
    /// The name used in capabilities (`table:sales`) and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Table => "table",
            Self::Log => "log",
        }
    }
}

/// How a resource is tied to its host (see the design brief's binding table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Attachment {
    /// It can move freely.
    Unattached,
    /// It could move, at a high cost (a database).
    #[default]
    Fastened,
    /// It cannot move.
    Fixed,
}

/// Why a resource could not be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    /// Loading the data behind a table failed.
    #[error("resource {name}: cannot load {path}: {reason}")]
    Load {
        /// The resource.
        name: String,
        /// Its source file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// SQLite refused or failed a statement.
    #[error("{0}")]
    Sql(String),
    /// The statement ran past the call's deadline.
    #[error("the query ran past the deadline")]
    Deadline,
    /// The resource cannot do what was asked of it (column batches from a SQLite table).
    #[error("{0}")]
    Unsupported(String),
}

/// How a cursor's batches lay out their rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// A CBOR array of rows, each an array of values (`table_query`).
    Rows,
    /// Column batches (`table_query_columns`, `roam_abi::columns`).
    Columns,
}

/// One resource a host offers.
#[derive(Debug)]
pub struct Resource {
    /// The name modules open it by.
    pub name: String,
    /// Its type.
    pub kind: ResourceType,
    /// How it is tied to this host.
    pub attachment: Attachment,
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Table(Arc<TablePool>),
    /// A table of the columnar engine (see [`columnar`]).
    Columnar(Arc<columnar::Table>),
    Log(Arc<State>),
    /// A global reference: every call goes to the host that owns the resource.
    Remote(Arc<dyn Forward>),
}

/// Forwards calls on a resource to the host that owns it (a global reference). The owner
/// applies its own policy to each call.
pub trait Forward: Send + Sync + std::fmt::Debug {
    /// Runs a read-only statement at the owner; returns the row batches (CBOR, as in a cursor).
    fn query(&self, sql: &str, params: Vec<Value>, deadline: Instant) -> Result<Vec<Vec<u8>>, ResourceError>;
    /// Appends a line to a log at the owner.
    fn append(&self, line: &str) -> Result<(), ResourceError>;
}

/// A table's whole content, as it travels with an agent (copied or moved).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableCopy {
    /// Column names, in order.
    pub columns: Vec<String>,
    /// Every row.
    pub rows: Vec<Vec<Value>>,
}

impl Resource {
    /// The capability a module must hold to open this resource.
    pub fn capability(&self) -> String {
        format!("{}:{}", self.kind.as_str(), self.name)
    }

    /// Starts a read-only query. Preparation errors (bad SQL, a refused statement) are
    /// reported here; row errors arrive with the batches.
    pub fn query(&self, sql: &str, params: Vec<Value>, deadline: Instant) -> Result<Cursor, ResourceError> {
        match &self.backend {
            Backend::Table(pool) => pool.clone().query(sql.to_owned(), params, deadline),
            Backend::Columnar(table) => table.query(sql.to_owned(), params, deadline, Layout::Rows),
            Backend::Remote(f) => Ok(Cursor::from_batches(f.query(sql, params, deadline)?, deadline)),
            Backend::Log(_) => Err(ResourceError::Sql(format!("{} is a log, not a table", self.name))),
        }
    }

    /// Starts a read-only query whose batches are column batches: only a local table of the
    /// columnar engine has its rows in columns already.
    pub fn query_columns(&self, sql: &str, params: Vec<Value>, deadline: Instant) -> Result<Cursor, ResourceError> {
        match &self.backend {
            Backend::Columnar(table) => table.query(sql.to_owned(), params, deadline, Layout::Columns),
            Backend::Table(_) => Err(ResourceError::Unsupported(format!(
                "{} is a SQLite table, which gives rows, not columns: read it with table_query, or give it engine = \"columnar\" in the host's configuration",
                self.name
            ))),
            Backend::Remote(_) => Err(ResourceError::Unsupported(format!(
                "{} is another host's table, which sends rows, not columns: read it with table_query",
                self.name
            ))),
            Backend::Log(_) => Err(ResourceError::Unsupported(format!("{} is a log, not a table", self.name))),
        }
    }

    /// Where a columnar table's statements read it from: a copy held in memory
    /// (`limits.table_memory_mib`) or its Parquet file. `None` for other resources.
    pub fn storage(&self) -> Option<Storage> {
        match &self.backend {
            Backend::Columnar(table) => Some(table.storage()),
            _ => None,
        }
    }

    /// Appends a line to a log resource.
    pub fn append(&self, module: &str, line: &str) -> Result<(), ResourceError> {
        match &self.backend {
            Backend::Log(state) => {
                state.append_log(&self.name, module, line).map_err(|e| ResourceError::Sql(e.to_string()))
            }
            Backend::Remote(f) => f.append(line),
            Backend::Table(_) | Backend::Columnar(_) => {
                Err(ResourceError::Sql(format!("{} is a table, not a log", self.name)))
            }
        }
    }

    /// The whole content of a table, if it holds at most `max_bytes` (roughly): what travels
    /// when an agent copies or moves it.
    pub fn copy(&self, max_bytes: usize) -> Result<TableCopy, ResourceError> {
        let pool = match &self.backend {
            Backend::Table(pool) => pool,
            Backend::Columnar(_) => {
                return Err(ResourceError::Sql(format!(
                    "{} is a columnar table, which is not copied: refer to it (bind it by identifier)",
                    self.name
                )));
            }
            _ => return Err(ResourceError::Sql(format!("{} is not a local table", self.name))),
        };
        let conn = pool.checkout().map_err(ResourceError::Sql)?;
        let sql = format!("SELECT * FROM \"{}\"", pool.table.replace('"', "\"\""));
        let copied = (|| {
            let mut stmt = conn.prepare(&sql)?;
            let columns: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
            let n = columns.len();
            let mut rows = Vec::new();
            let mut size = 0;
            let mut cursor = stmt.query([])?;
            while let Some(row) = cursor.next()? {
                let cells: Vec<Value> = (0..n).map(|i| row.get_ref(i).map(from_sql)).collect::<Result<_, _>>()?;
                size += cells.iter().map(cell_size).sum::<usize>();
                if size > max_bytes {
                    return Ok(None);
                }
                rows.push(cells);
            }
            Ok::<_, rusqlite::Error>(Some(TableCopy { columns, rows }))
        })();
        lock(&pool.idle).push(conn);
        copied
            .map_err(|e| ResourceError::Sql(e.to_string()))?
            .ok_or_else(|| ResourceError::Sql(format!("{} is over {max_bytes} bytes, too large to copy", self.name)))
    }
}

/// The resources of one host, by name.
#[derive(Debug, Default)]
pub struct Resources {
    by_name: BTreeMap<String, Arc<Resource>>,
    /// Resources an agent declared that could not be bound here, with why.
    unbound: BTreeMap<String, String>,
    /// What columnar tables added from now on may hold in memory, together.
    resident: Arc<columnar::Resident>,
}

impl Resources {
    /// Looks a resource up by name.
    pub fn get(&self, name: &str) -> Option<&Arc<Resource>> {
        self.by_name.get(name)
    }

    /// Why a declared resource could not be bound here, if it could not.
    pub fn unbound(&self, name: &str) -> Option<&str> {
        self.unbound.get(name).map(String::as_str)
    }

    /// Records that a declared resource could not be bound, so opening it says why.
    pub fn add_unbound(&mut self, name: &str, reason: &str) {
        self.unbound.insert(name.to_owned(), reason.to_owned());
    }

    /// Every resource, ordered by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Resource>> {
        self.by_name.values()
    }

    /// Adds a table backed by `source`: a CSV file (loaded into a SQLite file under `data_dir`
    /// when the CSV is newer than that copy) or a SQLite database holding a table of that name.
    /// A CSV file's column types are inferred (see [`Resources::add_table_with`]).
    pub fn add_table(
        &mut self,
        name: &str,
        attachment: Attachment,
        source: &Path,
        data_dir: &Path,
    ) -> Result<(), ResourceError> {
        self.add_table_with(name, attachment, source, data_dir, &BTreeMap::new())
    }

    /// As [`Resources::add_table`], with the types of some of a CSV file's columns declared:
    /// a declared type wins over inference, and a value that does not fit it is refused. An
    /// undeclared column is INTEGER if every value is an integer, REAL if every value is a
    /// number, TEXT if none is; one that mixes numbers and words is refused, since any type
    /// would make some rows silently disappear from queries.
    pub fn add_table_with(
        &mut self,
        name: &str,
        attachment: Attachment,
        source: &Path,
        data_dir: &Path,
        columns: &BTreeMap<String, ColumnType>,
    ) -> Result<(), ResourceError> {
        let load_err = |reason: String| ResourceError::Load { name: name.to_owned(), path: source.to_owned(), reason };
        let is_csv = source.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"));
        let db = if is_csv {
            let db = data_dir.join("tables").join(format!("{name}.db"));
            import_csv_if_stale(source, &db, name, columns).map_err(load_err)?;
            db
        } else {
            source.to_owned()
        };
        let pool = TablePool::open(db, name).map_err(load_err)?;
        self.insert(name, ResourceType::Table, attachment, Backend::Table(Arc::new(pool)));
        Ok(())
    }

    /// Lets the columnar tables added from now on hold copies in memory, `bytes` of them
    /// together (none by default): a table that fits is read into memory in the background.
    pub fn hold_tables_in_memory(&mut self, bytes: usize) {
        self.resident = Arc::new(columnar::Resident::new(bytes));
    }

    /// Adds a table of the columnar engine, from a CSV file (converted into Parquet under
    /// `data_dir` when the CSV is newer than that copy) or a Parquet file; a statement may use
    /// at most `memory_bytes` of engine memory. A CSV file's column types are inferred unless
    /// declared in `columns`.
    pub fn add_columnar_table(
        &mut self,
        name: &str,
        attachment: Attachment,
        source: &Path,
        data_dir: &Path,
        columns: &BTreeMap<String, ColumnType>,
        memory_bytes: usize,
    ) -> Result<(), ResourceError> {
        let table = columnar::Table::open(name, source, data_dir, columns, memory_bytes)
            .map_err(|reason| ResourceError::Load { name: name.to_owned(), path: source.to_owned(), reason })?;
        let table = Arc::new(table);
        table.hold_in_memory(&self.resident);
        self.insert(name, ResourceType::Table, attachment, Backend::Columnar(table));
        Ok(())
    }

    /// Adds a log whose lines are kept in the host's state database.
    pub fn add_log(&mut self, name: &str, attachment: Attachment, state: Arc<State>) {
        self.insert(name, ResourceType::Log, attachment, Backend::Log(state));
    }

    /// Adds a resource that lives elsewhere: calls go to its owner.
    pub fn add_remote(&mut self, name: &str, kind: ResourceType, attachment: Attachment, forward: Arc<dyn Forward>) {
        self.insert(name, kind, attachment, Backend::Remote(forward));
    }

    /// Adds a table holding a copy that travelled with an agent, written to `path`.
    pub fn add_copy(
        &mut self,
        name: &str,
        attachment: Attachment,
        copy: &TableCopy,
        path: &Path,
    ) -> Result<(), ResourceError> {
        let load_err = |reason: String| ResourceError::Load { name: name.to_owned(), path: path.to_owned(), reason };
        write_copy(copy, path, name).map_err(load_err)?;
        let pool = TablePool::open(path.to_owned(), name).map_err(load_err)?;
        self.insert(name, ResourceType::Table, attachment, Backend::Table(Arc::new(pool)));
        Ok(())
    }

    /// Offers an existing resource (shared with another set) under its own name.
    pub fn add_shared(&mut self, resource: Arc<Resource>) {
        self.by_name.insert(resource.name.clone(), resource);
    }

    fn insert(&mut self, name: &str, kind: ResourceType, attachment: Attachment, backend: Backend) {
        let resource = Resource { name: name.to_owned(), kind, attachment, backend };
        self.by_name.insert(name.to_owned(), Arc::new(resource));
    }
}

/// Read-only connections to one table's database, reused across queries.
#[derive(Debug)]
struct TablePool {
    path: PathBuf,
    table: String,
    idle: Mutex<Vec<Connection>>,
}

impl TablePool {
    fn open(path: PathBuf, table: &str) -> Result<Self, String> {
        let pool = Self { path, table: table.to_owned(), idle: Mutex::new(Vec::new()) };
        // Open one connection now so a missing file or table fails at start, not at first use.
        let conn = pool.connect()?;
        let exists: bool = conn
            .query_row(
                "SELECT count(*) > 0 FROM sqlite_schema WHERE type IN ('table','view') AND name = ?1",
                [table],
                |r| r.get(0),
            )
            .map_err(|e| e.to_string())?;
        if !exists {
            return Err(format!("the database has no table named {table:?}"));
        }
        pool.install_authorizer(&conn);
        lock(&pool.idle).push(conn);
        Ok(pool)
    }

    fn connect(&self) -> Result<Connection, String> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags).map_err(|e| e.to_string())?;
        // No single value (a zeroblob, a repeated string) may outgrow what a batch can carry.
        let _ = conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES);
        let _ = conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_SQL_LENGTH, 100_000);
        Ok(conn)
    }

    /// Lets a statement read this table and nothing else: no writes, no schema changes, no
    /// ATTACH, no PRAGMA, no other table of the same file.
    fn install_authorizer(&self, conn: &Connection) {
        let table = self.table.clone();
        conn.authorizer(Some(move |ctx: AuthContext<'_>| match ctx.action {
            AuthAction::Select | AuthAction::Function { .. } | AuthAction::Recursive => Authorization::Allow,
            AuthAction::Read { table_name, .. } if table_name == table => Authorization::Allow,
            _ => Authorization::Deny,
        }));
    }

    fn checkout(&self) -> Result<Connection, String> {
        if let Some(conn) = lock(&self.idle).pop() {
            return Ok(conn);
        }
        let conn = self.connect()?;
        self.install_authorizer(&conn);
        Ok(conn)
    }

    fn query(self: Arc<Self>, sql: String, params: Vec<Value>, deadline: Instant) -> Result<Cursor, ResourceError> {
        let conn = self.checkout().map_err(ResourceError::Sql)?;
        let cancel = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        let stop = cancel.clone();
        conn.progress_handler(1000, Some(move || stop.load(Ordering::Relaxed) || Instant::now() >= deadline));
        let pool = self.clone();
        std::thread::Builder::new()
            .name("roam-query".into())
            .spawn(move || {
                produce(&conn, &sql, &params, &tx);
                conn.progress_handler(0, None::<fn() -> bool>);
                lock(&pool.idle).push(conn);
            })
            .map_err(|e| ResourceError::Sql(format!("cannot start the query: {e}")))?;
        Cursor::started(rx, cancel, deadline)
    }
}

/// What a query's producer sends its cursor.
pub(crate) enum Msg {
    Batch(Staged),
    End,
    Error(String),
}

/// Steps the statement and sends CBOR batches until the end, an error, or a closed channel.
fn produce(conn: &Connection, sql: &str, params: &[Value], tx: &SyncSender<Msg>) {
    let fail = |e: rusqlite::Error| {
        let text = match &e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::OperationInterrupted => {
                "interrupted".to_owned()
            }
            _ => e.to_string(),
        };
        let _ = tx.send(Msg::Error(text));
    };
    let mut stmt = match conn.prepare(sql) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    if !stmt.readonly() {
        let _ = tx.send(Msg::Error("only read-only statements are allowed".into()));
        return;
    }
    let columns = stmt.column_count();
    let bound = params.iter().map(to_sql);
    let mut rows = match stmt.query(rusqlite::params_from_iter(bound)) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    // Rows are written straight from SQLite's values into the batch's CBOR, with no
    // intermediate values: an indefinite-length array of rows, each a definite array of cells.
    let mut batch = Batch::new();
    loop {
        match rows.next() {
            Ok(Some(row)) => {
                batch.row(columns);
                for i in 0..columns {
                    match row.get_ref(i) {
                        Ok(v) => batch.cell(v),
                        Err(e) => return fail(e),
                    }
                }
                if batch.rows >= BATCH_MAX_ROWS || batch.bytes.len() >= BATCH_TARGET_BYTES {
                    if tx.send(Msg::Batch(Staged::Bytes(batch.finish()))).is_err() {
                        return;
                    }
                    batch = Batch::new();
                }
            }
            Ok(None) => break,
            Err(e) => return fail(e),
        }
    }
    if batch.rows > 0 && tx.send(Msg::Batch(Staged::Bytes(batch.finish()))).is_err() {
        return;
    }
    let _ = tx.send(Msg::End);
}

/// A batch of rows being encoded as CBOR.
pub(crate) struct Batch {
    pub(crate) bytes: Vec<u8>,
    pub(crate) rows: usize,
}

impl Batch {
    pub(crate) fn new() -> Self {
        // 0x9f: an array of indefinite length, closed by `finish`.
        let mut bytes = Vec::with_capacity(16 << 10);
        bytes.push(0x9f);
        Self { bytes, rows: 0 }
    }

    pub(crate) fn row(&mut self, columns: usize) {
        self.rows += 1;
        head(&mut self.bytes, 4, columns as u64);
    }

    fn cell(&mut self, v: ValueRef<'_>) {
        let out = &mut self.bytes;
        match v {
            ValueRef::Null => out.push(0xf6),
            ValueRef::Integer(i) if i >= 0 => head(out, 0, i as u64),
            ValueRef::Integer(i) => head(out, 1, !(i as u64)),
            ValueRef::Real(f) => {
                out.push(0xfb);
                out.extend_from_slice(&f.to_bits().to_be_bytes());
            }
            ValueRef::Text(t) => {
                let text = String::from_utf8_lossy(t);
                head(out, 3, text.len() as u64);
                out.extend_from_slice(text.as_bytes());
            }
            ValueRef::Blob(b) => {
                head(out, 2, b.len() as u64);
                out.extend_from_slice(b);
            }
        }
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.bytes.push(0xff);
        self.bytes
    }
}

/// Writes a CBOR head: major type and argument, in the shortest form.
fn head(out: &mut Vec<u8>, major: u8, arg: u64) {
    let m = major << 5;
    match arg {
        0..=23 => out.push(m | arg as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, arg as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(arg as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(arg as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&arg.to_be_bytes());
        }
    }
}

fn cell_size(v: &Value) -> usize {
    match v {
        Value::Text(s) => s.len() + 2,
        Value::Blob(b) => b.len() + 2,
        _ => 9,
    }
}

fn to_sql(v: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as S;
    match v {
        Value::Null => S::Null,
        Value::Integer(i) => S::Integer(*i),
        Value::Real(f) => S::Real(*f),
        Value::Text(t) => S::Text(t.clone()),
        Value::Blob(b) => S::Blob(b.clone()),
    }
}

fn from_sql(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

/// A batch on its way to a module: encoded bytes, or a column batch whose layout is planned
/// but whose values are still the engine's arrays, copied only into the module's memory.
#[derive(Debug)]
pub(crate) enum Staged {
    /// Bytes as they go to the module (CBOR rows).
    Bytes(Vec<u8>),
    /// A column batch (`roam_abi::columns`); none without the columnar engine.
    #[cfg_attr(not(feature = "columnar"), allow(dead_code))]
    Columns(columnar::Pending),
}

impl Staged {
    /// Its length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Self::Bytes(b) => b.len(),
            Self::Columns(c) => c.len(),
        }
    }

    /// Writes it into `out`, which is exactly [`len`](Self::len) bytes.
    pub fn write_into(&self, out: &mut [u8]) {
        match self {
            Self::Bytes(b) => out.copy_from_slice(b),
            Self::Columns(c) => c.write_into(out),
        }
    }

    /// Its bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        match self {
            Self::Bytes(b) => b,
            columns => {
                let mut out = vec![0; columns.len()];
                columns.write_into(&mut out);
                out
            }
        }
    }
}

/// An open query: batches of rows arriving from the producer thread.
#[derive(Debug)]
pub struct Cursor {
    rx: Receiver<Msg>,
    /// A batch received but not yet handed to the module.
    pending: Option<Staged>,
    /// The batch handed out by the last `next_batch`, waiting to be copied into the module.
    staged: Option<Staged>,
    done: bool,
    /// Tells the producer to stop when the module closes the cursor early.
    cancel: Arc<AtomicBool>,
    deadline: Instant,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Batch(b) => write!(f, "Batch({} bytes)", b.len()),
            Msg::End => f.write_str("End"),
            Msg::Error(e) => write!(f, "Error({e})"),
        }
    }
}

impl Cursor {
    /// A cursor over what a producer sends on `rx`, once its first message came: an error
    /// there (bad SQL, a refused statement) is the query's, and fails it at once.
    pub(crate) fn started(
        rx: Receiver<Msg>,
        cancel: Arc<AtomicBool>,
        deadline: Instant,
    ) -> Result<Self, ResourceError> {
        let mut cursor = Self { rx, pending: None, staged: None, done: false, cancel, deadline };
        match cursor.recv()? {
            Some(batch) => cursor.pending = Some(batch),
            None => cursor.done = true,
        }
        Ok(cursor)
    }

    /// A cursor over batches that are already here (rows a remote owner sent back).
    pub fn from_batches(batches: Vec<Vec<u8>>, deadline: Instant) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(batches.len() + 1);
        for b in batches {
            let _ = tx.send(Msg::Batch(Staged::Bytes(b)));
        }
        let _ = tx.send(Msg::End);
        Self { rx, pending: None, staged: None, done: false, cancel: Arc::new(AtomicBool::new(false)), deadline }
    }

    /// Reads every remaining batch (for forwarding them to a remote caller), up to `max_bytes`.
    pub fn drain(mut self, max_bytes: usize) -> Result<Vec<Vec<u8>>, ResourceError> {
        let mut out = Vec::new();
        let mut total = 0;
        while let Some(len) = self.next_batch()? {
            total += len;
            if total > max_bytes {
                return Err(ResourceError::Sql(format!("the result is over {max_bytes} bytes")));
            }
            out.extend(self.take_staged());
        }
        Ok(out)
    }

    fn recv(&mut self) -> Result<Option<Staged>, ResourceError> {
        let wait = self.deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(wait) {
            Ok(Msg::Batch(b)) => Ok(Some(b)),
            Ok(Msg::End) => Ok(None),
            Ok(Msg::Error(e)) if e == "interrupted" => Err(ResourceError::Deadline),
            Ok(Msg::Error(e)) => Err(ResourceError::Sql(e)),
            Err(RecvTimeoutError::Timeout) => Err(ResourceError::Deadline),
            Err(RecvTimeoutError::Disconnected) => Err(ResourceError::Sql("the query stopped unexpectedly".into())),
        }
    }

    /// Stages the next batch and returns its length, or `None` at the end.
    pub fn next_batch(&mut self) -> Result<Option<usize>, ResourceError> {
        self.staged = None;
        let batch = match self.pending.take() {
            Some(b) => Some(b),
            None if self.done => None,
            None => self.recv()?,
        };
        match batch {
            Some(b) => {
                let len = b.len();
                self.staged = Some(b);
                Ok(Some(len))
            }
            None => {
                self.done = true;
                Ok(None)
            }
        }
    }

    /// Takes the staged batch, as bytes.
    pub fn take_staged(&mut self) -> Option<Vec<u8>> {
        self.staged.take().map(Staged::into_bytes)
    }

    /// Takes the staged batch as it is, to be written where it goes.
    pub(crate) fn take_staged_batch(&mut self) -> Option<Staged> {
        self.staged.take()
    }
}

impl Drop for Cursor {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// Imports a CSV file into a SQLite table, unless an import at least as new as the CSV, made
/// with the same declared columns, exists. Types as [`Resources::add_table_with`] says; the
/// types chosen are logged. The import is written to a temporary file and renamed into place,
/// so a crash never leaves a half-loaded table behind.
fn import_csv_if_stale(
    csv_path: &Path,
    db: &Path,
    table: &str,
    declared: &BTreeMap<String, ColumnType>,
) -> Result<(), String> {
    let made = Made::new(db, declared);
    if made.is_current(csv_path)? {
        return Ok(());
    }
    let read = || csv::Reader::from_path(csv_path).map_err(|e| e.to_string());
    let mut reader = read()?;
    let headers: Vec<String> = reader.headers().map_err(|e| e.to_string())?.iter().map(str::to_owned).collect();
    if headers.is_empty() {
        return Err("the CSV file has no header row".into());
    }
    if let Some((column, t)) =
        declared.iter().find(|(_, t)| !matches!(t, ColumnType::Integer | ColumnType::Real | ColumnType::Text))
    {
        return Err(format!(
            "column {column:?} is declared {t:?}, which only a columnar table holds (engine = \"columnar\"); a \
             SQLite table's columns are integer, real or text"
        ));
    }
    if let Some(unknown) = declared.keys().find(|c| !headers.contains(c)) {
        return Err(format!("the configuration declares column {unknown:?}, which the CSV file does not have"));
    }
    let mut seen: Vec<Seen> = headers.iter().map(|h| Seen::new(declared.get(h).copied())).collect();
    let mut rows = 0u64;
    for record in reader.records() {
        let record = record.map_err(|e| e.to_string())?;
        let line = record.position().map_or(0, csv::Position::line);
        for ((seen, field), header) in seen.iter_mut().zip(record.iter()).zip(&headers) {
            seen.add(field, line).map_err(|e| format!("column {header:?}: {e}"))?;
        }
        rows += 1;
    }
    let mut types = Vec::with_capacity(headers.len());
    let mut described = Vec::with_capacity(headers.len());
    for (seen, header) in seen.iter().zip(&headers) {
        let (t, how, warning) = seen.decide().map_err(|e| format!("column {header:?}: {e}"))?;
        if let Some(warning) = warning {
            tracing::warn!("table {table}, column {header:?}: {warning}");
        }
        described.push(format!("{header} {} ({how})", t.sql()));
        types.push(t);
    }
    tracing::info!("table {table}: {rows} rows from {}; columns {}", csv_path.display(), described.join(", "));

    if let Some(dir) = db.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    let tmp = db.with_extension("loading");
    let _ = std::fs::remove_file(&tmp);
    let mut conn = Connection::open(&tmp).map_err(|e| e.to_string())?;
    conn.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;").map_err(|e| e.to_string())?;
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let cols: Vec<String> = headers.iter().zip(&types).map(|(h, t)| format!("{} {}", quote(h), t.sql())).collect();
    let create = format!("CREATE TABLE {} ({})", quote(table), cols.join(", "));
    let marks = vec!["?"; headers.len()].join(", ");
    let insert = format!("INSERT INTO {} VALUES ({marks})", quote(table));
    let tx = conn.transaction().map_err(|e| e.to_string())?;
    tx.execute(&create, []).map_err(|e| e.to_string())?;
    {
        let mut stmt = tx.prepare(&insert).map_err(|e| e.to_string())?;
        for record in read()?.records() {
            let record = record.map_err(|e| e.to_string())?;
            let values = types.iter().zip(record.iter()).map(|(t, f)| t.value(f));
            stmt.execute(rusqlite::params_from_iter(values)).map_err(|e| e.to_string())?;
        }
    }
    tx.commit().map_err(|e| e.to_string())?;
    drop(conn);
    made.replace_with(&tmp)
}

/// A table made from a CSV file (a SQLite import, or the columnar engine's Parquet copy), and
/// the columns declared when it was made, kept beside it in `NAME.columns`: a table older than
/// its CSV file, or made with other declarations, is made again.
pub(crate) struct Made<'a> {
    table: &'a Path,
    stamp: PathBuf,
    declaration: String,
}

impl<'a> Made<'a> {
    pub(crate) fn new(table: &'a Path, declared: &BTreeMap<String, ColumnType>) -> Self {
        Self { table, stamp: table.with_extension("columns"), declaration: format!("{declared:?}") }
    }

    /// Whether the table is at least as new as `csv` and was made with these declarations.
    pub(crate) fn is_current(&self, csv: &Path) -> Result<bool, String> {
        let csv_time = std::fs::metadata(csv).and_then(|m| m.modified()).map_err(|e| e.to_string())?;
        Ok(std::fs::metadata(self.table).and_then(|m| m.modified()).is_ok_and(|made| made >= csv_time)
            && std::fs::read_to_string(&self.stamp).unwrap_or_default() == self.declaration)
    }

    /// Puts the table written at `tmp` in its place. The old declaration goes before the new
    /// table comes, and the new one after: a crash in between leaves no declaration, so the
    /// next start makes the table again.
    pub(crate) fn replace_with(self, tmp: &Path) -> Result<(), String> {
        match std::fs::remove_file(&self.stamp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.to_string()),
            _ => {}
        }
        std::fs::rename(tmp, self.table).map_err(|e| e.to_string())?;
        let stamp_tmp = self.stamp.with_extension("columns-new");
        std::fs::write(&stamp_tmp, self.declaration).map_err(|e| e.to_string())?;
        std::fs::rename(&stamp_tmp, &self.stamp).map_err(|e| e.to_string())
    }
}

/// What an import has seen of one column's values.
#[derive(Debug)]
struct Seen {
    declared: Option<ColumnType>,
    integers: u64,
    reals: u64,
    /// The first decimal value and its line, for the warning.
    first_real: Option<(u64, String)>,
    words: u64,
    /// The first value that is not a number, and its line, to say where the mix is.
    first_word: Option<(u64, String)>,
    first_number: Option<(u64, String)>,
}

impl Seen {
    fn new(declared: Option<ColumnType>) -> Self {
        Self { declared, integers: 0, reals: 0, first_real: None, words: 0, first_word: None, first_number: None }
    }

    fn add(&mut self, field: &str, line: u64) -> Result<(), String> {
        if field.is_empty() {
            return Ok(());
        }
        // Written as a number: "nan" and "inf" parse as floats but are words in a CSV file.
        let numeric = field.bytes().all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b));
        let kind = if field.parse::<i64>().is_ok() {
            self.integers += 1;
            ColumnType::Integer
        } else if numeric && field.parse::<f64>().is_ok() {
            self.reals += 1;
            self.first_real.get_or_insert_with(|| (line, field.to_owned()));
            ColumnType::Real
        } else {
            self.words += 1;
            self.first_word.get_or_insert_with(|| (line, field.to_owned()));
            ColumnType::Text
        };
        if kind != ColumnType::Text {
            self.first_number.get_or_insert_with(|| (line, field.to_owned()));
        }
        match self.declared {
            Some(ColumnType::Integer) if kind != ColumnType::Integer => {
                Err(format!("line {line} holds {field:?}, not an integer as the configuration declares"))
            }
            Some(ColumnType::Real) if kind == ColumnType::Text => {
                Err(format!("line {line} holds {field:?}, not a number as the configuration declares"))
            }
            _ => Ok(()),
        }
    }

    /// The column's type, how it was chosen, and what the operator should hear of it.
    fn decide(&self) -> Result<(ColumnType, &'static str, Option<String>), String> {
        if let Some(t) = self.declared {
            return Ok((t, "declared", None));
        }
        if let (Some((word_line, word)), Some((number_line, number))) = (&self.first_word, &self.first_number) {
            return Err(format!(
                "it mixes numbers ({number:?} on line {number_line}) and words ({word:?} on line {word_line}), so \
                 some rows would silently not match queries; fix the values, or declare the column's type in the \
                 table's `columns` in host.toml (e.g. columns = {{ day = \"text\" }})"
            ));
        }
        if self.words > 0 {
            return Ok((ColumnType::Text, "inferred", None));
        }
        if self.reals > 0 {
            let warning = self.first_real.as_ref().filter(|_| self.integers > 0).map(|(line, value)| {
                format!(
                    "{} integers and {} decimal values (the first {value:?} on line {line}): loaded as REAL; \
                     declare the column `integer` in host.toml to have such values refused instead",
                    self.integers, self.reals
                )
            });
            return Ok((ColumnType::Real, "inferred", warning));
        }
        Ok((ColumnType::Integer, "inferred", None))
    }
}

/// Writes a travelling table copy into a fresh SQLite file (through a temporary name).
fn write_copy(copy: &TableCopy, path: &Path, table: &str) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    let tmp = path.with_extension("loading");
    let _ = std::fs::remove_file(&tmp);
    let mut conn = Connection::open(&tmp).map_err(|e| e.to_string())?;
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let cols: Vec<String> = copy.columns.iter().map(|c| quote(c)).collect();
    if cols.is_empty() {
        return Err("a table copy without columns".into());
    }
    let tx = conn.transaction().map_err(|e| e.to_string())?;
    tx.execute(&format!("CREATE TABLE {} ({})", quote(table), cols.join(", ")), []).map_err(|e| e.to_string())?;
    {
        let marks = vec!["?"; cols.len()].join(", ");
        let mut stmt =
            tx.prepare(&format!("INSERT INTO {} VALUES ({marks})", quote(table))).map_err(|e| e.to_string())?;
        for row in &copy.rows {
            if row.len() != cols.len() {
                return Err(format!("a row of {} cells in a table of {} columns", row.len(), cols.len()));
            }
            stmt.execute(rusqlite::params_from_iter(row.iter().map(to_sql))).map_err(|e| e.to_string())?;
        }
    }
    tx.commit().map_err(|e| e.to_string())?;
    drop(conn);
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())
}

/// The type of a CSV table's column, declared in host.toml (`integer`, `real`, `text`; for a
/// columnar table also `decimal(P,S)`, `date`, `timestamp`) or inferred.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum ColumnType {
    /// 64-bit integers.
    Integer,
    /// Double-precision numbers.
    Real,
    /// Anything, as written.
    Text,
    /// Exact decimals of `precision` digits, `scale` of them after the point (columnar only).
    Decimal {
        /// Digits in all, 1 to 38.
        precision: u8,
        /// Digits after the point, at most `precision`.
        scale: i8,
    },
    /// A calendar date, `YYYY-MM-DD` (columnar only).
    Date,
    /// A date and time, `YYYY-MM-DD HH:MM:SS[.ffffff]`, without a time zone (columnar only).
    Timestamp,
}

impl TryFrom<String> for ColumnType {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let t = text.trim().to_ascii_lowercase();
        let decimal = || {
            let inner = t.strip_prefix("decimal(")?.strip_suffix(')')?;
            let (p, s) = inner.split_once(',')?;
            let (precision, scale): (u8, i8) = (p.trim().parse().ok()?, s.trim().parse().ok()?);
            ((1..=38).contains(&precision) && (0..=precision as i8).contains(&scale))
                .then_some(Self::Decimal { precision, scale })
        };
        match t.as_str() {
            "integer" => Ok(Self::Integer),
            "real" => Ok(Self::Real),
            "text" => Ok(Self::Text),
            "date" => Ok(Self::Date),
            "timestamp" => Ok(Self::Timestamp),
            _ => decimal().ok_or_else(|| {
                format!(
                    "unknown column type {text:?}: expected integer, real, text, decimal(P,S) (P from 1 to 38, S \
                     from 0 to P), date or timestamp"
                )
            }),
        }
    }
}

impl ColumnType {
    fn sql(self) -> &'static str {
        match self {
            Self::Integer => "INTEGER",
            // SQLite has no exact decimals and no dates: an import refuses them first.
            Self::Real | Self::Decimal { .. } => "REAL",
            Self::Text | Self::Date | Self::Timestamp => "TEXT",
        }
    }

    fn value(self, field: &str) -> rusqlite::types::Value {
        use rusqlite::types::Value as S;
        if field.is_empty() && self != Self::Text {
            return S::Null;
        }
        match self {
            Self::Integer => field.parse().map_or(S::Null, S::Integer),
            Self::Real | Self::Decimal { .. } => field.parse().map_or(S::Null, S::Real),
            Self::Text | Self::Date | Self::Timestamp => S::Text(field.to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sales_table(dir: &Path) -> Result<Resources, Box<dyn std::error::Error>> {
        let csv = dir.join("sales.csv");
        std::fs::write(&csv, "id,region,amount\n1,north,10\n2,south,2.5\n3,north,\n")?;
        let mut resources = Resources::default();
        resources.add_table("sales", Attachment::Fastened, &csv, dir)?;
        Ok(resources)
    }

    fn rows(cursor: &mut Cursor) -> Result<Vec<Vec<Value>>, Box<dyn std::error::Error>> {
        let mut out = Vec::new();
        while cursor.next_batch()?.is_some() {
            let batch = cursor.take_staged().ok_or("nothing staged")?;
            let decoded: Vec<Vec<Value>> = ciborium::from_reader(batch.as_slice())?;
            out.extend(decoded);
        }
        Ok(out)
    }

    #[test]
    fn a_csv_table_answers_parameterised_reads() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let resources = sales_table(dir.path())?;
        let table = resources.get("sales").ok_or("no table")?;
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let mut cursor = table.query(
            "SELECT id, amount FROM sales WHERE region = ?1 ORDER BY id",
            vec!["north".into()],
            deadline,
        )?;
        assert_eq!(
            rows(&mut cursor)?,
            vec![vec![Value::Integer(1), Value::Real(10.0)], vec![Value::Integer(3), Value::Null]]
        );
        Ok(())
    }

    #[test]
    fn writes_schema_changes_attach_and_pragma_are_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let resources = sales_table(dir.path())?;
        let table = resources.get("sales").ok_or("no table")?;
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        for sql in [
            "DELETE FROM sales",
            "INSERT INTO sales VALUES (9, 'x', 1)",
            "UPDATE sales SET amount = 0",
            "DROP TABLE sales",
            "CREATE TABLE t (x)",
            "PRAGMA table_info(sales)",
            "ATTACH DATABASE '/tmp/x.db' AS x",
            "SELECT * FROM sqlite_schema",
        ] {
            let refused = table.query(sql, Vec::new(), deadline);
            assert!(matches!(refused, Err(ResourceError::Sql(_))), "{sql} was not refused");
        }
        // Still intact.
        let mut cursor = table.query("SELECT count(*) FROM sales", Vec::new(), deadline)?;
        assert_eq!(rows(&mut cursor)?, vec![vec![Value::Integer(3)]]);
        Ok(())
    }

    #[test]
    fn a_statement_past_its_deadline_is_interrupted() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let resources = sales_table(dir.path())?;
        let table = resources.get("sales").ok_or("no table")?;
        let deadline = Instant::now() + std::time::Duration::from_millis(100);
        let endless = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT sum(i) FROM n";
        let started = Instant::now();
        let result = table.query(endless, Vec::new(), deadline);
        assert!(matches!(result, Err(ResourceError::Deadline)), "{result:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        Ok(())
    }

    #[test]
    fn batches_decode_as_the_values_sqlite_returned() -> Result<(), Box<dyn std::error::Error>> {
        let cells = [
            ValueRef::Null,
            ValueRef::Integer(0),
            ValueRef::Integer(23),
            ValueRef::Integer(24),
            ValueRef::Integer(-1),
            ValueRef::Integer(i64::MIN),
            ValueRef::Integer(i64::MAX),
            ValueRef::Integer(70_000),
            ValueRef::Real(-2.5),
            ValueRef::Text("na\u{ef}ve".as_bytes()),
            ValueRef::Blob(&[0, 1, 2]),
        ];
        let mut batch = Batch::new();
        batch.row(cells.len());
        for c in cells {
            batch.cell(c);
        }
        batch.row(1);
        let long = "x".repeat(300);
        batch.cell(ValueRef::Text(long.as_bytes()));
        let decoded: Vec<Vec<Value>> = ciborium::from_reader(batch.finish().as_slice())?;
        let expected: Vec<Value> = cells.iter().map(|c| from_sql(*c)).collect();
        assert_eq!(decoded, vec![expected, vec![Value::Text(long)]]);
        Ok(())
    }

    #[test]
    fn csv_columns_get_the_narrowest_type_that_fits_every_value() -> Result<(), String> {
        let decide = |declared, values: &[&str]| {
            let mut seen = Seen::new(declared);
            for (line, v) in values.iter().enumerate() {
                seen.add(v, line as u64 + 2)?;
            }
            seen.decide()
        };
        assert_eq!(decide(None, &["1", "2", ""])?.0, ColumnType::Integer);
        let (t, _, warning) = decide(None, &["1", "2.5"])?;
        assert!(t == ColumnType::Real && warning.is_some_and(|w| w.contains("\"2.5\" on line 3")));
        assert_eq!(decide(None, &["north", "", "south"])?.0, ColumnType::Text);
        // Numbers and words: refused, saying where, unless declared.
        let mixed = decide(None, &["10", "forty", ""]).err().unwrap_or_default();
        assert!(mixed.contains("\"forty\" on line 3") && mixed.contains("columns"), "{mixed}");
        assert_eq!(decide(Some(ColumnType::Text), &["10", "forty"])?.0, ColumnType::Text);
        // A declared type refuses values that do not fit.
        let refused = decide(Some(ColumnType::Integer), &["1", "3.5"]).err().unwrap_or_default();
        assert!(refused.contains("line 3") && refused.contains("integer"), "{refused}");
        Ok(())
    }
}
