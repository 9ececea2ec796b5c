//! The names of every NATS subject, stream, consumer and bucket reelmesh uses.
//!
//! Subjects are built here and only here so that a rename is one edit and the
//! wildcards that consumers filter on always match what publishers send.

use crate::record::{JobId, TenantId};

/// KV bucket of job records, keyed `<tenant>.<job id>`.
pub const JOBS_BUCKET: &str = "reelmesh_jobs";

/// Work-queue stream: one message per job waiting for a render worker.
pub const WORK_STREAM: &str = "REELMESH_WORK";
/// Subjects the work stream captures.
pub const WORK_SUBJECTS: &str = "reelmesh.work.>";
/// Subject a job's work item is published on.
pub const WORK_SUBJECT: &str = "reelmesh.work.render";
/// Durable pull consumer shared by all render workers.
pub const RENDER_CONSUMER: &str = "render";

/// Limits stream holding every job's events.
pub const EVENTS_STREAM: &str = "REELMESH_EVENTS";
/// Subjects the events stream captures.
pub const EVENTS_SUBJECTS: &str = "reelmesh.events.>";
/// Durable consumer of terminal events that drives webhooks.
pub const NOTIFY_CONSUMER: &str = "notify";

/// `reelmesh.events.<tenant>.<job>.<kind>`: the kind is last so consumers can
/// filter on it (notify wants terminal events only) and the job is before it so
/// a watcher can take `reelmesh.events.<tenant>.<job>.*`.
pub fn event_subject(tenant: &TenantId, job: &JobId, kind: &str) -> String {
    format!("reelmesh.events.{tenant}.{job}.{kind}")
}

/// Filter matching every event of one job.
pub fn job_events_filter(tenant: &TenantId, job: &JobId) -> String {
    format!("reelmesh.events.{tenant}.{job}.*")
}

/// Filters matching the terminal events of every job.
pub fn terminal_event_filters() -> Vec<String> {
    ["completed", "failed", "cancelled"]
        .iter()
        .map(|kind| format!("reelmesh.events.*.*.{kind}"))
        .collect()
}

/// KV key of a job record.
pub fn job_key(tenant: &TenantId, job: &JobId) -> String {
    format!("{tenant}.{job}")
}

/// KV key filter for all jobs of a tenant.
pub fn tenant_jobs_filter(tenant: &TenantId) -> String {
    format!("$KV.{JOBS_BUCKET}.{tenant}.*")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_subjects_match_their_filters() {
        let tenant = TenantId::parse("acme").expect("valid tenant");
        let job = JobId::new();
        let subject = event_subject(&tenant, &job, "completed");
        assert_eq!(subject, format!("reelmesh.events.acme.{job}.completed"));
        assert!(job_events_filter(&tenant, &job).ends_with(".*"));
        assert_eq!(terminal_event_filters().len(), 3);
    }
}
