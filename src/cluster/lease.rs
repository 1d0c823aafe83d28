//! One writer among the replicas: a `coordination.k8s.io/v1` Lease in the injector's namespace,
//! held by the replica that runs sync (and repair). Admission never waits for it: every replica
//! answers webhooks.
//!
//! Held for [`LEASE_DURATION_SECONDS`] after each renewal, renewed [`LEASE_GRACE_SECONDS`]
//! before it runs out: a replica that stops without releasing is replaced within about 15 s;
//! one that shuts down releases the Lease on its way out.

use std::time::Duration;

use kube_lease_manager::{LeaseManagerBuilder, LeaseParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;

pub const LEASE_DURATION_SECONDS: u64 = 15;
pub const LEASE_GRACE_SECONDS: u64 = 5;
/// How long a release may take at shutdown before the process exits anyway.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// Contends for the Lease while it lives; [`Lease::release`] gives it up.
pub struct Lease {
    leader: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

/// Whether this replica holds the Lease; one per loop that writes.
#[derive(Clone)]
pub struct Leadership(watch::Receiver<bool>);

impl Leadership {
    /// Resolves once this replica holds the Lease.
    pub async fn until_leader(&mut self) {
        let _ = self.0.wait_for(|leader| *leader).await;
    }

    /// Resolves when this replica loses the Lease.
    pub async fn until_lost(&mut self) {
        let _ = self.0.wait_for(|leader| !*leader).await;
    }
}

impl Lease {
    /// Starts contending for the Lease `name` in `namespace` (created if absent), retrying
    /// with backoff while the API server or RBAC refuses.
    pub fn contend(
        client: kube::Client,
        namespace: String,
        name: String,
        identity: String,
        metrics: std::sync::Arc<Metrics>,
    ) -> Self {
        let (sender, leader) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut delay = Duration::from_millis(200);
            let manager = loop {
                let params =
                    LeaseParams::new(&identity, LEASE_DURATION_SECONDS, LEASE_GRACE_SECONDS);
                match LeaseManagerBuilder::new(client.clone(), &name)
                    .with_namespace(&namespace)
                    .with_parameters(params)
                    .build()
                    .await
                {
                    Ok(manager) => break manager,
                    Err(e) => {
                        tracing::warn!(lease = %name, error = %e, "cannot use the Lease yet; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(10));
                    }
                }
            };
            let (mut states, manager_task) = manager.watch().await;
            loop {
                let is_leader = *states.borrow_and_update();
                metrics.leader.set(i64::from(is_leader));
                tracing::info!(lease = %name, identity = %identity, leader = is_leader, "Lease {}", if is_leader { "acquired: this replica writes" } else { "not held by this replica" });
                sender.send_replace(is_leader);
                tokio::select! {
                    changed = states.changed() => if changed.is_err() { break },
                    () = sender.closed() => break,
                }
            }
            // Dropping the receiver makes the manager release the Lease and end.
            drop(states);
            let _ = tokio::time::timeout(RELEASE_TIMEOUT, manager_task).await;
            metrics.leader.set(0);
        });
        Self { leader, task }
    }

    pub fn leadership(&self) -> Leadership {
        Leadership(self.leader.clone())
    }

    /// Releases the Lease (if held) and waits for that, briefly. Every [`Leadership`] must be
    /// dropped first (the loops that write have stopped).
    pub async fn release(self) {
        let Self { leader, task } = self;
        drop(leader);
        let _ = tokio::time::timeout(RELEASE_TIMEOUT + Duration::from_secs(1), task).await;
    }
}
