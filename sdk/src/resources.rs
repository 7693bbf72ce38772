//! Handles to the resources a host offers: tables and logs.

use core::fmt;
use core::iter::FusedIterator;
use core::marker::PhantomData;

use roam_abi::Value;
use serde::de::DeserializeOwned;

use crate::cbor::{self, RowReader};
use crate::columns::ColumnBatches;
use crate::{Result, sys};

/// A SQL table the host offers, opened by name. Needs the capability `table:<name>`.
#[derive(Debug)]
pub struct Table {
    /// The host's handle for the table.
    handle: u32,
}

impl Table {
    /// Opens the table `name`. Fails with [`ErrorCode::NotFound`](crate::ErrorCode::NotFound)
    /// if the host offers no such resource, or [`ErrorCode::Denied`](crate::ErrorCode::Denied)
    /// if the module's signed capabilities do not include `table:<name>`.
    pub fn open(name: &str) -> Result<Table> {
        sys::resource_open(name).map(|handle| Table { handle })
    }

    /// Runs the read-only statement `sql` with `params` bound to `?1`, `?2`, … and returns its
    /// rows, each decoded as `T`.
    ///
    /// A row is a list of cells, so `T` is anything serde reads from a sequence: a tuple such as
    /// `(String, i64)`, a struct deriving `Deserialize` (its fields take the columns in order),
    /// or `Vec<Value>`. Fails with [`ErrorCode::Sql`](crate::ErrorCode::Sql) if the host's
    /// database refuses the statement (a write, a syntax error).
    pub fn query<T: DeserializeOwned>(&self, sql: &str, params: &[Value]) -> Result<Rows<T>> {
        let params = cbor::encode(params)?;
        let cursor = sys::table_query(self.handle, sql, &params)?;
        Ok(Rows { cursor, reader: RowReader::new(), done: false, row: PhantomData })
    }

    /// Runs `sql` like [`query`](Table::query), and returns its rows column by column, a batch
    /// of up to 8192 rows at a time: integers, reals, dates, exact decimals and timestamps as
    /// slices of `i64`, `f64`, `i32`, `i128` and `i64`, text as offsets into one string. No
    /// value is decoded on the way: this is the fast path for aggregating in the module.
    ///
    /// Only a table of the host's columnar engine has columns; another fails with
    /// [`ErrorCode::WrongType`](crate::ErrorCode::WrongType).
    ///
    /// ```no_run
    /// # fn main() -> roam_sdk::Result<()> {
    /// use roam_sdk::{Table, Values};
    /// let lines = Table::open("lineitem")?;
    /// let mut batches = lines.query_columns("SELECT l_quantity FROM lineitem", &[])?;
    /// let mut total = 0i64;
    /// while let Some(batch) = batches.next_batch()? {
    ///     if let Values::Integer(quantities) = batch.column(0)?.values {
    ///         total += quantities.iter().sum::<i64>();
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn query_columns(&self, sql: &str, params: &[Value]) -> Result<ColumnBatches> {
        let params = cbor::encode(params)?;
        sys::table_query_columns(self.handle, sql, &params).map(ColumnBatches::new)
    }
}

/// The rows of a [`Table::query`], each decoded as `T`.
///
/// Rows come from the host in batches, fetched as the iteration needs them. An error (the host
/// failed the query midway, or a row did not decode as `T`) is yielded once and ends the
/// iteration. Dropping `Rows` releases the host's cursor, so stopping early is cheap.
pub struct Rows<T> {
    /// The host's cursor, released on drop.
    cursor: u32,
    /// Decodes the current batch.
    reader: RowReader,
    /// The cursor is exhausted or failed: nothing more to fetch.
    done: bool,
    /// The type rows decode as; `fn() -> T` because `Rows` owns no `T`.
    row: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for Rows<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rows").field("cursor", &self.cursor).field("done", &self.done).finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned> Rows<T> {
    fn next_row(&mut self) -> Option<Result<T>> {
        loop {
            if let Some(row) = self.reader.next() {
                return Some(row);
            }
            match sys::cursor_next(self.cursor, self.reader.buffer()) {
                Ok(true) => {}
                Ok(false) => return None,
                Err(err) => return Some(Err(err)),
            }
            if let Err(err) = self.reader.start() {
                return Some(Err(err));
            }
        }
    }
}

impl<T: DeserializeOwned> Iterator for Rows<T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        if self.done {
            return None;
        }
        let row = self.next_row();
        if !matches!(row, Some(Ok(_))) {
            self.done = true;
        }
        row
    }
}

impl<T: DeserializeOwned> FusedIterator for Rows<T> {}

impl<T> Drop for Rows<T> {
    fn drop(&mut self) {
        sys::cursor_close(self.cursor);
    }
}

/// An append-only log the host offers, opened by name. Needs the capability `log:<name>`.
#[derive(Debug)]
pub struct Log {
    /// The host's handle for the log.
    handle: u32,
}

impl Log {
    /// Opens the log `name`. Fails like [`Table::open`].
    pub fn open(name: &str) -> Result<Log> {
        sys::resource_open(name).map(|handle| Log { handle })
    }

    /// Appends one line. Fails with [`ErrorCode::TooLarge`](crate::ErrorCode::TooLarge) if the
    /// line or the log is over the host's limit, or
    /// [`ErrorCode::WrongType`](crate::ErrorCode::WrongType) if `name` was not a log.
    pub fn append(&self, line: &str) -> Result<()> {
        sys::log_append(self.handle, line)
    }
}
