"""The benchmark plugin in Python: the same work as plugins/bench-sink
(setting ``mode``: "noop", the default, or "upsert", one upsert per event
keyed by the record key), so scripts/bench compares languages on it."""

from switchyard import Event, Plugin, config, db, done, migration

TABLE = "CREATE TABLE IF NOT EXISTS bench_counters (k TEXT PRIMARY KEY, n BIGINT NOT NULL)"


class BenchSink(Plugin):
    name = "bench-sink"
    version = "0.1.0"
    migrations = [migration("0001-bench-counters", TABLE, TABLE)]

    def handle(self, ev: Event):
        if config.get("mode") != "upsert":
            return done()
        db.execute(
            "INSERT INTO bench_counters (k, n) VALUES ($1, 1) "
            "ON CONFLICT (k) DO UPDATE SET n = bench_counters.n + 1",
            ev.key or "none",
        )
        return done()


WitWorld = BenchSink.world()
