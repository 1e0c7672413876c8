// Unit tests of the TypeScript SDK under Node, the host's interfaces
// answered by testing/'s fakes (`node plugins/sdk-ts/build.mjs --test
// plugins/sdk-ts`; scripts/test runs it). The contract tests run the SDK
// inside real components; these cover its corners one by one.
import { test } from "node:test";
import assert from "node:assert/strict";
// @ts-expect-error: a plain ES module without types
import { fakeHost } from "../testing/host.mjs";
import {
  DbError,
  Event,
  MAX_TIMESTAMP_MICROS,
  MIN_TIMESTAMP_MICROS,
  Settings,
  Stop,
  config,
  db,
  plugin,
  portableMigration,
  publish,
  rfc3339Micros,
  rfc3339Text,
  skipped,
  stop,
  t,
} from "@switchyard/plugin";

const enc = new TextEncoder();

function rawEvent(payload: string | Uint8Array, headers: [string, Uint8Array | undefined][] = [], key?: string) {
  return {
    topic: "t",
    partition: 0,
    offset: 7n,
    key: key === undefined ? undefined : enc.encode(key),
    payload: typeof payload === "string" ? enc.encode(payload) : payload,
    headers: headers.map(([name, value]) => ({ name, value })),
  };
}

const Shape = t.object({
  v: t.integer,
  payload: t.optional(t.object({ userId: t.optional(t.string) })),
  tags: t.optional(t.array(t.string)),
});

function stopped(f: () => unknown): { tag: string; val?: string } {
  try {
    f();
  } catch (e) {
    if (e instanceof Stop) return e.outcome as { tag: string; val?: string };
    throw e;
  }
  throw new Error("did not stop");
}

test("payloads decode, and bad ones are rejected naming the topic and the field", () => {
  fakeHost();
  const ok = new Event(rawEvent('{"v": 1, "payload": {"userId": "u"}, "extra": true}')).json(Shape);
  assert.deepEqual(ok, { v: 1, payload: { userId: "u" } });
  for (const [payload, words] of [
    ["", "empty payload"],
    [new Uint8Array([0xff, 0xfe]), "not UTF-8"],
    ['{"v": ', "invalid payload"],
    ['{"v": 1.5}', "v: expected an integer, got number 1.5"],
    ['{"v": 1, "payload": {"userId": 42}}', "payload.userId: expected a string, got number 42"],
    ['{"v": 1, "tags": ["a", 2]}', "tags[1]: expected a string"],
    ["[]", "payload: expected an object, got an array"],
    ['\uFEFF{"v": 1}', "invalid payload"],
    ['{"v": 1, "payload": {"userId": "\\ud800"}}', "lone surrogate"],
    ['{"v": 1, "payload": {"userId": "\\ud800\\udc00"}}', ""],
  ] as const) {
    if (words === "") {
      assert.equal(new Event(rawEvent(payload)).json(Shape).payload?.userId, "\u{10000}", "a pair is fine");
      continue;
    }
    const outcome = stopped(() => new Event(rawEvent(payload)).json(Shape));
    assert.equal(outcome.tag, "rejected");
    assert.ok(outcome.val?.startsWith("t: "), outcome.val);
    assert.ok(outcome.val?.includes(words), `${outcome.val} should say ${words}`);
  }
});

test("headers and key as text", () => {
  const ev = new Event(
    rawEvent("{}", [["event-id", enc.encode("e-1")], ["bin", new Uint8Array([0xff])], ["null", undefined], ["event-id", enc.encode("e-2")]], "k"),
  );
  assert.equal(ev.header("event-id"), "e-1");
  assert.equal(ev.header("bin"), undefined);
  assert.equal(ev.header("null"), undefined);
  assert.deepEqual({ ...ev.headers() }, { "event-id": "e-1" });
  const named = new Event(rawEvent("{}", [["constructor", enc.encode("c")], ["__proto__", enc.encode("p")]]));
  assert.equal(named.headers()["constructor"], "c");
  assert.equal(named.headers()["__proto__"], "p");
  assert.throws(() => new Event(rawEvent('{"v": 1}')).json(t.object({ toString: t.string })), Stop, "inherited members are no fields");
  assert.equal(ev.key, "k");
});

test("parameters map to typed values", () => {
  const host = fakeHost();
  const at = new Date(Date.UTC(2026, 10, 30, 9, 30, 0, 500));
  db.exec("x", ["s", 1, 2 ** 60, 1.5, 5n, true, null, undefined, new Uint8Array([0]), at, db.json({ a: 1 }), db.uuid("u"), db.float(2)]);
  assert.deepEqual(host.calls.at(-1).params, [
    { tag: "text", val: "s" },
    { tag: "int", val: 1n },
    { tag: "float", val: 2 ** 60 },
    { tag: "float", val: 1.5 },
    { tag: "int", val: 5n },
    { tag: "boolean", val: true },
    { tag: "null" },
    { tag: "null" },
    { tag: "bytes", val: new Uint8Array([0]) },
    { tag: "timestamp", val: 1_796_031_000_500_000n },
    { tag: "json", val: '{"a":1}' },
    { tag: "uuid", val: "u" },
    { tag: "float", val: 2 },
  ]);
  assert.deepEqual(db.timestamp("2026-11-30T14:00:00+03:00"), { tag: "timestamp", val: 1_796_036_400_000_000n });
  assert.deepEqual(db.timestamp("2024-02-29T00:00:00.123456789-00:30"), { tag: "timestamp", val: 1_709_166_600_123_456n });
  // The Rust SDK's refusals (plugins/sdk/src/lib.rs), the same here.
  for (const bad of ["", "yesterday", "2026-11-30", "2026-11-30T09:30:00", "2026-02-30T00:00:00Z", "2026-11-30T24:00:00Z",
    "2026-11-30T09:30:00.Z", "2026-11-30T09:30:00+3:00", "2026-11-30T09:30:00+99:99", "+999-11-30T09:30:00Z", "Nov 30 2026"]) {
    assert.equal(rfc3339Micros(bad), undefined, bad);
    assert.equal(stopped(() => db.timestamp(bad)).tag, "rejected", bad);
  }
});

test("rows and typed getters", () => {
  const host = fakeHost();
  host.rows = {
    columns: ["id", "n", "flag", "at", "big"],
    rows: [[{ tag: "text", val: "a" }, { tag: "int", val: 2n }, { tag: "int", val: 1n }, { tag: "timestamp", val: 0n }, { tag: "int", val: 2n ** 62n }]],
  };
  const row = db.queryOne("SELECT ...");
  assert.ok(row);
  assert.equal(row.text("id"), "a");
  assert.equal(row.int("n"), 2);
  assert.equal(row.boolean("flag"), true);
  assert.equal(row.text("n"), undefined);
  assert.deepEqual(row.toObject(), { id: "a", n: 2, flag: 1, at: new Date(0), big: 2n ** 62n });
  assert.equal(db.exec("UPDATE ..."), 1);
});

test("host errors become outcomes the way Rust's ? does", () => {
  const host = fakeHost();
  for (const [fail, tag, reason] of [
    [{ tag: "unavailable", val: "down" }, "retry", "database unavailable: down"],
    [{ tag: "constraint", val: { kind: "unique", name: "pk", message: "dup" } }, "retry", "unique constraint pk violated: dup"],
    [{ tag: "constraint", val: { kind: "foreign-key", name: "fk", message: "no parent" } }, "retry", "foreign-key constraint fk violated: no parent"],
    [{ tag: "constraint", val: { kind: "check", name: "n_check", message: "n < 0" } }, "rejected", "check constraint n_check violated: n < 0"],
    [{ tag: "constraint", val: { kind: "not-null", message: "null note" } }, "rejected", "not-null constraint (unnamed) violated: null note"],
    [{ tag: "denied", val: "no" }, "rejected", "statement denied: no"],
    [{ tag: "invalid", val: "bad" }, "rejected", "invalid statement: bad"],
    [{ tag: "limit", val: "big" }, "rejected", "database limit: big"],
  ] as const) {
    host.fail = fail;
    assert.throws(
      () => db.exec("x"),
      (e: unknown) => e instanceof DbError && e.outcome().tag === tag && (e.outcome() as { val: string }).val === reason,
    );
  }
  host.fail = { tag: "constraint", val: { kind: "unique", message: "dup" } };
  assert.throws(() => db.query("x"), (e: unknown) => e instanceof DbError && e.isUniqueViolation());
});

test("the plugin wrapper ends events with thrown outcomes, logs and rethrows bugs", () => {
  const host = fakeHost();
  const stops = plugin({ name: "p", version: "1", migrations: [], handle: () => stop(skipped("nothing")) });
  assert.deepEqual(stops.handle(rawEvent("{}")), { tag: "skipped", val: "nothing" });
  const publishes = plugin({
    name: "p",
    version: "1",
    migrations: [],
    handle: () => {
      publish.json("t", undefined, {});
      return { tag: "done" };
    },
  });
  host.fail = { tag: "denied", val: "topic t is not granted" };
  assert.deepEqual(publishes.handle(rawEvent("{}")), { tag: "rejected", val: "publish denied: topic t is not granted" });
  host.fail = undefined;
  const buggy = plugin({
    name: "p",
    version: "1",
    migrations: [],
    handle: () => {
      throw new TypeError("oops");
    },
  });
  assert.throws(() => buggy.handle(rawEvent("{}")), TypeError);
  const last = host.logs.at(-1);
  assert.equal(last.level, "error");
  assert.match(last.message, /p threw on t\/0@7: TypeError: oops/);
  assert.deepEqual(stops.describe(), { name: "p", version: "1", migrations: [] });
});

test("publish.json sends compact UTF-8, bigints as strings", () => {
  const host = fakeHost();
  publish.json("t", "k", { name: "María", n: 5n }, { h: "v" });
  const sent = host.calls.at(-1).send;
  assert.equal(new TextDecoder().decode(sent.payload), '{"name":"María","n":"5"}');
  assert.deepEqual(sent.key, enc.encode("k"));
  assert.deepEqual(sent.headers, [{ name: "h", value: enc.encode("v") }]);
});

test("timestamps from epoch values, in one range with RFC 3339", () => {
  fakeHost();
  const at = 1_796_031_000_250_000n; // 2026-11-30T09:30:00.250Z
  assert.deepEqual(db.timestampSecs(1_796_031_000.25), { tag: "timestamp", val: at });
  assert.deepEqual(db.timestampSecs(1_796_031_000n), { tag: "timestamp", val: 1_796_031_000_000_000n });
  assert.deepEqual(db.timestampMillis(1_796_031_000_250), { tag: "timestamp", val: at });
  assert.deepEqual(db.timestampMillis(1_796_031_000_250n), { tag: "timestamp", val: at });
  assert.deepEqual(db.timestampMicros(at), { tag: "timestamp", val: at });
  assert.deepEqual(db.timestampMicros(-1), { tag: "timestamp", val: -1n });
  // Float error rounds to the microsecond, not down.
  assert.deepEqual(db.timestampSecs(1_732_260_347.209), { tag: "timestamp", val: 1_732_260_347_209_000n });
  assert.deepEqual(db.timestamp(1_796_031_000_250), { tag: "timestamp", val: at });
  assert.deepEqual(db.timestampSecs(253_402_300_799), { tag: "timestamp", val: 253_402_300_799_000_000n });
  assert.deepEqual(db.timestampSecs(-62_135_596_800), { tag: "timestamp", val: MIN_TIMESTAMP_MICROS });
  for (const [f, v] of [
    [db.timestampSecs, 253_402_300_800],
    [db.timestampSecs, -62_135_596_801],
    [db.timestampSecs, 1_796_031_000_250], // milliseconds given as seconds
    [db.timestampMillis, 2n ** 63n],
    [db.timestampMicros, MAX_TIMESTAMP_MICROS + 1n],
    [db.timestampMillis, Number.NaN],
    [db.timestampSecs, Number.POSITIVE_INFINITY],
    [db.timestamp, 8.64e15],
  ] as const) {
    const outcome = stopped(() => f(v as never));
    assert.equal(outcome.tag, "rejected", String(v));
    assert.match(outcome.val ?? "", /out of the timestamp range|not a timestamp/, String(v));
  }
  assert.equal(rfc3339Micros("0001-01-01T00:00:00Z"), MIN_TIMESTAMP_MICROS);
  assert.equal(rfc3339Micros("9999-12-31T23:59:59.999999Z"), MAX_TIMESTAMP_MICROS);
  // Years below 100 are themselves (Date.UTC would make 0050 into 1950).
  assert.equal(rfc3339Micros("0050-06-01T00:00:00Z"), -60_576_249_600_000_000n);
  for (const out of ["0000-12-31T23:59:59Z", "0001-01-01T00:30:00+01:00", "9999-12-31T23:30:00-01:00", "9999-12-31T23:59:60Z"]) {
    assert.equal(rfc3339Micros(out), undefined, out);
  }
});

test("rfc3339Text writes what SQLite holds, and reads back", () => {
  assert.equal(rfc3339Text(0n), "1970-01-01T00:00:00+00:00");
  assert.equal(rfc3339Text(1_796_031_000_500_000n), "2026-11-30T09:30:00.500+00:00");
  assert.equal(rfc3339Text(1_709_166_600_123_456n), "2024-02-29T00:30:00.123456+00:00");
  assert.equal(rfc3339Text(-1n), "1969-12-31T23:59:59.999999+00:00");
  assert.equal(rfc3339Text(MIN_TIMESTAMP_MICROS), "0001-01-01T00:00:00+00:00");
  assert.equal(rfc3339Text(MAX_TIMESTAMP_MICROS), "9999-12-31T23:59:59.999999+00:00");
  assert.equal(rfc3339Text(MAX_TIMESTAMP_MICROS + 1n), "+10000-01-01T00:00:00+00:00");
  for (let day = -719_162n; day < 2_932_897n; day += 997n) {
    const micros = day * 86_400_000_000n + 45_296_789_000n;
    assert.equal(rfc3339Micros(rfc3339Text(micros)), micros, String(micros));
  }
});

test("settings are read once per instance, and bad ones reject each event alike", () => {
  const host = fakeHost();
  host.settings = '{"limit": 3}';
  const settings = new Settings(t.object({ limit: t.integer }));
  assert.deepEqual(settings.get(), { limit: 3 });
  host.settings = '{"limit": 4}';
  assert.deepEqual(settings.get(), { limit: 3 }, "read once");
  assert.deepEqual(config.settings(t.object({ limit: t.integer })), { limit: 4 }, "config.settings reads each time");
  host.settings = '{"limit": "ten"}';
  const bad = new Settings(t.object({ limit: t.integer }));
  const first = stopped(() => bad.get());
  host.settings = '{"limit": 10}';
  assert.deepEqual(stopped(() => bad.get()), first);
  assert.deepEqual(first, { tag: "rejected", val: 'invalid plugin setting limit: expected an integer, got the string "ten"' });
});

test("rows decode into checked objects alike on both backends", () => {
  const host = fakeHost();
  const Account = t.object({
    id: t.string,
    n: t.integer,
    owner: t.boolean,
    at: t.string,
    born: t.optional(t.string),
    prefs: t.json(t.object({ lang: t.string })),
    raw: t.bytes,
  });
  const columns = ["id", "n", "owner", "at", "born", "prefs", "raw"];
  const postgres = [
    { tag: "text", val: "u1" },
    { tag: "int", val: 3n },
    { tag: "boolean", val: true },
    { tag: "timestamp", val: 1_796_031_000_500_000n },
    { tag: "null" },
    { tag: "json", val: '{"lang":"fa"}' },
    { tag: "bytes", val: new Uint8Array([0, 255]) },
  ];
  const sqlite = [
    { tag: "text", val: "u1" },
    { tag: "int", val: 3n },
    { tag: "int", val: 1n },
    { tag: "text", val: "2026-11-30T09:30:00.500+00:00" },
    { tag: "null" },
    { tag: "text", val: '{"lang":"fa"}' },
    { tag: "bytes", val: new Uint8Array([0, 255]) },
  ];
  const expected = { id: "u1", n: 3, owner: true, at: "2026-11-30T09:30:00.500+00:00", prefs: { lang: "fa" }, raw: new Uint8Array([0, 255]) };
  for (const cells of [postgres, sqlite]) {
    host.rows = { columns, rows: [cells, cells] };
    assert.deepEqual(db.queryAs(Account, "SELECT ..."), [expected, expected]);
    assert.deepEqual(db.queryOneAs(Account, "SELECT ..."), expected);
    assert.deepEqual(db.queryOne("SELECT ...")?.decode(Account), expected);
  }
  host.rows = { columns, rows: [] };
  assert.equal(db.queryOneAs(Account, "SELECT ..."), undefined);
  // Outside a row, 1 is no boolean.
  assert.equal(stopped(() => new Event(rawEvent('{"b": 1}')).json(t.object({ b: t.boolean }))).tag, "rejected");
  for (const [i, cell, reason] of [
    [1, { tag: "null" }, "invalid statement: row 2 does not decode: column n: expected an integer, got null"],
    [2, { tag: "int", val: 2n }, "invalid statement: row 2 does not decode: column owner: expected a boolean, got number 2"],
    [5, { tag: "text", val: "{" }, "invalid statement: row 2 does not decode: column prefs: not JSON"],
  ] as const) {
    const bad = [...sqlite];
    bad[i] = cell;
    host.rows = { columns, rows: [sqlite, bad] };
    assert.throws(
      () => db.queryAs(Account, "SELECT ..."),
      (e: unknown) => e instanceof DbError && e.outcome().tag === "rejected" && (e.outcome() as { val: string }).val.startsWith(reason),
      reason,
    );
  }
  // A row is an object: one column is read as a field.
  host.rows = { columns: ["n"], rows: [[{ tag: "int", val: 2n }]] };
  assert.deepEqual(db.queryOneAs(t.object({ n: t.integer }), "SELECT count(*) AS n ..."), { n: 2 });
  assert.throws(
    () => db.queryOneAs(t.integer, "SELECT count(*) AS n ..."),
    (e: unknown) => e instanceof DbError && e.message === "invalid statement: row 1 does not decode: expected an integer, got an object",
  );
});

test("one migration text for both backends", () => {
  assert.deepEqual(portableMigration("0001-t", "CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY)"), {
    id: "0001-t",
    postgres: "CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY)",
    sqlite: "CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY)",
  });
});
