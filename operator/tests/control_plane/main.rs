// Test code: unwrap/expect are allowed in tests (the workspace lints deny them elsewhere);
// helpers outside #[test] need it said.
#![allow(clippy::expect_used, clippy::unwrap_used)]

//! The operator's controller, started in-process as the `ferry-operator` user with only the
//! RBAC of `manifests/rbac/`, against a real control plane (etcd, kube-apiserver,
//! controller-manager, scheduler) with kwok nodes that run pods on paper. The test plays
//! the node agents: it renews their readiness Leases and writes NodeTask statuses.
//!
//! One cluster per test binary; scenarios run in sequence, each in its own namespace, and the
//! test fails listing every failed scenario.

mod happy_paths;
mod helpers;
mod lifecycle;
mod security;
mod validation;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::time::Instant;

use ferry_e2e::{Cluster, Options, User};
use futures::FutureExt;

use crate::happy_paths::{
    a_checkpoint_succeeds_with_the_test_playing_the_agent,
    a_failed_restore_deletes_the_restored_pod_and_keeps_the_source_running,
    a_migration_succeeds_and_deletes_the_source_with_the_test_playing_the_agent,
};
use crate::helpers::{
    AGENTS, Env, NODES, WAIT, agent_lease, client, create_namespace, start_operator,
};
use crate::lifecycle::{
    a_finished_request_is_deleted_after_its_ttl, a_request_past_its_timeout_fails_with_timeout,
    an_operator_restart_in_each_phase_of_a_migration_resumes_it,
    deleting_a_running_migration_aborts_it_and_deletes_images_through_the_agents,
    the_api_server_rejects_a_spec_update, two_replicas_fail_over_without_a_duplicated_node_task,
};
use crate::security::{
    a_checkpoint_without_a_well_formed_digest_fails_closed,
    a_migration_out_of_its_nodes_pool_fails_and_one_inside_it_goes_ahead,
    a_migration_to_a_tainted_node_fails_before_the_checkpoint_naming_the_taint,
    a_pod_squatting_the_restored_name_is_neither_adopted_nor_deleted,
    a_restored_pod_whose_container_restarted_does_not_replace_the_source,
    a_source_pod_recreated_under_its_name_mid_migration_survives,
};
use crate::validation::{
    a_migration_no_node_can_take_fails_with_no_compatible_node_naming_each_node,
    a_migration_to_a_cordoned_node_fails_with_target_node_unschedulable,
    a_migration_to_a_missing_node_fails_with_target_node_not_found,
    a_migration_to_a_node_outside_the_pods_node_affinity_fails_with_no_compatible_node,
    a_migration_to_a_node_that_is_not_ready_fails_with_target_node_not_ready,
    a_migration_to_the_pods_own_node_fails_with_target_is_source,
    a_request_for_a_missing_pod_fails_with_pod_not_found_and_an_event,
    a_request_for_a_pending_pod_fails_with_pod_not_running,
    a_request_for_a_pod_on_a_node_without_an_agent_fails_with_agent_not_ready,
    a_request_naming_an_unknown_container_fails_with_container_not_found,
    a_request_with_a_missing_pvc_fails_with_pvc_not_found,
    a_second_request_for_a_busy_pod_fails_with_request_already_active,
};

type Scenario = for<'a> fn(&'a Env, &'a str) -> Pin<Box<dyn Future<Output = ()> + 'a>>;

macro_rules! scenarios {
    ($($f:ident),* $(,)?) => { &[$((stringify!($f), |e, ns| Box::pin($f(e, ns)))),*] };
}

const SCENARIOS: &[(&str, Scenario)] = scenarios![
    a_request_for_a_missing_pod_fails_with_pod_not_found_and_an_event,
    a_request_for_a_pending_pod_fails_with_pod_not_running,
    a_request_naming_an_unknown_container_fails_with_container_not_found,
    a_request_for_a_pod_on_a_node_without_an_agent_fails_with_agent_not_ready,
    a_migration_to_a_missing_node_fails_with_target_node_not_found,
    a_migration_to_a_node_that_is_not_ready_fails_with_target_node_not_ready,
    a_migration_to_a_cordoned_node_fails_with_target_node_unschedulable,
    a_migration_to_the_pods_own_node_fails_with_target_is_source,
    a_migration_to_a_node_outside_the_pods_node_affinity_fails_with_no_compatible_node,
    a_request_with_a_missing_pvc_fails_with_pvc_not_found,
    a_second_request_for_a_busy_pod_fails_with_request_already_active,
    a_migration_no_node_can_take_fails_with_no_compatible_node_naming_each_node,
    a_checkpoint_succeeds_with_the_test_playing_the_agent,
    a_migration_succeeds_and_deletes_the_source_with_the_test_playing_the_agent,
    a_failed_restore_deletes_the_restored_pod_and_keeps_the_source_running,
    an_operator_restart_in_each_phase_of_a_migration_resumes_it,
    deleting_a_running_migration_aborts_it_and_deletes_images_through_the_agents,
    a_request_past_its_timeout_fails_with_timeout,
    a_finished_request_is_deleted_after_its_ttl,
    the_api_server_rejects_a_spec_update,
    a_migration_to_a_tainted_node_fails_before_the_checkpoint_naming_the_taint,
    a_migration_out_of_its_nodes_pool_fails_and_one_inside_it_goes_ahead,
    a_checkpoint_without_a_well_formed_digest_fails_closed,
    a_source_pod_recreated_under_its_name_mid_migration_survives,
    a_restored_pod_whose_container_restarted_does_not_replace_the_source,
    a_pod_squatting_the_restored_name_is_neither_adopted_nor_deleted,
];

#[test]
fn the_operator_reconciles_requests_against_a_real_control_plane() {
    let cluster = Cluster::start(Options::control_plane().with_controllers().with_kwok())
        .unwrap_or_else(|e| panic!("starting the test cluster: {e}"));
    let nodes = cluster
        .add_kwok_nodes(NODES)
        .unwrap_or_else(|e| panic!("{e}"));
    cluster
        .wait_nodes_ready(&nodes, WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    cluster
        .kubectl(&["create", "namespace", AGENTS])
        .unwrap_or_else(|e| panic!("{e}"));
    let rbac = ferry_e2e::workspace_root().join("manifests/rbac");
    cluster
        .kubectl(&["apply", "-f", &rbac.display().to_string()])
        .unwrap_or_else(|e| panic!("{e}"));
    // The harness's operator certificate is user ferry-operator: bind the same roles to it.
    for args in [
        [
            "create",
            "clusterrolebinding",
            "ferry-operator-user",
            "--clusterrole=ferry-operator",
            "--user=ferry-operator",
        ]
        .as_slice(),
        [
            "create",
            "rolebinding",
            "ferry-operator-user",
            "-n",
            AGENTS,
            "--role=ferry-operator",
            "--user=ferry-operator",
        ]
        .as_slice(),
    ] {
        cluster.kubectl(args).unwrap_or_else(|e| panic!("{e}"));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let failed = runtime.block_on(async {
        let admin = client(&cluster, User::Admin).await;
        let operator = client(&cluster, User::Operator).await;
        let env = Env {
            cluster,
            admin,
            operator,
            nodes,
        };
        for node in &env.nodes {
            agent_lease(&env, node, true).await;
        }
        let mut failed = Vec::new();
        for (i, (name, scenario)) in SCENARIOS.iter().enumerate() {
            let ns = format!("s{i:02}");
            let began = Instant::now();
            create_namespace(&env, &ns).await;
            // The restart scenario runs its own operators.
            let op = (!name.starts_with("an_operator_restart")).then(|| start_operator(&env));
            let outcome = AssertUnwindSafe(scenario(&env, &ns)).catch_unwind().await;
            if let Some(op) = op {
                op.abort();
            }
            match outcome {
                Ok(()) => eprintln!("scenario ok ({:.1?}): {name}", began.elapsed()),
                Err(_) => {
                    eprintln!("scenario FAILED ({:.1?}): {name}", began.elapsed());
                    failed.push(*name);
                }
            }
        }
        let began = Instant::now();
        let name = "two_replicas_fail_over_without_a_duplicated_node_task";
        create_namespace(&env, "leader").await;
        match AssertUnwindSafe(two_replicas_fail_over_without_a_duplicated_node_task(
            &env, "leader",
        ))
        .catch_unwind()
        .await
        {
            Ok(()) => eprintln!("scenario ok ({:.1?}): {name}", began.elapsed()),
            Err(_) => {
                eprintln!("scenario FAILED ({:.1?}): {name}", began.elapsed());
                failed.push(name);
            }
        }
        (failed, env)
    });
    let (failed, env) = failed;
    drop(runtime);
    assert!(failed.is_empty(), "failed scenarios: {failed:#?}");
    drop(env);
}
