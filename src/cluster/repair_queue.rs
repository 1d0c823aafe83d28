//! Repair's queue and pacing: the candidates, the order they are tried in, the Pods already
//! repaired, and each controller's backoff. Pure bookkeeping, driven by [`super::repair`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::core::repair::Action;

/// After an eviction, a controller's next one waits this long, doubling while its
/// replacements keep arriving without their secrets.
pub const OWNER_BACKOFF: Duration = Duration::from_secs(15);
pub const OWNER_BACKOFF_MAX: Duration = Duration::from_secs(600);

/// A Pod to repair, as the watch last delivered it. The action and owner are what the
/// watch-time assessment found; the Pod is assessed again, against the policy and
/// facts of that moment, right before anything is done to it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub namespace: String,
    pub name: String,
    /// The Pod's UID: an eviction names it as a precondition, so a newer Pod of the same name
    /// (a StatefulSet's replacement) is never evicted in its place.
    pub uid: String,
    /// The Pod as JSON, as the watch last delivered it (re-assessed at the Pod's turn).
    pub pod: Arc<str>,
    pub action: Action,
    pub owner: Option<(String, String)>,
}

/// When a controller's next eviction may happen.
#[derive(Debug, Clone)]
pub struct Backoff {
    pub until: Instant,
    pub wait: Duration,
    /// Whether a stuck replacement has been reported for this wait.
    pub announced: std::cell::Cell<bool>,
}

impl Backoff {
    /// True the first time per wait (log once, not on every status update).
    pub fn announce(&self) -> bool {
        !self.announced.replace(true)
    }
}

/// Candidates by Pod uid, the order to try them in, what is done, and each controller's
/// backoff.
pub struct State {
    pub candidates: HashMap<String, Candidate>,
    pub listing: Option<HashMap<String, Candidate>>,
    pub queue: Vec<String>,
    pub done: HashSet<String>,
    pub backoff: HashMap<String, Backoff>,
    /// No repair before this (the warm-up after taking the Lease).
    pub not_before: Instant,
}

impl Default for State {
    fn default() -> Self {
        Self {
            candidates: HashMap::new(),
            listing: None,
            queue: Vec::new(),
            done: HashSet::new(),
            backoff: HashMap::new(),
            not_before: Instant::now(),
        }
    }
}

impl State {
    /// Queues every current candidate not repaired yet; forgets backoffs long expired.
    pub fn requeue(&mut self) {
        let mut queue: Vec<String> = self
            .candidates
            .keys()
            .filter(|k| !self.done.contains(*k))
            .cloned()
            .collect();
        queue.sort();
        self.queue = queue;
        self.done.retain(|k| self.candidates.contains_key(k));
        // A controller whose Pods stayed fine for a whole wait after its backoff ended starts
        // over from the first wait.
        self.backoff
            .retain(|_, b| b.until + b.wait > Instant::now());
    }

    /// An owner's Pod was evicted: its next eviction waits, longer each time in a row.
    pub fn evicted(&mut self, owner_uid: &str) {
        let wait = self
            .backoff
            .get(owner_uid)
            .map_or(OWNER_BACKOFF, |b| (b.wait * 2).min(OWNER_BACKOFF_MAX));
        self.backoff.insert(
            owner_uid.to_string(),
            Backoff {
                until: Instant::now() + wait,
                wait,
                announced: std::cell::Cell::new(false),
            },
        );
    }

    /// The next candidate to repair now.
    pub fn next(&mut self) -> Option<(String, Candidate)> {
        while !self.queue.is_empty() {
            let key = self.queue.remove(0);
            let Some(candidate) = self.candidates.get(&key) else {
                continue;
            };
            if self.done.contains(&key) {
                continue;
            }
            let waiting = candidate
                .owner
                .as_ref()
                .and_then(|(_, uid)| self.backoff.get(uid))
                .is_some_and(|b| Instant::now() < b.until);
            if waiting {
                continue;
            }
            return Some((key, candidate.clone()));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(name: &str, owner: Option<&str>) -> Candidate {
        Candidate {
            namespace: "a".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            pod: Arc::from("{}"),
            action: if owner.is_some() {
                Action::Evict
            } else {
                Action::Report(crate::core::repair::Unrecreated::Bare)
            },
            owner: owner.map(|o| (format!("ReplicaSet/{o}"), o.to_string())),
        }
    }

    #[test]
    fn owners_back_off_and_done_pods_are_not_repeated() {
        let mut state = State::default();
        for (uid, name, owner) in [
            ("1", "web-a", Some("rs")),
            ("2", "web-b", Some("rs")),
            ("3", "bare", None),
        ] {
            state.candidates.insert(uid.into(), candidate(name, owner));
        }
        state.requeue();
        let (key, first) = state.next().expect("a candidate");
        assert_eq!((key.as_str(), first.name.as_str()), ("1", "web-a"));
        // Evicted: its owner backs off, so the sibling waits; the bare Pod goes next.
        state.done.insert(key);
        state.evicted("rs");
        assert_eq!(state.backoff["rs"].wait, OWNER_BACKOFF);
        let (_, second) = state.next().expect("a candidate");
        assert_eq!(second.name, "bare");
        state.done.insert("3".into());
        assert!(state.next().is_none(), "web-b must wait for the backoff");
        state.requeue();
        assert!(
            state.next().is_none(),
            "still backing off, bare already reported"
        );
        // The backoff over: the sibling is next; evicting it too doubles the wait.
        if let Some(b) = state.backoff.get_mut("rs") {
            b.until = Instant::now() - Duration::from_millis(1);
        }
        state.requeue();
        assert_eq!(state.next().map(|(_, c)| c.name), Some("web-b".to_string()));
        state.evicted("rs");
        assert_eq!(state.backoff["rs"].wait, OWNER_BACKOFF * 2);
        for _ in 0..10 {
            state.evicted("rs");
        }
        assert_eq!(state.backoff["rs"].wait, OWNER_BACKOFF_MAX);
        // Announced once per wait.
        assert!(state.backoff["rs"].announce());
        assert!(!state.backoff["rs"].announce());
    }
}
