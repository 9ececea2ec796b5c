//! The media store itself: one object_store backend chosen by URL, addressed
//! by tenant and [`ObjectKey`].
//!
//! Render workers use this directly (they read inputs and write outputs
//! without a gRPC hop); the Store gRPC API is a thin layer over it.

use std::{
    collections::HashMap,
    path::Path as FsPath,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use futures::{Stream, StreamExt as _, TryStreamExt as _, stream::BoxStream};
use object_store::{
    GetOptions, GetRange, GetResultPayload, ObjectMeta, ObjectStore, ObjectStoreExt as _,
    ObjectStoreScheme, WriteMultipart,
    aws::AmazonS3Builder,
    azure::MicrosoftAzureBuilder,
    buffered::BufWriter,
    gcp::GoogleCloudStorageBuilder,
    local::LocalFileSystem,
    memory::InMemory,
    path::Path,
    prefix::PrefixStore,
    signer::{Method, Signer},
};
use reelmesh_nats::TenantId;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

use crate::{KeyPrefix, ObjectKey, StoreError, key::key_of};

/// Part size for multipart uploads: S3's minimum is 5 MiB, and larger parts
/// mean fewer requests for big media.
const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts in flight at once per upload; bounds memory to about 2 parts.
const PARTS_IN_FLIGHT: usize = 2;
/// Objects listed per page while deleting everything under a prefix.
const DELETE_PAGE: usize = 500;

/// What an upload must match, when the client says so.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    pub size_bytes: Option<u64>,
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub key: String,
    pub size_bytes: u64,
    pub sha256: Option<String>,
    pub last_modified: Option<SystemTime>,
}

impl StoredObject {
    fn from_meta(key: String, meta: &ObjectMeta) -> Self {
        StoredObject {
            key,
            size_bytes: meta.size,
            sha256: None,
            last_modified: Some(meta.last_modified.into()),
        }
    }
}

/// Part of an object: from `offset`, `length` bytes or to the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ByteRange {
    pub offset: u64,
    pub length: Option<u64>,
}

impl ByteRange {
    fn is_whole(&self) -> bool {
        self.offset == 0 && self.length.is_none()
    }
}

/// One page of a listing, in key order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Listing {
    pub objects: Vec<StoredObject>,
    /// Whether more objects follow the last one.
    pub more: bool,
}

#[derive(Debug, Clone)]
pub struct MediaStore {
    backend: Arc<dyn ObjectStore>,
    /// The same backend as a local filesystem, for file:// stores: lets a
    /// render worker link its result into place instead of copying it.
    local: Option<Arc<LocalFileSystem>>,
    /// What presigns URLs, for the clouds (S3, Azure, GCS); `None` for
    /// file:// and memory://, whose links the store service signs itself.
    signer: Option<Arc<dyn Signer>>,
    url: String,
}

impl MediaStore {
    /// Opens the backend named by `url` (s3://, az://, gs://, file://,
    /// memory://). Credentials come from the usual environment variables of
    /// each cloud (AWS_*, AZURE_*, GOOGLE_*), overridden by `options`
    /// ([`crate::StoreOptions`]: object_store's setting names, any case);
    /// an option the backend does not know is refused.
    pub fn open(url: &str, options: &[(String, String)]) -> Result<Self, StoreError> {
        crate::config::check_options(url, options.iter().map(|(key, _)| key.as_str()))?;
        let parsed = url::Url::parse(url)
            .map_err(|err| StoreError::Config(format!("store url {url:?}: {err}")))?;
        if parsed.scheme() == "memory" {
            return Ok(MediaStore {
                backend: shared_memory_store(parsed.host_str().unwrap_or_default()),
                local: None,
                signer: None,
                url: url.to_string(),
            });
        }
        if parsed.scheme() == "file" {
            return Self::open_local(url, &parsed);
        }
        let env = std::env::vars()
            .filter(|(name, _)| {
                ["AWS_", "AZURE_", "GOOGLE_"]
                    .iter()
                    .any(|p| name.starts_with(p))
            })
            .map(|(name, value)| (name.to_ascii_lowercase(), value));
        // Later pairs win: explicit options override the environment.
        let options: Vec<(String, String)> = env.chain(options.iter().cloned()).collect();
        let (backend, signer) = open_cloud(&parsed, &options)
            .map_err(|err| StoreError::Config(format!("store url {url:?}: {err}")))?;
        Ok(MediaStore {
            backend,
            signer,
            local: None,
            url: url.to_string(),
        })
    }

    fn open_local(url: &str, parsed: &url::Url) -> Result<Self, StoreError> {
        let config = |why: String| StoreError::Config(format!("store url {url:?}: {why}"));
        let root = parsed
            .to_file_path()
            .map_err(|()| config("not a local path".into()))?;
        // object_store's local backend wants the root to exist.
        std::fs::create_dir_all(&root).map_err(|err| config(err.to_string()))?;
        let local = Arc::new(
            LocalFileSystem::new_with_prefix(&root).map_err(|err| config(err.to_string()))?,
        );
        Ok(MediaStore {
            backend: local.clone(),
            local: Some(local),
            signer: None,
            url: url.to_string(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Streams `chunks` into the object, checking size and checksum on the
    /// way. On any failure the multipart upload is aborted, so a failed upload
    /// leaves nothing behind.
    pub async fn upload<S>(
        &self,
        tenant: &TenantId,
        key: &ObjectKey,
        expected: Expected,
        mut chunks: S,
    ) -> Result<StoredObject, StoreError>
    where
        S: Stream<Item = Result<Bytes, StoreError>> + Unpin + Send,
    {
        let location = key.location(tenant);
        let upload = self.backend.put_multipart(&location).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let received: Result<(), StoreError> = async {
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk?;
                hasher.update(&chunk);
                size += chunk.len() as u64;
                if expected.size_bytes.is_some_and(|limit| size > limit) {
                    return Err(StoreError::Mismatch(format!(
                        "upload of {key} is larger than the declared {} bytes",
                        expected.size_bytes.unwrap_or_default()
                    )));
                }
                writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                writer.write(&chunk);
            }
            Ok(())
        }
        .await;
        let sha256 = hex::encode(hasher.finalize());
        let checked = received.and_then(|()| check_expected(key, &expected, size, &sha256));
        if let Err(err) = checked {
            let _ = writer.abort().await;
            return Err(err);
        }
        writer.finish().await?;
        Ok(StoredObject {
            key: key.to_string(),
            size_bytes: size,
            sha256: Some(sha256),
            last_modified: None,
        })
    }

    /// The object's bytes as a stream of chunks.
    pub async fn download(
        &self,
        tenant: &TenantId,
        key: &ObjectKey,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        self.download_range(tenant, key, ByteRange::default()).await
    }

    /// Part of the object's bytes. A range starting past the end is an
    /// error; one running past it stops at the end.
    pub async fn download_range(
        &self,
        tenant: &TenantId,
        key: &ObjectKey,
        range: ByteRange,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        let location = key.location(tenant);
        if range.is_whole() {
            let result = self.backend.get(&location).await?;
            return Ok(result.into_stream().map_err(StoreError::from).boxed());
        }
        let size = self.backend.head(&location).await?.size;
        if range.offset >= size {
            return Err(StoreError::OutOfRange(format!(
                "offset {} is beyond the end of {key} ({size} bytes)",
                range.offset
            )));
        }
        let end = range
            .length
            .map_or(size, |length| range.offset.saturating_add(length).min(size));
        if end == range.offset {
            return Ok(futures::stream::empty().boxed());
        }
        let options = GetOptions {
            range: Some(GetRange::Bounded(range.offset..end)),
            ..Default::default()
        };
        let result = self.backend.get_opts(&location, options).await?;
        Ok(result.into_stream().map_err(StoreError::from).boxed())
    }

    pub async fn stat(
        &self,
        tenant: &TenantId,
        key: &ObjectKey,
    ) -> Result<StoredObject, StoreError> {
        let meta = self.backend.head(&key.location(tenant)).await?;
        Ok(StoredObject::from_meta(key.to_string(), &meta))
    }

    /// Up to `limit` of the tenant's objects under `prefix` whose keys sort
    /// after `after`, in key order.
    pub async fn list(
        &self,
        tenant: &TenantId,
        prefix: &KeyPrefix,
        after: Option<&ObjectKey>,
        limit: usize,
    ) -> Result<Listing, StoreError> {
        let directory = prefix.directory(tenant);
        let listed = match after {
            Some(after) => self
                .backend
                .list_with_offset(Some(&directory), &after.location(tenant)),
            None => self.backend.list(Some(&directory)),
        };
        let tenant = tenant.clone();
        let prefix = prefix.clone();
        // Some backends ignore the offset (Azurite drops `startFrom`), so
        // the page start is enforced here as well.
        let after = after.map(|key| key.to_string());
        let matching = listed
            .map_err(StoreError::from)
            .try_filter_map(move |meta| {
                let object = key_of(&tenant, &meta.location)
                    .filter(|key| prefix.matches(key))
                    .filter(|key| after.as_ref().is_none_or(|after| key > after))
                    .map(|key| StoredObject::from_meta(key, &meta));
                futures::future::ready(Ok(object))
            });
        let mut objects: Vec<StoredObject> = if self.local.is_some() {
            // A directory walk comes in no particular order: sort it all.
            let mut all: Vec<StoredObject> = matching.try_collect().await?;
            all.sort_by(|a, b| a.key.cmp(&b.key));
            all.truncate(limit + 1);
            all
        } else {
            // Cloud and memory listings come in key order already.
            matching.take(limit + 1).try_collect().await?
        };
        let more = objects.len() > limit;
        objects.truncate(limit);
        Ok(Listing { objects, more })
    }

    /// Deletes every one of the tenant's objects under `prefix`, a page at
    /// a time; returns how many it deleted. Pages go by the last key seen,
    /// so a backend slow to forget deleted objects cannot loop it.
    pub async fn delete_under(
        &self,
        tenant: &TenantId,
        prefix: &KeyPrefix,
    ) -> Result<usize, StoreError> {
        let mut after: Option<ObjectKey> = None;
        let mut deleted = 0;
        loop {
            let page = self
                .list(tenant, prefix, after.as_ref(), DELETE_PAGE)
                .await?;
            for object in &page.objects {
                let key = ObjectKey::parse(&object.key)?;
                self.delete(tenant, &key).await?;
                deleted += 1;
                after = Some(key);
            }
            if !page.more {
                return Ok(deleted);
            }
        }
    }

    pub async fn delete(&self, tenant: &TenantId, key: &ObjectKey) -> Result<(), StoreError> {
        match self.backend.delete(&key.location(tenant)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// Copies an object to a local file (GStreamer reads files and seeks in
    /// them). A file:// store hands over its own file: hard-linked when on
    /// the same filesystem, else copied by the kernel, never streamed
    /// through memory.
    pub async fn download_to_file(
        &self,
        tenant: &TenantId,
        key: &ObjectKey,
        file: &FsPath,
    ) -> Result<u64, StoreError> {
        let result = self.backend.get(&key.location(tenant)).await?;
        let size = result.meta.size;
        match result.payload {
            GetResultPayload::File(_, source) => {
                if tokio::fs::hard_link(&source, file).await.is_err() {
                    tokio::fs::copy(&source, file)
                        .await
                        .map_err(StoreError::Local)?;
                }
            }
            GetResultPayload::Stream(mut chunks) => {
                let mut out = tokio::fs::File::create(file)
                    .await
                    .map_err(StoreError::Local)?;
                while let Some(chunk) = chunks.next().await {
                    out.write_all(&chunk?).await.map_err(StoreError::Local)?;
                }
                out.flush().await.map_err(StoreError::Local)?;
            }
        }
        Ok(size)
    }

    /// Stores a local file under `key`: hard-linked into place when the
    /// store is a local directory on the same filesystem, otherwise
    /// streamed in parts. The caller must not change `file` afterwards.
    pub async fn upload_file(
        &self,
        tenant: &TenantId,
        key: &ObjectKey,
        file: &FsPath,
    ) -> Result<u64, StoreError> {
        if let Some(size) = self.link_file(tenant, key, file).await? {
            return Ok(size);
        }
        let mut input = tokio::fs::File::open(file)
            .await
            .map_err(StoreError::Local)?;
        let mut writer = BufWriter::new(Arc::clone(&self.backend), key.location(tenant));
        let copied = tokio::io::copy(&mut input, &mut writer).await;
        match copied {
            Ok(size) => {
                writer.shutdown().await.map_err(StoreError::Local)?;
                Ok(size)
            }
            Err(err) => {
                let _ = writer.abort().await;
                Err(StoreError::Local(err))
            }
        }
    }

    /// Links `file` to `key`'s path in a local store, through a staging
    /// name so readers never see a partial object and an existing object
    /// is replaced at once. `None` when there is no local store or the
    /// link is impossible (another filesystem): then the caller copies.
    async fn link_file(
        &self,
        tenant: &TenantId,
        key: &ObjectKey,
        file: &FsPath,
    ) -> Result<Option<u64>, StoreError> {
        let Some(local) = &self.local else {
            return Ok(None);
        };
        let target = local.path_to_filesystem(&key.location(tenant))?;
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(StoreError::Local)?;
        }
        // object_store's listings skip names ending in '#' and digits, the
        // form its own staged uploads use.
        let mut staging = target.clone().into_os_string();
        staging.push(format!("#{}", rand::random::<u64>()));
        if tokio::fs::hard_link(file, &staging).await.is_err() {
            return Ok(None);
        }
        if let Err(err) = tokio::fs::rename(&staging, &target).await {
            let _ = tokio::fs::remove_file(&staging).await;
            return Err(StoreError::Local(err));
        }
        let size = tokio::fs::metadata(&target)
            .await
            .map_err(StoreError::Local)?
            .len();
        Ok(Some(size))
    }

    /// A presigned URL for `method` on the object, from the cloud backend;
    /// `None` when the backend cannot sign (file://, memory://).
    pub async fn presigned_url(
        &self,
        tenant: &TenantId,
        key: &ObjectKey,
        method: Method,
        expires_in: Duration,
    ) -> Result<Option<url::Url>, StoreError> {
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        let url = signer
            .signed_url(method, &key.location(tenant), expires_in)
            .await?;
        Ok(Some(url))
    }

    /// The raw backend, for callers that need object_store directly.
    pub fn backend(&self) -> &Arc<dyn ObjectStore> {
        &self.backend
    }

    /// The backend path of a key, for callers that use [`Self::backend`].
    pub fn location(tenant: &TenantId, key: &ObjectKey) -> Path {
        key.location(tenant)
    }
}

type Signing = (Arc<dyn ObjectStore>, Option<Arc<dyn Signer>>);

/// Builds a cloud backend from its URL and options the way object_store's
/// `parse_url_opts` does, but keeps the concrete store so that it can also
/// presign URLs (a boxed `dyn ObjectStore` cannot).
fn open_cloud(url: &url::Url, options: &[(String, String)]) -> object_store::Result<Signing> {
    let (scheme, prefix) = ObjectStoreScheme::parse(url)?;
    Ok(match scheme {
        ObjectStoreScheme::AmazonS3 => {
            let builder = AmazonS3Builder::new().with_url(url.as_str());
            signing(
                configured(builder, options, AmazonS3Builder::with_config).build()?,
                prefix,
            )
        }
        ObjectStoreScheme::MicrosoftAzure => {
            let builder = MicrosoftAzureBuilder::new().with_url(url.as_str());
            let builder = configured(builder, options, MicrosoftAzureBuilder::with_config);
            signing(builder.build()?, prefix)
        }
        ObjectStoreScheme::GoogleCloudStorage => {
            let builder = GoogleCloudStorageBuilder::new().with_url(url.as_str());
            let builder = configured(builder, options, GoogleCloudStorageBuilder::with_config);
            signing(builder.build()?, prefix)
        }
        _ => {
            let (store, prefix) = object_store::parse_url_opts(url, options.iter().cloned())?;
            (prefixed(Arc::from(store), prefix), None)
        }
    })
}

/// Applies the options the builder knows (the config has refused the
/// others already, see `check_options`).
fn configured<B, K: std::str::FromStr>(
    builder: B,
    options: &[(String, String)],
    with_config: fn(B, K, String) -> B,
) -> B {
    options.iter().fold(builder, |builder, (key, value)| {
        match key.to_ascii_lowercase().parse() {
            Ok(key) => with_config(builder, key, value.clone()),
            Err(_) => builder,
        }
    })
}

fn signing<S: ObjectStore + Signer>(store: S, prefix: Path) -> Signing {
    if prefix.as_ref().is_empty() {
        let store = Arc::new(store);
        return (store.clone(), Some(store));
    }
    let store = Arc::new(PrefixStore::new(store, prefix));
    (store.clone(), Some(store))
}

fn prefixed(store: Arc<dyn ObjectStore>, prefix: Path) -> Arc<dyn ObjectStore> {
    if prefix.as_ref().is_empty() {
        store
    } else {
        Arc::new(PrefixStore::new(store, prefix))
    }
}

/// `memory://name` means the same in-memory store for every service in the
/// process, so an all-in-one process (dev mode, tests) shares its media.
fn shared_memory_store(name: &str) -> Arc<dyn ObjectStore> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    let mut stores = STORES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    stores
        .entry(name.to_string())
        .or_insert_with(|| Arc::new(InMemory::new()))
        .clone()
}

fn check_expected(
    key: &ObjectKey,
    expected: &Expected,
    size: u64,
    sha256: &str,
) -> Result<(), StoreError> {
    if let Some(want) = expected.size_bytes.filter(|want| *want != size) {
        return Err(StoreError::Mismatch(format!(
            "upload of {key} has {size} bytes, the header declared {want}"
        )));
    }
    if let Some(want) = expected
        .sha256
        .as_deref()
        .filter(|want| !want.eq_ignore_ascii_case(sha256))
    {
        return Err(StoreError::Mismatch(format!(
            "upload of {key} has sha256 {sha256}, the header declared {want}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> TenantId {
        TenantId::parse(name).expect("tenant")
    }

    fn chunks(
        parts: &[&'static [u8]],
    ) -> impl Stream<Item = Result<Bytes, StoreError>> + Unpin + Send {
        futures::stream::iter(
            parts
                .iter()
                .map(|part| Ok(Bytes::from_static(part)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn memory_urls_share_one_store_per_name() {
        let a = MediaStore::open("memory://shared-test", &[]).expect("open");
        let b = MediaStore::open("memory://shared-test", &[]).expect("open");
        let key = ObjectKey::parse("x.bin").expect("key");
        a.upload(&tenant("t"), &key, Expected::default(), chunks(&[b"abc"]))
            .await
            .expect("upload");
        assert_eq!(
            b.stat(&tenant("t"), &key).await.expect("stat").size_bytes,
            3
        );
    }

    #[tokio::test]
    async fn tenants_do_not_see_each_other() {
        let store = MediaStore::open("memory://tenant-test", &[]).expect("open");
        let key = ObjectKey::parse("in.mp4").expect("key");
        store
            .upload(&tenant("a"), &key, Expected::default(), chunks(&[b"data"]))
            .await
            .expect("upload");
        let err = store
            .stat(&tenant("b"), &key)
            .await
            .expect_err("other tenant");
        assert!(
            matches!(err, StoreError::NotFound(ref k) if k == "in.mp4"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn checksum_and_size_mismatches_store_nothing() {
        let store = MediaStore::open("memory://mismatch-test", &[]).expect("open");
        let key = ObjectKey::parse("bad.bin").expect("key");
        let wrong_sha = Expected {
            size_bytes: None,
            sha256: Some("00".repeat(32)),
        };
        let err = store
            .upload(&tenant("t"), &key, wrong_sha, chunks(&[b"ab", b"c"]))
            .await
            .expect_err("sha");
        assert!(err.to_string().contains("sha256"), "{err}");
        let wrong_size = Expected {
            size_bytes: Some(2),
            sha256: None,
        };
        let err = store
            .upload(&tenant("t"), &key, wrong_size, chunks(&[b"ab", b"c"]))
            .await
            .expect_err("size");
        assert!(err.to_string().contains("declared 2"), "{err}");
        assert!(matches!(
            store.stat(&tenant("t"), &key).await,
            Err(StoreError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn a_good_upload_reports_its_checksum_and_reads_back() {
        let store = MediaStore::open("memory://roundtrip-test", &[]).expect("open");
        let key = ObjectKey::parse("ok.bin").expect("key");
        let expected = Expected {
            size_bytes: Some(3),
            sha256: Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into()),
        };
        let stored = store
            .upload(&tenant("t"), &key, expected, chunks(&[b"a", b"bc"]))
            .await
            .expect("upload");
        assert_eq!(stored.size_bytes, 3);
        let bytes: Vec<Bytes> = store
            .download(&tenant("t"), &key)
            .await
            .expect("download")
            .map(|chunk| chunk.expect("chunk"))
            .collect()
            .await;
        assert_eq!(bytes.concat(), b"abc");
    }
}

#[cfg(test)]
mod file_tests {
    use super::*;

    #[tokio::test]
    async fn file_stores_hand_over_their_files_and_memory_stores_stream() {
        let dir = tempfile::tempdir().expect("dir");
        let tenant = TenantId::parse("t").expect("tenant");
        let key = ObjectKey::parse("in/clip.bin").expect("key");
        let body = vec![7u8; 200_000];
        for url in [
            format!("file://{}/store", dir.path().display()),
            "memory://download-test".into(),
        ] {
            let store = MediaStore::open(&url, &[]).expect("open");
            let chunks = futures::stream::iter(vec![Ok(Bytes::from(body.clone()))]);
            store
                .upload(&tenant, &key, Expected::default(), chunks)
                .await
                .expect("upload");
            let local = dir.path().join(format!("copy-{}", url.len()));
            let size = store
                .download_to_file(&tenant, &key, &local)
                .await
                .expect("download");
            assert_eq!(size, body.len() as u64, "{url}");
            assert_eq!(std::fs::read(&local).expect("read"), body, "{url}");
        }
    }

    #[tokio::test]
    async fn uploaded_files_are_linked_into_file_stores_and_replace_what_was_there() {
        let dir = tempfile::tempdir().expect("dir");
        let tenant = TenantId::parse("t").expect("tenant");
        let key = ObjectKey::parse("out/result.bin").expect("key");
        let store =
            MediaStore::open(&format!("file://{}/store", dir.path().display()), &[]).expect("open");
        for body in [&b"first version"[..], b"second"] {
            let file = dir.path().join("scratch.bin");
            std::fs::write(&file, body).expect("write");
            let size = store
                .upload_file(&tenant, &key, &file)
                .await
                .expect("upload");
            std::fs::remove_file(&file).expect("scratch goes away");
            assert_eq!(size, body.len() as u64);
            let local = dir.path().join("back.bin");
            let _ = std::fs::remove_file(&local);
            store
                .download_to_file(&tenant, &key, &local)
                .await
                .expect("download");
            assert_eq!(std::fs::read(&local).expect("read"), body);
        }
        let listed: Vec<_> = store
            .backend()
            .list(None)
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .expect("list");
        assert_eq!(
            listed,
            vec!["tenants/t/out/result.bin".to_string()],
            "no staging names"
        );
    }
}
