//! Running one kubelet credential-provider plugin for one image: the I/O half of
//! [`crate::core::credential_provider`].
//!
//! The executable is `binDir/name`, run with the provider's `args` and an environment that
//! holds only the provider's `env` (the controller's own variables, its ServiceAccount token
//! path among them, are not passed on). The request goes to stdin; stdout is read up to
//! [`MAX_RESPONSE_BYTES`] and stderr up to [`MAX_STDERR_BYTES`] (more is drained and
//! dropped); the plugin is killed at [`PLUGIN_TIMEOUT`]. Errors say which of these went
//! wrong and never quote stdout, which holds credentials.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::core::credential_provider::{
    self, MAX_RESPONSE_BYTES, MAX_STDERR_BYTES, PLUGIN_TIMEOUT, Provider, Response, ResponseError,
};

/// Why a run gave no response. `outcome()` is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error(
        "executable {path} not found (the chart copies the plugins there from credentialProviders.image)"
    )]
    NotFound { path: String },
    #[error("cannot run {path}: {source}")]
    Spawn {
        path: String,
        source: std::io::Error,
    },
    #[error("no answer within {}s; killed", timeout.as_secs())]
    Timeout { timeout: Duration },
    #[error("failed ({status}){}", stderr_note(stderr))]
    Failed { status: String, stderr: String },
    #[error("its output is larger than {limit} bytes; not a response")]
    TooLarge { limit: usize },
    #[error(transparent)]
    Response(#[from] ResponseError),
}

impl PluginError {
    pub fn outcome(&self) -> &'static str {
        match self {
            PluginError::NotFound { .. } => "not_found",
            PluginError::Timeout { .. } => "timeout",
            PluginError::Spawn { .. } | PluginError::Failed { .. } => "failed",
            PluginError::TooLarge { .. } | PluginError::Response(_) => "bad_response",
        }
    }
}

fn stderr_note(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}

/// Asks `provider`'s plugin in `bin_dir` for `image`'s credentials.
pub async fn run(
    bin_dir: &Path,
    provider: &Provider,
    image: &str,
) -> Result<Response, PluginError> {
    run_with_timeout(bin_dir, provider, image, PLUGIN_TIMEOUT).await
}

pub async fn run_with_timeout(
    bin_dir: &Path,
    provider: &Provider,
    image: &str,
    timeout: Duration,
) -> Result<Response, PluginError> {
    let path = bin_dir.join(&provider.name);
    let shown = path.display().to_string();
    let mut command = Command::new(&path);
    command
        .args(&provider.args)
        .env_clear()
        .envs(provider.env.iter().map(|(k, v)| (k, v)))
        .current_dir(bin_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => PluginError::NotFound {
            path: shown.clone(),
        },
        _ => PluginError::Spawn {
            path: shown.clone(),
            source,
        },
    })?;
    let request = credential_provider::request(&provider.api_version, image);
    let mut stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let conversation = async {
        // Written and closed while the output is read: a plugin that answers before reading
        // all of its input cannot block on a full pipe.
        let write = async {
            if let Some(mut stdin) = stdin.take() {
                // A plugin may exit without reading its input: a broken pipe is its business.
                let _ = stdin.write_all(&request).await;
                let _ = stdin.shutdown().await;
            }
        };
        let ((), out, err, status) = tokio::join!(
            write,
            read_bounded(stdout, MAX_RESPONSE_BYTES),
            read_bounded(stderr, MAX_STDERR_BYTES),
            child.wait()
        );
        (out, err, status)
    };
    let (out, err, status) = tokio::time::timeout(timeout, conversation)
        .await
        .map_err(|_| PluginError::Timeout { timeout })?;
    let status = status.map_err(|source| PluginError::Spawn {
        path: shown.clone(),
        source,
    })?;
    if !status.success() {
        let (bytes, _) = err;
        return Err(PluginError::Failed {
            status: status.to_string(),
            stderr: one_line(&bytes),
        });
    }
    let (bytes, overflowed) = out;
    if overflowed {
        return Err(PluginError::TooLarge {
            limit: MAX_RESPONSE_BYTES,
        });
    }
    Ok(credential_provider::parse_response(
        &provider.api_version,
        &bytes,
    )?)
}

/// Reads up to `limit` bytes, then drains the rest (so the plugin never blocks on a full
/// pipe); `true` when there was more.
async fn read_bounded(reader: Option<impl AsyncRead + Unpin>, limit: usize) -> (Vec<u8>, bool) {
    let Some(mut reader) = reader else {
        return (Vec::new(), false);
    };
    let mut kept = Vec::new();
    let mut overflowed = false;
    let mut chunk = [0u8; 8192];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..n.min(room)]);
                overflowed |= n > room;
            }
        }
    }
    (kept, overflowed)
}

/// A plugin's stderr for an error message: one line, printable characters only.
fn one_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut line: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    if line.len() > 300 {
        let cut = (0..=300)
            .rev()
            .find(|i| line.is_char_boundary(*i))
            .unwrap_or(0);
        line.truncate(cut);
        line.push('…');
    }
    line
}

#[cfg(test)]
mod tests {
    //! Real processes: small shell scripts standing in for plugins.

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const V1: &str = "credentialprovider.kubelet.k8s.io/v1";

    fn plugin(dir: &Path, name: &str, script: &str) -> Provider {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).expect("write plugin");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Provider {
            name: name.into(),
            api_version: V1.into(),
            match_images: vec!["r.example".into()],
            default_cache_duration: Duration::from_secs(600),
            args: vec!["get-credentials".into()],
            env: vec![("ONLY".into(), "this".into())],
            secret: "minted".into(),
            images: vec!["r.example/app".into()],
        }
    }

    #[tokio::test]
    async fn a_plugin_gets_the_request_its_args_and_only_its_env() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Echoes what it saw back as the password, so the test can read it.
        let provider = plugin(
            dir.path(),
            "echo-plugin",
            r#"req=$(cat); seen="args=$*;env=$(env | grep -v '^PWD=' | grep -v '^SHLVL=' | grep -v '^_=' | sort | tr '\n' ,)"
printf '{"apiVersion":"%s","kind":"CredentialProviderResponse","cacheKeyType":"Registry","cacheDuration":"2m","auth":{"r.example":{"username":"%s","password":"%s"}}}' \
  credentialprovider.kubelet.k8s.io/v1 "$(printf %s "$req" | tr '"' "'")" "$seen""#,
        );
        let response = run(dir.path(), &provider, "r.example/app:1")
            .await
            .expect("a response");
        let auth = &response.auth["r.example"];
        assert_eq!(
            auth.username,
            "{'apiVersion':'credentialprovider.kubelet.k8s.io/v1','image':'r.example/app:1','kind':'CredentialProviderRequest'}"
        );
        assert_eq!(auth.password, "args=get-credentials;env=ONLY=this,");
        assert_eq!(response.cache_duration, Some(Duration::from_secs(120)));
    }

    #[tokio::test]
    async fn each_way_a_plugin_fails_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = Provider {
            name: "absent".into(),
            ..plugin(dir.path(), "unused", "exit 0")
        };
        let garbage = plugin(dir.path(), "garbage", "echo 'password: s3cret'");
        let failing = plugin(
            dir.path(),
            "failing",
            "echo 'AccessDenied: not authorized to GetAuthorizationToken' >&2; exit 3",
        );
        let huge = plugin(
            dir.path(),
            "huge",
            "head -c 3000000 /dev/zero | tr '\\0' 'x'",
        );
        let slow = plugin(dir.path(), "slow", "sleep 30");
        let not_executable = plugin(dir.path(), "noexec", "exit 0");
        std::fs::set_permissions(
            dir.path().join("noexec"),
            std::fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");

        let error = |provider: Provider| {
            let dir = dir.path().to_path_buf();
            async move {
                run_with_timeout(&dir, &provider, "r.example/app", Duration::from_secs(2))
                    .await
                    .map(|_| ())
                    .unwrap_err()
            }
        };
        let cases = [
            (
                error(missing).await,
                "not_found",
                format!(
                    "executable {}/absent not found (the chart copies the plugins there from credentialProviders.image)",
                    dir.path().display()
                ),
            ),
            (
                error(garbage).await,
                "bad_response",
                "its output is not a CredentialProviderResponse: invalid JSON at line 1 column 1"
                    .to_string(),
            ),
            (
                error(failing).await,
                "failed",
                "failed (exit status: 3): AccessDenied: not authorized to GetAuthorizationToken"
                    .to_string(),
            ),
            (
                error(huge).await,
                "bad_response",
                "its output is larger than 1048576 bytes; not a response".to_string(),
            ),
            (
                error(slow).await,
                "timeout",
                "no answer within 2s; killed".to_string(),
            ),
        ];
        for (err, outcome, message) in cases {
            assert_eq!(err.outcome(), outcome, "{err}");
            assert_eq!(err.to_string(), message);
        }
        let denied = error(not_executable).await;
        assert_eq!(denied.outcome(), "failed");
        assert!(
            denied.to_string().contains("noexec: Permission denied"),
            "{denied}"
        );
    }
}
