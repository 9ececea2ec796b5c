//! Test-only helpers shared by the operation tests: a quiet [`Control`],
//! reading a file's encoded packets straight from qtdemux (to prove
//! stream copies are byte-identical) and grabbing decoded luma planes (to
//! check pixels). They use throwaway launch pipelines on purpose, so the
//! code under test is not also the code that checks it.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::sync::{Arc, Mutex};

use gst::prelude::*;
use gstreamer as gst;

use crate::media::testsrc::{TestClip, fixtures};

/// One encoded buffer as stored in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Packet {
    pub(crate) hash: u64,
    pub(crate) pts: Option<gst::ClockTime>,
    pub(crate) keyframe: bool,
}

pub(crate) fn clip(
    dir: &Path,
    name: &str,
    seconds: f64,
    size: (u32, u32),
    audio: bool,
) -> std::path::PathBuf {
    let spec = TestClip {
        seconds,
        width: size.0,
        height: size.1,
        audio,
        ..TestClip::default()
    };
    fixtures::clip(dir, name, &spec)
}

/// Runs `launch` to EOS, calling `on_buffer` for each buffer reaching the
/// fakesink named "sink".
pub(crate) fn run_launch(
    launch: &str,
    on_buffer: impl Fn(&gst::Pad, &gst::BufferRef) + Send + Sync + 'static,
) {
    crate::media::init().expect("init");
    let pipeline = gst::parse::launch(launch)
        .expect("parse")
        .downcast::<gst::Pipeline>()
        .expect("pipeline");
    let pad = pipeline
        .by_name("sink")
        .and_then(|s| s.static_pad("sink"))
        .expect("sink pad");
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        if let Some(buffer) = info.buffer() {
            on_buffer(pad, buffer);
        }
        gst::PadProbeReturn::Ok
    });
    play_to_eos(pipeline.upcast_ref(), launch);
}

/// Plays `pipeline` to its end (a minute at most), failing the test if it
/// errors; `what` names it in the failure.
pub(crate) fn play_to_eos(pipeline: &gst::Element, what: &str) {
    pipeline.set_state(gst::State::Playing).expect("play");
    let msg = pipeline
        .bus()
        .expect("bus")
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(60),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("pipeline finished");
    pipeline.set_state(gst::State::Null).expect("stop");
    assert_eq!(msg.type_(), gst::MessageType::Eos, "{what}: {msg:?}");
}

/// Encoded packets of the first `stream` ("video" or "audio") of an MP4,
/// as qtdemux hands them out, with PTS in stream time.
pub(crate) fn packets(path: &Path, stream: &str) -> Vec<Packet> {
    let launch = format!(
        "filesrc location=\"{}\" ! qtdemux name=d d.{stream}_0 ! fakesink name=sink sync=false",
        path.display()
    );
    let found = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&found);
    run_launch(&launch, move |pad, buffer| {
        let map = buffer.map_readable().expect("readable");
        let mut hasher = DefaultHasher::new();
        map.as_slice().hash(&mut hasher);
        sink.lock().expect("lock").push(Packet {
            hash: hasher.finish(),
            pts: buffer.pts().and_then(|pts| stream_time(pad, pts)),
            keyframe: !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT),
        });
    });
    // Taken rather than unwrapped: the pad probe holding the other Arc is
    // dropped with the pipeline, which a streaming thread may still hold.
    std::mem::take(&mut *found.lock().expect("lock"))
}

fn stream_time(pad: &gst::Pad, pts: gst::ClockTime) -> Option<gst::ClockTime> {
    let event = pad.sticky_event::<gst::event::Segment>(0)?;
    let segment = event.segment().downcast_ref::<gst::ClockTime>()?;
    segment.to_stream_time(pts)
}
