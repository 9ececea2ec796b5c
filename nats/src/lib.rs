//! Everything reelmesh keeps in NATS JetStream, in one place.
//!
//! NATS is the only coordination between the services: job records live in a
//! KV bucket updated by compare-and-set, work waits on a work-queue stream, and
//! each job's events are kept on a limits stream so a watcher can replay them.
//! Subject, stream and bucket names are defined in [`names`] and nowhere else.

pub mod asset;
mod claim;
pub mod delivery;
pub mod endpoint;
pub mod error;
pub mod event;
mod id;
pub mod idempotency;
mod kv_json;
pub mod names;
pub mod pending;
pub mod record;
pub mod running;
pub mod server;
pub mod topology;
pub mod work;

pub use asset::{AssetCatalog, AssetId, AssetRecord, Registered};
pub use delivery::{
    DeliveryAttempt, DeliveryChain, DeliveryLog, DeliveryRecord, DeliveryState, Destination,
    MAX_CHAIN_BYTES, WebhookTask,
};
pub use endpoint::{
    Disabled, EndpointChange, EndpointId, EndpointRecord, EndpointSecret, EndpointStore,
    WEBHOOK_EVENT_TYPES,
};
pub use error::NatsError;
pub use event::{EventKind, EventLog, JobEvent, SequencedEvent, TERMINAL_KIND_NAMES};
pub use idempotency::IdempotencyKeys;
pub use pending::Pending;
pub use record::{
    Attempt, DEFAULT_MAX_ATTEMPTS, JobId, JobOutput, JobRecord, JobRecords, JobState, MediaSummary,
    NoAttempt, Priority, Progress, TenantId, outputs_dir,
};
pub use running::{Claim, HeldSlot, RunningSlots};
pub use topology::{Topology, TopologyConfig};
pub use work::{WorkItem, WorkQueue};
