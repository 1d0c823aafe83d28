//! Drives a watch into an [`Index`]: one task per watch, stoppable, retrying with backoff.
//!
//! Two kinds, one loop ([`run`]: list, then watch from the list's resourceVersion):
//! - [`Watches::start_metadata`], for the cluster-wide metadata watches (namespaces, credential
//!   Secrets), which can hold tens of thousands of objects. Like client-go's informers, the
//!   first list asks for `resourceVersion=0`, which the API server answers from its watch cache
//!   (no read from etcd, the selectors applied in memory; one response, as the cache does not
//!   page). That response is decoded as it streams in and each object is reduced to its index
//!   entry on arrival, so neither the body nor the list of objects is ever held whole: the
//!   peak is one object and a few chunks of the body. A relist after the watch expired (410
//!   Gone) asks for the latest state (`resourceVersion` unset, from etcd), decoded the same way.
//! - [`Watches::start`], for small watches of whole objects (the sources in the injector's own
//!   namespace): a paged list, then the same watch loop.
//!
//! # Health
//!
//! An index is fresh ([`Health::is_fresh`](super::index::Health::is_fresh), the
//! `watch_healthy` gauge at 1) while its watch is established and the index is current as of
//! a resourceVersion the API server confirmed. These confirm it:
//! - a completed list (as of the list's resourceVersion);
//! - a watch request the API server accepted from the version the index is current at (the
//!   list's, or the last event's or bookmark's). The API server serves every change after an
//!   accepted version, and refuses one it can no longer serve (410 Gone), so nothing was
//!   missed: the index is healthy again at once, even on a quiet resource where no event
//!   follows for hours;
//! - a bookmark (which also moves the version to resume from) or an object event.
//!
//! Any failure makes the index stale until one of those: a list or watch request that fails,
//! an `ERROR` event, a broken stream. Each counts in `watch_errors_total` and is retried with
//! backoff. Every failure ends the watch request; it is reopened from the last confirmed
//! version (no relist, nothing re-read). A 410 Gone (the version expired, changes may have
//! been missed) relists from the latest state; the index stays stale, still answering with
//! its previous content, until that list completes. A watch request that ends normally (its
//! timeout) is renewed at once from the last confirmed version and stays fresh. An API server
//! may accept a watch request and report the version expired only in its first event: the
//! index is then fresh for that moment, and stale from the 410 until the relist completes.
//!
//! A stale index keeps its content; absence in it proves nothing (admission answers
//! "unknown"). The loop reaches the API server only through [`WatchApi`], which the tests
//! script.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use kube::Resource;
use kube::api::{Api, ListParams, PartialObjectMeta, VersionMatch, WatchEvent, WatchParams};
use kube::runtime::watcher;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::cluster::client::watch_backoff;
use crate::cluster::index::Index;
use crate::cluster::list::list_metadata;

/// Seconds a watch request stays open before the API server ends it and it is renewed from
/// the last resourceVersion seen (kube-runtime's watcher uses the same).
const WATCH_TIMEOUT_SECS: u32 = 290;

/// Objects per page of the initial list: bounds the peak while listing large clusters.
pub const LIST_PAGE_SIZE: u32 = 500;

/// The longest wait between retries, should the backoff ever run out.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// A running watch task; dropping it ends the watch.
pub struct Running(JoinHandle<()>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the watches share: a signal to whoever reacts to changes (sync, discovery).
#[derive(Clone)]
pub struct Watches {
    pub changed: Arc<Notify>,
}

impl Watches {
    /// Watches `api` (with `config`'s selectors, timeout, bookmarks and list semantic) into
    /// `index`, keeping of each object what `entry` returns (`None`: not of interest). Lists
    /// in pages of [`LIST_PAGE_SIZE`]; `config`'s initial list strategy is not used (always a
    /// list, then a watch).
    pub fn start<K, V>(
        &self,
        api: Api<K>,
        config: watcher::Config,
        index: Arc<Index<V>>,
        entry: fn(&K) -> Option<V>,
    ) -> Running
    where
        K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
        V: Send + Sync + 'static,
    {
        let api = Objects { api, config, entry };
        Running(tokio::spawn(run(
            api,
            index,
            self.changed.clone(),
            tokio::time::sleep,
        )))
    }

    /// Watches the metadata of every `K` that `fields` selects (a field selector, or none)
    /// into `index`, keeping of each object what `entry` returns (`None`: not of interest).
    /// See the module docs for how the list is made.
    pub fn start_metadata<K, V>(
        &self,
        api: Api<K>,
        fields: Option<String>,
        index: Arc<Index<V>>,
        entry: fn(&PartialObjectMeta<K>) -> Option<V>,
    ) -> Running
    where
        K: Resource + Clone + std::fmt::Debug + DeserializeOwned + Send + Sync + 'static,
        V: Send + Sync + 'static,
    {
        let api = Metadata { api, fields, entry };
        Running(tokio::spawn(run(
            api,
            index,
            self.changed.clone(),
            tokio::time::sleep,
        )))
    }
}

/// Where a list reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListFrom {
    /// The API server's watch cache (`resourceVersion=0`): the first list.
    Cache,
    /// The latest state (`resourceVersion` unset): a relist after 410 Gone, which must not go
    /// back in time to a cache older than what the index has seen.
    Latest,
}

/// A watch request's events.
type Events<O> = BoxStream<'static, Result<WatchEvent<O>, kube::Error>>;

/// The API calls of a watch loop: the initial list and opening a watch from a version.
trait WatchApi: Send + Sync + 'static {
    type Object: Resource + Send;
    type Value: Send + Sync + 'static;

    /// What the index keeps of `object` (`None`: not of interest).
    fn entry(&self, object: &Self::Object) -> Option<Self::Value>;

    /// Lists into `index` as a list cycle (the index is replaced when the list is complete);
    /// returns the list's resourceVersion.
    fn list(
        &self,
        from: ListFrom,
        index: &Arc<Index<Self::Value>>,
    ) -> impl Future<Output = Result<String, watcher::Error>> + Send;

    /// Opens a watch from `version`.
    fn watch(
        &self,
        version: &str,
    ) -> impl Future<Output = Result<Events<Self::Object>, kube::Error>> + Send;
}

/// The metadata of the `K` that `fields` selects (see the module docs).
struct Metadata<K, V> {
    api: Api<K>,
    fields: Option<String>,
    entry: fn(&PartialObjectMeta<K>) -> Option<V>,
}

impl<K, V> WatchApi for Metadata<K, V>
where
    K: Resource + Clone + std::fmt::Debug + DeserializeOwned + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    type Object = PartialObjectMeta<K>;
    type Value = V;

    fn entry(&self, object: &PartialObjectMeta<K>) -> Option<V> {
        (self.entry)(object)
    }

    async fn list(&self, from: ListFrom, index: &Arc<Index<V>>) -> Result<String, watcher::Error> {
        let version = (from == ListFrom::Cache).then_some("0");
        list_metadata(
            &self.api,
            self.fields.as_deref(),
            version,
            index,
            self.entry,
        )
        .await
    }

    async fn watch(&self, version: &str) -> Result<Events<PartialObjectMeta<K>>, kube::Error> {
        let mut params = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
        if let Some(fields) = &self.fields {
            params = params.fields(fields);
        }
        Ok(self.api.watch_metadata(&params, version).await?.boxed())
    }
}

/// Whole `K` objects, as `config` selects them.
struct Objects<K, V> {
    api: Api<K>,
    config: watcher::Config,
    entry: fn(&K) -> Option<V>,
}

impl<K, V> WatchApi for Objects<K, V>
where
    K: Resource + Clone + std::fmt::Debug + DeserializeOwned + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    type Object = K;
    type Value = V;

    fn entry(&self, object: &K) -> Option<V> {
        (self.entry)(object)
    }

    async fn list(&self, from: ListFrom, index: &Arc<Index<V>>) -> Result<String, watcher::Error> {
        let mut params = ListParams {
            label_selector: self.config.label_selector.clone(),
            field_selector: self.config.field_selector.clone(),
            limit: Some(LIST_PAGE_SIZE),
            ..ListParams::default()
        };
        if from == ListFrom::Cache && self.config.list_semantic == watcher::ListSemantic::Any {
            params.resource_version = Some("0".into());
            params.version_match = Some(VersionMatch::NotOlderThan);
        }
        index.start_list();
        loop {
            let page = self
                .api
                .list(&params)
                .await
                .map_err(watcher::Error::InitialListFailed)?;
            for object in &page.items {
                if let Some(value) = (self.entry)(object) {
                    let (namespace, name) = key(object);
                    index.apply_listed(namespace, name, value);
                }
            }
            match page.metadata.continue_.filter(|token| !token.is_empty()) {
                Some(token) => params.continue_token = Some(token),
                None => {
                    let version = page
                        .metadata
                        .resource_version
                        .filter(|version| !version.is_empty())
                        .ok_or(watcher::Error::NoResourceVersion)?;
                    index.finish_list();
                    return Ok(version);
                }
            }
        }
    }

    async fn watch(&self, version: &str) -> Result<Events<K>, kube::Error> {
        let mut params =
            WatchParams::default().timeout(self.config.timeout.unwrap_or(WATCH_TIMEOUT_SECS));
        params.label_selector = self.config.label_selector.clone();
        params.field_selector = self.config.field_selector.clone();
        params.bookmarks = self.config.bookmarks;
        Ok(self.api.watch(&params, version).await?.boxed())
    }
}

/// How a watch request ended.
enum End {
    /// Normally (its timeout, or the server closed it): renew from the last version.
    Closed,
    /// 410 Gone: the version is too old to watch from; list again.
    Expired(watcher::Error),
    /// An error: retry from the last version.
    Failed(watcher::Error),
}

/// The watch loop: list, watch from the list's version, keep the index and its health (see
/// the module docs), forever. Waits between retries with `sleep` (`tokio::time::sleep`).
async fn run<A, S>(
    api: A,
    index: Arc<Index<A::Value>>,
    changed: Arc<Notify>,
    sleep: impl Fn(Duration) -> S + Send,
) where
    A: WatchApi,
    S: Future<Output = ()> + Send,
{
    let mut backoff = watch_backoff();
    let mut retry = async |index: &Index<A::Value>, error: &watcher::Error| {
        index.health.failed();
        tracing::warn!(resource = index.health.kind(), error = %error, "watch error; retrying with backoff");
        sleep(backoff.next().unwrap_or(MAX_RETRY_DELAY)).await;
    };
    // The version the index is current at, to watch from; `None`: list first.
    let mut version: Option<String> = None;
    let mut list_from = ListFrom::Cache;
    loop {
        let from = match version.take() {
            Some(version) => version,
            None => match api.list(list_from, &index).await {
                Ok(listed) => {
                    changed.notify_one();
                    listed
                }
                Err(e) => {
                    if matches!(&e, watcher::Error::InitialListFailed(e) if is_gone(e)) {
                        list_from = ListFrom::Latest;
                    }
                    retry(&index, &e).await;
                    continue;
                }
            },
        };
        let events = match api.watch(&from).await {
            Ok(events) => events,
            Err(e) => {
                if is_gone(&e) {
                    list_from = ListFrom::Latest;
                } else {
                    version = Some(from);
                }
                retry(&index, &watcher::Error::WatchStartFailed(e)).await;
                continue;
            }
        };
        // Accepted from the version the index is current at: nothing was missed.
        index.health.resumed();
        let (last, end) = read(&api, &index, &changed, events, from).await;
        match end {
            End::Closed => version = Some(last),
            End::Expired(e) => {
                tracing::debug!(
                    resource = index.health.kind(),
                    "watch expired; listing again"
                );
                list_from = ListFrom::Latest;
                retry(&index, &e).await;
            }
            End::Failed(e) => {
                version = Some(last);
                retry(&index, &e).await;
            }
        }
    }
}

/// Applies a watch request's events to `index` until it ends; returns the last version the
/// index is current at (`from`, or a later event's or bookmark's) and how it ended.
async fn read<A: WatchApi>(
    api: &A,
    index: &Index<A::Value>,
    changed: &Notify,
    mut events: Events<A::Object>,
    from: String,
) -> (String, End) {
    let entry = |object: &A::Object| api.entry(object);
    let mut last = from;
    while let Some(event) = events.next().await {
        match event {
            Ok(WatchEvent::Added(object) | WatchEvent::Modified(object)) => {
                remember_version(&mut last, &object);
                apply(index, watcher::Event::Apply(object), &entry);
                changed.notify_one();
            }
            Ok(WatchEvent::Deleted(object)) => {
                remember_version(&mut last, &object);
                apply(index, watcher::Event::Delete(object), &entry);
                changed.notify_one();
            }
            Ok(WatchEvent::Bookmark(bookmark)) => {
                if !bookmark.metadata.resource_version.is_empty() {
                    last = bookmark.metadata.resource_version;
                    index.health.bookmark();
                }
            }
            Ok(WatchEvent::Error(status)) if status.code == 410 => {
                return (last, End::Expired(watcher::Error::WatchError(status)));
            }
            Ok(WatchEvent::Error(status)) => {
                return (last, End::Failed(watcher::Error::WatchError(status)));
            }
            Err(e) if is_gone(&e) => {
                return (last, End::Expired(watcher::Error::WatchFailed(e)));
            }
            Err(e) => return (last, End::Failed(watcher::Error::WatchFailed(e))),
        }
    }
    (last, End::Closed)
}

/// Applies one watch event to `index`.
pub fn apply<O: Resource, V>(
    index: &Index<V>,
    event: watcher::Event<O>,
    entry: &impl Fn(&O) -> Option<V>,
) {
    match event {
        watcher::Event::Init => index.start_list(),
        watcher::Event::InitApply(object) => {
            if let Some(value) = entry(&object) {
                let (namespace, name) = key(&object);
                index.apply_listed(namespace, name, value);
            }
        }
        watcher::Event::InitDone => index.finish_list(),
        watcher::Event::Apply(object) => {
            let (namespace, name) = key(&object);
            match entry(&object) {
                Some(value) => index.apply(namespace, name, value),
                // No longer of interest (a label removed): as good as gone.
                None => index.delete(namespace, name),
            }
        }
        watcher::Event::Delete(object) => {
            let (namespace, name) = key(&object);
            index.delete(namespace, name);
        }
    }
}

/// An object's namespace (`""` for cluster-scoped kinds) and name.
fn key<O: Resource>(object: &O) -> (&str, &str) {
    let meta = object.meta();
    (
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
    )
}

fn remember_version<O: Resource>(last: &mut String, object: &O) {
    if let Some(version) = object.meta().resource_version.as_deref()
        && !version.is_empty()
    {
        version.clone_into(last);
    }
}

fn is_gone(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 410)
}

#[cfg(test)]
mod tests {
    //! The watch loop against a scripted API server: each step is one call the loop must make
    //! (a list, opening a watch, reading the next event) and the scripted answer; after it,
    //! once the loop waits on its next call, the row checks the index and its health.

    use super::*;
    use crate::metrics::{KindLabels, Metrics};
    use futures_util::FutureExt;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::core::Status;
    use kube::core::watch::{Bookmark, BookmarkMeta};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::{mpsc, oneshot};

    const KIND: &str = "configmaps";

    /// A call of the loop to the scripted API server, waiting for its answer.
    enum Call {
        List {
            from: ListFrom,
            reply: oneshot::Sender<Result<(Vec<ConfigMap>, String), watcher::Error>>,
        },
        Watch {
            from: String,
            reply: oneshot::Sender<Result<(), kube::Error>>,
        },
        Read {
            reply: oneshot::Sender<Option<Result<WatchEvent<ConfigMap>, kube::Error>>>,
        },
    }

    /// Forwards every call to the test; an open watch reads its events from the test too.
    struct Scripted(mpsc::UnboundedSender<Call>);

    impl WatchApi for Scripted {
        type Object = ConfigMap;
        type Value = String;

        /// Keeps the object's resourceVersion; names starting with `x` are not of interest.
        fn entry(&self, object: &ConfigMap) -> Option<String> {
            let name = object.metadata.name.as_deref()?;
            (!name.starts_with('x')).then(|| object.metadata.resource_version.clone())?
        }

        async fn list(
            &self,
            from: ListFrom,
            index: &Arc<Index<String>>,
        ) -> Result<String, watcher::Error> {
            let (reply, answer) = oneshot::channel();
            let _ = self.0.send(Call::List { from, reply });
            let listed = answer.await.map_err(|_| watcher::Error::NoResourceVersion);
            index.start_list();
            let (objects, version) = listed??;
            for object in &objects {
                apply(index, watcher::Event::InitApply(object.clone()), &|o| {
                    self.entry(o)
                });
            }
            index.finish_list();
            Ok(version)
        }

        async fn watch(&self, version: &str) -> Result<Events<ConfigMap>, kube::Error> {
            let (reply, answer) = oneshot::channel();
            let from = version.to_string();
            let _ = self.0.send(Call::Watch { from, reply });
            answer.await.map_err(|e| kube::Error::Service(e.into()))??;
            let calls = self.0.clone();
            let events = futures_util::stream::unfold(calls, |calls| async move {
                let (reply, answer) = oneshot::channel();
                calls.send(Call::Read { reply }).ok()?;
                let event = answer.await.ok()??;
                Some((event, calls))
            });
            Ok(events.boxed())
        }
    }

    /// How a request fails.
    #[derive(Debug, Clone, Copy)]
    enum Fail {
        /// The API server answers with this HTTP status.
        Status(u16),
        /// The connection breaks.
        Transport,
    }

    impl Fail {
        fn error(self) -> kube::Error {
            match self {
                Fail::Status(code) => kube::Error::Api(
                    Status::failure("scripted", "Scripted")
                        .with_code(code)
                        .boxed(),
                ),
                Fail::Transport => {
                    kube::Error::Service(std::io::Error::other("connection reset by peer").into())
                }
            }
        }
    }

    /// An event of an open watch, or its end.
    #[derive(Debug, Clone, Copy)]
    enum Item {
        Added(&'static str, &'static str),
        Modified(&'static str, &'static str),
        Deleted(&'static str, &'static str),
        Bookmark(&'static str),
        /// An `ERROR` event with this code.
        Error(u16),
        /// The stream breaks.
        Transport,
        /// A `Status` line with this code instead of an event.
        StatusLine(u16),
        /// The request ends normally (its timeout).
        End,
    }

    /// A list's `(name, version)` objects and its version.
    type Listed = (&'static [(&'static str, &'static str)], &'static str);

    /// The call the loop must make next, and its answer.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        /// Lists from the watch cache or the latest state; answers, or fails.
        List(ListFrom, Result<Listed, Fail>),
        /// Opens a watch from this version; accepted, or refused.
        Open(&'static str, Result<(), Fail>),
        /// Reads the open watch; the next item.
        Read(Item),
    }

    /// What `Health` says.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum State {
        Unlisted,
        Stale,
        Fresh,
    }

    /// Whether the loop backed off (asked to sleep) before its next call.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Pace {
        Now,
        Backoff,
    }

    /// After a step, once the loop waits on its next call: the index (`name@version`), its
    /// health, the errors counted, the pace, whether the watch signalled a change.
    type Row = (Step, &'static [&'static str], State, u64, Pace, bool);

    fn object(name: &str, version: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                resource_version: Some(version.into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    fn event(item: Item) -> Option<Result<WatchEvent<ConfigMap>, kube::Error>> {
        Some(Ok(match item {
            Item::Added(name, version) => WatchEvent::Added(object(name, version)),
            Item::Modified(name, version) => WatchEvent::Modified(object(name, version)),
            Item::Deleted(name, version) => WatchEvent::Deleted(object(name, version)),
            Item::Bookmark(version) => WatchEvent::Bookmark(Bookmark {
                types: kube::core::TypeMeta::default(),
                metadata: BookmarkMeta {
                    resource_version: version.into(),
                    annotations: Default::default(),
                },
            }),
            Item::Error(code) => WatchEvent::Error(
                Status::failure("scripted", "Scripted")
                    .with_code(code)
                    .boxed(),
            ),
            Item::Transport => {
                return Some(Err(kube::Error::ReadEvents(std::io::Error::other(
                    "connection reset by peer",
                ))));
            }
            Item::StatusLine(code) => return Some(Err(Fail::Status(code).error())),
            Item::End => return None,
        }))
    }

    /// Runs the loop against `rows`, checking each.
    async fn script(name: &str, rows: &[Row]) {
        let metrics = Arc::new(Metrics::default());
        let index = Arc::new(Index::new(KIND, metrics.clone()));
        let changed = Arc::new(Notify::new());
        let (calls, mut asked) = mpsc::unbounded_channel();
        // Backoff returns at once, counted: no test waits.
        let sleeps = Arc::new(AtomicUsize::new(0));
        let sleep = {
            let sleeps = sleeps.clone();
            move |_: Duration| {
                sleeps.fetch_add(1, Ordering::Relaxed);
                std::future::ready(())
            }
        };
        let _running = Running(tokio::spawn(run(
            Scripted(calls),
            index.clone(),
            changed.clone(),
            sleep,
        )));
        // Only a broken loop that stops calling waits this long.
        let mut next = async || {
            tokio::time::timeout(Duration::from_secs(10), asked.recv())
                .await
                .ok()
                .flatten()
        };
        let mut call = next().await;
        for (row, &(step, contents, state, errors, pace, signalled)) in rows.iter().enumerate() {
            let at = format!("{name}, row {row} ({step:?})");
            match (step, call.take()) {
                (Step::List(expected, answer), Some(Call::List { from, reply })) => {
                    assert_eq!(from, expected, "{at}: lists from");
                    let answer = answer
                        .map(|(objects, version)| {
                            let objects = objects.iter().map(|(n, v)| object(n, v)).collect();
                            (objects, version.to_string())
                        })
                        .map_err(|fail| watcher::Error::InitialListFailed(fail.error()));
                    let _ = reply.send(answer);
                }
                (Step::Open(expected, answer), Some(Call::Watch { from, reply })) => {
                    assert_eq!(from, expected, "{at}: watches from");
                    let _ = reply.send(answer.map_err(Fail::error));
                }
                (Step::Read(item), Some(Call::Read { reply })) => {
                    let _ = reply.send(event(item));
                }
                (_, Some(Call::List { from, .. })) => panic!("{at}: the loop lists ({from:?})"),
                (_, Some(Call::Watch { from, .. })) => panic!("{at}: the loop watches from {from}"),
                (_, Some(Call::Read { .. })) => panic!("{at}: the loop reads the watch"),
                (_, None) => panic!("{at}: the loop stopped calling"),
            }
            let slept = sleeps.load(Ordering::Relaxed);
            call = next().await;
            let waited = if sleeps.load(Ordering::Relaxed) > slept {
                Pace::Backoff
            } else {
                Pace::Now
            };
            let mut seen = Vec::new();
            index.for_each(|_, name, version| seen.push(format!("{name}@{version}")));
            seen.sort();
            assert_eq!(seen, contents, "{at}: index");
            let health = &index.health;
            let now = match (health.is_listed(), health.is_fresh()) {
                (false, _) => State::Unlisted,
                (true, false) => State::Stale,
                (true, true) => State::Fresh,
            };
            assert_eq!(now, state, "{at}: health");
            let labels = KindLabels { kind: KIND };
            let healthy = metrics.watch_healthy.get_or_create(&labels).get();
            assert_eq!(healthy == 1, state == State::Fresh, "{at}: watch_healthy");
            let counted = metrics.watch_errors.get_or_create(&labels).get();
            assert_eq!(counted, errors, "{at}: watch_errors_total");
            assert_eq!(waited, pace, "{at}: pace");
            let notified = changed.notified().now_or_never().is_some();
            assert_eq!(notified, signalled, "{at}: changed");
        }
    }

    use Fail::Transport as Broken;
    use ListFrom::{Cache, Latest};
    use Pace::{Backoff, Now};
    use State::{Fresh, Stale, Unlisted};
    use Step::{List, Open, Read};

    #[tokio::test]
    async fn a_quiet_watch_is_fresh_again_as_soon_as_a_reconnect_is_accepted() {
        #[rustfmt::skip]
        script("reconnect", &[
            (List(Cache, Ok((&[("a", "1"), ("x", "2")], "5"))), &["a@1"], Fresh, 0, Now, true),
            (Open("5", Ok(())),                                  &["a@1"], Fresh, 0, Now, false),
            // The bug: stale after any error until an object event arrived.
            (Read(Item::Transport),                              &["a@1"], Stale, 1, Backoff, false),
            (Open("5", Ok(())),                                  &["a@1"], Fresh, 1, Now, false),
            (Read(Item::Error(500)),                             &["a@1"], Stale, 2, Backoff, false),
            (Open("5", Err(Fail::Status(500))),                  &["a@1"], Stale, 3, Backoff, false),
            (Open("5", Err(Broken)),                             &["a@1"], Stale, 4, Backoff, false),
            (Open("5", Err(Fail::Status(429))),                  &["a@1"], Stale, 5, Backoff, false),
            (Open("5", Ok(())),                                  &["a@1"], Fresh, 5, Now, false),
            // No event for a whole request: renewed at once, still fresh.
            (Read(Item::End),                                    &["a@1"], Fresh, 5, Now, false),
            (Open("5", Ok(())),                                  &["a@1"], Fresh, 5, Now, false),
        ])
        .await;
    }

    #[tokio::test]
    async fn a_bookmark_confirms_the_index_and_is_where_the_watch_resumes() {
        #[rustfmt::skip]
        script("bookmark", &[
            (List(Cache, Ok((&[], "5"))),        &[], Fresh, 0, Now, true),
            (Open("5", Ok(())),                  &[], Fresh, 0, Now, false),
            (Read(Item::Bookmark("9")),          &[], Fresh, 0, Now, false),
            (Read(Item::End),                    &[], Fresh, 0, Now, false),
            (Open("9", Ok(())),                  &[], Fresh, 0, Now, false),
            (Read(Item::Error(500)),             &[], Stale, 1, Backoff, false),
            (Open("9", Err(Broken)),             &[], Stale, 2, Backoff, false),
            (Open("9", Ok(())),                  &[], Fresh, 2, Now, false),
            (Read(Item::Bookmark("12")),         &[], Fresh, 2, Now, false),
            (Read(Item::Transport),              &[], Stale, 3, Backoff, false),
            (Open("12", Ok(())),                 &[], Fresh, 3, Now, false),
            // A bookmark without a version confirms nothing and moves nothing.
            (Read(Item::Bookmark("")),           &[], Fresh, 3, Now, false),
            (Read(Item::End),                    &[], Fresh, 3, Now, false),
            (Open("12", Ok(())),                 &[], Fresh, 3, Now, false),
        ])
        .await;
    }

    #[tokio::test]
    async fn events_fill_the_index_and_move_the_version_to_resume_from() {
        #[rustfmt::skip]
        script("events", &[
            (List(Cache, Ok((&[("a", "1"), ("b", "2")], "5"))), &["a@1", "b@2"], Fresh, 0, Now, true),
            (Open("5", Ok(())),                         &["a@1", "b@2"], Fresh, 0, Now, false),
            (Read(Item::Added("c", "6")),               &["a@1", "b@2", "c@6"], Fresh, 0, Now, true),
            (Read(Item::Modified("a", "7")),            &["a@7", "b@2", "c@6"], Fresh, 0, Now, true),
            (Read(Item::Deleted("b", "8")),             &["a@7", "c@6"], Fresh, 0, Now, true),
            // No longer of interest: as good as gone.
            (Read(Item::Modified("x", "9")),            &["a@7", "c@6"], Fresh, 0, Now, true),
            (Read(Item::End),                           &["a@7", "c@6"], Fresh, 0, Now, false),
            (Open("9", Ok(())),                         &["a@7", "c@6"], Fresh, 0, Now, false),
            (Read(Item::Added("d", "10")),              &["a@7", "c@6", "d@10"], Fresh, 0, Now, true),
            (Read(Item::Transport),                     &["a@7", "c@6", "d@10"], Stale, 1, Backoff, false),
            (Open("10", Err(Broken)),                   &["a@7", "c@6", "d@10"], Stale, 2, Backoff, false),
            (Open("10", Ok(())),                        &["a@7", "c@6", "d@10"], Fresh, 2, Now, false),
        ])
        .await;
    }

    #[tokio::test]
    async fn an_expired_watch_relists_from_the_latest_state_and_is_stale_until_then() {
        #[rustfmt::skip]
        script("expired", &[
            (List(Cache, Ok((&[("a", "1")], "5"))),      &["a@1"], Fresh, 0, Now, true),
            (Open("5", Ok(())),                          &["a@1"], Fresh, 0, Now, false),
            // Changes may have been missed: stale, keeping what it knew, until relisted.
            (Read(Item::Error(410)),                     &["a@1"], Stale, 1, Backoff, false),
            (List(Latest, Err(Fail::Status(500))),       &["a@1"], Stale, 2, Backoff, false),
            (List(Latest, Err(Broken)),                  &["a@1"], Stale, 3, Backoff, false),
            (List(Latest, Ok((&[("b", "20")], "20"))),   &["b@20"], Fresh, 3, Now, true),
            (Open("20", Err(Fail::Status(410))),         &["b@20"], Stale, 4, Backoff, false),
            (List(Latest, Ok((&[("b", "20"), ("c", "21")], "21"))), &["b@20", "c@21"], Fresh, 4, Now, true),
            (Open("21", Ok(())),                         &["b@20", "c@21"], Fresh, 4, Now, false),
            (Read(Item::Added("d", "22")),               &["b@20", "c@21", "d@22"], Fresh, 4, Now, true),
            (Read(Item::Transport),                      &["b@20", "c@21", "d@22"], Stale, 5, Backoff, false),
            (Open("22", Ok(())),                         &["b@20", "c@21", "d@22"], Fresh, 5, Now, false),
            // Expiry reported as a Status line instead of an ERROR event: the same.
            (Read(Item::StatusLine(410)),                &["b@20", "c@21", "d@22"], Stale, 6, Backoff, false),
            (List(Latest, Ok((&[], "30"))),              &[], Fresh, 6, Now, true),
            (Open("30", Ok(())),                         &[], Fresh, 6, Now, false),
            // Other Status lines are errors: resume from the last version.
            (Read(Item::StatusLine(500)),                &[], Stale, 7, Backoff, false),
            (Open("30", Ok(())),                         &[], Fresh, 7, Now, false),
        ])
        .await;
    }

    #[tokio::test]
    async fn the_first_list_is_retried_from_the_cache_until_it_succeeds() {
        #[rustfmt::skip]
        script("first list", &[
            (List(Cache, Err(Broken)),                  &[], Unlisted, 1, Backoff, false),
            (List(Cache, Err(Fail::Status(403))),       &[], Unlisted, 2, Backoff, false),
            (List(Cache, Ok((&[("a", "3")], "4"))),     &["a@3"], Fresh, 2, Now, true),
            (Open("4", Err(Fail::Status(500))),         &["a@3"], Stale, 3, Backoff, false),
            (Open("4", Ok(())),                         &["a@3"], Fresh, 3, Now, false),
        ])
        .await;
        // A list refused as expired is retried from the latest state.
        #[rustfmt::skip]
        script("first list expired", &[
            (List(Cache, Err(Fail::Status(410))),       &[], Unlisted, 1, Backoff, false),
            (List(Latest, Ok((&[("a", "3")], "4"))),    &["a@3"], Fresh, 1, Now, true),
            (Open("4", Ok(())),                         &["a@3"], Fresh, 1, Now, false),
        ])
        .await;
    }
}
