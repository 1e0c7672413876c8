//! # welcome-notification
//!
//! Sends every new user exactly one welcome e-mail request, whether the
//! user arrives through the auth service's `user.registered.v1` envelope
//! (seed 004) or the gateway's `notification.send.welcome` emit (seed 003),
//! and however many times.
//!
//! ## Topics
//!
//! - `user.registered.v1`: `{event, id, ts, v, payload: {user_id, email,
//!   full_name}, source}` with headers `event-type`, `event-id`,
//!   `content-type`, `request-id`.
//!   - `v` other than the number 1 (or missing) → **rejected**;
//!   - an `event` (or, without one, an `event-type` header) other than
//!     `user_registered` → **skipped**: not a registration;
//!   - the user comes from `payload`; `source_event_id` is the envelope's
//!     `id`, else the `event-id` header.
//! - `notification.send.welcome`: `{userId, email, name?}`;
//!   `source_event_id` is the `event-id` header, if any.
//! - Any other topic → **rejected**.
//!
//! A missing or blank user id, or a missing or malformed e-mail address
//! (see `switchyard_plugin::validate::is_valid_email`) → **rejected**.
//!
//! ## Effect
//!
//! `INSERT INTO welcome_notifications ... ON CONFLICT (user_id) DO
//! NOTHING`: when the user already has a row → **skipped** ("already
//! welcomed"), nothing published. Otherwise one `notification.send.email`
//! `{to, subject, template: "welcome", userId, variables: {name}}` with key
//! `userId` → **done**. The host adds the `event-id` header and carries the
//! incoming `request-id` header over; the plugin sets no headers itself.
//!
//! The name is the event's (`full_name` / `name`) exactly as sent; when it
//! is absent or blank, the local part of the e-mail address stands in
//! (`ana.garcia@example.com` → `ana.garcia`), so that neither the subject
//! nor the template's `name` variable is ever empty.
//!
//! ## Settings
//!
//! `{"subject": "Welcome, {name}!"}` (the default): every `{name}` is
//! replaced by the name. A subject that is not a non-blank string rejects
//! the event with a reason naming the setting.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use switchyard_plugin::{Event, Flow, Outcome, PluginInfo, db, log, publish, rejected, skipped};

/// The topic of e-mail requests.
const EMAIL_TOPIC: &str = "notification.send.email";

/// The default subject template.
const DEFAULT_SUBJECT: &str = "Welcome, {name}!";

/// The `welcome_notifications` table, PostgreSQL variant.
pub const POSTGRES_SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS welcome_notifications (
    user_id         text PRIMARY KEY,
    email           text NOT NULL,
    sent_at         timestamptz NOT NULL,
    source_event_id text
);
";

/// The `welcome_notifications` table, SQLite variant.
pub const SQLITE_SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS welcome_notifications (
    user_id         TEXT NOT NULL PRIMARY KEY,
    email           TEXT NOT NULL,
    sent_at         TEXT NOT NULL,
    source_event_id TEXT
);
";

/// The plugin's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    /// Subject template; `{name}` is replaced by the user's name.
    subject: String,
}

/// Read the settings (`{}` when there are none); the error names the
/// setting.
fn parse_settings(settings: &Json) -> Result<Settings, String> {
    let Some(obj) = settings.as_object() else {
        return Err("invalid plugin settings: expected a JSON object".to_string());
    };
    let subject = match obj.get("subject") {
        None => DEFAULT_SUBJECT.to_string(),
        Some(Json::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Json::String(_)) => {
            return Err("invalid plugin setting `subject`: empty".to_string());
        }
        Some(other) => {
            return Err(format!(
                "invalid plugin setting `subject`: expected a string, got {other}"
            ));
        }
    };
    Ok(Settings { subject })
}

/// `user.registered.v1`'s envelope.
#[derive(Debug, Deserialize)]
struct Envelope {
    event: Option<String>,
    id: Option<String>,
    v: Option<Json>,
    payload: Option<Registered>,
}

/// The envelope's payload.
#[derive(Debug, Deserialize)]
struct Registered {
    user_id: Option<String>,
    email: Option<String>,
    full_name: Option<String>,
}

/// `notification.send.welcome`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SendWelcome {
    user_id: Option<String>,
    email: Option<String>,
    name: Option<String>,
}

/// Who to welcome.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Welcome {
    user_id: String,
    email: String,
    /// The name from the event, when it has a non-blank one.
    name: Option<String>,
    source_event_id: Option<String>,
}

/// What an event asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Request {
    /// Welcome this user (if not done yet).
    Welcome(Welcome),
    /// The event is not for this plugin: skip with this reason.
    NotForUs(String),
}

/// Check the user id and e-mail address common to both topics.
fn welcome(
    user_id: Option<String>,
    email: Option<String>,
    name: Option<String>,
    source_event_id: Option<String>,
    user_field: &str,
) -> Result<Welcome, String> {
    let user_id = match user_id {
        Some(u) if !u.trim().is_empty() => u,
        Some(_) => return Err(format!("{user_field} is empty")),
        None => return Err(format!("missing {user_field}")),
    };
    let email = match email {
        Some(e) if switchyard_plugin::validate::is_valid_email(&e) => e,
        Some(e) => return Err(format!("invalid email address {e:?}")),
        None => return Err("missing email".to_string()),
    };
    Ok(Welcome {
        user_id,
        email,
        name: name.filter(|n| !n.trim().is_empty()),
        source_event_id: source_event_id.filter(|s| !s.is_empty()),
    })
}

/// Read a `user.registered.v1` envelope.
fn from_registered(
    env: Envelope,
    header_event_id: Option<&str>,
    header_event_type: Option<&str>,
) -> Result<Request, String> {
    match &env.v {
        Some(v) if v.as_i64() == Some(1) => {}
        Some(v) => return Err(format!("unsupported envelope version v={v} (expected 1)")),
        None => return Err("missing envelope version v".to_string()),
    }
    let event_type = env.event.as_deref().or(header_event_type);
    if let Some(t) = event_type
        && t != "user_registered"
    {
        return Ok(Request::NotForUs(format!(
            "event {t:?} is not a user_registered event"
        )));
    }
    let Some(p) = env.payload else {
        return Err("missing payload".to_string());
    };
    let source = env.id.or_else(|| header_event_id.map(str::to_string));
    welcome(p.user_id, p.email, p.full_name, source, "payload.user_id").map(Request::Welcome)
}

/// Read a `notification.send.welcome` event.
fn from_send_welcome(ev: SendWelcome, header_event_id: Option<&str>) -> Result<Request, String> {
    welcome(
        ev.user_id,
        ev.email,
        ev.name,
        header_event_id.map(str::to_string),
        "userId",
    )
    .map(Request::Welcome)
}

/// The name to greet: the event's, else the e-mail address's local part.
fn display_name(w: &Welcome) -> String {
    match &w.name {
        Some(n) => n.clone(),
        None => w
            .email
            .split_once('@')
            .map_or(w.email.as_str(), |(local, _)| local)
            .to_string(),
    }
}

/// `variables` of the e-mail request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Variables {
    name: String,
}

/// `notification.send.email`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
struct EmailRequest {
    to: String,
    subject: String,
    template: &'static str,
    user_id: String,
    variables: Variables,
}

/// The e-mail request welcoming `w`.
fn email_request(w: &Welcome, settings: &Settings) -> EmailRequest {
    let name = display_name(w);
    EmailRequest {
        to: w.email.clone(),
        subject: settings.subject.replace("{name}", &name),
        template: "welcome",
        user_id: w.user_id.clone(),
        variables: Variables { name },
    }
}

fn handle_event(ev: &Event) -> Flow<Outcome> {
    let settings_json: Json = switchyard_plugin::config::settings().map_err(rejected)?;
    let settings = parse_settings(&settings_json).map_err(rejected)?;
    let topic = ev.topic.as_str();
    let request = match topic {
        "user.registered.v1" => {
            from_registered(ev.json()?, ev.header("event-id"), ev.header("event-type"))
        }
        "notification.send.welcome" => from_send_welcome(ev.json()?, ev.header("event-id")),
        other => Err(format!(
            "welcome-notification does not handle topic {other:?} \
             (expected user.registered.v1 or notification.send.welcome)"
        )),
    }
    .map_err(|e| rejected(format!("{topic}: {e}")))?;
    let w = match request {
        Request::Welcome(w) => w,
        Request::NotForUs(reason) => return Ok(skipped(reason)),
    };

    let inserted = db::exec(
        "INSERT INTO welcome_notifications (user_id, email, sent_at, source_event_id) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (user_id) DO NOTHING",
        &[
            w.user_id.as_str().into(),
            w.email.as_str().into(),
            db::now(),
            w.source_event_id.as_deref().into(),
        ],
    )?;
    if inserted == 0 {
        return Ok(skipped(format!("user {} already welcomed", w.user_id)));
    }
    publish::json(EMAIL_TOPIC, Some(&w.user_id), &email_request(&w, &settings))?;
    log::info(&format!("welcome e-mail requested for user {}", w.user_id));
    Ok(Outcome::Done)
}

struct WelcomeNotification;

impl switchyard_plugin::Guest for WelcomeNotification {
    fn describe() -> PluginInfo {
        switchyard_plugin::info(
            "welcome-notification",
            env!("CARGO_PKG_VERSION"),
            vec![switchyard_plugin::migration(
                "0001-create-welcome-notifications",
                POSTGRES_SCHEMA,
                SQLITE_SCHEMA,
            )],
        )
    }

    fn handle(ev: Event) -> Outcome {
        switchyard_plugin::run(|| handle_event(&ev))
    }
}

switchyard_plugin::export_plugin!(WelcomeNotification);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope(v: Json) -> Envelope {
        serde_json::from_value(v).unwrap()
    }

    fn seed_envelope() -> Json {
        json!({
            "event": "user_registered",
            "id": "5b0e8c3a-1f2d-4e6a-9b7c-8d9e0f1a2b3c",
            "ts": 1696599999999_i64,
            "v": 1,
            "payload": {"user_id": "u-1", "email": "usuario@example.com", "full_name": "Nombre Completo"},
            "source": "auth-svc"
        })
    }

    fn welcome_of(r: Request) -> Welcome {
        match r {
            Request::Welcome(w) => w,
            Request::NotForUs(reason) => panic!("unexpected skip: {reason}"),
        }
    }

    #[test]
    fn settings_default_and_override() {
        assert_eq!(
            parse_settings(&json!({})).unwrap().subject,
            "Welcome, {name}!"
        );
        assert_eq!(
            parse_settings(&json!({"subject": "¡Bienvenido, {name}!"}))
                .unwrap()
                .subject,
            "¡Bienvenido, {name}!"
        );
        assert!(
            parse_settings(&json!({"subject": 3}))
                .unwrap_err()
                .contains("`subject`")
        );
        assert!(
            parse_settings(&json!({"subject": " "}))
                .unwrap_err()
                .contains("`subject`")
        );
        assert!(parse_settings(&json!([])).is_err());
    }

    #[test]
    fn registered_envelope_is_read() {
        let w =
            welcome_of(from_registered(envelope(seed_envelope()), Some("hdr-id"), None).unwrap());
        assert_eq!(
            w,
            Welcome {
                user_id: "u-1".into(),
                email: "usuario@example.com".into(),
                name: Some("Nombre Completo".into()),
                source_event_id: Some("5b0e8c3a-1f2d-4e6a-9b7c-8d9e0f1a2b3c".into()),
            }
        );
        // Without an envelope id, the event-id header is the source.
        let mut v = seed_envelope();
        v.as_object_mut().unwrap().remove("id");
        let w = welcome_of(from_registered(envelope(v), Some("hdr-id"), None).unwrap());
        assert_eq!(w.source_event_id.as_deref(), Some("hdr-id"));
    }

    #[test]
    fn envelope_version_must_be_1() {
        for v in [json!(2), json!("1"), json!(1.5), json!(null)] {
            let mut e = seed_envelope();
            e["v"] = v.clone();
            let err = from_registered(envelope(e), None, None).unwrap_err();
            assert!(err.contains("version"), "{v}: {err}");
        }
        let mut e = seed_envelope();
        e.as_object_mut().unwrap().remove("v");
        assert!(
            from_registered(envelope(e), None, None)
                .unwrap_err()
                .contains("missing envelope version")
        );
    }

    #[test]
    fn other_event_types_are_skipped() {
        let mut e = seed_envelope();
        e["event"] = json!("user_deleted");
        assert!(matches!(
            from_registered(envelope(e), None, None).unwrap(),
            Request::NotForUs(_)
        ));
        let mut e = seed_envelope();
        e.as_object_mut().unwrap().remove("event");
        assert!(matches!(
            from_registered(envelope(e.clone()), None, Some("user_login")).unwrap(),
            Request::NotForUs(_)
        ));
        assert!(matches!(
            from_registered(envelope(e), None, Some("user_registered")).unwrap(),
            Request::Welcome(_)
        ));
    }

    #[test]
    fn invalid_users_are_rejected() {
        let mut e = seed_envelope();
        e["payload"]["email"] = json!("not-an-email");
        assert!(
            from_registered(envelope(e), None, None)
                .unwrap_err()
                .contains("invalid email")
        );
        let mut e = seed_envelope();
        e["payload"].as_object_mut().unwrap().remove("user_id");
        assert!(
            from_registered(envelope(e), None, None)
                .unwrap_err()
                .contains("payload.user_id")
        );
        let mut e = seed_envelope();
        e.as_object_mut().unwrap().remove("payload");
        assert!(
            from_registered(envelope(e), None, None)
                .unwrap_err()
                .contains("missing payload")
        );
        let s: SendWelcome =
            serde_json::from_value(json!({"userId": "u", "email": "a b@example.com"})).unwrap();
        assert!(
            from_send_welcome(s, None)
                .unwrap_err()
                .contains("invalid email")
        );
        let s: SendWelcome = serde_json::from_value(json!({"email": "a@example.com"})).unwrap();
        assert!(
            from_send_welcome(s, None)
                .unwrap_err()
                .contains("missing userId")
        );
        let s: SendWelcome = serde_json::from_value(json!({"userId": "u"})).unwrap();
        assert!(
            from_send_welcome(s, None)
                .unwrap_err()
                .contains("missing email")
        );
    }

    #[test]
    fn send_welcome_is_read() {
        let s: SendWelcome =
            serde_json::from_value(json!({"userId": "clx1", "email": "ana.garcia@example.com"}))
                .unwrap();
        let w = welcome_of(from_send_welcome(s, Some("evt-9")).unwrap());
        assert_eq!(w.name, None);
        assert_eq!(w.source_event_id.as_deref(), Some("evt-9"));
        let s: SendWelcome = serde_json::from_value(
            json!({"userId": "clx1", "email": "ana.garcia@example.com", "name": " "}),
        )
        .unwrap();
        assert_eq!(welcome_of(from_send_welcome(s, None).unwrap()).name, None);
    }

    #[test]
    fn email_request_shape_and_subject() {
        let w = Welcome {
            user_id: "u-1".into(),
            email: "ahmad@example.com".into(),
            name: Some("احمد".into()),
            source_event_id: None,
        };
        let s = parse_settings(&json!({})).unwrap();
        assert_eq!(
            serde_json::to_value(email_request(&w, &s)).unwrap(),
            json!({
                "to": "ahmad@example.com",
                "subject": "Welcome, احمد!",
                "template": "welcome",
                "userId": "u-1",
                "variables": {"name": "احمد"}
            })
        );
        let no_name = Welcome { name: None, ..w };
        let s = Settings {
            subject: "{name}, {name}!".into(),
        };
        let r = email_request(&no_name, &s);
        assert_eq!(r.subject, "ahmad, ahmad!");
        assert_eq!(r.variables.name, "ahmad");
    }

    #[test]
    fn examples_are_welcomes() {
        let doc: Json =
            serde_json::from_str(include_str!("../examples/user-registered.json")).unwrap();
        assert_eq!(doc["topic"], "user.registered.v1");
        let h = &doc["headers"];
        for name in ["event-type", "event-id", "content-type", "request-id"] {
            assert!(h[name].is_string(), "{name}");
        }
        let w = welcome_of(
            from_registered(
                envelope(doc["value"].clone()),
                h["event-id"].as_str(),
                h["event-type"].as_str(),
            )
            .unwrap(),
        );
        assert_eq!(doc["key"].as_str(), Some(w.user_id.as_str()));
        assert_eq!(w.source_event_id.as_deref(), h["event-id"].as_str());

        let doc: Json =
            serde_json::from_str(include_str!("../examples/send-welcome.json")).unwrap();
        assert_eq!(doc["topic"], "notification.send.welcome");
        let s: SendWelcome = serde_json::from_value(doc["value"].clone()).unwrap();
        welcome_of(from_send_welcome(s, None).unwrap());
    }
}
