//! Pure edits of a request's status: its conditions, and the two terminal outcomes.
//! `now` is passed in so that tests can pin it.

use ferry_api::names::condition;
use ferry_api::{CheckpointRequest, CheckpointRequestStatus, RequestPhase, RequestTimings};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Sets a condition; `lastTransitionTime` changes only when its status does.
pub fn set_condition(
    req: &CheckpointRequest,
    st: &mut CheckpointRequestStatus,
    type_: &str,
    ok: bool,
    why: &str,
    message: String,
    now: Timestamp,
) {
    let status = if ok { "True" } else { "False" };
    let generation = req.metadata.generation;
    match st.conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Time(now);
            }
            c.status = status.to_string();
            c.reason = why.to_string();
            c.message = message;
            c.observed_generation = generation;
        }
        None => st.conditions.push(Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: why.to_string(),
            message,
            last_transition_time: Time(now),
            observed_generation: generation,
        }),
    }
}

/// Marks the request Failed: every condition not yet True, and Ready, get `why` and the
/// message, which for a migration adds that the source pod keeps running.
pub fn fail(
    req: &CheckpointRequest,
    st: &mut CheckpointRequestStatus,
    why: &str,
    message: &str,
    now: Timestamp,
) {
    let mut message = message.to_string();
    if let Some(source) = &st.source_node
        && req.spec.is_migration()
    {
        message.push_str(&format!(
            "; the source pod {} keeps running on node {source}",
            req.spec.pod_name
        ));
    }
    st.phase = Some(RequestPhase::Failed);
    st.completion_time = Some(Time(now));
    for type_ in condition::ALL {
        let pending = st.condition(type_).is_some_and(|c| c.status != "True");
        if pending && type_ != condition::READY {
            set_condition(req, st, type_, false, why, message.clone(), now);
        }
    }
    set_condition(req, st, condition::READY, false, why, message, now);
}

/// Marks the request Succeeded.
pub fn succeed(
    req: &CheckpointRequest,
    st: &mut CheckpointRequestStatus,
    message: String,
    now: Timestamp,
) {
    st.phase = Some(RequestPhase::Succeeded);
    st.completion_time = Some(Time(now));
    set_condition(req, st, condition::READY, true, "Succeeded", message, now);
}

/// The status's timings, created empty on first use.
pub fn timings(st: &mut CheckpointRequestStatus) -> &mut RequestTimings {
    st.timings.get_or_insert_with(RequestTimings::default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::{CheckpointRequestSpec, MigrateSpec};
    use jiff::SignedDuration;

    fn request(migrate: bool) -> CheckpointRequest {
        let mut spec = CheckpointRequestSpec::for_pod("p");
        if migrate {
            spec.migrate = Some(MigrateSpec::default());
        }
        let mut req = CheckpointRequest::new("r", spec);
        req.metadata.generation = Some(3);
        req
    }

    #[test]
    fn a_condition_keeps_its_transition_time_until_its_status_changes() {
        let req = request(false);
        let mut st = CheckpointRequestStatus::default();
        let t0 = Timestamp::UNIX_EPOCH;
        let t1 = t0 + SignedDuration::from_secs(1);
        let t2 = t0 + SignedDuration::from_secs(2);
        // (ok, reason, when, the transition time after the edit)
        let table = [
            (false, "Checkpointing", t0, t0),
            (false, "StillCheckpointing", t1, t0),
            (true, "Checkpointed", t2, t2),
        ];
        for (ok, why, now, transition) in table {
            set_condition(
                &req,
                &mut st,
                condition::CHECKPOINTED,
                ok,
                why,
                "m".into(),
                now,
            );
            let c = st.condition(condition::CHECKPOINTED).unwrap();
            assert_eq!(c.last_transition_time.0, transition, "{why}");
            assert_eq!(c.reason, why);
            assert_eq!(c.observed_generation, Some(3));
        }
        assert_eq!(st.conditions.len(), 1);
    }

    #[test]
    fn failing_marks_every_pending_condition_and_says_where_the_source_runs() {
        // (migration, source node known, whether the message names the running source)
        let table = [
            (true, true, true),
            (true, false, false),
            (false, true, false),
        ];
        for (migrate, source, says_source) in table {
            let req = request(migrate);
            let mut st = CheckpointRequestStatus {
                source_node: source.then(|| "a".to_string()),
                ..Default::default()
            };
            let now = Timestamp::UNIX_EPOCH;
            set_condition(
                &req,
                &mut st,
                condition::CHECKPOINTED,
                true,
                "Checkpointed",
                "".into(),
                now,
            );
            set_condition(
                &req,
                &mut st,
                condition::TRANSFERRED,
                false,
                "Transferring",
                "".into(),
                now,
            );
            fail(&req, &mut st, "Timeout", "too slow", now);
            let case = format!("migrate={migrate} source={source}");
            assert_eq!(st.phase, Some(RequestPhase::Failed), "{case}");
            assert_eq!(st.completion_time, Some(Time(now)), "{case}");
            let ready = st.condition(condition::READY).unwrap();
            assert_eq!(
                (ready.status.as_str(), ready.reason.as_str()),
                ("False", "Timeout")
            );
            assert_eq!(
                ready.message.contains("keeps running on node a"),
                says_source,
                "{case}"
            );
            assert_eq!(
                st.condition(condition::CHECKPOINTED).unwrap().status,
                "True",
                "{case}"
            );
            assert_eq!(
                st.condition(condition::TRANSFERRED).unwrap().reason,
                "Timeout",
                "{case}"
            );
        }
    }

    #[test]
    fn succeeding_sets_ready_and_the_completion_time() {
        let req = request(false);
        let mut st = CheckpointRequestStatus::default();
        succeed(&req, &mut st, "done".into(), Timestamp::UNIX_EPOCH);
        assert_eq!(st.phase, Some(RequestPhase::Succeeded));
        assert!(st.completion_time.is_some());
        let ready = st.condition(condition::READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.message.as_str()),
            ("True", "done")
        );
    }
}
