//! The `reelmesh.v1.Store` gRPC service: a thin adapter from the wire to
//! [`StoreApi`]. Framing rules (header first, then chunks) are checked here;
//! everything else is the store's business.

use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt as _, stream::BoxStream};
use object_store::signer::Method;
use reelmesh_nats::TenantId;
use reelmesh_proto::v1::{
    DeleteRequest, DeleteResponse, DownloadChunk, DownloadRequest, ListRequest, ListResponse,
    ObjectInfo, SignedUrlMethod, SignedUrlRequest, SignedUrlResponse, StatRequest, UploadRequest,
    store_server::{Store, StoreServer},
    upload_request::Part,
};
use reelmesh_runtime::{ApiKeyAuth, Tenant};
use tonic::{Request, Response, Status, Streaming, service::interceptor::InterceptedService};

use crate::{
    ByteRange, Expected, KeyPrefix, Listing, MediaStore, ObjectKey, StoreError, StoredObject,
    links::{LinkIssuer, LinkMethod},
};

/// Chunks sent by Download: large enough to keep per-message overhead low,
/// far below gRPC's default 4 MiB message limit.
const DOWNLOAD_CHUNK: usize = 256 * 1024;

/// The store operations the gRPC service needs, so the adapter can be
/// tested against any implementation.
pub trait StoreApi: Send + Sync + 'static {
    fn upload(
        &self,
        tenant: &TenantId,
        key: &ObjectKey,
        expected: Expected,
        chunks: BoxStream<'static, Result<Bytes, StoreError>>,
    ) -> impl Future<Output = Result<StoredObject, StoreError>> + Send;
    fn download(
        &self,
        tenant: &TenantId,
        key: &ObjectKey,
        range: ByteRange,
    ) -> impl Future<Output = Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError>> + Send;
    fn stat(
        &self,
        tenant: &TenantId,
        key: &ObjectKey,
    ) -> impl Future<Output = Result<StoredObject, StoreError>> + Send;
    fn list(
        &self,
        tenant: &TenantId,
        prefix: &KeyPrefix,
        after: Option<&ObjectKey>,
        limit: usize,
    ) -> impl Future<Output = Result<Listing, StoreError>> + Send;
    /// Removes the object; NotFound when there is none.
    fn delete(
        &self,
        tenant: &TenantId,
        key: &ObjectKey,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// A URL presigned by the backend, or `None` if it cannot sign.
    fn presigned_url(
        &self,
        tenant: &TenantId,
        key: &ObjectKey,
        method: LinkMethod,
        expires_in: Duration,
    ) -> impl Future<Output = Result<Option<url::Url>, StoreError>> + Send;
}

impl StoreApi for MediaStore {
    async fn upload(
        &self,
        tenant: &TenantId,
        key: &ObjectKey,
        expected: Expected,
        chunks: BoxStream<'static, Result<Bytes, StoreError>>,
    ) -> Result<StoredObject, StoreError> {
        MediaStore::upload(self, tenant, key, expected, chunks).await
    }

    async fn download(
        &self,
        tenant: &TenantId,
        key: &ObjectKey,
        range: ByteRange,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        MediaStore::download_range(self, tenant, key, range).await
    }

    async fn stat(&self, tenant: &TenantId, key: &ObjectKey) -> Result<StoredObject, StoreError> {
        MediaStore::stat(self, tenant, key).await
    }

    async fn list(
        &self,
        tenant: &TenantId,
        prefix: &KeyPrefix,
        after: Option<&ObjectKey>,
        limit: usize,
    ) -> Result<Listing, StoreError> {
        MediaStore::list(self, tenant, prefix, after, limit).await
    }

    async fn delete(&self, tenant: &TenantId, key: &ObjectKey) -> Result<(), StoreError> {
        // Backends delete a missing object silently; the API says so.
        MediaStore::stat(self, tenant, key).await?;
        MediaStore::delete(self, tenant, key).await
    }

    async fn presigned_url(
        &self,
        tenant: &TenantId,
        key: &ObjectKey,
        method: LinkMethod,
        expires_in: Duration,
    ) -> Result<Option<url::Url>, StoreError> {
        let method = match method {
            LinkMethod::Get => Method::GET,
            LinkMethod::Put => Method::PUT,
        };
        MediaStore::presigned_url(self, tenant, key, method, expires_in).await
    }
}

#[derive(Debug, Clone)]
pub struct StoreService<A> {
    api: std::sync::Arc<A>,
    /// Signs links for backends that cannot presign.
    links: Option<LinkIssuer>,
}

impl<A: StoreApi> StoreService<A> {
    pub fn new(api: A) -> Self {
        StoreService {
            api: std::sync::Arc::new(api),
            links: None,
        }
    }

    /// Lets SignedUrl answer for file:// and memory:// stores with links
    /// this service serves (see [`crate::links::routes`]).
    pub fn with_links(mut self, links: LinkIssuer) -> Self {
        self.links = Some(links);
        self
    }

    /// The service wrapped in API-key auth, ready to mount on a router.
    pub fn into_server(
        self,
        auth: ApiKeyAuth,
    ) -> InterceptedService<StoreServer<Self>, ApiKeyAuth> {
        StoreServer::with_interceptor(self, auth)
    }
}

#[tonic::async_trait]
impl<A: StoreApi> Store for StoreService<A> {
    async fn upload(
        &self,
        request: Request<Streaming<UploadRequest>>,
    ) -> Result<Response<ObjectInfo>, Status> {
        let tenant = Tenant::of(&request)?;
        let mut messages = request.into_inner();
        let header = match messages.message().await? {
            Some(UploadRequest {
                part: Some(Part::Header(header)),
            }) => header,
            _ => {
                return Err(StoreError::InvalidArgument(
                    "the first Upload message must be a header".into(),
                )
                .into());
            }
        };
        let key = ObjectKey::parse(&header.key).map_err(StoreError::from)?;
        let expected = Expected {
            size_bytes: header.size_bytes,
            sha256: Some(header.sha256).filter(|sha| !sha.is_empty()),
        };
        let chunks = messages
            .map(|message| match message {
                Ok(UploadRequest {
                    part: Some(Part::Chunk(chunk)),
                }) => Ok(chunk),
                Ok(_) => Err(StoreError::InvalidArgument(
                    "after the header every Upload message must be a chunk".into(),
                )),
                Err(status) => Err(StoreError::InvalidArgument(format!(
                    "upload stream broke: {}",
                    status.message()
                ))),
            })
            .boxed();
        let stored = self.api.upload(&tenant, &key, expected, chunks).await?;
        Ok(Response::new(object_info(stored)))
    }

    type DownloadStream = BoxStream<'static, Result<DownloadChunk, Status>>;

    async fn download(
        &self,
        request: Request<DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        let tenant = Tenant::of(&request)?;
        let request = request.into_inner();
        let key = ObjectKey::parse(&request.key).map_err(StoreError::from)?;
        let range = ByteRange {
            offset: request.offset,
            length: request.length,
        };
        let chunks = self.api.download(&tenant, &key, range).await?;
        let messages = coalesce(chunks, DOWNLOAD_CHUNK).map(|chunk| {
            chunk
                .map(|data| DownloadChunk { data })
                .map_err(Status::from)
        });
        Ok(Response::new(messages.boxed()))
    }

    async fn stat(&self, request: Request<StatRequest>) -> Result<Response<ObjectInfo>, Status> {
        let tenant = Tenant::of(&request)?;
        let key = ObjectKey::parse(&request.get_ref().key).map_err(StoreError::from)?;
        let stored = self.api.stat(&tenant, &key).await?;
        Ok(Response::new(object_info(stored)))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let tenant = Tenant::of(&request)?;
        let request = request.into_inner();
        let prefix = KeyPrefix::parse(&request.prefix).map_err(StoreError::from)?;
        let after = page_start(&request.page_token, &prefix)?;
        let limit = match request.page_size {
            0 => DEFAULT_PAGE,
            asked => (asked as usize).min(MAX_PAGE),
        };
        let listing = self
            .api
            .list(&tenant, &prefix, after.as_ref(), limit)
            .await?;
        let next_page_token = match (listing.more, listing.objects.last()) {
            (true, Some(last)) => hex::encode(&last.key),
            _ => String::new(),
        };
        Ok(Response::new(ListResponse {
            objects: listing.objects.into_iter().map(object_info).collect(),
            next_page_token,
        }))
    }

    async fn signed_url(
        &self,
        request: Request<SignedUrlRequest>,
    ) -> Result<Response<SignedUrlResponse>, Status> {
        let tenant = Tenant::of(&request)?;
        let request = request.into_inner();
        let key = ObjectKey::parse(&request.key).map_err(StoreError::from)?;
        let expires_in = link_lifetime(request.expires_in_seconds)?;
        let method = match request.method() {
            SignedUrlMethod::Get => LinkMethod::Get,
            SignedUrlMethod::Put => LinkMethod::Put,
        };
        if method == LinkMethod::Get {
            // Say so now rather than hand out a link that answers 404.
            self.api.stat(&tenant, &key).await?;
        }
        let expires_at = SystemTime::now() + expires_in;
        let url = match self
            .api
            .presigned_url(&tenant, &key, method, expires_in)
            .await?
        {
            Some(url) => url.to_string(),
            None => match &self.links {
                Some(links) => links.issue(&tenant, &key, method, expires_at),
                None => {
                    return Err(Status::failed_precondition(
                        "this store cannot sign URLs and serves no links",
                    ));
                }
            },
        };
        Ok(Response::new(SignedUrlResponse {
            url,
            expires_at: Some(expires_at.into()),
        }))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let tenant = Tenant::of(&request)?;
        let key = ObjectKey::parse(&request.get_ref().key).map_err(StoreError::from)?;
        self.api.delete(&tenant, &key).await?;
        Ok(Response::new(DeleteResponse {}))
    }
}

const DEFAULT_LINK_SECS: u32 = 3600;
/// S3 refuses to presign for longer.
const MAX_LINK_SECS: u32 = 7 * 24 * 3600;

fn link_lifetime(asked: u32) -> Result<Duration, StoreError> {
    match asked {
        0 => Ok(Duration::from_secs(DEFAULT_LINK_SECS.into())),
        secs if secs <= MAX_LINK_SECS => Ok(Duration::from_secs(secs.into())),
        secs => Err(StoreError::InvalidArgument(format!(
            "expires_in_seconds: at most {MAX_LINK_SECS}, got {secs}"
        ))),
    }
}

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// A page token is the last key of the page before, hex-encoded so clients
/// treat it as opaque; one that is not ours is refused.
fn page_start(token: &str, prefix: &KeyPrefix) -> Result<Option<ObjectKey>, StoreError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || StoreError::InvalidArgument("page_token is not one this API handed out".into());
    let bytes = hex::decode(token).map_err(|_| bad())?;
    let key = String::from_utf8(bytes).map_err(|_| bad())?;
    let key = ObjectKey::parse(&key).map_err(|_| bad())?;
    if !prefix.matches(key.as_str()) {
        return Err(bad());
    }
    Ok(Some(key))
}

fn object_info(stored: StoredObject) -> ObjectInfo {
    ObjectInfo {
        key: stored.key,
        size_bytes: stored.size_bytes,
        sha256: stored.sha256.unwrap_or_default(),
        last_modified: stored.last_modified.map(Into::into),
    }
}

/// Backends hand out chunks of any size (the local one reads 8 KiB at a
/// time); regroup them so each gRPC message carries about `target` bytes.
fn coalesce<S>(chunks: S, target: usize) -> impl Stream<Item = Result<Bytes, StoreError>>
where
    S: Stream<Item = Result<Bytes, StoreError>> + Unpin,
{
    futures::stream::unfold(Some((chunks, BytesMut::new())), move |state| async move {
        let (mut chunks, mut buffer) = state?;
        while buffer.len() < target {
            match chunks.next().await {
                Some(Ok(chunk)) => buffer.extend_from_slice(&chunk),
                Some(Err(err)) => return Some((Err(err), None)),
                None if buffer.is_empty() => return None,
                None => return Some((Ok(buffer.freeze()), None)),
            }
        }
        let out = buffer.split_to(target.min(buffer.len())).freeze();
        Some((Ok(out), Some((chunks, buffer))))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_lifetimes_default_to_an_hour_and_stop_at_a_week() {
        assert_eq!(link_lifetime(0).ok(), Some(Duration::from_secs(3600)));
        assert_eq!(link_lifetime(60).ok(), Some(Duration::from_secs(60)));
        let err = link_lifetime(MAX_LINK_SECS + 1).expect_err("too long");
        assert!(err.to_string().contains("expires_in_seconds"), "{err}");
    }

    #[tokio::test]
    async fn coalesce_regroups_without_losing_bytes() {
        let input: Vec<Result<Bytes, StoreError>> =
            (0..10).map(|i| Ok(Bytes::from(vec![i as u8; 3]))).collect();
        let out: Vec<Bytes> = coalesce(futures::stream::iter(input), 8)
            .map(|chunk| chunk.expect("chunk"))
            .collect()
            .await;
        assert_eq!(
            out.iter().map(Bytes::len).collect::<Vec<_>>(),
            vec![8, 8, 8, 6]
        );
        let joined: Vec<u8> = out.concat();
        assert_eq!(joined.len(), 30);
        assert_eq!(joined[29], 9);
    }
}
