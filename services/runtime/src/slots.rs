//! Free places in a bounded pool of work. A worker that pulls its work
//! (render jobs, webhook tasks) waits for one free place, then takes every
//! place free at that moment, so one pull can ask for as many items as it
//! has room for and never for more.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Every free place in `slots`, once there is at least one; `None` on
/// `shutdown` (checked first) or if `slots` is closed.
pub async fn free_slots(
    slots: &Arc<Semaphore>,
    shutdown: &CancellationToken,
) -> Option<Vec<OwnedSemaphorePermit>> {
    let first = tokio::select! {
        biased;
        _ = shutdown.cancelled() => return None,
        permit = slots.clone().acquire_owned() => permit.ok()?,
    };
    let mut free = vec![first];
    while let Ok(more) = slots.clone().try_acquire_owned() {
        free.push(more);
    }
    Some(free)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn takes_every_free_place_and_none_after_shutdown() {
        let slots = Arc::new(Semaphore::new(3));
        let shutdown = CancellationToken::new();
        let held = slots.clone().try_acquire_owned().expect("free");
        let free = free_slots(&slots, &shutdown).await.expect("two free");
        assert_eq!(free.len(), 2);
        drop((held, free));
        shutdown.cancel();
        assert!(free_slots(&slots, &shutdown).await.is_none());
    }
}
