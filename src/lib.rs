//! pullsecret-injector: a mutating admission webhook that adds the right `imagePullSecrets`
//! to Pods, chosen from each image's registry host and path.
//!
//! # The admission path, in five files
//! 1. [`webhook::handler`]: reads the body (size and time limits), guards against panics.
//! 2. [`core::review`]: decodes the AdmissionReview into borrowed, typed structs.
//! 3. [`core::decision`]: scope (namespace, labels, mode), then one rule per image
//!    ([`core::image`] parses references, [`core::rules`] matches them).
//! 4. [`core::verdict`]: the complete answer: outcome, patch, warnings, audit annotation.
//! 5. [`core::patch`]: the typed JSON Patch; back in the handler, [`core::review`] encodes it.
//!
//! # Layout
//! - [`core`]: pure and synchronous; everything that decides.
//! - [`webhook`]: the server: TLS listener, handlers, reloads, admin endpoints, and
//!   [`webhook::run`], the composition root of `serve`. It only reads the cluster.
//! - [`controller`]: the composition root of `controller`, the process that writes (sync,
//!   repair, the Lease), apart from the one that answers the network.
//! - [`cluster`]: what both read (watches into compact indexes, source Secrets) and the
//!   writers the controller runs (sync, repair, the Lease and its gate).
//! - [`commands`]: `check-config`, `explain`, `audit`.
//! - [`probe`]: the credential probe's HTTP client (`credentialProbe`, run by `controller`).
//! - [`cli`], [`metrics`], [`telemetry`], [`shutdown`]: shared by all of them.

pub mod cli;
pub(crate) mod cluster;
pub mod commands;
pub mod controller;
pub mod core;
pub mod credential_plugin;
pub mod metrics;
pub mod probe;
pub mod shutdown;
pub mod telemetry;
pub mod webhook;
