//! What happens next to an event in one plugin, decided from what its
//! last attempt came to, what it has spent so far and the retry policy.
//! No I/O and no clock: the lane does what [`decide`] says.
//!
//! - committed (`done`, `skipped`): finished;
//! - `retry` or a failure (trap, limit): spend an attempt and try again
//!   after an exponential backoff, or dead-letter once the attempts are
//!   spent;
//! - `rejected`: dead-letter at once;
//! - messages the host cannot queue (not an outage): as `retry`, then
//!   dead-letter as `failed`;
//! - an outage (the database or the broker unavailable): wait and try
//!   again without limit and without spending an attempt (P3).

use crate::config::RetryConfig;
use crate::outcome::{Outcome, OutcomeKind};
use std::time::Duration;

/// What the last attempt came to.
#[derive(Debug, Clone, Copy)]
pub enum Attempt<'a> {
    /// Marker, the plugin's SQL and its outbox rows committed.
    Committed,
    /// The plugin's outcome (or its failure) says not to commit.
    Outcome(&'a Outcome),
    /// The database or the broker could not be reached: beginning,
    /// writing the marker, a plugin's statement, queueing, committing.
    Outage,
    /// The plugin's messages could not be queued as they are, and the
    /// database is up.
    Unqueueable {
        /// How many messages.
        messages: usize,
        /// The database's error.
        error: &'a str,
    },
}

/// What an event has spent in one plugin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Attempts spent (outages do not spend any).
    pub attempts: u32,
    /// Outage pauses in a row.
    pub outages: u32,
}

/// What the lane does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Finished.
    Done,
    /// Try again after `wait`.
    Retry {
        /// The backoff.
        wait: Duration,
        /// Why, for the log.
        reason: String,
    },
    /// Wait out an outage, then try again; no attempt spent.
    Pause {
        /// The backoff.
        wait: Duration,
    },
    /// Produce a dead letter.
    DeadLetter {
        /// The `switchyard.outcome` header.
        kind: OutcomeKind,
        /// The `switchyard.error` header.
        reason: String,
    },
}

/// The exponential backoff before try `n` (1-based), capped by the policy.
pub fn backoff(policy: &RetryConfig, n: u32) -> Duration {
    let factor = 1u64 << n.saturating_sub(1).min(20);
    Duration::from_millis(
        policy
            .initial_backoff_ms
            .saturating_mul(factor)
            .min(policy.max_backoff_ms),
    )
}

/// One more outage in a row: how long to wait, and the new tally (no
/// attempt spent).
pub fn outage(before: Tally, policy: &RetryConfig) -> (Duration, Tally) {
    let tally = Tally {
        outages: before.outages + 1,
        ..before
    };
    (backoff(policy, tally.outages), tally)
}

/// What to do after `attempt`, given what was spent before it; returns the
/// new tally with the decision.
pub fn decide(attempt: Attempt<'_>, before: Tally, policy: &RetryConfig) -> (Next, Tally) {
    let mut tally = before;
    let next = match attempt {
        Attempt::Committed => Next::Done,
        Attempt::Outage => {
            let (wait, after) = outage(before, policy);
            tally = after;
            Next::Pause { wait }
        }
        Attempt::Unqueueable { messages, error } => {
            tally.attempts += 1;
            let reason =
                format!("the host could not queue the plugin's {messages} message(s): {error}");
            if tally.attempts >= policy.max_attempts {
                Next::DeadLetter {
                    kind: OutcomeKind::Failed,
                    reason: format!("failed after {} attempts: {reason}", tally.attempts),
                }
            } else {
                Next::Retry {
                    wait: backoff(policy, tally.attempts),
                    reason,
                }
            }
        }
        Attempt::Outcome(outcome) => {
            let kind = outcome.kind();
            let reason = outcome.reason().unwrap_or_default();
            match outcome {
                Outcome::Done | Outcome::Skipped(_) => Next::Done,
                Outcome::Rejected(_) => {
                    tally.attempts += 1;
                    Next::DeadLetter { kind, reason }
                }
                Outcome::Retry(_) | Outcome::Failed(_) => {
                    tally.attempts += 1;
                    if tally.attempts >= policy.max_attempts {
                        Next::DeadLetter {
                            kind,
                            reason: format!("{kind} after {} attempts: {reason}", tally.attempts),
                        }
                    } else {
                        Next::Retry {
                            wait: backoff(policy, tally.attempts),
                            reason,
                        }
                    }
                }
            }
        }
    };
    (next, tally)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Failure;

    fn policy(max_attempts: u32) -> RetryConfig {
        RetryConfig {
            max_attempts,
            initial_backoff_ms: 100,
            max_backoff_ms: 1_000,
        }
    }

    #[test]
    fn retries_back_off_then_dead_letter_once_the_attempts_are_spent() {
        let p = policy(3);
        let retry = Outcome::Retry("db busy".into());
        let (next, t) = decide(Attempt::Outcome(&retry), Tally::default(), &p);
        assert_eq!(
            next,
            Next::Retry {
                wait: Duration::from_millis(100),
                reason: "db busy".into()
            }
        );
        let (next, t) = decide(Attempt::Outcome(&retry), t, &p);
        assert!(matches!(next, Next::Retry { wait, .. } if wait == Duration::from_millis(200)));
        let (next, t) = decide(Attempt::Outcome(&retry), t, &p);
        assert_eq!(
            next,
            Next::DeadLetter {
                kind: OutcomeKind::Retry,
                reason: "retry after 3 attempts: db busy".into()
            }
        );
        assert_eq!(t.attempts, 3);
    }

    #[test]
    fn failures_count_like_retries_and_keep_their_kind() {
        let failed = Outcome::Failed(Failure::Trap("unreachable".into()));
        let (next, _) = decide(
            Attempt::Outcome(&failed),
            Tally {
                attempts: 4,
                outages: 0,
            },
            &policy(5),
        );
        assert_eq!(
            next,
            Next::DeadLetter {
                kind: OutcomeKind::Failed,
                reason: "failed after 5 attempts: trap: unreachable".into()
            }
        );
    }

    #[test]
    fn a_rejection_dead_letters_at_once_with_its_own_reason() {
        let rejected = Outcome::Rejected("no user_id".into());
        let (next, t) = decide(Attempt::Outcome(&rejected), Tally::default(), &policy(5));
        assert_eq!(
            next,
            Next::DeadLetter {
                kind: OutcomeKind::Rejected,
                reason: "no user_id".into()
            }
        );
        assert_eq!(t.attempts, 1);
    }

    #[test]
    fn outages_never_spend_attempts_and_their_backoff_is_capped() {
        let p = policy(2);
        let mut t = Tally {
            attempts: 1,
            outages: 0,
        };
        let mut waits = Vec::new();
        for _ in 0..30 {
            let (next, after) = decide(Attempt::Outage, t, &p);
            let Next::Pause { wait } = next else {
                panic!("an outage must pause, got {next:?}");
            };
            waits.push(wait.as_millis());
            t = after;
        }
        assert_eq!(t.attempts, 1, "an outage spent an attempt");
        assert_eq!(&waits[..5], &[100, 200, 400, 800, 1_000]);
        assert!(waits.iter().all(|w| *w <= 1_000));
    }

    #[test]
    fn unqueueable_messages_spend_attempts_then_dead_letter_as_failed() {
        let p = policy(2);
        let bad = Attempt::Unqueueable {
            messages: 2,
            error: "value too long",
        };
        let (next, t) = decide(bad, Tally::default(), &p);
        assert!(matches!(next, Next::Retry { .. }), "{next:?}");
        let (next, _) = decide(bad, t, &p);
        assert_eq!(
            next,
            Next::DeadLetter {
                kind: OutcomeKind::Failed,
                reason: "failed after 2 attempts: the host could not queue the plugin's 2 message(s): value too long".into()
            }
        );
    }

    #[test]
    fn committed_and_committing_outcomes_are_done() {
        let p = policy(1);
        assert_eq!(
            decide(Attempt::Committed, Tally::default(), &p).0,
            Next::Done
        );
        let skipped = Outcome::Skipped("not ours".into());
        assert_eq!(
            decide(Attempt::Outcome(&skipped), Tally::default(), &p).0,
            Next::Done
        );
    }

    #[test]
    fn backoff_does_not_overflow() {
        let p = RetryConfig {
            max_attempts: 5,
            initial_backoff_ms: u64::MAX / 2,
            max_backoff_ms: u64::MAX,
        };
        assert_eq!(backoff(&p, 60), Duration::from_millis(u64::MAX));
    }
}
