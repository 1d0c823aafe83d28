//! Issue 8.4: the transport never drops a call the API server makes. The API server keeps
//! idle webhook connections for 90 s (Go's transport); the injector keeps them longer, so it
//! is always the API server that closes one. A Pod created after the API server's connection
//! sat idle 35 s (past the old 30 s server timeout) and after 95 s (past the client's own)
//! is injected, with no failed webhook call (the harness checks the API server's log after
//! every scenario). This installation serves no other scenario, so its connections really are
//! idle: its injector's `admissions_total` does not move during either idle period, and moves
//! with each Pod.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};

use crate::api::pod;
use crate::harness::{Label, Sc};

const ADMISSIONS: &str = "pullsecret_injector_admissions_total";

/// Admission requests this installation's injectors have answered (every endpoint and
/// outcome; counted before the answer is sent).
async fn admissions(sc: &Sc) -> Result<f64> {
    let mut total = 0.0;
    for injector in &sc.inst.injectors {
        total += injector.metric(ADMISSIONS).await?;
    }
    Ok(total)
}

pub async fn idle_connections(sc: Sc) -> Result<()> {
    let ns = sc.ns(Label::Enabled, &["dockerhub"]).await?;
    let mut last = Instant::now();
    let create = |sc: Sc, ns: String| async move {
        let created = sc
            .create_pod(&ns, &pod("idle").image("nginx").generate().build())
            .await?;
        ensure!(
            created.secrets() == ["dockerhub"],
            "got {:?}",
            created.secrets()
        );
        Ok::<_, anyhow::Error>(())
    };
    create(sc.clone(), ns.clone()).await?;
    for idle in [Duration::from_secs(35), Duration::from_secs(95)] {
        let before = admissions(&sc).await?;
        // Holding the connection idle is the scenario itself, not a wait for something.
        tokio::time::sleep(idle.saturating_sub(last.elapsed())).await;
        let after_idle = admissions(&sc).await?;
        ensure!(
            after_idle == before,
            "not idle: the injector answered {} admission(s) during the {idle:?}",
            after_idle - before
        );
        create(sc.clone(), ns.clone()).await?;
        let now = admissions(&sc).await?;
        ensure!(
            now > before,
            "the Pod was injected, but admissions_total stayed {before}: not by this installation's injector"
        );
        sc.note(format!("injected after {:?} idle", last.elapsed()));
        last = Instant::now();
    }
    Ok(())
}
