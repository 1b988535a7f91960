//! The request's two clocks, as pure functions of the spec, the status and `now`:
//! `timeoutSeconds` counts from `startTime`, `ttlSecondsAfterFinished` from `completionTime`.
//! They decide when a request fails by timeout and when the controller looks again.

use std::time::Duration;

use ferry_api::{CheckpointRequest, CheckpointRequestStatus, RequestPhase};
use jiff::{SignedDuration, Timestamp};
use kube::runtime::controller::Action;

use super::step::Step;

/// After a step that advanced, look again this soon (the next phase starts at once).
const AT_ONCE: Duration = Duration::from_millis(1);
/// A requeue for a deadline lands this much after it, so that the deadline has passed.
const PAST_DEADLINE: Duration = Duration::from_millis(10);

/// When a finished request is deleted.
pub fn ttl_deadline(req: &CheckpointRequest, st: &CheckpointRequestStatus) -> Option<Timestamp> {
    let done = st.completion_time.as_ref()?.0;
    Some(done + SignedDuration::from_secs(i64::from(req.spec.ttl_seconds_after_finished)))
}

/// Whether a finished request is due for deletion.
pub fn ttl_expired(req: &CheckpointRequest, st: &CheckpointRequestStatus, now: Timestamp) -> bool {
    ttl_deadline(req, st).is_some_and(|d| d <= now)
}

/// A finished request waits for its TTL, or for a change when it has no completion time.
pub fn ttl_action(req: &CheckpointRequest, st: &CheckpointRequestStatus, now: Timestamp) -> Action {
    match ttl_deadline(req, st) {
        Some(d) => Action::requeue(unsigned(d.duration_since(now)) + PAST_DEADLINE),
        None => Action::await_change(),
    }
}

/// The timeout's message when the request ran past `timeoutSeconds`.
pub fn timed_out(
    req: &CheckpointRequest,
    st: &CheckpointRequestStatus,
    now: Timestamp,
) -> Option<String> {
    let started = st.start_time.as_ref()?.0;
    let limit = SignedDuration::from_secs(i64::from(req.spec.timeout_seconds));
    (started + limit < now).then(|| {
        format!(
            "no result after timeoutSeconds={} in phase {}",
            req.spec.timeout_seconds,
            req.phase().as_str()
        )
    })
}

/// `every`, or sooner when the timeout falls before it.
pub fn requeue_before_timeout(
    req: &CheckpointRequest,
    st: &CheckpointRequestStatus,
    every: Duration,
    now: Timestamp,
) -> Duration {
    let Some(started) = st.start_time.as_ref() else {
        return every;
    };
    let deadline = started.0 + SignedDuration::from_secs(i64::from(req.spec.timeout_seconds));
    every.min(unsigned(deadline.duration_since(now)) + PAST_DEADLINE)
}

/// When to look at the request again after `step` left it in `phase` (with status `st`).
pub fn after_step(
    step: &Step,
    phase: RequestPhase,
    req: &CheckpointRequest,
    st: &CheckpointRequestStatus,
    every: Duration,
    now: Timestamp,
) -> Action {
    match step {
        Step::Advanced if !phase.is_terminal() => Action::requeue(AT_ONCE),
        _ if phase.is_terminal() => ttl_action(req, st, now),
        Step::Recheck(due) => Action::requeue(requeue_before_timeout(
            req,
            st,
            every.min(*due + PAST_DEADLINE),
            now,
        )),
        _ => Action::requeue(requeue_before_timeout(req, st, every, now)),
    }
}

/// `d`, saturated to the range of a [`SignedDuration`].
pub fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

/// `d`, negative ones as zero.
pub fn unsigned(d: SignedDuration) -> Duration {
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::CheckpointRequestSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::super::step::Failure;

    const T0: Timestamp = Timestamp::UNIX_EPOCH;

    fn at(secs: i64) -> Timestamp {
        T0 + SignedDuration::from_secs(secs)
    }

    /// A request with timeoutSeconds=100 and ttlSecondsAfterFinished=50.
    fn request() -> CheckpointRequest {
        let mut spec = CheckpointRequestSpec::for_pod("p");
        spec.timeout_seconds = 100;
        spec.ttl_seconds_after_finished = 50;
        CheckpointRequest::new("r", spec)
    }

    fn status(started: Option<i64>, completed: Option<i64>) -> CheckpointRequestStatus {
        CheckpointRequestStatus {
            start_time: started.map(|s| Time(at(s))),
            completion_time: completed.map(|s| Time(at(s))),
            ..Default::default()
        }
    }

    #[test]
    fn a_request_times_out_only_after_timeout_seconds_from_its_start() {
        // (started at, now, timed out)
        let table = [
            (None, 1000, false),
            (Some(0), 99, false),
            (Some(0), 100, false),
            (Some(0), 101, true),
            (Some(50), 120, false),
        ];
        let req = request();
        for (started, now, expected) in table {
            let got = timed_out(&req, &status(started, None), at(now));
            assert_eq!(got.is_some(), expected, "started {started:?}, now {now}");
            if let Some(m) = got {
                assert!(
                    m.contains("timeoutSeconds=100") && m.contains("Pending"),
                    "{m}"
                );
            }
        }
    }

    #[test]
    fn the_ttl_counts_from_completion() {
        // (completed at, now, expired)
        let table = [
            (None, 1000, false),
            (Some(0), 49, false),
            (Some(0), 50, true),
        ];
        let req = request();
        for (completed, now, expected) in table {
            let st = status(Some(0), completed);
            assert_eq!(
                ttl_expired(&req, &st, at(now)),
                expected,
                "{completed:?} {now}"
            );
        }
    }

    #[test]
    fn the_next_look_follows_the_step_the_phase_and_the_deadlines() {
        let every = Duration::from_secs(10);
        let ms = Duration::from_millis;
        let fail = Step::Fail(Failure::new("Timeout", "m"));
        // (step, phase after it, started, completed, now, action)
        let table = [
            (
                Step::Advanced,
                RequestPhase::Checkpointing,
                Some(0),
                None,
                0,
                Action::requeue(ms(1)),
            ),
            (
                Step::Wait,
                RequestPhase::Checkpointing,
                Some(0),
                None,
                0,
                Action::requeue(every),
            ),
            (
                Step::Wait,
                RequestPhase::Pending,
                None,
                None,
                0,
                Action::requeue(every),
            ),
            // The timeout is 5 s away: look again just after it.
            (
                Step::Wait,
                RequestPhase::Restoring,
                Some(0),
                None,
                95,
                Action::requeue(ms(5010)),
            ),
            // Past the timeout: at once (plus the margin).
            (
                Step::Wait,
                RequestPhase::Restoring,
                Some(0),
                None,
                200,
                Action::requeue(ms(10)),
            ),
            // A settle period ending in 2 s: just after it, before the usual requeue.
            (
                Step::Recheck(Duration::from_secs(2)),
                RequestPhase::Restoring,
                Some(0),
                None,
                0,
                Action::requeue(ms(2010)),
            ),
            // One ending after the usual requeue waits for that one.
            (
                Step::Recheck(Duration::from_secs(60)),
                RequestPhase::Restoring,
                Some(0),
                None,
                0,
                Action::requeue(every),
            ),
            // Terminal: the TTL decides, whatever the step.
            (
                Step::Advanced,
                RequestPhase::Succeeded,
                Some(0),
                Some(10),
                20,
                Action::requeue(ms(40_010)),
            ),
            (
                fail.clone(),
                RequestPhase::Failed,
                Some(0),
                Some(10),
                100,
                Action::requeue(ms(10)),
            ),
            (
                fail,
                RequestPhase::Failed,
                Some(0),
                None,
                100,
                Action::await_change(),
            ),
        ];
        let req = request();
        for (i, (step, phase, started, completed, now, expected)) in table.into_iter().enumerate() {
            let st = status(started, completed);
            assert_eq!(
                after_step(&step, phase, &req, &st, every, at(now)),
                expected,
                "case {i}"
            );
        }
    }

    #[test]
    fn durations_saturate() {
        assert_eq!(unsigned(SignedDuration::from_secs(-1)), Duration::ZERO);
        assert_eq!(signed(Duration::MAX), SignedDuration::MAX);
        assert_eq!(signed(Duration::from_secs(2)), SignedDuration::from_secs(2));
    }
}
