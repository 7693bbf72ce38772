//! CBOR on the guest side: the input, the output, query parameters and batches of rows.

use serde::de::{DeserializeOwned, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Encodes `value` as CBOR.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out)?;
    Ok(out)
}

/// Decodes one CBOR value from the front of `bytes`.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    Ok(ciborium::from_reader(bytes)?)
}

/// Size of ciborium's scratch buffer, its own default: text and byte strings that fit are
/// decoded through it without an allocation.
const SCRATCH_LEN: usize = 4096;

/// The CBOR "break" byte that ends an array of indefinite length.
const BREAK: u8 = 0xff;

/// Reads the rows of a batch (a CBOR array of rows, each a CBOR array of cells) one at a time,
/// so that a row that does not decode can be named, and no more than one decoded row is held.
#[derive(Debug)]
pub(crate) struct RowReader {
    /// The current batch; its allocation is reused for the next one.
    batch: Vec<u8>,
    /// Where the next row starts in `batch`.
    pos: usize,
    /// Rows left in `batch`; `None` when the array has indefinite length and ends at a break.
    left: Option<u64>,
    /// Kept across rows so that ciborium's scratch is not zeroed again for every row.
    scratch: Vec<u8>,
    /// Rows read so far, over all batches, to name a row that fails.
    rows: u64,
}

impl RowReader {
    /// A reader with no batch: [`RowReader::next`] returns `None` until [`RowReader::start`].
    pub(crate) fn new() -> Self {
        Self { batch: Vec::new(), pos: 0, left: Some(0), scratch: Vec::new(), rows: 0 }
    }

    /// The buffer to fill with the next batch, then hand to [`RowReader::start`].
    pub(crate) fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.batch
    }

    /// Starts reading the batch now in [`RowReader::buffer`].
    pub(crate) fn start(&mut self) -> Result<()> {
        self.left = Some(0);
        let mut rest = self.batch.as_slice();
        let left = array_header(&mut rest).map_err(|e| e.context("batch of rows"))?;
        self.pos = self.batch.len() - rest.len();
        self.left = left;
        Ok(())
    }

    /// The next row of the batch decoded as `T`, or `None` when the batch is done.
    pub(crate) fn next<T: DeserializeOwned>(&mut self) -> Option<Result<T>> {
        let mut rest = self.batch.get(self.pos..).unwrap_or_default();
        match &mut self.left {
            Some(0) => return None,
            Some(left) => *left -= 1,
            None if rest.first() == Some(&BREAK) => return None,
            None => {}
        }
        if self.scratch.is_empty() {
            self.scratch = vec![0; SCRATCH_LEN];
        }
        self.rows += 1;
        let row = ciborium::de::from_reader_with_buffer(&mut rest, &mut self.scratch)
            .map(|Row(row)| row)
            .map_err(|e| Error::from(e).context(format_args!("row {}", self.rows)));
        self.pos = self.batch.len() - rest.len();
        if row.is_err() {
            // The rest of the batch cannot be found reliably after a bad row.
            self.left = Some(0);
        }
        Some(row)
    }
}

/// Reads the header of a CBOR array from the front of `bytes`: its number of items, or `None`
/// for an array of indefinite length.
fn array_header(bytes: &mut &[u8]) -> Result<Option<u64>> {
    let malformed = || Error::msg("expected a CBOR array");
    let (&first, rest) = bytes.split_first().ok_or_else(malformed)?;
    // Major type 4 (array) in the top three bits; the length or its width in the low five.
    if first >> 5 != 4 {
        return Err(malformed());
    }
    let width = match first & 0x1f {
        len @ 0..=23 => {
            *bytes = rest;
            return Ok(Some(len.into()));
        }
        24 => 1,
        25 => 2,
        26 => 4,
        27 => 8,
        31 => {
            *bytes = rest;
            return Ok(None);
        }
        _ => return Err(malformed()),
    };
    let (len, rest) = rest.split_at_checked(width).ok_or_else(malformed)?;
    *bytes = rest;
    Ok(Some(len.iter().fold(0, |n, &b| n << 8 | u64::from(b))))
}

/// A row decoded as `T`, whatever shape `T` asks for. ciborium reads a struct only from a CBOR
/// map, but a row is an array: this reads a struct from it in field order, like a tuple.
struct Row<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Row<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(AnyShape(deserializer)).map(Row)
    }
}

/// Answers every request of the row's type with what the data is (an array), so that a struct
/// visitor gets the cells as a sequence.
struct AnyShape<D>(D);

impl<'de, D: Deserializer<'de>> Deserializer<'de> for AnyShape<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_any(visitor)
    }

    // A newtype row (`struct Row(Vec<Value>)`) wraps the whole row, not its first cell.
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // A failing unwrap is a failing test.
mod tests {
    use roam_abi::Value;
    use serde::Deserialize;

    use super::*;

    /// A batch as the host sends it: a CBOR array of rows, each an array of values.
    fn batch(rows: &[Vec<Value>]) -> RowReader {
        let mut reader = RowReader::new();
        *reader.buffer() = encode(rows).unwrap();
        reader.start().unwrap();
        reader
    }

    fn sale(region: &str, cents: i64) -> Vec<Value> {
        vec![region.into(), cents.into()]
    }

    fn read_all<T: DeserializeOwned>(mut reader: RowReader) -> Vec<Result<T>> {
        std::iter::from_fn(|| reader.next()).collect()
    }

    #[test]
    fn rows_decode_as_tuples() {
        let rows = read_all::<(String, i64)>(batch(&[sale("north", 120), sale("south", -5)]));
        let rows: Vec<_> = rows.into_iter().map(Result::unwrap).collect();
        assert_eq!(rows, [("north".to_owned(), 120), ("south".to_owned(), -5)]);
    }

    #[test]
    fn rows_decode_as_structs_in_field_order() {
        #[derive(Debug, Deserialize, PartialEq)]
        struct Sale {
            region: String,
            amount_cents: i64,
        }
        let rows = read_all::<Sale>(batch(&[sale("north", 120)]));
        assert_eq!(rows.into_iter().next().unwrap().unwrap(), Sale { region: "north".into(), amount_cents: 120 });
    }

    #[test]
    fn rows_decode_as_values() {
        let row = vec![
            Value::Null,
            Value::Integer(i64::MIN),
            Value::Real(1.0),
            Value::Text("x".repeat(SCRATCH_LEN + 1)),
            Value::Blob(vec![0, 1, 255]),
        ];
        let rows = read_all::<Vec<Value>>(batch(&[row.clone(), vec![]]));
        let rows: Vec<_> = rows.into_iter().map(Result::unwrap).collect();
        assert_eq!(rows, [row, vec![]]);

        #[derive(Debug, Deserialize, PartialEq)]
        struct Whole(Vec<Value>);
        let rows = read_all::<Whole>(batch(&[sale("north", 1)]));
        assert_eq!(rows.into_iter().next().unwrap().unwrap(), Whole(sale("north", 1)));
    }

    #[test]
    fn a_bad_row_is_named_and_ends_the_batch() {
        let rows = [sale("north", 1), vec![Value::Null, 2.into()], sale("south", 3)];
        let rows = read_all::<(String, i64)>(batch(&rows));
        assert_eq!(rows.len(), 2);
        assert!(rows[0].is_ok());
        let err = rows[1].as_ref().unwrap_err().to_string();
        assert!(err.starts_with("row 2: invalid type: null"), "{err}");
    }

    #[test]
    fn batches_of_every_header_width_and_indefinite_length_are_read() {
        for count in [0, 1, 23, 24, 255, 256, 1024] {
            let rows: Vec<_> = (0..count).map(|i| sale("r", i)).collect();
            let read = read_all::<(String, i64)>(batch(&rows));
            assert_eq!(read.len(), count as usize);
        }

        // 0x9f starts an indefinite-length array, 0xff ends it.
        let mut bytes = vec![0x9f];
        for i in 0..3 {
            bytes.extend(encode(&sale("r", i)).unwrap());
        }
        bytes.push(BREAK);
        let mut reader = RowReader::new();
        *reader.buffer() = bytes;
        reader.start().unwrap();
        assert_eq!(read_all::<(String, i64)>(reader).len(), 3);
    }

    #[test]
    fn a_batch_that_is_not_an_array_is_refused() {
        for bytes in [vec![], vec![0xa0], vec![0x98], vec![0x9c]] {
            let mut reader = RowReader::new();
            *reader.buffer() = bytes;
            assert!(reader.start().is_err());
            assert!(reader.next::<Vec<Value>>().is_none());
        }
    }

    #[test]
    fn blobs_encode_as_byte_strings() {
        // [h'0102'], not [[1, 2]]: a byte string, never a sequence of integers.
        assert_eq!(encode(&[Value::Blob(vec![1, 2])]).unwrap(), [0x81, 0x42, 1, 2]);
    }
}
