//! Ingest jobs: media into the asset catalog. The render worker does them
//! because it already has what they need: the egress-guarded URL fetcher,
//! the store, and GStreamer to check that the bytes are media.
//!
//! Nothing is done twice: a source URL the catalog knows is not fetched,
//! and content it knows (same sha256) is not stored again.
//!
//! A stop (cancel, or a draining worker handing the job back) ends the
//! download at once; an upload under way is let finish and then removed,
//! so a stopped ingest leaves neither an object nor a catalog entry.

use std::path::Path;

use reelmesh_nats::{AssetId, AssetRecord, JobOutput, JobRecord, Registered};
use reelmesh_store::ObjectKey;
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use tokio::io::AsyncReadExt as _;
use tokio_util::sync::CancellationToken;

use super::{RenderWorker, summary, unless_stopped};
use crate::{RenderError, input::InputRef, media};

impl RenderWorker {
    pub(super) async fn ingest(
        &self,
        job: &JobRecord,
        (source, title): (&InputRef, &str),
        scratch: &Path,
        stopped: &CancellationToken,
    ) -> Result<JobOutput, RenderError> {
        let catalog = &self.topology.assets;
        let source_url = match source {
            InputRef::Url(url) => Some(url.to_string()),
            InputRef::Asset(_) => None,
        };
        if let Some(url) = &source_url
            && let Some(asset) = catalog.by_source_url(&job.tenant, url).await?
        {
            return Ok(asset_output(asset, true));
        }
        let path = scratch.join("input-0");
        unless_stopped(stopped, self.fetch_input(job, source, &path)).await?;
        let (sha256, size_bytes) = file_sha256(&path).await?;
        let media = probe(&path, source).await?;
        let id = AssetId::new();
        let key = asset_key(&id, source)?;
        if stopped.is_cancelled() {
            return Err(RenderError::Cancelled);
        }
        if let InputRef::Url(_) = source {
            self.store.upload_file(&job.tenant, &key, &path).await?;
            if stopped.is_cancelled() {
                self.store.delete(&job.tenant, &key).await?;
                return Err(RenderError::Cancelled);
            }
        }
        let record = AssetRecord {
            id,
            tenant: job.tenant.clone(),
            key: key.to_string(),
            title: Some(title.trim())
                .filter(|title| !title.is_empty())
                .map_or_else(|| default_title(source), str::to_string),
            source_url,
            sha256,
            size_bytes,
            media: summary(media),
            created_at: OffsetDateTime::now_utc(),
        };
        match catalog.register(record).await? {
            Registered::New(asset) => Ok(asset_output(asset, false)),
            Registered::Existing(asset) => {
                if let InputRef::Url(_) = source {
                    // Same content as an asset we have: keep one copy.
                    self.store.delete(&job.tenant, &key).await?;
                }
                Ok(asset_output(asset, true))
            }
        }
    }
}

/// The job's output names the asset. `keys` stays empty: the media is the
/// catalog's, so job retention must not delete it.
fn asset_output(asset: AssetRecord, existing: bool) -> JobOutput {
    JobOutput {
        key: asset.key,
        size_bytes: asset.size_bytes,
        media: asset.media,
        asset_id: Some(asset.id.to_string()),
        existing_asset: existing,
        ..Default::default()
    }
}

/// A fetched URL is stored as `assets/<id>/<its file name>`; an uploaded
/// object stays where it is.
fn asset_key(id: &AssetId, source: &InputRef) -> Result<ObjectKey, RenderError> {
    match source {
        InputRef::Asset(key) => Ok(key.clone()),
        InputRef::Url(url) => {
            let name = url
                .path_segments()
                .and_then(|mut segments| segments.next_back())
                .filter(|name| !name.is_empty())
                .unwrap_or("media");
            ObjectKey::parse(&format!("assets/{id}/{name}"))
                .or_else(|_| ObjectKey::parse(&format!("assets/{id}/media")))
                .map_err(|err| RenderError::Plan(err.to_string()))
        }
    }
}

fn default_title(source: &InputRef) -> String {
    let named = source.to_string();
    named.rsplit('/').next().unwrap_or(&named).to_string()
}

async fn file_sha256(path: &Path) -> Result<(String, u64), RenderError> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let read = file.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        size += read as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// Refuses what GStreamer cannot read as media, naming the source.
async fn probe(path: &Path, source: &InputRef) -> Result<media::MediaInfo, RenderError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || media::probe(&path))
        .await
        .map_err(|err| RenderError::Pipeline(err.to_string()))?
        .map_err(|err| RenderError::BadInput {
            asset: source.to_string(),
            reason: format!("is not media GStreamer can read: {err}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetched_media_keeps_its_file_name_under_the_asset_id() {
        let id = AssetId::new();
        let url = |text: &str| InputRef::Url(url::Url::parse(text).expect("url"));
        let key = asset_key(&id, &url("https://cdn.example.com/a/song.m4a?sig=1")).expect("key");
        assert_eq!(key.as_str(), format!("assets/{id}/song.m4a"));
        let bare = asset_key(&id, &url("https://cdn.example.com/")).expect("key");
        assert_eq!(bare.as_str(), format!("assets/{id}/media"));
        let uploaded = InputRef::Asset(ObjectKey::parse("in/x.mp4").expect("key"));
        assert_eq!(asset_key(&id, &uploaded).expect("key").as_str(), "in/x.mp4");
        assert_eq!(
            default_title(&url("https://h/a/Song%20One.mp3")),
            "Song%20One.mp3"
        );
    }
}
