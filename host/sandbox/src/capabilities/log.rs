//! The `log` capability, and the guest's stdout/stderr, into the host's
//! log under the plugin's name and the event's coordinates.
//!
//! Lines are also kept for the current call when the caller asks (the
//! `plugin test` report). A call may write at most `max_log_lines` lines;
//! the rest are counted, not written, so a chatty plugin cannot flood the
//! log.

use super::HostState;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use switchyard_core::event::EventContext;
use switchyard_wit::switchyard::plugin::log::{self, Level};

/// Longest log line kept, in bytes; longer ones are cut.
const MAX_LINE_BYTES: usize = 4096;

/// Where a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The `log` import.
    Log,
    /// WASI stdout.
    Stdout,
    /// WASI stderr.
    Stderr,
}

/// One line a plugin wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Severity (stdout is `info`, stderr `warn`).
    pub level: String,
    /// Source.
    pub stream: Stream,
    /// The text.
    pub message: String,
}

#[derive(Debug)]
struct Shared {
    plugin: Arc<str>,
    event: Option<Arc<EventContext>>,
    max_lines: usize,
    written: usize,
    dropped: usize,
    capture: bool,
    lines: Vec<LogLine>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// The last stderr lines of the call, kept regardless of the cap so
    /// that a trap can be explained by the panic message before it.
    recent_stderr: std::collections::VecDeque<String>,
}

/// How many recent stderr lines are kept for explaining a trap.
const RECENT_STDERR: usize = 8;

/// Per-store log state; cloned handles feed WASI stdout and stderr.
#[derive(Debug, Clone)]
pub struct LogState {
    shared: Arc<Mutex<Shared>>,
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Trace => "trace",
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

impl LogState {
    pub(crate) fn new(plugin: Arc<str>, max_lines: usize) -> Self {
        Self {
            shared: Arc::new(Mutex::new(Shared {
                plugin,
                event: None,
                max_lines,
                written: 0,
                dropped: 0,
                capture: false,
                lines: Vec::new(),
                stdout: Vec::new(),
                stderr: Vec::new(),
                recent_stderr: std::collections::VecDeque::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding this lock can only come from a host bug in
        // this module; the data is plain lines, safe to keep using.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn begin(&mut self, event: Option<Arc<EventContext>>) {
        let mut s = self.lock();
        s.event = event;
        s.written = 0;
        s.dropped = 0;
        s.lines.clear();
        s.stdout.clear();
        s.stderr.clear();
        s.recent_stderr.clear();
    }

    /// The panic message the guest printed during this call, if any:
    /// Rust's panic hook writes `thread '..' panicked at file:line:col:`
    /// and then the message to stderr before the trap.
    pub(crate) fn panic_message(&mut self) -> Option<String> {
        let mut s = self.lock();
        let pending = std::mem::take(&mut s.stderr);
        if !pending.is_empty() {
            let text = String::from_utf8_lossy(&pending).into_owned();
            emit(&mut s, Stream::Stderr, None, text);
        }
        let lines: Vec<&String> = s.recent_stderr.iter().collect();
        let at = lines.iter().rposition(|l| l.contains("panicked at"))?;
        let location = lines[at]
            .split("panicked at ")
            .nth(1)
            .unwrap_or("")
            .trim_end_matches(':');
        let message: Vec<&str> = lines[at + 1..]
            .iter()
            .map(|l| l.as_str())
            .take_while(|l| !l.starts_with("note:"))
            .collect();
        Some(format!("panicked at {location}: {}", message.join(" ")))
    }

    /// Keep lines of the current call for the caller.
    pub(crate) fn set_capture(&mut self, capture: bool) {
        self.lock().capture = capture;
    }

    /// Flush partial stdout/stderr lines and return the call's lines and
    /// how many were dropped over the cap.
    pub(crate) fn finish(&mut self) -> (Vec<LogLine>, usize) {
        let mut s = self.lock();
        for stream in [Stream::Stdout, Stream::Stderr] {
            let pending = match stream {
                Stream::Stdout => std::mem::take(&mut s.stdout),
                _ => std::mem::take(&mut s.stderr),
            };
            if !pending.is_empty() {
                let text = String::from_utf8_lossy(&pending).into_owned();
                emit(&mut s, stream, None, text);
            }
        }
        (std::mem::take(&mut s.lines), s.dropped)
    }

    pub(crate) fn stream(&self, stream: Stream) -> GuestOutput {
        GuestOutput {
            state: self.clone(),
            stream,
        }
    }

    fn write_bytes(&self, stream: Stream, bytes: &[u8]) {
        let mut s = self.lock();
        let mut buf = match stream {
            Stream::Stdout => std::mem::take(&mut s.stdout),
            _ => std::mem::take(&mut s.stderr),
        };
        buf.extend_from_slice(bytes);
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            emit(&mut s, stream, None, text);
        }
        if buf.len() > MAX_LINE_BYTES {
            let text = String::from_utf8_lossy(&buf).into_owned();
            buf.clear();
            emit(&mut s, stream, None, text);
        }
        match stream {
            Stream::Stdout => s.stdout = buf,
            _ => s.stderr = buf,
        }
    }
}

/// Rust's panic hook's advice to set `RUST_BACKTRACE`, which a plugin in
/// the sandbox cannot use.
fn is_backtrace_hint(line: &str) -> bool {
    line.starts_with("note: run with `RUST_BACKTRACE=")
        || line.starts_with("note: Some details are omitted, run with `RUST_BACKTRACE=")
}

/// Write one line to tracing (and the capture), respecting the cap.
fn emit(s: &mut Shared, stream: Stream, level: Option<Level>, mut message: String) {
    if stream != Stream::Log && message.trim().is_empty() {
        return;
    }
    if stream == Stream::Stderr {
        if s.recent_stderr.len() == RECENT_STDERR {
            s.recent_stderr.pop_front();
        }
        let mut kept = message.clone();
        kept.truncate(
            (0..=kept.len().min(512))
                .rev()
                .find(|&i| kept.is_char_boundary(i))
                .unwrap_or(0),
        );
        s.recent_stderr.push_back(kept);
        if is_backtrace_hint(&message) {
            // Advice a plugin cannot take (it has no environment); the
            // panic's own lines say what happened.
            return;
        }
    }
    if s.written >= s.max_lines {
        s.dropped += 1;
        return;
    }
    s.written += 1;
    if message.len() > MAX_LINE_BYTES {
        let mut cut = MAX_LINE_BYTES;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str(" [cut]");
    }
    let level = level.unwrap_or(match stream {
        Stream::Stderr => Level::Warn,
        _ => Level::Info,
    });
    let source = match stream {
        Stream::Log => "log",
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    };
    let plugin = &*s.plugin;
    let (topic, partition, offset, request_id, event_id, trace_id) = match &s.event {
        Some(e) => (
            e.topic.as_str(),
            e.partition,
            e.offset,
            e.request_id.as_deref().unwrap_or(""),
            e.event_id.as_deref().unwrap_or(""),
            e.traceparent.as_ref().map_or("", |t| t.trace_id.as_str()),
        ),
        None => ("", -1, -1, "", "", ""),
    };
    macro_rules! line {
        ($mac:ident) => {
            tracing::$mac!(target: "switchyard::plugin", plugin, topic, partition, offset, event_id, request_id, trace_id, source, "{message}")
        };
    }
    match level {
        Level::Trace => line!(trace),
        Level::Debug => line!(debug),
        Level::Info => line!(info),
        Level::Warn => line!(warn),
        Level::Error => line!(error),
    }
    if s.capture {
        s.lines.push(LogLine {
            level: level_name(level).to_string(),
            stream,
            message,
        });
    }
}

/// WASI stdout/stderr of a plugin, written into its log.
pub struct GuestOutput {
    state: LogState,
    stream: Stream,
}

impl wasmtime_wasi::cli::IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(GuestOutput {
            state: self.state.clone(),
            stream: self.stream,
        })
    }
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.state.write_bytes(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl log::Host for HostState {
    async fn write(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let mut s = self.log.lock();
        emit(&mut s, Stream::Log, Some(level), message);
        Ok(())
    }
}
