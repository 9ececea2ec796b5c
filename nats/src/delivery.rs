//! The webhook delivery log: one record per webhook (per job and event),
//! with every attempt's status, latency and error, kept in a KV bucket so
//! clients can see what was sent and what their receiver answered.
//!
//! Notify writes it (one consumer handles a given event at a time, so a
//! plain put after a get is enough); the gateway reads it.

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{JobId, NatsError, TenantId, kv_json};

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Failed so far; another attempt is scheduled.
    Retrying,
    /// A 2xx answer.
    Delivered,
    /// Out of attempts, refused by the egress guard, or answered 410: a
    /// dead letter, kept for inspection.
    Failed,
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// The `webhook-id` header: the same on every attempt.
    pub id: String,
    pub tenant: TenantId,
    pub job_id: JobId,
    /// `job.completed`, `job.failed`, ...
    pub event: String,
    pub url: String,
    pub state: DeliveryState,
    pub attempts: Vec<DeliveryAttempt>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub next_attempt_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone)]
pub struct DeliveryLog {
    kv: kv::Store,
}

impl DeliveryLog {
    pub(crate) fn new(kv: kv::Store) -> Self {
        DeliveryLog { kv }
    }

    pub async fn get(
        &self,
        tenant: &TenantId,
        job: &JobId,
        event: &str,
    ) -> Result<Option<DeliveryRecord>, NatsError> {
        let what = format!("delivery of {job} {event}");
        kv_json::get(&self.kv, &entry_key(tenant, job, event), &what).await
    }

    pub async fn put(&self, record: &DeliveryRecord) -> Result<(), NatsError> {
        let key = entry_key(&record.tenant, &record.job_id, &record.event);
        kv_json::put(&self.kv, &key, record, &format!("delivery {}", record.id)).await
    }

    /// Every delivery of `job`'s events (`events` names the kinds that may
    /// have one), oldest event first.
    pub async fn for_job(
        &self,
        tenant: &TenantId,
        job: &JobId,
        events: &[&str],
    ) -> Result<Vec<DeliveryRecord>, NatsError> {
        let mut records = Vec::new();
        for event in events {
            if let Some(record) = self.get(tenant, job, event).await? {
                records.push(record);
            }
        }
        records.sort_by_key(|record| record.attempts.first().map(|attempt| attempt.at));
        Ok(records)
    }
}

/// `<tenant>.<job>.<event>`, with the event's dot made a dash so the key
/// stays three tokens.
fn entry_key(tenant: &TenantId, job: &JobId, event: &str) -> String {
    format!("{tenant}.{job}.{}", event.replace('.', "-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_three_subject_tokens() {
        let tenant = TenantId::parse("acme").expect("tenant");
        let job = JobId::new();
        let key = entry_key(&tenant, &job, "job.completed");
        assert_eq!(key, format!("acme.{job}.job-completed"));
        assert_eq!(key.split('.').count(), 3);
    }
}
