//! The parts of a reelmesh process that are the same for every service:
//! loading its typed config, starting telemetry, and turning signals into a
//! shutdown token. Each service's `main` is these three calls plus `run`.

pub mod auth;
pub mod config;
pub mod egress;
pub mod grpc;
pub mod process;
pub mod shutdown;
pub mod slots;
pub mod telemetry;

pub use auth::{ApiKeyAuth, ApiKeys, Tenant};
pub use config::{ConfigError, EXIT_BAD_CONFIG, load_config};
pub use egress::{EgressConfig, EgressPolicy, EgressRefused};
pub use process::{ServiceConfig, run_process};
pub use shutdown::shutdown_on_signal;
pub use slots::free_slots;
pub use telemetry::{Telemetry, init_telemetry};
