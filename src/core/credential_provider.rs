//! The kubelet's credential-provider exec plugins, run by `controller` to keep a source Secret
//! filled with short-lived credentials (`credentialProviders:`; SPEC "Configuration").
//!
//! The protocol is the kubelet's own (`credentialprovider.kubelet.k8s.io/v1`, also `v1beta1`
//! and `v1alpha1`, which have the same shape): a `CredentialProviderRequest` naming one image
//! goes to the plugin's stdin, a `CredentialProviderResponse` comes back on stdout with
//! `cacheKeyType`, an optional `cacheDuration` (a Go duration) and `auth`, a map from a
//! registry pattern (`*.dkr.ecr.*.amazonaws.com`, `registry.example/path`) to a username and
//! password. The patterns become the docker config's keys as they are: the kubelet matches
//! them exactly as it matches any docker config key.
//!
//! Pure: the configuration types, the request, the checked response, the docker config that
//! is written, and the schedule (when to refresh, how long to wait after a failure). Running
//! the executable is [`crate::credential_plugin`]; the loop that writes the Secret is
//! `cluster/provider_loop.rs`.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};

/// The API versions the kubelet speaks to plugins; all three share one shape.
pub const API_VERSIONS: [&str; 3] = [
    "credentialprovider.kubelet.k8s.io/v1",
    "credentialprovider.kubelet.k8s.io/v1beta1",
    "credentialprovider.kubelet.k8s.io/v1alpha1",
];

/// Where the executables are looked up when the file names no `binDir` (the chart mounts
/// them here).
pub const DEFAULT_BIN_DIR: &str = "/var/lib/pullsecret-injector/credential-providers";

/// A plugin that has not answered by then is killed: cloud token endpoints answer in
/// seconds, and a hung plugin must not stall the other providers' refreshes for long.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The most of a plugin's stdout that is read. A response is a few KiB (one token per
/// pattern); anything past this is not a response, and reading it would let one plugin
/// grow the controller without bound.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// The most of a plugin's stderr kept for an error message (the rest is read and dropped).
pub const MAX_STDERR_BYTES: usize = 1024;

/// The shortest time between two refreshes of one provider, whatever the cache duration
/// says: a plugin answering `cacheDuration: 1s` must not turn into a write every second
/// (each one is copied into every namespace sync serves).
pub const MIN_REFRESH: Duration = Duration::from_secs(10);

/// After a failure the next attempt waits this long, doubling up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_secs(10);
pub const RETRY_MAX: Duration = Duration::from_secs(300);

/// `credentialProviders:` of the configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialProviders {
    /// Where each provider's executable is looked up by its `name`, like the kubelet's
    /// `--image-credential-provider-bin-dir`.
    pub bin_dir: PathBuf,
    pub providers: Vec<Provider>,
}

impl Default for CredentialProviders {
    fn default() -> Self {
        Self {
            bin_dir: PathBuf::from(DEFAULT_BIN_DIR),
            providers: Vec::new(),
        }
    }
}

/// One plugin: the kubelet's `providers[]` fields, plus the Secret it keeps filled and the
/// images it is asked about.
#[derive(Clone, PartialEq, Eq)]
pub struct Provider {
    /// The executable's file name in `binDir`.
    pub name: String,
    pub api_version: String,
    /// The kubelet calls a plugin only for images these match; `images` must match one.
    pub match_images: Vec<String>,
    /// The credential's lifetime when the response gives none.
    pub default_cache_duration: Duration,
    pub args: Vec<String>,
    /// The plugin's whole environment (nothing of the controller's is passed on).
    pub env: Vec<(String, String)>,
    /// The dockerconfigjson Secret of the injector's namespace the credentials go into.
    pub secret: String,
    /// One request each.
    pub images: Vec<String>,
}

// By hand: `env` values may be access keys; only their names are printed.
impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("api_version", &self.api_version)
            .field("match_images", &self.match_images)
            .field("default_cache_duration", &self.default_cache_duration)
            .field("args", &self.args)
            .field(
                "env",
                &self.env.iter().map(|(name, _)| name).collect::<Vec<_>>(),
            )
            .field("secret", &self.secret)
            .field("images", &self.images)
            .finish()
    }
}

impl Provider {
    /// A hash of everything that changes what the plugin is asked or how: written next to
    /// the credential, so that a controller that restarts with a changed provider refreshes
    /// at once instead of at the old credential's half-life.
    pub fn fingerprint(&self) -> String {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (
            &self.name,
            &self.api_version,
            &self.match_images,
            &self.args,
            &self.env,
            &self.images,
        )
            .hash(&mut hasher);
        format!("{:016x}", hasher.finish())
    }
}

/// The request for one image, as the kubelet writes it to the plugin's stdin.
pub fn request(api_version: &str, image: &str) -> Vec<u8> {
    json!({
        "apiVersion": api_version,
        "kind": "CredentialProviderRequest",
        "image": image,
    })
    .to_string()
    .into_bytes()
}

/// How the kubelet would cache the answer. Checked because the kubelet rejects a response
/// without a valid one; this side keeps one copy per provider in the Secret whatever it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum CacheKeyType {
    Image,
    Registry,
    Global,
}

/// One username and password. Debug never prints them.
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct AuthConfig {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: String,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthConfig { .. }")
    }
}

/// A checked response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub cache_key_type: CacheKeyType,
    /// `None` when the plugin gave none, or `0` (which asks the kubelet not to cache): the
    /// provider's `defaultCacheDuration` then applies.
    pub cache_duration: Option<Duration>,
    pub auth: BTreeMap<String, AuthConfig>,
}

/// Why a plugin's answer is not a response. Never quotes the answer: it holds credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error(
        "its output is not a CredentialProviderResponse: invalid JSON at line {line} column {column}"
    )]
    NotJson { line: usize, column: usize },
    #[error(
        "its output is not a CredentialProviderResponse: {field} is missing or has the wrong type"
    )]
    Shape { field: &'static str },
    #[error("it answered kind {found:?}, not CredentialProviderResponse")]
    Kind { found: String },
    #[error("it answered apiVersion {found:?}, not the {expected} it was asked in")]
    ApiVersion { expected: String, found: String },
    #[error("cacheKeyType {found:?} is not one of Image, Registry, Global")]
    CacheKeyType { found: String },
    #[error("cacheDuration {found:?} is not a duration such as 12h or 1h30m0s")]
    CacheDuration { found: String },
    #[error("auth key {key:?} is not a registry pattern")]
    AuthKey { key: String },
}

/// Checks a plugin's stdout as the kubelet does: the kind, the apiVersion it was asked in, a
/// valid `cacheKeyType`, a parseable `cacheDuration`, `auth` entries with string fields.
pub fn parse_response(api_version: &str, stdout: &[u8]) -> Result<Response, ResponseError> {
    let value: Value = serde_json::from_slice(stdout).map_err(|e| ResponseError::NotJson {
        line: e.line(),
        column: e.column(),
    })?;
    let field = |name: &'static str| {
        value
            .get(name)
            .and_then(Value::as_str)
            .ok_or(ResponseError::Shape { field: name })
    };
    let kind = field("kind")?;
    if kind != "CredentialProviderResponse" {
        return Err(ResponseError::Kind {
            found: kind.to_string(),
        });
    }
    let found = field("apiVersion")?;
    if found != api_version {
        return Err(ResponseError::ApiVersion {
            expected: api_version.to_string(),
            found: found.to_string(),
        });
    }
    let key_type = field("cacheKeyType")?;
    let cache_key_type = match key_type {
        "Image" => CacheKeyType::Image,
        "Registry" => CacheKeyType::Registry,
        "Global" => CacheKeyType::Global,
        other => {
            return Err(ResponseError::CacheKeyType {
                found: other.to_string(),
            });
        }
    };
    let cache_duration = match value.get("cacheDuration") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => {
            Some(
                parse_go_duration(text).ok_or_else(|| ResponseError::CacheDuration {
                    found: text.clone(),
                })?,
            )
        }
        Some(_) => {
            return Err(ResponseError::Shape {
                field: "cacheDuration",
            });
        }
    }
    .filter(|d| !d.is_zero());
    let auth = match value.get("auth") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(entries) => {
            // The entries' values are not quoted in any error: serde's messages can.
            let auth: BTreeMap<String, AuthConfig> = serde_json::from_value(entries.clone())
                .map_err(|_| ResponseError::Shape { field: "auth" })?;
            if let Some(key) = auth.keys().find(|k| k.trim().is_empty() || k.contains(' ')) {
                return Err(ResponseError::AuthKey { key: key.clone() });
            }
            auth
        }
    };
    Ok(Response {
        cache_key_type,
        cache_duration,
        auth,
    })
}

/// A Go duration (`time.ParseDuration`, what `metav1.Duration` holds): `12h`, `1h30m0s`,
/// `1.5h`, `300ms`, `0`. The kubelet's configuration and responses use it, so both are
/// read with it. (No crate in the tree parses Go's format; this is its whole grammar
/// without signs, which a cache duration cannot have.)
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text == "0" {
        return Some(Duration::ZERO);
    }
    if text.is_empty() {
        return None;
    }
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(number_end);
        let value: f64 = number.parse().ok()?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_end);
        let seconds = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * seconds;
        rest = next;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// The `.dockerconfigjson` written for `auth`: each pattern a key with `username`,
/// `password` and `auth` (what `kubectl create secret docker-registry` writes).
pub fn docker_config(auth: &BTreeMap<String, AuthConfig>) -> Vec<u8> {
    merge_previous(None, auth)
}

/// One `auths` entry, as [`docker_config`] writes it.
fn entry(config: &AuthConfig) -> Value {
    json!({
        "username": config.username,
        "password": config.password,
        "auth": base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", config.username, config.password)),
    })
}

/// What one pass over a provider's images gives: the answers that came, merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minted {
    pub auth: BTreeMap<String, AuthConfig>,
    /// The shortest lifetime of the answers (the first credential to stop working is the one
    /// to refresh for).
    pub lifetime: Duration,
}

/// Merges one pass's responses; `None` when none came. With every image answered the result
/// replaces the Secret's entries; with some failed, [`Minted`] is laid over the entries the
/// Secret already holds (see [`merge_previous`]), so one failing image does not take the
/// others' last good credentials away.
pub fn merge(responses: &[Response], default_cache_duration: Duration) -> Option<Minted> {
    if responses.is_empty() {
        return None;
    }
    let mut auth = BTreeMap::new();
    let mut lifetime: Option<Duration> = None;
    for response in responses {
        for (pattern, config) in &response.auth {
            // The first answer for a pattern wins: later images of the same registry
            // answer with the same credential.
            auth.entry(pattern.clone())
                .or_insert_with(|| config.clone());
        }
        let this = response.cache_duration.unwrap_or(default_cache_duration);
        lifetime = Some(lifetime.map_or(this, |l| l.min(this)));
    }
    Some(Minted {
        auth,
        lifetime: lifetime.unwrap_or(default_cache_duration),
    })
}

/// The previous `.dockerconfigjson`'s `auths` with `fresh`'s entries laid over them: what is
/// written when only some images were answered. An unreadable previous config counts as
/// empty.
pub fn merge_previous(previous: Option<&[u8]>, fresh: &BTreeMap<String, AuthConfig>) -> Vec<u8> {
    let mut auths = previous
        .and_then(|bytes| serde_json::from_slice::<Value>(bytes).ok())
        .and_then(|v| v.get("auths").and_then(Value::as_object).cloned())
        .unwrap_or_default();
    for (pattern, config) in fresh {
        auths.insert(pattern.clone(), entry(config));
    }
    json!({ "auths": auths }).to_string().into_bytes()
}

/// When a credential minted at `issued` with `lifetime` is refreshed: at half its life (the
/// other half is the margin for failures, retried with backoff meanwhile), never sooner than
/// [`MIN_REFRESH`].
pub fn refresh_after(lifetime: Duration) -> Duration {
    (lifetime / 2).max(MIN_REFRESH)
}

/// How long to wait after the `failures`-th failure in a row (1 for the first): doubling
/// from [`RETRY_FIRST`] to [`RETRY_MAX`], and never more than a quarter of the credential's
/// lifetime, so a short-lived one is tried several times before it expires.
pub fn retry_after(failures: u32, lifetime: Duration) -> Duration {
    let doubled = RETRY_FIRST.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    doubled.min(RETRY_MAX).min((lifetime / 4).max(RETRY_FIRST))
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "credentialprovider.kubelet.k8s.io/v1";

    fn response(body: Value) -> Result<Response, ResponseError> {
        parse_response(V1, body.to_string().as_bytes())
    }

    fn ok(cache: Option<&str>) -> Value {
        let mut v = json!({
            "apiVersion": V1,
            "kind": "CredentialProviderResponse",
            "cacheKeyType": "Registry",
            "auth": {"*.dkr.ecr.*.amazonaws.com": {"username": "AWS", "password": "tok"}},
        });
        if let Some(cache) = cache {
            v["cacheDuration"] = json!(cache);
        }
        v
    }

    #[test]
    fn go_durations_parse_as_the_kubelet_writes_them() {
        for (text, want) in [
            ("12h", Some(43_200.0)),
            ("12h0m0s", Some(43_200.0)),
            ("1h30m", Some(5_400.0)),
            ("1.5h", Some(5_400.0)),
            ("300ms", Some(0.3)),
            ("2m30s", Some(150.0)),
            ("0", Some(0.0)),
            ("0s", Some(0.0)),
            ("10µs", Some(0.000_01)),
            ("", None),
            ("12", None),
            ("h", None),
            ("12d", None),
            ("-1h", None),
            ("1h 30m", None),
        ] {
            assert_eq!(
                parse_go_duration(text).map(|d| d.as_secs_f64()),
                want,
                "{text:?}"
            );
        }
    }

    #[test]
    fn a_response_is_checked_like_the_kubelet_checks_it() {
        let parsed = response(ok(Some("6h0m0s"))).expect("valid");
        assert_eq!(parsed.cache_key_type, CacheKeyType::Registry);
        assert_eq!(parsed.cache_duration, Some(Duration::from_secs(21_600)));
        assert_eq!(parsed.auth["*.dkr.ecr.*.amazonaws.com"].username, "AWS");
        // No cacheDuration, or 0: the provider's default applies.
        assert_eq!(response(ok(None)).expect("valid").cache_duration, None);
        assert_eq!(
            response(ok(Some("0s"))).expect("valid").cache_duration,
            None
        );

        let mut wrong_kind = ok(None);
        wrong_kind["kind"] = json!("CredentialProviderRequest");
        let mut wrong_version = ok(None);
        wrong_version["apiVersion"] = json!("credentialprovider.kubelet.k8s.io/v1beta1");
        let mut bad_key_type = ok(None);
        bad_key_type["cacheKeyType"] = json!("Pod");
        let mut no_key_type = ok(None);
        no_key_type
            .as_object_mut()
            .map(|o| o.remove("cacheKeyType"));
        let mut bad_auth = ok(None);
        bad_auth["auth"] = json!({"r.example": "s3cret-password"});
        for (body, want) in [
            (
                wrong_kind,
                "it answered kind \"CredentialProviderRequest\", not CredentialProviderResponse",
            ),
            (
                wrong_version,
                "it answered apiVersion \"credentialprovider.kubelet.k8s.io/v1beta1\", not the credentialprovider.kubelet.k8s.io/v1 it was asked in",
            ),
            (
                bad_key_type,
                "cacheKeyType \"Pod\" is not one of Image, Registry, Global",
            ),
            (
                no_key_type,
                "its output is not a CredentialProviderResponse: cacheKeyType is missing or has the wrong type",
            ),
            (
                bad_auth,
                "its output is not a CredentialProviderResponse: auth is missing or has the wrong type",
            ),
            (
                ok(Some("soon")),
                "cacheDuration \"soon\" is not a duration such as 12h or 1h30m0s",
            ),
        ] {
            assert_eq!(response(body).map(|_| ()).unwrap_err().to_string(), want);
        }
        // Garbage, including a credential-looking answer: its text is never quoted.
        let err = parse_response(V1, b"password=s3cret\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "its output is not a CredentialProviderResponse: invalid JSON at line 1 column 1"
        );
        assert!(!format!("{err:?}").contains("s3cret"));
    }

    #[test]
    fn the_request_is_the_kubelets() {
        let body: Value = serde_json::from_slice(&request(V1, "r.example/app:1")).expect("json");
        assert_eq!(
            body,
            json!({"apiVersion": V1, "kind": "CredentialProviderRequest", "image": "r.example/app:1"})
        );
    }

    #[test]
    fn the_docker_config_has_each_pattern_with_auth() {
        let parsed = response(ok(None)).expect("valid");
        let config: Value = serde_json::from_slice(&docker_config(&parsed.auth)).expect("json");
        assert_eq!(
            config,
            json!({"auths": {"*.dkr.ecr.*.amazonaws.com": {
                "username": "AWS", "password": "tok", "auth": "QVdTOnRvaw=="}}})
        );
        assert!(!format!("{parsed:?}").contains("tok"));
    }

    #[test]
    fn merging_keeps_the_shortest_lifetime_and_the_first_answer_per_pattern() {
        let default = Duration::from_secs(3600);
        let a = response(ok(Some("2h"))).expect("valid");
        let mut b = response(ok(None)).expect("valid");
        b.auth.insert(
            "*.dkr.ecr.*.amazonaws.com".into(),
            AuthConfig {
                username: "other".into(),
                password: "x".into(),
            },
        );
        b.auth.insert(
            "r.example".into(),
            AuthConfig {
                username: "u".into(),
                password: "p".into(),
            },
        );
        let minted = merge(&[a, b], default).expect("some");
        assert_eq!(minted.lifetime, default);
        assert_eq!(minted.auth.len(), 2);
        assert_eq!(minted.auth["*.dkr.ecr.*.amazonaws.com"].username, "AWS");
        assert_eq!(merge(&[], default), None);

        // Some images failed: the previous entries stay under the fresh ones.
        let previous =
            br#"{"auths":{"old.example":{"auth":"b2xkOm9sZA=="},"r.example":{"auth":"eDp5"}}}"#;
        let merged: Value =
            serde_json::from_slice(&merge_previous(Some(previous), &minted.auth)).expect("json");
        assert_eq!(merged["auths"]["old.example"]["auth"], "b2xkOm9sZA==");
        assert_eq!(merged["auths"]["r.example"]["username"], "u");
        assert_eq!(merged["auths"].as_object().map(|o| o.len()), Some(3));
        let from_nothing: Value =
            serde_json::from_slice(&merge_previous(Some(b"not json"), &minted.auth)).expect("json");
        assert_eq!(from_nothing["auths"].as_object().map(|o| o.len()), Some(2));
    }

    #[test]
    fn refresh_and_retry_follow_the_lifetime() {
        let hours = |h: u64| Duration::from_secs(h * 3600);
        assert_eq!(refresh_after(hours(12)), hours(6));
        assert_eq!(
            refresh_after(Duration::from_secs(240)),
            Duration::from_secs(120)
        );
        assert_eq!(refresh_after(Duration::from_secs(4)), MIN_REFRESH);
        let retries: Vec<u64> = (1..=8)
            .map(|n| retry_after(n, hours(12)).as_secs())
            .collect();
        assert_eq!(retries, [10, 20, 40, 80, 160, 300, 300, 300]);
        // A four-minute credential is retried at least every minute.
        assert_eq!(retry_after(8, Duration::from_secs(240)).as_secs(), 60);
        assert_eq!(retry_after(u32::MAX, Duration::from_secs(1)), RETRY_FIRST);
    }

    #[test]
    fn the_fingerprint_follows_what_the_plugin_is_asked() {
        let provider = Provider {
            name: "ecr-credential-provider".into(),
            api_version: V1.into(),
            match_images: vec!["*.dkr.ecr.*.amazonaws.com".into()],
            default_cache_duration: Duration::from_secs(43_200),
            args: vec!["get-credentials".into()],
            env: vec![("AWS_SECRET_ACCESS_KEY".into(), "hidden-value".into())],
            secret: "ecr".into(),
            images: vec!["1.dkr.ecr.us-east-1.amazonaws.com/app".into()],
        };
        let mut other = provider.clone();
        other
            .images
            .push("2.dkr.ecr.us-east-1.amazonaws.com/app".into());
        assert_eq!(provider.fingerprint(), provider.clone().fingerprint());
        assert_ne!(provider.fingerprint(), other.fingerprint());
        assert!(!format!("{provider:?}").contains("hidden-value"));
    }
}
