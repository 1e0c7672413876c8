//! The four plugins against DESIGN.md's contracts, with the seeds' own
//! payloads, on SQLite and on PostgreSQL: tables, columns, replies,
//! outcomes, and hostile inputs that must end as rejections with a reason.

mod common;

use common::{Harness, message_key, message_value};
use serde_json::{Value as Json, json};
use switchyard::capabilities::publish::Grants;
use switchyard::database::Backend;
use switchyard::limits::Limits;
use switchyard::runtime::{Invocation, Outcome};

fn assert_outcome(inv: &Invocation, kind: &str) {
    assert_eq!(
        inv.outcome.kind(),
        kind,
        "outcome {:?}, messages {:?}",
        inv.outcome,
        inv.messages
    );
}

fn reason(inv: &Invocation) -> String {
    inv.outcome.reason().unwrap_or_default()
}

// ───────────────────────────── role-mapping (seed 002) ─────────────────────

fn user_created(user_id: &str, user_type: &str, customer: Option<&str>) -> Json {
    json!({
        "userId": user_id,
        "name": "Amélie Durand",
        "email": format!("{}@boulangerie.fr", user_id.replace('|', ".")),
        "role": "user",
        "userType": user_type,
        "customerAccountId": customer,
        "customerName": "Boulangerie Durand SARL",
        "timestamp": "2024-05-14T09:30:00.000Z",
    })
}

/// role-mapping on a fresh database with one customer, `cust-1`.
async fn role_mapping(backend: Backend, build: &str) -> Harness {
    let h = Harness::new(build, backend).await;
    h.exec("INSERT INTO customers (id, name) VALUES ('cust-1', 'Boulangerie Durand SARL')")
        .await;
    h
}

async fn role_mapping_maps_the_four_user_types(backend: Backend, build: &str) {
    let mut h = role_mapping(backend, build).await;
    let expected = [
        ("SME_USER", "CUSTOMER_USER", "SME", false),
        ("SME_OWNER", "CUSTOMER_ADMIN", "SME", true),
        (
            "INSTITUTION_USER",
            "CUSTOMER_USER",
            "FINANCIAL_INSTITUTION",
            false,
        ),
        (
            "INSTITUTION_ADMIN",
            "CUSTOMER_ADMIN",
            "FINANCIAL_INSTITUTION",
            true,
        ),
    ];
    for (i, (event_type, ..)) in expected.iter().enumerate() {
        let inv = h
            .send(
                "USER_CREATED",
                None,
                &[],
                user_created(&format!("auth0|u{i}"), event_type, Some("cust-1")),
            )
            .await;
        assert_outcome(&inv, "done");
        assert!(inv.messages.is_empty(), "role-mapping publishes nothing");
    }
    let rows = h
        .rows("SELECT user_id, email, name, role, user_type, is_company_owner, customer_account_id, status FROM customer_users ORDER BY user_id")
        .await;
    assert_eq!(rows.len(), 4);
    for (i, (_, role, user_type, owner)) in expected.iter().enumerate() {
        let r = &rows[i];
        assert_eq!(r["user_id"], json!(format!("auth0|u{i}")));
        assert_eq!(r["email"], json!(format!("auth0.u{i}@boulangerie.fr")));
        assert_eq!(r["name"], json!("Amélie Durand"));
        assert_eq!(r["role"], json!(role));
        assert_eq!(r["user_type"], json!(user_type));
        assert_eq!(r["is_company_owner"], json!(owner));
        assert_eq!(r["customer_account_id"], json!("cust-1"));
        assert_eq!(r["status"], json!("ACTIVE"));
    }
    let stamps = h
        .rows("SELECT created_at, updated_at FROM customer_users WHERE created_at IS NULL OR updated_at IS NULL")
        .await;
    assert!(stamps.is_empty(), "created_at and updated_at are set");
}

async fn role_mapping_skips_and_rejects_per_contract(backend: Backend, build: &str) {
    let mut h = role_mapping(backend, build).await;
    let first = h
        .send(
            "USER_CREATED",
            None,
            &[],
            user_created("auth0|a", "SME_USER", Some("cust-1")),
        )
        .await;
    assert_outcome(&first, "done");

    // Existing user: skipped, nothing changes.
    let mut again = user_created("auth0|a", "SME_OWNER", Some("cust-1"));
    again["name"] = json!("Someone Else");
    let inv = h.send("USER_CREATED", None, &[], again).await;
    assert_outcome(&inv, "skipped");
    let row = &h
        .rows("SELECT name, role FROM customer_users WHERE user_id = 'auth0|a'")
        .await[0];
    assert_eq!(row["name"], json!("Amélie Durand"));
    assert_eq!(row["role"], json!("CUSTOMER_USER"));

    // Unknown customer: skipped with a warning, no row.
    h.options.record = true;
    let inv = h
        .send(
            "USER_CREATED",
            None,
            &[],
            user_created("auth0|b", "SME_USER", Some("cust-missing")),
        )
        .await;
    assert_outcome(&inv, "skipped");
    assert!(
        inv.logs
            .iter()
            .any(|l| l.level == "warn" && l.message.contains("cust-missing"))
    );
    h.options.record = false;

    // No customerAccountId: created without one.
    let inv = h
        .send(
            "USER_CREATED",
            None,
            &[],
            user_created("auth0|c", "INSTITUTION_USER", None),
        )
        .await;
    assert_outcome(&inv, "done");
    let row = &h
        .rows("SELECT customer_account_id FROM customer_users WHERE user_id = 'auth0|c'")
        .await[0];
    assert_eq!(row["customer_account_id"], Json::Null);

    // Unknown userType, missing userId or email: rejected.
    let inv = h
        .send(
            "USER_CREATED",
            None,
            &[],
            user_created("auth0|d", "SUPER_USER", Some("cust-1")),
        )
        .await;
    assert_outcome(&inv, "rejected");
    assert!(reason(&inv).contains("SUPER_USER"), "{}", reason(&inv));
    for field in ["userId", "email"] {
        let mut ev = user_created("auth0|e", "SME_USER", Some("cust-1"));
        ev.as_object_mut().map(|o| o.remove(field));
        let inv = h.send("USER_CREATED", None, &[], ev).await;
        assert_outcome(&inv, "rejected");
        assert!(reason(&inv).contains(field), "{field}: {}", reason(&inv));
    }
    assert_eq!(h.count("customer_users").await, 2);
}

async fn role_mapping_applies_status_and_role_changes(backend: Backend, build: &str) {
    let mut h = role_mapping(backend, build).await;
    assert_outcome(
        &h.send(
            "USER_CREATED",
            None,
            &[],
            user_created("auth0|a", "SME_USER", Some("cust-1")),
        )
        .await,
        "done",
    );
    let status = json!({
        "userId": "auth0|a", "previousStatus": "ACTIVE", "newStatus": "SUSPENDED",
        "userType": "SME_USER", "changedBy": "admin|1", "timestamp": "2024-05-15T10:00:00.000Z"
    });
    assert_outcome(
        &h.send("USER_STATUS_CHANGED", None, &[], status.clone())
            .await,
        "done",
    );
    let row = &h
        .rows("SELECT status FROM customer_users WHERE user_id = 'auth0|a'")
        .await[0];
    assert_eq!(row["status"], json!("SUSPENDED"));

    let mut unknown = status.clone();
    unknown["userId"] = json!("auth0|nobody");
    assert_outcome(
        &h.send("USER_STATUS_CHANGED", None, &[], unknown).await,
        "skipped",
    );

    let role = json!({
        "userId": "auth0|a", "previousRole": "SME_USER", "newRole": "SME_OWNER",
        "userType": "SME_USER", "changedBy": "admin|1", "timestamp": "2024-05-16T10:00:00.000Z"
    });
    assert_outcome(
        &h.send("USER_ROLE_CHANGED", None, &[], role.clone()).await,
        "done",
    );
    let row = &h
        .rows("SELECT role, user_type, is_company_owner, status FROM customer_users WHERE user_id = 'auth0|a'")
        .await[0];
    assert_eq!(row["role"], json!("CUSTOMER_ADMIN"));
    assert_eq!(row["user_type"], json!("SME"));
    assert_eq!(row["is_company_owner"], json!(true));
    assert_eq!(row["status"], json!("SUSPENDED"));

    let mut bad_role = role.clone();
    bad_role["newRole"] = json!("EMPEROR");
    let inv = h.send("USER_ROLE_CHANGED", None, &[], bad_role).await;
    assert_outcome(&inv, "rejected");
    assert!(reason(&inv).contains("EMPEROR"));
    let mut unknown = role;
    unknown["userId"] = json!("auth0|nobody");
    assert_outcome(
        &h.send("USER_ROLE_CHANGED", None, &[], unknown).await,
        "skipped",
    );
}

async fn role_mapping_takes_its_mapping_from_settings(backend: Backend, build: &str) {
    let settings = json!({"mapping": {
        "SME_USER": {"role": "VIEWER", "userType": "SME", "isCompanyOwner": false}
    }});
    let Json::Object(settings) = settings else {
        unreachable!()
    };
    let mut h = Harness::with_env(build, backend, settings, Limits::default(), Grants::all()).await;
    h.exec("INSERT INTO customers (id, name) VALUES ('cust-1', 'x')")
        .await;
    assert_outcome(
        &h.send(
            "USER_CREATED",
            None,
            &[],
            user_created("auth0|a", "SME_USER", Some("cust-1")),
        )
        .await,
        "done",
    );
    let row = &h.rows("SELECT role FROM customer_users").await[0];
    assert_eq!(row["role"], json!("VIEWER"));
}

// ───────────────────────── profile-creation (seed 000) ─────────────────────

fn create_user(request_id: &str, email: &str, national_code: i64) -> Json {
    json!({
        "requestId": request_id,
        "firstName": "احمد",
        "lastName": "محمدی",
        "email": email,
        "nationalCode": national_code,
        "birthDate": "1990-01-01",
    })
}

fn response_of(inv: &Invocation) -> Json {
    let msgs: Vec<_> = inv
        .messages
        .iter()
        .filter(|m| m.topic == "create-user-response")
        .collect();
    assert_eq!(
        msgs.len(),
        1,
        "one reply on create-user-response: {:?}",
        inv.messages
    );
    message_value(msgs[0])
}

async fn profile_creation_creates_and_replies(backend: Backend) {
    let mut h = Harness::new("profile-creation", backend).await;
    let inv = h
        .send(
            "create-user",
            None,
            &[("request-id", "http-req-1")],
            create_user("req-1", "ahmad@example.com", 1234567890),
        )
        .await;
    assert_outcome(&inv, "done");
    let reply = response_of(&inv);
    let id = reply["id"].as_str().unwrap_or_default().to_string();
    let parsed = uuid::Uuid::parse_str(&id).unwrap_or_else(|e| panic!("id {id:?}: {e}"));
    assert_eq!(parsed.get_version_num(), 4, "profile ids are UUID v4");
    assert_eq!(
        reply,
        json!({
            "requestId": "req-1", "id": id, "firstName": "احمد", "lastName": "محمدی",
            "email": "ahmad@example.com", "nationalCode": 1234567890, "birthDate": "1990-01-01"
        })
    );
    let m = &inv.messages[0];
    assert_eq!(message_key(m).as_deref(), Some("req-1"));
    assert_eq!(m.header_str("request-id"), Some("http-req-1"));

    let rows = h
        .rows("SELECT id, request_id, first_name, last_name, email, national_code, birth_date, created_at FROM profiles")
        .await;
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r["id"], json!(id));
    assert_eq!(r["request_id"], json!("req-1"));
    assert_eq!(r["first_name"], json!("احمد"));
    assert_eq!(r["last_name"], json!("محمدی"));
    assert_eq!(r["national_code"], json!(1234567890));
    assert_eq!(r["birth_date"], json!("1990-01-01"));
    assert!(!r["created_at"].is_null());

    // The same request again: the same reply, no new row.
    let again = h
        .send(
            "create-user",
            None,
            &[],
            create_user("req-1", "ahmad@example.com", 1234567890),
        )
        .await;
    assert_outcome(&again, "done");
    assert_eq!(response_of(&again), reply);
    assert_eq!(h.count("profiles").await, 1);
}

async fn profile_creation_answers_conflicts_and_validation(backend: Backend) {
    let mut h = Harness::new("profile-creation", backend).await;
    assert_outcome(
        &h.send(
            "create-user",
            None,
            &[],
            create_user("req-1", "ahmad@example.com", 1234567890),
        )
        .await,
        "done",
    );
    for (request, what) in [
        (
            create_user("req-2", "ahmad@example.com", 1111111111),
            "email",
        ),
        (
            create_user("req-3", "other@example.com", 1234567890),
            "nationalCode",
        ),
    ] {
        let inv = h.send("create-user", None, &[], request).await;
        assert_outcome(&inv, "done");
        let reply = response_of(&inv);
        assert_eq!(reply["error"]["code"], json!("CONFLICT"), "{what}: {reply}");
        assert!(reply["requestId"].is_string());
        assert!(
            reply["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        assert!(reply.get("id").is_none());
    }
    let mut bad_email = create_user("req-4", "not-an-email", 2222222222);
    let mut short_code = create_user("req-5", "e5@example.com", 123456789);
    let mut bad_date = create_user("req-6", "e6@example.com", 3333333333);
    let mut empty_name = create_user("req-7", "e7@example.com", 4444444444);
    bad_date["birthDate"] = json!("1990-02-30");
    empty_name["firstName"] = json!("  ");
    bad_email["email"] = json!("not-an-email");
    short_code["nationalCode"] = json!(123456789);
    for (request, field) in [
        (bad_email, "email"),
        (short_code, "nationalCode"),
        (bad_date, "birthDate"),
        (empty_name, "firstName"),
    ] {
        let inv = h.send("create-user", None, &[], request).await;
        assert_outcome(&inv, "done");
        let reply = response_of(&inv);
        assert_eq!(
            reply["error"]["code"],
            json!("VALIDATION"),
            "{field}: {reply}"
        );
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{field}: {message}");
    }
    assert_eq!(h.count("profiles").await, 1);

    let mut no_id = create_user("x", "e8@example.com", 5555555555);
    no_id.as_object_mut().map(|o| o.remove("requestId"));
    let inv = h.send("create-user", None, &[], no_id).await;
    assert_outcome(&inv, "rejected");
    assert!(inv.messages.is_empty());
}

async fn profile_creation_answers_nestjs_request_reply(backend: Backend) {
    let mut h = Harness::new("profile-creation", backend).await;
    let inv = h
        .send(
            "create-user",
            None,
            &[
                ("kafka_correlationId", "corr-42"),
                ("kafka_replyTopic", "create-user.reply"),
                ("kafka_replyPartition", "3"),
            ],
            create_user("req-n", "nest@example.com", 2345678901),
        )
        .await;
    assert_outcome(&inv, "done");
    let reply = response_of(&inv);
    let nest: Vec<_> = inv
        .messages
        .iter()
        .filter(|m| m.topic == "create-user.reply")
        .collect();
    assert_eq!(nest.len(), 1, "{:?}", inv.messages);
    let n = nest[0];
    assert_eq!(n.partition, Some(3));
    assert_eq!(n.header_str("kafka_correlationId"), Some("corr-42"));
    assert!(
        n.headers
            .iter()
            .any(|(name, _)| name == "kafka_nest-is-disposed")
    );
    assert_eq!(message_value(n), reply);
}

// ───────────────────────── stats-increment (seed 001) ──────────────────────

fn stats_user_created(event_id: &str, user: &str) -> Json {
    json!({
        "eventId": event_id, "eventType": "user.created", "timestamp": "2024-03-01T12:00:00Z",
        "userId": user,
        "data": {"keycloakId": "kc-1", "email": "u@example.com", "fullName": "Иван Петров"}
    })
}

fn interview_created(event_id: Option<&str>, user: &str) -> Json {
    let mut v =
        json!({"eventType": "interview.created", "userId": user, "data": {"interviewId": "iv-1"}});
    if let Some(id) = event_id {
        v["eventId"] = json!(id);
    }
    v
}

fn media_uploaded(event_id: Option<&str>, user: &str, size: Json) -> Json {
    let mut v = json!({"eventType": "media.uploaded", "userId": user, "data": {"fileId": "f-1", "fileSize": size}});
    if let Some(id) = event_id {
        v["eventId"] = json!(id);
    }
    v
}

async fn stats_counts_and_dedupes(backend: Backend) {
    let mut h = Harness::new("stats-increment", backend).await;
    assert_outcome(
        &h.send("user.created", None, &[], stats_user_created("e0", "u1"))
            .await,
        "done",
    );
    let row = &h
        .rows("SELECT user_id, interviews_created, storage_used, max_interviews, max_storage FROM user_stats")
        .await[0];
    assert_eq!(
        *row,
        json!({"user_id": "u1", "interviews_created": 0, "storage_used": 0, "max_interviews": 10, "max_storage": 5368709120i64})
    );
    assert_outcome(
        &h.send(
            "interview.created",
            None,
            &[],
            interview_created(Some("e1"), "u1"),
        )
        .await,
        "done",
    );
    // The same eventId again (an upstream duplicate) counts once.
    assert_outcome(
        &h.send(
            "interview.created",
            None,
            &[],
            interview_created(Some("e1"), "u1"),
        )
        .await,
        "skipped",
    );
    assert_outcome(
        &h.send(
            "interview.created",
            None,
            &[],
            interview_created(None, "u1"),
        )
        .await,
        "done",
    );
    assert_outcome(
        &h.send(
            "media.uploaded",
            None,
            &[],
            media_uploaded(Some("e2"), "u1", json!(1048576)),
        )
        .await,
        "done",
    );
    assert_outcome(
        &h.send(
            "media.uploaded",
            None,
            &[],
            media_uploaded(Some("e2"), "u1", json!(1048576)),
        )
        .await,
        "skipped",
    );
    let row = &h
        .rows("SELECT interviews_created, storage_used FROM user_stats")
        .await[0];
    assert_eq!(
        *row,
        json!({"interviews_created": 2, "storage_used": 1048576})
    );
    // user.created again: skipped, counters untouched.
    assert_outcome(
        &h.send("user.created", None, &[], stats_user_created("e9", "u1"))
            .await,
        "skipped",
    );
    assert_eq!(h.count("user_stats").await, 1);
}

async fn stats_retries_unknown_users_and_rejects_bad_sizes(backend: Backend) {
    let mut h = Harness::new("stats-increment", backend).await;
    let inv = h
        .send(
            "interview.created",
            None,
            &[],
            interview_created(Some("e1"), "ghost"),
        )
        .await;
    assert_outcome(&inv, "retry");
    assert!(reason(&inv).contains("ghost"));
    // The retry rolled back the dedupe marker: once the user exists, the
    // same event counts.
    assert_outcome(
        &h.send("user.created", None, &[], stats_user_created("e0", "ghost"))
            .await,
        "done",
    );
    assert_outcome(
        &h.send(
            "interview.created",
            None,
            &[],
            interview_created(Some("e1"), "ghost"),
        )
        .await,
        "done",
    );
    for size in [json!(-5), json!(null), json!("12"), json!(1.5)] {
        let inv = h
            .send(
                "media.uploaded",
                None,
                &[],
                media_uploaded(None, "ghost", size.clone()),
            )
            .await;
        assert_outcome(&inv, "rejected");
        assert!(
            reason(&inv).contains("fileSize"),
            "{size}: {}",
            reason(&inv)
        );
    }
    let mut missing = media_uploaded(None, "ghost", json!(1));
    missing["data"]
        .as_object_mut()
        .map(|o| o.remove("fileSize"));
    assert_outcome(
        &h.send("media.uploaded", None, &[], missing).await,
        "rejected",
    );
    let row = &h
        .rows("SELECT interviews_created, storage_used FROM user_stats")
        .await[0];
    assert_eq!(*row, json!({"interviews_created": 1, "storage_used": 0}));
}

async fn stats_publishes_each_quota_crossing_once(backend: Backend) {
    let mut h = Harness::new("stats-increment", backend).await;
    assert_outcome(
        &h.send("user.created", None, &[], stats_user_created("e0", "u1"))
            .await,
        "done",
    );
    h.exec("UPDATE user_stats SET max_interviews = 2, max_storage = 100")
        .await;
    let mut crossings = Vec::new();
    for i in 0..4 {
        let inv = h
            .send(
                "interview.created",
                None,
                &[],
                interview_created(Some(&format!("i{i}")), "u1"),
            )
            .await;
        assert_outcome(&inv, "done");
        crossings.extend(
            inv.messages
                .iter()
                .map(|m| (m.topic.clone(), message_key(m), message_value(m))),
        );
    }
    for (i, size) in [60, 60, 60].iter().enumerate() {
        let inv = h
            .send(
                "media.uploaded",
                None,
                &[],
                media_uploaded(Some(&format!("m{i}")), "u1", json!(size)),
            )
            .await;
        assert_outcome(&inv, "done");
        crossings.extend(
            inv.messages
                .iter()
                .map(|m| (m.topic.clone(), message_key(m), message_value(m))),
        );
    }
    assert_eq!(
        crossings,
        vec![
            (
                "user.quota_exceeded".to_string(),
                Some("u1".to_string()),
                json!({"userId": "u1", "quota": "interviews", "used": 3, "limit": 2})
            ),
            (
                "user.quota_exceeded".to_string(),
                Some("u1".to_string()),
                json!({"userId": "u1", "quota": "storage", "used": 120, "limit": 100})
            ),
        ]
    );
}

// ──────────────────── welcome-notification (seeds 003, 004) ───────────────

fn registered(user: &str, email: &str, version: i64) -> Json {
    json!({
        "event": "user_registered",
        "id": format!("evt-{user}"),
        "ts": 1696599999999i64,
        "v": version,
        "payload": {"user_id": user, "email": email, "full_name": "María José Fernández"},
        "source": "auth-svc"
    })
}

const REGISTERED_HEADERS: [(&str, &str); 4] = [
    ("event-type", "user_registered"),
    ("event-id", "evt-u1"),
    ("content-type", "application/json"),
    ("request-id", "req-abc-123"),
];

async fn welcome_sends_exactly_one_welcome(backend: Backend, build: &str) {
    let mut h = Harness::new(build, backend).await;
    let inv = h
        .send(
            "user.registered.v1",
            Some("u1"),
            &REGISTERED_HEADERS,
            registered("u1", "maria@example.com", 1),
        )
        .await;
    assert_outcome(&inv, "done");
    assert_eq!(inv.messages.len(), 1);
    let m = &inv.messages[0];
    assert_eq!(m.topic, "notification.send.email");
    assert_eq!(m.header_str("request-id"), Some("req-abc-123"));
    assert_eq!(
        message_value(m),
        json!({
            "to": "maria@example.com",
            "subject": "Welcome, María José Fernández!",
            "template": "welcome",
            "userId": "u1",
            "variables": {"name": "María José Fernández"}
        })
    );
    let row = &h
        .rows("SELECT user_id, email, source_event_id, sent_at FROM welcome_notifications")
        .await[0];
    assert_eq!(row["user_id"], json!("u1"));
    assert_eq!(row["email"], json!("maria@example.com"));
    assert_eq!(row["source_event_id"], json!("evt-u1"));
    assert!(!row["sent_at"].is_null());

    // The same user again, by either topic: no second welcome.
    let dup = h
        .send(
            "user.registered.v1",
            Some("u1"),
            &REGISTERED_HEADERS,
            registered("u1", "maria@example.com", 1),
        )
        .await;
    assert_outcome(&dup, "skipped");
    assert!(dup.messages.is_empty());
    let other = h
        .send(
            "notification.send.welcome",
            None,
            &[],
            json!({"userId": "u1", "email": "maria@example.com"}),
        )
        .await;
    assert_outcome(&other, "skipped");
    assert!(other.messages.is_empty());
    assert_eq!(h.count("welcome_notifications").await, 1);

    // Seed 003's gateway event for a new user.
    let inv = h
        .send(
            "notification.send.welcome",
            None,
            &[],
            json!({"userId": "u2", "email": "sam@example.com", "name": "Sam"}),
        )
        .await;
    assert_outcome(&inv, "done");
    let v = message_value(&inv.messages[0]);
    assert_eq!(v["to"], json!("sam@example.com"));
    assert_eq!(v["subject"], json!("Welcome, Sam!"));
    assert_eq!(v["variables"]["name"], json!("Sam"));
}

async fn welcome_rejects_bad_email_and_versions(backend: Backend, build: &str) {
    let mut h = Harness::new(build, backend).await;
    let inv = h
        .send(
            "user.registered.v1",
            None,
            &[],
            registered("u1", "not an email", 1),
        )
        .await;
    assert_outcome(&inv, "rejected");
    assert!(reason(&inv).contains("email"));
    let inv = h
        .send(
            "user.registered.v1",
            None,
            &[],
            registered("u1", "a@example.com", 2),
        )
        .await;
    assert_outcome(&inv, "rejected");
    assert!(reason(&inv).contains('2'), "{}", reason(&inv));
    let inv = h
        .send(
            "notification.send.welcome",
            None,
            &[],
            json!({"userId": "u3", "email": "@nope"}),
        )
        .await;
    assert_outcome(&inv, "rejected");
    assert_eq!(h.count("welcome_notifications").await, 0);
}

async fn welcome_subject_comes_from_settings(backend: Backend, build: &str) {
    let Json::Object(settings) = json!({"subject": "¡Hola {name}!"}) else {
        unreachable!()
    };
    let mut h = Harness::with_env(build, backend, settings, Limits::default(), Grants::all()).await;
    let inv = h
        .send(
            "notification.send.welcome",
            None,
            &[],
            json!({"userId": "u1", "email": "a@example.com", "name": "Lía"}),
        )
        .await;
    assert_outcome(&inv, "done");
    assert_eq!(
        message_value(&inv.messages[0])["subject"],
        json!("¡Hola Lía!")
    );
}

// ─────────────────────────────── hostile inputs ────────────────────────────

/// The seed plugins written in other languages: (Rust build, port).
const PORTS: [(&str, &str); 2] = [
    ("role-mapping", "role-mapping-ts"),
    ("welcome-notification", "welcome-notification-py"),
];

/// Malformed, truncated, wrongly typed and huge payloads end as `rejected`
/// with a reason: never a trap, never a commit.
async fn hostile_inputs_are_rejected_with_a_reason(backend: Backend) {
    let huge = "x".repeat(10 << 20);
    /// Plugin, topic, payloads, and the tables that must stay empty.
    type Case<'a> = (&'a str, &'a str, Vec<Vec<u8>>, &'a [&'a str]);
    let cases: Vec<Case> = vec![
        (
            "role-mapping",
            "USER_CREATED",
            vec![
                br#"{"userId": "u1", "email": "#.to_vec(),
                b"\xff\xfe not utf-8".to_vec(),
                b"[]".to_vec(),
                br#"{"userId": 42, "email": "a@b.c", "name": "n", "userType": "SME_USER"}"#.to_vec(),
                serde_json::to_vec(&json!({"userId": "u1", "email": "a@b.c", "name": huge, "userType": "SME_USER"})).unwrap_or_default(),
                Vec::new(),
            ],
            &["customer_users"],
        ),
        (
            "profile-creation",
            "create-user",
            vec![
                br#"{"requestId": "r1", "firstName": "#.to_vec(),
                b"not json at all".to_vec(),
                br#"{"requestId": 7}"#.to_vec(),
                br#"{"requestId": null, "email": "a@b.c"}"#.to_vec(),
                serde_json::to_vec(&json!({"requestId": huge})).unwrap_or_default(),
            ],
            &["profiles"],
        ),
        (
            "stats-increment",
            "media.uploaded",
            vec![
                br#"{"userId": "u1", "data": {"fileSize": "#.to_vec(),
                br#"{"userId": ["u1"], "data": {"fileId": "f", "fileSize": 1}}"#.to_vec(),
                br#"{"data": {"fileId": "f", "fileSize": 1}}"#.to_vec(),
                serde_json::to_vec(&json!({"userId": huge, "data": {"fileId": "f", "fileSize": 1}})).unwrap_or_default(),
            ],
            &["user_stats"],
        ),
        (
            "welcome-notification",
            "user.registered.v1",
            vec![
                br#"{"event": "user_registered", "v": 1, "payload": {"#.to_vec(),
                br#"{"event": "user_registered", "v": "1", "payload": {"user_id": "u", "email": "a@b.c"}}"#.to_vec(),
                br#"{"v": 1}"#.to_vec(),
                serde_json::to_vec(&registered("u1", "a@example.com", 1)).map(|mut v| { v.truncate(v.len() - 10); v }).unwrap_or_default(),
                serde_json::to_vec(&json!({"event": "user_registered", "id": "e", "ts": 1, "v": 1, "payload": {"user_id": "u1", "email": "a@example.com", "full_name": huge}, "source": "s"})).unwrap_or_default(),
            ],
            &["welcome_notifications"],
        ),
    ];
    // The ports to other languages take the same cases as their twins.
    let cases: Vec<Case> = cases
        .into_iter()
        .flat_map(|case| {
            let port = PORTS
                .iter()
                .find(|(rust, _)| *rust == case.0)
                .map(|(_, port)| (*port, case.1, case.2.clone(), case.3));
            std::iter::once(case).chain(port)
        })
        .collect();
    for (plugin, topic, payloads, tables) in cases {
        let mut h = Harness::new(plugin, backend).await;
        for payload in payloads {
            let preview = String::from_utf8_lossy(&payload[..payload.len().min(60)]).into_owned();
            let inv = h.send_raw(topic, None, &[], payload).await;
            assert_eq!(
                inv.outcome.kind(),
                "rejected",
                "{plugin} on {preview:?}: {:?}",
                inv.outcome
            );
            let why = reason(&inv);
            assert!(!why.trim().is_empty(), "{plugin}: a rejection says why");
            assert!(
                why.len() < 4096,
                "{plugin}: the reason is a line, not the payload ({} bytes)",
                why.len()
            );
        }
        for table in tables {
            assert_eq!(
                h.count(table).await,
                0,
                "{plugin}: nothing committed in {table}"
            );
        }
    }
}

/// Unknown topics are a routing mistake: rejected, never silently done.
async fn unknown_topics_are_rejected(backend: Backend) {
    for plugin in [
        "role-mapping",
        "profile-creation",
        "stats-increment",
        "welcome-notification",
        "role-mapping-ts",
        "welcome-notification-py",
    ] {
        let mut h = Harness::new(plugin, backend).await;
        let inv = h.send("some.other.topic", None, &[], json!({})).await;
        assert!(
            matches!(&inv.outcome, Outcome::Rejected(r) if r.contains("some.other.topic")),
            "{plugin}: {:?}",
            inv.outcome
        );
    }
}

/// The contract tests of a plugin, once per build of it (the Rust crate and
/// its port to another language) and per backend.
macro_rules! per_build {
    ($($build:ident = $file:literal: [$($name:ident),* $(,)?]);* $(;)?) => {
        $(
            mod $build {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        super::$name(switchyard::database::Backend::Sqlite, $file).await
                    }
                )*
                mod postgres {
                    $(
                        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                        async fn $name() {
                            super::super::$name(switchyard::database::Backend::Postgres, $file).await
                        }
                    )*
                }
            }
        )*
    };
}

per_build! {
    role_mapping_rust = "role-mapping": [
        role_mapping_maps_the_four_user_types,
        role_mapping_skips_and_rejects_per_contract,
        role_mapping_applies_status_and_role_changes,
        role_mapping_takes_its_mapping_from_settings,
    ];
    role_mapping_typescript = "role-mapping-ts": [
        role_mapping_maps_the_four_user_types,
        role_mapping_skips_and_rejects_per_contract,
        role_mapping_applies_status_and_role_changes,
        role_mapping_takes_its_mapping_from_settings,
    ];
    welcome_rust = "welcome-notification": [
        welcome_sends_exactly_one_welcome,
        welcome_rejects_bad_email_and_versions,
        welcome_subject_comes_from_settings,
    ];
    welcome_python = "welcome-notification-py": [
        welcome_sends_exactly_one_welcome,
        welcome_rejects_bad_email_and_versions,
        welcome_subject_comes_from_settings,
    ];
}

on_both_backends!(
    profile_creation_creates_and_replies,
    profile_creation_answers_conflicts_and_validation,
    profile_creation_answers_nestjs_request_reply,
    stats_counts_and_dedupes,
    stats_retries_unknown_users_and_rejects_bad_sizes,
    stats_publishes_each_quota_crossing_once,
    hostile_inputs_are_rejected_with_a_reason,
    unknown_topics_are_rejected,
);
