//! Forward-only schema migrations, embedded in the binary.
//!
//! The applied version is the database header's `PRAGMA user_version`: it is written in the same
//! transaction as the migration's SQL, so a crash mid-upgrade leaves the file at the old version
//! with none of the new schema (SQLite DDL is transactional). There is no down path: an older
//! `dps` refuses a file from a newer one ([`OpenError::SchemaTooNew`]) rather than guess.
//!
//! Because the tables hold whole JSON documents, adding a field to a dps-proto model needs no
//! migration; only new tables, columns queried by SQL, or indexes do.

use rusqlite::{Connection, TransactionBehavior};
use tracing::info;

use super::OpenError;

/// One schema step. `version` is its position in [`MIGRATIONS`] counted from 1.
pub(crate) struct Migration {
    /// The `user_version` the database has once this step is applied.
    pub(crate) version: u32,
    /// Short description, for logs.
    pub(crate) name: &'static str,
    /// The SQL, run with `execute_batch` inside the upgrade transaction.
    pub(crate) sql: &'static str,
}

/// Every migration, in order. Append only: never edit or reorder a released step, since files in
/// the field already record having run it.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "enrollments, enrollment_groups, registrations",
        sql: include_str!("migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "certificates",
        sql: include_str!("migrations/0002_certificates.sql"),
    },
    Migration {
        version: 3,
        name: "registration intents",
        sql: include_str!("migrations/0003_registration_intents.sql"),
    },
];

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: u32 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// `PRAGMA application_id` of a dps store file ("DPS1"), so that opening some other SQLite file
/// (the embedded hub's `hub.db`, say, which also counts `user_version`) fails loudly instead of
/// being mistaken for an up-to-date store.
pub const APPLICATION_ID: i32 = 0x4450_5331;

/// Brings the database up to [`SCHEMA_VERSION`]; returns how many migrations ran (0 when it was
/// already current).
///
/// Runs in one `BEGIN IMMEDIATE` transaction, so two processes opening the same new file at
/// once cannot both apply step 1: the second waits on the write lock, then sees the new version.
pub(crate) fn apply(conn: &mut Connection) -> Result<usize, OpenError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|source| OpenError::Migration { version: 0, source })?;
    let read = |pragma: &str| -> Result<i64, OpenError> {
        tx.pragma_query_value(None, pragma, |r| r.get(0))
            .map_err(|source| OpenError::Migration { version: 0, source })
    };
    let current = read("user_version")?;
    let app_id = read("application_id")?;
    let current = u32::try_from(current).map_err(|_| OpenError::ForeignDatabase {
        application_id: app_id,
        user_version: current,
    })?;
    // A store file always has our application id once migration 1 ran; a file with a version
    // but no (or another) id belongs to someone else.
    let ours = app_id == i64::from(APPLICATION_ID);
    if !ours && (current > 0 || app_id != 0) {
        return Err(OpenError::ForeignDatabase {
            application_id: app_id,
            user_version: i64::from(current),
        });
    }
    if current > SCHEMA_VERSION {
        return Err(OpenError::SchemaTooNew {
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    let mut ran = 0;
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        let fail = |source| OpenError::Migration {
            version: m.version,
            source,
        };
        tx.execute_batch(m.sql).map_err(fail)?;
        tx.pragma_update(None, "user_version", m.version).map_err(fail)?;
        info!(version = m.version, name = m.name, "applied store migration");
        ran += 1;
    }
    if ran > 0 {
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(|source| OpenError::Migration {
                version: SCHEMA_VERSION,
                source,
            })?;
    }
    tx.commit().map_err(|source| OpenError::Migration {
        version: SCHEMA_VERSION,
        source,
    })?;
    Ok(ran)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_contiguous_from_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "migration {} out of place", m.name);
        }
    }

    #[test]
    fn applies_once_then_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Connection::open(dir.path().join("m.db")).unwrap();
        assert_eq!(apply(&mut c).unwrap(), MIGRATIONS.len());
        // Re-running step 1's CREATE TABLE would fail, so a second success proves it was skipped.
        assert_eq!(apply(&mut c).unwrap(), 0);
        let v: u32 = c.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(v, SCHEMA_VERSION);
    }

    #[test]
    fn refuses_newer_and_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut newer = Connection::open(dir.path().join("newer.db")).unwrap();
        apply(&mut newer).unwrap();
        newer.pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
        assert!(matches!(
            apply(&mut newer),
            Err(OpenError::SchemaTooNew { found, .. }) if found == SCHEMA_VERSION + 1
        ));

        // Like the hub's database: migrated by its own counter, no application id.
        let mut foreign = Connection::open(dir.path().join("hub.db")).unwrap();
        foreign.pragma_update(None, "user_version", 3).unwrap();
        assert!(matches!(
            apply(&mut foreign),
            Err(OpenError::ForeignDatabase { user_version: 3, .. })
        ));
    }
}
