//! All of reelmesh in one process: gateway, store, render and notify on their
//! own loopback ports, sharing one NATS server and one store URL. `reelmesh dev`
//! and the integration tests both run this, each with its own config.

use std::{net::SocketAddr, time::Duration};

use reelmesh_gateway::GatewayConfig;
use reelmesh_nats::server::NatsServer;
use reelmesh_notify::NotifyConfig;
use reelmesh_render::RenderConfig;
use reelmesh_runtime::{ConfigError, ServiceConfig as _, load_config};
use reelmesh_store::{StoreConfig, StoreOptions};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// The configs of the services a cluster runs. Their `nats_url` is replaced
/// by the cluster's NATS server; their `listen` addresses are used as given
/// (port 0 picks a free port).
#[derive(Debug, Clone, Default)]
pub struct ClusterConfig {
    pub gateway: GatewayConfig,
    pub render: RenderConfig,
    pub notify: NotifyConfig,
    pub store: StoreConfig,
    /// Run no render worker in this process: workers are separate
    /// processes (fault tests kill them).
    pub render_elsewhere: bool,
    /// Likewise for notify.
    pub notify_elsewhere: bool,
}

impl ClusterConfig {
    /// Every service on a free loopback port, storing media at `store_url`.
    pub fn ephemeral(store_url: &str) -> Self {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut config = ClusterConfig::default();
        config.gateway.listen = any_port;
        config.render.listen = any_port;
        config.notify.listen = any_port;
        config.store.listen = any_port;
        config.store.url = store_url.to_string();
        config.gateway.store_url = store_url.to_string();
        config.render.store_url = store_url.to_string();
        config
    }

    /// Gives every service that opens the store the same backend settings.
    pub fn with_store_options(mut self, options: StoreOptions) -> Self {
        self.store.options = options.clone();
        self.gateway.store_options = options.clone();
        self.render.store_options = options;
        self
    }

    /// Takes the render worker's settings from the config file and
    /// environment as the render service does (`REELMESH_RENDER_CONCURRENCY`
    /// and the rest), keeping the cluster's own addresses and store.
    pub fn render_from_env(mut self) -> Result<Self, ConfigError> {
        let loaded: RenderConfig = load_config(RenderConfig::SERVICE, None)?;
        let RenderConfig {
            listen,
            nats_url,
            store_url,
            store_options,
            ..
        } = self.render;
        self.render = RenderConfig {
            listen,
            nats_url,
            store_url,
            store_options,
            ..loaded
        };
        Ok(self)
    }
}

#[derive(Debug)]
pub struct DevCluster {
    pub nats: NatsServer,
    pub gateway_addr: SocketAddr,
    /// `None` when render runs elsewhere.
    pub render_addr: Option<SocketAddr>,
    pub notify_addr: Option<SocketAddr>,
    /// The standalone Store API (the gateway serves the same one).
    pub store_addr: SocketAddr,
    shutdown: CancellationToken,
    services: JoinSet<anyhow::Result<()>>,
}

impl DevCluster {
    /// Starts the services against `nats` and returns once each answers its
    /// gRPC health check with SERVING.
    pub async fn start(nats: NatsServer, mut config: ClusterConfig) -> anyhow::Result<Self> {
        let nats_url = nats.url();
        config.gateway.nats_url = nats_url.clone();
        config.render.nats_url = nats_url.clone();
        config.notify.nats_url = nats_url;
        // The gateway's Store API and the standalone one accept the same keys.
        config.store.api_keys = config.gateway.api_keys.clone();
        let shutdown = CancellationToken::new();
        let mut services = JoinSet::new();

        let gateway_addr = spawn_service(
            &mut services,
            &shutdown,
            config.gateway.listen,
            config.gateway,
            reelmesh_gateway::run,
        )
        .await?;
        let render_addr = match config.render_elsewhere {
            true => None,
            false => Some(
                spawn_service(
                    &mut services,
                    &shutdown,
                    config.render.listen,
                    config.render,
                    reelmesh_render::run,
                )
                .await?,
            ),
        };
        let notify_addr = match config.notify_elsewhere {
            true => None,
            false => Some(
                spawn_service(
                    &mut services,
                    &shutdown,
                    config.notify.listen,
                    config.notify,
                    reelmesh_notify::run,
                )
                .await?,
            ),
        };
        let store_addr = spawn_service(
            &mut services,
            &shutdown,
            config.store.listen,
            config.store,
            reelmesh_store::run,
        )
        .await?;

        let mut cluster = DevCluster {
            nats,
            gateway_addr,
            render_addr,
            notify_addr,
            store_addr,
            shutdown,
            services,
        };
        let addrs = [
            Some(gateway_addr),
            render_addr,
            notify_addr,
            Some(store_addr),
        ];
        for addr in addrs.into_iter().flatten() {
            cluster.wait_until_serving(addr).await?;
        }
        Ok(cluster)
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.gateway_addr)
    }

    /// Waits for one service's health check. The listener is bound before
    /// the service starts, so the call simply waits for the server; a
    /// service that fails to start ends its task, which is reported instead.
    async fn wait_until_serving(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        let check = async {
            let channel = Channel::from_shared(format!("http://{addr}"))?
                .connect()
                .await?;
            let status = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await?
                .into_inner()
                .status();
            anyhow::ensure!(
                status == ServingStatus::Serving,
                "{addr} reports {status:?}"
            );
            Ok(())
        };
        tokio::select! {
            ready = tokio::time::timeout(Duration::from_secs(60), check) => {
                ready.map_err(|_| anyhow::anyhow!("{addr} did not become healthy in 60 s"))?
            }
            Some(ended) = self.services.join_next() => {
                ended??;
                anyhow::bail!("a service stopped during start-up")
            }
        }
    }

    /// Stops every service and waits for them (in-flight renders finish).
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        while let Some(ended) = self.services.join_next().await {
            ended??;
        }
        Ok(())
    }

    /// Resolves when a service stops by itself (an error, or shutdown).
    pub async fn stopped(&mut self) -> Option<anyhow::Result<()>> {
        self.services
            .join_next()
            .await
            .map(|ended| ended.map_err(anyhow::Error::from).and_then(|result| result))
    }
}

/// Binds `listen` (port 0 picks one), starts the service's `run` on it as
/// every main does, and returns the address it got.
async fn spawn_service<C, F, Fut>(
    services: &mut JoinSet<anyhow::Result<()>>,
    shutdown: &CancellationToken,
    listen: SocketAddr,
    config: C,
    run: F,
) -> anyhow::Result<SocketAddr>
where
    F: FnOnce(C, TcpListener, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    services.spawn(run(config, listener, shutdown.child_token()));
    Ok(addr)
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // figment's `Jail` fixes the closure's (large) error type.
    #[allow(clippy::result_large_err)]
    #[test]
    fn the_dev_render_worker_reads_its_concurrency_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("REELMESH_RENDER_CONCURRENCY", 8);
            let config = ClusterConfig::ephemeral("memory://dev")
                .render_from_env()
                .map_err(|err| err.to_string())?;
            assert_eq!(config.render.concurrency, 8);
            assert_eq!(config.render.store_url, "memory://dev");
            assert_eq!(config.render.listen.port(), 0, "the cluster's own port");
            Ok(())
        });
    }
}
