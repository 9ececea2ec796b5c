//! Work items: one message per job on the work-queue stream, taken by exactly
//! one render worker and removed when that worker acks it.
//!
//! There is one queue (subject and durable consumer) per [`Priority`];
//! workers look in them highest first. A message stays in the stream while a
//! worker holds it, so the stream's count per tenant is the tenant's queued
//! plus running jobs. A job cancelled while queued has its item taken out
//! at once (the subject names the job), so it stops counting.

use async_nats::jetstream::{
    self,
    consumer::{PullConsumer, pull},
    message::PublishMessage,
};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::{JobId, JobRecord, NatsError, Pending, Priority, TenantId, names};

/// Just enough to find the job record; the record is the source of truth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkItem {
    pub tenant: TenantId,
    pub job_id: JobId,
    /// The job's RetryJob round: a requeued job is a new message.
    #[serde(default)]
    pub round: u32,
}

impl WorkItem {
    /// The item that queues `job` in its current round.
    pub fn of(job: &JobRecord) -> Self {
        WorkItem {
            tenant: job.tenant.clone(),
            job_id: job.id.clone(),
            round: job.round,
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, NatsError> {
        serde_json::from_slice(bytes).map_err(|err| NatsError::Corrupt(err.to_string()))
    }
}

#[derive(Debug, Clone)]
pub struct WorkQueue {
    js: jetstream::Context,
    consumer: pull::Config,
}

impl WorkQueue {
    pub(crate) fn new(js: jetstream::Context, consumer: pull::Config) -> Self {
        WorkQueue { js, consumer }
    }

    /// Enqueues a job. Job id and round are the message id, so a retried
    /// publish within the stream's duplicate window does not queue the job
    /// twice.
    pub async fn enqueue(&self, item: &WorkItem, priority: Priority) -> Result<(), NatsError> {
        self.send(item, priority).await?.durable().await?;
        Ok(())
    }

    /// Like [`WorkQueue::enqueue`], without waiting for the stream's ack.
    pub async fn send(&self, item: &WorkItem, priority: Priority) -> Result<Pending, NatsError> {
        let payload =
            serde_json::to_vec(item).map_err(|err| NatsError::Corrupt(err.to_string()))?;
        let publish = PublishMessage::build()
            .payload(payload.into())
            .message_id(format!("{}.{}", item.job_id, item.round));
        let ack = self
            .js
            .send_publish(
                names::work_subject(priority, &item.tenant, &item.job_id),
                publish,
            )
            .await
            .map_err(NatsError::unavailable)?;
        Ok(Pending::new(ack))
    }

    /// Removes the work item stored at `sequence`: one queued for a job
    /// whose record could not be stored.
    pub async fn withdraw(&self, sequence: u64) -> Result<(), NatsError> {
        self.stream()
            .await?
            .delete_message(sequence)
            .await
            .map_err(NatsError::unavailable)?;
        Ok(())
    }

    /// Takes every queued item of a job out of the queues: those of a job
    /// cancelled while queued, which would otherwise count against its
    /// tenant's limit and the queue depth until a worker came to them.
    /// Returns how many were taken.
    pub async fn withdraw_job(&self, tenant: &TenantId, job: &JobId) -> Result<u64, NatsError> {
        let purged = self
            .stream()
            .await?
            .purge()
            .filter(names::job_work_filter(tenant, job))
            .await
            .map_err(NatsError::unavailable)?;
        Ok(purged.purged)
    }

    /// The durable pull consumers shared by all render workers, highest
    /// priority first. Declared as this release configures them, updating
    /// those an earlier one created (or another ack wait): settings such as
    /// the unlimited ack-pending count are what keep one tenant's waiting
    /// jobs from stalling the rest, and take effect on upgrade.
    pub async fn render_consumers(&self) -> Result<Vec<PullConsumer>, NatsError> {
        let stream = self.stream().await?;
        // Work-queue streams refuse overlapping consumers, and the single
        // consumer of earlier releases overlaps all of these.
        let _ = stream.delete_consumer(names::LEGACY_RENDER_CONSUMER).await;
        let mut consumers = Vec::new();
        for priority in Priority::ALL {
            let name = names::render_consumer(priority);
            let config = pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: names::work_priority_filter(priority),
                ..self.consumer.clone()
            };
            // Create or update; only editable settings ever change.
            let consumer = stream
                .create_consumer(config)
                .await
                .map_err(NatsError::unavailable)?;
            consumers.push(consumer);
        }
        Ok(consumers)
    }

    /// A tenant's jobs in the queues, waiting or being rendered, under
    /// both subject layouts (an upgrade may leave items of the earlier one).
    pub async fn tenant_depth(&self, tenant: &TenantId) -> Result<u64, NatsError> {
        self.count(names::tenant_work_filters(tenant), u64::MAX)
            .await
    }

    /// Whether the queues may hold an item of `job`: one of its own, or
    /// any of its tenant's that an earlier release queued without the job
    /// in the subject (those cannot be told apart).
    pub async fn may_hold_job(&self, tenant: &TenantId, job: &JobId) -> Result<bool, NatsError> {
        let [_, untold] = names::tenant_work_filters(tenant);
        let filters = [names::job_work_filter(tenant, job), untold];
        Ok(self.count(filters, 1).await? > 0)
    }

    /// Items under `filters`, counted subject by subject until `enough`.
    async fn count(&self, filters: [String; 2], enough: u64) -> Result<u64, NatsError> {
        let stream = self.stream().await?;
        let mut total = 0;
        for filter in filters {
            let mut info = stream
                .info_with_subjects(filter)
                .await
                .map_err(NatsError::unavailable)?;
            while let Some(subject) = info.next().await {
                total += subject.map_err(NatsError::unavailable)?.1 as u64;
                if total >= enough {
                    return Ok(total);
                }
            }
        }
        Ok(total)
    }

    /// Messages waiting for a worker: what autoscalers scale render workers on.
    pub async fn depth(&self) -> Result<u64, NatsError> {
        let info = self.stream().await?.get_info().await;
        Ok(info.map_err(NatsError::unavailable)?.state.messages)
    }

    /// A handle on the work stream, without the info request that
    /// `get_stream` makes.
    async fn stream(&self) -> Result<jetstream::stream::Stream<()>, NatsError> {
        self.js
            .get_stream_no_info(names::WORK_STREAM)
            .await
            .map_err(NatsError::unavailable)
    }
}
