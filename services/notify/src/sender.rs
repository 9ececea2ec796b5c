//! Sends queued webhooks: one attempt per delivery of a [`WebhookTask`],
//! recorded in the delivery log, then acknowledged (delivered or dead
//! letter) or handed back to JetStream to come again on the retry
//! schedule. Killing notify loses nothing: the task waits on the stream.
//!
//! Order per job and destination: one task per chain at a time in this
//! process, and a webhook whose chain still has an unsettled earlier one is
//! handed back until that one is settled. Different chains go in parallel,
//! so a slow or dead receiver holds up only its own webhooks.

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
use tokio::sync::{Semaphore, mpsc};
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
/// The pause before a webhook comes back when NATS failed us.
const NATS_RETRY: Duration = Duration::from_secs(2);

type ChainKey = (String, String, String);
/// A task and the message it came in, to acknowledge.
type Taken = (WebhookTask, Message);

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
    permits: Semaphore,
    /// The queue of each chain with a task in hand.
    chains: Mutex<HashMap<ChainKey, mpsc::UnboundedSender<Taken>>>,
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
        let http = policy.http_client(reqwest::Client::builder()).build()?;
        Ok(WebhookSender {
            inner: Arc::new(Inner {
                topology,
                http,
                policy,
                permits: Semaphore::new(config.concurrency),
                config,
                chains: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Takes tasks from `consumer` until `shutdown`.
    pub async fn run(
        &self,
        consumer: PullConsumer,
        shutdown: CancellationToken,
    ) -> Result<(), NatsError> {
        let mut tasks = consumer.messages().await.map_err(NatsError::unavailable)?;
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => break,
                message = tasks.next() => message,
            };
            match message {
                Some(Ok(message)) => self.dispatch(message),
                Some(Err(err)) => tracing::warn!("webhook consumer: {err}"),
                None => break,
            }
        }
        Ok(())
    }

    /// Hands the task to its chain's queue, starting one if the chain has
    /// none; the queue's sender is only used with the map locked, so a
    /// queue that is closing never misses a task.
    fn dispatch(&self, message: Message) {
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
        let mut chains = self.chains();
        let taken = match chains.get(&key) {
            Some(queue) => match queue.send((task, message)) {
                Ok(()) => return,
                Err(mpsc::error::SendError(taken)) => taken,
            },
            None => (task, message),
        };
        let (queue, received) = mpsc::unbounded_channel();
        let _ = queue.send(taken);
        chains.insert(key.clone(), queue);
        let sender = self.clone();
        tokio::spawn(async move { sender.drain_chain(key, received).await });
    }

    /// Works through one chain's tasks in arrival order, and retires the
    /// queue once it is empty.
    async fn drain_chain(&self, key: ChainKey, mut received: mpsc::UnboundedReceiver<Taken>) {
        loop {
            let (task, message) = match received.try_recv() {
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
        let Ok(_permit) = self.inner.permits.acquire().await else {
            return;
        };
        let ack = self.attempt(task).await.unwrap_or_else(|err| {
            tracing::warn!(job = %task.job_id, "webhook not attempted: {err}");
            AckKind::Nak(Some(NATS_RETRY))
        });
        if let Err(err) = message.ack_with(ack).await {
            tracing::warn!("could not acknowledge a webhook task: {err}");
        }
    }

    /// One attempt at the task's webhook, unless it is settled already or
    /// must wait for an earlier one; says what to tell the consumer.
    async fn attempt(&self, task: &WebhookTask) -> Result<AckKind, NatsError> {
        let log = &self.inner.topology.deliveries;
        let Some(mut chain) = log
            .get(&task.tenant, &task.job_id, &task.destination)
            .await?
        else {
            // Chains are written before their tasks: this one was purged.
            return Ok(AckKind::Term);
        };
        let Some(record) = chain.find(task.sequence) else {
            return Ok(AckKind::Term);
        };
        if record.state.is_settled() {
            if task.redelivery <= record.redeliveries {
                // Sent already: a duplicate task.
                return Ok(AckKind::Ack);
            }
            chain = self.restart_schedule(task).await?;
        }
        let Some(record) = chain.find(task.sequence) else {
            return Ok(AckKind::Term);
        };
        if let Some(earlier) = chain.blocker(task.sequence) {
            return Ok(AckKind::Nak(Some(hold_for(earlier))));
        }
        let record = record.clone();
        let (outcome, url, latency) = match self.verdict(&chain, &record).await? {
            Verdict::Send(delivery) => {
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
        self.settle(task, &record, &outcome, url, latency).await
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

    /// Records the attempt, disables an endpoint that answered 410, and
    /// says what to tell the consumer.
    async fn settle(
        &self,
        task: &WebhookTask,
        record: &DeliveryRecord,
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
        let failed = record.failed_attempts() + u32::from(outcome.is_err());
        let (ack, state, next) = decide(&self.inner.config, outcome, failed);
        let log = &self.inner.topology.deliveries;
        log.modify(&task.tenant, &task.job_id, &task.destination, |chain| {
            let Some(entry) = chain.find_mut(task.sequence) else {
                return false;
            };
            entry.attempts.push(attempt.clone());
            entry.state = state;
            entry.url = url.clone();
            entry.next_attempt_at = next.map(|delay| at + delay);
            true
        })
        .await?;
        if let (Err(err), Destination::Endpoint(id)) = (outcome, &task.destination)
            && err.is_gone()
        {
            self.disable(task, id, &url, at).await?;
        }
        match outcome {
            Ok(_) => tracing::info!(job = %task.job_id, %url, "webhook delivered"),
            Err(err) => tracing::warn!(job = %task.job_id, %url, ?state, "webhook failed: {err}"),
        }
        Ok(ack)
    }

    /// The receiver said 410 Gone: no more webhooks to this endpoint until
    /// a client enables it again.
    async fn disable(
        &self,
        task: &WebhookTask,
        id: &EndpointId,
        url: &str,
        at: OffsetDateTime,
    ) -> Result<(), NatsError> {
        let reason = format!("{url} answered 410 Gone");
        let disabled = self
            .inner
            .topology
            .endpoints
            .update(&task.tenant, id, |endpoint| {
                if endpoint.disabled.is_none() {
                    endpoint.disabled = Some(Disabled {
                        at,
                        reason: reason.clone(),
                    });
                    endpoint.updated_at = at;
                }
            })
            .await;
        match disabled {
            Ok(_) => tracing::warn!(endpoint = %id, "endpoint disabled: {reason}"),
            Err(reelmesh_nats::endpoint::EndpointChangeError::NotFound) => {}
            Err(reelmesh_nats::endpoint::EndpointChangeError::Nats(err)) => return Err(err),
        }
        Ok(())
    }

    fn chains(&self) -> std::sync::MutexGuard<'_, HashMap<ChainKey, mpsc::UnboundedSender<Taken>>> {
        self.inner
            .chains
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
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
