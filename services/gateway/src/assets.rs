//! The asset catalog's read side: look an asset up by id or source URL, and
//! search titles. Assets are made by ingest jobs (render writes the
//! catalog); this only reads it, through the gateway's NATS connection.
//! [`AssetsService`] is the thin `reelmesh.v1.Assets` adapter.

use futures::future::BoxFuture;
use reelmesh_nats::{AssetId, AssetRecord, TenantId};
use reelmesh_proto::v1::{
    self as pb,
    assets_server::{Assets, AssetsServer},
    get_asset_request::By,
};
use reelmesh_runtime::{ApiKeyAuth, Tenant};
use tonic::{Request, Response, Status, service::interceptor::InterceptedService};

use crate::{
    GatewayError, NatsJobs,
    grpc::{media_to_proto, timestamp},
};

pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 500;

/// How an asset is asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum AssetLookup {
    Id(AssetId),
    SourceUrl(String),
}

/// A page of assets in id (creation) order.
#[derive(Debug, Clone)]
pub struct AssetPage {
    pub assets: Vec<AssetRecord>,
    /// The id to continue after; `None` on the last page.
    pub next: Option<AssetId>,
}

/// What the Assets gRPC service asks of the catalog.
pub trait AssetsApi: Send + Sync + 'static {
    fn get(
        &self,
        tenant: TenantId,
        lookup: AssetLookup,
    ) -> BoxFuture<'_, Result<AssetRecord, GatewayError>>;
    fn search(
        &self,
        tenant: TenantId,
        title: String,
        after: Option<AssetId>,
        page_size: usize,
    ) -> BoxFuture<'_, Result<AssetPage, GatewayError>>;
}

impl AssetsApi for NatsJobs {
    fn get(
        &self,
        tenant: TenantId,
        lookup: AssetLookup,
    ) -> BoxFuture<'_, Result<AssetRecord, GatewayError>> {
        Box::pin(async move {
            let catalog = &self.connect().await?.assets;
            let found = match &lookup {
                AssetLookup::Id(id) => catalog.get(&tenant, id).await?,
                AssetLookup::SourceUrl(url) => catalog.by_source_url(&tenant, url).await?,
            };
            found.ok_or_else(|| {
                GatewayError::AssetNotFound(match lookup {
                    AssetLookup::Id(id) => id.to_string(),
                    AssetLookup::SourceUrl(url) => format!("with source_url {url:?}"),
                })
            })
        })
    }

    fn search(
        &self,
        tenant: TenantId,
        title: String,
        after: Option<AssetId>,
        page_size: usize,
    ) -> BoxFuture<'_, Result<AssetPage, GatewayError>> {
        Box::pin(async move {
            let catalog = &self.connect().await?.assets;
            let limit = match page_size {
                0 => DEFAULT_PAGE_SIZE,
                asked => asked.min(MAX_PAGE_SIZE),
            };
            let (assets, more) = catalog
                .search(&tenant, &title, after.as_ref(), limit)
                .await?;
            let next = more
                .then(|| assets.last().map(|asset| asset.id.clone()))
                .flatten();
            Ok(AssetPage { assets, next })
        })
    }
}

#[derive(Debug, Clone)]
pub struct AssetsService<A> {
    api: std::sync::Arc<A>,
}

impl<A: AssetsApi> AssetsService<A> {
    pub fn new(api: A) -> Self {
        AssetsService {
            api: std::sync::Arc::new(api),
        }
    }

    pub fn into_server(
        self,
        auth: ApiKeyAuth,
    ) -> InterceptedService<AssetsServer<Self>, ApiKeyAuth> {
        AssetsServer::with_interceptor(self, auth)
    }
}

#[tonic::async_trait]
impl<A: AssetsApi> Assets for AssetsService<A> {
    async fn get_asset(
        &self,
        request: Request<pb::GetAssetRequest>,
    ) -> Result<Response<pb::Asset>, Status> {
        let tenant = Tenant::of(&request)?;
        let lookup = match request.into_inner().by {
            Some(By::Id(id)) => AssetLookup::Id(asset_id(&id, "id")?),
            Some(By::SourceUrl(url)) => AssetLookup::SourceUrl(url),
            None => {
                return Err(GatewayError::InvalidArgument("set id or source_url".into()).into());
            }
        };
        Ok(Response::new(asset_to_proto(
            self.api.get(tenant, lookup).await?,
        )))
    }

    async fn search_assets(
        &self,
        request: Request<pb::SearchAssetsRequest>,
    ) -> Result<Response<pb::SearchAssetsResponse>, Status> {
        let tenant = Tenant::of(&request)?;
        let request = request.into_inner();
        let after = match request.page_token.as_str() {
            "" => None,
            token => Some(asset_id(token, "page_token")?),
        };
        let page = self
            .api
            .search(tenant, request.title, after, request.page_size as usize)
            .await?;
        Ok(Response::new(pb::SearchAssetsResponse {
            assets: page.assets.into_iter().map(asset_to_proto).collect(),
            next_page_token: page.next.map(String::from).unwrap_or_default(),
        }))
    }
}

fn asset_id(text: &str, field: &str) -> Result<AssetId, GatewayError> {
    AssetId::parse(text).map_err(|why| GatewayError::InvalidArgument(format!("{field}: {why}")))
}

fn asset_to_proto(asset: AssetRecord) -> pb::Asset {
    pb::Asset {
        id: asset.id.into(),
        key: asset.key,
        title: asset.title,
        source_url: asset.source_url.unwrap_or_default(),
        sha256: asset.sha256,
        size_bytes: asset.size_bytes,
        media: Some(media_to_proto(asset.media)),
        created_at: Some(timestamp(asset.created_at)),
    }
}
