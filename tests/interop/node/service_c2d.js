// A backend sending cloud-to-device messages with the official Node service SDK (azure-iothub
// Client.send over Amqp or AmqpWs) to a device listening with the official Node device SDK over
// AMQP, driven by tests/interop/test_node_amqp.py. Prints one JSON object with what each step saw.
// Arguments: one JSON object in argv[2]:
//   {hubConnectionString, deviceConnectionString, deviceId, serviceTransport: "Amqp"|"AmqpWs", marker}
// The server's CA comes from NODE_EXTRA_CA_CERTS.
'use strict';
const { Client: DeviceClient } = require('azure-iot-device');
const { Amqp: DeviceAmqp } = require('azure-iot-device-amqp');
const iothub = require('azure-iothub');
const { Message } = require('azure-iot-common');

const args = JSON.parse(process.argv[2]);

const step = require('./step');

async function main() {
  const out = {};
  const device = DeviceClient.fromConnectionString(args.deviceConnectionString, DeviceAmqp);
  const received = new Promise((resolve) => {
    device.on('message', (msg) => {
      const properties = {};
      for (const p of msg.properties.propertyList) properties[p.key] = p.value;
      device.complete(msg, () => resolve({ data: msg.data.toString(), messageId: msg.messageId, properties }));
    });
  });
  await step('device open', (cb) => device.open((e) => cb(e)));

  const service = iothub.Client.fromConnectionString(args.hubConnectionString, iothub[args.serviceTransport]);
  await step('service open', (cb) => service.open((e) => cb(e)));
  const msg = new Message(JSON.stringify({ marker: args.marker }));
  msg.messageId = 'c2d-' + args.marker;
  msg.properties.add('marker', args.marker);
  await step('service send', (cb) => service.send(args.deviceId, msg, (e) => cb(e)));
  out.sent = true;
  out.received = await Promise.race([
    received,
    new Promise((_, rej) => setTimeout(() => rej(new Error('the device received nothing')), 15000)),
  ]);

  // A device the hub does not know: the send fails with the SDK's DeviceNotFoundError.
  try {
    await step('send to a ghost', (cb) => service.send('no-such-device-' + args.marker, new Message('x'), (e) => cb(e)));
    out.ghost = 'sent';
  } catch (e) {
    out.ghost = e.message;
  }
  await step('service close', (cb) => service.close((e) => cb(e)));
  await step('device close', (cb) => device.close((e) => cb(e)));
  console.log(JSON.stringify(out));
}

main().catch((e) => {
  console.log(JSON.stringify({ error: e.message }));
  process.exit(1);
});
