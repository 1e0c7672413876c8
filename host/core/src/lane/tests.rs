//! The lane on the in-memory ports: its logic without a broker or a
//! database.

use super::*;
use crate::breaker::Breakers;
use crate::config::{Loaded, RetryConfig};
use crate::deadletter as dl;
use crate::memory::{Act, MemoryLedger, MemoryPorts, MemoryProducer, Op, Scripted};
use crate::metrics::Metrics;
use crate::routes::RouteTable;
use crate::state::RouterState;
use crate::work::{Isolation, LedgerError, ProducerSink};
use std::time::Duration;
use tokio::sync::Notify;

const CONFIG: &str = r#"
[kafka]
brokers = "127.0.0.1:9092"
[database]
url = "sqlite::memory:"
[plugins.stats]
file = "stats.wasm"
[[routes]]
topics = ["in"]
plugins = ["stats"]
"#;

fn lane_with(
    plugin: Arc<Scripted>,
    max_attempts: u32,
) -> (Lane<MemoryPorts>, Arc<Shared<MemoryPorts>>) {
    let shared = shared_with(plugin, max_attempts, CONFIG);
    (
        Lane::new(shared.clone(), Arc::new(AtomicBool::new(false))),
        shared,
    )
}

fn shared_with(plugin: Arc<Scripted>, max_attempts: u32, config: &str) -> Arc<Shared<MemoryPorts>> {
    let loaded = Loaded::from_str(std::path::Path::new("test.toml"), config)
        .unwrap_or_else(|e| panic!("{e}"));
    let routes = RouteTable::new(&loaded.config.routes);
    let mut plugins = HashMap::new();
    plugins.insert(
        "stats".to_string(),
        PluginSlot {
            plugin,
            isolation: Isolation::Reuse,
            breaker: crate::breaker::BreakerConfig::default(),
        },
    );
    Arc::new(Shared {
        state: arc_swap::ArcSwap::from_pointee(RouterState { routes, plugins }),
        db: MemoryLedger::default(),
        dead_letters: ProducerSink::new(MemoryProducer::default(), "switchyard.dlq"),
        group: "g".into(),
        retry: RetryConfig {
            max_attempts,
            initial_backoff_ms: 10,
            max_backoff_ms: 100,
        },
        relay_wake: Arc::new(Notify::new()),
        metrics: Arc::new(Metrics::default()),
        breakers: Breakers::default(),
    })
}

fn event(offset: i64) -> Event {
    Event {
        topic: "in".into(),
        partition: 0,
        offset,
        payload: format!("{{\"n\":{offset}}}").into_bytes(),
        ..Default::default()
    }
}

fn message(n: i64) -> OutMessageFixture {
    OutMessageFixture(n)
}

struct OutMessageFixture(i64);

impl OutMessageFixture {
    fn build(self) -> crate::message::OutMessage {
        crate::message::OutMessage {
            plugin: String::new(),
            topic: "out".into(),
            key: None,
            payload: self.0.to_string().into_bytes(),
            headers: Vec::new(),
            partition: None,
        }
    }
}

fn done(e: &Event) -> Act {
    let mut act = Act::new(Outcome::Done, &format!("+{}", e.offset));
    act.messages.push(message(e.offset).build());
    act
}

#[tokio::test]
async fn done_commits_marker_effect_and_outbox_once_and_a_redelivery_is_a_duplicate() {
    let (mut lane, shared) = lane_with(Scripted::new("v1", |e, _| done(e)), 3);
    assert_eq!(lane.process(&event(1)).await, EventEnd::Completed);
    assert_eq!(lane.process(&event(1)).await, EventEnd::Completed);
    let c = shared.db.committed();
    assert_eq!(c.effects, vec!["+1"]);
    assert_eq!(c.outbox.len(), 1);
    assert_eq!(c.outbox[0].plugin, "stats");
    assert_eq!(
        c.markers
            .get(&("g".into(), "stats".into(), "pos:in/0/1".into()))
            .map(String::as_str),
        Some("handled")
    );
    assert_eq!(shared.metrics.events("stats", "done"), 1);
    assert_eq!(shared.metrics.events("stats", "duplicate"), 1);
}

#[tokio::test]
async fn retries_are_rolled_back_then_dead_lettered_with_the_format_headers() {
    let (mut lane, shared) = lane_with(
        Scripted::new("v1", |e, _| {
            Act::new(Outcome::Retry("busy".into()), &format!("+{}", e.offset))
        }),
        3,
    );
    assert_eq!(lane.process(&event(7)).await, EventEnd::Completed);
    let c = shared.db.committed();
    assert!(
        c.effects.is_empty(),
        "a retried attempt's effect survived: {:?}",
        c.effects
    );
    assert_eq!(
        c.markers.values().collect::<Vec<_>>(),
        vec!["dead-lettered"]
    );
    let letters = shared.dead_letters.producer().produced();
    assert_eq!(letters.len(), 1);
    let d = &letters[0];
    assert_eq!(d.topic, "switchyard.dlq");
    assert_eq!(d.header(dl::OUTCOME), Some("retry"));
    assert_eq!(d.header(dl::ATTEMPTS), Some("3"));
    assert_eq!(d.header(dl::ERROR), Some("retry after 3 attempts: busy"));
    assert_eq!(d.header(dl::DEDUPE_KEY), Some("pos:in/0/7"));
    assert_eq!(shared.metrics.events("stats", "dead_lettered"), 1);
    // A redelivery does not dead-letter it again.
    assert_eq!(lane.process(&event(7)).await, EventEnd::Completed);
    assert_eq!(shared.dead_letters.producer().produced().len(), 1);
}

#[tokio::test]
async fn a_rejection_is_dead_lettered_at_once_and_a_replay_runs_once() {
    let (mut lane, shared) = lane_with(
        Scripted::new("v1", |e, nth| {
            if nth == 1 {
                Act::new(Outcome::Rejected("no user".into()), "never")
            } else {
                done(e)
            }
        }),
        5,
    );
    lane.process(&event(3)).await;
    let letters = shared.dead_letters.producer().produced();
    assert_eq!(letters[0].header(dl::ATTEMPTS), Some("1"));
    assert_eq!(letters[0].header(dl::ERROR), Some("no user"));
    // The replay `switchyard dlq replay` would produce.
    let letter = dl::DeadLetter {
        partition: 0,
        offset: 0,
        key: None,
        value: letters[0].payload.clone(),
        headers: letters[0].headers.clone(),
    };
    let mut replay =
        dl::replay_event(&letter, "stats", "pos:in/0/3").unwrap_or_else(|| panic!("no replay"));
    replay.offset = 90;
    lane.process(&replay).await;
    lane.process(&replay).await;
    let c = shared.db.committed();
    assert_eq!(c.effects, vec!["+90"], "the replay ran once");
    assert_eq!(
        c.markers
            .get(&("g".into(), "stats".into(), "pos:in/0/3".into()))
            .map(String::as_str),
        Some("replayed")
    );
}

#[tokio::test]
async fn outages_pause_without_spending_attempts() {
    let (mut lane, shared) = lane_with(Scripted::new("v1", |e, _| done(e)), 1);
    for op in [Op::Begin, Op::Mark, Op::Commit, Op::Begin] {
        shared
            .db
            .fail_next(op, LedgerError::Unavailable("connection refused".into()));
    }
    assert_eq!(lane.process(&event(1)).await, EventEnd::Completed);
    let c = shared.db.committed();
    assert_eq!(c.effects, vec!["+1"]);
    assert!(
        shared.dead_letters.producer().produced().is_empty(),
        "an outage dead-lettered a good event"
    );
}

#[tokio::test]
async fn a_broker_outage_delays_the_dead_letter_and_loses_nothing() {
    let (mut lane, shared) = lane_with(
        Scripted::new("v1", |_, _| Act::new(Outcome::Rejected("bad".into()), "x")),
        5,
    );
    shared.dead_letters.producer().refuse_next("broker down");
    shared.db.fail_next(
        Op::MarkDeadLettered,
        LedgerError::Unavailable("db down".into()),
    );
    assert_eq!(lane.process(&event(1)).await, EventEnd::Completed);
    assert_eq!(shared.dead_letters.producer().produced().len(), 1);
    assert_eq!(
        shared.db.committed().markers.values().collect::<Vec<_>>(),
        vec!["dead-lettered"]
    );
}

#[tokio::test]
async fn messages_that_cannot_be_queued_spend_attempts_then_dead_letter_as_failed() {
    let (mut lane, shared) = lane_with(Scripted::new("v1", |e, _| done(e)), 2);
    shared
        .db
        .fail_next(Op::Enqueue, LedgerError::Refused("value too long".into()));
    shared
        .db
        .fail_next(Op::Enqueue, LedgerError::Refused("value too long".into()));
    lane.process(&event(1)).await;
    let letters = shared.dead_letters.producer().produced();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].header(dl::OUTCOME), Some("failed"));
    assert!(shared.db.committed().effects.is_empty());
}

#[tokio::test]
async fn a_plain_batch_commits_once_and_a_failing_event_falls_back_to_one_by_one() {
    let (mut lane, shared) = lane_with(Scripted::new("v1", |e, _| done(e)), 3);
    let events: Vec<Event> = (0..5).map(event).collect();
    assert_eq!(lane.process_batch(&events).await, 5);
    let c = shared.db.committed();
    assert_eq!(c.commits, 1);
    assert_eq!(c.effects, vec!["+0", "+1", "+2", "+3", "+4"]);
    assert_eq!(c.outbox.len(), 5);

    let (mut lane, shared) = lane_with(
        Scripted::new("v1", |e, _| {
            if e.offset == 2 {
                Act::new(Outcome::Rejected("bad".into()), "never")
            } else {
                done(e)
            }
        }),
        3,
    );
    assert_eq!(lane.process_batch(&events).await, 5);
    let c = shared.db.committed();
    assert_eq!(
        c.effects,
        vec!["+0", "+1", "+3", "+4"],
        "each event's effect exactly once"
    );
    assert_eq!(c.outbox.len(), 4);
    assert_eq!(shared.dead_letters.producer().produced().len(), 1);
    // A batch with an event already handled: the duplicate is skipped.
    assert_eq!(lane.process_batch(&events[..2]).await, 2);
    assert_eq!(shared.db.committed().effects.len(), 4);
}

#[tokio::test]
async fn a_failed_statement_reruns_the_call_with_savepoints_without_spending_an_attempt() {
    // The first call (no savepoints) has a statement fail; the plugin
    // handles it and would go on, which only savepoints allow.
    let plugin = Scripted::new("v1", |e, nth| {
        if e.offset == 4 && nth == 1 {
            Act {
                db_failed: true,
                ..done(e)
            }
        } else {
            done(e)
        }
    });
    let (mut lane, shared) = lane_with(plugin.clone(), 1);
    assert_eq!(lane.process(&event(4)).await, EventEnd::Completed);
    let c = shared.db.committed();
    assert_eq!(c.effects, vec!["+4"], "the rerun's effect, once");
    assert_eq!(c.outbox.len(), 1, "the aborted call's message is gone");
    assert_eq!(
        plugin.calls_with_savepoints(),
        1,
        "the rerun had savepoints"
    );
    assert!(
        shared.dead_letters.producer().produced().is_empty(),
        "max_attempts = 1, yet nothing dead-lettered: the first call was no attempt"
    );
    assert_eq!(shared.metrics.events("stats", "done"), 1);
    // A plain event runs once, without savepoints.
    assert_eq!(lane.process(&event(5)).await, EventEnd::Completed);
    assert_eq!(plugin.calls_with_savepoints(), 1);
    assert_eq!(shared.db.committed().effects, vec!["+4", "+5"]);
}

#[tokio::test]
async fn a_cancelled_lane_abandons_the_event_and_commits_nothing() {
    let (mut lane, shared) = lane_with(
        Scripted::new("v1", |_, _| Act::new(Outcome::Retry("busy".into()), "x")),
        100,
    );
    lane.ctl.cancel.store(true, Ordering::Relaxed);
    assert_eq!(lane.process(&event(1)).await, EventEnd::Abandoned);
    assert_eq!(lane.process_batch(&[event(2), event(3)]).await, 0);
    assert_eq!(shared.db.committed().commits, 0);
    assert!(shared.dead_letters.producer().produced().is_empty());
}

#[tokio::test]
async fn an_open_circuit_parks_events_in_the_dead_letter_topic() {
    let (mut lane, shared) = lane_with(
        Scripted::new("v1", |_, _| {
            Act::new(
                Outcome::Failed(crate::outcome::Failure::Trap("unreachable".into())),
                "x",
            )
        }),
        1,
    );
    let failures = crate::breaker::BreakerConfig::default().failures;
    for n in 0..i64::from(failures) + 2 {
        lane.process(&event(n)).await;
    }
    let letters = shared.dead_letters.producer().produced();
    assert!(
        letters
            .iter()
            .any(|d| d.header(dl::OUTCOME) == Some(dl::PARKED)),
        "{letters:?}"
    );
    assert!(shared.metrics.events("stats", "parked") >= 1);
}

/// The offsets a partition reported as finished-below, in order.
#[derive(Clone, Default)]
struct Reported(Arc<std::sync::Mutex<Vec<i64>>>);

impl partition::Progress for Reported {
    fn finished_below(&mut self, next: i64) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(next);
    }
    fn batch_done(&mut self, _queued: usize) {}
}

impl Reported {
    fn all(&self) -> Vec<i64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn keyed(offset: i64, key: Option<&str>) -> Event {
    Event {
        key: key.map(|k| k.as_bytes().to_vec()),
        ..event(offset)
    }
}

/// Forty events over four keys, and one without a key at offset 20.
fn forty_keyed() -> Vec<Event> {
    (0..41)
        .map(|o| {
            let key = format!("k{}", o % 4);
            keyed(o, (o != 20).then_some(key.as_str()))
        })
        .collect()
}

/// Run `events` through one partition until they are all handled (or
/// `cancel` is set), with at most `concurrency` batches of `batch_size`.
async fn run_partition(
    shared: &Arc<Shared<MemoryPorts>>,
    events: Vec<Event>,
    concurrency: usize,
    batch_size: usize,
    cancel: Arc<AtomicBool>,
) -> Reported {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let reported = Reported::default();
    let run = tokio::spawn(partition::run(
        shared.clone(),
        cancel,
        rx,
        partition::PartitionLimits {
            buffer: 16,
            batch_size,
            concurrency,
        },
        Arc::new(tokio::sync::Semaphore::new(8)),
        reported.clone(),
    ));
    for e in events {
        if tx.send(e).await.is_err() {
            break;
        }
    }
    drop(tx);
    if let Err(e) = run.await {
        panic!("the partition's task failed: {e}");
    }
    reported
}

/// The offsets of the committed effects (`+<offset>`), in commit order.
fn effect_offsets(shared: &Shared<MemoryPorts>) -> Vec<i64> {
    shared
        .db
        .committed()
        .effects
        .iter()
        .filter_map(|e| e.strip_prefix('+')?.parse().ok())
        .collect()
}

#[tokio::test]
async fn key_order_runs_keys_side_by_side_and_keeps_each_key_s_order() {
    let plugin = Scripted::slow("v1", Duration::from_millis(3), |e, _| done(e));
    let shared = shared_with(plugin.clone(), 3, CONFIG);
    let reported = run_partition(&shared, forty_keyed(), 4, 2, Arc::default()).await;
    let committed = effect_offsets(&shared);
    let mut sorted = committed.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..41).collect::<Vec<_>>(),
        "each effect exactly once"
    );
    let at = |o: i64| committed.iter().position(|c| *c == o).unwrap_or(usize::MAX);
    for o in 0..41 {
        if o != 20 && o + 4 < 41 && o + 4 != 20 {
            assert!(at(o) < at(o + 4), "key k{}: {} after {}", o % 4, o, o + 4);
        }
    }
    assert!(
        (0..20).all(|o| at(o) < at(20)) && (21..41).all(|o| at(20) < at(o)),
        "the keyless event kept partition order: {committed:?}"
    );
    let most = plugin.most_running();
    assert!(
        (2..=4).contains(&most),
        "{most} calls at once; keys should run side by side, at most 4"
    );
    let reported = reported.all();
    assert!(reported.windows(2).all(|w| w[0] < w[1]), "{reported:?}");
    assert_eq!(reported.last(), Some(&41));
}

#[tokio::test]
async fn partition_order_runs_one_batch_at_a_time_in_offset_order() {
    let plugin = Scripted::slow("v1", Duration::from_millis(1), |e, _| done(e));
    let config = format!("{CONFIG}ordering = \"partition\"\n");
    let shared = shared_with(plugin.clone(), 3, &config);
    let reported = run_partition(&shared, forty_keyed(), 4, 3, Arc::default()).await;
    assert_eq!(effect_offsets(&shared), (0..41).collect::<Vec<_>>());
    assert_eq!(plugin.most_running(), 1);
    assert_eq!(reported.all().last(), Some(&41));
}

#[tokio::test]
async fn a_stuck_key_holds_the_offset_but_not_the_other_keys() {
    // k1's first event asks for a retry until the partition is
    // cancelled; the other keys finish meanwhile.
    let plugin = Scripted::slow("v1", Duration::from_millis(1), |e, _| {
        if e.offset == 1 {
            Act::new(Outcome::Retry("busy".into()), "never")
        } else {
            done(e)
        }
    });
    let shared = shared_with(plugin, 1000, CONFIG);
    let cancel = Arc::new(AtomicBool::new(false));
    let events: Vec<Event> = (0..40)
        .map(|o| keyed(o, Some(&format!("k{}", o % 4))))
        .collect();
    let watcher = {
        let shared = shared.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            // The other keys' 30 events.
            while effect_offsets(&shared).len() < 30 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            cancel.store(true, Ordering::Relaxed);
        })
    };
    let reported = run_partition(&shared, events, 4, 4, cancel).await;
    if let Err(e) = watcher.await {
        panic!("{e}");
    }
    let committed = effect_offsets(&shared);
    assert!(
        committed.iter().all(|o| o % 4 != 1),
        "k1 runs nothing after its stuck event: {committed:?}"
    );
    assert_eq!(committed.len(), 30);
    assert_eq!(
        reported.all().last().copied(),
        Some(1),
        "the offset stops at the unfinished event"
    );
    assert!(shared.dead_letters.producer().produced().is_empty());
}
