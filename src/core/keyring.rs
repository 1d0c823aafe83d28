//! The kubelet's credential keyring (`pkg/credentialprovider/keyring.go`, Kubernetes 1.20
//! and later), reproduced to answer one question: would the kubelet use this docker config
//! Secret's credentials to pull this image?
//!
//! Followed exactly, including where it differs from our rule matching:
//! - keys: the scheme (`https://`, `http://`) is dropped, a path starting `/v1/` or `/v2/`
//!   loses that prefix, and a remaining path of `/` is none (`https://index.docker.io/v1/`
//!   is the host `index.docker.io`);
//! - match: the port must be equal (none matches none), the host has as many labels as the
//!   key and each matches the key's label as a `filepath.Match` glob (case-sensitive), and the
//!   key's path is a plain string prefix of the image's path;
//! - Docker Hub: when no key matches, a key that is exactly `index.docker.io` serves the images
//!   the kubelet considers Docker Hub's (`nginx`, `docker.io/...`, `index.docker.io/...`).
//!   `docker.io` is just a key like any other; `registry-1.docker.io` is just another host.
//!
//! Images are looked up by the name the kubelet uses: the normalised reference without tag
//! or digest ([`ImageRef::kubelet_name`]).
//!
//! [`ImageRef::kubelet_name`]: crate::core::image::ImageRef::kubelet_name

use crate::core::rules::RegistryPattern;

/// The key the kubelet keeps when a docker config lists no host (Docker Hub's fallback).
pub const DEFAULT_REGISTRY_HOST: &str = "index.docker.io";

/// The registry keys of one docker config Secret, as the kubelet stores them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keyring {
    /// Schemeless `host[:port][/path]`, deduplicated, sorted in reverse (the kubelet's order).
    keys: Vec<String>,
}

impl Keyring {
    /// The keyring of a docker config's `auths` keys (keys the kubelet cannot parse are
    /// skipped, as it skips them).
    pub fn new<'a>(config_keys: impl IntoIterator<Item = &'a str>) -> Self {
        let mut keys: Vec<String> = config_keys.into_iter().filter_map(stored_key).collect();
        keys.sort();
        keys.dedup();
        keys.reverse();
        Self { keys }
    }

    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// Whether the kubelet would use these credentials for `image` (its normalised name).
    pub fn serves(&self, image: &str) -> bool {
        self.keys.iter().any(|key| urls_match(key, image))
            || (is_default_registry_match(image)
                && self.keys.iter().any(|k| k == DEFAULT_REGISTRY_HOST))
    }

    /// Whether these credentials serve every image `pattern` matches: the pattern itself is
    /// looked up as if it were an image (a glob label is matched literally, so only a key with
    /// the same glob, or `*`, covers it).
    pub fn covers(&self, pattern: &RegistryPattern) -> bool {
        self.serves(&pattern.as_kubelet_target())
    }
}

/// `BasicDockerKeyring.Add`: the key a docker config entry is stored under.
pub(crate) fn stored_key(location: &str) -> Option<String> {
    let rest = location
        .strip_prefix("https://")
        .or_else(|| location.strip_prefix("http://"))
        .unwrap_or(location);
    // url.Parse: the authority runs to the first '/', '?' or '#'; userinfo ends at the last '@'.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if host.contains(char::is_whitespace) {
        return None;
    }
    let tail = &rest[authority_end..];
    let path = &tail[..tail.find(['?', '#']).unwrap_or(tail.len())];
    let path = if path.starts_with("/v2/") || path.starts_with("/v1/") {
        &path[3..]
    } else {
        path
    };
    Some(if path.is_empty() || path == "/" {
        host.to_string()
    } else {
        format!("{host}{path}")
    })
}

/// `ParseSchemelessURL` then `SplitURL`: labels, port and path of `host[:port][/path]`.
fn split(url: &str) -> (Vec<&str>, &str, &str) {
    let host_end = url.find(['/', '?', '#']).unwrap_or(url.len());
    let (host, rest) = url.split_at(host_end);
    let path = &rest[..rest.find(['?', '#']).unwrap_or(rest.len())];
    let (host, port) = split_host_port(host).unwrap_or((host, ""));
    (host.split('.').collect(), port, path)
}

/// Go's `net.SplitHostPort`: `host:port` or `[v6]:port`; an error (None) without a port.
fn split_host_port(host: &str) -> Option<(&str, &str)> {
    if let Some(inner) = host.strip_prefix('[') {
        let (address, rest) = inner.split_once(']')?;
        return Some((address, rest.strip_prefix(':')?));
    }
    let (name, port) = host.rsplit_once(':')?;
    if name.contains(':') {
        return None;
    }
    Some((name, port))
}

/// `URLsMatchStr(glob, target)`.
pub fn urls_match(glob: &str, target: &str) -> bool {
    let (glob_labels, glob_port, glob_path) = split(glob);
    let (target_labels, target_port, target_path) = split(target);
    glob_port == target_port
        && glob_labels.len() == target_labels.len()
        && target_path.starts_with(glob_path)
        && glob_labels
            .iter()
            .zip(&target_labels)
            .all(|(g, t)| filepath_match(g, t) == Some(true))
}

/// `isDefaultRegistryMatch`: the kubelet's idea of a Docker Hub image name.
fn is_default_registry_match(image: &str) -> bool {
    let (first, rest) = match image.split_once('/') {
        Some((first, rest)) => (first, Some(rest)),
        None => (image, None),
    };
    if first.is_empty() {
        return false;
    }
    if rest.is_none() || first == "docker.io" || first == "index.docker.io" {
        return true;
    }
    !first.contains(['.', ':'])
}

/// Go's `path/filepath.Match` on one host label (no separators): `*`, `?`, `[class]` with
/// ranges and `^` negation, `\` escapes. `None` for a malformed pattern (no match).
fn filepath_match(pattern: &str, name: &str) -> Option<bool> {
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    glob(&pattern, &name)
}

fn glob(pattern: &[char], name: &[char]) -> Option<bool> {
    let Some((&first, rest)) = pattern.split_first() else {
        return Some(name.is_empty());
    };
    match first {
        '*' => {
            for skip in 0..=name.len() {
                if glob(rest, &name[skip..])? {
                    return Some(true);
                }
            }
            // Keep checking the pattern is well formed, as Go reports bad patterns.
            Some(false)
        }
        '?' => match name.split_first() {
            Some((_, name_rest)) => glob(rest, name_rest),
            None => {
                glob(rest, &[])?;
                Some(false)
            }
        },
        '[' => {
            let (matched, after) = class(rest, name.first().copied())?;
            match name.split_first() {
                Some((_, name_rest)) if matched => glob(after, name_rest),
                _ => Some(false),
            }
        }
        '\\' => {
            let (&escaped, rest) = rest.split_first()?;
            match name.split_first() {
                Some((&c, name_rest)) if c == escaped => glob(rest, name_rest),
                _ => Some(false),
            }
        }
        c => match name.split_first() {
            Some((&n, name_rest)) if n == c => glob(rest, name_rest),
            _ => Some(false),
        },
    }
}

/// A character class after `[`: whether `c` is in it, and the pattern after `]`.
fn class(pattern: &[char], c: Option<char>) -> Option<(bool, &[char])> {
    let (negated, mut rest) = match pattern.split_first() {
        Some(('^', rest)) => (true, rest),
        _ => (false, pattern),
    };
    let mut matched = false;
    let mut first = true;
    loop {
        let (&lo, after) = rest.split_first()?;
        if lo == ']' && !first {
            rest = after;
            break;
        }
        first = false;
        let (lo, after) = if lo == '\\' {
            let (&e, after) = after.split_first()?;
            (e, after)
        } else {
            (lo, after)
        };
        let (hi, after) = match after {
            ['-', hi, after @ ..] if *hi != ']' => {
                let (hi, after) = if *hi == '\\' {
                    let (&e, after) = after.split_first()?;
                    (e, after)
                } else {
                    (*hi, after)
                };
                (hi, after)
            }
            _ => (lo, after),
        };
        if let Some(c) = c
            && lo <= c
            && c <= hi
        {
            matched = true;
        }
        rest = after;
    }
    Some((matched != negated, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `TestURLsMatch` of the kubelet's keyring_test.go, every case.
    #[test]
    fn kubelet_urls_match() {
        let cases = [
            ("*.kubernetes.io", "prefix.kubernetes.io", true),
            ("prefix.*.io", "prefix.kubernetes.io", true),
            ("prefix.kubernetes.*", "prefix.kubernetes.io", true),
            ("*-good.kubernetes.io", "prefix-good.kubernetes.io", true),
            ("*.kubernetes.io/blah", "prefix.kubernetes.io/blah", true),
            ("prefix.*.io/foo", "prefix.kubernetes.io/foo/bar", true),
            (
                "*.kubernetes.io:1111/blah",
                "prefix.kubernetes.io:1111/blah",
                true,
            ),
            (
                "prefix.*.io:1111/foo",
                "prefix.kubernetes.io:1111/foo/bar",
                true,
            ),
            ("*.kubernetes.io", "kubernetes.io", false),
            ("*.*.kubernetes.io", "prefix.kubernetes.io", false),
            ("*.*.kubernetes.io", "kubernetes.io", false),
            ("kubernetes.io", "kubernetes.com", false),
            ("k*.io", "quay.io", false),
            (
                "*.kubernetes.io:1234/blah",
                "prefix.kubernetes.io:1111/blah",
                false,
            ),
            (
                "prefix.*.io/foo",
                "prefix.kubernetes.io:1111/foo/bar",
                false,
            ),
        ];
        for (glob, target, want) in cases {
            assert_eq!(urls_match(glob, target), want, "{glob} vs {target}");
        }
    }

    /// `TestDockerKeyringForGlob` (hits) and `TestKeyringMiss` (misses): a config with one
    /// key, looked up as `<target>/foo/bar`.
    #[test]
    fn kubelet_keyring_for_glob_and_misses() {
        let hits = [
            ("https://hello.kubernetes.io", "hello.kubernetes.io"),
            ("https://*.docker.io", "prefix.docker.io"),
            ("https://prefix.*.io", "prefix.docker.io"),
            ("https://prefix.docker.*", "prefix.docker.io"),
            ("https://*.docker.io/path", "prefix.docker.io/path"),
            ("https://prefix.*.io/path", "prefix.docker.io/path/subpath"),
            ("https://prefix.docker.*/path", "prefix.docker.io/path"),
            ("https://*.docker.io:8888", "prefix.docker.io:8888"),
            ("https://prefix.*.io:8888", "prefix.docker.io:8888"),
            ("https://prefix.docker.*:8888", "prefix.docker.io:8888"),
            (
                "https://*.docker.io/path:1111",
                "prefix.docker.io/path:1111",
            ),
            ("https://*.docker.io/v1/", "prefix.docker.io/path:1111"),
            ("https://*.docker.io/v2/", "prefix.docker.io/path:1111"),
            (
                "https://prefix.docker.*/path:1111",
                "prefix.docker.io/path:1111",
            ),
            ("prefix.docker.io:1111", "prefix.docker.io:1111/path"),
            ("*.docker.io:1111", "prefix.docker.io:1111/path"),
        ];
        for (key, target) in hits {
            let keyring = Keyring::new([key]);
            assert!(
                keyring.serves(&format!("{target}/foo/bar")),
                "{key} must serve {target}"
            );
        }
        let misses = [
            ("https://hello.kubernetes.io", "world.mesos.org/foo/bar"),
            ("https://*.docker.com", "prefix.docker.io"),
            ("https://suffix.*.io", "prefix.docker.io"),
            ("https://prefix.docker.c*", "prefix.docker.io"),
            (
                "https://prefix.*.io/path:1111",
                "prefix.docker.io/path/subpath:1111",
            ),
            ("suffix.*.io", "prefix.docker.io"),
        ];
        for (key, target) in misses {
            let keyring = Keyring::new([key]);
            assert!(
                !keyring.serves(&format!("{target}/foo/bar")),
                "{key} must not serve {target}"
            );
        }
    }

    /// `TestKeyringMissWithDockerHubCredentials`, `TestKeyringHitWith*DockerHub`,
    /// `TestIsDefaultRegistryMatch`, `TestDockerKeyringLookup`, `TestIssue3797`.
    #[test]
    fn kubelet_docker_hub_and_lookup_cases() {
        let hub = Keyring::new(["https://index.docker.io/v1/"]);
        assert_eq!(hub.keys(), ["index.docker.io"]);
        assert!(!hub.serves("world.mesos.org/foo/bar"));
        assert!(hub.serves("google/docker-registry"));
        assert!(hub.serves("jenkins"));
        assert!(hub.serves("index.docker.io/v1//google/docker-registry"));
        for (image, want) in [
            ("foo/bar", true),
            ("docker.io/foo/bar", true),
            ("index.docker.io/foo/bar", true),
            ("foo", true),
            ("", false),
            ("registry.tld/foo/bar", false),
            ("registry:5000/foo/bar", false),
            ("myhostdocker.io/foo/bar", false),
        ] {
            assert_eq!(is_default_registry_match(image), want, "{image:?}");
        }
        let bar = Keyring::new(["bar.example.com/pong", "bar.example.com"]);
        for (image, want) in [
            ("bar.example.com", true),
            ("bar.example.com/pong", true),
            ("bar.example.com/ping", true),
            ("bar.example.com/pongz", true),
            ("bar.example.com/pong/pang", true),
            ("example.com", false),
            ("foo.example.com", false),
        ] {
            assert_eq!(bar.serves(image), want, "{image}");
        }
        let pong_only = Keyring::new(["bar.example.com/pong"]);
        // A plain string prefix, as the kubelet compares paths.
        assert!(pong_only.serves("bar.example.com/pongz"));
        assert!(!pong_only.serves("bar.example.com/ping"));
        let quay = Keyring::new(["https://quay.io/v1/"]);
        for image in ["quay.io", "quay.io/foo", "quay.io/foo/bar"] {
            assert!(quay.serves(image), "{image}");
        }
    }

    /// The forms users type for `kubectl create secret docker-registry --docker-server`.
    #[test]
    fn docker_server_forms() {
        let cases = [
            ("127.0.0.1:5000", "127.0.0.1:5000/private/app", true),
            ("https://127.0.0.1:5000", "127.0.0.1:5000/private/app", true),
            (
                "https://127.0.0.1:5000/v1/",
                "127.0.0.1:5000/private/app",
                true,
            ),
            (
                "https://127.0.0.1:5000/v2/",
                "127.0.0.1:5000/private/app",
                true,
            ),
            ("http://127.0.0.1:5000", "127.0.0.1:5000/private/app", true),
            ("127.0.0.1:5000/private", "127.0.0.1:5000/private/app", true),
            ("127.0.0.1:5000/other", "127.0.0.1:5000/private/app", false),
            ("127.0.0.1", "127.0.0.1:5000/private/app", false),
            ("localhost:5000", "127.0.0.1:5000/private/app", false),
            ("https://ghcr.io/v2/acme", "ghcr.io/acme/api", true),
            ("docker.io", "docker.io/library/nginx", true),
            ("registry-1.docker.io", "docker.io/library/nginx", false),
            ("index.docker.io/library", "docker.io/library/nginx", false),
            ("user:pass@ghcr.io", "ghcr.io/a/b", true),
        ];
        for (key, image, want) in cases {
            assert_eq!(Keyring::new([key]).serves(image), want, "{key} for {image}");
        }
    }

    #[test]
    fn globs_follow_go_filepath_match() {
        for (pattern, name, want) in [
            ("a*c", "abbc", Some(true)),
            ("a?c", "abc", Some(true)),
            ("a?c", "ac", Some(false)),
            ("[a-c]x", "bx", Some(true)),
            ("[^a-c]x", "bx", Some(false)),
            ("[^a-c]x", "dx", Some(true)),
            ("a\\*", "a*", Some(true)),
            ("A", "a", Some(false)),
            ("[", "a", None),
            ("a[", "ab", None),
        ] {
            assert_eq!(filepath_match(pattern, name), want, "{pattern} {name}");
        }
    }
}
