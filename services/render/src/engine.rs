//! Runs a [`RenderPlan`] on local files: the one place where plan types meet
//! the GStreamer media module, and where the copy-or-encode decision is made
//! (it needs the inputs, so it cannot be made at submit).
//!
//! Blocking; the worker calls it on the blocking pool.

use std::path::{Path, PathBuf};

use reelmesh_proto::v1::CopyMode;

use crate::{
    RenderError,
    error::LocalInput,
    input::InputRef,
    media::{self, AudioFormat, Control, MediaError, TranscodeRequest, VideoFormat},
    plan::{RenderPlan, Work, decide_copy},
};

/// What a render produced: files in output order, and how much of it was
/// copied instead of re-encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub files: Vec<PathBuf>,
    pub copy: Copied,
}

/// Whether video was copied: not at all, entirely, or after a re-encoded
/// head (a smart cut).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Copied {
    Nothing,
    All,
    AfterHead { reencoded_seconds: f64 },
}

impl Copied {
    fn from_bool(copied: bool) -> Self {
        if copied { Self::All } else { Self::Nothing }
    }
}

/// How far apart a cut and a keyframe may be for the cut to count as on it.
const KEYFRAME_TOLERANCE: f64 = 0.001;
/// AAC bitrate that forces a re-encode when copying is not wanted.
const REENCODE_AAC_BITRATE: u32 = 128_000;

/// Renders `plan` from `inputs` (local copies of `plan.work.inputs()`, same
/// order) into files under `scratch`.
pub fn execute(
    plan: &RenderPlan,
    inputs: &[LocalInput],
    scratch: &Path,
    control: &mut Control<'_>,
) -> Result<Rendered, RenderError> {
    let output = scratch.join(format!("output.{}", plan.work.extension()));
    let paths: Vec<&Path> = inputs.iter().map(|input| input.path.as_path()).collect();
    let named = |err: MediaError| RenderError::from_media(err, inputs);
    let copy = match &plan.work {
        Work::Transcode {
            range,
            overlays,
            still_seconds,
            format,
            ..
        } => {
            let request = TranscodeRequest {
                input: paths[0],
                output: &output,
                range: *range,
                overlays,
                still_seconds: *still_seconds,
                format: *format,
            };
            match range {
                // Probing first would cost a copy-path trim a sixth of its
                // time, so a still image is only looked for once it fails.
                Some(range) if overlays.is_empty() && still_seconds.is_none() => {
                    trim(&request, *range, plan.copy, control, inputs).or_else(|err| {
                        check_still(paths[0], None).map_err(named)?;
                        Err(err)
                    })?
                }
                _ => {
                    check_still(paths[0], *still_seconds).map_err(named)?;
                    media::transcode(&request, control).map_err(named)?;
                    Copied::Nothing
                }
            }
        }
        Work::Concat { format, .. } => {
            let probe = tracing::info_span!("probe_inputs")
                .in_scope(|| media::ConcatProbe::of(&paths))
                .map_err(named)?;
            let compatible = copyable_to(*format).and_then(|()| {
                probe
                    .copy_compatible(&paths)
                    .map_err(|why| name_inputs(&why, inputs))
            });
            let copy = decide_copy(plan.copy, compatible)?;
            if copy {
                tracing::info_span!("concat_copy")
                    .in_scope(|| media::concat_probed(&paths, &probe, &output, control))
                    .map_err(named)?;
            } else {
                media::concat_reencode(&paths, &output, *format, control).map_err(named)?;
            }
            Copied::from_bool(copy)
        }
        Work::ExtractAudio {
            format,
            bitrate_kbps,
            ..
        } => Copied::from_bool(
            extract_audio(
                paths[0],
                &output,
                *format,
                *bitrate_kbps,
                plan.copy,
                control,
            )
            .map_err(named)?,
        ),
        Work::Edit {
            timeline,
            subtitle_file,
            format,
        } => {
            let mut timeline = timeline.locate(|key| local_path(key, inputs))?;
            if let (Some(key), Some(track)) = (subtitle_file, timeline.subtitles.as_mut()) {
                track.cues = read_srt(key, inputs)?;
            }
            media::render_timeline(&timeline, &output, format, control).map_err(named)?;
            Copied::Nothing
        }
        Work::Ingest { .. } => {
            return Err(RenderError::Plan("an ingest is not rendered".into()));
        }
        Work::Noop { seconds, fail } => {
            wait(*seconds, control)?;
            if *fail {
                return Err(RenderError::Pipeline(
                    "noop: this attempt fails, as the job's fail_attempts asks".into(),
                ));
            }
            return Ok(Rendered {
                files: Vec::new(),
                copy: Copied::Nothing,
            });
        }
        Work::Thumbnails {
            times,
            format,
            width,
            ..
        } => {
            let files = media::thumbnails(paths[0], times, *format, *width, scratch, control)
                .map_err(named)?;
            return Ok(Rendered {
                files,
                copy: Copied::Nothing,
            });
        }
    };
    Ok(Rendered {
        files: vec![output],
        copy,
    })
}

/// A noop's wait: in small steps, reporting progress and honouring cancel.
fn wait(seconds: f64, control: &mut Control<'_>) -> Result<(), RenderError> {
    const STEP: std::time::Duration = std::time::Duration::from_millis(20);
    let total = std::time::Duration::from_secs_f64(seconds);
    let started = std::time::Instant::now();
    while started.elapsed() < total {
        if control.cancel.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(RenderError::Cancelled);
        }
        (control.on_progress)(started.elapsed().as_secs_f64() / seconds);
        std::thread::sleep(STEP.min(total.saturating_sub(started.elapsed())));
    }
    // A wait of nothing has no progress to tell: its completed event says
    // it all, and a 100 % progress event would cost every such job a write.
    if seconds > 0.0 {
        (control.on_progress)(1.0);
    }
    Ok(())
}

fn local_path(wanted: &InputRef, inputs: &[LocalInput]) -> Result<PathBuf, RenderError> {
    inputs
        .iter()
        .find(|local| &local.input == wanted)
        .map(|local| local.path.clone())
        .ok_or_else(|| RenderError::InputNotFound(wanted.to_string()))
}

fn read_srt(key: &InputRef, inputs: &[LocalInput]) -> Result<Vec<media::Cue>, RenderError> {
    let bad = |reason: String| RenderError::BadInput {
        asset: key.to_string(),
        reason,
    };
    let bytes = std::fs::read(local_path(key, inputs)?)?;
    let text = String::from_utf8(bytes).map_err(|_| bad("is not UTF-8 text".into()))?;
    media::parse_srt(&text).map_err(|err| bad(err.to_string()))
}

/// Copy paths write MP4 with the inputs' H.264/AAC; any other output
/// format means encoding.
fn copyable_to(format: VideoFormat) -> Result<(), String> {
    match format.copy_blocker() {
        None => Ok(()),
        Some(why) => Err(why.into()),
    }
}

/// Replaces scratch paths in `text` with the inputs they hold, so a
/// message a client sees names its own inputs.
fn name_inputs(text: &str, inputs: &[LocalInput]) -> String {
    inputs.iter().fold(text.to_string(), |text, local| {
        text.replace(&local.path.display().to_string(), &local.input.to_string())
    })
}

/// A duration is for still images only, and a still image needs one: a
/// video given a duration, or an image without one, is refused by name.
fn check_still(input: &Path, still_seconds: Option<f64>) -> Result<(), MediaError> {
    let info = media::probe(input)?;
    let is_still =
        info.video.as_ref().is_some_and(|video| video.fps == 0.0) && info.audio.is_none();
    match (is_still, still_seconds) {
        (true, None) => Err(MediaError::bad_input(
            input,
            "is a still image: set duration_seconds to make a video of it",
        )),
        (false, Some(_)) => Err(MediaError::bad_input(
            input,
            "is not a still image, so duration_seconds must be 0",
        )),
        _ => Ok(()),
    }
}

/// A plain trim: a packet copy when it starts on a keyframe, a smart cut
/// (re-encode to the next keyframe, copy the rest) when it does not and
/// the mode is AUTO, a full re-encode otherwise. REQUIRED refuses the
/// smart cut because it re-encodes some frames.
fn trim(
    request: &TranscodeRequest<'_>,
    range: (f64, f64),
    mode: CopyMode,
    control: &mut Control<'_>,
    inputs: &[LocalInput],
) -> Result<Copied, RenderError> {
    let (input, output) = (request.input, request.output);
    let named = |err: MediaError| RenderError::from_media(err, inputs);
    let format_copyable = copyable_to(request.format);
    // Found once and handed to the cut, which would otherwise look again.
    let keys = match mode {
        // Nothing will be copied, so there is nothing to look for.
        CopyMode::Never => Err("copying is not wanted".to_string()),
        _ => tracing::info_span!("find_keyframes").in_scope(|| {
            format_copyable
                .clone()
                .and_then(|()| media::keyframes_near(input, range.0).map_err(|err| err.to_string()))
        }),
    };
    let aligned = keys.clone().and_then(|keys| trim_copyable(&keys, range));
    if mode == CopyMode::Auto && format_copyable.is_ok() && aligned.is_err() {
        let cut = match &keys {
            Ok(keys) => media::trim_smart_at(input, output, range, keys, control),
            // Let the cut say in its own words why the keyframes are missing.
            Err(_) => media::trim_smart(input, output, range, control),
        };
        let cut = cut.map_err(named)?;
        return Ok(match cut.copied_from {
            Some(_) => Copied::AfterHead {
                reencoded_seconds: cut.reencoded_seconds,
            },
            None => Copied::Nothing,
        });
    }
    if decide_copy(mode, aligned)? {
        let keys = keys.unwrap_or_default();
        tracing::info_span!("trim_copy")
            .in_scope(|| media::trim_copy_at(input, output, range, &keys, control))
            .map_err(named)?;
        Ok(Copied::All)
    } else {
        media::transcode(request, control).map_err(named)?;
        Ok(Copied::Nothing)
    }
}

/// A cut can be copied when it starts on one of `keyframes` (those around
/// its start); the reason otherwise.
fn trim_copyable(keyframes: &[f64], (start, _end): (f64, f64)) -> Result<(), String> {
    if keyframes
        .iter()
        .any(|k| (k - start).abs() <= KEYFRAME_TOLERANCE)
    {
        return Ok(());
    }
    let before = keyframes
        .iter()
        .rev()
        .find(|k| **k < start)
        .copied()
        .unwrap_or(0.0);
    let after = keyframes.iter().find(|k| **k > start);
    Err(match after {
        Some(after) => format!(
            "the cut at {start:.3} s is between keyframes at {before:.3} s and {after:.3} s"
        ),
        None => format!("the cut at {start:.3} s is after the last keyframe at {before:.3} s"),
    })
}

/// Extracts audio; returns whether the AAC stream was copied into M4A.
fn extract_audio(
    input: &Path,
    output: &Path,
    format: AudioFormat,
    bitrate_kbps: Option<u32>,
    copy: CopyMode,
    control: &mut Control<'_>,
) -> Result<bool, MediaError> {
    let bitrate = bitrate_kbps.map(|kbps| kbps * 1000);
    let copied = match format {
        AudioFormat::Opus | AudioFormat::Mp3 => false,
        AudioFormat::M4a => {
            let is_aac = media::probe(input)?
                .audio
                .is_some_and(|audio| audio.codec == "aac");
            is_aac && bitrate.is_none() && copy != CopyMode::Never
        }
    };
    if copy == CopyMode::Required && !copied {
        return Err(MediaError::BadInput {
            input: input.display().to_string(),
            reason: "copy mode is REQUIRED but the audio is not AAC, so it cannot be copied".into(),
        });
    }
    // The media module copies AAC whenever no bitrate is asked for; asking
    // for one is how a re-encode is forced.
    let bitrate = match format {
        AudioFormat::M4a if copied => None,
        AudioFormat::M4a => bitrate.or(Some(REENCODE_AAC_BITRATE)),
        AudioFormat::Opus | AudioFormat::Mp3 => bitrate,
    };
    media::extract_audio(input, output, format, bitrate, control)?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use reelmesh_store::ObjectKey;

    use super::*;

    #[test]
    fn messages_name_assets_not_scratch_files() {
        let inputs = vec![
            LocalInput {
                input: InputRef::Asset(ObjectKey::parse("in/a.mp4").expect("key")),
                path: PathBuf::from("/tmp/scratch/input-0"),
            },
            LocalInput {
                input: InputRef::Asset(ObjectKey::parse("in/b.mp4").expect("key")),
                path: PathBuf::from("/tmp/scratch/input-1"),
            },
        ];
        let text = "/tmp/scratch/input-1: size differs (compared with /tmp/scratch/input-0)";
        assert_eq!(
            name_inputs(text, &inputs),
            "in/b.mp4: size differs (compared with in/a.mp4)"
        );
    }
}
