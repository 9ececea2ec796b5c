//! The body of every service's `main`: read config, start telemetry, bind,
//! then call the service's `run` — the same function tests call.

use std::{future::Future, net::SocketAddr, process::ExitCode};

use serde::{Serialize, de::DeserializeOwned};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{EXIT_BAD_CONFIG, init_telemetry, load_config, shutdown_on_signal};

/// A service's typed configuration.
pub trait ServiceConfig: Serialize + DeserializeOwned + Default {
    /// Section of the config file and infix of env variables ("gateway").
    const SERVICE: &'static str;
    /// Address the service's gRPC server (API or health) binds.
    fn listen(&self) -> SocketAddr;
    /// Checks what parsing cannot (an allowlist entry, a URL), so a bad
    /// value exits with the config code before anything starts.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Runs a service process to completion and maps the outcome to an exit
/// code: 64 for bad configuration, 1 for any other failure.
pub async fn run_process<C, F, Fut>(service_name: &'static str, run: F) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C, TcpListener, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let _telemetry = init_telemetry(service_name);
    let config: C = match load_config(C::SERVICE, None) {
        Ok(config) => config,
        Err(err) => {
            tracing::error!("{err}");
            return ExitCode::from(EXIT_BAD_CONFIG as u8);
        }
    };
    if let Err(message) = config.validate() {
        tracing::error!("bad configuration for {}: {message}", C::SERVICE);
        return ExitCode::from(EXIT_BAD_CONFIG as u8);
    }
    let listener = match TcpListener::bind(config.listen()).await {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!("cannot listen on {}: {err}", config.listen());
            return ExitCode::FAILURE;
        }
    };
    match run(config, listener, shutdown_on_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}
