//! Joins inputs that cannot be stream-copied together: every input is
//! decoded, brought to one shape (the first input's size and frame rate,
//! 48 kHz stereo) and the whole is encoded once to H.264/AAC MP4.
//!
//! Each input is `filesrc ! decodebin` feeding per-kind normalising chains
//! into one `concat` per kind, whose sink pads are requested in input order
//! up front (concat plays them in that order). An input without audio gets
//! generated silence of its own length, so the audio track runs throughout.

use std::path::Path;
use std::sync::{Arc, Mutex};

use gst::prelude::*;
use gstreamer as gst;

use crate::media::MediaError;
use crate::media::elements::{
    Fit, Kind, Picture, VideoFormat, add_chain, add_live_chain, capsfilter, cover_crop, discard,
    element, ends, file_sink, file_source, link_pad_to_chain, link_to_mux, make, mux_queue,
    pipeline_error, static_pad,
};
use crate::media::probe::{MediaInfo, probe};
use crate::media::runner::{self, Control, Monitor, Session};

const AUDIO_RATE: i32 = 48_000;
const AUDIO_CHANNELS: i32 = 2;
/// Silence is generated in 10 ms buffers.
const SILENCE_SAMPLES_PER_BUFFER: i32 = 480;

/// Blocking: decodes `inputs` in order and writes them, normalised, into
/// one fast-start H.264/AAC MP4 at `output`.
pub fn concat_reencode(
    inputs: &[&Path],
    output: &Path,
    format: VideoFormat,
    control: &mut Control<'_>,
) -> Result<(), MediaError> {
    let infos: Vec<MediaInfo> = inputs
        .iter()
        .map(|input| probe(input))
        .collect::<Result<_, _>>()?;
    let shape = Shape::of(inputs, &infos, &format)?;
    let total: f64 = infos.iter().map(|info| info.duration_seconds).sum();
    runner::run(control, |session| {
        build(session, inputs, &infos, &shape, output, format)?;
        session.set_span(Some(gst::ClockTime::from_nseconds((total * 1e9) as u64)));
        session.play_to_eos()
    })
}

/// What every input is brought to.
#[derive(Debug, Clone, Copy)]
struct Shape {
    width: i32,
    height: i32,
    fps: gst::Fraction,
    audio: bool,
    /// Crop inputs of another shape to this picture instead of letterboxing.
    cover: Option<Picture>,
}

impl Shape {
    /// The output's picture and rate when it sets them, otherwise the first
    /// input's.
    fn of(inputs: &[&Path], infos: &[MediaInfo], format: &VideoFormat) -> Result<Self, MediaError> {
        let (first, info) = inputs
            .first()
            .zip(infos.first())
            .ok_or_else(|| MediaError::Pipeline("nothing to join".into()))?;
        let video = info
            .video
            .as_ref()
            .ok_or_else(|| MediaError::bad_input(first, "has no video stream"))?;
        if let Some((input, _)) = inputs
            .iter()
            .zip(infos)
            .find(|(_, info)| info.video.is_none())
        {
            return Err(MediaError::bad_input(input, "has no video stream"));
        }
        let fps = match format.fps {
            Some(fps) => gst::Fraction::new(i32::try_from(fps).unwrap_or(i32::MAX), 1),
            None => gst::Fraction::approximate_f64(video.fps)
                .unwrap_or_else(|| gst::Fraction::new(30, 1)),
        };
        let (width, height) = format
            .picture
            .map_or((video.width, video.height), |p| (p.width, p.height));
        Ok(Shape {
            width: i32::try_from(width).unwrap_or(i32::MAX),
            height: i32::try_from(height).unwrap_or(i32::MAX),
            fps,
            audio: infos.iter().any(|info| info.audio.is_some()),
            cover: format.picture.filter(|p| p.fit == Fit::Cover),
        })
    }

    fn video_caps(&self) -> gst::Caps {
        gst::Caps::builder("video/x-raw")
            .field("format", "I420")
            .field("width", self.width)
            .field("height", self.height)
            .field("framerate", self.fps)
            .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
            .build()
    }
}

fn audio_caps() -> gst::Caps {
    gst::Caps::builder("audio/x-raw")
        .field("format", "S16LE")
        .field("layout", "interleaved")
        .field("rate", AUDIO_RATE)
        .field("channels", AUDIO_CHANNELS)
        .build()
}

fn build(
    session: &mut Session,
    inputs: &[&Path],
    infos: &[MediaInfo],
    shape: &Shape,
    output: &Path,
    format: VideoFormat,
) -> Result<(), MediaError> {
    let pipeline = session.pipeline().clone();
    let mux = format.muxer()?;
    let sink = file_sink(output)?;
    pipeline.add_many([&mux, &sink]).map_err(pipeline_error)?;
    mux.link(&sink).map_err(pipeline_error)?;
    session.add_output(output);
    session.monitor().watch(&static_pad(&sink, "sink")?);

    let video = joined_branch(&pipeline, &mux, Kind::Video, format, session.monitor())?;
    let audio = shape
        .audio
        .then(|| joined_branch(&pipeline, &mux, Kind::Audio, format, session.monitor()))
        .transpose()?;
    for (input, info) in inputs.iter().zip(infos) {
        let video_pad = request_pad(&video)?;
        let audio_pad = audio.as_ref().map(request_pad).transpose()?;
        if let (Some(pad), None) = (&audio_pad, &info.audio) {
            link_silence(&pipeline, pad, info.duration_seconds)?;
        }
        let audio_pad = audio_pad.filter(|_| info.audio.is_some());
        add_input(session, input, *shape, video_pad, audio_pad)?;
    }
    Ok(())
}

/// `concat ! <encoder> ! queue` into the muxer, for one kind.
fn joined_branch(
    pipeline: &gst::Pipeline,
    mux: &gst::Element,
    kind: Kind,
    format: VideoFormat,
    monitor: &Arc<Monitor>,
) -> Result<gst::Element, MediaError> {
    let concat = element("concat")?;
    let encoder = match kind {
        Kind::Video => vec![
            concat.clone(),
            element("queue")?,
            format.video_encoder()?,
            mux_queue()?,
        ],
        Kind::Audio => vec![
            concat.clone(),
            element("audioconvert")?,
            format.audio_encoder()?,
            mux_queue()?,
        ],
    };
    add_chain(pipeline, &encoder)?;
    link_to_mux(&encoder, mux, kind.mux_pad_template())?;
    let (_, last) = ends(&encoder)?;
    monitor.track(&static_pad(last, "src")?);
    Ok(concat)
}

fn request_pad(concat: &gst::Element) -> Result<gst::Pad, MediaError> {
    concat
        .request_pad_simple("sink_%u")
        .ok_or_else(|| MediaError::Pipeline("concat refused a sink pad".into()))
}

/// Generated silence as long as the input it stands in for.
fn link_silence(pipeline: &gst::Pipeline, pad: &gst::Pad, seconds: f64) -> Result<(), MediaError> {
    let buffers =
        (seconds * f64::from(AUDIO_RATE) / f64::from(SILENCE_SAMPLES_PER_BUFFER)).ceil() as i32;
    let chain = vec![
        make(
            gst::ElementFactory::make("audiotestsrc")
                .property_from_str("wave", "silence")
                .property("samplesperbuffer", SILENCE_SAMPLES_PER_BUFFER)
                .property("num-buffers", buffers.max(1)),
        )?,
        element("audioconvert")?,
        capsfilter(audio_caps())?,
    ];
    add_chain(pipeline, &chain)?;
    let (_, last) = ends(&chain)?;
    static_pad(last, "src")?.link(pad).map_err(pipeline_error)?;
    Ok(())
}

/// `filesrc ! decodebin`, whose streams are normalised into the concat pads.
fn add_input(
    session: &mut Session,
    input: &Path,
    shape: Shape,
    video: gst::Pad,
    audio: Option<gst::Pad>,
) -> Result<(), MediaError> {
    let pipeline = session.pipeline().clone();
    let source = file_source(input)?;
    let decodebin = element("decodebin")?;
    pipeline
        .add_many([&source, &decodebin])
        .map_err(pipeline_error)?;
    source.link(&decodebin).map_err(pipeline_error)?;
    session.add_input(input, &source);
    session.add_input(input, &decodebin);
    session.monitor().watch(&static_pad(&source, "src")?);
    let targets = Mutex::new((Some(video), audio));
    session.on_new_pad(&decodebin, move |pipeline, pad| {
        let target = match (Kind::of(pad), targets.lock()) {
            (Some(Kind::Video), Ok(mut t)) => t.0.take().map(|p| (Kind::Video, p)),
            (Some(Kind::Audio), Ok(mut t)) => t.1.take().map(|p| (Kind::Audio, p)),
            _ => None,
        };
        match target {
            Some((kind, concat_pad)) => link_normalised(pipeline, pad, kind, shape, &concat_pad),
            None => discard(pipeline, pad),
        }
    });
    Ok(())
}

fn link_normalised(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    kind: Kind,
    shape: Shape,
    concat_pad: &gst::Pad,
) -> Result<(), MediaError> {
    let chain = match kind {
        Kind::Video => [element("queue")?, element("videoconvert")?]
            .into_iter()
            .chain(shape.cover.map(cover_crop).transpose()?)
            .chain([
                // Letterboxes rather than stretches when the aspect ratio differs.
                make(gst::ElementFactory::make("videoscale").property("add-borders", true))?,
                element("videorate")?,
                capsfilter(shape.video_caps())?,
            ])
            .collect(),
        Kind::Audio => vec![
            element("queue")?,
            element("audioconvert")?,
            element("audioresample")?,
            capsfilter(audio_caps())?,
        ],
    };
    add_live_chain(pipeline, &chain)?;
    let (_, last) = ends(&chain)?;
    static_pad(last, "src")?
        .link(concat_pad)
        .map_err(pipeline_error)?;
    link_pad_to_chain(pad, &chain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::testsrc::{TestClip, write_test_clip};

    fn clip(dir: &Path, name: &str, spec: TestClip) -> std::path::PathBuf {
        let path = dir.join(name);
        write_test_clip(&spec, &path).expect("clip");
        path
    }

    fn join(inputs: &[&Path], output: &Path) -> Result<(), MediaError> {
        let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut progress = |_| {};
        let mut control = Control::new(&cancel, std::time::Duration::from_secs(20), &mut progress);
        concat_reencode(inputs, output, VideoFormat::default(), &mut control)
    }

    #[test]
    fn mixed_inputs_are_normalised_and_silence_fills_the_gap() {
        let dir = tempfile::tempdir().expect("dir");
        let small = clip(
            dir.path(),
            "small.mp4",
            TestClip {
                seconds: 2.0,
                width: 320,
                height: 240,
                fps: 30,
                audio: true,
            },
        );
        let wide = clip(
            dir.path(),
            "wide.mp4",
            TestClip {
                seconds: 2.0,
                width: 640,
                height: 360,
                fps: 25,
                audio: false,
            },
        );
        let output = dir.path().join("joined.mp4");
        join(&[&small, &wide], &output).expect("join");
        let info = probe(&output).expect("probe");
        assert!(
            (info.duration_seconds - 4.0).abs() <= 0.15,
            "duration {}",
            info.duration_seconds
        );
        let video = info.video.expect("video");
        assert_eq!((video.width, video.height), (320, 240));
        assert!(info.audio.is_some(), "audio runs throughout");
    }

    #[test]
    fn an_input_without_video_is_named() {
        let dir = tempfile::tempdir().expect("dir");
        let a = clip(
            dir.path(),
            "a.mp4",
            TestClip {
                seconds: 1.0,
                width: 160,
                height: 120,
                fps: 30,
                audio: true,
            },
        );
        let err = join(
            &[&a, Path::new("/nonexistent/b.mp4")],
            &dir.path().join("out.mp4"),
        )
        .expect_err("missing");
        assert!(
            matches!(&err, MediaError::BadInput { input, .. } if input.ends_with("b.mp4")),
            "{err:?}"
        );
    }
}
