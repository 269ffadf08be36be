//! The DPS store's writes on PostgreSQL: what each [`Op`] does inside the writer's transaction.
//!
//! Several nodes write the same tables at once, so a precondition is checked against a row this
//! transaction has locked (`SELECT … FOR UPDATE`), and a create-only write is an insert that
//! does nothing on conflict (two nodes creating the same enrollment: one wins, the other is told
//! it exists). The outer `Result` is a failed statement (the transaction is lost); the inner one
//! the write's own verdict.

use deadpool_postgres::Transaction;
use dps_core::{StoreError, WriteCondition};
use tokio_postgres::types::ToSql;

use super::placeholders;
use crate::documents::{
    Op, Table, DELETE_INTENT, DELETE_REGISTRATION, INSERT_AUDIT, PRUNE_AUDIT, PRUNE_AUDIT_STEP,
    SELECT_REGISTRATION_ETAG, SPEND_NONCE, SWEEP_NONCES, UPSERT_INTENT, UPSERT_REGISTRATION,
};
use crate::hub_documents::{Arg, Statement};

/// Sets the flag inside the stored document, so nothing else in it can be overwritten.
const MARK_REPROVISION: &str = "UPDATE registrations \
     SET doc = jsonb_set(doc::jsonb, '{reprovisionRequested}', 'true'::jsonb)::text WHERE key = $1";

type Outcome = Result<Result<(), StoreError>, tokio_postgres::Error>;

/// The notice every node hears when a write to `table` at `key` commits, as the nodes cache
/// what it changes (decision 0031): `dps groups` (enrollment groups and CA certificates, which
/// registrations match against), `dps linked` (linked hubs, which allocation picks from) or
/// `dps enrollment {key}` (the engines remember which devices have no individual enrollment);
/// none for credential policies, which every registration that uses one reads afresh.
fn notice_of(table: Table, key: &str) -> Option<String> {
    match table {
        Table::Groups | Table::Certificates => Some("dps groups".into()),
        Table::LinkedHubs => Some("dps linked".into()),
        Table::Enrollments => Some(format!("dps enrollment {key}")),
        Table::CredentialPolicies => None,
        Table::Revocations => Some("dps revocations".into()),
    }
}

/// The change a DPS notice (`payload`) tells of, if it is one ([`notice_of`]).
pub fn store_change(payload: &str) -> Option<dps_core::engine::StoreChange> {
    use dps_core::engine::StoreChange;
    match payload {
        "dps groups" => Some(StoreChange::GroupsOrCertificates),
        "dps linked" => Some(StoreChange::LinkedHubs),
        "dps revocations" => Some(StoreChange::Revocations),
        _ => payload
            .strip_prefix("dps enrollment ")
            .map(|key| StoreChange::Enrollment(key.to_string())),
    }
}

/// Sends the notice of a write to `table` at `key` ([`notice_of`]) in this write's transaction:
/// delivered if, and once, it commits (a write rolled back to its savepoint takes its notice
/// with it).
async fn tell_other_nodes(tx: &Transaction<'_>, table: Table, key: &str) -> Result<(), tokio_postgres::Error> {
    if let Some(notice) = notice_of(table, key) {
        tx.execute(super::hub::NOTIFY, &[&notice]).await?;
    }
    Ok(())
}

async fn execute(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, tokio_postgres::Error> {
    let stmt = tx.prepare_cached(&placeholders(sql)).await?;
    tx.execute(&stmt, params).await
}

/// The stored etag of `key`, locking its row for this transaction: `None` if there is no row,
/// `Some("")` for a row without one (so a create-only write still sees it as existing).
async fn locked_etag(tx: &Transaction<'_>, select: &str, key: &str) -> Result<Option<String>, tokio_postgres::Error> {
    let stmt = tx
        .prepare_cached(&format!("{} FOR UPDATE", placeholders(select)))
        .await?;
    tx.query_opt(&stmt, &[&key])
        .await?
        .map(|row| Ok(row.try_get::<_, Option<String>>(0)?.unwrap_or_default()))
        .transpose()
}

#[async_trait::async_trait]
impl super::writer::Operation for Op {
    type Error = StoreError;

    fn backend(e: String) -> StoreError {
        StoreError::backend(e)
    }

    fn unavailable(e: String) -> StoreError {
        StoreError::unavailable(e)
    }

    /// The registration path's writes: statements known up front, no verdict to read back.
    fn pipelined(&self) -> Option<Vec<Statement<'_>>> {
        Some(match self {
            Op::CommitRegistration {
                key,
                group_key,
                etag,
                doc,
                operation_id,
            } => {
                let mut out: Vec<Statement<'_>> = vec![(
                    UPSERT_REGISTRATION,
                    vec![
                        key.into(),
                        Arg::OptText(group_key.as_deref()),
                        Arg::OptText(etag.as_deref()),
                        doc.into(),
                    ],
                )];
                if let Some(op) = operation_id {
                    out.push((DELETE_INTENT, vec![op.into()]));
                }
                out
            }
            Op::PutIntent { operation_id, doc } => vec![(UPSERT_INTENT, vec![operation_id.into(), doc.into()])],
            Op::DeleteIntent { operation_id } => vec![(DELETE_INTENT, vec![operation_id.into()])],
            Op::AppendAudit { rows } => rows
                .iter()
                .map(|r| -> Statement<'_> {
                    (
                        INSERT_AUDIT,
                        vec![
                            r.at_ms.into(),
                            Arg::Text(r.kind.into()),
                            Arg::OptText(r.registration_key.as_deref()),
                            (&r.outcome).into(),
                            (&r.doc).into(),
                        ],
                    )
                })
                .collect(),
            Op::PruneAudit { before_ms } => vec![(PRUNE_AUDIT, vec![(*before_ms).into(), PRUNE_AUDIT_STEP.into()])],
            _ => return None,
        })
    }

    async fn apply(&self, tx: &Transaction<'_>) -> Outcome {
        match self.pipelined() {
            // The same statements as in a pipeline, one after the other.
            Some(statements) => {
                super::writer::run_in_order(tx, &statements).await?;
                Ok(Ok(()))
            }
            None => apply(tx, self).await,
        }
    }
}

async fn apply(tx: &Transaction<'_>, op: &Op) -> Outcome {
    match op {
        Op::Put {
            table,
            key,
            etag,
            doc,
            cond,
        } => {
            if let Err(e) = cond.check_put(locked_etag(tx, table.select_etag(), key).await?.as_deref()) {
                return Ok(Err(e));
            }
            if *cond == WriteCondition::None {
                // Absent when checked, but another node may be creating it right now.
                let sql = format!(
                    "INSERT INTO {} (key, etag, doc) VALUES ($1, $2, $3) ON CONFLICT (key) DO NOTHING",
                    table.name()
                );
                if execute(tx, &sql, &[key, etag, doc]).await? == 0 {
                    return Ok(Err(StoreError::AlreadyExists));
                }
            } else {
                execute(tx, table.upsert(), &[key, etag, doc]).await?;
            }
            tell_other_nodes(tx, *table, key).await?;
        }
        Op::Delete { table, key, cond } => {
            if let Err(e) = cond.check_delete(locked_etag(tx, table.select_etag(), key).await?.as_deref()) {
                return Ok(Err(e));
            }
            execute(tx, table.delete(), &[key]).await?;
            if *table == Table::Enrollments {
                // An individual enrollment's registration record goes with it (same key).
                execute(tx, DELETE_REGISTRATION, &[key]).await?;
            }
            tell_other_nodes(tx, *table, key).await?;
        }
        Op::DeleteRegistration { key, cond } => {
            if let Err(e) = cond.check_delete(locked_etag(tx, SELECT_REGISTRATION_ETAG, key).await?.as_deref()) {
                return Ok(Err(e));
            }
            execute(tx, DELETE_REGISTRATION, &[key]).await?;
        }
        Op::ChangeRevocations { put, remove } => {
            let no_etag: Option<String> = None;
            for (key, doc) in put {
                execute(tx, Table::Revocations.upsert(), &[key, &no_etag, doc]).await?;
            }
            for key in remove {
                execute(tx, Table::Revocations.delete(), &[key]).await?;
            }
            if let Some(first) = put.first().map(|(k, _)| k).or(remove.first()) {
                tell_other_nodes(tx, Table::Revocations, first).await?;
            }
        }
        Op::RequestReprovision { key } => {
            if execute(tx, MARK_REPROVISION, &[key]).await? == 0 {
                return Ok(Err(StoreError::NotFound));
            }
        }
        Op::SpendNonce {
            nonce,
            expires_ms,
            now_ms,
        } => {
            execute(tx, SWEEP_NONCES, &[now_ms]).await?;
            // The node whose insert adds the nonce spent it; a concurrent one on another node
            // waits for this transaction and then adds nothing.
            if execute(tx, SPEND_NONCE, &[nonce, expires_ms]).await? == 0 {
                return Ok(Err(StoreError::AlreadyExists));
            }
        }
        Op::CommitRegistration { .. }
        | Op::PutIntent { .. }
        | Op::DeleteIntent { .. }
        | Op::AppendAudit { .. }
        | Op::PruneAudit { .. } => {
            unreachable!("run as the statements of Op::pipelined")
        }
        // The SQLite writer's test hooks; the PostgreSQL store's tests do not queue them.
        #[cfg(test)]
        _ => return Ok(Err(StoreError::backend("test hook not supported on PostgreSQL"))),
    }
    Ok(Ok(()))
}
