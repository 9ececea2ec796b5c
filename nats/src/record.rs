//! Job records: the one authoritative state of every job, kept in a JetStream
//! KV bucket and only ever changed by compare-and-set.
//!
//! The state machine lives on [`JobRecord`] so every writer (gateway on cancel,
//! render on start and finish) obeys the same rules, and [`JobRecords`] retries
//! a change when another writer got there first.

use std::fmt;

use async_nats::jetstream::{kv, message::PublishMessage};
use base64::Engine as _;
use futures::StreamExt as _;
use reelmesh_proto::v1::JobSpec;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{NatsError, Pending, id::time_ordered_id, kv_json::unless_moved, names};

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

time_ordered_id!(
    /// A job id: sorts by creation time.
    JobId,
    "job"
);

/// Which queue a job waits in; workers drain higher ones first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    /// Highest first: the order workers look for work in.
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    pub fn name(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    pub fn of(spec: &JobSpec) -> Self {
        use reelmesh_proto::v1::Priority as Wire;
        match spec.priority() {
            Wire::High => Priority::High,
            Wire::Normal => Priority::Normal,
            Wire::Low => Priority::Low,
        }
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
        // Running -> Queued waits for a retry; Failed -> Queued is an
        // explicit RetryJob, which starts a new round with its own terminal
        // event (see `JobRecord::round`).
        matches!(
            (self, next),
            (Queued, Running | Failed | Cancelled)
                | (Running, Queued | Completed | Failed | Cancelled)
                | (Failed, Queued)
        )
    }
}

/// One try at rendering a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1 for the first attempt, counting across rounds.
    pub number: u32,
    /// The RetryJob round it belongs to; each round has its own budget.
    #[serde(default)]
    pub round: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub ended_at: Option<OffsetDateTime>,
    #[serde(default)]
    pub error: Option<String>,
    /// Given back by a worker that was shutting down: not the job's fault,
    /// so it does not count against `max_attempts`.
    #[serde(default)]
    pub handed_back: bool,
}

/// Attempts a job gets when its spec does not say.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// Why an attempt could not begin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoAttempt {
    /// Finished or cancelled: nothing to do.
    Ended,
    /// Every attempt was used; the record is now FAILED with this error.
    Exhausted(String),
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

/// The store directory under which every attempt of `job` writes its
/// results (`outputs/<job>/<attempt>/...`). Attempts that never committed
/// leave theirs there too, so retention deletes the whole directory.
pub fn outputs_dir(job: &JobId) -> String {
    format!("outputs/{job}")
}

/// What a completed job produced (nothing, for a noop job).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// An ingest's catalog asset, and whether the catalog had it already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_id: Option<String>,
    #[serde(default)]
    pub existing_asset: bool,
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
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// When a failed attempt will be retried, while the job waits for it.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub retry_at: Option<OffsetDateTime>,
    /// Bumped by RetryJob: events and work items carry it so a new round
    /// is not mistaken for (or deduplicated against) the one before.
    #[serde(default)]
    pub round: u32,
    /// The output's objects were deleted by the retention sweeper; `output`
    /// still describes what they were.
    #[serde(default)]
    pub output_expired: bool,
    /// The tenant's limit on jobs running at once, as the gateway had it
    /// when the job was submitted (0: none). Kept here so that every render
    /// worker applies the same limit without a copy of the gateway's config.
    #[serde(default)]
    pub running_limit: u32,
}

fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
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
            attempts: Vec::new(),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            retry_at: None,
            round: 0,
            output_expired: false,
            running_limit: 0,
        }
    }

    /// The attempt that is running, if any.
    pub fn open_attempt(&self) -> Option<&Attempt> {
        self.attempts.last().filter(|a| a.ended_at.is_none())
    }

    /// Attempts of this round that count against `max_attempts`.
    pub fn attempts_used(&self) -> u32 {
        let used = self
            .attempts
            .iter()
            .filter(|a| a.round == self.round && !a.handed_back)
            .count();
        u32::try_from(used).unwrap_or(u32::MAX)
    }

    /// Starts the next attempt and returns its number. A job still RUNNING
    /// was being rendered by a worker that stopped answering (its work item
    /// came back after the ack wait): that attempt is closed as failed.
    pub fn begin_attempt(&mut self) -> Result<u32, NoAttempt> {
        match self.state {
            JobState::Queued => {}
            JobState::Running => self.end_attempt(Some(
                "the worker stopped responding (no heartbeat within the ack wait)".into(),
            )),
            _ => return Err(NoAttempt::Ended),
        }
        if self.attempts_used() >= self.max_attempts {
            let error = self.exhausted_error();
            self.state = JobState::Failed;
            self.error = Some(error.clone());
            self.touch();
            return Err(NoAttempt::Exhausted(error));
        }
        let number = u32::try_from(self.attempts.len() + 1).unwrap_or(u32::MAX);
        self.attempts.push(Attempt {
            number,
            round: self.round,
            started_at: OffsetDateTime::now_utc(),
            ended_at: None,
            error: None,
            handed_back: false,
        });
        self.state = JobState::Running;
        self.retry_at = None;
        self.touch();
        Ok(number)
    }

    /// Whether `attempt` is the one running now: only it may end the job.
    pub fn is_running_attempt(&self, attempt: u32) -> bool {
        self.state == JobState::Running && self.open_attempt().is_some_and(|a| a.number == attempt)
    }

    /// Closes the open attempt, with its error if it failed.
    pub fn end_attempt(&mut self, error: Option<String>) {
        if let Some(open) = self.attempts.last_mut().filter(|a| a.ended_at.is_none()) {
            open.ended_at = Some(OffsetDateTime::now_utc());
            open.error = error;
        }
    }

    /// The attempt failed but may be tried again: back to QUEUED until `at`.
    pub fn retry_at(&mut self, error: String, at: OffsetDateTime) -> Result<(), TransitionError> {
        self.move_to(JobState::Queued)?;
        self.end_attempt(Some(error));
        self.retry_at = Some(at);
        self.progress = None;
        Ok(())
    }

    /// The attempt was handed back by a worker shutting down; it is queued
    /// again at once and the attempt does not count.
    pub fn hand_back(&mut self) -> Result<(), TransitionError> {
        self.move_to(JobState::Queued)?;
        self.end_attempt(Some("handed back: the worker was shutting down".into()));
        if let Some(last) = self.attempts.last_mut() {
            last.handed_back = true;
        }
        self.progress = None;
        Ok(())
    }

    /// CancelJob: ends the job, and the attempt if one runs.
    pub fn cancel(&mut self) -> Result<(), TransitionError> {
        self.move_to(JobState::Cancelled)?;
        self.end_attempt(Some("cancelled".into()));
        self.retry_at = None;
        Ok(())
    }

    /// RetryJob: a FAILED job gets a new round with a fresh attempt budget.
    pub fn requeue(&mut self) -> Result<(), TransitionError> {
        self.move_to(JobState::Queued)?;
        self.round += 1;
        self.error = None;
        self.progress = None;
        self.retry_at = None;
        Ok(())
    }

    fn exhausted_error(&self) -> String {
        let last = self
            .attempts
            .iter()
            .rev()
            .find_map(|a| a.error.as_deref())
            .unwrap_or("no error recorded");
        format!(
            "gave up after {} attempts; the last failed with: {last}",
            self.attempts_used()
        )
    }

    fn touch(&mut self) {
        self.updated_at = OffsetDateTime::now_utc();
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
        self.touch();
        Ok(())
    }

    pub fn fail(&mut self, error: impl Into<String>) -> Result<(), TransitionError> {
        let error = error.into();
        self.move_to(JobState::Failed)?;
        self.end_attempt(Some(error.clone()));
        self.error = Some(error);
        Ok(())
    }

    pub fn complete(&mut self, output: JobOutput) -> Result<(), TransitionError> {
        self.move_to(JobState::Completed)?;
        self.end_attempt(None);
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

/// How long after its id was made a job's record may still arrive: its
/// create can be overtaken by its own work item, or sent by a client that
/// buffered it while NATS was away and delivered it on reconnecting. A
/// job with no record after this is taken as never created.
pub const RECORD_LAG: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether `job`'s record, not stored yet, may still arrive: its id is
/// younger than [`RECORD_LAG`].
pub fn may_still_arrive(job: &JobId) -> bool {
    job.age().is_some_and(|age| age < RECORD_LAG)
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

    /// Sends a new record without waiting for the stream's ack; the ack
    /// reports `JobExists` rather than overwrite one. Sent before the job's
    /// work item, the record is stored first, but a worker's read may still
    /// overtake it (see [`NatsError::JobNotYetStored`]).
    pub async fn send_create(&self, record: &JobRecord) -> Result<Pending, NatsError> {
        let prefix = self.kv.put_prefix.as_ref().unwrap_or(&self.kv.prefix);
        let mut headers = async_nats::HeaderMap::new();
        // Subject sequence 0: no value was ever stored under the key.
        headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
        let publish = PublishMessage::build()
            .payload(record.encode()?)
            .headers(headers);
        let ack = self
            .js
            .send_publish(format!("{prefix}{}", record.key()), publish)
            .await
            .map_err(NatsError::unavailable)?;
        Ok(Pending::new(ack).or_conflict(NatsError::JobExists(record.id.to_string())))
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
        change: F,
    ) -> Result<Versioned, NatsError>
    where
        F: FnMut(&mut JobRecord) -> Result<bool, NatsError>,
    {
        self.change(tenant, id, None, change).await
    }

    /// Like [`JobRecords::modify`], but first tries the change on `known`,
    /// a version the caller wrote itself: when nobody wrote since, that
    /// saves reading the record back. A stale `known` costs one failed
    /// compare-and-set, then it goes as `modify` does.
    pub async fn modify_from<F>(&self, known: Versioned, change: F) -> Result<Versioned, NatsError>
    where
        F: FnMut(&mut JobRecord) -> Result<bool, NatsError>,
    {
        let (tenant, id) = (known.record.tenant.clone(), known.record.id.clone());
        self.change(&tenant, &id, Some((known, false)), change)
            .await
    }

    /// Like [`JobRecords::modify`], on `read`, a version the caller has
    /// just read with [`JobRecords::get`]: it counts as the stored one, so a
    /// decision to leave it alone is final without reading it again.
    pub async fn modify_read<F>(&self, read: Versioned, change: F) -> Result<Versioned, NatsError>
    where
        F: FnMut(&mut JobRecord) -> Result<bool, NatsError>,
    {
        let (tenant, id) = (read.record.tenant.clone(), read.record.id.clone());
        self.change(&tenant, &id, Some((read, true)), change).await
    }

    /// The compare-and-set loop behind the `modify` family. `known` is a
    /// version to try first, and whether it counts as just read (then a
    /// decision to leave it alone is final) or only as the caller's own.
    async fn change<F>(
        &self,
        tenant: &TenantId,
        id: &JobId,
        mut known: Option<(Versioned, bool)>,
        mut change: F,
    ) -> Result<Versioned, NatsError>
    where
        F: FnMut(&mut JobRecord) -> Result<bool, NatsError>,
    {
        loop {
            let (current, fresh) = match known.take() {
                Some(known) => known,
                None => (self.read(tenant, id).await?, true),
            };
            let mut record = current.record.clone();
            if !change(&mut record)? {
                // A decision to leave the record alone only counts when
                // taken on what is stored now.
                if fresh {
                    return Ok(current);
                }
                continue;
            }
            if let Some(revision) = self.replace(&record, current.revision).await? {
                return Ok(Versioned { record, revision });
            }
            // Another writer came first: read again.
        }
    }

    /// Writes `record` only if the stored version is still `revision`: the
    /// new revision, or `None` when another writer came first. Unlike
    /// [`JobRecords::modify_from`] it never retries on what that writer
    /// left, for callers whose change is only valid on the version they read.
    pub async fn replace(
        &self,
        record: &JobRecord,
        revision: u64,
    ) -> Result<Option<u64>, NatsError> {
        let written = self
            .kv
            .update(record.key(), record.encode()?, revision)
            .await;
        match written {
            Err(err) if err.kind() == kv::UpdateErrorKind::TimedOut => {
                self.landed(record, revision).await
            }
            written => unless_moved(written),
        }
    }

    /// After a write over `revision` whose ack timed out: its revision if
    /// the stored record is the one written (the write landed, only its
    /// answer was late), else [`NatsError::NoAnswer`], as it may still land.
    /// Without this a slow server turns a write that happened into a
    /// failure, and the events that should follow it are never sent.
    async fn landed(&self, record: &JobRecord, revision: u64) -> Result<Option<u64>, NatsError> {
        let written = JobRecord::decode(&record.encode()?)?;
        let unknown = |why: String| NatsError::NoAnswer(format!("job {}: {why}", record.id));
        // A read can overtake the write it follows inside the server.
        for pause in [10, 50, 250, 0] {
            let read = self.get(&record.tenant, &record.id).await;
            match read
                .map_err(|err| unknown(format!("write timed out, read back failed: {err}")))?
            {
                Some(stored) if stored.record == written => return Ok(Some(stored.revision)),
                Some(stored) if stored.revision == revision && pause > 0 => {
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                }
                _ => break,
            }
        }
        Err(unknown(
            "the write timed out and is not stored as sent".into(),
        ))
    }

    async fn read(&self, tenant: &TenantId, id: &JobId) -> Result<Versioned, NatsError> {
        self.get(tenant, id)
            .await?
            .ok_or_else(|| NatsError::JobNotFound(id.to_string()))
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
        self.list_matching(names::tenant_jobs_filter(tenant)).await
    }

    /// Every current record of every tenant (the retention sweeper's view).
    pub async fn list_all(&self) -> Result<Vec<JobRecord>, NatsError> {
        self.list_matching(names::all_jobs_filter()).await
    }

    /// Makes sure a job that was never stored never will be: a delete
    /// marker under its key makes a create still in flight (see
    /// [`NatsError::NoAnswer`]) fail its check that nothing was ever
    /// stored there. The marker is itself written only where nothing is:
    /// `false` when the job's record landed first. A job barred before (by
    /// a gateway that went down before taking its idempotency key over)
    /// stays barred: `true`.
    pub async fn bar(&self, tenant: &TenantId, id: &JobId) -> Result<bool, NatsError> {
        let key = names::job_key(tenant, id);
        let barred = self.kv.delete_expect_revision(&key, Some(0)).await;
        if unless_moved(barred)?.is_some() {
            return Ok(true);
        }
        let entry = self.kv.entry(&key).await.map_err(NatsError::unavailable)?;
        Ok(entry.is_some_and(|entry| entry.operation == kv::Operation::Delete))
    }

    /// Removes a record and its history of values for good, unless it
    /// changed since `revision` (`false` then: the job moved on, e.g. a
    /// RetryJob queued it again).
    pub async fn purge_at(
        &self,
        tenant: &TenantId,
        id: &JobId,
        revision: u64,
    ) -> Result<bool, NatsError> {
        let purged = self
            .kv
            .purge_expect_revision(names::job_key(tenant, id), Some(revision))
            .await;
        Ok(unless_moved(purged)?.is_some())
    }

    /// Removes the markers [`JobRecords::purge_at`] leaves under the keys
    /// of removed jobs (the bucket keeps no maximum age, so each would stay
    /// for ever, and every listing of the bucket walks them). A purged
    /// job's create landed long before, and any other write names a
    /// revision, which an emptied key fails as the marker did. The markers
    /// [`JobRecords::bar`] writes stay: they turn away a create that may
    /// still arrive at any time (see [`NatsError::NoAnswer`]). Returns how
    /// many it removed.
    pub async fn remove_purge_markers(&self) -> Result<usize, NatsError> {
        let filter = names::all_jobs_filter();
        let markers = crate::kv_json::purge_markers(&self.js, names::JOBS_BUCKET, &filter).await?;
        for marker in &markers {
            crate::kv_json::remove_marker(&self.js, names::JOBS_BUCKET, marker).await?;
        }
        Ok(markers.len())
    }

    /// A record that cannot be read is left out (see
    /// [`crate::kv_json::readable`]): ListJobs and the retention sweep
    /// still see all the others.
    async fn list_matching(&self, filter: String) -> Result<Vec<JobRecord>, NatsError> {
        let values = crate::kv_json::latest_matching(&self.js, names::JOBS_BUCKET, &filter).await?;
        Ok(crate::kv_json::readable(&values, "job record"))
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
    fn attempts_are_counted_per_round_and_exhaust_into_failed() {
        let mut job = record();
        job.max_attempts = 2;
        assert_eq!(job.begin_attempt(), Ok(1));
        job.retry_at("boom".into(), OffsetDateTime::now_utc())
            .expect("retry");
        assert_eq!(job.state, JobState::Queued);
        assert_eq!(job.begin_attempt(), Ok(2));
        // The worker died: the redelivered item finds it RUNNING.
        let Err(NoAttempt::Exhausted(error)) = job.begin_attempt() else {
            panic!("out of attempts");
        };
        assert!(error.contains("stopped responding"), "{error}");
        assert_eq!(job.state, JobState::Failed);
        assert_eq!(job.attempts[0].error.as_deref(), Some("boom"));
        job.requeue().expect("retry job");
        assert_eq!(job.begin_attempt(), Ok(3), "a new round, a new budget");
        assert!(job.is_running_attempt(3) && !job.is_running_attempt(2));
    }

    #[test]
    fn handed_back_attempts_do_not_count() {
        let mut job = record();
        job.max_attempts = 1;
        assert_eq!(job.begin_attempt(), Ok(1));
        job.hand_back().expect("hand back");
        assert_eq!(job.begin_attempt(), Ok(2));
        assert_eq!(job.attempts_used(), 1);
    }

    #[test]
    fn record_round_trips_through_json() {
        let job = record();
        let decoded = JobRecord::decode(&job.encode().expect("encode")).expect("decode");
        assert_eq!(decoded, job);
    }

    #[test]
    fn records_from_before_the_running_limit_have_none() {
        let mut json: serde_json::Value =
            serde_json::from_slice(&record().encode().expect("encode")).expect("json");
        json.as_object_mut()
            .expect("object")
            .remove("running_limit");
        let bytes = serde_json::to_vec(&json).expect("json");
        assert_eq!(JobRecord::decode(&bytes).expect("decode").running_limit, 0);
    }

    #[test]
    fn ids_and_tenants_are_validated() {
        assert!(TenantId::parse("acme-1_x").is_ok());
        assert!(TenantId::parse("a.b").is_err());
        assert!(TenantId::parse("").is_err());
        assert!(JobId::parse("not-an-id").is_err());
        let id = JobId::new();
        assert_eq!(JobId::parse(id.as_str()).expect("parse"), id);
        let age = id.age().expect("made now");
        assert!(age < std::time::Duration::from_secs(3600), "{age:?}");
    }
}
