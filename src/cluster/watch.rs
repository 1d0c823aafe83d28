//! Drives a watch into an [`Index`]: one task per watch, stoppable, retrying with backoff.
//!
//! Two kinds:
//! - [`Watches::start_metadata`], for the cluster-wide metadata watches (namespaces, credential
//!   Secrets), which can hold tens of thousands of objects. Like client-go's informers, the
//!   first list asks for `resourceVersion=0`, which the API server answers from its watch cache
//!   (no read from etcd, the selectors applied in memory; one response, as the cache does not
//!   page). That response is decoded as it streams in and each object is reduced to its index
//!   entry on arrival, so neither the body nor the list of objects is ever held whole: the
//!   peak is one object and a few chunks of the body. A relist after the watch expired (410
//!   Gone) asks for the latest state (`resourceVersion` unset, from etcd), decoded the same way.
//! - [`Watches::start`], kube-runtime's watcher with a paged list, for small watches of whole
//!   objects (the sources in the injector's own namespace).

use std::sync::Arc;

use futures_util::StreamExt;
use kube::Resource;
use kube::api::{Api, PartialObjectMeta, WatchEvent, WatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::cluster::client::watch_backoff;
use crate::cluster::index::Index;
use crate::cluster::list::list_metadata;

/// Seconds a metadata watch request stays open before the API server ends it and it is
/// renewed from the last resourceVersion seen (kube-runtime's watcher uses the same).
const WATCH_TIMEOUT_SECS: u32 = 290;

/// Objects per page of the initial list: bounds the peak while listing large clusters.
pub const LIST_PAGE_SIZE: u32 = 500;

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
    /// Watches `api` (with `config`'s selectors) into `index`, keeping of each object what
    /// `entry` returns (`None`: not of interest). An `Api<PartialObjectMeta<K>>` makes it a
    /// metadata-only watch.
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
        let stream = watcher(api, config.page_size(LIST_PAGE_SIZE)).backoff(watch_backoff());
        self.drive(stream, index, entry)
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
        let changed = self.changed.clone();
        Running(tokio::spawn(async move {
            let mut backoff = watch_backoff();
            let mut failed = |index: &Index<V>, error: &dyn std::fmt::Display| {
                index.health.failed();
                tracing::warn!(resource = index.health.kind(), error = %error, "watch error; retrying with backoff");
                backoff.next().unwrap_or(std::time::Duration::from_secs(5))
            };
            // The resourceVersion to watch from; `None`: list first.
            let mut version: Option<String> = None;
            // The first list may come from the API server's cache; a relist after 410 Gone
            // asks for the latest state.
            let mut list_from_cache = true;
            loop {
                let from = match version.take() {
                    Some(version) => version,
                    None => {
                        let cache = list_from_cache.then_some("0");
                        match list_metadata(&api, fields.as_deref(), cache, &index, entry).await {
                            Ok(listed) => {
                                changed.notify_one();
                                listed
                            }
                            Err(e) => {
                                let wait = failed(&index, &e);
                                tokio::time::sleep(wait).await;
                                continue;
                            }
                        }
                    }
                };
                let mut params = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
                if let Some(fields) = &fields {
                    params = params.fields(fields);
                }
                let stream = match api.watch_metadata(&params, &from).await {
                    Ok(stream) => stream,
                    Err(e) => {
                        if is_gone(&e) {
                            list_from_cache = false;
                        } else {
                            version = Some(from);
                        }
                        let wait = failed(&index, &watcher::Error::WatchStartFailed(e));
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                };
                let mut stream = std::pin::pin!(stream);
                let mut last = from;
                let mut error = None;
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(WatchEvent::Added(object) | WatchEvent::Modified(object)) => {
                            remember_version(&mut last, &object);
                            apply(&index, watcher::Event::Apply(object), &entry);
                            changed.notify_one();
                        }
                        Ok(WatchEvent::Deleted(object)) => {
                            remember_version(&mut last, &object);
                            apply(&index, watcher::Event::Delete(object), &entry);
                            changed.notify_one();
                        }
                        Ok(WatchEvent::Bookmark(bookmark)) => {
                            last = bookmark.metadata.resource_version;
                        }
                        Ok(WatchEvent::Error(status)) => {
                            error = Some(status);
                            break;
                        }
                        Err(e) => {
                            let wait = failed(&index, &watcher::Error::WatchFailed(e));
                            tokio::time::sleep(wait).await;
                            break;
                        }
                    }
                }
                match error {
                    // The version we watch from is too old: list again.
                    Some(status) if status.code == 410 => {
                        tracing::debug!(
                            resource = index.health.kind(),
                            "watch expired; listing again"
                        );
                        list_from_cache = false;
                    }
                    Some(status) => {
                        let wait = failed(&index, &watcher::Error::WatchError(status));
                        tokio::time::sleep(wait).await;
                        version = Some(last);
                    }
                    // The request timed out (or failed): watch on from where it was.
                    None => version = Some(last),
                }
            }
        }))
    }

    fn drive<O, V, S, F>(&self, stream: S, index: Arc<Index<V>>, entry: F) -> Running
    where
        O: Resource + Send + 'static,
        V: Send + Sync + 'static,
        S: futures_util::Stream<Item = Result<watcher::Event<O>, watcher::Error>> + Send + 'static,
        F: Fn(&O) -> Option<V> + Send + 'static,
    {
        let changed = self.changed.clone();
        Running(tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(event) => {
                        apply(&index, event, &entry);
                        changed.notify_one();
                    }
                    Err(e) => {
                        index.health.failed();
                        tracing::warn!(resource = index.health.kind(), error = %e, "watch error; retrying with backoff");
                    }
                }
            }
            tracing::error!(resource = index.health.kind(), "watch ended");
        }))
    }
}

/// Applies one watch event to `index`.
pub fn apply<O: Resource, V>(
    index: &Index<V>,
    event: watcher::Event<O>,
    entry: &impl Fn(&O) -> Option<V>,
) {
    let key = |object: &O| {
        let meta = object.meta();
        (
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        )
    };
    match event {
        watcher::Event::Init => index.start_list(),
        watcher::Event::InitApply(object) => {
            if let Some(value) = entry(&object) {
                let (namespace, name) = key(&object);
                index.apply_listed(&namespace, &name, value);
            }
        }
        watcher::Event::InitDone => index.finish_list(),
        watcher::Event::Apply(object) => {
            let (namespace, name) = key(&object);
            match entry(&object) {
                Some(value) => index.apply(&namespace, &name, value),
                // No longer of interest (a label removed): as good as gone.
                None => index.delete(&namespace, &name),
            }
        }
        watcher::Event::Delete(object) => {
            let (namespace, name) = key(&object);
            index.delete(&namespace, &name);
        }
    }
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
