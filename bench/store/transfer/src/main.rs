//! The driver of the store benchmark (`bench/store.sh`): one large object
//! through the Store gRPC API, Upload (client streaming, size and sha256
//! declared) then Download (server streaming, checked against the same
//! sha256), reporting throughput and the server's peak RSS for each
//! direction.
//!
//! The peak is the kernel's high-water mark (VmHWM in /proc/<pid>/status),
//! reset before each direction by writing 5 to /proc/<pid>/clear_refs, so
//! each figure is that transfer's own peak. The content is generated on the
//! fly (never held whole here either) and hashed in a first pass, since the
//! Upload header carries the checksum. Prints one JSON object on stdout.

use std::time::Instant;

use anyhow::Context as _;
use bytes::{Bytes, BytesMut};
use clap::Parser;
use futures::StreamExt as _;
use reelmesh_proto::v1::{self as pb, store_client::StoreClient, upload_request::Part};
use sha2::{Digest as _, Sha256};
use tonic::{Request, metadata::MetadataValue, transport::Channel};

/// The client's chunk size, as `reelmesh` itself uploads.
const CHUNK: usize = 256 * 1024;
const MIB: f64 = 1024.0 * 1024.0;

#[derive(Debug, Parser)]
struct Args {
    /// The store's gRPC endpoint, e.g. http://127.0.0.1:50052.
    #[arg(long)]
    endpoint: String,
    /// An API key the store accepts.
    #[arg(long)]
    api_key: String,
    /// The server's process id, whose peak RSS is read.
    #[arg(long)]
    pid: u32,
    /// Object size in MiB.
    #[arg(long, default_value_t = 1024)]
    mib: u64,
    #[arg(long, default_value = "bench/big.bin")]
    key: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let content = Content::new(args.mib * 1024 * 1024);
    eprintln!("hashing {} MiB of generated content", args.mib);
    let sha256 = content.sha256();
    let channel = Channel::from_shared(args.endpoint.clone())?
        .connect()
        .await
        .with_context(|| format!("connecting to {}", args.endpoint))?;
    let mut client = StoreClient::new(channel)
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20);
    let auth: MetadataValue<_> = format!("Bearer {}", args.api_key).parse()?;
    let idle_kib = rss_kib(args.pid, "VmRSS")?;

    reset_peak(args.pid)?;
    eprintln!("uploading");
    let started = Instant::now();
    upload(&mut client, &auth, &args.key, &content, &sha256).await?;
    let upload_secs = started.elapsed().as_secs_f64();
    let upload_peak_kib = rss_kib(args.pid, "VmHWM")?;

    reset_peak(args.pid)?;
    eprintln!("downloading");
    let started = Instant::now();
    let downloaded = download(&mut client, &auth, &args.key).await?;
    let download_secs = started.elapsed().as_secs_f64();
    let download_peak_kib = rss_kib(args.pid, "VmHWM")?;
    anyhow::ensure!(
        downloaded == (content.size, sha256.clone()),
        "downloaded {downloaded:?}, uploaded {} bytes with sha256 {sha256}",
        content.size
    );

    let mib = content.size as f64 / MIB;
    let report = serde_json::json!({
        "size_mib": mib,
        "server_idle_rss_mib": idle_kib as f64 / 1024.0,
        "upload": {
            "seconds": upload_secs,
            "mib_per_s": mib / upload_secs,
            "server_peak_rss_mib": upload_peak_kib as f64 / 1024.0,
        },
        "download": {
            "seconds": download_secs,
            "mib_per_s": mib / download_secs,
            "server_peak_rss_mib": download_peak_kib as f64 / 1024.0,
        },
    });
    println!("{report}");
    Ok(())
}

/// Pseudo-random bytes made chunk by chunk: one random block, each copy
/// stamped with its index so no two chunks are alike.
struct Content {
    size: u64,
    block: Bytes,
}

impl Content {
    fn new(size: u64) -> Self {
        let block: Vec<u8> = (0..CHUNK).map(|_| rand::random::<u8>()).collect();
        Content {
            size,
            block: Bytes::from(block),
        }
    }

    fn chunks(&self) -> impl Iterator<Item = Bytes> + Send + 'static {
        let (size, block) = (self.size, self.block.clone());
        (0..size.div_ceil(CHUNK as u64)).map(move |index| {
            let length = (size - index * CHUNK as u64).min(CHUNK as u64) as usize;
            let mut chunk = BytesMut::from(&block[..length]);
            let stamp = index.to_le_bytes();
            let stamped = stamp.len().min(length);
            chunk[..stamped].copy_from_slice(&stamp[..stamped]);
            chunk.freeze()
        })
    }

    fn sha256(&self) -> String {
        let mut hasher = Sha256::new();
        self.chunks().for_each(|chunk| hasher.update(&chunk));
        hex::encode(hasher.finalize())
    }
}

async fn upload(
    client: &mut StoreClient<Channel>,
    auth: &MetadataValue<tonic::metadata::Ascii>,
    key: &str,
    content: &Content,
    sha256: &str,
) -> anyhow::Result<()> {
    let header = pb::UploadRequest {
        part: Some(Part::Header(pb::UploadHeader {
            key: key.to_string(),
            size_bytes: Some(content.size),
            sha256: sha256.to_string(),
        })),
    };
    let chunks = content.chunks().map(|chunk| pb::UploadRequest {
        part: Some(Part::Chunk(chunk)),
    });
    let messages = futures::stream::iter(std::iter::once(header).chain(chunks));
    let mut request = Request::new(messages);
    request.metadata_mut().insert("authorization", auth.clone());
    let stored = client.upload(request).await?.into_inner();
    anyhow::ensure!(stored.size_bytes == content.size, "stored {stored:?}");
    Ok(())
}

/// Streams the object back, returning its size and sha256.
async fn download(
    client: &mut StoreClient<Channel>,
    auth: &MetadataValue<tonic::metadata::Ascii>,
    key: &str,
) -> anyhow::Result<(u64, String)> {
    let mut request = Request::new(pb::DownloadRequest {
        key: key.to_string(),
        ..Default::default()
    });
    request.metadata_mut().insert("authorization", auth.clone());
    let mut chunks = client.download(request).await?.into_inner();
    let (mut size, mut hasher) = (0u64, Sha256::new());
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        size += chunk.data.len() as u64;
        hasher.update(&chunk.data);
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// A memory figure of `pid` in KiB: VmRSS (now) or VmHWM (peak).
fn rss_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} for process {pid}"))
}

/// Starts a new peak: the kernel sets VmHWM back to the current RSS.
fn reset_peak(pid: u32) -> anyhow::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("resetting the peak RSS of process {pid} (needs root)"))
}
