//! Why a render failed, split by what the worker should do about it.

use reelmesh_nats::NatsError;
use reelmesh_store::StoreError;

use crate::media::MediaError;

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The job cannot be rendered as asked; retrying will not help.
    #[error("{0}")]
    Plan(String),
    #[error("input asset {0} not found")]
    InputNotFound(String),
    /// The input exists but is not media we can decode.
    #[error("input asset {asset}: {reason}")]
    BadInput { asset: String, reason: String },
    #[error("render pipeline failed: {0}")]
    Pipeline(String),
    #[error("render cancelled")]
    Cancelled,
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("nats: {0}")]
    Nats(#[from] NatsError),
    #[error("local file: {0}")]
    Local(#[from] std::io::Error),
}

impl RenderError {
    /// Maps a media error, naming the asset instead of our scratch file.
    pub fn from_media(err: MediaError, asset: &str) -> Self {
        match err {
            MediaError::BadInput { reason, .. } => RenderError::BadInput {
                asset: asset.to_string(),
                reason,
            },
            MediaError::Cancelled => RenderError::Cancelled,
            MediaError::Stalled(after) => {
                RenderError::Pipeline(format!("no progress for {after:?}"))
            }
            MediaError::Pipeline(message) => RenderError::Pipeline(message),
        }
    }
}
