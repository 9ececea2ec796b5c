//! A real HTTP webhook receiver for tests, and a Standard Webhooks signature
//! check written independently of notify's signer (it shares no code with
//! it), so a signing bug cannot hide by being checked against itself.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use tokio::sync::mpsc;

#[derive(Debug, Clone)]
pub struct ReceivedWebhook {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl ReceivedWebhook {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

#[derive(Debug)]
pub struct WebhookReceiver {
    pub addr: SocketAddr,
    received: mpsc::UnboundedReceiver<ReceivedWebhook>,
    attempts: Arc<AtomicUsize>,
    _server: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Receiver {
    sender: mpsc::UnboundedSender<ReceivedWebhook>,
    attempts: Arc<AtomicUsize>,
    fail_first: usize,
    failure: StatusCode,
    /// How long each answer takes.
    delay: std::time::Duration,
}

impl WebhookReceiver {
    /// Answers 503 to the first `fail_first` requests, then 204 and records them.
    pub async fn start(fail_first: usize) -> anyhow::Result<Self> {
        Self::start_failing_with(fail_first, StatusCode::SERVICE_UNAVAILABLE).await
    }

    /// Answers `failure` to the first `fail_first` requests, then 204.
    pub async fn start_failing_with(
        fail_first: usize,
        failure: StatusCode,
    ) -> anyhow::Result<Self> {
        Self::serve(fail_first, failure, std::time::Duration::ZERO).await
    }

    /// Answers 204 to every request, each after `delay`: a slow receiver.
    pub async fn start_slow(delay: std::time::Duration) -> anyhow::Result<Self> {
        Self::serve(0, StatusCode::SERVICE_UNAVAILABLE, delay).await
    }

    async fn serve(
        fail_first: usize,
        failure: StatusCode,
        delay: std::time::Duration,
    ) -> anyhow::Result<Self> {
        let (sender, received) = mpsc::unbounded_channel();
        let attempts = Arc::new(AtomicUsize::new(0));
        let state = Receiver {
            sender,
            attempts: attempts.clone(),
            fail_first,
            failure,
            delay,
        };
        let app = Router::new()
            .route("/hook", post(receive))
            .route("/moved", post(moved))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(WebhookReceiver {
            addr,
            received,
            attempts,
            _server: server,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// A URL that answers 307 Temporary Redirect to [`WebhookReceiver::url`].
    pub fn moved_url(&self) -> String {
        format!("http://{}/moved", self.addr)
    }

    /// Requests received so far, failed ones included.
    pub fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }

    /// The next accepted webhook, waiting up to `timeout`.
    pub async fn next(&mut self, timeout: std::time::Duration) -> anyhow::Result<ReceivedWebhook> {
        tokio::time::timeout(timeout, self.received.recv())
            .await
            .map_err(|_| anyhow::anyhow!("no webhook within {timeout:?}"))?
            .ok_or_else(|| anyhow::anyhow!("receiver stopped"))
    }
}

async fn receive(State(state): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    tokio::time::sleep(state.delay).await;
    let attempt = state.attempts.fetch_add(1, Ordering::SeqCst);
    if attempt < state.fail_first {
        return state.failure;
    }
    let _ = state.sender.send(ReceivedWebhook { headers, body });
    StatusCode::NO_CONTENT
}

async fn moved() -> (
    StatusCode,
    [(axum::http::header::HeaderName, &'static str); 1],
) {
    (
        StatusCode::TEMPORARY_REDIRECT,
        [(axum::http::header::LOCATION, "/hook")],
    )
}

/// Checks a webhook against `secret` the way a receiver following the
/// Standard Webhooks spec does: any `v1,` signature in the space-separated
/// header may match.
pub fn verify_signature(secret: &str, webhook: &ReceivedWebhook) -> bool {
    let Some(key) = secret
        .strip_prefix("whsec_")
        .and_then(|k| STANDARD.decode(k).ok())
    else {
        return false;
    };
    let signed = format!(
        "{}.{}.{}",
        webhook.header("webhook-id"),
        webhook.header("webhook-timestamp"),
        String::from_utf8_lossy(&webhook.body)
    );
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
        return false;
    };
    mac.update(signed.as_bytes());
    let expected = mac.finalize().into_bytes();
    webhook
        .header("webhook-signature")
        .split(' ')
        .filter_map(|candidate| candidate.strip_prefix("v1,"))
        .filter_map(|b64| STANDARD.decode(b64).ok())
        .any(|candidate| candidate.as_slice() == expected.as_slice())
}

/// The job's one webhook delivery as notify's log has it (through the
/// Webhooks API), once `done` says so; polls for up to a minute.
pub async fn delivery_when(
    client: &mut reelmesh_cli::ReelmeshClient,
    job_id: &str,
    done: impl Fn(&reelmesh_proto::v1::WebhookDelivery) -> bool,
) -> anyhow::Result<reelmesh_proto::v1::WebhookDelivery> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let request = reelmesh_proto::v1::ListDeliveriesRequest {
            job_id: job_id.into(),
        };
        let deliveries = client.webhooks.list_deliveries(request).await?.into_inner();
        if let Some(delivery) = deliveries.deliveries.first().filter(|d| done(d)) {
            return Ok(delivery.clone());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "delivery never got there: {deliveries:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
