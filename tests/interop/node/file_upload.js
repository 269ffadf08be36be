// File upload with the official Node SDKs: a device (azure-iot-device, MQTT for its session)
// uploads a file with `uploadToBlob` — which asks the hub for a SAS (`POST /devices/{id}/files`),
// uploads with @azure/storage-blob (Put Block + Put Block List) and reports the outcome
// (`POST /devices/{id}/files/notifications/{correlationId}`) — while a backend (azure-iothub,
// Amqp) reads the file upload notification with `getFileNotificationReceiver` and completes it.
// Driven by tests/interop/test_file_upload.py. Prints one JSON object.
// Arguments: one JSON object in argv[2]:
//   {hubConnectionString, deviceConnectionString, blobName, content}
// The server's CA comes from NODE_EXTRA_CA_CERTS (the storage pipeline honours it too).
'use strict';
const { Readable } = require('stream');
const { Client } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');
const iothub = require('azure-iothub');

const step = require('./step');

const args = JSON.parse(process.argv[2]);

function within(ms, what, promise) {
  return Promise.race([promise, new Promise((_, rej) => setTimeout(() => rej(new Error(what)), ms))]);
}

async function main() {
  const out = {};
  const service = iothub.Client.fromConnectionString(args.hubConnectionString, iothub.Amqp);
  await step('service open', (cb) => service.open((e) => cb(e)));
  const receiver = await step('file notification receiver', (cb) => service.getFileNotificationReceiver(cb));
  const notified = new Promise((resolve) => {
    receiver.on('message', (msg) => {
      const n = JSON.parse(msg.data.toString());
      if (!n.blobName.endsWith('/' + args.blobName)) {
        receiver.abandon(msg, () => {});
        return;
      }
      out.contentType = msg.contentType;
      receiver.complete(msg, (e) => {
        out.completeError = e ? e.message : null;
        resolve(n);
      });
    });
  });

  const device = Client.fromConnectionString(args.deviceConnectionString, Mqtt);
  const content = Buffer.from(args.content, 'utf8');
  await step('uploadToBlob', (cb) => device.uploadToBlob(args.blobName, Readable.from([content]), content.length, (e) => cb(e)));
  out.uploaded = true;
  out.notification = await within(15000, 'no file upload notification', notified);

  await step('service close', (cb) => service.close((e) => cb(e)));
  await step('device close', (cb) => device.close((e) => cb(e)));
  console.log(JSON.stringify(out));
  // The SDK's blob upload client keeps an HTTP agent (and its pipeline's timers) alive after
  // the upload, so the process would not end on its own.
  process.exit(0);
}

main().catch((e) => {
  console.log(JSON.stringify({ error: e.message, stack: e.stack }));
  process.exit(1);
});
