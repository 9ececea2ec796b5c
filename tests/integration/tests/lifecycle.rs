//! A job's life through the real services: retries and their recorded
//! errors, dead letters and RetryJob, idempotent submits under concurrency,
//! priorities, the tenant limits (on active and on running jobs) and
//! resuming a watch. Noop jobs stand in for renders where only the job's
//! path is under test.

use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use futures::StreamExt as _;
use reelmesh_cli::{ReelmeshClient, client::asset_source};
use reelmesh_integration_tests::{
    KEY_A, TestCluster, event_kind_name, job_id_made, messages_under_job_key, started,
};
use reelmesh_nats::JobState;
use reelmesh_proto::v1::{self as pb, job_event::Kind, job_spec::Operation};

fn noop(seconds: f64, fail_attempts: u32) -> pb::JobSpec {
    pb::JobSpec {
        operation: Some(Operation::Noop(pb::Noop {
            seconds,
            fail_attempts,
        })),
        ..Default::default()
    }
}

/// The tenant `KEY_A` maps to.
fn tenant_a() -> reelmesh_nats::TenantId {
    reelmesh_nats::TenantId::parse("tenant-a").expect("tenant")
}

/// A connection of the test's own to the cluster's NATS, to set a job up
/// or look at it as the services cannot.
async fn topology_of(cluster: &TestCluster) -> anyhow::Result<reelmesh_nats::Topology> {
    let url = cluster.cluster.nats.url();
    let config = reelmesh_nats::TopologyConfig::default();
    Ok(reelmesh_nats::Topology::connect(&url, &config).await?)
}

/// Every event of a job until its watch ends.
async fn events_of(client: &mut ReelmeshClient, id: &str) -> anyhow::Result<Vec<pb::JobEvent>> {
    let stream = client.watch(id).await?;
    let events = tokio::time::timeout(Duration::from_secs(60), stream.collect::<Vec<_>>()).await?;
    Ok(events.into_iter().collect::<Result<_, _>>()?)
}

fn count(events: &[pb::JobEvent], is: fn(&Kind) -> bool) -> usize {
    events
        .iter()
        .filter(|e| e.kind.as_ref().is_some_and(is))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_retried_and_each_error_is_kept() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let mut client = cluster.client(KEY_A).await?;
    let job = client.submit(noop(0.0, 2)).await?;
    let events = events_of(&mut client, &job.id).await?;
    let job = client.get(&job.id).await?;
    assert_eq!(job.state(), pb::JobState::Completed, "{job:?}");
    assert_eq!(job.max_attempts, 3);
    let errors: Vec<_> = job.attempts.iter().map(|a| a.error.as_str()).collect();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors[0].contains("fails, as the job's fail_attempts asks") && errors[2].is_empty());
    assert!(job.attempts.iter().all(|a| a.ended_at.is_some()));
    assert_eq!(count(&events, |k| matches!(k, Kind::Started(_))), 3);
    assert_eq!(count(&events, |k| matches!(k, Kind::Retrying(_))), 2);
    assert_eq!(count(&events, |k| matches!(k, Kind::Completed(_))), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_attempts_is_a_listable_dead_letter_that_retry_job_requeues() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let mut client = cluster.client(KEY_A).await?;
    let mut spec = noop(0.0, 3);
    spec.max_attempts = 2;
    let job = client.submit(spec).await?;
    events_of(&mut client, &job.id).await?;
    let failed = client.get(&job.id).await?;
    assert_eq!(failed.state(), pb::JobState::Failed);
    assert!(
        failed.error.contains("gave up after 2 attempts"),
        "{}",
        failed.error
    );
    let dead = client.list(pb::JobState::Failed, 10).await?;
    assert_eq!(dead.jobs.len(), 1);
    assert_eq!(dead.jobs[0].id, job.id);

    // A new round with a fresh budget of 2: attempt 3 still fails (noop
    // fails the first 3), attempt 4 succeeds.
    let requeued = client.retry(&job.id).await?;
    assert_eq!(requeued.state(), pb::JobState::Queued);
    let events = events_of(&mut client, &job.id).await?;
    assert!(matches!(
        events.last().and_then(|e| e.kind.as_ref()),
        Some(Kind::Completed(_))
    ));
    let done = client.get(&job.id).await?;
    assert_eq!(done.state(), pb::JobState::Completed);
    assert_eq!(done.attempts.len(), 4, "earlier attempts stay on the job");
    let again = client
        .retry(&job.id)
        .await
        .expect_err("completed jobs are not retried");
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_not_retried() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let mut client = cluster.client(KEY_A).await?;
    let spec = pb::JobSpec {
        operation: Some(Operation::Trim(pb::Trim {
            input: Some(asset_source("in/missing.mp4")),
            start_seconds: 0.0,
            end_seconds: 1.0,
        })),
        ..Default::default()
    };
    let job = client.submit(spec).await?;
    events_of(&mut client, &job.id).await?;
    let job = client.get(&job.id).await?;
    assert_eq!(job.state(), pb::JobState::Failed);
    assert_eq!(job.attempts.len(), 1, "{job:?}");
    assert!(job.error.contains("in/missing.mp4"), "{}", job.error);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_with_duplicate_keys_make_one_job_per_key() -> anyhow::Result<()> {
    let cluster = TestCluster::start_with(|config| config.render.concurrency = 4).await?;
    let client = cluster.client(KEY_A).await?;
    // 200 submits at once over 50 keys, four each.
    let submits = (0..200).map(|i| {
        let mut client = client.clone();
        let key = format!("order-{}", i % 50);
        async move { client.submit_once(noop(0.0, 0), &key).await }
    });
    let jobs = futures::future::try_join_all(submits).await?;
    let mut ids: Vec<_> = jobs.iter().map(|job| job.id.clone()).collect();
    for key in 0..50 {
        let same: Vec<_> = ids.iter().skip(key).step_by(50).collect();
        assert!(same.windows(2).all(|w| w[0] == w[1]), "key {key}: {same:?}");
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 50, "one job per key");
    cluster.wait_until_work_settled().await?;
    let mut client = client.clone();
    let listed = client.list(pb::JobState::Unspecified, 500).await?;
    assert_eq!(listed.jobs.len(), 50, "nothing else was stored");
    for job in &listed.jobs {
        assert_eq!(job.state(), pb::JobState::Completed, "{job:?}");
        assert_eq!(job.attempts.len(), 1, "each ran once: {job:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submits_racing_for_a_tenants_last_places_never_pass_its_limit() -> anyhow::Result<()> {
    const LIMIT: usize = 5;
    // No workers: nothing ends, so the limit is all that decides.
    let cluster = TestCluster::start_without_render(|config| {
        config.gateway.limits.max_active_jobs_per_tenant = LIMIT as u64;
    })
    .await?;
    let client = cluster.client(KEY_A).await?;
    let burst = (0..40).map(|_| {
        let mut client = client.clone();
        async move { client.submit(noop(0.0, 0)).await }
    });
    let mut accepted = 0;
    for submitted in futures::future::join_all(burst).await {
        match submitted {
            Ok(_) => accepted += 1,
            Err(status) => assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}"),
        }
    }
    // A refusal in the burst may come one early (a job counted both in
    // the read and in flight); one at a time now, the rest fill up.
    let mut client = client.clone();
    while client.submit(noop(0.0, 0)).await.is_ok() {
        accepted += 1;
    }
    assert_eq!(accepted, LIMIT);
    let listed = client.list(pb::JobState::Unspecified, 100).await?;
    assert_eq!(listed.jobs.len(), LIMIT);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_job_counts_against_its_tenants_limit() -> anyhow::Result<()> {
    let cluster = TestCluster::start_with(|config| {
        config.gateway.limits.max_active_jobs_per_tenant = 2;
        config.render.concurrency = 1;
    })
    .await?;
    let mut client = cluster.client(KEY_A).await?;
    let mut spec = noop(0.0, 1);
    spec.max_attempts = 1;
    let failed = client.submit(spec).await?;
    events_of(&mut client, &failed.id).await?;
    let busy = [
        client.submit(noop(30.0, 0)).await?,
        client.submit(noop(30.0, 0)).await?,
    ];
    let refused = client.retry(&failed.id).await.expect_err("tenant full");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    assert_eq!(client.get(&failed.id).await?.state(), pb::JobState::Failed);

    for job in &busy {
        client.cancel(&job.id).await?;
    }
    cluster.wait_until_work_settled().await?;
    client.retry(&failed.id).await?;
    let events = events_of(&mut client, &failed.id).await?;
    assert_eq!(events.last().map(event_kind_name), Some("completed"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_cut_short_before_its_event_is_finished_by_the_next() -> anyhow::Result<()> {
    // No workers: only a cancel can send the event and take the item out.
    let cluster = TestCluster::start_without_render(|_| {}).await?;
    let mut client = cluster.client(KEY_A).await?;
    let nats = topology_of(&cluster).await?;
    let job = client.submit(noop(0.0, 0)).await?;
    // A cancel whose compare-and-set landed, then nothing more (its
    // gateway killed, or NATS failing as it sent the event).
    let id = reelmesh_nats::JobId::parse(&job.id).expect("id");
    nats.jobs
        .modify(&tenant_a(), &id, |record| {
            record.cancel()?;
            Ok(true)
        })
        .await?;
    assert_eq!(nats.work.tenant_depth(&tenant_a()).await?, 1);

    // The client, told UNAVAILABLE, cancels again.
    for _ in 0..2 {
        let cancelled = client.cancel(&job.id).await?;
        assert_eq!(cancelled.state(), pb::JobState::Cancelled);
        let events = events_of(&mut client, &job.id).await?;
        let kinds: Vec<_> = events.iter().map(event_kind_name).collect();
        assert_eq!(kinds, ["queued", "cancelled"]);
        assert_eq!(nats.work.tenant_depth(&tenant_a()).await?, 0);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_whose_job_could_not_be_queued_leaves_its_key_to_the_next() -> anyhow::Result<()> {
    // No limit, so the submit counts nothing in the work stream first.
    let cluster = TestCluster::start_without_render(|config| {
        config.gateway.limits.max_active_jobs_per_tenant = 0;
    })
    .await?;
    let mut client = cluster.client(KEY_A).await?;
    // The work stream gone: a record is stored, its work item is not.
    let js = async_nats::jetstream::new(async_nats::connect(cluster.cluster.nats.url()).await?);
    js.delete_stream(reelmesh_nats::names::WORK_STREAM).await?;
    let refused = client
        .submit_once(noop(0.0, 0), "order-9")
        .await
        .expect_err("not queued");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused}");
    let failed = client.list(pb::JobState::Failed, 10).await?.jobs;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].error.contains("could not be queued"),
        "{failed:?}"
    );

    // Back (declared again), the client's retry with the key makes a job
    // that runs, not the failed one again.
    topology_of(&cluster).await?;
    let job = client.submit_once(noop(0.0, 0), "order-9").await?;
    assert_ne!(job.id, failed[0].id);
    assert_eq!(job.state(), pb::JobState::Queued);
    let again = client.submit_once(noop(0.0, 0), "order-9").await?;
    assert_eq!(again.id, job.id, "the key now names the new job");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cancelled_while_queued_leaves_the_queue_at_once() -> anyhow::Result<()> {
    // No workers: only the cancel can take a job's item out of the queue.
    let cluster = TestCluster::start_without_render(|config| {
        config.gateway.limits.max_active_jobs_per_tenant = 2;
    })
    .await?;
    let mut client = cluster.client(KEY_A).await?;
    let nats = topology_of(&cluster).await?;
    let first = client.submit(noop(0.0, 0)).await?;
    let second = client.submit(noop(0.0, 0)).await?;
    let refused = client.submit(noop(0.0, 0)).await.expect_err("tenant full");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");

    let cancelled = client.cancel(&first.id).await?;
    assert_eq!(cancelled.state(), pb::JobState::Cancelled);
    assert_eq!(nats.work.depth().await?, 1, "only the second job waits");
    let third = client.submit(noop(0.0, 0)).await?;
    assert_eq!(nats.work.depth().await?, 2);
    assert_eq!(nats.work.tenant_depth(&tenant_a()).await?, 2);
    // Cancelling again takes nothing else out.
    client.cancel(&first.id).await?;
    for job in [&second, &third] {
        assert_eq!(client.get(&job.id).await?.state(), pb::JobState::Queued);
    }
    assert_eq!(nats.work.depth().await?, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_job_cancelled_before_its_queued_event_landed_is_queued_then_cancelled()
-> anyhow::Result<()> {
    use reelmesh_nats::{EventKind, JobEvent, JobRecord};
    let cluster = TestCluster::start_without_render(|_| {}).await?;
    let mut client = cluster.client(KEY_A).await?;
    let nats = topology_of(&cluster).await?;
    // A FAILED job with its round's events, then what RetryJob's
    // compare-and-set leaves: round 1, QUEUED, its queued event and work
    // item still on their way.
    let mut record = JobRecord::new(tenant_a(), noop(0.0, 0));
    nats.events
        .publish(&JobEvent::of(&record, EventKind::Queued))
        .await?;
    record.fail("it broke")?;
    nats.jobs.create(&record).await?;
    let failed = EventKind::ending(&record).expect("an ending");
    nats.events.publish(&JobEvent::of(&record, failed)).await?;
    let requeued = nats
        .jobs
        .modify(&record.tenant, &record.id, |job| {
            job.requeue()?;
            Ok(true)
        })
        .await?
        .record;
    let cancelled = client.cancel(record.id.as_str()).await?;
    assert_eq!(cancelled.state(), pb::JobState::Cancelled);
    // The retry's queued event lands after the cancel.
    let late = JobEvent::of(&requeued, EventKind::Queued);
    let late = nats.events.publish(&late).await?;

    let events = events_of(&mut client, record.id.as_str()).await?;
    let kinds: Vec<_> = events.iter().map(event_kind_name).collect();
    assert_eq!(kinds, ["queued", "failed", "queued", "cancelled"]);
    assert!(
        late < events[3].sequence,
        "the retry's queued event is a duplicate of the one stored before the end, not a new one"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_work_item_queued_before_subjects_named_the_job_is_still_taken() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let mut client = cluster.client(KEY_A).await?;
    let nats = topology_of(&cluster).await?;
    let record = reelmesh_nats::JobRecord::new(tenant_a(), noop(0.0, 0));
    nats.jobs.create(&record).await?;
    let item = reelmesh_nats::WorkItem {
        tenant: record.tenant.clone(),
        job_id: record.id.clone(),
        round: record.round,
    };
    // The subject an earlier release gave it: priority and tenant only.
    let js = async_nats::jetstream::new(nats.client.clone());
    let legacy = format!("reelmesh.work.normal.{}", record.tenant);
    js.publish(legacy, serde_json::to_vec(&item)?.into())
        .await?
        .await?;
    let events = events_of(&mut client, record.id.as_str()).await?;
    assert_eq!(events.last().map(event_kind_name), Some("completed"));
    cluster.wait_until_work_settled().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_whose_job_was_never_stored_is_taken_over_once_it_cannot_be()
-> anyhow::Result<()> {
    use reelmesh_nats::{JobRecord, NatsError, record};
    let cluster = TestCluster::start().await?;
    let mut client = cluster.client(KEY_A).await?;
    let nats = topology_of(&cluster).await?;
    let tenant = tenant_a();
    // As a submit whose create NATS never answered leaves its key: claimed,
    // with no record. While the create could still land, the key waits.
    let recent = job_id_made(Duration::from_secs(5))?;
    nats.idempotency.claim(&tenant, "recent", &recent).await?;
    let refused = client.submit_once(noop(0.0, 0), "recent").await;
    let refused = refused.expect_err("its record may still arrive");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused}");
    assert!(refused.message().contains("not stored yet"), "{refused}");

    let never = job_id_made(record::RECORD_LAG + Duration::from_secs(10))?;
    nats.idempotency.claim(&tenant, "never", &never).await?;
    let job = client.submit_once(noop(0.0, 0), "never").await?;
    assert_ne!(job.id, never.as_str());
    let again = client.submit_once(noop(0.0, 0), "never").await?;
    assert_eq!(again.id, job.id, "the key is the new job's now");
    // A create of the old job still in flight can no longer land.
    let mut late = JobRecord::new(tenant, noop(0.0, 0));
    late.id = never;
    let landed = nats.jobs.send_create(&late).await?.durable().await;
    assert!(matches!(landed, Err(NatsError::JobExists(_))), "{landed:?}");
    let events = events_of(&mut client, &job.id).await?;
    assert_eq!(events.last().map(event_kind_name), Some("completed"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_priority_job_overtakes_the_normal_queue() -> anyhow::Result<()> {
    let cluster = TestCluster::start_with(|config| config.render.concurrency = 1).await?;
    let mut client = cluster.client(KEY_A).await?;
    // Holds the only slot while the queue fills (however slowly: the
    // slot is freed by cancelling it once all are queued).
    let blocker = client.submit(noop(60.0, 0)).await?;
    started(&mut client, &blocker.id).await?;
    let mut normal = Vec::new();
    for _ in 0..50 {
        normal.push(client.submit(noop(0.0, 0)).await?);
    }
    let mut urgent = noop(0.0, 0);
    urgent.priority = pb::Priority::High as i32;
    let urgent = client.submit(urgent).await?;
    client.cancel(&blocker.id).await?;
    cluster.wait_until_work_settled().await?;
    let started = |job: pb::Job| job.attempts.first().and_then(|a| a.started_at);
    let urgent_start = started(client.get(&urgent.id).await?).expect("started");
    let blocker_start = started(client.get(&blocker.id).await?).expect("started");
    assert!(blocker_start.seconds <= urgent_start.seconds);
    for job in normal {
        let start = started(client.get(&job.id).await?).expect("started");
        let later = (start.seconds, start.nanos) > (urgent_start.seconds, urgent_start.nanos);
        assert!(later, "normal job {} started before the high one", job.id);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_beyond_its_limit_is_told_to_wait() -> anyhow::Result<()> {
    let cluster = TestCluster::start_with(|config| {
        config.gateway.limits.max_active_jobs_per_tenant = 2;
        config.render.concurrency = 1;
    })
    .await?;
    let mut client = cluster.client(KEY_A).await?;
    client.submit(noop(2.0, 0)).await?;
    client.submit(noop(0.0, 0)).await?;
    let refused = client
        .submit(noop(0.0, 0))
        .await
        .expect_err("over the limit");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains("limit 2"),
        "{}",
        refused.message()
    );
    let mut other = cluster.client(reelmesh_integration_tests::KEY_B).await?;
    other.submit(noop(0.0, 0)).await?;
    Ok(())
}

/// A re-encode of the 6 s test clip: a real render that takes a moment.
fn reencode_of_clip() -> pb::JobSpec {
    pb::JobSpec {
        operation: Some(Operation::Transcode(pb::Transcode {
            input: Some(asset_source("in/clip.mp4")),
        })),
        copy: pb::CopyMode::Never as i32,
        ..Default::default()
    }
}

/// Whether an event ends a running attempt.
fn ends_attempt(kind: &Kind) -> bool {
    matches!(
        kind,
        Kind::Retrying(_) | Kind::Completed(_) | Kind::Failed(_) | Kind::Cancelled(_)
    )
}

/// The most jobs running at once, by the order of their events in the
/// stream (the sequence is stream-wide): each `started` opens an attempt,
/// the event that ends it closes it.
fn most_running_at_once(jobs: &[Vec<pb::JobEvent>]) -> usize {
    let mut changes: Vec<(u64, isize)> = jobs
        .iter()
        .flatten()
        .filter_map(|event| match event.kind.as_ref()? {
            Kind::Started(_) => Some((event.sequence, 1)),
            kind if ends_attempt(kind) => Some((event.sequence, -1)),
            _ => None,
        })
        .collect();
    changes.sort_unstable();
    let mut running = 0_isize;
    let mut most = 0_isize;
    for (_, change) in changes {
        running += change;
        most = most.max(running);
    }
    usize::try_from(most).unwrap_or(0)
}

fn sequence_of(events: &[pb::JobEvent], is: fn(&Kind) -> bool) -> Option<u64> {
    events
        .iter()
        .find(|e| e.kind.as_ref().is_some_and(is))
        .map(|e| e.sequence)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_at_its_running_limit_waits_while_other_tenants_run() -> anyhow::Result<()> {
    use reelmesh_integration_tests::{KEY_B, clips};
    let cluster = TestCluster::start_with(|config| {
        config.gateway.limits.max_running_jobs_per_tenant = 2;
        config.render.concurrency = 5;
    })
    .await?;
    let mut a = cluster.client(KEY_A).await?;
    let mut b = cluster.client(KEY_B).await?;
    b.upload_file(clips::six_second_clip(), "in/clip.mp4")
        .await?;
    // A's jobs hold their slots for a set time, long enough that B's job
    // starts before the first of them ends however loaded the machine.
    let mut a_jobs = Vec::new();
    for _ in 0..5 {
        a_jobs.push(a.submit(noop(3.0, 0)).await?.id);
    }
    let b_job = b.submit(reencode_of_clip()).await?.id;

    let mut a_events = Vec::new();
    for id in &a_jobs {
        a_events.push(events_of(&mut a, id).await?);
    }
    let b_events = events_of(&mut b, &b_job).await?;
    for (id, events) in a_jobs.iter().zip(&a_events).chain([(&b_job, &b_events)]) {
        assert_eq!(
            count(events, |k| matches!(k, Kind::Completed(_))),
            1,
            "{id}: {events:?}"
        );
        assert_eq!(
            count(events, |k| matches!(k, Kind::Started(_))),
            1,
            "{id}: {events:?}"
        );
    }
    for id in &a_jobs {
        let job = a.get(id).await?;
        assert_eq!(job.state(), pb::JobState::Completed, "{job:?}");
        assert_eq!(job.attempts.len(), 1, "waiting used no attempt: {job:?}");
    }
    assert_eq!(
        most_running_at_once(&a_events),
        2,
        "tenant A ran up to its limit and no further"
    );
    // B did not wait for A's jobs: it started before any of them ended
    // (after which the A jobs beyond the first two could start).
    let b_started = sequence_of(&b_events, |k| matches!(k, Kind::Started(_))).expect("started");
    let first_a_end = a_events
        .iter()
        .filter_map(|events| sequence_of(events, ends_attempt))
        .min()
        .expect("ended");
    assert!(
        b_started < first_a_end,
        "B started at {b_started}, after A's first end at {first_a_end}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_slot_left_by_an_ended_job_is_taken_over() -> anyhow::Result<()> {
    use reelmesh_nats::{Claim, JobOutput, JobRecord, names};
    let cluster = TestCluster::start_with(|config| {
        config.gateway.limits.max_running_jobs_per_tenant = 1;
    })
    .await?;
    let mut client = cluster.client(KEY_A).await?;
    // As if a worker completed a job and died before releasing its slot:
    // tenant A's only slot names a job that is no longer running.
    let nats = topology_of(&cluster).await?;
    let tenant = tenant_a();
    let mut ended = JobRecord::new(tenant.clone(), noop(0.0, 0));
    ended.begin_attempt().expect("an attempt");
    ended.complete(JobOutput::default())?;
    nats.jobs.create(&ended).await?;
    let left = nats.running.claim(&tenant, &ended.id, 1).await?;
    assert!(
        matches!(left, Claim::Held(ref slot) if slot.index == 0),
        "{left:?}"
    );

    let job = client.submit(noop(0.0, 0)).await?;
    let events = events_of(&mut client, &job.id).await?;
    assert_eq!(
        count(&events, |k| matches!(k, Kind::Completed(_))),
        1,
        "{events:?}"
    );
    // Once the worker is done with the job, the slot is free again.
    cluster.wait_until_work_settled().await?;
    let js = async_nats::jetstream::new(nats.client.clone());
    let slots = js.get_key_value(names::RUNNING_BUCKET).await?;
    let slot = slots.entry(names::running_slot_key(&tenant, 0)).await?;
    let operation = slot.map(|entry| entry.operation);
    assert_eq!(
        operation,
        Some(async_nats::jetstream::kv::Operation::Delete)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_watch_resumes_after_its_last_event_without_gap_or_repeat() -> anyhow::Result<()>
{
    let cluster = TestCluster::start().await?;
    let mut client = cluster.client(KEY_A).await?;
    let job = client.submit(noop(0.5, 0)).await?;
    let full = events_of(&mut client, &job.id).await?;
    assert!(
        full.len() >= 4,
        "queued, started, progress..., completed: {full:?}"
    );
    for cut in 1..full.len() {
        let after = full[cut - 1].sequence;
        let rest = client.watch_after(&job.id, after).await?;
        let rest: Vec<_> = tokio::time::timeout(Duration::from_secs(10), rest.collect::<Vec<_>>())
            .await?
            .into_iter()
            .collect::<Result<_, _>>()?;
        assert_eq!(rest, full[cut..], "resumed after event {cut}");
    }
    Ok(())
}

/// Stores a record as it is, with no events, and queues its work item: a
/// job as a failure between writes can leave it.
async fn store_and_queue(
    cluster: &TestCluster,
    record: &reelmesh_nats::JobRecord,
) -> anyhow::Result<()> {
    use reelmesh_nats::{Priority, WorkItem};
    let nats = topology_of(cluster).await?;
    nats.jobs.create(record).await?;
    let item = WorkItem {
        tenant: record.tenant.clone(),
        job_id: record.id.clone(),
        round: record.round,
    };
    nats.work.enqueue(&item, Priority::Normal).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_terminal_event_is_published_when_the_work_item_comes_back() -> anyhow::Result<()>
{
    use reelmesh_nats::JobRecord;
    let cluster = TestCluster::start().await?;
    let mut client = cluster.client(KEY_A).await?;
    // As if the gateway cancelled the job and NATS failed before the
    // `cancelled` event went out: the record is ended, its item queued.
    let mut record = JobRecord::new(tenant_a(), noop(0.0, 0));
    record.cancel()?;
    store_and_queue(&cluster, &record).await?;
    // Without the worker's confirmation this watch would never end.
    let events = events_of(&mut client, record.id.as_str()).await?;
    let kinds: Vec<_> = events.iter().map(|e| e.kind.clone()).collect();
    assert!(
        matches!(kinds.as_slice(), [Some(Kind::Cancelled(_))]),
        "{kinds:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ending_stored_before_the_duplicate_window_is_not_sent_again() -> anyhow::Result<()> {
    use reelmesh_nats::{EventKind, JobEvent, JobRecord, names};
    let cluster = TestCluster::start().await?;
    // A job cancelled while queued, its `cancelled` event stored long ago:
    // published here without its message id, as the stream has forgotten
    // it once the duplicate window is over. Its work item comes up now.
    let mut record = JobRecord::new(tenant_a(), noop(0.0, 0));
    record.cancel()?;
    let js = async_nats::jetstream::new(async_nats::connect(cluster.cluster.nats.url()).await?);
    let subject = names::event_subject(&record.tenant, &record.id, "cancelled");
    let event = serde_json::to_vec(&JobEvent::of(&record, EventKind::Cancelled))?;
    js.publish(subject.clone(), event.into()).await?.await?;
    store_and_queue(&cluster, &record).await?;
    cluster.wait_until_work_settled().await?;
    let stream = js.get_stream(names::EVENTS_STREAM).await?;
    let mut subjects = stream.info_with_subjects(&subject).await?;
    let mut stored = 0;
    while let Some(counted) = subjects.next().await {
        stored += counted?.1;
    }
    assert_eq!(
        stored, 1,
        "one cancelled event, not a second from the worker"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_fails_a_job_never_queued_and_queues_again_one_whose_item_never_came()
-> anyhow::Result<()> {
    use reelmesh_nats::{EventKind, JobEvent, JobRecord, Priority, WorkItem};
    let cluster = TestCluster::start_without_render(|config| {
        config.gateway.retention.sweep_every_secs = 0.1;
    })
    .await?;
    let mut client = cluster.client(KEY_A).await?;
    let nats = topology_of(&cluster).await?;
    let tenant = tenant_a();
    let two_minutes_ago = time::OffsetDateTime::now_utc() - Duration::from_secs(120);
    // As a submit leaves a job when NATS fails after its record and then
    // again when the submit tries to fail it: QUEUED, nothing else.
    let mut stranded = JobRecord::new(tenant.clone(), noop(0.0, 0));
    stranded.updated_at = two_minutes_ago;
    nats.jobs.create(&stranded).await?;
    // Queued just as long, but properly: it waits for a worker.
    let mut waiting = JobRecord::new(tenant.clone(), noop(0.0, 0));
    waiting.updated_at = two_minutes_ago;
    nats.jobs.create(&waiting).await?;
    let queued = JobEvent::of(&waiting, EventKind::Queued);
    nats.events.publish(&queued).await?;
    let item = WorkItem {
        tenant: tenant.clone(),
        job_id: waiting.id.clone(),
        round: waiting.round,
    };
    nats.work.enqueue(&item, Priority::Normal).await?;
    // Announced, but its work item never stored: queued again.
    let mut itemless = JobRecord::new(tenant.clone(), noop(0.0, 0));
    itemless.updated_at = two_minutes_ago;
    nats.jobs.create(&itemless).await?;
    let queued = JobEvent::of(&itemless, EventKind::Queued);
    nats.events.publish(&queued).await?;
    // Failed as never queued, its `failed` event lost: no work item will
    // send it again, so the sweep does.
    let mut unannounced = JobRecord::new(tenant, noop(0.0, 0));
    unannounced.fail("the job could not be queued: NATS went away")?;
    nats.jobs.create(&unannounced).await?;

    let events = events_of(&mut client, stranded.id.as_str()).await?;
    assert_eq!(events.last().map(event_kind_name), Some("failed"));
    let failed = client.get(stranded.id.as_str()).await?;
    assert!(failed.error.contains("could not be queued"), "{failed:?}");
    let waiting = client.get(waiting.id.as_str()).await?;
    assert_eq!(waiting.state(), pb::JobState::Queued, "{waiting:?}");
    let events = events_of(&mut client, unannounced.id.as_str()).await?;
    assert_eq!(kind_names(&events), ["failed"]);
    // One item each for the waiting job and the one queued again, however
    // many sweeps ran (the item's message id and the look before).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while nats.work.tenant_depth(&tenant_a()).await? < 2 {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "not queued again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let itemless = client.get(itemless.id.as_str()).await?;
    assert_eq!(itemless.state(), pb::JobState::Queued, "{itemless:?}");
    // Sweeps after that find its item and leave it be.
    let store = reelmesh_store::MediaStore::open(&cluster.store_url, &[])?;
    let config = reelmesh_gateway::retention::RetentionConfig::default();
    for _ in 0..3 {
        let swept = reelmesh_gateway::retention::sweep(&nats, &store, &config).await?;
        assert_eq!(swept.requeued, 0, "{swept:?}");
    }
    assert_eq!(nats.work.tenant_depth(&tenant_a()).await?, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_announced_but_not_queued_is_failed_once_nats_answers_again() -> anyhow::Result<()> {
    use reelmesh_nats::{EventKind, JobEvent, JobRecord};
    let cluster = TestCluster::start_without_render(|_| {}).await?;
    let mut client = cluster.client(KEY_A).await?;
    let nats = topology_of(&cluster).await?;
    // As a submit leaves a job whose work item NATS did not take: QUEUED
    // and announced, with no work item. The client was told it was not
    // accepted, so the gateway keeps trying to fail it (the sweep would
    // queue it again only after `RECORD_LAG`).
    let job = JobRecord::new(tenant_a(), noop(0.0, 0));
    nats.jobs.create(&job).await?;
    nats.events
        .publish(&JobEvent::of(&job, EventKind::Queued))
        .await?;
    cluster.cluster.nats.pause()?;
    let (tries_tx, mut failed_tries) = tokio::sync::mpsc::unbounded_channel();
    let failing = tokio::spawn({
        let job = job.clone();
        async move {
            let on_error = |err: &reelmesh_nats::NatsError| {
                let _ = tries_tx.send(err.to_string());
            };
            let cause = "NATS went away";
            reelmesh_gateway::unqueued::fail_until_done(&nats, &job, cause, on_error).await
        }
    });
    let first = failed_tries.recv().await;
    cluster.cluster.nats.resume()?;
    assert!(first.is_some(), "a try failed while NATS was paused");
    assert!(failing.await??, "the job was failed");
    let failed = client.get(job.id.as_str()).await?;
    assert_eq!(failed.state(), pb::JobState::Failed, "{failed:?}");
    assert!(failed.error.contains("could not be queued"), "{failed:?}");
    let events = events_of(&mut client, job.id.as_str()).await?;
    assert_eq!(kind_names(&events), ["queued", "failed"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_a_job_whose_events_expired_is_refused_not_left_hanging() -> anyhow::Result<()> {
    use reelmesh_nats::JobRecord;
    let cluster = TestCluster::start().await?;
    let mut client = cluster.client(KEY_A).await?;
    let nats = topology_of(&cluster).await?;
    let mut ended = JobRecord::new(tenant_a(), noop(0.0, 0));
    ended.cancel()?;
    ended.updated_at = time::OffsetDateTime::now_utc() - Duration::from_secs(3600);
    nats.jobs.create(&ended).await?;
    let watch = tokio::time::timeout(Duration::from_secs(10), client.watch(ended.id.as_str()));
    let refused = watch.await?.err().expect("refused");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused}");
    assert!(refused.message().contains("expired"), "{refused}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_and_end_written_together_but_never_announced_are_announced_in_order()
-> anyhow::Result<()> {
    use reelmesh_nats::JobRecord;
    let cluster = TestCluster::start().await?;
    let mut client = cluster.client(KEY_A).await?;
    // As if a worker wrote a short job's start and end in one
    // compare-and-set and lost the ack: ended, with neither event sent.
    let mut record = JobRecord::new(tenant_a(), noop(0.0, 0));
    record
        .begin_attempt()
        .map_err(|err| anyhow::anyhow!("{err:?}"))?;
    record.complete(Default::default())?;
    store_and_queue(&cluster, &record).await?;
    let events = events_of(&mut client, record.id.as_str()).await?;
    let kinds: Vec<_> = events.iter().map(|e| e.kind.clone()).collect();
    assert!(
        matches!(
            kinds.as_slice(),
            [Some(Kind::Started(_)), Some(Kind::Completed(_))]
        ),
        "{kinds:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_written_but_never_announced_is_announced_before_the_next_attempt()
-> anyhow::Result<()> {
    use reelmesh_nats::JobRecord;
    let cluster = TestCluster::start().await?;
    let mut client = cluster.client(KEY_A).await?;
    // As a worker leaves a job whose first attempt failed when NATS
    // answered its write too late: queued for a retry (due now), and
    // neither `started` nor `retrying` sent.
    let mut record = JobRecord::new(tenant_a(), noop(0.0, 1));
    record.max_attempts = 3;
    record
        .begin_attempt()
        .map_err(|err| anyhow::anyhow!("{err:?}"))?;
    let due = time::OffsetDateTime::now_utc() - Duration::from_secs(1);
    record.retry_at("noop: this attempt fails".into(), due)?;
    store_and_queue(&cluster, &record).await?;
    let events = events_of(&mut client, record.id.as_str()).await?;
    assert_eq!(
        kind_names(&events),
        ["started", "retrying", "started", "completed"]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_whose_event_the_worker_missed_stops_the_render_at_its_next_heartbeat()
-> anyhow::Result<()> {
    use reelmesh_nats::JobId;
    let cluster = TestCluster::start_with(|config| {
        config.render.topology.work_ack_wait = Duration::from_secs(2);
    })
    .await?;
    let mut client = cluster.client(KEY_A).await?;
    let job = client.submit(noop(60.0, 0)).await?;
    started(&mut client, &job.id).await?;
    // Cancelled in the record only, as a cancel whose event went by while
    // the worker's connection was down leaves it.
    let nats = topology_of(&cluster).await?;
    let tenant = tenant_a();
    let id = JobId::parse(&job.id).map_err(anyhow::Error::msg)?;
    nats.jobs
        .modify(&tenant, &id, |record| {
            record.cancel()?;
            Ok(true)
        })
        .await?;
    // Well before the 60 s render would end by itself.
    tokio::time::timeout(Duration::from_secs(15), cluster.wait_until_work_settled()).await??;
    let events = events_of(&mut client, &job.id).await?;
    let mut kinds = kind_names(&events);
    kinds.retain(|kind| *kind != "progress");
    assert_eq!(kinds, ["queued", "started", "cancelled"]);
    Ok(())
}

/// The states a job's record went through, oldest first, from the KV
/// bucket's history of its key.
async fn record_states(cluster: &TestCluster, id: &str) -> anyhow::Result<Vec<JobState>> {
    use reelmesh_nats::{JobId, JobRecord, names};
    let client = async_nats::connect(cluster.cluster.nats.url()).await?;
    let kv = async_nats::jetstream::new(client)
        .get_key_value(names::JOBS_BUCKET)
        .await?;
    let tenant = tenant_a();
    let job = JobId::parse(id).map_err(anyhow::Error::msg)?;
    let mut history = kv.history(names::job_key(&tenant, &job)).await?;
    let mut states = Vec::new();
    while let Some(entry) = history.next().await {
        states.push(serde_json::from_slice::<JobRecord>(&entry?.value)?.state);
    }
    Ok(states)
}

fn kind_names(events: &[pb::JobEvent]) -> Vec<&'static str> {
    events.iter().map(event_kind_name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_job_writes_its_start_with_its_end_and_a_longer_one_shows_running()
-> anyhow::Result<()> {
    // Far beyond a no-op's time even on a loaded machine (the default is
    // 20 ms).
    let cluster =
        TestCluster::start_with(|config| config.render.record_start_after_ms = 2_000).await?;
    let mut client = cluster.client(KEY_A).await?;

    let short = client.submit(noop(0.0, 0)).await?;
    let events = events_of(&mut client, &short.id).await?;
    assert_eq!(kind_names(&events), ["queued", "started", "completed"]);
    let states = record_states(&cluster, &short.id).await?;
    assert_eq!(states, [JobState::Queued, JobState::Completed]);
    let short = client.get(&short.id).await?;
    assert_eq!(short.attempts.len(), 1, "{short:?}");
    assert!(short.attempts[0].ended_at.is_some());

    // Runs past `record_start_after_ms`: RUNNING is written, and no
    // progress event comes before `started`.
    let long = client.submit(noop(3.0, 0)).await?;
    let events = events_of(&mut client, &long.id).await?;
    let kinds = kind_names(&events);
    assert_eq!(kinds[..2], ["queued", "started"], "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"completed"), "{kinds:?}");
    let states = record_states(&cluster, &long.id).await?;
    assert_eq!(
        states[..2],
        [JobState::Queued, JobState::Running],
        "{states:?}"
    );
    assert_eq!(states.last(), Some(&JobState::Completed), "{states:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_record_start_after_zero_every_start_is_written() -> anyhow::Result<()> {
    let cluster = TestCluster::start_with(|config| config.render.record_start_after_ms = 0).await?;
    let mut client = cluster.client(KEY_A).await?;
    let job = client.submit(noop(0.0, 0)).await?;
    let events = events_of(&mut client, &job.id).await?;
    assert_eq!(kind_names(&events), ["queued", "started", "completed"]);
    let states = record_states(&cluster, &job.id).await?;
    assert_eq!(
        states,
        [JobState::Queued, JobState::Running, JobState::Completed]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cancelled_before_its_start_is_written_never_shows_started() -> anyhow::Result<()> {
    // The start of this job is never written while it runs.
    let cluster =
        TestCluster::start_with(|config| config.render.record_start_after_ms = 600_000).await?;
    let mut client = cluster.client(KEY_A).await?;
    let job = client.submit(noop(30.0, 0)).await?;
    // The worker holds the item (rendering) once it is ack-pending.
    let nats = async_nats::connect(cluster.cluster.nats.url()).await?;
    let js = async_nats::jetstream::new(nats);
    let normal = reelmesh_nats::names::render_consumer(reelmesh_nats::Priority::Normal);
    eventually("the worker takes the job", || {
        let js = js.clone();
        let normal = normal.clone();
        async move {
            let stream = js.get_stream(reelmesh_nats::names::WORK_STREAM).await?;
            let consumer = stream.get_consumer::<pull::Config>(&normal).await;
            let mut consumer = consumer.map_err(|err| anyhow::anyhow!("{err}"))?;
            Ok(consumer.info().await?.num_ack_pending == 1)
        }
    })
    .await?;
    assert_eq!(client.get(&job.id).await?.state(), pb::JobState::Queued);

    let cancelled = client.cancel(&job.id).await?;
    assert_eq!(cancelled.state(), pb::JobState::Cancelled);
    // The render stops and lets go of the item well before its 30 s.
    tokio::time::timeout(Duration::from_secs(5), cluster.wait_until_work_settled()).await??;
    let events = events_of(&mut client, &job.id).await?;
    assert_eq!(kind_names(&events), ["queued", "cancelled"]);
    let states = record_states(&cluster, &job.id).await?;
    assert_eq!(states, [JobState::Queued, JobState::Cancelled]);
    assert!(client.get(&job.id).await?.attempts.is_empty());
    Ok(())
}

/// Polls `done` every 50 ms for up to 30 s.
async fn eventually<F, Fut>(what: &str, mut done: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done().await? {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn trim_of_clip() -> pb::JobSpec {
    pb::JobSpec {
        operation: Some(Operation::Trim(pb::Trim {
            input: Some(asset_source("in/clip.mp4")),
            start_seconds: 2.0,
            end_seconds: 4.0,
        })),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_jobs_lose_their_outputs_and_later_themselves() -> anyhow::Result<()> {
    use reelmesh_integration_tests::clips;
    // Outputs go at once; jobs stay.
    let cluster = TestCluster::start_with(|config| {
        config.gateway.retention.output_retention_secs = 0;
        config.gateway.retention.sweep_every_secs = 0.1;
    })
    .await?;
    let mut client = cluster.client(KEY_A).await?;
    client
        .upload_file(clips::six_second_clip(), "in/clip.mp4")
        .await?;
    let job = client.submit(trim_of_clip()).await?;
    events_of(&mut client, &job.id).await?;
    let poll = client.clone();
    let id = job.id.clone();
    eventually("output expired", || {
        let (mut client, id) = (poll.clone(), id.clone());
        async move { Ok(client.get(&id).await?.output_expired) }
    })
    .await?;
    let job = client.get(&job.id).await?;
    let key = job.output.expect("output described").key;
    let dir = tempfile::tempdir()?;
    let gone = client.download_file(&key, &dir.path().join("x")).await;
    assert!(gone.is_err(), "the output object was deleted");
    client
        .download_file("in/clip.mp4", &dir.path().join("input"))
        .await
        .expect("inputs are not the sweeper's");

    // Jobs go at once too.
    let cluster = TestCluster::start_with(|config| {
        config.gateway.retention.job_retention_secs = 0;
        config.gateway.retention.sweep_every_secs = 0.1;
        config.render.concurrency = 2;
    })
    .await?;
    let mut client = cluster.client(KEY_A).await?;
    let long = client.submit(noop(5.0, 0)).await?;
    let job = client.submit(noop(0.0, 0)).await?;
    let poll = client.clone();
    let id = job.id.clone();
    eventually("job removed", || {
        let (mut client, id) = (poll.clone(), id.clone());
        async move {
            match client.get(&id).await {
                Ok(_) => Ok(false),
                Err(status) if status.code() == tonic::Code::NotFound => Ok(true),
                Err(status) => Err(status.into()),
            }
        }
    })
    .await?;
    let watch = client.watch(&job.id).await;
    assert_eq!(watch.err().map(|s| s.code()), Some(tonic::Code::NotFound));
    let running = client.get(&long.id).await?;
    assert!(
        !matches!(running.state(), pb::JobState::Completed),
        "checked before it ends"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_removed_by_the_sweep_leaves_nothing_in_the_record_bucket() -> anyhow::Result<()> {
    let cluster = TestCluster::start_with(|config| {
        config.gateway.retention.job_retention_secs = 0;
        config.gateway.retention.sweep_every_secs = 0.1;
    })
    .await?;
    let nats = topology_of(&cluster).await?;
    let mut job = reelmesh_nats::JobRecord::new(tenant_a(), noop(0.0, 0));
    job.fail("out of attempts")?;
    nats.jobs.create(&job).await?;
    // Removing the record leaves a purge marker; the sweep takes that too.
    eventually("record and marker removed", || {
        let (client, id) = (nats.client.clone(), job.id.clone());
        async move { Ok(messages_under_job_key(&client, &tenant_a(), &id).await? == 0) }
    })
    .await?;
    let mut client = cluster.client(KEY_A).await?;
    let gone = client.get(job.id.as_str()).await;
    assert_eq!(gone.err().map(|s| s.code()), Some(tonic::Code::NotFound));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_the_sweep_cannot_remove_does_not_stop_it_removing_the_others() -> anyhow::Result<()>
{
    let cluster = TestCluster::start_without_render(|config| {
        config.gateway.retention.job_retention_secs = 0;
        config.gateway.retention.sweep_every_secs = 0.1;
    })
    .await?;
    let nats = topology_of(&cluster).await?;
    // Listed first (stored first), and never removable: its output key is
    // not one the store takes.
    let mut stuck = reelmesh_nats::JobRecord::new(tenant_a(), noop(0.0, 0));
    stuck.begin_attempt().expect("an attempt");
    let output = reelmesh_nats::JobOutput {
        keys: vec!["../outside".into()],
        ..Default::default()
    };
    stuck.complete(output)?;
    nats.jobs.create(&stuck).await?;
    let mut ended = reelmesh_nats::JobRecord::new(tenant_a(), noop(0.0, 0));
    ended.fail("out of attempts")?;
    nats.jobs.create(&ended).await?;

    eventually("the other job removed", || {
        let (nats, id) = (nats.clone(), ended.id.clone());
        async move { Ok(nats.jobs.get(&tenant_a(), &id).await?.is_none()) }
    })
    .await?;
    // Every sweep that got to the second job had passed the first.
    let kept = nats.jobs.get(&tenant_a(), &stuck.id).await?;
    assert!(kept.is_some(), "skipped, not removed");
    Ok(())
}

/// An attempt that never committed (its worker killed after the upload, or
/// NATS failing it at the commit) leaves results its record does not name.
/// They go with the job's outputs; a FAILED job's, which a RetryJob could
/// still write beside, go only with the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_deletes_what_uncommitted_attempts_left_beside_a_jobs_output()
-> anyhow::Result<()> {
    use reelmesh_gateway::retention::{RetentionConfig, sweep};
    use reelmesh_nats::{JobOutput, JobRecord, outputs_dir};
    use reelmesh_store::{ObjectKey, StoreError};
    let cluster = TestCluster::start_without_render(|_| {}).await?;
    let nats = topology_of(&cluster).await?;
    let store = cluster.open_store()?;
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), b"rendered")?;
    let key = |job: &JobRecord, attempt: &str| {
        ObjectKey::parse(&format!("{}/{attempt}/result.mp4", outputs_dir(&job.id)))
    };

    // Attempt 1 stored its result and died; attempt 2 committed.
    let mut completed = JobRecord::new(tenant_a(), noop(0.0, 0));
    completed.begin_attempt().expect("attempt 1");
    completed.begin_attempt().expect("attempt 2");
    let (left, committed) = (key(&completed, "1")?, key(&completed, "2")?);
    completed.complete(JobOutput {
        key: committed.to_string(),
        keys: vec![committed.to_string()],
        ..Default::default()
    })?;
    // A second delivery of attempt 1's item left its result; then it failed.
    let mut failed = JobRecord::new(tenant_a(), noop(0.0, 0));
    failed.begin_attempt().expect("attempt 1");
    failed.fail("out of attempts")?;
    let failed_left = key(&failed, "1.2")?;
    let unrelated = key(&JobRecord::new(tenant_a(), noop(0.0, 0)), "1")?;
    for object in [&left, &committed, &failed_left, &unrelated] {
        store.upload_file(&tenant_a(), object, file.path()).await?;
    }
    nats.jobs.create(&completed).await?;
    nats.jobs.create(&failed).await?;
    let stored = async |key: &ObjectKey| match store.stat(&tenant_a(), key).await {
        Ok(_) => Ok(true),
        Err(StoreError::NotFound(_)) => Ok(false),
        Err(err) => Err(anyhow::Error::from(err)),
    };

    let outputs_only = RetentionConfig {
        output_retention_secs: 0,
        ..RetentionConfig::default()
    };
    let swept = sweep(&nats, &store, &outputs_only).await?;
    assert_eq!((swept.outputs, swept.jobs), (1, 0), "{swept:?}");
    assert!(
        !stored(&committed).await?,
        "the committed result is deleted"
    );
    assert!(!stored(&left).await?, "so is the one attempt 1 left");
    assert!(
        stored(&failed_left).await?,
        "a FAILED job's wait for the job"
    );
    let jobs_too = RetentionConfig {
        job_retention_secs: 0,
        ..RetentionConfig::default()
    };
    let swept = sweep(&nats, &store, &jobs_too).await?;
    assert_eq!(swept.jobs, 2, "{swept:?}");
    assert!(!stored(&failed_left).await?, "deleted with its job");
    assert!(
        stored(&unrelated).await?,
        "another job's result is not touched"
    );
    Ok(())
}
