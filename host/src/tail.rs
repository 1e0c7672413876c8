//! `switchyard consume` and `switchyard record`: read a topic as it is
//! written, for a person (`consume`) or into an event file (`record`).
//!
//! Both read without joining a consumer group: they assign themselves
//! every partition of the topic, from the end each partition had when the
//! command started (what arrives from now on) or from the beginning, and
//! commit nothing, so no router's group notices them. A topic that does
//! not exist yet is waited for, once said on standard error: a person
//! starts `consume` before the plugin publishes. A topic that appears
//! while waiting is read from its beginning, since all of it came after
//! the command started.
//!
//! `consume` prints each record: a line with topic, partition, offset and
//! time, the key, the headers one per line, and the value — JSON
//! pretty-printed (re-indented, so numbers and escapes show exactly as
//! sent), text as it is, bytes that are not UTF-8 as `\xNN`. `--json`
//! prints one JSON object per line for `jq`.
//!
//! `record` saves records as an event file, the format `switchyard plugin
//! test --event` and `switchyard produce --event` read:
//!
//! ```json
//! [
//!   {
//!     "topic": "user.registered.v1",
//!     "key": "8f14e45f",
//!     "headers": {"event-id": "2c5d8e1f"},
//!     "value": {"event": "user_registered"}
//!   }
//! ]
//! ```
//!
//! with `"value_raw": "<text>"` for a value that is not JSON. Partition
//! and offset are left out, so a fixture stays the same whenever it is
//! recorded again. What the format cannot hold — a key, value or header
//! that is not UTF-8 — is skipped and said; what it holds differently —
//! JSON spacing, a header name given twice — is said too.

use crate::event::Event;
use crate::kafka::ReaderContext;
use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Map, Value as Json};
use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The brokers when neither `--brokers` nor a config names them: those
/// of `switchyard dev` and of the shipped config.
pub const DEFAULT_BROKERS: &str = "127.0.0.1:9092";

/// The config `consume` and `record` read the brokers from when it exists
/// and `--config` does not name another.
pub const DEFAULT_CONFIG: &str = "config/switchyard.toml";

/// How long one poll of the reader waits: the longest a Ctrl-C or a
/// deadline goes unnoticed.
const POLL: Duration = Duration::from_millis(100);

/// How long a metadata or offset request may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a topic that does not exist yet is looked for again.
const TOPIC_RECHECK: Duration = Duration::from_millis(500);

/// Where reading starts in each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StartAt {
    /// The first record still in the partition.
    #[value(alias = "beginning")]
    Start,
    /// The end each partition had when the command started: only what
    /// arrives from then on.
    End,
}

/// What to read.
#[derive(Debug, Clone)]
pub struct TailOptions {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// The topic.
    pub topic: String,
    /// Where to start in each partition.
    pub start: StartAt,
    /// Wait for a topic that does not exist yet (saying so once), rather
    /// than fail.
    pub wait_for_topic: bool,
}

/// The brokers to read from: `--brokers` (or `SWITCHYARD_BROKERS`) when
/// given; else `kafka.brokers` of the config, which is `--config` when
/// given (it must exist) or [`DEFAULT_CONFIG`] when it exists; else
/// [`DEFAULT_BROKERS`].
pub fn resolve_brokers(flag: Option<&str>, config: Option<&Path>) -> anyhow::Result<String> {
    if let Some(b) = flag.filter(|b| !b.trim().is_empty()) {
        return Ok(b.to_string());
    }
    let path = match config {
        Some(p) => p.to_path_buf(),
        None if Path::new(DEFAULT_CONFIG).is_file() => PathBuf::from(DEFAULT_CONFIG),
        None => return Ok(DEFAULT_BROKERS.into()),
    };
    let loaded = crate::config::Loaded::from_file(&path).map_err(|e| {
        anyhow::anyhow!(
            "{e} (the brokers are read from this config; fix it, or give --brokers HOST:PORT)"
        )
    })?;
    Ok(loaded.config.kafka.brokers)
}

/// Set when the person asks the command to stop (Ctrl-C).
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    /// Whether a stop was asked for.
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Ask for a stop.
    pub fn request(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Run the blocking `work` on a thread of its own while Ctrl-C (SIGINT)
/// asks it to stop through the [`Stop`] it is given, instead of killing
/// the process: the reader finishes its poll and the command says where
/// it stopped.
pub async fn until_ctrl_c<T: Send + 'static>(
    work: impl FnOnce(Stop) -> T + Send + 'static,
) -> anyhow::Result<T> {
    let stop = Stop::default();
    // The handler is in place before the work starts (a stream registers
    // it when created, `ctrl_c()` only when first polled): a SIGINT sent
    // as soon as the reader says it is reading is not lost.
    #[cfg(unix)]
    let interrupted = {
        let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .context("listening for Ctrl-C (SIGINT)")?;
        async move { sigint.recv().await.is_some() }
    };
    #[cfg(not(unix))]
    let interrupted = async { tokio::signal::ctrl_c().await.is_ok() };
    let watcher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if interrupted.await {
                stop.request();
            }
        })
    };
    let result = tokio::task::spawn_blocking(move || work(stop)).await;
    watcher.abort();
    result.context("the reading thread failed")
}

/// What one poll of a [`Tail`] brought.
#[derive(Debug)]
pub enum Step {
    /// A record.
    Record(Event),
    /// Every partition has been read to its end once: what follows is
    /// new.
    CaughtUp,
    /// The client reported a problem it may get over (the reader goes on).
    Warning(String),
    /// Nothing within the wait.
    Idle,
}

/// A reader of every partition of one topic, outside any consumer group.
pub struct Tail {
    consumer: BaseConsumer<ReaderContext>,
    topic: String,
    partitions: usize,
    start: StartAt,
    at_end: HashSet<i32>,
    caught_up: bool,
}

impl Tail {
    /// Find the topic — waiting for it when asked, while `keep_going`
    /// says so, with one `notice` that it does not exist yet — and assign
    /// every partition at the start position. `None` when `keep_going`
    /// turned false before the topic appeared.
    pub fn open(
        options: &TailOptions,
        keep_going: &dyn Fn() -> bool,
        notice: &mut dyn FnMut(&str),
    ) -> anyhow::Result<Option<Tail>> {
        let consumer: BaseConsumer<ReaderContext> =
            crate::kafka::reader_config(&options.brokers, "tail")
                .create_with_context(ReaderContext)
                .context("creating the topic reader")?;
        let topic = options.topic.as_str();
        let mut waited = false;
        let partitions = loop {
            if let Some(p) = partitions_of(&consumer, &options.brokers, topic)? {
                break p;
            }
            let there = topic_names(&consumer);
            if !options.wait_for_topic {
                anyhow::bail!(
                    "topic {topic} does not exist on {}; {there} (without --no-wait, the command waits for it to appear)",
                    options.brokers
                );
            }
            if !waited {
                notice(&format!(
                    "topic {topic} does not exist on {} yet: waiting for it to appear (Ctrl-C to stop); {there}",
                    options.brokers
                ));
                waited = true;
            }
            let until = Instant::now() + TOPIC_RECHECK;
            while Instant::now() < until {
                if !keep_going() {
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        // All of a topic that appeared while we waited came after the
        // command started: read it from its beginning.
        let start = if waited {
            notice(&format!(
                "topic {topic} appeared: reading it from its beginning"
            ));
            StartAt::Start
        } else {
            options.start
        };
        let mut assignment = TopicPartitionList::new();
        for &p in &partitions {
            let offset = match start {
                StartAt::Start => Offset::Beginning,
                // The end now, asked explicitly: a record produced after
                // this line is read however late the first fetch goes out.
                StartAt::End => {
                    let (_, high) = consumer
                        .fetch_watermarks(topic, p, METADATA_TIMEOUT)
                        .with_context(|| {
                            format!(
                                "reading the end of {topic} partition {p} from {}",
                                options.brokers
                            )
                        })?;
                    Offset::Offset(high)
                }
            };
            assignment
                .add_partition_offset(topic, p, offset)
                .with_context(|| format!("assigning {topic} partition {p}"))?;
        }
        consumer
            .assign(&assignment)
            .with_context(|| format!("assigning the partitions of {topic}"))?;
        Ok(Some(Tail {
            consumer,
            topic: topic.to_string(),
            partitions: partitions.len(),
            start,
            at_end: HashSet::new(),
            caught_up: false,
        }))
    }

    /// The number of partitions read.
    pub fn partitions(&self) -> usize {
        self.partitions
    }

    /// Where reading started.
    pub fn start(&self) -> StartAt {
        self.start
    }

    /// Wait up to `wait` for the next record.
    pub fn poll(&mut self, wait: Duration) -> anyhow::Result<Step> {
        match self.consumer.poll(wait) {
            None => Ok(Step::Idle),
            Some(Ok(m)) => Ok(Step::Record(crate::kafka::to_event(&m))),
            Some(Err(KafkaError::PartitionEOF(p))) => {
                self.at_end.insert(p);
                if !self.caught_up && self.at_end.len() >= self.partitions {
                    self.caught_up = true;
                    return Ok(Step::CaughtUp);
                }
                Ok(Step::Idle)
            }
            Some(Err(e @ KafkaError::MessageConsumptionFatal(_))) => {
                Err(e).with_context(|| format!("reading {}", self.topic))
            }
            Some(Err(e)) => Ok(Step::Warning(format!(
                "reading {}: {e} (still reading)",
                self.topic
            ))),
        }
    }
}

/// The partitions of `topic`, `None` when it does not exist (or is not
/// ready: no partitions, no leader yet).
fn partitions_of(
    consumer: &BaseConsumer<ReaderContext>,
    brokers: &str,
    topic: &str,
) -> anyhow::Result<Option<Vec<i32>>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .with_context(|| {
            format!(
                "cannot read the topics of {brokers}: is the broker running, and is that its address? (`switchyard dev` prints its broker's; give --brokers HOST:PORT)"
            )
        })?;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    if t.error().is_some() || t.partitions().is_empty() {
        return Ok(None);
    }
    Ok(Some(t.partitions().iter().map(|p| p.id()).collect()))
}

/// "topics there: a, b, c" (internal ones left out), for a person who
/// may have mistyped the name.
fn topic_names(consumer: &BaseConsumer<ReaderContext>) -> String {
    let Ok(metadata) = consumer.fetch_metadata(None, METADATA_TIMEOUT) else {
        return "its topic list could not be read".into();
    };
    let mut names: Vec<&str> = metadata
        .topics()
        .iter()
        .map(|t| t.name())
        .filter(|n| !n.starts_with("__"))
        .collect();
    names.sort_unstable();
    const SHOWN: usize = 12;
    match names.len() {
        0 => "it has no topics".into(),
        n if n <= SHOWN => format!("topics there: {}", names.join(", ")),
        n => format!(
            "topics there: {} and {} more",
            names[..SHOWN].join(", "),
            n - SHOWN
        ),
    }
}

// ---------------------------------------------------------------------
// consume

/// What `switchyard consume` does.
#[derive(Debug, Clone)]
pub struct ConsumeOptions {
    /// What to read.
    pub tail: TailOptions,
    /// Stop after this many records; `None` follows until Ctrl-C.
    pub count: Option<u64>,
    /// One JSON object per line instead of the readable form.
    pub json: bool,
}

/// `switchyard consume`: print records as they arrive until `--count` or
/// Ctrl-C; progress and notices on standard error.
pub async fn consume_command(options: ConsumeOptions) -> anyhow::Result<()> {
    let (shown, stopped) = until_ctrl_c(move |stop| {
        let mut out = std::io::stdout().lock();
        let shown = consume(&options, &mut out, &|| !stop.requested(), &mut |line| {
            eprintln!("{line}")
        });
        (shown, stop.requested())
    })
    .await?;
    let shown = shown?;
    if stopped {
        eprintln!("stopped after {shown} record(s)");
    }
    Ok(())
}

/// Print the records of `options.tail` to `out` until `options.count`,
/// until `keep_going` turns false or until `out` is closed (`| head`).
/// Returns how many were printed.
pub fn consume(
    options: &ConsumeOptions,
    out: &mut dyn std::io::Write,
    keep_going: &dyn Fn() -> bool,
    notice: &mut dyn FnMut(&str),
) -> anyhow::Result<u64> {
    let Some(mut tail) = Tail::open(&options.tail, keep_going, notice)? else {
        return Ok(0);
    };
    notice(&following(&options.tail, &tail, options.count));
    let mut shown = 0u64;
    while options.count.is_none_or(|n| shown < n) && keep_going() {
        match tail.poll(POLL)? {
            Step::Record(event) => {
                let text = if options.json {
                    json_line(&event)
                } else {
                    render_text(&event)
                };
                match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                    Ok(()) => shown += 1,
                    // The reader of the pipe has gone (`| head`): done.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(shown),
                    Err(e) => return Err(e).context("writing to standard output"),
                }
            }
            Step::CaughtUp if tail.start() == StartAt::Start => notice(&format!(
                "caught up: read {} to the end of its {} partition(s) ({shown} record(s)); waiting for new ones",
                options.tail.topic,
                tail.partitions()
            )),
            Step::Warning(w) => notice(&w),
            Step::CaughtUp | Step::Idle => {}
        }
    }
    Ok(shown)
}

/// The line that says reading has begun, and from where.
fn following(options: &TailOptions, tail: &Tail, count: Option<u64>) -> String {
    let from = match tail.start() {
        StartAt::Start => "from the beginning",
        StartAt::End => "from the end (new records only)",
    };
    let until = match count {
        Some(n) => format!("until {n} record(s)"),
        None => "Ctrl-C to stop".into(),
    };
    format!(
        "following {} on {}: {} partition(s), {from}; {until}",
        options.topic,
        options.brokers,
        tail.partitions()
    )
}

/// What a value is, for showing it.
#[derive(Debug, PartialEq)]
enum Body<'a> {
    /// No bytes (an empty value or a tombstone).
    Empty,
    /// JSON, with the whitespace between its tokens taken out.
    Json(String),
    /// UTF-8 text that is not JSON.
    Text(&'a str),
    /// Bytes that are not UTF-8.
    Binary,
}

fn body(payload: &[u8]) -> Body<'_> {
    if payload.is_empty() {
        return Body::Empty;
    }
    let Ok(text) = std::str::from_utf8(payload) else {
        return Body::Binary;
    };
    if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
        Body::Json(minify(text))
    } else {
        Body::Text(text)
    }
}

/// Where a scan of JSON text is: inside a string, just after a
/// backslash in one.
#[derive(Default)]
struct StringScan {
    in_string: bool,
    escaped: bool,
}

impl StringScan {
    /// Take the next character; `true` when it belongs to a string (its
    /// quotes included).
    fn take(&mut self, c: char) -> bool {
        if !self.in_string {
            self.in_string = c == '"';
            return self.in_string;
        }
        if self.escaped {
            self.escaped = false;
        } else if c == '\\' {
            self.escaped = true;
        } else if c == '"' {
            self.in_string = false;
        }
        true
    }
}

/// Valid JSON without the whitespace between its tokens; strings, numbers
/// and escapes stay exactly as written.
fn minify(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let mut scan = StringScan::default();
    for c in json.chars() {
        if scan.take(c) || !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
}

/// Minified JSON laid out as `serde_json::to_string_pretty` lays it out
/// (two spaces, `"key": value`), each line after `margin`, but from the
/// text itself: a number shows as it was sent (`1e3`, `1.50`, a 30-digit
/// id), which parsing and printing again would change. Control characters
/// inside strings (possible raw only from U+007F on) are written as
/// `\uXXXX`, so that a value cannot drive the terminal.
fn reindent(min: &str, margin: &str) -> String {
    let mut out = String::with_capacity(min.len() * 2);
    let mut depth = 0usize;
    let mut scan = StringScan::default();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.push_str(margin);
        out.push_str(&"  ".repeat(depth));
    };
    out.push_str(margin);
    let mut chars = min.chars().peekable();
    while let Some(c) = chars.next() {
        if scan.take(c) {
            if c.is_control() {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            } else {
                out.push(c);
            }
            continue;
        }
        match c {
            '{' | '[' => {
                out.push(c);
                if let Some(&close @ ('}' | ']')) = chars.peek() {
                    out.push(close);
                    chars.next();
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c => out.push(c),
        }
    }
    out
}

/// How [`escape`] writes what a terminal should not interpret.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Escape {
    /// One line inside double quotes: `\n`, `\t`, `\"`, `\\` escaped.
    Quoted,
    /// Text over several lines: newlines and tabs stay, nothing else is
    /// escaped but control characters.
    Lines,
}

/// Bytes as text that shows the same on any terminal: UTF-8 as it is
/// except control characters (`\n`, `\r`, `\t`, `\u{1b}`), bytes that are
/// not UTF-8 as `\xNN`.
fn escape(bytes: &[u8], how: Escape) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' | '\t' if how == Escape::Lines => out.push(c),
                '\\' if how == Escape::Quoted => out.push_str("\\\\"),
                '"' if how == Escape::Quoted => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c.is_control() => {
                    let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

fn quoted(bytes: &[u8]) -> String {
    format!("\"{}\"", escape(bytes, Escape::Quoted))
}

/// A record's time for people: `2026-11-22 06:25:47.209 UTC`.
fn when(timestamp_ms: Option<i64>) -> String {
    timestamp_ms
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or("no timestamp".into(), |t| {
            t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string()
        })
}

/// One record for a person: a line with topic, partition, offset and
/// time; the key; the headers, one per line; the value (JSON
/// pretty-printed, text as it is, other bytes escaped); a blank line.
pub fn render_text(e: &Event) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "── {}  partition {}  offset {}  {}",
        escape(e.topic.as_bytes(), Escape::Quoted),
        e.partition,
        e.offset,
        when(e.timestamp_ms)
    );
    let key = e.key.as_deref().map_or("(none)".into(), quoted);
    let _ = writeln!(s, "key      {key}");
    if e.headers.is_empty() {
        s.push_str("headers  (none)\n");
    }
    for (i, (name, value)) in e.headers.iter().enumerate() {
        let label = if i == 0 { "headers" } else { "" };
        let value = value.as_deref().map_or("(null)".into(), quoted);
        let name = escape(name.as_bytes(), Escape::Quoted);
        let _ = writeln!(s, "{label:<8} {name}={value}");
    }
    let size = e.payload.len();
    match body(&e.payload) {
        Body::Empty => s.push_str("value    (empty)\n"),
        Body::Json(min) => {
            let _ = writeln!(s, "value    JSON, {size} bytes");
            s.push_str(&reindent(&min, "  "));
            s.push('\n');
        }
        Body::Text(text) => {
            let _ = writeln!(s, "value    text, {size} bytes");
            for line in escape(text.as_bytes(), Escape::Lines).lines() {
                let _ = writeln!(s, "  {line}");
            }
        }
        Body::Binary => {
            let _ = writeln!(
                s,
                "value    binary (not UTF-8), {size} bytes, escaped:\n  {}",
                quoted(&e.payload)
            );
        }
    }
    s.push('\n');
    s
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One record as one line of JSON, for `jq`: `topic`, `partition`,
/// `offset`, `timestamp` (RFC 3339, or null), `timestamp_ms`, `key` (text
/// or null; `key_hex` too when it is not UTF-8), `headers` (name to text;
/// null for a null header; `{"hex": ...}` for one that is not UTF-8; an
/// array of those for a name given more than once), and the value as
/// `value` (JSON, exactly as sent), `value_raw` (text) or `value_hex`
/// (bytes that are not UTF-8).
pub fn json_line(e: &Event) -> String {
    let text_or_hex = |b: &[u8]| match std::str::from_utf8(b) {
        Ok(s) => Json::String(s.into()),
        Err(_) => serde_json::json!({ "hex": hex(b) }),
    };
    let mut o = Map::new();
    o.insert("topic".into(), e.topic.clone().into());
    o.insert("partition".into(), e.partition.into());
    o.insert("offset".into(), e.offset.into());
    let at = e
        .timestamp_ms
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    o.insert("timestamp".into(), at.into());
    o.insert("timestamp_ms".into(), e.timestamp_ms.into());
    let key = e.key.as_deref();
    o.insert(
        "key".into(),
        key.and_then(|k| std::str::from_utf8(k).ok()).into(),
    );
    if let Some(k) = key.filter(|k| std::str::from_utf8(k).is_err()) {
        o.insert("key_hex".into(), hex(k).into());
    }
    let mut headers = Map::new();
    for (name, value) in &e.headers {
        let value = value.as_deref().map_or(Json::Null, text_or_hex);
        if e.headers.iter().filter(|(n, _)| n == name).count() > 1 {
            if let Json::Array(values) = headers
                .entry(name.clone())
                .or_insert_with(|| Json::Array(Vec::new()))
            {
                values.push(value);
            }
        } else {
            headers.insert(name.clone(), value);
        }
    }
    o.insert("headers".into(), Json::Object(headers));
    let mut spliced = None;
    match body(&e.payload) {
        Body::Empty => {
            o.insert("value_raw".into(), "".into());
        }
        Body::Text(t) => {
            o.insert("value_raw".into(), t.into());
        }
        Body::Binary => {
            o.insert("value_hex".into(), hex(&e.payload).into());
        }
        // Spliced in as sent (minified), not parsed and printed again.
        Body::Json(min) => spliced = Some(min),
    }
    let mut line = Json::Object(o).to_string();
    if let Some(min) = spliced {
        line.pop();
        line.push_str(",\"value\":");
        line.push_str(&min);
        line.push('}');
    }
    line.push('\n');
    line
}

// ---------------------------------------------------------------------
// record

/// One event as an event file holds it (the format of
/// [`crate::plugin_test::parse_events`]), in that order: topic, key,
/// headers, then `value` or `value_raw`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RecordedEvent {
    /// The topic.
    pub topic: String,
    /// The key as text; `null` for none.
    pub key: Option<String>,
    /// The headers in the order they came: name to text, null for a null
    /// header.
    pub headers: Map<String, Json>,
    /// The value when it is JSON (the file reads it back compact).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Json>,
    /// The value when it is text that `value` cannot give back byte for
    /// byte.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_raw: Option<String>,
}

/// Something an event file holds differently from the record, said to
/// the person who records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// JSON with spacing between tokens: the file holds the JSON, and a
    /// run or a produce of it sends it compact.
    Respaced,
    /// JSON in a form the file cannot give back byte for byte as `value`
    /// (an escape such as `\u00e9`, a number such as `1e3` or one beyond
    /// 64 bits, a bare `null`): kept exactly, as `value_raw` text.
    KeptAsText,
    /// A header name given more than once: the format holds one value per
    /// name, and the last is kept (as the router reads headers).
    DuplicateHeader(String),
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Note::Respaced => f.write_str(
                "its JSON value had spacing the event file does not keep: it is produced compact",
            ),
            Note::KeptAsText => f.write_str(
                "its value is JSON written in a form that re-encoding would change (an escape, a number form, a bare null): kept exactly as value_raw text",
            ),
            Note::DuplicateHeader(name) => write!(
                f,
                "header {name:?} came more than once; an event file holds one value per name: kept the last"
            ),
        }
    }
}

/// The record as an event file holds it, and what it holds differently;
/// `Err` says why the format cannot hold it (a key, value or header that
/// is not UTF-8).
pub fn recordable(e: &Event) -> Result<(RecordedEvent, Vec<Note>), String> {
    let mut notes = Vec::new();
    let key = match e.key.as_deref().map(std::str::from_utf8) {
        None => None,
        Some(Ok(k)) => Some(k.to_string()),
        Some(Err(_)) => {
            return Err(format!(
                "its key is binary (not UTF-8, {} bytes), which an event file cannot hold",
                e.key.as_ref().map_or(0, Vec::len)
            ));
        }
    };
    let mut headers = Map::new();
    for (name, value) in &e.headers {
        let value = match value.as_deref().map(std::str::from_utf8) {
            None => Json::Null,
            Some(Ok(v)) => Json::String(v.to_string()),
            Some(Err(_)) => {
                return Err(format!(
                    "its header {name:?} is binary (not UTF-8), which an event file cannot hold"
                ));
            }
        };
        if headers.insert(name.clone(), value).is_some() {
            let note = Note::DuplicateHeader(name.clone());
            if !notes.contains(&note) {
                notes.push(note);
            }
        }
    }
    let (value, value_raw) = match body(&e.payload) {
        Body::Empty => (None, Some(String::new())),
        Body::Text(t) => (None, Some(t.to_string())),
        Body::Binary => {
            return Err(format!(
                "its value is binary (not UTF-8, {} bytes; Avro, Protobuf or compressed?), which an event file cannot hold",
                e.payload.len()
            ));
        }
        Body::Json(min) => {
            let parsed: Option<Json> = serde_json::from_str(&min).ok();
            // `value` is read back and produced as serde_json writes it:
            // use it only when that gives these very tokens back. A bare
            // `null` would read back as no value at all.
            let back = parsed
                .as_ref()
                .filter(|v| !v.is_null())
                .and_then(|v| serde_json::to_string(v).ok());
            match (parsed, back) {
                (Some(v), Some(back)) if back == min => {
                    if min.len() != e.payload.len() {
                        notes.push(Note::Respaced);
                    }
                    (Some(v), None)
                }
                _ => {
                    notes.push(Note::KeptAsText);
                    (
                        None,
                        std::str::from_utf8(&e.payload).ok().map(str::to_string),
                    )
                }
            }
        }
    };
    Ok((
        RecordedEvent {
            topic: e.topic.clone(),
            key,
            headers,
            value,
            value_raw,
        },
        notes,
    ))
}

/// The text of an event file: a JSON array, two-space indented, fields in
/// a fixed order, a newline at the end.
pub fn event_file_text(events: &[RecordedEvent]) -> anyhow::Result<String> {
    let mut text = serde_json::to_string_pretty(events).context("writing the event file")?;
    text.push('\n');
    Ok(text)
}

/// Write `text` to `path` so that a reader sees the old file or the whole
/// new one, never a part: a temporary file beside it, synced, renamed
/// over it. Missing directories above it are made (a plugin's first
/// `fixtures/`).
pub fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

/// What `switchyard record` does.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    /// What to read.
    pub tail: TailOptions,
    /// How many events to save.
    pub count: usize,
    /// The file; `None` for standard output.
    pub out: Option<PathBuf>,
    /// Give up after this long and save what arrived.
    pub timeout: Option<Duration>,
}

/// How a recording ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ended {
    /// All the events asked for arrived.
    #[default]
    Complete,
    /// `--timeout` ran out first.
    TimedOut,
    /// Ctrl-C.
    Interrupted,
}

/// The events a recording saved and what it said about the others.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    /// The events, in the order they arrived.
    pub events: Vec<RecordedEvent>,
    /// Records left out because the format cannot hold them.
    pub skipped: usize,
    /// See [`Note::Respaced`].
    pub respaced: usize,
    /// See [`Note::KeptAsText`].
    pub kept_as_text: usize,
    /// See [`Note::DuplicateHeader`].
    pub duplicate_headers: usize,
    /// How it ended.
    pub ended: Ended,
}

/// Read records of `options.tail` until `options.count` of them could be
/// saved, the timeout runs out, or `stop` is asked; each saved event,
/// note and skip is told to `notice`.
pub fn record(
    options: &RecordOptions,
    stop: &Stop,
    notice: &mut dyn FnMut(&str),
) -> anyhow::Result<Recording> {
    let deadline = options.timeout.map(|t| Instant::now() + t);
    let keep_going = || !stop.requested() && deadline.is_none_or(|d| Instant::now() < d);
    let ended = || {
        if stop.requested() {
            Ended::Interrupted
        } else {
            Ended::TimedOut
        }
    };
    let mut rec = Recording::default();
    let Some(mut tail) = Tail::open(&options.tail, &keep_going, notice)? else {
        rec.ended = ended();
        return Ok(rec);
    };
    notice(&format!(
        "recording {} event(s) of {} on {}: {} partition(s), {}",
        options.count,
        options.tail.topic,
        options.tail.brokers,
        tail.partitions(),
        match tail.start() {
            StartAt::Start => "from the beginning",
            StartAt::End => "from the end (new events only)",
        }
    ));
    let mut seen = 0usize;
    while rec.events.len() < options.count {
        if !keep_going() {
            rec.ended = ended();
            return Ok(rec);
        }
        let wait = deadline.map_or(POLL, |d| {
            POLL.min(d.saturating_duration_since(Instant::now()))
        });
        match tail.poll(wait)? {
            Step::Record(event) => {
                seen += 1;
                let at = format!("partition {} offset {}", event.partition, event.offset);
                match recordable(&event) {
                    Ok((saved, notes)) => {
                        let key = event.key.as_deref().map_or("(none)".into(), quoted);
                        rec.events.push(saved);
                        notice(&format!(
                            "[{}/{}] {at} key {key}",
                            rec.events.len(),
                            options.count
                        ));
                        for n in notes {
                            match n {
                                Note::Respaced => rec.respaced += 1,
                                Note::KeptAsText => rec.kept_as_text += 1,
                                Note::DuplicateHeader(_) => rec.duplicate_headers += 1,
                            }
                            notice(&format!("      note: {n}"));
                        }
                    }
                    Err(why) => {
                        rec.skipped += 1;
                        notice(&format!("skipped {at}: {why}"));
                    }
                }
            }
            Step::CaughtUp if tail.start() == StartAt::Start => notice(&format!(
                "read {} to its end ({seen} record(s)); waiting for {} more event(s)",
                options.tail.topic,
                options.count - rec.events.len()
            )),
            Step::Warning(w) => notice(&w),
            Step::CaughtUp | Step::Idle => {}
        }
    }
    rec.ended = Ended::Complete;
    Ok(rec)
}

/// `switchyard record`: read until the events arrived (or the timeout),
/// then write the event file in one go. Exit status 1 when fewer than
/// asked were saved.
pub async fn record_command(options: RecordOptions) -> anyhow::Result<()> {
    let target = match &options.out {
        Some(path) => {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            anyhow::ensure!(
                dir.is_dir(),
                "cannot write {}: the directory {} does not exist",
                path.display(),
                dir.display()
            );
            anyhow::ensure!(
                !path.is_dir(),
                "--out {} is a directory: name a file, such as {}",
                path.display(),
                path.join("recorded.events.json").display()
            );
            path.display().to_string()
        }
        None => "standard output".to_string(),
    };
    let count = options.count;
    let timeout = options.timeout;
    let out = options.out.clone();
    let rec = until_ctrl_c(move |stop| record(&options, &stop, &mut |line| eprintln!("{line}")))
        .await??;
    let said = |n: usize, what: &str| {
        if n > 0 {
            eprintln!("{n} {what}");
        }
    };
    said(
        rec.skipped,
        "record(s) skipped: their key, value or a header is not UTF-8 text, which an event file cannot hold (`switchyard consume --json` shows them as hex)",
    );
    said(
        rec.respaced,
        "JSON value(s) had spacing the file does not keep: `produce --event` sends them compact (same JSON)",
    );
    said(
        rec.kept_as_text,
        "JSON value(s) kept as value_raw text, byte for byte: re-encoding would have changed an escape or a number's form",
    );
    said(
        rec.duplicate_headers,
        "event(s) had a header name more than once: the file keeps the last value of each",
    );
    let saved = rec.events.len();
    match rec.ended {
        Ended::Interrupted => anyhow::bail!(
            "interrupted with {saved} of {count} event(s): nothing written (the file is written when all {count} arrived, or when --timeout SECS runs out)"
        ),
        Ended::TimedOut if saved == 0 => anyhow::bail!(
            "--timeout {}s ran out before any event arrived: nothing written",
            timeout.map_or(0, |t| t.as_secs())
        ),
        Ended::TimedOut | Ended::Complete => {}
    }
    let text = event_file_text(&rec.events)?;
    match &out {
        Some(path) => write_atomically(path, &text)?,
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
                .context("writing the event file to standard output")?;
        }
    }
    if rec.ended == Ended::TimedOut {
        anyhow::bail!(
            "--timeout {}s ran out with {saved} of {count} event(s): wrote those {saved} to {target}",
            timeout.map_or(0, |t| t.as_secs())
        );
    }
    eprintln!("wrote {saved} event(s) to {target}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(key: Option<&[u8]>, headers: &[(&str, Option<&[u8]>)], payload: &[u8]) -> Event {
        Event {
            topic: "user.registered.v1".into(),
            partition: 2,
            offset: 41,
            timestamp_ms: Some(1_763_792_747_209),
            key: key.map(<[u8]>::to_vec),
            payload: payload.to_vec(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.map(<[u8]>::to_vec)))
                .collect(),
        }
    }

    #[test]
    fn a_json_record_reads_like_the_seed_file() {
        let e = event(
            Some(b"8f14e45f"),
            &[
                ("event-type", Some(b"user_registered")),
                ("request-id", Some(b"r-1")),
            ],
            r#"{"event":"user_registered","ts":1e3,"big":123456789012345678901234567890,"payload":{"full_name":"Lucía Fernández","tags":[],"meta":{}}}"#.as_bytes(),
        );
        let text = render_text(&e);
        let expected = r#"── user.registered.v1  partition 2  offset 41  2025-11-22 06:25:47.209 UTC
key      "8f14e45f"
headers  event-type="user_registered"
         request-id="r-1"
value    JSON, 137 bytes
  {
    "event": "user_registered",
    "ts": 1e3,
    "big": 123456789012345678901234567890,
    "payload": {
      "full_name": "Lucía Fernández",
      "tags": [],
      "meta": {}
    }
  }

"#;
        assert_eq!(text, expected);
    }

    #[test]
    fn text_binary_empty_and_odd_parts_are_shown_safely() {
        let text = render_text(&event(
            None,
            &[("trace", None), ("evil", Some(b"a\x1b[31mred\nb\"q\""))],
            b"line one\nline two\twith a tab\r\n",
        ));
        assert!(text.contains("key      (none)\n"), "{text}");
        assert!(text.contains("headers  trace=(null)\n"), "{text}");
        assert!(
            text.contains("         evil=\"a\\u{1b}[31mred\\nb\\\"q\\\"\"\n"),
            "{text}"
        );
        assert!(text.contains("value    text, 30 bytes\n"), "{text}");
        assert!(
            text.contains("  line one\n  line two\twith a tab\\r\n"),
            "{text}"
        );
        assert!(!text.contains('\x1b'), "no raw escape reaches the terminal");

        let binary = render_text(&event(Some(b"\xff\x01k"), &[], b"\x00\xc3\x28ok\\"));
        assert!(binary.contains("key      \"\\xff\\u{1}k\"\n"), "{binary}");
        assert!(binary.contains("headers  (none)\n"), "{binary}");
        assert!(
            binary.contains(
                "value    binary (not UTF-8), 6 bytes, escaped:\n  \"\\u{0}\\xc3(ok\\\\\"\n"
            ),
            "{binary}"
        );

        let empty = render_text(&event(Some(b""), &[], b""));
        assert!(empty.contains("key      \"\"\n"), "{empty}");
        assert!(empty.contains("value    (empty)\n"), "{empty}");
    }

    #[test]
    fn json_is_minified_and_reindented_from_its_own_text() -> anyhow::Result<()> {
        let sent = "{ \"a\" : [ 1 , 2.50 ] ,\n \"s\": \"x , { y } \\\" : \\\\\" , \"e\" : { } }";
        let min = minify(sent);
        assert_eq!(min, r#"{"a":[1,2.50],"s":"x , { y } \" : \\","e":{}}"#);
        assert_eq!(
            reindent(&min, ""),
            "{\n  \"a\": [\n    1,\n    2.50\n  ],\n  \"s\": \"x , { y } \\\" : \\\\\",\n  \"e\": {}\n}"
        );
        // Laid out as serde_json lays it out, where the tokens agree.
        let v: Json = serde_json::from_str(r#"{"k":[{"x":null},true,"é"],"n":{}}"#)?;
        let pretty = serde_json::to_string_pretty(&v)?;
        assert_eq!(reindent(&minify(&pretty), ""), pretty);
        // A C1 control character inside a string is escaped for the terminal.
        assert_eq!(reindent("\"a\u{9b}b\"", ""), "\"a\\u009bb\"");
        Ok(())
    }

    #[test]
    fn a_json_line_keeps_everything_and_parses() -> anyhow::Result<()> {
        let e = event(
            Some(b"u1"),
            &[
                ("event-id", Some(b"e1")),
                ("null", None),
                ("bin", Some(b"\xff")),
                ("dup", Some(b"1")),
                ("dup", Some(b"2")),
                ("dup", Some(b"3")),
            ],
            b"{ \"n\": 1e3, \"big\": 123456789012345678901234567890 }",
        );
        let line = json_line(&e);
        assert!(
            line.ends_with("}\n") && line.matches('\n').count() == 1,
            "{line}"
        );
        assert!(
            line.ends_with(",\"value\":{\"n\":1e3,\"big\":123456789012345678901234567890}}\n"),
            "the value as sent: {line}"
        );
        let v: Json = serde_json::from_str(&line)?;
        assert_eq!(v["topic"], "user.registered.v1");
        assert_eq!(v["partition"], 2);
        assert_eq!(v["offset"], 41);
        assert_eq!(v["timestamp"], "2025-11-22T06:25:47.209Z");
        assert_eq!(v["timestamp_ms"], 1_763_792_747_209i64);
        assert_eq!(v["key"], "u1");
        assert_eq!(
            v["headers"],
            serde_json::json!({"event-id": "e1", "null": null, "bin": {"hex": "ff"}, "dup": ["1", "2", "3"]})
        );
        assert_eq!(v["value"]["n"], 1000.0);

        let text: Json = serde_json::from_str(&json_line(&event(None, &[], b"plain")))?;
        assert_eq!(text["value_raw"], "plain");
        assert_eq!(text["key"], Json::Null);
        assert!(text.get("value").is_none());
        let bin: Json = serde_json::from_str(&json_line(&event(Some(b"\x80"), &[], b"\x00\xff")))?;
        assert_eq!(bin["value_hex"], "00ff");
        assert_eq!(bin["key"], Json::Null);
        assert_eq!(bin["key_hex"], "80");
        Ok(())
    }

    #[test]
    fn recorded_events_read_back_as_the_same_events() -> anyhow::Result<()> {
        let records = [
            event(
                Some("ключ".as_bytes()),
                &[("event-id", Some(b"e1")), ("trace", None)],
                r#"{"b":1,"a":{"name":"احمد","n":[1,2]}}"#.as_bytes(),
            ),
            event(None, &[], b"not json, just text"),
            event(Some(b"k"), &[], b""),
            event(Some(b"k"), &[], br#"{"e":"\u00e9","n":1e3}"#),
            event(Some(b"k"), &[], b"null"),
        ];
        let mut saved = Vec::new();
        for r in &records {
            saved.push(recordable(r).map_err(anyhow::Error::msg)?.0);
        }
        let text = event_file_text(&saved)?;
        assert!(
            text.starts_with("[\n  {\n    \"topic\": \"user.registered.v1\",\n    \"key\": \"ключ\",\n    \"headers\": {\n      \"event-id\": \"e1\",\n      \"trace\": null\n    },\n    \"value\": {\n      \"b\": 1,"),
            "{text}"
        );
        assert!(
            !text.contains("partition") && !text.contains("offset"),
            "{text}"
        );
        let back = crate::plugin_test::parse_events("recorded.json", &text)?;
        assert_eq!(back.len(), records.len());
        for (r, b) in records.iter().zip(&back) {
            assert_eq!(
                (&b.topic, &b.key, &b.headers, &b.payload),
                (&r.topic, &r.key, &r.headers, &r.payload)
            );
        }
        Ok(())
    }

    #[test]
    fn what_the_format_holds_differently_is_noted() -> anyhow::Result<()> {
        let note = |r: &Event| recordable(r).map(|(_, n)| n).map_err(anyhow::Error::msg);
        assert_eq!(note(&event(None, &[], br#"{"a":1}"#))?, vec![]);
        assert_eq!(
            note(&event(None, &[], b"{ \"a\": 1 }\n"))?,
            vec![Note::Respaced]
        );
        assert_eq!(note(&event(None, &[], b"1.50"))?, vec![Note::KeptAsText]);
        assert_eq!(note(&event(None, &[], b"null"))?, vec![Note::KeptAsText]);
        assert_eq!(note(&event(None, &[], b"plain text"))?, vec![]);
        let dup = event(
            None,
            &[("h", Some(b"1")), ("h", Some(b"2")), ("h", Some(b"3"))],
            b"x",
        );
        assert_eq!(note(&dup)?, vec![Note::DuplicateHeader("h".into())]);
        let (saved, _) = recordable(&dup).map_err(anyhow::Error::msg)?;
        assert_eq!(saved.headers["h"], "3", "the last, as the router reads it");
        // Spacing aside, the payload read back is the same JSON.
        let (spaced, _) =
            recordable(&event(None, &[], b"{ \"a\": [1, 2] }")).map_err(anyhow::Error::msg)?;
        let back = crate::plugin_test::parse_events("f", &event_file_text(&[spaced])?)?;
        assert_eq!(back[0].payload, br#"{"a":[1,2]}"#);
        Ok(())
    }

    #[test]
    fn what_the_format_cannot_hold_is_refused_with_the_reason() {
        for (e, part) in [
            (event(None, &[], b"\x00\x01\xff"), "its value is binary"),
            (event(Some(b"\xfe"), &[], b"{}"), "its key is binary"),
            (
                event(None, &[("sig", Some(b"\xff"))], b"{}"),
                "header \"sig\" is binary",
            ),
        ] {
            match recordable(&e) {
                Ok(r) => panic!("recorded {r:?}"),
                Err(why) => assert!(why.contains(part) && why.contains("cannot hold"), "{why}"),
            }
        }
    }

    #[test]
    fn files_are_replaced_whole() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("recorded.events.json");
        std::fs::write(&path, "old")?;
        write_atomically(&path, "[]\n")?;
        assert_eq!(std::fs::read_to_string(&path)?, "[]\n");
        let left: Vec<_> = std::fs::read_dir(dir.path())?.flatten().collect();
        assert_eq!(left.len(), 1, "no temporary file stays: {left:?}");
        // A directory that is missing is made (a plugin's first fixtures/).
        write_atomically(&dir.path().join("fixtures/x.json"), "[]\n")?;
        assert_eq!(
            std::fs::read_to_string(dir.path().join("fixtures/x.json"))?,
            "[]\n"
        );
        // One that cannot be made: the error names it.
        let err = write_atomically(&path.join("x.json"), "[]")
            .err()
            .map(|e| format!("{e:#}"));
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("recorded.events.json")),
            "{err:?}"
        );
        Ok(())
    }

    #[test]
    fn brokers_come_from_the_flag_then_the_config() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        assert_eq!(
            resolve_brokers(Some("b:1"), Some(&dir.path().join("none.toml")))?,
            "b:1",
            "the flag wins without reading the config"
        );
        let config = dir.path().join("switchyard.toml");
        std::fs::write(
            &config,
            "[kafka]\nbrokers = \"kafka-1:9092\"\n\n[database]\nurl = \"sqlite::memory:\"\n\n\
             [plugins.p]\nfile = \"p.wasm\"\n\n[[routes]]\ntopics = [\"t\"]\nplugins = [\"p\"]\n",
        )?;
        assert_eq!(resolve_brokers(None, Some(&config))?, "kafka-1:9092");
        let missing = resolve_brokers(None, Some(&dir.path().join("none.toml")))
            .err()
            .map(|e| format!("{e:#}"));
        assert!(missing.is_some_and(|e| e.contains("none.toml") && e.contains("--brokers")));
        Ok(())
    }
}
