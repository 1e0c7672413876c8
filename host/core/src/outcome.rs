//! What became of an event in one plugin: the plugin's own four outcomes
//! plus a failure of the call itself, and their kinds as the host names
//! them in logs, metrics, reports and dead-letter headers.

/// Why a call into a plugin failed (the instance is discarded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The call ran past its deadline.
    Deadline {
        /// The deadline in milliseconds.
        deadline_ms: u64,
    },
    /// Linear memory growth past the cap.
    Memory {
        /// The cap in bytes.
        limit_bytes: usize,
    },
    /// Any other trap (panic, unreachable, stack overflow, ...).
    Trap(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Deadline { deadline_ms } => write!(
                f,
                "deadline exceeded: the call ran longer than {deadline_ms} ms and was interrupted"
            ),
            Failure::Memory { limit_bytes } => write!(
                f,
                "memory limit exceeded: the plugin tried to grow past {limit_bytes} bytes"
            ),
            Failure::Trap(reason) => write!(f, "trap: {reason}"),
        }
    }
}

/// What became of an event in one plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Handled: commit.
    Done,
    /// Nothing to do: commit, never retried nor dead-lettered.
    Skipped(String),
    /// Transient: roll back and retry with backoff.
    Retry(String),
    /// Invalid: roll back and dead-letter.
    Rejected(String),
    /// The plugin trapped or hit a limit: roll back; retried a bounded
    /// number of times, then dead-lettered.
    Failed(Failure),
}

impl Outcome {
    /// Which of the five outcomes this is.
    pub fn kind(&self) -> OutcomeKind {
        match self {
            Outcome::Done => OutcomeKind::Done,
            Outcome::Skipped(_) => OutcomeKind::Skipped,
            Outcome::Retry(_) => OutcomeKind::Retry,
            Outcome::Rejected(_) => OutcomeKind::Rejected,
            Outcome::Failed(_) => OutcomeKind::Failed,
        }
    }

    /// The reason, if the outcome has one.
    pub fn reason(&self) -> Option<String> {
        match self {
            Outcome::Done => None,
            Outcome::Skipped(r) | Outcome::Retry(r) | Outcome::Rejected(r) => Some(r.clone()),
            Outcome::Failed(f) => Some(f.to_string()),
        }
    }

    /// Whether the event's transaction should commit.
    pub fn commits(&self) -> bool {
        matches!(self, Outcome::Done | Outcome::Skipped(_))
    }
}

/// Longest outcome reason kept; longer ones are cut (a reason goes into
/// logs and dead-letter headers, and must not make those unsendable).
pub const MAX_REASON_BYTES: usize = 2048;

/// `reason` cut to [`MAX_REASON_BYTES`] on a character boundary.
pub fn cap_reason(mut reason: String) -> String {
    if reason.len() > MAX_REASON_BYTES {
        let mut cut = MAX_REASON_BYTES;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push_str(" [cut]");
    }
    reason
}

/// The kind of an [`Outcome`], without its reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutcomeKind {
    /// `done`
    Done,
    /// `skipped`
    Skipped,
    /// `retry`
    Retry,
    /// `rejected`
    Rejected,
    /// `failed`: a trap or a limit.
    Failed,
}

impl OutcomeKind {
    /// The name in logs, metrics, `plugin test` reports and the
    /// `switchyard.outcome` dead-letter header.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Done => "done",
            OutcomeKind::Skipped => "skipped",
            OutcomeKind::Retry => "retry",
            OutcomeKind::Rejected => "rejected",
            OutcomeKind::Failed => "failed",
        }
    }
}

impl std::fmt::Display for OutcomeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for OutcomeKind {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for OutcomeKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl serde::Serialize for OutcomeKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_what_commits() {
        let all = [
            (Outcome::Done, "done", true),
            (Outcome::Skipped("s".into()), "skipped", true),
            (Outcome::Retry("r".into()), "retry", false),
            (Outcome::Rejected("x".into()), "rejected", false),
            (
                Outcome::Failed(Failure::Deadline { deadline_ms: 5 }),
                "failed",
                false,
            ),
        ];
        for (outcome, kind, commits) in all {
            assert_eq!(outcome.kind(), kind);
            assert_eq!(outcome.kind().to_string(), kind);
            assert_eq!(outcome.commits(), commits, "{outcome:?}");
        }
    }

    #[test]
    fn long_reasons_are_cut_on_a_char_boundary() {
        let cut = cap_reason("é".repeat(MAX_REASON_BYTES));
        assert!(cut.ends_with(" [cut]"));
        assert!(cut.len() <= MAX_REASON_BYTES + " [cut]".len());
        assert_eq!(cap_reason("short".into()), "short");
    }
}
