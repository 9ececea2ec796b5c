//! Records kept as JSON in KV buckets (assets, webhook deliveries): one
//! read and one write, with unreadable bytes reported as corrupt data
//! naming what they were meant to be.

use async_nats::jetstream::kv;
use serde::{Serialize, de::DeserializeOwned};

use crate::NatsError;

/// The record under `key`, if any; `what` names it in errors.
pub(crate) async fn get<T: DeserializeOwned>(
    kv: &kv::Store,
    key: &str,
    what: &str,
) -> Result<Option<T>, NatsError> {
    let Some(bytes) = kv.get(key).await.map_err(NatsError::unavailable)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|err| NatsError::Corrupt(format!("{what}: {err}")))
}

/// Writes the record under `key`, whatever was there.
pub(crate) async fn put<T: Serialize>(
    kv: &kv::Store,
    key: &str,
    record: &T,
    what: &str,
) -> Result<(), NatsError> {
    let bytes =
        serde_json::to_vec(record).map_err(|err| NatsError::Corrupt(format!("{what}: {err}")))?;
    kv.put(key, bytes.into())
        .await
        .map(drop)
        .map_err(NatsError::unavailable)
}
