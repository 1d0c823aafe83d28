//! The initial list of a metadata watch, decoded as it streams in: each object is reduced to
//! its index entry on arrival, so neither the response body nor the list of objects is ever
//! held whole (the API server's watch cache answers `resourceVersion=0` in one response, which
//! for a large cluster is tens of megabytes). Used by [`super::watch::Watches::start_metadata`].

use std::io::Read;
use std::marker::PhantomData;
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::Bytes;
use kube::Resource;
use kube::api::{Api, ListParams, PartialObjectMeta};
use kube::core::Status;
use kube::runtime::watcher;
use serde::de::{DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use tokio::sync::mpsc;

use crate::cluster::index::Index;

/// Chunks of a list body in flight between the connection and the decoder.
const LIST_CHUNKS_IN_FLIGHT: usize = 4;

/// Lists the metadata of every `K` that `fields` selects into `index` (a list cycle: the
/// index is replaced when the list is complete), at `version` (`Some("0")`: from the API
/// server's cache; `None`: the latest). Returns the list's resourceVersion.
pub async fn list_metadata<K, V>(
    api: &Api<K>,
    fields: Option<&str>,
    version: Option<&str>,
    index: &Arc<Index<V>>,
    entry: fn(&PartialObjectMeta<K>) -> Option<V>,
) -> Result<String, watcher::Error>
where
    K: Resource + Clone + DeserializeOwned + Send + 'static,
    V: Send + Sync + 'static,
{
    let params = ListParams {
        field_selector: fields.map(str::to_string),
        resource_version: version.map(str::to_string),
        ..ListParams::default()
    };
    let request = kube::core::Request::new(api.resource_url())
        .list_metadata(&params)
        .map_err(|e| watcher::Error::InitialListFailed(kube::Error::BuildRequest(e)))?;
    let client = api.clone().into_client();
    let failed = watcher::Error::InitialListFailed;
    let response = client
        .send(request.map(kube::client::Body::from))
        .await
        .map_err(failed)?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let bytes = body
            .collect()
            .await
            .map_err(|e| failed(kube::Error::Service(e.into())))?
            .to_bytes();
        let status = serde_json::from_slice::<Status>(&bytes).unwrap_or_else(|_| {
            Status::failure(&String::from_utf8_lossy(&bytes), "").with_code(status.as_u16())
        });
        return Err(failed(kube::Error::Api(Box::new(status))));
    }
    // The body streams to a blocking task that decodes it into the index as it arrives.
    let (chunks, receiver) = mpsc::channel(LIST_CHUNKS_IN_FLIGHT);
    let decode = tokio::task::spawn_blocking({
        let index = index.clone();
        move || {
            index.start_list();
            let reader = std::io::BufReader::new(ChunkReader {
                chunks: receiver,
                current: Bytes::new(),
            });
            let mut decoder = serde_json::Deserializer::from_reader(reader);
            let seed = ListSeed {
                index: &index,
                entry,
                kind: PhantomData::<K>,
            };
            let version = seed.deserialize(&mut decoder)?;
            decoder.end()?;
            Ok::<_, serde_json::Error>(version)
        }
    });
    while let Some(frame) = body.frame().await {
        let chunk = match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => Ok(data),
                Err(_) => continue,
            },
            Err(e) => Err(std::io::Error::other(e.to_string())),
        };
        let failed = chunk.is_err();
        if chunks.send(chunk).await.is_err() || failed {
            break;
        }
    }
    drop(chunks);
    let decoded = decode
        .await
        .map_err(|e| failed(kube::Error::Service(e.into())))?
        .map_err(|e| failed(kube::Error::SerdeError(e)))?;
    match decoded {
        Some(version) if !version.is_empty() => {
            index.finish_list();
            Ok(version)
        }
        _ => Err(watcher::Error::NoResourceVersion),
    }
}

/// The list body as a `Read`, fed chunk by chunk from the connection.
struct ChunkReader {
    chunks: mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(chunk) => self.current = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// Decodes a `PartialObjectMetadataList` into `index` one item at a time; yields the list's
/// resourceVersion.
struct ListSeed<'a, K, V> {
    index: &'a Index<V>,
    entry: fn(&PartialObjectMeta<K>) -> Option<V>,
    kind: PhantomData<K>,
}

impl<'de, K: Resource + DeserializeOwned, V> DeserializeSeed<'de> for ListSeed<'_, K, V> {
    type Value = Option<String>;

    fn deserialize<D: serde::Deserializer<'de>>(self, decoder: D) -> Result<Self::Value, D::Error> {
        decoder.deserialize_map(self)
    }
}

impl<'de, K: Resource + DeserializeOwned, V> Visitor<'de> for ListSeed<'_, K, V> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a PartialObjectMetadataList")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "lowercase")]
        enum Field {
            Metadata,
            Items,
            #[serde(other)]
            Other,
        }
        #[derive(serde::Deserialize)]
        struct ListMeta {
            #[serde(default, rename = "resourceVersion")]
            resource_version: Option<String>,
        }
        let mut version = None;
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Metadata => version = map.next_value::<ListMeta>()?.resource_version,
                Field::Items => map.next_value_seed(ItemsSeed {
                    index: self.index,
                    entry: self.entry,
                    kind: PhantomData,
                })?,
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(version)
    }
}

struct ItemsSeed<'a, K, V> {
    index: &'a Index<V>,
    entry: fn(&PartialObjectMeta<K>) -> Option<V>,
    kind: PhantomData<K>,
}

impl<'de, K: Resource + DeserializeOwned, V> DeserializeSeed<'de> for ItemsSeed<'_, K, V> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, decoder: D) -> Result<(), D::Error> {
        decoder.deserialize_any(self)
    }
}

impl<'de, K: Resource + DeserializeOwned, V> Visitor<'de> for ItemsSeed<'_, K, V> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of objects")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        while let Some(object) = items.next_element::<PartialObjectMeta<K>>()? {
            if let Some(value) = (self.entry)(&object) {
                let meta = object.meta();
                let namespace = meta.namespace.as_deref().unwrap_or_default();
                let name = meta.name.as_deref().unwrap_or_default();
                self.index.apply_listed(namespace, name, value);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use k8s_openapi::api::core::v1::Namespace;

    fn label(namespace: &PartialObjectMeta<Namespace>) -> Option<String> {
        let labels = namespace.metadata.labels.as_ref()?;
        labels.get("team").cloned()
    }

    #[test]
    fn a_list_is_decoded_into_the_index_one_item_at_a_time() {
        let body = r#"{"kind":"PartialObjectMetadataList","apiVersion":"meta.k8s.io/v1",
            "metadata":{"resourceVersion":"4711","continue":""},
            "items":[
              {"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":{"name":"a","labels":{"team":"x"},
               "managedFields":[{"manager":"m","fieldsType":"FieldsV1","fieldsV1":{"f:metadata":{"f:labels":{".":{}}}}}]}},
              {"metadata":{"name":"b"}},
              {"metadata":{"name":"c","labels":{"team":"y"}}}
            ]}"#;
        let index = Index::new("namespaces", Arc::new(Metrics::default()));
        // Fed in small chunks through the reader, as from the connection.
        let (chunks, receiver) = mpsc::channel(LIST_CHUNKS_IN_FLIGHT);
        let bytes = Bytes::from(body);
        let feeder = std::thread::spawn(move || {
            for start in (0..bytes.len()).step_by(7) {
                let end = (start + 7).min(bytes.len());
                chunks
                    .blocking_send(Ok(bytes.slice(start..end)))
                    .expect("send");
            }
        });
        let reader = std::io::BufReader::new(ChunkReader {
            chunks: receiver,
            current: Bytes::new(),
        });
        index.start_list();
        let mut decoder = serde_json::Deserializer::from_reader(reader);
        let seed = ListSeed {
            index: &index,
            entry: label,
            kind: PhantomData,
        };
        let version = seed.deserialize(&mut decoder).expect("decodes");
        decoder.end().expect("nothing after the list");
        index.finish_list();
        feeder.join().expect("feeder");
        assert_eq!(version.as_deref(), Some("4711"));
        assert_eq!(index.len(), 2, "b has no entry");
        assert_eq!(index.get("", "a", |v| v.cloned()), Some("x".to_string()));
        assert_eq!(index.get("", "c", |v| v.cloned()), Some("y".to_string()));
        assert!(index.health.is_fresh());
    }

    #[test]
    fn a_broken_list_body_is_an_error() {
        let index: Index<String> = Index::new("namespaces", Arc::new(Metrics::default()));
        for body in [
            r#"{"metadata":{"resourceVersion":"1"},"items":[{"metadata":{"name":"a"}},"#,
            r#"{"metadata":{"resourceVersion":"1"},"items":{"a":1}}"#,
        ] {
            let mut decoder = serde_json::Deserializer::from_str(body);
            let seed = ListSeed {
                index: &index,
                entry: label,
                kind: PhantomData,
            };
            assert!(seed.deserialize(&mut decoder).is_err(), "{body}");
        }
    }
}
