//! Turns a job spec into a [`RenderPlan`]: which input, which part of it, and
//! where the result goes. The gateway has already validated the spec; this
//! only refuses what it cannot render.

use reelmesh_nats::JobId;
use reelmesh_proto::v1::{JobSpec, Source, job_spec::Operation, source::Kind};
use reelmesh_store::ObjectKey;

use crate::RenderError;

#[derive(Debug, Clone, PartialEq)]
pub struct RenderPlan {
    pub input: ObjectKey,
    /// Seconds to keep; `None` keeps everything.
    pub range: Option<(f64, f64)>,
    /// Store key of the result.
    pub output: ObjectKey,
}

impl RenderPlan {
    pub fn for_job(job: &JobId, spec: &JobSpec) -> Result<Self, RenderError> {
        let (source, range) = match spec.operation.as_ref() {
            Some(Operation::Trim(trim)) => (
                trim.input.as_ref(),
                Some((trim.start_seconds, trim.end_seconds)),
            ),
            Some(Operation::Transcode(transcode)) => (transcode.input.as_ref(), None),
            None => return Err(RenderError::Plan("the job has no operation".into())),
        };
        Ok(RenderPlan {
            input: asset_key(source)?,
            range,
            output: output_key(job)?,
        })
    }
}

fn asset_key(source: Option<&Source>) -> Result<ObjectKey, RenderError> {
    match source.and_then(|source| source.kind.as_ref()) {
        Some(Kind::Asset(key)) => {
            ObjectKey::parse(key).map_err(|err| RenderError::Plan(err.to_string()))
        }
        None => Err(RenderError::Plan("the job has no input".into())),
    }
}

fn output_key(job: &JobId) -> Result<ObjectKey, RenderError> {
    ObjectKey::parse(&format!("outputs/{job}.mp4"))
        .map_err(|err| RenderError::Plan(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reelmesh_proto::v1::Trim;

    #[test]
    fn a_trim_plans_its_range_and_an_output_per_job() {
        let job = JobId::new();
        let spec = JobSpec {
            operation: Some(Operation::Trim(Trim {
                input: Some(Source {
                    kind: Some(Kind::Asset("inputs/a.mp4".into())),
                }),
                start_seconds: 1.0,
                end_seconds: 4.0,
            })),
            ..Default::default()
        };
        let plan = RenderPlan::for_job(&job, &spec).expect("plan");
        assert_eq!(plan.input.as_str(), "inputs/a.mp4");
        assert_eq!(plan.range, Some((1.0, 4.0)));
        assert_eq!(plan.output.as_str(), format!("outputs/{job}.mp4"));
    }
}
