//! Configuration of a render worker.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use reelmesh_nats::TopologyConfig;
use reelmesh_runtime::ServiceConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RenderConfig {
    /// gRPC health endpoint, for liveness and readiness probes.
    pub listen: SocketAddr,
    pub nats_url: String,
    /// Where inputs are read and outputs written; the gateway's store.
    pub store_url: String,
    pub topology: TopologyConfig,
    /// Jobs rendered at once by this worker.
    pub concurrency: usize,
    /// Scratch space for inputs and outputs while a job runs.
    pub work_dir: PathBuf,
    /// A pipeline that moves no media for this long is failed.
    pub stall_timeout_secs: u64,
    /// A render whose result is larger fails instead of being stored
    /// (the gateway refuses what it can foresee; this catches the rest).
    pub max_output_bytes: u64,
}

impl Default for RenderConfig {
    fn default() -> Self {
        RenderConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50053)),
            nats_url: "nats://127.0.0.1:4222".into(),
            store_url: reelmesh_store::config::default_store_url(),
            topology: TopologyConfig::default(),
            concurrency: 1,
            work_dir: std::env::temp_dir(),
            stall_timeout_secs: 30,
            max_output_bytes: 20 << 30,
        }
    }
}

impl RenderConfig {
    pub fn stall_timeout(&self) -> Duration {
        Duration::from_secs(self.stall_timeout_secs)
    }
}

impl ServiceConfig for RenderConfig {
    const SERVICE: &'static str = "render";
    fn listen(&self) -> SocketAddr {
        self.listen
    }
}
