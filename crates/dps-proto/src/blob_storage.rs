//! The slice of Azure Blob Storage that IoT Hub file upload uses, as the official SDKs speak it
//! (newer-surfaces.md "file upload"; the Node `azure-iot-device` 1.18 `blob_upload` with
//! `@azure/storage-blob` 12.8, Python `azure-storage-blob` 12, the C SDK's `blob.c`):
//!
//! - the service SAS IoT Hub hands a device (`?sv=2018-03-28&sr=b&sig=…&se=…&sp=rw`), signed over
//!   Storage's string-to-sign of that version with the account key, and its verification;
//! - blob names: `{deviceId}/{name as the device asked}`, checked so that none can leave its
//!   container on disk;
//! - the Put Block List body (`<BlockList><Latest>id</Latest>…</BlockList>`);
//! - Storage's error body (`<Error><Code>…</Code><Message>…</Message></Error>` with the same code
//!   in `x-ms-error-code`, which Python maps to its exception types).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use quick_xml::events::Event;
use sha2::Sha256;

use crate::rest::QueryParams;

/// The SAS version IoT Hub signs with (its documented example), whose string-to-sign this module
/// implements.
pub const SAS_VERSION: &str = "2018-03-28";

/// The Storage REST version the endpoint answers as (`x-ms-version`).
pub const STORAGE_VERSION: &str = "2020-10-02";

/// What a SAS query value escapes: all but RFC 3986's unreserved characters, as .NET and Python
/// write them.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Longest blob name (Azure's limit, in bytes).
pub const MAX_BLOB_NAME: usize = 1024;

/// Most blocks one blob may have (Azure's limit).
pub const MAX_BLOCKS: usize = 50_000;

/// Longest decoded block id (Azure's limit, bytes).
pub const MAX_BLOCK_ID: usize = 64;

/// Whether `name` may be a blob name here: 1 to [`MAX_BLOB_NAME`] bytes of `/`-separated
/// segments, none empty, `.` or `..`, and no control character or backslash — so that a blob
/// name used as a relative path stays inside its container.
pub fn valid_blob_name(name: &str) -> bool {
    (1..=MAX_BLOB_NAME).contains(&name.len())
        && !name.chars().any(|c| c.is_control() || c == '\\')
        && name.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
}

/// The SAS string-to-sign of version [`SAS_VERSION`] (2015-04-05 to 2018-03-28): permissions,
/// start, expiry, canonical resource, identifier, IP, protocol, version, then the five response
/// header overrides, one per line.
fn string_to_sign(fields: &SasFields<'_>, resource: &str) -> String {
    [
        fields.sp,
        fields.st,
        fields.se,
        resource,
        fields.si,
        fields.sip,
        fields.spr,
        fields.sv,
        fields.rscc,
        fields.rscd,
        fields.rsce,
        fields.rscl,
        fields.rsct,
    ]
    .join("\n")
}

/// `/blob/{account}/{container}/{blob}`: what a SAS is for.
fn canonical_resource(account: &str, container: &str, blob: &str) -> String {
    format!("/blob/{account}/{container}/{blob}")
}

/// The signed fields of a SAS (decoded; absent ones empty).
#[derive(Default)]
struct SasFields<'a> {
    sp: &'a str,
    st: &'a str,
    se: &'a str,
    si: &'a str,
    sip: &'a str,
    spr: &'a str,
    sv: &'a str,
    rscc: &'a str,
    rscd: &'a str,
    rsce: &'a str,
    rscl: &'a str,
    rsct: &'a str,
}

fn signature(key: &[u8], text: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(text.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// A storage account key derived from a secret the server already keeps (its hub owner key):
/// HMAC-SHA256 under a fixed label, so the key survives restarts without a file of its own and
/// changes when the secret does.
pub fn derive_account_key(secret: &[u8]) -> Vec<u8> {
    signature(secret, "dps file upload storage account key v1")
}

/// A service SAS for one blob, as IoT Hub returns it in `sasToken`: `?sv=…&sr=b&sig=…&se=…&sp=…`,
/// signed with `key` (the storage account key, raw bytes), valid until `expiry`.
pub fn sign_sas(
    key: &[u8],
    account: &str,
    container: &str,
    blob: &str,
    permissions: &str,
    expiry: DateTime<Utc>,
) -> String {
    sign(
        key,
        &canonical_resource(account, container, blob),
        "b",
        permissions,
        expiry,
    )
}

/// A service SAS for a whole container (`sr=c`), as the server signs for itself to list an
/// external account's uploads (`sp=rl`).
pub fn sign_container_sas(
    key: &[u8],
    account: &str,
    container: &str,
    permissions: &str,
    expiry: DateTime<Utc>,
) -> String {
    sign(key, &format!("/blob/{account}/{container}"), "c", permissions, expiry)
}

/// A service SAS over the canonical `resource` of kind `sr`.
fn sign(key: &[u8], resource: &str, sr: &str, permissions: &str, expiry: DateTime<Utc>) -> String {
    let se = expiry.to_rfc3339_opts(SecondsFormat::Secs, true);
    let fields = SasFields {
        sp: permissions,
        se: &se,
        sv: SAS_VERSION,
        ..SasFields::default()
    };
    let sig = B64.encode(signature(key, &string_to_sign(&fields, resource)));
    let enc = |s: &str| utf8_percent_encode(s, QUERY_VALUE).to_string();
    format!(
        "?sv={SAS_VERSION}&sr={sr}&sig={}&se={}&sp={}",
        enc(&sig),
        enc(&se),
        enc(permissions)
    )
}

/// Whether `name` is a container name: 3 to 63 lower-case letters, digits and `-` (Storage's
/// rule, less its finer points on dashes, which the account itself enforces).
pub fn valid_container_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// An Azure Storage account as its connection string names it (the portal's "Access keys"):
/// `DefaultEndpointsProtocol=https;AccountName=…;AccountKey=…;EndpointSuffix=core.windows.net`,
/// or with `BlobEndpoint=https://host[:port][/path]` for an endpoint of its own (a custom
/// domain, Azurite, Azure Stack). What IoT Hub's file upload takes to point devices at an
/// account of the operator's instead of the server's blob endpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct StorageAccountString {
    /// `AccountName`.
    pub account: String,
    /// `AccountKey`, decoded.
    pub key: Vec<u8>,
    /// The blob endpoint, `https://…` without a trailing `/`.
    pub blob_endpoint: String,
}

impl std::fmt::Debug for StorageAccountString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageAccountString")
            .field("account", &self.account)
            .field("blob_endpoint", &self.blob_endpoint)
            .finish_non_exhaustive()
    }
}

/// Why a storage connection string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StorageAccountStringError {
    /// A `;`-separated part had no `=`.
    #[error("storage connection string part '{0}' is not key=value")]
    BadPart(String),
    /// `AccountName` or `AccountKey` is missing (a SAS-only connection string cannot sign the
    /// SAS devices need).
    #[error("the storage connection string has no {0} (file upload signs SAS tokens with the account key)")]
    Missing(&'static str),
    /// `AccountKey` is not base64.
    #[error("the storage connection string's AccountKey is not base64")]
    Key,
    /// The blob endpoint is not `https://host…` (devices always upload over HTTPS; the
    /// development storage shortcut is plain HTTP).
    #[error("the blob endpoint '{0}' is not https://host[:port][/path]: devices upload over HTTPS only")]
    Endpoint(String),
}

/// Read from configuration files as the connection string itself.
impl<'de> serde::Deserialize<'de> for StorageAccountString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl StorageAccountString {
    /// Parses a storage connection string; keys compare without case, as the Storage SDKs do.
    pub fn parse(s: &str) -> Result<Self, StorageAccountStringError> {
        let (mut account, mut key, mut endpoint) = (None, None, None);
        let (mut protocol, mut suffix) = ("https".to_string(), "core.windows.net".to_string());
        for part in s.trim().split(';').filter(|p| !p.trim().is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| StorageAccountStringError::BadPart(part.to_string()))?;
            let v = v.trim().to_string();
            match k.trim().to_ascii_lowercase().as_str() {
                "accountname" => account = Some(v),
                "accountkey" => key = Some(v),
                "blobendpoint" => endpoint = Some(v),
                "defaultendpointsprotocol" => protocol = v.to_ascii_lowercase(),
                "endpointsuffix" => suffix = v,
                "usedevelopmentstorage" if v.eq_ignore_ascii_case("true") => {
                    return Err(StorageAccountStringError::Endpoint(
                        "http://127.0.0.1:10000/devstoreaccount1 (UseDevelopmentStorage)".into(),
                    ))
                }
                _ => {}
            }
        }
        let account = account
            .filter(|a| !a.is_empty())
            .ok_or(StorageAccountStringError::Missing("AccountName"))?;
        let key = key.ok_or(StorageAccountStringError::Missing("AccountKey"))?;
        let key = B64
            .decode(key.as_bytes())
            .ok()
            .filter(|k| !k.is_empty())
            .ok_or(StorageAccountStringError::Key)?;
        let endpoint = endpoint.unwrap_or_else(|| format!("{protocol}://{account}.blob.{suffix}"));
        let endpoint = endpoint.trim_end_matches('/').to_string();
        let usable = endpoint.strip_prefix("https://").is_some_and(|rest| {
            !rest.split('/').next().unwrap_or_default().is_empty()
                && !rest.contains(['?', '#', '@'])
                && !rest.chars().any(|c| c.is_whitespace() || c.is_control())
        });
        if !usable {
            return Err(StorageAccountStringError::Endpoint(endpoint));
        }
        Ok(Self {
            account,
            key,
            blob_endpoint: endpoint,
        })
    }

    /// The endpoint as devices get it in `hostName` (without the scheme): the SDKs build
    /// `https://{hostName}/{container}/{blob}{sas}`, so a path-style endpoint (Azurite's
    /// `host:port/account`) keeps its path.
    pub fn device_host(&self) -> &str {
        self.blob_endpoint
            .strip_prefix("https://")
            .unwrap_or(&self.blob_endpoint)
    }
}

/// One blob of a List Blobs answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedBlob {
    /// Its name in the container.
    pub name: String,
    /// `Content-Length`.
    pub size: u64,
    /// `Last-Modified`.
    pub last_modified: DateTime<Utc>,
}

/// A page of List Blobs (`GET {container}?restype=container&comp=list`): the blobs and the
/// marker of the next page, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlobListPage {
    /// The blobs, in the account's (name) order.
    pub blobs: Vec<ListedBlob>,
    /// `NextMarker`, when not empty.
    pub next_marker: Option<String>,
}

/// Parses a List Blobs answer (`<EnumerationResults><Blobs><Blob><Name>…</Name><Properties>
/// <Last-Modified>…</Last-Modified><Content-Length>…</Content-Length>…`), keeping at most
/// `max` blobs. Elements it does not need are skipped; a blob without a name, a size or a time
/// it can read is an error naming it.
pub fn parse_blob_list(xml: &[u8], max: usize) -> Result<BlobListPage, String> {
    let mut reader = quick_xml::Reader::from_reader(xml);
    reader.config_mut().trim_text(true);
    let mut path: Vec<Vec<u8>> = Vec::new();
    let mut page = BlobListPage::default();
    let (mut name, mut size, mut modified) = (None::<String>, None::<String>, None::<String>);
    loop {
        match reader.read_event().map_err(|e| format!("not XML: {e}"))? {
            Event::Start(e) => {
                if path.len() == 16 {
                    return Err("elements nested too deep".into());
                }
                path.push(e.name().as_ref().to_vec());
            }
            Event::End(_) => {
                let closed = path.pop().unwrap_or_default();
                if closed == b"Blob" && path.len() == 2 {
                    let blob = listed_blob(name.take(), size.take(), modified.take())?;
                    if page.blobs.len() < max {
                        page.blobs.push(blob);
                    }
                }
            }
            Event::Text(t) => {
                let text = t.unescape().map_err(|e| format!("bad text: {e}"))?.into_owned();
                let at: Vec<&[u8]> = path.iter().map(Vec::as_slice).collect();
                match at.as_slice() {
                    [b"EnumerationResults", b"NextMarker"] if !text.is_empty() => page.next_marker = Some(text),
                    [b"EnumerationResults", b"Blobs", b"Blob", b"Name"] => name = Some(text),
                    [b"EnumerationResults", b"Blobs", b"Blob", b"Properties", b"Content-Length"] => size = Some(text),
                    [b"EnumerationResults", b"Blobs", b"Blob", b"Properties", b"Last-Modified"] => {
                        modified = Some(text)
                    }
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !path.is_empty() {
        return Err("the document ends inside an element".into());
    }
    Ok(page)
}

fn listed_blob(name: Option<String>, size: Option<String>, modified: Option<String>) -> Result<ListedBlob, String> {
    let name = name.ok_or("a <Blob> without a <Name>")?;
    let size = size
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| format!("blob '{name}' has no Content-Length it can read"))?;
    let last_modified = modified
        .as_deref()
        .and_then(parse_http_date)
        .ok_or_else(|| format!("blob '{name}' has no Last-Modified it can read"))?;
    Ok(ListedBlob {
        name,
        size,
        last_modified,
    })
}

/// An HTTP date as Storage writes `Last-Modified` (`Wed, 04 Dec 2026 23:38:22 GMT`).
pub fn parse_http_date(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc2822(s.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Why a request's SAS does not allow it. Storage answers all of these 403
/// `AuthenticationFailed` (or `AuthorizationPermissionMismatch`), saying which.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SasRefusal {
    /// No `sig` (or another required field) in the query.
    #[error("the request has no shared access signature ({0} is missing)")]
    Missing(&'static str),
    /// `sv` is a version this endpoint does not sign.
    #[error("signed version sv={0} is not supported: this endpoint issues and checks sv={SAS_VERSION}")]
    Version(String),
    /// `sr` is not `b` (a blob).
    #[error("signed resource sr={0} is not supported: only blob SAS (sr=b)")]
    Resource(String),
    /// The signature does not match this blob and this account's key (a SAS for another blob,
    /// or changed fields).
    #[error("signature did not match: the SAS is not for this blob, or it was changed")]
    Signature,
    /// `se` has passed (or `st` is still ahead).
    #[error("signature not valid in the specified time frame: {0}")]
    Time(String),
    /// `sp` lacks the permission the operation needs.
    #[error("the SAS permissions sp={granted} do not include '{needed}'")]
    Permission {
        /// The granted permissions.
        granted: String,
        /// The needed one.
        needed: char,
    },
}

impl SasRefusal {
    /// Storage's error code for the refusal.
    pub fn code(&self) -> &'static str {
        match self {
            SasRefusal::Permission { .. } => "AuthorizationPermissionMismatch",
            _ => "AuthenticationFailed",
        }
    }
}

/// Checks the service SAS in `query` for an operation on `container/blob` that needs permission
/// `needed` (`w` to write, `r` to read) at `now`, against the account's `key`. Only the key and
/// names the server knows are used: the SAS names no resource of its own.
pub fn verify_sas(
    key: &[u8],
    account: &str,
    container: &str,
    blob: &str,
    query: &QueryParams,
    now: DateTime<Utc>,
    needed: char,
) -> Result<(), SasRefusal> {
    let get = |name: &str| query.get(name).unwrap_or_default();
    let sig = query.get("sig").ok_or(SasRefusal::Missing("sig"))?;
    let fields = SasFields {
        sp: get("sp"),
        st: get("st"),
        se: query.get("se").ok_or(SasRefusal::Missing("se"))?,
        si: get("si"),
        sip: get("sip"),
        spr: get("spr"),
        sv: query.get("sv").ok_or(SasRefusal::Missing("sv"))?,
        rscc: get("rscc"),
        rscd: get("rscd"),
        rsce: get("rsce"),
        rscl: get("rscl"),
        rsct: get("rsct"),
    };
    if fields.sv != SAS_VERSION {
        return Err(SasRefusal::Version(fields.sv.to_string()));
    }
    if get("sr") != "b" {
        return Err(SasRefusal::Resource(get("sr").to_string()));
    }
    let expected = signature(
        key,
        &string_to_sign(&fields, &canonical_resource(account, container, blob)),
    );
    let given = B64.decode(sig.as_bytes()).map_err(|_| SasRefusal::Signature)?;
    if !bool::from(subtle::ConstantTimeEq::ct_eq(expected.as_slice(), given.as_slice())) {
        return Err(SasRefusal::Signature);
    }
    let expiry = crate::timefmt::parse(fields.se)
        .ok_or_else(|| SasRefusal::Time(format!("signed expiry se={} is not a time", fields.se)))?;
    if expiry <= now {
        return Err(SasRefusal::Time(format!(
            "signed expiry time [{}] has passed",
            fields.se
        )));
    }
    if !fields.st.is_empty() {
        let start = crate::timefmt::parse(fields.st)
            .ok_or_else(|| SasRefusal::Time(format!("signed start st={} is not a time", fields.st)))?;
        if start > now {
            return Err(SasRefusal::Time(format!("signed start time [{}] is ahead", fields.st)));
        }
    }
    if !fields.sp.contains(needed) {
        return Err(SasRefusal::Permission {
            granted: fields.sp.to_string(),
            needed,
        });
    }
    Ok(())
}

/// Why a Put Block List body was refused (Storage's 400 `InvalidXmlDocument` or
/// `InvalidBlockList`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockListError {
    /// Not XML, or not a `BlockList` of `Latest`/`Committed`/`Uncommitted` elements.
    #[error("the block list is not a <BlockList> of <Latest>, <Committed> or <Uncommitted> block ids: {0}")]
    Xml(String),
    /// A block id is not base64 of 1 to 64 bytes.
    #[error("block id {0:?} is not base64 of 1 to 64 bytes")]
    BlockId(String),
    /// More blocks than a blob may have.
    #[error("the block list names more than {MAX_BLOCKS} blocks")]
    TooMany,
}

impl BlockListError {
    /// Storage's error code for the refusal.
    pub fn code(&self) -> &'static str {
        match self {
            BlockListError::Xml(_) => "InvalidXmlDocument",
            _ => "InvalidBlockList",
        }
    }
}

/// The decoded bytes of a block id: base64 of 1 to [`MAX_BLOCK_ID`] bytes.
pub fn block_id(id: &str) -> Option<Vec<u8>> {
    B64.decode(id.trim().as_bytes())
        .ok()
        .filter(|b| (1..=MAX_BLOCK_ID).contains(&b.len()))
}

/// The block ids of a Put Block List body, in order, decoded. Whether an id was listed as
/// latest, committed or uncommitted makes no difference here: a blob is written whole by one
/// block list, so every block is an uncommitted one of this upload.
pub fn parse_block_list(xml: &[u8]) -> Result<Vec<Vec<u8>>, BlockListError> {
    let mut reader = quick_xml::Reader::from_reader(xml);
    reader.config_mut().trim_text(true);
    let mut ids = Vec::new();
    let mut depth = 0usize;
    let mut in_block = false;
    let mut seen_root = false;
    let mut text = String::new();
    let xml_error = |e: &dyn std::fmt::Display| BlockListError::Xml(e.to_string());
    loop {
        match reader.read_event().map_err(|e| xml_error(&e))? {
            Event::Start(e) => {
                let name = e.name();
                match (depth, name.as_ref()) {
                    (0, b"BlockList") if !seen_root => seen_root = true,
                    (1, b"Latest" | b"Committed" | b"Uncommitted") => {
                        in_block = true;
                        text.clear();
                    }
                    _ => {
                        return Err(BlockListError::Xml(format!(
                            "unexpected element <{}>",
                            String::from_utf8_lossy(name.as_ref())
                        )))
                    }
                }
                depth += 1;
            }
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                if in_block {
                    in_block = false;
                    if ids.len() == MAX_BLOCKS {
                        return Err(BlockListError::TooMany);
                    }
                    ids.push(block_id(&text).ok_or_else(|| BlockListError::BlockId(text.clone()))?);
                }
            }
            Event::Text(t) if in_block => {
                text.push_str(&t.unescape().map_err(|e| xml_error(&e))?);
            }
            Event::Text(t) if !t.iter().all(u8::is_ascii_whitespace) => {
                return Err(BlockListError::Xml("text outside a block id".into()));
            }
            Event::Empty(e) => {
                return Err(BlockListError::Xml(format!(
                    "empty element <{}/>",
                    String::from_utf8_lossy(e.name().as_ref())
                )))
            }
            Event::Eof => break,
            // The declaration, comments, processing instructions, whitespace.
            _ => {}
        }
    }
    if !seen_root || depth != 0 {
        return Err(BlockListError::Xml("no complete <BlockList> element".into()));
    }
    Ok(ids)
}

/// A read range, `bytes=start-[end]` (`x-ms-range` or `Range`), within a blob of `size` bytes:
/// (start, length), the end cut to the blob's; `None` when it is malformed or starts past the
/// end (Storage's 416 `InvalidRange`).
pub fn parse_range(header: &str, size: u64) -> Option<(u64, u64)> {
    let (a, b) = header.trim().strip_prefix("bytes=")?.split_once('-')?;
    let start: u64 = a.trim().parse().ok()?;
    let last = size.checked_sub(1)?;
    let end = match b.trim() {
        "" => last,
        b => b.parse::<u64>().ok()?.min(last),
    };
    (start <= end).then(|| (start, end - start + 1))
}

/// Storage's error body for `code` (the same code goes in `x-ms-error-code`).
pub fn error_xml(code: &str, message: &str, request_id: &str, now: DateTime<Utc>) -> String {
    let message = format!(
        "{message}\nRequestId:{request_id}\nTime:{}",
        now.to_rfc3339_opts(SecondsFormat::Micros, true)
    );
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{}</Code><Message>{}</Message></Error>",
        quick_xml::escape::escape(code),
        quick_xml::escape::escape(message.as_str())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// Azurite's well-known development account key: the vector below was computed with it.
    const KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    fn at(y: i32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, 1, 1, 0, 0, 0).unwrap()
    }

    #[test]
    fn sas_matches_storage_string_to_sign_of_2018_03_28() {
        let key = B64.decode(KEY).unwrap();
        let sas = sign_sas(
            &key,
            "devstoreaccount1",
            "fileupload",
            "dev1/myfile.txt",
            "rw",
            at(2030),
        );
        assert_eq!(
            sas,
            "?sv=2018-03-28&sr=b&sig=vVNcosQVVuNWgRUH5SHFd2Q8%2BFxU4wWIwHHI9G7zJp8%3D&se=2030-01-01T00%3A00%3A00Z&sp=rw"
        );
        let q = QueryParams::parse(Some(&sas[1..]));
        let check = |blob: &str, now, needed| verify_sas(&key, "devstoreaccount1", "fileupload", blob, &q, now, needed);
        assert_eq!(check("dev1/myfile.txt", at(2029), 'w'), Ok(()));
        assert_eq!(check("dev1/myfile.txt", at(2029), 'r'), Ok(()));
        assert_eq!(check("dev1/other.txt", at(2029), 'w'), Err(SasRefusal::Signature));
        assert!(matches!(
            check("dev1/myfile.txt", at(2030), 'w'),
            Err(SasRefusal::Time(_))
        ));
        assert_eq!(
            check("dev1/myfile.txt", at(2029), 'd'),
            Err(SasRefusal::Permission {
                granted: "rw".into(),
                needed: 'd'
            })
        );
        // Changing a signed field breaks the signature; dropping `sig` is a missing SAS.
        let widened = QueryParams::parse(Some(&sas[1..].replace("sp=rw", "sp=rwd")));
        assert_eq!(
            verify_sas(
                &key,
                "devstoreaccount1",
                "fileupload",
                "dev1/myfile.txt",
                &widened,
                at(2029),
                'd'
            ),
            Err(SasRefusal::Signature)
        );
        assert_eq!(
            verify_sas(
                &key,
                "devstoreaccount1",
                "fileupload",
                "dev1/myfile.txt",
                &QueryParams::parse(Some("comp=block")),
                at(2029),
                'w'
            ),
            Err(SasRefusal::Missing("sig"))
        );
    }

    #[test]
    fn container_sas_signs_the_container_resource() {
        let key = B64.decode(KEY).unwrap();
        let sas = sign_container_sas(&key, "devstoreaccount1", "fileupload", "rl", at(2030));
        assert!(sas.starts_with("?sv=2018-03-28&sr=c&sig="), "{sas}");
        assert!(sas.ends_with("&se=2030-01-01T00%3A00%3A00Z&sp=rl"), "{sas}");
        // Not a blob SAS: the signature covers another resource.
        let q = QueryParams::parse(Some(&sas[1..].replace("sr=c", "sr=b")));
        assert_eq!(
            verify_sas(&key, "devstoreaccount1", "fileupload", "", &q, at(2029), 'r'),
            Err(SasRefusal::Signature)
        );
    }

    #[test]
    fn storage_connection_strings_as_the_portal_and_azurite_write_them() {
        let azure = StorageAccountString::parse(&format!(
            "DefaultEndpointsProtocol=https;AccountName=contoso;AccountKey={KEY};EndpointSuffix=core.windows.net"
        ))
        .unwrap();
        assert_eq!(azure.blob_endpoint, "https://contoso.blob.core.windows.net");
        assert_eq!(azure.device_host(), "contoso.blob.core.windows.net");
        assert_eq!(azure.key, B64.decode(KEY).unwrap());
        let azurite = StorageAccountString::parse(&format!(
            "accountname=devstoreaccount1;ACCOUNTKEY={KEY};BlobEndpoint=https://127.0.0.1:10000/devstoreaccount1/;"
        ))
        .unwrap();
        assert_eq!(azurite.device_host(), "127.0.0.1:10000/devstoreaccount1");
        assert!(!format!("{azurite:?}").contains(KEY));
        for (bad, why) in [
            ("AccountName=a", StorageAccountStringError::Missing("AccountKey")),
            (
                &format!("AccountKey={KEY}") as &str,
                StorageAccountStringError::Missing("AccountName"),
            ),
            ("AccountName=a;AccountKey=%%%", StorageAccountStringError::Key),
            (
                "AccountName=a;AccountKey=a2V5;nonsense",
                StorageAccountStringError::BadPart("nonsense".into()),
            ),
            (
                "AccountName=a;AccountKey=a2V5;DefaultEndpointsProtocol=http",
                StorageAccountStringError::Endpoint("http://a.blob.core.windows.net".into()),
            ),
            (
                "AccountName=a;AccountKey=a2V5;BlobEndpoint=https://h/x?y",
                StorageAccountStringError::Endpoint("https://h/x?y".into()),
            ),
        ] {
            assert_eq!(StorageAccountString::parse(bad), Err(why), "{bad}");
        }
        assert!(matches!(
            StorageAccountString::parse("UseDevelopmentStorage=true"),
            Err(StorageAccountStringError::Endpoint(_))
        ));
    }

    #[test]
    fn blob_lists_as_storage_and_azurite_answer() {
        let xml = br#"<?xml version="1.0" encoding="utf-8"?>
<EnumerationResults ServiceEndpoint="https://127.0.0.1:10000/devstoreaccount1" ContainerName="fileupload">
  <Prefix>dev1/</Prefix><MaxResults>2</MaxResults>
  <Blobs>
    <Blob><Name>dev1/a &amp; b.txt</Name><Properties><Creation-Time>Wed, 02 Dec 2026 10:00:00 GMT</Creation-Time>
      <Last-Modified>Fri, 04 Dec 2026 23:38:22 GMT</Last-Modified><Etag>0x1</Etag>
      <Content-Length>1700</Content-Length><BlobType>BlockBlob</BlobType></Properties><OrMetadata/></Blob>
    <Blob><Name>dev1/b.bin</Name><Properties><Last-Modified>Fri, 04 Dec 2026 23:38:23 GMT</Last-Modified>
      <Content-Length>0</Content-Length></Properties></Blob>
  </Blobs>
  <NextMarker>2!abc</NextMarker>
</EnumerationResults>"#;
        let page = parse_blob_list(xml, 10).unwrap();
        assert_eq!(page.next_marker.as_deref(), Some("2!abc"));
        assert_eq!(
            page.blobs,
            vec![
                ListedBlob {
                    name: "dev1/a & b.txt".into(),
                    size: 1700,
                    last_modified: Utc.with_ymd_and_hms(2026, 12, 4, 23, 38, 22).unwrap(),
                },
                ListedBlob {
                    name: "dev1/b.bin".into(),
                    size: 0,
                    last_modified: Utc.with_ymd_and_hms(2026, 12, 4, 23, 38, 23).unwrap(),
                },
            ]
        );
        assert_eq!(parse_blob_list(xml, 1).unwrap().blobs.len(), 1);
        let empty = parse_blob_list(b"<EnumerationResults><Blobs/><NextMarker/></EnumerationResults>", 10).unwrap();
        assert_eq!(empty, BlobListPage::default());
        let no_size = b"<EnumerationResults><Blobs><Blob><Name>x</Name><Properties><Last-Modified>Fri, 04 Dec 2026 23:38:23 GMT</Last-Modified></Properties></Blob></Blobs></EnumerationResults>";
        assert_eq!(
            parse_blob_list(no_size, 10).unwrap_err(),
            "blob 'x' has no Content-Length it can read"
        );
        assert!(parse_blob_list(b"<EnumerationResults><Blobs>", 10).is_err());
    }

    #[test]
    fn blob_names_stay_inside_their_container() {
        for ok in ["dev1/file.txt", "dev 1/a b/c.bin", "d/ü.txt", "d/.hidden"] {
            assert!(valid_blob_name(ok), "{ok}");
        }
        for bad in [
            "",
            "d//f",
            "d/../f",
            "../f",
            "d/./f",
            "d/f/",
            "/d/f",
            "d\\f",
            "d/\u{0}",
            &"x".repeat(1025),
        ] {
            assert!(!valid_blob_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn block_lists_as_node_python_and_c_write_them() {
        let node = br#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><BlockList><Latest>AAAA</Latest><Latest>AAAB</Latest></BlockList>"#;
        assert_eq!(parse_block_list(node).unwrap(), [vec![0, 0, 0], vec![0, 0, 1]]);
        let python = b"<?xml version='1.0' encoding='utf-8'?>\n<BlockList><Latest>MDA=</Latest></BlockList>";
        assert_eq!(parse_block_list(python).unwrap(), [b"00".to_vec()]);
        let c = b"<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n<BlockList><Latest>ICAgICAw</Latest></BlockList>";
        assert_eq!(parse_block_list(c).unwrap(), [b"     0".to_vec()]);
        let mixed = b"<BlockList><Committed>AQ==</Committed><Uncommitted>Ag==</Uncommitted></BlockList>";
        assert_eq!(parse_block_list(mixed).unwrap(), [vec![1], vec![2]]);
        assert_eq!(
            parse_block_list(b"<BlockList></BlockList>").unwrap(),
            Vec::<Vec<u8>>::new()
        );
    }

    #[test]
    fn bad_block_lists_say_what_is_wrong() {
        for (bad, code) in [
            (&b"not xml <"[..], "InvalidXmlDocument"),
            (b"<BlockList><Latest>AAAA</Latest>", "InvalidXmlDocument"),
            (b"<List><Latest>AAAA</Latest></List>", "InvalidXmlDocument"),
            (b"<BlockList><Latest><X/></Latest></BlockList>", "InvalidXmlDocument"),
            (b"<BlockList><Latest>!!</Latest></BlockList>", "InvalidBlockList"),
            (b"<BlockList><Latest></Latest></BlockList>", "InvalidBlockList"),
            (
                b"<BlockList>text<Latest>AA==</Latest></BlockList>",
                "InvalidXmlDocument",
            ),
            (b"<BlockList/>", "InvalidXmlDocument"),
        ] {
            let e = parse_block_list(bad).unwrap_err();
            assert_eq!(e.code(), code, "{:?}: {e}", String::from_utf8_lossy(bad));
        }
        let long = format!("<BlockList><Latest>{}</Latest></BlockList>", B64.encode([7u8; 65]));
        assert!(matches!(
            parse_block_list(long.as_bytes()),
            Err(BlockListError::BlockId(_))
        ));
    }

    #[test]
    fn ranges_as_the_downloaders_ask() {
        assert_eq!(parse_range("bytes=0-33554431", 11), Some((0, 11)));
        assert_eq!(parse_range("bytes=6-", 11), Some((6, 5)));
        assert_eq!(parse_range("bytes=6-6", 11), Some((6, 1)));
        for bad in [
            "bytes=11-",
            "bytes=5-4",
            "bytes=-5",
            "items=0-1",
            "bytes=a-b",
            "bytes=0",
        ] {
            assert_eq!(parse_range(bad, 11), None, "{bad}");
        }
        assert_eq!(parse_range("bytes=0-", 0), None, "an empty blob has no range");
        assert_eq!(
            parse_range(&format!("bytes=0-{}", u64::MAX), u64::MAX),
            Some((0, u64::MAX))
        );
    }

    #[test]
    fn errors_are_storage_xml() {
        let xml = error_xml(
            "BlobAlreadyExists",
            "The specified blob <already> exists.",
            "rid",
            at(2026),
        );
        assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>BlobAlreadyExists</Code><Message>The specified blob &lt;already&gt; exists.\nRequestId:rid\nTime:2026-01-01T00:00:00.000000Z</Message></Error>"), "{xml}");
    }
}
