// Bulk registry operations with the official Node service SDK (azure-iothub Registry.addDevices,
// updateDevices, removeDevices), driven by tests/interop/test_bulk.py. Prints one JSON object.
// Arguments: one JSON object in argv[2]: {hubConnectionString, ids: [..]}
'use strict';
const iothub = require('azure-iothub');
const step = require('./step');

const args = JSON.parse(process.argv[2]);

async function main() {
  const out = {};
  const registry = iothub.Registry.fromConnectionString(args.hubConnectionString);
  const devices = args.ids.map((id) => ({ deviceId: id, status: 'enabled' }));
  out.added = await step('addDevices', (cb) => registry.addDevices(devices, cb));
  const first = await step('get', (cb) => registry.get(args.ids[0], cb));
  out.firstKeyLength = first.authentication.symmetricKey.primaryKey.length;
  out.updated = await step('updateDevices', (cb) =>
    registry.updateDevices([{ deviceId: args.ids[0], status: 'disabled', statusReason: 'bulk' }], true, cb));
  out.firstStatus = (await step('get again', (cb) => registry.get(args.ids[0], cb))).status;
  // Adding them again: IoT Hub answers 400 with the per-item result; the SDK raises ArgumentError.
  out.again = await new Promise((resolve) => registry.addDevices(devices, (e) =>
    resolve(e ? { name: e.constructor.name, body: JSON.parse(e.responseBody) } : null)));
  out.removed = await step('removeDevices', (cb) => registry.removeDevices(devices, true, cb));
  out.afterRemove = await new Promise((resolve) => registry.get(args.ids[1], (e) => resolve(e ? e.constructor.name : null)));
  console.log(JSON.stringify(out));
}

main().then(() => process.exit(0), (e) => {
  console.log(JSON.stringify({ error: e.message }));
  process.exit(0);
});
