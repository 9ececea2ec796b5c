//! reelmesh notify: turns job events into signed webhooks.
//!
//! Two halves, both on durable JetStream consumers so a restart loses
//! nothing: the [`routing::EventRouter`] reads every event and queues a
//! webhook for each destination that wants it (the tenant's endpoints, and
//! the job's callback for terminal events); the [`sender::WebhookSender`]
//! sends queued webhooks, in order per job and destination, retrying on
//! the schedule and recording every attempt in the delivery log. Webhook
//! hosts pass the same egress guard as URL inputs.

pub mod config;
pub mod delivery;
pub mod routing;
pub mod sender;
pub mod signing;

use std::time::Duration;

use reelmesh_nats::Topology;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::NotifyConfig;
pub use delivery::{DeliveryError, WebhookDelivery};

/// Routes events and sends webhooks, and serves gRPC health, until
/// `shutdown`.
pub async fn run(
    config: NotifyConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let topology =
        Topology::connect_as(&config.nats_url, &config.topology, "reelmesh-notify").await?;
    let server = reelmesh_runtime::grpc::spawn_health_server(listener, shutdown.clone()).await?;
    let tasks = topology.notify_send_consumer().await?;
    // Followed before the endpoints are listed, so no change falls between.
    let changes = topology.endpoints.follow().await?;
    let progress_interval = Duration::from_secs(config.progress_interval_secs);
    let router = routing::EventRouter::new(topology.clone(), progress_interval).await?;
    let events = topology
        .notify_events_consumer(router.routed_kinds())
        .await?;
    let sender = sender::WebhookSender::new(topology, config)?;
    tracing::info!("notify routing events and sending webhooks");
    let served = futures::future::try_join(
        router.run(events, changes, shutdown.clone()),
        sender.run(tasks, shutdown.clone()),
    )
    .await;
    if served.is_err() {
        // One half failed (and the other is dropped): stop the server too.
        shutdown.cancel();
    }
    server.await??;
    served?;
    Ok(())
}
