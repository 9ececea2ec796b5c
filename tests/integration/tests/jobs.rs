//! The job path end to end: submit over gRPC, render with GStreamer, watch
//! progress, fetch the result, receive the signed webhook.

use std::time::Duration;

use futures::StreamExt as _;
use reelmesh_cli::client::trim_spec;
use reelmesh_integration_tests::{
    KEY_A, KEY_B, TestCluster, WebhookReceiver, clips, event_kind_name, verify_signature,
};
use reelmesh_proto::v1::{self as pb, job_event::Kind};
use reelmesh_render::media;
use tonic::Code;

/// Collects a job's events until the stream ends (after the terminal event).
async fn events_of(
    client: &mut reelmesh_cli::ReelmeshClient,
    id: &str,
) -> anyhow::Result<Vec<pb::JobEvent>> {
    let stream = client.watch(id).await?;
    let events = tokio::time::timeout(Duration::from_secs(60), stream.collect::<Vec<_>>()).await?;
    Ok(events.into_iter().collect::<Result<Vec<_>, _>>()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trim_runs_end_to_end_with_progress_result_and_webhook() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let mut receiver = WebhookReceiver::start(0).await?;
    let mut client = cluster.client(KEY_A).await?;
    client
        .upload_file(clips::six_second_clip(), "inputs/clip.mp4")
        .await?;

    let mut spec = trim_spec("inputs/clip.mp4", 1.0, 4.0);
    spec.callback = Some(pb::Callback {
        url: receiver.url(),
        secret: String::new(),
    });
    let job = client.submit(spec).await?;
    assert_eq!(job.state(), pb::JobState::Queued);
    let secret = job
        .spec
        .as_ref()
        .and_then(|s| s.callback.as_ref())
        .expect("callback")
        .secret
        .clone();

    let events = events_of(&mut client, &job.id).await?;
    let kinds: Vec<&str> = events.iter().map(event_kind_name).collect();
    assert_eq!(kinds.first(), Some(&"queued"), "{kinds:?}");
    assert_eq!(kinds.get(1), Some(&"started"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"completed"), "{kinds:?}");
    let percents: Vec<f64> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Progress(p)) => Some(p.percent),
            _ => None,
        })
        .collect();
    assert!(!percents.is_empty(), "no progress events: {kinds:?}");
    assert!(
        percents.windows(2).all(|w| w[0] <= w[1]),
        "progress went backwards: {percents:?}"
    );
    assert!(events.windows(2).all(|w| w[0].sequence < w[1].sequence));

    // The stored result is a 3 s H.264/AAC MP4, checked by GStreamer's discoverer.
    let job = client.get(&job.id).await?;
    assert_eq!(job.state(), pb::JobState::Completed);
    let output = job.output.clone().expect("output");
    let dir = tempfile::tempdir()?;
    let local = dir.path().join("out.mp4");
    let size = client.download_file(&output.key, &local).await?;
    assert_eq!(size, output.size_bytes);
    let info = media::probe(&local)?;
    assert!(
        (info.duration_seconds - 3.0).abs() <= 0.1,
        "duration {}",
        info.duration_seconds
    );
    assert_eq!(info.video.as_ref().map(|v| v.codec.as_str()), Some("h264"));
    assert_eq!(info.audio.as_ref().map(|a| a.codec.as_str()), Some("aac"));
    let reported = output.media.expect("media info");
    assert!((reported.duration_seconds - 3.0).abs() <= 0.1);

    // A second watcher after completion gets the same full history.
    let replay = events_of(&mut client, &job.id).await?;
    assert_eq!(replay, events);

    // The webhook arrives, signed with the job's secret.
    let webhook = receiver.next(Duration::from_secs(30)).await?;
    assert!(
        verify_signature(&secret, &webhook),
        "bad signature: {:?}",
        webhook.headers
    );
    assert!(!verify_signature(
        "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        &webhook
    ));
    let body = webhook.json();
    assert_eq!(body["type"], "job.completed");
    assert_eq!(body["data"]["job_id"], job.id.as_str());
    assert_eq!(body["data"]["output"]["key"], output.key.as_str());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_input_fails_the_job_naming_it() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let mut client = cluster.client(KEY_A).await?;
    let job = client
        .submit(trim_spec("inputs/missing.mp4", 0.0, 1.0))
        .await?;
    let events = events_of(&mut client, &job.id).await?;
    let Some(Kind::Failed(failed)) = events.last().and_then(|e| e.kind.clone()) else {
        panic!("expected a failed event, got {events:?}");
    };
    assert!(
        failed.error.contains("inputs/missing.mp4"),
        "{}",
        failed.error
    );
    let job = client.get(&job.id).await?;
    assert_eq!(job.state(), pb::JobState::Failed);
    assert!(job.error.contains("inputs/missing.mp4"), "{}", job.error);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_input_fails_the_job_naming_it() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let mut client = cluster.client(KEY_A).await?;
    let garbage: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    client
        .upload_bytes(garbage.into(), "inputs/garbage.mp4")
        .await?;
    let job = client
        .submit(trim_spec("inputs/garbage.mp4", 0.0, 1.0))
        .await?;
    let events = events_of(&mut client, &job.id).await?;
    let Some(Kind::Failed(failed)) = events.last().and_then(|e| e.kind.clone()) else {
        panic!("expected a failed event, got {events:?}");
    };
    assert!(
        failed.error.contains("inputs/garbage.mp4"),
        "{}",
        failed.error
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reversed_range_is_refused_at_submit_and_nothing_is_stored() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let mut client = cluster.client(KEY_A).await?;
    let err = client
        .submit(trim_spec("inputs/clip.mp4", 4.0, 1.0))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("end_seconds"), "{}", err.message());
    let listed = client
        .jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await?
        .into_inner();
    assert!(listed.jobs.is_empty(), "{:?}", listed.jobs);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenant_cannot_see_or_touch_a_job() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let mut owner = cluster.client(KEY_A).await?;
    let mut other = cluster.client(KEY_B).await?;
    let job = owner
        .submit(trim_spec("inputs/missing.mp4", 0.0, 1.0))
        .await?;

    assert_eq!(
        other.get(&job.id).await.expect_err("hidden").code(),
        Code::NotFound
    );
    let watch = other.watch(&job.id).await.map(|_| ()).expect_err("hidden");
    assert_eq!(watch.code(), Code::NotFound);
    let cancel = other
        .jobs
        .cancel_job(pb::CancelJobRequest { id: job.id.clone() })
        .await;
    assert_eq!(cancel.expect_err("hidden").code(), Code::NotFound);
    let listed = other
        .jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await?
        .into_inner();
    assert!(listed.jobs.is_empty());
    assert_eq!(owner.get(&job.id).await?.id, job.id);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_valid_key_are_unauthenticated() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let mut wrong = cluster.client("not-a-key").await?;
    let err = wrong
        .submit(trim_spec("inputs/a.mp4", 0.0, 1.0))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::Unauthenticated);
    let channel = tonic::transport::Channel::from_shared(cluster.cluster.endpoint())?
        .connect()
        .await?;
    let mut anonymous = pb::jobs_client::JobsClient::new(channel);
    let err = anonymous
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::Unauthenticated);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_stops_it_and_stores_nothing() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let mut client = cluster.client(KEY_A).await?;
    // Long enough that the render is still running when the cancel lands.
    let (_dir, long_clip) = clips::make(30.0, 640, 360);
    client.upload_file(&long_clip, "inputs/long.mp4").await?;
    let job = client
        .submit(pb::JobSpec {
            operation: Some(pb::job_spec::Operation::Transcode(pb::Transcode {
                input: Some(reelmesh_cli::client::asset_source("inputs/long.mp4")),
            })),
            ..Default::default()
        })
        .await?;
    let mut events = client.watch(&job.id).await?;
    while let Some(event) = events.next().await {
        if matches!(event?.kind, Some(Kind::Progress(_))) {
            break;
        }
    }
    let cancelled = client
        .jobs
        .cancel_job(pb::CancelJobRequest { id: job.id.clone() })
        .await?
        .into_inner();
    assert_eq!(cancelled.state(), pb::JobState::Cancelled);
    let rest: Vec<_> =
        tokio::time::timeout(Duration::from_secs(10), events.collect::<Vec<_>>()).await?;
    assert!(
        matches!(rest.last(), Some(Ok(e)) if event_kind_name(e) == "cancelled"),
        "{rest:?}"
    );

    // Once the worker has let go of the work item, no output may exist.
    cluster.wait_until_work_settled().await?;
    let output_key = format!("outputs/{}.mp4", job.id);
    let stat = client.store.stat(pb::StatRequest { key: output_key }).await;
    assert_eq!(stat.expect_err("no output").code(), Code::NotFound);
    assert_eq!(client.get(&job.id).await?.state(), pb::JobState::Cancelled);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_jobs_filters_by_state_and_pages() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let mut client = cluster.client(KEY_A).await?;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let job = client
            .submit(trim_spec("inputs/missing.mp4", 0.0, 1.0))
            .await?;
        events_of(&mut client, &job.id).await?;
        ids.push(job.id);
    }
    ids.reverse(); // newest first
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let request = pb::ListJobsRequest {
            state: pb::JobState::Failed as i32,
            page_size: 2,
            page_token: token.clone(),
        };
        let page = client.jobs.list_jobs(request).await?.into_inner();
        assert!(page.jobs.len() <= 2);
        seen.extend(page.jobs.into_iter().map(|job| job.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ids);
    let running = pb::ListJobsRequest {
        state: pb::JobState::Running as i32,
        ..Default::default()
    };
    assert!(
        client
            .jobs
            .list_jobs(running)
            .await?
            .into_inner()
            .jobs
            .is_empty()
    );
    let bad_token = pb::ListJobsRequest {
        page_token: "nonsense".into(),
        ..Default::default()
    };
    let err = client
        .jobs
        .list_jobs(bad_token)
        .await
        .expect_err("bad token");
    assert_eq!(err.code(), Code::InvalidArgument);
    Ok(())
}
