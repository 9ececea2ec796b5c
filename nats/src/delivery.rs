//! The webhook delivery log and the queue of webhooks to send.
//!
//! Every destination of a job's events (the job's own callback, or one of
//! the tenant's endpoints) has one [`DeliveryChain`]: the webhooks for that
//! job in event order, each with every attempt's status, latency and error.
//! Notify appends a webhook to its chain before queueing it, so a sender
//! can always see whether an earlier webhook of the same job is still
//! unsettled and hold a later one back: per job and destination, webhooks
//! arrive in order. Chains are changed by compare-and-set (notify appends
//! and records attempts, the gateway's Redeliver resets one).
//!
//! The queue ([`WebhookTask`] on a work-queue stream) only names a webhook;
//! the event itself is read from the events stream when it is sent.
//!
//! A chain is one NATS message, so it is kept within [`MAX_CHAIN_BYTES`]:
//! a write that would pass it first drops the oldest settled webhooks from
//! the log (counted on the chain). Were a chain refused for its size, every
//! try to record an attempt would fail again, and the webhook be sent again.

use std::collections::HashSet;

use async_nats::jetstream::{self, kv, message::PublishMessage};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{EndpointId, JobId, NatsError, TenantId, kv_json, names};

/// Where a job's webhooks go.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Destination {
    /// The callback URL given with the job (terminal events only).
    Callback,
    /// One of the tenant's registered endpoints.
    Endpoint(EndpointId),
}

impl Destination {
    const CALLBACK: &'static str = "callback";

    pub fn parse(token: &str) -> Result<Self, String> {
        match token {
            Self::CALLBACK => Ok(Destination::Callback),
            id => EndpointId::parse(id).map(Destination::Endpoint),
        }
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Callback => f.write_str(Self::CALLBACK),
            Destination::Endpoint(id) => write!(f, "{id}"),
        }
    }
}

impl TryFrom<String> for Destination {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Destination::parse(&value)
    }
}

impl From<Destination> for String {
    fn from(value: Destination) -> Self {
        value.to_string()
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Queued, not tried yet (or waiting for an earlier webhook of its job).
    Pending,
    /// Failed so far; another attempt is scheduled.
    Retrying,
    /// A 2xx answer.
    Delivered,
    /// Out of attempts, refused by the egress guard, answered 410, or its
    /// endpoint is gone or disabled: a dead letter, kept for inspection.
    Failed,
}

impl DeliveryState {
    /// Whether nothing more will happen to the delivery by itself.
    pub fn is_settled(self) -> bool {
        matches!(self, DeliveryState::Delivered | DeliveryState::Failed)
    }
}

/// One POST and what came of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryAttempt {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The receiver's HTTP status, if it answered.
    pub status: Option<u16>,
    pub latency_ms: u64,
    pub error: Option<String>,
}

/// One webhook: one event for one destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// The `webhook-id` header: the same on every attempt and redelivery.
    pub id: String,
    /// The event's sequence on the events stream.
    pub sequence: u64,
    /// `job.completed`, `job.progress`, ...
    pub event: String,
    /// Where the last attempt went (an endpoint's URL may change).
    pub url: String,
    pub state: DeliveryState,
    pub attempts: Vec<DeliveryAttempt>,
    /// Attempts before this index were made before a Redeliver; the retry
    /// schedule counts from here.
    #[serde(default)]
    pub schedule_from: usize,
    /// How many times a client asked for it again.
    #[serde(default)]
    pub redeliveries: u32,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub next_attempt_at: Option<OffsetDateTime>,
    /// When it was logged and queued.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub queued_at: Option<OffsetDateTime>,
}

impl DeliveryRecord {
    /// A webhook for the event at `sequence`, not tried yet.
    pub fn pending(job: &JobId, sequence: u64, event: String, url: String) -> Self {
        DeliveryRecord {
            id: webhook_id(job, sequence),
            sequence,
            event,
            url,
            state: DeliveryState::Pending,
            attempts: Vec::new(),
            schedule_from: 0,
            redeliveries: 0,
            next_attempt_at: None,
            queued_at: Some(OffsetDateTime::now_utc()),
        }
    }

    /// Failed attempts on the current schedule.
    pub fn failed_attempts(&self) -> u32 {
        let tried = self.attempts.len().saturating_sub(self.schedule_from);
        u32::try_from(tried).unwrap_or(u32::MAX)
    }

    /// Starts a fresh schedule (Redeliver): pending again, earlier
    /// attempts kept for the record.
    pub fn redeliver(&mut self) {
        self.state = DeliveryState::Pending;
        self.schedule_from = self.attempts.len();
        self.redeliveries += 1;
        self.next_attempt_at = None;
    }
}

/// `msg_<job>_<event sequence>`: unique per event, the same on every attempt.
pub fn webhook_id(job: &JobId, sequence: u64) -> String {
    format!("msg_{job}_{sequence}")
}

/// The size a chain's JSON is brought back to by dropping settled
/// webhooks: half of nats-server's default largest message (1 MiB).
pub const MAX_CHAIN_BYTES: usize = 512 * 1024;
/// The size past which a write is refused: the unsettled webhooks, never
/// dropped, may take the chain beyond [`MAX_CHAIN_BYTES`] up to this, so
/// recording an attempt of one is refused only in a chain near 1 MiB.
pub const REFUSED_CHAIN_BYTES: usize = 960 * 1024;

/// The webhooks of one job for one destination, in event order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryChain {
    pub tenant: TenantId,
    pub job_id: JobId,
    pub destination: Destination,
    pub deliveries: Vec<DeliveryRecord>,
    /// Settled webhooks dropped from the log to keep it within
    /// [`MAX_CHAIN_BYTES`], oldest first.
    #[serde(default)]
    pub pruned: u64,
    /// The latest event sequence among them: an event at or before it
    /// that the chain does not list was logged once already.
    #[serde(default)]
    pub pruned_through: u64,
}

impl DeliveryChain {
    pub fn new(tenant: &TenantId, job_id: &JobId, destination: &Destination) -> Self {
        DeliveryChain {
            tenant: tenant.clone(),
            job_id: job_id.clone(),
            destination: destination.clone(),
            deliveries: Vec::new(),
            pruned: 0,
            pruned_through: 0,
        }
    }

    /// Whether the webhook of the event at `sequence` was logged once and
    /// dropped since to keep the chain small.
    pub fn pruned_past(&self, sequence: u64) -> bool {
        self.pruned > 0 && sequence <= self.pruned_through && self.find(sequence).is_none()
    }

    /// Brings the chain's JSON back within `limit` bytes by dropping its
    /// oldest settled webhooks, as far as they go; its size after.
    pub fn fit(&mut self, limit: usize) -> usize {
        let mut oldest_settled: Vec<u64> = (self.deliveries.iter())
            .filter(|d| d.state.is_settled())
            .map(|d| d.sequence)
            .collect();
        oldest_settled.sort_unstable();
        let mut oldest_settled = oldest_settled.into_iter();
        let mut size = json_len(self);
        // Estimated from each entry's size, then measured again: the
        // counters' digits and the commas shift it by a few bytes.
        while size > limit {
            let mut estimate = size;
            let mut dropped = HashSet::new();
            for sequence in oldest_settled.by_ref() {
                let entry = self.find(sequence).map_or(0, json_len);
                estimate = estimate.saturating_sub(entry + 1);
                dropped.insert(sequence);
                if estimate <= limit {
                    break;
                }
            }
            let Some(&latest) = dropped.iter().max() else {
                break;
            };
            self.deliveries.retain(|d| !dropped.contains(&d.sequence));
            self.pruned += dropped.len() as u64;
            self.pruned_through = self.pruned_through.max(latest);
            size = json_len(self);
        }
        size
    }

    pub fn find(&self, sequence: u64) -> Option<&DeliveryRecord> {
        self.deliveries.iter().find(|d| d.sequence == sequence)
    }

    pub fn find_mut(&mut self, sequence: u64) -> Option<&mut DeliveryRecord> {
        self.deliveries.iter_mut().find(|d| d.sequence == sequence)
    }

    /// The earliest webhook before the one at `sequence` that is not
    /// settled yet: the one to wait for, keeping the job's order.
    pub fn blocker(&self, sequence: u64) -> Option<&DeliveryRecord> {
        self.deliveries
            .iter()
            .filter(|d| d.sequence < sequence && !d.state.is_settled())
            .min_by_key(|d| d.sequence)
    }
}

/// A webhook to send: a reference to its chain entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookTask {
    pub tenant: TenantId,
    pub job_id: JobId,
    pub destination: Destination,
    /// The event's sequence on the events stream.
    pub sequence: u64,
    /// Which Redeliver this is for (0 for the first sending), so a request
    /// to send again is not taken for a duplicate of the first.
    #[serde(default)]
    pub redelivery: u32,
}

impl WebhookTask {
    pub fn decode(bytes: &[u8]) -> Result<Self, NatsError> {
        serde_json::from_slice(bytes).map_err(|err| NatsError::Corrupt(format!("webhook: {err}")))
    }

    /// Deduplication id: notify queueing the same webhook again after a
    /// restart is dropped by the stream.
    fn message_id(&self) -> String {
        let WebhookTask {
            job_id,
            destination,
            sequence,
            redelivery,
            ..
        } = self;
        format!("{job_id}.{destination}.{sequence}.{redelivery}")
    }
}

#[derive(Debug, Clone)]
pub struct DeliveryLog {
    kv: kv::Store,
    js: jetstream::Context,
}

impl DeliveryLog {
    pub(crate) fn new(kv: kv::Store, js: jetstream::Context) -> Self {
        DeliveryLog { kv, js }
    }

    pub async fn get(
        &self,
        tenant: &TenantId,
        job: &JobId,
        destination: &Destination,
    ) -> Result<Option<DeliveryChain>, NatsError> {
        let what = format!("deliveries of {job} to {destination}");
        kv_json::get(&self.kv, &chain_key(tenant, job, destination), &what).await
    }

    /// Applies `change` to the chain (a new, empty one if there is none) by
    /// compare-and-set, again on a fresh read if someone else wrote in
    /// between; `change` says whether there is anything to write. What is
    /// written is kept within [`MAX_CHAIN_BYTES`]; `TooLarge` if even its
    /// unsettled webhooks pass [`REFUSED_CHAIN_BYTES`] (nothing is written
    /// then). The chain as it now is.
    pub async fn modify(
        &self,
        tenant: &TenantId,
        job: &JobId,
        destination: &Destination,
        mut change: impl FnMut(&mut DeliveryChain) -> bool,
    ) -> Result<DeliveryChain, NatsError> {
        let key = chain_key(tenant, job, destination);
        let what = format!("deliveries {key}");
        let new = || Some(DeliveryChain::new(tenant, job, destination));
        let mut full = false;
        let fitted = |chain: &mut DeliveryChain| {
            let changed = change(chain);
            full = changed && chain.fit(MAX_CHAIN_BYTES) > REFUSED_CHAIN_BYTES;
            changed && !full
        };
        let chain = kv_json::modify(&self.kv, &key, &what, new, fitted).await?;
        if full {
            return Err(NatsError::TooLarge(format!(
                "the webhook log of job {job} to {destination} is full of webhooks not yet settled"
            )));
        }
        // A missing chain starts as a new one, so there always is one.
        Ok(chain.unwrap_or_else(|| DeliveryChain::new(tenant, job, destination)))
    }

    /// Every chain of `job`: its callback's and each endpoint's.
    pub async fn for_job(
        &self,
        tenant: &TenantId,
        job: &JobId,
    ) -> Result<Vec<DeliveryChain>, NatsError> {
        let filter = format!("{tenant}.{job}.*");
        let values = kv_json::latest_matching(&self.js, names::DELIVERIES_BUCKET, &filter).await?;
        // Records of earlier releases share the key space; they are skipped.
        Ok(kv_json::readable(&values, "delivery record"))
    }

    /// Queues a webhook for notify's senders; stored before this returns.
    pub async fn enqueue(&self, task: &WebhookTask) -> Result<(), NatsError> {
        let payload = serde_json::to_vec(task)
            .map_err(|err| NatsError::Corrupt(format!("webhook: {err}")))?;
        let subject = names::webhook_subject(&task.tenant, &task.job_id, &task.destination);
        let publish = PublishMessage::build()
            .payload(payload.into())
            .message_id(task.message_id());
        self.js
            .send_publish(subject, publish)
            .await
            .map_err(NatsError::unavailable)?
            .await
            .map(drop)
            .map_err(NatsError::unavailable)
    }
}

fn json_len(value: &impl Serialize) -> usize {
    serde_json::to_vec(value).map_or(0, |json| json.len())
}

/// `<tenant>.<job>.<destination>`.
fn chain_key(tenant: &TenantId, job: &JobId, destination: &Destination) -> String {
    format!("{tenant}.{job}.{destination}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(states: &[DeliveryState]) -> DeliveryChain {
        let tenant = TenantId::parse("acme").expect("tenant");
        let job = JobId::new();
        let mut chain = DeliveryChain::new(&tenant, &job, &Destination::Callback);
        for (n, state) in states.iter().enumerate() {
            let mut record =
                DeliveryRecord::pending(&job, 10 * (n as u64 + 1), "job.x".into(), "u".into());
            record.state = *state;
            chain.deliveries.push(record);
        }
        chain
    }

    #[test]
    fn keys_are_three_subject_tokens() {
        let tenant = TenantId::parse("acme").expect("tenant");
        let job = JobId::new();
        let endpoint = EndpointId::new();
        let key = chain_key(&tenant, &job, &Destination::Endpoint(endpoint.clone()));
        assert_eq!(key, format!("acme.{job}.{endpoint}"));
        assert_eq!(
            chain_key(&tenant, &job, &Destination::Callback)
                .split('.')
                .count(),
            3
        );
    }

    #[test]
    fn destinations_round_trip_through_their_token() {
        let endpoint = Destination::Endpoint(EndpointId::new());
        for destination in [Destination::Callback, endpoint] {
            assert_eq!(
                Destination::parse(&destination.to_string()),
                Ok(destination)
            );
        }
        assert!(Destination::parse("nonsense").is_err());
    }

    #[test]
    fn a_webhook_waits_for_the_earliest_unsettled_one_before_it() {
        use DeliveryState::*;
        let chain = chain(&[Delivered, Retrying, Pending, Failed]);
        assert_eq!(chain.blocker(10), None, "the first waits for nothing");
        assert_eq!(chain.blocker(20), None, "settled ones do not hold it");
        assert_eq!(chain.blocker(30).map(|d| d.sequence), Some(20));
        assert_eq!(chain.blocker(40).map(|d| d.sequence), Some(20));
        let settled = self::chain(&[Delivered, Failed, Pending]);
        assert_eq!(settled.blocker(30), None);
    }

    #[test]
    fn a_chain_past_its_size_drops_its_oldest_settled_webhooks_first() {
        use DeliveryState::*;
        let sequences = |chain: &DeliveryChain| {
            chain
                .deliveries
                .iter()
                .map(|d| d.sequence)
                .collect::<Vec<_>>()
        };
        // Sequences 10, 20, ... 60; the newest settled one listed first.
        let mut chain = chain(&[Delivered, Failed, Retrying, Delivered, Pending, Delivered]);
        chain.deliveries.swap(0, 5);
        let size = json_len(&chain);
        assert_eq!(chain.fit(size), size, "within its size, nothing goes");
        assert_eq!(chain.pruned, 0);
        let smaller = chain.fit(size - 1);
        assert!(smaller < size && smaller == json_len(&chain), "{smaller}");
        assert_eq!(
            sequences(&chain),
            [60, 20, 30, 40, 50],
            "the oldest settled went"
        );
        assert_eq!((chain.pruned, chain.pruned_through), (1, 10));
        assert!(chain.pruned_past(10));
        assert!(!chain.pruned_past(20), "still listed");
        assert!(!chain.pruned_past(70), "never seen");

        let left = chain.fit(10);
        assert!(left > 10, "the unsettled ones alone pass it");
        assert_eq!(
            sequences(&chain),
            [30, 50],
            "they stay, every settled one went"
        );
        assert_eq!((chain.pruned, chain.pruned_through), (4, 60));
    }

    #[test]
    fn a_chain_is_brought_within_its_size_exactly() {
        use DeliveryState::*;
        // Many small settled entries: estimates alone would stop a few
        // bytes short, as the counters grow digits.
        let mut chain = chain(&[Delivered; 400]);
        chain.deliveries.push(chain.deliveries[0].clone());
        let last = chain.deliveries.len() - 1;
        (
            chain.deliveries[last].sequence,
            chain.deliveries[last].state,
        ) = (99_999, Pending);
        let mut least = chain.clone();
        least.deliveries.retain(|d| d.state == Pending);
        (least.pruned, least.pruned_through) = (400, 4000);
        for limit in [json_len(&chain) - 1, json_len(&chain) / 2, json_len(&least)] {
            let size = chain.fit(limit);
            assert_eq!(size, json_len(&chain));
            assert!(size <= limit, "{size} > {limit}");
        }
        assert_eq!(chain, least, "down to the unsettled one");
    }

    #[test]
    fn a_redelivery_counts_its_schedule_afresh() {
        let job = JobId::new();
        let mut record = DeliveryRecord::pending(&job, 7, "job.completed".into(), "u".into());
        record.attempts = vec![
            DeliveryAttempt {
                at: OffsetDateTime::now_utc(),
                status: Some(503),
                latency_ms: 1,
                error: None,
            };
            3
        ];
        record.state = DeliveryState::Failed;
        assert_eq!(record.failed_attempts(), 3);
        record.redeliver();
        assert_eq!(record.failed_attempts(), 0);
        assert_eq!(record.state, DeliveryState::Pending);
        assert_eq!(record.id, webhook_id(&job, 7), "same webhook-id");
    }
}
