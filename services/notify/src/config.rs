//! Configuration of the notify service.

use std::{net::SocketAddr, time::Duration};

use reelmesh_nats::TopologyConfig;
use reelmesh_runtime::ServiceConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct NotifyConfig {
    /// gRPC health endpoint, for liveness and readiness probes.
    pub listen: SocketAddr,
    pub nats_url: String,
    pub topology: TopologyConfig,
    /// How long one webhook POST may take.
    pub timeout_secs: u64,
    /// Delay before the second attempt; each later attempt doubles it.
    pub first_retry_secs: u64,
    /// Longest delay between attempts.
    pub max_retry_secs: u64,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50054)),
            nats_url: "nats://127.0.0.1:4222".into(),
            topology: TopologyConfig::default(),
            timeout_secs: 15,
            first_retry_secs: 1,
            max_retry_secs: 300,
        }
    }
}

impl NotifyConfig {
    /// Delay before redelivering after `attempts` failed attempts.
    pub fn retry_delay(&self, attempts: u32) -> Duration {
        let exponent = attempts.saturating_sub(1).min(20);
        let secs = self.first_retry_secs.saturating_mul(1 << exponent);
        Duration::from_secs(secs.min(self.max_retry_secs))
    }
}

impl ServiceConfig for NotifyConfig {
    const SERVICE: &'static str = "notify";
    fn listen(&self) -> SocketAddr {
        self.listen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_up_to_the_cap() {
        let config = NotifyConfig::default();
        let delays: Vec<u64> = (1..=11).map(|n| config.retry_delay(n).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
    }
}
