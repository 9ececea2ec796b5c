//! reelmesh notify: turns terminal job events into signed webhooks.
//!
//! Reads terminal events from a durable JetStream consumer, so an event is
//! only acknowledged once its webhook was accepted (or has no callback);
//! failed attempts are redelivered by JetStream after a growing delay.

pub mod config;
pub mod delivery;
pub mod signing;

use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt as _;
use reelmesh_nats::{JobEvent, NatsError, Topology};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::NotifyConfig;
pub use delivery::{DeliveryError, WebhookDelivery};

/// Consumes terminal events and serves gRPC health until `shutdown`.
pub async fn run(
    config: NotifyConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let topology = Topology::connect(&config.nats_url, &config.topology).await?;
    let consumer = topology.notify_consumer().await?;
    let server = reelmesh_runtime::grpc::spawn_health_server(listener, shutdown.clone()).await?;
    let notifier = Notifier {
        topology,
        http: reqwest::Client::builder().build()?,
        config,
    };
    let mut messages = consumer
        .messages()
        .await
        .map_err(|err| NatsError::Unavailable(err.to_string()))?;
    tracing::info!("notify consuming terminal events");
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            message = messages.next() => message,
        };
        match message {
            Some(Ok(message)) => notifier.handle(message).await,
            Some(Err(err)) => tracing::warn!("event consumer: {err}"),
            None => break,
        }
    }
    server.await??;
    Ok(())
}

struct Notifier {
    topology: Topology,
    http: reqwest::Client,
    config: NotifyConfig,
}

impl Notifier {
    async fn handle(&self, message: Message) {
        let attempts = message
            .info()
            .map(|info| info.delivered)
            .unwrap_or(1)
            .max(1) as u32;
        let outcome = self.deliver(&message).await;
        let ack = match outcome {
            Ok(()) => AckKind::Ack,
            Err(err) if attempts >= MAX_ATTEMPTS => {
                tracing::error!(attempts, "webhook given up: {err}");
                AckKind::Term
            }
            Err(err) => {
                let delay = self.config.retry_delay(attempts);
                tracing::warn!(attempts, ?delay, "webhook failed, will retry: {err}");
                AckKind::Nak(Some(delay))
            }
        };
        if let Err(err) = message.ack_with(ack).await {
            tracing::warn!("could not ack event: {err}");
        }
    }

    async fn deliver(&self, message: &Message) -> anyhow::Result<()> {
        let event = JobEvent::decode(&message.payload)?;
        let Some(job) = self.topology.jobs.get(&event.tenant, &event.job_id).await? else {
            tracing::warn!(job = %event.job_id, "event for a job that no longer exists");
            return Ok(());
        };
        let Some(delivery) = WebhookDelivery::for_event(&event, &job.record)? else {
            return Ok(());
        };
        delivery
            .send(&self.http, Duration::from_secs(self.config.timeout_secs))
            .await?;
        tracing::info!(job = %event.job_id, url = %delivery.url, "webhook delivered");
        Ok(())
    }
}

/// The consumer's last delivery terminates the message explicitly (and logs
/// it) instead of leaving JetStream to drop it silently.
const MAX_ATTEMPTS: u32 = reelmesh_nats::topology::NOTIFY_MAX_DELIVER as u32;
