//! Idempotency keys: the first submit with a key claims it for its job by a
//! KV create (which only one writer can win); every later submit with the
//! same key, however close in time, finds the claim and returns that job.
//! Claims expire with the bucket's max age, the idempotency window.

use async_nats::jetstream::kv;
use sha2::{Digest as _, Sha256};

use crate::{JobId, NatsError, TenantId, claim::claim, kv_json::unless_moved};

#[derive(Debug, Clone)]
pub struct IdempotencyKeys {
    kv: kv::Store,
}

impl IdempotencyKeys {
    pub(crate) fn new(kv: kv::Store) -> Self {
        IdempotencyKeys { kv }
    }

    /// Claims `key` for `job`. `None` when this call won the claim, or the
    /// job that claimed it first.
    pub async fn claim(
        &self,
        tenant: &TenantId,
        key: &str,
        job: &JobId,
    ) -> Result<Option<JobId>, NatsError> {
        let entry = entry_key(tenant, key);
        match claim(&self.kv, &entry, job.as_str()).await? {
            None => Ok(None),
            Some(holder) => JobId::parse(&holder)
                .map(Some)
                .map_err(|_| NatsError::Corrupt(format!("claim on {key:?}"))),
        }
    }

    /// Moves the claim on `key` from `from` (a job that was never stored)
    /// to `to`, by compare-and-set: `false` if the claim holds another job
    /// by now, or is gone.
    pub async fn take_over(
        &self,
        tenant: &TenantId,
        key: &str,
        from: &JobId,
        to: &JobId,
    ) -> Result<bool, NatsError> {
        let entry_key = entry_key(tenant, key);
        let entry = self
            .kv
            .entry(&entry_key)
            .await
            .map_err(NatsError::unavailable)?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(false);
        };
        if entry.value != from.as_str().as_bytes() {
            return Ok(false);
        }
        let moved = self
            .kv
            .update(&entry_key, to.as_str().to_owned().into(), entry.revision)
            .await;
        Ok(unless_moved(moved)?.is_some())
    }

    /// Gives up a claim whose job could not be created, so a retry of the
    /// submit is not pointed at a job that does not exist.
    pub async fn release(&self, tenant: &TenantId, key: &str) -> Result<(), NatsError> {
        self.kv
            .purge(entry_key(tenant, key))
            .await
            .map_err(NatsError::unavailable)
    }
}

/// Client keys may hold any printable character; KV keys may not, so the
/// key is hashed.
fn entry_key(tenant: &TenantId, key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let hex = hex::encode(digest);
    format!("{tenant}.{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_keys_are_per_tenant_and_subject_safe() {
        let a = TenantId::parse("a").expect("tenant");
        let b = TenantId::parse("b").expect("tenant");
        let key = "order 42 / retry.*>";
        assert_ne!(entry_key(&a, key), entry_key(&b, key));
        assert!(
            entry_key(&a, key)
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.')
        );
    }
}
