//! Runs a [`RenderPlan`] on local files: the one place where plan types meet
//! the GStreamer media module. Blocking; the worker calls it on the blocking
//! pool.

use std::path::{Path, PathBuf};

use crate::{
    media::{self, MediaError, TranscodeRequest},
    plan::{RenderPlan, Work},
};

/// What a render produced: files in output order, and whether streams were
/// copied instead of re-encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub files: Vec<PathBuf>,
    pub copied: bool,
}

/// Cancel, watchdog and progress, shared by every operation.
pub struct Control<'a> {
    pub cancel: &'a media::CancelFlag,
    pub stall_timeout: std::time::Duration,
    pub on_progress: &'a mut dyn FnMut(f64),
}

impl std::fmt::Debug for Control<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("stall_timeout", &self.stall_timeout)
            .finish()
    }
}

/// Renders `plan` from `inputs` (local copies of `plan.work.inputs()`, same
/// order) into files under `scratch`.
pub fn execute(
    plan: &RenderPlan,
    inputs: &[PathBuf],
    scratch: &Path,
    control: Control,
) -> Result<Rendered, MediaError> {
    let output = scratch.join(format!("output.{}", plan.work.extension()));
    match &plan.work {
        Work::Transcode {
            range, overlays, ..
        } if overlays.is_empty() => {
            let request = TranscodeRequest {
                input: first(inputs)?,
                output: &output,
                range: *range,
            };
            media::transcode_mp4(
                &request,
                control.cancel,
                control.stall_timeout,
                control.on_progress,
            )?;
            Ok(Rendered {
                files: vec![output],
                copied: false,
            })
        }
        other => Err(MediaError::Pipeline(format!(
            "this worker cannot render {} jobs yet",
            work_name(other)
        ))),
    }
}

fn first(inputs: &[PathBuf]) -> Result<&Path, MediaError> {
    inputs
        .first()
        .map(PathBuf::as_path)
        .ok_or_else(|| MediaError::Pipeline("no input".into()))
}

fn work_name(work: &Work) -> &'static str {
    match work {
        Work::Transcode { .. } => "text overlay",
        Work::Concat { .. } => "concat",
        Work::ExtractAudio { .. } => "extract_audio",
        Work::Thumbnails { .. } => "thumbnail",
    }
}
