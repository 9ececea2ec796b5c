//! The webhook delivery log's read side: what notify sent for a job and
//! what the receiver answered, attempt by attempt. [`WebhooksService`] is
//! the thin `reelmesh.v1.Webhooks` adapter.

use futures::future::BoxFuture;
use reelmesh_nats::{DeliveryRecord, DeliveryState, EventKind, JobEvent, JobId, TenantId, names};
use reelmesh_proto::v1::{
    self as pb,
    webhooks_server::{Webhooks, WebhooksServer},
};
use reelmesh_runtime::{ApiKeyAuth, Tenant};
use tonic::{Request, Response, Status, service::interceptor::InterceptedService};

use crate::{GatewayError, NatsJobs, grpc::timestamp};

/// What the Webhooks gRPC service asks of the delivery log.
pub trait WebhooksApi: Send + Sync + 'static {
    fn deliveries(
        &self,
        tenant: TenantId,
        job: JobId,
    ) -> BoxFuture<'_, Result<Vec<DeliveryRecord>, GatewayError>>;
    /// Queues `event`'s webhook to be sent again; the delivery as it was.
    fn redeliver(
        &self,
        tenant: TenantId,
        job: JobId,
        event: String,
    ) -> BoxFuture<'_, Result<DeliveryRecord, GatewayError>>;
}

impl WebhooksApi for NatsJobs {
    fn deliveries(
        &self,
        tenant: TenantId,
        job: JobId,
    ) -> BoxFuture<'_, Result<Vec<DeliveryRecord>, GatewayError>> {
        Box::pin(async move {
            let topology = self.connect().await?;
            // The job must be the caller's; its deliveries are keyed by it.
            if topology.jobs.get(&tenant, &job).await?.is_none() {
                return Err(GatewayError::NotFound(job.to_string()));
            }
            let events: Vec<String> = names::TERMINAL_EVENT_KINDS
                .iter()
                .map(|kind| format!("job.{kind}"))
                .collect();
            let events: Vec<&str> = events.iter().map(String::as_str).collect();
            Ok(topology.deliveries.for_job(&tenant, &job, &events).await?)
        })
    }

    fn redeliver(
        &self,
        tenant: TenantId,
        job: JobId,
        event: String,
    ) -> BoxFuture<'_, Result<DeliveryRecord, GatewayError>> {
        Box::pin(async move {
            let topology = self.connect().await?;
            let Some(record) = topology.jobs.get(&tenant, &job).await? else {
                return Err(GatewayError::NotFound(job.to_string()));
            };
            let Some(delivery) = topology.deliveries.get(&tenant, &job, &event).await? else {
                return Err(GatewayError::NotFound(format!(
                    "{job}: no {event} webhook was sent"
                )));
            };
            // The job's current ending, which is what its webhook says.
            let ending = EventKind::ending(&record.record)
                .filter(|kind| format!("job.{}", kind.name()) == event)
                .ok_or_else(|| {
                    GatewayError::FailedPrecondition(format!(
                        "job {job} no longer ends with {event} (it was retried)"
                    ))
                })?;
            let job_event = JobEvent::of(&record.record, ending);
            topology.request_redelivery(&job_event).await?;
            Ok(delivery)
        })
    }
}

#[derive(Debug, Clone)]
pub struct WebhooksService<A> {
    api: std::sync::Arc<A>,
}

impl<A: WebhooksApi> WebhooksService<A> {
    pub fn new(api: A) -> Self {
        WebhooksService {
            api: std::sync::Arc::new(api),
        }
    }

    pub fn into_server(
        self,
        auth: ApiKeyAuth,
    ) -> InterceptedService<WebhooksServer<Self>, ApiKeyAuth> {
        WebhooksServer::with_interceptor(self, auth)
    }
}

#[tonic::async_trait]
impl<A: WebhooksApi> Webhooks for WebhooksService<A> {
    async fn list_deliveries(
        &self,
        request: Request<pb::ListDeliveriesRequest>,
    ) -> Result<Response<pb::ListDeliveriesResponse>, Status> {
        let tenant = Tenant::of(&request)?;
        let job = JobId::parse(&request.get_ref().job_id)
            .map_err(|why| GatewayError::InvalidArgument(format!("job_id: {why}")))?;
        let deliveries = self.api.deliveries(tenant, job).await?;
        Ok(Response::new(pb::ListDeliveriesResponse {
            deliveries: deliveries.into_iter().map(delivery_to_proto).collect(),
        }))
    }

    async fn redeliver(
        &self,
        request: Request<pb::RedeliverRequest>,
    ) -> Result<Response<pb::WebhookDelivery>, Status> {
        let tenant = Tenant::of(&request)?;
        let request = request.into_inner();
        let job = JobId::parse(&request.job_id)
            .map_err(|why| GatewayError::InvalidArgument(format!("job_id: {why}")))?;
        let known = names::TERMINAL_EVENT_KINDS
            .iter()
            .any(|kind| format!("job.{kind}") == request.event);
        if !known {
            return Err(GatewayError::InvalidArgument(format!(
                "event: {:?} is not job.completed, job.failed or job.cancelled",
                request.event
            ))
            .into());
        }
        let delivery = self.api.redeliver(tenant, job, request.event).await?;
        Ok(Response::new(delivery_to_proto(delivery)))
    }
}

fn delivery_to_proto(record: DeliveryRecord) -> pb::WebhookDelivery {
    let state = match record.state {
        DeliveryState::Retrying => pb::DeliveryState::Retrying,
        DeliveryState::Delivered => pb::DeliveryState::Delivered,
        DeliveryState::Failed => pb::DeliveryState::Failed,
    };
    pb::WebhookDelivery {
        id: record.id,
        job_id: record.job_id.into(),
        event: record.event,
        url: record.url,
        state: state as i32,
        attempts: record
            .attempts
            .into_iter()
            .map(|attempt| pb::DeliveryAttempt {
                at: Some(timestamp(attempt.at)),
                status: attempt.status.map_or(0, u32::from),
                latency_ms: attempt.latency_ms,
                error: attempt.error.unwrap_or_default(),
            })
            .collect(),
        next_attempt_at: record.next_attempt_at.map(timestamp),
    }
}
