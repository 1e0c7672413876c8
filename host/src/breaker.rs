//! A circuit breaker per plugin.
//!
//! A plugin that fails every event (a trap, its deadline, its memory cap)
//! would otherwise hold each of its partitions for `max_attempts` calls
//! and backoffs per event, and with them every other plugin routed from
//! those partitions. After `failures` consecutive failed calls, across all
//! partitions, the circuit opens: for `cooldown_ms` the plugin's events are
//! parked in the dead-letter topic at once (outcome `parked`, ready to be
//! replayed) while other plugins keep flowing. Then one event is let
//! through as a trial: success closes the circuit, failure opens it for
//! another cool-down. A new version of the plugin closes it too.
//!
//! `retry` and `rejected` outcomes do not count: they are the plugin
//! working as designed on an event it cannot handle yet or at all.

use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `[plugins.<name>.breaker]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failed calls that open the circuit; 0 disables the
    /// breaker. Example: `failures = 5`.
    pub failures: u32,
    /// How long the circuit stays open before a trial event, in
    /// milliseconds. Example: `cooldown_ms = 30000`.
    pub cooldown_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: 5,
            cooldown_ms: 30_000,
        }
    }
}

/// Whether a plugin's next call may run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Closed, or this call is the half-open trial.
    Run,
    /// Open: park the event; the string says why, for the dead letter.
    Park(String),
}

/// What the circuit did after a call, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing changed.
    None,
    /// It opened (or re-opened after a failed trial).
    Opened,
    /// A trial succeeded: closed again.
    Closed,
}

/// A plugin's circuit, as `/plugins` and the logs show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Calls run; `failures` consecutive failures so far.
    Closed {
        /// Consecutive failed calls.
        failures: u32,
    },
    /// Events are parked until the cool-down ends.
    Open {
        /// Time left in the cool-down.
        remaining: Duration,
    },
    /// One trial call is running.
    HalfOpen,
}

#[derive(Debug)]
struct Circuit {
    /// The plugin version the state is about (its hash).
    version: String,
    failures: u32,
    open_until: Option<Instant>,
    /// A trial call is running until then: a trial that never reports
    /// (its partition revoked, the database down) does not block the
    /// next one for longer than a cool-down.
    trial_until: Option<Instant>,
    opened_times: u64,
}

impl Circuit {
    fn new(version: &str) -> Self {
        Self {
            version: version.to_string(),
            failures: 0,
            open_until: None,
            trial_until: None,
            opened_times: 0,
        }
    }
}

/// Every plugin's circuit.
#[derive(Debug, Default)]
pub struct Breakers {
    circuits: Mutex<HashMap<String, Circuit>>,
}

impl Breakers {
    fn with<T>(&self, plugin: &str, version: &str, f: impl FnOnce(&mut Circuit) -> T) -> T {
        let mut circuits = self
            .circuits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let circuit = circuits
            .entry(plugin.to_string())
            .or_insert_with(|| Circuit::new(version));
        if circuit.version != version {
            // A new version: whatever failed before, it gets a fresh start.
            let opened_times = circuit.opened_times;
            *circuit = Circuit::new(version);
            circuit.opened_times = opened_times;
        }
        f(circuit)
    }

    /// May `plugin` (at `version`) run an event now?
    pub fn admit(&self, plugin: &str, version: &str, config: BreakerConfig) -> Admission {
        if config.failures == 0 {
            return Admission::Run;
        }
        self.with(plugin, version, |c| match c.open_until {
            None => Admission::Run,
            Some(until) => {
                let now = Instant::now();
                let trial_running = c.trial_until.is_some_and(|t| now < t);
                if now >= until && !trial_running {
                    c.trial_until = Some(now + Duration::from_millis(config.cooldown_ms));
                    tracing::info!(plugin, "circuit half-open: one event is let through as a trial");
                    Admission::Run
                } else {
                    let left = until.saturating_duration_since(now);
                    Admission::Park(format!(
                        "circuit open for plugin {plugin} after {} consecutive failures; event parked (cool-down ends in {} ms), replay it once the plugin is fixed",
                        config.failures,
                        left.as_millis()
                    ))
                }
            }
        })
    }

    /// Record a call that failed (trap, deadline, memory cap).
    pub fn failure(&self, plugin: &str, version: &str, config: BreakerConfig) -> Transition {
        if config.failures == 0 {
            return Transition::None;
        }
        self.with(plugin, version, |c| {
            c.failures = c.failures.saturating_add(1);
            if c.trial_until.is_some() || (c.open_until.is_none() && c.failures >= config.failures)
            {
                c.trial_until = None;
                c.open_until = Some(Instant::now() + Duration::from_millis(config.cooldown_ms));
                c.opened_times += 1;
                Transition::Opened
            } else {
                Transition::None
            }
        })
    }

    /// Record a call that neither worked nor failed (the database was
    /// unavailable): a trial in progress ends without a verdict, and the
    /// next call is the trial.
    pub fn inconclusive(&self, plugin: &str, version: &str) {
        self.with(plugin, version, |c| c.trial_until = None);
    }

    /// Record a call that worked: any outcome but a failure, `retry` and
    /// `rejected` included.
    pub fn success(&self, plugin: &str, version: &str) -> Transition {
        self.with(plugin, version, |c| {
            let was_open = c.open_until.is_some();
            *c = Circuit {
                opened_times: c.opened_times,
                ..Circuit::new(version)
            };
            if was_open {
                Transition::Closed
            } else {
                Transition::None
            }
        })
    }

    /// The circuit of `plugin` and how many times it has opened.
    pub fn state(&self, plugin: &str) -> (State, u64) {
        let circuits = self
            .circuits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match circuits.get(plugin) {
            None => (State::Closed { failures: 0 }, 0),
            Some(c) => {
                let state = match c.open_until {
                    None => State::Closed {
                        failures: c.failures,
                    },
                    Some(_) if c.trial_until.is_some() => State::HalfOpen,
                    Some(until) => State::Open {
                        remaining: until.saturating_duration_since(Instant::now()),
                    },
                };
                (state, c.opened_times)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: BreakerConfig = BreakerConfig {
        failures: 3,
        cooldown_ms: 40,
    };

    #[test]
    fn opens_after_consecutive_failures_and_parks() {
        let b = Breakers::default();
        for _ in 0..2 {
            assert_eq!(b.failure("p", "v1", CONFIG), Transition::None);
        }
        assert_eq!(b.admit("p", "v1", CONFIG), Admission::Run);
        assert_eq!(b.failure("p", "v1", CONFIG), Transition::Opened);
        assert!(
            matches!(b.admit("p", "v1", CONFIG), Admission::Park(why) if why.contains("3 consecutive failures"))
        );
        assert!(matches!(b.state("p"), (State::Open { .. }, 1)));
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = Breakers::default();
        b.failure("p", "v1", CONFIG);
        b.failure("p", "v1", CONFIG);
        b.success("p", "v1");
        assert_eq!(b.failure("p", "v1", CONFIG), Transition::None);
        assert_eq!(b.state("p").0, State::Closed { failures: 1 });
    }

    #[test]
    fn one_trial_after_the_cool_down_closes_or_reopens() {
        let b = Breakers::default();
        for _ in 0..3 {
            b.failure("p", "v1", CONFIG);
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(b.admit("p", "v1", CONFIG), Admission::Run, "the trial");
        assert!(
            matches!(b.admit("p", "v1", CONFIG), Admission::Park(_)),
            "only one trial at a time"
        );
        assert_eq!(b.state("p").0, State::HalfOpen);
        assert_eq!(
            b.failure("p", "v1", CONFIG),
            Transition::Opened,
            "failed trial"
        );
        assert!(matches!(b.admit("p", "v1", CONFIG), Admission::Park(_)));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(b.admit("p", "v1", CONFIG), Admission::Run);
        assert_eq!(b.success("p", "v1"), Transition::Closed);
        assert_eq!(b.admit("p", "v1", CONFIG), Admission::Run);
        assert_eq!(b.state("p"), (State::Closed { failures: 0 }, 2));
    }

    #[test]
    fn a_new_version_closes_the_circuit_and_zero_disables() {
        let b = Breakers::default();
        for _ in 0..3 {
            b.failure("p", "v1", CONFIG);
        }
        assert!(matches!(b.admit("p", "v1", CONFIG), Admission::Park(_)));
        assert_eq!(b.admit("p", "v2", CONFIG), Admission::Run);
        let off = BreakerConfig {
            failures: 0,
            ..CONFIG
        };
        for _ in 0..10 {
            assert_eq!(b.failure("q", "v1", off), Transition::None);
        }
        assert_eq!(b.admit("q", "v1", off), Admission::Run);
    }
}
