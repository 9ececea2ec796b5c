//! Compiles proto/reelmesh/v1/*.proto with protox (pure Rust, so no protoc is
//! needed on the machine) and writes the descriptor set that server reflection
//! serves to grpcurl.

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "proto/reelmesh/v1/jobs.proto",
    "proto/reelmesh/v1/store.proto",
    "proto/reelmesh/v1/assets.proto",
    "proto/reelmesh/v1/webhooks.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    // Imports (google/protobuf/timestamp.proto) go into the set too, so that
    // grpcurl can resolve every type through reflection alone.
    let descriptors = protox::Compiler::new(["proto"])?
        .include_imports(true)
        .include_source_info(true)
        .open_files(PROTOS)?
        .file_descriptor_set();
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("reelmesh_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    // Media chunks are `Bytes`, so they pass between object_store and the
    // wire without copies.
    tonic_prost_build::configure()
        .bytes(".reelmesh.v1")
        .compile_fds(descriptors)?;
    Ok(())
}
