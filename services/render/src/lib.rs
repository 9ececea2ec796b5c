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
    RenderWorker::new(topology, store, config)?
        .run(intake, shutdown)
        .await;
    server.await??;
    Ok(())
}
