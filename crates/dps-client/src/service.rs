//! Typed clients of the two operator APIs, over the `dps_proto::model` types: [`ServiceClient`]
//! for the DPS service API (enrollments, enrollment groups, registration records, CA
//! certificates) and [`RegistryClient`] for an IoT hub's registry API (devices, twins, direct
//! methods, statistics, the telemetry stream). Both sign each request with a shared-access policy ([`RestClient`]).
//!
//! Why in the device SDK's crate (docs/decisions/0016-rest-grammar-and-operator-clients.md): they
//! share its transport, trust and error type — a 401 from enrollment CRUD and from a device
//! registration is the same [`ClientError::Service`] — and add no dependency a device build does
//! not already have.

use dps_proto::model::certificate::{CertificateBody, CertificateResponse, VerificationCertificate};
use dps_proto::model::credential_policy::{CredentialPolicy, CredentialPolicyBody, CredentialPolicyList};
use dps_proto::model::hub::{
    BulkRegistryOperationResult, CloudToDeviceMethod, CloudToDeviceMethodResult, ConsumerGroupList, Device,
    EventHubConsumerGroupInfo, ExportImportDevice, Module, RegistryStatistics, ServiceStatistics, Twin,
    UploadedFileList,
};
use dps_proto::model::revocation::{CrlImport, CrlImportResult, Revocation, RevocationBody, RevocationList};
use dps_proto::model::service::{
    AttestationMechanism, AuthorizationRule, AuthorizationRuleList, EnrollmentGroup, IndividualEnrollment,
    LinkedHubDescription, LinkedHubList, PolicyKeyType, RegenerateKeyRequest, RegistrationState,
};
use dps_proto::rest::{PolicyOwner, Route};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::events::EventStream;
use crate::rest::RestClient;
use crate::ClientError;

fn if_match(etag: Option<&str>) -> Vec<(&str, &str)> {
    etag.map(|e| vec![("if-match", e)]).unwrap_or_default()
}

fn typed<T: DeserializeOwned>(route: &Route, body: Value) -> Result<T, ClientError> {
    serde_json::from_value(body).map_err(|e| {
        ClientError::Protocol(format!(
            "the answer to {} {} does not fit its model: {e}",
            route.method(),
            route.path()
        ))
    })
}

fn body<T: Serialize>(value: &T) -> Result<Value, ClientError> {
    serde_json::to_value(value).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// Sends `route` and reads the answer as `T`.
async fn call<T: DeserializeOwned>(
    rest: &RestClient,
    route: Route,
    request: Option<Value>,
    etag: Option<&str>,
) -> Result<T, ClientError> {
    let reply = rest.call(&route, &[], request.as_ref(), &if_match(etag)).await?;
    typed(&route, reply.body)
}

/// Sends a `DELETE` route (no answer body).
async fn delete(rest: &RestClient, route: Route, etag: Option<&str>) -> Result<(), ClientError> {
    rest.call(&route, &[], None, &if_match(etag)).await.map(drop)
}

/// One page of a `GET` that pages with `x-ms-continuation`: the answer as `T`, and the token
/// of the next page when there may be more.
async fn page<T: DeserializeOwned>(
    rest: &RestClient,
    route: &Route,
    query: &[(&str, &str)],
    continuation: Option<&str>,
) -> Result<(T, Option<String>), ClientError> {
    let headers: Vec<(&str, &str)> = continuation.map(|c| ("x-ms-continuation", c)).into_iter().collect();
    let reply = rest.call(route, query, None, &headers).await?;
    let next = reply
        .headers
        .get("x-ms-continuation")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok((typed(route, reply.body)?, next))
}

/// Runs a paged query and reads every item as `T`.
async fn query<T: DeserializeOwned>(
    rest: &RestClient,
    route: Route,
    top: Option<usize>,
) -> Result<Vec<T>, ClientError> {
    let items = rest.query(&route, top).await?;
    typed(&route, Value::Array(items))
}

/// The DPS service API.
#[derive(Debug, Clone)]
pub struct ServiceClient {
    rest: RestClient,
}

impl ServiceClient {
    /// A client over `rest` (a DPS service policy).
    pub fn new(rest: RestClient) -> Self {
        Self { rest }
    }

    /// The untyped client, for requests whose JSON must round-trip fields the models do not know
    /// (an update that edits what the server returned).
    pub fn rest(&self) -> &RestClient {
        &self.rest
    }

    /// `GET /enrollments/{id}` (secrets stripped; see [`ServiceClient::enrollment_attestation`]).
    pub async fn get_enrollment(&self, id: &str) -> Result<IndividualEnrollment, ClientError> {
        call(&self.rest, Route::GetEnrollment(id.into()), None, None).await
    }

    /// `PUT /enrollments/{registrationId}`: creates, or replaces when `etag` matches.
    pub async fn put_enrollment(
        &self,
        enrollment: &IndividualEnrollment,
        etag: Option<&str>,
    ) -> Result<IndividualEnrollment, ClientError> {
        let route = Route::PutEnrollment(enrollment.registration_id.clone());
        call(&self.rest, route, Some(body(enrollment)?), etag).await
    }

    /// `DELETE /enrollments/{id}`.
    pub async fn delete_enrollment(&self, id: &str, etag: Option<&str>) -> Result<(), ClientError> {
        delete(&self.rest, Route::DeleteEnrollment(id.into()), etag).await
    }

    /// `POST /enrollments/{id}/attestationmechanism`: the attestation with its secrets.
    pub async fn enrollment_attestation(&self, id: &str) -> Result<AttestationMechanism, ClientError> {
        call(&self.rest, Route::EnrollmentAttestation(id.into()), None, None).await
    }

    /// `POST /enrollments/query`: at most `top` enrollments (all when `None`).
    pub async fn query_enrollments(&self, top: Option<usize>) -> Result<Vec<IndividualEnrollment>, ClientError> {
        query(&self.rest, Route::QueryEnrollments, top).await
    }

    /// `GET /enrollmentGroups/{id}`.
    pub async fn get_group(&self, id: &str) -> Result<EnrollmentGroup, ClientError> {
        call(&self.rest, Route::GetGroup(id.into()), None, None).await
    }

    /// `PUT /enrollmentGroups/{enrollmentGroupId}`.
    pub async fn put_group(&self, group: &EnrollmentGroup, etag: Option<&str>) -> Result<EnrollmentGroup, ClientError> {
        let route = Route::PutGroup(group.enrollment_group_id.clone());
        call(&self.rest, route, Some(body(group)?), etag).await
    }

    /// `DELETE /enrollmentGroups/{id}`.
    pub async fn delete_group(&self, id: &str, etag: Option<&str>) -> Result<(), ClientError> {
        delete(&self.rest, Route::DeleteGroup(id.into()), etag).await
    }

    /// `POST /enrollmentGroups/{id}/attestationmechanism`.
    pub async fn group_attestation(&self, id: &str) -> Result<AttestationMechanism, ClientError> {
        call(&self.rest, Route::GroupAttestation(id.into()), None, None).await
    }

    /// `POST /enrollmentGroups/query`.
    pub async fn query_groups(&self, top: Option<usize>) -> Result<Vec<EnrollmentGroup>, ClientError> {
        query(&self.rest, Route::QueryGroups, top).await
    }

    /// `GET /registrations/{id}`.
    pub async fn get_registration(&self, id: &str) -> Result<RegistrationState, ClientError> {
        call(&self.rest, Route::GetRegistration(id.into()), None, None).await
    }

    /// `DELETE /registrations/{id}`.
    pub async fn delete_registration(&self, id: &str, etag: Option<&str>) -> Result<(), ClientError> {
        delete(&self.rest, Route::DeleteRegistration(id.into()), etag).await
    }

    /// `POST /registrations/{id}/reprovision`: reprovision the device at its next registration.
    pub async fn request_reprovision(&self, id: &str) -> Result<RegistrationState, ClientError> {
        call(&self.rest, Route::ReprovisionRegistration(id.into()), None, None).await
    }

    /// `POST /registrations/{groupId}/query`: the records of a group's devices.
    pub async fn query_registrations(
        &self,
        group_id: &str,
        top: Option<usize>,
    ) -> Result<Vec<RegistrationState>, ClientError> {
        query(&self.rest, Route::QueryRegistrations(group_id.into()), top).await
    }

    /// The service's shared access policies (`/keys`).
    pub fn policies(&self) -> Policies<'_> {
        Policies {
            rest: &self.rest,
            owner: PolicyOwner::Service,
        }
    }

    /// `GET /audit`: a page of the audit trail's entries as JSON, filtered by `filter`
    /// (`since`, `until`, `registrationId`, `outcome`, `kind`, `top`), after the page whose
    /// answer gave `continuation`; with the continuation of the next page when there may be
    /// more.
    pub async fn query_audit(
        &self,
        filter: &[(&str, &str)],
        continuation: Option<&str>,
    ) -> Result<(Vec<Value>, Option<String>), ClientError> {
        page(&self.rest, &Route::QueryAudit, filter, continuation).await
    }

    /// `GET /linkedHubs`: the linked hubs, keys redacted.
    pub async fn list_linked_hubs(&self) -> Result<Vec<LinkedHubDescription>, ClientError> {
        let list: LinkedHubList = call(&self.rest, Route::ListLinkedHubs, None, None).await?;
        Ok(list.value)
    }

    /// `GET /linkedHubs/{name}`.
    pub async fn get_linked_hub(&self, name: &str) -> Result<LinkedHubDescription, ClientError> {
        call(&self.rest, Route::GetLinkedHub(name.into()), None, None).await
    }

    /// `PUT /linkedHubs/{name}`: links the hub or changes its settings (an empty connection
    /// string keeps the stored one).
    pub async fn put_linked_hub(
        &self,
        name: &str,
        hub: &LinkedHubDescription,
    ) -> Result<LinkedHubDescription, ClientError> {
        call(&self.rest, Route::PutLinkedHub(name.into()), Some(body(hub)?), None).await
    }

    /// `DELETE /linkedHubs/{name}`.
    pub async fn delete_linked_hub(&self, name: &str) -> Result<(), ClientError> {
        delete(&self.rest, Route::DeleteLinkedHub(name.into()), None).await
    }

    /// `GET /credentialPolicies`.
    pub async fn list_credential_policies(&self) -> Result<Vec<CredentialPolicy>, ClientError> {
        let list: CredentialPolicyList = call(&self.rest, Route::ListCredentialPolicies, None, None).await?;
        Ok(list.value)
    }

    /// `GET /credentialPolicies/{name}`.
    pub async fn get_credential_policy(&self, name: &str) -> Result<CredentialPolicy, ClientError> {
        call(&self.rest, Route::GetCredentialPolicy(name.into()), None, None).await
    }

    /// `PUT /credentialPolicies/{name}`: creates the policy (and its CA) or changes it.
    pub async fn put_credential_policy(
        &self,
        name: &str,
        policy: &CredentialPolicyBody,
        etag: Option<&str>,
    ) -> Result<CredentialPolicy, ClientError> {
        call(
            &self.rest,
            Route::PutCredentialPolicy(name.into()),
            Some(body(policy)?),
            etag,
        )
        .await
    }

    /// `DELETE /credentialPolicies/{name}`.
    pub async fn delete_credential_policy(&self, name: &str, etag: Option<&str>) -> Result<(), ClientError> {
        delete(&self.rest, Route::DeleteCredentialPolicy(name.into()), etag).await
    }

    /// `POST /revocations`: revokes a certificate.
    pub async fn add_revocation(&self, revocation: &RevocationBody) -> Result<Revocation, ClientError> {
        call(&self.rest, Route::AddRevocation, Some(body(revocation)?), None).await
    }

    /// `GET /revocations`, every page.
    pub async fn list_revocations(&self) -> Result<Vec<Revocation>, ClientError> {
        let mut all = Vec::new();
        let mut continuation: Option<String> = None;
        loop {
            let (list, next): (RevocationList, _) =
                page(&self.rest, &Route::ListRevocations, &[], continuation.as_deref()).await?;
            all.extend(list.value);
            match next {
                Some(c) => continuation = Some(c),
                None => return Ok(all),
            }
        }
    }

    /// `GET /revocations/{id}`.
    pub async fn get_revocation(&self, id: &str) -> Result<Revocation, ClientError> {
        call(&self.rest, Route::GetRevocation(id.into()), None, None).await
    }

    /// `DELETE /revocations/{id}`.
    pub async fn delete_revocation(&self, id: &str) -> Result<(), ClientError> {
        delete(&self.rest, Route::DeleteRevocation(id.into()), None).await
    }

    /// `POST /crls`: imports a CA's revocation list.
    pub async fn import_crl(&self, crl: &CrlImport) -> Result<CrlImportResult, ClientError> {
        call(&self.rest, Route::ImportCrl, Some(body(crl)?), None).await
    }

    /// `GET /certificates`.
    pub async fn list_certificates(&self) -> Result<Vec<CertificateResponse>, ClientError> {
        call(&self.rest, Route::ListCertificates, None, None).await
    }

    /// `GET /certificates/{name}`.
    pub async fn get_certificate(&self, name: &str) -> Result<CertificateResponse, ClientError> {
        call(&self.rest, Route::GetCertificate(name.into()), None, None).await
    }

    /// `PUT /certificates/{name}`.
    pub async fn put_certificate(
        &self,
        name: &str,
        certificate: &CertificateBody,
        etag: Option<&str>,
    ) -> Result<CertificateResponse, ClientError> {
        call(
            &self.rest,
            Route::PutCertificate(name.into()),
            Some(body(certificate)?),
            etag,
        )
        .await
    }

    /// `DELETE /certificates/{name}`.
    pub async fn delete_certificate(&self, name: &str, etag: Option<&str>) -> Result<(), ClientError> {
        delete(&self.rest, Route::DeleteCertificate(name.into()), etag).await
    }

    /// `POST /certificates/{name}/generateVerificationCode`.
    pub async fn generate_verification_code(
        &self,
        name: &str,
        etag: Option<&str>,
    ) -> Result<CertificateResponse, ClientError> {
        call(&self.rest, Route::GenerateVerificationCode(name.into()), None, etag).await
    }

    /// `POST /certificates/{name}/verify`: proof of possession.
    pub async fn verify_certificate(
        &self,
        name: &str,
        proof: &VerificationCertificate,
        etag: Option<&str>,
    ) -> Result<CertificateResponse, ClientError> {
        call(
            &self.rest,
            Route::VerifyCertificate(name.into()),
            Some(body(proof)?),
            etag,
        )
        .await
    }
}

/// The shared access policies of the service or of a hub, through the client's own policy
/// (which needs `ServiceConfig` or `RegistryWrite`, and holds every right it grants).
pub struct Policies<'a> {
    rest: &'a RestClient,
    owner: PolicyOwner,
}

impl Policies<'_> {
    /// `GET /keys`: every policy (keys absent for those holding rights the client lacks).
    pub async fn list(&self) -> Result<Vec<AuthorizationRule>, ClientError> {
        let list: AuthorizationRuleList = call(self.rest, Route::ListPolicies(self.owner), None, None).await?;
        Ok(list.value)
    }

    /// `GET /keys/{name}`.
    pub async fn get(&self, name: &str) -> Result<AuthorizationRule, ClientError> {
        call(self.rest, Route::GetPolicy(self.owner, name.into()), None, None).await
    }

    /// `PUT /keys/{name}`: creates the policy, or changes what `rule` names (absent rights and
    /// keys are kept; a new policy's absent keys are made).
    pub async fn put(&self, name: &str, rule: &AuthorizationRule) -> Result<AuthorizationRule, ClientError> {
        call(
            self.rest,
            Route::PutPolicy(self.owner, name.into()),
            Some(body(rule)?),
            None,
        )
        .await
    }

    /// `DELETE /keys/{name}`.
    pub async fn delete(&self, name: &str) -> Result<(), ClientError> {
        delete(self.rest, Route::DeletePolicy(self.owner, name.into()), None).await
    }

    /// `POST /keys/{name}/regenerateKey`: a fresh primary or secondary key, or the two swapped.
    pub async fn regenerate_key(&self, name: &str, key_type: PolicyKeyType) -> Result<AuthorizationRule, ClientError> {
        let request = body(&RegenerateKeyRequest { key_type })?;
        call(
            self.rest,
            Route::RegeneratePolicyKey(self.owner, name.into()),
            Some(request),
            None,
        )
        .await
    }
}

/// An IoT hub's registry API.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    rest: RestClient,
}

impl RegistryClient {
    /// A client over `rest` (a hub policy).
    pub fn new(rest: RestClient) -> Self {
        Self { rest }
    }

    /// The untyped client, for requests the typed calls do not cover.
    pub fn rest(&self) -> &RestClient {
        &self.rest
    }

    /// `GET /devices?top=N`.
    pub async fn list_devices(&self, top: usize) -> Result<Vec<Device>, ClientError> {
        let top = top.to_string();
        let route = Route::ListDevices;
        let reply = self.rest.call(&route, &[("top", &top)], None, &[]).await?;
        typed(&route, reply.body)
    }

    /// `GET /devices/{id}`.
    pub async fn get_device(&self, id: &str) -> Result<Device, ClientError> {
        call(&self.rest, Route::GetDevice(id.into()), None, None).await
    }

    /// `PUT /devices/{deviceId}`.
    pub async fn put_device(&self, device: &Device, etag: Option<&str>) -> Result<Device, ClientError> {
        let route = Route::PutDevice(device.device_id.clone());
        call(&self.rest, route, Some(body(device)?), etag).await
    }

    /// `DELETE /devices/{id}`.
    pub async fn delete_device(&self, id: &str, etag: Option<&str>) -> Result<(), ClientError> {
        delete(&self.rest, Route::DeleteDevice(id.into()), etag).await
    }

    /// `GET /twins/{id}`.
    pub async fn get_twin(&self, id: &str) -> Result<Twin, ClientError> {
        call(&self.rest, Route::GetTwin(id.into()), None, None).await
    }

    /// `PATCH /twins/{id}`: merges `patch` (tags, desired properties; `null` deletes).
    pub async fn update_twin(&self, id: &str, patch: &Twin, etag: Option<&str>) -> Result<Twin, ClientError> {
        call(&self.rest, Route::UpdateTwin(id.into()), Some(body(patch)?), etag).await
    }

    /// `POST /twins/{id}/methods`: calls a direct method on the connected device `id` and returns
    /// its answer. A device that is not connected is [`ClientError::Service`] 404103, one that
    /// does not answer in time 504101.
    pub async fn invoke_method(
        &self,
        id: &str,
        method: &CloudToDeviceMethod,
    ) -> Result<CloudToDeviceMethodResult, ClientError> {
        call(&self.rest, Route::InvokeMethod(id.into()), Some(body(method)?), None).await
    }

    /// `POST /devices/query`: every item of the answer to `query` (IoT Hub's query language),
    /// page by page, at most `top`: twins, or the rows of a projection or an aggregate.
    pub async fn query(&self, query: &str, top: Option<usize>) -> Result<Vec<Value>, ClientError> {
        self.rest.query_text(&Route::QueryDevices, query, top).await
    }

    /// `GET /devices/{id}/modules`: the device's module identities.
    pub async fn list_modules(&self, device_id: &str) -> Result<Vec<Module>, ClientError> {
        call(&self.rest, Route::ListModules(device_id.into()), None, None).await
    }

    /// `GET /devices/{id}/modules/{mid}`.
    pub async fn get_module(&self, device_id: &str, module_id: &str) -> Result<Module, ClientError> {
        call(
            &self.rest,
            Route::GetModule(device_id.into(), module_id.into()),
            None,
            None,
        )
        .await
    }

    /// `PUT /devices/{id}/modules/{mid}`: creates the module (`etag` `None`) or replaces it.
    pub async fn put_module(&self, module: &Module, etag: Option<&str>) -> Result<Module, ClientError> {
        let route = Route::PutModule(module.device_id.clone(), module.module_id.clone());
        call(&self.rest, route, Some(body(module)?), etag).await
    }

    /// `DELETE /devices/{id}/modules/{mid}`.
    pub async fn delete_module(&self, device_id: &str, module_id: &str, etag: Option<&str>) -> Result<(), ClientError> {
        delete(
            &self.rest,
            Route::DeleteModule(device_id.into(), module_id.into()),
            etag,
        )
        .await
    }

    /// `POST /devices`: a bulk registry operation (at most 100 items). A partly failed one is
    /// answered (400) with the same result as a successful one, and returned as such.
    pub async fn bulk(&self, items: &[ExportImportDevice]) -> Result<BulkRegistryOperationResult, ClientError> {
        let route = Route::BulkDevices;
        match self.rest.call(&route, &[], Some(&body(&items)?), &[]).await {
            Ok(reply) => typed(&route, reply.body),
            // Not a DPS error body: the message is the raw result.
            Err(ClientError::Service {
                status: 400, message, ..
            }) if serde_json::from_str::<BulkRegistryOperationResult>(&message).is_ok() => {
                serde_json::from_str(&message).map_err(|e| ClientError::Protocol(e.to_string()))
            }
            Err(e) => Err(e),
        }
    }

    /// `GET /statistics/devices`: how many device identities the registry holds, by status.
    pub async fn device_statistics(&self) -> Result<RegistryStatistics, ClientError> {
        call(&self.rest, Route::DeviceStatistics, None, None).await
    }

    /// `GET /statistics/service`: how many devices are connected now.
    pub async fn service_statistics(&self) -> Result<ServiceStatistics, ClientError> {
        call(&self.rest, Route::ServiceStatistics, None, None).await
    }

    /// `GET /eventHubEndpoints/events/consumerGroups`: the built-in endpoint's consumer groups,
    /// `$Default` first.
    pub async fn list_consumer_groups(&self) -> Result<ConsumerGroupList, ClientError> {
        call(&self.rest, Route::ListConsumerGroups, None, None).await
    }

    /// `GET /eventHubEndpoints/events/consumerGroups/{name}`.
    pub async fn get_consumer_group(&self, name: &str) -> Result<EventHubConsumerGroupInfo, ClientError> {
        call(&self.rest, Route::GetConsumerGroup(name.into()), None, None).await
    }

    /// `PUT /eventHubEndpoints/events/consumerGroups/{name}`: creates the group (a group that
    /// exists is returned as it is).
    pub async fn create_consumer_group(&self, name: &str) -> Result<EventHubConsumerGroupInfo, ClientError> {
        call(&self.rest, Route::PutConsumerGroup(name.into()), None, None).await
    }

    /// `GET /files[?deviceId=…]`: the files devices uploaded, by name.
    pub async fn list_files(&self, device_id: Option<&str>) -> Result<UploadedFileList, ClientError> {
        let route = Route::ListFiles;
        let query: Vec<(&str, &str)> = device_id.map(|d| ("deviceId", d)).into_iter().collect();
        let reply = self.rest.call(&route, &query, None, &[]).await?;
        typed(&route, reply.body)
    }

    /// `GET /files/{name}`: an uploaded file, as the answer to read its bytes from.
    pub async fn download_file(&self, name: &str) -> Result<reqwest::Response, ClientError> {
        self.rest.open_stream(&Route::GetFile(name.to_string()), &[]).await
    }

    /// The hub's shared access policies (`/iotHubKeys`).
    pub fn policies(&self) -> Policies<'_> {
        Policies {
            rest: &self.rest,
            owner: PolicyOwner::Hub,
        }
    }

    /// `DELETE /eventHubEndpoints/events/consumerGroups/{name}`.
    pub async fn delete_consumer_group(&self, name: &str) -> Result<(), ClientError> {
        delete(&self.rest, Route::DeleteConsumerGroup(name.into()), None).await
    }

    /// `GET /messages/events`: the hub's device-to-cloud messages as they arrive, only those of
    /// `device_id` when given; with `from_sequence`, first the retained ones after that sequence
    /// number (`0`: all retained). Read them with [`EventStream::next`].
    pub async fn monitor_events(
        &self,
        device_id: Option<&str>,
        from_sequence: Option<u64>,
    ) -> Result<EventStream, ClientError> {
        let from = from_sequence.map(|n| n.to_string());
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(d) = device_id {
            query.push(("deviceId", d));
        }
        if let Some(n) = &from {
            query.push(("from-sequence", n));
        }
        let resp = self.rest.open_stream(&Route::MonitorEvents, &query).await?;
        Ok(EventStream::new(resp))
    }
}
