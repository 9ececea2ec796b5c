//! What a job reads, and how each input is brought into scratch space: a
//! stored asset is copied from the store; an http(s) URL is downloaded
//! through the egress guard, within a size and a time limit.
//!
//! Errors say which input failed and whether another attempt could help:
//! a refused address, a 404 or an oversize file will not change, a 503 or a
//! dropped connection might.

use std::{fmt, path::Path, time::Duration};

use reelmesh_runtime::{EgressConfig, EgressPolicy, egress};
use reelmesh_store::ObjectKey;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt as _;
use url::{Position, Url};

use crate::RenderError;

/// One input of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputRef {
    /// An object in the tenant's part of the store.
    Asset(ObjectKey),
    /// A URL to download.
    Url(Url),
}

impl fmt::Display for InputRef {
    /// An asset's key, or a URL without its query: query strings often
    /// carry signatures, which must not end up in job errors and logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputRef::Asset(key) => f.write_str(key.as_str()),
            InputRef::Url(url) => f.write_str(&url[..Position::AfterPath]),
        }
    }
}

/// Config: limits on URL inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UrlInputConfig {
    /// Which non-public addresses may be fetched (none by default).
    pub egress: EgressConfig,
    /// A download larger than this fails the job.
    pub max_bytes: u64,
    /// The whole download must finish within this.
    pub timeout_secs: u64,
    pub connect_timeout_secs: u64,
}

impl Default for UrlInputConfig {
    fn default() -> Self {
        UrlInputConfig {
            egress: EgressConfig::default(),
            max_bytes: 4 << 30,
            timeout_secs: 600,
            connect_timeout_secs: 10,
        }
    }
}

/// Downloads URL inputs under [`UrlInputConfig`]'s limits.
#[derive(Debug, Clone)]
pub struct UrlFetcher {
    client: reqwest::Client,
    policy: EgressPolicy,
    max_bytes: u64,
}

/// Why [`UrlFetcher::new`] failed: the config is bad.
#[derive(Debug, thiserror::Error)]
pub enum UrlFetcherError {
    #[error(transparent)]
    Allowlist(#[from] egress::BadAllowEntry),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

impl UrlFetcher {
    pub fn new(config: &UrlInputConfig) -> Result<Self, UrlFetcherError> {
        let policy = EgressPolicy::new(&config.egress)?;
        let builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.timeout_secs))
            .connect_timeout(Duration::from_secs(config.connect_timeout_secs))
            .user_agent(concat!("reelmesh-render/", env!("CARGO_PKG_VERSION")));
        Ok(UrlFetcher {
            client: policy.http_client(builder).build()?,
            policy,
            max_bytes: config.max_bytes,
        })
    }

    /// Streams `url` into `path`, returning its size. Nothing is kept on
    /// failure: the caller's scratch directory goes away with the attempt.
    pub async fn download(&self, url: &Url, path: &Path) -> Result<u64, RenderError> {
        let input = InputRef::Url(url.clone()).to_string();
        self.policy
            .check_url(url)
            .map_err(|refused| refused_input(&input, &refused))?;
        let mut response = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(|err| request_failed(&input, &err))?;
        check_status(&input, response.status())?;
        if let Some(length) = response.content_length() {
            self.check_size(&input, length)?;
        }
        let mut file = tokio::fs::File::create(path).await?;
        let mut written = 0u64;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|err| request_failed(&input, &err))?
        {
            written += chunk.len() as u64;
            // Content-Length may be absent or lie; the count is what counts.
            self.check_size(&input, written)?;
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        Ok(written)
    }

    fn check_size(&self, input: &str, bytes: u64) -> Result<(), RenderError> {
        if bytes > self.max_bytes {
            return Err(RenderError::BadInput {
                asset: input.into(),
                reason: format!(
                    "larger than this worker's limit of {} bytes for URL inputs",
                    self.max_bytes
                ),
            });
        }
        Ok(())
    }
}

fn refused_input(input: &str, refused: &egress::EgressRefused) -> RenderError {
    RenderError::BadInput {
        asset: input.into(),
        reason: format!("refused: {refused}"),
    }
}

/// A refusal by the guard is final; anything else on the wire may pass.
fn request_failed(input: &str, err: &reqwest::Error) -> RenderError {
    if let Some(refused) = egress::refusal_in(err) {
        return refused_input(input, refused);
    }
    let why = if err.is_timeout() {
        "timed out".to_string()
    } else {
        let mut text = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(inner) = source {
            text = format!("{text}: {inner}");
            source = inner.source();
        }
        text
    };
    RenderError::Fetch(format!("input {input}: {why}"))
}

/// 404/410 are a missing input, other 4xx a bad one; 5xx and 429 are worth
/// another attempt.
fn check_status(input: &str, status: reqwest::StatusCode) -> Result<(), RenderError> {
    if status.is_success() {
        return Ok(());
    }
    let code = status.as_u16();
    if matches!(code, 404 | 410) {
        return Err(RenderError::InputNotFound(format!("{input} (HTTP {code})")));
    }
    if status.is_server_error() || code == 429 || code == 408 {
        return Err(RenderError::Fetch(format!("input {input}: HTTP {status}")));
    }
    Err(RenderError::BadInput {
        asset: input.into(),
        reason: format!("HTTP {status}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_named_without_their_query() {
        let url = Url::parse("https://cdn.example.com/v/a.mp4?sig=secret&se=2026").expect("url");
        assert_eq!(
            InputRef::Url(url).to_string(),
            "https://cdn.example.com/v/a.mp4"
        );
    }

    #[test]
    fn statuses_split_into_missing_bad_and_passing() {
        let missing = check_status("u", reqwest::StatusCode::NOT_FOUND).expect_err("404");
        assert!(matches!(missing, RenderError::InputNotFound(_)));
        let bad = check_status("u", reqwest::StatusCode::FORBIDDEN).expect_err("403");
        assert!(!bad.is_retryable());
        let passing = check_status("u", reqwest::StatusCode::BAD_GATEWAY).expect_err("502");
        assert!(passing.is_retryable());
        assert!(check_status("u", reqwest::StatusCode::OK).is_ok());
    }
}
