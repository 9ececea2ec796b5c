//! Checks a submitted job spec before anything is stored, so a bad request
//! is refused with INVALID_ARGUMENT naming the field and leaves no trace.
//!
//! Merge fields are expanded here, once: the stored spec is what render
//! runs, and a `{{name}}` with no value is refused instead of rendered.

use base64::Engine as _;
use rand::RngCore as _;
use reelmesh_proto::v1::{
    AudioCodec, AudioTrack, Callback, Clip, Container, CopyMode, Edit, JobSpec, OutputSpec, Source,
    Subtitles, TextOverlay, TransitionKind, VideoCodec, clip, job_spec::Operation, source::Kind,
    subtitles,
};
use reelmesh_store::ObjectKey;

use crate::GatewayError;

/// What one job may ask for; beyond it, SubmitJob answers INVALID_ARGUMENT.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct JobLimits {
    /// Most inputs one concat may join.
    pub max_inputs: usize,
    /// Most images one thumbnail job may take.
    pub max_thumbnails: usize,
    /// Longest media a job may ask for by time (a trim's range, a
    /// thumbnail's time, a clip, an edit's stated length).
    pub max_seconds: f64,
    /// Largest output picture, in pixels per side.
    pub max_width: u32,
    pub max_height: u32,
    /// Largest result a render may write; a job whose asked bitrate and
    /// length already exceed it is refused at submit, and a render that
    /// grows past it fails.
    pub max_output_bytes: u64,
    /// Most attempts a job may ask for (`spec.max_attempts`).
    pub max_attempts: u32,
    /// Most jobs one tenant may have queued or running at once; submits
    /// beyond it are RESOURCE_EXHAUSTED. 0 means no limit.
    pub max_active_jobs_per_tenant: u64,
    /// Most jobs of one tenant running at once across all render workers;
    /// beyond it, jobs wait in the queue (they are not refused). Stamped on
    /// each job at submit, so workers need no copy. 0 means no limit. Meant
    /// for tens or hundreds: a limited job's start reads all its tenant's
    /// running slots.
    pub max_running_jobs_per_tenant: u32,
}

impl Default for JobLimits {
    fn default() -> Self {
        JobLimits {
            max_inputs: 100,
            max_thumbnails: 100,
            max_seconds: 4.0 * 3600.0,
            max_width: 3840,
            max_height: 2160,
            max_output_bytes: 20 << 30,
            max_attempts: 10,
            max_active_jobs_per_tenant: 10_000,
            // Off: a tenant's jobs may use every free worker.
            max_running_jobs_per_tenant: 0,
        }
    }
}

type Checked<T = ()> = Result<T, GatewayError>;

/// Validates `spec` and fills in what the server decides (a callback secret
/// when the client gave none, merge fields in overlay texts).
pub fn validate_spec(mut spec: JobSpec, limits: &JobLimits) -> Checked<JobSpec> {
    check_lifecycle(&spec, limits)?;
    let kind = operation_kind(&spec, limits)?;
    check_output(&spec, kind)?;
    check_output_settings(&spec, kind, limits)?;
    check_copy(&spec, kind)?;
    expand_all_fields(&mut spec)?;
    if let Some(callback) = spec.callback.as_mut() {
        validate_callback(callback)?;
    }
    Ok(spec)
}

/// Priority and attempts: the parts of a spec about its life in the queue.
fn check_lifecycle(spec: &JobSpec, limits: &JobLimits) -> Checked {
    if reelmesh_proto::v1::Priority::try_from(spec.priority).is_err() {
        return invalid(format!(
            "spec.priority: {} is not PRIORITY_NORMAL, PRIORITY_HIGH or PRIORITY_LOW",
            spec.priority
        ));
    }
    if spec.max_attempts > limits.max_attempts {
        return invalid(format!(
            "spec.max_attempts: {} is more than this server allows ({})",
            spec.max_attempts, limits.max_attempts
        ));
    }
    Ok(())
}

fn check_noop(noop: &reelmesh_proto::v1::Noop, limits: &JobLimits) -> Checked<Produces> {
    if !(noop.seconds.is_finite() && (0.0..=limits.max_seconds).contains(&noop.seconds)) {
        return invalid(format!(
            "spec.noop.seconds: must be between 0 and {}",
            limits.max_seconds
        ));
    }
    Ok(Produces::Nothing)
}

/// Longest asset title accepted.
const MAX_TITLE_CHARS: usize = 500;

/// An idempotency key is 1-128 printable ASCII characters.
pub fn check_idempotency_key(key: &str) -> Checked {
    let printable = key.bytes().all(|b| (0x20..0x7f).contains(&b));
    if key.is_empty() || key.len() > 128 || !printable {
        return invalid("idempotency_key: must be 1-128 printable ASCII characters");
    }
    Ok(())
}

/// What an operation produces, which decides the outputs it may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Produces {
    Video {
        always_reencodes: bool,
    },
    Audio,
    Images,
    /// A noop or an ingest job: no rendered output.
    Nothing,
}

fn invalid<T>(message: impl Into<String>) -> Checked<T> {
    Err(GatewayError::InvalidArgument(message.into()))
}

fn operation_kind(spec: &JobSpec, limits: &JobLimits) -> Checked<Produces> {
    match spec.operation.as_ref() {
        None => invalid(
            "spec.operation: set one of trim, transcode, concat, add_text, extract_audio, thumbnail, edit, ingest, noop",
        ),
        Some(Operation::Noop(noop)) => check_noop(noop, limits),
        Some(Operation::Ingest(ingest)) => {
            check_source(ingest.source.as_ref(), "spec.ingest.source")?;
            if ingest.title.chars().count() > MAX_TITLE_CHARS {
                return invalid(format!(
                    "spec.ingest.title: at most {MAX_TITLE_CHARS} characters"
                ));
            }
            Ok(Produces::Nothing)
        }
        Some(Operation::Edit(edit)) => {
            check_edit(edit, limits)?;
            Ok(Produces::Video {
                always_reencodes: true,
            })
        }
        Some(Operation::Trim(trim)) => {
            check_source(trim.input.as_ref(), "spec.trim.input")?;
            check_range(trim.start_seconds, trim.end_seconds, limits)?;
            Ok(Produces::Video {
                always_reencodes: false,
            })
        }
        Some(Operation::Transcode(transcode)) => {
            check_source(transcode.input.as_ref(), "spec.transcode.input")?;
            Ok(Produces::Video {
                always_reencodes: true,
            })
        }
        Some(Operation::Concat(concat)) => {
            if !(2..=limits.max_inputs).contains(&concat.inputs.len()) {
                return invalid(format!(
                    "spec.concat.inputs: give 2 to {} inputs, got {}",
                    limits.max_inputs,
                    concat.inputs.len()
                ));
            }
            for (i, input) in concat.inputs.iter().enumerate() {
                check_source(Some(input), &format!("spec.concat.inputs[{i}]"))?;
            }
            Ok(Produces::Video {
                always_reencodes: false,
            })
        }
        Some(Operation::AddText(add_text)) => {
            check_source(add_text.input.as_ref(), "spec.add_text.input")?;
            if add_text.overlays.is_empty() {
                return invalid("spec.add_text.overlays: at least one overlay is required");
            }
            for (i, overlay) in add_text.overlays.iter().enumerate() {
                check_overlay(overlay, &format!("spec.add_text.overlays[{i}]"))?;
            }
            let seconds = add_text.duration_seconds;
            if !seconds.is_finite() || seconds < 0.0 || seconds > limits.max_seconds {
                return invalid(format!(
                    "spec.add_text.duration_seconds must be between 0 and {} s, got {seconds}",
                    limits.max_seconds
                ));
            }
            Ok(Produces::Video {
                always_reencodes: true,
            })
        }
        Some(Operation::ExtractAudio(extract)) => {
            check_source(extract.input.as_ref(), "spec.extract_audio.input")?;
            Ok(Produces::Audio)
        }
        Some(Operation::Thumbnail(thumbnail)) => {
            check_source(thumbnail.input.as_ref(), "spec.thumbnail.input")?;
            check_times(&thumbnail.times_seconds, limits)?;
            Ok(Produces::Images)
        }
    }
}

/// Merge fields are expanded in every text a job draws.
fn expand_all_fields(spec: &mut JobSpec) -> Checked {
    let fields = &spec.fields;
    let texts: Vec<(String, &mut String)> = match spec.operation.as_mut() {
        Some(Operation::AddText(add_text)) => add_text
            .overlays
            .iter_mut()
            .enumerate()
            .map(|(i, o)| (format!("spec.add_text.overlays[{i}].text"), &mut o.text))
            .collect(),
        Some(Operation::Edit(edit)) => {
            let overlays = edit
                .overlays
                .iter_mut()
                .enumerate()
                .map(|(i, o)| (format!("spec.edit.overlays[{i}].text"), &mut o.text));
            let subtitles = edit.subtitles.as_mut().and_then(|s| match s.srt.as_mut() {
                Some(subtitles::Srt::Text(text)) => {
                    Some(("spec.edit.subtitles.text".to_string(), text))
                }
                _ => None,
            });
            overlays.chain(subtitles).collect()
        }
        _ => Vec::new(),
    };
    for (field, text) in texts {
        *text = expand_fields(text, fields, &field)?;
    }
    Ok(())
}

fn check_edit(edit: &Edit, limits: &JobLimits) -> Checked {
    if edit.clips.is_empty() || edit.clips.len() > limits.max_inputs {
        return invalid(format!(
            "spec.edit.clips: give 1 to {} clips, got {}",
            limits.max_inputs,
            edit.clips.len()
        ));
    }
    let mut stated = 0.0;
    for (i, clip) in edit.clips.iter().enumerate() {
        stated += check_clip(clip, &format!("spec.edit.clips[{i}]"), limits)?;
    }
    if stated > limits.max_seconds {
        return invalid(format!(
            "spec.edit.clips: {stated:.1} s of clips is beyond this server's limit of {} s",
            limits.max_seconds
        ));
    }
    for (i, overlay) in edit.overlays.iter().enumerate() {
        check_overlay(overlay, &format!("spec.edit.overlays[{i}]"))?;
    }
    if edit.audio.len() > limits.max_inputs {
        return invalid(format!(
            "spec.edit.audio: at most {} tracks",
            limits.max_inputs
        ));
    }
    for (i, track) in edit.audio.iter().enumerate() {
        check_audio_track(track, &format!("spec.edit.audio[{i}]"), limits)?;
    }
    if let Some(subtitles) = &edit.subtitles {
        check_subtitles(subtitles)?;
    }
    Ok(())
}

/// Checks one clip and returns the seconds it states (0 when only the
/// media knows).
fn check_clip(clip: &Clip, field: &str, limits: &JobLimits) -> Checked<f64> {
    let in_range = |value: f64| value.is_finite() && (0.0..=limits.max_seconds).contains(&value);
    for (name, value) in [
        ("in_seconds", clip.in_seconds),
        ("out_seconds", clip.out_seconds),
        ("duration_seconds", clip.duration_seconds),
    ] {
        if !in_range(value) {
            return invalid(format!(
                "{field}.{name} must be between 0 and {} s, got {value}",
                limits.max_seconds
            ));
        }
    }
    if clip.out_seconds != 0.0 && clip.out_seconds <= clip.in_seconds {
        return invalid(format!(
            "{field}.out_seconds must be 0 (to the end) or after in_seconds"
        ));
    }
    if let Some(transition) = &clip.transition {
        let seconds = transition.duration_seconds;
        if transition.kind() != TransitionKind::None && !(seconds > 0.0 && in_range(seconds)) {
            return invalid(format!(
                "{field}.transition.duration_seconds must be more than 0, got {seconds}"
            ));
        }
    }
    match &clip.source {
        None => invalid(format!("{field}: set media or color")),
        Some(clip::Source::Media(media)) => {
            check_source(Some(media), &format!("{field}.media"))?;
            Ok(if clip.duration_seconds > 0.0 {
                clip.duration_seconds
            } else if clip.out_seconds > 0.0 {
                clip.out_seconds - clip.in_seconds
            } else {
                0.0
            })
        }
        Some(clip::Source::Color(color)) => {
            if reelmesh_proto::parse_color(color).is_none() {
                return invalid(format!("{field}.color {color:?}: use #RRGGBB or #RRGGBBAA"));
            }
            if clip.duration_seconds <= 0.0 {
                return invalid(format!("{field}.duration_seconds: a colour needs one"));
            }
            if clip.in_seconds != 0.0 || clip.out_seconds != 0.0 {
                return invalid(format!("{field}: a colour has no in/out points"));
            }
            Ok(clip.duration_seconds)
        }
    }
}

fn check_audio_track(track: &AudioTrack, field: &str, limits: &JobLimits) -> Checked {
    check_source(track.source.as_ref(), &format!("{field}.source"))?;
    if let Some(volume) = track.volume
        && !(volume.is_finite() && (0.0..=10.0).contains(&volume))
    {
        return invalid(format!(
            "{field}.volume must be between 0 and 10, got {volume}"
        ));
    }
    for (name, value) in [
        ("start_seconds", track.start_seconds),
        ("in_seconds", track.in_seconds),
        ("duration_seconds", track.duration_seconds),
        ("fade_in_seconds", track.fade_in_seconds),
        ("fade_out_seconds", track.fade_out_seconds),
    ] {
        if !(value.is_finite() && (0.0..=limits.max_seconds).contains(&value)) {
            return invalid(format!(
                "{field}.{name} must be between 0 and {} s, got {value}",
                limits.max_seconds
            ));
        }
    }
    Ok(())
}

fn check_subtitles(subtitles: &Subtitles) -> Checked {
    let field = "spec.edit.subtitles";
    match &subtitles.srt {
        None => return invalid(format!("{field}: set file or text")),
        Some(subtitles::Srt::File(file)) => check_source(Some(file), &format!("{field}.file"))?,
        Some(subtitles::Srt::Text(text)) => {
            reelmesh_proto::srt::parse_srt(text)
                .map_err(|err| GatewayError::InvalidArgument(format!("{field}.text: {err}")))?;
        }
    }
    check_text_colors(field, &subtitles.color, &subtitles.box_color)?;
    Ok(())
}

/// Picture size, frame rate, rate control and audio codec: each in range
/// and fitting the container and the operation.
fn check_output_settings(spec: &JobSpec, produces: Produces, limits: &JobLimits) -> Checked {
    let Some(output) = spec.output.as_ref() else {
        return Ok(());
    };
    let video = matches!(produces, Produces::Video { .. });
    if video {
        check_picture(output, limits)?;
    } else if output.height != 0
        || output.fps != 0
        || output.video_bitrate_kbps != 0
        || output.quality != 0
    {
        return invalid(
            "spec.output: height, fps, video_bitrate_kbps and quality are for video outputs",
        );
    }
    if output.fps > 120 {
        return invalid(format!(
            "spec.output.fps must be 1 to 120, got {}",
            output.fps
        ));
    }
    if output.quality > 51 {
        return invalid(format!(
            "spec.output.quality must be 1 to 51, got {}",
            output.quality
        ));
    }
    if output.quality != 0 && output.video_bitrate_kbps != 0 {
        return invalid("spec.output: set quality or video_bitrate_kbps, not both");
    }
    check_output_size(spec, output, limits)?;
    check_audio_codec(output.container(), output.audio_codec(), video)
}

fn check_picture(output: &OutputSpec, limits: &JobLimits) -> Checked {
    let (width, height) = (output.width, output.height);
    if (width == 0) != (height == 0) {
        return invalid("spec.output: set both width and height, or neither");
    }
    if width % 2 == 1 || height % 2 == 1 {
        return invalid(format!(
            "spec.output: width and height must be even (encoders need it), got {width}x{height}"
        ));
    }
    if width > limits.max_width || height > limits.max_height {
        return invalid(format!(
            "spec.output: {width}x{height} is beyond this server's limit of {}x{}",
            limits.max_width, limits.max_height
        ));
    }
    Ok(())
}

/// With a bitrate and a stated length the output size is known up front.
fn check_output_size(spec: &JobSpec, output: &OutputSpec, limits: &JobLimits) -> Checked {
    let kbps = u64::from(output.video_bitrate_kbps) + u64::from(output.audio_bitrate_kbps);
    let seconds = match spec.operation.as_ref() {
        Some(Operation::Trim(trim)) => trim.end_seconds - trim.start_seconds,
        Some(Operation::AddText(add_text)) => add_text.duration_seconds,
        _ => 0.0,
    };
    let bytes = kbps as f64 * 1000.0 / 8.0 * seconds;
    if bytes > limits.max_output_bytes as f64 {
        return invalid(format!(
            "spec.output: {kbps} kbit/s for {seconds:.1} s makes about {:.0} MB, beyond this \
             server's limit of {:.0} MB",
            bytes / 1e6,
            limits.max_output_bytes as f64 / 1e6
        ));
    }
    Ok(())
}

fn check_audio_codec(container: Container, codec: AudioCodec, video: bool) -> Checked {
    let fits = match (container, codec) {
        (_, AudioCodec::Unspecified) => true,
        (Container::Mkv, _) => true,
        (Container::Mp4 | Container::M4a, c) => c == AudioCodec::Aac,
        (Container::Unspecified, c) if video => c == AudioCodec::Aac,
        (Container::Unspecified, c) => c == AudioCodec::Aac,
        (Container::Webm | Container::Opus, c) => c == AudioCodec::Opus,
        (Container::Mp3, c) => c == AudioCodec::Mp3,
        (Container::Jpg | Container::Png, _) => false,
    };
    if fits {
        Ok(())
    } else {
        invalid(format!(
            "spec.output.audio_codec: {} does not fit {}",
            codec.as_str_name(),
            container.as_str_name()
        ))
    }
}

fn check_source(source: Option<&Source>, field: &str) -> Checked {
    match source.and_then(|source| source.kind.as_ref()) {
        None => invalid(format!("{field}: an input is required (set asset or url)")),
        Some(Kind::Asset(key)) => ObjectKey::parse(key)
            .map(|_| ())
            .map_err(|err| GatewayError::InvalidArgument(format!("{field}.asset: {err}"))),
        Some(Kind::Url(url)) => check_url(url)
            .map_err(|why| GatewayError::InvalidArgument(format!("{field}.url: {why}"))),
    }
}

/// Longest input URL accepted; longer ones are almost surely not URLs.
const MAX_URL_LEN: usize = 4096;

/// The URL's shape only: whether its host may be reached is decided by the
/// egress policy of the render worker or notify when it resolves the name.
pub(crate) fn check_url(text: &str) -> Result<(), String> {
    if text.len() > MAX_URL_LEN {
        return Err(format!("longer than {MAX_URL_LEN} bytes"));
    }
    let url = url::Url::parse(text).map_err(|err| format!("{text:?} is not a URL: {err}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "only http and https are fetched, not {}:",
            url.scheme()
        ));
    }
    if url.host().is_none() {
        return Err("the URL has no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        // They would be stored in the job record for anyone reading it.
        return Err("credentials in the URL are not accepted; use a signed URL".into());
    }
    Ok(())
}

fn check_range(start: f64, end: f64, limits: &JobLimits) -> Checked {
    if !start.is_finite() || start < 0.0 {
        return invalid(format!("spec.trim.start_seconds must be >= 0, got {start}"));
    }
    if !end.is_finite() || end <= start {
        return invalid(format!(
            "spec.trim.end_seconds ({end}) must be greater than start_seconds ({start})"
        ));
    }
    if end > limits.max_seconds {
        return invalid(format!(
            "spec.trim.end_seconds ({end}) is beyond this server's limit of {} s",
            limits.max_seconds
        ));
    }
    Ok(())
}

fn check_times(times: &[f64], limits: &JobLimits) -> Checked {
    if times.is_empty() || times.len() > limits.max_thumbnails {
        return invalid(format!(
            "spec.thumbnail.times_seconds: give 1 to {} times, got {}",
            limits.max_thumbnails,
            times.len()
        ));
    }
    let out_of_range = |t: &f64| !t.is_finite() || *t < 0.0 || *t > limits.max_seconds;
    match times.iter().position(out_of_range) {
        Some(i) => invalid(format!(
            "spec.thumbnail.times_seconds[{i}] must be between 0 and {} s",
            limits.max_seconds
        )),
        None => Ok(()),
    }
}

/// Text and box colours are optional; when given they must parse.
fn check_text_colors(field: &str, color: &str, box_color: &str) -> Checked {
    for (name, value) in [("color", color), ("box_color", box_color)] {
        if !value.is_empty() && reelmesh_proto::parse_color(value).is_none() {
            return invalid(format!(
                "{field}.{name} {value:?}: use #RRGGBB or #RRGGBBAA"
            ));
        }
    }
    Ok(())
}

fn check_overlay(overlay: &TextOverlay, field: &str) -> Checked {
    if overlay.text.trim().is_empty() {
        return invalid(format!("{field}.text: must not be empty"));
    }
    check_text_colors(field, &overlay.color, &overlay.box_color)?;
    if overlay.end_seconds != 0.0 && overlay.end_seconds <= overlay.start_seconds {
        return invalid(format!(
            "{field}.end_seconds must be 0 (to the end) or after start_seconds"
        ));
    }
    if !(0.0..=1.0).contains(&overlay.x) || !(0.0..=1.0).contains(&overlay.y) {
        return invalid(format!(
            "{field}.x and .y are fractions of the frame, 0 to 1"
        ));
    }
    Ok(())
}

fn check_output(spec: &JobSpec, produces: Produces) -> Checked {
    let container = spec
        .output
        .as_ref()
        .map_or(Container::Unspecified, |o| o.container());
    if produces == Produces::Nothing && spec.output.is_some() {
        return invalid("spec.output: a noop job writes nothing, so it takes no output");
    }
    let allowed = match (produces, container) {
        (_, Container::Unspecified) => true,
        (Produces::Nothing, _) => false,
        (Produces::Video { .. }, c) => {
            matches!(c, Container::Mp4 | Container::Webm | Container::Mkv)
        }
        (Produces::Audio, c) => matches!(c, Container::M4a | Container::Opus | Container::Mp3),
        (Produces::Images, c) => matches!(c, Container::Jpg | Container::Png),
    };
    if allowed {
        check_video_codec(
            container,
            spec.output
                .as_ref()
                .map_or(VideoCodec::Unspecified, |o| o.video_codec()),
        )
    } else {
        invalid(format!(
            "spec.output.container: {} does not fit this operation ({})",
            container.as_str_name(),
            match produces {
                Produces::Video { .. } => "video: CONTAINER_MP4, CONTAINER_WEBM or CONTAINER_MKV",
                Produces::Audio => "audio: CONTAINER_M4A, CONTAINER_OPUS or CONTAINER_MP3",
                Produces::Images => "images: CONTAINER_JPG or CONTAINER_PNG",
                Produces::Nothing => "nothing",
            }
        ))
    }
}

fn check_video_codec(container: Container, codec: VideoCodec) -> Checked {
    let fits = match (container, codec) {
        (_, VideoCodec::Unspecified) => true,
        (Container::Webm, c) => matches!(c, VideoCodec::Vp8 | VideoCodec::Vp9),
        (Container::Mkv, _) => true,
        (Container::Mp4 | Container::Unspecified, c) => c == VideoCodec::H264,
        _ => false,
    };
    if fits {
        Ok(())
    } else {
        invalid(format!(
            "spec.output.video_codec: {} does not fit {}",
            codec.as_str_name(),
            container.as_str_name()
        ))
    }
}

/// COPY_MODE_REQUIRED on an operation that always encodes can never
/// succeed: say so now instead of failing the job later.
fn check_copy(spec: &JobSpec, produces: Produces) -> Checked {
    if spec.copy() != CopyMode::Required {
        return Ok(());
    }
    let container = spec
        .output
        .as_ref()
        .map_or(Container::Unspecified, |o| o.container());
    let always_encodes = match produces {
        Produces::Video { always_reencodes } => {
            always_reencodes || matches!(container, Container::Webm | Container::Mkv)
        }
        Produces::Audio => matches!(container, Container::Opus | Container::Mp3),
        Produces::Images | Produces::Nothing => true,
    };
    if always_encodes {
        invalid(
            "spec.copy: COPY_MODE_REQUIRED is impossible for this operation and output, which always encode",
        )
    } else {
        Ok(())
    }
}

/// Replaces every `{{name}}` with `fields[name]`.
fn expand_fields(
    text: &str,
    fields: &std::collections::HashMap<String, String>,
    field: &str,
) -> Checked<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        let Some(close) = rest[open..].find("}}") else {
            break;
        };
        let name = rest[open + 2..open + close].trim();
        let value = fields.get(name).ok_or_else(|| {
            GatewayError::InvalidArgument(format!(
                "{field}: no value for merge field {{{{{name}}}}} in spec.fields"
            ))
        })?;
        out.push_str(&rest[..open]);
        out.push_str(value);
        rest = &rest[open + close + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn validate_callback(callback: &mut Callback) -> Checked {
    check_url(&callback.url)
        .map_err(|why| GatewayError::InvalidArgument(format!("spec.callback.url: {why}")))?;
    if callback.secret.is_empty() {
        callback.secret = new_webhook_secret();
    } else if !is_webhook_secret(&callback.secret) {
        return invalid(
            "spec.callback.secret: must be \"whsec_\" followed by base64 of 24-64 bytes",
        );
    }
    Ok(())
}

/// A Standard Webhooks secret: "whsec_" + base64 of random bytes.
pub(crate) fn new_webhook_secret() -> String {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

pub(crate) fn is_webhook_secret(secret: &str) -> bool {
    secret
        .strip_prefix("whsec_")
        .and_then(|key| base64::engine::general_purpose::STANDARD.decode(key).ok())
        .is_some_and(|key| (24..=64).contains(&key.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reelmesh_proto::v1::{
        AddText, Concat, ExtractAudio, OutputSpec, Thumbnail, Transition, Trim,
    };

    fn asset(key: &str) -> Source {
        Source {
            kind: Some(Kind::Asset(key.into())),
        }
    }

    fn spec(operation: Operation) -> JobSpec {
        JobSpec {
            operation: Some(operation),
            ..Default::default()
        }
    }

    fn trim(start: f64, end: f64) -> JobSpec {
        spec(Operation::Trim(Trim {
            input: Some(asset("in.mp4")),
            start_seconds: start,
            end_seconds: end,
        }))
    }

    fn validate_spec_test(spec: JobSpec) -> Checked<JobSpec> {
        validate_spec(spec, &JobLimits::default())
    }

    fn message(result: Checked<JobSpec>) -> String {
        result.expect_err("should be refused").to_string()
    }

    #[test]
    fn a_reversed_range_names_both_fields() {
        let err = message(validate_spec_test(trim(4.0, 1.0)));
        assert!(
            err.contains("end_seconds") && err.contains("start_seconds"),
            "{err}"
        );
        assert!(validate_spec_test(trim(1.0, 4.0)).is_ok());
    }

    #[test]
    fn missing_operation_and_bad_keys_are_refused() {
        assert!(message(validate_spec_test(JobSpec::default())).contains("spec.operation"));
        let mut bad = trim(0.0, 1.0);
        if let Some(Operation::Trim(trim)) = bad.operation.as_mut() {
            trim.input = Some(asset("../etc/passwd"));
        }
        assert!(message(validate_spec_test(bad)).contains("spec.trim.input.asset"));
    }

    #[test]
    fn url_inputs_are_checked_for_shape() {
        let trim_of = |url: &str| {
            spec(Operation::Trim(Trim {
                input: Some(Source {
                    kind: Some(Kind::Url(url.into())),
                }),
                start_seconds: 0.0,
                end_seconds: 1.0,
            }))
        };
        assert!(validate_spec_test(trim_of("https://cdn.example.com/a.mp4?sig=1")).is_ok());
        for (url, why) in [
            ("ftp://example.com/a.mp4", "only http and https"),
            ("not a url", "is not a URL"),
            ("https://user:pw@example.com/a.mp4", "credentials"),
        ] {
            let text = message(validate_spec_test(trim_of(url)));
            assert!(
                text.contains("spec.trim.input.url") && text.contains(why),
                "{text}"
            );
        }
    }

    #[test]
    fn concat_needs_two_valid_inputs_and_names_the_bad_one() {
        let one = spec(Operation::Concat(Concat {
            inputs: vec![asset("a.mp4")],
        }));
        assert!(message(validate_spec_test(one)).contains("spec.concat.inputs"));
        let bad = spec(Operation::Concat(Concat {
            inputs: vec![asset("a.mp4"), asset("/abs.mp4")],
        }));
        assert!(message(validate_spec_test(bad)).contains("spec.concat.inputs[1]"));
    }

    #[test]
    fn merge_fields_are_expanded_and_unknown_ones_refused() {
        let overlay = |text: &str| TextOverlay {
            text: text.into(),
            ..Default::default()
        };
        let mut with_fields = spec(Operation::AddText(AddText {
            input: Some(asset("a.mp4")),
            overlays: vec![overlay("Hello {{city}}, {{ temp }}°C")],
            duration_seconds: 0.0,
        }));
        with_fields.fields = [("city", "Oslo"), ("temp", "21")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let expanded = validate_spec_test(with_fields.clone()).expect("valid");
        let Some(Operation::AddText(add_text)) = expanded.operation else {
            panic!("operation changed")
        };
        assert_eq!(add_text.overlays[0].text, "Hello Oslo, 21°C");

        with_fields.fields.remove("temp");
        let err = message(validate_spec_test(with_fields));
        assert!(
            err.contains("{{temp}}") && err.contains("overlays[0].text"),
            "{err}"
        );
    }

    #[test]
    fn colors_positions_and_windows_are_checked() {
        let bad_color = spec(Operation::AddText(AddText {
            input: Some(asset("a.mp4")),
            overlays: vec![TextOverlay {
                text: "x".into(),
                color: "red".into(),
                ..Default::default()
            }],
            duration_seconds: 0.0,
        }));
        assert!(message(validate_spec_test(bad_color)).contains("overlays[0].color"));
    }

    #[test]
    fn outputs_must_fit_the_operation() {
        let mut audio = spec(Operation::ExtractAudio(ExtractAudio {
            input: Some(asset("a.mp4")),
        }));
        audio.output = Some(OutputSpec {
            container: Container::Jpg as i32,
            ..Default::default()
        });
        assert!(message(validate_spec_test(audio.clone())).contains("spec.output.container"));
        audio.output = Some(OutputSpec {
            container: Container::Opus as i32,
            ..Default::default()
        });
        assert!(validate_spec_test(audio.clone()).is_ok());
        audio.copy = CopyMode::Required as i32;
        assert!(message(validate_spec_test(audio)).contains("spec.copy"));
    }

    #[test]
    fn limits_are_enforced() {
        let limits = JobLimits {
            max_inputs: 2,
            max_thumbnails: 1,
            max_seconds: 60.0,
            max_width: 1920,
            max_height: 1080,
            max_output_bytes: 10_000_000,
            max_attempts: 5,
            ..JobLimits::default()
        };
        let mut greedy = trim(1.0, 2.0);
        greedy.max_attempts = 6;
        assert!(message(validate_spec(greedy, &limits)).contains("spec.max_attempts: 6"));
        let mut odd = trim(1.0, 2.0);
        odd.priority = 9;
        assert!(message(validate_spec(odd, &limits)).contains("spec.priority"));
        let noop = |seconds| {
            spec(Operation::Noop(reelmesh_proto::v1::Noop {
                seconds,
                fail_attempts: 0,
            }))
        };
        assert!(validate_spec(noop(1.0), &limits).is_ok());
        assert!(message(validate_spec(noop(61.0), &limits)).contains("spec.noop.seconds"));
        let mut noop_with_output = noop(0.0);
        noop_with_output.output = Some(Default::default());
        assert!(message(validate_spec(noop_with_output, &limits)).contains("spec.output"));
        assert!(check_idempotency_key("order-42").is_ok());
        for bad in ["", "tab\there", &"k".repeat(129)] {
            assert!(check_idempotency_key(bad).is_err(), "{bad:?}");
        }
        let three = spec(Operation::Concat(Concat {
            inputs: vec![asset("a.mp4"), asset("b.mp4"), asset("c.mp4")],
        }));
        assert!(message(validate_spec(three, &limits)).contains("give 2 to 2 inputs"));
        assert!(message(validate_spec(trim(10.0, 61.0), &limits)).contains("limit of 60 s"));
        assert!(validate_spec(trim(10.0, 60.0), &limits).is_ok());
        let long_still = spec(Operation::AddText(AddText {
            input: Some(asset("bg.png")),
            overlays: vec![TextOverlay {
                text: "x".into(),
                ..Default::default()
            }],
            duration_seconds: 61.0,
        }));
        assert!(
            message(validate_spec(long_still, &limits)).contains("spec.add_text.duration_seconds")
        );
    }

    #[test]
    fn video_codecs_must_fit_the_container() {
        let output = |container: Container, codec: VideoCodec| {
            let mut job = trim(0.0, 1.0);
            job.output = Some(OutputSpec {
                container: container as i32,
                video_codec: codec as i32,
                ..Default::default()
            });
            job
        };
        assert!(validate_spec_test(output(Container::Webm, VideoCodec::Vp8)).is_ok());
        assert!(validate_spec_test(output(Container::Webm, VideoCodec::Unspecified)).is_ok());
        let err = message(validate_spec_test(output(Container::Mp4, VideoCodec::Vp9)));
        assert!(err.contains("spec.output.video_codec"), "{err}");
        let mut required = output(Container::Webm, VideoCodec::Vp9);
        required.copy = CopyMode::Required as i32;
        assert!(message(validate_spec_test(required)).contains("spec.copy"));
    }

    #[test]
    fn thumbnails_need_sane_times() {
        let thumbs = |times: Vec<f64>| {
            spec(Operation::Thumbnail(Thumbnail {
                input: Some(asset("a.mp4")),
                times_seconds: times,
            }))
        };
        assert!(message(validate_spec_test(thumbs(vec![]))).contains("times_seconds"));
        assert!(message(validate_spec_test(thumbs(vec![1.0, -2.0]))).contains("times_seconds[1]"));
        assert!(validate_spec_test(thumbs(vec![0.0, 2.5])).is_ok());
    }

    #[test]
    fn callbacks_get_a_secret_and_bad_ones_are_refused() {
        let mut with_callback = trim(0.0, 1.0);
        with_callback.callback = Some(Callback {
            url: "http://127.0.0.1:9/hook".into(),
            secret: String::new(),
        });
        let checked = validate_spec_test(with_callback).expect("valid");
        let secret = checked.callback.expect("callback").secret;
        assert!(is_webhook_secret(&secret), "{secret}");

        let mut bad = trim(0.0, 1.0);
        bad.callback = Some(Callback {
            url: "ftp://x".into(),
            secret: String::new(),
        });
        assert!(message(validate_spec_test(bad)).contains("spec.callback.url"));
    }

    fn edit(clips: Vec<Clip>) -> Edit {
        Edit {
            clips,
            ..Default::default()
        }
    }

    fn colour(seconds: f64) -> Clip {
        Clip {
            source: Some(clip::Source::Color("#102030".into())),
            duration_seconds: seconds,
            ..Default::default()
        }
    }

    #[test]
    fn edits_are_checked_clip_by_clip() {
        let good = Edit {
            clips: vec![
                Clip {
                    source: Some(clip::Source::Media(asset("a.mp4"))),
                    in_seconds: 1.0,
                    out_seconds: 3.0,
                    ..Default::default()
                },
                Clip {
                    transition: Some(Transition {
                        kind: TransitionKind::Crossfade as i32,
                        duration_seconds: 0.5,
                    }),
                    ..colour(2.0)
                },
            ],
            audio: vec![AudioTrack {
                source: Some(asset("music.m4a")),
                volume: Some(0.3),
                fade_out_seconds: 1.0,
                ..Default::default()
            }],
            subtitles: Some(Subtitles {
                srt: Some(subtitles::Srt::Text(
                    "1\n00:00:00,500 --> 00:00:01,500\nHi {{name}}\n".into(),
                )),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut good_spec = spec(Operation::Edit(good));
        good_spec.fields.insert("name".into(), "Ada".into());
        let checked = validate_spec_test(good_spec).expect("valid edit");
        let Some(Operation::Edit(checked)) = checked.operation else {
            panic!("edit kept")
        };
        let Some(subtitles::Srt::Text(text)) = checked.subtitles.and_then(|s| s.srt) else {
            panic!("subtitles kept")
        };
        assert!(
            text.contains("Hi Ada"),
            "merge fields fill subtitles: {text}"
        );

        let cases: Vec<(Edit, &str)> = vec![
            (edit(vec![]), "spec.edit.clips: give 1 to"),
            (
                edit(vec![colour(0.0)]),
                "spec.edit.clips[0].duration_seconds",
            ),
            (
                edit(vec![Clip {
                    source: Some(clip::Source::Color("red".into())),
                    ..colour(1.0)
                }]),
                "spec.edit.clips[0].color",
            ),
            (
                edit(vec![
                    colour(1.0),
                    Clip {
                        source: Some(clip::Source::Media(asset("b.mp4"))),
                        in_seconds: 4.0,
                        out_seconds: 2.0,
                        ..Default::default()
                    },
                ]),
                "spec.edit.clips[1].out_seconds",
            ),
            (
                edit(vec![Clip {
                    source: Some(clip::Source::Media(asset("../x.mp4"))),
                    ..Default::default()
                }]),
                "spec.edit.clips[0].media.asset",
            ),
            (
                Edit {
                    audio: vec![AudioTrack {
                        source: Some(asset("m.m4a")),
                        volume: Some(-1.0),
                        ..Default::default()
                    }],
                    ..edit(vec![colour(1.0)])
                },
                "spec.edit.audio[0].volume",
            ),
            (
                Edit {
                    subtitles: Some(Subtitles {
                        srt: Some(subtitles::Srt::Text(
                            "1\n00:00:02,000 --> 00:00:01,000\nx".into(),
                        )),
                        ..Default::default()
                    }),
                    ..edit(vec![colour(1.0)])
                },
                "spec.edit.subtitles.text: cue 1",
            ),
        ];
        for (edit, expected) in cases {
            let got = message(validate_spec_test(spec(Operation::Edit(edit))));
            assert!(got.contains(expected), "want {expected:?}, got {got:?}");
        }
    }

    #[test]
    fn output_settings_must_fit_and_stay_in_limits() {
        let limits = JobLimits {
            max_output_bytes: 1_000_000,
            ..JobLimits::default()
        };
        let with = |output: OutputSpec| JobSpec {
            output: Some(output),
            ..trim(0.0, 10.0)
        };
        let cases = [
            (
                OutputSpec {
                    width: 640,
                    ..Default::default()
                },
                "both width and height",
            ),
            (
                OutputSpec {
                    width: 641,
                    height: 360,
                    ..Default::default()
                },
                "must be even",
            ),
            (
                OutputSpec {
                    width: 7680,
                    height: 4320,
                    ..Default::default()
                },
                "limit of 3840x2160",
            ),
            (
                OutputSpec {
                    quality: 60,
                    ..Default::default()
                },
                "quality must be 1 to 51",
            ),
            (
                OutputSpec {
                    quality: 20,
                    video_bitrate_kbps: 900,
                    ..Default::default()
                },
                "not both",
            ),
            (
                OutputSpec {
                    video_bitrate_kbps: 5000,
                    ..Default::default()
                },
                "limit of 1 MB",
            ),
            (
                OutputSpec {
                    container: Container::Webm as i32,
                    audio_codec: AudioCodec::Aac as i32,
                    ..Default::default()
                },
                "spec.output.audio_codec",
            ),
        ];
        for (output, expected) in cases {
            let got = message(validate_spec(with(output), &limits));
            assert!(got.contains(expected), "want {expected:?}, got {got:?}");
        }
        let mkv = OutputSpec {
            container: Container::Mkv as i32,
            video_codec: VideoCodec::Vp9 as i32,
            audio_codec: AudioCodec::Mp3 as i32,
            width: 640,
            height: 360,
            fps: 25,
            ..Default::default()
        };
        validate_spec(with(mkv), &limits).expect("MKV takes any codec");
    }
}
