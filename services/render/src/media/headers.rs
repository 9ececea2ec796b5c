//! A cheap probe for the common containers (MP4/MOV, Matroska/WebM, Ogg):
//! type-finds the first bytes of the file, then lets the container's own
//! demuxer read its headers and reports the streams' caps and the duration,
//! without plugging parsers or decoders and without a pipeline that
//! prerolls. GStreamer's Discoverer does all of that and costs ~15 ms per
//! file; this costs a few. Anything it does not recognise (still images,
//! bare elementary streams, unknown containers) is left to the Discoverer.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use gst::prelude::*;
use gstreamer as gst;

use crate::media::MediaError;
use crate::media::elements::{add_chain, element, file_source};
use crate::media::runner::{self, CancelFlag, Control};

/// Bytes read for type finding; container signatures sit at the start.
const SNIFF_BYTES: u64 = 16 * 1024;
/// Reading a container's headers never pauses this long unless wedged.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Name of the bus message that says the demuxer has exposed its streams.
const STREAMS_READY: &str = "reelmesh-headers-ready";

/// What a container's headers say: its type-find caps, its duration and
/// the caps of each stream, in the demuxer's order.
#[derive(Debug, Clone)]
pub(crate) struct Headers {
    pub(crate) container: gst::Caps,
    pub(crate) duration: Option<gst::ClockTime>,
    pub(crate) streams: Vec<gst::Caps>,
}

impl Headers {
    /// Caps of the first video (or picture) stream.
    pub(crate) fn video(&self) -> Option<&gst::Caps> {
        self.first(|name| name.starts_with("video/") || name.starts_with("image/"))
    }

    /// Caps of the first audio stream.
    pub(crate) fn audio(&self) -> Option<&gst::Caps> {
        self.first(|name| name.starts_with("audio/"))
    }

    fn first(&self, wanted: impl Fn(&str) -> bool) -> Option<&gst::Caps> {
        self.streams
            .iter()
            .find(|caps| caps.structure(0).is_some_and(|s| wanted(s.name().as_str())))
    }
}

/// Reads the headers of `path`; `Ok(None)` when its container is not one
/// this handles, or when the file cannot be opened or demuxed: the
/// Discoverer then says why in its usual words.
pub(crate) fn read(path: &Path) -> Result<Option<Headers>, MediaError> {
    runner::init()?;
    let Some(container) = sniff(path) else {
        return Ok(None);
    };
    let Some(demuxer) = demuxer_for(&container) else {
        return Ok(None);
    };
    let (duration, streams) = match demux(path, demuxer) {
        Ok(found) => found,
        Err(err) => {
            tracing::debug!(path = %path.display(), "header probe failed, using the Discoverer: {err}");
            return Ok(None);
        }
    };
    Ok(Some(Headers {
        container,
        duration,
        streams,
    }))
}

/// Type-find caps of the file's first bytes, if any type finder is sure
/// enough to name it.
fn sniff(path: &Path) -> Option<gst::Caps> {
    let mut head = Vec::new();
    let file = std::fs::File::open(path).ok()?;
    file.take(SNIFF_BYTES).read_to_end(&mut head).ok()?;
    let (probability, caps) = gst::SliceTypeFind::type_find(&head);
    caps.filter(|_| probability >= gst::TypeFindProbability::Likely)
}

/// The demuxer for a container this module reads; only demuxers that
/// expose fully described streams (dimensions, rates, codec data) from
/// the headers alone are listed.
fn demuxer_for(container: &gst::Caps) -> Option<&'static str> {
    let name = container.structure(0)?.name();
    match name.as_str() {
        "video/quicktime" => Some("qtdemux"),
        "video/x-matroska" | "audio/x-matroska" | "video/webm" | "audio/webm" => {
            Some("matroskademux")
        }
        "application/ogg" | "audio/ogg" | "video/ogg" => Some("oggdemux"),
        _ => None,
    }
}

type Found = (Option<gst::ClockTime>, Vec<gst::Caps>);

/// filesrc ! demuxer taken to PAUSED: the demuxer reads the headers and
/// adds its pads; each pad's streaming thread is parked at its first
/// buffer, so no media is read, until the pipeline is stopped.
fn demux(path: &Path, demuxer: &str) -> Result<Found, MediaError> {
    let cancel = CancelFlag::default();
    let mut quiet = |_| {};
    let mut control = Control::new(&cancel, STALL_TIMEOUT, &mut quiet);
    let pads = Arc::new(Mutex::new(Vec::<gst::Pad>::new()));
    runner::run(&mut control, |session| {
        let chain = [file_source(path)?, element(demuxer)?];
        add_chain(session.pipeline(), &chain)?;
        let demux = chain[1].clone();
        session.add_input(path, &chain[0]);
        session.add_input(path, &demux);
        let ready = Arc::new(AtomicBool::new(false));
        let found = Arc::clone(&pads);
        let announce = Arc::clone(&ready);
        demux.connect_pad_added(move |demux, pad| {
            park(pad, demux, &announce);
            lock(&found).push(pad.clone());
        });
        let announce = Arc::clone(&ready);
        demux.connect_no_more_pads(move |demux| announce_ready(demux, &announce));
        session.preroll()?;
        session.wait_for(|msg| {
            msg.type_() == gst::MessageType::Application
                && msg.structure().is_some_and(|s| s.name() == STREAMS_READY)
        })?;
        let pads = lock(&pads);
        let duration = pads
            .iter()
            .find_map(|pad| pad.query_duration::<gst::ClockTime>());
        let streams = pads.iter().filter_map(gst::Pad::current_caps).collect();
        Ok((duration, streams))
    })
}

/// Holds the streaming thread at the pad's first buffer. A demuxer that
/// sends data before saying it has no more pads has shown all it will
/// before that data, so the first buffer also counts as "ready".
fn park(pad: &gst::Pad, demux: &gst::Element, ready: &Arc<AtomicBool>) {
    let demux = demux.downgrade();
    let ready = Arc::clone(ready);
    pad.add_probe(
        gst::PadProbeType::BLOCK | gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
        move |_, _| {
            if let Some(demux) = demux.upgrade() {
                announce_ready(&demux, &ready);
            }
            gst::PadProbeReturn::Ok
        },
    );
}

fn announce_ready(demux: &gst::Element, ready: &AtomicBool) {
    if ready.swap(true, Ordering::SeqCst) {
        return;
    }
    let msg = gst::message::Application::builder(gst::Structure::new_empty(STREAMS_READY))
        .src(demux)
        .build();
    let _ = demux.post_message(msg);
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::probe::{probe, probe_discovered};
    use crate::media::testutil::clip;
    use crate::media::{
        AudioFormat, ImageFormat, TranscodeRequest, VideoCodec, VideoContainer, VideoFormat,
        extract_audio, thumbnails, transcode,
    };

    fn control_run<T>(op: impl FnOnce(&mut Control<'_>) -> Result<T, MediaError>) -> T {
        let cancel = CancelFlag::default();
        let mut quiet = |_| {};
        let mut control = Control::new(&cancel, STALL_TIMEOUT, &mut quiet);
        op(&mut control).expect("media operation")
    }

    fn audio_file(input: &Path, output: &Path, format: AudioFormat, bitrate: Option<u32>) {
        control_run(|c| extract_audio(input, output, format, bitrate, c));
    }

    fn video_file(input: &Path, output: &Path, format: VideoFormat) {
        let request = TranscodeRequest {
            format,
            ..TranscodeRequest::new(input, output)
        };
        control_run(|c| transcode(&request, c));
    }

    /// The demuxer-only probe must say exactly what the Discoverer says.
    fn assert_same_as_discoverer(path: &Path) {
        assert!(
            read(path).expect("headers").is_some(),
            "{} was not read by its demuxer",
            path.display()
        );
        let fast = probe(path).expect("probe");
        let slow = probe_discovered(path).expect("discoverer");
        assert_eq!(fast, slow, "{}", path.display());
    }

    #[test]
    fn mp4_and_m4a_match_the_discoverer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let av = clip(dir.path(), "av.mp4", 2.0, (320, 240), true);
        let mute = clip(dir.path(), "mute.mp4", 1.0, (160, 120), false);
        let m4a = dir.path().join("copy.m4a");
        audio_file(&av, &m4a, AudioFormat::M4a, None);
        for path in [&av, &mute, &m4a] {
            assert_same_as_discoverer(path);
        }
        let info = probe(&av).expect("probe");
        assert_eq!(info.container, "mp4");
        assert_eq!(info.video.map(|v| (v.width, v.height)), Some((320, 240)));
    }

    #[test]
    fn ogg_opus_matches_the_discoverer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let av = clip(dir.path(), "av.mp4", 2.0, (160, 120), true);
        let opus = dir.path().join("out.opus");
        audio_file(&av, &opus, AudioFormat::Opus, Some(64_000));
        assert_same_as_discoverer(&opus);
        let info = probe(&opus).expect("probe");
        assert_eq!(
            (
                info.container.as_str(),
                info.audio.as_ref().map(|a| a.codec.as_str())
            ),
            ("ogg", Some("opus"))
        );
        assert!((info.duration_seconds - 2.0).abs() < 0.1, "{info:?}");
    }

    #[test]
    fn webm_and_mkv_match_the_discoverer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let av = clip(dir.path(), "av.mp4", 1.0, (160, 120), true);
        let webm = dir.path().join("out.webm");
        video_file(&av, &webm, VideoFormat::webm(VideoCodec::Vp8));
        let mkv = dir.path().join("out.mkv");
        let format = VideoFormat {
            container: VideoContainer::Mkv,
            ..VideoFormat::default()
        };
        video_file(&av, &mkv, format);
        for path in [&webm, &mkv] {
            assert_same_as_discoverer(path);
        }
        assert_eq!(probe(&webm).expect("probe").container, "webm");
        assert_eq!(probe(&mkv).expect("probe").container, "matroska");
    }

    #[test]
    fn leaves_images_and_bare_streams_to_the_discoverer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let av = clip(dir.path(), "av.mp4", 1.0, (160, 120), true);
        let mp3 = dir.path().join("out.mp3");
        audio_file(&av, &mp3, AudioFormat::Mp3, Some(128_000));
        let images =
            control_run(|c| thumbnails(&av, &[0.5], ImageFormat::Jpeg, None, dir.path(), c));
        for path in [&mp3, &images[0]] {
            assert!(read(path).expect("headers").is_none(), "{}", path.display());
            assert!(probe(path).is_ok(), "{}", path.display());
        }
    }

    #[test]
    fn stream_caps_keep_what_copying_compares() {
        let dir = tempfile::tempdir().expect("tempdir");
        let av = clip(dir.path(), "av.mp4", 1.0, (160, 120), true);
        let headers = read(&av).expect("headers").expect("mp4 is read");
        let video = headers.video().and_then(|c| c.structure(0)).expect("video");
        for field in [
            "codec_data",
            "profile",
            "level",
            "framerate",
            "stream-format",
        ] {
            assert!(video.has_field(field), "{field} missing from {video}");
        }
        let audio = headers.audio().and_then(|c| c.structure(0)).expect("audio");
        for field in ["codec_data", "rate", "channels"] {
            assert!(audio.has_field(field), "{field} missing from {audio}");
        }
        assert!(headers.duration.is_some());
    }

    #[test]
    fn garbage_and_missing_files_are_not_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let noise = crate::media::testsrc::fixtures::noise(dir.path(), "noise.mp4", 64_000);
        assert!(read(&noise).expect("no container").is_none());
        assert!(
            read(Path::new("/nonexistent/x.mp4"))
                .expect("none")
                .is_none()
        );
    }
}
