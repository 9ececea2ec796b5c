//! Lossless trimming of MP4/MOV files: encoded packets between a keyframe
//! and an end time are copied into a new MP4 without decoding. Because a
//! copy can only start on a keyframe, [`keyframe_times`] lists where cuts
//! are possible and [`trim_copy`] refuses other start times.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use gst::glib;
use gst::prelude::*;
use gstreamer as gst;

use crate::media::MediaError;
use crate::media::elements::{
    Kind, add_chain, add_live_chain, discard, file_sink, link_pad_to_chain, link_to_mux, mp4_mux,
    mux_queue, static_pad,
};
use crate::media::pipeline::{seek_element, validate_range};
use crate::media::runner::{self, CancelFlag, Control, Gate, Monitor, Session};

/// A start time this close to a keyframe counts as that keyframe.
const KEYFRAME_TOLERANCE: f64 = 0.001;
/// Scanning packets never pauses this long unless something is wedged.
const SCAN_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Name of the bus message that says the demuxer has exposed all streams.
const PADS_READY: &str = "reelmesh-pads-ready";
/// Name of the bus message that says a keyframe scan has seen enough.
const SCAN_DONE: &str = "reelmesh-keyframes-found";

/// Stream times (seconds, ascending) of the video keyframes of an MP4/MOV
/// file: the only places [`trim_copy`] can start. Reads the whole file's
/// packets but decodes nothing.
pub fn keyframe_times(input: &Path) -> Result<Vec<f64>, MediaError> {
    scan_keyframes(input, None, f64::INFINITY)
}

/// The video keyframes a cut starting at `start` needs to know about: from
/// the last one at or before `start` up to the first one at or after it
/// (within 1 ms), ascending; all of them up to the end if none is after.
/// Only that stretch of the file is read: the demuxer seeks to the
/// keyframe before `start` through its index, and reading stops at the
/// first keyframe past it. [`trim_copy_at`] and [`crate::media::trim_smart_at`]
/// take the result, so a job finds its keyframes once.
pub fn keyframes_near(input: &Path, start: f64) -> Result<Vec<f64>, MediaError> {
    let stop = start - KEYFRAME_TOLERANCE;
    if start > 0.0 {
        let keys = scan_keyframes(input, Some(start), stop)?;
        // A demuxer whose seek lands past `start` would hide the keyframe
        // the cut needs; reading from the beginning cannot.
        if keys
            .first()
            .is_some_and(|k| *k <= start + KEYFRAME_TOLERANCE)
        {
            return Ok(keys);
        }
    }
    scan_keyframes(input, None, stop)
}

/// Keyframe times from `seek` (snapped back to a keyframe; the start of
/// the file when `None`) until the first keyframe at or after `stop`.
fn scan_keyframes(input: &Path, seek: Option<f64>, stop: f64) -> Result<Vec<f64>, MediaError> {
    let cancel = CancelFlag::default();
    let mut quiet = |_| {};
    let mut control = Control::new(&cancel, SCAN_STALL_TIMEOUT, &mut quiet);
    let times = Arc::new(Mutex::new(Vec::new()));
    runner::run(&mut control, |session| {
        let demux = add_demuxer(session, input)?;
        let scanner = Arc::new(Scanner {
            times: Arc::clone(&times),
            found: AtomicBool::new(false),
            stop,
            gate: seek.map(|_| Gate::default()),
        });
        let on_pad = Arc::clone(&scanner);
        session.on_new_pad(&demux, move |pipeline, pad| on_pad.link(pipeline, pad));
        if let Some(at) = seek {
            // As in trim_copy: nothing flows before the seek is in place.
            session.set_state(gst::State::Paused)?;
            session.wait_for(is_pads_ready)?;
            let flags =
                gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT | gst::SeekFlags::SNAP_BEFORE;
            if !seek_element(&demux, flags, at, None) {
                return Err(MediaError::bad_input(input, "input is not seekable"));
            }
        }
        if let Some(gate) = &scanner.gate {
            gate.open();
        }
        session.monitor().touch();
        session.set_state(gst::State::Playing)?;
        session.wait_for(|msg| msg.type_() == gst::MessageType::Eos || is_app(msg, SCAN_DONE))
    })?;
    let mut times = std::mem::take(&mut *times.lock().unwrap_or_else(PoisonError::into_inner));
    if times.is_empty() {
        return Err(MediaError::bad_input(input, "has no video keyframes"));
    }
    times.sort_by(f64::total_cmp);
    times.dedup();
    Ok(times)
}

/// Blocking: copies `range` (seconds) of `input` into a fast-start MP4 at
/// `output` without re-encoding. `range.0` must be a keyframe time (within
/// 1 ms, see [`keyframe_times`]); otherwise the error names the nearest
/// keyframes. The end may be anywhere and is clamped to the input's end.
/// For inputs with B-frames, frames just before a mid-GOP end may refer to
/// a dropped later frame and decode imperfectly.
pub fn trim_copy(
    input: &Path,
    output: &Path,
    range: (f64, f64),
    control: &mut Control<'_>,
) -> Result<(), MediaError> {
    validate_range(input, Some(range))?;
    let keys = keyframes_near(input, range.0)?;
    trim_copy_at(input, output, range, &keys, control)
}

/// [`trim_copy`] with the keyframes around the start already known (from
/// [`keyframes_near`] or [`keyframe_times`]).
pub fn trim_copy_at(
    input: &Path,
    output: &Path,
    range: (f64, f64),
    keys: &[f64],
    control: &mut Control<'_>,
) -> Result<(), MediaError> {
    validate_range(input, Some(range))?;
    let start = snap_to_keyframe(input, range.0, keys)?;
    let end = range.1;
    runner::run(control, |session| {
        let demux = add_demuxer(session, input)?;
        let linker = Copier::attach(session, &demux, output)?;
        // Pads are held at the demuxer until the seek is in place, so
        // nothing before the keyframe reaches the muxer.
        session.set_state(gst::State::Paused)?;
        session.wait_for(is_pads_ready)?;
        let duration = demux_duration(&demux);
        // qtdemux also sends the frame starting exactly at the stop time;
        // stopping a nanosecond earlier makes the end exclusive.
        let stop = end - 1e-9;
        if !seek_element(&demux, gst::SeekFlags::FLUSH, start, Some(stop)) {
            return Err(MediaError::bad_input(input, "input is not seekable"));
        }
        linker.gate.open();
        let span = duration.map(|d| d.min(seconds(end)).saturating_sub(seconds(start)));
        session.set_span(span);
        session.play_to_eos()?;
        session.check_complete(input, span)
    })
}

fn seconds(s: f64) -> gst::ClockTime {
    gst::ClockTime::from_seconds_f64(s)
}

/// The keyframe `start` refers to, or an error naming the nearest ones.
fn snap_to_keyframe(input: &Path, start: f64, keys: &[f64]) -> Result<f64, MediaError> {
    if let Some(key) = keys
        .iter()
        .find(|k| (*k - start).abs() <= KEYFRAME_TOLERANCE)
    {
        return Ok(*key);
    }
    let before = keys.iter().rev().find(|k| **k < start);
    let after = keys.iter().find(|k| **k > start);
    let near = match (before, after) {
        (Some(b), Some(a)) => format!("{b:.3}s and {a:.3}s"),
        (Some(k), None) | (None, Some(k)) => format!("{k:.3}s"),
        (None, None) => "none".into(),
    };
    Err(MediaError::bad_input(
        input,
        format!("trim start {start:.3}s is not a keyframe; nearest keyframes: {near}"),
    ))
}

/// filesrc ! qtdemux, announcing on the bus when all pads exist.
fn add_demuxer(session: &mut Session, input: &Path) -> Result<gst::Element, MediaError> {
    let demux = session.add_mp4_input(input)?;
    demux.connect_no_more_pads(|demux| {
        let msg = gst::message::Application::builder(gst::Structure::new_empty(PADS_READY))
            .src(demux)
            .build();
        let _ = demux.post_message(msg);
    });
    Ok(demux.clone())
}

fn is_pads_ready(msg: &gst::Message) -> bool {
    is_app(msg, PADS_READY)
}

fn is_app(msg: &gst::Message, name: &str) -> bool {
    msg.type_() == gst::MessageType::Application
        && msg.structure().is_some_and(|s| s.name() == name)
}

fn demux_duration(demux: &gst::Element) -> Option<gst::ClockTime> {
    demux
        .src_pads()
        .iter()
        .find_map(|pad| pad.query_duration::<gst::ClockTime>())
}

/// Collects keyframe times from the first video pad until one reaches
/// `stop`; drops everything else.
struct Scanner {
    times: Arc<Mutex<Vec<f64>>>,
    found: AtomicBool,
    stop: f64,
    /// Holds the streams until the seek, when there is one, is in place.
    gate: Option<Gate>,
}

impl Scanner {
    /// Every stream is discarded; the first video one is timed on its way.
    fn link(&self, pipeline: &gst::Pipeline, pad: &gst::Pad) -> Result<(), MediaError> {
        let video = Kind::of(pad) == Some(Kind::Video) && !self.found.swap(true, Ordering::SeqCst);
        if video {
            self.collect(pad);
        }
        if let Some(gate) = &self.gate {
            gate.block(pad);
        }
        discard(pipeline, pad)
    }

    fn collect(&self, pad: &gst::Pad) {
        let times = Arc::clone(&self.times);
        let stop = self.stop;
        let done = AtomicBool::new(false);
        pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            // The demuxer keeps going until the bus loop stops it.
            if done.load(Ordering::SeqCst) {
                return gst::PadProbeReturn::Drop;
            }
            let key = info
                .buffer()
                .filter(|b| !b.flags().contains(gst::BufferFlags::DELTA_UNIT))
                .and_then(|b| stream_time(pad, b.pts()?));
            let Some(time) = key.map(gst::ClockTime::seconds_f64) else {
                return gst::PadProbeReturn::Ok;
            };
            times
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(time);
            if time >= stop {
                done.store(true, Ordering::SeqCst);
                announce_done(pad);
                // Nothing after this keyframe is needed.
                return gst::PadProbeReturn::Drop;
            }
            gst::PadProbeReturn::Ok
        });
    }
}

/// Tells the bus loop the scan is over, from the scanning pad's demuxer.
fn announce_done(pad: &gst::Pad) {
    let Some(demux) = pad.parent_element() else {
        return;
    };
    let msg = gst::message::Application::builder(gst::Structure::new_empty(SCAN_DONE))
        .src(&demux)
        .build();
    let _ = demux.post_message(msg);
}

fn stream_time(pad: &gst::Pad, pts: gst::ClockTime) -> Option<gst::ClockTime> {
    let event = pad.sticky_event::<gst::event::Segment>(0)?;
    let segment = event.segment().downcast_ref::<gst::ClockTime>()?;
    segment.to_stream_time(pts)
}

/// Links each demuxed audio/video stream straight into mp4mux.
struct Copier {
    mux: glib::WeakRef<gst::Element>,
    monitor: Arc<Monitor>,
    gate: Gate,
    linked: [AtomicBool; 2],
}

impl Copier {
    fn attach(
        session: &mut Session,
        demux: &gst::Element,
        output: &Path,
    ) -> Result<Arc<Self>, MediaError> {
        let mux = mp4_mux()?;
        let sink = file_sink(output)?;
        add_chain(session.pipeline(), &[mux.clone(), sink.clone()])?;
        session.add_output(output);
        session.monitor().watch(&static_pad(&sink, "sink")?);
        let copier = Arc::new(Self {
            mux: mux.downgrade(),
            monitor: Arc::clone(session.monitor()),
            gate: Gate::default(),
            linked: Default::default(),
        });
        let on_pad = Arc::clone(&copier);
        session.on_new_pad(demux, move |pipeline, pad| on_pad.link(pipeline, pad));
        Ok(copier)
    }

    fn link(&self, pipeline: &gst::Pipeline, pad: &gst::Pad) -> Result<(), MediaError> {
        let wanted =
            Kind::of(pad).filter(|k| !self.linked[*k as usize].swap(true, Ordering::SeqCst));
        let (Some(kind), Some(mux)) = (wanted, self.mux.upgrade()) else {
            return discard(pipeline, pad);
        };
        let branch = [mux_queue()?];
        add_live_chain(pipeline, &branch)?;
        link_to_mux(&branch, &mux, kind.mux_pad_template())?;
        self.monitor.track(&static_pad(&branch[0], "src")?);
        self.gate.block(pad);
        link_pad_to_chain(pad, &branch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::probe::probe;
    use crate::media::testutil::{clip, packets};

    fn trim(input: &Path, output: &Path, range: (f64, f64)) -> Result<(), MediaError> {
        let cancel = CancelFlag::default();
        let mut progress = Vec::new();
        let mut record = |p| progress.push(p);
        let mut control = Control::new(&cancel, Duration::from_secs(10), &mut record);
        let result = trim_copy(input, output, range, &mut control);
        if result.is_ok() {
            assert_eq!(progress.last(), Some(&1.0));
        }
        result
    }

    fn hashes(packets: &[crate::media::testutil::Packet]) -> Vec<u64> {
        packets.iter().map(|p| p.hash).collect()
    }

    #[test]
    fn lists_keyframes_every_two_seconds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = clip(dir.path(), "in.mp4", 5.0, (160, 120), true);

        let keys = keyframe_times(&input).expect("keyframes");

        assert_eq!(keys.len(), 3, "{keys:?}");
        for (key, want) in keys.iter().zip([0.0, 2.0, 4.0]) {
            assert!((key - want).abs() < 0.001, "{keys:?}");
        }
    }

    #[test]
    fn finds_the_keyframes_around_a_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = clip(dir.path(), "in.mp4", 10.0, (160, 120), true);
        let cases: [(f64, &[f64]); 5] = [
            (0.0, &[0.0]),
            (4.0, &[4.0]),
            (3.0, &[2.0, 4.0]),
            (5.9995, &[4.0, 6.0]),
            (9.5, &[8.0]),
        ];
        for (start, want) in cases {
            let keys = keyframes_near(&input, start).expect("keyframes");
            assert_eq!(keys.len(), want.len(), "{start}: {keys:?}");
            for (key, want) in keys.iter().zip(want) {
                assert!((key - want).abs() < 0.001, "{start}: {keys:?}");
            }
        }
    }

    #[test]
    fn copies_packets_from_a_keyframe() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = clip(dir.path(), "in.mp4", 6.0, (160, 120), true);
        let output = dir.path().join("out.mp4");

        trim(&input, &output, (2.0, 4.0)).expect("trim");

        let info = probe(&output).expect("probe output");
        assert!((info.duration_seconds - 2.0).abs() < 0.05, "{info:?}");
        let source = packets(&input, "video");
        let got = packets(&output, "video");
        assert_eq!(hashes(&got), hashes(&source[60..120]));
        assert!(got[0].keyframe);
        assert_eq!(got[0].pts, Some(gst::ClockTime::ZERO));
        let audio = hashes(&packets(&input, "audio"));
        let cut = hashes(&packets(&output, "audio"));
        assert!(
            audio.windows(cut.len()).any(|w| w == cut.as_slice()),
            "audio packets are not a run of the input's"
        );
    }

    #[test]
    fn refuses_a_start_between_keyframes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = clip(dir.path(), "in.mp4", 5.0, (160, 120), false);
        let output = dir.path().join("out.mp4");

        let err = trim(&input, &output, (1.5, 3.0)).expect_err("not a keyframe");

        let text = err.to_string();
        assert!(matches!(err, MediaError::BadInput { .. }), "{err:?}");
        assert!(text.contains("0.000s and 2.000s"), "{text}");
        assert!(!output.exists());
    }
}
