//! Forward-only schema migrations, embedded in the binary, for every SQLite file this crate
//! keeps (the DPS store's and the hub's: one [`Schema`] each).
//!
//! The applied version is the database header's `PRAGMA user_version`: it is written in the same
//! transaction as the migration's SQL, so a crash mid-upgrade leaves the file at the old version
//! with none of the new schema (SQLite DDL is transactional). There is no down path: an older
//! `dps` refuses a file from a newer one ([`OpenError::SchemaTooNew`]) rather than guess.
//! `PRAGMA application_id` tells the files apart, so that opening one where the other belongs
//! fails loudly instead of being taken for an up-to-date file of the other kind.
//!
//! Because the tables hold whole JSON documents, adding a field to a dps-proto model (or to the
//! hub's device record) needs no migration; only new tables, columns queried by SQL, or indexes
//! do.

use rusqlite::{Connection, TransactionBehavior};
use tracing::info;

use super::OpenError;

/// One schema step. `version` is its position in its schema's list counted from 1.
pub(crate) struct Migration {
    /// The `user_version` the database has once this step is applied.
    pub(crate) version: u32,
    /// Short description, for logs.
    pub(crate) name: &'static str,
    /// The SQL, run with `execute_batch` inside the upgrade transaction.
    pub(crate) sql: &'static str,
}

/// The migrations of one kind of database file and how to recognise such a file.
pub(crate) struct Schema {
    /// What the file is, for logs and errors ("store", "hub").
    pub(crate) database: &'static str,
    /// `PRAGMA application_id` written into the file.
    pub(crate) application_id: i32,
    /// Every migration, in order. Append only: never edit or reorder a released step, since
    /// files in the field already record having run it.
    pub(crate) migrations: &'static [Migration],
    /// Whether a file with a schema version but no application id is one of ours, written by a
    /// build from before this schema had one (the hub's `hub.db`). It gets the id when opened.
    pub(crate) adopts_unmarked_files: bool,
}

impl Schema {
    /// The schema version this build writes and understands.
    pub(crate) const fn version(&self) -> u32 {
        self.migrations[self.migrations.len() - 1].version
    }
}

/// The DPS store (`dps.db`): enrollments, groups, registrations, certificates, intents, linked
/// hubs, the audit trail, credential policies, revocations.
pub(crate) const STORE: Schema = Schema {
    database: "store",
    application_id: APPLICATION_ID,
    migrations: &[
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
        Migration {
            version: 4,
            name: "linked hubs",
            sql: include_str!("migrations/0004_linked_hubs.sql"),
        },
        Migration {
            version: 5,
            name: "audit trail",
            sql: include_str!("migrations/0005_audit.sql"),
        },
        Migration {
            version: 6,
            name: "credential policies",
            sql: include_str!("migrations/0006_credential_policies.sql"),
        },
        Migration {
            version: 7,
            name: "revocations",
            sql: include_str!("migrations/0007_revocations.sql"),
        },
        Migration {
            version: 8,
            name: "spent single-use tokens",
            sql: include_str!("migrations/0008_spent_nonces.sql"),
        },
    ],
    adopts_unmarked_files: false,
};

/// The embedded hub's registry (`hub.db`). Its step 1 is the table the hub created before this
/// crate kept the file, so an existing `hub.db` (version 1, no application id) opens as is.
pub(crate) const HUB: Schema = Schema {
    database: "hub",
    application_id: HUB_APPLICATION_ID,
    migrations: &[
        Migration {
            version: 1,
            name: "devices",
            sql: include_str!("migrations/hub/0001_devices.sql"),
        },
        Migration {
            version: 2,
            name: "device counts by status",
            sql: include_str!("migrations/hub/0002_device_counts.sql"),
        },
        Migration {
            version: 3,
            name: "cloud-to-device and feedback queues",
            sql: include_str!("migrations/hub/0003_c2d_queues.sql"),
        },
        Migration {
            version: 4,
            name: "event hub consumer groups",
            sql: include_str!("migrations/hub/0004_consumer_groups.sql"),
        },
        Migration {
            version: 5,
            name: "file upload notifications",
            sql: include_str!("migrations/hub/0005_file_notifications.sql"),
        },
        Migration {
            version: 6,
            name: "module identities",
            sql: include_str!("migrations/hub/0006_modules.sql"),
        },
        Migration {
            version: 7,
            name: "scheduled jobs",
            sql: include_str!("migrations/hub/0007_jobs.sql"),
        },
        Migration {
            version: 8,
            name: "string tag index",
            sql: include_str!("migrations/hub/0008_tag_index.sql"),
        },
        Migration {
            version: 9,
            name: "rows keyed by hub",
            sql: include_str!("migrations/hub/0009_hub_column.sql"),
        },
    ],
    adopts_unmarked_files: true,
};

/// The embedded hub's retained telemetry (`telemetry.db`).
pub(crate) const TELEMETRY: Schema = Schema {
    database: "telemetry",
    application_id: TELEMETRY_APPLICATION_ID,
    migrations: &[Migration {
        version: 1,
        name: "events",
        sql: include_str!("migrations/telemetry/0001_events.sql"),
    }],
    adopts_unmarked_files: false,
};

/// The DPS store schema version this build writes and understands.
pub const SCHEMA_VERSION: u32 = STORE.version();

/// The hub registry schema version this build writes and understands.
pub const HUB_SCHEMA_VERSION: u32 = HUB.version();

/// `PRAGMA application_id` of a dps store file ("DPS1"), so that opening some other SQLite file
/// (the embedded hub's `hub.db`, say, which also counts `user_version`) fails loudly instead of
/// being mistaken for an up-to-date store.
pub const APPLICATION_ID: i32 = 0x4450_5331;

/// `PRAGMA application_id` of a hub registry file ("DPH1").
pub const HUB_APPLICATION_ID: i32 = 0x4450_4831;

/// `PRAGMA application_id` of `telemetry.db` ("DPT1").
pub const TELEMETRY_APPLICATION_ID: i32 = 0x4450_5431;

/// Brings the database up to `schema`'s version; returns how many migrations ran (0 when it was
/// already current).
///
/// Runs in one `BEGIN IMMEDIATE` transaction, so two processes opening the same new file at
/// once cannot both apply step 1: the second waits on the write lock, then sees the new version.
pub(crate) fn apply(conn: &mut Connection, schema: &Schema) -> Result<usize, OpenError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|source| OpenError::Migration { version: 0, source })?;
    let read = |pragma: &str| -> Result<i64, OpenError> {
        tx.pragma_query_value(None, pragma, |r| r.get(0))
            .map_err(|source| OpenError::Migration { version: 0, source })
    };
    let current = read("user_version")?;
    let app_id = read("application_id")?;
    let foreign = |user_version| OpenError::ForeignDatabase {
        database: schema.database,
        application_id: app_id,
        user_version,
    };
    let current = u32::try_from(current).map_err(|_| foreign(current))?;
    // A file of ours always has our application id once migration 1 ran; a file with a version
    // but no (or another) id belongs to someone else, unless the schema adopts unmarked files.
    let ours = app_id == i64::from(schema.application_id) || (app_id == 0 && schema.adopts_unmarked_files);
    if !ours && (current > 0 || app_id != 0) {
        return Err(foreign(i64::from(current)));
    }
    let supported = schema.version();
    if current > supported {
        return Err(OpenError::SchemaTooNew {
            database: schema.database,
            found: current,
            supported,
        });
    }
    let mut ran = 0;
    for m in schema.migrations.iter().filter(|m| m.version > current) {
        let fail = |source| OpenError::Migration {
            version: m.version,
            source,
        };
        tx.execute_batch(m.sql).map_err(fail)?;
        tx.pragma_update(None, "user_version", m.version).map_err(fail)?;
        info!(
            database = schema.database,
            version = m.version,
            name = m.name,
            "applied migration"
        );
        ran += 1;
    }
    let stamp = |source| OpenError::Migration {
        version: supported,
        source,
    };
    if app_id != i64::from(schema.application_id) {
        tx.pragma_update(None, "application_id", schema.application_id)
            .map_err(stamp)?;
    }
    tx.commit().map_err(stamp)?;
    Ok(ran)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_contiguous_from_one() {
        for schema in [&STORE, &HUB] {
            for (i, m) in schema.migrations.iter().enumerate() {
                assert_eq!(m.version as usize, i + 1, "migration {} out of place", m.name);
            }
        }
    }

    #[test]
    fn applies_once_then_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Connection::open(dir.path().join("m.db")).unwrap();
        assert_eq!(apply(&mut c, &STORE).unwrap(), STORE.migrations.len());
        // Re-running step 1's CREATE TABLE would fail, so a second success proves it was skipped.
        assert_eq!(apply(&mut c, &STORE).unwrap(), 0);
        let v: u32 = c.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(v, SCHEMA_VERSION);
    }

    #[test]
    fn refuses_newer_and_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut newer = Connection::open(dir.path().join("newer.db")).unwrap();
        apply(&mut newer, &STORE).unwrap();
        newer.pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
        assert!(matches!(
            apply(&mut newer, &STORE),
            Err(OpenError::SchemaTooNew { found, .. }) if found == SCHEMA_VERSION + 1
        ));

        // Like the hub's database: migrated by its own counter, no application id.
        let mut foreign = Connection::open(dir.path().join("hub.db")).unwrap();
        foreign.pragma_update(None, "user_version", 3).unwrap();
        assert!(matches!(
            apply(&mut foreign, &STORE),
            Err(OpenError::ForeignDatabase { user_version: 3, .. })
        ));
    }

    /// A `hub.db` from before the hub store lived here: version 1, no application id. It is
    /// migrated from step 2 on (step 1 would fail on the existing table), stamped as a hub file,
    /// and then refused as a DPS store (and a DPS store as a hub file).
    #[test]
    fn adopts_an_unmarked_hub_file_and_keeps_the_kinds_apart() {
        let dir = tempfile::tempdir().unwrap();
        let mut hub = Connection::open(dir.path().join("hub.db")).unwrap();
        hub.execute_batch(
            "CREATE TABLE devices (id TEXT PRIMARY KEY NOT NULL, doc TEXT NOT NULL) WITHOUT ROWID;
             PRAGMA user_version = 1;",
        )
        .unwrap();
        assert_eq!(apply(&mut hub, &HUB).unwrap(), HUB.migrations.len() - 1);
        let id: i32 = hub.pragma_query_value(None, "application_id", |r| r.get(0)).unwrap();
        assert_eq!(id, HUB_APPLICATION_ID);
        assert_eq!(apply(&mut hub, &HUB).unwrap(), 0);
        assert!(matches!(
            apply(&mut hub, &STORE),
            Err(OpenError::ForeignDatabase {
                database: "store",
                user_version,
                ..
            }) if user_version == i64::from(HUB_SCHEMA_VERSION)
        ));

        let mut store = Connection::open(dir.path().join("dps.db")).unwrap();
        apply(&mut store, &STORE).unwrap();
        assert!(matches!(
            apply(&mut store, &HUB),
            Err(OpenError::ForeignDatabase { database: "hub", .. })
        ));

        let mut fresh = Connection::open(dir.path().join("fresh-hub.db")).unwrap();
        assert_eq!(apply(&mut fresh, &HUB).unwrap(), HUB.migrations.len());
        let v: u32 = fresh.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(v, HUB_SCHEMA_VERSION);
    }
}
