//! Frame-accurate trimming of H.264/AAC MP4 files that re-encodes as little
//! as possible ("smart cut"). Only the partial GOP at the start of the cut,
//! from the requested frame up to the next keyframe, is decoded and
//! re-encoded; every video packet from that keyframe to the end is copied
//! unchanged. Audio is re-encoded (see [`trim_smart`]).
//!
//! The two parts of the video end up in one track with one sample entry:
//! the head is encoded with SPS/PPS ids the source does not use, and the
//! track's `avcC` lists both the source's and the head's parameter sets.
//! Each slice names the PPS it was coded with, so a decoder switches from
//! the head's parameter sets to the source's at the copied keyframe (an
//! IDR) without any in-band parameter sets and without touching a copied
//! byte.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use gst::prelude::*;
use gstreamer as gst;

use crate::media::MediaError;
use crate::media::elements::{
    Kind, aac_encoder, add_chain, add_live_chain, capsfilter, discard, element, ends, file_sink,
    h264_encoder, link_pad_to_chain, link_to_mux, make, mp4_mux, mux_queue, pipeline_error,
    static_pad,
};
use crate::media::pipeline::{TranscodeRequest, seek_element, transcode, validate_range};
use crate::media::probe::{StreamCaps, codec_name, stream_caps};
use crate::media::runner::{self, Control, Gate, Session};
use crate::media::trim::{keyframes_near, trim_copy_at};

/// A start this close to a keyframe counts as that keyframe (as in
/// [`trim_copy`]).
const KEYFRAME_TOLERANCE: f64 = 0.001;
/// x264 quality for the re-encoded head. It re-compresses frames that were
/// already lossy and sits right before untouched source frames, so it is
/// kept visually lossless (ffmpeg's usual "transparent" CRF) rather than
/// the default 23: a visible quality step at the keyframe would give the
/// cut away, and the head is at most one GOP long.
const HEAD_QUALITY: u32 = 18;
/// Profiles x264 (8-bit 4:2:0) can encode the head in.
const HEAD_PROFILES: &[&str] = &["constrained-baseline", "baseline", "main", "high"];
/// Name of the bus message that says a demuxer has exposed all streams.
const PADS_READY: &str = "reelmesh-smartcut-pads-ready";
/// Name of the bus message that says the copied keyframe has been read
/// (and its reorder delay measured).
const TAIL_READY: &str = "reelmesh-smartcut-tail-ready";
/// [`Wiring::reorder`] before the copied keyframe has been seen.
const UNKNOWN: u64 = u64::MAX;

/// What [`trim_smart`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct SmartCut {
    /// Seconds of video decoded and encoded again (start of the cut up to
    /// the first keyframe inside it).
    pub reencoded_seconds: f64,
    /// Seconds of video whose packets were copied unchanged.
    pub copied_seconds: f64,
    /// Input time of the keyframe copying started at, if any was copied.
    pub copied_from: Option<f64>,
}

/// Blocking: writes `range` (seconds) of `input`, an H.264/AAC MP4, to a
/// fast-start MP4 at `output`, starting exactly at the frame shown at
/// `range.0`. The end is clamped to the input's end and is exclusive, as
/// in [`trim_copy`].
///
/// - A start on a keyframe is a pure packet copy ([`trim_copy`]).
/// - A start between keyframes re-encodes the video up to the next
///   keyframe (x264, same profile, no B-frames) and copies the rest.
/// - When no keyframe falls inside the range, or the input is not
///   something this can splice (not AVC-in-MP4, a profile x264 cannot
///   match such as High 10, non-AAC audio), the whole range is re-encoded
///   with [`transcode`]; [`SmartCut`] then reports nothing copied.
///
/// Audio is always decoded and re-encoded to AAC when not on the pure
/// copy path: it costs little next to video, and AAC packets (1024
/// samples, ~21 ms) cannot start at an arbitrary frame time, nor decode
/// cleanly without the packet before the cut, so copying would put audio
/// up to a packet out of sync with the frame-exact video.
///
/// Caveats:
/// - The copied keyframe must be an IDR that later frames do not reach
///   across (closed GOP, as x264 and most cameras write); with open GOPs
///   the leading B-frames after it would predict from re-encoded frames.
/// - B-frames in the copied part are fine (the head's decode times are
///   moved before the keyframe's), but as with [`trim_copy`] frames just
///   before a mid-GOP end may refer to a dropped later frame.
/// - A start less than the source's reorder delay (a frame or two) after
///   the beginning of the file cannot shift the head's decode times below
///   zero and may lose a frame.
/// - A head of a single frame followed by an IDR with the same
///   `idr_pic_id` is technically non-conforming; decoders accept it.
pub fn trim_smart(
    input: &Path,
    output: &Path,
    range: (f64, f64),
    control: &mut Control<'_>,
) -> Result<SmartCut, MediaError> {
    validate_range(input, Some(range))?;
    let keys = keyframes_near(input, range.0)?;
    trim_smart_at(input, output, range, &keys, control)
}

/// [`trim_smart`] with the keyframes around the start already known (from
/// [`keyframes_near`] or [`crate::media::keyframe_times`]).
pub fn trim_smart_at(
    input: &Path,
    output: &Path,
    range: (f64, f64),
    keys: &[f64],
    control: &mut Control<'_>,
) -> Result<SmartCut, MediaError> {
    validate_range(input, Some(range))?;
    let caps = stream_caps(input)?;
    let end = clamp_end(input, range, &caps)?;
    let start = range.0;
    match route(start, end, keys) {
        Route::Copy(key) => {
            trim_copy_at(input, output, (key, end), keys, control)?;
            Ok(cut(0.0, end - key, Some(key)))
        }
        Route::Split(key) => match Splice::plan(input, &caps, start, key, end) {
            Ok(splice) => {
                splice.run(output, control)?;
                Ok(cut(key - start, end - key, Some(key)))
            }
            Err(why) => {
                tracing::info!(input = %input.display(), "smart cut impossible, re-encoding: {why}");
                reencode(input, output, (start, end), control)
            }
        },
        Route::Reencode => reencode(input, output, (start, end), control),
    }
}

fn cut(reencoded_seconds: f64, copied_seconds: f64, copied_from: Option<f64>) -> SmartCut {
    SmartCut {
        reencoded_seconds,
        copied_seconds,
        copied_from,
    }
}

/// The end of the cut within the input, or an error if the start is past it.
fn clamp_end(input: &Path, range: (f64, f64), caps: &StreamCaps) -> Result<f64, MediaError> {
    let Some(duration) = caps.duration.map(gst::ClockTime::seconds_f64) else {
        return Ok(range.1);
    };
    if range.0 >= duration {
        return Err(MediaError::bad_input(
            input,
            format!(
                "trim start {:.2}s is past the end of the input ({duration:.2}s)",
                range.0
            ),
        ));
    }
    Ok(range.1.min(duration))
}

fn reencode(
    input: &Path,
    output: &Path,
    range: (f64, f64),
    control: &mut Control<'_>,
) -> Result<SmartCut, MediaError> {
    let req = TranscodeRequest {
        range: Some(range),
        ..TranscodeRequest::new(input, output)
    };
    transcode(&req, control)?;
    Ok(cut(range.1 - range.0, 0.0, None))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Route {
    /// The start is a keyframe: copy everything.
    Copy(f64),
    /// Re-encode up to this keyframe, copy from it.
    Split(f64),
    /// No keyframe inside the range: nothing can be copied.
    Reencode,
}

fn route(start: f64, end: f64, keys: &[f64]) -> Route {
    if let Some(key) = keys
        .iter()
        .find(|k| (*k - start).abs() <= KEYFRAME_TOLERANCE)
    {
        return Route::Copy(*key);
    }
    match keys.iter().find(|k| **k > start && **k < end) {
        Some(key) => Route::Split(*key),
        None => Route::Reencode,
    }
}

/// A planned smart cut: what to read, where to switch, and the track's
/// combined parameter sets.
#[derive(Debug)]
struct Splice<'p> {
    input: &'p Path,
    start: f64,
    key: f64,
    end: f64,
    profile: String,
    source: Avcc,
    /// SPS/PPS id for the head, unused by the source.
    head_id: u32,
    audio: bool,
}

impl<'p> Splice<'p> {
    /// Checks the input can be spliced; `Err` says why not.
    fn plan(
        input: &'p Path,
        caps: &StreamCaps,
        start: f64,
        key: f64,
        end: f64,
    ) -> Result<Self, String> {
        let video = caps
            .video
            .as_ref()
            .and_then(|c| c.structure(0))
            .ok_or("no video stream")?;
        if video.name() != "video/x-h264" || video.get::<&str>("stream-format") != Ok("avc") {
            return Err(format!("video is not AVC-in-MP4 H.264: {video}"));
        }
        let profile = video.get::<&str>("profile").map_err(|e| e.to_string())?;
        if !HEAD_PROFILES.contains(&profile) {
            return Err(format!("x264 cannot encode H.264 profile {profile}"));
        }
        let audio = caps.audio.as_ref().map(|c| codec_name(Some(c)));
        if audio.as_deref().is_some_and(|a| a != "aac") {
            return Err(format!("audio is {}, not AAC", audio.unwrap_or_default()));
        }
        let data = video
            .get::<gst::Buffer>("codec_data")
            .map_err(|e| e.to_string())?;
        let map = data.map_readable().map_err(|e| e.to_string())?;
        let source = Avcc::parse(map.as_slice()).ok_or("unreadable avcC")?;
        let head_id = source.free_id().ok_or("no free SPS/PPS id")?;
        Ok(Self {
            input,
            start,
            key,
            end,
            profile: profile.to_string(),
            source,
            head_id,
            audio: audio.is_some(),
        })
    }

    fn run(&self, output: &Path, control: &mut Control<'_>) -> Result<(), MediaError> {
        runner::run(control, |session| {
            let parts = self.build(session, output)?;
            session.set_state(gst::State::Paused)?;
            let mut ready = 0;
            session.wait_for(|msg| {
                ready += usize::from(is_pads_ready(msg));
                ready == parts.demuxers.len()
            })?;
            self.seek(&parts)?;
            // The head's decode times depend on the copied keyframe's, so
            // nothing flows until that keyframe has been looked at.
            if parts.reorder.load(Ordering::SeqCst) == UNKNOWN {
                session.wait_for(|msg| is_app_message(msg, TAIL_READY))?;
            }
            parts.gate.open();
            let span = seconds(self.end) - seconds(self.start);
            session.set_span(Some(span));
            session.play_to_eos()?;
            parts.check_linked(self.input)?;
            session.check_complete(self.input, Some(span))
        })
    }

    /// Three readers of the same file, each seeked to its own part:
    /// head video (decoded, re-encoded) and tail video (copied) meet in a
    /// `concat` in front of the muxer; audio has its own.
    fn build(&self, session: &mut Session, output: &Path) -> Result<Parts, MediaError> {
        let mux = mp4_mux()?;
        let sink = file_sink(output)?;
        add_chain(session.pipeline(), &[mux.clone(), sink.clone()])?;
        session.add_output(output);
        session.monitor().watch(&static_pad(&sink, "sink")?);
        let join = self.video_join(session, &mux)?;
        let gate = Arc::new(Gate::default());
        let linked = Arc::new(AtomicUsize::new(0));
        let wiring = Wiring {
            gate: Arc::clone(&gate),
            linked: Arc::clone(&linked),
            reorder: Arc::new(AtomicU64::new(UNKNOWN)),
        };
        let head = self.add_reader(session, &wiring, Branch::Head(join[0].clone()))?;
        let tail = Branch::Tail(join[1].clone(), self.offset(), seconds(self.key));
        let tail = self.add_reader(session, &wiring, tail)?;
        let mut demuxers = vec![head, tail];
        if self.audio {
            demuxers.push(self.add_reader(session, &wiring, Branch::Audio(mux.downgrade()))?);
        }
        Ok(Parts {
            demuxers,
            gate,
            linked,
            reorder: wiring.reorder,
        })
    }

    /// Running-time offset of the copied part: it follows the head.
    fn offset(&self) -> i64 {
        let offset = seconds(self.key) - seconds(self.start);
        i64::try_from(offset.nseconds()).unwrap_or(i64::MAX)
    }

    /// concat ! queue ! mp4mux, with the track's caps fixed to the merged
    /// parameter sets; returns concat's head and tail inputs, in order.
    fn video_join(
        &self,
        session: &Session,
        mux: &gst::Element,
    ) -> Result<[gst::Pad; 2], MediaError> {
        // Each part keeps its own timestamps; the tail's pad offset places
        // it after the head.
        let concat = make(gst::ElementFactory::make("concat").property("adjust-base", false))?;
        let chain = [concat.clone(), mux_queue()?];
        add_chain(session.pipeline(), &chain)?;
        link_to_mux(&chain, mux, Kind::Video.mux_pad_template())?;
        let (_, queue) = ends(&chain)?;
        session.monitor().track(&static_pad(queue, "src")?);
        let rewriter = CapsRewriter::new(self.source.clone(), Arc::clone(session.monitor()));
        rewriter.attach(&static_pad(&concat, "src")?);
        // concat plays its inputs in the order they were requested.
        let pad = || {
            concat
                .request_pad_simple("sink_%u")
                .ok_or_else(|| MediaError::Pipeline("concat has no sink pad".into()))
        };
        Ok([pad()?, pad()?])
    }

    /// filesrc ! qtdemux whose first stream of the branch's kind is linked
    /// to the branch (held at the gate until seeked); all else discarded.
    fn add_reader(
        &self,
        session: &mut Session,
        wiring: &Wiring,
        branch: Branch,
    ) -> Result<gst::Element, MediaError> {
        let demux = session.add_mp4_input(self.input)?;
        demux.connect_no_more_pads(|demux| post_app_message(demux, PADS_READY));
        let linker = Linker {
            branch,
            wiring: wiring.clone(),
            taken: AtomicBool::new(false),
            head: HeadEncoder {
                profile: self.profile.clone(),
                sps_id: self.head_id,
            },
            monitor: Arc::clone(session.monitor()),
        };
        session.on_new_pad(&demux, move |pipeline, pad| linker.link(pipeline, pad));
        Ok(demux)
    }

    fn seek(&self, parts: &Parts) -> Result<(), MediaError> {
        let accurate = gst::SeekFlags::FLUSH | gst::SeekFlags::ACCURATE;
        // Stops a nanosecond early: qtdemux also sends the frame starting
        // exactly at the stop time.
        let seeks = [
            (accurate, self.start, self.key - 1e-9),
            (gst::SeekFlags::FLUSH, self.key, self.end - 1e-9),
            (accurate, self.start, self.end - 1e-9),
        ];
        for (demux, (flags, from, to)) in parts.demuxers.iter().zip(seeks) {
            if !seek_element(demux, flags, from, Some(to)) {
                return Err(MediaError::bad_input(self.input, "input is not seekable"));
            }
        }
        Ok(())
    }
}

fn seconds(s: f64) -> gst::ClockTime {
    gst::ClockTime::from_seconds_f64(s)
}

fn is_pads_ready(msg: &gst::Message) -> bool {
    is_app_message(msg, PADS_READY)
}

fn is_app_message(msg: &gst::Message, name: &str) -> bool {
    msg.type_() == gst::MessageType::Application
        && msg.structure().is_some_and(|s| s.name() == name)
}

fn post_app_message(element: &gst::Element, name: &str) {
    let msg = gst::message::Application::builder(gst::Structure::new_empty(name))
        .src(element)
        .build();
    let _ = element.post_message(msg);
}

/// The running graph's handles.
struct Parts {
    /// Head, tail and (if any) audio demuxer, in that order.
    demuxers: Vec<gst::Element>,
    gate: Arc<Gate>,
    linked: Arc<AtomicUsize>,
    reorder: Arc<AtomicU64>,
}

impl Parts {
    /// A reader that never found its stream would leave a silent hole.
    fn check_linked(&self, input: &Path) -> Result<(), MediaError> {
        if self.linked.load(Ordering::SeqCst) == self.demuxers.len() {
            Ok(())
        } else {
            Err(MediaError::bad_input(
                input,
                "a stream vanished while cutting",
            ))
        }
    }
}

/// State every reader shares.
#[derive(Clone)]
struct Wiring {
    gate: Arc<Gate>,
    linked: Arc<AtomicUsize>,
    /// PTS - DTS (ns) of the copied keyframe: how far the source decodes
    /// ahead of display because of B-frames.
    reorder: Arc<AtomicU64>,
}

/// Where one reader's stream goes.
enum Branch {
    /// Decode and re-encode into concat's first input.
    Head(gst::Pad),
    /// Copy into concat's second input, shifted by the offset (ns); the
    /// copy starts at the keyframe at the given stream time.
    Tail(gst::Pad, i64, gst::ClockTime),
    /// Decode and re-encode into the muxer's audio input.
    Audio(gst::glib::WeakRef<gst::Element>),
}

impl Branch {
    fn kind(&self) -> Kind {
        match self {
            Branch::Head(_) | Branch::Tail(..) => Kind::Video,
            Branch::Audio(_) => Kind::Audio,
        }
    }
}

/// Links one demuxer's wanted stream as pads appear (streaming thread).
struct Linker {
    branch: Branch,
    wiring: Wiring,
    taken: AtomicBool,
    head: HeadEncoder,
    monitor: Arc<runner::Monitor>,
}

impl Linker {
    fn link(&self, pipeline: &gst::Pipeline, pad: &gst::Pad) -> Result<(), MediaError> {
        let wanted =
            Kind::of(pad) == Some(self.branch.kind()) && !self.taken.swap(true, Ordering::SeqCst);
        if !wanted {
            return discard(pipeline, pad);
        }
        self.monitor.watch(pad);
        match &self.branch {
            // Not gated: concat holds the tail until the head has ended and
            // the seek flushes whatever it read before, and the keyframe
            // must pass before the gate opens for the head.
            Branch::Tail(_, _, key) => measure_reorder(pad, *key, Arc::clone(&self.wiring.reorder)),
            _ => self.wiring.gate.block(pad),
        }
        match &self.branch {
            Branch::Head(target) => {
                let chain = self.head.chain()?;
                let (_, last) = ends(&chain)?;
                shift_dts(&static_pad(last, "src")?, Arc::clone(&self.wiring.reorder));
                link_through(pipeline, pad, &chain, target)?;
            }
            Branch::Tail(target, offset, _) => {
                // Packets go to concat as they are; only timing moves.
                // concat holds an input's thread (already at its segment
                // event) until the previous input ends; the queue lets the
                // demuxer hand over the keyframe before that.
                pad.set_offset(*offset);
                link_through(pipeline, pad, &[element("queue")?], target)?;
            }
            Branch::Audio(mux) => self.link_audio(pipeline, pad, mux)?,
        }
        self.wiring.linked.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn link_audio(
        &self,
        pipeline: &gst::Pipeline,
        pad: &gst::Pad,
        mux: &gst::glib::WeakRef<gst::Element>,
    ) -> Result<(), MediaError> {
        let mux = mux
            .upgrade()
            .ok_or_else(|| MediaError::Pipeline("muxer is gone".into()))?;
        let chain = [
            element("avdec_aac")?,
            element("audioconvert")?,
            element("audioresample")?,
            aac_encoder(None)?,
            mux_queue()?,
        ];
        add_live_chain(pipeline, &chain)?;
        link_to_mux(&chain, &mux, Kind::Audio.mux_pad_template())?;
        let (_, last) = ends(&chain)?;
        self.monitor.track(&static_pad(last, "src")?);
        link_pad_to_chain(pad, &chain)
    }
}

/// Records PTS - DTS of the first packet at or after `key` (stream time)
/// in `reorder` and announces it on the bus. Earlier packets are the ones
/// before the cut that the demuxer reads until the seek; the keyframe may
/// be seen before or after the seek, it is the same packet either way.
fn measure_reorder(pad: &gst::Pad, key: gst::ClockTime, reorder: Arc<AtomicU64>) {
    let early = gst::ClockTime::from_mseconds(1);
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(buffer) = info.buffer() else {
            return gst::PadProbeReturn::Ok;
        };
        let pts = buffer.pts();
        if pts
            .and_then(|pts| stream_time(pad, pts))
            .is_none_or(|t| t + early < key)
        {
            return gst::PadProbeReturn::Ok;
        }
        let delay = pts
            .zip(buffer.dts())
            .map_or(0, |(p, d)| p.saturating_sub(d).nseconds());
        reorder.store(delay, Ordering::SeqCst);
        if let Some(demux) = pad.parent_element() {
            post_app_message(&demux, TAIL_READY);
        }
        gst::PadProbeReturn::Remove
    });
}

fn stream_time(pad: &gst::Pad, pts: gst::ClockTime) -> Option<gst::ClockTime> {
    let event = pad.sticky_event::<gst::event::Segment>(0)?;
    let segment = event.segment().downcast_ref::<gst::ClockTime>()?;
    segment.to_stream_time(pts)
}

/// Moves the head's decode times earlier by the source's reorder delay.
/// The head has no B-frames, so its DTS equals its PTS, and its last frame
/// would decode at the same time as the copied keyframe (whose DTS is its
/// PTS minus that delay); mp4mux cannot store two samples at one decode
/// time and would drop one. Shifted, every head frame still decodes before
/// it is shown, and mp4mux handles the head's first DTS falling below zero
/// as it does for any B-frame stream.
fn shift_dts(pad: &gst::Pad, reorder: Arc<AtomicU64>) {
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let delay = reorder.load(Ordering::SeqCst);
        if delay == 0 || delay == UNKNOWN {
            return gst::PadProbeReturn::Ok;
        }
        if let Some(buffer) = info.buffer_mut() {
            let buffer = buffer.make_mut();
            if let Some(dts) = buffer.dts().or(buffer.pts()) {
                buffer.set_dts(dts.saturating_sub(gst::ClockTime::from_nseconds(delay)));
            }
        }
        gst::PadProbeReturn::Ok
    });
}

/// Adds `chain`, links `pad` into it and its end to `target`.
fn link_through(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    chain: &[gst::Element],
    target: &gst::Pad,
) -> Result<(), MediaError> {
    add_live_chain(pipeline, chain)?;
    let (_, last) = ends(chain)?;
    static_pad(last, "src")?
        .link(target)
        .map_err(pipeline_error)?;
    link_pad_to_chain(pad, chain)
}

/// How the head is re-encoded so the copied part can follow it.
#[derive(Debug, Clone)]
struct HeadEncoder {
    profile: String,
    sps_id: u32,
}

impl HeadEncoder {
    /// h264parse ! avdec_h264 ! videoconvert ! I420 ! x264enc ! caps.
    fn chain(&self) -> Result<Vec<gst::Element>, MediaError> {
        let encoder = h264_encoder(Some(HEAD_QUALITY), None)?;
        // Without B-frames every head frame decodes in display order, so
        // no head frame waits on (or reorders around) the copied keyframe.
        encoder.set_property("bframes", 0u32);
        // Own SPS/PPS ids, so the source's parameter sets stay valid for
        // the copied slices (x264 gives the PPS the SPS's id).
        encoder.set_property("option-string", format!("sps-id={}", self.sps_id));
        let raw = gst::Caps::builder("video/x-raw")
            .field("format", "I420")
            .build();
        // Same profile as the source, and the muxer's framing (AVC, whole
        // access units) with 4-byte lengths like the copied packets.
        let coded = gst::Caps::builder("video/x-h264")
            .field("stream-format", "avc")
            .field("alignment", "au")
            .field("profile", self.profile.as_str())
            .build();
        Ok(vec![
            element("h264parse")?,
            element("avdec_h264")?,
            element("videoconvert")?,
            capsfilter(raw)?,
            encoder,
            capsfilter(coded)?,
        ])
    }
}

/// Replaces the video caps reaching the muxer with one fixed set whose
/// `codec_data` holds the parameter sets of both parts. mp4mux writes one
/// sample entry per track and refuses a changed `codec_data` mid-stream;
/// with the same caps for both parts it sees no change at all.
struct CapsRewriter {
    source: Avcc,
    monitor: Arc<runner::Monitor>,
    merged: Mutex<Option<gst::Caps>>,
}

impl CapsRewriter {
    fn new(source: Avcc, monitor: Arc<runner::Monitor>) -> Arc<Self> {
        Arc::new(Self {
            source,
            monitor,
            merged: Mutex::default(),
        })
    }

    fn attach(self: &Arc<Self>, pad: &gst::Pad) {
        let this = Arc::clone(self);
        pad.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
            let caps = match &info.data {
                Some(gst::PadProbeData::Event(event)) => match event.view() {
                    gst::EventView::Caps(caps) => caps.caps_owned(),
                    _ => return gst::PadProbeReturn::Ok,
                },
                _ => return gst::PadProbeReturn::Ok,
            };
            match this.rewrite(&caps) {
                Ok(caps) => {
                    info.data = Some(gst::PadProbeData::Event(gst::event::Caps::new(&caps)));
                    gst::PadProbeReturn::Ok
                }
                Err(err) => {
                    this.monitor.fail(err);
                    gst::PadProbeReturn::Drop
                }
            }
        });
    }

    /// The first caps to pass are the head's (concat plays it first): they
    /// are merged with the source's parameter sets once and then reused.
    fn rewrite(&self, caps: &gst::Caps) -> Result<gst::Caps, MediaError> {
        let mut merged = self.merged.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(merged) = merged.as_ref() {
            return Ok(merged.clone());
        }
        let fresh = self.merge(caps)?;
        *merged = Some(fresh.clone());
        Ok(fresh)
    }

    fn merge(&self, caps: &gst::Caps) -> Result<gst::Caps, MediaError> {
        let bad = |why: &str| MediaError::Pipeline(format!("re-encoded head: {why}"));
        let head = caps
            .structure(0)
            .and_then(|s| s.get::<gst::Buffer>("codec_data").ok())
            .ok_or_else(|| bad("no codec_data"))?;
        let map = head.map_readable().map_err(pipeline_error)?;
        let head = Avcc::parse(map.as_slice()).ok_or_else(|| bad("unreadable avcC"))?;
        let combined = self
            .source
            .merged_with(&head)
            .ok_or_else(|| bad("NAL length size differs from the source's"))?;
        let mut caps = caps.clone();
        if let Some(s) = caps.make_mut().structure_mut(0) {
            s.set("codec_data", gst::Buffer::from_slice(combined.to_bytes()));
        }
        Ok(caps)
    }
}

/// An `AVCDecoderConfigurationRecord` (ISO/IEC 14496-15 `avcC`): the
/// header fields, the SPS and PPS NAL units, and any trailing extension
/// (chroma format / bit depth for High profiles), kept verbatim.
#[derive(Debug, Clone, PartialEq)]
struct Avcc {
    /// version, profile, compatibility, level, 0xFC | length size - 1.
    header: [u8; 5],
    sps: Vec<Vec<u8>>,
    pps: Vec<Vec<u8>>,
    extension: Vec<u8>,
}

impl Avcc {
    fn parse(data: &[u8]) -> Option<Self> {
        let header: [u8; 5] = data.get(..5)?.try_into().ok()?;
        let mut rest = data.get(5..)?;
        let sps_count = *rest.first()? & 0x1f;
        rest = &rest[1..];
        let sps = take_nals(&mut rest, sps_count)?;
        let pps_count = *rest.first()?;
        rest = &rest[1..];
        let pps = take_nals(&mut rest, pps_count)?;
        Some(Self {
            header,
            sps,
            pps,
            extension: rest.to_vec(),
        })
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.header.to_vec();
        // The SPS count has 5 bits; 3 reserved bits are set.
        out.push(0xe0 | (self.sps.len() as u8 & 0x1f));
        put_nals(&mut out, &self.sps);
        out.push(self.pps.len() as u8);
        put_nals(&mut out, &self.pps);
        out.extend_from_slice(&self.extension);
        out
    }

    fn length_size(&self) -> u8 {
        (self.header[4] & 0x03) + 1
    }

    /// An id in 0..32 (x264's SPS id range) no source SPS or PPS uses.
    fn free_id(&self) -> Option<u32> {
        let used: Vec<u32> = self
            .sps
            .iter()
            .filter_map(|nal| sps_id(nal))
            .chain(self.pps.iter().filter_map(|nal| pps_id(nal)))
            .collect();
        (0..32).find(|id| !used.contains(id))
    }

    /// This record with `head`'s parameter sets added. The header (profile,
    /// level) stays the source's, except that the level is raised if the
    /// head needs more; `None` if the NAL length sizes differ, as the
    /// copied packets' framing cannot change.
    fn merged_with(&self, head: &Avcc) -> Option<Avcc> {
        if self.length_size() != head.length_size() {
            return None;
        }
        let mut merged = self.clone();
        merged.header[3] = self.header[3].max(head.header[3]);
        merged.sps.extend(head.sps.iter().cloned());
        merged.pps.extend(head.pps.iter().cloned());
        (merged.sps.len() < 32 && merged.pps.len() < 256).then_some(merged)
    }
}

fn take_nals(data: &mut &[u8], count: u8) -> Option<Vec<Vec<u8>>> {
    (0..count)
        .map(|_| {
            let len = usize::from(u16::from_be_bytes(data.get(..2)?.try_into().ok()?));
            let nal = data.get(2..2 + len)?.to_vec();
            *data = &data[2 + len..];
            Some(nal)
        })
        .collect()
}

fn put_nals(out: &mut Vec<u8>, nals: &[Vec<u8>]) {
    for nal in nals {
        out.extend_from_slice(&(nal.len() as u16).to_be_bytes());
        out.extend_from_slice(nal);
    }
}

/// `seq_parameter_set_id`: after the NAL header, profile, constraint
/// flags and level bytes.
fn sps_id(nal: &[u8]) -> Option<u32> {
    BitReader::new(&unescape(nal.get(4..)?)).ue()
}

/// `pic_parameter_set_id`: the first field after the NAL header.
fn pps_id(nal: &[u8]) -> Option<u32> {
    BitReader::new(&unescape(nal.get(1..)?)).ue()
}

/// Drops emulation-prevention bytes (00 00 03 -> 00 00).
fn unescape(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    for &byte in data {
        if byte == 3 && out.ends_with(&[0, 0]) {
            continue;
        }
        out.push(byte);
    }
    out
}

/// Reads Exp-Golomb codes, most significant bit first.
struct BitReader<'a> {
    data: &'a [u8],
    bit: usize,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, bit: 0 }
    }

    fn bit(&mut self) -> Option<u32> {
        let byte = self.data.get(self.bit / 8)?;
        let value = (byte >> (7 - self.bit % 8)) & 1;
        self.bit += 1;
        Some(u32::from(value))
    }

    /// Unsigned Exp-Golomb: n zeros, a one, then n bits.
    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        let mut value = 0u32;
        for _ in 0..zeros {
            value = (value << 1) | self.bit()?;
        }
        Some((1u32 << zeros) - 1 + value)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::media::frames::{RgbFrame, rgb_frame_at};
    use crate::media::probe::probe;
    use crate::media::runner::CancelFlag;
    use crate::media::testutil::{Packet, clip, packets, run_launch};

    const FRAME: f64 = 1.0 / 30.0;
    const STALL: Duration = Duration::from_secs(10);

    fn smart(input: &Path, output: &Path, range: (f64, f64)) -> Result<SmartCut, MediaError> {
        let cancel = CancelFlag::default();
        let mut progress = Vec::new();
        let mut record = |p| progress.push(p);
        let mut control = Control::new(&cancel, STALL, &mut record);
        let result = trim_smart(input, output, range, &mut control);
        if result.is_ok() {
            assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
            assert_eq!(progress.last(), Some(&1.0));
        }
        result
    }

    fn hashes(packets: &[Packet]) -> Vec<u64> {
        packets.iter().map(|p| p.hash).collect()
    }

    /// Mean absolute difference per colour sample.
    fn distance(a: &RgbFrame, b: &RgbFrame) -> f64 {
        assert_eq!((a.width, a.height), (b.width, b.height));
        let sum: u64 = a
            .data
            .iter()
            .zip(&b.data)
            .map(|(x, y)| u64::from(x.abs_diff(*y)))
            .sum();
        sum as f64 / a.data.len() as f64
    }

    /// The frame shown at `time` (just past its start, so rounding cannot
    /// pick the previous one).
    fn frame(path: &Path, time: f64) -> RgbFrame {
        rgb_frame_at(path, time + 0.001, STALL).expect("frame")
    }

    /// Decodes every stream of `path` to the end; any decoder error fails
    /// the run. Returns the number of video frames.
    fn decoded_frames(path: &Path, audio: bool) -> usize {
        let audio = if audio {
            "d. ! queue ! audio/x-raw ! fakesink sync=false"
        } else {
            ""
        };
        let launch = format!(
            "filesrc location=\"{}\" ! decodebin name=d d. ! queue ! video/x-raw ! fakesink name=sink sync=false {audio}",
            path.display()
        );
        let count = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&count);
        run_launch(&launch, move |_, _| {
            seen.fetch_add(1, Ordering::Relaxed);
        });
        count.load(Ordering::Relaxed)
    }

    #[test]
    fn reencodes_the_partial_gop_and_copies_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = clip(dir.path(), "in.mp4", 6.0, (320, 240), true);
        let output = dir.path().join("out.mp4");

        let cut = smart(&input, &output, (1.5, 5.0)).expect("smart cut");

        assert!((cut.reencoded_seconds - 0.5).abs() < 1e-6, "{cut:?}");
        assert!((cut.copied_seconds - 3.0).abs() < 1e-6, "{cut:?}");
        let info = probe(&output).expect("probe output");
        assert_eq!(info.video.as_ref().map(|v| v.codec.as_str()), Some("h264"));
        assert_eq!(info.audio.as_ref().map(|a| a.codec.as_str()), Some("aac"));
        assert!((info.duration_seconds - 3.5).abs() <= FRAME, "{info:?}");
        // Frames 45..60 are new, 60..150 are the source's packets.
        let source = packets(&input, "video");
        let got = packets(&output, "video");
        assert_eq!(got.len(), 105);
        assert_eq!(hashes(&got[15..]), hashes(&source[60..150]));
        assert!(got[0].keyframe && got[15].keyframe);
        assert_eq!(got[0].pts, Some(gst::ClockTime::ZERO));
        assert_eq!(decoded_frames(&output, true), 105);
    }

    /// A 6 s clip whose video has B-frames (decoded out of order), with
    /// the fixtures' 2 s keyframe interval.
    fn clip_with_b_frames(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("bframes.mp4");
        let launch = format!(
            "videotestsrc num-buffers=180 horizontal-speed=4 ! video/x-raw,width=320,height=240,framerate=30/1 \
             ! x264enc bframes=2 key-int-max=60 speed-preset=superfast ! video/x-h264,profile=high \
             ! queue ! mp4mux faststart=true ! filesink location=\"{}\"",
            path.display()
        );
        crate::media::init().expect("init");
        let pipeline = gst::parse::launch(&launch).expect("parse");
        crate::media::testutil::play_to_eos(&pipeline, &launch);
        path
    }

    #[test]
    fn b_frames_in_the_copied_part_keep_every_frame() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = clip_with_b_frames(dir.path());
        let output = dir.path().join("out.mp4");

        smart(&input, &output, (1.5, 4.0)).expect("smart cut");

        // Sorted by display time: demuxers hand packets out in decode order.
        let mut source = packets(&input, "video");
        let mut got = packets(&output, "video");
        source.sort_by_key(|p| p.pts);
        got.sort_by_key(|p| p.pts);
        assert_eq!(got.len(), 75);
        assert_eq!(hashes(&got[15..]), hashes(&source[60..120]));
        // With the head's decode times colliding with the keyframe's,
        // mp4mux would lose a frame here.
        assert_eq!(decoded_frames(&output, false), 75);
        assert_eq!(distance(&frame(&output, 0.5), &frame(&input, 2.0)), 0.0);
    }

    #[test]
    fn first_frame_is_the_requested_one_and_the_switch_is_seamless() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = clip(dir.path(), "in.mp4", 4.0, (320, 240), false);
        let output = dir.path().join("out.mp4");

        smart(&input, &output, (1.5, 3.0)).expect("smart cut");

        // The test pattern scrolls 4 px a frame, so neighbours differ a lot
        // more than a re-encode of the right frame does.
        let first = frame(&output, 0.0);
        let right = distance(&first, &frame(&input, 1.5));
        let before = distance(&first, &frame(&input, 1.5 - FRAME));
        let after = distance(&first, &frame(&input, 1.5 + FRAME));
        assert!(right * 3.0 < before.min(after), "{right} {before} {after}");
        // The copied keyframe decodes exactly as in the input.
        assert_eq!(distance(&frame(&output, 0.5), &frame(&input, 2.0)), 0.0);
        let last_head = distance(&frame(&output, 0.5 - FRAME), &frame(&input, 2.0 - FRAME));
        assert!(last_head < right.max(1.0) * 2.0, "{last_head}");
    }

    #[test]
    fn a_keyframe_start_is_a_pure_copy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = clip(dir.path(), "in.mp4", 5.0, (160, 120), true);
        let output = dir.path().join("out.mp4");

        let cut = smart(&input, &output, (2.0, 4.0)).expect("copy");

        assert_eq!(cut.reencoded_seconds, 0.0);
        assert_eq!(cut.copied_from, Some(2.0));
        let got = packets(&output, "video");
        assert_eq!(hashes(&got), hashes(&packets(&input, "video")[60..120]));
    }

    #[test]
    fn a_range_without_a_keyframe_is_reencoded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = clip(dir.path(), "in.mp4", 3.0, (160, 120), true);
        let output = dir.path().join("out.mp4");

        let cut = smart(&input, &output, (0.5, 1.5)).expect("re-encode");

        assert_eq!((cut.copied_seconds, cut.copied_from), (0.0, None));
        let info = probe(&output).expect("probe output");
        assert!((info.duration_seconds - 1.0).abs() <= FRAME, "{info:?}");
    }

    #[test]
    fn the_end_is_clamped_to_the_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = clip(dir.path(), "in.mp4", 3.0, (160, 120), false);
        let output = dir.path().join("out.mp4");

        let cut = smart(&input, &output, (1.0, 10.0)).expect("smart cut");

        assert!((cut.copied_seconds - 1.0).abs() < 0.01, "{cut:?}");
        let info = probe(&output).expect("probe output");
        assert!((info.duration_seconds - 2.0).abs() <= FRAME, "{info:?}");
        assert_eq!(decoded_frames(&output, false), 60);
    }

    #[test]
    fn cancel_removes_the_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = clip(dir.path(), "in.mp4", 3.0, (160, 120), true);
        let output = dir.path().join("out.mp4");
        let cancel = CancelFlag::new(AtomicBool::new(true));
        let mut progress = Vec::new();
        let mut record = |p| progress.push(p);
        let mut control = Control::new(&cancel, STALL, &mut record);

        let result = trim_smart(&input, &output, (1.0, 3.0), &mut control);

        assert!(matches!(result, Err(MediaError::Cancelled)), "{result:?}");
        assert!(!output.exists());
        assert!(!progress.contains(&1.0), "{progress:?}");
    }

    #[test]
    fn bad_ranges_are_bad_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = clip(dir.path(), "in.mp4", 2.0, (160, 120), false);
        let output = dir.path().join("out.mp4");

        for range in [(1.0, 0.5), (-1.0, 1.0), (5.0, 6.0)] {
            let err = smart(&input, &output, range).expect_err("bad range");
            assert!(
                matches!(err, MediaError::BadInput { .. }),
                "{range:?}: {err:?}"
            );
            assert!(!output.exists());
        }
    }

    #[test]
    fn avcc_round_trips_and_merges_with_distinct_ids() {
        // SPS/PPS as x264 writes them with sps-id=3.
        let sps = vec![0x67, 0x4d, 0x40, 0x15, 0x25, 0x90, 0x14];
        let pps = vec![0x68, 0x21, 0x2b, 0xcc, 0xb2];
        assert_eq!((sps_id(&sps), pps_id(&pps)), (Some(3), Some(3)));
        let source = Avcc {
            header: [1, 0x4d, 0x40, 0x15, 0xff],
            sps: vec![vec![0x67, 0x4d, 0x40, 0x15, 0x80]],
            pps: vec![vec![0x68, 0xc0]],
            extension: vec![],
        };
        assert_eq!(Avcc::parse(&source.to_bytes()), Some(source.clone()));
        assert_eq!(source.free_id(), Some(1));
        let head = Avcc {
            header: [1, 0x4d, 0x40, 0x1e, 0xff],
            sps: vec![sps],
            pps: vec![pps],
            extension: vec![],
        };
        let merged = source.merged_with(&head).expect("merge");
        assert_eq!(merged.header[3], 0x1e);
        assert_eq!((merged.sps.len(), merged.pps.len()), (2, 2));
        assert_eq!(Avcc::parse(&merged.to_bytes()), Some(merged));
        let short = Avcc {
            header: [1, 0x4d, 0x40, 0x1e, 0xfd],
            ..head
        };
        assert_eq!(source.merged_with(&short), None);
    }
}
