//! Leader election on a `coordination.k8s.io/v1` Lease, built on plain gets and
//! resourceVersion-checked replaces (kube-runtime 5 has no elector, and the maintained
//! crates lag kube's major versions).
//!
//! Every replica tries every `renew_every`; the holder renews, the others take over once
//! `renewTime + leaseDurationSeconds` has passed. A replica that cannot renew within the
//! lease duration stops leading *before* another can take over. On graceful shutdown the
//! leader releases the Lease, so the standby takes over within one `renew_every`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::Result;

/// Leader election settings.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a lease is valid after its last renewal.
    pub lease_duration: Duration,
    /// How often the holder renews and the others try.
    pub renew_every: Duration,
}

/// Why [`run`] returned an error.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// This replica could not renew its lease in time; another may lead now.
    #[error("lost the leader lease {0}; another replica may be leading now")]
    Lost(String),
    /// The controller itself returned an error.
    #[error(transparent)]
    Controller(#[from] crate::Error),
}

/// Runs `lead` while this replica holds the Lease. `lead` gets a future that completes when
/// it must stop (leadership lost or `shutdown`). Returns after `shutdown` (Ok) or when the
/// lease is lost (Err: the caller exits, and the restarted pod stands by again).
pub async fn run<F, Fut>(
    client: Client,
    config: LeaseConfig,
    ready: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    lead: F,
) -> std::result::Result<(), LeaderError>
where
    F: FnOnce(StopSignal) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    // Stand by until this replica holds the lease.
    loop {
        match try_acquire(&api, &config).await {
            Ok(held) => {
                ready.store(true, Ordering::Relaxed);
                if held {
                    break;
                }
            }
            Err(e) => warn!(error = %e, lease = %config.name, "leader election round failed"),
        }
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            () = tokio::time::sleep(config.renew_every) => {}
        }
    }
    info!(lease = %config.name, identity = %config.identity, "became the leader");
    let mut leading = tokio::spawn(lead(StopSignal(stop_rx)));
    let mut renewed = Instant::now();
    let outcome = loop {
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            done = &mut leading => {
                return match done {
                    Ok(r) => {
                        release(&api, &config).await;
                        r.map_err(LeaderError::Controller)
                    }
                    Err(e) => Err(LeaderError::Controller(crate::Error::CleanupPending(format!("controller task: {e}")))),
                };
            }
            () = tokio::time::sleep(config.renew_every) => {
                match try_acquire(&api, &config).await {
                    Ok(true) => renewed = Instant::now(),
                    Ok(false) => break Err(LeaderError::Lost(config.name.clone())),
                    Err(e) => warn!(error = %e, lease = %config.name, "renewing the leader lease failed"),
                }
                // Stop before the lease can expire for the others (two renewals of margin).
                if renewed.elapsed() + config.renew_every * 2 > config.lease_duration {
                    break Err(LeaderError::Lost(config.name.clone()));
                }
            }
        }
    };
    let _ = stop_tx.send(true);
    let _ = (&mut leading).await;
    if outcome.is_ok() {
        release(&api, &config).await;
    } else {
        warn!(lease = %config.name, "stopped leading");
    }
    outcome
}

/// Completes when the leader must stop.
#[derive(Clone, Debug)]
pub struct StopSignal(watch::Receiver<bool>);

impl StopSignal {
    /// Waits for the stop.
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// One round: create, renew or take over the Lease. `Ok(true)` when this replica holds it.
pub async fn try_acquire(api: &Api<Lease>, config: &LeaseConfig) -> Result<bool> {
    let now = Timestamp::now();
    let seconds = i32::try_from(config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(false),
            Err(e) => Err(e.into()),
        };
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(renewed), Some(s)) => renewed.0 + SignedDuration::from_secs(i64::from(s)) <= now,
        _ => true,
    };
    if holder != config.identity {
        if !holder.is_empty() && !expired {
            return Ok(false);
        }
        spec.holder_identity = Some(config.identity.clone());
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(seconds);
    // The replace carries the resourceVersion read above: two replicas racing for an expired
    // lease get one success and one conflict.
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.is_conflict() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Gives the lease up so a standby takes over at once.
async fn release(api: &Api<Lease>, config: &LeaseConfig) {
    let Ok(Some(mut lease)) = api.get_opt(&config.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => info!(lease = %config.name, "released the leader lease"),
        Err(e) => warn!(error = %e, lease = %config.name, "releasing the leader lease failed"),
    }
}
