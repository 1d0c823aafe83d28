//! Signals and the shutdown sequence's timing.
//!
//! On the first SIGTERM or SIGINT the injector reports not ready and keeps answering for the
//! shutdown delay (the API server and kube-proxy take a moment to stop sending), then stops
//! accepting, closes idle keep-alive connections and drains in-flight requests up to the drain
//! timeout. A second signal ends the process at once.

use tokio_util::sync::CancellationToken;

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

/// A one-shot "stop now" flag that many tasks can wait on: a thin name over tokio-util's
/// [`CancellationToken`], kept so callers read as the shutdown sequence does. Clones share
/// one flag; [`Trigger::token`] hands it to code that takes a token.
#[derive(Clone, Debug, Default)]
pub struct Trigger {
    token: CancellationToken,
}

impl Trigger {
    /// Fires the trigger; every waiter, present and future, resolves.
    pub fn fire(&self) {
        self.token.cancel();
    }

    /// Resolves once fired (immediately if already fired). The future owns a clone, so it
    /// does not borrow `self`.
    pub fn wait(&self) -> impl std::future::Future<Output = ()> + Send + use<> {
        self.token.clone().cancelled_owned()
    }

    /// Whether it has fired.
    pub fn is_fired(&self) -> bool {
        self.token.is_cancelled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn every_clone_and_every_waiter_sees_one_fire() {
        let trigger = Trigger::default();
        let early = trigger.wait();
        let clone = trigger.clone();
        assert!(!clone.is_fired());
        let pending = tokio::time::timeout(Duration::from_millis(20), trigger.wait()).await;
        assert!(pending.is_err(), "resolved before firing");
        clone.fire();
        assert!(trigger.is_fired());
        early.await;
        // Waiting after the fact resolves at once; firing twice is harmless.
        trigger.wait().await;
        trigger.fire();
        clone.wait().await;
    }
}
