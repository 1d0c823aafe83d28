//! The policy every admission reads: the last good configuration plus rules discovered from
//! source Secrets, merged once per change rather than once per request.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::rules::{Rule, RuleSet};

/// A consistent snapshot: configuration and the merged rule list.
#[derive(Debug, Clone)]
pub struct Policy {
    pub config: Config,
    /// Configuration rules first, then discovered ones, so the file wins ties.
    pub rules: RuleSet,
}

/// Holds the current [`Policy`]; readers never block, writers rebuild the snapshot.
#[derive(Debug)]
pub struct PolicyStore {
    current: ArcSwap<Policy>,
    /// Inputs of the snapshot, kept to rebuild it when either changes.
    inputs: Mutex<(Config, Vec<Rule>)>,
}

impl PolicyStore {
    pub fn new(config: Config) -> Self {
        let policy = merge(&config, &[]);
        Self {
            current: ArcSwap::from_pointee(policy),
            inputs: Mutex::new((config, Vec::new())),
        }
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<Policy> {
        self.current.load_full()
    }

    pub fn set_config(&self, config: Config) {
        let mut inputs = self.inputs.lock().unwrap_or_else(|e| e.into_inner());
        inputs.0 = config;
        self.current.store(Arc::new(merge(&inputs.0, &inputs.1)));
    }

    pub fn set_discovered(&self, rules: Vec<Rule>) {
        let mut inputs = self.inputs.lock().unwrap_or_else(|e| e.into_inner());
        inputs.1 = rules;
        self.current.store(Arc::new(merge(&inputs.0, &inputs.1)));
    }
}

fn merge(config: &Config, discovered: &[Rule]) -> Policy {
    let mut rules = config.rules.rules().to_vec();
    rules.extend_from_slice(discovered);
    Policy {
        config: config.clone(),
        rules: RuleSet::new(rules),
    }
}
