//! Container image references, parsed and normalised the way Docker and containerd do
//! (the `distribution/reference` grammar and its `ParseNormalizedNamed`).
//!
//! Only the parts that decide which credentials apply are kept: the registry host, its
//! port and the repository path. Tags and digests are validated but play no part in matching.
//! Parsing borrows from the input and allocates only when Docker Hub's `library/` prefix is
//! added, because it runs for every container of every admitted Pod.
//!
//! Why not a crate: the maintained Rust implementations of this grammar (`oci-spec`'s
//! `Reference`, `oci-client`) pull in regex, builder and HTTP stacks and allocate every part;
//! the grammar itself is small, and the table test below carries distribution's own cases.

use std::borrow::Cow;
use std::fmt;

/// Docker Hub, the registry of every reference without a host.
pub const DOCKER_HUB: &str = "docker.io";
/// Docker Hub's legacy name; distribution treats it as `docker.io`.
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
/// distribution's limit on the length of a repository name (host and path).
const NAME_TOTAL_LENGTH_MAX: usize = 255;
const TAG_LENGTH_MAX: usize = 128;

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef<'a> {
    /// Registry host, lowercased when the input had capitals (hosts compare case-insensitively);
    /// `docker.io` for Docker Hub, also when written `index.docker.io` without a port. An IPv6
    /// literal keeps its brackets, as in the reference.
    pub host: Cow<'a, str>,
    /// Registry port, as written (digits only).
    pub port: Option<&'a str>,
    /// Repository path below the host, e.g. `library/nginx` or `acme/team/api`.
    pub path: Cow<'a, str>,
    pub tag: Option<&'a str>,
    pub digest: Option<&'a str>,
    /// The registry part as written (`None` for Docker Hub by default), for the kubelet's name.
    domain: Option<&'a str>,
}

impl ImageRef<'_> {
    /// The name the kubelet looks pull credentials up by: distribution's normalised name
    /// without tag or digest, the host as written (`docker.io/library/nginx`,
    /// `Registry.Example.com/app`).
    pub fn kubelet_name(&self) -> String {
        format!("{}/{}", self.normalised_domain(), self.path)
    }

    /// distribution's domain of the normalised name: as written, but for Docker Hub's
    /// default and its exact legacy name, which become `docker.io`.
    fn normalised_domain(&self) -> &str {
        match self.domain {
            None | Some(DOCKER_HUB_LEGACY) => DOCKER_HUB,
            Some(domain) => domain,
        }
    }

    /// `host[:port]`, as a registry is usually written.
    pub fn registry(&self) -> String {
        match self.port {
            Some(port) => format!("{}:{port}", self.host),
            None => self.host.to_string(),
        }
    }

    /// The repository path split on `/`.
    pub fn path_segments(&self) -> impl Iterator<Item = &str> {
        self.path.split('/')
    }
}

impl fmt::Display for ImageRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The registry as written: lowercasing it could turn a host into a path (`Foo/bar`).
        write!(f, "{}/{}", self.normalised_domain(), self.path)?;
        if let Some(tag) = self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Why a reference was rejected. Messages follow distribution's wording where it has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("image reference is empty")]
    Empty,
    #[error("invalid reference format: repository name must be lowercase")]
    Uppercase,
    #[error(
        "invalid reference format: repository name is longer than {NAME_TOTAL_LENGTH_MAX} characters"
    )]
    NameTooLong,
    #[error("invalid repository name: cannot be a 64-character hexadecimal identifier")]
    HexIdentifier,
    #[error("invalid reference format: {0}")]
    Format(&'static str),
}

/// Parses and normalises an image reference as `docker pull` would.
pub fn parse(reference: &str) -> Result<ImageRef<'_>, ImageError> {
    if reference.is_empty() {
        return Err(ImageError::Empty);
    }
    if is_hex_identifier(reference) {
        return Err(ImageError::HexIdentifier);
    }

    // name [":" tag] ["@" digest]: the digest starts at the first '@'.
    let (name_and_tag, digest) = match reference.split_once('@') {
        Some((rest, digest)) => {
            validate_digest(digest)?;
            (rest, Some(digest))
        }
        None => (reference, None),
    };
    // A ':' after the last '/' starts the tag; earlier ones belong to a host port.
    let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_and_tag[last_slash..].find(':') {
        Some(i) => {
            let tag = &name_and_tag[last_slash + i + 1..];
            validate_tag(tag)?;
            (&name_and_tag[..last_slash + i], Some(tag))
        }
        None => (name_and_tag, None),
    };
    if name.is_empty() {
        return Err(ImageError::Format("repository name is empty"));
    }

    let (domain, remainder) = split_docker_domain(name);
    let (host, port) = match domain {
        Some(domain) => parse_domain(domain)?,
        None => (Cow::Borrowed(DOCKER_HUB), None),
    };
    // Hosts compare ignoring case, so any spelling of `index.docker.io` (without a port) is
    // Docker Hub for matching rules. distribution itself renames only the exact lowercase
    // domain and adds `library/` only for it and `docker.io`: the path and the kubelet's
    // name follow that (`DOCKER.IO/nginx` is the repository `nginx`).
    let host = if port.is_none() && host == DOCKER_HUB_LEGACY {
        Cow::Borrowed(DOCKER_HUB)
    } else {
        host
    };
    if remainder.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ImageError::Uppercase);
    }
    validate_path(remainder)?;
    let docker_hub_name = matches!(domain, None | Some(DOCKER_HUB) | Some(DOCKER_HUB_LEGACY));
    let path = if docker_hub_name && !remainder.contains('/') {
        Cow::Owned(format!("library/{remainder}"))
    } else {
        Cow::Borrowed(remainder)
    };
    let image = ImageRef {
        host,
        port,
        path,
        tag,
        digest,
        domain,
    };
    // distribution limits the normalised name (`docker.io/library/...`), not the input.
    if image.normalised_domain().len() + 1 + image.path.len() > NAME_TOTAL_LENGTH_MAX {
        return Err(ImageError::NameTooLong);
    }
    Ok(image)
}

/// distribution's `splitDockerDomain`: the first component is a host only if it contains
/// `.` or `:`, is `localhost`, or has an uppercase letter.
fn split_docker_domain(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

/// `host [":" port]`, where host is a DNS name, an IPv4 address or a bracketed IPv6 address.
fn parse_domain(domain: &str) -> Result<(Cow<'_, str>, Option<&str>), ImageError> {
    let (host, port) = if let Some(inner) = domain.strip_prefix('[') {
        let end = inner
            .find(']')
            .ok_or(ImageError::Format("unterminated IPv6 address"))?;
        if inner[..end].parse::<std::net::Ipv6Addr>().is_err() {
            return Err(ImageError::Format("invalid IPv6 address"));
        }
        let host = &domain[..end + 2];
        match &domain[end + 2..] {
            "" => (host, None),
            rest => (
                host,
                Some(
                    rest.strip_prefix(':')
                        .ok_or(ImageError::Format("invalid host"))?,
                ),
            ),
        }
    } else {
        let (host, port) = match domain.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (domain, None),
        };
        if host.is_empty() || !host.split('.').all(is_domain_component) {
            return Err(ImageError::Format("invalid registry host"));
        }
        (host, port)
    };
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(ImageError::Format("registry port must be a number"));
    }
    let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    };
    Ok((host, port))
}

/// `[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`
pub(crate) fn is_domain_component(label: &str) -> bool {
    let bytes = label.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        }
        _ => false,
    }
}

/// Repository path: `/`-separated components, each `[a-z0-9]+(separator[a-z0-9]+)*`
/// with separator `.`, `_`, `__` or any run of `-`.
fn validate_path(path: &str) -> Result<(), ImageError> {
    if path.split('/').all(is_path_component) {
        Ok(())
    } else {
        Err(ImageError::Format("invalid repository path"))
    }
}

pub(crate) fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let valid = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !valid {
            return false;
        }
    }
    true
}

/// `[\w][\w.-]{0,127}`
fn validate_tag(tag: &str) -> Result<(), ImageError> {
    let word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    let bytes = tag.as_bytes();
    let valid = bytes.first().is_some_and(word)
        && bytes.len() <= TAG_LENGTH_MAX
        && bytes.iter().all(|b| word(b) || *b == b'.' || *b == b'-');
    if valid {
        Ok(())
    } else {
        Err(ImageError::Format("invalid tag"))
    }
}

/// `algorithm ":" encoded`, as distribution (go-digest) validates it: only the algorithms it
/// registers (sha256, sha384, sha512), each with its exact length of lowercase hex.
fn validate_digest(digest: &str) -> Result<(), ImageError> {
    let (algorithm, encoded) = digest
        .split_once(':')
        .ok_or(ImageError::Format("invalid digest"))?;
    // The message says what was expected: `sha256:abc` is short, not merely invalid.
    let (length, expected) = match algorithm {
        "sha256" => (
            64,
            "invalid digest: sha256 takes 64 lowercase hex characters",
        ),
        "sha384" => (
            96,
            "invalid digest: sha384 takes 96 lowercase hex characters",
        ),
        "sha512" => (
            128,
            "invalid digest: sha512 takes 128 lowercase hex characters",
        ),
        _ => return Err(ImageError::Format("unsupported digest algorithm")),
    };
    let hex = encoded
        .bytes()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if encoded.len() == length && hex {
        Ok(())
    } else {
        Err(ImageError::Format(expected))
    }
}

fn is_hex_identifier(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

    /// (input, host, port, path, tag, digest)
    type Case<'a> = (
        &'a str,
        &'a str,
        Option<&'a str>,
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
    );

    #[test]
    fn normalises_like_distribution() {
        let digest_ref = format!("ubuntu@{SHA}");
        let tag_digest = format!("ghcr.io/acme/api:1.2@{SHA}");
        let cases: Vec<Case<'_>> = vec![
            ("nginx", "docker.io", None, "library/nginx", None, None),
            (
                "nginx:1.25",
                "docker.io",
                None,
                "library/nginx",
                Some("1.25"),
                None,
            ),
            (
                "nginx:latest",
                "docker.io",
                None,
                "library/nginx",
                Some("latest"),
                None,
            ),
            (
                "library/nginx",
                "docker.io",
                None,
                "library/nginx",
                None,
                None,
            ),
            (
                "bitnami/redis:7.2",
                "docker.io",
                None,
                "bitnami/redis",
                Some("7.2"),
                None,
            ),
            (
                "docker.io/nginx",
                "docker.io",
                None,
                "library/nginx",
                None,
                None,
            ),
            (
                "docker.io/library/nginx",
                "docker.io",
                None,
                "library/nginx",
                None,
                None,
            ),
            (
                "index.docker.io/nginx",
                "docker.io",
                None,
                "library/nginx",
                None,
                None,
            ),
            (
                "index.docker.io/acme/app",
                "docker.io",
                None,
                "acme/app",
                None,
                None,
            ),
            (
                "registry-1.docker.io/acme/app",
                "registry-1.docker.io",
                None,
                "acme/app",
                None,
                None,
            ),
            ("localhost/app", "localhost", None, "app", None, None),
            (
                "localhost:5000/app:dev",
                "localhost",
                Some("5000"),
                "app",
                Some("dev"),
                None,
            ),
            (
                "registry:5000/app",
                "registry",
                Some("5000"),
                "app",
                None,
                None,
            ),
            ("ghcr.io/acme/api", "ghcr.io", None, "acme/api", None, None),
            (
                "ghcr.io/acme/team/api:v1",
                "ghcr.io",
                None,
                "acme/team/api",
                Some("v1"),
                None,
            ),
            (
                "quay.io/prometheus/node-exporter:v1.8.0",
                "quay.io",
                None,
                "prometheus/node-exporter",
                Some("v1.8.0"),
                None,
            ),
            (
                "123456789012.dkr.ecr.eu-west-1.amazonaws.com/api:2",
                "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
                None,
                "api",
                Some("2"),
                None,
            ),
            (
                "europe-docker.pkg.dev/p/repo/img",
                "europe-docker.pkg.dev",
                None,
                "p/repo/img",
                None,
                None,
            ),
            (
                "registry.k8s.io/pause:3.9",
                "registry.k8s.io",
                None,
                "pause",
                Some("3.9"),
                None,
            ),
            (
                "mcr.microsoft.com/dotnet/aspnet:8.0",
                "mcr.microsoft.com",
                None,
                "dotnet/aspnet",
                Some("8.0"),
                None,
            ),
            (
                &digest_ref,
                "docker.io",
                None,
                "library/ubuntu",
                None,
                Some(SHA),
            ),
            (
                &tag_digest,
                "ghcr.io",
                None,
                "acme/api",
                Some("1.2"),
                Some(SHA),
            ),
            (
                "Registry.Example.COM/app",
                "registry.example.com",
                None,
                "app",
                None,
                None,
            ),
            ("Foo/bar", "foo", None, "bar", None, None),
            // distribution adds `library/` only for the exact Docker Hub domains...
            ("DOCKER.IO/nginx", "docker.io", None, "nginx", None, None),
            (
                "INDEX.DOCKER.IO/nginx",
                "docker.io",
                None,
                "nginx",
                None,
                None,
            ),
            // ...and `index.docker.io` with a port is just a host.
            (
                "index.docker.io:5000/app",
                "index.docker.io",
                Some("5000"),
                "app",
                None,
                None,
            ),
            (
                "docker.io:5000/app",
                "docker.io",
                Some("5000"),
                "app",
                None,
                None,
            ),
            (
                "10.0.0.1:5000/app",
                "10.0.0.1",
                Some("5000"),
                "app",
                None,
                None,
            ),
            (
                "[::1]:5000/app:1",
                "[::1]",
                Some("5000"),
                "app",
                Some("1"),
                None,
            ),
            (
                "[2001:db8::1]/app",
                "[2001:db8::1]",
                None,
                "app",
                None,
                None,
            ),
            (
                "a.b/c__d/e-----f/g.h_i",
                "a.b",
                None,
                "c__d/e-----f/g.h_i",
                None,
                None,
            ),
            (
                "example.com/app:TAG_with.dots-1",
                "example.com",
                None,
                "app",
                Some("TAG_with.dots-1"),
                None,
            ),
        ];
        for (input, host, port, path, tag, digest) in cases {
            let image = parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(image.host, host, "host of {input}");
            assert_eq!(image.port, port, "port of {input}");
            assert_eq!(image.path, path, "path of {input}");
            assert_eq!(image.tag, tag, "tag of {input}");
            assert_eq!(image.digest, digest, "digest of {input}");
        }
    }

    #[test]
    fn accepts_every_registered_digest_algorithm() {
        for (algorithm, length) in [("sha256", 64), ("sha384", 96), ("sha512", 128)] {
            let reference = format!("ghcr.io/a/b@{algorithm}:{}", "0f".repeat(length / 2));
            assert!(parse(&reference).is_ok(), "{reference}");
        }
    }

    #[test]
    fn kubelet_names_are_normalised_without_tag_or_digest() {
        let cases = [
            ("nginx", "docker.io/library/nginx"),
            ("nginx:1.27", "docker.io/library/nginx"),
            ("index.docker.io/acme/app", "docker.io/acme/app"),
            ("docker.io/nginx", "docker.io/library/nginx"),
            (
                "registry-1.docker.io/acme/app",
                "registry-1.docker.io/acme/app",
            ),
            (
                "localhost:5000/app@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
                "localhost:5000/app",
            ),
            ("Registry.Example.com/app", "Registry.Example.com/app"),
            ("DOCKER.IO/nginx", "DOCKER.IO/nginx"),
            ("index.docker.io:5000/app", "index.docker.io:5000/app"),
        ];
        for (reference, want) in cases {
            assert_eq!(
                parse(reference).expect(reference).kubelet_name(),
                want,
                "{reference}"
            );
        }
    }

    #[test]
    fn rejects_invalid_references() {
        let long = format!("example.com/{}", "a".repeat(250));
        let sha384_short = format!("nginx@sha384:{}", "a".repeat(64));
        let sha512_upper = format!("nginx@sha512:{}", "A".repeat(128));
        let cases: Vec<(&str, ImageError)> = vec![
            ("", ImageError::Empty),
            ("NGINX", ImageError::Uppercase),
            ("docker.io/Acme/app", ImageError::Uppercase),
            ("acme/App", ImageError::Uppercase),
            (&long, ImageError::NameTooLong),
            (
                "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                ImageError::HexIdentifier,
            ),
            ("nginx:", ImageError::Format("invalid tag")),
            ("nginx:-bad", ImageError::Format("invalid tag")),
            ("nginx:a b", ImageError::Format("invalid tag")),
            (
                "nginx@sha256:abc",
                ImageError::Format("invalid digest: sha256 takes 64 lowercase hex characters"),
            ),
            ("nginx@", ImageError::Format("invalid digest")),
            ("nginx@md5", ImageError::Format("invalid digest")),
            // Only the algorithms distribution registers, each with its length.
            (
                "nginx@md5:d41d8cd98f00b204e9800998ecf8427e",
                ImageError::Format("unsupported digest algorithm"),
            ),
            (
                "nginx@sha1:da39a3ee5e6b4b0d3255bfef95601890afd80709",
                ImageError::Format("unsupported digest algorithm"),
            ),
            (
                "nginx@sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564",
                ImageError::Format("unsupported digest algorithm"),
            ),
            (
                &sha384_short,
                ImageError::Format("invalid digest: sha384 takes 96 lowercase hex characters"),
            ),
            (
                &sha512_upper,
                ImageError::Format("invalid digest: sha512 takes 128 lowercase hex characters"),
            ),
            (":tag", ImageError::Format("repository name is empty")),
            ("/nginx", ImageError::Format("invalid repository path")),
            ("nginx/", ImageError::Format("invalid repository path")),
            ("a//b", ImageError::Format("invalid repository path")),
            (
                "example.com/-app",
                ImageError::Format("invalid repository path"),
            ),
            (
                "example.com/app-",
                ImageError::Format("invalid repository path"),
            ),
            (
                "example.com/a..b",
                ImageError::Format("invalid repository path"),
            ),
            (
                "example.com/a___b",
                ImageError::Format("invalid repository path"),
            ),
            (
                "example.com:port/app",
                ImageError::Format("registry port must be a number"),
            ),
            (
                "example.com:/app",
                ImageError::Format("registry port must be a number"),
            ),
            (
                "-example.com/app",
                ImageError::Format("invalid registry host"),
            ),
            (
                "exa_mple.com/app",
                ImageError::Format("invalid registry host"),
            ),
            (
                "example..com/app",
                ImageError::Format("invalid registry host"),
            ),
            ("[::1/app", ImageError::Format("unterminated IPv6 address")),
            (
                "[zz::1]:5000/app",
                ImageError::Format("invalid IPv6 address"),
            ),
            ("[::1]x/app", ImageError::Format("invalid host")),
            (
                "http://example.com/app",
                ImageError::Format("registry port must be a number"),
            ),
            ("garbage!!", ImageError::Format("invalid repository path")),
            (
                "nginx latest",
                ImageError::Format("invalid repository path"),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), Err(want), "{input:?}");
        }
    }

    #[test]
    fn the_length_limit_applies_to_the_normalised_name() {
        // `docker.io/library/` + 237 = 255 characters: the longest Docker Hub official name.
        assert!(parse(&"a".repeat(237)).is_ok());
        assert_eq!(parse(&"a".repeat(238)), Err(ImageError::NameTooLong));
        assert_eq!(
            parse(&format!("docker.io/{}", "a".repeat(245))),
            Err(ImageError::NameTooLong)
        );
        // Longer than 255 as written, 255 once `index.docker.io` is `docker.io`.
        let legacy = format!("index.docker.io/x/{}", "a".repeat(243));
        let image = parse(&legacy).expect("fits once normalised");
        assert_eq!(image.kubelet_name().len(), 255);
    }

    #[test]
    fn display_round_trips_the_normalised_form() {
        for reference in [
            "Foo/bar:1",
            "DOCKER.IO/nginx",
            "index.docker.io/nginx",
            "x/y",
        ] {
            let image = parse(reference).expect(reference);
            let shown = image.to_string();
            let again = parse(&shown).expect("display parses");
            assert_eq!(
                (&again.host, again.port, &again.path, again.tag),
                (&image.host, image.port, &image.path, image.tag),
                "{reference} displays as {image}"
            );
        }
        assert_eq!(parse("Foo/bar:1").expect("valid").to_string(), "Foo/bar:1");
        let image = parse("localhost:5000/app:dev").expect("valid");
        assert_eq!(image.to_string(), "localhost:5000/app:dev");
        assert_eq!(
            parse("nginx").expect("valid").to_string(),
            "docker.io/library/nginx"
        );
    }
}
