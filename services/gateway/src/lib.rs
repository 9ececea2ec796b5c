//! reelmesh gateway: the public gRPC front door.
//!
//! Serves `reelmesh.v1.Jobs` (backed by NATS through [`NatsJobs`]),
//! `reelmesh.v1.Assets` (the catalog, read from NATS), `reelmesh.v1.Webhooks`
//! (endpoints and the delivery log, in NATS) and `reelmesh.v1.Store` (the
//! same media store render uses), all behind
//! API-key auth, plus gRPC health and reflection so probes and grpcurl work.

pub mod assets;
pub mod capacity;
pub mod config;
pub mod endpoints;
pub mod error;
pub mod grpc;
pub mod jobs;
pub mod retention;
pub mod unqueued;
pub mod validate;
pub mod webhooks;

use std::time::Duration;

use reelmesh_proto::v1::{
    assets_server::AssetsServer, jobs_server::JobsServer, store_server::StoreServer,
    webhooks_server::WebhooksServer,
};
use reelmesh_store::{MediaStore, StoreService, links};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use assets::AssetsService;
pub use config::GatewayConfig;
pub use error::GatewayError;
pub use grpc::JobsService;
pub use jobs::{JobsApi, NatsJobs};
pub use webhooks::WebhooksService;

/// Serves the gateway on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: GatewayConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let auth = reelmesh_runtime::ApiKeyAuth::new(&config.api_keys).map_err(anyhow::Error::msg)?;
    let jobs = NatsJobs::new(&config.nats_url, config.topology, config.limits);
    let store = MediaStore::open(&config.store_url, &config.store_options.pairs())?;
    let links = config.links.issuer(listener.local_addr()?);
    let (router, health) =
        reelmesh_runtime::grpc::router_with_http(links::routes(store.clone(), links.clone()))?;
    health
        .set_not_serving::<JobsServer<JobsService<NatsJobs>>>()
        .await;
    health
        .set_not_serving::<AssetsServer<AssetsService<NatsJobs>>>()
        .await;
    health
        .set_not_serving::<WebhooksServer<WebhooksService<NatsJobs>>>()
        .await;
    tokio::spawn(connect_in_background(
        jobs.clone(),
        health.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(retention::sweep_until(
        jobs.clone(),
        store.clone(),
        config.retention,
        shutdown.clone(),
    ));
    health
        .set_serving::<StoreServer<StoreService<MediaStore>>>()
        .await;
    let router = router
        .add_service(AssetsService::new(jobs.clone()).into_server(auth.clone()))
        .add_service(WebhooksService::new(jobs.clone()).into_server(auth.clone()))
        .add_service(JobsService::new(jobs).into_server(auth.clone()))
        .add_service(StoreService::new(store).with_links(links).into_server(auth));
    tracing::info!(addr = %listener.local_addr()?, "gateway listening");
    reelmesh_runtime::grpc::serve(router, listener, shutdown).await?;
    Ok(())
}

/// Connects to NATS until it works, so the Jobs service turns SERVING (and
/// a readiness probe passes) as soon as NATS is reachable, without waiting
/// for a call to try. Until then calls answer UNAVAILABLE.
async fn connect_in_background(
    jobs: NatsJobs,
    health: reelmesh_runtime::grpc::HealthReporter,
    shutdown: CancellationToken,
) {
    let mut pause = Duration::from_millis(100);
    loop {
        match jobs.connect().await {
            Ok(_) => {
                health
                    .set_serving::<JobsServer<JobsService<NatsJobs>>>()
                    .await;
                health
                    .set_serving::<AssetsServer<AssetsService<NatsJobs>>>()
                    .await;
                health
                    .set_serving::<WebhooksServer<WebhooksService<NatsJobs>>>()
                    .await;
                tracing::info!("connected to NATS");
                return;
            }
            Err(err) => tracing::warn!("NATS not reachable yet, retrying in {pause:?}: {err}"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}
