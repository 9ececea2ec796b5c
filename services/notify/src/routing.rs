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
    DeliveryRecord, DeliveryState, Destination, EndpointChange, EndpointRecord, EventKind,
    JobEvent, JobId, NatsError, TenantId, Topology, WebhookTask,
};
use tokio_util::sync::CancellationToken;

/// Acknowledge after this many events, or this long after the last ack.
const ACK_BATCH: usize = 64;
const ACK_EVERY: Duration = Duration::from_millis(100);
/// The pause before trying an event again after NATS failed us.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Webhooks one job may have per destination before its progress stops
/// being sent there: bounds the chain's size in the delivery log.
const MAX_CHAIN_LEN: usize = 200;

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

    /// Whether a progress webhook may go to `destination` now.
    pub fn is_due(&self, job: &JobId, destination: &Destination, now: Instant) -> bool {
        let last = self.last.get(job).and_then(|sent| sent.get(destination));
        last.is_none_or(|at| now.duration_since(*at) >= self.interval)
    }

    /// A progress webhook was queued for `destination`.
    pub fn record(&mut self, job: &JobId, destination: &Destination, now: Instant) {
        let sent = self.last.entry(job.clone()).or_default();
        sent.insert(destination.clone(), now);
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
        // Pulls expire well within the failover time, so the pin holds.
        let mut events = consumer
            .stream()
            .group(reelmesh_nats::topology::NOTIFY_ROUTER_GROUP)
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .map_err(NatsError::unavailable)?;
        let mut changes = std::pin::pin!(changes);
        let mut unacked: Option<Message> = None;
        let mut routed_since_ack = 0;
        let mut flush = tokio::time::interval(ACK_EVERY);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                change = changes.next() => match change {
                    Some(change) => self.endpoints.apply(change),
                    // Routing on a frozen view would quietly miss endpoints.
                    None => return Err(NatsError::Unavailable("the endpoint watch ended".into())),
                },
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
    /// shutdown came first (the event stays unacknowledged). Its
    /// destinations are decided once, so a retry queues to the same ones,
    /// and progress counts as sent only once it is queued.
    async fn handle(&mut self, message: &Message, shutdown: &CancellationToken) -> bool {
        let Ok(event) = JobEvent::decode(&message.payload) else {
            tracing::error!(subject = %message.subject, "skipping an unreadable event");
            return true;
        };
        let Ok(info) = message.info() else {
            return true;
        };
        let sequence = info.stream_sequence;
        let targets = loop {
            match self.targets(&event).await {
                Ok(targets) => break targets,
                Err(err) if err.is_transient() => {
                    tracing::warn!(job = %event.job_id, "routing an event: {err}");
                }
                Err(err) => {
                    tracing::error!(job = %event.job_id, "skipping an event: {err}");
                    return true;
                }
            }
            if !pause(shutdown).await {
                return false;
            }
        };
        loop {
            match self.queue_all(&event, sequence, &targets).await {
                Ok(()) => break,
                Err(err) if err.is_transient() => {
                    tracing::warn!(job = %event.job_id, "queueing webhooks: {err}");
                }
                Err(err) => {
                    // Waiting cannot mend what is unreadable.
                    tracing::error!(job = %event.job_id, "webhooks not queued: {err}");
                    break;
                }
            }
            if !pause(shutdown).await {
                return false;
            }
        }
        self.sent(&event, &targets);
        true
    }

    /// Where the event goes now.
    async fn targets(&self, event: &JobEvent) -> Result<Vec<Target>, NatsError> {
        let event_type = format!("job.{}", event.kind.name());
        let mut targets: Vec<Target> = self
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
        }
        if matches!(event.kind, EventKind::Progress(_)) {
            let now = Instant::now();
            targets
                .retain(|(destination, _)| self.throttle.is_due(&event.job_id, destination, now));
        }
        Ok(targets)
    }

    /// Remembers what was queued, for the progress throttle.
    fn sent(&mut self, event: &JobEvent, targets: &[Target]) {
        if event.kind.is_terminal() {
            self.throttle.forget(&event.job_id);
        } else if matches!(event.kind, EventKind::Progress(_)) {
            let now = Instant::now();
            for (destination, _) in targets {
                self.throttle.record(&event.job_id, destination, now);
            }
        }
    }

    /// The job's own callback, if it has one.
    async fn callback(&self, event: &JobEvent) -> Result<Option<Target>, NatsError> {
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

    /// Queues the event's webhook to each target at once.
    async fn queue_all(
        &self,
        event: &JobEvent,
        sequence: u64,
        targets: &[Target],
    ) -> Result<(), NatsError> {
        let queued = targets
            .iter()
            .map(|(destination, url)| self.queue(event, sequence, destination, url));
        futures::future::try_join_all(queued).await.map(drop)
    }

    /// Appends the webhook to its chain and queues it. An event read again
    /// (after a crash) queues it again only if it never got further than
    /// the chain; progress stops being appended to a chain that is full.
    async fn queue(
        &self,
        event: &JobEvent,
        sequence: u64,
        destination: &Destination,
        url: &str,
    ) -> Result<(), NatsError> {
        let (tenant, job) = (&event.tenant, &event.job_id);
        let is_progress = matches!(event.kind, EventKind::Progress(_));
        let log = &self.topology.deliveries;
        let mut to_send = false;
        log.modify(tenant, job, destination, |chain| {
            if let Some(known) = chain.find(sequence) {
                to_send = known.state == DeliveryState::Pending && known.attempts.is_empty();
                return false;
            }
            if is_progress && chain.deliveries.len() >= MAX_CHAIN_LEN {
                to_send = false;
                return false;
            }
            let event_type = format!("job.{}", event.kind.name());
            let record = DeliveryRecord::pending(job, sequence, event_type, url.into());
            chain.deliveries.push(record);
            to_send = true;
            true
        })
        .await?;
        if !to_send {
            return Ok(());
        }
        log.enqueue(&WebhookTask {
            tenant: tenant.clone(),
            job_id: job.clone(),
            destination: destination.clone(),
            sequence,
            redelivery: 0,
        })
        .await
    }
}

/// A destination and the URL it had when the event was routed.
type Target = (Destination, String);

/// Waits before trying again; `false` if shutdown came first.
async fn pause(shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(RETRY_PAUSE) => true,
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
        assert!(throttle.is_due(&job, &endpoint, start));
        assert!(
            throttle.is_due(&job, &endpoint, start),
            "not sent until recorded (a failed queueing does not count)"
        );
        throttle.record(&job, &endpoint, start);
        assert!(!throttle.is_due(&job, &endpoint, start + Duration::from_secs(4)));
        assert!(
            throttle.is_due(&job, &Destination::Callback, start),
            "per destination"
        );
        assert!(throttle.is_due(&JobId::new(), &endpoint, start), "per job");
        assert!(throttle.is_due(&job, &endpoint, start + Duration::from_secs(5)));
        throttle.forget(&job);
        assert!(throttle.is_due(&job, &endpoint, start + Duration::from_secs(1)));
    }
}
