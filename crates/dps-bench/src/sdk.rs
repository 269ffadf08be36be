//! Device flows through the real Rust device SDK (`dps_client`), selected with `--client sdk`:
//! what a fleet of Rust devices costs, generator included.

use std::sync::Arc;
use std::time::Duration;

use dps_client::{
    AmqpHubClient, HubClient, PollOptions, ProvisioningClient, SecurityProvider, SymmetricKeyProvider, Transport,
    X509Provider,
};

use super::devices::{error_kind, Assignment, Device, HUB_KEEP_ALIVE};
use super::identity::Credentials;

/// The device's security provider.
fn provider(dev: &Device<'_>) -> Result<Arc<dyn SecurityProvider>, String> {
    Ok(match &dev.ctx.credentials {
        Credentials::SymmetricKey { group_key_b64, .. } => {
            Arc::new(SymmetricKeyProvider::from_group_key(dev.id.as_str(), group_key_b64).map_err(|e| error_kind(&e))?)
        }
        Credentials::X509(_) => {
            let (chain, key) = dev
                .ctx
                .credentials
                .x509(dev.index)
                .ok_or("no certificate for this device")?
                .pem();
            Arc::new(X509Provider::from_pem(chain, key).map_err(|e| error_kind(&e))?)
        }
    })
}

/// Registers with `ProvisioningClient`, polling at once (a dps server assigns synchronously).
pub async fn register(dev: &Device<'_>) -> Result<(Assignment, Arc<dyn SecurityProvider>), String> {
    let ctx = dev.ctx;
    let provider = provider(dev)?;
    let port = match ctx.transport {
        Transport::Mqtt => ctx.dps_mqtt.addr.port(),
        Transport::Https => ctx.dps_https.addr.port(),
        Transport::Amqp => ctx.amqp_port,
    };
    let r = ProvisioningClient::new(&ctx.dps_host, &ctx.id_scope, provider.clone(), &ctx.ca_pem)
        .with_transport(ctx.transport)
        .with_port(port)
        .with_timeout(Duration::from_secs(60))
        .with_poll_options(PollOptions {
            max_interval: Duration::ZERO,
            ..PollOptions::default()
        })
        .register(None)
        .await
        .map_err(|e| error_kind(&e))?;
    Ok((
        Assignment {
            hub: r.assigned_hub,
            device_id: r.device_id,
        },
        provider,
    ))
}

/// Connects to the hub with `HubClient` (CONNECT, twin subscriptions).
pub async fn hub_connect(
    dev: &Device<'_>,
    a: &Assignment,
    provider: Arc<dyn SecurityProvider>,
    keep_alive: u16,
) -> Result<HubClient, String> {
    HubClient::builder(&a.hub, &a.device_id, provider, &dev.ctx.ca_pem)
        .port(dev.ctx.mqtt_port)
        .keep_alive(Duration::from_secs(u64::from(keep_alive)))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .map_err(|e| format!("hub connect: {}", error_kind(&e)))
}

/// Connects to the hub over AMQP with `AmqpHubClient` (CBS put-token, telemetry and twin links).
pub async fn hub_connect_amqp(
    dev: &Device<'_>,
    a: &Assignment,
    provider: Arc<dyn SecurityProvider>,
) -> Result<AmqpHubClient, String> {
    AmqpHubClient::connect(
        &a.hub,
        dev.ctx.amqp_port,
        &a.device_id,
        provider,
        &dev.ctx.ca_pem,
        Duration::from_secs(30),
        Duration::from_secs(3600),
    )
    .await
    .map_err(|e| format!("hub connect: {}", error_kind(&e)))
}

/// The zero-touch cycle: register, connect to the hub, one telemetry message, read the twin.
/// Over AMQP when the run's transport is AMQP, else over MQTT.
pub async fn cycle(dev: &Device<'_>) -> Result<(), String> {
    let (a, provider) = register(dev).await?;
    if dev.ctx.transport == Transport::Amqp {
        let hub = hub_connect_amqp(dev, &a, provider).await?;
        hub.send_event(b"{\"bench\":true}".to_vec(), &[])
            .await
            .map_err(|e| format!("telemetry: {}", error_kind(&e)))?;
        hub.get_twin().await.map_err(|e| format!("twin: {}", error_kind(&e)))?;
        let _ = hub.disconnect().await;
        return Ok(());
    }
    let hub = hub_connect(dev, &a, provider, HUB_KEEP_ALIVE).await?;
    hub.send_event(b"{\"bench\":true}".to_vec(), &[])
        .await
        .map_err(|e| format!("telemetry: {}", error_kind(&e)))?;
    hub.get_twin().await.map_err(|e| format!("twin: {}", error_kind(&e)))?;
    let _ = hub.disconnect().await;
    Ok(())
}

/// A held SDK hub connection for device `dev` (registered earlier as `a`).
pub async fn hold(dev: &Device<'_>, a: &Assignment, keep_alive: u16) -> Result<HubClient, String> {
    hub_connect(dev, a, provider(dev)?, keep_alive).await
}

/// [`hold`] over AMQP (kept alive by the connection's heartbeats, at half the hub's
/// idle-time-out).
pub async fn hold_amqp(dev: &Device<'_>, a: &Assignment) -> Result<AmqpHubClient, String> {
    hub_connect_amqp(dev, a, provider(dev)?).await
}
