//! `core::credential_provider::parse_response` on arbitrary plugin output (a plugin is another
//! program: its stdout is input like any other).
//!
//! Properties: never panics; an accepted response's docker config is JSON whose `auths` keys
//! are exactly the response's patterns, each with the username and password given and `auth`
//! their base64 pair; a rejected one's error quotes no password or username the
//! output held (errors reach logs).
#![no_main]

use base64::Engine;
use fuzz_support::check;
use libfuzzer_sys::fuzz_target;
use pullsecret_injector::core::credential_provider::{self, API_VERSIONS, ResponseError};

/// The words of every error message, quoting nothing, and the API versions (the one asked
/// for is quoted): a "credential" that is one of these is not told apart from the message.
fn fixed_text() -> String {
    let empty = String::new;
    [
        ResponseError::NotJson { line: 0, column: 0 },
        ResponseError::Shape { field: "" },
        ResponseError::Kind { found: empty() },
        ResponseError::ApiVersion {
            expected: empty(),
            found: empty(),
        },
        ResponseError::CacheKeyType { found: empty() },
        ResponseError::CacheDuration { found: empty() },
        ResponseError::AuthKey { key: empty() },
    ]
    .iter()
    .map(ToString::to_string)
    .chain(API_VERSIONS.iter().map(|v| v.to_string()))
    .collect::<Vec<_>>()
    .join("\n")
}

fuzz_target!(|data: &[u8]| {
    for api_version in API_VERSIONS {
        match credential_provider::parse_response(api_version, data) {
            Ok(response) => {
                let config: serde_json::Value = match serde_json::from_slice(
                    &credential_provider::docker_config(&response.auth),
                ) {
                    Ok(v) => v,
                    Err(e) => return check("docker-config-json", false, || e.to_string()),
                };
                let auths = config["auths"].as_object().cloned().unwrap_or_default();
                check(
                    "docker-config-keys",
                    auths.len() == response.auth.len(),
                    || format!("{} keys for {} patterns", auths.len(), response.auth.len()),
                );
                for (pattern, auth) in &response.auth {
                    let entry = &auths[pattern.as_str()];
                    let pair = base64::engine::general_purpose::STANDARD
                        .encode(format!("{}:{}", auth.username, auth.password));
                    check(
                        "docker-config-entry",
                        entry["username"] == auth.username.as_str()
                            && entry["password"] == auth.password.as_str()
                            && entry["auth"] == pair.as_str(),
                        || format!("{pattern:?}: {entry}"),
                    );
                }
            }
            Err(error) => {
                let shown = error.to_string();
                let value: Option<serde_json::Value> = serde_json::from_slice(data).ok();
                // What an error may quote: the top-level strings (kind, apiVersion,
                // cacheKeyType, cacheDuration) and the auth patterns. A credential that is
                // part of one of those is not told apart from it.
                let quotable: Vec<String> = value
                    .as_ref()
                    .and_then(|v| v.as_object())
                    .map(|o| {
                        o.values()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .chain(
                                o.get("auth")
                                    .and_then(|a| a.as_object())
                                    .map(|a| a.keys().cloned().collect::<Vec<_>>())
                                    .unwrap_or_default(),
                            )
                            .collect()
                    })
                    .unwrap_or_default();
                let secrets: Vec<String> = value
                    .as_ref()
                    .and_then(|v| v.get("auth"))
                    .and_then(|a| a.as_object())
                    .map(|auths| {
                        auths
                            .values()
                            .flat_map(|entry| match entry {
                                serde_json::Value::Object(o) => o
                                    .values()
                                    .filter_map(|v| v.as_str().map(str::to_string))
                                    .collect::<Vec<_>>(),
                                serde_json::Value::String(s) => vec![s.clone()],
                                _ => Vec::new(),
                            })
                            .filter(|s| {
                                s.len() >= 6
                                    && !quotable.iter().any(|q| q.contains(s))
                                    && !fixed_text().contains(s.as_str())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                for secret in secrets {
                    check(
                        "error-quotes-no-credential",
                        !shown.contains(&secret),
                        || format!("error {shown:?} quotes {secret:?}"),
                    );
                }
            }
        }
    }
});
