//! Store errors, and their one mapping onto gRPC status codes.

use tonic::{Code, Status};

use crate::key::KeyError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    BadKey(#[from] KeyError),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Mismatch(String),
    #[error("object {0} not found")]
    NotFound(String),
    /// A byte range outside the object.
    #[error("{0}")]
    OutOfRange(String),
    #[error("storage backend: {0}")]
    Backend(String),
    #[error("local file: {0}")]
    Local(#[source] std::io::Error),
    #[error("{0}")]
    Config(String),
}

impl From<object_store::Error> for StoreError {
    fn from(err: object_store::Error) -> Self {
        match err {
            object_store::Error::NotFound { path, .. } => {
                // Show the tenant-relative key, not our internal prefix.
                let key = path.splitn(3, '/').nth(2).unwrap_or(&path).to_string();
                StoreError::NotFound(key)
            }
            other => StoreError::Backend(other.to_string()),
        }
    }
}

impl From<StoreError> for Status {
    fn from(err: StoreError) -> Self {
        let code = match &err {
            // A size or checksum mismatch is the client's bytes disagreeing
            // with its own header: bad input, like a bad key.
            StoreError::BadKey(_) | StoreError::InvalidArgument(_) | StoreError::Mismatch(_) => {
                Code::InvalidArgument
            }
            StoreError::NotFound(_) => Code::NotFound,
            StoreError::OutOfRange(_) => Code::OutOfRange,
            StoreError::Backend(_) => Code::Unavailable,
            StoreError::Local(_) | StoreError::Config(_) => Code::Internal,
        };
        Status::new(code, err.to_string())
    }
}
