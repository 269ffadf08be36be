//! The hub's retained telemetry in `telemetry.db` (schema `telemetry/0001`): written by its own
//! group-committing writer thread, read on its own pool, so that telemetry never queues behind
//! registry writes or the other way round.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use dps_hub::store::{decode_event, EventStart, HubStoreError, PartitionBounds, TelemetryMessage};
use rusqlite::{params, Connection};

use super::writer::Operation;
use super::{BackendError, Database};
use crate::hub_documents::{covering, event_int as int, event_uint as uint, partition_bounds, EventRow};

const INSERT: &str = "INSERT OR REPLACE INTO events (seq, partition, pseq, device, enqueued_ms, size, doc) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
const READ_PARTITION: &str = "SELECT doc FROM events WHERE partition = ?1 AND pseq >= ?2 ORDER BY pseq LIMIT ?3";
const FIND_OFFSET: &str = "SELECT pseq FROM events WHERE partition = ?1 AND seq >= ?2 ORDER BY pseq LIMIT 1";
const FIND_TIME: &str = "SELECT pseq FROM events WHERE partition = ?1 AND enqueued_ms >= ?2 ORDER BY pseq LIMIT 1";
const AFTER: &str = "SELECT doc FROM events WHERE seq > ?1 AND (?2 IS NULL OR device = ?2) ORDER BY seq LIMIT ?3";
const NEWEST: &str = "SELECT doc FROM events WHERE (?1 IS NULL OR device = ?1) ORDER BY seq DESC LIMIT ?2";
const BOUNDS: &str = "SELECT partition, MIN(pseq), MAX(pseq), MAX(seq) FROM events GROUP BY partition";
/// The last message itself: its enqueued time to the nanosecond (the column holds milliseconds).
const LAST: &str = "SELECT doc FROM events WHERE seq = ?1";
/// Rows looked at per trimming step: bounded transactions, however much has to go.
const TRIM_STEP: i64 = 10_000;
const TRIM_AGE: &str =
    "DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?2) AND enqueued_ms < ?1";
const OLDEST: &str = "SELECT seq, size FROM events ORDER BY seq LIMIT ?1";
const DELETE_UP_TO: &str = "DELETE FROM events WHERE seq <= ?1";
const BYTES: &str = "SELECT bytes FROM event_bytes WHERE id = 1";

/// A write to `telemetry.db`.
pub(super) enum EventOp {
    /// Messages to keep.
    Append(Vec<EventRow>),
    /// Deletes what is older than the cutoff (ms), then the oldest until at most `max_bytes`
    /// remain; adds how many went to `deleted`.
    Trim {
        older_than_ms: i64,
        max_bytes: i64,
        deleted: Arc<AtomicU64>,
    },
}

impl Operation for EventOp {
    type Error = HubStoreError;

    fn apply(&self, conn: &Connection) -> Result<(), HubStoreError> {
        let sql = HubStoreError::sqlite;
        match self {
            EventOp::Append(rows) => {
                let mut insert = conn.prepare_cached(INSERT).map_err(sql)?;
                for r in rows {
                    insert
                        .execute(params![
                            r.seq,
                            r.partition,
                            r.pseq,
                            r.device,
                            r.enqueued_ms,
                            r.size,
                            r.doc
                        ])
                        .map_err(sql)?;
                }
                Ok(())
            }
            EventOp::Trim {
                older_than_ms,
                max_bytes,
                deleted,
            } => {
                loop {
                    let n = conn
                        .prepare_cached(TRIM_AGE)
                        .and_then(|mut s| s.execute(params![older_than_ms, TRIM_STEP]))
                        .map_err(sql)?;
                    deleted.fetch_add(n as u64, Ordering::Relaxed);
                    if n == 0 {
                        break;
                    }
                }
                loop {
                    let bytes: i64 = conn
                        .prepare_cached(BYTES)
                        .and_then(|mut s| s.query_row([], |r| r.get(0)))
                        .map_err(sql)?;
                    if bytes <= *max_bytes {
                        break;
                    }
                    // The oldest rows whose sizes cover the excess (at most a step of them).
                    let excess = bytes - max_bytes;
                    let rows: Vec<(i64, i64)> = conn
                        .prepare_cached(OLDEST)
                        .and_then(|mut s| {
                            s.query_map(params![TRIM_STEP], |r| Ok((r.get(0)?, r.get(1)?)))?
                                .collect()
                        })
                        .map_err(sql)?;
                    let Some(up_to) = covering(&rows, excess) else { break };
                    let n = conn
                        .prepare_cached(DELETE_UP_TO)
                        .and_then(|mut s| s.execute(params![up_to]))
                        .map_err(sql)?;
                    deleted.fetch_add(n as u64, Ordering::Relaxed);
                    if n == 0 {
                        break;
                    }
                }
                Ok(())
            }
        }
    }
}

/// Decodes `doc` rows selected by `sql`.
fn docs(conn: &Connection, sql: &str, p: &[&dyn rusqlite::ToSql]) -> Result<Vec<TelemetryMessage>, HubStoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(HubStoreError::sqlite)?;
    let mut rows = stmt.query(p).map_err(HubStoreError::sqlite)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(HubStoreError::sqlite)? {
        let doc: Vec<u8> = row.get(0).map_err(HubStoreError::sqlite)?;
        out.push(decode_event(&doc).map_err(|e| HubStoreError::backend(format!("undecodable telemetry row: {e}")))?);
    }
    Ok(out)
}

/// The read side, on `db`'s pool.
pub(super) struct Events<'a>(pub(super) &'a Database<EventOp>);

impl Events<'_> {
    pub(super) async fn read_partition(
        &self,
        partition: u32,
        from: u64,
        limit: usize,
    ) -> Result<Vec<TelemetryMessage>, HubStoreError> {
        let (from, limit) = (int(from)?, super::reader::sql_limit(limit));
        self.0
            .readers
            .read(move |c| docs(c, READ_PARTITION, params![partition, from, limit]))
            .await
    }

    pub(super) async fn find(&self, partition: u32, start: EventStart) -> Result<Option<u64>, HubStoreError> {
        let (sql, value) = match start {
            EventStart::Offset(o) => (FIND_OFFSET, int(o)?),
            EventStart::EnqueuedAt(ms) => (FIND_TIME, ms),
        };
        self.0
            .readers
            .read(move |c| {
                let mut stmt = c.prepare_cached(sql).map_err(HubStoreError::sqlite)?;
                let mut rows = stmt.query(params![partition, value]).map_err(HubStoreError::sqlite)?;
                match rows.next().map_err(HubStoreError::sqlite)? {
                    Some(row) => Ok(Some(uint(row.get(0).map_err(HubStoreError::sqlite)?)?)),
                    None => Ok(None),
                }
            })
            .await
    }

    pub(super) async fn recent(
        &self,
        device_id: Option<&str>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<TelemetryMessage>, HubStoreError> {
        let device = device_id.map(dps_hub::store::device_key);
        let limit = super::reader::sql_limit(limit);
        let after = after.map(int).transpose()?;
        self.0
            .readers
            .read(move |c| match after {
                Some(a) => docs(c, AFTER, params![a, device, limit]),
                None => {
                    let mut newest = docs(c, NEWEST, params![device, limit])?;
                    newest.reverse();
                    Ok(newest)
                }
            })
            .await
    }

    pub(super) async fn bounds(&self) -> Result<Vec<PartitionBounds>, HubStoreError> {
        self.0
            .readers
            .read(|c| {
                let mut stmt = c.prepare_cached(BOUNDS).map_err(HubStoreError::sqlite)?;
                let rows: Vec<(i64, i64, i64, i64)> = stmt
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                    .and_then(|rows| rows.collect())
                    .map_err(HubStoreError::sqlite)?;
                rows.into_iter()
                    .map(|row| {
                        let last_enqueued = docs(c, LAST, params![row.3])?
                            .first()
                            .map(|m| m.enqueued_time)
                            .unwrap_or_default();
                        partition_bounds(row, last_enqueued)
                    })
                    .collect()
            })
            .await
    }

    pub(super) async fn trim(&self, older_than: DateTime<Utc>, max_bytes: u64) -> Result<u64, HubStoreError> {
        let deleted = Arc::new(AtomicU64::new(0));
        self.0
            .writer
            .write(EventOp::Trim {
                older_than_ms: older_than.timestamp_millis(),
                max_bytes: i64::try_from(max_bytes).unwrap_or(i64::MAX),
                deleted: deleted.clone(),
            })
            .await?;
        Ok(deleted.load(Ordering::Relaxed))
    }
}
