//! Columnar tables: CSV and Parquet files queried by Apache DataFusion, a vectorized engine
//! on Arrow's columnar buffers, for analytic work next to the data.
//!
//! - A CSV source is converted once into Parquet under the data directory (again when the CSV
//!   is newer, or its declared columns change), so a restart only reads the Parquet footer; a
//!   Parquet source is queried where it is.
//! - Column types are declared in the configuration (`integer`, `real`, `decimal(P,S)`, `date`,
//!   `timestamp`, `text`) or inferred, and logged at load. Decimal literals in SQL are exact
//!   decimals (`0.06 + 0.01` is `0.07`), as they are in the SQL standard.
//! - A table that fits in the host's budget for tables in memory (`limits.table_memory_mib`)
//!   is read once into Arrow batches in the background after it opens; from then on its
//!   statements start from a session holding that copy, and skip reading and decoding Parquet.
//!   Until then, or when it does not fit, they read the Parquet file.
//! - Each statement runs in a session holding this one table and nothing else, read-only (no
//!   DDL, DML or `SET`), without recursive CTEs, with its own memory pool of the call's memory
//!   limit, and stops at the call's deadline or when the module closes its cursor: its stream
//!   is dropped, and every operator's input ends at its next batch ([`stop`]).
//! - A filter of several conditions evaluates them one by one over whole batches
//!   ([`conjunction`]).
//! - Rows reach the module as the same CBOR batches a SQLite table sends (decimals, dates and
//!   timestamps as exact text), or as column batches ([`columns`]) when it asks for them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::Instant;

use datafusion::arrow::array::{
    Array, AsArray, BinaryArray, BooleanArray, Float64Array, Int64Array, LargeBinaryArray, RecordBatch,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, TimeUnit, UInt64Type};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::ScalarValue;
use datafusion::config::{ParquetOptions, TableParquetOptions};
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::datasource::MemTable;
use datafusion::execution::context::{SQLOptions, SessionContext};
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionConfig};
use futures_util::StreamExt;
use roam_abi::Value;
use rusqlite::types::ValueRef;

use super::{BATCH_TARGET_BYTES, Batch, ColumnType, Cursor, Layout, Made, Msg, ResourceError, Staged};

mod columns;
mod conjunction;
mod stop;
pub(crate) use columns::Pending;

/// One columnar table: the sessions its statements start from, and the limits they run under.
pub(crate) struct Table {
    name: String,
    /// Where statements read the table from, and the sessions they start from: replaced whole
    /// (never changed in place) when the table comes into memory, so that a statement plans
    /// and runs against one source from start to end.
    current: RwLock<Current>,
    /// Engine memory one statement may use (the call's memory limit).
    memory_bytes: usize,
}

#[derive(Clone)]
struct Current {
    templates: Arc<Templates>,
    storage: Storage,
}

/// Where a columnar table's statements read it from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Storage {
    /// Its Parquet file, while a copy is read into memory.
    Loading,
    /// A copy in memory of this many bytes.
    Memory(usize),
    /// Its Parquet file, for the reason given.
    Disk(String),
}

/// Sessions holding the table, which statements copy.
struct Templates {
    /// For statements whose rows go out as rows.
    rows: SessionContext,
    /// For column batches. Read from Parquet, text comes as offsets and bytes (the layout a
    /// module gets) instead of views, which would have to be rewritten value by value; views
    /// are faster for the engine's own grouping and sorting, hence two sessions.
    columns: SessionContext,
    /// The share of the host's budget for tables in memory that this table's copy holds.
    _held: Option<Held>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table").field("name", &self.name).finish_non_exhaustive()
    }
}

/// The engine's own threads, shared by every columnar table of the process: DataFusion runs
/// on Tokio, and its work must neither run on nor block the host's network runtime.
fn runtime() -> Result<&'static tokio::runtime::Runtime, String> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .thread_name("roam-columnar")
                .enable_time()
                .build()
                .map_err(|e| format!("cannot start the columnar engine's threads: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Runs `work` to completion on the engine's runtime, from any thread: one of another Tokio
/// runtime may not block on a future, so it hands the wait to a thread of its own.
fn block_on<T: Send>(work: impl std::future::Future<Output = T> + Send) -> Result<T, String> {
    let rt = runtime()?;
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| s.spawn(|| rt.block_on(work)).join())
            .map_err(|_| "the columnar engine's thread failed".to_owned())
    } else {
        Ok(rt.block_on(work))
    }
}

/// A session with `config`, planning as every statement's does.
fn context(config: SessionConfig) -> SessionContext {
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .with_physical_optimizer_rule(Arc::new(conjunction::FlattenFilters))
        .build();
    SessionContext::new_with_state(state)
}

/// Settings every statement runs with.
fn config() -> SessionConfig {
    let mut config = SessionConfig::new().with_information_schema(false);
    let options = config.options_mut();
    // `0.06 + 0.01` must be the decimal 0.07, not the double just below it.
    options.sql_parser.parse_float_as_decimal = true;
    // A recursive CTE can grow without bound; the deadline would stop it, but refusing it says why.
    options.execution.enable_recursive_ctes = false;
    config
}

impl Table {
    /// Opens the table `name` from `source` (CSV or Parquet), converting a CSV file into
    /// Parquet under `data_dir/tables` when needed.
    pub(crate) fn open(
        name: &str,
        source: &Path,
        data_dir: &Path,
        declared: &BTreeMap<String, ColumnType>,
        memory_bytes: usize,
    ) -> Result<Self, String> {
        let ctx = context(config());
        let parquet = match extension(source).as_str() {
            "parquet" => {
                if !declared.is_empty() {
                    return Err("a Parquet file carries its own column types: declare none".into());
                }
                source.to_owned()
            }
            "csv" => {
                let parquet = data_dir.join("tables").join(format!("{name}.parquet"));
                convert_if_stale(&ctx, name, source, &parquet, declared)?;
                parquet
            }
            other => return Err(format!("a columnar table's source is .csv or .parquet, not .{other}")),
        };
        let path = parquet.to_str().ok_or("the table's path is not UTF-8")?.to_owned();
        block_on(ctx.register_parquet(name, &path, ParquetReadOptions::default()))?.map_err(|e| e.to_string())?;
        let mut offsets = config();
        offsets.options_mut().execution.parquet.schema_force_view_types = false;
        let columns = context(offsets);
        block_on(columns.register_parquet(name, &path, ParquetReadOptions::default()))?.map_err(|e| e.to_string())?;
        let templates = Arc::new(Templates { rows: ctx, columns, _held: None });
        let current = RwLock::new(Current { templates, storage: Storage::Disk("no memory was offered".into()) });
        Ok(Self { name: name.to_owned(), current, memory_bytes })
    }

    /// Reads the table into memory in the background if it fits in what is left of `budget`;
    /// statements read the Parquet file until then, and for good if it does not fit.
    pub(crate) fn hold_in_memory(self: &Arc<Self>, budget: &Arc<Resident>) {
        if budget.left.load(Ordering::Relaxed) == 0 {
            return self.set_storage(Storage::Disk("limits.table_memory_mib leaves no room".into()));
        }
        self.set_storage(Storage::Loading);
        // Weak: a table dropped while it loads (its host closed) stops the load, and gives the
        // budget back.
        let (table, budget) = (Arc::downgrade(self), budget.clone());
        let spawned = std::thread::Builder::new().name("roam-columnar-load".into()).spawn(move || {
            let started = Instant::now();
            let loaded = runtime().and_then(|rt| rt.block_on(load(&table, &budget)));
            let Some(table) = table.upgrade() else { return };
            let storage = match loaded {
                Ok(Some(bytes)) => {
                    tracing::info!(
                        "table {}: held in memory ({} MiB), read in {:.1} s",
                        table.name,
                        bytes >> 20,
                        started.elapsed().as_secs_f64()
                    );
                    return;
                }
                Ok(None) => format!(
                    "it needs more than the {} MiB left of limits.table_memory_mib",
                    budget.left.load(Ordering::Relaxed) >> 20
                ),
                Err(e) => e,
            };
            tracing::info!("table {}: not held in memory: {storage}; statements read its Parquet file", table.name);
            table.set_storage(Storage::Disk(storage));
        });
        if let Err(e) = spawned {
            self.set_storage(Storage::Disk(format!("cannot start a thread: {e}")));
        }
    }

    /// Where statements read the table from.
    pub(crate) fn storage(&self) -> Storage {
        self.current().map_or_else(Storage::Disk, |c| c.storage)
    }

    fn current(&self) -> Result<Current, String> {
        self.current.read().map(|c| c.clone()).map_err(|_| "the table's state is poisoned".to_owned())
    }

    fn set_storage(&self, storage: Storage) {
        if let Ok(mut current) = self.current.write() {
            current.storage = storage;
        }
    }

    /// Starts a read-only statement; rows arrive in the cursor's batches, laid out as `layout`.
    pub(crate) fn query(
        self: &Arc<Self>,
        sql: String,
        params: Vec<Value>,
        deadline: Instant,
        layout: Layout,
    ) -> Result<Cursor, ResourceError> {
        let cancel = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        let (table, stop) = (self.clone(), Arc::new(stop::Stop { deadline, closed: cancel.clone() }));
        std::thread::Builder::new()
            .name("roam-columnar-query".into())
            .spawn(move || {
                let ran = runtime().map(|rt| rt.block_on(table.produce(&sql, params, layout, &stop, &tx)));
                if let Err(e) | Ok(Err(e)) = ran {
                    let _ = tx.send(Msg::Error(e));
                }
            })
            .map_err(|e| ResourceError::Sql(format!("cannot start the query: {e}")))?;
        Cursor::started(rx, cancel, deadline)
    }

    /// A session for one statement: the table, and a memory pool of its own.
    fn session(&self, layout: Layout) -> Result<SessionContext, String> {
        let templates = self.current()?.templates;
        let template = match layout {
            Layout::Rows => &templates.rows,
            Layout::Columns => &templates.columns,
        };
        // No spilling to disk: a statement's memory is the call's, and the host's disk is not.
        let no_disk = DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled);
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(self.memory_bytes, 1.0)
            .with_disk_manager_builder(no_disk)
            .build_arc()
            .map_err(|e| e.to_string())?;
        let state = SessionStateBuilder::new_from_existing(template.state()).with_runtime_env(runtime).build();
        Ok(SessionContext::new_with_state(state))
    }

    /// Plans and runs `sql`, sending CBOR batches until the end, an error, the deadline or a
    /// closed cursor.
    async fn produce(
        &self,
        sql: &str,
        params: Vec<Value>,
        layout: Layout,
        stop: &Arc<stop::Stop>,
        tx: &SyncSender<Msg>,
    ) -> Result<(), String> {
        let deadline = stop.deadline;
        let ctx = self.session(layout)?;
        let read_only = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
        let sql = dollar_placeholders(sql);
        let planned = tokio::time::timeout_at(deadline.into(), async {
            let frame = ctx.sql_with_options(&sql, read_only).await?;
            let frame = if params.is_empty() { frame } else { frame.with_param_values(scalars(params))? };
            let plan = stop::stoppable(frame.create_physical_plan().await?, stop)?;
            datafusion::physical_plan::execute_stream(plan, ctx.task_ctx())
        });
        // An error once the statement is over is the stop's own (see `stop`): the deadline's, or
        // none for a closed cursor.
        let failed = |e: &datafusion::error::DataFusionError| match stop.over() {
            Some(stop::Over::Closed) => Ok(()),
            Some(stop::Over::Deadline) => Err(INTERRUPTED.to_owned()),
            None => Err(self.explain(e)),
        };
        let mut stream = match planned.await {
            Err(_) => return Err(INTERRUPTED.into()),
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return failed(&e),
        };
        let mut batch = Batch::new();
        loop {
            let next = match tokio::time::timeout_at(deadline.into(), stream.next()).await {
                Err(_) => return Err(INTERRUPTED.into()),
                Ok(None) => break,
                Ok(Some(Ok(next))) => next,
                Ok(Some(Err(e))) => return failed(&e),
            };
            if stop.over() == Some(stop::Over::Closed) {
                return Ok(());
            }
            let full: Vec<Staged> = match layout {
                Layout::Rows => encode(&next, &mut batch)?.into_iter().map(Staged::Bytes).collect(),
                Layout::Columns => columns::plan(&next)?.into_iter().map(Staged::Columns).collect(),
            };
            for full in full {
                if tx.send(Msg::Batch(full)).is_err() {
                    return Ok(());
                }
            }
        }
        if batch.rows > 0 && tx.send(Msg::Batch(Staged::Bytes(batch.finish()))).is_err() {
            return Ok(());
        }
        let _ = tx.send(Msg::End);
        Ok(())
    }

    /// The engine's error, in terms of the host's limits where one was reached.
    fn explain(&self, e: &datafusion::error::DataFusionError) -> String {
        let text = e.to_string();
        if text.contains("Resources exhausted") {
            format!(
                "{}: the statement needs more than the {} KiB of engine memory a call may use (limits.memory_mib)",
                self.name,
                self.memory_bytes >> 10
            )
        } else if text.contains("Recursive CTE") || text.contains("recursive") && text.contains("not enabled") {
            "recursive queries are not allowed on columnar tables".into()
        } else {
            text
        }
    }
}

/// The host's budget for columnar tables held in memory, shared by all of them.
#[derive(Debug, Default)]
pub(crate) struct Resident {
    left: AtomicUsize,
}

impl Resident {
    /// A budget of `bytes`; 0 holds no table in memory.
    pub(crate) fn new(bytes: usize) -> Self {
        Self { left: AtomicUsize::new(bytes) }
    }
}

/// A table in memory: its schema, and its batches in partitions.
type InMemory = (Arc<Schema>, Vec<Vec<RecordBatch>>);

/// Bytes taken from a [`Resident`] budget, given back when dropped.
struct Held {
    budget: Arc<Resident>,
    bytes: usize,
}

impl Held {
    /// Takes `bytes` more of the budget, if that much is left.
    fn grow(&mut self, bytes: usize) -> bool {
        let took = self.budget.left.fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| l.checked_sub(bytes)).is_ok();
        if took {
            self.bytes += bytes;
        }
        took
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.left.fetch_add(self.bytes, Ordering::AcqRel);
    }
}

/// Reads `table` from its Parquet file into Arrow batches, spread over as many partitions as
/// the engine runs statements on, and gives its statements sessions holding that copy. Stops
/// (`None`) when the copy outgrows the budget, and gives back what it took.
async fn load(table: &Weak<Table>, budget: &Arc<Resident>) -> Result<Option<usize>, String> {
    let Some(source) = table.upgrade() else { return Ok(None) };
    let name = source.name.clone();
    let frame = source.current()?.templates.columns.table(name.as_str()).await.map_err(|e| e.to_string())?;
    drop(source);
    let schema = Arc::new(frame.schema().as_arrow().clone());
    let mut stream = frame.execute_stream().await.map_err(|e| e.to_string())?;
    let partitions = config().target_partitions().max(1);
    let mut parts = vec![Vec::new(); partitions];
    let mut held = Held { budget: budget.clone(), bytes: 0 };
    let mut next = 0;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| e.to_string())?;
        if !held.grow(batch.get_array_memory_size()) {
            return Ok(None);
        }
        parts[next % partitions].push(batch);
        next += 1;
    }
    let Some(views) = as_views(&schema, &parts, &mut held)? else { return Ok(None) };
    let session = |(schema, parts): InMemory| -> Result<SessionContext, String> {
        let ctx = context(config());
        let copy = MemTable::try_new(schema, parts).map_err(|e| e.to_string())?;
        ctx.register_table(name.as_str(), Arc::new(copy)).map_err(|e| e.to_string())?;
        Ok(ctx)
    };
    let (rows, columns, bytes) = (session(views)?, session((schema, parts))?, held.bytes);
    let Some(table) = table.upgrade() else { return Ok(None) };
    let templates = Arc::new(Templates { rows, columns, _held: Some(held) });
    *table.current.write().map_err(|_| "the table's state is poisoned".to_owned())? =
        Current { templates, storage: Storage::Memory(bytes) };
    Ok(Some(bytes))
}

/// `parts` with text and bytes as views, for statements whose rows go out as rows (as they read
/// Parquet, see `Templates`); `None` when the views do not fit in `held`'s budget. The views
/// point into the same bytes, so only they take more memory.
fn as_views(schema: &Schema, parts: &[Vec<RecordBatch>], held: &mut Held) -> Result<Option<InMemory>, String> {
    let viewed = |t: &DataType| match t {
        DataType::Utf8 | DataType::LargeUtf8 => Some(DataType::Utf8View),
        DataType::Binary | DataType::LargeBinary => Some(DataType::BinaryView),
        _ => None,
    };
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_data_type(viewed(f.data_type()).unwrap_or(f.data_type().clone())))
        .collect();
    let view_schema = Arc::new(Schema::new(fields));
    let mut view_parts = Vec::with_capacity(parts.len());
    for part in parts {
        let mut batches = Vec::with_capacity(part.len());
        for batch in part {
            let mut columns = Vec::with_capacity(batch.num_columns());
            for column in batch.columns() {
                let Some(view) = viewed(column.data_type()) else {
                    columns.push(column.clone());
                    continue;
                };
                if !held.grow(column.len() * size_of::<u128>()) {
                    return Ok(None);
                }
                columns.push(cast(column, &view).map_err(|e| e.to_string())?);
            }
            batches.push(RecordBatch::try_new(view_schema.clone(), columns).map_err(|e| e.to_string())?);
        }
        view_parts.push(batches);
    }
    Ok(Some((view_schema, view_parts)))
}

/// `sql` with SQLite's parameters (`?1`, or `?` for the next one) written as the engine's
/// (`$1`), so that a module written for a SQLite table runs on a columnar one unchanged. Only
/// placeholder tokens change: a `?` inside a string stays. SQL that does not tokenize is left
/// for the engine to reject.
fn dollar_placeholders(sql: &str) -> String {
    use datafusion::sql::sqlparser::dialect::SQLiteDialect;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let Ok(tokens) = Tokenizer::new(&SQLiteDialect {}, sql).tokenize() else { return sql.to_owned() };
    if !tokens.iter().any(|t| matches!(t, Token::Placeholder(p) if p.starts_with('?'))) {
        return sql.to_owned();
    }
    let mut next = 0;
    tokens
        .into_iter()
        .map(|t| match t {
            Token::Placeholder(p) if p.starts_with('?') => {
                next = match p[1..].parse::<usize>() {
                    Ok(n) => n,
                    Err(_) => next + 1,
                };
                format!("${next}")
            }
            other => other.to_string(),
        })
        .collect()
}

/// What the cursor reports as the deadline.
const INTERRUPTED: &str = "interrupted";

/// A module's parameters as the engine's (`$1`, `$2`, ...).
fn scalars(params: Vec<Value>) -> Vec<ScalarValue> {
    params
        .into_iter()
        .map(|p| match p {
            Value::Null => ScalarValue::Null,
            Value::Integer(i) => ScalarValue::Int64(Some(i)),
            Value::Real(f) => ScalarValue::Float64(Some(f)),
            Value::Text(t) => ScalarValue::Utf8(Some(t)),
            Value::Blob(b) => ScalarValue::Binary(Some(b)),
        })
        .collect()
}

/// The row API's cells, from the engine's values.
impl Batch {
    /// A cell holding `v`.
    fn value(&mut self, v: &Value) {
        match v {
            Value::Null => self.cell(ValueRef::Null),
            Value::Integer(i) => self.cell(ValueRef::Integer(*i)),
            Value::Real(f) => self.cell(ValueRef::Real(*f)),
            Value::Text(t) => self.text(t),
            Value::Blob(b) => self.bytes(b),
        }
    }

    /// A text cell.
    fn text(&mut self, t: &str) {
        self.cell(ValueRef::Text(t.as_bytes()));
    }

    /// A blob cell.
    fn bytes(&mut self, b: &[u8]) {
        self.cell(ValueRef::Blob(b));
    }
}

/// Appends `rows` to `batch`; returns the batches that filled up on the way.
fn encode(rows: &RecordBatch, batch: &mut Batch) -> Result<Vec<Vec<u8>>, String> {
    let columns: Vec<Column<'_>> = rows.columns().iter().map(|c| Column::of(c.as_ref())).collect::<Result<_, _>>()?;
    let mut full = Vec::new();
    for row in 0..rows.num_rows() {
        batch.row(columns.len());
        for column in &columns {
            column.write(row, batch);
        }
        if batch.rows >= roam_abi::BATCH_MAX_ROWS || batch.bytes.len() >= BATCH_TARGET_BYTES {
            full.push(std::mem::replace(batch, Batch::new()).finish());
        }
    }
    Ok(full)
}

/// A column of a record batch, read as the row API's values. Integers of every width are cast
/// to 64 bits and floats to doubles once per record batch, not per value.
enum Column<'a> {
    Int(Int64Array),
    Float(Float64Array),
    Bool(&'a BooleanArray),
    Text(&'a dyn Array),
    Bytes(&'a dyn Array),
    /// Decimals, dates, timestamps and anything else: as text, exactly as the engine writes it.
    Shown(&'a dyn Array, ArrayFormatter<'a>),
}

impl<'a> Column<'a> {
    fn of(array: &'a dyn Array) -> Result<Self, String> {
        let cast = |to: &DataType| cast(array, to).map_err(|e| e.to_string());
        Ok(match array.data_type() {
            t if t.is_integer() => Self::Int(cast(&DataType::Int64)?.as_primitive::<Int64Type>().clone()),
            DataType::Float16 | DataType::Float32 | DataType::Float64 => {
                Self::Float(cast(&DataType::Float64)?.as_primitive::<Float64Type>().clone())
            }
            DataType::Boolean => Self::Bool(array.as_boolean()),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Self::Text(array),
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => Self::Bytes(array),
            _ => Self::Shown(
                array,
                ArrayFormatter::try_new(array, &FormatOptions::default()).map_err(|e| e.to_string())?,
            ),
        })
    }

    fn write(&self, row: usize, batch: &mut Batch) {
        let null = match self {
            Self::Int(a) => a.is_null(row),
            Self::Float(a) => a.is_null(row),
            Self::Bool(a) => a.is_null(row),
            Self::Text(a) | Self::Bytes(a) | Self::Shown(a, _) => a.is_null(row),
        };
        if null {
            return batch.value(&Value::Null);
        }
        match self {
            Self::Int(a) => batch.value(&Value::Integer(a.value(row))),
            Self::Float(a) => batch.value(&Value::Real(a.value(row))),
            Self::Bool(a) => batch.value(&Value::Integer(a.value(row).into())),
            Self::Text(a) => batch.text(text_at(*a, row)),
            Self::Bytes(a) => batch.bytes(bytes_at(*a, row)),
            Self::Shown(_, shown) => batch.text(&shown.value(row).to_string()),
        }
    }
}

fn text_at(array: &dyn Array, row: usize) -> &str {
    match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().value(row),
        DataType::LargeUtf8 => array.as_string::<i64>().value(row),
        _ => array.as_string_view().value(row),
    }
}

fn bytes_at(array: &dyn Array, row: usize) -> &[u8] {
    match array.data_type() {
        DataType::Binary => array.as_any().downcast_ref::<BinaryArray>().map_or(&[], |a| a.value(row)),
        DataType::LargeBinary => array.as_any().downcast_ref::<LargeBinaryArray>().map_or(&[], |a| a.value(row)),
        _ => array.as_binary_view().value(row),
    }
}

fn extension(path: &Path) -> String {
    path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default()
}

/// The Arrow type of a declared column.
fn arrow_type(t: ColumnType) -> DataType {
    match t {
        ColumnType::Integer => DataType::Int64,
        ColumnType::Real => DataType::Float64,
        ColumnType::Text => DataType::Utf8,
        ColumnType::Decimal { precision, scale } => DataType::Decimal128(precision, scale),
        ColumnType::Date => DataType::Date32,
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
    }
}

/// Converts `csv` into `parquet` unless a conversion at least as new as the CSV, made with the
/// same declared columns, exists. Written to a temporary file and renamed into place, so a
/// crash never leaves half a table.
fn convert_if_stale(
    ctx: &SessionContext,
    name: &str,
    csv: &Path,
    parquet: &Path,
    declared: &BTreeMap<String, ColumnType>,
) -> Result<(), String> {
    let made = Made::new(parquet, declared);
    if made.is_current(csv)? {
        return Ok(());
    }
    let started = Instant::now();
    let csv_path = csv.to_str().ok_or("the CSV file's path is not UTF-8")?;
    let dir = parquet.parent().ok_or("no directory for the table")?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let tmp = parquet.with_extension("loading");
    let tmp_path = tmp.to_str().ok_or("the data directory's path is not UTF-8")?.to_owned();
    let _ = std::fs::remove_file(&tmp);
    // Types inferred from the first rows, as most CSV readers do; a value further down that
    // does not fit them (a late decimal in an integer column) fails that conversion, and the
    // file is converted again with types inferred from every row.
    let sampled = block_on(write_parquet(ctx, csv_path, &tmp_path, declared, INFER_FROM_ROWS))?;
    let (rows, schema) = match sampled {
        Ok(done) => done,
        Err(_) => {
            block_on(write_parquet(ctx, csv_path, &tmp_path, declared, usize::MAX))?.map_err(|e| format!("{e}"))?
        }
    };
    let described: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| {
            let how = if declared.contains_key(f.name()) { "declared" } else { "inferred" };
            format!("{} {} ({how})", f.name(), f.data_type())
        })
        .collect();
    tracing::info!(
        "table {name}: {rows} rows from {} in {:.1} s; columns {}",
        csv.display(),
        started.elapsed().as_secs_f64(),
        described.join(", ")
    );
    made.replace_with(&tmp)
}

/// Rows the column types of a CSV file are first inferred from.
const INFER_FROM_ROWS: usize = 100_000;

/// Writes `csv` as the Parquet file `tmp`, with types inferred from its first `infer` rows and
/// the declared ones laid over them; returns the rows written and the schema.
async fn write_parquet(
    ctx: &SessionContext,
    csv: &str,
    tmp: &str,
    declared: &BTreeMap<String, ColumnType>,
    infer: usize,
) -> datafusion::error::Result<(u64, Schema)> {
    let inferred = ctx
        .read_csv(csv, CsvReadOptions::new().has_header(true).schema_infer_max_records(infer))
        .await?
        .schema()
        .as_arrow()
        .clone();
    if let Some(unknown) = declared.keys().find(|c| inferred.field_with_name(c).is_err()) {
        return Err(datafusion::error::DataFusionError::Plan(format!(
            "the configuration declares column {unknown:?}, which the CSV file does not have"
        )));
    }
    let fields: Vec<Field> = inferred
        .fields()
        .iter()
        .map(|f| match declared.get(f.name()) {
            Some(t) => Field::new(f.name(), arrow_type(*t), true),
            None => f.as_ref().clone(),
        })
        .collect();
    let schema = Schema::new(fields);
    let frame = ctx.read_csv(csv, CsvReadOptions::new().has_header(true).schema(&schema)).await?;
    let mut options = TableParquetOptions::default();
    // Uncompressed: the file is read far more often than it is written, and decoding is the
    // engine's work at every query.
    options.global = ParquetOptions { compression: Some("uncompressed".into()), ..options.global };
    let written =
        frame.write_parquet(tmp, DataFrameWriteOptions::new().with_single_file_output(true), Some(options)).await?;
    let rows = written.iter().filter_map(|b| b.column(0).as_primitive_opt::<UInt64Type>()).map(|c| c.value(0)).sum();
    Ok((rows, schema))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_held_is_taken_from_the_budget_and_given_back() {
        let budget = Arc::new(Resident::new(100));
        let mut a = Held { budget: budget.clone(), bytes: 0 };
        let mut b = Held { budget: budget.clone(), bytes: 0 };
        assert!(a.grow(60));
        assert!(!b.grow(60), "the budget was taken twice");
        assert!(b.grow(40));
        assert_eq!(budget.left.load(Ordering::Acquire), 0);
        drop(a);
        assert_eq!(budget.left.load(Ordering::Acquire), 60);
        drop(b);
        assert_eq!(budget.left.load(Ordering::Acquire), 100);
    }
}
