//! Configuration of the standalone store service.

use std::net::SocketAddr;

use reelmesh_runtime::{ApiKeys, ServiceConfig};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreConfig {
    pub listen: SocketAddr,
    /// Backend URL: s3://bucket/prefix, az://container/prefix, gs://bucket/prefix,
    /// file:///absolute/dir or memory://.
    pub url: String,
    pub api_keys: ApiKeys,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50052)),
            url: default_store_url(),
            api_keys: ApiKeys::default(),
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
}
