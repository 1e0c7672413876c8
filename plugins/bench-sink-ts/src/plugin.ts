// The benchmark plugin in TypeScript: the same work as plugins/bench-sink
// (setting `mode`: "noop", the default, or "upsert", one upsert per event
// keyed by the record key), so scripts/bench compares languages on it.
import { plugin, config, db, done, migration } from "@switchyard/plugin";

const TABLE = "CREATE TABLE IF NOT EXISTS bench_counters (k TEXT PRIMARY KEY, n BIGINT NOT NULL)";

export const { describe, handle } = plugin({
  name: "bench-sink",
  version: "0.1.0",
  migrations: [migration("0001-bench-counters", TABLE, TABLE)],
  handle(ev) {
    if (config.get("mode") !== "upsert") return done();
    db.exec(
      "INSERT INTO bench_counters (k, n) VALUES ($1, 1) ON CONFLICT (k) DO UPDATE SET n = bench_counters.n + 1",
      [ev.key ?? "none"],
    );
    return done();
  },
});
