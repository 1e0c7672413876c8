"""Misbehaves on request, for the sandbox tests: the payload is
``{"do": "<action>", ...}``, as for the Rust test-hostile plugin."""

from __future__ import annotations

import json
import os
import socket
import sys
from dataclasses import dataclass
from typing import Optional

from switchyard import Event, Plugin, db, done, log, publish, rejected


@dataclass
class Command:
    do: str
    sql: Optional[str] = None
    topic: Optional[str] = None
    bytes: Optional[int] = None


def recurse(depth: int) -> int:
    return recurse(depth + 1) + depth


class Hostile(Plugin):
    name = "test-hostile-py"
    version = "0.1.0"
    migrations = []

    def handle(self, ev: Event):
        cmd = ev.json(Command)
        if cmd.do == "ok":
            return done()
        if cmd.do == "loop":
            x = 0
            while True:
                x += 1
        if cmd.do == "oom":
            hoard = []
            while True:
                hoard.append(bytearray(b"\x01" * (1 << 20)))
        if cmd.do == "recurse":
            sys.setrecursionlimit(1_000_000)
            log.info(f"depth {recurse(0)}")
            return done()
        if cmd.do == "wasi":
            # What WASI lets it reach: each probe says "denied: ..." or
            # what it got.
            found = {}
            for probe, attempt in [
                ("file", lambda: open("/etc/passwd").read(64)),
                ("dir", lambda: os.listdir("/")),
                ("env", lambda: dict(os.environ) or None),
                ("net", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).connect(("127.0.0.1", 5432)) or "connected"),
            ]:
                try:
                    got = attempt()
                    found[probe] = "denied: nothing there" if got is None else f"allowed: {str(got)[:40]}"
                except Exception as e:  # noqa: BLE001 - every refusal is the answer
                    found[probe] = f"denied: {type(e).__name__}"
            return rejected("wasi: " + json.dumps(found, sort_keys=True))
        if cmd.do == "throw":
            raise RuntimeError("asked to raise")
        if cmd.do == "sql":
            log.info(f"{len(db.query(cmd.sql or ''))} rows")
            return done()
        if cmd.do == "publish":
            publish.json(cmd.topic or "", None, "x" * (cmd.bytes or 1))
            return done()
        return rejected(f"unknown action {cmd.do}")


WitWorld = Hostile.world()
