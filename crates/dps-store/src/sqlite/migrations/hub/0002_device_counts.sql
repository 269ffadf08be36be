-- hub 0002: device counts by registry status, kept by triggers in the transaction of every write.
--
-- `GET /statistics/devices` needs the enabled and disabled counts. Counting them from the
-- documents reads and parses every row (seconds at a million devices); these counters cost each
-- write one small row update and answer in microseconds. Existing rows are counted once, here.
-- A document that is not valid JSON, or has no status (neither can come from the hub), is counted
-- under the status '' rather than failing the write or this migration.

CREATE TABLE device_counts (
    status  TEXT PRIMARY KEY NOT NULL,
    devices INTEGER NOT NULL
);

INSERT INTO device_counts (status, devices)
    SELECT iif(json_valid(doc), coalesce(json_extract(doc, '$.status'), ''), ''), COUNT(*)
    FROM devices
    GROUP BY 1;

CREATE TRIGGER devices_count_insert AFTER INSERT ON devices BEGIN
    INSERT INTO device_counts (status, devices)
        VALUES (iif(json_valid(NEW.doc), coalesce(json_extract(NEW.doc, '$.status'), ''), ''), 1)
        ON CONFLICT (status) DO UPDATE SET devices = devices + 1;
END;

CREATE TRIGGER devices_count_delete AFTER DELETE ON devices BEGIN
    UPDATE device_counts SET devices = devices - 1
        WHERE status = (iif(json_valid(OLD.doc), coalesce(json_extract(OLD.doc, '$.status'), ''), ''));
END;

CREATE TRIGGER devices_count_update AFTER UPDATE OF doc ON devices
    WHEN (iif(json_valid(OLD.doc), coalesce(json_extract(OLD.doc, '$.status'), ''), ''))
        IS NOT (iif(json_valid(NEW.doc), coalesce(json_extract(NEW.doc, '$.status'), ''), ''))
BEGIN
    UPDATE device_counts SET devices = devices - 1
        WHERE status = (iif(json_valid(OLD.doc), coalesce(json_extract(OLD.doc, '$.status'), ''), ''));
    INSERT INTO device_counts (status, devices)
        VALUES (iif(json_valid(NEW.doc), coalesce(json_extract(NEW.doc, '$.status'), ''), ''), 1)
        ON CONFLICT (status) DO UPDATE SET devices = devices + 1;
END;
