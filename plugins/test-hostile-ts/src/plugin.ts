// Misbehaves on request, for the sandbox tests: the payload is
// `{"do": "<action>", ...}`, as for the Rust test-hostile plugin.
import { plugin, t, db, publish, done, rejected, log } from "@switchyard/plugin";

const Command = t.object({
  do: t.string,
  sql: t.optional(t.string),
  topic: t.optional(t.string),
  bytes: t.optional(t.integer),
});

function recurse(depth: number): number {
  return recurse(depth + 1) + depth;
}

export const { describe, handle } = plugin({
  name: "test-hostile-ts",
  version: "0.1.0",
  migrations: [],
  handle(ev) {
    const cmd = ev.json(Command);
    switch (cmd.do) {
      case "ok":
        return done();
      case "loop": {
        let x = 0;
        for (;;) x = (x + 1) | 0;
      }
      case "oom": {
        const hoard: Uint8Array[] = [];
        for (;;) hoard.push(new Uint8Array(1 << 20).fill(1));
      }
      case "recurse":
        log.info(`depth ${recurse(0)}`);
        return done();
      case "throw":
        throw new Error("asked to throw");
      case "sql":
        log.info(`${db.query(cmd.sql ?? "").length} rows`);
        return done();
      case "publish":
        publish.json(cmd.topic ?? "", undefined, "x".repeat(cmd.bytes ?? 1));
        return done();
      default:
        return rejected(`unknown action ${cmd.do}`);
    }
  },
});
