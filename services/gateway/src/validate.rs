//! Checks a submitted job spec before anything is stored, so a bad request
//! is refused with INVALID_ARGUMENT naming the field and leaves no trace.
//!
//! Merge fields are expanded here, once: the stored spec is what render
//! runs, and a `{{name}}` with no value is refused instead of rendered.

use base64::Engine as _;
use rand::RngCore as _;
use reelmesh_proto::v1::{
    Callback, Container, CopyMode, JobSpec, Source, TextOverlay, VideoCodec, job_spec::Operation,
    source::Kind,
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
    /// Longest media a job may ask for by time (a trim's range, a thumbnail's time).
    pub max_seconds: f64,
}

impl Default for JobLimits {
    fn default() -> Self {
        JobLimits {
            max_inputs: 100,
            max_thumbnails: 100,
            max_seconds: 4.0 * 3600.0,
        }
    }
}

type Checked<T = ()> = Result<T, GatewayError>;

/// Validates `spec` and fills in what the server decides (a callback secret
/// when the client gave none, merge fields in overlay texts).
pub fn validate_spec(mut spec: JobSpec, limits: &JobLimits) -> Checked<JobSpec> {
    let kind = operation_kind(&spec, limits)?;
    check_output(&spec, kind)?;
    check_copy(&spec, kind)?;
    if let Some(Operation::AddText(add_text)) = spec.operation.as_mut() {
        for (i, overlay) in add_text.overlays.iter_mut().enumerate() {
            overlay.text = expand_fields(
                &overlay.text,
                &spec.fields,
                &format!("spec.add_text.overlays[{i}].text"),
            )?;
        }
    }
    if let Some(callback) = spec.callback.as_mut() {
        validate_callback(callback)?;
    }
    Ok(spec)
}

/// What an operation produces, which decides the outputs it may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Produces {
    Video { always_reencodes: bool },
    Audio,
    Images,
}

fn invalid<T>(message: impl Into<String>) -> Checked<T> {
    Err(GatewayError::InvalidArgument(message.into()))
}

fn operation_kind(spec: &JobSpec, limits: &JobLimits) -> Checked<Produces> {
    match spec.operation.as_ref() {
        None => invalid(
            "spec.operation: set one of trim, transcode, concat, add_text, extract_audio, thumbnail",
        ),
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

fn check_source(source: Option<&Source>, field: &str) -> Checked {
    match source.and_then(|source| source.kind.as_ref()) {
        None => invalid(format!("{field}: an input is required (set asset)")),
        Some(Kind::Asset(key)) => ObjectKey::parse(key)
            .map(|_| ())
            .map_err(|err| GatewayError::InvalidArgument(format!("{field}.asset: {err}"))),
    }
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

fn check_overlay(overlay: &TextOverlay, field: &str) -> Checked {
    if overlay.text.trim().is_empty() {
        return invalid(format!("{field}.text: must not be empty"));
    }
    for (name, color) in [("color", &overlay.color), ("box_color", &overlay.box_color)] {
        if !color.is_empty() && reelmesh_proto::parse_color(color).is_none() {
            return invalid(format!(
                "{field}.{name} {color:?}: use #RRGGBB or #RRGGBBAA"
            ));
        }
    }
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
    let allowed = match (produces, container) {
        (_, Container::Unspecified) => true,
        (Produces::Video { .. }, c) => matches!(c, Container::Mp4 | Container::Webm),
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
                Produces::Video { .. } => "video: CONTAINER_MP4 or CONTAINER_WEBM",
                Produces::Audio => "audio: CONTAINER_M4A, CONTAINER_OPUS or CONTAINER_MP3",
                Produces::Images => "images: CONTAINER_JPG or CONTAINER_PNG",
            }
        ))
    }
}

fn check_video_codec(container: Container, codec: VideoCodec) -> Checked {
    let fits = match (container, codec) {
        (_, VideoCodec::Unspecified) => true,
        (Container::Webm, c) => matches!(c, VideoCodec::Vp8 | VideoCodec::Vp9),
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
        Produces::Video { always_reencodes } => always_reencodes || container == Container::Webm,
        Produces::Audio => matches!(container, Container::Opus | Container::Mp3),
        Produces::Images => true,
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
    let url = url::Url::parse(&callback.url).map_err(|err| {
        GatewayError::InvalidArgument(format!("spec.callback.url {:?}: {err}", callback.url))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return invalid(format!(
            "spec.callback.url {:?}: must be http or https",
            callback.url
        ));
    }
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
fn new_webhook_secret() -> String {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

fn is_webhook_secret(secret: &str) -> bool {
    secret
        .strip_prefix("whsec_")
        .and_then(|key| base64::engine::general_purpose::STANDARD.decode(key).ok())
        .is_some_and(|key| (24..=64).contains(&key.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reelmesh_proto::v1::{AddText, Concat, ExtractAudio, OutputSpec, Thumbnail, Trim};

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
        };
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
}
