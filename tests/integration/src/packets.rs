//! Reads the encoded video packets of an MP4 as stored, straight from
//! qtdemux, so tests can prove a copy path left them byte for byte as they
//! were. Written apart from the render crate's own test helpers on
//! purpose: the code that copies should not also be the code that checks.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use gst::prelude::*;
use gstreamer as gst;

/// One stored video packet: a hash of its bytes and whether it is a keyframe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub hash: u64,
    pub keyframe: bool,
}

/// The video packets of `path`, in container (decode) order.
pub fn video_packets(path: &Path) -> anyhow::Result<Vec<Packet>> {
    gst::init()?;
    let launch = format!(
        "filesrc location=\"{}\" ! qtdemux ! video/x-h264 ! fakesink name=sink sync=false",
        path.display()
    );
    let pipeline = gst::parse::launch(&launch)?
        .downcast::<gst::Pipeline>()
        .map_err(|_| anyhow::anyhow!("not a pipeline"))?;
    let found = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&found);
    pipeline
        .by_name("sink")
        .and_then(|sink| sink.static_pad("sink"))
        .context("fakesink pad")?
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(buffer) = info.buffer() {
                sink.lock().expect("lock").push(packet(buffer));
            }
            gst::PadProbeReturn::Ok
        });
    pipeline.set_state(gst::State::Playing)?;
    let message = pipeline
        .bus()
        .context("bus")?
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(30),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .context("reading packets timed out")?;
    pipeline.set_state(gst::State::Null)?;
    anyhow::ensure!(
        message.type_() == gst::MessageType::Eos,
        "reading {}: {message:?}",
        path.display()
    );
    Ok(std::mem::take(&mut *found.lock().expect("lock")))
}

fn packet(buffer: &gst::BufferRef) -> Packet {
    let mut hasher = DefaultHasher::new();
    if let Ok(map) = buffer.map_readable() {
        map.as_slice().hash(&mut hasher);
    }
    Packet {
        hash: hasher.finish(),
        keyframe: !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT),
    }
}
