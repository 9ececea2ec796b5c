//! Stream-copy concatenation of H.264/AAC MP4 files: packets go from each
//! input's demuxer through GStreamer's `concat` (which shifts each input's
//! timestamps to follow the previous one) into a single mp4mux, without
//! decoding. [`copy_compatible`] says up front whether the inputs can share
//! one set of stream headers, which is what stream copying requires.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gst::glib;
use gst::prelude::*;
use gstreamer as gst;

use crate::media::MediaError;
use crate::media::elements::{
    Kind, add_chain, add_live_chain, discard, element, ends, file_sink, link_pad_to_chain,
    link_to_mux, make, mp4_mux, mux_queue, static_pad,
};
use crate::media::probe::{StreamCaps, codec_name, stream_caps};
use crate::media::runner::{self, Control, Session};

/// Inputs shorter than their header says by more than this are truncated.
const TRUNCATION_TOLERANCE: gst::ClockTime = gst::ClockTime::from_seconds(1);

/// Says whether `inputs` can be concatenated by [`concat`] without
/// re-encoding: MP4/MOV files with H.264 video and AAC audio whose stream
/// headers match exactly (codec, size, frame rate, profile, `codec_data`,
/// sample rate, channels), and that either all have audio or all have none.
///
/// `Ok(Err(reason))` names the first input that differs from the first one
/// and how; `Err` means an input could not be probed at all.
pub fn copy_compatible(inputs: &[&Path]) -> Result<Result<(), String>, MediaError> {
    Ok(ConcatProbe::of(inputs)?.copy_compatible(inputs))
}

/// The inputs of a concat, probed once: enough to decide whether their
/// streams can be copied and to copy them, without probing twice.
#[derive(Debug)]
pub struct ConcatProbe {
    caps: Vec<StreamCaps>,
}

impl ConcatProbe {
    pub fn of(inputs: &[&Path]) -> Result<Self, MediaError> {
        Ok(ConcatProbe {
            caps: probe_all(inputs)?,
        })
    }

    /// `Err` names the first input that differs and how.
    pub fn copy_compatible(&self, inputs: &[&Path]) -> Result<(), String> {
        match mismatch(inputs, &self.caps) {
            Some((input, why)) => Err(format!("{}: {why}", input.display())),
            None => Ok(()),
        }
    }
}

/// Blocking: writes `inputs` one after the other into a fast-start MP4 at
/// `output`, copying the encoded packets. Fails with
/// [`MediaError::BadInput`] naming the offending input when
/// [`copy_compatible`] says no; re-encode those with a transcode instead.
pub fn concat(
    inputs: &[&Path],
    output: &Path,
    control: &mut Control<'_>,
) -> Result<(), MediaError> {
    concat_probed(inputs, &ConcatProbe::of(inputs)?, output, control)
}

/// [`concat`] with the inputs already probed.
pub fn concat_probed(
    inputs: &[&Path],
    probe: &ConcatProbe,
    output: &Path,
    control: &mut Control<'_>,
) -> Result<(), MediaError> {
    let plan = check_inputs(inputs, &probe.caps)?;
    runner::run(control, |session| {
        let job = Job::build(session, inputs, &plan, output)?;
        session.set_span(Some(plan.durations.iter().copied().sum()));
        session.play_to_eos()?;
        job.check_complete(inputs, &plan.durations)
    })
}

fn probe_all(inputs: &[&Path]) -> Result<Vec<StreamCaps>, MediaError> {
    inputs.iter().map(|input| stream_caps(input)).collect()
}

/// The first input that cannot be copied alongside the first one, and why.
fn mismatch<'p>(inputs: &[&'p Path], caps: &[StreamCaps]) -> Option<(&'p Path, String)> {
    let (first, reference) = inputs.first().zip(caps.first())?;
    if let Err(why) = check_copyable(reference) {
        return Some((first, why));
    }
    inputs.iter().zip(caps).skip(1).find_map(|(input, caps)| {
        let verdict = check_copyable(caps).and_then(|()| same_streams(reference, caps));
        verdict
            .err()
            .map(|why| (*input, format!("{why} (compared with {})", first.display())))
    })
}

/// What the inputs hold, once they are known to be copy-compatible.
#[derive(Debug)]
struct Plan {
    durations: Vec<gst::ClockTime>,
    /// Stream kinds every input has.
    kinds: Vec<Kind>,
}

/// Probes and compares all inputs.
fn check_inputs(inputs: &[&Path], caps: &[StreamCaps]) -> Result<Plan, MediaError> {
    if inputs.is_empty() {
        return Err(MediaError::Pipeline(
            "concat needs at least one input".into(),
        ));
    }
    if let Some((input, why)) = mismatch(inputs, caps) {
        return Err(MediaError::bad_input(
            input,
            format!("cannot be stream-copied: {why}"),
        ));
    }
    let kinds = caps.first().map_or_else(Vec::new, |c| {
        let present = [(Kind::Video, &c.video), (Kind::Audio, &c.audio)];
        present
            .into_iter()
            .filter(|(_, caps)| caps.is_some())
            .map(|(kind, _)| kind)
            .collect()
    });
    let durations = inputs
        .iter()
        .zip(caps)
        .map(|(input, caps)| {
            caps.duration
                .ok_or_else(|| MediaError::bad_input(input, "declares no duration"))
        })
        .collect::<Result<_, _>>()?;
    Ok(Plan { durations, kinds })
}

fn check_copyable(caps: &StreamCaps) -> Result<(), String> {
    if !matches!(caps.container.as_str(), "mp4" | "quicktime" | "3gp") {
        return Err(format!("container is {}, not MP4", caps.container));
    }
    let video = caps.video.as_ref().map(|c| codec_name(Some(c)));
    if video.as_deref().is_some_and(|v| v != "h264") {
        return Err(format!(
            "video codec is {}, not H.264",
            video.unwrap_or_default()
        ));
    }
    let audio = caps.audio.as_ref().map(|c| codec_name(Some(c)));
    if audio.as_deref().is_some_and(|a| a != "aac") {
        return Err(format!(
            "audio codec is {}, not AAC",
            audio.unwrap_or_default()
        ));
    }
    if video.is_none() && audio.is_none() {
        return Err("has no audio or video stream".into());
    }
    Ok(())
}

/// Caps fields that must agree, with how to describe them.
const VIDEO_FIELDS: &[(&str, &str)] = &[
    ("width", "width"),
    ("height", "height"),
    ("framerate", "frame rate"),
    ("pixel-aspect-ratio", "pixel aspect ratio"),
    ("profile", "H.264 profile"),
    ("level", "H.264 level"),
    ("stream-format", "H.264 stream format"),
    // SPS/PPS: mp4mux writes one avcC box for the whole file.
    ("codec_data", "H.264 parameter sets (codec_data)"),
];
const AUDIO_FIELDS: &[(&str, &str)] = &[
    ("rate", "sample rate"),
    ("channels", "channel count"),
    ("codec_data", "AAC configuration (codec_data)"),
];

fn same_streams(a: &StreamCaps, b: &StreamCaps) -> Result<(), String> {
    same_stream("video", a.video.as_ref(), b.video.as_ref(), VIDEO_FIELDS)?;
    same_stream("audio", a.audio.as_ref(), b.audio.as_ref(), AUDIO_FIELDS)
}

fn same_stream(
    what: &str,
    a: Option<&gst::Caps>,
    b: Option<&gst::Caps>,
    fields: &[(&str, &str)],
) -> Result<(), String> {
    let (a, b) = match (
        a.and_then(|c| c.structure(0)),
        b.and_then(|c| c.structure(0)),
    ) {
        (None, None) => return Ok(()),
        (Some(_), None) => return Err(format!("has no {what} stream")),
        (None, Some(_)) => return Err(format!("has a {what} stream the first input lacks")),
        (Some(a), Some(b)) => (a, b),
    };
    for (field, label) in fields {
        let (x, y) = (a.value(*field).ok(), b.value(*field).ok());
        let equal = match (x, y) {
            (Some(x), Some(y)) => x.compare(y) == Some(std::cmp::Ordering::Equal),
            (None, None) => true,
            _ => false,
        };
        if !equal {
            return Err(format!(
                "{what} {label} differs: {} vs {}",
                show(y),
                show(x)
            ));
        }
    }
    Ok(())
}

fn show(value: Option<&glib::SendValue>) -> String {
    value.map_or_else(
        || "unset".into(),
        |v| v.serialize().map_or_else(|_| "?".into(), |s| s.to_string()),
    )
}

/// The running pipeline: per input filesrc ! qtdemux, whose pads feed
/// parser ! concat (one concat per stream kind) ! queue ! mp4mux ! filesink.
struct Job {
    /// Furthest stream time (ns) each input's demuxer reached.
    reached: Vec<Arc<AtomicU64>>,
}

impl Job {
    fn build(
        session: &mut Session,
        inputs: &[&Path],
        plan: &Plan,
        output: &Path,
    ) -> Result<Self, MediaError> {
        let mux = mp4_mux()?;
        let sink = file_sink(output)?;
        add_chain(session.pipeline(), &[mux.clone(), sink.clone()])?;
        session.add_output(output);
        session.monitor().watch(&static_pad(&sink, "sink")?);
        let joins = plan
            .kinds
            .iter()
            .map(|kind| Join::build(session, &mux, *kind, inputs.len()))
            .collect::<Result<Vec<_>, _>>()?;
        let joins = Arc::new(joins);
        let mut reached = Vec::new();
        let mut start = gst::ClockTime::ZERO;
        for (index, (input, duration)) in inputs.iter().zip(&plan.durations).enumerate() {
            let slot = Slot { index, start };
            reached.push(add_input(session, input, slot, &joins)?);
            start += *duration;
        }
        Ok(Self { reached })
    }

    fn check_complete(
        &self,
        inputs: &[&Path],
        durations: &[gst::ClockTime],
    ) -> Result<(), MediaError> {
        for ((input, reached), duration) in inputs.iter().zip(&self.reached).zip(durations) {
            let reached = gst::ClockTime::from_nseconds(reached.load(Ordering::Relaxed));
            if reached + TRUNCATION_TOLERANCE < *duration {
                return Err(MediaError::bad_input(
                    input,
                    format!(
                        "media ends after {:.2}s instead of {:.2}s; the file looks truncated",
                        reached.seconds_f64(),
                        duration.seconds_f64()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// One `concat` element and its input pads, requested up front because
/// concat plays its sink pads in the order they were created.
struct Join {
    kind: Kind,
    pads: Vec<gst::Pad>,
}

impl Join {
    fn build(
        session: &Session,
        mux: &gst::Element,
        kind: Kind,
        inputs: usize,
    ) -> Result<Self, MediaError> {
        // concat's own base adjustment shifts each stream by that stream's
        // length, so when an input's audio outlasts its video (AAC priming
        // makes it ~21 ms longer) audio drifts later at every join. Instead
        // every stream of an input is offset by where the input starts.
        let concat = make(gst::ElementFactory::make("concat").property("adjust-base", false))?;
        let chain = [concat, mux_queue()?];
        add_chain(session.pipeline(), &chain)?;
        link_to_mux(&chain, mux, kind.mux_pad_template())?;
        let (concat, queue) = ends(&chain)?;
        session.monitor().track(&static_pad(queue, "src")?);
        let pads = (0..inputs)
            .map(|_| {
                concat
                    .request_pad_simple("sink_%u")
                    .ok_or_else(|| MediaError::Pipeline("concat has no sink pad".into()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { kind, pads })
    }
}

/// Where one input goes: its concat pad and its start in the output.
#[derive(Clone, Copy, Debug)]
struct Slot {
    index: usize,
    start: gst::ClockTime,
}

/// Adds filesrc ! qtdemux for one input; its pads are linked to the joins
/// as the demuxer finds them.
fn add_input(
    session: &mut Session,
    input: &Path,
    slot: Slot,
    joins: &Arc<Vec<Join>>,
) -> Result<Arc<AtomicU64>, MediaError> {
    let demux = session.add_mp4_input(input)?;
    let reached = Arc::new(AtomicU64::new(0));
    let linker = Linker {
        joins: Arc::clone(joins),
        slot,
        reached: Arc::clone(&reached),
        input: input.to_path_buf(),
    };
    session.on_new_pad(&demux, move |pipeline, pad| linker.link(pipeline, pad));
    Ok(reached)
}

struct Linker {
    joins: Arc<Vec<Join>>,
    slot: Slot,
    reached: Arc<AtomicU64>,
    input: std::path::PathBuf,
}

impl Linker {
    fn link(&self, pipeline: &gst::Pipeline, pad: &gst::Pad) -> Result<(), MediaError> {
        let join = Kind::of(pad).and_then(|kind| self.joins.iter().find(|j| j.kind == kind));
        let target = join
            .and_then(|j| j.pads.get(self.slot.index))
            .filter(|p| !p.is_linked());
        let (Some(join), Some(target)) = (join, target) else {
            return discard(pipeline, pad);
        };
        // Parsers only check framing and complete the caps; the packets
        // themselves pass through unchanged.
        let parser = element(match join.kind {
            Kind::Video => "h264parse",
            Kind::Audio => "aacparse",
        })?;
        add_live_chain(pipeline, std::slice::from_ref(&parser))?;
        let src = static_pad(&parser, "src")?;
        src.set_offset(i64::try_from(self.slot.start.nseconds()).unwrap_or(i64::MAX));
        src.link(target)
            .map_err(|e| MediaError::bad_input(&self.input, format!("stream does not fit: {e}")))?;
        self.watch_reach(pad);
        link_pad_to_chain(pad, &[parser])
    }

    /// Remembers how far this input got, to detect truncated files.
    fn watch_reach(&self, pad: &gst::Pad) {
        let reached = Arc::clone(&self.reached);
        pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            let end = info.buffer().and_then(|b| {
                let pts = b.pts()?;
                let event = pad.sticky_event::<gst::event::Segment>(0)?;
                let segment = event.segment().downcast_ref::<gst::ClockTime>()?;
                let time = segment.to_stream_time(pts)?;
                Some(time + b.duration().unwrap_or(gst::ClockTime::ZERO))
            });
            if let Some(end) = end {
                reached.fetch_max(end.nseconds(), Ordering::Relaxed);
            }
            gst::PadProbeReturn::Ok
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::media::probe::probe;
    use crate::media::runner::CancelFlag;
    use crate::media::testutil::{Packet, clip, packets};

    fn run_concat(inputs: &[&Path], output: &Path) -> (Result<(), MediaError>, Vec<f64>) {
        let cancel = CancelFlag::default();
        let mut progress = Vec::new();
        let mut record = |p| progress.push(p);
        let mut control = Control::new(&cancel, Duration::from_secs(10), &mut record);
        let result = concat(inputs, output, &mut control);
        (result, progress)
    }

    #[test]
    fn concatenates_by_copying_packets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = clip(dir.path(), "a.mp4", 2.0, (320, 240), true);
        let b = clip(dir.path(), "b.mp4", 1.0, (320, 240), true);
        let c = clip(dir.path(), "c.mp4", 1.5, (320, 240), true);
        let output = dir.path().join("out.mp4");
        let inputs = [a.as_path(), b.as_path(), c.as_path()];
        assert_eq!(copy_compatible(&inputs).expect("probe"), Ok(()));

        let (result, progress) = run_concat(&inputs, &output);
        result.expect("concat");

        let info = probe(&output).expect("probe output");
        let sum: f64 = inputs
            .iter()
            .map(|i| probe(i).expect("probe").duration_seconds)
            .sum();
        eprintln!("inputs sum {sum}, output {}", info.duration_seconds);
        assert!(
            (info.duration_seconds - sum).abs() < 0.034,
            "{info:?} vs {sum}"
        );
        assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
        assert_eq!(progress.last(), Some(&1.0));
        let want: Vec<u64> = inputs
            .iter()
            .flat_map(|i| packets(i, "video"))
            .map(|p| p.hash)
            .collect();
        let got = packets(&output, "video");
        assert_eq!(got.iter().map(|p| p.hash).collect::<Vec<_>>(), want);
        // Frames keep coming 1/30 s apart; at a join the step may grow by
        // less than a frame (these inputs' audio outlasts their video).
        let frame = gst::ClockTime::from_nseconds(1_000_000_000 / 30);
        for pair in got.windows(2) {
            let step = pair[1].pts.expect("pts") - pair[0].pts.expect("pts");
            let ms = gst::ClockTime::from_mseconds(1);
            assert!(step + ms >= frame && step < frame * 2, "{pair:?}");
        }
        assert_joins_in_sync(&inputs, &got, &packets(&output, "audio"));
        let audio: Vec<u64> = inputs
            .iter()
            .flat_map(|i| packets(i, "audio"))
            .map(|p| p.hash)
            .collect();
        assert_eq!(
            packets(&output, "audio")
                .iter()
                .map(|p| p.hash)
                .collect::<Vec<_>>(),
            audio
        );
    }

    /// Each input's first video and first audio packet start together.
    fn assert_joins_in_sync(inputs: &[&Path], video: &[Packet], audio: &[Packet]) {
        let (mut v, mut a) = (0, 0);
        for input in inputs {
            let (pv, pa) = (video[v].pts.expect("pts"), audio[a].pts.expect("pts"));
            assert!(
                pv.absdiff(pa) < gst::ClockTime::from_mseconds(1),
                "{input:?}: {pv} vs {pa}"
            );
            v += packets(input, "video").len();
            a += packets(input, "audio").len();
        }
    }

    #[test]
    fn concatenates_video_only_inputs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = clip(dir.path(), "a.mp4", 1.0, (160, 120), false);
        let b = clip(dir.path(), "b.mp4", 1.0, (160, 120), false);
        let output = dir.path().join("out.mp4");

        run_concat(&[&a, &b], &output).0.expect("concat");

        let info = probe(&output).expect("probe output");
        assert!(info.audio.is_none(), "{info:?}");
        assert!((info.duration_seconds - 2.0).abs() < 0.034, "{info:?}");
    }

    #[test]
    fn cancelled_concat_leaves_no_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = clip(dir.path(), "a.mp4", 1.0, (160, 120), true);
        let output = dir.path().join("out.mp4");
        let cancel = CancelFlag::new(std::sync::atomic::AtomicBool::new(true));
        let mut progress = Vec::new();
        let mut record = |p| progress.push(p);
        let mut control = Control::new(&cancel, Duration::from_secs(10), &mut record);

        let result = concat(&[&a, &a], &output, &mut control);

        assert!(matches!(result, Err(MediaError::Cancelled)), "{result:?}");
        assert!(!output.exists());
        assert!(!progress.contains(&1.0), "{progress:?}");
    }

    #[test]
    fn incompatible_inputs_name_the_odd_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = clip(dir.path(), "a.mp4", 1.0, (320, 240), true);
        let b = clip(dir.path(), "b.mp4", 1.0, (320, 240), true);
        let wide = clip(dir.path(), "wide.mp4", 1.0, (640, 360), true);
        let mute = clip(dir.path(), "mute.mp4", 1.0, (320, 240), false);

        let why = copy_compatible(&[&a, &b, &wide])
            .expect("probe")
            .expect_err("size differs");
        assert!(why.contains("wide.mp4") && why.contains("width"), "{why}");
        let why = copy_compatible(&[&a, &mute])
            .expect("probe")
            .expect_err("audio differs");
        assert!(
            why.contains("mute.mp4") && why.contains("no audio"),
            "{why}"
        );

        let output = dir.path().join("out.mp4");
        let (result, _) = run_concat(&[&a, &wide], &output);
        let err = result.expect_err("must refuse");
        assert!(
            matches!(&err, MediaError::BadInput { input, .. } if input.ends_with("wide.mp4")),
            "{err:?}"
        );
        assert!(!output.exists());
    }
}
