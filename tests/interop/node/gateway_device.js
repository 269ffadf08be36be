// One device session with the official Node device SDK (azure-iot-device) whose connection
// string names its hub by `HostName` and the machine serving it by `GatewayHostName` (the way
// the SDK reaches a hub through a gateway): the SDK connects to the gateway and names the hub in
// its MQTT username and SAS token audiences. Driven by tests/interop/test_embedded_hubs.py,
// where one server runs several embedded hubs that do not resolve by DNS. Reads the twin,
// reports `{node: marker}`, sends one telemetry message; prints one JSON object.
// Arguments: one JSON object in argv[2]: {deviceConnectionString, transport: "Mqtt"|"Amqp", marker}
// The server's CA comes from NODE_EXTRA_CA_CERTS.
'use strict';
const { Client, Message } = require('azure-iot-device');

const args = JSON.parse(process.argv[2]);
const Transport = args.transport === 'Amqp' ? require('azure-iot-device-amqp').Amqp : require('azure-iot-device-mqtt').Mqtt;
const step = require('./step');

async function main() {
  const out = {};
  const device = Client.fromConnectionString(args.deviceConnectionString, Transport);
  await step('open', (cb) => device.open((e) => cb(e)));
  const twin = await step('getTwin', (cb) => device.getTwin(cb));
  out.twinDesired = twin.properties.desired;
  await step('reported patch', (cb) => twin.properties.reported.update({ node: args.marker }, (e) => cb(e)));
  await step('sendEvent', (cb) => device.sendEvent(new Message(JSON.stringify({ marker: args.marker })), (e) => cb(e)));
  out.sent = true;
  await step('close', (cb) => device.close((e) => cb(e)));
  return out;
}

main().then(
  (out) => {
    console.log(JSON.stringify(out));
    process.exit(0);
  },
  (err) => {
    console.log(JSON.stringify({ error: err.message }));
    process.exit(0);
  },
);
