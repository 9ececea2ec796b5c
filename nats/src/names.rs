//! The names of every NATS subject, stream, consumer and bucket reelmesh uses.
//!
//! Subjects are built here and only here so that a rename is one edit and the
//! wildcards that consumers filter on always match what publishers send.

use crate::{
    Destination,
    record::{JobId, Priority, TenantId},
};

/// KV bucket of job records, keyed `<tenant>.<job id>`.
pub const JOBS_BUCKET: &str = "reelmesh_jobs";

/// KV bucket mapping `<tenant>.<hash of idempotency key>` to a job id; its
/// entries expire after the idempotency window.
pub const IDEMPOTENCY_BUCKET: &str = "reelmesh_idempotency";

/// KV bucket of the asset catalog: records keyed `<tenant>.asset.<id>`,
/// and indexes `<tenant>.url.<hash>` / `<tenant>.sha.<sha256>` -> asset id.
pub const ASSETS_BUCKET: &str = "reelmesh_assets";

/// KV bucket of webhook deliveries and their attempts: one chain per job
/// and destination, keyed `<tenant>.<job>.<destination>` (`callback` or an
/// endpoint id).
pub const DELIVERIES_BUCKET: &str = "reelmesh_deliveries";

/// KV bucket of the webhook endpoints tenants register, keyed
/// `<tenant>.<endpoint id>`.
pub const ENDPOINTS_BUCKET: &str = "reelmesh_endpoints";

/// KV bucket of running slots: `<tenant>.<index>` -> the job holding it,
/// for the tenant limit on jobs running at once.
pub const RUNNING_BUCKET: &str = "reelmesh_running";

/// Work-queue stream: one message per job waiting for (or held by) a
/// render worker.
pub const WORK_STREAM: &str = "REELMESH_WORK";
/// Subjects the work stream captures.
pub const WORK_SUBJECTS: &str = "reelmesh.work.>";
/// The consumer name of earlier releases, which took every priority.
pub const LEGACY_RENDER_CONSUMER: &str = "render";

/// `reelmesh.work.<priority>.<tenant>.<job>`: one queue per priority; the
/// tenant in the subject so a tenant's waiting jobs can be counted, the job
/// so a job cancelled while queued can have its item taken out.
pub fn work_subject(priority: Priority, tenant: &TenantId, job: &JobId) -> String {
    format!("reelmesh.work.{}.{tenant}.{job}", priority.name())
}

/// Filter of one priority's queue. `>` rather than two wildcards so the
/// queue also takes items that earlier releases queued without the job.
pub fn work_priority_filter(priority: Priority) -> String {
    format!("reelmesh.work.{}.>", priority.name())
}

/// The priority a work subject queues at (the doorbell tells workers which
/// queue to look in from it).
pub fn work_subject_priority(subject: &str) -> Option<Priority> {
    let rest = subject.strip_prefix("reelmesh.work.")?;
    let name = rest.split('.').next()?;
    Priority::ALL.into_iter().find(|p| p.name() == name)
}

/// Filters of every queue entry of one tenant: as queued now, and as
/// releases before the job was in the subject queued them.
pub fn tenant_work_filters(tenant: &TenantId) -> [String; 2] {
    [
        format!("reelmesh.work.*.{tenant}.*"),
        format!("reelmesh.work.*.{tenant}"),
    ]
}

/// Filter of one job's queue entries, whatever their priority or round.
pub fn job_work_filter(tenant: &TenantId, job: &JobId) -> String {
    format!("reelmesh.work.*.{tenant}.{job}")
}

/// Durable pull consumer of one priority's queue, shared by all workers.
pub fn render_consumer(priority: Priority) -> String {
    format!("render-{}", priority.name())
}

/// Limits stream holding every job's events.
pub const EVENTS_STREAM: &str = "REELMESH_EVENTS";
/// Subjects the events stream captures.
pub const EVENTS_SUBJECTS: &str = "reelmesh.events.>";
/// Durable consumer of the events notify may have to send webhooks for
/// (every terminal event, and the other kinds some endpoint takes).
pub const NOTIFY_EVENTS_CONSUMER: &str = "notify-events";
/// The consumer of earlier releases, which took terminal events only.
pub const LEGACY_NOTIFY_CONSUMER: &str = "notify";

/// `reelmesh.events.<tenant>.<job>.<kind>`: the kind is last so consumers can
/// filter on it (render workers follow cancels) and the job is before it so a
/// watcher can take `reelmesh.events.<tenant>.<job>.*`.
pub fn event_subject(tenant: &TenantId, job: &JobId, kind: &str) -> String {
    format!("reelmesh.events.{tenant}.{job}.{kind}")
}

/// Filter matching every event of one job.
pub fn job_events_filter(tenant: &TenantId, job: &JobId) -> String {
    format!("reelmesh.events.{tenant}.{job}.*")
}

/// Filter matching one kind of event (an [`crate::EventKind::name`]) of
/// every job; render workers follow `cancelled` (as plain NATS messages) to
/// stop a running render.
pub fn kind_events_filter(kind: &str) -> String {
    format!("reelmesh.events.*.*.{kind}")
}

/// Filter matching one kind of event of one tenant's jobs.
pub fn tenant_kind_events_filter(tenant: &TenantId, kind: &str) -> String {
    format!("reelmesh.events.{tenant}.*.{kind}")
}

/// Work-queue stream of webhooks to send: one message per webhook (and per
/// Redeliver), naming its entry in the delivery log.
pub const WEBHOOK_STREAM: &str = "REELMESH_WEBHOOKS";
/// Subjects the webhook stream captures.
pub const WEBHOOK_SUBJECTS: &str = "reelmesh.webhooks.>";
/// Durable consumer notify's senders share.
pub const NOTIFY_SEND_CONSUMER: &str = "notify-send";
/// The redelivery stream of earlier releases, replaced by the webhook stream.
pub const LEGACY_REDELIVERY_STREAM: &str = "REELMESH_REDELIVERIES";

/// `reelmesh.webhooks.<tenant>.<job>.<destination>`.
pub fn webhook_subject(tenant: &TenantId, job: &JobId, destination: &Destination) -> String {
    format!("reelmesh.webhooks.{tenant}.{job}.{destination}")
}

/// KV key of a job record.
pub fn job_key(tenant: &TenantId, job: &JobId) -> String {
    format!("{tenant}.{job}")
}

/// KV key of a tenant's running slot `index` (from 0, below its limit).
pub fn running_slot_key(tenant: &TenantId, index: u32) -> String {
    format!("{tenant}.{index}")
}

/// KV key filter for all jobs of a tenant.
pub fn tenant_jobs_filter(tenant: &TenantId) -> String {
    format!("{tenant}.*")
}

/// KV key filter for every job of every tenant.
pub fn all_jobs_filter() -> String {
    "*.*".to_string()
}

/// The stream NATS keeps KV bucket `bucket` in.
pub fn kv_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

/// The subject a key (or a key filter) of KV bucket `bucket` is stored
/// under in [`kv_stream`].
pub fn kv_subject(bucket: &str, key: &str) -> String {
    format!("$KV.{bucket}.{key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_subjects_match_their_filters() {
        let (tenant, job) = (TenantId::parse("acme").expect("valid tenant"), JobId::new());
        let other = JobId::new();
        assert_eq!(
            work_subject(Priority::High, &tenant, &job),
            format!("reelmesh.work.high.acme.{job}")
        );
        for priority in Priority::ALL {
            let subject = work_subject(priority, &tenant, &job);
            assert_eq!(work_subject_priority(&subject), Some(priority));
            assert!(subject_matches(WORK_SUBJECTS, &subject));
            assert!(subject_matches(&work_priority_filter(priority), &subject));
            assert!(subject_matches(&tenant_work_filters(&tenant)[0], &subject));
            assert!(subject_matches(&job_work_filter(&tenant, &job), &subject));
            let others = work_subject(priority, &tenant, &other);
            assert!(!subject_matches(&job_work_filter(&tenant, &job), &others));
        }
        let low = work_subject(Priority::Low, &tenant, &job);
        assert!(!subject_matches(
            &work_priority_filter(Priority::High),
            &low
        ));
        // Items queued before the job was in the subject stay in their queue.
        assert!(subject_matches(
            &work_priority_filter(Priority::Low),
            "reelmesh.work.low.acme"
        ));
        assert_eq!(work_subject_priority("reelmesh.events.acme.x.queued"), None);
    }

    #[test]
    fn event_subjects_match_their_filters() {
        let tenant = TenantId::parse("acme").expect("valid tenant");
        let job = JobId::new();
        let subject = event_subject(&tenant, &job, "completed");
        assert_eq!(subject, format!("reelmesh.events.acme.{job}.completed"));
        assert!(job_events_filter(&tenant, &job).ends_with(".*"));
        let cancelled = event_subject(&tenant, &job, "cancelled");
        let cancels = kind_events_filter("cancelled");
        assert!(subject_matches(&cancels, &cancelled));
        assert!(!subject_matches(&cancels, &subject));
        let hook = webhook_subject(&tenant, &job, &Destination::Callback);
        assert!(subject_matches(WEBHOOK_SUBJECTS, &hook));
    }

    /// NATS subject matching, enough for these filters.
    fn subject_matches(filter: &str, subject: &str) -> bool {
        let (filter, subject): (Vec<_>, Vec<_>) =
            (filter.split('.').collect(), subject.split('.').collect());
        filter.iter().enumerate().all(|(n, token)| match *token {
            ">" => subject.len() > n,
            "*" => n < subject.len(),
            token => subject.get(n) == Some(&token),
        }) && (filter.last() == Some(&">") || filter.len() == subject.len())
    }
}
