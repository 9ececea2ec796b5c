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

/// Blocking: decode the input, trim to range (frame accurate via ACCURATE seek), encode H.264 (x264enc) + AAC (avenc_aac) into MP4 (mp4mux faststart), write output.
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
    // The job is dropped (pipeline to Null, output file closed) before cleanup.
    let result = Job::build(req).and_then(|job| job.run(&watch, on_progress));
    if result.is_err() {
        remove_partial_output(req.output);
    }
    result
}

/// Builds an element, turning a missing plugin into a readable error.
pub(crate) fn make(builder: gst::element_factory::ElementBuilder<'_>) -> Result<gst::Element, MediaError> {
    builder.build().map_err(|e| MediaError::Pipeline(e.to_string()))
}

/// Queue placed directly in front of a muxer input.
///
/// A muxer interleaves by timestamp, so it holds one stream back while it
/// waits for the other. x264enc emits nothing until its lookahead is full
/// (~40+ frames at the default preset, i.e. seconds of media at low frame
/// rates), and inputs are not always tightly interleaved. With a default
/// queue (1 s) the audio branch fills up, the demuxer's single streaming
/// thread blocks on it, video starves and nothing moves again. Buffering on
/// the encoded side keeps memory tiny, so we cap by time only, generously.
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

fn path_str<'p>(path: &'p Path, on_error: impl FnOnce() -> MediaError) -> Result<&'p str, MediaError> {
    path.to_str().ok_or_else(on_error)
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
                // Decouples decoding from encoding so both cores get used.
                make(gst::ElementFactory::make("queue"))?,
                make(gst::ElementFactory::make("videoconvert"))?,
                // 8-bit 4:2:0 is the only H.264 flavour browsers reliably play;
                // without this x264enc would happily emit High 4:4:4 or 10-bit.
                make(gst::ElementFactory::make("capsfilter").property(
                    "caps",
                    gst::Caps::builder("video/x-raw")
                        .field("format", "I420")
                        .build(),
                ))?,
                make(gst::ElementFactory::make("x264enc"))?,
                mux_queue()?,
            ]),
            Self::Audio => Ok(vec![
                make(gst::ElementFactory::make("audioconvert"))?,
                make(gst::ElementFactory::make("audioresample"))?,
                make(gst::ElementFactory::make("avenc_aac"))?,
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
        self.streams.iter().filter(|s| s.linked.load(Ordering::Relaxed))
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
        let input = path_str(req.input, || {
            MediaError::bad_input(req.input, "path is not valid UTF-8")
        })?;
        let output = path_str(req.output, || {
            MediaError::Pipeline(format!("output path {} is not valid UTF-8", req.output.display()))
        })?;
        let pipeline = gst::Pipeline::new();
        let filesrc = make(gst::ElementFactory::make("filesrc").property("location", input))?;
        let decodebin = make(gst::ElementFactory::make("decodebin"))?;
        let mux = make(gst::ElementFactory::make("mp4mux").property("faststart", true))?;
        // async=false: the sink cannot preroll while decodebin's pads are held
        // back for the seek, so only decodebin's own readiness gates PAUSED.
        let filesink = make(
            gst::ElementFactory::make("filesink")
                .property("location", output)
                .property("async", false),
        )?;
        let all = [&filesrc, &decodebin, &mux, &filesink];
        pipeline.add_many(all).map_err(pipeline_error)?;
        filesrc.link(&decodebin).map_err(pipeline_error)?;
        mux.link(&filesink).map_err(pipeline_error)?;

        let shared = Arc::new(Shared::new());
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
        let span = self.span()?;
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
        self.check_complete(span)?;
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
                        tracing::warn!(src = ?msg.src().map(|s| s.path_string()), "{}", w.error());
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
        tracing::debug!(src = ?src.map(|s| s.path_string()), debug = ?err.debug(), "pipeline error: {}", err.error());
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
    fn span(&self) -> Result<Option<gst::ClockTime>, MediaError> {
        let duration = self.duration();
        let Some((start, end)) = self.req.range else {
            return Ok(duration);
        };
        let start = gst::ClockTime::from_seconds_f64(start);
        let end = gst::ClockTime::from_seconds_f64(end);
        match duration {
            Some(d) if start >= d => Err(self.bad_input(format!(
                "trim start {start} is past the end of the input ({d})"
            ))),
            Some(d) => Ok(Some(end.min(d) - start)),
            None => Ok(Some(end - start)),
        }
    }

    fn seek(&self, start: f64, end: f64) -> Result<(), MediaError> {
        // ACCURATE makes the demuxer start at the keyframe before `start` and
        // the decoders drop everything before it, so the cut is frame exact.
        // FLUSH resets running time to 0 at `start`; mp4mux timestamps by
        // running time, so the output starts at 0 without any shifting.
        self.pipeline
            .seek(
                1.0,
                gst::SeekFlags::FLUSH | gst::SeekFlags::ACCURATE,
                gst::SeekType::Set,
                gst::ClockTime::from_seconds_f64(start),
                gst::SeekType::Set,
                gst::ClockTime::from_seconds_f64(end),
            )
            .map_err(|_| self.bad_input("input is not seekable"))
    }

    /// Demuxers report a cut-off file as a normal end of stream.
    fn check_complete(&self, span: Option<gst::ClockTime>) -> Result<(), MediaError> {
        let reached = self.shared.reached();
        match span {
            Some(span) if reached + TRUNCATION_TOLERANCE < span => Err(self.bad_input(format!(
                "media ends at {reached} instead of {span}; the file looks truncated"
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
            let msg = gst::message::Error::builder(gst::CoreError::Negotiation, &e.to_string())
                .src(&pipeline)
                .build();
            let _ = pipeline.post_message(msg);
        }
    }

    fn link(&self, pipeline: &gst::Pipeline, pad: &gst::Pad) -> Result<(), MediaError> {
        let kind = Kind::of(pad);
        // Only the first video and first audio stream are transcoded.
        let wanted = kind.filter(|k| !self.shared.stream(*k).linked.swap(true, Ordering::SeqCst));
        let Some(kind) = wanted else {
            return discard(pipeline, pad);
        };
        let mux = self
            .mux
            .upgrade()
            .ok_or_else(|| MediaError::Pipeline("muxer is gone".into()))?;
        let elements = kind.elements()?;
        pipeline.add_many(&elements).map_err(pipeline_error)?;
        gst::Element::link_many(&elements).map_err(pipeline_error)?;
        let (first, last) = ends(&elements)?;
        link_to_mux(&elements, &mux, kind.mux_pad_template())?;
        self.watch_mux_input(kind, &static_pad(last, "src")?);
        for element in &elements {
            element.sync_state_with_parent().map_err(pipeline_error)?;
        }
        self.watch_decoded(pad);
        self.shared.block(pad);
        pad.link(&static_pad(first, "sink")?).map_err(pipeline_error)?;
        Ok(())
    }

    /// Any decoded buffer counts as life for the stall detector.
    fn watch_decoded(&self, pad: &gst::Pad) {
        let shared = Arc::clone(&self.shared);
        pad.add_probe(
            gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
            move |_, _| {
                shared.touch();
                gst::PadProbeReturn::Ok
            },
        );
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
                } else if info.event().is_some_and(|e| e.type_() == gst::EventType::Eos) {
                    state.eos.store(true, Ordering::Relaxed);
                }
                gst::PadProbeReturn::Ok
            },
        );
    }
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
    pad.link(&static_pad(&sink, "sink")?).map_err(pipeline_error)?;
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
        if self.last_report.is_some_and(|t| t.elapsed() < PROGRESS_INTERVAL) {
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
