// One device session with the official Node device SDK (azure-iot-device) against the embedded
// hub, driven by tests/interop/test_node_amqp.py, with the service side from the official Node
// service SDK (azure-iothub). Prints one JSON object with what each step saw.
// Arguments: one JSON object in argv[2]:
//   {hubConnectionString, deviceConnectionString, deviceId, transport: "Amqp"|"AmqpWs",
//    certFile?, keyFile?, marker}
// The server's CA comes from NODE_EXTRA_CA_CERTS.
'use strict';
const fs = require('fs');
const { Client, Message } = require('azure-iot-device');
const iothub = require('azure-iothub');

const args = JSON.parse(process.argv[2]);
const Transport = require('azure-iot-device-amqp')[args.transport];

const step = require('./step');

async function main() {
  const out = {};
  const device = Client.fromConnectionString(args.deviceConnectionString, Transport);
  if (args.certFile) {
    device.setOptions({ cert: fs.readFileSync(args.certFile, 'utf8'), key: fs.readFileSync(args.keyFile, 'utf8') });
  }
  await step('open', (cb) => device.open((e) => cb(e)));

  // Telemetry, with system and application properties.
  const msg = new Message(JSON.stringify({ marker: args.marker }));
  msg.messageId = 'mid-' + args.marker;
  msg.contentType = 'application/json';
  msg.contentEncoding = 'utf-8';
  msg.properties.add('marker', args.marker);
  await step('sendEvent', (cb) => device.sendEvent(msg, (e) => cb(e)));
  out.sent = true;

  // Twin: read, patch reported, then a desired patch from the service arrives.
  const twin = await step('getTwin', (cb) => device.getTwin(cb));
  out.twinDesired = twin.properties.desired;
  await step('reported patch', (cb) => twin.properties.reported.update({ node: { marker: args.marker } }, (e) => cb(e)));
  const desired = new Promise((resolve) => {
    twin.on('properties.desired', (patch) => {
      if (patch && patch.nodeMarker === args.marker) resolve(patch);
    });
  });
  // Give the SDK time to subscribe to desired-property updates before the service patches.
  await new Promise((r) => setTimeout(r, 1000));
  const registry = iothub.Registry.fromConnectionString(args.hubConnectionString);
  const serviceTwin = await step('service getTwin', (cb) => registry.getTwin(args.deviceId, cb));
  out.serviceSeesReported = serviceTwin.properties.reported.node;
  await step('service updateTwin', (cb) =>
    registry.updateTwin(args.deviceId, { properties: { desired: { nodeMarker: args.marker } } }, serviceTwin.etag, cb));
  const patch = await Promise.race([desired, new Promise((_, rej) => setTimeout(() => rej(new Error('no desired patch')), 15000))]);
  out.desiredPatch = patch;

  // A direct method invoked through the service SDK, answered by the device.
  device.onDeviceMethod('reboot', (request, response) => {
    response.send(200, { rebooted: true, payload: request.payload }, () => {});
  });
  await new Promise((r) => setTimeout(r, 1000));
  const service = iothub.Client.fromConnectionString(args.hubConnectionString);
  const result = await step('invokeDeviceMethod', (cb) =>
    service.invokeDeviceMethod(args.deviceId, { methodName: 'reboot', payload: { delay: 1 }, responseTimeoutInSeconds: 15 }, cb));
  out.method = result;

  await step('close', (cb) => device.close((e) => cb(e)));
  console.log(JSON.stringify(out));
}

main().then(() => process.exit(0), (e) => {
  console.log(JSON.stringify({ error: e.message }));
  process.exit(0);
});
