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
from switchyard import DbError, Event, Plugin, Stop, db, decode, name, publish, validate  # noqa: E402


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
