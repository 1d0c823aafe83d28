//! The `review_answer` target's machinery: a standalone App, Pods built from fuzzed fields, and
//! the checks on an answer (envelope, patch, reinvocation, order, completeness).

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use base64::Engine;
use pullsecret_injector::core::config::Config;
use pullsecret_injector::core::decision::Endpoint;
use pullsecret_injector::core::image;
use pullsecret_injector::core::policy::PolicyStore;
use pullsecret_injector::core::rules::{RegistryPattern, Rule, RuleSource};
use pullsecret_injector::webhook::handler;
use pullsecret_injector::webhook::state::App;
use serde_json::{Map, Value, json};

use crate::check;

pub const OWN_NAMESPACE: &str = "pullsecret-injector";

/// (pattern, secrets, pullPolicy Always). Overlapping secrets on purpose: `shared` and
/// `dockerhub` serve several rules, `own` is a name Pods also list themselves.
pub const RULES: &[(&str, &[&str], bool)] = &[
    ("docker.io", &["dockerhub"], false),
    ("ghcr.io/acme", &["ghcr-acme"], true),
    ("*.dkr.ecr.*.amazonaws.com", &["ecr", "ecr-backup"], false),
    (
        "registry.internal.example.com:5000",
        &["internal-registry"],
        false,
    ),
    ("quay.io/team", &["shared", "quay-team"], false),
    ("gcr.io", &["shared"], false),
    ("localhost:5000/dev", &["local", "dockerhub"], true),
    ("ghcr.io/acme/team", &["own"], false),
];

/// The default settings (enforce, opt-in, kube-system & co. excluded) with [`RULES`].
pub fn app() -> &'static App {
    static APP: OnceLock<App> = OnceLock::new();
    APP.get_or_init(|| {
        let rules = RULES
            .iter()
            .enumerate()
            .map(|(index, (pattern, secrets, always))| Rule {
                pattern: RegistryPattern::parse(pattern).expect("fuzz rule"),
                secrets: secrets.iter().map(|s| s.to_string()).collect(),
                pull_policy_always: *always,
                source: RuleSource::Config { index },
                scope: Default::default(),
            })
            .collect();
        let config = Config {
            rules,
            ..Config::default()
        };
        App::standalone(PolicyStore::new(config), Some(OWN_NAMESPACE.into()))
    })
}

// ---------------------------------------------------------------------------------------------
// Structured input: fixed-size fields only, so that every byte string decodes and a seed can be
// written by hand (see seeds/README.md).

const IMAGES: &[&str] = &[
    "nginx",
    "nginx:1.27",
    "docker.io/library/nginx",
    "index.docker.io/acme/app",
    "registry-1.docker.io/acme/app",
    "ghcr.io/acme/api:v1",
    "ghcr.io/acme-evil/api",
    "ghcr.io/acme/team/x",
    "GHCR.IO/acme/api",
    "123456789012.dkr.ecr.eu-west-1.amazonaws.com/api:2",
    "registry.internal.example.com:5000/app",
    "registry.internal.example.com/app",
    "quay.io/team/app",
    "quay.io/teamx/app",
    "gcr.io/p/img",
    "localhost:5000/dev/tool",
    "localhost/dev/tool",
    "NOT VALID",
    "",
    "busybox@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "ghcr.io/acme/api:1@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "mcr.microsoft.com/dotnet/aspnet:8.0",
    "ghcr.io/acme",
    "docker.io/acme/app",
];
const HOSTS: &[&str] = &[
    "",
    "ghcr.io/",
    "ghcr.io/acme/",
    "quay.io/",
    "docker.io/",
    "localhost:5000/",
    "gcr.io/",
    "1.dkr.ecr.x.amazonaws.com/",
    "registry.internal.example.com:5000/",
];
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789./:-_@Ae";
const SECRETS: &[&str] = &[
    "dockerhub",
    "ghcr-acme",
    "ecr",
    "ecr-backup",
    "own",
    "shared",
    "local",
    "quay-team",
    "internal-registry",
    "x",
    "Dockerhub",
];
const POLICIES: &[Option<&str>] = &[
    None,
    Some("Always"),
    Some("IfNotPresent"),
    Some("Never"),
    Some(""),
];
const UIDS: &[&str] = &[
    "0d9f3c6e-2d44-4b1c-9a2a-1f6f8e0c1b2a",
    "u-1",
    "ä-ü",
    "\"quoted\"",
    "a\\b",
    "",
];
const NAMESPACES: &[&str] = &["team-a", "team-b", "kube-system", OWN_NAMESPACE, ""];
const OPERATIONS: &[&str] = &["CREATE", "CREATE", "CREATE", "UPDATE", "DELETE", "CONNECT"];
const POD_LABELS: &[Option<&str>] = &[
    None,
    Some("enabled"),
    Some("audit"),
    Some("disabled"),
    Some("other"),
];

#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct ImageIn {
    /// 0-2: a listed image; 3: a host plus free text; 4: free text; 5: no field; 6: null.
    pub kind: u8,
    pub index: u8,
    pub len: u8,
    pub free: [u8; 10],
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct ContainerIn {
    pub image: ImageIn,
    /// Index into the pull policies; past the end: `null`.
    pub policy: u8,
    /// Odd: an extra field the decoder must skip.
    pub extra: u8,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct VolumeIn {
    /// 0-3: an image volume; 4: a configMap volume; 5: `image: {}`; 6: `image: null`.
    pub kind: u8,
    pub image: ImageIn,
    pub policy: u8,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct SecretIn {
    /// 0-3: a listed name; 4: `""`; 5: `{}`; 6: `null` name; 7: a free name.
    pub kind: u8,
    pub index: u8,
}

#[derive(Arbitrary, Debug, Clone)]
pub struct PodInput {
    /// 0: v1; 1: v1beta1; 2: no apiVersion.
    pub api: u8,
    pub uid: u8,
    pub operation: u8,
    /// Even: /mutate; odd: /audit.
    pub endpoint: u8,
    pub namespace: u8,
    pub label: u8,
    pub mirror: u8,
    /// 0: a spec; 1: `spec: null`; 2: no spec; others: a spec.
    pub spec: u8,
    pub init_count: u8,
    pub init: [ContainerIn; 3],
    pub main_count: u8,
    pub main: [ContainerIn; 4],
    pub volume_count: u8,
    pub volumes: [VolumeIn; 3],
    /// 0: absent; 1: null; 2: `[]`; others: a list of `secret_count` entries.
    pub secrets_form: u8,
    pub secret_count: u8,
    pub secrets: [SecretIn; 4],
    /// 0: namespace in metadata too; others: request namespace only.
    pub meta_namespace: u8,
}

fn pick<T: Copy>(list: &[T], index: u8) -> T {
    list[usize::from(index) % list.len()]
}

fn free_text(len: u8, bytes: &[u8]) -> String {
    let len = usize::from(len) % (bytes.len() + 1);
    bytes[..len]
        .iter()
        .map(|b| char::from(pick(ALPHABET, *b)))
        .collect()
}

/// The image field's value: `None` leaves it out.
fn image_value(image: &ImageIn) -> Option<Value> {
    match image.kind % 7 {
        0..=2 => Some(Value::from(pick(IMAGES, image.index))),
        3 => Some(Value::from(format!(
            "{}{}",
            pick(HOSTS, image.index),
            free_text(image.len, &image.free)
        ))),
        4 => Some(Value::from(free_text(image.len, &image.free))),
        5 => None,
        _ => Some(Value::Null),
    }
}

fn policy_value(policy: u8) -> Option<Value> {
    match POLICIES.get(usize::from(policy % 6)) {
        Some(None) => None,
        Some(Some(p)) => Some(Value::from(*p)),
        None => Some(Value::Null),
    }
}

fn container(prefix: &str, i: usize, c: &ContainerIn) -> Value {
    let mut map = Map::new();
    map.insert("name".into(), Value::from(format!("{prefix}{i}")));
    if let Some(image) = image_value(&c.image) {
        map.insert("image".into(), image);
    }
    if let Some(policy) = policy_value(c.policy) {
        map.insert("imagePullPolicy".into(), policy);
    }
    if c.extra % 2 == 1 {
        map.insert(
            "ports".into(),
            json!([{"containerPort": 80, "protocol": "TCP"}]),
        );
        map.insert("restartPolicy".into(), Value::from("Always"));
    }
    Value::Object(map)
}

fn volume(i: usize, v: &VolumeIn) -> Value {
    let name = format!("v{i}");
    match v.kind % 7 {
        0..=3 => {
            let mut source = Map::new();
            if let Some(image) = image_value(&v.image) {
                source.insert("reference".into(), image);
            }
            if let Some(policy) = policy_value(v.policy) {
                source.insert("pullPolicy".into(), policy);
            }
            json!({"name": name, "image": source})
        }
        4 => json!({"name": name, "configMap": {"name": "cfg"}}),
        5 => json!({"name": name, "image": {}}),
        _ => json!({"name": name, "image": null}),
    }
}

fn secret(s: &SecretIn) -> Value {
    match s.kind % 8 {
        0..=3 => json!({"name": pick(SECRETS, s.index)}),
        4 => json!({"name": ""}),
        5 => json!({}),
        6 => json!({"name": null}),
        _ => json!({"name": format!("s{}", s.index % 4)}),
    }
}

impl PodInput {
    pub fn endpoint(&self) -> Endpoint {
        if self.endpoint % 2 == 0 {
            Endpoint::Mutate
        } else {
            Endpoint::Audit
        }
    }

    /// The AdmissionReview body.
    pub fn body(&self) -> Value {
        let namespace = pick(NAMESPACES, self.namespace);
        let mut metadata = Map::new();
        metadata.insert("generateName".into(), Value::from("web-"));
        if self.meta_namespace % 2 == 0 || namespace.is_empty() {
            // An empty request namespace falls back to the Pod's (and then it is team-a).
            let ns = if namespace.is_empty() {
                "team-a"
            } else {
                namespace
            };
            metadata.insert("namespace".into(), Value::from(ns));
        }
        if let Some(label) = pick(POD_LABELS, self.label) {
            metadata.insert(
                "labels".into(),
                json!({"app": "web", "pullsecret-injector/inject": label}),
            );
        }
        if self.mirror % 8 == 7 {
            metadata.insert(
                "annotations".into(),
                json!({"kubernetes.io/config.mirror": "abc"}),
            );
        }
        let mut pod = Map::new();
        pod.insert("metadata".into(), Value::Object(metadata));
        match self.spec % 8 {
            1 => {
                pod.insert("spec".into(), Value::Null);
            }
            2 => {}
            _ => {
                let mut spec = Map::new();
                let n = usize::from(self.init_count % 4);
                if n > 0 {
                    let list = self.init[..n]
                        .iter()
                        .enumerate()
                        .map(|(i, c)| container("init", i, c));
                    spec.insert("initContainers".into(), list.collect());
                }
                let n = usize::from(self.main_count % 5);
                let list = self.main[..n]
                    .iter()
                    .enumerate()
                    .map(|(i, c)| container("c", i, c));
                spec.insert("containers".into(), list.collect());
                let n = usize::from(self.volume_count % 4);
                if n > 0 {
                    let list = self.volumes[..n]
                        .iter()
                        .enumerate()
                        .map(|(i, v)| volume(i, v));
                    spec.insert("volumes".into(), list.collect());
                }
                match self.secrets_form % 6 {
                    0 => {}
                    1 => {
                        spec.insert("imagePullSecrets".into(), Value::Null);
                    }
                    2 => {
                        spec.insert("imagePullSecrets".into(), json!([]));
                    }
                    _ => {
                        let n = usize::from(self.secret_count % 5);
                        let list = self.secrets[..n].iter().map(secret);
                        spec.insert("imagePullSecrets".into(), list.collect());
                    }
                }
                spec.insert("restartPolicy".into(), Value::from("Always"));
                pod.insert("spec".into(), Value::Object(spec));
            }
        }
        let mut request = json!({
            "uid": pick(UIDS, self.uid),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": pick(OPERATIONS, self.operation),
            "namespace": namespace,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": Value::Object(pod),
        });
        if pick(OPERATIONS, self.operation) == "DELETE" {
            request["oldObject"] = request["object"].take();
        }
        let mut review = json!({"kind": "AdmissionReview", "request": request});
        match self.api % 3 {
            0 => review["apiVersion"] = Value::from("admission.k8s.io/v1"),
            1 => review["apiVersion"] = Value::from("admission.k8s.io/v1beta1"),
            _ => {}
        }
        review
    }

    /// Whether the injector must act on this Pod (enforce mode, in scope).
    pub fn enforced(&self) -> bool {
        let namespace = match pick(NAMESPACES, self.namespace) {
            "" => "team-a",
            ns => ns,
        };
        let label = pick(POD_LABELS, self.label);
        self.endpoint() == Endpoint::Mutate
            && pick(OPERATIONS, self.operation) == "CREATE"
            && !matches!(
                namespace,
                "kube-system" | "kube-public" | "kube-node-lease" | OWN_NAMESPACE
            )
            && !matches!(label, Some("audit" | "disabled"))
            && self.mirror % 8 != 7
    }
}

// ---------------------------------------------------------------------------------------------
// The checks.

/// What an answer said, decoded.
struct Reply {
    status: u16,
    review: Option<Value>,
    patch: Option<Value>,
}

fn answer(endpoint: Endpoint, body: &[u8]) -> Reply {
    let answer = handler::answer(app(), endpoint, body);
    let status = answer.status.as_u16();
    check("status-200-or-400", status == 200 || status == 400, || {
        format!("HTTP {status}")
    });
    if status != 200 {
        return Reply {
            status,
            review: None,
            patch: None,
        };
    }
    let review: Value = match serde_json::from_slice(&answer.body) {
        Ok(v) => v,
        Err(e) => {
            check("answer-is-json", false, || {
                format!("{e}: {}", String::from_utf8_lossy(&answer.body))
            });
            return Reply {
                status,
                review: None,
                patch: None,
            };
        }
    };
    let response = &review["response"];
    check(
        "answer-is-admission-review",
        review["kind"] == "AdmissionReview",
        || review.to_string(),
    );
    check(
        "answer-allowed",
        response["allowed"] == Value::Bool(true),
        || review.to_string(),
    );
    let patch = response.get("patch").map(|p| {
        check("patch-type", response["patchType"] == "JSONPatch", || {
            review.to_string()
        });
        let b64 = p
            .as_str()
            .unwrap_or_else(|| panic!("property patch-base64 violated: {p}"));
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_else(|e| panic!("property patch-base64 violated: {e}: {b64}"));
        serde_json::from_slice::<Value>(&raw)
            .unwrap_or_else(|e| panic!("property patch-json violated: {e}"))
    });
    Reply {
        status,
        review: Some(review),
        patch,
    }
}

fn names(list: &[Value]) -> Vec<&str> {
    list.iter().filter_map(|e| e["name"].as_str()).collect()
}

/// Checks one review body (raw bytes or built). `request_value` is the body as a JSON tree, when
/// it is one; `expect_200` when the body is certainly an AdmissionReview with a uid.
pub fn check_body(endpoint: Endpoint, body: &[u8], expect_200: bool, enforced: Option<bool>) {
    let reply = answer(endpoint, body);
    let tree: Option<Value> = serde_json::from_slice(body).ok();
    if expect_200 {
        check("valid-review-answered-200", reply.status == 200, || {
            String::from_utf8_lossy(body).into_owned()
        });
    }
    let Some(review) = &reply.review else { return };
    let response = &review["response"];
    if let Some(tree) = &tree {
        if let Some(uid) = tree["request"]["uid"].as_str() {
            check("uid-echoed", response["uid"] == uid, || {
                format!("request uid {uid:?}, answer {}", response["uid"])
            });
        }
        let want = tree["apiVersion"].as_str().unwrap_or("admission.k8s.io/v1");
        check("api-version-echoed", review["apiVersion"] == want, || {
            format!("request {want:?}, answer {}", review["apiVersion"])
        });
    }
    let Some(patch_value) = &reply.patch else {
        if enforced == Some(true) {
            if let Some(object) = tree.as_ref().map(|t| &t["request"]["object"]) {
                complete(object, "no patch, yet");
            }
        }
        return;
    };
    check("audit-never-patches", endpoint == Endpoint::Mutate, || {
        patch_value.to_string()
    });
    check("patch-only-when-enforced", enforced != Some(false), || {
        patch_value.to_string()
    });
    let patch: json_patch::Patch = serde_json::from_value(patch_value.clone())
        .unwrap_or_else(|e| panic!("property patch-is-json-patch violated: {e}: {patch_value}"));
    // Only adds: the list (created or appended to) and pull policies set to Always.
    for op in patch_value
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let path = op["path"].as_str().unwrap_or_default();
        let tokens: Vec<&str> = path.split('/').collect();
        let allowed = op["op"] == "add"
            && match tokens.as_slice() {
                ["", "spec", "imagePullSecrets"] => op["value"].is_array(),
                ["", "spec", "imagePullSecrets", "-"] => op["value"].is_object(),
                [
                    "",
                    "spec",
                    "initContainers" | "containers",
                    i,
                    "imagePullPolicy",
                ]
                | ["", "spec", "volumes", i, "image", "pullPolicy"] => {
                    i.parse::<usize>().is_ok() && op["value"] == "Always"
                }
                _ => false,
            };
        check("patch-ops-allowed", allowed, || op.to_string());
    }
    let Some(tree) = tree else {
        // A body serde_json's typed decoder accepted but its tree decoder does not (a lone
        // surrogate in a skipped field, say): nothing to apply the patch to.
        return;
    };
    let object = &tree["request"]["object"];
    // An object written with arrays where the Pod has objects is not read (serde's derived
    // structs would read it by position, and patch paths the array does not have).
    check(
        "positional-struct-not-patched",
        !has_positional_struct(object),
        || format!("patch {patch_value} for {object}"),
    );
    let mut patched = object.clone();
    if let Err(e) = json_patch::patch(&mut patched, &patch) {
        check("patch-applies", false, || {
            format!("{e}\npatch: {patch_value}\nobject: {object}")
        });
        return;
    }

    // The Pod's own entries first and in order; nothing added twice or already listed.
    let before = object["spec"]["imagePullSecrets"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let after = patched["spec"]["imagePullSecrets"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    check(
        "own-secrets-first-in-order",
        after.len() >= before.len() && after[..before.len()] == before[..],
        || format!("before {before:?}\nafter {after:?}"),
    );
    let added = &after[before.len().min(after.len())..];
    let added_names = names(added);
    check(
        "added-entries-are-names",
        added_names.len() == added.len()
            && added
                .iter()
                .all(|e| e.as_object().is_some_and(|m| m.len() == 1)),
        || format!("{added:?}"),
    );
    let listed = names(&before);
    for (i, name) in added_names.iter().enumerate() {
        check(
            "no-secret-added-twice",
            !added_names[..i].contains(name),
            || format!("{name} in {added_names:?}"),
        );
        check("no-listed-secret-added", !listed.contains(name), || {
            format!("{name}: Pod lists {listed:?}")
        });
        check(
            "added-secret-is-a-rule-secret",
            RULES.iter().any(|(_, s, _)| s.contains(name)),
            || name.to_string(),
        );
    }
    if enforced == Some(true) {
        complete(&patched, "after the patch");
    }

    // Reinvocation: the patched Pod, answered again, needs nothing more.
    let mut again = tree.clone();
    again["request"]["object"] = patched.clone();
    let again_body = serde_json::to_vec(&again).expect("serialises");
    let second = answer(endpoint, &again_body);
    check("reinvocation-answered", second.status == 200, || {
        String::from_utf8_lossy(&again_body).into_owned()
    });
    check("reinvocation-no-patch", second.patch.is_none(), || {
        format!("second patch {:?}\npatched object {patched}", second.patch)
    });
}

/// Whether a Pod has an array where an object belongs (`spec`, a container, a volume or its
/// `image`, a pull secret entry, `metadata`).
fn has_positional_struct(object: &Value) -> bool {
    let spec = &object["spec"];
    let items = |v: &Value| v.as_array().cloned().unwrap_or_default();
    object["metadata"].is_array()
        || spec.is_array()
        || [
            "initContainers",
            "containers",
            "volumes",
            "imagePullSecrets",
        ]
        .iter()
        .any(|list| items(&spec[*list]).iter().any(Value::is_array))
        || items(&spec["volumes"])
            .iter()
            .any(|v| v["image"].is_array())
}

/// Enforced and in scope: every image's rule has all its secrets listed, and every image whose
/// rule says so is pulled Always.
fn complete(object: &Value, when: &str) {
    let spec = &object["spec"];
    let listed = spec["imagePullSecrets"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let listed = names(&listed);
    let policy = app().policy.load();
    let mut images: Vec<(&str, &Value)> = Vec::new();
    for list in ["initContainers", "containers"] {
        for c in spec[list].as_array().map(Vec::as_slice).unwrap_or_default() {
            if let Some(text) = c["image"].as_str() {
                images.push((text, &c["imagePullPolicy"]));
            }
        }
    }
    for v in spec["volumes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        if let Some(text) = v["image"]["reference"].as_str() {
            images.push((text, &v["image"]["pullPolicy"]));
        }
    }
    for (text, pull_policy) in images {
        let Ok(parsed) = image::parse(text) else {
            continue;
        };
        // The fuzz configuration declares no scopes: every namespace gets the same rule.
        let Some(rule) = policy.rules().best_match(&parsed, "team-a", None) else {
            continue;
        };
        for secret in &rule.secrets {
            check(
                "every-needed-secret-listed",
                listed.contains(&secret.as_str()),
                || {
                    format!(
                        "{when}: image {text:?} needs {secret} (rule {}), Pod lists {listed:?}",
                        rule.pattern
                    )
                },
            );
        }
        if rule.pull_policy_always {
            check("pull-policy-always-set", pull_policy == "Always", || {
                format!(
                    "{when}: image {text:?} (rule {}) has pull policy {pull_policy}",
                    rule.pattern
                )
            });
        }
    }
}
