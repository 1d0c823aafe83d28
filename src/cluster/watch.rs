//! Drives a watch into an [`Index`]: one task per watch, stoppable, retrying with backoff.
//!
//! The watcher pages its initial list (`limit`/`continue`), so the peak holds one page of
//! whole objects, never the whole list; each object is reduced to its index entry on arrival.

use std::sync::Arc;

use futures_util::StreamExt;
use kube::Resource;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::cluster::client::watch_backoff;
use crate::cluster::index::Index;

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
