// Import and export jobs with the official Node service SDK (azure-iothub Registry.exportDevicesToBlob,
// importDevicesFromBlob, getJob, listJobs), driven by tests/interop/test_import_export.py, with the
// server's own blob containers in place of a storage account. Prints one JSON object.
// Arguments: one JSON object in argv[2]: {hubConnectionString, exportUri, importUri, outputUri}
'use strict';
const iothub = require('azure-iothub');
const step = require('./step');

const args = JSON.parse(process.argv[2]);

async function until(registry, jobId) {
  for (let i = 0; i < 100; i++) {
    const job = await step('getJob', (cb) => registry.getJob(jobId, cb));
    if (job.status === 'completed' || job.status === 'failed' || job.status === 'cancelled') return job;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error('job ' + jobId + ' did not finish');
}

async function main() {
  const out = {};
  const registry = iothub.Registry.fromConnectionString(args.hubConnectionString);
  const exported = await step('exportDevicesToBlob', (cb) => registry.exportDevicesToBlob(args.exportUri, false, cb));
  out.exportCreated = { type: exported.type, status: exported.status };
  out.exportJob = await until(registry, exported.jobId);
  const imported = await step('importDevicesFromBlob', (cb) => registry.importDevicesFromBlob(args.importUri, args.outputUri, cb));
  out.importJob = await until(registry, imported.jobId);
  const jobs = await step('listJobs', (cb) => registry.listJobs(cb));
  out.listed = jobs.map((j) => j.jobId).filter((id) => id === exported.jobId || id === imported.jobId).length;
  console.log(JSON.stringify(out));
}

main().then(() => process.exit(0), (e) => {
  console.log(JSON.stringify({ error: e.message }));
  process.exit(0);
});
