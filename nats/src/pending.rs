//! Publishes sent to JetStream whose acks are collected later, so that
//! several writes can be in flight at once instead of taking one round trip
//! each. A client's publishes reach the server in the order it sent them.

use async_nats::jetstream::context::PublishAckFuture;

use crate::NatsError;

/// A publish on its way to a stream.
#[derive(Debug)]
pub struct Pending {
    ack: PublishAckFuture,
}

impl Pending {
    pub(crate) fn new(ack: PublishAckFuture) -> Self {
        Pending { ack }
    }

    /// Waits for the stream's ack: the message's stream sequence once stored.
    pub async fn durable(self) -> Result<u64, NatsError> {
        match self.ack.await {
            Ok(ack) => Ok(ack.sequence),
            Err(err) => Err(NatsError::unavailable(err)),
        }
    }
}
