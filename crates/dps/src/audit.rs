//! `dps audit list|export`: the audit trail (every registration attempt, every change made
//! through the service and hub APIs) through the service API's `GET /audit`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use dps_core::audit::AuditEntry;

use crate::output;
use crate::remote::DpsTarget;

/// `dps audit …`
#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Entries matching the filters, oldest first (a table, or `--json`).
    List(AuditList),
    /// Every entry matching the filters, as JSON lines (one object per line), to stdout or a
    /// file.
    Export(AuditExport),
}

/// Which entries.
#[derive(Args, Debug)]
pub struct AuditFilterArgs {
    /// From this time: RFC 3339 (`2026-12-05T10:00:00Z`) or an age (`30s`, `15m`, `2h`, `7d`).
    #[arg(long)]
    pub since: Option<String>,
    /// Before this time (same forms as --since).
    #[arg(long)]
    pub until: Option<String>,
    /// Of this registration id.
    #[arg(long, visible_alias = "rid")]
    pub registration_id: Option<String>,
    /// With this outcome: a registration's (`assigned`, `failed`, `disabled`, `unauthorized`,
    /// `not_found`, `bad_request`, `unavailable`, `error`) or a change's (`succeeded`, `failed`).
    #[arg(long)]
    pub outcome: Option<String>,
    /// `registration` attempts or `change`s.
    #[arg(long)]
    pub kind: Option<String>,
}

/// `dps audit list`
#[derive(Args, Debug)]
pub struct AuditList {
    #[command(flatten)]
    pub filter: AuditFilterArgs,
    /// At most this many entries [default: 100].
    #[arg(long, default_value_t = 100)]
    pub top: usize,
    #[command(flatten)]
    pub target: DpsTarget,
}

/// `dps audit export`
#[derive(Args, Debug)]
pub struct AuditExport {
    #[command(flatten)]
    pub filter: AuditFilterArgs,
    /// Write to this file instead of stdout.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub target: DpsTarget,
}

/// Most entries a page asks for (the service's limit).
const PAGE: usize = 1000;

impl AuditFilterArgs {
    /// The query parameters, times made absolute (`now` minus an age).
    fn query(&self, now: DateTime<Utc>) -> Result<Vec<(&'static str, String)>> {
        let mut q = Vec::new();
        if let Some(t) = &self.since {
            q.push(("since", time(t, now).context("--since")?.to_rfc3339()));
        }
        if let Some(t) = &self.until {
            q.push(("until", time(t, now).context("--until")?.to_rfc3339()));
        }
        for (name, value) in [
            ("registrationId", &self.registration_id),
            ("outcome", &self.outcome),
            ("kind", &self.kind),
        ] {
            if let Some(v) = value {
                q.push((name, v.clone()));
            }
        }
        Ok(q)
    }
}

/// An RFC 3339 time, or an age before `now` (`90s`, `15m`, `2h`, `7d`).
fn time(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let n: i64 = number
        .parse()
        .with_context(|| format!("'{text}' is neither an RFC 3339 time nor an age such as 15m, 2h or 7d"))?;
    let age = match unit {
        "s" => chrono::Duration::seconds(n),
        "m" => chrono::Duration::minutes(n),
        "h" => chrono::Duration::hours(n),
        "d" => chrono::Duration::days(n),
        _ => bail!("'{text}' is neither an RFC 3339 time nor an age such as 15m, 2h or 7d"),
    };
    Ok(now - age)
}

/// Runs `dps audit …`.
pub async fn run(cmd: AuditCommand) -> Result<()> {
    match cmd {
        AuditCommand::List(a) => {
            if !(1..=PAGE).contains(&a.top) {
                bail!("--top must be from 1 to {PAGE}");
            }
            let query = a.filter.query(Utc::now())?;
            let top = a.top.to_string();
            let mut params: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
            params.push(("top", &top));
            let (page, _) = a
                .target
                .client()?
                .query_audit(&params, None)
                .await
                .context("cannot read the audit trail")?;
            if a.target.server.json {
                output::json(&serde_json::Value::Array(page));
                return Ok(());
            }
            let entries: Vec<AuditEntry> = page
                .into_iter()
                .map(serde_json::from_value)
                .collect::<Result<_, _>>()
                .context("the service answered entries this build cannot read")?;
            let rows: Vec<Vec<String>> = entries.iter().map(row).collect();
            output::table(&["TIME", "KIND", "OUTCOME", "WHO", "WHAT", "DETAIL"], &rows);
        }
        AuditCommand::Export(a) => {
            let query = a.filter.query(Utc::now())?;
            let top = PAGE.to_string();
            let mut params: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
            params.push(("top", &top));
            let client = a.target.client()?;
            let mut out: Box<dyn Write> = match &a.output {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let mut continuation = None;
            let mut written = 0usize;
            loop {
                let (page, next) = client
                    .query_audit(&params, continuation.as_deref())
                    .await
                    .context("cannot read the audit trail")?;
                for entry in &page {
                    serde_json::to_writer(&mut out, entry)?;
                    out.write_all(b"\n")?;
                }
                written += page.len();
                match next {
                    Some(next) if !page.is_empty() => continuation = Some(next),
                    _ => break,
                }
            }
            out.flush()?;
            if let Some(path) = &a.output {
                eprintln!("wrote {written} entries to {}", path.display());
            }
        }
    }
    Ok(())
}

/// A table row: when, what kind, how it ended, who (the device, or the policy), what (the
/// operation, or the transport and attestation), and the error or the assignment.
fn row(e: &AuditEntry) -> Vec<String> {
    use dps_core::audit::AuditKind;
    let time = e.time.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    let (who, what) = match e.kind {
        AuditKind::Registration => (
            e.registration_id.clone().unwrap_or_default(),
            [e.transport.as_deref(), e.attestation.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" "),
        ),
        AuditKind::Change => (
            e.policy.clone().unwrap_or_else(|| "-".into()),
            e.operation.clone().unwrap_or_default(),
        ),
    };
    let detail = match (&e.error_code, &e.assigned_hub) {
        (Some(code), _) => format!("{code} {}", e.error_message.as_deref().unwrap_or_default()),
        (None, Some(hub)) => format!("{} on {hub}", e.device_id.as_deref().unwrap_or_default()),
        (None, None) => e.etag.clone().map(|t| format!("etag {t}")).unwrap_or_default(),
    };
    vec![time, e.kind.as_str().to_string(), e.outcome.clone(), who, what, detail]
}
