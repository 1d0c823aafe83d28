//! Signals and the shutdown sequence's timing.
//!
//! On the first SIGTERM or SIGINT the injector reports not ready and keeps answering for the
//! shutdown delay (the API server and kube-proxy take a moment to stop sending), then stops
//! accepting, closes idle keep-alive connections and drains in-flight requests up to the drain
//! timeout. A second signal ends the process at once.

use tokio::sync::watch;

/// Resolves on SIGTERM or SIGINT.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                // Cannot install handlers (should not happen): fall back to Ctrl-C only.
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A one-shot "stop now" flag that many tasks can wait on.
#[derive(Clone, Debug)]
pub struct Trigger {
    sender: watch::Sender<bool>,
}

impl Default for Trigger {
    fn default() -> Self {
        Self {
            sender: watch::channel(false).0,
        }
    }
}

impl Trigger {
    pub fn fire(&self) {
        self.sender.send_replace(true);
    }

    /// Resolves once fired (immediately if already fired).
    pub fn wait(&self) -> impl std::future::Future<Output = ()> + Send + use<> {
        let mut receiver = self.sender.subscribe();
        async move {
            // An error means the sender is gone, which also means stop.
            let _ = receiver.wait_for(|fired| *fired).await;
        }
    }
}
