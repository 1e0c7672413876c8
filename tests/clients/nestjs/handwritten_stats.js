// The hand-written consumer `scripts/bench` measures Switchyard against on
// seed 001's job, in the seed team's stack: kafkajs and node-postgres, the
// way a NestJS service's Kafka consumer does it. For each
// `interview.created` event, one PostgreSQL transaction:
//   - a `processed_events` marker (topic/partition/offset), so that a
//     redelivered event is skipped;
//   - the seed's own dedupe on `eventId` (`stats_processed_events`);
//   - `user_stats.interviews_created + 1`, and a `user.quota_exceeded`
//     message when it crosses `max_interviews` (sent after the commit).
// Partitions run concurrently (`partitionsConsumedConcurrently`), events of
// one partition one after another; kafkajs commits offsets after each
// handled message (its default auto-commit).
//
// Usage: node handwritten_stats.js BROKER GROUP DATABASE_URL EVENTS [POOL [LINGER_MS]]
// Stdout: {"ready": true} once the group is joined (start producing then),
// {"processed": N, "seconds": s} after N new events; it then stays
// connected LINGER_MS (so that a benchmark can read its database
// sessions' CPU time). Errors: stderr, exit 1.
const { Kafka, logLevel } = require('kafkajs');
const { Pool } = require('pg');

const [broker, group, databaseUrl, eventsArg, poolArg, lingerArg] = process.argv.slice(2);
const events = Number(eventsArg);
const emit = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);

async function main() {
  if (!broker || !group || !databaseUrl || !Number.isInteger(events)) {
    throw new Error('usage: node handwritten_stats.js BROKER GROUP DATABASE_URL EVENTS [POOL]');
  }
  const pool = new Pool({
    connectionString: databaseUrl,
    max: Number(poolArg || 4),
    idleTimeoutMillis: 0,
  });
  await pool.query(`CREATE TABLE IF NOT EXISTS processed_events (
    event_key text PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT clock_timestamp())`);
  const kafka = new Kafka({ clientId: 'stats-service', brokers: [broker], logLevel: logLevel.ERROR });
  const producer = kafka.producer({ allowAutoTopicCreation: false });
  await producer.connect();
  const consumer = kafka.consumer({ groupId: group });
  await consumer.connect();
  await consumer.subscribe({ topic: 'interview.created', fromBeginning: true });
  consumer.on(consumer.events.GROUP_JOIN, () => emit({ ready: true }));

  let processed = 0;
  let first = null;
  const finished = new Promise((resolve) => {
    consumer.run({
      partitionsConsumedConcurrently: 3,
      eachMessage: async ({ topic, partition, message }) => {
        if (first === null) first = Date.now();
        const event = JSON.parse(message.value.toString());
        const client = await pool.connect();
        let notice = null;
        try {
          await client.query('BEGIN');
          const marked = await client.query(
            'INSERT INTO processed_events (event_key) VALUES ($1) ON CONFLICT DO NOTHING',
            [`${topic}/${partition}/${message.offset}`],
          );
          if (marked.rowCount === 1) {
            const claimed = await client.query(
              'INSERT INTO stats_processed_events (event_id, topic, processed_at) VALUES ($1, $2, now()) ON CONFLICT (event_id) DO NOTHING',
              [event.eventId, topic],
            );
            if (claimed.rowCount === 1) {
              const row = await client.query(
                'UPDATE user_stats SET interviews_created = interviews_created + 1, updated_at = now() WHERE user_id = $1 RETURNING interviews_created, max_interviews',
                [event.userId],
              );
              const stats = row.rows[0];
              if (stats && stats.interviews_created - 1 <= stats.max_interviews
                && stats.interviews_created > stats.max_interviews) {
                notice = {
                  userId: event.userId,
                  quota: 'interviews',
                  used: stats.interviews_created,
                  limit: stats.max_interviews,
                };
              }
            }
          }
          await client.query('COMMIT');
        } catch (e) {
          await client.query('ROLLBACK');
          throw e;
        } finally {
          client.release();
        }
        if (notice) {
          await producer.send({
            topic: 'user.quota_exceeded',
            messages: [{ key: event.userId, value: JSON.stringify(notice) }],
          });
        }
        processed += 1;
        if (processed === events) resolve();
      },
    }).catch((e) => {
      process.stderr.write(`${e.stack || e}\n`);
      process.exit(1);
    });
  });
  await finished;
  emit({ processed, seconds: (Date.now() - first) / 1000 });
  await new Promise((resolve) => { setTimeout(resolve, Number(lingerArg || 0)); });
  await consumer.disconnect();
  await producer.disconnect();
  await pool.end();
}

main().catch((e) => {
  process.stderr.write(`${e.stack || e}\n`);
  process.exit(1);
});
