//! # stats-increment
//!
//! The statistics and quota part of seed 001's user service: counts the
//! interviews a user created and the storage their media use, and
//! announces when a quota is exceeded.
//!
//! ## Topics
//!
//! - `user.created` `{eventId, eventType, timestamp, userId, data}`: creates
//!   the user's `user_stats` row with the table's defaults (0 interviews,
//!   0 bytes, at most 10 interviews and 5 GiB); a row that already exists
//!   → **skipped**.
//! - `interview.created` `{eventId?, userId, data: {interviewId}}`:
//!   `interviews_created += 1`.
//! - `media.uploaded` `{eventId?, userId, data: {fileId, fileSize}}`:
//!   `storage_used += fileSize`; a `fileSize` that is missing, not an
//!   integer or negative → **rejected** (0 is accepted and changes nothing).
//! - Any other topic → **rejected**.
//!
//! `userId` missing or blank → **rejected**. An increment for a user
//! without a `user_stats` row → **retry**: its `user.created` may still be
//! on its way (another topic, another partition); the host retries with
//! backoff and dead-letters the event when the route's budget is spent.
//! `eventType`, `timestamp`, `interviewId` and `fileId` are not used.
//!
//! ## Counting once
//!
//! A redelivered record is deduplicated by the host (topic, partition,
//! offset). On top of that, like seed 001's `processed_events` table, an
//! event with an `eventId` first claims it in `stats_processed_events`; an
//! `eventId` already claimed (an upstream duplicate, even on another
//! topic) → **skipped**, counted once. The claim is part of the event's
//! transaction: when the event ends in `retry` or `rejected` it is rolled
//! back with everything else, so claiming it before learning that the user
//! is unknown is harmless.
//!
//! ## Quotas
//!
//! A quota is *crossed* by the one increment that takes the counter from
//! at most its limit to above it: `before <= limit && after > limit`
//! (limits are inclusive: 10 interviews are allowed, the 11th crosses).
//! That increment publishes one `user.quota_exceeded` `{userId, quota:
//! "interviews" | "storage", used, limit}` (key `userId`, `used` = the new
//! value). Later increments of a counter already over its limit publish
//! nothing, so there is exactly one message per crossing; raising the
//! limit above the usage re-arms it. `before` is derived from the value
//! the `UPDATE ... RETURNING` wrote (`after - increment`), which the
//! database computes under the row lock, so concurrent increments of the
//! same user cannot both believe they crossed.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use switchyard_plugin::{Event, Flow, Outcome, PluginInfo, db, publish, rejected, retry, skipped};

/// The topic of quota notifications.
const QUOTA_TOPIC: &str = "user.quota_exceeded";

/// `user_stats` and the idempotency table, PostgreSQL variant.
pub const POSTGRES_SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS user_stats (
    user_id            text PRIMARY KEY,
    interviews_created integer NOT NULL DEFAULT 0,
    storage_used       bigint NOT NULL DEFAULT 0,
    max_interviews     integer NOT NULL DEFAULT 10,
    max_storage        bigint NOT NULL DEFAULT 5368709120,
    updated_at         timestamptz
);
CREATE TABLE IF NOT EXISTS stats_processed_events (
    event_id     text PRIMARY KEY,
    topic        text NOT NULL,
    processed_at timestamptz NOT NULL
);
";

/// The same tables for SQLite.
pub const SQLITE_SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS user_stats (
    user_id            TEXT NOT NULL PRIMARY KEY,
    interviews_created INTEGER NOT NULL DEFAULT 0,
    storage_used       INTEGER NOT NULL DEFAULT 0,
    max_interviews     INTEGER NOT NULL DEFAULT 10,
    max_storage        INTEGER NOT NULL DEFAULT 5368709120,
    updated_at         TEXT
);
CREATE TABLE IF NOT EXISTS stats_processed_events (
    event_id     TEXT NOT NULL PRIMARY KEY,
    topic        TEXT NOT NULL,
    processed_at TEXT NOT NULL
);
";

/// The fields this plugin reads from any of its topics.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatsEvent {
    event_id: Option<String>,
    user_id: Option<String>,
    data: Option<Json>,
}

/// What an event asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// `user.created`: create the stats row.
    CreateUser,
    /// `interview.created`: one more interview.
    Interview,
    /// `media.uploaded`: this many more bytes.
    Storage(i64),
}

/// A checked event.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Command {
    /// The upstream `eventId`, when there is a non-blank one.
    event_id: Option<String>,
    user_id: String,
    action: Action,
}

/// Check an event of `topic`.
fn command(topic: &str, ev: StatsEvent) -> Result<Command, String> {
    let user_id = match ev.user_id {
        Some(u) if !u.trim().is_empty() => u,
        Some(_) => return Err(format!("{topic}: userId is empty")),
        None => return Err(format!("{topic}: missing userId")),
    };
    let action = match topic {
        "user.created" => Action::CreateUser,
        "interview.created" => Action::Interview,
        "media.uploaded" => {
            Action::Storage(file_size(ev.data.as_ref()).map_err(|e| format!("{topic}: {e}"))?)
        }
        other => {
            return Err(format!(
                "stats-increment does not handle topic {other:?} \
                 (expected user.created, interview.created or media.uploaded)"
            ));
        }
    };
    Ok(Command {
        event_id: ev.event_id.filter(|e| !e.trim().is_empty()),
        user_id,
        action,
    })
}

/// `data.fileSize`: a non-negative integer number of bytes.
fn file_size(data: Option<&Json>) -> Result<i64, String> {
    match data.and_then(|d| d.get("fileSize")) {
        None | Some(Json::Null) => Err("missing data.fileSize".to_string()),
        Some(Json::Number(n)) => match n.as_i64() {
            Some(size) if size >= 0 => Ok(size),
            Some(size) => Err(format!("data.fileSize {size} is negative")),
            None if n.as_u64().is_some() => Err(format!("data.fileSize {n} is too large")),
            None => Err(format!("data.fileSize {n} is not an integer")),
        },
        Some(other) => Err(format!(
            "data.fileSize must be a number of bytes, not {other}"
        )),
    }
}

/// `user.quota_exceeded`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
struct QuotaExceeded {
    user_id: String,
    quota: &'static str,
    used: i64,
    limit: i64,
}

/// Whether adding `added` to reach `after` crossed `limit` (see the crate
/// documentation): `before <= limit < after`.
fn crossed(after: i64, added: i64, limit: i64) -> bool {
    let before = after.saturating_sub(added);
    before <= limit && after > limit
}

/// Add `added` to `counter` (`interviews_created` or `storage_used`, whose
/// limit is `limit_column`) and publish a quota notification on a crossing.
fn increment(
    cmd: &Command,
    quota: &'static str,
    counter: &str,
    limit_column: &str,
    added: i64,
) -> Flow<Outcome> {
    let sql = format!(
        "UPDATE user_stats SET {counter} = {counter} + $1, updated_at = $2 \
         WHERE user_id = $3 RETURNING {counter}, {limit_column}"
    );
    let Some(row) = db::query_opt(
        &sql,
        &[added.into(), db::now(), cmd.user_id.as_str().into()],
    )?
    else {
        return Err(retry(format!(
            "no user_stats for user {} yet (its user.created may not have arrived)",
            cmd.user_id
        )));
    };
    let (Some(after), Some(limit)) = (row.int(counter), row.int(limit_column)) else {
        return Err(rejected(format!(
            "user_stats of {}: {counter}/{limit_column} did not come back as integers",
            cmd.user_id
        )));
    };
    if crossed(after, added, limit) {
        let notice = QuotaExceeded {
            user_id: cmd.user_id.clone(),
            quota,
            used: after,
            limit,
        };
        publish::json(QUOTA_TOPIC, Some(&cmd.user_id), &notice)?;
        switchyard_plugin::log::info(&format!(
            "user {} exceeded the {quota} quota: {after} > {limit}",
            cmd.user_id
        ));
    }
    Ok(Outcome::Done)
}

fn handle_event(ev: &Event) -> Flow<Outcome> {
    let payload: StatsEvent = ev.json()?;
    let cmd = command(&ev.topic, payload).map_err(rejected)?;

    if let Some(event_id) = &cmd.event_id {
        let claimed = db::exec(
            "INSERT INTO stats_processed_events (event_id, topic, processed_at) \
             VALUES ($1, $2, $3) ON CONFLICT (event_id) DO NOTHING",
            &[event_id.into(), ev.topic.as_str().into(), db::now()],
        )?;
        if claimed == 0 {
            return Ok(skipped(format!(
                "duplicate eventId {event_id}: already counted"
            )));
        }
    }

    match cmd.action {
        Action::CreateUser => {
            let created = db::exec(
                "INSERT INTO user_stats (user_id, updated_at) VALUES ($1, $2) \
                 ON CONFLICT (user_id) DO NOTHING",
                &[cmd.user_id.as_str().into(), db::now()],
            )?;
            if created == 0 {
                return Ok(skipped(format!(
                    "user_stats of {} already exist",
                    cmd.user_id
                )));
            }
            Ok(Outcome::Done)
        }
        Action::Interview => increment(
            &cmd,
            "interviews",
            "interviews_created",
            "max_interviews",
            1,
        ),
        Action::Storage(bytes) => increment(&cmd, "storage", "storage_used", "max_storage", bytes),
    }
}

struct StatsIncrement;

impl switchyard_plugin::Guest for StatsIncrement {
    fn describe() -> PluginInfo {
        switchyard_plugin::info(
            "stats-increment",
            env!("CARGO_PKG_VERSION"),
            vec![switchyard_plugin::migration(
                "0001-create-user-stats",
                POSTGRES_SCHEMA,
                SQLITE_SCHEMA,
            )],
        )
    }

    fn handle(ev: Event) -> Outcome {
        switchyard_plugin::run(|| handle_event(&ev))
    }
}

switchyard_plugin::export_plugin!(StatsIncrement);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cmd(topic: &str, v: Json) -> Result<Command, String> {
        command(topic, serde_json::from_value(v).unwrap())
    }

    #[test]
    fn user_created_is_decoded() {
        let c = cmd(
            "user.created",
            json!({
                "eventId": "e1", "eventType": "user.created", "timestamp": "2025-10-06T10:00:00Z",
                "userId": "u1", "data": {"keycloakId": "k", "email": "a@example.com", "fullName": "A"}
            }),
        )
        .unwrap();
        assert_eq!(
            c,
            Command {
                event_id: Some("e1".into()),
                user_id: "u1".into(),
                action: Action::CreateUser
            }
        );
    }

    #[test]
    fn event_id_is_optional() {
        let c = cmd(
            "interview.created",
            json!({"userId": "u1", "data": {"interviewId": "i1"}}),
        )
        .unwrap();
        assert_eq!(c.event_id, None);
        assert_eq!(c.action, Action::Interview);
        let c = cmd("interview.created", json!({"eventId": " ", "userId": "u1"})).unwrap();
        assert_eq!(c.event_id, None);
    }

    #[test]
    fn user_id_is_required() {
        assert!(
            cmd("interview.created", json!({"data": {}}))
                .unwrap_err()
                .contains("missing userId")
        );
        assert!(
            cmd("user.created", json!({"userId": ""}))
                .unwrap_err()
                .contains("userId is empty")
        );
        assert!(serde_json::from_value::<StatsEvent>(json!({"userId": 5})).is_err());
    }

    #[test]
    fn unknown_topic_is_refused() {
        assert!(
            cmd("user.deleted", json!({"userId": "u1"}))
                .unwrap_err()
                .contains("does not handle")
        );
    }

    #[test]
    fn file_size_rules() {
        let size = |v: Json| cmd("media.uploaded", json!({"userId": "u1", "data": v}));
        assert_eq!(
            size(json!({"fileId": "f", "fileSize": 1048576}))
                .unwrap()
                .action,
            Action::Storage(1_048_576)
        );
        assert_eq!(
            size(json!({"fileSize": 0})).unwrap().action,
            Action::Storage(0)
        );
        assert!(
            size(json!({"fileId": "f"}))
                .unwrap_err()
                .contains("missing data.fileSize")
        );
        assert!(
            size(json!({"fileSize": null}))
                .unwrap_err()
                .contains("missing")
        );
        assert!(
            size(json!({"fileSize": -1}))
                .unwrap_err()
                .contains("negative")
        );
        assert!(
            size(json!({"fileSize": 1.5}))
                .unwrap_err()
                .contains("not an integer")
        );
        assert!(
            size(json!({"fileSize": "12"}))
                .unwrap_err()
                .contains("number of bytes")
        );
        assert!(
            size(json!({"fileSize": u64::MAX}))
                .unwrap_err()
                .contains("too large")
        );
        assert!(
            cmd("media.uploaded", json!({"userId": "u1"}))
                .unwrap_err()
                .contains("missing data.fileSize")
        );
    }

    #[test]
    fn crossing_happens_once() {
        // 10 interviews allowed: the 10th does not cross, the 11th does, the 12th does not.
        assert!(!crossed(10, 1, 10));
        assert!(crossed(11, 1, 10));
        assert!(!crossed(12, 1, 10));
        // Storage: a jump over the limit crosses once.
        let gib5 = 5_368_709_120;
        assert!(crossed(gib5 + 100, 200, gib5));
        assert!(crossed(gib5 + 1, gib5 + 1, gib5));
        assert!(!crossed(gib5, 10, gib5));
        assert!(!crossed(gib5 + 300, 200, gib5));
        // Zero-byte uploads never cross.
        assert!(!crossed(gib5 + 1, 0, gib5));
        // A counter already above a lowered limit does not re-announce.
        assert!(!crossed(20, 1, 5));
    }

    #[test]
    fn quota_notice_shape() {
        let n = QuotaExceeded {
            user_id: "u1".into(),
            quota: "interviews",
            used: 11,
            limit: 10,
        };
        assert_eq!(
            serde_json::to_value(&n).unwrap(),
            json!({"userId": "u1", "quota": "interviews", "used": 11, "limit": 10})
        );
    }

    #[test]
    fn examples_chain_for_one_user() {
        let mut users = Vec::new();
        for text in [
            include_str!("../examples/user-created.json"),
            include_str!("../examples/interview-created.json"),
            include_str!("../examples/media-uploaded.json"),
        ] {
            let doc: Json = serde_json::from_str(text).unwrap();
            let c = command(
                doc["topic"].as_str().unwrap(),
                serde_json::from_value(doc["value"].clone()).unwrap(),
            )
            .unwrap();
            assert_eq!(doc["key"].as_str(), Some(c.user_id.as_str()));
            users.push(c.user_id);
        }
        assert!(users.windows(2).all(|w| w[0] == w[1]));
    }
}
