//! Configuration of the notify service.

use std::{net::SocketAddr, time::Duration};

use reelmesh_nats::TopologyConfig;
use reelmesh_runtime::{EgressConfig, EgressPolicy, ServiceConfig};
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
    /// The wait before each retry: the first attempt is immediate, then one
    /// retry per entry. Svix's schedule by default (5 s, 5 min, 30 min, 2 h,
    /// 5 h, 10 h, 10 h); a delivery that fails them all is a dead letter.
    pub retry_schedule_secs: Vec<u64>,
    /// Which non-public webhook hosts may be called (none by default).
    pub egress: EgressConfig,
    /// At most one `job.progress` webhook per job and endpoint this often.
    pub progress_interval_secs: u64,
    /// Webhooks sent at once (each to a different job or destination; one
    /// job's webhooks to one destination go one at a time, in order).
    pub concurrency: usize,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50054)),
            nats_url: "nats://127.0.0.1:4222".into(),
            topology: TopologyConfig::default(),
            timeout_secs: 15,
            retry_schedule_secs: vec![5, 300, 1800, 7200, 18000, 36000, 36000],
            egress: EgressConfig::default(),
            progress_interval_secs: 5,
            concurrency: 32,
        }
    }
}

impl NotifyConfig {
    /// The wait before the next attempt after `attempts` failed ones, or
    /// `None` when the schedule is spent.
    pub fn retry_delay(&self, attempts: u32) -> Option<Duration> {
        let index = usize::try_from(attempts.checked_sub(1)?).ok()?;
        self.retry_schedule_secs
            .get(index)
            .map(|secs| Duration::from_secs(*secs))
    }
}

impl ServiceConfig for NotifyConfig {
    const SERVICE: &'static str = "notify";
    fn listen(&self) -> SocketAddr {
        self.listen
    }
    fn validate(&self) -> Result<(), String> {
        if self.concurrency == 0 {
            return Err("concurrency: must be at least 1".into());
        }
        if self.topology.webhook_ack_wait.as_secs() <= self.timeout_secs {
            return Err(format!(
                "topology.webhook_ack_wait ({} s) must be longer than timeout_secs ({} s)",
                self.topology.webhook_ack_wait.as_secs(),
                self.timeout_secs
            ));
        }
        EgressPolicy::new(&self.egress)
            .map(|_| ())
            .map_err(|err| err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_follow_the_schedule_then_stop() {
        let config = NotifyConfig::default();
        let delays: Vec<Option<u64>> = (1..=8)
            .map(|n| config.retry_delay(n).map(|d| d.as_secs()))
            .collect();
        let svix = [5, 300, 1800, 7200, 18000, 36000, 36000];
        assert_eq!(delays[..7], svix.map(Some));
        assert_eq!(delays[7], None, "eight attempts in all, then a dead letter");
    }
}
