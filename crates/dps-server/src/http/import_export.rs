//! Import and export jobs (`POST /jobs/create`, `GET /jobs`, `GET/DELETE /jobs/{id}`), as
//! `Registry.exportDevicesToBlob`/`importDevicesFromBlob` (Node) and
//! `IoTHubJobManager.create_import_export_job` (Python) run them (docs/bulk-jobs-wire-facts.md §2).
//!
//! In place of a storage account, a container URI names a directory of the server's own blob
//! store: `https://{this hub's host}/{container}` (a SAS in the URI is not needed: the job is
//! authorized by the hub policy that created it) is `dps-data/blobs/{container}`. An export writes
//! `devices.txt` (or `outputBlobName`) there, one `ExportImportDevice` JSON line per device and
//! module, CRLF-separated as IoT Hub writes it; an import reads `devices.txt` (or
//! `inputBlobName`) from the input container, applies each line as a bulk registry item
//! (`createOrUpdate` when it names no mode) and writes the lines that failed to
//! `importErrors.log` in the output container. One import or export runs at a time, as in IoT
//! Hub; jobs are kept in memory (a restart forgets them, and one running then is not resumed),
//! or, when nodes share a PostgreSQL store, in it (see [`Jobs`]).

use std::collections::HashMap;

use chrono::Utc;
use dps_hub::Hub;
use dps_proto::codes;
use dps_proto::model::hub::{ExportImportDevice, JobProperties};
use dps_proto::timefmt::format_record;
use parking_lot::Mutex;
use tokio::io::AsyncReadExt;

use crate::ApiError;

/// Devices read per export page.
const EXPORT_PAGE: usize = 1000;
/// Most import or export jobs remembered (the oldest finished ones go first).
const KEPT: usize = 100;
/// The blob an import reads and an export writes when the request names none.
const DEVICES_BLOB: &str = "devices.txt";
/// Where an import writes the lines it could not apply.
const ERRORS_BLOB: &str = "importErrors.log";

/// How often the node running a job on a shared store writes its progress there, at most.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The import and export jobs of one hub. On a store only this node uses, they live here (a
/// restart forgets them). On a store several nodes share (decision 0033) they live in the
/// store, where any node answers for them and may cancel them; the node a job was created
/// through runs it, keeps its copy here meanwhile, and writes it to the store at least every
/// [`dps_hub::IMPORT_EXPORT_HEARTBEAT`] (a job no longer written counts as abandoned).
#[derive(Default)]
pub struct Jobs {
    jobs: Mutex<HashMap<String, JobProperties>>,
    /// When this node last wrote each job it runs to the shared store.
    written: Mutex<HashMap<String, std::time::Instant>>,
}

impl Jobs {
    fn update(&self, id: &str, f: impl FnOnce(&mut JobProperties)) {
        if let Some(j) = self.jobs.lock().get_mut(id) {
            f(j);
        }
    }

    fn is_cancelled(&self, id: &str) -> bool {
        self.jobs.lock().get(id).is_some_and(|j| j.status == "cancelled")
    }

    /// [`update`](Self::update), then, on a shared store, writes the job there when it was
    /// not written for [`PROGRESS_EVERY`].
    async fn progress(&self, hub: &Hub, id: &str, f: impl FnOnce(&mut JobProperties)) {
        self.update(id, f);
        let due = self
            .written
            .lock()
            .get(id)
            .is_none_or(|at| at.elapsed() >= PROGRESS_EVERY);
        if due {
            self.persist(hub, id).await;
        }
    }

    /// On a shared store: writes this node's copy of job `id` there. When the stored job is no
    /// longer active (cancelled through some node), the copy is marked cancelled, which stops
    /// the runner. Whether the store took the write (or needs none).
    async fn persist(&self, hub: &Hub, id: &str) -> bool {
        if !hub.store_is_shared() {
            return true;
        }
        let Some(job) = self.jobs.lock().get(id).cloned() else {
            return true;
        };
        match hub.update_import_export_job(&job).await {
            Ok(true) => {}
            Ok(false) => self.update(id, |j| j.status = "cancelled".into()),
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "import/export job's progress not written; trying again");
                return false;
            }
        }
        self.written.lock().insert(id.to_string(), std::time::Instant::now());
        true
    }

    /// `GET /jobs`: every remembered job, newest first.
    pub(crate) async fn list(&self, hub: &Hub) -> Result<Vec<JobProperties>, ApiError> {
        if hub.store_is_shared() {
            return hub.import_export_jobs().await.map_err(store_failure);
        }
        let mut all: Vec<JobProperties> = self.jobs.lock().values().cloned().collect();
        all.sort_by(|a, b| b.start_time_utc.cmp(&a.start_time_utc).then(a.job_id.cmp(&b.job_id)));
        Ok(all)
    }

    /// `GET /jobs/{id}`.
    pub(crate) async fn get(&self, hub: &Hub, id: &str) -> Result<JobProperties, ApiError> {
        if hub.store_is_shared() {
            let jobs = hub.import_export_jobs().await.map_err(store_failure)?;
            return jobs.into_iter().find(|j| j.job_id == id).ok_or_else(|| not_found(id));
        }
        self.jobs.lock().get(id).cloned().ok_or_else(|| not_found(id))
    }

    /// `DELETE /jobs/{id}`: an enqueued or running job is cancelled (an import stops before its
    /// next line; what it applied stays); a finished one is answered as it is.
    pub(crate) async fn cancel(&self, hub: &Hub, id: &str) -> Result<JobProperties, ApiError> {
        let cancelled = |job: &mut JobProperties| {
            if dps_hub::import_export_is_active(&job.status) {
                job.status = "cancelled".into();
                job.end_time_utc = Some(format_record(&Utc::now()));
            }
        };
        if !hub.store_is_shared() {
            let mut jobs = self.jobs.lock();
            let job = jobs.get_mut(id).ok_or_else(|| not_found(id))?;
            cancelled(job);
            return Ok(job.clone());
        }
        let mut job = self.get(hub, id).await?;
        if !dps_hub::import_export_is_active(&job.status) {
            return Ok(job);
        }
        cancelled(&mut job);
        if hub.update_import_export_job(&job).await.map_err(store_failure)? {
            // When this node runs it, its runner stops now; another node's, at its next write.
            self.update(id, cancelled);
            return Ok(job);
        }
        // It finished meanwhile.
        self.get(hub, id).await
    }

    /// `POST /jobs/create`: checks the request, records the job and starts it.
    pub(crate) async fn create(
        self: &std::sync::Arc<Self>,
        hub: &Hub,
        blobs: Option<&dps_store::BlobStore>,
        host_names: &[String],
        mut request: JobProperties,
    ) -> Result<JobProperties, ApiError> {
        let blobs = blobs
            .cloned()
            .ok_or_else(|| ApiError::new(codes::HUB_ARGUMENT_INVALID, "this server keeps no blobs".to_string()))?;
        let kind = request.kind.to_ascii_lowercase();
        let container = |uri: &Option<String>, what: &str| -> Result<String, ApiError> {
            let uri = uri
                .as_deref()
                .ok_or_else(|| ApiError::invalid(format!("an {kind} job needs {what}")))?;
            container_of(uri, host_names).map_err(|why| ApiError::invalid(format!("{what} '{uri}': {why}")))
        };
        let (input, output) = match kind.as_str() {
            "export" => (
                None,
                container(&request.output_blob_container_uri, "outputBlobContainerUri")?,
            ),
            "import" => (
                Some(container(&request.input_blob_container_uri, "inputBlobContainerUri")?),
                container(&request.output_blob_container_uri, "outputBlobContainerUri")?,
            ),
            other => {
                return Err(ApiError::invalid(format!(
                    "job type '{other}' is not one this endpoint runs: import or export (scheduled jobs are /jobs/v2)"
                )))
            }
        };
        let id = uuid::Uuid::new_v4().to_string();
        request.job_id = id.clone();
        request.kind = kind.clone();
        request.status = "enqueued".into();
        request.progress = Some(0);
        request.start_time_utc = Some(format_record(&Utc::now()));
        request.end_time_utc = None;
        request.failure_reason = None;
        let busy = || {
            ApiError::new(
                codes::TOO_MANY_ACTIVE_JOBS,
                "an import or export job is running already; IoT Hub runs one at a time".to_string(),
            )
        };
        let shared = hub.store_is_shared();
        if shared && !hub.create_import_export_job(&request).await.map_err(store_failure)? {
            return Err(busy());
        }
        {
            let mut jobs = self.jobs.lock();
            if !shared {
                if jobs.values().any(|j| dps_hub::import_export_is_active(&j.status)) {
                    return Err(busy());
                }
                if jobs.len() >= KEPT {
                    let oldest = jobs
                        .values()
                        .min_by(|a, b| a.start_time_utc.cmp(&b.start_time_utc))
                        .map(|j| j.job_id.clone());
                    if let Some(oldest) = oldest {
                        jobs.remove(&oldest);
                    }
                }
            }
            jobs.insert(id.clone(), request.clone());
        }
        tracing::info!(job = %id, kind = %kind, container = %output, "import/export job created");
        let (jobs, hub, answer) = (self.clone(), hub.clone(), request.clone());
        tokio::spawn(async move {
            jobs.update(&id, |j| j.status = "running".into());
            jobs.persist(&hub, &id).await;
            let work = async {
                match &input {
                    None => export(&jobs, &id, &hub, &blobs, &output, &request).await,
                    Some(input) => import(&jobs, &id, &hub, &blobs, input, &output, &request).await,
                }
            };
            tokio::pin!(work);
            // The heartbeat goes on through long steps (a large blob written whole).
            let mut beat = tokio::time::interval(dps_hub::IMPORT_EXPORT_HEARTBEAT);
            beat.tick().await;
            let result = loop {
                tokio::select! {
                    result = &mut work => break result,
                    _ = beat.tick() => {
                        jobs.persist(&hub, &id).await;
                    }
                }
            };
            jobs.update(&id, |j| {
                if j.status == "cancelled" {
                    return;
                }
                j.end_time_utc = Some(format_record(&Utc::now()));
                match result {
                    Ok(()) => {
                        j.status = "completed".into();
                        j.progress = Some(100);
                    }
                    Err(why) => {
                        tracing::warn!(job = %j.job_id, error = %why, "import/export job failed");
                        j.status = "failed".into();
                        j.failure_reason = Some(why);
                    }
                }
            });
            if shared {
                // The outcome, written while the database may be away for a moment; the copy
                // here is not needed after that.
                for _ in 0..FINAL_WRITE_ATTEMPTS {
                    if jobs.persist(&hub, &id).await {
                        break;
                    }
                    tokio::time::sleep(PROGRESS_EVERY).await;
                }
                jobs.jobs.lock().remove(&id);
                jobs.written.lock().remove(&id);
            }
        });
        Ok(answer)
    }
}

/// How many times a finished job's outcome is written to a shared store before it is left to
/// go stale there (then it reads as failed).
const FINAL_WRITE_ATTEMPTS: usize = 30;

/// A shared store that failed to keep or read import and export jobs (PostgreSQL away).
fn store_failure(e: dps_hub::store::HubStoreError) -> ApiError {
    ApiError::new(codes::SERVICE_UNAVAILABLE, format!("import/export jobs: {e}"))
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(codes::JOB_NOT_FOUND, format!("no import or export job '{id}'"))
}

/// The container a URI of this server names: `https://{one of its host names}[:port]/{container}`
/// (a query, such as a SAS, is ignored); why not otherwise. Public for the fuzz targets.
pub fn container_of(uri: &str, host_names: &[String]) -> Result<String, String> {
    let parsed: http::Uri = uri.parse().map_err(|e| format!("not a URI ({e})"))?;
    let host = parsed.host().unwrap_or_default();
    if !host_names.iter().any(|h| h.eq_ignore_ascii_case(host)) {
        return Err(format!(
            "the blob container must be on this server ({}), not '{host}'",
            host_names.join(", ")
        ));
    }
    let path = parsed.path().trim_matches('/');
    if !dps_proto::blob_storage::valid_container_name(path) {
        return Err(format!(
            "'{path}' is not a container name (3 to 63 lower-case letters, digits and '-')"
        ));
    }
    Ok(path.to_string())
}

/// Writes every device and module as a `devices.txt` line.
async fn export(
    jobs: &Jobs,
    id: &str,
    hub: &Hub,
    blobs: &dps_store::BlobStore,
    container: &str,
    request: &JobProperties,
) -> Result<(), String> {
    let exclude = request.exclude_keys_in_export.unwrap_or(false);
    let mut write = blobs.begin().await.map_err(|e| e.to_string())?;
    let mut after: Option<String> = None;
    loop {
        if jobs.is_cancelled(id) {
            return Ok(());
        }
        let (lines, next) = hub
            .export_page(after.as_deref(), EXPORT_PAGE, exclude)
            .await
            .map_err(|e| e.to_string())?;
        let mut text = String::new();
        for line in &lines {
            text.push_str(&serde_json::to_string(line).map_err(|e| e.to_string())?);
            text.push_str("\r\n");
        }
        write.write(text.as_bytes()).await.map_err(|e| e.to_string())?;
        // Nothing to count for an export; the write tells whether it was cancelled meanwhile.
        jobs.progress(hub, id, |_| {}).await;
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let name = request.output_blob_name.as_deref().unwrap_or(DEVICES_BLOB);
    blobs
        .put_blob(write, container, name, false)
        .await
        .map_err(|e| format!("cannot write {container}/{name}: {e}"))?;
    Ok(())
}

/// Applies every line of the input blob; the ones that fail go to `importErrors.log`.
async fn import(
    jobs: &Jobs,
    id: &str,
    hub: &Hub,
    blobs: &dps_store::BlobStore,
    input: &str,
    output: &str,
    request: &JobProperties,
) -> Result<(), String> {
    let name = request.input_blob_name.as_deref().unwrap_or(DEVICES_BLOB);
    let (props, reader) = blobs
        .open_blob(input, name)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("the input blob {input}/{name} does not exist"))?;
    let mut text = String::new();
    tokio_util::io::StreamReader::new(reader.into_stream(0, props.size))
        .read_to_string(&mut text)
        .await
        .map_err(|e| format!("cannot read {input}/{name} as UTF-8 text: {e}"))?;
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let mut errors = String::new();
    for (n, line) in lines.iter().enumerate() {
        if jobs.is_cancelled(id) {
            break;
        }
        let outcome = match serde_json::from_str::<ExportImportDevice>(line) {
            Ok(item) => hub.import_item(item).await.map_err(|e| (e.code(), e.to_string())),
            Err(e) => Err((
                codes::HUB_ARGUMENT_INVALID,
                format!("line {} is not a device: {e}", n + 1),
            )),
        };
        if let Err((code, status)) = outcome {
            let entry = serde_json::json!({"errorCode": code, "errorStatus": status, "line": n + 1});
            errors.push_str(&entry.to_string());
            errors.push_str("\r\n");
        }
        let progress = ((n + 1) * 100 / lines.len().max(1)).min(99) as i32;
        jobs.progress(hub, id, |j| j.progress = Some(progress)).await;
    }
    let mut write = blobs.begin().await.map_err(|e| e.to_string())?;
    write.write(errors.as_bytes()).await.map_err(|e| e.to_string())?;
    blobs
        .put_blob(write, output, ERRORS_BLOB, false)
        .await
        .map_err(|e| format!("cannot write {output}/{ERRORS_BLOB}: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::container_of;

    #[test]
    fn containers_are_this_servers_own() {
        let hosts = ["hub.example.test".to_string()];
        assert_eq!(
            container_of("https://HUB.example.test/exports?sv=x&sig=y", &hosts).as_deref(),
            Ok("exports")
        );
        assert_eq!(
            container_of("https://hub.example.test:8443/abc/", &hosts).as_deref(),
            Ok("abc")
        );
        assert!(container_of("https://elsewhere.blob.core.windows.net/exports", &hosts)
            .unwrap_err()
            .contains("must be on this server"));
        for bad in [
            "https://hub.example.test/",
            "https://hub.example.test/Caps",
            "https://hub.example.test/a/b",
            "https://hub.example.test/ab",
            "not a uri",
        ] {
            assert!(container_of(bad, &hosts).is_err(), "{bad}");
        }
    }
}
