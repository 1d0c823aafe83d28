//! `core::image::parse` on arbitrary text.
//!
//! Properties, when it parses: every part is valid by the grammar (written again in
//! fuzz_support, independently of src/core/image.rs): host labels, port digits, path components,
//! tag, digest; the host is lowercase; the path is the repository as written, with `library/`
//! added exactly where distribution's splitDockerDomain adds it (no domain, or exactly
//! `docker.io` or `index.docker.io`, and a one-component path), and such names are Docker Hub
//! with at least two path components; the Display form re-parses to the same host, port, path,
//! tag and digest, and is a fixed point; the kubelet name is `<registry as written>/<path>`, the
//! registry the same host and port as ours, fits distribution's 255-character limit on a
//! normalised name, and re-parses to the same registry and path. Never panics.
#![no_main]

use fuzz_support::{
    canonical_host, check, is_digest, is_domain_component, is_domain_part, is_path_component,
    is_tag,
};
use libfuzzer_sys::fuzz_target;
use pullsecret_injector::core::image;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(img) = image::parse(text) else { return };
    if fuzz_support::show() {
        eprintln!("{text:?} -> {img:?}");
    }

    // Every part is valid.
    let host = &*img.host;
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => host.split('.').all(is_domain_component),
    };
    check("host-valid", host_ok, || format!("{text:?}: host {host:?}"));
    check(
        "host-lowercase",
        !host.bytes().any(|b| b.is_ascii_uppercase()),
        || format!("{text:?}: host {host:?}"),
    );
    check(
        "port-digits",
        img.port
            .is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())),
        || format!("{text:?}: port {:?}", img.port),
    );
    check(
        "path-components-valid",
        img.path.split('/').all(is_path_component),
        || format!("{text:?}: path {:?}", img.path),
    );
    check("tag-valid", img.tag.is_none_or(is_tag), || {
        format!("{text:?}: tag {:?}", img.tag)
    });
    check("digest-valid", img.digest.is_none_or(is_digest), || {
        format!("{text:?}: digest {:?}", img.digest)
    });
    // distribution's split of the name (before any tag or digest) into domain and remainder.
    let name_part = text.split('@').next().unwrap_or_default();
    let last_slash = name_part.rfind('/').map_or(0, |i| i + 1);
    let name_part = match name_part[last_slash..].find(':') {
        Some(i) => &name_part[..last_slash + i],
        None => name_part,
    };
    let (domain, remainder) = match name_part.split_once('/') {
        Some((first, rest)) if is_domain_part(first) => (Some(first), rest),
        _ => (None, name_part),
    };
    // Only the exact domains `docker.io` and `index.docker.io` are Docker Hub's names.
    let hub_name = domain.is_none_or(|d| d == "docker.io" || d == "index.docker.io");

    let want = if hub_name && !remainder.contains('/') {
        format!("library/{remainder}")
    } else {
        remainder.to_string()
    };
    check("path-is-remainder", *img.path == want, || {
        format!(
            "{text:?}: path {:?}, distribution's {want:?} (domain {domain:?})",
            img.path
        )
    });
    if hub_name {
        check(
            "docker-hub-path-has-namespace",
            host == "docker.io" && img.port.is_none() && img.path.contains('/'),
            || format!("{text:?}: host {host:?}, path {:?}", img.path),
        );
    }

    // Display round-trips.
    let shown = img.to_string();
    match image::parse(&shown) {
        Err(e) => check("display-reparses", false, || {
            format!("{text:?} displays as {shown:?}, which fails: {e}")
        }),
        Ok(again) => {
            let same = (
                &again.host,
                again.port,
                &again.path,
                again.tag,
                again.digest,
            ) == (&img.host, img.port, &img.path, img.tag, img.digest);
            check("display-round-trips", same, || {
                format!("{text:?} -> {img:?}\ndisplays as {shown:?} -> {again:?}")
            });
            check("display-fixed-point", again.to_string() == shown, || {
                format!("{text:?}: {shown:?} then {:?}", again.to_string())
            });
        }
    }

    // The kubelet's name: `<registry as written>/<path>`, the registry naming the same host
    // and port as ours (any case; `index.docker.io` without a port is `docker.io`).
    let name = img.kubelet_name();
    let (name_registry, name_path) = name.split_once('/').unwrap_or((&name, ""));
    let (name_host, name_port) = match name_registry.strip_prefix('[') {
        Some(_) => match name_registry.find("]:") {
            Some(end) => (&name_registry[..=end], Some(&name_registry[end + 2..])),
            None => (name_registry, None),
        },
        None => match name_registry.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (name_registry, None),
        },
    };
    check(
        "kubelet-name-starts-with-registry",
        canonical_host(name_host, name_port) == canonical_host(host, img.port)
            && name_port == img.port
            && name_path == &*img.path,
        || format!("{text:?}: kubelet name {name:?}, image {img:?}"),
    );
    check("kubelet-name-length", name.len() <= 255, || {
        format!(
            "{text:?}: normalised name {name:?} has {} characters (distribution's limit: 255)",
            name.len()
        )
    });
    match image::parse(&name) {
        Err(e) => check("kubelet-name-reparses", false, || {
            format!("{text:?}: kubelet name {name:?} fails: {e}")
        }),
        Ok(again) => check(
            "kubelet-name-round-trips",
            (&again.host, again.port, &again.path) == (&img.host, img.port, &img.path),
            || format!("{text:?} -> {img:?}\nkubelet name {name:?} -> {again:?}"),
        ),
    }
});
