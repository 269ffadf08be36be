//! The embedded hub's registry REST API (hub-dice-tpm.md §A8), as `azure-iot-hub`'s
//! RegistryManager calls it, plus direct methods, statistics and the `monitor-events` stream.
//! Authorized by the hub's shared-access policies.
//!
//! Rights: `RegistryRead` for device reads and queries, `RegistryWrite` for device writes;
//! twins accept `ServiceConnect` or the registry right (Azure documents twin access under
//! ServiceConnect); direct methods and the telemetry stream need `ServiceConnect`, as in Azure.
//! The built-in endpoint's consumer groups (a management-plane resource in Azure) are read with
//! `ServiceConnect` or `RegistryRead` and made or deleted with `RegistryWrite`; so are the files
//! devices uploaded read (`/files`, module `files`).

use std::time::Duration;

use crate::ApiError;
use axum::response::Response;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use dps_hub::{ConsumerGroupError, MethodError, RegistryError};
use dps_proto::codes;
use dps_proto::model::hub::{
    CloudToDeviceMethod, ConsumerGroupList, Device, EventHubConsumerGroupInfo, ExportImportDevice, JobProperties,
    JobRequest, Module, RegistryStatistics, ServiceStatistics, Twin,
};
use dps_proto::twin_limits;
use http::StatusCode;
use serde_json::Value;

use super::{events, no_content, ok, parse_count, set_header, Ctx};
use dps_proto::rest::Route;

const REGISTRY_READ: &str = "RegistryRead";
const REGISTRY_WRITE: &str = "RegistryWrite";
const SERVICE_CONNECT: &str = "ServiceConnect";

/// Azure's direct-method response timeout bounds and default, seconds.
const METHOD_TIMEOUT_DEFAULT: u64 = 30;
const METHOD_TIMEOUT_MIN: u64 = 5;
const METHOD_TIMEOUT_MAX: u64 = 300;
/// Largest query page.
const MAX_QUERY_PAGE: usize = 1000;

fn rights(route: &Route) -> &'static [&'static str] {
    use Route::*;
    match route {
        ListDevices | QueryDevices | GetDevice(_) | DeviceStatistics | ListModules(_) | GetModule(..) => {
            &[REGISTRY_READ]
        }
        PutDevice(_) | DeleteDevice(_) | PutModule(..) | DeleteModule(..) | BulkDevices => &[REGISTRY_WRITE],
        GetTwin(_) | GetModuleTwin(..) => &[SERVICE_CONNECT, REGISTRY_READ],
        ReplaceTwin(_) | UpdateTwin(_) | ReplaceModuleTwin(..) | UpdateModuleTwin(..) => {
            &[SERVICE_CONNECT, REGISTRY_WRITE]
        }
        // Jobs update twins and call methods: the service's rights for either.
        PutJob(_) | CancelJob(_) => &[SERVICE_CONNECT, REGISTRY_WRITE],
        GetJob(_) | QueryJobs => &[SERVICE_CONNECT, REGISTRY_READ],
        // Import and export write and read the whole registry.
        CreateImportExportJob | CancelImportExportJob(_) => &[REGISTRY_WRITE],
        ListImportExportJobs | GetImportExportJob(_) => &[REGISTRY_READ],
        InvokeMethod(_)
        | InvokeModuleMethod(..)
        | MonitorEvents
        | ServiceStatistics
        | PurgeC2d(_)
        | SendC2d(_)
        | ReceiveFeedback
        | CompleteFeedback(_)
        | AbandonFeedback(_) => &[SERVICE_CONNECT],
        // Readers of the built-in endpoint may list its groups; making them is an operator's.
        ListConsumerGroups | GetConsumerGroup(_) => &[SERVICE_CONNECT, REGISTRY_READ],
        // Uploaded files are a backend's to read, as a storage account's are.
        ListFiles | GetFile(_) => &[SERVICE_CONNECT, REGISTRY_READ],
        PutConsumerGroup(_) | DeleteConsumerGroup(_) => &[REGISTRY_WRITE],
        // What a policy may then do is the policy rules' to say (no way up).
        ListPolicies(_) | GetPolicy(..) | PutPolicy(..) | DeletePolicy(..) | RegeneratePolicyKey(..) => {
            &[REGISTRY_WRITE]
        }
        other => unreachable!("not a hub route: {other:?}"),
    }
}

pub(super) async fn handle(ctx: &mut Ctx<'_>, route: Route) -> Result<Response, ApiError> {
    // The audience is judged against the names of the hub the request is for, never the Host
    // header: a token for another hub, or signed by another hub's key, is refused.
    let embedded = ctx.embedded_hub();
    let caller = ctx.authorize(&embedded.auth, embedded.hub.names(), &route, rights(&route))?;
    if let Route::ListPolicies(_)
    | Route::GetPolicy(..)
    | Route::PutPolicy(..)
    | Route::DeletePolicy(..)
    | Route::RegeneratePolicyKey(..) = route
    {
        let whose = crate::policies::Whose::Hub(embedded.host_name().to_string());
        return super::policies::handle(ctx, route, whose, caller).await;
    }

    let hub = embedded.hub.clone();
    let if_match = ctx.if_match().map(str::to_string);
    let if_match = if_match.as_deref();
    let resp = match route {
        Route::ListDevices => {
            let top = parse_count(ctx.query.get("top"), "top")?.unwrap_or(0);
            ok(&hub.list_devices(None, top).await.map_err(registry_error)?)
        }
        Route::QueryDevices => {
            let query = super::service::query_text(ctx).await?;
            let continuation = continuation(ctx)?;
            let page = parse_count(ctx.header("x-ms-max-item-count"), "x-ms-max-item-count")?
                .unwrap_or(0)
                .min(MAX_QUERY_PAGE);
            let result = hub
                .query(&query, continuation.as_deref(), page)
                .await
                .map_err(registry_error)?;
            let mut resp = ok(&result.items);
            set_header(&mut resp, "x-ms-item-type", result.item_type);
            if let Some(next) = result.continuation {
                set_header(&mut resp, "x-ms-continuation", &B64URL.encode(next.as_bytes()));
            }
            resp
        }
        Route::BulkDevices => {
            let items: Vec<ExportImportDevice> = ctx.json("ExportImportDevice list").await?;
            let result = hub.bulk_registry(items).await.map_err(registry_error)?;
            // IoT Hub answers a partly failed operation with 400 and the same body (Python
            // reads both; Node and C# raise with it).
            let status = if result.is_successful {
                StatusCode::OK
            } else {
                StatusCode::BAD_REQUEST
            };
            super::json_response(status, &result)
        }
        Route::GetDevice(id) => ok(&hub.get_device(&id).await.map_err(registry_error)?),
        Route::PutDevice(id) => {
            let mut device: Device = ctx.json("Device").await?;
            if device.device_id.is_empty() {
                device.device_id = id;
            } else if !device.device_id.eq_ignore_ascii_case(&id) {
                return Err(ApiError::invalid(format!(
                    "body deviceId '{}' does not match the device id '{id}' of the path",
                    device.device_id
                )));
            }
            ok(&hub.put_device(device, if_match).await.map_err(registry_error)?)
        }
        Route::DeleteDevice(id) => {
            hub.delete_device(&id, if_match).await.map_err(registry_error)?;
            no_content()
        }
        Route::GetTwin(id) => ok(&hub.get_twin(&id).await.map_err(registry_error)?),
        Route::ReplaceTwin(id) => {
            let twin = twin_body(ctx).await?;
            ok(&hub.replace_twin(&id, twin, if_match).await.map_err(registry_error)?)
        }
        Route::UpdateTwin(id) => {
            let twin = twin_body(ctx).await?;
            ok(&hub.patch_twin(&id, twin, if_match).await.map_err(registry_error)?)
        }
        Route::InvokeMethod(id) => invoke_method(ctx, &hub, &id, None).await?,
        Route::InvokeModuleMethod(id, module) => invoke_method(ctx, &hub, &id, Some(&module)).await?,
        Route::PutJob(id) => {
            let request: JobRequest = ctx.json("JobRequest").await?;
            ok(&hub.create_job(&id, request).await.map_err(job_error)?)
        }
        Route::GetJob(id) => ok(&hub.get_job(&id).await.map_err(job_error)?),
        Route::CancelJob(id) => {
            let _ = ctx.body().await?;
            ok(&hub.cancel_job(&id).await.map_err(job_error)?)
        }
        Route::QueryJobs => {
            let (kind, status) = (ctx.query.get("jobType"), ctx.query.get("jobStatus"));
            let jobs = hub.list_jobs(kind, status).await.map_err(job_error)?;
            let page = parse_count(ctx.header("x-ms-max-item-count"), "x-ms-max-item-count")?
                .filter(|n| *n > 0)
                .unwrap_or(100)
                .min(MAX_QUERY_PAGE);
            let skip = match continuation(ctx)? {
                None => 0,
                Some(c) => c.parse::<usize>().map_err(|_| {
                    ApiError::invalid(format!("x-ms-continuation '{c}' is not a token this hub issued"))
                })?,
            };
            let items: Vec<_> = jobs.iter().skip(skip).take(page).collect();
            let mut resp = ok(&items);
            set_header(&mut resp, "x-ms-item-type", "JobResponse");
            if skip + page < jobs.len() {
                set_header(
                    &mut resp,
                    "x-ms-continuation",
                    &B64URL.encode((skip + page).to_string()),
                );
            }
            resp
        }
        Route::CreateImportExportJob => {
            let request: JobProperties = ctx.json("JobProperties").await?;
            let hosts: Vec<String> = hub.names().map(str::to_string).collect();
            ok(&embedded
                .import_export
                .create(&hub, embedded.blobs.as_ref(), &hosts, request)
                .await?)
        }
        Route::ListImportExportJobs => ok(&embedded.import_export.list(&hub).await?),
        Route::GetImportExportJob(id) => ok(&embedded.import_export.get(&hub, &id).await?),
        Route::CancelImportExportJob(id) => ok(&embedded.import_export.cancel(&hub, &id).await?),
        Route::ListModules(id) => ok(&hub.list_modules(&id).await.map_err(registry_error)?),
        Route::GetModule(id, module) => ok(&hub.get_module(&id, &module).await.map_err(registry_error)?),
        Route::PutModule(id, module_id) => {
            let mut module: Module = ctx.json("Module").await?;
            for (name, given, path) in [
                ("deviceId", &mut module.device_id, &id),
                ("moduleId", &mut module.module_id, &module_id),
            ] {
                if given.is_empty() {
                    *given = path.clone();
                } else if !given.eq_ignore_ascii_case(path) {
                    return Err(ApiError::invalid(format!(
                        "body {name} '{given}' does not match the {name} '{path}' of the path"
                    )));
                }
            }
            ok(&hub.put_module(module, if_match).await.map_err(registry_error)?)
        }
        Route::DeleteModule(id, module) => {
            hub.delete_module(&id, &module, if_match)
                .await
                .map_err(registry_error)?;
            no_content()
        }
        Route::GetModuleTwin(id, module) => ok(&hub.get_module_twin(&id, &module).await.map_err(registry_error)?),
        Route::ReplaceModuleTwin(id, module) => {
            let twin = twin_body(ctx).await?;
            ok(&hub
                .replace_module_twin(&id, &module, twin, if_match)
                .await
                .map_err(registry_error)?)
        }
        Route::UpdateModuleTwin(id, module) => {
            let twin = twin_body(ctx).await?;
            ok(&hub
                .patch_module_twin(&id, &module, twin, if_match)
                .await
                .map_err(registry_error)?)
        }
        Route::DeviceStatistics => {
            let s = hub.statistics().await.map_err(registry_error)?;
            ok(&RegistryStatistics {
                total_device_count: s.total_device_count,
                enabled_device_count: s.enabled_device_count,
                disabled_device_count: s.disabled_device_count,
            })
        }
        Route::ServiceStatistics => {
            let s = hub.statistics().await.map_err(registry_error)?;
            ok(&ServiceStatistics {
                connected_device_count: s.connected_device_count,
            })
        }
        Route::MonitorEvents => events::stream(ctx, hub)?,
        Route::SendC2d(id) => {
            /// dps's own body: the message text and its application properties.
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Send {
                #[serde(default)]
                body: String,
                #[serde(default)]
                properties: std::collections::BTreeMap<String, String>,
            }
            let send: Send = ctx.json("cloud-to-device message").await?;
            hub.send_c2d(&id, send.body.into_bytes(), send.properties.into_iter().collect())
                .await
                .map_err(c2d_error)?;
            super::no_content()
        }
        Route::PurgeC2d(id) => {
            let purged = hub.purge_c2d(&id).await.map_err(c2d_error)?;
            ok(&serde_json::json!({ "deviceId": id, "moduleId": null, "totalMessagesPurged": purged }))
        }
        Route::ReceiveFeedback => match hub
            .receive_feedback(dps_hub::FEEDBACK_BATCH)
            .await
            .map_err(storage_failure)?
        {
            // The lock token travels as the ETag, as IoT Hub sends it for messages it locks.
            Some(batch) => {
                let mut resp = Response::new(axum::body::Body::from(batch.body()));
                set_header(&mut resp, "content-type", dps_proto::hub_amqp::FEEDBACK_CONTENT_TYPE);
                set_header(&mut resp, "etag", &format!("\"{}\"", batch.lock_token));
                resp
            }
            None => no_content(),
        },
        Route::CompleteFeedback(lock) => {
            let done = hub.complete_feedback(&lock).await.map_err(storage_failure)?;
            if !done {
                return Err(lock_lost(&lock));
            }
            no_content()
        }
        Route::AbandonFeedback(lock) => {
            let released = hub.abandon_feedback(&lock).await.map_err(storage_failure)?;
            if !released {
                return Err(lock_lost(&lock));
            }
            no_content()
        }
        Route::ListConsumerGroups => ok(&ConsumerGroupList {
            value: hub.consumer_groups().iter().map(group_info).collect(),
        }),
        Route::GetConsumerGroup(name) => match hub.consumer_group(&name) {
            Some(g) => ok(&group_info(&g)),
            None => return Err(consumer_group_error(ConsumerGroupError::NotFound { name })),
        },
        Route::PutConsumerGroup(name) => ok(&group_info(
            &hub.create_consumer_group(&name).await.map_err(consumer_group_error)?,
        )),
        Route::DeleteConsumerGroup(name) => {
            hub.delete_consumer_group(&name).await.map_err(consumer_group_error)?;
            no_content()
        }
        Route::ListFiles => {
            let device = ctx.query.get("deviceId").map(str::to_string);
            super::files::list(ctx.services, &embedded, device.as_deref()).await?
        }
        Route::GetFile(name) => super::files::read(ctx.services, &embedded, &name).await?,
        other => unreachable!("not a hub route: {other:?}"),
    };
    Ok(resp)
}

/// The request's `x-ms-continuation`, decoded (the hub issues its tokens base64url-encoded).
fn continuation(ctx: &Ctx<'_>) -> Result<Option<String>, ApiError> {
    ctx.header("x-ms-continuation")
        .map(|c| {
            B64URL
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| ApiError::invalid(format!("x-ms-continuation '{c}' is not a token this hub issued")))
        })
        .transpose()
}

/// `POST /twins/{id}[/modules/{mid}]/methods`: calls a direct method and answers the device's
/// (or module's) result, with Azure's timeout bounds.
async fn invoke_method(
    ctx: &mut Ctx<'_>,
    hub: &dps_hub::Hub,
    device_id: &str,
    module_id: Option<&str>,
) -> Result<Response, ApiError> {
    let req: CloudToDeviceMethod = ctx.json("CloudToDeviceMethod").await?;
    let secs = req
        .response_timeout_in_seconds
        .unwrap_or(METHOD_TIMEOUT_DEFAULT)
        .clamp(METHOD_TIMEOUT_MIN, METHOD_TIMEOUT_MAX);
    let result = hub
        .invoke_method_on(
            device_id,
            module_id,
            &req.method_name,
            req.payload,
            Duration::from_secs(secs),
        )
        .await;
    Ok(ok(&result.map_err(method_error)?))
}

/// Reads a `Twin` body. A section of the wrong type (`"tags": "hello"`) is refused with a message
/// naming the field, as IoT Hub's twin rules say ([`twin_limits::section_object`]); the typed
/// parse alone would only give a line and column.
async fn twin_body(ctx: &mut Ctx<'_>) -> Result<Twin, ApiError> {
    let body: Value = ctx.json("Twin").await?;
    let invalid = |e: twin_limits::TwinLimitError| ApiError::new(codes::HUB_ARGUMENT_INVALID, e.to_string());
    let properties = body.get("properties");
    twin_limits::section_object("tags", body.get("tags")).map_err(invalid)?;
    if let Some(p) = twin_limits::section_object("properties", properties).map_err(invalid)? {
        for name in ["desired", "reported"] {
            twin_limits::section_object(&format!("properties.{name}"), p.get(name)).map_err(invalid)?;
        }
    }
    serde_json::from_value(body).map_err(|e| ApiError::bad_body(format!("request body is not a valid Twin: {e}")))
}

fn group_info(g: &dps_hub::ConsumerGroup) -> EventHubConsumerGroupInfo {
    EventHubConsumerGroupInfo::new(&g.name, g.created.as_ref().map(dps_proto::timefmt::format_record))
}

fn consumer_group_error(e: ConsumerGroupError) -> ApiError {
    match &e {
        ConsumerGroupError::NotFound { .. } => ApiError::new(codes::CONSUMER_GROUP_NOT_FOUND, e.to_string()),
        ConsumerGroupError::Storage(_) => ApiError::internal(e.to_string()),
        _ => ApiError::new(codes::HUB_ARGUMENT_INVALID, e.to_string()),
    }
}

/// A hub store that failed a service-bound queue's read or write.
fn storage_failure(e: dps_hub::store::HubStoreError) -> ApiError {
    ApiError::internal(format!("hub storage: {e}"))
}

fn lock_lost(lock: &str) -> ApiError {
    ApiError::new(
        codes::MESSAGE_LOCK_LOST,
        format!("no feedback is locked with token '{lock}': it was completed already, or its lock ran out"),
    )
}

fn c2d_error(e: dps_hub::C2dError) -> ApiError {
    match &e {
        dps_hub::C2dError::DeviceNotFound { device_id } => device_not_found(device_id),
        dps_hub::C2dError::Storage { .. } => ApiError::internal(format!("hub storage: {e}")),
        _ => ApiError::invalid(e.to_string()),
    }
}

fn device_not_found(id: &str) -> ApiError {
    ApiError::new(codes::DEVICE_NOT_FOUND, format!("device '{id}' not found"))
}

fn registry_error(e: RegistryError) -> ApiError {
    match e {
        RegistryError::Invalid(m) => ApiError::invalid(m),
        RegistryError::Storage(m @ dps_hub::store::HubStoreError::Conflict { .. }) => ApiError {
            retry_after: Some(dps_core::STORE_RETRY_AFTER_SECS),
            ..ApiError::new(codes::SERVICE_UNAVAILABLE, m.to_string())
        },
        RegistryError::Storage(m) => ApiError::internal(format!("hub storage: {m}")),
        other => ApiError::new(other.code(), other.to_string()),
    }
}

fn job_error(e: dps_hub::JobError) -> ApiError {
    match e {
        dps_hub::JobError::Storage(m) => ApiError::internal(format!("hub storage: {m}")),
        other => ApiError::new(other.code(), other.to_string()),
    }
}

fn method_error(e: MethodError) -> ApiError {
    match &e {
        // Azure: 404 DeviceNotOnline (404103).
        MethodError::DeviceNotOnline { .. } => ApiError::new(codes::DEVICE_NOT_ONLINE, e.to_string()),
        MethodError::DeviceNotFound { device_id } => device_not_found(device_id),
        MethodError::ModuleNotFound { .. } => ApiError::new(codes::MODULE_NOT_FOUND, e.to_string()),
        MethodError::Timeout { .. } => ApiError::new(codes::METHOD_TIMEOUT, e.to_string()),
        MethodError::InvalidMethodName(_) => ApiError::invalid(e.to_string()),
        MethodError::Storage { .. } => ApiError::internal(format!("hub storage: {e}")),
        // A cause this server version does not know (the enum is non-exhaustive): a failure.
        _ => ApiError::internal(e.to_string()),
    }
}
