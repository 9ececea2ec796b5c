//! Webhook delivery as receivers and operators see it: retries on the
//! schedule with the same webhook-id and a valid signature each time, every
//! attempt in the delivery log (ListDeliveries), 410 Gone as a stop, a dead
//! letter when the schedule runs out, Redeliver sending one again, and the
//! egress guard refusing webhooks to private addresses before any request
//! is made. Then tenant endpoints: managed by gRPC, sent the event types
//! they filter for, in order per job even while retrying, disabled by 410,
//! and signed with both secrets while one is rotated out.

use std::time::Duration;

use axum::http::StatusCode;
use reelmesh_cli::ReelmeshClient;
use reelmesh_integration_tests::{
    KEY_A, KEY_B, TestCluster, WebhookReceiver, delivery_when, verify_signature,
};
use reelmesh_integration_tests::{ReceivedWebhook, noop};
use reelmesh_proto::v1 as pb;
use tonic::Code;

fn noop_with_callback(url: &str) -> pb::JobSpec {
    pb::JobSpec {
        callback: Some(pb::Callback {
            url: url.into(),
            secret: String::new(),
        }),
        ..noop(0.0)
    }
}

/// The job's one delivery once it is delivered or a dead letter.
async fn settled_delivery(
    client: &mut ReelmeshClient,
    job_id: &str,
) -> anyhow::Result<pb::WebhookDelivery> {
    delivery_when(client, job_id, |d| {
        matches!(
            d.state(),
            pb::DeliveryState::Delivered | pb::DeliveryState::Failed
        )
    })
    .await
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
async fn a_redirect_is_a_failed_attempt_and_is_not_followed() -> anyhow::Result<()> {
    let cluster = TestCluster::start_with(|config| {
        config.notify.retry_schedule_secs = vec![1];
    })
    .await?;
    let mut client = cluster.client(KEY_A).await?;
    let receiver = WebhookReceiver::start(0).await?;
    let job = client
        .submit(noop_with_callback(&receiver.moved_url()))
        .await?;
    let delivery = settled_delivery(&mut client, &job.id).await?;
    assert_eq!(delivery.state(), pb::DeliveryState::Failed);
    assert_eq!(statuses(&delivery), vec![307, 307]);
    assert_eq!(receiver.attempts(), 0, "the redirect's target got nothing");
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

    let redeliver = |job_id: &str, delivery_id: &str| pb::RedeliverRequest {
        job_id: job_id.into(),
        delivery_id: delivery_id.into(),
        endpoint_id: String::new(),
    };
    let bad = client.webhooks.redeliver(redeliver(&job.id, "")).await;
    assert_eq!(
        bad.expect_err("no delivery named").code(),
        Code::InvalidArgument
    );
    let other = client.submit(noop_with_callback(&receiver.url())).await?.id;
    let none = client.webhooks.redeliver(redeliver(&other, &dead.id)).await;
    assert_eq!(
        none.expect_err("another job's webhook").code(),
        Code::NotFound
    );

    let before = client
        .webhooks
        .redeliver(redeliver(&job.id, &dead.id))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_log_near_the_largest_nats_message_makes_room_for_the_next() -> anyhow::Result<()>
{
    use reelmesh_nats::{DeliveryAttempt, DeliveryChain, DeliveryRecord, DeliveryState};
    // No workers: the job waits queued until it is cancelled.
    let cluster = TestCluster::start_without_render(|config| {
        config.notify.egress.allow = vec!["127.0.0.1".into()];
    })
    .await?;
    let mut receiver = WebhookReceiver::start(0).await?;
    let mut client = cluster.client(KEY_A).await?;
    let job = client.submit(noop_with_callback(&receiver.url())).await?;
    let job_id = reelmesh_nats::JobId::parse(&job.id).map_err(anyhow::Error::msg)?;
    let tenant = reelmesh_nats::TenantId::parse("tenant-a").map_err(anyhow::Error::msg)?;

    // Its callback's log as years of redelivered webhooks could leave it:
    // settled, and so near nats-server's largest message (1 MiB) that one
    // more webhook would not fit. Written directly, as notify itself would
    // never let it grow so large.
    const FILLED: usize = 1024 * 1024 - 200;
    let destination = reelmesh_nats::Destination::Callback;
    let mut chain = DeliveryChain::new(&tenant, &job_id, &destination);
    // Sequences this test's events never reach, so none is taken for theirs.
    let (mut sequence, at) = (1_000_000, time::OffsetDateTime::now_utc());
    let mut failed = |error: String| {
        sequence += 1;
        let attempt = DeliveryAttempt {
            at,
            status: Some(500),
            latency_ms: 3,
            error: Some(error),
        };
        let mut old = DeliveryRecord::pending(&job_id, sequence, "job.x".into(), receiver.url());
        (old.state, old.attempts) = (DeliveryState::Failed, vec![attempt]);
        // A fixed time, as the clock's would vary the length it is sized by.
        old.queued_at = Some(at);
        old
    };
    while serde_json::to_vec(&chain)?.len() < FILLED - 20_000 {
        chain.deliveries.push(failed("x".repeat(8000)));
    }
    chain.deliveries.push(failed(String::new()));
    let short = FILLED - serde_json::to_vec(&chain)?.len();
    let last = chain.deliveries.len() - 1;
    chain.deliveries[last] = failed("x".repeat(short));
    let filled = serde_json::to_vec(&chain)?.len();
    anyhow::ensure!((FILLED - 64..=FILLED).contains(&filled), "{filled} bytes");
    let listed = chain.deliveries.len();
    let nats = async_nats::connect(cluster.cluster.nats.url()).await?;
    let js = async_nats::jetstream::new(nats.clone());
    let bucket = js
        .get_key_value(reelmesh_nats::names::DELIVERIES_BUCKET)
        .await?;
    let key = format!("{tenant}.{job_id}.callback");
    bucket.put(key, serde_json::to_vec(&chain)?.into()).await?;

    client.cancel(&job.id).await?;
    let webhook = receiver.next(Duration::from_secs(30)).await?;
    assert_eq!(webhook.json()["type"], "job.cancelled");
    let topology = reelmesh_nats::Topology::connect(
        &cluster.cluster.nats.url(),
        &reelmesh_nats::TopologyConfig::default(),
    )
    .await?;
    // The receiver answered; its answer is logged just after.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let chain = loop {
        let chain = topology
            .deliveries
            .get(&tenant, &job_id, &destination)
            .await?;
        let chain = chain.expect("the log is there");
        let cancelled = chain.deliveries.iter().find(|d| d.event == "job.cancelled");
        if cancelled.is_some_and(|d| d.state == DeliveryState::Delivered) {
            break chain;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "never logged: {cancelled:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(chain.pruned > 0, "room was made");
    assert_eq!(
        chain.deliveries.len() as u64 + chain.pruned,
        listed as u64 + 1
    );
    assert!(serde_json::to_vec(&chain)?.len() <= reelmesh_nats::MAX_CHAIN_BYTES);
    // ListDeliveries says how many it no longer lists.
    let request = pb::ListDeliveriesRequest {
        job_id: job.id.clone(),
    };
    let listed = client.webhooks.list_deliveries(request).await?.into_inner();
    assert_eq!(listed.deliveries.len(), chain.deliveries.len());
    let callback = pb::PrunedDeliveries {
        endpoint_id: String::new(),
        count: chain.pruned,
    };
    assert_eq!(listed.pruned, [callback]);
    Ok(())
}

async fn create_endpoint(
    client: &mut ReelmeshClient,
    url: &str,
    events: &[&str],
) -> anyhow::Result<pb::Endpoint> {
    let request = pb::CreateEndpointRequest {
        url: url.into(),
        events: events.iter().map(|e| e.to_string()).collect(),
        ..Default::default()
    };
    Ok(client.webhooks.create_endpoint(request).await?.into_inner())
}

/// Every delivery of the job's webhooks, as ListDeliveries has them.
async fn deliveries_of(
    client: &mut ReelmeshClient,
    job_id: &str,
) -> anyhow::Result<Vec<pb::WebhookDelivery>> {
    let request = pb::ListDeliveriesRequest {
        job_id: job_id.into(),
    };
    Ok(client
        .webhooks
        .list_deliveries(request)
        .await?
        .into_inner()
        .deliveries)
}

/// The webhooks `receiver` accepts up to and including `last_type`.
async fn webhooks_until(
    receiver: &mut WebhookReceiver,
    last_type: &str,
) -> anyhow::Result<Vec<ReceivedWebhook>> {
    let mut received = Vec::new();
    loop {
        let webhook = receiver.next(Duration::from_secs(30)).await?;
        let done = webhook.json()["type"] == last_type;
        received.push(webhook);
        if done {
            return Ok(received);
        }
    }
}

fn types(webhooks: &[ReceivedWebhook]) -> Vec<String> {
    webhooks
        .iter()
        .map(|w| w.json()["type"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The event sequence in a `msg_<job>_<sequence>` webhook-id.
fn sequence_of(webhook: &ReceivedWebhook) -> u64 {
    let id = webhook.header("webhook-id");
    id.rsplit('_')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_are_managed_per_tenant_and_refusals_name_the_field() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let mut client = cluster.client(KEY_A).await?;
    let mut other = cluster.client(KEY_B).await?;

    let bad_url = create_endpoint(&mut client, "ftp://example.com/hook", &[]).await;
    let status = bad_url.expect_err("ftp").downcast::<tonic::Status>()?;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("url: "),
        "{}",
        status.message()
    );
    let bad_event =
        create_endpoint(&mut client, "https://example.com/hook", &["job.finished"]).await;
    let status = bad_event.expect_err("event").downcast::<tonic::Status>()?;
    assert!(
        status.message().starts_with("events[0]: "),
        "{}",
        status.message()
    );

    let created = create_endpoint(&mut client, "https://example.com/hook", &["job.failed"]).await?;
    assert!(
        created.secret.starts_with("whsec_"),
        "shown once, on create"
    );
    assert_eq!(created.events, ["job.failed"]);
    let get = |id: &str| pb::GetEndpointRequest { id: id.into() };
    let fetched = client
        .webhooks
        .get_endpoint(get(&created.id))
        .await?
        .into_inner();
    assert_eq!(fetched.secret, "", "not shown again");
    assert_eq!(fetched.url, created.url);
    let theirs = other.webhooks.get_endpoint(get(&created.id)).await;
    assert_eq!(theirs.expect_err("tenant B").code(), Code::NotFound);
    let listed = other
        .webhooks
        .list_endpoints(pb::ListEndpointsRequest {})
        .await?
        .into_inner();
    assert!(listed.endpoints.is_empty(), "tenant B has none");

    let update = |mask: &[&str]| pb::UpdateEndpointRequest {
        endpoint: Some(pb::Endpoint {
            id: created.id.clone(),
            description: "billing".into(),
            events: vec!["job.completed".into()],
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: mask.iter().map(|p| p.to_string()).collect(),
        }),
    };
    let unmasked = client.webhooks.update_endpoint(update(&[])).await;
    assert_eq!(unmasked.expect_err("no mask").code(), Code::InvalidArgument);
    let updated = client
        .webhooks
        .update_endpoint(update(&["description"]))
        .await?
        .into_inner();
    assert_eq!(updated.description, "billing");
    assert_eq!(updated.events, ["job.failed"], "not in the mask");
    let listed = client
        .webhooks
        .list_endpoints(pb::ListEndpointsRequest {})
        .await?
        .into_inner();
    assert_eq!(listed.endpoints, vec![updated]);

    let delete = |id: &str| pb::DeleteEndpointRequest { id: id.into() };
    client.webhooks.delete_endpoint(delete(&created.id)).await?;
    let gone = client.webhooks.get_endpoint(get(&created.id)).await;
    assert_eq!(gone.expect_err("deleted").code(), Code::NotFound);
    let again = client.webhooks.delete_endpoint(delete(&created.id)).await;
    assert_eq!(again.expect_err("deleted").code(), Code::NotFound);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_get_their_event_types_in_order_even_while_retrying() -> anyhow::Result<()> {
    let cluster = TestCluster::start_with(|config| {
        config.notify.progress_interval_secs = 1;
    })
    .await?;
    let mut client = cluster.client(KEY_A).await?;
    // Fails the first two requests: the queued webhook is retried while
    // everything after it waits.
    let mut everything = WebhookReceiver::start(2).await?;
    let mut ends = WebhookReceiver::start(0).await?;
    let all = create_endpoint(&mut client, &everything.url(), &[]).await?;
    let some = create_endpoint(&mut client, &ends.url(), &["job.started", "job.completed"]).await?;

    let job = client.submit(noop(1.5)).await?;
    let received = webhooks_until(&mut everything, "job.completed").await?;
    let kinds = types(&received);
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("job.queued"),
        "{kinds:?}"
    );
    assert_eq!(kinds[1], "job.started", "{kinds:?}");
    let progress = kinds.iter().filter(|k| *k == "job.progress").count();
    assert!(
        (1..=3).contains(&progress),
        "progress throttled to about once a second: {kinds:?}"
    );
    assert_eq!(kinds.len(), progress + 3, "{kinds:?}");
    let sequences: Vec<u64> = received.iter().map(sequence_of).collect();
    assert!(sequences.is_sorted(), "in event order: {sequences:?}");
    for webhook in &received {
        assert!(
            verify_signature(&all.secret, webhook),
            "{:?}",
            webhook.headers
        );
        assert_eq!(webhook.json()["data"]["job_id"], job.id.as_str());
    }

    let filtered = webhooks_until(&mut ends, "job.completed").await?;
    assert_eq!(types(&filtered), ["job.started", "job.completed"]);
    assert!(filtered.iter().all(|w| verify_signature(&some.secret, w)));
    assert!(
        !filtered.iter().any(|w| verify_signature(&all.secret, w)),
        "own secret"
    );

    // Each answer is logged just after the receiver gave it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let log = loop {
        let log = deliveries_of(&mut client, &job.id).await?;
        let to_all = log.iter().filter(|d| d.endpoint_id == all.id);
        if to_all.clone().count() == received.len()
            && to_all
                .clone()
                .all(|d| d.state() == pb::DeliveryState::Delivered)
        {
            break log;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "never all logged: {log:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let to_all: Vec<&pb::WebhookDelivery> =
        log.iter().filter(|d| d.endpoint_id == all.id).collect();
    assert_eq!(statuses(to_all[0]), vec![503, 503, 204]);
    assert!(
        to_all[1..].iter().all(|d| statuses(d) == vec![204]),
        "{to_all:?}"
    );
    assert_eq!(everything.attempts(), received.len() + 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_an_endpoint_until_it_is_enabled_again() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let mut client = cluster.client(KEY_A).await?;
    let mut gone = WebhookReceiver::start_failing_with(1, StatusCode::GONE).await?;
    let mut witness = WebhookReceiver::start(0).await?;
    let endpoint = create_endpoint(&mut client, &gone.url(), &["job.completed"]).await?;
    create_endpoint(&mut client, &witness.url(), &["job.completed"]).await?;

    let first = client.submit(noop(0.0)).await?;
    witness.next(Duration::from_secs(30)).await?;
    let get = pb::GetEndpointRequest {
        id: endpoint.id.clone(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let disabled = loop {
        let now = client
            .webhooks
            .get_endpoint(get.clone())
            .await?
            .into_inner();
        if now.disabled {
            break now;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "never disabled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(disabled.disabled_reason.contains("410"), "{disabled:?}");
    // The endpoint is disabled first (should recording the attempt fail,
    // the task comes back and meets the 410 again); the attempt is
    // recorded just after.
    let ours = loop {
        let log = deliveries_of(&mut client, &first.id).await?;
        let ours = log.into_iter().find(|d| d.endpoint_id == endpoint.id);
        let ours = ours.expect("a delivery to the gone endpoint");
        if !ours.attempts.is_empty() {
            break ours;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "never recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(statuses(&ours), vec![410]);
    assert_eq!(ours.state(), pb::DeliveryState::Failed);

    // The next job's webhook reaches the witness only.
    let second = client.submit(noop(0.0)).await?;
    let seen = witness.next(Duration::from_secs(30)).await?;
    assert_eq!(seen.json()["data"]["job_id"], second.id.as_str());
    let log = deliveries_of(&mut client, &second.id).await?;
    assert!(
        log.iter().all(|d| d.endpoint_id != endpoint.id),
        "nothing for a disabled endpoint: {log:?}"
    );
    assert_eq!(gone.attempts(), 1);

    let enable = pb::UpdateEndpointRequest {
        endpoint: Some(pb::Endpoint {
            id: endpoint.id.clone(),
            disabled: false,
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["disabled".into()],
        }),
    };
    let enabled = client.webhooks.update_endpoint(enable).await?.into_inner();
    assert!(!enabled.disabled && enabled.disabled_reason.is_empty());
    let third = client.submit(noop(0.0)).await?;
    let webhook = gone.next(Duration::from_secs(30)).await?;
    assert_eq!(webhook.json()["data"]["job_id"], third.id.as_str());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_still_signs_alongside_the_new_one() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let mut client = cluster.client(KEY_A).await?;
    let mut receiver = WebhookReceiver::start(0).await?;
    let endpoint = create_endpoint(&mut client, &receiver.url(), &["job.completed"]).await?;
    let rotate = pb::RotateEndpointSecretRequest {
        id: endpoint.id.clone(),
        ..Default::default()
    };
    let rotated = client
        .webhooks
        .rotate_endpoint_secret(rotate)
        .await?
        .into_inner();
    assert!(rotated.secret.starts_with("whsec_"));
    assert_ne!(rotated.secret, endpoint.secret);

    client.submit(noop(0.0)).await?;
    let webhook = receiver.next(Duration::from_secs(30)).await?;
    let signatures = webhook.header("webhook-signature").split(' ').count();
    assert_eq!(signatures, 2, "{:?}", webhook.headers);
    assert!(verify_signature(&endpoint.secret, &webhook), "old secret");
    assert!(verify_signature(&rotated.secret, &webhook), "new secret");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_gets_the_events_of_its_kinds_notify_passed_over_since_it_was_saved()
-> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let mut client = cluster.client(KEY_A).await?;
    let saved_at = time::OffsetDateTime::now_utc();
    // No endpoint takes `started`, so notify's consumer passes over both
    // jobs' started events; the second job's callback shows it has.
    let mut callbacks = WebhookReceiver::start(0).await?;
    let first = client.submit(noop(0.0)).await?;
    let second = client.submit(noop_with_callback(&callbacks.url())).await?;
    let ended = callbacks.next(Duration::from_secs(30)).await?;
    assert_eq!(ended.json()["type"], "job.completed");
    // An endpoint saved before both jobs started, which notify hears of
    // only now (as if its change had been slow to arrive).
    let mut receiver = WebhookReceiver::start(0).await?;
    let request = pb::CreateEndpointRequest {
        url: receiver.url(),
        events: vec!["job.started".into()],
        ..Default::default()
    };
    let tenant = reelmesh_nats::TenantId::parse("tenant-a").map_err(anyhow::Error::msg)?;
    let mut endpoint =
        reelmesh_gateway::endpoints::NewEndpoint::parse(request)?.into_record(tenant);
    endpoint.updated_at = saved_at;
    let config = reelmesh_nats::TopologyConfig::default();
    let nats = reelmesh_nats::Topology::connect(&cluster.cluster.nats.url(), &config).await?;
    let routed = || async {
        let js = async_nats::jetstream::new(async_nats::connect(cluster.cluster.nats.url()).await?);
        let events = js.get_stream(reelmesh_nats::names::EVENTS_STREAM).await?;
        let consumer = events
            .consumer_info(reelmesh_nats::names::NOTIFY_EVENTS_CONSUMER)
            .await?;
        anyhow::Ok(consumer.config.filter_subjects.clone())
    };
    let terminal = reelmesh_nats::TERMINAL_KIND_NAMES.map(reelmesh_nats::names::kind_events_filter);
    assert_eq!(routed().await?, terminal, "only what a callback may want");
    nats.endpoints.create(&endpoint).await?;

    let mut started = Vec::new();
    for _ in 0..2 {
        let webhook = receiver.next(Duration::from_secs(30)).await?;
        assert_eq!(webhook.json()["type"], "job.started");
        started.push(webhook.json()["data"]["job_id"].as_str().map(str::to_owned));
    }
    // Two jobs, two chains: sent in parallel, so in either order.
    started.sort();
    let mut expected = [Some(first.id), Some(second.id)];
    expected.sort();
    assert_eq!(started, expected, "both read back");
    let started = reelmesh_nats::names::kind_events_filter("started");
    assert_eq!(routed().await?[0], started, "then routed as they come");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_jobs_many_webhooks_to_a_slow_receiver_do_not_hold_up_other_tenants()
-> anyhow::Result<()> {
    let cluster = TestCluster::start_with(|config| {
        // Four tasks in hand at most.
        config.notify.concurrency = 1;
        config.notify.progress_interval_secs = 1;
    })
    .await?;
    let mut tenant_a = cluster.client(KEY_A).await?;
    let slow = WebhookReceiver::start_slow(Duration::from_secs(6)).await?;
    create_endpoint(&mut tenant_a, &slow.url(), &[]).await?;
    // Queued, started, about three progress and completed, all in one
    // chain (job and endpoint), sent one after another, 6 s each: long
    // enough that B's webhook below reaches notify during the first or
    // second of them however loaded the machine.
    let long = tenant_a.submit(noop(3.0)).await?;
    let mut events = tenant_a.watch(&long.id).await?;
    let wait = Duration::from_secs(30);
    while tokio::time::timeout(wait, futures::StreamExt::next(&mut events))
        .await?
        .is_some()
    {}
    // Another tenant's webhook, queued behind all of them.
    let mut tenant_b = cluster.client(KEY_B).await?;
    let mut fast = WebhookReceiver::start(0).await?;
    tenant_b.submit(noop_with_callback(&fast.url())).await?;
    let webhook = fast.next(Duration::from_secs(30)).await?;
    assert_eq!(webhook.json()["type"], "job.completed");
    // Had the long job's chain filled the places in hand, this one would
    // wait for at least two more of its 6 s sends.
    let sent_slowly = slow.attempts();
    assert!(sent_slowly <= 2, "{sent_slowly} slow webhooks went first");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_read_back_for_an_endpoint_never_goes_after_a_later_webhook_of_its_job()
-> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let mut client = cluster.client(KEY_A).await?;
    let mut receiver = WebhookReceiver::start(0).await?;
    let endpoint = create_endpoint(&mut client, &receiver.url(), &["job.completed"]).await?;
    let before_both = time::OffsetDateTime::now_utc();
    let done = client.submit(noop(0.0)).await?;
    let completed = receiver.next(Duration::from_secs(30)).await?;
    assert_eq!(completed.json()["data"]["job_id"], done.id.as_str());
    let running = client.submit(noop(30.0)).await?;
    reelmesh_integration_tests::started(&mut client, &running.id).await?;
    // The endpoint now takes `started` too, as of before both jobs: the
    // running job's start is read back and sent; the ended job's is not,
    // as its completed webhook went first.
    let config = reelmesh_nats::TopologyConfig::default();
    let nats = reelmesh_nats::Topology::connect(&cluster.cluster.nats.url(), &config).await?;
    let tenant = reelmesh_nats::TenantId::parse("tenant-a").map_err(anyhow::Error::msg)?;
    let id = reelmesh_nats::EndpointId::parse(&endpoint.id).map_err(anyhow::Error::msg)?;
    nats.endpoints
        .update(&tenant, &id, |record| {
            record.events.push("job.started".into());
            record.updated_at = before_both;
            true
        })
        .await?;
    let started = receiver.next(Duration::from_secs(30)).await?;
    assert_eq!(started.json()["type"], "job.started");
    assert_eq!(started.json()["data"]["job_id"], running.id.as_str());
    let to_endpoint = deliveries_of(&mut client, &done.id).await?;
    let kinds: Vec<&str> = to_endpoint.iter().map(|d| d.event.as_str()).collect();
    assert_eq!(kinds, ["job.completed"], "no start after the end");
    client.cancel(&running.id).await?;
    Ok(())
}
