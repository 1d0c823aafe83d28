//! `check-config`: validate a configuration file, reporting every error at once.

use crate::cli::CheckConfigArgs;
use crate::core::config::{self, ConfigError};

/// The line printed for a valid file, or the error listing every problem.
pub fn run(args: &CheckConfigArgs) -> Result<String, ConfigError> {
    let config = config::load(&args.config)?;
    Ok(format!(
        "{}: valid ({} rules)",
        args.config.display(),
        config.rules.len()
    ))
}
