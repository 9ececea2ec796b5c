//! reelmesh store: media in and out of one object_store backend.
//!
//! [`MediaStore`] is the storage itself (chosen by URL, keyed per tenant);
//! [`StoreService`] exposes it as the `reelmesh.v1.Store` gRPC service; [`run`]
//! serves that service on its own, for deployments that split it out of the
//! gateway.

pub mod backend;
pub mod config;
pub mod error;
pub mod grpc;
pub mod key;
pub mod links;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use backend::{ByteRange, Expected, Listing, MediaStore, StoredObject};
pub use config::{LinkConfig, StoreConfig, StoreOptions};
pub use error::StoreError;
pub use grpc::StoreService;
pub use key::{KeyError, KeyPrefix, ObjectKey};

/// Serves the Store API on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: StoreConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let store = MediaStore::open(&config.url, &config.options.pairs())?;
    let auth = reelmesh_runtime::ApiKeyAuth::new(&config.api_keys).map_err(anyhow::Error::msg)?;
    let links = config.links.issuer(listener.local_addr()?);
    let (router, health) =
        reelmesh_runtime::grpc::router_with_http(links::routes(store.clone(), links.clone()))?;
    health
        .set_serving::<reelmesh_proto::v1::store_server::StoreServer<StoreService<MediaStore>>>()
        .await;
    let service = StoreService::new(store).with_links(links);
    let router = router.add_service(service.into_server(auth));
    tracing::info!(addr = %listener.local_addr()?, url = %config.url, "store listening");
    reelmesh_runtime::grpc::serve(router, listener, shutdown).await?;
    Ok(())
}
