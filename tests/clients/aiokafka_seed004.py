"""Seed 004's producer as the auth service writes it (aiokafka, asyncio):
the user_registered envelope on user.registered.v1, keyed by user_id, with
its four headers. Then an aiokafka consumer reads the welcome e-mail
request switchyard publishes for it.

Usage: python aiokafka_seed004.py BROKER USER_ID REQUEST_ID
Prints the e-mail request as JSON {"headers": {...}, "value": {...}}, or
exits 1 with a reason.
"""
import asyncio
import json
import sys
import time
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

broker, user_id, request_id = sys.argv[1], sys.argv[2], sys.argv[3]


async def main() -> int:
    event_id = str(uuid.uuid4())
    envelope = {
        "event": "user_registered",
        "id": event_id,
        "ts": int(time.time() * 1000),
        "v": 1,
        "payload": {"user_id": user_id, "email": f"{user_id}@example.com", "full_name": "Lucía Fernández"},
        "source": "auth-svc",
    }
    producer = AIOKafkaProducer(
        bootstrap_servers=broker,
        value_serializer=lambda v: json.dumps(v).encode("utf-8"),
        key_serializer=lambda k: k.encode("utf-8"),
    )
    await producer.start()
    try:
        await producer.send_and_wait(
            "user.registered.v1",
            envelope,
            key=user_id,
            headers=[
                ("event-type", b"user_registered"),
                ("event-id", event_id.encode()),
                ("content-type", b"application/json"),
                ("request-id", request_id.encode()),
            ],
        )
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        "notification.send.email",
        bootstrap_servers=broker,
        group_id=f"aiokafka-reader-{request_id}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for messages in batches.values():
                for m in messages:
                    headers = {k: v.decode() for k, v in (m.headers or [])}
                    if headers.get("request-id") == request_id:
                        print(json.dumps({"headers": headers, "value": json.loads(m.value)}))
                        return 0
    finally:
        await consumer.stop()
    print(f"no e-mail request with request-id {request_id} within 60 s", file=sys.stderr)
    return 1


sys.exit(asyncio.run(main()))
