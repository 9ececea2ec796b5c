//! The Store gRPC API as clients use it: bad keys and bad uploads are refused
//! with INVALID_ARGUMENT and store nothing; tenants are kept apart; the
//! standalone store service and the gateway serve the same media; listing
//! pages, byte ranges and deletes behave the same on memory and file stores.

use futures::StreamExt as _;
use reelmesh_cli::ReelmeshClient;
use reelmesh_integration_tests::{KEY_A, KEY_B, TestCluster};
use reelmesh_proto::v1::{self as pb, upload_request::Part};
use tonic::Code;

fn header(key: &str, size: Option<u64>, sha256: &str) -> pb::UploadRequest {
    pb::UploadRequest {
        part: Some(Part::Header(pb::UploadHeader {
            key: key.into(),
            size_bytes: size,
            sha256: sha256.into(),
        })),
    }
}

fn chunk(data: &'static [u8]) -> pb::UploadRequest {
    pb::UploadRequest {
        part: Some(Part::Chunk(bytes::Bytes::from_static(data))),
    }
}

async fn upload(
    client: &mut ReelmeshClient,
    messages: Vec<pb::UploadRequest>,
) -> Result<pb::ObjectInfo, tonic::Status> {
    Ok(client
        .store
        .upload(futures::stream::iter(messages))
        .await?
        .into_inner())
}

async fn stat(client: &mut ReelmeshClient, key: &str) -> Code {
    match client.store.stat(pb::StatRequest { key: key.into() }).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_and_bad_uploads_are_refused_and_store_nothing() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let mut client = cluster.client(KEY_A).await?;
    for key in ["../escape.mp4", "/abs.mp4", "a//b.mp4", "tab\there.mp4"] {
        let err = upload(&mut client, vec![header(key, None, ""), chunk(b"x")])
            .await
            .expect_err(key);
        assert_eq!(err.code(), Code::InvalidArgument, "{key}: {err:?}");
        assert!(err.message().contains("key"), "{key}: {}", err.message());
    }
    let wrong_sha = header("in/a.bin", Some(3), &"00".repeat(32));
    let err = upload(&mut client, vec![wrong_sha, chunk(b"abc")])
        .await
        .expect_err("sha");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("sha256"), "{}", err.message());
    let err = upload(
        &mut client,
        vec![header("in/a.bin", Some(2), ""), chunk(b"abc")],
    )
    .await
    .expect_err("size");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        stat(&mut client, "in/a.bin").await,
        Code::NotFound,
        "a refused upload leaves nothing"
    );

    let err = upload(&mut client, vec![chunk(b"abc")])
        .await
        .expect_err("no header");
    assert_eq!(err.code(), Code::InvalidArgument);
    let missing = client
        .store
        .download(pb::DownloadRequest {
            key: "in/none.bin".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(missing.expect_err("missing").code(), Code::NotFound);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_round_trip_per_tenant_through_both_store_endpoints() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let mut gateway = cluster.client(KEY_A).await?;
    let content: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    let stored = gateway
        .upload_bytes(content.clone().into(), "in/data.bin")
        .await?;
    assert_eq!(stored.size_bytes, content.len() as u64);
    assert_eq!(stored.sha256.len(), 64);

    // The standalone store service sees the same object for the same tenant.
    let endpoint = format!("http://{}", cluster.cluster.store_addr);
    let mut standalone = ReelmeshClient::connect(&endpoint, KEY_A).await?;
    let mut chunks = standalone
        .store
        .download(pb::DownloadRequest {
            key: "in/data.bin".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut downloaded = Vec::new();
    while let Some(chunk) = chunks.next().await {
        downloaded.extend_from_slice(&chunk?.data);
    }
    assert_eq!(downloaded, content);

    let mut other_tenant = cluster.client(KEY_B).await?;
    assert_eq!(stat(&mut other_tenant, "in/data.bin").await, Code::NotFound);
    Ok(())
}

async fn download_range(
    client: &mut ReelmeshClient,
    key: &str,
    offset: u64,
    length: Option<u64>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut chunks = client
        .store
        .download(pb::DownloadRequest {
            key: key.into(),
            offset,
            length,
        })
        .await?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = chunks.next().await {
        bytes.extend_from_slice(&chunk?.data);
    }
    Ok(bytes)
}

/// Every key under `prefix`, page by page, checking each page's size.
async fn list_all(
    client: &mut ReelmeshClient,
    prefix: &str,
    page_size: u32,
) -> anyhow::Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .store
            .list(pb::ListRequest {
                prefix: prefix.into(),
                page_size,
                page_token,
            })
            .await?
            .into_inner();
        assert!(page.objects.len() <= page_size as usize);
        assert!(page.objects.iter().all(|o| o.last_modified.is_some()));
        keys.extend(page.objects.into_iter().map(|o| o.key));
        if page.next_page_token.is_empty() {
            return Ok(keys);
        }
        page_token = page.next_page_token;
    }
}

async fn lists_ranges_and_deletes(cluster: &TestCluster) -> anyhow::Result<()> {
    let mut client = cluster.client(KEY_A).await?;
    let mut names: Vec<String> = (0..7).map(|i| format!("clips/c{i}.bin")).collect();
    names.extend([
        "clips/sub/d.bin".into(),
        "music/m.bin".into(),
        "clipsx.bin".into(),
    ]);
    for name in &names {
        client
            .upload_bytes(name.clone().into_bytes().into(), name)
            .await?;
    }
    let mut other = cluster.client(KEY_B).await?;
    other
        .upload_bytes(b"b".to_vec().into(), "clips/theirs.bin")
        .await?;

    // Pages of 3 add up to every key under the prefix, in order, once.
    let mut under_clips: Vec<String> = names
        .iter()
        .filter(|n| n.starts_with("clips/"))
        .cloned()
        .collect();
    under_clips.sort();
    assert_eq!(list_all(&mut client, "clips/", 3).await?, under_clips);
    // A prefix may end inside a name; the other tenant's keys never show.
    let mut all_clips = under_clips.clone();
    all_clips.push("clipsx.bin".into());
    all_clips.sort();
    assert_eq!(list_all(&mut client, "clips", 4).await?, all_clips);
    assert_eq!(list_all(&mut client, "clips/c", 100).await?.len(), 7);
    assert_eq!(list_all(&mut client, "", 1000).await?.len(), names.len());

    for bad in ["../", "/abs"] {
        let err = list_all(&mut client, bad, 10).await.expect_err(bad);
        let status = err.downcast_ref::<tonic::Status>().expect("a status");
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}");
    }
    let forged = client
        .store
        .list(pb::ListRequest {
            prefix: "clips/".into(),
            page_size: 2,
            page_token: "not hex".into(),
        })
        .await
        .expect_err("forged token");
    assert_eq!(forged.code(), Code::InvalidArgument);

    // Byte ranges: "clips/c3.bin" holds its own name (12 bytes).
    let key = "clips/c3.bin";
    assert_eq!(download_range(&mut client, key, 6, Some(2)).await?, b"c3");
    assert_eq!(download_range(&mut client, key, 6, None).await?, b"c3.bin");
    assert_eq!(download_range(&mut client, key, 10, Some(99)).await?, b"in");
    let beyond = download_range(&mut client, key, 12, Some(1)).await;
    assert_eq!(beyond.expect_err("beyond").code(), Code::OutOfRange);

    // Delete: gone afterwards, NOT_FOUND the second time, others untouched.
    let delete = |key: &str| pb::DeleteRequest { key: key.into() };
    client.store.delete(delete(key)).await?;
    assert_eq!(stat(&mut client, key).await, Code::NotFound);
    let again = client.store.delete(delete(key)).await.expect_err("gone");
    assert_eq!(again.code(), Code::NotFound);
    let theirs = client.store.delete(delete("clips/theirs.bin")).await;
    assert_eq!(theirs.expect_err("not ours").code(), Code::NotFound);
    assert_eq!(stat(&mut other, "clips/theirs.bin").await, Code::Ok);
    assert_eq!(
        list_all(&mut client, "clips/", 3).await?.len(),
        under_clips.len() - 1
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_lists_pages_serves_ranges_and_deletes() -> anyhow::Result<()> {
    lists_ranges_and_deletes(&TestCluster::start().await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_lists_pages_serves_ranges_and_deletes() -> anyhow::Result<()> {
    lists_ranges_and_deletes(&TestCluster::start_without_render(|_| {}).await?).await
}
