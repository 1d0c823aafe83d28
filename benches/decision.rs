//! The whole decision path on a realistic 5 KiB Pod review: decode, decide, build the patch,
//! encode the response (`webhook::handler::answer`), plus its parts.
//!
//! Run: `cargo bench --bench decision`

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pullsecret_injector::core::config::{self, Config};
use pullsecret_injector::core::decision::Endpoint;
use pullsecret_injector::core::policy::PolicyStore;
use pullsecret_injector::core::rules::{RegistryPattern, Rule, RuleSource};
use pullsecret_injector::webhook::handler::answer;
use pullsecret_injector::webhook::state::App;

fn load(path: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The bench config plus `extra` rules for registries the review does not use.
fn config_with(extra: usize) -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/config.yaml");
    let mut config = config::load(&path).expect("bench config");
    for i in 0..extra {
        config.rules.push(Rule {
            pattern: RegistryPattern::parse(&format!("registry{i}.example.com/team{i}"))
                .expect("pattern"),
            secrets: vec![format!("extra-{i}")],
            pull_policy_always: false,
            source: RuleSource::Config { index: 4 + i },
            scope: Default::default(),
        });
    }
    config
}

fn bench(c: &mut Criterion) {
    let review = load("bench/review.json");
    let mut group = c.benchmark_group("answer");
    group.throughput(Throughput::Bytes(review.len() as u64));
    for extra in [0, 50] {
        let app = App::standalone(PolicyStore::new(config_with(extra)), None);
        let sanity = answer(&app, Endpoint::Mutate, &review);
        assert!(
            String::from_utf8_lossy(&sanity.body).contains("\"patch\""),
            "the bench review must be patched"
        );
        group.bench_function(format!("5KiB_review_{}_rules", 4 + extra), |b| {
            b.iter(|| answer(black_box(&app), Endpoint::Mutate, black_box(&review)))
        });
    }
    let app = App::standalone(PolicyStore::new(config_with(0)), None);
    group.bench_function("5KiB_review_audit", |b| {
        b.iter(|| answer(black_box(&app), Endpoint::Audit, black_box(&review)))
    });
    group.finish();

    let mut parts = c.benchmark_group("parts");
    parts.bench_function("decode_review", |b| {
        b.iter(|| {
            serde_json::from_slice::<pullsecret_injector::core::review::AdmissionReview<'_>>(
                black_box(&review),
            )
            .map(|r| r.request.is_some())
        })
    });
    parts.bench_function("decode_review_from_str", |b| {
        b.iter(|| {
            let text = std::str::from_utf8(black_box(&review)).expect("utf-8");
            serde_json::from_str::<pullsecret_injector::core::review::AdmissionReview<'_>>(text)
                .map(|r| r.request.is_some())
        })
    });
    parts.bench_function("skip_review_floor", |b| {
        b.iter(|| serde_json::from_slice::<serde::de::IgnoredAny>(black_box(&review)).is_ok())
    });
    parts.bench_function("value_tree_review", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&review)).is_ok())
    });
    let images = [
        "nginx:1.25",
        "ghcr.io/acme/api:2.1",
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com/payments/worker@sha256:01e16778467cf8fa55bc6be9a2c34f7af1f9897dd3f7621feb1bdcef92f235ac",
    ];
    parts.bench_function("parse_3_images", |b| {
        b.iter(|| {
            images
                .iter()
                .filter(|i| pullsecret_injector::core::image::parse(black_box(i)).is_ok())
                .count()
        })
    });
    parts.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
