// A NestJS app's Kafka client (ClientKafka on kafkajs), as seed 002's
// services use it: emit USER_CREATED (an event, no reply), then send a
// create-user request and wait for the reply that comes back through
// switchyard's profile-creation plugin (NestJS request-reply: the
// kafka_correlationId, kafka_replyTopic and kafka_replyPartition headers).
//
// Usage: node client.js BROKER REQUEST_ID
// Prints the reply as JSON, or exits 1 with the reason.
require('reflect-metadata');
const { ClientKafka } = require('@nestjs/microservices');
const { lastValueFrom, timeout } = require('rxjs');
const { logLevel } = require('kafkajs');

const [broker, requestId] = process.argv.slice(2);

async function main() {
  const client = new ClientKafka({
    client: {
      clientId: 'nest-seed-002',
      brokers: [broker],
      logLevel: process.env.KAFKAJS_DEBUG ? logLevel.INFO : logLevel.ERROR,
    },
    consumer: { groupId: `nest-seed-002-${requestId}` },
    producer: { allowAutoTopicCreation: false },
  });
  client.subscribeToResponseOf('create-user');
  await client.connect();
  await lastValueFrom(
    client.emit('USER_CREATED', {
      userId: `auth0|${requestId}`,
      name: 'Amélie Durand',
      email: `${requestId}@boulangerie.fr`,
      role: 'user',
      userType: 'SME_OWNER',
      customerAccountId: 'cust-1',
      customerName: 'Boulangerie Durand SARL',
      timestamp: new Date().toISOString(),
    }),
  );
  const reply = await lastValueFrom(
    client
      .send('create-user', {
        requestId,
        firstName: 'Amélie',
        lastName: 'Durand',
        email: `${requestId}@example.fr`,
        nationalCode: 1234567891,
        birthDate: '1991-02-03',
      })
      .pipe(timeout(60000)),
  );
  console.log(JSON.stringify(reply));
  await client.close();
}

main().then(
  () => process.exit(0),
  (e) => {
    const detail = e instanceof Error ? JSON.stringify(e, Object.getOwnPropertyNames(e)) : String(e);
    console.error(`nestjs client: ${detail}`);
    process.exit(1);
  },
);
