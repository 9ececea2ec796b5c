//! `reelmesh`: run an all-in-one dev cluster, watch the demo job, and talk
//! to a gateway (upload, submit, watch, get, list, cancel, download).

mod commands;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "reelmesh",
    version,
    about = "Media jobs over gRPC, rendered with GStreamer"
)]
struct Cli {
    /// Gateway address.
    #[arg(
        long,
        global = true,
        env = "REELMESH_ENDPOINT",
        default_value = "http://127.0.0.1:50051"
    )]
    endpoint: String,
    /// API key sent as `authorization: Bearer <key>`.
    #[arg(
        long,
        global = true,
        env = "REELMESH_API_KEY",
        default_value = "dev-key"
    )]
    api_key: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run nats-server, gateway, render and notify in this process.
    Dev {
        /// Where NATS and the store keep their files.
        #[arg(long, default_value = "/var/tmp/reelmesh")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: std::net::SocketAddr,
        #[arg(long, default_value_t = 4222)]
        nats_port: u16,
    },
    /// Make a sample clip, upload it, trim it, watch the job, check the result.
    Demo {
        /// Start a private all-in-one cluster for the demo instead of using --endpoint.
        #[arg(long)]
        standalone: bool,
        /// Where to save the trimmed result.
        #[arg(long, default_value = "reelmesh-demo-output.mp4")]
        output: PathBuf,
    },
    /// Write a generated test clip (H.264/AAC MP4).
    Sample {
        out: PathBuf,
        #[arg(long, default_value_t = 6.0)]
        seconds: f64,
        #[arg(long, default_value_t = 640)]
        width: u32,
        #[arg(long, default_value_t = 360)]
        height: u32,
    },
    /// Upload a local file to the store under KEY.
    Upload { file: PathBuf, key: String },
    /// Download KEY from the store into a local file.
    Download { key: String, file: PathBuf },
    /// Submit a trim of a stored asset.
    Trim {
        #[arg(long)]
        input: String,
        #[arg(long)]
        start: f64,
        #[arg(long)]
        end: f64,
        /// Webhook URL called when the job ends.
        #[arg(long)]
        callback: Option<String>,
        /// Follow the job's progress until it ends.
        #[arg(long)]
        watch: bool,
    },
    /// Show a job.
    Get { id: String },
    /// List jobs, newest first.
    List {
        /// queued, running, completed, failed or cancelled.
        #[arg(long)]
        state: Option<String>,
    },
    /// Cancel a job.
    Cancel { id: String },
    /// Follow a job's events with a progress bar.
    Watch { id: String },
    /// Print duration and codecs of a local media file.
    Probe { file: PathBuf },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let _telemetry = matches!(cli.command, Command::Dev { .. })
        .then(|| reelmesh_runtime::init_telemetry("reelmesh-dev"));
    match commands::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
