"""Unit tests of the Python SDK, on the bindings componentize-py generates
from wit/plugin.wit (their host calls replaced by fakes).

    .switchyard/venv-plugins/bin/python plugins/sdk-py/tests/test_sdk.py

(scripts/test runs it.) The contract tests run the SDK inside real
components; these cover its corners one by one.
"""

import atexit
import datetime
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

SDK = Path(__file__).resolve().parent.parent
ROOT = SDK.parent.parent

# The bindings of the WIT, as the component gets them.
_bindings = tempfile.mkdtemp(prefix="switchyard-py-bindings-")
atexit.register(shutil.rmtree, _bindings, True)
_tool = os.environ.get("SWITCHYARD_COMPONENTIZE_PY") or str(Path(sys.executable).parent / "componentize-py")
subprocess.run([_tool, "-d", str(ROOT / "wit"), "-w", "plugin", "bindings", _bindings], check=True)
sys.path[:0] = [_bindings, str(SDK)]

from componentize_py_types import Err  # noqa: E402
from wit_world.imports import config as raw_config  # noqa: E402
from wit_world.imports import db as raw_db  # noqa: E402
from wit_world.imports import log as raw_log  # noqa: E402
from wit_world.imports import publish as raw_publish  # noqa: E402
from wit_world.imports import types as raw_types  # noqa: E402

import switchyard  # noqa: E402
from switchyard import (  # noqa: E402
    MAX_TIMESTAMP_MICROS, MIN_TIMESTAMP_MICROS, DbError, Event, Plugin, Settings, Stop, config, db, decode, name,
    portable_migration, publish, rfc3339_micros, rfc3339_text, validate,
)


class Host:
    """Fakes of the host's functions, recording what the SDK sent."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.logs: list[tuple[Any, str]] = []
        self.fail: Optional[Any] = None
        self.rows = raw_db.Rows(columns=[], rows=[])
        self.settings = "{}"

    def install(self) -> None:
        def execute(sql, params):
            self.calls.append((sql, params))
            if self.fail is not None:
                raise Err(self.fail)
            return 1

        def query(sql, params):
            self.calls.append((sql, params))
            if self.fail is not None:
                raise Err(self.fail)
            return self.rows

        def send(message):
            self.calls.append(("send", message))
            if self.fail is not None:
                raise Err(self.fail)

        raw_db.execute = execute
        raw_db.query = query
        raw_publish.send = send
        raw_log.write = lambda level, message: self.logs.append((level, message))
        raw_config.settings = lambda: self.settings
        raw_config.get = lambda key: None


def event(payload: bytes, topic: str = "t", headers=(), key: Optional[bytes] = None) -> raw_types.Event:
    return raw_types.Event(
        topic=topic, partition=0, offset=7, timestamp_ms=None, key=key, payload=payload,
        headers=[raw_types.Header(name=n, value=v) for n, v in headers],
    )


@dataclass
class Inner:
    user_id: Optional[str]
    email: Optional[str]


@dataclass
class Outer:
    v: Any
    payload: Optional[Inner]
    tags: list[str] = field(default_factory=list)
    camel: Optional[str] = name("camelCase", None)


class DecodeTest(unittest.TestCase):
    def test_dataclasses_decode_with_paths_in_errors(self) -> None:
        got = decode(Outer, {"v": 1, "payload": {"user_id": "u", "email": None}, "camelCase": "c", "extra": 1})
        self.assertEqual(got, Outer(v=1, payload=Inner(user_id="u", email=None), tags=[], camel="c"))
        self.assertEqual(decode(Outer, {"v": None}).payload, None)
        with self.assertRaisesRegex(switchyard.DecodeError, r"^payload\.user_id: expected a string, got number 42$"):
            decode(Outer, {"v": 1, "payload": {"user_id": 42}})
        with self.assertRaisesRegex(switchyard.DecodeError, r"tags\[1\]: expected a string"):
            decode(Outer, {"v": 1, "payload": None, "tags": ["a", 2]})
        with self.assertRaisesRegex(switchyard.DecodeError, "missing field v"):
            decode(Outer, {})
        with self.assertRaisesRegex(switchyard.DecodeError, "expected an object, got an array"):
            decode(Outer, [])
        self.assertEqual(decode(int, 3.0), 3)
        with self.assertRaisesRegex(switchyard.DecodeError, "64-bit"):
            decode(int, 2**63)
        with self.assertRaisesRegex(switchyard.DecodeError, "64-bit"):
            decode(int, 1e300)
        with self.assertRaises(switchyard.DecodeError):
            decode(int, True)


class EventTest(unittest.TestCase):
    def test_bad_payloads_are_rejected_naming_the_topic(self) -> None:
        for payload, words in [
            (b"", "empty payload"),
            (b"\xff\xfe", "not UTF-8"),
            (b'{"v": ', "invalid payload"),
            (b'{"v": 1, "payload": {"user_id": 42}}', "payload.user_id: expected a string"),
            (b'{"v": NaN}', "NaN is not JSON"),
            (b'{"v": 1, "payload": {"user_id": "\\ud800"}}', "lone surrogate"),
        ]:
            with self.assertRaises(Stop) as stopped:
                Event(event(payload, topic="user.registered.v1")).json(Outer)
            self.assertIsInstance(stopped.exception.outcome, raw_types.Outcome_Rejected)
            self.assertIn("user.registered.v1: ", stopped.exception.outcome.value)
            self.assertIn(words, stopped.exception.outcome.value)

    def test_headers_and_key_as_text(self) -> None:
        ev = Event(event(b"{}", headers=[("event-id", b"e-1"), ("bin", b"\xff"), ("null", None), ("event-id", b"e-2")], key=b"k"))
        self.assertEqual(ev.header("event-id"), "e-1")
        self.assertIsNone(ev.header("bin"))
        self.assertIsNone(ev.header("null"))
        self.assertIsNone(ev.header("missing"))
        self.assertEqual(ev.headers(), {"event-id": "e-1"})
        self.assertEqual(ev.key, "k")


class DbTest(unittest.TestCase):
    def setUp(self) -> None:
        self.host = Host()
        self.host.install()

    def test_parameters_map_to_typed_values(self) -> None:
        at = datetime.datetime(2026, 11, 30, 9, 30, 0, 500000, tzinfo=datetime.timezone.utc)
        db.execute("x", "s", 1, True, 1.5, None, b"\x00", at, datetime.date(2026, 11, 30), db.json({"a": 1}), db.uuid("u"))
        _, params = self.host.calls[-1]
        self.assertEqual(
            params,
            [
                raw_db.Value_Text("s"), raw_db.Value_Int(1), raw_db.Value_Boolean(True), raw_db.Value_Float(1.5),
                raw_db.Value_Null(), raw_db.Value_Bytes(b"\x00"), raw_db.Value_Timestamp(1_796_031_000_500_000),
                raw_db.Value_Date("2026-11-30"), raw_db.Value_Json('{"a": 1}'), raw_db.Value_Uuid("u"),
            ],
        )
        with self.assertRaisesRegex(ValueError, "naive datetime"):
            db.execute("x", datetime.datetime(2026, 1, 1))
        with self.assertRaisesRegex(ValueError, "64-bit"):
            db.execute("x", 2**64)
        with self.assertRaisesRegex(TypeError, "not a SQL parameter"):
            db.execute("x", object())

    def test_rfc3339_timestamps(self) -> None:
        self.assertEqual(db.timestamp("2026-11-30T14:00:00+03:00"), raw_db.Value_Timestamp(1_796_036_400_000_000))
        self.assertEqual(db.timestamp("1970-01-01T00:00:00Z"), raw_db.Value_Timestamp(0))
        self.assertEqual(switchyard.rfc3339_micros("2024-02-29T00:00:00.123456789-00:30"), 1_709_166_600_123_456)
        # The Rust SDK's refusals (plugins/sdk/src/lib.rs), the same here.
        for bad in ["", "yesterday", "2026-11-30", "2026-11-30T09:30:00", "2026-02-30T00:00:00Z",
                    "2026-11-30T24:00:00Z", "2026-11-30T09:30:00.Z", "2026-11-30T09:30:00+3:00",
                    "2026-11-30T09:30:00+99:99", "+999-11-30T09:30:00Z", "20261130T093000+00:00"]:
            self.assertIsNone(switchyard.rfc3339_micros(bad), bad)
            with self.assertRaises(Stop):
                db.timestamp(bad)

    def test_rows_and_typed_getters(self) -> None:
        self.host.rows = raw_db.Rows(
            columns=["id", "n", "flag", "at"],
            rows=[[raw_db.Value_Text("a"), raw_db.Value_Int(2), raw_db.Value_Int(1), raw_db.Value_Timestamp(0)]],
        )
        row = db.query_one("SELECT ...")
        assert row is not None
        self.assertEqual((row.text("id"), row.int("n"), row.boolean("flag")), ("a", 2, True))
        self.assertEqual(row["at"], datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc))
        self.assertIsNone(row.text("n"))
        with self.assertRaises(KeyError):
            row["missing"]

    def test_errors_become_outcomes_like_rusts_question_mark(self) -> None:
        cases = [
            (raw_db.Error_Unavailable("down"), raw_types.Outcome_Retry, "database unavailable: down"),
            (raw_db.Error_Constraint(raw_db.ConstraintViolation(raw_db.ConstraintKind.UNIQUE, "pk", "dup")), raw_types.Outcome_Retry, "unique constraint pk violated: dup"),
            (raw_db.Error_Constraint(raw_db.ConstraintViolation(raw_db.ConstraintKind.FOREIGN_KEY, "fk", "no parent")), raw_types.Outcome_Retry, "foreign-key constraint fk violated: no parent"),
            (raw_db.Error_Constraint(raw_db.ConstraintViolation(raw_db.ConstraintKind.CHECK, "n_check", "n < 0")), raw_types.Outcome_Rejected, "check constraint n_check violated: n < 0"),
            (raw_db.Error_Constraint(raw_db.ConstraintViolation(raw_db.ConstraintKind.NOT_NULL, None, "null note")), raw_types.Outcome_Rejected, "not-null constraint (unnamed) violated: null note"),
            (raw_db.Error_Denied("no"), raw_types.Outcome_Rejected, "statement denied: no"),
            (raw_db.Error_Invalid("bad"), raw_types.Outcome_Rejected, "invalid statement: bad"),
            (raw_db.Error_Limit("big"), raw_types.Outcome_Rejected, "database limit: big"),
        ]
        for error, kind, reason in cases:
            self.host.fail = error
            with self.assertRaises(DbError) as raised:
                db.execute("x")
            outcome = raised.exception.outcome()
            self.assertIsInstance(outcome, kind)
            self.assertEqual(outcome.value, reason)
        self.host.fail = raw_db.Error_Constraint(raw_db.ConstraintViolation(raw_db.ConstraintKind.UNIQUE, None, "dup"))
        with self.assertRaises(DbError) as raised:
            db.execute("x")
        self.assertTrue(raised.exception.is_unique_violation())


@dataclass
class Prefs:
    lang: str


@dataclass
class Account:
    id: str
    n: int
    owner: bool
    at: str
    born: Optional[str]
    prefs: Prefs
    raw: bytes
    tags: list[str] = field(default_factory=list)


class HelpersTest(unittest.TestCase):
    """The helpers of issue 16, with the Rust and TypeScript SDKs' cases."""

    def setUp(self) -> None:
        self.host = Host()
        self.host.install()

    def rejected(self, f) -> str:
        with self.assertRaises(Stop) as stopped:
            f()
        self.assertIsInstance(stopped.exception.outcome, raw_types.Outcome_Rejected)
        return stopped.exception.outcome.value

    def test_timestamps_from_epoch_values_in_one_range_with_rfc3339(self) -> None:
        at = 1_796_031_000_250_000  # 2026-11-30T09:30:00.250Z
        self.assertEqual(db.timestamp_secs(1_796_031_000.25), raw_db.Value_Timestamp(at))
        self.assertEqual(db.timestamp_millis(1_796_031_000_250), raw_db.Value_Timestamp(at))
        self.assertEqual(db.timestamp_micros(at), raw_db.Value_Timestamp(at))
        self.assertEqual(db.timestamp_micros(-1), raw_db.Value_Timestamp(-1))
        self.assertEqual(db.timestamp(1_796_031_000), raw_db.Value_Timestamp(1_796_031_000_000_000))
        # Float error rounds to the microsecond, not down.
        self.assertEqual(db.timestamp_secs(1_732_260_347.209), raw_db.Value_Timestamp(1_732_260_347_209_000))
        self.assertEqual(db.timestamp_secs(253_402_300_799), raw_db.Value_Timestamp(253_402_300_799_000_000))
        self.assertEqual(db.timestamp_secs(-62_135_596_800), raw_db.Value_Timestamp(MIN_TIMESTAMP_MICROS))
        for f, v in [
            (db.timestamp_secs, 253_402_300_800),
            (db.timestamp_secs, -62_135_596_801),
            (db.timestamp_secs, 1_796_031_000_250),  # milliseconds given as seconds
            (db.timestamp_millis, 2**63),
            (db.timestamp_micros, MAX_TIMESTAMP_MICROS + 1),
            (db.timestamp_millis, float("nan")),
            (db.timestamp_secs, float("inf")),
            (db.timestamp, 1e300),
        ]:
            self.assertIn("out of the timestamp range", self.rejected(lambda: f(v)), v)
        with self.assertRaises(TypeError):
            db.timestamp_secs("1796031000")
        self.assertEqual(rfc3339_micros("0001-01-01T00:00:00Z"), MIN_TIMESTAMP_MICROS)
        self.assertEqual(rfc3339_micros("9999-12-31T23:59:59.999999Z"), MAX_TIMESTAMP_MICROS)
        self.assertEqual(rfc3339_micros("0050-06-01T00:00:00Z"), -60_576_249_600_000_000)
        for out in ["0000-12-31T23:59:59Z", "0001-01-01T00:30:00+01:00", "9999-12-31T23:30:00-01:00", "9999-12-31T23:59:60Z"]:
            self.assertIsNone(rfc3339_micros(out), out)
            self.rejected(lambda: db.timestamp(out))

    def test_rfc3339_text_is_what_sqlite_holds_and_reads_back(self) -> None:
        self.assertEqual(rfc3339_text(0), "1970-01-01T00:00:00+00:00")
        self.assertEqual(rfc3339_text(1_796_031_000_500_000), "2026-11-30T09:30:00.500+00:00")
        self.assertEqual(rfc3339_text(1_709_166_600_123_456), "2024-02-29T00:30:00.123456+00:00")
        self.assertEqual(rfc3339_text(-1), "1969-12-31T23:59:59.999999+00:00")
        self.assertEqual(rfc3339_text(MIN_TIMESTAMP_MICROS), "0001-01-01T00:00:00+00:00")
        self.assertEqual(rfc3339_text(MAX_TIMESTAMP_MICROS), "9999-12-31T23:59:59.999999+00:00")
        self.assertEqual(rfc3339_text(MAX_TIMESTAMP_MICROS + 1), "+10000-01-01T00:00:00+00:00")
        for day in range(-719_162, 2_932_897, 997):
            micros = day * 86_400_000_000 + 45_296_789_000
            self.assertEqual(rfc3339_micros(rfc3339_text(micros)), micros, micros)

    def test_settings_are_read_once_and_bad_ones_reject_each_event_alike(self) -> None:
        @dataclass
        class Conf:
            limit: int

        self.host.settings = '{"limit": 3}'
        settings = Settings(Conf)
        self.assertEqual(settings.get(), Conf(limit=3))
        self.host.settings = '{"limit": 4}'
        self.assertEqual(settings.get(), Conf(limit=3), "read once")
        self.assertEqual(config.settings(Conf), Conf(limit=4), "config.settings reads each time")
        self.host.settings = '{"limit": "ten"}'
        bad = Settings(Conf)
        first = self.rejected(bad.get)
        self.host.settings = '{"limit": 10}'
        self.assertEqual(self.rejected(bad.get), first)
        self.assertEqual(first, 'invalid plugin setting limit: expected an integer, got the string "ten"')

    def test_rows_decode_into_dataclasses_alike_on_both_backends(self) -> None:
        columns = ["id", "n", "owner", "at", "born", "prefs", "raw", "tags"]
        postgres = [
            raw_db.Value_Text("u1"), raw_db.Value_Int(3), raw_db.Value_Boolean(True),
            raw_db.Value_Timestamp(1_796_031_000_500_000), raw_db.Value_Null(), raw_db.Value_Json('{"lang":"fa"}'),
            raw_db.Value_Bytes(b"\x00\xff"), raw_db.Value_Json('["a"]'),
        ]
        sqlite = [
            raw_db.Value_Text("u1"), raw_db.Value_Int(3), raw_db.Value_Int(1),
            raw_db.Value_Text("2026-11-30T09:30:00.500+00:00"), raw_db.Value_Null(), raw_db.Value_Text('{"lang":"fa"}'),
            raw_db.Value_Bytes(b"\x00\xff"), raw_db.Value_Text('["a"]'),
        ]
        expected = Account(id="u1", n=3, owner=True, at="2026-11-30T09:30:00.500+00:00", born=None,
                           prefs=Prefs(lang="fa"), raw=b"\x00\xff", tags=["a"])
        for cells in (postgres, sqlite):
            self.host.rows = raw_db.Rows(columns=columns, rows=[cells, cells])
            self.assertEqual(db.query_as(Account, "SELECT ..."), [expected, expected])
            self.assertEqual(db.query_one_as(Account, "SELECT ..."), expected)
            row = db.query_one("SELECT ...")
            assert row is not None
            self.assertEqual(row.decode(Account), expected)
        self.host.rows = raw_db.Rows(columns=columns, rows=[])
        self.assertIsNone(db.query_one_as(Account, "SELECT ..."))
        # Outside a row, 1 is no boolean.
        with self.assertRaises(switchyard.DecodeError):
            decode(bool, 1)
        for i, cell, reason in [
            (1, raw_db.Value_Null(), "invalid statement: row 2 does not decode into Account: column n: expected an integer, got null"),
            (2, raw_db.Value_Int(2), "invalid statement: row 2 does not decode into Account: column owner: expected a boolean, got number 2"),
            (5, raw_db.Value_Text("{"), "invalid statement: row 2 does not decode into Account: column prefs: not JSON"),
        ]:
            bad = list(sqlite)
            bad[i] = cell
            self.host.rows = raw_db.Rows(columns=columns, rows=[sqlite, bad])
            with self.assertRaises(DbError) as raised:
                db.query_as(Account, "SELECT ...")
            outcome = raised.exception.outcome()
            self.assertIsInstance(outcome, raw_types.Outcome_Rejected)
            self.assertTrue(outcome.value.startswith(reason), outcome.value)
        self.host.rows = raw_db.Rows(columns=columns[:2], rows=[sqlite[:2]])
        with self.assertRaises(DbError) as raised:
            db.query_as(Account, "SELECT ...")
        self.assertEqual(str(raised.exception), "invalid statement: row 1 does not decode into Account: no column owner in the result")
        # One column: its own type; several: a dict.
        self.host.rows = raw_db.Rows(columns=["n"], rows=[[raw_db.Value_Int(7)]])
        self.assertEqual(db.query_one_as(int, "SELECT count(*) AS n ..."), 7)
        self.host.rows = raw_db.Rows(columns=["m"], rows=[[raw_db.Value_Null()]])
        self.assertIsNone(db.query_one_as(Optional[int], "SELECT max(n) AS m ..."))
        self.host.rows = raw_db.Rows(columns=["a", "b"], rows=[[raw_db.Value_Text("x"), raw_db.Value_Timestamp(0)]])
        self.assertEqual(db.query_one_as(dict[str, Any], "SELECT ..."), {"a": "x", "b": "1970-01-01T00:00:00+00:00"})
        self.assertEqual(db.query_one_as(dict, "SELECT ..."), {"a": "x", "b": "1970-01-01T00:00:00+00:00"})
        with self.assertRaises(DbError) as raised:
            db.query_one_as(int, "SELECT ...")
        self.assertIn("a row of 2 columns is not one int", str(raised.exception))

    def test_one_migration_text_for_both_backends(self) -> None:
        m = portable_migration("0001-t", "CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY)")
        self.assertEqual((m.id, m.postgres, m.sqlite), ("0001-t", m.sqlite, "CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY)"))


class PluginTest(unittest.TestCase):
    def setUp(self) -> None:
        self.host = Host()
        self.host.install()

    def world(self, body):
        class P(Plugin):
            name = "p"

            def handle(self, ev):
                return body(ev)

        return P.world()()

    def test_raised_outcomes_and_errors_end_the_event(self) -> None:
        def stops(ev):
            switchyard.stop(switchyard.skipped("nothing"))

        self.assertEqual(self.world(stops).handle(event(b"{}")), raw_types.Outcome_Skipped("nothing"))

        def publishes(ev):
            publish.json("t", None, {})

        self.host.fail = raw_publish.Error_Denied("topic t is not granted")
        self.assertEqual(self.world(publishes).handle(event(b"{}")), raw_types.Outcome_Rejected("publish denied: topic t is not granted"))
        self.assertEqual(self.world(lambda ev: ev.json(Outer)).handle(event(b"")).value, "t: empty payload, expected a JSON document")

    def test_a_bug_is_logged_with_its_traceback_and_raised(self) -> None:
        def buggy(ev):
            return {}["missing"]

        with self.assertRaises(KeyError):
            self.world(buggy).handle(event(b"{}"))
        level, message = self.host.logs[-1]
        self.assertEqual(level, raw_log.Level.ERROR)
        self.assertIn("p raised on t/0@7", message)
        self.assertIn("KeyError", message)
        self.assertIn("Traceback", message)

    def test_publish_json_sends_compact_utf8(self) -> None:
        publish.json("t", "k", {"name": "María"}, headers={"h": "v"})
        _, message = self.host.calls[-1]
        self.assertEqual(message.payload, '{"name":"María"}'.encode())
        self.assertEqual(message.key, b"k")
        self.assertEqual([(h.name, h.value) for h in message.headers], [("h", b"v")])


class EmailTest(unittest.TestCase):
    """The Rust SDK's cases (plugins/sdk/src/lib.rs): the same rules."""

    def test_same_answers_as_the_rust_sdk(self) -> None:
        for ok in ["ahmad@example.com", "test@example.com", "first.last+tag@mail.example.co.uk", "usuario@example.com",
                   "a@b.io", "user@xn--mgbh0fb.xn--kgbechtv", "کاربر@مثال.ایران"]:
            self.assertTrue(validate.is_valid_email(ok), ok)
        for bad in ["", "plainaddress", "@example.com", "user@", "user@example", "user@@example.com", "us er@example.com",
                    "user@exa mple.com", "user@example.c", "user@example.123", ".user@example.com", "user.@example.com",
                    "us..er@example.com", "user@-example.com", "user@example-.com", "user@example..com",
                    "user@.example.com", "user@example.com.", "a@b@example.com", "user\n@example.com",
                    "user@example.com\n", "a" * 65 + "@example.com"]:
            self.assertFalse(validate.is_valid_email(bad), repr(bad))


if __name__ == "__main__":
    unittest.main()
