// The IoT Hub query language with the official Node service SDK (azure-iothub Registry.createQuery),
// driven by tests/interop/test_query.py: twins filtered by WHERE and paged with continuation tokens
// (Query.nextAsTwin while hasMoreResults), an aggregate (Query.next), module twins. Prints one JSON object.
// Arguments: one JSON object in argv[2]: {hubConnectionString, fleet, pageSize}
'use strict';
const iothub = require('azure-iothub');
const step = require('./step');

const args = JSON.parse(process.argv[2]);

async function all(query, method) {
  const items = [];
  let pages = 0;
  do {
    const page = await step(method, (cb) => query[method](cb));
    pages += 1;
    items.push(...page);
  } while (query.hasMoreResults && pages < 50);
  return { items, pages };
}

async function main() {
  const out = {};
  const registry = iothub.Registry.fromConnectionString(args.hubConnectionString);
  const filtered = await all(
    registry.createQuery(`SELECT * FROM devices WHERE tags.fleet = '${args.fleet}' AND tags.n >= 2`, args.pageSize),
    'nextAsTwin');
  out.twinIds = filtered.items.map((t) => t.deviceId);
  out.twinPages = filtered.pages;
  out.twinIsTwin = filtered.items.every((t) => typeof t.update === 'function');
  const count = await all(
    registry.createQuery(`SELECT tags.even AS even, COUNT() AS n FROM devices WHERE tags.fleet = '${args.fleet}' GROUP BY tags.even`),
    'next');
  out.groups = count.items;
  const modules = await all(
    registry.createQuery(`SELECT * FROM devices.modules WHERE tags.fleet = '${args.fleet}'`, args.pageSize),
    'nextAsTwin');
  out.modules = modules.items.map((t) => `${t.deviceId}/${t.moduleId}`);
  const bad = await new Promise((resolve) =>
    registry.createQuery('SELECT * FROM devices WHERE tags.fleet =').next((e) => resolve(e ? `${e.constructor.name}: ${e.message}` : null)));
  out.badQuery = bad;
  console.log(JSON.stringify(out));
}

main().then(() => process.exit(0), (e) => {
  console.log(JSON.stringify({ error: e.message }));
  process.exit(0);
});
