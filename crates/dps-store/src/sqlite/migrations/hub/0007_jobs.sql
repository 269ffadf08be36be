-- hub 0007: scheduled jobs (one JSON record per job, keyed by its id) and the rows of the devices
-- each job reached, keyed by `{jobId}/{device key}` (what `SELECT * FROM devices.jobs` reads).
CREATE TABLE jobs (
     id  TEXT PRIMARY KEY NOT NULL,
     doc TEXT NOT NULL
 ) WITHOUT ROWID;
CREATE TABLE device_jobs (
     id  TEXT PRIMARY KEY NOT NULL,
     job TEXT NOT NULL,
     doc TEXT NOT NULL
 ) WITHOUT ROWID;
CREATE INDEX device_jobs_by_job ON device_jobs (job);
