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

/// Stream times (seconds, ascending) of the video keyframes of an MP4/MOV
/// file: the only places [`trim_copy`] can start. Reads the whole file's
/// packets but decodes nothing.
pub fn keyframe_times(input: &Path) -> Result<Vec<f64>, MediaError> {
    let cancel = CancelFlag::default();
    let mut quiet = |_| {};
    let mut control = Control::new(&cancel, SCAN_STALL_TIMEOUT, &mut quiet);
    let times = Arc::new(Mutex::new(Vec::new()));
    runner::run(&mut control, |session| {
        let demux = add_demuxer(session, input)?;
        let scanner = Scanner {
            times: Arc::clone(&times),
            found: AtomicBool::new(false),
        };
        session.on_new_pad(&demux, move |pipeline, pad| scanner.link(pipeline, pad));
        session.play_to_eos()
    })?;
    let mut times = std::mem::take(&mut *times.lock().unwrap_or_else(PoisonError::into_inner));
    if times.is_empty() {
        return Err(MediaError::bad_input(input, "has no video keyframes"));
    }
    times.sort_by(f64::total_cmp);
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
    let start = snap_to_keyframe(input, range.0, &keyframe_times(input)?)?;
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
    msg.type_() == gst::MessageType::Application
        && msg.structure().is_some_and(|s| s.name() == PADS_READY)
}

fn demux_duration(demux: &gst::Element) -> Option<gst::ClockTime> {
    demux
        .src_pads()
        .iter()
        .find_map(|pad| pad.query_duration::<gst::ClockTime>())
}

/// Collects keyframe times from the first video pad; drops everything else.
struct Scanner {
    times: Arc<Mutex<Vec<f64>>>,
    found: AtomicBool,
}

impl Scanner {
    /// Every stream is discarded; the first video one is timed on its way.
    fn link(&self, pipeline: &gst::Pipeline, pad: &gst::Pad) -> Result<(), MediaError> {
        let video = Kind::of(pad) == Some(Kind::Video) && !self.found.swap(true, Ordering::SeqCst);
        if video {
            self.collect(pad);
        }
        discard(pipeline, pad)
    }

    fn collect(&self, pad: &gst::Pad) {
        let times = Arc::clone(&self.times);
        pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            let key = info
                .buffer()
                .filter(|b| !b.flags().contains(gst::BufferFlags::DELTA_UNIT))
                .and_then(|b| stream_time(pad, b.pts()?));
            if let Some(time) = key {
                times
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(time.seconds_f64());
            }
            gst::PadProbeReturn::Ok
        });
    }
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
