//! Column batches: a record batch laid out for a module to read as typed slices (the layout is
//! `roam_abi::columns`, described in sdk/ABI.md). Fixed-width values and the bytes of text are
//! copied as whole buffers; only text offsets are rewritten, to start at 0.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringBuilder};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    ArrowNativeType, DataType, Date32Type, Decimal128Type, Float64Type, Int64Type, TimeUnit, TimestampMicrosecondType,
    ToByteSlice,
};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use roam_abi::columns::{ALIGN, DESCRIPTOR_BYTES, HEADER_BYTES, Kind, MAX_ROWS};

// Arrow's buffers are in the machine's byte order and a batch is little-endian: the buffers
// are copied as they are, which is right only here.
const _: () = assert!(cfg!(target_endian = "little"), "column batches copy native buffers: a little-endian host only");

/// A batch past this many bytes is split (unless it is one row): the module has to hold it.
const TARGET_BYTES: usize = 4 << 20;

/// `rows` as column batches of at most [`MAX_ROWS`] rows and about [`TARGET_BYTES`] each,
/// planned but not yet written: the module's memory is where they are written, once.
pub(crate) fn plan(rows: &RecordBatch) -> Result<Vec<Pending>, String> {
    let columns: Vec<(Kind, ArrayRef)> = rows.columns().iter().map(normalize).collect::<Result<_, _>>()?;
    let names: Arc<[String]> = rows.schema_ref().fields().iter().map(|f| f.name().clone()).collect();
    let mut out = Vec::new();
    for start in (0..rows.num_rows()).step_by(MAX_ROWS) {
        split(&columns, &names, start, MAX_ROWS.min(rows.num_rows() - start), &mut out);
    }
    Ok(out)
}

/// Rows `start..start + len` as one batch, or as two halves (and so on) while over
/// [`TARGET_BYTES`].
fn split(columns: &[(Kind, ArrayRef)], names: &Arc<[String]>, start: usize, len: usize, out: &mut Vec<Pending>) {
    let piece: Vec<(Kind, ArrayRef)> = columns.iter().map(|(k, a)| (*k, a.slice(start, len))).collect();
    if len > 1 && estimate(&piece) > TARGET_BYTES {
        split(columns, names, start, len / 2, out);
        split(columns, names, start + len / 2, len - len / 2, out);
    } else {
        out.push(Pending::new(piece, names.clone(), len));
    }
}

/// A column batch whose regions are placed: its length is known, and its bytes are written
/// straight from the engine's arrays by [`Pending::write_into`].
pub(crate) struct Pending {
    columns: Vec<(Kind, ArrayRef)>,
    names: Arc<[String]>,
    rows: usize,
    /// Each column's values, data, validity and name: (offset, length).
    regions: Vec<[(usize, usize); 4]>,
    len: usize,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("rows", &self.rows).field("len", &self.len).finish_non_exhaustive()
    }
}

impl Pending {
    fn new(columns: Vec<(Kind, ArrayRef)>, names: Arc<[String]>, rows: usize) -> Self {
        let mut at = HEADER_BYTES + DESCRIPTOR_BYTES * columns.len();
        let mut place = |len: usize| match len {
            0 => (0, 0),
            len => {
                let offset = at.next_multiple_of(ALIGN);
                at = offset + len;
                (offset, len)
            }
        };
        let regions = columns
            .iter()
            .zip(names.iter())
            .map(|((kind, a), name)| {
                let values = match kind {
                    Kind::Text | Kind::Blob => (rows + 1) * 4,
                    fixed => rows * fixed.width(),
                };
                let nulls = a.logical_nulls().is_some_and(|n| n.null_count() > 0);
                [
                    place(values),
                    place(data(*kind, a.as_ref()).len()),
                    place(if nulls { rows.div_ceil(8) } else { 0 }),
                    place(name.len()),
                ]
            })
            .collect();
        Self { columns, names, rows, regions, len: at }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Writes the batch into `out`, exactly [`len`](Self::len) bytes, gaps included (as
    /// zeros: `out` may hold anything).
    pub(crate) fn write_into(&self, out: &mut [u8]) {
        let head = HEADER_BYTES + DESCRIPTOR_BYTES * self.columns.len();
        out[..head].fill(0);
        put(out, 0, self.rows);
        put(out, 4, self.columns.len());
        put(out, 8, self.len);
        let mut written = head;
        for (i, (((kind, array), name), regions)) in
            self.columns.iter().zip(self.names.iter()).zip(&self.regions).enumerate()
        {
            let (precision, scale) = match array.data_type() {
                DataType::Decimal128(p, s) => (*p, *s),
                _ => (0, 0),
            };
            let d = HEADER_BYTES + DESCRIPTOR_BYTES * i;
            out[d..d + 4].copy_from_slice(&[*kind as u8, precision, scale as u8, 0]);
            for (j, (offset, len)) in regions.iter().enumerate() {
                put(out, d + 4 + 8 * j, *offset);
                put(out, d + 8 + 8 * j, *len);
                if *len == 0 {
                    continue;
                }
                out[written..*offset].fill(0);
                let region = &mut out[*offset..offset + len];
                match j {
                    0 => values(*kind, array.as_ref(), region),
                    1 => region.copy_from_slice(data(*kind, array.as_ref())),
                    2 => validity(array.logical_nulls().as_ref(), region),
                    _ => region.copy_from_slice(name.as_bytes()),
                }
                written = offset + len;
            }
        }
        out[written..].fill(0);
    }
}

/// The kind a column travels as, and the column cast to its one Arrow type.
fn normalize(array: &ArrayRef) -> Result<(Kind, ArrayRef), String> {
    let to = |kind, t: &DataType| cast(array, t).map(|a| (kind, a)).map_err(|e| e.to_string());
    match array.data_type() {
        t if t.is_integer() || *t == DataType::Boolean => to(Kind::Integer, &DataType::Int64),
        DataType::Float16 | DataType::Float32 | DataType::Float64 => to(Kind::Real, &DataType::Float64),
        DataType::Date32 | DataType::Date64 => to(Kind::Date, &DataType::Date32),
        DataType::Decimal128(_, _) => Ok((Kind::Decimal, array.clone())),
        DataType::Timestamp(_, _) => to(Kind::Timestamp, &DataType::Timestamp(TimeUnit::Microsecond, None)),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => to(Kind::Text, &DataType::Utf8),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => to(Kind::Blob, &DataType::Binary),
        _ => {
            // Intervals, wider decimals, nested types: as the engine shows them.
            let shown =
                ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default()).map_err(|e| e.to_string())?;
            let mut text = StringBuilder::new();
            for row in 0..array.len() {
                if array.is_null(row) {
                    text.append_null();
                } else {
                    text.append_value(shown.value(row).to_string());
                }
            }
            Ok((Kind::Text, Arc::new(text.finish())))
        }
    }
}

/// About how many bytes `columns` take in a batch.
fn estimate(columns: &[(Kind, ArrayRef)]) -> usize {
    columns
        .iter()
        .map(|(kind, a)| {
            let data = match kind {
                Kind::Text => a.as_string::<i32>().value_data().len(),
                Kind::Blob => a.as_binary::<i32>().value_data().len(),
                _ => 0,
            };
            (a.len() + 1) * kind.width() + data + a.len() / 8 + 4 * ALIGN
        })
        .sum()
}

fn put(out: &mut [u8], at: usize, n: usize) {
    // A batch is far below 4 GiB (MAX_ROWS rows of at most TARGET_BYTES, or one row of a
    // value the engine could hold), so the cast is exact.
    out[at..at + 4].copy_from_slice(&(n as u32).to_le_bytes());
}

/// Writes the values region: fixed-width values as they are, offsets rebased.
fn values(kind: Kind, a: &dyn Array, out: &mut [u8]) {
    match kind {
        Kind::Integer => out.copy_from_slice(a.as_primitive::<Int64Type>().values().to_byte_slice()),
        Kind::Real => out.copy_from_slice(a.as_primitive::<Float64Type>().values().to_byte_slice()),
        Kind::Date => out.copy_from_slice(a.as_primitive::<Date32Type>().values().to_byte_slice()),
        Kind::Decimal => out.copy_from_slice(a.as_primitive::<Decimal128Type>().values().to_byte_slice()),
        Kind::Timestamp => out.copy_from_slice(a.as_primitive::<TimestampMicrosecondType>().values().to_byte_slice()),
        Kind::Text => offsets(a.as_string::<i32>().value_offsets(), out),
        Kind::Blob => offsets(a.as_binary::<i32>().value_offsets(), out),
    }
}

/// Offsets rebased to start at 0 (a sliced array's do not). Arrow's offsets never decrease
/// from a first one of at least 0, so as `u32` they are the same bytes.
fn offsets(offsets: &[i32], out: &mut [u8]) {
    match offsets.first().copied().unwrap_or(0) {
        0 => out.copy_from_slice(offsets.to_byte_slice()),
        first => {
            for (o, slot) in offsets.iter().zip(out.chunks_exact_mut(4)) {
                slot.copy_from_slice(&((o - first).as_usize() as u32).to_le_bytes());
            }
        }
    }
}

/// The bytes of a text or blob column's values, one after the other (none for other kinds).
fn data(kind: Kind, a: &dyn Array) -> &[u8] {
    let (offsets, bytes) = match kind {
        Kind::Text => (a.as_string::<i32>().value_offsets(), a.as_string::<i32>().value_data()),
        Kind::Blob => (a.as_binary::<i32>().value_offsets(), a.as_binary::<i32>().value_data()),
        _ => return &[],
    };
    match (offsets.first(), offsets.last()) {
        (Some(first), Some(last)) => &bytes[first.as_usize()..last.as_usize()],
        _ => &[],
    }
}

/// One bit per row, 1 for a value (the region exists only when some row is null).
fn validity(nulls: Option<&NullBuffer>, out: &mut [u8]) {
    if let Some(nulls) = nulls {
        // `sliced` moves a bitmap that starts mid-byte to bit 0.
        let bits = nulls.inner().sliced();
        out.copy_from_slice(&bits.as_slice()[..out.len()]);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{
        BooleanArray, Date32Array, Decimal128Array, Int32Array, IntervalDayTimeArray, StringArray,
        TimestampNanosecondArray,
    };
    use datafusion::arrow::datatypes::IntervalDayTime;

    use super::*;

    /// `rows`' column batches, written out.
    fn encode(rows: &RecordBatch) -> Result<Vec<Vec<u8>>, String> {
        Ok(plan(rows)?
            .iter()
            .map(|p| {
                let mut out = vec![0xee; p.len()];
                p.write_into(&mut out);
                out
            })
            .collect())
    }

    fn u32_at(b: &[u8], at: usize) -> usize {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize
    }

    /// Column `i` of `batch`: its descriptor's first four bytes and its four regions.
    fn column(batch: &[u8], i: usize) -> ([u8; 4], [&[u8]; 4]) {
        let d = HEADER_BYTES + DESCRIPTOR_BYTES * i;
        let region = |j: usize| {
            let (offset, len) = (u32_at(batch, d + 4 + 8 * j), u32_at(batch, d + 8 + 8 * j));
            assert!(len == 0 || offset % ALIGN == 0, "region {j} of column {i} at {offset}");
            &batch[offset..offset + len]
        };
        ([batch[d], batch[d + 1], batch[d + 2], batch[d + 3]], [region(0), region(1), region(2), region(3)])
    }

    #[test]
    fn a_sliced_batch_is_laid_out_as_the_abi_says() -> Result<(), Box<dyn std::error::Error>> {
        let rows = RecordBatch::try_from_iter([
            ("n", Arc::new(Int32Array::from(vec![Some(1), None, Some(3), Some(4), None, Some(6)])) as ArrayRef),
            ("t", Arc::new(StringArray::from(vec!["zero", "one", "", "três", "four", "five"])) as ArrayRef),
            ("d", Arc::new(Decimal128Array::from(vec![1, -250, 3, 4, 5, 6]).with_precision_and_scale(15, 2)?)),
            ("day", Arc::new(Date32Array::from(vec![0, 1, 8766, 3, 4, 5]))),
            ("at", Arc::new(TimestampNanosecondArray::from(vec![0, 1_000, 2_000_000, 3, 4, 5]))),
            ("ok", Arc::new(BooleanArray::from(vec![true, false, true, true, false, true]))),
            ("gap", Arc::new(IntervalDayTimeArray::from(vec![IntervalDayTime::new(90, 0); 6]))),
        ])?;
        // Rows 1 to 3: a slice, so that offsets and null bits do not start at 0.
        let batches = encode(&rows.slice(1, 3))?;
        assert_eq!(batches.len(), 1);
        let b = &batches[0];
        assert_eq!((u32_at(b, 0), u32_at(b, 4), u32_at(b, 8)), (3, 7, b.len()));

        let (head, [values, data, validity, name]) = column(b, 0);
        assert_eq!(head, [Kind::Integer as u8, 0, 0, 0]);
        assert_eq!(name, b"n");
        assert_eq!(&values[8..16], &3i64.to_le_bytes());
        assert!(data.is_empty());
        assert_eq!(validity, &[0b110]);

        let (head, [values, data, validity, _]) = column(b, 1);
        assert_eq!(head[0], Kind::Text as u8);
        let offsets: Vec<usize> = (0..4).map(|i| u32_at(values, 4 * i)).collect();
        assert_eq!(offsets, [0, 3, 3, 8]);
        assert_eq!(data, "onetrês".as_bytes());
        assert!(validity.is_empty(), "no nulls, no bitmap");

        let (head, [values, ..]) = column(b, 2);
        assert_eq!(head, [Kind::Decimal as u8, 15, 2, 0]);
        assert_eq!(&values[..16], &(-250i128).to_le_bytes());

        let (head, [values, ..]) = column(b, 3);
        assert_eq!(head[0], Kind::Date as u8);
        assert_eq!(&values[4..8], &8766i32.to_le_bytes());

        // Nanoseconds become microseconds.
        let (head, [values, ..]) = column(b, 4);
        assert_eq!(head[0], Kind::Timestamp as u8);
        assert_eq!(&values[8..16], &2_000i64.to_le_bytes());

        let (head, [values, ..]) = column(b, 5);
        assert_eq!(head[0], Kind::Integer as u8);
        assert_eq!(&values[..8], &0i64.to_le_bytes());

        // A type of no kind of its own comes as the engine's text.
        let (head, [_, data, ..]) = column(b, 6);
        assert_eq!(head[0], Kind::Text as u8);
        assert!(std::str::from_utf8(data)?.starts_with("90 days"), "{:?}", std::str::from_utf8(data));
        Ok(())
    }

    #[test]
    fn long_record_batches_are_cut_at_max_rows() -> Result<(), Box<dyn std::error::Error>> {
        let n = MAX_ROWS * 2 + 5;
        let rows =
            RecordBatch::try_from_iter([("n", Arc::new(Int32Array::from_iter_values(0..n as i32)) as ArrayRef)])?;
        let sizes: Vec<usize> = encode(&rows)?.iter().map(|b| u32_at(b, 0)).collect();
        assert_eq!(sizes, [MAX_ROWS, MAX_ROWS, 5]);
        Ok(())
    }

    #[test]
    fn an_integer_column_with_a_null_is_the_abi_documents_example() -> Result<(), Box<dyn std::error::Error>> {
        // sdk/ABI.md, section 3.11, byte for byte.
        let rows = RecordBatch::try_from_iter([("n", Arc::new(Int32Array::from(vec![Some(7), None])) as ArrayRef)])?;
        let mut want = vec![0u8; 97];
        for (at, word) in [(0, 2u32), (4, 1), (8, 97), (20, 0x40), (24, 16), (36, 0x50), (40, 1), (44, 0x60), (48, 1)] {
            want[at..at + 4].copy_from_slice(&word.to_le_bytes());
        }
        want[16] = Kind::Integer as u8;
        want[0x40] = 7;
        want[0x50] = 0b01;
        want[0x60] = b'n';
        assert_eq!(encode(&rows)?, [want]);
        Ok(())
    }
}
