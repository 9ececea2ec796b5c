//! The asset catalog: one record per ingested piece of media (title, source
//! URL, sha256, size, media info) in a KV bucket, with two indexes kept
//! beside the records so that the same source URL or the same content is
//! recognised instead of fetched or stored again.
//!
//! Keys: `<tenant>.asset.<id>` holds the record; `<tenant>.url.<hash>` and
//! `<tenant>.sha.<sha256>` hold an asset id. An index entry is claimed by
//! KV create, so of two ingests of the same content only one makes a record.

use async_nats::jetstream::kv;
use futures::TryStreamExt as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;

use crate::{MediaSummary, NatsError, TenantId, claim::claim, id::time_ordered_id, kv_json};

time_ordered_id!(
    /// An asset's id: sorts by creation time.
    AssetId,
    "asset"
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssetRecord {
    pub id: AssetId,
    pub tenant: TenantId,
    /// Store key of the media, relative to the tenant.
    pub key: String,
    pub title: String,
    pub source_url: Option<String>,
    pub sha256: String,
    pub size_bytes: u64,
    pub media: MediaSummary,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// What [`AssetCatalog::register`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Registered {
    /// The record is in the catalog now.
    New(AssetRecord),
    /// The same content was catalogued first; this is that asset.
    Existing(AssetRecord),
}

#[derive(Debug, Clone)]
pub struct AssetCatalog {
    kv: kv::Store,
}

impl AssetCatalog {
    pub(crate) fn new(kv: kv::Store) -> Self {
        AssetCatalog { kv }
    }

    pub async fn get(
        &self,
        tenant: &TenantId,
        id: &AssetId,
    ) -> Result<Option<AssetRecord>, NatsError> {
        kv_json::get(&self.kv, &record_key(tenant, id), &format!("asset {id}")).await
    }

    pub async fn by_source_url(
        &self,
        tenant: &TenantId,
        url: &str,
    ) -> Result<Option<AssetRecord>, NatsError> {
        self.indexed(tenant, &url_index(tenant, url)).await
    }

    pub async fn by_sha256(
        &self,
        tenant: &TenantId,
        sha256: &str,
    ) -> Result<Option<AssetRecord>, NatsError> {
        self.indexed(tenant, &sha_index(tenant, sha256)).await
    }

    /// Catalogues `record` unless its content is already there, in which
    /// case the existing asset is returned and `record` is dropped. Either
    /// way its source URL is noted, so the URL is not fetched again.
    pub async fn register(&self, record: AssetRecord) -> Result<Registered, NatsError> {
        let tenant = record.tenant.clone();
        let sha = sha_index(&tenant, &record.sha256);
        let registered = match self.claim(&sha, &record.id).await? {
            None => {
                self.put(&record).await?;
                Registered::New(record.clone())
            }
            Some(holder) => match self.get(&tenant, &holder).await? {
                Some(existing) => Registered::Existing(existing),
                // The claim outlived its record (a crash between the two
                // writes): take the content over.
                None => {
                    self.put(&record).await?;
                    self.point(&sha, &record.id).await?;
                    Registered::New(record.clone())
                }
            },
        };
        if let Some(url) = &record.source_url {
            let holder = match &registered {
                Registered::New(asset) | Registered::Existing(asset) => &asset.id,
            };
            self.claim(&url_index(&tenant, url), holder).await?;
        }
        Ok(registered)
    }

    /// The tenant's assets whose title contains `title` (ignoring case), in
    /// id order after `after`: up to `limit`, and whether more follow.
    pub async fn search(
        &self,
        tenant: &TenantId,
        title: &str,
        after: Option<&AssetId>,
        limit: usize,
    ) -> Result<(Vec<AssetRecord>, bool), NatsError> {
        let prefix = format!("{tenant}.asset.");
        let mut ids: Vec<AssetId> = self
            .kv
            .keys()
            .await
            .map_err(NatsError::unavailable)?
            .try_filter_map(|key| {
                let id = key
                    .strip_prefix(&prefix)
                    .and_then(|id| AssetId::parse(id).ok());
                futures::future::ready(Ok(id))
            })
            .try_collect()
            .await
            .map_err(NatsError::unavailable)?;
        ids.sort();
        let wanted = title.to_lowercase();
        let mut found = Vec::new();
        for id in ids
            .iter()
            .filter(|id| after.is_none_or(|after| *id > after))
        {
            let Some(asset) = self.get(tenant, id).await? else {
                continue;
            };
            if asset.title.to_lowercase().contains(&wanted) {
                found.push(asset);
                if found.len() > limit {
                    break;
                }
            }
        }
        let more = found.len() > limit;
        found.truncate(limit);
        Ok((found, more))
    }

    async fn indexed(
        &self,
        tenant: &TenantId,
        index: &str,
    ) -> Result<Option<AssetRecord>, NatsError> {
        let Some(bytes) = self.kv.get(index).await.map_err(NatsError::unavailable)? else {
            return Ok(None);
        };
        let id = std::str::from_utf8(&bytes)
            .ok()
            .and_then(|id| AssetId::parse(id).ok())
            .ok_or_else(|| NatsError::Corrupt(format!("asset index {index}")))?;
        self.get(tenant, &id).await
    }

    /// Claims `index` for `id`: `None` when this call won, else the holder.
    async fn claim(&self, index: &str, id: &AssetId) -> Result<Option<AssetId>, NatsError> {
        claim(&self.kv, index, id.as_str())
            .await?
            .map(|holder| AssetId::parse(&holder))
            .transpose()
            .map_err(|_| NatsError::Corrupt(format!("asset index {index}")))
    }

    async fn point(&self, index: &str, id: &AssetId) -> Result<(), NatsError> {
        self.kv
            .put(index, id.as_str().to_owned().into())
            .await
            .map(drop)
            .map_err(NatsError::unavailable)
    }

    async fn put(&self, record: &AssetRecord) -> Result<(), NatsError> {
        let key = record_key(&record.tenant, &record.id);
        kv_json::put(&self.kv, &key, record, &format!("asset {}", record.id)).await
    }
}

fn record_key(tenant: &TenantId, id: &AssetId) -> String {
    format!("{tenant}.asset.{id}")
}

/// URLs hold characters KV keys may not, so the index is by hash.
fn url_index(tenant: &TenantId, url: &str) -> String {
    let digest = Sha256::digest(url.as_bytes());
    format!("{tenant}.url.{}", hex::encode(digest))
}

fn sha_index(tenant: &TenantId, sha256: &str) -> String {
    format!("{tenant}.sha.{}", sha256.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_keys_are_per_tenant_and_subject_safe() {
        let a = TenantId::parse("a").expect("tenant");
        let b = TenantId::parse("b").expect("tenant");
        let url = "https://cdn.example.com/a b.mp4?x=1&y=*";
        assert_ne!(url_index(&a, url), url_index(&b, url));
        assert!(
            url_index(&a, url)
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.')
        );
        assert_eq!(sha_index(&a, "ABC"), "a.sha.abc");
    }

    #[test]
    fn asset_ids_sort_by_creation() {
        let first = AssetId::new();
        let second = AssetId::new();
        assert!(first < second);
        assert_eq!(AssetId::parse(first.as_str()), Ok(first));
        assert!(AssetId::parse("x").is_err());
    }
}
