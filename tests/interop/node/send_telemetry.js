// Device telemetry with the official Node device SDK over one transport, for the Event Hubs
// tests (tests/interop/test_event_hubs.py): one message with system and application properties,
// and over Http also a batch of one (`sendEventBatch`, `application/vnd.microsoft.iothub.json`).
// Arguments: one JSON object in argv[2]:
//   {deviceConnectionString, transport: "Amqp"|"Mqtt"|"Http", marker, index}
// The message body is {"marker", "i": index} (the batch's: index + 1). Prints {"sent": n}.
// The server's CA comes from NODE_EXTRA_CA_CERTS.
'use strict';
const { Client, Message } = require('azure-iot-device');

const args = JSON.parse(process.argv[2]);
const Transport = {
  Mqtt: () => require('azure-iot-device-mqtt').Mqtt,
  Amqp: () => require('azure-iot-device-amqp').Amqp,
  Http: () => require('azure-iot-device-http').Http,
}[args.transport]();

const step = require('./step');

function message(i) {
  const msg = new Message(JSON.stringify({ marker: args.marker, i }));
  msg.messageId = args.marker + '-' + i;
  msg.contentType = 'application/json';
  msg.contentEncoding = 'utf-8';
  msg.properties.add('index', String(i));
  return msg;
}

async function main() {
  const device = Client.fromConnectionString(args.deviceConnectionString, Transport);
  await step('open', (cb) => device.open((e) => cb(e)));
  await step('sendEvent', (cb) => device.sendEvent(message(args.index), (e) => cb(e)));
  let sent = 1;
  if (args.transport === 'Http') {
    await step('sendEventBatch', (cb) => device.sendEventBatch([message(args.index + 1)], (e) => cb(e)));
    sent += 1;
  }
  await step('close', (cb) => device.close((e) => cb(e)));
  console.log(JSON.stringify({ sent }));
}

main().catch((e) => {
  console.log(JSON.stringify({ error: e.message }));
  process.exit(1);
});
