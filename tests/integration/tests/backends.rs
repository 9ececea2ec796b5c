//! The same media round trip on every kind of store: S3 (moto's server),
//! Azure Blob (Azurite), a local directory and memory. Each test uploads a
//! clip through the Store API, runs real render jobs on it (a copy-only trim
//! and an audio extraction), downloads and checks the results, and proves an
//! upload with a wrong checksum leaves nothing on the backend.

use std::{path::PathBuf, time::Duration};

use futures::{StreamExt as _, TryStreamExt as _};
use reelmesh_cli::{ReelmeshClient, client::asset_source};
use reelmesh_integration_tests::{
    KEY_A, TestCluster, clips,
    emulators::{AzuriteEmulator, S3Emulator},
    packets::video_packets,
};
use reelmesh_proto::v1::{self as pb, job_spec::Operation, upload_request::Part};
use reelmesh_render::media;
use reelmesh_store::StoreOptions;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_emulator_round_trip() -> anyhow::Result<()> {
    let s3 = S3Emulator::start().await?;
    round_trip(&s3.store_url(), s3.store_options()).await?;
    let keys = s3.object_keys().await?;
    assert!(
        keys.iter()
            .any(|key| key == "reelmesh/tenants/tenant-a/in/clip.mp4"),
        "the clip is in the emulator's bucket, under the URL's prefix: {keys:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azurite_round_trip() -> anyhow::Result<()> {
    let azurite = AzuriteEmulator::start().await?;
    round_trip(&azurite.store_url(), azurite.store_options()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_round_trip() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let url = format!("file://{}/store", dir.path().display());
    round_trip(&url, StoreOptions::default()).await?;
    assert!(
        dir.path()
            .join("store/tenants/tenant-a/in/clip.mp4")
            .is_file()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_round_trip() -> anyhow::Result<()> {
    let url = format!("memory://backends-{}", std::process::id());
    round_trip(&url, StoreOptions::default()).await
}

/// The whole check on one backend.
async fn round_trip(store_url: &str, options: StoreOptions) -> anyhow::Result<()> {
    let cluster = TestCluster::start_on(store_url, options, |_| {}).await?;
    let mut client = cluster.client(KEY_A).await?;
    let input = clips::six_second_clip();
    let uploaded = client.upload_file(input, "in/clip.mp4").await?;
    assert_eq!(uploaded.size_bytes, std::fs::metadata(input)?.len());

    trim_copies_packets(&mut client).await?;
    extract_audio_copies_aac(&mut client).await?;
    signed_urls_serve_plain_http(&mut client).await?;
    lists_in_pages(&mut client).await?;
    wrong_checksum_stores_nothing(&cluster, &mut client).await?;
    cluster.cluster.shutdown().await
}

async fn signed_url(
    client: &mut ReelmeshClient,
    key: &str,
    method: pb::SignedUrlMethod,
) -> Result<String, tonic::Status> {
    let signed = client
        .store
        .signed_url(pb::SignedUrlRequest {
            key: key.into(),
            method: method as i32,
            expires_in_seconds: 600,
        })
        .await?
        .into_inner();
    assert!(signed.expires_at.is_some());
    Ok(signed.url)
}

/// SignedUrl: a plain HTTP client without an API key reads the object and
/// writes a new one (presigned by S3 or Azure, or a link served by the
/// gateway for file and memory stores).
async fn signed_urls_serve_plain_http(client: &mut ReelmeshClient) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let get = signed_url(client, "in/clip.mp4", pb::SignedUrlMethod::Get).await?;
    let body = http
        .get(&get)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    assert_eq!(
        body.as_ref(),
        std::fs::read(clips::six_second_clip())?.as_slice()
    );

    let put = signed_url(client, "in/put.bin", pb::SignedUrlMethod::Put).await?;
    http.put(&put)
        // Azure wants the blob type named; the others ignore it.
        .header("x-ms-blob-type", "BlockBlob")
        .body(b"put through a link".to_vec())
        .send()
        .await?
        .error_for_status()?;
    let stat = client
        .store
        .stat(pb::StatRequest {
            key: "in/put.bin".into(),
        })
        .await?
        .into_inner();
    assert_eq!(stat.size_bytes, 18);

    let missing = signed_url(client, "in/none.mp4", pb::SignedUrlMethod::Get).await;
    assert_eq!(missing.expect_err("no such object").code(), Code::NotFound);
    if get.contains("/v1/links/") {
        // Our own links: one altered character and the signature fails.
        let (head, last) = get.split_at(get.len() - 1);
        let tampered = format!("{head}{}", if last == "A" { "B" } else { "A" });
        let refused = http.get(&tampered).send().await?;
        assert_eq!(refused.status(), reqwest::StatusCode::FORBIDDEN);
    }
    Ok(())
}

/// List pages of 2 over five small objects: each key once, in order.
async fn lists_in_pages(client: &mut ReelmeshClient) -> anyhow::Result<()> {
    let names: Vec<String> = (0..5).map(|i| format!("pages/p{i}.bin")).collect();
    for name in &names {
        client
            .upload_bytes(name.clone().into_bytes().into(), name)
            .await?;
    }
    let mut listed = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .store
            .list(pb::ListRequest {
                prefix: "pages/".into(),
                page_size: 2,
                page_token,
            })
            .await?
            .into_inner();
        listed.extend(page.objects.into_iter().map(|object| object.key));
        if page.next_page_token.is_empty() {
            break;
        }
        anyhow::ensure!(listed.len() <= names.len(), "pages repeat keys: {listed:?}");
        page_token = page.next_page_token;
    }
    assert_eq!(listed, names);
    Ok(())
}

/// Cut on keyframes (every 2 s in test clips): the stored result holds the
/// input's own packets, read back from the backend.
async fn trim_copies_packets(client: &mut ReelmeshClient) -> anyhow::Result<()> {
    let trim = pb::JobSpec {
        copy: pb::CopyMode::Auto as i32,
        ..spec(Operation::Trim(pb::Trim {
            input: Some(asset_source("in/clip.mp4")),
            start_seconds: 2.0,
            end_seconds: 4.0,
        }))
    };
    let output = completed(run(client, trim).await?);
    assert!(output.copied, "a cut on keyframes needs no re-encode");
    let (_dir, result) = download(client, &output).await?;
    let source = video_packets(clips::six_second_clip())?;
    assert_eq!(video_packets(&result)?, source[60..120]);
    let info = media::probe(&result)?;
    assert!((info.duration_seconds - 2.0).abs() <= 0.1, "{info:?}");
    Ok(())
}

async fn extract_audio_copies_aac(client: &mut ReelmeshClient) -> anyhow::Result<()> {
    let extract = pb::JobSpec {
        output: Some(pb::OutputSpec {
            container: pb::Container::M4a as i32,
            ..Default::default()
        }),
        ..spec(Operation::ExtractAudio(pb::ExtractAudio {
            input: Some(asset_source("in/clip.mp4")),
        }))
    };
    let output = completed(run(client, extract).await?);
    assert!(output.copied, "AAC goes into M4A without re-encoding");
    let (_dir, result) = download(client, &output).await?;
    let info = media::probe(&result)?;
    assert!(info.video.is_none(), "{info:?}");
    assert_eq!(info.audio.map(|a| a.codec), Some("aac".into()));
    assert!((info.duration_seconds - 6.0).abs() <= 0.1);
    Ok(())
}

/// Refused with INVALID_ARGUMENT, and no trace on the backend itself: no
/// object, no staged upload showing in a listing.
async fn wrong_checksum_stores_nothing(
    cluster: &TestCluster,
    client: &mut ReelmeshClient,
) -> anyhow::Result<()> {
    let messages = vec![
        pb::UploadRequest {
            part: Some(Part::Header(pb::UploadHeader {
                key: "in/bad.bin".into(),
                size_bytes: Some(4),
                sha256: "00".repeat(32),
            })),
        },
        pb::UploadRequest {
            part: Some(Part::Chunk(bytes::Bytes::from_static(b"data"))),
        },
    ];
    let err = client
        .store
        .upload(futures::stream::iter(messages))
        .await
        .expect_err("a wrong sha256 is refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("sha256"), "{}", err.message());
    let stat = client
        .store
        .stat(pb::StatRequest {
            key: "in/bad.bin".into(),
        })
        .await;
    assert_eq!(stat.map(|_| ()).map_err(|s| s.code()), Err(Code::NotFound));
    let stored: Vec<String> = cluster
        .open_store()?
        .backend()
        .list(None)
        .map_ok(|meta| meta.location.to_string())
        .try_collect()
        .await?;
    assert!(
        !stored.iter().any(|location| location.contains("bad.bin")),
        "{stored:?}"
    );
    Ok(())
}

fn spec(operation: Operation) -> pb::JobSpec {
    pb::JobSpec {
        operation: Some(operation),
        ..Default::default()
    }
}

/// Submits `spec`, follows it to its end and returns the final job.
async fn run(client: &mut ReelmeshClient, spec: pb::JobSpec) -> anyhow::Result<pb::Job> {
    let job = client.submit(spec).await?;
    let events = client.watch(&job.id).await?;
    tokio::time::timeout(Duration::from_secs(90), events.for_each(|_| async {})).await?;
    Ok(client.get(&job.id).await?)
}

fn completed(job: pb::Job) -> pb::JobOutput {
    assert_eq!(
        job.state(),
        pb::JobState::Completed,
        "job failed: {}",
        job.error
    );
    job.output.expect("a completed job has an output")
}

/// Downloads an output through the Store API into a temporary directory
/// (kept while the returned guard lives), checking its size.
async fn download(
    client: &mut ReelmeshClient,
    output: &pb::JobOutput,
) -> anyhow::Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let local = dir
        .path()
        .join(output.key.rsplit('/').next().unwrap_or("out"));
    let size = client.download_file(&output.key, &local).await?;
    assert_eq!(size, output.size_bytes);
    Ok((dir, local))
}
