//! An external Azure Storage account for file upload (`--file-upload-storage`), as an IoT hub's
//! `storageEndpoints.$default`: devices get the account's blob host and a SAS the server signs
//! with the account key (the hub's `FileUploadConfig`), upload to the account directly, and the
//! server talks to the account only to learn what was uploaded: the blob's size and time for
//! the file upload notification (Get Blob Properties), and the listing and download behind
//! `dps hub file` (List Blobs, Get Blob).
//!
//! Every request the server makes carries a short-lived service SAS it signs for itself with
//! the account key (`sp=r` for one blob, `sp=rl` for the container), so the one signing scheme
//! serves devices and the server alike and the account needs nothing but its key. Requests have
//! a connect and a total deadline; a listing is read page by page up to the caller's bound.

use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use dps_proto::blob_storage::{self as storage, ListedBlob, StorageAccountString};
use futures_util::Stream;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// How long the SAS the server signs for its own requests stays valid.
const OWN_SAS_TTL: chrono::Duration = chrono::Duration::minutes(5);

/// Connecting to the account.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A whole request, except a download's body (which streams as the reader takes it).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Blobs asked for per List Blobs page (Storage's maximum).
const PAGE: usize = 5000;

/// Largest List Blobs answer read (a page of 5,000 blobs is about 5 MB of XML).
const MAX_LIST_BYTES: usize = 16 * 1024 * 1024;

/// What a blob path segment escapes: all but RFC 3986's unreserved characters (the `/` between
/// segments is kept).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Why the storage account could not answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageAccountError {
    /// The HTTPS client could not be built: the CA file is unreadable or holds no certificate,
    /// or the system has no CAs and none was given.
    #[error("storage account TLS: {0}")]
    Tls(String),
    /// The account could not be reached, or did not answer within the deadline.
    #[error("storage account {endpoint} did not answer: {reason}")]
    Unreachable {
        /// The blob endpoint.
        endpoint: String,
        /// The connection's or the deadline's error.
        reason: String,
    },
    /// The account refused the request: a wrong key (403 `AuthenticationFailed`), a container
    /// that does not exist (404 `ContainerNotFound`), or a fault of its own (5xx).
    #[error("storage account answered {status} {code}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// Storage's `x-ms-error-code`, or `-` when it sent none.
        code: String,
    },
    /// The account's answer could not be read (a List Blobs body that is not its XML, a blob
    /// without a size).
    #[error("storage account answered something unreadable: {0}")]
    Answer(String),
}

/// The account, its container, and the HTTPS client that reaches it.
pub struct StorageAccount {
    account: StorageAccountString,
    container: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for StorageAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageAccount")
            .field("endpoint", &self.account.blob_endpoint)
            .field("container", &self.container)
            .finish_non_exhaustive()
    }
}

impl StorageAccount {
    /// A client of `account`'s `container`, trusting the system's CAs and those in
    /// `extra_ca_pem`.
    pub fn new(
        account: StorageAccountString,
        container: String,
        extra_ca_pem: Option<&str>,
    ) -> Result<Self, StorageAccountError> {
        let tls = dps_pki::tls::client_config_with_system_roots(extra_ca_pem)
            .map_err(|e| StorageAccountError::Tls(e.to_string()))?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("dps/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| StorageAccountError::Tls(e.to_string()))?;
        Ok(Self {
            account,
            container,
            http,
        })
    }

    /// The hub's file upload settings for this account: devices are sent to its blob host with
    /// a SAS signed by its key.
    pub fn file_upload_config(&self, notifications: bool) -> dps_hub::FileUploadConfig {
        dps_hub::FileUploadConfig {
            host: self.account.device_host().to_string(),
            container: self.container.clone(),
            account: self.account.account.clone(),
            key: self.account.key.clone(),
            notifications,
        }
    }

    /// The blob endpoint.
    pub fn endpoint(&self) -> &str {
        &self.account.blob_endpoint
    }

    /// The container uploads go to.
    pub fn container(&self) -> &str {
        &self.container
    }

    fn blob_url(&self, blob: &str, permissions: &str) -> String {
        let sas = storage::sign_sas(
            &self.account.key,
            &self.account.account,
            &self.container,
            blob,
            permissions,
            Utc::now() + OWN_SAS_TTL,
        );
        let path: Vec<String> = blob
            .split('/')
            .map(|s| utf8_percent_encode(s, SEGMENT).to_string())
            .collect();
        format!(
            "{}/{}/{}{sas}",
            self.account.blob_endpoint,
            self.container,
            path.join("/")
        )
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, StorageAccountError> {
        request
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))
    }

    fn unreachable(&self, e: &reqwest::Error) -> StorageAccountError {
        StorageAccountError::Unreachable {
            endpoint: self.account.blob_endpoint.clone(),
            reason: dps_proto::error::error_chain(e),
        }
    }

    /// The size and time of `blob`, or `None` when the account has no such blob.
    pub async fn properties(&self, blob: &str) -> Result<Option<dps_hub::UploadedBlob>, StorageAccountError> {
        let resp = self.send(self.http.head(self.blob_url(blob, "r"))).await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = refused(resp)?;
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok());
        let size = header("content-length")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| StorageAccountError::Answer(format!("blob '{blob}' has no Content-Length")))?;
        let last_modified = header("last-modified")
            .and_then(storage::parse_http_date)
            .ok_or_else(|| StorageAccountError::Answer(format!("blob '{blob}' has no Last-Modified")))?;
        Ok(Some(dps_hub::UploadedBlob { size, last_modified }))
    }

    /// The container's blobs whose names start with `prefix`, in name order, at most `max`.
    pub async fn list(&self, prefix: Option<&str>, max: usize) -> Result<Vec<ListedBlob>, StorageAccountError> {
        let mut blobs = Vec::new();
        let mut marker: Option<String> = None;
        while blobs.len() < max {
            let wanted = (max - blobs.len()).min(PAGE);
            let sas = storage::sign_container_sas(
                &self.account.key,
                &self.account.account,
                &self.container,
                "rl",
                Utc::now() + OWN_SAS_TTL,
            );
            let url = format!("{}/{}{sas}", self.account.blob_endpoint, self.container);
            let mut query = vec![
                ("restype", "container".to_string()),
                ("comp", "list".to_string()),
                ("maxresults", wanted.to_string()),
            ];
            if let Some(p) = prefix {
                query.push(("prefix", p.to_string()));
            }
            if let Some(m) = marker.take() {
                query.push(("marker", m));
            }
            let resp = refused(
                self.send(
                    self.http
                        .get(url)
                        .query(&query)
                        .header("x-ms-version", storage::STORAGE_VERSION),
                )
                .await?,
            )?;
            let body = crate::outbound::read_bounded(resp, MAX_LIST_BYTES)
                .await
                .map_err(|e| match e {
                    crate::outbound::BodyError::Broken(e) => self.unreachable(&e),
                    too_large => StorageAccountError::Answer(format!("List Blobs: {too_large}")),
                })?;
            let page = storage::parse_blob_list(&body, wanted).map_err(StorageAccountError::Answer)?;
            blobs.extend(page.blobs);
            match page.next_marker {
                Some(m) => marker = Some(m),
                None => break,
            }
        }
        Ok(blobs)
    }

    /// `blob`'s size and bytes as they arrive, or `None` when the account has no such blob.
    pub async fn open(
        &self,
        blob: &str,
    ) -> Result<Option<(u64, impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static)>, StorageAccountError> {
        // No total deadline here: a large file takes what it takes; the read deadline (no byte
        // for REQUEST_TIMEOUT) still ends a stalled one.
        let resp = self
            .http
            .get(self.blob_url(blob, "r"))
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = refused(resp)?;
        let size = resp
            .content_length()
            .ok_or_else(|| StorageAccountError::Answer(format!("blob '{blob}' has no Content-Length")))?;
        Ok(Some((size, resp.bytes_stream())))
    }
}

/// The response, or the account's refusal with its status and Storage error code.
fn refused(resp: reqwest::Response) -> Result<reqwest::Response, StorageAccountError> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let code = resp
        .headers()
        .get("x-ms-error-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    Err(StorageAccountError::Refused {
        status: resp.status().as_u16(),
        code,
    })
}
