//! Test harness for reelmesh's integration tests.
//!
//! [`TestCluster`] runs the real services in-process against a real
//! nats-server on a free port with its own store directory (both removed on
//! drop), on a memory store or any store URL ([`TestCluster::start_on`]);
//! [`emulators`] runs S3 and Azure emulators to point it at;
//! [`WebhookReceiver`] is a real HTTP server that records what it is
//! sent; [`media_server::MediaServer`] serves media to URL inputs;
//! [`clips`] generates media with GStreamer test sources and
//! [`packets`] reads their encoded packets back.

pub mod clips;
pub mod emulators;
pub mod media_server;
pub mod packets;
pub mod webhook;
pub mod worker;

use std::sync::atomic::{AtomicU64, Ordering};

use reelmesh_cli::{ClusterConfig, DevCluster, ReelmeshClient};
use reelmesh_nats::{names, server::NatsServer};
use reelmesh_runtime::ApiKeys;
use reelmesh_store::{MediaStore, StoreOptions};

pub use webhook::{ReceivedWebhook, WebhookReceiver, delivery_when, verify_signature};

/// A job that renders nothing and takes `seconds` (reporting progress
/// meanwhile): the job path without media.
pub fn noop(seconds: f64) -> reelmesh_proto::v1::JobSpec {
    use reelmesh_proto::v1::{Noop, job_spec::Operation};
    reelmesh_proto::v1::JobSpec {
        operation: Some(Operation::Noop(Noop {
            seconds,
            fail_attempts: 0,
        })),
        ..Default::default()
    }
}

/// Waits for the job's first `started` event.
pub async fn started(client: &mut ReelmeshClient, id: &str) -> anyhow::Result<()> {
    attempt_started(client, id, 1).await
}

/// Waits for the job's `nth` `started` event (its `nth` attempt, when none
/// is handed back), each within 30 s.
pub async fn attempt_started(
    client: &mut ReelmeshClient,
    id: &str,
    nth: usize,
) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    use reelmesh_proto::v1::job_event::Kind;
    let mut events = client.watch(id).await?;
    let mut seen = 0;
    while seen < nth {
        let next = tokio::time::timeout(std::time::Duration::from_secs(30), events.next());
        let Some(event) = next.await? else {
            anyhow::bail!("the watch of {id} ended before start {nth}");
        };
        if matches!(event?.kind, Some(Kind::Started(_))) {
            seen += 1;
        }
    }
    Ok(())
}

/// An event's type as a short name ("queued", "started", ...), for
/// asserting on a job's history.
pub fn event_kind_name(event: &reelmesh_proto::v1::JobEvent) -> &'static str {
    use reelmesh_proto::v1::job_event::Kind;
    match event.kind {
        Some(Kind::Queued(_)) => "queued",
        Some(Kind::Started(_)) => "started",
        Some(Kind::Progress(_)) => "progress",
        Some(Kind::Completed(_)) => "completed",
        Some(Kind::Failed(_)) => "failed",
        Some(Kind::Cancelled(_)) => "cancelled",
        Some(Kind::Retrying(_)) => "retrying",
        None => "none",
    }
}

/// A job id made `age` ago, as a submit that long ago would have made it.
pub fn job_id_made(age: std::time::Duration) -> anyhow::Result<reelmesh_nats::JobId> {
    let since = (std::time::SystemTime::now() - age).duration_since(std::time::UNIX_EPOCH)?;
    let at = uuid::Timestamp::from_unix(uuid::NoContext, since.as_secs(), since.subsec_nanos());
    reelmesh_nats::JobId::parse(&uuid::Uuid::new_v7(at).simple().to_string())
        .map_err(anyhow::Error::msg)
}

/// How many messages the job-record bucket's stream holds under a job's
/// key: its values and any delete or purge marker.
pub async fn messages_under_job_key(
    client: &async_nats::Client,
    tenant: &reelmesh_nats::TenantId,
    job: &reelmesh_nats::JobId,
) -> anyhow::Result<u64> {
    use futures::StreamExt as _;
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(names::kv_stream(names::JOBS_BUCKET)).await?;
    let subject = names::kv_subject(names::JOBS_BUCKET, &names::job_key(tenant, job));
    let mut subjects = stream.info_with_subjects(subject).await?;
    let mut total = 0;
    while let Some(entry) = subjects.next().await {
        total += entry?.1 as u64;
    }
    Ok(total)
}

/// API keys of the two tenants every test cluster knows.
pub const KEY_A: &str = "key-tenant-a";
pub const KEY_B: &str = "key-tenant-b";

#[derive(Debug)]
pub struct TestCluster {
    pub cluster: DevCluster,
    pub store_url: String,
    pub store_options: StoreOptions,
    /// The file store's directory when workers run as processes.
    _store_dir: Option<tempfile::TempDir>,
}

impl TestCluster {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// Starts a cluster after letting the test adjust its config.
    pub async fn start_with(adjust: impl FnOnce(&mut ClusterConfig)) -> anyhow::Result<Self> {
        Self::start_on(&unique_memory_store(), StoreOptions::default(), adjust).await
    }

    /// Starts a cluster whose services all store media at `store_url`,
    /// reached with `store_options`.
    pub async fn start_on(
        store_url: &str,
        store_options: StoreOptions,
        adjust: impl FnOnce(&mut ClusterConfig),
    ) -> anyhow::Result<Self> {
        init_test_logging();
        let nats = NatsServer::start_temporary()?;
        let mut config =
            ClusterConfig::ephemeral(store_url).with_store_options(store_options.clone());
        config.gateway.api_keys = test_api_keys();
        // Webhook retries within a test's patience, to receivers on loopback.
        config.notify.retry_schedule_secs = vec![1, 1, 2, 2];
        config.notify.egress.allow = vec!["127.0.0.1".into()];
        // Retries within a test's patience.
        config.render.retry.base_ms = 50;
        config.render.retry.max_ms = 200;
        adjust(&mut config);
        let cluster = DevCluster::start(nats, config).await?;
        Ok(TestCluster {
            cluster,
            store_url: store_url.to_string(),
            store_options,
            _store_dir: None,
        })
    }

    /// A cluster without an in-process render worker: the test starts
    /// workers as processes ([`worker::WorkerProcess`]). The store is a
    /// directory, since processes cannot share a memory store.
    pub async fn start_without_render(
        adjust: impl FnOnce(&mut ClusterConfig),
    ) -> anyhow::Result<Self> {
        init_test_logging();
        let dir = tempfile::tempdir()?;
        let store_url = format!("file://{}", dir.path().display());
        let mut config = ClusterConfig::ephemeral(&store_url);
        config.gateway.api_keys = test_api_keys();
        config.render_elsewhere = true;
        adjust(&mut config);
        let nats = NatsServer::start_temporary()?;
        let cluster = DevCluster::start(nats, config).await?;
        Ok(TestCluster {
            cluster,
            store_url,
            store_options: StoreOptions::default(),
            _store_dir: Some(dir),
        })
    }

    /// The cluster's store, opened directly (as a render worker does).
    pub fn open_store(&self) -> anyhow::Result<MediaStore> {
        Ok(MediaStore::open(
            &self.store_url,
            &self.store_options.pairs(),
        )?)
    }

    pub async fn client(&self, api_key: &str) -> anyhow::Result<ReelmeshClient> {
        ReelmeshClient::connect(&self.cluster.endpoint(), api_key).await
    }

    /// Waits until no work item is queued or held by a worker, i.e. every
    /// job handed to render has been finished with.
    pub async fn wait_until_work_settled(&self) -> anyhow::Result<()> {
        let client = async_nats::connect(self.cluster.nats.url()).await?;
        let js = async_nats::jetstream::new(client);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            // A work-queue stream keeps a message until a worker acks it.
            let mut stream = js.get_stream(names::WORK_STREAM).await?;
            let left = stream.info().await?.state.messages;
            if left == 0 {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "work did not settle: {left} items left"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    pub fn gateway_addr(&self) -> std::net::SocketAddr {
        self.cluster.gateway_addr
    }
}

fn test_api_keys() -> ApiKeys {
    ApiKeys(
        [(KEY_A, "tenant-a"), (KEY_B, "tenant-b")]
            .into_iter()
            .map(|(key, tenant)| (key.to_string(), tenant.to_string()))
            .collect(),
    )
}

/// The in-memory store is shared by name within the process; a name per
/// cluster keeps tests in one binary apart.
fn unique_memory_store() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "memory://test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Service logs go through the test harness's capture, so a failing test
/// shows what the services did (`RUST_LOG` adjusts the level).
fn init_test_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
