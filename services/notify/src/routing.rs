//! From events to webhooks: for each job event (read in order from a
//! durable consumer of the events stream), which destinations get a
//! webhook. The tenant's endpoints whose filter takes the event type, and
//! for terminal events the job's own callback; `job.progress` at most once
//! per job and destination each `progress_interval_secs`.
//!
//! Each webhook is appended to its chain in the delivery log and then
//! queued, both idempotently, so an event read again after a crash queues
//! nothing twice. Events are acknowledged in batches (the consumer's
//! acknowledgements cover everything before them).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use async_nats::jetstream::{Message, consumer::PullConsumer};
use futures::{Stream, StreamExt as _};
use reelmesh_nats::{
    DeliveryRecord, Destination, EndpointChange, EndpointRecord, EventKind, JobEvent, JobId,
    NatsError, TenantId, Topology, WebhookTask,
};
use tokio_util::sync::CancellationToken;

/// Acknowledge after this many events, or this long after the last ack.
const ACK_BATCH: usize = 64;
const ACK_EVERY: Duration = Duration::from_millis(100);
/// The pause before trying an event again after NATS failed us.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Every tenant's endpoints, as the endpoints bucket says.
#[derive(Debug, Default)]
pub struct EndpointCache {
    by_tenant: HashMap<TenantId, HashMap<String, EndpointRecord>>,
}

impl EndpointCache {
    pub fn put(&mut self, record: EndpointRecord) {
        self.by_tenant
            .entry(record.tenant.clone())
            .or_default()
            .insert(record.id.to_string(), record);
    }

    pub fn apply(&mut self, change: EndpointChange) {
        match change {
            EndpointChange::Put(record) => self.put(*record),
            EndpointChange::Removed(key) => {
                let Some((tenant, id)) = key.split_once('.') else {
                    return;
                };
                let Ok(tenant) = TenantId::parse(tenant) else {
                    return;
                };
                if let Some(endpoints) = self.by_tenant.get_mut(&tenant) {
                    endpoints.remove(id);
                }
            }
        }
    }

    /// The tenant's endpoints taking `event_type` now.
    pub fn wanting<'a>(
        &'a self,
        tenant: &TenantId,
        event_type: &'a str,
    ) -> impl Iterator<Item = &'a EndpointRecord> + 'a {
        self.by_tenant
            .get(tenant)
            .into_iter()
            .flat_map(|endpoints| endpoints.values())
            .filter(move |endpoint| endpoint.wants(event_type))
    }
}

/// When each job last had a progress webhook queued, per destination.
#[derive(Debug)]
pub struct ProgressThrottle {
    interval: Duration,
    last: HashMap<JobId, HashMap<Destination, Instant>>,
}

impl ProgressThrottle {
    pub fn new(interval: Duration) -> Self {
        ProgressThrottle {
            interval,
            last: HashMap::new(),
        }
    }

    /// Whether a progress webhook may go to `destination` now; if so, it
    /// counts as sent.
    pub fn admit(&mut self, job: &JobId, destination: &Destination, now: Instant) -> bool {
        let sent = self.last.entry(job.clone()).or_default();
        match sent.get(destination) {
            Some(at) if now.duration_since(*at) < self.interval => false,
            _ => {
                sent.insert(destination.clone(), now);
                true
            }
        }
    }

    /// The job ended: nothing more to throttle.
    pub fn forget(&mut self, job: &JobId) {
        self.last.remove(job);
    }
}

#[derive(Debug)]
pub struct EventRouter {
    topology: Topology,
    endpoints: EndpointCache,
    throttle: ProgressThrottle,
}

impl EventRouter {
    /// A router knowing every endpoint there is now.
    pub async fn new(topology: Topology, progress_interval: Duration) -> Result<Self, NatsError> {
        let mut endpoints = EndpointCache::default();
        for record in topology.endpoints.list_all().await? {
            endpoints.put(record);
        }
        Ok(EventRouter {
            topology,
            endpoints,
            throttle: ProgressThrottle::new(progress_interval),
        })
    }

    /// Routes events until `shutdown`, keeping the endpoints current from
    /// `changes`. Endpoint changes are applied first whenever both are
    /// ready, so an event published after an endpoint was saved sees it.
    pub async fn run(
        mut self,
        consumer: PullConsumer,
        changes: impl Stream<Item = EndpointChange>,
        shutdown: CancellationToken,
    ) -> Result<(), NatsError> {
        let mut events = consumer.messages().await.map_err(NatsError::unavailable)?;
        let mut changes = std::pin::pin!(changes);
        let mut unacked: Option<Message> = None;
        let mut routed_since_ack = 0;
        let mut flush = tokio::time::interval(ACK_EVERY);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(change) = changes.next() => self.endpoints.apply(change),
                message = events.next() => match message {
                    Some(Ok(message)) => {
                        if !self.handle(&message, &shutdown).await {
                            break;
                        }
                        unacked = Some(message);
                        routed_since_ack += 1;
                        if routed_since_ack >= ACK_BATCH {
                            ack(unacked.take()).await;
                            routed_since_ack = 0;
                        }
                    }
                    Some(Err(err)) => tracing::warn!("event consumer: {err}"),
                    None => break,
                },
                _ = flush.tick(), if unacked.is_some() => {
                    ack(unacked.take()).await;
                    routed_since_ack = 0;
                }
            }
        }
        ack(unacked).await;
        Ok(())
    }

    /// Routes one event, trying again while NATS fails; `false` if
    /// shutdown came first (the event stays unacknowledged).
    async fn handle(&mut self, message: &Message, shutdown: &CancellationToken) -> bool {
        let Ok(event) = JobEvent::decode(&message.payload) else {
            tracing::error!(subject = %message.subject, "skipping an unreadable event");
            return true;
        };
        let Ok(info) = message.info() else {
            return true;
        };
        let sequence = info.stream_sequence;
        loop {
            match self.route(&event, sequence).await {
                Ok(()) => return true,
                Err(err) => tracing::warn!(job = %event.job_id, "routing an event: {err}"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(RETRY_PAUSE) => {}
            }
        }
    }

    async fn route(&mut self, event: &JobEvent, sequence: u64) -> Result<(), NatsError> {
        let event_type = format!("job.{}", event.kind.name());
        let mut targets: Vec<(Destination, String)> = self
            .endpoints
            .wanting(&event.tenant, &event_type)
            .map(|endpoint| {
                (
                    Destination::Endpoint(endpoint.id.clone()),
                    endpoint.url.clone(),
                )
            })
            .collect();
        if event.kind.is_terminal() {
            targets.extend(self.callback(event).await?);
            self.throttle.forget(&event.job_id);
        }
        if matches!(event.kind, EventKind::Progress(_)) {
            let now = Instant::now();
            targets.retain(|(destination, _)| self.throttle.admit(&event.job_id, destination, now));
        }
        for (destination, url) in targets {
            self.queue(event, sequence, &event_type, destination, url)
                .await?;
        }
        Ok(())
    }

    /// The job's own callback, if it has one.
    async fn callback(&self, event: &JobEvent) -> Result<Option<(Destination, String)>, NatsError> {
        if event.callback == Some(false) {
            return Ok(None);
        }
        let Some(job) = self.topology.jobs.get(&event.tenant, &event.job_id).await? else {
            return Ok(None);
        };
        let url = job.record.spec.callback.map(|callback| callback.url);
        Ok(url
            .filter(|url| !url.is_empty())
            .map(|url| (Destination::Callback, url)))
    }

    async fn queue(
        &self,
        event: &JobEvent,
        sequence: u64,
        event_type: &str,
        destination: Destination,
        url: String,
    ) -> Result<(), NatsError> {
        let (tenant, job) = (&event.tenant, &event.job_id);
        let log = &self.topology.deliveries;
        log.modify(tenant, job, &destination, |chain| {
            if chain.find(sequence).is_some() {
                return false;
            }
            let record = DeliveryRecord::pending(job, sequence, event_type.into(), url.clone());
            chain.deliveries.push(record);
            true
        })
        .await?;
        log.enqueue(&WebhookTask {
            tenant: tenant.clone(),
            job_id: job.clone(),
            destination,
            sequence,
            redelivery: 0,
        })
        .await
    }
}

async fn ack(message: Option<Message>) {
    if let Some(message) = message
        && let Err(err) = message.ack().await
    {
        tracing::warn!("could not acknowledge events: {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_goes_out_once_per_interval_per_destination() {
        let mut throttle = ProgressThrottle::new(Duration::from_secs(5));
        let job = JobId::new();
        let endpoint = Destination::Endpoint(reelmesh_nats::EndpointId::new());
        let start = Instant::now();
        assert!(throttle.admit(&job, &endpoint, start));
        assert!(!throttle.admit(&job, &endpoint, start + Duration::from_secs(4)));
        assert!(
            throttle.admit(&job, &Destination::Callback, start),
            "per destination"
        );
        assert!(throttle.admit(&JobId::new(), &endpoint, start), "per job");
        assert!(throttle.admit(&job, &endpoint, start + Duration::from_secs(5)));
        throttle.forget(&job);
        assert!(throttle.admit(&job, &endpoint, start + Duration::from_secs(6)));
    }
}
