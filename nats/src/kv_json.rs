//! Records kept as JSON in KV buckets (assets, webhook deliveries,
//! endpoints): one read, one write, a compare-and-set change, or one pass
//! over many keys, with unreadable bytes reported as corrupt data naming
//! what they were meant to be; and the markers purges leave behind.

use async_nats::jetstream::kv;
use serde::{Serialize, de::DeserializeOwned};

use crate::{NatsError, names};

/// The outcome of a KV write that expected a revision (an update, a
/// delete or purge at a revision): `None` when the key had moved on,
/// another writer having come first.
pub(crate) fn unless_moved<T>(written: Result<T, kv::UpdateError>) -> Result<Option<T>, NatsError> {
    match written {
        Ok(done) => Ok(Some(done)),
        Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
        Err(err) => Err(NatsError::unavailable(err)),
    }
}

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

/// Changes the record under `key` by compare-and-set, again on a fresh read
/// whenever someone else wrote in between. A missing record starts as
/// `missing()` (and is created), or, if that is `None`, the answer is
/// `None`. `change` says whether there is anything to write. The record as
/// it now is.
pub(crate) async fn modify<T: Serialize + DeserializeOwned>(
    kv: &kv::Store,
    key: &str,
    what: &str,
    missing: impl Fn() -> Option<T>,
    mut change: impl FnMut(&mut T) -> bool,
) -> Result<Option<T>, NatsError> {
    let corrupt = |err: serde_json::Error| NatsError::Corrupt(format!("{what}: {err}"));
    loop {
        let entry = kv.entry(key).await.map_err(NatsError::unavailable)?;
        let entry = entry.filter(|e| e.operation == kv::Operation::Put);
        let read = match &entry {
            Some(entry) => Some(serde_json::from_slice(&entry.value).map_err(corrupt)?),
            None => missing(),
        };
        let Some(mut record) = read else {
            return Ok(None);
        };
        if !change(&mut record) {
            return Ok(Some(record));
        }
        let bytes = serde_json::to_vec(&record).map_err(corrupt)?.into();
        // Losing the race is the only failure worth another read.
        let written = match &entry {
            Some(entry) => kv.update(key, bytes, entry.revision).await.map_err(|err| {
                let lost = err.kind() == kv::UpdateErrorKind::WrongLastRevision;
                (lost, err.to_string())
            }),
            None => kv.create(key, bytes).await.map_err(|err| {
                let lost = err.kind() == kv::CreateErrorKind::AlreadyExists;
                (lost, err.to_string())
            }),
        };
        match written {
            Ok(_) => return Ok(Some(record)),
            Err((true, _)) => continue,
            Err((false, err)) => return Err(NatsError::Unavailable(err)),
        }
    }
}

/// The latest value of every live key of `bucket` matching `filter` (a key
/// filter such as `<tenant>.*`), read straight off the bucket's stream in
/// one pass rather than a get per key.
pub(crate) async fn latest_matching(
    js: &async_nats::jetstream::Context,
    bucket: &str,
    filter: &str,
) -> Result<Vec<bytes::Bytes>, NatsError> {
    let mut values = Vec::new();
    for_each_latest(js, bucket, filter, false, |message, _| {
        if !is_tombstone(message) {
            values.push(message.payload.clone());
        }
    })
    .await?;
    Ok(values)
}

/// What a purge left under a key: the stream keeps it as the key's latest
/// message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Marker {
    /// The key's subject, `$KV.<bucket>.<key>`.
    pub subject: String,
    pub sequence: u64,
}

/// Every key of `bucket` matching `filter` whose latest message is a purge
/// marker (deletes, which leave a marker of their own kind, are not
/// included). Headers only: values are not read.
pub(crate) async fn purge_markers(
    js: &async_nats::jetstream::Context,
    bucket: &str,
    filter: &str,
) -> Result<Vec<Marker>, NatsError> {
    let mut markers = Vec::new();
    for_each_latest(js, bucket, filter, true, |message, sequence| {
        if operation(message) == Some("PURGE") {
            markers.push(Marker {
                subject: message.subject.to_string(),
                sequence,
            });
        }
    })
    .await?;
    Ok(markers)
}

/// Removes a marker, and anything older under its key. A write after the
/// marker stays: the purge goes up to the marker's sequence only.
pub(crate) async fn remove_marker(
    js: &async_nats::jetstream::Context,
    bucket: &str,
    marker: &Marker,
) -> Result<(), NatsError> {
    js.get_stream_no_info(names::kv_stream(bucket))
        .await
        .map_err(NatsError::unavailable)?
        .purge()
        .filter(marker.subject.as_str())
        .sequence(marker.sequence + 1)
        .await
        .map_err(NatsError::unavailable)?;
    Ok(())
}

/// Calls `each` with the latest message of every key of `bucket` matching
/// the key filter `filter` and its stream sequence, delete and purge markers included,
/// through an ordered consumer that delivers the last message per subject.
async fn for_each_latest(
    js: &async_nats::jetstream::Context,
    bucket: &str,
    filter: &str,
    headers_only: bool,
    mut each: impl FnMut(&async_nats::jetstream::Message, u64),
) -> Result<(), NatsError> {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull};
    use futures::StreamExt as _;
    let stream = js
        .get_stream(names::kv_stream(bucket))
        .await
        .map_err(NatsError::unavailable)?;
    let mut consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: names::kv_subject(bucket, filter),
            deliver_policy: DeliverPolicy::LastPerSubject,
            headers_only,
            ..Default::default()
        })
        .await
        .map_err(NatsError::unavailable)?;
    let pending = consumer
        .info()
        .await
        .map_err(NatsError::unavailable)?
        .num_pending;
    if pending == 0 {
        return Ok(());
    }
    let mut messages = consumer.messages().await.map_err(NatsError::unavailable)?;
    while let Some(message) = messages.next().await {
        let message = message.map_err(NatsError::unavailable)?;
        let info = message.info().map_err(NatsError::unavailable)?;
        let (remaining, sequence) = (info.pending, info.stream_sequence);
        each(&message, sequence);
        if remaining == 0 {
            break;
        }
    }
    Ok(())
}

/// Deletes and purges are kept in the stream as markers with no value.
fn is_tombstone(message: &async_nats::jetstream::Message) -> bool {
    operation(message).is_some_and(|op| op != "PUT")
}

/// The KV operation a message stores (`PUT`, `DEL` or `PURGE`); a put may
/// carry none.
fn operation(message: &async_nats::jetstream::Message) -> Option<&str> {
    message
        .headers
        .as_ref()
        .and_then(|headers| headers.get("KV-Operation"))
        .map(|op| op.as_str())
}
