//! Generates synthetic H.264/AAC MP4 clips (scrolling colour bars plus a
//! 440 Hz tone) for tests and demos, so no binary media has to be checked
//! in. Encoding uses x264's ultrafast preset: clips are for plumbing, not
//! for judging quality.

use std::path::Path;
use std::time::Duration;

use gstreamer as gst;

use crate::media::MediaError;
use crate::media::elements::{
    add_chain, capsfilter, element, file_sink, link_to_mux, make, mp4_mux, mux_queue,
};
use crate::media::runner::{self, CancelFlag, Control};

const AUDIO_RATE: i32 = 48_000;
/// 10 ms audio buffers keep the audio length within 10 ms of the request.
const AUDIO_BUFFERS_PER_SECOND: f64 = 100.0;
/// Test clips longer than this are almost certainly a mistake.
const MAX_SECONDS: f64 = 3600.0;
/// Ultrafast encoding never pauses this long unless something is wedged.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

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
    write_clip(spec, "smpte", output)
}

/// Like [`write_test_clip`] with any videotestsrc `pattern` ("black",
/// "ball", ...); tests use plain patterns to check pixels.
pub(crate) fn write_clip(spec: &TestClip, pattern: &str, output: &Path) -> Result<(), MediaError> {
    validate(spec)?;
    let cancel = CancelFlag::default();
    let mut quiet = |_| {};
    let mut control = Control::new(&cancel, STALL_TIMEOUT, &mut quiet);
    runner::run(&mut control, |session| {
        session.add_output(output);
        build(session.pipeline(), spec, pattern, output)?;
        session.play_to_eos()
    })
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

fn build(
    pipeline: &gst::Pipeline,
    spec: &TestClip,
    pattern: &str,
    output: &Path,
) -> Result<(), MediaError> {
    let mux = mp4_mux()?;
    add_chain(pipeline, &[mux.clone(), file_sink(output)?])?;
    let video = video_chain(spec, pattern)?;
    add_chain(pipeline, &video)?;
    link_to_mux(&video, &mux, "video_%u")?;
    if spec.audio {
        let audio = audio_chain(spec)?;
        add_chain(pipeline, &audio)?;
        link_to_mux(&audio, &mux, "audio_%u")?;
    }
    Ok(())
}

fn to_i32(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

fn video_chain(spec: &TestClip, pattern: &str) -> Result<Vec<gst::Element>, MediaError> {
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
                .property_from_str("pattern", pattern)
                .property("horizontal-speed", 4i32),
        )?,
        capsfilter(caps)?,
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
        capsfilter(caps)?,
        element("audioconvert")?,
        element("avenc_aac")?,
        mux_queue()?,
    ])
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
