//! [`PostgresStore`]: the DPS store on PostgreSQL, so that several stateless `dps serve` nodes
//! can share one database (issue 15, decision 0030).
//!
//! The same tables, documents and writes as the SQLite store (module `documents`): reads run
//! on a pool of connections; writes are queued to one writer task per node that group-commits
//! them (module `writer`), so an acknowledged registration is committed and a busy node pays one
//! commit for many registrations. Concurrent nodes are kept consistent by PostgreSQL itself:
//! conditional writes lock the row they check, and a create-only write inserts or fails.
//!
//! The schema is created and migrated by whichever node starts first (module `migrations`,
//! under an advisory lock).

mod blobs;
mod bus;
mod challenges;
mod commands;
mod connection;
mod files;
mod hub;
mod import_export;
mod migrations;
mod peers;
mod uploads;
mod writer;

use async_trait::async_trait;
use deadpool_postgres::{Object, Pool};
use dps_core::StoreError;
use serde::de::DeserializeOwned;
use tokio_postgres::types::ToSql;

use crate::documents::{undecodable, Doc, Documents, Op, LIST_BY_GROUP};
use crate::stats::StoreStats;
pub(crate) use blobs::BlobRows;
pub use bus::{BusEvent, NodeBus, BUS_CHANNEL, MAX_NOTICE};
pub use commands::store_change;
pub use connection::without_password;
use connection::Settings;
pub use files::FILES_NOTICE;
pub use hub::{HubNotice, Notice, PostgresHubDatabase, PostgresHubStore};
pub use migrations::{HUB_SCHEMA_VERSION as POSTGRES_HUB_SCHEMA_VERSION, SCHEMA_VERSION as POSTGRES_SCHEMA_VERSION};

/// Connections a node keeps for reads (the writer has one of its own besides). Reads are short
/// lookups by key; more connections than this only add contention on a small machine, and
/// every node's pool counts against the server's `max_connections`.
const MAX_READ_CONNECTIONS: usize = 16;

/// Why [`PostgresStore::connect`] failed. Nothing is left half-done: a failed migration is
/// rolled back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgOpenError {
    /// The store URL is not a connection string PostgreSQL's client accepts (`postgres://user:
    /// pass@host:port/db`, or `key=value` pairs).
    #[error("invalid PostgreSQL store URL: {0}")]
    Url(#[source] tokio_postgres::Error),
    /// The connection pool could not be set up.
    #[error("cannot set up the PostgreSQL connection pool: {0}")]
    Pool(#[source] deadpool_postgres::BuildError),
    /// The server could not be reached in time, or refused the connection (wrong address,
    /// credentials or database; TLS required by one side and refused by the other; a server
    /// certificate that failed the check `sslmode` asks for, whose reason this carries).
    #[error("cannot connect to PostgreSQL: {}", causes(.0))]
    Connect(#[source] deadpool_postgres::PoolError),
    /// The URL's `sslrootcert` names a file that cannot be read.
    #[error("cannot read the PostgreSQL root certificate file {path}: {source}")]
    RootCertificate {
        /// The file, as the URL names it.
        path: std::path::PathBuf,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    /// The URL's `sslcert` or `sslkey` cannot be used: a file that cannot be read, or one named
    /// without the other.
    #[error("cannot use the PostgreSQL client certificate {path}: {reason}")]
    ClientCertificate {
        /// The file, as the URL names it.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS configuration for PostgreSQL could not be built: the root certificate file holds
    /// no usable certificate, `sslmode=verify-*` without `sslrootcert` found no system CAs, or
    /// the client certificate or key files hold none that rustls takes (or do not match).
    #[error("cannot set up TLS to PostgreSQL: {0}")]
    Tls(#[source] dps_pki::PkiError),
    /// A schema migration failed; its transaction was rolled back.
    #[error("PostgreSQL store migration to schema version {version} failed: {source}")]
    Migration {
        /// The schema version being applied (0 while reading the current one).
        version: u32,
        /// PostgreSQL's error.
        source: tokio_postgres::Error,
    },
    /// The shared files (identity, CAs, server certificates) could not be read or written; the
    /// transaction was rolled back.
    #[error("cannot read or write the shared files in PostgreSQL: {0}")]
    Files(#[source] tokio_postgres::Error),
    /// The node could not record itself among the database's nodes (`dps_nodes`, decision
    /// 0031), which the other nodes read to know it is alive.
    #[error("cannot record this node in PostgreSQL: {0}")]
    Node(#[source] tokio_postgres::Error),
    /// The node could not listen for the other nodes' notices (decision 0031).
    #[error("cannot listen on PostgreSQL: {0}")]
    Listen(#[source] tokio_postgres::Error),
    /// The database was migrated by a newer `dps` with a schema this build does not know;
    /// using it could lose data, so it is refused rather than downgraded.
    #[error("PostgreSQL {schema} schema has version {found}; this build supports up to {supported}")]
    SchemaTooNew {
        /// Which schema (`store`, `hub`).
        schema: &'static str,
        /// The version found in `dps_schema`.
        found: u32,
        /// What this build supports ([`POSTGRES_SCHEMA_VERSION`], [`POSTGRES_HUB_SCHEMA_VERSION`]).
        supported: u32,
    },
}

/// A [`dps_core::Store`] on PostgreSQL, safe to share across tasks (`Arc<PostgresStore>`).
///
/// Writes are durable when they return: the writer's COMMIT returned, and PostgreSQL's default
/// `synchronous_commit = on` flushed it to the WAL first. Needs a tokio runtime.
pub struct PostgresStore {
    pool: Pool,
    writer: writer::Writer<Op>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database at `url`, creates or migrates its schema (safely when several
    /// nodes start at once) and starts the writer task.
    pub async fn connect(url: &str) -> Result<PostgresStore, PgOpenError> {
        let pool = connect(url, &migrations::STORE).await?;
        let writer = writer::Writer::start(pool.clone());
        Ok(PostgresStore { pool, writer })
    }

    /// Acts on the other nodes' notices about the DPS store for as long as `events` runs
    /// (decision 0031): `engine`'s caches (enrollment groups, CA certificates, linked hubs) are
    /// read again when another node changed them, everything after a lost channel. What
    /// `dps serve` runs beside [`PostgresHubDatabase::hear_other_nodes`].
    pub async fn hear_other_nodes(
        mut events: tokio::sync::broadcast::Receiver<BusEvent>,
        engine: std::sync::Arc<dps_core::Engine>,
    ) {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let change = match events.recv().await {
                Ok(BusEvent::Notice(payload)) => match store_change(&payload) {
                    Some(change) => change,
                    None => continue,
                },
                Ok(BusEvent::Resync) | Err(RecvError::Lagged(_)) => dps_core::engine::StoreChange::Resync,
                Err(RecvError::Closed) => return,
            };
            engine.store_changed(change).await;
        }
    }

    /// What the writer has done since connect.
    pub fn stats(&self) -> StoreStats {
        self.writer.stats()
    }

    /// A pooled connection, or the error a request reports while PostgreSQL is away (the
    /// device is told to retry).
    async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(|e| StoreError::unavailable(describe(&e)))
    }

    /// Rows of (key, doc) that `sql` (SQLite's `?N` form) selects from `table`, decoded.
    async fn collect<T: DeserializeOwned>(
        &self,
        table: Doc,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<T>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(&placeholders(sql)).await.map_err(backend)?;
        let rows = client.query(&stmt, params).await.map_err(backend)?;
        rows.iter()
            .map(|row| {
                let (key, doc): (&str, &str) = (row.try_get(0).map_err(backend)?, row.try_get(1).map_err(backend)?);
                serde_json::from_str(doc).map_err(|e| undecodable(table.name(), key, e))
            })
            .collect()
    }
}

/// A pool of connections to the database at `url`, whose `schema` is brought up to date (safely
/// when several nodes start at once).
async fn connect(url: &str, schema: &migrations::Schema) -> Result<Pool, PgOpenError> {
    let pool = Settings::of(url, "dps")?.pool(MAX_READ_CONNECTIONS)?;
    let mut first = pool.get().await.map_err(PgOpenError::Connect)?;
    let applied = migrations::apply(&mut first, schema).await?;
    tracing::info!(
        schema = schema.version(),
        migrations_applied = applied,
        "opened PostgreSQL database"
    );
    Ok(pool)
}

/// A PostgreSQL failure as the engine sees it: unavailable (the device is told to retry) when
/// the server cannot be reached now, else a failure of the backend.
pub(crate) fn backend(e: tokio_postgres::Error) -> StoreError {
    match is_unavailable(&e) {
        true => StoreError::unavailable(describe(&e)),
        false => StoreError::backend(describe(&e)),
    }
}

/// `e` as an operator reads it: the client's (or the pool's) summary ("db error") and, when the
/// server sent the error behind it, the server's message and SQLSTATE; else the causes behind
/// the summary (a TLS handshake that failed says which certificate check did).
pub(crate) fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(db) = c.downcast_ref::<tokio_postgres::error::DbError>() {
            return format!("PostgreSQL: {e}: {} (SQLSTATE {})", db.message(), db.code().code());
        }
        cause = c.source();
    }
    format!("PostgreSQL: {}", causes(e))
}

/// `e` and every cause behind it, each once ("a: b: c"): the pool's and the client's errors say
/// only what failed, their sources why.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let said = c.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        cause = c.source();
    }
    text
}

/// Whether `e` says the server cannot be reached now rather than that it refused the statement:
/// the connection is closed or failed (I/O), or the server answered with a connection exception
/// (SQLSTATE class 08), is shutting down or starting (57P01-57P03) or has no connection slot
/// left (53300). Such a call may succeed later, on a new connection.
pub(crate) fn is_unavailable(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()) {
        return true;
    }
    e.code().is_some_and(|state| {
        let code = state.code();
        code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
    })
}

/// `sql` with SQLite's `?N` placeholders as PostgreSQL's `$N`. The shared statements
/// ([`crate::documents`]) have no `?` anywhere else.
pub(crate) fn placeholders(sql: &str) -> String {
    sql.replace('?', "$")
}

/// A page size as PostgreSQL's `LIMIT` takes it.
fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

crate::documents::store_over_documents!(PostgresStore;
    async fn put_tpm_challenge(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        challenge: &dps_core::store::StoredTpmChallenge,
        keep: usize,
    ) -> Result<(), StoreError> {
        self.put_challenge(now, challenge, keep).await
    }

    async fn tpm_challenges(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        registration_key: &str,
    ) -> Result<Vec<dps_core::store::StoredTpmChallenge>, StoreError> {
        self.challenges(now, registration_key).await
    }

    async fn spend_tpm_challenge(&self, id: i64) -> Result<bool, StoreError> {
        self.spend_challenge(id).await
    }
);

#[async_trait]
impl Documents for PostgresStore {
    /// Every node of the database writes it.
    fn shared(&self) -> bool {
        true
    }

    async fn write(&self, op: Op) -> Result<(), StoreError> {
        self.writer.write(op).await
    }

    async fn get<T: DeserializeOwned + Send + 'static>(
        &self,
        table: Doc,
        key: String,
    ) -> Result<Option<T>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&placeholders(table.get_sql()))
            .await
            .map_err(backend)?;
        let row = client.query_opt(&stmt, &[&key]).await.map_err(backend)?;
        row.map(|row| {
            let doc: &str = row.try_get(0).map_err(backend)?;
            serde_json::from_str(doc).map_err(|e| undecodable(table.name(), &key, e))
        })
        .transpose()
    }

    async fn list<T: DeserializeOwned + Send + 'static>(
        &self,
        table: Doc,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<T>, StoreError> {
        let (first, next) = table.list_sql();
        let limit = sql_limit(limit);
        match &after {
            None => self.collect(table, first, &[&limit]).await,
            Some(after) => self.collect(table, next, &[&limit, after]).await,
        }
    }

    async fn audit_page(&self, q: crate::documents::AuditQuery) -> Result<Vec<(i64, String)>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(&placeholders(&q.sql())).await.map_err(backend)?;
        let rows = match &q.registration_key {
            Some(key) => {
                client
                    .query(
                        &stmt,
                        &[&q.after, &q.since, &q.until, &q.outcome, &q.kind, &q.limit, key],
                    )
                    .await
            }
            None => {
                client
                    .query(&stmt, &[&q.after, &q.since, &q.until, &q.outcome, &q.kind, &q.limit])
                    .await
            }
        }
        .map_err(backend)?;
        rows.iter()
            .map(|row| Ok((row.try_get(0).map_err(backend)?, row.try_get(1).map_err(backend)?)))
            .collect()
    }

    async fn list_by_group<T: DeserializeOwned + Send + 'static>(
        &self,
        group: String,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<T>, StoreError> {
        let limit = sql_limit(limit);
        match &after {
            None => {
                self.collect(Doc::Registrations, LIST_BY_GROUP.0, &[&limit, &group])
                    .await
            }
            Some(after) => {
                self.collect(Doc::Registrations, LIST_BY_GROUP.1, &[&limit, &group, after])
                    .await
            }
        }
    }
}

/// For tests that need a PostgreSQL database of their own.
pub mod testing {
    /// The variable holding the URL of a database on the test server whose user may create
    /// databases (`scripts/test.sh` sets it from its throwaway cluster).
    pub const URL_VARIABLE: &str = "DPS_TEST_POSTGRES";

    /// The variable holding the path of the CA certificate that issued the test server's TLS
    /// certificate (for `localhost` and `127.0.0.1`; `scripts/pg-test-cluster.sh` makes both).
    pub const CA_VARIABLE: &str = "DPS_TEST_POSTGRES_CA";

    /// The path in [`CA_VARIABLE`]; panics, saying how to run the tests, when it is not set.
    pub fn ca_file() -> String {
        std::env::var(CA_VARIABLE).unwrap_or_else(|_| {
            panic!("{CA_VARIABLE} is not set: run the tests through ./scripts/test.sh, which starts a throwaway PostgreSQL with TLS")
        })
    }

    /// Creates a new, empty database on the test server and returns its URL. Panics, saying how
    /// to run the tests, when [`URL_VARIABLE`] is not set or the server cannot be reached: a
    /// test that needs PostgreSQL fails rather than passes without it.
    pub async fn fresh_database() -> String {
        let admin = std::env::var(URL_VARIABLE).unwrap_or_else(|_| {
            panic!(
                "{URL_VARIABLE} is not set: run the tests through ./scripts/test.sh, which starts a \
                 throwaway PostgreSQL (scripts/pg-test-cluster.sh), or set it to a database URL \
                 whose user may create databases"
            )
        });
        let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connecting to {URL_VARIABLE} ({admin}): {e}"));
        tokio::spawn(connection);
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("creating a test database: {e}"));
        let (base, _) = admin.rsplit_once('/').expect("a URL ending in /database");
        format!("{base}/{name}")
    }
}
