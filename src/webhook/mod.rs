//! The webhook server, and [`run`], the composition root of `serve`: it wires configuration,
//! TLS, the cluster side, the listeners and the reloaders, then runs the shutdown sequence
//! described in [`crate::shutdown`].
//!
//! - [`handler`]: `/mutate` and `/audit` (body limits, panic guard, the answer path).
//! - [`listener`]: the TLS listener (connection limits, timeouts, drain).
//! - [`tls`], [`reload`]: certificates and files reloaded by polling.
//! - [`admin`]: `/livez`, `/readyz`, `/metrics`; [`state`]: what handlers share.

pub(crate) mod admin;
pub mod handler;
pub(crate) mod listener;
pub(crate) mod reload;
pub mod state;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::cli::ServeArgs;
use crate::cluster;
use crate::core::config::{self, ConfigError};
use crate::core::facts::{ClusterFacts, NothingKnown};
use crate::core::policy::PolicyStore;
use crate::metrics::Metrics;
use crate::shutdown::Trigger;
use listener::Drained;
use state::{App, Readiness};
use tls::{ReloadingResolver, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("--config: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("TLS setup failed: {0}")]
    TlsSetup(#[from] rustls::Error),
    #[error("{flag} {addr}: cannot listen: {source}")]
    Bind {
        flag: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    #[error("forced exit on a second signal")]
    Forced,
}

/// Runs until `signals` yields twice (second = immediate exit) or once and the drain finishes.
pub async fn run<S, F>(args: ServeArgs, mut signals: S) -> Result<(), StartupError>
where
    S: FnMut() -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let (config, config_bytes) = config::load_with_bytes(&args.config)?;
    let (pair, pair_bytes) = tls::load_pair(&args.tls_cert, &args.tls_key)?;
    let metrics = Arc::new(Metrics::default());
    metrics.certificate_expiry.set(pair.not_after);
    let resolver = ReloadingResolver::new(&pair);
    let tls_config = Arc::new(tls::server_config(resolver.clone())?);
    let own_namespace = args.cluster.own_namespace();
    let policy = Arc::new(PolicyStore::new(config));
    let readiness = Arc::new(Readiness::default());
    let stop_background = Trigger::default();
    let settings_changed = Arc::new(Notify::new());

    let (facts, cluster_task): (Arc<dyn ClusterFacts>, _) = if args.standalone {
        let settings = policy.load().settings().clone();
        if settings.discovery || settings.sync {
            tracing::warn!("discovery and sync need the Kubernetes API; ignored with --standalone");
        }
        readiness.set_caches_synced();
        (Arc::new(NothingKnown), None)
    } else {
        let cluster = cluster::start(cluster::Wiring {
            args: args.cluster.clone(),
            own_namespace: own_namespace.clone(),
            role: cluster::Role::Webhook,
            policy: policy.clone(),
            metrics: metrics.clone(),
            readiness: readiness.clone(),
            settings_changed: settings_changed.clone(),
            stop: stop_background.clone(),
        })
        .await?;
        (cluster.facts, Some(cluster.task))
    };
    let app = Arc::new(App {
        policy: policy.clone(),
        facts,
        own_namespace,
        metrics: metrics.clone(),
        readiness: readiness.clone(),
    });

    let webhook = TcpListener::bind(args.listen)
        .await
        .map_err(|source| StartupError::Bind {
            flag: "--listen",
            addr: args.listen,
            source,
        })?;
    let admin_listener = TcpListener::bind(args.admin_listen)
        .await
        .map_err(|source| StartupError::Bind {
            flag: "--admin-listen",
            addr: args.admin_listen,
            source,
        })?;
    readiness.set_tls_loaded();
    tracing::info!(
        listen = %args.listen,
        admin = %args.admin_listen,
        standalone = args.standalone,
        rules = policy.load().rules().rules().len(),
        "pullsecret-injector serving"
    );

    let reloaders = [
        tokio::spawn(reload::watch_certificate(
            args.tls_cert.clone(),
            args.tls_key.clone(),
            pair_bytes,
            args.reload_interval,
            resolver,
            metrics.clone(),
        )),
        tokio::spawn(reload::watch_config(
            args.config.clone(),
            config_bytes,
            args.reload_interval,
            policy,
            metrics,
            settings_changed,
        )),
    ];
    let admin_server = {
        let stop = stop_background.wait();
        let router = admin::router(app.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(admin_listener, router)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::error!(error = %e, "admin listener failed");
            }
        })
    };

    // First signal: not ready, keep serving for the delay; a second signal during shutdown
    // ends the process at once.
    let first = signals();
    let forced = Trigger::default();
    let stop_accepting = {
        let readiness = readiness.clone();
        let delay = args.shutdown_delay;
        let forced = forced.clone();
        let second = signals();
        async move {
            first.await;
            readiness.set_shutting_down();
            tracing::info!(delay = ?delay, "signal received: not ready; still answering during the shutdown delay");
            tokio::spawn(async move {
                second.await;
                forced.fire();
            });
            tokio::time::sleep(delay).await;
        }
    };
    let served = listener::serve_tls(
        webhook,
        tls_config,
        handler::router(app),
        stop_accepting,
        args.drain_timeout,
        listener::Limits::default(),
    );
    let drained = tokio::select! {
        drained = served => drained,
        () = forced.wait() => return Err(StartupError::Forced),
    };
    stop_background.fire();
    for task in reloaders {
        task.abort();
    }
    let _ = admin_server.await;
    // Releases the Lease, if held, so another replica takes over sync at once.
    if let Some(task) = cluster_task {
        let _ = task.await;
    }
    match drained {
        Drained::Clean => tracing::info!("drained; exiting"),
        Drained::TimedOut => {
            tracing::warn!("exiting with connections still open after the drain timeout")
        }
    }
    Ok(())
}
