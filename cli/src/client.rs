//! A small typed client over the gateway's gRPC API: API-key metadata on
//! every call, file upload and download in chunks, and job helpers.

use std::path::Path;

use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use reelmesh_proto::v1::{
    self as pb, assets_client::AssetsClient, jobs_client::JobsClient, store_client::StoreClient,
    upload_request::Part, webhooks_client::WebhooksClient,
};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;
use tonic::{
    Request, Status,
    metadata::MetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

const UPLOAD_CHUNK: usize = 256 * 1024;

/// Adds `authorization: Bearer <key>` to every request.
#[derive(Debug, Clone)]
pub struct BearerAuth(MetadataValue<tonic::metadata::Ascii>);

impl Interceptor for BearerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, BearerAuth>;

#[derive(Debug, Clone)]
pub struct ReelmeshClient {
    pub jobs: JobsClient<Authed>,
    pub store: StoreClient<Authed>,
    pub assets: AssetsClient<Authed>,
    pub webhooks: WebhooksClient<Authed>,
}

impl ReelmeshClient {
    pub async fn connect(endpoint: &str, api_key: &str) -> anyhow::Result<Self> {
        let channel = Channel::from_shared(endpoint.to_string())?
            .connect()
            .await?;
        Self::with_channel(channel, api_key)
    }

    pub fn with_channel(channel: Channel, api_key: &str) -> anyhow::Result<Self> {
        let auth = BearerAuth(format!("Bearer {api_key}").parse()?);
        Ok(ReelmeshClient {
            jobs: JobsClient::with_interceptor(channel.clone(), auth.clone()),
            assets: AssetsClient::with_interceptor(channel.clone(), auth.clone()),
            webhooks: WebhooksClient::with_interceptor(channel.clone(), auth.clone()),
            store: StoreClient::with_interceptor(channel, auth),
        })
    }

    /// Uploads a local file under `key`, declaring its size and checksum so
    /// the store refuses a corrupted transfer.
    pub async fn upload_file(&mut self, file: &Path, key: &str) -> anyhow::Result<pb::ObjectInfo> {
        let content = tokio::fs::read(file).await?;
        self.upload_bytes(Bytes::from(content), key).await
    }

    pub async fn upload_bytes(
        &mut self,
        content: Bytes,
        key: &str,
    ) -> anyhow::Result<pb::ObjectInfo> {
        let header = pb::UploadHeader {
            key: key.to_string(),
            size_bytes: Some(content.len() as u64),
            sha256: hex::encode(Sha256::digest(&content)),
        };
        let mut messages = vec![pb::UploadRequest {
            part: Some(Part::Header(header)),
        }];
        let mut offset = 0;
        while offset < content.len() {
            let end = (offset + UPLOAD_CHUNK).min(content.len());
            messages.push(pb::UploadRequest {
                part: Some(Part::Chunk(content.slice(offset..end))),
            });
            offset = end;
        }
        Ok(self
            .store
            .upload(futures::stream::iter(messages))
            .await?
            .into_inner())
    }

    /// Downloads `key` into a local file, returning its size.
    pub async fn download_file(&mut self, key: &str, file: &Path) -> anyhow::Result<u64> {
        let mut chunks = self
            .store
            .download(pb::DownloadRequest {
                key: key.to_string(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let mut out = tokio::fs::File::create(file).await?;
        let mut size = 0;
        while let Some(chunk) = chunks.message().await? {
            size += chunk.data.len() as u64;
            out.write_all(&chunk.data).await?;
        }
        out.flush().await?;
        Ok(size)
    }

    pub async fn submit(&mut self, spec: pb::JobSpec) -> Result<pb::Job, Status> {
        self.submit_request(pb::SubmitJobRequest {
            spec: Some(spec),
            ..Default::default()
        })
        .await
    }

    /// Submits with an idempotency key: the same key returns the same job.
    pub async fn submit_once(&mut self, spec: pb::JobSpec, key: &str) -> Result<pb::Job, Status> {
        self.submit_request(pb::SubmitJobRequest {
            spec: Some(spec),
            idempotency_key: key.to_string(),
        })
        .await
    }

    async fn submit_request(&mut self, request: pb::SubmitJobRequest) -> Result<pb::Job, Status> {
        Ok(self.jobs.submit_job(request).await?.into_inner())
    }

    pub async fn retry(&mut self, id: &str) -> Result<pb::Job, Status> {
        let request = pb::RetryJobRequest { id: id.to_string() };
        Ok(self.jobs.retry_job(request).await?.into_inner())
    }

    pub async fn cancel(&mut self, id: &str) -> Result<pb::Job, Status> {
        let request = pb::CancelJobRequest { id: id.to_string() };
        Ok(self.jobs.cancel_job(request).await?.into_inner())
    }

    pub async fn list(
        &mut self,
        state: pb::JobState,
        page_size: u32,
    ) -> Result<pb::ListJobsResponse, Status> {
        let request = pb::ListJobsRequest {
            state: state as i32,
            page_size,
            page_token: String::new(),
        };
        Ok(self.jobs.list_jobs(request).await?.into_inner())
    }

    pub async fn get(&mut self, id: &str) -> Result<pb::Job, Status> {
        let request = pb::GetJobRequest { id: id.to_string() };
        Ok(self.jobs.get_job(request).await?.into_inner())
    }

    pub async fn watch(
        &mut self,
        id: &str,
    ) -> Result<impl Stream<Item = Result<pb::JobEvent, Status>> + use<>, Status> {
        self.watch_after(id, 0).await
    }

    /// Watches from after event sequence `after`: resumes a dropped watch.
    pub async fn watch_after(
        &mut self,
        id: &str,
        after: u64,
    ) -> Result<impl Stream<Item = Result<pb::JobEvent, Status>> + use<>, Status> {
        let request = pb::WatchJobRequest {
            id: id.to_string(),
            after_sequence: after,
        };
        Ok(self.jobs.watch_job(request).await?.into_inner().boxed())
    }
}

/// A trim of an uploaded asset, the job the demo runs.
pub fn trim_spec(asset: &str, start_seconds: f64, end_seconds: f64) -> pb::JobSpec {
    pb::JobSpec {
        operation: Some(pb::job_spec::Operation::Trim(pb::Trim {
            input: Some(asset_source(asset)),
            start_seconds,
            end_seconds,
        })),
        ..Default::default()
    }
}

pub fn asset_source(asset: &str) -> pb::Source {
    pb::Source {
        kind: Some(pb::source::Kind::Asset(asset.to_string())),
    }
}
