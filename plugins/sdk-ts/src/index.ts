// Switchyard plugin SDK for TypeScript.
//
// A plugin is one function from an event to an outcome. The types of the
// raw interface are generated from wit/plugin.wit (`jco guest-types`, run by
// build.mjs), so the WIT stays the one source of truth; this module adds
// what every plugin needs on top: checked JSON decoding of the event,
// `db.exec` / `db.query` with plain JavaScript parameters and rows,
// `publish.json`, settings, logging, and the four outcomes.
//
// Errors end the event the way `?` does in the Rust SDK: a payload that
// does not decode is `rejected`; an unhandled database error is `retry`
// when it may pass (unavailable, a constraint race) and `rejected` when it
// is the plugin's mistake (denied, invalid, limit); a refused publish is
// `rejected`. Anything else thrown is a bug: it is logged with its stack
// and traps the instance, as a Rust panic does (the host retries the event,
// then dead-letters it).
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
  if (Array.isArray(v)) return "an array";
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

/** Decoders for JSON values: `t.object({ userId: t.string, age: t.optional(t.integer) })`. */
export const t = {
  string: primitive<string>("a string", (v): v is string => typeof v === "string"),
  number: primitive<number>("a number", (v): v is number => typeof v === "number"),
  integer: primitive<number>("an integer", (v): v is number => typeof v === "number" && Number.isSafeInteger(v)),
  boolean: primitive<boolean>("a boolean", (v): v is boolean => typeof v === "boolean"),
  /** Any JSON value, unchecked. */
  unknown: decoder<unknown>("any value", (v) => v),
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

/**
 * An RFC 3339 instant as microseconds since the epoch, or undefined: the
 * Rust SDK's rules (a date, `T`, a time with optional fraction, `Z` or an
 * offset `±HH:MM`), the same on every JavaScript engine (`Date.parse` is
 * not).
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
  const days = Math.floor(Date.UTC(y, mo - 1, d) / 86_400_000);
  return BigInt(days * 86_400 + hh * 3600 + mi * 60 + ss - offset) * 1_000_000n + micros;
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
  /** What the event becomes if this error is not handled. */
  outcome(): Outcome {
    switch (this.error.tag) {
      case "unavailable":
      case "constraint":
        return retry(this.message);
      default:
        return rejected(this.message);
    }
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
  /** A `timestamp` parameter from a Date, an RFC 3339 string (microseconds kept) or milliseconds since the epoch. A string that is no RFC 3339 instant rejects the event. */
  timestamp(value: Date | string | number): rawDb.Value {
    if (typeof value === "string") {
      const micros = rfc3339Micros(value);
      if (micros === undefined) stop(rejected(`not an RFC 3339 instant: ${JSON.stringify(value)}`));
      return { tag: "timestamp", val: micros };
    }
    const ms = value instanceof Date ? value.getTime() : value;
    if (!Number.isFinite(ms)) stop(rejected(`not a timestamp: ${String(value)}`));
    return { tag: "timestamp", val: BigInt(Math.trunc(ms)) * 1000n };
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

/** The plugin's settings from the routing config. */
export const config = {
  /** All settings as parsed JSON (`{}` when there are none); checked with `shape` when given. A bad setting rejects the event with the setting's path. */
  settings<T = Record<string, unknown>>(shape?: Decoder<T>): T {
    const value: unknown = JSON.parse(rawConfig.settings());
    if (shape === undefined) return value as T;
    try {
      return shape.decode(value, "");
    } catch (e) {
      if (e instanceof DecodeError) stop(rejected(`invalid plugin setting ${e.message}`));
      throw e;
    }
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
