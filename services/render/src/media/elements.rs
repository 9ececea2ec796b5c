//! Small builders shared by all pipelines: element construction with
//! readable errors, muxer-side queues, linking helpers and the file
//! source/sink pair. Kept apart from the operations so each operation file
//! only describes its own graph.

use std::path::Path;

use gst::prelude::*;
use gstreamer as gst;

use crate::media::MediaError;

/// How much encoded media may pile up in front of a muxer, per stream.
const MUX_QUEUE_TIME: gst::ClockTime = gst::ClockTime::from_seconds(60);

/// Creates an element with default properties.
pub(crate) fn element(factory: &str) -> Result<gst::Element, MediaError> {
    make(gst::ElementFactory::make(factory))
}

/// Builds an element, turning a missing plugin into a readable error.
pub(crate) fn make(
    builder: gst::element_factory::ElementBuilder<'_>,
) -> Result<gst::Element, MediaError> {
    builder
        .build()
        .map_err(|e| MediaError::Pipeline(e.to_string()))
}

/// Queue placed directly in front of a muxer (or encoder) input.
///
/// A muxer interleaves by timestamp, so it holds one stream back while it
/// waits for the other. x264enc emits nothing until its lookahead is full
/// (40+ frames at the default preset: seconds of media at low frame rates),
/// and inputs are not always tightly interleaved. Meanwhile audio keeps
/// coming; once a 1 s default queue is full the demuxer's single streaming
/// thread blocks on it, video starves and nothing moves again (reproduced
/// with qtdemux ! queue ! ... and one default queue on the audio branch).
/// decodebin's multiqueue happens to grow and hide this today, but that is
/// an implementation detail. Queuing encoded data costs little memory, so
/// the limit is by time only, and generous.
pub(crate) fn mux_queue() -> Result<gst::Element, MediaError> {
    make(
        gst::ElementFactory::make("queue")
            .property("max-size-buffers", 0u32)
            .property("max-size-bytes", 0u32)
            .property("max-size-time", MUX_QUEUE_TIME.nseconds()),
    )
}

/// The H.264 encoder every re-encode uses. By default the settings match
/// ffmpeg's libx264 defaults (CRF 23, preset medium, keyframe at least
/// every 250 frames), so
/// output quality and benchmarks compare like with like; x264enc's own
/// default is constant 2 Mbit/s, which starves 1080p and wastes bits on
/// slides.
pub(crate) fn h264_encoder(
    quality: Option<u32>,
    bitrate_kbps: Option<u32>,
) -> Result<gst::Element, MediaError> {
    let encoder = element("x264enc")?;
    match bitrate_kbps {
        Some(kbps) => {
            encoder.set_property_from_str("pass", "cbr");
            encoder.set_property("bitrate", kbps);
        }
        None => {
            encoder.set_property_from_str("pass", "qual");
            encoder.set_property("quantizer", quality.unwrap_or(DEFAULT_QUALITY));
        }
    }
    encoder.set_property_from_str("speed-preset", "medium");
    encoder.set_property("key-int-max", 250u32);
    // x264enc caps quality mode with a VBV at its `bitrate` (2 Mbit/s by
    // default); plain CRF, like ffmpeg's, has none, and an average bitrate
    // is an average, not a cap.
    encoder.set_property("vbv-buf-capacity", 0u32);
    Ok(encoder)
}

/// The AAC encoder every re-encode uses, at `bitrate` bit/s (128 kbit/s,
/// ffmpeg's usual choice, when `None`).
pub(crate) fn aac_encoder(bitrate: Option<u32>) -> Result<gst::Element, MediaError> {
    let bitrate = i32::try_from(bitrate.unwrap_or(AAC_BITRATE)).unwrap_or(i32::MAX);
    make(gst::ElementFactory::make("avenc_aac").property("bitrate", bitrate))
}

const AAC_BITRATE: u32 = 128_000;

/// Caps filter element for `caps`.
pub(crate) fn capsfilter(caps: gst::Caps) -> Result<gst::Element, MediaError> {
    make(gst::ElementFactory::make("capsfilter").property("caps", caps))
}

/// `filesrc` reading `input`; a non-UTF-8 path is the input's fault.
pub(crate) fn file_source(input: &Path) -> Result<gst::Element, MediaError> {
    let location = input
        .to_str()
        .ok_or_else(|| MediaError::bad_input(input, "path is not valid UTF-8"))?;
    make(gst::ElementFactory::make("filesrc").property("location", location))
}

/// `filesink` writing `output`.
///
/// async=false: with pads held back for a seek, or a muxer that only
/// writes once all its inputs have data, a prerolling sink would never
/// complete PAUSED; only the demuxers' own readiness should gate it.
pub(crate) fn file_sink(output: &Path) -> Result<gst::Element, MediaError> {
    let location = output.to_str().ok_or_else(|| {
        MediaError::Pipeline(format!("output {} is not valid UTF-8", output.display()))
    })?;
    make(
        gst::ElementFactory::make("filesink")
            .property("location", location)
            .property("async", false),
    )
}

/// How a rendered video is encoded and packaged: container, codecs, picture
/// size and rate, and the encoders' rate control. The default is what a
/// job without output settings gets: H.264 (CRF 23) + AAC in a fast-start
/// MP4, at the input's size and frame rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoFormat {
    pub container: VideoContainer,
    pub video: VideoCodec,
    pub audio: AudioCodec,
    /// Output picture; `None` keeps the input's.
    pub picture: Option<Picture>,
    pub fps: Option<u32>,
    /// Average video bitrate; `None` encodes for constant quality.
    pub video_bitrate_kbps: Option<u32>,
    /// x264 CRF (or the matching libvpx level); 23 when `None`.
    pub quality: Option<u32>,
    pub audio_bitrate_kbps: Option<u32>,
    /// MP4 only: write the index first.
    pub faststart: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoContainer {
    Mp4,
    Webm,
    Mkv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    H264,
    Vp8,
    Vp9,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioCodec {
    Aac,
    Opus,
    Mp3,
}

/// An output picture size and how inputs of another shape are fitted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Picture {
    pub width: u32,
    pub height: u32,
    pub fit: Fit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fit {
    /// Scaled to fit inside, with black bars.
    #[default]
    Contain,
    /// Scaled to cover, the overflow cropped from the centre.
    Cover,
}

impl Default for VideoFormat {
    fn default() -> Self {
        VideoFormat {
            container: VideoContainer::Mp4,
            video: VideoCodec::H264,
            audio: AudioCodec::Aac,
            picture: None,
            fps: None,
            video_bitrate_kbps: None,
            quality: None,
            audio_bitrate_kbps: None,
            faststart: true,
        }
    }
}

/// x264's CRF when none is asked for: ffmpeg's default.
const DEFAULT_QUALITY: u32 = 23;
/// libvpx's constant-quality level for WebM output (0 best .. 63 worst).
const VPX_QUALITY: i32 = 32;
const OPUS_BITRATE: u32 = 128_000;

impl VideoFormat {
    /// VP8 or VP9 with Opus in WebM, otherwise default settings.
    pub fn webm(video: VideoCodec) -> Self {
        VideoFormat {
            container: VideoContainer::Webm,
            video,
            audio: AudioCodec::Opus,
            ..VideoFormat::default()
        }
    }

    pub fn extension(&self) -> &'static str {
        match self.container {
            VideoContainer::Mp4 => "mp4",
            VideoContainer::Webm => "webm",
            VideoContainer::Mkv => "mkv",
        }
    }

    /// Why the inputs' H.264/AAC packets cannot be copied into this format
    /// unchanged: copy paths write MP4 at the inputs' own size, rate and
    /// quality.
    pub fn copy_blocker(&self) -> Option<&'static str> {
        if self.container != VideoContainer::Mp4 {
            Some("only MP4 output can be copied")
        } else if self.video != VideoCodec::H264 || self.audio != AudioCodec::Aac {
            Some("copying keeps H.264/AAC")
        } else if self.picture.is_some() || self.fps.is_some() {
            Some("a new picture size or frame rate needs encoding")
        } else if self.video_bitrate_kbps.is_some()
            || self.quality.is_some()
            || self.audio_bitrate_kbps.is_some()
        {
            Some("a bitrate or quality setting needs encoding")
        } else {
            None
        }
    }

    pub(crate) fn video_encoder(&self) -> Result<gst::Element, MediaError> {
        match self.video {
            VideoCodec::H264 => h264_encoder(self.quality, self.video_bitrate_kbps),
            VideoCodec::Vp8 => vpx_encoder("vp8enc", self.quality, self.video_bitrate_kbps),
            VideoCodec::Vp9 => {
                let encoder = vpx_encoder("vp9enc", self.quality, self.video_bitrate_kbps)?;
                encoder.set_property("row-mt", true);
                Ok(encoder)
            }
        }
    }

    pub(crate) fn audio_encoder(&self) -> Result<gst::Element, MediaError> {
        let bitrate = self
            .audio_bitrate_kbps
            .map(|kbps| kbps.saturating_mul(1000));
        match self.audio {
            AudioCodec::Aac => aac_encoder(bitrate),
            AudioCodec::Opus => {
                let bitrate = i32::try_from(bitrate.unwrap_or(OPUS_BITRATE)).unwrap_or(i32::MAX);
                make(gst::ElementFactory::make("opusenc").property("bitrate", bitrate))
            }
            AudioCodec::Mp3 => {
                let kbps =
                    i32::try_from(self.audio_bitrate_kbps.unwrap_or(MP3_KBPS)).unwrap_or(i32::MAX);
                make(gst::ElementFactory::make("lamemp3enc").property("bitrate", kbps))
            }
        }
    }

    pub(crate) fn muxer(&self) -> Result<gst::Element, MediaError> {
        match self.container {
            VideoContainer::Mp4 => {
                make(gst::ElementFactory::make("mp4mux").property("faststart", self.faststart))
            }
            VideoContainer::Webm => element("webmmux"),
            VideoContainer::Mkv => element("matroskamux"),
        }
    }

    /// Elements that bring decoded video to the output's size and frame
    /// rate (none when both are kept).
    pub(crate) fn conform_chain(&self) -> Result<Vec<gst::Element>, MediaError> {
        let mut chain = Vec::new();
        let mut caps = gst::Caps::builder("video/x-raw");
        if let Some(picture) = self.picture {
            if picture.fit == Fit::Cover {
                chain.push(cover_crop(picture)?);
            }
            // videoscale letterboxes (add-borders) when the shape differs.
            chain.push(element("videoscale")?);
            caps = caps
                .field("width", dimension(picture.width))
                .field("height", dimension(picture.height))
                .field("pixel-aspect-ratio", gst::Fraction::new(1, 1));
        }
        if let Some(fps) = self.fps {
            chain.push(element("videorate")?);
            caps = caps.field("framerate", gst::Fraction::new(dimension(fps), 1));
        }
        if !chain.is_empty() {
            chain.push(capsfilter(caps.build())?);
        }
        Ok(chain)
    }
}

const MP3_KBPS: u32 = 192;

fn dimension(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// Crops the centre of the picture to the output's shape, so the scaler
/// after it fills the frame.
pub(crate) fn cover_crop(picture: Picture) -> Result<gst::Element, MediaError> {
    make(gst::ElementFactory::make("aspectratiocrop").property(
        "aspect-ratio",
        gst::Fraction::new(dimension(picture.width), dimension(picture.height)),
    ))
}

/// libvpx in constrained-quality mode (GStreamer offers no pure
/// constant-quality mode; the cap is its resolution-based default bitrate),
/// or average bitrate when one is asked for, at the realtime deadline: the
/// "good" deadline is many times slower for a small gain, which a service
/// that promises speed should not pay by default.
fn vpx_encoder(
    factory: &str,
    quality: Option<u32>,
    bitrate_kbps: Option<u32>,
) -> Result<gst::Element, MediaError> {
    let encoder = element(factory)?;
    match bitrate_kbps {
        Some(kbps) => {
            encoder.set_property_from_str("end-usage", "vbr");
            encoder.set_property("target-bitrate", dimension(kbps.saturating_mul(1000)));
        }
        None => {
            encoder.set_property_from_str("end-usage", "cq");
            // x264's 0..51 scale mapped onto libvpx's 0..63.
            let level = quality.map_or(VPX_QUALITY, |crf| dimension(crf * 63 / 51));
            encoder.set_property("cq-level", level);
        }
    }
    encoder.set_property("deadline", 1i64);
    encoder.set_property("cpu-used", 4i32);
    encoder.set_property("threads", 2i32);
    encoder.set_property("keyframe-max-dist", 250i32);
    Ok(encoder)
}

/// Fast-start `mp4mux`, so players can start before the whole file is read.
pub(crate) fn mp4_mux() -> Result<gst::Element, MediaError> {
    make(gst::ElementFactory::make("mp4mux").property("faststart", true))
}

/// Adds `chain` to `pipeline` and links it in order.
pub(crate) fn add_chain(
    pipeline: &gst::Pipeline,
    chain: &[gst::Element],
) -> Result<(), MediaError> {
    pipeline.add_many(chain).map_err(pipeline_error)?;
    gst::Element::link_many(chain).map_err(pipeline_error)
}

/// Adds and links `chain` while the pipeline is already running.
pub(crate) fn add_live_chain(
    pipeline: &gst::Pipeline,
    chain: &[gst::Element],
) -> Result<(), MediaError> {
    add_chain(pipeline, chain)?;
    for element in chain {
        element.sync_state_with_parent().map_err(pipeline_error)?;
    }
    Ok(())
}

/// Links the last element of `chain` to a new `template` pad of `mux`.
///
/// Pads are requested by template explicitly: a queue has ANY caps, so
/// automatic linking could hand an audio chain a video pad.
pub(crate) fn link_to_mux(
    chain: &[gst::Element],
    mux: &gst::Element,
    template: &str,
) -> Result<(), MediaError> {
    let (_, last) = ends(chain)?;
    let mux_pad = mux
        .request_pad_simple(template)
        .ok_or_else(|| MediaError::Pipeline(format!("{} has no {template} pad", mux.name())))?;
    static_pad(last, "src")?
        .link(&mux_pad)
        .map_err(pipeline_error)?;
    Ok(())
}

/// Links `pad` to the sink pad of the first element of `chain`.
pub(crate) fn link_pad_to_chain(pad: &gst::Pad, chain: &[gst::Element]) -> Result<(), MediaError> {
    let (first, _) = ends(chain)?;
    pad.link(&static_pad(first, "sink")?)
        .map_err(pipeline_error)?;
    Ok(())
}

/// Sends a stream nobody wants (subtitles, extra tracks) to a fakesink so
/// the demuxer does not fail with not-linked.
pub(crate) fn discard(pipeline: &gst::Pipeline, pad: &gst::Pad) -> Result<(), MediaError> {
    let sink = make(
        gst::ElementFactory::make("fakesink")
            .property("sync", false)
            .property("async", false),
    )?;
    add_live_chain(pipeline, std::slice::from_ref(&sink))?;
    link_pad_to_chain(pad, &[sink])
}

pub(crate) fn ends(
    elements: &[gst::Element],
) -> Result<(&gst::Element, &gst::Element), MediaError> {
    match (elements.first(), elements.last()) {
        (Some(first), Some(last)) => Ok((first, last)),
        _ => Err(MediaError::Pipeline("empty branch".into())),
    }
}

pub(crate) fn static_pad(element: &gst::Element, name: &str) -> Result<gst::Pad, MediaError> {
    element
        .static_pad(name)
        .ok_or_else(|| MediaError::Pipeline(format!("{} has no {name} pad", element.name())))
}

pub(crate) fn pipeline_error(e: impl std::fmt::Display) -> MediaError {
    MediaError::Pipeline(e.to_string())
}

/// Top-level media type of a pad's caps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Video,
    Audio,
}

impl Kind {
    pub(crate) fn of(pad: &gst::Pad) -> Option<Self> {
        let caps = pad.current_caps().or_else(|| Some(pad.query_caps(None)))?;
        let name = caps.structure(0)?.name();
        if name.starts_with("video/") {
            Some(Self::Video)
        } else if name.starts_with("audio/") {
            Some(Self::Audio)
        } else {
            None
        }
    }

    pub(crate) fn mux_pad_template(self) -> &'static str {
        match self {
            Self::Video => "video_%u",
            Self::Audio => "audio_%u",
        }
    }
}
