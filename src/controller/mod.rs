//! `pullsecret-injector controller`: the writer. Sync, repair, the credential probe and
//! providers, and the Lease that makes one replica write run here, in a process of their own
//! under a ServiceAccount of their own, so
//! that the webhook's Pods (which answer every Pod CREATE and accept TLS from the network)
//! hold no token that can write Secrets or evict Pods.
//!
//! It reads the same configuration file as `serve` (reloaded when it changes), watches what
//! its writers need ([`crate::cluster`], role [`Role::Controller`]) and serves only the admin
//! port: `/livez`, `/readyz` (ready once its caches have listed; a replica that does not hold
//! the Lease is ready too) and `/metrics`. Admission never depends on it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::cli::ControllerArgs;
use crate::cluster::{self, Role, lease};
use crate::core::config::{self, ConfigError};
use crate::core::policy::PolicyStore;
use crate::metrics::Metrics;
use crate::shutdown::Trigger;
use crate::webhook::state::{App, Readiness};
use crate::webhook::{admin, reload};

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("--config: {0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Identity(String),
    #[error("--admin-listen {addr}: cannot listen: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
}

/// Runs until `signal` resolves, then stops the writers and releases the Lease.
pub async fn run(
    args: ControllerArgs,
    signal: impl Future<Output = ()>,
) -> Result<(), ControllerError> {
    let (config, config_bytes) = config::load_with_bytes(&args.config)?;
    let identity = lease::identity().map_err(ControllerError::Identity)?;
    let metrics = Arc::new(Metrics::default());
    let policy = Arc::new(PolicyStore::new(config));
    // Under requireScope, rules and sources that declare no scope serve nowhere: reported.
    policy.observe(metrics.unscoped_reporter());
    let readiness = Arc::new(Readiness::default());
    // No TLS here: the only listener is the plain admin port.
    readiness.set_tls_loaded();
    let own_namespace = args.cluster.own_namespace();
    let stop = Trigger::default();
    let settings_changed = Arc::new(Notify::new());

    let admin_listener = TcpListener::bind(args.admin_listen)
        .await
        .map_err(|source| ControllerError::Bind {
            addr: args.admin_listen,
            source,
        })?;
    let cluster = cluster::start(cluster::Wiring {
        args: args.cluster.clone(),
        own_namespace: own_namespace.clone(),
        role: Role::Controller {
            lease_name: args.lease_name.clone(),
            identity: identity.clone(),
        },
        policy: policy.clone(),
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        settings_changed: settings_changed.clone(),
        stop: stop.clone(),
    })
    .await?;
    let settings = policy.load().settings().clone();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        admin = %args.admin_listen,
        config = %args.config.display(),
        mode = settings.mode.as_str(),
        identity = %identity,
        lease = %args.lease_name,
        sync = settings.sync,
        repair = settings.repair,
        credential_probe = settings.credential_probe,
        credential_providers = settings.credential_providers.providers.len(),
        "pullsecret-injector controller running"
    );
    if !settings.sync
        && !settings.repair
        && !settings.credential_probe
        && settings.credential_providers.providers.is_empty()
    {
        tracing::warn!(
            "neither sync, repair, credentialProbe nor credentialProviders is on: nothing to do until the configuration turns one on"
        );
    }

    let app = Arc::new(App {
        policy: policy.clone(),
        facts: cluster.facts.clone(),
        own_namespace,
        metrics: metrics.clone(),
        readiness: readiness.clone(),
    });
    let admin_server = admin::serve(admin_listener, app, stop.wait());
    let reloader = tokio::spawn(reload::watch_config(
        args.config.clone(),
        config_bytes,
        args.reload_interval,
        policy,
        metrics,
        settings_changed,
        false,
    ));

    signal.await;
    readiness.set_shutting_down();
    tracing::info!("signal received: stopping the writers and releasing the Lease");
    stop.fire();
    reloader.abort();
    // The supervisor stops sync and repair, then releases the Lease, so another replica
    // takes over at once.
    let _ = cluster.task.await;
    let _ = admin_server.await;
    tracing::info!("stopped");
    Ok(())
}
