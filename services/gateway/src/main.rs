//! The gateway binary.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    reelmesh_runtime::run_process("reelmesh-gateway", reelmesh_gateway::run).await
}
