//! Issue 8.4: the transport never drops a call the API server makes. The API server keeps
//! idle webhook connections for 90 s (Go's transport); the injector keeps them longer, so it
//! is always the API server that closes one. A Pod created after the API server's connection
//! sat idle 35 s (past the old 30 s server timeout) and after 95 s (past the client's own)
//! is injected, with no failed webhook call (the harness checks the API server's log after
//! every scenario). This installation serves no other scenario, so its connections really are
//! idle.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};

use crate::api::pod;
use crate::harness::{Label, Sc};

pub async fn idle_connections(sc: Sc) -> Result<()> {
    let ns = sc.ns(Label::Enabled, &["dockerhub"]).await?;
    let mut last = Instant::now();
    let mut n = 0;
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
        tokio::time::sleep(idle.saturating_sub(last.elapsed())).await;
        create(sc.clone(), ns.clone()).await?;
        n += 1;
        sc.note(format!("injected after {:?} idle", last.elapsed()));
        last = Instant::now();
    }
    ensure!(n == 2);
    Ok(())
}
