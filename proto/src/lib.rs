//! The reelmesh.v1 gRPC contract: generated messages, clients and servers.
//!
//! Services depend on this crate instead of each generating their own code, so
//! the wire contract has one home.

#[allow(missing_debug_implementations, clippy::all)]
pub mod v1 {
    tonic::include_proto!("reelmesh.v1");
}

/// The encoded descriptor set of every reelmesh proto file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/reelmesh_descriptor.bin"));
