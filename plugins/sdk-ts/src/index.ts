// Switchyard plugin SDK for TypeScript.
//
// A plugin is one function from an event to an outcome. The types of the
// raw interface are generated from wit/plugin.wit (`jco guest-types`, run by
// build.mjs), so the WIT stays the one source of truth; this module adds
// what every plugin needs on top: checked JSON decoding of the event,
// `db.exec` / `db.query` with plain JavaScript parameters, rows checked
// into typed objects (`db.queryAs`), timestamps from RFC 3339 or epoch
// values, `publish.json`, settings read once per instance (`Settings`),
// logging, migrations (`portableMigration` when one text fits both
// backends), and the four outcomes.
//
// Errors end the event the way `?` does in the Rust SDK: a payload that
// does not decode is `rejected`; an unhandled database error is `retry`
// when it may pass (unavailable, a UNIQUE or FOREIGN KEY violation: a race,
// a parent row still on its way) and `rejected` when it cannot (a CHECK or
// NOT NULL violation, a denied, invalid or over-limit statement, a row that
// does not decode); a refused publish is `rejected`. Anything else thrown
// is a bug: it is logged with its stack and traps the instance, as a Rust
// panic does (the host retries the event, then dead-letters it).
//
//   import { plugin, t, db, publish, done, skipped } from "@switchyard/plugin";
//
//   const Hit = t.object({ page: t.string });
//
//   export const { describe, handle } = plugin({
//     name: "counter",
//     version: "0.1.0",
//     migrations: [],
//     handle(ev) {
//       const hit = ev.json(Hit);
//       db.exec("INSERT INTO hits (page, n) VALUES ($1, 1) ON CONFLICT (page) DO UPDATE SET n = hits.n + 1", [hit.page]);
//       publish.json("hits.counted", hit.page, { page: hit.page });
//       return done();
//     },
//   });

import * as rawDb from "switchyard:plugin/db@0.1.0";
import * as rawPublish from "switchyard:plugin/publish@0.1.0";
import * as rawConfig from "switchyard:plugin/config@0.1.0";
import * as rawLog from "switchyard:plugin/log@0.1.0";
import type * as types from "switchyard:plugin/types@0.1.0";
import type { Migration, PluginInfo } from "switchyard:plugin/plugin@0.1.0";

export type { Migration, PluginInfo };
export type Outcome = types.Outcome;
export type Header = types.Header;

// ───────────────────────────── outcomes ─────────────────────────────

/** The event was handled: commit its SQL and its messages. */
export const done = (): Outcome => ({ tag: "done" });
/** Nothing to do: commit and move on; the reason is logged. */
export const skipped = (reason: string): Outcome => ({ tag: "skipped", val: reason });
/** A condition that may pass: roll back and deliver the event again later. */
export const retry = (reason: string): Outcome => ({ tag: "retry", val: reason });
/** The event is invalid: roll back and dead-letter it with the reason. */
export const rejected = (reason: string): Outcome => ({ tag: "rejected", val: reason });

/** Thrown to end the event early with an outcome (what `?` does in Rust). */
export class Stop extends Error {
  constructor(readonly outcome: Outcome) {
    super("val" in outcome ? `${outcome.tag}: ${outcome.val}` : outcome.tag);
    this.name = "Stop";
  }
}

/** End the event now with `outcome`. */
export function stop(outcome: Outcome): never {
  throw new Stop(outcome);
}

/** A schema migration with its PostgreSQL and SQLite variants. */
export function migration(id: string, postgres: string, sqlite: string): Migration {
  return { id, postgres, sqlite };
}

/**
 * A schema migration whose one text runs on both backends (the Rust SDK's
 * `portable_migration`): `TEXT`, `BIGINT`, `INTEGER`, `BOOLEAN`,
 * `DOUBLE PRECISION`, `TIMESTAMPTZ`, `DATE`, `PRIMARY KEY`, `NOT NULL`,
 * `DEFAULT`, `CHECK`, `REFERENCES` and `CREATE INDEX` mean the same on
 * both. Write `id TEXT NOT NULL PRIMARY KEY` (SQLite lets a non-integer key
 * be NULL unless told); use `migration` when the texts must differ
 * (`BYTEA`/`BLOB`, `JSONB`, `uuid`, `bigserial`).
 */
export function portableMigration(id: string, sql: string): Migration {
  return migration(id, sql, sql);
}

// ───────────────────────────── decoding ─────────────────────────────

/** Checks that a JSON value has a shape, and gives it a type. */
export interface Decoder<T> {
  /** The value as `T`, or throws `DecodeError` naming the path. */
  decode(value: unknown, path: string): T;
  /** What the decoder expects, for messages. */
  readonly expected: string;
}

/** A JSON value without the shape its decoder expects. */
export class DecodeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DecodeError";
  }
}

/** The type a decoder produces. */
export type Infer<D> = D extends Decoder<infer T> ? T : never;

function describeJson(v: unknown): string {
  if (v === null) return "null";
  if (v === undefined) return "nothing";
  if (Array.isArray(v)) return "an array";
  if (v instanceof Uint8Array) return "bytes";
  if (typeof v === "string") return v.length > 40 ? "a string" : `the string ${JSON.stringify(v)}`;
  if (typeof v === "object") return "an object";
  return `${typeof v} ${String(v)}`;
}

function decoder<T>(expected: string, check: (v: unknown, path: string) => T): Decoder<T> {
  return { expected, decode: check };
}

function primitive<T>(expected: string, ok: (v: unknown) => v is T): Decoder<T> {
  return decoder(expected, (v, path) => {
    if (ok(v)) return v;
    throw new DecodeError(`${path}: expected ${expected}, got ${describeJson(v)}`);
  });
}

type Shape = Record<string, Decoder<unknown>>;
type OptionalKeys<S extends Shape> = {
  [K in keyof S]: undefined extends Infer<S[K]> ? K : never;
}[keyof S];
type ObjectOf<S extends Shape> = { [K in Exclude<keyof S, OptionalKeys<S>>]: Infer<S[K]> } & {
  [K in OptionalKeys<S>]?: Infer<S[K]>;
};

/** Set while a row decodes: a boolean field then takes SQLite's 0 and 1. */
let decodingRow = false;

/** Decoders for JSON values: `t.object({ userId: t.string, age: t.optional(t.integer) })`. */
export const t = {
  string: primitive<string>("a string", (v): v is string => typeof v === "string"),
  number: primitive<number>("a number", (v): v is number => typeof v === "number"),
  integer: primitive<number>("an integer", (v): v is number => typeof v === "number" && Number.isSafeInteger(v)),
  /** A boolean; in a row (`db.queryAs`, `row.decode`), also SQLite's 0 and 1. */
  boolean: decoder<boolean>("a boolean", (v, path) => {
    if (typeof v === "boolean") return v;
    if (decodingRow && (v === 0 || v === 1)) return v === 1;
    throw new DecodeError(`${path}: expected a boolean, got ${describeJson(v)}`);
  }),
  /** Bytes (a `bytes` cell of a row: `bytea` or a BLOB). */
  bytes: primitive<Uint8Array>("bytes", (v): v is Uint8Array => v instanceof Uint8Array),
  /** Any JSON value, unchecked. */
  unknown: decoder<unknown>("any value", (v) => v),
  /**
   * A string holding a JSON document, parsed and checked with `inner`: a
   * `json` column of a row (text on SQLite, so it arrives as text on both
   * backends), or a payload field that carries JSON as a string.
   */
  json<T>(inner: Decoder<T>): Decoder<T> {
    return decoder(`JSON text of ${inner.expected}`, (v, path) => {
      if (typeof v !== "string") throw new DecodeError(`${path}: expected JSON text, got ${describeJson(v)}`);
      let parsed: unknown;
      try {
        parsed = JSON.parse(v);
      } catch (e) {
        throw new DecodeError(`${path}: not JSON: ${e instanceof Error ? e.message : String(e)}`);
      }
      return inner.decode(parsed, path);
    });
  },
  /** Absent or `null` decodes to `undefined`. */
  optional<T>(inner: Decoder<T>): Decoder<T | undefined> {
    return decoder(`${inner.expected} or nothing`, (v, path) =>
      v === undefined || v === null ? undefined : inner.decode(v, path),
    );
  },
  array<T>(item: Decoder<T>): Decoder<T[]> {
    return decoder(`an array of ${item.expected}`, (v, path) => {
      if (!Array.isArray(v)) throw new DecodeError(`${path}: expected an array, got ${describeJson(v)}`);
      return v.map((x, i) => item.decode(x, `${path}[${i}]`));
    });
  },
  /** An object with these fields (others are ignored). */
  object<S extends Shape>(shape: S): Decoder<ObjectOf<S>> {
    return decoder("an object", (v, path) => {
      if (typeof v !== "object" || v === null || Array.isArray(v)) {
        throw new DecodeError(`${path || "payload"}: expected an object, got ${describeJson(v)}`);
      }
      const out: Record<string, unknown> = {};
      for (const [key, field] of Object.entries(shape)) {
        // Own fields only: `toString` is no field of `{}`.
        const raw = Object.hasOwn(v, key) ? (v as Record<string, unknown>)[key] : undefined;
        const value = field.decode(raw, path ? `${path}.${key}` : key);
        if (value !== undefined) out[key] = value;
      }
      return out as ObjectOf<S>;
    });
  },
  /** An object whose values all have one shape (a map). */
  record<T>(value: Decoder<T>): Decoder<Record<string, T>> {
    return decoder(`an object of ${value.expected}`, (v, path) => {
      if (typeof v !== "object" || v === null || Array.isArray(v)) {
        throw new DecodeError(`${path || "value"}: expected an object, got ${describeJson(v)}`);
      }
      // No prototype: a key `__proto__` is a key like any other.
      const out: Record<string, T> = Object.create(null);
      for (const [key, x] of Object.entries(v as Record<string, unknown>)) {
        out[key] = value.decode(x, path ? `${path}.${key}` : key);
      }
      return out;
    });
  },
};

// ───────────────────────────── events ─────────────────────────────

const SURROGATE_ESCAPE = /\\u[dD][89a-fA-F]/;
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** Whether a parsed JSON value holds a string (or key) no UTF-8 text can: JSON.parse takes `"\ud800"`, serde_json does not. */
function hasLoneSurrogate(v: unknown): boolean {
  if (typeof v === "string") return LONE_SURROGATE.test(v);
  if (Array.isArray(v)) return v.some(hasLoneSurrogate);
  if (typeof v === "object" && v !== null) {
    return Object.entries(v).some(([k, x]) => LONE_SURROGATE.test(k) || hasLoneSurrogate(x));
  }
  return false;
}

/** The earliest instant the timestamp readers accept, 0001-01-01T00:00:00Z, in µs since the epoch. */
export const MIN_TIMESTAMP_MICROS = -62_135_596_800_000_000n;
/** The latest, 9999-12-31T23:59:59.999999Z. */
export const MAX_TIMESTAMP_MICROS = 253_402_300_799_999_999n;

function inRange(micros: bigint): bigint | undefined {
  return micros >= MIN_TIMESTAMP_MICROS && micros <= MAX_TIMESTAMP_MICROS ? micros : undefined;
}

/** Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil; `Date.UTC` reads years 0-99 as 1900-1999). */
function daysFromCivil(y: number, m: number, d: number): number {
  const yy = m <= 2 ? y - 1 : y;
  const era = Math.floor(yy / 400);
  const yoe = yy - era * 400;
  const doy = Math.floor((153 * (m > 2 ? m - 3 : m + 9) + 2) / 5) + d - 1;
  const doe = yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy;
  return era * 146_097 + doe - 719_468;
}

/** The date of a day count since 1970-01-01 (civil_from_days): [year, month, day]. */
function civilFromDays(days: number): [number, number, number] {
  const z = days + 719_468;
  const era = Math.floor(z / 146_097);
  const doe = z - era * 146_097;
  const yoe = Math.floor((doe - Math.floor(doe / 1_460) + Math.floor(doe / 36_524) - Math.floor(doe / 146_096)) / 365);
  const doy = doe - (365 * yoe + Math.floor(yoe / 4) - Math.floor(yoe / 100));
  const mp = Math.floor((5 * doy + 2) / 153);
  const d = doy - Math.floor((153 * mp + 2) / 5) + 1;
  const m = mp < 10 ? mp + 3 : mp - 9;
  return [yoe + era * 400 + (m <= 2 ? 1 : 0), m, d];
}

/**
 * An RFC 3339 instant as microseconds since the epoch, or undefined: the
 * Rust SDK's rules (a date, `T`, a time with optional fraction, `Z` or an
 * offset `±HH:MM`; years 0001 to 9999 in UTC once the offset is applied),
 * the same on every JavaScript engine (`Date.parse` is not).
 */
export function rfc3339Micros(s: string): bigint | undefined {
  const m = /^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$/.exec(s);
  if (m === null) return undefined;
  const [y, mo, d, hh, mi, ss] = [1, 2, 3, 4, 5, 6].map((i) => Number(m[i]));
  const micros = m[7] ? BigInt(m[7].slice(0, 6).padEnd(6, "0")) : 0n;
  let offset = 0;
  if (!m[8]) {
    const [oh, om] = [Number(m[10]), Number(m[11])];
    if (oh > 23 || om > 59) return undefined;
    offset = (oh * 3600 + om * 60) * (m[9] === "+" ? 1 : -1);
  }
  if (mo < 1 || mo > 12 || hh > 23 || mi > 59 || ss > 60) return undefined;
  const leap = (y % 4 === 0 && y % 100 !== 0) || y % 400 === 0;
  const daysIn = [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][mo - 1];
  if (d < 1 || d > daysIn) return undefined;
  const days = daysFromCivil(y, mo, d);
  return inRange(BigInt(days * 86_400 + hh * 3600 + mi * 60 + ss - offset) * 1_000_000n + micros);
}

/**
 * An instant (µs since the epoch) as RFC 3339 text in UTC, the way the host
 * stores a timestamp on SQLite: `2026-11-30T09:30:00+00:00`, with `.250` or
 * `.250123` for a fraction of a second. Rows decoded with `db.queryAs`
 * carry timestamps in this form on both backends.
 */
export function rfc3339Text(micros: bigint): string {
  const perSecond = 1_000_000n;
  const frac = ((micros % perSecond) + perSecond) % perSecond;
  const secs = Number((micros - frac) / perSecond);
  const days = Math.floor(secs / 86_400);
  const ofDay = secs - days * 86_400;
  const [y, m, d] = civilFromDays(days);
  const two = (n: number) => String(n).padStart(2, "0");
  const year = y >= 0 && y <= 9999 ? String(y).padStart(4, "0") : (y < 0 ? "-" : "+") + String(Math.abs(y)).padStart(4, "0");
  const fraction = frac === 0n ? "" : frac % 1000n === 0n ? `.${String(frac / 1000n).padStart(3, "0")}` : `.${String(frac).padStart(6, "0")}`;
  return `${year}-${two(m)}-${two(d)}T${two(Math.floor(ofDay / 3600))}:${two(Math.floor((ofDay % 3600) / 60))}:${two(ofDay % 60)}${fraction}+00:00`;
}

/** The unit of an epoch value: how many per second. */
const PER_SECOND = { secs: 1, millis: 1_000, micros: 1_000_000 } as const;

/**
 * An epoch value in `unit` as µs, or undefined outside the readers' range
 * (or for NaN and infinities). A fractional number is rounded to the
 * nearest microsecond; a bigint must be whole units.
 */
function epochMicros(value: number | bigint, unit: keyof typeof PER_SECOND): bigint | undefined {
  const scale = 1_000_000 / PER_SECOND[unit];
  if (typeof value === "bigint") return inRange(value * BigInt(scale));
  if (!Number.isFinite(value)) return undefined;
  // Whole values stay exact past 2^53 µs; fractions round to the microsecond.
  const micros = Number.isInteger(value) ? BigInt(value) * BigInt(scale) : BigInt(Math.round(value * scale));
  return inRange(micros);
}

function timestampOf(micros: bigint | undefined, what: () => string): rawDb.Value {
  if (micros === undefined) {
    stop(rejected(`${what()} is out of the timestamp range 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z`));
  }
  return { tag: "timestamp", val: micros };
}

// `ignoreBOM`: a leading U+FEFF is kept (and refused by JSON.parse), as
// the Rust SDK does.
const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const encoder = new TextEncoder();

function text(bytes: Uint8Array | undefined): string | undefined {
  if (bytes === undefined) return undefined;
  try {
    return utf8.decode(bytes);
  } catch {
    return undefined;
  }
}

/** One Kafka event, with typed access to its payload, headers and key. */
export class Event {
  constructor(readonly raw: types.Event) {}

  /** Topic the event was read from. */
  get topic(): string {
    return this.raw.topic;
  }
  get partition(): number {
    return this.raw.partition;
  }
  get offset(): bigint {
    return this.raw.offset;
  }
  /** Record timestamp (ms since the epoch), when set. */
  get timestampMs(): bigint | undefined {
    return this.raw.timestampMs;
  }
  /** Payload bytes (empty for a tombstone). */
  get payload(): Uint8Array {
    return this.raw.payload;
  }

  /** The record key as text, when present and UTF-8. */
  get key(): string | undefined {
    return text(this.raw.key);
  }

  /** The first header with this name (case-sensitive), as text; undefined when absent, null or not UTF-8. */
  header(name: string): string | undefined {
    const h = this.raw.headers.find((x) => x.name === name);
    return h === undefined ? undefined : text(h.value);
  }

  /** Every header as text (absent, null and non-UTF-8 values are left out). */
  headers(): Record<string, string> {
    const out: Record<string, string> = Object.create(null);
    for (const h of this.raw.headers) {
      const v = text(h.value);
      if (v !== undefined && !Object.hasOwn(out, h.name)) out[h.name] = v;
    }
    return out;
  }

  /**
   * The payload decoded as JSON and checked with `shape` (unchecked when no
   * shape is given). An empty, non-UTF-8, non-JSON or wrongly shaped
   * payload ends the event as `rejected`, with a reason naming the topic
   * and the field.
   */
  json(): unknown;
  json<T>(shape: Decoder<T>): T;
  json<T>(shape?: Decoder<T>): T | unknown {
    if (this.raw.payload.length === 0) stop(rejected(`${this.topic}: empty payload, expected a JSON document`));
    const body = text(this.raw.payload);
    if (body === undefined) stop(rejected(`${this.topic}: payload is not UTF-8, expected a JSON document`));
    let value: unknown;
    try {
      value = JSON.parse(body);
    } catch (e) {
      stop(rejected(`${this.topic}: invalid payload: ${e instanceof Error ? e.message : String(e)}`));
    }
    // Only an escape can make one (the text itself is valid UTF-8): most
    // payloads skip the walk.
    if (SURROGATE_ESCAPE.test(body) && hasLoneSurrogate(value)) {
      stop(rejected(`${this.topic}: invalid payload: a string holds a lone surrogate escape, which is not valid Unicode`));
    }
    if (shape === undefined) return value;
    try {
      return shape.decode(value, "");
    } catch (e) {
      if (e instanceof DecodeError) stop(rejected(`${this.topic}: invalid payload: ${e.message}`));
      throw e;
    }
  }
}

// ───────────────────────────── db ─────────────────────────────

/** A SQL parameter: plain values are mapped (string → text, boolean, integer → int, other number → float, bigint → int, Uint8Array → bytes, Date → timestamp, null/undefined → NULL); `db.json`, `db.uuid`, `db.date`, `db.timestamp` and `db.now` give the other types. */
export type Param = string | number | bigint | boolean | null | undefined | Uint8Array | Date | rawDb.Value;

function isValue(p: object): p is rawDb.Value {
  return "tag" in p;
}

function toValue(p: Param): rawDb.Value {
  if (p === null || p === undefined) return { tag: "null" };
  switch (typeof p) {
    case "string":
      return { tag: "text", val: p };
    case "boolean":
      return { tag: "boolean", val: p };
    case "bigint":
      return { tag: "int", val: p };
    case "number":
      return Number.isSafeInteger(p) ? { tag: "int", val: BigInt(p) } : { tag: "float", val: p };
  }
  if (p instanceof Uint8Array) return { tag: "bytes", val: p };
  if (p instanceof Date) return { tag: "timestamp", val: BigInt(p.getTime()) * 1000n };
  if (isValue(p)) return p;
  throw new TypeError(`not a SQL parameter: ${String(p)}`);
}

/** A database error the plugin did not handle (see `DbError.outcome`). */
export class DbError extends Error {
  constructor(readonly error: rawDb.Error) {
    super(dbReason(error));
    this.name = "DbError";
  }
  /** True for a unique or primary-key violation. */
  isUniqueViolation(): boolean {
    return this.error.tag === "constraint" && this.error.val.kind === "unique";
  }
  /**
   * Whether the same statement may succeed when the event comes again: the
   * database was unavailable, or a UNIQUE or FOREIGN KEY violation another
   * event can change (a race on a key, a parent row still on its way). A
   * CHECK or NOT NULL violation fails the same way every time.
   */
  mayPassOnRetry(): boolean {
    switch (this.error.tag) {
      case "unavailable":
        return true;
      case "constraint":
        return this.error.val.kind === "unique" || this.error.val.kind === "foreign-key";
      default:
        return false;
    }
  }
  /** What the event becomes if this error is not handled: `retry` when it may pass, else `rejected`, with the reason. */
  outcome(): Outcome {
    return this.mayPassOnRetry() ? retry(this.message) : rejected(this.message);
  }
}

function dbReason(e: rawDb.Error): string {
  switch (e.tag) {
    case "denied":
      return `statement denied: ${e.val}`;
    case "invalid":
      return `invalid statement: ${e.val}`;
    case "constraint":
      return `${e.val.kind} constraint ${e.val.name ?? "(unnamed)"} violated: ${e.val.message}`;
    case "limit":
      return `database limit: ${e.val}`;
    case "unavailable":
      return `database unavailable: ${e.val}`;
  }
}

/** What componentize-js throws when an import returns `err(e)`. */
function payloadOf(e: unknown): unknown {
  return typeof e === "object" && e !== null && "payload" in e ? (e as { payload: unknown }).payload : undefined;
}

/** A cell as a JavaScript value: text, uuid, date and json as strings, int as a number when safe (else bigint), timestamp as a Date, bytes as Uint8Array, NULL as null. */
export type Cell = string | number | bigint | boolean | Uint8Array | Date | null;

function cellOf(v: rawDb.Value): Cell {
  switch (v.tag) {
    case "null":
      return null;
    case "boolean":
      return v.val;
    case "int":
      return v.val >= BigInt(Number.MIN_SAFE_INTEGER) && v.val <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v.val) : v.val;
    case "float":
      return v.val;
    case "bytes":
      return v.val;
    case "timestamp":
      return new Date(Number(v.val / 1000n));
    default:
      return v.val;
  }
}

/** One result row: cells by column name, and typed getters. */
export class Row {
  constructor(
    readonly columns: string[],
    readonly values: rawDb.Value[],
  ) {}
  /** The raw cell of column `name`. */
  value(name: string): rawDb.Value | undefined {
    const i = this.columns.indexOf(name);
    return i < 0 ? undefined : this.values[i];
  }
  /** The cell as a JavaScript value (undefined for an unknown column). */
  get(name: string): Cell | undefined {
    const v = this.value(name);
    return v === undefined ? undefined : cellOf(v);
  }
  /** The cell as text (text, uuid, date, json); undefined for NULL or other types. */
  text(name: string): string | undefined {
    const v = this.value(name);
    return v && (v.tag === "text" || v.tag === "uuid" || v.tag === "date" || v.tag === "json") ? v.val : undefined;
  }
  /** The cell as an integer; undefined for NULL or other types. */
  int(name: string): number | undefined {
    const v = this.value(name);
    if (v?.tag === "int") return Number(v.val);
    if (v?.tag === "boolean") return v.val ? 1 : 0;
    return undefined;
  }
  /** The cell as a boolean (SQLite stores booleans as 0/1). */
  boolean(name: string): boolean | undefined {
    const v = this.value(name);
    if (v?.tag === "boolean") return v.val;
    if (v?.tag === "int") return v.val !== 0n;
    return undefined;
  }
  /**
   * The row checked with `shape` (usually `t.object({...})`, one field per
   * column), from a view that is the same on both backends: ints as
   * numbers (bigint past 2^53), floats, text, uuid and date as strings,
   * `json` as its text (`t.json(...)` parses it), timestamps as RFC 3339
   * text (`rfc3339Text`), bytes as Uint8Array, NULL as null; `t.boolean`
   * takes SQLite's 0 and 1. A row that does not fit throws a `DbError`
   * (`invalid`, so `rejected` if unhandled) naming the column.
   */
  decode<T>(shape: Decoder<T>): T {
    return decodeRow(shape, this.columns, this.values, undefined);
  }
  /** The row as a plain object. */
  toObject(): Record<string, Cell> {
    const out: Record<string, Cell> = {};
    this.columns.forEach((c, i) => {
      const v = this.values[i];
      out[c] = v === undefined ? null : cellOf(v);
    });
    return out;
  }
}

/** A cell as `decode` sees it (see `Row.decode`). */
function decodeView(v: rawDb.Value): unknown {
  switch (v.tag) {
    case "timestamp":
      return rfc3339Text(v.val);
    default:
      return cellOf(v);
  }
}

function decodeRow<T>(shape: Decoder<T>, columns: string[], values: rawDb.Value[], row: number | undefined): T {
  const view: Record<string, unknown> = Object.create(null);
  columns.forEach((c, i) => {
    const v = values[i];
    view[c] = v === undefined ? null : decodeView(v);
  });
  decodingRow = true;
  try {
    return shape.decode(view, "");
  } catch (e) {
    if (e instanceof DecodeError) {
      const which = row === undefined ? "the row" : `row ${row}`;
      // A field's message starts with its path, the column's name.
      const why = e.message.startsWith(": ") ? e.message.slice(2) : `column ${e.message}`;
      throw new DbError({ tag: "invalid", val: `${which} does not decode: ${why}` });
    }
    throw e;
  } finally {
    decodingRow = false;
  }
}

function call<T>(f: () => T): T {
  try {
    return f();
  } catch (e) {
    const p = payloadOf(e);
    if (p !== undefined) throw new DbError(p as rawDb.Error);
    throw e;
  }
}

/** SQL on the service database, in the event's transaction. */
export const db = {
  /** Run one statement that returns no rows; returns the number of rows it changed. Throws `DbError`. */
  exec(sql: string, params: Param[] = []): number {
    return Number(call(() => rawDb.execute(sql, params.map(toValue))));
  },
  /** Run one statement and return its rows. Throws `DbError`. */
  query(sql: string, params: Param[] = []): Row[] {
    const rows = call(() => rawDb.query(sql, params.map(toValue)));
    return rows.rows.map((cells) => new Row(rows.columns, cells));
  },
  /** The first row, or undefined. Throws `DbError`. */
  queryOne(sql: string, params: Param[] = []): Row | undefined {
    return db.query(sql, params)[0];
  },
  /**
   * Run one statement and check each row with `shape` (see `Row.decode`):
   * `db.queryAs(t.object({ id: t.string, n: t.integer }), "SELECT id, n FROM t WHERE k = $1", [k])`.
   * Throws `DbError`; a row that does not fit is `invalid` (so `rejected`
   * if unhandled), naming the row and the column.
   */
  queryAs<T>(shape: Decoder<T>, sql: string, params: Param[] = []): T[] {
    const rows = call(() => rawDb.query(sql, params.map(toValue)));
    return rows.rows.map((cells, i) => decodeRow(shape, rows.columns, cells, i + 1));
  },
  /** Like `queryAs`, for the first row only: undefined when there is none. */
  queryOneAs<T>(shape: Decoder<T>, sql: string, params: Param[] = []): T | undefined {
    const rows = call(() => rawDb.query(sql, params.map(toValue)));
    const first = rows.rows[0];
    return first === undefined ? undefined : decodeRow(shape, rows.columns, first, 1);
  },
  /** A `json` parameter (jsonb on PostgreSQL): the value serialised. */
  json(value: unknown): rawDb.Value {
    return { tag: "json", val: JSON.stringify(value) };
  },
  /** A `uuid` parameter. */
  uuid(value: string): rawDb.Value {
    return { tag: "uuid", val: value };
  },
  /** A `date` parameter, `YYYY-MM-DD`. */
  date(value: string): rawDb.Value {
    return { tag: "date", val: value };
  },
  /** A `timestamp` parameter from a Date, an RFC 3339 string (microseconds kept) or milliseconds since the epoch. A string that is no RFC 3339 instant, or an instant outside the years 0001-9999, rejects the event. */
  timestamp(value: Date | string | number): rawDb.Value {
    if (typeof value === "string") {
      const micros = rfc3339Micros(value);
      if (micros === undefined) stop(rejected(`not an RFC 3339 instant in the years 0001-9999: ${JSON.stringify(value)}`));
      return { tag: "timestamp", val: micros };
    }
    const ms = value instanceof Date ? value.getTime() : value;
    if (!Number.isFinite(ms)) stop(rejected(`not a timestamp: ${String(value)}`));
    return db.timestampMillis(ms);
  },
  /** A `timestamp` parameter from seconds since the epoch (a Unix time; a fraction is kept to the microsecond). Outside 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z (milliseconds passed as seconds, say) it rejects the event. */
  timestampSecs(secs: number | bigint): rawDb.Value {
    return timestampOf(epochMicros(secs, "secs"), () => `${String(secs)} seconds since the epoch`);
  },
  /** A `timestamp` parameter from milliseconds since the epoch (`Date.now()`, a Kafka record's timestamp); the range of `timestampSecs`. */
  timestampMillis(millis: number | bigint): rawDb.Value {
    return timestampOf(epochMicros(millis, "millis"), () => `${String(millis)} milliseconds since the epoch`);
  },
  /** A `timestamp` parameter from microseconds since the epoch; the range of `timestampSecs`. */
  timestampMicros(micros: number | bigint): rawDb.Value {
    return timestampOf(epochMicros(micros, "micros"), () => `${String(micros)} microseconds since the epoch`);
  },
  /** The current time as a `timestamp` parameter. */
  now(): rawDb.Value {
    return { tag: "timestamp", val: BigInt(Date.now()) * 1000n };
  },
  /** A `float` parameter (a whole number would otherwise go as `int`). */
  float(value: number): rawDb.Value {
    return { tag: "float", val: value };
  },
};

// ───────────────────────────── publish ─────────────────────────────

/** A message the host refused (see `PublishError.outcome`). */
export class PublishError extends Error {
  constructor(readonly error: rawPublish.Error) {
    super(
      error.tag === "denied"
        ? `publish denied: ${error.val}`
        : error.tag === "limit"
          ? `publish limit: ${error.val}`
          : `invalid message: ${error.val}`,
    );
    this.name = "PublishError";
  }
  /** A refused publish is a plugin or config mistake: `rejected`, so it lands in the dead-letter topic. */
  outcome(): Outcome {
    return rejected(this.message);
  }
}

function bytesOf(v: string | Uint8Array): Uint8Array {
  return typeof v === "string" ? encoder.encode(v) : v;
}

function jsonText(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v));
}

/** Messages to Kafka, produced after the event's transaction commits. */
export const publish = {
  /** Queue a message whose value is `value` as JSON (bigints as strings). Throws `PublishError`. */
  json(topic: string, key: string | undefined, value: unknown, headers: Record<string, string> = {}): void {
    publish.send({ topic, key, payload: jsonText(value), headers });
  },
  /** Queue a message as given. Throws `PublishError`. */
  send(message: {
    topic: string;
    key?: string | Uint8Array;
    payload: string | Uint8Array;
    headers?: Record<string, string>;
    partition?: number;
  }): void {
    const raw: rawPublish.Message = {
      topic: message.topic,
      key: message.key === undefined ? undefined : bytesOf(message.key),
      payload: bytesOf(message.payload),
      headers: Object.entries(message.headers ?? {}).map(([name, value]) => ({ name, value: encoder.encode(value) })),
      partition: message.partition,
    };
    try {
      rawPublish.send(raw);
    } catch (e) {
      const p = payloadOf(e);
      if (p !== undefined) throw new PublishError(p as rawPublish.Error);
      throw e;
    }
  },
};

// ───────────────────────────── settings, log ─────────────────────────────

/** The settings checked with `shape`, or why they do not fit. */
function readSettings<T>(shape: Decoder<T>): { ok: true; value: T } | { ok: false; reason: string } {
  const value: unknown = JSON.parse(rawConfig.settings());
  try {
    return { ok: true, value: shape.decode(value, "") };
  } catch (e) {
    if (e instanceof DecodeError) return { ok: false, reason: `invalid plugin setting ${e.message}` };
    throw e;
  }
}

/**
 * The plugin's settings checked with `shape` once per instance (the Rust
 * SDK's `config::Settings`). Make one at the top of the module and call
 * `get()` inside `handle` (never at import: the build snapshots the
 * module):
 *
 *   const settings = new Settings(t.object({ limit: t.optional(t.integer) }));
 *   ... handle(ev) { const limit = settings.get().limit ?? 10; ... }
 *
 * The first `get()` reads and checks the settings; later ones return the
 * same value, or reject the event with the same reason if they did not
 * fit. That is never stale: settings change only when the host reloads the
 * routing config, and a reload that changes a plugin's settings gives it
 * new instances, whose modules start afresh.
 */
export class Settings<T> {
  private read: { ok: true; value: T } | { ok: false; reason: string } | undefined;
  constructor(private readonly shape: Decoder<T>) {}
  /** The settings, read and checked on the first call; bad settings reject the event (`invalid plugin setting ...`). */
  get(): T {
    this.read ??= readSettings(this.shape);
    if (!this.read.ok) stop(rejected(this.read.reason));
    return this.read.value;
  }
}

/** The plugin's settings from the routing config. */
export const config = {
  /** All settings as parsed JSON (`{}` when there are none), read from the host on every call (`Settings` reads them once); checked with `shape` when given. A bad setting rejects the event with the setting's path. */
  settings<T = Record<string, unknown>>(shape?: Decoder<T>): T {
    if (shape === undefined) return JSON.parse(rawConfig.settings()) as T;
    const read = readSettings(shape);
    if (!read.ok) stop(rejected(read.reason));
    return read.value;
  },
  /** One setting: strings as they are, other values as JSON text. */
  get(key: string): string | undefined {
    return rawConfig.get(key);
  },
};

/** Lines in the host's log, under the plugin's name and the event's position. */
export const log = {
  debug: (message: string): void => rawLog.write("debug", message),
  info: (message: string): void => rawLog.write("info", message),
  warn: (message: string): void => rawLog.write("warn", message),
  error: (message: string): void => rawLog.write("error", message),
};

// ───────────────────────────── the plugin ─────────────────────────────

/** What a plugin is made of. */
export interface PluginSpec {
  /** Plugin name, as the routing config names it. */
  name: string;
  version: string;
  /** Schema migrations, in order; never change one once shipped. */
  migrations: Migration[];
  /** Handle one event. Throwing `Stop`, `DbError` or `PublishError` ends it with their outcome. */
  handle(ev: Event): Outcome;
}

/** The outcome of what `handle` threw, or undefined for a bug. */
function outcomeOf(e: unknown): Outcome | undefined {
  if (e instanceof Stop) return e.outcome;
  if (e instanceof DbError || e instanceof PublishError) return e.outcome();
  return undefined;
}

/** The two exports of the plugin world: `export const { describe, handle } = plugin({...})`. */
export function plugin(spec: PluginSpec): {
  describe: () => PluginInfo;
  handle: (event: types.Event) => Outcome;
} {
  return {
    describe: () => ({ name: spec.name, version: spec.version, migrations: spec.migrations }),
    handle: (event) => {
      try {
        return spec.handle(new Event(event));
      } catch (e) {
        const outcome = outcomeOf(e);
        if (outcome !== undefined) return outcome;
        // A bug: say where, then trap like a Rust panic.
        const where = e instanceof Error ? `${e.name}: ${e.message}\n${e.stack ?? ""}` : String(e);
        rawLog.write("error", `${spec.name} threw on ${event.topic}/${event.partition}@${event.offset}: ${where}`);
        throw e;
      }
    },
  };
}
