//! Routes: request path → [`Resource`], then (method, resource) → [`Route`]; and back, a route →
//! method and canonical path.
//!
//! Rules every SDK needs (service-api.md §1):
//! - literal segments match case-insensitively (Node calls `/enrollmentgroups/...`);
//! - one trailing slash is tolerated (Node's bulk call is `POST /enrollments/?api-version=...`);
//! - `{id}` segments are percent-decoded (C lower-case-hex-encodes ids, Python encodes `:`);
//! - C# sends relative paths, which arrive as ordinary absolute paths after resolution.
//!
//! The path shape decides the resource; a known resource with a method it does not support is a
//! 405, an unknown path a 404.

use http::Method;

use super::encoding::{encode_segment, segments};
use super::query::{QueryParams, API_VERSION};
use crate::api_version;

/// A path the server knows, with its decoded ids.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resource {
    /// `/{idScope}/registrations/{registrationId}/register`
    DeviceRegister {
        /// ID scope.
        scope: String,
        /// Registration id.
        registration_id: String,
    },
    /// `/{idScope}/registrations/{registrationId}/operations/{operationId}`
    DeviceOperation {
        /// ID scope.
        scope: String,
        /// Registration id.
        registration_id: String,
        /// Operation id.
        operation_id: String,
    },
    /// `/{idScope}/registrations/{registrationId}`
    DeviceRegistration {
        /// ID scope.
        scope: String,
        /// Registration id.
        registration_id: String,
    },
    /// `/enrollments` (bulk)
    Enrollments,
    /// `/enrollments/query` (also `/enrollments/{id}` with id `query` for non-POST methods)
    EnrollmentQuery,
    /// `/enrollments/{id}`
    Enrollment(String),
    /// `/enrollments/{id}/attestationmechanism`
    EnrollmentAttestation(String),
    /// `/enrollmentGroups` (bulk)
    Groups,
    /// `/enrollmentGroups/query`
    GroupQuery,
    /// `/enrollmentGroups/{id}`
    Group(String),
    /// `/enrollmentGroups/{id}/attestationmechanism`
    GroupAttestation(String),
    /// `/registrations/{id}`
    Registration(String),
    /// `/registrations/{groupId}/query`
    RegistrationQuery(String),
    /// `/registrations/{id}/reprovision`
    RegistrationReprovision(String),
    /// `/certificates` (list)
    Certificates,
    /// `/certificates/{name}`
    Certificate(String),
    /// `/certificates/{name}/generateVerificationCode`
    CertificateVerificationCode(String),
    /// `/certificates/{name}/verify`
    CertificateVerify(String),
    /// `/credentialPolicies` (list)
    CredentialPolicies,
    /// `/credentialPolicies/{name}`
    CredentialPolicy(String),
    /// `/revocations` (list, add)
    Revocations,
    /// `/revocations/{id}`
    Revocation(String),
    /// `/crls` (import)
    Crls,
    /// `/crl/{policy}` (a credential policy's revocation list, served to anyone)
    PolicyCrl(String),
    /// `/linkedHubs` (list)
    LinkedHubs,
    /// `/linkedHubs/{hostName}`
    LinkedHub(String),
    /// `/audit`
    Audit,
    /// `/keys`, `/iotHubKeys` (list)
    Policies(PolicyOwner),
    /// `/keys/{keyName}`, `/iotHubKeys/{keyName}`
    Policy(PolicyOwner, String),
    /// `/keys/{keyName}/regenerateKey`, `/iotHubKeys/{keyName}/regenerateKey`
    PolicyKeyRenewal(PolicyOwner, String),
    /// `/devices` (list)
    Devices,
    /// `/devices/query`
    DeviceQuery,
    /// `/devices/{id}`
    Device(String),
    /// `/twins/{id}`
    Twin(String),
    /// `/twins/{id}/methods`
    TwinMethods(String),
    /// `/jobs` (import and export jobs)
    ImportExportJobs,
    /// `/jobs/create`
    ImportExportCreate,
    /// `/jobs/{id}`
    ImportExportJob(String),
    /// `/jobs/v2/query` (also `/jobs/v2/{id}` with id `query` for PUT)
    JobQuery(String),
    /// `/jobs/v2/{id}`
    Job(String),
    /// `/jobs/v2/{id}/cancel`
    JobCancel(String),
    /// `/devices/{id}/modules`
    DeviceModules(String),
    /// `/devices/{id}/modules/{moduleId}`
    Module(String, String),
    /// `/twins/{id}/modules/{moduleId}`
    ModuleTwin(String, String),
    /// `/twins/{id}/modules/{moduleId}/methods`
    ModuleTwinMethods(String, String),
    /// `/devices/{id}/commands` (the device's cloud-to-device queue)
    DeviceCommands(String),
    /// `/devices/{id}/messages/events` (a device's telemetry over HTTPS)
    DeviceEvents(String),
    /// `/devices/{id}/messages/deviceBound` (a device's next cloud-to-device message)
    DeviceBound(String),
    /// `/devices/{id}/messages/deviceBound/{lockToken}`
    DeviceBoundLock(String, String),
    /// `/devices/{id}/messages/deviceBound/{lockToken}/abandon`
    DeviceBoundAbandon(String, String),
    /// `/devices/{id}/files`
    DeviceFiles(String),
    /// `/devices/{id}/files/notifications[/{correlationId}]`
    DeviceFileNotifications(String, Option<String>),
    /// `/{container}/{blob…}` of the file upload blob endpoint
    Blob(String, String),
    /// `/files`: the files devices uploaded
    Files,
    /// `/files/{blob…}`: one uploaded file
    File(String),
    /// `/messages/events` (telemetry stream for `dps hub monitor-events`)
    Events,
    /// `/messages/serviceBound/feedback`
    Feedback,
    /// `/messages/serviceBound/feedback/{lockToken}`
    FeedbackLock(String),
    /// `/messages/serviceBound/feedback/{lockToken}/abandon`
    FeedbackAbandon(String),
    /// `/statistics/devices`
    DeviceStatistics,
    /// `/statistics/service`
    ServiceStatistics,
    /// `/eventHubEndpoints/events/consumerGroups`
    ConsumerGroups,
    /// `/eventHubEndpoints/events/consumerGroups/{name}`
    ConsumerGroup(String),
    /// `/$iothub/websocket` (MQTT and AMQP over WebSockets)
    MqttWebSocket,
}

/// Which API a resource belongs to: decides authorization and whether `api-version` is required.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// Device registration API (SAS or TLS client certificate, judged by the engine).
    Device,
    /// The embedded hub's device API (device SAS or TLS client certificate, judged by the hub).
    HubDevice,
    /// The file upload blob endpoint (a Storage service SAS in the query; no `api-version`).
    Blob,
    /// DPS service API (`dps_auth` policies).
    Service,
    /// Embedded hub registry API (`hub_auth` policies).
    Hub,
    /// The credential policies' revocation lists, served to anyone (a CRL distribution point:
    /// no credential, no `api-version`).
    Crl,
}

/// A resource and a method it supports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `PUT /{scope}/registrations/{id}/register`
    Register {
        /// ID scope.
        scope: String,
        /// Registration id.
        registration_id: String,
    },
    /// `GET /{scope}/registrations/{id}/operations/{op}`
    OperationStatus {
        /// ID scope.
        scope: String,
        /// Registration id.
        registration_id: String,
        /// Operation id.
        operation_id: String,
    },
    /// `POST /{scope}/registrations/{id}`
    RegistrationStatus {
        /// ID scope.
        scope: String,
        /// Registration id.
        registration_id: String,
    },
    /// `GET /enrollments/{id}`
    GetEnrollment(String),
    /// `PUT /enrollments/{id}`
    PutEnrollment(String),
    /// `DELETE /enrollments/{id}`
    DeleteEnrollment(String),
    /// `POST /enrollments/{id}/attestationmechanism`
    EnrollmentAttestation(String),
    /// `POST /enrollments/query`
    QueryEnrollments,
    /// `POST /enrollments`
    BulkEnrollments,
    /// `GET /enrollmentGroups/{id}`
    GetGroup(String),
    /// `PUT /enrollmentGroups/{id}`
    PutGroup(String),
    /// `DELETE /enrollmentGroups/{id}`
    DeleteGroup(String),
    /// `POST /enrollmentGroups/{id}/attestationmechanism`
    GroupAttestation(String),
    /// `POST /enrollmentGroups/query`
    QueryGroups,
    /// `POST /enrollmentGroups`
    BulkGroups,
    /// `GET /registrations/{id}`
    GetRegistration(String),
    /// `DELETE /registrations/{id}`
    DeleteRegistration(String),
    /// `POST /registrations/{groupId}/query`
    QueryRegistrations(String),
    /// `POST /registrations/{id}/reprovision`: reprovision the device at its next registration
    /// (dps's own operator action).
    ReprovisionRegistration(String),
    /// `GET /certificates`
    ListCertificates,
    /// `GET /certificates/{name}`
    GetCertificate(String),
    /// `PUT /certificates/{name}`
    PutCertificate(String),
    /// `DELETE /certificates/{name}`
    DeleteCertificate(String),
    /// `POST /certificates/{name}/generateVerificationCode`
    GenerateVerificationCode(String),
    /// `POST /certificates/{name}/verify`
    VerifyCertificate(String),
    /// `GET /credentialPolicies`: how certificates are issued to devices that send a CSR
    /// (dps's own resource).
    ListCredentialPolicies,
    /// `GET /credentialPolicies/{name}`
    GetCredentialPolicy(String),
    /// `PUT /credentialPolicies/{name}`: creates a policy (and its issuing CA), or changes one.
    PutCredentialPolicy(String),
    /// `DELETE /credentialPolicies/{name}`
    DeleteCredentialPolicy(String),
    /// `GET /revocations`: revoked certificates (dps's own resource).
    ListRevocations,
    /// `POST /revocations`: revokes a certificate.
    AddRevocation,
    /// `GET /revocations/{id}`
    GetRevocation(String),
    /// `DELETE /revocations/{id}`
    DeleteRevocation(String),
    /// `POST /crls`: imports a CA's revocation list.
    ImportCrl,
    /// `GET /crl/{policy}`: a credential policy's revocation list (DER), for anyone.
    GetPolicyCrl(String),
    /// `GET /linkedHubs`: the IoT hubs devices may be assigned to (dps's own resource; Azure
    /// keeps them in the provisioning service's ARM resource, `properties.iotHubs`).
    ListLinkedHubs,
    /// `GET /linkedHubs/{hostName}`
    GetLinkedHub(String),
    /// `PUT /linkedHubs/{hostName}`: links a hub, or changes a linked hub's settings.
    PutLinkedHub(String),
    /// `DELETE /linkedHubs/{hostName}`
    DeleteLinkedHub(String),
    /// `GET /audit`: the audit trail's entries, filtered (dps's own resource).
    QueryAudit,
    /// `GET /keys` (the service's) or `GET /iotHubKeys` (a hub's): every shared access policy
    /// (dps's own resource; Azure keeps them in the ARM resource, where these are its paths).
    ListPolicies(PolicyOwner),
    /// `GET /keys/{keyName}`, `GET /iotHubKeys/{keyName}`
    GetPolicy(PolicyOwner, String),
    /// `PUT /keys/{keyName}`: creates the policy, or changes its rights or keys.
    PutPolicy(PolicyOwner, String),
    /// `DELETE /keys/{keyName}`
    DeletePolicy(PolicyOwner, String),
    /// `POST /keys/{keyName}/regenerateKey`: a fresh primary or secondary key, or the two
    /// swapped.
    RegeneratePolicyKey(PolicyOwner, String),
    /// `GET /devices?top=N`
    ListDevices,
    /// `POST /devices/query`
    QueryDevices,
    /// `POST /devices`: a bulk registry operation (up to 100 identities).
    BulkDevices,
    /// `GET /devices/{id}`
    GetDevice(String),
    /// `PUT /devices/{id}`
    PutDevice(String),
    /// `DELETE /devices/{id}`
    DeleteDevice(String),
    /// `GET /twins/{id}`
    GetTwin(String),
    /// `PUT /twins/{id}`
    ReplaceTwin(String),
    /// `PATCH /twins/{id}`
    UpdateTwin(String),
    /// `POST /twins/{id}/methods`
    InvokeMethod(String),
    /// `POST /jobs/create`: start an import or export job.
    CreateImportExportJob,
    /// `GET /jobs`: the import and export jobs.
    ListImportExportJobs,
    /// `GET /jobs/{id}`
    GetImportExportJob(String),
    /// `DELETE /jobs/{id}`: cancel an import or export job.
    CancelImportExportJob(String),
    /// `PUT /jobs/v2/{id}`: schedule a job.
    PutJob(String),
    /// `GET /jobs/v2/{id}`
    GetJob(String),
    /// `POST /jobs/v2/{id}/cancel`
    CancelJob(String),
    /// `GET /jobs/v2/query?jobType=&jobStatus=`
    QueryJobs,
    /// `GET /devices/{id}/modules`: the device's modules.
    ListModules(String),
    /// `GET /devices/{id}/modules/{moduleId}`
    GetModule(String, String),
    /// `PUT /devices/{id}/modules/{moduleId}`
    PutModule(String, String),
    /// `DELETE /devices/{id}/modules/{moduleId}`
    DeleteModule(String, String),
    /// `GET /twins/{id}/modules/{moduleId}`
    GetModuleTwin(String, String),
    /// `PUT /twins/{id}/modules/{moduleId}`
    ReplaceModuleTwin(String, String),
    /// `PATCH /twins/{id}/modules/{moduleId}`
    UpdateModuleTwin(String, String),
    /// `POST /twins/{id}/modules/{moduleId}/methods`
    InvokeModuleMethod(String, String),
    /// `DELETE /devices/{id}/commands`: purge the device's cloud-to-device queue.
    PurgeC2d(String),
    /// `GET /messages/events`
    MonitorEvents,
    /// `GET /messages/serviceBound/feedback`: the next batch of cloud-to-device feedback.
    ReceiveFeedback,
    /// `DELETE /messages/serviceBound/feedback/{lockToken}`: complete a batch.
    CompleteFeedback(String),
    /// `POST /messages/serviceBound/feedback/{lockToken}/abandon`: read a batch again later.
    AbandonFeedback(String),
    /// `GET /statistics/devices`
    DeviceStatistics,
    /// `GET /statistics/service`
    ServiceStatistics,
    /// `POST /devices/{id}/messages/events`: a device's telemetry (one message, or a batch).
    SendDeviceEvent(String),
    /// `GET /devices/{id}/messages/deviceBound`: the device's next cloud-to-device message,
    /// locked for it.
    ReceiveC2d(String),
    /// `POST /devices/{id}/messages/deviceBound`: a backend sends the device a cloud-to-device
    /// message (dps's own: Azure takes these over AMQP only); `{"body", "properties"}`.
    SendC2d(String),
    /// `DELETE /devices/{id}/messages/deviceBound/{lockToken}`: complete the message (reject it
    /// with the query parameter `reject`).
    CompleteC2d {
        /// Device id.
        device_id: String,
        /// The lock token (the message's `ETag`).
        lock_token: String,
    },
    /// `POST /devices/{id}/messages/deviceBound/{lockToken}/abandon`: give the message back.
    AbandonC2d {
        /// Device id.
        device_id: String,
        /// The lock token.
        lock_token: String,
    },
    /// `POST /devices/{id}/files`: start a file upload (a SAS for a blob).
    CreateFileUpload(String),
    /// `POST /devices/{id}/files/notifications[/{correlationId}]`: report a file upload's outcome
    /// (Node puts the correlation id in the path, the others in the body).
    CompleteFileUpload {
        /// Device id.
        device_id: String,
        /// The correlation id, when in the path.
        correlation_id: Option<String>,
    },
    /// `PUT /{container}/{blob}`: Put Blob, Put Block (`comp=block`) or Put Block List
    /// (`comp=blocklist`) on the file upload blob endpoint.
    PutBlob {
        /// The container.
        container: String,
        /// The blob name (`/`-separated, decoded).
        blob: String,
    },
    /// `GET` (or `HEAD`) `/{container}/{blob}`: read a blob (or its properties).
    GetBlob {
        /// The container.
        container: String,
        /// The blob name.
        blob: String,
    },
    /// `GET /files[?deviceId=…]`: the files devices uploaded (dps's own resource: in Azure they
    /// are in the storage account).
    ListFiles,
    /// `GET /files/{deviceId}/{name}`: the bytes of an uploaded file.
    GetFile(String),
    /// `GET /eventHubEndpoints/events/consumerGroups`: the built-in endpoint's consumer groups
    /// (the shape of Azure's management API, whose path this follows).
    ListConsumerGroups,
    /// `GET /eventHubEndpoints/events/consumerGroups/{name}`
    GetConsumerGroup(String),
    /// `PUT /eventHubEndpoints/events/consumerGroups/{name}`: create (idempotent).
    PutConsumerGroup(String),
    /// `DELETE /eventHubEndpoints/events/consumerGroups/{name}`
    DeleteConsumerGroup(String),
    /// `GET /$iothub/websocket` with a WebSocket upgrade: the device MQTT or AMQP endpoint, tunnelled.
    MqttWebSocket,
}

/// Whose shared access policies a policy route is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyOwner {
    /// The provisioning service's (`/keys`, on the service API).
    Service,
    /// The IoT hub's the request is for (`/iotHubKeys`, on the hub's API).
    Hub,
}

impl PolicyOwner {
    /// The collection's path segment.
    fn collection(self) -> &'static str {
        match self {
            PolicyOwner::Service => "keys",
            PolicyOwner::Hub => "iotHubKeys",
        }
    }
}

impl Route {
    /// The API the route belongs to.
    pub fn api(&self) -> Api {
        use Route::*;
        match self {
            Register { .. } | OperationStatus { .. } | RegistrationStatus { .. } | MqttWebSocket => Api::Device,
            SendDeviceEvent(_)
            | ReceiveC2d(_)
            | CompleteC2d { .. }
            | AbandonC2d { .. }
            | CreateFileUpload(_)
            | CompleteFileUpload { .. } => Api::HubDevice,
            PutBlob { .. } | GetBlob { .. } => Api::Blob,
            GetEnrollment(_)
            | PutEnrollment(_)
            | DeleteEnrollment(_)
            | EnrollmentAttestation(_)
            | QueryEnrollments
            | BulkEnrollments
            | GetGroup(_)
            | PutGroup(_)
            | DeleteGroup(_)
            | GroupAttestation(_)
            | QueryGroups
            | BulkGroups
            | GetRegistration(_)
            | DeleteRegistration(_)
            | QueryRegistrations(_)
            | ReprovisionRegistration(_)
            | ListCertificates
            | GetCertificate(_)
            | PutCertificate(_)
            | DeleteCertificate(_)
            | GenerateVerificationCode(_)
            | VerifyCertificate(_)
            | ListCredentialPolicies
            | GetCredentialPolicy(_)
            | PutCredentialPolicy(_)
            | DeleteCredentialPolicy(_)
            | ListRevocations
            | AddRevocation
            | GetRevocation(_)
            | DeleteRevocation(_)
            | ImportCrl
            | ListLinkedHubs
            | GetLinkedHub(_)
            | PutLinkedHub(_)
            | DeleteLinkedHub(_)
            | QueryAudit => Api::Service,
            GetPolicyCrl(_) => Api::Crl,
            ListPolicies(owner)
            | GetPolicy(owner, _)
            | PutPolicy(owner, _)
            | DeletePolicy(owner, _)
            | RegeneratePolicyKey(owner, _) => match owner {
                PolicyOwner::Service => Api::Service,
                PolicyOwner::Hub => Api::Hub,
            },
            ListDevices
            | QueryDevices
            | BulkDevices
            | SendC2d(_)
            | GetDevice(_)
            | PutDevice(_)
            | DeleteDevice(_)
            | GetTwin(_)
            | ReplaceTwin(_)
            | UpdateTwin(_)
            | InvokeMethod(_)
            | ListModules(_)
            | GetModule(..)
            | PutModule(..)
            | DeleteModule(..)
            | GetModuleTwin(..)
            | ReplaceModuleTwin(..)
            | UpdateModuleTwin(..)
            | InvokeModuleMethod(..)
            | PutJob(_)
            | GetJob(_)
            | CancelJob(_)
            | QueryJobs
            | CreateImportExportJob
            | ListImportExportJobs
            | GetImportExportJob(_)
            | CancelImportExportJob(_)
            | MonitorEvents
            | DeviceStatistics
            | ServiceStatistics
            | PurgeC2d(_)
            | ReceiveFeedback
            | CompleteFeedback(_)
            | AbandonFeedback(_)
            | ListConsumerGroups
            | GetConsumerGroup(_)
            | PutConsumerGroup(_)
            | DeleteConsumerGroup(_)
            | ListFiles
            | GetFile(_) => Api::Hub,
        }
    }
}

impl Api {
    /// The `api-version` values the server accepts on this API.
    pub fn supported(self) -> &'static [&'static str] {
        match self {
            Self::Device => api_version::DEVICE,
            Self::Service => api_version::SERVICE,
            Self::Hub | Self::HubDevice => api_version::HUB,
            // Storage versions travel in `x-ms-version`; none is required.
            Self::Blob => &[crate::blob_storage::STORAGE_VERSION],
            // Fetched by any TLS stack's revocation checker, which sends none (the server does
            // not ask for one); dps's own clients send the service API's.
            Self::Crl => api_version::SERVICE,
        }
    }

    /// The `api-version` dps's own clients send on this API.
    pub fn client_version(self) -> &'static str {
        match self {
            Self::Device => api_version::DEVICE_CLIENT,
            Self::Service => api_version::SERVICE_CLIENT,
            Self::Hub | Self::HubDevice => api_version::HUB_CLIENT,
            Self::Blob => crate::blob_storage::STORAGE_VERSION,
            Self::Crl => api_version::SERVICE_CLIENT,
        }
    }
}

impl Route {
    /// The route for `method` on `path` (raw, still percent-encoded; no query).
    ///
    /// Literal segments match case-insensitively, one trailing slash is tolerated and ids are
    /// percent-decoded (see the rules above); [`Route::path`] writes a path this parses back to
    /// the same route.
    pub fn parse(method: &Method, path: &str) -> Result<Self, NoRoute> {
        route(method, path)
    }

    /// The one method this route answers.
    pub fn method(&self) -> Method {
        use Route::*;
        match self {
            Register { .. }
            | PutEnrollment(_)
            | PutGroup(_)
            | PutCertificate(_)
            | PutCredentialPolicy(_)
            | PutLinkedHub(_)
            | PutPolicy(..)
            | PutDevice(_)
            | ReplaceTwin(_)
            | PutModule(..)
            | PutJob(_)
            | ReplaceModuleTwin(..)
            | PutConsumerGroup(_)
            | PutBlob { .. } => Method::PUT,
            RegistrationStatus { .. }
            | EnrollmentAttestation(_)
            | QueryEnrollments
            | BulkEnrollments
            | GroupAttestation(_)
            | QueryGroups
            | BulkGroups
            | QueryRegistrations(_)
            | ReprovisionRegistration(_)
            | GenerateVerificationCode(_)
            | VerifyCertificate(_)
            | QueryDevices
            | BulkDevices
            | InvokeMethod(_)
            | InvokeModuleMethod(..)
            | CancelJob(_)
            | CreateImportExportJob
            | AbandonFeedback(_)
            | SendDeviceEvent(_)
            | AbandonC2d { .. }
            | CreateFileUpload(_)
            | CompleteFileUpload { .. }
            | RegeneratePolicyKey(..)
            | AddRevocation
            | ImportCrl
            | SendC2d(_) => Method::POST,
            DeleteEnrollment(_)
            | DeleteGroup(_)
            | DeleteRegistration(_)
            | DeleteCertificate(_)
            | DeleteCredentialPolicy(_)
            | DeleteRevocation(_)
            | DeleteLinkedHub(_)
            | DeletePolicy(..)
            | DeleteDevice(_)
            | DeleteModule(..)
            | CancelImportExportJob(_)
            | PurgeC2d(_)
            | CompleteFeedback(_)
            | DeleteConsumerGroup(_)
            | CompleteC2d { .. } => Method::DELETE,
            UpdateTwin(_) | UpdateModuleTwin(..) => Method::PATCH,
            OperationStatus { .. }
            | GetEnrollment(_)
            | GetGroup(_)
            | GetRegistration(_)
            | ListCertificates
            | GetCertificate(_)
            | ListCredentialPolicies
            | GetCredentialPolicy(_)
            | ListRevocations
            | GetRevocation(_)
            | GetPolicyCrl(_)
            | ListLinkedHubs
            | GetLinkedHub(_)
            | ListPolicies(_)
            | GetPolicy(..)
            | QueryAudit
            | ListDevices
            | GetDevice(_)
            | GetTwin(_)
            | ListModules(_)
            | GetModule(..)
            | GetModuleTwin(..)
            | GetJob(_)
            | QueryJobs
            | ListImportExportJobs
            | GetImportExportJob(_)
            | MonitorEvents
            | ReceiveFeedback
            | DeviceStatistics
            | ServiceStatistics
            | ListConsumerGroups
            | GetConsumerGroup(_)
            | ReceiveC2d(_)
            | GetBlob { .. }
            | ListFiles
            | GetFile(_)
            | MqttWebSocket => Method::GET,
        }
    }

    /// The canonical request path, ids percent-encoded ([`encode_segment`]), with the segment
    /// spellings the Azure SDKs send. Ids must be non-empty (an empty id names another resource),
    /// and an ID scope must not spell a service collection (`enrollments`, `devices`, …: the path
    /// would be that collection's); real scopes (`0ne…`) never do.
    pub fn path(&self) -> String {
        use Route::*;
        let item = |collection: &str, id: &str| format!("/{collection}/{}", encode_segment(id));
        match self {
            Register { scope, registration_id } => {
                format!("{}/register", device_registration(scope, registration_id))
            }
            OperationStatus {
                scope,
                registration_id,
                operation_id,
            } => format!(
                "{}/operations/{}",
                device_registration(scope, registration_id),
                encode_segment(operation_id)
            ),
            RegistrationStatus { scope, registration_id } => device_registration(scope, registration_id),
            GetEnrollment(id) | PutEnrollment(id) | DeleteEnrollment(id) => item("enrollments", id),
            EnrollmentAttestation(id) => item("enrollments", id) + "/attestationmechanism",
            QueryEnrollments => "/enrollments/query".into(),
            BulkEnrollments => "/enrollments".into(),
            GetGroup(id) | PutGroup(id) | DeleteGroup(id) => item("enrollmentGroups", id),
            GroupAttestation(id) => item("enrollmentGroups", id) + "/attestationmechanism",
            QueryGroups => "/enrollmentGroups/query".into(),
            BulkGroups => "/enrollmentGroups".into(),
            GetRegistration(id) | DeleteRegistration(id) => item("registrations", id),
            QueryRegistrations(group) => item("registrations", group) + "/query",
            ReprovisionRegistration(id) => item("registrations", id) + "/reprovision",
            ListCertificates => "/certificates".into(),
            GetCertificate(n) | PutCertificate(n) | DeleteCertificate(n) => item("certificates", n),
            GenerateVerificationCode(n) => item("certificates", n) + "/generateVerificationCode",
            VerifyCertificate(n) => item("certificates", n) + "/verify",
            ListCredentialPolicies => "/credentialPolicies".into(),
            GetCredentialPolicy(n) | PutCredentialPolicy(n) | DeleteCredentialPolicy(n) => {
                item("credentialPolicies", n)
            }
            ListRevocations | AddRevocation => "/revocations".into(),
            GetRevocation(id) | DeleteRevocation(id) => item("revocations", id),
            ImportCrl => "/crls".into(),
            GetPolicyCrl(name) => item("crl", name),
            ListLinkedHubs => "/linkedHubs".into(),
            GetLinkedHub(n) | PutLinkedHub(n) | DeleteLinkedHub(n) => item("linkedHubs", n),
            QueryAudit => "/audit".into(),
            ListPolicies(owner) => format!("/{}", owner.collection()),
            GetPolicy(owner, n) | PutPolicy(owner, n) | DeletePolicy(owner, n) => item(owner.collection(), n),
            RegeneratePolicyKey(owner, n) => item(owner.collection(), n) + "/regenerateKey",
            ListDevices | BulkDevices => "/devices".into(),
            QueryDevices => "/devices/query".into(),
            GetDevice(id) | PutDevice(id) | DeleteDevice(id) => item("devices", id),
            GetTwin(id) | ReplaceTwin(id) | UpdateTwin(id) => item("twins", id),
            InvokeMethod(id) => item("twins", id) + "/methods",
            ListModules(id) => item("devices", id) + "/modules",
            GetModule(d, m) | PutModule(d, m) | DeleteModule(d, m) => item("devices", d) + &item("modules", m),
            GetModuleTwin(d, m) | ReplaceModuleTwin(d, m) | UpdateModuleTwin(d, m) => {
                item("twins", d) + &item("modules", m)
            }
            InvokeModuleMethod(d, m) => item("twins", d) + &item("modules", m) + "/methods",
            PutJob(id) | GetJob(id) => item("jobs/v2", id),
            CancelJob(id) => item("jobs/v2", id) + "/cancel",
            QueryJobs => "/jobs/v2/query".into(),
            CreateImportExportJob => "/jobs/create".into(),
            ListImportExportJobs => "/jobs".into(),
            GetImportExportJob(id) | CancelImportExportJob(id) => item("jobs", id),
            PurgeC2d(id) => item("devices", id) + "/commands",
            SendDeviceEvent(id) => item("devices", id) + "/messages/events",
            ReceiveC2d(id) | SendC2d(id) => item("devices", id) + "/messages/deviceBound",
            CompleteC2d { device_id, lock_token } => {
                item("devices", device_id) + &item("messages/deviceBound", lock_token)
            }
            AbandonC2d { device_id, lock_token } => {
                item("devices", device_id) + &item("messages/deviceBound", lock_token) + "/abandon"
            }
            CreateFileUpload(id) => item("devices", id) + "/files",
            CompleteFileUpload {
                device_id,
                correlation_id,
            } => {
                let base = item("devices", device_id) + "/files/notifications";
                match correlation_id {
                    Some(c) => base + "/" + &encode_segment(c),
                    None => base,
                }
            }
            PutBlob { container, blob } | GetBlob { container, blob } => {
                let segments: Vec<String> = blob.split('/').map(encode_segment).collect();
                format!("/{}/{}", encode_segment(container), segments.join("/"))
            }
            ListFiles => "/files".into(),
            GetFile(blob) => {
                let segments: Vec<String> = blob.split('/').map(encode_segment).collect();
                format!("/files/{}", segments.join("/"))
            }
            MonitorEvents => "/messages/events".into(),
            ReceiveFeedback => "/messages/serviceBound/feedback".into(),
            CompleteFeedback(lock) => item("messages/serviceBound/feedback", lock),
            AbandonFeedback(lock) => item("messages/serviceBound/feedback", lock) + "/abandon",
            DeviceStatistics => "/statistics/devices".into(),
            ServiceStatistics => "/statistics/service".into(),
            ListConsumerGroups => CONSUMER_GROUPS.into(),
            GetConsumerGroup(n) | PutConsumerGroup(n) | DeleteConsumerGroup(n) => item(CONSUMER_GROUPS_ITEM, n),
            MqttWebSocket => "/$iothub/websocket".into(),
        }
    }

    /// [`Route::path`], then `?api-version=` the version dps's clients send on the route's API
    /// ([`Api::client_version`]), then `query`.
    pub fn path_and_query(&self, query: &QueryParams) -> String {
        let mut all = QueryParams::from_pairs([(API_VERSION, self.api().client_version())]);
        for (k, v) in query.pairs() {
            all.push(k, v);
        }
        format!("{}?{all}", self.path())
    }
}

/// `/{scope}/registrations/{registrationId}`, encoded.
fn device_registration(scope: &str, registration_id: &str) -> String {
    format!(
        "/{}/registrations/{}",
        encode_segment(scope),
        encode_segment(registration_id)
    )
}

impl Route {
    /// The resource a SAS audience must cover for this route (service and registry APIs), as a
    /// decoded path with canonical segment names. Built from the route, not the request path,
    /// so percent-encoding, case and a trailing slash change nothing, and ids cannot open new
    /// segments (a `/` or `%` inside an id stays escaped). Collection operations — queries, bulk,
    /// listings — need a token for the whole collection: a token for `enrollments/query` (an
    /// enrollment may be called `query`) must not list every enrollment.
    pub fn audience_path(&self) -> String {
        use Route::*;
        let item = |collection: &str, id: &str| format!("/{collection}/{}", escape_segment(id));
        match self {
            Register { scope, registration_id }
            | OperationStatus {
                scope, registration_id, ..
            }
            | RegistrationStatus { scope, registration_id } => {
                format!("/{}{}", escape_segment(scope), item("registrations", registration_id))
            }
            GetEnrollment(id) | PutEnrollment(id) | DeleteEnrollment(id) => item("enrollments", id),
            EnrollmentAttestation(id) => item("enrollments", id) + "/attestationmechanism",
            QueryEnrollments | BulkEnrollments => "/enrollments".into(),
            GetGroup(id) | PutGroup(id) | DeleteGroup(id) => item("enrollmentgroups", id),
            GroupAttestation(id) => item("enrollmentgroups", id) + "/attestationmechanism",
            QueryGroups | BulkGroups => "/enrollmentgroups".into(),
            GetRegistration(id) | DeleteRegistration(id) => item("registrations", id),
            QueryRegistrations(_) => "/registrations".into(),
            ReprovisionRegistration(id) => item("registrations", id),
            ListCertificates => "/certificates".into(),
            GetCertificate(n) | PutCertificate(n) | DeleteCertificate(n) => item("certificates", n),
            GenerateVerificationCode(n) => item("certificates", n) + "/generateverificationcode",
            VerifyCertificate(n) => item("certificates", n) + "/verify",
            ListCredentialPolicies => "/credentialpolicies".into(),
            GetCredentialPolicy(n) | PutCredentialPolicy(n) | DeleteCredentialPolicy(n) => {
                item("credentialpolicies", n)
            }
            ListRevocations | AddRevocation => "/revocations".into(),
            GetRevocation(id) | DeleteRevocation(id) => item("revocations", id),
            ImportCrl => "/crls".into(),
            GetPolicyCrl(name) => item("crl", name),
            ListLinkedHubs => "/linkedhubs".into(),
            GetLinkedHub(n) | PutLinkedHub(n) | DeleteLinkedHub(n) => item("linkedhubs", n),
            QueryAudit => "/audit".into(),
            ListPolicies(owner) => format!("/{}", owner.collection().to_ascii_lowercase()),
            GetPolicy(owner, n) | PutPolicy(owner, n) | DeletePolicy(owner, n) | RegeneratePolicyKey(owner, n) => {
                item(&owner.collection().to_ascii_lowercase(), n)
            }
            ListDevices | QueryDevices | BulkDevices => "/devices".into(),
            GetDevice(id) | PutDevice(id) | DeleteDevice(id) => item("devices", id),
            GetTwin(id) | ReplaceTwin(id) | UpdateTwin(id) => item("twins", id),
            InvokeMethod(id) => item("twins", id) + "/methods",
            ListModules(id) => item("devices", id) + "/modules",
            GetModule(d, m) | PutModule(d, m) | DeleteModule(d, m) => item("devices", d) + &item("modules", m),
            GetModuleTwin(d, m) | ReplaceModuleTwin(d, m) | UpdateModuleTwin(d, m) => {
                item("twins", d) + &item("modules", m)
            }
            InvokeModuleMethod(d, m) => item("twins", d) + &item("modules", m) + "/methods",
            PutJob(id) | GetJob(id) => item("jobs/v2", id),
            CancelJob(id) => item("jobs/v2", id) + "/cancel",
            QueryJobs => "/jobs/v2".into(),
            CreateImportExportJob | ListImportExportJobs => "/jobs".into(),
            GetImportExportJob(id) | CancelImportExportJob(id) => item("jobs", id),
            PurgeC2d(id) => item("devices", id) + "/commands",
            SendC2d(id) => item("devices", id) + "/messages/devicebound",
            // Judged by the hub against `{hub}/devices/{id}`, not by a policy.
            SendDeviceEvent(id) | ReceiveC2d(id) => item("devices", id),
            CompleteC2d { device_id, .. } | AbandonC2d { device_id, .. } => item("devices", device_id),
            CreateFileUpload(id) | CompleteFileUpload { device_id: id, .. } => item("devices", id),
            // Judged by the blob's SAS, not by a policy.
            PutBlob { container, blob } | GetBlob { container, blob } => format!("/{container}/{blob}"),
            ListFiles => "/files".into(),
            GetFile(blob) => format!("/files/{}", escape_segment(blob)),
            MonitorEvents => "/messages/events".into(),
            ReceiveFeedback | CompleteFeedback(_) | AbandonFeedback(_) => "/messages/servicebound/feedback".into(),
            DeviceStatistics => "/statistics/devices".into(),
            ServiceStatistics => "/statistics/service".into(),
            ListConsumerGroups => CONSUMER_GROUPS.to_ascii_lowercase(),
            GetConsumerGroup(n) | PutConsumerGroup(n) | DeleteConsumerGroup(n) => {
                item(&CONSUMER_GROUPS_ITEM.to_ascii_lowercase(), n)
            }
            MqttWebSocket => "/$iothub/websocket".into(),
        }
    }
}

/// The container file uploads go to, on the same HTTPS port: its first path segment can be no
/// other resource's (ID scopes start `0ne`).
pub const FILE_UPLOAD_CONTAINER: &str = "fileupload";

/// The consumer groups of the built-in endpoint (`events`, as Azure's management API names it).
const CONSUMER_GROUPS: &str = "/eventHubEndpoints/events/consumerGroups";
/// [`CONSUMER_GROUPS`] as the collection of an item path (the item helpers add the `/`).
const CONSUMER_GROUPS_ITEM: &str = "eventHubEndpoints/events/consumerGroups";

/// An id as one audience path segment: `%` and `/` escaped, so it cannot end early.
fn escape_segment(id: &str) -> String {
    id.replace('%', "%25").replace('/', "%2F")
}

/// Why a request matched no route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRoute {
    /// No such path.
    NotFound,
    /// The path exists; these methods are allowed on it.
    MethodNotAllowed(&'static [Method]),
}

fn is(seg: &str, literal: &str) -> bool {
    seg.eq_ignore_ascii_case(literal)
}

/// Maps decoded segments to a resource.
fn resource(segs: &[String]) -> Option<Resource> {
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let id = |x: &str| -> Option<String> { (!x.is_empty()).then(|| x.to_string()) };
    let r = match s.as_slice() {
        // The file upload container: `/{container}/{deviceId}/{name…}` (C and C# send the blob
        // name's `/` as `%2F`, decoded into the segment; joined back here).
        [c, blob @ ..] if *c == FILE_UPLOAD_CONTAINER && !blob.is_empty() => {
            Resource::Blob(c.to_string(), blob.join("/"))
        }
        [first, rest @ ..] if is(first, "files") => match rest {
            [] => Resource::Files,
            blob => Resource::File(blob.join("/")),
        },
        [first, rest @ ..] if is(first, "enrollments") => match rest {
            [] => Resource::Enrollments,
            [q] if is(q, "query") => Resource::EnrollmentQuery,
            [e] => Resource::Enrollment(id(e)?),
            [e, a] if is(a, "attestationmechanism") => Resource::EnrollmentAttestation(id(e)?),
            _ => return None,
        },
        [first, rest @ ..] if is(first, "enrollmentGroups") => match rest {
            [] => Resource::Groups,
            [q] if is(q, "query") => Resource::GroupQuery,
            [g] => Resource::Group(id(g)?),
            [g, a] if is(a, "attestationmechanism") => Resource::GroupAttestation(id(g)?),
            _ => return None,
        },
        [first, r] if is(first, "registrations") => Resource::Registration(id(r)?),
        [first, g, q] if is(first, "registrations") && is(q, "query") => Resource::RegistrationQuery(id(g)?),
        [first, r, a] if is(first, "registrations") && is(a, "reprovision") => {
            Resource::RegistrationReprovision(id(r)?)
        }
        [first, rest @ ..] if is(first, "certificates") => match rest {
            [] => Resource::Certificates,
            [c] => Resource::Certificate(id(c)?),
            [c, v] if is(v, "generateVerificationCode") => Resource::CertificateVerificationCode(id(c)?),
            [c, v] if is(v, "verify") => Resource::CertificateVerify(id(c)?),
            _ => return None,
        },
        [first, rest @ ..] if is(first, "credentialPolicies") => match rest {
            [] => Resource::CredentialPolicies,
            [p] => Resource::CredentialPolicy(id(p)?),
            _ => return None,
        },
        [first, rest @ ..] if is(first, "revocations") => match rest {
            [] => Resource::Revocations,
            [r] => Resource::Revocation(id(r)?),
            _ => return None,
        },
        [c] if is(c, "crls") => Resource::Crls,
        [c, p] if is(c, "crl") => Resource::PolicyCrl(id(p)?),
        [first, rest @ ..] if is(first, "linkedHubs") => match rest {
            [] => Resource::LinkedHubs,
            [h] => Resource::LinkedHub(id(h)?),
            _ => return None,
        },
        [a] if is(a, "audit") => Resource::Audit,
        [first, rest @ ..] if is(first, "keys") || is(first, "iotHubKeys") => {
            let owner = if is(first, "keys") {
                PolicyOwner::Service
            } else {
                PolicyOwner::Hub
            };
            match rest {
                [] => Resource::Policies(owner),
                [k] => Resource::Policy(owner, id(k)?),
                [k, r] if is(r, "regenerateKey") => Resource::PolicyKeyRenewal(owner, id(k)?),
                _ => return None,
            }
        }
        [first, rest @ ..] if is(first, "devices") => match rest {
            [] => Resource::Devices,
            [q] if is(q, "query") => Resource::DeviceQuery,
            [d] => Resource::Device(id(d)?),
            [d, c] if is(c, "commands") => Resource::DeviceCommands(id(d)?),
            [d, m, e] if is(m, "messages") && is(e, "events") => Resource::DeviceEvents(id(d)?),
            [d, m, b] if is(m, "messages") && is(b, "deviceBound") => Resource::DeviceBound(id(d)?),
            [d, m, b, lock] if is(m, "messages") && is(b, "deviceBound") => {
                Resource::DeviceBoundLock(id(d)?, id(lock)?)
            }
            [d, m, b, lock, a] if is(m, "messages") && is(b, "deviceBound") && is(a, "abandon") => {
                Resource::DeviceBoundAbandon(id(d)?, id(lock)?)
            }
            [d, f] if is(f, "files") => Resource::DeviceFiles(id(d)?),
            [d, m] if is(m, "modules") => Resource::DeviceModules(id(d)?),
            [d, m, mid] if is(m, "modules") => Resource::Module(id(d)?, id(mid)?),
            [d, f, n] if is(f, "files") && is(n, "notifications") => Resource::DeviceFileNotifications(id(d)?, None),
            [d, f, n, c] if is(f, "files") && is(n, "notifications") => {
                Resource::DeviceFileNotifications(id(d)?, Some(id(c)?))
            }
            _ => return None,
        },
        [j] if is(j, "jobs") => Resource::ImportExportJobs,
        [j, c] if is(j, "jobs") && is(c, "create") => Resource::ImportExportCreate,
        [j, id_] if is(j, "jobs") && !is(id_, "v2") => Resource::ImportExportJob(id(id_)?),
        [j, v, q] if is(j, "jobs") && is(v, "v2") && is(q, "query") => Resource::JobQuery(q.to_string()),
        [j, v, job] if is(j, "jobs") && is(v, "v2") => Resource::Job(id(job)?),
        [j, v, job, c] if is(j, "jobs") && is(v, "v2") && is(c, "cancel") => Resource::JobCancel(id(job)?),
        [first, d] if is(first, "twins") => Resource::Twin(id(d)?),
        [first, d, m] if is(first, "twins") && is(m, "methods") => Resource::TwinMethods(id(d)?),
        [first, d, m, mid] if is(first, "twins") && is(m, "modules") => Resource::ModuleTwin(id(d)?, id(mid)?),
        [first, d, m, mid, x] if is(first, "twins") && is(m, "modules") && is(x, "methods") => {
            Resource::ModuleTwinMethods(id(d)?, id(mid)?)
        }
        [m, e] if is(m, "messages") && is(e, "events") => Resource::Events,
        [m, sb, f, rest @ ..] if is(m, "messages") && is(sb, "serviceBound") && is(f, "feedback") => match rest {
            [] => Resource::Feedback,
            [lock] => Resource::FeedbackLock(id(lock)?),
            [lock, a] if is(a, "abandon") => Resource::FeedbackAbandon(id(lock)?),
            _ => return None,
        },
        [st, d] if is(st, "statistics") && is(d, "devices") => Resource::DeviceStatistics,
        [st, d] if is(st, "statistics") && is(d, "service") => Resource::ServiceStatistics,
        [ep, ev, cg, rest @ ..] if is(ep, "eventHubEndpoints") && is(ev, "events") && is(cg, "consumerGroups") => {
            match rest {
                [] => Resource::ConsumerGroups,
                [name] => Resource::ConsumerGroup(id(name)?),
                _ => return None,
            }
        }
        [hub, ws] if is(hub, "$iothub") && is(ws, "websocket") => Resource::MqttWebSocket,
        // The Event Hub-compatible endpoint's WebSocket path (AMQP over WebSockets).
        [sb, ws] if is(sb, "$servicebus") && is(ws, "websocket") => Resource::MqttWebSocket,
        [scope, regs, reg] if is(regs, "registrations") => Resource::DeviceRegistration {
            scope: id(scope)?,
            registration_id: id(reg)?,
        },
        [scope, regs, reg, r] if is(regs, "registrations") && is(r, "register") => Resource::DeviceRegister {
            scope: id(scope)?,
            registration_id: id(reg)?,
        },
        [scope, regs, reg, ops, op] if is(regs, "registrations") && is(ops, "operations") => {
            Resource::DeviceOperation {
                scope: id(scope)?,
                registration_id: id(reg)?,
                operation_id: id(op)?,
            }
        }
        _ => return None,
    };
    Some(r)
}

const GET_PUT_DELETE: &[Method] = &[Method::GET, Method::PUT, Method::DELETE];
const GET_DELETE: &[Method] = &[Method::GET, Method::DELETE];
const GET_PUT_PATCH: &[Method] = &[Method::GET, Method::PUT, Method::PATCH];
const POST: &[Method] = &[Method::POST];
const GET_POST: &[Method] = &[Method::GET, Method::POST];
const GET_PUT: &[Method] = &[Method::GET, Method::PUT];
const PUT: &[Method] = &[Method::PUT];
const GET: &[Method] = &[Method::GET];
const DELETE: &[Method] = &[Method::DELETE];

/// The route for `method` on `path` (raw, percent-encoded).
fn route(method: &Method, path: &str) -> Result<Route, NoRoute> {
    let segs = segments(path).ok_or(NoRoute::NotFound)?;
    let res = resource(&segs).ok_or(NoRoute::NotFound)?;
    let m = method;
    use Resource as R;
    let not_allowed = |allowed: &'static [Method]| Err(NoRoute::MethodNotAllowed(allowed));
    match res {
        R::DeviceRegister { scope, registration_id } => match *m {
            Method::PUT => Ok(Route::Register { scope, registration_id }),
            _ => not_allowed(PUT),
        },
        R::DeviceOperation {
            scope,
            registration_id,
            operation_id,
        } => match *m {
            Method::GET => Ok(Route::OperationStatus {
                scope,
                registration_id,
                operation_id,
            }),
            _ => not_allowed(GET),
        },
        R::DeviceRegistration { scope, registration_id } => match *m {
            Method::POST => Ok(Route::RegistrationStatus { scope, registration_id }),
            _ => not_allowed(POST),
        },
        R::Enrollments => match *m {
            Method::POST => Ok(Route::BulkEnrollments),
            _ => not_allowed(POST),
        },
        // `query` is also a valid registration id: only POST means "query".
        R::EnrollmentQuery => match *m {
            Method::POST => Ok(Route::QueryEnrollments),
            _ => enrollment(m, segs[1].clone()),
        },
        R::Enrollment(id) => enrollment(m, id),
        R::EnrollmentAttestation(id) => match *m {
            Method::POST => Ok(Route::EnrollmentAttestation(id)),
            _ => not_allowed(POST),
        },
        R::Groups => match *m {
            Method::POST => Ok(Route::BulkGroups),
            _ => not_allowed(POST),
        },
        R::GroupQuery => match *m {
            Method::POST => Ok(Route::QueryGroups),
            _ => group(m, segs[1].clone()),
        },
        R::Group(id) => group(m, id),
        R::GroupAttestation(id) => match *m {
            Method::POST => Ok(Route::GroupAttestation(id)),
            _ => not_allowed(POST),
        },
        R::Registration(id) => match *m {
            Method::GET => Ok(Route::GetRegistration(id)),
            Method::DELETE => Ok(Route::DeleteRegistration(id)),
            _ => not_allowed(GET_DELETE),
        },
        R::RegistrationQuery(id) => match *m {
            Method::POST => Ok(Route::QueryRegistrations(id)),
            _ => not_allowed(POST),
        },
        R::RegistrationReprovision(id) => match *m {
            Method::POST => Ok(Route::ReprovisionRegistration(id)),
            _ => not_allowed(POST),
        },
        R::Certificates => match *m {
            Method::GET => Ok(Route::ListCertificates),
            _ => not_allowed(GET),
        },
        R::Certificate(name) => match *m {
            Method::GET => Ok(Route::GetCertificate(name)),
            Method::PUT => Ok(Route::PutCertificate(name)),
            Method::DELETE => Ok(Route::DeleteCertificate(name)),
            _ => not_allowed(GET_PUT_DELETE),
        },
        R::CredentialPolicies => match *m {
            Method::GET => Ok(Route::ListCredentialPolicies),
            _ => not_allowed(GET),
        },
        R::CredentialPolicy(name) => match *m {
            Method::GET => Ok(Route::GetCredentialPolicy(name)),
            Method::PUT => Ok(Route::PutCredentialPolicy(name)),
            Method::DELETE => Ok(Route::DeleteCredentialPolicy(name)),
            _ => not_allowed(GET_PUT_DELETE),
        },
        R::Revocations => match *m {
            Method::GET => Ok(Route::ListRevocations),
            Method::POST => Ok(Route::AddRevocation),
            _ => not_allowed(GET_POST),
        },
        R::Revocation(rid) => match *m {
            Method::GET => Ok(Route::GetRevocation(rid)),
            Method::DELETE => Ok(Route::DeleteRevocation(rid)),
            _ => not_allowed(GET_DELETE),
        },
        R::Crls => match *m {
            Method::POST => Ok(Route::ImportCrl),
            _ => not_allowed(POST),
        },
        R::PolicyCrl(name) => match *m {
            Method::GET => Ok(Route::GetPolicyCrl(name)),
            _ => not_allowed(GET),
        },
        R::LinkedHubs => match *m {
            Method::GET => Ok(Route::ListLinkedHubs),
            _ => not_allowed(GET),
        },
        R::LinkedHub(name) => match *m {
            Method::GET => Ok(Route::GetLinkedHub(name)),
            Method::PUT => Ok(Route::PutLinkedHub(name)),
            Method::DELETE => Ok(Route::DeleteLinkedHub(name)),
            _ => not_allowed(GET_PUT_DELETE),
        },
        R::Audit => match *m {
            Method::GET => Ok(Route::QueryAudit),
            _ => not_allowed(GET),
        },
        R::Policies(owner) => match *m {
            Method::GET => Ok(Route::ListPolicies(owner)),
            _ => not_allowed(GET),
        },
        R::Policy(owner, name) => match *m {
            Method::GET => Ok(Route::GetPolicy(owner, name)),
            Method::PUT => Ok(Route::PutPolicy(owner, name)),
            Method::DELETE => Ok(Route::DeletePolicy(owner, name)),
            _ => not_allowed(GET_PUT_DELETE),
        },
        R::PolicyKeyRenewal(owner, name) => match *m {
            Method::POST => Ok(Route::RegeneratePolicyKey(owner, name)),
            _ => not_allowed(POST),
        },
        R::CertificateVerificationCode(name) => match *m {
            Method::POST => Ok(Route::GenerateVerificationCode(name)),
            _ => not_allowed(POST),
        },
        R::CertificateVerify(name) => match *m {
            Method::POST => Ok(Route::VerifyCertificate(name)),
            _ => not_allowed(POST),
        },
        R::Devices => match *m {
            Method::GET => Ok(Route::ListDevices),
            Method::POST => Ok(Route::BulkDevices),
            _ => not_allowed(GET_POST),
        },
        R::DeviceQuery => match *m {
            Method::POST => Ok(Route::QueryDevices),
            _ => device(m, segs[1].clone()),
        },
        R::Device(id) => device(m, id),
        R::Twin(id) => match *m {
            Method::GET => Ok(Route::GetTwin(id)),
            Method::PUT => Ok(Route::ReplaceTwin(id)),
            Method::PATCH => Ok(Route::UpdateTwin(id)),
            _ => not_allowed(GET_PUT_PATCH),
        },
        R::TwinMethods(id) => match *m {
            Method::POST => Ok(Route::InvokeMethod(id)),
            _ => not_allowed(POST),
        },
        R::ImportExportJobs => match *m {
            Method::GET => Ok(Route::ListImportExportJobs),
            _ => not_allowed(GET),
        },
        // `create` is also a job id a GET or DELETE may name.
        R::ImportExportCreate => match *m {
            Method::POST => Ok(Route::CreateImportExportJob),
            Method::GET => Ok(Route::GetImportExportJob(segs[1].clone())),
            Method::DELETE => Ok(Route::CancelImportExportJob(segs[1].clone())),
            _ => not_allowed(&[Method::GET, Method::POST, Method::DELETE]),
        },
        R::ImportExportJob(id) => match *m {
            Method::GET => Ok(Route::GetImportExportJob(id)),
            Method::DELETE => Ok(Route::CancelImportExportJob(id)),
            _ => not_allowed(GET_DELETE),
        },
        // `query` is also a valid job id: only GET means "query".
        R::JobQuery(id) => match *m {
            Method::GET => Ok(Route::QueryJobs),
            Method::PUT => Ok(Route::PutJob(id)),
            _ => not_allowed(GET_PUT),
        },
        R::Job(id) => match *m {
            Method::GET => Ok(Route::GetJob(id)),
            Method::PUT => Ok(Route::PutJob(id)),
            _ => not_allowed(GET_PUT),
        },
        R::JobCancel(id) => match *m {
            Method::POST => Ok(Route::CancelJob(id)),
            _ => not_allowed(POST),
        },
        R::DeviceModules(id) => match *m {
            Method::GET => Ok(Route::ListModules(id)),
            _ => not_allowed(GET),
        },
        R::Module(d, mid) => match *m {
            Method::GET => Ok(Route::GetModule(d, mid)),
            Method::PUT => Ok(Route::PutModule(d, mid)),
            Method::DELETE => Ok(Route::DeleteModule(d, mid)),
            _ => not_allowed(GET_PUT_DELETE),
        },
        R::ModuleTwin(d, mid) => match *m {
            Method::GET => Ok(Route::GetModuleTwin(d, mid)),
            Method::PUT => Ok(Route::ReplaceModuleTwin(d, mid)),
            Method::PATCH => Ok(Route::UpdateModuleTwin(d, mid)),
            _ => not_allowed(GET_PUT_PATCH),
        },
        R::ModuleTwinMethods(d, mid) => match *m {
            Method::POST => Ok(Route::InvokeModuleMethod(d, mid)),
            _ => not_allowed(POST),
        },
        R::Events => match *m {
            Method::GET => Ok(Route::MonitorEvents),
            _ => not_allowed(GET),
        },
        R::DeviceCommands(id) => match *m {
            Method::DELETE => Ok(Route::PurgeC2d(id)),
            _ => not_allowed(DELETE),
        },
        R::DeviceEvents(id) => match *m {
            Method::POST => Ok(Route::SendDeviceEvent(id)),
            _ => not_allowed(POST),
        },
        R::DeviceBound(id) => match *m {
            Method::GET => Ok(Route::ReceiveC2d(id)),
            Method::POST => Ok(Route::SendC2d(id)),
            _ => not_allowed(GET_POST),
        },
        R::DeviceBoundLock(device_id, lock_token) => match *m {
            Method::DELETE => Ok(Route::CompleteC2d { device_id, lock_token }),
            _ => not_allowed(DELETE),
        },
        R::DeviceBoundAbandon(device_id, lock_token) => match *m {
            Method::POST => Ok(Route::AbandonC2d { device_id, lock_token }),
            _ => not_allowed(POST),
        },
        R::DeviceFiles(id) => match *m {
            Method::POST => Ok(Route::CreateFileUpload(id)),
            _ => not_allowed(POST),
        },
        R::DeviceFileNotifications(device_id, correlation_id) => match *m {
            Method::POST => Ok(Route::CompleteFileUpload {
                device_id,
                correlation_id,
            }),
            _ => not_allowed(POST),
        },
        R::Blob(container, blob) => match *m {
            Method::PUT => Ok(Route::PutBlob { container, blob }),
            Method::GET | Method::HEAD => Ok(Route::GetBlob { container, blob }),
            _ => not_allowed(&[Method::GET, Method::HEAD, Method::PUT]),
        },
        R::Files => match *m {
            Method::GET => Ok(Route::ListFiles),
            _ => not_allowed(GET),
        },
        R::File(blob) => match *m {
            Method::GET => Ok(Route::GetFile(blob)),
            _ => not_allowed(GET),
        },
        R::Feedback => match *m {
            Method::GET => Ok(Route::ReceiveFeedback),
            _ => not_allowed(GET),
        },
        R::FeedbackLock(lock) => match *m {
            Method::DELETE => Ok(Route::CompleteFeedback(lock)),
            _ => not_allowed(DELETE),
        },
        R::FeedbackAbandon(lock) => match *m {
            Method::POST => Ok(Route::AbandonFeedback(lock)),
            _ => not_allowed(POST),
        },
        R::DeviceStatistics => match *m {
            Method::GET => Ok(Route::DeviceStatistics),
            _ => not_allowed(GET),
        },
        R::ServiceStatistics => match *m {
            Method::GET => Ok(Route::ServiceStatistics),
            _ => not_allowed(GET),
        },
        R::ConsumerGroups => match *m {
            Method::GET => Ok(Route::ListConsumerGroups),
            _ => not_allowed(GET),
        },
        R::ConsumerGroup(name) => match *m {
            Method::GET => Ok(Route::GetConsumerGroup(name)),
            Method::PUT => Ok(Route::PutConsumerGroup(name)),
            Method::DELETE => Ok(Route::DeleteConsumerGroup(name)),
            _ => not_allowed(GET_PUT_DELETE),
        },
        R::MqttWebSocket => match *m {
            Method::GET => Ok(Route::MqttWebSocket),
            _ => not_allowed(GET),
        },
    }
}

fn enrollment(m: &Method, id: String) -> Result<Route, NoRoute> {
    match *m {
        Method::GET => Ok(Route::GetEnrollment(id)),
        Method::PUT => Ok(Route::PutEnrollment(id)),
        Method::DELETE => Ok(Route::DeleteEnrollment(id)),
        _ => Err(NoRoute::MethodNotAllowed(GET_PUT_DELETE)),
    }
}

fn group(m: &Method, id: String) -> Result<Route, NoRoute> {
    match *m {
        Method::GET => Ok(Route::GetGroup(id)),
        Method::PUT => Ok(Route::PutGroup(id)),
        Method::DELETE => Ok(Route::DeleteGroup(id)),
        _ => Err(NoRoute::MethodNotAllowed(GET_PUT_DELETE)),
    }
}

fn device(m: &Method, id: String) -> Result<Route, NoRoute> {
    match *m {
        Method::GET => Ok(Route::GetDevice(id)),
        Method::PUT => Ok(Route::PutDevice(id)),
        Method::DELETE => Ok(Route::DeleteDevice(id)),
        _ => Err(NoRoute::MethodNotAllowed(GET_PUT_DELETE)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(m: Method, p: &str) -> Result<Route, NoRoute> {
        route(&m, p)
    }

    #[test]
    fn audience_paths_are_canonical() {
        let a = |m: Method, p: &str| r(m, p).unwrap().audience_path();
        assert_eq!(a(Method::DELETE, "/Enrollments/x%2Fy/"), "/enrollments/x%2Fy");
        assert_eq!(a(Method::GET, "/enrollments/a%25b"), "/enrollments/a%25b");
        assert_eq!(
            a(Method::POST, "/enrollmentgroups/G/attestationmechanism"),
            "/enrollmentgroups/G/attestationmechanism"
        );
        // Collection operations need the collection, whatever the item is called.
        assert_eq!(a(Method::POST, "/enrollments/query"), "/enrollments");
        assert_eq!(a(Method::GET, "/enrollments/query"), "/enrollments/query");
        assert_eq!(a(Method::POST, "/enrollments/"), "/enrollments");
        assert_eq!(a(Method::POST, "/registrations/g/query"), "/registrations");
        assert_eq!(a(Method::POST, "/devices/query"), "/devices");
        assert_eq!(a(Method::GET, "/devices"), "/devices");
        assert_eq!(a(Method::POST, "/twins/d/methods"), "/twins/d/methods");
        assert_eq!(
            a(Method::POST, "/twins/d/Modules/m%2F1/methods"),
            "/twins/d/modules/m%2F1/methods"
        );
        assert_eq!(a(Method::GET, "/devices/d/modules"), "/devices/d/modules");
        assert_eq!(
            a(Method::PUT, "/0ne00ABC/registrations/dev-1/register"),
            "/0ne00ABC/registrations/dev-1"
        );
    }

    #[test]
    fn service_routes_case_insensitive_and_trailing_slash() {
        assert_eq!(
            r(Method::GET, "/enrollments/dev-1"),
            Ok(Route::GetEnrollment("dev-1".into()))
        );
        assert_eq!(
            r(Method::PUT, "/Enrollments/dev-1/"),
            Ok(Route::PutEnrollment("dev-1".into()))
        );
        assert_eq!(
            r(Method::DELETE, "/ENROLLMENTS/dev-1"),
            Ok(Route::DeleteEnrollment("dev-1".into()))
        );
        assert_eq!(r(Method::POST, "/enrollments/"), Ok(Route::BulkEnrollments));
        assert_eq!(r(Method::GET, "/certificates"), Ok(Route::ListCertificates));
        assert_eq!(
            r(Method::PUT, "/Certificates/root-1"),
            Ok(Route::PutCertificate("root-1".into()))
        );
        assert_eq!(
            r(Method::POST, "/certificates/root-1/generateverificationcode"),
            Ok(Route::GenerateVerificationCode("root-1".into()))
        );
        assert_eq!(
            r(Method::POST, "/certificates/root-1/verify"),
            Ok(Route::VerifyCertificate("root-1".into()))
        );
        assert_eq!(
            r(Method::GET, "/certificates/root-1/verify"),
            Err(NoRoute::MethodNotAllowed(POST))
        );
        assert_eq!(r(Method::POST, "/enrollments"), Ok(Route::BulkEnrollments));
        assert_eq!(r(Method::POST, "/enrollments/query"), Ok(Route::QueryEnrollments));
        assert_eq!(r(Method::POST, "/enrollments/QUERY/"), Ok(Route::QueryEnrollments));
        assert_eq!(
            r(Method::GET, "/enrollments/query"),
            Ok(Route::GetEnrollment("query".into()))
        );
        assert_eq!(
            r(Method::POST, "/enrollments/d/attestationmechanism"),
            Ok(Route::EnrollmentAttestation("d".into()))
        );
        assert_eq!(
            r(Method::POST, "/enrollments/d/attestationMechanism"),
            Ok(Route::EnrollmentAttestation("d".into()))
        );
        assert_eq!(
            r(Method::POST, "/enrollmentgroups/g1/attestationmechanism"),
            Ok(Route::GroupAttestation("g1".into()))
        );
        assert_eq!(r(Method::GET, "/enrollmentGroups/g1"), Ok(Route::GetGroup("g1".into())));
        assert_eq!(r(Method::POST, "/enrollmentGroups"), Ok(Route::BulkGroups));
        assert_eq!(r(Method::POST, "/enrollmentgroups/query"), Ok(Route::QueryGroups));
        assert_eq!(
            r(Method::GET, "/registrations/dev-1"),
            Ok(Route::GetRegistration("dev-1".into()))
        );
        assert_eq!(
            r(Method::DELETE, "/registrations/dev-1"),
            Ok(Route::DeleteRegistration("dev-1".into()))
        );
        assert_eq!(
            r(Method::POST, "/registrations/g1/query"),
            Ok(Route::QueryRegistrations("g1".into()))
        );
        assert_eq!(
            r(Method::POST, "/Registrations/g1/Query/"),
            Ok(Route::QueryRegistrations("g1".into()))
        );
        assert_eq!(r(Method::GET, "/enrollments/a").unwrap().api(), Api::Service);
    }

    #[test]
    fn mqtt_websocket_route() {
        assert_eq!(r(Method::GET, "/$iothub/websocket"), Ok(Route::MqttWebSocket));
        // `$` percent-encoded, as a strict URL encoder writes it.
        assert_eq!(r(Method::GET, "/%24iothub/websocket/"), Ok(Route::MqttWebSocket));
        assert_eq!(
            r(Method::POST, "/$iothub/websocket"),
            Err(NoRoute::MethodNotAllowed(GET))
        );
        assert_eq!(r(Method::GET, "/$iothub/websocket").unwrap().api(), Api::Device);
    }

    #[test]
    fn device_routes() {
        assert_eq!(
            r(Method::PUT, "/0ne00ABCDEF/registrations/dev-1/register"),
            Ok(Route::Register {
                scope: "0ne00ABCDEF".into(),
                registration_id: "dev-1".into()
            })
        );
        assert_eq!(
            r(Method::GET, "/0ne00ABCDEF/Registrations/dev-1/Operations/4.abc.def-1"),
            Ok(Route::OperationStatus {
                scope: "0ne00ABCDEF".into(),
                registration_id: "dev-1".into(),
                operation_id: "4.abc.def-1".into()
            })
        );
        assert_eq!(
            r(Method::POST, "/0ne00ABCDEF/registrations/dev-1"),
            Ok(Route::RegistrationStatus {
                scope: "0ne00ABCDEF".into(),
                registration_id: "dev-1".into()
            })
        );
        // C encodes with lower-case hex.
        assert_eq!(
            r(Method::PUT, "/0ne00ABCDEF/registrations/my%3adev%2d1/register"),
            Ok(Route::Register {
                scope: "0ne00ABCDEF".into(),
                registration_id: "my:dev-1".into()
            })
        );
        assert_eq!(
            r(Method::PUT, "/s/registrations/d/register").unwrap().api(),
            Api::Device
        );
        assert_eq!(
            r(Method::GET, "/s/registrations/d/register"),
            Err(NoRoute::MethodNotAllowed(PUT))
        );
    }

    #[test]
    fn hub_routes() {
        assert_eq!(r(Method::GET, "/devices"), Ok(Route::ListDevices));
        assert_eq!(r(Method::GET, "/devices/"), Ok(Route::ListDevices));
        assert_eq!(r(Method::POST, "/devices/query"), Ok(Route::QueryDevices));
        assert_eq!(r(Method::GET, "/devices/query"), Ok(Route::GetDevice("query".into())));
        assert_eq!(r(Method::PUT, "/devices/d%201"), Ok(Route::PutDevice("d 1".into())));
        assert_eq!(r(Method::PATCH, "/twins/d"), Ok(Route::UpdateTwin("d".into())));
        assert_eq!(r(Method::PUT, "/Twins/d"), Ok(Route::ReplaceTwin("d".into())));
        assert_eq!(r(Method::POST, "/twins/d/methods"), Ok(Route::InvokeMethod("d".into())));
        assert_eq!(
            r(Method::POST, "/twins/d/methods/"),
            Ok(Route::InvokeMethod("d".into()))
        );
        assert_eq!(r(Method::GET, "/messages/events"), Ok(Route::MonitorEvents));
        assert_eq!(r(Method::GET, "/twins/d").unwrap().api(), Api::Hub);
        assert_eq!(r(Method::GET, "/statistics/Devices"), Ok(Route::DeviceStatistics));
        assert_eq!(r(Method::GET, "/statistics/service"), Ok(Route::ServiceStatistics));
    }

    #[test]
    fn not_found_and_not_allowed() {
        assert_eq!(r(Method::GET, "/"), Err(NoRoute::NotFound));
        assert_eq!(r(Method::GET, "/nothing"), Err(NoRoute::NotFound));
        assert_eq!(r(Method::GET, "/enrollments/a/b"), Err(NoRoute::NotFound));
        assert_eq!(r(Method::GET, "/enrollments//"), Err(NoRoute::NotFound));
        assert_eq!(r(Method::GET, "/enrollments/a//"), Err(NoRoute::NotFound));
        assert_eq!(r(Method::GET, "/devices/a/modules/m/x"), Err(NoRoute::NotFound));
        assert_eq!(
            r(Method::GET, "/devices/a/Modules/m%201"),
            Ok(Route::GetModule("a".into(), "m 1".into()))
        );
        assert_eq!(
            r(Method::POST, "/enrollments/a"),
            Err(NoRoute::MethodNotAllowed(GET_PUT_DELETE))
        );
        assert_eq!(r(Method::GET, "/enrollments"), Err(NoRoute::MethodNotAllowed(POST)));
        assert_eq!(
            r(Method::PUT, "/registrations/a"),
            Err(NoRoute::MethodNotAllowed(GET_DELETE))
        );
        assert_eq!(
            r(Method::DELETE, "/twins/a"),
            Err(NoRoute::MethodNotAllowed(GET_PUT_PATCH))
        );
        assert_eq!(
            r(Method::PATCH, "/enrollments/query"),
            Err(NoRoute::MethodNotAllowed(GET_PUT_DELETE))
        );
        // Invalid UTF-8 after decoding.
        assert_eq!(r(Method::GET, "/enrollments/%ff"), Err(NoRoute::NotFound));
    }
}
