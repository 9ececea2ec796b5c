//! The standalone store service binary.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    reelmesh_runtime::run_process("reelmesh-store", reelmesh_store::run).await
}
