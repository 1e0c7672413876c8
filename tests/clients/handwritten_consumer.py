"""The hand-written consumer that Switchyard's benchmark measures itself against.

This is the baseline for `scripts/bench`: the consumer service a team at one
of the seed companies would write in its own stack (Python, aiokafka,
asyncpg) instead of running the router. Every event is handled in its own
PostgreSQL transaction, guarded by a `processed_events` marker so that a
redelivered event is skipped, and the Kafka offsets are committed after each
batch (at-least-once delivery, effectively-once effects).

    python tests/clients/handwritten_consumer.py --brokers 127.0.0.1:9092 \\
        --topic bench.in --group G --database postgresql://postgres@127.0.0.1:5432/DB \\
        --mode noop|upsert|stats --events N [--pool 4]

--mode noop writes only the marker; --mode upsert also increments
bench_counters[record key]; --mode stats does seed 001's job on
`interview.created`, as the stats-increment plugin does: the seed's own
dedupe on `eventId` (stats_processed_events), `user_stats.interviews_created
+ 1`, and a `user.quota_exceeded` notice on crossing `max_interviews`
(produced after the commit). Partitions are processed concurrently, one pooled
connection per partition, in offset order within each partition.

Stdout gets `{"ready": true}` once partitions are assigned (start producing
then), and `{"processed": N, "duplicates": d, "seconds": s}` when N new events
have been processed and committed (then `{"done": true}` after `--linger`
seconds connected); `seconds` runs from the first message
received to the last offset commit. Errors go to stderr with a non-zero exit.
Requires aiokafka==0.12.0 and asyncpg==0.30.0.
"""
import argparse
import asyncio
import json
import sys
import time

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener

SCHEMA = """
CREATE TABLE IF NOT EXISTS processed_events (
    event_key text PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS bench_counters (k text PRIMARY KEY, n bigint NOT NULL);
"""
MARK = "INSERT INTO processed_events (event_key) VALUES ($1) ON CONFLICT DO NOTHING"
UPSERT = (
    "INSERT INTO bench_counters (k, n) VALUES ($1, 1) "
    "ON CONFLICT (k) DO UPDATE SET n = bench_counters.n + 1"
)
CLAIM_EVENT_ID = (
    "INSERT INTO stats_processed_events (event_id, topic, processed_at) "
    "VALUES ($1, $2, now()) ON CONFLICT (event_id) DO NOTHING"
)
COUNT_INTERVIEW = (
    "UPDATE user_stats SET interviews_created = interviews_created + 1, updated_at = now() "
    "WHERE user_id = $1 RETURNING interviews_created, max_interviews"
)


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


class ReadyOnAssignment(ConsumerRebalanceListener):
    """Announces the first non-empty partition assignment on stdout."""

    def __init__(self) -> None:
        self.announced = False

    async def on_partitions_revoked(self, revoked) -> None:
        pass

    async def on_partitions_assigned(self, assigned) -> None:
        if assigned and not self.announced:
            self.announced = True
            emit({"ready": True})


async def count_interview(conn, msg) -> dict | None:
    """Seed 001's job for one event; the quota notice to send, if any."""
    event = json.loads(msg.value)
    claimed = await conn.execute(CLAIM_EVENT_ID, event["eventId"], msg.topic)
    if claimed == "INSERT 0 0":
        return None
    row = await conn.fetchrow(COUNT_INTERVIEW, event["userId"])
    if row is None:
        return None
    used, limit = row["interviews_created"], row["max_interviews"]
    if used - 1 <= limit < used:
        return {"userId": event["userId"], "quota": "interviews", "used": used, "limit": limit}
    return None


async def handle_partition(pool: asyncpg.Pool, producer, messages, mode: str) -> tuple[int, int]:
    """Processes one partition's share of a batch, in order; returns (new, duplicates)."""
    new = duplicates = 0
    async with pool.acquire() as conn:
        for msg in messages:
            notice = None
            async with conn.transaction():
                status = await conn.execute(MARK, f"{msg.topic}/{msg.partition}/{msg.offset}")
                if status == "INSERT 0 0":
                    duplicates += 1
                    continue
                if mode == "upsert":
                    key = msg.key.decode("utf-8") if msg.key is not None else "none"
                    await conn.execute(UPSERT, key)
                elif mode == "stats":
                    notice = await count_interview(conn, msg)
            if notice is not None:
                await producer.send_and_wait(
                    "user.quota_exceeded", json.dumps(notice).encode(), key=notice["userId"].encode()
                )
            new += 1
    return new, duplicates


async def run(args: argparse.Namespace) -> dict:
    pool = await asyncpg.create_pool(args.database, min_size=args.pool, max_size=args.pool)
    producer = AIOKafkaProducer(bootstrap_servers=args.brokers)
    await producer.start()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=args.brokers,
        group_id=args.group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    try:
        async with pool.acquire() as conn:
            await conn.execute(SCHEMA)
        consumer.subscribe([args.topic], listener=ReadyOnAssignment())
        await consumer.start()

        processed = duplicates = 0
        started = None
        deadline = time.monotonic() + args.timeout
        while processed < args.events:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {processed} of {args.events} events within {args.timeout} s")
            batch = await consumer.getmany(timeout_ms=1000)
            if not batch:
                continue
            if started is None:
                started = time.perf_counter()
            results = await asyncio.gather(
                *(handle_partition(pool, producer, msgs, args.mode) for msgs in batch.values())
            )
            await consumer.commit()
            processed += sum(new for new, _ in results)
            duplicates += sum(dup for _, dup in results)
        elapsed = time.perf_counter() - started
        emit({"processed": processed, "duplicates": duplicates, "seconds": round(elapsed, 3)})
        # Keep the connections (and their server processes) a while, so
        # that a benchmark can read their CPU time.
        await asyncio.sleep(args.linger)
        return {"done": True}
    finally:
        await consumer.stop()
        await producer.stop()
        await pool.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", required=True, help="bootstrap servers, host:port[,host:port]")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True, help="consumer group id")
    parser.add_argument("--database", required=True, help="PostgreSQL URL")
    parser.add_argument("--mode", choices=("noop", "upsert", "stats"), required=True)
    parser.add_argument("--events", type=int, required=True, help="exit after this many new events")
    parser.add_argument("--pool", type=int, default=4, help="PostgreSQL connections (default 4)")
    parser.add_argument("--timeout", type=float, default=600, help="give up after this many seconds")
    parser.add_argument("--linger", type=float, default=0, help="seconds to stay connected once done")
    args = parser.parse_args()
    try:
        emit(asyncio.run(run(args)))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # any failure is fatal for a benchmark run
        print(f"handwritten_consumer: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
