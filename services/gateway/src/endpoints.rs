//! Webhook endpoint requests, checked: what a client may register (an
//! http(s) URL, known event types, a well-formed secret) and which fields
//! an update may touch. Every refusal names the field.

use reelmesh_nats::{Disabled, EndpointId, EndpointRecord, WEBHOOK_EVENT_TYPES};
use reelmesh_proto::v1 as pb;
use time::OffsetDateTime;

use crate::{
    GatewayError,
    validate::{check_url, is_webhook_secret, new_webhook_secret},
};

/// Endpoints one tenant may have.
pub const MAX_ENDPOINTS_PER_TENANT: usize = 50;
/// How long a replaced secret still signs unless the request says.
pub const DEFAULT_SECRET_GRACE: time::Duration = time::Duration::hours(24);
/// The longest a request may ask for.
pub const MAX_SECRET_GRACE: time::Duration = time::Duration::days(30);
const MAX_DESCRIPTION_LEN: usize = 1024;

/// A CreateEndpoint request that passed its checks.
#[derive(Debug, Clone)]
pub struct NewEndpoint {
    pub url: String,
    pub description: String,
    pub events: Vec<String>,
    pub secret: String,
}

impl NewEndpoint {
    pub fn parse(request: pb::CreateEndpointRequest) -> Result<Self, GatewayError> {
        Ok(NewEndpoint {
            url: checked_url("url", request.url)?,
            description: checked_description("description", request.description)?,
            events: checked_events("events", request.events)?,
            secret: checked_secret("secret", request.secret)?,
        })
    }

    pub fn into_record(self, tenant: reelmesh_nats::TenantId) -> EndpointRecord {
        let now = OffsetDateTime::now_utc();
        EndpointRecord {
            id: EndpointId::new(),
            tenant,
            url: self.url,
            description: self.description,
            events: self.events,
            secrets: vec![reelmesh_nats::EndpointSecret {
                secret: self.secret,
                expires_at: None,
            }],
            disabled: None,
            created_at: now,
            updated_at: now,
        }
    }
}

/// The fields an UpdateEndpoint request changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EndpointUpdate {
    pub url: Option<String>,
    pub description: Option<String>,
    pub events: Option<Vec<String>>,
    pub disabled: Option<bool>,
}

impl EndpointUpdate {
    pub fn parse(request: pb::UpdateEndpointRequest) -> Result<(EndpointId, Self), GatewayError> {
        let endpoint = request
            .endpoint
            .ok_or_else(|| invalid("endpoint: required"))?;
        let id = endpoint_id("endpoint.id", &endpoint.id)?;
        let paths = request
            .update_mask
            .map(|mask| mask.paths)
            .unwrap_or_default();
        if paths.is_empty() {
            return Err(invalid(
                "update_mask: name the fields to change (url, description, events, disabled)",
            ));
        }
        let mut update = EndpointUpdate::default();
        for path in paths {
            match path.as_str() {
                "url" => update.url = Some(checked_url("endpoint.url", endpoint.url.clone())?),
                "description" => {
                    let text = endpoint.description.clone();
                    update.description = Some(checked_description("endpoint.description", text)?);
                }
                "events" => {
                    let events = endpoint.events.clone();
                    update.events = Some(checked_events("endpoint.events", events)?);
                }
                "disabled" => update.disabled = Some(endpoint.disabled),
                other => {
                    return Err(invalid(format!(
                        "update_mask: {other:?} cannot be changed (url, description, events, disabled can)"
                    )));
                }
            }
        }
        Ok((id, update))
    }

    pub fn apply(&self, record: &mut EndpointRecord, now: OffsetDateTime) {
        if let Some(url) = &self.url {
            record.url.clone_from(url);
        }
        if let Some(description) = &self.description {
            record.description.clone_from(description);
        }
        if let Some(events) = &self.events {
            record.events.clone_from(events);
        }
        match self.disabled {
            Some(false) => record.disabled = None,
            Some(true) if record.disabled.is_none() => {
                record.disabled = Some(Disabled {
                    at: now,
                    reason: "disabled by a client".into(),
                });
            }
            _ => {}
        }
        record.updated_at = now;
    }
}

/// A RotateEndpointSecret request that passed its checks.
#[derive(Debug, Clone)]
pub struct SecretRotation {
    pub secret: String,
    pub grace: time::Duration,
}

impl SecretRotation {
    pub fn parse(
        request: pb::RotateEndpointSecretRequest,
    ) -> Result<(EndpointId, Self), GatewayError> {
        let id = endpoint_id("id", &request.id)?;
        let grace = match request.previous_secret_valid_seconds {
            0 => DEFAULT_SECRET_GRACE,
            secs => i64::try_from(secs)
                .ok()
                .map(time::Duration::seconds)
                .filter(|grace| *grace <= MAX_SECRET_GRACE)
                .ok_or_else(|| {
                    invalid(format!(
                        "previous_secret_valid_seconds: at most {} (30 days), got {secs}",
                        MAX_SECRET_GRACE.whole_seconds()
                    ))
                })?,
        };
        let secret = checked_secret("secret", request.secret)?;
        Ok((id, SecretRotation { secret, grace }))
    }
}

pub fn endpoint_id(field: &str, id: &str) -> Result<EndpointId, GatewayError> {
    EndpointId::parse(id).map_err(|why| invalid(format!("{field}: {why}")))
}

fn checked_url(field: &str, url: String) -> Result<String, GatewayError> {
    check_url(&url).map_err(|why| invalid(format!("{field}: {why}")))?;
    Ok(url)
}

fn checked_description(field: &str, text: String) -> Result<String, GatewayError> {
    if text.len() > MAX_DESCRIPTION_LEN {
        return Err(invalid(format!(
            "{field}: longer than {MAX_DESCRIPTION_LEN} bytes"
        )));
    }
    Ok(text)
}

/// Known event types, each once, in the order given.
fn checked_events(field: &str, events: Vec<String>) -> Result<Vec<String>, GatewayError> {
    let mut checked: Vec<String> = Vec::new();
    for (n, event) in events.into_iter().enumerate() {
        if !WEBHOOK_EVENT_TYPES.contains(&event.as_str()) {
            return Err(invalid(format!(
                "{field}[{n}]: {event:?} is not an event type ({})",
                WEBHOOK_EVENT_TYPES.join(", ")
            )));
        }
        if !checked.contains(&event) {
            checked.push(event);
        }
    }
    Ok(checked)
}

/// The given secret if well formed, or a new one if none was given.
fn checked_secret(field: &str, secret: String) -> Result<String, GatewayError> {
    if secret.is_empty() {
        return Ok(new_webhook_secret());
    }
    if !is_webhook_secret(&secret) {
        return Err(invalid(format!(
            "{field}: must be \"whsec_\" followed by base64 of 24-64 bytes"
        )));
    }
    Ok(secret)
}

fn invalid(message: impl Into<String>) -> GatewayError {
    GatewayError::InvalidArgument(message.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(url: &str, events: &[&str]) -> pb::CreateEndpointRequest {
        pb::CreateEndpointRequest {
            url: url.into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            ..Default::default()
        }
    }

    fn message(err: GatewayError) -> String {
        err.to_string()
    }

    #[test]
    fn a_new_endpoint_gets_a_secret_and_its_events_once_each() {
        let new = NewEndpoint::parse(create(
            "https://example.com/hook",
            &["job.completed", "job.failed", "job.completed"],
        ))
        .expect("valid");
        assert!(is_webhook_secret(&new.secret));
        assert_eq!(new.events, ["job.completed", "job.failed"]);
    }

    #[test]
    fn refusals_name_the_field() {
        let bad_url = NewEndpoint::parse(create("ftp://example.com/x", &[])).expect_err("scheme");
        assert!(message(bad_url).starts_with("url: "));
        let bad_event = NewEndpoint::parse(create(
            "https://example.com",
            &["job.completed", "job.done"],
        ))
        .expect_err("event");
        assert!(message(bad_event).starts_with("events[1]: \"job.done\""));
        let bad_secret = NewEndpoint::parse(pb::CreateEndpointRequest {
            url: "https://example.com".into(),
            secret: "hunter2".into(),
            ..Default::default()
        })
        .expect_err("secret");
        assert!(message(bad_secret).starts_with("secret: "));
    }

    #[test]
    fn an_update_changes_only_the_masked_fields() {
        let mut record = NewEndpoint::parse(create("https://example.com/a", &["job.failed"]))
            .expect("valid")
            .into_record(reelmesh_nats::TenantId::parse("acme").expect("tenant"));
        record.disabled = Some(Disabled {
            at: OffsetDateTime::now_utc(),
            reason: "410".into(),
        });
        let request = pb::UpdateEndpointRequest {
            endpoint: Some(pb::Endpoint {
                id: record.id.to_string(),
                url: "https://example.com/b".into(),
                description: "ignored".into(),
                disabled: false,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["url".into(), "disabled".into()],
            }),
        };
        let (id, update) = EndpointUpdate::parse(request).expect("valid");
        assert_eq!(id, record.id);
        update.apply(&mut record, OffsetDateTime::now_utc());
        assert_eq!(record.url, "https://example.com/b");
        assert_eq!(record.description, "", "not in the mask");
        assert_eq!(record.events, ["job.failed"]);
        assert_eq!(record.disabled, None, "enabled again");
    }

    #[test]
    fn a_rotation_grace_beyond_30_days_is_refused() {
        let rotate = |secs| pb::RotateEndpointSecretRequest {
            id: EndpointId::new().to_string(),
            secret: String::new(),
            previous_secret_valid_seconds: secs,
        };
        let (_, default) = SecretRotation::parse(rotate(0)).expect("default");
        assert_eq!(default.grace, DEFAULT_SECRET_GRACE);
        assert!(is_webhook_secret(&default.secret));
        let (_, month) = SecretRotation::parse(rotate(30 * 86400)).expect("30 days");
        assert_eq!(month.grace, MAX_SECRET_GRACE);
        for secs in [30 * 86400 + 1, u64::MAX] {
            let err = SecretRotation::parse(rotate(secs)).expect_err("too long");
            assert!(message(err).starts_with("previous_secret_valid_seconds: "));
        }
    }

    #[test]
    fn an_update_must_say_what_it_changes() {
        let endpoint = pb::Endpoint {
            id: EndpointId::new().to_string(),
            ..Default::default()
        };
        let unmasked = pb::UpdateEndpointRequest {
            endpoint: Some(endpoint.clone()),
            update_mask: None,
        };
        let err = EndpointUpdate::parse(unmasked).expect_err("no mask");
        assert!(message(err).starts_with("update_mask: "));
        let secret = pb::UpdateEndpointRequest {
            endpoint: Some(endpoint),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["secret".into()],
            }),
        };
        let err = EndpointUpdate::parse(secret).expect_err("not updatable");
        assert!(message(err).contains("\"secret\" cannot be changed"));
    }
}
