//! The `reelmesh.v1.Jobs` gRPC service: a thin adapter that turns requests
//! into [`JobsApi`] calls and records into proto messages.

use futures::{StreamExt as _, stream::BoxStream};
use reelmesh_nats::{
    Attempt, EventKind, JobId, JobOutput, JobRecord, JobState, MediaSummary, SequencedEvent,
};
use reelmesh_proto::v1::{self as pb, job_event, jobs_server::Jobs, jobs_server::JobsServer};
use reelmesh_runtime::{ApiKeyAuth, Tenant};
use time::OffsetDateTime;
use tonic::{Request, Response, Status, service::interceptor::InterceptedService};

use crate::{
    GatewayError,
    jobs::{JobsApi, ListQuery, Submission},
};

#[derive(Debug)]
pub struct JobsService<A> {
    api: std::sync::Arc<A>,
}

impl<A> Clone for JobsService<A> {
    fn clone(&self) -> Self {
        JobsService {
            api: self.api.clone(),
        }
    }
}

impl<A: JobsApi> JobsService<A> {
    pub fn new(api: A) -> Self {
        JobsService {
            api: std::sync::Arc::new(api),
        }
    }

    /// The service wrapped in API-key auth, ready to mount on a router.
    pub fn into_server(self, auth: ApiKeyAuth) -> InterceptedService<JobsServer<Self>, ApiKeyAuth> {
        JobsServer::with_interceptor(self, auth)
    }
}

fn job_id(id: &str) -> Result<JobId, Status> {
    // An id that cannot exist is simply not found, like any other unknown id.
    JobId::parse(id).map_err(|_| GatewayError::NotFound(id.to_string()).into())
}

#[tonic::async_trait]
impl<A: JobsApi> Jobs for JobsService<A> {
    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let tenant = Tenant::of(&request)?;
        let request = request.into_inner();
        let submission = Submission {
            spec: request
                .spec
                .ok_or_else(|| GatewayError::InvalidArgument("spec: required".into()))?,
            idempotency_key: Some(request.idempotency_key).filter(|key| !key.is_empty()),
        };
        let record = self.api.submit(tenant, submission).await?;
        Ok(Response::new(job_to_proto(record)))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let tenant = Tenant::of(&request)?;
        let id = job_id(&request.get_ref().id)?;
        Ok(Response::new(job_to_proto(self.api.get(tenant, id).await?)))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let tenant = Tenant::of(&request)?;
        let request = request.into_inner();
        let after = match request.page_token.as_str() {
            "" => None,
            token => Some(JobId::parse(token).map_err(|_| {
                GatewayError::InvalidArgument(format!(
                    "page_token {token:?} is not one ListJobs returned"
                ))
            })?),
        };
        let query = ListQuery {
            state: state_from_proto(request.state())?,
            page_size: request.page_size as usize,
            after,
        };
        let page = self.api.list(tenant, query).await?;
        Ok(Response::new(pb::ListJobsResponse {
            jobs: page.jobs.into_iter().map(job_to_proto).collect(),
            next_page_token: page.next.map(String::from).unwrap_or_default(),
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let tenant = Tenant::of(&request)?;
        let id = job_id(&request.get_ref().id)?;
        Ok(Response::new(job_to_proto(
            self.api.cancel(tenant, id).await?,
        )))
    }

    type WatchJobStream = BoxStream<'static, Result<pb::JobEvent, Status>>;

    async fn watch_job(
        &self,
        request: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let tenant = Tenant::of(&request)?;
        let id = job_id(&request.get_ref().id)?;
        let after = request.get_ref().after_sequence;
        let events = self.api.watch(tenant, id, after).await?;
        let events = events.map(|event| event.map(event_to_proto).map_err(Status::from));
        Ok(Response::new(events.boxed()))
    }

    async fn retry_job(
        &self,
        request: Request<pb::RetryJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let tenant = Tenant::of(&request)?;
        let id = job_id(&request.get_ref().id)?;
        Ok(Response::new(job_to_proto(
            self.api.retry(tenant, id).await?,
        )))
    }
}

fn state_from_proto(state: pb::JobState) -> Result<Option<JobState>, GatewayError> {
    Ok(match state {
        pb::JobState::Unspecified => None,
        pb::JobState::Queued => Some(JobState::Queued),
        pb::JobState::Running => Some(JobState::Running),
        pb::JobState::Completed => Some(JobState::Completed),
        pb::JobState::Failed => Some(JobState::Failed),
        pb::JobState::Cancelled => Some(JobState::Cancelled),
    })
}

fn state_to_proto(state: JobState) -> pb::JobState {
    match state {
        JobState::Queued => pb::JobState::Queued,
        JobState::Running => pb::JobState::Running,
        JobState::Completed => pb::JobState::Completed,
        JobState::Failed => pb::JobState::Failed,
        JobState::Cancelled => pb::JobState::Cancelled,
    }
}

pub fn timestamp(at: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.unix_timestamp(),
        nanos: at.nanosecond() as i32,
    }
}

pub fn output_to_proto(output: JobOutput) -> pb::JobOutput {
    pb::JobOutput {
        key: output.key,
        size_bytes: output.size_bytes,
        media: Some(media_to_proto(output.media)),
        keys: output.keys,
        copied: output.copied,
        reencoded_seconds: output.reencoded_seconds,
        asset_id: output.asset_id.unwrap_or_default(),
        existing_asset: output.existing_asset,
    }
}

pub fn media_to_proto(media: MediaSummary) -> pb::MediaInfo {
    pb::MediaInfo {
        duration_seconds: media.duration_seconds,
        container: media.container,
        video_codec: media.video_codec.unwrap_or_default(),
        width: media.width.unwrap_or_default(),
        height: media.height.unwrap_or_default(),
        audio_codec: media.audio_codec.unwrap_or_default(),
    }
}

fn progress_to_proto(progress: reelmesh_nats::Progress) -> pb::Progress {
    pb::Progress {
        stage: progress.stage,
        percent: progress.percent,
        eta_seconds: progress.eta_seconds.unwrap_or_default(),
    }
}

pub fn job_to_proto(record: JobRecord) -> pb::Job {
    pb::Job {
        id: record.id.into(),
        state: state_to_proto(record.state) as i32,
        spec: Some(record.spec),
        progress: record.progress.map(progress_to_proto),
        error: record.error.unwrap_or_default(),
        output: record.output.map(output_to_proto),
        created_at: Some(timestamp(record.created_at)),
        updated_at: Some(timestamp(record.updated_at)),
        attempts: record.attempts.into_iter().map(attempt_to_proto).collect(),
        max_attempts: record.max_attempts,
        retry_at: record.retry_at.map(timestamp),
        output_expired: record.output_expired,
    }
}

fn attempt_to_proto(attempt: Attempt) -> pb::Attempt {
    pb::Attempt {
        number: attempt.number,
        started_at: Some(timestamp(attempt.started_at)),
        ended_at: attempt.ended_at.map(timestamp),
        error: attempt.error.unwrap_or_default(),
    }
}

pub fn event_to_proto(sequenced: SequencedEvent) -> pb::JobEvent {
    let event = sequenced.event;
    let kind = match event.kind {
        EventKind::Queued => job_event::Kind::Queued(job_event::Queued {}),
        EventKind::Started { .. } => job_event::Kind::Started(job_event::Started {}),
        EventKind::Retrying {
            attempt,
            error,
            retry_at,
        } => job_event::Kind::Retrying(job_event::Retrying {
            attempt,
            error,
            retry_at: Some(timestamp(retry_at)),
        }),
        EventKind::Progress(progress) => job_event::Kind::Progress(progress_to_proto(progress)),
        EventKind::Completed { output } => job_event::Kind::Completed(job_event::Completed {
            output: Some(output_to_proto(output)),
        }),
        EventKind::Failed { error } => job_event::Kind::Failed(job_event::Failed { error }),
        EventKind::Cancelled => job_event::Kind::Cancelled(job_event::Cancelled {}),
    };
    pb::JobEvent {
        job_id: event.job_id.into(),
        sequence: sequenced.sequence,
        at: Some(timestamp(event.at)),
        kind: Some(kind),
    }
}
