//! The gateway binary refuses bad configuration with exit code 64, naming
//! the problem, before it touches the network.

use std::process::Command;

#[test]
fn bad_config_exits_64_and_names_the_field() {
    let output = Command::new(env!("CARGO_BIN_EXE_reelmesh-gateway"))
        .env("REELMESH_GATEWAY_LISTEN", "not-an-address")
        .env_remove("REELMESH_CONFIG")
        .output()
        .expect("run gateway");
    assert_eq!(output.status.code(), Some(64));
    let logs = String::from_utf8_lossy(&output.stdout) + String::from_utf8_lossy(&output.stderr);
    assert!(logs.to_lowercase().contains("listen"), "{logs}");
}

#[test]
fn a_missing_config_file_exits_64() {
    let output = Command::new(env!("CARGO_BIN_EXE_reelmesh-gateway"))
        .env("REELMESH_CONFIG", "/nonexistent/reelmesh.toml")
        .output()
        .expect("run gateway");
    assert_eq!(output.status.code(), Some(64));
}
