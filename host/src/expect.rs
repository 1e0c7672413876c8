//! Golden expectations for `plugin test --expect FILE`: what a plugin did
//! with a set of events — each event's outcome, the rows it changed and
//! the messages it published — stored as JSON beside the events, compared
//! on every run with a readable line diff, and rewritten by `--update`.
//!
//! What a run does that differs from run to run is masked before it is
//! stored or compared, so that an expectation holds tomorrow and on both
//! backends:
//! - instants taken from the clock during the run (a `created_at` from
//!   `db.now()`), within five seconds of it: `"<now>"`, in RFC 3339 text or
//!   as epoch seconds or milliseconds — unless the events carried that
//!   very value (a timestamp recorded today is the same value tomorrow);
//! - UUIDs the plugin made up (not in any event it was given):
//!   `"<uuid-1>"`, `"<uuid-2>"`, numbered in order of appearance, so that
//!   the same id in a row and in a message still reads as the same;
//! - SQLite's `0`/`1` where PostgreSQL says `false`/`true` is not masked:
//!   the report already reads booleans by the column's declared type.
//!
//! Timings, the plugin's hash and the SQL text are not part of an
//! expectation: they change with every build without changing what the
//! plugin does.

use anyhow::Context as _;
use serde_json::{Value as Json, json};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// What an expectation compares, from a `plugin test` report (its JSON):
/// per event, the topic and key, the outcome, rows changed, messages
/// published and publishes refused; volatile values masked.
pub fn effects(report: &Json, inputs: &[String], run: RunSpan) -> Json {
    let events: Vec<Json> = report["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            json!({
                "event": {"topic": e["event"]["topic"], "key": e["event"]["key"]},
                "outcome": e["outcome"],
                "changes": e["changes"],
                "published": e["published"],
                "refused_publishes": e["refused_publishes"],
            })
        })
        .collect();
    let mut effects = json!({ "events": events });
    let mut masker = Masker::new(inputs, run);
    masker.mask(&mut effects);
    effects
}

/// When the run happened: instants the plugin takes from the clock fall
/// between these.
#[derive(Debug, Clone, Copy)]
pub struct RunSpan {
    /// Before the first event.
    pub started: chrono::DateTime<chrono::Utc>,
    /// After the last.
    pub finished: chrono::DateTime<chrono::Utc>,
}

impl RunSpan {
    /// Slack either side, for clocks read a little before or after.
    const SLACK_SECS: i64 = 5;

    fn holds(&self, at: chrono::DateTime<chrono::Utc>) -> bool {
        let slack = chrono::Duration::seconds(Self::SLACK_SECS);
        at >= self.started - slack && at <= self.finished + slack
    }

    fn holds_epoch(&self, i: i64) -> bool {
        let slack = Self::SLACK_SECS;
        let (s0, s1) = (self.started.timestamp(), self.finished.timestamp());
        let (m0, m1) = (
            self.started.timestamp_millis(),
            self.finished.timestamp_millis(),
        );
        (s0 - slack..=s1 + slack).contains(&i)
            || (m0 - slack * 1000..=m1 + slack * 1000).contains(&i)
    }
}

/// Masks volatile values in place.
struct Masker {
    /// UUIDs, texts and integers the events carried: never masked (an
    /// instant recorded today is the same value tomorrow).
    known_uuids: HashSet<String>,
    known_texts: HashSet<String>,
    known_ints: HashSet<i64>,
    uuids: HashMap<String, usize>,
    run: RunSpan,
}

/// Every string and integer in a JSON value.
fn leaves(v: &Json, texts: &mut HashSet<String>, ints: &mut HashSet<i64>) {
    match v {
        Json::String(s) => {
            texts.insert(s.clone());
        }
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                ints.insert(i);
            }
        }
        Json::Array(a) => a.iter().for_each(|x| leaves(x, texts, ints)),
        Json::Object(o) => o.values().for_each(|x| leaves(x, texts, ints)),
        _ => {}
    }
}

impl Masker {
    fn new(inputs: &[String], run: RunSpan) -> Self {
        let mut known_uuids = HashSet::new();
        let mut known_texts = HashSet::new();
        let mut known_ints = HashSet::new();
        for text in inputs {
            for word in text.split(|c: char| !(c.is_ascii_hexdigit() || c == '-')) {
                if is_uuid(word) {
                    known_uuids.insert(word.to_ascii_lowercase());
                }
            }
            for part in std::iter::once(text.as_str()).chain(text.split(' ')) {
                if let Ok(v) = serde_json::from_str::<Json>(part) {
                    leaves(&v, &mut known_texts, &mut known_ints);
                }
                known_texts.insert(part.to_string());
            }
        }
        Self {
            known_uuids,
            known_texts,
            known_ints,
            uuids: HashMap::new(),
            run,
        }
    }

    fn mask(&mut self, v: &mut Json) {
        match v {
            Json::String(s) => {
                if let Some(m) = self.masked_text(s) {
                    *s = m;
                }
            }
            Json::Number(n)
                if n.as_i64()
                    .is_some_and(|i| !self.known_ints.contains(&i) && self.run.holds_epoch(i)) =>
            {
                *v = json!("<now>");
            }
            Json::Array(a) => a.iter_mut().for_each(|x| self.mask(x)),
            Json::Object(o) => o.values_mut().for_each(|x| self.mask(x)),
            _ => {}
        }
    }

    fn masked_text(&mut self, s: &str) -> Option<String> {
        if self.known_texts.contains(s) {
            return None;
        }
        if is_uuid(s) {
            let lower = s.to_ascii_lowercase();
            if self.known_uuids.contains(&lower) {
                return None;
            }
            let next = self.uuids.len() + 1;
            let n = *self.uuids.entry(lower).or_insert(next);
            return Some(format!("<uuid-{n}>"));
        }
        let at = parse_instant(s)?;
        self.run.holds(at).then(|| "<now>".to_string())
    }
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// An instant written as RFC 3339 or as SQL's `YYYY-MM-DD HH:MM:SS[.f]`
/// (read as UTC).
fn parse_instant(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    if s.len() < 19 || !s.as_bytes()[0].is_ascii_digit() {
        return None;
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&chrono::Utc));
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, format) {
            return Some(t.and_utc());
        }
    }
    None
}

/// The text an expectation file holds: pretty JSON and a final newline.
pub fn render(effects: &Json) -> String {
    let mut text = serde_json::to_string_pretty(effects).unwrap_or_else(|_| "{}".into());
    text.push('\n');
    text
}

/// How a run compares with a stored expectation.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Same effects.
    Matches,
    /// Different: a line diff, expected (`-`) against this run (`+`).
    Differs(String),
}

/// Compare `effects` with the expectation stored in `file`.
pub fn check(file: &Path, effects: &Json) -> anyhow::Result<Verdict> {
    let stored = std::fs::read_to_string(file).with_context(|| {
        format!(
            "{}: cannot read the expectation; write it from this run with --update",
            file.display()
        )
    })?;
    let expected: Json = serde_json::from_str(&stored).map_err(|e| {
        anyhow::anyhow!(
            "{}:{}:{}: not JSON ({e}); fix it or write it again with --update",
            file.display(),
            e.line(),
            e.column()
        )
    })?;
    if &expected == effects {
        return Ok(Verdict::Matches);
    }
    Ok(Verdict::Differs(diff_lines(
        &render(&expected),
        &render(effects),
    )))
}

/// Write the expectation (a temporary file, then a rename).
pub fn write(file: &Path, effects: &Json) -> anyhow::Result<()> {
    crate::tail::write_atomically(file, &render(effects))
}

/// A line diff of two texts: `-` lines only in `old`, `+` lines only in
/// `new`, with up to three lines of context around each change and `@@`
/// lines giving where a hunk starts in each.
pub fn diff_lines(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // Longest common subsequence, by suffix lengths.
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    // (tag, line, old line number, new line number)
    let mut ops: Vec<(char, &str, usize, usize)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((' ', a[i], i, j));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            // Removals first, then additions: `-old` above `+new`.
            ops.push(('-', a[i], i, j));
            i += 1;
        } else {
            ops.push(('+', b[j], i, j));
            j += 1;
        }
    }
    const CONTEXT: usize = 3;
    let changed: Vec<usize> = (0..ops.len()).filter(|&k| ops[k].0 != ' ').collect();
    let mut out = String::new();
    let mut k = 0;
    while k < changed.len() {
        let start = changed[k].saturating_sub(CONTEXT);
        let mut end = changed[k];
        while k < changed.len() && changed[k] <= end + 2 * CONTEXT + 1 {
            end = changed[k];
            k += 1;
        }
        let end = (end + CONTEXT).min(ops.len() - 1);
        let (_, _, old_at, new_at) = ops[start];
        out.push_str(&format!(
            "@@ expected line {}, this run line {} @@\n",
            old_at + 1,
            new_at + 1
        ));
        for (tag, line, ..) in &ops[start..=end] {
            out.push(*tag);
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Where the same run differs between two backends, as a line diff of
/// their effects (`-` SQLite, `+` PostgreSQL); `None` when they agree.
pub fn backends_differ(sqlite: &Json, postgres: &Json) -> Option<String> {
    (sqlite != postgres).then(|| diff_lines(&render(sqlite), &render(postgres)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report_of(events: Vec<Json>) -> Json {
        json!({"events": events})
    }

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z")
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or_default()
    }

    /// A run of two seconds, ending at now().
    fn span() -> RunSpan {
        RunSpan {
            started: now() - chrono::Duration::seconds(2),
            finished: now(),
        }
    }

    fn event(changes: Json, published: Json) -> Json {
        json!({
            "event": {"topic": "user.created", "key": "u1", "partition": 0, "offset": 0},
            "outcome": {"kind": "done", "reason": null},
            "elapsed_ms": 1.25,
            "statements": [{"sql": "INSERT ..."}],
            "changes": changes,
            "published": published,
            "refused_publishes": [],
        })
    }

    #[test]
    fn volatile_values_are_masked_and_ids_from_the_events_kept() {
        let given = "0b6f6f3e-8f43-4c4e-9d5a-0c8f1f0e2a11";
        let made = "7d3c1a52-1111-4a2b-8c3d-9e8f7a6b5c4d";
        let report = report_of(vec![event(
            json!({"users": {"added": [{"id": made, "customer": given,
                "created_at": "2026-11-30 11:59:58.123", "birth": "1990-01-01",
                "seen": "2026-11-30T12:00:01.5+00:00", "old": "2001-02-03T04:05:06Z",
                "hour_ago": "2026-11-30T11:00:00Z", "sent": "2026-11-30T11:59:59Z"}],
                "removed": []}}),
            json!([{"topic": "t", "key": made, "value": {"at": now().timestamp_millis(), "size": 5368709120_i64}}]),
        )]);
        let inputs = vec![format!(
            "{{\"customerId\": \"{}\", \"sentAt\": \"2026-11-30T11:59:59Z\"}}",
            given.to_uppercase()
        )];
        let e = effects(&report, &inputs, span());
        let row = &e["events"][0]["changes"]["users"]["added"][0];
        assert_eq!(row["id"], "<uuid-1>");
        assert_eq!(row["customer"], given, "an id the event carried stays");
        assert_eq!(row["created_at"], "<now>");
        assert_eq!(row["seen"], "<now>");
        assert_eq!(row["birth"], "1990-01-01");
        assert_eq!(row["old"], "2001-02-03T04:05:06Z");
        assert_eq!(
            row["hour_ago"], "2026-11-30T11:00:00Z",
            "not during the run"
        );
        assert_eq!(row["sent"], "2026-11-30T11:59:59Z", "the event carried it");
        let message = &e["events"][0]["published"][0];
        assert_eq!(message["key"], "<uuid-1>", "the same id reads the same");
        assert_eq!(message["value"]["at"], "<now>");
        assert_eq!(message["value"]["size"], 5368709120_i64);
        assert!(e["events"][0].get("elapsed_ms").is_none());
        assert!(e["events"][0].get("statements").is_none());
    }

    #[test]
    fn a_stored_expectation_matches_or_shows_a_diff() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("fixtures/x.expect.json");
        let expected = effects(&report_of(vec![event(json!({}), json!([]))]), &[], span());
        write(&file, &expected)?;
        assert_eq!(check(&file, &expected)?, Verdict::Matches);
        let mut other = expected.clone();
        other["events"][0]["outcome"] = json!({"kind": "rejected", "reason": "blank userId"});
        match check(&file, &other)? {
            Verdict::Differs(d) => {
                assert!(d.contains("-        \"kind\": \"done\","), "{d}");
                assert!(d.contains("+        \"kind\": \"rejected\","), "{d}");
                assert!(d.starts_with("@@ expected line"), "{d}");
            }
            Verdict::Matches => panic!("a different outcome must not match"),
        }
        let missing = check(&dir.path().join("none.json"), &expected)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(missing.contains("--update"), "{missing}");
        std::fs::write(&file, "{\n  nope")?;
        let bad = check(&file, &expected)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(bad.contains("x.expect.json:2:"), "{bad}");
        Ok(())
    }

    #[test]
    fn the_diff_keeps_context_and_splits_far_changes() {
        let old: String = (1..=20).map(|i| format!("line {i}\n")).collect();
        let new = old
            .replace("line 2\n", "line two\n")
            .replace("line 18\n", "");
        let d = diff_lines(&old, &new);
        assert_eq!(d.matches("@@").count(), 4, "two hunks: {d}");
        assert!(d.contains("-line 2\n+line two\n"), "{d}");
        assert!(d.contains("-line 18\n"), "{d}");
        assert!(!d.contains("line 10"), "far from both changes: {d}");
        assert_eq!(diff_lines(&old, &old), "");
    }
}
