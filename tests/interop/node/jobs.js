// Scheduled jobs with the official Node service SDK (azure-iothub JobClient), driven by
// tests/interop/test_jobs.py: a twin update job over a condition, a direct-method job answered by a
// device (azure-iot-device over MQTT), a job scheduled for later and cancelled, the job list
// (JobClient.createQuery) and the per-device rows (Registry.createQuery on devices.jobs).
// Prints one JSON object.
// Arguments: one JSON object in argv[2]: {hubConnectionString, deviceConnectionString, deviceId, fleet, marker}
'use strict';
const { Client } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');
const iothub = require('azure-iothub');
const step = require('./step');

const args = JSON.parse(process.argv[2]);

async function until(jobClient, jobId) {
  for (let i = 0; i < 100; i++) {
    const job = await step('getJob', (cb) => jobClient.getJob(jobId, cb));
    if (job.status === 'completed' || job.status === 'failed' || job.status === 'cancelled') return job;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error('job ' + jobId + ' did not finish');
}

async function main() {
  const out = {};
  const jobClient = iothub.JobClient.fromConnectionString(args.hubConnectionString);
  const registry = iothub.Registry.fromConnectionString(args.hubConnectionString);

  const twinJob = 'twin-' + args.marker;
  const patch = { etag: '*', tags: { fw: args.marker }, properties: { desired: { rate: 5 }, reported: {} } };
  const created = await step('scheduleTwinUpdate', (cb) =>
    jobClient.scheduleTwinUpdate(twinJob, `tags.fleet = '${args.fleet}'`, patch, cb));
  out.twinCreated = { jobId: created.jobId, type: created.type, status: created.status };
  out.twinJob = await until(jobClient, twinJob);

  // A method job: the device answers over MQTT.
  const device = Client.fromConnectionString(args.deviceConnectionString, Mqtt);
  await step('open', (cb) => device.open((e) => cb(e)));
  device.onDeviceMethod('reboot', (request, response) => response.send(200, { got: request.payload }, () => {}));
  await new Promise((r) => setTimeout(r, 1000));
  const methodJob = 'method-' + args.marker;
  await step('scheduleDeviceMethod', (cb) => jobClient.scheduleDeviceMethod(methodJob, `deviceId = '${args.deviceId}'`,
    { methodName: 'reboot', payload: { now: true }, responseTimeoutInSeconds: 10 }, cb));
  out.methodJob = await until(jobClient, methodJob);
  await step('close', (cb) => device.close((e) => cb(e)));

  // Scheduled for later, then cancelled.
  const laterJob = 'later-' + args.marker;
  const later = await step('schedule later', (cb) => jobClient.scheduleTwinUpdate(laterJob, '*', patch,
    new Date(Date.now() + 3600 * 1000), 600, cb));
  out.laterStatus = later.status;
  await step('cancelJob', (cb) => jobClient.cancelJob(laterJob, cb));
  out.laterJob = await until(jobClient, laterJob);

  // The job list, and the rows of the devices each job reached.
  const jobs = [];
  const q = jobClient.createQuery('scheduleUpdateTwin', undefined, 1);
  do {
    const page = await step('jobs query', (cb) => q.next(cb));
    jobs.push(...page.map((j) => j.jobId));
  } while (q.hasMoreResults && jobs.length < 100);
  out.twinJobsListed = jobs.filter((j) => j.endsWith(args.marker)).sort();
  const rows = await step('devices.jobs', (cb) =>
    registry.createQuery(`SELECT * FROM devices.jobs WHERE devices.jobs.jobId = '${methodJob}'`).next(cb));
  out.methodRows = rows;
  const missing = await new Promise((resolve) => jobClient.getJob('no-such-' + args.marker, (e) => resolve(e ? e.constructor.name : null)));
  out.missing = missing;
  console.log(JSON.stringify(out));
}

main().then(() => process.exit(0), (e) => {
  console.log(JSON.stringify({ error: e.message }));
  process.exit(0);
});
