//! The DPS device endpoint over MQTT: a thin adapter that turns publishes into engine calls and
//! engine results into response publishes (device-protocol.md §2).

use dps_core::{ApiError, Credential, DeviceRequest, DeviceResponse};
use dps_proto::dps_mqtt::{response_topic, DpsRequestTopic, DpsUsername, RESPONSE_FILTER};
use dps_proto::model::device::{to_ascii_json, DeviceRegistration};
use rumqttc::mqttbytes::v4::{Packet, PubAck, Publish, SubAck, SubscribeReasonCode, UnsubAck};
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncRead, AsyncWrite};

use super::framed::{FrameError, Framed};
use crate::Services;

/// Serves one DPS connection after its CONNACK. Requests are answered in order (the C SDK ignores
/// `$rid` and keeps one request in flight), each response published at QoS 1 (C# always PUBACKs).
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Framed<S>,
    services: &Services,
    user: DpsUsername,
    credential: Credential,
) -> Result<(), FrameError> {
    let request = DeviceRequest {
        id_scope: user.id_scope,
        registration_id: user.registration_id,
        credential,
        api_version: user.api_version,
    };
    let mut next_pkid: u16 = 0;
    while let Some(packet) = io.next().await? {
        match packet {
            Packet::Subscribe(s) => {
                let codes = s
                    .filters
                    .iter()
                    .map(|f| {
                        if f.path == RESPONSE_FILTER {
                            SubscribeReasonCode::Success(QoS::AtLeastOnce)
                        } else {
                            SubscribeReasonCode::Failure
                        }
                    })
                    .collect();
                io.send(&Packet::SubAck(SubAck::new(s.pkid, codes))).await?;
            }
            Packet::Unsubscribe(u) => io.send(&Packet::UnsubAck(UnsubAck::new(u.pkid))).await?,
            Packet::Publish(p) => {
                if p.qos == QoS::AtLeastOnce {
                    io.queue(&Packet::PubAck(PubAck::new(p.pkid)))?;
                }
                let (topic, body) = handle_publish(services, &request, &p).await;
                next_pkid = next_pkid.checked_add(1).unwrap_or(1);
                let mut reply = Publish::new(topic, QoS::AtLeastOnce, body);
                reply.pkid = next_pkid;
                io.queue(&Packet::Publish(reply))?;
                io.flush().await?;
            }
            Packet::PingReq => io.send(&Packet::PingResp).await?,
            Packet::Disconnect => break,
            // PUBACKs for our responses, and anything else a device may send, need no answer.
            _ => {}
        }
    }
    Ok(())
}

/// One request → (response topic, JSON body).
async fn handle_publish(services: &Services, request: &DeviceRequest, p: &Publish) -> (String, Vec<u8>) {
    let now = services.clock.now();
    let topic = match DpsRequestTopic::parse(&p.topic) {
        Ok(t) => t,
        Err(e) => {
            // No $rid to match: answer with an empty rid so the device sees *something* JSON.
            let err = ApiError::invalid(e.to_string());
            tracing::info!(registration = %request.registration_id, error = %err, "bad DPS topic");
            return (response_topic(err.status, "", None), to_ascii_json(&err.details(now)));
        }
    };
    let rid = topic.rid().to_string();
    if p.payload.len() > services.config.max_message_bytes {
        let err = ApiError::new(
            dps_proto::codes::PAYLOAD_TOO_LARGE,
            format!(
                "request body of {} bytes exceeds the limit of {}",
                p.payload.len(),
                services.config.max_message_bytes
            ),
        );
        return (response_topic(err.status, &rid, None), to_ascii_json(&err.details(now)));
    }
    let result: Result<DeviceResponse, ApiError> = match &topic {
        DpsRequestTopic::Register { .. } => match DeviceRegistration::parse(&p.payload) {
            Ok(body) => services.engine.register(now, request, &body).await,
            Err(e) => Err(ApiError::bad_body(e.to_string())),
        },
        // Poll payloads are junk by design (" ", the register JSON, nothing): ignore them.
        DpsRequestTopic::OperationStatus { operation_id, .. } => {
            services.engine.operation_status(now, request, operation_id).await
        }
    };
    match result {
        Ok(r) => (response_topic(r.status, &rid, r.retry_after), to_ascii_json(&r.body)),
        Err(err) => {
            // Throttling is summarized by the engine's quotas: a line per 429 would flood the log.
            if err.status == 429 {
                tracing::debug!(registration = %request.registration_id, code = err.code, error = %err.message, "DPS request refused");
            } else {
                tracing::info!(registration = %request.registration_id, code = err.code, error = %err.message, "DPS request refused");
            }
            (
                response_topic(err.status, &rid, err.retry_after),
                to_ascii_json(&err.details(now)),
            )
        }
    }
}
