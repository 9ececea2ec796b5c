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
        let Some(revision) = self.claim_of(&entry_key, from).await? else {
            return Ok(false);
        };
        let moved = self
            .kv
            .update(&entry_key, to.as_str().to_owned().into(), revision)
            .await;
        Ok(unless_moved(moved)?.is_some())
    }

    /// Gives up `job`'s claim on `key`, its job not created, so a retry of
    /// the submit is not pointed at a job that does not exist. Only while
    /// the claim still names `job`: a submit held up long enough may find
    /// another gateway took the claim over meanwhile (see `take_over`), and
    /// that job's claim must stay. `false` when it did not name `job`.
    pub async fn release(
        &self,
        tenant: &TenantId,
        key: &str,
        job: &JobId,
    ) -> Result<bool, NatsError> {
        let entry_key = entry_key(tenant, key);
        let Some(revision) = self.claim_of(&entry_key, job).await? else {
            return Ok(false);
        };
        // Written since the read: by then it is another job's claim.
        let purged = self.kv.purge_expect_revision(&entry_key, Some(revision));
        Ok(unless_moved(purged.await)?.is_some())
    }

    /// The revision of the claim under `entry_key` if it names `job`.
    async fn claim_of(&self, entry_key: &str, job: &JobId) -> Result<Option<u64>, NatsError> {
        let entry = self
            .kv
            .entry(entry_key)
            .await
            .map_err(NatsError::unavailable)?;
        let named = entry.filter(|e| e.operation == kv::Operation::Put && e.value == job.as_str());
        Ok(named.map(|e| e.revision))
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
