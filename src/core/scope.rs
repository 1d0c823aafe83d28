//! Who may receive a credential: the namespaces a rule (or a discovered source Secret) serves.
//!
//! A [`Scope`] is a list of namespace names and globs, a label selector, both (a namespace
//! must match both), or neither (every namespace). It is enforced wherever a credential can
//! travel: the admission patch, sync's copies, repair, `explain` and `audit`.
//!
//! The safe side is "nowhere": a selector asked about a namespace whose labels are unknown does
//! not match, and a scope that cannot be parsed is [`Scope::nowhere`].
//!
//! Pure: parsing (from the config file's `namespaces`/`namespaceSelector`, or a source's
//! annotations in `kubectl -l` syntax) and matching.

use std::collections::BTreeMap;

/// A label selector's operator, as Kubernetes defines them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operator {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

/// One requirement of a label selector (`matchLabels` entries are `In` one value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match &self.operator {
            Operator::In(values) => value.is_some_and(|v| values.contains(v)),
            // As in Kubernetes: a namespace without the key satisfies `NotIn`.
            Operator::NotIn(values) => value.is_none_or(|v| !values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }

    fn describe(&self) -> String {
        match &self.operator {
            Operator::In(values) if values.len() == 1 => format!("{}={}", self.key, values[0]),
            Operator::In(values) => format!("{} in ({})", self.key, values.join(",")),
            Operator::NotIn(values) => format!("{} notin ({})", self.key, values.join(",")),
            Operator::Exists => self.key.clone(),
            Operator::DoesNotExist => format!("!{}", self.key),
        }
    }
}

/// A label selector: every requirement must hold. An empty selector matches every namespace
/// whose labels are known.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

impl Selector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// In `kubectl -l` syntax.
    pub fn describe(&self) -> String {
        self.requirements
            .iter()
            .map(Requirement::describe)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Parses `kubectl -l` syntax: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`,
    /// `!k`, comma-separated. Keys and values are checked as Kubernetes label keys and values.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for part in split_top_level(text)? {
            let part = part.trim();
            if part.is_empty() {
                return Err(format!("{text:?}: empty requirement"));
            }
            requirements.push(parse_requirement(part)?);
        }
        if requirements.is_empty() {
            return Err("empty selector".into());
        }
        Ok(Self { requirements })
    }
}

/// Splits on commas outside parentheses.
fn split_top_level(text: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| format!("{text:?}: unbalanced ')'"))?;
            }
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("{text:?}: unbalanced '('"));
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    let set = |op: &str| -> Option<(String, Vec<String>)> {
        let (key, rest) = part.split_once(op)?;
        let rest = rest.trim();
        let inner = rest.strip_prefix('(')?.strip_suffix(')')?;
        // `in ()` is an empty set, refused below (as the API server does).
        let values = if inner.trim().is_empty() {
            Vec::new()
        } else {
            inner.split(',').map(|v| v.trim().to_string()).collect()
        };
        Some((key.trim().to_string(), values))
    };
    let requirement = if let Some((key, values)) = set(" notin ") {
        Requirement {
            key,
            operator: Operator::NotIn(values),
        }
    } else if let Some((key, values)) = set(" in ") {
        Requirement {
            key,
            operator: Operator::In(values),
        }
    } else if let Some((key, value)) = part.split_once("!=") {
        Requirement {
            key: key.trim().into(),
            operator: Operator::NotIn(vec![value.trim().into()]),
        }
    } else if let Some((key, value)) = part.split_once("==").or_else(|| part.split_once('=')) {
        Requirement {
            key: key.trim().into(),
            operator: Operator::In(vec![value.trim().into()]),
        }
    } else if let Some(key) = part.strip_prefix('!') {
        Requirement {
            key: key.trim().into(),
            operator: Operator::DoesNotExist,
        }
    } else {
        Requirement {
            key: part.into(),
            operator: Operator::Exists,
        }
    };
    check_requirement(&requirement)?;
    Ok(requirement)
}

/// Checks a requirement as the API server would: a valid key, valid values, values present
/// for `In`/`NotIn` and absent otherwise.
pub fn check_requirement(requirement: &Requirement) -> Result<(), String> {
    if !is_label_key(&requirement.key) {
        return Err(format!("{:?} is not a valid label key", requirement.key));
    }
    match &requirement.operator {
        Operator::In(values) | Operator::NotIn(values) => {
            if values.is_empty() {
                return Err(format!("{}: In and NotIn need values", requirement.key));
            }
            if let Some(bad) = values.iter().find(|v| !is_label_value(v)) {
                return Err(format!("{bad:?} is not a valid label value"));
            }
        }
        Operator::Exists | Operator::DoesNotExist => {}
    }
    Ok(())
}

/// `[prefix/]name`: prefix a DNS subdomain, name 1–63 of `[A-Za-z0-9._-]`, alphanumeric at
/// both ends.
pub fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    prefix.is_none_or(crate::core::config::is_dns1123_subdomain) && is_label_name(name)
}

fn is_label_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Empty, or a label name.
pub fn is_label_value(value: &str) -> bool {
    value.is_empty() || is_label_name(value)
}

/// A namespace name or glob (`team-a`, `team-a-*`).
#[derive(Debug, Clone)]
pub struct NamePattern {
    raw: String,
    glob: glob::Pattern,
}

impl PartialEq for NamePattern {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}

impl Eq for NamePattern {}

impl NamePattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let plain = text.replace(['*', '?'], "a").replace(['[', ']', '!'], "");
        if text.is_empty() || !crate::core::config::is_dns1123_label(&plain) {
            return Err(format!(
                "{text:?} is not a namespace name or glob (lowercase letters, digits, '-', and * ? [] wildcards)"
            ));
        }
        let glob = glob::Pattern::new(text).map_err(|e| format!("{text:?}: {e}"))?;
        Ok(Self {
            raw: text.to_string(),
            glob,
        })
    }

    pub fn matches(&self, namespace: &str) -> bool {
        self.glob.matches(namespace)
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

/// The namespaces a credential may reach.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scope {
    /// `None`: any name.
    names: Option<Vec<NamePattern>>,
    /// `None`: any labels.
    selector: Option<Selector>,
    /// Serves no namespace at all (an unparsable scope, or none declared under
    /// `requireScope`).
    nowhere: bool,
    /// Why it serves nowhere, when that is a setting's doing (for `describe`).
    reason: Option<&'static str>,
}

impl Scope {
    /// Every namespace (no scope declared).
    pub fn everywhere() -> Self {
        Self::default()
    }

    /// No namespace.
    pub fn nowhere() -> Self {
        Self {
            nowhere: true,
            ..Self::default()
        }
    }

    pub fn new(names: Option<Vec<NamePattern>>, selector: Option<Selector>) -> Self {
        Self {
            names,
            selector,
            nowhere: false,
            reason: None,
        }
    }

    /// What an undeclared scope becomes under `requireScope`: nowhere, saying why.
    pub fn required_but_undeclared() -> Self {
        Self {
            reason: Some("requireScope: no scope declared"),
            ..Self::nowhere()
        }
    }

    /// The scope as enforced: under `requireScope` (`require_scope`), an undeclared scope
    /// serves nowhere. The one place that rule is written (policy, sync and the commands
    /// call it).
    pub fn enforced(&self, require_scope: bool) -> Self {
        if require_scope && !self.is_declared() {
            Self::required_but_undeclared()
        } else {
            self.clone()
        }
    }

    /// From a source Secret's annotations (`pullsecret-injector/namespaces`, comma-separated
    /// names or globs; `pullsecret-injector/namespace-selector`, `kubectl -l` syntax). Either
    /// may be absent; an error names the annotation, and the caller then serves nowhere.
    pub fn from_annotations(names: Option<&str>, selector: Option<&str>) -> Result<Self, String> {
        let names = names
            .map(|text| {
                let patterns: Result<Vec<_>, _> = text
                    .split(',')
                    .filter(|p| !p.trim().is_empty())
                    .map(NamePattern::parse)
                    .collect();
                match patterns {
                    Ok(p) if p.is_empty() => Err("no namespace names".to_string()),
                    other => other,
                }
            })
            .transpose()
            .map_err(|e| format!("{}: {e}", crate::core::names::NAMESPACES_ANNOTATION))?;
        let selector = selector
            .map(Selector::parse)
            .transpose()
            .map_err(|e| format!("{}: {e}", crate::core::names::NAMESPACE_SELECTOR_ANNOTATION))?;
        Ok(Self::new(names, selector))
    }

    /// Whether a scope was declared at all (`requireScope` makes undeclared ones serve
    /// nowhere).
    pub fn is_declared(&self) -> bool {
        self.names.is_some() || self.selector.is_some() || self.nowhere
    }

    pub fn is_nowhere(&self) -> bool {
        self.nowhere
    }

    pub fn has_selector(&self) -> bool {
        self.selector.is_some()
    }

    /// Whether `namespace`, with `labels` (`None`: unknown), is in scope. A selector never
    /// matches unknown labels.
    pub fn allows(&self, namespace: &str, labels: Option<&BTreeMap<String, String>>) -> bool {
        if self.nowhere {
            return false;
        }
        let name_ok = self
            .names
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n.matches(namespace)));
        let labels_ok = match (&self.selector, labels) {
            (None, _) => true,
            (Some(selector), Some(labels)) => selector.matches(labels),
            (Some(_), None) => false,
        };
        name_ok && labels_ok
    }

    /// One line for `explain`, `audit` and logs: `everywhere`, `nowhere`, or the parts.
    pub fn describe(&self) -> String {
        if self.nowhere {
            return match self.reason {
                Some(reason) => format!("nowhere ({reason})"),
                None => "nowhere".into(),
            };
        }
        let mut parts = Vec::new();
        if let Some(names) = &self.names {
            let names: Vec<&str> = names.iter().map(NamePattern::as_str).collect();
            parts.push(format!("namespaces {}", names.join(",")));
        }
        if let Some(selector) = &self.selector {
            parts.push(format!("labels {}", selector.describe()));
        }
        if parts.is_empty() {
            "everywhere".into()
        } else {
            parts.join(" and ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selector_syntax_and_every_operator() {
        let a = labels(&[("team", "a"), ("env", "prod")]);
        let b = labels(&[("team", "b")]);
        let none = labels(&[]);
        // (selector, matches a, matches b, matches none)
        let cases = [
            ("team=a", true, false, false),
            ("team==a", true, false, false),
            ("team!=a", false, true, true),
            ("team in (a, b)", true, true, false),
            ("team notin (a)", false, true, true),
            ("team", true, true, false),
            ("!team", false, false, true),
            ("team=a,env=prod", true, false, false),
            ("team in (a,b),!env", false, true, false),
            ("example.com/tier=gold", false, false, false),
        ];
        for (text, want_a, want_b, want_none) in cases {
            let selector = Selector::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(selector.matches(&a), want_a, "{text} on a");
            assert_eq!(selector.matches(&b), want_b, "{text} on b");
            assert_eq!(selector.matches(&none), want_none, "{text} on none");
            // What describe prints parses back to the same selector.
            assert_eq!(
                Selector::parse(&selector.describe()),
                Ok(selector),
                "{text}"
            );
        }
    }

    #[test]
    fn bad_selectors_are_errors() {
        for text in [
            "",
            ",",
            "team=a,",
            "team in (a",
            "team in a)",
            "Team Name=a",
            "team=a b",
            "-team=a",
            "team in ()",
            "x/y/z=a",
        ] {
            assert!(Selector::parse(text).is_err(), "{text:?} accepted");
        }
    }

    #[test]
    fn names_and_globs() {
        let cases = [
            ("team-a", "team-a", true),
            ("team-a", "team-ab", false),
            ("team-a-*", "team-a-dev", true),
            ("team-a-*", "team-a", false),
            ("team-?", "team-b", true),
            ("team-[ab]", "team-c", false),
        ];
        for (pattern, namespace, want) in cases {
            let p = NamePattern::parse(pattern).unwrap_or_else(|e| panic!("{pattern}: {e}"));
            assert_eq!(p.matches(namespace), want, "{pattern} vs {namespace}");
        }
        for bad in ["", "Team", "team_a", "team/a", "a b"] {
            assert!(NamePattern::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn scope_table() {
        let team_a = labels(&[("team", "a")]);
        let team_b = labels(&[("team", "b")]);
        let names = Some(vec![
            NamePattern::parse("team-a").unwrap(),
            NamePattern::parse("team-a-*").unwrap(),
        ]);
        let selector = Some(Selector::parse("team=a").unwrap());
        let by_name = Scope::new(names.clone(), None);
        let by_label = Scope::new(None, selector.clone());
        let both = Scope::new(names, selector);
        // (scope, namespace, labels, allowed)
        type Case<'a> = (
            &'a Scope,
            &'a str,
            Option<&'a BTreeMap<String, String>>,
            bool,
        );
        let cases: [Case<'_>; 16] = [
            (&Scope::everywhere(), "anything", None, true),
            (&Scope::nowhere(), "team-a", Some(&team_a), false),
            (&by_name, "team-a", None, true),
            (&by_name, "team-a-dev", None, true),
            (&by_name, "team-b", Some(&team_a), false),
            (&by_label, "team-b", Some(&team_a), true),
            (&by_label, "team-a", Some(&team_b), false),
            // Unknown labels: a selector never matches (the safe side is nowhere).
            (&by_label, "team-a", None, false),
            (&both, "team-a", Some(&team_a), true),
            (&both, "team-a-dev", Some(&team_a), true),
            (&both, "team-a", Some(&team_b), false),
            (&both, "team-b", Some(&team_a), false),
            (&both, "team-a", None, false),
            (&Scope::everywhere(), "team-a", Some(&team_b), true),
            (&by_name, "kube-system", Some(&team_a), false),
            (&by_label, "kube-system", Some(&labels(&[])), false),
        ];
        for (scope, namespace, labels, want) in cases {
            assert_eq!(
                scope.allows(namespace, labels),
                want,
                "{} / {namespace} / {labels:?}",
                scope.describe()
            );
        }
        assert!(!Scope::everywhere().is_declared());
        assert!(both.is_declared() && Scope::nowhere().is_declared());
        assert_eq!(
            both.describe(),
            "namespaces team-a,team-a-* and labels team=a"
        );
    }

    #[test]
    fn annotations() {
        let scope = Scope::from_annotations(Some("team-a, team-a-*"), Some("team=a")).unwrap();
        assert!(scope.allows("team-a-dev", Some(&labels(&[("team", "a")]))));
        assert_eq!(Scope::from_annotations(None, None), Ok(Scope::everywhere()));
        assert!(Scope::from_annotations(Some(" , "), None).is_err());
        let err = Scope::from_annotations(None, Some("team in (a")).unwrap_err();
        assert!(
            err.starts_with("pullsecret-injector/namespace-selector: "),
            "{err}"
        );
        let err = Scope::from_annotations(Some("Team_A"), None).unwrap_err();
        assert!(err.starts_with("pullsecret-injector/namespaces: "), "{err}");
    }
}
