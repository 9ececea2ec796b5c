//! Where a worker's next job comes from: the priority queues, highest
//! first, one message per free slot.
//!
//! A free slot asks each queue in priority order for one message with a
//! no-wait fetch, so it never holds a message it cannot start (its ack timer
//! would run while another worker sat idle). When every queue is empty it
//! waits on the doorbell: a plain NATS subscription to the work subjects,
//! which rings whenever a job is queued, so new work starts within a round
//! trip rather than a poll interval. A slow poll remains for work that comes
//! back without a publish: naks with a delay and redeliveries after an ack
//! wait.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{Message, consumer::PullConsumer};
use futures::StreamExt as _;
use reelmesh_nats::{NatsError, Topology, names};
use tokio::{sync::Notify, task::JoinHandle};
use tokio_util::sync::CancellationToken;

/// How often an idle slot looks again without being rung.
const IDLE_POLL: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Intake {
    /// Highest priority first.
    consumers: Vec<PullConsumer>,
    doorbell: Arc<Notify>,
    ringer: JoinHandle<()>,
}

impl Drop for Intake {
    fn drop(&mut self) {
        self.ringer.abort();
    }
}

impl Intake {
    pub async fn open(topology: &Topology) -> Result<Self, NatsError> {
        let consumers = topology.work.render_consumers().await?;
        let mut queued = topology
            .client
            .subscribe(names::WORK_SUBJECTS)
            .await
            .map_err(NatsError::unavailable)?;
        let doorbell = Arc::new(Notify::new());
        let ring = doorbell.clone();
        let ringer = tokio::spawn(async move {
            while queued.next().await.is_some() {
                ring.notify_waiters();
            }
        });
        Ok(Intake {
            consumers,
            doorbell,
            ringer,
        })
    }

    /// The next message to work on, or `None` once `shutdown` is cancelled.
    pub async fn next(&self, shutdown: &CancellationToken) -> Option<Message> {
        loop {
            // Armed before looking, so a job queued while we look still
            // wakes us.
            let rung = self.doorbell.notified();
            tokio::pin!(rung);
            rung.as_mut().enable();
            if let Some(message) = self.take().await {
                return Some(message);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = rung => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
            }
        }
    }

    /// One message from the highest non-empty queue.
    async fn take(&self) -> Option<Message> {
        for consumer in &self.consumers {
            let batch = consumer.fetch().max_messages(1).messages().await;
            let mut batch = match batch {
                Ok(batch) => batch,
                Err(err) => {
                    tracing::warn!("work queue: {err}");
                    return None;
                }
            };
            match batch.next().await {
                Some(Ok(message)) => return Some(message),
                Some(Err(err)) => tracing::warn!("work queue: {err}"),
                None => {}
            }
        }
        None
    }
}
