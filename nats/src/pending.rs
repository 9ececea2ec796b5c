//! Publishes sent to JetStream whose acks are collected later, so that
//! several writes can be in flight at once instead of taking one round trip
//! each. A client's publishes reach the server in the order it sent them.

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};

use crate::NatsError;

/// A publish on its way to a stream.
#[derive(Debug)]
pub struct Pending {
    ack: PublishAckFuture,
    /// What a failed expected-sequence check means for this write.
    conflict: Option<NatsError>,
}

impl Pending {
    pub(crate) fn new(ack: PublishAckFuture) -> Self {
        Pending {
            ack,
            conflict: None,
        }
    }

    /// Reports `conflict` when the stream refuses the write because the
    /// subject's last sequence is not the one expected.
    pub(crate) fn or_conflict(self, conflict: NatsError) -> Self {
        Pending {
            conflict: Some(conflict),
            ..self
        }
    }

    /// Waits for the stream's ack: the message's stream sequence once stored.
    pub async fn durable(self) -> Result<u64, NatsError> {
        match self.ack.await {
            Ok(ack) => Ok(ack.sequence),
            Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => {
                Err(self.conflict.unwrap_or_else(|| NatsError::unavailable(err)))
            }
            Err(err)
                if matches!(
                    err.kind(),
                    PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe
                ) =>
            {
                Err(NatsError::NoAnswer(err.to_string()))
            }
            Err(err) => Err(NatsError::unavailable(err)),
        }
    }
}
