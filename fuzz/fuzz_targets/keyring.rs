//! `core::keyring`: the kubelet's credential keyring. Input: `<docker config key>\n<image>`.
//!
//! Properties: `Keyring::new([key]).serves(image)` (and `coverage::of`, `from_docker_config_key`) never
//! panics; for an image that parses, a key equal to its registry host as the kubelet names it
//! (`docker.io`, `Registry.Example.com`, `localhost:5000`), in any form `kubectl create secret
//! docker-registry --docker-server` takes (scheme, trailing `/`, `/v1/`, `/v2/`, userinfo),
//! serves it (`key-host-serves`), and so does `https://index.docker.io/v1/` for Docker Hub
//! (`docker-hub-key-serves`); a key on another port never does (`key-other-port`), whatever the
//! key (`stored-key-other-port`). Differential (`go-filepath-match`): on one host label, the
//! keyring's glob agrees with a port of Go's path/filepath.Match, for the characters Go's URL
//! parser lets into a host. Per-input time limit (run.sh: 10 s) catches slow matching (a
//! matcher exponential in the number of stars was found that way).
#![no_main]

use fuzz_support::{check, go_filepath_match};
use libfuzzer_sys::fuzz_target;
use pullsecret_injector::core::coverage;
use pullsecret_injector::core::image;
use pullsecret_injector::core::keyring::{Keyring, urls_match};
use pullsecret_injector::core::rules::RegistryPattern;

/// Go's net.SplitHostPort as the keyring uses it: the port of `host[:port]`, `""` when none.
fn port_of(url: &str) -> &str {
    let host = &url[..url.find(['/', '?', '#']).unwrap_or(url.len())];
    if let Some(inner) = host.strip_prefix('[') {
        return match inner.split_once(']') {
            Some((_, rest)) => rest.strip_prefix(':').unwrap_or(""),
            None => "",
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => port,
        _ => "",
    }
}

/// Characters Go's url.Parse accepts in a host (RFC 3986 unreserved and sub-delims, and the few
/// it lets through), less the separators `.` and `:`.
fn go_host_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_~!$&'()*+,;=[]<>\"".contains(c)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (key, target) = text.split_once('\n').unwrap_or((text, ""));
    if fuzz_support::show() {
        eprintln!("key {key:?}, image {target:?}");
    }
    let keyring = Keyring::new([key]);
    let _ = keyring.serves(target);
    if let Ok(pattern) = RegistryPattern::from_docker_config_key(key) {
        let _ = coverage::of(&pattern, [("s", &keyring)]);
    }

    // Differential: one label each.
    let label =
        |s: &str| s[..s.find(['.', ':', '/', '?', '#', '@']).unwrap_or(s.len())].to_string();
    let glob = label(key.strip_prefix("https://").unwrap_or(key));
    let name = label(target);
    if !glob.is_empty() && glob.chars().all(go_host_char) && glob.len() <= 64 && name.len() <= 64 {
        let go_result = go_filepath_match(&glob, &name);
        let go = go_result == Ok(true);
        // A class Go rejects (`[a-b-c]`, `[]a]`, `[-a]`) is no match to the kubelet.
        check("go-filepath-match", urls_match(&glob, &name) == go, || {
            format!(
                "glob {glob:?} vs {name:?}: keyring {}, Go {go} ({:?})",
                !go,
                go_filepath_match(&glob, &name)
            )
        });
    }

    let Ok(img) = image::parse(target) else {
        return;
    };
    let name = img.kubelet_name();
    let domain = &name[..name.find('/').unwrap_or(name.len())];
    let port = img.port.unwrap_or("");

    // Whatever the key: a stored key on another port never matches.
    for stored in keyring.keys() {
        if port_of(stored) != port_of(&name) {
            check("stored-key-other-port", !urls_match(stored, &name), || {
                format!("key {key:?} (stored {stored:?}) matches {name:?}")
            });
        }
    }

    // The kubelet itself never matches a bracketed IPv6 host without a port: Go's SplitHostPort
    // fails, the label keeps its brackets and `[` starts a glob class.
    if !(domain.starts_with('[') && img.port.is_none()) {
        for form in [
            domain.to_string(),
            format!("https://{domain}"),
            format!("http://{domain}"),
            format!("https://{domain}/"),
            format!("https://{domain}/v1/"),
            format!("https://{domain}/v2/"),
            format!("user:secret@{domain}"),
            format!("https://user@{domain}/v2/"),
        ] {
            check(
                "key-host-serves",
                Keyring::new([form.as_str()]).serves(&name),
                || format!("key {form:?} does not serve {name:?} (image {target:?})"),
            );
            check(
                "key-host-serves",
                Keyring::new([key, form.as_str()]).serves(&name),
                || format!("keys [{key:?}, {form:?}] do not serve {name:?} (image {target:?})"),
            );
        }
    }
    if img.host == "docker.io" && img.port.is_none() && domain == "docker.io" {
        check(
            "docker-hub-key-serves",
            Keyring::new(["https://index.docker.io/v1/"]).serves(&name),
            || format!("https://index.docker.io/v1/ does not serve {name:?}"),
        );
    }

    // Another port: none for an image with one, one more digit, or a port for one without.
    let host = match img.port {
        Some(p) => &domain[..domain.len() - p.len() - 1],
        None => domain,
    };
    let mut others = vec![
        format!("{host}:{port}1"),
        format!("https://{host}:{port}9/v2/"),
    ];
    if img.port.is_some() {
        others.push(host.to_string());
        others.push(format!("https://{host}/v1/"));
    }
    for other in others {
        check(
            "key-other-port",
            !Keyring::new([other.as_str()]).serves(&name),
            || format!("key {other:?} serves {name:?} (image {target:?})"),
        );
    }
});
