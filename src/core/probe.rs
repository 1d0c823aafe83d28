//! The credential probe's decisions (`credentialProbe: true`, run by `controller`): which
//! registry hosts a source Secret's credentials serve, how a registry's `WWW-Authenticate`
//! challenge is answered, and what its answers mean. Pure: no I/O; the HTTP client is
//! `cluster/probe.rs`.
//!
//! The conversation, as the distribution registry and every OCI registry speak it:
//! 1. `GET /v2/` without credentials. A 401 names the challenge.
//! 2. `Basic realm=...` → `GET /v2/` again with `Authorization: Basic`.
//!    `Bearer realm=...,service=...[,scope=...]` → `GET realm?service=...&scope=...` with
//!    `Authorization: Basic` (the distribution token spec); the JSON answer's `token` (or
//!    `access_token`) → `GET /v2/` with `Authorization: Bearer`.
//! 3. 2xx at the end: accepted. 401 or 403 after the credential was presented: rejected.
//!    Everything else (no challenge, an odd answer, 5xx, transport errors) is neither:
//!    [`Outcome::Inconclusive`] with a stable reason.
//!
//! Nothing here keeps, prints or puts in an error a credential: [`Credential`]'s `Debug` names
//! the username's length only.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;

use crate::core::dockercfg::SourceSecret;

/// A username and password from a docker config entry. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(REDACTED)")
    }
}

impl Credential {
    /// The `Authorization` header value for Basic authentication.
    pub fn basic_header(&self) -> String {
        let pair = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }
}

/// One registry host to ask about one Secret's credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The source Secret's name (the metric's `secret` label).
    pub secret: String,
    /// `host[:port]` as the docker config key names it, lower-cased (the `registry` label).
    pub registry: String,
    /// Where `/v2/` is asked: `registry`, except Docker Hub's keys, whose API is served by
    /// `registry-1.docker.io` (as containerd and the docker CLI resolve them).
    pub api_host: String,
    /// `http` only for a key written with `http://`; `https` otherwise.
    pub plain_http: bool,
    pub credential: Credential,
}

impl Target {
    /// The registry's API base check URL.
    pub fn v2_url(&self) -> String {
        let scheme = if self.plain_http { "http" } else { "https" };
        format!("{scheme}://{}/v2/", self.api_host)
    }
}

/// The hosts Docker Hub's keys name, whose API lives at [`DOCKER_HUB_API_HOST`].
const DOCKER_HUB_KEYS: [&str; 2] = ["docker.io", "index.docker.io"];
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";

/// Why a docker config key is not probed (reported, never with a value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skipped {
    /// `*.example.com`: no one host to ask.
    Glob(String),
    /// No `auth`, no `username`/`password` (an `identitytoken` or `registrytoken` only).
    NoPassword(String),
    /// Not `host[:port]` after the scheme.
    BadHost(String),
}

/// The probe targets of one source Secret: one per concrete host (the first key of that host
/// in key order wins; the path of a key does not matter to `/v2/`), and what was skipped.
pub fn targets(secret: &SourceSecret) -> (Vec<Target>, Vec<Skipped>) {
    let mut out: Vec<Target> = Vec::new();
    let mut skipped = Vec::new();
    let Some(auths) = auths_of(secret) else {
        return (out, skipped);
    };
    let mut keys: Vec<(&String, &Value)> = auths.iter().collect();
    keys.sort_by(|a, b| a.0.cmp(b.0));
    for (key, entry) in keys {
        let (plain_http, host) = match host_of(key) {
            Ok(found) => found,
            Err(()) => {
                skipped.push(Skipped::BadHost(
                    crate::core::dockercfg::without_userinfo(key).into_owned(),
                ));
                continue;
            }
        };
        if host.contains(['*', '?', '[']) {
            skipped.push(Skipped::Glob(host));
            continue;
        }
        let Some(credential) = credential_of(entry) else {
            skipped.push(Skipped::NoPassword(host));
            continue;
        };
        if out.iter().any(|t| t.registry == host) {
            continue;
        }
        let api_host = if DOCKER_HUB_KEYS.contains(&host.as_str()) {
            DOCKER_HUB_API_HOST.to_string()
        } else {
            host.clone()
        };
        out.push(Target {
            secret: secret.name.clone(),
            registry: host,
            api_host,
            plain_http,
            credential,
        });
    }
    (out, skipped)
}

fn auths_of(secret: &SourceSecret) -> Option<serde_json::Map<String, Value>> {
    crate::core::dockercfg::auths(secret).ok()
}

/// `(plain_http, host[:port])` of a docker config key: scheme, userinfo and path dropped.
fn host_of(key: &str) -> Result<(bool, String), ()> {
    let (plain_http, rest) = if let Some(rest) = key.strip_prefix("http://") {
        (true, rest)
    } else {
        (false, key.strip_prefix("https://").unwrap_or(key))
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let valid = !host.is_empty()
        && host.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '*' | '?' | '[' | ']')
        });
    if valid {
        Ok((plain_http, host.to_ascii_lowercase()))
    } else {
        Err(())
    }
}

/// `auth` (base64 `user:password`) first, as the kubelet reads it, else `username` and
/// `password`.
fn credential_of(entry: &Value) -> Option<Credential> {
    if let Some(auth) = entry
        .get("auth")
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty())
    {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (username, password) = text.split_once(':')?;
        return Some(Credential {
            username: username.to_string(),
            password: password.to_string(),
        });
    }
    let username = entry.get("username")?.as_str()?;
    let password = entry.get("password")?.as_str()?;
    if username.is_empty() && password.is_empty() {
        return None;
    }
    Some(Credential {
        username: username.to_string(),
        password: password.to_string(),
    })
}

/// One challenge of a `WWW-Authenticate` header (RFC 9110 §11.6.1): the scheme, lower-cased,
/// and its parameters (names lower-cased, values unquoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a `WWW-Authenticate` value into its challenges (one header may carry several:
/// `Basic realm="r", Bearer realm="t",service="s"`). Malformed parts are dropped.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    let mut rest = header.trim_start();
    while !rest.is_empty() {
        rest = rest.trim_start_matches([',', ' ', '\t']);
        let token_end = rest.find([' ', '\t', ',', '=']).unwrap_or(rest.len());
        let token = &rest[..token_end];
        if token.is_empty() {
            // A stray '=' or quote: skip one character so the loop always advances.
            let skip = rest.chars().next().map_or(0, char::len_utf8);
            rest = &rest[skip..];
            continue;
        }
        let after = rest[token_end..].trim_start_matches([' ', '\t']);
        if let Some(value_start) = after.strip_prefix('=')
            && !value_start.starts_with('=')
        {
            // An auth-param of the current challenge.
            let value_start = value_start.trim_start_matches([' ', '\t']);
            let (value, remaining) = read_value(value_start);
            if let Some(current) = out.last_mut() {
                current.params.push((token.to_ascii_lowercase(), value));
            }
            rest = remaining;
        } else {
            // A new challenge's scheme (a token68 after it is ignored: not used by registries).
            out.push(Challenge {
                scheme: token.to_ascii_lowercase(),
                params: Vec::new(),
            });
            rest = &rest[token_end..];
        }
    }
    out
}

/// A quoted string (with `\` escapes) or a token; returns the value and what follows it.
fn read_value(input: &str) -> (String, &str) {
    if let Some(quoted) = input.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                }
                '"' => return (value, &quoted[i + 1..]),
                other => value.push(other),
            }
        }
        (value, "")
    } else {
        let end = input.find([',', ' ', '\t']).unwrap_or(input.len());
        (input[..end].to_string(), &input[end..])
    }
}

/// Why a probe answered neither accepted nor rejected. Stable labels for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inconclusive {
    /// `/v2/` answered 2xx without credentials: nothing to check.
    NoChallenge,
    /// A 401 whose challenge is neither Basic nor a Bearer with a realm.
    BadChallenge,
    /// The token endpoint's answer had no `token` or `access_token`.
    BadTokenResponse,
    /// 5xx, or 429 (rate limited).
    ServerError,
    /// Any other status (404: not a registry API, 3xx, ...).
    UnexpectedStatus,
    /// A request took longer than its timeout.
    Timeout,
    /// DNS, TCP or TLS failed, or the connection broke.
    Transport,
}

impl Inconclusive {
    pub fn as_str(self) -> &'static str {
        match self {
            Inconclusive::NoChallenge => "no_challenge",
            Inconclusive::BadChallenge => "bad_challenge",
            Inconclusive::BadTokenResponse => "bad_token_response",
            Inconclusive::ServerError => "server_error",
            Inconclusive::UnexpectedStatus => "unexpected_status",
            Inconclusive::Timeout => "timeout",
            Inconclusive::Transport => "transport",
        }
    }
}

/// What a probe found out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Rejected,
    Inconclusive(Inconclusive),
}

/// What to do after the anonymous `GET /v2/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// `GET /v2/` again with Basic authentication.
    Basic,
    /// `GET` this token URL with Basic authentication, then `/v2/` with the token.
    Token {
        url: String,
    },
    Done(Outcome),
}

/// Pure: the step after the anonymous `GET /v2/` answered `status` with these
/// `WWW-Authenticate` values. Bearer is preferred when both are offered (it is what the
/// registry's clients use).
pub fn after_anonymous(status: u16, www_authenticate: &[&str]) -> Next {
    match status {
        200..=299 => Next::Done(Outcome::Inconclusive(Inconclusive::NoChallenge)),
        401 => {
            let challenges: Vec<Challenge> = www_authenticate
                .iter()
                .flat_map(|h| parse_challenges(h))
                .collect();
            if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer")
                && let Some(url) = token_url(bearer)
            {
                return Next::Token { url };
            }
            if challenges.iter().any(|c| c.scheme == "basic") {
                return Next::Basic;
            }
            Next::Done(Outcome::Inconclusive(Inconclusive::BadChallenge))
        }
        other => Next::Done(Outcome::Inconclusive(status_inconclusive(other))),
    }
}

/// Pure: the outcome of a request that presented the credential (Basic `/v2/`, the token
/// request, or the Bearer `/v2/`): `None` means go on (2xx of the token request).
pub fn after_credential(status: u16) -> Outcome {
    match status {
        200..=299 => Outcome::Accepted,
        401 | 403 => Outcome::Rejected,
        other => Outcome::Inconclusive(status_inconclusive(other)),
    }
}

fn status_inconclusive(status: u16) -> Inconclusive {
    if status >= 500 || status == 429 {
        Inconclusive::ServerError
    } else {
        Inconclusive::UnexpectedStatus
    }
}

/// The token request URL of a Bearer challenge: `realm?service=...&scope=...` (each
/// percent-encoded; `&` when the realm has a query already). `None` without an http(s) realm.
pub fn token_url(challenge: &Challenge) -> Option<String> {
    let realm = challenge.param("realm")?;
    if !(realm.starts_with("https://") || realm.starts_with("http://")) {
        return None;
    }
    let mut url = realm.to_string();
    let mut separator = if realm.contains('?') { '&' } else { '?' };
    for name in ["service", "scope"] {
        if let Some(value) = challenge.param(name) {
            // A scope may hold several, space-separated: each is its own `scope=` parameter.
            let values: Vec<&str> = if name == "scope" {
                value.split(' ').filter(|s| !s.is_empty()).collect()
            } else {
                vec![value]
            };
            for value in values {
                url.push(separator);
                url.push_str(name);
                url.push('=');
                url.push_str(&percent_encode(value));
                separator = '&';
            }
        }
    }
    Some(url)
}

/// RFC 3986 query-component encoding: unreserved characters kept, all else `%XX`.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The token of a token endpoint's JSON answer: `token`, else `access_token` (OAuth 2).
pub fn token_from_json(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    ["token", "access_token"]
        .iter()
        .filter_map(|k| value.get(k).and_then(Value::as_str))
        .find(|t| !t.is_empty())
        .map(str::to_string)
}

/// Whether a probed registry (a docker config key's host) is an image's registry
/// (`ImageRef::registry`, where Docker Hub is `docker.io`): equal ignoring case, Docker Hub's
/// names all being one.
pub fn same_registry(probed: &str, image_registry: &str) -> bool {
    let hub = |h: &str| DOCKER_HUB_KEYS.contains(&h) || h == DOCKER_HUB_API_HOST;
    let (probed, image) = (
        probed.to_ascii_lowercase(),
        image_registry.to_ascii_lowercase(),
    );
    probed == image || (hub(&probed) && hub(&image))
}

/// The value of the annotation the controller writes on a source Secret whose credential a
/// registry rejected (`rejected <registry> <RFC 3339 time>`); the webhook reads it.
pub fn rejection_annotation(registry: &str, at_rfc3339: &str) -> String {
    format!("rejected {registry} {at_rfc3339}")
}

/// Pure: the `pullsecret-injector/probe` annotations to write, as `(secret, value)` (`None`:
/// remove it), for `sources` (each source's name and current annotation), given the targets
/// `rejected` at their last conclusive probe (with the time first seen rejected). A source
/// with a target not yet `concluded` in this process is left alone (a restarted controller
/// does not clear a rejection before it asked again); the rest get exactly their rejections.
pub fn annotation_updates<'a>(
    sources: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
    targets: impl IntoIterator<Item = &'a TargetKey>,
    concluded: &std::collections::BTreeSet<TargetKey>,
    rejected: &BTreeMap<TargetKey, String>,
) -> Vec<(String, Option<String>)> {
    let undecided: std::collections::BTreeSet<&str> = targets
        .into_iter()
        .filter(|key| !concluded.contains(*key))
        .map(|(secret, _)| secret.as_str())
        .collect();
    let mut wanted: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for ((secret, registry), at) in rejected {
        wanted
            .entry(secret.as_str())
            .or_default()
            .push(rejection_annotation(registry, at));
    }
    let mut out = Vec::new();
    for (name, current) in sources {
        if undecided.contains(name) {
            continue;
        }
        let want = wanted.get(name).map(|parts| parts.join("; "));
        if want.as_deref() != current {
            out.push((name.to_string(), want));
        }
    }
    out.sort();
    out
}

/// The `pullsecret-injector/probe` annotation of a Secret given as JSON (a manifest, or the
/// API object): the registries that rejected its credential, and a line saying so for
/// `explain` and `audit`. `None` when the annotation is absent or names none.
pub fn rejections_json(object: &serde_json::Value) -> Option<(Vec<String>, String)> {
    let annotation = object
        .pointer("/metadata/annotations")?
        .get(crate::core::names::PROBE_ANNOTATION)?
        .as_str()?;
    let registries: Vec<String> = rejected_registries(annotation)
        .into_iter()
        .map(str::to_string)
        .collect();
    (!registries.is_empty()).then(|| {
        (
            registries,
            format!("rejected by its registry at the credential probe ({annotation})"),
        )
    })
}

/// The registries a probe annotation names as rejected (the value may list several,
/// separated by `; `).
pub fn rejected_registries(annotation: &str) -> Vec<&str> {
    annotation
        .split(';')
        .filter_map(|part| {
            let mut words = part.split_whitespace();
            match (words.next(), words.next()) {
                (Some("rejected"), Some(registry)) => Some(registry),
                _ => None,
            }
        })
        .collect()
}

/// How often each credential is asked again while the registry accepted it: often enough to
/// see a revoked robot account or an expired token well before the next Pod needs it, rarely
/// enough that one source costs a registry a few requests an hour.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// How often a rejected credential is asked again (unless its Secret changes, which probes at
/// once): registries that lock an account after failed logins (Harbor, Artifactory, Nexus,
/// LDAP-backed ones) must not see one every five minutes from us.
pub const REJECTED_RECHECK: Duration = Duration::from_secs(30 * 60);
/// After an inconclusive probe (timeout, TLS, DNS, 5xx), the first retry; each further one
/// waits twice as long, up to [`MAX_BACKOFF`].
pub const FIRST_RETRY: Duration = Duration::from_secs(30);
/// The longest wait between probes of a registry that keeps failing.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30 * 60);
/// At most this many probes start per minute, all registries together (one probe is up to
/// three requests): a namespace full of sources, or a burst of Secret changes, stays a
/// trickle no registry's rate limit (Docker Hub's included) notices.
pub const MAX_PROBES_PER_MINUTE: u32 = 30;

/// `(secret, registry)`: one series of `credential_accepted`.
pub type TargetKey = (String, String);

/// When each target is probed next. Pure: the caller passes the time.
#[derive(Debug, Default)]
pub struct Schedule {
    entries: BTreeMap<TargetKey, Entry>,
}

#[derive(Debug)]
struct Entry {
    /// A digest of what is probed (host, scheme, credential): a change probes at once, an
    /// unrelated update of the Secret (our own annotation) does not.
    fingerprint: u64,
    next: Instant,
    failures: u32,
}

/// A digest of a target's probed parts; kept in memory only, never shown.
pub fn fingerprint(target: &Target) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (
        &target.api_host,
        target.plain_http,
        &target.credential.username,
        &target.credential.password,
    )
        .hash(&mut hasher);
    hasher.finish()
}

impl Schedule {
    /// Makes the schedule follow `current` (every target the sources now hold, with its
    /// [`fingerprint`]): new and changed targets are due at once; the keys of targets that
    /// are gone are returned (their series must go too).
    pub fn follow(&mut self, current: &[(TargetKey, u64)], now: Instant) -> Vec<TargetKey> {
        let wanted: BTreeMap<&TargetKey, u64> = current.iter().map(|(k, f)| (k, *f)).collect();
        let gone: Vec<TargetKey> = self
            .entries
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .cloned()
            .collect();
        for key in &gone {
            self.entries.remove(key);
        }
        for (key, fingerprint) in wanted {
            match self.entries.get_mut(key) {
                Some(entry) if entry.fingerprint == fingerprint => {}
                Some(entry) => {
                    *entry = Entry {
                        fingerprint,
                        next: now,
                        failures: 0,
                    }
                }
                None => {
                    self.entries.insert(
                        key.clone(),
                        Entry {
                            fingerprint,
                            next: now,
                            failures: 0,
                        },
                    );
                }
            }
        }
        gone
    }

    /// The targets due at `now`, the longest-waiting first.
    pub fn due(&self, now: Instant) -> Vec<TargetKey> {
        let mut due: Vec<(&Instant, &TargetKey)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.next <= now)
            .map(|(k, e)| (&e.next, k))
            .collect();
        due.sort();
        due.into_iter().map(|(_, k)| k.clone()).collect()
    }

    /// When the next target is due (`None`: nothing to probe).
    pub fn next_due(&self) -> Option<Instant> {
        self.entries.values().map(|e| e.next).min()
    }

    /// Records a probe's outcome: accepted → [`PROBE_INTERVAL`], rejected →
    /// [`REJECTED_RECHECK`], inconclusive → [`FIRST_RETRY`] doubling up to [`MAX_BACKOFF`].
    pub fn record(&mut self, key: &TargetKey, outcome: Outcome, now: Instant) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        let wait = match outcome {
            Outcome::Accepted => {
                entry.failures = 0;
                PROBE_INTERVAL
            }
            Outcome::Rejected => {
                entry.failures = 0;
                REJECTED_RECHECK
            }
            Outcome::Inconclusive(_) => {
                let wait = FIRST_RETRY
                    .saturating_mul(1u32 << entry.failures.min(16))
                    .min(MAX_BACKOFF);
                entry.failures = entry.failures.saturating_add(1);
                wait
            }
        };
        entry.next = now + wait;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::names::DOCKER_CONFIG_JSON;

    fn secret(config: &str) -> SourceSecret {
        let encoded = base64::engine::general_purpose::STANDARD.encode(config);
        SourceSecret::from_body(
            "pull",
            &serde_json::json!({"type": DOCKER_CONFIG_JSON, "data": {".dockerconfigjson": encoded}}),
        )
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn targets_one_per_concrete_host_skipping_globs_and_tokens() {
        let config = serde_json::json!({"auths": {
            "https://registry.example.com:5000/v1/": {"auth": b64("alice:s3cret")},
            "registry.example.com:5000/team": {"auth": b64("bob:other")},
            "*.dkr.ecr.us-east-1.amazonaws.com": {"auth": b64("AWS:tok")},
            "http://LOCAL.test:5000": {"username": "u", "password": "p:with:colons"},
            "docker.io": {"auth": b64("hub:pw")},
            "ghcr.io": {"identitytoken": "x"},
            "bad host": {"auth": b64("a:b")},
        }});
        let (targets, skipped) = targets(&secret(&config.to_string()));
        let summary: Vec<(&str, &str, bool, &str, &str)> = targets
            .iter()
            .map(|t| {
                (
                    t.registry.as_str(),
                    t.api_host.as_str(),
                    t.plain_http,
                    t.credential.username.as_str(),
                    t.credential.password.as_str(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("docker.io", "registry-1.docker.io", false, "hub", "pw"),
                (
                    "local.test:5000",
                    "local.test:5000",
                    true,
                    "u",
                    "p:with:colons"
                ),
                (
                    "registry.example.com:5000",
                    "registry.example.com:5000",
                    false,
                    "alice",
                    "s3cret"
                ),
            ]
        );
        assert_eq!(targets[1].v2_url(), "http://local.test:5000/v2/");
        assert_eq!(targets[2].v2_url(), "https://registry.example.com:5000/v2/");
        assert_eq!(
            skipped,
            vec![
                Skipped::Glob("*.dkr.ecr.us-east-1.amazonaws.com".into()),
                Skipped::BadHost("bad host".into()),
                Skipped::NoPassword("ghcr.io".into()),
            ]
        );
    }

    #[test]
    fn targets_of_garbage_are_none() {
        for data in ["not base64!", &b64("not json"), &b64(r#"{"auths": 3}"#)] {
            let s = SourceSecret::from_body(
                "x",
                &serde_json::json!({"type": DOCKER_CONFIG_JSON, "data": {".dockerconfigjson": data}}),
            );
            assert_eq!(targets(&s), (vec![], vec![]), "{data}");
        }
        let opaque = SourceSecret::from_body("x", &serde_json::json!({"type": "Opaque"}));
        assert_eq!(targets(&opaque).0, vec![]);
    }

    #[test]
    fn credentials_never_print() {
        let c = Credential {
            username: "alice".into(),
            password: "hunter2".into(),
        };
        let printed = format!("{c:?}");
        assert!(
            !printed.contains("alice") && !printed.contains("hunter2"),
            "{printed}"
        );
        assert_eq!(c.basic_header(), format!("Basic {}", b64("alice:hunter2")));
    }

    #[test]
    fn challenges_parse_like_registries_send_them() {
        type Expected<'a> = Vec<(&'a str, Vec<(&'a str, &'a str)>)>;
        let cases: Vec<(&str, Expected)> = vec![
            (
                r#"Basic realm="Registry Realm""#,
                vec![("basic", vec![("realm", "Registry Realm")])],
            ),
            (
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io""#,
                vec![(
                    "bearer",
                    vec![
                        ("realm", "https://auth.docker.io/token"),
                        ("service", "registry.docker.io"),
                    ],
                )],
            ),
            (
                r#"bearer Realm = "https://t/x", Service=reg , scope="repository:a/b:pull,push""#,
                vec![(
                    "bearer",
                    vec![
                        ("realm", "https://t/x"),
                        ("service", "reg"),
                        ("scope", "repository:a/b:pull,push"),
                    ],
                )],
            ),
            (
                r#"Basic realm="a\"b", Bearer realm="https://t""#,
                vec![
                    ("basic", vec![("realm", "a\"b")]),
                    ("bearer", vec![("realm", "https://t")]),
                ],
            ),
            ("Negotiate", vec![("negotiate", vec![])]),
            ("", vec![]),
            (r#"=,"=""#, vec![]),
            (
                r#"Bearer realm="unterminated"#,
                vec![("bearer", vec![("realm", "unterminated")])],
            ),
        ];
        for (header, want) in cases {
            let got: Vec<(String, Vec<(String, String)>)> = parse_challenges(header)
                .into_iter()
                .map(|c| (c.scheme, c.params))
                .collect();
            let want: Vec<(String, Vec<(String, String)>)> = want
                .into_iter()
                .map(|(s, ps)| {
                    (
                        s.to_string(),
                        ps.into_iter()
                            .map(|(n, v)| (n.to_string(), v.to_string()))
                            .collect(),
                    )
                })
                .collect();
            assert_eq!(got, want, "{header}");
        }
    }

    #[test]
    fn token_urls() {
        let cases = [
            (
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io""#,
                Some("https://auth.docker.io/token?service=registry.docker.io"),
            ),
            (
                r#"Bearer realm="https://t/auth?x=1",service="my reg",scope="repository:a/b:pull repository:c:pull""#,
                Some(
                    "https://t/auth?x=1&service=my%20reg&scope=repository%3Aa%2Fb%3Apull&scope=repository%3Ac%3Apull",
                ),
            ),
            (r#"Bearer realm="https://t""#, Some("https://t")),
            (r#"Bearer service="s""#, None),
            (r#"Bearer realm="file:///etc/passwd""#, None),
        ];
        for (header, want) in cases {
            let challenge = &parse_challenges(header)[0];
            assert_eq!(token_url(challenge).as_deref(), want, "{header}");
        }
    }

    #[test]
    fn next_step_after_the_anonymous_answer() {
        let bearer = r#"Bearer realm="https://t/token",service="s""#;
        let cases: Vec<(u16, Vec<&str>, Next)> = vec![
            (401, vec![r#"Basic realm="r""#], Next::Basic),
            (
                401,
                vec![bearer],
                Next::Token {
                    url: "https://t/token?service=s".into(),
                },
            ),
            (
                401,
                vec![r#"Basic realm="r""#, bearer],
                Next::Token {
                    url: "https://t/token?service=s".into(),
                },
            ),
            (
                401,
                vec![r#"Bearer service="s""#, r#"Basic realm="r""#],
                Next::Basic,
            ),
            (
                401,
                vec![],
                Next::Done(Outcome::Inconclusive(Inconclusive::BadChallenge)),
            ),
            (
                401,
                vec!["Negotiate"],
                Next::Done(Outcome::Inconclusive(Inconclusive::BadChallenge)),
            ),
            (
                200,
                vec![],
                Next::Done(Outcome::Inconclusive(Inconclusive::NoChallenge)),
            ),
            (
                404,
                vec![],
                Next::Done(Outcome::Inconclusive(Inconclusive::UnexpectedStatus)),
            ),
            (
                503,
                vec![],
                Next::Done(Outcome::Inconclusive(Inconclusive::ServerError)),
            ),
            (
                429,
                vec![],
                Next::Done(Outcome::Inconclusive(Inconclusive::ServerError)),
            ),
        ];
        for (status, headers, want) in cases {
            assert_eq!(
                after_anonymous(status, &headers),
                want,
                "{status} {headers:?}"
            );
        }
    }

    #[test]
    fn outcome_after_presenting_the_credential() {
        let cases = [
            (200, Outcome::Accepted),
            (204, Outcome::Accepted),
            (401, Outcome::Rejected),
            (403, Outcome::Rejected),
            (404, Outcome::Inconclusive(Inconclusive::UnexpectedStatus)),
            (500, Outcome::Inconclusive(Inconclusive::ServerError)),
            (302, Outcome::Inconclusive(Inconclusive::UnexpectedStatus)),
        ];
        for (status, want) in cases {
            assert_eq!(after_credential(status), want, "{status}");
        }
    }

    #[test]
    fn tokens_from_json() {
        let cases: [(&[u8], Option<&str>); 6] = [
            (br#"{"token":"abc","expires_in":300}"#, Some("abc")),
            (br#"{"access_token":"xyz"}"#, Some("xyz")),
            (br#"{"token":"","access_token":"xyz"}"#, Some("xyz")),
            (br#"{"token":3}"#, None),
            (b"not json", None),
            (b"{}", None),
        ];
        for (body, want) in cases {
            assert_eq!(token_from_json(body).as_deref(), want);
        }
    }

    #[test]
    fn registries_compare_like_images_name_them() {
        let cases = [
            (
                "registry.example.com:5000",
                "registry.example.com:5000",
                true,
            ),
            ("Registry.Example.com", "registry.example.com", true),
            ("registry.example.com", "registry.example.com:5000", false),
            ("index.docker.io", "docker.io", true),
            ("docker.io", "docker.io", true),
            ("registry-1.docker.io", "docker.io", true),
            ("ghcr.io", "docker.io", false),
        ];
        for (probed, image, want) in cases {
            assert_eq!(same_registry(probed, image), want, "{probed} {image}");
        }
    }

    #[test]
    fn annotations_follow_the_conclusive_answers_only() {
        use std::collections::BTreeSet;
        let at = "2026-12-07T03:00:00Z".to_string();
        let a_ghcr = key("a", "ghcr.io");
        let a_quay = key("a", "quay.io");
        let b_ghcr = key("b", "ghcr.io");
        let c_ghcr = key("c", "ghcr.io");
        let targets = [
            a_ghcr.clone(),
            a_quay.clone(),
            b_ghcr.clone(),
            c_ghcr.clone(),
        ];
        let all: BTreeSet<TargetKey> = targets.iter().cloned().collect();
        let rejected: BTreeMap<TargetKey, String> =
            [(a_ghcr.clone(), at.clone()), (a_quay.clone(), at.clone())].into();
        let old = "rejected ghcr.io 2026-12-01T00:00:00Z";
        let both = "rejected ghcr.io 2026-12-07T03:00:00Z; rejected quay.io 2026-12-07T03:00:00Z";
        // (sources with their annotation, concluded) → updates
        type Sources<'a> = Vec<(&'a str, Option<&'a str>)>;
        type Updates = Vec<(String, Option<String>)>;
        let cases: Vec<(Sources, BTreeSet<TargetKey>, Updates)> = vec![
            // Everything concluded: a gets both rejections, b (accepted) loses its stale one,
            // c is already right, d (no concrete host left) loses its annotation.
            (
                vec![("a", None), ("b", Some(old)), ("c", None), ("d", Some(old))],
                all.clone(),
                vec![
                    ("a".into(), Some(both.into())),
                    ("b".into(), None),
                    ("d".into(), None),
                ],
            ),
            // Already written: nothing to do.
            (vec![("a", Some(both)), ("c", None)], all.clone(), vec![]),
            // Just restarted, nothing concluded: no source with targets is touched.
            (vec![("a", None), ("b", Some(old))], BTreeSet::new(), vec![]),
            // a half concluded: left alone; b concluded: cleared.
            (
                vec![("a", None), ("b", Some(old))],
                [a_ghcr.clone(), b_ghcr.clone()].into(),
                vec![("b".into(), None)],
            ),
        ];
        for (sources, concluded, want) in cases {
            let got = annotation_updates(sources.clone(), &targets, &concluded, &rejected);
            assert_eq!(got, want, "{sources:?}");
        }
    }

    #[test]
    fn rejection_annotations_round_trip() {
        let one = rejection_annotation("registry.example.com:5000", "2026-12-07T03:00:00Z");
        assert_eq!(
            one,
            "rejected registry.example.com:5000 2026-12-07T03:00:00Z"
        );
        assert_eq!(rejected_registries(&one), vec!["registry.example.com:5000"]);
        let two = format!(
            "{one}; {}",
            rejection_annotation("ghcr.io", "2026-12-07T03:00:01Z")
        );
        assert_eq!(
            rejected_registries(&two),
            vec!["registry.example.com:5000", "ghcr.io"]
        );
        assert_eq!(rejected_registries("accepted"), Vec::<&str>::new());
        assert_eq!(rejected_registries(""), Vec::<&str>::new());
    }

    fn key(secret: &str, registry: &str) -> TargetKey {
        (secret.to_string(), registry.to_string())
    }

    #[test]
    fn schedule_probes_new_and_changed_targets_at_once_and_backs_off() {
        let t0 = Instant::now();
        let mut schedule = Schedule::default();
        let a = key("pull", "a.example");
        let b = key("pull", "b.example");
        assert_eq!(
            schedule.follow(&[(a.clone(), 1), (b.clone(), 2)], t0),
            Vec::<TargetKey>::new()
        );
        assert_eq!(schedule.due(t0), vec![a.clone(), b.clone()]);
        schedule.record(&a, Outcome::Accepted, t0);
        schedule.record(&b, Outcome::Rejected, t0);
        assert_eq!(schedule.due(t0), Vec::<TargetKey>::new());
        assert_eq!(schedule.next_due(), Some(t0 + PROBE_INTERVAL));
        assert_eq!(schedule.due(t0 + PROBE_INTERVAL), vec![a.clone()]);
        assert_eq!(
            schedule.due(t0 + REJECTED_RECHECK),
            vec![a.clone(), b.clone()]
        );
        // The same credential again (our own annotation changed the Secret): nothing due.
        assert!(
            schedule
                .follow(&[(a.clone(), 1), (b.clone(), 2)], t0)
                .is_empty()
        );
        assert_eq!(schedule.due(t0), Vec::<TargetKey>::new());
        // b's password changed: due at once; a is gone.
        assert_eq!(schedule.follow(&[(b.clone(), 3)], t0), vec![a.clone()]);
        assert_eq!(schedule.due(t0), vec![b.clone()]);
        // Errors back off: 30 s, 60 s, 120 s, ... capped.
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..8 {
            schedule.record(&b, Outcome::Inconclusive(Inconclusive::Timeout), now);
            let next = schedule.next_due().expect("due");
            waits.push((next - now).as_secs());
            now = next;
        }
        assert_eq!(waits, vec![30, 60, 120, 240, 480, 960, 1800, 1800]);
        // A conclusive answer resets the backoff.
        schedule.record(&b, Outcome::Accepted, now);
        schedule.record(&b, Outcome::Inconclusive(Inconclusive::Transport), now);
        assert_eq!(schedule.next_due(), Some(now + FIRST_RETRY));
        // Recording an unknown target changes nothing.
        schedule.record(&a, Outcome::Accepted, now);
        assert_eq!(schedule.due(now + MAX_BACKOFF), vec![b]);
    }

    #[test]
    fn fingerprints_follow_the_credential() {
        let (found, _) = targets(&secret(
            &serde_json::json!({"auths": {"r.example": {"auth": b64("u:p")}}}).to_string(),
        ));
        let (other, _) = targets(&secret(
            &serde_json::json!({"auths": {"r.example": {"auth": b64("u:q")}}}).to_string(),
        ));
        assert_eq!(fingerprint(&found[0]), fingerprint(&found[0].clone()));
        assert_ne!(fingerprint(&found[0]), fingerprint(&other[0]));
    }
}
