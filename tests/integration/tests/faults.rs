//! Fault tests with real processes: a render worker SIGKILLed mid-job,
//! nats-server killed and restarted under load, notify SIGKILLed between
//! webhook attempts. Each asserts exact counts:
//! every job terminal once, none lost, none doubled.

use std::time::Duration;

use futures::StreamExt as _;
use reelmesh_cli::{ReelmeshClient, client::asset_source};
use reelmesh_integration_tests::{
    KEY_A, TestCluster, WebhookReceiver, attempt_started, clips, delivery_when, noop, started,
    worker::WorkerProcess,
};
use reelmesh_proto::v1::{self as pb, job_event::Kind, job_spec::Operation};

const WORKER: &str = env!("CARGO_BIN_EXE_render-worker");
/// Short enough that a dead worker's job comes back within a test.
// Short, so redeliveries come soon; the heartbeat every third of it still
// beats a loaded machine's stalls.
const ACK_WAIT: (&str, &str) = ("TOPOLOGY__WORK_ACK_WAIT", "3");

fn is_terminal(event: &pb::JobEvent) -> bool {
    matches!(
        event.kind,
        Some(Kind::Completed(_) | Kind::Failed(_) | Kind::Cancelled(_))
    )
}

/// The job's whole history as a watcher replaying it sees it.
async fn history(client: &mut ReelmeshClient, id: &str) -> anyhow::Result<Vec<pb::JobEvent>> {
    let events = client.watch(id).await?;
    let events = tokio::time::timeout(Duration::from_secs(60), events.collect::<Vec<_>>()).await?;
    Ok(events.into_iter().collect::<Result<_, _>>()?)
}

/// Terminal events of a job straight off the event subjects, including any
/// a watcher would never reach because it stops at the first.
async fn terminal_events(cluster: &TestCluster, job: &str) -> anyhow::Result<usize> {
    let client = async_nats::connect(cluster.cluster.nats.url()).await?;
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(reelmesh_nats::names::EVENTS_STREAM).await?;
    let mut subjects = stream
        .info_with_subjects(format!("reelmesh.events.*.{job}.*"))
        .await?;
    let mut counts = Vec::new();
    while let Some(subject) = subjects.next().await {
        counts.push(subject?);
    }
    Ok(counts
        .iter()
        .filter(|(subject, _)| {
            ["completed", "failed", "cancelled"]
                .iter()
                .any(|kind| subject.ends_with(kind))
        })
        .map(|(_, n)| *n)
        .sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_is_replaced_and_the_job_ends_once() -> anyhow::Result<()> {
    let cluster = TestCluster::start_without_render(|_| {}).await?;
    let (nats, store) = (cluster.cluster.nats.url(), cluster.store_url.clone());
    let mut client = cluster.client(KEY_A).await?;
    let doomed = WorkerProcess::spawn(WORKER, &nats, &store, &[ACK_WAIT])?;

    let job = client.submit(noop(3.0)).await?;
    started(&mut client, &job.id).await?;
    doomed.kill()?;
    let _rescuer = WorkerProcess::spawn(WORKER, &nats, &store, &[ACK_WAIT])?;
    let events = history(&mut client, &job.id).await?;
    assert!(events.last().is_some_and(is_terminal), "{events:?}");

    let job = client.get(&job.id).await?;
    assert_eq!(job.state(), pb::JobState::Completed, "{job:?}");
    assert_eq!(job.attempts.len(), 2, "{:?}", job.attempts);
    assert!(
        job.attempts[0].error.contains("stopped responding"),
        "{:?}",
        job.attempts
    );
    assert_eq!(terminal_events(&cluster, &job.id).await?, 1);

    // The rescuing process renders real media too.
    client
        .upload_file(clips::six_second_clip(), "in/clip.mp4")
        .await?;
    let trim = pb::JobSpec {
        operation: Some(Operation::Trim(pb::Trim {
            input: Some(asset_source("in/clip.mp4")),
            start_seconds: 1.5,
            end_seconds: 3.0,
        })),
        ..Default::default()
    };
    let trim = client.submit(trim).await?;
    let events = history(&mut client, &trim.id).await?;
    assert!(
        matches!(
            events.last().and_then(|e| e.kind.as_ref()),
            Some(Kind::Completed(_))
        ),
        "{events:?}"
    );
    cluster.wait_until_work_settled().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_job_keeps_its_running_slot_and_takes_it_again() -> anyhow::Result<()> {
    let cluster = TestCluster::start_without_render(|config| {
        config.gateway.limits.max_running_jobs_per_tenant = 1;
    })
    .await?;
    let (nats, store) = (cluster.cluster.nats.url(), cluster.store_url.clone());
    let mut client = cluster.client(KEY_A).await?;
    let doomed = WorkerProcess::spawn(WORKER, &nats, &store, &[ACK_WAIT])?;
    let first = client.submit(noop(2.0)).await?;
    started(&mut client, &first.id).await?;
    doomed.kill()?;

    // The dead worker's job still counts as running until it comes back
    // after the ack wait and takes its slot again: the second job waits.
    let second = client.submit(noop(0.0)).await?;
    let settings = [ACK_WAIT, ("CONCURRENCY", "2")];
    let _rescuer = WorkerProcess::spawn(WORKER, &nats, &store, &settings)?;
    let first_events = history(&mut client, &first.id).await?;
    let second_events = history(&mut client, &second.id).await?;
    let first_end = first_events
        .last()
        .filter(|e| is_terminal(e))
        .map(|e| e.sequence);
    let second_start = second_events
        .iter()
        .find(|e| matches!(e.kind, Some(Kind::Started(_))))
        .map(|e| e.sequence);
    assert!(
        matches!((first_end, second_start), (Some(end), Some(start)) if end < start),
        "{first_events:?}\n{second_events:?}"
    );
    for id in [&first.id, &second.id] {
        let job = client.get(id).await?;
        assert_eq!(job.state(), pb::JobState::Completed, "{job:?}");
        assert_eq!(terminal_events(&cluster, id).await?, 1);
    }
    assert_eq!(client.get(&first.id).await?.attempts.len(), 2);
    assert_eq!(client.get(&second.id).await?.attempts.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_accepted_job_is_lost_across_a_nats_restart() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start_with(|config| {
        config.render.concurrency = 2;
        config.render.topology.work_ack_wait = Duration::from_secs(2);
    })
    .await?;
    let mut client = cluster.client(KEY_A).await?;
    let mut accepted = Vec::new();
    for _ in 0..20 {
        accepted.push(client.submit(noop(0.1)).await?.id);
    }
    cluster.cluster.nats.restart()?;
    // While NATS comes back the gateway answers UNAVAILABLE, never
    // anything that would lose a submit silently.
    for _ in 0..10 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match client.submit(noop(0.1)).await {
                Ok(job) => break accepted.push(job.id),
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "NATS did not come back"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    cluster.wait_until_work_settled().await?;
    for id in &accepted {
        let job = client.get(id).await?;
        assert_eq!(job.state(), pb::JobState::Completed, "{job:?}");
        assert_eq!(terminal_events(&cluster, id).await?, 1, "job {id}");
    }
    let all = client.list(pb::JobState::Unspecified, 500).await?;
    assert_eq!(all.jobs.len(), accepted.len(), "no job made twice");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_nats_did_not_answer_is_reported_as_maybe_stored_and_lands_whole()
-> anyhow::Result<()> {
    let cluster = TestCluster::start_with(|config| {
        // No tenant count to refresh: the create is the first write.
        config.gateway.limits.max_active_jobs_per_tenant = 0;
    })
    .await?;
    let mut client = cluster.client(KEY_A).await?;
    client.submit(noop(0.0)).await?;
    cluster.cluster.nats.pause()?;
    let unanswered = client.submit(noop(0.0)).await;
    cluster.cluster.nats.resume()?;
    let status = unanswered.expect_err("NATS was paused");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
    assert!(status.message().contains("may yet be stored"), "{status}");
    // Sent before the pause ended, the record, its event and its work item
    // land together once NATS answers again: a whole job that runs.
    cluster.wait_until_work_settled().await?;
    let jobs = client.list(pb::JobState::Unspecified, 10).await?.jobs;
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    for job in &jobs {
        assert_eq!(job.state(), pb::JobState::Completed, "{job:?}");
        assert_eq!(terminal_events(&cluster, &job.id).await?, 1);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_worker_that_wakes_leaves_the_job_to_its_new_owner() -> anyhow::Result<()> {
    let cluster = TestCluster::start_without_render(|_| {}).await?;
    let (nats, store) = (cluster.cluster.nats.url(), cluster.store_url.clone());
    let mut client = cluster.client(KEY_A).await?;
    let stalled = WorkerProcess::spawn(WORKER, &nats, &store, &[ACK_WAIT])?;
    // Attempts 1 and 2 fail. The second worker's attempt 2 asks for a
    // retry with the work item after the stalled worker woke up and found
    // its attempt 1 closed: had that worker acked the item (JetStream acks
    // the message, whichever delivery sends the ack), attempt 3 would
    // never come and the job would stay QUEUED for ever.
    let spec = pb::JobSpec {
        operation: Some(Operation::Noop(pb::Noop {
            seconds: 3.0,
            fail_attempts: 2,
        })),
        ..Default::default()
    };
    let job = client.submit(spec).await?;
    started(&mut client, &job.id).await?;
    stalled.pause()?;
    let _owner = WorkerProcess::spawn(WORKER, &nats, &store, &[ACK_WAIT])?;
    attempt_started(&mut client, &job.id, 2).await?;
    stalled.resume()?;

    let events = history(&mut client, &job.id).await?;
    assert!(events.last().is_some_and(is_terminal), "{events:?}");
    let job = client.get(&job.id).await?;
    assert_eq!(job.state(), pb::JobState::Completed, "{job:?}");
    assert_eq!(job.attempts.len(), 3, "{:?}", job.attempts);
    assert!(
        job.attempts[0].error.contains("stopped responding"),
        "{:?}",
        job.attempts
    );
    assert_eq!(terminal_events(&cluster, &job.id).await?, 1);
    cluster.wait_until_work_settled().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_worker_finishes_its_job_or_hands_it_back() -> anyhow::Result<()> {
    let cluster = TestCluster::start_without_render(|_| {}).await?;
    let (nats, store) = (cluster.cluster.nats.url(), cluster.store_url.clone());
    let mut client = cluster.client(KEY_A).await?;

    // Within the grace period the draining worker finishes the job.
    let patient = [ACK_WAIT, ("DRAIN_GRACE_SECS", "20")];
    let worker = WorkerProcess::spawn(WORKER, &nats, &store, &patient)?;
    let job = client.submit(noop(1.0)).await?;
    started(&mut client, &job.id).await?;
    assert!(
        worker.terminate()?.success(),
        "a drained worker exits cleanly"
    );
    let job = client.get(&job.id).await?;
    assert_eq!(job.state(), pb::JobState::Completed, "{job:?}");
    assert_eq!(job.attempts.len(), 1);

    // Past it, the job goes back to the queue for the next worker.
    let hasty = [ACK_WAIT, ("DRAIN_GRACE_SECS", "0.2")];
    let worker = WorkerProcess::spawn(WORKER, &nats, &store, &hasty)?;
    let mut spec = noop(3.0);
    spec.max_attempts = 1;
    let job = client.submit(spec).await?;
    started(&mut client, &job.id).await?;
    assert!(worker.terminate()?.success());
    let handed_back = client.get(&job.id).await?;
    assert_eq!(handed_back.state(), pb::JobState::Queued, "{handed_back:?}");
    assert!(handed_back.attempts[0].error.contains("handed back"));
    let _next = WorkerProcess::spawn(WORKER, &nats, &store, &[ACK_WAIT])?;
    history(&mut client, &job.id).await?;
    let job = client.get(&job.id).await?;
    // One attempt allowed, two made: a hand-back does not count.
    assert_eq!(job.state(), pb::JobState::Completed, "{job:?}");
    assert_eq!(job.attempts.len(), 2);
    assert_eq!(terminal_events(&cluster, &job.id).await?, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_started_before_nats_answers_unavailable_then_recovers() -> anyhow::Result<()> {
    // A port nothing listens on yet; NATS will start there later.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = reelmesh_gateway::GatewayConfig {
        nats_url: format!("nats://127.0.0.1:{port}"),
        store_url: "memory://gateway-before-nats".into(),
        api_keys: reelmesh_runtime::ApiKeys(
            [(KEY_A.to_string(), "tenant-a".to_string())]
                .into_iter()
                .collect(),
        ),
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let gateway = tokio::spawn(reelmesh_gateway::run(config, listener, shutdown.clone()));

    let mut client = ReelmeshClient::connect(&endpoint, KEY_A).await?;
    let refused = client.submit(noop(0.0)).await.expect_err("no NATS yet");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused}");

    let dir = tempfile::tempdir()?;
    let _nats = reelmesh_nats::server::NatsServer::start_in(dir.path(), port)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let job = loop {
        match client.submit(noop(0.0)).await {
            Ok(job) => break job,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
                assert!(tokio::time::Instant::now() < deadline, "never recovered");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(job.state(), pb::JobState::Queued);
    assert_eq!(client.get(&job.id).await?.id, job.id);
    shutdown.cancel();
    gateway.await??;
    Ok(())
}

/// A gateway process on `port`, with the default `dev-key` (tenant `dev`).
fn gateway_process(nats: &str, port: u16) -> anyhow::Result<std::process::Child> {
    Ok(std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .env("REELMESH_GATEWAY_NATS_URL", nats)
        .env("REELMESH_GATEWAY_STORE_URL", "memory://gateway-process")
        .env("REELMESH_GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .spawn()?)
}

/// A client of the gateway on `port`, once it answers.
async fn client_when_up(port: u16) -> anyhow::Result<ReelmeshClient> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match ReelmeshClient::connect(&format!("http://127.0.0.1:{port}"), "dev-key").await {
            Ok(client) => return Ok(client),
            Err(err) if tokio::time::Instant::now() >= deadline => return Err(err),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_cut_by_a_killed_gateway_resumes_with_no_gap_and_no_repeat() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let nats = cluster.cluster.nats.url();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut gateway = gateway_process(&nats, port)?;
    let mut client = client_when_up(port).await?;
    let job = client.submit(noop(1.5)).await?;
    let mut seen = Vec::new();
    let mut events = client.watch(&job.id).await?;
    while seen.len() < 3 {
        let event = tokio::time::timeout(Duration::from_secs(30), events.next())
            .await?
            .expect("three events before the end")?;
        seen.push(event);
    }
    gateway.kill()?;
    gateway.wait()?;
    // Events already in flight may still arrive; then the stream breaks
    // (an error status, or its end) before the job's end.
    while let Some(Ok(event)) = tokio::time::timeout(Duration::from_secs(30), events.next()).await?
    {
        seen.push(event);
    }
    assert!(
        !seen.last().is_some_and(is_terminal),
        "killed mid-job: {seen:?}"
    );

    let mut gateway = gateway_process(&nats, port)?;
    let mut client = client_when_up(port).await?;
    let last = seen.last().map(|e| e.sequence).unwrap_or_default();
    let rest = client.watch_after(&job.id, last).await?;
    let rest: Vec<_> = tokio::time::timeout(Duration::from_secs(30), rest.collect::<Vec<_>>())
        .await?
        .into_iter()
        .collect::<Result<_, _>>()?;
    seen.extend(rest);
    assert_eq!(
        seen,
        history(&mut client, &job.id).await?,
        "resumed = replayed"
    );
    assert!(seen.last().is_some_and(is_terminal));
    gateway.kill()?;
    gateway.wait()?;
    Ok(())
}

const NOTIFY: &str = env!("CARGO_BIN_EXE_notify");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_killed_mid_schedule_loses_no_webhook() -> anyhow::Result<()> {
    let cluster = TestCluster::start_with(|config| config.notify_elsewhere = true).await?;
    let nats = cluster.cluster.nats.url();
    // Retries 2 s apart, so the kill lands between attempts. The kill may
    // beat the retry's hand-back to the server, and then the task returns
    // after the ack wait: short here, though longer than a request's timeout.
    let settings = [
        ("RETRY_SCHEDULE_SECS", "[2, 2, 2, 2]"),
        ("EGRESS__ALLOW", "[\"127.0.0.1\"]"),
        ("TIMEOUT_SECS", "5"),
        ("TOPOLOGY__WEBHOOK_ACK_WAIT", "8"),
    ];
    let first = WorkerProcess::spawn_notify(NOTIFY, &nats, &settings)?;
    let mut receiver = WebhookReceiver::start(2).await?;
    let mut client = cluster.client(KEY_A).await?;
    let mut spec = noop(0.0);
    spec.callback = Some(pb::Callback {
        url: receiver.url(),
        secret: String::new(),
    });
    let job = client.submit(spec).await?;

    delivery_when(&mut client, &job.id, |d| !d.attempts.is_empty()).await?;
    first.kill()?;
    let _second = WorkerProcess::spawn_notify(NOTIFY, &nats, &settings)?;

    let webhook = receiver.next(Duration::from_secs(60)).await?;
    assert_eq!(webhook.json()["data"]["job_id"], job.id.as_str());
    let delivered = delivery_when(&mut client, &job.id, |d| {
        d.state() == pb::DeliveryState::Delivered
    })
    .await?;
    let statuses: Vec<u32> = delivered.attempts.iter().map(|a| a.status).collect();
    assert_eq!(
        statuses,
        vec![503, 503, 204],
        "the schedule went on after the kill"
    );
    assert_eq!(delivered.id, webhook.header("webhook-id"));
    assert_eq!(
        receiver.attempts(),
        3,
        "delivered once, nothing lost or doubled"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_waiting_in_hand_past_the_ack_wait_are_still_sent_once() -> anyhow::Result<()> {
    let cluster = TestCluster::start_with(|config| config.notify_elsewhere = true).await?;
    let nats = cluster.cluster.nats.url();
    // One request at a time, four tasks in hand, each answer 2 s: the
    // last task in hand waits 6 s, past the 5 s ack wait, and without a
    // heartbeat JetStream hands it to the other process as well. The 4 s
    // timeout leaves each answer 2 s to spare.
    let settings = [
        ("EGRESS__ALLOW", "[\"127.0.0.1\"]"),
        ("CONCURRENCY", "1"),
        ("TIMEOUT_SECS", "4"),
        ("TOPOLOGY__WEBHOOK_ACK_WAIT", "5"),
    ];
    let _first = WorkerProcess::spawn_notify(NOTIFY, &nats, &settings)?;
    let _second = WorkerProcess::spawn_notify(NOTIFY, &nats, &settings)?;
    let mut receiver = WebhookReceiver::start_slow(Duration::from_secs(2)).await?;
    let mut client = cluster.client(KEY_A).await?;
    let request = pb::CreateEndpointRequest {
        url: receiver.url(),
        events: vec!["job.completed".into()],
        ..Default::default()
    };
    client.webhooks.create_endpoint(request).await?;
    const JOBS: usize = 10;
    let mut jobs = Vec::new();
    for _ in 0..JOBS {
        jobs.push(client.submit(noop(0.0)).await?.id);
    }
    for _ in 0..JOBS {
        receiver.next(Duration::from_secs(60)).await?;
    }
    for job in &jobs {
        let settled = delivery_when(&mut client, job, |d| {
            d.state() == pb::DeliveryState::Delivered
        })
        .await?;
        assert_eq!(settled.attempts.len(), 1, "{settled:?}");
    }
    assert_eq!(receiver.attempts(), JOBS, "no webhook sent twice");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_notify_processes_send_each_webhook_once_and_in_order() -> anyhow::Result<()> {
    let cluster = TestCluster::start_with(|config| config.notify_elsewhere = true).await?;
    let nats = cluster.cluster.nats.url();
    let settings = [("EGRESS__ALLOW", "[\"127.0.0.1\"]")];
    let _first = WorkerProcess::spawn_notify(NOTIFY, &nats, &settings)?;
    let _second = WorkerProcess::spawn_notify(NOTIFY, &nats, &settings)?;
    let mut receiver = WebhookReceiver::start(0).await?;
    let mut client = cluster.client(KEY_A).await?;
    let request = pb::CreateEndpointRequest {
        url: receiver.url(),
        events: vec![
            "job.queued".into(),
            "job.started".into(),
            "job.completed".into(),
        ],
        ..Default::default()
    };
    client.webhooks.create_endpoint(request).await?;
    const JOBS: usize = 10;
    let mut jobs = Vec::new();
    for _ in 0..JOBS {
        jobs.push(client.submit(noop(0.0)).await?.id);
    }

    let mut types: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut completed = 0;
    while completed < JOBS {
        let webhook = receiver.next(Duration::from_secs(60)).await?;
        let json = webhook.json();
        let job = json["data"]["job_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let kind = json["type"].as_str().unwrap_or_default().to_string();
        completed += usize::from(kind == "job.completed");
        types.entry(job).or_default().push(kind);
    }
    for job in &jobs {
        assert_eq!(
            types.get(job).map(Vec::as_slice).unwrap_or_default(),
            ["job.queued", "job.started", "job.completed"],
            "job {job}: once each, in order"
        );
        // Settled in the log, so no copy of a task can send it again.
        let settled = delivery_when(&mut client, job, |d| {
            d.state() == pb::DeliveryState::Delivered
        })
        .await?;
        assert_eq!(settled.attempts.len(), 1);
    }
    assert_eq!(receiver.attempts(), 3 * JOBS, "no webhook sent twice");
    Ok(())
}
