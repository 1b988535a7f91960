//! Transfer grants against a real API server (issue #14, finding 1; docs/security.md): etcd,
//! kube-apiserver and two kwok nodes from the e2e harness, ferry's RBAC and node-scope policy
//! from `manifests/`, the source agent's transfer server reading grants with the source
//! agent's own node-bound ServiceAccount token, the pull as the target agent (its certificate,
//! its token), real mutual TLS and real stores.
//!
//! The attack: a tenant of namespace `team-a`, who may write Secrets there, forges a grant for
//! namespace `team-b`'s image and pulls it from the source agent's port. It gets nothing; a
//! grant in the agents' namespace whose request UID is not the image's is refused; the grant
//! as the operator mints it (written with the operator's credentials) works, for the target
//! agent's certificate only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod transfer_common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ferry_agent::cluster::grants::{SecretGrants, token_of};
use ferry_agent::store::Store;
use ferry_agent::transfer::{NodeIdentity, PullSpec, Token, TransferError, pull};
use ferry_api::names::{agent, annotation};
use ferry_e2e::identity::{SYSTEM_NAMESPACE, agent_identity};
use ferry_e2e::migration::bind_ferry_rbac;
use ferry_e2e::{Cluster, Options, User};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use transfer_common::*;

const VICTIM_NS: &str = "team-b";
const VICTIM_UID: &str = "b0b0b0b0-0000-4000-8000-00000000000b";

async fn client(kubeconfig: &Path) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(cfg).unwrap()
}

/// A grant Secret with every annotation the operator writes
/// (`operator/src/controller/children/transfer_secret.rs`, whose unit test checks the same keys).
fn grant_secret(
    name: &str,
    namespace: &str,
    (ns, request, uid): (&str, &str, &str),
    token: &Token,
    client_cert: &str,
) -> Secret {
    let mut secret = Secret::default();
    secret.metadata.name = Some(name.into());
    secret.metadata.namespace = Some(namespace.into());
    secret.metadata.annotations = Some(BTreeMap::from([
        (
            annotation::TOKEN_EXPIRES_AT.to_string(),
            (Timestamp::now() + SignedDuration::from_mins(10)).to_string(),
        ),
        (
            annotation::IMAGE_LOCATION.to_string(),
            format!("{ns}/{request}"),
        ),
        (annotation::GRANT_NAMESPACE.to_string(), ns.to_string()),
        (annotation::GRANT_REQUEST.to_string(), request.to_string()),
        (annotation::GRANT_REQUEST_UID.to_string(), uid.to_string()),
        (
            annotation::GRANT_CLIENT_CERT_SHA256.to_string(),
            client_cert.to_string(),
        ),
    ]));
    secret.string_data = Some(BTreeMap::from([(
        agent::TOKEN_KEY.to_string(),
        token.expose_secret().to_string(),
    )]));
    secret
}

fn spec(source: &Source, ns: &str, token: &Token, digest: &str) -> PullSpec {
    PullSpec {
        namespace: ns.into(),
        token: token.clone(),
        expected_digest: digest.into(),
        ..source.spec()
    }
}

#[test]
fn a_forged_or_stale_grant_gets_nothing_and_the_minted_one_works() {
    let cluster = Cluster::start(Options::control_plane().with_kwok_nodes(2))
        .unwrap_or_else(|e| panic!("{e}"));
    let nodes = cluster.node_names().unwrap_or_else(|e| panic!("{e}"));
    let [source_node, target_node] = nodes.as_slice() else {
        panic!("expected 2 kwok nodes, got {nodes:?}");
    };
    for ns in [SYSTEM_NAMESPACE, NS, VICTIM_NS] {
        cluster.kubectl(&["create", "namespace", ns]).unwrap();
    }
    bind_ferry_rbac(&cluster).unwrap_or_else(|e| panic!("{e}"));
    // The tenant of team-a may write Secrets there, and nowhere else.
    cluster
        .kubectl(&[
            "create",
            "role",
            "secrets",
            "-n",
            NS,
            "--verb=get,create,delete",
            "--resource=secrets",
        ])
        .unwrap();
    cluster
        .kubectl(&[
            "create",
            "rolebinding",
            "tenant",
            "-n",
            NS,
            "--role=secrets",
            "--user=tenant",
        ])
        .unwrap();
    let source_id = agent_identity(&cluster, source_node).unwrap_or_else(|e| panic!("{e}"));
    let target_id = agent_identity(&cluster, target_node).unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let admin = client(&cluster.kubeconfig(User::Admin)).await;
        let operator = client(&cluster.kubeconfig(User::Operator)).await;
        let source_agent = client(&source_id.kubeconfig).await;
        let target_agent = client(&target_id.kubeconfig).await;

        // The source's store: the victim's image (made for request UID VICTIM_UID) and the
        // tenant's own.
        let tmp = scratch(64 * MIB);
        let source_store = Store::open(tmp.path().join("source")).unwrap();
        let target_store = Store::open(tmp.path().join("target")).unwrap();
        let victim_location = format!("{VICTIM_NS}/{REQUEST}");
        let victim = publish_for(
            &source_store,
            &victim_location,
            &[("pages.img", 4 * MIB)],
            VICTIM_UID,
        );
        publish(&source_store, SOURCE_LOCATION, &[("own.img", MIB)]);

        // The source agent: grants through its own credentials, from the agents' namespace.
        let grants = Arc::new(SecretGrants::new(source_agent.clone(), SYSTEM_NAMESPACE));
        let source = Source::start_with(
            source_store.clone(),
            grants,
            Default::default(),
            Default::default(),
        )
        .await;
        let attacker = NodeIdentity::generate().unwrap();
        let stolen = Token::generate().unwrap();

        // 1. Forged in team-a, by its tenant: the old name and the new one, each a complete
        //    grant for team-b's image, for the attacker's certificate.
        let tenant_secrets: Api<Secret> = Api::namespaced(admin.clone(), NS);
        for name in [
            format!("{REQUEST}-transfer-token"),
            agent::grant_secret_name(VICTIM_NS, REQUEST),
            agent::grant_secret_name(NS, REQUEST),
        ] {
            let forged = grant_secret(
                &name,
                NS,
                (VICTIM_NS, REQUEST, VICTIM_UID),
                &stolen,
                attacker.fingerprint(),
            );
            tenant_secrets
                .create(&PostParams::default(), &forged)
                .await
                .unwrap();
        }
        // The tenant cannot put one where the agents read grants.
        let denied = cluster
            .kubectl_output(
                &[
                    "create",
                    "secret",
                    "generic",
                    "x",
                    "-n",
                    SYSTEM_NAMESPACE,
                    "--as",
                    "tenant",
                ],
                None,
            )
            .unwrap();
        assert!(
            !denied.status.success(),
            "the tenant wrote in the agents' namespace"
        );
        for ns in [VICTIM_NS, NS] {
            let err = pull(
                &spec(&source, ns, &stolen, &victim.digest),
                &attacker,
                &target_store,
                |_, _| {},
            )
            .await
            .unwrap_err();
            assert!(matches!(err, TransferError::Unauthorized(_)), "{ns}: {err}");
            // ...nor with the target agent's own certificate.
            let err = source
                .pull(&spec(&source, ns, &stolen, &victim.digest), &target_store)
                .await
                .unwrap_err();
            assert!(matches!(err, TransferError::Unauthorized(_)), "{ns}: {err}");
        }
        assert_eq!(
            source.server.stats().bytes_served.load(Ordering::Relaxed),
            0
        );
        assert!(!target_store.exists(TARGET_LOCATION).unwrap());
        // The agents cannot read the tenant's Secrets at all (RBAC: agents' namespace only).
        let agent_view: Api<Secret> = Api::namespaced(source_agent.clone(), NS);
        let err = agent_view
            .get(&agent::grant_secret_name(VICTIM_NS, REQUEST))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("forbidden"), "{err}");

        // 2. In the agents' namespace, written with the operator's credentials, but for
        //    another request UID than the one the image was made for: refused.
        let grants_api: Api<Secret> = Api::namespaced(operator.clone(), SYSTEM_NAMESPACE);
        let name = agent::grant_secret_name(VICTIM_NS, REQUEST);
        let token = Token::generate().unwrap();
        let stale = grant_secret(
            &name,
            SYSTEM_NAMESPACE,
            (VICTIM_NS, REQUEST, "an-earlier-request-uid"),
            &token,
            source.target.fingerprint(),
        );
        grants_api
            .create(&PostParams::default(), &stale)
            .await
            .unwrap();
        let err = source
            .pull(
                &spec(&source, VICTIM_NS, &token, &victim.digest),
                &target_store,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, TransferError::Forbidden(_)), "{err}");
        assert!(
            err.to_string().contains("another request of this name"),
            "{err}"
        );
        assert_eq!(
            source.server.stats().bytes_served.load(Ordering::Relaxed),
            0
        );
        grants_api
            .delete(&name, &DeleteParams::default())
            .await
            .unwrap();

        // 3. The grant as minted: the target agent reads its token with its own credentials
        //    and pulls; another agent's certificate with that token gets a 403.
        let minted = grant_secret(
            &name,
            SYSTEM_NAMESPACE,
            (VICTIM_NS, REQUEST, VICTIM_UID),
            &Token::generate().unwrap(),
            source.target.fingerprint(),
        );
        grants_api
            .create(&PostParams::default(), &minted)
            .await
            .unwrap();
        // The operator cannot write Secrets in a tenant's namespace any more.
        let operator_in_tenant: Api<Secret> = Api::namespaced(operator.clone(), NS);
        let mut elsewhere = minted.clone();
        elsewhere.metadata.namespace = Some(NS.into());
        elsewhere.metadata.name = Some("operator-was-here".into());
        assert!(
            operator_in_tenant
                .create(&PostParams::default(), &elsewhere)
                .await
                .is_err()
        );
        let target_view: Api<Secret> = Api::namespaced(target_agent.clone(), SYSTEM_NAMESPACE);
        let read = target_view.get(&name).await.unwrap();
        let token = token_of(&read, agent::TOKEN_KEY).unwrap();
        let err = pull(
            &spec(&source, VICTIM_NS, &token, &victim.digest),
            &attacker,
            &target_store,
            |_, _| {},
        )
        .await
        .unwrap_err();
        assert!(matches!(err, TransferError::Forbidden(_)), "{err}");
        let report = source
            .pull(
                &spec(&source, VICTIM_NS, &token, &victim.digest),
                &target_store,
            )
            .await
            .unwrap();
        assert_eq!(report.digest, victim.digest);
        target_store
            .open_image(TARGET_LOCATION)
            .unwrap()
            .verify()
            .unwrap();
        source
            .server
            .shutdown(std::time::Duration::from_secs(5))
            .await;
    });
}
