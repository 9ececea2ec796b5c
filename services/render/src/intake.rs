//! Where a worker's next jobs come from: the priority queues, highest
//! first, at most one message per free slot.
//!
//! Free slots ask the queues in priority order with no-wait fetches of as
//! many messages as there are free slots, so the worker never holds a
//! message it cannot start (its ack timer would run while another worker sat
//! idle). When every queue is empty it waits on the doorbell: a plain NATS
//! subscription to the work subjects, which rings whenever a job is queued,
//! so new work starts within a round trip rather than a poll interval. The
//! doorbell's subject names the priority, so a queue last found empty is
//! asked again only once it rang: a job then costs one fetch, not one per
//! queue above it. A rung queue found empty is asked again a few
//! milliseconds later (the ring can beat the store). Work naked with a
//! delay rings the bell itself when due ([`IntakeBell`]); every
//! [`FULL_POLL`] all queues are asked anyway, for redeliveries after an
//! ack wait.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::jetstream::{Message, consumer::PullConsumer};
use futures::StreamExt as _;
use reelmesh_nats::{NatsError, Priority, Topology, names};
use tokio::{sync::Notify, task::JoinHandle};
use tokio_util::sync::CancellationToken;

/// How often every queue is asked, rung or not.
const FULL_POLL: Duration = Duration::from_secs(1);

/// A ring can arrive before JetStream has stored the message it announces
/// (a publish reaches plain subscribers as it is stored), so a rung queue
/// found empty is asked again after this instead of a full poll later.
const RING_RECHECK: Duration = Duration::from_millis(5);

/// Rings per queue, counted so a ring that comes while a queue is being
/// asked is never lost.
#[derive(Debug, Default)]
struct Doorbell {
    notify: Notify,
    /// Indexed like [`Priority::ALL`].
    rings: [AtomicU64; 3],
}

impl Doorbell {
    fn ring(&self, priority: Option<Priority>) {
        for (queue, rings) in Priority::ALL.iter().zip(&self.rings) {
            if priority.is_none_or(|p| p == *queue) {
                rings.fetch_add(1, Ordering::AcqRel);
            }
        }
        self.notify.notify_waiters();
    }
}

/// Rings the doorbell later: for work naked with a delay, which comes back
/// without a publish, so the worker asks for it when it is due.
#[derive(Debug, Clone)]
pub struct IntakeBell(Arc<Doorbell>);

impl IntakeBell {
    pub fn ring_after(&self, delay: Duration) {
        let doorbell = self.0.clone();
        tokio::spawn(async move {
            // The server's timer starts when our nak reaches it.
            tokio::time::sleep(delay + Duration::from_millis(2)).await;
            doorbell.ring(None);
        });
    }
}

#[derive(Debug)]
pub struct Intake {
    /// Highest priority first, like [`Priority::ALL`].
    consumers: Vec<PullConsumer>,
    doorbell: Arc<Doorbell>,
    /// Per queue, the ring count when it was last found empty.
    emptied_at: [Option<u64>; 3],
    last_full_poll: Instant,
    /// A rung queue was empty: ask every queue again after [`RING_RECHECK`].
    recheck: bool,
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
        let doorbell = Arc::new(Doorbell::default());
        let ring = doorbell.clone();
        let ringer = tokio::spawn(async move {
            while let Some(message) = queued.next().await {
                ring.ring(names::work_subject_priority(message.subject.as_str()));
            }
        });
        Ok(Intake {
            consumers,
            doorbell,
            emptied_at: [None; 3],
            last_full_poll: Instant::now(),
            recheck: false,
            ringer,
        })
    }

    pub fn bell(&self) -> IntakeBell {
        IntakeBell(self.doorbell.clone())
    }

    /// Between one and `free` messages to work on, or none once `shutdown`
    /// is cancelled.
    pub async fn next(&mut self, shutdown: &CancellationToken, free: usize) -> Vec<Message> {
        loop {
            // Armed before looking, so a job queued while we look still
            // wakes us.
            let doorbell = self.doorbell.clone();
            let rung = doorbell.notify.notified();
            tokio::pin!(rung);
            rung.as_mut().enable();
            let messages = self.take(free.max(1)).await;
            if !messages.is_empty() {
                return messages;
            }
            let wait = if self.recheck {
                RING_RECHECK
            } else {
                FULL_POLL
            };
            tokio::select! {
                _ = shutdown.cancelled() => return Vec::new(),
                _ = rung => {}
                _ = tokio::time::sleep(wait) => {
                    if std::mem::take(&mut self.recheck) {
                        // Due now: the next take asks every queue.
                        self.last_full_poll = Instant::now() - FULL_POLL;
                    }
                }
            }
        }
    }

    /// Up to `want` messages, from the highest queues that may hold any.
    async fn take(&mut self, want: usize) -> Vec<Message> {
        let full = self.last_full_poll.elapsed() >= FULL_POLL;
        if full {
            self.last_full_poll = Instant::now();
        }
        let mut taken = Vec::new();
        for queue in 0..self.consumers.len() {
            let rings = self.doorbell.rings[queue].load(Ordering::Acquire);
            if taken.len() == want || (!full && self.emptied_at[queue] == Some(rings)) {
                continue;
            }
            let asked = want - taken.len();
            let (messages, answered) = fetch(&self.consumers[queue], asked).await;
            if answered && messages.len() < asked {
                if messages.is_empty() && !full {
                    // Rung, yet empty: the message may not be stored yet.
                    self.recheck = true;
                }
                // Empty now; only a ring after `rings` can change that.
                self.emptied_at[queue] = Some(rings);
            }
            taken.extend(messages);
        }
        if !taken.is_empty() {
            self.recheck = false;
        }
        taken
    }
}

/// A no-wait fetch of up to `max` messages, and whether the queue answered
/// in full (no error cut the fetch short).
async fn fetch(consumer: &PullConsumer, max: usize) -> (Vec<Message>, bool) {
    let mut messages = Vec::new();
    let mut batch = match consumer.fetch().max_messages(max).messages().await {
        Ok(batch) => batch,
        Err(err) => {
            tracing::warn!("work queue: {err}");
            return (messages, false);
        }
    };
    while let Some(message) = batch.next().await {
        match message {
            Ok(message) => messages.push(message),
            Err(err) => {
                tracing::warn!("work queue: {err}");
                return (messages, false);
            }
        }
    }
    (messages, true)
}
