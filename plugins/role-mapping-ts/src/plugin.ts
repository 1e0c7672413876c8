// role-mapping, in TypeScript: keeps the customer service's
// `customer_users` table in step with the user events the business
// services emit through NestJS `emit(pattern, data)` (seed 002).
//
// The same contract as the Rust build (plugins/role-mapping, whose doc
// comment is the full text): USER_CREATED inserts a user with the role,
// user type and company-owner flag its `userType` maps to; an existing
// user, or an unknown customer, is skipped; a missing field or an unknown
// user type is rejected. USER_STATUS_CHANGED sets the status;
// USER_ROLE_CHANGED remaps role, user type and owner flag from `newRole`;
// an unknown user is skipped. Any other topic is rejected. The mapping
// comes from the `mapping` setting, which replaces the seed's four rows.

import {
  type Event,
  type Outcome,
  DecodeError,
  db,
  config,
  done,
  log,
  migration,
  plugin,
  rejected,
  skipped,
  stop,
  t,
} from "@switchyard/plugin";

const POSTGRES_SCHEMA = `
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
`;

const SQLITE_SCHEMA = `
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
`;

/** What one EventUserType maps to in the customer service. */
interface RoleMapping {
  role: string;
  userType: string;
  isCompanyOwner: boolean;
}

/** The seed's table. */
const DEFAULT_MAPPING: Record<string, RoleMapping> = {
  SME_USER: { role: "CUSTOMER_USER", userType: "SME", isCompanyOwner: false },
  SME_OWNER: { role: "CUSTOMER_ADMIN", userType: "SME", isCompanyOwner: true },
  INSTITUTION_USER: { role: "CUSTOMER_USER", userType: "FINANCIAL_INSTITUTION", isCompanyOwner: false },
  INSTITUTION_ADMIN: { role: "CUSTOMER_ADMIN", userType: "FINANCIAL_INSTITUTION", isCompanyOwner: true },
};

const ENTRY_FIELDS = ["role", "userType", "isCompanyOwner"];
const Entry = t.object({ role: t.string, userType: t.string, isCompanyOwner: t.boolean });

/** The mapping from the settings; a bad one rejects the event, naming the setting. */
function mapping(): Record<string, RoleMapping> {
  const settings = config.settings();
  if (typeof settings !== "object" || settings === null || Array.isArray(settings)) {
    stop(rejected("invalid plugin settings: expected a JSON object"));
  }
  const raw = (settings as Record<string, unknown>)["mapping"];
  if (raw === undefined) return DEFAULT_MAPPING;
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    stop(rejected("invalid plugin setting `mapping`: expected an object keyed by EventUserType"));
  }
  const entries = Object.entries(raw as Record<string, unknown>);
  if (entries.length === 0) stop(rejected("invalid plugin setting `mapping`: no user types"));
  // No prototype: an event type named `__proto__` is a key like any other.
  const out: Record<string, RoleMapping> = Object.create(null);
  for (const [eventType, entry] of entries) {
    const where = `mapping.${eventType}`;
    let m: RoleMapping;
    try {
      m = Entry.decode(entry, where);
    } catch (e) {
      if (e instanceof DecodeError) stop(rejected(`invalid plugin setting \`${where}\`: ${e.message}`));
      throw e;
    }
    const unknown = Object.keys(entry as object).filter((k) => !ENTRY_FIELDS.includes(k));
    if (unknown.length > 0) {
      stop(rejected(`invalid plugin setting \`${where}\`: unknown field \`${unknown[0]}\`, expected one of ${ENTRY_FIELDS.join(", ")}`));
    }
    if (m.role.trim() === "") stop(rejected(`invalid plugin setting \`${where}.role\`: empty`));
    if (m.userType.trim() === "") stop(rejected(`invalid plugin setting \`${where}.userType\`: empty`));
    out[eventType] = m;
  }
  return out;
}

function lookup(map: Record<string, RoleMapping>, field: string, eventType: string): RoleMapping {
  const m = Object.hasOwn(map, eventType) ? map[eventType] : undefined;
  if (m === undefined) {
    throw new Invalid(`unknown ${field} ${JSON.stringify(eventType)} (known: ${Object.keys(map).sort().join(", ")})`);
  }
  return m;
}

/** A payload that passed decoding but breaks the contract. */
class Invalid extends Error {}

/** A required, non-blank string field. */
function required(value: string | undefined, field: string): string {
  if (value === undefined) throw new Invalid(`missing ${field}`);
  if (value.trim() === "") throw new Invalid(`${field} is empty`);
  return value;
}

/** Run `body`, turning contract breaks into `rejected` with the topic. */
function checked<T>(topic: string, body: () => T): T {
  try {
    return body();
  } catch (e) {
    if (e instanceof Invalid) stop(rejected(`${topic}: ${e.message}`));
    throw e;
  }
}

const UserCreated = t.object({
  userId: t.optional(t.string),
  email: t.optional(t.string),
  name: t.optional(t.string),
  userType: t.optional(t.string),
  customerAccountId: t.optional(t.string),
});

function userCreated(ev: Event): Outcome {
  const map = mapping();
  const payload = ev.json(UserCreated);
  const user = checked("USER_CREATED", () => {
    const userId = required(payload.userId, "userId");
    const email = required(payload.email, "email");
    const name = required(payload.name, "name");
    const userType = required(payload.userType, "userType");
    const m = lookup(map, "userType", userType);
    const customer = payload.customerAccountId?.trim() ? payload.customerAccountId : undefined;
    return { userId, email, name, m, customer };
  });

  if (db.queryOne("SELECT user_id FROM customer_users WHERE user_id = $1", [user.userId])) {
    return skipped(`user ${user.userId} already exists`);
  }
  if (user.customer !== undefined && !db.queryOne("SELECT id FROM customers WHERE id = $1", [user.customer])) {
    const reason = `customer ${user.customer} of user ${user.userId} not found; user not created`;
    log.warn(reason);
    return skipped(reason);
  }
  const now = db.now();
  const inserted = db.exec(
    "INSERT INTO customer_users (user_id, email, name, role, user_type, is_company_owner, " +
      "customer_account_id, status, created_at, updated_at) " +
      "VALUES ($1, $2, $3, $4, $5, $6, $7, 'ACTIVE', $8, $9) " +
      "ON CONFLICT (user_id) DO NOTHING",
    [user.userId, user.email, user.name, user.m.role, user.m.userType, user.m.isCompanyOwner, user.customer, now, now],
  );
  if (inserted === 0) {
    // Created concurrently between the check and the insert.
    return skipped(`user ${user.userId} already exists`);
  }
  log.info(`user ${user.userId} created as ${user.m.role}/${user.m.userType}`);
  return done();
}

const UserStatusChanged = t.object({ userId: t.optional(t.string), newStatus: t.optional(t.string) });

function userStatusChanged(ev: Event): Outcome {
  const payload = ev.json(UserStatusChanged);
  const { userId, status } = checked("USER_STATUS_CHANGED", () => ({
    userId: required(payload.userId, "userId"),
    status: required(payload.newStatus, "newStatus"),
  }));
  const changed = db.exec("UPDATE customer_users SET status = $1, updated_at = $2 WHERE user_id = $3", [
    status,
    db.now(),
    userId,
  ]);
  return changed === 0 ? skipped(`unknown user ${userId}; status not changed`) : done();
}

const UserRoleChanged = t.object({ userId: t.optional(t.string), newRole: t.optional(t.string) });

function userRoleChanged(ev: Event): Outcome {
  const map = mapping();
  const payload = ev.json(UserRoleChanged);
  const { userId, m } = checked("USER_ROLE_CHANGED", () => {
    const userId = required(payload.userId, "userId");
    const newRole = required(payload.newRole, "newRole");
    return { userId, m: lookup(map, "newRole", newRole) };
  });
  const changed = db.exec(
    "UPDATE customer_users SET role = $1, user_type = $2, is_company_owner = $3, updated_at = $4 WHERE user_id = $5",
    [m.role, m.userType, m.isCompanyOwner, db.now(), userId],
  );
  return changed === 0 ? skipped(`unknown user ${userId}; role not changed`) : done();
}

export const { describe, handle } = plugin({
  name: "role-mapping",
  version: "0.1.0",
  migrations: [migration("0001-create-customers-and-customer-users", POSTGRES_SCHEMA, SQLITE_SCHEMA)],
  handle(ev) {
    switch (ev.topic) {
      case "USER_CREATED":
        return userCreated(ev);
      case "USER_STATUS_CHANGED":
        return userStatusChanged(ev);
      case "USER_ROLE_CHANGED":
        return userRoleChanged(ev);
      default:
        return rejected(
          `role-mapping does not handle topic ${JSON.stringify(ev.topic)} (expected USER_CREATED, USER_STATUS_CHANGED or USER_ROLE_CHANGED)`,
        );
    }
  },
});
