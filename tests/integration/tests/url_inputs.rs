//! http(s) URL inputs end to end: a real HTTP server on loopback feeds jobs
//! when the egress allowlist lets it, each kind of failure is named on the
//! job (and retried only when another attempt could help), and with the
//! default policy every non-public address is refused before any request
//! leaves the worker.

use std::time::Duration;

use futures::StreamExt as _;
use object_store::ObjectStore as _;
use reelmesh_cli::{ReelmeshClient, client::asset_source};
use reelmesh_integration_tests::{
    KEY_A, TestCluster, clips,
    media_server::{self, MediaServer},
    packets::video_packets,
    started,
    worker::WorkerProcess,
};
use reelmesh_proto::v1::{self as pb, job_spec::Operation};

fn url_source(url: &str) -> pb::Source {
    pb::Source {
        kind: Some(pb::source::Kind::Url(url.into())),
    }
}

fn trim_of(source: pb::Source, start: f64, end: f64) -> pb::JobSpec {
    pb::JobSpec {
        operation: Some(Operation::Trim(pb::Trim {
            input: Some(source),
            start_seconds: start,
            end_seconds: end,
        })),
        ..Default::default()
    }
}

/// Submits `spec` and follows it to its end.
async fn run(client: &mut ReelmeshClient, spec: pb::JobSpec) -> anyhow::Result<pb::Job> {
    let job = client.submit(spec).await?;
    let events = client.watch(&job.id).await?;
    tokio::time::timeout(Duration::from_secs(60), events.for_each(|_| async {})).await?;
    Ok(client.get(&job.id).await?)
}

/// Runs `spec`, expecting it to fail after `attempts` attempts; returns
/// the job's error.
async fn failure(
    client: &mut ReelmeshClient,
    spec: pb::JobSpec,
    attempts: usize,
) -> anyhow::Result<String> {
    let job = run(client, spec).await?;
    assert_eq!(job.state(), pb::JobState::Failed, "{job:?}");
    assert_eq!(job.attempts.len(), attempts, "{:?}", job.attempts);
    Ok(job.error)
}

/// Keys of everything in the cluster's store.
async fn stored_keys(cluster: &TestCluster) -> anyhow::Result<Vec<String>> {
    let store = reelmesh_store::MediaStore::open(&cluster.store_url, &[])?;
    let listed: Vec<_> = store.backend().list(None).collect().await;
    listed
        .into_iter()
        .map(|meta| Ok(meta?.location.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlisted_urls_feed_jobs_and_each_failure_is_named() -> anyhow::Result<()> {
    let cluster = TestCluster::start_with(|config| {
        config.render.url_inputs.egress.allow = vec!["127.0.0.1".into()];
        config.render.url_inputs.max_bytes = 8 << 20;
    })
    .await?;
    let input = clips::six_second_clip();
    let server = MediaServer::start(std::fs::read(input)?).await?;
    let mut client = cluster.client(KEY_A).await?;
    client.upload_file(input, "in/clip.mp4").await?;

    // Fetched, then copied on keyframes like a stored asset.
    let trim = run(
        &mut client,
        trim_of(url_source(&server.url("/media.mp4")), 2.0, 4.0),
    )
    .await?;
    assert_eq!(trim.state(), pb::JobState::Completed, "{trim:?}");
    let output = trim.output.clone().expect("a completed job has an output");
    assert!(output.copied, "{trim:?}");
    let dir = tempfile::tempdir()?;
    client
        .download_file(&output.key, &dir.path().join("t.mp4"))
        .await?;
    assert_eq!(
        video_packets(&dir.path().join("t.mp4"))?,
        video_packets(input)?[60..120]
    );

    // A URL and a stored asset mix in one job.
    let concat = run(
        &mut client,
        pb::JobSpec {
            copy: pb::CopyMode::Required as i32,
            operation: Some(Operation::Concat(pb::Concat {
                inputs: vec![
                    url_source(&server.url("/media.mp4")),
                    asset_source("in/clip.mp4"),
                ],
            })),
            ..Default::default()
        },
    )
    .await?;
    let media = concat.output.and_then(|o| o.media).expect("completed");
    assert!((media.duration_seconds - 12.0).abs() < 0.1, "{media:?}");

    // A 503 is worth another attempt.
    let flaky = run(
        &mut client,
        trim_of(url_source(&server.url("/flaky.mp4")), 0.0, 2.0),
    )
    .await?;
    assert_eq!(flaky.state(), pb::JobState::Completed, "{flaky:?}");
    assert_eq!(flaky.attempts.len(), 2);
    assert!(
        flaky.attempts[0].error.contains("503"),
        "{:?}",
        flaky.attempts
    );

    // A 404 is not; the error names the URL but not its signature.
    let missing = server.url("/missing.mp4?sig=topsecret");
    let error = failure(&mut client, trim_of(url_source(&missing), 0.0, 1.0), 1).await?;
    assert!(
        error.contains(&server.url("/missing.mp4")) && error.contains("HTTP 404"),
        "{error}"
    );
    assert!(!error.contains("topsecret"), "{error}");

    // An endless body is cut off at the size limit.
    let endless = server.url("/endless.mp4");
    let error = failure(&mut client, trim_of(url_source(&endless), 0.0, 1.0), 1).await?;
    assert!(
        error.contains("larger than") && error.contains(&endless),
        "{error}"
    );

    // A redirect is checked like the URL it came from.
    let redirect = server.url("/to-metadata");
    let error = failure(&mut client, trim_of(url_source(&redirect), 0.0, 1.0), 1).await?;
    assert!(
        error.contains("169.254.169.254") && error.contains("link-local"),
        "{error}"
    );

    // Only the completed jobs stored results.
    let outputs = stored_keys(&cluster)
        .await?
        .into_iter()
        .filter(|key| key.contains("outputs/"))
        .count();
    assert_eq!(outputs, 3, "trim, concat and the retried trim");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_longer_than_the_ack_wait_keeps_its_job() -> anyhow::Result<()> {
    // Long enough that a loaded machine still beats every third of it.
    let ack_wait = Duration::from_secs(3);
    assert!(media_server::SLOW_BODY >= ack_wait + Duration::from_secs(1));
    let cluster = TestCluster::start_with(|config| {
        config.render.url_inputs.egress.allow = vec!["127.0.0.1".into()];
        config.render.topology.work_ack_wait = ack_wait;
        // A free slot takes the item should it come back mid-download.
        config.render.concurrency = 2;
    })
    .await?;
    let server = MediaServer::start(std::fs::read(clips::six_second_clip())?).await?;
    let mut client = cluster.client(KEY_A).await?;
    // The worker says it is alive while it downloads, so the item is not
    // handed to another delivery, which would begin a second attempt.
    let trim = trim_of(url_source(&server.url("/slow.mp4")), 2.0, 4.0);
    let job = run(&mut client, trim).await?;
    assert_eq!(job.state(), pb::JobState::Completed, "{job:?}");
    assert_eq!(job.attempts.len(), 1, "{:?}", job.attempts);
    assert_eq!(server.requests(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_ends_a_download_under_way() -> anyhow::Result<()> {
    let cluster = TestCluster::start_with(|config| {
        config.render.url_inputs.egress.allow = vec!["127.0.0.1".into()];
    })
    .await?;
    let server = MediaServer::start(std::fs::read(clips::six_second_clip())?).await?;
    let mut client = cluster.client(KEY_A).await?;
    let trim = trim_of(url_source(&server.url("/hanging.mp4")), 2.0, 4.0);
    let job = client.submit(trim).await?;
    started(&mut client, &job.id).await?;
    client.cancel(&job.id).await?;
    // The download would hang for the fetcher's 10 minute timeout; the
    // cancel ends it, and the worker lets go of the item.
    cluster.wait_until_work_settled().await?;
    let job = client.get(&job.id).await?;
    assert_eq!(job.state(), pb::JobState::Cancelled, "{job:?}");
    assert_eq!(server.requests(), 1);
    let outputs: Vec<_> = stored_keys(&cluster)
        .await?
        .into_iter()
        .filter(|key| key.contains("outputs/"))
        .collect();
    assert!(outputs.is_empty(), "{outputs:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_public_addresses_are_refused_without_a_request() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let server = MediaServer::start(std::fs::read(clips::six_second_clip())?).await?;
    let mut client = cluster.client(KEY_A).await?;
    let port = server.addr.port();
    let cases = [
        (server.url("/media.mp4"), "loopback"),
        // A name that resolves to loopback is judged by its address.
        (format!("http://localhost:{port}/media.mp4"), "loopback"),
        (format!("http://[::1]:{port}/media.mp4"), "loopback"),
        (
            "http://169.254.169.254/latest/meta-data/".into(),
            "link-local",
        ),
        ("http://10.0.0.1/clip.mp4".into(), "private"),
    ];
    for (url, kind) in cases {
        let error = failure(&mut client, trim_of(url_source(&url), 0.0, 1.0), 1).await?;
        assert!(
            error.contains("refused") && error.contains(kind),
            "{url}: {error}"
        );
    }
    assert_eq!(server.requests(), 0, "nothing reached the server");
    assert!(stored_keys(&cluster).await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_allowlist_entry_is_a_config_error() -> anyhow::Result<()> {
    let worker = WorkerProcess::spawn(
        env!("CARGO_BIN_EXE_render-worker"),
        "nats://127.0.0.1:1",
        "memory://unused",
        &[("URL_INPUTS__EGRESS__ALLOW", "[\"http://not-an-entry\"]")],
    )?;
    let status = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || worker.wait()),
    )
    .await???;
    assert_eq!(status.code(), Some(64), "exit code for bad configuration");
    Ok(())
}
