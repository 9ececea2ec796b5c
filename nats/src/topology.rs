//! Creates (or updates) every stream, consumer and bucket reelmesh needs.
//!
//! Each service calls [`Topology::connect`] at start-up; the definitions are
//! idempotent, so any service may be first and none needs a separate setup step.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, PriorityPolicy, pull},
    kv,
    stream::{self, RetentionPolicy, StorageType},
};
use serde::{Deserialize, Serialize};

use crate::{
    AssetCatalog, DeliveryLog, EndpointStore, EventLog, IdempotencyKeys, JobRecords, NatsError,
    RunningSlots, WorkQueue, names,
};

/// Tunables of the topology; the defaults suit production and tests alike.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TopologyConfig {
    /// How long events (and so a job's replayable history) are kept.
    #[serde(with = "humantime_secs")]
    pub event_retention: Duration,
    /// How long a worker may go without acking or signalling progress before
    /// its job is handed to another worker.
    #[serde(with = "humantime_secs")]
    pub work_ack_wait: Duration,
    /// How long a submit's idempotency key keeps returning the same job.
    #[serde(with = "humantime_secs")]
    pub idempotency_window: Duration,
    /// How long notify may hold a webhook task without answering before it
    /// is handed to another sender; longer than a webhook request may take.
    #[serde(with = "humantime_secs")]
    pub webhook_ack_wait: Duration,
    /// Keep everything in memory instead of files (tests that want speed only).
    pub in_memory: bool,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        TopologyConfig {
            event_retention: Duration::from_secs(30 * 24 * 3600),
            work_ack_wait: Duration::from_secs(30),
            idempotency_window: Duration::from_secs(24 * 3600),
            webhook_ack_wait: Duration::from_secs(60),
            in_memory: false,
        }
    }
}

/// Durations in config files are whole seconds.
mod humantime_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(value.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

/// Unlimited: notify counts attempts against its own retry schedule and
/// ends the message itself when the schedule runs out.
pub const NOTIFY_MAX_DELIVER: i64 = -1;

/// How long every stream remembers message ids: a message sent again
/// (same id) within it is stored once.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The priority group notify's router pulls events in.
pub const NOTIFY_ROUTER_GROUP: &str = "router";
/// How long the pinned router may go without pulling before another notify
/// process routes instead.
pub const NOTIFY_ROUTER_FAILOVER: Duration = Duration::from_secs(20);
/// How long an event the router pulled may go unacknowledged before it is
/// delivered again: well under [`NOTIFY_ROUTER_FAILOVER`]. Acknowledging
/// one event acknowledges all before it, so when a router dies holding
/// events, they must be due again by the time another takes over: then they
/// come to it before new ones (redeliveries go first), instead of being
/// acknowledged, unrouted, by its first acknowledgement of a newer event.
pub const NOTIFY_ROUTER_ACK_WAIT: Duration = Duration::from_secs(10);

/// Webhooks notify may hold unacknowledged at once: unlimited. Each one
/// waiting for a retry, or for an earlier webhook of its job, is one, and
/// the consumer is shared by every tenant: under any cap, one receiver down
/// for hours would in time stall everyone else's webhooks. Senders take
/// only what they can send, so the cap bounds nothing else.
pub const NOTIFY_MAX_ACK_PENDING: i64 = -1;

/// Handles on everything in NATS a service works with.
#[derive(Debug, Clone)]
pub struct Topology {
    pub client: async_nats::Client,
    pub jobs: JobRecords,
    pub events: EventLog,
    pub work: WorkQueue,
    pub idempotency: IdempotencyKeys,
    pub assets: AssetCatalog,
    pub deliveries: DeliveryLog,
    pub endpoints: EndpointStore,
    config: TopologyConfig,
    pub running: RunningSlots,
}

impl Topology {
    /// Connects to NATS and makes sure every stream, consumer and bucket exists.
    pub async fn connect(url: &str, config: &TopologyConfig) -> Result<Self, NatsError> {
        Self::connect_as(url, config, "reelmesh").await
    }

    /// [`Topology::connect`], with the connection named after the service
    /// (`reelmesh-gateway`, ...), which is how nats-server's monitoring
    /// (`/connz`) tells operators whose connection is whose.
    pub async fn connect_as(
        url: &str,
        config: &TopologyConfig,
        client: &str,
    ) -> Result<Self, NatsError> {
        let client = async_nats::ConnectOptions::new()
            .name(client)
            .connect(url)
            .await
            .map_err(|err| NatsError::Unavailable(format!("{url}: {err}")))?;
        Self::ensure(client, config).await
    }

    pub async fn ensure(
        client: async_nats::Client,
        config: &TopologyConfig,
    ) -> Result<Self, NatsError> {
        let js = jetstream::new(client.clone());
        let storage = if config.in_memory {
            StorageType::Memory
        } else {
            StorageType::File
        };
        let kv = bucket(
            &js,
            storage,
            kv::Config {
                bucket: names::JOBS_BUCKET.into(),
                description: "reelmesh job records, keyed <tenant>.<job id>".into(),
                history: 5,
                ..Default::default()
            },
        )
        .await?;
        let idempotency = bucket(
            &js,
            storage,
            kv::Config {
                bucket: names::IDEMPOTENCY_BUCKET.into(),
                description: "reelmesh idempotency keys -> job ids".into(),
                max_age: config.idempotency_window,
                ..Default::default()
            },
        )
        .await?;
        let assets = bucket(
            &js,
            storage,
            kv::Config {
                bucket: names::ASSETS_BUCKET.into(),
                description: "reelmesh asset catalog and its url/sha256 indexes".into(),
                ..Default::default()
            },
        )
        .await?;
        let deliveries = bucket(
            &js,
            storage,
            kv::Config {
                bucket: names::DELIVERIES_BUCKET.into(),
                description: "reelmesh webhook deliveries and their attempts".into(),
                // Kept as long as the events they deliver.
                max_age: config.event_retention,
                ..Default::default()
            },
        )
        .await?;
        let running = bucket(
            &js,
            storage,
            kv::Config {
                bucket: names::RUNNING_BUCKET.into(),
                description: "reelmesh running slots: <tenant>.<index> -> job id".into(),
                ..Default::default()
            },
        )
        .await?;
        declare_stream(
            &js,
            storage,
            stream::Config {
                name: names::WORK_STREAM.into(),
                description: Some("reelmesh jobs waiting for a render worker".into()),
                subjects: vec![names::WORK_SUBJECTS.into()],
                retention: RetentionPolicy::WorkQueue,
                ..Default::default()
            },
        )
        .await?;
        let endpoints = bucket(
            &js,
            storage,
            kv::Config {
                bucket: names::ENDPOINTS_BUCKET.into(),
                description: "reelmesh webhook endpoints of each tenant".into(),
                history: 5,
                ..Default::default()
            },
        )
        .await?;
        declare_stream(
            &js,
            storage,
            stream::Config {
                name: names::WEBHOOK_STREAM.into(),
                description: Some("reelmesh webhooks waiting to be sent".into()),
                subjects: vec![names::WEBHOOK_SUBJECTS.into()],
                retention: RetentionPolicy::WorkQueue,
                max_age: config.event_retention,
                ..Default::default()
            },
        )
        .await?;
        declare_stream(
            &js,
            storage,
            stream::Config {
                name: names::EVENTS_STREAM.into(),
                description: Some("reelmesh job events, per job subject".into()),
                subjects: vec![names::EVENTS_SUBJECTS.into()],
                retention: RetentionPolicy::Limits,
                max_age: config.event_retention,
                ..Default::default()
            },
        )
        .await?;
        let jobs = JobRecords::new(kv, js.clone());
        Ok(Topology {
            client,
            running: RunningSlots::new(running, jobs.clone()),
            jobs,
            idempotency: IdempotencyKeys::new(idempotency),
            assets: AssetCatalog::new(assets),
            deliveries: DeliveryLog::new(deliveries, js.clone()),
            endpoints: EndpointStore::new(endpoints, js.clone()),
            events: EventLog::new(js.clone()),
            work: WorkQueue::new(js, render_consumer_config(config)),
            config: config.clone(),
        })
    }

    /// The durable consumer of the events notify queues webhooks for: the
    /// event kinds named in `kinds` (see [`Topology::route_event_kinds`]).
    /// Acknowledging one acknowledges all before it: notify reads events in
    /// order and acknowledges in batches. Only one notify process routes at
    /// a time (the one pinned to [`NOTIFY_ROUTER_GROUP`]); another takes
    /// over when it stops pulling for [`NOTIFY_ROUTER_FAILOVER`].
    ///
    /// Made the first time where earlier releases ran, it starts after the
    /// last event their consumer acknowledged, so no webhook goes twice.
    pub async fn notify_events_consumer(
        &self,
        kinds: &[&str],
    ) -> Result<jetstream::consumer::PullConsumer, NatsError> {
        let events = jetstream::new(self.client.clone())
            .get_stream(names::EVENTS_STREAM)
            .await
            .map_err(NatsError::unavailable)?;
        let deliver_policy = match events.consumer_info(names::LEGACY_NOTIFY_CONSUMER).await {
            Ok(legacy) => DeliverPolicy::ByStartSequence {
                start_sequence: legacy.ack_floor.stream_sequence + 1,
            },
            Err(_) => DeliverPolicy::All,
        };
        let consumer = self
            .notify_pull(
                names::EVENTS_STREAM,
                notify_events_config(deliver_policy, kinds),
            )
            .await?;
        self.retire_legacy_notify().await?;
        Ok(consumer)
    }

    /// Makes notify's event consumer take the event kinds in `kinds` and no
    /// others, so events no endpoint or callback can want never reach
    /// notify. Its place in the stream is kept: events of a kind added here
    /// that it already passed are not delivered (see notify's routing).
    pub async fn route_event_kinds(&self, kinds: &[&str]) -> Result<(), NatsError> {
        let config = notify_events_config(DeliverPolicy::All, kinds);
        self.notify_pull(names::EVENTS_STREAM, config).await?;
        Ok(())
    }

    /// The durable consumer of the webhook queue notify's senders share.
    pub async fn notify_send_consumer(
        &self,
    ) -> Result<jetstream::consumer::PullConsumer, NatsError> {
        self.notify_pull(
            names::WEBHOOK_STREAM,
            pull::Config {
                durable_name: Some(names::NOTIFY_SEND_CONSUMER.into()),
                description: Some("webhooks to send".into()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: self.config.webhook_ack_wait,
                max_deliver: NOTIFY_MAX_DELIVER,
                max_ack_pending: NOTIFY_MAX_ACK_PENDING,
                ..Default::default()
            },
        )
        .await
    }

    /// Earlier releases sent webhooks from a consumer of terminal events and
    /// a redelivery stream; both are replaced (and would otherwise keep
    /// state for nobody).
    async fn retire_legacy_notify(&self) -> Result<(), NatsError> {
        let js = jetstream::new(self.client.clone());
        let events = js
            .get_stream(names::EVENTS_STREAM)
            .await
            .map_err(NatsError::unavailable)?;
        if events
            .consumer_info(names::LEGACY_NOTIFY_CONSUMER)
            .await
            .is_ok()
        {
            let _ = events.delete_consumer(names::LEGACY_NOTIFY_CONSUMER).await;
        }
        if js.get_stream(names::LEGACY_REDELIVERY_STREAM).await.is_ok() {
            let _ = js.delete_stream(names::LEGACY_REDELIVERY_STREAM).await;
        }
        Ok(())
    }

    /// Declares one of notify's consumers as this release configures it,
    /// updating one an earlier release made, so a changed ack wait or cap
    /// takes effect where notify already ran. Where a consumer starts
    /// reading is set once, when it is made, and is kept.
    async fn notify_pull(
        &self,
        stream: &str,
        mut config: pull::Config,
    ) -> Result<jetstream::consumer::PullConsumer, NatsError> {
        let name = config.durable_name.clone().unwrap_or_default();
        let stream = jetstream::new(self.client.clone())
            .get_stream(stream)
            .await
            .map_err(NatsError::unavailable)?;
        if let Ok(existing) = stream.consumer_info(&name).await {
            config.deliver_policy = existing.config.deliver_policy;
        }
        stream
            .create_consumer(config)
            .await
            .map_err(NatsError::unavailable)
    }
}

/// Notify's event consumer (see [`Topology::notify_events_consumer`])
/// taking the event kinds in `kinds`.
fn notify_events_config(deliver_policy: DeliverPolicy, kinds: &[&str]) -> pull::Config {
    pull::Config {
        durable_name: Some(names::NOTIFY_EVENTS_CONSUMER.into()),
        description: Some("job events to route to webhooks".into()),
        deliver_policy,
        ack_policy: AckPolicy::All,
        ack_wait: NOTIFY_ROUTER_ACK_WAIT,
        priority_policy: PriorityPolicy::PinnedClient,
        priority_groups: vec![NOTIFY_ROUTER_GROUP.into()],
        priority_timeout: NOTIFY_ROUTER_FAILOVER,
        filter_subjects: kinds
            .iter()
            .map(|kind| names::kind_events_filter(kind))
            .collect(),
        ..Default::default()
    }
}

/// Declares a bucket (create or update) on the topology's storage.
async fn bucket(
    js: &jetstream::Context,
    storage: StorageType,
    config: kv::Config,
) -> Result<kv::Store, NatsError> {
    js.create_or_update_key_value(kv::Config { storage, ..config })
        .await
        .map_err(NatsError::unavailable)
}

/// Declares a stream (create or update) on the topology's storage, with the
/// [`DUPLICATE_WINDOW`] every reelmesh stream's message ids rely on.
async fn declare_stream(
    js: &jetstream::Context,
    storage: StorageType,
    config: stream::Config,
) -> Result<(), NatsError> {
    let config = stream::Config {
        storage,
        duplicate_window: DUPLICATE_WINDOW,
        ..config
    };
    js.create_or_update_stream(config)
        .await
        .map_err(NatsError::unavailable)?;
    Ok(())
}

fn render_consumer_config(config: &TopologyConfig) -> pull::Config {
    pull::Config {
        description: Some("render workers".into()),
        ack_policy: AckPolicy::Explicit,
        ack_wait: config.work_ack_wait,
        // Unlimited: attempts are counted on the job record, which fails
        // the job when they run out (see `JobRecord::begin_attempt`).
        max_deliver: -1,
        // Unlimited: work naked with a delay (a retry's backoff, a tenant
        // at its running limit) stays ack-pending until it comes back, and
        // at the default cap of 1000 such messages the queue would deliver
        // nothing new, so one tenant's waiting jobs would stall the others'.
        // Workers fetch only what they can start, so this bounds nothing else.
        max_ack_pending: -1,
        ..Default::default()
    }
}
