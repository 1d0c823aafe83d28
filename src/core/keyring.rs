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
pub(crate) fn split(url: &str) -> (Vec<&str>, &str, &str) {
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

/// Go's `path/filepath.Match` on one host label (Unix, no separators in a label): `*`, `?`,
/// `[class]` with ranges and `^` negation, `\` escapes. `None` for a malformed pattern, which
/// the kubelet treats as no match. Go's algorithm, so also its cost: the pattern is split at
/// stars into star-free chunks, each matched at its leftmost place, so a lookup is at most
/// (label length × pattern length), never exponential in the number of stars.
pub(crate) fn filepath_match(pattern: &str, name: &str) -> Option<bool> {
    let mut pattern = pattern;
    let mut name = name;
    'chunks: while !pattern.is_empty() {
        let (star, chunk, rest) = scan_chunk(pattern);
        pattern = rest;
        if star && chunk.is_empty() {
            // A trailing star matches the rest.
            return Some(true);
        }
        // At the current position; the last chunk must use up the name.
        if let Some(after) = match_chunk(chunk, name)?
            && (after.is_empty() || !pattern.is_empty())
        {
            name = after;
            continue;
        }
        if star {
            // Skip one character more each time.
            for (i, c) in name.char_indices() {
                if let Some(after) = match_chunk(chunk, &name[i + c.len_utf8()..])? {
                    if pattern.is_empty() && !after.is_empty() {
                        continue;
                    }
                    name = after;
                    continue 'chunks;
                }
            }
        }
        // No match; Go still reports a malformed remainder of the pattern.
        while !pattern.is_empty() {
            let (_, chunk, rest) = scan_chunk(pattern);
            pattern = rest;
            match_chunk(chunk, "")?;
        }
        return Some(false);
    }
    Some(name.is_empty())
}

/// Whether Go's `filepath.Match` accepts `pattern` at all (a malformed one matches nothing).
pub(crate) fn is_well_formed_glob(pattern: &str) -> bool {
    // Go reads the whole pattern even after a mismatch, so any name finds a malformed part.
    filepath_match(pattern, "").is_some()
}

/// Go's `scanChunk`: leading stars, then the pattern up to the next star outside a class.
fn scan_chunk(pattern: &str) -> (bool, &str, &str) {
    let trimmed = pattern.trim_start_matches('*');
    let star = trimmed.len() != pattern.len();
    let bytes = trimmed.as_bytes();
    let mut in_range = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if i + 1 < bytes.len() => i += 1,
            b'[' => in_range = true,
            b']' => in_range = false,
            b'*' if !in_range => break,
            _ => {}
        }
        i += 1;
    }
    (star, &trimmed[..i], &trimmed[i..])
}

/// Go's `matchChunk`: the rest of `name` after `chunk` (no stars) matched at its start,
/// `Some(None)` when it does not match, `None` when the chunk is malformed. After a mismatch
/// the chunk is still read to the end, as Go does, to find malformed classes.
fn match_chunk<'n>(chunk: &str, name: &'n str) -> Option<Option<&'n str>> {
    let mut chunk = chunk;
    let mut name = name;
    let mut failed = false;
    while let Some(first) = chunk.chars().next() {
        let next = (!failed).then(|| name.chars().next()).flatten();
        if next.is_none() {
            failed = true;
        }
        let advance = |name: &mut &'n str, c: char| *name = &name[c.len_utf8()..];
        match first {
            '[' => {
                chunk = &chunk[1..];
                let negated = chunk.starts_with('^');
                if negated {
                    chunk = &chunk[1..];
                }
                let mut matched = false;
                let mut ranges = 0;
                loop {
                    if ranges > 0
                        && let Some(after) = chunk.strip_prefix(']')
                    {
                        chunk = after;
                        break;
                    }
                    let (lo, after) = class_char(chunk)?;
                    let (hi, after) = match after.strip_prefix('-') {
                        Some(after) => class_char(after)?,
                        None => (lo, after),
                    };
                    chunk = after;
                    if next.is_some_and(|c| lo <= c && c <= hi) {
                        matched = true;
                    }
                    ranges += 1;
                }
                if let Some(c) = next {
                    advance(&mut name, c);
                }
                if matched == negated {
                    failed = true;
                }
            }
            '?' => {
                if let Some(c) = next {
                    advance(&mut name, c);
                }
                chunk = &chunk[1..];
            }
            _ => {
                let literal = if first == '\\' {
                    chunk = &chunk[1..];
                    chunk.chars().next()?
                } else {
                    first
                };
                if let Some(c) = next {
                    if c != literal {
                        failed = true;
                    }
                    advance(&mut name, c);
                }
                chunk = &chunk[literal.len_utf8()..];
            }
        }
    }
    Some((!failed).then_some(name))
}

/// Go's `getEsc`: one (possibly escaped) character of a class, and what follows it. A class
/// character may not be `-` or `]`, and the class must go on after it (`[0-9-9]`, `[]a]`,
/// `[-a]` and an unterminated `[a` are malformed).
fn class_char(chunk: &str) -> Option<(char, &str)> {
    let chunk = match chunk.as_bytes().first()? {
        b'-' | b']' => return None,
        b'\\' => &chunk[1..],
        _ => chunk,
    };
    let c = chunk.chars().next()?;
    let rest = &chunk[c.len_utf8()..];
    (!rest.is_empty()).then_some((c, rest))
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
    fn many_stars_on_a_long_label_take_linear_time() {
        // A recursive matcher takes C(n + k, k) steps for k stars; this one about n × k.
        let label = "a".repeat(4000);
        assert_eq!(filepath_match("*****x", &label), Some(false));
        assert_eq!(filepath_match("*a*a*a*a*", &label), Some(true));
        let keyring = Keyring::new(["****x.example.com"]);
        assert!(!keyring.serves(&format!("{}.example.com/app", "a".repeat(200))));
        assert!(keyring.serves("abx.example.com/app"));
    }

    #[test]
    fn a_malformed_key_glob_serves_nothing() {
        assert!(!Keyring::new(["reg[0-9-9].example.com"]).serves("reg2.example.com/app"));
        assert!(Keyring::new(["reg[0-9].example.com"]).serves("reg2.example.com/app"));
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
            // Malformed classes are errors, whether or not the name would match (Go's table).
            ("[0-9-9]", "2", None),
            ("[]a]", "]", None),
            ("[-]", "-", None),
            ("[x-]", "x", None),
            ("[-x]", "x", None),
            ("[a-b-c]", "a", None),
            ("a[", "x", None),
            ("*x[", "yz", None),
            ("[\\]a]", "]", Some(true)),
            ("[!]", "!", Some(true)),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", Some(true)),
            ("a*b?c*x", "abxbbxdbxebxczzx", Some(true)),
            ("a*b?c*x", "abxbbxdbxebxczzy", Some(false)),
            ("*", "", Some(true)),
            ("**x", "ax", Some(true)),
            ("?", "é", Some(true)),
        ] {
            assert_eq!(filepath_match(pattern, name), want, "{pattern} {name}");
        }
    }
}
