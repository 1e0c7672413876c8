//! In-memory versions of the core's traits: a [`MemoryLedger`] (markers,
//! outbox rows and a plugin's effects, committed or dropped whole), a
//! [`MemoryProducer`] and a [`Scripted`] plugin. With them the lane's
//! logic — exactly-once effects, retries, dead letters, outages, the batch
//! fallback — is tested without a broker or a database; the end-to-end
//! tests run the same lane on the real ones.

use crate::event::{Event, EventContext, Headers};
use crate::message::OutMessage;
use crate::outcome::Outcome;
use crate::state::Ports;
use crate::work::{
    CallOptions, Ledger, LedgerError, Marker, Producer, ProducerSink, Record, Report, Runner,
    Versioned,
};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// What a ledger operation is, to make it fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// [`Ledger::begin`].
    Begin,
    /// [`Ledger::mark`].
    Mark,
    /// [`Ledger::enqueue`].
    Enqueue,
    /// [`Ledger::commit`].
    Commit,
    /// [`Ledger::mark_dead_lettered`].
    MarkDeadLettered,
}

/// What has committed.
#[derive(Debug, Default, Clone)]
pub struct Committed {
    /// (group, plugin, dedupe key) → marker outcome.
    pub markers: HashMap<(String, String, String), String>,
    /// The outbox, in order.
    pub outbox: Vec<OutMessage>,
    /// What plugins did, in commit order (a stand-in for their SQL).
    pub effects: Vec<String>,
    /// Transactions committed.
    pub commits: usize,
}

/// An in-memory ledger.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    committed: Mutex<Committed>,
    faults: Mutex<Vec<(Op, LedgerError)>>,
}

/// A transaction of the [`MemoryLedger`]: what commits with it.
#[derive(Debug, Default)]
pub struct MemoryTx {
    markers: Vec<((String, String, String), String)>,
    outbox: Vec<OutMessage>,
    /// The plugin's effects.
    pub effects: Vec<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn key(m: &Marker<'_>) -> (String, String, String) {
    (m.group.into(), m.plugin.into(), m.dedupe_key.into())
}

impl MemoryLedger {
    /// The next `op` fails with `error` (faults queue up in order).
    pub fn fail_next(&self, op: Op, error: LedgerError) {
        lock(&self.faults).push((op, error));
    }

    /// What has committed so far.
    pub fn committed(&self) -> Committed {
        lock(&self.committed).clone()
    }

    fn fault(&self, op: Op) -> Result<(), LedgerError> {
        let mut faults = lock(&self.faults);
        match faults.iter().position(|(o, _)| *o == op) {
            Some(i) => Err(faults.remove(i).1),
            None => Ok(()),
        }
    }

    fn marker_of(&self, tx: &MemoryTx, k: &(String, String, String)) -> Option<String> {
        tx.markers
            .iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, outcome)| outcome.clone())
            .or_else(|| lock(&self.committed).markers.get(k).cloned())
    }
}

impl Ledger for MemoryLedger {
    type Tx = MemoryTx;

    async fn begin(&self) -> Result<MemoryTx, LedgerError> {
        self.fault(Op::Begin)?;
        Ok(MemoryTx::default())
    }

    async fn mark(
        &self,
        tx: &mut MemoryTx,
        markers: &[Marker<'_>],
    ) -> Result<HashSet<(String, String)>, LedgerError> {
        self.fault(Op::Mark)?;
        let mut written = HashSet::new();
        for m in markers {
            let k = key(m);
            if self.marker_of(tx, &k).is_none() {
                tx.markers.push((k, "handled".into()));
                written.insert((m.plugin.to_string(), m.dedupe_key.to_string()));
            }
        }
        Ok(written)
    }

    async fn claim_replay(
        &self,
        tx: &mut MemoryTx,
        marker: Marker<'_>,
    ) -> Result<bool, LedgerError> {
        self.fault(Op::Mark)?;
        let k = key(&marker);
        if self.marker_of(tx, &k).as_deref() != Some("dead-lettered") {
            return Ok(false);
        }
        tx.markers.push((k, "replayed".into()));
        Ok(true)
    }

    async fn enqueue(
        &self,
        tx: &mut MemoryTx,
        _plugin: &str,
        messages: &[OutMessage],
    ) -> Result<(), LedgerError> {
        self.fault(Op::Enqueue)?;
        tx.outbox.extend_from_slice(messages);
        Ok(())
    }

    async fn commit(&self, tx: MemoryTx) -> Result<(), LedgerError> {
        self.fault(Op::Commit)?;
        let mut c = lock(&self.committed);
        c.markers.extend(tx.markers);
        c.outbox.extend(tx.outbox);
        c.effects.extend(tx.effects);
        c.commits += 1;
        Ok(())
    }

    async fn rollback(&self, _tx: MemoryTx) -> Result<(), LedgerError> {
        Ok(())
    }

    async fn mark_dead_lettered(&self, marker: Marker<'_>) -> Result<(), LedgerError> {
        self.fault(Op::MarkDeadLettered)?;
        let mut c = lock(&self.committed);
        c.markers
            .entry(key(&marker))
            .or_insert_with(|| "dead-lettered".into());
        c.commits += 1;
        Ok(())
    }
}

/// A record the [`MemoryProducer`] took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Produced {
    /// Topic.
    pub topic: String,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub payload: Vec<u8>,
    /// Headers.
    pub headers: Headers,
}

impl Produced {
    /// The last header called `name`, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        crate::deadletter::last_header(&self.headers, name)
    }
}

/// An in-memory producer; it can refuse its next sends.
#[derive(Debug, Default)]
pub struct MemoryProducer {
    produced: Mutex<Vec<Produced>>,
    refuse: Mutex<Vec<String>>,
}

impl MemoryProducer {
    /// The next send fails with `error` (they queue up).
    pub fn refuse_next(&self, error: &str) {
        lock(&self.refuse).push(error.to_string());
    }

    /// What was produced, in order.
    pub fn produced(&self) -> Vec<Produced> {
        lock(&self.produced).clone()
    }
}

impl Producer for MemoryProducer {
    async fn send(&self, r: Record<'_>) -> Result<(), String> {
        {
            let mut refuse = lock(&self.refuse);
            if !refuse.is_empty() {
                return Err(refuse.remove(0));
            }
        }
        lock(&self.produced).push(Produced {
            topic: r.topic.to_string(),
            key: r.key.map(<[u8]>::to_vec),
            payload: r.payload.to_vec(),
            headers: r.headers.clone(),
        });
        Ok(())
    }
}

/// What a [`Scripted`] plugin does with one event.
#[derive(Debug, Clone)]
pub struct Act {
    /// Its outcome.
    pub outcome: Outcome,
    /// Its effect, committed with the event (a stand-in for its SQL).
    pub effect: Option<String>,
    /// Messages it publishes.
    pub messages: Vec<OutMessage>,
    /// Its statements found the database unavailable.
    pub db_unavailable: bool,
    /// One of its statements failed (a call without savepoints must then
    /// be rolled back).
    pub db_failed: bool,
}

impl Act {
    /// `outcome`, with the effect `effect`.
    pub fn new(outcome: Outcome, effect: &str) -> Self {
        Self {
            outcome,
            effect: Some(effect.to_string()),
            messages: Vec::new(),
            db_unavailable: false,
            db_failed: false,
        }
    }
}

type Script = dyn Fn(&Event, u32) -> Act + Send + Sync;

/// A plugin whose behaviour is a function of the event and how many times
/// this plugin has seen it.
pub struct Scripted {
    hash: String,
    script: Box<Script>,
    seen: Mutex<HashMap<(String, i32, i64), u32>>,
    /// How long each call takes (the calls of different lanes overlap).
    delay: Duration,
    running: AtomicUsize,
    most_running: AtomicUsize,
    with_savepoints: AtomicUsize,
}

impl std::fmt::Debug for Scripted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scripted")
            .field("hash", &self.hash)
            .finish()
    }
}

impl Scripted {
    /// A plugin version named `hash` doing `script(event, nth call)`.
    pub fn new(
        hash: &str,
        script: impl Fn(&Event, u32) -> Act + Send + Sync + 'static,
    ) -> Arc<Self> {
        Self::slow(hash, Duration::ZERO, script)
    }

    /// Like [`Scripted::new`], each call taking `delay`.
    pub fn slow(
        hash: &str,
        delay: Duration,
        script: impl Fn(&Event, u32) -> Act + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            hash: hash.to_string(),
            script: Box::new(script),
            seen: Mutex::new(HashMap::new()),
            delay,
            running: AtomicUsize::new(0),
            most_running: AtomicUsize::new(0),
            with_savepoints: AtomicUsize::new(0),
        })
    }

    /// Calls made with a savepoint per statement (not as part of a
    /// batch).
    pub fn calls_with_savepoints(&self) -> usize {
        self.with_savepoints.load(AtomicOrdering::SeqCst)
    }

    /// The most calls that were running at once.
    pub fn most_running(&self) -> usize {
        self.most_running.load(AtomicOrdering::SeqCst)
    }
}

impl Versioned for Scripted {
    fn hash(&self) -> &str {
        &self.hash
    }

    fn version(&self) -> &str {
        "0.0.0"
    }
}

/// The report of a [`Scripted`] call.
#[derive(Debug)]
pub struct ScriptedReport {
    act: Act,
}

impl Report for ScriptedReport {
    fn outcome(&self) -> &Outcome {
        &self.act.outcome
    }
    fn messages(&self) -> &[OutMessage] {
        &self.act.messages
    }
    fn take_messages(&mut self) -> Vec<OutMessage> {
        std::mem::take(&mut self.act.messages)
    }
    fn db_unavailable(&self) -> bool {
        self.act.db_unavailable
    }
    fn db_failed(&self) -> bool {
        self.act.db_failed || self.act.db_unavailable
    }
    fn refused_publishes(&self) -> usize {
        0
    }
    fn statement_count(&self) -> usize {
        usize::from(self.act.effect.is_some())
    }
    fn elapsed(&self) -> Duration {
        Duration::ZERO
    }
}

/// Runs a [`Scripted`] plugin.
#[derive(Debug)]
pub struct ScriptedRunner {
    plugin: Arc<Scripted>,
}

impl Runner<MemoryTx> for ScriptedRunner {
    type Plugin = Scripted;
    type Report = ScriptedReport;

    fn start(plugin: Arc<Scripted>) -> Self {
        Self { plugin }
    }

    fn plugin(&self) -> &Arc<Scripted> {
        &self.plugin
    }

    fn swap(&mut self, plugin: Arc<Scripted>) {
        self.plugin = plugin;
    }

    async fn run(
        &mut self,
        ctx: Arc<EventContext>,
        event: &Event,
        mut tx: MemoryTx,
        options: CallOptions,
    ) -> (ScriptedReport, Option<MemoryTx>) {
        if !options.batch {
            self.plugin
                .with_savepoints
                .fetch_add(1, AtomicOrdering::SeqCst);
        }
        let nth = {
            let mut seen = lock(&self.plugin.seen);
            let n = seen
                .entry((event.topic.clone(), event.partition, event.offset))
                .or_insert(0);
            *n += 1;
            *n
        };
        let now = self.plugin.running.fetch_add(1, AtomicOrdering::SeqCst) + 1;
        self.plugin
            .most_running
            .fetch_max(now, AtomicOrdering::SeqCst);
        if !self.plugin.delay.is_zero() {
            tokio::time::sleep(self.plugin.delay).await;
        }
        self.plugin.running.fetch_sub(1, AtomicOrdering::SeqCst);
        let mut act = (self.plugin.script)(event, nth);
        for m in &mut act.messages {
            m.plugin = ctx.plugin.clone();
        }
        if let Some(effect) = &act.effect {
            tx.effects.push(effect.clone());
        }
        (ScriptedReport { act }, Some(tx))
    }
}

/// The in-memory ports.
#[derive(Debug)]
pub struct MemoryPorts;

impl Ports for MemoryPorts {
    type Ledger = MemoryLedger;
    type Runner = ScriptedRunner;
    type DeadLetters = ProducerSink<MemoryProducer>;
}
