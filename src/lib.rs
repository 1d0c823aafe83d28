//! pullsecret-injector: a mutating admission webhook that adds the right `imagePullSecrets`
//! to Pods, chosen from each container image's registry host and path.
//!
//! # Request flow
//! `server` (TLS, HTTP/1.1 + HTTP/2) → `admission` (body limits, one span per review) →
//! `review` (borrowed decode of the AdmissionReview) → `decision` (scope, one rule per image
//! via `image` + `rules`) → `patch` (typed JSON Patch) → `review` (encoded response).
//!
//! # Layout
//! - Pure decision code, no I/O: [`image`], [`rules`], [`config`], [`decision`], [`patch`],
//!   [`review`].
//! - I/O shell: [`admission`], [`server`], [`tls`], [`reload`], [`admin`], [`metrics`],
//!   [`telemetry`], [`shutdown`], [`serve`] (wiring), [`app`] (shared state), [`policy`].
//! - Cluster mode: [`cluster`] (namespace and Secret caches, discovery, sync).
//! - Commands: [`explain`] (offline), [`audit`] (live cluster), `check-config` in `main`.

pub mod admin;
pub mod admission;
pub mod app;
pub mod audit;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod decision;
pub mod explain;
pub mod image;
pub mod metrics;
pub mod patch;
pub mod policy;
pub mod reload;
pub mod review;
pub mod rules;
pub mod serve;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
