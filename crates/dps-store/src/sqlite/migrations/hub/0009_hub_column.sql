-- hub 0009: every row carries the number of the embedded hub it belongs to (`hub`, 1 for the
-- first), so that all the embedded hubs of a server share this one file: one writer thread and
-- one fsync per group commit for all of them, where a file per hub cost each hub its own
-- (decision 0029). Every table is rebuilt with `hub` leading its key and indexes; existing rows
-- are hub 1's. `hub_meta` stays per file; `hub:N` rows name the hubs the file has held.

CREATE TABLE devices_v9 (
     hub INTEGER NOT NULL,
     id  TEXT NOT NULL,
     doc TEXT NOT NULL,
     PRIMARY KEY (hub, id)
 ) WITHOUT ROWID;
INSERT INTO devices_v9 (hub, id, doc) SELECT 1, id, doc FROM devices;
DROP TABLE devices;
ALTER TABLE devices_v9 RENAME TO devices;

CREATE TABLE device_counts_v9 (
    hub     INTEGER NOT NULL,
    status  TEXT NOT NULL,
    devices INTEGER NOT NULL,
    PRIMARY KEY (hub, status)
) WITHOUT ROWID;
INSERT INTO device_counts_v9 (hub, status, devices) SELECT 1, status, devices FROM device_counts;
DROP TABLE device_counts;
ALTER TABLE device_counts_v9 RENAME TO device_counts;

-- The counting triggers of hub 0002 went with the old `devices`; the same, per hub.
CREATE TRIGGER devices_count_insert AFTER INSERT ON devices BEGIN
    INSERT INTO device_counts (hub, status, devices)
        VALUES (NEW.hub, iif(json_valid(NEW.doc), coalesce(json_extract(NEW.doc, '$.status'), ''), ''), 1)
        ON CONFLICT (hub, status) DO UPDATE SET devices = devices + 1;
END;

CREATE TRIGGER devices_count_delete AFTER DELETE ON devices BEGIN
    UPDATE device_counts SET devices = devices - 1
        WHERE hub = OLD.hub
          AND status = (iif(json_valid(OLD.doc), coalesce(json_extract(OLD.doc, '$.status'), ''), ''));
END;

CREATE TRIGGER devices_count_update AFTER UPDATE OF doc ON devices
    WHEN (iif(json_valid(OLD.doc), coalesce(json_extract(OLD.doc, '$.status'), ''), ''))
        IS NOT (iif(json_valid(NEW.doc), coalesce(json_extract(NEW.doc, '$.status'), ''), ''))
BEGIN
    UPDATE device_counts SET devices = devices - 1
        WHERE hub = OLD.hub
          AND status = (iif(json_valid(OLD.doc), coalesce(json_extract(OLD.doc, '$.status'), ''), ''));
    INSERT INTO device_counts (hub, status, devices)
        VALUES (NEW.hub, iif(json_valid(NEW.doc), coalesce(json_extract(NEW.doc, '$.status'), ''), ''), 1)
        ON CONFLICT (hub, status) DO UPDATE SET devices = devices + 1;
END;

CREATE TABLE c2d_v9 (
    hub    INTEGER NOT NULL,
    seq    INTEGER NOT NULL,
    device TEXT NOT NULL,
    doc    TEXT NOT NULL,
    PRIMARY KEY (hub, seq)
);
INSERT INTO c2d_v9 (hub, seq, device, doc) SELECT 1, seq, device, doc FROM c2d;
DROP TABLE c2d;
ALTER TABLE c2d_v9 RENAME TO c2d;
CREATE INDEX c2d_device ON c2d (hub, device);

CREATE TABLE feedback_v9 (
    hub INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (hub, seq)
);
INSERT INTO feedback_v9 (hub, seq, doc) SELECT 1, seq, doc FROM feedback;
DROP TABLE feedback;
ALTER TABLE feedback_v9 RENAME TO feedback;

CREATE TABLE consumer_groups_v9 (
    hub  INTEGER NOT NULL,
    name TEXT NOT NULL,
    doc  TEXT NOT NULL,
    PRIMARY KEY (hub, name)
);
INSERT INTO consumer_groups_v9 (hub, name, doc) SELECT 1, name, doc FROM consumer_groups;
DROP TABLE consumer_groups;
ALTER TABLE consumer_groups_v9 RENAME TO consumer_groups;

CREATE TABLE file_notifications_v9 (
    hub INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (hub, seq)
);
INSERT INTO file_notifications_v9 (hub, seq, doc) SELECT 1, seq, doc FROM file_notifications;
DROP TABLE file_notifications;
ALTER TABLE file_notifications_v9 RENAME TO file_notifications;

CREATE TABLE modules_v9 (
     hub    INTEGER NOT NULL,
     id     TEXT NOT NULL,
     device TEXT NOT NULL,
     doc    TEXT NOT NULL,
     PRIMARY KEY (hub, id)
 ) WITHOUT ROWID;
INSERT INTO modules_v9 (hub, id, device, doc) SELECT 1, id, device, doc FROM modules;
DROP TABLE modules;
ALTER TABLE modules_v9 RENAME TO modules;
CREATE INDEX modules_by_device ON modules (hub, device, id);

CREATE TABLE jobs_v9 (
     hub INTEGER NOT NULL,
     id  TEXT NOT NULL,
     doc TEXT NOT NULL,
     PRIMARY KEY (hub, id)
 ) WITHOUT ROWID;
INSERT INTO jobs_v9 (hub, id, doc) SELECT 1, id, doc FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_v9 RENAME TO jobs;

CREATE TABLE device_jobs_v9 (
     hub INTEGER NOT NULL,
     id  TEXT NOT NULL,
     job TEXT NOT NULL,
     doc TEXT NOT NULL,
     PRIMARY KEY (hub, id)
 ) WITHOUT ROWID;
INSERT INTO device_jobs_v9 (hub, id, job, doc) SELECT 1, id, job, doc FROM device_jobs;
DROP TABLE device_jobs;
ALTER TABLE device_jobs_v9 RENAME TO device_jobs;
CREATE INDEX device_jobs_by_job ON device_jobs (hub, job);

CREATE TABLE twin_tags_v9 (
     hub    INTEGER NOT NULL,
     path   TEXT NOT NULL,
     value  TEXT NOT NULL,
     device TEXT NOT NULL,
     PRIMARY KEY (hub, path, value, device)
 ) WITHOUT ROWID;
INSERT INTO twin_tags_v9 (hub, path, value, device) SELECT 1, path, value, device FROM twin_tags;
DROP TABLE twin_tags;
ALTER TABLE twin_tags_v9 RENAME TO twin_tags;
CREATE INDEX twin_tags_by_device ON twin_tags (hub, device);

INSERT INTO hub_meta (name, value) VALUES ('hub:1', 'present');
