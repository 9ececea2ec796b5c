//! Configuration of the gateway.

use std::net::SocketAddr;

use reelmesh_nats::TopologyConfig;
use reelmesh_runtime::{ApiKeys, ServiceConfig};
use reelmesh_store::{LinkConfig, StoreOptions};
use serde::{Deserialize, Serialize};

use crate::{retention::RetentionConfig, validate::JobLimits};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub nats_url: String,
    /// The store the gateway's Store API serves; the same one render uses.
    pub store_url: String,
    /// Backend settings for `store_url` (endpoint, credentials, ...).
    pub store_options: StoreOptions,
    /// Signed links SignedUrl hands out for file:// and memory:// stores.
    pub links: LinkConfig,
    pub api_keys: ApiKeys,
    pub topology: TopologyConfig,
    pub limits: JobLimits,
    pub retention: RetentionConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            nats_url: "nats://127.0.0.1:4222".into(),
            store_url: reelmesh_store::config::default_store_url(),
            store_options: StoreOptions::default(),
            links: LinkConfig::default(),
            api_keys: ApiKeys::default(),
            topology: TopologyConfig::default(),
            limits: JobLimits::default(),
            retention: RetentionConfig::default(),
        }
    }
}

impl ServiceConfig for GatewayConfig {
    const SERVICE: &'static str = "gateway";
    fn listen(&self) -> SocketAddr {
        self.listen
    }
    fn validate(&self) -> Result<(), String> {
        self.store_options
            .check(&self.store_url)
            .map_err(|err| err.to_string())
    }
}
