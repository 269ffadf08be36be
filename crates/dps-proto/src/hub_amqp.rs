//! The IoT hub device protocol over AMQP 1.0 (newer-surfaces.md "The hub over AMQP"; Node
//! `azure-iot-device-amqp`, `azure-iot-amqp-base`; C `iothubtransport_amqp_*`): the nodes a device
//! attaches to and the property names of CBS, twin and method messages. No I/O.

/// The claims-based security node: put-token requests go to it, their replies come from it.
pub const CBS_NODE: &str = "$cbs";
/// The service's cloud-to-device node: a backend sends on it, each message's `to` naming the
/// device (`/devices/{id}/messages/devicebound`).
pub const SERVICE_C2D_NODE: &str = "/messages/devicebound";
/// The service's feedback node: batches of cloud-to-device feedback for a backend.
pub const SERVICE_FEEDBACK_NODE: &str = "/messages/serviceBound/feedback";
/// Content type of a feedback batch (a JSON array of records).
pub const FEEDBACK_CONTENT_TYPE: &str = "application/vnd.microsoft.iothub.feedback.json";
/// The node a backend reads file upload notifications from.
pub const SERVICE_FILE_NOTIFICATIONS_NODE: &str = "/messages/serviceBound/filenotifications";
/// `content-type` of a file upload notification (the C# service SDK refuses any other).
pub const FILE_NOTIFICATION_CONTENT_TYPE: &str = "application/vnd.microsoft.iothub.filenotification.json";
/// CBS request application property: the operation (`put-token`).
pub const CBS_OPERATION: &str = "operation";
/// CBS request application property: the token type (`servicebus.windows.net:sastoken`).
pub const CBS_TYPE: &str = "type";
/// CBS request application property: the audience the token is for.
pub const CBS_NAME: &str = "name";
/// CBS reply application property: the HTTP-like status.
pub const CBS_STATUS_CODE: &str = "status-code";
/// CBS reply application property: the status text.
pub const CBS_STATUS_DESCRIPTION: &str = "status-description";
/// The only CBS operation.
pub const PUT_TOKEN: &str = "put-token";
/// The token type of a SAS token.
pub const SAS_TOKEN_TYPE: &str = "servicebus.windows.net:sastoken";
/// The older token type some clients send.
pub const JWT_TOKEN_TYPE: &str = "jwt";

/// Link attach property: the correlation id that pairs a request link with its reply link
/// (twin, methods).
pub const CHANNEL_CORRELATION_ID: &str = "com.microsoft:channel-correlation-id";
/// Link attach property: the API version.
pub const API_VERSION: &str = "com.microsoft:api-version";

/// Message annotation of twin requests and responses: the operation (`GET`, `PATCH`, `PUT`,
/// `DELETE`).
pub const TWIN_OPERATION: &str = "operation";
/// Message annotation of twin requests: the resource (`/properties/reported`,
/// `/notifications/twin/properties/desired`).
pub const TWIN_RESOURCE: &str = "resource";
/// Message annotation of twin responses: the HTTP-like status.
pub const TWIN_STATUS: &str = "status";
/// Message annotation of twin responses and notifications: the twin version.
pub const TWIN_VERSION: &str = "version";
/// Twin resource of reported-property patches.
pub const REPORTED_RESOURCE: &str = "/properties/reported";
/// Twin resource of the desired-property notification subscription.
pub const DESIRED_NOTIFICATIONS_RESOURCE: &str = "/notifications/twin/properties/desired";

/// Application property of a direct-method request: the method name.
pub const METHOD_NAME: &str = "IoThub-methodname";
/// Application property of a direct-method response: the status the device returns.
pub const METHOD_STATUS: &str = "IoThub-status";

/// What a node address names. Device ids are percent-decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubNode {
    /// `$cbs`.
    Cbs,
    /// `/messages/devicebound`: cloud-to-device messages from a backend ([`SERVICE_C2D_NODE`]).
    ServiceC2d,
    /// `/messages/serviceBound/feedback`: feedback to a backend ([`SERVICE_FEEDBACK_NODE`]).
    ServiceFeedback,
    /// `/messages/serviceBound/filenotifications`: file upload notifications to a backend
    /// ([`SERVICE_FILE_NOTIFICATIONS_NODE`]).
    ServiceFileNotifications,
    /// `/devices/{id}[/modules/{mid}]/messages/events`: telemetry from the device or module.
    /// For a module, the same node is also its input receiver (inputs come only from IoT Edge).
    Telemetry {
        /// The device.
        device_id: String,
        /// The module, for a module's node.
        module_id: Option<String>,
    },
    /// `/devices/{id}/messages/devicebound`: cloud-to-device messages to the device (modules
    /// have none).
    C2d {
        /// The device.
        device_id: String,
    },
    /// `/devices/{id}[/modules/{mid}]/methods/devicebound`: direct-method requests (to the
    /// identity) and their responses (from it).
    Methods {
        /// The device.
        device_id: String,
        /// The module, for a module's node.
        module_id: Option<String>,
    },
    /// `/devices/{id}[/modules/{mid}]/twin`: twin requests and responses.
    Twin {
        /// The device.
        device_id: String,
        /// The module, for a module's node.
        module_id: Option<String>,
    },
}

impl HubNode {
    /// Parses an address (a trailing query is not part of it); `None` if it names no hub node.
    pub fn parse(address: &str) -> Option<Self> {
        let address = address.split(['?', '#']).next().unwrap_or_default();
        if address == CBS_NODE {
            return Some(HubNode::Cbs);
        }
        if address.eq_ignore_ascii_case(SERVICE_C2D_NODE) {
            return Some(HubNode::ServiceC2d);
        }
        if address.eq_ignore_ascii_case(SERVICE_FEEDBACK_NODE) {
            return Some(HubNode::ServiceFeedback);
        }
        if address.eq_ignore_ascii_case(SERVICE_FILE_NOTIFICATIONS_NODE) {
            return Some(HubNode::ServiceFileNotifications);
        }
        let rest = address.strip_prefix("/devices/")?;
        let mut parts = rest.split('/');
        let device_id = decode(parts.next()?)?;
        let mut tail: Vec<&str> = parts.collect();
        let module_id = match tail.as_slice() {
            ["modules", module, _, ..] => {
                let m = decode(module)?;
                tail.drain(..2);
                Some(m)
            }
            _ => None,
        };
        // C# writes `deviceBound`.
        let bound = |b: &str| b.eq_ignore_ascii_case("devicebound");
        let node = match tail.as_slice() {
            ["messages", "events"] => HubNode::Telemetry { device_id, module_id },
            ["messages", b] if bound(b) && module_id.is_none() => HubNode::C2d { device_id },
            ["methods", b] if bound(b) => HubNode::Methods { device_id, module_id },
            ["twin"] => HubNode::Twin { device_id, module_id },
            _ => return None,
        };
        Some(node)
    }

    /// The node's address, as a device attaches to it (the ids percent-encoded, as
    /// [`HubNode::parse`] decodes them).
    pub fn address(&self) -> String {
        let identity = |id: &str, module: &Option<String>| {
            let mut a = format!("/devices/{}", crate::sas::encode_component(id));
            if let Some(m) = module {
                a.push_str("/modules/");
                a.push_str(&crate::sas::encode_component(m));
            }
            a
        };
        match self {
            HubNode::Cbs => CBS_NODE.to_string(),
            HubNode::ServiceC2d => SERVICE_C2D_NODE.to_string(),
            HubNode::ServiceFeedback => SERVICE_FEEDBACK_NODE.to_string(),
            HubNode::ServiceFileNotifications => SERVICE_FILE_NOTIFICATIONS_NODE.to_string(),
            HubNode::Telemetry { device_id, module_id } => {
                format!("{}/messages/events", identity(device_id, module_id))
            }
            HubNode::C2d { device_id } => format!("{}/messages/devicebound", identity(device_id, &None)),
            HubNode::Methods { device_id, module_id } => {
                format!("{}/methods/devicebound", identity(device_id, module_id))
            }
            HubNode::Twin { device_id, module_id } => format!("{}/twin", identity(device_id, module_id)),
        }
    }

    /// The device the node belongs to (`None` for CBS and the service's nodes).
    pub fn device_id(&self) -> Option<&str> {
        match self {
            HubNode::Cbs | HubNode::ServiceC2d | HubNode::ServiceFeedback | HubNode::ServiceFileNotifications => None,
            HubNode::Telemetry { device_id, .. }
            | HubNode::C2d { device_id }
            | HubNode::Methods { device_id, .. }
            | HubNode::Twin { device_id, .. } => Some(device_id),
        }
    }

    /// The module the node belongs to, for a module's node.
    pub fn module_id(&self) -> Option<&str> {
        match self {
            HubNode::Telemetry { module_id, .. }
            | HubNode::Methods { module_id, .. }
            | HubNode::Twin { module_id, .. } => module_id.as_deref(),
            _ => None,
        }
    }

    /// The [`crate::hub_mqtt::identity_path`] of the device or module the node belongs to.
    pub fn identity_path(&self) -> Option<String> {
        Some(crate::hub_mqtt::identity_path(self.device_id()?, self.module_id()))
    }
}

fn decode(segment: &str) -> Option<String> {
    if segment.is_empty() {
        return None;
    }
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_nodes_parse() {
        let d = |s: &str| s.to_string();
        let m = |s: &str| Some(s.to_string());
        assert_eq!(HubNode::parse("$cbs"), Some(HubNode::Cbs));
        assert_eq!(HubNode::parse("/messages/devicebound"), Some(HubNode::ServiceC2d));
        assert_eq!(HubNode::parse("/messages/deviceBound"), Some(HubNode::ServiceC2d));
        assert_eq!(
            HubNode::parse("/messages/servicebound/feedback"),
            Some(HubNode::ServiceFeedback)
        );
        assert_eq!(
            HubNode::parse("/devices/a%20b/messages/events"),
            Some(HubNode::Telemetry {
                device_id: d("a b"),
                module_id: None
            })
        );
        assert_eq!(
            HubNode::parse("/devices/x/messages/devicebound"),
            Some(HubNode::C2d { device_id: d("x") })
        );
        assert_eq!(
            HubNode::parse("/devices/x/methods/devicebound"),
            Some(HubNode::Methods {
                device_id: d("x"),
                module_id: None
            })
        );
        assert_eq!(
            HubNode::parse("/devices/x/twin"),
            Some(HubNode::Twin {
                device_id: d("x"),
                module_id: None
            })
        );
        assert_eq!(
            HubNode::parse("/devices/x/twin?api-version=2019-10-01")
                .unwrap()
                .device_id(),
            Some("x")
        );
        assert_eq!(
            HubNode::parse("/devices/x/modules/m/messages/events"),
            Some(HubNode::Telemetry {
                device_id: d("x"),
                module_id: m("m")
            })
        );
        assert_eq!(
            HubNode::parse("/devices/x/modules/m%201/methods/deviceBound")
                .unwrap()
                .identity_path(),
            Some("x/modules/m 1".to_string())
        );
        // Modules have no cloud-to-device node.
        assert_eq!(HubNode::parse("/devices/x/modules/m/messages/devicebound"), None);
        for node in [
            HubNode::Cbs,
            HubNode::ServiceC2d,
            HubNode::ServiceFeedback,
            HubNode::ServiceFileNotifications,
            HubNode::Telemetry {
                device_id: d("a b/c"),
                module_id: None,
            },
            HubNode::C2d { device_id: d("x") },
            HubNode::Methods {
                device_id: d("x"),
                module_id: None,
            },
            HubNode::Twin {
                device_id: d("x.y"),
                module_id: m("m/1"),
            },
            HubNode::Telemetry {
                device_id: d("x"),
                module_id: m("m"),
            },
        ] {
            assert_eq!(HubNode::parse(&node.address()), Some(node.clone()), "{node:?}");
        }
        assert_eq!(
            HubNode::Telemetry {
                device_id: d("dev-1"),
                module_id: None
            }
            .address(),
            "/devices/dev-1/messages/events"
        );
        for bad in [
            "",
            "/devices/",
            "/devices//twin",
            "/devices/x",
            "/devices/x/messages",
            "/devices/x/twin/extra",
            "/devices/x/modules/m",
            "/devices/x/modules//twin",
            "devices/x/twin",
            "0ne/registrations/x",
        ] {
            assert_eq!(HubNode::parse(bad), None, "{bad}");
        }
    }
}
