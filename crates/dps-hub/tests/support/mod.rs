//! Builders shared by the hub's integration tests: this crate's `tests/registry.rs` and
//! dps-store's `tests/hub.rs` (which runs the hub on its SQLite store and includes this file by
//! path), so both build devices, provisioning requests and twin patches the same way.

#![allow(dead_code)] // each including test uses some of these

use std::sync::atomic::{AtomicU64, Ordering};

use dps_core::hub::{DeviceAuth, DeviceProvisioning, TwinPolicy};
use dps_proto::model::hub::{AuthenticationMechanism, Device, SymmetricKey, Twin, TwinProperties};
use dps_proto::model::service::{DeviceCapabilities, InitialTwin, InitialTwinProperties};
use serde_json::{json, Map, Value};

pub const HOST: &str = "hub.example.test";
pub const KEY1: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
pub const KEY2: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

/// Authenticates `device` (made by [`sas_device`] with [`KEY1`]) on `hub` as an MQTT client
/// does, with a SAS token valid for an hour.
pub async fn login(hub: &dps_hub::Hub, device: &str) -> dps_hub::DeviceIdentity {
    let now = chrono::Utc::now().timestamp() as u64;
    let user = dps_proto::hub_mqtt::HubUsername::parse(&format!("{HOST}/{device}/?api-version=2021-04-12")).unwrap();
    let token = dps_proto::sas::build_token(&format!("{HOST}/devices/{device}"), KEY1, now + 3600, None).unwrap();
    hub.authenticate(now, &user, Some(token.as_bytes()), None)
        .await
        .unwrap()
}

pub fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

pub fn sas_device(id: &str, keys: Option<(&str, &str)>) -> Device {
    Device {
        device_id: id.into(),
        authentication: Some(AuthenticationMechanism {
            kind: "sas".into(),
            symmetric_key: Some(SymmetricKey {
                primary_key: keys.map(|k| k.0.to_string()),
                secondary_key: keys.map(|k| k.1.to_string()),
            }),
            x509_thumbprint: None,
        }),
        ..Default::default()
    }
}

/// A provisioning request of a new DPS operation (each call is a different registration).
pub fn provisioning(id: &str, policy: TwinPolicy) -> DeviceProvisioning {
    static NEXT_OPERATION: AtomicU64 = AtomicU64::new(1);
    DeviceProvisioning {
        device_id: id.into(),
        auth: DeviceAuth::Sas {
            primary_key: KEY1.into(),
            secondary_key: KEY2.into(),
        },
        capabilities: DeviceCapabilities { iot_edge: false },
        initial_twin: Some(InitialTwin {
            tags: Some(json!({"site": "lab", "$version": 1})),
            properties: Some(InitialTwinProperties {
                desired: Some(json!({"interval": 10, "mode": "fast"})),
            }),
        }),
        twin_policy: policy,
        operation_id: format!("4.op.{}", NEXT_OPERATION.fetch_add(1, Ordering::Relaxed)),
        credential_policy: None,
    }
}

pub fn desired_patch(v: Value) -> Twin {
    Twin {
        properties: Some(TwinProperties {
            desired: Some(obj(v)),
            reported: None,
        }),
        ..Default::default()
    }
}

pub fn desired_of(t: &Twin) -> Map<String, Value> {
    t.properties.as_ref().unwrap().desired.clone().unwrap()
}
