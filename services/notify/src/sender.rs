//! Sends queued webhooks: one attempt per delivery of a [`WebhookTask`],
//! recorded in the delivery log, then acknowledged (delivered or dead
//! letter) or handed back to JetStream to come again on the retry
//! schedule. Killing notify loses nothing: the task waits on the stream.
//!
//! Order per job and destination: one task per chain at a time in this
//! process, and a webhook whose chain still has an unsettled earlier one is
//! handed back until that one is settled. Different chains go in parallel,
//! so a slow or dead receiver holds up only its own webhooks; and a chain
//! keeps at most two tasks in hand (the rest go back for a while), so one
//! job's many webhooks to a slow receiver cannot take every place in hand.
//! The log is the judge of what is due: a duplicate task (a lost
//! acknowledgement, a restart) finds its webhook settled or not yet due
//! and goes back.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use async_nats::jetstream::{AckKind, Message, consumer::PullConsumer};
use futures::StreamExt as _;
use reelmesh_nats::{
    DeliveryAttempt, DeliveryChain, DeliveryRecord, DeliveryState, Destination, Disabled,
    EndpointId, JobEvent, NatsError, Topology, WebhookTask,
};
use reelmesh_runtime::EgressPolicy;
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::{
    DeliveryError, NotifyConfig, WebhookDelivery,
    signing::{BadSecret, SigningKey},
};

/// How much later than the webhook it waits for a held one comes back.
const HOLD_MARGIN: Duration = Duration::from_millis(250);
/// The longest a held webhook waits before looking again (the one it
/// waits for may be settled early, by a Redeliver or another process).
const MAX_HOLD: Duration = Duration::from_secs(60);
/// How long one pull for tasks waits for the first to arrive.
const PULL_WAIT: Duration = Duration::from_secs(5);
/// The pause before a webhook comes back when NATS failed us.
const NATS_RETRY: Duration = Duration::from_secs(2);
/// Tasks taken from the stream per webhook that may be in flight: enough
/// to keep senders busy (each one held says it is alive, see
/// [`WebhookSender::hold`], so waiting long is only a delay).
const IN_HAND_PER_SENDER: usize = 4;
/// A webhook still pending, never tried, this long after it was queued, or
/// retrying this long after its attempt was due, has lost its task: the
/// next webhook of its chain sends it.
const ORPHANED_AFTER: time::Duration = time::Duration::minutes(2);
/// Tasks of one chain waiting in hand behind the one being handled; more
/// go back to the stream for [`CHAIN_BUSY_RETRY`].
const WAITING_PER_CHAIN: usize = 1;
const CHAIN_BUSY_RETRY: Duration = Duration::from_secs(1);
/// Times a task whose webhook is not in the log comes back before it is
/// dropped (a read from a replica may lag the write that made it).
const MISSING_RETRIES: i64 = 5;

type ChainKey = (String, String, String);
/// A task, the message it came in (to acknowledge), its place among the
/// tasks in hand and its heartbeat.
type Taken = (WebhookTask, Message, OwnedSemaphorePermit, Held);

/// The heartbeat of a task in hand; stops when dropped.
#[derive(Debug)]
struct Held(tokio::task::JoinHandle<()>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug, Clone)]
pub struct WebhookSender {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    topology: Topology,
    http: reqwest::Client,
    policy: EgressPolicy,
    config: NotifyConfig,
    /// Requests in flight.
    sending: Semaphore,
    /// Tasks taken from the stream and not yet acknowledged.
    in_hand: Arc<Semaphore>,
    /// The queue of each chain with a task in hand.
    chains: Mutex<HashMap<ChainKey, mpsc::Sender<Taken>>>,
}

/// What to do with a webhook, once its chain and destination are known.
enum Verdict {
    Send(WebhookDelivery),
    /// Settle as a dead letter without a request, for this reason.
    Drop(String),
}

impl WebhookSender {
    pub fn new(topology: Topology, config: NotifyConfig) -> anyhow::Result<Self> {
        let policy = EgressPolicy::new(&config.egress)?;
        // A redirect is a failed attempt, not followed: a 301/302 would
        // turn the POST into a GET without its body (and a 2xx to that
        // would count as delivered), a 307/308 would send the signed body
        // to a URL nobody registered.
        let http = policy
            .http_client(reqwest::Client::builder())
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(WebhookSender {
            inner: Arc::new(Inner {
                topology,
                http,
                policy,
                sending: Semaphore::new(config.concurrency),
                in_hand: Arc::new(Semaphore::new(config.concurrency * IN_HAND_PER_SENDER)),
                config,
                chains: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Takes tasks from `consumer` until `shutdown`, then lets the ones in
    /// hand finish (within the request timeout) so their attempts are
    /// recorded rather than made again by the next process. Tasks are
    /// pulled only when there is room for them, never ahead: one waiting
    /// in the client's buffer would have no heartbeat (see
    /// [`WebhookSender::hold`]), outlive its ack wait, and be handed to
    /// another process as well.
    pub async fn run(
        &self,
        consumer: PullConsumer,
        shutdown: CancellationToken,
    ) -> Result<(), NatsError> {
        while let Some(mut room) =
            reelmesh_runtime::free_slots(&self.inner.in_hand, &shutdown).await
        {
            let pulled = consumer
                .batch()
                .max_messages(room.len())
                .expires(PULL_WAIT)
                .messages()
                .await;
            let mut tasks = match pulled {
                Ok(tasks) => tasks,
                Err(err) => {
                    tracing::warn!("webhook consumer: {err}");
                    // A shutdown while NATS is away need not wait it out.
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(NATS_RETRY) => {}
                    }
                    continue;
                }
            };
            while let Some(message) = tokio::select! {
                biased;
                _ = shutdown.cancelled() => None,
                message = tasks.next() => message,
            } {
                match (message, room.pop()) {
                    (Ok(message), Some(permit)) => self.dispatch(message, permit),
                    (Err(err), _) => tracing::warn!("webhook consumer: {err}"),
                    // The pull asked for no more than the room.
                    (Ok(message), None) => drop(message),
                }
            }
        }
        let all = u32::try_from(self.inner.config.concurrency * IN_HAND_PER_SENDER).unwrap_or(0);
        let grace = Duration::from_secs(self.inner.config.timeout_secs + 5);
        let _ = tokio::time::timeout(grace, self.inner.in_hand.acquire_many(all)).await;
        Ok(())
    }

    /// Hands the task to its chain's queue, starting one if the chain has
    /// none, or back to the stream if the queue is full; the queue's sender
    /// is only used with the map locked, so a queue that is closing never
    /// misses a task.
    fn dispatch(&self, message: Message, permit: OwnedSemaphorePermit) {
        let Ok(task) = WebhookTask::decode(&message.payload) else {
            tracing::error!(subject = %message.subject, "dropping an unreadable webhook task");
            tokio::spawn(async move { message.ack_with(AckKind::Term).await });
            return;
        };
        let key = (
            task.tenant.to_string(),
            task.job_id.to_string(),
            task.destination.to_string(),
        );
        let held = self.hold(message.clone());
        let mut chains = self.chains();
        let taken = match chains.get(&key) {
            Some(queue) => match queue.try_send((task, message, permit, held)) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full((_, message, _, _))) => {
                    // Its place in hand (the permit) is free again now.
                    let later = AckKind::Nak(Some(CHAIN_BUSY_RETRY));
                    tokio::spawn(async move { message.ack_with(later).await });
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(taken)) => taken,
            },
            None => (task, message, permit, held),
        };
        let (queue, received) = mpsc::channel(WAITING_PER_CHAIN);
        let _ = queue.try_send(taken);
        chains.insert(key.clone(), queue);
        let sender = self.clone();
        tokio::spawn(async move { sender.drain_chain(key, received).await });
    }

    /// Tells JetStream every third of the ack wait that a task in hand is
    /// still being worked on, until the returned [`Held`] is dropped. A task
    /// can wait behind its chain's earlier ones or for a sending slot longer
    /// than the ack wait; it would then be handed to another process too,
    /// and both would send the webhook.
    fn hold(&self, message: Message) -> Held {
        let every = self.inner.config.topology.webhook_ack_wait / 3;
        Held(tokio::spawn(async move {
            let mut beats = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                beats.tick().await;
                let _ = message.ack_with(AckKind::Progress).await;
            }
        }))
    }

    /// Works through one chain's tasks in arrival order, and retires the
    /// queue once it is empty.
    async fn drain_chain(&self, key: ChainKey, mut received: mpsc::Receiver<Taken>) {
        loop {
            let (task, message, _permit, _held) = match received.try_recv() {
                Ok(taken) => taken,
                Err(_) => {
                    let mut chains = self.chains();
                    match received.try_recv() {
                        Ok(taken) => taken,
                        Err(_) => {
                            chains.remove(&key);
                            return;
                        }
                    }
                }
            };
            self.handle(&task, message).await;
        }
    }

    async fn handle(&self, task: &WebhookTask, message: Message) {
        let delivered = message.info().map_or(1, |info| info.delivered);
        let ack = self.attempt(task, delivered).await.unwrap_or_else(|err| {
            if let NatsError::TooLarge(_) = err {
                // Trying again would fail the same way, after sending again.
                tracing::error!(job = %task.job_id, "webhook dropped: {err}");
                return AckKind::Term;
            }
            tracing::warn!(job = %task.job_id, "webhook not attempted: {err}");
            AckKind::Nak(Some(NATS_RETRY))
        });
        if let Err(err) = message.ack_with(ack).await {
            tracing::warn!("could not acknowledge a webhook task: {err}");
        }
    }

    /// One attempt at the task's webhook, unless it is settled already, not
    /// due yet, or must wait for an earlier one; says what to tell the
    /// consumer.
    async fn attempt(&self, task: &WebhookTask, delivered: i64) -> Result<AckKind, NatsError> {
        let log = &self.inner.topology.deliveries;
        let chain = log
            .get(&task.tenant, &task.job_id, &task.destination)
            .await?;
        if chain
            .as_ref()
            .is_some_and(|chain| chain.pruned_past(task.sequence))
        {
            // Settled, and dropped from the log since: a stale copy, unless
            // a Redeliver asked for it just before its entry was dropped.
            if task.redelivery > 0 {
                tracing::error!(
                    job = %task.job_id,
                    sequence = task.sequence,
                    "a redelivery asked for a webhook since dropped from its full log; not sent"
                );
            }
            return Ok(AckKind::Ack);
        }
        let Some(mut chain) = chain.filter(|chain| chain.find(task.sequence).is_some()) else {
            // Webhooks are logged before they are queued, so it was purged,
            // or this read came from a replica that has not caught up yet.
            return Ok(match delivered < MISSING_RETRIES {
                true => AckKind::Nak(Some(Duration::from_secs(1))),
                false => AckKind::Term,
            });
        };
        if chain
            .find(task.sequence)
            .is_some_and(|record| record.state.is_settled())
        {
            if !is_new_redelivery(&chain, task) {
                return Ok(AckKind::Ack);
            }
            chain = self.restart_schedule(task).await?;
        }
        let Some(record) = chain.find(task.sequence).cloned() else {
            return Ok(AckKind::Term);
        };
        let now = OffsetDateTime::now_utc();
        if let Some(wait) = not_due_for(&record, now) {
            // A second task for a webhook waiting out its retry.
            return Ok(AckKind::Nak(Some(wait)));
        }
        if let Some(earlier) = chain.blocker(task.sequence).cloned() {
            if is_orphaned(&earlier, now) {
                tracing::warn!(job = %task.job_id, id = %earlier.id, "sending a webhook whose task was lost");
                let orphan = WebhookTask {
                    sequence: earlier.sequence,
                    redelivery: earlier.redeliveries,
                    ..task.clone()
                };
                self.deliver(&orphan, &chain, &earlier).await?;
                return Ok(AckKind::Nak(Some(HOLD_MARGIN)));
            }
            return Ok(AckKind::Nak(Some(hold_for(&earlier))));
        }
        self.deliver(task, &chain, &record).await
    }

    /// Makes the request (or decides not to), records it and says what to
    /// tell the consumer.
    async fn deliver(
        &self,
        task: &WebhookTask,
        chain: &DeliveryChain,
        record: &DeliveryRecord,
    ) -> Result<AckKind, NatsError> {
        let (outcome, url, latency) = match self.verdict(chain, record).await? {
            Verdict::Send(delivery) => {
                let Ok(_sending) = self.inner.sending.acquire().await else {
                    return Ok(AckKind::Nak(Some(NATS_RETRY)));
                };
                let started = Instant::now();
                let outcome = self.send(&delivery).await;
                (outcome, delivery.url, started.elapsed())
            }
            Verdict::Drop(reason) => (
                Err(DeliveryError::NotSent(reason)),
                record.url.clone(),
                Duration::ZERO,
            ),
        };
        // Before the attempt is recorded: were this to fail, the task comes
        // back and the 410 is seen again.
        if let (Err(err), Destination::Endpoint(id)) = (&outcome, &task.destination)
            && err.is_gone()
        {
            self.disable(task, id, &url).await?;
        }
        self.settle(task, &outcome, url, latency).await
    }

    /// A client asked for a settled webhook again (Redeliver): pending on a
    /// fresh schedule, its earlier attempts kept.
    async fn restart_schedule(&self, task: &WebhookTask) -> Result<DeliveryChain, NatsError> {
        let log = &self.inner.topology.deliveries;
        log.modify(
            &task.tenant,
            &task.job_id,
            &task.destination,
            |chain| match chain.find_mut(task.sequence) {
                Some(entry) if entry.state.is_settled() && task.redelivery > entry.redeliveries => {
                    entry.redeliver();
                    entry.redeliveries = task.redelivery;
                    true
                }
                _ => false,
            },
        )
        .await
    }

    /// The request to make, from the event and the destination as they are
    /// now (an endpoint's URL, secrets or state may have changed since).
    async fn verdict(
        &self,
        chain: &DeliveryChain,
        record: &DeliveryRecord,
    ) -> Result<Verdict, NatsError> {
        let topology = &self.inner.topology;
        let Some(event) = topology.events.get(record.sequence).await? else {
            return Ok(Verdict::Drop("the event has expired".into()));
        };
        let target = match &chain.destination {
            Destination::Callback => self.callback(&event).await?,
            Destination::Endpoint(id) => self.endpoint(&event, id).await?,
        };
        Ok(match target {
            Ok((url, keys)) => {
                Verdict::Send(WebhookDelivery::new(record.id.clone(), url, keys, &event))
            }
            Err(reason) => Verdict::Drop(reason),
        })
    }

    async fn callback(
        &self,
        event: &JobEvent,
    ) -> Result<Result<(String, Vec<SigningKey>), String>, NatsError> {
        let jobs = &self.inner.topology.jobs;
        let Some(job) = jobs.get(&event.tenant, &event.job_id).await? else {
            return Ok(Err("the job no longer exists".into()));
        };
        let Some(callback) = job.record.spec.callback.filter(|c| !c.url.is_empty()) else {
            return Ok(Err("the job has no callback".into()));
        };
        Ok(SigningKey::from_secret(&callback.secret)
            .map(|key| (callback.url, vec![key]))
            .map_err(|BadSecret| "the callback secret is not a whsec_ secret".into()))
    }

    async fn endpoint(
        &self,
        event: &JobEvent,
        id: &EndpointId,
    ) -> Result<Result<(String, Vec<SigningKey>), String>, NatsError> {
        let endpoints = &self.inner.topology.endpoints;
        let Some(endpoint) = endpoints.get(&event.tenant, id).await? else {
            return Ok(Err(format!("endpoint {id} was deleted")));
        };
        if let Some(disabled) = &endpoint.disabled {
            return Ok(Err(format!(
                "endpoint {id} is disabled ({})",
                disabled.reason
            )));
        }
        let keys: Result<Vec<SigningKey>, BadSecret> = endpoint
            .signing_secrets(OffsetDateTime::now_utc())
            .into_iter()
            .map(SigningKey::from_secret)
            .collect();
        Ok(keys
            .map(|keys| (endpoint.url, keys))
            .map_err(|BadSecret| format!("endpoint {id} has a secret that is not whsec_")))
    }

    async fn send(&self, delivery: &WebhookDelivery) -> Result<u16, DeliveryError> {
        // Literal addresses never reach the guarded resolver: check here.
        let url = url::Url::parse(&delivery.url)
            .map_err(|err| DeliveryError::Request(format!("bad URL: {err}")))?;
        self.inner
            .policy
            .check_url(&url)
            .map_err(|refused| DeliveryError::Refused(refused.to_string()))?;
        let timeout = Duration::from_secs(self.inner.config.timeout_secs);
        delivery.send(&self.inner.http, timeout).await
    }

    /// Records the attempt and decides, on the log as it is now, what comes
    /// next; a webhook someone else settled meanwhile is left as it is.
    async fn settle(
        &self,
        task: &WebhookTask,
        outcome: &Result<u16, DeliveryError>,
        url: String,
        latency: Duration,
    ) -> Result<AckKind, NatsError> {
        let at = OffsetDateTime::now_utc();
        let attempt = DeliveryAttempt {
            at,
            status: outcome
                .as_ref()
                .map_or_else(DeliveryError::status, |s| Some(*s)),
            latency_ms: latency.as_millis() as u64,
            error: outcome.as_ref().err().map(ToString::to_string),
        };
        let config = &self.inner.config;
        let mut decided = None;
        let log = &self.inner.topology.deliveries;
        log.modify(&task.tenant, &task.job_id, &task.destination, |chain| {
            decided = None;
            let Some(entry) = chain.find_mut(task.sequence) else {
                return false;
            };
            if entry.state.is_settled() {
                return false;
            }
            entry.attempts.push(attempt.clone());
            let (ack, state, next) = decide(config, outcome, entry.failed_attempts());
            entry.state = state;
            entry.url.clone_from(&url);
            entry.next_attempt_at = next.map(|delay| at + delay);
            decided = Some((ack, state));
            true
        })
        .await?;
        let Some((ack, state)) = decided else {
            return Ok(AckKind::Ack);
        };
        match outcome {
            Ok(_) => tracing::info!(job = %task.job_id, %url, "webhook delivered"),
            Err(err) => tracing::warn!(job = %task.job_id, %url, ?state, "webhook failed: {err}"),
        }
        Ok(ack)
    }

    /// `url` said 410 Gone: no more webhooks to this endpoint until a
    /// client enables it again (unless its URL changed meanwhile).
    async fn disable(
        &self,
        task: &WebhookTask,
        id: &EndpointId,
        url: &str,
    ) -> Result<(), NatsError> {
        let at = OffsetDateTime::now_utc();
        let reason = format!("{url} answered 410 Gone");
        let disabled = self
            .inner
            .topology
            .endpoints
            .update(&task.tenant, id, |endpoint| {
                if endpoint.disabled.is_some() || endpoint.url != url {
                    return false;
                }
                endpoint.disabled = Some(Disabled {
                    at,
                    reason: reason.clone(),
                });
                endpoint.updated_at = at;
                true
            })
            .await;
        match disabled {
            Ok(_) => tracing::warn!(endpoint = %id, "endpoint disabled: {reason}"),
            Err(reelmesh_nats::endpoint::EndpointChangeError::NotFound) => {}
            Err(reelmesh_nats::endpoint::EndpointChangeError::Nats(err)) => return Err(err),
        }
        Ok(())
    }

    fn chains(&self) -> std::sync::MutexGuard<'_, HashMap<ChainKey, mpsc::Sender<Taken>>> {
        self.inner
            .chains
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether the task asks for a settled webhook again (a Redeliver not yet
/// acted on), rather than being a copy of one already sent.
fn is_new_redelivery(chain: &DeliveryChain, task: &WebhookTask) -> bool {
    chain
        .find(task.sequence)
        .is_some_and(|record| task.redelivery > record.redeliveries)
}

/// How long a retrying webhook still has before its next attempt, if it is
/// not due yet.
fn not_due_for(record: &DeliveryRecord, now: OffsetDateTime) -> Option<Duration> {
    let at = record
        .next_attempt_at
        .filter(|_| record.state == DeliveryState::Retrying)?;
    let wait = Duration::try_from(at - now).ok()?;
    (wait > HOLD_MARGIN).then_some(wait)
}

/// A webhook whose task is gone: logged but never tried long after it was
/// queued (a crash between queueing steps), or retrying long after its
/// next attempt was due (a task naks itself to that time, so only one sent
/// here, with no task behind it, is that late).
fn is_orphaned(record: &DeliveryRecord, now: OffsetDateTime) -> bool {
    match record.state {
        DeliveryState::Pending => {
            record.attempts.is_empty()
                && record.queued_at.is_some_and(|at| now - at > ORPHANED_AFTER)
        }
        DeliveryState::Retrying => record
            .next_attempt_at
            .is_some_and(|at| now - at > ORPHANED_AFTER),
        _ => false,
    }
}

/// Success is acknowledged; a final failure or a spent schedule is a dead
/// letter; anything else comes back after the schedule's next wait.
fn decide(
    config: &NotifyConfig,
    outcome: &Result<u16, DeliveryError>,
    failed: u32,
) -> (AckKind, DeliveryState, Option<Duration>) {
    match outcome {
        Ok(_) => (AckKind::Ack, DeliveryState::Delivered, None),
        Err(err) if err.is_final() => (AckKind::Term, DeliveryState::Failed, None),
        Err(_) => match config.retry_delay(failed) {
            Some(delay) => (
                AckKind::Nak(Some(delay)),
                DeliveryState::Retrying,
                Some(delay),
            ),
            None => (AckKind::Term, DeliveryState::Failed, None),
        },
    }
}

/// How long a webhook waits for the earlier one holding it up: until just
/// after that one's next attempt, or a moment if it has not been tried.
fn hold_for(earlier: &DeliveryRecord) -> Duration {
    let Some(at) = earlier.next_attempt_at else {
        return Duration::from_secs(1);
    };
    let until = (at - OffsetDateTime::now_utc()).max(time::Duration::ZERO);
    let until = Duration::try_from(until).unwrap_or_default();
    (until + HOLD_MARGIN).min(MAX_HOLD)
}

#[cfg(test)]
mod tests {
    use reelmesh_nats::JobId;

    use super::*;

    #[test]
    fn failures_follow_the_schedule_and_final_ones_stop_it() {
        let config = NotifyConfig {
            retry_schedule_secs: vec![1, 2],
            ..Default::default()
        };
        let unavailable = Err(DeliveryError::Status(503));
        let (_, state, next) = decide(&config, &unavailable, 1);
        assert_eq!(
            (state, next),
            (DeliveryState::Retrying, Some(Duration::from_secs(1)))
        );
        let (_, state, next) = decide(&config, &unavailable, 2);
        assert_eq!(
            (state, next),
            (DeliveryState::Retrying, Some(Duration::from_secs(2)))
        );
        let (_, state, _) = decide(&config, &unavailable, 3);
        assert_eq!(state, DeliveryState::Failed, "schedule spent");
        let (_, state, _) = decide(&config, &Err(DeliveryError::Status(410)), 1);
        assert_eq!(state, DeliveryState::Failed, "gone is final");
        let (_, state, _) = decide(&config, &Ok(204), 0);
        assert_eq!(state, DeliveryState::Delivered);
    }

    #[test]
    fn a_copy_of_a_retrying_webhook_waits_for_its_schedule() {
        let now = OffsetDateTime::now_utc();
        let mut record = DeliveryRecord::pending(&JobId::new(), 1, "job.queued".into(), "u".into());
        assert_eq!(not_due_for(&record, now), None, "pending: due");
        record.state = DeliveryState::Retrying;
        record.next_attempt_at = Some(now + time::Duration::seconds(30));
        let wait = not_due_for(&record, now).expect("not due");
        assert!(wait > Duration::from_secs(29) && wait <= Duration::from_secs(30));
        record.next_attempt_at = Some(now - time::Duration::seconds(1));
        assert_eq!(not_due_for(&record, now), None, "overdue: due");
    }

    #[test]
    fn an_old_untried_or_long_overdue_webhook_counts_as_orphaned() {
        let now = OffsetDateTime::now_utc();
        let mut record = DeliveryRecord::pending(&JobId::new(), 1, "job.queued".into(), "u".into());
        assert!(!is_orphaned(&record, now), "just queued");
        let later = now + ORPHANED_AFTER + time::Duration::seconds(1);
        assert!(is_orphaned(&record, later));
        record.attempts.push(DeliveryAttempt {
            at: now,
            status: Some(503),
            latency_ms: 1,
            error: None,
        });
        assert!(!is_orphaned(&record, later), "tried: its task is alive");
        record.attempts.clear();
        record.queued_at = None;
        assert!(
            !is_orphaned(&record, later),
            "written before queued_at existed"
        );
        // Sent once by the next webhook and failed: retrying with no task.
        record.state = DeliveryState::Retrying;
        record.next_attempt_at = Some(now + time::Duration::seconds(5));
        assert!(!is_orphaned(&record, now), "its retry is not due");
        let overdue = now + time::Duration::seconds(5) + ORPHANED_AFTER;
        assert!(is_orphaned(&record, overdue + time::Duration::seconds(1)));
    }

    #[test]
    fn a_held_webhook_comes_back_just_after_the_one_it_waits_for() {
        let mut earlier =
            DeliveryRecord::pending(&JobId::new(), 1, "job.queued".into(), "u".into());
        assert_eq!(hold_for(&earlier), Duration::from_secs(1), "not tried yet");
        earlier.next_attempt_at = Some(OffsetDateTime::now_utc() + time::Duration::seconds(5));
        let hold = hold_for(&earlier);
        assert!(hold > Duration::from_secs(4) && hold <= Duration::from_secs(5) + HOLD_MARGIN);
        earlier.next_attempt_at = Some(OffsetDateTime::now_utc() + time::Duration::hours(5));
        assert_eq!(hold_for(&earlier), MAX_HOLD);
        earlier.next_attempt_at = Some(OffsetDateTime::now_utc() - time::Duration::seconds(5));
        assert_eq!(hold_for(&earlier), HOLD_MARGIN, "overdue");
    }
}
