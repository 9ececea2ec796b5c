//! reelmesh notify: turns terminal job events into signed webhooks.
//!
//! Reads terminal events from a durable JetStream consumer, so an event is
//! only acknowledged once its webhook was accepted (or has no callback);
//! failed attempts are redelivered by JetStream on the retry schedule, and
//! every attempt is recorded in the delivery log. Webhook hosts pass the
//! same egress guard as URL inputs.

pub mod config;
pub mod delivery;
pub mod signing;

use std::time::{Duration, Instant};

use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt as _;
use reelmesh_nats::{
    DeliveryAttempt, DeliveryRecord, DeliveryState, JobEvent, NatsError, Topology,
};
use reelmesh_runtime::EgressPolicy;
use time::OffsetDateTime;
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
    let policy = EgressPolicy::new(&config.egress)?;
    let notifier = Notifier {
        topology,
        http: policy.http_client(reqwest::Client::builder()).build()?,
        policy,
        config,
    };
    let redeliveries = notifier.topology.notify_redelivery_consumer().await?;
    let events = consumer
        .messages()
        .await
        .map_err(|err| NatsError::Unavailable(err.to_string()))?;
    let asked_again = redeliveries
        .messages()
        .await
        .map_err(|err| NatsError::Unavailable(err.to_string()))?;
    // A redelivery request carries the terminal event itself, so both
    // sources are handled alike.
    let mut messages = futures::stream::select(events, asked_again);
    tracing::info!("notify consuming terminal events and redelivery requests");
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
    policy: EgressPolicy,
    config: NotifyConfig,
}

impl Notifier {
    async fn handle(&self, message: Message) {
        let attempt = message
            .info()
            .map(|info| info.delivered)
            .unwrap_or(1)
            .max(1) as u32;
        let ack = match self.deliver(&message, attempt).await {
            Ok(ack) => ack,
            Err(err) => {
                // NATS or the job record failed us, not the receiver: the
                // event comes back after the ack wait.
                tracing::warn!("webhook not attempted: {err:#}");
                return;
            }
        };
        if let Err(err) = message.ack_with(ack).await {
            tracing::warn!("could not ack event: {err}");
        }
    }

    /// One attempt, recorded in the delivery log; says what to tell the
    /// consumer.
    async fn deliver(&self, message: &Message, attempt: u32) -> anyhow::Result<AckKind> {
        let Ok(event) = JobEvent::decode(&message.payload) else {
            // Redelivery cannot fix bytes we cannot read.
            tracing::error!("dropping an unreadable event");
            return Ok(AckKind::Term);
        };
        let Some(job) = self.topology.jobs.get(&event.tenant, &event.job_id).await? else {
            tracing::warn!(job = %event.job_id, "event for a job that no longer exists");
            return Ok(AckKind::Ack);
        };
        let delivery = match WebhookDelivery::for_event(&event, &job.record) {
            Ok(Some(delivery)) => delivery,
            Ok(None) => return Ok(AckKind::Ack),
            Err(err) => {
                tracing::error!(job = %event.job_id, "cannot sign the webhook: {err}");
                return Ok(AckKind::Term);
            }
        };
        let log = &self.topology.deliveries;
        let kind = format!("job.{}", event.kind.name());
        let mut record = match log.get(&event.tenant, &event.job_id, &kind).await? {
            Some(record) => record,
            None => DeliveryRecord {
                id: delivery.id.clone(),
                tenant: event.tenant.clone(),
                job_id: event.job_id.clone(),
                event: kind,
                url: delivery.url.clone(),
                state: DeliveryState::Retrying,
                attempts: Vec::new(),
                next_attempt_at: None,
            },
        };
        let started = Instant::now();
        let at = OffsetDateTime::now_utc();
        let outcome = self.send(&delivery).await;
        let latency_ms = started.elapsed().as_millis() as u64;
        let (ack, state, next) = self.decide(&outcome, attempt);
        record.attempts.push(DeliveryAttempt {
            at,
            status: outcome
                .as_ref()
                .map_or_else(DeliveryError::status, |s| Some(*s)),
            latency_ms,
            error: outcome.as_ref().err().map(ToString::to_string),
        });
        record.state = state;
        record.next_attempt_at = next.map(|delay| at + delay);
        log.put(&record).await?;
        match &outcome {
            Ok(_) => tracing::info!(job = %event.job_id, url = %delivery.url, "webhook delivered"),
            Err(err) => {
                tracing::warn!(job = %event.job_id, attempt, ?state, "webhook failed: {err}")
            }
        }
        Ok(ack)
    }

    async fn send(&self, delivery: &WebhookDelivery) -> Result<u16, DeliveryError> {
        // Literal addresses never reach the guarded resolver: check here.
        let url = url::Url::parse(&delivery.url)
            .map_err(|err| DeliveryError::Request(format!("bad URL: {err}")))?;
        self.policy
            .check_url(&url)
            .map_err(|refused| DeliveryError::Refused(refused.to_string()))?;
        let timeout = Duration::from_secs(self.config.timeout_secs);
        delivery.send(&self.http, timeout).await
    }

    /// Success is acked; a final failure or a spent schedule ends the
    /// message as a dead letter; anything else comes back on schedule.
    fn decide(
        &self,
        outcome: &Result<u16, DeliveryError>,
        attempt: u32,
    ) -> (AckKind, DeliveryState, Option<Duration>) {
        match outcome {
            Ok(_) => (AckKind::Ack, DeliveryState::Delivered, None),
            Err(err) if err.is_final() => (AckKind::Term, DeliveryState::Failed, None),
            Err(_) => match self.config.retry_delay(attempt) {
                Some(delay) => (
                    AckKind::Nak(Some(delay)),
                    DeliveryState::Retrying,
                    Some(delay),
                ),
                None => (AckKind::Term, DeliveryState::Failed, None),
            },
        }
    }
}
