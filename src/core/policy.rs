//! The policy every decision reads: the settings of the last good configuration and the one
//! merged rule list (the file's rules first, then discovered ones), rebuilt once per change
//! rather than once per request.
//!
//! Rules live in one place: a [`Policy`] has no other rule list to read by mistake, so a
//! discovered rule can never be lost by code that looked at the file's rules instead.
//!
//! It also holds the kubelet keyrings of the Secrets the injector can read (its namespace's
//! sources), so a decision can tell whether the kubelet would use a Secret for an image.
//!
//! Scope (issue 14) is settled here, once, for every reader:
//! - a rule serves the namespaces its own scope allows (a discovered rule carries its
//!   source's scope);
//! - each Secret that is a known source serves only where its source scope allows too, so a
//!   credential reaches a namespace only where the rule's scope AND its source's scope both
//!   allow it. A rule naming several Secrets adds each of them only where that Secret's own
//!   source scope allows it (the others may still be added there), and matches only where at
//!   least one may be added; where none may, the rule is out of scope and the next most
//!   specific rule in scope may match ([`RuleSet`]). A Secret that is not a known source (not
//!   in the injector's namespace, or sources not read yet) is limited by its rules alone;
//! - with `requireScope: true`, a rule or source Secret that declares no scope serves no
//!   namespace ([`Policy::unscoped`] lists them, for the log and the metric).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;

use crate::core::config::{Config, Settings};
use crate::core::coverage::{self, Coverage};
use crate::core::expiry::Expiry;
use crate::core::keyring::Keyring;
use crate::core::rules::{Rule, RuleSet, RuleSource};
use crate::core::scope::Scope;

/// What the source Secrets contribute: discovered rules, and by Secret name, the keyrings,
/// the scopes (from each source's annotations; nowhere when unparsable) and the expiries of
/// those whose expiry is known ([`crate::core::expiry`]).
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub rules: Vec<Rule>,
    pub keyrings: HashMap<String, Keyring>,
    pub scopes: HashMap<String, Scope>,
    /// `credentialProbe`: by Secret name, the registries (`host[:port]`) that rejected its
    /// credential at the controller's last probe (its `pullsecret-injector/probe` annotation).
    pub rejected: HashMap<String, Vec<String>>,
    pub expiries: HashMap<String, Expiry>,
}

/// A consistent snapshot: settings, rules and known credentials.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    settings: Settings,
    /// Configuration rules first, then discovered ones, so the file wins ties; with the
    /// sources' scopes.
    rules: RuleSet,
    keyrings: HashMap<String, Keyring>,
    /// The registries that rejected each source's credential ([`Sources::rejected`]).
    rejected: HashMap<String, Vec<String>>,
    /// When each source Secret whose expiry is known stops working.
    expiries: HashMap<String, Expiry>,
    /// `requireScope`: the rules and source Secrets that declare no scope (so serve nowhere).
    unscoped: Vec<String>,
}

impl Policy {
    /// The policy of a configuration file alone (no sources).
    pub fn from_config(config: &Config) -> Self {
        Self::merged(config, &Sources::default())
    }

    /// The file's rules followed by the discovered ones, with the sources' keyrings and
    /// scopes; under `requireScope`, what declares no scope serves nowhere.
    pub fn merged(config: &Config, sources: &Sources) -> Self {
        let require = config.settings.require_scope;
        let mut unscoped = Vec::new();
        let rules: Vec<Rule> = config
            .rules
            .iter()
            .chain(&sources.rules)
            .map(|rule| {
                let mut rule = rule.clone();
                if require && !rule.scope.is_declared() {
                    // A discovered rule's scope is its source's, reported as the source.
                    if let RuleSource::Config { .. } = rule.source {
                        unscoped.push(format!("{} ({})", rule.source, rule.pattern));
                    }
                    rule.scope = Scope::required_but_undeclared();
                }
                rule
            })
            .collect();
        let mut unscoped_sources = Vec::new();
        let scopes = sources
            .scopes
            .iter()
            .map(|(name, scope)| {
                if require && !scope.is_declared() {
                    unscoped_sources.push(format!("source Secret {name}"));
                    (name.clone(), Scope::required_but_undeclared())
                } else {
                    (name.clone(), scope.clone())
                }
            })
            .collect();
        unscoped_sources.sort();
        unscoped.extend(unscoped_sources);
        Self {
            settings: config.settings.clone(),
            rules: RuleSet::with_source_scopes(rules, scopes),
            keyrings: sources.keyrings.clone(),
            rejected: sources.rejected.clone(),
            expiries: sources.expiries.clone(),
            unscoped,
        }
    }

    /// With `requireScope: true`, the rules (`config rules[i] (pattern)`) and source Secrets
    /// (`source Secret name`) that declare no namespace scope and so serve no namespace; empty
    /// otherwise.
    pub fn unscoped(&self) -> &[String] {
        &self.unscoped
    }

    /// What in the rules is most likely a mistake, for `check-config` and `explain` to warn
    /// about: no rules at all, and rules that can never win ([`RuleSet::never_winning`]).
    pub fn warnings(&self) -> Vec<String> {
        let rules = self.rules.rules();
        let mut out = Vec::new();
        if rules.is_empty() {
            out.push(if self.settings.discovery {
                "no rules in the file: only rules discovered from source Secrets will add anything"
                    .to_string()
            } else {
                "no rules: the injector adds nothing to any Pod".to_string()
            });
        }
        for (later, earlier) in self.rules.never_winning() {
            let (later, earlier) = (&rules[later], &rules[earlier]);
            out.push(format!(
                "{} ({}) can never win: {} ({}) names the same registry, comes first and serves every namespace",
                later.source, later.pattern, earlier.source, earlier.pattern
            ));
        }
        // A minted Secret that no rule names adds nothing unless discovery turns its keys
        // into rules.
        if !self.settings.discovery {
            for (i, provider) in self
                .settings
                .credential_providers
                .providers
                .iter()
                .enumerate()
            {
                if !rules.iter().any(|r| r.secrets.contains(&provider.secret)) {
                    out.push(format!(
                        "credentialProviders.providers[{i}] ({}) fills Secret {}, which no rule names and discovery is off: no Pod will get it",
                        provider.name, provider.secret
                    ));
                }
            }
        }
        out
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// When the source Secret `secret` stops working, if known.
    pub fn expiry(&self, secret: &str) -> Option<&Expiry> {
        self.expiries.get(secret)
    }

    /// Whether any Secret's credentials are known (then images are checked against them).
    pub fn knows_credentials(&self) -> bool {
        !self.keyrings.is_empty()
    }

    /// How much of `rule`'s images the kubelet would pull with its Secrets together (all, some,
    /// none): `None` when a Secret's credentials are unknown.
    pub fn coverage(&self, rule: &Rule) -> Option<Coverage> {
        let keyrings = rule
            .secrets
            .iter()
            .map(|s| Some((s.as_str(), self.keyrings.get(s)?)))
            .collect::<Option<Vec<_>>>()?;
        Some(coverage::of(&rule.pattern, keyrings))
    }

    /// `rule`'s Secrets whose credential `registry` (an image's `host[:port]`) rejected at the
    /// controller's last probe (`credentialProbe`); empty when none did or nothing is known.
    pub fn rejected_secrets<'r>(&self, rule: &'r Rule, registry: &str) -> Vec<&'r str> {
        if self.rejected.is_empty() {
            return Vec::new();
        }
        rule.secrets
            .iter()
            .filter(|secret| {
                self.rejected.get(*secret).is_some_and(|registries| {
                    registries
                        .iter()
                        .any(|r| crate::core::probe::same_registry(r, registry))
                })
            })
            .map(String::as_str)
            .collect()
    }

    /// Whether the kubelet would use one of `rule`'s Secrets for `target` (an image's kubelet
    /// name, or a pattern as a target): `None` when a Secret's credentials are unknown.
    pub fn serves(&self, rule: &Rule, served: impl Fn(&Keyring) -> bool) -> Option<bool> {
        let mut any = false;
        for secret in &rule.secrets {
            any |= served(self.keyrings.get(secret)?);
        }
        Some(any)
    }
}

/// Told of every new snapshot (logs and metrics of what the policy settled, e.g.
/// [`Policy::unscoped`]); core itself neither logs nor counts.
pub type Observer = Box<dyn Fn(&Policy) + Send + Sync>;

/// Holds the current [`Policy`]; readers never block, writers rebuild the snapshot.
pub struct PolicyStore {
    current: ArcSwap<Policy>,
    /// Inputs of the snapshot, kept to rebuild it when either changes.
    inputs: Mutex<(Config, Sources)>,
    observer: OnceLock<Observer>,
}

impl std::fmt::Debug for PolicyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyStore")
            .field("current", &self.current)
            .field("observed", &self.observer.get().is_some())
            .finish_non_exhaustive()
    }
}

impl PolicyStore {
    pub fn new(config: Config) -> Self {
        Self {
            current: ArcSwap::from_pointee(Policy::from_config(&config)),
            inputs: Mutex::new((config, Sources::default())),
            observer: OnceLock::new(),
        }
    }

    /// Calls `observer` with the current snapshot now and with every new one (under the
    /// store's lock, so in order). One observer per store; a second is ignored.
    pub fn observe(&self, observer: impl Fn(&Policy) + Send + Sync + 'static) {
        let inputs = self.inputs.lock().unwrap_or_else(|e| e.into_inner());
        if self.observer.set(Box::new(observer)).is_ok()
            && let Some(observer) = self.observer.get()
        {
            observer(&self.current.load());
        }
        drop(inputs);
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<Policy> {
        self.current.load_full()
    }

    pub fn set_config(&self, config: Config) {
        let mut inputs = self.inputs.lock().unwrap_or_else(|e| e.into_inner());
        inputs.0 = config;
        self.store(Policy::merged(&inputs.0, &inputs.1));
    }

    pub fn set_sources(&self, sources: Sources) {
        let mut inputs = self.inputs.lock().unwrap_or_else(|e| e.into_inner());
        inputs.1 = sources;
        self.store(Policy::merged(&inputs.0, &inputs.1));
    }

    /// Called with the inputs' lock held.
    fn store(&self, policy: Policy) {
        if let Some(observer) = self.observer.get() {
            observer(&policy);
        }
        self.current.store(Arc::new(policy));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::rules::{RegistryPattern, RuleSource};

    fn rule(pattern: &str, secret: &str, source: RuleSource) -> Rule {
        Rule {
            pattern: RegistryPattern::parse(pattern).expect(pattern),
            secrets: vec![secret.into()],
            pull_policy_always: false,
            source,
            scope: Default::default(),
        }
    }

    #[test]
    fn a_new_config_keeps_discovered_rules_and_the_file_wins_ties() {
        let config = |secret: &str| Config {
            rules: vec![rule("ghcr.io", secret, RuleSource::Config { index: 0 })],
            ..Config::default()
        };
        let store = PolicyStore::new(config("from-file"));
        store.set_sources(Sources {
            rules: vec![rule(
                "ghcr.io",
                "discovered",
                RuleSource::Discovered {
                    secret: "discovered".into(),
                },
            )],
            keyrings: HashMap::new(),
            scopes: HashMap::new(),
            rejected: HashMap::new(),
            expiries: HashMap::new(),
        });
        store.set_config(config("from-new-file"));
        let policy = store.load();
        let secrets: Vec<&str> = policy
            .rules()
            .rules()
            .iter()
            .map(|r| r.secrets[0].as_str())
            .collect();
        assert_eq!(secrets, ["from-new-file", "discovered"]);
        let image = crate::core::image::parse("ghcr.io/a/b").expect("valid");
        assert_eq!(
            policy
                .rules()
                .best_match(&image, "team-a", None)
                .map(|r| r.secrets[0].as_str()),
            Some("from-new-file")
        );
    }
}
