//! Webhooks, the client's side: registering endpoints, and reading what
//! notify sent for a job and what the receivers answered, attempt by
//! attempt. [`WebhooksService`] is the thin `reelmesh.v1.Webhooks` adapter.

use futures::future::BoxFuture;
use reelmesh_nats::{
    DeliveryChain, DeliveryRecord, DeliveryState, Destination, EndpointId, EndpointRecord, JobId,
    TenantId, WebhookTask, endpoint::EndpointChangeError,
};
use reelmesh_proto::v1::{
    self as pb,
    webhooks_server::{Webhooks, WebhooksServer},
};
use reelmesh_runtime::{ApiKeyAuth, Tenant};
use time::OffsetDateTime;
use tonic::{Request, Response, Status, service::interceptor::InterceptedService};

use crate::{
    GatewayError, NatsJobs,
    endpoints::{
        EndpointUpdate, MAX_ENDPOINTS_PER_TENANT, NewEndpoint, SecretRotation, endpoint_id,
    },
    grpc::timestamp,
};

type Answer<'a, T> = BoxFuture<'a, Result<T, GatewayError>>;

/// What the Webhooks gRPC service asks of NATS.
pub trait WebhooksApi: Send + Sync + 'static {
    fn create_endpoint(&self, tenant: TenantId, new: NewEndpoint) -> Answer<'_, EndpointRecord>;
    fn endpoint(&self, tenant: TenantId, id: EndpointId) -> Answer<'_, EndpointRecord>;
    fn endpoints(&self, tenant: TenantId) -> Answer<'_, Vec<EndpointRecord>>;
    fn update_endpoint(
        &self,
        tenant: TenantId,
        id: EndpointId,
        update: EndpointUpdate,
    ) -> Answer<'_, EndpointRecord>;
    fn delete_endpoint(&self, tenant: TenantId, id: EndpointId) -> Answer<'_, ()>;
    fn rotate_secret(
        &self,
        tenant: TenantId,
        id: EndpointId,
        rotation: SecretRotation,
    ) -> Answer<'_, EndpointRecord>;
    /// Every chain of the job's webhooks: its callback's first, then each
    /// endpoint's.
    fn deliveries(&self, tenant: TenantId, job: JobId) -> Answer<'_, Vec<DeliveryChain>>;
    /// Queues a settled webhook to be sent again; the delivery as it was.
    fn redeliver(
        &self,
        tenant: TenantId,
        job: JobId,
        destination: Destination,
        delivery_id: String,
    ) -> Answer<'_, DeliveryRecord>;
}

impl WebhooksApi for NatsJobs {
    fn create_endpoint(&self, tenant: TenantId, new: NewEndpoint) -> Answer<'_, EndpointRecord> {
        Box::pin(async move {
            let endpoints = &self.connect().await?.endpoints;
            let count = endpoints.list(&tenant).await?.len();
            if count >= MAX_ENDPOINTS_PER_TENANT {
                return Err(GatewayError::ResourceExhausted(format!(
                    "tenant {tenant} already has {count} endpoints (limit {MAX_ENDPOINTS_PER_TENANT})"
                )));
            }
            let record = new.into_record(tenant);
            endpoints.create(&record).await?;
            tracing::info!(endpoint = %record.id, tenant = %record.tenant, "endpoint created");
            Ok(record)
        })
    }

    fn endpoint(&self, tenant: TenantId, id: EndpointId) -> Answer<'_, EndpointRecord> {
        Box::pin(async move {
            let endpoints = &self.connect().await?.endpoints;
            endpoints
                .get(&tenant, &id)
                .await?
                .ok_or_else(|| GatewayError::EndpointNotFound(id.to_string()))
        })
    }

    fn endpoints(&self, tenant: TenantId) -> Answer<'_, Vec<EndpointRecord>> {
        Box::pin(async move { Ok(self.connect().await?.endpoints.list(&tenant).await?) })
    }

    fn update_endpoint(
        &self,
        tenant: TenantId,
        id: EndpointId,
        update: EndpointUpdate,
    ) -> Answer<'_, EndpointRecord> {
        Box::pin(async move {
            let endpoints = &self.connect().await?.endpoints;
            let changed = endpoints
                .update(&tenant, &id, |record| {
                    update.apply(record, OffsetDateTime::now_utc());
                    true
                })
                .await;
            changed.map_err(|err| endpoint_change_error(err, &id))
        })
    }

    fn delete_endpoint(&self, tenant: TenantId, id: EndpointId) -> Answer<'_, ()> {
        Box::pin(async move {
            let endpoints = &self.connect().await?.endpoints;
            if endpoints.get(&tenant, &id).await?.is_none() {
                return Err(GatewayError::EndpointNotFound(id.to_string()));
            }
            endpoints.delete(&tenant, &id).await?;
            tracing::info!(endpoint = %id, %tenant, "endpoint deleted");
            Ok(())
        })
    }

    fn rotate_secret(
        &self,
        tenant: TenantId,
        id: EndpointId,
        rotation: SecretRotation,
    ) -> Answer<'_, EndpointRecord> {
        Box::pin(async move {
            let endpoints = &self.connect().await?.endpoints;
            let rotated = endpoints
                .update(&tenant, &id, |record| {
                    let now = OffsetDateTime::now_utc();
                    record.rotate_secret(rotation.secret.clone(), now, rotation.grace);
                    true
                })
                .await;
            rotated.map_err(|err| endpoint_change_error(err, &id))
        })
    }

    fn deliveries(&self, tenant: TenantId, job: JobId) -> Answer<'_, Vec<DeliveryChain>> {
        Box::pin(async move {
            let topology = self.connect().await?;
            // The job must be the caller's; its deliveries are keyed by it.
            if topology.jobs.get(&tenant, &job).await?.is_none() {
                return Err(GatewayError::NotFound(job.to_string()));
            }
            let mut chains = topology.deliveries.for_job(&tenant, &job).await?;
            chains.sort_by_key(|chain| match &chain.destination {
                Destination::Callback => None,
                Destination::Endpoint(id) => Some(id.clone()),
            });
            Ok(chains)
        })
    }

    fn redeliver(
        &self,
        tenant: TenantId,
        job: JobId,
        destination: Destination,
        delivery_id: String,
    ) -> Answer<'_, DeliveryRecord> {
        Box::pin(async move {
            let topology = self.connect().await?;
            if topology.jobs.get(&tenant, &job).await?.is_none() {
                return Err(GatewayError::NotFound(job.to_string()));
            }
            let chain = topology.deliveries.get(&tenant, &job, &destination).await?;
            let Some(delivery) =
                chain.and_then(|chain| chain.deliveries.into_iter().find(|d| d.id == delivery_id))
            else {
                return Err(GatewayError::DeliveryNotFound(format!(
                    "no delivery {delivery_id:?} of job {job} to {destination}"
                )));
            };
            if !delivery.state.is_settled() {
                return Err(GatewayError::FailedPrecondition(format!(
                    "delivery {delivery_id} is still being sent; redeliver it once it is \
                     delivered or failed"
                )));
            }
            // Notify restarts the schedule when it takes the task; two
            // requests for the same redelivery make one.
            topology
                .deliveries
                .enqueue(&WebhookTask {
                    tenant,
                    job_id: job,
                    destination,
                    sequence: delivery.sequence,
                    redelivery: delivery.redeliveries + 1,
                })
                .await?;
            Ok(delivery)
        })
    }
}

fn endpoint_change_error(err: EndpointChangeError, id: &EndpointId) -> GatewayError {
    match err {
        EndpointChangeError::NotFound => GatewayError::EndpointNotFound(id.to_string()),
        EndpointChangeError::Nats(err) => err.into(),
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
    async fn create_endpoint(
        &self,
        request: Request<pb::CreateEndpointRequest>,
    ) -> Result<Response<pb::Endpoint>, Status> {
        let tenant = Tenant::of(&request)?;
        let new = NewEndpoint::parse(request.into_inner())?;
        let record = self.api.create_endpoint(tenant, new).await?;
        Ok(Response::new(endpoint_to_proto(record, Shown::Secret)))
    }

    async fn get_endpoint(
        &self,
        request: Request<pb::GetEndpointRequest>,
    ) -> Result<Response<pb::Endpoint>, Status> {
        let tenant = Tenant::of(&request)?;
        let id = endpoint_id("id", &request.get_ref().id)?;
        let record = self.api.endpoint(tenant, id).await?;
        Ok(Response::new(endpoint_to_proto(record, Shown::NoSecret)))
    }

    async fn list_endpoints(
        &self,
        request: Request<pb::ListEndpointsRequest>,
    ) -> Result<Response<pb::ListEndpointsResponse>, Status> {
        let tenant = Tenant::of(&request)?;
        let records = self.api.endpoints(tenant).await?;
        Ok(Response::new(pb::ListEndpointsResponse {
            endpoints: records
                .into_iter()
                .map(|record| endpoint_to_proto(record, Shown::NoSecret))
                .collect(),
        }))
    }

    async fn update_endpoint(
        &self,
        request: Request<pb::UpdateEndpointRequest>,
    ) -> Result<Response<pb::Endpoint>, Status> {
        let tenant = Tenant::of(&request)?;
        let (id, update) = EndpointUpdate::parse(request.into_inner())?;
        let record = self.api.update_endpoint(tenant, id, update).await?;
        Ok(Response::new(endpoint_to_proto(record, Shown::NoSecret)))
    }

    async fn delete_endpoint(
        &self,
        request: Request<pb::DeleteEndpointRequest>,
    ) -> Result<Response<pb::DeleteEndpointResponse>, Status> {
        let tenant = Tenant::of(&request)?;
        let id = endpoint_id("id", &request.get_ref().id)?;
        self.api.delete_endpoint(tenant, id).await?;
        Ok(Response::new(pb::DeleteEndpointResponse {}))
    }

    async fn rotate_endpoint_secret(
        &self,
        request: Request<pb::RotateEndpointSecretRequest>,
    ) -> Result<Response<pb::Endpoint>, Status> {
        let tenant = Tenant::of(&request)?;
        let (id, rotation) = SecretRotation::parse(request.into_inner())?;
        let record = self.api.rotate_secret(tenant, id, rotation).await?;
        Ok(Response::new(endpoint_to_proto(record, Shown::Secret)))
    }

    async fn list_deliveries(
        &self,
        request: Request<pb::ListDeliveriesRequest>,
    ) -> Result<Response<pb::ListDeliveriesResponse>, Status> {
        let tenant = Tenant::of(&request)?;
        let job = job_id(&request.get_ref().job_id)?;
        let chains = self.api.deliveries(tenant, job).await?;
        let pruned = chains
            .iter()
            .filter(|chain| chain.pruned > 0)
            .map(|chain| pb::PrunedDeliveries {
                endpoint_id: endpoint_id_of(&chain.destination),
                count: chain.pruned,
            })
            .collect();
        let deliveries = chains
            .into_iter()
            .flat_map(|chain| {
                let DeliveryChain {
                    job_id,
                    destination,
                    deliveries,
                    ..
                } = chain;
                deliveries
                    .into_iter()
                    .map(move |d| delivery_to_proto(&job_id, &destination, d))
            })
            .collect();
        Ok(Response::new(pb::ListDeliveriesResponse {
            deliveries,
            pruned,
        }))
    }

    async fn redeliver(
        &self,
        request: Request<pb::RedeliverRequest>,
    ) -> Result<Response<pb::WebhookDelivery>, Status> {
        let tenant = Tenant::of(&request)?;
        let request = request.into_inner();
        let job = job_id(&request.job_id)?;
        let destination = match request.endpoint_id.as_str() {
            "" => Destination::Callback,
            id => Destination::Endpoint(endpoint_id("endpoint_id", id)?),
        };
        if request.delivery_id.is_empty() {
            let why = "delivery_id: required (the webhook-id, from ListDeliveries)";
            return Err(GatewayError::InvalidArgument(why.into()).into());
        }
        let delivery = self
            .api
            .redeliver(
                tenant,
                job.clone(),
                destination.clone(),
                request.delivery_id,
            )
            .await?;
        Ok(Response::new(delivery_to_proto(
            &job,
            &destination,
            delivery,
        )))
    }
}

fn job_id(id: &str) -> Result<JobId, GatewayError> {
    JobId::parse(id).map_err(|why| GatewayError::InvalidArgument(format!("job_id: {why}")))
}

/// Whether an answer shows the endpoint's current secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shown {
    Secret,
    NoSecret,
}

fn endpoint_to_proto(record: EndpointRecord, shown: Shown) -> pb::Endpoint {
    let secret = match shown {
        Shown::Secret => record.secrets.first().map(|s| s.secret.clone()),
        Shown::NoSecret => None,
    };
    pb::Endpoint {
        id: record.id.to_string(),
        url: record.url,
        description: record.description,
        events: record.events,
        disabled: record.disabled.is_some(),
        disabled_reason: record.disabled.map(|d| d.reason).unwrap_or_default(),
        created_at: Some(timestamp(record.created_at)),
        updated_at: Some(timestamp(record.updated_at)),
        secret: secret.unwrap_or_default(),
    }
}

fn delivery_to_proto(
    job: &JobId,
    destination: &Destination,
    record: DeliveryRecord,
) -> pb::WebhookDelivery {
    let state = match record.state {
        DeliveryState::Pending => pb::DeliveryState::Pending,
        DeliveryState::Retrying => pb::DeliveryState::Retrying,
        DeliveryState::Delivered => pb::DeliveryState::Delivered,
        DeliveryState::Failed => pb::DeliveryState::Failed,
    };
    pb::WebhookDelivery {
        id: record.id,
        job_id: job.to_string(),
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
        endpoint_id: endpoint_id_of(destination),
    }
}

/// A destination as the API names it: an endpoint id, empty for a callback.
fn endpoint_id_of(destination: &Destination) -> String {
    match destination {
        Destination::Callback => String::new(),
        Destination::Endpoint(id) => id.to_string(),
    }
}
