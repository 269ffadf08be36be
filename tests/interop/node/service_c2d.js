// A backend sending cloud-to-device messages with the official Node service SDK (azure-iothub
// Client.send over Amqp or AmqpWs) to a device listening with the official Node device SDK (over
// Amqp, Mqtt or Http), and reading the feedback it asked for with the service SDK's feedback
// receiver.
// Driven by tests/interop/test_node_amqp.py. Prints one JSON object with what each step saw.
// Arguments: one JSON object in argv[2]:
//   {hubConnectionString, deviceConnectionString, deviceId, serviceTransport: "Amqp"|"AmqpWs",
//    deviceTransport: "Amqp"|"Mqtt"|"Http", marker}
// Messages whose body says {"reject": true} are rejected by the device (AMQP only: the Node MQTT
// transport cannot reject, as IoT Hub's MQTT has no reject), the others completed. Over Http the
// device polls `GET /devices/{id}/messages/deviceBound` (the SDK's default: every second,
// draining) and settles by lock token.
// The server's CA comes from NODE_EXTRA_CA_CERTS.
'use strict';
const { Client: DeviceClient } = require('azure-iot-device');
const iothub = require('azure-iothub');
const { Message } = require('azure-iot-common');

const args = JSON.parse(process.argv[2]);
const DeviceTransport = {
  Mqtt: () => require('azure-iot-device-mqtt').Mqtt,
  Amqp: () => require('azure-iot-device-amqp').Amqp,
  Http: () => require('azure-iot-device-http').Http,
}[args.deviceTransport]();

const step = require('./step');

function within(ms, what, promise) {
  return Promise.race([promise, new Promise((_, rej) => setTimeout(() => rej(new Error(what)), ms))]);
}

async function main() {
  const out = { received: [], feedback: [] };
  const device = DeviceClient.fromConnectionString(args.deviceConnectionString, DeviceTransport);
  const ids = ['c2d-' + args.marker];
  if (args.deviceTransport !== 'Mqtt') ids.push('c2d-reject-' + args.marker);
  let allReceived;
  const received = new Promise((resolve) => (allReceived = resolve));
  device.on('message', (msg) => {
    const properties = {};
    // The Node HTTP transport keeps the `iothub-app-` header prefix in property names (its
    // http-base `toMessage`); the names are compared without it.
    for (const p of msg.properties.propertyList) properties[p.key.replace(/^iothub-app-/, '')] = p.value;
    const body = JSON.parse(msg.data.toString());
    const settle = body.reject ? device.reject.bind(device) : device.complete.bind(device);
    settle(msg, () => {
      out.received.push({ data: body, messageId: msg.messageId, ack: msg.ack, properties });
      if (out.received.length === ids.length) allReceived();
    });
  });
  await step('device open', (cb) => device.open((e) => cb(e)));

  const service = iothub.Client.fromConnectionString(args.hubConnectionString, iothub[args.serviceTransport]);
  await step('service open', (cb) => service.open((e) => cb(e)));
  const receiver = await step('feedback receiver', (cb) => service.getFeedbackReceiver(cb));
  const wanted = new Set(ids);
  const feedbackDone = new Promise((resolve) => {
    receiver.on('message', (msg) => {
      // The SDK hands the body over as is (it accepts the batch itself): a JSON array of records.
      for (const record of JSON.parse(msg.data.toString())) {
        if (!wanted.has(record.originalMessageId)) continue;
        out.feedback.push(record);
        wanted.delete(record.originalMessageId);
      }
      out.feedbackContentType = msg.contentType;
      if (wanted.size === 0) resolve();
    });
  });

  for (const id of ids) {
    const msg = new Message(JSON.stringify({ marker: args.marker, reject: id.startsWith('c2d-reject-') }));
    msg.messageId = id;
    msg.ack = 'full';
    msg.properties.add('marker', args.marker);
    await step('service send ' + id, (cb) => service.send(args.deviceId, msg, (e) => cb(e)));
  }
  out.sent = ids.length;
  await within(15000, 'the device received ' + out.received.length + ' of ' + ids.length, received);
  await within(15000, 'feedback missing for ' + [...wanted].join(', '), feedbackDone);

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
