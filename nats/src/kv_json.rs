//! Records kept as JSON in KV buckets (assets, webhook deliveries,
//! endpoints): one read, one write, a compare-and-set change, or one pass
//! over many keys, with unreadable bytes reported as corrupt data naming
//! what they were meant to be; and the markers purges leave behind.

use std::time::Duration;

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

/// The key and latest value of every live key of `bucket` matching
/// `filter` (a key filter such as `<tenant>.*`), read straight off the
/// bucket's stream in one pass rather than a get per key; each key once.
pub(crate) async fn latest_matching(
    js: &async_nats::jetstream::Context,
    bucket: &str,
    filter: &str,
) -> Result<Vec<(String, bytes::Bytes)>, NatsError> {
    let prefix = names::kv_subject(bucket, "");
    let mut latest = LatestValues::default();
    for_each_latest(js, bucket, filter, false, LISTING_IDLE, |message, _| {
        let key = message.subject.strip_prefix(prefix.as_str());
        let key = key.unwrap_or(&message.subject).to_string();
        latest.add(
            key,
            (!is_tombstone(message)).then(|| message.payload.clone()),
        );
    })
    .await?;
    Ok(latest.live())
}

/// The values of a listing that read as `T`. One that does not (written
/// by a later release, say) is left out and logged with its key, so it
/// cannot hide all the others; `what` names the records in the log.
pub(crate) fn readable<T: DeserializeOwned>(
    values: &[(String, bytes::Bytes)],
    what: &str,
) -> Vec<T> {
    let read = |(key, bytes): &(String, bytes::Bytes)| match serde_json::from_slice(bytes) {
        Ok(record) => Some(record),
        Err(err) => {
            tracing::warn!(%key, "skipping an unreadable {what}: {err}");
            None
        }
    };
    values.iter().filter_map(read).collect()
}

/// A listing's values by key. A key written again during the pass comes
/// again: the last word wins, in the place of the first; a delete or purge
/// takes the key out.
#[derive(Default)]
struct LatestValues {
    values: Vec<(String, Option<bytes::Bytes>)>,
    places: std::collections::HashMap<String, usize>,
}

impl LatestValues {
    fn add(&mut self, key: String, value: Option<bytes::Bytes>) {
        match self.places.get(&key) {
            Some(&place) => self.values[place].1 = value,
            None => {
                self.places.insert(key.clone(), self.values.len());
                self.values.push((key, value));
            }
        }
    }

    fn live(self) -> Vec<(String, bytes::Bytes)> {
        let values = self.values.into_iter();
        values
            .filter_map(|(key, value)| Some((key, value?)))
            .collect()
    }
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
    for_each_latest(
        js,
        bucket,
        filter,
        true,
        LISTING_IDLE,
        |message, sequence| {
            if operation(message) == Some("PURGE") {
                markers.push(Marker {
                    subject: message.subject.to_string(),
                    sequence,
                });
            }
        },
    )
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

/// How many messages one pull of a listing asks for.
const LISTING_BATCH: usize = 512;

/// How long a listing waits for the server's next message before calling
/// the server unavailable rather than waiting on.
const LISTING_IDLE: Duration = Duration::from_secs(10);

/// How many passes a listing makes before giving up on a server that
/// stalls on purged keys (see [`pull_all`]).
const LISTING_PASSES: usize = 3;

/// Calls `each` with the latest message of every key of `bucket` matching
/// the key filter `filter` and its stream sequence, delete and purge
/// markers included, pulling batches from a consumer that delivers the last
/// message per subject (then any written during the pass). A pass that
/// stalls is made again with a fresh consumer; messages already handed to
/// `each` are not handed again. A server silent for `idle` is unavailable.
async fn for_each_latest(
    js: &async_nats::jetstream::Context,
    bucket: &str,
    filter: &str,
    headers_only: bool,
    idle: Duration,
    mut each: impl FnMut(&async_nats::jetstream::Message, u64),
) -> Result<(), NatsError> {
    let stream = js
        .get_stream_no_info(names::kv_stream(bucket))
        .await
        .map_err(NatsError::unavailable)?;
    let mut seen = std::collections::HashSet::new();
    let mut each_once = |message: &async_nats::jetstream::Message, sequence| {
        if seen.insert(sequence) {
            each(message, sequence);
        }
    };
    for _ in 0..LISTING_PASSES {
        let mut consumer = listing_consumer(&stream, bucket, filter, headers_only).await?;
        let pass = pull_all(&mut consumer, bucket, idle, &mut each_once).await;
        // The consumer would go by itself once idle; this spares the
        // server one per listing in the meantime.
        if let Err(err) = stream.delete_consumer(&consumer.cached_info().name).await {
            tracing::debug!(%bucket, %err, "listing consumer left to expire");
        }
        if pass? == Pass::Done {
            return Ok(());
        }
    }
    Err(NatsError::Unavailable(format!(
        "listing {bucket}: stalled {LISTING_PASSES} times on keys purged meanwhile"
    )))
}

/// How one pass of a listing went.
#[derive(Debug, PartialEq, Eq)]
enum Pass {
    Done,
    /// The server stopped short of keys it still counts: in a bucket
    /// keeping several values per key, it ends every pull at a latest
    /// value purged after the consumer was made, and never moves past it.
    Stalled,
}

/// Pulls every message the listing consumer has. The pass ends on a
/// message with nothing pending after it or, when another writer purged
/// the keys still to come, on an empty pull once the server counts
/// nothing left: messages gone after the count was taken never arrive, so
/// waiting for the count to run out would wait for ever. Without acks
/// nothing is sent twice, so a skipped consumer sequence is a message lost
/// on the way (a reconnect): the listing would have a hole, and fails.
async fn pull_all(
    consumer: &mut async_nats::jetstream::consumer::PullConsumer,
    bucket: &str,
    idle: Duration,
    each: &mut impl FnMut(&async_nats::jetstream::Message, u64),
) -> Result<Pass, NatsError> {
    let lost = |at: u64| NatsError::Unavailable(format!("listing {bucket}: message {at} lost"));
    if consumer.cached_info().num_pending == 0 {
        return Ok(Pass::Done);
    }
    let mut delivered = 0;
    loop {
        let mut batch = consumer
            .fetch()
            .max_messages(LISTING_BATCH)
            .messages()
            .await
            .map_err(NatsError::unavailable)?;
        let mut got = false;
        while let Some(message) = next_listed(&mut batch, bucket, idle).await? {
            let info = message.info().map_err(NatsError::unavailable)?;
            if info.consumer_sequence != delivered + 1 {
                return Err(lost(delivered + 1));
            }
            (delivered, got) = (info.consumer_sequence, true);
            each(&message, info.stream_sequence);
            if info.pending == 0 {
                return Ok(Pass::Done);
            }
        }
        if !got {
            let info = consumer.info().await.map_err(NatsError::unavailable)?;
            if info.delivered.consumer_sequence > delivered {
                return Err(lost(delivered + 1));
            }
            return Ok(if info.num_pending > 0 {
                Pass::Stalled
            } else {
                Pass::Done
            });
        }
    }
}

/// An ephemeral consumer, without acks, delivering the latest message of
/// every subject `filter` matches in `bucket`'s stream.
async fn listing_consumer(
    stream: &async_nats::jetstream::stream::Stream<()>,
    bucket: &str,
    filter: &str,
    headers_only: bool,
) -> Result<async_nats::jetstream::consumer::PullConsumer, NatsError> {
    use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
    stream
        .create_consumer(pull::Config {
            filter_subject: names::kv_subject(bucket, filter),
            deliver_policy: DeliverPolicy::LastPerSubject,
            ack_policy: AckPolicy::None,
            headers_only,
            memory_storage: true,
            num_replicas: 1,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(NatsError::unavailable)
}

/// The next message of a pull, or `None` once the pull is over; a server
/// silent for `idle` is unavailable.
async fn next_listed(
    batch: &mut async_nats::jetstream::consumer::pull::Batch,
    bucket: &str,
    idle: Duration,
) -> Result<Option<async_nats::jetstream::Message>, NatsError> {
    use futures::StreamExt as _;
    match tokio::time::timeout(idle, batch.next()).await {
        Ok(next) => next.transpose().map_err(NatsError::unavailable),
        Err(_) => Err(NatsError::Unavailable(format!(
            "listing {bucket}: no answer within {idle:?}"
        ))),
    }
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

#[cfg(test)]
mod tests {
    //! Listings against a real nats-server, for what only a server can do
    //! to them: take keys away in the middle of a pass, or stop answering.

    use super::*;

    #[test]
    fn a_key_listed_twice_keeps_its_last_value_in_its_first_place() {
        let mut latest = LatestValues::default();
        for (key, value) in [("a", Some("1")), ("b", Some("1")), ("c", Some("1"))] {
            latest.add(key.into(), value.map(bytes::Bytes::from));
        }
        // Written again during the pass: a updated, b deleted.
        latest.add("a".into(), Some("2".into()));
        latest.add("b".into(), None);
        let live = latest.live();
        let live: Vec<_> = live.iter().map(|(k, v)| (k.as_str(), &v[..])).collect();
        assert_eq!(live, [("a", &b"2"[..]), ("c", &b"1"[..])]);
    }

    /// More keys than one pull asks for, so the pass needs a second.
    const KEYS: usize = LISTING_BATCH * 2 + 100;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_listing_ends_when_the_keys_still_to_come_are_purged() -> anyhow::Result<()> {
        let server = crate::server::NatsServer::start_temporary()?;
        let js = async_nats::jetstream::new(async_nats::connect(server.url()).await?);
        filled_bucket(&js, 1).await?;

        // Another writer purges every key as the first arrives: the
        // listing has been told of more than it will ever get.
        let runtime = tokio::runtime::Handle::current();
        let mut seen = 0;
        let listing = for_each_latest(&js, "listing", "t.*", true, LISTING_IDLE, |_, _| {
            if seen == 0 {
                tokio::task::block_in_place(|| runtime.block_on(purge_all(&js))).expect("purged");
            }
            seen += 1;
        });
        tokio::time::timeout(Duration::from_secs(30), listing).await??;
        assert!((1..KEYS).contains(&seen), "{seen} of {KEYS} listed");

        // And once empty, a listing ends at once.
        let mut after = 0;
        for_each_latest(&js, "listing", "t.*", true, LISTING_IDLE, |_, _| after += 1).await?;
        assert_eq!(after, 0);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_listing_the_server_stops_answering_is_unavailable() -> anyhow::Result<()> {
        let server = crate::server::NatsServer::start_temporary()?;
        let js = async_nats::jetstream::new(async_nats::connect(server.url()).await?);
        filled_bucket(&js, 1).await?;

        // The server hangs (SIGSTOP) as the first key arrives: the rest of
        // the pass gets no answer. A short wait, so the test is quick; the
        // consumer's delete then waits out the request timeout.
        let idle = Duration::from_secs(1);
        let mut seen = 0;
        let listing = for_each_latest(&js, "listing", "t.*", true, idle, |_, _| {
            if seen == 0 {
                server.pause().expect("paused");
            }
            seen += 1;
        });
        let listed = tokio::time::timeout(Duration::from_secs(30), listing).await?;
        server.resume()?;
        assert!(
            matches!(listed, Err(NatsError::Unavailable(_))),
            "{listed:?}"
        );
        assert!((1..KEYS).contains(&seen), "{seen} of {KEYS} listed");
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_listing_goes_past_keys_purged_in_the_middle_of_a_pass() -> anyhow::Result<()> {
        let server = crate::server::NatsServer::start_temporary()?;
        let js = async_nats::jetstream::new(async_nats::connect(server.url()).await?);
        // Several values per key, as the job and endpoint buckets keep.
        let kv = filled_bucket(&js, 5).await?;

        // Keys of the second pull go as the first key arrives.
        let gone = LISTING_BATCH + 10..LISTING_BATCH + 60;
        let runtime = tokio::runtime::Handle::current();
        let mut listed = Vec::new();
        let listing = for_each_latest(&js, "listing", "t.*", true, LISTING_IDLE, |message, _| {
            if listed.is_empty() {
                let purges = gone.clone().map(|n| kv.purge(key_of(n)));
                let purged = futures::future::try_join_all(purges);
                tokio::task::block_in_place(|| runtime.block_on(purged)).expect("purged");
            }
            listed.push(message.subject.to_string());
        });
        tokio::time::timeout(Duration::from_secs(30), listing).await??;
        // Every key once: the purged ones as their purge markers.
        let count = listed.len();
        listed.sort();
        listed.dedup();
        assert_eq!((listed.len(), count), (KEYS, KEYS));
        Ok(())
    }

    /// Bucket `listing` keeping `history` values per key, with [`KEYS`]
    /// keys under `t.`.
    async fn filled_bucket(
        js: &async_nats::jetstream::Context,
        history: i64,
    ) -> anyhow::Result<kv::Store> {
        let config = kv::Config {
            bucket: "listing".into(),
            history,
            ..Default::default()
        };
        let kv = js.create_key_value(config).await?;
        let writes = (0..KEYS).map(|n| kv.put(key_of(n), "x".into()));
        futures::future::try_join_all(writes).await?;
        Ok(kv)
    }

    fn key_of(n: usize) -> String {
        format!("t.k{n:05}")
    }

    async fn purge_all(js: &async_nats::jetstream::Context) -> anyhow::Result<()> {
        js.get_stream_no_info(names::kv_stream("listing"))
            .await?
            .purge()
            .filter(names::kv_subject("listing", ">"))
            .await?;
        Ok(())
    }
}
