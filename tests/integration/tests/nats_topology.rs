//! The NATS layer against a real nats-server: records by compare-and-set,
//! events replayed then followed, work items deduplicated by job id.

use std::time::Duration;

use futures::StreamExt as _;
use reelmesh_integration_tests::{job_id_made, messages_under_job_key};
use reelmesh_nats::{
    EventKind, JobEvent, JobRecord, JobState, NatsError, Priority, Topology, TopologyConfig,
    WorkItem, server::NatsServer,
};
use reelmesh_proto::v1::JobSpec;

async fn topology() -> anyhow::Result<(NatsServer, Topology)> {
    let server = NatsServer::start_temporary()?;
    let topology = Topology::connect(&server.url(), &TopologyConfig::default()).await?;
    Ok((server, topology))
}

/// Stores under `key`, straight into the jobs bucket, a record as a later
/// release's might look to this one; returns the bucket.
async fn store_unreadable_record(
    topology: &Topology,
    key: String,
) -> anyhow::Result<async_nats::jetstream::kv::Store> {
    let js = async_nats::jetstream::new(topology.client.clone());
    let bucket = js.get_key_value(reelmesh_nats::names::JOBS_BUCKET).await?;
    bucket.put(key, r#"{"state":"teleported"}"#.into()).await?;
    Ok(bucket)
}

fn tenant() -> reelmesh_nats::TenantId {
    reelmesh_nats::TenantId::parse("acme").expect("tenant")
}

#[tokio::test]
async fn events_are_replayed_then_followed() -> anyhow::Result<()> {
    let (_server, topology) = topology().await?;
    let job = reelmesh_nats::JobId::new();
    for kind in [EventKind::Queued, EventKind::Started { attempt: 1 }] {
        topology
            .events
            .publish(&JobEvent::now(&tenant(), &job, kind))
            .await?;
    }
    let follow = topology.events.follow(&tenant(), &job, 0).await?;
    let mut follow = Box::pin(follow);
    let first = tokio::time::timeout(Duration::from_secs(5), follow.next())
        .await?
        .expect("event")?;
    assert_eq!(first.event.kind, EventKind::Queued);
    let second = tokio::time::timeout(Duration::from_secs(5), follow.next())
        .await?
        .expect("event")?;
    assert_eq!(second.event.kind, EventKind::Started { attempt: 1 });
    // Resuming after the first event starts at the second.
    let resumed = topology
        .events
        .follow(&tenant(), &job, first.sequence)
        .await?;
    let resumed = tokio::time::timeout(Duration::from_secs(5), Box::pin(resumed).next())
        .await?
        .expect("event")?;
    assert_eq!(resumed, second);
    topology
        .events
        .publish(&JobEvent::now(
            &tenant(),
            &job,
            EventKind::Failed { error: "x".into() },
        ))
        .await?;
    let live = tokio::time::timeout(Duration::from_secs(5), follow.next())
        .await?
        .expect("event")?;
    assert!(matches!(live.event.kind, EventKind::Failed { .. }));
    assert!(first.sequence < second.sequence && second.sequence < live.sequence);
    Ok(())
}

#[tokio::test]
async fn a_second_terminal_event_is_dropped() -> anyhow::Result<()> {
    let (_server, topology) = topology().await?;
    let job = reelmesh_nats::JobId::new();
    let first = topology
        .events
        .publish(&JobEvent::now(&tenant(), &job, EventKind::Cancelled))
        .await?;
    let second = topology
        .events
        .publish(&JobEvent::now(
            &tenant(),
            &job,
            EventKind::Failed {
                error: "late".into(),
            },
        ))
        .await?;
    assert_eq!(
        first, second,
        "the duplicate should be acknowledged with the original sequence"
    );
    Ok(())
}

#[tokio::test]
async fn records_change_by_compare_and_set_and_terminal_is_final() -> anyhow::Result<()> {
    let (_server, topology) = topology().await?;
    let record = JobRecord::new(tenant(), JobSpec::default());
    topology.jobs.create(&record).await?;
    assert!(matches!(
        topology.jobs.create(&record).await,
        Err(NatsError::JobExists(_))
    ));

    // Two writers race from the same revision: one wins, the other re-reads.
    let stale = topology
        .jobs
        .get(&tenant(), &record.id)
        .await?
        .expect("record");
    topology
        .jobs
        .move_to(&tenant(), &record.id, JobState::Cancelled)
        .await?;
    let lost = topology
        .jobs
        .move_to(&tenant(), &record.id, JobState::Running)
        .await;
    assert!(matches!(lost, Err(NatsError::Transition(_))), "{lost:?}");
    let now = topology
        .jobs
        .get(&tenant(), &record.id)
        .await?
        .expect("record");
    assert_eq!(now.record.state, JobState::Cancelled);
    assert!(now.revision > stale.revision);

    let listed = topology.jobs.list(&tenant()).await?;
    assert_eq!(listed.len(), 1);
    let other = reelmesh_nats::TenantId::parse("other").expect("tenant");
    assert!(topology.jobs.list(&other).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_record_that_cannot_be_read_does_not_hide_the_others() -> anyhow::Result<()> {
    let (_server, topology) = topology().await?;
    let job = JobRecord::new(tenant(), JobSpec::default());
    topology.jobs.create(&job).await?;
    let unreadable = reelmesh_nats::JobId::new();
    let key = reelmesh_nats::names::job_key(&tenant(), &unreadable);
    store_unreadable_record(&topology, key).await?;

    let ids = |records: Vec<JobRecord>| {
        records
            .into_iter()
            .map(|r| r.id.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(topology.jobs.list(&tenant()).await?),
        [job.id.to_string()]
    );
    assert_eq!(ids(topology.jobs.list_all().await?), [job.id.to_string()]);
    let read = topology.jobs.get(&tenant(), &unreadable).await;
    assert!(matches!(read, Err(NatsError::Corrupt(_))), "{read:?}");

    // Nor does an endpoint: notify routes every tenant's by the whole list.
    let js = async_nats::jetstream::new(topology.client.clone());
    let endpoints = js
        .get_key_value(reelmesh_nats::names::ENDPOINTS_BUCKET)
        .await?;
    endpoints
        .put(format!("{}.ep1", tenant()), "[]".into())
        .await?;
    assert!(topology.endpoints.list(&tenant()).await?.is_empty());
    assert!(topology.endpoints.list_all().await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn the_same_job_is_queued_once() -> anyhow::Result<()> {
    let (_server, topology) = topology().await?;
    let item = WorkItem {
        tenant: tenant(),
        job_id: reelmesh_nats::JobId::new(),
        round: 0,
    };
    topology.work.enqueue(&item, Priority::Normal).await?;
    topology.work.enqueue(&item, Priority::Normal).await?;
    assert_eq!(topology.work.depth().await?, 1);
    assert_eq!(topology.work.tenant_depth(&tenant()).await?, 1);
    let other = reelmesh_nats::TenantId::parse("other").expect("tenant");
    assert_eq!(topology.work.tenant_depth(&other).await?, 0);
    // A RetryJob round is a new message.
    let next_round = WorkItem { round: 1, ..item };
    topology.work.enqueue(&next_round, Priority::Normal).await?;
    assert_eq!(topology.work.depth().await?, 2);
    Ok(())
}

/// Gives a consumer settings an earlier release may have left it with.
async fn set_back(
    stream: &async_nats::jetstream::stream::Stream,
    name: &str,
    max_ack_pending: i64,
    ack_wait: Duration,
) -> anyhow::Result<()> {
    use async_nats::jetstream::consumer::pull;
    let consumer = stream.get_consumer::<pull::Config>(name).await;
    let consumer = consumer.map_err(|err| anyhow::anyhow!("{err}"))?;
    let mut old = consumer.cached_info().config.clone();
    (old.max_ack_pending, old.ack_wait) = (max_ack_pending, ack_wait);
    stream.update_consumer(old).await?;
    Ok(())
}

/// Gives a priority's render consumer the filter of releases before work
/// subjects named the job.
async fn set_filter_back(
    stream: &async_nats::jetstream::stream::Stream,
    priority: Priority,
) -> anyhow::Result<()> {
    use async_nats::jetstream::consumer::pull;
    let name = reelmesh_nats::names::render_consumer(priority);
    let consumer = stream.get_consumer::<pull::Config>(&name).await;
    let consumer = consumer.map_err(|err| anyhow::anyhow!("{err}"))?;
    let mut old = consumer.cached_info().config.clone();
    old.filter_subject = format!("reelmesh.work.{}.*", priority.name());
    stream.update_consumer(old).await?;
    Ok(())
}

#[tokio::test]
async fn render_consumers_of_an_earlier_release_are_brought_up_to_date() -> anyhow::Result<()> {
    let (server, topology) = topology().await?;
    let js = async_nats::jetstream::new(topology.client.clone());
    let stream = js.get_stream(reelmesh_nats::names::WORK_STREAM).await?;
    let name = reelmesh_nats::names::render_consumer(Priority::Normal);
    topology.work.render_consumers().await?;
    // As an earlier release left it: the default cap on ack-pending work
    // and another ack wait.
    set_back(&stream, &name, 1000, Duration::from_secs(90)).await?;
    // And its filter, from before work subjects named the job.
    set_filter_back(&stream, Priority::Normal).await?;

    let config = TopologyConfig {
        work_ack_wait: Duration::from_secs(45),
        ..TopologyConfig::default()
    };
    let upgraded = Topology::connect(&server.url(), &config).await?;
    for mut consumer in upgraded.work.render_consumers().await? {
        let info = consumer.info().await?;
        assert_eq!(info.config.max_ack_pending, -1, "{}", info.name);
        assert!(info.config.filter_subject.ends_with(".>"), "{info:?}");
        assert_eq!(
            info.config.ack_wait,
            Duration::from_secs(45),
            "{}",
            info.name
        );
    }
    Ok(())
}

#[tokio::test]
async fn work_queued_by_a_new_gateway_before_any_new_worker_waits_for_one() -> anyhow::Result<()> {
    let (server, topology) = topology().await?;
    let js = async_nats::jetstream::new(topology.client.clone());
    let stream = js.get_stream(reelmesh_nats::names::WORK_STREAM).await?;
    let name = reelmesh_nats::names::render_consumer(Priority::Normal);
    topology.work.render_consumers().await?;
    // The filter an earlier release's workers gave the shared consumer.
    set_filter_back(&stream, Priority::Normal).await?;
    let record = JobRecord::new(tenant(), JobSpec::default());
    let item = WorkItem {
        tenant: record.tenant.clone(),
        job_id: record.id.clone(),
        round: 0,
    };
    topology.work.enqueue(&item, Priority::Normal).await?;
    assert_eq!(topology.work.tenant_depth(&tenant()).await?, 1);

    // A worker of this release declares the consumers: the item is taken.
    let upgraded = Topology::connect(&server.url(), &TopologyConfig::default()).await?;
    let consumers = upgraded.work.render_consumers().await?;
    let normal = consumers
        .into_iter()
        .find(|c| c.cached_info().name == name)
        .expect("the normal queue's consumer");
    let mut batch = normal
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(5))
        .messages()
        .await?;
    let taken = batch.next().await.expect("the item");
    let taken = taken.map_err(|err| anyhow::anyhow!("{err}"))?;
    assert_eq!(WorkItem::decode(&taken.payload)?, item);
    Ok(())
}

#[tokio::test]
async fn notify_consumers_of_an_earlier_release_are_brought_up_to_date() -> anyhow::Result<()> {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull};
    use reelmesh_nats::names;
    let (server, topology) = topology().await?;
    let js = async_nats::jetstream::new(topology.client.clone());
    topology.notify_send_consumer().await?;
    // As an earlier release left them: the send consumer capped at 100 000
    // unacknowledged webhooks with another ack wait, and the router's
    // consumer made to start after an older consumer's last event.
    let sends = js.get_stream(names::WEBHOOK_STREAM).await?;
    set_back(
        &sends,
        names::NOTIFY_SEND_CONSUMER,
        100_000,
        Duration::from_secs(90),
    )
    .await?;
    let events = js.get_stream(names::EVENTS_STREAM).await?;
    let started_at = DeliverPolicy::ByStartSequence { start_sequence: 7 };
    events
        .create_consumer(pull::Config {
            durable_name: Some(names::NOTIFY_EVENTS_CONSUMER.into()),
            deliver_policy: started_at,
            ack_policy: async_nats::jetstream::consumer::AckPolicy::All,
            ack_wait: Duration::from_secs(90),
            ..Default::default()
        })
        .await?;

    let config = TopologyConfig {
        webhook_ack_wait: Duration::from_secs(45),
        ..TopologyConfig::default()
    };
    let upgraded = Topology::connect(&server.url(), &config).await?;
    let send = upgraded.notify_send_consumer().await?.info().await?.clone();
    assert_eq!(
        send.config.max_ack_pending, -1,
        "one dead receiver must not stall all"
    );
    assert_eq!(send.config.ack_wait, Duration::from_secs(45));
    let router = upgraded
        .notify_events_consumer(&reelmesh_nats::TERMINAL_KIND_NAMES)
        .await?
        .info()
        .await?
        .clone();
    // Due again before another router takes over (see the constant).
    let ack_wait = reelmesh_nats::topology::NOTIFY_ROUTER_ACK_WAIT;
    assert_eq!(router.config.ack_wait, ack_wait);
    assert!(ack_wait < reelmesh_nats::topology::NOTIFY_ROUTER_FAILOVER);
    assert_eq!(
        router.config.priority_groups,
        vec![reelmesh_nats::topology::NOTIFY_ROUTER_GROUP.to_string()]
    );
    assert_eq!(
        router.config.deliver_policy, started_at,
        "where it reads from stays"
    );
    assert_eq!(
        router.config.filter_subjects,
        [
            "reelmesh.events.*.*.completed",
            "reelmesh.events.*.*.failed",
            "reelmesh.events.*.*.cancelled"
        ]
    );
    Ok(())
}

#[tokio::test]
async fn an_unreadable_work_item_is_dropped_not_retried() -> anyhow::Result<()> {
    let cluster = reelmesh_integration_tests::TestCluster::start().await?;
    let client = async_nats::connect(cluster.cluster.nats.url()).await?;
    let js = async_nats::jetstream::new(client);
    let subject = reelmesh_nats::names::work_subject(
        Priority::Normal,
        &tenant(),
        &reelmesh_nats::JobId::new(),
    );
    js.publish(subject, "not json".into()).await?.await?;
    // Terminated on the first delivery, so the queue settles instead of
    // holding a message that is redelivered until max_deliver.
    cluster.wait_until_work_settled().await?;
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream(
            &reelmesh_nats::names::render_consumer(Priority::Normal),
            reelmesh_nats::names::WORK_STREAM,
        )
        .await?;
    let info = consumer.info().await?;
    assert_eq!(info.num_redelivered, 0, "{info:?}");
    Ok(())
}

/// Only the item's own bytes are a reason to drop it. A job whose record
/// the worker cannot read (a later release's, say) keeps its item, and runs
/// once the record reads again.
#[tokio::test]
async fn a_job_whose_record_cannot_be_read_stays_queued_until_it_can() -> anyhow::Result<()> {
    let cluster = reelmesh_integration_tests::TestCluster::start().await?;
    let topology =
        Topology::connect(&cluster.cluster.nats.url(), &TopologyConfig::default()).await?;
    let job = JobRecord::new(tenant(), reelmesh_integration_tests::noop(0.0));
    let bucket = store_unreadable_record(&topology, job.key()).await?;
    topology
        .work
        .enqueue(&WorkItem::of(&job), Priority::Normal)
        .await?;

    let js = async_nats::jetstream::new(topology.client.clone());
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream(
            &reelmesh_nats::names::render_consumer(Priority::Normal),
            reelmesh_nats::names::WORK_STREAM,
        )
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while consumer.info().await?.num_redelivered == 0 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "never offered again: {:?}",
            js.get_stream(reelmesh_nats::names::WORK_STREAM)
                .await?
                .info()
                .await?
                .state
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A readable record in its place (create takes a deleted key).
    bucket.delete(job.key()).await?;
    topology.jobs.create(&job).await?;
    cluster.wait_until_work_settled().await?;
    let ended = topology.jobs.get(&tenant(), &job.id).await?.expect("kept");
    assert_eq!(ended.record.state, JobState::Completed, "{ended:?}");
    Ok(())
}

/// A slot held by a job whose record cannot be read (most likely a later
/// release's running job) is not taken, and is no error: the next job
/// waits as at any limit.
#[tokio::test]
async fn a_slot_held_by_a_job_whose_record_cannot_be_read_is_kept() -> anyhow::Result<()> {
    use reelmesh_nats::Claim;
    let (_server, topology) = topology().await?;
    let holder = JobRecord::new(tenant(), JobSpec::default());
    let waiting = JobRecord::new(tenant(), JobSpec::default());
    topology.jobs.create(&waiting).await?;
    let claim = topology.running.claim(&tenant(), &holder.id, 1).await?;
    assert!(matches!(claim, Claim::Held(_)), "{claim:?}");
    store_unreadable_record(&topology, holder.key()).await?;
    let claim = topology.running.claim(&tenant(), &waiting.id, 1).await?;
    assert_eq!(claim, Claim::Full);
    Ok(())
}

#[tokio::test]
async fn running_slots_are_held_once_and_taken_over_only_from_jobs_not_running()
-> anyhow::Result<()> {
    use reelmesh_nats::{Claim, JobId};
    let (_server, topology) = topology().await?;
    let mut jobs: Vec<JobId> = Vec::new();
    for _ in 0..4 {
        let record = JobRecord::new(tenant(), JobSpec::default());
        topology.jobs.create(&record).await?;
        jobs.push(record.id);
    }
    let slots = &topology.running;
    let held = |claim: Claim| match claim {
        Claim::Held(slot) => slot,
        Claim::Full => panic!("no slot"),
    };

    // Two slots, two running jobs: a third job waits.
    let first = held(slots.claim(&tenant(), &jobs[0], 2).await?);
    let running = JobState::Running;
    topology.jobs.move_to(&tenant(), &jobs[0], running).await?;
    let second = held(slots.claim(&tenant(), &jobs[1], 2).await?);
    topology.jobs.move_to(&tenant(), &jobs[1], running).await?;
    assert_ne!(first.index, second.index);
    assert_eq!(slots.claim(&tenant(), &jobs[2], 2).await?, Claim::Full);
    let other = reelmesh_nats::TenantId::parse("other").expect("tenant");
    assert!(matches!(
        slots.claim(&other, &jobs[2], 2).await?,
        Claim::Held(_)
    ));

    // Job 0's item came back after its worker stopped answering: the job
    // re-takes its own slot, and the first worker's release frees nothing.
    let again = held(slots.claim(&tenant(), &jobs[0], 2).await?);
    assert_eq!(again.index, first.index);
    assert!(!slots.release(&first).await?, "the slot changed hands");
    assert_eq!(slots.claim(&tenant(), &jobs[2], 2).await?, Claim::Full);

    // Job 0 ended but its worker died before releasing: job 2 takes over.
    topology
        .jobs
        .move_to(&tenant(), &jobs[0], JobState::Completed)
        .await?;
    let taken = held(slots.claim(&tenant(), &jobs[2], 2).await?);
    assert_eq!(taken.index, first.index);
    assert!(!slots.release(&again).await?, "taken over");

    // Job 2 is still QUEUED (its worker is about to begin it): not stale.
    assert_eq!(slots.claim(&tenant(), &jobs[3], 2).await?, Claim::Full);
    assert!(slots.release(&second).await?);
    let freed = held(slots.claim(&tenant(), &jobs[3], 2).await?);
    assert_eq!(freed.index, second.index);

    // Waiting work naked with a delay stays ack-pending: the queues must
    // not stop delivering at some number of such messages.
    for consumer in topology.work.render_consumers().await? {
        assert_eq!(consumer.cached_info().config.max_ack_pending, -1);
    }
    Ok(())
}

#[tokio::test]
async fn a_record_is_purged_only_at_the_revision_read() -> anyhow::Result<()> {
    let (_server, topology) = topology().await?;
    let mut job = JobRecord::new(tenant(), JobSpec::default());
    job.fail("out of attempts")?;
    let read = topology.jobs.create(&job).await?;
    // A RetryJob between the retention sweeper's read and its purge.
    let retried = topology
        .jobs
        .modify(&tenant(), &job.id, |record| {
            record.requeue()?;
            Ok(true)
        })
        .await?;
    assert!(!topology.jobs.purge_at(&tenant(), &job.id, read).await?);
    let kept = topology.jobs.get(&tenant(), &job.id).await?.expect("kept");
    assert_eq!(kept.record.state, JobState::Queued);
    assert!(
        topology
            .jobs
            .purge_at(&tenant(), &job.id, retried.revision)
            .await?
    );
    assert!(topology.jobs.get(&tenant(), &job.id).await?.is_none());
    Ok(())
}

/// How many messages the job-record bucket holds under a job's key.
async fn kept_under(topology: &Topology, job: &reelmesh_nats::JobId) -> anyhow::Result<u64> {
    messages_under_job_key(&topology.client, &tenant(), job).await
}

#[tokio::test]
async fn purged_records_leave_nothing_and_barred_jobs_stay_barred() -> anyhow::Result<()> {
    let (_server, topology) = topology().await?;
    let jobs = &topology.jobs;
    let ended = |age| -> anyhow::Result<JobRecord> {
        let mut job = JobRecord::new(tenant(), JobSpec::default());
        job.id = job_id_made(age)?;
        job.fail("out of attempts")?;
        Ok(job)
    };
    // Removed by the retention sweep, whatever their age.
    let (old, young) = (ended(Duration::from_secs(3600))?, ended(Duration::ZERO)?);
    for job in [&old, &young] {
        let revision = jobs.create(job).await?;
        assert!(jobs.purge_at(&tenant(), &job.id, revision).await?);
        assert_eq!(kept_under(&topology, &job.id).await?, 1, "a purge marker");
    }
    // Barred long ago (its create never answered), and one still stored.
    let never = ended(Duration::from_secs(3600))?;
    assert!(jobs.bar(&tenant(), &never.id).await?);
    let kept = ended(Duration::from_secs(3600))?;
    jobs.create(&kept).await?;

    assert_eq!(jobs.remove_purge_markers().await?, 2);
    assert_eq!(kept_under(&topology, &old.id).await?, 0);
    assert_eq!(kept_under(&topology, &young.id).await?, 0);
    assert!(
        jobs.get(&tenant(), &kept.id).await?.is_some(),
        "records stay"
    );
    // A client may deliver a create it buffered at any time: the bar stays
    // and turns it away.
    assert_eq!(kept_under(&topology, &never.id).await?, 1);
    let late = jobs.send_create(&never).await?.durable().await;
    assert!(matches!(late, Err(NatsError::JobExists(_))), "{late:?}");
    assert_eq!(jobs.remove_purge_markers().await?, 0, "nothing left");
    Ok(())
}

#[tokio::test]
async fn a_write_answered_too_late_is_found_stored() -> anyhow::Result<()> {
    let (server, topology) = topology().await?;
    let job = JobRecord::new(tenant(), JobSpec::default());
    let revision = topology.jobs.create(&job).await?;
    let mut cancelled = job.clone();
    cancelled.cancel()?;
    server.pause()?;
    // Sent (one poll puts it on the connection) while the server is
    // stopped, so its ack wait runs out before the server sees it.
    let write = topology.jobs.replace(&cancelled, revision);
    tokio::pin!(write);
    assert!(futures::poll!(&mut write).is_pending());
    // A read sent after it times out after it: then the write's wait is
    // over too, and the server can have it.
    let probe = topology.jobs.get(&tenant(), &job.id).await;
    assert!(matches!(probe, Err(NatsError::Unavailable(_))), "{probe:?}");
    server.resume()?;
    let written = write.await?;
    let stored = topology
        .jobs
        .get(&tenant(), &job.id)
        .await?
        .expect("stored");
    assert_eq!(written, Some(stored.revision));
    assert_eq!(stored.record.state, JobState::Cancelled);
    Ok(())
}

#[tokio::test]
async fn only_a_job_never_stored_is_barred() -> anyhow::Result<()> {
    let (_server, topology) = topology().await?;
    let stored = JobRecord::new(tenant(), JobSpec::default());
    topology.jobs.create(&stored).await?;
    // Its create landed just before the bar: the record stays.
    assert!(!topology.jobs.bar(&tenant(), &stored.id).await?);
    assert!(topology.jobs.get(&tenant(), &stored.id).await?.is_some());
    let never = JobRecord::new(tenant(), JobSpec::default());
    assert!(topology.jobs.bar(&tenant(), &never.id).await?);
    // Barred again by a gateway taking over after the first went down.
    assert!(topology.jobs.bar(&tenant(), &never.id).await?);
    let late = topology.jobs.send_create(&never).await?.durable().await;
    assert!(matches!(late, Err(NatsError::JobExists(_))), "{late:?}");
    Ok(())
}

#[tokio::test]
async fn an_idempotency_claim_is_released_only_by_the_job_it_names() -> anyhow::Result<()> {
    let (_server, topology) = topology().await?;
    let keys = &topology.idempotency;
    let [first, second, third] = [(); 3].map(|()| reelmesh_nats::JobId::new());
    assert_eq!(keys.claim(&tenant(), "order-7", &first).await?, None);
    // Another gateway takes the claim over (the first job never stored)...
    assert!(
        keys.take_over(&tenant(), "order-7", &first, &second)
            .await?
    );
    // ...and the first submit, held up until now, gives its claim up.
    assert!(!keys.release(&tenant(), "order-7", &first).await?);
    let holder = keys.claim(&tenant(), "order-7", &third).await?;
    assert_eq!(holder, Some(second.clone()), "the second job keeps the key");
    assert!(keys.release(&tenant(), "order-7", &second).await?);
    assert_eq!(keys.claim(&tenant(), "order-7", &third).await?, None);
    Ok(())
}
