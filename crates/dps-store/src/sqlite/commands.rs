//! The DPS store's writes: what each [`Op`] does inside the shared writer's transaction
//! (module `writer`), with the etag preconditions checked against the stored row.

use dps_core::{StoreError, WriteCondition};
use rusqlite::{params, Connection, OptionalExtension};

use super::writer::Operation;
use super::OrBackend;

/// The service-managed document tables (conditional put and delete).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    Enrollments,
    Groups,
    Certificates,
    LinkedHubs,
}

impl Table {
    fn select_etag(self) -> &'static str {
        match self {
            Table::Enrollments => "SELECT etag FROM enrollments WHERE key = ?1",
            Table::Groups => "SELECT etag FROM enrollment_groups WHERE key = ?1",
            Table::Certificates => "SELECT etag FROM certificates WHERE key = ?1",
            Table::LinkedHubs => "SELECT etag FROM linked_hubs WHERE key = ?1",
        }
    }

    fn upsert(self) -> &'static str {
        match self {
            Table::Enrollments => {
                "INSERT INTO enrollments (key, etag, doc) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key) DO UPDATE SET etag = excluded.etag, doc = excluded.doc"
            }
            Table::Groups => {
                "INSERT INTO enrollment_groups (key, etag, doc) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key) DO UPDATE SET etag = excluded.etag, doc = excluded.doc"
            }
            Table::Certificates => {
                "INSERT INTO certificates (key, etag, doc) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key) DO UPDATE SET etag = excluded.etag, doc = excluded.doc"
            }
            Table::LinkedHubs => {
                "INSERT INTO linked_hubs (key, etag, doc) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key) DO UPDATE SET etag = excluded.etag, doc = excluded.doc"
            }
        }
    }

    fn delete(self) -> &'static str {
        match self {
            Table::Enrollments => "DELETE FROM enrollments WHERE key = ?1",
            Table::Groups => "DELETE FROM enrollment_groups WHERE key = ?1",
            Table::Certificates => "DELETE FROM certificates WHERE key = ?1",
            Table::LinkedHubs => "DELETE FROM linked_hubs WHERE key = ?1",
        }
    }
}

const SELECT_REGISTRATION_ETAG: &str = "SELECT etag FROM registrations WHERE key = ?1";
const DELETE_REGISTRATION: &str = "DELETE FROM registrations WHERE key = ?1";
const UPSERT_INTENT: &str = "INSERT INTO registration_intents (key, doc) VALUES (?1, ?2) \
     ON CONFLICT (key) DO UPDATE SET doc = excluded.doc";
const DELETE_INTENT: &str = "DELETE FROM registration_intents WHERE key = ?1";
/// Sets the flag inside the stored document, so nothing else in it can be overwritten.
const MARK_REPROVISION: &str =
    "UPDATE registrations SET doc = json_set(doc, '$.reprovisionRequested', json('true')) WHERE key = ?1";
const UPSERT_REGISTRATION: &str = "INSERT INTO registrations (key, group_key, etag, doc) \
     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (key) DO UPDATE SET \
     group_key = excluded.group_key, etag = excluded.etag, doc = excluded.doc";

/// One write. Documents arrive already serialised: JSON encoding runs on the callers' threads,
/// in parallel, keeping the single writer's critical path to SQL only.
pub(crate) enum Op {
    /// Conditional create/replace of an enrollment, group or CA certificate.
    Put {
        table: Table,
        key: String,
        etag: Option<String>,
        doc: String,
        cond: WriteCondition,
    },
    /// Conditional delete; deleting an enrollment also deletes the registration with its key.
    Delete {
        table: Table,
        key: String,
        cond: WriteCondition,
    },
    /// Conditional delete of a registration record.
    DeleteRegistration { key: String, cond: WriteCondition },
    /// Unconditional upsert of a registration record, removing its operation's intent.
    CommitRegistration {
        key: String,
        group_key: Option<String>,
        etag: Option<String>,
        doc: String,
        operation_id: Option<String>,
    },
    /// Unconditional upsert of a registration intent (keyed by operation id).
    PutIntent { operation_id: String, doc: String },
    /// Removal of a registration intent; absent is fine.
    DeleteIntent { operation_id: String },
    /// Marks a registration record for reprovisioning, in place (`NotFound` when absent).
    RequestReprovision { key: String },
    /// Test hook: tells the test it is running, then blocks the writer (inside its transaction)
    /// until released, so the test can queue a batch deterministically.
    #[cfg(test)]
    Pause {
        reached: std::sync::mpsc::Sender<()>,
        release: std::sync::mpsc::Receiver<()>,
    },
    /// Test hook: writes a registration row, then fails, to prove the savepoint undoes it.
    #[cfg(test)]
    WriteThenFail { key: String },
    /// Test hook: leaves a deferred foreign-key violation so that COMMIT itself fails.
    #[cfg(test)]
    PoisonCommit,
}

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
        #[cfg(test)]
        Op::Pause { reached, release } => {
            let _ = reached.send(());
            let _ = release.recv();
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
