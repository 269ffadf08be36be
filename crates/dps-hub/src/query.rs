//! `POST /devices/query`: the IoT Hub query language ([`dps_proto::query`]) over the registry's
//! twins (`FROM devices`), module twins (`FROM devices.modules`) and the rows of the devices
//! scheduled jobs reached (`FROM devices.jobs`, whose paths may be written in full:
//! `devices.jobs.jobId`).
//!
//! The store is read in key order, a batch at a time, and each twin is judged as the registry API
//! shows it (with its live connection state when the hub holds it). What the condition pins is
//! pushed down to the store: `deviceId = …` or `deviceId IN [...]` reads just those devices (and
//! their modules), `STARTSWITH(deviceId, …)` reads just the key range of that prefix, and
//! `tags.x = '…'` (or `IN` strings) reads the devices of the store's string tag index. A page ends
//! when it is full; its continuation is the key of its last twin, so the next page resumes right
//! after it whatever the condition. Aggregates (`COUNT()`, `GROUP BY`) read every match and
//! answer one page.

use dps_proto::query::{Query, QueryError, Select};
use serde_json::Value;

use crate::error::RegistryError;
use crate::record::{key_of, DeviceRecord};
use crate::Hub;

/// Items per page when the caller asks for none (Azure's default for queries).
const DEFAULT_PAGE: usize = 100;
/// Most items of one page (Azure's maximum), also the most a `TOP` answers.
const MAX_PAGE: usize = 1000;
/// Records read from the store per batch while scanning.
const SCAN_BATCH: usize = 500;

/// One page of a query's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryPage {
    /// Twins (`SELECT *`) or projected rows, in key order; aggregate rows.
    pub items: Vec<Value>,
    /// Resumes the query after this page (`x-ms-continuation`); `None` on the last page.
    pub continuation: Option<String>,
    /// `x-ms-item-type`, in the .NET casing the C# SDK parses it with: `Twin` for whole twins,
    /// `DeviceJob` for whole rows of `devices.jobs`, `Raw` for projections and aggregates.
    pub item_type: &'static str,
}

/// What a query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Collection {
    Devices,
    Modules,
    Jobs,
}

/// Where a scan reads its records from.
enum Source {
    /// The devices whose string tag at a dotted path is one of these values, from the store's
    /// tag index, merged in key order.
    Tag { path: String, values: Vec<String> },
    /// Every record of the collection in key order, from a key on, while keys start with a
    /// prefix (`""`: all).
    Range { prefix: String },
    /// Only the records of these devices (lower-cased keys, sorted, deduplicated).
    Devices(Vec<String>),
}

impl Hub {
    /// `POST /devices/query`: one page of the answer to `text` (IoT Hub's query language;
    /// empty means `SELECT * FROM devices`). `page` 0 means 100; `continuation` is what the
    /// previous page returned. A query that does not parse, or names another collection, is
    /// [`RegistryError::Query`] (400), naming the character where it went wrong.
    pub async fn query(&self, text: &str, continuation: Option<&str>, page: usize) -> Result<QueryPage, RegistryError> {
        let query = Query::parse(text, "devices")?;
        let collection = match query.from.to_ascii_lowercase().as_str() {
            "devices" => Collection::Devices,
            "devices.modules" => Collection::Modules,
            "devices.jobs" => Collection::Jobs,
            other => {
                return Err(RegistryError::Query(QueryError {
                    position: query.from_at,
                    message: format!(
                        "'{other}' is not a collection this hub queries: devices, devices.modules or devices.jobs"
                    ),
                }))
            }
        };
        // A tag pinned to strings is read from the tag index (devices only: modules' tags are
        // not indexed); values of other types fall back to a scan.
        let tag = query
            .pinned_under("tags")
            .filter(|(_, values)| collection == Collection::Devices && values.iter().all(Value::is_string));
        let pinned_ids = query
            .pinned_values("deviceId")
            .filter(|_| collection != Collection::Jobs);
        let source = match (pinned_ids, tag) {
            (Some(values), _) => {
                let mut keys: Vec<String> = values.iter().filter_map(Value::as_str).map(key_of).collect();
                keys.sort();
                keys.dedup();
                Source::Devices(keys)
            }
            (None, Some((path, values))) => {
                let mut values: Vec<String> = values.iter().filter_map(Value::as_str).map(str::to_string).collect();
                values.sort();
                values.dedup();
                Source::Tag {
                    path: path.join("."),
                    values,
                }
            }
            (None, None) => Source::Range {
                prefix: query
                    .required_prefix("deviceId")
                    .filter(|_| collection != Collection::Jobs)
                    .map(|p| key_of(&p))
                    .unwrap_or_default(),
            },
        };
        let mut scan = Scanner {
            hub: self,
            collection,
            source,
            after: continuation
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string),
            done: false,
        };
        if query.is_aggregate() {
            let mut aggregator = query.aggregator();
            while let Some(batch) = scan.next_batch().await? {
                for (_, doc) in batch.iter().filter(|(_, doc)| query.matches(doc)) {
                    aggregator.add(doc);
                }
            }
            return Ok(QueryPage {
                items: aggregator.finish(),
                continuation: None,
                item_type: "Raw",
            });
        }
        let (size, capped) = match query.top {
            Some(top) => (usize::try_from(top).unwrap_or(MAX_PAGE).min(MAX_PAGE), true),
            None => (if page == 0 { DEFAULT_PAGE } else { page.min(MAX_PAGE) }, false),
        };
        let item_type = match (&query.select, collection) {
            (Select::All, Collection::Jobs) => "DeviceJob",
            (Select::All, _) => "Twin",
            _ => "Raw",
        };
        let mut items = Vec::new();
        let mut last_key = None;
        if size > 0 {
            while let Some(batch) = scan.next_batch().await? {
                for (key, doc) in batch {
                    if items.len() == size {
                        // Another record follows the full page: it ends at the last twin kept.
                        return Ok(QueryPage {
                            items,
                            continuation: last_key.filter(|_| !capped),
                            item_type,
                        });
                    }
                    if query.matches(&doc) {
                        items.push(output(query.project(&doc), collection));
                        last_key = Some(key);
                    }
                }
            }
        }
        Ok(QueryPage {
            items,
            continuation: None,
            item_type,
        })
    }
}

/// Reads a collection's records in key order, batch by batch, as (key, twin JSON).
struct Scanner<'h> {
    hub: &'h Hub,
    collection: Collection,
    source: Source,
    /// The last key read (or the continuation's).
    after: Option<String>,
    done: bool,
}

impl Scanner<'_> {
    async fn next_batch(&mut self) -> Result<Option<Vec<(String, Value)>>, RegistryError> {
        if self.done {
            return Ok(None);
        }
        let store = &self.hub.inner.store;
        let records: Vec<DeviceRecord> = match &self.source {
            Source::Tag { path, values } => {
                // Each value's devices come in key order: read a batch of each, and keep the
                // first batch of their union.
                let mut all = Vec::new();
                let mut exhausted = true;
                for value in values {
                    let batch = store
                        .find_by_tag(path, value, self.after.as_deref(), SCAN_BATCH)
                        .await?;
                    exhausted &= batch.len() < SCAN_BATCH;
                    all.extend(batch);
                }
                all.sort_by_key(DeviceRecord::key);
                all.dedup_by_key(|r| r.key());
                if all.len() > SCAN_BATCH {
                    all.truncate(SCAN_BATCH);
                    exhausted = false;
                }
                self.done = exhausted;
                if let Some(last) = all.last() {
                    self.after = Some(last.key());
                }
                all
            }
            Source::Devices(keys) => {
                // A handful of point reads, done in one batch.
                self.done = true;
                let mut out = Vec::new();
                for device in keys {
                    match self.collection {
                        Collection::Devices => out.extend(store.get_device(device).await?),
                        Collection::Modules | Collection::Jobs => out.extend(store.list_modules(device).await?),
                    }
                }
                let after = self.after.clone();
                out.retain(|r| after.as_ref().is_none_or(|a| r.key() > *a));
                out
            }
            Source::Range { prefix } => {
                // Keys with the prefix sort together, from the prefix itself on: read from the
                // later of where the last read ended and just below the prefix.
                let start = match (self.after.clone(), before(prefix)) {
                    (Some(after), Some(floor)) => Some(after.max(floor)),
                    (after, floor) => after.or(floor),
                };
                let mut batch = match self.collection {
                    Collection::Devices => store.list_devices(start.as_deref(), SCAN_BATCH).await?,
                    Collection::Modules => store.list_all_modules(start.as_deref(), SCAN_BATCH).await?,
                    Collection::Jobs => return self.job_rows(start).await,
                };
                if batch.len() < SCAN_BATCH {
                    self.done = true;
                }
                // Keys with the prefix sort together: the first key past the prefix without it
                // ends the range (keys before it are read only when no start below it exists).
                if let Some(past) = batch.iter().position(|r| {
                    let key = r.key();
                    !key.starts_with(prefix.as_str()) && key.as_str() > prefix.as_str()
                }) {
                    batch.truncate(past);
                    self.done = true;
                }
                if let Some(last) = batch.last() {
                    self.after = Some(last.key());
                }
                batch.retain(|r| r.key().starts_with(prefix.as_str()));
                batch
            }
        };
        if let (Some(last), Source::Devices(_)) = (records.last(), &self.source) {
            self.after = Some(last.key());
        }
        let mut lives: Vec<_> = records
            .iter()
            .map(|rec| {
                self.hub
                    .inner
                    .held(&rec.key())
                    .map(|s| s.live_view())
                    .unwrap_or_default()
            })
            .collect();
        self.hub
            .with_presence_elsewhere(records.iter().map(DeviceRecord::key).zip(lives.iter_mut()))
            .await;
        let docs = records
            .iter()
            .zip(&lives)
            .map(|(rec, live)| (rec.key(), serde_json::to_value(rec.twin_view(live)).unwrap_or_default()))
            .collect();
        Ok(Some(docs))
    }
}

impl Scanner<'_> {
    /// A batch of `devices.jobs` rows: each row, also under `devices.jobs` so that conditions
    /// may name its fields in full, as IoT Hub's examples do.
    async fn job_rows(&mut self, start: Option<String>) -> Result<Option<Vec<(String, Value)>>, RegistryError> {
        let rows = self
            .hub
            .inner
            .store
            .list_device_jobs(start.as_deref(), SCAN_BATCH)
            .await?;
        if rows.len() < SCAN_BATCH {
            self.done = true;
        }
        if let Some(last) = rows.last() {
            self.after = Some(last.key());
        }
        Ok(Some(
            rows.into_iter()
                .map(|r| {
                    let key = r.key();
                    let mut doc = serde_json::to_value(&r).unwrap_or_default();
                    let nested = serde_json::json!({ "jobs": doc.clone() });
                    if let Some(o) = doc.as_object_mut() {
                        o.insert("devices".into(), nested);
                    }
                    (key, doc)
                })
                .collect(),
        ))
    }
}

/// What a matching document answers: a `devices.jobs` row without the copy of itself that its
/// conditions read.
fn output(mut item: Value, collection: Collection) -> Value {
    if collection == Collection::Jobs {
        if let Some(o) = item.as_object_mut() {
            o.remove("devices");
        }
    }
    item
}

/// The greatest string below every string that starts with `prefix` that a store's "keys after"
/// read can start from (`None`: from the first key).
fn before(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    let last = chars.pop()?;
    let lower = (last as u32).checked_sub(1).and_then(char::from_u32)?;
    chars.push(lower);
    chars.push(char::MAX);
    Some(chars.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::before;

    #[test]
    fn the_key_before_a_prefix() {
        assert_eq!(before(""), None);
        assert_eq!(before("a\0"), None, "found by the query fuzz target: no char below NUL");
        assert_eq!(before("\u{e000}"), None, "nor below the surrogates");
        let b = before("test").unwrap();
        assert!(b.as_str() < "test" && b.as_str() > "tess" && b.as_str() > "tesszzz");
    }
}
