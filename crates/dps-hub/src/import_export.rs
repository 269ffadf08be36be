//! Import and export jobs (`/jobs/create`) as a store several nodes share keeps them
//! (decision 0033): the node a job was created through runs it and writes its progress; any node
//! answers for it and may cancel it. The jobs themselves run in the server, beside the blob
//! store they read and write; the hub only carries them to its store.

use chrono::{DateTime, Duration, Utc};
use dps_proto::model::hub::JobProperties;

use crate::store::HubStoreError;
use crate::Hub;

/// How often the node running a job writes it, at least, while it runs.
pub const IMPORT_EXPORT_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a running job may go unwritten before it counts as abandoned: its node stopped
/// (it no longer blocks the next job, and reads show it failed).
pub fn import_export_stale_after() -> Duration {
    Duration::seconds(60)
}

/// Most import and export jobs a shared store keeps per hub (the oldest go first).
pub const MAX_KEPT_IMPORT_EXPORT_JOBS: usize = 100;

/// Whether a job in this status may still change (IoT Hub's `enqueued` and `running`).
pub fn is_active(status: &str) -> bool {
    matches!(status, "enqueued" | "running")
}

/// An import or export job as a shared store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredImportExportJob {
    /// What `GET /jobs/{id}` answers, as last written.
    pub properties: JobProperties,
    /// When it was last written: the running node's heartbeat.
    pub updated: DateTime<Utc>,
}

impl StoredImportExportJob {
    /// The job as a reader at `now` should see it: a job still active whose node has not
    /// written it for [`import_export_stale_after`] failed when its node stopped.
    pub fn as_seen(self, now: DateTime<Utc>) -> JobProperties {
        let mut job = self.properties;
        if is_active(&job.status) && self.updated < now - import_export_stale_after() {
            job.status = "failed".into();
            job.end_time_utc = Some(dps_proto::timefmt::format_record(&self.updated));
            job.failure_reason = Some("the node running the job stopped before it finished".into());
        }
        job
    }
}

impl Hub {
    /// Whether other nodes share this hub's store (then import and export jobs live in it).
    pub fn store_is_shared(&self) -> bool {
        self.inner.store.shared()
    }

    /// On a shared store: records the new job `job` unless another is active (IoT Hub runs one
    /// at a time); whether it was recorded.
    pub async fn create_import_export_job(&self, job: &JobProperties) -> Result<bool, HubStoreError> {
        let now = Utc::now();
        self.inner
            .store
            .create_import_export_job(job, now, now - import_export_stale_after())
            .await
    }

    /// On a shared store: writes `job` again if the stored one is still active; `false` when it
    /// is not (cancelled through some node: its runner stops).
    pub async fn update_import_export_job(&self, job: &JobProperties) -> Result<bool, HubStoreError> {
        self.inner.store.update_import_export_job(job, Utc::now()).await
    }

    /// On a shared store: every kept job, as readers should see it now, newest first.
    pub async fn import_export_jobs(&self) -> Result<Vec<JobProperties>, HubStoreError> {
        let now = Utc::now();
        let mut jobs: Vec<JobProperties> = self
            .inner
            .store
            .import_export_jobs()
            .await?
            .into_iter()
            .map(|j| j.as_seen(now))
            .collect();
        jobs.sort_by(|a, b| b.start_time_utc.cmp(&a.start_time_utc).then(a.job_id.cmp(&b.job_id)));
        Ok(jobs)
    }
}
