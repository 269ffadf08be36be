// A backend reading device telemetry from the hub's Event Hub-compatible endpoint with the
// official Node Event Hubs SDK (@azure/event-hubs EventHubConsumerClient), over AMQP or AMQP over
// WebSockets, driven by tests/interop/test_event_hubs.py. Prints one JSON object with what it saw.
// Arguments: one JSON object in argv[2]:
//   {connectionString, transport: "Amqp"|"AmqpWs", marker, expected, consumerGroup?}
// It reads every partition from the start until `expected` events whose body carries `marker`
// arrived. The server's CA comes from NODE_EXTRA_CA_CERTS.
'use strict';
const { EventHubConsumerClient, earliestEventPosition } = require('@azure/event-hubs');
const WebSocket = require('ws');

const args = JSON.parse(process.argv[2]);

async function main() {
  const options = args.transport === 'AmqpWs' ? { webSocketOptions: { webSocket: WebSocket } } : {};
  const client = new EventHubConsumerClient(args.consumerGroup || '$Default', args.connectionString, options);
  const out = { events: [] };
  try {
    const hub = await client.getEventHubProperties();
    out.eventHub = { name: hub.name, partitionIds: hub.partitionIds };
    out.partitions = [];
    for (const id of hub.partitionIds) {
      const p = await client.getPartitionProperties(id);
      out.partitions.push({
        partitionId: p.partitionId,
        beginningSequenceNumber: p.beginningSequenceNumber,
        lastEnqueuedSequenceNumber: p.lastEnqueuedSequenceNumber,
        lastEnqueuedOffset: p.lastEnqueuedOffset,
        isEmpty: p.isEmpty,
      });
    }
    let done;
    const finished = new Promise((resolve) => (done = resolve));
    const errors = [];
    const subscription = client.subscribe(
      {
        processEvents: async (events, context) => {
          for (const e of events) {
            if (!e.body || e.body.marker !== args.marker) continue;
            out.events.push({
              partitionId: context.partitionId,
              body: e.body,
              properties: e.properties,
              sequenceNumber: e.sequenceNumber,
              offset: e.offset,
              enqueuedTimeUtc: e.enqueuedTimeUtc,
              systemProperties: e.systemProperties,
              contentType: e.contentType,
              messageId: e.messageId,
            });
          }
          if (out.events.length >= args.expected) done();
        },
        processError: async (err) => {
          errors.push(err.code + ': ' + err.message);
          if (args.expectError) done();
        },
      },
      { startPosition: earliestEventPosition, maxWaitTimeInSeconds: 1 }
    );
    // unref: a pending timer would keep the process alive after the result is printed.
    await Promise.race([finished, new Promise((r) => setTimeout(r, 20000).unref())]);
    await subscription.close();
    out.errors = errors;
  } finally {
    await client.close();
  }
  console.log(JSON.stringify(out));
}

main().catch((e) => {
  console.log(JSON.stringify({ error: (e.code || e.name) + ': ' + e.message }));
  process.exit(1);
});
