//! The render worker binary.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    reelmesh_runtime::run_process("reelmesh-render", reelmesh_render::run).await
}
