//! Turns a [`Plan`] into a JSON Patch (RFC 6902) built from typed operations.
//!
//! `spec.imagePullSecrets` is added whole when the Pod has none and appended to otherwise, so
//! the Pod's own entries are never removed or reordered. Applying the patched Pod again yields
//! an empty plan, hence no patch (reinvocation-safe).

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use serde_json::{Value, json};

use crate::decision::Plan;

/// The patch that enforces `plan`, or `None` when it changes nothing.
pub fn build(plan: &Plan<'_>) -> Option<Patch> {
    if !plan.changes_pod() {
        return None;
    }
    let mut ops = Vec::with_capacity(plan.add.len() + 1);
    let reference = |name: &str| json!({ "name": name });
    if !plan.add.is_empty() {
        if plan.has_pull_secret_list {
            for secret in &plan.add {
                ops.push(add(
                    &["spec", "imagePullSecrets", "-"],
                    reference(secret.name),
                ));
            }
        } else {
            let list = plan.add.iter().map(|s| reference(s.name)).collect();
            ops.push(add(&["spec", "imagePullSecrets"], Value::Array(list)));
        }
    }
    for container in plan.containers.iter().filter(|c| c.set_pull_policy_always) {
        let index = container.index.to_string();
        ops.push(add(
            &[
                "spec",
                container.list.json_field(),
                &index,
                "imagePullPolicy",
            ],
            Value::from("Always"),
        ));
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
    use crate::config::Config;
    use crate::decision::{Context, Decision, Endpoint, NamespaceLabel, NoSecretIndex, decide};
    use crate::review::Pod;
    use crate::rules::{RegistryPattern, Rule, RuleSet, RuleSource};

    fn rules() -> RuleSet {
        RuleSet::new(vec![
            Rule {
                pattern: RegistryPattern::parse("docker.io").expect("valid"),
                secrets: vec!["dockerhub".into()],
                pull_policy_always: false,
                source: RuleSource::Config { index: 0 },
            },
            Rule {
                pattern: RegistryPattern::parse("ghcr.io/acme").expect("valid"),
                secrets: vec!["ghcr-acme".into()],
                pull_policy_always: true,
                source: RuleSource::Config { index: 1 },
            },
        ])
    }

    /// Decides for `pod_json` and returns the patch as JSON (or None).
    fn patch_for(pod_json: &str) -> Option<Value> {
        let pod: Pod<'_> = serde_json::from_str(pod_json).expect("pod");
        let config = Config::default();
        let rules = rules();
        let ctx = Context {
            config: &config,
            rules: &rules,
            endpoint: Endpoint::Mutate,
            own_namespace: None,
            namespace: "team-a",
            namespace_label: NamespaceLabel::Unknown,
            secrets: &NoSecretIndex,
        };
        let Decision::Plan(plan) = decide(&pod, &ctx) else {
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
