//! The render worker loop: take one job at a time per free slot, move it to
//! RUNNING, render it, store the result and end the job exactly once.
//!
//! Work is pulled one message per free slot rather than streamed in batches:
//! a prefetched message would sit in this worker's buffer with its ack timer
//! running while another worker could have started it.

use std::{
    sync::{Arc, atomic::AtomicBool},
    time::{Duration, Instant},
};

use async_nats::jetstream::{AckKind, Message, consumer::PullConsumer};
use futures::StreamExt as _;
use reelmesh_nats::{
    EventKind, JobEvent, JobOutput, JobRecord, JobState, MediaSummary, Progress, Topology, WorkItem,
};
use reelmesh_store::MediaStore;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{
    RenderConfig, RenderError,
    engine::{self, Copied, Rendered},
    error::LocalInput,
    media::{self, Control},
    plan::{RenderPlan, Work},
};

/// Progress events are published at most this often, and only when the
/// percentage moved by at least [`PROGRESS_STEP`]: a job's history (which
/// every watcher replays) stays near 100 progress events however long it runs.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
const PROGRESS_STEP: f64 = 1.0;
/// How often progress is written to the job record (GetJob pollers see it).
const RECORD_PROGRESS_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct RenderWorker {
    topology: Topology,
    store: MediaStore,
    config: Arc<RenderConfig>,
}

impl RenderWorker {
    pub fn new(topology: Topology, store: MediaStore, config: RenderConfig) -> Self {
        RenderWorker {
            topology,
            store,
            config: Arc::new(config),
        }
    }

    /// Pulls and renders jobs until `shutdown`, then waits for the jobs in
    /// hand to finish.
    pub async fn run(&self, consumer: PullConsumer, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        while let Some(permit) = tokio::select! {
            _ = shutdown.cancelled() => None,
            permit = slots.clone().acquire_owned() => permit.ok(),
        } {
            let message = tokio::select! {
                _ = shutdown.cancelled() => break,
                message = next_message(&consumer) => message,
            };
            let Some(message) = message else { continue };
            let worker = self.clone();
            tokio::spawn(async move {
                worker.handle(message).await;
                drop(permit);
            });
        }
        let _ = slots
            .acquire_many(self.config.concurrency.max(1) as u32)
            .await;
    }

    async fn handle(&self, message: Message) {
        let ack = match self.process(&message).await {
            Ok(()) => AckKind::Ack,
            Err(RenderError::Nats(reelmesh_nats::NatsError::Corrupt(why))) => {
                // Redelivery cannot fix bytes we cannot read.
                tracing::error!("dropping unreadable work item: {why}");
                AckKind::Term
            }
            Err(err) => {
                // Only NATS or store outages get here; the job is still
                // RUNNING and is picked up again after the delay.
                tracing::warn!("job interrupted, will be redelivered: {err}");
                AckKind::Nak(Some(Duration::from_secs(2)))
            }
        };
        if let Err(err) = message.ack_with(ack).await {
            tracing::warn!("could not ack work item: {err}");
        }
    }

    /// Ok means the work item is finished with (rendered, failed for good,
    /// or not ours to run); Err means try again later.
    async fn process(&self, message: &Message) -> Result<(), RenderError> {
        let item = WorkItem::decode(&message.payload)?;
        let span = tracing::info_span!("job", job = %item.job_id, tenant = %item.tenant);
        async {
            let Some(job) = self.start(&item).await? else {
                return Ok(());
            };
            let outcome = self.render(&job, message).await;
            self.finish(&job, outcome)
                .instrument(tracing::info_span!("finish"))
                .await
        }
        .instrument(span)
        .await
    }

    /// Moves the job to RUNNING. `None` when there is nothing to do: the
    /// job is gone, already ended, or was cancelled while queued.
    async fn start(&self, item: &WorkItem) -> Result<Option<JobRecord>, RenderError> {
        let jobs = &self.topology.jobs;
        let started = jobs
            .modify(&item.tenant, &item.job_id, |job| match job.state {
                JobState::Queued => Ok(job.move_to(JobState::Running).is_ok()),
                _ => Ok(false),
            })
            .await;
        let job = match started {
            Ok(versioned) => versioned.record,
            Err(reelmesh_nats::NatsError::JobNotFound(_)) => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        if job.state != JobState::Running {
            return Ok(None);
        }
        self.publish(&job, EventKind::Started).await?;
        tracing::info!(job = %job.id, tenant = %job.tenant, "render started");
        Ok(Some(job))
    }

    async fn render(&self, job: &JobRecord, message: &Message) -> Result<JobOutput, RenderError> {
        let plan = RenderPlan::for_job(&job.id, &job.spec)?;
        let scratch = tempfile::Builder::new()
            .prefix("reelmesh-render-")
            .tempdir_in(&self.config.work_dir)?;
        let inputs = self
            .fetch_inputs(job, &plan, scratch.path())
            .instrument(tracing::info_span!("fetch_inputs"))
            .await?;
        let cancel = Arc::new(AtomicBool::new(false));
        let (progress_tx, progress_rx) = watch::channel(0.0);
        let watchers = CancellationToken::new();
        tokio::spawn(
            self.clone()
                .watch_for_cancel(job.clone(), cancel.clone(), watchers.clone()),
        );
        tokio::spawn(
            self.clone()
                .report_progress(job.clone(), progress_rx, watchers.clone()),
        );
        let rendered = self
            .run_engine(&plan, &inputs, scratch.path(), cancel, progress_tx, message)
            .instrument(tracing::info_span!("engine"))
            .await;
        watchers.cancel();
        self.store_outputs(job, &plan, rendered?)
            .instrument(tracing::info_span!("store_outputs"))
            .await
    }

    /// Copies every input into scratch space, naming a missing one.
    async fn fetch_inputs(
        &self,
        job: &JobRecord,
        plan: &RenderPlan,
        scratch: &std::path::Path,
    ) -> Result<Vec<LocalInput>, RenderError> {
        let mut local = Vec::new();
        for (index, key) in plan.work.inputs().into_iter().enumerate() {
            let path = scratch.join(format!("input-{index}"));
            match self.store.download_to_file(&job.tenant, key, &path).await {
                Err(reelmesh_store::StoreError::NotFound(_)) => {
                    return Err(RenderError::InputNotFound(key.to_string()));
                }
                other => other?,
            };
            local.push(LocalInput {
                key: key.clone(),
                path,
            });
        }
        Ok(local)
    }

    /// Uploads what the render produced and describes it.
    async fn store_outputs(
        &self,
        job: &JobRecord,
        plan: &RenderPlan,
        rendered: Rendered,
    ) -> Result<JobOutput, RenderError> {
        self.check_output_size(&rendered)?;
        let media = tracing::info_span!("probe_result")
            .in_scope(|| media::probe(&rendered.files[0]))
            .map_err(|err| RenderError::Pipeline(err.to_string()))?;
        let mut keys = Vec::new();
        let mut size_bytes = 0;
        for (index, file) in rendered.files.iter().enumerate() {
            let key = match plan.work {
                Work::Thumbnails { .. } => {
                    RenderPlan::thumbnail_key(&job.id, index, plan.work.extension())?
                }
                _ => plan.output.clone(),
            };
            let size = self.store.upload_file(&job.tenant, &key, file).await?;
            if index == 0 {
                size_bytes = size;
            }
            keys.push(key.to_string());
        }
        Ok(JobOutput {
            key: keys[0].clone(),
            size_bytes,
            media: summary(media),
            keys,
            copied: rendered.copy != Copied::Nothing,
            reencoded_seconds: match rendered.copy {
                Copied::AfterHead { reencoded_seconds } => reencoded_seconds,
                _ => 0.0,
            },
        })
    }

    /// Refuses results beyond the configured size, before any is stored.
    fn check_output_size(&self, rendered: &Rendered) -> Result<(), RenderError> {
        let mut total = 0;
        for file in &rendered.files {
            total += std::fs::metadata(file)?.len();
        }
        let limit = self.config.max_output_bytes;
        if total > limit {
            return Err(RenderError::Plan(format!(
                "the result is {total} bytes, beyond this server's limit of {limit} bytes"
            )));
        }
        Ok(())
    }

    /// Runs the blocking render on the blocking pool, telling JetStream the
    /// job is alive while it runs.
    async fn run_engine(
        &self,
        plan: &RenderPlan,
        inputs: &[LocalInput],
        scratch: &std::path::Path,
        cancel: Arc<AtomicBool>,
        progress: watch::Sender<f64>,
        message: &Message,
    ) -> Result<Rendered, RenderError> {
        let (plan, inputs) = (plan.clone(), inputs.to_vec());
        let scratch = scratch.to_path_buf();
        let stall_timeout = self.config.stall_timeout();
        let span = tracing::Span::current();
        let engine = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let mut on_progress = |fraction: f64| {
                progress.send_if_modified(|current| {
                    let changed = fraction > *current;
                    *current = current.max(fraction);
                    changed
                });
            };
            let mut control = Control::new(&cancel, stall_timeout, &mut on_progress);
            engine::execute(&plan, &inputs, &scratch, &mut control)
        });
        tokio::pin!(engine);
        let heartbeat = self.config.topology.work_ack_wait / 3;
        loop {
            tokio::select! {
                result = &mut engine => {
                    return result.unwrap_or_else(|err| Err(RenderError::Pipeline(err.to_string())));
                }
                _ = tokio::time::sleep(heartbeat) => {
                    let _ = message.ack_with(AckKind::Progress).await;
                }
            }
        }
    }

    /// Sets `cancel` as soon as the job's record says CANCELLED.
    async fn watch_for_cancel(
        self,
        job: JobRecord,
        cancel: Arc<AtomicBool>,
        done: CancellationToken,
    ) {
        let Ok(updates) = self.topology.jobs.watch(&job.tenant, &job.id).await else {
            return;
        };
        let mut updates = std::pin::pin!(updates);
        loop {
            tokio::select! {
                _ = done.cancelled() => return,
                update = updates.next() => match update {
                    Some(record) if record.state == JobState::Cancelled => {
                        cancel.store(true, std::sync::atomic::Ordering::SeqCst);
                        return;
                    }
                    Some(_) => continue,
                    None => return,
                },
            }
        }
    }

    /// Publishes progress events and record updates, throttled.
    async fn report_progress(
        self,
        job: JobRecord,
        mut fraction: watch::Receiver<f64>,
        done: CancellationToken,
    ) {
        let started = Instant::now();
        let mut last_event = Instant::now() - PROGRESS_EVERY;
        let mut last_percent = f64::NEG_INFINITY;
        let mut last_record = Instant::now();
        loop {
            tokio::select! {
                _ = done.cancelled() => return,
                changed = fraction.changed() => if changed.is_err() { return },
            }
            let progress = render_progress(*fraction.borrow_and_update(), started.elapsed());
            if last_event.elapsed() >= PROGRESS_EVERY
                && progress.percent - last_percent >= PROGRESS_STEP
            {
                last_event = Instant::now();
                last_percent = progress.percent;
                let _ = self
                    .publish(&job, EventKind::Progress(progress.clone()))
                    .await;
            }
            if last_record.elapsed() >= RECORD_PROGRESS_EVERY {
                last_record = Instant::now();
                let _ = self
                    .topology
                    .jobs
                    .modify(&job.tenant, &job.id, |record| {
                        let running = record.state == JobState::Running;
                        if running {
                            record.progress = Some(progress.clone());
                        }
                        Ok(running)
                    })
                    .await;
            }
        }
    }

    /// Ends the job: COMPLETED or FAILED by compare-and-set, then the
    /// matching event. A job cancelled meanwhile stays cancelled and its
    /// output is removed.
    async fn finish(
        &self,
        job: &JobRecord,
        outcome: Result<JobOutput, RenderError>,
    ) -> Result<(), RenderError> {
        let output = match outcome {
            Ok(output) => output,
            Err(RenderError::Cancelled) => {
                tracing::info!(job = %job.id, "render cancelled");
                return Ok(());
            }
            Err(err @ (RenderError::Nats(_) | RenderError::Store(_))) => return Err(err),
            Err(err) => return self.fail(job, err.to_string()).await,
        };
        if !self
            .end_running(job, |record| record.complete(output.clone()))
            .await?
        {
            // Cancelled while we rendered: the cancel stands, the output goes.
            let key = reelmesh_store::ObjectKey::parse(&output.key)
                .map_err(reelmesh_store::StoreError::from)?;
            self.store.delete(&job.tenant, &key).await?;
            return Ok(());
        }
        self.publish(job, EventKind::Completed { output }).await?;
        tracing::info!(job = %job.id, "render completed");
        Ok(())
    }

    async fn fail(&self, job: &JobRecord, error: String) -> Result<(), RenderError> {
        tracing::warn!(job = %job.id, "render failed: {error}");
        if self
            .end_running(job, |record| record.fail(error.clone()))
            .await?
        {
            self.publish(job, EventKind::Failed { error }).await?;
        }
        Ok(())
    }

    /// Applies `end` by compare-and-set if the job is still RUNNING; true when
    /// this call ended it (and so owns publishing the terminal event).
    async fn end_running<F>(&self, job: &JobRecord, end: F) -> Result<bool, RenderError>
    where
        F: Fn(&mut JobRecord) -> Result<(), reelmesh_nats::record::TransitionError>,
    {
        let mut ended = false;
        self.topology
            .jobs
            .modify(&job.tenant, &job.id, |record| {
                ended = record.state == JobState::Running;
                if ended {
                    end(record)?;
                }
                Ok(ended)
            })
            .await?;
        Ok(ended)
    }

    async fn publish(&self, job: &JobRecord, kind: EventKind) -> Result<u64, RenderError> {
        let event = JobEvent::now(&job.tenant, &job.id, kind);
        Ok(self.topology.events.publish(&event).await?)
    }
}

/// One message, or `None` when none arrived within the poll window.
async fn next_message(consumer: &PullConsumer) -> Option<Message> {
    let mut batch = match consumer
        .batch()
        .max_messages(1)
        .expires(Duration::from_secs(5))
        .messages()
        .await
    {
        Ok(batch) => batch,
        Err(err) => {
            tracing::warn!("work consumer: {err}");
            tokio::time::sleep(Duration::from_secs(1)).await;
            return None;
        }
    };
    match batch.next().await {
        Some(Ok(message)) => Some(message),
        Some(Err(err)) => {
            tracing::warn!("work consumer: {err}");
            None
        }
        None => None,
    }
}

/// Progress of the render stage, with an ETA from the rate so far once a
/// few percent are done (earlier estimates swing too much to be useful).
fn render_progress(fraction: f64, elapsed: Duration) -> Progress {
    let fraction = fraction.clamp(0.0, 1.0);
    let eta_seconds =
        (fraction >= 0.03).then(|| elapsed.as_secs_f64() * (1.0 - fraction) / fraction);
    Progress {
        stage: "render".into(),
        percent: fraction * 100.0,
        eta_seconds,
    }
}

fn summary(info: media::MediaInfo) -> MediaSummary {
    MediaSummary {
        duration_seconds: info.duration_seconds,
        container: info.container,
        video_codec: info.video.as_ref().map(|video| video.codec.clone()),
        width: info.video.as_ref().map(|video| video.width),
        height: info.video.as_ref().map(|video| video.height),
        audio_codec: info.audio.map(|audio| audio.codec),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_follows_the_rate_so_far() {
        let early = render_progress(0.01, Duration::from_secs(1));
        assert_eq!(early.eta_seconds, None);
        let half = render_progress(0.5, Duration::from_secs(4));
        assert_eq!(half.percent, 50.0);
        assert!((half.eta_seconds.expect("eta") - 4.0).abs() < 1e-9);
        assert_eq!(
            render_progress(1.0, Duration::from_secs(4)).eta_seconds,
            Some(0.0)
        );
    }
}
