//! The webhook server. [`Server::start`] is the composition root of `serve`: it wires
//! configuration, TLS, the cluster side, the listeners and the reloaders, and hands back a
//! [`Running`] server; [`Running::shutdown`] runs the shutdown sequence described in
//! [`crate::shutdown`]. [`run`] joins the two to the process's signals.
//!
//! - [`handler`]: `/mutate` and `/audit` (body limits, panic guard, the answer path).
//! - [`listener`]: the TLS and admin listeners (connection limits, timeouts, drain);
//!   [`budget`]: the memory budget and each client address's share of it.
//! - [`tls`], [`reload`]: certificates and files reloaded by polling.
//! - [`admin`]: `/livez`, `/readyz`, `/metrics`; [`state`]: what handlers share.

pub mod admin;
pub mod budget;
pub mod handler;
pub(crate) mod listener;
pub(crate) mod reload;
pub mod state;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::cli::ServeArgs;
use crate::cluster;
use crate::core::config::{self, ConfigError};
use crate::core::facts::{ClusterFacts, NothingKnown};
use crate::core::policy::PolicyStore;
use crate::metrics::Metrics;
use crate::shutdown::Trigger;
use budget::{Budget, BudgetLimits};
pub use listener::Drained;
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
    let running = Server::start(args).await?;
    let (first, second) = (signals(), signals());
    first.await;
    tracing::info!("signal received");
    // A second signal at any point of the shutdown ends the process at once.
    let drained = tokio::select! {
        drained = running.shutdown() => drained,
        () = second => return Err(StartupError::Forced),
    };
    match drained {
        Drained::Clean => tracing::info!("drained; exiting"),
        Drained::TimedOut => {
            tracing::warn!("exiting with connections still open after the drain timeout")
        }
    }
    Ok(())
}

/// The `serve` server; [`Server::start`] starts one.
#[derive(Debug)]
pub struct Server;

/// A started server: the webhook and admin listeners serving, the reloaders and (in cluster
/// mode) the cluster side running. Stop it with [`Running::shutdown`]; dropping it leaves its
/// tasks running.
#[must_use = "a running server keeps serving until shut down"]
pub struct Running {
    webhook_addr: SocketAddr,
    admin_addr: SocketAddr,
    readiness: Arc<Readiness>,
    shutdown_delay: Duration,
    /// Fired after the shutdown delay: the webhook listener stops accepting and drains.
    stop_accepting: Trigger,
    webhook: JoinHandle<Drained>,
    /// Fired once drained: admin listener, cluster side.
    stop_background: Trigger,
    reloaders: [JoinHandle<()>; 2],
    admin: JoinHandle<()>,
    cluster: Option<JoinHandle<()>>,
}

impl Server {
    /// Loads the configuration and the certificate, starts the cluster side (unless
    /// standalone), binds both listeners and starts serving. Ready (`/readyz`) once the TLS
    /// certificate is loaded and, in cluster mode, the caches have synced.
    pub async fn start(args: ServeArgs) -> Result<Running, StartupError> {
        let (config, config_bytes) = config::load_with_bytes(&args.config)?;
        // Namespace labels are unknown in standalone mode: a namespaceSelector is refused.
        let config = if args.standalone {
            reload::check_standalone(&args.config, config)?
        } else {
            config
        };
        let (pair, pair_bytes) = tls::load_pair(&args.tls_cert, &args.tls_key)?;
        let metrics = Arc::new(if args.standalone {
            Metrics::standalone()
        } else {
            Metrics::default()
        });
        metrics.certificate_expiry.set(pair.not_after);
        let resolver = ReloadingResolver::new(&pair);
        let client_verifier = args
            .client_ca
            .as_deref()
            .map(tls::client_verifier)
            .transpose()?;
        let tls_config = Arc::new(tls::server_config(resolver.clone(), client_verifier)?);
        let budget_limits = BudgetLimits::for_body_budget(
            args.memory_budget
                .unwrap_or_else(|| budget::body_budget_for(budget::container_memory_limit())),
        );
        let own_namespace = args.cluster.own_namespace();
        let policy = Arc::new(PolicyStore::new(config));
        // requireScope: what serves nowhere for want of a scope is logged once and counted.
        policy.observe(metrics.unscoped_reporter());
        let readiness = Arc::new(Readiness::default());
        let stop_background = Trigger::default();
        let settings_changed = Arc::new(Notify::new());

        let (facts, cluster_task): (Arc<dyn ClusterFacts>, _) = if args.standalone {
            let settings = policy.load().settings().clone();
            if settings.discovery || settings.sync {
                tracing::warn!(
                    "discovery and sync need the Kubernetes API; ignored with --standalone"
                );
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

        let webhook_listener = bind("--listen", args.listen).await?;
        let admin_listener = bind("--admin-listen", args.admin_listen).await?;
        let webhook_addr = local_addr(&webhook_listener, "--listen", args.listen)?;
        let admin_addr = local_addr(&admin_listener, "--admin-listen", args.admin_listen)?;
        readiness.set_tls_loaded();
        let serving = policy.load();
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            listen = %webhook_addr,
            admin = %admin_addr,
            config = %args.config.display(),
            mode = serving.settings().mode.as_str(),
            standalone = args.standalone,
            rules = serving.rules().rules().len(),
            client_certificates = args.client_ca.is_some(),
            memory_budget = budget_limits.bytes,
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
                args.standalone,
            )),
        ];
        let admin = admin::serve(admin_listener, app.clone(), stop_background.wait());
        let stop_accepting = Trigger::default();
        let budget = Budget::new(budget_limits, app.metrics.refusals("webhook"));
        let webhook = tokio::spawn(listener::serve(
            webhook_listener,
            listener::Transport::Tls(tokio_rustls::TlsAcceptor::from(tls_config)),
            handler::router(app),
            stop_accepting.wait(),
            args.drain_timeout,
            listener::Limits::webhook(),
            budget,
        ));
        Ok(Running {
            webhook_addr,
            admin_addr,
            readiness,
            shutdown_delay: args.shutdown_delay,
            stop_accepting,
            webhook,
            stop_background,
            reloaders,
            admin,
            cluster: cluster_task,
        })
    }
}

impl Running {
    /// The webhook listener's address (the port chosen, if `--listen` asked for port 0).
    pub fn webhook_addr(&self) -> SocketAddr {
        self.webhook_addr
    }

    /// The admin listener's address (`/livez`, `/readyz`, `/metrics`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// What `/readyz` reports.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// The shutdown sequence: not ready at once, still answering for the shutdown delay
    /// (requests answered meanwhile carry `Connection: close`); then stop accepting, close
    /// idle connections and drain in-flight requests up to the drain timeout; then stop the
    /// reloaders, the admin listener and the cluster side's watches.
    pub async fn shutdown(self) -> Drained {
        self.readiness.set_shutting_down();
        tracing::info!(
            delay = ?self.shutdown_delay,
            "not ready; still answering during the shutdown delay"
        );
        tokio::time::sleep(self.shutdown_delay).await;
        self.stop_accepting.fire();
        let drained = match self.webhook.await {
            Ok(drained) => drained,
            Err(e) => {
                tracing::error!(error = %e, "webhook listener failed");
                Drained::TimedOut
            }
        };
        self.stop_background.fire();
        for task in self.reloaders {
            task.abort();
        }
        let _ = self.admin.await;
        if let Some(task) = self.cluster {
            let _ = task.await;
        }
        drained
    }
}

/// Binds a listener; the error names the flag.
async fn bind(flag: &'static str, addr: SocketAddr) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind { flag, addr, source })
}

fn local_addr(
    listener: &TcpListener,
    flag: &'static str,
    addr: SocketAddr,
) -> Result<SocketAddr, StartupError> {
    listener
        .local_addr()
        .map_err(|source| StartupError::Bind { flag, addr, source })
}
