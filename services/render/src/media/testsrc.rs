//! Generates synthetic H.264/AAC MP4 clips (scrolling colour bars plus a
//! 440 Hz tone) for tests and demos, so no binary media has to be checked
//! in. Encoding uses x264's ultrafast preset: clips are for plumbing, not
//! for judging quality.

use std::path::Path;
use std::time::Duration;

use gst::prelude::*;
use gstreamer as gst;

use crate::media::MediaError;
use crate::media::pipeline::{element, link_to_mux, make, mux_queue};

const AUDIO_RATE: i32 = 48_000;
/// 10 ms audio buffers keep the audio length within 10 ms of the request.
const AUDIO_BUFFERS_PER_SECOND: f64 = 100.0;
/// Test clips longer than this are almost certainly a mistake.
const MAX_SECONDS: f64 = 3600.0;

/// Parameters of a generated clip.
#[derive(Debug, Clone, PartialEq)]
pub struct TestClip {
    pub seconds: f64,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Adds a stereo 48 kHz AAC track when set.
    pub audio: bool,
}

impl Default for TestClip {
    fn default() -> Self {
        Self {
            seconds: 2.0,
            width: 320,
            height: 240,
            fps: 30,
            audio: true,
        }
    }
}

/// Writes `spec` as a fast-start MP4 to `output`, replacing any existing file.
pub fn write_test_clip(spec: &TestClip, output: &Path) -> Result<(), MediaError> {
    crate::media::pipeline::init()?;
    validate(spec)?;
    let location = output
        .to_str()
        .ok_or_else(|| MediaError::Pipeline(format!("{} is not valid UTF-8", output.display())))?;
    let pipeline = gst::Pipeline::new();
    let result = build(&pipeline, spec, location).and_then(|()| run_to_eos(&pipeline, spec));
    if let Err(e) = pipeline.set_state(gst::State::Null) {
        tracing::warn!("cannot stop test clip pipeline: {e}");
    }
    if result.is_err() {
        let _ = std::fs::remove_file(output);
    }
    result
}

fn validate(spec: &TestClip) -> Result<(), MediaError> {
    // x264 needs even dimensions for 4:2:0 video.
    let ok = spec.seconds > 0.0
        && spec.seconds <= MAX_SECONDS
        && spec.fps > 0
        && spec.width >= 16
        && spec.height >= 16
        && spec.width.is_multiple_of(2)
        && spec.height.is_multiple_of(2);
    if ok {
        Ok(())
    } else {
        Err(MediaError::Pipeline(format!("invalid test clip {spec:?}")))
    }
}

fn build(pipeline: &gst::Pipeline, spec: &TestClip, location: &str) -> Result<(), MediaError> {
    let mux = make(gst::ElementFactory::make("mp4mux").property("faststart", true))?;
    let sink = make(gst::ElementFactory::make("filesink").property("location", location))?;
    add_chain(pipeline, &[mux.clone(), sink])?;
    let video = video_chain(spec)?;
    add_chain(pipeline, &video)?;
    link_to_mux(&video, &mux, "video_%u")?;
    if spec.audio {
        let audio = audio_chain(spec)?;
        add_chain(pipeline, &audio)?;
        link_to_mux(&audio, &mux, "audio_%u")?;
    }
    Ok(())
}

fn add_chain(pipeline: &gst::Pipeline, chain: &[gst::Element]) -> Result<(), MediaError> {
    pipeline
        .add_many(chain)
        .map_err(|e| MediaError::Pipeline(e.to_string()))?;
    gst::Element::link_many(chain).map_err(|e| MediaError::Pipeline(e.to_string()))
}

fn to_i32(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

fn video_chain(spec: &TestClip) -> Result<Vec<gst::Element>, MediaError> {
    let frames = (spec.seconds * f64::from(spec.fps)).round().max(1.0) as i32;
    let caps = gst::Caps::builder("video/x-raw")
        .field("format", "I420")
        .field("width", to_i32(spec.width))
        .field("height", to_i32(spec.height))
        .field("framerate", gst::Fraction::new(to_i32(spec.fps), 1))
        .build();
    Ok(vec![
        // Scrolling keeps frames distinct so the encoder does real work.
        make(
            gst::ElementFactory::make("videotestsrc")
                .property("num-buffers", frames)
                .property("horizontal-speed", 4i32),
        )?,
        make(gst::ElementFactory::make("capsfilter").property("caps", caps))?,
        // A keyframe every 2 s, like typical camera/phone footage, so trim
        // tests exercise seeking into the middle of a GOP.
        make(
            gst::ElementFactory::make("x264enc")
                .property_from_str("speed-preset", "ultrafast")
                .property("key-int-max", spec.fps.saturating_mul(2)),
        )?,
        mux_queue()?,
    ])
}

fn audio_chain(spec: &TestClip) -> Result<Vec<gst::Element>, MediaError> {
    let buffers = (spec.seconds * AUDIO_BUFFERS_PER_SECOND).round().max(1.0) as i32;
    let samples = (f64::from(AUDIO_RATE) / AUDIO_BUFFERS_PER_SECOND) as i32;
    let caps = gst::Caps::builder("audio/x-raw")
        .field("rate", AUDIO_RATE)
        .field("channels", 2i32)
        .build();
    Ok(vec![
        make(
            gst::ElementFactory::make("audiotestsrc")
                .property("num-buffers", buffers)
                .property("samplesperbuffer", samples)
                .property("freq", 440.0f64),
        )?,
        make(gst::ElementFactory::make("capsfilter").property("caps", caps))?,
        element("audioconvert")?,
        element("avenc_aac")?,
        mux_queue()?,
    ])
}

fn run_to_eos(pipeline: &gst::Pipeline, spec: &TestClip) -> Result<(), MediaError> {
    // Generous: ultrafast encodes far faster than real time even at 1080p.
    let limit = Duration::from_secs(30) + Duration::from_secs_f64(spec.seconds * 5.0);
    let bus = pipeline
        .bus()
        .ok_or_else(|| MediaError::Pipeline("pipeline has no bus".into()))?;
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| MediaError::Pipeline(e.to_string()))?;
    let timeout = gst::ClockTime::try_from(limit).ok();
    let msg = bus
        .timed_pop_filtered(timeout, &[gst::MessageType::Eos, gst::MessageType::Error])
        .ok_or_else(|| MediaError::Pipeline(format!("test clip not done after {limit:?}")))?;
    match msg.view() {
        gst::MessageView::Error(err) => Err(MediaError::Pipeline(format!(
            "test clip: {} ({:?})",
            err.error(),
            err.debug()
        ))),
        _ => Ok(()),
    }
}

/// Fixtures shared by the crate's tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::path::{Path, PathBuf};

    use super::{TestClip, write_test_clip};

    pub(crate) fn clip(dir: &Path, name: &str, spec: &TestClip) -> PathBuf {
        let path = dir.join(name);
        write_test_clip(spec, &path).expect("test clip");
        path
    }

    /// Deterministic pseudo-random bytes: no container signature anywhere.
    pub(crate) fn noise(dir: &Path, name: &str, len: usize) -> PathBuf {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()[0]
            })
            .collect();
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write noise");
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::probe::probe;

    #[test]
    fn writes_video_only_clip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("silent.mp4");
        let spec = TestClip {
            seconds: 1.0,
            width: 160,
            height: 120,
            fps: 25,
            audio: false,
        };
        write_test_clip(&spec, &path).expect("clip");

        let info = probe(&path).expect("probe");
        assert!(info.audio.is_none(), "{info:?}");
        assert!((info.duration_seconds - 1.0).abs() < 0.1, "{info:?}");
        let video = info.video.expect("video");
        assert_eq!((video.width, video.height), (160, 120));
    }

    #[test]
    fn rejects_odd_dimensions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = TestClip {
            width: 321,
            ..TestClip::default()
        };
        let err = write_test_clip(&spec, &dir.path().join("odd.mp4")).expect_err("odd width");
        assert!(matches!(err, MediaError::Pipeline(_)), "{err:?}");
    }
}
