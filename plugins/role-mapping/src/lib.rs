//! # role-mapping
//!
//! Keeps the customer service's `customer_users` table in step with the
//! user events that the business services (accounting, portfolio) emit
//! through NestJS `emit(pattern, data)`: the topic is the pattern and the
//! value is the JSON of the event (seed 002).
//!
//! ## Topics
//!
//! - `USER_CREATED` `{userId, email, name, role, userType,
//!   customerAccountId?, customerName?, timestamp}`:
//!   - `userId`, `email` or `name` missing or empty → **rejected**;
//!   - `userType` not in the mapping → **rejected**;
//!   - the user already exists → **skipped**, nothing changes;
//!   - `customerAccountId` given but not in `customers` → **skipped**, with
//!     a warning in the log;
//!   - otherwise one row is inserted: role, user type and company-owner
//!     flag from the mapping, status `ACTIVE`, `created_at` = `updated_at`
//!     = now → **done**.
//! - `USER_STATUS_CHANGED` `{userId, previousStatus, newStatus, userType,
//!   changedBy, timestamp}`: sets `status = newStatus` (and `updated_at`);
//!   unknown user → **skipped**; `userId`/`newStatus` missing → **rejected**.
//! - `USER_ROLE_CHANGED` `{userId, previousRole, newRole, userType,
//!   changedBy, timestamp}`: `newRole` is an `EventUserType`; role,
//!   user type and company-owner flag are remapped from it; unknown
//!   `newRole` → **rejected**; unknown user → **skipped**.
//! - Any other topic → **rejected** (a routing mistake).
//!
//! A `customerAccountId` that is absent, `null` or `""` stores
//! `customer_account_id = NULL` without any check. Event fields this plugin
//! does not use (`role`, `customerName`, `timestamp`, `previousStatus`,
//! `previousRole`, `changedBy`, and `userType` of the change events) are
//! ignored; `newStatus` is stored as sent (the status vocabulary belongs to
//! the emitting services).
//!
//! The payload is checked (required fields, known user type) before the
//! database is consulted: an invalid event is dead-lettered even when it
//! is about a user that already exists.
//!
//! ## Settings
//!
//! `{"mapping": {"<EventUserType>": {"role": "...", "userType": "...",
//! "isCompanyOwner": bool}, ...}}`. When `mapping` is absent the four
//! default rows apply (SME_USER, SME_OWNER, INSTITUTION_USER,
//! INSTITUTION_ADMIN); when it is given it **replaces** the defaults, so an
//! operator can also remove a user type. Every entry needs all three
//! fields and no others (a misspelt key is an error, not a silent
//! default). A malformed or empty mapping rejects the events that need it
//! (`USER_CREATED`, `USER_ROLE_CHANGED`; status changes do not read it)
//! with a reason naming the setting (`mapping.SME_USER.role`, ...).
//!
//! ## Tables
//!
//! `customers(id, name)` is read only (this plugin never creates
//! customers: `customerName` in the event is informational), and
//! `customer_users`, see [`POSTGRES_SCHEMA`].
//!
//! ## Examples
//!
//! `examples/*.json` hold one event each (`{topic, key, headers, value}`).
//! The two SME examples name customer
//! `cust-7d1e2f40-5a8b-4c3d-9e21-0f6a7b8c9d01`: insert it into `customers`
//! first (`examples/customers.sql` does), or they are skipped as "customer
//! not found"; the institution
//! examples have no customer account. The status and role changes are
//! about the SME user (`auth0|65f1c2a9e4b0a1b2c3d4e5f6`).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value as Json;
use switchyard_plugin::{Event, Flow, Outcome, PluginInfo, db, log, rejected, skipped};

/// The `customers` and `customer_users` tables, PostgreSQL variant.
pub const POSTGRES_SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS customers (
    id   text PRIMARY KEY,
    name text NOT NULL
);
CREATE TABLE IF NOT EXISTS customer_users (
    user_id             text PRIMARY KEY,
    email               text NOT NULL,
    name                text NOT NULL,
    role                text NOT NULL,
    user_type           text NOT NULL,
    is_company_owner    boolean NOT NULL,
    customer_account_id text NULL REFERENCES customers (id),
    status              text NOT NULL DEFAULT 'ACTIVE',
    created_at          timestamptz,
    updated_at          timestamptz
);
";

/// The same tables for SQLite (TEXT for timestamps, BOOLEAN stored 0/1).
pub const SQLITE_SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS customers (
    id   TEXT NOT NULL PRIMARY KEY,
    name TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS customer_users (
    user_id             TEXT NOT NULL PRIMARY KEY,
    email               TEXT NOT NULL,
    name                TEXT NOT NULL,
    role                TEXT NOT NULL,
    user_type           TEXT NOT NULL,
    is_company_owner    BOOLEAN NOT NULL,
    customer_account_id TEXT NULL REFERENCES customers (id),
    status              TEXT NOT NULL DEFAULT 'ACTIVE',
    created_at          TEXT,
    updated_at          TEXT
);
";

/// What one `EventUserType` maps to in the customer service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RoleMapping {
    /// Customer-service role, e.g. `CUSTOMER_ADMIN`.
    role: String,
    /// Customer-service user type, e.g. `SME`.
    user_type: String,
    /// Whether the user owns the company account.
    is_company_owner: bool,
}

/// EventUserType → mapping.
type Mapping = BTreeMap<String, RoleMapping>;

/// The default mapping (seed 002's table).
fn default_mapping() -> Mapping {
    [
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
    ]
    .into_iter()
    .map(|(event_type, role, user_type, owner)| {
        (
            event_type.to_string(),
            RoleMapping {
                role: role.to_string(),
                user_type: user_type.to_string(),
                is_company_owner: owner,
            },
        )
    })
    .collect()
}

/// Read the plugin settings (`{}` when there are none) into the mapping.
/// The error names the offending setting.
fn parse_settings(settings: &Json) -> Result<Mapping, String> {
    let Some(obj) = settings.as_object() else {
        return Err("invalid plugin settings: expected a JSON object".to_string());
    };
    let Some(raw) = obj.get("mapping") else {
        return Ok(default_mapping());
    };
    let Some(entries) = raw.as_object() else {
        return Err(
            "invalid plugin setting `mapping`: expected an object keyed by EventUserType"
                .to_string(),
        );
    };
    if entries.is_empty() {
        return Err("invalid plugin setting `mapping`: no user types".to_string());
    }
    let mut mapping = Mapping::new();
    for (event_type, entry) in entries {
        let m: RoleMapping = serde_json::from_value(entry.clone())
            .map_err(|e| format!("invalid plugin setting `mapping.{event_type}`: {e}"))?;
        if m.role.trim().is_empty() {
            return Err(format!(
                "invalid plugin setting `mapping.{event_type}.role`: empty"
            ));
        }
        if m.user_type.trim().is_empty() {
            return Err(format!(
                "invalid plugin setting `mapping.{event_type}.userType`: empty"
            ));
        }
        mapping.insert(event_type.clone(), m);
    }
    Ok(mapping)
}

/// The mapping of `event_type`, or the reason it has none.
fn lookup<'m>(
    mapping: &'m Mapping,
    field: &str,
    event_type: &str,
) -> Result<&'m RoleMapping, String> {
    mapping.get(event_type).ok_or_else(|| {
        let known: Vec<&str> = mapping.keys().map(String::as_str).collect();
        format!(
            "unknown {field} {event_type:?} (known: {})",
            known.join(", ")
        )
    })
}

/// `USER_CREATED` as emitted by the business services.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserCreated {
    user_id: Option<String>,
    email: Option<String>,
    name: Option<String>,
    user_type: Option<String>,
    customer_account_id: Option<String>,
}

/// `USER_STATUS_CHANGED`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserStatusChanged {
    user_id: Option<String>,
    new_status: Option<String>,
}

/// `USER_ROLE_CHANGED`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserRoleChanged {
    user_id: Option<String>,
    new_role: Option<String>,
}

/// A `USER_CREATED` event that passed validation.
#[derive(Debug, PartialEq, Eq)]
struct NewCustomerUser {
    user_id: String,
    email: String,
    name: String,
    mapping: RoleMapping,
    /// `None` when the event has no (or an empty) `customerAccountId`.
    customer_account_id: Option<String>,
}

/// A required, non-blank string field.
fn required(value: Option<String>, field: &str) -> Result<String, String> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v),
        Some(_) => Err(format!("{field} is empty")),
        None => Err(format!("missing {field}")),
    }
}

/// Check a `USER_CREATED` payload and resolve its mapping.
fn validate_created(ev: UserCreated, mapping: &Mapping) -> Result<NewCustomerUser, String> {
    let user_id = required(ev.user_id, "userId")?;
    let email = required(ev.email, "email")?;
    let name = required(ev.name, "name")?;
    let user_type = required(ev.user_type, "userType")?;
    let mapping = lookup(mapping, "userType", &user_type)?.clone();
    let customer_account_id = ev.customer_account_id.filter(|c| !c.trim().is_empty());
    Ok(NewCustomerUser {
        user_id,
        email,
        name,
        mapping,
        customer_account_id,
    })
}

fn user_created(ev: &Event, mapping: &Mapping) -> Flow<Outcome> {
    let payload: UserCreated = ev.json()?;
    let user =
        validate_created(payload, mapping).map_err(|e| rejected(format!("USER_CREATED: {e}")))?;

    if db::query_opt(
        "SELECT user_id FROM customer_users WHERE user_id = $1",
        &[user.user_id.as_str().into()],
    )?
    .is_some()
    {
        return Ok(skipped(format!("user {} already exists", user.user_id)));
    }

    if let Some(customer) = &user.customer_account_id
        && db::query_opt("SELECT id FROM customers WHERE id = $1", &[customer.into()])?.is_none()
    {
        let reason = format!(
            "customer {customer} of user {} not found; user not created",
            user.user_id
        );
        log::warn(&reason);
        return Ok(skipped(reason));
    }

    let now = db::now();
    let inserted = db::exec(
        "INSERT INTO customer_users (user_id, email, name, role, user_type, is_company_owner, \
         customer_account_id, status, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'ACTIVE', $8, $9) \
         ON CONFLICT (user_id) DO NOTHING",
        &[
            user.user_id.as_str().into(),
            user.email.as_str().into(),
            user.name.as_str().into(),
            user.mapping.role.as_str().into(),
            user.mapping.user_type.as_str().into(),
            user.mapping.is_company_owner.into(),
            user.customer_account_id.as_deref().into(),
            now.clone(),
            now,
        ],
    )?;
    if inserted == 0 {
        // Created concurrently between the check and the insert.
        return Ok(skipped(format!("user {} already exists", user.user_id)));
    }
    log::info(&format!(
        "user {} created as {}/{}",
        user.user_id, user.mapping.role, user.mapping.user_type
    ));
    Ok(Outcome::Done)
}

fn user_status_changed(ev: &Event) -> Flow<Outcome> {
    let payload: UserStatusChanged = ev.json()?;
    let bad = |e: String| rejected(format!("USER_STATUS_CHANGED: {e}"));
    let user_id = required(payload.user_id, "userId").map_err(bad)?;
    let status = required(payload.new_status, "newStatus").map_err(bad)?;
    let changed = db::exec(
        "UPDATE customer_users SET status = $1, updated_at = $2 WHERE user_id = $3",
        &[status.as_str().into(), db::now(), user_id.as_str().into()],
    )?;
    if changed == 0 {
        return Ok(skipped(format!(
            "unknown user {user_id}; status not changed"
        )));
    }
    Ok(Outcome::Done)
}

fn user_role_changed(ev: &Event, mapping: &Mapping) -> Flow<Outcome> {
    let payload: UserRoleChanged = ev.json()?;
    let bad = |e: String| rejected(format!("USER_ROLE_CHANGED: {e}"));
    let user_id = required(payload.user_id, "userId").map_err(bad)?;
    let new_role = required(payload.new_role, "newRole").map_err(bad)?;
    let m = lookup(mapping, "newRole", &new_role).map_err(bad)?;
    let changed = db::exec(
        "UPDATE customer_users SET role = $1, user_type = $2, is_company_owner = $3, \
         updated_at = $4 WHERE user_id = $5",
        &[
            m.role.as_str().into(),
            m.user_type.as_str().into(),
            m.is_company_owner.into(),
            db::now(),
            user_id.as_str().into(),
        ],
    )?;
    if changed == 0 {
        return Ok(skipped(format!("unknown user {user_id}; role not changed")));
    }
    Ok(Outcome::Done)
}

struct RoleMappingPlugin;

impl switchyard_plugin::Guest for RoleMappingPlugin {
    fn describe() -> PluginInfo {
        switchyard_plugin::info(
            "role-mapping",
            env!("CARGO_PKG_VERSION"),
            vec![switchyard_plugin::migration(
                "0001-create-customers-and-customer-users",
                POSTGRES_SCHEMA,
                SQLITE_SCHEMA,
            )],
        )
    }

    fn handle(ev: Event) -> Outcome {
        switchyard_plugin::run(|| match ev.topic.as_str() {
            "USER_CREATED" => user_created(&ev, &mapping()?),
            "USER_STATUS_CHANGED" => user_status_changed(&ev),
            "USER_ROLE_CHANGED" => user_role_changed(&ev, &mapping()?),
            other => Err(rejected(format!(
                "role-mapping does not handle topic {other:?} \
                 (expected USER_CREATED, USER_STATUS_CHANGED or USER_ROLE_CHANGED)"
            ))),
        })
    }
}

/// The mapping from the current settings; bad settings reject the event.
/// Only the events that use the mapping read it, so a broken mapping does
/// not hold up status changes.
fn mapping() -> Flow<Mapping> {
    let settings: Json = switchyard_plugin::config::settings().map_err(rejected)?;
    parse_settings(&settings).map_err(rejected)
}

switchyard_plugin::export_plugin!(RoleMappingPlugin);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn created(v: Json) -> UserCreated {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn default_mapping_is_seed_table() {
        let m = parse_settings(&json!({})).unwrap();
        assert_eq!(m.len(), 4);
        let row = |k: &str| m.get(k).unwrap().clone();
        assert_eq!(
            row("SME_USER"),
            RoleMapping {
                role: "CUSTOMER_USER".into(),
                user_type: "SME".into(),
                is_company_owner: false
            }
        );
        assert_eq!(
            row("SME_OWNER"),
            RoleMapping {
                role: "CUSTOMER_ADMIN".into(),
                user_type: "SME".into(),
                is_company_owner: true
            }
        );
        assert_eq!(
            row("INSTITUTION_USER"),
            RoleMapping {
                role: "CUSTOMER_USER".into(),
                user_type: "FINANCIAL_INSTITUTION".into(),
                is_company_owner: false
            }
        );
        assert_eq!(
            row("INSTITUTION_ADMIN"),
            RoleMapping {
                role: "CUSTOMER_ADMIN".into(),
                user_type: "FINANCIAL_INSTITUTION".into(),
                is_company_owner: true
            }
        );
    }

    #[test]
    fn settings_mapping_replaces_defaults() {
        let m = parse_settings(&json!({"mapping": {
            "PARTNER": {"role": "CUSTOMER_USER", "userType": "PARTNER", "isCompanyOwner": false}
        }}))
        .unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m["PARTNER"].user_type, "PARTNER");
    }

    #[test]
    fn bad_settings_name_the_setting() {
        let e = parse_settings(
            &json!({"mapping": {"SME_USER": {"role": "X", "isCompanyOwner": false}}}),
        )
        .unwrap_err();
        assert!(e.contains("mapping.SME_USER"), "{e}");
        assert!(e.contains("userType"), "{e}");
        let e = parse_settings(&json!({"mapping": ["SME_USER"]})).unwrap_err();
        assert!(e.contains("`mapping`"), "{e}");
        let e = parse_settings(&json!({"mapping": {"SME_USER": {"role": " ", "userType": "SME", "isCompanyOwner": false}}}))
            .unwrap_err();
        assert!(e.contains("mapping.SME_USER.role"), "{e}");
        let e = parse_settings(&json!({"mapping": {"SME_USER": {"role": "A", "userType": "SME", "isCompanyOwner": "no"}}}))
            .unwrap_err();
        assert!(e.contains("mapping.SME_USER"), "{e}");
        assert!(parse_settings(&json!("x")).is_err());
    }

    #[test]
    fn created_event_maps_user_type() {
        let m = default_mapping();
        let u = validate_created(
            created(json!({
                "userId": "auth0|65f1c2a9e4b0a1b2c3d4e5f6",
                "name": "Amélie Durand",
                "email": "amelie.durand@example.fr",
                "role": "user",
                "userType": "SME_OWNER",
                "customerAccountId": "cust-7d1e2f",
                "customerName": "Boulangerie Durand SARL",
                "timestamp": "2024-05-14T09:30:00.000Z"
            })),
            &m,
        )
        .unwrap();
        assert_eq!(u.user_id, "auth0|65f1c2a9e4b0a1b2c3d4e5f6");
        assert_eq!(u.name, "Amélie Durand");
        assert_eq!(u.mapping.role, "CUSTOMER_ADMIN");
        assert_eq!(u.mapping.user_type, "SME");
        assert!(u.mapping.is_company_owner);
        assert_eq!(u.customer_account_id.as_deref(), Some("cust-7d1e2f"));
    }

    #[test]
    fn created_event_without_customer_has_null_account() {
        let m = default_mapping();
        for account in [json!(null), json!("")] {
            let u = validate_created(
                created(
                    json!({"userId": "u1", "email": "a@example.com", "name": "A",
                               "userType": "INSTITUTION_USER", "customerAccountId": account}),
                ),
                &m,
            )
            .unwrap();
            assert_eq!(u.customer_account_id, None);
            assert_eq!(u.mapping.user_type, "FINANCIAL_INSTITUTION");
        }
        let u = validate_created(
            created(json!({"userId": "u1", "email": "a@example.com", "name": "A", "userType": "SME_USER"})),
            &m,
        )
        .unwrap();
        assert_eq!(u.customer_account_id, None);
    }

    #[test]
    fn created_event_rejections() {
        let m = default_mapping();
        let check = |v: Json, needle: &str| {
            let e = validate_created(created(v), &m).unwrap_err();
            assert!(e.contains(needle), "{e} should mention {needle}");
        };
        check(
            json!({"email": "a@example.com", "name": "A", "userType": "SME_USER"}),
            "userId",
        );
        check(
            json!({"userId": "", "email": "a@example.com", "name": "A", "userType": "SME_USER"}),
            "userId",
        );
        check(
            json!({"userId": "u1", "name": "A", "userType": "SME_USER"}),
            "email",
        );
        check(
            json!({"userId": "u1", "email": "a@example.com", "userType": "SME_USER"}),
            "name",
        );
        check(
            json!({"userId": "u1", "email": "a@example.com", "name": "A"}),
            "userType",
        );
        check(
            json!({"userId": "u1", "email": "a@example.com", "name": "A", "userType": "ROOT"}),
            "unknown userType \"ROOT\"",
        );
    }

    #[test]
    fn role_lookup_lists_known_types() {
        let e = lookup(&default_mapping(), "newRole", "GOD").unwrap_err();
        assert!(
            e.contains("INSTITUTION_ADMIN, INSTITUTION_USER, SME_OWNER, SME_USER"),
            "{e}"
        );
        assert!(lookup(&default_mapping(), "newRole", "SME_USER").is_ok());
    }

    #[test]
    fn examples_decode() {
        for (file, text) in [
            (
                "user-created-sme-user",
                include_str!("../examples/user-created-sme-user.json"),
            ),
            (
                "user-created-sme-owner",
                include_str!("../examples/user-created-sme-owner.json"),
            ),
            (
                "user-created-institution-user",
                include_str!("../examples/user-created-institution-user.json"),
            ),
            (
                "user-created-institution-admin",
                include_str!("../examples/user-created-institution-admin.json"),
            ),
        ] {
            let doc: Json = serde_json::from_str(text).unwrap();
            assert_eq!(doc["topic"], "USER_CREATED", "{file}");
            validate_created(created(doc["value"].clone()), &default_mapping()).unwrap();
        }
        let doc: Json =
            serde_json::from_str(include_str!("../examples/user-status-changed.json")).unwrap();
        assert_eq!(doc["topic"], "USER_STATUS_CHANGED");
        let s: UserStatusChanged = serde_json::from_value(doc["value"].clone()).unwrap();
        assert!(s.user_id.is_some() && s.new_status.is_some());
        let doc: Json =
            serde_json::from_str(include_str!("../examples/user-role-changed.json")).unwrap();
        assert_eq!(doc["topic"], "USER_ROLE_CHANGED");
        let r: UserRoleChanged = serde_json::from_value(doc["value"].clone()).unwrap();
        assert!(
            lookup(
                &default_mapping(),
                "newRole",
                r.new_role.as_deref().unwrap()
            )
            .is_ok()
        );
    }
}
