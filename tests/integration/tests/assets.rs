//! The asset catalog end to end: ingest jobs bring media in from a URL or an
//! upload; the same URL is not fetched again and the same content is not
//! stored again; GetAsset finds an asset by id or source URL; SearchAssets
//! matches titles without regard to case, a page at a time, per tenant.

use std::time::Duration;

use futures::StreamExt as _;
use object_store::ObjectStore as _;
use reelmesh_cli::{ReelmeshClient, client::asset_source};
use reelmesh_integration_tests::{
    KEY_A, KEY_B, TestCluster, clips, media_server::MediaServer, started,
};
use reelmesh_proto::v1::{self as pb, get_asset_request::By, job_spec::Operation};
use sha2::{Digest as _, Sha256};
use tonic::Code;

fn ingest(source: pb::Source, title: &str) -> pb::JobSpec {
    pb::JobSpec {
        operation: Some(Operation::Ingest(pb::Ingest {
            source: Some(source),
            title: title.into(),
        })),
        ..Default::default()
    }
}

fn url_source(url: &str) -> pb::Source {
    pb::Source {
        kind: Some(pb::source::Kind::Url(url.into())),
    }
}

async fn run(client: &mut ReelmeshClient, spec: pb::JobSpec) -> anyhow::Result<pb::Job> {
    let job = client.submit(spec).await?;
    let events = client.watch(&job.id).await?;
    tokio::time::timeout(Duration::from_secs(60), events.for_each(|_| async {})).await?;
    Ok(client.get(&job.id).await?)
}

/// Runs an ingest that must complete; returns its output.
async fn ingested(client: &mut ReelmeshClient, spec: pb::JobSpec) -> anyhow::Result<pb::JobOutput> {
    let job = run(client, spec).await?;
    assert_eq!(job.state(), pb::JobState::Completed, "{job:?}");
    let output = job.output.expect("a completed job has an output");
    assert!(output.keys.is_empty(), "assets are not job outputs");
    Ok(output)
}

async fn get(client: &mut ReelmeshClient, by: By) -> Result<pb::Asset, tonic::Status> {
    Ok(client
        .assets
        .get_asset(pb::GetAssetRequest { by: Some(by) })
        .await?
        .into_inner())
}

/// Titles of every asset matching `title`, fetched `page_size` at a time.
async fn search(
    client: &mut ReelmeshClient,
    title: &str,
    page_size: u32,
) -> anyhow::Result<Vec<String>> {
    let mut titles = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .assets
            .search_assets(pb::SearchAssetsRequest {
                title: title.into(),
                page_size,
                page_token,
            })
            .await?
            .into_inner();
        assert!(page.assets.len() <= page_size as usize);
        titles.extend(page.assets.into_iter().map(|asset| asset.title));
        if page.next_page_token.is_empty() {
            return Ok(titles);
        }
        page_token = page.next_page_token;
    }
}

async fn stored_assets(cluster: &TestCluster) -> anyhow::Result<usize> {
    let store = reelmesh_store::MediaStore::open(&cluster.store_url, &[])?;
    let listed: Vec<_> = store.backend().list(None).collect().await;
    let mut count = 0;
    for meta in listed {
        count += usize::from(meta?.location.as_ref().contains("/assets/"));
    }
    Ok(count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_dedupes_by_url_and_content_and_titles_are_searchable() -> anyhow::Result<()> {
    let cluster = TestCluster::start_with(|config| {
        config.render.url_inputs.egress.allow = vec!["127.0.0.1".into()];
    })
    .await?;
    let clip = std::fs::read(clips::six_second_clip())?;
    let sha256: String = Sha256::digest(&clip)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let server = MediaServer::start(clip.clone()).await?;
    let mut client = cluster.client(KEY_A).await?;

    let url = server.url("/media.mp4");
    let first = ingested(&mut client, ingest(url_source(&url), "Sunset over Oslo")).await?;
    assert!(!first.existing_asset);
    assert!(first.key.starts_with("assets/") && first.key.ends_with("/media.mp4"));
    let asset = get(&mut client, By::Id(first.asset_id.clone())).await?;
    assert_eq!(
        (asset.sha256.as_str(), asset.size_bytes),
        (sha256.as_str(), clip.len() as u64)
    );
    assert_eq!(asset.source_url, url);
    let media = asset.media.expect("media info");
    assert_eq!(media.video_codec, "h264");
    assert!((media.duration_seconds - 6.0).abs() < 0.1, "{media:?}");

    // The same URL: answered from the catalog, not fetched.
    let fetched = server.requests();
    let again = ingested(&mut client, ingest(url_source(&url), "again")).await?;
    assert!(again.existing_asset && again.asset_id == first.asset_id);
    assert_eq!(server.requests(), fetched, "a known URL is not fetched");

    // Another URL with the same bytes: fetched, recognised, not stored.
    let mirror = server.url("/media.mp4?mirror=2");
    let same = ingested(&mut client, ingest(url_source(&mirror), "mirror")).await?;
    assert!(same.existing_asset && same.asset_id == first.asset_id);
    assert_eq!(stored_assets(&cluster).await?, 1, "one copy of the content");
    let by_mirror = get(&mut client, By::SourceUrl(mirror)).await?;
    assert_eq!(by_mirror.id, first.asset_id, "the mirror URL is remembered");

    // An upload is catalogued where it lies.
    let (_dir, other) = clips::make(2.0, 160, 120);
    client.upload_file(&other, "in/bergen.mp4").await?;
    let uploaded = ingested(
        &mut client,
        ingest(asset_source("in/bergen.mp4"), "Morning in Bergen"),
    )
    .await?;
    assert!(!uploaded.existing_asset && uploaded.key == "in/bergen.mp4");

    // Something that is not media fails, naming it, and catalogues nothing.
    client
        .upload_bytes(b"not a video".to_vec().into(), "in/notes.txt")
        .await?;
    let bad = run(&mut client, ingest(asset_source("in/notes.txt"), "notes")).await?;
    assert_eq!(bad.state(), pb::JobState::Failed);
    assert!(
        bad.error.contains("in/notes.txt") && bad.error.contains("not media"),
        "{}",
        bad.error
    );
    assert_eq!(bad.attempts.len(), 1, "bad input is not retried");

    assert_eq!(
        search(&mut client, "OSLO", 10).await?,
        vec!["Sunset over Oslo"]
    );
    assert_eq!(
        search(&mut client, "in", 10).await?,
        vec!["Morning in Bergen"]
    );
    assert_eq!(
        search(&mut client, "", 1).await?,
        vec!["Sunset over Oslo", "Morning in Bergen"],
        "oldest first, one per page"
    );

    let missing = get(
        &mut client,
        By::Id("0199aaaa-0000-7000-8000-000000000000".into()),
    )
    .await;
    assert_eq!(missing.expect_err("no such asset").code(), Code::NotFound);
    let malformed = get(&mut client, By::Id("nope".into())).await;
    assert_eq!(malformed.expect_err("bad id").code(), Code::InvalidArgument);

    // Another tenant sees none of it.
    let mut other_tenant = cluster.client(KEY_B).await?;
    assert!(search(&mut other_tenant, "", 10).await?.is_empty());
    let theirs = get(&mut other_tenant, By::Id(first.asset_id.clone())).await;
    assert_eq!(theirs.expect_err("not theirs").code(), Code::NotFound);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_ingest_ends_its_download_and_catalogs_nothing() -> anyhow::Result<()> {
    let cluster = TestCluster::start_with(|config| {
        config.render.url_inputs.egress.allow = vec!["127.0.0.1".into()];
    })
    .await?;
    let server = MediaServer::start(std::fs::read(clips::six_second_clip())?).await?;
    let mut client = cluster.client(KEY_A).await?;
    let url = server.url("/hanging.mp4");
    let job = client.submit(ingest(url_source(&url), "never")).await?;
    started(&mut client, &job.id).await?;
    client.cancel(&job.id).await?;
    // The download would hang for the fetcher's 10 minute timeout (longer
    // than this wait); the cancel ends it and the worker lets the item go.
    cluster.wait_until_work_settled().await?;
    let job = client.get(&job.id).await?;
    assert_eq!(job.state(), pb::JobState::Cancelled, "{job:?}");
    assert_eq!(server.requests(), 1);
    assert_eq!(stored_assets(&cluster).await?, 0);
    let status = get(&mut client, By::SourceUrl(url))
        .await
        .expect_err("nothing cataloged");
    assert_eq!(status.code(), Code::NotFound, "{status}");
    Ok(())
}
