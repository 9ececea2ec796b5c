//! Webhook endpoints: URLs a tenant registers (Webhooks/CreateEndpoint) to
//! hear about all of its jobs, each with the event types it wants and the
//! secrets webhooks to it are signed with.
//!
//! The gateway writes them; notify follows the bucket to know where each
//! event goes, and disables an endpoint whose receiver answers 410 Gone.
//! Updates are compare-and-set, so the gateway editing an endpoint and
//! notify disabling it at the same moment cannot undo each other.

use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{NatsError, TenantId, id::time_ordered_id, kv_json, names};

time_ordered_id!(
    /// The id of a webhook endpoint.
    EndpointId,
    "endpoint"
);

/// Webhook event types an endpoint may ask for: `job.` and an event kind.
pub const WEBHOOK_EVENT_TYPES: [&str; 7] = [
    "job.queued",
    "job.started",
    "job.progress",
    "job.retrying",
    "job.completed",
    "job.failed",
    "job.cancelled",
];

/// Replaced secrets that still sign beside the current one, at most.
pub const MAX_PREVIOUS_SECRETS: usize = 2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub id: EndpointId,
    pub tenant: TenantId,
    pub url: String,
    #[serde(default)]
    pub description: String,
    /// Event types sent here; empty means all of them.
    #[serde(default)]
    pub events: Vec<String>,
    /// Newest first. Webhooks carry one signature per secret still valid,
    /// so receivers can switch secrets without missing a webhook.
    pub secrets: Vec<EndpointSecret>,
    /// Set when no more webhooks should go here (the receiver answered 410
    /// Gone, or a client turned it off), with why.
    #[serde(default)]
    pub disabled: Option<Disabled>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointSecret {
    /// `whsec_` and base64.
    pub secret: String,
    /// When a replaced secret stops being used; `None` for the current one.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Disabled {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub reason: String,
}

impl EndpointRecord {
    /// Whether webhooks of `event_type` (`job.completed`, ...) go here now.
    pub fn wants(&self, event_type: &str) -> bool {
        self.disabled.is_none()
            && (self.events.is_empty() || self.events.iter().any(|e| e == event_type))
    }

    /// The secrets to sign with at `now`: the current one and any replaced
    /// one still within its grace period.
    pub fn signing_secrets(&self, now: OffsetDateTime) -> Vec<&str> {
        self.secrets
            .iter()
            .filter(|s| s.expires_at.is_none_or(|at| at > now))
            .map(|s| s.secret.as_str())
            .collect()
    }

    /// Makes `secret` the current one; the old ones stay valid for `grace`.
    pub fn rotate_secret(&mut self, secret: String, now: OffsetDateTime, grace: time::Duration) {
        for old in &mut self.secrets {
            let ends = now + grace;
            old.expires_at = Some(old.expires_at.map_or(ends, |at| at.min(ends)));
        }
        self.secrets
            .retain(|s| s.expires_at.is_none_or(|at| at > now));
        self.secrets.insert(
            0,
            EndpointSecret {
                secret,
                expires_at: None,
            },
        );
        // Newest first: rotating often drops the oldest, so the signature
        // header does not grow with every rotation.
        self.secrets.truncate(1 + MAX_PREVIOUS_SECRETS);
        self.updated_at = now;
    }
}

/// What went wrong changing an endpoint.
#[derive(Debug, thiserror::Error)]
pub enum EndpointChangeError {
    #[error("no such endpoint")]
    NotFound,
    #[error(transparent)]
    Nats(#[from] NatsError),
}

/// The endpoints bucket.
#[derive(Debug, Clone)]
pub struct EndpointStore {
    kv: kv::Store,
    js: jetstream::Context,
}

impl EndpointStore {
    pub(crate) fn new(kv: kv::Store, js: jetstream::Context) -> Self {
        EndpointStore { kv, js }
    }

    pub async fn create(&self, record: &EndpointRecord) -> Result<(), NatsError> {
        let bytes = encode(record)?;
        self.kv
            .create(key(&record.tenant, &record.id), bytes.into())
            .await
            .map(drop)
            .map_err(NatsError::unavailable)
    }

    pub async fn get(
        &self,
        tenant: &TenantId,
        id: &EndpointId,
    ) -> Result<Option<EndpointRecord>, NatsError> {
        kv_json::get(&self.kv, &key(tenant, id), &format!("endpoint {id}")).await
    }

    /// Applies `change` by compare-and-set, again on a fresh read if someone
    /// else wrote in between; `change` says whether there is anything to
    /// write. The endpoint as it now is.
    pub async fn update(
        &self,
        tenant: &TenantId,
        id: &EndpointId,
        change: impl Fn(&mut EndpointRecord) -> bool,
    ) -> Result<EndpointRecord, EndpointChangeError> {
        let what = format!("endpoint {id}");
        kv_json::modify(&self.kv, &key(tenant, id), &what, || None, change)
            .await?
            .ok_or(EndpointChangeError::NotFound)
    }

    pub async fn delete(&self, tenant: &TenantId, id: &EndpointId) -> Result<(), NatsError> {
        self.kv
            .purge(key(tenant, id))
            .await
            .map_err(NatsError::unavailable)
    }

    /// Every endpoint of `tenant`, oldest first; one that cannot be read is
    /// left out (see [`kv_json::readable`]).
    pub async fn list(&self, tenant: &TenantId) -> Result<Vec<EndpointRecord>, NatsError> {
        let filter = format!("{tenant}.*");
        let values = kv_json::latest_matching(&self.js, names::ENDPOINTS_BUCKET, &filter).await?;
        let mut records: Vec<EndpointRecord> = kv_json::readable(&values, "endpoint");
        // Ids are time-ordered.
        records.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(records)
    }

    /// Every endpoint of every tenant, but any that cannot be read: one
    /// such must not stop notify routing for all the others.
    pub async fn list_all(&self) -> Result<Vec<EndpointRecord>, NatsError> {
        let values = kv_json::latest_matching(&self.js, names::ENDPOINTS_BUCKET, ">").await?;
        Ok(kv_json::readable(&values, "endpoint"))
    }

    /// Every endpoint as it is, then every change (a deleted endpoint
    /// arrives as `Removed`); what notify routes events by.
    pub async fn follow(
        &self,
    ) -> Result<impl futures::Stream<Item = EndpointChange> + Send + 'static, NatsError> {
        use futures::StreamExt as _;
        let watch = self
            .kv
            .watch_with_history(">")
            .await
            .map_err(NatsError::unavailable)?;
        Ok(watch.filter_map(|entry| async move {
            let entry = entry.ok()?;
            if entry.operation != kv::Operation::Put {
                return Some(EndpointChange::Removed(entry.key));
            }
            match serde_json::from_slice(&entry.value) {
                Ok(record) => Some(EndpointChange::Put(Box::new(record))),
                Err(err) => {
                    tracing::error!(key = %entry.key, "skipping an unreadable endpoint: {err}");
                    None
                }
            }
        }))
    }
}

/// One change seen by [`EndpointStore::follow`].
#[derive(Debug, Clone)]
pub enum EndpointChange {
    Put(Box<EndpointRecord>),
    /// The KV key (`<tenant>.<id>`) of an endpoint deleted.
    Removed(String),
}

/// `<tenant>.<endpoint id>`.
pub fn key(tenant: &TenantId, id: &EndpointId) -> String {
    format!("{tenant}.{id}")
}

fn encode(record: &EndpointRecord) -> Result<Vec<u8>, NatsError> {
    serde_json::to_vec(record).map_err(|err| NatsError::Corrupt(format!("endpoint: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(events: &[&str]) -> EndpointRecord {
        let now = OffsetDateTime::now_utc();
        EndpointRecord {
            id: EndpointId::new(),
            tenant: TenantId::parse("acme").expect("tenant"),
            url: "https://example.com/hook".into(),
            description: String::new(),
            events: events.iter().map(|e| e.to_string()).collect(),
            secrets: vec![EndpointSecret {
                secret: "whsec_first".into(),
                expires_at: None,
            }],
            disabled: None,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn an_empty_filter_wants_everything_and_a_disabled_endpoint_nothing() {
        let all = endpoint(&[]);
        assert!(WEBHOOK_EVENT_TYPES.iter().all(|t| all.wants(t)));
        let some = endpoint(&["job.completed"]);
        assert!(some.wants("job.completed"));
        assert!(!some.wants("job.progress"));
        let mut off = endpoint(&[]);
        off.disabled = Some(Disabled {
            at: OffsetDateTime::now_utc(),
            reason: "410".into(),
        });
        assert!(!off.wants("job.completed"));
    }

    #[test]
    fn a_rotated_secret_signs_alongside_the_new_one_until_its_grace_ends() {
        let mut record = endpoint(&[]);
        let now = OffsetDateTime::now_utc();
        record.rotate_secret("whsec_second".into(), now, time::Duration::hours(24));
        assert_eq!(record.signing_secrets(now), ["whsec_second", "whsec_first"]);
        let tomorrow = now + time::Duration::hours(25);
        assert_eq!(record.signing_secrets(tomorrow), ["whsec_second"]);
        // A second rotation at once does not extend the first secret's grace.
        record.rotate_secret("whsec_third".into(), now, time::Duration::hours(48));
        assert_eq!(record.secrets.len(), 3);
        assert_eq!(
            record.signing_secrets(tomorrow),
            ["whsec_third", "whsec_second"]
        );
    }

    #[test]
    fn rotating_often_keeps_only_the_newest_previous_secrets() {
        let mut record = endpoint(&[]);
        let now = OffsetDateTime::now_utc();
        for n in 0..10 {
            let grace = time::Duration::days(30);
            record.rotate_secret(format!("whsec_{n}"), now, grace);
        }
        assert_eq!(record.secrets.len(), 1 + MAX_PREVIOUS_SECRETS);
        assert_eq!(
            record.signing_secrets(now),
            ["whsec_9", "whsec_8", "whsec_7"]
        );
    }
}
