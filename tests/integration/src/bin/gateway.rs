//! The gateway's main, built inside this test package so fault tests can
//! run (and SIGKILL) gateways as processes (`CARGO_BIN_EXE_gateway`). Same
//! body as `services/gateway`'s main.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    reelmesh_runtime::run_process("reelmesh-gateway", reelmesh_gateway::run).await
}
