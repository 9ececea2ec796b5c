//! Claiming a KV key by create: of any number of writers racing for the same
//! key exactly one wins, and every other learns what the winner wrote.
//! Idempotency keys and the asset catalog's indexes are built on it.

use async_nats::jetstream::kv;

use crate::NatsError;

/// Writes `value` under `key` unless the key exists. `None` when this call
/// won; otherwise the value the winner wrote.
pub(crate) async fn claim(
    kv: &kv::Store,
    key: &str,
    value: &str,
) -> Result<Option<String>, NatsError> {
    match kv.create(key, value.to_owned().into()).await {
        Ok(_) => Ok(None),
        Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => {
            let held = kv
                .get(key)
                .await
                .map_err(NatsError::unavailable)?
                // Purged between our create and this read (an expired or
                // released claim): report it as gone, the caller retries.
                .ok_or_else(|| NatsError::Unavailable(format!("claim on {key} vanished")))?;
            String::from_utf8(held.to_vec())
                .map(Some)
                .map_err(|_| NatsError::Corrupt(format!("claim on {key}")))
        }
        Err(err) => Err(NatsError::unavailable(err)),
    }
}
