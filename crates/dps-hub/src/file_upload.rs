//! File upload (IoT Hub's "upload files from a device"): a device asks for a blob to write
//! (`POST /devices/{id}/files`) and gets a short-lived SAS for it on the local blob endpoint;
//! it uploads with the Azure Storage protocol, then reports the outcome
//! (`POST /devices/{id}/files/notifications`). A successful upload becomes a file upload
//! notification the service reads on `/messages/serviceBound/filenotifications`, stored before
//! it is readable and kept until completed (an [`Outbox`]).
//!
//! The hub decides names, limits and notifications; it never touches the blob files (the server
//! stores them and tells the hub what was written).

use std::time::Duration;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use dps_proto::blob_storage::{sign_sas, valid_blob_name};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::auth::DeviceIdentity;
use crate::c2d::QueueChange;
use crate::error::FileUploadError;
use crate::outbox::{Batch, Outgoing};
use crate::record::key_of;
use crate::store::HubStoreError;
use crate::Hub;

/// How long a file upload's SAS, and the upload itself, stay valid (Azure's default
/// `storageEndpoints.$default.ttlAsIso8601`, one hour).
pub const FILE_UPLOAD_TTL: Duration = Duration::from_secs(3600);

/// Most uploads one device may have in progress (Azure's limit).
pub const MAX_ACTIVE_UPLOADS: usize = 10;

/// How long a file upload notification waits to be read (Azure's default, one hour).
pub const FILE_NOTIFICATION_TTL: Duration = Duration::from_secs(3600);

/// How long a notification handed to the service stays locked (Azure's default, one minute).
pub const FILE_NOTIFICATION_LOCK: Duration = Duration::from_secs(60);

/// Most file upload notifications kept unread.
pub(crate) const FILE_NOTIFICATION_LIMIT: usize = 100_000;

/// Where devices upload: the blob endpoint and the storage account that signs for it.
#[derive(Clone, PartialEq, Eq)]
pub struct FileUploadConfig {
    /// The blob endpoint's host as devices reach it (`host` or `host:port`); the SDKs build
    /// `https://{host}/{container}/{blob}{sas}`.
    pub host: String,
    /// The container uploads go to.
    pub container: String,
    /// The storage account name the SAS is signed for.
    pub account: String,
    /// The storage account key (raw bytes) that signs and checks the SAS.
    pub key: Vec<u8>,
    /// Whether successful uploads become notifications for the service (Azure's
    /// `enableFileUploadNotifications`).
    pub notifications: bool,
}

impl std::fmt::Debug for FileUploadConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileUploadConfig")
            .field("host", &self.host)
            .field("container", &self.container)
            .field("account", &self.account)
            .field("notifications", &self.notifications)
            .finish_non_exhaustive()
    }
}

/// What `POST /devices/{id}/files` answers (IoT Hub's field names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileUploadSas {
    /// Names the upload in the device's notification.
    pub correlation_id: String,
    /// The blob endpoint's host.
    pub host_name: String,
    /// The container.
    pub container_name: String,
    /// `{deviceId}/{the name asked for}`.
    pub blob_name: String,
    /// `?sv=…&sr=b&sig=…&se=…&sp=rw`.
    pub sas_token: String,
}

/// An upload in progress: in this node's memory, or in a store several nodes share
/// ([`HubStore::put_upload`]), so that a device may report it through another node than the one
/// that started it (decision 0031).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveUpload {
    /// The correlation id the device reports it by.
    pub correlation_id: String,
    /// The device's key (lower-cased id): only it may report the upload.
    pub device_key: String,
    /// `{deviceId}/{name}`.
    pub blob_name: String,
    /// When its SAS, and so the upload, expires.
    pub expires: DateTime<Utc>,
}

/// What the blob endpoint holds for an upload that succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadedBlob {
    /// Its size.
    pub size: u64,
    /// When it was last written.
    pub last_modified: DateTime<Utc>,
}

/// A file upload notification, as stored and as the service reads it ([`FileNotification::to_wire`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileNotification {
    /// Key in the store, hub-wide order.
    pub seq: u64,
    /// The device that uploaded.
    pub device_id: String,
    /// `https://{host}/{container}/{blob}` (no SAS).
    pub blob_uri: String,
    /// `{deviceId}/{name}`.
    pub blob_name: String,
    /// When the blob was last written.
    pub last_updated_time: DateTime<Utc>,
    /// Its size.
    pub blob_size_in_bytes: u64,
    /// When the notification was queued.
    pub enqueued_time_utc: DateTime<Utc>,
}

impl FileNotification {
    /// The body IoT Hub sends: `lastUpdatedTime` with a `+00:00` offset, `enqueuedTimeUtc` with
    /// seven fractional digits and `Z` (the Java service SDK parses both).
    pub fn to_wire(&self) -> serde_json::Value {
        serde_json::json!({
            "deviceId": self.device_id,
            "blobUri": self.blob_uri,
            "blobName": self.blob_name,
            "lastUpdatedTime": self.last_updated_time.to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
            "blobSizeInBytes": self.blob_size_in_bytes,
            "enqueuedTimeUtc": dps_proto::timefmt::format_record(&self.enqueued_time_utc),
        })
    }
}

impl Outgoing for FileNotification {
    const WHAT: &'static str = "file upload notifications";
    const KIND: crate::outbox::OutboxKind = crate::outbox::OutboxKind::FileNotifications;

    fn seq(&self) -> u64 {
        self.seq
    }

    fn enqueued_at(&self) -> DateTime<Utc> {
        self.enqueued_time_utc
    }

    fn deleted(seqs: Vec<u64>) -> QueueChange {
        QueueChange {
            delete_file_notifications: seqs,
            ..QueueChange::default()
        }
    }
}

/// Uploads in progress, by correlation id.
pub(crate) type ActiveUploads = DashMap<String, ActiveUpload>;

impl Hub {
    /// Starts an upload of `blob_name` for the device: a SAS for `{deviceId}/{blob_name}` on the
    /// blob endpoint, valid for [`FILE_UPLOAD_TTL`].
    pub async fn create_file_upload(
        &self,
        identity: &DeviceIdentity,
        blob_name: &str,
    ) -> Result<FileUploadSas, FileUploadError> {
        let config = self.inner.file_upload.get().ok_or(FileUploadError::NotConfigured)?;
        let device_id = identity.device_id();
        let full = format!("{device_id}/{blob_name}");
        if blob_name.is_empty() || !valid_blob_name(&full) {
            return Err(FileUploadError::InvalidBlobName {
                blob_name: blob_name.to_string(),
            });
        }
        let now = self.inner.now();
        let expires = now + chrono::Duration::from_std(FILE_UPLOAD_TTL).unwrap_or(chrono::Duration::MAX);
        let upload = ActiveUpload {
            correlation_id: uuid::Uuid::new_v4().simple().to_string(),
            device_key: key_of(device_id),
            blob_name: full.clone(),
            expires,
        };
        let too_many = FileUploadError::TooManyActive {
            limit: MAX_ACTIVE_UPLOADS,
        };
        if self.inner.store.shared() {
            let admitted = self
                .inner
                .store
                .put_upload(&upload, now, MAX_ACTIVE_UPLOADS)
                .await
                .map_err(FileUploadError::Storage)?;
            if !admitted {
                return Err(too_many);
            }
        } else {
            let uploads = &self.inner.uploads;
            let active = uploads
                .iter()
                .filter(|u| u.device_key == upload.device_key && u.expires > now)
                .count();
            if active >= MAX_ACTIVE_UPLOADS {
                return Err(too_many);
            }
            uploads.insert(upload.correlation_id.clone(), upload.clone());
        }
        tracing::debug!(device = %device_id, blob = %full, "file upload started");
        Ok(FileUploadSas {
            correlation_id: upload.correlation_id,
            host_name: config.host.clone(),
            container_name: config.container.clone(),
            sas_token: sign_sas(&config.key, &config.account, &config.container, &full, "rw", expires),
            blob_name: full,
        })
    }

    /// Ends the device's upload `correlation_id`, returning its blob name: the upload is over
    /// whatever the device reports. Unknown (or another device's) and expired uploads are
    /// refused, as Azure refuses them.
    pub async fn finish_file_upload(
        &self,
        identity: &DeviceIdentity,
        correlation_id: &str,
    ) -> Result<String, FileUploadError> {
        let key = key_of(identity.device_id());
        let upload = match self.inner.store.shared() {
            true => self
                .inner
                .store
                .take_upload(&key, correlation_id)
                .await
                .map_err(FileUploadError::Storage)?,
            false => self
                .inner
                .uploads
                .remove_if(correlation_id, |_, u| u.device_key == key)
                .map(|(_, u)| u),
        };
        let upload = upload.ok_or_else(|| FileUploadError::UnknownCorrelationId {
            correlation_id: correlation_id.to_string(),
        })?;
        if upload.expires <= self.inner.now() {
            return Err(FileUploadError::ExpiredCorrelationId {
                correlation_id: correlation_id.to_string(),
            });
        }
        Ok(upload.blob_name)
    }

    /// Queues the notification of a successful upload (when notifications are on): stored, then
    /// readable by the service. Returns whether one was queued.
    pub async fn notify_file_uploaded(
        &self,
        identity: &DeviceIdentity,
        blob_name: &str,
        blob: UploadedBlob,
    ) -> Result<bool, HubStoreError> {
        let Some(config) = self.inner.file_upload.get().filter(|c| c.notifications) else {
            return Ok(false);
        };
        let record = FileNotification {
            seq: self.inner.new_queue_seq().await?,
            device_id: identity.device_id().to_string(),
            blob_uri: format!("https://{}/{}/{blob_name}", config.host, config.container),
            blob_name: blob_name.to_string(),
            last_updated_time: blob.last_modified,
            blob_size_in_bytes: blob.size,
            enqueued_time_utc: self.inner.now(),
        };
        let change = QueueChange {
            put_file_notifications: vec![record.clone()],
            ..QueueChange::default()
        };
        self.inner.store.update_queues(&change).await?;
        let dropped = self.inner.file_notifications.push(vec![record]);
        self.forget(FileNotification::deleted(dropped));
        Ok(true)
    }

    /// The blob endpoint's settings, if file upload is configured.
    pub fn file_upload_config(&self) -> Option<&FileUploadConfig> {
        self.inner.file_upload.get()
    }

    /// Configures file upload on a hub opened without it (the server does once it knows the
    /// blob endpoint's port); `false`, changing nothing, when it was configured already.
    pub fn set_file_upload(&self, config: FileUploadConfig) -> bool {
        self.inner.file_upload.set(config).is_ok()
    }

    /// Locks the next file upload notification for [`FILE_NOTIFICATION_LOCK`] and hands it out
    /// (IoT Hub sends one per message); `None` when there is none.
    pub async fn receive_file_notification(&self) -> Result<Option<Batch<FileNotification>>, HubStoreError> {
        self.inner.file_notifications.take(1, self.inner.now()).await
    }

    /// Completes a notification: deleted, durably when this returns. `false` if no
    /// notification holds the lock.
    pub async fn complete_file_notification(&self, lock_token: &str) -> Result<bool, HubStoreError> {
        self.inner
            .file_notifications
            .complete(lock_token, self.inner.now())
            .await
    }

    /// Puts a notification back to be read again; `false` if none holds the lock.
    pub async fn abandon_file_notification(&self, lock_token: &str) -> Result<bool, HubStoreError> {
        self.inner
            .file_notifications
            .release(lock_token, self.inner.now())
            .await
    }

    /// Changes whenever a file upload notification may have become readable.
    pub fn file_notification_signal(&self) -> watch::Receiver<u64> {
        self.inner.file_notifications.signal()
    }

    /// File upload notifications not completed yet that this node holds (none on a shared
    /// store: see [`Hub::feedback_len`]).
    pub fn file_notifications_len(&self) -> usize {
        self.inner.file_notifications.len()
    }

    /// Reads the unread notifications back from the store (at open).
    pub(crate) async fn load_file_notifications(&self) -> Result<u64, HubStoreError> {
        if self.inner.store.shared() {
            // Read from the store's rows when the service asks (decision 0031).
            return Ok(0);
        }
        let stored = self.inner.store.load_file_notifications().await?;
        let last = stored.iter().map(|n| n.seq).max().unwrap_or(0);
        let dropped = self.inner.file_notifications.push(stored);
        self.forget(FileNotification::deleted(dropped));
        Ok(last)
    }

    /// Drops long-expired uploads and expired notifications, and releases notifications whose lock ran out
    /// (the hub's sweep).
    pub(crate) fn sweep_file_uploads(&self, now: DateTime<Utc>) {
        // Expired uploads are kept one more time to live, so that a late report is told it
        // expired (400016) rather than unknown; a device can so hold at most twice its limit.
        let grace = chrono::Duration::from_std(FILE_UPLOAD_TTL).unwrap_or(chrono::Duration::MAX);
        self.inner.uploads.retain(|_, u| u.expires + grace > now);
        if self.inner.store.shared()
            && self.inner.runs_housekeeping()
            && crate::queues::due(&self.inner.last_upload_expiry, now, 60_000)
        {
            let store = self.inner.store.clone();
            tokio::spawn(async move {
                if let Err(e) = store.expire_uploads(now - grace).await {
                    tracing::warn!(error = %e, "expired file uploads not dropped");
                }
            });
        }
        let dropped = self.inner.file_notifications.expire(now);
        self.forget(FileNotification::deleted(dropped));
    }
}
