//! Reads the container, duration and first audio/video stream parameters of a
//! media file, and reduces GStreamer caps to the short codec and container
//! names ("h264", "aac", "mp4", ...) used across reelmesh. Common
//! containers are read by their demuxer alone ([`headers`]); anything else
//! goes through GStreamer's Discoverer. Only headers are inspected: a file
//! cut off after its index still probes fine and is caught by the
//! transcoder instead.

use std::path::Path;

use gst::glib;
use gstreamer as gst;
use gstreamer_pbutils as pbutils;
use pbutils::prelude::*;

use crate::media::MediaError;
use crate::media::headers::{self, Headers};

/// Discoverer gives up on a file after this long.
const PROBE_TIMEOUT: gst::ClockTime = gst::ClockTime::from_seconds(10);

#[derive(Debug, Clone, PartialEq)]
pub struct MediaInfo {
    /// 0.0 when the input declares no duration (e.g. a still image).
    pub duration_seconds: f64,
    pub container: String,
    pub video: Option<VideoInfo>,
    pub audio: Option<AudioInfo>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VideoInfo {
    pub codec: String,
    pub width: u32,
    pub height: u32,
    /// 0.0 when the frame rate is variable or unknown.
    pub fps: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AudioInfo {
    pub codec: String,
    pub channels: u32,
    pub sample_rate: u32,
}

/// Probes `path`; any unreadable, unrecognised or stream-less file is
/// reported as [`MediaError::BadInput`] naming the path.
pub fn probe(path: &Path) -> Result<MediaInfo, MediaError> {
    match headers::read(path)?.map(|headers| info_from_headers(path, &headers)) {
        // Without a frame rate in the container (its frame durations vary)
        // the Discoverer's parser still finds one in the H.264 stream, and
        // a video without one would pass for a still image.
        Some(Ok(info)) if info.video.as_ref().is_none_or(|video| video.fps > 0.0) => Ok(info),
        Some(Err(err)) => Err(err),
        _ => probe_discovered(path),
    }
}

pub(crate) fn probe_discovered(path: &Path) -> Result<MediaInfo, MediaError> {
    let info = discover(path)?;
    let video = info.video_streams().first().map(video_info);
    let audio = info.audio_streams().first().map(audio_info);
    if video.is_none() && audio.is_none() {
        return Err(MediaError::bad_input(path, "no audio or video stream"));
    }
    Ok(MediaInfo {
        duration_seconds: info.duration().map_or(0.0, gst::ClockTime::seconds_f64),
        container: container_name(&info),
        video,
        audio,
    })
}

/// Raw caps of the first video and audio stream plus the container name,
/// for callers that must compare streams more closely than [`MediaInfo`]
/// allows (e.g. `codec_data` before stream-copying).
#[derive(Debug, Clone)]
pub(crate) struct StreamCaps {
    pub(crate) container: String,
    pub(crate) duration: Option<gst::ClockTime>,
    pub(crate) video: Option<gst::Caps>,
    pub(crate) audio: Option<gst::Caps>,
}

pub(crate) fn stream_caps(path: &Path) -> Result<StreamCaps, MediaError> {
    if let Some(headers) = headers::read(path)? {
        return Ok(StreamCaps {
            container: container_name_from_caps(Some(&headers.container)),
            duration: headers.duration,
            video: headers.video().cloned(),
            audio: headers.audio().cloned(),
        });
    }
    let info = discover(path)?;
    let video = info.video_streams().first().and_then(|v| v.caps());
    let audio = info.audio_streams().first().and_then(|a| a.caps());
    Ok(StreamCaps {
        container: container_name(&info),
        duration: info.duration(),
        video,
        audio,
    })
}

/// The same description as the Discoverer's, from a demuxer's caps: it
/// reads the same caps fields.
fn info_from_headers(path: &Path, headers: &Headers) -> Result<MediaInfo, MediaError> {
    let video = headers.video().and_then(video_from_caps);
    let audio = headers.audio().and_then(audio_from_caps);
    if video.is_none() && audio.is_none() {
        return Err(MediaError::bad_input(path, "no audio or video stream"));
    }
    Ok(MediaInfo {
        duration_seconds: headers.duration.map_or(0.0, gst::ClockTime::seconds_f64),
        container: container_name_from_caps(Some(&headers.container)),
        video,
        audio,
    })
}

fn video_from_caps(caps: &gst::Caps) -> Option<VideoInfo> {
    let s = caps.structure(0)?;
    let dimension = |field| s.get::<i32>(field).ok().and_then(|v| u32::try_from(v).ok());
    let rate = s.get::<gst::Fraction>("framerate").ok();
    Some(VideoInfo {
        codec: codec_name(Some(caps)),
        width: dimension("width").unwrap_or(0),
        height: dimension("height").unwrap_or(0),
        fps: rate.map_or(0.0, |r| fps(r.numer(), r.denom())),
    })
}

fn audio_from_caps(caps: &gst::Caps) -> Option<AudioInfo> {
    let s = caps.structure(0)?;
    let count = |field| s.get::<i32>(field).ok().and_then(|v| u32::try_from(v).ok());
    let codec = codec_name(Some(caps));
    // matroskademux derives AAC's rate from the track header, which can
    // disagree with the stream's own configuration (seen: 96 kHz for
    // 48 kHz); the Discoverer's parser reads the configuration, so do too.
    let config = (codec == "aac")
        .then(|| s.get::<gst::Buffer>("codec_data").ok())
        .flatten()
        .and_then(|data| aac_config(data.map_readable().ok()?.as_slice()));
    let (rate, channels) = config.unwrap_or((None, None));
    Some(AudioInfo {
        codec,
        channels: channels.or(count("channels")).unwrap_or(0),
        sample_rate: rate.or(count("rate")).unwrap_or(0),
    })
}

/// Sample rate and channel count from an AAC AudioSpecificConfig
/// (ISO 14496-3 1.6.2.1); `None` where it defers to elsewhere.
fn aac_config(config: &[u8]) -> Option<(Option<u32>, Option<u32>)> {
    const RATES: [u32; 13] = [
        96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
    ];
    let mut bits = Bits {
        data: config,
        at: 0,
    };
    if bits.take(5)? == 31 {
        bits.take(6)?;
    }
    let rate = match bits.take(4)? {
        15 => Some(bits.take(24)?),
        index => RATES.get(usize::try_from(index).ok()?).copied(),
    };
    let channels = match bits.take(4)? {
        0 => None,
        7 => Some(8),
        n @ 1..=6 => Some(n),
        _ => None,
    };
    Some((rate, channels))
}

/// Big-endian bit reader over a byte slice.
struct Bits<'a> {
    data: &'a [u8],
    at: usize,
}

impl Bits<'_> {
    fn take(&mut self, count: usize) -> Option<u32> {
        let mut value = 0;
        for _ in 0..count {
            let byte = self.data.get(self.at / 8)?;
            value = (value << 1) | u32::from((byte >> (7 - self.at % 8)) & 1);
            self.at += 1;
        }
        Some(value)
    }
}

/// Frames per second, 0.0 for a variable or unknown rate (0/1).
fn fps(numer: i32, denom: i32) -> f64 {
    if numer > 0 && denom > 0 {
        f64::from(numer) / f64::from(denom)
    } else {
        0.0
    }
}

fn discover(path: &Path) -> Result<pbutils::DiscovererInfo, MediaError> {
    crate::media::pipeline::init()?;
    let bad = |reason: String| MediaError::bad_input(path, reason);
    // Discoverer wants a URI, and file URIs must be absolute.
    let absolute = path.canonicalize().map_err(|e| bad(e.to_string()))?;
    let uri = glib::filename_to_uri(&absolute, None).map_err(|e| bad(e.to_string()))?;
    let discoverer = pbutils::Discoverer::new(PROBE_TIMEOUT)
        .map_err(|e| MediaError::Pipeline(format!("discoverer: {e}")))?;
    let info = discoverer
        .discover_uri(&uri)
        .map_err(|e| bad(e.message().to_string()))?;
    check_result(&info).map_err(bad)?;
    Ok(info)
}

fn check_result(info: &pbutils::DiscovererInfo) -> Result<(), String> {
    match info.result() {
        pbutils::DiscovererResult::Ok => Ok(()),
        pbutils::DiscovererResult::Timeout => Err(format!(
            "probe timed out after {}s",
            PROBE_TIMEOUT.seconds()
        )),
        pbutils::DiscovererResult::MissingPlugins => Err(format!(
            "no decoder available: {}",
            info.missing_elements_installer_details().join(", ")
        )),
        other => Err(format!("probe failed: {other:?}")),
    }
}

fn video_info(v: &pbutils::DiscovererVideoInfo) -> VideoInfo {
    let rate = v.framerate();
    VideoInfo {
        codec: codec_name(v.caps().as_ref()),
        width: v.width(),
        height: v.height(),
        fps: fps(rate.numer(), rate.denom()),
    }
}

fn audio_info(a: &pbutils::DiscovererAudioInfo) -> AudioInfo {
    AudioInfo {
        codec: codec_name(a.caps().as_ref()),
        channels: a.channels(),
        sample_rate: a.sample_rate(),
    }
}

/// Container of the file; for a bare elementary stream (no container) this
/// is the codec name, much like ffprobe's format name for such files.
fn container_name(info: &pbutils::DiscovererInfo) -> String {
    let mut next = info.stream_info();
    while let Some(stream) = next {
        let caps = stream.caps();
        // ID3/APE tags wrap a stream (e.g. MP3) without being a container.
        if is_tag_wrapper(caps.as_ref()) {
            next = stream.next();
        } else if stream.is::<pbutils::DiscovererContainerInfo>() {
            return container_name_from_caps(caps.as_ref());
        } else {
            return codec_name(caps.as_ref());
        }
    }
    "unknown".into()
}

fn is_tag_wrapper(caps: Option<&gst::Caps>) -> bool {
    caps.and_then(|c| c.structure(0)).is_some_and(|s| {
        matches!(
            s.name().as_str(),
            "application/x-id3" | "application/x-apetag"
        )
    })
}

fn container_name_from_caps(caps: Option<&gst::Caps>) -> String {
    let Some(s) = caps.and_then(|c| c.structure(0)) else {
        return "unknown".into();
    };
    let name = match s.name().as_str() {
        // qtdemux's caps cover both; the variant tells ISO MP4 from Apple MOV.
        "video/quicktime" => match s.get::<&str>("variant") {
            Ok("iso" | "iso-fragmented") => "mp4",
            Ok("3gpp") => "3gp",
            _ => "quicktime",
        },
        "video/webm" | "audio/webm" => "webm",
        "video/x-matroska" | "audio/x-matroska" => "matroska",
        "video/mpegts" => "mpegts",
        "video/mpeg" => "mpegps",
        "video/x-msvideo" => "avi",
        "application/ogg" | "audio/ogg" | "video/ogg" => "ogg",
        "audio/x-wav" => "wav",
        "video/x-flv" => "flv",
        other => return short_name(other),
    };
    name.into()
}

/// Short codec name for stream caps, e.g. `audio/mpeg, mpegversion=4` -> "aac".
pub(crate) fn codec_name(caps: Option<&gst::Caps>) -> String {
    let Some(s) = caps.and_then(|c| c.structure(0)) else {
        return "unknown".into();
    };
    let mpegversion = s.get::<i32>("mpegversion").ok();
    let name = match s.name().as_str() {
        "video/x-h264" => "h264",
        "video/x-h265" => "h265",
        "video/x-vp8" => "vp8",
        "video/x-vp9" => "vp9",
        "video/x-av1" => "av1",
        "video/x-theora" => "theora",
        "video/x-prores" => "prores",
        "video/x-raw" => "rawvideo",
        "image/jpeg" => "mjpeg",
        "video/mpeg" => match mpegversion {
            Some(4) => "mpeg4",
            Some(2) => "mpeg2video",
            _ => "mpeg1video",
        },
        "audio/mpeg" => mpeg_audio_name(mpegversion, s.get::<i32>("layer").ok()),
        "audio/x-opus" => "opus",
        "audio/x-vorbis" => "vorbis",
        "audio/x-flac" => "flac",
        "audio/x-ac3" => "ac3",
        "audio/x-eac3" => "eac3",
        "audio/x-alac" => "alac",
        "audio/x-raw" => "pcm",
        other => return short_name(other),
    };
    name.into()
}

fn mpeg_audio_name(mpegversion: Option<i32>, layer: Option<i32>) -> &'static str {
    // MPEG-2 and MPEG-4 audio in GStreamer caps both mean AAC.
    match (mpegversion, layer) {
        (Some(2 | 4), _) => "aac",
        (_, Some(1)) => "mp1",
        (_, Some(2)) => "mp2",
        _ => "mp3",
    }
}

/// "video/x-foo" -> "foo", for caps nobody has mapped yet.
fn short_name(caps_name: &str) -> String {
    let subtype = caps_name.rsplit('/').next().unwrap_or(caps_name);
    subtype.trim_start_matches("x-").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::testsrc::{TestClip, fixtures};

    fn caps(s: &str) -> gst::Caps {
        s.parse().expect("valid caps")
    }

    #[test]
    fn codec_names_from_caps() {
        crate::media::pipeline::init().expect("init");
        let cases = [
            ("video/x-h264, stream-format=avc", "h264"),
            ("video/x-vp9", "vp9"),
            ("video/mpeg, mpegversion=4", "mpeg4"),
            ("audio/mpeg, mpegversion=4", "aac"),
            ("audio/mpeg, mpegversion=1, layer=3", "mp3"),
            ("audio/mpeg, mpegversion=1, layer=2", "mp2"),
            ("audio/x-opus", "opus"),
            ("video/x-dirac", "dirac"),
        ];
        for (c, want) in cases {
            assert_eq!(codec_name(Some(&caps(c))), want, "{c}");
        }
    }

    #[test]
    fn container_names_from_caps() {
        crate::media::pipeline::init().expect("init");
        let cases = [
            ("video/quicktime, variant=iso", "mp4"),
            ("video/quicktime, variant=apple", "quicktime"),
            ("video/quicktime", "quicktime"),
            ("video/webm", "webm"),
            ("video/x-matroska", "matroska"),
        ];
        for (c, want) in cases {
            assert_eq!(container_name_from_caps(Some(&caps(c))), want, "{c}");
        }
    }

    #[test]
    fn reads_aac_configuration() {
        // LC, 48 kHz, stereo; LC, 44.1 kHz, mono; explicit 7350 Hz, 5.1.
        assert_eq!(aac_config(&[0x11, 0x90]), Some((Some(48000), Some(2))));
        assert_eq!(aac_config(&[0x12, 0x08]), Some((Some(44100), Some(1))));
        assert_eq!(
            aac_config(&[0x17, 0x80, 0x0e, 0x5b, 0x30]),
            Some((Some(7350), Some(6)))
        );
        assert_eq!(aac_config(&[0x11]), None);
    }

    #[test]
    fn probes_generated_clip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = fixtures::clip(dir.path(), "clip.mp4", &TestClip::default());

        let info = probe(&path).expect("probe");
        assert_eq!(info.container, "mp4");
        assert!((info.duration_seconds - 2.0).abs() < 0.1, "{info:?}");
        let video = info.video.expect("video stream");
        assert_eq!(
            (video.codec.as_str(), video.width, video.height),
            ("h264", 320, 240)
        );
        assert!((video.fps - 30.0).abs() < 0.01, "{video:?}");
        let audio = info.audio.expect("audio stream");
        assert_eq!(
            (audio.codec.as_str(), audio.channels, audio.sample_rate),
            ("aac", 2, 48000)
        );
    }

    #[test]
    fn garbage_is_bad_input_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = fixtures::noise(dir.path(), "noise.mp4", 64_000);

        let err = probe(&path).expect_err("garbage must not probe");
        assert!(matches!(err, MediaError::BadInput { .. }), "{err:?}");
        assert!(err.to_string().contains("noise.mp4"), "{err}");
    }

    #[test]
    fn missing_file_is_bad_input() {
        let err = probe(Path::new("/nonexistent/reelmesh.mp4")).expect_err("missing file");
        assert!(matches!(err, MediaError::BadInput { .. }), "{err:?}");
        assert!(
            err.to_string().contains("/nonexistent/reelmesh.mp4"),
            "{err}"
        );
    }
}
