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
//!
//! The consumer takes only the kinds of event something may want: every
//! terminal one (a job may have a callback), and the others while some
//! endpoint takes them. Most jobs' `queued`, `started` and `progress`
//! events then never reach notify. When an endpoint adds a kind, the
//! consumer's filter widens; it keeps its place in the stream, so the
//! events of that kind it passed since the endpoint was saved are read
//! once from the stream and routed like the rest, except where the
//! destination already has a later webhook of the job (it would go out of
//! order). One narrow case remains: an event of a kind already routed that
//! the consumer had delivered but notify not yet handled when the filter
//! widened, followed in the same job by a read-back event, is queued after
//! it, so that one job's webhooks to that endpoint may go out of order.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use async_nats::jetstream::{Message, consumer::PullConsumer};
use futures::{Stream, StreamExt as _};
use reelmesh_nats::{
    DeliveryRecord, DeliveryState, Destination, EndpointChange, EndpointRecord, EventKind,
    JobEvent, JobId, NatsError, TERMINAL_KIND_NAMES, TenantId, Topology, WEBHOOK_EVENT_TYPES,
    WebhookTask, names,
};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// Acknowledge after this many events, or this long after the last ack.
const ACK_BATCH: usize = 64;
const ACK_EVERY: Duration = Duration::from_millis(100);
/// The pause before trying an event again after NATS failed us.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Webhooks one job may have per destination before its progress stops
/// being sent there: bounds the chain's size in the delivery log.
const MAX_CHAIN_LEN: usize = 200;
/// How far before an endpoint's save its newly routed kinds are read back:
/// the gateway's clock, which dates the save, may run ahead of NATS's.
const CLOCK_SLACK: Duration = Duration::from_secs(2);
/// Never read back further than this.
const MAX_READ_BACK: Duration = Duration::from_secs(10 * 60);

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

    /// The kinds of event to route: the terminal ones, which may have a
    /// job's callback to go to, and each other kind an endpoint takes now.
    pub fn routed_kinds(&self) -> Vec<&'static str> {
        let endpoints = self.by_tenant.values().flat_map(HashMap::values);
        WEBHOOK_EVENT_TYPES
            .into_iter()
            .filter_map(|event_type| {
                let kind = event_type.strip_prefix("job.")?;
                let wanted = TERMINAL_KIND_NAMES.contains(&kind)
                    || endpoints.clone().any(|endpoint| endpoint.wants(event_type));
                wanted.then_some(kind)
            })
            .collect()
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
    /// The kinds the consumer takes, as last set.
    routed: Vec<&'static str>,
    /// Routing events read back from the stream, not from the consumer.
    reading_back: bool,
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
            routed: endpoints.routed_kinds(),
            reading_back: false,
            endpoints,
            throttle: ProgressThrottle::new(progress_interval),
        })
    }

    /// The event kinds to make the consumer with.
    pub fn routed_kinds(&self) -> &[&'static str] {
        &self.routed
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
                    Some(change) => {
                        if !self.endpoint_changed(change, &shutdown).await {
                            break;
                        }
                    }
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
                    // It ends for good (the consumer deleted, say): stopping
                    // here would leave notify up but routing nothing.
                    None => {
                        ack(unacked).await;
                        return Err(NatsError::Unavailable("the event consumer ended".into()));
                    }
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

    /// Applies an endpoint change and sets the consumer to the kinds it
    /// makes routed. Kinds added are read back from the endpoint's save on
    /// (the consumer may have passed some). `false` if shutdown came first.
    async fn endpoint_changed(
        &mut self,
        change: EndpointChange,
        shutdown: &CancellationToken,
    ) -> bool {
        let saved = match &change {
            EndpointChange::Put(record) => Some((record.tenant.clone(), record.updated_at)),
            EndpointChange::Removed(_) => None,
        };
        self.endpoints.apply(change);
        let kinds = self.endpoints.routed_kinds();
        if kinds == self.routed {
            return true;
        }
        loop {
            match self.topology.route_event_kinds(&kinds).await {
                Ok(()) => break,
                Err(err) => tracing::warn!("setting the event kinds to route: {err}"),
            }
            if !pause(shutdown).await {
                return false;
            }
        }
        tracing::info!(kinds = ?kinds, "routing these event kinds");
        let added: Vec<_> = kinds
            .iter()
            .filter(|kind| !self.routed.contains(kind))
            .copied()
            .collect();
        self.routed = kinds;
        match saved {
            Some((tenant, at)) if !added.is_empty() => {
                self.read_back(&tenant, &added, at, shutdown).await
            }
            _ => true,
        }
    }

    /// Routes the tenant's events of `kinds` stored since `saved_at` (less
    /// the clock slack), trying again while NATS fails. Routing is
    /// idempotent, so any the consumer delivers too are queued once.
    async fn read_back(
        &mut self,
        tenant: &TenantId,
        kinds: &[&str],
        saved_at: OffsetDateTime,
        shutdown: &CancellationToken,
    ) -> bool {
        let now = OffsetDateTime::now_utc();
        let since = (saved_at - CLOCK_SLACK).max(now - MAX_READ_BACK);
        let filters: Vec<String> = kinds
            .iter()
            .map(|kind| names::tenant_kind_events_filter(tenant, kind))
            .collect();
        loop {
            match self.route_stored(filters.clone(), since, shutdown).await {
                Ok(finished) => return finished,
                Err(err) => tracing::warn!(%tenant, "reading back events: {err}"),
            }
            if !pause(shutdown).await {
                return false;
            }
        }
    }

    async fn route_stored(
        &mut self,
        filters: Vec<String>,
        since: OffsetDateTime,
        shutdown: &CancellationToken,
    ) -> Result<bool, NatsError> {
        let stored = self.topology.events.stored_since(filters, since).await?;
        self.reading_back = true;
        let routed = self.route_each(stored, shutdown).await;
        self.reading_back = false;
        routed
    }

    /// Routes each of `messages`; `false` if shutdown came first.
    async fn route_each(
        &mut self,
        messages: impl Stream<Item = Result<Message, NatsError>>,
        shutdown: &CancellationToken,
    ) -> Result<bool, NatsError> {
        let mut messages = std::pin::pin!(messages);
        while let Some(message) = messages.next().await {
            if !self.handle(&message?, shutdown).await {
                return Ok(false);
            }
        }
        Ok(true)
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
        let queued = targets.iter().map(|(destination, url)| async move {
            match self.queue(event, sequence, destination, url).await {
                // That destination's log is full; the others still get theirs.
                Err(err @ NatsError::TooLarge(_)) => {
                    tracing::error!(job = %event.job_id, %destination, "webhook not queued: {err}");
                    Ok(())
                }
                queued => queued,
            }
        });
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
            // Run again on a fresh read after a lost compare-and-set.
            to_send = false;
            if let Some(known) = chain.find(sequence) {
                to_send = known.state == DeliveryState::Pending && known.attempts.is_empty();
                return false;
            }
            // Logged once and pruned since; or read back late, when it would
            // go out after a later webhook of the job; or progress to a full
            // chain: that destination does without it.
            let skipped = chain.pruned_past(sequence)
                || (self.reading_back && chain.deliveries.iter().any(|d| d.sequence > sequence))
                || (is_progress && chain.deliveries.len() >= MAX_CHAIN_LEN);
            if skipped {
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

    fn endpoint(tenant: &str, events: &[&str]) -> EndpointRecord {
        let now = OffsetDateTime::now_utc();
        EndpointRecord {
            id: reelmesh_nats::EndpointId::new(),
            tenant: TenantId::parse(tenant).expect("tenant"),
            url: "https://example.com/hook".into(),
            description: String::new(),
            events: events.iter().map(|e| e.to_string()).collect(),
            secrets: Vec::new(),
            disabled: None,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn terminal_events_are_always_routed_and_others_only_while_an_endpoint_takes_them() {
        let mut cache = EndpointCache::default();
        assert_eq!(cache.routed_kinds(), TERMINAL_KIND_NAMES);
        cache.put(endpoint("acme", &["job.started", "job.completed"]));
        assert_eq!(
            cache.routed_kinds(),
            ["started", "completed", "failed", "cancelled"]
        );
        let mut everything = endpoint("other", &[]);
        cache.put(everything.clone());
        let every_kind = WEBHOOK_EVENT_TYPES.map(|t| t.trim_start_matches("job."));
        assert_eq!(cache.routed_kinds(), every_kind);
        everything.disabled = Some(reelmesh_nats::Disabled {
            at: OffsetDateTime::now_utc(),
            reason: "failing".into(),
        });
        cache.put(everything.clone());
        assert_eq!(
            cache.routed_kinds(),
            ["started", "completed", "failed", "cancelled"],
            "a disabled endpoint takes nothing"
        );
    }

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
