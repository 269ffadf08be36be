//! Scheduled jobs (IoT Hub's jobs v2, `/jobs/v2/{id}`): a twin update or a direct method applied
//! to every device a query condition selects, at a start time, within a maximum execution time,
//! as `JobClient` (Node) and `IoTHubJobManager` (Python) schedule them
//! (docs/bulk-jobs-wire-facts.md §3).
//!
//! A job is stored before it is acknowledged and its progress as it runs: the job's record (its
//! request, status and statistics) and one row per device it reached (what `SELECT * FROM
//! devices.jobs` reads). After a restart, a job that had not finished is run again over the
//! devices it has no row for, so none is done twice. One task runs each job: it waits for the
//! start time, walks the condition's devices with the hub's own query (so `deviceId` conditions
//! read by key), applies the update or calls the method on each, and records the outcome; a
//! cancel or the deadline stops it between devices. At most [`MAX_ACTIVE_JOBS`] run or wait at
//! once; finished jobs are kept [`JOB_RETENTION`], as IoT Hub keeps its history, and at most
//! [`MAX_KEPT_JOBS`] of them.
//!
//! On a store several nodes share (decision 0031) the stored jobs are what every node answers
//! with, the node that runs the housekeeping runs them (a job created through another node is
//! started there when it hears of it, or within seconds), a cancel through any node is written
//! to the store, and the running node's next write of the job is refused and stops it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dps_proto::model::hub::{
    CloudToDeviceMethod, CloudToDeviceMethodResult, DeviceJobStatistics, JobRequest, JobResponse, Twin, TwinProperties,
};
use dps_proto::query::Query;
use dps_proto::timefmt::format_record;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;

use crate::error::{HubStoreError, JobError, MethodError};
use crate::record::key_of;
use crate::Hub;

/// Most jobs queued or running at once (IoT Hub allows 1 to 10 by tier).
pub const MAX_ACTIVE_JOBS: usize = 10;
/// How long a finished job and its device rows are kept (IoT Hub: 30 days).
pub const JOB_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most jobs kept: beyond it the oldest finished ones go (with their device rows) as new ones
/// are created, so that a stream of jobs cannot grow the hub's memory and store without end.
pub const MAX_KEPT_JOBS: usize = 1000;
/// A job's maximum execution time when its request sets none.
pub const DEFAULT_MAX_EXECUTION: u64 = 3600;
/// Devices one query page of a running job reads.
const JOB_PAGE: usize = 100;

/// `type` of a scheduled job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum JobKind {
    /// A direct method on every device.
    ScheduleDeviceMethod,
    /// A twin update on every device.
    ScheduleUpdateTwin,
}

impl JobKind {
    fn parse(s: &str) -> Option<Self> {
        if s.eq_ignore_ascii_case("scheduleDeviceMethod") {
            Some(JobKind::ScheduleDeviceMethod)
        } else if s.eq_ignore_ascii_case("scheduleUpdateTwin") {
            Some(JobKind::ScheduleUpdateTwin)
        } else {
            None
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::ScheduleDeviceMethod => "scheduleDeviceMethod",
            JobKind::ScheduleUpdateTwin => "scheduleUpdateTwin",
        }
    }
}

/// A job's status (IoT Hub's spelling: `cancelled` with two l).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum JobStatus {
    /// Waiting for its start time.
    Queued,
    /// Reaching its devices.
    Running,
    /// Every device reached (each one succeeded or failed).
    Completed,
    /// Stopped by an error of its own (its deadline passed, the store failed).
    Failed,
    /// Cancelled.
    Cancelled,
}

impl JobStatus {
    fn is_active(self) -> bool {
        matches!(self, JobStatus::Queued | JobStatus::Running)
    }

    fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }
}

/// A stored job: its request, where it stands, and its device counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    /// Job id.
    pub job_id: String,
    /// What it does.
    pub kind: JobKind,
    /// The devices it reaches: a twin query's condition, `*` for all.
    pub query_condition: String,
    /// When it was created.
    pub created_time: DateTime<Utc>,
    /// When it starts.
    pub start_time: DateTime<Utc>,
    /// When it ended.
    #[serde(default)]
    pub end_time: Option<DateTime<Utc>>,
    /// Its deadline, after the start time.
    pub max_execution_time_in_seconds: u64,
    /// The method, for a method job.
    #[serde(default)]
    pub cloud_to_device_method: Option<CloudToDeviceMethod>,
    /// The twin patch (tags, desired properties, etag), for a twin job.
    #[serde(default)]
    pub update_twin: Option<Value>,
    /// Where it stands.
    pub status: JobStatus,
    /// Why it failed.
    #[serde(default)]
    pub failure_reason: Option<String>,
    /// Device counts.
    #[serde(default)]
    pub statistics: DeviceJobStatistics,
}

impl JobRecord {
    /// The registry API's view (`GET /jobs/v2/{id}`).
    pub fn response(&self) -> JobResponse {
        JobResponse {
            job_id: self.job_id.clone(),
            kind: self.kind.as_str().into(),
            query_condition: Some(self.query_condition.clone()),
            created_time: Some(format_record(&self.created_time)),
            start_time: Some(format_record(&self.start_time)),
            end_time: self.end_time.as_ref().map(format_record),
            max_execution_time_in_seconds: Some(self.max_execution_time_in_seconds),
            cloud_to_device_method: self.cloud_to_device_method.clone(),
            update_twin: self.update_twin.clone(),
            status: self.status.as_str().into(),
            failure_reason: self.failure_reason.clone(),
            status_message: None,
            device_job_statistics: Some(self.statistics),
        }
    }
}

/// What a job did on one device: a row of `devices.jobs`, stored in its wire shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceJobRecord {
    /// The device.
    pub device_id: String,
    /// The job.
    pub job_id: String,
    /// The job's type.
    pub job_type: String,
    /// `completed` or `failed` (IoT Hub's per-device spellings).
    pub status: String,
    /// When the job reached the device.
    pub start_time_utc: String,
    /// When it was done with it.
    pub end_time_utc: String,
    /// When the job was created.
    pub created_date_time_utc: String,
    /// When this row last changed.
    pub last_updated_date_time_utc: String,
    /// The device's answer, for a method job.
    pub outcome: Value,
    /// Why it failed on this device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}

impl DeviceJobRecord {
    /// The store's key: the job id, then the device's registry key.
    pub fn key(&self) -> String {
        device_job_key(&self.job_id, &self.device_id)
    }
}

/// The key of a device's row of a job (job ids have no `/`).
pub(crate) fn device_job_key(job_id: &str, device_id: &str) -> String {
    format!("{job_id}/{}", key_of(device_id))
}

/// The jobs a hub knows, and the cancel signals of the active ones.
#[derive(Default)]
pub(crate) struct Jobs {
    records: HashMap<String, JobRecord>,
    cancels: HashMap<String, Arc<Cancel>>,
}

/// A running job's cancel signal.
#[derive(Default)]
pub(crate) struct Cancel {
    flag: AtomicBool,
    wake: Notify,
}

impl Cancel {
    fn is_set(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }
}

/// Job ids: 1 to 128 letters, digits and `- _ . :` (IoT Hub allows printable ASCII without
/// separators; `/` would break the store's keys).
fn validate_job_id(id: &str) -> Result<(), JobError> {
    let ok = !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if ok {
        Ok(())
    } else {
        Err(JobError::Invalid(format!(
            "job id '{id}' must be 1 to 128 letters, digits, '-', '_', '.' or ':'"
        )))
    }
}

/// The twin query a job's condition selects: `*` (or nothing) is every device.
fn device_query(condition: &str) -> String {
    let c = condition.trim();
    if c.is_empty() || c == "*" {
        "SELECT * FROM devices".into()
    } else {
        format!("SELECT * FROM devices WHERE {c}")
    }
}

impl Hub {
    /// `PUT /jobs/v2/{id}`: stores the job (before answering) and starts its task. Refused: a
    /// body naming another job, an unknown type, a type without its method or twin, a condition
    /// that does not parse, an id in use, [`MAX_ACTIVE_JOBS`] jobs already active.
    pub async fn create_job(&self, job_id: &str, request: JobRequest) -> Result<JobResponse, JobError> {
        validate_job_id(job_id)?;
        if !request.job_id.is_empty() && request.job_id != job_id {
            return Err(JobError::Invalid(format!(
                "body jobId '{}' does not match the job id '{job_id}' of the path",
                request.job_id
            )));
        }
        let kind = JobKind::parse(&request.kind).ok_or_else(|| {
            JobError::Invalid(format!(
                "type '{}' is not a job type: scheduleDeviceMethod or scheduleUpdateTwin",
                request.kind
            ))
        })?;
        let condition = request.query_condition.clone().unwrap_or_else(|| "*".into());
        Query::parse(&device_query(&condition), "devices").map_err(JobError::Query)?;
        match kind {
            JobKind::ScheduleDeviceMethod => {
                let m = request
                    .cloud_to_device_method
                    .as_ref()
                    .ok_or_else(|| JobError::Invalid("a scheduleDeviceMethod job needs cloudToDeviceMethod".into()))?;
                if m.method_name.is_empty() || m.method_name.contains(['/', '+', '#']) {
                    return Err(JobError::Invalid(format!("invalid method name '{}'", m.method_name)));
                }
            }
            JobKind::ScheduleUpdateTwin => {
                let twin = request
                    .update_twin
                    .as_ref()
                    .ok_or_else(|| JobError::Invalid("a scheduleUpdateTwin job needs updateTwin".into()))?;
                twin_patch(twin)?;
            }
        }
        self.prune_jobs().await?;
        let now = self.inner.now();
        let start_time = match request.start_time.as_deref().filter(|s| !s.trim().is_empty()) {
            None => now,
            Some(s) => dps_proto::timefmt::parse(s)
                .ok_or_else(|| JobError::Invalid(format!("startTime '{s}' is not an ISO 8601 time")))?,
        };
        let record = JobRecord {
            job_id: job_id.to_string(),
            kind,
            query_condition: condition,
            created_time: now,
            start_time,
            end_time: None,
            max_execution_time_in_seconds: request
                .max_execution_time_in_seconds
                .filter(|s| *s > 0)
                .unwrap_or(DEFAULT_MAX_EXECUTION),
            cloud_to_device_method: request.cloud_to_device_method,
            update_twin: request.update_twin,
            status: JobStatus::Queued,
            failure_reason: None,
            statistics: DeviceJobStatistics::default(),
        };
        if self.inner.store.shared() {
            return self.create_stored_job(record).await;
        }
        let cancel = {
            let mut jobs = self.inner.jobs.lock();
            if jobs.records.contains_key(job_id) {
                return Err(JobError::AlreadyExists {
                    job_id: job_id.to_string(),
                });
            }
            let active = jobs.records.values().filter(|j| j.status.is_active()).count();
            if active >= MAX_ACTIVE_JOBS {
                return Err(JobError::TooManyActive { limit: MAX_ACTIVE_JOBS });
            }
            let cancel = Arc::new(Cancel::default());
            jobs.records.insert(job_id.to_string(), record.clone());
            jobs.cancels.insert(job_id.to_string(), cancel.clone());
            cancel
        };
        if let Err(e) = self.inner.store.put_job(&record).await {
            let mut jobs = self.inner.jobs.lock();
            jobs.records.remove(job_id);
            jobs.cancels.remove(job_id);
            return Err(JobError::Storage(e));
        }
        tracing::info!(job = job_id, kind = kind.as_str(), condition = %record.query_condition, start = %record.start_time, "job scheduled");
        tokio::spawn(self.clone().run_job(record.clone(), cancel));
        Ok(record.response())
    }

    /// [`Hub::create_job`] on a shared store (decision 0031): the stored jobs are the ones every
    /// node answers with, and the node that runs the housekeeping runs them (it hears of the
    /// new one, or finds it within seconds). Two nodes creating one id at once may both
    /// succeed, the later record winning.
    async fn create_stored_job(&self, record: JobRecord) -> Result<JobResponse, JobError> {
        let jobs = self.inner.store.list_jobs().await?;
        if jobs.iter().any(|j| j.job_id == record.job_id) {
            return Err(JobError::AlreadyExists { job_id: record.job_id });
        }
        if jobs.iter().filter(|j| j.status.is_active()).count() >= MAX_ACTIVE_JOBS {
            return Err(JobError::TooManyActive { limit: MAX_ACTIVE_JOBS });
        }
        self.inner.store.put_job(&record).await?;
        tracing::info!(job = %record.job_id, kind = record.kind.as_str(), condition = %record.query_condition, start = %record.start_time, "job scheduled");
        self.run_stored_jobs();
        Ok(record.response())
    }

    /// The job with this id: on a shared store the stored one (any node may have created or
    /// changed it), else this hub's own.
    async fn job_record(&self, job_id: &str) -> Result<Option<JobRecord>, HubStoreError> {
        if self.inner.store.shared() {
            return self.inner.store.get_job(job_id).await;
        }
        Ok(self.inner.jobs.lock().records.get(job_id).cloned())
    }

    /// Every job, as [`Hub::job_record`] finds them.
    async fn job_records(&self) -> Result<Vec<JobRecord>, HubStoreError> {
        if self.inner.store.shared() {
            return self.inner.store.list_jobs().await;
        }
        Ok(self.inner.jobs.lock().records.values().cloned().collect())
    }

    /// `GET /jobs/v2/{id}`.
    pub async fn get_job(&self, job_id: &str) -> Result<JobResponse, JobError> {
        self.job_record(job_id)
            .await?
            .map(|j| j.response())
            .ok_or_else(|| JobError::NotFound {
                job_id: job_id.to_string(),
            })
    }

    /// `POST /jobs/v2/{id}/cancel`: a queued job is cancelled at once, a running one stops before
    /// its next device; a finished one is answered as it is.
    ///
    /// On a shared store a job another node runs is cancelled in the store: that node's next
    /// write of the job is refused ([`HubStore::put_job_if_active`]), which stops it, and it
    /// hears of the cancel at once besides.
    ///
    /// [`HubStore::put_job_if_active`]: crate::store::HubStore::put_job_if_active
    pub async fn cancel_job(&self, job_id: &str) -> Result<JobResponse, JobError> {
        let not_found = || JobError::NotFound {
            job_id: job_id.to_string(),
        };
        let record = self.job_record(job_id).await?.ok_or_else(not_found)?;
        if record.status.is_active() {
            let here = self.stop_job(job_id);
            let elsewhere = !here && self.inner.store.shared();
            if record.status == JobStatus::Queued || elsewhere {
                // It reached no device (its task, woken, ends without more), or it runs on
                // another node: cancelled now.
                let mut job = record.clone();
                job.status = JobStatus::Cancelled;
                job.end_time = Some(self.inner.now());
                self.inner.jobs.lock().records.insert(job.job_id.clone(), job.clone());
                self.inner.store.put_job(&job).await?;
            }
            // The task records the cancellation (at once when queued, after the device it is on
            // when running); wait a little so the answer usually shows it.
            for _ in 0..50 {
                let active = self.job_record(job_id).await?.is_some_and(|j| j.status.is_active());
                if !active {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.get_job(job_id).await
    }

    /// `GET /jobs/v2/query`: the jobs, newest first, optionally of one type and status (both
    /// compared without case: C# sends `ScheduleUpdateTwin`).
    pub async fn list_jobs(&self, kind: Option<&str>, status: Option<&str>) -> Result<Vec<JobResponse>, JobError> {
        let mut out: Vec<JobRecord> = self
            .job_records()
            .await?
            .into_iter()
            .filter(|j| kind.is_none_or(|k| j.kind.as_str().eq_ignore_ascii_case(k)))
            .filter(|j| status.is_none_or(|s| j.status.as_str().eq_ignore_ascii_case(s)))
            .collect();
        out.sort_by(|a, b| b.created_time.cmp(&a.created_time).then(a.job_id.cmp(&b.job_id)));
        Ok(out.iter().map(JobRecord::response).collect())
    }

    /// Removes finished jobs past [`JOB_RETENTION`], and the oldest finished ones beyond
    /// [`MAX_KEPT_JOBS`] (leaving room for one more), from the store and then from memory.
    async fn prune_jobs(&self) -> Result<(), JobError> {
        let now = self.inner.now();
        let keep = chrono::Duration::from_std(JOB_RETENTION).unwrap_or(chrono::Duration::MAX);
        let doomed: Vec<String> = {
            let jobs = self.job_records().await?;
            let mut finished: Vec<&JobRecord> = jobs.iter().filter(|j| !j.status.is_active()).collect();
            finished.sort_by_key(|j| (j.end_time.unwrap_or(j.created_time), j.job_id.clone()));
            let excess = (jobs.len() + 1).saturating_sub(MAX_KEPT_JOBS);
            finished
                .iter()
                .enumerate()
                .filter(|(i, j)| *i < excess || j.end_time.is_some_and(|end| end + keep < now))
                .map(|(_, j)| j.job_id.clone())
                .collect()
        };
        for id in doomed {
            self.inner.store.delete_job(&id).await?;
            self.inner.jobs.lock().records.remove(&id);
        }
        Ok(())
    }

    /// Loads the stored jobs at open (dropping those past [`JOB_RETENTION`]) and starts the
    /// tasks of the unfinished ones.
    pub(crate) async fn load_jobs(&self) -> Result<(), HubStoreError> {
        if self.inner.store.shared() {
            // The node that runs the housekeeping runs the stored jobs (decision 0031).
            self.run_stored_jobs();
            return Ok(());
        }
        let now = self.inner.now();
        let keep = chrono::Duration::from_std(JOB_RETENTION).unwrap_or(chrono::Duration::MAX);
        let mut resume = Vec::new();
        for record in self.inner.store.list_jobs().await? {
            if record.end_time.is_some_and(|end| end + keep < now) {
                self.inner.store.delete_job(&record.job_id).await?;
                continue;
            }
            let mut jobs = self.inner.jobs.lock();
            if record.status.is_active() {
                let cancel = Arc::new(Cancel::default());
                jobs.cancels.insert(record.job_id.clone(), cancel.clone());
                resume.push((record.clone(), cancel));
            }
            jobs.records.insert(record.job_id.clone(), record);
        }
        tracing::info!(resumed = resume.len(), "jobs loaded");
        for (record, cancel) in resume {
            tokio::spawn(self.clone().run_job(record, cancel));
        }
        Ok(())
    }

    /// A job's task (see the module docs).
    async fn run_job(self, mut job: JobRecord, cancel: Arc<Cancel>) {
        let now = self.inner.now();
        if job.start_time > now {
            let wait = (job.start_time - now).to_std().unwrap_or_default();
            // Registered before the flag is read, so a cancel in between is not missed.
            let notified = cancel.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !cancel.is_set() {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = notified => {}
                }
            }
        }
        let result = self.reach_devices(&mut job, &cancel).await;
        job.end_time = Some(self.inner.now());
        job.status = match result {
            _ if cancel.is_set() => JobStatus::Cancelled,
            Ok(()) => JobStatus::Completed,
            Err(reason) => {
                job.failure_reason = Some(reason);
                JobStatus::Failed
            }
        };
        job.statistics.running_count = 0;
        job.statistics.pending_count = 0;
        tracing::info!(job = %job.job_id, status = job.status.as_str(), devices = job.statistics.device_count, failed = job.statistics.failed_count, "job ended");
        self.save_job(&job).await;
        self.inner.jobs.lock().cancels.remove(&job.job_id);
    }

    /// Reaches every device of the job's condition it has not reached yet; `Err` with the
    /// reason when it cannot go on (deadline, store).
    async fn reach_devices(&self, job: &mut JobRecord, cancel: &Cancel) -> Result<(), String> {
        if cancel.is_set() {
            return Ok(());
        }
        job.status = JobStatus::Running;
        self.save_job(job).await;
        let deadline = job.start_time
            + chrono::Duration::seconds(i64::try_from(job.max_execution_time_in_seconds).unwrap_or(i64::MAX / 1000));
        let done = self
            .reached(&job.job_id)
            .await
            .map_err(|e| format!("the hub's store failed: {e}"))?;
        let query = device_query(&job.query_condition);
        let mut continuation: Option<String> = None;
        loop {
            let page = self
                .query(&query, continuation.as_deref(), JOB_PAGE)
                .await
                .map_err(|e| format!("the job's devices cannot be read: {e}"))?;
            let mut rows = Vec::new();
            for twin in &page.items {
                let Some(device_id) = twin.get("deviceId").and_then(Value::as_str) else {
                    continue;
                };
                if done.contains(&key_of(device_id)) {
                    continue;
                }
                if cancel.is_set() {
                    break;
                }
                if self.inner.now() > deadline {
                    self.store_rows(job, &rows).await?;
                    return Err(format!(
                        "the job's maximum execution time ({} s) ran out",
                        job.max_execution_time_in_seconds
                    ));
                }
                rows.push(self.reach(job, device_id).await);
            }
            self.store_rows(job, &rows).await?;
            continuation = page.continuation;
            if continuation.is_none() || cancel.is_set() {
                return Ok(());
            }
        }
    }

    /// Stores a page's device rows and the job's counts after them.
    async fn store_rows(&self, job: &mut JobRecord, rows: &[DeviceJobRecord]) -> Result<(), String> {
        if rows.is_empty() {
            return Ok(());
        }
        for r in rows {
            job.statistics.device_count += 1;
            if r.status == "completed" {
                job.statistics.succeeded_count += 1;
            } else {
                job.statistics.failed_count += 1;
            }
        }
        self.inner
            .store
            .put_device_jobs(rows)
            .await
            .map_err(|e| format!("the hub's store failed: {e}"))?;
        self.save_job(job).await;
        Ok(())
    }

    /// Applies the job to one device.
    async fn reach(&self, job: &JobRecord, device_id: &str) -> DeviceJobRecord {
        let started = self.inner.now();
        let (outcome, error) = match job.kind {
            JobKind::ScheduleDeviceMethod => {
                let m = job.cloud_to_device_method.clone().unwrap_or_default();
                let timeout = Duration::from_secs(m.response_timeout_in_seconds.unwrap_or(30).clamp(5, 300));
                match self.invoke_method(device_id, &m.method_name, m.payload, timeout).await {
                    Ok(CloudToDeviceMethodResult { status, payload }) => (
                        serde_json::json!({"deviceMethodResponse": {"status": status, "payload": payload}}),
                        None,
                    ),
                    Err(e) => (
                        serde_json::json!({"deviceMethodResponse": null}),
                        Some(method_failure(&e)),
                    ),
                }
            }
            JobKind::ScheduleUpdateTwin => {
                let result = match job.update_twin.as_ref().map(twin_patch) {
                    Some(Ok((patch, etag))) => self
                        .patch_twin(device_id, patch, etag.as_deref())
                        .await
                        .map(drop)
                        .map_err(|e| serde_json::json!({"code": dps_proto::codes::hub_error_name(e.code()).unwrap_or("ServerError"), "description": e.to_string()})),
                    _ => Err(serde_json::json!({"code": "ArgumentInvalid", "description": "the job has no valid updateTwin"})),
                };
                (serde_json::json!({"deviceMethodResponse": null}), result.err())
            }
        };
        let ended = format_record(&self.inner.now());
        DeviceJobRecord {
            device_id: device_id.to_string(),
            job_id: job.job_id.clone(),
            job_type: job.kind.as_str().into(),
            status: if error.is_none() { "completed" } else { "failed" }.into(),
            start_time_utc: format_record(&started),
            end_time_utc: ended.clone(),
            created_date_time_utc: format_record(&job.created_time),
            last_updated_date_time_utc: ended,
            outcome,
            error,
        }
    }

    /// The registry keys of the devices a job has rows for (a job resumed after a restart skips
    /// them).
    async fn reached(&self, job_id: &str) -> Result<HashSet<String>, HubStoreError> {
        let prefix = format!("{job_id}/");
        let mut after = Some(prefix.clone());
        let mut keys = HashSet::new();
        loop {
            let rows = self.inner.store.list_device_jobs(after.as_deref(), 1000).await?;
            let Some(last) = rows.last().map(DeviceJobRecord::key) else {
                return Ok(keys);
            };
            for r in &rows {
                let key = r.key();
                match key.strip_prefix(&prefix) {
                    Some(device) => {
                        keys.insert(device.to_string());
                    }
                    None => return Ok(keys),
                }
            }
            after = Some(last);
        }
    }

    /// Writes the job's record (memory and store); a store failure is logged, and the job goes on
    /// (its device rows are its truth on a restart). On a shared store a job cancelled through
    /// another node is not written over: its task is told to stop instead.
    async fn save_job(&self, job: &JobRecord) {
        self.inner.jobs.lock().records.insert(job.job_id.clone(), job.clone());
        match self.inner.store.put_job_if_active(job).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(job = %job.job_id, "job cancelled through another node");
                self.stop_job(&job.job_id);
            }
            Err(e) => tracing::warn!(job = %job.job_id, error = %e, "job record not stored"),
        }
    }

    /// Tells the task of a job running (or waiting) here to stop before its next device;
    /// whether one runs here.
    fn stop_job(&self, job_id: &str) -> bool {
        let Some(cancel) = self.inner.jobs.lock().cancels.get(job_id).cloned() else {
            return false;
        };
        cancel.flag.store(true, Ordering::Release);
        cancel.wake.notify_waiters();
        true
    }

    /// On a shared store, on the node that runs the housekeeping: starts the task of every
    /// stored active job that runs nowhere here — new ones, and those of a node that stopped
    /// (they resume over the devices they have no row for). In the background.
    pub(crate) fn run_stored_jobs(&self) {
        if !self.inner.store.shared() || !self.inner.runs_housekeeping() {
            return;
        }
        let hub = self.clone();
        tokio::spawn(async move {
            let stored = match hub.inner.store.list_jobs().await {
                Ok(stored) => stored,
                Err(e) => return tracing::warn!(error = %e, "stored jobs not read"),
            };
            for record in stored.into_iter().filter(|j| j.status.is_active()) {
                let cancel = {
                    let mut jobs = hub.inner.jobs.lock();
                    if jobs.cancels.contains_key(&record.job_id) {
                        continue;
                    }
                    let cancel = Arc::new(Cancel::default());
                    jobs.cancels.insert(record.job_id.clone(), cancel.clone());
                    jobs.records.insert(record.job_id.clone(), record.clone());
                    cancel
                };
                tracing::info!(job = %record.job_id, status = record.status.as_str(), "running a stored job");
                tokio::spawn(hub.clone().run_job(record, cancel));
            }
        });
    }

    /// Another node wrote or deleted job `job_id` ([`crate::PeerChange::Job`]): a job running
    /// here stops if it is no longer active in the store; a new one is started here if this
    /// node runs them.
    pub(crate) async fn job_changed(&self, job_id: &str) {
        if !self.inner.jobs.lock().cancels.contains_key(job_id) {
            return self.run_stored_jobs();
        }
        match self.inner.store.get_job(job_id).await {
            Ok(stored) if stored.as_ref().is_none_or(|j| !j.status.is_active()) => {
                self.stop_job(job_id);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(job = job_id, error = %e, "changed job not read; its next write finds out"),
        }
    }
}

/// A method job's failure on one device, as `devices.jobs` shows it.
fn method_failure(e: &MethodError) -> Value {
    let code = match e {
        MethodError::DeviceNotOnline { .. } => "DeviceNotOnline",
        MethodError::DeviceNotFound { .. } => "DeviceNotFound",
        MethodError::Timeout { .. } => "GatewayTimeout",
        _ => "ServerError",
    };
    serde_json::json!({"code": code, "description": e.to_string()})
}

/// The patch a twin job applies (tags and desired properties; `deviceId`, `version` and reported
/// properties are ignored, as the SDKs send them) and the etag it is conditional on (`*`, `null`
/// or none: unconditional).
fn twin_patch(update: &Value) -> Result<(Twin, Option<String>), JobError> {
    let obj = update
        .as_object()
        .ok_or_else(|| JobError::Invalid("updateTwin must be a JSON object".into()))?;
    let section = |v: Option<&Value>, name: &str| -> Result<Option<serde_json::Map<String, Value>>, JobError> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m.clone())),
            Some(_) => Err(JobError::Invalid(format!("updateTwin.{name} must be a JSON object"))),
        }
    };
    let tags = section(obj.get("tags"), "tags")?;
    let desired = section(
        obj.get("properties").and_then(|p| p.get("desired")),
        "properties.desired",
    )?;
    let etag = obj
        .get("etag")
        .and_then(Value::as_str)
        .map(|e| e.trim().trim_matches('"').to_string())
        .filter(|e| !e.is_empty() && e != "*")
        .map(|e| format!("\"{e}\""));
    Ok((
        Twin {
            tags,
            properties: Some(TwinProperties {
                desired,
                reported: None,
            }),
            ..Default::default()
        },
        etag,
    ))
}
