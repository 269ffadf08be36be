//! The DPS store's writes on SQLite: what each [`Op`] does inside the shared writer's
//! transaction (module `writer`), with the etag preconditions checked against the stored row.

use dps_core::StoreError;
use rusqlite::{params, Connection, OptionalExtension};

use super::writer::Operation;
use super::OrBackend;
use crate::documents::{
    Op, Table, DELETE_INTENT, DELETE_REGISTRATION, INSERT_AUDIT, PRUNE_AUDIT, PRUNE_AUDIT_STEP,
    SELECT_REGISTRATION_ETAG, SPEND_NONCE, SWEEP_NONCES, UPSERT_INTENT, UPSERT_REGISTRATION,
};

/// Sets the flag inside the stored document, so nothing else in it can be overwritten.
const MARK_REPROVISION: &str =
    "UPDATE registrations SET doc = json_set(doc, '$.reprovisionRequested', json('true')) WHERE key = ?1";

/// The stored etag: `None` if there is no row, `Some("")` for a row without one (so a create-only
/// PUT still sees it as existing).
fn current_etag(conn: &Connection, select: &str, key: &str) -> Result<Option<String>, StoreError> {
    conn.prepare_cached(select)
        .or_backend()?
        .query_row([key], |r| r.get::<_, Option<String>>(0))
        .optional()
        .or_backend()
        .map(|row| row.map(Option::unwrap_or_default))
}

impl Operation for Op {
    type Error = StoreError;

    fn apply(&self, conn: &Connection) -> Result<(), StoreError> {
        apply(conn, self)
    }
}

fn apply(conn: &Connection, op: &Op) -> Result<(), StoreError> {
    match op {
        Op::Put {
            table,
            key,
            etag,
            doc,
            cond,
        } => {
            cond.check_put(current_etag(conn, table.select_etag(), key)?.as_deref())?;
            conn.prepare_cached(table.upsert())
                .or_backend()?
                .execute(params![key, etag, doc])
                .or_backend()?;
        }
        Op::Delete { table, key, cond } => {
            cond.check_delete(current_etag(conn, table.select_etag(), key)?.as_deref())?;
            conn.prepare_cached(table.delete())
                .or_backend()?
                .execute([key])
                .or_backend()?;
            if *table == Table::Enrollments {
                // An individual enrollment's registration record goes with it (same key).
                conn.prepare_cached(DELETE_REGISTRATION)
                    .or_backend()?
                    .execute([key])
                    .or_backend()?;
            }
        }
        Op::DeleteRegistration { key, cond } => {
            cond.check_delete(current_etag(conn, SELECT_REGISTRATION_ETAG, key)?.as_deref())?;
            conn.prepare_cached(DELETE_REGISTRATION)
                .or_backend()?
                .execute([key])
                .or_backend()?;
        }
        Op::CommitRegistration {
            key,
            group_key,
            etag,
            doc,
            operation_id,
        } => {
            conn.prepare_cached(UPSERT_REGISTRATION)
                .or_backend()?
                .execute(params![key, group_key, etag, doc])
                .or_backend()?;
            if let Some(op) = operation_id {
                conn.prepare_cached(DELETE_INTENT)
                    .or_backend()?
                    .execute([op])
                    .or_backend()?;
            }
        }
        Op::PutIntent { operation_id, doc } => {
            conn.prepare_cached(UPSERT_INTENT)
                .or_backend()?
                .execute(params![operation_id, doc])
                .or_backend()?;
        }
        Op::RequestReprovision { key } => {
            let changed = conn
                .prepare_cached(MARK_REPROVISION)
                .or_backend()?
                .execute([key])
                .or_backend()?;
            if changed == 0 {
                return Err(StoreError::NotFound);
            }
        }
        Op::DeleteIntent { operation_id } => {
            conn.prepare_cached(DELETE_INTENT)
                .or_backend()?
                .execute([operation_id])
                .or_backend()?;
        }
        Op::AppendAudit { rows } => {
            let mut insert = conn.prepare_cached(INSERT_AUDIT).or_backend()?;
            for r in rows {
                insert
                    .execute(params![r.at_ms, r.kind, r.registration_key, r.outcome, r.doc])
                    .or_backend()?;
            }
        }
        Op::ChangeRevocations { put, remove } => {
            let mut upsert = conn.prepare_cached(Table::Revocations.upsert()).or_backend()?;
            for (key, doc) in put {
                upsert.execute(params![key, None::<String>, doc]).or_backend()?;
            }
            let mut delete = conn.prepare_cached(Table::Revocations.delete()).or_backend()?;
            for key in remove {
                delete.execute([key]).or_backend()?;
            }
        }
        Op::PruneAudit { before_ms } => {
            conn.prepare_cached(PRUNE_AUDIT)
                .or_backend()?
                .execute(params![before_ms, PRUNE_AUDIT_STEP])
                .or_backend()?;
        }
        Op::SpendNonce {
            nonce,
            expires_ms,
            now_ms,
        } => {
            conn.prepare_cached(SWEEP_NONCES)
                .or_backend()?
                .execute([now_ms])
                .or_backend()?;
            let added = conn
                .prepare_cached(SPEND_NONCE)
                .or_backend()?
                .execute(params![nonce, expires_ms])
                .or_backend()?;
            if added == 0 {
                return Err(StoreError::AlreadyExists);
            }
        }
        #[cfg(test)]
        Op::Pause { reached, release } => {
            let _ = reached.send(());
            let _ = release.lock().map(|r| r.recv());
        }
        #[cfg(test)]
        Op::WriteThenFail { key } => {
            conn.prepare_cached(UPSERT_REGISTRATION)
                .or_backend()?
                .execute(params![key, None::<String>, None::<String>, "{}"])
                .or_backend()?;
            return Err(StoreError::backend("injected failure"));
        }
        #[cfg(test)]
        Op::PoisonCommit => {
            conn.execute_batch(
                "CREATE TEMP TABLE IF NOT EXISTS poison_parent (id INTEGER PRIMARY KEY);
                 CREATE TEMP TABLE IF NOT EXISTS poison_child (
                     parent INTEGER REFERENCES poison_parent (id) DEFERRABLE INITIALLY DEFERRED);
                 INSERT INTO poison_child (parent) VALUES (42);",
            )
            .or_backend()?;
        }
    }
    Ok(())
}
