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
    let loaded = Loaded::from_str(std::path::Path::new("test.toml"), CONFIG)
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
    let shared = Arc::new(Shared {
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
    });
    (
        Lane::new(shared.clone(), Arc::new(AtomicBool::new(false))),
        shared,
    )
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
