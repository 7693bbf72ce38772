//! The host–guest interface of roam, defined once.
//!
//! The host (`roam-host`) registers its functions under these names and the SDK (`roam-sdk`)
//! imports them from here, so the two cannot drift apart. Concepts:
//!
//! - [`IMPORT_MODULE`]: the Wasm import-module name every host function lives under.
//! - [`names`]: the name of each host function; [`raw`] (wasm32 only): the guest's `extern` block.
//! - [`QUERY_EXPORT`]: the function a query module exports; the host calls it once per evaluation.
//! - [`ErrorCode`]: why a host call failed, returned as a negative number.
//! - [`Value`]: a SQL value, as it crosses the boundary in CBOR (parameters and rows).
//!
//! All pointers and lengths are offsets and sizes in the guest's exported `memory`. Buffers are
//! always owned by the guest: the host writes only into memory the guest handed it, so the guest
//! needs no exported allocator.
//!
//! `sdk/ABI.md` describes the same interface for any language: every import's contract, the
//! exports of each kind of module, every CBOR encoding byte by byte, and the limits.
#![deny(missing_docs)]

use serde::{Deserialize, Serialize};

/// Declares the host functions once: their names for the host, their `extern` block for the guest.
macro_rules! interface {
    (
        module $module:literal;
        $( $(#[$doc:meta])* fn $name:ident( $($arg:ident : $ty:ty),* ) $(-> $ret:ty)?; )*
    ) => {
        /// The Wasm import-module name under which the host offers every function of [`names`].
        pub const IMPORT_MODULE: &str = $module;

        /// The import name of each host function, for the host's linker.
        #[allow(non_upper_case_globals)]
        pub mod names {
            $(
                #[doc = concat!("Import name of `", stringify!($name), "`.")]
                pub const $name: &str = stringify!($name);
            )*
            /// Every host function name, in declaration order.
            pub const ALL: &[&str] = &[$($name),*];
        }

        /// The raw imports, for the SDK only. Each function is documented with its contract:
        /// what it returns, and when it traps (a trap ends the evaluation with an error).
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)]
        pub mod raw {
            #[link(wasm_import_module = $module)]
            unsafe extern "C" {
                $( $(#[$doc])* pub fn $name($($arg: $ty),*) $(-> $ret)?; )*
            }
        }
    };
}

interface! {
    module "roam";

    /// Length in bytes of the evaluation's input (a CBOR value).
    fn input_len() -> u32;
    /// Copies the input to `ptr`, which must have room for `input_len()` bytes (traps if not).
    fn input_read(ptr: u32);
    /// Sets the evaluation's outcome. `status` 0: `ptr..ptr+len` is the CBOR result; status 1:
    /// it is a UTF-8 error message from the module. Traps when a result (status 0) was already
    /// set (an error message may be replaced), when the range is out of bounds, or when `len` is
    /// over the host's result limit.
    fn finish(status: u32, ptr: u32, len: u32);
    /// Writes a UTF-8 message to the host's diagnostic log at `level` (see [`LogLevel`]).
    /// Needs no capability; messages are truncated and rate-limited by the host.
    fn log(level: u32, ptr: u32, len: u32);
    /// Opens the resource named by the UTF-8 string at `ptr..ptr+len`. Returns a handle (>= 0),
    /// or a negative [`ErrorCode`]: `NotFound` (the host offers no such resource), `Denied`
    /// (the module's signed capabilities do not include it), `Unavailable` (an agent's resource
    /// that could not be bound on this host) or `InvalidArgument` (the name is not UTF-8).
    fn resource_open(ptr: u32, len: u32) -> i64;
    /// Runs a read-only SQL statement on the table behind `handle`, with parameters given as a
    /// CBOR array of [`Value`]s at `params_ptr..params_ptr+params_len`. Returns a cursor (>= 0)
    /// or a negative [`ErrorCode`]: `NotFound` (no such handle), `WrongType` (not a table),
    /// `InvalidArgument` (SQL not UTF-8, parameters not a CBOR array of values), `TooLarge` (16
    /// cursors open already) or `Sql` (the statement failed or is not read-only).
    fn table_query(handle: u32, sql_ptr: u32, sql_len: u32, params_ptr: u32, params_len: u32) -> i64;
    /// Stages the next batch of rows of `cursor` and returns its length in bytes (> 0), 0 when
    /// the cursor is exhausted, or a negative [`ErrorCode`]. A batch is a CBOR array of rows,
    /// each row a CBOR array of [`Value`]s.
    fn cursor_next(cursor: u32) -> i64;
    /// Like `table_query`, but the cursor's batches are column batches (see [`columns`]), not
    /// rows. Only a table of the columnar engine gives them: another table fails with `WrongType`.
    fn table_query_columns(handle: u32, sql_ptr: u32, sql_len: u32, params_ptr: u32, params_len: u32) -> i64;
    /// Copies the batch staged by the last `cursor_next` to `ptr` (traps if none is staged).
    /// For column batches `ptr` should be a multiple of [`columns::ALIGN`], so that every
    /// column is aligned for its type.
    fn cursor_read(cursor: u32, ptr: u32);
    /// Releases a cursor. Closing an unknown cursor does nothing.
    fn cursor_close(cursor: u32);
    /// Appends the UTF-8 line at `ptr..ptr+len` to the log resource behind `handle`. Returns 0
    /// or a negative [`ErrorCode`]: `NotFound` (no such handle), `WrongType` (not a log),
    /// `TooLarge` (a line over 4096 bytes), `InvalidArgument` (not UTF-8) or `Unavailable` (the
    /// log cannot be written). Appending more than the host's volume per call traps.
    fn log_append(handle: u32, ptr: u32, len: u32) -> i64;
    /// Length of the message that explains the last failed call (0 if none).
    fn last_error_len() -> u32;
    /// Copies that message to `ptr`, which must have room for `last_error_len()` bytes.
    fn last_error_read(ptr: u32);
}

/// The function a query module exports (no parameters, no results). It reads its input with
/// `input_read` and reports its outcome with `finish`.
pub const QUERY_EXPORT: &str = "roam_query";

/// The entry an agent module exports to start, on its home host, with the launch input.
/// Like every agent entry it takes no parameters, reads its input with `input_read` and reports
/// a CBOR [`Next`] with `finish`.
pub const AGENT_START: &str = "roam_agent_start";
/// The entry called on each host the agent arrives at, after its memory is restored; its input
/// is a CBOR [`Arrival`].
pub const AGENT_ARRIVE: &str = "roam_agent_arrive";
/// An optional entry called just before the agent leaves a host, in the same instance as the
/// entry that decided to leave (so `input_read` gives that entry's input); what it reports is
/// ignored.
pub const AGENT_DEPART: &str = "roam_agent_depart";
/// An optional entry called once, on the agent's home host, when its home recalled it: its
/// memory is restored as it left the last host it ran on, it takes no input, and what it hands
/// to `finish` is its partial result (any CBOR value; nothing at all if it has none).
pub const AGENT_RECALL: &str = "roam_agent_recall";
/// The entry that reports the agent's resource declarations: `finish` with a CBOR [`Manifest`].
/// The host calls it on a fresh instance, before the agent's state is restored.
pub const AGENT_MANIFEST: &str = "roam_agent_manifest";

/// The name of the linear memory every module exports.
pub const MEMORY_EXPORT: &str = "memory";

/// Status passed to `finish` for a successful result.
pub const FINISH_OK: u32 = 0;
/// Status passed to `finish` for an error raised by the module itself.
pub const FINISH_ERR: u32 = 1;

/// The most rows the host puts in one batch.
pub const BATCH_MAX_ROWS: usize = 1024;

/// The layout of a column batch, what `cursor_next` stages for a cursor opened with
/// `table_query_columns`: each column of up to [`columns::MAX_ROWS`] rows as one contiguous,
/// aligned run of values, so a module reads them as slices without decoding anything.
///
/// All numbers are little-endian; every offset counts from the batch's first byte, and every
/// region starts at a multiple of [`ALIGN`](columns::ALIGN) (the gaps are zero).
///
/// - Header, [`HEADER_BYTES`](columns::HEADER_BYTES): `u32` rows, `u32` columns, `u32` the
///   batch's length in bytes, `u32` zero.
/// - Then one descriptor of [`DESCRIPTOR_BYTES`](columns::DESCRIPTOR_BYTES) per column: `u8`
///   [`Kind`](columns::Kind), `u8` decimal precision, `i8` decimal scale, `u8` zero, then `u32`
///   pairs of offset and length in bytes: values, data, validity, name.
/// - Values: `rows` fixed-width values of the kind, or for text and blobs `rows + 1` `u32`
///   offsets into data (value `i` is `data[offsets[i]..offsets[i + 1]]`; the first offset is 0).
/// - Validity: empty (length 0) when no value is null, else one bit per row, least significant
///   bit first, 1 for a value and 0 for null. The values of a null row are unspecified.
/// - Name: the column's name in UTF-8.
pub mod columns {
    /// Every region of a batch starts at a multiple of this, counted from the batch's start.
    pub const ALIGN: usize = 16;
    /// Bytes of a batch's header.
    pub const HEADER_BYTES: usize = 16;
    /// Bytes of one column's descriptor.
    pub const DESCRIPTOR_BYTES: usize = 36;
    /// The most rows the host puts in one column batch.
    pub const MAX_ROWS: usize = 8192;

    /// What a column holds, and how wide each value is.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    #[repr(u8)]
    pub enum Kind {
        /// `i64`; integers of every width, and booleans as 0 or 1.
        Integer = 1,
        /// `f64`.
        Real = 2,
        /// `i32`: days since 1970-01-01.
        Date = 3,
        /// `i128`: the value times 10 to the power of the descriptor's scale.
        Decimal = 4,
        /// `i64`: microseconds since 1970-01-01 00:00:00, without a time zone.
        Timestamp = 5,
        /// UTF-8 text: offsets in values, bytes in data. Types with no kind of their own
        /// (intervals, wider decimals) come as text too, written as the engine shows them.
        Text = 6,
        /// Bytes: offsets in values, bytes in data.
        Blob = 7,
    }

    impl Kind {
        /// The kind with this code, if any.
        pub fn from_code(code: u8) -> Option<Self> {
            [Self::Integer, Self::Real, Self::Date, Self::Decimal, Self::Timestamp, Self::Text, Self::Blob]
                .into_iter()
                .find(|k| *k as u8 == code)
        }

        /// Bytes of one value in the values region (an offset, for text and blobs).
        pub fn width(self) -> usize {
            match self {
                Self::Integer | Self::Real | Self::Timestamp => 8,
                Self::Date | Self::Text | Self::Blob => 4,
                Self::Decimal => 16,
            }
        }
    }
}

/// Why a host call failed; host functions return it negated (`-(code as i64)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorCode {
    /// No such resource, cursor or handle.
    NotFound = 1,
    /// The module's signed capabilities or the host's policy do not allow it.
    Denied = 2,
    /// The handle is not of the type the call needs (a query on a log, say).
    WrongType = 3,
    /// An argument did not decode (bad UTF-8, bad CBOR parameters).
    InvalidArgument = 4,
    /// SQLite refused or failed the statement (a write, a syntax error, a timeout).
    Sql = 5,
    /// A size limit was reached.
    TooLarge = 6,
    /// The resource exists but cannot be used now.
    Unavailable = 7,
}

impl ErrorCode {
    /// The code as a host function returns it.
    pub fn to_return(self) -> i64 {
        -(self as i64)
    }

    /// Reads a negative return value back into a code; `None` for values >= 0 or unknown codes.
    pub fn from_return(value: i64) -> Option<Self> {
        Some(match value.checked_neg()? {
            1 => Self::NotFound,
            2 => Self::Denied,
            3 => Self::WrongType,
            4 => Self::InvalidArgument,
            5 => Self::Sql,
            6 => Self::TooLarge,
            7 => Self::Unavailable,
            _ => return None,
        })
    }

    /// A short description, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Self::NotFound => "not found",
            Self::Denied => "denied",
            Self::WrongType => "wrong resource type",
            Self::InvalidArgument => "invalid argument",
            Self::Sql => "SQL error",
            Self::TooLarge => "too large",
            Self::Unavailable => "unavailable",
        }
    }
}

/// How an agent refers to a resource, which decides how it is bound on each host it visits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Binding {
    /// Exactly that resource, on the host where the agent first bound it (its home).
    Identifier,
    /// Its content: a copy with the same value will do.
    Value,
    /// Any resource of that type and name the current host offers.
    Type,
}

/// One resource an agent uses, as it declares it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceDecl {
    /// The name the agent opens it by.
    pub name: String,
    /// The resource type: `"table"` or `"log"`.
    pub kind: String,
    /// How the agent refers to it.
    pub binding: Binding,
}

/// What an agent declares about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The resources the agent uses.
    pub resources: Vec<ResourceDecl>,
}

/// What an agent does after an entry point returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Next {
    /// Move to the host at `host` (an address, or the name of a peer of the host the agent is
    /// on); if it cannot be reached, try `alternates` in order.
    Go {
        /// The destination: an address, or a peer's name.
        host: String,
        /// Where to go instead, in order, if the destination is unreachable.
        alternates: Vec<String>,
    },
    /// Travel home and finish there with `result` (CBOR).
    Home {
        /// The agent's result, CBOR.
        #[serde(with = "serde_bytes")]
        result: Vec<u8>,
    },
    /// Finish here with `result` (CBOR), which is reported home.
    Finish {
        /// The agent's result, CBOR.
        #[serde(with = "serde_bytes")]
        result: Vec<u8>,
    },
}

/// How the host bound one declared resource on arrival.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Moved along with the agent.
    Mv,
    /// A global reference: calls are forwarded to the owning host.
    Gr,
    /// A copy of the resource's value travels with the agent.
    Cp,
    /// Rebound to a resource of the same type on this host.
    Rb,
    /// Could not be bound; opening it fails with `Unavailable`.
    Unbound,
}

/// One resource's binding on the current host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bound {
    /// The resource's declared name.
    pub name: String,
    /// What the host did.
    pub action: Action,
    /// Why it could not be bound (with `Action::Unbound`).
    pub error: Option<String>,
}

/// What an agent learns when it arrives on a host (the input of `roam_agent_arrive`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arrival {
    /// The host's name.
    pub host: String,
    /// The address this host listens on (as its operator configured it, which may differ from
    /// the one the agent was sent to).
    pub address: String,
    /// How many hops the agent has made (1 on the first host after home).
    pub hop: u32,
    /// How each declared resource was bound here.
    pub bindings: Vec<Bound>,
    /// Destinations that could not be reached on the way here.
    pub unreachable: Vec<String>,
}

/// Severity of a `log` message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum LogLevel {
    /// Something failed.
    Error = 0,
    /// Something looks wrong.
    Warn = 1,
    /// Normal progress.
    Info = 2,
    /// Detail for debugging.
    Debug = 3,
}

impl LogLevel {
    /// Reads a level passed by a guest; unknown levels count as `Debug`.
    pub fn from_u32(level: u32) -> Self {
        match level {
            0 => Self::Error,
            1 => Self::Warn,
            2 => Self::Info,
            _ => Self::Debug,
        }
    }
}

/// A SQL value as it crosses the boundary: query parameters, and the cells of result rows.
/// It is the plain CBOR value (null, integer, float, text string, byte string), so a text and a
/// blob stay apart even when the blob's bytes happen to be valid UTF-8.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    /// SQL NULL (CBOR null).
    Null,
    /// A 64-bit integer.
    Integer(i64),
    /// A 64-bit float.
    Real(f64),
    /// UTF-8 text.
    Text(String),
    /// Raw bytes (a CBOR byte string).
    Blob(#[serde(with = "serde_bytes")] Vec<u8>),
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> serde::de::Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("null, an integer, a float, a text string or a byte string")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Integer(v.into()))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Integer(v))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
        i64::try_from(v).map(Value::Integer).map_err(|_| E::custom("integer out of the range of i64"))
    }
    fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<Value, E> {
        i64::try_from(v).map(Value::Integer).map_err(|_| E::custom("integer out of the range of i64"))
    }
    fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<Value, E> {
        i64::try_from(v).map(Value::Integer).map_err(|_| E::custom("integer out of the range of i64"))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Real(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Text(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Text(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Blob(v.to_vec()))
    }
    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Value, E> {
        Ok(Value::Blob(v))
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Self::Integer(v)
    }
}
impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Self::Integer(v.into())
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Self::Real(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Self::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Self::Text(v)
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Self::Blob(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Self::Null, Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_round_trip_through_return_values() {
        for code in [
            ErrorCode::NotFound,
            ErrorCode::Denied,
            ErrorCode::WrongType,
            ErrorCode::InvalidArgument,
            ErrorCode::Sql,
            ErrorCode::TooLarge,
            ErrorCode::Unavailable,
        ] {
            assert!(code.to_return() < 0);
            assert_eq!(ErrorCode::from_return(code.to_return()), Some(code));
        }
        assert_eq!(ErrorCode::from_return(0), None);
        assert_eq!(ErrorCode::from_return(5), None);
        assert_eq!(ErrorCode::from_return(i64::MIN), None);
        assert_eq!(ErrorCode::from_return(-99), None);
    }

    #[test]
    fn names_are_unique_and_match_their_identifiers() {
        let mut all = names::ALL.to_vec();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), names::ALL.len());
        assert_eq!(names::table_query, "table_query");
    }
}
