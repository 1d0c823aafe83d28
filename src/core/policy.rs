//! The policy every decision reads: the settings of the last good configuration and the one
//! merged rule list (the file's rules first, then discovered ones), rebuilt once per change
//! rather than once per request.
//!
//! Rules live in one place: a [`Policy`] has no other rule list to read by mistake, so a
//! discovered rule can never be lost by code that looked at the file's rules instead.
//!
//! It also holds the kubelet keyrings of the Secrets the injector can read (its namespace's
//! sources), so a decision can tell whether the kubelet would use a Secret for an image.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::core::config::{Config, Settings};
use crate::core::keyring::Keyring;
use crate::core::rules::{Rule, RuleSet};

/// What the source Secrets contribute: discovered rules and, by Secret name, the keyrings.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub rules: Vec<Rule>,
    pub keyrings: HashMap<String, Keyring>,
}

/// A consistent snapshot: settings, rules and known credentials.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    settings: Settings,
    /// Configuration rules first, then discovered ones, so the file wins ties.
    rules: RuleSet,
    keyrings: HashMap<String, Keyring>,
}

impl Policy {
    /// The policy of a configuration file alone (no sources).
    pub fn from_config(config: &Config) -> Self {
        Self::merged(config, &Sources::default())
    }

    /// The file's rules followed by the discovered ones, with the sources' keyrings.
    pub fn merged(config: &Config, sources: &Sources) -> Self {
        let mut rules = config.rules.clone();
        rules.extend_from_slice(&sources.rules);
        Self {
            settings: config.settings.clone(),
            rules: RuleSet::new(rules),
            keyrings: sources.keyrings.clone(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Whether any Secret's credentials are known (then images are checked against them).
    pub fn knows_credentials(&self) -> bool {
        !self.keyrings.is_empty()
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

/// Holds the current [`Policy`]; readers never block, writers rebuild the snapshot.
#[derive(Debug)]
pub struct PolicyStore {
    current: ArcSwap<Policy>,
    /// Inputs of the snapshot, kept to rebuild it when either changes.
    inputs: Mutex<(Config, Sources)>,
}

impl PolicyStore {
    pub fn new(config: Config) -> Self {
        Self {
            current: ArcSwap::from_pointee(Policy::from_config(&config)),
            inputs: Mutex::new((config, Sources::default())),
        }
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<Policy> {
        self.current.load_full()
    }

    pub fn set_config(&self, config: Config) {
        let mut inputs = self.inputs.lock().unwrap_or_else(|e| e.into_inner());
        inputs.0 = config;
        self.current
            .store(Arc::new(Policy::merged(&inputs.0, &inputs.1)));
    }

    pub fn set_sources(&self, sources: Sources) {
        let mut inputs = self.inputs.lock().unwrap_or_else(|e| e.into_inner());
        inputs.1 = sources;
        self.current
            .store(Arc::new(Policy::merged(&inputs.0, &inputs.1)));
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
                .best_match(&image)
                .map(|r| r.secrets[0].as_str()),
            Some("from-new-file")
        );
    }
}
