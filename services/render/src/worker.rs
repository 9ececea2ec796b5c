//! The render worker loop: take one job per free slot, start an attempt on
//! its record, render it, store the result and end the job exactly once.
//!
//! Every change to a job is a compare-and-set on its record, and an attempt
//! may only end the job while it is still the record's running attempt. So
//! when a stalled worker's job is handed to another (its work item comes
//! back after the ack wait), whichever finishes second finds the record
//! moved on, deletes what it wrote and ends nothing: one completion, one
//! terminal event. What a failed attempt does next depends on its error:
//! bad input or spec fails the job at once; anything else is retried after
//! an exponential, jittered backoff until the job's attempts run out.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt as _;
use reelmesh_nats::{
    Attempt, EventKind, HeldSlot, JobEvent, JobId, JobOutput, JobRecord, JobState, MediaSummary,
    NatsError, NoAttempt, Pending, Progress, TenantId, Topology, WorkItem, names,
    record::{Versioned, may_still_arrive},
};
use reelmesh_store::{MediaStore, ObjectKey};
use time::OffsetDateTime;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{
    RenderConfig, RenderError,
    engine::{self, Copied, Rendered},
    error::LocalInput,
    input::{InputRef, UrlFetcher, UrlFetcherError},
    intake::{Intake, IntakeBell},
    media::{self, Control},
    plan::{RenderPlan, Work},
};

mod ingest;
mod limit;

/// Progress events are published at most this often, and only when the
/// percentage moved by at least [`PROGRESS_STEP`]: a job's history (which
/// every watcher replays) stays near 100 progress events however long it runs.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
const PROGRESS_STEP: f64 = 1.0;
/// How often progress is written to the job record (GetJob pollers see it).
const RECORD_PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// An ended job's started event is sent again (see
/// [`RenderWorker::confirm_recent_start`]) only for an attempt that began
/// this recently: well inside the duplicate window, so that a copy of one
/// already stored is dropped, whatever the workers' clocks.
const RESEND_START_WITHIN: Duration =
    reelmesh_nats::topology::DUPLICATE_WINDOW.saturating_sub(Duration::from_secs(60));

/// A work item that comes back early (its worker died right after asking
/// for a retry) waits out the rest of the backoff unless it is this close.
const RETRY_SLACK: Duration = Duration::from_millis(50);

/// Flags of a render in progress, set from outside it.
#[derive(Debug)]
struct Running {
    job: JobId,
    /// Set by [`Running::stop`]; the blocking engine polls it.
    stop: Arc<AtomicBool>,
    /// Cancelled by [`Running::stop`]; downloads wait on it.
    stopped: CancellationToken,
    /// The stop is a hand-back by a draining worker, not a cancel.
    hand_back: AtomicBool,
    /// Whether the start is written; progress is reported only after.
    recorded: watch::Sender<bool>,
}

impl Running {
    fn new(job: JobId, recorded: bool) -> Self {
        Running {
            job,
            stop: Arc::default(),
            stopped: CancellationToken::new(),
            hand_back: AtomicBool::new(false),
            recorded: watch::Sender::new(recorded),
        }
    }

    /// Stops the render (the job was cancelled, moved on, or is being
    /// handed back) at whatever stage it is in.
    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.stopped.cancel();
    }
}

/// The renders in progress on this worker, each under a number of its
/// own: one job can be here twice (its work item came back to this worker
/// while the attempt that lost it was still ending), and a cancel must
/// reach both.
#[derive(Debug, Default)]
struct RunningJobs {
    renders: Mutex<HashMap<u64, Arc<Running>>>,
    next: AtomicU64,
}

impl RunningJobs {
    fn renders(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Running>>> {
        self.renders.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a render, until the returned guard is dropped.
    fn track(self: &Arc<Self>, running: Arc<Running>) -> Tracked {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.renders().insert(key, running);
        Tracked {
            jobs: self.clone(),
            key,
        }
    }

    fn stop_job(&self, job: &JobId) {
        for running in self.renders().values().filter(|r| r.job == *job) {
            running.stop();
        }
    }

    /// Stops every render as a hand-back; returns how many there were.
    fn hand_back_all(&self) -> usize {
        let renders = self.renders();
        for running in renders.values() {
            running.hand_back.store(true, Ordering::SeqCst);
            running.stop();
        }
        renders.len()
    }
}

/// A render's place in [`RunningJobs`], given up on drop.
struct Tracked {
    jobs: Arc<RunningJobs>,
    key: u64,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.jobs.renders().remove(&self.key);
    }
}

#[derive(Debug, Clone)]
pub struct RenderWorker {
    topology: Topology,
    store: MediaStore,
    urls: UrlFetcher,
    config: Arc<RenderConfig>,
    running: Arc<RunningJobs>,
    at_limit: Arc<limit::TenantsAtLimit>,
}

/// What to tell JetStream about a work item once we are done with it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Disposal {
    Ack,
    /// Deliver again after this long (a retry's backoff, or at once).
    Nak(Duration),
    /// Neither: the item was (or may have been) delivered again and the
    /// job is another delivery's now. JetStream acks a message, not a
    /// delivery, so an ack or nak here would take the item from under its
    /// new owner.
    Leave,
}

impl RenderWorker {
    pub fn new(
        topology: Topology,
        store: MediaStore,
        config: RenderConfig,
    ) -> Result<Self, UrlFetcherError> {
        Ok(RenderWorker {
            topology,
            store,
            urls: UrlFetcher::new(&config.url_inputs)?,
            config: Arc::new(config),
            running: Arc::default(),
            at_limit: Arc::default(),
        })
    }

    /// Pulls and renders jobs until `shutdown`. Then it drains: no new
    /// work is taken, renders in hand get `drain_grace` to finish, and any
    /// still running after that are stopped and handed back to the queue.
    pub async fn run(&self, mut intake: Intake, shutdown: CancellationToken) {
        let cancels = self.follow_cancels();
        let bell = intake.bell();
        let slots = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        // Every free slot at once: one fetch can fill them all.
        while let Some(permits) = reelmesh_runtime::free_slots(&slots, &shutdown).await {
            let messages = intake.next(&shutdown, permits.len()).await;
            if messages.is_empty() {
                break;
            }
            // Permits beyond the messages taken are dropped: free again.
            for (message, permit) in messages.into_iter().zip(permits) {
                let (worker, bell) = (self.clone(), bell.clone());
                tokio::spawn(async move {
                    worker.handle(message, &bell).await;
                    drop(permit);
                });
            }
        }
        drop(intake);
        self.drain(&slots).await;
        cancels.abort();
    }

    async fn drain(&self, slots: &Semaphore) {
        let all = u32::try_from(self.config.concurrency.max(1)).unwrap_or(u32::MAX);
        let grace = self.config.drain_grace();
        if tokio::time::timeout(grace, slots.acquire_many(all))
            .await
            .is_ok()
        {
            return;
        }
        let jobs = self.running.hand_back_all();
        tracing::warn!(jobs, "drain grace of {grace:?} is over: handing jobs back");
        let _ = slots.acquire_many(all).await;
    }

    /// Stops a render as soon as its job's cancel event goes by. The
    /// record is the authority (the end of a render checks it by
    /// compare-and-set); this only makes a cancel take effect at once.
    fn follow_cancels(&self) -> tokio::task::JoinHandle<()> {
        let (client, running) = (self.topology.client.clone(), self.running.clone());
        tokio::spawn(async move {
            let Ok(mut cancels) = client
                .subscribe(names::kind_events_filter(EventKind::Cancelled.name()))
                .await
            else {
                tracing::warn!("cannot follow cancel events; cancels apply when renders end");
                return;
            };
            while let Some(message) = cancels.next().await {
                let Ok(event) = JobEvent::decode(&message.payload) else {
                    continue;
                };
                running.stop_job(&event.job_id);
            }
        })
    }

    async fn handle(&self, message: Message, bell: &IntakeBell) {
        let item = match WorkItem::decode(&message.payload) {
            Ok(item) => item,
            Err(err) => {
                // Redelivery cannot fix bytes we cannot read.
                tracing::error!("dropping unreadable work item: {err}");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        let disposal = match self.process(&message, &item).await {
            Ok(disposal) => disposal,
            Err(RenderError::UnreadableRecord(why)) => {
                // Dropping the item would strand the job: it stays queued
                // for a worker that can read it, and this one says so, less
                // often each time.
                tracing::error!(job = %item.job_id, "leaving the job queued: {why}");
                let delivered = message.info().map_or(1, |info| info.delivered);
                Disposal::Nak(unreadable_record_wait(delivered))
            }
            Err(RenderError::Nats(NatsError::Corrupt(why))) => {
                // Other bytes this worker cannot read (an ended job's
                // stored ending, say): no redelivery changes them.
                tracing::error!(job = %item.job_id, "dropping the work item: {why}");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
            Err(err) => {
                // NATS failed under us: the record was not updated (a
                // write whose answer was only late counts as done, see
                // `JobRecords::replace`) or its events not all sent. The
                // item comes back; its next start closes an attempt left
                // open and sends what a retry left unsent.
                tracing::warn!("job interrupted, will be redelivered: {err}");
                Disposal::Nak(Duration::from_secs(2))
            }
        };
        let ack = match disposal {
            Disposal::Ack => AckKind::Ack,
            Disposal::Nak(delay) => AckKind::Nak(Some(delay)),
            Disposal::Leave => return,
        };
        if let Err(err) = message.ack_with(ack).await {
            tracing::warn!("could not ack work item: {err}");
        } else if let Disposal::Nak(delay) = disposal {
            // It comes back without a publish: ask for it when it is due.
            bell.ring_after(delay);
        }
    }

    async fn process(&self, message: &Message, item: &WorkItem) -> Result<Disposal, RenderError> {
        let span = tracing::info_span!("job", job = %item.job_id, tenant = %item.tenant);
        async {
            let delivered = message.info().map_or(1, |info| info.delivered);
            let mut started = match self.start(item, delivered).await? {
                Start::Run(started) => *started,
                Start::Later(delay) => return Ok(Disposal::Nak(delay)),
                Start::AtLimit => {
                    tracing::debug!("the tenant is at its limit of running jobs: waiting");
                    return Ok(Disposal::Nak(limit::wait(delivered)));
                }
                Start::Ended | Start::Nothing => return Ok(Disposal::Ack),
            };
            let flags = Arc::new(Running::new(item.job_id.clone(), started.recorded));
            let tracked = self.running.track(flags.clone());
            let number = started.attempt;
            let attempt = self.run_attempt(&mut started, delivered, &flags);
            let outcome = self
                .keep_alive(message, (item, number, &flags), attempt)
                .await;
            drop(tracked);
            let slot = started.slot.take();
            // Still in hand while its end is written, which NATS may slow.
            let finish = self
                .finish(started, outcome, &flags)
                .instrument(tracing::info_span!("finish"));
            let finished = self
                .keep_alive(message, (item, number, &flags), finish)
                .await;
            // After the job's end is recorded and announced, so its events
            // never show more jobs running than the limit.
            if let Some(slot) = slot {
                self.at_limit.release(&self.topology, slot).await;
            }
            Ok(finished.unwrap_or_else(|err| {
                // Not a nak: should this delivery have lost the item to
                // another meanwhile, JetStream would take it from that one
                // too (a nak names the message, not the delivery) and the
                // live attempt would be closed. The item comes back after
                // the ack wait, and its next start sees where the job is.
                tracing::warn!("attempt not ended, left to the ack wait: {err}");
                Disposal::Leave
            }))
        }
        .instrument(span)
        .await
    }

    /// Renders the started job. A start not written yet is written once
    /// the render has run `record_start_after`, while it goes on; if the
    /// job moved on meanwhile (cancelled while queued) the render stops.
    /// Most of a short job's cost is its writes: one that ends sooner gets
    /// its start and end in one compare-and-set instead of two, and both
    /// events in one round trip. Its record never shows it RUNNING; its
    /// events are the same.
    async fn run_attempt(
        &self,
        started: &mut Started,
        delivered: i64,
        flags: &Running,
    ) -> Result<JobOutput, RenderError> {
        let (job, attempt) = (&started.job, started.attempt);
        if started.recorded {
            return self.render(&job.record, attempt, delivered, flags).await;
        }
        let (outcome, recorded) = {
            let render = self.render(&job.record, attempt, delivered, flags);
            tokio::pin!(render);
            tokio::select! {
                outcome = &mut render => return outcome,
                _ = tokio::time::sleep(self.config.record_start_after()) => {}
            }
            tokio::join!(render, self.record_start(job, attempt, flags))
        };
        if let Some((revision, event_ack)) = recorded? {
            started.job.revision = revision;
            started.event_ack = Some(event_ack);
            started.recorded = true;
        }
        outcome
    }

    /// Writes a deferred start: the RUNNING record, by compare-and-set on
    /// the version read when the job was taken, and the started event. `None`
    /// (and the render stopped) when the record moved on since that read.
    async fn record_start(
        &self,
        job: &Versioned,
        attempt: u32,
        flags: &Running,
    ) -> Result<Option<(u64, Pending)>, RenderError> {
        let written = self.topology.jobs.replace(&job.record, job.revision).await;
        let Some(revision) = written.inspect_err(|_| flags.stop())? else {
            tracing::info!("the job moved on before its start was written; stopping");
            flags.stop();
            return Ok(None);
        };
        let event = JobEvent::of(&job.record, EventKind::Started { attempt });
        let sent = self.topology.events.send(&event).await;
        let event_ack = sent.inspect_err(|_| flags.stop())?;
        flags.recorded.send_replace(true);
        Ok(Some((revision, event_ack)))
    }

    /// Begins an attempt on the record. A job that can start as it is
    /// (queued, in this round, no limit on its tenant's running jobs) starts
    /// at once, its start written later if at all (see
    /// [`RenderWorker::run_attempt`]). A job with a limit on its tenant's
    /// running jobs first needs a running slot: the record read says so,
    /// the slot is claimed, and the attempt begins by compare-and-set on
    /// that read (a second read only if the record moved meanwhile). Jobs
    /// without a limit pay nothing for it.
    async fn start(&self, item: &WorkItem, delivered: i64) -> Result<Start, RenderError> {
        let read = self.topology.jobs.get(&item.tenant, &item.job_id).await;
        let read = match read.map_err(unreadable_record)? {
            Some(read) => read,
            // The gateway sends the record and the item at once, and only
            // the stream order is given: the item can be read first.
            None if may_still_arrive(&item.job_id) => {
                return Ok(Start::Later(record_wait(delivered)));
            }
            None => return Ok(Start::Nothing),
        };
        self.confirm_recent_retry(&read.record, item.round).await?;
        let defer = !self.config.record_start_after().is_zero();
        if let Some(started) = Started::deferred(item, &read).filter(|_| defer) {
            tracing::info!(attempt = started.attempt, "render started");
            return Ok(Start::Run(Box::new(started)));
        }
        let (limit, current) = match self.begin(item, delivered, read, false).await? {
            Begun::Start(start) => return Ok(start),
            Begun::NeedsSlot(limit, current) => (limit, current),
        };
        // Still RUNNING: its worker stopped answering, and the slot that
        // worker claimed is the job's to take again.
        let holds_one = current.record.state == JobState::Running;
        let (tenant, job) = (&item.tenant, &item.job_id);
        let claim = self
            .at_limit
            .claim(&self.topology, tenant, job, limit, holds_one);
        let Some(slot) = claim.await? else {
            return Ok(Start::AtLimit);
        };
        match self.begin(item, delivered, *current, true).await {
            Ok(Begun::Start(Start::Run(mut started))) => {
                started.slot = Some(slot);
                Ok(Start::Run(started))
            }
            begun => {
                self.at_limit.release(&self.topology, slot).await;
                match begun? {
                    Begun::Start(start) => Ok(start),
                    Begun::NeedsSlot(..) => Ok(Start::AtLimit),
                }
            }
        }
    }

    /// Begins an attempt on the record by compare-and-set on `read`, the
    /// version just read, or (`has_slot`) the one read before a running
    /// slot was claimed for it. The `started` event is sent but not waited
    /// for: its ack comes in while the job renders, and
    /// [`RenderWorker::finish`] makes sure of it before any later event.
    async fn begin(
        &self,
        item: &WorkItem,
        delivered: i64,
        read: Versioned,
        has_slot: bool,
    ) -> Result<Begun, RenderError> {
        let mut outcome = Start::Nothing;
        // Set when the job has ended (before, or now for want of attempts).
        let mut ended = None;
        let mut needs_slot = None;
        let change = |job: &mut JobRecord| {
            (outcome, ended, needs_slot) = (Start::Nothing, None, None);
            if job.round != item.round {
                return Ok(false);
            }
            if let Some(wait) = early_by(job) {
                outcome = Start::Later(wait);
                return Ok(false);
            }
            if job.running_limit > 0 && !has_slot && !job.state.is_terminal() {
                needs_slot = Some(job.running_limit);
                return Ok(false);
            }
            match job.begin_attempt() {
                Ok(attempt) => outcome = Start::Run(Box::new(Started::at(job, attempt))),
                Err(NoAttempt::Ended) => {
                    ended = Some(job.clone());
                    return Ok(false);
                }
                Err(NoAttempt::Exhausted(error)) => {
                    tracing::warn!("job failed: {error}");
                    ended = Some(job.clone());
                }
            }
            Ok(true)
        };
        let jobs = &self.topology.jobs;
        let modified = match has_slot {
            true => jobs.modify_from(read, change).await,
            false => jobs.modify_read(read, change).await,
        };
        let written = match modified {
            Ok(written) => written,
            Err(NatsError::JobNotFound(_)) if may_still_arrive(&item.job_id) => {
                return Ok(Begun::Start(Start::Later(record_wait(delivered))));
            }
            Err(NatsError::JobNotFound(_)) => return Ok(Begun::Start(Start::Nothing)),
            Err(err) => return Err(err.into()),
        };
        if let Some(limit) = needs_slot {
            return Ok(Begun::NeedsSlot(limit, Box::new(written)));
        }
        if let Some(job) = ended {
            self.confirm_recent_start(&job).await?;
            self.confirm_end(&job).await?;
            return Ok(Begun::Start(Start::Ended));
        }
        if let Start::Run(started) = &mut outcome {
            // What this start wrote: finish compares-and-sets against it.
            started.job.revision = written.revision;
            let event = JobEvent::of(&started.job.record, started.event());
            started.event_ack = Some(self.topology.events.send(&event).await?);
            tracing::info!(attempt = started.attempt, "render started");
        }
        Ok(Begun::Start(outcome))
    }

    /// Tells JetStream every third of the ack wait that the work item is
    /// in hand while `work` (a whole attempt: downloads, render, uploads)
    /// runs; otherwise a download or upload longer than the ack wait would
    /// look like a dead worker and the job would be taken over. Each beat
    /// also checks that the attempt (`item`'s job, attempt number, flags)
    /// is still wanted.
    async fn keep_alive<T>(
        &self,
        message: &Message,
        (item, attempt, flags): (&WorkItem, u32, &Running),
        work: impl Future<Output = T>,
    ) -> T {
        let every = self.config.topology.work_ack_wait / 3;
        let mut beats = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tokio::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return done,
                _ = beats.tick() => {
                    let _ = message.ack_with(AckKind::Progress).await;
                    self.stop_if_unwanted(item, attempt, flags).await;
                }
            }
        }
    }

    /// Stops a render whose job moved on: cancelled, or taken over by
    /// another delivery. The cancel subscription stops one at once, but
    /// misses events sent while this worker's connection was down, and
    /// the record is the authority; without this a long render would run
    /// to its end for nothing.
    async fn stop_if_unwanted(&self, item: &WorkItem, attempt: u32, flags: &Running) {
        let Ok(Some(read)) = self.topology.jobs.get(&item.tenant, &item.job_id).await else {
            return;
        };
        let record = &read.record;
        let recorded = *flags.recorded.borrow();
        let unwanted = record.round != item.round
            || record.state.is_terminal()
            || (recorded && !record.is_running_attempt(attempt));
        if unwanted {
            tracing::info!("the job moved on while it rendered; stopping");
            flags.stop();
        }
    }

    async fn render(
        &self,
        job: &JobRecord,
        attempt: u32,
        delivered: i64,
        flags: &Running,
    ) -> Result<JobOutput, RenderError> {
        let plan = RenderPlan::for_job(&job.id, attempt, delivered, &job.spec)?;
        // Making and removing a directory is most of a noop's cost in the
        // worker (file-system metadata work), so work that touches no files
        // gets none and is pointed at the (untouched) work dir instead.
        let scratch = match plan.work.uses_files() {
            true => Some(
                tempfile::Builder::new()
                    .prefix("reelmesh-render-")
                    .tempdir_in(&self.config.work_dir)?,
            ),
            false => None,
        };
        let scratch_path = scratch
            .as_ref()
            .map_or(self.config.work_dir.as_path(), |dir| dir.path());
        if let Work::Ingest { source, title } = &plan.work {
            return self
                .ingest(job, (source, title), scratch_path, &flags.stopped)
                .instrument(tracing::info_span!("ingest"))
                .await;
        }
        // A stop ends a download at once; an upload under way is let
        // finish, as the end of the attempt then removes what it stored.
        let fetch = self.fetch_inputs(job, &plan, scratch_path);
        let inputs = unless_stopped(&flags.stopped, fetch).await?;
        let (progress_tx, progress_rx) = watch::channel(0.0);
        let reporter = CancellationToken::new();
        let recorded = flags.recorded.subscribe();
        tokio::spawn(self.clone().report_progress(
            job.clone(),
            attempt,
            progress_rx,
            recorded,
            reporter.clone(),
        ));
        let rendered = self
            .run_engine(
                &plan,
                &inputs,
                scratch_path,
                flags.stop.clone(),
                progress_tx,
            )
            .instrument(tracing::info_span!("engine"))
            .await;
        reporter.cancel();
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
        for (index, input) in plan.work.inputs().into_iter().enumerate() {
            let path = scratch.join(format!("input-{index}"));
            self.fetch_input(job, input, &path).await?;
            local.push(LocalInput {
                input: input.clone(),
                path,
            });
        }
        Ok(local)
    }

    async fn fetch_input(
        &self,
        job: &JobRecord,
        input: &InputRef,
        path: &std::path::Path,
    ) -> Result<(), RenderError> {
        match input {
            InputRef::Url(url) => self.urls.download(url, path).await.map(drop),
            InputRef::Asset(key) => {
                match self.store.download_to_file(&job.tenant, key, path).await {
                    Err(reelmesh_store::StoreError::NotFound(_)) => {
                        Err(RenderError::InputNotFound(key.to_string()))
                    }
                    other => other.map(drop).map_err(Into::into),
                }
            }
        }
    }

    /// Uploads what the render produced and describes it.
    async fn store_outputs(
        &self,
        job: &JobRecord,
        plan: &RenderPlan,
        rendered: Rendered,
    ) -> Result<JobOutput, RenderError> {
        self.check_output_size(&rendered)?;
        let Some(first) = rendered.files.first() else {
            return Ok(JobOutput::default());
        };
        let media = tracing::info_span!("probe_result")
            .in_scope(|| media::probe(first))
            .map_err(|err| RenderError::Pipeline(err.to_string()))?;
        let mut keys = Vec::new();
        let mut size_bytes = 0;
        for (index, file) in rendered.files.iter().enumerate() {
            let key = plan.output_key(index)?;
            let size = match self.store.upload_file(&job.tenant, &key, file).await {
                Ok(size) => size,
                Err(err) => {
                    // No job will ever point at the files stored so far.
                    if let Err(left) = self.remove_outputs(&job.tenant, &keys).await {
                        tracing::warn!("cannot remove a part-stored result: {left}");
                    }
                    return Err(err.into());
                }
            };
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
            ..Default::default()
        })
    }

    async fn remove_outputs(&self, tenant: &TenantId, keys: &[String]) -> Result<(), RenderError> {
        for key in keys {
            let key = ObjectKey::parse(key).map_err(reelmesh_store::StoreError::from)?;
            self.store.delete(tenant, &key).await?;
        }
        Ok(())
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

    /// Runs the blocking render on the blocking pool.
    async fn run_engine(
        &self,
        plan: &RenderPlan,
        inputs: &[LocalInput],
        scratch: &std::path::Path,
        stop: Arc<AtomicBool>,
        progress: watch::Sender<f64>,
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
            let mut control = Control::new(&stop, stall_timeout, &mut on_progress);
            engine::execute(&plan, &inputs, &scratch, &mut control)
        });
        engine
            .await
            .unwrap_or_else(|err| Err(RenderError::Pipeline(err.to_string())))
    }

    /// Publishes progress events and record updates, throttled, once the
    /// start is written (none may come before the started event).
    async fn report_progress(
        self,
        job: JobRecord,
        attempt: u32,
        mut fraction: watch::Receiver<f64>,
        mut recorded: watch::Receiver<bool>,
        done: CancellationToken,
    ) {
        tokio::select! {
            _ = done.cancelled() => return,
            written = recorded.wait_for(|yes| *yes) => if written.is_err() { return },
        }
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
                        // Not into a later attempt's record (this one lost
                        // the job and has yet to find out).
                        let ours = record.is_running_attempt(attempt);
                        if ours {
                            record.progress = Some(progress.clone());
                        }
                        Ok(ours)
                    })
                    .await;
            }
        }
    }

    /// Ends the attempt by compare-and-set, if it is still the job's
    /// running attempt: COMPLETED; queued again for a retry; handed back;
    /// or FAILED. Whoever makes the change publishes its event. An attempt
    /// that lost the job removes what it stored.
    async fn finish(
        &self,
        mut started: Started,
        outcome: Result<JobOutput, RenderError>,
        flags: &Running,
    ) -> Result<Disposal, RenderError> {
        let event_ack = started.event_ack.take();
        let (job, attempt) = (&started.job.record, started.attempt);
        let end = match outcome {
            Err(RenderError::Cancelled) if flags.hand_back.load(Ordering::SeqCst) => End::HandBack,
            Err(RenderError::Cancelled) => {
                // Cancelled, or taken over: the record says which.
                tracing::info!("render stopped: the job moved on");
                self.confirm_started(&started, event_ack).await?;
                let current = self.topology.jobs.get(&job.tenant, &job.id).await?;
                return self
                    .lost(job, None, current.as_ref().map(|c| &c.record))
                    .await;
            }
            Err(err @ RenderError::Nats(_)) => return Err(err),
            Err(err) => self.after_failure(job, err),
            Ok(output) => End::Complete(output),
        };
        if !started.recorded {
            return self.finish_unrecorded(started, end).await;
        }
        let mut ended = None;
        // Usually nobody wrote since the start, so no read is needed.
        let changed = self
            .topology
            .jobs
            .modify_from(started.job.clone(), |record| {
                ended = None;
                if !record.is_running_attempt(attempt) {
                    return Ok(false);
                }
                end.apply(record)?;
                ended = Some(record.clone());
                Ok(true)
            });
        // The started event's ack comes in meanwhile; it must be stored
        // before any event that follows it.
        let (current, confirmed) = tokio::join!(changed, self.confirm_started(&started, event_ack));
        let (current, ()) = (current?, confirmed?);
        let Some(record) = ended else {
            return self.lost(job, end.output(), Some(&current.record)).await;
        };
        end.announce(self, &record, attempt).await
    }

    /// Ends an attempt whose start was never written, in one
    /// compare-and-set on the version read when the job was taken: the
    /// start and the end together. Then the started and the ending events
    /// go out back to back (stored in that order) and are waited for
    /// together. Losing the compare-and-set means the job moved on before
    /// this attempt ever showed: its result is removed and nothing of it is
    /// announced.
    async fn finish_unrecorded(&self, started: Started, end: End) -> Result<Disposal, RenderError> {
        let (job, attempt) = (&started.job.record, started.attempt);
        if let End::HandBack = end {
            // Nothing was written: the record is queued as it was.
            tracing::info!(attempt, "handed back to the queue");
            return Ok(Disposal::Nak(Duration::ZERO));
        }
        let mut ended = job.clone();
        end.apply(&mut ended)?;
        let jobs = &self.topology.jobs;
        if jobs.replace(&ended, started.job.revision).await?.is_none() {
            let current = jobs.get(&job.tenant, &job.id).await?;
            return self
                .lost(job, end.output(), current.as_ref().map(|c| &c.record))
                .await;
        }
        let event = JobEvent::of(job, started.event());
        let event_ack = self.topology.events.send(&event).await?;
        let disposal = end.announce(self, &ended, attempt).await;
        // Should the started event have been lost while the ending one was
        // stored, it is sent again and lands after it: out of order, but
        // not missing.
        self.confirm_started(&started, Some(event_ack)).await?;
        disposal
    }

    /// Waits for the ack of the started event sent at the start, sending it
    /// again (its message id makes that safe) if it did not arrive. A start
    /// not written has no event to wait for.
    async fn confirm_started(
        &self,
        started: &Started,
        ack: Option<Pending>,
    ) -> Result<(), RenderError> {
        if !started.recorded && ack.is_none() {
            return Ok(());
        }
        if let Some(ack) = ack
            && ack.durable().await.is_ok()
        {
            return Ok(());
        }
        self.publish(&started.job.record, started.event()).await?;
        Ok(())
    }

    /// A failed attempt's next step: retry after a backoff while attempts
    /// remain and the error might pass, FAILED otherwise.
    fn after_failure(&self, job: &JobRecord, err: RenderError) -> End {
        let error = err.to_string();
        // `job` is the record as this attempt began: it counts this attempt.
        let used = job.attempts_used();
        if err.is_retryable() && used < job.max_attempts {
            let delay = self.config.retry.delay(used);
            End::Retry { error, delay }
        } else if err.is_retryable() {
            End::Fail(format!(
                "gave up after {used} attempts; the last failed with: {error}"
            ))
        } else {
            End::Fail(error)
        }
    }

    /// An attempt that found its job moved on (`current`, as stored now):
    /// its result (`output`) goes, and then what becomes of the work item
    /// depends on where the job is. Ended in this round: its ending is made
    /// sure of, and the item is done. Gone, or in a later round: the item
    /// is spent. Still under way in this round: another delivery of the
    /// item owns it, and the item is left to that delivery.
    async fn lost(
        &self,
        job: &JobRecord,
        output: Option<&JobOutput>,
        current: Option<&JobRecord>,
    ) -> Result<Disposal, RenderError> {
        // Left over at worst: an error here must not become a nak, which
        // would take the item from its new owner.
        if let Err(err) = self.discard(job, output).await {
            tracing::warn!("cannot remove the result of an attempt that lost its job: {err}");
        }
        let Some(current) = current.filter(|current| current.round == job.round) else {
            return Ok(Disposal::Ack);
        };
        if !current.state.is_terminal() {
            return Ok(Disposal::Leave);
        }
        self.confirm_end(current).await?;
        Ok(Disposal::Ack)
    }

    /// Removes the result of an attempt that no longer owns its job.
    async fn discard(
        &self,
        job: &JobRecord,
        output: Option<&JobOutput>,
    ) -> Result<(), RenderError> {
        let Some(output) = output else {
            return Ok(());
        };
        tracing::info!("the job moved on while this attempt ran; removing its result");
        self.remove_outputs(&job.tenant, &output.keys).await
    }

    /// Publishes the terminal event of a job that has ended, unless it is
    /// stored. Whoever ended it publishes that event, but may have failed to
    /// (NATS went away between the two), and without it watchers and
    /// webhooks would wait for ever. The item of a job cancelled while
    /// queued can come up long after the duplicate window.
    async fn confirm_end(&self, job: &JobRecord) -> Result<(), RenderError> {
        let Some(kind) = EventKind::ending(job) else {
            return Ok(());
        };
        let ending = JobEvent::of(job, kind);
        self.topology.events.publish_unless_stored(&ending).await?;
        Ok(())
    }

    /// Publishes the started event of an ended job's last attempt in its
    /// round, if that attempt began within [`RESEND_START_WITHIN`]: a
    /// start and end written together whose ack was lost (see
    /// [`RenderWorker::finish_unrecorded`]) announced neither, and the
    /// ending event must not go out alone. The message id makes this a
    /// no-op for a start already stored; older starts are left alone, as
    /// the duplicate window would no longer catch a second copy.
    async fn confirm_recent_start(&self, job: &JobRecord) -> Result<(), RenderError> {
        if let Some(last) = recent_attempt(job) {
            let attempt = last.number;
            self.publish(job, EventKind::Started { attempt }).await?;
        }
        Ok(())
    }

    /// Publishes the `started` and `retrying` events of a job's last
    /// attempt if it is QUEUED for a retry after it, in this round, and the
    /// attempt began within [`RESEND_START_WITHIN`]. The worker that ended
    /// it may have written the record and failed to send them (NATS
    /// answered too late), and its item is then redelivered; the message
    /// ids make this a no-op for events already stored.
    async fn confirm_recent_retry(&self, job: &JobRecord, round: u32) -> Result<(), RenderError> {
        if job.state != JobState::Queued || job.round != round {
            return Ok(());
        }
        let (Some(last), Some(retry_at)) = (recent_attempt(job), job.retry_at) else {
            return Ok(());
        };
        let (Some(error), false) = (&last.error, last.handed_back) else {
            return Ok(());
        };
        let attempt = last.number;
        let started = JobEvent::of(job, EventKind::Started { attempt });
        let error = error.clone();
        let retrying = JobEvent::of(
            job,
            EventKind::Retrying {
                attempt,
                error,
                retry_at,
            },
        );
        let events = &self.topology.events;
        let (started, retrying) = (events.send(&started).await?, events.send(&retrying).await?);
        started.durable().await?;
        retrying.durable().await?;
        Ok(())
    }

    async fn publish(&self, job: &JobRecord, kind: EventKind) -> Result<u64, RenderError> {
        Ok(self
            .topology
            .events
            .publish(&JobEvent::of(job, kind))
            .await?)
    }
}

/// What [`RenderWorker::start`] found.
#[derive(Debug)]
enum Start {
    /// Render it.
    Run(Box<Started>),
    /// Not yet, for this long: a retry's backoff is not over, or the
    /// record is not stored yet.
    Later(Duration),
    /// Not yet: the tenant has as many jobs running as its limit allows.
    AtLimit,
    /// The job has ended in this round (finished or cancelled before, or
    /// FAILED just now for want of attempts); its terminal event is out.
    Ended,
    /// Nothing to do: the job is gone, or the item is a stale round's.
    Nothing,
}

/// What [`RenderWorker::begin`] found: a [`Start`], or that the job needs
/// a running slot first (its limit, and the record as read).
#[derive(Debug)]
enum Begun {
    Start(Start),
    NeedsSlot(u32, Box<Versioned>),
}

/// An attempt this worker began.
#[derive(Debug)]
struct Started {
    /// The record as the start wrote it (now RUNNING), at its revision.
    job: Versioned,
    attempt: u32,
    /// The ack of the started event, until it is waited for.
    event_ack: Option<Pending>,
    /// The running slot claimed for it, when its tenant has a limit.
    slot: Option<HeldSlot>,
    /// Whether `job` is stored and the started event sent. Until then `job`
    /// is the record as the start would write it, over the revision read.
    recorded: bool,
}

impl Started {
    fn new(job: Versioned, attempt: u32, recorded: bool) -> Self {
        Started {
            job,
            attempt,
            event_ack: None,
            slot: None,
            recorded,
        }
    }

    fn at(job: &JobRecord, attempt: u32) -> Self {
        let record = job.clone();
        Started::new(
            Versioned {
                record,
                revision: 0,
            },
            attempt,
            true,
        )
    }

    /// A start that needs no write yet: the job, as `read`, is queued in
    /// this round and due, its tenant has no running limit, and it has an
    /// attempt left. Anything else goes through [`RenderWorker::begin`].
    fn deferred(item: &WorkItem, read: &Versioned) -> Option<Self> {
        let job = &read.record;
        let plain = job.state == JobState::Queued
            && job.round == item.round
            && job.running_limit == 0
            && early_by(job).is_none();
        if !plain {
            return None;
        }
        let mut record = job.clone();
        let attempt = record.begin_attempt().ok()?;
        let revision = read.revision;
        Some(Started::new(Versioned { record, revision }, attempt, false))
    }

    fn event(&self) -> EventKind {
        EventKind::Started {
            attempt: self.attempt,
        }
    }
}

/// `work` (a download), ended at once by a stop: CANCELLED.
async fn unless_stopped<T>(
    stopped: &CancellationToken,
    work: impl Future<Output = Result<T, RenderError>>,
) -> Result<T, RenderError> {
    tokio::select! {
        done = work => done,
        _ = stopped.cancelled() => Err(RenderError::Cancelled),
    }
}

/// How a job's running attempt ends.
#[derive(Debug)]
enum End {
    Complete(JobOutput),
    Retry { error: String, delay: Duration },
    HandBack,
    Fail(String),
}

impl End {
    fn output(&self) -> Option<&JobOutput> {
        match self {
            End::Complete(output) => Some(output),
            _ => None,
        }
    }

    fn apply(&self, record: &mut JobRecord) -> Result<(), NatsError> {
        let changed = match self {
            End::Complete(output) => record.complete(output.clone()),
            End::Retry { error, delay } => {
                record.retry_at(error.clone(), OffsetDateTime::now_utc() + *delay)
            }
            End::HandBack => record.hand_back(),
            End::Fail(error) => record.fail(error.clone()),
        };
        changed.map_err(|err| NatsError::Corrupt(err.to_string()))
    }

    /// Publishes what happened and says what to do with the work item.
    async fn announce(
        &self,
        worker: &RenderWorker,
        record: &JobRecord,
        attempt: u32,
    ) -> Result<Disposal, RenderError> {
        match self {
            End::Complete(output) => {
                let output = output.clone();
                worker
                    .publish(record, EventKind::Completed { output })
                    .await?;
                tracing::info!(attempt, "render completed");
                Ok(Disposal::Ack)
            }
            End::Retry { error, delay } => {
                let retry_at = record.retry_at.unwrap_or_else(OffsetDateTime::now_utc);
                let kind = EventKind::Retrying {
                    attempt,
                    error: error.clone(),
                    retry_at,
                };
                worker.publish(record, kind).await?;
                tracing::warn!(attempt, "attempt failed, retrying in {delay:?}: {error}");
                Ok(Disposal::Nak(*delay))
            }
            End::HandBack => {
                tracing::info!(attempt, "handed back to the queue");
                Ok(Disposal::Nak(Duration::ZERO))
            }
            End::Fail(error) => {
                let error = error.clone();
                tracing::warn!(attempt, "render failed: {error}");
                worker.publish(record, EventKind::Failed { error }).await?;
                Ok(Disposal::Ack)
            }
        }
    }
}

/// How long a queued job's retry backoff still has to run, if it is not
/// (nearly) over.
fn early_by(job: &JobRecord) -> Option<Duration> {
    if job.state != JobState::Queued {
        return None;
    }
    let left = Duration::try_from(job.retry_at? - OffsetDateTime::now_utc()).ok()?;
    (left > RETRY_SLACK).then_some(left)
}

/// The last attempt of `job`'s round, if it began within
/// [`RESEND_START_WITHIN`]: recent enough that its events can be sent again
/// safely (their message ids drop copies already stored).
fn recent_attempt(job: &JobRecord) -> Option<&Attempt> {
    let last = job.attempts.last().filter(|a| a.round == job.round)?;
    (OffsetDateTime::now_utc() - last.started_at < RESEND_START_WITHIN).then_some(last)
}

/// How long to wait for a record not stored yet: 10 ms, doubling with each
/// delivery up to about 5 s.
fn record_wait(delivered: i64) -> Duration {
    let doublings = u32::try_from(delivered.saturating_sub(1))
        .unwrap_or(0)
        .min(9);
    Duration::from_millis(10 << doublings)
}

/// A record that does not decode is told apart from NATS failing: the
/// first waits for another release's worker, the second for NATS.
fn unreadable_record(err: NatsError) -> RenderError {
    match err {
        NatsError::Corrupt(why) => RenderError::UnreadableRecord(why),
        err => RenderError::Nats(err),
    }
}

/// How long a job whose record this worker cannot read waits before it is
/// offered again: 1 s, doubling with each delivery up to 64 s, so a worker
/// of the release that wrote it soon gets it and the log is not flooded.
fn unreadable_record_wait(delivered: i64) -> Duration {
    let doublings = u32::try_from(delivered.saturating_sub(1))
        .unwrap_or(0)
        .min(6);
    Duration::from_secs(1 << doublings)
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
    fn a_cancel_reaches_every_render_of_its_job_and_each_leaves_alone() {
        let jobs = Arc::new(RunningJobs::default());
        let (job, other) = (JobId::new(), JobId::new());
        let running = || Arc::new(Running::new(job.clone(), true));
        let (first, second) = (running(), running());
        let bystander = Arc::new(Running::new(other, true));
        let tracked = [
            jobs.track(first.clone()),
            jobs.track(second.clone()),
            jobs.track(bystander.clone()),
        ];
        jobs.stop_job(&job);
        for stopped in [&first, &second] {
            assert!(stopped.stop.load(Ordering::SeqCst));
            assert!(stopped.stopped.is_cancelled());
        }
        assert!(!bystander.stop.load(Ordering::SeqCst));
        let [first_place, rest @ ..] = tracked;
        drop(first_place);
        assert_eq!(jobs.renders().len(), 2, "the second render is still there");
        assert_eq!(jobs.hand_back_all(), 2);
        assert!(bystander.hand_back.load(Ordering::SeqCst));
        drop(rest);
        assert!(jobs.renders().is_empty());
    }

    #[test]
    fn a_missing_or_unreadable_record_is_waited_for_with_a_growing_pause() {
        assert_eq!(record_wait(1), Duration::from_millis(10));
        assert_eq!(record_wait(2), Duration::from_millis(20));
        assert_eq!(record_wait(1000), Duration::from_millis(5120));
        assert_eq!(unreadable_record_wait(1), Duration::from_secs(1));
        assert_eq!(unreadable_record_wait(3), Duration::from_secs(4));
        assert_eq!(unreadable_record_wait(1000), Duration::from_secs(64));
        assert!(may_still_arrive(&JobId::new()));
    }

    #[test]
    fn only_a_plainly_startable_job_starts_without_a_write() {
        let tenant = reelmesh_nats::TenantId::parse("acme").expect("tenant");
        let queued = JobRecord::new(tenant, Default::default());
        let item = WorkItem {
            tenant: queued.tenant.clone(),
            job_id: queued.id.clone(),
            round: 0,
        };
        let read = |record: &JobRecord| Versioned {
            record: record.clone(),
            revision: 7,
        };
        let started = Started::deferred(&item, &read(&queued)).expect("startable");
        assert!(!started.recorded);
        assert_eq!((started.attempt, started.job.revision), (1, 7));
        assert_eq!(started.job.record.state, JobState::Running);

        let mut limited = queued.clone();
        limited.running_limit = 2;
        let mut running = queued.clone();
        running.begin_attempt().expect("attempt");
        let mut spent = queued.clone();
        spent.max_attempts = 0;
        let mut later = queued.clone();
        later.retry_at = Some(OffsetDateTime::now_utc() + Duration::from_secs(60));
        let other_round = WorkItem {
            round: 1,
            ..item.clone()
        };
        assert!(Started::deferred(&item, &read(&limited)).is_none());
        assert!(Started::deferred(&item, &read(&running)).is_none());
        assert!(Started::deferred(&item, &read(&spent)).is_none());
        assert!(Started::deferred(&item, &read(&later)).is_none());
        assert!(Started::deferred(&other_round, &read(&queued)).is_none());
    }

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
