//! The `admission.k8s.io/v1` AdmissionReview wire format, reduced to what the decision needs.
//!
//! Requests are decoded into borrowed, typed structs: only the fields the decision reads are
//! kept and everything else is skipped without building a JSON tree, which is most of the cost
//! of an admission. Responses are written with the `patch` base64-encoded, as the API documents
//! (kube-core's `AdmissionResponse` serialises it as a list of byte values, which the API
//! server happens to accept, but it is not the documented form).

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};

pub const API_VERSION_V1: &str = "admission.k8s.io/v1";
pub const API_VERSION_V1BETA1: &str = "admission.k8s.io/v1beta1";
pub const KIND: &str = "AdmissionReview";

/// The AdmissionReview envelope around a request of type `R`.
#[derive(Debug, Deserialize)]
#[serde(bound(deserialize = "R: Deserialize<'de>"))]
pub struct Envelope<'a, R> {
    #[serde(borrow, default, rename = "apiVersion", deserialize_with = "opt_str")]
    pub api_version: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub kind: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "object_or_null")]
    pub request: Option<R>,
}

/// An AdmissionReview whose object is decoded as a Pod.
pub type AdmissionReview<'a> = Envelope<'a, AdmissionRequest<'a>>;

/// The envelope alone, for answering reviews whose object is not a Pod we can read.
pub type LooseReview<'a> = Envelope<'a, LooseRequest<'a>>;

#[derive(Debug, Deserialize)]
pub struct AdmissionRequest<'a> {
    #[serde(borrow)]
    pub uid: Cow<'a, str>,
    #[serde(borrow, default, deserialize_with = "object")]
    pub kind: GroupVersionKind<'a>,
    #[serde(borrow, default)]
    pub operation: Cow<'a, str>,
    #[serde(borrow, default)]
    pub namespace: Cow<'a, str>,
    #[serde(borrow, default)]
    pub name: Cow<'a, str>,
    /// `ephemeralcontainers` for `kubectl debug`, empty for the Pod itself.
    #[serde(borrow, default, rename = "subResource")]
    pub sub_resource: Cow<'a, str>,
    #[serde(default, rename = "dryRun")]
    pub dry_run: Option<bool>,
    #[serde(borrow, default, deserialize_with = "object_or_null")]
    pub object: Option<Pod<'a>>,
    /// UPDATE only (`kubectl debug`): the object before the change.
    #[serde(
        borrow,
        default,
        rename = "oldObject",
        deserialize_with = "object_or_null"
    )]
    pub old_object: Option<Pod<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct GroupVersionKind<'a> {
    #[serde(borrow, default)]
    pub group: Cow<'a, str>,
    #[serde(borrow, default)]
    pub version: Cow<'a, str>,
    #[serde(borrow, default)]
    pub kind: Cow<'a, str>,
}

#[derive(Debug, Deserialize)]
pub struct LooseRequest<'a> {
    #[serde(borrow)]
    pub uid: Cow<'a, str>,
    #[serde(borrow, default, deserialize_with = "object")]
    pub kind: GroupVersionKind<'a>,
    #[serde(borrow, default)]
    pub operation: Cow<'a, str>,
    #[serde(borrow, default)]
    pub namespace: Cow<'a, str>,
}

/// The parts of a Pod the decision reads.
#[derive(Debug, Default, Deserialize)]
pub struct Pod<'a> {
    #[serde(borrow, default, deserialize_with = "object")]
    pub metadata: ObjectMeta<'a>,
    #[serde(borrow, default, deserialize_with = "object_or_null")]
    pub spec: Option<PodSpec<'a>>,
    /// Kubernetes 1.16 to 1.21 send the `pods/ephemeralcontainers` subresource as an
    /// `EphemeralContainers` object: metadata and this list, no spec.
    #[serde(
        borrow,
        default,
        rename = "ephemeralContainers",
        deserialize_with = "objects"
    )]
    pub ephemeral_containers: Vec<Container<'a>>,
}

impl<'a> Pod<'a> {
    /// Ephemeral containers in either shape (`spec.ephemeralContainers` since 1.22).
    pub fn ephemeral(&self) -> &[Container<'a>] {
        match &self.spec {
            Some(spec) if !spec.ephemeral_containers.is_empty() => &spec.ephemeral_containers,
            _ => &self.ephemeral_containers,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct ObjectMeta<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "generateName", deserialize_with = "opt_str")]
    pub generate_name: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub namespace: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "object")]
    pub labels: PodLabels<'a>,
    #[serde(borrow, default, deserialize_with = "object")]
    pub annotations: PodAnnotations<'a>,
}

/// Only the label we act on; serde skips the rest without allocating.
#[derive(Debug, Default, Deserialize)]
pub struct PodLabels<'a> {
    #[serde(
        borrow,
        default,
        rename = "pullsecret-injector/inject",
        deserialize_with = "opt_str"
    )]
    pub inject: Option<Cow<'a, str>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct PodAnnotations<'a> {
    #[serde(
        borrow,
        default,
        rename = "kubernetes.io/config.mirror",
        deserialize_with = "opt_str"
    )]
    pub mirror: Option<Cow<'a, str>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct PodSpec<'a> {
    #[serde(
        borrow,
        default,
        rename = "initContainers",
        deserialize_with = "objects"
    )]
    pub init_containers: Vec<Container<'a>>,
    #[serde(borrow, default, deserialize_with = "objects")]
    pub containers: Vec<Container<'a>>,
    /// `None` when the field is absent or null (the patch must then create it).
    #[serde(
        borrow,
        default,
        rename = "imagePullSecrets",
        deserialize_with = "objects_or_null"
    )]
    pub image_pull_secrets: Option<Vec<LocalObjectReference<'a>>>,
    /// Image volumes are pulled with the Pod's pull secrets too; other volumes are skipped.
    #[serde(borrow, default, deserialize_with = "objects")]
    pub volumes: Vec<Volume<'a>>,
    /// Added by `kubectl debug` (an UPDATE of `pods/ephemeralcontainers`), pulled with the
    /// Pod's pull secrets, which can no longer change.
    #[serde(
        borrow,
        default,
        rename = "ephemeralContainers",
        deserialize_with = "objects"
    )]
    pub ephemeral_containers: Vec<Container<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Volume<'a> {
    #[serde(borrow, default)]
    pub name: Cow<'a, str>,
    /// `spec.volumes[].image` (OCI image volumes, Kubernetes 1.31+).
    #[serde(borrow, default, deserialize_with = "object_or_null")]
    pub image: Option<ImageVolumeSource<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ImageVolumeSource<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub reference: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "pullPolicy", deserialize_with = "opt_str")]
    pub pull_policy: Option<Cow<'a, str>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Container<'a> {
    #[serde(borrow, default)]
    pub name: Cow<'a, str>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub image: Option<Cow<'a, str>>,
    #[serde(
        borrow,
        default,
        rename = "imagePullPolicy",
        deserialize_with = "opt_str"
    )]
    pub image_pull_policy: Option<Cow<'a, str>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct LocalObjectReference<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub name: Option<Cow<'a, str>>,
}

/// An optional string, borrowed from the input unless it has escapes. serde's own
/// `Option<Cow<str>>` always allocates (`#[serde(borrow)]` borrows only a `Cow<str>` field
/// itself), which was a dozen allocations per review. Accepts and rejects what serde's
/// `Option<Cow<str>>` does, with the same messages.
fn opt_str<'de: 'a, 'a, D>(deserializer: D) -> Result<Option<Cow<'a, str>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct OptStr;
    impl<'de> serde::de::Visitor<'de> for OptStr {
        type Value = Option<Cow<'de, str>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("option")
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(Str).map(Some)
        }
    }
    struct Str;
    impl<'de> serde::de::Visitor<'de> for Str {
        type Value = Cow<'de, str>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Cow::Borrowed(v))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v.to_owned()))
        }
        fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v))
        }
    }
    deserializer.deserialize_option(OptStr)
}

/// `T` read from a JSON object only. serde's derived structs also accept an array, filling
/// the fields by position: no API server sends that, and a patch computed from such a reading
/// would not apply to the object as it is.
struct ObjectOnly<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for ObjectVisitor<T> {
            type Value = ObjectOnly<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(ObjectOnly)
            }
        }
        deserializer.deserialize_map(ObjectVisitor(std::marker::PhantomData))
    }
}

/// An object or null (`None`).
fn object_or_null<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<ObjectOnly<T>>::deserialize(deserializer)?.map(|object| object.0))
}

/// An object; null is the empty one (Kubernetes clients write `null` for empty maps).
fn object<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(object_or_null(deserializer)?.unwrap_or_default())
}

/// A list of objects, or null (`None`).
fn objects_or_null<'de, D, T>(deserializer: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    let list = Option::<Vec<ObjectOnly<T>>>::deserialize(deserializer)?;
    Ok(list.map(|list| list.into_iter().map(|object| object.0).collect()))
}

/// A list of objects; null is the empty list.
fn objects<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(objects_or_null(deserializer)?.unwrap_or_default())
}

/// The response half of an AdmissionReview. `allowed` is always true: the injector never
/// blocks a Pod.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    pub uid: String,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<&'static str>,
    /// base64 of the JSON Patch document.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub audit_annotations: BTreeMap<String, String>,
}

impl AdmissionResponse {
    pub fn allow(uid: &str) -> Self {
        Self {
            uid: uid.to_string(),
            allowed: true,
            ..Self::default()
        }
    }

    /// Attaches a JSON Patch document (already serialised).
    pub fn with_patch(mut self, patch_json: &[u8]) -> Self {
        self.patch_type = Some("JSONPatch");
        self.patch = Some(base64::engine::general_purpose::STANDARD.encode(patch_json));
        self
    }
}

/// Serialises a full AdmissionReview answer for `api_version` (echoing the request's).
///
/// Written field by field into one buffer sized up front, exactly as serde_json would write
/// the derived `Serialize` of the envelope (the tests compare both): every string escaped by
/// serde_json, except the base64 `patch`, whose alphabet needs no escaping.
pub fn encode_response(api_version: &str, response: &AdmissionResponse) -> Vec<u8> {
    let text = |s: &str| s.len() + 2;
    let size = 96
        + text(api_version)
        + text(&response.uid)
        + response.patch.as_deref().map_or(0, |p| 32 + text(p))
        + response.warnings.iter().map(|w| text(w) + 1).sum::<usize>()
        + response
            .audit_annotations
            .iter()
            .map(|(k, v)| text(k) + text(v) + 2)
            .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(b"{\"apiVersion\":");
    write_str(&mut out, api_version);
    out.extend_from_slice(b",\"kind\":");
    write_str(&mut out, KIND);
    out.extend_from_slice(b",\"response\":{\"uid\":");
    write_str(&mut out, &response.uid);
    out.extend_from_slice(if response.allowed {
        b",\"allowed\":true"
    } else {
        b",\"allowed\":false"
    });
    if let Some(patch_type) = response.patch_type {
        out.extend_from_slice(b",\"patchType\":");
        write_str(&mut out, patch_type);
    }
    if let Some(patch) = &response.patch {
        out.extend_from_slice(b",\"patch\":");
        if patch
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
        {
            out.push(b'"');
            out.extend_from_slice(patch.as_bytes());
            out.push(b'"');
        } else {
            write_str(&mut out, patch);
        }
    }
    if !response.warnings.is_empty() {
        out.extend_from_slice(b",\"warnings\":[");
        for (i, warning) in response.warnings.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(&mut out, warning);
        }
        out.push(b']');
    }
    if !response.audit_annotations.is_empty() {
        out.extend_from_slice(b",\"auditAnnotations\":{");
        for (i, (key, value)) in response.audit_annotations.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(&mut out, key);
            out.push(b':');
            write_str(&mut out, value);
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"}}");
    out
}

/// A JSON string, escaped as serde_json escapes it (writing into a `Vec` cannot fail).
fn write_str(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_only_what_it_needs_and_tolerates_nulls() {
        let body = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{
            "uid":"u1","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE",
            "namespace":"team-a","userInfo":{"username":"x"},"object":{"metadata":{
            "generateName":"api-","labels":{"app":"api","pullsecret-injector/inject":"disabled"},
            "annotations":null},"spec":{"initContainers":null,"containers":[{"name":"c","image":"nginx",
            "ports":[{"containerPort":80}]}],"imagePullSecrets":[{"name":"own"},{}]}}}}"#;
        let review: AdmissionReview<'_> = serde_json::from_slice(body).expect("decodes");
        let request = review.request.expect("request");
        let pod = request.object.expect("object");
        assert_eq!(pod.metadata.labels.inject.as_deref(), Some("disabled"));
        assert!(pod.metadata.annotations.mirror.is_none());
        let spec = pod.spec.expect("spec");
        assert!(spec.init_containers.is_empty());
        assert_eq!(spec.containers[0].image.as_deref(), Some("nginx"));
        let secrets = spec.image_pull_secrets.expect("present");
        assert_eq!(secrets[0].name.as_deref(), Some("own"));
        assert!(secrets[1].name.is_none());
    }

    #[test]
    fn objects_written_as_arrays_are_refused() {
        // serde's derived structs would read these by position and the patch built from that
        // reading would not apply to the object the API server holds.
        let wrap = |object: &str| {
            format!(
                r#"{{"request":{{"uid":"u","kind":{{"kind":"Pod"}},"operation":"CREATE","object":{object}}}}}"#
            )
        };
        for object in [
            r#"["meta"]"#,
            r#"{"spec":[[{"name":"i","image":"ghcr.io/acme/init"}]]}"#,
            r#"{"spec":{"containers":[["c","ghcr.io/acme/api"]]}}"#,
            r#"{"spec":{"initContainers":[["i","ghcr.io/acme/init"]]}}"#,
            r#"{"spec":{"volumes":[{"name":"m","image":["ghcr.io/acme/m"]}]}}"#,
            r#"{"spec":{"volumes":[["m",{"reference":"ghcr.io/acme/m"}]]}}"#,
            r#"{"spec":{"imagePullSecrets":[["own"]]}}"#,
            r#"{"metadata":[null,null,null,{"pullsecret-injector/inject":"enabled"}]}"#,
            r#"{"metadata":{"labels":["enabled"]}}"#,
        ] {
            let body = wrap(object);
            let decoded = serde_json::from_str::<AdmissionReview<'_>>(&body);
            assert!(decoded.is_err(), "{object} was read as {decoded:?}");
        }
        let body = r#"{"request":{"uid":"u","kind":["","v1","Pod"]}}"#;
        assert!(serde_json::from_str::<LooseReview<'_>>(body).is_err());
        // Objects and nulls still decode.
        let body =
            wrap(r#"{"metadata":null,"spec":{"containers":null,"volumes":[{"image":null}]}}"#);
        assert!(serde_json::from_str::<AdmissionReview<'_>>(&body).is_ok());
    }

    /// The envelope as serde would derive it: what [`encode_response`] must write, byte for byte.
    #[derive(Serialize)]
    struct ResponseReview<'a> {
        #[serde(rename = "apiVersion")]
        api_version: &'a str,
        kind: &'static str,
        response: &'a AdmissionResponse,
    }

    #[test]
    fn the_response_is_written_as_serde_would() {
        let mut full = AdmissionResponse::allow("u-\"1\"\u{7}é").with_patch(br#"[{"op":"add"}]"#);
        full.warnings = vec!["a \"quoted\" \\ warning\n".into(), "second".into()];
        full.audit_annotations
            .insert("b-key".into(), "v\u{1}".into());
        full.audit_annotations.insert("a-key".into(), "x,y".into());
        let mut odd_patch = AdmissionResponse::allow("u2");
        odd_patch.patch = Some("not \"base64\"".into());
        odd_patch.allowed = false;
        for (api_version, response) in [
            (API_VERSION_V1, AdmissionResponse::allow("u1")),
            (API_VERSION_V1BETA1, full),
            ("odd \"version\"", odd_patch),
        ] {
            let derived = serde_json::to_vec(&ResponseReview {
                api_version,
                kind: KIND,
                response: &response,
            })
            .expect("serialises");
            assert_eq!(
                String::from_utf8_lossy(&encode_response(api_version, &response)),
                String::from_utf8_lossy(&derived)
            );
        }
    }

    #[test]
    fn response_patch_is_base64() {
        let response = AdmissionResponse::allow("u1").with_patch(br#"[{"op":"add"}]"#);
        let json: serde_json::Value =
            serde_json::from_slice(&encode_response(API_VERSION_V1, &response)).expect("json");
        assert_eq!(json["response"]["patch"], "W3sib3AiOiJhZGQifV0=");
        assert_eq!(json["response"]["patchType"], "JSONPatch");
        assert_eq!(json["response"]["allowed"], true);
        assert!(json["response"].get("warnings").is_none());
    }
}
