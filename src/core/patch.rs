//! Turns a [`Plan`](crate::core::decision::Plan) into a JSON Patch (RFC 6902) built from typed operations.
//!
//! `spec.imagePullSecrets` is added whole when the Pod has none and appended to otherwise, so
//! the Pod's own entries are never removed or reordered. Applying the patched Pod again yields
//! an empty plan, hence no patch (reinvocation-safe).

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use serde_json::{Value, json};

use crate::core::decision::{ImageSource, Plan};

/// The patch that enforces `plan`, or `None` when it changes nothing.
pub fn build(plan: &Plan<'_>) -> Option<Patch> {
    if !plan.changes_pod() {
        return None;
    }
    let mut ops = Vec::with_capacity(plan.secrets.len() + 1);
    let reference = |name: &str| json!({ "name": name });
    if !plan.secrets.is_empty() {
        if plan.has_pull_secret_list {
            for secret in &plan.secrets {
                ops.push(add(
                    &["spec", "imagePullSecrets", "-"],
                    reference(secret.name),
                ));
            }
        } else {
            let list = plan.secrets.iter().map(|s| reference(s.name)).collect();
            ops.push(add(&["spec", "imagePullSecrets"], Value::Array(list)));
        }
    }
    for image in plan.images.iter().filter(|i| i.set_pull_policy_always) {
        let index = image.index.to_string();
        let list = image.source.json_field();
        let path: &[&str] = match image.source {
            ImageSource::Volume => &["spec", list, &index, "image", "pullPolicy"],
            ImageSource::InitContainer | ImageSource::Container => {
                &["spec", list, &index, "imagePullPolicy"]
            }
        };
        ops.push(add(path, Value::from("Always")));
    }
    Some(Patch(ops))
}

fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(tokens.iter().copied()),
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::decision::tests::policy;
    use crate::core::decision::{Context, Decision, decide};
    use crate::core::facts::NothingKnown;
    use crate::core::review::Pod;

    /// Decides for `pod_json` and returns the patch as JSON (or None).
    fn patch_for(pod_json: &str) -> Option<Value> {
        let pod: Pod<'_> = serde_json::from_str(pod_json).expect("pod");
        let policy = policy();
        let ctx = Context::new(&policy, &NothingKnown);
        let Decision::Plan(plan) = decide(&pod, "team-a", &ctx) else {
            panic!("skipped")
        };
        build(&plan).map(|p| serde_json::to_value(p).expect("serialises"))
    }

    #[test]
    fn creates_the_list_when_absent_and_appends_when_present() {
        let cases = [
            (
                r#"{"spec":{"containers":[{"name":"a","image":"nginx"}]}}"#,
                Some(
                    json!([{"op":"add","path":"/spec/imagePullSecrets","value":[{"name":"dockerhub"}]}]),
                ),
            ),
            (
                r#"{"spec":{"containers":[{"name":"a","image":"nginx"}],"imagePullSecrets":null}}"#,
                Some(
                    json!([{"op":"add","path":"/spec/imagePullSecrets","value":[{"name":"dockerhub"}]}]),
                ),
            ),
            (
                r#"{"spec":{"containers":[{"name":"a","image":"nginx"}],"imagePullSecrets":[{"name":"own"},{"name":""}]}}"#,
                Some(
                    json!([{"op":"add","path":"/spec/imagePullSecrets/-","value":{"name":"dockerhub"}}]),
                ),
            ),
            (
                r#"{"spec":{"containers":[{"name":"a","image":"nginx"}],"imagePullSecrets":[{"name":"dockerhub"}]}}"#,
                None,
            ),
            (
                r#"{"spec":{"initContainers":[{"name":"i","image":"ghcr.io/acme/init"}],"containers":[{"name":"a","image":"nginx"}]}}"#,
                Some(json!([
                    {"op":"add","path":"/spec/imagePullSecrets","value":[{"name":"ghcr-acme"},{"name":"dockerhub"}]},
                    {"op":"add","path":"/spec/initContainers/0/imagePullPolicy","value":"Always"}
                ])),
            ),
            (
                r#"{"spec":{"containers":[{"name":"a","image":"quay.io/x/y"}]}}"#,
                None,
            ),
            (
                r#"{"spec":{"containers":[{"name":"a","image":"quay.io/x/y"}],"volumes":[{"name":"m","image":{"reference":"ghcr.io/acme/m"}}]}}"#,
                Some(json!([
                    {"op":"add","path":"/spec/imagePullSecrets","value":[{"name":"ghcr-acme"}]},
                    {"op":"add","path":"/spec/volumes/0/image/pullPolicy","value":"Always"}
                ])),
            ),
        ];
        for (pod, want) in cases {
            assert_eq!(patch_for(pod), want, "{pod}");
        }
    }

    #[test]
    fn applying_the_patch_then_deciding_again_changes_nothing() {
        let pods = [
            r#"{"spec":{"containers":[{"name":"a","image":"nginx"},{"name":"b","image":"ghcr.io/acme/b"}]}}"#,
            r#"{"spec":{"containers":[{"name":"a","image":"ghcr.io/acme/a","imagePullPolicy":"IfNotPresent"}],"imagePullSecrets":[{"name":"x"}]}}"#,
            r#"{"spec":{"containers":[{"name":"a","image":"nginx"}],"volumes":[{"name":"m","image":{"reference":"ghcr.io/acme/m","pullPolicy":"IfNotPresent"}}]}}"#,
        ];
        for pod in pods {
            let mut doc: Value = serde_json::from_str(pod).expect("json");
            let patch: Patch =
                serde_json::from_value(patch_for(pod).expect("a patch")).expect("patch");
            json_patch::patch(&mut doc, &patch).expect("applies");
            let again = serde_json::to_string(&doc).expect("json");
            assert_eq!(patch_for(&again), None, "second pass on {again}");
            // The Pod's own entries stay first and in order.
            if pod.contains(r#""name":"x""#) {
                assert_eq!(doc["spec"]["imagePullSecrets"][0]["name"], "x");
            }
        }
    }
}
