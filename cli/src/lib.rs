//! Library half of the `reelmesh` command: a typed gRPC client and an
//! in-process cluster. Both are shared with the integration tests, so the
//! demo and the tests drive reelmesh the same way users do.

pub mod client;
pub mod cluster;

pub use client::ReelmeshClient;
pub use cluster::{ClusterConfig, DevCluster};
