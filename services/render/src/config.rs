//! Configuration of a render worker.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use reelmesh_nats::TopologyConfig;
use reelmesh_runtime::{EgressPolicy, ServiceConfig};

pub use crate::input::UrlInputConfig;
use reelmesh_store::StoreOptions;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RenderConfig {
    /// gRPC health endpoint, for liveness and readiness probes.
    pub listen: SocketAddr,
    pub nats_url: String,
    /// Where inputs are read and outputs written; the gateway's store.
    pub store_url: String,
    /// Backend settings for `store_url` (endpoint, credentials, ...).
    pub store_options: StoreOptions,
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
    /// When failed attempts are tried again.
    pub retry: RetryPolicy,
    /// On shutdown, how long renders in hand may run on before they are
    /// stopped and handed back to the queue for another worker.
    pub drain_grace_secs: f64,
    /// Limits on http(s) inputs and which non-public hosts they may name.
    pub url_inputs: UrlInputConfig,
    /// A job's start (RUNNING on its record, and the started event) is
    /// written once its render has run this long. A job that ends sooner
    /// has its start and end written together: fewer writes for short jobs,
    /// which never show RUNNING. 0 writes every start before its render.
    pub record_start_after_ms: u64,
}

/// Backoff between attempts: `base` doubled per failed attempt, capped at
/// `max`, then spread by up to ±`jitter` (a fraction) so jobs that failed
/// together do not all come back together.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryPolicy {
    pub base_ms: u64,
    pub max_ms: u64,
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base_ms: 5_000,
            max_ms: 300_000,
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// The wait after the `failed`th failed attempt (from 1).
    pub fn delay(&self, failed: u32) -> Duration {
        let doubled = self
            .base_ms
            .saturating_mul(1u64 << failed.saturating_sub(1).min(32));
        let capped = doubled.min(self.max_ms) as f64;
        let jitter = self.jitter.clamp(0.0, 1.0);
        let spread = 1.0 + jitter * (2.0 * rand::random::<f64>() - 1.0);
        Duration::from_secs_f64(capped * spread / 1000.0)
    }
}

impl Default for RenderConfig {
    fn default() -> Self {
        RenderConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50053)),
            nats_url: "nats://127.0.0.1:4222".into(),
            store_url: reelmesh_store::config::default_store_url(),
            store_options: StoreOptions::default(),
            topology: TopologyConfig::default(),
            concurrency: 1,
            work_dir: std::env::temp_dir(),
            stall_timeout_secs: 30,
            max_output_bytes: 20 << 30,
            retry: RetryPolicy::default(),
            drain_grace_secs: 60.0,
            url_inputs: UrlInputConfig::default(),
            record_start_after_ms: 20,
        }
    }
}

impl RenderConfig {
    pub fn stall_timeout(&self) -> Duration {
        Duration::from_secs(self.stall_timeout_secs)
    }

    pub fn record_start_after(&self) -> Duration {
        Duration::from_millis(self.record_start_after_ms)
    }

    pub fn drain_grace(&self) -> Duration {
        Duration::try_from_secs_f64(self.drain_grace_secs).unwrap_or_default()
    }
}

impl ServiceConfig for RenderConfig {
    const SERVICE: &'static str = "render";
    fn listen(&self) -> SocketAddr {
        self.listen
    }
    fn validate(&self) -> Result<(), String> {
        // A worker says it is alive every third of this; below a second
        // that is a flood of acks, and at zero JetStream's default applies.
        let ack_wait = self.topology.work_ack_wait;
        if ack_wait < Duration::from_secs(1) {
            return Err(format!(
                "topology.work_ack_wait must be at least 1 s, not {ack_wait:?}"
            ));
        }
        self.store_options
            .check(&self.store_url)
            .map_err(|err| err.to_string())?;
        EgressPolicy::new(&self.url_inputs.egress)
            .map(|_| ())
            .map_err(|err| err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ack_wait_under_a_second_is_refused_by_name() {
        let mut config = RenderConfig::default();
        assert_eq!(config.validate(), Ok(()));
        config.topology.work_ack_wait = Duration::from_millis(500);
        let refused = config.validate().expect_err("too short");
        assert!(refused.contains("topology.work_ack_wait"), "{refused}");
    }

    #[test]
    fn retry_delays_double_up_to_the_cap_within_the_jitter() {
        let policy = RetryPolicy {
            base_ms: 1_000,
            max_ms: 5_000,
            jitter: 0.2,
        };
        for (failed, expected) in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (40, 5.0)] {
            let delay = policy.delay(failed).as_secs_f64();
            assert!(
                (expected * 0.8..=expected * 1.2).contains(&delay),
                "attempt {failed}: {delay}"
            );
        }
    }
}
