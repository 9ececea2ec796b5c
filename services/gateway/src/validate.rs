//! Checks a submitted job spec before anything is stored, so a bad request
//! is refused with INVALID_ARGUMENT naming the field and leaves no trace.

use base64::Engine as _;
use rand::RngCore as _;
use reelmesh_proto::v1::{Callback, JobSpec, Source, job_spec::Operation, source::Kind};
use reelmesh_store::ObjectKey;

use crate::GatewayError;

/// Validates `spec` and fills in what the server decides (a callback secret
/// when the client gave none).
pub fn validate_spec(mut spec: JobSpec) -> Result<JobSpec, GatewayError> {
    match spec.operation.as_ref() {
        None => return invalid("spec.operation: set one of trim, transcode"),
        Some(Operation::Trim(trim)) => {
            validate_source(trim.input.as_ref(), "spec.trim.input")?;
            validate_range(trim.start_seconds, trim.end_seconds)?;
        }
        Some(Operation::Transcode(transcode)) => {
            validate_source(transcode.input.as_ref(), "spec.transcode.input")?;
        }
    }
    if let Some(callback) = spec.callback.as_mut() {
        validate_callback(callback)?;
    }
    Ok(spec)
}

fn invalid<T>(message: impl Into<String>) -> Result<T, GatewayError> {
    Err(GatewayError::InvalidArgument(message.into()))
}

fn validate_source(source: Option<&Source>, field: &str) -> Result<(), GatewayError> {
    match source.and_then(|source| source.kind.as_ref()) {
        None => invalid(format!("{field}: an input is required (set asset)")),
        Some(Kind::Asset(key)) => ObjectKey::parse(key)
            .map(|_| ())
            .map_err(|err| GatewayError::InvalidArgument(format!("{field}.asset: {err}"))),
    }
}

fn validate_range(start: f64, end: f64) -> Result<(), GatewayError> {
    if !start.is_finite() || start < 0.0 {
        return invalid(format!("spec.trim.start_seconds must be >= 0, got {start}"));
    }
    if !end.is_finite() || end <= start {
        return invalid(format!(
            "spec.trim.end_seconds ({end}) must be greater than start_seconds ({start})"
        ));
    }
    Ok(())
}

fn validate_callback(callback: &mut Callback) -> Result<(), GatewayError> {
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
    use reelmesh_proto::v1::Trim;

    fn trim(start: f64, end: f64) -> JobSpec {
        JobSpec {
            operation: Some(Operation::Trim(Trim {
                input: Some(Source {
                    kind: Some(Kind::Asset("in.mp4".into())),
                }),
                start_seconds: start,
                end_seconds: end,
            })),
            ..Default::default()
        }
    }

    fn message(result: Result<JobSpec, GatewayError>) -> String {
        result.expect_err("should be refused").to_string()
    }

    #[test]
    fn a_reversed_range_names_both_fields() {
        let err = message(validate_spec(trim(4.0, 1.0)));
        assert!(
            err.contains("end_seconds") && err.contains("start_seconds"),
            "{err}"
        );
        assert!(validate_spec(trim(1.0, 4.0)).is_ok());
    }

    #[test]
    fn missing_operation_and_bad_keys_are_refused() {
        assert!(message(validate_spec(JobSpec::default())).contains("spec.operation"));
        let mut spec = trim(0.0, 1.0);
        if let Some(Operation::Trim(trim)) = spec.operation.as_mut() {
            trim.input = Some(Source {
                kind: Some(Kind::Asset("../etc/passwd".into())),
            });
        }
        assert!(message(validate_spec(spec)).contains("spec.trim.input.asset"));
    }

    #[test]
    fn callbacks_get_a_secret_and_bad_ones_are_refused() {
        let mut spec = trim(0.0, 1.0);
        spec.callback = Some(Callback {
            url: "http://127.0.0.1:9/hook".into(),
            secret: String::new(),
        });
        let spec = validate_spec(spec).expect("valid");
        let secret = spec.callback.expect("callback").secret;
        assert!(is_webhook_secret(&secret), "{secret}");

        let mut bad = trim(0.0, 1.0);
        bad.callback = Some(Callback {
            url: "ftp://x".into(),
            secret: String::new(),
        });
        assert!(message(validate_spec(bad)).contains("spec.callback.url"));
    }
}
