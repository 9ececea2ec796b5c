//! The render worker's main, built inside this test package so that fault
//! tests can run (and kill) workers as processes: cargo builds a package's
//! binaries for its integration tests and tells them where
//! (`CARGO_BIN_EXE_render-worker`). Same body as `services/render`'s main.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    reelmesh_runtime::run_process("reelmesh-render", reelmesh_render::run).await
}
