//! `RegistryPattern::parse` + `image::parse` + `matches` + `RuleSet::best_match`, on patterns and
//! images built from pieces (`arbitrary`): host labels (from a list of real ones, or free text,
//! with any letter case), a port, path segments (look-alikes such as `acme-evil`, `acmex`,
//! `acme.x` included), and an image derived from the pattern: the same host, a sub- or
//! super-domain, a changed label, another port, the same path, a longer one, a look-alike one.
//!
//! Oracle (an exact-host pattern, no glob): it matches an image iff the hosts are equal
//! (case-insensitive, `index.docker.io` without a port being `docker.io`), the ports are equal, and the
//! pattern's path is a prefix of the image's on whole segments. From that, with ids:
//! `rule-other-host`, `rule-other-port`, `rule-look-alike-path` (never matches when it must not),
//! `rule-no-path-misses-host`, `rule-path-misses-subpath` (always matches when it must).
//! The image parser agrees with the oracle on host, port and path (`image-parts`). Glob rules
//! never match across ports, label counts or look-alike paths (`glob-*`). `best_match` picks a
//! rule that matches, finds one whenever one matches, and picks the most specific, earliest one.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use fuzz_support::{canonical_host, check, is_domain_part, is_segment_prefix};
use libfuzzer_sys::fuzz_target;
use pullsecret_injector::core::image;
use pullsecret_injector::core::rules::{RegistryPattern, Rule, RuleSet, RuleSource};

const LABELS: &[&str] = &[
    "docker",
    "io",
    "index",
    "ghcr",
    "acme",
    "registry-1",
    "localhost",
    "example",
    "com",
    "a",
    "quay",
    "gcr",
    "eu",
    "registry",
    "internal",
    "k8s",
    "127",
    "0",
    "1",
    "dkr",
    "ecr",
    "amazonaws",
    "x--y",
    "xn--bcher-kva",
    "pkg",
    "dev",
    "GHCR",
    "Docker",
    "IO",
    "Example",
];
const SEGMENTS: &[&str] = &[
    "acme",
    "acme-evil",
    "acmex",
    "acme.x",
    "acme_x",
    "acme__x",
    "acme--x",
    "library",
    "nginx",
    "team",
    "api",
    "a",
    "b",
    "v2",
    "v1",
    "app",
    "x",
    "0",
    "acm",
    "team-a",
];
const SUFFIXES: &[&str] = &["-evil", "x", ".x", "_x", "__x", "--x", "0", "-"];
const HOST_SUFFIXES: &[&str] = &["x", "0", "-x", "1"];
const PORTS: &[&str] = &["5000", "443", "80", "5001", "0443", "65535", "1", "50000"];
const FREE: &[u8] = b"abcxyzAB0129-_.";
const GLOBS: &[&str] = &[
    "*", "?", "*x*", "a*", "[a-z]*", "g?cr", "*-1", "[0-9]*", "[!a]*", "e?",
];

#[derive(Arbitrary, Debug, Clone, Copy)]
struct Label {
    /// Even: a listed label; odd: free text.
    kind: u8,
    index: u8,
    len: u8,
    free: [u8; 4],
}

impl Label {
    fn text(&self) -> String {
        if self.kind % 2 == 0 {
            LABELS[usize::from(self.index) % LABELS.len()].to_string()
        } else {
            let n = 1 + usize::from(self.len) % self.free.len();
            self.free[..n]
                .iter()
                .map(|b| char::from(FREE[usize::from(*b) % FREE.len()]))
                .collect()
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct Pieces {
    label_count: u8,
    labels: [Label; 4],
    /// Bit i flips the case of label i.
    case: u8,
    /// 0-1: no port; others: a port from the list.
    port: u8,
    path_count: u8,
    path: [u8; 3],
}

impl Pieces {
    fn labels(&self) -> Vec<String> {
        let n = 1 + usize::from(self.label_count) % 4;
        self.labels[..n]
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let text = l.text();
                if self.case >> i & 1 == 1 {
                    flip_case(&text)
                } else {
                    text
                }
            })
            .collect()
    }
    fn port(&self) -> Option<&'static str> {
        match self.port % 10 {
            0 | 1 => None,
            p => Some(PORTS[usize::from(p - 2) % PORTS.len()]),
        }
    }
    fn path(&self) -> Vec<String> {
        let n = usize::from(self.path_count) % 4;
        self.path[..n]
            .iter()
            .map(|s| SEGMENTS[usize::from(*s) % SEGMENTS.len()].to_string())
            .collect()
    }
}

fn flip_case(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_lowercase() {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct ImageHow {
    /// 0: the pattern's host; 1: a label added in front; 2: the first label dropped; 3: one
    /// label changed; 4: its own host; 5: no host; 6: Docker Hub's other name; 7: `[::1]`.
    host: u8,
    which: u8,
    suffix: u8,
    case: u8,
    /// 0-2: the pattern's port; 3-4: none; others: a port from the list.
    port: u8,
    /// 0: the pattern's path plus more; 1: the same; 2: last segment a look-alike; 3: its own;
    /// 4: shorter.
    path: u8,
    extra: [u8; 2],
    tag: u8,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct Other {
    pieces: Pieces,
    /// Bit i: label i is replaced by a glob.
    globs: u8,
    glob: [u8; 4],
}

#[derive(Arbitrary, Debug, Clone)]
struct Input {
    pattern: Pieces,
    /// 0: plain; 1: trailing `/`; 2: surrounding spaces; 3: `[::1]` as the host.
    form: u8,
    image: ImageHow,
    own: Pieces,
    others: [Other; 3],
    /// Where the main rule goes among the others.
    position: u8,
}

fn render(host: &str, port: Option<&str>, path: &[String]) -> String {
    let mut s = host.to_string();
    if let Some(p) = port {
        s.push(':');
        s.push_str(p);
    }
    for seg in path {
        s.push('/');
        s.push_str(seg);
    }
    s
}

/// host, port, path segments, whether a glob, the text.
struct PatternText {
    host: String,
    labels: usize,
    port: Option<&'static str>,
    path: Vec<String>,
    glob: bool,
    text: String,
}

fn pattern_text(p: &Pieces, form: u8) -> PatternText {
    let host = if form % 4 == 3 {
        "[::1]".to_string()
    } else {
        p.labels().join(".")
    };
    let port = p.port();
    let path = p.path();
    let mut text = render(&host, port, &path);
    match form % 4 {
        1 => text.push('/'),
        2 => text = format!("  {text} "),
        _ => {}
    }
    PatternText {
        labels: host.split('.').count(),
        host,
        port,
        path,
        glob: false,
        text,
    }
}

fn other_text(o: &Other) -> PatternText {
    let mut labels = o.pieces.labels();
    let mut glob = false;
    for (i, label) in labels.iter_mut().enumerate() {
        if o.globs >> i & 1 == 1 {
            *label = GLOBS[usize::from(o.glob[i]) % GLOBS.len()].to_string();
            glob = true;
        }
    }
    let host = labels.join(".");
    let port = o.pieces.port();
    let path = o.pieces.path();
    let text = render(&host, port, &path);
    PatternText {
        labels: labels.len(),
        host,
        port,
        path,
        glob,
        text,
    }
}

/// The image text, and the oracle's (canonical host, port, path segments) for it.
fn image_text(
    input: &Input,
    pattern: &PatternText,
) -> (String, String, Option<String>, Vec<String>) {
    let how = &input.image;
    let mut labels: Vec<String> = pattern.host.split('.').map(str::to_string).collect();
    let mut host = match how.host % 8 {
        0 => Some(labels.join(".")),
        1 => {
            labels.insert(0, LABELS[usize::from(how.which) % LABELS.len()].to_string());
            Some(labels.join("."))
        }
        2 if labels.len() > 1 => {
            labels.remove(0);
            Some(labels.join("."))
        }
        3 => {
            let i = usize::from(how.which) % labels.len();
            if how.suffix % 2 == 0 {
                labels[i]
                    .push_str(HOST_SUFFIXES[usize::from(how.suffix / 2) % HOST_SUFFIXES.len()]);
            } else {
                labels[i] = LABELS[usize::from(how.suffix) % LABELS.len()].to_string();
            }
            Some(labels.join("."))
        }
        4 => Some(input.own.labels().join(".")),
        5 => None,
        6 => Some(match canonical_host(&pattern.host, None).as_str() {
            "docker.io" => "index.docker.io".to_string(),
            _ => "docker.io".to_string(),
        }),
        _ => Some("[::1]".to_string()),
    };
    if let Some(h) = &mut host {
        if how.case % 2 == 1 {
            *h = flip_case(h);
        }
    }
    let port = match how.port % 8 {
        0..=2 => pattern.port.map(str::to_string),
        3 | 4 => None,
        p => Some(PORTS[(usize::from(p) + usize::from(how.which)) % PORTS.len()].to_string()),
    };
    let extra = |i: usize| SEGMENTS[usize::from(how.extra[i]) % SEGMENTS.len()].to_string();
    let mut path = pattern.path.clone();
    match how.path % 5 {
        0 => {
            path.push(extra(0));
            if how.extra[1] % 2 == 1 {
                path.push(extra(1));
            }
        }
        1 => {}
        2 => match path.last_mut() {
            Some(last) => last.push_str(SUFFIXES[usize::from(how.suffix) % SUFFIXES.len()]),
            None => path.push(extra(0)),
        },
        3 => path = input.own.path(),
        _ => {
            path.pop();
        }
    }
    if path.is_empty() {
        path.push(extra(1));
    }
    let mut text = match &host {
        Some(h) => render(h, port.as_deref(), &path),
        None => path.join("/"),
    };
    match how.tag % 4 {
        1 => text.push_str(":v1.2"),
        2 => text
            .push_str("@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"),
        _ => {}
    }
    // The oracle's reading of the name: distribution's splitDockerDomain.
    let name = match &host {
        Some(h) => render(h, port.as_deref(), &path),
        None => path.join("/"),
    };
    let (o_host, o_port, mut o_path, hub_name) = match name.split_once('/') {
        Some((first, rest)) if is_domain_part(first) => {
            let (h, p) = match first.strip_prefix('[') {
                Some(_) => match first.find("]:") {
                    Some(end) => (&first[..=end], Some(first[end + 2..].to_string())),
                    None => (first, None),
                },
                None => match first.split_once(':') {
                    Some((h, p)) => (h, Some(p.to_string())),
                    None => (first, None),
                },
            };
            (
                canonical_host(h, p.as_deref()),
                p,
                rest.split('/').map(str::to_string).collect::<Vec<_>>(),
                first == "docker.io" || first == "index.docker.io",
            )
        }
        _ => (
            "docker.io".to_string(),
            None,
            name.split('/').map(str::to_string).collect(),
            true,
        ),
    };
    // distribution adds `library/` only for the exact Docker Hub domains, as written.
    if hub_name && o_path.len() == 1 {
        o_path.insert(0, "library".into());
    }
    (text, o_host, o_port, o_path)
}

fn rule(pattern: RegistryPattern, i: usize) -> Rule {
    Rule {
        pattern,
        secrets: vec![format!("r{i}")],
        pull_policy_always: false,
        source: RuleSource::Config { index: i },
        scope: Default::default(),
    }
}

// Decoded by hand rather than by `fuzz_target!(|input: Input|)`, which ignores inputs shorter
// than the struct: a short input here is zero-padded.
fuzz_target!(|data: &[u8]| {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let main = pattern_text(&input.pattern, input.form);
    let (image_text, o_host, o_port, o_path) = image_text(&input, &main);
    if fuzz_support::show() {
        eprintln!("pattern {:?}, image {image_text:?}", main.text);
    }
    let Ok(img) = image::parse(&image_text) else {
        return;
    };
    let img_path: Vec<&str> = img.path.split('/').collect();
    let o_path_ref: Vec<&str> = o_path.iter().map(String::as_str).collect();
    check(
        "image-parts",
        img.host == o_host && img.port == o_port.as_deref() && img_path == o_path_ref,
        || {
            format!(
                "{image_text:?} parsed as {img:?}, expected host {o_host:?} port {o_port:?} path {o_path:?}"
            )
        },
    );

    let mut texts = vec![];
    if let Ok(pattern) = RegistryPattern::parse(&main.text) {
        let p_host = canonical_host(&main.host, main.port.as_deref());
        let p_path: Vec<&str> = main.path.iter().map(String::as_str).collect();
        let same_host = p_host == o_host;
        // Ports compare as written, as the kubelet compares them (`443` is not `0443`).
        let same_port = main.port == o_port.as_deref();
        let prefix = is_segment_prefix(&p_path, &o_path_ref);
        let matched = pattern.matches(&img);
        let ctx = || format!("pattern {:?}, image {image_text:?} ({img:?})", main.text);
        if matched {
            check("rule-other-host", same_host, ctx);
            check("rule-other-port", same_port, ctx);
            check("rule-look-alike-path", prefix, ctx);
        } else if same_host && same_port {
            check("rule-no-path-misses-host", !p_path.is_empty(), ctx);
            check("rule-path-misses-subpath", !prefix, ctx);
        }
        texts.push((main, pattern));
    }

    // Glob and other rules, for best_match.
    for o in &input.others {
        let t = other_text(o);
        if let Ok(pattern) = RegistryPattern::parse(&t.text) {
            if t.glob && pattern.matches(&img) {
                let ctx = || format!("glob pattern {:?}, image {image_text:?}", t.text);
                check("glob-other-port", t.port == img.port, ctx);
                check(
                    "glob-label-count",
                    t.labels == img.host.split('.').count(),
                    ctx,
                );
                let p_path: Vec<&str> = t.path.iter().map(String::as_str).collect();
                check(
                    "glob-look-alike-path",
                    is_segment_prefix(&p_path, &img_path),
                    ctx,
                );
            }
            texts.push((t, pattern));
        }
    }
    if texts.is_empty() {
        return;
    }
    // The main rule (when it parsed) is first; move it to `position`.
    let at = usize::from(input.position) % texts.len();
    let first = texts.remove(0);
    texts.insert(at, first);
    let rules: Vec<Rule> = texts
        .iter()
        .enumerate()
        .map(|(i, (_, p))| rule(p.clone(), i))
        .collect();
    let set = RuleSet::new(rules);
    // No rule here has a scope: any namespace gets the same answer.
    let best = set.best_match(&img, "fuzz", None);
    let matching: Vec<usize> = (0..texts.len())
        .filter(|i| set.rules()[*i].pattern.matches(&img))
        .collect();
    let ctx = || {
        let rules: Vec<&str> = texts.iter().map(|(t, _)| t.text.as_str()).collect();
        format!(
            "rules {rules:?}, image {image_text:?}, best {:?}",
            best.map(|r| r.pattern.as_str())
        )
    };
    match best {
        None => check("best-match-misses", matching.is_empty(), ctx),
        Some(rule) => {
            check("best-match-matches", rule.pattern.matches(&img), ctx);
            // Most specific: exact host before glob, then the longer path; ties: the earlier.
            let key = |i: usize| (!texts[i].0.glob, texts[i].0.path.len());
            let want = matching
                .iter()
                .copied()
                .fold(None::<usize>, |best, i| match best {
                    Some(b) if key(b) >= key(i) => Some(b),
                    _ => Some(i),
                });
            check(
                "best-match-most-specific",
                want.is_some_and(|w| rule.secrets[0] == format!("r{w}")),
                ctx,
            );
        }
    }
});
