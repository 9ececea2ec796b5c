//! What each `reelmesh` subcommand does.

use std::{path::Path, time::Duration};

use anyhow::Context as _;
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use reelmesh_cli::{ClusterConfig, DevCluster, ReelmeshClient, client::trim_spec};
use reelmesh_nats::server::NatsServer;
use reelmesh_proto::v1::{self as pb, job_event::Kind};
use reelmesh_render::media;

use crate::{Cli, Command};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dev {
            data_dir,
            listen,
            nats_port,
        } => dev(&data_dir, listen, nats_port).await,
        Command::Demo { standalone, output } => {
            demo(&cli.endpoint, &cli.api_key, standalone, &output).await
        }
        Command::Sample {
            out,
            seconds,
            width,
            height,
        } => sample(&out, seconds, width, height),
        Command::Probe { file } => probe(&file),
        command => client_command(&cli.endpoint, &cli.api_key, command).await,
    }
}

async fn client_command(endpoint: &str, api_key: &str, command: Command) -> anyhow::Result<()> {
    let mut client = ReelmeshClient::connect(endpoint, api_key)
        .await
        .with_context(|| format!("cannot reach the gateway at {endpoint}"))?;
    match command {
        Command::Upload { file, key } => {
            let info = client.upload_file(&file, &key).await?;
            println!(
                "stored {} ({} bytes, sha256 {})",
                info.key, info.size_bytes, info.sha256
            );
        }
        Command::Download { key, file } => {
            let size = client.download_file(&key, &file).await?;
            println!("wrote {} ({size} bytes)", file.display());
        }
        Command::Trim {
            input,
            start,
            end,
            callback,
            watch,
        } => {
            let mut spec = trim_spec(&input, start, end);
            spec.callback = callback.map(|url| pb::Callback {
                url,
                secret: String::new(),
            });
            let job = client.submit(spec).await?;
            println!("job {} {:?}", job.id, job.state());
            if let Some(callback) = job.spec.as_ref().and_then(|spec| spec.callback.as_ref()) {
                println!("webhook secret {}", callback.secret);
            }
            if watch {
                follow(&mut client, &job.id).await?;
            }
        }
        Command::Get { id } => print_job(&client.get(&id).await?),
        Command::List { state } => {
            let state = match state {
                Some(name) => {
                    pb::JobState::from_str_name(&format!("JOB_STATE_{}", name.to_uppercase()))
                        .with_context(|| format!("unknown state {name}"))?
                }
                None => pb::JobState::Unspecified,
            };
            let request = pb::ListJobsRequest {
                state: state as i32,
                ..Default::default()
            };
            for job in client.jobs.list_jobs(request).await?.into_inner().jobs {
                println!("{}  {:?}", job.id, job.state());
            }
        }
        Command::Cancel { id } => print_job(
            &client
                .jobs
                .cancel_job(pb::CancelJobRequest { id })
                .await?
                .into_inner(),
        ),
        Command::Watch { id } => {
            follow(&mut client, &id).await?;
        }
        _ => unreachable!("handled in run"),
    }
    Ok(())
}

async fn dev(data_dir: &Path, listen: std::net::SocketAddr, nats_port: u16) -> anyhow::Result<()> {
    let nats_dir = data_dir.join("nats");
    std::fs::create_dir_all(&nats_dir)?;
    let nats = NatsServer::start_in(&nats_dir, nats_port)?;
    let store_url = format!("file://{}", data_dir.join("store").display());
    let mut config = ClusterConfig::ephemeral(&store_url).render_from_env()?;
    config.gateway.listen = listen;
    let mut cluster = DevCluster::start(nats, config).await?;
    println!("reelmesh dev is up");
    println!(
        "  gateway  {}  (API key: dev-key, tenant: dev)",
        cluster.endpoint()
    );
    println!(
        "  store    {}  (standalone Store API; the gateway serves it too)",
        cluster.store_addr
    );
    println!("  nats     {}", cluster.nats.url());
    println!("  media    {store_url}");
    println!("  try: grpcurl -plaintext {} list", cluster.gateway_addr);
    let shutdown = reelmesh_runtime::shutdown_on_signal();
    tokio::select! {
        _ = shutdown.cancelled() => cluster.shutdown().await,
        stopped = cluster.stopped() => stopped.unwrap_or(Ok(())),
    }
}

async fn demo(
    endpoint: &str,
    api_key: &str,
    standalone: bool,
    output: &Path,
) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let cluster = if standalone {
        println!(
            "starting an all-in-one reelmesh (nats-server, gateway, store, render, notify) ..."
        );
        let nats = NatsServer::start_in(&scratch.path().join("nats"), 0)?;
        let store_url = format!("file://{}", scratch.path().join("store").display());
        Some(DevCluster::start(nats, ClusterConfig::ephemeral(&store_url)).await?)
    } else {
        None
    };
    let endpoint = cluster
        .as_ref()
        .map_or(endpoint.to_string(), DevCluster::endpoint);
    let mut client = ReelmeshClient::connect(&endpoint, api_key)
        .await
        .with_context(|| format!("cannot reach the gateway at {endpoint}"))?;

    let sample_file = scratch.path().join("sample.mp4");
    println!("generating a 10 s 1280x720 H.264/AAC sample clip ...");
    sample(&sample_file, 10.0, 1280, 720)?;
    let stored = client
        .upload_file(&sample_file, "inputs/sample.mp4")
        .await?;
    println!("uploaded {} ({} bytes)", stored.key, stored.size_bytes);

    // Off the sample's keyframes (every 2 s), so this is a frame-accurate
    // re-encode with progress to watch; a cut on keyframes would be copied.
    let job = client
        .submit(trim_spec("inputs/sample.mp4", 1.5, 7.5))
        .await?;
    println!(
        "submitted trim 1.5 s .. 7.5 s as job {} ({:?})",
        job.id,
        job.state()
    );
    follow(&mut client, &job.id).await?;

    let job = client.get(&job.id).await?;
    print_job(&job);
    let result = job.output.context("the job has no output")?;
    client.download_file(&result.key, output).await?;
    let info = media::probe(output)?;
    println!(
        "saved {}: {:.2} s, {} {}x{}, {}",
        output.display(),
        info.duration_seconds,
        info.video.as_ref().map_or("no video", |v| v.codec.as_str()),
        info.video.as_ref().map_or(0, |v| v.width),
        info.video.as_ref().map_or(0, |v| v.height),
        info.audio.as_ref().map_or("no audio", |a| a.codec.as_str()),
    );
    if let Some(cluster) = cluster {
        cluster.shutdown().await?;
    }
    Ok(())
}

/// Shows a job's events as a progress bar until its terminal event, then
/// how long the job took from its queued to its terminal event (the
/// server's own timestamps, so client start-up and network are left out).
async fn follow(client: &mut ReelmeshClient, id: &str) -> anyhow::Result<()> {
    let bar = ProgressBar::new(100);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:12} [{bar:40}] {pos:>3}%")?
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    let mut events = client.watch(id).await?;
    let mut queued_at = None;
    while let Some(event) = events.next().await {
        let event = event?;
        let at = event
            .at
            .map(|at| at.seconds as f64 + f64::from(at.nanos) / 1e9);
        let ended = |state: &str| match (queued_at, at) {
            (Some(start), Some(end)) => {
                println!("finished in {:.3} s (queued -> {state})", end - start)
            }
            _ => println!("finished (queued -> {state})"),
        };
        match event.kind {
            Some(Kind::Queued(_)) => {
                queued_at = at;
                bar.set_message("queued");
            }
            Some(Kind::Started(_)) => bar.set_message("rendering"),
            Some(Kind::Retrying(retrying)) => {
                bar.set_message(format!("attempt {} failed, retrying", retrying.attempt));
                if bar.is_hidden() {
                    println!("  attempt {} failed: {}", retrying.attempt, retrying.error);
                }
            }
            Some(Kind::Progress(progress)) => {
                bar.set_position(progress.percent as u64);
                if bar.is_hidden() {
                    // No terminal (a pipe, a CI log): one line per update instead.
                    println!("  {:>5.1}% {}", progress.percent, progress.stage);
                }
            }
            Some(Kind::Completed(_)) => {
                bar.set_position(100);
                bar.finish_with_message("completed");
                ended("completed");
            }
            Some(Kind::Failed(failed)) => {
                bar.abandon_with_message("failed");
                ended("failed");
                anyhow::bail!("job {id} failed: {}", failed.error);
            }
            Some(Kind::Cancelled(_)) => {
                bar.abandon_with_message("cancelled");
                ended("cancelled");
                anyhow::bail!("job {id} was cancelled");
            }
            None => {}
        }
    }
    Ok(())
}

fn print_job(job: &pb::Job) {
    println!("job {}: {:?}", job.id, job.state());
    if !job.error.is_empty() {
        println!("  error: {}", job.error);
    }
    if let Some(output) = &job.output {
        let media = output.media.clone().unwrap_or_default();
        println!(
            "  output: {} ({} bytes, {:.2} s, {} {}x{}, {})",
            output.key,
            output.size_bytes,
            media.duration_seconds,
            media.video_codec,
            media.width,
            media.height,
            media.audio_codec
        );
        if output.copied {
            println!("  streams copied, not re-encoded");
        }
    }
}

fn sample(out: &Path, seconds: f64, width: u32, height: u32) -> anyhow::Result<()> {
    media::init()?;
    let clip = media::TestClip {
        seconds,
        width,
        height,
        fps: 30,
        audio: true,
    };
    media::write_test_clip(&clip, out)?;
    Ok(())
}

fn probe(file: &Path) -> anyhow::Result<()> {
    media::init()?;
    println!("{:#?}", media::probe(file)?);
    Ok(())
}
