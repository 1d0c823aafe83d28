//! Which of a rule's images the kubelet would pull with a Secret: all of them, some of them,
//! or none. The answer for a glob rule (`*.dkr.ecr.*.amazonaws.com`) and a Secret for one
//! account (`123456789012.dkr.ecr.eu-west-1.amazonaws.com`) is "some": partial coverage, the
//! normal cloud setup, never a mismatch.
//!
//! Both sides are sets of image names (the kubelet's name: `host[:port]/path`, no tag):
//! the rule's are the images it matches ([`crate::core::rules`]: glob labels, equal port,
//! whole path segments), a key's are the images the kubelet's keyring serves with it
//! ([`crate::core::keyring`]: Go `filepath.Match` labels, equal port, string path prefix,
//! and `index.docker.io`'s Docker Hub fallback). Each set is a regular language, built here as
//! a small automaton, so the two questions are answered exactly rather than by example:
//! - full: every image of the rule is in the union of the keys' sets (inclusion);
//! - partial: some image of the rule is in some key's set (non-empty intersection).
//!
//! Images are taken as written in lowercase (hosts compare case-insensitively for rules, but
//! the kubelet compares keys as written; judging `GHCR.IO/...` spellings would make every
//! rule "partial"). Path characters are those of distribution's repository grammar.

use std::collections::{BTreeSet, HashSet, VecDeque};

use crate::core::image::DOCKER_HUB;
use crate::core::keyring::{self, DEFAULT_REGISTRY_HOST, Keyring};
use crate::core::rules::RegistryPattern;

/// The characters an image name (lowercase) is made of; a set of them is a bit mask.
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-._/:[]";
type Chars = u64;

/// Characters a host label may hold (DNS labels, lowercase).
fn label_chars() -> Chars {
    chars_where(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

/// Characters a repository path may hold, `/` included.
fn path_chars() -> Chars {
    chars_where(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"-._/".contains(&c))
}

fn chars_where(keep: impl Fn(u8) -> bool) -> Chars {
    ALPHABET
        .iter()
        .enumerate()
        .filter(|(_, c)| keep(**c))
        .fold(0, |set, (i, _)| set | (1 << i))
}

/// The set holding `c` alone; empty for a character no lowercase image name has.
fn char_set(c: u8) -> Chars {
    ALPHABET.iter().position(|a| *a == c).map_or(0, |i| 1 << i)
}

/// How much of a rule's images its Secrets serve, together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Coverage {
    /// Every image the rule matches.
    Full,
    /// Some of them (e.g. one ECR account of a rule for every account): what serves them.
    Partial { served_by: Vec<KeyOf> },
    /// None of them: a mismatch (wrong `--docker-server`, wrong port, another path).
    None,
}

/// A docker config key (as the kubelet stores it) of a Secret.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyOf {
    pub secret: String,
    pub key: String,
}

impl std::fmt::Display for KeyOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret {} ({})", self.secret, self.key)
    }
}

/// How much of `pattern`'s images the kubelet would pull with the union of the `keyrings`
/// (by Secret name).
pub fn of<'a>(
    pattern: &RegistryPattern,
    keyrings: impl IntoIterator<Item = (&'a str, &'a Keyring)>,
) -> Coverage {
    let rule = rule_language(pattern);
    let keys: Vec<(KeyOf, Nfa)> = keyrings
        .into_iter()
        .flat_map(|(secret, keyring)| keyring.keys().iter().map(move |key| (secret, key)))
        .map(|(secret, key)| {
            let of = KeyOf {
                secret: secret.to_string(),
                key: key.clone(),
            };
            (of, key_language(key))
        })
        .collect();
    let all = Nfa::union(keys.iter().map(|(_, nfa)| nfa));
    if includes(&all, &rule) {
        return Coverage::Full;
    }
    let served_by: BTreeSet<KeyOf> = keys
        .into_iter()
        .filter(|(_, nfa)| intersects(&rule, nfa))
        .map(|(key, _)| key)
        .collect();
    if served_by.is_empty() {
        Coverage::None
    } else {
        Coverage::Partial {
            served_by: served_by.into_iter().collect(),
        }
    }
}

/// The images a rule matches: its host labels (globs in the `glob` crate's syntax), its port,
/// then its path segments followed by nothing or by `/` and more.
fn rule_language(pattern: &RegistryPattern) -> Nfa {
    let mut nfa = Nfa::default();
    let mut at = 0;
    for (i, (label, is_glob)) in pattern.host_labels().enumerate() {
        if i > 0 {
            at = nfa.class(at, char_set(b'.'));
        }
        at = if is_glob {
            match rule_glob(label) {
                Some(tokens) => nfa.tokens(at, &tokens),
                None => return Nfa::default(),
            }
        } else {
            nfa.literal(at, &label.to_ascii_lowercase())
        };
    }
    if let Some(port) = pattern.port() {
        at = nfa.literal(at, &format!(":{port}"));
    }
    let mut prefix = String::new();
    for segment in pattern.path() {
        prefix.push('/');
        prefix.push_str(segment);
    }
    if prefix.is_empty() {
        // A repository has at least one character.
        at = nfa.class(at, char_set(b'/'));
        at = nfa.class(at, path_chars());
        at = nfa.repeat(at, path_chars());
        nfa.accept(at);
    } else {
        at = nfa.literal(at, &prefix);
        nfa.accept(at);
        at = nfa.class(at, char_set(b'/'));
        at = nfa.repeat(at, path_chars());
        nfa.accept(at);
    }
    nfa
}

/// The images the kubelet serves with one stored key: `URLsMatchStr(key, image)`, plus the
/// Docker Hub fallback of a key that is exactly `index.docker.io`.
fn key_language(key: &str) -> Nfa {
    let (labels, port, path) = keyring::split(key);
    let mut nfa = Nfa::default();
    let mut at = 0;
    // An IPv6 literal is one label; the kubelet compares it without brackets, the image name
    // holds it with them.
    let bracketed = labels.len() == 1 && labels[0].contains(':') && !labels[0].starts_with('[');
    for (i, label) in labels.iter().enumerate() {
        if i > 0 {
            at = nfa.class(at, char_set(b'.'));
        }
        let tokens = if bracketed {
            Some(literal_tokens(&format!("[{label}]")))
        } else {
            go_glob(label)
        };
        match tokens {
            Some(tokens) => at = nfa.tokens(at, &tokens),
            // A malformed glob matches nothing, as in the kubelet.
            None => return hub_fallback(key),
        }
    }
    if !port.is_empty() {
        at = nfa.literal(at, &format!(":{port}"));
    }
    // A string prefix of the image's path (which starts with '/').
    at = if path.is_empty() {
        nfa.class(at, char_set(b'/'))
    } else {
        nfa.literal(at, path)
    };
    at = nfa.repeat(at, path_chars());
    nfa.accept(at);
    Nfa::union([&nfa, &hub_fallback(key)])
}

/// `isDefaultRegistryMatch` for a key that is exactly `index.docker.io`: images whose first
/// component is `docker.io`, `index.docker.io`, or has no `.` and no `:`.
fn hub_fallback(key: &str) -> Nfa {
    let mut nfa = Nfa::default();
    if key != DEFAULT_REGISTRY_HOST {
        return nfa;
    }
    for host in [DOCKER_HUB, DEFAULT_REGISTRY_HOST] {
        let at = nfa.literal(0, &format!("{host}/"));
        let at = nfa.repeat(at, path_chars());
        nfa.accept(at);
    }
    let at = nfa.class(0, label_chars());
    let at = nfa.repeat(at, label_chars());
    let at = nfa.class(at, char_set(b'/'));
    let at = nfa.repeat(at, path_chars());
    nfa.accept(at);
    nfa
}

/// One position of a label glob: a single character from a set, or any run of label
/// characters (`*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    One(Chars),
    Any,
}

fn literal_tokens(text: &str) -> Vec<Token> {
    text.bytes().map(|c| Token::One(char_set(c))).collect()
}

/// A label glob in the `glob` crate's syntax (rules; lowercased): `*`, `?`, `[...]`, `[!...]`
/// with `a-z` ranges. `None` where the crate refuses it.
fn rule_glob(label: &str) -> Option<Vec<Token>> {
    let chars: Vec<char> = label.to_ascii_lowercase().chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' => {
                // `**` is a whole path component for the crate: alone it matches anything,
                // inside a label it is refused.
                let run = chars[i..].iter().take_while(|c| **c == '*').count();
                if run > 2 || (run == 2 && chars.len() != 2) {
                    return None;
                }
                tokens.push(Token::Any);
                i += run;
            }
            '?' => {
                tokens.push(Token::One(label_chars()));
                i += 1;
            }
            '[' => {
                let negated = chars.get(i + 1) == Some(&'!');
                let start = if negated { i + 2 } else { i + 1 };
                // The first character of a class may be ']'; at least one character.
                let close = start + 1 + chars.get(start + 1..)?.iter().position(|c| *c == ']')?;
                let set = class_set(&chars[start..close]);
                tokens.push(Token::One(if negated { label_chars() & !set } else { set }));
                i = close + 1;
            }
            c => {
                tokens.push(Token::One(u8::try_from(c).map_or(0, char_set)));
                i += 1;
            }
        }
    }
    Some(tokens)
}

/// The `glob` crate's class body: `x-y` ranges and single characters.
fn class_set(body: &[char]) -> Chars {
    let mut set = 0;
    let mut i = 0;
    while i < body.len() {
        let (lo, hi) = if i + 2 < body.len() && body[i + 1] == '-' {
            i += 3;
            (body[i - 3], body[i - 1])
        } else {
            i += 1;
            (body[i - 1], body[i - 1])
        };
        set |= chars_where(|c| lo <= char::from(c) && char::from(c) <= hi);
    }
    set
}

/// A label glob in Go's `filepath.Match` syntax (docker config keys): `*`, `?`, `[...]`,
/// `[^...]`, `\` escapes. `None` when malformed (the kubelet then matches nothing).
fn go_glob(label: &str) -> Option<Vec<Token>> {
    if !keyring::is_well_formed_glob(label) {
        return None;
    }
    let bytes = label.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'*' => {
                tokens.push(Token::Any);
                i += 1;
            }
            b'?' => {
                tokens.push(Token::One(label_chars()));
                i += 1;
            }
            b'[' => {
                i += 1;
                let negated = bytes.get(i) == Some(&b'^');
                if negated {
                    i += 1;
                }
                let mut set = 0;
                let mut first = true;
                while first || bytes.get(i) != Some(&b']') {
                    first = false;
                    let (lo, next) = go_class_char(bytes, i)?;
                    let (hi, next) = if bytes.get(next) == Some(&b'-') {
                        go_class_char(bytes, next + 1)?
                    } else {
                        (lo, next)
                    };
                    set |= chars_where(|c| lo <= c && c <= hi);
                    i = next;
                }
                i += 1;
                tokens.push(Token::One(if negated { label_chars() & !set } else { set }));
            }
            b'\\' => {
                tokens.push(Token::One(char_set(*bytes.get(i + 1)?)));
                i += 2;
            }
            c => {
                tokens.push(Token::One(char_set(c)));
                i += 1;
            }
        }
    }
    Some(tokens)
}

/// One (possibly escaped) class character at `i`, and where the class goes on.
fn go_class_char(bytes: &[u8], i: usize) -> Option<(u8, usize)> {
    match *bytes.get(i)? {
        b'\\' => Some((*bytes.get(i + 1)?, i + 2)),
        c => Some((c, i + 1)),
    }
}

/// A nondeterministic automaton over [`ALPHABET`]; state 0 is the start.
#[derive(Debug, Clone)]
struct Nfa {
    /// Per state: (characters, next state).
    edges: Vec<Vec<(Chars, usize)>>,
    /// Per state: states reached without reading.
    empty: Vec<Vec<usize>>,
    accepting: Vec<bool>,
}

impl Default for Nfa {
    fn default() -> Self {
        Self {
            edges: vec![Vec::new()],
            empty: vec![Vec::new()],
            accepting: vec![false],
        }
    }
}

impl Nfa {
    fn state(&mut self) -> usize {
        self.edges.push(Vec::new());
        self.empty.push(Vec::new());
        self.accepting.push(false);
        self.edges.len() - 1
    }

    /// One character of `set` after `from`.
    fn class(&mut self, from: usize, set: Chars) -> usize {
        let to = self.state();
        self.edges[from].push((set, to));
        to
    }

    /// Any run (possibly empty) of characters of `set` after `from`.
    fn repeat(&mut self, from: usize, set: Chars) -> usize {
        let to = self.state();
        self.empty[from].push(to);
        self.edges[to].push((set, to));
        to
    }

    fn literal(&mut self, from: usize, text: &str) -> usize {
        text.bytes().fold(from, |at, c| self.class(at, char_set(c)))
    }

    fn tokens(&mut self, from: usize, tokens: &[Token]) -> usize {
        tokens.iter().fold(from, |at, token| match token {
            Token::One(set) => self.class(at, *set),
            Token::Any => self.repeat(at, label_chars()),
        })
    }

    fn accept(&mut self, state: usize) {
        self.accepting[state] = true;
    }

    /// The images of any of `parts`.
    fn union<'a>(parts: impl IntoIterator<Item = &'a Nfa>) -> Nfa {
        let mut out = Nfa::default();
        for part in parts {
            let offset = out.edges.len();
            out.empty[0].push(offset);
            for state in 0..part.edges.len() {
                out.edges.push(
                    part.edges[state]
                        .iter()
                        .map(|(s, to)| (*s, to + offset))
                        .collect(),
                );
                out.empty
                    .push(part.empty[state].iter().map(|to| to + offset).collect());
                out.accepting.push(part.accepting[state]);
            }
        }
        out
    }

    /// `states` and every state reached from them without reading.
    fn closure(&self, states: impl IntoIterator<Item = usize>) -> BTreeSet<usize> {
        let mut out = BTreeSet::new();
        let mut todo: Vec<usize> = states.into_iter().collect();
        while let Some(state) = todo.pop() {
            if out.insert(state) {
                todo.extend(&self.empty[state]);
            }
        }
        out
    }

    fn step(&self, states: &BTreeSet<usize>, c: usize) -> BTreeSet<usize> {
        self.closure(states.iter().flat_map(|s| {
            self.edges[*s]
                .iter()
                .filter(move |(set, _)| set & (1 << c) != 0)
                .map(|(_, to)| *to)
        }))
    }

    fn accepts(&self, states: &BTreeSet<usize>) -> bool {
        states.iter().any(|s| self.accepting[*s])
    }
}

/// The most pairs of state sets one question explores; beyond it the answer is the cautious
/// one (not covered, but overlapping). Rules and keys written by people stay far below.
const SEARCH_LIMIT: usize = 20_000;

/// Walks `a` and `b` in step, reading the same characters, until `found` holds for a pair of
/// state sets (accepted by `a`, accepted by `b`). `None` when the walk was cut short.
fn search(a: &Nfa, b: &Nfa, found: impl Fn(bool, bool) -> bool) -> Option<bool> {
    let start = (a.closure([0]), b.closure([0]));
    let mut seen = HashSet::from([start.clone()]);
    let mut todo = VecDeque::from([start]);
    while let Some((sa, sb)) = todo.pop_front() {
        if found(a.accepts(&sa), b.accepts(&sb)) {
            return Some(true);
        }
        for c in 0..ALPHABET.len() {
            let next = (a.step(&sa, c), b.step(&sb, c));
            if next.0.is_empty() {
                continue;
            }
            if seen.len() >= SEARCH_LIMIT {
                return None;
            }
            if seen.insert(next.clone()) {
                todo.push_back(next);
            }
        }
    }
    Some(false)
}

/// Whether every image of `inner` is one of `outer`'s.
fn includes(outer: &Nfa, inner: &Nfa) -> bool {
    search(inner, outer, |in_inner, in_outer| in_inner && !in_outer) == Some(false)
}

/// Whether some image is both `a`'s and `b`'s.
fn intersects(a: &Nfa, b: &Nfa) -> bool {
    search(a, b, |in_a, in_b| in_a && in_b) != Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coverage(rule: &str, keys: &[&str]) -> Coverage {
        let pattern = RegistryPattern::parse(rule).expect(rule);
        of(&pattern, [("s", &Keyring::new(keys.iter().copied()))])
    }

    fn partial(keys: &[&str]) -> Coverage {
        Coverage::Partial {
            served_by: keys
                .iter()
                .map(|k| KeyOf {
                    secret: "s".into(),
                    key: k.to_string(),
                })
                .collect(),
        }
    }

    /// The shapes users meet: ECR, GAR, ACR, GHCR organisations, Docker Hub, ports.
    #[test]
    fn coverage_of_common_shapes() {
        let ecr = "*.dkr.ecr.*.amazonaws.com";
        let account = "123456789012.dkr.ecr.eu-west-1.amazonaws.com";
        let cases: Vec<(&str, Vec<&str>, Coverage)> = vec![
            // ECR: one account's Secret serves that account's images of the glob rule.
            (ecr, vec![account], partial(&[account])),
            (
                ecr,
                vec!["https://123456789012.dkr.ecr.eu-west-1.amazonaws.com"],
                partial(&[account]),
            ),
            (ecr, vec![ecr], Coverage::Full),
            (
                ecr,
                vec!["*.dkr.ecr.eu-west-1.amazonaws.com"],
                partial(&["*.dkr.ecr.eu-west-1.amazonaws.com"]),
            ),
            (
                ecr,
                vec!["123456789012.dkr.ecr.amazonaws.com"],
                Coverage::None,
            ),
            (account, vec![account], Coverage::Full),
            (account, vec![ecr], Coverage::Full),
            (
                account,
                vec!["210987654321.dkr.ecr.eu-west-1.amazonaws.com"],
                Coverage::None,
            ),
            // GAR: a region host, project paths.
            (
                "europe-west1-docker.pkg.dev",
                vec!["europe-west1-docker.pkg.dev"],
                Coverage::Full,
            ),
            (
                "europe-west1-docker.pkg.dev",
                vec!["https://europe-west1-docker.pkg.dev"],
                Coverage::Full,
            ),
            (
                "europe-west1-docker.pkg.dev/acme-prod",
                vec!["europe-west1-docker.pkg.dev"],
                Coverage::Full,
            ),
            (
                "*-docker.pkg.dev",
                vec!["europe-west1-docker.pkg.dev"],
                partial(&["europe-west1-docker.pkg.dev"]),
            ),
            (
                "europe-west1-docker.pkg.dev",
                vec!["us-docker.pkg.dev"],
                Coverage::None,
            ),
            (
                "europe-west1-docker.pkg.dev",
                vec!["europe-west1-docker.pkg.dev/acme-prod"],
                partial(&["europe-west1-docker.pkg.dev/acme-prod"]),
            ),
            // ACR: one registry of the glob rule.
            (
                "*.azurecr.io",
                vec!["acme.azurecr.io"],
                partial(&["acme.azurecr.io"]),
            ),
            ("*.azurecr.io", vec!["*.azurecr.io"], Coverage::Full),
            ("*.azurecr.io", vec!["acme.azurecr.cn"], Coverage::None),
            ("acme.azurecr.io", vec!["*.azurecr.io"], Coverage::Full),
            // Paths: the kubelet's string prefix against the rule's whole segments.
            ("ghcr.io/acme", vec!["ghcr.io"], Coverage::Full),
            ("ghcr.io/acme", vec!["ghcr.io/acme"], Coverage::Full),
            ("ghcr.io/acme", vec!["ghcr.io/ac"], Coverage::Full),
            (
                "ghcr.io/acme",
                vec!["ghcr.io/acme/"],
                partial(&["ghcr.io/acme/"]),
            ),
            (
                "ghcr.io/acme",
                vec!["ghcr.io/acme/api"],
                partial(&["ghcr.io/acme/api"]),
            ),
            ("ghcr.io/acme", vec!["ghcr.io/acme-evil"], Coverage::None),
            ("ghcr.io/acme", vec!["ghcr.io/other"], Coverage::None),
            ("ghcr.io", vec!["ghcr.io/acme"], partial(&["ghcr.io/acme"])),
            ("ghcr.io", vec!["ghcr.io/acme", "ghcr.io"], Coverage::Full),
            // Ports must be equal.
            (
                "registry.example.com:5000",
                vec!["registry.example.com:5000"],
                Coverage::Full,
            ),
            (
                "registry.example.com:5000",
                vec!["https://registry.example.com:5000/v2/"],
                Coverage::Full,
            ),
            (
                "registry.example.com:5000",
                vec!["registry.example.com"],
                Coverage::None,
            ),
            (
                "registry.example.com",
                vec!["registry.example.com:5000"],
                Coverage::None,
            ),
            ("[::1]:5000", vec!["[::1]:5000"], Coverage::Full),
            // Docker Hub: `https://index.docker.io/v1/` serves docker.io through the fallback.
            (
                "docker.io",
                vec!["https://index.docker.io/v1/"],
                Coverage::Full,
            ),
            ("docker.io/acme", vec!["index.docker.io"], Coverage::Full),
            ("docker.io", vec!["docker.io"], Coverage::Full),
            ("docker.io", vec!["registry-1.docker.io"], Coverage::None),
            (
                "docker.io",
                vec!["docker.io/acme"],
                partial(&["docker.io/acme"]),
            ),
            // Keys compare as written: an uppercase key serves no lowercase image.
            ("ghcr.io", vec!["GHCR.IO"], Coverage::None),
            // Several keys may cover a rule together, though none does alone.
            (
                "reg[0-1].example.com",
                vec!["reg0.example.com", "reg1.example.com"],
                Coverage::Full,
            ),
            (
                "reg[0-1].example.com",
                vec!["reg0.example.com"],
                partial(&["reg0.example.com"]),
            ),
            // Glob against glob, by language, not by spelling.
            ("reg?.example.com", vec!["reg*.example.com"], Coverage::Full),
            (
                "reg*.example.com",
                vec!["reg[a-z].example.com"],
                partial(&["reg[a-z].example.com"]),
            ),
            // A '?' in a key starts a URL query for the kubelet: the key is the host `reg`.
            ("reg*.example.com", vec!["reg?.example.com"], Coverage::None),
            (
                "[a-c]x.example.com",
                vec!["*-*.example.com"],
                Coverage::None,
            ),
            (
                "[!a-y]x.example.com",
                vec!["[^a-y]x.example.com"],
                Coverage::Full,
            ),
            // A malformed key glob serves nothing.
            (
                "reg2.example.com",
                vec!["reg[0-9-9].example.com"],
                Coverage::None,
            ),
        ];
        for (rule, keys, want) in cases {
            assert_eq!(coverage(rule, &keys), want, "{rule} with {keys:?}");
        }
    }

    /// Every image name up to `len` characters over a few characters that exercise globs.
    fn names(len: usize) -> Vec<String> {
        let letters = ["a", "b", "x", "-", "0"];
        let mut all = vec![String::new()];
        let mut frontier = vec![String::new()];
        for _ in 0..len {
            frontier = frontier
                .iter()
                .flat_map(|n| letters.iter().map(move |l| format!("{n}{l}")))
                .collect();
            all.extend(frontier.iter().cloned());
        }
        all
    }

    fn label_accepts(tokens: &[Token], label: &str) -> bool {
        let mut nfa = Nfa::default();
        let end = nfa.tokens(0, tokens);
        nfa.accept(end);
        let mut states = nfa.closure([0]);
        for c in label.bytes() {
            let Some(i) = ALPHABET.iter().position(|a| *a == c) else {
                return false;
            };
            states = nfa.step(&states, i);
        }
        nfa.accepts(&states)
    }

    /// The automata agree with the matchers they model, on every short label.
    #[test]
    fn label_globs_agree_with_the_glob_crate_and_go() {
        let globs = [
            "*", "a*", "*a", "a?", "?", "[ab]", "[!ab]", "[a-b]x", "[]a]", "a*b*", "**", "x[-a]",
            "[a-]", "*-*", "ab",
        ];
        for text in globs {
            let compiled = glob::Pattern::new(text).expect(text);
            let tokens = rule_glob(text).expect(text);
            for name in names(3) {
                assert_eq!(
                    label_accepts(&tokens, &name),
                    compiled.matches(&name),
                    "rule glob {text} on {name:?}"
                );
            }
        }
        for text in ["a**", "***"] {
            assert_eq!(
                rule_glob(text).is_some(),
                glob::Pattern::new(text).is_ok(),
                "{text}"
            );
        }
        let go = [
            "*", "a*", "*a", "a?", "?", "[ab]", "[^ab]", "[a-b]x", "a*b*", "\\a", "[\\-]", "*-*",
            "[0-9-9]", "[", "ab",
        ];
        for text in go {
            let tokens = go_glob(text);
            for name in names(3) {
                let want = keyring::filepath_match(text, &name) == Some(true);
                let got = tokens.as_ref().is_some_and(|t| label_accepts(t, &name));
                assert_eq!(got, want, "go glob {text} on {name:?}");
            }
        }
    }

    /// Full, partial and none agree with the rule matcher and the keyring on every image of
    /// a small universe of hosts and paths.
    #[test]
    fn coverage_agrees_with_the_matchers_on_examples() {
        let hosts = [
            "a.example.com",
            "b.example.com",
            "ab.example.com",
            "a.example.com:5000",
        ];
        let paths = ["x", "x/y", "xy", "acme/api", "acme-evil/api"];
        let rules = [
            "*.example.com",
            "a.example.com",
            "a.example.com/x",
            "?.example.com",
            "a.example.com:5000",
        ];
        let keys = [
            "a.example.com",
            "*.example.com",
            "a.example.com/x",
            "a.example.com/x/",
            "b.example.com/acme",
            "?.example.com:5000",
            "*b.example.com",
        ];
        for rule in rules {
            let pattern = RegistryPattern::parse(rule).expect(rule);
            for key in keys {
                let keyring = Keyring::new([key]);
                let mut matched = 0;
                let mut served = 0;
                for host in hosts {
                    for path in paths {
                        let name = format!("{host}/{path}");
                        let image = crate::core::image::parse(&name).expect(&name);
                        if pattern.matches(&image) {
                            matched += 1;
                            served += usize::from(keyring.serves(&image.kubelet_name()));
                        }
                    }
                }
                let got = of(&pattern, [("s", &keyring)]);
                // The examples cannot prove "full", only refute it; they can prove "some".
                if served < matched {
                    assert_ne!(
                        got,
                        Coverage::Full,
                        "{rule} {key}: an example is not served"
                    );
                }
                if served > 0 {
                    assert_ne!(got, Coverage::None, "{rule} {key}: an example is served");
                }
            }
        }
    }

    #[test]
    fn pathological_globs_end_with_the_cautious_answer() {
        let key = format!("{}x.example.com", "*a".repeat(30));
        let got = coverage("*.example.com", &[&key]);
        assert_ne!(got, Coverage::Full);
    }
}
