//! Work items: one message per job on the work-queue stream, taken by exactly
//! one render worker and removed when that worker acks it.

use async_nats::jetstream::{self, consumer::pull, message::PublishMessage};
use serde::{Deserialize, Serialize};

use crate::{JobId, NatsError, TenantId, names};

/// Just enough to find the job record; the record is the source of truth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkItem {
    pub tenant: TenantId,
    pub job_id: JobId,
}

impl WorkItem {
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

    /// Enqueues a job. The job id is the message id, so a retried publish
    /// within the stream's duplicate window does not queue the job twice.
    pub async fn enqueue(&self, item: &WorkItem) -> Result<(), NatsError> {
        let payload =
            serde_json::to_vec(item).map_err(|err| NatsError::Corrupt(err.to_string()))?;
        let publish = PublishMessage::build()
            .payload(payload.into())
            .message_id(item.job_id.as_str());
        self.js
            .send_publish(names::WORK_SUBJECT, publish)
            .await
            .map_err(NatsError::unavailable)?
            .await
            .map_err(NatsError::unavailable)?;
        Ok(())
    }

    /// The durable pull consumer shared by all render workers.
    pub async fn render_consumer(&self) -> Result<jetstream::consumer::PullConsumer, NatsError> {
        let stream = self
            .js
            .get_stream(names::WORK_STREAM)
            .await
            .map_err(NatsError::unavailable)?;
        stream
            .get_or_create_consumer(names::RENDER_CONSUMER, self.consumer.clone())
            .await
            .map_err(NatsError::unavailable)
    }

    /// Messages waiting for a worker: what autoscalers scale render workers on.
    pub async fn depth(&self) -> Result<u64, NatsError> {
        let mut stream = self
            .js
            .get_stream(names::WORK_STREAM)
            .await
            .map_err(NatsError::unavailable)?;
        let info = stream.info().await.map_err(NatsError::unavailable)?;
        Ok(info.state.messages)
    }
}
