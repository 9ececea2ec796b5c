//! Single frames out of a video: thumbnails as JPEG/PNG files, and raw RGB
//! frames for checks on what was rendered.
//!
//! A frame grab is not a run to end-of-stream, so it does not use the
//! runner's bus loop: the pipeline stays PAUSED and each frame is an
//! accurate flushing seek followed by the appsink's preroll sample. The
//! stall timeout bounds every state change instead, and cancel is checked
//! between frames.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use gst::prelude::*;
use gstreamer as gst;

use crate::media::MediaError;
use crate::media::elements::{
    Kind, add_live_chain, capsfilter, discard, element, file_source, link_pad_to_chain, make,
    pipeline_error,
};
use crate::media::runner::Control;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Jpeg,
    Png,
}

impl ImageFormat {
    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "jpg",
            ImageFormat::Png => "png",
        }
    }
}

/// One decoded frame, 8-bit RGB, rows packed.
#[derive(Debug, Clone)]
pub struct RgbFrame {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// Writes one image per time into `out_dir` (thumb-000.jpg, ...), scaled to
/// `width` with the aspect ratio kept when given.
pub fn thumbnails(
    input: &Path,
    times: &[f64],
    format: ImageFormat,
    width: Option<u32>,
    out_dir: &Path,
    control: &mut Control<'_>,
) -> Result<Vec<PathBuf>, MediaError> {
    let grabber = Grabber::open(input, Tail::Image(format, width), control.stall_timeout)?;
    let mut written = Vec::new();
    let result = (|| {
        for (index, time) in times.iter().enumerate() {
            if control.cancel.load(Ordering::SeqCst) {
                return Err(MediaError::Cancelled);
            }
            let image = grabber.frame_at(*time)?;
            let path = out_dir.join(format!("thumb-{index:03}.{}", format.extension()));
            std::fs::write(&path, image)
                .map_err(|e| MediaError::Pipeline(format!("{}: {e}", path.display())))?;
            written.push(path);
            (control.on_progress)((index + 1) as f64 / times.len() as f64);
        }
        Ok(())
    })();
    if let Err(err) = result {
        written.iter().for_each(|path| {
            let _ = std::fs::remove_file(path);
        });
        return Err(err);
    }
    Ok(written)
}

/// The frame shown at `time`, as RGB pixels.
pub fn rgb_frame_at(
    input: &Path,
    time: f64,
    stall_timeout: std::time::Duration,
) -> Result<RgbFrame, MediaError> {
    let grabber = Grabber::open(input, Tail::Rgb, stall_timeout)?;
    let caps_and_data = grabber.sample_at(time)?;
    let (caps, data) = caps_and_data;
    let structure = caps
        .structure(0)
        .ok_or_else(|| MediaError::Pipeline("frame without caps".into()))?;
    let width = structure.get::<i32>("width").map_err(pipeline_error)? as usize;
    let height = structure.get::<i32>("height").map_err(pipeline_error)? as usize;
    // GStreamer pads RGB rows to 4 bytes; pack them.
    let stride = (width * 3).div_ceil(4) * 4;
    let data = (0..height)
        .flat_map(|row| data[row * stride..row * stride + width * 3].iter().copied())
        .collect();
    Ok(RgbFrame {
        width,
        height,
        data,
    })
}

enum Tail {
    Image(ImageFormat, Option<u32>),
    Rgb,
}

/// filesrc ! decodebin ! videoconvert ! videoscale ! caps ! [encoder] ! appsink,
/// held in PAUSED.
struct Grabber {
    input: PathBuf,
    pipeline: gst::Pipeline,
    sink: gst::Element,
    timeout: gst::ClockTime,
}

impl Grabber {
    fn open(input: &Path, tail: Tail, timeout: std::time::Duration) -> Result<Self, MediaError> {
        crate::media::init()?;
        let pipeline = gst::Pipeline::new();
        let source = file_source(input)?;
        let decodebin = element("decodebin")?;
        let sink = make(gst::ElementFactory::make("appsink").property("sync", false))?;
        let chain = video_chain(&tail, &sink)?;
        pipeline
            .add_many([&source, &decodebin])
            .map_err(pipeline_error)?;
        source.link(&decodebin).map_err(pipeline_error)?;
        let weak = pipeline.downgrade();
        let linked = std::sync::Mutex::new(Some(chain));
        decodebin.connect_pad_added(move |_, pad| {
            let Some(pipeline) = weak.upgrade() else {
                return;
            };
            let chain = match Kind::of(pad) {
                Some(Kind::Video) => linked.lock().ok().and_then(|mut chain| chain.take()),
                _ => None,
            };
            let _ = match chain {
                Some(chain) => {
                    add_live_chain(&pipeline, &chain).and_then(|()| link_pad_to_chain(pad, &chain))
                }
                None => discard(&pipeline, pad),
            };
        });
        let grabber = Grabber {
            input: input.to_path_buf(),
            pipeline,
            sink,
            timeout: gst::ClockTime::from_nseconds(timeout.as_nanos() as u64),
        };
        grabber.settle(gst::State::Paused)?;
        Ok(grabber)
    }

    /// The encoded image (or raw frame) at `time`.
    fn frame_at(&self, time: f64) -> Result<Vec<u8>, MediaError> {
        self.sample_at(time).map(|(_, data)| data)
    }

    fn sample_at(&self, time: f64) -> Result<(gst::Caps, Vec<u8>), MediaError> {
        let duration = self.pipeline.query_duration::<gst::ClockTime>();
        if duration.is_some_and(|duration| time >= duration.seconds_f64()) || time < 0.0 {
            return Err(MediaError::bad_input(
                &self.input,
                format!(
                    "no frame at {time} s: the video is {:.3} s long",
                    duration.map_or(0.0, |d| d.seconds_f64())
                ),
            ));
        }
        let position = gst::ClockTime::from_nseconds((time * 1e9) as u64);
        self.pipeline
            .seek_simple(gst::SeekFlags::FLUSH | gst::SeekFlags::ACCURATE, position)
            .map_err(|_| MediaError::bad_input(&self.input, format!("cannot seek to {time} s")))?;
        self.settle(gst::State::Paused)?;
        let sample = self
            .sink
            .emit_by_name::<Option<gst::Sample>>("pull-preroll", &[])
            .ok_or_else(|| MediaError::bad_input(&self.input, format!("no frame at {time} s")))?;
        let caps = sample
            .caps_owned()
            .ok_or_else(|| MediaError::Pipeline("frame without caps".into()))?;
        let buffer = sample
            .buffer()
            .ok_or_else(|| MediaError::Pipeline("empty frame".into()))?;
        let map = buffer.map_readable().map_err(pipeline_error)?;
        Ok((caps, map.as_slice().to_vec()))
    }

    /// Moves to `state` and waits for it, turning a failure into the error
    /// the pipeline posted (naming the input).
    fn settle(&self, state: gst::State) -> Result<(), MediaError> {
        let changed = self.pipeline.set_state(state).is_ok()
            && matches!(
                self.pipeline.state(self.timeout).0,
                Ok(gst::StateChangeSuccess::Success)
            );
        if changed {
            return Ok(());
        }
        let reason = self
            .pipeline
            .bus()
            .and_then(|bus| bus.pop_filtered(&[gst::MessageType::Error]))
            .and_then(|message| match message.view() {
                gst::MessageView::Error(err) => Some(err.error().to_string()),
                _ => None,
            })
            .unwrap_or_else(|| "no video frame could be decoded".into());
        Err(MediaError::bad_input(&self.input, reason))
    }
}

impl Drop for Grabber {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

fn video_chain(tail: &Tail, sink: &gst::Element) -> Result<Vec<gst::Element>, MediaError> {
    let mut caps =
        gst::Caps::builder("video/x-raw").field("pixel-aspect-ratio", gst::Fraction::new(1, 1));
    let mut chain = vec![element("videoconvert")?, element("videoscale")?];
    match tail {
        Tail::Image(format, width) => {
            if let Some(width) = width {
                caps = caps.field("width", i32::try_from(*width).unwrap_or(i32::MAX));
            }
            chain.push(capsfilter(caps.build())?);
            chain.push(element(match format {
                ImageFormat::Jpeg => "jpegenc",
                ImageFormat::Png => "pngenc",
            })?);
        }
        Tail::Rgb => chain.push(capsfilter(caps.field("format", "RGB").build())?),
    }
    chain.push(sink.clone());
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::testsrc::{TestClip, write_test_clip};

    fn clip(dir: &Path) -> PathBuf {
        let path = dir.join("clip.mp4");
        let spec = TestClip {
            seconds: 3.0,
            width: 320,
            height: 240,
            fps: 30,
            audio: true,
        };
        write_test_clip(&spec, &path).expect("clip");
        path
    }

    fn run_thumbnails(
        input: &Path,
        times: &[f64],
        width: Option<u32>,
        out: &Path,
    ) -> Result<Vec<PathBuf>, MediaError> {
        let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut progress = |_| {};
        let mut control = Control::new(&cancel, std::time::Duration::from_secs(10), &mut progress);
        thumbnails(input, times, ImageFormat::Png, width, out, &mut control)
    }

    #[test]
    fn thumbnails_keep_the_aspect_ratio_and_differ_over_time() {
        let dir = tempfile::tempdir().expect("dir");
        let input = clip(dir.path());
        let files = run_thumbnails(&input, &[0.5, 2.0], Some(160), dir.path()).expect("thumbnails");
        assert_eq!(files.len(), 2);
        assert!(files[0].ends_with("thumb-000.png"));
        let info = crate::media::probe(&files[0]).expect("probe");
        assert_eq!(info.video.map(|v| (v.width, v.height)), Some((160, 120)));
        let (a, b) = (
            std::fs::read(&files[0]).expect("a"),
            std::fs::read(&files[1]).expect("b"),
        );
        assert_ne!(a, b, "a moving pattern gives different frames");
    }

    #[test]
    fn a_time_past_the_end_names_the_input_and_leaves_no_files() {
        let dir = tempfile::tempdir().expect("dir");
        let input = clip(dir.path());
        let out = dir.path().join("out");
        std::fs::create_dir(&out).expect("out dir");
        let err = run_thumbnails(&input, &[1.0, 9.0], None, &out).expect_err("past the end");
        assert!(
            matches!(&err, MediaError::BadInput { input: i, reason } if i.ends_with("clip.mp4") && reason.contains("9 s")),
            "{err:?}"
        );
        assert_eq!(std::fs::read_dir(&out).expect("list").count(), 0);
    }

    #[test]
    fn rgb_frames_have_the_video_size() {
        let dir = tempfile::tempdir().expect("dir");
        let frame = rgb_frame_at(&clip(dir.path()), 1.0, std::time::Duration::from_secs(10))
            .expect("frame");
        assert_eq!((frame.width, frame.height), (320, 240));
        assert_eq!(frame.data.len(), 320 * 240 * 3);
    }
}
