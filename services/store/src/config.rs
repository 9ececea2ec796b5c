//! Configuration of the standalone store service, and the backend options
//! every service that opens a store URL shares ([`StoreOptions`]).

use std::{collections::BTreeMap, net::SocketAddr};

use object_store::{
    ObjectStoreScheme, aws::AmazonS3ConfigKey, azure::AzureConfigKey, gcp::GoogleConfigKey,
};
use reelmesh_runtime::{ApiKeys, ServiceConfig};
use serde::{Deserialize, Serialize};

use crate::StoreError;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreConfig {
    pub listen: SocketAddr,
    /// Backend URL: s3://bucket/prefix, az://container/prefix, gs://bucket/prefix,
    /// file:///absolute/dir or memory://.
    pub url: String,
    /// Backend settings for `url` (endpoint, credentials, ...).
    pub options: StoreOptions,
    pub api_keys: ApiKeys,
    pub links: LinkConfig,
}

/// Signed links for file:// and memory:// stores (clouds presign their own).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LinkConfig {
    /// HMAC secret. Empty: a random one per process, so links die with it;
    /// set the same secret on every replica behind one address.
    pub secret: String,
    /// The address clients reach this service at, as links should name it
    /// (`https://media.example.com`). Empty: `http://<listen address>`.
    pub public_url: String,
}

impl LinkConfig {
    /// The issuer for a service listening on `bound`.
    pub fn issuer(&self, bound: SocketAddr) -> crate::links::LinkIssuer {
        let base = if self.public_url.is_empty() {
            format!("http://{bound}")
        } else {
            self.public_url.clone()
        };
        crate::links::LinkIssuer::new(&self.secret, &base)
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50052)),
            url: default_store_url(),
            options: StoreOptions::default(),
            api_keys: ApiKeys::default(),
            links: LinkConfig::default(),
        }
    }
}

/// A local directory, so a fresh checkout stores media without any cloud.
pub fn default_store_url() -> String {
    "file:///var/tmp/reelmesh/store".to_string()
}

impl ServiceConfig for StoreConfig {
    const SERVICE: &'static str = "store";
    fn listen(&self) -> SocketAddr {
        self.listen
    }
    fn validate(&self) -> Result<(), String> {
        self.options.check(&self.url).map_err(|err| err.to_string())
    }
}

/// Settings of a store URL's backend, keyed as object_store's builders name
/// them: `aws_endpoint`, `aws_allow_http`, `aws_region`,
/// `azure_storage_account_name`, `azure_storage_endpoint`,
/// `google_service_account`, ... (any case). They add to and override the
/// cloud's own `AWS_*`, `AZURE_*` and `GOOGLE_*` environment variables. An
/// S3-compatible service (MinIO and the like) is an s3:// URL with
/// `aws_endpoint` set. None by default: the cloud's defaults, or nothing at
/// all for file:// and memory:// stores, which take no options.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StoreOptions(pub BTreeMap<String, String>);

impl StoreOptions {
    pub fn new<K: Into<String>, V: Into<String>>(
        options: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        StoreOptions(
            options
                .into_iter()
                .map(|(key, value)| (key.into().to_ascii_lowercase(), value.into()))
                .collect(),
        )
    }

    /// The options as [`crate::MediaStore::open`] takes them.
    pub fn pairs(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect()
    }

    /// Refuses a bad URL and any option its backend does not know, so a
    /// misspelt setting stops the service instead of being ignored.
    pub fn check(&self, url: &str) -> Result<(), StoreError> {
        check_options(url, self.0.keys().map(String::as_str))
    }
}

/// See [`StoreOptions::check`].
pub(crate) fn check_options<'a>(
    url: &str,
    keys: impl IntoIterator<Item = &'a str>,
) -> Result<(), StoreError> {
    let config = |why: String| StoreError::Config(format!("store url {url:?}: {why}"));
    let parsed = url::Url::parse(url).map_err(|err| config(err.to_string()))?;
    // MediaStore opens these itself; object_store would not take memory://name.
    let scheme = match parsed.scheme() {
        "memory" => ObjectStoreScheme::Memory,
        "file" => ObjectStoreScheme::Local,
        _ => {
            ObjectStoreScheme::parse(&parsed)
                .map_err(|err| config(err.to_string()))?
                .0
        }
    };
    for key in keys {
        let key = key.to_ascii_lowercase();
        let known = match scheme {
            ObjectStoreScheme::AmazonS3 => key.parse::<AmazonS3ConfigKey>().is_ok(),
            ObjectStoreScheme::MicrosoftAzure => key.parse::<AzureConfigKey>().is_ok(),
            ObjectStoreScheme::GoogleCloudStorage => key.parse::<GoogleConfigKey>().is_ok(),
            _ => false,
        };
        if !known {
            return Err(config(format!(
                "option {key:?} is not a setting of this backend"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(pairs: &[(&str, &str)]) -> StoreOptions {
        StoreOptions::new(pairs.iter().copied())
    }

    #[test]
    fn each_backend_takes_its_own_settings() {
        let s3 = options(&[
            ("AWS_ENDPOINT", "http://127.0.0.1:9000"),
            ("aws_allow_http", "true"),
        ]);
        s3.check("s3://media/prefix").expect("s3 settings");
        let az = options(&[("azure_storage_endpoint", "http://127.0.0.1:10000/acct")]);
        az.check("az://media").expect("azure settings");
        options(&[("google_service_account", "/key.json")])
            .check("gs://media")
            .expect("gcs settings");
        for url in ["file:///var/tmp/x", "memory://named", "memory://"] {
            StoreOptions::default().check(url).expect("no options");
        }
    }

    #[test]
    fn unknown_or_foreign_settings_and_bad_urls_are_refused() {
        let typo = options(&[("aws_endpiont", "http://x")]).check("s3://media");
        assert!(
            matches!(typo, Err(StoreError::Config(ref why)) if why.contains("aws_endpiont")),
            "{typo:?}"
        );
        let foreign = options(&[("aws_endpoint", "http://x")]).check("az://media");
        assert!(foreign.is_err(), "an S3 setting on an Azure URL");
        let local = options(&[("aws_endpoint", "http://x")]).check("memory://m");
        assert!(local.is_err(), "memory stores take no settings");
        assert!(StoreOptions::default().check("not a url").is_err());
    }
}
