//! Blocking transcode of any input GStreamer can decode into H.264 + AAC in a
//! fast-start MP4, optionally trimmed to a time range with a frame-accurate
//! seek. The bus loop, cancellation, stall watchdog and progress live in
//! [`crate::media::runner`]; this file only describes the graph.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gst::glib;
use gst::prelude::*;
use gstreamer as gst;

pub use crate::media::runner::{CancelFlag, Control, init};

use crate::media::MediaError;
use crate::media::elements::{
    Kind, VideoFormat, add_live_chain, capsfilter, discard, element, ends, file_sink, file_source,
    link_to_mux, make, mux_queue, pipeline_error, static_pad,
};
use crate::media::overlay::{TextOverlay, overlay_chain};
use crate::media::runner::{self, Gate, Monitor, Session};

/// What to transcode and where to write it.
#[derive(Debug)]
pub struct TranscodeRequest<'a> {
    pub input: &'a Path,
    pub output: &'a Path,
    /// Trim start/end in seconds; `None` keeps the whole input.
    pub range: Option<(f64, f64)>,
    /// Text drawn over the video, in order.
    pub overlays: &'a [TextOverlay],
    /// The input is a still image, repeated into a video this many seconds
    /// long at [`STILL_FPS`].
    pub still_seconds: Option<f64>,
    pub format: VideoFormat,
}

impl<'a> TranscodeRequest<'a> {
    /// A whole-file transcode to H.264/AAC MP4; set the other fields with
    /// struct update syntax.
    pub fn new(input: &'a Path, output: &'a Path) -> Self {
        TranscodeRequest {
            input,
            output,
            range: None,
            overlays: &[],
            still_seconds: None,
            format: VideoFormat::default(),
        }
    }
}

/// Frame rate of videos made from a still image.
pub const STILL_FPS: i32 = 30;

/// Blocking: decodes `req.input`, trims it to `req.range` (frame accurate
/// via an ACCURATE seek), encodes H.264 (x264 at CRF 23, preset medium) +
/// AAC 128 kbit/s and writes a fast-start MP4 to `req.output`.
///
/// Equivalent to [`transcode`] with a [`Control`] built from the arguments.
pub fn transcode_mp4(
    req: &TranscodeRequest,
    cancel: &CancelFlag,
    stall_timeout: Duration,
    on_progress: &mut dyn FnMut(f64),
) -> Result<(), MediaError> {
    transcode(req, &mut Control::new(cancel, stall_timeout, on_progress))
}

/// Blocking transcode steered by `control`; see [`transcode_mp4`].
pub fn transcode(req: &TranscodeRequest, control: &mut Control<'_>) -> Result<(), MediaError> {
    validate_range(req.input, req.range)?;
    runner::run(control, |session| {
        let job = Job::build(session, req)?;
        job.run(session)
    })
}

/// Rejects ranges that are empty, reversed, negative or not finite.
pub(crate) fn validate_range(input: &Path, range: Option<(f64, f64)>) -> Result<(), MediaError> {
    match range {
        Some((start, end)) if !(start >= 0.0 && end > start && end.is_finite()) => Err(
            MediaError::bad_input(input, format!("invalid trim range {start}..{end}")),
        ),
        _ => Ok(()),
    }
}

/// Per-kind encoder branch, from decoded frames/samples to the muxer queue.
fn encoder_branch(
    kind: Kind,
    overlays: &[TextOverlay],
    format: VideoFormat,
) -> Result<Vec<gst::Element>, MediaError> {
    match kind {
        Kind::Video => Ok([
            // Decouples decoding from encoding so both run in parallel.
            element("queue")?,
            element("videoconvert")?,
            // 8-bit 4:2:0 is the only H.264 flavour browsers reliably play;
            // without this x264enc would happily emit High 4:4:4 or 10-bit.
            capsfilter(
                gst::Caps::builder("video/x-raw")
                    .field("format", "I420")
                    .build(),
            )?,
        ]
        .into_iter()
        .chain(overlay_chain(overlays)?)
        .chain(format.conform_chain()?)
        .chain([format.video_encoder()?, mux_queue()?])
        .collect()),
        Kind::Audio => Ok(vec![
            element("audioconvert")?,
            element("audioresample")?,
            format.audio_encoder()?,
            mux_queue()?,
        ]),
    }
}

/// Repeats a decoded still image as `seconds` of video. x264 needs even
/// dimensions, which images often lack, so the frame is scaled to the
/// nearest even size below.
fn still_to_video(pad: &gst::Pad, seconds: f64) -> Result<Vec<gst::Element>, MediaError> {
    let caps = pad
        .current_caps()
        .ok_or_else(|| MediaError::Pipeline("image without caps".into()))?;
    let structure = caps
        .structure(0)
        .ok_or_else(|| MediaError::Pipeline("image without caps".into()))?;
    let even = |name| {
        structure
            .get::<i32>(name)
            .map(|v| (v / 2 * 2).max(2))
            .map_err(pipeline_error)
    };
    let frames = (seconds * f64::from(STILL_FPS)).round().max(1.0) as i32;
    Ok(vec![
        make(gst::ElementFactory::make("imagefreeze").property("num-buffers", frames))?,
        element("videoscale")?,
        capsfilter(
            gst::Caps::builder("video/x-raw")
                .field("width", even("width")?)
                .field("height", even("height")?)
                .field("framerate", gst::Fraction::new(STILL_FPS, 1))
                .build(),
        )?,
    ])
}

/// One transcode: filesrc ! decodebin, with per-stream encoder branches
/// linked on demand into mp4mux ! filesink.
struct Job<'r> {
    req: &'r TranscodeRequest<'r>,
    decodebin: gst::Element,
    linker: Arc<Linker>,
}

impl<'r> Job<'r> {
    fn build(session: &mut Session, req: &'r TranscodeRequest<'r>) -> Result<Self, MediaError> {
        let filesrc = file_source(req.input)?;
        let decodebin = element("decodebin")?;
        let mux = req.format.muxer()?;
        let filesink = file_sink(req.output)?;
        let pipeline = session.pipeline();
        pipeline
            .add_many([&filesrc, &decodebin, &mux, &filesink])
            .map_err(pipeline_error)?;
        filesrc.link(&decodebin).map_err(pipeline_error)?;
        mux.link(&filesink).map_err(pipeline_error)?;
        session.add_input(req.input, &filesrc);
        session.add_input(req.input, &decodebin);
        session.add_output(req.output);

        // Reading input and writing output count as activity too, so neither
        // a slow preroll nor mp4mux's fast-start rewrite at the end (which
        // copies the whole file) is mistaken for a stall.
        let monitor = session.monitor();
        monitor.watch(&static_pad(&filesrc, "src")?);
        monitor.watch(&static_pad(&filesink, "sink")?);
        let linker = Arc::new(Linker {
            mux: mux.downgrade(),
            monitor: Arc::clone(monitor),
            gate: Gate::default(),
            linked: Default::default(),
            overlays: req.overlays.to_vec(),
            still_seconds: req.still_seconds,
            format: req.format,
        });
        let on_pad = Arc::clone(&linker);
        session.on_new_pad(&decodebin, move |pipeline, pad| on_pad.link(pipeline, pad));
        Ok(Self {
            req,
            decodebin,
            linker,
        })
    }

    fn run(&self, session: &mut Session) -> Result<(), MediaError> {
        session.preroll()?;
        if !self.linker.any_linked() {
            return Err(self.bad_input("no audio or video stream"));
        }
        if let Some(seconds) = self.req.still_seconds {
            // A still has no duration of its own to check the output against.
            session.set_span(Some(gst::ClockTime::from_seconds_f64(seconds)));
            self.linker.gate.open();
            return session.play_to_eos();
        }
        let duration = self.duration();
        let span = self.span(duration)?;
        if let Some((start, end)) = self.req.range {
            self.seek(start, end)?;
        }
        self.linker.gate.open();
        session.set_span(span);
        session.play_to_eos()?;
        // Without a declared duration there is nothing to compare against.
        session.check_complete(self.req.input, duration.and(span))
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
        let flags = gst::SeekFlags::FLUSH | gst::SeekFlags::ACCURATE;
        if seek_element(&self.decodebin, flags, start, Some(end)) {
            Ok(())
        } else {
            Err(self.bad_input("input is not seekable"))
        }
    }
}

/// Sends a TIME seek for `start..end` seconds into `element`'s first source
/// pad and returns whether it was handled.
///
/// Seeking the pipeline would route the event through mp4mux, whose
/// aggregator base applies a TIME seek to its BYTES output segment and
/// logs a GStreamer-CRITICAL. Entering at the demuxer (or the decodebin
/// around it) reaches it directly; one pad is enough as it seeks all its
/// streams.
pub(crate) fn seek_element(
    element: &gst::Element,
    flags: gst::SeekFlags,
    start: f64,
    end: Option<f64>,
) -> bool {
    let (stop_type, stop) = match end {
        Some(end) => (
            gst::SeekType::Set,
            Some(gst::ClockTime::from_seconds_f64(end)),
        ),
        None => (gst::SeekType::None, None),
    };
    let seek = gst::event::Seek::new(
        1.0,
        flags,
        gst::SeekType::Set,
        gst::ClockTime::from_seconds_f64(start),
        stop_type,
        stop,
    );
    element
        .src_pads()
        .first()
        .is_some_and(|pad| pad.send_event(seek))
}

/// Links decodebin's pads as they appear. Holds weak references because
/// decodebin owns this handler and the pipeline owns decodebin.
struct Linker {
    mux: glib::WeakRef<gst::Element>,
    monitor: Arc<Monitor>,
    gate: Gate,
    /// Whether a video / audio branch exists yet.
    linked: [AtomicBool; 2],
    overlays: Vec<TextOverlay>,
    still_seconds: Option<f64>,
    format: VideoFormat,
}

impl Linker {
    fn any_linked(&self) -> bool {
        self.linked.iter().any(|l| l.load(Ordering::SeqCst))
    }

    fn link(&self, pipeline: &gst::Pipeline, pad: &gst::Pad) -> Result<(), MediaError> {
        // Only the first video and first audio stream are transcoded.
        let wanted =
            Kind::of(pad).filter(|k| !self.linked[*k as usize].swap(true, Ordering::SeqCst));
        let Some(kind) = wanted else {
            return discard(pipeline, pad);
        };
        let mux = self
            .mux
            .upgrade()
            .ok_or_else(|| MediaError::Pipeline("muxer is gone".into()))?;
        let mut branch = encoder_branch(kind, &self.overlays, self.format)?;
        if let (Kind::Video, Some(seconds)) = (kind, self.still_seconds) {
            branch.splice(0..0, still_to_video(pad, seconds)?);
        }
        add_live_chain(pipeline, &branch)?;
        link_to_mux(&branch, &mux, kind.mux_pad_template())?;
        let (first, last) = ends(&branch)?;
        self.monitor.track(&static_pad(last, "src")?);
        self.monitor.watch(pad);
        self.gate.block(pad);
        pad.link(&static_pad(first, "sink")?)
            .map_err(pipeline_error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Instant;

    use super::*;
    use crate::media::probe::probe;
    use crate::media::testsrc::fixtures;

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
            overlays: &[],
            still_seconds: None,
            format: VideoFormat::default(),
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

    use crate::media::testutil::clip;

    /// Stream-time timestamps of the decoded video frames of `path`.
    fn video_timestamps(path: &Path) -> Vec<gst::ClockTime> {
        let launch = format!(
            "filesrc location=\"{}\" ! decodebin ! video/x-raw ! fakesink name=sink sync=false",
            path.display()
        );
        let stamps = Arc::new(Mutex::new(Vec::new()));
        let collected = Arc::clone(&stamps);
        crate::media::testutil::run_launch(&launch, move |pad, buffer| {
            let stream_time = buffer.pts().and_then(|pts| {
                let event = pad.sticky_event::<gst::event::Segment>(0)?;
                let segment = event.segment().downcast_ref::<gst::ClockTime>()?;
                segment.to_stream_time(pts)
            });
            collected.lock().expect("lock").extend(stream_time);
        });
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
    fn a_still_image_becomes_a_video_of_the_asked_length() {
        let dir = tempfile::tempdir().expect("dir");
        let video = clip(dir.path(), "src.mp4", 1.0, (320, 240), false);
        // An odd width, as images often have; x264 needs even sizes.
        let cancel = Arc::new(AtomicBool::new(false));
        let mut progress = |_| {};
        let mut control = Control::new(&cancel, STALL, &mut progress);
        let images = crate::media::thumbnails(
            &video,
            &[0.5],
            crate::media::ImageFormat::Png,
            Some(161),
            dir.path(),
            &mut control,
        )
        .expect("thumbnail");
        let output = dir.path().join("still.mp4");
        let req = TranscodeRequest {
            still_seconds: Some(2.0),
            ..TranscodeRequest::new(&images[0], &output)
        };
        transcode_mp4(&req, &cancel, STALL, &mut |_| {}).expect("still to video");
        let info = probe(&output).expect("probe");
        assert!((info.duration_seconds - 2.0).abs() < 0.1, "{info:?}");
        let video = info.video.expect("video");
        assert_eq!((video.width, video.height, video.fps), (160, 120, 30.0));
    }

    #[test]
    fn webm_output_is_vp9_and_opus() {
        let dir = tempfile::tempdir().expect("dir");
        let input = clip(dir.path(), "in.mp4", 2.0, (320, 240), true);
        let output = dir.path().join("out.webm");
        let cancel = Arc::new(AtomicBool::new(false));
        let req = TranscodeRequest {
            format: VideoFormat::webm(crate::media::VideoCodec::Vp9),
            ..TranscodeRequest::new(&input, &output)
        };
        transcode_mp4(&req, &cancel, STALL, &mut |_| {}).expect("webm");
        let info = probe(&output).expect("probe");
        assert_eq!(info.video.map(|v| v.codec), Some("vp9".into()));
        assert_eq!(info.audio.map(|a| a.codec), Some("opus".into()));
        assert!(
            (info.duration_seconds - 2.0).abs() < 0.1,
            "{}",
            info.duration_seconds
        );
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
        let req = TranscodeRequest::new(&input, &output);
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
        // The promise to clients: a running job stops within 2 s.
        assert!(latency < Duration::from_secs(2), "{latency:?}");
        assert!(!output.exists(), "partial output left behind");
    }

    #[test]
    fn stall_timeout_aborts_and_removes_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = clip(dir.path(), "in.mp4", 2.0, (320, 240), true);
        let output = dir.path().join("out.mp4");
        let req = TranscodeRequest::new(&input, &output);
        let stall = Duration::from_millis(1);

        let result = transcode_mp4(&req, &CancelFlag::default(), stall, &mut |_| {});

        assert!(
            matches!(result, Err(MediaError::Stalled(d)) if d == stall),
            "{result:?}"
        );
        assert!(!output.exists(), "partial output left behind");
    }
}
