//! # profile-creation
//!
//! The profile microservice of seed 000 as a plugin: it answers
//! `create-user` requests with a profile id on `create-user-response`.
//!
//! ## Request (`create-user`)
//!
//! `{requestId, firstName, lastName, email, nationalCode, birthDate}`, with
//! `nationalCode` a JSON number and `birthDate` `"YYYY-MM-DD"`.
//!
//! ## Replies (`create-user-response`, key = `requestId`)
//!
//! - success: `{requestId, id, firstName, lastName, email, nationalCode,
//!   birthDate}`, `id` a UUID v4, `nationalCode` a number;
//! - error: `{requestId, error: {code, message}}` with `code`
//!   - `VALIDATION`: a field is missing or malformed; the message lists
//!     every bad field (`email`: `local@domain.tld` shape without spaces;
//!     `nationalCode`: an integer of exactly 10 digits, i.e. a number in
//!     1000000000..=9999999999, or a string of 10 digits so that codes with
//!     a leading zero can be sent; `birthDate`: a real calendar date in
//!     `YYYY-MM-DD`, not after tomorrow (UTC), to allow for time zones
//!     ahead of UTC; `firstName`/`lastName`: not blank);
//!   - `CONFLICT`: the email or national code belongs to a profile created
//!     by another request (the message names which).
//!
//! Every reply, errors included, ends the event with **done**: the reply is
//! the effect. Only a payload that is not JSON or has no usable `requestId`
//! (missing, not a string, blank) is **rejected**: there is no one to reply
//! to.
//!
//! ## Idempotency
//!
//! `requestId` is unique in `profiles`. A request whose `requestId` already
//! has a profile gets the same success reply again, built from the stored
//! row (same `id`), and nothing is inserted, whatever the rest of the
//! payload says. Requests that were answered with an error stored nothing,
//! so a repeat is validated again and, inputs being the same, answered the
//! same way. Emails are compared exactly as sent (the `UNIQUE` constraint's
//! rule), and names and emails are stored exactly as sent, so non-Latin
//! names such as "احمد" round-trip byte for byte. A national code sent as a
//! string is stored and answered as a number (`"0012345678"` → `12345678`).
//!
//! Two requests racing for the same email or national code on different
//! partitions: the loser's `INSERT` hits the unique constraint, the event is
//! retried (the SDK turns a constraint violation into `retry`) and on its
//! second run it finds the winner's row and answers `CONFLICT` (or the same
//! response, for the same `requestId`).
//!
//! ## NestJS request-reply
//!
//! When the request carries `kafka_replyTopic` and `kafka_correlationId`
//! headers (a NestJS `ClientKafka.send()`), the same JSON body is **also**
//! produced to `kafka_replyTopic`, on partition `kafka_replyPartition` when
//! it parses as an integer, without a key, with headers
//! `kafka_correlationId` (as received) and `kafka_nest-is-disposed` (whose
//! presence completes the caller's observable). Error replies use the same
//! body there too, **not** the `kafka_nest-err` header: a NestJS caller
//! thus receives `{requestId, error}` as a value, exactly what a
//! `create-user-response` consumer sees, instead of an exception carrying
//! a different shape. The reply topic must be granted to the plugin in the
//! routing config; a refused publish rejects the event (dead-letter,
//! replayable once the grant is fixed).

use serde::Serialize;
use serde_json::Value as Json;
use switchyard_plugin::db::{self, Row, Value};
use switchyard_plugin::publish::{self, Message};
use switchyard_plugin::{Event, Flow, Header, Outcome, PluginInfo, log, rejected, retry};

/// Topic of the replies.
const RESPONSE_TOPIC: &str = "create-user-response";

/// The `profiles` table, PostgreSQL variant.
pub const POSTGRES_SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS profiles (
    id            uuid PRIMARY KEY,
    request_id    text UNIQUE NOT NULL,
    first_name    text NOT NULL,
    last_name     text NOT NULL,
    email         text UNIQUE NOT NULL,
    national_code bigint UNIQUE NOT NULL,
    birth_date    date NOT NULL,
    created_at    timestamptz
);
";

/// The `profiles` table, SQLite variant (uuid and date as TEXT).
pub const SQLITE_SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS profiles (
    id            TEXT NOT NULL PRIMARY KEY,
    request_id    TEXT UNIQUE NOT NULL,
    first_name    TEXT NOT NULL,
    last_name     TEXT NOT NULL,
    email         TEXT UNIQUE NOT NULL,
    national_code INTEGER UNIQUE NOT NULL,
    birth_date    TEXT NOT NULL,
    created_at    TEXT
);
";

/// A validated `create-user` request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NewProfile {
    first_name: String,
    last_name: String,
    email: String,
    national_code: i64,
    birth_date: String,
}

/// The success reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
struct ProfileReply {
    request_id: String,
    id: String,
    first_name: String,
    last_name: String,
    email: String,
    national_code: i64,
    birth_date: String,
}

/// Why a request was not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum ErrorCode {
    Validation,
    Conflict,
}

impl ErrorCode {
    /// The code as it appears in replies.
    fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Validation => "VALIDATION",
            ErrorCode::Conflict => "CONFLICT",
        }
    }
}

/// `error` of an error reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct ErrorBody {
    code: ErrorCode,
    message: String,
}

/// The error reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorReply {
    request_id: String,
    error: ErrorBody,
}

/// The request's `requestId`, or why it has none usable.
fn request_id(body: &Json) -> Result<&str, String> {
    match body.get("requestId") {
        Some(Json::String(s)) if !s.trim().is_empty() => Ok(s),
        Some(Json::String(_)) => Err("create-user: requestId is empty".to_string()),
        Some(_) => Err("create-user: requestId must be a string".to_string()),
        None if body.is_object() => Err("create-user: missing requestId".to_string()),
        None => Err("create-user: payload must be a JSON object".to_string()),
    }
}

/// A string field, required and not blank.
fn name_field(body: &Json, field: &str, problems: &mut Vec<String>) -> String {
    match body.get(field) {
        Some(Json::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Json::String(_)) => {
            problems.push(format!("{field} must not be empty"));
            String::new()
        }
        None | Some(Json::Null) => {
            problems.push(format!("{field} is required"));
            String::new()
        }
        Some(_) => {
            problems.push(format!("{field} must be a string"));
            String::new()
        }
    }
}

/// A national code: a 10-digit integer, as a number or a string of digits.
fn national_code(value: Option<&Json>) -> Result<i64, String> {
    const BAD: &str = "nationalCode must be an integer of exactly 10 digits";
    match value {
        None | Some(Json::Null) => Err("nationalCode is required".to_string()),
        Some(Json::Number(n)) => match n.as_i64() {
            Some(code) if (1_000_000_000..=9_999_999_999).contains(&code) => Ok(code),
            _ => Err(BAD.to_string()),
        },
        Some(Json::String(s)) if s.len() == 10 && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse::<i64>().map_err(|_| BAD.to_string())
        }
        Some(_) => Err(BAD.to_string()),
    }
}

/// True in a Gregorian leap year.
fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// Days in `month` of `year`.
fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parse a strict `YYYY-MM-DD` calendar date into days since the epoch.
fn parse_date(s: &str) -> Result<i64, String> {
    let b = s.as_bytes();
    let shape_ok = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shape_ok {
        return Err("birthDate must be a date written YYYY-MM-DD".to_string());
    }
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(|t| t.parse::<i64>().ok());
    let (Some(year), Some(month), Some(day)) = (num(0..4), num(5..7), num(8..10)) else {
        return Err("birthDate must be a date written YYYY-MM-DD".to_string());
    };
    if year < 1 || !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(format!("birthDate {s} is not a calendar date"));
    }
    Ok(days_from_civil(year, month, day))
}

/// Check a birth date; `today` is the current UTC day since the epoch.
fn birth_date(value: Option<&Json>, today: i64) -> Result<String, String> {
    match value {
        None | Some(Json::Null) => Err("birthDate is required".to_string()),
        Some(Json::String(s)) => {
            let days = parse_date(s)?;
            if days > today + 1 {
                return Err(format!("birthDate {s} is in the future"));
            }
            Ok(s.clone())
        }
        Some(_) => Err("birthDate must be a string YYYY-MM-DD".to_string()),
    }
}

/// Validate a `create-user` request; the error lists every bad field.
fn validate(body: &Json, today: i64) -> Result<NewProfile, String> {
    let mut problems = Vec::new();
    let first_name = name_field(body, "firstName", &mut problems);
    let last_name = name_field(body, "lastName", &mut problems);
    let email = match body.get("email") {
        Some(Json::String(s)) if switchyard_plugin::validate::is_valid_email(s) => s.clone(),
        Some(Json::String(_)) => {
            problems.push("email is not a valid address (expected name@domain.tld)".to_string());
            String::new()
        }
        None | Some(Json::Null) => {
            problems.push("email is required".to_string());
            String::new()
        }
        Some(_) => {
            problems.push("email must be a string".to_string());
            String::new()
        }
    };
    let national_code = national_code(body.get("nationalCode")).unwrap_or_else(|e| {
        problems.push(e);
        0
    });
    let birth_date = birth_date(body.get("birthDate"), today).unwrap_or_else(|e| {
        problems.push(e);
        String::new()
    });
    if problems.is_empty() {
        Ok(NewProfile {
            first_name,
            last_name,
            email,
            national_code,
            birth_date,
        })
    } else {
        Err(problems.join("; "))
    }
}

/// Which of `new`'s unique values the existing rows already use.
fn conflict_message(
    new: &NewProfile,
    existing: &[(Option<String>, Option<i64>)],
) -> Option<String> {
    let email = existing
        .iter()
        .any(|(e, _)| e.as_deref() == Some(new.email.as_str()));
    let code = existing.iter().any(|(_, c)| *c == Some(new.national_code));
    match (email, code) {
        (true, true) => {
            Some("email and nationalCode are already used by another profile".to_string())
        }
        (true, false) => Some("email is already used by another profile".to_string()),
        (false, true) => Some("nationalCode is already used by another profile".to_string()),
        (false, false) => None,
    }
}

/// The success reply from a stored `profiles` row.
fn reply_from_row(request_id: &str, row: &Row) -> Result<ProfileReply, String> {
    let text = |col: &str| {
        row.text(col)
            .ok_or_else(|| format!("profiles row of request {request_id}: no usable {col}"))
    };
    Ok(ProfileReply {
        request_id: request_id.to_string(),
        id: text("id")?,
        first_name: text("first_name")?,
        last_name: text("last_name")?,
        email: text("email")?,
        national_code: row.int("national_code").ok_or_else(|| {
            format!("profiles row of request {request_id}: no usable national_code")
        })?,
        birth_date: text("birth_date")?,
    })
}

/// Where a NestJS `ClientKafka.send()` waits for its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NestReply {
    topic: String,
    correlation_id: String,
    partition: Option<i32>,
}

/// The NestJS reply target from the request's `kafka_*` headers. `Err`
/// carries a warning: the headers are there but unusable.
fn nest_reply(
    reply_topic: Option<&str>,
    correlation_id: Option<&str>,
    reply_partition: Option<&str>,
) -> Result<Option<NestReply>, String> {
    let Some(topic) = reply_topic.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let Some(correlation_id) = correlation_id else {
        return Err(format!(
            "kafka_replyTopic {topic} without kafka_correlationId: no NestJS reply sent"
        ));
    };
    Ok(Some(NestReply {
        topic: topic.to_string(),
        correlation_id: correlation_id.to_string(),
        partition: reply_partition.and_then(|p| p.trim().parse::<i32>().ok()),
    }))
}

/// The message answering a NestJS caller.
fn nest_message(target: &NestReply, payload: Vec<u8>) -> Message {
    Message {
        topic: target.topic.clone(),
        key: None,
        payload,
        headers: vec![
            Header {
                name: "kafka_correlationId".to_string(),
                value: Some(target.correlation_id.as_bytes().to_vec()),
            },
            Header {
                name: "kafka_nest-is-disposed".to_string(),
                value: Some(b"1".to_vec()),
            },
        ],
        partition: target.partition,
    }
}

/// Publish `body` on `create-user-response` and, for NestJS callers, on
/// their reply topic.
fn reply<T: Serialize>(ev: &Event, request_id: &str, body: &T) -> Flow<()> {
    let payload = serde_json::to_vec(body)
        .map_err(|e| rejected(format!("create-user: reply not serialisable: {e}")))?;
    publish::send(&Message {
        topic: RESPONSE_TOPIC.to_string(),
        key: Some(request_id.as_bytes().to_vec()),
        payload: payload.clone(),
        headers: Vec::new(),
        partition: None,
    })?;
    match nest_reply(
        ev.header("kafka_replyTopic"),
        ev.header("kafka_correlationId"),
        ev.header("kafka_replyPartition"),
    ) {
        Ok(Some(target)) => {
            if target.partition.is_none() && ev.header("kafka_replyPartition").is_some() {
                log::warn(
                    "kafka_replyPartition is not an integer: the producer picks the partition",
                );
            }
            publish::send(&nest_message(&target, payload))?;
        }
        Ok(None) => {}
        Err(warning) => log::warn(&warning),
    }
    Ok(())
}

/// Answer with an error reply; the event is done.
fn reply_error(ev: &Event, request_id: &str, code: ErrorCode, message: String) -> Flow<Outcome> {
    log::info(&format!(
        "request {request_id}: {}: {message}",
        code.as_str()
    ));
    let body = ErrorReply {
        request_id: request_id.to_string(),
        error: ErrorBody { code, message },
    };
    reply(ev, request_id, &body)?;
    Ok(Outcome::Done)
}

/// A random (v4) UUID in hyphenated form, from WASI randomness.
fn new_profile_id() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a profile id: {e}"))?;
    Ok(uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string())
}

/// Today as days since 1970-01-01, UTC.
fn today() -> i64 {
    switchyard_plugin::now_micros().div_euclid(86_400_000_000)
}

fn create_user(ev: &Event) -> Flow<Outcome> {
    let body: Json = ev.json()?;
    let request_id = request_id(&body).map_err(rejected)?;

    if let Some(row) = db::query_opt(
        "SELECT id, first_name, last_name, email, national_code, birth_date \
         FROM profiles WHERE request_id = $1",
        &[request_id.into()],
    )? {
        let again = reply_from_row(request_id, &row).map_err(rejected)?;
        log::info(&format!(
            "request {request_id} already served: profile {} sent again",
            again.id
        ));
        reply(ev, request_id, &again)?;
        return Ok(Outcome::Done);
    }

    let new = match validate(&body, today()) {
        Ok(new) => new,
        Err(message) => return reply_error(ev, request_id, ErrorCode::Validation, message),
    };

    let taken = db::query(
        "SELECT email, national_code FROM profiles WHERE email = $1 OR national_code = $2",
        &[new.email.as_str().into(), new.national_code.into()],
    )?;
    let existing: Vec<(Option<String>, Option<i64>)> = taken
        .rows
        .into_iter()
        .map(|cells| {
            let row = Row {
                columns: taken.columns.clone(),
                cells,
            };
            (row.text("email"), row.int("national_code"))
        })
        .collect();
    if let Some(message) = conflict_message(&new, &existing) {
        return reply_error(ev, request_id, ErrorCode::Conflict, message);
    }

    let id = new_profile_id().map_err(retry)?;
    db::exec(
        "INSERT INTO profiles (id, request_id, first_name, last_name, email, national_code, \
         birth_date, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            Value::Uuid(id.clone()),
            request_id.into(),
            new.first_name.as_str().into(),
            new.last_name.as_str().into(),
            new.email.as_str().into(),
            new.national_code.into(),
            Value::Date(new.birth_date.clone()),
            db::now(),
        ],
    )?;
    log::info(&format!("request {request_id}: profile {id} created"));
    let body = ProfileReply {
        request_id: request_id.to_string(),
        id,
        first_name: new.first_name,
        last_name: new.last_name,
        email: new.email,
        national_code: new.national_code,
        birth_date: new.birth_date,
    };
    reply(ev, request_id, &body)?;
    Ok(Outcome::Done)
}

struct ProfileCreation;

impl switchyard_plugin::Guest for ProfileCreation {
    fn describe() -> PluginInfo {
        switchyard_plugin::info(
            "profile-creation",
            env!("CARGO_PKG_VERSION"),
            vec![switchyard_plugin::migration(
                "0001-create-profiles",
                POSTGRES_SCHEMA,
                SQLITE_SCHEMA,
            )],
        )
    }

    fn handle(ev: Event) -> Outcome {
        switchyard_plugin::run(|| match ev.topic.as_str() {
            "create-user" => create_user(&ev),
            other => Err(rejected(format!(
                "profile-creation does not handle topic {other:?} (expected create-user)"
            ))),
        })
    }
}

switchyard_plugin::export_plugin!(ProfileCreation);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    /// 2024-06-01.
    const TODAY: i64 = 19_875;

    fn seed_request() -> Json {
        json!({
            "requestId": "3f2b8c1e-9a47-4d6b-8e0f-5c1a2b3d4e5f",
            "firstName": "احمد",
            "lastName": "محمدی",
            "email": "ahmad@example.com",
            "nationalCode": 1234567890,
            "birthDate": "1990-01-01"
        })
    }

    fn with(field: &str, value: Json) -> Json {
        let mut v = seed_request();
        v[field] = value;
        v
    }

    fn without(field: &str) -> Json {
        let mut v = seed_request();
        v.as_object_mut().unwrap().remove(field);
        v
    }

    #[test]
    fn epoch_day_arithmetic() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2024, 6, 1), TODAY);
        assert_eq!(
            days_from_civil(2000, 3, 1) - days_from_civil(2000, 2, 28),
            2
        );
        assert_eq!(
            days_from_civil(1900, 3, 1) - days_from_civil(1900, 2, 28),
            1
        );
    }

    #[test]
    fn seed_request_is_valid() {
        let p = validate(&seed_request(), TODAY).unwrap();
        assert_eq!(
            p,
            NewProfile {
                first_name: "احمد".into(),
                last_name: "محمدی".into(),
                email: "ahmad@example.com".into(),
                national_code: 1_234_567_890,
                birth_date: "1990-01-01".into(),
            }
        );
    }

    #[test]
    fn request_id_rules() {
        assert_eq!(
            request_id(&seed_request()).unwrap(),
            "3f2b8c1e-9a47-4d6b-8e0f-5c1a2b3d4e5f"
        );
        assert!(
            request_id(&without("requestId"))
                .unwrap_err()
                .contains("missing")
        );
        assert!(
            request_id(&with("requestId", json!(42)))
                .unwrap_err()
                .contains("string")
        );
        assert!(
            request_id(&with("requestId", json!("  ")))
                .unwrap_err()
                .contains("empty")
        );
        assert!(request_id(&json!([1, 2])).unwrap_err().contains("object"));
    }

    #[test]
    fn national_code_rules() {
        let ok = |v: Json| national_code(Some(&v)).unwrap();
        let bad = |v: Json| national_code(Some(&v)).unwrap_err();
        assert_eq!(ok(json!(1234567890)), 1_234_567_890);
        assert_eq!(ok(json!(1000000000)), 1_000_000_000);
        assert_eq!(ok(json!(9999999999_i64)), 9_999_999_999);
        assert_eq!(ok(json!("0012345678")), 12_345_678);
        assert_eq!(ok(json!("1234567890")), 1_234_567_890);
        for v in [
            json!(123456789),
            json!(12345678901_i64),
            json!(-1234567890),
            json!(1234567890.5),
            json!(1234567890.0),
            json!("123456789"),
            json!("12345678901"),
            json!("12345 7890"),
            json!("+123456789"),
            json!(true),
        ] {
            assert!(bad(v.clone()).contains("10 digits"), "{v}");
        }
        assert!(national_code(None).unwrap_err().contains("required"));
        assert!(
            national_code(Some(&Json::Null))
                .unwrap_err()
                .contains("required")
        );
    }

    #[test]
    fn birth_date_rules() {
        let ok = |s: &str| birth_date(Some(&json!(s)), TODAY).unwrap();
        let bad = |s: &str| birth_date(Some(&json!(s)), TODAY).unwrap_err();
        assert_eq!(ok("1990-01-01"), "1990-01-01");
        assert_eq!(ok("2000-02-29"), "2000-02-29");
        assert_eq!(ok("1996-02-29"), "1996-02-29");
        assert_eq!(ok("2024-06-02"), "2024-06-02"); // tomorrow: a UTC+ time zone
        assert!(bad("1900-02-29").contains("not a calendar date"));
        assert!(bad("2023-02-29").contains("not a calendar date"));
        assert!(bad("1990-04-31").contains("not a calendar date"));
        assert!(bad("1990-13-01").contains("not a calendar date"));
        assert!(bad("1990-00-10").contains("not a calendar date"));
        assert!(bad("1990-01-00").contains("not a calendar date"));
        assert!(bad("0000-01-01").contains("not a calendar date"));
        assert!(bad("2024-06-03").contains("future"));
        for s in [
            "1990-1-01",
            "1990/01/01",
            "01-01-1990",
            "1990-01-01T00:00:00Z",
            "",
            "१९९०-०१-०१",
        ] {
            assert!(bad(s).contains("YYYY-MM-DD"), "{s}");
        }
        assert!(
            birth_date(Some(&json!(19900101)), TODAY)
                .unwrap_err()
                .contains("string")
        );
        assert!(birth_date(None, TODAY).unwrap_err().contains("required"));
    }

    #[test]
    fn names_must_not_be_blank() {
        assert!(
            validate(&with("firstName", json!("  ")), TODAY)
                .unwrap_err()
                .contains("firstName must not be empty")
        );
        assert!(
            validate(&without("lastName"), TODAY)
                .unwrap_err()
                .contains("lastName is required")
        );
        assert!(
            validate(&with("lastName", json!(7)), TODAY)
                .unwrap_err()
                .contains("lastName must be a string")
        );
    }

    #[test]
    fn email_must_have_a_shape() {
        let e = validate(&with("email", json!("ahmad@example")), TODAY).unwrap_err();
        assert!(e.starts_with("email is not a valid address"), "{e}");
        let e = validate(&with("email", json!("ahmad @example.com")), TODAY).unwrap_err();
        assert!(e.starts_with("email"), "{e}");
        assert!(
            validate(&without("email"), TODAY)
                .unwrap_err()
                .contains("email is required")
        );
    }

    #[test]
    fn all_problems_are_listed() {
        let e = validate(
            &json!({"requestId": "r", "firstName": "", "email": "x", "nationalCode": 12, "birthDate": "1990-02-30"}),
            TODAY,
        )
        .unwrap_err();
        for needle in [
            "firstName",
            "lastName",
            "email",
            "nationalCode",
            "birthDate",
        ] {
            assert!(e.contains(needle), "{e} lacks {needle}");
        }
    }

    #[test]
    fn conflicts_name_the_field() {
        let p = validate(&seed_request(), TODAY).unwrap();
        assert_eq!(conflict_message(&p, &[]), None);
        let e = conflict_message(&p, &[(Some("ahmad@example.com".into()), Some(1))]).unwrap();
        assert!(e.starts_with("email is"), "{e}");
        let e =
            conflict_message(&p, &[(Some("x@example.com".into()), Some(1_234_567_890))]).unwrap();
        assert!(e.starts_with("nationalCode is"), "{e}");
        let e = conflict_message(
            &p,
            &[
                (Some("ahmad@example.com".into()), Some(1)),
                (Some("x@example.com".into()), Some(1_234_567_890)),
            ],
        )
        .unwrap();
        assert!(e.starts_with("email and nationalCode"), "{e}");
        // Exact comparison, like the UNIQUE constraint.
        assert_eq!(
            conflict_message(&p, &[(Some("Ahmad@example.com".into()), Some(1))]),
            None
        );
    }

    #[test]
    fn replies_serialise_in_contract_shape() {
        let ok = ProfileReply {
            request_id: "r-1".into(),
            id: "0b9c4a52-2f0e-4c8e-9d3b-7f1a6e5d4c3b".into(),
            first_name: "احمد".into(),
            last_name: "محمدی".into(),
            email: "ahmad@example.com".into(),
            national_code: 1_234_567_890,
            birth_date: "1990-01-01".into(),
        };
        let text = serde_json::to_string(&ok).unwrap();
        assert_eq!(
            text,
            r#"{"requestId":"r-1","id":"0b9c4a52-2f0e-4c8e-9d3b-7f1a6e5d4c3b","firstName":"احمد","lastName":"محمدی","email":"ahmad@example.com","nationalCode":1234567890,"birthDate":"1990-01-01"}"#
        );
        // Persian names stay raw UTF-8, byte for byte.
        assert!(text.as_bytes().windows(8).any(|w| w == "احمد".as_bytes()));
        let err = ErrorReply {
            request_id: "r-2".into(),
            error: ErrorBody {
                code: ErrorCode::Conflict,
                message: "email is already used by another profile".into(),
            },
        };
        assert_eq!(
            serde_json::to_value(&err).unwrap(),
            json!({"requestId": "r-2", "error": {"code": "CONFLICT", "message": "email is already used by another profile"}})
        );
        assert_eq!(
            serde_json::to_value(ErrorCode::Validation).unwrap(),
            json!("VALIDATION")
        );
        for code in [ErrorCode::Validation, ErrorCode::Conflict] {
            assert_eq!(serde_json::to_value(code).unwrap(), json!(code.as_str()));
        }
    }

    #[test]
    fn reply_from_stored_row() {
        let columns = [
            "id",
            "first_name",
            "last_name",
            "email",
            "national_code",
            "birth_date",
        ]
        .map(String::from)
        .to_vec();
        // PostgreSQL: uuid and date cells.
        let pg = Row {
            columns: columns.clone(),
            cells: vec![
                Value::Uuid("0b9c4a52-2f0e-4c8e-9d3b-7f1a6e5d4c3b".into()),
                Value::Text("احمد".into()),
                Value::Text("محمدی".into()),
                Value::Text("ahmad@example.com".into()),
                Value::Int(1_234_567_890),
                Value::Date("1990-01-01".into()),
            ],
        };
        // SQLite: everything is text but the integer.
        let lite = Row {
            columns,
            cells: vec![
                Value::Text("0b9c4a52-2f0e-4c8e-9d3b-7f1a6e5d4c3b".into()),
                Value::Text("احمد".into()),
                Value::Text("محمدی".into()),
                Value::Text("ahmad@example.com".into()),
                Value::Int(1_234_567_890),
                Value::Text("1990-01-01".into()),
            ],
        };
        let a = reply_from_row("r-1", &pg).unwrap();
        assert_eq!(a, reply_from_row("r-1", &lite).unwrap());
        assert_eq!(a.id, "0b9c4a52-2f0e-4c8e-9d3b-7f1a6e5d4c3b");
        assert_eq!(a.national_code, 1_234_567_890);
        let broken = Row {
            columns: vec!["id".into()],
            cells: vec![Value::Null],
        };
        assert!(reply_from_row("r-1", &broken).unwrap_err().contains("id"));
    }

    #[test]
    fn nest_reply_headers() {
        assert_eq!(nest_reply(None, Some("c"), Some("0")), Ok(None));
        assert!(nest_reply(Some("create-user.reply"), None, Some("0")).is_err());
        let t = nest_reply(Some("create-user.reply"), Some("7f3e"), Some("2"))
            .unwrap()
            .unwrap();
        assert_eq!(t.partition, Some(2));
        let t = nest_reply(Some("create-user.reply"), Some("7f3e"), Some("x"))
            .unwrap()
            .unwrap();
        assert_eq!(t.partition, None);
        let t = nest_reply(Some("create-user.reply"), Some("7f3e"), None)
            .unwrap()
            .unwrap();
        let m = nest_message(&t, b"{}".to_vec());
        assert_eq!(m.topic, "create-user.reply");
        assert_eq!(m.key, None);
        assert_eq!(m.partition, None);
        let names: Vec<&str> = m.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["kafka_correlationId", "kafka_nest-is-disposed"]);
        assert_eq!(m.headers[0].value.as_deref(), Some(&b"7f3e"[..]));
    }

    #[test]
    fn profile_ids_are_uuid_v4() {
        let a = new_profile_id().unwrap();
        let b = new_profile_id().unwrap();
        assert_ne!(a, b);
        let u = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(u.get_version_num(), 4);
        assert_eq!(a.len(), 36);
    }

    #[test]
    fn examples_are_valid_requests() {
        for text in [
            include_str!("../examples/create-user.json"),
            include_str!("../examples/create-user-nestjs.json"),
        ] {
            let doc: Json = serde_json::from_str(text).unwrap();
            assert_eq!(doc["topic"], "create-user");
            if let Some(key) = doc["key"].as_str() {
                assert_eq!(request_id(&doc["value"]).unwrap(), key);
            }
            validate(&doc["value"], TODAY).unwrap();
        }
        let doc: Json =
            serde_json::from_str(include_str!("../examples/create-user-nestjs.json")).unwrap();
        let h = &doc["headers"];
        let t = nest_reply(
            h["kafka_replyTopic"].as_str(),
            h["kafka_correlationId"].as_str(),
            h["kafka_replyPartition"].as_str(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.partition, Some(0));
    }
}
