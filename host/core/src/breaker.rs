//! A circuit breaker per plugin.
//!
//! A plugin that fails every event (a trap, its deadline, its memory cap)
//! would otherwise hold each of its partitions for `max_attempts` calls
//! and backoffs per event, and with them every other plugin routed from
//! those partitions. After `failures` consecutive events whose first call
//! failed, across all partitions, the circuit opens: for `cooldown_ms` the
//! plugin's events are parked in the dead-letter topic at once (outcome
//! `parked`, ready to be replayed) while other plugins keep flowing. Then
//! one event is let through as a trial: success closes the circuit,
//! failure opens it for another cool-down.
//!
//! Events count, not attempts: one poison event retried `max_attempts`
//! times is one failure, so it cannot open the circuit on its own. Each
//! version of a plugin has its own circuit, so a new version starts closed
//! and late reports from the old one do not touch it. `retry` and
//! `rejected` outcomes count as successes: the plugin is working, the
//! event is the problem.

use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `[plugins.<name>.breaker]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failed events that open the circuit; 0 disables the
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

#[derive(Debug, Default)]
struct Circuit {
    failures: u32,
    /// The last failure, for the parked events' reason.
    last_failure: String,
    open_until: Option<Instant>,
    /// A trial call is running until then: a trial that never reports
    /// (its partition revoked, the database down) does not block the
    /// next one for longer than a cool-down.
    trial_until: Option<Instant>,
    opened_times: u64,
}

/// The circuit of `plugin` at `version`.
fn key(plugin: &str, version: &str) -> String {
    format!("{plugin}@{version}")
}

/// Every plugin's circuit.
#[derive(Debug, Default)]
pub struct Breakers {
    circuits: Mutex<HashMap<String, Circuit>>,
}

impl Breakers {
    /// Run `f` on the circuit of `plugin` at `version`. Admitting an event
    /// of a new version replaces the old versions' circuits; a report from
    /// a version that has been replaced is ignored (`None`).
    fn with<T>(
        &self,
        plugin: &str,
        version: &str,
        admitting: bool,
        f: impl FnOnce(&mut Circuit) -> T,
    ) -> Option<T> {
        let mut circuits = self
            .circuits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = key(plugin, version);
        if let Some(c) = circuits.get_mut(&key) {
            return Some(f(c));
        }
        let prefix = format!("{plugin}@");
        let others = circuits.keys().any(|k| k.starts_with(&prefix));
        if others && !admitting {
            return None;
        }
        circuits.retain(|k, _| !k.starts_with(&prefix));
        Some(f(circuits.entry(key).or_default()))
    }

    /// May `plugin` (at `version`) run an event now?
    pub fn admit(&self, plugin: &str, version: &str, config: BreakerConfig) -> Admission {
        self.admit_at(plugin, version, config, Instant::now())
    }

    fn admit_at(
        &self,
        plugin: &str,
        version: &str,
        config: BreakerConfig,
        now: Instant,
    ) -> Admission {
        if config.failures == 0 {
            return Admission::Run;
        }
        self.with(plugin, version, true, |c| match c.open_until {
            None => Admission::Run,
            Some(until) => {
                let trial_running = c.trial_until.is_some_and(|t| now < t);
                if now >= until && !trial_running {
                    c.trial_until = Some(now + Duration::from_millis(config.cooldown_ms));
                    tracing::info!(plugin, "circuit half-open: one event is let through as a trial");
                    Admission::Run
                } else {
                    let left = until.saturating_duration_since(now);
                    Admission::Park(format!(
                        "circuit open for plugin {plugin} after {} consecutive failed events (last: {}); event parked (cool-down ends in {} ms), replay it once the plugin is fixed",
                        config.failures,
                        c.last_failure,
                        left.as_millis()
                    ))
                }
            }
        })
        .unwrap_or(Admission::Run)
    }

    /// Record an event whose call failed (trap, deadline, memory cap):
    /// once per event, not per attempt.
    pub fn failure(
        &self,
        plugin: &str,
        version: &str,
        config: BreakerConfig,
        reason: &str,
    ) -> Transition {
        self.failure_at(plugin, version, config, reason, Instant::now())
    }

    fn failure_at(
        &self,
        plugin: &str,
        version: &str,
        config: BreakerConfig,
        reason: &str,
        now: Instant,
    ) -> Transition {
        if config.failures == 0 {
            return Transition::None;
        }
        self.with(plugin, version, false, |c| {
            c.failures = c.failures.saturating_add(1);
            c.last_failure = reason.to_string();
            if c.trial_until.is_some() || (c.open_until.is_none() && c.failures >= config.failures)
            {
                c.trial_until = None;
                c.open_until = Some(now + Duration::from_millis(config.cooldown_ms));
                c.opened_times += 1;
                Transition::Opened
            } else {
                Transition::None
            }
        })
        .unwrap_or(Transition::None)
    }

    /// Record a call that neither worked nor failed (the database was
    /// unavailable): a trial in progress ends without a verdict, and the
    /// next call is the trial.
    pub fn inconclusive(&self, plugin: &str, version: &str) {
        self.with(plugin, version, false, |c| c.trial_until = None);
    }

    /// Record a call that worked: any outcome but a failure, `retry` and
    /// `rejected` included.
    /// Only the trial closes an open circuit: a late success from a call
    /// admitted before it opened changes nothing.
    pub fn success(&self, plugin: &str, version: &str) -> Transition {
        self.with(plugin, version, false, |c| {
            match (c.open_until, c.trial_until) {
                (None, _) => {
                    c.failures = 0;
                    Transition::None
                }
                (Some(_), Some(_)) => {
                    *c = Circuit {
                        opened_times: c.opened_times,
                        ..Circuit::default()
                    };
                    Transition::Closed
                }
                (Some(_), None) => Transition::None,
            }
        })
        .unwrap_or(Transition::None)
    }

    /// The circuit of `plugin` at `version` and how many times it has
    /// opened.
    pub fn state(&self, plugin: &str, version: &str) -> (State, u64) {
        let circuits = self
            .circuits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match circuits.get(&key(plugin, version)) {
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
        cooldown_ms: 1_000,
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn opens_after_consecutive_failed_events_and_parks_with_the_reason() {
        let b = Breakers::default();
        let t = Instant::now();
        for _ in 0..2 {
            assert_eq!(b.failure_at("p", "v1", CONFIG, "trap", t), Transition::None);
        }
        assert_eq!(b.admit_at("p", "v1", CONFIG, t), Admission::Run);
        assert_eq!(
            b.failure_at("p", "v1", CONFIG, "deadline exceeded", t),
            Transition::Opened
        );
        assert!(matches!(b.admit_at("p", "v1", CONFIG, t + ms(10)),
            Admission::Park(why) if why.contains("3 consecutive failed events") && why.contains("deadline exceeded")));
        assert!(matches!(b.state("p", "v1"), (State::Open { .. }, 1)));
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = Breakers::default();
        let t = Instant::now();
        b.failure_at("p", "v1", CONFIG, "x", t);
        b.failure_at("p", "v1", CONFIG, "x", t);
        b.success("p", "v1");
        assert_eq!(b.failure_at("p", "v1", CONFIG, "x", t), Transition::None);
        assert_eq!(b.state("p", "v1").0, State::Closed { failures: 1 });
    }

    #[test]
    fn one_trial_after_the_cool_down_closes_or_reopens() {
        let b = Breakers::default();
        let t = Instant::now();
        for _ in 0..3 {
            b.failure_at("p", "v1", CONFIG, "x", t);
        }
        assert_eq!(
            b.success("p", "v1"),
            Transition::None,
            "a late success is not a trial"
        );
        assert!(matches!(
            b.admit_at("p", "v1", CONFIG, t + ms(999)),
            Admission::Park(_)
        ));
        let after = t + ms(1_001);
        assert_eq!(
            b.admit_at("p", "v1", CONFIG, after),
            Admission::Run,
            "the trial"
        );
        assert!(
            matches!(b.admit_at("p", "v1", CONFIG, after), Admission::Park(_)),
            "only one trial at a time"
        );
        assert_eq!(b.state("p", "v1").0, State::HalfOpen);
        assert_eq!(
            b.failure_at("p", "v1", CONFIG, "x", after),
            Transition::Opened,
            "failed trial"
        );
        assert!(matches!(
            b.admit_at("p", "v1", CONFIG, after + ms(10)),
            Admission::Park(_)
        ));
        let later = after + ms(1_001);
        assert_eq!(b.admit_at("p", "v1", CONFIG, later), Admission::Run);
        assert_eq!(b.success("p", "v1"), Transition::Closed);
        assert_eq!(b.admit_at("p", "v1", CONFIG, later), Admission::Run);
        assert_eq!(b.state("p", "v1"), (State::Closed { failures: 0 }, 2));
    }

    #[test]
    fn a_trial_that_never_reports_does_not_block_the_next() {
        let b = Breakers::default();
        let t = Instant::now();
        for _ in 0..3 {
            b.failure_at("p", "v1", CONFIG, "x", t);
        }
        let after = t + ms(1_001);
        assert_eq!(b.admit_at("p", "v1", CONFIG, after), Admission::Run);
        assert_eq!(
            b.admit_at("p", "v1", CONFIG, after + ms(1_001)),
            Admission::Run,
            "the first trial's time is up"
        );
    }

    #[test]
    fn each_version_has_its_own_circuit_and_zero_disables() {
        let b = Breakers::default();
        let t = Instant::now();
        for _ in 0..3 {
            b.failure_at("p", "v1", CONFIG, "x", t);
        }
        assert!(matches!(
            b.admit_at("p", "v1", CONFIG, t),
            Admission::Park(_)
        ));
        assert_eq!(b.admit_at("p", "v2", CONFIG, t), Admission::Run);
        assert_eq!(b.state("p", "v2").0, State::Closed { failures: 0 });
        assert_eq!(
            b.failure_at("p", "v1", CONFIG, "late", t),
            Transition::None,
            "a late report of the old version is ignored"
        );
        assert_eq!(b.state("p", "v2").0, State::Closed { failures: 0 });
        let off = BreakerConfig {
            failures: 0,
            ..CONFIG
        };
        for _ in 0..10 {
            assert_eq!(b.failure_at("q", "v1", off, "x", t), Transition::None);
        }
        assert_eq!(b.admit_at("q", "v1", off, t), Admission::Run);
    }
}
