//! Media helpers for reelmesh built on GStreamer: probing inputs, transcoding
//! them to H.264/AAC MP4 (optionally trimmed), lossless concatenation and
//! trimming, audio extraction, and generating synthetic clips for tests and
//! demos. All entry points are blocking and driven by one runner
//! ([`runner`]); run them on a worker thread (e.g. `spawn_blocking`) when
//! called from async code.

pub mod audio;
pub mod concat;
pub(crate) mod elements;
pub mod frames;
pub(crate) mod headers;
pub mod join;
pub mod overlay;
pub mod pipeline;
pub mod probe;
pub mod runner;
pub mod smartcut;
pub mod subtitles;
pub mod testsrc;
#[cfg(test)]
pub(crate) mod testutil;
pub mod timeline;
pub mod trim;

pub use audio::{AudioFormat, extract_audio};
pub use concat::{ConcatProbe, concat, concat_probed, copy_compatible};
pub use elements::{AudioCodec, Fit, Picture, VideoCodec, VideoContainer, VideoFormat};
pub use frames::{ImageFormat, RgbFrame, rgb_frame_at, thumbnails};
pub use join::concat_reencode;
pub use overlay::{Position, TextOverlay};
pub use pipeline::{TranscodeRequest, transcode, transcode_mp4};
pub use probe::{AudioInfo, MediaInfo, VideoInfo, probe};
pub use runner::{CancelFlag, Control, init};
pub use smartcut::{SmartCut, trim_smart, trim_smart_at};
pub use subtitles::{Cue, SrtError, parse_srt};
pub use testsrc::{TestClip, write_test_clip};
pub use timeline::{
    AudioBed, Clip, ClipSource, SubtitleTrack, Timeline, Transition, TransitionKind,
    render_timeline,
};
pub use trim::{keyframe_times, keyframes_near, trim_copy, trim_copy_at};

/// Errors from probing, transcoding and clip generation.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The input is missing, unreadable, corrupt, truncated or undecodable.
    #[error("input {input}: {reason}")]
    BadInput { input: String, reason: String },
    /// GStreamer itself failed (missing plugin, encoder or muxer error, I/O on the output).
    #[error("pipeline error: {0}")]
    Pipeline(String),
    /// The edit does not fit its media (a transition longer than a clip,
    /// a colour without a duration); the message names the clip.
    #[error("{0}")]
    Timeline(String),
    #[error("cancelled")]
    Cancelled,
    #[error("no progress for {0:?}")]
    Stalled(std::time::Duration),
}

impl MediaError {
    pub(crate) fn bad_input(input: &std::path::Path, reason: impl Into<String>) -> Self {
        Self::BadInput {
            input: input.display().to_string(),
            reason: reason.into(),
        }
    }
}
