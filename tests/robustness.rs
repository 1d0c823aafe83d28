//! Fuzz-style robustness: thousands of random and mutated bodies through the answer path and
//! the router. No input may panic; every answer is either HTTP 400 or a well-formed
//! AdmissionReview with `allowed: true` whose patch (if any) applies cleanly to the Pod.
//!
//! `ROBUSTNESS_CASES` (default 6000) and `ROBUSTNESS_SEED` change the run.

mod common;

use axum::http::StatusCode;
use common::{Reply, app, fixture, post};
use pullsecret_injector::core::decision::Endpoint;
use pullsecret_injector::webhook::handler::answer;
use serde_json::{Value, json};

const SEEDS: [&str; 6] = [
    "pod-create.json",
    "pod-existing-secrets.json",
    "pod-bad-images.json",
    "pod-opted-out.json",
    "secret-create.json",
    "pod-create-v1beta1.json",
];

fn random_string(rng: &mut fastrand::Rng) -> String {
    const PIECES: [&str; 16] = [
        "nginx",
        "ghcr.io/acme/",
        "docker.io",
        ":",
        "@sha256:",
        "/",
        "..",
        "[::1]",
        "localhost:5000",
        "A",
        "\u{0}",
        "é",
        "\\\"",
        "*",
        "-",
        "library",
    ];
    let n = rng.usize(0..6);
    (0..n).map(|_| PIECES[rng.usize(..PIECES.len())]).collect()
}

fn random_value(rng: &mut fastrand::Rng, depth: u32) -> Value {
    match rng.u8(0..8) {
        0 => Value::Null,
        1 => Value::Bool(rng.bool()),
        2 => json!(rng.i64(..)),
        3 => json!(rng.f64()),
        4 | 5 => Value::String(random_string(rng)),
        6 if depth < 3 => Value::Array(
            (0..rng.usize(0..4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ if depth < 3 => {
            let keys = [
                "name",
                "image",
                "containers",
                "imagePullSecrets",
                "labels",
                "spec",
                "metadata",
                "uid",
                "kind",
            ];
            Value::Object(
                (0..rng.usize(0..4))
                    .map(|_| {
                        (
                            keys[rng.usize(..keys.len())].to_string(),
                            random_value(rng, depth + 1),
                        )
                    })
                    .collect(),
            )
        }
        _ => Value::String(random_string(rng)),
    }
}

/// Replaces a random node of `node` (walking down at most `depth` levels) with a random value.
fn mutate_tree(rng: &mut fastrand::Rng, node: &mut Value, depth: u32) {
    let stop_here = depth == 0 || rng.u8(0..4) == 0;
    match node {
        Value::Object(map) if !stop_here && !map.is_empty() => {
            let i = rng.usize(..map.len());
            if let Some(child) = map.values_mut().nth(i) {
                mutate_tree(rng, child, depth - 1);
            }
        }
        Value::Array(items) if !stop_here && !items.is_empty() => {
            let i = rng.usize(..items.len());
            mutate_tree(rng, &mut items[i], depth - 1);
        }
        _ => *node = random_value(rng, 0),
    }
}

fn mutate_bytes(rng: &mut fastrand::Rng, bytes: &mut Vec<u8>) {
    for _ in 0..rng.usize(1..6) {
        if bytes.is_empty() {
            bytes.push(rng.u8(..));
            continue;
        }
        let i = rng.usize(..bytes.len());
        match rng.u8(0..4) {
            0 => bytes[i] = rng.u8(..),
            1 => bytes.truncate(i),
            2 => bytes.insert(i, *b"{}[]\",:\\".get(rng.usize(..8)).unwrap_or(&b'"')),
            _ => {
                let end = (i + rng.usize(1..64)).min(bytes.len());
                let copy = bytes[i..end].to_vec();
                bytes.splice(i..i, copy);
            }
        }
    }
}

/// Checks the properties every answer must have.
fn check(body: &[u8], status: StatusCode, answer_bytes: &[u8]) {
    if status == StatusCode::BAD_REQUEST {
        assert!(!answer_bytes.is_empty(), "a 400 carries a reason");
        return;
    }
    assert_eq!(
        status,
        StatusCode::OK,
        "only 200 or 400 for {}",
        String::from_utf8_lossy(body)
    );
    let reply = Reply::parse(answer_bytes);
    assert_eq!(reply.response()["allowed"], true);
    // serde skips unread strings without validating their escapes, so a body with, say, a lone
    // surrogate escape in an ignored field is answered although a strict parser rejects it.
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        assert!(reply.patch.is_none() || reply.response()["uid"].is_string());
        return;
    };
    assert_eq!(
        reply.response()["uid"],
        request["request"]["uid"],
        "uid echoed for {}",
        String::from_utf8_lossy(body)
    );
    if let Some(patch) = reply.patch {
        let patch: json_patch::Patch =
            serde_json::from_value(patch).expect("patch is a JSON Patch");
        let mut pod = request["request"]["object"].clone();
        json_patch::patch(&mut pod, &patch).expect("patch applies to the Pod it was made for");
    }
}

#[tokio::test]
async fn random_and_mutated_reviews_never_break_the_server() {
    let cases: usize = std::env::var("ROBUSTNESS_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6000);
    let seed: u64 = std::env::var("ROBUSTNESS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed);
    let mut rng = fastrand::Rng::with_seed(seed);
    let app = app();
    let seeds: Vec<Vec<u8>> = SEEDS.iter().map(|name| fixture(name)).collect();
    let (mut ok, mut rejected) = (0usize, 0usize);
    for case in 0..cases {
        let seed_body = &seeds[rng.usize(..seeds.len())];
        let body = match case % 3 {
            0 => {
                let mut doc: Value = serde_json::from_slice(seed_body).expect("fixture");
                for _ in 0..rng.usize(1..4) {
                    // Mostly inside the request, where the decision reads; sometimes anywhere.
                    let anywhere = rng.u8(0..10) == 0 || doc.get("request").is_none();
                    match doc.get_mut("request") {
                        Some(request) if !anywhere => mutate_tree(&mut rng, request, 8),
                        _ => mutate_tree(&mut rng, &mut doc, 8),
                    }
                }
                serde_json::to_vec(&doc).expect("json")
            }
            1 => {
                let mut bytes = seed_body.clone();
                mutate_bytes(&mut rng, &mut bytes);
                bytes
            }
            _ => (0..rng.usize(0..512)).map(|_| rng.u8(..)).collect(),
        };
        let endpoint = if rng.bool() {
            Endpoint::Mutate
        } else {
            Endpoint::Audit
        };
        // Most cases call the synchronous path directly; every 20th goes through the router.
        let (status, bytes) = if case % 20 == 0 {
            post(
                app.clone(),
                if endpoint == Endpoint::Mutate {
                    "/mutate"
                } else {
                    "/audit"
                },
                body.clone(),
            )
            .await
        } else {
            let a = answer(&app, endpoint, &body);
            (a.status, a.body)
        };
        check(&body, status, &bytes);
        if status == StatusCode::OK {
            ok += 1
        } else {
            rejected += 1
        }
    }
    // Both kinds of answer must have been exercised, or the generator is broken.
    assert!(
        ok > cases / 10 && rejected > cases / 10,
        "ok={ok} rejected={rejected}"
    );
}
