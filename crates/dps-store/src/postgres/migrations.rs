//! The PostgreSQL store's forward-only schema migrations, embedded in the binary.
//!
//! Every node runs [`apply`] when it connects. It takes a transaction-scoped advisory lock first,
//! so when several nodes start at once against a new database one creates the schema and the
//! others wait, then find it current. The version lives in `dps_schema` (one row per kind of
//! schema: `store` now, the hub's later).

use deadpool_postgres::Object;

use super::PgOpenError;

/// One step of the schema.
struct Migration {
    version: u32,
    name: &'static str,
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "enrollments, groups, registrations, intents, certificates, linked hubs",
    sql: include_str!("migrations/0001_store.sql"),
}];

/// The schema version this build brings a database to.
pub const SCHEMA_VERSION: u32 = 1;

/// The advisory lock every node takes while it migrates ("DPS1").
const MIGRATION_LOCK: i64 = 0x4450_5331;

/// Brings the database's store schema to [`SCHEMA_VERSION`], in one transaction; returns how
/// many migrations ran (0 when it was current).
pub(super) async fn apply(client: &mut Object) -> Result<usize, PgOpenError> {
    let fail = |version| move |source| PgOpenError::Migration { version, source };
    let tx = client.transaction().await.map_err(fail(0))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(fail(0))?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS dps_schema (kind TEXT PRIMARY KEY, version INTEGER NOT NULL)")
        .await
        .map_err(fail(0))?;
    let current: i32 = tx
        .query_opt("SELECT version FROM dps_schema WHERE kind = 'store'", &[])
        .await
        .map_err(fail(0))?
        .map_or(0, |row| row.get(0));
    let current = u32::try_from(current).unwrap_or(0);
    if current > SCHEMA_VERSION {
        return Err(PgOpenError::SchemaTooNew {
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    let mut ran = 0;
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        tx.batch_execute(m.sql).await.map_err(fail(m.version))?;
        let version = i32::try_from(m.version).unwrap_or(i32::MAX);
        tx.execute(
            "INSERT INTO dps_schema (kind, version) VALUES ('store', $1) \
             ON CONFLICT (kind) DO UPDATE SET version = excluded.version",
            &[&version],
        )
        .await
        .map_err(fail(m.version))?;
        tracing::info!(version = m.version, name = m.name, "applied PostgreSQL store migration");
        ran += 1;
    }
    tx.commit().await.map_err(fail(SCHEMA_VERSION))?;
    Ok(ran)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_contiguous_and_end_at_the_schema_version() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "{}", m.name);
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.version), Some(SCHEMA_VERSION));
    }
}
