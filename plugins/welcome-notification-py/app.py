"""welcome-notification, in Python: every new user gets exactly one welcome
e-mail request, whether they arrive through the auth service's
``user.registered.v1`` envelope (seed 004) or the gateway's
``notification.send.welcome`` emit (seed 003), however many times.

The same contract as the Rust build (plugins/welcome-notification, whose
doc comment is the full text): ``v`` must be the number 1; an event type
other than ``user_registered`` is skipped; a missing user id or a malformed
e-mail address is rejected; the first event for a user inserts a
``welcome_notifications`` row and publishes one ``notification.send.email``
request keyed by the user id; later ones are skipped ("already welcomed").
The subject comes from the ``subject`` setting, ``{name}`` replaced by the
user's name (or the address's local part when there is none).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

from switchyard import (
    Event,
    Plugin,
    config,
    db,
    done,
    log,
    migration,
    name,
    publish,
    rejected,
    skipped,
    stop,
    validate,
)

EMAIL_TOPIC = "notification.send.email"
DEFAULT_SUBJECT = "Welcome, {name}!"

POSTGRES_SCHEMA = """
CREATE TABLE IF NOT EXISTS welcome_notifications (
    user_id         text PRIMARY KEY,
    email           text NOT NULL,
    sent_at         timestamptz NOT NULL,
    source_event_id text
);
"""

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS welcome_notifications (
    user_id         TEXT NOT NULL PRIMARY KEY,
    email           TEXT NOT NULL,
    sent_at         TEXT NOT NULL,
    source_event_id TEXT
);
"""


@dataclass
class Registered:
    user_id: Optional[str]
    email: Optional[str]
    full_name: Optional[str]


@dataclass
class Envelope:
    """``user.registered.v1``."""

    event: Optional[str]
    id: Optional[str]
    v: Any
    payload: Optional[Registered]


@dataclass
class SendWelcome:
    """``notification.send.welcome``."""

    user_id: Optional[str] = name("userId", None)
    email: Optional[str] = None
    name: Optional[str] = None


@dataclass
class Welcome:
    user_id: str
    email: str
    name: Optional[str]
    source_event_id: Optional[str]


class Invalid(Exception):
    """An event that decodes but breaks the contract."""


class NotForUs(Exception):
    """An event this plugin has nothing to do with."""


def subject_template() -> str:
    settings = config.settings()
    if not isinstance(settings, dict):
        stop(rejected("invalid plugin settings: expected a JSON object"))
    subject = settings.get("subject", DEFAULT_SUBJECT)
    if not isinstance(subject, str):
        stop(rejected(f"invalid plugin setting `subject`: expected a string, got {subject!r}"))
    if not subject.strip():
        stop(rejected("invalid plugin setting `subject`: empty"))
    return subject


def welcome(user_id: Optional[str], email: Optional[str], who: Optional[str], source: Optional[str], field: str) -> Welcome:
    if user_id is None:
        raise Invalid(f"missing {field}")
    if not user_id.strip():
        raise Invalid(f"{field} is empty")
    if email is None:
        raise Invalid("missing email")
    if not validate.is_valid_email(email):
        raise Invalid(f"invalid email address {email!r}")
    return Welcome(
        user_id=user_id,
        email=email,
        name=who if who and who.strip() else None,
        source_event_id=source or None,
    )


def from_registered(ev: Event) -> Welcome:
    env = ev.json(Envelope)
    # The number 1, not "1", not true, not 1.5.
    if env.v is None:
        raise Invalid("missing envelope version v")
    if isinstance(env.v, bool) or not isinstance(env.v, int) or env.v != 1:
        raise Invalid(f"unsupported envelope version v={json.dumps(env.v)} (expected 1)")
    event_type = env.event if env.event is not None else ev.header("event-type")
    if event_type is not None and event_type != "user_registered":
        raise NotForUs(f"event {event_type!r} is not a user_registered event")
    if env.payload is None:
        raise Invalid("missing payload")
    source = env.id if env.id is not None else ev.header("event-id")
    p = env.payload
    return welcome(p.user_id, p.email, p.full_name, source, "payload.user_id")


def from_send_welcome(ev: Event) -> Welcome:
    w = ev.json(SendWelcome)
    return welcome(w.user_id, w.email, w.name, ev.header("event-id"), "userId")


class WelcomeNotification(Plugin):
    name = "welcome-notification"
    version = "0.1.0"
    migrations = [migration("0001-create-welcome-notifications", POSTGRES_SCHEMA, SQLITE_SCHEMA)]

    def handle(self, ev: Event):
        subject = subject_template()
        try:
            if ev.topic == "user.registered.v1":
                w = from_registered(ev)
            elif ev.topic == "notification.send.welcome":
                w = from_send_welcome(ev)
            else:
                raise Invalid(
                    f"welcome-notification does not handle topic {ev.topic!r} "
                    "(expected user.registered.v1 or notification.send.welcome)"
                )
        except Invalid as e:
            return rejected(f"{ev.topic}: {e}")
        except NotForUs as e:
            return skipped(str(e))

        inserted = db.execute(
            "INSERT INTO welcome_notifications (user_id, email, sent_at, source_event_id) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT (user_id) DO NOTHING",
            w.user_id,
            w.email,
            db.now(),
            w.source_event_id,
        )
        if inserted == 0:
            return skipped(f"user {w.user_id} already welcomed")
        who = w.name if w.name is not None else w.email.partition("@")[0]
        publish.json(
            EMAIL_TOPIC,
            w.user_id,
            {
                "to": w.email,
                "subject": subject.replace("{name}", who),
                "template": "welcome",
                "userId": w.user_id,
                "variables": {"name": who},
            },
        )
        log.info(f"welcome e-mail requested for user {w.user_id}")
        return done()


WitWorld = WelcomeNotification.world()
