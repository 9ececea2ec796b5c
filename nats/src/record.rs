//! Job records: the one authoritative state of every job, kept in a JetStream
//! KV bucket and only ever changed by compare-and-set.
//!
//! The state machine lives on [`JobRecord`] so every writer (gateway on cancel,
//! render on start and finish) obeys the same rules, and [`JobRecords`] retries
//! a change when another writer got there first.

use std::fmt;

use async_nats::jetstream::kv;
use base64::Engine as _;
use futures::StreamExt as _;
use reelmesh_proto::v1::JobSpec;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{NatsError, names};

/// A tenant's name: also a NATS subject token and a KV key part, hence the
/// restricted alphabet.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(name: &str) -> Result<Self, String> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if ok {
            Ok(TenantId(name.to_string()))
        } else {
            Err(format!(
                "tenant {name:?} must be 1-64 characters of A-Z, a-z, 0-9, '-' or '_'"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantId {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        TenantId::parse(&value)
    }
}

impl From<TenantId> for String {
    fn from(value: TenantId) -> Self {
        value.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A job id: a UUIDv7 in simple form, so ids sort by creation time and are
/// valid subject tokens.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

impl JobId {
    pub fn new() -> Self {
        JobId(uuid::Uuid::now_v7().simple().to_string())
    }

    pub fn parse(id: &str) -> Result<Self, String> {
        uuid::Uuid::try_parse(id)
            .map(|uuid| JobId(uuid.simple().to_string()))
            .map_err(|_| format!("job id {id:?} is not a reelmesh job id"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl TryFrom<String> for JobId {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        JobId::parse(&value)
    }
}

impl From<JobId> for String {
    fn from(value: JobId) -> Self {
        value.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// The allowed moves. A terminal state is final: this is what makes
    /// "exactly one terminal state" hold under concurrent writers.
    pub fn can_move_to(self, next: JobState) -> bool {
        use JobState::*;
        matches!(
            (self, next),
            (Queued, Running | Failed | Cancelled) | (Running, Completed | Failed | Cancelled)
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job {job_id} cannot move from {from:?} to {to:?}")]
pub struct TransitionError {
    pub job_id: String,
    pub from: JobState,
    pub to: JobState,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub stage: String,
    pub percent: f64,
    /// Estimated seconds until the stage ends, once there is enough to go on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<f64>,
}

/// What a completed job produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobOutput {
    /// Store key relative to the tenant: the main result (the first image
    /// for thumbnails).
    pub key: String,
    pub size_bytes: u64,
    pub media: MediaSummary,
    /// Every object the job wrote, in order.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Whether video was copied rather than re-encoded (in part, for a
    /// smart cut).
    #[serde(default)]
    pub copied: bool,
    /// Seconds of video re-encoded ahead of the copied part of a smart cut.
    #[serde(default)]
    pub reencoded_seconds: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MediaSummary {
    pub duration_seconds: f64,
    pub container: String,
    pub video_codec: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub audio_codec: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: JobId,
    pub tenant: TenantId,
    pub state: JobState,
    /// Kept as encoded protobuf: the proto is the contract and evolves with
    /// protobuf's compatibility rules, which a JSON copy would not follow.
    #[serde(with = "spec_as_protobuf")]
    pub spec: JobSpec,
    pub progress: Option<Progress>,
    pub error: Option<String>,
    pub output: Option<JobOutput>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl JobRecord {
    pub fn new(tenant: TenantId, spec: JobSpec) -> Self {
        let now = OffsetDateTime::now_utc();
        JobRecord {
            id: JobId::new(),
            tenant,
            state: JobState::Queued,
            spec,
            progress: None,
            error: None,
            output: None,
            created_at: now,
            updated_at: now,
        }
    }

    pub fn key(&self) -> String {
        names::job_key(&self.tenant, &self.id)
    }

    pub fn move_to(&mut self, next: JobState) -> Result<(), TransitionError> {
        if !self.state.can_move_to(next) {
            return Err(TransitionError {
                job_id: self.id.to_string(),
                from: self.state,
                to: next,
            });
        }
        self.state = next;
        self.updated_at = OffsetDateTime::now_utc();
        Ok(())
    }

    pub fn fail(&mut self, error: impl Into<String>) -> Result<(), TransitionError> {
        self.move_to(JobState::Failed)?;
        self.error = Some(error.into());
        Ok(())
    }

    pub fn complete(&mut self, output: JobOutput) -> Result<(), TransitionError> {
        self.move_to(JobState::Completed)?;
        self.progress = Some(Progress {
            stage: "done".into(),
            percent: 100.0,
            eta_seconds: Some(0.0),
        });
        self.output = Some(output);
        Ok(())
    }

    fn encode(&self) -> Result<bytes::Bytes, NatsError> {
        serde_json::to_vec(self)
            .map(Into::into)
            .map_err(|err| NatsError::Corrupt(err.to_string()))
    }

    fn decode(bytes: &[u8]) -> Result<Self, NatsError> {
        serde_json::from_slice(bytes).map_err(|err| NatsError::Corrupt(err.to_string()))
    }
}

mod spec_as_protobuf {
    use super::*;
    use prost::Message as _;

    pub fn serialize<S: serde::Serializer>(spec: &JobSpec, s: S) -> Result<S::Ok, S::Error> {
        let encoded = base64::engine::general_purpose::STANDARD.encode(spec.encode_to_vec());
        s.serialize_str(&encoded)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<JobSpec, D::Error> {
        let encoded = String::deserialize(d)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(serde::de::Error::custom)?;
        JobSpec::decode(bytes.as_slice()).map_err(serde::de::Error::custom)
    }
}

/// A record and the KV revision it was read at, for the next compare-and-set.
#[derive(Debug, Clone)]
pub struct Versioned {
    pub record: JobRecord,
    pub revision: u64,
}

/// The job-record bucket.
#[derive(Debug, Clone)]
pub struct JobRecords {
    kv: kv::Store,
    js: async_nats::jetstream::Context,
}

impl JobRecords {
    pub(crate) fn new(kv: kv::Store, js: async_nats::jetstream::Context) -> Self {
        JobRecords { kv, js }
    }

    /// Stores a new record; fails with `JobExists` rather than overwrite one.
    pub async fn create(&self, record: &JobRecord) -> Result<u64, NatsError> {
        match self.kv.create(record.key(), record.encode()?).await {
            Ok(revision) => Ok(revision),
            Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => {
                Err(NatsError::JobExists(record.id.to_string()))
            }
            Err(err) => Err(NatsError::unavailable(err)),
        }
    }

    pub async fn get(&self, tenant: &TenantId, id: &JobId) -> Result<Option<Versioned>, NatsError> {
        let entry = self
            .kv
            .entry(names::job_key(tenant, id))
            .await
            .map_err(NatsError::unavailable)?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => Ok(Some(Versioned {
                record: JobRecord::decode(&entry.value)?,
                revision: entry.revision,
            })),
            _ => Ok(None),
        }
    }

    /// Reads, changes and writes back a record by compare-and-set, starting
    /// over when another writer changed it in between. `change` returns
    /// `Ok(false)` to leave the record as it is.
    pub async fn modify<F>(
        &self,
        tenant: &TenantId,
        id: &JobId,
        mut change: F,
    ) -> Result<Versioned, NatsError>
    where
        F: FnMut(&mut JobRecord) -> Result<bool, NatsError>,
    {
        loop {
            let current = self
                .get(tenant, id)
                .await?
                .ok_or_else(|| NatsError::JobNotFound(id.to_string()))?;
            let mut record = current.record.clone();
            if !change(&mut record)? {
                return Ok(current);
            }
            match self
                .kv
                .update(record.key(), record.encode()?, current.revision)
                .await
            {
                Ok(revision) => return Ok(Versioned { record, revision }),
                Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(err) => return Err(NatsError::unavailable(err)),
            }
        }
    }

    /// Moves a job to `next`, failing if the state machine forbids it.
    pub async fn move_to(
        &self,
        tenant: &TenantId,
        id: &JobId,
        next: JobState,
    ) -> Result<Versioned, NatsError> {
        self.modify(tenant, id, |record| {
            record
                .move_to(next)
                .map_err(|_| NatsError::invalid_transition(id.as_str(), record.state, next))?;
            Ok(true)
        })
        .await
    }

    /// Every current record of a tenant. Reads the latest value per key
    /// straight off the bucket's stream, so it costs one pass over the tenant's
    /// jobs; fine until tenants keep very many jobs (retention bounds them).
    pub async fn list(&self, tenant: &TenantId) -> Result<Vec<JobRecord>, NatsError> {
        use async_nats::jetstream::consumer::{DeliverPolicy, pull};
        let stream = self
            .js
            .get_stream(format!("KV_{}", names::JOBS_BUCKET))
            .await
            .map_err(NatsError::unavailable)?;
        let mut consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: names::tenant_jobs_filter(tenant),
                deliver_policy: DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(NatsError::unavailable)?;
        let pending = consumer
            .info()
            .await
            .map_err(NatsError::unavailable)?
            .num_pending;
        let mut records = Vec::with_capacity(pending as usize);
        if pending == 0 {
            return Ok(records);
        }
        let mut messages = consumer.messages().await.map_err(NatsError::unavailable)?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(NatsError::unavailable)?;
            let info = message.info().map_err(NatsError::unavailable)?;
            let remaining = info.pending;
            if !is_kv_tombstone(&message) {
                records.push(JobRecord::decode(&message.payload)?);
            }
            if remaining == 0 {
                break;
            }
        }
        Ok(records)
    }

    /// Follows one record: yields its current value, then every change.
    pub async fn watch(
        &self,
        tenant: &TenantId,
        id: &JobId,
    ) -> Result<impl futures::Stream<Item = JobRecord> + Send + 'static, NatsError> {
        let watch = self
            .kv
            .watch_with_history(names::job_key(tenant, id))
            .await
            .map_err(NatsError::unavailable)?;
        Ok(watch.filter_map(|entry| async move {
            let entry = entry.ok()?;
            JobRecord::decode(&entry.value).ok()
        }))
    }
}

fn is_kv_tombstone(message: &async_nats::jetstream::Message) -> bool {
    message
        .headers
        .as_ref()
        .and_then(|headers| headers.get("KV-Operation"))
        .is_some_and(|op| op.as_str() != "PUT")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> JobRecord {
        JobRecord::new(TenantId::parse("acme").expect("tenant"), JobSpec::default())
    }

    #[test]
    fn terminal_states_are_final() {
        let mut job = record();
        job.move_to(JobState::Running).expect("queued -> running");
        job.fail("boom").expect("running -> failed");
        assert!(job.move_to(JobState::Completed).is_err());
        assert!(job.move_to(JobState::Cancelled).is_err());
        assert_eq!(job.state, JobState::Failed);
        assert_eq!(job.error.as_deref(), Some("boom"));
    }

    #[test]
    fn queued_job_cannot_complete_without_running() {
        let mut job = record();
        assert!(job.move_to(JobState::Completed).is_err());
        assert!(job.move_to(JobState::Cancelled).is_ok());
    }

    #[test]
    fn record_round_trips_through_json() {
        let job = record();
        let decoded = JobRecord::decode(&job.encode().expect("encode")).expect("decode");
        assert_eq!(decoded, job);
    }

    #[test]
    fn ids_and_tenants_are_validated() {
        assert!(TenantId::parse("acme-1_x").is_ok());
        assert!(TenantId::parse("a.b").is_err());
        assert!(TenantId::parse("").is_err());
        assert!(JobId::parse("not-an-id").is_err());
        let id = JobId::new();
        assert_eq!(JobId::parse(id.as_str()).expect("parse"), id);
    }
}
