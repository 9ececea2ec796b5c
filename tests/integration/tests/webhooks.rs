//! Webhook delivery as receivers and operators see it: retries on the
//! schedule with the same webhook-id and a valid signature each time, every
//! attempt in the delivery log (ListDeliveries), 410 Gone as a stop, a dead
//! letter when the schedule runs out, Redeliver sending one again, and the
//! egress guard refusing webhooks to private addresses before any request
//! is made.

use std::time::Duration;

use axum::http::StatusCode;
use reelmesh_cli::ReelmeshClient;
use reelmesh_integration_tests::{
    KEY_A, TestCluster, WebhookReceiver, delivery_when, verify_signature,
};
use reelmesh_proto::v1::{self as pb, job_spec::Operation};
use tonic::Code;

fn noop_with_callback(url: &str) -> pb::JobSpec {
    pb::JobSpec {
        operation: Some(Operation::Noop(pb::Noop {
            seconds: 0.0,
            fail_attempts: 0,
        })),
        callback: Some(pb::Callback {
            url: url.into(),
            secret: String::new(),
        }),
        ..Default::default()
    }
}

/// The job's one delivery once it is no longer retrying.
async fn settled_delivery(
    client: &mut ReelmeshClient,
    job_id: &str,
) -> anyhow::Result<pb::WebhookDelivery> {
    delivery_when(client, job_id, |d| d.state() != pb::DeliveryState::Retrying).await
}

fn statuses(delivery: &pb::WebhookDelivery) -> Vec<u32> {
    delivery.attempts.iter().map(|a| a.status).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_the_webhook_on_schedule_and_each_attempt_is_logged()
-> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let mut receiver = WebhookReceiver::start(2).await?;
    let mut client = cluster.client(KEY_A).await?;
    let job = client.submit(noop_with_callback(&receiver.url())).await?;
    let secret = job
        .spec
        .as_ref()
        .and_then(|spec| spec.callback.as_ref())
        .map(|callback| callback.secret.clone())
        .unwrap_or_default();

    let webhook = receiver.next(Duration::from_secs(30)).await?;
    assert!(verify_signature(&secret, &webhook), "{:?}", webhook.headers);
    assert_eq!(webhook.json()["type"], "job.completed");
    let delivery = settled_delivery(&mut client, &job.id).await?;
    assert_eq!(delivery.state(), pb::DeliveryState::Delivered);
    assert_eq!(statuses(&delivery), vec![503, 503, 204]);
    assert_eq!(
        delivery.id,
        webhook.header("webhook-id"),
        "one id for every attempt"
    );
    assert_eq!(delivery.event, "job.completed");
    assert!(
        delivery.attempts[..2]
            .iter()
            .all(|a| a.error.contains("503"))
    );
    assert!(delivery.next_attempt_at.is_none());
    assert_eq!(receiver.attempts(), 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_stops_at_once_and_a_spent_schedule_is_a_dead_letter() -> anyhow::Result<()> {
    let cluster = TestCluster::start_with(|config| {
        config.notify.retry_schedule_secs = vec![1, 1];
    })
    .await?;
    let mut client = cluster.client(KEY_A).await?;

    let gone = WebhookReceiver::start_failing_with(usize::MAX, StatusCode::GONE).await?;
    let job = client.submit(noop_with_callback(&gone.url())).await?;
    let delivery = settled_delivery(&mut client, &job.id).await?;
    assert_eq!(delivery.state(), pb::DeliveryState::Failed);
    assert_eq!(statuses(&delivery), vec![410], "410 is not retried");

    let down = WebhookReceiver::start(usize::MAX).await?;
    let job = client.submit(noop_with_callback(&down.url())).await?;
    let delivery = settled_delivery(&mut client, &job.id).await?;
    assert_eq!(delivery.state(), pb::DeliveryState::Failed);
    assert_eq!(
        statuses(&delivery),
        vec![503, 503, 503],
        "1 + 2 scheduled retries"
    );
    assert_eq!(down.attempts(), 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_to_private_addresses_are_refused_without_a_request() -> anyhow::Result<()> {
    let cluster = TestCluster::start_with(|config| {
        config.notify.egress.allow.clear();
    })
    .await?;
    let receiver = WebhookReceiver::start(0).await?;
    let mut client = cluster.client(KEY_A).await?;
    let port = receiver.addr.port();
    for url in [
        receiver.url(),
        format!("http://localhost:{port}/hook"),
        "http://169.254.169.254/latest/meta-data/".into(),
    ] {
        let job = client.submit(noop_with_callback(&url)).await?;
        let delivery = settled_delivery(&mut client, &job.id).await?;
        assert_eq!(delivery.state(), pb::DeliveryState::Failed, "{url}");
        assert_eq!(delivery.attempts.len(), 1, "a refusal is not retried");
        let error = &delivery.attempts[0].error;
        assert!(error.contains("refused"), "{url}: {error}");
    }
    assert_eq!(receiver.attempts(), 0, "nothing reached the receiver");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliver_sends_a_dead_letter_again_with_the_same_id() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    // 410 first (a dead letter at once), then 204.
    let mut receiver = WebhookReceiver::start_failing_with(1, StatusCode::GONE).await?;
    let mut client = cluster.client(KEY_A).await?;
    let job = client.submit(noop_with_callback(&receiver.url())).await?;
    let dead = settled_delivery(&mut client, &job.id).await?;
    assert_eq!(statuses(&dead), vec![410]);

    let redeliver = |job_id: &str, event: &str| pb::RedeliverRequest {
        job_id: job_id.into(),
        event: event.into(),
    };
    let bad = client
        .webhooks
        .redeliver(redeliver(&job.id, "job.started"))
        .await;
    assert_eq!(
        bad.expect_err("not a webhook event").code(),
        Code::InvalidArgument
    );
    let other = client.submit(noop_with_callback(&receiver.url())).await?.id;
    let none = client
        .webhooks
        .redeliver(redeliver(&other, "job.failed"))
        .await;
    assert_eq!(none.expect_err("no such webhook").code(), Code::NotFound);

    let before = client
        .webhooks
        .redeliver(redeliver(&job.id, "job.completed"))
        .await?
        .into_inner();
    assert_eq!(
        before.state(),
        pb::DeliveryState::Failed,
        "answered as it was"
    );
    let delivered = delivery_when(&mut client, &job.id, |d| {
        d.state() == pb::DeliveryState::Delivered
    })
    .await?;
    assert_eq!(statuses(&delivered), vec![410, 204]);
    // The other job's webhook is accepted too; find this job's.
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(
            receiver
                .next(Duration::from_secs(30))
                .await?
                .header("webhook-id")
                .to_string(),
        );
    }
    assert!(ids.contains(&delivered.id), "{ids:?} vs {}", delivered.id);
    Ok(())
}
