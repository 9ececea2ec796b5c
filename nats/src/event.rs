//! Job events: the history of each job (queued, started, progress, and one
//! terminal event), kept on the events stream under a per-job subject.
//!
//! Watchers replay a job's subject from the start and then follow it live;
//! notify consumes every job's events through a durable consumer and turns
//! them into webhooks.

use async_nats::jetstream::{
    self, consumer::DeliverPolicy, consumer::pull, message::PublishMessage,
    stream::LastRawMessageErrorKind,
};
use futures::{Stream, StreamExt as _};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{JobId, JobOutput, NatsError, Pending, Progress, TenantId, names};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    pub job_id: JobId,
    pub tenant: TenantId,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The job's RetryJob round (`JobRecord::round`) the event belongs to.
    #[serde(default)]
    pub round: u32,
    /// Whether the job has a callback URL, on events made from its record,
    /// so notify reads the record only for jobs that do. `None` (unknown)
    /// means look.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<bool>,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    Queued,
    Started {
        #[serde(default)]
        attempt: u32,
    },
    Progress(Progress),
    /// An attempt failed; the job waits in the queue for the next.
    Retrying {
        attempt: u32,
        error: String,
        #[serde(with = "time::serde::rfc3339")]
        retry_at: OffsetDateTime,
    },
    Completed {
        output: JobOutput,
    },
    Failed {
        error: String,
    },
    Cancelled,
}

/// The names of the kinds that end a job's round: [`EventKind::is_terminal`]
/// asks this list, so routing and the events agree on what ends a job.
pub const TERMINAL_KIND_NAMES: [&str; 3] = ["completed", "failed", "cancelled"];

impl EventKind {
    /// The last subject token, also the webhook event type after "job.".
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Queued => "queued",
            EventKind::Started { .. } => "started",
            EventKind::Progress(_) => "progress",
            EventKind::Retrying { .. } => "retrying",
            EventKind::Completed { .. } => "completed",
            EventKind::Failed { .. } => "failed",
            EventKind::Cancelled => "cancelled",
        }
    }

    /// The terminal event a record in a terminal state calls for.
    pub fn ending(record: &crate::JobRecord) -> Option<Self> {
        use crate::JobState;
        match record.state {
            JobState::Completed => Some(EventKind::Completed {
                output: record.output.clone().unwrap_or_default(),
            }),
            JobState::Failed => Some(EventKind::Failed {
                error: record.error.clone().unwrap_or_default(),
            }),
            JobState::Cancelled => Some(EventKind::Cancelled),
            JobState::Queued | JobState::Running => None,
        }
    }

    /// The state a job is in once this event has happened.
    pub fn state(&self) -> crate::JobState {
        use crate::JobState;
        match self {
            EventKind::Queued | EventKind::Retrying { .. } => JobState::Queued,
            EventKind::Started { .. } | EventKind::Progress(_) => JobState::Running,
            EventKind::Completed { .. } => JobState::Completed,
            EventKind::Failed { .. } => JobState::Failed,
            EventKind::Cancelled => JobState::Cancelled,
        }
    }

    pub fn is_terminal(&self) -> bool {
        TERMINAL_KIND_NAMES.contains(&self.name())
    }
}

impl JobEvent {
    pub fn now(tenant: &TenantId, job_id: &JobId, kind: EventKind) -> Self {
        JobEvent {
            job_id: job_id.clone(),
            tenant: tenant.clone(),
            at: OffsetDateTime::now_utc(),
            round: 0,
            callback: None,
            kind,
        }
    }

    /// An event of `job`'s current round.
    pub fn of(job: &crate::JobRecord, kind: EventKind) -> Self {
        let callback = job
            .spec
            .callback
            .as_ref()
            .is_some_and(|c| !c.url.is_empty());
        JobEvent {
            round: job.round,
            callback: Some(callback),
            ..Self::now(&job.tenant, &job.id, kind)
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, NatsError> {
        serde_json::from_slice(bytes).map_err(|err| NatsError::Corrupt(err.to_string()))
    }

    /// Deduplication id: JetStream drops a second terminal event of the same
    /// job and round, so a writer retrying after a lost ack cannot end a job
    /// twice; attempts' events are told apart by their number.
    fn message_id(&self) -> Option<String> {
        let (job, round) = (&self.job_id, self.round);
        match &self.kind {
            EventKind::Progress(_) => None,
            kind if kind.is_terminal() => Some(format!("{job}.{round}.terminal")),
            EventKind::Started { attempt } | EventKind::Retrying { attempt, .. } => {
                Some(format!("{job}.{round}.{}.{attempt}", self.kind.name()))
            }
            kind => Some(format!("{job}.{round}.{}", kind.name())),
        }
    }
}

/// An event with its stream sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct SequencedEvent {
    pub sequence: u64,
    pub event: JobEvent,
}

/// The events stream.
#[derive(Debug, Clone)]
pub struct EventLog {
    js: jetstream::Context,
}

impl EventLog {
    pub(crate) fn new(js: jetstream::Context) -> Self {
        EventLog { js }
    }

    /// Whether the stream holds an event of `event`'s kind for its job, of
    /// its round or a later one (the last on that kind's subject tells).
    /// Whoever ends a job publishes the kind its record shows, so this
    /// finds an ending sent before; needed to send one again once the
    /// duplicate window, which would drop a second copy, may be over.
    pub async fn holds(&self, event: &JobEvent) -> Result<bool, NatsError> {
        let subject = names::event_subject(&event.tenant, &event.job_id, event.kind.name());
        let stream = self.stream().await?;
        match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(stored) => Ok(JobEvent::decode(&stored.payload)?.round >= event.round),
            Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(false),
            Err(err) => Err(NatsError::unavailable(err)),
        }
    }

    /// Publishes `event` unless [`EventLog::holds`] finds it stored, and
    /// says whether it did. For an event that should have been sent but may
    /// not have been: the look comes first because the message id drops a
    /// second copy only within the duplicate window.
    pub async fn publish_unless_stored(&self, event: &JobEvent) -> Result<bool, NatsError> {
        if self.holds(event).await? {
            return Ok(false);
        }
        self.publish(event).await?;
        Ok(true)
    }

    /// Publishes and waits for the stream's ack, so a returned event is durable.
    pub async fn publish(&self, event: &JobEvent) -> Result<u64, NatsError> {
        self.send(event).await?.durable().await
    }

    /// Sends an event without waiting for the stream's ack, so the caller
    /// can go on and collect the ack later. Events a client sends are stored
    /// in the order it sent them.
    pub async fn send(&self, event: &JobEvent) -> Result<Pending, NatsError> {
        let subject = names::event_subject(&event.tenant, &event.job_id, event.kind.name());
        let payload =
            serde_json::to_vec(event).map_err(|err| NatsError::Corrupt(err.to_string()))?;
        let mut publish = PublishMessage::build().payload(payload.into());
        if let Some(id) = event.message_id() {
            publish = publish.message_id(id);
        }
        let ack = self
            .js
            .send_publish(subject, publish)
            .await
            .map_err(NatsError::unavailable)?;
        Ok(Pending::new(ack))
    }

    /// The event stored at `sequence`, or `None` once it has expired or
    /// been purged (a webhook names its event this way).
    pub async fn get(&self, sequence: u64) -> Result<Option<JobEvent>, NatsError> {
        use async_nats::jetstream::stream::RawMessageErrorKind;
        let stream = self.stream().await?;
        match stream.get_raw_message(sequence).await {
            Ok(message) => JobEvent::decode(&message.payload).map(Some),
            Err(err) if err.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(err) => Err(NatsError::unavailable(err)),
        }
    }

    /// A handle on the events stream, without the info request that
    /// `get_stream` makes: a webhook's send and a watch each take one.
    async fn stream(&self) -> Result<jetstream::stream::Stream<()>, NatsError> {
        self.js
            .get_stream_no_info(names::EVENTS_STREAM)
            .await
            .map_err(NatsError::unavailable)
    }

    /// Deletes every event of one job (retention).
    pub async fn purge(&self, tenant: &TenantId, job: &JobId) -> Result<(), NatsError> {
        let stream = self.stream().await?;
        stream
            .purge()
            .filter(names::job_events_filter(tenant, job))
            .await
            .map_err(NatsError::unavailable)?;
        Ok(())
    }

    /// The events on `filters` stored from `since` up to the newest one
    /// stored when called, oldest first: what a reader that follows newer
    /// ones another way (a consumer whose filter just widened) may have
    /// missed. Ends early if the stream ends.
    pub async fn stored_since(
        &self,
        filters: Vec<String>,
        since: OffsetDateTime,
    ) -> Result<impl Stream<Item = Result<jetstream::Message, NatsError>> + Send + 'static, NatsError>
    {
        let stream = self.stream().await?;
        let last = stream
            .get_info()
            .await
            .map_err(NatsError::unavailable)?
            .state
            .last_sequence;
        let mut consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subjects: filters,
                deliver_policy: DeliverPolicy::ByStartTime { start_time: since },
                ..Default::default()
            })
            .await
            .map_err(NatsError::unavailable)?;
        let none = consumer
            .info()
            .await
            .map_err(NatsError::unavailable)?
            .num_pending
            == 0;
        let messages = consumer.messages().await.map_err(NatsError::unavailable)?;
        // Stop after the message at `last`, or the last one matching: live
        // ones are the widened consumer's to read.
        Ok(futures::stream::unfold(
            (messages, !none),
            move |(mut messages, more)| async move {
                if !more {
                    return None;
                }
                let read = messages.next().await?.map_err(NatsError::unavailable);
                let info = read.as_ref().map(|message| message.info());
                let more = match info {
                    Ok(Ok(info)) => info.stream_sequence < last && info.pending > 0,
                    _ => false,
                };
                Some((read, (messages, more)))
            },
        ))
    }

    /// Every event of one job after stream sequence `after` (0: from the
    /// first), then live ones as they arrive. The stream never ends by
    /// itself; the caller stops after the terminal event.
    pub async fn follow(
        &self,
        tenant: &TenantId,
        job: &JobId,
        after: u64,
    ) -> Result<impl Stream<Item = Result<SequencedEvent, NatsError>> + Send + 'static, NatsError>
    {
        let stream = self.stream().await?;
        // An ordered consumer is ephemeral and recreates itself after a gap,
        // which is what a replay-then-follow reader wants.
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: names::job_events_filter(tenant, job),
                deliver_policy: match after {
                    0 => DeliverPolicy::All,
                    after => DeliverPolicy::ByStartSequence {
                        start_sequence: after + 1,
                    },
                },
                ..Default::default()
            })
            .await
            .map_err(NatsError::unavailable)?;
        let messages = consumer.messages().await.map_err(NatsError::unavailable)?;
        Ok(messages.map(|message| {
            let message = message.map_err(NatsError::unavailable)?;
            let sequence = message
                .info()
                .map_err(NatsError::unavailable)?
                .stream_sequence;
            let event = JobEvent::decode(&message.payload)?;
            Ok(SequencedEvent { sequence, event })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialise_with_a_type_tag() {
        let tenant = TenantId::parse("acme").expect("tenant");
        let job = JobId::new();
        let event = JobEvent::now(
            &tenant,
            &job,
            EventKind::Failed {
                error: "bad input".into(),
            },
        );
        let json: serde_json::Value = serde_json::to_value(&event).expect("encode");
        assert_eq!(json["type"], "failed");
        assert_eq!(json["error"], "bad input");
        let back: JobEvent = serde_json::from_value(json).expect("decode");
        assert_eq!(back, event);
    }

    #[test]
    fn events_from_a_record_say_whether_it_has_a_callback() {
        let tenant = TenantId::parse("acme").expect("tenant");
        let mut job = crate::JobRecord::new(tenant.clone(), Default::default());
        assert_eq!(
            JobEvent::of(&job, EventKind::Cancelled).callback,
            Some(false)
        );
        job.spec.callback = Some(reelmesh_proto::v1::Callback {
            url: "https://example.com/hook".into(),
            secret: String::new(),
        });
        let event = JobEvent::of(&job, EventKind::Cancelled);
        assert_eq!(event.callback, Some(true));
        let mut json = serde_json::to_value(&event).expect("encode");
        json.as_object_mut().expect("object").remove("callback");
        let older: JobEvent = serde_json::from_value(json).expect("decode");
        assert_eq!(
            older.callback, None,
            "unknown in events written before the field"
        );
    }

    #[test]
    fn only_one_terminal_event_per_job_is_accepted() {
        let tenant = TenantId::parse("acme").expect("tenant");
        let job = JobId::new();
        let done = JobEvent::now(&tenant, &job, EventKind::Cancelled);
        let failed = JobEvent::now(&tenant, &job, EventKind::Failed { error: "x".into() });
        assert_eq!(done.message_id(), failed.message_id());
        let progress = JobEvent::now(
            &tenant,
            &job,
            EventKind::Progress(Progress {
                stage: "render".into(),
                percent: 1.0,
                eta_seconds: None,
            }),
        );
        assert_eq!(progress.message_id(), None);
    }
}
