//! Gateway errors, and their one mapping onto gRPC status codes.

use reelmesh_nats::NatsError;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The request is wrong; the message names the field.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("job {0} not found")]
    NotFound(String),
    #[error("asset {0} not found")]
    AssetNotFound(String),
    #[error("endpoint {0} not found")]
    EndpointNotFound(String),
    /// No webhook delivery matches; the message says which was asked for.
    #[error("{0}")]
    DeliveryNotFound(String),
    /// The job is not in a state the call applies to.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A tenant limit is reached; the client should wait and retry.
    #[error("{0}")]
    ResourceExhausted(String),
    /// NATS is unreachable or failing; the client may retry.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<NatsError> for GatewayError {
    fn from(err: NatsError) -> Self {
        match err {
            NatsError::JobNotFound(id) => GatewayError::NotFound(id),
            NatsError::Unavailable(message) => GatewayError::Unavailable(message),
            err @ NatsError::NoAnswer(_) => GatewayError::Unavailable(err.to_string()),
            NatsError::TooLarge(message) => GatewayError::FailedPrecondition(message),
            other => GatewayError::Internal(other.to_string()),
        }
    }
}

impl From<GatewayError> for Status {
    fn from(err: GatewayError) -> Self {
        let code = match &err {
            GatewayError::InvalidArgument(_) => Code::InvalidArgument,
            GatewayError::NotFound(_)
            | GatewayError::AssetNotFound(_)
            | GatewayError::EndpointNotFound(_)
            | GatewayError::DeliveryNotFound(_) => Code::NotFound,
            GatewayError::FailedPrecondition(_) => Code::FailedPrecondition,
            GatewayError::ResourceExhausted(_) => Code::ResourceExhausted,
            GatewayError::Unavailable(_) => Code::Unavailable,
            GatewayError::Internal(_) => Code::Internal,
        };
        Status::new(code, err.to_string())
    }
}
