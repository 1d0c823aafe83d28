//! One writer among the controller's replicas: a `coordination.k8s.io/v1` Lease in the
//! injector's namespace, held by the replica that runs sync and repair.
//!
//! The election follows client-go's leader election, with its three periods:
//! - [`LEASE_DURATION`]: how long the others wait, after they last saw the Lease change, before
//!   taking it over. Judged by the local clock at which a change was *observed*, never by the
//!   `renewTime` another node wrote, so clock skew between nodes does not matter.
//! - [`RENEW_DEADLINE`]: the holder writes only while its last successful renewal is younger
//!   than this, which is shorter than the Lease duration: a holder that cannot renew (API server
//!   gone, its right to update Leases taken away) stops writing before anyone else may start.
//! - [`RETRY_PERIOD`]: how often a replica tries to acquire or renew.
//!
//! A failed renewal closes the [`Leadership`] gate at once (it reopens on the next successful
//! renewal); so does a closed channel (the election task ended). Every write is preceded by a
//! check of the gate, which also requires every cache the writer reads to be listed and
//! watching. Updates of the Lease carry its resourceVersion, so two replicas can never both
//! believe they took it.
//!
//! The decision ([`decide`]) is pure; [`Elector::step`] is one round of I/O through
//! [`LeaseApi`], which tests replace with a fake.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease as LeaseObject, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::metrics::Metrics;

/// How long others wait after the last observed change before taking the Lease over.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// The holder stops writing when its last successful renewal is older than this.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often a replica tries to acquire or renew.
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);
/// One API call of the election may take this long before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(4);
/// How long a release may take at shutdown before the process exits anyway.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// What the election reads of a Lease object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    pub holder: Option<String>,
    pub renew_time: Option<String>,
    pub duration_seconds: Option<i32>,
    pub transitions: i32,
    pub resource_version: Option<String>,
}

impl Record {
    fn from_object(lease: &LeaseObject) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        Self {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            renew_time: spec.renew_time.map(|t| t.0.to_string()),
            duration_seconds: spec.lease_duration_seconds,
            transitions: spec.lease_transitions.unwrap_or(0),
            resource_version: lease.metadata.resource_version.clone(),
        }
    }

    /// How long this record says a holder keeps it without renewing.
    fn duration(&self) -> Duration {
        self.duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .filter(|s| *s > 0)
            .map_or(LEASE_DURATION, Duration::from_secs)
    }

    /// What identifies one renewal: a new holder or a new renew time is a change.
    fn observed_key(&self) -> (Option<String>, Option<String>) {
        (self.holder.clone(), self.renew_time.clone())
    }
}

/// What to do in one round, from the Lease as last read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// No Lease yet: create it, held by us.
    Create,
    /// Free, or its holder stopped renewing: take it over.
    Take,
    /// Ours: renew it.
    Renew,
    /// Someone else holds it and renews it.
    Wait,
}

/// Pure: what a replica named `identity` does with `record` (`None`: no Lease), which it has
/// seen unchanged for `unchanged_for`.
pub fn decide(record: Option<&Record>, identity: &str, unchanged_for: Duration) -> Attempt {
    let Some(record) = record else {
        return Attempt::Create;
    };
    match record.holder.as_deref() {
        Some(holder) if holder == identity => Attempt::Renew,
        None => Attempt::Take,
        Some(_) if unchanged_for >= record.duration() => Attempt::Take,
        Some(_) => Attempt::Wait,
    }
}

/// The calls the election makes; [`KubeLease`] is the real one.
pub trait LeaseApi: Send + Sync + 'static {
    /// The Lease, or `None` when it does not exist.
    fn get(&self) -> impl Future<Output = Result<Option<Record>, kube::Error>> + Send;
    /// Creates the Lease held by `holder`.
    fn create(&self, holder: &str) -> impl Future<Output = Result<Record, kube::Error>> + Send;
    /// Writes `holder` as holder with a fresh renew time, only if the Lease is still at
    /// `from.resource_version` (else a 409). `take` starts a new term (acquire time,
    /// transitions + 1).
    fn hold(
        &self,
        from: &Record,
        holder: &str,
        take: bool,
    ) -> impl Future<Output = Result<Record, kube::Error>> + Send;
    /// Clears the holder, only if the Lease is still at `from.resource_version`.
    fn release(&self, from: &Record) -> impl Future<Output = Result<(), kube::Error>> + Send;
}

/// The Lease `name` in `namespace`, through the API server.
pub struct KubeLease {
    api: Api<LeaseObject>,
    name: String,
}

impl KubeLease {
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
        }
    }
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl LeaseApi for KubeLease {
    async fn get(&self) -> Result<Option<Record>, kube::Error> {
        Ok(self
            .api
            .get_opt(&self.name)
            .await?
            .map(|l| Record::from_object(&l)))
    }

    async fn create(&self, holder: &str) -> Result<Record, kube::Error> {
        let lease = LeaseObject {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.to_string()),
                lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        let created = self.api.create(&PostParams::default(), &lease).await?;
        Ok(Record::from_object(&created))
    }

    async fn hold(&self, from: &Record, holder: &str, take: bool) -> Result<Record, kube::Error> {
        let mut spec = serde_json::json!({
            "holderIdentity": holder,
            "leaseDurationSeconds": LEASE_DURATION.as_secs(),
            "renewTime": now(),
        });
        if take {
            spec["acquireTime"] = serde_json::json!(now());
            spec["leaseTransitions"] = serde_json::json!(from.transitions + 1);
        }
        // A merge patch that names the resourceVersion is refused (409) if the Lease changed
        // since it was read: optimistic concurrency, as an update would have.
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": from.resource_version},
            "spec": spec,
        });
        let patched = self
            .api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(Record::from_object(&patched))
    }

    async fn release(&self, from: &Record) -> Result<(), kube::Error> {
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": from.resource_version},
            "spec": {"holderIdentity": null, "leaseDurationSeconds": 1},
        });
        self.api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
    }
}

/// One replica's side of the election: what it last read and when it last renewed.
pub struct Elector<A> {
    api: A,
    identity: String,
    /// The Lease as last read or written.
    record: Option<Record>,
    /// When the record was last seen to change (holder or renew time).
    observed_at: Option<Instant>,
    /// When this replica last renewed successfully, while it holds the Lease.
    renewed_at: Option<Instant>,
}

impl<A: LeaseApi> Elector<A> {
    pub fn new(api: A, identity: String) -> Self {
        Self {
            api,
            identity,
            record: None,
            observed_at: None,
            renewed_at: None,
        }
    }

    /// When this replica last renewed, if it holds the Lease and its last attempt succeeded.
    pub fn renewed_at(&self) -> Option<Instant> {
        self.renewed_at
    }

    fn observe(&mut self, record: Option<Record>, now: Instant) {
        let changed = match (&self.record, &record) {
            (Some(old), Some(new)) => old.observed_key() != new.observed_key(),
            (None, None) => false,
            _ => true,
        };
        if changed || self.observed_at.is_none() {
            self.observed_at = Some(now);
        }
        self.record = record;
    }

    /// One round: read the Lease, then create, take, renew or wait. Any failure (including a
    /// call that outlives [`CALL_TIMEOUT`]) leaves this replica not holding it.
    pub async fn step(&mut self) -> Attempt {
        let now = Instant::now();
        let read = match tokio::time::timeout(CALL_TIMEOUT, self.api.get()).await {
            Ok(Ok(record)) => record,
            Ok(Err(e)) => {
                self.fail("cannot read the Lease", &e);
                return Attempt::Wait;
            }
            Err(_) => {
                self.fail("cannot read the Lease", &"timed out");
                return Attempt::Wait;
            }
        };
        self.observe(read, now);
        let unchanged_for = self.observed_at.map_or(Duration::ZERO, |t| now - t);
        let attempt = decide(self.record.as_ref(), &self.identity, unchanged_for);
        let written = match (attempt, &self.record) {
            (Attempt::Wait, _) => {
                self.renewed_at = None;
                return attempt;
            }
            (Attempt::Create, _) => self.call(self.api.create(&self.identity)).await,
            (Attempt::Take | Attempt::Renew, Some(record)) => {
                let take = attempt == Attempt::Take;
                self.call(self.api.hold(record, &self.identity, take)).await
            }
            (Attempt::Take | Attempt::Renew, None) => return Attempt::Wait,
        };
        match written {
            Ok(record) => {
                self.observe(Some(record), now);
                self.renewed_at = Some(now);
            }
            Err(e) => self.fail("cannot hold the Lease", &e),
        }
        attempt
    }

    async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, Box<dyn std::fmt::Display + Send>> {
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(Box::new(e)),
            Err(_) => Err(Box::new("timed out")),
        }
    }

    fn fail(&mut self, what: &str, error: &dyn std::fmt::Display) {
        if self.renewed_at.take().is_some() {
            tracing::warn!(identity = %self.identity, error = %error, "{what}: stopped writing");
        } else {
            tracing::debug!(identity = %self.identity, error = %error, "{what}");
        }
    }

    /// Gives the Lease up if this replica holds it, so another takes over at once.
    pub async fn release(&mut self) {
        if self.renewed_at.take().is_none() {
            return;
        }
        if let Some(record) = &self.record
            && record.holder.as_deref() == Some(self.identity.as_str())
        {
            match tokio::time::timeout(RELEASE_TIMEOUT, self.api.release(record)).await {
                Ok(Ok(())) => tracing::info!(identity = %self.identity, "Lease released"),
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot release the Lease"),
                Err(_) => tracing::warn!("releasing the Lease timed out"),
            }
        }
    }
}

/// Something a writer reads that must be listed and watching while it writes.
pub trait Fresh: Send + Sync {
    fn is_fresh(&self) -> bool;
}

impl<V: Send + Sync> Fresh for super::index::Index<V> {
    fn is_fresh(&self) -> bool {
        self.health.is_fresh()
    }
}

/// The gate of a loop that writes: open while this replica renewed the Lease within
/// [`RENEW_DEADLINE`] and every cache the loop reads is fresh.
#[derive(Clone)]
pub struct Leadership {
    renewed: watch::Receiver<Option<Instant>>,
    caches: Vec<Arc<dyn Fresh>>,
}

/// How often a waiting gate looks at the caches again.
const GATE_POLL: Duration = Duration::from_millis(200);

impl Leadership {
    /// A gate on `renewed` (the time of the last successful renewal while held) that also
    /// requires `caches` to be fresh.
    pub fn new(renewed: watch::Receiver<Option<Instant>>, caches: Vec<Arc<dyn Fresh>>) -> Self {
        Self { renewed, caches }
    }

    /// Whether a write may happen now. A closed channel (the election ended) is closed.
    pub fn is_open(&self) -> bool {
        if self.renewed.has_changed().is_err() {
            return false;
        }
        let renewed = *self.renewed.borrow();
        renewed.is_some_and(|t| t.elapsed() < RENEW_DEADLINE)
            && self.caches.iter().all(|c| c.is_fresh())
    }

    /// Resolves once writing may start. Never resolves after the election ended.
    pub async fn until_leader(&mut self) {
        while !self.is_open() {
            if self.renewed.has_changed().is_err() {
                std::future::pending::<()>().await;
            }
            tokio::select! {
                _ = self.renewed.changed() => {}
                () = tokio::time::sleep(GATE_POLL) => {}
            }
        }
    }

    /// Resolves as soon as writing must stop: a failed renewal, the renew deadline passed
    /// without a renewal, a stale cache, or the election ended.
    pub async fn until_lost(&mut self) {
        while self.is_open() {
            let renewed = *self.renewed.borrow();
            let deadline = renewed.map_or_else(Instant::now, |t| t + RENEW_DEADLINE);
            tokio::select! {
                changed = self.renewed.changed() => if changed.is_err() { return },
                () = tokio::time::sleep_until(deadline.min(Instant::now() + GATE_POLL)) => {}
            }
        }
    }
}

/// The election task: contends while it lives; [`Lease::release`] gives the Lease up.
pub struct Lease {
    renewed: watch::Receiver<Option<Instant>>,
    stop: crate::shutdown::Trigger,
    task: JoinHandle<()>,
}

impl Lease {
    /// Starts contending for the Lease through `api`, as `identity`, every [`RETRY_PERIOD`].
    pub fn contend<A: LeaseApi>(api: A, identity: String, metrics: Arc<Metrics>) -> Self {
        let (sender, renewed) = watch::channel(None);
        let stop = crate::shutdown::Trigger::default();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut elector = Elector::new(api, identity.clone());
            let mut held = false;
            loop {
                elector.step().await;
                let renewed_at = elector.renewed_at();
                if renewed_at.is_some() != held {
                    held = renewed_at.is_some();
                    tracing::info!(identity = %identity, leader = held, "Lease {}",
                        if held { "held: this replica writes" } else { "not held by this replica: not writing" });
                }
                metrics.leader.set(i64::from(held));
                sender.send_replace(renewed_at);
                tokio::select! {
                    () = tokio::time::sleep(RETRY_PERIOD) => {}
                    () = stopped.wait() => break,
                }
            }
            sender.send_replace(None);
            metrics.leader.set(0);
            elector.release().await;
        });
        Self {
            renewed,
            stop,
            task,
        }
    }

    /// A gate for a loop that writes, requiring `caches` to be fresh as well.
    pub fn leadership(&self, caches: Vec<Arc<dyn Fresh>>) -> Leadership {
        Leadership::new(self.renewed.clone(), caches)
    }

    /// Stops contending and releases the Lease (if held), waiting briefly. The loops that
    /// write must have stopped first.
    pub async fn release(self) {
        self.stop.fire();
        let _ = tokio::time::timeout(RELEASE_TIMEOUT + Duration::from_secs(1), self.task).await;
    }
}

/// Who this replica is in the Lease: `POD_NAME` (the chart passes it), else the hostname (a
/// Pod's hostname is its name). Never the process id, which is 1 in every container.
pub fn identity() -> Result<String, String> {
    if let Ok(name) = std::env::var("POD_NAME")
        && !name.trim().is_empty()
    {
        return Ok(name.trim().to_string());
    }
    match std::fs::read_to_string("/proc/sys/kernel/hostname") {
        Ok(host) if !host.trim().is_empty() => Ok(host.trim().to_string()),
        _ => Err("cannot tell this replica's identity for the Lease: set POD_NAME".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn record(holder: Option<&str>, renew: &str, version: &str) -> Record {
        Record {
            holder: holder.map(String::from),
            renew_time: Some(renew.into()),
            duration_seconds: Some(15),
            transitions: 0,
            resource_version: Some(version.into()),
        }
    }

    #[test]
    fn decide_table() {
        let s = Duration::from_secs;
        let theirs = record(Some("b"), "t1", "1");
        let ours = record(Some("a"), "t1", "1");
        let free = record(None, "t1", "1");
        let short = Record {
            duration_seconds: Some(5),
            ..theirs.clone()
        };
        let cases: [(Option<&Record>, Duration, Attempt); 9] = [
            (None, s(0), Attempt::Create),
            (Some(&ours), s(0), Attempt::Renew),
            (Some(&ours), s(60), Attempt::Renew),
            (Some(&free), s(0), Attempt::Take),
            (Some(&theirs), s(0), Attempt::Wait),
            (Some(&theirs), s(14), Attempt::Wait),
            (Some(&theirs), s(15), Attempt::Take),
            (Some(&short), s(4), Attempt::Wait),
            (Some(&short), s(5), Attempt::Take),
        ];
        for (record, unchanged, want) in cases {
            assert_eq!(
                decide(record, "a", unchanged),
                want,
                "{record:?} unchanged for {unchanged:?}"
            );
        }
    }

    /// A Lease held in memory, with resourceVersion preconditions like the API server's, and
    /// switches to make calls fail.
    #[derive(Default)]
    struct FakeApi {
        lease: Mutex<Option<Record>>,
        version: Mutex<u64>,
        refuse_writes: AtomicBool,
        refuse_reads: AtomicBool,
    }

    fn conflict() -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("the object has been modified", "Conflict")
                .with_code(409)
                .boxed(),
        )
    }

    fn forbidden() -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("forbidden", "Forbidden")
                .with_code(403)
                .boxed(),
        )
    }

    impl FakeApi {
        fn write(&self, holder: Option<&str>, transitions: i32) -> Record {
            let mut version = self.version.lock().unwrap();
            *version += 1;
            let record = Record {
                holder: holder.map(String::from),
                renew_time: Some(format!("t{version}")),
                duration_seconds: Some(15),
                transitions,
                resource_version: Some(version.to_string()),
            };
            *self.lease.lock().unwrap() = Some(record.clone());
            record
        }
        fn current_version(&self) -> Option<String> {
            self.lease
                .lock()
                .unwrap()
                .as_ref()
                .and_then(|r| r.resource_version.clone())
        }
        fn holder(&self) -> Option<String> {
            self.lease
                .lock()
                .unwrap()
                .as_ref()
                .and_then(|r| r.holder.clone())
        }
    }

    impl LeaseApi for Arc<FakeApi> {
        async fn get(&self) -> Result<Option<Record>, kube::Error> {
            if self.refuse_reads.load(Ordering::SeqCst) {
                return Err(forbidden());
            }
            Ok(self.lease.lock().unwrap().clone())
        }
        async fn create(&self, holder: &str) -> Result<Record, kube::Error> {
            if self.lease.lock().unwrap().is_some() {
                return Err(conflict());
            }
            Ok(self.write(Some(holder), 0))
        }
        async fn hold(
            &self,
            from: &Record,
            holder: &str,
            take: bool,
        ) -> Result<Record, kube::Error> {
            if self.refuse_writes.load(Ordering::SeqCst) {
                return Err(forbidden());
            }
            if self.current_version() != from.resource_version {
                return Err(conflict());
            }
            Ok(self.write(Some(holder), from.transitions + i32::from(take)))
        }
        async fn release(&self, from: &Record) -> Result<(), kube::Error> {
            if self.current_version() != from.resource_version {
                return Err(conflict());
            }
            self.write(None, from.transitions);
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn first_replica_creates_and_renews_the_other_waits() {
        let api = Arc::new(FakeApi::default());
        let mut a = Elector::new(api.clone(), "a".into());
        let mut b = Elector::new(api.clone(), "b".into());
        assert_eq!(a.step().await, Attempt::Create);
        assert!(a.renewed_at().is_some());
        assert_eq!(b.step().await, Attempt::Wait);
        assert!(b.renewed_at().is_none());
        for _ in 0..20 {
            tokio::time::advance(RETRY_PERIOD).await;
            assert_eq!(a.step().await, Attempt::Renew);
            assert_eq!(
                b.step().await,
                Attempt::Wait,
                "a renews, so b never takes over"
            );
        }
        assert_eq!(api.holder().as_deref(), Some("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_that_cannot_renew_stops_at_once_and_the_other_takes_over_after_the_duration()
    {
        let api = Arc::new(FakeApi::default());
        let mut a = Elector::new(api.clone(), "a".into());
        let mut b = Elector::new(api.clone(), "b".into());
        a.step().await;
        b.step().await;
        // a's right to update Leases is taken away.
        api.refuse_writes.store(true, Ordering::SeqCst);
        tokio::time::advance(RETRY_PERIOD).await;
        assert_eq!(a.step().await, Attempt::Renew);
        assert!(
            a.renewed_at().is_none(),
            "a failed renewal stops writing at once"
        );
        api.refuse_writes.store(false, Ordering::SeqCst);
        // b waits a full Lease duration from its last observed change, then takes it.
        let mut waited = Duration::ZERO;
        loop {
            tokio::time::advance(RETRY_PERIOD).await;
            waited += RETRY_PERIOD;
            if b.step().await == Attempt::Take {
                break;
            }
            assert!(waited < LEASE_DURATION + RETRY_PERIOD, "b never took over");
        }
        assert!(waited >= LEASE_DURATION - RETRY_PERIOD);
        assert!(b.renewed_at().is_some());
        assert_eq!(api.holder().as_deref(), Some("b"));
        assert_eq!(api.lease.lock().unwrap().as_ref().unwrap().transitions, 1);
        // a, able to write again, sees b renewing and does not write.
        assert_eq!(a.step().await, Attempt::Wait);
        assert!(a.renewed_at().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn two_replicas_taking_a_free_lease_at_once_yield_one_holder() {
        let api = Arc::new(FakeApi::default());
        api.write(None, 3);
        let mut a = Elector::new(api.clone(), "a".into());
        let mut b = Elector::new(api.clone(), "b".into());
        // Both read the free Lease before either writes.
        let read = api.lease.lock().unwrap().clone();
        a.observe(read.clone(), Instant::now());
        b.observe(read.clone(), Instant::now());
        let record = read.unwrap();
        assert!(a.call(api.hold(&record, "a", true)).await.is_ok());
        assert!(
            b.call(api.hold(&record, "b", true)).await.is_err(),
            "the second write carries a stale resourceVersion"
        );
        assert_eq!(api.holder().as_deref(), Some("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn unreadable_lease_means_not_holding() {
        let api = Arc::new(FakeApi::default());
        let mut a = Elector::new(api.clone(), "a".into());
        a.step().await;
        assert!(a.renewed_at().is_some());
        api.refuse_reads.store(true, Ordering::SeqCst);
        a.step().await;
        assert!(a.renewed_at().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn release_frees_the_lease_for_the_next_at_once() {
        let api = Arc::new(FakeApi::default());
        let mut a = Elector::new(api.clone(), "a".into());
        let mut b = Elector::new(api.clone(), "b".into());
        a.step().await;
        b.step().await;
        a.release().await;
        assert_eq!(api.holder(), None);
        assert_eq!(b.step().await, Attempt::Take);
        assert_eq!(api.holder().as_deref(), Some("b"));
    }

    struct Cache(AtomicBool);
    impl Fresh for Cache {
        fn is_fresh(&self) -> bool {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn gate_table() {
        let (sender, renewed) = watch::channel(None);
        let cache = Arc::new(Cache(AtomicBool::new(true)));
        let gate = Leadership::new(renewed, vec![cache.clone() as Arc<dyn Fresh>]);
        assert!(!gate.is_open(), "never renewed");
        sender.send_replace(Some(Instant::now()));
        assert!(gate.is_open(), "just renewed, caches fresh");
        cache.0.store(false, Ordering::SeqCst);
        assert!(!gate.is_open(), "a stale cache closes the gate");
        cache.0.store(true, Ordering::SeqCst);
        tokio::time::advance(RENEW_DEADLINE).await;
        assert!(!gate.is_open(), "renew deadline passed");
        sender.send_replace(Some(Instant::now()));
        assert!(gate.is_open());
        sender.send_replace(None);
        assert!(!gate.is_open(), "a failed renewal closes the gate");
        sender.send_replace(Some(Instant::now()));
        drop(sender);
        assert!(!gate.is_open(), "a closed channel closes the gate");
    }

    #[tokio::test(start_paused = true)]
    async fn until_lost_resolves_by_the_renew_deadline_and_on_a_stale_cache() {
        let (sender, renewed) = watch::channel(Some(Instant::now()));
        let cache = Arc::new(Cache(AtomicBool::new(true)));
        let mut gate = Leadership::new(renewed, vec![cache.clone() as Arc<dyn Fresh>]);
        let started = Instant::now();
        gate.until_lost().await;
        assert!(started.elapsed() <= RENEW_DEADLINE + GATE_POLL);
        sender.send_replace(Some(Instant::now()));
        gate.until_leader().await;
        let flip = {
            let cache = cache.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                cache.0.store(false, Ordering::SeqCst);
            })
        };
        let started = Instant::now();
        gate.until_lost().await;
        assert!(started.elapsed() <= Duration::from_secs(1) + GATE_POLL);
        flip.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn until_leader_never_resolves_after_the_election_ended() {
        let (sender, renewed) = watch::channel(None);
        let mut gate = Leadership::new(renewed, Vec::new());
        drop(sender);
        let waited = tokio::time::timeout(Duration::from_secs(60), gate.until_leader()).await;
        assert!(waited.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn contend_reports_the_leader_metric_and_releases() {
        let api = Arc::new(FakeApi::default());
        let metrics = Arc::new(Metrics::default());
        let lease = Lease::contend(api.clone(), "a".into(), metrics.clone());
        let mut gate = lease.leadership(Vec::new());
        gate.until_leader().await;
        assert_eq!(metrics.leader.get(), 1);
        api.refuse_writes.store(true, Ordering::SeqCst);
        gate.until_lost().await;
        assert_eq!(metrics.leader.get(), 0);
        api.refuse_writes.store(false, Ordering::SeqCst);
        gate.until_leader().await;
        lease.release().await;
        assert_eq!(api.holder(), None);
        assert_eq!(metrics.leader.get(), 0);
    }
}
