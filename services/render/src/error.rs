//! Why a render failed, split by what the worker should do about it.

use reelmesh_nats::NatsError;
use std::path::PathBuf;

use reelmesh_store::StoreError;

use crate::{input::InputRef, media::MediaError};

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The job cannot be rendered as asked; retrying will not help.
    #[error("{0}")]
    Plan(String),
    #[error("input {0} not found")]
    InputNotFound(String),
    /// The input exists but is not media we can decode, or may not be
    /// fetched at all.
    #[error("input {asset}: {reason}")]
    BadInput { asset: String, reason: String },
    /// Downloading a URL input failed in a way that may pass (a 5xx, a
    /// dropped connection, a timeout).
    #[error("{0}")]
    Fetch(String),
    #[error("render pipeline failed: {0}")]
    Pipeline(String),
    #[error("render cancelled")]
    Cancelled,
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("nats: {0}")]
    Nats(#[from] NatsError),
    /// The item's job record does not decode here (a later release's,
    /// say): the job must wait for a worker that can read it.
    #[error("the job's record cannot be read: {0}")]
    UnreadableRecord(String),
    #[error("local file: {0}")]
    Local(#[from] std::io::Error),
}

/// An input asset and its copy in scratch space.
#[derive(Debug, Clone)]
pub struct LocalInput {
    pub input: InputRef,
    pub path: PathBuf,
}

impl RenderError {
    /// Whether another attempt might succeed: pipeline, store and local
    /// file failures might be passing; a bad spec or input will not change.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            RenderError::Pipeline(_)
                | RenderError::Fetch(_)
                | RenderError::Store(_)
                | RenderError::Local(_)
        )
    }

    /// Maps a media error, naming the asset instead of our scratch file.
    pub fn from_media(err: MediaError, inputs: &[LocalInput]) -> Self {
        match err {
            MediaError::BadInput { input, reason } => RenderError::BadInput {
                asset: inputs
                    .iter()
                    .find(|local| local.path.as_os_str() == input.as_str())
                    .map_or(input, |local| local.input.to_string()),
                reason,
            },
            MediaError::Cancelled => RenderError::Cancelled,
            MediaError::Stalled(after) => {
                RenderError::Pipeline(format!("no progress for {after:?}"))
            }
            MediaError::Pipeline(message) => RenderError::Pipeline(message),
            MediaError::Timeline(message) => RenderError::Plan(message),
        }
    }
}
