//! The `api-version` values this server accepts, per API, and the check every transport runs.
//!
//! Azure refuses an `api-version` it does not know with a 400 that lists the versions it does
//! (service-api.md §7.1); so does dps. The lists are every version an official SDK has sent, from
//! the reference docs (device-protocol.md §10, service-api.md §1, hub-dice-tpm.md §MQTT/REST), plus
//! the REST specification's stable and preview versions, so that no SDK release in use is refused.
//! The version only gates optional features; it never changes how a request is authorized.

/// Versions of the DPS device API (HTTPS query, MQTT username, AMQP link property).
pub const DEVICE: &[&str] = &[
    "2017-08-31-preview",
    "2017-11-15",
    "2018-09-01-preview",
    "2018-11-01",
    "2019-03-31",
    "2021-06-01",
    "2021-10-01",
    "2021-11-01-preview",
    "2025-07-01-preview",
    "2026-04-01",
    "2026-11-02-preview",
    "2026-11-15-preview",
];

/// Versions of the DPS service API (enrollments, groups, registrations, certificates).
/// `2019-01-15` was sent by the C# service SDK (`SDKUtils.ApiVersionProvisioning`) in early 2019.
pub const SERVICE: &[&str] = &[
    "2017-08-31-preview",
    "2017-11-15",
    "2018-09-01-preview",
    "2018-11-01",
    "2019-01-15",
    "2019-03-31",
    "2021-06-01",
    "2021-10-01",
    "2021-11-01-preview",
    "2025-07-01-preview",
    "2026-04-01",
    "2026-11-02-preview",
    "2026-11-15-preview",
];

/// Versions of the IoT hub device and registry APIs.
pub const HUB: &[&str] = &[
    "2016-02-03",
    "2016-11-14",
    "2017-06-30",
    "2017-11-08-preview",
    "2018-01-26",
    "2018-04-01",
    "2018-06-30",
    "2018-08-30-preview",
    "2019-03-30",
    "2019-07-01-preview",
    "2019-10-01",
    "2020-03-13",
    "2020-05-31-preview",
    "2020-06-30-preview",
    "2020-09-30",
    "2021-04-12",
];

/// The device API version dps's own device client sends (HTTPS query, MQTT username): what the
/// current C SDK and iot-identity-service send (device-protocol.md §10).
pub const DEVICE_CLIENT: &str = "2021-06-01";

/// The first device API version that takes a certificate signing request as `csr`: the C#
/// SDK switches to it when it sends one ("issuing a certificate from a request is not part of
/// the GA API version, and the service rejects a registration carrying one unless the
/// connection asked for a version that knows about it"), and dps refuses `csr` under an older
/// version as Azure does.
pub const CSR_FROM: &str = "2025-07-01-preview";

/// Whether `version` is [`CSR_FROM`] or later (versions are dates, `YYYY-MM-DD[-preview]`).
pub fn takes_csr(version: &str) -> bool {
    version.get(..10).is_some_and(|date| date >= &CSR_FROM[..10])
}

/// The service API version the `dps` CLI sends.
pub const SERVICE_CLIENT: &str = "2021-10-01";

/// The hub API version dps's own hub clients send (registry REST, device MQTT CONNECT username:
/// what the Node SDK sends).
pub const HUB_CLIENT: &str = "2021-04-12";

/// Why an `api-version` was refused; the message names what would be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiVersionError {
    /// No `api-version` was sent where one is required.
    #[error("the api-version query parameter is required; supported versions: {}", .supported.join(", "))]
    Missing {
        /// The versions that would be accepted.
        supported: &'static [&'static str],
    },
    /// The value is not one of the supported versions.
    #[error("api-version '{given}' is not supported; supported versions: {}", .supported.join(", "))]
    Unsupported {
        /// What the client sent (truncated to 64 characters).
        given: String,
        /// The versions that would be accepted.
        supported: &'static [&'static str],
    },
}

/// Checks `given` against `supported`: `Ok` for an exact (case-insensitive) match.
pub fn check(given: Option<&str>, supported: &'static [&'static str]) -> Result<(), ApiVersionError> {
    let given = given.map(str::trim).filter(|v| !v.is_empty());
    match given {
        None => Err(ApiVersionError::Missing { supported }),
        Some(v) if supported.iter().any(|s| s.eq_ignore_ascii_case(v)) => Ok(()),
        Some(v) => Err(ApiVersionError::Unsupported {
            given: v.chars().take(64).collect(),
            supported,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sdk_version_is_accepted() {
        // Python/Node/C# device, C device and iot-identity-service, REST spec stable.
        for v in ["2019-03-31", "2021-06-01", "2021-10-01"] {
            assert_eq!(check(Some(v), DEVICE), Ok(()));
        }
        // Node and new Python service clients, old Python, C#.
        for v in ["2021-10-01", "2018-09-01-preview", "2019-03-31"] {
            assert_eq!(check(Some(v), SERVICE), Ok(()));
        }
        // Python, C, Node, embedded C hub clients.
        for v in ["2019-10-01", "2020-09-30", "2021-04-12", "2018-06-30"] {
            assert_eq!(check(Some(v), HUB), Ok(()));
        }
    }

    #[test]
    fn csr_is_taken_from_its_preview_on() {
        for v in ["2025-07-01-preview", "2026-04-01", "2026-11-15-preview"] {
            assert!(takes_csr(v), "{v}");
        }
        for v in ["2021-11-01-preview", "2021-10-01", "", "junk"] {
            assert!(!takes_csr(v), "{v}");
        }
    }

    #[test]
    fn what_our_clients_send_is_accepted() {
        assert_eq!(check(Some(DEVICE_CLIENT), DEVICE), Ok(()));
        assert_eq!(check(Some(SERVICE_CLIENT), SERVICE), Ok(()));
        assert_eq!(check(Some(HUB_CLIENT), HUB), Ok(()));
    }

    #[test]
    fn refusals_name_the_supported_versions() {
        let e = check(Some("garbage"), DEVICE).unwrap_err();
        assert!(e.to_string().contains("'garbage' is not supported"));
        assert!(e.to_string().contains("2019-03-31"));
        assert!(check(Some("1999-01-01"), SERVICE).is_err());
        assert!(matches!(check(None, SERVICE), Err(ApiVersionError::Missing { .. })));
        assert!(matches!(
            check(Some("  "), SERVICE),
            Err(ApiVersionError::Missing { .. })
        ));
        let long = "x".repeat(500);
        match check(Some(&long), HUB).unwrap_err() {
            ApiVersionError::Unsupported { given, .. } => assert_eq!(given.len(), 64),
            other => panic!("{other:?}"),
        }
    }
}
