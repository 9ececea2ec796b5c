//! Blocking transcode of any input GStreamer can decode into H.264 + AAC in a
//! fast-start MP4, optionally trimmed to a time range with a frame-accurate
//! seek. The caller gets progress callbacks, can cancel from another thread,
//! and is protected from wedged pipelines by a stall timeout.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gstreamer as gst;

use crate::media::MediaError;

/// Upper bound on how long cancellation and stalls go unnoticed.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Minimum spacing between two progress callbacks.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(150);
/// How much encoded media may pile up in front of the muxer, per stream.
const MUX_QUEUE_TIME: gst::ClockTime = gst::ClockTime::from_seconds(60);
/// Streams ending this much before the declared end mean a truncated input.
const TRUNCATION_TOLERANCE: gst::ClockTime = gst::ClockTime::from_seconds(1);
/// Progress stays below this until the muxer has finalised the file.
const MAX_PROGRESS_BEFORE_DONE: f64 = 0.99;

/// What to transcode and where to write it.
#[derive(Debug)]
pub struct TranscodeRequest<'a> {
    pub input: &'a Path,
    pub output: &'a Path,
    /// Trim start/end in seconds; `None` keeps the whole input.
    pub range: Option<(f64, f64)>,
}

/// Shared cancel flag; the caller sets it from another thread/task.
pub type CancelFlag = Arc<AtomicBool>;

/// Initialises GStreamer; cheap to call repeatedly.
pub fn init() -> Result<(), MediaError> {
    gst::init().map_err(|e| MediaError::Pipeline(format!("gstreamer init: {e}")))
}

/// Blocking: decodes `req.input`, trims it to `req.range` (frame accurate
/// via an ACCURATE seek), encodes H.264 (x264enc, default settings) + AAC
/// (avenc_aac) and writes a fast-start MP4 to `req.output`.
///
/// Calls `on_progress` with non-decreasing fractions roughly every 150-200 ms,
/// and with exactly 1.0 once the file is complete. `cancel` is checked every
/// 50 ms; on cancel (and on any other error) the partial output is deleted.
/// If no buffer flows anywhere in the pipeline for `stall_timeout`, the job
/// is aborted with [`MediaError::Stalled`].
pub fn transcode_mp4(
    req: &TranscodeRequest,
    cancel: &CancelFlag,
    stall_timeout: Duration,
    on_progress: &mut dyn FnMut(f64),
) -> Result<(), MediaError> {
    init()?;
    validate_range(req)?;
    let watch = Watch {
        cancel,
        stall_timeout,
    };
    let job = Job::build(req)?;
    let result = job.run(&watch, on_progress);
    // Stopping the pipeline closes the output before it is deleted.
    drop(job);
    if result.is_err() {
        remove_partial_output(req.output);
    }
    result
}

/// Creates an element with default properties.
pub(crate) fn element(factory: &str) -> Result<gst::Element, MediaError> {
    make(gst::ElementFactory::make(factory))
}

/// Builds an element, turning a missing plugin into a readable error.
pub(crate) fn make(
    builder: gst::element_factory::ElementBuilder<'_>,
) -> Result<gst::Element, MediaError> {
    builder
        .build()
        .map_err(|e| MediaError::Pipeline(e.to_string()))
}

/// Queue placed directly in front of a muxer input.
///
/// A muxer interleaves by timestamp, so it holds one stream back while it
/// waits for the other. x264enc emits nothing until its lookahead is full
/// (40+ frames at the default preset: seconds of media at low frame rates),
/// and inputs are not always tightly interleaved. Meanwhile audio keeps
/// coming; once a 1 s default queue is full the demuxer's single streaming
/// thread blocks on it, video starves and nothing moves again (reproduced
/// with qtdemux ! queue ! ... and one default queue on the audio branch).
/// decodebin's multiqueue happens to grow and hide this today, but that is
/// an implementation detail. Queuing encoded data costs little memory, so
/// the limit is by time only, and generous.
pub(crate) fn mux_queue() -> Result<gst::Element, MediaError> {
    make(
        gst::ElementFactory::make("queue")
            .property("max-size-buffers", 0u32)
            .property("max-size-bytes", 0u32)
            .property("max-size-time", MUX_QUEUE_TIME.nseconds()),
    )
}

/// Links the last element of `chain` to a new `template` pad of `mux`.
///
/// Pads are requested by template explicitly: a queue has ANY caps, so
/// automatic linking could hand an audio chain a video pad.
pub(crate) fn link_to_mux(
    chain: &[gst::Element],
    mux: &gst::Element,
    template: &str,
) -> Result<(), MediaError> {
    let (_, last) = ends(chain)?;
    let mux_pad = mux
        .request_pad_simple(template)
        .ok_or_else(|| MediaError::Pipeline(format!("{} has no {template} pad", mux.name())))?;
    static_pad(last, "src")?
        .link(&mux_pad)
        .map_err(pipeline_error)?;
    Ok(())
}

fn validate_range(req: &TranscodeRequest) -> Result<(), MediaError> {
    match req.range {
        Some((start, end)) if !(start >= 0.0 && end > start && end.is_finite()) => Err(
            MediaError::bad_input(req.input, format!("invalid trim range {start}..{end}")),
        ),
        _ => Ok(()),
    }
}

fn remove_partial_output(output: &Path) {
    match std::fs::remove_file(output) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(output = %output.display(), "cannot remove partial output: {e}"),
    }
}

/// mp4mux ! filesink writing to `output`.
fn output_elements(output: &Path) -> Result<(gst::Element, gst::Element), MediaError> {
    let location = output.to_str().ok_or_else(|| {
        MediaError::Pipeline(format!("output {} is not valid UTF-8", output.display()))
    })?;
    let mux = make(gst::ElementFactory::make("mp4mux").property("faststart", true))?;
    // async=false: the sink cannot preroll while decodebin's pads are held
    // back for the seek, so only decodebin's own readiness gates PAUSED.
    let filesink = make(
        gst::ElementFactory::make("filesink")
            .property("location", location)
            .property("async", false),
    )?;
    Ok((mux, filesink))
}

/// Cancellation and stall limits that every wait honours.
struct Watch<'a> {
    cancel: &'a CancelFlag,
    stall_timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Video,
    Audio,
}

impl Kind {
    fn of(pad: &gst::Pad) -> Option<Self> {
        let caps = pad.current_caps()?;
        let name = caps.structure(0)?.name();
        if name.starts_with("video/") {
            Some(Self::Video)
        } else if name.starts_with("audio/") {
            Some(Self::Audio)
        } else {
            None
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn mux_pad_template(self) -> &'static str {
        match self {
            Self::Video => "video_%u",
            Self::Audio => "audio_%u",
        }
    }

    fn elements(self) -> Result<Vec<gst::Element>, MediaError> {
        match self {
            Self::Video => Ok(vec![
                // Decouples decoding from encoding so both run in parallel.
                element("queue")?,
                element("videoconvert")?,
                // 8-bit 4:2:0 is the only H.264 flavour browsers reliably play;
                // without this x264enc would happily emit High 4:4:4 or 10-bit.
                make(
                    gst::ElementFactory::make("capsfilter").property(
                        "caps",
                        gst::Caps::builder("video/x-raw")
                            .field("format", "I420")
                            .build(),
                    ),
                )?,
                element("x264enc")?,
                mux_queue()?,
            ]),
            Self::Audio => Ok(vec![
                element("audioconvert")?,
                element("audioresample")?,
                element("avenc_aac")?,
                mux_queue()?,
            ]),
        }
    }
}

/// Per-stream bookkeeping, written from streaming threads.
#[derive(Default)]
struct StreamState {
    linked: AtomicBool,
    eos: AtomicBool,
    /// Running time (ns) of the end of the latest buffer handed to the muxer.
    end_ns: AtomicU64,
}

/// State shared between the bus loop and the streaming threads.
struct Shared {
    epoch: Instant,
    last_buffer_ms: AtomicU64,
    streams: [StreamState; 2],
    blocked: Mutex<Vec<(gst::Pad, gst::PadProbeId)>>,
}

impl Shared {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_buffer_ms: AtomicU64::new(0),
            streams: Default::default(),
            blocked: Mutex::default(),
        }
    }

    fn stream(&self, kind: Kind) -> &StreamState {
        &self.streams[kind.index()]
    }

    fn touch(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_buffer_ms.store(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_buffer_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    fn linked(&self) -> impl Iterator<Item = &StreamState> {
        self.streams
            .iter()
            .filter(|s| s.linked.load(Ordering::Relaxed))
    }

    /// How far every still-running stream has got; `None` if all are done.
    fn position(&self) -> Option<gst::ClockTime> {
        self.linked()
            .filter(|s| !s.eos.load(Ordering::Relaxed))
            .map(|s| gst::ClockTime::from_nseconds(s.end_ns.load(Ordering::Relaxed)))
            .min()
    }

    /// How far the longest stream got.
    fn reached(&self) -> gst::ClockTime {
        self.linked()
            .map(|s| gst::ClockTime::from_nseconds(s.end_ns.load(Ordering::Relaxed)))
            .max()
            .unwrap_or(gst::ClockTime::ZERO)
    }

    fn block(&self, pad: &gst::Pad) {
        // Holds decoded data at the decodebin boundary until the trim seek is
        // done, so nothing from before the range reaches encoders or muxer.
        let probe = pad.add_probe(
            gst::PadProbeType::BLOCK | gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
            |_, _| gst::PadProbeReturn::Ok,
        );
        if let Some(id) = probe {
            self.lock_blocked().push((pad.clone(), id));
        }
    }

    fn unblock_all(&self) {
        for (pad, id) in self.lock_blocked().drain(..) {
            pad.remove_probe(id);
        }
    }

    fn lock_blocked(&self) -> std::sync::MutexGuard<'_, Vec<(gst::Pad, gst::PadProbeId)>> {
        self.blocked.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One transcode pipeline: filesrc ! decodebin, with per-stream encoder
/// branches linked on demand into mp4mux ! filesink.
struct Job<'a> {
    req: &'a TranscodeRequest<'a>,
    pipeline: gst::Pipeline,
    filesrc: gst::Element,
    decodebin: gst::Element,
    shared: Arc<Shared>,
}

impl<'a> Job<'a> {
    fn build(req: &'a TranscodeRequest<'a>) -> Result<Self, MediaError> {
        let input = req
            .input
            .to_str()
            .ok_or_else(|| MediaError::bad_input(req.input, "path is not valid UTF-8"))?;
        let pipeline = gst::Pipeline::new();
        let filesrc = make(gst::ElementFactory::make("filesrc").property("location", input))?;
        let decodebin = element("decodebin")?;
        let (mux, filesink) = output_elements(req.output)?;
        let all = [&filesrc, &decodebin, &mux, &filesink];
        pipeline.add_many(all).map_err(pipeline_error)?;
        filesrc.link(&decodebin).map_err(pipeline_error)?;
        mux.link(&filesink).map_err(pipeline_error)?;

        let shared = Arc::new(Shared::new());
        // Reading input and writing output count as activity too, so neither
        // a slow preroll nor mp4mux's fast-start rewrite at the end (which
        // copies the whole file) is mistaken for a stall.
        watch_activity(&static_pad(&filesrc, "src")?, &shared);
        watch_activity(&static_pad(&filesink, "sink")?, &shared);
        let linker = Linker {
            pipeline: pipeline.downgrade(),
            mux: mux.downgrade(),
            shared: Arc::clone(&shared),
        };
        decodebin.connect_pad_added(move |_, pad| linker.on_pad_added(pad));
        Ok(Self {
            req,
            pipeline,
            filesrc,
            decodebin,
            shared,
        })
    }

    fn run(&self, watch: &Watch, on_progress: &mut dyn FnMut(f64)) -> Result<(), MediaError> {
        self.shared.touch();
        if self.set_state(gst::State::Paused)? == gst::StateChangeSuccess::Async {
            self.wait_for(gst::MessageType::AsyncDone, watch, &mut || {})?;
        }
        if self.shared.linked().next().is_none() {
            return Err(self.bad_input("no audio or video stream"));
        }
        let duration = self.duration();
        let span = self.span(duration)?;
        if let Some((start, end)) = self.req.range {
            self.seek(start, end)?;
        }
        self.shared.unblock_all();
        self.shared.touch();
        self.set_state(gst::State::Playing)?;

        let mut progress = Progress::new(on_progress, span);
        self.wait_for(gst::MessageType::Eos, watch, &mut || {
            progress.tick(&self.shared)
        })?;
        // Without a declared duration there is nothing to compare against.
        self.check_complete(duration.and(span))?;
        progress.finish();
        Ok(())
    }

    fn set_state(&self, state: gst::State) -> Result<gst::StateChangeSuccess, MediaError> {
        match self.pipeline.set_state(state) {
            Ok(success) => Ok(success),
            Err(_) => Err(self.pending_error().unwrap_or_else(|| {
                MediaError::Pipeline(format!("cannot switch pipeline to {state:?}"))
            })),
        }
    }

    /// The error message explaining a failed state change, if one was posted.
    fn pending_error(&self) -> Option<MediaError> {
        let bus = self.pipeline.bus()?;
        let msg = bus.pop_filtered(&[gst::MessageType::Error])?;
        match msg.view() {
            gst::MessageView::Error(err) => Some(self.classify(err)),
            _ => None,
        }
    }

    /// Pumps the bus until `target` arrives, honouring cancel and stall limits.
    fn wait_for(
        &self,
        target: gst::MessageType,
        watch: &Watch,
        on_tick: &mut dyn FnMut(),
    ) -> Result<(), MediaError> {
        let bus = self
            .pipeline
            .bus()
            .ok_or_else(|| MediaError::Pipeline("pipeline has no bus".into()))?;
        loop {
            if watch.cancel.load(Ordering::Relaxed) {
                return Err(MediaError::Cancelled);
            }
            if self.shared.idle_for() > watch.stall_timeout {
                return Err(MediaError::Stalled(watch.stall_timeout));
            }
            if let Some(msg) = bus.timed_pop(gst::ClockTime::try_from(POLL_INTERVAL).ok()) {
                match msg.view() {
                    gst::MessageView::Error(err) => return Err(self.classify(err)),
                    gst::MessageView::Warning(w) => {
                        let src = msg.src().map(|s| s.path_string());
                        tracing::warn!(src = ?src, "{}", w.error());
                    }
                    _ if msg.type_() == target => return Ok(()),
                    _ => {}
                }
            }
            on_tick();
        }
    }

    /// Errors raised by the source or anything inside decodebin (typefind,
    /// demuxer, parser, decoder) mean the input is bad; the rest are ours.
    fn classify(&self, err: &gst::message::Error) -> MediaError {
        let src = err.src();
        tracing::debug!(
            src = ?src.map(|s| s.path_string()),
            debug = ?err.debug(),
            "pipeline error: {}",
            err.error()
        );
        let from_input = src.is_some_and(|s| {
            s == self.filesrc.upcast_ref::<gst::Object>()
                || s == self.decodebin.upcast_ref::<gst::Object>()
                || s.has_as_ancestor(&self.decodebin)
        });
        if from_input {
            self.bad_input(err.error().to_string())
        } else {
            MediaError::Pipeline(err.error().to_string())
        }
    }

    fn bad_input(&self, reason: impl Into<String>) -> MediaError {
        MediaError::bad_input(self.req.input, reason)
    }

    fn duration(&self) -> Option<gst::ClockTime> {
        // decodebin has no sink element, so a bin-level query would end up
        // asking filesrc (bytes only); the ghost pads reach the demuxer.
        self.decodebin
            .src_pads()
            .iter()
            .find_map(|pad| pad.query_duration::<gst::ClockTime>())
    }

    /// Length of the media that will be written, when the input declares it.
    fn span(&self, duration: Option<gst::ClockTime>) -> Result<Option<gst::ClockTime>, MediaError> {
        let Some((start, end)) = self.req.range else {
            return Ok(duration);
        };
        let start = gst::ClockTime::from_seconds_f64(start);
        let end = gst::ClockTime::from_seconds_f64(end);
        match duration {
            Some(d) if start >= d => Err(self.bad_input(format!(
                "trim start {:.2}s is past the end of the input ({:.2}s)",
                start.seconds_f64(),
                d.seconds_f64()
            ))),
            Some(d) => Ok(Some(end.min(d) - start)),
            None => Ok(Some(end - start)),
        }
    }

    fn seek(&self, start: f64, end: f64) -> Result<(), MediaError> {
        // ACCURATE makes the demuxer start at the keyframe before `start` and
        // the decoders drop everything before it, so the cut is frame exact.
        // The flush restarts running time at 0 for `start`, and mp4mux
        // timestamps by running time, so the output starts at 0 unshifted.
        let seek = gst::event::Seek::new(
            1.0,
            gst::SeekFlags::FLUSH | gst::SeekFlags::ACCURATE,
            gst::SeekType::Set,
            gst::ClockTime::from_seconds_f64(start),
            gst::SeekType::Set,
            gst::ClockTime::from_seconds_f64(end),
        );
        // Seeking the pipeline would route the event through mp4mux, whose
        // aggregator base applies a TIME seek to its BYTES output segment and
        // logs a GStreamer-CRITICAL. Entering at decodebin reaches the
        // demuxer directly; one pad is enough as it seeks all its streams.
        let seeked = self
            .decodebin
            .src_pads()
            .first()
            .is_some_and(|pad| pad.send_event(seek));
        if seeked {
            Ok(())
        } else {
            Err(self.bad_input("input is not seekable"))
        }
    }

    /// Demuxers may treat a cut-off file as a normal end of stream (qtdemux
    /// does when the index survived), so compare against the expected span.
    fn check_complete(&self, span: Option<gst::ClockTime>) -> Result<(), MediaError> {
        let reached = self.shared.reached();
        match span {
            Some(span) if reached + TRUNCATION_TOLERANCE < span => Err(self.bad_input(format!(
                "media ends after {:.2}s instead of {:.2}s; the file looks truncated",
                reached.seconds_f64(),
                span.seconds_f64()
            ))),
            _ => Ok(()),
        }
    }
}

impl Drop for Job<'_> {
    fn drop(&mut self) {
        self.shared.unblock_all();
        if let Err(e) = self.pipeline.set_state(gst::State::Null) {
            tracing::warn!("cannot stop pipeline: {e}");
        }
    }
}

/// Links decodebin's pads as they appear. Holds weak references because
/// decodebin owns this handler and the pipeline owns decodebin.
struct Linker {
    pipeline: glib::WeakRef<gst::Pipeline>,
    mux: glib::WeakRef<gst::Element>,
    shared: Arc<Shared>,
}

impl Linker {
    fn on_pad_added(&self, pad: &gst::Pad) {
        let Some(pipeline) = self.pipeline.upgrade() else {
            return;
        };
        if let Err(e) = self.link(&pipeline, pad) {
            let msg = gst::message::Error::builder(gst::CoreError::Failed, &e.to_string())
                .src(&pipeline)
                .build();
            let _ = pipeline.post_message(msg);
        }
    }

    fn link(&self, pipeline: &gst::Pipeline, pad: &gst::Pad) -> Result<(), MediaError> {
        // Only the first video and first audio stream are transcoded.
        let wanted =
            Kind::of(pad).filter(|k| !self.shared.stream(*k).linked.swap(true, Ordering::SeqCst));
        let Some(kind) = wanted else {
            return discard(pipeline, pad);
        };
        let mux = self
            .mux
            .upgrade()
            .ok_or_else(|| MediaError::Pipeline("muxer is gone".into()))?;
        let branch = add_branch(pipeline, kind, &mux)?;
        let (first, last) = ends(&branch)?;
        self.watch_mux_input(kind, &static_pad(last, "src")?);
        watch_activity(pad, &self.shared);
        self.shared.block(pad);
        pad.link(&static_pad(first, "sink")?)
            .map_err(pipeline_error)?;
        Ok(())
    }

    /// Tracks how far each encoded stream got, for progress and truncation.
    ///
    /// Buffers are measured in running time rather than PTS: after a trim
    /// seek PTS start at the range start, running time starts at 0.
    fn watch_mux_input(&self, kind: Kind, pad: &gst::Pad) {
        let shared = Arc::clone(&self.shared);
        pad.add_probe(
            gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
            move |pad, info| {
                let state = shared.stream(kind);
                if let Some(buffer) = info.buffer() {
                    shared.touch();
                    if let Some(end) = running_end(pad, buffer) {
                        state.end_ns.fetch_max(end.nseconds(), Ordering::Relaxed);
                    }
                } else if info
                    .event()
                    .is_some_and(|e| e.type_() == gst::EventType::Eos)
                {
                    state.eos.store(true, Ordering::Relaxed);
                }
                gst::PadProbeReturn::Ok
            },
        );
    }
}

/// Adds the encoder branch for `kind` to the pipeline, feeding `mux`.
fn add_branch(
    pipeline: &gst::Pipeline,
    kind: Kind,
    mux: &gst::Element,
) -> Result<Vec<gst::Element>, MediaError> {
    let branch = kind.elements()?;
    pipeline.add_many(&branch).map_err(pipeline_error)?;
    gst::Element::link_many(&branch).map_err(pipeline_error)?;
    link_to_mux(&branch, mux, kind.mux_pad_template())?;
    for element in &branch {
        element.sync_state_with_parent().map_err(pipeline_error)?;
    }
    Ok(branch)
}

/// Any buffer passing `pad` counts as life for the stall detector.
fn watch_activity(pad: &gst::Pad, shared: &Arc<Shared>) {
    let shared = Arc::clone(shared);
    pad.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
        move |_, _| {
            shared.touch();
            gst::PadProbeReturn::Ok
        },
    );
}

/// Sends a stream we don't transcode (subtitles, extra tracks) to a fakesink
/// so the demuxer does not fail with not-linked.
fn discard(pipeline: &gst::Pipeline, pad: &gst::Pad) -> Result<(), MediaError> {
    let sink = make(
        gst::ElementFactory::make("fakesink")
            .property("sync", false)
            .property("async", false),
    )?;
    pipeline.add(&sink).map_err(pipeline_error)?;
    sink.sync_state_with_parent().map_err(pipeline_error)?;
    pad.link(&static_pad(&sink, "sink")?)
        .map_err(pipeline_error)?;
    Ok(())
}

fn running_end(pad: &gst::Pad, buffer: &gst::BufferRef) -> Option<gst::ClockTime> {
    let pts = buffer.pts()?;
    let event = pad.sticky_event::<gst::event::Segment>(0)?;
    let segment = event.segment().downcast_ref::<gst::ClockTime>()?;
    let start = segment.to_running_time(pts)?;
    Some(start + buffer.duration().unwrap_or(gst::ClockTime::ZERO))
}

fn ends(elements: &[gst::Element]) -> Result<(&gst::Element, &gst::Element), MediaError> {
    match (elements.first(), elements.last()) {
        (Some(first), Some(last)) => Ok((first, last)),
        _ => Err(MediaError::Pipeline("empty branch".into())),
    }
}

fn static_pad(element: &gst::Element, name: &str) -> Result<gst::Pad, MediaError> {
    element
        .static_pad(name)
        .ok_or_else(|| MediaError::Pipeline(format!("{} has no {name} pad", element.name())))
}

fn pipeline_error(e: impl std::fmt::Display) -> MediaError {
    MediaError::Pipeline(e.to_string())
}

/// Turns stream positions into throttled, monotonic progress callbacks.
struct Progress<'p> {
    on_progress: &'p mut dyn FnMut(f64),
    span: Option<gst::ClockTime>,
    value: f64,
    last_report: Option<Instant>,
}

impl<'p> Progress<'p> {
    fn new(on_progress: &'p mut dyn FnMut(f64), span: Option<gst::ClockTime>) -> Self {
        Self {
            on_progress,
            span,
            value: 0.0,
            last_report: None,
        }
    }

    fn tick(&mut self, shared: &Shared) {
        if self
            .last_report
            .is_some_and(|t| t.elapsed() < PROGRESS_INTERVAL)
        {
            return;
        }
        self.value = self.value.max(self.fraction(shared));
        self.last_report = Some(Instant::now());
        (self.on_progress)(self.value);
    }

    fn fraction(&self, shared: &Shared) -> f64 {
        let Some(span) = self.span.filter(|s| !s.is_zero()) else {
            return 0.0;
        };
        let done = shared.position().unwrap_or(span);
        (done.seconds_f64() / span.seconds_f64()).clamp(0.0, MAX_PROGRESS_BEFORE_DONE)
    }

    fn finish(self) {
        (self.on_progress)(1.0);
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::media::probe::probe;
    use crate::media::testsrc::{TestClip, fixtures};

    const STALL: Duration = Duration::from_secs(10);

    struct Run {
        result: Result<(), MediaError>,
        progress: Vec<f64>,
        elapsed: Duration,
    }

    fn transcode(input: &Path, output: &Path, range: Option<(f64, f64)>) -> Run {
        let req = TranscodeRequest {
            input,
            output,
            range,
        };
        let mut progress = Vec::new();
        let started = Instant::now();
        let result = transcode_mp4(&req, &CancelFlag::default(), STALL, &mut |p| {
            progress.push(p)
        });
        Run {
            result,
            progress,
            elapsed: started.elapsed(),
        }
    }

    fn clip(dir: &Path, name: &str, seconds: f64, size: (u32, u32), audio: bool) -> PathBuf {
        let spec = TestClip {
            seconds,
            width: size.0,
            height: size.1,
            audio,
            ..TestClip::default()
        };
        fixtures::clip(dir, name, &spec)
    }

    /// Stream-time timestamps of the decoded video frames of `path`.
    fn video_timestamps(path: &Path) -> Vec<gst::ClockTime> {
        let launch = format!(
            "filesrc location=\"{}\" ! decodebin ! video/x-raw ! fakesink name=sink sync=false",
            path.display()
        );
        let pipeline = gst::parse::launch(&launch)
            .expect("parse")
            .downcast::<gst::Pipeline>()
            .expect("pipeline");
        let stamps = Arc::new(Mutex::new(Vec::new()));
        let sink_pad = pipeline
            .by_name("sink")
            .and_then(|s| s.static_pad("sink"))
            .expect("sink pad");
        let collected = Arc::clone(&stamps);
        sink_pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            let stream_time = info.buffer().and_then(|b| b.pts()).and_then(|pts| {
                let event = pad.sticky_event::<gst::event::Segment>(0)?;
                let segment = event.segment().downcast_ref::<gst::ClockTime>()?;
                segment.to_stream_time(pts)
            });
            collected.lock().expect("lock").extend(stream_time);
            gst::PadProbeReturn::Ok
        });
        pipeline.set_state(gst::State::Playing).expect("play");
        let msg = pipeline
            .bus()
            .expect("bus")
            .timed_pop_filtered(
                gst::ClockTime::from_seconds(30),
                &[gst::MessageType::Eos, gst::MessageType::Error],
            )
            .expect("decode finished");
        pipeline.set_state(gst::State::Null).expect("stop");
        assert_eq!(msg.type_(), gst::MessageType::Eos, "{msg:?}");
        stamps.lock().expect("lock").clone()
    }

    fn assert_bad_input(run: &Run, input: &Path, output: &Path) {
        let err = run.result.as_ref().expect_err("bad input must fail");
        assert!(matches!(err, MediaError::BadInput { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&input.display().to_string()),
            "{err}"
        );
        assert!(!output.exists(), "partial output left behind");
    }

    #[test]
    fn trims_frame_accurately_and_restarts_timestamps_at_zero() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = clip(dir.path(), "in.mp4", 6.0, (320, 240), true);
        let output = dir.path().join("out.mp4");

        let run = transcode(&input, &output, Some((1.0, 4.0)));
        run.result.expect("transcode");

        let info = probe(&output).expect("probe output");
        assert!((info.duration_seconds - 3.0).abs() < 0.1, "{info:?}");
        let video = info.video.expect("video");
        assert_eq!(
            (video.codec.as_str(), video.width, video.height),
            ("h264", 320, 240)
        );
        assert_eq!(info.audio.expect("audio").codec, "aac");
        let stamps = video_timestamps(&output);
        let first = stamps.iter().min().expect("frames");
        assert!(
            *first < gst::ClockTime::from_mseconds(5),
            "first frame at {first}"
        );
        assert_eq!(stamps.len(), 90, "3 s at 30 fps");
    }

    #[test]
    fn whole_file_keeps_duration() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = clip(dir.path(), "in.mp4", 3.0, (320, 240), true);
        let output = dir.path().join("out.mp4");

        let run = transcode(&input, &output, None);
        run.result.expect("transcode");

        let info = probe(&output).expect("probe output");
        assert!((info.duration_seconds - 3.0).abs() < 0.1, "{info:?}");
        assert_eq!(run.progress.last(), Some(&1.0));
    }

    #[test]
    fn transcodes_720p_without_stalling_and_reports_progress() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = clip(dir.path(), "in.mp4", 10.0, (1280, 720), true);
        let output = dir.path().join("out.mp4");

        let run = transcode(&input, &output, None);
        eprintln!("720p 10 s transcode took {:?}", run.elapsed);
        run.result.expect("transcode");

        let info = probe(&output).expect("probe output");
        assert!((info.duration_seconds - 10.0).abs() < 0.1, "{info:?}");
        assert!(run.progress.len() >= 5, "{:?}", run.progress);
        assert!(
            run.progress.windows(2).all(|w| w[0] <= w[1]),
            "{:?}",
            run.progress
        );
        assert_eq!(run.progress.last(), Some(&1.0));
    }

    #[test]
    fn video_only_input_gives_video_only_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = clip(dir.path(), "in.mp4", 2.0, (320, 240), false);
        let output = dir.path().join("out.mp4");

        transcode(&input, &output, Some((0.5, 1.5)))
            .result
            .expect("transcode");

        let info = probe(&output).expect("probe output");
        assert!(info.audio.is_none(), "{info:?}");
        assert!((info.duration_seconds - 1.0).abs() < 0.1, "{info:?}");
    }

    #[test]
    fn random_bytes_are_bad_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = fixtures::noise(dir.path(), "noise.mp4", 200_000);
        let output = dir.path().join("out.mp4");

        let run = transcode(&input, &output, None);
        assert_bad_input(&run, &input, &output);
    }

    #[test]
    fn truncated_mp4_is_bad_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = clip(dir.path(), "in.mp4", 4.0, (320, 240), true);
        let bytes = std::fs::read(&input).expect("read");
        std::fs::write(&input, &bytes[..bytes.len() / 2]).expect("truncate");
        let output = dir.path().join("out.mp4");

        let run = transcode(&input, &output, None);
        assert_bad_input(&run, &input, &output);
    }

    #[test]
    fn missing_input_is_bad_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("does-not-exist.mp4");
        let output = dir.path().join("out.mp4");

        let run = transcode(&input, &output, None);
        assert_bad_input(&run, &input, &output);
    }

    #[test]
    fn bad_ranges_are_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = clip(dir.path(), "in.mp4", 2.0, (320, 240), true);
        let output = dir.path().join("out.mp4");

        for range in [(2.0, 1.0), (-1.0, 1.0), (0.0, f64::NAN), (5.0, 6.0)] {
            let run = transcode(&input, &output, Some(range));
            assert_bad_input(&run, &input, &output);
        }
    }

    #[test]
    fn cancel_stops_quickly_and_removes_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = clip(dir.path(), "in.mp4", 10.0, (640, 360), true);
        let output = dir.path().join("out.mp4");
        let req = TranscodeRequest {
            input: &input,
            output: &output,
            range: None,
        };
        let cancel = CancelFlag::default();
        let flag = Arc::clone(&cancel);
        let cancel_later = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            flag.store(true, Ordering::Relaxed);
            Instant::now()
        });

        let result = transcode_mp4(&req, &cancel, STALL, &mut |_| {});
        let returned = Instant::now();

        let latency = returned - cancel_later.join().expect("cancel thread");
        eprintln!("cancel took effect after {latency:?}");
        assert!(matches!(result, Err(MediaError::Cancelled)), "{result:?}");
        assert!(latency < Duration::from_secs(1), "{latency:?}");
        assert!(!output.exists(), "partial output left behind");
    }

    #[test]
    fn stall_timeout_aborts_and_removes_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = clip(dir.path(), "in.mp4", 2.0, (320, 240), true);
        let output = dir.path().join("out.mp4");
        let req = TranscodeRequest {
            input: &input,
            output: &output,
            range: None,
        };
        let stall = Duration::from_millis(1);

        let result = transcode_mp4(&req, &CancelFlag::default(), stall, &mut |_| {});

        assert!(
            matches!(result, Err(MediaError::Stalled(d)) if d == stall),
            "{result:?}"
        );
        assert!(!output.exists(), "partial output left behind");
    }
}
