//! The agent tables of a host's state database.
//!
//! - `agents`: one row per (agent, hop) this host received or launched. Its state moves
//!   `ready` → (`leaving` ⇄ `parked`) → `done`, or to `failed`; each move is one transaction, so
//!   after a crash every agent is in exactly one of these states. A parked row is retried with
//!   a backoff (`retries`, `retry_at`), so thousands of parked agents cost little.
//! - `homed`: the location registry of agents whose home is this host, with the time a recall
//!   was ordered.
//! - `outbox`: reports to home hosts and recall orders passed on, each sent until acknowledged.
//! - `recalls`: the recall orders this host knows of, one per agent, kept for the agent's
//!   lifetime so that an agent arriving later is marked at once.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{OptionalExtension, Transaction, params};

use roam_keys::PublicKey;

use crate::protocol::wire::{AgentRecord, Visit, from_cbor, to_cbor};
use crate::state::{State, StateError, now_secs};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS agents (
    id       TEXT NOT NULL,
    hop      INTEGER NOT NULL,
    state    TEXT NOT NULL,
    record   BLOB NOT NULL,
    snapshot BLOB,
    input    BLOB,
    next     BLOB,
    envelope BLOB,
    detail   TEXT,
    recall   INTEGER NOT NULL DEFAULT 0,
    updated  INTEGER NOT NULL,
    retries  INTEGER NOT NULL DEFAULT 0,
    retry_at INTEGER NOT NULL DEFAULT 0,
    sent_to  TEXT,
    receipt  BLOB,
    PRIMARY KEY (id, hop)
);
CREATE INDEX IF NOT EXISTS agents_by_state ON agents (state);
CREATE TABLE IF NOT EXISTS homed (
    id       TEXT PRIMARY KEY,
    label    TEXT NOT NULL,
    state    TEXT NOT NULL,
    location TEXT NOT NULL,
    hops     INTEGER NOT NULL,
    result   BLOB,
    detail   TEXT,
    route    BLOB NOT NULL,
    launched INTEGER NOT NULL,
    updated  INTEGER NOT NULL,
    recall_at INTEGER,
    owner    BLOB,
    ended    INTEGER
);
CREATE TABLE IF NOT EXISTS outbox (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    dest    TEXT NOT NULL,
    message BLOB NOT NULL,
    kind    TEXT NOT NULL DEFAULT 'report'
);
CREATE TABLE IF NOT EXISTS recalls (
    agent    TEXT PRIMARY KEY,
    signed   BLOB NOT NULL,
    expires  INTEGER NOT NULL
);
";

/// Creates the agent tables, or brings older ones up to date.
pub(crate) fn create(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(SCHEMA)?;
    // Columns added since the first version of each table, for a state database made by one.
    for (table, column, declaration) in [
        ("agents", "retries", "INTEGER NOT NULL DEFAULT 0"),
        ("agents", "retry_at", "INTEGER NOT NULL DEFAULT 0"),
        ("agents", "sent_to", "TEXT"),
        ("agents", "receipt", "BLOB"),
        ("homed", "recall_at", "INTEGER"),
        ("homed", "owner", "BLOB"),
        ("homed", "ended", "INTEGER"),
        ("outbox", "kind", "TEXT NOT NULL DEFAULT 'report'"),
    ] {
        let present: bool =
            one(tx, "SELECT count(*) FROM pragma_table_info(?1) WHERE name = ?2", [table, column], |r| r.get(0))?;
        if !present {
            tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {declaration}"))?;
            if column == "ended" {
                // Agents that ended before the column existed: their last update was the end.
                tx.execute_batch("UPDATE homed SET ended = updated WHERE state IN ('finished', 'failed', 'recalled')")?;
            }
        }
    }
    // The driver looks up due moves by state and retry time, many times a second.
    tx.execute_batch("CREATE INDEX IF NOT EXISTS agents_due ON agents (state, retry_at);")
}

/// The first retry of a parked agent waits this long; each further one twice as long as the
/// last, up to [`MAX_BACKOFF_MS`].
const FIRST_BACKOFF_MS: i64 = 500;
/// The longest wait between two retries of a parked agent.
const MAX_BACKOFF_MS: i64 = 60_000;

/// The state of a row in `agents`: where one (agent, hop) stands on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RowState {
    /// Persisted here, waiting to run its entry.
    Ready,
    /// Decided to move; the transfer is not acknowledged yet.
    Leaving,
    /// No destination could be reached; retried later.
    Parked,
    /// Handed off (or finished here): this host no longer holds it.
    Done,
    /// Stopped with an error, reported home.
    Failed,
}

impl RowState {
    const ALL: [Self; 5] = [Self::Ready, Self::Leaving, Self::Parked, Self::Done, Self::Failed];

    /// Its name in the database.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Leaving => "leaving",
            Self::Parked => "parked",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }

    /// How `roam agents` shows an agent this host holds, or held and handed on.
    pub(crate) const fn shown(self) -> &'static str {
        match self {
            Self::Ready => "running",
            Self::Leaving => "in transit",
            Self::Parked => "parked",
            Self::Done => "left",
            Self::Failed => "failed",
        }
    }
}

/// Where an agent whose home is this host stands on its journey, as the home knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Journey {
    Running,
    InTransit,
    Parked,
    Finished,
    Failed,
    Recalled,
}

impl Journey {
    const ALL: [Self; 6] = [Self::Running, Self::InTransit, Self::Parked, Self::Finished, Self::Failed, Self::Recalled];

    /// Its name, in the database and in `roam agents`.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::InTransit => "in transit",
            Self::Parked => "parked",
            Self::Finished => "finished",
            Self::Failed => "failed",
            Self::Recalled => "recalled",
        }
    }

    /// Whether the journey has ended: nothing changes it any more.
    pub(crate) const fn is_over(self) -> bool {
        matches!(self, Self::Finished | Self::Failed | Self::Recalled)
    }
}

/// What an outbox message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outgoing {
    /// A report to an agent's home.
    Report,
    /// A recall order, passed on to where the agent went.
    Recall,
}

impl Outgoing {
    const ALL: [Self; 2] = [Self::Report, Self::Recall];

    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Report => "report",
            Self::Recall => "recall",
        }
    }
}

/// The state enums and the outbox's kinds are stored as their names.
macro_rules! stored_as_name {
    ($type:ty) => {
        impl ToSql for $type {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $type {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                let name = value.as_str()?;
                Self::ALL
                    .into_iter()
                    .find(|s| s.as_str() == name)
                    .ok_or_else(|| FromSqlError::Other(format!("{name:?} is not a {}", stringify!($type)).into()))
            }
        }
    };
}
stored_as_name!(RowState);
stored_as_name!(Journey);
stored_as_name!(Outgoing);

/// One (agent, hop) this host holds or held.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    pub id: String,
    pub hop: u32,
    pub state: RowState,
    /// Decoded once, as the row is read; a record that does not decode fails its agent (with
    /// this reason) rather than the whole read.
    pub record: Result<AgentRecord, String>,
    pub snapshot: Option<Vec<u8>>,
    pub input: Option<Vec<u8>>,
    pub next: Option<Vec<u8>>,
    pub envelope: Option<Vec<u8>>,
    pub detail: Option<String>,
    /// Its home ordered it back: it makes no further visit away from home.
    pub recall: bool,
    /// Where a `done` row was handed to (none if its journey ended here).
    pub sent_to: Option<String>,
    /// A signed receipt (CBOR): the one this host gave when the agent arrived, replaced by the
    /// next host's once it is handed on.
    pub receipt: Option<Vec<u8>>,
}

const ROW_COLUMNS: &str = "id, hop, state, record, snapshot, input, next, envelope, detail, recall, sent_to, receipt";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        id: r.get(0)?,
        hop: r.get(1)?,
        state: r.get(2)?,
        record: from_cbor(&r.get::<_, Vec<u8>>(3)?, "the agent record"),
        snapshot: r.get(4)?,
        input: r.get(5)?,
        next: r.get(6)?,
        envelope: r.get(7)?,
        detail: r.get(8)?,
        recall: r.get(9)?,
        sent_to: r.get(10)?,
        receipt: r.get(11)?,
    })
}

/// The location registry entry of an agent whose home is this host.
#[derive(Clone, Debug)]
pub(crate) struct Homed {
    pub id: String,
    pub label: String,
    pub state: Journey,
    pub location: String,
    pub hops: u32,
    pub result: Option<Vec<u8>>,
    pub detail: Option<String>,
    /// The hosts it visited, as reported (a route that does not decode reads as empty).
    pub route: Vec<Visit>,
    /// When the home last heard of it (unix seconds).
    pub updated: u64,
    /// When a recall was ordered (unix milliseconds), if one was.
    pub recall_at: Option<u64>,
    /// The client that launched it, if it proved a key.
    pub owner: Option<PublicKey>,
    /// When it was launched (unix seconds).
    pub launched: u64,
    /// When its journey ended (unix seconds), once it has.
    pub ended: Option<u64>,
}

const HOMED_COLUMNS: &str =
    "id, label, state, location, hops, result, detail, route, updated, recall_at, owner, launched, ended";

fn homed(r: &rusqlite::Row<'_>) -> rusqlite::Result<Homed> {
    Ok(Homed {
        id: r.get(0)?,
        label: r.get(1)?,
        state: r.get(2)?,
        location: r.get(3)?,
        hops: r.get(4)?,
        result: r.get(5)?,
        detail: r.get(6)?,
        route: from_cbor(&r.get::<_, Vec<u8>>(7)?, "the route").unwrap_or_default(),
        updated: r.get(8)?,
        recall_at: r.get(9)?,
        owner: r.get::<_, Option<[u8; 32]>>(10)?.map(PublicKey::from_bytes),
        launched: r.get(11)?,
        ended: r.get(12)?,
    })
}

/// Inserts a row; `false` if (id, hop) is already there.
pub(crate) fn insert(tx: &Transaction<'_>, r: &Row) -> rusqlite::Result<bool> {
    let record = r.record.as_ref().map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.clone().into()))?;
    let n = exec(
        tx,
        "INSERT OR IGNORE INTO agents
             (id, hop, state, record, snapshot, input, next, envelope, detail, recall, updated, receipt)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            r.id,
            r.hop,
            r.state,
            to_cbor(record),
            r.snapshot,
            r.input,
            r.next,
            r.envelope,
            r.detail,
            r.recall,
            now_secs() as i64,
            r.receipt
        ],
    )?;
    Ok(n == 1)
}

/// Moves a row to `state`, replacing its snapshot and next move.
pub(crate) fn set_state(
    tx: &Transaction<'_>,
    id: &str,
    hop: u32,
    state: RowState,
    snapshot: Option<&[u8]>,
    next: Option<&[u8]>,
    detail: Option<&str>,
) -> rusqlite::Result<()> {
    exec(
        tx,
        "UPDATE agents SET state = ?3, snapshot = ?4, next = ?5, detail = ?6, updated = ?7 WHERE id = ?1 AND hop = ?2",
        params![id, hop, state, snapshot, next, detail, now_secs() as i64],
    )?;
    Ok(())
}

pub(crate) fn get(tx: &Transaction<'_>, id: &str, hop: u32) -> rusqlite::Result<Option<Row>> {
    one(tx, &format!("SELECT {ROW_COLUMNS} FROM agents WHERE id = ?1 AND hop = ?2"), params![id, hop], row).optional()
}

pub(crate) fn max_hop(tx: &Transaction<'_>, id: &str) -> rusqlite::Result<Option<u32>> {
    one(tx, "SELECT max(hop) FROM agents WHERE id = ?1", [id], |r| r.get(0))
}

/// Rows in any of `states`, oldest first.
pub(crate) fn in_states(state: &State, states: &[RowState]) -> Result<Vec<Row>, StateError> {
    state.transaction(|tx| {
        let marks = vec!["?"; states.len()].join(", ");
        let mut stmt = tx.prepare_cached(&format!(
            "SELECT {ROW_COLUMNS} FROM agents WHERE state IN ({marks}) ORDER BY updated, id"
        ))?;
        let rows = stmt.query_map(rusqlite::params_from_iter(states), row)?;
        rows.collect()
    })
}

/// Rows that should move now: every `leaving` row, and the `parked` ones whose backoff is
/// over; at most `limit`, oldest first, leaving out those `busy` says are already moving (so
/// that transfers hung on a dead peer never crowd out the rest).
pub(crate) fn due_to_move(
    state: &State,
    limit: usize,
    busy: impl Fn(&str, u32) -> bool,
) -> Result<Vec<Row>, StateError> {
    state.transaction(|tx| {
        let mut stmt = tx.prepare_cached(&format!(
            "SELECT {ROW_COLUMNS} FROM agents
             WHERE state = 'leaving' OR (state = 'parked' AND retry_at <= ?1)
             ORDER BY updated, id"
        ))?;
        let mut rows = stmt.query(params![now_millis()])?;
        let mut due = Vec::new();
        // Rows are stepped one at a time: a busy row's snapshot is never read.
        while due.len() < limit
            && let Some(r) = rows.next()?
        {
            let (id, hop): (String, u32) = (r.get(0)?, r.get(1)?);
            if !busy(&id, hop) {
                due.push(row(r)?);
            }
        }
        Ok(due)
    })
}

/// Parks a row (or keeps it parked) with its next move, and sets its next retry further out.
/// The snapshot stays as it is: a failed retry writes a few bytes, not the agent's memory.
pub(crate) fn park(tx: &Transaction<'_>, id: &str, hop: u32, next: &[u8], detail: &str) -> rusqlite::Result<()> {
    exec(
        tx,
        "UPDATE agents SET state = 'parked', next = ?3, detail = ?4, updated = ?5,
             retry_at = ?6 + min(?7 << min(retries, 16), ?8), retries = retries + 1
         WHERE id = ?1 AND hop = ?2",
        params![id, hop, next, detail, now_secs() as i64, now_millis(), FIRST_BACKOFF_MS, MAX_BACKOFF_MS],
    )?;
    Ok(())
}

/// Marks a row handed off to `dest`, which gave `receipt`: this host no longer holds the agent,
/// and knows where it went (a recall order that comes later follows it there).
pub(crate) fn hand_off(tx: &Transaction<'_>, id: &str, hop: u32, dest: &str, receipt: &[u8]) -> rusqlite::Result<()> {
    exec(
        tx,
        "UPDATE agents SET state = 'done', snapshot = NULL, next = NULL, detail = NULL, sent_to = ?3, updated = ?4,
             receipt = ?5
         WHERE id = ?1 AND hop = ?2",
        params![id, hop, dest, now_secs() as i64, receipt],
    )?;
    Ok(())
}

/// Records a row's next move (pinned to one destination, say), leaving its snapshot alone.
pub(crate) fn set_next(tx: &Transaction<'_>, id: &str, hop: u32, next: &[u8]) -> rusqlite::Result<()> {
    exec(tx, "UPDATE agents SET next = ?3 WHERE id = ?1 AND hop = ?2", params![id, hop, next])?;
    Ok(())
}

fn now_millis() -> i64 {
    i64::try_from(crate::state::now_millis()).unwrap_or(i64::MAX)
}

/// The agent's latest row here (its highest hop): the live one if it is here, else where it
/// went or how it ended.
pub(crate) fn latest_row(tx: &Transaction<'_>, id: &str) -> rusqlite::Result<Option<Row>> {
    one(tx, &format!("SELECT {ROW_COLUMNS} FROM agents WHERE id = ?1 ORDER BY hop DESC LIMIT 1"), [id], row).optional()
}

/// An agent's latest row, for listing.
#[derive(Debug)]
pub(crate) struct Listing {
    pub id: String,
    pub hop: u32,
    pub state: RowState,
    /// Its label, from its record (empty if the record does not decode).
    pub label: String,
    /// Its owner, from its record.
    pub owner: Option<PublicKey>,
    pub detail: Option<String>,
    /// When the row last changed (unix seconds).
    pub updated: u64,
}

/// Each agent's latest row here (its highest hop), without its snapshot: for listing.
pub(crate) fn latest(state: &State, only: Option<&str>) -> Result<Vec<Listing>, StateError> {
    state.transaction(|tx| {
        // One agent's row by its key, not by a scan of every agent's rows.
        let mut stmt = tx.prepare_cached(if only.is_some() {
            "SELECT id, hop, state, record, detail, updated FROM agents WHERE id = ?1 ORDER BY hop DESC LIMIT 1"
        } else {
            "SELECT id, hop, state, record, detail, updated FROM agents a
             WHERE hop = (SELECT max(hop) FROM agents b WHERE b.id = a.id) AND ?1 IS NULL
             ORDER BY id"
        })?;
        let rows = stmt.query_map([only], listing)?;
        rows.collect()
    })
}

/// The latest rows of the `n` agents last updated here that this host is not home to, newest
/// first.
pub(crate) fn recent_visitors(state: &State, n: u32) -> Result<Vec<Listing>, StateError> {
    state.transaction(|tx| {
        let mut stmt = tx.prepare_cached(
            "SELECT id, hop, state, record, detail, updated FROM agents a
             WHERE hop = (SELECT max(hop) FROM agents b WHERE b.id = a.id)
               AND NOT EXISTS (SELECT 1 FROM homed h WHERE h.id = a.id)
             ORDER BY updated DESC, id LIMIT ?1",
        )?;
        let rows = stmt.query_map([n], listing)?;
        rows.collect()
    })
}

fn listing(r: &rusqlite::Row<'_>) -> rusqlite::Result<Listing> {
    let record: Result<AgentRecord, _> = from_cbor(&r.get::<_, Vec<u8>>(3)?, "the agent record");
    Ok(Listing {
        id: r.get(0)?,
        hop: r.get(1)?,
        state: r.get(2)?,
        owner: record.as_ref().ok().and_then(|rec| rec.owner),
        label: record.map(|rec| rec.label).unwrap_or_default(),
        detail: r.get(4)?,
        updated: r.get(5)?,
    })
}

/// Marks the agent's live row (not done or failed) for recall; `true` if there was one.
pub(crate) fn mark_recall(tx: &Transaction<'_>, id: &str) -> rusqlite::Result<bool> {
    let n = exec(
        tx,
        // A parked agent goes home at the next round, not after its backoff.
        "UPDATE agents SET recall = 1, retry_at = 0 WHERE id = ?1 AND state IN ('ready', 'leaving', 'parked')",
        [id],
    )?;
    Ok(n > 0)
}

/// Keeps a recall order (CBOR of the signed order) until `expires` (unix seconds); `false` if
/// one was already kept for the agent. Forgets expired orders on the way.
pub(crate) fn keep_order(tx: &Transaction<'_>, agent: &str, signed: &[u8], expires: u64) -> rusqlite::Result<bool> {
    exec(tx, "DELETE FROM recalls WHERE expires < ?1", [now_secs() as i64])?;
    let n = exec(
        tx,
        "INSERT OR IGNORE INTO recalls (agent, signed, expires) VALUES (?1, ?2, ?3)",
        params![agent, signed, i64::try_from(expires).unwrap_or(i64::MAX)],
    )?;
    Ok(n == 1)
}

/// The recall order kept for an agent (CBOR of the signed order), if any.
pub(crate) fn order(tx: &Transaction<'_>, agent: &str) -> rusqlite::Result<Option<Vec<u8>>> {
    one(tx, "SELECT signed FROM recalls WHERE agent = ?1", [agent], |r| r.get(0)).optional()
}

/// Forgets an agent's recall order (one that turned out not to be from its home).
pub(crate) fn forget_order(tx: &Transaction<'_>, agent: &str) -> rusqlite::Result<()> {
    exec(tx, "DELETE FROM recalls WHERE agent = ?1", [agent]).map(|_| ())
}

/// Records at the home that a recall was ordered now (unix milliseconds); keeps the first time.
pub(crate) fn order_recall(tx: &Transaction<'_>, id: &str) -> rusqlite::Result<()> {
    exec(
        tx,
        "UPDATE homed SET recall_at = coalesce(recall_at, ?2) WHERE id = ?1",
        params![id, i64::try_from(crate::state::now_millis()).unwrap_or(i64::MAX)],
    )?;
    Ok(())
}

pub(crate) fn insert_homed(
    tx: &Transaction<'_>,
    id: &str,
    label: &str,
    location: &str,
    owner: Option<&PublicKey>,
) -> rusqlite::Result<()> {
    let now = now_secs() as i64;
    exec(
        tx,
        "INSERT OR IGNORE INTO homed (id, label, state, location, hops, route, launched, updated, owner)
         VALUES (?1, ?2, 'running', ?3, 0, ?4, ?5, ?5, ?6)",
        params![id, label, location, to_cbor(&Vec::<Visit>::new()), now, owner.map(|k| k.as_bytes().to_vec())],
    )?;
    Ok(())
}

pub(crate) fn get_homed(tx: &Transaction<'_>, id: &str) -> rusqlite::Result<Option<Homed>> {
    one(tx, &format!("SELECT {HOMED_COLUMNS} FROM homed WHERE id = ?1"), [id], homed).optional()
}

pub(crate) fn all_homed(state: &State) -> Result<Vec<Homed>, StateError> {
    state.transaction(|tx| {
        let mut stmt = tx.prepare_cached(&format!("SELECT {HOMED_COLUMNS} FROM homed ORDER BY launched, rowid"))?;
        let rows = stmt.query_map([], homed)?;
        rows.collect()
    })
}

/// The `n` agents last launched from here, newest first.
pub(crate) fn recent_homed(state: &State, n: u32) -> Result<Vec<Homed>, StateError> {
    state.transaction(|tx| {
        let mut stmt = tx.prepare_cached(&format!(
            "SELECT {HOMED_COLUMNS} FROM homed ORDER BY launched DESC, rowid DESC LIMIT ?1"
        ))?;
        let rows = stmt.query_map([n], homed)?;
        rows.collect()
    })
}

pub(crate) fn put_homed(tx: &Transaction<'_>, h: &Homed) -> rusqlite::Result<()> {
    exec(
        tx,
        "UPDATE homed SET state = ?2, location = ?3, hops = ?4, result = ?5, detail = ?6, route = ?7, updated = ?8,
             ended = CASE WHEN ended IS NULL AND ?9 THEN ?8 ELSE ended END
         WHERE id = ?1",
        params![
            h.id,
            h.state,
            h.location,
            h.hops,
            h.result,
            h.detail,
            to_cbor(&h.route),
            now_secs() as i64,
            h.state.is_over()
        ],
    )?;
    Ok(())
}

pub(crate) fn push_outbox(tx: &Transaction<'_>, dest: &str, kind: Outgoing, message: &[u8]) -> rusqlite::Result<()> {
    exec(tx, "INSERT INTO outbox (dest, message, kind) VALUES (?1, ?2, ?3)", params![dest, message, kind])?;
    Ok(())
}

/// The homes that have reports waiting.
pub(crate) fn outbox_destinations(state: &State) -> Result<Vec<String>, StateError> {
    state.transaction(|tx| {
        let mut stmt = tx.prepare_cached("SELECT DISTINCT dest FROM outbox")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect()
    })
}

/// The messages waiting for one host, oldest first: (sequence number, kind, CBOR message).
pub(crate) fn outbox_for(state: &State, dest: &str) -> Result<Vec<(i64, Outgoing, Vec<u8>)>, StateError> {
    state.transaction(|tx| {
        let mut stmt =
            tx.prepare_cached("SELECT seq, kind, message FROM outbox WHERE dest = ?1 ORDER BY seq LIMIT 256")?;
        let rows = stmt.query_map([dest], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect()
    })
}

pub(crate) fn delete_outbox(state: &State, seq: i64) -> Result<(), StateError> {
    state.transaction(|tx| exec(tx, "DELETE FROM outbox WHERE seq = ?1", [seq]).map(|_| ()))
}

/// How many agents this host holds in each state (rows handed on or finished left out), and
/// how many agents homed here are at each stage of their journey; every state is named, with
/// zero if none is in it.
pub(crate) fn census(state: &State) -> Result<crate::metrics::Census, StateError> {
    fn counts<S: FromSql + PartialEq + Copy>(
        tx: &Transaction<'_>,
        sql: &str,
        all: &[S],
    ) -> rusqlite::Result<Vec<(S, i64)>> {
        let found: Vec<(S, i64)> =
            tx.prepare_cached(sql)?.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
        Ok(all.iter().map(|s| (*s, found.iter().find(|(f, _)| f == s).map_or(0, |(_, n)| *n))).collect())
    }
    state.transaction(|tx| {
        let held = counts(tx, "SELECT state, count(*) FROM agents GROUP BY state", &RowState::ALL)?;
        let homed = counts(tx, "SELECT state, count(*) FROM homed GROUP BY state", &Journey::ALL)?;
        Ok(crate::metrics::Census {
            held: held.into_iter().filter(|(s, _)| *s != RowState::Done).map(|(s, n)| (s.as_str(), n)).collect(),
            homed: homed.into_iter().map(|(s, n)| (s.as_str(), n)).collect(),
        })
    })
}

/// Runs a statement from the connection's cache of prepared statements (parsing SQL each time
/// cost a hop about half a million instructions).
fn exec<P: rusqlite::Params>(tx: &Transaction<'_>, sql: &str, params: P) -> rusqlite::Result<usize> {
    tx.prepare_cached(sql)?.execute(params)
}

/// [`exec`] for a query of one row.
fn one<T, P: rusqlite::Params>(
    tx: &Transaction<'_>,
    sql: &str,
    params: P,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    tx.prepare_cached(sql)?.query_row(params, f)
}

/// Deletes at most `batch` records of agents that ended here, last changed before `cutoff`
/// (unix seconds): terminal `agents` rows whose agent's lifetime, plus `skew`, is over by `now`,
/// and the home's entries of journeys that ended. Returns how many rows went.
///
/// Replay protection holds without them: a host refuses an envelope more than `skew` old, and
/// one for an agent whose lifetime is over (`arrive`), so no envelope for a pruned row can be
/// accepted again.
pub(crate) fn prune(tx: &Transaction<'_>, cutoff: u64, now: u64, skew: u64, batch: usize) -> rusqlite::Result<usize> {
    let mut stmt = tx.prepare(
        "SELECT id, hop, record FROM agents WHERE state IN ('done', 'failed') AND updated < ?1
         ORDER BY updated, id, hop LIMIT ?2 OFFSET ?3",
    )?;
    let (mut pruned, mut kept) = (0, 0);
    // Rows that must stay (their agent's lifetime is not over) are stepped over, so that they
    // never hold back the rows behind them; a pass reads at most ten batches.
    for _ in 0..10 {
        let old: Vec<(String, u32, Vec<u8>)> = stmt
            .query_map(params![cutoff as i64, batch as i64, kept as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        if old.is_empty() {
            break;
        }
        for (id, hop, record) in old {
            // A record that does not decode says nothing of the agent's lifetime: it is kept.
            let over = from_cbor::<AgentRecord>(&record, "the agent record")
                .map(|r| r.launched_at.saturating_add(r.limits.lifetime_secs).saturating_add(skew));
            match over {
                Ok(over) if over < now => {
                    pruned += tx.execute("DELETE FROM agents WHERE id = ?1 AND hop = ?2", params![id, hop])?;
                }
                _ => kept += 1,
            }
        }
        if pruned >= batch {
            break;
        }
    }
    pruned += tx.execute(
        "DELETE FROM homed WHERE id IN (SELECT id FROM homed WHERE state IN ('finished', 'failed', 'recalled')
         AND updated < ?1 LIMIT ?2)",
        params![cutoff as i64, batch as i64],
    )?;
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state database from before the `ended` column: agents that had ended get their last
    /// update as their end, the others none.
    #[test]
    fn agents_that_ended_before_the_ended_column_end_at_their_last_update() -> Result<(), Box<dyn std::error::Error>> {
        let mut conn = rusqlite::Connection::open_in_memory()?;
        conn.execute_batch(
            "CREATE TABLE homed (id TEXT PRIMARY KEY, label TEXT NOT NULL, state TEXT NOT NULL,
                 location TEXT NOT NULL, hops INTEGER NOT NULL, result BLOB, detail TEXT, route BLOB NOT NULL,
                 launched INTEGER NOT NULL, updated INTEGER NOT NULL);
             INSERT INTO homed VALUES ('a', 'x@1.0.0', 'finished', 'h', 1, NULL, NULL, x'80', 5, 7),
                                      ('b', 'x@1.0.0', 'running', 'h', 0, NULL, NULL, x'80', 5, 6);",
        )?;
        let tx = conn.transaction()?;
        create(&tx)?;
        tx.commit()?;
        let mut stmt = conn.prepare("SELECT ended FROM homed ORDER BY id")?;
        let ended: Vec<Option<i64>> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        assert_eq!(ended, vec![Some(7), None]);
        Ok(())
    }

    fn record(id: &str) -> AgentRecord {
        AgentRecord {
            id: id.to_owned(),
            code: roam_keys::hash_module(b"code"),
            label: "test@1.0.0".into(),
            home: "127.0.0.1:1".into(),
            home_key: roam_keys::SecretKey::from_seed([7; 32]).public(),
            launched_at: 0,
            limits: crate::protocol::wire::AgentLimits::default(),
            anchors: Vec::new(),
            owner: None,
            trace: None,
        }
    }

    fn leaving(id: &str) -> Row {
        Row {
            id: id.to_owned(),
            hop: 1,
            state: RowState::Leaving,
            record: Ok(record(id)),
            snapshot: Some(vec![0; 64]),
            input: None,
            next: None,
            envelope: None,
            detail: None,
            recall: false,
            sent_to: None,
            receipt: None,
        }
    }

    #[test]
    fn moves_already_under_way_do_not_crowd_out_the_rest() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let state = State::open(dir.path())?;
        state.transaction(|tx| {
            create(tx)?;
            for n in 0..10 {
                insert(tx, &leaving(&format!("agent-{n}")))?;
            }
            Ok(())
        })?;
        // The first three are hung on a dead peer: a round of three starts the next three.
        let hung = |id: &str, _| ["agent-0", "agent-1", "agent-2"].contains(&id);
        let due: Vec<_> = due_to_move(&state, 3, hung)?.into_iter().map(|r| r.id).collect();
        assert_eq!(due, ["agent-3", "agent-4", "agent-5"]);
        assert_eq!(due_to_move(&state, 100, |_, _| false)?.len(), 10);
        Ok(())
    }

    /// Records of agents that ended are forgotten once older than the retention, and only once
    /// the agent's lifetime (plus the clock skew) is over: until then an envelope for it could
    /// still be accepted, and its row is what refuses a replay.
    #[test]
    fn only_ended_agents_past_their_lifetime_and_the_retention_are_forgotten() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let state = State::open(dir.path())?;
        let now = now_secs();
        let row = |id: &str, state: RowState, launched_ago: u64| {
            let mut record = record(id);
            record.launched_at = now - launched_ago;
            record.limits.lifetime_secs = 100;
            Row { state, record: Ok(record), ..leaving(id) }
        };
        state.transaction(|tx| {
            create(tx)?;
            insert(tx, &row("ended-long-ago", RowState::Done, 1_000))?;
            insert(tx, &row("failed-long-ago", RowState::Failed, 1_000))?;
            insert(tx, &row("alive-still", RowState::Done, 10))?;
            insert(tx, &row("still-parked", RowState::Parked, 1_000))?;
            insert_homed(tx, "ended-long-ago", "test@1.0.0", "here", None)?;
            tx.execute("UPDATE homed SET state = 'finished'", [])?;
            insert_homed(tx, "still-parked", "test@1.0.0", "here", None)?;
            Ok(())
        })?;
        let left = |table: &str| -> Result<Vec<String>, StateError> {
            state.transaction(|tx| {
                let mut stmt = tx.prepare(&format!("SELECT id FROM {table} ORDER BY id"))?;
                stmt.query_map([], |r| r.get(0))?.collect()
            })
        };
        // Rows just written are younger than the retention: nothing goes.
        state.transaction(|tx| prune(tx, now - 60, now, 300, 100))?;
        assert_eq!(left("agents")?.len(), 4);
        // Past the retention: the ended agents whose lifetime and skew are over go, a batch at a
        // time, the row that must stay (first in line) stepped over.
        let first = state.transaction(|tx| prune(tx, now + 60, now, 300, 1))?;
        assert!(first >= 1, "the row that must stay held back the others");
        state.transaction(|tx| prune(tx, now + 60, now, 300, 100))?;
        assert_eq!(left("agents")?, ["alive-still", "still-parked"]);
        assert_eq!(left("homed")?, ["still-parked"]);
        Ok(())
    }
}
