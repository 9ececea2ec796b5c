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

/// The store as the gateway meets it (deleting outputs): the backend
/// failing (a 403 included: it is the bucket's, not one object's) is
/// unavailable; anything else, such as a key of ours the store refuses, is
/// internal, as the store's own mapping has it.
impl From<reelmesh_store::StoreError> for GatewayError {
    fn from(err: reelmesh_store::StoreError) -> Self {
        use reelmesh_store::StoreError;
        match err {
            StoreError::Backend(_) => GatewayError::Unavailable(err.to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use reelmesh_store::{ObjectKey, StoreError};

    #[test]
    fn a_failing_store_is_unavailable_and_a_refused_key_is_ours() {
        let down = GatewayError::from(StoreError::Backend("connection refused".into()));
        assert!(matches!(down, GatewayError::Unavailable(_)), "{down:?}");
        let refused = ObjectKey::parse("../outside").expect_err("not a key");
        let ours = GatewayError::from(StoreError::from(refused));
        assert!(matches!(ours, GatewayError::Internal(_)), "{ours:?}");
    }
}
