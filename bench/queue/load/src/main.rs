//! The reelmesh side of the queue benchmark (`bench/queue.sh`): N no-op jobs
//! through the whole path, submit → work queue → render worker → completed
//! event, from P concurrent producers.
//!
//! Before anything is submitted it subscribes (core NATS, no JetStream) to
//! `reelmesh.events.*.*.completed` and `.failed`, the analogue of BullMQ's
//! QueueEvents. Each producer takes the next job number and submits
//! `{"noop": {"seconds": 0}}` over one shared gRPC channel, waiting for the
//! answer before its next submit. Measured per job:
//!
//! - submit: the SubmitJob round trip;
//! - submit → completed: when this process received the job's completed event
//!   minus the instant just before its submit.
//!
//! Throughput is N over first submit → last completed event. A warm-up of
//! `--warmup` jobs with the same producers runs first and is not counted.
//! Prints one JSON object on stdout (the same shape as
//! `bench/queue/bullmq.mjs`); progress goes to stderr.

mod shape;
mod stats;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Parser;
use futures::StreamExt as _;
use reelmesh_proto::v1::{self as pb, job_spec::Operation, jobs_client::JobsClient};
use tokio::sync::mpsc;
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};

use crate::{
    shape::RunShape,
    stats::{Summary, round3},
};

#[derive(Debug, Parser)]
#[command(about = "Times no-op jobs through reelmesh: submit and submit -> completed event")]
struct Args {
    /// Gateway address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    endpoint: String,
    /// API key (its tenant owns the jobs).
    #[arg(long, default_value = "dev-key")]
    api_key: String,
    /// The cluster's NATS server, for the completed events.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    #[command(flatten)]
    shape: RunShape,
    /// Also write every timed job's submit and submit -> completed
    /// latencies (ms, one job a line) to this file.
    #[arg(long)]
    samples: Option<std::path::PathBuf>,
}

/// One submit as its producer saw it.
#[derive(Debug)]
struct Submitted {
    id: String,
    before: Instant,
    answered: Instant,
}

/// A terminal event as this process received it.
#[derive(Debug, Clone, Copy)]
struct Ended {
    completed: bool,
    at: Instant,
}

/// Terminal events received so far, by job id.
#[derive(Debug)]
struct Events {
    incoming: mpsc::UnboundedReceiver<(String, Ended)>,
    seen: HashMap<String, Ended>,
}

impl Events {
    /// Subscribes to every job's terminal events and returns once the
    /// server has the subscriptions, so no event of a later submit is missed.
    async fn follow(client: async_nats::Client) -> anyhow::Result<Self> {
        let completed = client.subscribe("reelmesh.events.*.*.completed").await?;
        let failed = client.subscribe("reelmesh.events.*.*.failed").await?;
        client.flush().await.context("NATS flush")?;
        let (tx, incoming) = mpsc::unbounded_channel();
        let mut both = futures::stream::select(completed, failed);
        tokio::spawn(async move {
            while let Some(message) = both.next().await {
                let at = Instant::now();
                // reelmesh.events.<tenant>.<job>.<kind>
                let mut tokens = message.subject.as_str().rsplit('.');
                let (Some(kind), Some(job)) = (tokens.next(), tokens.next()) else {
                    continue;
                };
                let ended = Ended {
                    completed: kind == "completed",
                    at,
                };
                if tx.send((job.to_string(), ended)).is_err() {
                    return;
                }
            }
        });
        Ok(Events {
            incoming,
            seen: HashMap::new(),
        })
    }

    /// Waits until every one of `ids` has ended, or `deadline`.
    async fn wait_for(&mut self, ids: &HashSet<&str>, deadline: tokio::time::Instant) -> usize {
        let mut missing = ids
            .iter()
            .filter(|id| !self.seen.contains_key(**id))
            .count();
        while missing > 0 {
            let Ok(Some((id, ended))) =
                tokio::time::timeout_at(deadline, self.incoming.recv()).await
            else {
                break;
            };
            if ids.contains(&id.as_str()) && !self.seen.contains_key(&id) {
                missing -= 1;
            }
            self.seen.entry(id).or_insert(ended);
        }
        missing
    }
}

/// What one run of N jobs measured.
#[derive(Debug)]
struct Measured {
    seconds: f64,
    /// (submit, submit -> completed) of every job, in submit order per producer.
    samples: Vec<(Duration, Duration)>,
    submit: Summary,
    end_to_end: Summary,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.shape.producers == 0 || args.shape.jobs == 0 {
        bail!("--jobs and --producers must be at least 1");
    }
    let nats = async_nats::ConnectOptions::new()
        .name("queue-bench-load")
        .subscription_capacity(1 << 18)
        .connect(&args.nats_url)
        .await
        .with_context(|| format!("connecting to NATS at {}", args.nats_url))?;
    let mut events = Events::follow(nats).await?;
    let channel = Channel::from_shared(args.endpoint.clone())?
        .connect()
        .await
        .with_context(|| format!("connecting to the gateway at {}", args.endpoint))?;
    let client = JobsClient::new(channel);
    let auth: MetadataValue<Ascii> = format!("Bearer {}", args.api_key).parse()?;
    let timeout = Duration::from_secs(args.shape.timeout_secs);

    if args.shape.warmup > 0 {
        eprintln!(
            "reelmesh: warm-up, {} jobs from {} producers",
            args.shape.warmup, args.shape.producers
        );
        run(
            &client,
            &auth,
            args.shape.warmup,
            args.shape.producers,
            &mut events,
            timeout,
        )
        .await?;
    }
    eprintln!(
        "reelmesh: {} jobs from {} producers",
        args.shape.jobs, args.shape.producers
    );
    let measured = run(
        &client,
        &auth,
        args.shape.jobs,
        args.shape.producers,
        &mut events,
        timeout,
    )
    .await?;
    if let Some(path) = &args.samples {
        let lines: String = measured
            .samples
            .iter()
            .map(|(submit, e2e)| {
                format!(
                    "{:.3} {:.3}\n",
                    submit.as_secs_f64() * 1e3,
                    e2e.as_secs_f64() * 1e3
                )
            })
            .collect();
        std::fs::write(path, format!("submit_ms e2e_ms\n{lines}"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let report = serde_json::json!({
        "tool": "reelmesh",
        "producers": args.shape.producers,
        "jobs": args.shape.jobs,
        "warmup": args.shape.warmup,
        "seconds": round3(measured.seconds),
        "throughput": round3(args.shape.jobs as f64 / measured.seconds),
        "submit_ms": measured.submit.to_json(),
        "e2e_ms": measured.end_to_end.to_json(),
    });
    println!("{report}");
    Ok(())
}

/// Submits `jobs` no-op jobs from `producers` producers and waits for all of
/// their completed events.
async fn run(
    client: &JobsClient<Channel>,
    auth: &MetadataValue<Ascii>,
    jobs: usize,
    producers: usize,
    events: &mut Events,
    timeout: Duration,
) -> anyhow::Result<Measured> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..producers {
        let (mut client, auth, next) = (client.clone(), auth.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut submitted = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < jobs {
                let mut request = tonic::Request::new(pb::SubmitJobRequest {
                    spec: Some(noop()),
                    idempotency_key: String::new(),
                });
                request.metadata_mut().insert("authorization", auth.clone());
                let before = Instant::now();
                let job = client.submit_job(request).await?.into_inner();
                let answered = Instant::now();
                submitted.push(Submitted {
                    id: job.id,
                    before,
                    answered,
                });
            }
            Ok::<_, tonic::Status>(submitted)
        }));
    }
    let mut submitted = Vec::with_capacity(jobs);
    for task in tasks {
        submitted.extend(task.await?.context("SubmitJob")?);
    }

    let ids: HashSet<&str> = submitted.iter().map(|job| job.id.as_str()).collect();
    let missing = events.wait_for(&ids, started + timeout).await;
    if missing > 0 {
        bail!("{missing} of {jobs} jobs did not end within {timeout:?}");
    }
    let mut submit = Vec::with_capacity(jobs);
    let mut end_to_end = Vec::with_capacity(jobs);
    let mut failed = 0;
    let mut first = None::<Instant>;
    let mut last = None::<Instant>;
    for job in &submitted {
        let ended = events.seen[&job.id];
        if !ended.completed {
            failed += 1;
        }
        submit.push(job.answered - job.before);
        end_to_end.push(ended.at.saturating_duration_since(job.before));
        first = Some(first.map_or(job.before, |first| first.min(job.before)));
        last = Some(last.map_or(ended.at, |last| last.max(ended.at)));
    }
    if failed > 0 {
        bail!("{failed} of {jobs} no-op jobs failed");
    }
    let (Some(first), Some(last)) = (first, last) else {
        bail!("no jobs were submitted");
    };
    Ok(Measured {
        seconds: (last - first).as_secs_f64(),
        samples: submit
            .iter()
            .copied()
            .zip(end_to_end.iter().copied())
            .collect(),
        submit: Summary::of(&submit),
        end_to_end: Summary::of(&end_to_end),
    })
}

fn noop() -> pb::JobSpec {
    pb::JobSpec {
        operation: Some(Operation::Noop(pb::Noop {
            seconds: 0.0,
            fail_attempts: 0,
        })),
        ..Default::default()
    }
}
