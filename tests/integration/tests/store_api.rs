//! The Store gRPC API as clients use it: bad keys and bad uploads are refused
//! with INVALID_ARGUMENT and store nothing; tenants are kept apart; the
//! standalone store service and the gateway serve the same media.

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
