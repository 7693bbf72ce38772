//! Column batches: a query's rows as typed slices, one per column, copied into the module's
//! memory once per batch and read without decoding anything (the layout is in sdk/ABI.md).

use core::fmt;

#[cfg(doc)]
use roam_abi::columns::ALIGN;
use roam_abi::columns::{DESCRIPTOR_BYTES, HEADER_BYTES, Kind};

use crate::{Error, Result, sys};

/// The batches of a [`Table::query_columns`](crate::Table::query_columns), fetched one at a
/// time into one buffer that the next batch reuses. Dropping it releases the host's cursor.
pub struct ColumnBatches {
    /// The host's cursor, released on drop.
    cursor: u32,
    /// The current batch.
    batch: ColumnBatch,
    /// The cursor is exhausted or failed.
    done: bool,
}

impl fmt::Debug for ColumnBatches {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ColumnBatches").field("cursor", &self.cursor).field("done", &self.done).finish_non_exhaustive()
    }
}

impl ColumnBatches {
    pub(crate) fn new(cursor: u32) -> Self {
        Self { cursor, batch: ColumnBatch { words: Vec::new(), len: 0 }, done: false }
    }

    /// The next batch, or `None` once every row was read. An error (the host failed the
    /// query midway) is returned once; after it there are no more batches.
    pub fn next_batch(&mut self) -> Result<Option<&ColumnBatch>> {
        if self.done {
            return Ok(None);
        }
        match sys::cursor_next_aligned(self.cursor, &mut self.batch.words) {
            Ok(Some(len)) => {
                self.batch.len = len;
                Ok(Some(&self.batch))
            }
            Ok(None) => {
                self.done = true;
                Ok(None)
            }
            Err(e) => {
                self.done = true;
                Err(e)
            }
        }
    }
}

impl Drop for ColumnBatches {
    fn drop(&mut self) {
        sys::cursor_close(self.cursor);
    }
}

/// One batch of rows, column by column.
pub struct ColumnBatch {
    /// The batch's bytes, held in `u128`s: the host starts each region at a multiple of
    /// [`ALIGN`] from the batch's start, so every column is then aligned for its type.
    words: Vec<u128>,
    /// Bytes of the batch in `words`.
    len: usize,
}

impl fmt::Debug for ColumnBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ColumnBatch").field("rows", &self.rows()).field("columns", &self.columns()).finish()
    }
}

impl ColumnBatch {
    fn bytes(&self) -> &[u8] {
        let all: &[u8] = bytemuck::cast_slice(&self.words);
        &all[..self.len.min(all.len())]
    }

    fn u32_at(&self, at: usize) -> usize {
        let word = at.checked_add(4).and_then(|end| self.bytes().get(at..end));
        word.map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    /// Rows in the batch (at most 8192).
    pub fn rows(&self) -> usize {
        self.u32_at(0)
    }

    /// Columns in the batch, as the statement selected them.
    pub fn columns(&self) -> usize {
        self.u32_at(4)
    }

    /// Column `index` (from 0). Fails if there is no such column or the host sent a batch that
    /// does not follow the layout.
    pub fn column(&self, index: usize) -> Result<Column<'_>> {
        if index >= self.columns() {
            return Err(Error::msg(format!("no column {index}: the batch has {}", self.columns())));
        }
        // The descriptor exists once its last byte does (checked: `index` comes from the batch).
        let d = DESCRIPTOR_BYTES.checked_mul(index).map_or(usize::MAX, |d| d.saturating_add(HEADER_BYTES));
        let head = self.bytes().get(d..d.saturating_add(DESCRIPTOR_BYTES)).ok_or_else(|| malformed("descriptor"))?;
        let kind = Kind::from_code(head[0]).ok_or_else(|| malformed("kind"))?;
        let (precision, scale) = (head[1], head[2] as i8);
        let region = |j: usize| -> Result<&[u8]> {
            let (offset, len) = (self.u32_at(d + 4 + 8 * j), self.u32_at(d + 8 + 8 * j));
            // Checked: in a malformed batch the end could pass 4 GiB, which wraps on wasm32.
            offset.checked_add(len).and_then(|end| self.bytes().get(offset..end)).ok_or_else(|| malformed("region"))
        };
        let (values, data, validity, name) = (region(0)?, region(1)?, region(2)?, region(3)?);
        let rows = self.rows();
        let name = core::str::from_utf8(name).map_err(|_| malformed("name"))?;
        let validity = if validity.is_empty() { None } else { Some(validity) };
        if validity.is_some_and(|v| v.len() < rows.div_ceil(8)) {
            return Err(malformed("validity"));
        }
        let offsets = || -> Result<&[u32]> {
            let offsets: &[u32] = slice(values, rows.saturating_add(1))?;
            if offsets.windows(2).any(|w| w[0] > w[1]) || offsets.last().is_some_and(|l| *l as usize > data.len()) {
                return Err(malformed("offsets"));
            }
            Ok(offsets)
        };
        let values = match kind {
            Kind::Integer => Values::Integer(slice(values, rows)?),
            Kind::Real => Values::Real(slice(values, rows)?),
            Kind::Date => Values::Date(slice(values, rows)?),
            Kind::Decimal => Values::Decimal { values: slice(values, rows)?, precision, scale },
            Kind::Timestamp => Values::Timestamp(slice(values, rows)?),
            Kind::Text => {
                let text = core::str::from_utf8(data).map_err(|_| malformed("text"))?;
                let offsets = offsets()?;
                if offsets.iter().any(|o| !text.is_char_boundary(*o as usize)) {
                    return Err(malformed("text offsets"));
                }
                Values::Text(Strings { offsets, text })
            }
            Kind::Blob => Values::Blob(Blobs { offsets: offsets()?, data }),
        };
        Ok(Column { name, values, validity })
    }
}

/// `bytes` as exactly `n` values of `T`, if it is that long and aligned for `T`.
fn slice<T: bytemuck::Pod>(bytes: &[u8], n: usize) -> Result<&[T]> {
    let all: &[T] = bytemuck::try_cast_slice(bytes).map_err(|_| malformed("alignment"))?;
    all.get(..n).filter(|_| all.len() == n).ok_or_else(|| malformed("length"))
}

fn malformed(what: &str) -> Error {
    Error::msg(format!("the host sent a column batch whose {what} does not follow the layout of sdk/ABI.md"))
}

/// One column of a [`ColumnBatch`].
#[derive(Clone, Copy, Debug)]
pub struct Column<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its values, one per row.
    pub values: Values<'a>,
    /// One bit per row (least significant first), 0 for null; `None` when no value is null.
    validity: Option<&'a [u8]>,
}

impl Column<'_> {
    /// Whether row `row`'s value is null (its slot in [`values`](Column::values) holds no value).
    pub fn is_null(&self, row: usize) -> bool {
        self.validity.is_some_and(|bits| bits.get(row / 8).is_some_and(|b| b & (1 << (row % 8)) == 0))
    }

    /// Whether any value of the column is null.
    pub fn has_nulls(&self) -> bool {
        self.validity.is_some()
    }
}

/// A column's values, as slices of its type.
#[derive(Clone, Copy, Debug)]
pub enum Values<'a> {
    /// Integers of every width, and booleans as 0 or 1.
    Integer(&'a [i64]),
    /// Floating-point numbers.
    Real(&'a [f64]),
    /// Days since 1970-01-01.
    Date(&'a [i32]),
    /// Exact decimals: each value is the number times 10 to the power of `scale`.
    Decimal {
        /// The unscaled values.
        values: &'a [i128],
        /// Digits in all, as the column was declared.
        precision: u8,
        /// Digits after the point.
        scale: i8,
    },
    /// Microseconds since 1970-01-01 00:00:00, without a time zone.
    Timestamp(&'a [i64]),
    /// Text (and types with no kind of their own, written as text).
    Text(Strings<'a>),
    /// Bytes.
    Blob(Blobs<'a>),
}

/// A text column: value `i` is `text[offsets[i]..offsets[i + 1]]`.
#[derive(Clone, Copy, Debug)]
pub struct Strings<'a> {
    /// `rows + 1` offsets into `text`, from 0.
    pub offsets: &'a [u32],
    /// Every value, one after the other.
    pub text: &'a str,
}

impl<'a> Strings<'a> {
    /// Value `row` (empty for a null, or past the end).
    pub fn get(&self, row: usize) -> &'a str {
        match (self.offsets.get(row), self.offsets.get(row + 1)) {
            (Some(a), Some(b)) => self.text.get(*a as usize..*b as usize).unwrap_or_default(),
            _ => "",
        }
    }
}

/// A blob column: value `i` is `data[offsets[i]..offsets[i + 1]]`.
#[derive(Clone, Copy, Debug)]
pub struct Blobs<'a> {
    /// `rows + 1` offsets into `data`, from 0.
    pub offsets: &'a [u32],
    /// Every value, one after the other.
    pub data: &'a [u8],
}

impl<'a> Blobs<'a> {
    /// Value `row` (empty for a null, or past the end).
    pub fn get(&self, row: usize) -> &'a [u8] {
        match (self.offsets.get(row), self.offsets.get(row + 1)) {
            (Some(a), Some(b)) => self.data.get(*a as usize..*b as usize).unwrap_or_default(),
            _ => &[],
        }
    }
}
