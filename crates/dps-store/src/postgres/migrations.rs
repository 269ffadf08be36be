//! The PostgreSQL store's forward-only schema migrations, embedded in the binary.
//!
//! Every node runs [`apply`] when it connects. It takes a transaction-scoped advisory lock first,
//! so when several nodes start at once against a new database one creates the schema and the
//! others wait, then find it current. The version lives in `dps_schema`, one row per kind of
//! schema: the DPS store's (`store`) and the embedded hubs' (`hub`).

use deadpool_postgres::Object;

use super::PgOpenError;

/// One step of the schema.
struct Migration {
    version: u32,
    name: &'static str,
    sql: &'static str,
}

/// The migrations of one kind of schema.
pub(super) struct Schema {
    /// Its row in `dps_schema`.
    kind: &'static str,
    migrations: &'static [Migration],
}

impl Schema {
    /// The version this build brings a database to.
    pub(super) const fn version(&self) -> u32 {
        self.migrations[self.migrations.len() - 1].version
    }
}

/// The DPS store's tables.
pub(super) const STORE: Schema = Schema {
    kind: "store",
    migrations: &[
        Migration {
            version: 1,
            name: "enrollments, groups, registrations, intents, certificates, linked hubs",
            sql: include_str!("migrations/0001_store.sql"),
        },
        Migration {
            version: 2,
            name: "the identity and PKI files every node shares",
            sql: include_str!("migrations/0002_files.sql"),
        },
        Migration {
            version: 3,
            name: "outstanding TPM challenges",
            sql: include_str!("migrations/0003_tpm_challenges.sql"),
        },
        Migration {
            version: 4,
            name: "audit trail",
            sql: include_str!("migrations/0004_audit.sql"),
        },
        Migration {
            version: 5,
            name: "credential policies",
            sql: include_str!("migrations/0005_credential_policies.sql"),
        },
        Migration {
            version: 6,
            name: "revocations",
            sql: include_str!("migrations/0006_revocations.sql"),
        },
        Migration {
            version: 7,
            name: "spent single-use tokens",
            sql: include_str!("migrations/0007_spent_nonces.sql"),
        },
    ],
};

/// The embedded hubs' registries and telemetry.
pub(super) const HUB: Schema = Schema {
    kind: "hub",
    migrations: &[
        Migration {
            version: 1,
            name: "hub registries and retained telemetry, keyed by hub",
            sql: include_str!("migrations/hub_0001.sql"),
        },
        Migration {
            version: 2,
            name: "hubs held",
            sql: include_str!("migrations/hub_0002.sql"),
        },
        Migration {
            version: 3,
            name: "device status without a subtransaction",
            sql: include_str!("migrations/hub_0003.sql"),
        },
        Migration {
            version: 4,
            name: "conditional registry writes",
            sql: include_str!("migrations/hub_0004.sql"),
        },
        Migration {
            version: 5,
            name: "nodes, where devices are connected, method calls between nodes",
            sql: include_str!("migrations/hub_0005.sql"),
        },
        Migration {
            version: 6,
            name: "queue keys no two nodes share",
            sql: include_str!("migrations/hub_0006.sql"),
        },
        Migration {
            version: 7,
            name: "telemetry numbered by the database",
            sql: include_str!("migrations/hub_0007.sql"),
        },
        Migration {
            version: 8,
            name: "service-bound queues and polled cloud-to-device messages locked in their rows",
            sql: include_str!("migrations/hub_0008.sql"),
        },
        Migration {
            version: 9,
            name: "file uploads in progress",
            sql: include_str!("migrations/hub_0009.sql"),
        },
        Migration {
            version: 10,
            name: "blobs, import and export jobs",
            sql: include_str!("migrations/hub_0010.sql"),
        },
    ],
};

/// The DPS store's schema version this build brings a database to.
pub const SCHEMA_VERSION: u32 = STORE.version();

/// The hubs' schema version this build brings a database to.
pub const HUB_SCHEMA_VERSION: u32 = HUB.version();

/// The advisory lock every node takes while it migrates ("DPS1").
const MIGRATION_LOCK: i64 = 0x4450_5331;

/// Brings the database's `schema` to its version, in one transaction; returns how many
/// migrations ran (0 when it was current).
pub(super) async fn apply(client: &mut Object, schema: &Schema) -> Result<usize, PgOpenError> {
    let fail = |version| move |source| PgOpenError::Migration { version, source };
    let tx = client.transaction().await.map_err(fail(0))?;
    // A migration may rewrite a large table, and a node waits here while another migrates:
    // neither is a stuck statement (connection::SESSION_DEFAULTS).
    tx.batch_execute("SET LOCAL statement_timeout = 0")
        .await
        .map_err(fail(0))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(fail(0))?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS dps_schema (kind TEXT PRIMARY KEY, version INTEGER NOT NULL)")
        .await
        .map_err(fail(0))?;
    let current: i32 = tx
        .query_opt("SELECT version FROM dps_schema WHERE kind = $1", &[&schema.kind])
        .await
        .map_err(fail(0))?
        .map(|row| row.try_get(0))
        .transpose()
        .map_err(fail(0))?
        .unwrap_or(0);
    let current = u32::try_from(current).unwrap_or(0);
    if current > schema.version() {
        return Err(PgOpenError::SchemaTooNew {
            schema: schema.kind,
            found: current,
            supported: schema.version(),
        });
    }
    let mut ran = 0;
    for m in schema.migrations.iter().filter(|m| m.version > current) {
        tx.batch_execute(m.sql).await.map_err(fail(m.version))?;
        let version = i32::try_from(m.version).unwrap_or(i32::MAX);
        tx.execute(
            "INSERT INTO dps_schema (kind, version) VALUES ($1, $2) \
             ON CONFLICT (kind) DO UPDATE SET version = excluded.version",
            &[&schema.kind, &version],
        )
        .await
        .map_err(fail(m.version))?;
        tracing::info!(
            schema = schema.kind,
            version = m.version,
            name = m.name,
            "applied PostgreSQL migration"
        );
        ran += 1;
    }
    tx.commit().await.map_err(fail(schema.version()))?;
    Ok(ran)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_contiguous_from_one() {
        for schema in [&STORE, &HUB] {
            for (i, m) in schema.migrations.iter().enumerate() {
                assert_eq!(m.version as usize, i + 1, "{} {}", schema.kind, m.name);
            }
        }
    }
}
