//! `audit`: against a live cluster, what the injector would add to each existing Pod.

use crate::cli::AuditArgs;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit against a live cluster is not available in this build")]
    Unavailable,
}

pub async fn run(_args: AuditArgs) -> Result<(), AuditError> {
    Err(AuditError::Unavailable)
}
