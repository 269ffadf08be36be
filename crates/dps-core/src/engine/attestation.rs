//! What attestation works with, shared by the device API ([`super::device`]) and the ways a
//! device proves itself ([`super::tpm`], [`super::x509`], the SAS checks in `device`): the
//! request and its credential, and what attestation found. Its own module so that those modules
//! depend on it and not on each other.

use dps_proto::model::device::DeviceRegistration;
use dps_proto::model::service::{
    AttestationType, EnrollmentGroup, IndividualEnrollment, ProvisioningStatus, TpmRegistrationResult,
    X509RegistrationResult,
};

use crate::error::{Error, InvalidArgument, SasRefusal};
use crate::hub::DeviceAuth;

/// How long a TPM challenge ([`super::tpm`]) can be answered. Generous for a TPM (activation and import take well
/// under a second) and slow networks, short enough that few keys are held.
pub const CHALLENGE_TTL_SECS: i64 = 300;

/// What the device presented to prove who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// Nothing (the first, unauthenticated TPM request).
    None,
    /// A SAS token (MQTT password or HTTP `Authorization`).
    Sas(String),
    /// The DER certificates the device sent in the TLS handshake, leaf first.
    X509(Vec<Vec<u8>>),
}

/// Who is asking: the same for every transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRequest {
    /// ID scope from the MQTT username or the URL path.
    pub id_scope: String,
    /// Registration id from the MQTT username or the URL path.
    pub registration_id: String,
    /// Proof of identity.
    pub credential: Credential,
    /// Device API version, if the device sent one.
    pub api_version: Option<String>,
    /// The address the device connected from, when the transport knows it: `geoLatency`
    /// allocation places the device by it ([`crate::GeoConfig`]).
    pub source: Option<std::net::IpAddr>,
    /// The transport the request came over (for metrics and logs; no decision depends on it).
    pub transport: super::Transport,
}

/// The enrollment a device matched.
#[derive(Clone)]
pub(super) enum Matched {
    Individual(Box<IndividualEnrollment>),
    Group(Box<EnrollmentGroup>),
}

/// The outcome of attestation: the enrollment and the keys the hub should know the device by.
#[derive(Clone)]
pub(super) struct Attested {
    pub(super) matched: Matched,
    pub(super) attestation: AttestationType,
    pub(super) hub_auth: DeviceAuth,
    /// X.509 details for the device's registration result.
    pub(super) x509: Option<X509RegistrationResult>,
    /// TPM: the activation blob of the hub key, for the device's registration result.
    pub(super) tpm: Option<TpmRegistrationResult>,
}

impl Matched {
    pub(super) fn disabled(&self) -> Option<Error> {
        match self {
            Matched::Individual(e) if e.provisioning_status == Some(ProvisioningStatus::Disabled) => {
                Some(Error::EnrollmentDisabled {
                    group: false,
                    id: e.registration_id.clone(),
                })
            }
            Matched::Group(g) if g.provisioning_status == Some(ProvisioningStatus::Disabled) => {
                Some(Error::EnrollmentDisabled {
                    group: true,
                    id: g.enrollment_group_id.clone(),
                })
            }
            _ => None,
        }
    }

    pub(super) fn group_id(&self) -> Option<&str> {
        match self {
            Matched::Group(g) => Some(&g.enrollment_group_id),
            Matched::Individual(_) => None,
        }
    }

    /// `individual enrollment 'dev-1'`, `enrollment group 'line-1'`: for messages to the
    /// device, which has proven it belongs to it.
    pub(super) fn describe(&self) -> String {
        match self {
            Matched::Individual(e) => format!("individual enrollment '{}'", e.registration_id),
            Matched::Group(g) => format!("enrollment group '{}'", g.enrollment_group_id),
        }
    }

    /// The credential policy the enrollment names, by either field (an error when the two
    /// disagree).
    pub(super) fn credential_policy(&self) -> Result<Option<&str>, String> {
        let (name, older) = match self {
            Matched::Individual(e) => (
                e.credential_policy_name.as_deref(),
                e.client_certificate_issuance_policy.as_ref(),
            ),
            Matched::Group(g) => (
                g.credential_policy_name.as_deref(),
                g.client_certificate_issuance_policy.as_ref(),
            ),
        };
        dps_proto::model::service::named_credential_policy(name, older)
    }
}

/// The refusal for a SAS token no enrollment accepts ([`SasRefusal::NoMatchingKey`]: one answer
/// whatever the reason); `why` goes to the server log.
pub(super) fn sas_refused(req: &DeviceRequest, why: &str) -> Error {
    tracing::info!(registration = %req.registration_id, reason = why, "device SAS token refused");
    SasRefusal::NoMatchingKey {
        registration_id: req.registration_id.clone(),
        challenge_ttl_secs: CHALLENGE_TTL_SECS,
    }
    .into()
}

/// The body's `registrationId`, when sent, must be the request's (case-insensitively).
pub(super) fn check_body_id(req: &DeviceRequest, body: &DeviceRegistration) -> Result<(), Error> {
    match &body.registration_id {
        Some(body_id) if !body_id.eq_ignore_ascii_case(&req.registration_id) => {
            Err(InvalidArgument::BodyRegistrationId {
                body_id: body_id.clone(),
                registration_id: req.registration_id.clone(),
            }
            .into())
        }
        _ => Ok(()),
    }
}
