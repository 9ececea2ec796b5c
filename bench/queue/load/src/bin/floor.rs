//! The floor under any JetStream job queue: the least a job can cost when
//! NATS JetStream (file storage) is the queue, measured on this machine in
//! the queue benchmark's shape, so that reelmesh's numbers can be read
//! against what its transport alone allows.
//!
//! A job here is one message published to a work-queue stream with its ack
//! awaited (the producer's submit), pulled by a worker process, answered
//! with `--stored` stored messages (the last one the completion; none means
//! a core NATS completion) and acked. No records, no events, no gRPC: every
//! real queue on JetStream does at least this much. `--role worker` runs the
//! worker; `--role load` (the default) sets up the stream, submits and times.

#[path = "../shape.rs"]
mod shape;
#[path = "../stats.rs"]
mod stats;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, consumer, stream};
use clap::{Parser, ValueEnum};
use futures::StreamExt as _;

use crate::{
    shape::RunShape,
    stats::{Summary, round3},
};

const WORK_STREAM: &str = "FLOOR_WORK";
const WORK_SUBJECT: &str = "floor.work";
const DONE_STREAM: &str = "FLOOR_DONE";
const CONSUMER: &str = "floor-workers";

#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
enum Role {
    Load,
    Worker,
}

#[derive(Debug, Parser)]
#[command(about = "Times the least a JetStream job queue can do per job")]
struct Args {
    #[arg(long, value_enum, default_value_t = Role::Load)]
    role: Role,
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    #[command(flatten)]
    shape: RunShape,
    /// Jobs the worker handles at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Stored messages the worker writes per job, the last being the
    /// completion (0: the completion is a core NATS message).
    #[arg(long, default_value_t = 1)]
    stored: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let name = match args.role {
        Role::Load => "floor-load",
        Role::Worker => "floor-worker",
    };
    let client = async_nats::ConnectOptions::new()
        .name(name)
        .subscription_capacity(1 << 18)
        .connect(&args.nats_url)
        .await
        .with_context(|| format!("connecting to NATS at {}", args.nats_url))?;
    let js = jetstream::new(client.clone());
    match args.role {
        Role::Worker => work(&client, &js, &args).await,
        Role::Load => load(client, &js, &args).await,
    }
}

/// Declares the work stream (work-queue retention), the stream the
/// worker's stored messages go to, and the workers' pull consumer.
async fn declare(js: &jetstream::Context) -> anyhow::Result<consumer::PullConsumer> {
    let work = js
        .get_or_create_stream(stream::Config {
            name: WORK_STREAM.into(),
            subjects: vec![WORK_SUBJECT.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    js.get_or_create_stream(stream::Config {
        name: DONE_STREAM.into(),
        subjects: vec!["floor.done.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let consumer = work
        .get_or_create_consumer(
            CONSUMER,
            consumer::pull::Config {
                durable_name: Some(CONSUMER.into()),
                ack_policy: consumer::AckPolicy::Explicit,
                max_ack_pending: 10_000,
                ..Default::default()
            },
        )
        .await?;
    Ok(consumer)
}

/// Pulls jobs for ever, `concurrency` at a time: writes the job's stored
/// messages, then acks it.
async fn work(
    client: &async_nats::Client,
    js: &jetstream::Context,
    args: &Args,
) -> anyhow::Result<()> {
    let consumer = declare(js).await?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(args.concurrency)
        .messages()
        .await?;
    // bench/queue.sh waits for this line.
    println!("ready");
    let stored = args.stored;
    messages
        .for_each_concurrent(args.concurrency, |message| async move {
            let Ok(message) = message else { return };
            let id = String::from_utf8_lossy(&message.payload).into_owned();
            if let Err(err) = answer(client, js, &id, stored).await {
                eprintln!("floor worker: job {id}: {err}");
                return;
            }
            let _ = message.ack().await;
        })
        .await;
    Ok(())
}

/// The job's stored messages, one after another; the last is its completion.
async fn answer(
    client: &async_nats::Client,
    js: &jetstream::Context,
    id: &str,
    stored: usize,
) -> anyhow::Result<()> {
    if stored == 0 {
        client
            .publish(format!("floor.core.{id}"), "done".into())
            .await?;
        return Ok(());
    }
    for n in 1..=stored {
        let subject = match n == stored {
            true => format!("floor.done.{id}.completed"),
            false => format!("floor.done.{id}.step"),
        };
        js.publish(subject, "done".into()).await?.await?;
    }
    Ok(())
}

async fn load(
    client: async_nats::Client,
    js: &jetstream::Context,
    args: &Args,
) -> anyhow::Result<()> {
    declare(js).await?;
    let subject = match args.stored {
        0 => "floor.core.*",
        _ => "floor.done.*.completed",
    };
    let mut done = client.subscribe(subject).await?;
    client.flush().await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = done.next().await {
            let id = message
                .subject
                .as_str()
                .split('.')
                .nth(2)
                .map(str::to_owned);
            if tx.send((id, Instant::now())).is_err() {
                return;
            }
        }
    });
    let mut ended = HashMap::new();
    let total = args.shape.warmup + args.shape.jobs;
    let timeout = Duration::from_secs(args.shape.timeout_secs);
    let warmup = Batch {
        jobs: 0..args.shape.warmup,
        producers: args.shape.producers,
        timeout,
    };
    run(js, warmup, &mut rx, &mut ended).await?;
    let timed = Batch {
        jobs: args.shape.warmup..total,
        producers: args.shape.producers,
        timeout,
    };
    let submitted = run(js, timed, &mut rx, &mut ended).await?;
    let mut submit = Vec::new();
    let mut end_to_end = Vec::new();
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    for (id, before, answered) in &submitted {
        let at: Instant = ended[id];
        submit.push(*answered - *before);
        end_to_end.push(at.saturating_duration_since(*before));
        first = Some(first.map_or(*before, |f| f.min(*before)));
        last = Some(last.map_or(at, |l| l.max(at)));
    }
    let (Some(first), Some(last)) = (first, last) else {
        bail!("no jobs");
    };
    let seconds = (last - first).as_secs_f64();
    let report = serde_json::json!({
        "tool": "jetstream-floor",
        "stored": args.stored,
        "producers": args.shape.producers,
        "jobs": args.shape.jobs,
        "seconds": round3(seconds),
        "throughput": round3(args.shape.jobs as f64 / seconds),
        "submit_ms": Summary::of(&submit).to_json(),
        "e2e_ms": Summary::of(&end_to_end).to_json(),
    });
    println!("{report}");
    Ok(())
}

type Ends = tokio::sync::mpsc::UnboundedReceiver<(Option<String>, Instant)>;

/// Jobs numbered `jobs`, published by `producers` producers.
struct Batch {
    jobs: std::ops::Range<usize>,
    producers: usize,
    timeout: Duration,
}

/// Publishes a batch's jobs and waits for all their completions; returns
/// each job's id, the instant before its publish and when its ack came.
async fn run(
    js: &jetstream::Context,
    batch: Batch,
    rx: &mut Ends,
    ended: &mut HashMap<String, Instant>,
) -> anyhow::Result<Vec<(String, Instant, Instant)>> {
    let next = Arc::new(AtomicUsize::new(batch.jobs.start));
    let to = batch.jobs.end;
    let deadline = tokio::time::Instant::now() + batch.timeout;
    let mut tasks = Vec::new();
    for _ in 0..batch.producers {
        let (js, next) = (js.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut submitted = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= to {
                    return Ok::<_, anyhow::Error>(submitted);
                }
                let id = format!("j{n}");
                let before = Instant::now();
                js.publish(WORK_SUBJECT, id.clone().into()).await?.await?;
                submitted.push((id, before, Instant::now()));
            }
        }));
    }
    let mut submitted = Vec::new();
    for task in tasks {
        submitted.extend(task.await??);
    }
    let mut missing = submitted
        .iter()
        .filter(|(id, ..)| !ended.contains_key(id))
        .count();
    while missing > 0 {
        let Ok(Some((Some(id), at))) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            bail!("{missing} jobs did not complete within {:?}", batch.timeout);
        };
        if !ended.contains_key(&id) && batch.jobs.contains(&number(&id)) {
            missing -= 1;
        }
        ended.entry(id).or_insert(at);
    }
    Ok(submitted)
}

/// The number in a job id `j<n>`.
fn number(id: &str) -> usize {
    id.trim_start_matches('j').parse().unwrap_or(usize::MAX)
}
