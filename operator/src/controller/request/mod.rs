//! The state machine of one CheckpointRequest.
//!
//! ```text
//! Pending ──validate, pick target──► Checkpointing ──Checkpoint task Succeeded──► Succeeded
//!                                         │ (migrate)
//!                                         ▼
//!                    Transferring ──Restore task reports its pull──► Restoring
//!                                         │ Restore task Succeeded and restored pod Running
//!                                         ▼ (deleteSource: the source pod is deleted now)
//!                                      Succeeded
//! any step ──failure, timeout──► Failed (the source pod is left running)
//! ```
//!
//! Each reconcile reads the world (the status it wrote, the NodeTasks, the pods) and moves
//! on from there; every object it creates has a deterministic name, so a reconcile that
//! re-runs after an operator restart finds what the previous run created instead of making
//! it twice. Decisions that must not change on a re-run (source and target node, restored
//! pod name, start time) are in the status.
//!
//! Layout: this file is the shell of [`apply`]: it picks the phase ([`next`], pure), runs
//! it, and writes what it decided. Each phase is one module ([`start`], [`checkpointing`],
//! [`restoring`] with [`transferring`]; [`finished`] and [`cleanup`] for the ends), whose
//! "what next" decision is a pure function of what it read, table-tested there; the I/O
//! around it reads the world and carries the decision out. [`conditions`], [`deadlines`] and
//! [`events`] are pure helpers on the status; [`api`] holds the kube calls.

pub mod abort;
pub mod api;
pub mod checkpointing;
pub mod cleanup;
pub mod conditions;
pub mod deadlines;
pub mod events;
pub mod finished;
pub mod identity;
pub mod restoring;
pub mod settle;
pub mod start;
pub mod step;
pub mod target;
pub mod transferring;
pub mod validate;

use std::sync::Arc;

use ferry_api::{CheckpointRequest, RequestPhase};
use jiff::Timestamp;
use kube::runtime::controller::Action;

use self::step::{Failure, Step};
use crate::Result;
use crate::controller::context::Context;

/// Which part of the state machine a live request is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Succeeded or Failed: only the TTL is left.
    Finished,
    /// Past its timeout: fail it.
    TimedOut(Failure),
    /// Pending: validate and start the checkpoint.
    Start,
    /// Checkpointing: wait for the Checkpoint task.
    Checkpointing,
    /// Transferring or Restoring: the restore's children and progress.
    Restoring,
}

/// Picks the part of the state machine from the request's phase and its timeout message
/// ([`deadlines::timed_out`]); a finished request never times out.
pub fn next(phase: RequestPhase, timed_out: Option<String>) -> Next {
    if phase.is_terminal() {
        return Next::Finished;
    }
    match timed_out {
        Some(message) => Next::TimedOut(Failure::new(ferry_api::names::reason::TIMEOUT, message)),
        None => match phase {
            RequestPhase::Pending => Next::Start,
            RequestPhase::Checkpointing => Next::Checkpointing,
            _ => Next::Restoring,
        },
    }
}

/// Drives a live request one step on.
pub async fn apply(req: Arc<CheckpointRequest>, ctx: &Context) -> Result<Action> {
    let key = api::key(&req);
    let before = req.status.clone().unwrap_or_default();
    let mut st = before.clone();
    let phase = req.phase();
    let step = match next(phase, deadlines::timed_out(&req, &st, Timestamp::now())) {
        Next::Finished => {
            ctx.metrics.set_phase(&key, Some(phase));
            return finished::run(&req, ctx).await;
        }
        Next::TimedOut(failure) => Step::Fail(failure),
        Next::Start => start::run(&req, ctx, &mut st).await?,
        Next::Checkpointing => checkpointing::run(&req, ctx, &mut st).await?,
        Next::Restoring => restoring::run(&req, ctx, &mut st).await?,
    };
    if let Step::Fail(failure) = &step {
        abort::run(&req, ctx, &st).await?;
        conditions::fail(
            &req,
            &mut st,
            failure.reason,
            &failure.message,
            Timestamp::now(),
        );
    }
    st.observed_generation = req.metadata.generation;
    if st != before {
        api::write_status(&ctx.client, &req, &st).await?;
    }
    let new_phase = st.phase.unwrap_or_default();
    ctx.metrics.set_phase(&key, Some(new_phase));
    if new_phase != phase || before.phase.is_none() {
        events::publish_transition(&req, ctx, &st).await;
    }
    Ok(deadlines::after_step(
        &step,
        new_phase,
        &req,
        &st,
        ctx.config.active_requeue,
        Timestamp::now(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_phase_and_the_timeout_pick_the_next_part() {
        let timeout = || Some("no result after timeoutSeconds=1".to_string());
        let failed = Next::TimedOut(Failure::new(
            ferry_api::names::reason::TIMEOUT,
            "no result after timeoutSeconds=1",
        ));
        // (phase, timed out, next)
        let table = [
            (RequestPhase::Pending, None, Next::Start),
            (RequestPhase::Checkpointing, None, Next::Checkpointing),
            (RequestPhase::Transferring, None, Next::Restoring),
            (RequestPhase::Restoring, None, Next::Restoring),
            (RequestPhase::Succeeded, None, Next::Finished),
            (RequestPhase::Failed, None, Next::Finished),
            (RequestPhase::Pending, timeout(), failed.clone()),
            (RequestPhase::Checkpointing, timeout(), failed.clone()),
            (RequestPhase::Restoring, timeout(), failed),
            (RequestPhase::Succeeded, timeout(), Next::Finished),
        ];
        for (phase, timed_out, expected) in table {
            let case = format!("{phase:?} {timed_out:?}");
            assert_eq!(next(phase, timed_out), expected, "{case}");
        }
    }
}
