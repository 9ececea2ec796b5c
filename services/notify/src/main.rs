//! The notify binary.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    reelmesh_runtime::run_process("reelmesh-notify", reelmesh_notify::run).await
}
