//! The pure core: everything that decides, with no I/O, no clock and no async, so that every
//! branch is covered by table tests.
//!
//! No I/O except reading the configuration file ([`config::load`]). Read along a request: [`review`] decodes the AdmissionReview, [`decision`] decides scope and
//! one rule per image (through [`image`] and [`rules`]), [`verdict`] turns that into the
//! complete answer (outcome, patch from [`patch`], warnings, audit annotation), and [`review`]
//! encodes it. [`config`] and [`policy`] hold what the decision reads, [`facts`] what it may
//! know about the cluster, [`dockercfg`] reads docker config Secrets, [`expiry`] when their
//! credentials stop working.

pub mod config;
pub mod coverage;
pub mod credential_provider;
pub mod decision;
pub mod dockercfg;
pub mod expiry;
pub mod facts;
pub mod image;
pub mod keyring;
pub mod names;
pub mod patch;
pub mod policy;
pub mod probe;
pub mod repair;
pub mod review;
pub mod rules;
pub mod scope;
pub mod verdict;
