//! Extracts the first audio stream of any input into a standalone audio
//! file: Opus in Ogg, MP3, or AAC in an MP4 (M4A) container. Video is never
//! decoded, and AAC input going to M4A is copied packet for packet instead
//! of being decoded and re-encoded.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use gst::prelude::*;
use gstreamer as gst;

use crate::media::MediaError;
use crate::media::elements::{
    aac_encoder, add_chain, add_live_chain, discard, element, ends, file_sink, file_source,
    link_pad_to_chain, link_to_mux, make, mp4_mux, mux_queue, pipeline_error, static_pad,
};
use crate::media::runner::{self, Control, Monitor, Session};

/// Output format of [`extract_audio`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioFormat {
    /// Opus in an Ogg container (`.opus`).
    Opus,
    /// AAC in an MP4 container (`.m4a`).
    M4a,
    /// MPEG-1 Layer III (`.mp3`), no container.
    Mp3,
}

/// Blocking: writes the first audio stream of `input` to `output` as
/// `format`. `bitrate` is in bits per second; `None` keeps the encoder's
/// default. With [`AudioFormat::M4a`], AAC input and no `bitrate`, the
/// audio is copied without re-encoding (a requested bitrate forces a
/// re-encode). An input without audio is [`MediaError::BadInput`].
pub fn extract_audio(
    input: &Path,
    output: &Path,
    format: AudioFormat,
    bitrate: Option<u32>,
    control: &mut Control<'_>,
) -> Result<(), MediaError> {
    validate_bitrate(input, format, bitrate)?;
    runner::run(control, |session| {
        let job = Job::build(session, input, output, format, bitrate)?;
        session.preroll()?;
        if !job.linker.linked.load(Ordering::SeqCst) {
            return Err(MediaError::bad_input(input, "has no audio stream"));
        }
        let duration = job.duration();
        session.set_span(duration);
        session.play_to_eos()?;
        session.check_complete(input, duration)
    })
}

fn validate_bitrate(
    input: &Path,
    format: AudioFormat,
    bitrate: Option<u32>,
) -> Result<(), MediaError> {
    let Some(bitrate) = bitrate else {
        return Ok(());
    };
    let (min, max) = match format {
        AudioFormat::Opus => (4_000, 650_000),
        AudioFormat::Mp3 => (8_000, 320_000),
        AudioFormat::M4a => (8_000, 512_000),
    };
    if (min..=max).contains(&bitrate) {
        Ok(())
    } else {
        Err(MediaError::bad_input(
            input,
            format!("bitrate {bitrate} b/s is outside {min}..={max} for {format:?}"),
        ))
    }
}

/// The muxer (or MP3 header writer) and file sink every audio branch
/// ends in.
#[derive(Clone)]
struct Output {
    entry: gst::Element,
    /// Request-pad template when `entry` is a muxer.
    template: Option<&'static str>,
}

impl Output {
    fn build(
        session: &mut Session,
        format: AudioFormat,
        output: &Path,
    ) -> Result<Self, MediaError> {
        let (entry, template) = match format {
            AudioFormat::Opus => (element("oggmux")?, Some("audio_%u")),
            AudioFormat::M4a => (mp4_mux()?, Some("audio_%u")),
            // A Xing header lets players seek and show the right length
            // for variable-bitrate MP3. It rewrites the file start at EOS
            // with a BYTES segment, so progress is measured before it.
            AudioFormat::Mp3 => (element("xingmux")?, None),
        };
        let sink = file_sink(output)?;
        add_chain(session.pipeline(), &[entry.clone(), sink.clone()])?;
        session.add_output(output);
        session.monitor().watch(&static_pad(&sink, "sink")?);
        Ok(Self { entry, template })
    }

    fn attach(&self, branch: &[gst::Element]) -> Result<(), MediaError> {
        match self.template {
            Some(template) => link_to_mux(branch, &self.entry, template),
            None => {
                let (_, last) = ends(branch)?;
                last.link(&self.entry).map_err(pipeline_error)
            }
        }
    }
}

/// filesrc ! decodebin, where decodebin stops before decoding video (and
/// before decoding AAC when it is to be copied).
struct Job {
    decodebin: gst::Element,
    linker: Arc<Linker>,
}

impl Job {
    fn build(
        session: &mut Session,
        input: &Path,
        output: &Path,
        format: AudioFormat,
        bitrate: Option<u32>,
    ) -> Result<Self, MediaError> {
        let out = Output::build(session, format, output)?;
        let chain = [file_source(input)?, element("decodebin")?];
        add_chain(session.pipeline(), &chain)?;
        let (src, decodebin) = ends(&chain)?;
        session.add_input(input, src);
        session.add_input(input, decodebin);
        session.monitor().watch(&static_pad(src, "src")?);
        let copy_aac = format == AudioFormat::M4a && bitrate.is_none();
        decodebin.connect("autoplug-continue", false, move |args| {
            let caps = args.get(2).and_then(|v| v.get::<gst::Caps>().ok());
            Some(keep_decoding(caps.as_ref(), copy_aac).to_value())
        });
        let linker = Arc::new(Linker {
            monitor: Arc::clone(session.monitor()),
            output: out,
            format,
            bitrate,
            linked: AtomicBool::new(false),
        });
        let on_pad = Arc::clone(&linker);
        session.on_new_pad(decodebin, move |pipeline, pad| on_pad.link(pipeline, pad));
        Ok(Self {
            decodebin: decodebin.clone(),
            linker,
        })
    }

    fn duration(&self) -> Option<gst::ClockTime> {
        self.decodebin
            .src_pads()
            .iter()
            .find_map(|pad| pad.query_duration::<gst::ClockTime>())
    }
}

/// decodebin's autoplug-continue: stop at encoded video (it is dropped
/// anyway) and at AAC we are going to copy.
fn keep_decoding(caps: Option<&gst::Caps>, copy_aac: bool) -> bool {
    let Some((caps, s)) = caps.and_then(|c| Some((c, c.structure(0)?))) else {
        return true;
    };
    let video = s.name().starts_with("video/") || s.name().starts_with("image/");
    // Containers are "video/..." too (video/quicktime); those must still be
    // demuxed to reach the audio.
    let elementary_video = video && !is_container(caps);
    !(elementary_video || (copy_aac && is_aac(s)))
}

fn is_container(caps: &gst::Caps) -> bool {
    gst::ElementFactory::factories_with_type(gst::ElementFactoryType::DEMUXER, gst::Rank::MARGINAL)
        .iter()
        .any(|f| f.can_sink_any_caps(caps))
}

fn is_aac(s: &gst::StructureRef) -> bool {
    s.name() == "audio/mpeg" && matches!(s.get::<i32>("mpegversion"), Ok(2 | 4))
}

struct Linker {
    monitor: Arc<Monitor>,
    output: Output,
    format: AudioFormat,
    bitrate: Option<u32>,
    linked: AtomicBool,
}

impl Linker {
    fn link(&self, pipeline: &gst::Pipeline, pad: &gst::Pad) -> Result<(), MediaError> {
        let caps = pad.current_caps();
        let s = caps.as_ref().and_then(|c| c.structure(0));
        let raw = s.is_some_and(|s| s.name() == "audio/x-raw");
        let aac = s.is_some_and(is_aac);
        // Only the first audio stream is extracted.
        if !(raw || aac) || self.linked.swap(true, Ordering::SeqCst) {
            return discard(pipeline, pad);
        }
        let branch = if raw { self.encoder()? } else { copier()? };
        add_live_chain(pipeline, &branch)?;
        self.output.attach(&branch)?;
        let (_, last) = ends(&branch)?;
        self.monitor.track(&static_pad(last, "src")?);
        link_pad_to_chain(pad, &branch)
    }

    fn encoder(&self) -> Result<Vec<gst::Element>, MediaError> {
        // The queue puts encoding on its own thread, beside decoding.
        let mut chain = vec![
            element("queue")?,
            element("audioconvert")?,
            element("audioresample")?,
        ];
        let bitrate = self.bitrate.map(|b| i32::try_from(b).unwrap_or(i32::MAX));
        match self.format {
            AudioFormat::Opus => {
                let builder = gst::ElementFactory::make("opusenc");
                chain.push(make(match bitrate {
                    Some(b) => builder.property("bitrate", b),
                    None => builder,
                })?);
                chain.push(mux_queue()?);
            }
            AudioFormat::M4a => {
                chain.push(aac_encoder(self.bitrate)?);
                chain.push(mux_queue()?);
            }
            AudioFormat::Mp3 => {
                let builder = gst::ElementFactory::make("lamemp3enc");
                chain.push(make(match bitrate {
                    Some(b) => builder
                        .property_from_str("target", "bitrate")
                        .property("bitrate", b / 1000),
                    None => builder,
                })?);
            }
        }
        Ok(chain)
    }
}

/// AAC packets straight into mp4mux; aacparse turns ADTS into the raw
/// framing MP4 needs and leaves raw input untouched.
fn copier() -> Result<Vec<gst::Element>, MediaError> {
    Ok(vec![element("aacparse")?, mux_queue()?])
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::media::probe::probe;
    use crate::media::runner::CancelFlag;
    use crate::media::testutil::{clip, packets};

    fn extract(
        input: &Path,
        output: &Path,
        format: AudioFormat,
        bitrate: Option<u32>,
    ) -> Result<(), MediaError> {
        let cancel = CancelFlag::default();
        let mut progress = Vec::new();
        let mut record = |p| progress.push(p);
        let mut control = Control::new(&cancel, Duration::from_secs(10), &mut record);
        let result = extract_audio(input, output, format, bitrate, &mut control);
        if result.is_ok() {
            assert_eq!(progress.last(), Some(&1.0));
        }
        result
    }

    #[test]
    fn encodes_opus_mp3_and_m4a() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = clip(dir.path(), "in.mp4", 2.0, (160, 120), true);
        let cases = [
            (AudioFormat::Opus, Some(64_000), "out.opus", "opus", "ogg"),
            (AudioFormat::Mp3, Some(128_000), "out.mp3", "mp3", "mp3"),
            (AudioFormat::Mp3, None, "vbr.mp3", "mp3", "mp3"),
            (AudioFormat::M4a, Some(96_000), "out.m4a", "aac", "mp4"),
        ];
        for (format, bitrate, name, codec, container) in cases {
            let output = dir.path().join(name);
            extract(&input, &output, format, bitrate).expect("extract");
            let info = probe(&output).expect("probe output");
            assert!(info.video.is_none(), "{info:?}");
            assert_eq!(
                info.audio.as_ref().map(|a| a.codec.as_str()),
                Some(codec),
                "{info:?}"
            );
            assert_eq!(info.container, container, "{info:?}");
            assert!(
                (info.duration_seconds - 2.0).abs() < 0.1,
                "{name}: {info:?}"
            );
        }
    }

    #[test]
    fn copies_aac_into_m4a_without_reencoding() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = clip(dir.path(), "in.mp4", 2.0, (160, 120), true);
        let output = dir.path().join("out.m4a");

        extract(&input, &output, AudioFormat::M4a, None).expect("extract");

        let want: Vec<u64> = packets(&input, "audio").iter().map(|p| p.hash).collect();
        let got: Vec<u64> = packets(&output, "audio").iter().map(|p| p.hash).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn input_without_audio_is_bad_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = clip(dir.path(), "mute.mp4", 1.0, (160, 120), false);
        let output = dir.path().join("out.opus");

        let err = extract(&input, &output, AudioFormat::Opus, None).expect_err("no audio");

        assert!(matches!(err, MediaError::BadInput { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("mute.mp4") && text.contains("has no audio stream"),
            "{text}"
        );
        assert!(!output.exists());
    }
}
