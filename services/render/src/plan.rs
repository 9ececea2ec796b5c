//! Turns a job spec into a [`RenderPlan`]: what work to do on which inputs,
//! whether streams may be copied, and which store keys the results go to.
//!
//! The gateway has already validated the spec (and expanded merge fields);
//! planning is pure, so every decision here is unit-tested without media.

use reelmesh_nats::{JobId, outputs_dir};
use reelmesh_proto::v1::{
    self as pb, Container, CopyMode, JobSpec, Source, job_spec::Operation, source::Kind,
};
use reelmesh_store::ObjectKey;
use url::Url;

use crate::{
    RenderError,
    input::InputRef,
    media::{
        AudioBed, AudioCodec, AudioFormat, Clip, ClipSource, Fit, ImageFormat, Picture, Position,
        SubtitleTrack, TextOverlay, Timeline, Transition, TransitionKind, VideoCodec,
        VideoContainer, VideoFormat, parse_srt,
    },
};

#[derive(Debug, Clone, PartialEq)]
pub struct RenderPlan {
    pub work: Work,
    pub copy: CopyMode,
    /// Where this attempt writes: results go under a key of their own per
    /// attempt and delivery, so an attempt that lost its job (it stalled
    /// and another took over) can never overwrite the result the job
    /// records, nor remove it when it cleans up.
    pub output_dir: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// No media: wait, then succeed, or fail as a render error would.
    Noop { seconds: f64, fail: bool },
    /// Decode (or copy, for a keyframe-aligned trim), optionally cut and
    /// draw text, encode H.264/AAC MP4. Serves trim, transcode and add_text.
    Transcode {
        input: InputRef,
        range: Option<(f64, f64)>,
        overlays: Vec<TextOverlay>,
        /// The input is a still image shown for this many seconds.
        still_seconds: Option<f64>,
        format: VideoFormat,
    },
    Concat {
        inputs: Vec<InputRef>,
        format: VideoFormat,
    },
    ExtractAudio {
        input: InputRef,
        format: AudioFormat,
        bitrate_kbps: Option<u32>,
    },
    Thumbnails {
        input: InputRef,
        times: Vec<f64>,
        format: ImageFormat,
        width: Option<u32>,
    },
    /// Into the asset catalog: fetch, check it is media, store, record.
    /// Not rendered: the worker does it without the engine.
    Ingest { source: InputRef, title: String },
    /// A timeline of clips, transitions, text, subtitles and audio.
    Edit {
        timeline: Timeline<InputRef>,
        /// An SRT file whose cues fill `timeline.subtitles` once fetched.
        subtitle_file: Option<InputRef>,
        format: VideoFormat,
    },
}

impl Work {
    /// Whether the work reads or writes files (a noop does neither).
    pub fn uses_files(&self) -> bool {
        !matches!(self, Work::Noop { .. })
    }

    /// The inputs to fetch, in the order the work uses them.
    pub fn inputs(&self) -> Vec<&InputRef> {
        match self {
            Work::Concat { inputs, .. } => inputs.iter().collect(),
            Work::Edit {
                timeline,
                subtitle_file,
                ..
            } => timeline.sources().chain(subtitle_file).collect(),
            Work::Transcode { input, .. }
            | Work::ExtractAudio { input, .. }
            | Work::Thumbnails { input, .. }
            | Work::Ingest { source: input, .. } => {
                vec![input]
            }
            Work::Noop { .. } => Vec::new(),
        }
    }

    /// File extension of the result.
    pub fn extension(&self) -> &'static str {
        match self {
            Work::Transcode { format, .. }
            | Work::Concat { format, .. }
            | Work::Edit { format, .. } => format.extension(),
            Work::ExtractAudio { format, .. } => match format {
                AudioFormat::M4a => "m4a",
                AudioFormat::Opus => "opus",
                AudioFormat::Mp3 => "mp3",
            },
            Work::Thumbnails { format, .. } => format.extension(),
            Work::Noop { .. } | Work::Ingest { .. } => "none",
        }
    }
}

impl RenderPlan {
    /// The plan of attempt number `attempt` (from 1) of `job`, taken on
    /// the `delivery`th delivery of its work item.
    pub fn for_job(
        job: &JobId,
        attempt: u32,
        delivery: i64,
        spec: &JobSpec,
    ) -> Result<Self, RenderError> {
        let output = spec.output.unwrap_or_default();
        let format = video_format(&output);
        let work = match spec.operation.as_ref() {
            Some(Operation::Trim(trim)) => Work::Transcode {
                input: input_ref(trim.input.as_ref())?,
                range: Some((trim.start_seconds, trim.end_seconds)),
                overlays: Vec::new(),
                still_seconds: None,
                format,
            },
            Some(Operation::Transcode(transcode)) => Work::Transcode {
                input: input_ref(transcode.input.as_ref())?,
                range: None,
                overlays: Vec::new(),
                still_seconds: None,
                format,
            },
            Some(Operation::AddText(add_text)) => Work::Transcode {
                input: input_ref(add_text.input.as_ref())?,
                range: None,
                overlays: add_text
                    .overlays
                    .iter()
                    .map(overlay)
                    .collect::<Result<_, _>>()?,
                still_seconds: Some(add_text.duration_seconds).filter(|seconds| *seconds > 0.0),
                format,
            },
            Some(Operation::Concat(concat)) => Work::Concat {
                inputs: concat
                    .inputs
                    .iter()
                    .map(|s| input_ref(Some(s)))
                    .collect::<Result<_, _>>()?,
                format,
            },
            Some(Operation::ExtractAudio(extract)) => Work::ExtractAudio {
                input: input_ref(extract.input.as_ref())?,
                format: match output.container() {
                    Container::Opus => AudioFormat::Opus,
                    Container::Mp3 => AudioFormat::Mp3,
                    _ => AudioFormat::M4a,
                },
                bitrate_kbps: Some(output.audio_bitrate_kbps).filter(|kbps| *kbps > 0),
            },
            Some(Operation::Thumbnail(thumbnail)) => Work::Thumbnails {
                input: input_ref(thumbnail.input.as_ref())?,
                times: thumbnail.times_seconds.clone(),
                format: match output.container() {
                    Container::Png => ImageFormat::Png,
                    _ => ImageFormat::Jpeg,
                },
                width: Some(output.width).filter(|width| *width > 0),
            },
            Some(Operation::Edit(edit)) => edit_work(edit, format)?,
            Some(Operation::Ingest(ingest)) => Work::Ingest {
                source: input_ref(ingest.source.as_ref())?,
                title: ingest.title.clone(),
            },
            Some(Operation::Noop(noop)) => Work::Noop {
                seconds: noop.seconds,
                fail: attempt <= noop.fail_attempts,
            },
            None => return Err(RenderError::Plan("the job has no operation".into())),
        };
        Ok(RenderPlan {
            work,
            copy: spec.copy(),
            output_dir: output_dir(job, attempt, delivery),
        })
    }

    /// Store key of the `index`th result file: `result.<ext>` for the one
    /// result of most operations, `thumb-<index>.<ext>` for thumbnails.
    pub fn output_key(&self, index: usize) -> Result<ObjectKey, RenderError> {
        let ext = self.work.extension();
        match self.work {
            Work::Thumbnails { .. } => {
                output_key(&format!("{}/thumb-{index:03}.{ext}", self.output_dir))
            }
            _ => output_key(&format!("{}/result.{ext}", self.output_dir)),
        }
    }
}

/// The container, codecs, picture and rate control a video operation writes
/// (the gateway has checked that they fit together).
fn video_format(output: &pb::OutputSpec) -> VideoFormat {
    let container = match output.container() {
        Container::Webm => VideoContainer::Webm,
        Container::Mkv => VideoContainer::Mkv,
        _ => VideoContainer::Mp4,
    };
    let webm = container == VideoContainer::Webm;
    let video = match output.video_codec() {
        pb::VideoCodec::Vp8 => VideoCodec::Vp8,
        pb::VideoCodec::Vp9 => VideoCodec::Vp9,
        pb::VideoCodec::H264 => VideoCodec::H264,
        pb::VideoCodec::Unspecified if webm => VideoCodec::Vp9,
        pb::VideoCodec::Unspecified => VideoCodec::H264,
    };
    let audio = match output.audio_codec() {
        pb::AudioCodec::Opus => AudioCodec::Opus,
        pb::AudioCodec::Mp3 => AudioCodec::Mp3,
        pb::AudioCodec::Aac => AudioCodec::Aac,
        pb::AudioCodec::Unspecified if webm => AudioCodec::Opus,
        pb::AudioCodec::Unspecified => AudioCodec::Aac,
    };
    let positive = |value: u32| Some(value).filter(|v| *v > 0);
    VideoFormat {
        container,
        video,
        audio,
        picture: (output.width > 0 && output.height > 0).then(|| Picture {
            width: output.width,
            height: output.height,
            fit: match output.fit() {
                pb::Fit::Cover => Fit::Cover,
                pb::Fit::Contain => Fit::Contain,
            },
        }),
        fps: positive(output.fps),
        video_bitrate_kbps: positive(output.video_bitrate_kbps),
        quality: positive(output.quality),
        audio_bitrate_kbps: positive(output.audio_bitrate_kbps),
        faststart: output.faststart.unwrap_or(true),
    }
}

/// Whether to copy streams, given what the inputs allow (`possible` says
/// why not when they do not).
pub fn decide_copy(mode: CopyMode, possible: Result<(), String>) -> Result<bool, RenderError> {
    match (mode, possible) {
        (CopyMode::Never, _) => Ok(false),
        (CopyMode::Auto, possible) => Ok(possible.is_ok()),
        (CopyMode::Required, Ok(())) => Ok(true),
        (CopyMode::Required, Err(why)) => Err(RenderError::Plan(format!(
            "copy mode is REQUIRED but the streams cannot be copied: {why}"
        ))),
    }
}

fn edit_work(edit: &pb::Edit, format: VideoFormat) -> Result<Work, RenderError> {
    let clips = edit
        .clips
        .iter()
        .map(clip)
        .collect::<Result<_, RenderError>>()?;
    let audio = edit
        .audio
        .iter()
        .map(|track| {
            Ok(AudioBed {
                source: input_ref(track.source.as_ref())?,
                volume: track.volume.unwrap_or(1.0),
                start_seconds: track.start_seconds,
                in_seconds: track.in_seconds,
                duration_seconds: Some(track.duration_seconds).filter(|d| *d > 0.0),
                fade_in_seconds: track.fade_in_seconds,
                fade_out_seconds: track.fade_out_seconds,
            })
        })
        .collect::<Result<_, RenderError>>()?;
    let overlays = edit
        .overlays
        .iter()
        .map(overlay)
        .collect::<Result<_, _>>()?;
    let (subtitles, subtitle_file) = match &edit.subtitles {
        Some(spec) => {
            let (cues, file) = match &spec.srt {
                Some(pb::subtitles::Srt::Text(text)) => (
                    parse_srt(text)
                        .map_err(|err| RenderError::Plan(format!("edit.subtitles: {err}")))?,
                    None,
                ),
                Some(pb::subtitles::Srt::File(source)) => {
                    (Vec::new(), Some(input_ref(Some(source))?))
                }
                None => return Err(RenderError::Plan("edit.subtitles has no srt".into())),
            };
            (
                Some(SubtitleTrack {
                    cues,
                    style: subtitle_style(spec)?,
                }),
                file,
            )
        }
        None => (None, None),
    };
    Ok(Work::Edit {
        timeline: Timeline {
            clips,
            overlays,
            subtitles,
            audio,
        },
        subtitle_file,
        format,
    })
}

fn clip(spec: &pb::Clip) -> Result<Clip<InputRef>, RenderError> {
    let source = match &spec.source {
        Some(pb::clip::Source::Media(media)) => ClipSource::Media(input_ref(Some(media))?),
        Some(pb::clip::Source::Color(text)) => ClipSource::Color(
            reelmesh_proto::parse_color(text)
                .ok_or_else(|| RenderError::Plan(format!("bad colour {text:?}")))?,
        ),
        None => return Err(RenderError::Plan("a clip has no source".into())),
    };
    let transition = spec.transition.as_ref().and_then(|t| {
        let kind = match t.kind() {
            pb::TransitionKind::None => return None,
            pb::TransitionKind::Crossfade => TransitionKind::Crossfade,
            pb::TransitionKind::Fade => TransitionKind::Fade,
        };
        Some(Transition {
            kind,
            seconds: t.duration_seconds,
        })
    });
    Ok(Clip {
        source,
        in_seconds: spec.in_seconds,
        out_seconds: Some(spec.out_seconds).filter(|out| *out > 0.0),
        duration_seconds: Some(spec.duration_seconds).filter(|d| *d > 0.0),
        transition,
    })
}

const SUBTITLE_SIZE: u32 = 36;
/// Translucent black, so subtitles read over any picture.
const SUBTITLE_BOX: u32 = 0x0000_00a0;

/// Subtitles are drawn like a bottom-centred overlay with their own defaults.
fn subtitle_style(spec: &pb::Subtitles) -> Result<TextOverlay, RenderError> {
    let mut style = overlay(&pb::TextOverlay {
        font: spec.font.clone(),
        size: Some(spec.size).filter(|s| *s > 0).unwrap_or(SUBTITLE_SIZE),
        color: spec.color.clone(),
        box_color: spec.box_color.clone(),
        ..Default::default()
    })?;
    style.box_rgba = style.box_rgba.or(Some(SUBTITLE_BOX));
    Ok(style)
}

fn input_ref(source: Option<&Source>) -> Result<InputRef, RenderError> {
    match source.and_then(|source| source.kind.as_ref()) {
        Some(Kind::Asset(key)) => ObjectKey::parse(key)
            .map(InputRef::Asset)
            .map_err(|err| RenderError::Plan(err.to_string())),
        Some(Kind::Url(url)) => Url::parse(url)
            .map(InputRef::Url)
            .map_err(|err| RenderError::Plan(format!("input URL {url:?}: {err}"))),
        None => Err(RenderError::Plan("the job has no input".into())),
    }
}

/// `outputs/<job>/<attempt>`, and `.<delivery>` after it for a work item
/// delivered again. An attempt's number is fixed by the compare-and-set
/// that writes its start, but a worker that defers that write renders
/// under the number it expects; a second delivery of the same item (the
/// first worker stalled before writing) expects the same number, and only
/// the delivery count tells the two apart.
fn output_dir(job: &JobId, attempt: u32, delivery: i64) -> String {
    match delivery {
        ..=1 => format!("{}/{attempt}", outputs_dir(job)),
        _ => format!("{}/{attempt}.{delivery}", outputs_dir(job)),
    }
}

fn output_key(key: &str) -> Result<ObjectKey, RenderError> {
    ObjectKey::parse(key).map_err(|err| RenderError::Plan(err.to_string()))
}

const DEFAULT_FONT: &str = "Sans";
const DEFAULT_TEXT_SIZE: u32 = 48;
const WHITE: u32 = 0xffff_ffff;

fn overlay(spec: &pb::TextOverlay) -> Result<TextOverlay, RenderError> {
    let color = |text: &str| {
        reelmesh_proto::parse_color(text)
            .ok_or_else(|| RenderError::Plan(format!("bad colour {text:?}")))
    };
    Ok(TextOverlay {
        text: spec.text.clone(),
        font: Some(spec.font.clone())
            .filter(|f| !f.is_empty())
            .unwrap_or_else(|| DEFAULT_FONT.into()),
        size_px: Some(spec.size)
            .filter(|s| *s > 0)
            .unwrap_or(DEFAULT_TEXT_SIZE),
        color_rgba: if spec.color.is_empty() {
            WHITE
        } else {
            color(&spec.color)?
        },
        position: position(spec),
        start_seconds: spec.start_seconds,
        end_seconds: Some(spec.end_seconds).filter(|end| *end > 0.0),
        box_rgba: if spec.box_color.is_empty() {
            None
        } else {
            Some(color(&spec.box_color)?)
        },
    })
}

fn position(spec: &pb::TextOverlay) -> Position {
    match spec.position() {
        pb::Position::TopLeft => Position::TopLeft,
        pb::Position::TopCenter => Position::TopCenter,
        pb::Position::TopRight => Position::TopRight,
        pb::Position::CenterLeft => Position::CenterLeft,
        pb::Position::Center => Position::Center,
        pb::Position::CenterRight => Position::CenterRight,
        pb::Position::BottomLeft => Position::BottomLeft,
        pb::Position::BottomCenter => Position::BottomCenter,
        pb::Position::BottomRight => Position::BottomRight,
        pb::Position::Custom => Position::Xy {
            x: spec.x,
            y: spec.y,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reelmesh_proto::v1::{
        AddText, Concat, ExtractAudio, OutputSpec, TextOverlay, Thumbnail, Trim,
    };

    fn asset(key: &str) -> Source {
        Source {
            kind: Some(Kind::Asset(key.into())),
        }
    }

    fn plan(operation: Operation, output: Option<OutputSpec>) -> RenderPlan {
        let spec = JobSpec {
            operation: Some(operation),
            output,
            ..Default::default()
        };
        RenderPlan::for_job(&JobId::new(), 1, 1, &spec).expect("plan")
    }

    #[test]
    fn a_trim_plans_its_range_and_an_output_per_job() {
        let job = JobId::new();
        let spec = JobSpec {
            operation: Some(Operation::Trim(Trim {
                input: Some(asset("inputs/a.mp4")),
                start_seconds: 1.0,
                end_seconds: 4.0,
            })),
            ..Default::default()
        };
        let plan = RenderPlan::for_job(&job, 2, 1, &spec).expect("plan");
        let Work::Transcode { input, range, .. } = &plan.work else {
            panic!("{plan:?}")
        };
        assert_eq!(input.to_string(), "inputs/a.mp4");
        assert_eq!(*range, Some((1.0, 4.0)));
        assert_eq!(
            plan.output_key(0).expect("key").as_str(),
            format!("outputs/{job}/2/result.mp4")
        );
        assert_eq!(plan.copy, CopyMode::Auto);
        // Two deliveries of one item that both expect attempt 2 (the first
        // stalled before writing its start) write apart.
        let again = RenderPlan::for_job(&job, 2, 3, &spec).expect("plan");
        assert_eq!(
            again.output_key(0).expect("key").as_str(),
            format!("outputs/{job}/2.3/result.mp4")
        );
    }

    #[test]
    fn url_sources_become_url_inputs() {
        let url = |text: &str| Source {
            kind: Some(Kind::Url(text.into())),
        };
        let plan = plan(
            Operation::Concat(Concat {
                inputs: vec![url("https://cdn.example.com/a.mp4?sig=x"), asset("b.mp4")],
            }),
            None,
        );
        let inputs = plan.work.inputs();
        assert!(matches!(inputs[0], InputRef::Url(u) if u.query() == Some("sig=x")));
        assert!(matches!(inputs[1], InputRef::Asset(_)));
        let bad = JobSpec {
            operation: Some(Operation::Transcode(pb::Transcode {
                input: Some(url("https://")),
            })),
            ..Default::default()
        };
        let err = RenderPlan::for_job(&JobId::new(), 1, 1, &bad).expect_err("no host");
        assert!(err.to_string().contains("input URL"), "{err}");
    }

    #[test]
    fn concat_keeps_input_order() {
        let plan = plan(
            Operation::Concat(Concat {
                inputs: vec![asset("b.mp4"), asset("a.mp4"), asset("c.mp4")],
            }),
            None,
        );
        let keys: Vec<String> = plan.work.inputs().iter().map(|k| k.to_string()).collect();
        assert_eq!(keys, vec!["b.mp4", "a.mp4", "c.mp4"]);
    }

    #[test]
    fn audio_and_image_outputs_follow_the_container() {
        let audio = plan(
            Operation::ExtractAudio(ExtractAudio {
                input: Some(asset("a.mp4")),
            }),
            Some(OutputSpec {
                container: Container::Opus as i32,
                audio_bitrate_kbps: 96,
                ..Default::default()
            }),
        );
        assert!(matches!(
            audio.work,
            Work::ExtractAudio {
                format: AudioFormat::Opus,
                bitrate_kbps: Some(96),
                ..
            }
        ));
        assert!(
            audio
                .output_key(0)
                .expect("key")
                .as_str()
                .ends_with("/result.opus")
        );
        let default_audio = plan(
            Operation::ExtractAudio(ExtractAudio {
                input: Some(asset("a.mp4")),
            }),
            None,
        );
        assert!(
            default_audio
                .output_key(0)
                .expect("key")
                .as_str()
                .ends_with(".m4a")
        );

        let thumbs = plan(
            Operation::Thumbnail(Thumbnail {
                input: Some(asset("a.mp4")),
                times_seconds: vec![1.0, 2.0],
            }),
            Some(OutputSpec {
                container: Container::Png as i32,
                width: 320,
                ..Default::default()
            }),
        );
        assert!(matches!(
            thumbs.work,
            Work::Thumbnails {
                format: ImageFormat::Png,
                width: Some(320),
                ..
            }
        ));
        let key = thumbs.output_key(7).expect("key");
        assert!(key.as_str().ends_with("/1/thumb-007.png"), "{key}");
    }

    #[test]
    fn overlays_get_defaults_and_decoded_colours() {
        let plan = plan(
            Operation::AddText(AddText {
                input: Some(asset("a.mp4")),
                overlays: vec![TextOverlay {
                    text: "Hi".into(),
                    box_color: "#00000080".into(),
                    end_seconds: 3.0,
                    ..Default::default()
                }],
                duration_seconds: 0.0,
            }),
            None,
        );
        let Work::Transcode {
            overlays,
            range: None,
            ..
        } = plan.work
        else {
            panic!("add_text plans a whole-file transcode")
        };
        let overlay = &overlays[0];
        assert_eq!(
            (overlay.font.as_str(), overlay.size_px, overlay.color_rgba),
            ("Sans", 48, WHITE)
        );
        assert_eq!(overlay.box_rgba, Some(0x0000_0080));
        assert_eq!(overlay.end_seconds, Some(3.0));
        assert_eq!(overlay.position, Position::BottomCenter);
    }

    #[test]
    fn copy_decisions_follow_the_mode() {
        let impossible = || Err("inputs differ in resolution".to_string());
        assert!(decide_copy(CopyMode::Auto, Ok(())).expect("auto"));
        assert!(!decide_copy(CopyMode::Auto, impossible()).expect("auto"));
        assert!(!decide_copy(CopyMode::Never, Ok(())).expect("never"));
        let err = decide_copy(CopyMode::Required, impossible()).expect_err("required");
        assert!(
            err.to_string().contains("inputs differ in resolution"),
            "{err}"
        );
    }
}
