//! The subcommands other than `serve` (which is [`crate::webhook::run`]). Each renders the
//! core's [`Verdict`](crate::core::verdict::Verdict); none decides anything of its own.
//!
//! - [`check_config`]: validate a configuration file.
//! - [`explain`]: offline, what the webhook would do to the Pods in a file.
//! - [`audit`]: against a live cluster, what it would do to the Pods that exist.

pub mod audit;
pub mod check_config;
pub mod explain;
