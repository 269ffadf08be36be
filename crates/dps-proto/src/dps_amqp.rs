//! The DPS device protocol over AMQP 1.0 (device-protocol.md, newer-surfaces.md "DPS over
//! AMQP"; Node `azure-iot-provisioning-device-amqp` `amqp.ts` and `sasl_tpm.ts`, C
//! `prov_transport_amqp_common.c` and `prov_sasl_tpm.c`, C# `ProvisioningTransportHandlerAmqp`):
//! the registration node's address, the request and response properties, and the bytes of the
//! `TPM` SASL mechanism. No I/O: the server and the Rust device client both use these.

use fe2o3_amqp_types::definitions::Error;
use fe2o3_amqp_types::messaging::{ApplicationProperties, Data, Message, MessageId, Properties};
use fe2o3_amqp_types::primitives::{Binary, SimpleValue, Symbol};

use crate::amqp_message::{body_bytes, condition_name, seconds, Incoming};

/// Application property naming the request: [`REGISTER`] or [`GET_OPERATION_STATUS`].
pub const OPERATION_TYPE: &str = "iotdps-operation-type";
/// Application property carrying the operation id of a status request.
pub const OPERATION_ID: &str = "iotdps-operation-id";
/// Application property (boolean) asking for a registration even if one exists.
pub const FORCE_REGISTRATION: &str = "iotdps-forceRegistration";
/// Operation type of a register request.
pub const REGISTER: &str = "iotdps-register";
/// Operation type of an operation-status request.
pub const GET_OPERATION_STATUS: &str = "iotdps-get-operationstatus";
/// Application property of a response (and `info` field of a rejection): seconds to wait
/// before polling or retrying, as Node and C read it.
pub const RETRY_AFTER: &str = "retry-after";
/// The same, as C# reads it (`Retry-After`); both are sent.
pub const RETRY_AFTER_CSHARP: &str = "Retry-After";
/// Link attach property naming the DPS API version the client speaks.
pub const API_VERSION_PROPERTY: &str = "com.microsoft:api-version";
/// Link attach property naming the client SDK.
pub const CLIENT_VERSION_PROPERTY: &str = "com.microsoft:client-version";
/// The SASL mechanism of TPM attestation.
pub const TPM_MECHANISM: &str = "TPM";

/// The AMQP error condition a refused request is rejected with, by its HTTP-like status. The
/// SDKs decide on it: Node's `translateError` retries `amqp:internal-error` (InternalServerError)
/// and `com.microsoft:device-container-throttled` (ThrottlingError) and fails on the rest; C#
/// reads the JSON error (`errorCode`, `message`, `trackingId`) from the error's description and
/// retries 429 and 5xx by that code, waiting the `retry-after` of the error's `info`.
pub fn error_condition(status: u16) -> &'static str {
    match status {
        400 => "com.microsoft:argument-error",
        401 | 403 => "amqp:unauthorized-access",
        404 => "amqp:not-found",
        412 => "com.microsoft:precondition-failed",
        413 => "amqp:link:message-size-exceeded",
        429 => "com.microsoft:device-container-throttled",
        _ if status >= 500 => "amqp:internal-error",
        _ => "com.microsoft:argument-error",
    }
}

/// The HTTP-like status a rejection stands for, read back by a client from its condition when
/// the description holds no DPS error JSON (whose `errorCode` says more): the inverse of
/// [`error_condition`] for the conditions it produces; anything else is a 400.
pub fn status_of_condition(condition: &str) -> u16 {
    match condition {
        "amqp:unauthorized-access" => 401,
        "amqp:not-found" => 404,
        "com.microsoft:precondition-failed" => 412,
        "amqp:link:message-size-exceeded" => 413,
        "com.microsoft:device-container-throttled" => 429,
        "amqp:internal-error" => 500,
        _ => 400,
    }
}

/// A request a device sends on its registration node.
#[derive(Debug, Clone, Copy)]
pub enum DpsRequest<'a> {
    /// Register, with the registration body (JSON; empty for none).
    Register {
        /// The body.
        body: &'a [u8],
    },
    /// Ask for the status of an operation.
    OperationStatus {
        /// The operation id the register answer carried.
        operation_id: &'a str,
    },
}

/// The request message as the Node SDK sends it: the correlation id as a string, content type
/// JSON, the operation in application properties, the body in a data section (a status request
/// has none: the server reads only its properties).
pub fn request_message(request: &DpsRequest<'_>, correlation: &str) -> Message<Data> {
    let (app, body) = match request {
        DpsRequest::Register { body } => (
            ApplicationProperties::builder()
                .insert(OPERATION_TYPE, REGISTER)
                .insert(FORCE_REGISTRATION, false),
            body.to_vec(),
        ),
        DpsRequest::OperationStatus { operation_id } => (
            ApplicationProperties::builder()
                .insert(OPERATION_TYPE, GET_OPERATION_STATUS)
                .insert(OPERATION_ID, *operation_id),
            Vec::new(),
        ),
    };
    Message::builder()
        .properties(
            Properties::builder()
                .correlation_id(MessageId::String(correlation.to_string()))
                .content_type(Symbol::from("application/json"))
                .build(),
        )
        .application_properties(app.build())
        .data(Binary::from(body))
        .build()
}

/// An answer as a client reads it, in the terms of the HTTPS and MQTT transports: the status,
/// `retry-after` (seconds) and the JSON body (the operation status, or the DPS error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpsAnswer {
    /// 200 for a response; a rejection's status otherwise.
    pub status: u16,
    /// Seconds to wait before polling or retrying, if the server said.
    pub retry_after: Option<u32>,
    /// The JSON body.
    pub body: Vec<u8>,
}

/// The answer a response message (to an accepted request) carries.
pub fn response_answer(msg: &Incoming) -> DpsAnswer {
    let retry_after = msg
        .application_properties
        .as_ref()
        .and_then(|p| p.0.get(RETRY_AFTER).or_else(|| p.0.get(RETRY_AFTER_CSHARP)))
        .and_then(seconds);
    DpsAnswer {
        status: 200,
        retry_after,
        body: body_bytes(msg).unwrap_or_default(),
    }
}

/// A rejection as the status and error body the HTTPS transport would have seen: the status from
/// the description's `errorCode` (HTTP status × 1000 + sub-code, as the C# SDK reads it), else
/// from the condition; `retry-after` from the error's `info`.
pub fn rejection_answer(error: Option<&Error>) -> DpsAnswer {
    let Some(error) = error else {
        return DpsAnswer {
            status: 400,
            retry_after: None,
            body: b"the request was rejected without an error".to_vec(),
        };
    };
    let condition = condition_name(&error.condition);
    let body = error
        .description
        .clone()
        .unwrap_or_else(|| condition.clone())
        .into_bytes();
    let code = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("errorCode").and_then(serde_json::Value::as_u64))
        .and_then(|c| u16::try_from(c / 1000).ok())
        .filter(|s| (400..600).contains(s));
    let retry_after = error.info.as_ref().and_then(|info| {
        [RETRY_AFTER, RETRY_AFTER_CSHARP]
            .iter()
            .filter_map(|k| info.get(&Symbol::from(*k)))
            .find_map(|v| SimpleValue::try_from(v.clone()).ok().as_ref().and_then(seconds))
    });
    DpsAnswer {
        status: code.unwrap_or_else(|| status_of_condition(&condition)),
        retry_after,
        body,
    }
}

/// `{idScope}/registrations/{registrationId}`: where a device's requests go and its responses
/// come from (both links attach to it), and the SASL PLAIN user name of a SAS device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationNode {
    /// The ID scope.
    pub id_scope: String,
    /// The registration id, percent-decoded.
    pub registration_id: String,
}

impl RegistrationNode {
    /// Parses an address or user name; `None` if it is not a registration node. A trailing
    /// `/` or query is not part of it.
    pub fn parse(address: &str) -> Option<Self> {
        let address = address.split(['?', '#']).next().unwrap_or_default();
        let mut parts = address.trim_start_matches('/').split('/');
        let (scope, literal, id) = (parts.next()?, parts.next()?, parts.next()?);
        if scope.is_empty() || literal != "registrations" || id.is_empty() || parts.any(|p| !p.is_empty()) {
            return None;
        }
        let registration_id = percent_encoding::percent_decode_str(id)
            .decode_utf8()
            .ok()?
            .into_owned();
        Some(Self {
            id_scope: scope.to_string(),
            registration_id,
        })
    }

    /// The address: `{idScope}/registrations/{registrationId}`.
    pub fn address(&self) -> String {
        format!("{}/registrations/{}", self.id_scope, self.registration_id)
    }
}

/// The user name and password of a SASL PLAIN initial response (`[authzid] NUL authcid NUL
/// passwd`, RFC 4616). `None` if it is not three NUL-separated UTF-8 fields.
pub fn parse_plain(response: &[u8]) -> Option<(String, String)> {
    let mut fields = response.splitn(3, |b| *b == 0);
    let (_authzid, user, password) = (fields.next()?, fields.next()?, fields.next()?);
    Some((
        std::str::from_utf8(user).ok()?.to_string(),
        std::str::from_utf8(password).ok()?.to_string(),
    ))
}

/// The SASL PLAIN initial response for `user` and `password` (no authzid).
pub fn format_plain(user: &str, password: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(user.len() + password.len() + 2);
    out.push(0);
    out.extend_from_slice(user.as_bytes());
    out.push(0);
    out.extend_from_slice(password.as_bytes());
    out
}

/// Why a `TPM` SASL frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TpmSaslError {
    /// The init frame is not `NUL idScope NUL registrationId NUL endorsementKey`.
    #[error("TPM SASL init is not NUL idScope NUL registrationId NUL endorsementKey")]
    MalformedInit,
    /// A challenge segment has no control byte, or one without the segment bit.
    #[error("TPM SASL challenge segment has no valid control byte")]
    MalformedSegment,
}

/// The initial response of the `TPM` mechanism: `NUL idScope NUL registrationId NUL EK`, the
/// EK being the TPM2B_PUBLIC of the endorsement key (binary, may contain NULs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmInit {
    /// The ID scope.
    pub id_scope: String,
    /// The registration id.
    pub registration_id: String,
    /// The endorsement key (TPM2B_PUBLIC bytes).
    pub endorsement_key: Vec<u8>,
}

impl TpmInit {
    /// Parses an initial response.
    pub fn parse(bytes: &[u8]) -> Result<Self, TpmSaslError> {
        let rest = bytes.strip_prefix(&[0]).ok_or(TpmSaslError::MalformedInit)?;
        let scope_end = rest.iter().position(|b| *b == 0).ok_or(TpmSaslError::MalformedInit)?;
        let (scope, rest) = (&rest[..scope_end], &rest[scope_end + 1..]);
        let id_end = rest.iter().position(|b| *b == 0).ok_or(TpmSaslError::MalformedInit)?;
        let (id, ek) = (&rest[..id_end], &rest[id_end + 1..]);
        let text = |b: &[u8]| {
            std::str::from_utf8(b)
                .ok()
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or(TpmSaslError::MalformedInit)
        };
        if ek.is_empty() {
            return Err(TpmSaslError::MalformedInit);
        }
        Ok(Self {
            id_scope: text(scope)?,
            registration_id: text(id)?,
            endorsement_key: ek.to_vec(),
        })
    }

    /// The initial response bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(self.id_scope.as_bytes());
        out.push(0);
        out.extend_from_slice(self.registration_id.as_bytes());
        out.push(0);
        out.extend_from_slice(&self.endorsement_key);
        out
    }
}

/// The client's responses in the `TPM` exchange start with a NUL (`NUL SRK`, `NUL` to ask for
/// the next segment, `NUL sasToken` after the last): the bytes after it.
pub fn strip_response_marker(response: &[u8]) -> Option<&[u8]> {
    response.strip_prefix(&[0])
}

/// The client's response `NUL data`.
pub fn response_with_marker(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(0);
    out.extend_from_slice(data);
    out
}

/// Bytes of the activation blob per challenge segment. A SASL frame is only guaranteed to fit
/// 512 bytes (AMQP 1.0 §5.3.3); the blob (about 400 bytes for an RSA-2048 EK) goes in segments
/// below that with room for the frame header and the control byte.
pub const TPM_SEGMENT_BYTES: usize = 400;

/// Control bits of a segment followed by more.
const SEGMENT_MORE: u8 = 0x80;
/// Control bits of the last segment.
const SEGMENT_LAST: u8 = 0xC0;
/// The low bits of the control byte count the segments (C and C# check them; C# takes at most
/// four, which [`TPM_SEGMENT_BYTES`] keeps every blob within).
const SEGMENT_SEQUENCE: u8 = 0x03;

/// The activation blob cut into challenge segments, each its control byte (more or last, and the
/// segment's number modulo 4) then up to [`TPM_SEGMENT_BYTES`] of the blob, in order.
pub fn tpm_challenge_segments(blob: &[u8]) -> Vec<Vec<u8>> {
    let chunks: Vec<&[u8]> = blob.chunks(TPM_SEGMENT_BYTES).collect();
    let n = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut segment = Vec::with_capacity(chunk.len() + 1);
            let sequence = (i as u8) & SEGMENT_SEQUENCE;
            segment.push(if i + 1 == n { SEGMENT_LAST } else { SEGMENT_MORE } | sequence);
            segment.extend_from_slice(chunk);
            segment
        })
        .collect()
}

/// One challenge segment as the client reads it: its bytes and whether it is the last.
pub fn parse_challenge_segment(segment: &[u8]) -> Result<(&[u8], bool), TpmSaslError> {
    let (&control, data) = segment.split_first().ok_or(TpmSaslError::MalformedSegment)?;
    if control & SEGMENT_LAST == SEGMENT_LAST {
        Ok((data, true))
    } else if control & SEGMENT_MORE == SEGMENT_MORE {
        Ok((data, false))
    } else {
        Err(TpmSaslError::MalformedSegment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp_types::definitions::{AmqpError, ErrorCondition, Fields};
    use fe2o3_amqp_types::primitives::Value;

    fn error(condition: &str, description: Option<&str>, retry_after: Option<Value>) -> Error {
        let info = retry_after.map(|v| {
            let mut f = Fields::new();
            f.insert(Symbol::from(RETRY_AFTER), v);
            f
        });
        // As the client decodes it: a standard condition becomes its own variant.
        let condition = match condition {
            "amqp:internal-error" => ErrorCondition::AmqpError(AmqpError::InternalError),
            "amqp:not-found" => ErrorCondition::AmqpError(AmqpError::NotFound),
            other => ErrorCondition::Custom(Symbol::from(other)),
        };
        Error::new(condition, description.map(str::to_string), info)
    }

    #[test]
    fn rejections_read_as_their_http_status() {
        let a = rejection_answer(Some(&error(
            "com.microsoft:device-container-throttled",
            Some(r#"{"errorCode":429001,"message":"slow down"}"#),
            Some(Value::Int(7)),
        )));
        assert_eq!((a.status, a.retry_after), (429, Some(7)));
        assert!(a.body.starts_with(br#"{"errorCode":429001"#));
        // The errorCode wins over the condition; no JSON: the condition decides.
        let a = rejection_answer(Some(&error(
            "amqp:internal-error",
            Some(r#"{"errorCode":401002,"message":"m"}"#),
            None,
        )));
        assert_eq!(a.status, 401);
        let a = rejection_answer(Some(&error("amqp:not-found", Some("no such registration"), None)));
        assert_eq!(a.status, 404);
        assert_eq!(a.body, b"no such registration");
        let a = rejection_answer(Some(&error(
            "amqp:internal-error",
            None,
            Some(Value::String("3".into())),
        )));
        assert_eq!((a.status, a.retry_after), (500, Some(3)));
        assert_eq!(rejection_answer(None).status, 400);
    }

    #[test]
    fn registration_nodes_parse_and_format() {
        let n = RegistrationNode::parse("0ne00000001/registrations/dev%2D1").unwrap();
        assert_eq!(n.id_scope, "0ne00000001");
        assert_eq!(n.registration_id, "dev-1");
        assert_eq!(RegistrationNode::parse(&n.address()), Some(n));
        for bad in [
            "",
            "scope",
            "scope/registrations",
            "scope/registrations/",
            "scope/devices/x",
            "/devices/x/messages/events",
            "s/registrations/a/b",
        ] {
            assert_eq!(RegistrationNode::parse(bad), None, "{bad}");
        }
        assert!(RegistrationNode::parse("s/registrations/a?api-version=2019-03-31").is_some());
    }

    #[test]
    fn refusals_map_to_the_conditions_the_sdks_retry_on() {
        assert_eq!(error_condition(429), "com.microsoft:device-container-throttled");
        assert_eq!(error_condition(500), "amqp:internal-error");
        assert_eq!(error_condition(503), "amqp:internal-error");
        assert_eq!(error_condition(401), "amqp:unauthorized-access");
        assert_eq!(error_condition(404), "amqp:not-found");
        assert_eq!(error_condition(400), "com.microsoft:argument-error");
        for status in [400, 401, 404, 412, 413, 429, 500] {
            assert_eq!(status_of_condition(error_condition(status)), status);
        }
        assert_eq!(status_of_condition("amqp:decode-error"), 400);
    }

    #[test]
    fn plain_round_trips_and_keeps_nuls_out() {
        let bytes = format_plain("0ne/registrations/d", "SharedAccessSignature sr=x");
        assert_eq!(
            parse_plain(&bytes),
            Some(("0ne/registrations/d".into(), "SharedAccessSignature sr=x".into()))
        );
        assert_eq!(parse_plain(b"\0user"), None);
        assert_eq!(parse_plain(b"authz\0user\0pass"), Some(("user".into(), "pass".into())));
    }

    /// The init frame of Node's `SaslTpm.start`: NUL scope NUL id NUL EK.
    #[test]
    fn tpm_init_round_trips_with_nuls_in_the_key() {
        let init = TpmInit {
            id_scope: "0ne00000001".into(),
            registration_id: "tpm-1".into(),
            endorsement_key: vec![0, 1, 0, 0xff, 0],
        };
        let bytes = init.to_bytes();
        assert_eq!(&bytes[..13], b"\x000ne00000001\x00");
        assert_eq!(TpmInit::parse(&bytes), Ok(init));
        for bad in [
            &b""[..],
            b"x",
            b"\0scope",
            b"\0scope\0id",
            b"\0scope\0id\0",
            b"\0\0id\0k",
            b"\0s\0\0k",
        ] {
            assert_eq!(TpmInit::parse(bad), Err(TpmSaslError::MalformedInit), "{bad:?}");
        }
    }

    #[test]
    fn challenge_segments_carry_the_blob_in_order_and_mark_the_last() {
        let blob: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let segments = tpm_challenge_segments(&blob);
        assert_eq!(segments.len(), 3);
        let mut joined = Vec::new();
        for (i, s) in segments.iter().enumerate() {
            let (data, last) = parse_challenge_segment(s).unwrap();
            assert_eq!(last, i == 2);
            // Node's SaslTpm: `(b & 0xC0) === 192` is last, `(b & 0x80) === 128` is more; C and
            // C# check the sequence in the low two bits.
            assert_eq!(s[0] & 0xC0 == 0xC0, last);
            assert_eq!(s[0] & 0x80, 0x80);
            assert_eq!(s[0] & 0x03, i as u8);
            joined.extend_from_slice(data);
        }
        assert_eq!(joined, blob);
        assert_eq!(tpm_challenge_segments(&[7]), vec![vec![0xC0, 7]]);
        assert_eq!(parse_challenge_segment(&[]), Err(TpmSaslError::MalformedSegment));
        assert_eq!(parse_challenge_segment(&[0x00, 1]), Err(TpmSaslError::MalformedSegment));
    }
}
