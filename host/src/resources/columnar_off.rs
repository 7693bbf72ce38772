//! The columnar engine's place in a host built without it (`--no-default-features`, as the
//! fuzz targets are): a columnar table cannot be opened, so none is ever queried.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use roam_abi::Value;

use super::{ColumnType, Cursor, Layout, ResourceError};

/// A column batch: none exists without the engine.
#[derive(Debug)]
pub enum Pending {}

impl Pending {
    pub(crate) fn len(&self) -> usize {
        match *self {}
    }

    pub(crate) fn write_into(&self, _out: &mut [u8]) {
        match *self {}
    }
}

/// The budget for tables in memory, which none uses without the engine.
#[derive(Debug, Default)]
pub(crate) struct Resident;

impl Resident {
    pub(crate) fn new(_bytes: usize) -> Self {
        Self
    }
}

/// Where a columnar table is read from: no such table exists without the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Storage {}

/// No value of this type exists: [`Table::open`] always fails.
#[derive(Debug)]
pub(crate) enum Table {}

impl Table {
    pub(crate) fn open(
        _name: &str,
        _source: &Path,
        _data_dir: &Path,
        _declared: &BTreeMap<String, ColumnType>,
        _memory_bytes: usize,
    ) -> Result<Self, String> {
        Err("this roam was built without the columnar engine (cargo feature `columnar`): rebuild with it, or use engine = \"sqlite\"".into())
    }

    pub(crate) fn hold_in_memory(self: &Arc<Self>, _budget: &Arc<Resident>) {
        match **self {}
    }

    pub(crate) fn storage(&self) -> Storage {
        match *self {}
    }

    pub(crate) fn query(
        self: &Arc<Self>,
        _sql: String,
        _params: Vec<Value>,
        _deadline: Instant,
        _layout: Layout,
    ) -> Result<Cursor, ResourceError> {
        match **self {}
    }
}
