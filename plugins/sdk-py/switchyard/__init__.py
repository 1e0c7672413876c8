"""Switchyard plugin SDK for Python.

A plugin is one method from an event to an outcome. The raw interface is
generated from ``wit/plugin.wit`` by componentize-py when the plugin is
built (the ``wit_world`` package), so the WIT stays the one source of truth;
this package adds what every plugin needs on top: checked JSON decoding of
the event into dataclasses, ``db.execute`` / ``db.query`` with plain Python
parameters, rows decoded into dataclasses (``db.query_as``), timestamps from
RFC 3339 or epoch values, ``publish.json``, settings read once per instance
(``Settings``), logging, migrations (``portable_migration`` when one text
fits both backends) and the four outcomes.

Errors end the event the way ``?`` does in the Rust SDK: a payload that does
not decode is ``rejected``; an unhandled database error is ``retry`` when it
may pass (unavailable, a UNIQUE or FOREIGN KEY violation: a race, a parent
row still on its way) and ``rejected`` when it cannot (a CHECK or NOT NULL
violation, a denied, invalid or over-limit statement, a row that does not
decode); a refused publish is ``rejected``. Any other exception is a bug: it
is logged with its traceback and traps the instance, as a Rust panic does
(the host retries the event, then dead-letters it).

    from dataclasses import dataclass
    from switchyard import Event, Plugin, db, publish, done

    @dataclass
    class Hit:
        page: str

    class Counter(Plugin):
        name = "counter"
        version = "0.1.0"
        migrations = []

        def handle(self, ev: Event):
            hit = ev.json(Hit)
            db.execute("INSERT INTO hits (page, n) VALUES ($1, 1) "
                       "ON CONFLICT (page) DO UPDATE SET n = hits.n + 1", hit.page)
            publish.json("hits.counted", hit.page, {"page": hit.page})
            return done()

    WitWorld = Counter.world()

componentize-py snapshots the plugin at build time: import every module at
the top of the file (a module imported later is not in the component), and
read settings and the clock inside ``handle``, never at import time.
"""

from __future__ import annotations

import dataclasses
import datetime
import json as _json
import re
import traceback
import typing
import unicodedata
from typing import Any, Optional, Union

from componentize_py_types import Err
from wit_world import Migration, PluginInfo
from wit_world.imports import config as _config
from wit_world.imports import db as _db
from wit_world.imports import log as _log
from wit_world.imports import publish as _publish
from wit_world.imports import types as _types

__all__ = [
    "Event", "Plugin", "Stop", "DbError", "PublishError", "DecodeError", "Row", "Settings",
    "db", "publish", "config", "log", "validate",
    "done", "skipped", "retry", "rejected", "stop", "migration", "portable_migration", "name",
    "rfc3339_micros", "rfc3339_text", "MIN_TIMESTAMP_MICROS", "MAX_TIMESTAMP_MICROS",
]

Outcome = _types.Outcome

# ───────────────────────────── outcomes ─────────────────────────────


def done() -> Outcome:
    """The event was handled: commit its SQL and its messages."""
    return _types.Outcome_Done()


def skipped(reason: str) -> Outcome:
    """Nothing to do: commit and move on; the reason is logged."""
    return _types.Outcome_Skipped(reason)


def retry(reason: str) -> Outcome:
    """A condition that may pass: roll back and deliver the event again later."""
    return _types.Outcome_Retry(reason)


def rejected(reason: str) -> Outcome:
    """The event is invalid: roll back and dead-letter it with the reason."""
    return _types.Outcome_Rejected(reason)


class Stop(Exception):
    """Raised to end the event early with an outcome (what ``?`` does in Rust)."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(getattr(outcome, "value", type(outcome).__name__))
        self.outcome = outcome


def stop(outcome: Outcome) -> typing.NoReturn:
    """End the event now with ``outcome``."""
    raise Stop(outcome)


def migration(id: str, postgres: str, sqlite: str) -> Migration:
    """A schema migration with its PostgreSQL and SQLite variants."""
    return Migration(id=id, postgres=postgres, sqlite=sqlite)


def portable_migration(id: str, sql: str) -> Migration:
    """A schema migration whose one text runs on both backends (the Rust SDK's
    ``portable_migration``): ``TEXT``, ``BIGINT``, ``INTEGER``, ``BOOLEAN``,
    ``DOUBLE PRECISION``, ``TIMESTAMPTZ``, ``DATE``, ``PRIMARY KEY``, ``NOT NULL``,
    ``DEFAULT``, ``CHECK``, ``REFERENCES`` and ``CREATE INDEX`` mean the same on
    both. Write ``id TEXT NOT NULL PRIMARY KEY`` (SQLite lets a non-integer key
    be NULL unless told); use ``migration`` when the texts must differ
    (``BYTEA``/``BLOB``, ``JSONB``, ``uuid``, ``bigserial``)."""
    return migration(id, sql, sql)


# ───────────────────────────── decoding ─────────────────────────────


class DecodeError(Exception):
    """A JSON value without the shape its type asks for; the message names the path."""


def name(json_name: str, default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field read from another JSON name: ``user_id: str = name("userId")``."""
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata={"json": json_name})
    return dataclasses.field(default=default, metadata={"json": json_name})


def _describe(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, (bytes, bytearray)):
        return "bytes"
    if isinstance(v, bool):
        return f"boolean {str(v).lower()}"
    if isinstance(v, (int, float)):
        return f"number {v}"
    if isinstance(v, str):
        return f"the string {_json.dumps(v)}" if len(v) <= 40 else "a string"
    if isinstance(v, list):
        return "an array"
    return "an object"


def _decode(tp: Any, v: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return v
    if origin is Union:
        if v is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _decode(inner[0], v, path)
        for a in inner:
            try:
                return _decode(a, v, path)
            except DecodeError:
                pass
        raise DecodeError(f"{path}: unexpected {_describe(v)}")
    if tp is str:
        if isinstance(v, str):
            return v
        raise DecodeError(f"{path}: expected a string, got {_describe(v)}")
    if tp is bool:
        if isinstance(v, bool):
            return v
        raise DecodeError(f"{path}: expected a boolean, got {_describe(v)}")
    if tp is int:
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, int) and not isinstance(v, bool):
            if not _I64_MIN <= v <= _I64_MAX:
                raise DecodeError(f"{path}: {v} is out of the 64-bit integer range")
            return v
        raise DecodeError(f"{path}: expected an integer, got {_describe(v)}")
    if tp is float:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        raise DecodeError(f"{path}: expected a number, got {_describe(v)}")
    if tp is bytes:
        if isinstance(v, (bytes, bytearray)):
            return bytes(v)
        raise DecodeError(f"{path}: expected bytes, got {_describe(v)}")
    if origin is list:
        if not isinstance(v, list):
            raise DecodeError(f"{path}: expected an array, got {_describe(v)}")
        return [_decode(args[0] if args else Any, x, f"{path}[{i}]") for i, x in enumerate(v)]
    if origin is dict:
        if not isinstance(v, dict):
            raise DecodeError(f"{path}: expected an object, got {_describe(v)}")
        return {k: _decode(args[1] if args else Any, x, f"{path}.{k}") for k, x in v.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(v, dict):
            raise DecodeError(f"{path or 'payload'}: expected an object, got {_describe(v)}")
        hints = typing.get_type_hints(tp)
        values = {}
        for f in dataclasses.fields(tp):
            key = f.metadata.get("json", f.name)
            where = f"{path}.{key}" if path else key
            if key in v:
                values[f.name] = _decode(hints[f.name], v[key], where)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                if typing.get_origin(hints[f.name]) is Union and type(None) in typing.get_args(hints[f.name]):
                    values[f.name] = None
                else:
                    raise DecodeError(f"missing field {where}")
        return tp(**values)
    raise TypeError(f"switchyard cannot decode into {tp!r}")


_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(text: str) -> Any:
    """JSON as serde_json reads it: no NaN or Infinity, and no string with
    a lone surrogate (``"\\ud800"``), which no UTF-8 text can hold."""
    value = _json.loads(text, parse_constant=_no_constant)
    # Only an escape can make one (the text itself is valid UTF-8): most
    # payloads skip the second pass.
    if _SURROGATE_ESCAPE.search(text) is None:
        return value
    try:
        _json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a string holds a lone surrogate escape, which is not valid Unicode") from None
    return value


def decode(tp: Any, value: Any, path: str = "") -> Any:
    """``value`` (parsed JSON) checked against ``tp``: a dataclass, ``str``, ``int``,
    ``float``, ``bool``, ``Optional[...]``, ``list[...]``, ``dict[str, ...]`` or ``Any``.
    Unknown fields are ignored; absent ``Optional`` fields are ``None``."""
    return _decode(tp, value, path)


# ───────────────────────────── events ─────────────────────────────


def _text(b: Optional[bytes]) -> Optional[str]:
    if b is None:
        return None
    try:
        return bytes(b).decode("utf-8")
    except UnicodeDecodeError:
        return None


class Event:
    """One Kafka event, with typed access to its payload, headers and key."""

    def __init__(self, raw: _types.Event) -> None:
        self.raw = raw
        self.topic: str = raw.topic
        self.partition: int = raw.partition
        self.offset: int = raw.offset
        self.timestamp_ms: Optional[int] = raw.timestamp_ms
        self.payload: bytes = bytes(raw.payload)

    @property
    def key(self) -> Optional[str]:
        """The record key as text, when present and UTF-8."""
        return _text(self.raw.key)

    def header(self, name: str) -> Optional[str]:
        """The first header with this name (case-sensitive), as text; None when
        absent, null or not UTF-8."""
        for h in self.raw.headers:
            if h.name == name:
                return _text(h.value)
        return None

    def headers(self) -> dict[str, str]:
        """Every header as text (absent, null and non-UTF-8 values left out)."""
        out: dict[str, str] = {}
        for h in self.raw.headers:
            v = _text(h.value)
            if v is not None and h.name not in out:
                out[h.name] = v
        return out

    def json(self, tp: Any = Any) -> Any:
        """The payload decoded as JSON and checked against ``tp`` (see ``decode``).
        An empty, non-UTF-8, non-JSON or wrongly shaped payload ends the event as
        ``rejected``, with a reason naming the topic and the field."""
        if not self.payload:
            stop(rejected(f"{self.topic}: empty payload, expected a JSON document"))
        text = _text(self.payload)
        if text is None:
            stop(rejected(f"{self.topic}: payload is not UTF-8, expected a JSON document"))
        try:
            value = _loads(text)
        except ValueError as e:
            stop(rejected(f"{self.topic}: invalid payload: {e}"))
        try:
            return _decode(tp, value, "")
        except DecodeError as e:
            stop(rejected(f"{self.topic}: invalid payload: {e}"))


# ───────────────────────────── db ─────────────────────────────

_CONSTRAINT = {
    _db.ConstraintKind.UNIQUE: "unique",
    _db.ConstraintKind.FOREIGN_KEY: "foreign-key",
    _db.ConstraintKind.NOT_NULL: "not-null",
    _db.ConstraintKind.CHECK: "check",
}


class DbError(Exception):
    """A database error the plugin did not handle (see ``outcome``)."""

    def __init__(self, error: _db.Error) -> None:
        self.error = error
        super().__init__(self._reason())

    def _reason(self) -> str:
        e = self.error
        if isinstance(e, _db.Error_Denied):
            return f"statement denied: {e.value}"
        if isinstance(e, _db.Error_Invalid):
            return f"invalid statement: {e.value}"
        if isinstance(e, _db.Error_Constraint):
            c = e.value
            return f"{_CONSTRAINT.get(c.kind, 'unknown')} constraint {c.name or '(unnamed)'} violated: {c.message}"
        if isinstance(e, _db.Error_Limit):
            return f"database limit: {e.value}"
        return f"database unavailable: {e.value}"

    @property
    def reason(self) -> str:
        return str(self)

    def is_unique_violation(self) -> bool:
        """True for a unique or primary-key violation."""
        return isinstance(self.error, _db.Error_Constraint) and self.error.value.kind == _db.ConstraintKind.UNIQUE

    def may_pass_on_retry(self) -> bool:
        """Whether the same statement may succeed when the event comes again: the
        database was unavailable, or a UNIQUE or FOREIGN KEY violation another
        event can change (a race on a key, a parent row still on its way). A
        CHECK or NOT NULL violation fails the same way every time."""
        if isinstance(self.error, _db.Error_Unavailable):
            return True
        if isinstance(self.error, _db.Error_Constraint):
            return self.error.value.kind in (_db.ConstraintKind.UNIQUE, _db.ConstraintKind.FOREIGN_KEY)
        return False

    def outcome(self) -> Outcome:
        """What the event becomes if this error is not handled: ``retry`` when it
        may pass, else ``rejected``, with the reason."""
        return retry(self.reason) if self.may_pass_on_retry() else rejected(self.reason)


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def _micros(d: datetime.datetime) -> int:
    if d.tzinfo is None:
        raise ValueError(f"a naive datetime is no instant: {d.isoformat()} (give it a tzinfo)")
    delta = d - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


MIN_TIMESTAMP_MICROS = -62_135_596_800_000_000
"""The earliest instant the timestamp readers accept, 0001-01-01T00:00:00Z, in µs since the epoch."""
MAX_TIMESTAMP_MICROS = 253_402_300_799_999_999
"""The latest, 9999-12-31T23:59:59.999999Z."""


def _in_range(micros: int) -> Optional[int]:
    return micros if MIN_TIMESTAMP_MICROS <= micros <= MAX_TIMESTAMP_MICROS else None


def _epoch_micros(value: Union[int, float], per_second: int) -> Optional[int]:
    """An epoch value counted ``per_second`` times a second as µs, or None out of
    range (or for NaN and infinities); a float is rounded to the microsecond."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"an epoch value is a number, not {type(value).__name__}")
    scale = 1_000_000 // per_second
    if isinstance(value, int):
        return _in_range(value * scale)
    if value != value or value in (float("inf"), float("-inf")):
        return None
    return _in_range(round(value * scale))


def _timestamp_of(micros: Optional[int], what: str) -> _db.Value:
    if micros is None:
        stop(rejected(f"{what} is out of the timestamp range 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z"))
    return _db.Value_Timestamp(micros)


def _value(p: Any) -> _db.Value:
    if p is None:
        return _db.Value_Null()
    if isinstance(p, bool):
        return _db.Value_Boolean(p)
    if isinstance(p, int):
        if not _I64_MIN <= p <= _I64_MAX:
            raise ValueError(f"{p} is out of the 64-bit integer range of a SQL parameter")
        return _db.Value_Int(p)
    if isinstance(p, float):
        return _db.Value_Float(p)
    if isinstance(p, str):
        return _db.Value_Text(p)
    if isinstance(p, (bytes, bytearray, memoryview)):
        return _db.Value_Bytes(bytes(p))
    if isinstance(p, datetime.datetime):
        return _db.Value_Timestamp(_micros(p))
    if isinstance(p, datetime.date):
        return _db.Value_Date(p.isoformat())
    if type(p).__module__ == _db.__name__ and type(p).__name__.startswith("Value_"):
        return p
    raise TypeError(f"not a SQL parameter: {type(p).__name__}")


def _cell(v: _db.Value) -> Any:
    if isinstance(v, _db.Value_Null):
        return None
    if isinstance(v, _db.Value_Timestamp):
        return _EPOCH + datetime.timedelta(microseconds=v.value)
    return v.value


def _view(v: _db.Value) -> Any:
    """A cell as ``Row.decode`` sees it: a timestamp as RFC 3339 text, the same
    on both backends; everything else as ``row[...]`` gives it."""
    if isinstance(v, _db.Value_Timestamp):
        return rfc3339_text(v.value)
    return _cell(v)


def _inner(tp: Any) -> Any:
    """``X`` of ``Optional[X]``; ``tp`` itself otherwise."""
    if typing.get_origin(tp) is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _column(tp: Any, v: Any, column: str) -> Any:
    """A column's value made ready for ``_decode``: a boolean field takes SQLite's
    0 and 1, and a dataclass, list or dict field takes JSON text (a ``json``
    column is text on SQLite)."""
    inner = _inner(tp)
    if inner is bool and type(v) is int and v in (0, 1):
        return v == 1
    structured = dataclasses.is_dataclass(inner) or typing.get_origin(inner) in (list, dict) or inner in (list, dict)
    if structured and isinstance(v, str):
        try:
            return _loads(v)
        except ValueError as e:
            raise DecodeError(f"{column}: not JSON: {e}") from None
    return v


def _decode_row(tp: Any, columns: list[str], values: list[_db.Value], row: Optional[int]) -> Any:
    view = {c: (_view(values[i]) if i < len(values) else None) for i, c in enumerate(columns)}
    try:
        if dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            for f in dataclasses.fields(tp):
                key = f.metadata.get("json", f.name)
                if key in view:
                    view[key] = _column(hints[f.name], view[key], key)
                elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING \
                        and _inner(hints[f.name]) is hints[f.name]:
                    raise DecodeError(f"no column {key} in the result")
            return _decode(tp, view, "")
        if tp is Any or tp is dict or typing.get_origin(tp) is dict:
            return _decode(dict[str, Any] if tp is dict else tp, view, "")
        if len(columns) != 1:
            raise DecodeError(f"a row of {len(columns)} columns is not one {getattr(tp, '__name__', tp)}: "
                              "select one column, or decode into a dataclass")
        return _decode(tp, _column(tp, view[columns[0]], columns[0]), columns[0])
    except DecodeError as e:
        which = "the row" if row is None else f"row {row}"
        name = getattr(tp, "__name__", str(tp))
        reason = str(e)
        why = reason if reason.startswith(("no column ", "a row of ")) else f"column {reason}"
        raise DbError(_db.Error_Invalid(f"{which} does not decode into {name}: {why}")) from None


class Row:
    """One result row: ``row["col"]`` as a Python value, typed getters, ``dict(row)``."""

    def __init__(self, columns: list[str], values: list[_db.Value]) -> None:
        self.columns = columns
        self.values = values

    def value(self, column: str) -> Optional[_db.Value]:
        """The raw cell of ``column``."""
        try:
            return self.values[self.columns.index(column)]
        except ValueError:
            return None

    def __getitem__(self, column: str) -> Any:
        v = self.value(column)
        if v is None:
            raise KeyError(column)
        return _cell(v)

    def keys(self) -> list[str]:
        return list(self.columns)

    def text(self, column: str) -> Optional[str]:
        v = self.value(column)
        if isinstance(v, (_db.Value_Text, _db.Value_Uuid, _db.Value_Date, _db.Value_Json)):
            return v.value
        return None

    def int(self, column: str) -> Optional[int]:
        v = self.value(column)
        if isinstance(v, _db.Value_Int):
            return v.value
        if isinstance(v, _db.Value_Boolean):
            return int(v.value)
        return None

    def boolean(self, column: str) -> Optional[bool]:
        """The cell as a boolean (SQLite stores booleans as 0/1)."""
        v = self.value(column)
        if isinstance(v, _db.Value_Boolean):
            return v.value
        if isinstance(v, _db.Value_Int):
            return v.value != 0
        return None

    def decode(self, tp: Any) -> Any:
        """The row decoded into ``tp``, as ``db.query_as`` decodes each row."""
        return _decode_row(tp, self.columns, self.values, None)


def _call(f: Any, *args: Any) -> Any:
    try:
        return f(*args)
    except Err as e:
        raise DbError(e.value) from None


class _Db:
    """SQL on the service database, in the event's transaction. Parameters are
    plain values: str → text, bool, int, float, bytes, datetime (aware) →
    timestamp, date → date, None → NULL; ``db.json``, ``db.uuid``,
    ``db.timestamp`` and ``db.now`` give the other types."""

    def execute(self, sql: str, *params: Any) -> int:
        """Run one statement that returns no rows; returns the rows it changed. Raises DbError."""
        return _call(_db.execute, sql, [_value(p) for p in params])

    def query(self, sql: str, *params: Any) -> list[Row]:
        """Run one statement and return its rows. Raises DbError."""
        rows = _call(_db.query, sql, [_value(p) for p in params])
        return [Row(rows.columns, cells) for cells in rows.rows]

    def query_one(self, sql: str, *params: Any) -> Optional[Row]:
        """The first row, or None. Raises DbError."""
        rows = self.query(sql, *params)
        return rows[0] if rows else None

    def query_as(self, tp: Any, sql: str, *params: Any) -> list[Any]:
        """Run one statement and decode each row into ``tp``: a dataclass whose
        fields are the columns (``name("col")`` for another name; other columns
        are ignored), a ``dict``, or for a one-column result that column's type
        (``int``, ``Optional[str]``).

        One dataclass reads the same rows on PostgreSQL and SQLite: timestamps
        arrive as RFC 3339 text (``2026-11-30T09:30:00.500+00:00``, see
        ``rfc3339_text``), a ``bool`` field takes SQLite's 0 and 1, a dataclass,
        ``list`` or ``dict`` field takes a ``json`` column (text on SQLite),
        ``bytes`` takes bytes, NULL is None. A row that does not fit raises a
        DbError (``invalid``, so ``rejected`` if unhandled) naming the row and
        the column: ``row 1 does not decode into Note: column n: expected an
        integer, got null``."""
        rows = _call(_db.query, sql, [_value(p) for p in params])
        return [_decode_row(tp, rows.columns, cells, i + 1) for i, cells in enumerate(rows.rows)]

    def query_one_as(self, tp: Any, sql: str, *params: Any) -> Any:
        """Like ``query_as``, for the first row only: None when there is none."""
        rows = _call(_db.query, sql, [_value(p) for p in params])
        return _decode_row(tp, rows.columns, rows.rows[0], 1) if rows.rows else None

    def json(self, value: Any) -> _db.Value:
        """A ``json`` parameter (jsonb on PostgreSQL): the value serialised."""
        return _db.Value_Json(_json.dumps(value))

    def uuid(self, value: str) -> _db.Value:
        return _db.Value_Uuid(str(value))

    def timestamp(self, value: Union[datetime.datetime, str, int, float]) -> _db.Value:
        """A ``timestamp`` parameter from an aware datetime, an RFC 3339 string or
        seconds since the epoch. A string that is no instant, or an instant
        outside the years 0001-9999 (UTC), rejects the event."""
        if isinstance(value, str):
            micros = rfc3339_micros(value)
            if micros is None:
                stop(rejected(f"not an RFC 3339 instant in the years 0001-9999: {value!r}"))
            return _db.Value_Timestamp(micros)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return self.timestamp_secs(value)
        return _timestamp_of(_in_range(_micros(value)), value.isoformat())

    def timestamp_secs(self, secs: Union[int, float]) -> _db.Value:
        """A ``timestamp`` parameter from seconds since the epoch (a Unix time; a
        fraction is kept to the microsecond). Outside 0001-01-01T00:00:00Z to
        9999-12-31T23:59:59.999999Z (milliseconds passed as seconds, say) it
        rejects the event."""
        return _timestamp_of(_epoch_micros(secs, 1), f"{secs} seconds since the epoch")

    def timestamp_millis(self, millis: Union[int, float]) -> _db.Value:
        """A ``timestamp`` parameter from milliseconds since the epoch (JavaScript's
        ``Date.now()``, a Kafka record's timestamp); the range of ``timestamp_secs``."""
        return _timestamp_of(_epoch_micros(millis, 1_000), f"{millis} milliseconds since the epoch")

    def timestamp_micros(self, micros: Union[int, float]) -> _db.Value:
        """A ``timestamp`` parameter from microseconds since the epoch; the range
        of ``timestamp_secs``."""
        return _timestamp_of(_epoch_micros(micros, 1_000_000), f"{micros} microseconds since the epoch")

    def now(self) -> _db.Value:
        """The current time as a ``timestamp`` parameter (from the WASI clock)."""
        return _db.Value_Timestamp(_micros(datetime.datetime.now(datetime.timezone.utc)))


db = _Db()

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)


def rfc3339_micros(s: str) -> Optional[int]:
    """An RFC 3339 instant as microseconds since the epoch, or None: the
    Rust SDK's rules (a date, ``T``, a time with optional fraction, ``Z``
    or an offset ``±HH:MM``; years 0001 to 9999 in UTC once the offset is
    applied)."""
    m = _RFC3339.fullmatch(s)
    if m is None:
        return None
    y, mo, d, hh, mi, ss = (int(m.group(i)) for i in range(1, 7))
    frac = (m.group(7) or "")[:6]
    micros = int(frac.ljust(6, "0")) if frac else 0
    if m.group(8):
        offset = 0
    else:
        oh, om = int(m.group(10)), int(m.group(11))
        if oh > 23 or om > 59:
            return None
        offset = (oh * 3600 + om * 60) * (1 if m.group(9) == "+" else -1)
    if hh > 23 or mi > 59 or ss > 60 or not 1 <= mo <= 12:
        return None
    leap = y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    days_in = [31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][mo - 1]
    if not 1 <= d <= days_in:
        return None
    days = (datetime.date(y, mo, d) - datetime.date(1970, 1, 1)).days if y >= 1 else None
    if days is None:
        return None
    return _in_range((days * 86_400 + hh * 3_600 + mi * 60 + ss - offset) * 1_000_000 + micros)


def rfc3339_text(micros: int) -> str:
    """An instant (µs since the epoch) as RFC 3339 text in UTC, the way the host
    stores a timestamp on SQLite: ``2026-11-30T09:30:00+00:00``, with ``.250`` or
    ``.250123`` for a fraction of a second. Rows decoded with ``db.query_as``
    carry timestamps in this form on both backends."""
    secs, frac = divmod(micros, 1_000_000)
    days, of_day = divmod(secs, 86_400)
    # The proleptic Gregorian date of a day count (H. Hinnant's civil_from_days:
    # datetime stops at year 9999, a stored value need not).
    z = days + 719_468
    era, doe = divmod(z, 146_097)
    yoe = (doe - doe // 1_460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    y = yoe + era * 400 + (1 if m <= 2 else 0)
    year = f"{y:04d}" if 0 <= y <= 9999 else f"{y:+05d}"
    if frac == 0:
        fraction = ""
    elif frac % 1_000 == 0:
        fraction = f".{frac // 1_000:03d}"
    else:
        fraction = f".{frac:06d}"
    return f"{year}-{m:02d}-{d:02d}T{of_day // 3_600:02d}:{of_day % 3_600 // 60:02d}:{of_day % 60:02d}{fraction}+00:00"

# ───────────────────────────── publish ─────────────────────────────


class PublishError(Exception):
    """A message the host refused; unhandled, it rejects the event."""

    def __init__(self, error: _publish.Error) -> None:
        self.error = error
        kind = {"Error_Denied": "publish denied", "Error_Limit": "publish limit"}.get(
            type(error).__name__, "invalid message"
        )
        super().__init__(f"{kind}: {error.value}")

    def outcome(self) -> Outcome:
        return rejected(str(self))


def _bytes(v: Union[str, bytes, None]) -> Optional[bytes]:
    if v is None:
        return None
    return v.encode("utf-8") if isinstance(v, str) else bytes(v)


class _Publish:
    """Messages to Kafka, produced after the event's transaction commits."""

    def json(self, topic: str, key: Optional[str], value: Any, headers: Optional[dict[str, str]] = None) -> None:
        """Queue a message whose value is ``value`` as JSON. Raises PublishError."""
        self.send(topic, _json.dumps(value, ensure_ascii=False, separators=(",", ":")), key=key, headers=headers)

    def send(
        self,
        topic: str,
        payload: Union[str, bytes],
        key: Union[str, bytes, None] = None,
        headers: Optional[dict[str, str]] = None,
        partition: Optional[int] = None,
    ) -> None:
        """Queue a message as given. Raises PublishError."""
        message = _publish.Message(
            topic=topic,
            key=_bytes(key),
            payload=_bytes(payload) or b"",
            headers=[_types.Header(name=n, value=v.encode("utf-8")) for n, v in (headers or {}).items()],
            partition=partition,
        )
        try:
            _publish.send(message)
        except Err as e:
            raise PublishError(e.value) from None


publish = _Publish()

# ───────────────────────────── settings, log ─────────────────────────────


def _read_settings(tp: Any) -> tuple[bool, Any]:
    """``(True, settings)`` checked against ``tp``, or ``(False, reason)``."""
    value = _json.loads(_config.settings())
    try:
        return True, _decode(tp, value, "")
    except DecodeError as e:
        return False, f"invalid plugin setting {e}"


class _Config:
    """The plugin's settings from the routing config."""

    def settings(self, tp: Any = Any) -> Any:
        """All settings (``{}`` when there are none), checked against ``tp``, read
        from the host on every call (``Settings`` reads them once). A bad setting
        rejects the event, naming the setting."""
        ok, value = _read_settings(tp)
        if not ok:
            stop(rejected(value))
        return value

    def get(self, key: str) -> Optional[str]:
        """One setting: strings as they are, other values as JSON text."""
        return _config.get(key)


config = _Config()

T = typing.TypeVar("T")


class Settings(typing.Generic[T]):
    """The plugin's settings decoded into ``tp`` once per instance (the Rust SDK's
    ``config::Settings``). Make one at module level and call ``get()`` inside
    ``handle`` (never at import: componentize-py snapshots the module)::

        @dataclass
        class Conf:
            limit: int = 10

        SETTINGS = Settings(Conf)
        ...
        def handle(self, ev):
            limit = SETTINGS.get().limit

    The first ``get()`` reads and checks the settings; later ones return the same
    value, or reject the event with the same reason if they did not fit. That is
    never stale: settings change only when the host reloads the routing config,
    and a reload that changes a plugin's settings gives it new instances, whose
    modules start from the build's snapshot again."""

    def __init__(self, tp: type[T]) -> None:
        self._tp = tp
        self._read: Optional[tuple[bool, Any]] = None

    def get(self) -> T:
        """The settings, read and checked on the first call; bad settings reject
        the event (``invalid plugin setting ...``)."""
        if self._read is None:
            self._read = _read_settings(self._tp)
        ok, value = self._read
        if not ok:
            stop(rejected(value))
        return value


class _Log:
    """Lines in the host's log, under the plugin's name and the event's position."""

    def debug(self, message: str) -> None:
        _log.write(_log.Level.DEBUG, message)

    def info(self, message: str) -> None:
        _log.write(_log.Level.INFO, message)

    def warn(self, message: str) -> None:
        _log.write(_log.Level.WARN, message)

    def error(self, message: str) -> None:
        _log.write(_log.Level.ERROR, message)


log = _Log()

# ───────────────────────────── validation ─────────────────────────────


class validate:
    """Small input checks several plugins share (the Rust SDK's, same rules)."""

    @staticmethod
    def is_valid_email(s: str) -> bool:
        """The shape of an e-mail address, ``local@domain.tld``: one ``@``; no
        whitespace or control characters; a local part of 1-64 characters not
        starting or ending with ``.`` nor containing ``..``; a domain of two or
        more labels of 1-63 letters, digits or ``-`` (not at either end), the
        last at least two characters and not all digits; 254 bytes at most."""
        if not s or len(s.encode("utf-8")) > 254:
            return False
        if any(c.isspace() or unicodedata.category(c) == "Cc" for c in s):
            return False
        local, at, domain = s.partition("@")
        if not at or "@" in domain:
            return False
        if not (1 <= len(local) <= 64) or local.startswith(".") or local.endswith(".") or ".." in local:
            return False
        labels = domain.split(".")
        if len(labels) < 2:
            return False
        for label in labels:
            if not (1 <= len(label) <= 63) or label.startswith("-") or label.endswith("-"):
                return False
            if not all(c == "-" or c.isalnum() for c in label):
                return False
        tld = labels[-1]
        return len(tld) >= 2 and not all("0" <= c <= "9" for c in tld)


# ───────────────────────────── the plugin ─────────────────────────────


class Plugin:
    """Subclass it, set ``name``, ``version`` and ``migrations``, write
    ``handle(self, ev)``, and export ``WitWorld = YourPlugin.world()``."""

    name: str = ""
    version: str = "0.1.0"
    migrations: list[Migration] = []

    def handle(self, ev: Event) -> Outcome:
        raise NotImplementedError("a plugin implements handle(self, ev)")

    @classmethod
    def world(cls) -> type:
        """The class componentize-py exports as the ``plugin`` world."""
        plugin = cls()

        class World:
            def describe(self) -> PluginInfo:
                return PluginInfo(name=plugin.name, version=plugin.version, migrations=list(plugin.migrations))

            def handle(self, event: _types.Event) -> Outcome:
                try:
                    return plugin.handle(Event(event))
                except Stop as e:
                    return e.outcome
                except (DbError, PublishError) as e:
                    return e.outcome()
                except Exception as e:
                    # A bug: say where, then trap like a Rust panic.
                    where = "".join(traceback.format_exception(e))
                    _log.write(
                        _log.Level.ERROR,
                        f"{plugin.name} raised on {event.topic}/{event.partition}@{event.offset}: {where}",
                    )
                    raise

        World.__name__ = "WitWorld"
        return World
