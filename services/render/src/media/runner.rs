//! The single driver behind every media operation: it owns the pipeline,
//! runs the bus loop, enforces cancellation and the stall watchdog, turns
//! stream positions into monotonic progress and maps GStreamer errors to
//! [`MediaError`] (naming the input file that caused them). On any failure
//! the pipeline is stopped and partial outputs are deleted.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use gst::prelude::*;
use gstreamer as gst;

use crate::media::MediaError;
use crate::media::elements::{add_chain, element, ends, file_source, static_pad};

/// Upper bound on how long cancellation and stalls go unnoticed.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Minimum spacing between two progress callbacks.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(150);
/// Progress stays below this until the output is complete.
const MAX_PROGRESS_BEFORE_DONE: f64 = 0.99;
/// Streams ending this much before the declared end mean a truncated input.
const TRUNCATION_TOLERANCE: gst::ClockTime = gst::ClockTime::from_seconds(1);

/// Shared cancel flag; the caller sets it from another thread/task.
pub type CancelFlag = Arc<AtomicBool>;

/// How the caller steers and observes a blocking operation.
pub struct Control<'a> {
    /// Checked every 50 ms; once set the operation fails with
    /// [`MediaError::Cancelled`] and removes its partial output.
    pub cancel: &'a CancelFlag,
    /// Abort with [`MediaError::Stalled`] if no buffer moves for this long.
    pub stall_timeout: Duration,
    /// Receives non-decreasing fractions in 0..=1, ending with exactly 1.0
    /// on success.
    pub on_progress: &'a mut dyn FnMut(f64),
}

impl<'a> Control<'a> {
    pub fn new(
        cancel: &'a CancelFlag,
        stall_timeout: Duration,
        on_progress: &'a mut dyn FnMut(f64),
    ) -> Self {
        Self {
            cancel,
            stall_timeout,
            on_progress,
        }
    }
}

impl fmt::Debug for Control<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Control")
            .field("cancel", &self.cancel.load(Ordering::Relaxed))
            .field("stall_timeout", &self.stall_timeout)
            .finish_non_exhaustive()
    }
}

/// Initialises GStreamer and its editing services once; cheap to call
/// repeatedly.
///
/// GES registers its effect classes by loading plugins. Doing that while
/// another thread loads a plugin for a pipeline deadlocks inside GLib's
/// type registry (seen with libav), so GES is set up here, before any
/// pipeline can run, rather than on first use.
pub fn init() -> Result<(), MediaError> {
    static INIT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    INIT.get_or_init(|| {
        gst::init().map_err(|e| format!("gstreamer init: {e}"))?;
        prefer_faad();
        gstreamer_editing_services::init().map_err(|e| format!("ges init: {e}"))
    })
    .clone()
    .map_err(MediaError::Pipeline)
}

/// Makes decodebin pick faad over avdec_aac for AAC: faad decodes straight
/// to the 16-bit samples the Opus encoder takes, where avdec_aac's floats
/// need a dithered conversion, and extracting a minute of audio to Opus
/// took 0.48 s instead of 0.55 s (gst-launch, bench corpus).
fn prefer_faad() {
    let avdec_rank = gst::ElementFactory::find("avdec_aac").map(|f| f.rank());
    if let (Some(faad), Some(rank)) = (gst::ElementFactory::find("faad"), avdec_rank) {
        faad.set_rank(rank + 1);
    }
}

/// Runs `job` against a fresh pipeline and cleans up after it: the pipeline
/// is stopped, and on error every registered output is deleted; on success
/// the final progress callback is exactly 1.0.
pub(crate) fn run<T>(
    control: &mut Control<'_>,
    job: impl FnOnce(&mut Session<'_, '_>) -> Result<T, MediaError>,
) -> Result<T, MediaError> {
    init()?;
    let mut session = Session::new(control);
    let result = job(&mut session);
    session.close(result)
}

/// Where a tracked stream has got to, written from streaming threads.
#[derive(Debug, Default)]
struct StreamEnd {
    eos: AtomicBool,
    /// Running time (ns) of the end of the latest buffer seen.
    end_ns: AtomicU64,
}

/// State shared between the bus loop and streaming-thread callbacks.
#[derive(Debug)]
pub(crate) struct Monitor {
    epoch: Instant,
    last_buffer_ms: AtomicU64,
    streams: Mutex<Vec<Arc<StreamEnd>>>,
    /// First error raised from a streaming thread (e.g. a pad-added handler).
    failure: Mutex<Option<MediaError>>,
    failed: AtomicBool,
}

impl Monitor {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_buffer_ms: AtomicU64::new(0),
            streams: Mutex::default(),
            failure: Mutex::default(),
            failed: AtomicBool::new(false),
        }
    }

    pub(crate) fn touch(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_buffer_ms.store(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_buffer_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    /// Any buffer passing `pad` counts as life for the stall detector.
    pub(crate) fn watch(self: &Arc<Self>, pad: &gst::Pad) {
        let monitor = Arc::clone(self);
        pad.add_probe(
            gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
            move |_, _| {
                monitor.touch();
                gst::PadProbeReturn::Ok
            },
        );
    }

    /// Measures progress and completeness of one output stream at `pad`.
    ///
    /// Buffers are measured in running time rather than PTS: after a seek
    /// PTS start at the seek position, running time starts at 0, and after
    /// `concat` running time keeps growing across inputs.
    pub(crate) fn track(self: &Arc<Self>, pad: &gst::Pad) {
        let stream = Arc::new(StreamEnd::default());
        lock(&self.streams).push(Arc::clone(&stream));
        let monitor = Arc::clone(self);
        pad.add_probe(
            gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
            move |pad, info| {
                if let Some(buffer) = info.buffer() {
                    monitor.touch();
                    if let Some(end) = running_end(pad, buffer) {
                        stream.end_ns.fetch_max(end.nseconds(), Ordering::Relaxed);
                    }
                } else if info
                    .event()
                    .is_some_and(|e| e.type_() == gst::EventType::Eos)
                {
                    stream.eos.store(true, Ordering::Relaxed);
                }
                gst::PadProbeReturn::Ok
            },
        );
    }

    /// Records an error raised on a streaming thread; the bus loop returns
    /// it within one poll interval. Only the first error is kept.
    pub(crate) fn fail(&self, error: MediaError) {
        let mut slot = lock(&self.failure);
        if slot.is_none() {
            *slot = Some(error);
        }
        self.failed.store(true, Ordering::Relaxed);
    }

    fn take_failure(&self) -> Option<MediaError> {
        if !self.failed.load(Ordering::Relaxed) {
            return None;
        }
        lock(&self.failure).take()
    }

    /// How far every still-running tracked stream has got; `None` if all
    /// are done or none is tracked.
    fn position(&self) -> Option<gst::ClockTime> {
        lock(&self.streams)
            .iter()
            .filter(|s| !s.eos.load(Ordering::Relaxed))
            .map(|s| gst::ClockTime::from_nseconds(s.end_ns.load(Ordering::Relaxed)))
            .min()
    }

    /// How far the longest tracked stream got.
    pub(crate) fn reached(&self) -> gst::ClockTime {
        lock(&self.streams)
            .iter()
            .map(|s| gst::ClockTime::from_nseconds(s.end_ns.load(Ordering::Relaxed)))
            .max()
            .unwrap_or(gst::ClockTime::ZERO)
    }
}

/// One operation's pipeline plus everything the bus loop needs to judge it.
pub(crate) struct Session<'c, 'a> {
    control: &'c mut Control<'a>,
    pipeline: gst::Pipeline,
    monitor: Arc<Monitor>,
    /// Elements whose errors (or whose children's) mean that file is bad.
    inputs: Vec<(gst::Element, PathBuf)>,
    outputs: Vec<PathBuf>,
    /// Length of the media being produced, when known.
    span: Option<gst::ClockTime>,
    progress: f64,
    last_report: Option<Instant>,
}

impl<'c, 'a> Session<'c, 'a> {
    fn new(control: &'c mut Control<'a>) -> Self {
        Self {
            control,
            pipeline: gst::Pipeline::new(),
            monitor: Arc::new(Monitor::new()),
            inputs: Vec::new(),
            outputs: Vec::new(),
            span: None,
            progress: 0.0,
            last_report: None,
        }
    }

    pub(crate) fn pipeline(&self) -> &gst::Pipeline {
        &self.pipeline
    }

    pub(crate) fn monitor(&self) -> &Arc<Monitor> {
        &self.monitor
    }

    /// Adds `filesrc ! qtdemux` for an MP4 input, reading it counting as
    /// activity, and returns the demuxer.
    pub(crate) fn add_mp4_input(&mut self, input: &Path) -> Result<gst::Element, MediaError> {
        let chain = [file_source(input)?, element("qtdemux")?];
        add_chain(&self.pipeline, &chain)?;
        let (src, demux) = ends(&chain)?;
        self.add_input(input, src);
        self.add_input(input, demux);
        self.monitor.watch(&static_pad(src, "src")?);
        Ok(demux.clone())
    }

    /// Links each new pad of `element` (a demuxer or decodebin) with `link`,
    /// which runs on a streaming thread; an error is recorded on the monitor
    /// so the bus loop reports it like any pipeline error.
    pub(crate) fn on_new_pad<F>(&self, element: &gst::Element, link: F)
    where
        F: Fn(&gst::Pipeline, &gst::Pad) -> Result<(), MediaError> + Send + Sync + 'static,
    {
        let pipeline = self.pipeline.downgrade();
        let monitor = Arc::clone(&self.monitor);
        element.connect_pad_added(move |_, pad| {
            let Some(pipeline) = pipeline.upgrade() else {
                return;
            };
            if let Err(err) = link(&pipeline, pad) {
                monitor.fail(err);
            }
        });
    }

    /// Errors from `element` or anything inside it are blamed on `path`.
    pub(crate) fn add_input(&mut self, path: &Path, element: &gst::Element) {
        self.inputs.push((element.clone(), path.to_path_buf()));
    }

    /// `path` is deleted if the operation fails.
    pub(crate) fn add_output(&mut self, path: &Path) {
        self.outputs.push(path.to_path_buf());
    }

    /// Progress becomes the tracked position divided by `span`.
    pub(crate) fn set_span(&mut self, span: Option<gst::ClockTime>) {
        self.span = span;
    }

    pub(crate) fn set_state(
        &self,
        state: gst::State,
    ) -> Result<gst::StateChangeSuccess, MediaError> {
        self.pipeline
            .set_state(state)
            .map_err(|_| self.pending_error(format!("cannot switch pipeline to {state:?}")))
    }

    /// Brings the pipeline to PAUSED and waits until it has prerolled.
    pub(crate) fn preroll(&mut self) -> Result<(), MediaError> {
        self.monitor.touch();
        if self.set_state(gst::State::Paused)? == gst::StateChangeSuccess::Async {
            self.wait_for(|msg| msg.type_() == gst::MessageType::AsyncDone)?;
        }
        Ok(())
    }

    /// Plays the pipeline until end of stream.
    pub(crate) fn play_to_eos(&mut self) -> Result<(), MediaError> {
        self.monitor.touch();
        self.set_state(gst::State::Playing)?;
        self.wait_for(|msg| msg.type_() == gst::MessageType::Eos)
    }

    /// Pumps the bus until `done` accepts a message, failing on pipeline
    /// errors, cancellation, stalls and errors recorded by callbacks.
    pub(crate) fn wait_for(
        &mut self,
        mut done: impl FnMut(&gst::Message) -> bool,
    ) -> Result<(), MediaError> {
        let bus = self
            .pipeline
            .bus()
            .ok_or_else(|| MediaError::Pipeline("pipeline has no bus".into()))?;
        loop {
            self.check_health()?;
            if let Some(msg) = bus.timed_pop(gst::ClockTime::try_from(POLL_INTERVAL).ok()) {
                if let gst::MessageView::Error(err) = msg.view() {
                    return Err(self.monitor.take_failure().unwrap_or(self.classify(err)));
                }
                log_warning(&msg);
                if done(&msg) {
                    return Ok(());
                }
            }
            self.tick();
        }
    }

    /// Fails if the longest tracked stream stopped well short of `expected`:
    /// demuxers may treat a cut-off file as a normal end of stream.
    pub(crate) fn check_complete(
        &self,
        input: &Path,
        expected: Option<gst::ClockTime>,
    ) -> Result<(), MediaError> {
        let reached = self.monitor.reached();
        match expected {
            Some(span) if reached + TRUNCATION_TOLERANCE < span => Err(MediaError::bad_input(
                input,
                format!(
                    "media ends after {:.2}s instead of {:.2}s; the file looks truncated",
                    reached.seconds_f64(),
                    span.seconds_f64()
                ),
            )),
            _ => Ok(()),
        }
    }

    fn check_health(&self) -> Result<(), MediaError> {
        if self.control.cancel.load(Ordering::Relaxed) {
            return Err(MediaError::Cancelled);
        }
        if let Some(failure) = self.monitor.take_failure() {
            return Err(failure);
        }
        if self.monitor.idle_for() > self.control.stall_timeout {
            return Err(MediaError::Stalled(self.control.stall_timeout));
        }
        Ok(())
    }

    /// A failed state change is usually followed by an error message that
    /// says why; prefer that over a generic complaint.
    fn pending_error(&self, fallback: String) -> MediaError {
        let error = self.pipeline.bus().and_then(|bus| {
            bus.pop_filtered(&[gst::MessageType::Error])
                .and_then(|msg| match msg.view() {
                    gst::MessageView::Error(err) => Some(self.classify(err)),
                    _ => None,
                })
        });
        self.monitor
            .take_failure()
            .or(error)
            .unwrap_or(MediaError::Pipeline(fallback))
    }

    fn classify(&self, err: &gst::message::Error) -> MediaError {
        let src = err.src();
        tracing::debug!(
            src = ?src.map(|s| s.path_string()),
            debug = ?err.debug(),
            "pipeline error: {}",
            err.error()
        );
        let blamed = src.and_then(|s| {
            self.inputs.iter().find(|(element, _)| {
                s == element.upcast_ref::<gst::Object>() || s.has_as_ancestor(element)
            })
        });
        match blamed {
            Some((_, path)) => MediaError::bad_input(path, err.error().to_string()),
            None => MediaError::Pipeline(err.error().to_string()),
        }
    }

    fn tick(&mut self) {
        let Some(span) = self.span.filter(|s| !s.is_zero()) else {
            return;
        };
        let done = self.monitor.position().unwrap_or(span);
        self.publish(done.seconds_f64() / span.seconds_f64());
    }

    fn publish(&mut self, fraction: f64) {
        let throttled = self
            .last_report
            .is_some_and(|t| t.elapsed() < PROGRESS_INTERVAL);
        if throttled {
            return;
        }
        let fraction = fraction.clamp(0.0, MAX_PROGRESS_BEFORE_DONE);
        self.progress = self.progress.max(fraction);
        self.last_report = Some(Instant::now());
        (self.control.on_progress)(self.progress);
    }

    fn close<T>(self, result: Result<T, MediaError>) -> Result<T, MediaError> {
        // Stopping the pipeline closes the outputs before they are deleted.
        if let Err(e) = self.pipeline.set_state(gst::State::Null) {
            tracing::warn!("cannot stop pipeline: {e}");
        }
        match result {
            Ok(value) => {
                (self.control.on_progress)(1.0);
                Ok(value)
            }
            Err(e) => {
                self.outputs.iter().for_each(|p| remove_partial_output(p));
                Err(e)
            }
        }
    }
}

/// Holds data at chosen pads (e.g. demuxer outputs) until a seek has been
/// issued, so nothing from before the requested range reaches encoders or
/// muxers.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    blocked: Mutex<Vec<(gst::Pad, gst::PadProbeId)>>,
}

impl Gate {
    pub(crate) fn block(&self, pad: &gst::Pad) {
        let probe = pad.add_probe(
            gst::PadProbeType::BLOCK | gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
            |_, _| gst::PadProbeReturn::Ok,
        );
        if let Some(id) = probe {
            lock(&self.blocked).push((pad.clone(), id));
        }
    }

    pub(crate) fn open(&self) {
        for (pad, id) in lock(&self.blocked).drain(..) {
            pad.remove_probe(id);
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        // Never leave a streaming thread parked on a pad we own.
        self.open();
    }
}

fn log_warning(msg: &gst::Message) {
    if let gst::MessageView::Warning(w) = msg.view() {
        let src = msg.src().map(|s| s.path_string());
        tracing::warn!(src = ?src, "{}", w.error());
    }
}

pub(crate) fn remove_partial_output(output: &Path) {
    match std::fs::remove_file(output) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(output = %output.display(), "cannot remove partial output: {e}"),
    }
}

fn running_end(pad: &gst::Pad, buffer: &gst::BufferRef) -> Option<gst::ClockTime> {
    let pts = buffer.pts()?;
    let event = pad.sticky_event::<gst::event::Segment>(0)?;
    let segment = event.segment().downcast_ref::<gst::ClockTime>()?;
    let start = segment.to_running_time(pts)?;
    Some(start + buffer.duration().unwrap_or(gst::ClockTime::ZERO))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
