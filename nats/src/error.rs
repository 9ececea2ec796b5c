//! Errors of the NATS layer: what callers need to tell apart, nothing more.

use crate::record::{JobState, TransitionError};

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("could not reach NATS: {0}")]
    Unavailable(String),
    /// A write was sent but its ack never came (timed out, or the
    /// connection dropped): it may or may not be stored, and a client that
    /// buffered it during an outage may still deliver it.
    #[error("NATS did not answer, so the write may yet be stored: {0}")]
    NoAnswer(String),
    #[error("job {0} not found")]
    JobNotFound(String),
    #[error("job {0} already exists")]
    JobExists(String),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    #[error("nats-server: {0}")]
    Server(String),
    /// A value would not fit in a NATS message, however long one waits.
    #[error("{0}")]
    TooLarge(String),
}

impl NatsError {
    /// Wraps any client error as `Unavailable`: every async-nats failure we do not
    /// handle specifically means the server could not do what we asked.
    pub fn unavailable(err: impl std::fmt::Display) -> Self {
        NatsError::Unavailable(err.to_string())
    }

    /// True when the caller may retry later (NATS down or slow).
    pub fn is_transient(&self) -> bool {
        matches!(self, NatsError::Unavailable(_) | NatsError::NoAnswer(_))
    }

    pub(crate) fn invalid_transition(id: &str, from: JobState, to: JobState) -> Self {
        NatsError::Transition(TransitionError {
            job_id: id.to_string(),
            from,
            to,
        })
    }
}
