//! The notify service's main, built inside this test package so that fault
//! tests can run (and kill) it as a process (`CARGO_BIN_EXE_notify`). Same
//! body as `services/notify`'s main.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    reelmesh_runtime::run_process("reelmesh-notify", reelmesh_notify::run).await
}
