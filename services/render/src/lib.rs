//! reelmesh render: workers that turn queued jobs into media.
//!
//! A worker pulls work items from JetStream, plans the job ([`plan`]), runs
//! it as a GStreamer pipeline ([`media`]) and writes the result to the store.
//! It also serves gRPC health so orchestrators can probe it.

pub mod config;
pub mod engine;
pub mod error;
pub mod input;
pub mod intake;
pub mod media;
pub mod plan;
pub mod worker;

use std::time::Duration;

use reelmesh_nats::Topology;
use reelmesh_store::MediaStore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::RenderConfig;
pub use error::RenderError;
pub use worker::RenderWorker;

/// Renders jobs and serves gRPC health until `shutdown` is cancelled.
pub async fn run(
    config: RenderConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    media::init()?;
    let topology =
        Topology::connect_as(&config.nats_url, &config.topology, "reelmesh-render").await?;
    let store = MediaStore::open(&config.store_url, &config.store_options.pairs())?;
    let intake = intake::Intake::open(&topology).await?;
    let server = reelmesh_runtime::grpc::spawn_health_server(listener, shutdown.clone()).await?;
    tracing::info!(
        concurrency = config.concurrency,
        "render worker pulling jobs"
    );
    let client = topology.client.clone();
    RenderWorker::new(topology, store, config)?
        .run(intake, shutdown)
        .await;
    // The last acks and naks (a drain's hand-backs) are only queued in the
    // client; sent before the process exits, a handed-back job goes to the
    // next worker at once rather than after the ack wait. Bounded, as NATS
    // may be what is down.
    let flushed = tokio::time::timeout(Duration::from_secs(5), client.flush()).await;
    if !matches!(flushed, Ok(Ok(()))) {
        tracing::warn!("last acks not confirmed sent; their jobs come back after the ack wait");
    }
    server.await??;
    Ok(())
}
