//! One webhook delivery: the JSON body for a terminal job event, signed and
//! POSTed to the job's callback URL.

use std::time::Duration;

use reelmesh_nats::{EventKind, JobEvent, JobRecord};
use serde::Serialize;
use time::OffsetDateTime;

use crate::signing::SigningKey;

/// A webhook ready to send. Its id is derived from the job and event, so a
/// redelivery carries the same `webhook-id` and receivers can dedupe.
#[derive(Debug, Clone)]
pub struct WebhookDelivery {
    pub id: String,
    pub url: String,
    pub body: Vec<u8>,
    key: SigningKey,
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
}

impl DeliveryError {
    /// Whether another attempt may succeed: a refused host will stay
    /// refused, and 410 Gone is the receiver asking us to stop.
    pub fn is_final(&self) -> bool {
        matches!(self, DeliveryError::Refused(_) | DeliveryError::Status(410))
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            DeliveryError::Status(status) => Some(*status),
            _ => None,
        }
    }
}

/// The JSON body, in the Standard Webhooks shape: type, timestamp, data.
#[derive(Debug, Serialize)]
struct Payload<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(with = "time::serde::rfc3339")]
    timestamp: OffsetDateTime,
    data: Data<'a>,
}

#[derive(Debug, Serialize)]
struct Data<'a> {
    job_id: &'a str,
    state: reelmesh_nats::JobState,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<&'a reelmesh_nats::JobOutput>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

impl WebhookDelivery {
    /// The delivery for `event`, or `None` if the job asked for no callback.
    pub fn for_event(
        event: &JobEvent,
        job: &JobRecord,
    ) -> Result<Option<Self>, crate::signing::BadSecret> {
        let Some(callback) = job.spec.callback.as_ref().filter(|c| !c.url.is_empty()) else {
            return Ok(None);
        };
        let key = SigningKey::from_secret(&callback.secret)?;
        let (output, error) = match &event.kind {
            EventKind::Completed { output } => (Some(output), None),
            EventKind::Failed { error } => (None, Some(error.as_str())),
            _ => (None, None),
        };
        let payload = Payload {
            kind: format!("job.{}", event.kind.name()),
            timestamp: event.at,
            data: Data {
                job_id: job.id.as_str(),
                state: job.state,
                output,
                error,
            },
        };
        let body = serde_json::to_vec(&payload).unwrap_or_default();
        Ok(Some(WebhookDelivery {
            id: format!("msg_{}_{}", event.job_id, event.kind.name()),
            url: callback.url.clone(),
            body,
            key,
        }))
    }

    /// POSTs once; any 2xx is success, and its status is returned.
    pub async fn send(
        &self,
        client: &reqwest::Client,
        timeout: Duration,
    ) -> Result<u16, DeliveryError> {
        let timestamp = OffsetDateTime::now_utc().unix_timestamp();
        let signature = self.key.sign(&self.id, timestamp, &self.body);
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
