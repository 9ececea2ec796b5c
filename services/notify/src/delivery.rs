//! One webhook: the JSON body for a job event, signed with every key its
//! destination holds, POSTed once.

use std::time::Duration;

use reelmesh_nats::JobEvent;
use time::OffsetDateTime;

use crate::signing::{SigningKey, signature_header};

/// A webhook ready to send. Its id comes from the job and the event's
/// sequence, so every attempt and redelivery carries the same
/// `webhook-id` and receivers can dedupe.
#[derive(Debug, Clone)]
pub struct WebhookDelivery {
    pub id: String,
    pub url: String,
    pub body: Vec<u8>,
    keys: Vec<SigningKey>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("receiver answered HTTP {0}")]
    Status(u16),
    #[error("request failed: {0}")]
    Request(String),
    /// The URL names a host the egress guard does not allow.
    #[error("refused: {0}")]
    Refused(String),
    /// Nothing was sent: the destination or the event is gone.
    #[error("not sent: {0}")]
    NotSent(String),
}

impl DeliveryError {
    /// Whether another attempt may succeed: a refused host will stay
    /// refused, and 410 Gone is the receiver asking us to stop.
    pub fn is_final(&self) -> bool {
        matches!(self, DeliveryError::Refused(_) | DeliveryError::NotSent(_)) || self.is_gone()
    }

    pub fn is_gone(&self) -> bool {
        matches!(self, DeliveryError::Status(410))
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            DeliveryError::Status(status) => Some(*status),
            _ => None,
        }
    }
}

impl WebhookDelivery {
    pub fn new(id: String, url: String, keys: Vec<SigningKey>, event: &JobEvent) -> Self {
        WebhookDelivery {
            id,
            url,
            body: body(event),
            keys,
        }
    }

    /// POSTs once; any 2xx is success, and its status is returned.
    pub async fn send(
        &self,
        client: &reqwest::Client,
        timeout: Duration,
    ) -> Result<u16, DeliveryError> {
        let timestamp = OffsetDateTime::now_utc().unix_timestamp();
        let signature = signature_header(&self.keys, &self.id, timestamp, &self.body);
        let response = client
            .post(&self.url)
            .timeout(timeout)
            .header("content-type", "application/json")
            .header("webhook-id", &self.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(self.body.clone())
            .send()
            .await
            .map_err(|err| match reelmesh_runtime::egress::refusal_in(&err) {
                Some(refused) => DeliveryError::Refused(refused.to_string()),
                None => DeliveryError::Request(err.to_string()),
            })?;
        let status = response.status();
        if status.is_success() {
            Ok(status.as_u16())
        } else {
            Err(DeliveryError::Status(status.as_u16()))
        }
    }
}

/// The Standard Webhooks shape: `type` (`job.completed`, ...), `timestamp`
/// (when the event happened) and `data`: the job's id, the state the event
/// leaves it in, the round, and the event's own fields (`output`, `error`,
/// `percent`, `attempt`, ...), named as WatchJob names them.
fn body(event: &JobEvent) -> Vec<u8> {
    let mut data = match serde_json::to_value(&event.kind) {
        Ok(serde_json::Value::Object(fields)) => fields,
        _ => serde_json::Map::new(),
    };
    data.remove("type");
    data.insert("job_id".into(), event.job_id.as_str().into());
    data.insert(
        "state".into(),
        serde_json::to_value(event.kind.state()).unwrap_or_default(),
    );
    data.insert("round".into(), event.round.into());
    let timestamp = event
        .at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let payload = serde_json::json!({
        "type": format!("job.{}", event.kind.name()),
        "timestamp": timestamp,
        "data": data,
    });
    serde_json::to_vec(&payload).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use reelmesh_nats::{EventKind, JobId, Progress, TenantId};

    use super::*;

    fn event(kind: EventKind) -> JobEvent {
        JobEvent::now(
            &TenantId::parse("acme").expect("tenant"),
            &JobId::new(),
            kind,
        )
    }

    #[test]
    fn the_body_carries_the_event_fields_under_data() {
        let failed = event(EventKind::Failed {
            error: "input 0: not a video".into(),
        });
        let json: serde_json::Value = serde_json::from_slice(&body(&failed)).expect("json");
        assert_eq!(json["type"], "job.failed");
        assert_eq!(json["data"]["state"], "failed");
        assert_eq!(json["data"]["error"], "input 0: not a video");
        assert_eq!(json["data"]["job_id"], failed.job_id.as_str());
        assert!(json["data"].get("type").is_none());

        let progress = event(EventKind::Progress(Progress {
            stage: "render".into(),
            percent: 40.0,
            eta_seconds: Some(3.0),
        }));
        let json: serde_json::Value = serde_json::from_slice(&body(&progress)).expect("json");
        assert_eq!(json["type"], "job.progress");
        assert_eq!(json["data"]["state"], "running");
        assert_eq!(json["data"]["percent"], 40.0);
    }
}
